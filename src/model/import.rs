//! Reading weights written by other tools: safetensors, PyTorch zip checkpoints
//! (torch >= 1.6) and PyTorch legacy checkpoints (pre-1.6, e.g. torchvision's
//! `resnet18-5c106cde.pth` or `../shared/pretrained/efficientnet-lite0-57934424.pth`).
//!
//! The format is recognised from the bytes, never from the file name:
//!
//! | format | recognised by | layout |
//! |---|---|---|
//! | safetensors | 8-byte header length, then `{` | JSON header, raw little-endian data |
//! | PyTorch zip | `PK\x03\x04` | `<dir>/data.pkl` (the pickled object), `<dir>/data/<key>` (one raw storage per entry), `<dir>/byteorder`, `<dir>/version` |
//! | PyTorch legacy | a pickle of the magic number `0x1950a86a20f9469cfc6c` | magic, protocol version (1001) and sys-info pickles, the pickled object, the pickled list of storage keys, then per key an 8-byte little-endian element count and the raw elements |
//!
//! In both PyTorch formats a tensor is pickled as
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
//! and its storage as the persistent id `('storage', torch.FloatStorage, key, location,
//! numel)` (legacy files add a sixth item, `None` or a storage view
//! `(view_key, offset, numel)`). Views (offsets and strides into a shared storage, e.g.
//! a transposed matrix or TensorFlow-ordered convolution kernels) are gathered into
//! contiguous tensors.
//!
//! **No pickled code is ever run.** The pickle opcodes are interpreted here, and a
//! `GLOBAL` may only name something on an allow-list ([`ALLOWED_GLOBALS`]): the
//! tensor/parameter rebuild functions, `collections.OrderedDict`, `torch.*Storage` types,
//! and a few data-only types seen in training checkpoints next to the state dict
//! (`argparse.Namespace`, numpy scalars, ...), which are kept as opaque values. Anything
//! else (`os.system`, a pickled `nn.Module`, a TorchScript archive) is
//! [`ImportError::Unsupported`].

use candle_core::{Device, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;

/// Why a weights file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read weights file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a weights file this program reads: expected safetensors, a PyTorch zip checkpoint (torch >= 1.6) or a legacy PyTorch checkpoint (pre-1.6); the format is recognised by content, not by name")]
    UnknownFormat,
    #[error("corrupt weights file: {reason}")]
    Corrupt { reason: String },
    #[error("unsupported weights file: {what}")]
    Unsupported { what: String },
}

type Res<T> = std::result::Result<T, ImportError>;

fn corrupt(reason: impl Into<String>) -> ImportError {
    ImportError::Corrupt { reason: reason.into() }
}

fn unsupported(what: impl Into<String>) -> ImportError {
    ImportError::Unsupported { what: what.into() }
}

/// The file formats [`read_weights`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// `torch.save` since torch 1.6: a zip archive.
    PytorchZip,
    /// `torch.save` before 1.6 (or with `_use_new_zipfile_serialization=False`).
    PytorchLegacy,
}

impl std::fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Safetensors => "safetensors",
            Self::PytorchZip => "PyTorch zip checkpoint",
            Self::PytorchLegacy => "PyTorch legacy checkpoint",
        })
    }
}

/// The globals a pickle may name. Everything else is refused before it is used.
/// The last group are data-only types that training scripts store beside the state
/// dict; they become opaque values and are never looked at.
pub const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "torch.<Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool>Storage",
    "_codecs.encode",
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "torch.torch_version.TorchVersion",
    "torch.device",
    "torch.Tensor",
    "builtins.set",
    "builtins.frozenset",
];

/// Data-only globals kept as opaque values (see [`ALLOWED_GLOBALS`]).
const OPAQUE_GLOBALS: &[(&str, &str)] = &[
    ("argparse", "Namespace"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("torch.torch_version", "TorchVersion"),
    ("torch", "device"),
    ("torch", "Tensor"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
];

/// `0x1950a86a20f9469cfc6c`, little-endian, as pickle's LONG1 stores it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Reads every tensor of a weights file, format detected by content (not name):
/// safetensors, PyTorch zip (torch >= 1.6) or PyTorch legacy (pre-1.6) .pth.
/// State dicts nested under `state_dict` or `model` are unwrapped and a leading
/// `module.` (DataParallel) is stripped from every key. Tensors come back on the CPU:
/// floating-point ones (f16, bf16, f32, f64) as f32; integer and bool ones (e.g.
/// batch-norm's `num_batches_tracked`) are kept, as i64, so callers can report them as
/// ignored. Non-tensor entries of the state dict are skipped.
pub fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>, ImportError> {
    let bytes = std::fs::read(path)?;
    read_weights_from_bytes(&bytes)
}

/// [`read_weights`] on a file already in memory.
pub fn read_weights_from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, ImportError> {
    match detect_format(bytes) {
        Some(WeightsFormat::Safetensors) => read_safetensors(bytes),
        Some(WeightsFormat::PytorchZip) => read_zip_checkpoint(bytes),
        Some(WeightsFormat::PytorchLegacy) => read_legacy_checkpoint(bytes),
        None => Err(ImportError::UnknownFormat),
    }
}

/// Which format `bytes` (a whole file, or at least its first few hundred bytes) is in.
pub fn detect_format(bytes: &[u8]) -> Option<WeightsFormat> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Some(WeightsFormat::PytorchZip);
    }
    if bytes.len() >= 10 && bytes[8] == b'{' {
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if (2..=100_000_000).contains(&header_len) {
            return Some(WeightsFormat::Safetensors);
        }
    }
    if bytes.first() == Some(&PROTO) {
        let mut first = Unpickler::new(bytes, 0);
        if matches!(first.load(), Ok(Value::BigInt(b)) if *b == LEGACY_MAGIC) {
            return Some(WeightsFormat::PytorchLegacy);
        }
    }
    None
}

// ---------------------------------------------------------------------------------
// Element types and tensor materialisation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F64 | Self::F32 | Self::F16 | Self::BF16)
    }

    /// Element `i` of little-endian storage `b` (the caller checked the bounds).
    fn f32_at(self, b: &[u8], i: usize) -> f32 {
        let n = self.size();
        let s = &b[i * n..(i + 1) * n];
        match self {
            Self::F64 => f64::from_le_bytes(s.try_into().expect("8 bytes")) as f32,
            Self::F32 => f32::from_le_bytes(s.try_into().expect("4 bytes")),
            Self::F16 => half::f16::from_le_bytes([s[0], s[1]]).to_f32(),
            Self::BF16 => half::bf16::from_le_bytes([s[0], s[1]]).to_f32(),
            _ => self.i64_at(b, i) as f32,
        }
    }

    fn i64_at(self, b: &[u8], i: usize) -> i64 {
        let n = self.size();
        let s = &b[i * n..(i + 1) * n];
        match self {
            Self::I64 => i64::from_le_bytes(s.try_into().expect("8 bytes")),
            Self::I32 => i32::from_le_bytes(s.try_into().expect("4 bytes")) as i64,
            Self::I16 => i16::from_le_bytes([s[0], s[1]]) as i64,
            Self::I8 => s[0] as i8 as i64,
            Self::U8 => s[0] as i64,
            Self::Bool => (s[0] != 0) as i64,
            _ => self.f32_at(b, i) as i64,
        }
    }
}

/// A tensor as pickled: a strided view into a storage.
#[derive(Debug)]
struct TensorRef {
    /// Root storage key (`archive/data/<key>` or a legacy storage key).
    key: Rc<str>,
    elem: Elem,
    /// In elements, from the start of the root storage.
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// More than any sane weights file holds; a guard against `size` lying with stride 0.
const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// Copies the (possibly strided) view `t` out of its storage `bytes`.
fn materialize(name: &str, t: &TensorRef, bytes: &[u8]) -> Res<Tensor> {
    let overflow = || corrupt(format!("tensor `{name}`: size {:?} / stride {:?} overflow", t.size, t.stride));
    let numel = t.size.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or_else(overflow)?;
    if numel > MAX_TENSOR_ELEMENTS {
        return Err(unsupported(format!("tensor `{name}` has {numel} elements (size {:?})", t.size)));
    }
    let available = bytes.len() / t.elem.size();
    if numel > 0 {
        let mut last = t.offset;
        for (&s, &st) in t.size.iter().zip(&t.stride) {
            last = (s - 1).checked_mul(st).and_then(|x| x.checked_add(last)).ok_or_else(overflow)?;
        }
        if last >= available {
            return Err(corrupt(format!(
                "tensor `{name}` (offset {}, size {:?}, stride {:?}) reads element {last} of storage `{}`, which holds {available} (truncated data?)",
                t.offset, t.size, t.stride, t.key
            )));
        }
    }
    let shape = t.size.clone();
    let made = if t.elem.is_float() {
        Tensor::from_vec(gather(t, numel, |i| t.elem.f32_at(bytes, i)), shape, &Device::Cpu)
    } else {
        Tensor::from_vec(gather(t, numel, |i| t.elem.i64_at(bytes, i)), shape, &Device::Cpu)
    };
    made.map_err(|e| corrupt(format!("tensor `{name}`: {e}")))
}

/// Values of `t` in row-major order; `at(i)` reads storage element `i`.
fn gather<T>(t: &TensorRef, numel: usize, mut at: impl FnMut(usize) -> T) -> Vec<T> {
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    let rank = t.size.len();
    if rank == 0 {
        out.push(at(t.offset));
        return out;
    }
    let last = rank - 1;
    let (inner, inner_stride) = (t.size[last], t.stride[last]);
    let mut index = vec![0usize; last];
    loop {
        let base = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend((0..inner).map(|j| at(base + j * inner_stride)));
        // odometer over the outer dimensions
        let mut d = last;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// Adds a tensor under its name without a leading `module.`.
fn insert(out: &mut BTreeMap<String, Tensor>, raw_name: &str, tensor: Tensor) -> Res<()> {
    let name = raw_name.strip_prefix("module.").unwrap_or(raw_name);
    if out.insert(name.to_string(), tensor).is_some() {
        return Err(corrupt(format!("two tensors are named `{name}` once a leading `module.` is removed")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// safetensors

fn read_safetensors(bytes: &[u8]) -> Res<BTreeMap<String, Tensor>> {
    use safetensors::Dtype;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if 8 + header_len > bytes.len() as u64 {
        return Err(corrupt(format!(
            "safetensors header claims {header_len} bytes but the file has only {} (truncated?)",
            bytes.len()
        )));
    }
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("safetensors: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.iter() {
        let elem = match view.dtype() {
            Dtype::F64 => Elem::F64,
            Dtype::F32 => Elem::F32,
            Dtype::F16 => Elem::F16,
            Dtype::BF16 => Elem::BF16,
            Dtype::I64 => Elem::I64,
            Dtype::I32 => Elem::I32,
            Dtype::I16 => Elem::I16,
            Dtype::I8 => Elem::I8,
            Dtype::U8 => Elem::U8,
            Dtype::BOOL => Elem::Bool,
            other => return Err(unsupported(format!("tensor `{name}` has dtype {other:?}"))),
        };
        let size = view.shape().to_vec();
        let mut stride = vec![1usize; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        let t = TensorRef { key: Rc::from(name), elem, offset: 0, size, stride };
        insert(&mut out, name, materialize(name, &t, view.data())?)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// PyTorch: legacy and zip containers

fn read_legacy_checkpoint(bytes: &[u8]) -> Res<BTreeMap<String, Tensor>> {
    let mut pos = 0;
    let mut next_pickle = |what: &str| -> Res<(Value, HashMap<Rc<str>, Elem>)> {
        let mut p = Unpickler::new(bytes, pos);
        let value = p.load().map_err(|e| match e {
            ImportError::Corrupt { reason } => corrupt(format!("legacy checkpoint, {what}: {reason}")),
            other => other,
        })?;
        pos = p.pos;
        Ok((value, p.storages))
    };
    match next_pickle("magic number")?.0 {
        Value::BigInt(b) if *b == LEGACY_MAGIC => {}
        _ => return Err(ImportError::UnknownFormat),
    }
    match next_pickle("protocol version")?.0 {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => return Err(unsupported(format!("legacy checkpoint protocol version {} (expected 1001)", other.describe()))),
    }
    let sys_info = next_pickle("system info")?.0;
    if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
        return Err(unsupported("a big-endian legacy checkpoint"));
    }
    let (object, storages) = next_pickle("pickled object")?;
    let Value::List(keys) = next_pickle("storage keys")?.0 else {
        return Err(corrupt("legacy checkpoint: the storage-key list is not a list"));
    };
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else {
            return Err(corrupt(format!("legacy checkpoint: storage key is a {}", key.describe())));
        };
        let elem = *storages
            .get(key)
            .ok_or_else(|| corrupt(format!("legacy checkpoint: storage `{key}` has data but nothing uses it")))?;
        let left = bytes.len() - pos;
        if left < 8 {
            return Err(corrupt(format!("legacy checkpoint: the file ends before storage `{key}` (truncated?)")));
        }
        let count = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
        let nbytes = count.checked_mul(elem.size() as u64).filter(|&n| n <= (left - 8) as u64).ok_or_else(|| {
            corrupt(format!(
                "legacy checkpoint: storage `{key}` needs {count} × {} bytes but only {} are left (truncated?)",
                elem.size(),
                left - 8
            ))
        })? as usize;
        data.insert(key.to_string(), &bytes[pos + 8..pos + 8 + nbytes]);
        pos += 8 + nbytes;
    }
    let tensors = select_tensors(object)?;
    let mut out = BTreeMap::new();
    for (name, t) in &tensors {
        let bytes = data
            .get(&*t.key)
            .ok_or_else(|| corrupt(format!("legacy checkpoint: storage `{}` of tensor `{name}` has no data", t.key)))?;
        insert(&mut out, name, materialize(name, t, bytes)?)?;
    }
    Ok(out)
}

fn read_zip_checkpoint(bytes: &[u8]) -> Res<BTreeMap<String, Tensor>> {
    let zip = Zip::parse(bytes)?;
    let Some(pkl) = zip
        .names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| (n.len(), n.to_string()))
    else {
        return Err(ImportError::UnknownFormat); // a zip, but not a PyTorch checkpoint
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(order) = zip.read(&format!("{prefix}byteorder"))? {
        if order.trim_ascii() == b"big" {
            return Err(unsupported("a big-endian PyTorch checkpoint"));
        }
    }
    let pickle = zip.read(pkl)?.expect("listed entry");
    let mut p = Unpickler::new(pickle, 0);
    let object = p.load().map_err(|e| match e {
        ImportError::Corrupt { reason } => corrupt(format!("{pkl}: {reason}")),
        other => other,
    })?;
    let tensors = select_tensors(object)?;
    let keys: BTreeSet<&str> = tensors.iter().map(|(_, t)| &*t.key).collect();
    let mut data = HashMap::new();
    for key in keys {
        let entry = format!("{prefix}data/{key}");
        let bytes = zip
            .read(&entry)?
            .ok_or_else(|| corrupt(format!("storage `{key}`: archive entry `{entry}` is missing")))?;
        data.insert(key, bytes);
    }
    let mut out = BTreeMap::new();
    for (name, t) in &tensors {
        insert(&mut out, name, materialize(name, t, data[&*t.key])?)?;
    }
    Ok(out)
}

/// The state dict inside a checkpoint: the object itself, or what it holds under
/// `state_dict` or `model` (nested up to four levels); its tensor entries.
fn select_tensors(object: Value) -> Res<Vec<(String, Rc<TensorRef>)>> {
    let mut current = object;
    for _ in 0..4 {
        let next = match &current {
            Value::Dict(d) => ["state_dict", "model"].iter().find_map(|wanted| {
                d.borrow()
                    .iter()
                    .find(|(k, v)| matches!(k, Value::Str(k) if &**k == *wanted) && matches!(v, Value::Dict(_)))
                    .map(|(_, v)| v.clone())
            }),
            _ => None,
        };
        match next {
            Some(inner) => current = inner,
            None => break,
        }
    }
    let Value::Dict(d) = &current else {
        return Err(unsupported(format!("the checkpoint holds a {}, not a dict of tensors", current.describe())));
    };
    let entries = d.borrow();
    let tensors: Vec<_> = entries
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some((k.to_string(), t.clone())),
            _ => None,
        })
        .collect();
    if tensors.is_empty() {
        let keys: Vec<String> = entries.iter().take(12).map(|(k, _)| k.describe()).collect();
        return Err(unsupported(format!("no tensors in the checkpoint's dict (keys: {})", keys.join(", "))));
    }
    Ok(tensors)
}

// ---------------------------------------------------------------------------------
// A minimal zip reader: central directory (zip64 too), stored entries, CRC-checked.

struct Zip<'a> {
    data: &'a [u8],
    entries: Vec<(String, ZipEntry)>,
}

#[derive(Clone, Copy)]
struct ZipEntry {
    method: u16,
    flags: u16,
    crc: u32,
    size: u64,
    local: u64,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Zip<'a> {
    fn parse(data: &'a [u8]) -> Res<Self> {
        let bad = |what: &str| corrupt(format!("zip archive: {what}"));
        let lowest = data.len().saturating_sub(22 + 65535);
        let eocd = (lowest..=data.len().saturating_sub(22))
            .rev()
            .find(|&i| data[i..].starts_with(b"PK\x05\x06"))
            .ok_or_else(|| bad("no end-of-central-directory record (truncated file?)"))?;
        let mut count = le16(data, eocd + 10).ok_or_else(|| bad("short EOCD"))? as u64;
        let mut cd_size = le32(data, eocd + 12).ok_or_else(|| bad("short EOCD"))? as u64;
        let mut cd_start = le32(data, eocd + 16).ok_or_else(|| bad("short EOCD"))? as u64;
        if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_start == 0xFFFF_FFFF {
            let locator = eocd.checked_sub(20).filter(|&l| data[l..].starts_with(b"PK\x06\x07"));
            let locator = locator.ok_or_else(|| bad("zip64 locator missing"))?;
            let z64 = le64(data, locator + 8).ok_or_else(|| bad("short zip64 locator"))? as usize;
            if !data.get(z64..).is_some_and(|d| d.starts_with(b"PK\x06\x06")) {
                return Err(bad("zip64 end-of-central-directory record missing"));
            }
            count = le64(data, z64 + 32).ok_or_else(|| bad("short zip64 record"))?;
            cd_size = le64(data, z64 + 40).ok_or_else(|| bad("short zip64 record"))?;
            cd_start = le64(data, z64 + 48).ok_or_else(|| bad("short zip64 record"))?;
        }
        if cd_start.checked_add(cd_size).is_none_or(|end| end > data.len() as u64) {
            return Err(bad("central directory lies outside the file (truncated?)"));
        }
        let mut entries = Vec::new();
        let mut at = cd_start as usize;
        for _ in 0..count {
            let h = data.get(at..at + 46).ok_or_else(|| bad("central directory ends early"))?;
            if !h.starts_with(b"PK\x01\x02") {
                return Err(bad("bad central directory entry"));
            }
            let field16 = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
            let field32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
            let (name_len, extra_len, comment_len) = (field16(28) as usize, field16(30) as usize, field16(32) as usize);
            let name = data.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("entry name outside the file"))?;
            let extra =
                data.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(|| bad("extra field outside the file"))?;
            let (mut size, compressed, mut local) = (field32(24) as u64, field32(20) as u64, field32(42) as u64);
            if size == 0xFFFF_FFFF || compressed == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
                // zip64 extended information: the 0xFFFFFFFF fields, in this order
                let mut x = 0;
                while x + 4 <= extra.len() {
                    let (id, len) = (le16(extra, x).unwrap_or(0), le16(extra, x + 2).unwrap_or(0) as usize);
                    if id == 1 {
                        let mut f = x + 4;
                        let mut next = || {
                            let v = le64(extra, f);
                            f += 8;
                            v.ok_or_else(|| bad("short zip64 extra field"))
                        };
                        if size == 0xFFFF_FFFF {
                            size = next()?;
                        }
                        if compressed == 0xFFFF_FFFF {
                            next()?;
                        }
                        if local == 0xFFFF_FFFF {
                            local = next()?;
                        }
                        break;
                    }
                    x += 4 + len;
                }
            }
            let entry = ZipEntry { method: field16(10), flags: field16(8), crc: field32(16), size, local };
            if entry.method == 0 && compressed != size && compressed != 0xFFFF_FFFF {
                return Err(bad("stored entry with different compressed and uncompressed sizes"));
            }
            entries.push((String::from_utf8_lossy(name).into_owned(), entry));
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(Self { data, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The contents of entry `name`, CRC-checked; `None` if there is no such entry.
    fn read(&self, name: &str) -> Res<Option<&'a [u8]>> {
        let Some((_, e)) = self.entries.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let bad = |what: &str| corrupt(format!("zip entry `{name}`: {what}"));
        if e.flags & 1 != 0 {
            return Err(unsupported(format!("zip entry `{name}` is encrypted")));
        }
        if e.method != 0 {
            return Err(unsupported(format!(
                "zip entry `{name}` is compressed (method {}); torch.save stores entries uncompressed",
                e.method
            )));
        }
        let local = usize::try_from(e.local).map_err(|_| bad("offset out of range"))?;
        let header = self.data.get(local..local.saturating_add(30)).ok_or_else(|| bad("local header outside the file (truncated?)"))?;
        if !header.starts_with(b"PK\x03\x04") {
            return Err(bad("bad local header"));
        }
        let start = local + 30 + le16(header, 26).unwrap_or(0) as usize + le16(header, 28).unwrap_or(0) as usize;
        let end = usize::try_from(e.size).ok().and_then(|s| start.checked_add(s));
        let contents = end
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| bad("data extends past the end of the file (truncated?)"))?;
        if crc32(contents) != e.crc {
            return Err(bad("CRC mismatch (damaged file)"));
        }
        Ok(Some(contents))
    }
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

// ---------------------------------------------------------------------------------
// The pickle interpreter. It builds values; it never imports or calls anything.

#[derive(Debug, Clone)]
enum Global {
    OrderedDict,
    /// `_rebuild_tensor(storage, offset, size, stride)` and `_rebuild_tensor_v2(…, requires_grad, hooks[, metadata])`.
    RebuildTensor,
    /// `_rebuild_parameter(data, requires_grad, hooks)` (and `_with_state`): the data.
    RebuildParameter,
    /// `Parameter(data, requires_grad)`: the data.
    Parameter,
    /// `_rebuild_from_type_v2(func, new_type, args, state)`: `func(*args)`.
    RebuildFromType,
    /// `torch.FloatStorage` etc.: only meaningful inside a persistent id.
    StorageType(Rc<str>),
    /// `_codecs.encode(text, 'latin1')`: how protocol 2 pickles `bytes`.
    CodecsEncode,
    /// A data-only type from [`OPAQUE_GLOBALS`].
    Opaque(Rc<str>),
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// An instance of an allowed data-only type, or anything built from one.
    Opaque(Rc<str>),
}

#[derive(Debug)]
struct StorageRef {
    key: Rc<str>,
    elem: Elem,
    /// Legacy storage views: where the view starts in its root storage, in elements.
    view_offset: usize,
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(_) => "big integer".into(),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("'{}'", s.chars().take(60).collect::<String>()),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(t) => format!("tuple of {}", t.len()),
            Value::List(l) => format!("list of {}", l.borrow().len()),
            Value::Dict(d) => format!("dict of {}", d.borrow().len()),
            Value::Global(g) => format!("global {g:?}"),
            Value::Storage(s) => format!("storage `{}`", s.key),
            Value::Tensor(t) => format!("tensor {:?}", t.size),
            Value::Opaque(name) => format!("{name} object"),
        }
    }

    fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        let found = d.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone());
        found
    }

    fn as_index(&self, what: &str) -> Res<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(corrupt(format!("{what} is {}, not a non-negative integer", other.describe()))),
        }
    }

    fn as_indices(&self, what: &str) -> Res<Vec<usize>> {
        match self {
            Value::Tuple(t) => t.iter().map(|v| v.as_index(what)).collect(),
            Value::List(l) => l.borrow().iter().map(|v| v.as_index(what)).collect(),
            other => Err(corrupt(format!("{what} is {}, not a tuple", other.describe()))),
        }
    }
}

fn resolve_global(module: &str, name: &str) -> Res<Value> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromType,
        ("torch.nn.parameter", "Parameter") => Global::Parameter,
        ("torch", n) if n.ends_with("Storage") && !n.contains('.') => Global::StorageType(n.into()),
        ("_codecs", "encode") => Global::CodecsEncode,
        (m, n) if OPAQUE_GLOBALS.contains(&(m, n)) => Global::Opaque(format!("{m}.{n}").into()),
        (m, _) if m.starts_with("__torch__") => {
            return Err(unsupported(
                "a TorchScript archive (torch.jit.save); save the model's state_dict() with torch.save instead",
            ))
        }
        _ => {
            return Err(unsupported(format!(
                "the pickle names the global `{module}.{name}`, which is not on the allow-list (pickled code is never run)"
            )))
        }
    };
    Ok(Value::Global(g))
}

// pickle opcodes (Python's Lib/pickletools.py)
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const FLOAT: u8 = b'F';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG: u8 = b'L';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;
const BYTEARRAY8: u8 = 0x96;
const NEXT_BUFFER: u8 = 0x97;
const READONLY_BUFFER: u8 = 0x98;

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Every storage a persistent id named: root key → element type of its first use
    /// (which is the element size its legacy data is written with).
    storages: HashMap<Rc<str>, Elem>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), storages: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(corrupt(format!("pickle ends unexpectedly at byte {} (truncated file?)", self.data.len())));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len_u64(&mut self) -> Res<usize> {
        usize::try_from(self.u64()?).map_err(|_| corrupt("pickle: length out of range"))
    }

    /// A text argument up to (not including) the newline.
    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(corrupt("pickle ends inside a text argument (truncated file?)"));
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| corrupt("pickle: text argument is not UTF-8"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v)
    }

    fn pop(&mut self) -> Res<Value> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(corrupt("pickle pops past a MARK"));
        }
        self.stack.pop().ok_or_else(|| corrupt("pickle pops from an empty stack"))
    }

    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| corrupt("pickle: no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Res<&mut Value> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err(corrupt("pickle: expected an object, found a MARK"));
        }
        self.stack.last_mut().ok_or_else(|| corrupt("pickle: expected an object on an empty stack"))
    }

    fn memo_get(&self, key: u32) -> Res<Value> {
        self.memo.get(&key).cloned().ok_or_else(|| corrupt(format!("pickle memo entry {key} is missing")))
    }

    fn memo_put(&mut self, key: u32) -> Res<()> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Res<()> {
        if !items.len().is_multiple_of(2) {
            return Err(corrupt("pickle: odd number of items for a dict"));
        }
        let mut items = items.into_iter();
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            Value::Opaque(_) => Ok(()),
            other => Err(corrupt(format!("pickle sets items on a {}", other.describe()))),
        }
    }

    fn append_items(&mut self, items: Vec<Value>) -> Res<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            Value::Opaque(_) => Ok(()),
            other => Err(corrupt(format!("pickle appends to a {}", other.describe()))),
        }
    }

    /// Interprets opcodes up to STOP and returns the pickled object.
    fn load(&mut self) -> Res<Value> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            match op {
                PROTO => {
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(unsupported(format!("pickle protocol {v}")));
                    }
                }
                FRAME => {
                    self.u64()?;
                }
                STOP => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let v = self.top()?.clone();
                    self.push(v)
                }
                NONE => self.push(Value::None),
                NEWTRUE => self.push(Value::Bool(true)),
                NEWFALSE => self.push(Value::Bool(false)),
                INT => {
                    let v = match self.line()?.trim() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => s.parse().map(Value::Int).unwrap_or_else(|_| Value::Opaque("big integer".into())),
                    };
                    self.push(v)
                }
                LONG => {
                    let s = self.line()?.trim().trim_end_matches('L');
                    let v = s.parse().map(Value::Int).unwrap_or_else(|_| Value::Opaque("big integer".into()));
                    self.push(v)
                }
                BININT => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))
                }
                BININT1 => {
                    let v = self.byte()?;
                    self.push(Value::Int(v as i64))
                }
                BININT2 => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))
                }
                LONG1 => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push(decode_long(b))
                }
                LONG4 => {
                    let n = self.u32()? as i32;
                    let n = usize::try_from(n).map_err(|_| corrupt("pickle: negative LONG4 length"))?;
                    let b = self.take(n)?;
                    self.push(decode_long(b))
                }
                FLOAT => {
                    let v = self.line()?.trim().parse().map_err(|_| corrupt("pickle: bad FLOAT"))?;
                    self.push(Value::Float(v))
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Value::Float(v))
                }
                STRING => {
                    let s = self.line()?.trim();
                    let s = s.strip_prefix(['\'', '"']).and_then(|s| s.strip_suffix(['\'', '"'])).unwrap_or(s);
                    self.push(Value::Str(s.into()))
                }
                BINSTRING => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.push(Value::Str(String::from_utf8_lossy(b).into()))
                }
                SHORT_BINSTRING => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push(Value::Str(String::from_utf8_lossy(b).into()))
                }
                UNICODE => {
                    let s = self.line()?;
                    self.push(Value::Str(s.into()))
                }
                BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                    let n = match op {
                        SHORT_BINUNICODE => self.byte()? as usize,
                        BINUNICODE => self.u32()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).map_err(|_| corrupt("pickle: string is not UTF-8"))?;
                    self.push(Value::Str(s.into()))
                }
                BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 => {
                    let n = match op {
                        SHORT_BINBYTES => self.byte()? as usize,
                        BINBYTES => self.u32()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.into()))
                }
                EMPTY_TUPLE => self.push(Value::Tuple(Rc::new(Vec::new()))),
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)))
                }
                EMPTY_LIST | EMPTY_SET => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                LIST | FROZENSET => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))
                }
                APPEND => {
                    let v = self.pop()?;
                    self.append_items(vec![v])?
                }
                APPENDS | ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?
                }
                EMPTY_DICT => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                DICT => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                    self.set_items(items)?
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    self.push(g)
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(corrupt("pickle: STACK_GLOBAL without two strings"));
                    };
                    let g = resolve_global(module, name)?;
                    self.push(g)
                }
                REDUCE | NEWOBJ => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.push(v)
                }
                NEWOBJ_EX => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v)
                }
                INST => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let cls = resolve_global(module, name)?;
                    let args = self.pop_mark()?;
                    let v = self.call(cls, Value::Tuple(Rc::new(args)))?;
                    self.push(v)
                }
                OBJ => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(corrupt("pickle: OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let v = self.call(cls, Value::Tuple(Rc::new(items)))?;
                    self.push(v)
                }
                BUILD => {
                    // Sets attributes (`_metadata` of a state dict, a Parameter's state):
                    // nothing this reader needs.
                    self.pop()?;
                    self.top()?;
                }
                PERSID => {
                    let id = self.line()?;
                    let v = self.persistent_load(Value::Str(id.into()))?;
                    self.push(v)
                }
                BINPERSID => {
                    let id = self.pop()?;
                    let v = self.persistent_load(id)?;
                    self.push(v)
                }
                GET => {
                    let key = self.line()?.trim().parse().map_err(|_| corrupt("pickle: bad GET"))?;
                    let v = self.memo_get(key)?;
                    self.push(v)
                }
                BINGET => {
                    let key = self.byte()? as u32;
                    let v = self.memo_get(key)?;
                    self.push(v)
                }
                LONG_BINGET => {
                    let key = self.u32()?;
                    let v = self.memo_get(key)?;
                    self.push(v)
                }
                PUT => {
                    let key = self.line()?.trim().parse().map_err(|_| corrupt("pickle: bad PUT"))?;
                    self.memo_put(key)?
                }
                BINPUT => {
                    let key = self.byte()? as u32;
                    self.memo_put(key)?
                }
                LONG_BINPUT => {
                    let key = self.u32()?;
                    self.memo_put(key)?
                }
                MEMOIZE => {
                    let key = self.memo.len() as u32;
                    self.memo_put(key)?
                }
                EXT1 | EXT2 | EXT4 => return Err(unsupported("pickle extension-registry opcodes")),
                NEXT_BUFFER | READONLY_BUFFER => return Err(unsupported("pickle out-of-band buffers")),
                other => return Err(corrupt(format!("unknown pickle opcode 0x{other:02x} at byte {at}"))),
            }
        }
    }

    /// `('storage', torch.FloatStorage, key, location, numel[, view])` → a storage.
    fn persistent_load(&mut self, id: Value) -> Res<Value> {
        let Value::Tuple(items) = &id else {
            return Err(unsupported(format!("persistent id {}", id.describe())));
        };
        match items.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            Some(Value::Str(s)) if &**s == "module" => {
                return Err(unsupported(
                    "a pickled nn.Module (torch.save(model)); save model.state_dict() instead",
                ))
            }
            _ => return Err(unsupported(format!("persistent id {}", items.first().map_or("()".into(), Value::describe)))),
        }
        if items.len() < 5 {
            return Err(corrupt(format!("storage persistent id with {} items", items.len())));
        }
        let kind = match &items[1] {
            Value::Global(Global::StorageType(k)) => k.clone(),
            other => return Err(corrupt(format!("storage type is {}", other.describe()))),
        };
        let elem =
            Elem::from_storage(&kind).ok_or_else(|| unsupported(format!("storage type torch.{kind}")))?;
        let key: Rc<str> = match &items[2] {
            Value::Str(k) => k.clone(),
            Value::Int(i) => i.to_string().into(),
            other => return Err(corrupt(format!("storage key is {}", other.describe()))),
        };
        items[4].as_index("storage size")?;
        let view_offset = match items.get(5) {
            None | Some(Value::None) => 0,
            Some(Value::Tuple(view)) if view.len() == 3 => view[1].as_index("storage view offset")?,
            Some(other) => return Err(corrupt(format!("storage view is {}", other.describe()))),
        };
        self.storages.entry(key.clone()).or_insert(elem);
        Ok(Value::Storage(Rc::new(StorageRef { key, elem, view_offset })))
    }

    /// What `func(*args)` would build, for the allowed functions only.
    fn call(&mut self, func: Value, args: Value) -> Res<Value> {
        let Value::Global(g) = func else {
            return Err(corrupt(format!("pickle calls a {}", func.describe())));
        };
        let args: Vec<Value> = match args {
            Value::Tuple(t) => t.to_vec(),
            Value::List(l) => l.borrow().clone(),
            other => return Err(corrupt(format!("pickle call arguments are {}", other.describe()))),
        };
        match g {
            Global::OrderedDict => {
                let mut items = Vec::new();
                if let Some(Value::List(pairs)) = args.first() {
                    for pair in pairs.borrow().iter() {
                        let kv: Vec<Value> = match pair {
                            Value::Tuple(t) => t.to_vec(),
                            Value::List(l) => l.borrow().clone(),
                            _ => Vec::new(),
                        };
                        let [k, v] = <[Value; 2]>::try_from(kv)
                            .map_err(|_| corrupt(format!("OrderedDict item is {}", pair.describe())))?;
                        items.push((k, v));
                    }
                }
                Ok(Value::Dict(Rc::new(RefCell::new(items))))
            }
            Global::RebuildTensor => {
                if args.len() < 4 {
                    return Err(corrupt(format!("tensor rebuilt from {} arguments", args.len())));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(corrupt(format!("tensor storage is {}", args[0].describe())));
                };
                let size = args[2].as_indices("tensor size")?;
                let stride = args[3].as_indices("tensor stride")?;
                if size.len() != stride.len() {
                    return Err(corrupt(format!("tensor size {size:?} and stride {stride:?} differ in rank")));
                }
                let offset = storage
                    .view_offset
                    .checked_add(args[1].as_index("tensor offset")?)
                    .ok_or_else(|| corrupt("tensor offset overflows"))?;
                Ok(Value::Tensor(Rc::new(TensorRef {
                    key: storage.key.clone(),
                    elem: storage.elem,
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::Parameter => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                other => Err(corrupt(format!(
                    "parameter data is {}",
                    other.map_or("missing".into(), Value::describe)
                ))),
            },
            Global::RebuildFromType => {
                if args.len() < 3 {
                    return Err(corrupt("_rebuild_from_type_v2 with too few arguments"));
                }
                self.call(args[0].clone(), args[2].clone())
            }
            Global::CodecsEncode => match args.first() {
                Some(Value::Str(s)) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>().into())),
                _ => Err(corrupt("_codecs.encode without a string")),
            },
            Global::Opaque(name) => Ok(Value::Opaque(name)),
            Global::StorageType(kind) => Err(unsupported(format!("a torch.{kind} built outside a persistent id"))),
        }
    }
}

/// pickle's LONG1/LONG4 payload: little-endian two's complement.
fn decode_long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(b.into());
    }
    if b.is_empty() {
        return Value::Int(0);
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xFF } else { 0 };
    let mut bytes = [fill; 8];
    bytes[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
    }

    /// Keep in sync with EXPECTED in tools/make_import_fixtures.py.
    fn expected(legacy: bool) -> Vec<(&'static str, Vec<usize>, Vec<f64>, bool)> {
        let mut e = vec![
            ("conv.weight", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], true),
            ("fc.weight", vec![4, 3], vec![0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0], true),
            ("fc.bias", vec![4], vec![-2.0, -3.0, -4.0, -5.0], true),
            ("bn.weight", vec![2], vec![0.0, -1.0], true),
            ("every_other", vec![3], vec![0.5, 1.5, 2.5], true),
            ("half.weight", vec![4], vec![1.5, -0.25, 1024.0, 0.0999755859375], true),
            ("double.weight", vec![2], vec![0.125, -3.0], true),
            ("int.weight", vec![2], vec![7.0, -9.0], false),
            ("bn.num_batches_tracked", vec![], vec![42.0], false),
            ("scalar", vec![], vec![1.5], true),
        ];
        if legacy {
            e.push(("legacy_view", vec![2], vec![-5.0, -6.0], true));
        }
        e
    }

    fn check_fixture_tensors(file: &str, legacy: bool) {
        let got = read_weights(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let want = expected(legacy);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        let mut want_names: Vec<&str> = want.iter().map(|w| w.0).collect();
        want_names.sort();
        assert_eq!(names, want_names, "{file}");
        for (name, shape, values, float) in want {
            let t = &got[name];
            assert_eq!(t.dims(), &shape[..], "{file}: {name}");
            assert_eq!(t.dtype(), if float { DType::F32 } else { DType::I64 }, "{file}: {name}");
            let flat: Vec<f64> = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            assert_eq!(flat, values, "{file}: {name}");
        }
    }

    #[test]
    fn legacy_checkpoint_with_views_half_double_and_int_storages() {
        check_fixture_tensors("legacy.pth", true);
    }

    #[test]
    fn zip_checkpoint_with_views_half_double_and_int_storages() {
        check_fixture_tensors("zip.pth", false);
    }

    #[test]
    fn protocol_4_pickle_with_parameters() {
        // FRAME, MEMOIZE, STACK_GLOBAL; `_rebuild_parameter` and `_rebuild_from_type_v2`
        check_fixture_tensors("zip_protocol4_parameters.pth", false);
    }

    #[test]
    fn nested_state_dicts_are_unwrapped_and_dataparallel_prefix_stripped() {
        // legacy: {'epoch', 'arch', 'state_dict': {'module.…'}, 'best_acc1', 'optimizer'}
        check_fixture_tensors("legacy_nested.pth", true);
        // zip: {'model': {'module.…'}, 'epoch'}
        check_fixture_tensors("zip_nested.pth", false);
    }

    #[test]
    fn format_is_detected_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        for (src, disguise, format) in [
            ("legacy.pth", "weights.safetensors", WeightsFormat::PytorchLegacy),
            ("zip.pth", "weights.bin", WeightsFormat::PytorchZip),
        ] {
            let bytes = std::fs::read(fixture(src)).unwrap();
            assert_eq!(detect_format(&bytes), Some(format));
            let path = dir.path().join(disguise);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(read_weights(&path).unwrap().len(), expected(format == WeightsFormat::PytorchLegacy).len());
        }
    }

    #[test]
    fn forbidden_global_is_refused_and_never_run() {
        for file in ["forbidden_global.pth", "forbidden_global_zip.pth"] {
            match read_weights(&fixture(file)) {
                Err(ImportError::Unsupported { what }) => assert!(what.contains("`os.system`"), "{file}: {what}"),
                other => panic!("{file}: expected Unsupported, got {other:?}"),
            }
        }
        assert!(!Path::new("/tmp/smartbin-pwned").exists());
    }

    #[test]
    fn unknown_storage_type_is_unsupported() {
        match read_weights(&fixture("unknown_storage.pth")) {
            Err(ImportError::Unsupported { what }) => assert!(what.contains("ComplexFloatStorage"), "{what}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn truncated_files_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let safetensors_path = dir.path().join("w.safetensors");
        let t = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("w".to_string(), t)]), &safetensors_path)
            .unwrap();
        let cases = [
            ("legacy.pth, inside the storage data", std::fs::read(fixture("legacy.pth")).unwrap(), 2),
            ("legacy.pth, inside the state-dict pickle", std::fs::read(fixture("legacy.pth")).unwrap(), 900),
            ("zip.pth, end of archive", std::fs::read(fixture("zip.pth")).unwrap(), 30),
            ("safetensors", std::fs::read(&safetensors_path).unwrap(), 40),
        ];
        for (what, bytes, cut) in cases {
            let path = dir.path().join("truncated");
            std::fs::write(&path, &bytes[..bytes.len() - cut]).unwrap();
            match read_weights(&path) {
                Err(ImportError::Corrupt { reason }) => println!("{what}: {reason}"),
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_zip_entry_fails_its_crc() {
        let mut bytes = std::fs::read(fixture("zip.pth")).unwrap();
        // the six f32 of conv.weight (1.0 … 6.0) are stored verbatim: flip a bit of one
        let needle: Vec<u8> = [1f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
        bytes[at + 5] ^= 0x40;
        match read_weights_from_bytes(&bytes) {
            Err(ImportError::Corrupt { reason }) => assert!(reason.contains("CRC"), "{reason}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn random_bytes_and_text_are_unknown_format() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let pickle_of_a_list = b"\x80\x02]q\x00(K\x01K\x02e.".to_vec();
        for bytes in [random, b"hello, this is not a model\n".to_vec(), Vec::new(), pickle_of_a_list] {
            assert_eq!(detect_format(&bytes), None);
            assert!(matches!(read_weights_from_bytes(&bytes), Err(ImportError::UnknownFormat)));
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_weights(&dir.path().join("absent.pth")), Err(ImportError::Io(_))));
    }

    #[test]
    fn safetensors_are_converted_to_f32_and_keep_integers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth"); // the name does not matter
        let half = Tensor::new(&[1.5f32, -0.25], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
        let tensors = std::collections::HashMap::from([
            ("module.a.weight".to_string(), Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap()),
            ("module.b.weight".to_string(), half),
            ("b.num_batches_tracked".to_string(), Tensor::new(&[3i64], &Device::Cpu).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let got = read_weights(&path).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a.weight", "b.num_batches_tracked", "b.weight"]);
        assert_eq!(got["a.weight"].to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(got["b.weight"].to_vec1::<f32>().unwrap(), [1.5, -0.25]);
        assert_eq!(got["b.num_batches_tracked"].to_vec1::<i64>().unwrap(), [3]);
    }

    #[test]
    fn crc32_matches_the_standard() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// The ImageNet EfficientNet-Lite0 of ../shared/pretrained (legacy format, TF-ordered
    /// strided conv kernels, a transposed `_fc.weight`).
    #[test]
    fn real_efficientnet_lite0_checkpoint() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pretrained/efficientnet-lite0-57934424.pth");
        if !path.exists() {
            println!("skipping: ../shared/pretrained not found");
            return;
        }
        assert_eq!(detect_format(&std::fs::read(&path).unwrap()), Some(WeightsFormat::PytorchLegacy));
        let w = read_weights(&path).unwrap();
        println!("{} tensors", w.len());
        let shape = |k: &str| w.get(k).unwrap_or_else(|| panic!("missing {k}")).dims().to_vec();
        assert_eq!(shape("_conv_stem.weight"), [32, 3, 3, 3]);
        assert_eq!(shape("_blocks.0._depthwise_conv.weight"), [32, 1, 3, 3]);
        assert_eq!(shape("_conv_head.weight"), [1280, 320, 1, 1]);
        assert_eq!(shape("_fc.weight"), [1000, 1280]);
        assert_eq!(w.len(), 296);
        let (mut params, mut running, mut counters) = (0usize, 0usize, 0usize);
        for (k, t) in &w {
            if k.ends_with(".num_batches_tracked") {
                assert_eq!(t.dtype(), DType::I64);
                counters += 1;
            } else if k.ends_with(".running_mean") || k.ends_with(".running_var") {
                running += t.elem_count();
            } else {
                assert_eq!(t.dtype(), DType::F32, "{k}");
                params += t.elem_count();
            }
        }
        println!("{params} parameters, {running} running statistics, {counters} num_batches_tracked");
        assert_eq!((params, running, counters), (4_652_008, 42_016, 49));
        assert!((4.6e6..4.75e6).contains(&(params as f64)));
        // values read independently (Python, strides applied by hand): the kernels are
        // stored in TensorFlow order (stride [1, 32, 288, 96]) and _fc.weight transposed
        let at = |k: &str, idx: &[usize]| -> f64 {
            let mut t = w[k].clone();
            for &i in idx {
                t = t.get(i).unwrap();
            }
            t.to_scalar::<f32>().unwrap() as f64 // the literals below are these f32 values exactly
        };
        assert_eq!(at("_conv_stem.weight", &[0, 0, 0, 0]), -1.1103360652923584);
        assert_eq!(at("_conv_stem.weight", &[0, 0, 0, 1]), -1.3087704181671143);
        assert_eq!(at("_conv_stem.weight", &[1, 2, 0, 1]), -0.08920226991176605);
        assert_eq!(at("_conv_stem.weight", &[31, 2, 2, 2]), 2.2351741790771484e-08);
        assert_eq!(at("_fc.weight", &[0, 1]), -0.09470871090888977);
        assert_eq!(at("_fc.weight", &[1, 0]), -0.0049702562391757965);
        assert_eq!(at("_fc.weight", &[999, 1279]), 0.04085797071456909);
        assert_eq!(at("_fc.bias", &[5]), -0.03930215165019035);
    }
}
