//! `smartbin calibrate model`: guided capture of this bin's items, then the
//! classifier adapted to them (see [`crate::calibration::adapt`]); and
//! `smartbin correct`, which files a wrongly sorted item's frame under its
//! right class for the next adaptation.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;

use super::calibrate::Target;
use crate::calibration::adapt::{
    adapt, calibrate_confidence, replay_subset, save_adapted, split_captures, suggest_threshold, AdaptOptions,
};
use crate::calibration::{edit_config, table};
use crate::calibration::button::append_line;
use crate::clock::SystemClock;
use crate::model::checkpoint;
use crate::source::{open_configured, parse_source_spec};
use crate::training::data::{load_folder, load_split, Sample, Split, TRASHNET_CLASSES};

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Config of the bin; on success its [model] path is pointed at the adapted
    /// model (the old file is kept as FILE.bak)
    #[arg(long, value_name = "PATH", default_value = super::run::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Model to start from [default: the config's [model] path]
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// This bin's labelled photos, a folder per class [default: [calibration] dataset]
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,
    /// First capture N items of every class from the camera, guided
    #[arg(long, value_name = "N")]
    pub capture: Option<usize>,
    /// Frame source for --capture, overriding [source] spec
    #[arg(long, value_name = "SPEC")]
    pub source: Option<String>,
    /// Photos of the original data set replayed so that nothing is forgotten: a
    /// TrashNet root (dataset-resized/ and splits/) or a folder per class
    #[arg(long, value_name = "DIR")]
    pub replay: Option<PathBuf>,
    /// Replayed photos per class
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub replay_per_class: usize,
    /// Share of each class's captures held out to judge the adapted model
    #[arg(long, default_value_t = 0.3, value_name = "SHARE")]
    pub holdout: f64,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Augmented views per training photo
    #[arg(long, default_value_t = 4)]
    pub views: usize,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the adapted model goes [default: models/adapted.safetensors beside the config]
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Also write the suggested [decision] threshold into the config
    #[arg(long)]
    pub set_threshold: bool,
}

fn check_args(args: &ModelArgs) -> anyhow::Result<()> {
    if !(args.holdout > 0.0 && args.holdout < 1.0) {
        bail!("--holdout {}: allowed a share between 0 and 1, e.g. 0.3", args.holdout);
    }
    if !(args.lr.is_finite() && args.lr > 0.0 && args.lr <= 1.0) {
        bail!("--lr {}: allowed a number in (0, 1]", args.lr);
    }
    if args.views == 0 {
        bail!("--views must be at least 1");
    }
    Ok(())
}

pub fn main(args: ModelArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let target = Target::load(&args.config)?;
    let config = &target.config;
    let start_path = args.model.clone().unwrap_or_else(|| config.model.path.clone());
    let (network, start) = checkpoint::load_network(&start_path, &Device::Cpu)?;
    let classes = start.spec.classes.clone();
    let dataset = args.dataset.clone().unwrap_or_else(|| config.calibration.dataset.clone());
    if let Some(per_class) = args.capture {
        capture(&target, &args, &dataset, &classes, per_class)?;
    }
    let captures = load_folder(&dataset, &classes).with_context(|| {
        format!("no captures to learn from in {} (capture some with --capture N)", dataset.display())
    })?;
    let (train, holdout) = split_captures(&captures, args.holdout, args.seed);
    let replay = match &args.replay {
        Some(dir) => load_replay(dir, &classes, args.replay_per_class)?,
        None => {
            println!("no --replay photos: classes missing from the captures may be forgotten");
            Vec::new()
        }
    };
    println!(
        "{} captures in {} ({} to train, {} held out), {} replayed photos; starting from {}",
        captures.len(),
        dataset.display(),
        train.len(),
        holdout.len(),
        replay.len(),
        start_path.display()
    );

    let options = AdaptOptions {
        holdout: args.holdout,
        views: args.views,
        epochs: args.epochs,
        lr: args.lr,
        seed: args.seed,
        ..AdaptOptions::default()
    };
    let started = Instant::now();
    let adapted = adapt(&network, &train, &holdout, &replay, &options)?;
    for (path, why) in &adapted.unreadable {
        println!("skipped unreadable {}: {why}", path.display());
    }
    let r = &adapted.report;
    println!(
        "held-out captures: {:.1}% right before, {:.1}% after ({} images; {:.0} s features + {:.0} s training = {:.0} s)",
        r.before.accuracy,
        r.after.accuracy,
        r.holdout_captures,
        r.feature_seconds,
        r.train_seconds,
        started.elapsed().as_secs_f64()
    );
    if let (Some(b), Some(a)) = (r.replay_before, r.replay_after) {
        println!("held-out replayed photos: {:.1}% before, {:.1}% after ({} images)", b.accuracy, a.accuracy, r.replay_holdout);
    }
    if !r.improved() {
        println!(
            "not better than {} on the held-out captures (or worse on the replayed photos): nothing saved, \
             the bin keeps its model",
            start_path.display()
        );
        return Ok(ExitCode::from(2));
    }

    let calibration = calibrate_confidence(&adapted.holdout_logits, &adapted.holdout_labels);
    if calibration.fitted {
        println!(
            "confidence: temperature {:.2}; expected calibration error {:.3} -> {:.3}, log loss {:.3} -> {:.3} \
             (5-fold cross-fitted on the held-out captures)",
            calibration.temperature,
            calibration.ece_before,
            calibration.ece_after,
            calibration.nll_before,
            calibration.nll_after
        );
    } else {
        println!("confidence: no mistake among the held-out captures to fit a temperature on; it stays 1");
    }
    let policy = crate::decision::DecisionPolicy::from_config(&config.decision);
    let bin_of = |class: usize| policy.bin_for_class(&classes[class]);
    let target_rate = f64::from(config.calibration.wrong_bin_target);
    let suggestion = suggest_threshold(&adapted.holdout_logits, &adapted.holdout_labels, calibration.temperature, bin_of, target_rate);
    match &suggestion {
        Some(s) => println!(
            "threshold {:.2} keeps wrong bins at {:.1}% (target {:.1}%, counting one unseen mistake) and sorts {:.0}% \
             of items, the rest to {}",
            s.threshold,
            s.wrong_bin * 100.0,
            target_rate * 100.0,
            s.sorted * 100.0,
            config.decision.fallback_bin
        ),
        None => println!(
            "threshold: fewer than {} held-out captures, too few to suggest one",
            crate::calibration::adapt::MIN_ITEMS_FOR_THRESHOLD
        ),
    }

    // A new name each time: the file the current config (and its .bak) names
    // is never written over, so going back is restoring the .bak.
    let stamp = crate::util::file_stamp();
    let default_out = target.path.parent().unwrap_or(Path::new(".")).join(format!("models/adapted-{stamp}.safetensors"));
    let out = std::path::absolute(args.out.clone().unwrap_or(default_out))?;
    if std::path::absolute(&config.model.path).ok().as_ref() == Some(&out) {
        bail!("--out {} is the model the config uses now: give another file", out.display());
    }
    let threshold = match (args.set_threshold, &suggestion) {
        (true, Some(s)) => Some(s.threshold),
        _ => None,
    };
    let (text, _) = edit_config(&target.text, &target.path.display().to_string(), |doc| {
        table(doc, "model")?.insert("path", toml_edit::value(out.display().to_string()));
        if let Some(t) = threshold {
            // Rounded up: a lower threshold would sort items the suggestion did not.
            table(doc, "decision")?.insert("threshold", toml_edit::value(((t * 100.0).ceil() / 100.0).min(1.0)));
        }
        Ok(())
    })?;
    save_adapted(&out, &network, &start, calibration.temperature, r)?;
    let mut target = target;
    target.write(&text)?;
    println!(
        "saved {}; {} now uses it (previous config: {}); `systemctl reload smartbin` applies it",
        out.display(),
        target.path.display(),
        crate::calibration::backup_path(&target.path).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Replay photos: a TrashNet root's training split, or a folder per class;
/// labels follow the model's class order.
fn load_replay(dir: &Path, classes: &[String], per_class: usize) -> anyhow::Result<Vec<Sample>> {
    let samples = if dir.join("splits").is_dir() {
        let names: Vec<String> = TRASHNET_CLASSES.iter().map(|c| c.to_string()).collect();
        load_split(dir, Split::Train)?
            .into_iter()
            .filter_map(|s| {
                let label = classes.iter().position(|c| *c == names[s.label])?;
                Some(Sample { path: s.path, label })
            })
            .collect()
    } else {
        load_folder(dir, classes)?
    };
    Ok(replay_subset(samples, per_class))
}

/// Guided capture: for every class, N items placed on the tray one by one.
fn capture(target: &Target, args: &ModelArgs, dataset: &Path, classes: &[String], per_class: usize) -> anyhow::Result<()> {
    let mut source_config = target.config.source.clone();
    if let Some(spec) = &args.source {
        source_config.spec = spec.clone();
    }
    let spec = parse_source_spec(&source_config.spec)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut source = open_configured(&spec, &source_config, Arc::new(SystemClock), stop)?;
    let interactive = std::io::stdin().is_terminal();
    if !interactive && matches!(spec, crate::source::SourceSpec::Camera(_)) {
        bail!("--capture from a camera asks for each item in turn: run it in a terminal (an images: source needs none)");
    }
    for class in classes {
        for k in 1..=per_class {
            if interactive {
                println!("place a {class} item on the tray ({k}/{per_class}), then press Enter (type s and Enter to skip {class})");
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                if line.trim() == "s" {
                    break;
                }
            }
            let frame = source.fresh_frame()?.with_context(|| format!("{} gave no more frames", source.describe()))?;
            let path = dataset.join(class).join(format!("capture-{}.jpg", unique_stamp()));
            crate::util::write_jpeg(&path, &frame.image)?;
            println!("{class} {k}/{per_class}: {}", path.display());
        }
    }
    Ok(())
}

/// The time plus a counter: names that sort in capture order, even two in
/// one millisecond.
fn unique_stamp() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{:04}", crate::util::file_stamp(), COUNT.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug, clap::Args)]
pub struct CorrectArgs {
    /// The event's id (`id` in the event log; `systemctl status` shows the last one)
    #[arg(required_unless_present = "pending")]
    pub event: Option<u64>,
    /// The class the item really was
    #[arg(required_unless_present = "pending")]
    pub class: Option<String>,
    /// List the items marked wrong with the bin's button that still need a class
    #[arg(long, conflicts_with_all = ["event", "class"])]
    pub pending: bool,
    #[arg(long, value_name = "PATH", default_value = super::run::DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// `smartbin correct ID CLASS`: the item's kept frame joins the dataset under
/// its right class, and the correction is logged beside it.
pub fn correct(args: CorrectArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(&args.config)?;
    if args.pending {
        return list_pending(&config.calibration.dataset);
    }
    let (Some(id), Some(class)) = (args.event, args.class) else {
        bail!("give the event id and its class, e.g. `smartbin correct 42 plastic`");
    };
    // The dataset trains the model, so its classes are the model's.
    let classes = checkpoint::read_spec(&config.model.path)
        .with_context(|| format!("reading the classes of the model {}", config.model.path.display()))?
        .classes;
    if !classes.contains(&class) {
        bail!("`{class}` is not a class of this bin's model; classes: {}", classes.join(", "));
    }
    let event = crate::sorter::events::find_event(&config.log.events, id)?
        .with_context(|| format!("no event {id} in {}", config.log.events.display()))?;
    let dataset = &config.calibration.dataset;
    let marked = dataset.join(crate::calibration::button::TO_LABEL).join(format!("event-{id}.jpg"));
    // The kept frame, or the copy the wrong-bin button made (kept frames are pruned).
    let frame = event.frame.as_ref().map(PathBuf::from).filter(|f| f.exists()).or_else(|| marked.exists().then(|| marked.clone()));
    let frame = frame.with_context(|| match &event.frame {
        Some(f) => format!("the frame of event {id} ({f}) is gone: only the newest [log] keep_frames are kept"),
        None => format!("event {id} has no kept frame: set [log] frames in the config so items' frames are kept"),
    })?;
    let bytes = std::fs::read(&frame).with_context(|| format!("reading {}", frame.display()))?;
    let dest = dataset.join(&class).join(format!("event-{id}.jpg"));
    crate::util::write_atomic(&dest, &bytes).with_context(|| format!("writing {}", dest.display()))?;
    // Relabelling: the frame leaves the class (or the to-label folder) it was
    // filed under before, once the new copy is safely written.
    let folders = classes.iter().map(String::as_str).chain([crate::calibration::button::TO_LABEL]);
    for folder in folders {
        let old = dataset.join(folder).join(format!("event-{id}.jpg"));
        if old != dest && old.exists() {
            std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    let line = serde_json::json!({
        "event": id,
        "time": crate::sorter::events::rfc3339_utc(std::time::SystemTime::now()),
        "was": event.class,
        "now": class,
        "frame": dest.display().to_string(),
    });
    append_line(&dataset.join("corrections.jsonl"), &line.to_string())?;
    println!(
        "event {id}: {} -> {class}; {} joins the dataset for the next `smartbin calibrate model`",
        event.class.as_deref().unwrap_or("unclassified"),
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Frames marked wrong with the button, oldest event first.
fn list_pending(dataset: &Path) -> anyhow::Result<ExitCode> {
    let dir = dataset.join(crate::calibration::button::TO_LABEL);
    let mut ids: Vec<u64> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("event-")?.strip_suffix(".jpg")?.parse().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    ids.sort_unstable();
    if ids.is_empty() {
        println!("nothing marked wrong waits for a class");
    }
    for id in ids {
        println!("{id}\t{}", dir.join(format!("event-{id}.jpg")).display());
    }
    Ok(ExitCode::SUCCESS)
}
