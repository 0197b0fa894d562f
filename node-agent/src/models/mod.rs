//! Model kinds the workers can run, and their catalog entries.
//!
//! Each kind is one file implementing [`Kind`] (`synthetic.rs`, `minilm.rs`, `hf.rs`, `server.rs`), listed once in
//! [`ModelKind`] and in [`each_kind!`]; everything else reaches a kind through them.

mod batches;
pub(crate) mod bert_net;
pub(crate) mod catalog;
pub(crate) mod chat_template;
pub(crate) mod generate;
pub(crate) mod hf;
pub(crate) mod hf_config;
pub(crate) mod hf_decoder;
#[cfg(test)]
mod hf_tests;
pub(crate) mod hf_weights;
#[cfg(test)]
mod hf_weights_tests;
pub(crate) mod kind;
pub(crate) mod llama_net;
pub(crate) mod minilm;
pub(crate) mod minilm_fetch;
pub(crate) mod sentence;
pub(crate) mod server;
pub(crate) mod synthetic;
pub(crate) mod synthetic_net;
pub(crate) mod torch_linear;
pub(crate) mod weights;
pub(crate) mod working;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use catalog::Catalog;
pub(crate) use kind::{Capabilities, Kind, Loaded, Size};

use crate::backend::ModelBackend;

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

/// The kinds of model vramkeeper runs. The variant's snake_case name is the kind's
/// [`Kind::NAME`] (a test checks).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// A transformer-like stack of a given size, for sizing, load and leak tests.
    Synthetic(synthetic::SyntheticSpec),
    /// all-MiniLM-L6-v2 sentence embeddings.
    Minilm(minilm::MinilmSpec),
    /// A Hugging Face checkpoint: a BERT encoder or a Llama-family decoder.
    Hf(hf::HfSpec),
    /// A model server of its own (vLLM, llama.cpp, ...), started from a command line.
    Server(server::ServerSpec),
}

/// Runs `$body` with `$k` bound to the kind's entry, whichever kind it is: the one `match`
/// over [`ModelKind`] (exhaustive, so a new variant must be added here).
macro_rules! each_kind {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            ModelKind::Synthetic($k) => $body,
            ModelKind::Minilm($k) => $body,
            ModelKind::Hf($k) => $body,
            ModelKind::Server($k) => $body,
        }
    };
}

fn name_of<K: Kind>(_: &K) -> &'static str {
    K::NAME
}

impl ModelKind {
    /// The kind's name.
    pub fn name(&self) -> &'static str {
        each_kind!(self, k => name_of(k))
    }

    /// Checks the entry's values; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        each_kind!(self, k => k.check())
    }

    /// Its weights, estimated before a first load.
    pub fn size(&self) -> Size {
        each_kind!(self, k => k.size())
    }

    /// The requests it serves.
    pub fn capabilities(&self) -> Capabilities {
        each_kind!(self, k => k.capabilities())
    }

    /// Fills in what the worker needs and cannot get itself ([`Kind::resolve`]).
    pub async fn resolve(
        &mut self,
        cache_dir: &Path,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), String> {
        each_kind!(self, k => k.resolve(cache_dir, progress).await)
    }

    /// Builds the model in a worker ([`Kind::load`]).
    pub fn load<B: ModelBackend>(&self, device: &B::Device) -> Result<Box<dyn Loaded<B>>, String> {
        each_kind!(self, k => k.load::<B>(device))
    }
}

impl ModelSpec {
    /// The least memory the model can take on a device: the bytes of its weights (a CUDA
    /// context, activations and allocator slack come on top). A model over a device's total
    /// by this estimate alone can never load there.
    pub fn estimated_bytes(&self) -> u64 {
        self.kind.size().bytes()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_named_as_serde_names_it() {
        for model in Catalog::builtin().models() {
            let json = serde_json::to_value(&model.kind).unwrap();
            assert_eq!(json["kind"], model.kind.name(), "{}", model.name);
        }
    }
}
