use crate::model::{parse_device, Arch, AttentionKind, GateMix};
use crate::training::data::Split;
use crate::training::trainer::stored_config;
use crate::training::{TrainConfig, Trainer};
use anyhow::bail;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags follow the RecycleNet recipe's names. Recipe flags left out take the recipe's
/// default, or with `--resume` the value stored in the checkpoint.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// TrashNet root (holds dataset-resized/ and splits/) [default: ../shared/trashnet,
    /// or with --resume the one the run started with]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// [default: resnet18]
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// [default: ours]
    #[arg(long, value_enum)]
    pub att: Option<AttentionKind>,
    /// How `ours` combines its gates [default: sum]
    #[arg(long, value_enum)]
    pub att_mix: Option<GateMix>,
    /// [default: 100]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// [default: 16]
    #[arg(long, short = 'b')]
    pub batch_size: Option<usize>,
    /// [default: 2e-4]
    #[arg(long)]
    pub lr: Option<f64>,
    /// [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// [default: 1e-4]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Divide the learning rate by 10 every this many epochs [default: 40]
    #[arg(long)]
    pub lr_step: Option<usize>,
    /// [default: 1234]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Square input size; smaller trains faster [default: 224]
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Smallest crop area fraction of RandomResizedCrop [default: 0.08]
    #[arg(long)]
    pub min_crop_scale: Option<f64>,
    /// Where checkpoint.safetensors, model_best.safetensors and metrics.csv go [default: save]
    #[arg(long)]
    pub save_dir: Option<PathBuf>,
    /// Use at most this many training images (quick experiments).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Continue from a checkpoint.safetensors.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Train from scratch (the default: no ImageNet weights ship with smartbin).
    #[arg(long, conflicts_with = "pretrained")]
    pub no_pretrain: bool,
    /// Start from these weights: safetensors with torchvision names (e.g. timm's
    /// resnet18.tv_in1k). Head and attention start fresh.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// none | backbone (train only attention + classifier, on cached trunk
    /// features) | until:<stage> (e.g. until:layer3, until:stage5) [default: none]
    #[arg(long)]
    pub freeze: Option<crate::training::freeze::Freeze>,
    /// With --freeze backbone: augmented views per image whose features are cached [default: 8]
    #[arg(long)]
    pub feature_views: Option<usize>,
    /// With --freeze backbone: file for the cached features, reusable by runs on the
    /// same trunk, views and data [default: <save-dir>/features.safetensors]
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Evaluate the `--resume` model on the test split instead of training.
    #[arg(long, short = 'e')]
    pub evaluate: bool,
}

fn recipe(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let base = match &args.resume {
        Some(path) => stored_config(path)?,
        None => TrainConfig {
            arch: Arch::Resnet18,
            att: AttentionKind::Ours,
            att_mix: GateMix::Sum,
            epochs: 100,
            batch_size: 16,
            lr: 2e-4,
            momentum: 0.9,
            weight_decay: 1e-4,
            lr_step: 40,
            seed: 1234,
            image_size: 224,
            min_crop_scale: crate::preprocess::DEFAULT_MIN_CROP_SCALE,
            data: "../shared/trashnet".into(),
            save_dir: "save".into(),
            limit: None,
            pretrained: None,
            freeze: Default::default(),
            feature_views: 8,
            feature_cache: None,
        },
    };
    Ok(TrainConfig {
        arch: args.arch.unwrap_or(base.arch),
        att: args.att.unwrap_or(base.att),
        att_mix: args.att_mix.unwrap_or(base.att_mix),
        epochs: args.epochs.unwrap_or(base.epochs),
        batch_size: args.batch_size.unwrap_or(base.batch_size),
        lr: args.lr.unwrap_or(base.lr),
        momentum: args.momentum.unwrap_or(base.momentum),
        weight_decay: args.weight_decay.unwrap_or(base.weight_decay),
        lr_step: args.lr_step.unwrap_or(base.lr_step),
        seed: args.seed.unwrap_or(base.seed),
        image_size: args.image_size.unwrap_or(base.image_size),
        min_crop_scale: args.min_crop_scale.unwrap_or(base.min_crop_scale),
        data: args.data.clone().unwrap_or(base.data),
        save_dir: args.save_dir.clone().unwrap_or(base.save_dir),
        limit: args.limit.or(base.limit),
        freeze: args.freeze.clone().unwrap_or(base.freeze),
        feature_views: args.feature_views.unwrap_or(base.feature_views),
        feature_cache: args.feature_cache.clone().or(base.feature_cache),
        pretrained: if args.no_pretrain { None } else { args.pretrained.clone().or(base.pretrained) },
    })
}

pub fn main(args: TrainArgs) -> anyhow::Result<ExitCode> {
    if args.evaluate {
        let Some(model) = args.resume.clone() else { bail!("-e/--evaluate needs --resume PATH (the model to evaluate)") };
        // The data the run trained on, when the file remembers it.
        let stored = stored_config(&model).ok().map(|c| c.data);
        let data = args.data.clone().or(stored).unwrap_or_else(|| "../shared/trashnet".into());
        let eval = super::eval::EvalArgs { model, data, split: Split::Test, device: args.device.clone(), batch_size: 32, json: false };
        return super::eval::main(eval);
    }
    let config = recipe(&args)?;
    if config.batch_size == 0 || config.image_size < 32 || config.lr_step == 0 {
        bail!("--batch-size and --lr-step must be positive and --image-size at least 32");
    }
    let device = parse_device(&args.device)?;
    log::info!("training {} + {:?} on {}: {config:?}", config.arch, config.att, args.device);
    let mut trainer = Trainer::new(config, &device, args.resume.as_deref())?;
    let state = trainer.run()?;
    log::info!("done: best validation accuracy {:.2}% after {} epochs", state.best_val_acc, state.epoch);
    Ok(ExitCode::SUCCESS)
}
