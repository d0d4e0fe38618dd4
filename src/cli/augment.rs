use crate::training::augment::{augment_tree, Probability};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct AugmentArgs {
    /// Class-folder tree to read (`<root>/<class>/*.jpg`), e.g. TrashNet's dataset-resized.
    #[arg(long)]
    pub root_dir: PathBuf,
    /// Where the augmented tree goes (must not be inside --root-dir).
    #[arg(long)]
    pub save_dir: PathBuf,
    #[arg(long, value_enum, default_value = "mid")]
    pub probability: Probability,
    /// Augmented copies per photo.
    #[arg(long, default_value_t = 1)]
    pub copies: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

pub fn main(args: AugmentArgs) -> anyhow::Result<ExitCode> {
    let r = augment_tree(&args.root_dir, &args.save_dir, args.probability, args.copies, args.seed)?;
    println!(
        "{} augmented photos written to {}; {} already there; {} unreadable",
        r.written, args.save_dir.display(), r.skipped_existing, r.unreadable.len()
    );
    Ok(ExitCode::SUCCESS)
}
