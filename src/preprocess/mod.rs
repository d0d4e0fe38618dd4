//! Image preprocessing: the same transforms torchvision uses for ImageNet-style
//! classifiers, so that pretrained ResNet weights see the inputs they expect.
//!
//! Every transform returns one image as CHW `f32` (`3 * size * size` values),
//! normalised with the ImageNet mean and standard deviation.

pub mod decode;
pub use decode::decode_file;

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::Rng;

/// Per-channel (R, G, B) mean of ImageNet, on the 0..1 scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel (R, G, B) standard deviation of ImageNet, on the 0..1 scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's RandomResizedCrop defaults: area fraction and aspect-ratio range.
/// torchvision's `RandomResizedCrop` scale range (0.08, 1) lower end.
pub const DEFAULT_MIN_CROP_SCALE: f64 = 0.08;
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// How many random crops RandomResizedCrop tries before falling back to a centre crop.
const CROP_ATTEMPTS: usize = 10;

/// A rectangle inside an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

/// Evaluation transform (torchvision `Resize(round(size*256/224))` +
/// `CenterCrop(size)` + `Normalize`): scale the shorter side to
/// `round(size * 256 / 224)` with a triangle (antialiased bilinear) filter,
/// cut the centre `size` x `size` square, normalise, return CHW.
///
/// An empty (0-pixel) image yields the normalised value of a black image rather
/// than panicking, so one bad camera frame cannot bring the sorter down.
pub fn eval_transform(img: &RgbImage, size: u32) -> Vec<f32> {
    assert!(size > 0, "eval_transform: size must be positive");
    if img.width() == 0 || img.height() == 0 {
        return normalise(&RgbImage::new(size, size), false);
    }
    let short = eval_resize_side(size);
    let (width, height) = shorter_side_to(img.width(), img.height(), short);
    // Resizing the whole image then cropping costs at most ~1.8x the pixels of the
    // crop for 4:3 frames; exact partial resampling would need our own resampler.
    let resized = imageops::resize(img, width, height, FilterType::Triangle);
    let crop = centre_crop(width, height, size);
    let square = imageops::crop_imm(&resized, crop.x, crop.y, crop.width, crop.height).to_image();
    normalise(&square, false)
}

/// Training transform (torchvision `RandomResizedCrop(size)` +
/// `RandomHorizontalFlip()` + `Normalize`), drawing all randomness from `rng`
/// so that a seeded generator reproduces the same image.
pub fn train_transform(img: &RgbImage, size: u32, rng: &mut impl Rng) -> Vec<f32> {
    train_transform_scaled(img, size, DEFAULT_MIN_CROP_SCALE, rng)
}

/// [`train_transform`] with crops covering at least `min_scale` of the image area.
/// Short from-scratch runs converge faster with gentler crops than torchvision's 0.08.
pub fn train_transform_scaled(img: &RgbImage, size: u32, min_scale: f64, rng: &mut impl Rng) -> Vec<f32> {
    assert!(size > 0, "train_transform: size must be positive");
    if img.width() == 0 || img.height() == 0 {
        return normalise(&RgbImage::new(size, size), false);
    }
    let crop = random_resized_crop(img.width(), img.height(), min_scale, rng);
    let view = imageops::crop_imm(img, crop.x, crop.y, crop.width, crop.height);
    let square = imageops::resize(&*view, size, size, FilterType::Triangle);
    let flip = rng.random_bool(0.5);
    normalise(&square, flip)
}

/// Stacks per-image CHW vectors (from [`eval_transform`] / [`train_transform`])
/// into one `(N, 3, size, size)` f32 tensor.
pub fn to_tensor(
    batch: &[Vec<f32>],
    size: u32,
    device: &candle_core::Device,
) -> candle_core::Result<candle_core::Tensor> {
    let per_image = 3 * (size as usize) * (size as usize);
    if let Some((i, bad)) = batch.iter().enumerate().find(|(_, v)| v.len() != per_image) {
        candle_core::bail!("to_tensor: image {i} has {} values, expected 3*{size}*{size} = {per_image}", bad.len());
    }
    let flat = batch.concat();
    candle_core::Tensor::from_vec(flat, (batch.len(), 3, size as usize, size as usize), device)
}

/// The shorter side the evaluation resize targets: 256 for 224, keeping torchvision's
/// 256/224 ratio for other input sizes.
pub fn eval_resize_side(size: u32) -> u32 {
    (f64::from(size) * 256.0 / 224.0).round() as u32
}

/// New (width, height) with the shorter side set to `short`, as torchvision's
/// `Resize(int)` computes it (the longer side is truncated, not rounded).
/// The image cache uses it too, so an image cached at `eval_resize_side(size)`
/// gives exactly the same [`eval_transform`] output as the original.
pub fn shorter_side_to(width: u32, height: u32, short: u32) -> (u32, u32) {
    let scaled = |long: u32, short_in: u32| (u64::from(short) * u64::from(long) / u64::from(short_in)) as u32;
    if width <= height {
        (short, scaled(height, width).max(short))
    } else {
        (scaled(width, height).max(short), short)
    }
}

/// torchvision's `CenterCrop` offsets: `round((dim - size) / 2)` with Python's
/// round-half-to-even. Requires `size <= width, height`.
fn centre_crop(width: u32, height: u32, size: u32) -> Rect {
    let offset = |dim: u32| ((f64::from(dim) - f64::from(size)) / 2.0).round_ties_even() as u32;
    Rect { x: offset(width), y: offset(height), width: size, height: size }
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.08, 1) and ratio (3/4, 4/3):
/// up to ten tries at a random area fraction and log-uniform aspect ratio, then a
/// centre crop with the aspect ratio clamped into range.
fn random_resized_crop(width: u32, height: u32, min_scale: f64, rng: &mut impl Rng) -> Rect {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..CROP_ATTEMPTS {
        let fraction = if min_scale >= 1.0 { 1.0 } else { rng.random_range(min_scale.max(0.0)..1.0) };
        let target_area = area * fraction;
        let aspect = rng.random_range(log_lo..log_hi).exp();
        // Python's round() rounds half to even.
        let w = (target_area * aspect).sqrt().round_ties_even() as u64;
        let h = (target_area / aspect).sqrt().round_ties_even() as u64;
        if w > 0 && h > 0 && w <= u64::from(width) && h <= u64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return Rect { x, y, width: w, height: h };
        }
    }
    fallback_crop(width, height)
}

/// The centre crop RandomResizedCrop falls back to: the whole image if its aspect
/// ratio is inside the allowed range, otherwise the largest centred crop at the
/// nearest allowed ratio.
fn fallback_crop(width: u32, height: u32) -> Rect {
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < CROP_RATIO.0 {
        (width, (f64::from(width) / CROP_RATIO.0).round_ties_even() as u32)
    } else if in_ratio > CROP_RATIO.1 {
        ((f64::from(height) * CROP_RATIO.1).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    // The rounding above cannot exceed the image, but clamp so a future change cannot
    // produce an out-of-bounds crop.
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    Rect { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h }
}

/// HWC u8 -> CHW f32 with `(x/255 - mean) / std`, optionally mirrored left-right
/// (doing the flip here saves a copy of the image).
fn normalise(img: &RgbImage, flip: bool) -> Vec<f32> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let plane = width * height;
    let mut out = vec![0.0f32; 3 * plane];
    // Fold the two steps into one multiply-add per value: x * scale + shift.
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * IMAGENET_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| -IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    let raw = img.as_raw();
    for y in 0..height {
        let row = &raw[y * width * 3..(y + 1) * width * 3];
        for x in 0..width {
            let src = if flip { width - 1 - x } else { x };
            let px = &row[src * 3..src * 3 + 3];
            let dst = y * width + x;
            for c in 0..3 {
                out[c * plane + dst] = f32::from(px[c]) * scale[c] + shift[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn expected_value(byte: u8, channel: usize) -> f32 {
        (f32::from(byte) / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
    }

    /// Value of channel `c` at (x, y) in a CHW vector of a square `size` image.
    fn at(chw: &[f32], size: u32, c: usize, x: u32, y: u32) -> f32 {
        let s = size as usize;
        chw[c * s * s + y as usize * s + x as usize]
    }

    #[test]
    fn output_shapes() {
        let img = RgbImage::from_pixel(512, 384, image::Rgb([10, 20, 30]));
        let mut rng = StdRng::seed_from_u64(1);
        for size in [224, 96, 33] {
            let n = 3 * (size * size) as usize;
            assert_eq!(eval_transform(&img, size).len(), n);
            assert_eq!(train_transform(&img, size, &mut rng).len(), n);
        }
        let batch = vec![eval_transform(&img, 32), eval_transform(&img, 32)];
        let t = to_tensor(&batch, 32, &candle_core::Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 32, 32]);
        assert_eq!(t.dtype(), candle_core::DType::F32);
    }

    #[test]
    fn to_tensor_rejects_wrong_length() {
        let batch = vec![vec![0.0; 3 * 4 * 4], vec![0.0; 5]];
        let err = to_tensor(&batch, 4, &candle_core::Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("image 1"), "{err}");
    }

    #[test]
    fn to_tensor_keeps_chw_order() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 7]));
        let chw = eval_transform(&img, 8);
        let t = to_tensor(std::slice::from_ref(&chw), 8, &candle_core::Device::Cpu).unwrap();
        let back: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(back, chw);
    }

    #[test]
    fn constant_image_normalises_to_expected_values() {
        let colour = [200u8, 100, 50];
        let img = RgbImage::from_pixel(300, 200, image::Rgb(colour));
        let mut rng = StdRng::seed_from_u64(7);
        for chw in [eval_transform(&img, 16), train_transform(&img, 16, &mut rng)] {
            for c in 0..3 {
                let want = expected_value(colour[c], c);
                let plane = &chw[c * 256..(c + 1) * 256];
                assert!(plane.iter().all(|v| (v - want).abs() < 1e-5), "channel {c}: {:?} vs {want}", &plane[..4]);
            }
        }
    }

    #[test]
    fn eval_resize_side_keeps_torchvision_ratio() {
        assert_eq!(eval_resize_side(224), 256);
        assert_eq!(eval_resize_side(96), 110);
        assert_eq!(shorter_side_to(512, 384, 256), (341, 256));
        assert_eq!(shorter_side_to(384, 512, 256), (256, 341));
        assert_eq!(shorter_side_to(300, 300, 256), (256, 256));
    }

    #[test]
    fn centre_crop_rounds_half_to_even_like_python() {
        // (341 - 224) / 2 = 58.5 -> 58 in Python
        assert_eq!(centre_crop(341, 256, 224), Rect { x: 58, y: 16, width: 224, height: 224 });
    }

    #[test]
    fn centre_crop_picks_the_centre() {
        // A 256x256 image (no resize needed for size 224) that is white inside the
        // centre 224 square and black in the 16-pixel frame around it: the crop
        // must be all white.
        let img = RgbImage::from_fn(256, 256, |x, y| {
            let inside = (16..240).contains(&x) && (16..240).contains(&y);
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let chw = eval_transform(&img, 224);
        for c in 0..3 {
            let white = expected_value(255, c);
            let plane = &chw[c * 224 * 224..(c + 1) * 224 * 224];
            assert!(plane.iter().all(|v| (v - white).abs() < 1e-5), "frame leaked into channel {c}");
        }
    }

    #[test]
    fn centre_crop_of_wide_image_keeps_left_right_order() {
        // 512x256, already the target height for size 224 (side 256): the left half is
        // red, the right half blue; the crop keeps 224 centre columns, so the left
        // half of the crop is red and the right half blue.
        let img = RgbImage::from_fn(512, 256, |x, _| image::Rgb(if x < 256 { [255, 0, 0] } else { [0, 0, 255] }));
        let chw = eval_transform(&img, 224);
        assert!((at(&chw, 224, 0, 0, 100) - expected_value(255, 0)).abs() < 1e-5);
        assert!((at(&chw, 224, 2, 0, 100) - expected_value(0, 2)).abs() < 1e-5);
        assert!((at(&chw, 224, 0, 223, 100) - expected_value(0, 0)).abs() < 1e-5);
        assert!((at(&chw, 224, 2, 223, 100) - expected_value(255, 2)).abs() < 1e-5);
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 50, y as u8 * 50, 0]));
        let plain = normalise(&img, false);
        let flipped = normalise(&img, true);
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..4 {
                    let a = plain[c * 8 + y * 4 + x];
                    let b = flipped[c * 8 + y * 4 + (3 - x)];
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn random_crops_stay_in_bounds_and_in_range() {
        let mut rng = StdRng::seed_from_u64(3);
        for (w, h) in [(1, 1), (1, 7), (7, 1), (2, 3), (5, 5), (13, 9), (512, 384), (1000, 3)] {
            for _ in 0..500 {
                let r = random_resized_crop(w, h, DEFAULT_MIN_CROP_SCALE, &mut rng);
                assert!(r.width >= 1 && r.height >= 1, "{w}x{h}: {r:?}");
                assert!(r.x + r.width <= w && r.y + r.height <= h, "{w}x{h}: {r:?}");
            }
        }
        // On a normal photo the crops respect the area and ratio limits (up to rounding).
        for _ in 0..500 {
            let r = random_resized_crop(512, 384, DEFAULT_MIN_CROP_SCALE, &mut rng);
            let frac = f64::from(r.width * r.height) / (512.0 * 384.0);
            let ratio = f64::from(r.width) / f64::from(r.height);
            assert!((0.07..=1.0).contains(&frac), "{r:?}");
            assert!((0.74..=1.35).contains(&ratio), "{r:?}");
        }
    }

    #[test]
    fn fallback_crop_clamps_the_ratio() {
        assert_eq!(fallback_crop(100, 100), Rect { x: 0, y: 0, width: 100, height: 100 });
        // too tall: keep width, height = width / (3/4)
        assert_eq!(fallback_crop(30, 100), Rect { x: 0, y: 30, width: 30, height: 40 });
        // too wide: keep height, width = height * 4/3
        assert_eq!(fallback_crop(100, 30), Rect { x: 30, y: 0, width: 40, height: 30 });
        assert_eq!(fallback_crop(1, 1000), Rect { x: 0, y: 499, width: 1, height: 1 });
    }

    #[test]
    fn tiny_and_odd_images_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(11);
        for (w, h) in [(0, 0), (0, 5), (1, 1), (1, 9), (9, 1), (3, 5), (17, 11)] {
            let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
            for size in [1, 7, 32] {
                let n = 3 * (size * size) as usize;
                assert_eq!(eval_transform(&img, size).len(), n, "{w}x{h} -> {size}");
                for _ in 0..20 {
                    let v = train_transform(&img, size, &mut rng);
                    assert_eq!(v.len(), n);
                    assert!(v.iter().all(|x| x.is_finite()));
                }
            }
        }
    }

    #[test]
    fn seeded_rng_is_deterministic() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]));
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..8).map(|_| train_transform(&img, 24, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
