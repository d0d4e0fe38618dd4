use crate::model::{Arch, AttentionKind, GateMix, ModelSpec, Network};
use crate::training::data::TRASHNET_CLASSES;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ModelInfoArgs {
    #[arg(long, value_enum, default_value_t = Arch::Resnet18)]
    pub arch: Arch,
    #[arg(long, value_enum, default_value_t = AttentionKind::Ours)]
    pub att: AttentionKind,
    /// How `ours` combines its gates.
    #[arg(long, value_enum, default_value_t = GateMix::Sum)]
    pub att_mix: GateMix,
    #[arg(long, default_value_t = TRASHNET_CLASSES.len())]
    pub classes: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: ModelInfoArgs) -> anyhow::Result<ExitCode> {
    let classes = (0..args.classes).map(|i| format!("class{i}")).collect();
    let spec = ModelSpec { arch: args.arch, att: args.att, att_mix: args.att_mix, classes, image_size: 224 };
    let network = Network::new(spec, &candle_core::Device::Cpu, 0)?;
    let params = network.store.count_trainable();
    let buffers = network.store.params().len() - network.store.trainable().len();
    if args.json {
        let info = serde_json::json!({
            "arch": args.arch, "att": args.att, "att_mix": args.att_mix, "classes": args.classes,
            "params": params, "params_millions": (params as f64 / 1e4).round() / 100.0, "buffers": buffers,
        });
        println!("{info}");
    } else {
        println!("{} + {:?} ({} classes): {:.2} M parameters", args.arch, args.att, args.classes, params as f64 / 1e6);
    }
    Ok(ExitCode::SUCCESS)
}
