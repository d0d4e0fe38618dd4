//! Command-line front end: one file per subcommand, each owning its clap arguments.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod augment;
pub mod bench;
pub mod bins;
pub mod calibrate;
mod calibrate_camera;
pub mod calibrate_model;
pub mod cameras;
pub mod eval;
pub mod explain;
pub mod inputs;
pub mod live;
pub mod model_info;
pub mod predict;
pub mod quantize;
pub mod run;
pub mod terminal;
pub mod train;

#[derive(Debug, Parser)]
#[command(name = "smartbin", version, about = "The brain of an automatic recycling bin")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sorter: frames -> classifier -> bin -> servo moves.
    Run(run::RunArgs),
    /// Train a classifier on TrashNet (the RecycleNet recipe by default).
    Train(train::TrainArgs),
    /// Evaluate a model on a TrashNet split.
    Eval(eval::EvalArgs),
    /// Classify image files.
    Predict(predict::PredictArgs),
    /// Print an architecture's parameter count.
    ModelInfo(model_info::ModelInfoArgs),
    /// Write augmented copies of a class-folder tree (offline augmentation).
    Augment(augment::AugmentArgs),
    /// Show where the model looks in a photo (attention map or Grad-CAM overlay).
    Explain(explain::ExplainArgs),
    /// Time the model and the whole sorter loop.
    Bench(bench::BenchArgs),
    /// Rewrite a model file in a smaller number format for the bin.
    Quantize(quantize::QuantizeArgs),
    /// Show how full each bin is; `bins reset BIN|--all` after emptying.
    Bins(bins::BinsArgs),
    /// List the V4L2 devices: which are cameras, and their formats and frame rates.
    Cameras(cameras::CamerasArgs),
    /// Classify a camera's view live in the terminal ('s' saves a frame, 'q' quits).
    Live(live::LiveArgs),
    /// Fit a fresh install to its bin: servos (limits, poses, home), camera (tray, light,
    /// reference), model (adapted to this bin's items).
    Calibrate(calibrate::CalibrateArgs),
    /// File a wrongly sorted item's frame under its right class (for `calibrate model`).
    Correct(calibrate_model::CorrectArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::Train(a) => train::main(a),
        Command::Eval(a) => eval::main(a),
        Command::Predict(a) => predict::main(a),
        Command::ModelInfo(a) => model_info::main(a),
        Command::Quantize(a) => quantize::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Explain(a) => explain::main(a),
        Command::Augment(a) => augment::main(a),
        Command::Bins(a) => bins::main(a),
        Command::Cameras(a) => cameras::main(a),
        Command::Live(a) => live::main(a),
        Command::Calibrate(a) => calibrate::main(a),
        Command::Correct(a) => calibrate_model::correct(a),
    }
}
