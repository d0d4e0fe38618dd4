//! Offline augmentation, like RecycleNet's Albumentations script: writes augmented
//! copies of a class-folder tree into another folder, never touching the source.

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// How often each transform fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probability {
    Low,
    Mid,
    High,
}

impl Probability {
    fn p(self) -> f64 {
        match self {
            Probability::Low => 0.25,
            Probability::Mid => 0.5,
            Probability::High => 0.75,
        }
    }
}

/// One augmented copy of `img`: each transform fires with probability `p`, in a fixed
/// order (geometry first, then colour), so the result depends only on the RNG.
pub fn augment(img: &RgbImage, p: Probability, rng: &mut impl Rng) -> RgbImage {
    let p = p.p();
    let mut out = img.clone();
    // At most one crop, as Albumentations' OneOf would pick.
    if rng.random_bool(p) {
        out = match rng.random_range(0..3) {
            0 => random_crop(&out, 0.8, rng),
            1 => centre_crop(&out, 0.8),
            _ => random_sized_crop(&out, rng),
        };
    }
    if rng.random_bool(p / 2.0) {
        out = imageops::flip_vertical(&out);
    }
    if rng.random_bool(p) {
        out = imageops::flip_horizontal(&out);
    }
    if rng.random_bool(p / 2.0) {
        out = transpose(&out);
    }
    if rng.random_bool(p / 2.0) {
        out = match rng.random_range(1..4) {
            1 => imageops::rotate90(&out),
            2 => imageops::rotate180(&out),
            _ => imageops::rotate270(&out),
        };
    }
    if rng.random_bool(p / 2.0) {
        out = warp(&out, rng.random_range(-30.0..30.0), 1.0, (0.0, 0.0));
    }
    if rng.random_bool(p) {
        let shift = (rng.random_range(-0.0625..0.0625), rng.random_range(-0.0625..0.0625));
        out = warp(&out, rng.random_range(-45.0..45.0), rng.random_range(0.9..1.1), shift);
    }
    if rng.random_bool(p) {
        out = imageops::brighten(&out, rng.random_range(-40..=40));
    }
    if rng.random_bool(p) {
        out = imageops::contrast(&out, rng.random_range(-20.0..20.0));
    }
    out
}

fn random_crop(img: &RgbImage, fraction: f64, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (((w as f64) * fraction) as u32, ((h as f64) * fraction) as u32);
    let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
    imageops::crop_imm(img, x, y, cw.max(1), ch.max(1)).to_image()
}

fn centre_crop(img: &RgbImage, fraction: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (((w as f64) * fraction) as u32, ((h as f64) * fraction) as u32);
    imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw.max(1), ch.max(1)).to_image()
}

/// A crop of 50–100% of the area at aspect 3/4–4/3, resized back to the photo's size.
fn random_sized_crop(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = (w * h) as f64 * rng.random_range(0.5..1.0);
    let ratio = rng.random_range((0.75f64).ln()..(4.0f64 / 3.0).ln()).exp();
    let cw = ((area * ratio).sqrt() as u32).clamp(1, w);
    let ch = ((area / ratio).sqrt() as u32).clamp(1, h);
    let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
    imageops::resize(&imageops::crop_imm(img, x, y, cw, ch).to_image(), w, h, FilterType::Triangle)
}

fn transpose(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(h, w, |x, y| *img.get_pixel(y, x))
}

/// Rotation by `degrees` about the centre, scaling and a shift (fractions of the
/// size), bilinear, with mirrored borders (Albumentations' default) so no black
/// corners appear.
fn warp(img: &RgbImage, degrees: f64, scale: f64, shift: (f64, f64)) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = (w as f64 / 2.0 + shift.0 * w as f64, h as f64 / 2.0 + shift.1 * h as f64);
    let (sin, cos) = degrees.to_radians().sin_cos();
    RgbImage::from_fn(w, h, |x, y| {
        // Inverse map: output pixel → source position.
        let (dx, dy) = ((x as f64 - cx) / scale, (y as f64 - cy) / scale);
        let sx = cos * dx + sin * dy + w as f64 / 2.0;
        let sy = -sin * dx + cos * dy + h as f64 / 2.0;
        bilinear(img, sx, sy)
    })
}

fn mirror(v: f64, size: u32) -> f64 {
    let max = (size.max(2) - 1) as f64;
    let period = 2.0 * max;
    let m = v.rem_euclid(period);
    if m > max { period - m } else { m }
}

fn bilinear(img: &RgbImage, x: f64, y: f64) -> image::Rgb<u8> {
    let (x, y) = (mirror(x, img.width()), mirror(y, img.height()));
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(img.width() - 1), (y0 + 1).min(img.height() - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let px = |xx, yy| img.get_pixel(xx, yy).0.map(f64::from);
    let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
    image::Rgb(std::array::from_fn(|i| {
        let top = a[i] * (1.0 - fx) + b[i] * fx;
        let bottom = c[i] * (1.0 - fx) + d[i] * fx;
        (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
    }))
}

/// What [`augment_tree`] did.
#[derive(Debug, Default)]
pub struct TreeReport {
    pub written: usize,
    pub skipped_existing: usize,
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Writes `copies` augmented versions of every photo in `root/<class>/` to
/// `save/<class>/<stem>_aug<k>.jpg`. Existing outputs are left alone.
pub fn augment_tree(root: &Path, save: &Path, p: Probability, copies: usize, seed: u64) -> anyhow::Result<TreeReport> {
    let root_abs = root.canonicalize().map_err(|e| anyhow::anyhow!("--root-dir {}: {e}", root.display()))?;
    let save_abs = absolute(save)?;
    if save_abs.starts_with(&root_abs) {
        anyhow::bail!("--save-dir {} is inside --root-dir {}: the source must stay untouched", save.display(), root.display());
    }
    let photos = list_photos(root)?;
    let bar = indicatif::ProgressBar::new(photos.len() as u64);
    let mut report = TreeReport::default();
    for (i, (class, path)) in photos.iter().enumerate() {
        bar.inc(1);
        let img = match crate::preprocess::decode_file(path) {
            Ok(img) => img,
            Err(e) => {
                log::warn!("skipping {}: {e}", path.display());
                report.unreadable.push((path.clone(), e));
                continue;
            }
        };
        let dir = save.join(class);
        std::fs::create_dir_all(&dir)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("photo");
        for k in 0..copies {
            let out = dir.join(format!("{stem}_aug{k}.jpg"));
            if out.exists() {
                report.skipped_existing += 1;
                continue;
            }
            let mut rng = StdRng::seed_from_u64(seed ^ ((i as u64) << 16) ^ k as u64);
            let mut bytes = std::io::Cursor::new(Vec::new());
            augment(&img, p, &mut rng).write_to(&mut bytes, image::ImageFormat::Jpeg)?;
            crate::util::write_atomic(&out, bytes.get_ref())?;
            report.written += 1;
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    match path.canonicalize() {
        Ok(p) => Ok(p),
        Err(_) => Ok(std::env::current_dir()?.join(path)),
    }
}

/// (class, photo) pairs under `root/<class>/`, sorted.
fn list_photos(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for class_dir in std::fs::read_dir(root)? {
        let class_dir = class_dir?.path();
        if !class_dir.is_dir() {
            continue;
        }
        let class = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        for entry in std::fs::read_dir(&class_dir)? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                out.push((class.clone(), path));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        anyhow::bail!("no photos under {}/<class>/", root.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo() -> RgbImage {
        RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 100]))
    }

    #[test]
    fn augmentation_is_seeded_and_changes_the_photo() {
        let a = augment(&photo(), Probability::High, &mut StdRng::seed_from_u64(3));
        let b = augment(&photo(), Probability::High, &mut StdRng::seed_from_u64(3));
        assert_eq!(a, b);
        let changed = (0..20).filter(|&s| augment(&photo(), Probability::High, &mut StdRng::seed_from_u64(s)) != photo()).count();
        assert!(changed >= 18, "only {changed}/20 copies differ from the photo");
    }

    #[test]
    fn geometric_helpers_keep_sizes_and_content() {
        let img = photo();
        assert_eq!(transpose(&img).dimensions(), (48, 64));
        assert_eq!(transpose(&img).get_pixel(5, 9), img.get_pixel(9, 5));
        // A zero warp is the identity.
        assert_eq!(warp(&img, 0.0, 1.0, (0.0, 0.0)), img);
        assert_eq!(mirror(-1.0, 10), 1.0);
        assert_eq!(mirror(10.0, 10), 8.0);
        assert_eq!(random_sized_crop(&img, &mut StdRng::seed_from_u64(1)).dimensions(), (64, 48));
    }

    #[test]
    fn tree_is_mirrored_and_the_source_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (root, save) = (dir.path().join("src"), dir.path().join("aug"));
        for class in ["glass", "paper"] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            photo().save(root.join(class).join("a.jpg")).unwrap();
        }
        std::fs::write(root.join("paper/broken.jpg"), b"nope").unwrap();
        let report = augment_tree(&root, &save, Probability::Mid, 2, 9).unwrap();
        assert_eq!(report.written, 4);
        assert_eq!(report.unreadable.len(), 1);
        assert!(save.join("glass/a_aug1.jpg").exists() && save.join("paper/a_aug0.jpg").exists());
        assert_eq!(std::fs::read_dir(root.join("glass")).unwrap().count(), 1);
        // Running again writes nothing new; saving inside the source is refused.
        assert_eq!(augment_tree(&root, &save, Probability::Mid, 2, 9).unwrap().skipped_existing, 4);
        assert!(augment_tree(&root, &root.join("out"), Probability::Mid, 1, 9).is_err());
    }
}
