//! From class probabilities to a bin.
//!
//! The K frames of one item are averaged (one blurry frame should not decide
//! alone), the most probable class wins, and the config maps it to a bin. When the
//! winner is not sure enough, or has no bin, the item goes to the fallback bin:
//! a wrong "landfill" costs less than contaminating a recycling bin.

use std::collections::BTreeMap;

use crate::config::DecisionConfig;

pub mod fill;

/// What to do with one item, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Most probable class after averaging.
    pub class: String,
    /// Its averaged probability.
    pub confidence: f32,
    /// The three most probable classes, most probable first.
    pub top3: Vec<(String, f32)>,
    pub bin: String,
    /// Human-readable rule that chose the bin, for the event log.
    pub reason: String,
}

/// The classifier output cannot be interpreted at all (a programming or model
/// mismatch, not an uncertain item).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecisionError {
    #[error("no frames to decide on")]
    NoFrames,
    #[error("frame {frame} has {got} probabilities but the model has {expected} classes")]
    WrongLength { frame: usize, got: usize, expected: usize },
}

/// The decision rules from `[decision]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionPolicy {
    pub threshold: f32,
    pub fallback_bin: String,
    pub classes: BTreeMap<String, String>,
}

impl DecisionPolicy {
    pub fn from_config(config: &DecisionConfig) -> Self {
        DecisionPolicy {
            threshold: config.threshold,
            fallback_bin: config.fallback_bin.clone(),
            classes: config.classes.clone(),
        }
    }

    /// Decides on one item from the per-frame probabilities (`frames[k][class]`).
    pub fn decide(
        &self,
        class_names: &[String],
        frames: &[Vec<f32>],
    ) -> Result<Decision, DecisionError> {
        let mean = average(frames, class_names.len())?;
        let top3 = ranked(class_names, &mean).into_iter().take(3).collect::<Vec<_>>();
        let Some((class, confidence)) = top3.first().cloned() else {
            // A model with no classes: nothing to map, send it to the fallback.
            return Ok(self.fallback(String::new(), 0.0, top3, "the model has no classes".into()));
        };
        if !confidence.is_finite() {
            let reason = format!("model output for {class} is not a number");
            return Ok(self.fallback(class, confidence, top3, reason));
        }
        if confidence < self.threshold {
            let reason = format!(
                "confidence {confidence:.2} < threshold {:.2} ({class})",
                self.threshold
            );
            return Ok(self.fallback(class, confidence, top3, reason));
        }
        match self.classes.get(&class) {
            Some(bin) => Ok(Decision {
                reason: format!("mapped: {class} -> {bin}"),
                bin: bin.clone(),
                class,
                confidence,
                top3,
            }),
            None => {
                let reason = format!("class {class} has no bin in [decision.classes]");
                Ok(self.fallback(class, confidence, top3, reason))
            }
        }
    }

    /// The bin an item of `class` goes to when the model is sure of it.
    pub fn bin_for_class(&self, class: &str) -> String {
        self.classes.get(class).cloned().unwrap_or_else(|| self.fallback_bin.clone())
    }

    /// Classes of a model that the mapping does not cover (they will always go to
    /// the fallback bin), and mapped classes the model does not have. Worth a
    /// warning at start-up: usually a model trained on other class names.
    pub fn coverage(&self, class_names: &[String]) -> (Vec<String>, Vec<String>) {
        let unmapped = class_names
            .iter()
            .filter(|c| !self.classes.contains_key(*c))
            .cloned()
            .collect();
        let unknown = self
            .classes
            .keys()
            .filter(|c| !class_names.contains(c))
            .cloned()
            .collect();
        (unmapped, unknown)
    }

    fn fallback(&self, class: String, confidence: f32, top3: Vec<(String, f32)>, why: String) -> Decision {
        Decision {
            reason: format!("{why}; fallback -> {}", self.fallback_bin),
            bin: self.fallback_bin.clone(),
            class,
            confidence,
            top3,
        }
    }
}

/// Mean probability per class over the frames of one item.
pub fn average(frames: &[Vec<f32>], classes: usize) -> Result<Vec<f32>, DecisionError> {
    if frames.is_empty() {
        return Err(DecisionError::NoFrames);
    }
    let mut sum = vec![0.0f32; classes];
    for (frame, probs) in frames.iter().enumerate() {
        if probs.len() != classes {
            return Err(DecisionError::WrongLength { frame, got: probs.len(), expected: classes });
        }
        for (s, p) in sum.iter_mut().zip(probs) {
            *s += p;
        }
    }
    let k = frames.len() as f32;
    Ok(sum.into_iter().map(|s| s / k).collect())
}

/// Classes by descending probability; ties keep model order. NaN sorts first so a
/// broken model output is never hidden behind a finite runner-up.
fn ranked(class_names: &[String], probs: &[f32]) -> Vec<(String, f32)> {
    let mut pairs: Vec<(String, f32)> =
        class_names.iter().cloned().zip(probs.iter().copied()).collect();
    pairs.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal),
    });
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn policy() -> DecisionPolicy {
        DecisionPolicy::from_config(&DecisionConfig::default())
    }

    #[test]
    fn confident_class_is_mapped_to_its_bin() {
        let d = policy()
            .decide(&names(), &[vec![0.05, 0.05, 0.1, 0.0, 0.7, 0.1]])
            .unwrap();
        assert_eq!((d.class.as_str(), d.bin.as_str()), ("plastic", "containers"));
        assert_eq!(d.reason, "mapped: plastic -> containers");
        assert!((d.confidence - 0.7).abs() < 1e-6);
        let top: Vec<&str> = d.top3.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(top, ["plastic", "metal", "trash"], "ties keep model order");
    }

    #[test]
    fn frames_are_averaged_before_the_arg_max() {
        // frame 1 alone says glass 0.9; frames 2 and 3 say metal 0.7: the mean
        // (metal 0.5, glass 0.37) picks metal
        let frames = vec![
            vec![0.0, 0.9, 0.1, 0.0, 0.0, 0.0],
            vec![0.0, 0.1, 0.7, 0.0, 0.2, 0.0],
            vec![0.0, 0.1, 0.7, 0.0, 0.2, 0.0],
        ];
        let mut p = policy();
        p.threshold = 0.4;
        let d = p.decide(&names(), &frames).unwrap();
        assert_eq!(d.class, "metal");
        assert!((d.confidence - 0.5).abs() < 1e-6, "{}", d.confidence);
        assert_eq!(d.top3[1].0, "glass");
        assert!((d.top3[1].1 - 1.1 / 3.0).abs() < 1e-6, "{:?}", d.top3);
        assert_eq!(d.bin, "containers");
    }

    #[test]
    fn low_confidence_goes_to_the_fallback_with_the_numbers() {
        let d = policy()
            .decide(&names(), &[vec![0.42, 0.38, 0.2, 0.0, 0.0, 0.0]])
            .unwrap();
        assert_eq!(d.class, "cardboard", "the class is still reported");
        assert_eq!(d.bin, "landfill");
        assert_eq!(d.reason, "confidence 0.42 < threshold 0.50 (cardboard); fallback -> landfill");
        // exactly at the threshold is confident enough
        let d = policy()
            .decide(&names(), &[vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
            .unwrap();
        assert_eq!(d.bin, "paper");
    }

    #[test]
    fn unmapped_class_goes_to_the_fallback() {
        let mut p = policy();
        p.classes.remove("glass");
        let d = p.decide(&names(), &[vec![0.0, 0.9, 0.1, 0.0, 0.0, 0.0]]).unwrap();
        assert_eq!(d.bin, "landfill");
        assert_eq!(d.reason, "class glass has no bin in [decision.classes]; fallback -> landfill");
        let (unmapped, unknown) = p.coverage(&names());
        assert_eq!(unmapped, ["glass"]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn nan_output_goes_to_the_fallback() {
        let d = policy()
            .decide(&names(), &[vec![0.1, f32::NAN, 0.9, 0.0, 0.0, 0.0]])
            .unwrap();
        assert_eq!(d.bin, "landfill");
        assert!(d.reason.contains("not a number"), "{}", d.reason);
    }

    #[test]
    fn malformed_output_is_an_error() {
        assert_eq!(policy().decide(&names(), &[]), Err(DecisionError::NoFrames));
        assert_eq!(
            policy().decide(&names(), &[vec![1.0; 6], vec![1.0; 5]]),
            Err(DecisionError::WrongLength { frame: 1, got: 5, expected: 6 })
        );
    }
}
