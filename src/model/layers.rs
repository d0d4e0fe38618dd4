//! Building blocks: convolution, batch-norm, linear, with torchvision's parameter names.

use super::batchnorm_op::{Act, BatchNormTrain, ChannelAffine};
use super::ops;
use super::params::{Init, Scope};
use super::quant::QuantConv;
use candle_core::{Result, Tensor, Var, D};

/// 2-D convolution, groups = 1. CPU uses im2col + GEMM (see [`ops`]); other devices use
/// Candle's native kernels. A weight quantized in the model file runs through
/// [`QuantConv`] instead.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// The weight's key in model files.
    name: String,
    weight: ConvWeight,
    bias: Option<Tensor>,
    k: usize,
    stride: usize,
    pad: usize,
}

#[derive(Debug, Clone)]
enum ConvWeight {
    Float(Tensor),
    Quantized(QuantConv),
}

impl Conv2d {
    pub fn new(s: &Scope, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Result<Self> {
        let name = s.full("weight");
        let weight = match s.quantized("weight") {
            Some(q) => ConvWeight::Quantized(
                QuantConv::new(q, c_in, c_out, k).map_err(|e| candle_core::Error::Msg(format!("`{name}`: {e}")))?,
            ),
            None => ConvWeight::Float(s.param((c_out, c_in, k, k), "weight", Init::KaimingFanOut { fan_out: c_out * k * k })?),
        };
        let bias = bias.then(|| s.param(c_out, "bias", Init::UniformFanIn { fan_in: c_in * k * k })).transpose()?;
        Ok(Self { name, weight, bias, k, stride, pad })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            ConvWeight::Float(weight) => {
                super::quant::record_input(&self.name, x)?;
                self.forward_f32(x, weight)?
            }
            ConvWeight::Quantized(conv) => conv.forward(x, self.k, self.stride, self.pad)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    fn forward_f32(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (c_out, c_in, k, _) = weight.dims4()?;
        let same_size = self.stride == 1 && 2 * self.pad + 1 == k;
        if x.device().is_cpu() && same_size && c_out * k * k < c_in {
            ops::conv2d_few_outputs(x, weight, self.pad)
        } else if x.device().is_cpu() {
            ops::conv2d_im2col(x, weight, self.stride, self.pad)
        } else {
            x.conv2d(weight, self.pad, self.stride, 1, 1)
        }
    }
}

/// Batch normalisation over NCHW channels, PyTorch semantics (momentum 0.1, eps 1e-5,
/// biased variance to normalise, unbiased variance in the running average).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
}

/// PyTorch's default; TensorFlow-born weights (EfficientNet) use 1e-3.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    pub fn new(s: &Scope, c: usize) -> Result<Self> {
        Self::with_eps(s, c, BN_EPS)
    }

    pub fn with_eps(s: &Scope, c: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: s.param(c, "weight", Init::Const(1.0))?,
            bias: s.param(c, "bias", Init::Const(0.0))?,
            running_mean: s.buffer(c, "running_mean", 0.0)?,
            running_var: s.buffer(c, "running_var", 1.0)?,
            eps,
        })
    }

    /// `train`: normalise with batch statistics and update the running averages.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act_t(x, train, Act::Identity)
    }

    /// Batch-norm followed by `act`; on the CPU both run as one pass.
    pub fn forward_act_t(&self, x: &Tensor, train: bool, act: Act) -> Result<Tensor> {
        if x.device().is_cpu() {
            if train {
                return self.train_cpu(x, act);
            }
            // Detached: eval mode passes gradients to the input only.
            let params = Tensor::stack(&self.eval_scale_shift()?, 0)?.detach();
            return x.contiguous()?.apply_op2(&params, ChannelAffine(act));
        }
        let y = self.normalise_t(x, train)?;
        match act {
            Act::Identity => Ok(y),
            Act::Relu => y.relu(),
            Act::Relu6 => y.clamp(0f32, 6f32),
        }
    }

    /// The eval-mode transform as one per-channel scale and shift. The running
    /// statistics are state, never trained: detached, so no graph hangs on them.
    fn eval_scale_shift(&self) -> Result<[Tensor; 2]> {
        let scale = (&self.weight / (self.running_var.as_tensor().detach() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - (self.running_mean.as_tensor().detach() * &scale)?)?;
        Ok([scale, shift])
    }

    /// Batch-norm from Candle's generic ops: other devices than the CPU, and tests.
    fn normalise_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let per_channel = |t: &Tensor| t.reshape((1, (), 1, 1));
        if !train {
            let [scale, shift] = self.eval_scale_shift()?;
            return x.broadcast_mul(&per_channel(&scale)?)?.broadcast_add(&per_channel(&shift)?);
        }
        let (n, _, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (var.clone() + self.eps)?.sqrt()?.recip()?;
        let scale = inv_std.broadcast_mul(&per_channel(&self.weight)?)?;
        let y = centred.broadcast_mul(&scale)?.broadcast_add(&per_channel(&self.bias)?)?;
        self.update_running(&mean.detach().flatten_all()?, &var.detach().flatten_all()?, count)?;
        Ok(y)
    }

    /// Train mode on the CPU: batch statistics, normalisation and `act` as fused kernels.
    fn train_cpu(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let stats = super::batchnorm_op::batch_stats(x)?;
        let params = Tensor::cat(&[&stats, &self.weight.unsqueeze(0)?, &self.bias.unsqueeze(0)?], 0)?;
        let y = x.contiguous()?.apply_op2(&params, BatchNormTrain { eps: self.eps as f32, act })?;
        self.update_running(&stats.get(0)?, &stats.get(1)?, (n * h * w) as f64)?;
        Ok(y)
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
        let blend = |old: &Tensor, new: &Tensor| (old * (1.0 - BN_MOMENTUM))? + (new * BN_MOMENTUM)?;
        self.running_mean.set(&blend(self.running_mean.as_tensor(), mean)?)?;
        self.running_var.set(&blend(self.running_var.as_tensor(), &unbiased)?)
    }
}

/// Fully connected layer, `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(s: &Scope, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            weight: s.param((c_out, c_in), "weight", Init::UniformFanIn { fan_in: c_in })?,
            bias: s.param(c_out, "bias", Init::UniformFanIn { fan_in: c_in })?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Global average pooling, NCHW → NC.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::ParamStore;
    use candle_core::Device;

    #[test]
    fn fused_eval_affine_matches_generic_ops_with_input_gradient() {
        let store = ParamStore::new(&Device::Cpu, 0);
        let bn = BatchNorm2d::new(&store.root().pp("bn"), 3).unwrap();
        // Move the statistics away from identity first.
        bn.forward_t(&Tensor::randn(1f32, 3.0, (4, 3, 5, 5), &Device::Cpu).unwrap(), true).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 4.0, (2, 3, 4, 6), &Device::Cpu).unwrap()).unwrap();
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            let fused = bn.forward_act_t(&x, false, act).unwrap();
            let plain = bn.normalise_t(&x, false).unwrap();
            let generic = match act {
                Act::Identity => plain,
                Act::Relu => plain.relu().unwrap(),
                Act::Relu6 => plain.clamp(0f32, 6f32).unwrap(),
            };
            let d: f32 = (&fused - &generic).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-5, "{act:?}: {d}");
            let g1 = fused.sum_all().unwrap().backward().unwrap();
            let g2 = generic.sum_all().unwrap().backward().unwrap();
            let d: f32 = (g1.get(&x).unwrap() - g2.get(&x).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d < 1e-5, "{act:?} gradient: {d}");
        }
    }

    /// The fused CPU kernel, with each activation, against the same layer built from
    /// Candle's generic ops.
    #[test]
    fn fused_batch_norm_matches_generic_ops_with_gradients() {
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (3, 4, 5, 6), &Device::Cpu).unwrap()).unwrap();
        // γ around 3 so that ReLU6's upper bend is crossed too.
        let gamma = Var::from_tensor(&Tensor::randn(3f32, 0.5, 4, &Device::Cpu).unwrap()).unwrap();
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, 4, &Device::Cpu).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (3, 4, 5, 6), &Device::Cpu).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        for act in [Act::Identity, Act::Relu, Act::Relu6] {
            let stats = crate::model::batchnorm_op::batch_stats(&x).unwrap();
            let params = Tensor::cat(&[&stats, &gamma.unsqueeze(0).unwrap(), &beta.unsqueeze(0).unwrap()], 0).unwrap();
            let fused = x.apply_op2(&params, BatchNormTrain { eps: 1e-5, act }).unwrap();
            let mean = x.mean_keepdim((0, 2, 3)).unwrap();
            let centred = x.broadcast_sub(&mean).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
            let normalised = centred
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap()
                .broadcast_mul(&gamma.reshape((1, 4, 1, 1)).unwrap()).unwrap()
                .broadcast_add(&beta.reshape((1, 4, 1, 1)).unwrap()).unwrap();
            let generic = match act {
                Act::Identity => normalised,
                Act::Relu => normalised.relu().unwrap(),
                Act::Relu6 => normalised.clamp(0f32, 6f32).unwrap(),
            };
            assert!(diff(&fused, &generic) < 1e-4, "{act:?}");
            let g1 = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (generic * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &gamma, &beta] {
                assert!(diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-3, "{act:?} gradient");
            }
        }
    }

    #[test]
    fn batch_norm_train_normalises_and_updates_running_stats() {
        let store = ParamStore::new(&Device::Cpu, 0);
        let bn = BatchNorm2d::new(&store.root().pp("bn"), 2).unwrap();
        // Channel 0 is constant 3, channel 1 alternates 0/2 (mean 1, biased var 1).
        let x = Tensor::from_vec(vec![3f32, 3., 3., 3., 0., 2., 0., 2.], (1, 2, 2, 2), &Device::Cpu).unwrap();
        let y = bn.forward_t(&x, true).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(y[..4].iter().all(|v| v.abs() < 1e-3));
        assert!((y[5] - 1.0).abs() < 1e-3 && (y[4] + 1.0).abs() < 1e-3);
        let params = store.params();
        let rm: Vec<f32> = params["bn.running_mean"].var.to_vec1().unwrap();
        let rv: Vec<f32> = params["bn.running_var"].var.to_vec1().unwrap();
        assert!((rm[0] - 0.3).abs() < 1e-6 && (rm[1] - 0.1).abs() < 1e-6);
        // Unbiased variance 4/3 blended into 1: 0.9 + 0.1·4/3.
        assert!((rv[1] - (0.9 + 0.4 / 3.0)).abs() < 1e-6 && (rv[0] - 0.9).abs() < 1e-6);
        assert!(!params["bn.running_mean"].trainable && params["bn.weight"].trainable);
        // Eval mode uses the running statistics.
        let e: Vec<f32> = bn.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!((e[0] - (3.0 - 0.3) / (0.9f32 + 1e-5).sqrt()).abs() < 1e-4);
    }
}
