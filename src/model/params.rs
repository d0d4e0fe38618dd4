//! A named parameter store with torchvision's dotted names (`layer1.0.conv1.weight`).
//!
//! Every tensor a model owns lives here, trainable or not (batch-norm running
//! statistics are buffers), so checkpoints are just this map plus metadata.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How a fresh parameter is filled (torchvision's defaults).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Const(f32),
    /// Kaiming normal, fan-out mode, ReLU gain: convolutions.
    KaimingFanOut { fan_out: usize },
    /// PyTorch's default for `nn.Linear` and `nn.Conv2d`: U(-1/√fan_in, 1/√fan_in).
    UniformFanIn { fan_in: usize },
}

#[derive(Debug, Clone)]
pub struct Param {
    pub var: Var,
    pub trainable: bool,
}

#[derive(Debug)]
struct Inner {
    params: BTreeMap<String, Param>,
    rng: StdRng,
    /// Quantized conv weights from the file, and whether a layer has taken each.
    quantized: BTreeMap<String, (Arc<QTensor>, bool)>,
}

/// Shared store; clones point at the same parameters.
#[derive(Debug, Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    /// Whether layers get the parameters as variables, so that every op on them is
    /// recorded for backprop (see [`ParamStore::inference_only`]).
    track_gradients: bool,
}

impl ParamStore {
    /// A store whose fresh parameters are drawn from `seed` in creation order, so the
    /// same architecture and seed always start from the same weights.
    pub fn new(device: &Device, seed: u64) -> Self {
        Self::with_quantized(device, seed, BTreeMap::new())
    }

    /// A store whose layers take these weights, already quantized, instead of
    /// creating f32 ones (see [`Scope::quantized`]).
    pub fn with_quantized(device: &Device, seed: u64, quantized: BTreeMap<String, Arc<QTensor>>) -> Self {
        let quantized = quantized.into_iter().map(|(name, t)| (name, (t, false))).collect();
        let inner = Inner { params: BTreeMap::new(), rng: StdRng::seed_from_u64(seed), quantized };
        Self { inner: Arc::new(Mutex::new(inner)), device: device.clone(), track_gradients: true }
    }

    /// Layers built on this store get their parameters detached from the variables
    /// (same storage, so loading still fills them), and a forward pass records no
    /// graph: each activation is freed as soon as the next layer has read it, instead
    /// of living until the output is dropped. Gradients with respect to an input
    /// variable still flow (Grad-CAM); the parameters themselves cannot be trained.
    pub fn inference_only(mut self) -> Self {
        self.track_gradients = false;
        self
    }

    /// The quantized weights, by name.
    pub fn quantized(&self) -> BTreeMap<String, Arc<QTensor>> {
        let inner = self.inner.lock().expect("parameter store poisoned");
        inner.quantized.iter().map(|(name, (t, _))| (name.clone(), t.clone())).collect()
    }

    /// Quantized weights no layer took: the file was written for another architecture.
    pub fn unused_quantized(&self) -> Option<String> {
        let inner = self.inner.lock().expect("parameter store poisoned");
        inner.quantized.iter().find(|(_, (_, used))| !used).map(|(name, _)| name.clone())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn root(&self) -> Scope {
        Scope { store: self.clone(), prefix: String::new() }
    }

    /// The tensor a layer computes with: the variable itself, or a detached view of
    /// its storage for an inference-only store.
    fn handle(&self, var: &Var) -> Tensor {
        if self.track_gradients { var.as_tensor().clone() } else { var.as_tensor().detach() }
    }

    fn create(&self, name: String, shape: Shape, init: Init, trainable: bool) -> Result<Var> {
        let mut inner = self.inner.lock().expect("parameter store poisoned");
        if let Some(p) = inner.params.get(&name) {
            return Ok(p.var.clone());
        }
        let n = shape.elem_count();
        let values: Vec<f32> = match init {
            Init::Const(v) => vec![v; n],
            Init::KaimingFanOut { fan_out } => {
                let normal = Normal::new(0.0, (2.0 / fan_out as f32).sqrt()).expect("valid std");
                (0..n).map(|_| normal.sample(&mut inner.rng)).collect()
            }
            Init::UniformFanIn { fan_in } => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| inner.rng.random_range(-bound..bound)).collect()
            }
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        inner.params.insert(name, Param { var: var.clone(), trainable });
        Ok(var)
    }

    /// All parameters by name (sorted).
    pub fn params(&self) -> BTreeMap<String, Param> {
        self.inner.lock().expect("parameter store poisoned").params.clone()
    }

    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.params().into_iter().filter(|(_, p)| p.trainable).map(|(n, p)| (n, p.var)).collect()
    }

    /// Number of trainable scalars (what papers report as "parameters").
    pub fn count_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Marks parameters trainable or frozen by name.
    pub fn set_trainable(&self, mut keep: impl FnMut(&str) -> bool) {
        let mut inner = self.inner.lock().expect("parameter store poisoned");
        for (name, p) in inner.params.iter_mut() {
            if !is_buffer(name) {
                p.trainable = keep(name);
            }
        }
    }

    /// Copies every tensor (converted to f32) into the matching parameter. Every parameter
    /// must be present with the same shape; unknown names are an error too, since they
    /// mean the file was written for a different architecture.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>) -> std::result::Result<(), LoadMismatch> {
        let params = self.params();
        for (name, p) in &params {
            let Some(t) = tensors.get(name) else {
                return Err(LoadMismatch::Missing(name.clone()));
            };
            if t.dims() != p.var.dims() {
                return Err(LoadMismatch::Shape {
                    key: name.clone(),
                    expected: p.var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(DType::F32).and_then(|t| t.to_device(&self.device));
            t.and_then(|t| p.var.set(&t)).map_err(|e| LoadMismatch::Tensor(name.clone(), e.to_string()))?;
        }
        if let Some(extra) = tensors.keys().find(|k| !params.contains_key(*k)) {
            return Err(LoadMismatch::Unexpected(extra.clone()));
        }
        Ok(())
    }
}

/// Why a set of tensors does not fit this model.
#[derive(Debug, thiserror::Error)]
pub enum LoadMismatch {
    #[error("tensor `{0}` is missing")]
    Missing(String),
    #[error("tensor `{0}` is not part of this architecture")]
    Unexpected(String),
    #[error("tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{0}`: {1}")]
    Tensor(String, String),
    /// A quantized weight that does not fit its layer (the message names it).
    #[error("{0}")]
    Quantized(String),
}

/// Batch-norm statistics are state, not weights: never trained, never decayed.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// A view of the store under a name prefix.
#[derive(Debug, Clone)]
pub struct Scope {
    store: ParamStore,
    prefix: String,
}

impl Scope {
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { store: self.store.clone(), prefix }
    }

    /// `name` with this scope's prefix: the key it has in model files.
    pub fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    pub fn param(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        Ok(self.store.handle(&self.store.create(self.full(name), shape.into(), init, true)?))
    }

    /// The quantized weight stored under `name`, if the file had one; the layer then
    /// runs quantized and has no f32 parameter of that name.
    pub fn quantized(&self, name: &str) -> Option<Arc<QTensor>> {
        let mut inner = self.store.inner.lock().expect("parameter store poisoned");
        let (t, used) = inner.quantized.get_mut(&self.full(name))?;
        *used = true;
        Some(t.clone())
    }

    /// State that is not trained but updated in place (batch-norm's running
    /// statistics): the store's own variable, so that loading and updates reach it.
    pub fn buffer(&self, shape: impl Into<Shape>, name: &str, value: f32) -> Result<Var> {
        self.store.create(self.full(name), shape.into(), Init::Const(value), false)
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }
}
