//! Model files: safetensors holding every parameter, plus metadata with the
//! [`ModelSpec`] (architecture, attention, class names, input size) and, for training
//! checkpoints, the optimiser state and progress.

use super::{params::LoadMismatch, ModelSpec, Network};
use candle_core::{safetensors::Load, DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const META_SPEC: &str = "smartbin.spec";
/// Softmax temperature fitted by `smartbin calibrate model`; 1 when absent.
pub const META_TEMPERATURE: &str = "smartbin.temperature";
/// Tensors under this prefix are optimiser state, not model weights.
pub const OPTIM_PREFIX: &str = "optim.";

/// What can go wrong reading a model file. Callers tell "file is broken" apart from
/// "file is fine but for another model".
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read model file {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model file {path} is corrupt or truncated (not a complete safetensors file): {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is a safetensors file but not a smartbin model (no `{META_SPEC}` metadata): {reason}")]
    NotSmartbin { path: PathBuf, reason: String },
    #[error("model file {path} does not match its architecture: {source}")]
    Mismatch { path: PathBuf, source: LoadMismatch },
}

/// A file's contents, split into weights, optimiser state and metadata.
#[derive(Debug)]
pub struct Checkpoint {
    pub spec: ModelSpec,
    pub weights: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Writes `network`'s weights (in `dtype`), optional optimiser tensors and extra
/// metadata atomically to `path`.
pub fn save(
    path: &Path,
    network: &Network,
    dtype: DType,
    optim: &BTreeMap<String, Tensor>,
    extra_meta: &[(&str, String)],
) -> anyhow::Result<()> {
    let weights: BTreeMap<String, Tensor> =
        network.store.params().into_iter().map(|(name, p)| (name, p.var.as_tensor().clone())).collect();
    let mut meta = HashMap::from([(META_SPEC.to_string(), serde_json::to_string(&network.spec)?)]);
    meta.extend(extra_meta.iter().map(|(k, v)| (k.to_string(), v.clone())));
    write(path, &weights, dtype, optim, meta)
}

/// Rewrites a model file's weights in `dtype`, dropping optimiser state (a smaller file
/// for the bin). Metadata, class names included, is kept.
pub fn convert(input: &Path, output: &Path, dtype: DType) -> anyhow::Result<()> {
    let ckpt = read(input, &Device::Cpu)?;
    write(output, &ckpt.weights, dtype, &BTreeMap::new(), ckpt.metadata)
}

fn write(
    path: &Path,
    weights: &BTreeMap<String, Tensor>,
    dtype: DType,
    optim: &BTreeMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in weights {
        tensors.push((name.clone(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?));
    }
    for (name, t) in optim {
        tensors.push((format!("{OPTIM_PREFIX}{name}"), t.to_device(&Device::Cpu)?));
    }
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))?;
    crate::util::write_atomic(path, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// A model file's metadata, reading only its header (not the tensors).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.into(), source };
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| corrupt(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(corrupt(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| corrupt(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| corrupt(e.to_string()))?;
    Ok(serde_json::from_value(json["__metadata__"].clone()).unwrap_or_default())
}

/// The spec in a model file's header (without reading its tensors).
pub fn read_spec(path: &Path) -> Result<ModelSpec, CheckpointError> {
    let metadata = read_metadata(path)?;
    let not_ours = |reason: String| CheckpointError::NotSmartbin { path: path.into(), reason };
    let json = metadata.get(META_SPEC).ok_or_else(|| not_ours("metadata key missing".into()))?;
    serde_json::from_str(json).map_err(|e| not_ours(format!("bad spec: {e}")))
}

/// Reads and validates a model file's structure (not yet its fit to a network).
pub fn read(path: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.into(), reason };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let not_ours = |reason: String| CheckpointError::NotSmartbin { path: path.into(), reason };
    let spec_json = metadata.get(META_SPEC).ok_or_else(|| not_ours("metadata key missing".into()))?;
    let spec: ModelSpec = serde_json::from_str(spec_json).map_err(|e| not_ours(format!("bad spec: {e}")))?;
    if spec.classes.is_empty() || !(16..=2048).contains(&spec.image_size) {
        return Err(not_ours(format!("implausible spec: {} classes, image size {}", spec.classes.len(), spec.image_size)));
    }
    let (mut weights, mut optim) = (BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        let t = view.load(device).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        match name.strip_prefix(OPTIM_PREFIX) {
            Some(rest) => optim.insert(rest.to_string(), t.to_dtype(DType::F32).map_err(|e| corrupt(e.to_string()))?),
            None => weights.insert(name, t),
        };
    }
    Ok(Checkpoint { spec, weights, optim, metadata })
}

/// Builds the network a file describes and loads its weights.
pub fn load_network(path: &Path, device: &Device) -> Result<(Network, Checkpoint), CheckpointError> {
    let ckpt = read(path, device)?;
    let network = Network::new(ckpt.spec.clone(), device, 0)
        .map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
    network.store.load(&ckpt.weights).map_err(|source| CheckpointError::Mismatch { path: path.into(), source })?;
    Ok((network, ckpt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, AttentionKind, GateMix};

    fn tiny(classes: usize) -> Network {
        let spec = ModelSpec {
            arch: Arch::Resnet18,
            att: AttentionKind::Ours,
            att_mix: GateMix::Sum,
            classes: (0..classes).map(|i| format!("class{i}")).collect(),
            image_size: 32,
        };
        Network::new(spec, &Device::Cpu, 3).unwrap()
    }

    #[test]
    fn round_trip_keeps_weights_classes_and_optimiser_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let net = tiny(3);
        let optim = BTreeMap::from([("fc.weight".to_string(), Tensor::ones((3, 512), DType::F32, &Device::Cpu).unwrap())]);
        save(&path, &net, DType::F32, &optim, &[("smartbin.epoch", "4".into())]).unwrap();
        let (loaded, ckpt) = load_network(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.spec, net.spec);
        assert_eq!(ckpt.metadata["smartbin.epoch"], "4");
        assert_eq!(ckpt.optim["fc.weight"].dims(), &[3, 512]);
        let x = Tensor::randn(0f32, 1., (1, 3, 32, 32), &Device::Cpu).unwrap();
        let a: Vec<f32> = net.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = loaded.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn f16_conversion_halves_the_file_and_keeps_predictions_close() {
        let dir = tempfile::tempdir().unwrap();
        let (full, half) = (dir.path().join("f32.safetensors"), dir.path().join("f16.safetensors"));
        let net = tiny(6);
        save(&full, &net, DType::F32, &BTreeMap::new(), &[]).unwrap();
        convert(&full, &half, DType::F16).unwrap();
        let ratio = std::fs::metadata(&half).unwrap().len() as f64 / std::fs::metadata(&full).unwrap().len() as f64;
        assert!(ratio < 0.55, "f16 file is {ratio:.2} of f32");
        let (loaded, _) = load_network(&half, &Device::Cpu).unwrap();
        assert_eq!(loaded.spec.classes, net.spec.classes);
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
        let a = net.forward_t(&x, false).unwrap();
        let b = loaded.forward_t(&x, false).unwrap();
        let diff: f32 = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(diff < 1e-2, "f16 logits differ by {diff}");
    }

    #[test]
    fn truncated_mismatched_and_foreign_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save(&path, &tiny(3), DType::F16, &BTreeMap::new(), &[]).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let truncated = dir.path().join("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(read(&truncated, &Device::Cpu), Err(CheckpointError::Corrupt { .. })));

        let foreign = dir.path().join("foreign.safetensors");
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("x".to_string(), t)]), &foreign).unwrap();
        assert!(matches!(read(&foreign, &Device::Cpu), Err(CheckpointError::NotSmartbin { .. })));

        // Same header claims 3 classes, but the head is swapped for a 5-class one.
        let mut ckpt = read(&path, &Device::Cpu).unwrap();
        ckpt.weights.insert("fc.bias".into(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap());
        let err = tiny(3).store.load(&ckpt.weights).unwrap_err();
        assert!(err.to_string().contains("fc.bias") && err.to_string().contains("[5]"), "{err}");

        let missing = dir.path().join("nope.safetensors");
        assert!(matches!(read(&missing, &Device::Cpu), Err(CheckpointError::Io { .. })));
    }
}
