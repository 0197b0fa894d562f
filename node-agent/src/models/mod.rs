//! Model kinds the workers can run, and their catalog entries.

pub mod catalog;
pub mod gelu;
pub mod kernels;
pub mod minilm;
pub mod minilm_fetch;
pub mod synthetic;
pub mod synthetic_net;
pub mod weights;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use catalog::Catalog;

/// One catalog entry: a name and what to build.
// Unknown fields are refused by the kinds' own structs (serde's `deny_unknown_fields` does not
// combine with `flatten`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Catalog name (DNS-1123-like).
    pub name: String,
    /// What kind of model, with its parameters.
    #[serde(flatten)]
    pub kind: ModelKind,
}

impl ModelSpec {
    /// The least memory the model can take on a device: the bytes of its weights (a CUDA
    /// context, activations and allocator slack come on top). A model over a device's total
    /// by this estimate alone can never load there.
    pub fn estimated_bytes(&self) -> u64 {
        match &self.kind {
            ModelKind::Synthetic(s) => s.architecture().params() * s.dtype.size(),
            ModelKind::Minilm(_) => minilm::PARAMS * DType::F32.size(),
        }
    }
}

/// The kinds of model vramkeeper runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// A transformer-like stack of a given size, for sizing, load and leak tests.
    Synthetic(synthetic::SyntheticSpec),
    /// all-MiniLM-L6-v2 sentence embeddings.
    Minilm(MinilmSpec),
}

impl ModelKind {
    /// The kind's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Synthetic(_) => "synthetic",
            Self::Minilm(_) => "minilm",
        }
    }
}

/// Where MiniLM's files are: `model.safetensors`, `config.json`, `tokenizer.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MinilmSpec {
    /// A directory holding the files; absent means the agent's cache, fetched on demand.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Element types of model weights.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}
