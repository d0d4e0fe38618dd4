//! ResNet-18/34/50/101/152 with torchvision's layout and parameter names, so
//! torchvision checkpoints map one to one.

use super::attention::{AttentionKind, BlockAttention, GateMix, RecycleAttention};
use super::batchnorm_op::Act;
use super::layers::{global_avg_pool, BatchNorm2d, Conv2d, Linear};
use super::ops::max_pool2d;
use super::params::Scope;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
    /// EfficientNet-Lite0: ~0.4 GFLOPs against ResNet-18's 1.8, the cheaper backbone for a Pi.
    #[serde(rename = "efficientnet_lite0")]
    #[value(name = "efficientnet_lite0")]
    EfficientnetLite0,
}

impl Arch {
    fn blocks(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
            Arch::Resnet101 => [3, 4, 23, 3],
            Arch::Resnet152 => [3, 8, 36, 3],
            Arch::EfficientnetLite0 => unreachable!("not a ResNet"),
        }
    }

    pub fn is_resnet(self) -> bool {
        self != Arch::EfficientnetLite0
    }

    fn bottleneck(self) -> bool {
        !matches!(self, Arch::Resnet18 | Arch::Resnet34)
    }

    fn expansion(self) -> usize {
        if self.bottleneck() { 4 } else { 1 }
    }

    /// Channels of the last stage's output (what the head and `ours` see).
    pub fn features(self) -> usize {
        match self {
            Arch::EfficientnetLite0 => super::efficientnet::FEATURES,
            _ => 512 * self.expansion(),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no skipped variants");
        f.write_str(name.get_name())
    }
}

#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// `conv{i}` + `bn{i}` inside a block.
    fn new(s: &Scope, i: usize, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&s.pp(format!("conv{i}")), c_in, c_out, k, stride, k / 2, false)?,
            bn: BatchNorm2d::new(&s.pp(format!("bn{i}")), c_out)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool, act: Act) -> Result<Tensor> {
        self.bn.forward_act_t(&self.conv.forward(x)?, train, act)
    }
}

/// A residual block: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1).
#[derive(Debug, Clone)]
struct Block {
    layers: Vec<ConvBn>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
    attention: Option<BlockAttention>,
}

impl Block {
    fn new(s: &Scope, arch: Arch, att: AttentionKind, c_in: usize, planes: usize, stride: usize) -> Result<Self> {
        let c_out = planes * arch.expansion();
        let layers = if arch.bottleneck() {
            // torchvision (v1.5) puts the stride on the 3×3 conv.
            vec![
                ConvBn::new(s, 1, c_in, planes, 1, 1)?,
                ConvBn::new(s, 2, planes, planes, 3, stride)?,
                ConvBn::new(s, 3, planes, c_out, 1, 1)?,
            ]
        } else {
            vec![ConvBn::new(s, 1, c_in, planes, 3, stride)?, ConvBn::new(s, 2, planes, planes, 3, 1)?]
        };
        let downsample = if stride != 1 || c_in != c_out {
            let d = s.pp("downsample");
            Some((Conv2d::new(&d.pp(0), c_in, c_out, 1, stride, 0, false)?, BatchNorm2d::new(&d.pp(1), c_out)?))
        } else {
            None
        };
        let attention = BlockAttention::for_block(s, att, c_out)?;
        Ok(Self { layers, downsample, attention })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            // ReLU between convs; the last one comes after the residual add.
            let act = if i + 1 < self.layers.len() { Act::Relu } else { Act::Identity };
            y = layer.forward_t(&y, train, act)?;
        }
        if let Some(att) = &self.attention {
            y = att.forward_t(&y, train)?;
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        (y + identity)?.relu()
    }
}

/// The whole classifier: stem, four stages, optional RecycleNet attention, head.
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Block>>,
    attention: Option<RecycleAttention>,
    fc: Linear,
}

impl ResNet {
    pub fn new(s: &Scope, arch: Arch, att: AttentionKind, mix: GateMix, classes: usize) -> Result<Self> {
        if !arch.is_resnet() {
            candle_core::bail!("{arch} is not a ResNet");
        }
        let conv1 = Conv2d::new(&s.pp("conv1"), 3, 64, 7, 2, 3, false)?;
        let bn1 = BatchNorm2d::new(&s.pp("bn1"), 64)?;
        let mut c_in = 64;
        let mut stages = Vec::new();
        for (i, (&n, planes)) in arch.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            let layer = s.pp(format!("layer{}", i + 1));
            let first_stride = if i == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if b == 0 { first_stride } else { 1 };
                blocks.push(Block::new(&layer.pp(b), arch, att, c_in, planes, stride)?);
                c_in = planes * arch.expansion();
            }
            stages.push(blocks);
        }
        let attention =
            (att == AttentionKind::Ours).then(|| RecycleAttention::new(&s.pp("att"), c_in, mix)).transpose()?;
        let fc = Linear::new(&s.pp("fc"), c_in, classes)?;
        Ok(Self { conv1, bn1, stages, attention, fc })
    }

    /// Stage names, input to output: `stem`, `layer1` … `layer4`.
    pub fn stage_names(&self) -> Vec<String> {
        std::iter::once("stem".to_string()).chain((1..=self.stages.len()).map(|i| format!("layer{i}"))).collect()
    }

    /// Parameter-name prefixes owned by each stage, in [`Self::stage_names`] order.
    pub fn stage_prefixes(&self) -> Vec<Vec<String>> {
        std::iter::once(vec!["conv1.".into(), "bn1.".into()])
            .chain((1..=self.stages.len()).map(|i| vec![format!("layer{i}.")]))
            .collect()
    }

    /// Runs stages `range` (indices into [`Self::stage_names`]) on `x`.
    pub fn stages_t(&self, x: &Tensor, train: bool, range: std::ops::Range<usize>) -> Result<Tensor> {
        let mut x = x.clone();
        for i in range {
            x = match i {
                0 => max_pool2d(&self.bn1.forward_act_t(&self.conv1.forward(&x)?, train, Act::Relu)?, 3, 2, 1)?,
                _ => {
                    for block in &self.stages[i - 1] {
                        x = block.forward_t(&x, train)?;
                    }
                    x
                }
            };
        }
        Ok(x)
    }

    /// RecycleNet's spatial gate on the last feature map, if the model has one.
    pub fn attention_map(&self, features: &Tensor) -> Result<Option<Tensor>> {
        self.attention.as_ref().map(|att| att.spatial_gate(features)).transpose()
    }

    /// What follows the last stage: attention, pooling, classifier.
    pub fn head_t(&self, features: &Tensor) -> Result<Tensor> {
        let x = match &self.attention {
            Some(att) => att.forward(features)?,
            None => features.clone(),
        };
        self.fc.forward(&global_avg_pool(&x)?)
    }

    /// Logits (N, classes) for an NCHW batch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head_t(&self.stages_t(x, train, 0..self.stages.len() + 1)?)
    }
}
