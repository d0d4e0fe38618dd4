//! The trained network behind the [`Classifier`] trait used by the sorter and `predict`.

use super::{checkpoint, Classifier, Network};
use crate::preprocess;
use candle_core::{Device, D};
use std::path::Path;

/// A loaded model plus its preprocessing.
#[derive(Debug)]
pub struct ModelClassifier {
    pub network: Network,
    /// Logits are divided by this before the softmax (confidence calibration).
    pub temperature: f32,
}

impl ModelClassifier {
    pub fn load(path: &Path, device: &Device) -> Result<Self, checkpoint::CheckpointError> {
        let (network, ckpt) = checkpoint::load_for_inference(path, device)?;
        let temperature = match ckpt.metadata.get(checkpoint::META_TEMPERATURE) {
            None => 1.0,
            Some(text) => text.parse::<f32>().ok().filter(|t| t.is_finite() && *t > 0.0).ok_or_else(|| {
                checkpoint::CheckpointError::Corrupt {
                    path: path.into(),
                    reason: format!("{} = {text:?} is not a positive number", checkpoint::META_TEMPERATURE),
                }
            })?,
        };
        Ok(Self { network, temperature })
    }
}

impl Classifier for ModelClassifier {
    fn class_names(&self) -> &[String] {
        &self.network.spec.classes
    }

    fn classify(&mut self, images: &[image::RgbImage]) -> anyhow::Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.network.spec.image_size;
        let inputs: Vec<Vec<f32>> = images.iter().map(|img| preprocess::eval_transform(img, size)).collect();
        let x = preprocess::to_tensor(&inputs, size, self.network.device())?;
        let logits = self.network.forward_t(&x, false)?;
        let logits = if self.temperature == 1.0 { logits } else { (logits / f64::from(self.temperature))? };
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
        Ok(probs.to_device(&Device::Cpu)?.to_vec2()?)
    }
}

/// Loads a model file for the sorter on `device` (`cpu`, `cuda`, `cuda:N`).
pub fn load_classifier(path: &Path, device: &str) -> anyhow::Result<Box<dyn Classifier + Send>> {
    Ok(Box::new(ModelClassifier::load(path, &super::parse_device(device)?)?))
}
