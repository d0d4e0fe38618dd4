//! Accuracy, per-class accuracy and the confusion matrix of a model on a data set.

use super::data::{epoch_batches, ImageCache};
use crate::model::Network;
use candle_core::{Device, D};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub n: usize,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    pub classes: Vec<String>,
    /// Accuracy in percent per class (recall), by class name.
    pub per_class: std::collections::BTreeMap<String, f64>,
    /// `confusion[true][predicted]` counts, in `classes` order.
    pub confusion: Vec<Vec<usize>>,
}

/// A batch size for inference at `size`×`size` that keeps the largest activation
/// (~96 channels at half resolution) near 24 MiB: larger batches are no faster on a
/// CPU, only bigger (and on builds whose allocator maps big blocks afresh, slower).
pub fn inference_batch(size: u32) -> usize {
    let per_image = 96 * (size as usize / 2).pow(2) * 4;
    ((24 << 20) / per_image.max(1)).clamp(1, 32)
}

/// Runs `network` in eval mode over every image of `cache` (centre crops). Labels in
/// the cache must use the network's class order.
pub fn evaluate(network: &Network, cache: &ImageCache, batch_size: usize) -> anyhow::Result<EvalReport> {
    let batch_size = batch_size.min(inference_batch(network.spec.image_size));
    let classes = network.spec.classes.clone();
    let k = classes.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut loss_sum = 0.0;
    for batch in epoch_batches(cache, batch_size, network.spec.image_size, false, false, 0, 0) {
        let x = batch.images_tensor(network.device())?;
        let y = batch.labels_tensor(network.device())?;
        let logits = network.forward_t(&x, false)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * batch.len() as f64;
        let predicted: Vec<u32> = logits.argmax(D::Minus1)?.to_device(&Device::Cpu)?.to_vec1()?;
        for (&truth, &guess) in batch.labels.iter().zip(&predicted) {
            confusion[truth as usize][guess as usize] += 1;
        }
    }
    Ok(report(classes, confusion, loss_sum))
}

fn report(classes: Vec<String>, confusion: Vec<Vec<usize>>, loss_sum: f64) -> EvalReport {
    let n: usize = confusion.iter().flatten().sum();
    let correct: usize = (0..classes.len()).map(|i| confusion[i][i]).sum();
    let percent = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(i, name)| (name.clone(), percent(confusion[i][i], confusion[i].iter().sum())))
        .collect();
    EvalReport { n, top1: percent(correct, n), loss: loss_sum / n.max(1) as f64, classes, per_class, confusion }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "top-1 {:.2}% on {} images (loss {:.4})", self.top1, self.n, self.loss)?;
        let width = self.classes.iter().map(String::len).max().unwrap_or(5).max(9);
        write!(f, "{:>width$} {:>7} |", "class", "acc%")?;
        for c in &self.classes {
            write!(f, " {:>5.5}", c)?;
        }
        writeln!(f, "   (rows: truth, columns: predicted)")?;
        for (i, c) in self.classes.iter().enumerate() {
            write!(f, "{:>width$} {:>7.2} |", c, self.per_class[c])?;
            for count in &self.confusion[i] {
                write!(f, " {:>5}", count)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_accuracy_from_the_confusion_matrix() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = report(classes, vec![vec![3, 1], vec![0, 4]], 8.0);
        assert_eq!(r.n, 8);
        assert!((r.top1 - 87.5).abs() < 1e-9);
        assert!((r.per_class["a"] - 75.0).abs() < 1e-9 && (r.per_class["b"] - 100.0).abs() < 1e-9);
        assert!((r.loss - 1.0).abs() < 1e-9);
        assert!(r.to_string().contains("87.50%"));
    }
}
