//! A checkpoint's safetensors weights into a burn module: one `model.safetensors` or the
//! shards a `model.safetensors.index.json` lists, PyTorch's layouts adapted (linear weights
//! transposed, norms' `weight` as `gamma`), each tensor cast to the dtype the catalog asks for.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use burn::{
    module::Module,
    prelude::*,
    store::{
        ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot,
    },
    tensor::DType,
};

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

/// Casts every float tensor to one dtype (a bf16 checkpoint served in f32, and back).
#[derive(Clone)]
struct Cast(DType);

impl ModuleAdapter for Cast {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let to = self.0;
        if !snapshot.dtype.is_float() || snapshot.dtype == to {
            return snapshot.clone();
        }
        let data = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            std::rc::Rc::new(move || Ok(data()?.convert_dtype(to))),
            to,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Loads `module`'s parameters from the checkpoint in `dir`, renaming keys with `remaps`
/// (regex, replacement) and casting to `dtype`; with `burn_layout`, burn's `Linear` and norm
/// modules are filled from PyTorch's layout (weights transposed on the host). Every parameter must be found; tensors of the
/// checkpoint the module has no place for are ignored (a tied head saved anyway). Returns the
/// bytes read.
pub(crate) fn load<B: Backend, M: Module<B>>(
    module: &mut M,
    dir: &Path,
    remaps: &[(&str, &str)],
    dtype: DType,
    burn_layout: bool,
) -> Result<u64, String> {
    let mut applied = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let mut bytes = 0;
    for file in files(dir)? {
        bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let store = SafetensorsStore::from_file(&file).allow_partial(true);
        let mut store = if burn_layout {
            store.with_from_adapter(PyTorchToBurnAdapter.chain(Cast(dtype)))
        } else {
            store.with_from_adapter(Cast(dtype))
        };
        for (from, to) in remaps {
            store = store.with_key_remapping(*from, *to);
        }
        let result = module
            .load_from(&mut store)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if !result.errors.is_empty() {
            return Err(format!(
                "{}: cannot load the weights: {result}",
                file.display()
            ));
        }
        applied.extend(result.applied);
        missing.extend(result.missing.into_iter().map(|(path, _)| path));
    }
    let absent: Vec<String> = missing.difference(&applied).cloned().collect();
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
    Ok(bytes)
}
