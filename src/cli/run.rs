//! `smartbin run`: the sorter, from config to summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use crate::actuation::{sim_actuator, Actuator};
use crate::clock::{Clock, SimClock, SystemClock};
use crate::config::{ActuationConfig, ActuatorBackend, Config};
use crate::decision::DecisionPolicy;
use crate::sorter::{install_stop_signals, EventLog, Sorter};
use crate::source::{open_source, parse_source_spec, ReplayOptions, ReplayTrigger};

/// Where `run` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "firmware-config/smartbin.toml";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file [default: firmware-config/smartbin.toml, or built-in defaults
    /// when that file does not exist]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Frame source, overriding [source] spec (e.g. images:samples)
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// Actuator backend, overriding [actuation] backend
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub actuator: Option<ActuatorBackend>,
    /// Model checkpoint, overriding [model] path
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Event log (JSON lines), overriding [log] events
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Simulated servos wait the real settle and dwell times (default: simulated
    /// time, so a replay runs as fast as the classifier)
    #[arg(long)]
    pub realtime: bool,
    /// Stop after N items (unreadable frames count too)
    #[arg(long, value_name = "N")]
    pub max_items: Option<u64>,
}

pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let spec = parse_source_spec(&config.source.spec)?;
    let options = ReplayOptions { looped: config.source.looped, rate_hz: config.source.rate_hz };
    let source = open_source(&spec, options, clock.clone())
        .with_context(|| format!("frame source `{spec}`: set [source] spec in the config or pass --source images:DIR"))?;
    let mut trigger = ReplayTrigger::new(source);
    if config.decision.frames_per_item > 1 {
        log::info!(
            "frames_per_item = {} applies to camera sources; an image replay classifies one frame per file",
            config.decision.frames_per_item
        );
    }

    let mut classifier = crate::model::load_classifier(&config.model.path, &config.model.device).with_context(|| {
        format!(
            "loading model {} (set [model] path in the config or pass --model)",
            config.model.path.display()
        )
    })?;
    let policy = DecisionPolicy::from_config(&config.decision);
    warn_about_coverage(&policy, classifier.class_names());

    let mut actuator = build_actuator(&config.actuation, clock.clone(), args.realtime)?;
    let events = EventLog::open(&config.log.events)?;
    log::info!("event log: {} (next id {})", events.path().display(), events.next_id());

    let stop = Arc::new(AtomicBool::new(false));
    install_stop_signals(&stop).context("installing SIGINT/SIGTERM handlers")?;

    let summary = Sorter::new(
        &mut trigger,
        classifier.as_mut(),
        actuator.as_mut(),
        policy,
        events,
        clock,
    )
    .with_stop_flag(stop)
    .with_max_items(args.max_items)
    .run()?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// The config file (or defaults) with the command-line overrides applied and
/// validated again.
fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => {
            log::info!("no {DEFAULT_CONFIG} here and no --config: using built-in defaults");
            Config::default()
        }
    };
    if let Some(spec) = &args.source {
        config.source.spec = spec.clone();
    }
    if let Some(backend) = args.actuator {
        config.actuation.backend = backend;
    }
    if let Some(model) = &args.model {
        config.model.path = model.clone();
    }
    if let Some(events) = &args.events {
        config.log.events = events.clone();
    }
    config.validate().context("after applying command-line overrides")?;
    Ok(config)
}

fn build_actuator(config: &ActuationConfig, clock: Arc<dyn Clock>, realtime: bool) -> anyhow::Result<Box<dyn Actuator>> {
    match config.backend {
        ActuatorBackend::Sim => {
            // Simulated servos need not wait for real: their moves are timed on a
            // virtual clock unless asked to mimic the bin's pace.
            let clock = if realtime { clock } else { Arc::new(SimClock::new()) as Arc<dyn Clock> };
            // The sim's record is only for tests; in a run the per-move log lines
            // are the output.
            let (actuator, _record) = sim_actuator(config, clock)?;
            log::info!("actuator: simulated servos ({} servos, {} bins)", config.servos.len(), config.bins.len());
            Ok(Box::new(actuator))
        }
    }
}

fn warn_about_coverage(policy: &DecisionPolicy, class_names: &[String]) {
    let (unmapped, unknown) = policy.coverage(class_names);
    if !unmapped.is_empty() {
        log::warn!(
            "model classes without a bin in [decision.classes] (they go to {}): {}",
            policy.fallback_bin,
            unmapped.join(", ")
        );
    }
    if !unknown.is_empty() {
        log::warn!("[decision.classes] names classes the model does not have: {}", unknown.join(", "));
    }
}
