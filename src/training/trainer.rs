//! The epoch loop: train, validate, checkpoint, resume.

use super::data::{load_split, training_batches, ImageCache, Split};
use super::eval::evaluate;
use super::freeze::{cache_bytes, stack, FeatureCache, Freeze};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use super::sgd::Sgd;
use crate::model::{checkpoint, Arch, AttentionKind, GateMix, ModelSpec, Network};
use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, D};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

const META_CONFIG: &str = "smartbin.train_config";
const META_STATE: &str = "smartbin.train_state";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const BEST_FILE: &str = "model_best.safetensors";
pub const METRICS_FILE: &str = "metrics.csv";

/// Everything that defines a training run; stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub arch: Arch,
    pub att: AttentionKind,
    pub att_mix: GateMix,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// The learning rate is divided by 10 every `lr_step` epochs.
    pub lr_step: usize,
    pub seed: u64,
    pub image_size: u32,
    /// Smallest area fraction of RandomResizedCrop (torchvision: 0.08).
    #[serde(default = "default_min_crop_scale")]
    pub min_crop_scale: f64,
    pub data: PathBuf,
    pub save_dir: PathBuf,
    /// Use at most this many training images (quick experiments and tests).
    pub limit: Option<usize>,
    /// Initial weights (safetensors, torchvision names); `None` trains from scratch.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// Which leading part of the network stays fixed.
    #[serde(default)]
    pub freeze: Freeze,
    /// With a frozen trunk: augmented views per training image whose trunk
    /// features are computed once and reused, one view per epoch in turn.
    #[serde(default = "default_feature_views")]
    pub feature_views: usize,
    /// Where cached trunk features are kept (default `<save_dir>/features.safetensors`);
    /// runs that share a frozen trunk can share the file.
    #[serde(default)]
    pub feature_cache: Option<PathBuf>,
}

fn default_feature_views() -> usize {
    8
}

fn default_min_crop_scale() -> f64 {
    crate::preprocess::DEFAULT_MIN_CROP_SCALE
}

impl TrainConfig {
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * 0.1f64.powi((epoch / self.lr_step.max(1)) as i32)
    }

    /// Decoded images are kept just large enough that the smallest random crop
    /// (`min_crop_scale` of the area) still has `image_size` pixels across, so crops
    /// are never upsampled from a shrunken copy; never below the eval resize.
    fn cache_side(&self) -> u32 {
        let for_crops = (self.image_size as f64 / self.min_crop_scale.max(1e-3).sqrt()).ceil() as u32;
        for_crops.max(crate::preprocess::eval_resize_side(self.image_size))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    pub best_val_acc: f64,
    pub history: Vec<EpochMetrics>,
}

/// A run in progress: the network, its optimiser, the data.
pub struct Trainer {
    pub config: TrainConfig,
    pub network: Network,
    pub state: TrainState,
    sgd: Sgd,
    train: ImageCache,
    val: ImageCache,
    /// Leading trunk stages that are frozen (run in eval mode, no gradients).
    frozen: usize,
    /// Trunk features when the whole trunk is frozen.
    features: Option<FeatureCache>,
}

impl Trainer {
    /// A fresh run, or one continuing from `resume` (a `checkpoint.safetensors`).
    pub fn new(config: TrainConfig, device: &Device, resume: Option<&Path>) -> anyhow::Result<Self> {
        let spec = ModelSpec {
            arch: config.arch,
            att: config.att,
            att_mix: config.att_mix,
            classes: super::data::TRASHNET_CLASSES.iter().map(|c| c.to_string()).collect(),
            image_size: config.image_size,
        };
        let mut network = Network::new(spec, device, config.seed)?;
        let mut state = TrainState::default();
        let mut optim = Default::default();
        if let Some(path) = resume {
            let (loaded, ckpt) = checkpoint::load_network(path, device)?;
            if let Some(q) = loaded.quantization() {
                bail!("{} is a {q} quantized model and cannot be trained: resume from the run's checkpoint.safetensors", path.display());
            }
            if loaded.spec != network.spec {
                bail!("{} holds a {:?} model, this run is {:?}", path.display(), loaded.spec, network.spec);
            }
            state = serde_json::from_str(ckpt.metadata.get(META_STATE).context("checkpoint has no training state")?)?;
            if state.epoch >= config.epochs {
                bail!(
                    "{} already completed {} of {} epochs: pass --epochs N (N > {}) to train further",
                    path.display(), state.epoch, config.epochs, state.epoch
                );
            }
            optim = ckpt.optim;
            if optim.is_empty() && state.epoch > 0 && config.momentum != 0.0 {
                log::warn!("{} holds no optimiser state (a model_best file?): momentum restarts from zero; resume from checkpoint.safetensors to continue exactly", path.display());
            }
            network = loaded;
            log::info!("resuming {} after epoch {}", path.display(), state.epoch);
        } else if let Some(path) = &config.pretrained {
            let r = super::pretrained::load_pretrained(&network, path)?;
            log::info!(
                "pretrained {}: {} tensors loaded, {} new (e.g. attention), {} ignored, head re-initialised: {}",
                path.display(), r.loaded.len(), r.missing.len(), r.ignored.len(), !r.new_head.is_empty()
            );
        }
        let frozen = config.freeze.frozen_stages(&network)?;
        Freeze::apply(frozen, &network);
        log::info!("trainable: {:.3} M parameters (freeze: {})", network.store.count_trainable() as f64 / 1e6, config.freeze);
        let mut sgd = Sgd::new(network.store.trainable(), config.momentum, config.weight_decay);
        sgd.load_state(&optim);
        let (train, val) = load_data(&config)?;
        let budget = 6usize << 30;
        let cache_size = if frozen > 0 { cache_bytes(&network, frozen, train.len(), config.feature_views)? } else { 0 };
        if cache_size > budget {
            log::info!("frozen-stage outputs would take {:.1} GiB: computing them every step instead", cache_size as f64 / (1u64 << 30) as f64);
        }
        let features = if frozen > 0 && cache_size <= budget {
            let c = &config;
            let mut key = feature_key(c);
            if frozen < network.stage_names().len() {
                key.push_str(&format!("|frozen {frozen}"));
            }
            let path = c.feature_cache.clone().unwrap_or_else(|| c.save_dir.join("features.safetensors"));
            Some(FeatureCache::load_or_build(&path, &key, &network, frozen, &train, &val, c.feature_views, c.min_crop_scale, c.seed)?)
        } else {
            None
        };
        Ok(Self { config, network, state, sgd, train, val, frozen, features })
    }

    /// Trains until `config.epochs`, checkpointing after every epoch.
    pub fn run(&mut self) -> anyhow::Result<&TrainState> {
        std::fs::create_dir_all(&self.config.save_dir)
            .with_context(|| format!("cannot create {}", self.config.save_dir.display()))?;
        while self.state.epoch < self.config.epochs {
            let metrics = self.run_epoch()?;
            log::info!(
                "epoch {}/{}: lr {:.1e} train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | {:.0}s, {:.1} img/s",
                metrics.epoch, self.config.epochs, metrics.lr, metrics.train_loss, metrics.train_acc,
                metrics.val_loss, metrics.val_acc, metrics.seconds, metrics.images_per_s
            );
            let improved = metrics.val_acc > self.state.best_val_acc || self.state.history.is_empty();
            self.state.epoch += 1;
            self.state.best_val_acc = self.state.best_val_acc.max(metrics.val_acc);
            self.state.history.push(metrics);
            self.save(improved)?;
        }
        Ok(&self.state)
    }

    fn run_epoch(&mut self) -> anyhow::Result<EpochMetrics> {
        let epoch = self.state.epoch;
        let lr = self.config.lr_at(epoch);
        let started = Instant::now();
        let bar = progress_bar(self.train.len(), epoch + 1, self.config.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let device = self.network.device().clone();
        for (x, y) in epoch_inputs(&self.config, &self.train, self.features.as_ref(), epoch) {
            let logits = self.logits_t(&x, &device)?;
            let y = y.to_device(&device)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            self.sgd.step(&loss.backward()?, lr)?;
            let n = y.dims1()?;
            let hits = logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * n as f64;
            correct += hits as usize;
            seen += n;
            bar.inc(n as u64);
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% {:.1} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64()
            ));
        }
        bar.finish_and_clear();
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_acc) = self.validate()?;
        Ok(EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: 100.0 * correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            seconds: started.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_seconds,
        })
    }

    /// Training-mode logits; frozen stages run in eval mode without gradients.
    fn logits_t(&self, x: &Tensor, device: &Device) -> anyhow::Result<Tensor> {
        let x = x.to_device(device)?;
        let all = self.network.stage_names().len();
        // Cached inputs are already the frozen stages' output.
        let fixed = match &self.features {
            None if self.frozen > 0 => self.network.detached()?.stages_t(&x, false, 0..self.frozen)?,
            _ => x,
        };
        Ok(self.network.head_t(&self.network.stages_t(&fixed, true, self.frozen..all)?)?)
    }

    /// Validation (loss, top-1 %).
    fn validate(&self) -> anyhow::Result<(f64, f64)> {
        let network = self.network.detached()?;
        let Some(cache) = &self.features else {
            let r = evaluate(&network, &self.val, self.config.batch_size.max(32))?;
            return Ok((r.loss, r.top1));
        };
        let (mut loss, mut correct) = (0.0, 0usize);
        let indices: Vec<usize> = (0..cache.val.len()).collect();
        for chunk in indices.chunks(64) {
            let x = stack(&cache.val, chunk, network.device())?;
            let labels: Vec<u32> = chunk.iter().map(|&i| self.val.label(i) as u32).collect();
            let y = Tensor::new(labels, network.device())?;
            let all = network.stage_names().len();
            let logits = network.head_t(&network.stages_t(&x, false, self.frozen..all)?)?;
            loss += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            correct += logits.argmax(D::Minus1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
        }
        let n = cache.val.len().max(1) as f64;
        Ok((loss / n, 100.0 * correct as f64 / n))
    }

    fn save(&self, improved: bool) -> anyhow::Result<()> {
        let dir = &self.config.save_dir;
        let meta = [
            (META_CONFIG, serde_json::to_string(&self.config)?),
            (META_STATE, serde_json::to_string(&self.state)?),
        ];
        checkpoint::save(&dir.join(CHECKPOINT_FILE), &self.network, DType::F32, self.sgd.state(), &meta)?;
        if improved {
            checkpoint::save(&dir.join(BEST_FILE), &self.network, DType::F32, &Default::default(), &meta)?;
            log::info!("new best validation accuracy {:.2}%: saved {}", self.state.best_val_acc, dir.join(BEST_FILE).display());
        }
        crate::util::write_atomic(&dir.join(METRICS_FILE), metrics_csv(&self.state.history).as_bytes())?;
        Ok(())
    }

}

/// Everything the cached trunk features depend on.
fn feature_key(c: &TrainConfig) -> String {
    let weights = c.pretrained.as_ref().and_then(|p| std::fs::metadata(p).ok().map(|m| (p.clone(), m.len())));
    format!(
        "{}|{}|{}|{}|{}|{:?}|{:?}|{}",
        c.arch, c.image_size, c.feature_views, c.min_crop_scale, c.seed, weights, c.limit, c.data.display()
    )
}

type Inputs<'a> = Box<dyn Iterator<Item = (Tensor, Tensor)> + 'a>;

/// An epoch's (input, labels) CPU batches: augmented images, or cached trunk features.
fn epoch_inputs<'a>(c: &'a TrainConfig, train: &'a ImageCache, features: Option<&'a FeatureCache>, epoch: usize) -> Inputs<'a> {
    let Some(cache) = features else {
        let batches = training_batches(train, c.batch_size, c.image_size, c.min_crop_scale, c.seed, epoch);
        return Box::new(batches.map(|b| {
            let x = b.images_tensor(&Device::Cpu).expect("batch buffers match their shape");
            (x, b.labels_tensor(&Device::Cpu).expect("batch buffers match their shape"))
        }));
    };
    let view = &cache.train[epoch % cache.train.len()];
    let mut order: Vec<usize> = (0..view.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(c.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let chunks: Vec<Vec<usize>> = order.chunks(c.batch_size).map(<[usize]>::to_vec).collect();
    Box::new(chunks.into_iter().map(move |idx| {
        let x = stack(view, &idx, &Device::Cpu).expect("cached features share one shape");
        let labels: Vec<u32> = idx.iter().map(|&i| train.label(i) as u32).collect();
        (x, Tensor::new(labels, &Device::Cpu).expect("labels fit a tensor"))
    }))
}

fn load_data(config: &TrainConfig) -> anyhow::Result<(ImageCache, ImageCache)> {
    let train = split_cache(&config.data, Split::Train, config.cache_side(), config.limit)?;
    let val = split_cache(&config.data, Split::Val, crate::preprocess::eval_resize_side(config.image_size), None)?;
    if train.is_empty() || val.is_empty() {
        bail!("no usable training or validation images under {}", config.data.display());
    }
    log::info!("data: {} training, {} validation images from {}", train.len(), val.len(), config.data.display());
    Ok((train, val))
}

/// Decodes a split into memory; unreadable images are reported by path and skipped.
pub fn split_cache(root: &Path, split: Split, side: u32, limit: Option<usize>) -> anyhow::Result<ImageCache> {
    let mut samples = load_split(root, split)?;
    if let Some(n) = limit {
        samples = spread_subset(samples, n);
    }
    let (cache, skipped) = ImageCache::build(&samples, side);
    if !skipped.is_empty() {
        log::warn!("{} {split} image(s) skipped as unreadable", skipped.len());
    }
    Ok(cache)
}

/// Every k-th sample so a small subset still covers every class.
fn spread_subset<T>(samples: Vec<T>, n: usize) -> Vec<T> {
    let step = samples.len().div_ceil(n.max(1)).max(1);
    samples.into_iter().step_by(step).take(n).collect()
}

fn progress_bar(images: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(images as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut out = String::from("epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_s\n");
    for m in history {
        out.push_str(&format!(
            "{},{:e},{:.6},{:.4},{:.6},{:.4},{:.2},{:.2}\n",
            m.epoch, m.lr, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.seconds, m.images_per_s
        ));
    }
    out
}

/// The training configuration stored in a checkpoint (to resume with the same recipe).
pub fn stored_config(path: &Path) -> anyhow::Result<TrainConfig> {
    let metadata = checkpoint::read_metadata(path)?;
    let json = metadata.get(META_CONFIG).with_context(|| format!("{} is not a training checkpoint", path.display()))?;
    Ok(serde_json::from_str(json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_steps_down_tenfold() {
        let c = TrainConfig {
            arch: Arch::Resnet18, att: AttentionKind::Ours, att_mix: GateMix::Sum, epochs: 100, batch_size: 16,
            lr: 2e-4, momentum: 0.9, weight_decay: 1e-4, lr_step: 40, seed: 1, image_size: 224, min_crop_scale: 0.08,
            data: "d".into(), save_dir: "s".into(), limit: None, pretrained: None, freeze: Freeze::None, feature_views: 8, feature_cache: None,
        };
        assert_eq!(c.lr_at(0), 2e-4);
        assert!((c.lr_at(39) - 2e-4).abs() < 1e-12);
        assert!((c.lr_at(40) - 2e-5).abs() < 1e-12);
        assert!((c.lr_at(99) - 2e-6).abs() < 1e-12);
    }

    #[test]
    fn subset_spreads_over_the_list() {
        let v: Vec<usize> = (0..100).collect();
        assert_eq!(spread_subset(v, 4), vec![0, 25, 50, 75]);
    }
}
