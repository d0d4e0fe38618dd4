//! Quantized convolutions for the edge (`smartbin quantize --dtype q8_0|q4k`).
//!
//! Candle's quantized kernels (`QMatMul`, GGML block formats) only multiply matrices,
//! so a quantized convolution is an im2col into one row per output pixel followed by
//! a quantized matmul against the weight flattened to (O, kh·kw·C). Rows are gathered
//! from a channels-last copy of the input, so each kernel tap copies C contiguous
//! values. The reduction length is zero-padded to what the block format needs: Q4K
//! where a multiple of 256 costs at most a quarter more work, else Q8_0 and a
//! multiple of 32. On x86 with VNNI, Q8_0 rows are padded further to 256 at load:
//! Candle's repacked VNNI kernel needs it and is several times faster than its
//! plain AVX dot product even on the padding (aarch64's dot-product kernels need no
//! such padding, so the file does not carry it).
//!
//! Quantized weights are stored in safetensors as raw GGML blocks (`U8` tensors under
//! the weight's own name), described by the `smartbin.quantized` metadata entry.

use super::ops::{contiguous_f32, Window};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Metadata key: JSON map from tensor name to [`QuantInfo`].
pub const META_QUANTIZED: &str = "smartbin.quantized";

/// The block formats `smartbin quantize` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum QuantType {
    /// 8-bit blocks of 32 weights with one f16 scale (8.5 bits per weight).
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 weights (4.5 bits per weight).
    #[value(name = "q4k")]
    #[serde(rename = "q4k")]
    Q4K,
}

impl QuantType {
    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }

    fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            _ => None,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        })
    }
}

/// How one quantized tensor is laid out in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantInfo {
    #[serde(rename = "type")]
    pub dtype: QuantType,
    /// (output channels, padded reduction length).
    pub rows: usize,
    pub cols: usize,
}

/// Convolutions with fewer outputs (RecycleNet's 7×7 gate) or a shorter reduction
/// (depthwise kernels) stay f32: they are a sliver of the work and the bytes.
const MIN_OUTPUTS: usize = 8;
const MIN_REDUCTION: usize = 32;

/// The block format and padded reduction length for a conv with reduction `k`, or
/// `None` if it stays f32.
pub fn layout_for(k: usize, wanted: QuantType) -> Option<(QuantType, usize)> {
    if k < MIN_REDUCTION {
        return None;
    }
    let k256 = k.next_multiple_of(256);
    if wanted == QuantType::Q4K && 4 * (k256 - k) <= k {
        return Some((wanted, k256));
    }
    // Q4K's blocks are 256 long: a short reduction falls back to Q8_0's 32.
    Some((QuantType::Q8_0, k.next_multiple_of(32)))
}

/// Weights split into those kept as tensors and those quantized.
pub type Split = (BTreeMap<String, Tensor>, BTreeMap<String, Arc<QTensor>>);

/// Which of `weights` to quantize: 4-D conv weights by [`layout_for`]. With
/// `importance` (see [`record_inputs`]), rounding error is weighed by how large each
/// input channel runs, as llama.cpp's importance matrix does.
pub fn quantize_weights(weights: &BTreeMap<String, Tensor>, dtype: QuantType, importance: &Importance) -> Result<Split> {
    let (mut plain, mut quantized) = (BTreeMap::new(), BTreeMap::new());
    for (name, t) in weights {
        let conv = match t.dims() {
            &[o, c, kh, kw] if name.ends_with(".weight") && o >= MIN_OUTPUTS => layout_for(c * kh * kw, dtype),
            _ => None,
        };
        match conv {
            Some((dtype, k_pad)) => {
                quantized.insert(name.clone(), Arc::new(quantize_conv_weight(t, dtype, k_pad, importance.get(name))?));
            }
            None => {
                plain.insert(name.clone(), t.clone());
            }
        }
    }
    Ok((plain, quantized))
}

/// (O, C, kh, kw) → (O, kh·kw·C) rows, zero-padded to `k_pad`, in `dtype` blocks.
/// `channel_weight`: the importance of each input channel, if measured.
fn quantize_conv_weight(w: &Tensor, dtype: QuantType, k_pad: usize, channel_weight: Option<&Vec<f32>>) -> Result<QTensor> {
    let (o, c, kh, kw) = w.dims4()?;
    let rows = w.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.permute((0, 2, 3, 1))?.reshape((o, kh * kw * c))?;
    let rows = rows.pad_with_zeros(1, 0, k_pad - kh * kw * c)?;
    // Candle's Q8_0 has no weighted rounding; it needs none at 8 bits.
    match channel_weight {
        Some(per_channel) if per_channel.len() == c && dtype == QuantType::Q4K => {
            let mut columns: Vec<f32> = (0..kh * kw).flat_map(|_| per_channel.iter().copied()).collect();
            // Padding columns are zero whatever their weight; keep it positive anyway.
            columns.resize(k_pad, f32::MIN_POSITIVE);
            QTensor::quantize_imatrix(&rows, &columns, dtype.ggml())
        }
        _ => QTensor::quantize(&rows, dtype.ggml()),
    }
}

/// Mean square of each conv's input, per input channel, by weight name.
pub type Importance = BTreeMap<String, Vec<f32>>;

/// Per conv: per-channel sums of squares and the number of values summed.
type Sums = BTreeMap<String, (Vec<f64>, usize)>;

thread_local! {
    static RECORDING: std::cell::RefCell<Option<Sums>> = const { std::cell::RefCell::new(None) };
}

/// Runs `forward` (f32 passes over calibration images) and returns the mean square
/// of every conv input it saw, per channel. Convs report through [`record_input`].
pub fn record_inputs(forward: impl FnOnce() -> Result<()>) -> Result<Importance> {
    RECORDING.with(|r| *r.borrow_mut() = Some(BTreeMap::new()));
    let result = forward();
    let sums = RECORDING.with(|r| r.borrow_mut().take()).unwrap_or_default();
    result?;
    Ok(sums.into_iter().map(|(name, (sq, count))| (name, sq.iter().map(|s| (s / count as f64) as f32).collect())).collect())
}

/// Adds an NCHW conv input to the recording, if one is running on this thread.
pub fn record_input(name: &str, x: &Tensor) -> Result<()> {
    if !RECORDING.with(|r| r.borrow().is_some()) {
        return Ok(());
    }
    let (n, _, h, w) = x.dims4()?;
    let sq: Vec<f32> = x.sqr()?.sum((0, 2, 3))?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    RECORDING.with(|r| {
        if let Some(map) = r.borrow_mut().as_mut() {
            let (sums, count) = map.entry(name.to_string()).or_insert_with(|| (vec![0.0; sq.len()], 0));
            sums.iter_mut().zip(&sq).for_each(|(a, b)| *a += f64::from(*b));
            *count += n * h * w;
        }
    });
    Ok(())
}

/// A quantized tensor's description for the file header.
pub fn info(t: &QTensor) -> Result<QuantInfo> {
    let (rows, cols) = t.shape().dims2()?;
    let dtype = QuantType::from_ggml(t.dtype())
        .ok_or_else(|| candle_core::Error::Msg(format!("unsupported quantized type {:?}", t.dtype())))?;
    Ok(QuantInfo { dtype, rows, cols })
}

/// Rebuilds a quantized tensor from its raw blocks, checking the byte count first
/// (Candle's loader would panic on a short or misaligned buffer).
pub fn from_bytes(bytes: &[u8], info: &QuantInfo, device: &Device) -> std::result::Result<QTensor, String> {
    let ggml = info.dtype.ggml();
    if info.rows == 0 || !info.cols.is_multiple_of(ggml.block_size()) {
        return Err(format!("{} × {} is not a whole number of {} blocks", info.rows, info.cols, info.dtype));
    }
    let expected = info.rows * info.cols / ggml.block_size() * ggml.type_size();
    if bytes.len() != expected {
        return Err(format!("{} bytes, {} × {} {} needs {expected}", bytes.len(), info.rows, info.cols, info.dtype));
    }
    // Blocks hold f16 scales: copy into 8-byte-aligned memory before viewing them.
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    let view = &mut bytemuck_bytes(&mut aligned)[..bytes.len()];
    view.copy_from_slice(bytes);
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(view), device, ggml).map_err(|e| e.to_string())?;
    QTensor::new(storage, (info.rows, info.cols)).map_err(|e| e.to_string())
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirements; the length covers exactly the words.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

/// A convolution (groups = 1) whose weight is quantized.
#[derive(Debug, Clone)]
pub struct QuantConv {
    matmul: QMatMul,
    c_out: usize,
    k_pad: usize,
}

impl QuantConv {
    /// Checks the stored weight against the layer it is loaded into.
    pub fn new(weight: Arc<QTensor>, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        let (rows, cols) = weight.shape().dims2()?;
        let reduction = c_in * k * k;
        if rows != c_out || cols < reduction || cols >= reduction + 256 {
            candle_core::bail!("quantized weight is {rows} × {cols}, the layer needs {c_out} × {reduction} (padded)");
        }
        if weight.device().is_cpu() && !int8_kernels_run_here() {
            // Expanded once at load: f32 speed and memory, the file stays small.
            let matmul = QMatMul::Tensor(weight.dequantize(&weight.device())?);
            return Ok(Self { matmul, c_out, k_pad: cols });
        }
        let weight = match fast_reduction(weight.dtype(), cols) {
            Some(wider) if weight.device().is_cpu() => Arc::new(pad_q8_0_rows(&weight, wider)?),
            _ => weight,
        };
        let k_pad = weight.shape().dims2()?.1;
        Ok(Self { matmul: QMatMul::from_arc(weight)?, c_out, k_pad })
    }

    pub fn forward(&self, x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let g = Window { n, c, h, w, kh: k, kw: k, stride, pad };
        let (oh, ow) = (g.out_h(), g.out_w());
        let channels_last = x.permute((0, 2, 3, 1))?.contiguous()?;
        let rows = if k == 1 && stride == 1 && self.k_pad == c {
            channels_last.reshape((n * h * w, c))?
        } else if x.device().is_cpu() {
            channels_last.apply_op1_no_bwd(&Im2Rows { g, k_pad: self.k_pad })?
        } else {
            im2rows_portable(&channels_last, g, self.k_pad)?
        };
        let y = self.matmul.forward(&rows)?; // (N·OH·OW, O)
        y.reshape((n, oh, ow, self.c_out))?.permute((0, 3, 1, 2))?.contiguous()
    }
}

/// Candle 0.11's NEON int8 kernels issue SDOT unconditionally, which a CPU without
/// the dot-product extension (Cortex-A72 of the Raspberry Pi 4, the Jetson Nano's
/// A57) rejects with SIGILL. There, quantized weights are expanded to f32 instead.
fn int8_kernels_run_here() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        if !dotprod {
            WARNED.call_once(|| {
                log::warn!("this CPU lacks the ARMv8.2 dot-product instructions (Raspberry Pi 4, Jetson Nano): quantized weights run as f32");
            });
        }
        dotprod
    }
    #[cfg(not(target_arch = "aarch64"))]
    true
}

/// The reduction length Candle's fastest kernel on this CPU wants for `dtype`, where
/// it differs from `cols`.
fn fast_reduction(dtype: GgmlDType, cols: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = is_x86_feature_detected!("avx512vnni") || is_x86_feature_detected!("avxvnni");
        let wider = cols.next_multiple_of(256);
        (dtype == GgmlDType::Q8_0 && vnni && wider != cols).then_some(wider)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, cols);
        None
    }
}

/// Appends all-zero Q8_0 blocks (scale 0, values 0) to every row up to `cols`.
fn pad_q8_0_rows(t: &QTensor, cols: usize) -> Result<QTensor> {
    let (rows, old) = t.shape().dims2()?;
    let block = GgmlDType::Q8_0.type_size();
    let (old_row, new_row) = (old / 32 * block, cols / 32 * block);
    let data = t.data()?;
    let mut out = vec![0u8; rows * new_row];
    for (dst, src) in out.chunks_mut(new_row).zip(data.chunks(old_row)) {
        dst[..old_row].copy_from_slice(src);
    }
    let info = QuantInfo { dtype: QuantType::Q8_0, rows, cols };
    from_bytes(&out, &info, &t.device()).map_err(candle_core::Error::Msg)
}

/// Channels-last input (N, H, W, C) → one row per output pixel, taps in (ki, kj, c)
/// order, zero-padded to `k_pad` columns.
#[derive(Debug, Clone, Copy)]
struct Im2Rows {
    g: Window,
    k_pad: usize,
}

/// Output pixels gathered per task: enough work to outweigh scheduling.
const ROWS_PER_TASK: usize = 32;

impl CustomOp1 for Im2Rows {
    fn name(&self) -> &'static str {
        "im2rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "im2rows")?;
        let (g, k_pad) = (self.g, self.k_pad);
        let (oh, ow) = (g.out_h(), g.out_w());
        let rows = g.n * oh * ow;
        let mut out = vec![0f32; rows * k_pad];
        out.par_chunks_mut(k_pad * ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
            for (i, dst) in chunk.chunks_mut(k_pad).enumerate() {
                let row = task * ROWS_PER_TASK + i;
                let (b, y, xo) = (row / (oh * ow), (row / ow) % oh, row % ow);
                for ki in 0..g.kh {
                    let Some(iy) = g.src(y, ki, g.h) else { continue };
                    for kj in 0..g.kw {
                        let Some(ix) = g.src(xo, kj, g.w) else { continue };
                        let src = &x[((b * g.h + iy) * g.w + ix) * g.c..][..g.c];
                        dst[(ki * g.kw + kj) * g.c..][..g.c].copy_from_slice(src);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, k_pad))))
    }
}

/// [`Im2Rows`] from Candle primitives, for devices without the kernel.
fn im2rows_portable(channels_last: &Tensor, g: Window, k_pad: usize) -> Result<Tensor> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let padded = channels_last.pad_with_zeros(1, g.pad, g.pad)?.pad_with_zeros(2, g.pad, g.pad)?;
    let picks = |k: usize, count: usize| {
        Tensor::new((0..count).map(|o| (o * g.stride + k) as u32).collect::<Vec<_>>(), channels_last.device())
    };
    let mut taps = Vec::with_capacity(g.kh * g.kw);
    for ki in 0..g.kh {
        let rows = padded.index_select(&picks(ki, oh)?, 1)?;
        for kj in 0..g.kw {
            taps.push(rows.index_select(&picks(kj, ow)?, 2)?);
        }
    }
    let k = g.kh * g.kw * g.c;
    Tensor::cat(&taps, 3)?.reshape((g.n * oh * ow, k))?.pad_with_zeros(1, 0, k_pad - k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn rms(t: &Tensor) -> f32 {
        t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn padding_is_256_where_cheap_else_32_in_q8() {
        assert_eq!(layout_for(9, QuantType::Q8_0), None);
        assert_eq!(layout_for(2304, QuantType::Q4K), Some((QuantType::Q4K, 2304)));
        assert_eq!(layout_for(2304, QuantType::Q8_0), Some((QuantType::Q8_0, 2304)));
        assert_eq!(layout_for(1152, QuantType::Q8_0), Some((QuantType::Q8_0, 1152)));
        assert_eq!(layout_for(1152, QuantType::Q4K), Some((QuantType::Q4K, 1280)));
        assert_eq!(layout_for(576, QuantType::Q4K), Some((QuantType::Q8_0, 576)));
        assert_eq!(layout_for(147, QuantType::Q8_0), Some((QuantType::Q8_0, 160)));
        assert_eq!(layout_for(27, QuantType::Q8_0), None);
        assert_eq!(layout_for(40, QuantType::Q4K), Some((QuantType::Q8_0, 64)));
    }

    /// Quantized convs against Candle's f32 conv2d: odd sizes, stride 2, padding, 1×1,
    /// 7×7, batch 1 and 3; the error must be at quantization-noise level.
    #[test]
    fn quantized_conv_matches_f32_conv_within_quantization_noise() {
        let cases = [(1, 16, 9, 7, 24, 3, 1, 1), (3, 40, 11, 10, 16, 3, 2, 1), (2, 64, 6, 6, 32, 1, 1, 0),
                     (2, 64, 7, 9, 16, 1, 2, 0), (1, 3, 15, 13, 8, 7, 2, 3), (1, 256, 5, 5, 8, 3, 1, 1)];
        for (i, &(n, c, h, w, o, k, s, p)) in cases.iter().enumerate() {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap();
            let wt = Tensor::randn(0f32, 0.1, (o, c, k, k), &Device::Cpu).unwrap();
            let reference = x.conv2d(&wt, p, s, 1, 1).unwrap();
            for (dtype, bound) in [(QuantType::Q8_0, 0.02), (QuantType::Q4K, 0.15)] {
                let Some((dtype, k_pad)) = layout_for(c * k * k, dtype) else { continue };
                let q = Arc::new(quantize_conv_weight(&wt, dtype, k_pad, None).unwrap());
                let conv = QuantConv::new(q, c, o, k).unwrap();
                let ours = conv.forward(&x, k, s, p).unwrap();
                assert_eq!(ours.dims(), reference.dims(), "case {i}");
                let rel = rms(&(&ours - &reference).unwrap()) / rms(&reference);
                assert!(rel < bound, "case {i} {dtype}: relative error {rel}");
                let portable = im2rows_portable(&x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap(),
                    Window { n, c, h, w, kh: k, kw: k, stride: s, pad: p }, conv.k_pad).unwrap();
                let kernel = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
                    .apply_op1_no_bwd(&Im2Rows { g: Window { n, c, h, w, kh: k, kw: k, stride: s, pad: p }, k_pad: conv.k_pad }).unwrap();
                assert_eq!(max_diff(&portable, &kernel), 0.0, "case {i}: portable im2rows differs");
            }
        }
    }

    #[test]
    fn raw_blocks_round_trip_and_bad_lengths_are_refused() {
        let wt = Tensor::randn(0f32, 0.1, (16, 64, 3, 3), &Device::Cpu).unwrap();
        let q = quantize_conv_weight(&wt, QuantType::Q4K, 768, None).unwrap();
        let meta = info(&q).unwrap();
        assert_eq!(meta, QuantInfo { dtype: QuantType::Q4K, rows: 16, cols: 768 });
        let bytes = q.data().unwrap().into_owned();
        // Misaligned on purpose: the loader must not depend on the file's alignment.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let back = from_bytes(&shifted[1..], &meta, &Device::Cpu).unwrap();
        let a = q.dequantize(&Device::Cpu).unwrap();
        let b = back.dequantize(&Device::Cpu).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
        let q8 = quantize_conv_weight(&wt, QuantType::Q8_0, 576, None).unwrap();
        let wide = pad_q8_0_rows(&q8, 768).unwrap().dequantize(&Device::Cpu).unwrap();
        let narrow = q8.dequantize(&Device::Cpu).unwrap();
        assert_eq!(max_diff(&wide.narrow(1, 0, 576).unwrap(), &narrow), 0.0);
        assert_eq!(wide.narrow(1, 576, 192).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let err = from_bytes(&bytes[..bytes.len() - 1], &meta, &Device::Cpu).unwrap_err();
        assert!(err.contains("bytes"), "{err}");
        assert_eq!(a.dtype(), DType::F32);
    }
}
