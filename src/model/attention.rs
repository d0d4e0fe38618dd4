//! Attention modules: RecycleNet's own (`ours`), squeeze-excitation and CBAM.

use super::layers::{global_avg_pool, BatchNorm2d, Conv2d, Linear};
use super::params::Scope;
use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;
use serde::{Deserialize, Serialize};

/// Which attention the network carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    None,
    /// RecycleNet: channel + spatial gates once, on the last stage's output.
    Ours,
    /// Squeeze-excitation in every residual block.
    Se,
    /// CBAM in every residual block.
    Cbam,
}

/// How RecycleNet's two gates are combined (the seed's ablations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GateMix {
    /// `x·σ(channel) + x·σ(spatial)`: the paper's module.
    #[default]
    Sum,
    /// `x·σ(channel)·σ(spatial)`.
    Product,
    /// `max(x·σ(channel), x·σ(spatial))`.
    Max,
    /// `x·σ(spatial)` alone.
    SpatialOnly,
}

const REDUCTION: usize = 16;

/// Two-layer bottleneck MLP, `Linear(C→C/16)–ReLU–Linear(C/16→C)`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(s: &Scope, c: usize) -> Result<Self> {
        let hidden = (c / REDUCTION).max(1);
        Ok(Self { fc1: Linear::new(&s.pp("fc1"), c, hidden)?, fc2: Linear::new(&s.pp("fc2"), hidden, c)? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// Per-channel weights (N, C) → (N, C, 1, 1) for broadcasting over NCHW.
fn as_channel_gate(w: &Tensor) -> Result<Tensor> {
    let (n, c) = w.dims2()?;
    w.reshape((n, c, 1, 1))
}

/// RecycleNet's attention module.
#[derive(Debug, Clone)]
pub struct RecycleAttention {
    channel: Option<Mlp>,
    spatial: Conv2d,
    mix: GateMix,
}

impl RecycleAttention {
    pub fn new(s: &Scope, c: usize, mix: GateMix) -> Result<Self> {
        let channel = (mix != GateMix::SpatialOnly).then(|| Mlp::new(&s.pp("channel"), c)).transpose()?;
        let spatial = Conv2d::new(&s.pp("spatial"), c, 1, 7, 1, 3, true)?;
        Ok(Self { channel, spatial, mix })
    }

    /// The spatial gate σ(conv7×7(x)), (N, 1, H, W): where the module looks.
    pub fn spatial_gate(&self, x: &Tensor) -> Result<Tensor> {
        sigmoid(&self.spatial.forward(x)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.spatial_gate(x)?;
        let spatial = x.broadcast_mul(&gate)?;
        let Some(mlp) = &self.channel else { return Ok(spatial) };
        let channel = x.broadcast_mul(&as_channel_gate(&sigmoid(&mlp.forward(&global_avg_pool(x)?)?)?)?)?;
        match self.mix {
            GateMix::Sum => channel + spatial,
            GateMix::Product => channel.broadcast_mul(&gate),
            GateMix::Max => channel.maximum(&spatial),
            GateMix::SpatialOnly => unreachable!("spatial-only has no channel gate"),
        }
    }
}

/// Squeeze-excitation, applied to a block's output before the residual add.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    mlp: Mlp,
}

impl SqueezeExcite {
    pub fn new(s: &Scope, c: usize) -> Result<Self> {
        Ok(Self { mlp: Mlp::new(s, c)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = sigmoid(&self.mlp.forward(&global_avg_pool(x)?)?)?;
        x.broadcast_mul(&as_channel_gate(&gate)?)
    }
}

/// CBAM: channel attention (avg- and max-pooled through one MLP), then spatial
/// attention (7×7 conv + BN over the channel-wise mean and max).
#[derive(Debug, Clone)]
pub struct Cbam {
    mlp: Mlp,
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Cbam {
    pub fn new(s: &Scope, c: usize) -> Result<Self> {
        Ok(Self {
            mlp: Mlp::new(&s.pp("channel"), c)?,
            conv: Conv2d::new(&s.pp("spatial").pp("conv"), 2, 1, 7, 1, 3, false)?,
            bn: BatchNorm2d::new(&s.pp("spatial").pp("bn"), 1)?,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let avg = self.mlp.forward(&global_avg_pool(x)?)?;
        let max = self.mlp.forward(&x.flatten_from(2)?.max(2)?)?;
        let x = x.broadcast_mul(&as_channel_gate(&sigmoid(&(avg + max)?)?)?)?;
        let pooled = Tensor::cat(&[x.mean_keepdim(1)?, x.max_keepdim(1)?], 1)?;
        let gate = sigmoid(&self.bn.forward_t(&self.conv.forward(&pooled)?, train)?)?;
        x.broadcast_mul(&gate)
    }
}

/// The per-block attention of SE and CBAM networks.
#[derive(Debug, Clone)]
pub enum BlockAttention {
    Se(SqueezeExcite),
    Cbam(Cbam),
}

impl BlockAttention {
    /// The block's attention for `kind`, named `se` / `cbam` inside the block.
    pub fn for_block(s: &Scope, kind: AttentionKind, c: usize) -> Result<Option<Self>> {
        Ok(match kind {
            AttentionKind::Se => Some(Self::Se(SqueezeExcite::new(&s.pp("se"), c)?)),
            AttentionKind::Cbam => Some(Self::Cbam(Cbam::new(&s.pp("cbam"), c)?)),
            AttentionKind::None | AttentionKind::Ours => None,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Se(se) => se.forward(x),
            Self::Cbam(cbam) => cbam.forward_t(x, train),
        }
    }
}
