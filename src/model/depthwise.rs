//! Depthwise convolution (one k×k filter per channel, EfficientNet's MBConv) as CPU
//! kernels with their own backward. Candle runs a grouped conv as one tiny conv per
//! channel, which for 32–1152 channels is mostly overhead.

use super::ops::Window;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use super::ops::contiguous_f32 as slice;
use rayon::prelude::*;

/// Output columns `x` whose input column `x·stride + kj − pad` lies inside the row.
#[inline]
fn valid_columns(g: &Window, kj: usize) -> std::ops::Range<usize> {
    let first = g.pad.saturating_sub(kj).div_ceil(g.stride);
    let last = (g.w + g.pad).checked_sub(kj + 1).map_or(0, |m| m / g.stride + 1).min(g.out_w());
    first..last.max(first)
}

/// Calls `f(output row, input row, tap)` for every (output row, kernel tap) pair of a
/// plane whose input row is inside the image; the row-level loop lets the inner
/// column loops run without bounds branches.
#[inline]
fn for_each_row_tap(g: &Window, mut f: impl FnMut(usize, usize, usize, usize)) {
    for ki in 0..g.kh {
        for y in 0..g.out_h() {
            let iy = (y * g.stride + ki) as isize - g.pad as isize;
            if iy < 0 || iy as usize >= g.h {
                continue;
            }
            for kj in 0..g.kw {
                f(y, iy as usize, ki * g.kw + kj, kj);
            }
        }
    }
}

/// Input column of output column `x` at tap column `kj` (only for valid columns).
#[inline]
fn input_column(g: &Window, x: usize, kj: usize) -> usize {
    x * g.stride + kj - g.pad
}

/// `y[n,c] = x[n,c] ⋆ w[c]`, weight shape (C, 1, kh, kw).
#[derive(Debug, Clone, Copy)]
pub struct Depthwise(pub Window);

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "depthwise")?, slice(s2, l2, "depthwise")?);
        let g = self.0;
        let (plane_in, plane_out, taps) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
        let mut y = vec![0f32; g.n * g.c * plane_out];
        y.par_chunks_mut(plane_out).enumerate().for_each(|(nc, out)| {
            let src = &x[nc * plane_in..][..plane_in];
            let k = &w[(nc % g.c) * taps..][..taps];
            let ow = g.out_w();
            for_each_row_tap(&g, |y, iy, t, kj| {
                let (orow, irow, wv) = (&mut out[y * ow..][..ow], &src[iy * g.w..][..g.w], k[t]);
                for x in valid_columns(&g, kj) {
                    orow[x] += irow[input_column(&g, x, kj)] * wv;
                }
            });
        });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c, g.out_h(), g.out_w()))))
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
    g: Window,
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
        let (plane_in, plane_out, taps) = (g.h * g.w, g.out_h() * g.out_w(), g.kh * g.kw);
        if self.wrt_input {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(plane_in).enumerate().for_each(|(nc, out)| {
                let d = &dy[nc * plane_out..][..plane_out];
                let k = &w[(nc % g.c) * taps..][..taps];
                let ow = g.out_w();
                for_each_row_tap(&g, |y, iy, t, kj| {
                    let (drow, wv) = (&d[y * ow..][..ow], k[t]);
                    let irow = &mut out[iy * g.w..][..g.w];
                    for x in valid_columns(&g, kj) {
                        irow[input_column(&g, x, kj)] += drow[x] * wv;
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
                let ow = g.out_w();
                for_each_row_tap(&g, |y, iy, t, kj| {
                    let (drow, irow) = (&d[y * ow..][..ow], &src[iy * g.w..][..g.w]);
                    out[t] += valid_columns(&g, kj).map(|x| drow[x] * irow[input_column(&g, x, kj)]).sum::<f32>();
                });
            }
        });
        Ok((CpuStorage::F32(dw), l2.shape().clone()))
    }
}

/// Depthwise convolution of NCHW `x` with weight (C, 1, k, k), symmetric padding.
pub fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 {
        candle_core::bail!("depthwise weight {:?} does not fit {c} channels", weight.dims());
    }
    if !x.device().is_cpu() {
        return x.conv2d(weight, pad, stride, 1, c);
    }
    let g = Window { n, c, h, w, kh, kw, stride, pad };
    x.contiguous()?.apply_op2(&weight.contiguous()?, Depthwise(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
