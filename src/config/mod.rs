//! The bin's TOML configuration (`firmware-config/smartbin.toml`).
//!
//! Every key has a default, so an empty file is a valid config describing the
//! standard bin: a chute servo that turns over four bins and a flap servo that tips
//! the tray. Loading rejects unknown keys, wrong types and unsafe or inconsistent
//! values with an error naming the key, its line in the file and what is allowed:
//! a typo in a servo limit must stop the bin at start-up, not bend a chute.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::trigger::{TriggerMode, MAX_GPIO_PIN};

/// Shortest and longest servo pulse accepted anywhere, in µs. Hobby servos are
/// specified between these; beyond them many hit their end stops.
pub const PULSE_LIMITS_US: (u16, u16) = (500, 2500);
/// Most frames averaged for one item.
pub const MAX_FRAMES_PER_ITEM: u32 = 16;
/// Longest settle or dwell time accepted, in ms: more is surely a typo.
pub const MAX_WAIT_MS: u64 = 10_000;
/// Servo slew rates accepted, in degrees per second: slower would take minutes
/// per item; faster than 3600 (72° per 20 ms) is a jump anyway.
pub const SLEW_LIMITS_DEG_PER_S: (f32, f32) = (1.0, 3600.0);
/// PCA9685 internal oscillators accepted, in Hz (nominal 25 MHz).
pub const PCA9685_OSCILLATOR_HZ: (u32, u32) = (20_000_000, 30_000_000);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub source: SourceConfig,
    pub trigger: TriggerConfig,
    pub decision: DecisionConfig,
    pub actuation: ActuationConfig,
    pub fill: FillConfig,
    pub interlock: InterlockConfig,
    pub log: LogConfig,
    pub calibration: CalibrationConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Checkpoint file; a relative path is relative to the current directory.
    pub path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `images:DIR` or `camera:ARG` (see [`crate::source::parse_source_spec`]).
    pub spec: String,
    /// Replay the folder again after the last file.
    #[serde(rename = "loop")]
    pub looped: bool,
    /// Frames per second at most; unset = as fast as the loop runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
    /// `[source.camera]`: format, size and rate asked of a `camera:` source.
    pub camera: crate::source::CameraConfig,
    /// The tray's rectangle in the frames, `[x, y, width, height]` in pixels
    /// (`smartbin calibrate camera` finds it). Frames are cropped to it before
    /// the trigger and the model see them. Unset = the whole frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<[u32; 4]>,
    /// Picture of the empty tray from `smartbin calibrate camera`. The first
    /// frame of a run is compared with it, and a moved camera or tray, changed
    /// light or a dirty lens is reported. Unset = no check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Frames averaged per item (camera sources; an image replay uses one per file).
    pub frames_per_item: u32,
    /// Below this top-class probability the item goes to `fallback_bin`.
    pub threshold: f32,
    pub fallback_bin: String,
    /// Class name -> bin name. Replaces the whole default mapping when given.
    pub classes: BTreeMap<String, String>,
}

/// What drives the servos. A servo's `channel` means what the backend calls a
/// channel (see each variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ActuatorBackend {
    /// Simulated PWM channels that only log what they would send.
    Sim,
    /// Raspberry Pi hardware PWM; channel = PWM channel (0, 1; 0..=3 on a Pi 5).
    Rppal,
    /// Raspberry Pi software PWM on any GPIO; channel = BCM GPIO number.
    RppalSoft,
    /// PCA9685 16-channel I2C board; channel = board channel 0..=15.
    Pca9685,
    /// Linux sysfs PWM (/sys/class/pwm), e.g. a Jetson; channel = pwmM of the chip.
    Sysfs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActuationConfig {
    pub backend: ActuatorBackend,
    /// Time a servo gets to reach a commanded angle before the next move.
    pub settle_ms: u64,
    pub rppal: RppalConfig,
    pub pca9685: Pca9685Config,
    pub sysfs: SysfsConfig,
    pub servos: Vec<ServoConfig>,
    pub bins: Vec<BinConfig>,
}

/// `[actuation.rppal]`: Raspberry Pi hardware PWM.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RppalConfig {
    /// pwmchip number; unset = rppal picks it by Pi model (pwmchip0 on a Pi 4
    /// and older, pwmchip2 on a Pi 5). Set it when a kernel numbers them otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip: Option<u8>,
}

/// `[actuation.pca9685]`: the I2C servo board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pca9685Config {
    /// I2C bus: /dev/i2c-N.
    pub bus: u8,
    /// 7-bit board address, set by its A0..A5 jumpers.
    pub address: u8,
    /// The board's oscillator. Nominally 25 MHz, but chips run from about 23 to
    /// 27 MHz; measuring it keeps pulse widths (and so the limits) exact.
    pub oscillator_hz: u32,
}

/// `[actuation.sysfs]`: generic Linux PWM.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysfsConfig {
    /// N of /sys/class/pwm/pwmchipN.
    pub chip: u32,
}

/// One servo. Pulses are linear in angle between (`min_angle`, `min_us`) and
/// (`max_angle`, `max_us`); angles outside are clamped, so these are also its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServoConfig {
    pub name: String,
    /// PWM channel on the controller board.
    pub channel: u8,
    pub min_us: u16,
    pub max_us: u16,
    pub min_angle: f32,
    pub max_angle: f32,
    /// Rest angle, between items and at shutdown.
    pub home: f32,
    /// Top speed in degrees per second: moves are ramped, one step per 20 ms.
    /// Unset = jump straight to each angle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slew_deg_per_s: Option<f32>,
    /// Stop the pulses once a move has settled, so an idle servo neither jitters
    /// nor heats. Leave false for a servo that must hold a load.
    #[serde(default)]
    pub detach: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinConfig {
    pub name: String,
    /// Applied in order; afterwards the servos used return home in reverse order.
    pub poses: Vec<Pose>,
    /// Time for the item to fall once the last pose is reached.
    #[serde(default = "default_dwell_ms")]
    pub dwell_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pose {
    pub servo: String,
    pub angle: f32,
}

/// `[trigger]`: when an item is on the tray (see [`crate::source::trigger`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    pub mode: TriggerMode,
    /// motion: picture of the empty tray; unset = learned at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<PathBuf>,
    /// motion: still frames averaged into the learned background.
    pub learn_frames: u32,
    /// motion: how far the background moves towards each empty frame (0..=1).
    pub background_rate: f32,
    /// motion: grey levels (0..255) a thumbnail pixel must change by to count.
    pub pixel_threshold: f32,
    /// motion: share of the tray that must differ from the background.
    pub presence_fraction: f32,
    /// motion: frames the difference must last (N); also the empty frames that re-arm.
    pub present_frames: u32,
    /// motion: share of the tray that may change between frames of a still picture.
    pub still_fraction: f32,
    /// motion: still frames before the item is taken (M).
    pub still_frames: u32,
    /// Something unsettled, or an item not gone after its sort, is reported after this.
    pub timeout_s: f64,
    /// gpio: a level must hold this long to count.
    pub debounce_ms: u64,
    /// gpio: wait after the beam breaks before the first frame (the hand leaves).
    pub delay_ms: u64,
    /// gpio: the level the input reads while an item is there.
    pub active: Level,
    pub pull: Pull,
}

/// A GPIO level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    High,
}

/// The Pi's built-in resistor on a GPIO input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    Up,
    Down,
    Off,
}

/// `[fill]`: how full each bin is. Empty = not watched.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FillConfig {
    /// Where items for a full bin go; unset = they wait until it is emptied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow_bin: Option<String>,
    /// Bin -> items it holds; the count since the last `smartbin bins reset`.
    pub capacity: BTreeMap<String, u32>,
    /// HC-SR04 ultrasonic sensors looking down into bins.
    pub sensors: Vec<FillSensorConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillSensorConfig {
    pub bin: String,
    /// BCM GPIO numbers.
    pub trigger_pin: u8,
    pub echo_pin: u8,
    /// The bin is full when the rubbish is closer than this to the sensor.
    pub full_cm: f32,
}

/// `[interlock]`: a lid or hand switch; no servo moves while it is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterlockConfig {
    /// BCM GPIO number; unset = no interlock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<u8>,
    /// The level the input reads while the lid is open.
    pub active: Level,
    pub pull: Pull,
    /// The lid must read closed this long before servos move.
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON-lines event log, one line per item; appended to across runs.
    pub events: PathBuf,
    /// Folder where each item's first frame is kept as `<event id>.jpg`, so a
    /// wrong decision can be corrected later (`smartbin correct`). Unset = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<PathBuf>,
    /// Frames kept in `frames`; the oldest go first.
    pub keep_frames: u32,
}

/// `[calibration]`: `smartbin calibrate model` and `smartbin correct`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// This bin's labelled photos, one folder per class: guided captures and
    /// corrected items. `calibrate model` learns from them.
    pub dataset: PathBuf,
    /// Share of items allowed into a wrong bin; `calibrate model` suggests the
    /// `[decision] threshold` that keeps to it on the held-out captures.
    pub wrong_bin_target: f32,
    /// BCM GPIO of a "last item went to the wrong bin" push button; a press
    /// files that item's kept frame for labelling. Unset = no button.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_button: Option<u8>,
    /// The level the button's pin reads while pressed.
    pub wrong_button_active: Level,
    pub wrong_button_pull: Pull,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        // A button to ground with the pull-up.
        CalibrationConfig {
            dataset: PathBuf::from("captures"),
            wrong_bin_target: 0.05,
            wrong_button: None,
            wrong_button_active: Level::Low,
            wrong_button_pull: Pull::Up,
        }
    }
}

fn default_dwell_ms() -> u64 {
    800
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::from(crate::model::DEFAULT_MODEL_PATH),
            device: "cpu".into(),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            spec: "images:samples".into(),
            looped: false,
            rate_hz: None,
            camera: crate::source::CameraConfig::default(),
            roi: None,
            reference: None,
        }
    }
}

impl Default for DecisionConfig {
    fn default() -> Self {
        let classes = [
            ("cardboard", "paper"),
            ("glass", "glass"),
            ("metal", "containers"),
            ("paper", "paper"),
            ("plastic", "containers"),
            ("trash", "landfill"),
        ];
        DecisionConfig {
            frames_per_item: 1,
            threshold: 0.5,
            fallback_bin: "landfill".into(),
            classes: classes.iter().map(|(c, b)| (c.to_string(), b.to_string())).collect(),
        }
    }
}

impl Default for ActuationConfig {
    /// The standard bin: four bins on a half circle, 45° each, under a chute on a
    /// 180° servo; a flap on a 90° servo tips the tray into the chute.
    fn default() -> Self {
        let servo = |name: &str, channel, min_us, max_us, max_angle, home| ServoConfig {
            name: name.into(),
            channel,
            min_us,
            max_us,
            min_angle: 0.0,
            max_angle,
            home,
            slew_deg_per_s: None,
            detach: false,
        };
        let bin = |name: &str, chute_angle| BinConfig {
            name: name.into(),
            poses: vec![
                Pose { servo: "chute".into(), angle: chute_angle },
                Pose { servo: "flap".into(), angle: 60.0 },
            ],
            dwell_ms: default_dwell_ms(),
        };
        ActuationConfig {
            backend: ActuatorBackend::Sim,
            settle_ms: 400,
            rppal: RppalConfig::default(),
            pca9685: Pca9685Config::default(),
            sysfs: SysfsConfig::default(),
            servos: vec![
                servo("chute", 0, 500, 2500, 180.0, 90.0),
                servo("flap", 1, 1000, 2000, 90.0, 0.0),
            ],
            bins: vec![
                bin("paper", 22.5),
                bin("glass", 67.5),
                bin("containers", 112.5),
                bin("landfill", 157.5),
            ],
        }
    }
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            mode: TriggerMode::Auto,
            background: None,
            learn_frames: 10,
            background_rate: 0.05,
            pixel_threshold: 25.0,
            presence_fraction: 0.005,
            present_frames: 3,
            still_fraction: 0.002,
            still_frames: 6,
            timeout_s: 30.0,
            debounce_ms: 50,
            delay_ms: 500,
            active: Level::Low,
            pull: Pull::Up,
        }
    }
}

impl Default for InterlockConfig {
    /// A switch to ground with the pull-up: a cut wire reads open, so it fails safe.
    fn default() -> Self {
        InterlockConfig { pin: None, active: Level::High, pull: Pull::Up, debounce_ms: 100 }
    }
}

impl Default for Pca9685Config {
    fn default() -> Self {
        Pca9685Config { bus: 1, address: 0x40, oscillator_hz: 25_000_000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { events: PathBuf::from("events.jsonl"), frames: None, keep_frames: 2000 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelConfig::default(),
            source: SourceConfig::default(),
            trigger: TriggerConfig::default(),
            decision: DecisionConfig::default(),
            actuation: ActuationConfig::default(),
            fill: FillConfig::default(),
            interlock: InterlockConfig::default(),
            log: LogConfig::default(),
            calibration: CalibrationConfig::default(),
        }
    }
}

/// Why a config could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{origin} line {line}{}: {message}", key_suffix(key))]
    Parse { origin: String, line: usize, key: Option<String>, message: String },
    /// Well-formed but unusable: out of range, or naming a bin or servo that does
    /// not exist. `line` is `None` when the value is not written in the file (a
    /// built-in default) or did not come from a file.
    #[error("{origin}{}: {key}: {message}", line_text(line))]
    Invalid { origin: String, key: String, line: Option<usize>, message: String },
    #[error("cannot write config {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot serialise config: {0}")]
    Serialize(#[from] toml::ser::Error),
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!(", key {k}")).unwrap_or_default()
}

fn line_text(line: &Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

impl ConfigError {
    /// The 1-based line the error points at, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Parse { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        match config.problems().into_iter().next() {
            None => Ok(config),
            Some(p) => {
                let line = line_of(text, &p.key);
                let origin = match line {
                    Some(_) => origin.to_string(),
                    None => format!("{origin} (built-in default, not written in the file)"),
                };
                Err(ConfigError::Invalid { origin, line, key: key_string(&p.key), message: p.message })
            }
        }
    }

    /// Checks a config built or changed in code (e.g. by command-line overrides).
    /// Errors carry no line number.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(p) => Err(ConfigError::Invalid {
                origin: "configuration".into(),
                line: None,
                key: key_string(&p.key),
                message: p.message,
            }),
        }
    }

    /// Writes the config as TOML, atomically (a crash leaves the old file intact).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)?;
        crate::util::write_atomic(path, text.as_bytes())
            .map_err(|source| ConfigError::Write { path: path.to_path_buf(), source })
    }

    /// Every rule broken, in file order as far as possible.
    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        check_model(&self.model, &mut out);
        check_source(&self.source, &mut out);
        check_servos(&self.actuation, &mut out);
        check_backend(&self.actuation, &mut out);
        check_bins(&self.actuation, &mut out);
        check_decision(&self.decision, &self.actuation, &mut out);
        check_trigger(&self.trigger, &mut out);
        check_fill(&self.fill, &self.actuation, &mut out);
        check_interlock(&self.interlock, &mut out);
        check_pins(self, &mut out);
        if self.log.events.as_os_str().is_empty() {
            out.push(Problem::new(&["log", "events"], "is empty; allowed: a file path"));
        }
        if self.log.keep_frames == 0 {
            out.push(Problem::new(&["log", "keep_frames"], "0 keeps nothing; allowed: 1 or more (leave `frames` out to save none)"));
        }
        if self.calibration.wrong_button.is_some() && self.log.frames.is_none() {
            out.push(Problem::new(
                &["calibration", "wrong_button"],
                "needs [log] frames: a press files the item's kept frame; allowed: set [log] frames too",
            ));
        }
        let target = self.calibration.wrong_bin_target;
        if !(0.0..=1.0).contains(&target) {
            out.push(Problem::new(&["calibration", "wrong_bin_target"], format!("{target} is not allowed; allowed: 0..=1")));
        }
        out
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path(keys: &[&str]) -> Vec<Seg> {
    keys.iter().map(|k| Seg::Key(k.to_string())).collect()
}

fn key_string(key: &[Seg]) -> String {
    let mut s = String::new();
    for seg in key {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

struct Problem {
    key: Vec<Seg>,
    message: String,
}

impl Problem {
    fn new(keys: &[&str], message: impl fmt::Display) -> Self {
        Problem { key: path(keys), message: message.to_string() }
    }
    fn at(key: Vec<Seg>, message: impl fmt::Display) -> Self {
        Problem { key, message: message.to_string() }
    }
}

fn check_model(model: &ModelConfig, out: &mut Vec<Problem>) {
    if model.path.as_os_str().is_empty() {
        out.push(Problem::new(&["model", "path"], "is empty; allowed: a checkpoint file path"));
    }
    let device_ok = match model.device.as_str() {
        "cpu" | "cuda" => true,
        d => d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()),
    };
    if !device_ok {
        out.push(Problem::new(
            &["model", "device"],
            format!("`{}` is not a device; allowed: cpu, cuda, cuda:N", model.device),
        ));
    }
}

fn check_source(source: &SourceConfig, out: &mut Vec<Problem>) {
    if let Err(e) = crate::source::parse_source_spec(&source.spec) {
        out.push(Problem::new(&["source", "spec"], e));
    }
    if let Some(rate) = source.rate_hz {
        if !(rate.is_finite() && rate > 0.0) {
            out.push(Problem::new(
                &["source", "rate_hz"],
                format!("{rate} is not allowed; allowed: a number > 0 (or leave it out)"),
            ));
        }
    }
    for (key, message) in source.camera.problems() {
        out.push(Problem::new(&["source", "camera", key], message));
    }
    if let Some([_, _, width, height]) = source.roi {
        if width == 0 || height == 0 {
            out.push(Problem::new(
                &["source", "roi"],
                format!("{width}x{height} is empty; allowed: [x, y, width, height] with width and height > 0"),
            ));
        }
    }
}

fn check_servos(actuation: &ActuationConfig, out: &mut Vec<Problem>) {
    if actuation.settle_ms > MAX_WAIT_MS {
        out.push(Problem::new(
            &["actuation", "settle_ms"],
            format!("{} is too long; allowed: 0..={MAX_WAIT_MS}", actuation.settle_ms),
        ));
    }
    if actuation.servos.is_empty() {
        out.push(Problem::new(&["actuation", "servos"], "no servos; allowed: at least one"));
    }
    let (lo, hi) = PULSE_LIMITS_US;
    let mut names = BTreeSet::new();
    let mut channels = BTreeSet::new();
    for (i, s) in actuation.servos.iter().enumerate() {
        let key = |field: &str| {
            vec![Seg::Key("actuation".into()), Seg::Key("servos".into()), Seg::Index(i), Seg::Key(field.into())]
        };
        if s.name.trim().is_empty() {
            out.push(Problem::at(key("name"), "is empty; allowed: a servo name"));
        } else if !names.insert(s.name.as_str()) {
            out.push(Problem::at(key("name"), format!("servo `{}` is defined twice", s.name)));
        }
        if !channels.insert(s.channel) {
            out.push(Problem::at(key("channel"), format!("channel {} is used by two servos", s.channel)));
        } else if let Some(message) = channel_problem(actuation, s.channel) {
            out.push(Problem::at(key("channel"), message));
        }
        if let Some(rate) = s.slew_deg_per_s {
            let (slow, fast) = SLEW_LIMITS_DEG_PER_S;
            if !(slow..=fast).contains(&rate) {
                out.push(Problem::at(
                    key("slew_deg_per_s"),
                    format!("{rate} is out of range; allowed: {slow}..={fast} (or leave it out to jump)"),
                ));
            }
        }
        for (field, us) in [("min_us", s.min_us), ("max_us", s.max_us)] {
            if !(lo..=hi).contains(&us) {
                out.push(Problem::at(key(field), format!("{us} µs is out of range; allowed: {lo}..={hi}")));
            }
        }
        if s.min_us >= s.max_us {
            out.push(Problem::at(
                key("min_us"),
                format!("min_us {} must be below max_us {}", s.min_us, s.max_us),
            ));
        }
        if !(s.min_angle.is_finite() && s.max_angle.is_finite() && s.min_angle < s.max_angle) {
            out.push(Problem::at(
                key("min_angle"),
                format!("min_angle {} must be below max_angle {}", s.min_angle, s.max_angle),
            ));
        } else if !(s.min_angle..=s.max_angle).contains(&s.home) {
            out.push(Problem::at(
                key("home"),
                format!("{}° is outside the servo; allowed: {}..={}", s.home, s.min_angle, s.max_angle),
            ));
        }
    }
}

/// Why `channel` cannot exist on the configured backend, if it cannot.
fn channel_problem(actuation: &ActuationConfig, channel: u8) -> Option<String> {
    let (allowed, what) = match actuation.backend {
        ActuatorBackend::Pca9685 => (0..=15, "a PCA9685 board channel"),
        // A pwmchip named in [actuation.rppal] may have more channels.
        ActuatorBackend::Rppal if actuation.rppal.chip.is_none() => {
            (0..=3, "a Raspberry Pi PWM channel (0 and 1; 0..=3 on a Pi 5)")
        }
        // GPIO 0 and 1 belong to the HAT ID EEPROM.
        ActuatorBackend::RppalSoft => (2..=27, "a BCM GPIO number on the 40-pin header"),
        _ => return None,
    };
    (!allowed.contains(&channel)).then(|| {
        format!(
            "{channel} is not {what}; allowed: {}..={}",
            allowed.start(),
            allowed.end()
        )
    })
}

fn check_backend(actuation: &ActuationConfig, out: &mut Vec<Problem>) {
    let pca = &actuation.pca9685;
    // Jumpers A0..A5 give 0x40..=0x7f; 0x70 is every board's all-call address.
    if !(0x40..=0x7f).contains(&pca.address) || pca.address == 0x70 {
        out.push(Problem::new(
            &["actuation", "pca9685", "address"],
            format!("0x{:02x} is not a PCA9685 address; allowed: 0x40..=0x7f except 0x70", pca.address),
        ));
    }
    let (low, high) = PCA9685_OSCILLATOR_HZ;
    if !(low..=high).contains(&pca.oscillator_hz) {
        out.push(Problem::new(
            &["actuation", "pca9685", "oscillator_hz"],
            format!("{} is out of range; allowed: {low}..={high}", pca.oscillator_hz),
        ));
    }
}

fn check_bins(actuation: &ActuationConfig, out: &mut Vec<Problem>) {
    if actuation.bins.is_empty() {
        out.push(Problem::new(&["actuation", "bins"], "no bins; allowed: at least one"));
    }
    let servo_names: Vec<&str> = actuation.servos.iter().map(|s| s.name.as_str()).collect();
    let mut names = BTreeSet::new();
    for (i, bin) in actuation.bins.iter().enumerate() {
        let key = |rest: &[Seg]| {
            let mut k = vec![Seg::Key("actuation".into()), Seg::Key("bins".into()), Seg::Index(i)];
            k.extend_from_slice(rest);
            k
        };
        let field = |f: &str| key(&[Seg::Key(f.into())]);
        if bin.name.trim().is_empty() {
            out.push(Problem::at(field("name"), "is empty; allowed: a bin name"));
        } else if !names.insert(bin.name.as_str()) {
            out.push(Problem::at(field("name"), format!("bin `{}` is defined twice", bin.name)));
        }
        if bin.poses.is_empty() {
            out.push(Problem::at(field("poses"), "no poses; allowed: at least one {servo, angle}"));
        }
        if bin.dwell_ms > MAX_WAIT_MS {
            out.push(Problem::at(
                field("dwell_ms"),
                format!("{} is too long; allowed: 0..={MAX_WAIT_MS}", bin.dwell_ms),
            ));
        }
        for (j, pose) in bin.poses.iter().enumerate() {
            let pose_key = |f: &str| key(&[Seg::Key("poses".into()), Seg::Index(j), Seg::Key(f.into())]);
            let Some(servo) = actuation.servos.iter().find(|s| s.name == pose.servo) else {
                out.push(Problem::at(
                    pose_key("servo"),
                    format!("no servo named `{}`; allowed: {}", pose.servo, servo_names.join(", ")),
                ));
                continue;
            };
            if !(servo.min_angle..=servo.max_angle).contains(&pose.angle) {
                out.push(Problem::at(
                    pose_key("angle"),
                    format!(
                        "{}° is beyond servo {}; allowed: {}..={}",
                        pose.angle, servo.name, servo.min_angle, servo.max_angle
                    ),
                ));
            }
        }
    }
}

fn check_decision(decision: &DecisionConfig, actuation: &ActuationConfig, out: &mut Vec<Problem>) {
    if !(1..=MAX_FRAMES_PER_ITEM).contains(&decision.frames_per_item) {
        out.push(Problem::new(
            &["decision", "frames_per_item"],
            format!("{} is out of range; allowed: 1..={MAX_FRAMES_PER_ITEM}", decision.frames_per_item),
        ));
    }
    if !(0.0..=1.0).contains(&decision.threshold) {
        out.push(Problem::new(
            &["decision", "threshold"],
            format!("{} is out of range; allowed: 0.0..=1.0", decision.threshold),
        ));
    }
    let bins: Vec<&str> = actuation.bins.iter().map(|b| b.name.as_str()).collect();
    let allowed = bins.join(", ");
    if !bins.contains(&decision.fallback_bin.as_str()) {
        out.push(Problem::new(
            &["decision", "fallback_bin"],
            format!("no bin named `{}`; allowed: {allowed}", decision.fallback_bin),
        ));
    }
    for (class, bin) in &decision.classes {
        if !bins.contains(&bin.as_str()) {
            out.push(Problem::new(
                &["decision", "classes", class],
                format!("no bin named `{bin}`; allowed: {allowed}"),
            ));
        }
    }
}

/// Adds "VALUE is out of range; allowed: ALLOWED" for `keys` unless `ok`.
fn check_range(out: &mut Vec<Problem>, keys: &[&str], value: impl fmt::Display, ok: bool, allowed: &str) {
    if !ok {
        out.push(Problem::new(keys, format!("{value} is out of range; allowed: {allowed}")));
    }
}

/// Longest wait accepted for a timeout, in seconds (a day).
const MAX_TIMEOUT_S: f64 = 86_400.0;
/// An HC-SR04 measures up to about 4 m.
const MAX_FULL_CM: f32 = 400.0;

fn check_trigger(t: &TriggerConfig, out: &mut Vec<Problem>) {
    let key = |k: &'static str| ["trigger", k];
    if t.background.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        out.push(Problem::new(&key("background"), "is empty; allowed: a picture file (or leave it out)"));
    }
    check_range(out, &key("learn_frames"), t.learn_frames, (1..=1000).contains(&t.learn_frames), "1..=1000");
    check_range(out, &key("background_rate"), t.background_rate, (0.0..=1.0).contains(&t.background_rate), "0.0..=1.0");
    let thr = t.pixel_threshold;
    check_range(out, &key("pixel_threshold"), thr, thr > 0.0 && thr <= 255.0, "above 0 up to 255");
    let f = t.presence_fraction;
    check_range(out, &key("presence_fraction"), f, f > 0.0 && f < 1.0, "between 0.0 and 1.0");
    let f = t.still_fraction;
    check_range(out, &key("still_fraction"), f, (0.0..1.0).contains(&f), "0.0 up to (not including) 1.0");
    for (k, n) in [("present_frames", t.present_frames), ("still_frames", t.still_frames)] {
        check_range(out, &key(k), n, (1..=1000).contains(&n), "1..=1000");
    }
    let s = t.timeout_s;
    check_range(out, &key("timeout_s"), s, s > 0.0 && s <= MAX_TIMEOUT_S, "above 0 up to 86400");
    for (k, ms) in [("debounce_ms", t.debounce_ms), ("delay_ms", t.delay_ms)] {
        check_range(out, &key(k), ms, ms <= MAX_WAIT_MS, &format!("0..={MAX_WAIT_MS}"));
    }
}

fn check_fill(fill: &FillConfig, actuation: &ActuationConfig, out: &mut Vec<Problem>) {
    let bins: Vec<&str> = actuation.bins.iter().map(|b| b.name.as_str()).collect();
    let allowed = bins.join(", ");
    if let Some(bin) = &fill.overflow_bin {
        if !bins.contains(&bin.as_str()) {
            out.push(Problem::new(&["fill", "overflow_bin"], format!("no bin named `{bin}`; allowed: {allowed}")));
        }
    }
    for (bin, &items) in &fill.capacity {
        let key = ["fill", "capacity", bin.as_str()];
        if !bins.contains(&bin.as_str()) {
            out.push(Problem::new(&key, format!("no bin named `{bin}`; allowed: {allowed}")));
        }
        check_range(out, &key, items, items >= 1, "1 or more items");
    }
    for (i, sensor) in fill.sensors.iter().enumerate() {
        let key = |f: &str| vec![Seg::Key("fill".into()), Seg::Key("sensors".into()), Seg::Index(i), Seg::Key(f.into())];
        if !bins.contains(&sensor.bin.as_str()) {
            out.push(Problem::at(key("bin"), format!("no bin named `{}`; allowed: {allowed}", sensor.bin)));
        }
        if sensor.trigger_pin == sensor.echo_pin {
            out.push(Problem::at(key("echo_pin"), format!("GPIO {} is also the trigger_pin", sensor.echo_pin)));
        }
        let cm = sensor.full_cm;
        if !(cm > 0.0 && cm <= MAX_FULL_CM) {
            out.push(Problem::at(key("full_cm"), format!("{cm} is out of range; allowed: above 0 up to {MAX_FULL_CM}")));
        }
    }
}

fn check_interlock(interlock: &InterlockConfig, out: &mut Vec<Problem>) {
    let ms = interlock.debounce_ms;
    check_range(out, &["interlock", "debounce_ms"], ms, ms <= MAX_WAIT_MS, &format!("0..={MAX_WAIT_MS}"));
}

/// Every GPIO pin is on the header and used once.
fn check_pins(config: &Config, out: &mut Vec<Problem>) {
    let mut pins: Vec<(Vec<Seg>, u8)> = Vec::new();
    if let TriggerMode::Gpio(pin) = config.trigger.mode {
        pins.push((path(&["trigger", "mode"]), pin));
    }
    if let Some(pin) = config.interlock.pin {
        pins.push((path(&["interlock", "pin"]), pin));
    }
    if let Some(pin) = config.calibration.wrong_button {
        pins.push((path(&["calibration", "wrong_button"]), pin));
    }
    for (i, sensor) in config.fill.sensors.iter().enumerate() {
        for (field, pin) in [("trigger_pin", sensor.trigger_pin), ("echo_pin", sensor.echo_pin)] {
            let key = vec![Seg::Key("fill".into()), Seg::Key("sensors".into()), Seg::Index(i), Seg::Key(field.into())];
            pins.push((key, pin));
        }
    }
    for (n, (key, pin)) in pins.iter().enumerate() {
        if *pin > MAX_GPIO_PIN {
            out.push(Problem::at(key.clone(), format!("GPIO {pin} is not on the header; allowed: 0..={MAX_GPIO_PIN} (BCM numbers)")));
        } else if let Some((other, _)) = pins[..n].iter().find(|(_, p)| p == pin) {
            out.push(Problem::at(key.clone(), format!("GPIO {pin} is already used by {}", key_string(other))));
        }
    }
}

// ---- locating keys in the source text -------------------------------------------

/// 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn parse_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    // A syntax error also makes this parse fail; then only the line is known.
    let key = toml_edit::ImDocument::parse(text)
        .ok()
        .and_then(|doc| key_at(&Node::Table(doc.as_table()), offset))
        .map(|k| key_string(&k));
    ConfigError::Parse {
        origin: origin.to_string(),
        line: line_at(text, offset),
        key,
        message: e.message().trim_end().to_string(),
    }
}

/// A position in a parsed document, whatever TOML syntax wrote it: `[table]`,
/// `[[array.of.tables]]`, inline `{ tables }` or `[arrays]`.
enum Node<'a> {
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
    Tables(&'a toml_edit::ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf(Option<Range<usize>>),
}

impl<'a> Node<'a> {
    fn from_item(item: &'a toml_edit::Item) -> Node<'a> {
        match item {
            toml_edit::Item::Table(t) => Node::Table(t),
            toml_edit::Item::ArrayOfTables(a) => Node::Tables(a),
            toml_edit::Item::Value(v) => Node::from_value(v),
            toml_edit::Item::None => Node::Leaf(None),
        }
    }

    fn from_value(value: &'a toml_edit::Value) -> Node<'a> {
        match value {
            toml_edit::Value::InlineTable(t) => Node::Inline(t),
            toml_edit::Value::Array(a) => Node::Array(a),
            other => Node::Leaf(other.span()),
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(t) => t.span(),
            Node::Inline(t) => t.span(),
            Node::Tables(a) => a.span(),
            Node::Array(a) => a.span(),
            Node::Leaf(s) => s.clone(),
        }
    }

    /// The named entry and the span of its key.
    fn entry(&self, name: &str) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let (key, item) = match self {
            Node::Table(t) => t.get_key_value(name)?,
            Node::Inline(t) => t.get_key_value(name)?,
            _ => return None,
        };
        Some((Node::from_item(item), key.span()))
    }

    fn index(&self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Tables(a) => a.get(i).map(Node::Table),
            Node::Array(a) => a.get(i).map(Node::from_value),
            _ => None,
        }
    }

    /// Names of the entries of a table, in file order.
    fn keys(&self) -> Vec<String> {
        match self {
            Node::Table(t) => t.iter().map(|(k, _)| k.to_string()).collect(),
            Node::Inline(t) => t.iter().map(|(k, _)| k.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Node::Tables(a) => a.len(),
            Node::Array(a) => a.len(),
            _ => 0,
        }
    }
}

/// Line of `key` in `text`, or `None` when the key is not written there.
fn line_of(text: &str, key: &[Seg]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut span = None;
    for seg in key {
        match seg {
            Seg::Key(name) => {
                let (child, key_span) = node.entry(name)?;
                span = key_span.or_else(|| child.span());
                node = child;
            }
            Seg::Index(i) => {
                node = node.index(*i)?;
                span = node.span().or(span);
            }
        }
    }
    span.map(|s| line_at(text, s.start))
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset) || (s.is_empty() && s.start == offset))
}

/// The deepest key whose key or value text covers `offset`.
fn key_at(node: &Node, offset: usize) -> Option<Vec<Seg>> {
    for name in node.keys() {
        let (child, key_span) = node.entry(&name)?;
        if contains(key_span, offset) {
            return Some(vec![Seg::Key(name)]);
        }
        if let Some(mut rest) = key_at(&child, offset) {
            rest.insert(0, Seg::Key(name));
            return Some(rest);
        }
        if contains(child.span(), offset) {
            return Some(vec![Seg::Key(name)]);
        }
    }
    for i in 0..node.len() {
        let child = node.index(i)?;
        if let Some(mut rest) = key_at(&child, offset) {
            rest.insert(0, Seg::Index(i));
            return Some(rest);
        }
        if contains(child.span(), offset) {
            return Some(vec![Seg::Index(i)]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> (String, Option<usize>, String) {
        match Config::parse(text, "test.toml") {
            Err(ConfigError::Invalid { key, line, message, .. }) => (key, line, message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn parse_err(text: &str) -> (usize, Option<String>, String) {
        match Config::parse(text, "test.toml") {
            Err(ConfigError::Parse { line, key, message, .. }) => (line, key, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_default_bin() {
        let c = Config::parse("", "empty").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.decision.threshold, 0.5);
        assert_eq!(c.decision.classes["plastic"], "containers");
        assert_eq!(c.decision.classes["cardboard"], "paper");
        let bins: Vec<&str> = c.actuation.bins.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(bins, ["paper", "glass", "containers", "landfill"]);
        let servos: Vec<&str> = c.actuation.servos.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(servos, ["chute", "flap"]);
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config/smartbin.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn the_packaged_config_is_valid_and_names_the_installed_models() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let c = Config::load(&root.join("firmware-config/deb/smartbin.toml")).unwrap();
        let model = c.model.path.strip_prefix("/usr/share/smartbin/").expect("installed model path");
        assert!(root.join(model).exists(), "{} is not shipped", model.display());
        assert_eq!(c.source.spec, "camera:");
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let c = Config::parse(
            "[decision]\nthreshold = 0.8\n[decision.classes]\nplastic = \"landfill\"\n\
             [source]\nspec = \"images:/tmp/x\"\nloop = true\nrate_hz = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.decision.threshold, 0.8);
        // a [decision.classes] table replaces the whole mapping
        assert_eq!(c.decision.classes.len(), 1);
        assert_eq!(c.decision.fallback_bin, "landfill");
        assert!(c.source.looped);
        assert_eq!(c.source.rate_hz, Some(2.0));
        assert_eq!(c.actuation, ActuationConfig::default());
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin.toml");
        let mut c = Config::default();
        c.source.rate_hz = Some(1.5);
        c.actuation.bins[1].dwell_ms = 1200;
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_parse_errors_with_line_and_allowed_keys() {
        let (line, key, msg) = parse_err("[decision]\nthreshold = 0.5\ntreshold = 0.7\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("decision.treshold"));
        assert!(msg.contains("unknown field `treshold`") && msg.contains("`threshold`"), "{msg}");

        let (line, _, msg) = parse_err("\n\n[camera]\nid = 1\n");
        assert_eq!(line, 3);
        assert!(msg.contains("unknown field `camera`"), "{msg}");
    }

    #[test]
    fn wrong_types_are_parse_errors_naming_the_key() {
        let text = "[actuation]\nsettle_ms = 400\n\n[[actuation.servos]]\nname = \"chute\"\n\
                    channel = 0\nmin_us = \"500\"\nmax_us = 2500\nmin_angle = 0\nmax_angle = 180\nhome = 90\n";
        let (line, key, msg) = parse_err(text);
        assert_eq!(line, 7);
        assert_eq!(key.as_deref(), Some("actuation.servos[0].min_us"));
        assert!(msg.contains("invalid type") && msg.contains("u16"), "{msg}");

        let (line, _, msg) = parse_err("[actuation]\nbackend = \"pigpio\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("`sim`") && msg.contains("`rppal-soft`") && msg.contains("`sysfs`"), "{msg}");

        let (line, _, _) = parse_err("[model]\npath = \"a\"\ndevice = \n");
        assert_eq!(line, 3);
        let err = Config::parse("[model]\npath = \"a\"\ndevice = \n", "bin.toml").unwrap_err();
        assert!(err.to_string().starts_with("bin.toml line 3"), "{err}");
    }

    #[test]
    fn threshold_outside_zero_to_one_is_rejected_at_its_line() {
        let (key, line, msg) = invalid("# comment\n[decision]\nthreshold = 1.5\n");
        assert_eq!((key.as_str(), line), ("decision.threshold", Some(3)));
        assert!(msg.contains("0.0..=1.0"), "{msg}");
        let (_, line, _) = invalid("decision.threshold = -0.1\n");
        assert_eq!(line, Some(1));
    }

    const TWO_SERVOS: &str = r#"[actuation]
settle_ms = 300

[[actuation.servos]]
name = "chute"
channel = 0
min_us = 500
max_us = 2500
min_angle = 0
max_angle = 180
home = 90

[[actuation.servos]]
name = "flap"
channel = 1
min_us = 1000
max_us = 2000
min_angle = 0
max_angle = 90
home = 0
"#;

    #[test]
    fn servo_pulse_limits_are_checked() {
        let text = TWO_SERVOS.replace("min_us = 1000", "min_us = 2000");
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.servos[1].min_us", Some(16)));
        assert!(msg.contains("must be below max_us"), "{msg}");

        let text = TWO_SERVOS.replace("max_us = 2500", "max_us = 2600");
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.servos[0].max_us", Some(8)));
        assert!(msg.contains("500..=2500"), "{msg}");

        let text = TWO_SERVOS.replace("home = 0", "home = 95");
        let (key, line, _) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.servos[1].home", Some(20)));
    }

    #[test]
    fn pose_angle_beyond_the_servo_is_rejected() {
        let text = format!(
            "{TWO_SERVOS}\n[[actuation.bins]]\nname = \"paper\"\n\
             poses = [{{ servo = \"chute\", angle = 10 }},\n  {{ servo = \"flap\", angle = 120 }}]\n\
             [[actuation.bins]]\nname = \"landfill\"\nposes = [{{ servo = \"chute\", angle = 170 }}]\n\
             [decision]\nfallback_bin = \"landfill\"\nclasses = {{ paper = \"paper\" }}\n"
        );
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.bins[0].poses[1].angle", Some(25)));
        assert!(msg.contains("servo flap") && msg.contains("0..=90"), "{msg}");
    }

    #[test]
    fn a_pose_naming_a_missing_servo_is_rejected() {
        let text = format!(
            "{TWO_SERVOS}\n[[actuation.bins]]\nname = \"landfill\"\n\n\
             [[actuation.bins.poses]]\nservo = \"door\"\nangle = 10\n"
        );
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.bins[0].poses[0].servo", Some(26)));
        assert!(msg.contains("`door`") && msg.contains("chute, flap"), "{msg}");
    }

    #[test]
    fn mapping_and_fallback_must_name_existing_bins() {
        let (key, line, msg) =
            invalid("[decision]\nthreshold = 0.5\n\n[decision.classes]\nglass = \"glas\"\n");
        assert_eq!((key.as_str(), line), ("decision.classes.glass", Some(5)));
        assert!(msg.contains("`glas`") && msg.contains("containers"), "{msg}");

        let (key, line, _) = invalid("[decision]\nfallback_bin = \"compost\"\n");
        assert_eq!((key.as_str(), line), ("decision.fallback_bin", Some(2)));

        // removing a bin that the default mapping uses: the key is not in the file
        let text = "[[actuation.bins]]\nname = \"landfill\"\n\
                    poses = [{ servo = \"chute\", angle = 157.5 }]\n";
        let (key, line, _) = invalid(text);
        assert_eq!((key.as_str(), line), ("decision.classes.cardboard", None));
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert!(err.to_string().contains("built-in default"), "{err}");
    }

    #[test]
    fn other_rules_name_their_key() {
        let (key, line, msg) = invalid("[source]\nspec = \"rtsp://cam\"\n");
        assert_eq!((key.as_str(), line), ("source.spec", Some(2)));
        assert!(msg.contains("camera:/dev/videoN"), "{msg}");
        let (key, line, msg) = invalid("[source]\nspec = \"camera:0\"\n\n[source.camera]\nwidth = 640\nfps = 0\n");
        assert_eq!((key.as_str(), line), ("source.camera.fps", Some(6)));
        assert!(msg.contains("1..=240"), "{msg}");
        let (line, key, msg) = parse_err("[source.camera]\nformat = \"h264\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("source.camera.format")));
        assert!(msg.contains("`mjpeg`, `yuyv`"), "{msg}");
        let (key, line, _) = invalid("[source]\nrate_hz = 0\n");
        assert_eq!((key.as_str(), line), ("source.rate_hz", Some(2)));
        let (key, _, _) = invalid("[model]\ndevice = \"gpu\"\n");
        assert_eq!(key, "model.device");
        let (key, _, _) = invalid("[decision]\nframes_per_item = 0\n");
        assert_eq!(key, "decision.frames_per_item");
        let (key, line, msg) = invalid(&TWO_SERVOS.replace("channel = 1", "channel = 0"));
        assert_eq!((key.as_str(), line), ("actuation.servos[1].channel", Some(15)));
        assert!(msg.contains("two servos"), "{msg}");
    }

    #[test]
    fn hardware_backends_and_their_tables_parse() {
        let c = Config::parse(
            "[actuation]\nbackend = \"pca9685\"\n[actuation.pca9685]\nbus = 3\naddress = 0x41\n\
             [actuation.rppal]\nchip = 0\n[actuation.sysfs]\nchip = 4\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.actuation.backend, ActuatorBackend::Pca9685);
        assert_eq!(c.actuation.pca9685, Pca9685Config { bus: 3, address: 0x41, oscillator_hz: 25_000_000 });
        assert_eq!(c.actuation.rppal.chip, Some(0));
        assert_eq!(c.actuation.sysfs.chip, 4);
        for (name, backend) in [("rppal", ActuatorBackend::Rppal), ("rppal-soft", ActuatorBackend::RppalSoft)] {
            let c = Config::parse(&format!("[actuation]\nbackend = \"{name}\"\n"), "t");
            // rppal-soft refuses the default channels 0 and 1 (the HAT EEPROM pins)
            match backend {
                ActuatorBackend::Rppal => assert_eq!(c.unwrap().actuation.backend, backend),
                _ => assert!(c.is_err()),
            }
        }
        // clap and serde spell the backends alike
        use clap::ValueEnum;
        for b in ActuatorBackend::value_variants() {
            let name = b.to_possible_value().unwrap().get_name().to_string();
            let text = toml::to_string(&ActuationConfig { backend: *b, ..ActuationConfig::default() }).unwrap();
            assert!(text.contains(&format!("backend = \"{name}\"")), "{text}");
        }
    }

    #[test]
    fn servo_slew_and_detach_default_to_the_old_behaviour() {
        let c = Config::parse(TWO_SERVOS, "t").unwrap();
        assert!(c.actuation.servos.iter().all(|s| s.slew_deg_per_s.is_none() && !s.detach));
        let text = TWO_SERVOS.replace("home = 90\n", "home = 90\nslew_deg_per_s = 120\ndetach = true\n");
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(c.actuation.servos[0].slew_deg_per_s, Some(120.0));
        assert!(c.actuation.servos[0].detach && !c.actuation.servos[1].detach);
    }

    #[test]
    fn new_actuation_keys_are_checked_at_their_line() {
        let text = TWO_SERVOS.replace("home = 0\n", "home = 0\nslew_deg_per_s = 0\n");
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.servos[1].slew_deg_per_s", Some(21)));
        assert!(msg.contains("1..=3600"), "{msg}");

        let text = TWO_SERVOS.replace("settle_ms = 300", "settle_ms = 300\nbackend = \"pca9685\"")
            .replace("channel = 1", "channel = 16");
        let (key, line, msg) = invalid(&text);
        assert_eq!((key.as_str(), line), ("actuation.servos[1].channel", Some(16)));
        assert!(msg.contains("PCA9685") && msg.contains("0..=15"), "{msg}");

        let text = TWO_SERVOS.replace("settle_ms = 300", "settle_ms = 300\nbackend = \"rppal\"")
            .replace("channel = 1", "channel = 4");
        let (key, _, msg) = invalid(&text);
        assert_eq!(key, "actuation.servos[1].channel");
        assert!(msg.contains("0..=3"), "{msg}");
        // a pwmchip named by hand may have more channels
        let text = format!("{text}\n[actuation.rppal]\nchip = 0\n");
        Config::parse(&text, "t").unwrap();

        let (key, line, msg) = invalid("[actuation.pca9685]\nbus = 1\naddress = 0x70\n");
        assert_eq!((key.as_str(), line), ("actuation.pca9685.address", Some(3)));
        assert!(msg.contains("0x70") && msg.contains("0x40..=0x7f"), "{msg}");
        let (key, _, _) = invalid("[actuation.pca9685]\noscillator_hz = 2500000\n");
        assert_eq!(key, "actuation.pca9685.oscillator_hz");

        let (line, key, _) = parse_err("[actuation.sysfs]\nchip = 0\npath = \"/sys\"\n");
        assert_eq!((line, key.as_deref()), (3, Some("actuation.sysfs.path")));
    }

    #[test]
    fn validate_catches_bad_overrides_without_a_line() {
        let mut c = Config::default();
        c.actuation.servos[0].min_us = 100;
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: None, .. }), "{err}");
        assert!(err.to_string().contains("actuation.servos[0].min_us"), "{err}");
    }

    #[test]
    fn trigger_fill_and_interlock_parse() {
        let text = "[trigger]\nmode = \"gpio:17\"\nactive = \"high\"\npull = \"down\"\n\
                    background = \"cal/tray.png\"\n\
                    [fill]\noverflow_bin = \"landfill\"\ncapacity = { glass = 40 }\n\
                    [[fill.sensors]]\nbin = \"paper\"\ntrigger_pin = 23\necho_pin = 24\nfull_cm = 12.5\n\
                    [interlock]\npin = 27\n";
        let c = Config::parse(text, "t").unwrap();
        assert_eq!(c.trigger.mode, TriggerMode::Gpio(17));
        assert_eq!((c.trigger.active, c.trigger.pull), (Level::High, Pull::Down));
        assert_eq!(c.trigger.background, Some(PathBuf::from("cal/tray.png")));
        assert_eq!(c.fill.capacity["glass"], 40);
        assert_eq!(c.fill.sensors[0].echo_pin, 24);
        assert_eq!(c.interlock.pin, Some(27));
        assert_eq!(c.interlock.active, Level::High, "default: open reads high");
        // and they survive a save
        let dir = tempfile::tempdir().unwrap();
        c.save(&dir.path().join("c.toml")).unwrap();
        assert_eq!(Config::load(&dir.path().join("c.toml")).unwrap(), c);
    }

    #[test]
    fn trigger_keys_name_their_line() {
        let (line, key, msg) = parse_err("[trigger]\nmode = \"beam\"\n");
        assert_eq!((line, key.as_deref()), (2, Some("trigger.mode")));
        assert!(msg.contains("gpio:<pin>"), "{msg}");
        let (line, _, msg) = parse_err("[trigger]\n\nmode = \"gpio:31\"\n");
        assert_eq!(line, 3);
        assert!(msg.contains("gpio:0 ..= gpio:27"), "{msg}");
        let (key, line, msg) = invalid("[trigger]\nstill_frames = 2\npresence_fraction = 0\n");
        assert_eq!((key.as_str(), line), ("trigger.presence_fraction", Some(3)));
        assert!(msg.contains("between 0.0 and 1.0"), "{msg}");
        let (key, _, _) = invalid("[trigger]\ntimeout_s = 0\n");
        assert_eq!(key, "trigger.timeout_s");
        let (key, _, _) = invalid("[trigger]\ndebounce_ms = 20000\n");
        assert_eq!(key, "trigger.debounce_ms");
        let (_, _, msg) = parse_err("[trigger]\nactive = \"on\"\n");
        assert!(msg.contains("`low`") && msg.contains("`high`"), "{msg}");
    }

    #[test]
    fn fill_and_pins_are_checked() {
        let (key, line, msg) = invalid("[fill]\ncapacity = { glas = 10 }\n");
        assert_eq!((key.as_str(), line), ("fill.capacity.glas", Some(2)));
        assert!(msg.contains("containers"), "{msg}");
        let (key, _, _) = invalid("[fill.capacity]\nglass = 0\n");
        assert_eq!(key, "fill.capacity.glass");
        let (key, line, _) = invalid("[fill]\noverflow_bin = \"compost\"\n");
        assert_eq!((key.as_str(), line), ("fill.overflow_bin", Some(2)));
        let sensor = "[[fill.sensors]]\nbin = \"glass\"\ntrigger_pin = 5\necho_pin = 6\nfull_cm = 10\n";
        let (key, line, _) = invalid(&sensor.replace("full_cm = 10", "full_cm = -1"));
        assert_eq!((key.as_str(), line), ("fill.sensors[0].full_cm", Some(5)));
        let (key, line, msg) = invalid(&format!("[trigger]\nmode = \"gpio:5\"\n{sensor}"));
        assert_eq!((key.as_str(), line), ("fill.sensors[0].trigger_pin", Some(5)));
        assert!(msg.contains("GPIO 5 is already used by trigger.mode"), "{msg}");
        let (key, line, msg) = invalid("[interlock]\npin = 40\n");
        assert_eq!((key.as_str(), line), ("interlock.pin", Some(2)));
        assert!(msg.contains("0..=27"), "{msg}");
    }
}
