//! A checkpoint's safetensors weights into a burn module: one `model.safetensors` or the
//! shards a `model.safetensors.index.json` lists. The headers say where each tensor's bytes
//! are; the module's parameters are matched to them by name (keys renamed with regexes), and
//! the backend creates all of them in one pass ([`ModelBackend::upload`]: on CUDA, through
//! pinned staging buffers with reading and copying overlapped), each in the dtype asked for.
//! Tensors the module has no place for are never read.

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param},
    prelude::*,
    tensor::{DType, TensorPrimitive},
};
use regex::Regex;

use crate::backend::{ModelBackend, upload::Source};

/// The weight files of a checkpoint directory, in load order.
pub(crate) fn files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        format!(
            "{} holds neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", index.display()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no weight_map", index.display()))?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if name.contains('/') || !path.is_file() {
                Err(format!("{}: shard {name} is missing", index.display()))
            } else {
                Ok(path)
            }
        })
        .collect()
}

/// A tensor as a safetensors header describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    /// Its name in the file.
    pub(crate) name: String,
    /// Absolute byte offset of its data in the file.
    pub(crate) offset: u64,
    /// Bytes of data.
    pub(crate) len: usize,
    /// The dtype as stored, or the name of one this loader cannot read (kept so that a
    /// parameter asking for it is refused by name).
    pub(crate) dtype: Result<DType, String>,
    pub(crate) shape: Vec<usize>,
}

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

fn stored_dtype(name: &str) -> Result<DType, String> {
    Ok(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        other => return Err(other.to_string()),
    })
}

/// The tensors a safetensors file holds, from its header; every offset checked against the
/// file's length and every length against the tensor's shape and dtype.
pub(crate) fn header(path: &Path, file: &File) -> Result<Vec<Stored>, String> {
    let bad = |what: String| format!("{}: not a safetensors file: {what}", path.display());
    let file_len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!("a header of {n} bytes")));
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact_at(&mut text, 8)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_start = 8 + n;
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let field = |f: &str| v.get(f).ok_or_else(|| bad(format!("{name} has no {f}")));
        let dtype_name = field("dtype")?.as_str().unwrap_or_default().to_string();
        let shape: Vec<usize> = serde_json::from_value(field("shape")?.clone())
            .map_err(|_| bad(format!("{name}: shape is not a list of sizes")))?;
        let [begin, end]: [u64; 2] = serde_json::from_value(field("data_offsets")?.clone())
            .map_err(|_| bad(format!("{name}: data_offsets is not [begin, end]")))?;
        if begin > end || data_start.checked_add(end).is_none_or(|e| e > file_len) {
            return Err(bad(format!(
                "{name}: data [{begin}, {end}) outside the file"
            )));
        }
        let len = (end - begin) as usize;
        let dtype = stored_dtype(&dtype_name);
        if let Ok(d) = dtype {
            let bytes = shape
                .iter()
                .try_fold(d.size(), |n, &dim| n.checked_mul(dim));
            if bytes != Some(len) {
                return Err(bad(format!(
                    "{name}: {len} bytes for shape {shape:?} of {dtype_name}"
                )));
            }
        }
        out.push(Stored {
            name,
            offset: data_start + begin,
            len,
            dtype,
            shape,
        });
    }
    Ok(out)
}

/// Renames a checkpoint key with `remaps`, applied in order (each to the previous result).
fn rename(key: &str, remaps: &[(Regex, &str)]) -> String {
    let mut key = key.to_string();
    for (from, to) in remaps {
        key = from.replace_all(&key, *to).into_owned();
    }
    key
}

/// Builds the dotted paths of a module's float parameters as burn names them (fields and
/// vector indices), in the order a visit meets them.
#[derive(Default)]
struct Paths {
    stack: Vec<String>,
    found: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for Paths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.found.push((
            self.stack.join("."),
            param.lazy_shape().dims::<D>().to_vec(),
        ));
    }
}

/// Puts the created tensors into the module's parameters, by path.
struct Place<B: Backend> {
    stack: Vec<String>,
    tensors: HashMap<String, B::FloatTensorPrimitive>,
}

impl<B: Backend> ModuleMapper<B> for Place<B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match self.tensors.remove(&self.stack.join(".")) {
            Some(t) => {
                let id = param.id;
                param.transform_for_load(Tensor::from_primitive(TensorPrimitive::Float(t)), id)
            }
            None => param,
        }
    }
}

/// Loads `module`'s parameters from the checkpoint in `dir`, renaming the checkpoint's keys
/// with `remaps` (regex, replacement; applied in order) and creating each tensor in `dtype`.
/// Every parameter must be found with its shape; tensors of the checkpoint the module has no
/// place for are not read (a tied head saved anyway). Returns the module and the bytes read.
pub(crate) fn load<B: ModelBackend, M: Module<B>>(
    module: M,
    dir: &Path,
    remaps: &[(&str, &str)],
    dtype: DType,
    device: &B::Device,
) -> Result<(M, u64), String> {
    load_beside(module, dir, remaps, dtype, device, || ()).map(|(m, bytes, ())| (m, bytes))
}

/// [`load`], running `beside` meanwhile on this thread (see [`ModelBackend::upload`]: on
/// CUDA, while the bytes are in flight) and returning what it made too.
pub(crate) fn load_beside<B: ModelBackend, M: Module<B>, T>(
    module: M,
    dir: &Path,
    remaps: &[(&str, &str)],
    dtype: DType,
    device: &B::Device,
    beside: impl FnOnce() -> T,
) -> Result<(M, u64, T), String> {
    let remaps: Vec<(Regex, &str)> = remaps
        .iter()
        .map(|(from, to)| (Regex::new(from).expect("remap patterns are valid"), *to))
        .collect();
    let paths = files(dir)?;
    let mut opened = Vec::with_capacity(paths.len());
    let mut by_name: HashMap<String, (usize, Stored)> = HashMap::new();
    // Renamed keys met twice, with the first key: refused if the model needs them.
    let mut twice: HashMap<String, String> = HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for stored in header(path, &file)? {
            let key = rename(&stored.name, &remaps);
            if let Some((_, first)) = by_name.get(&key) {
                twice.insert(key, format!("{} and {}", first.name, stored.name));
            } else {
                by_name.insert(key, (i, stored));
            }
        }
        opened.push(file);
    }
    let mut wanted = Paths::default();
    module.visit(&mut wanted);
    let mut sources = Vec::with_capacity(wanted.found.len());
    let mut absent = Vec::new();
    for (path, shape) in &wanted.found {
        let Some((file, stored)) = by_name.get(path) else {
            absent.push(path.clone());
            continue;
        };
        if let Some(both) = twice.get(path) {
            return Err(format!(
                "{}: {both} both hold the model's {path}; which one is meant is not clear",
                dir.display()
            ));
        }
        let stored_dtype = stored.dtype.clone().map_err(|name| {
            format!(
                "{}: {} is stored as {name}, which cannot be loaded (F32, F16, BF16 or F64)",
                paths[*file].display(),
                stored.name
            )
        })?;
        if &stored.shape != shape {
            return Err(format!(
                "{}: {} has shape {:?}; the model's config.json asks for {shape:?}",
                paths[*file].display(),
                stored.name,
                stored.shape
            ));
        }
        sources.push(Source {
            file: *file,
            offset: stored.offset,
            len: stored.len,
            stored: stored_dtype,
            shape: shape.clone(),
            dtype,
        });
    }
    if !absent.is_empty() {
        return Err(format!(
            "{}: the checkpoint lacks {} tensor(s) the model needs: {}",
            dir.display(),
            absent.len(),
            absent
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let bytes = sources.iter().map(|s| s.len as u64).sum();
    let (created, made) = B::upload(device, &opened, &paths, &sources, beside)?;
    let mut place = Place::<B> {
        stack: Vec::new(),
        tensors: wanted
            .found
            .into_iter()
            .map(|(path, _)| path)
            .zip(created)
            .collect(),
    };
    let module = module.map(&mut place);
    if let Some(path) = place.tensors.keys().next() {
        return Err(format!("{path} was read but has no place in the model"));
    }
    Ok((module, bytes, made))
}
