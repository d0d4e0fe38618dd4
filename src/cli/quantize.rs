use crate::model::checkpoint;
use crate::model::quant::QuantType;
use candle_core::DType;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StorageType {
    /// Half precision: half the size, predictions within ~1e-3 of f32.
    F16,
    F32,
    /// Conv weights in 8-bit blocks: a quarter of f32, accuracy within a fraction of a point.
    #[value(name = "q8_0")]
    Q8_0,
    /// Conv weights in 4-bit k-quant blocks (short reductions in q8_0): an eighth of f32.
    Q4k,
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: StorageType,
    /// Photos (searched recursively) that measure each conv's input, so q4k rounds
    /// the weights of busy channels more carefully. Bin captures or training photos.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// How many of those photos to use, spread evenly over the sorted list.
    #[arg(long, default_value_t = 64)]
    pub calibration_photos: usize,
}

pub fn main(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    if args.out == args.model {
        anyhow::bail!("--out must differ from --model: the original is kept");
    }
    let quantized = match args.dtype {
        StorageType::F16 | StorageType::F32 if args.calibration.is_some() => {
            anyhow::bail!("--calibration applies to q8_0 and q4k only")
        }
        StorageType::F16 => return convert(&args, DType::F16),
        StorageType::F32 => return convert(&args, DType::F32),
        StorageType::Q8_0 => QuantType::Q8_0,
        StorageType::Q4k => QuantType::Q4K,
    };
    let photos = match &args.calibration {
        Some(dir) => calibration_photos(dir, args.calibration_photos)?,
        None => Vec::new(),
    };
    checkpoint::quantize(&args.model, &args.out, quantized, &photos)?;
    report(&args)
}

fn convert(args: &QuantizeArgs, dtype: DType) -> anyhow::Result<ExitCode> {
    checkpoint::convert(&args.model, &args.out, dtype)?;
    report(args)
}

fn report(args: &QuantizeArgs) -> anyhow::Result<ExitCode> {
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    log::info!("{} ({:.1} MB) -> {} ({:.1} MB, {:?})", args.model.display(), size(&args.model), args.out.display(), size(&args.out), args.dtype);
    Ok(ExitCode::SUCCESS)
}

/// Up to `count` photos under `dir`, spread evenly over the sorted list.
fn calibration_photos(dir: &Path, count: usize) -> anyhow::Result<Vec<image::RgbImage>> {
    let mut files = Vec::new();
    collect_images(dir, &mut files).with_context(|| format!("cannot list calibration photos in {}", dir.display()))?;
    files.sort();
    if files.is_empty() || count == 0 {
        anyhow::bail!("no JPEG/PNG photos under {} to calibrate with", dir.display());
    }
    let picks = count.min(files.len());
    let mut photos = Vec::new();
    for path in (0..picks).map(|i| &files[i * files.len() / picks]) {
        // A broken photo is skipped, not fatal: the rest still measure the network.
        match crate::preprocess::decode_file(path) {
            Ok(img) => photos.push(img),
            Err(e) => log::warn!("skipping calibration photo {}: {e}", path.display()),
        }
    }
    log::info!("measuring conv inputs on {} photos from {}", photos.len(), dir.display());
    Ok(photos)
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(crate::source::is_image_name) {
            out.push(path);
        }
    }
    Ok(())
}
