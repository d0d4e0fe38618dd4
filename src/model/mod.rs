//! The classifier: ResNet backbones, RecycleNet/SE/CBAM attention, checkpoints.

/// Anything that turns images into class probabilities. The sorter loop depends on
/// this trait only, so tests can swap in a fake.
pub trait Classifier {
    /// Class names in output order (stored inside every checkpoint).
    fn class_names(&self) -> &[String];
    /// Softmax probabilities for each image, in input order
    /// (`result[i].len() == class_names().len()`).
    fn classify(&mut self, images: &[image::RgbImage]) -> anyhow::Result<Vec<Vec<f32>>>;
}

pub mod attention;
mod batchnorm_op;
pub mod checkpoint;
pub mod classifier;
mod depthwise;
pub mod efficientnet;
pub mod explain;
pub mod import;
pub mod layers;
pub mod ops;
pub mod params;
pub mod quant;
pub mod resnet;

pub use attention::{AttentionKind, GateMix};
pub use checkpoint::CheckpointError;
pub use classifier::{load_classifier, ModelClassifier};
pub use resnet::Arch;

use candle_core::{Device, Tensor};

/// The model `run`, `predict` and `eval` use when none is named (shipped in `models/`).
pub const DEFAULT_MODEL_PATH: &str = "models/resnet18-ours-trashnet.safetensors";
use params::ParamStore;
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a network before its weights are loaded. Stored in
/// every checkpoint, so a model file always carries its class names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub att: AttentionKind,
    #[serde(default)]
    pub att_mix: GateMix,
    pub classes: Vec<String>,
    /// Side of the square input the model was trained at.
    pub image_size: u32,
}

/// The convolutional body and head, by architecture family.
#[derive(Debug, Clone)]
pub enum Backbone {
    ResNet(resnet::ResNet),
    EfficientNet(efficientnet::EfficientNet),
}

/// A network with its parameters.
#[derive(Debug, Clone)]
pub struct Network {
    pub spec: ModelSpec,
    pub store: ParamStore,
    pub backbone: Backbone,
}

impl Network {
    /// A freshly initialised network; `seed` fixes the initial weights.
    pub fn new(spec: ModelSpec, device: &Device, seed: u64) -> candle_core::Result<Self> {
        Self::with_store(spec, ParamStore::new(device, seed))
    }

    /// A network whose layers take any quantized weights `store` holds.
    pub fn with_store(spec: ModelSpec, store: ParamStore) -> candle_core::Result<Self> {
        let (root, classes) = (store.root(), spec.classes.len());
        let backbone = match spec.arch {
            Arch::EfficientnetLite0 => {
                Backbone::EfficientNet(efficientnet::EfficientNet::lite0(&root, spec.att, spec.att_mix, classes)?)
            }
            arch => Backbone::ResNet(resnet::ResNet::new(&root, arch, spec.att, spec.att_mix, classes)?),
        };
        Ok(Self { spec, store, backbone })
    }

    /// The same network, sharing its parameters (no copy), whose forward passes record
    /// no graph: for validation and for frozen stages, whose activations are then
    /// freed layer by layer (see [`ParamStore::inference_only`]).
    pub fn detached(&self) -> candle_core::Result<Self> {
        Self::with_store(self.spec.clone(), self.store.clone().inference_only())
    }

    /// Logits (N, classes) for a normalised NCHW batch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head_t(&self.stages_t(x, train, 0..self.stage_names().len())?)
    }

    /// Trunk stage names, input to output (`--freeze until:<stage>` takes these).
    pub fn stage_names(&self) -> Vec<String> {
        match &self.backbone {
            Backbone::ResNet(net) => net.stage_names(),
            Backbone::EfficientNet(net) => net.stage_names(),
        }
    }

    /// Parameter-name prefixes of each trunk stage.
    pub fn stage_prefixes(&self) -> Vec<Vec<String>> {
        match &self.backbone {
            Backbone::ResNet(net) => net.stage_prefixes(),
            Backbone::EfficientNet(net) => net.stage_prefixes(),
        }
    }

    /// Runs trunk stages `range` on `x` (an image batch when the range starts at 0).
    pub fn stages_t(&self, x: &Tensor, train: bool, range: std::ops::Range<usize>) -> candle_core::Result<Tensor> {
        match &self.backbone {
            Backbone::ResNet(net) => net.stages_t(x, train, range),
            Backbone::EfficientNet(net) => net.stages_t(x, train, range),
        }
    }

    /// RecycleNet's spatial gate on the last feature map, if the model has one.
    pub fn attention_map(&self, features: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match &self.backbone {
            Backbone::ResNet(net) => net.attention_map(features),
            Backbone::EfficientNet(net) => net.attention_map(features),
        }
    }

    /// Attention (RecycleNet's), pooling and classifier on the last feature map.
    pub fn head_t(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match &self.backbone {
            Backbone::ResNet(net) => net.head_t(features),
            Backbone::EfficientNet(net) => net.head_t(features),
        }
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// The block format of its quantized layers, if any (mixed files report the
    /// lowest-precision one).
    pub fn quantization(&self) -> Option<quant::QuantType> {
        self.store.quantized().values().filter_map(|t| quant::info(t).ok()).map(|i| i.dtype).max()
    }
}

/// Parses `cpu` or `cuda:N` (`cuda` alone means `cuda:0`).
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda_device(i),
            _ => anyhow::bail!("unknown device `{name}`: expected `cpu` or `cuda:N`"),
        },
    }
}

fn cuda_device(i: usize) -> anyhow::Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        anyhow::bail!("device cuda:{i} requested but this binary was built without the `cuda` feature (cargo build --features cuda)");
    }
    Device::new_cuda(i).map_err(|e| anyhow::anyhow!("cannot open CUDA device {i}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(arch: Arch, att: AttentionKind) -> f64 {
        let classes = (0..6).map(|i| format!("c{i}")).collect();
        let spec = ModelSpec { arch, att, att_mix: GateMix::Sum, classes, image_size: 224 };
        Network::new(spec, &Device::Cpu, 0).unwrap().store.count_trainable() as f64 / 1e6
    }

    /// The RecycleNet paper's parameter table (6 classes), to 0.01 M.
    #[test]
    fn parameter_counts_match_the_paper() {
        use AttentionKind::*;
        let table = [
            (Arch::Resnet18, None, 11.18),
            (Arch::Resnet18, Ours, 11.24),
            (Arch::Resnet18, Se, 11.27),
            (Arch::Resnet18, Cbam, 11.27),
            (Arch::Resnet34, None, 21.29),
            (Arch::Resnet34, Ours, 21.35),
            (Arch::Resnet50, None, 23.52),
            (Arch::Resnet50, Ours, 24.15),
            (Arch::Resnet50, Se, 26.05),
        ];
        for (arch, att, millions) in table {
            let got = count(arch, att);
            assert!((got - millions).abs() < 0.01, "{arch} + {att:?}: {got:.4} M, paper {millions} M");
        }
    }

    #[test]
    fn every_variant_runs_forward_and_backward() {
        use AttentionKind::*;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        for (att, mix) in [(None, GateMix::Sum), (Ours, GateMix::Sum), (Ours, GateMix::Product),
                           (Ours, GateMix::Max), (Ours, GateMix::SpatialOnly), (Se, GateMix::Sum), (Cbam, GateMix::Sum)] {
            let spec = ModelSpec { arch: Arch::Resnet18, att, att_mix: mix, classes: vec!["a".into(), "b".into()], image_size: 64 };
            let net = Network::new(spec, &Device::Cpu, 1).unwrap();
            let logits = net.forward_t(&x, true).unwrap();
            assert_eq!(logits.dims(), &[2, 2]);
            let grads = logits.sum_all().unwrap().backward().unwrap();
            for (name, var) in net.store.trainable() {
                assert!(grads.get(&var).is_some(), "{att:?}/{mix:?}: no gradient for {name}");
            }
        }
    }

    #[test]
    fn torchvision_names() {
        let spec = ModelSpec { arch: Arch::Resnet50, att: AttentionKind::Ours, att_mix: GateMix::Sum, classes: vec!["a".into()], image_size: 224 };
        let params = Network::new(spec, &Device::Cpu, 0).unwrap().store.params();
        for key in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                    "layer4.2.conv3.weight", "layer4.2.bn3.running_mean", "fc.weight", "fc.bias",
                    "att.channel.fc1.weight", "att.spatial.weight", "att.spatial.bias"] {
            assert!(params.contains_key(key), "missing {key}");
        }
    }
}
