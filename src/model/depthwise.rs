//! Depthwise convolution (one k×k filter per channel, EfficientNet's MBConv) as CPU
//! kernels with their own backward. Candle runs a grouped conv as one tiny conv per
//! channel, which for 32–1152 channels is mostly overhead.
//!
//! Padding is implicit (out-of-image taps are skipped) and may be uneven, as
//! TensorFlow's "same" padding is for stride 2: a padded copy of the input would
//! cost a full-size tensor per block, plus its gradient.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use super::ops::contiguous_f32 as slice;
use rayon::prelude::*;

/// Geometry of a depthwise convolution over an NCHW tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    /// Zero rows above / columns left of the input; any more below / right are
    /// implied by the output size.
    pad_top: usize,
    pad_left: usize,
    out_h: usize,
    out_w: usize,
}

impl Geom {
    /// TensorFlow's "same": `ceil(size / stride)` outputs, the padding split with the
    /// odd pixel at the bottom/right.
    fn same(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize) -> Self {
        let (out_h, out_w) = (h.div_ceil(stride), w.div_ceil(stride));
        let (pad_top, pad_left) = (same_padding(h, k, stride).0, same_padding(w, k, stride).0);
        Self { n, c, h, w, k, stride, pad_top, pad_left, out_h, out_w }
    }

    /// Output columns `x` whose input column `x·stride + kj − pad_left` lies inside the row.
    #[inline]
    fn valid_columns(&self, kj: usize) -> std::ops::Range<usize> {
        let first = self.pad_left.saturating_sub(kj).div_ceil(self.stride);
        let last = (self.w + self.pad_left).checked_sub(kj + 1).map_or(0, |m| m / self.stride + 1).min(self.out_w);
        first..last.max(first)
    }

    /// The output columns tap column `kj` reaches and the input column of the first
    /// of them (the others follow every `stride` columns); `None` if it reaches none.
    #[inline]
    fn tap_span(&self, kj: usize) -> Option<(std::ops::Range<usize>, usize)> {
        let cols = self.valid_columns(kj);
        if cols.is_empty() {
            return None;
        }
        let first = cols.start * self.stride + kj - self.pad_left;
        Some((cols, first))
    }

    /// Calls `f(output row, input row, tap, tap column)` for every (output row, kernel
    /// tap) pair of a plane whose input row is inside the image; the row-level loop
    /// lets the inner column loops run without bounds branches.
    #[inline]
    fn for_each_row_tap(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        for ki in 0..self.k {
            for y in 0..self.out_h {
                let iy = (y * self.stride + ki) as isize - self.pad_top as isize;
                if iy < 0 || iy as usize >= self.h {
                    continue;
                }
                for kj in 0..self.k {
                    f(y, iy as usize, ki * self.k + kj, kj);
                }
            }
        }
    }
}

/// `y[n,c] = x[n,c] ⋆ w[c]`, weight shape (C, 1, k, k).
#[derive(Debug, Clone, Copy)]
pub struct Depthwise(pub Geom);

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "depthwise")?, slice(s2, l2, "depthwise")?);
        let g = self.0;
        let (plane_in, plane_out, taps, ow) = (g.h * g.w, g.out_h * g.out_w, g.k * g.k, g.out_w);
        let mut y = vec![0f32; g.n * g.c * plane_out];
        y.par_chunks_mut(plane_out).enumerate().for_each(|(nc, out)| {
            let src = &x[nc * plane_in..][..plane_in];
            let k = &w[(nc % g.c) * taps..][..taps];
            g.for_each_row_tap(|y, iy, t, kj| {
                if let Some((cols, first)) = g.tap_span(kj) {
                    add_scaled(&mut out[y * ow..][cols], &src[iy * g.w + first..(iy + 1) * g.w], g.stride, k[t]);
                }
            });
        });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.out_h, g.out_w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &grad, &DepthwiseGrad { g: self.0, wrt_input: true })?;
        let dw = x.apply_op3_no_bwd(w, &grad, &DepthwiseGrad { g: self.0, wrt_input: false })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Gradient of [`Depthwise`] with respect to its input or its weight.
struct DepthwiseGrad {
    g: Geom,
    wrt_input: bool,
}

impl CustomOp3 for DepthwiseGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad"
    }

    fn cpu_fwd(
        &self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (slice(s1, l1, "depthwise-grad")?, slice(s2, l2, "depthwise-grad")?, slice(s3, l3, "depthwise-grad")?);
        let g = self.g;
        let (plane_in, plane_out, taps, ow) = (g.h * g.w, g.out_h * g.out_w, g.k * g.k, g.out_w);
        if self.wrt_input {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(plane_in).enumerate().for_each(|(nc, out)| {
                let d = &dy[nc * plane_out..][..plane_out];
                let k = &w[(nc % g.c) * taps..][..taps];
                g.for_each_row_tap(|y, iy, t, kj| {
                    if let Some((cols, first)) = g.tap_span(kj) {
                        scatter_scaled(&mut out[iy * g.w + first..(iy + 1) * g.w], &d[y * ow..][cols], g.stride, k[t]);
                    }
                });
            });
            return Ok((CpuStorage::F32(dx), l1.shape().clone()));
        }
        // One task per channel, summing over the batch: no two tasks share a weight.
        let mut dw = vec![0f32; w.len()];
        dw.par_chunks_mut(taps).enumerate().for_each(|(c, out)| {
            for n in 0..g.n {
                let nc = n * g.c + c;
                let (src, d) = (&x[nc * plane_in..][..plane_in], &dy[nc * plane_out..][..plane_out]);
                g.for_each_row_tap(|y, iy, t, kj| {
                    if let Some((cols, first)) = g.tap_span(kj) {
                        out[t] += dot(&d[y * ow..][cols], &src[iy * g.w + first..(iy + 1) * g.w], g.stride);
                    }
                });
            }
        });
        Ok((CpuStorage::F32(dw), l2.shape().clone()))
    }
}

// The row loops below take slices and iterators instead of indices, so that the
// compiler drops the bounds checks and vectorises the stride-1 case.

/// `dst[i] += src[i·stride]·w`.
#[inline]
fn add_scaled(dst: &mut [f32], src: &[f32], stride: usize, w: f32) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s * w);
    } else {
        dst.iter_mut().zip(src.iter().step_by(stride)).for_each(|(d, &s)| *d += s * w);
    }
}

/// `dst[i·stride] += src[i]·w`.
#[inline]
fn scatter_scaled(dst: &mut [f32], src: &[f32], stride: usize, w: f32) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s * w);
    } else {
        dst.iter_mut().step_by(stride).zip(src).for_each(|(d, &s)| *d += s * w);
    }
}

/// `Σ a[i]·b[i·stride]`, in eight running sums (a single one would forbid SIMD).
#[inline]
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    let mut sums = [0f32; 8];
    let mut add = |i: usize, v: f32| sums[i % 8] += v;
    if stride == 1 {
        a.iter().zip(b).enumerate().for_each(|(i, (&x, &y))| add(i, x * y));
    } else {
        a.iter().zip(b.iter().step_by(stride)).enumerate().for_each(|(i, (&x, &y))| add(i, x * y));
    }
    sums.iter().sum()
}

/// The weight's channels must match the input's.
fn check_weight(x: &Tensor, weight: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 || kh != kw {
        candle_core::bail!("depthwise weight {:?} does not fit {c} channels", weight.dims());
    }
    Ok((n, c, h, w, kh))
}

fn run(x: &Tensor, weight: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Depthwise(g))
}

/// Depthwise convolution with TensorFlow's "same" padding (see [`pad_same`]).
pub fn depthwise_conv2d_same(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, c, h, w, k) = check_weight(x, weight)?;
    if !x.device().is_cpu() {
        return pad_same(x, k, stride)?.conv2d(weight, 0, stride, 1, c);
    }
    run(x, weight, Geom::same(n, c, h, w, k, stride))
}

/// TF's "same" padding of one axis, (before, after): `ceil(size / stride)` outputs,
/// the odd pixel after.
fn same_padding(size: usize, k: usize, stride: usize) -> (usize, usize) {
    let total = ((size.div_ceil(stride) - 1) * stride + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Zero-pads `x` the way TF's "same" padding does for a k×k window at `stride`: the
/// odd extra pixel of a stride-2 window goes bottom/right.
pub fn pad_same(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let ((top, bottom), (left, right)) = (same_padding(h, k, stride), same_padding(w, k, stride));
    if top + bottom + left + right == 0 {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Symmetric padding `pad` on every side, as Candle's reference conv takes it.
    fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
        let (n, c, h, w, k) = check_weight(x, weight)?;
        let out = |size: usize| (size + 2 * pad - k) / stride + 1;
        let g = Geom { n, c, h, w, k, stride, pad_top: pad, pad_left: pad, out_h: out(h), out_w: out(w) };
        run(x, weight, g)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn matches_candle_forward_and_finite_difference_gradients() {
        // (n, c, h, w, k, stride, pad): 3x3 and 5x5, stride 1 and 2, odd and even sizes.
        let cases = [(2, 5, 9, 9, 3, 1, 1), (1, 4, 11, 11, 5, 2, 2), (3, 3, 7, 8, 3, 2, 1), (2, 2, 6, 6, 5, 1, 2)];
        for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, 1, k, k), &Device::Cpu).unwrap()).unwrap();
            let ours = depthwise_conv2d(&x, &wt, s, p).unwrap();
            let reference = x.conv2d(&wt, p, s, 1, c).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_diff(&ours, &reference) < 1e-4, "forward case {i}");
            let up = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu).unwrap();
            let grads = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let loss = |x: &Tensor, w: &Tensor| -> f32 {
                (depthwise_conv2d(x, w, s, p).unwrap() * &up).unwrap().sum_all().unwrap().to_scalar().unwrap()
            };
            check_numerically(&x, grads.get(&x).unwrap(), |t| loss(t, &wt), i);
            check_numerically(&wt, grads.get(&wt).unwrap(), |t| loss(&x, t), i);
        }
    }

    /// "Same" padding without a padded copy equals padding first, on odd, even and
    /// non-square inputs, stride 1 and 2, forward and both gradients.
    #[test]
    fn same_padding_matches_an_explicitly_padded_input() {
        for (i, &(n, c, h, w, k, s)) in [(2, 3, 8, 8, 3, 2), (1, 4, 7, 10, 5, 2), (2, 2, 9, 6, 3, 1), (1, 3, 6, 7, 5, 1)].iter().enumerate() {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, 1, k, k), &Device::Cpu).unwrap()).unwrap();
            let ours = depthwise_conv2d_same(&x, &wt, s).unwrap();
            let reference = depthwise_conv2d(&pad_same(&x, k, s).unwrap(), &wt, s, 0).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            assert_eq!(ours.dims()[2..], [h.div_ceil(s), w.div_ceil(s)], "case {i}");
            assert!(max_diff(&ours, &reference) < 1e-5, "forward case {i}");
            let up = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu).unwrap();
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt] {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-4, "gradient case {i}");
            }
        }
    }

    #[test]
    fn same_padding_puts_the_extra_pixel_bottom_right() {
        let x = Tensor::ones((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let p = pad_same(&x, 3, 2).unwrap();
        assert_eq!(p.dims(), &[1, 1, 5, 5]);
        let v: Vec<Vec<f32>> = p.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(v[0][0], 1.0);
        assert_eq!(v[4][4], 0.0);
    }

    /// Central differences on every 3rd element of `at`.
    fn check_numerically(at: &Tensor, grad: &Tensor, f: impl Fn(&Tensor) -> f32, case: usize) {
        let base: Vec<f32> = at.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        for i in (0..base.len()).step_by(3) {
            let shifted = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                f(&Tensor::from_vec(v, at.dims(), &Device::Cpu).unwrap())
            };
            let numeric = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
            assert!((numeric - g[i]).abs() < 2e-2 * (1.0 + g[i].abs()), "case {case}, element {i}: {numeric} vs {}", g[i]);
        }
    }
}
