use crate::model::checkpoint;
use candle_core::DType;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StorageType {
    /// Half precision: half the size, predictions within ~1e-3 of f32.
    F16,
    F32,
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: StorageType,
}

pub fn main(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let dtype = match args.dtype {
        StorageType::F16 => DType::F16,
        StorageType::F32 => DType::F32,
    };
    checkpoint::convert(&args.model, &args.out, dtype)?;
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    log::info!("{} ({:.1} MB) -> {} ({:.1} MB, {dtype:?})", args.model.display(), size(&args.model), args.out.display(), size(&args.out));
    Ok(ExitCode::SUCCESS)
}
