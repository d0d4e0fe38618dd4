//! `smartbin calibrate camera`: what the camera sees of the empty tray.
//!
//! From a few frames of the empty tray: the background for the motion trigger
//! (a per-pixel median, so a hand passing through one frame does not stay in
//! it), a light check (too dark, saturated, flickering), a focus measure, and
//! from frames with an item on the tray the region of interest. The empty-tray
//! frame is kept as a reference; [`drift`] compares a later frame with it, so a
//! knocked camera, a moved tray or a dirty lens is reported at start-up.

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::source::trigger::motion::{changed_fraction, Thumb};

/// Below this mean luma (0..255) the tray is too dark for the model.
pub const DARK_MEAN: f64 = 40.0;
/// Above this mean luma most of the picture is washed out.
pub const BRIGHT_MEAN: f64 = 220.0;
/// More than this share of clipped pixels (≥ 250) is saturation worth fixing.
pub const SATURATED_SHARE: f64 = 0.05;
/// Frame-to-frame spread of the mean luma, relative to it, that means flicker
/// (mains-powered light beating with the exposure time).
pub const FLICKER_SPREAD: f64 = 0.03;
/// Below this focus score (variance of the Laplacian, grey levels²) the picture
/// is blurred: out of focus, or a dirty or fogged lens.
pub const BLURRED_FOCUS: f64 = 30.0;
/// Width the focus score and the shift search work at, so results do not depend
/// on the camera's resolution.
const WORK_WIDTH: u32 = 320;
/// Farthest shift the drift check looks for, as a share of the width.
const MAX_SHIFT: f64 = 0.15;

/// The light and focus of a set of frames of the empty tray.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LightReport {
    pub mean_luma: f64,
    /// Share of pixels at 250 or above.
    pub saturated: f64,
    /// Share of pixels at 5 or below.
    pub dark: f64,
    /// Standard deviation of the frames' mean luma over its mean.
    pub flicker: f64,
    /// Variance of the Laplacian at 320 pixels wide.
    pub focus: f64,
    /// What to fix, in words; empty when the picture is fine.
    pub warnings: Vec<String>,
}

/// The tray's rectangle in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Roi {
    pub fn from_array([x, y, width, height]: [u32; 4]) -> Roi {
        Roi { x, y, width, height }
    }

    pub fn to_array(self) -> [u32; 4] {
        [self.x, self.y, self.width, self.height]
    }

    /// Whether the rectangle lies inside a `width`×`height` frame.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        let inside = |start: u32, len: u32, limit: u32| start.checked_add(len).is_some_and(|end| end <= limit);
        self.width > 0 && self.height > 0 && inside(self.x, self.width, width) && inside(self.y, self.height, height)
    }

    /// `image` cropped to the rectangle (clipped to the image).
    pub fn crop(&self, image: &RgbImage) -> RgbImage {
        let x = self.x.min(image.width().saturating_sub(1));
        let y = self.y.min(image.height().saturating_sub(1));
        let w = self.width.min(image.width() - x).max(1);
        let h = self.height.min(image.height() - y).max(1);
        image::imageops::crop_imm(image, x, y, w, h).to_image()
    }
}

/// How a frame differs from the reference picture of the empty tray.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Best alignment of the frame to the reference, in frame pixels.
    pub shift: (i32, i32),
    /// Mean luma now over the reference's.
    pub brightness: f64,
    /// Focus score now over the reference's.
    pub focus: f64,
    /// Share of the aligned picture that differs (something on the tray, or a
    /// different tray).
    pub changed: f64,
    pub warnings: Vec<String>,
}

/// Per-pixel median of `frames` (all the same size; at least one).
pub fn background(frames: &[RgbImage]) -> RgbImage {
    let (w, h) = frames[0].dimensions();
    let mut values = vec![0u8; frames.len()];
    RgbImage::from_fn(w, h, |x, y| {
        let mut pixel = [0u8; 3];
        for (c, out) in pixel.iter_mut().enumerate() {
            for (v, f) in values.iter_mut().zip(frames) {
                *v = f.get_pixel(x, y).0[c];
            }
            values.sort_unstable();
            *out = values[values.len() / 2];
        }
        image::Rgb(pixel)
    })
}

fn luma(image: &RgbImage) -> GrayImage {
    image::imageops::grayscale(image)
}

/// The picture at [`WORK_WIDTH`] (or its own width if narrower), grey.
fn work_gray(image: &RgbImage) -> GrayImage {
    let gray = luma(image);
    if gray.width() <= WORK_WIDTH {
        return gray;
    }
    let h = (f64::from(gray.height()) * f64::from(WORK_WIDTH) / f64::from(gray.width())).round().max(1.0) as u32;
    image::imageops::resize(&gray, WORK_WIDTH, h, image::imageops::FilterType::Triangle)
}

/// Variance of the 4-neighbour Laplacian: high for sharp edges, low for blur.
pub fn focus(image: &RgbImage) -> f64 {
    let g = work_gray(image);
    let (w, h) = g.dimensions();
    if w < 3 || h < 3 {
        return 0.0;
    }
    let at = |x: u32, y: u32| f64::from(g.get_pixel(x, y).0[0]);
    let mut values = Vec::with_capacity(((w - 2) * (h - 2)) as usize);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            values.push(at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y));
        }
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64
}

fn mean_luma(gray: &GrayImage) -> f64 {
    gray.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / (gray.width() * gray.height()).max(1) as f64
}

/// Light and focus of the empty tray from several frames (at least one).
pub fn check_light(frames: &[RgbImage]) -> LightReport {
    let grays: Vec<GrayImage> = frames.iter().map(luma).collect();
    let means: Vec<f64> = grays.iter().map(mean_luma).collect();
    let mean = means.iter().sum::<f64>() / means.len() as f64;
    let spread = (means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / means.len() as f64).sqrt();
    let flicker = if mean > 0.0 { spread / mean } else { 0.0 };
    let share = |keep: fn(u8) -> bool| {
        let total: usize = grays.iter().map(|g| g.len()).sum();
        let hits: usize = grays.iter().map(|g| g.pixels().filter(|p| keep(p.0[0])).count()).sum();
        hits as f64 / total.max(1) as f64
    };
    let saturated = share(|v| v >= 250);
    let dark = share(|v| v <= 5);
    let focus = frames.iter().map(focus).sum::<f64>() / frames.len() as f64;
    let mut warnings = Vec::new();
    if mean < DARK_MEAN {
        warnings.push(format!("too dark (mean {mean:.0}/255): add light over the tray or raise the exposure"));
    }
    if mean > BRIGHT_MEAN {
        warnings.push(format!("too bright (mean {mean:.0}/255): lower the exposure or shade the tray"));
    }
    if saturated > SATURATED_SHARE {
        warnings.push(format!(
            "{:.0}% of the picture is saturated: a reflection or a lamp in view; move the light or lower the exposure",
            saturated * 100.0
        ));
    }
    if flicker > FLICKER_SPREAD {
        warnings.push(format!(
            "the light flickers ({:.1}% frame to frame): set the camera's power-line frequency (50/60 Hz) \
             or use DC lighting",
            flicker * 100.0
        ));
    }
    if focus < BLURRED_FOCUS {
        warnings.push(format!("the picture is blurred (focus {focus:.0}): focus the lens or clean it"));
    }
    LightReport { mean_luma: mean, saturated, dark, flicker, focus, warnings }
}

/// The tray, from frames of items placed on it against `background`: the box
/// around everything that differed in any of them, grown by `margin` (a share
/// of the frame's size) on each side. `None` when nothing differed.
pub fn find_roi(background: &RgbImage, with_items: &[RgbImage], pixel_threshold: f32, margin: f64) -> Option<Roi> {
    let (w, h) = background.dimensions();
    let size = Thumb::size_for(w, h);
    let empty = Thumb::from_rgb(background, size);
    let (tw, th) = size;
    let mut changed = vec![false; tw * th];
    for frame in with_items.iter().filter(|f| f.dimensions() == (w, h)) {
        let thumb = Thumb::from_rgb(frame, size);
        let diffs: Vec<f32> = thumb.pixels().iter().zip(empty.pixels()).map(|(a, b)| a - b).collect();
        let mut sorted = diffs.clone();
        sorted.sort_by(f32::total_cmp);
        let offset = sorted[sorted.len() / 2];
        for (c, d) in changed.iter_mut().zip(&diffs) {
            *c |= (d - offset).abs() > pixel_threshold;
        }
    }
    let cells: Vec<(usize, usize)> = (0..tw * th).filter(|&i| changed[i]).map(|i| (i % tw, i / tw)).collect();
    let (x0, x1) = (cells.iter().map(|c| c.0).min()?, cells.iter().map(|c| c.0).max()?);
    let (y0, y1) = (cells.iter().map(|c| c.1).min()?, cells.iter().map(|c| c.1).max()?);
    let to_px = |cell: usize, cells: usize, pixels: u32| cell as f64 * f64::from(pixels) / cells as f64;
    let (mx, my) = (margin * f64::from(w), margin * f64::from(h));
    let left = (to_px(x0, tw, w) - mx).max(0.0).floor() as u32;
    let top = (to_px(y0, th, h) - my).max(0.0).floor() as u32;
    let right = (to_px(x1 + 1, tw, w) + mx).min(f64::from(w)).ceil() as u32;
    let bottom = (to_px(y1 + 1, th, h) + my).min(f64::from(h)).ceil() as u32;
    Some(Roi { x: left, y: top, width: right - left, height: bottom - top })
}

/// Compares `now` with the `reference` picture of the empty tray.
pub fn drift(reference: &RgbImage, now: &RgbImage, pixel_threshold: f32) -> DriftReport {
    let (a, b) = (work_gray(reference), work_gray(now));
    let b = if b.dimensions() == a.dimensions() {
        b
    } else {
        image::imageops::resize(&b, a.width(), a.height(), image::imageops::FilterType::Triangle)
    };
    let (dx, dy) = best_shift(&a, &b);
    let scale = f64::from(reference.width()) / f64::from(a.width());
    let shift = ((f64::from(dx) * scale).round() as i32, (f64::from(dy) * scale).round() as i32);
    let brightness = mean_luma(&b) / mean_luma(&a).max(1.0);
    let focus_ratio = focus(now) / focus(reference).max(1e-6);
    let changed = f64::from(aligned_change(&a, &b, (dx, dy), pixel_threshold));
    let mut warnings = Vec::new();
    let moved = (f64::from(shift.0).powi(2) + f64::from(shift.1).powi(2)).sqrt();
    if moved > 0.02 * f64::from(reference.width()) {
        warnings.push(format!(
            "the camera or the tray moved by about ({}, {}) px since calibration: check the mount, then run \
             `smartbin calibrate camera` again",
            shift.0, shift.1
        ));
    }
    if !(0.7..=1.4).contains(&brightness) {
        warnings.push(format!("the light changed: {:.0}% of its brightness at calibration", brightness * 100.0));
    }
    if focus_ratio < 0.5 {
        warnings.push(format!(
            "the picture is {:.0}% as sharp as at calibration: clean the lens or check its focus",
            focus_ratio * 100.0
        ));
    }
    if changed > 0.25 {
        warnings.push(format!(
            "{:.0}% of the tray looks different from calibration: an item left on it, or a different tray",
            changed * 100.0
        ));
    }
    DriftReport { shift, brightness, focus: focus_ratio, changed, warnings }
}

/// The integer shift (dx, dy) of `b` against `a` with the lowest mean absolute
/// difference over their overlap, searched coarse to fine.
fn best_shift(a: &GrayImage, b: &GrayImage) -> (i32, i32) {
    let reach = (MAX_SHIFT * f64::from(a.width())).round() as i32;
    let mut best = (0, 0);
    let mut best_cost = f64::MAX;
    let mut consider = |dx: i32, dy: i32, best: &mut (i32, i32)| {
        let cost = shifted_cost(a, b, dx, dy);
        if cost < best_cost {
            best_cost = cost;
            *best = (dx, dy);
        }
    };
    for dy in (-reach..=reach).step_by(4) {
        for dx in (-reach..=reach).step_by(4) {
            consider(dx, dy, &mut best);
        }
    }
    let coarse = best;
    for dy in coarse.1 - 3..=coarse.1 + 3 {
        for dx in coarse.0 - 3..=coarse.0 + 3 {
            consider(dx, dy, &mut best);
        }
    }
    best
}

/// Mean |a(x, y) − b(x + dx, y + dy)| over the overlap (every 2nd pixel).
fn shifted_cost(a: &GrayImage, b: &GrayImage, dx: i32, dy: i32) -> f64 {
    let (w, h) = (a.width() as i32, a.height() as i32);
    let (mut sum, mut n) = (0.0, 0u32);
    for y in (0.max(-dy)..h.min(h - dy)).step_by(2) {
        for x in (0.max(-dx)..w.min(w - dx)).step_by(2) {
            let p = f64::from(a.get_pixel(x as u32, y as u32).0[0]);
            let q = f64::from(b.get_pixel((x + dx) as u32, (y + dy) as u32).0[0]);
            sum += (p - q).abs();
            n += 1;
        }
    }
    // Tiny overlaps fit anything: only trust shifts that keep most of the picture.
    if n < (w * h / 8) as u32 {
        return f64::MAX;
    }
    sum / f64::from(n)
}

/// Share of the overlap that differs once `b` is aligned onto `a`.
fn aligned_change(a: &GrayImage, b: &GrayImage, (dx, dy): (i32, i32), pixel_threshold: f32) -> f32 {
    let (w, h) = (a.width() as i32, a.height() as i32);
    let (x0, x1) = (0.max(-dx), w.min(w - dx));
    let (y0, y1) = (0.max(-dy), h.min(h - dy));
    let (cw, ch) = ((x1 - x0).max(1) as u32, (y1 - y0).max(1) as u32);
    let crop_a = GrayImage::from_fn(cw, ch, |x, y| *a.get_pixel(x + x0 as u32, y + y0 as u32));
    let crop_b = GrayImage::from_fn(cw, ch, |x, y| *b.get_pixel((x as i32 + x0 + dx) as u32, (y as i32 + y0 + dy) as u32));
    let size = Thumb::size_for(cw, ch);
    changed_fraction(&Thumb::from_gray(&crop_a, size), &Thumb::from_gray(&crop_b, size), pixel_threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured tray (blotches of random grey, like worn wood or card),
    /// lit `light` (1 = normal).
    fn tray(w: u32, h: u32, light: f32) -> RgbImage {
        let hash = |x: u32, y: u32| {
            let mut v = x.wrapping_mul(0x9E37_79B9) ^ y.wrapping_mul(0x85EB_CA6B);
            v ^= v >> 15;
            v = v.wrapping_mul(0xC2B2_AE35);
            (v >> 24) as f32
        };
        let blotches = RgbImage::from_fn(w, h, |x, y| {
            let v = ((70.0 + hash(x / 6, y / 6) * 0.45) * light).clamp(0.0, 255.0) as u8;
            image::Rgb([v, (f32::from(v) * 0.9) as u8, (f32::from(v) * 0.7) as u8])
        });
        image::imageops::blur(&blotches, 1.0)
    }

    fn with_item(mut img: RgbImage, x: u32, y: u32, side: u32) -> RgbImage {
        for j in y..y + side {
            for i in x..x + side {
                img.put_pixel(i, j, image::Rgb([235, 235, 225]));
            }
        }
        img
    }

    fn shifted(img: &RgbImage, dx: i32, dy: i32) -> RgbImage {
        RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let sx = (x as i32 - dx).clamp(0, img.width() as i32 - 1) as u32;
            let sy = (y as i32 - dy).clamp(0, img.height() as i32 - 1) as u32;
            *img.get_pixel(sx, sy)
        })
    }

    #[test]
    fn the_background_ignores_a_hand_in_one_frame() {
        let empty = tray(160, 120, 1.0);
        let frames = vec![empty.clone(), with_item(empty.clone(), 40, 40, 30), empty.clone()];
        assert_eq!(background(&frames), empty);
    }

    #[test]
    fn a_well_lit_sharp_tray_passes_and_bad_light_is_named() {
        let good = check_light(&[tray(320, 240, 1.0), tray(320, 240, 1.0)]);
        assert!(good.warnings.is_empty(), "{good:?}");
        let dark = check_light(&[tray(320, 240, 0.2)]);
        assert!(dark.warnings.iter().any(|w| w.contains("too dark")), "{dark:?}");
        let flicker = check_light(&[tray(320, 240, 0.8), tray(320, 240, 1.0), tray(320, 240, 0.8)]);
        assert!(flicker.warnings.iter().any(|w| w.contains("flickers")), "{flicker:?}");
        let blurred = image::imageops::blur(&tray(320, 240, 1.0), 4.0);
        let report = check_light(&[blurred]);
        assert!(report.warnings.iter().any(|w| w.contains("blurred")), "{report:?}");
        let base = tray(320, 240, 1.0);
        let lamp = RgbImage::from_fn(320, 240, |x, y| if x < 100 { image::Rgb([255; 3]) } else { *base.get_pixel(x, y) });
        assert!(check_light(&[lamp]).warnings.iter().any(|w| w.contains("saturated")));
    }

    #[test]
    fn the_roi_covers_where_items_were_placed() {
        let empty = tray(320, 240, 1.0);
        let items = [with_item(empty.clone(), 100, 60, 40), with_item(empty.clone(), 180, 130, 40)];
        let roi = find_roi(&empty, &items, 25.0, 0.05).unwrap();
        // items span x 100..220, y 60..170; margin 16 px / 12 px, thumb cells 5 px
        assert!(roi.x <= 100 && roi.x >= 70, "{roi:?}");
        assert!(roi.y <= 60 && roi.y >= 35, "{roi:?}");
        assert!(roi.x + roi.width >= 220 && roi.x + roi.width <= 250, "{roi:?}");
        assert!(roi.y + roi.height >= 170 && roi.y + roi.height <= 195, "{roi:?}");
        assert_eq!(find_roi(&empty, &[empty.clone()], 25.0, 0.05), None);
        let crop = roi.crop(&empty);
        assert_eq!(crop.dimensions(), (roi.width, roi.height));
    }

    #[test]
    fn drift_finds_a_moved_camera_a_dirty_lens_and_changed_light() {
        let reference = tray(320, 240, 1.0);
        let same = drift(&reference, &reference, 25.0);
        assert!(same.warnings.is_empty() && same.shift == (0, 0), "{same:?}");

        let moved = drift(&reference, &shifted(&reference, 18, -10), 25.0);
        assert_eq!(moved.shift, (18, -10), "{moved:?}");
        assert!(moved.warnings.iter().any(|w| w.contains("moved")), "{moved:?}");
        assert!(moved.changed < 0.05, "aligned, the tray is the same: {moved:?}");

        let dirty = drift(&reference, &image::imageops::blur(&reference, 3.0), 25.0);
        assert!(dirty.warnings.iter().any(|w| w.contains("sharp")), "{dirty:?}");

        let dim = drift(&reference, &tray(320, 240, 0.5), 25.0);
        assert!(dim.warnings.iter().any(|w| w.contains("light changed")), "{dim:?}");

        let left = drift(&reference, &with_item(reference.clone(), 60, 40, 150), 25.0);
        assert!(left.warnings.iter().any(|w| w.contains("looks different")), "{left:?}");
    }
}
