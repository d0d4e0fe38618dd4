//! CPU kernels Candle lacks or runs slowly, as custom ops with their own backward.
//!
//! * [`Im2Col`] / [`Col2Im`]: convolution as one large GEMM. Candle's own CPU conv2d
//!   gathers patches element by element on one thread and its input gradient is a
//!   per-pixel loop; here patches are gathered in parallel rows and the gradient is a
//!   GEMM plus a parallel scatter.
//! * [`MaxPool2d`]: max pooling with padding and a backward pass for overlapping
//!   windows (ResNet's 3×3/stride-2/pad-1 stem), neither of which Candle has.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of a 2-D window sliding over an NCHW tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    fn out_plane(&self) -> usize {
        self.out_h() * self.out_w()
    }
    /// Input coordinate seen by output coordinate `o` at kernel offset `k`, if inside.
    #[inline]
    pub(crate) fn src(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        let i = (o * self.stride + k) as isize - self.pad as isize;
        (i >= 0 && (i as usize) < size).then_some(i as usize)
    }
}

/// The f32 data of a contiguous CPU tensor; custom kernels index it directly.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::RequiresContiguous { op }),
    }
}

/// NCHW input → columns of shape (C·kh·kw, N·OH·OW), ready for `weight(O, C·kh·kw) @ cols`.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col(pub Window);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "im2col")?;
        let g = self.0;
        let (oh, ow, plane) = (g.out_h(), g.out_w(), g.out_plane());
        let row_len = g.n * plane;
        let k_rows = g.c * g.kh * g.kw;
        let mut cols = vec![0f32; k_rows * row_len];
        cols.par_chunks_mut(row_len).enumerate().for_each(|(row, out)| {
            let (c, ki, kj) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
            for n in 0..g.n {
                let src = &x[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                let dst = &mut out[n * plane..][..plane];
                for y in 0..oh {
                    let Some(iy) = g.src(y, ki, g.h) else { continue };
                    let src_row = &src[iy * g.w..][..g.w];
                    let dst_row = &mut dst[y * ow..][..ow];
                    for (x_out, d) in dst_row.iter_mut().enumerate() {
                        if let Some(ix) = g.src(x_out, kj, g.w) {
                            *d = src_row[ix];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(cols), Shape::from((k_rows, row_len))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: sums column gradients back into an NCHW tensor.
#[derive(Debug, Clone, Copy)]
pub struct Col2Im(pub Window);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let g = self.0;
        let (oh, ow, plane) = (g.out_h(), g.out_w(), g.out_plane());
        let row_len = g.n * plane;
        let mut x = vec![0f32; g.n * g.c * g.h * g.w];
        // One task per (n, c) plane: every plane is written by its own task only.
        x.par_chunks_mut(g.h * g.w).enumerate().for_each(|(nc, dst)| {
            let (n, c) = (nc / g.c, nc % g.c);
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = (c * g.kh + ki) * g.kw + kj;
                    let src = &cols[row * row_len + n * plane..][..plane];
                    for y in 0..oh {
                        let Some(iy) = g.src(y, ki, g.h) else { continue };
                        for x_out in 0..ow {
                            if let Some(ix) = g.src(x_out, kj, g.w) {
                                dst[iy * g.w + ix] += src[y * ow + x_out];
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((g.n, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// Max pooling with implicit -inf padding.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d(pub Window);

impl MaxPool2d {
    /// Index (within the input plane) of the maximum of output cell (y, x).
    #[inline]
    fn argmax(&self, plane: &[f32], y: usize, x: usize) -> Option<usize> {
        let g = self.0;
        let mut best: Option<(usize, f32)> = None;
        for ki in 0..g.kh {
            let Some(iy) = g.src(y, ki, g.h) else { continue };
            for kj in 0..g.kw {
                let Some(ix) = g.src(x, kj, g.w) else { continue };
                let v = plane[iy * g.w + ix];
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((iy * g.w + ix, v));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "max-pool2d")?;
        let g = self.0;
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut out = vec![0f32; g.n * g.c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(nc, dst)| {
            let plane = &x[nc * g.h * g.w..][..g.h * g.w];
            for y in 0..oh {
                for xo in 0..ow {
                    dst[y * ow + xo] = self.argmax(plane, y, xo).map_or(f32::NEG_INFINITY, |i| plane[i]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolGrad(*self))?;
        Ok(Some(grad))
    }
}

/// Routes each output gradient to the input cell that won the max (first one on ties,
/// as PyTorch does).
struct MaxPoolGrad(MaxPool2d);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "max-pool2d-grad")?;
        let grad = contiguous_f32(s2, l2, "max-pool2d-grad")?;
        let pool = self.0;
        let g = pool.0;
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(nc, dst)| {
            let plane = &x[nc * g.h * g.w..][..g.h * g.w];
            let gplane = &grad[nc * oh * ow..][..oh * ow];
            for y in 0..oh {
                for xo in 0..ow {
                    if let Some(i) = pool.argmax(plane, y, xo) {
                        dst[i] += gplane[y * ow + xo];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn window(x: &Tensor, kh: usize, kw: usize, stride: usize, pad: usize) -> Result<Window> {
    let (n, c, h, w) = x.dims4()?;
    if h + 2 * pad < kh || w + 2 * pad < kw {
        candle_core::bail!("input {h}x{w} (padding {pad}) is smaller than the {kh}x{kw} window");
    }
    Ok(Window { n, c, h, w, kh, kw, stride, pad })
}

/// Convolution (groups = 1) of NCHW `x` with weight (O, C, kh, kw) as im2col + one GEMM.
pub fn conv2d_im2col(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (o, _c, kh, kw) = weight.dims4()?;
    if kh == 1 && kw == 1 && stride == 1 && pad == 0 {
        return conv2d_pointwise(x, weight);
    }
    let g = window(x, kh, kw, stride, pad)?;
    let cols = x.contiguous()?.apply_op1(Im2Col(g))?;
    let w2 = weight.reshape((o, g.c * kh * kw))?;
    let out = w2.matmul(&cols)?; // (O, N·OH·OW)
    out.reshape((o, g.n, g.out_h(), g.out_w()))?.transpose(0, 1)?.contiguous()
}

/// A 1×1, stride-1 convolution is a matrix product per image, (O, C) × (C, H·W),
/// which lands in NCHW order as it is: no patch copy and no output transpose
/// (EfficientNet is mostly these).
fn conv2d_pointwise(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let o = weight.dim(0)?;
    let w2 = weight.reshape((o, c))?;
    let y = if n == 1 {
        w2.matmul(&x.reshape((c, h * w))?)?
    } else {
        w2.broadcast_left(n)?.matmul(&x.reshape((n, c, h * w))?)?
    };
    y.reshape((n, o, h, w))
}

/// Stride-1 "same" convolution with few output channels (RecycleNet's 7×7 conv to one
/// channel): im2col would copy every input value k² times (49× for 1280 channels),
/// so instead one GEMM maps each input pixel to its O·k² tap contributions and
/// [`Col2Im`] sums them into place. With the kernel flipped, that sum is the
/// convolution.
pub fn conv2d_few_outputs(x: &Tensor, weight: &Tensor, pad: usize) -> Result<Tensor> {
    let (o, c, kh, kw) = weight.dims4()?;
    let (n, _, h, w) = x.dims4()?;
    if kh != 2 * pad + 1 || kw != 2 * pad + 1 {
        candle_core::bail!("conv2d_few_outputs needs a same-size convolution, got {kh}x{kw} with padding {pad}");
    }
    let reverse = |k: usize| Tensor::new((0..k as u32).rev().collect::<Vec<_>>(), weight.device());
    let flipped = weight.index_select(&reverse(kh)?, 2)?.index_select(&reverse(kw)?, 3)?;
    let taps = flipped.permute((0, 2, 3, 1))?.reshape((o * kh * kw, c))?; // rows (o, ki, kj)
    let pixels = x.transpose(0, 1)?.contiguous()?.reshape((c, n * h * w))?;
    let contributions = taps.matmul(&pixels)?; // (O·k², N·H·W)
    let g = Window { n, c: o, h, w, kh, kw, stride: 1, pad };
    contributions.apply_op1(Col2Im(g))
}

/// Max pooling with padding; differentiable on every device.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let g = window(x, kernel, kernel, stride, pad)?;
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(MaxPool2d(g))
    } else {
        max_pool2d_portable(x, g)
    }
}

/// Pooling from Candle primitives, for devices without the custom kernel: the max of
/// k×k strided views. Padding replicates the border, which equals -inf padding as long
/// as `pad < kernel` (the replicated cell is in the same window anyway).
fn max_pool2d_portable(x: &Tensor, g: Window) -> Result<Tensor> {
    if g.pad >= g.kh {
        candle_core::bail!("max_pool2d: padding {} must be smaller than the kernel {}", g.pad, g.kh);
    }
    let padded = x.pad_with_same(2, g.pad, g.pad)?.pad_with_same(3, g.pad, g.pad)?;
    let picks = |k: usize, n: usize| {
        let idx: Vec<u32> = (0..n).map(|o| (o * g.stride + k) as u32).collect();
        Tensor::new(idx, x.device())
    };
    let mut out: Option<Tensor> = None;
    for ki in 0..g.kh {
        let rows = padded.index_select(&picks(ki, g.out_h())?, 2)?;
        for kj in 0..g.kw {
            let view = rows.index_select(&picks(kj, g.out_w())?, 3)?;
            out = Some(match out {
                Some(o) => o.maximum(&view)?,
                None => view,
            });
        }
    }
    Ok(out.expect("kernel is at least 1x1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic pseudo-random values without pulling rand into the test.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn conv_matches_candle_forward_and_gradients() {
        // (n, c, h, w, o, k, stride, pad): odd sizes, stride 2, 1x1, 7x7, batch 1 and 3.
        let cases = [
            (1, 3, 9, 7, 4, 3, 1, 1),
            (3, 5, 11, 10, 6, 3, 2, 1),
            (2, 4, 6, 6, 3, 1, 1, 0),
            (1, 5, 4, 7, 6, 1, 1, 0),
            (2, 4, 7, 9, 3, 1, 2, 0),
            (1, 3, 15, 13, 2, 7, 2, 3),
        ];
        for (i, &(n, c, h, w, o, k, s, p)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, k, k], 100 + i as u64)).unwrap();
            let ours = conv2d_im2col(&x, &wt, s, p).unwrap();
            let reference = x.conv2d(&wt, p, s, 1, 1).unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            assert!(max_diff(&ours, &reference) < 1e-5, "forward case {i}");
            // A non-uniform upstream gradient so every path is exercised.
            let up = rand(reference.dims(), 200 + i as u64);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            // Candle's own conv backward fails on some stride-2 shapes (even widths):
            // check those against finite differences instead.
            match (reference * &up).unwrap().sum_all().unwrap().backward() {
                Ok(g2) => {
                    for v in [&x, &wt] {
                        assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-4, "gradient case {i}");
                    }
                }
                Err(_) => check_input_gradient_numerically(&x, &wt, &up, g1.get(&x).unwrap(), s, p),
            }
        }
    }

    fn check_input_gradient_numerically(x: &Tensor, w: &Tensor, up: &Tensor, grad: &Tensor, s: usize, p: usize) {
        let f = |t: &Tensor| -> f64 {
            let y = t.conv2d(w, p, s, 1, 1).unwrap();
            (y * up).unwrap().sum_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_scalar().unwrap()
        };
        let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        for i in (0..base.len()).step_by(7) {
            let shifted = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                f(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap())
            };
            let numeric = (shifted(1e-2) - shifted(-1e-2)) / 2e-2;
            assert!((numeric - g[i] as f64).abs() < 1e-2, "input cell {i}: {numeric} vs {}", g[i]);
        }
    }

    #[test]
    fn few_output_conv_matches_candle_with_gradients() {
        for (i, &(n, c, h, w, o, k)) in [(2, 40, 7, 7, 1, 7), (1, 9, 5, 6, 2, 3), (3, 16, 4, 4, 1, 3)].iter().enumerate() {
            let x = Var::from_tensor(&rand(&[n, c, h, w], 300 + i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, k, k], 400 + i as u64)).unwrap();
            let ours = conv2d_few_outputs(&x, &wt, k / 2).unwrap();
            let reference = x.conv2d(&wt, k / 2, 1, 1, 1).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_diff(&ours, &reference) < 1e-5, "forward case {i}");
            let up = rand(reference.dims(), 500 + i as u64);
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt] {
                assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-4, "gradient case {i}");
            }
        }
    }

    #[test]
    fn max_pool_pads_with_minus_infinity_and_routes_gradient_to_the_max() {
        // All-negative input: zero padding would wrongly win, -inf padding must not.
        let x = Var::from_tensor(&(rand(&[2, 3, 7, 6], 7) - 1.0).unwrap()).unwrap();
        let y = max_pool2d(&x, 3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[2, 3, 4, 3]);
        assert!(y.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() < 0.0);
        // Without padding it must agree with Candle's own pooling (non-overlapping check).
        let plain = max_pool2d(&x, 2, 2, 0).unwrap();
        let reference = x.max_pool2d_with_stride(2, 2).unwrap();
        assert!(max_diff(&plain, &reference) < 1e-7);
        // Gradient: each output's gradient lands on one input cell, so the total is kept
        // (where it lands is checked against finite differences below).
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(&x).unwrap();
        let total: f32 = gx.sum_all().unwrap().to_scalar().unwrap();
        assert!((total - y.elem_count() as f32).abs() < 1e-4);
    }

    #[test]
    fn portable_max_pool_matches_the_kernel() {
        let x = Var::from_tensor(&rand(&[2, 3, 9, 8], 21)).unwrap();
        let g = window(&x, 3, 3, 2, 1).unwrap();
        let a = max_pool2d(&x, 3, 2, 1).unwrap();
        let b = max_pool2d_portable(&x, g).unwrap();
        assert!(max_diff(&a, &b) < 1e-7);
        let ga = a.sum_all().unwrap().backward().unwrap();
        let gb = b.sum_all().unwrap().backward().unwrap();
        assert!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()) < 1e-6);
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let x0 = rand(&[1, 2, 5, 5], 11);
        let x = Var::from_tensor(&x0).unwrap();
        let up = rand(&[1, 2, 3, 3], 12);
        let f = |t: &Tensor| -> f32 {
            (max_pool2d(t, 3, 2, 1).unwrap() * &up).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        let grads = (max_pool2d(&x, 3, 2, 1).unwrap() * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f32> = x0.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] += 1e-3;
            let plus = f(&Tensor::from_vec(v, (1, 2, 5, 5), &Device::Cpu).unwrap());
            let numeric = (plus - f(&x0)) / 1e-3;
            assert!((numeric - gx[i]).abs() < 1e-2, "cell {i}: {numeric} vs {}", gx[i]);
        }
    }
}
