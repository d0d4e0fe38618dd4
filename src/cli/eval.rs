use crate::model::{checkpoint, parse_device};
use crate::training::data::{load_split, ImageCache, Split};
use crate::training::evaluate;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[arg(long, default_value = crate::model::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// TrashNet root (holds dataset-resized/ and splits/).
    #[arg(long, default_value = "../shared/trashnet")]
    pub data: PathBuf,
    #[arg(long, default_value = "test")]
    pub split: Split,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// One JSON object: top1 (percent), per_class, confusion, n, classes, loss.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let device = parse_device(&args.device)?;
    let (network, _) = checkpoint::load_for_inference(&args.model, &device)?;
    let mut samples = load_split(&args.data, args.split)?;
    // The data set numbers classes its own way; the model's order is what counts.
    for s in &mut samples {
        let name = crate::training::data::TRASHNET_CLASSES[s.label];
        s.label = network.spec.classes.iter().position(|c| c == name)
            .with_context(|| format!("the model has no class `{name}` (it knows {:?})", network.spec.classes))?;
    }
    let (cache, skipped) = ImageCache::build(&samples, crate::preprocess::eval_resize_side(network.spec.image_size));
    if cache.is_empty() {
        bail!("no readable images in the {} split of {}", args.split, args.data.display());
    }
    let report = evaluate(&network, &cache, args.batch_size.max(1))?;
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["skipped"] = skipped.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect();
        println!("{json}");
    } else {
        println!("{} on the {} split of {}:\n{report}", args.model.display(), args.split, args.data.display());
    }
    Ok(ExitCode::SUCCESS)
}
