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

/// Shortest and longest servo pulse accepted anywhere, in µs. Hobby servos are
/// specified between these; beyond them many hit their end stops.
pub const PULSE_LIMITS_US: (u16, u16) = (500, 2500);
/// Most frames averaged for one item.
pub const MAX_FRAMES_PER_ITEM: u32 = 16;
/// Longest settle or dwell time accepted, in ms: more is surely a typo.
pub const MAX_WAIT_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub source: SourceConfig,
    pub decision: DecisionConfig,
    pub actuation: ActuationConfig,
    pub log: LogConfig,
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
    /// `images:DIR` (see [`crate::source::parse_source_spec`]).
    pub spec: String,
    /// Replay the folder again after the last file.
    #[serde(rename = "loop")]
    pub looped: bool,
    /// Frames per second at most; unset = as fast as the loop runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActuatorBackend {
    /// Simulated PWM channels that only log what they would send.
    Sim,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActuationConfig {
    pub backend: ActuatorBackend,
    /// Time a servo gets to reach a commanded angle before the next move.
    pub settle_ms: u64,
    pub servos: Vec<ServoConfig>,
    pub bins: Vec<BinConfig>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON-lines event log, one line per item; appended to across runs.
    pub events: PathBuf,
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
        SourceConfig { spec: "images:samples".into(), looped: false, rate_hz: None }
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

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { events: PathBuf::from("events.jsonl") }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelConfig::default(),
            source: SourceConfig::default(),
            decision: DecisionConfig::default(),
            actuation: ActuationConfig::default(),
            log: LogConfig::default(),
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
        check_bins(&self.actuation, &mut out);
        check_decision(&self.decision, &self.actuation, &mut out);
        if self.log.events.as_os_str().is_empty() {
            out.push(Problem::new(&["log", "events"], "is empty; allowed: a file path"));
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

        let (line, _, msg) = parse_err("[actuation]\nbackend = \"pca9685\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("`sim`"), "{msg}");

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
        let (key, line, msg) = invalid("[source]\nspec = \"camera:/dev/video0\"\n");
        assert_eq!((key.as_str(), line), ("source.spec", Some(2)));
        assert!(msg.contains("edge work"), "{msg}");
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
    fn validate_catches_bad_overrides_without_a_line() {
        let mut c = Config::default();
        c.actuation.servos[0].min_us = 100;
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { line: None, .. }), "{err}");
        assert!(err.to_string().contains("actuation.servos[0].min_us"), "{err}");
    }
}
