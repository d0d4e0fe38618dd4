use crate::model::explain::{heat_map, overlay, Method};
use crate::model::{checkpoint, parse_device};
use crate::preprocess::{decode_file, eval_resize_side, eval_transform, to_tensor};
use anyhow::Context;
use candle_core::D;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[arg(long, default_value = crate::model::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// The photo to explain.
    pub image: PathBuf,
    /// Where to write the heat-map overlay (PNG).
    #[arg(long, default_value = "heat.png")]
    pub out: PathBuf,
    /// Explain this class instead of the predicted one (Grad-CAM only).
    #[arg(long)]
    pub class: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The part of the photo the model sees: the eval transform's centre crop, at the
/// photo's own resolution.
fn seen_region(photo: &image::RgbImage, size: u32) -> image::RgbImage {
    let (w, h) = photo.dimensions();
    let side = (w.min(h) as f64 * size as f64 / eval_resize_side(size) as f64).round() as u32;
    image::imageops::crop_imm(photo, (w - side) / 2, (h - side) / 2, side, side).to_image()
}

pub fn main(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let (network, _) = checkpoint::load_for_inference(&args.model, &parse_device(&args.device)?)?;
    let photo = decode_file(&args.image).map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    let size = network.spec.image_size;
    let x = to_tensor(&[eval_transform(&photo, size)], size, network.device())?;
    let probs = candle_nn::ops::softmax(&network.forward_t(&x, false)?, D::Minus1)?.get(0)?.to_vec1::<f32>()?;
    let predicted = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    let class = match &args.class {
        Some(name) => network.spec.classes.iter().position(|c| c == name)
            .with_context(|| format!("unknown class `{name}`; the model knows {:?}", network.spec.classes))?,
        None => predicted,
    };
    let map = heat_map(&network, &x, class)?;
    if args.class.is_some() && map.method == Method::SpatialGate {
        log::warn!("--class has no effect here: the spatial gate does not depend on the class");
    }
    save_png(&overlay(&seen_region(&photo, size), &map, 0.5), &args.out)?;
    let method = match map.method {
        Method::SpatialGate => "RecycleNet spatial gate",
        Method::GradCam => "Grad-CAM",
    };
    println!(
        "{}: {} ({:.1}%); {method} for `{}` ({}×{} map) written to {}",
        args.image.display(), network.spec.classes[predicted], probs[predicted] * 100.0,
        network.spec.classes[class], map.height, map.width, args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn save_png(img: &image::RgbImage, path: &Path) -> anyhow::Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    crate::util::write_atomic(path, bytes.get_ref()).with_context(|| format!("cannot write {}", path.display()))
}
