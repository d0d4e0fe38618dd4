//! Model files: safetensors holding every parameter, plus metadata with the
//! [`ModelSpec`] (architecture, attention, class names, input size) and, for training
//! checkpoints, the optimiser state and progress.

use super::params::{LoadMismatch, ParamStore};
use super::quant::{self, QuantInfo, QuantType, META_QUANTIZED};
use super::{ModelSpec, Network};
use candle_core::quantized::QTensor;
use candle_core::{safetensors::Load, DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Conv weights stored quantized (`smartbin quantize --dtype q8_0|q4k`).
    pub quantized: BTreeMap<String, Arc<QTensor>>,
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
    write(path, &weights, &network.store.quantized(), dtype, optim, meta)
}

/// Rewrites a model file's weights in `dtype`, dropping optimiser state (a smaller file
/// for the bin). Metadata, class names included, is kept, and so are weights that are
/// already quantized.
pub fn convert(input: &Path, output: &Path, dtype: DType) -> anyhow::Result<()> {
    let ckpt = read(input, &Device::Cpu)?;
    write(output, &ckpt.weights, &ckpt.quantized, dtype, &BTreeMap::new(), ckpt.metadata)
}

/// Rewrites a model file with its conv weights quantized to `dtype` (the rest f16),
/// dropping optimiser state. `calibration` photos, if any, measure each conv's input
/// so that 4-bit rounding favours the channels that matter. Quantizing a quantized
/// file is refused: the error would compound.
pub fn quantize(input: &Path, output: &Path, dtype: QuantType, calibration: &[image::RgbImage]) -> anyhow::Result<()> {
    let (original, ckpt) = load_for_inference(input, &Device::Cpu)?;
    if let Some(name) = ckpt.quantized.keys().next() {
        anyhow::bail!("{} is already quantized (`{name}`, ...): quantize its f32 or f16 original", input.display());
    }
    let importance = input_importance(&original, calibration)?;
    let (plain, quantized) = quant::quantize_weights(&ckpt.weights, dtype, &importance)?;
    // Loading it back proves every quantized tensor found its layer.
    let network = Network::with_store(ckpt.spec.clone(), ParamStore::with_quantized(&Device::Cpu, 0, quantized.clone()))?;
    fit(&network, &plain).map_err(|source| CheckpointError::Mismatch { path: input.into(), source })?;
    // The rest (batch-norm, depthwise, head) in f16: a rounding far below the blocks'.
    write(output, &plain, &quantized, DType::F16, &BTreeMap::new(), ckpt.metadata)
}

/// Per-channel mean squares of every conv input over `photos` (none: empty).
fn input_importance(network: &Network, photos: &[image::RgbImage]) -> candle_core::Result<quant::Importance> {
    let size = network.spec.image_size;
    quant::record_inputs(|| {
        for batch in photos.chunks(8) {
            let inputs: Vec<Vec<f32>> = batch.iter().map(|p| crate::preprocess::eval_transform(p, size)).collect();
            network.forward_t(&crate::preprocess::to_tensor(&inputs, size, network.device())?, false)?;
        }
        Ok(())
    })
}

fn write(
    path: &Path,
    weights: &BTreeMap<String, Tensor>,
    quantized: &BTreeMap<String, Arc<QTensor>>,
    dtype: DType,
    optim: &BTreeMap<String, Tensor>,
    mut meta: HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in weights {
        tensors.push((name.clone(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?));
    }
    for (name, t) in optim {
        tensors.push((format!("{OPTIM_PREFIX}{name}"), t.to_device(&Device::Cpu)?));
    }
    let mut infos = BTreeMap::new();
    for (name, t) in quantized {
        let bytes = t.data()?.into_owned();
        let len = bytes.len();
        tensors.push((name.clone(), Tensor::from_vec(bytes, len, &Device::Cpu)?));
        infos.insert(name.clone(), quant::info(t)?);
    }
    meta.remove(META_QUANTIZED);
    if !infos.is_empty() {
        meta.insert(META_QUANTIZED.to_string(), serde_json::to_string(&infos)?);
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
    let infos: BTreeMap<String, QuantInfo> = match metadata.get(META_QUANTIZED) {
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt(format!("bad `{META_QUANTIZED}` entry: {e}")))?,
        None => BTreeMap::new(),
    };
    let (mut weights, mut optim, mut quantized) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        if let Some(info) = infos.get(&name) {
            let t = quant::from_bytes(view.data(), info, device).map_err(|e| corrupt(format!("quantized tensor `{name}`: {e}")))?;
            quantized.insert(name, Arc::new(t));
            continue;
        }
        let t = view.load(device).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        match name.strip_prefix(OPTIM_PREFIX) {
            Some(rest) => optim.insert(rest.to_string(), t.to_dtype(DType::F32).map_err(|e| corrupt(e.to_string()))?),
            None => weights.insert(name, t),
        };
    }
    if let Some(name) = infos.keys().find(|n| !quantized.contains_key(*n)) {
        return Err(corrupt(format!("quantized tensor `{name}` is listed but missing")));
    }
    Ok(Checkpoint { spec, weights, quantized, optim, metadata })
}

/// Builds the network a file describes and loads its weights, ready to train.
pub fn load_network(path: &Path, device: &Device) -> Result<(Network, Checkpoint), CheckpointError> {
    load(path, device, true)
}

/// [`load_network`] for classifying only: its forward passes record no graph, so
/// activations are freed layer by layer (see [`ParamStore::inference_only`]).
pub fn load_for_inference(path: &Path, device: &Device) -> Result<(Network, Checkpoint), CheckpointError> {
    load(path, device, false)
}

fn load(path: &Path, device: &Device, trainable: bool) -> Result<(Network, Checkpoint), CheckpointError> {
    let ckpt = read(path, device)?;
    let store = ParamStore::with_quantized(device, 0, ckpt.quantized.clone());
    let store = if trainable { store } else { store.inference_only() };
    let network = Network::with_store(ckpt.spec.clone(), store).map_err(|e| match ckpt.quantized.is_empty() {
        true => CheckpointError::Corrupt { path: path.into(), reason: e.to_string() },
        false => CheckpointError::Mismatch { path: path.into(), source: LoadMismatch::Quantized(e.to_string()) },
    })?;
    fit(&network, &ckpt.weights).map_err(|source| CheckpointError::Mismatch { path: path.into(), source })?;
    Ok((network, ckpt))
}

/// Loads `weights` into `network`; every quantized weight must have found its layer.
fn fit(network: &Network, weights: &BTreeMap<String, Tensor>) -> Result<(), LoadMismatch> {
    network.store.load(weights)?;
    match network.store.unused_quantized() {
        Some(name) => Err(LoadMismatch::Unexpected(name)),
        None => Ok(()),
    }
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
    fn inference_load_gives_the_same_logits_without_a_graph() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let net = tiny(4);
        // Batch-norm statistics away from their defaults, so the file's must be used.
        net.forward_t(&Tensor::randn(1f32, 2., (2, 3, 32, 32), &Device::Cpu).unwrap(), true).unwrap();
        save(&path, &net, DType::F32, &BTreeMap::new(), &[]).unwrap();
        let (trainable, _) = load_network(&path, &Device::Cpu).unwrap();
        let (frozen, _) = load_for_inference(&path, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
        let (a, b) = (trainable.forward_t(&x, false).unwrap(), frozen.forward_t(&x, false).unwrap());
        let original: Vec<f32> = net.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), original);
        // The file's weights reached the detached tensors the layers hold.
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(a.track_op(), "a trainable network records its graph");
        assert!(!b.track_op(), "an inference network must not keep its activations alive");
        // Gradients with respect to an input still flow (Grad-CAM needs them).
        let input = candle_core::Var::from_tensor(&x).unwrap();
        let grads = frozen.forward_t(input.as_tensor(), false).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&input).is_some());
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

    fn logits(net: &Network, x: &Tensor) -> Tensor {
        net.forward_t(x, false).unwrap()
    }

    fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
        let rms = |t: &Tensor| -> f32 { t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar().unwrap() };
        rms(&(a - b).unwrap()) / rms(b)
    }

    /// On trained weights (the shipped default model) with a photo-like input: a
    /// random network's logits say little about quantization error.
    #[test]
    fn quantized_shipped_model_keeps_logits_close() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::model::DEFAULT_MODEL_PATH);
        let (net, _) = load_network(&shipped, &Device::Cpu).unwrap();
        let photo = image::RgbImage::from_fn(128, 96, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, ((x + y) % 200) as u8]));
        let size = net.spec.image_size;
        let x = crate::preprocess::to_tensor(&[crate::preprocess::eval_transform(&photo, size)], size, &Device::Cpu).unwrap();
        for (dtype, bound) in [(QuantType::Q8_0, 0.02), (QuantType::Q4K, 0.08)] {
            let path = dir.path().join(format!("{dtype}.safetensors"));
            quantize(&shipped, &path, dtype, &[photo.clone()]).unwrap();
            let (loaded, _) = load_network(&path, &Device::Cpu).unwrap();
            let err = relative_error(&logits(&loaded, &x), &logits(&net, &x));
            assert!(err < bound, "{dtype}: logits off by {err} relative");
        }
    }

    #[test]
    fn quantized_files_are_smaller_and_keep_metadata_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("f32.safetensors");
        let net = tiny(6);
        save(&full, &net, DType::F32, &BTreeMap::new(), &[("smartbin.temperature", "1.3".into())]).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
        for (dtype, size) in [(QuantType::Q8_0, 0.30), (QuantType::Q4K, 0.20)] {
            let path = dir.path().join(format!("{dtype}.safetensors"));
            quantize(&full, &path, dtype, &[]).unwrap();
            let ratio = std::fs::metadata(&path).unwrap().len() as f64 / std::fs::metadata(&full).unwrap().len() as f64;
            assert!(ratio < size, "{dtype}: file is {ratio:.2} of f32");
            let (loaded, ckpt) = load_network(&path, &Device::Cpu).unwrap();
            assert_eq!(ckpt.metadata["smartbin.temperature"], "1.3");
            assert_eq!(loaded.quantization(), Some(dtype));
            assert!(!loaded.store.params().contains_key("layer4.1.conv2.weight"), "{dtype}: conv weight left in f32");
            // Saving a quantized network (an adapted head) keeps its blocks bit for bit.
            let again = dir.path().join(format!("{dtype}-again.safetensors"));
            save(&again, &loaded, DType::F32, &BTreeMap::new(), &[]).unwrap();
            let (reloaded, _) = load_network(&again, &Device::Cpu).unwrap();
            assert_eq!(relative_error(&logits(&reloaded, &x), &logits(&loaded, &x)), 0.0);
            let twice = quantize(&path, &dir.path().join("twice.safetensors"), dtype, &[]).unwrap_err();
            assert!(twice.to_string().contains("already quantized"), "{twice}");
        }
    }

    #[test]
    fn broken_quantized_files_are_refused_with_the_tensor_named() {
        let dir = tempfile::tempdir().unwrap();
        let (full, q8) = (dir.path().join("f32.safetensors"), dir.path().join("q8.safetensors"));
        save(&full, &tiny(3), DType::F32, &BTreeMap::new(), &[]).unwrap();
        quantize(&full, &q8, QuantType::Q8_0, &[]).unwrap();
        let ckpt = read(&q8, &Device::Cpu).unwrap();

        // Blocks cut short, under the header that still promises them.
        let mut quantized = ckpt.quantized.clone();
        let name = "layer2.0.conv1.weight";
        let info = quant::info(&quantized[name]).unwrap();
        let cut = dir.path().join("cut.safetensors");
        let mut tensors: Vec<(String, Tensor)> = ckpt.weights.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        for (n, t) in &quantized {
            let mut bytes = t.data().unwrap().into_owned();
            if n == name {
                bytes.truncate(bytes.len() - 34);
            }
            let len = bytes.len();
            tensors.push((n.clone(), Tensor::from_vec(bytes, len, &Device::Cpu).unwrap()));
        }
        let infos: BTreeMap<String, QuantInfo> = quantized.iter().map(|(n, t)| (n.clone(), quant::info(t).unwrap())).collect();
        let mut meta = ckpt.metadata.clone();
        meta.insert(META_QUANTIZED.into(), serde_json::to_string(&infos).unwrap());
        std::fs::write(&cut, safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta)).unwrap()).unwrap();
        let err = read(&cut, &Device::Cpu).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }) && err.to_string().contains(name), "{err}");
        assert_eq!(info.rows, 128);

        // A quantized weight no layer of this architecture has.
        quantized.insert("layer9.0.conv1.weight".into(), quantized[name].clone());
        let foreign = dir.path().join("foreign.safetensors");
        write(&foreign, &ckpt.weights, &quantized, DType::F32, &BTreeMap::new(), ckpt.metadata.clone()).unwrap();
        let err = load_network(&foreign, &Device::Cpu).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { .. }) && err.to_string().contains("layer9.0.conv1.weight"), "{err}");

        // Blocks of the wrong layer: shapes are checked, and named.
        let mut swapped = ckpt.quantized.clone();
        swapped.insert("layer1.0.conv1.weight".into(), ckpt.quantized["layer4.0.conv2.weight"].clone());
        let wrong = dir.path().join("wrong.safetensors");
        write(&wrong, &ckpt.weights, &swapped, DType::F32, &BTreeMap::new(), ckpt.metadata).unwrap();
        let err = load_network(&wrong, &Device::Cpu).unwrap_err();
        assert!(matches!(err, CheckpointError::Mismatch { .. }) && err.to_string().contains("layer1.0.conv1.weight"), "{err}");
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
