//! Fine-tuning that fits a CPU: freeze the trunk (or its first stages), and with a
//! fully frozen trunk compute its features once per image and augmentation, so an
//! epoch only runs the attention and the classifier.

use super::data::{epoch_batches, training_batches, ImageCache};
use super::eval::inference_batch;
use crate::model::Network;
use anyhow::{anyhow, bail};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Which part of the network stays fixed during training.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Freeze {
    /// Train everything (what a GPU user runs).
    #[default]
    None,
    /// Train only what follows the trunk: RecycleNet's attention and the classifier.
    Backbone,
    /// Freeze the trunk up to and including this stage (e.g. `layer3`, `stage5`).
    Until(String),
}

impl FromStr for Freeze {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "backbone" => Ok(Self::Backbone),
            _ => match s.strip_prefix("until:") {
                Some(stage) if !stage.is_empty() => Ok(Self::Until(stage.to_string())),
                _ => Err(format!("`{s}`: expected none, backbone or until:<stage>")),
            },
        }
    }
}

impl fmt::Display for Freeze {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Backbone => f.write_str("backbone"),
            Self::Until(stage) => write!(f, "until:{stage}"),
        }
    }
}

impl From<Freeze> for String {
    fn from(f: Freeze) -> String {
        f.to_string()
    }
}

impl TryFrom<String> for Freeze {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Freeze {
    /// How many leading trunk stages of `network` this freezes.
    pub fn frozen_stages(&self, network: &Network) -> anyhow::Result<usize> {
        let names = network.stage_names();
        match self {
            Self::None => Ok(0),
            Self::Backbone => Ok(names.len()),
            Self::Until(stage) => names.iter().position(|n| n == stage).map(|i| i + 1).ok_or_else(|| {
                anyhow!("unknown stage `{stage}` for {}: stages are {}", network.spec.arch, names.join(", "))
            }),
        }
    }

    /// Marks the parameters of the first `frozen` stages as not trainable.
    pub fn apply(frozen: usize, network: &Network) {
        let prefixes: Vec<String> = network.stage_prefixes().into_iter().take(frozen).flatten().collect();
        network.store.set_trainable(|name| !prefixes.iter().any(|p| name.starts_with(p)));
    }
}

/// Outputs of the frozen stages for the training images under `views`
/// augmentations and for the validation images, kept in f16 on the CPU.
pub struct FeatureCache {
    /// `train[view][image]`: (C, H, W).
    pub train: Vec<Vec<Tensor>>,
    pub val: Vec<Tensor>,
}

impl FeatureCache {
    pub fn build(
        network: &Network,
        frozen: usize,
        train: &ImageCache,
        val: &ImageCache,
        views: usize,
        min_crop_scale: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        if views == 0 {
            bail!("--feature-views must be at least 1");
        }
        let size = network.spec.image_size;
        let started = std::time::Instant::now();
        let mut per_view = Vec::with_capacity(views);
        for view in 0..views {
            let batches = training_batches(train, inference_batch(size), size, min_crop_scale, seed, view);
            per_view.push(features(network, frozen, batches, train.len())?);
            log::info!("trunk features: view {}/{views} done ({:.0}s)", view + 1, started.elapsed().as_secs_f64());
        }
        let val = features(network, frozen, epoch_batches(val, inference_batch(size), size, false, false, 0, 0), val.len())?;
        Ok(Self { train: per_view, val })
    }
}

impl FeatureCache {
    /// Loads the cache from `path` if it was written for the same `key`, else builds
    /// it and writes it there, so several head experiments on one frozen trunk share
    /// the expensive part.
    #[allow(clippy::too_many_arguments)]
    pub fn load_or_build(
        path: &Path,
        key: &str,
        network: &Network,
        frozen: usize,
        train: &ImageCache,
        val: &ImageCache,
        views: usize,
        min_crop_scale: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        match Self::load(path, key, views) {
            Ok(Some(cache)) => {
                log::info!("trunk features loaded from {}", path.display());
                return Ok(cache);
            }
            Ok(None) => log::info!("{} is for another run: computing features again", path.display()),
            Err(e) => log::info!("no usable feature cache at {} ({e}): computing features", path.display()),
        }
        let cache = Self::build(network, frozen, train, val, views, min_crop_scale, seed)?;
        cache.save(path, key)?;
        Ok(cache)
    }

    fn save(&self, path: &Path, key: &str) -> anyhow::Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (v, view) in self.train.iter().enumerate() {
            tensors.push((format!("train.{v}"), Tensor::stack(view, 0)?));
        }
        tensors.push(("val".into(), Tensor::stack(&self.val, 0)?));
        let meta = std::collections::HashMap::from([("smartbin.feature_key".to_string(), key.to_string())]);
        let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))?;
        crate::util::write_atomic(path, &bytes)?;
        Ok(())
    }

    fn load(path: &Path, key: &str, views: usize) -> anyhow::Result<Option<Self>> {
        let bytes = std::fs::read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        if header.metadata().as_ref().and_then(|m| m.get("smartbin.feature_key")).map(String::as_str) != Some(key) {
            return Ok(None);
        }
        let file = safetensors::SafeTensors::deserialize(&bytes)?;
        let rows = |name: &str| -> anyhow::Result<Vec<Tensor>> {
            let t = candle_core::safetensors::Load::load(&file.tensor(name)?, &Device::Cpu)?;
            Ok(t.chunk(t.dim(0)?, 0)?.into_iter().map(|r| r.squeeze(0)).collect::<candle_core::Result<_>>()?)
        };
        let train = (0..views).map(|v| rows(&format!("train.{v}"))).collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { train, val: rows("val")? }))
    }
}

/// Runs the first `frozen` stages in eval mode over `batches`, one output per image.
fn features(network: &Network, frozen: usize, batches: super::data::EpochBatches, n: usize) -> anyhow::Result<Vec<Tensor>> {
    let stages = 0..frozen;
    // No graph: every stored row would keep its whole batch's activations alive.
    let network = network.detached()?;
    let mut out: Vec<Option<Tensor>> = vec![None; n];
    for batch in batches {
        let x = batch.images_tensor(network.device())?;
        let f = network.stages_t(&x, false, stages.clone())?.to_dtype(DType::F16)?.to_device(&Device::Cpu)?;
        for (row, &index) in batch.indices.iter().enumerate() {
            out[index] = Some(f.get(row)?);
        }
    }
    out.into_iter().map(|f| f.ok_or_else(|| anyhow!("an image got no features"))).collect()
}

/// Bytes the cache would take: f16 outputs of the frozen stages for every view.
pub fn cache_bytes(network: &Network, frozen: usize, images: usize, views: usize) -> anyhow::Result<usize> {
    let size = network.spec.image_size as usize;
    let probe = Tensor::zeros((1, 3, size, size), DType::F32, network.device())?;
    let out = network.detached()?.stages_t(&probe, false, 0..frozen)?.elem_count();
    Ok(out * 2 * images * (views + 1))
}

/// Stacks cached features of `indices` into an f32 batch on `device`.
pub fn stack(features: &[Tensor], indices: &[usize], device: &Device) -> anyhow::Result<Tensor> {
    let rows: Vec<&Tensor> = indices.iter().map(|&i| &features[i]).collect();
    Ok(Tensor::stack(&rows, 0)?.to_dtype(DType::F32)?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, AttentionKind, GateMix, ModelSpec};

    #[test]
    fn freeze_parses_and_picks_stages() {
        assert_eq!("backbone".parse::<Freeze>().unwrap(), Freeze::Backbone);
        assert_eq!("until:layer3".parse::<Freeze>().unwrap().to_string(), "until:layer3");
        assert!("until:".parse::<Freeze>().is_err() && "all".parse::<Freeze>().is_err());
        let spec = ModelSpec { arch: Arch::Resnet18, att: AttentionKind::Ours, att_mix: GateMix::Sum, classes: vec!["a".into(), "b".into()], image_size: 32 };
        let net = Network::new(spec, &Device::Cpu, 0).unwrap();
        assert_eq!(Freeze::Until("layer3".into()).frozen_stages(&net).unwrap(), 4);
        assert!(Freeze::Until("stage3".into()).frozen_stages(&net).is_err());
        Freeze::apply(Freeze::Backbone.frozen_stages(&net).unwrap(), &net);
        let trainable: Vec<String> = net.store.trainable().into_iter().map(|(n, _)| n).collect();
        assert!(trainable.iter().all(|n| n.starts_with("att.") || n.starts_with("fc.")), "{trainable:?}");
        assert!(trainable.contains(&"fc.weight".to_string()) && trainable.contains(&"att.spatial.weight".to_string()));
    }

    #[test]
    fn split_forward_equals_the_whole_forward() {
        for arch in [Arch::Resnet18, Arch::EfficientnetLite0] {
            let spec = ModelSpec { arch, att: AttentionKind::Ours, att_mix: GateMix::Sum, classes: vec!["a".into(), "b".into()], image_size: 64 };
            let net = Network::new(spec, &Device::Cpu, 0).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
            let n = net.stage_names().len();
            let whole = net.forward_t(&x, false).unwrap();
            let split = net.head_t(&net.stages_t(&net.stages_t(&x, false, 0..2).unwrap(), false, 2..n).unwrap()).unwrap();
            let diff: f32 = (whole - split).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(diff < 1e-5, "{arch}: {diff}");
        }
    }
}
