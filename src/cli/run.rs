//! `smartbin run`: the sorter, from config to summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use anyhow::Context;

use crate::actuation::{
    pca9685_actuator, rppal_actuator, rppal_soft_actuator, sim_actuator, sysfs_actuator, Actuator, SYSFS_PWM_ROOT,
};
use crate::clock::{Clock, SimClock, SystemClock};
use crate::config::{ActuationConfig, ActuatorBackend, Config};
use crate::decision::DecisionPolicy;
use crate::decision::fill::FillMonitor;
use crate::model::Classifier;
use crate::service::{install_reload_signal, spawn_watchdog, BeatingClock, BeatingSource, ServiceHooks};
use crate::sorter::frames::FrameStore;
use crate::sorter::{install_stop_signals, EventLog, Sorter, Summary};
use crate::source::Trigger;
use crate::source::{open_configured, parse_source_spec};

/// Where `run` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "firmware-config/smartbin.toml";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file [default: firmware-config/smartbin.toml, or built-in defaults
    /// when that file does not exist]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Frame source, overriding [source] spec (e.g. images:samples, camera:0)
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
    let mut config = load_config(&args)?;
    let signals = Signals::install()?;
    let service = ServiceHooks::default();
    // Every wait in the loop sleeps through this clock, so waiting counts as
    // alive for the watchdog while a hung read or move does not.
    let clock: Arc<dyn Clock> = Arc::new(BeatingClock::new(Arc::new(SystemClock), service.heartbeat.clone()));
    let _watchdog = spawn_watchdog(service.notifier.clone(), service.heartbeat.clone());

    let mut bin = Bin::build(&config, &args, clock.clone(), &service, &signals)?;
    let mut total = Summary::default();
    loop {
        let summary = bin.sort(&config, &args, &total, clock.clone(), &service, &signals)?;
        total.add(&summary);
        if !signals.reload_requested() {
            break;
        }
        service.notifier.reloading();
        signals.clear_reload();
        match load_config(&args) {
            Ok(new) => {
                log::info!("SIGHUP: config reloaded; restarting the camera, model and servos with it");
                // The old camera and PWM channels must be released before the
                // new ones open the same devices.
                drop(bin);
                bin = match Bin::build(&new, &args, clock.clone(), &service, &signals) {
                    Ok(rebuilt) => {
                        config = new;
                        rebuilt
                    }
                    Err(e) => {
                        log::error!("SIGHUP: the new config failed to start, going back to the old one: {e:#}");
                        Bin::build(&config, &args, clock.clone(), &service, &signals)?
                    }
                };
            }
            Err(e) => log::error!("SIGHUP: new config refused, still running the old one: {e:#}"),
        }
    }
    service.notifier.stopping();
    println!("{total}");
    Ok(ExitCode::SUCCESS)
}

/// The signal flags. `interrupt` is what the loop, the trigger and the camera
/// wait on; `stop` (SIGINT/SIGTERM) and `reload` (SIGHUP) say why it was raised.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let signals = Signals {
            stop: Arc::default(),
            reload: Arc::default(),
            interrupt: Arc::default(),
        };
        install_stop_signals(&signals.stop).context("installing SIGINT/SIGTERM handlers")?;
        install_reload_signal(&signals.reload).context("installing the SIGHUP handler")?;
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::flag::register(signal, Arc::clone(&signals.interrupt))
                .context("installing signal handlers")?;
        }
        Ok(signals)
    }

    fn reload_requested(&self) -> bool {
        self.reload.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst)
    }

    fn clear_reload(&self) {
        self.reload.store(false, Ordering::SeqCst);
        self.interrupt.store(false, Ordering::SeqCst);
    }
}

/// Everything a config builds. Kept as it is when a reloaded config is refused.
struct Bin {
    trigger: Box<dyn Trigger>,
    classifier: Box<dyn Classifier>,
    actuator: Box<dyn Actuator>,
    fill: Option<FillMonitor>,
    policy: DecisionPolicy,
    _button: Option<ButtonThread>,
}

/// The wrong-bin button's reader; stopped when the bin is rebuilt or ends.
struct ButtonThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ButtonThread {
    fn start(config: &Config) -> anyhow::Result<Option<ButtonThread>> {
        let c = &config.calibration;
        let Some(pin) = c.wrong_button else { return Ok(None) };
        let Some(frames) = config.log.frames.clone() else {
            anyhow::bail!("[calibration] wrong_button needs [log] frames: a press files the item's kept frame");
        };
        let input = super::inputs::open_input(pin, c.wrong_button_pull, "[calibration] wrong_button")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = crate::calibration::button::watch(
            input,
            c.wrong_button_active,
            std::time::Duration::from_millis(50),
            config.log.events.clone(),
            frames,
            c.dataset.clone(),
            stop.clone(),
        );
        log::info!("wrong-bin button on GPIO {pin}");
        Ok(Some(ButtonThread { stop, thread: Some(thread) }))
    }
}

impl Drop for ButtonThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Bin {
    fn build(
        config: &Config,
        args: &RunArgs,
        clock: Arc<dyn Clock>,
        service: &ServiceHooks,
        signals: &Signals,
    ) -> anyhow::Result<Bin> {
        let interrupt = signals.interrupt.clone();
        let spec = parse_source_spec(&config.source.spec)?;
        let source = open_configured(&spec, &config.source, clock.clone(), interrupt.clone()).with_context(|| {
            format!("frame source `{spec}`: set [source] spec in the config or pass --source images:DIR or camera:N")
        })?;
        let source = Box::new(BeatingSource::new(source, service.heartbeat.clone()));
        let trigger = super::inputs::build_trigger(config, &spec, source, clock.clone(), interrupt.clone())?;

        let classifier = crate::model::load_classifier(&config.model.path, &config.model.device).with_context(|| {
            format!(
                "loading model {} (set [model] path in the config or pass --model)",
                config.model.path.display()
            )
        })?;
        let policy = DecisionPolicy::from_config(&config.decision);
        warn_about_coverage(&policy, classifier.class_names());

        let actuator = build_actuator(&config.actuation, clock.clone(), args.realtime)?;
        let actuator = super::inputs::with_interlock(actuator, &config.interlock, clock.clone(), interrupt)?;
        let fill = super::inputs::build_fill(config, clock)?;
        let button = ButtonThread::start(config)?;
        Ok(Bin { trigger, classifier, actuator, fill, policy, _button: button })
    }

    /// Sorts until the source ends, `--max-items` is reached or a signal comes.
    fn sort(
        &mut self,
        config: &Config,
        args: &RunArgs,
        done: &Summary,
        clock: Arc<dyn Clock>,
        service: &ServiceHooks,
        signals: &Signals,
    ) -> anyhow::Result<Summary> {
        let events = EventLog::open(&config.log.events)?;
        log::info!("event log: {} (next id {})", events.path().display(), events.next_id());
        let handled = done.items + done.bad_frames;
        Sorter::new(
            self.trigger.as_mut(),
            self.classifier.as_mut(),
            self.actuator.as_mut(),
            self.policy.clone(),
            events,
            clock,
        )
        .with_stop_flag(signals.interrupt.clone())
        .with_max_items(args.max_items.map(|max| max.saturating_sub(handled)))
        .with_fill(self.fill.as_mut())
        .with_frames(config.log.frames.as_deref().map(|dir| FrameStore::new(dir, config.log.keep_frames as usize)))
        .with_service(service.clone())
        .run()
    }
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
        // Real servos move in real time, whatever --realtime says.
        ActuatorBackend::Rppal => {
            let actuator = rppal_actuator(config, clock).context("starting Raspberry Pi hardware PWM")?;
            log::info!("actuator: Raspberry Pi hardware PWM ({} servos)", config.servos.len());
            Ok(Box::new(actuator))
        }
        ActuatorBackend::RppalSoft => {
            let actuator = rppal_soft_actuator(config, clock).context("starting Raspberry Pi software PWM")?;
            log::info!("actuator: Raspberry Pi software PWM ({} servos)", config.servos.len());
            Ok(Box::new(actuator))
        }
        ActuatorBackend::Pca9685 => {
            let actuator = pca9685_actuator(config, clock).context("starting the PCA9685 servo board")?;
            log::info!("actuator: PCA9685 ({} servos)", config.servos.len());
            Ok(Box::new(actuator))
        }
        ActuatorBackend::Sysfs => {
            let actuator = sysfs_actuator(config, Path::new(SYSFS_PWM_ROOT), clock)
                .context("starting Linux sysfs PWM")?;
            log::info!("actuator: sysfs PWM chip {} ({} servos)", config.sysfs.chip, config.servos.len());
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
