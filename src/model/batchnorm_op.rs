//! Training-mode batch-norm as fused CPU kernels: one parallel pass per channel for the
//! statistics, one for the output, and a fused backward. Built from Candle's generic
//! ops the same layer takes ~15 tensor ops, most of them strided reductions.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use super::ops::contiguous_f32 as slice;
use rayon::prelude::*;

/// NCHW geometry: `n` images, `c` channels, `hw` pixels per plane.
#[derive(Debug, Clone, Copy)]
struct Planes {
    n: usize,
    c: usize,
    hw: usize,
}

impl Planes {
    fn of(shape: &Shape) -> Result<Self> {
        let (n, c, h, w) = shape.dims4()?;
        Ok(Self { n, c, hw: h * w })
    }
    /// The `hw`-long runs of channel `ch`, one per image.
    fn runs<'a>(&self, x: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (c, hw) = (self.c, self.hw);
        (0..self.n).map(move |i| &x[(i * c + ch) * hw..][..hw])
    }
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// Per-channel batch statistics: a (2, C) tensor of [mean; biased variance].
pub fn batch_stats(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("batch_stats: CPU only") };
    let data = slice(cpu, layout, "batch-stats")?;
    let p = Planes::of(layout.shape())?;
    let stats: Vec<(f32, f32)> = (0..p.c)
        .into_par_iter()
        .map(|ch| {
            // f64 accumulation: a plane sum over 16·112·112 values loses digits in f32.
            let sum: f64 = p.runs(data, ch).flatten().map(|&v| v as f64).sum();
            let mean = sum / p.count();
            let sq: f64 = p.runs(data, ch).flatten().map(|&v| (v as f64 - mean).powi(2)).sum();
            (mean as f32, (sq / p.count()) as f32)
        })
        .collect();
    let (means, vars): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    Tensor::from_vec([means, vars].concat(), (2, p.c), x.device())
}

/// `y = act((x - mean)/sqrt(var + eps)·γ + β)`, with `params` = (4, C) rows
/// [mean; var; γ; β]. Gradients flow to γ and β (rows 2 and 3) and to x; the
/// statistics' own dependence on x is accounted for in the backward formula, so rows
/// 0–1 must be detached. The activation rides along because as separate ops (ReLU6
/// is a clamp: a maximum and a minimum, each with comparison masks in its backward)
/// it costs several more full-size tensors per layer, all kept until backward.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormTrain {
    pub eps: f32,
    pub act: Act,
}

/// Per channel: (inverse std, mean, γ, β).
fn channel_params(params: &[f32], c: usize, ch: usize, eps: f32) -> (f32, f32, f32, f32) {
    let inv_std = 1.0 / (params[c + ch] + eps).sqrt();
    (inv_std, params[ch], params[2 * c + ch], params[3 * c + ch])
}

impl CustomOp2 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "batch-norm-train")?;
        let params = slice(s2, l2, "batch-norm-train")?;
        let p = Planes::of(l1.shape())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(p.hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % p.c;
            let (inv_std, mean, gamma, beta) = channel_params(params, p.c, ch, self.eps);
            let (scale, shift) = (inv_std * gamma, beta - mean * inv_std * gamma);
            for (o, &v) in out.iter_mut().zip(&x[plane * p.hw..][..p.hw]) {
                *o = self.act.apply(v * scale + shift);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, params: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = match self.act {
            Act::Identity => grad.contiguous()?,
            // dy·act'(y): the affine gradient with unit scale (the shift row is unused).
            act => {
                let unit = Tensor::ones((2, x.dim(1)?), candle_core::DType::F32, x.device())?;
                res.apply_op3_no_bwd(&unit, &grad.contiguous()?, &ChannelAffineGrad(act))?
            }
        };
        let sums = x.apply_op3_no_bwd(params, &grad, &GradSums { eps: self.eps })?; // (2, C)
        let dx = x.apply_op3_no_bwd(&Tensor::cat(&[params, &sums], 0)?, &grad, &GradInput { eps: self.eps })?;
        let zeros = sums.zeros_like()?;
        Ok((Some(dx), Some(Tensor::cat(&[&zeros, &sums], 0)?)))
    }
}

/// (2, C): [Σ dy·x̂ (= dγ); Σ dy (= dβ)] per channel.
struct GradSums {
    eps: f32,
}

impl CustomOp3 for GradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, params, dy) = (slice(s1, l1, "bn-grad")?, slice(s2, l2, "bn-grad")?, slice(s3, l3, "bn-grad")?);
        let p = Planes::of(l1.shape())?;
        let sums: Vec<(f32, f32)> = (0..p.c)
            .into_par_iter()
            .map(|ch| {
                let (inv_std, mean, _, _) = channel_params(params, p.c, ch, self.eps);
                let (mut dgamma, mut dbeta) = (0f64, 0f64);
                for (xs, gs) in p.runs(x, ch).zip(p.runs(dy, ch)) {
                    for (&v, &g) in xs.iter().zip(gs) {
                        dgamma += (g * (v - mean) * inv_std) as f64;
                        dbeta += g as f64;
                    }
                }
                (dgamma as f32, dbeta as f32)
            })
            .collect();
        let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
        Ok((CpuStorage::F32([dgamma, dbeta].concat()), Shape::from((2, p.c))))
    }
}

/// dx = γ/σ · (dy − dβ/M − x̂·dγ/M), with params = (6, C) [mean; var; γ; β; dγ; dβ].
struct GradInput {
    eps: f32,
}

impl CustomOp3 for GradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, params, dy) = (slice(s1, l1, "bn-grad")?, slice(s2, l2, "bn-grad")?, slice(s3, l3, "bn-grad")?);
        let p = Planes::of(l1.shape())?;
        let m = p.count() as f32;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(p.hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % p.c;
            let (inv_std, mean, gamma, _) = channel_params(params, p.c, ch, self.eps);
            let (dgamma, dbeta) = (params[4 * p.c + ch] / m, params[5 * p.c + ch] / m);
            let xs = &x[plane * p.hw..][..p.hw];
            let gs = &dy[plane * p.hw..][..p.hw];
            for ((o, &v), &g) in out.iter_mut().zip(xs).zip(gs) {
                *o = gamma * inv_std * (g - dbeta - (v - mean) * inv_std * dgamma);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The activation fused after a batch-norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    Relu6,
}

impl Act {
    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => v.max(0.0),
            Act::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// Derivative, from the activation's output.
    #[inline]
    fn slope(self, y: f32) -> f32 {
        match self {
            Act::Identity => 1.0,
            Act::Relu => (y > 0.0) as u8 as f32,
            Act::Relu6 => (y > 0.0 && y < 6.0) as u8 as f32,
        }
    }
}

/// Eval-mode batch-norm and its activation in one pass: `y = act(x·scale + shift)` with
/// `params` = (2, C) rows [scale; shift]. Generic ops take three passes and three
/// buffers for the same. Gradients flow to `x` only (the statistics are fixed in
/// eval mode).
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffine(pub Act);

impl CustomOp2 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, params) = (slice(s1, l1, "channel-affine")?, slice(s2, l2, "channel-affine")?);
        let p = Planes::of(l1.shape())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(p.hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % p.c;
            let (scale, shift) = (params[ch], params[p.c + ch]);
            for (o, &v) in out.iter_mut().zip(&x[plane * p.hw..][..p.hw]) {
                *o = self.0.apply(v * scale + shift);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, params: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = res.apply_op3_no_bwd(params, &grad.contiguous()?, &ChannelAffineGrad(self.0))?;
        Ok((Some(dx), None))
    }
}

/// dx = dy · scale · act'(y).
struct ChannelAffineGrad(Act);

impl CustomOp3 for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "channel-affine-grad"
    }

    fn cpu_fwd(
        &self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, params, dy) = (slice(s1, l1, "affine-grad")?, slice(s2, l2, "affine-grad")?, slice(s3, l3, "affine-grad")?);
        let p = Planes::of(l1.shape())?;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(p.hw).enumerate().for_each(|(plane, out)| {
            let scale = params[plane % p.c];
            let (ys, gs) = (&y[plane * p.hw..][..p.hw], &dy[plane * p.hw..][..p.hw]);
            for ((o, &v), &g) in out.iter_mut().zip(ys).zip(gs) {
                *o = g * scale * self.0.slope(v);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
