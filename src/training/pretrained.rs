//! Starting a network from someone else's weights (ImageNet backbones, other runs).
//!
//! Takes any file [`read_weights`] reads (safetensors, PyTorch zip or legacy `.pth`,
//! recognised by content) whose names follow the network's layout (torchvision's for
//! ResNets: timm's `resnet18.tv_in1k`, torchvision's `resnet18-f37072fd.pth`, a
//! smartbin model, a RecycleNet checkpoint with its `state_dict` and `module.` prefix).

use crate::model::import::read_weights;
use crate::model::Network;
use anyhow::{bail, Context};
use candle_core::DType;
use std::path::Path;

/// What [`load_pretrained`] did, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// In the network but not in the file (freshly initialised: e.g. the attention).
    pub missing: Vec<String>,
    /// In the file but not in the network.
    pub ignored: Vec<String>,
    /// The classifier head (`fc` / `_fc`), skipped because the class count differs.
    pub new_head: Vec<String>,
}

/// Copies every tensor of `path` whose name matches a parameter of `network`. Shape
/// mismatches are refused, except for the `fc` head when the class count differs.
pub fn load_pretrained(network: &Network, path: &Path) -> anyhow::Result<LoadReport> {
    refuse_quantized(path)?;
    let tensors = read_weights(path).with_context(|| format!("cannot import weights from {}", path.display()))?;
    let params = network.store.params();
    let mut report = LoadReport::default();
    let mut seen = std::collections::HashSet::new();
    for (name, tensor) in tensors {
        let Some(param) = params.get(&name) else {
            report.ignored.push(name);
            continue;
        };
        seen.insert(name.clone());
        if tensor.dims() != param.var.dims() {
            if name.starts_with("fc.") || name.starts_with("_fc.") {
                report.new_head.push(name);
                continue;
            }
            bail!("{}: `{name}` has shape {:?}, the model expects {:?}", path.display(), tensor.dims(), param.var.dims());
        }
        param.var.set(&tensor.to_dtype(DType::F32)?.to_device(network.device())?)?;
        report.loaded.push(name);
    }
    report.new_head.sort();
    report.missing = params.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    if report.loaded.is_empty() {
        bail!("{}: no tensor name matches this architecture (expected torchvision names like conv1.weight)", path.display());
    }
    Ok(report)
}

/// Quantized blocks would import as byte vectors; say what to do instead.
fn refuse_quantized(path: &Path) -> anyhow::Result<()> {
    let quantized = crate::model::checkpoint::read_metadata(path)
        .is_ok_and(|meta| meta.contains_key(crate::model::quant::META_QUANTIZED));
    if quantized {
        bail!("{} is a quantized model: train from its f32 or f16 original (quantize after training)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, AttentionKind, GateMix, ModelSpec};
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;

    fn net(att: AttentionKind, classes: usize) -> Network {
        let spec = ModelSpec { arch: Arch::Resnet18, att, att_mix: GateMix::Sum, classes: (0..classes).map(|i| i.to_string()).collect(), image_size: 32 };
        Network::new(spec, &Device::Cpu, 5).unwrap()
    }

    #[test]
    fn imagenet_style_file_fills_the_backbone_and_leaves_head_and_attention_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imagenet.safetensors");
        // A "DataParallel" 1000-class ResNet-18 without attention.
        let source = net(AttentionKind::None, 1000);
        let tensors: HashMap<String, Tensor> = source.store.params().into_iter()
            .map(|(n, p)| (format!("module.{n}"), p.var.as_tensor().clone()))
            .chain([("module.bn1.num_batches_tracked".to_string(), Tensor::new(&[0i64], &Device::Cpu).unwrap())])
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();

        let target = net(AttentionKind::Ours, 6);
        let report = load_pretrained(&target, &path).unwrap();
        assert_eq!(report.new_head, vec!["fc.bias".to_string(), "fc.weight".to_string()]);
        assert!(report.ignored.contains(&"bn1.num_batches_tracked".to_string()));
        assert!(report.missing.iter().any(|k| k.starts_with("att.")));
        let a: Vec<f32> = source.store.params()["layer3.1.conv2.weight"].var.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = target.store.params()["layer3.1.conv2.weight"].var.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn pytorch_checkpoints_are_read_and_unknown_files_refused() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
        // A legacy .pth and a zip .pth are read (their tiny tensors fit no ResNet) …
        for file in ["legacy_nested.pth", "zip.pth"] {
            let err = load_pretrained(&net(AttentionKind::None, 6), &fixtures.join(file)).unwrap_err().to_string();
            assert!(err.contains("no tensor name matches"), "{file}: {err}");
        }
        // … and a file in no known format says so.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.pth");
        std::fs::write(&path, "not weights").unwrap();
        let err = format!("{:#}", load_pretrained(&net(AttentionKind::None, 6), &path).unwrap_err());
        assert!(err.contains("notes.pth") && err.contains("not a weights file"), "{err}");
    }

    #[test]
    fn backbone_shape_mismatch_is_refused_with_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        let t = Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("conv1.weight".to_string(), t)]), &path).unwrap();
        let err = load_pretrained(&net(AttentionKind::None, 6), &path).unwrap_err().to_string();
        assert!(err.contains("conv1.weight") && err.contains("[64, 3, 3, 3]") && err.contains("[64, 3, 7, 7]"), "{err}");
    }
}
