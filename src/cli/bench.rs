//! `smartbin bench`: model latency and throughput, and the whole sorter loop on
//! replayed photos. Speed lives here and in the README, never in timed tests.

use crate::actuation::sim_actuator;
use crate::clock::{Clock, SimClock, SystemClock};
use crate::config::Config;
use crate::decision::DecisionPolicy;
use crate::model::{checkpoint, parse_device, Classifier, ModelClassifier, Network};
use crate::training::sgd::Sgd;
use crate::sorter::{EventLog, Sorter};
use crate::source::{ImageDirSource, ReplayOptions, ReplayTrigger};
use candle_core::Tensor;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = crate::model::DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Worker threads for the kernels (default: all cores). Set before any work starts.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 30)]
    pub iters: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also time the whole loop (decode → classify → decide → simulated servos) once
    /// per photo in this folder (all of them, whatever --iters says).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Input side in pixels (default: the size the model was trained at).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Time training steps (forward, backward, SGD update; batch-norm in train mode)
    /// instead of inference.
    #[arg(long)]
    pub train: bool,
    /// Also write the input batch and its logits here (safetensors `input`, `logits`):
    /// bench/compare.py checks other frameworks against them.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Latency {
    median_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Self { median_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99) }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: PathBuf,
    arch: String,
    image_size: u32,
    batch: usize,
    threads: usize,
    /// `"q8_0"`/`"q4k"` for quantized models.
    quantized: Option<String>,
    /// `"inference"` (forward pass) or `"train"` (forward, backward, SGD step).
    mode: &'static str,
    /// One forward pass (or training step) on a prepared batch.
    forward: Latency,
    images_per_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    peak_rss_mib: Option<f64>,
    /// Per photo, whole loop: decode, preprocess, classify, decide, servo commands.
    whole_loop: Option<Latency>,
    whole_loop_photos: Option<usize>,
}

pub fn main(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = args.threads {
        // Candle and gemm size their pools from this variable on first use.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t).build_global();
    }
    let device = parse_device(&args.device)?;
    let load = if args.train { checkpoint::load_network } else { checkpoint::load_for_inference };
    let (network, _) = load(&args.model, &device)?;
    let size = args.image_size.unwrap_or(network.spec.image_size as usize);
    let batch = args.batch.max(1);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &device)?;
    if let Some(path) = &args.dump {
        dump(path, &x, &network.forward_t(&x, false)?)?;
    }
    let forward = if args.train { time_training(&network, &x, args.iters)? } else { time_inference(&network, &x, args.iters)? };
    let images_per_s = batch as f64 / (forward.median_ms / 1e3);
    let arch = network.spec.arch.to_string();
    let quantized = network.quantization().map(|q| q.to_string());
    let whole = match &args.photos {
        Some(dir) => {
            // One log line per servo move would drown the numbers.
            let level = log::max_level();
            log::set_max_level(log::LevelFilter::Warn);
            let result = whole_loop(ModelClassifier { network, temperature: 1.0 }, dir);
            log::set_max_level(level);
            Some(result?)
        }
        None => None,
    };
    let report = Report {
        model: args.model.clone(),
        arch,
        image_size: size as u32,
        batch,
        threads: rayon::current_num_threads(),
        quantized,
        mode: if args.train { "train" } else { "inference" },
        forward,
        images_per_s,
        peak_rss_mib: peak_rss_mib(),
        whole_loop_photos: whole.as_ref().map(|(_, n)| *n),
        whole_loop: whole.map(|(l, _)| l),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn time_inference(network: &Network, x: &Tensor, iters: usize) -> anyhow::Result<Latency> {
    let run = || -> anyhow::Result<()> {
        network.forward_t(x, false)?.to_device(&candle_core::Device::Cpu)?;
        Ok(())
    };
    time(run, iters)
}

/// Steps of plain SGD on random labels: the same work as a training step of `train`.
fn time_training(network: &Network, x: &Tensor, iters: usize) -> anyhow::Result<Latency> {
    if let Some(q) = network.quantization() {
        anyhow::bail!("a {q} quantized model cannot be trained: bench --train an f32 or f16 file");
    }
    let classes = network.spec.classes.len() as u32;
    let labels: Vec<u32> = (0..x.dim(0)? as u32).map(|i| i % classes).collect();
    let y = Tensor::new(labels, x.device())?;
    let mut sgd = Sgd::new(network.store.trainable(), 0.9, 1e-4);
    let mut step = || -> anyhow::Result<()> {
        let loss = candle_nn::loss::cross_entropy(&network.forward_t(x, true)?, &y)?;
        sgd.step(&loss.backward()?, 1e-4)?;
        Ok(())
    };
    time(&mut step, iters)
}

/// Three warm-up runs, then `iters` timed ones.
fn time(mut run: impl FnMut() -> anyhow::Result<()>, iters: usize) -> anyhow::Result<Latency> {
    for _ in 0..3 {
        run()?;
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        run()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Latency::of(ms))
}

fn dump(path: &std::path::Path, input: &Tensor, logits: &Tensor) -> anyhow::Result<()> {
    let cpu = |t: &Tensor| t.to_device(&candle_core::Device::Cpu);
    let tensors = [("input", cpu(input)?), ("logits", cpu(logits)?)];
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), None)?;
    crate::util::write_atomic(path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Runs the real sorter over `dir` with simulated servos on virtual time and a
/// throw-away event log, and reads each item's total latency back from that log.
fn whole_loop(mut classifier: ModelClassifier, dir: &std::path::Path) -> anyhow::Result<(Latency, usize)> {
    let config = Config::default();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let source = ImageDirSource::open(dir, ReplayOptions { looped: false, rate_hz: None }, clock.clone())?;
    let mut trigger = ReplayTrigger::new(Box::new(source));
    let (mut actuator, _) = sim_actuator(&config.actuation, Arc::new(SimClock::new()))?;
    let scratch = tempfile_dir()?;
    let log_path = scratch.join("bench-events.jsonl");
    let events = EventLog::open(&log_path)?;
    let policy = DecisionPolicy::from_config(&config.decision);
    let classifier: &mut dyn Classifier = &mut classifier;
    Sorter::new(&mut trigger, classifier, &mut actuator, policy, events, clock).run()?;
    let totals: Vec<f64> = std::fs::read_to_string(&log_path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["total_ms"].as_f64())
        .collect();
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(!totals.is_empty(), "no readable photos in {}", dir.display());
    let n = totals.len();
    Ok((Latency::of(totals), n))
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("smartbin-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Peak resident set size from /proc (Linux); `None` elsewhere.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn print_report(r: &Report) {
    let weights = r.quantized.as_deref().unwrap_or("f32");
    println!("{} ({}, {}x{}, {weights}), batch {}, {} threads", r.model.display(), r.arch, r.image_size, r.image_size, r.batch, r.threads);
    println!(
        "{}: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms; {:.1} images/s",
        if r.mode == "train" { "training step" } else { "forward" },
        r.forward.median_ms, r.forward.p90_ms, r.forward.p99_ms, r.images_per_s
    );
    if let Some(l) = &r.whole_loop {
        println!(
            "whole loop over {} photos: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms per photo",
            r.whole_loop_photos.unwrap_or(0), l.median_ms, l.p90_ms, l.p99_ms
        );
    }
    if let Some(rss) = r.peak_rss_mib {
        println!("peak RSS: {rss:.0} MiB");
    }
}
