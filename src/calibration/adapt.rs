//! `smartbin calibrate model`: adapt the classifier to this bin's camera, light
//! and items, on the bin's own CPU.
//!
//! Only the head learns (RecycleNet's attention and the classifier); the trunk
//! stays as trained, so its output for each capture is computed once per
//! augmented view and every epoch after that costs next to nothing. Replayed
//! photos of the original data set train alongside the captures so that classes
//! the owner did not capture are not forgotten.
//!
//! A stratified part of the captures is held out. The adapted model counts as
//! better only if it classifies more of those correctly than the starting model
//! did; the caller saves it only then. Its softmax temperature is fitted on the
//! same held-out captures (see [`fit_temperature`]), and a threshold is suggested
//! that keeps the share of items sent to a wrong bin under a target.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::Network;
use crate::training::data::{ImageCache, Sample};
use crate::training::freeze::{stack, FeatureCache, Freeze};
use crate::training::sgd::Sgd;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptOptions {
    /// Share of each class's captures held out to judge the result.
    pub holdout: f64,
    /// Augmented views of each training image whose trunk features are cached.
    pub views: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Smallest crop (share of the picture) of the training views.
    pub min_crop_scale: f64,
    pub seed: u64,
}

impl Default for AdaptOptions {
    fn default() -> Self {
        AdaptOptions { holdout: 0.3, views: 4, epochs: 30, lr: 0.01, batch_size: 32, min_crop_scale: 0.35, seed: 0 }
    }
}

/// Top-1 accuracy (%) and mean negative log-likelihood on the held-out captures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub accuracy: f64,
    pub nll: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptReport {
    pub train_captures: usize,
    pub holdout_captures: usize,
    /// Replayed photos trained on, and held out.
    pub replay_images: usize,
    pub replay_holdout: usize,
    /// On the held-out captures.
    pub before: Score,
    pub after: Score,
    /// On the held-out replayed photos.
    pub replay_before: Option<Score>,
    pub replay_after: Option<Score>,
    /// Trunk features, then head training, in seconds.
    pub feature_seconds: f64,
    pub train_seconds: f64,
}

/// Points of accuracy the held-out replay may lose (a photo or two of noise on
/// a small set) before the adaptation counts as forgetting.
pub const REPLAY_TOLERANCE: f64 = 5.0;

impl AdaptReport {
    /// Better means more held-out captures right (a tie keeps the old model)
    /// without losing more than [`REPLAY_TOLERANCE`] on the held-out replay.
    pub fn improved(&self) -> bool {
        let kept_old = match (self.replay_before, self.replay_after) {
            (Some(b), Some(a)) => a.accuracy >= b.accuracy - REPLAY_TOLERANCE,
            _ => true,
        };
        self.after.accuracy > self.before.accuracy && kept_old
    }
}

/// What [`adapt`] returns besides the network it changed in place.
#[derive(Debug)]
pub struct Adapted {
    pub report: AdaptReport,
    /// Held-out logits of the adapted head, and their labels.
    pub holdout_logits: Vec<Vec<f32>>,
    pub holdout_labels: Vec<usize>,
    /// Captures that could not be read, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Splits `samples` per class: `fraction` of each class (at least one image when
/// the class has two or more) is held out; the rest trains.
pub fn split_captures(samples: &[Sample], fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.label).collect();
    let (mut train, mut holdout) = (Vec::new(), Vec::new());
    for label in labels {
        let mut class: Vec<Sample> = samples.iter().filter(|s| s.label == label).cloned().collect();
        class.shuffle(&mut rng);
        let n = class.len();
        let held = if n < 2 { 0 } else { ((n as f64 * fraction).round() as usize).clamp(1, n - 1) };
        holdout.extend(class.drain(..held));
        train.extend(class);
    }
    (train, holdout)
}

/// Trains `network`'s head on `train` captures plus `replay` images and scores
/// it on `holdout` before and after. `network` is changed in place.
pub fn adapt(
    network: &Network,
    train: &[Sample],
    holdout: &[Sample],
    replay: &[Sample],
    options: &AdaptOptions,
) -> anyhow::Result<Adapted> {
    if train.is_empty() || holdout.is_empty() {
        bail!(
            "need captures to train on and to hold out (have {} and {}): capture at least 2 items of a class",
            train.len(),
            holdout.len()
        );
    }
    let classes: HashSet<usize> = train.iter().map(|s| s.label).collect();
    if classes.len() < 2 && replay.is_empty() {
        bail!("the captures hold one class only: with nothing replayed the model would learn to see only it (add --replay)");
    }
    let size = network.spec.image_size;
    let started = Instant::now();
    // Part of the replay is held out too: the adapted model must not get worse
    // on the original data set's classes, which the captures may not show.
    let (replay_train, replay_holdout) = split_captures(replay, options.holdout, options.seed ^ 0x2E91);
    let capture_paths: HashSet<PathBuf> = train.iter().map(|s| s.path.clone()).collect();
    let replay_held: HashSet<PathBuf> = replay_holdout.iter().map(|s| s.path.clone()).collect();
    let crop_side = (f64::from(size) / options.min_crop_scale.max(1e-3).sqrt()).ceil() as u32;
    let train_side = crop_side.max(crate::preprocess::eval_resize_side(size));
    let all_train: Vec<Sample> = train.iter().chain(&replay_train).cloned().collect();
    let all_holdout: Vec<Sample> = holdout.iter().chain(&replay_holdout).cloned().collect();
    let (train_cache, mut unreadable) = ImageCache::build(&all_train, train_side);
    let (holdout_cache, bad) = ImageCache::build(&all_holdout, crate::preprocess::eval_resize_side(size));
    unreadable.extend(bad);
    if holdout_cache.is_empty() || train_cache.is_empty() {
        bail!("no readable captures left to train on or to hold out");
    }
    let frozen = Freeze::Backbone.frozen_stages(network)?;
    let features = FeatureCache::build(
        network,
        frozen,
        &train_cache,
        &holdout_cache,
        options.views,
        options.min_crop_scale,
        options.seed,
    )?;
    let feature_seconds = started.elapsed().as_secs_f64();
    let from_replay: Vec<bool> = holdout_cache.samples().iter().map(|s| replay_held.contains(&s.path)).collect();
    let labels_held: Vec<usize> = (0..holdout_cache.len()).map(|i| holdout_cache.label(i)).collect();
    let held = HeldOut { from_replay, labels: labels_held };
    let (before, replay_before) = held.scores(&head_logits(network, &features.val, frozen)?);

    let is_capture: Vec<bool> =
        train_cache.samples().iter().map(|s| capture_paths.contains(&s.path)).collect();
    let labels: Vec<usize> = (0..train_cache.len()).map(|i| train_cache.label(i)).collect();
    let trained = Instant::now();
    train_head(network, frozen, &features, &labels, &is_capture, options)?;
    let logits = head_logits(network, &features.val, frozen)?;
    if logits.iter().flatten().any(|v| !v.is_finite()) {
        bail!("training diverged (the outputs are not numbers): try a smaller --lr");
    }
    let (after, replay_after) = held.scores(&logits);
    let (holdout_logits, holdout_labels) = held.captures(logits);
    let replay_images = is_capture.iter().filter(|c| !**c).count();
    let report = AdaptReport {
        train_captures: is_capture.len() - replay_images,
        holdout_captures: holdout_labels.len(),
        replay_images,
        replay_holdout: held.from_replay.iter().filter(|r| **r).count(),
        before,
        after,
        replay_before,
        replay_after,
        feature_seconds,
        train_seconds: trained.elapsed().as_secs_f64(),
    };
    Ok(Adapted { report, holdout_logits, holdout_labels, unreadable })
}

/// The held-out images: captures, then replayed photos.
struct HeldOut {
    from_replay: Vec<bool>,
    labels: Vec<usize>,
}

impl HeldOut {
    /// Scores on the captures and (if any) on the replayed photos.
    fn scores(&self, logits: &[Vec<f32>]) -> (Score, Option<Score>) {
        let pick = |replay: bool| -> (Vec<Vec<f32>>, Vec<usize>) {
            (0..self.labels.len())
                .filter(|&i| self.from_replay[i] == replay)
                .map(|i| (logits[i].clone(), self.labels[i]))
                .unzip()
        };
        let (cl, cy) = pick(false);
        let (rl, ry) = pick(true);
        (score(&cl, &cy), (!ry.is_empty()).then(|| score(&rl, &ry)))
    }

    fn captures(&self, logits: Vec<Vec<f32>>) -> (Vec<Vec<f32>>, Vec<usize>) {
        logits
            .into_iter()
            .zip(&self.labels)
            .zip(&self.from_replay)
            .filter(|(_, replay)| !**replay)
            .map(|((l, &y), _)| (l, y))
            .unzip()
    }
}

/// Each epoch sees every replay image once and the captures repeated to about
/// as many, so a few dozen captures are not drowned by the replay.
fn epoch_order(is_capture: &[bool], rng: &mut StdRng) -> Vec<usize> {
    let captures: Vec<usize> = (0..is_capture.len()).filter(|&i| is_capture[i]).collect();
    let replay: Vec<usize> = (0..is_capture.len()).filter(|&i| !is_capture[i]).collect();
    let repeat = (replay.len() as f64 / captures.len().max(1) as f64).round().max(1.0) as usize;
    let mut order: Vec<usize> = replay;
    for _ in 0..repeat {
        order.extend(&captures);
    }
    order.shuffle(rng);
    order
}

fn train_head(
    network: &Network,
    frozen: usize,
    features: &FeatureCache,
    labels: &[usize],
    is_capture: &[bool],
    options: &AdaptOptions,
) -> anyhow::Result<()> {
    Freeze::apply(frozen, network);
    let mut sgd = Sgd::new(network.store.trainable(), 0.9, 1e-4);
    let device = network.device().clone();
    let mut rng = StdRng::seed_from_u64(options.seed ^ 0x5EED);
    let all = network.stage_names().len();
    for epoch in 0..options.epochs {
        // Cosine decay: big steps first, then settle.
        let progress = epoch as f64 / options.epochs.max(1) as f64;
        let lr = options.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let view = &features.train[epoch % features.train.len()];
        let order = epoch_order(is_capture, &mut rng);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(options.batch_size.max(1)) {
            let x = stack(view, chunk, &device)?;
            let y = Tensor::new(chunk.iter().map(|&i| labels[i] as u32).collect::<Vec<_>>(), &device)?;
            let logits = network.head_t(&network.stages_t(&x, true, frozen..all)?)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            sgd.step(&loss.backward()?, lr)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
        }
        log::debug!("adapt epoch {}/{}: lr {lr:.2e} loss {:.4}", epoch + 1, options.epochs, loss_sum / order.len() as f64);
    }
    Ok(())
}

/// Eval-mode logits of the head for cached trunk outputs.
fn head_logits(network: &Network, features: &[Tensor], frozen: usize) -> anyhow::Result<Vec<Vec<f32>>> {
    let all = network.stage_names().len();
    let mut out = Vec::with_capacity(features.len());
    let indices: Vec<usize> = (0..features.len()).collect();
    for chunk in indices.chunks(64) {
        let x = stack(features, chunk, network.device())?;
        let logits = network.head_t(&network.stages_t(&x, false, frozen..all)?)?;
        out.extend(logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scaled.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

pub fn score(logits: &[Vec<f32>], labels: &[usize]) -> Score {
    let n = labels.len().max(1) as f64;
    let (mut right, mut nll) = (0usize, 0.0);
    for (l, &y) in logits.iter().zip(labels) {
        let p = softmax(l, 1.0);
        right += usize::from(argmax(&p) == y);
        nll -= p[y].max(1e-12).ln();
    }
    Score { accuracy: 100.0 * right as f64 / n, nll: nll / n }
}

fn nll_at(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> f64 {
    let total: f64 = logits.iter().zip(labels).map(|(l, &y)| -softmax(l, temperature)[y].max(1e-12).ln()).sum();
    total / labels.len().max(1) as f64
}

/// Temperatures searched. Below 1/4 a handful of right answers would make the
/// model far surer than any held-out set can justify.
pub const TEMPERATURE_RANGE: (f64, f64) = (0.25, 10.0);

/// The temperature T whose `softmax(logits / T)` has the lowest expected
/// calibration error, on a log-spaced grid over [`TEMPERATURE_RANGE`]; ties go
/// to the lower log loss. Calibration error rather than log loss is the
/// target because the threshold must mean what it says: on a trial bin the
/// log-loss optimum (T 1.69) made the cross-fitted error worse (0.079 ->
/// 0.101) while this fit lowered both (T 1.26: 0.063, log loss 0.625 vs 0.672).
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f64 {
    let (lo, hi) = (TEMPERATURE_RANGE.0.ln(), TEMPERATURE_RANGE.1.ln());
    (0..=80)
        .map(|k| (lo + (hi - lo) * f64::from(k) / 80.0).exp())
        .map(|t| (expected_calibration_error(logits, labels, t), nll_at(logits, labels, t), t))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map_or(1.0, |(_, _, t)| t)
}

/// Expected calibration error with 10 equal-width confidence bins: the mean gap
/// between confidence and accuracy, weighted by how many items fall in each bin.
pub fn expected_calibration_error(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> f64 {
    ece_of(&confidences(logits, labels, temperature))
}

/// (top-class confidence, whether it was right) per item.
fn confidences(logits: &[Vec<f32>], labels: &[usize], temperature: f64) -> Vec<(f64, bool)> {
    logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| {
            let p = softmax(l, temperature);
            let top = argmax(&p);
            (p[top], top == y)
        })
        .collect()
}

fn ece_of(items: &[(f64, bool)]) -> f64 {
    const BINS: usize = 10;
    let mut count = [0usize; BINS];
    let mut confidence = [0.0f64; BINS];
    let mut correct = [0.0f64; BINS];
    for &(c, right) in items {
        let bin = ((c * BINS as f64) as usize).min(BINS - 1);
        count[bin] += 1;
        confidence[bin] += c;
        correct[bin] += f64::from(u8::from(right));
    }
    let n = items.len().max(1) as f64;
    (0..BINS).filter(|&b| count[b] > 0).map(|b| (confidence[b] - correct[b]).abs() / n).sum()
}

/// Folds of the cross-fit below.
const FOLDS: usize = 5;

/// How well the temperature calibrates, measured honestly: each held-out capture
/// is scored with a temperature fitted on the other folds, and the error is
/// computed over all of them pooled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Fitted on all held-out captures: what the saved model uses. 1 when
    /// not fitted.
    pub temperature: f64,
    /// False when the held-out captures hold no mistake: they then only say
    /// "be surer", without limit, so the temperature stays 1.
    pub fitted: bool,
    /// Expected calibration error without scaling (T = 1).
    pub ece_before: f64,
    /// With scaling, cross-fitted.
    pub ece_after: f64,
    /// Mean negative log-likelihood of the right class, without scaling and
    /// with it (cross-fitted): steadier than the ECE on a few dozen items.
    pub nll_before: f64,
    pub nll_after: f64,
}

pub fn calibrate_confidence(logits: &[Vec<f32>], labels: &[usize]) -> Calibration {
    let ece_before = expected_calibration_error(logits, labels, 1.0);
    let nll_before = nll_at(logits, labels, 1.0);
    let all_right = confidences(logits, labels, 1.0).iter().all(|(_, right)| *right);
    if all_right || labels.len() < 2 {
        return Calibration {
            temperature: 1.0,
            fitted: false,
            ece_before,
            ece_after: ece_before,
            nll_before,
            nll_after: nll_before,
        };
    }
    let folds = FOLDS.min(labels.len()).max(1);
    let mut scaled = Vec::with_capacity(labels.len());
    let mut nll_sum = 0.0;
    for fold in 0..folds {
        let (fit_l, fit_y): (Vec<Vec<f32>>, Vec<usize>) =
            (0..labels.len()).filter(|i| folds == 1 || i % folds != fold).map(|i| (logits[i].clone(), labels[i])).unzip();
        let t = fit_temperature(&fit_l, &fit_y);
        let (l, y): (Vec<Vec<f32>>, Vec<usize>) =
            (0..labels.len()).filter(|i| i % folds == fold).map(|i| (logits[i].clone(), labels[i])).unzip();
        scaled.extend(confidences(&l, &y, t));
        nll_sum += nll_at(&l, &y, t) * y.len() as f64;
    }
    Calibration {
        temperature: fit_temperature(logits, labels),
        fitted: true,
        ece_before,
        ece_after: ece_of(&scaled),
        nll_before,
        nll_after: nll_sum / labels.len() as f64,
    }
}

/// A confidence threshold and what it does on the held-out captures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSuggestion {
    pub threshold: f64,
    /// Share of items sent to a wrong bin (not the fallback, not their own).
    pub wrong_bin: f64,
    /// Share of items sorted by the model (the rest go to the fallback bin).
    pub sorted: f64,
}

/// Fewer held-out captures than this say too little to suggest a threshold.
pub const MIN_ITEMS_FOR_THRESHOLD: usize = 20;
/// No suggestion goes below this: on a small held-out set "no mistakes
/// seen" is not "no mistakes".
pub const MIN_THRESHOLD: f64 = 0.3;

/// The lowest threshold (sorting the most items) at or above [`MIN_THRESHOLD`]
/// whose wrong-bin share on the held-out captures, counting one more mistake
/// than seen (a small set rarely shows the rare ones), is at most `target`.
/// `bin_of(class)` maps a class index to its bin, so a mix-up of two classes
/// sharing a bin costs nothing. `None` with too few captures.
pub fn suggest_threshold(
    logits: &[Vec<f32>],
    labels: &[usize],
    temperature: f64,
    bin_of: impl Fn(usize) -> String,
    target: f64,
) -> Option<ThresholdSuggestion> {
    if labels.len() < MIN_ITEMS_FOR_THRESHOLD {
        return None;
    }
    let n = labels.len() as f64;
    let items: Vec<(f64, bool)> = logits
        .iter()
        .zip(labels)
        .map(|(l, &y)| {
            let p = softmax(l, temperature);
            let top = argmax(&p);
            (p[top], bin_of(top) != bin_of(y))
        })
        .collect();
    let mut candidates: Vec<f64> = items.iter().map(|(c, _)| *c).filter(|c| *c >= MIN_THRESHOLD).collect();
    candidates.push(MIN_THRESHOLD);
    candidates.sort_by(f64::total_cmp);
    let outcome = |t: f64| {
        let sorted: Vec<&(f64, bool)> = items.iter().filter(|(c, _)| *c >= t).collect();
        let wrong = sorted.iter().filter(|(_, w)| *w).count() as f64;
        (wrong, sorted.len() as f64 / n)
    };
    for t in candidates {
        let (wrong, sorted) = outcome(t);
        if (wrong + 1.0) / n <= target {
            return Some(ThresholdSuggestion { threshold: t, wrong_bin: wrong / n, sorted });
        }
    }
    Some(ThresholdSuggestion { threshold: 1.0, wrong_bin: 0.0, sorted: 0.0 })
}

/// `per_class` images of each class from `samples`, spread over the listing.
pub fn replay_subset(samples: Vec<Sample>, per_class: usize) -> Vec<Sample> {
    let labels: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.label).collect();
    let mut out = Vec::new();
    for label in labels {
        let class: Vec<&Sample> = samples.iter().filter(|s| s.label == label).collect();
        let step = (class.len() as f64 / per_class.max(1) as f64).max(1.0);
        out.extend((0..per_class.min(class.len())).map(|k| class[(k as f64 * step) as usize].clone()));
    }
    out
}

/// Saves an adapted network beside its metadata: the starting file's entries,
/// the fitted temperature and the report.
pub fn save_adapted(
    path: &std::path::Path,
    network: &Network,
    start: &crate::model::checkpoint::Checkpoint,
    temperature: f64,
    report: &AdaptReport,
) -> anyhow::Result<()> {
    let dtype = start.weights.get("fc.weight").map_or(DType::F32, |t| t.dtype());
    let dtype = if dtype == DType::F16 { DType::F16 } else { DType::F32 };
    let mut meta: Vec<(&str, String)> = start
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != crate::model::checkpoint::META_SPEC && k.as_str() != crate::model::checkpoint::META_TEMPERATURE)
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    meta.push((crate::model::checkpoint::META_TEMPERATURE, format!("{temperature}")));
    meta.push(("smartbin.adapt_report", serde_json::to_string(report)?));
    crate::model::checkpoint::save(path, network, dtype, &Default::default(), &meta)
        .with_context(|| format!("saving the adapted model to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, AttentionKind, GateMix, ModelSpec};
    use rand::Rng;

    #[test]
    fn the_split_holds_out_part_of_every_class_that_has_two_or_more() {
        let samples: Vec<Sample> = (0..23)
            .map(|i| Sample { path: format!("{i}.png").into(), label: if i < 20 { i % 2 } else { 2 + i % 2 } })
            .collect();
        let (train, holdout) = split_captures(&samples, 0.3, 1);
        assert_eq!(train.len() + holdout.len(), 23);
        assert_eq!(holdout.iter().filter(|s| s.label == 0).count(), 3);
        assert_eq!(holdout.iter().filter(|s| s.label == 1).count(), 3);
        // class 2 has 2 images: one each; class 3 has one: it trains
        assert_eq!(holdout.iter().filter(|s| s.label == 2).count(), 1);
        assert_eq!(holdout.iter().filter(|s| s.label == 3).count(), 0);
        assert_eq!(split_captures(&samples, 0.3, 1).1, holdout, "the split is reproducible");
    }

    /// Over-confident logits: right 70% of the time, always ~99% sure.
    fn overconfident(n: usize) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(3);
        (0..n)
            .map(|i| {
                let y = i % 3;
                let guess = if rng.random::<f64>() < 0.7 { y } else { (y + 1) % 3 };
                let mut l = vec![0.0f32; 3];
                l[guess] = 6.0 + rng.random::<f32>();
                (l, y)
            })
            .unzip()
    }

    #[test]
    fn temperature_scaling_fixes_overconfidence() {
        let (logits, labels) = overconfident(400);
        let t = fit_temperature(&logits, &labels);
        assert!(t > 2.0, "an over-confident model is cooled: T = {t}");
        assert!(nll_at(&logits, &labels, t) < nll_at(&logits, &labels, 1.0));
        let c = calibrate_confidence(&logits, &labels);
        assert!(c.ece_before > 0.2 && c.ece_after < 0.08, "{c:?}");
        assert!(c.nll_after < c.nll_before / 2.0, "{c:?}");
    }

    #[test]
    fn the_threshold_keeps_wrong_bins_under_the_target() {
        // confident and right, or unsure and wrong: a threshold separates them
        let logits: Vec<Vec<f32>> = (0..40).map(|i| if i < 32 { vec![5.0, 0.0, 0.0] } else { vec![0.6, 0.5, 0.0] }).collect();
        let labels: Vec<usize> = (0..40).map(|i| if i < 32 { 0 } else { 2 }).collect();
        let bins = |c: usize| ["glass", "paper", "landfill"][c].to_string();
        let s = suggest_threshold(&logits, &labels, 1.0, bins, 0.05).unwrap();
        assert!(s.threshold > 0.45 && s.threshold <= 0.99, "{s:?}");
        assert_eq!((s.wrong_bin, s.sorted), (0.0, 0.8));
        // two classes in one bin: mixing them up is no wrong bin, all get sorted
        let same_bin = |c: usize| if c == 2 { "glass".into() } else { "glass".to_string() };
        let s = suggest_threshold(&logits, &labels, 1.0, same_bin, 0.05).unwrap();
        assert_eq!((s.threshold, s.sorted), (MIN_THRESHOLD, 1.0), "{s:?}");
        // too few captures: no suggestion
        assert!(suggest_threshold(&logits[..10], &labels[..10], 1.0, bins, 0.05).is_none());
    }

    #[test]
    fn a_held_out_set_without_mistakes_keeps_the_temperature() {
        let logits: Vec<Vec<f32>> = (0..30).map(|i| { let mut l = vec![0.0f32; 3]; l[i % 3] = 2.0; l }).collect();
        let labels: Vec<usize> = (0..30).map(|i| i % 3).collect();
        let c = calibrate_confidence(&logits, &labels);
        assert_eq!((c.temperature, c.fitted), (1.0, false));
        assert!(fit_temperature(&logits, &labels) >= TEMPERATURE_RANGE.0);
    }

    /// Small coloured "photos": each class a hue the trunk can tell apart.
    fn coloured_samples(dir: &std::path::Path, per_class: usize, classes: usize) -> Vec<Sample> {
        let mut out = Vec::new();
        for label in 0..classes {
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(40, 40, |x, y| {
                    let n = ((x * 13 + y * 7 + i as u32 * 29) % 31) as u8;
                    let mut p = [60u8 + n, 60 + n, 60 + n];
                    p[label % 3] = 200 - n;
                    if label >= 3 && (x + y) % 8 < 4 {
                        p = [30, 30, 30];
                    }
                    image::Rgb(p)
                });
                let path = dir.join(format!("{label}-{i}.png"));
                img.save(&path).unwrap();
                out.push(Sample { path, label });
            }
        }
        out
    }

    #[test]
    fn adapting_a_random_head_learns_the_captures_and_scores_them_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let samples = coloured_samples(dir.path(), 10, 4);
        let (train, holdout) = split_captures(&samples, 0.3, 0);
        let spec = ModelSpec {
            arch: Arch::Resnet18,
            att: AttentionKind::Ours,
            att_mix: GateMix::Sum,
            classes: (0..4).map(|c| c.to_string()).collect(),
            image_size: 32,
        };
        let network = Network::new(spec, &Device::Cpu, 7).unwrap();
        let options = AdaptOptions { epochs: 40, lr: 0.05, views: 2, batch_size: 8, ..AdaptOptions::default() };
        let adapted = adapt(&network, &train, &holdout, &[], &options).unwrap();
        let r = &adapted.report;
        assert_eq!((r.train_captures, r.holdout_captures, r.replay_images), (28, 12, 0));
        assert!(r.after.accuracy > r.before.accuracy && r.after.accuracy >= 90.0, "{r:?}");
        assert!(r.improved());
        assert_eq!(adapted.holdout_logits.len(), 12);
    }

    #[test]
    fn forgetting_the_replayed_classes_is_not_an_improvement() {
        let s = |accuracy| Score { accuracy, nll: 1.0 };
        let report = |replay_after| AdaptReport {
            train_captures: 10,
            holdout_captures: 5,
            replay_images: 10,
            replay_holdout: 6,
            before: s(60.0),
            after: s(80.0),
            replay_before: Some(s(90.0)),
            replay_after: Some(s(replay_after)),
            feature_seconds: 0.0,
            train_seconds: 0.0,
        };
        assert!(report(86.0).improved(), "within the tolerance");
        assert!(!report(80.0).improved(), "ten points lost on the old classes");
    }

    #[test]
    fn no_holdout_is_a_clear_error() {
        let spec = ModelSpec {
            arch: Arch::Resnet18,
            att: AttentionKind::None,
            att_mix: GateMix::Sum,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
        };
        let network = Network::new(spec, &Device::Cpu, 0).unwrap();
        let one = vec![Sample { path: "x.png".into(), label: 0 }];
        let err = adapt(&network, &one, &[], &[], &AdaptOptions::default()).unwrap_err();
        assert!(err.to_string().contains("at least 2 items"), "{err}");
    }

    #[test]
    fn replay_takes_a_spread_of_each_class() {
        let samples: Vec<Sample> = (0..30).map(|i| Sample { path: format!("{i}").into(), label: i / 10 }).collect();
        let subset = replay_subset(samples, 4);
        assert_eq!(subset.len(), 12);
        let firsts: Vec<String> = subset.iter().filter(|s| s.label == 0).map(|s| s.path.display().to_string()).collect();
        assert_eq!(firsts, ["0", "2", "5", "7"]);
    }
}
