//! EfficientNet-Lite0 (MBConv blocks, depthwise convs, ReLU6, no squeeze-excitation)
//! with the `EfficientNet-PyTorch` parameter names of the ImageNet file in
//! `../shared/pretrained` (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, …).
//!
//! The weights come from TensorFlow, so convolutions use TF's "same" padding (for a
//! stride-2 conv on an even input the extra pixel goes bottom/right) and batch-norm
//! uses eps 1e-3.

use super::attention::{AttentionKind, BlockAttention, GateMix, RecycleAttention};
use super::depthwise::{depthwise_conv2d_same, pad_same};
use super::batchnorm_op::Act;
use super::layers::{global_avg_pool, BatchNorm2d, Conv2d, Linear};
use super::params::{Init, Scope};
use candle_core::{Result, Tensor};

const BN_EPS: f64 = 1e-3;
pub const FEATURES: usize = 1280;

/// One stage of the network: (repeats, kernel, first stride, expansion, in, out).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project.
#[derive(Debug, Clone)]
struct MbConv {
    expand: Option<(Conv2d, BatchNorm2d)>,
    depthwise: Tensor,
    bn1: BatchNorm2d,
    project: Conv2d,
    bn2: BatchNorm2d,
    stride: usize,
    residual: bool,
    attention: Option<BlockAttention>,
}

impl MbConv {
    fn new(s: &Scope, att: AttentionKind, c_in: usize, c_out: usize, expansion: usize, kernel: usize, stride: usize) -> Result<Self> {
        let hidden = c_in * expansion;
        let expand = (expansion != 1)
            .then(|| -> Result<_> {
                Ok((
                    Conv2d::new(&s.pp("_expand_conv"), c_in, hidden, 1, 1, 0, false)?,
                    BatchNorm2d::with_eps(&s.pp("_bn0"), hidden, BN_EPS)?,
                ))
            })
            .transpose()?;
        let depthwise = s.pp("_depthwise_conv").param((hidden, 1, kernel, kernel), "weight", Init::KaimingFanOut { fan_out: kernel * kernel })?;
        Ok(Self {
            expand,
            depthwise,
            bn1: BatchNorm2d::with_eps(&s.pp("_bn1"), hidden, BN_EPS)?,
            project: Conv2d::new(&s.pp("_project_conv"), hidden, c_out, 1, 1, 0, false)?,
            bn2: BatchNorm2d::with_eps(&s.pp("_bn2"), c_out, BN_EPS)?,
            stride,
            residual: stride == 1 && c_in == c_out,
            attention: BlockAttention::for_block(s, att, c_out)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some((conv, bn)) => bn.forward_act_t(&conv.forward(x)?, train, Act::Relu6)?,
            None => x.clone(),
        };
        y = depthwise_conv2d_same(&y, &self.depthwise, self.stride)?;
        y = self.bn1.forward_act_t(&y, train, Act::Relu6)?;
        y = self.bn2.forward_t(&self.project.forward(&y)?, train)?;
        if let Some(att) = &self.attention {
            y = att.forward_t(&y, train)?;
        }
        if self.residual {
            y = (y + x)?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
pub struct EfficientNet {
    stem: Conv2d,
    bn0: BatchNorm2d,
    blocks: Vec<MbConv>,
    head: Conv2d,
    bn1: BatchNorm2d,
    attention: Option<RecycleAttention>,
    fc: Linear,
}

impl EfficientNet {
    pub fn lite0(s: &Scope, att: AttentionKind, mix: GateMix, classes: usize) -> Result<Self> {
        let mut blocks = Vec::new();
        for &(repeats, kernel, stride, expansion, c_in, c_out) in &STAGES {
            for r in 0..repeats {
                let (c, st) = if r == 0 { (c_in, stride) } else { (c_out, 1) };
                blocks.push(MbConv::new(&s.pp("_blocks").pp(blocks.len()), att, c, c_out, expansion, kernel, st)?);
            }
        }
        Ok(Self {
            stem: Conv2d::new(&s.pp("_conv_stem"), 3, 32, 3, 2, 0, false)?,
            bn0: BatchNorm2d::with_eps(&s.pp("_bn0"), 32, BN_EPS)?,
            blocks,
            head: Conv2d::new(&s.pp("_conv_head"), 320, FEATURES, 1, 1, 0, false)?,
            bn1: BatchNorm2d::with_eps(&s.pp("_bn1"), FEATURES, BN_EPS)?,
            attention: (att == AttentionKind::Ours).then(|| RecycleAttention::new(&s.pp("att"), FEATURES, mix)).transpose()?,
            fc: Linear::new(&s.pp("_fc"), FEATURES, classes)?,
        })
    }

    /// Block index ranges of the seven MBConv stages.
    fn stage_blocks() -> Vec<std::ops::Range<usize>> {
        let mut start = 0;
        STAGES.iter().map(|&(repeats, ..)| { start += repeats; start - repeats..start }).collect()
    }

    /// Stage names, input to output: `stem`, `stage1` … `stage7`, `head`.
    pub fn stage_names(&self) -> Vec<String> {
        let middle = (1..=STAGES.len()).map(|i| format!("stage{i}"));
        std::iter::once("stem".to_string()).chain(middle).chain(["head".to_string()]).collect()
    }

    /// Parameter-name prefixes owned by each stage, in [`Self::stage_names`] order.
    pub fn stage_prefixes(&self) -> Vec<Vec<String>> {
        let blocks = Self::stage_blocks().into_iter().map(|r| r.map(|b| format!("_blocks.{b}.")).collect());
        std::iter::once(vec!["_conv_stem.".into(), "_bn0.".into()])
            .chain(blocks)
            .chain([vec!["_conv_head.".into(), "_bn1.".into()]])
            .collect()
    }

    /// Runs stages `range` (indices into [`Self::stage_names`]) on `x`.
    pub fn stages_t(&self, x: &Tensor, train: bool, range: std::ops::Range<usize>) -> Result<Tensor> {
        let blocks = Self::stage_blocks();
        let mut y = x.clone();
        for i in range {
            y = if i == 0 {
                self.bn0.forward_act_t(&self.stem.forward(&pad_same(&y, 3, 2)?)?, train, Act::Relu6)?
            } else if i <= blocks.len() {
                for block in &self.blocks[blocks[i - 1].clone()] {
                    y = block.forward_t(&y, train)?;
                }
                y
            } else {
                self.bn1.forward_act_t(&self.head.forward(&y)?, train, Act::Relu6)?
            };
        }
        Ok(y)
    }

    /// RecycleNet's spatial gate on the last feature map, if the model has one.
    pub fn attention_map(&self, features: &Tensor) -> Result<Option<Tensor>> {
        self.attention.as_ref().map(|att| att.spatial_gate(features)).transpose()
    }

    /// What follows the last stage: attention, pooling, classifier.
    pub fn head_t(&self, features: &Tensor) -> Result<Tensor> {
        let y = match &self.attention {
            Some(att) => att.forward(features)?,
            None => features.clone(),
        };
        self.fc.forward(&global_avg_pool(&y)?)
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head_t(&self.stages_t(x, train, 0..STAGES.len() + 2)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn lite0_has_the_published_size_and_shapes() {
        let store = ParamStore::new(&Device::Cpu, 0);
        let net = EfficientNet::lite0(&store.root(), AttentionKind::None, GateMix::Sum, 1000).unwrap();
        // EfficientNet-Lite0: 4.65 M parameters with its 1000-class head.
        let params = store.count_trainable() as f64 / 1e6;
        assert!((params - 4.65).abs() < 0.01, "{params} M");
        let p = store.params();
        assert_eq!(p["_blocks.15._project_conv.weight"].var.dims(), &[320, 1152, 1, 1]);
        assert!(!p.contains_key("_blocks.0._expand_conv.weight"));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        assert_eq!(net.forward_t(&x, false).unwrap().dims(), &[2, 1000]);
    }
}
