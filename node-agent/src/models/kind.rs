//! What a model kind is: the one trait every kind implements, and what it answers.
//!
//! The agent side (catalog, API, switch) uses a kind's catalog entry: [`Kind::check`],
//! [`Kind::size`], [`Kind::capabilities`], [`Kind::resolve`]. The worker side builds it:
//! [`Kind::load`] gives a [`Loaded`] model that serves the capabilities the kind declared.

use std::{future::Future, path::Path};

use burn::tensor::backend::Backend;
use vramkeeper_crds::api::Capability;

use super::DType;
use crate::backend::ModelBackend;

/// Weights a model holds, known from its catalog entry before a first load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Parameters.
    pub params: u64,
    /// Element type of the weights.
    pub dtype: DType,
}

impl Size {
    /// Bytes of the weights: the least memory the model can take on a device (a CUDA
    /// context, activations and allocator slack come on top).
    pub fn bytes(&self) -> u64 {
        self.params * self.dtype.size()
    }
}

/// Which requests a model serves, with the bounds the API checks before a worker sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `POST /v1/infer`: a forward pass over token ids.
    pub infer: Option<TokenInput>,
    /// `POST /v1/embeddings`: one vector per input text.
    pub embeddings: Option<Embeddings>,
    /// OpenAI-style `POST /v1/*` requests (chat and text completions, embeddings, ...),
    /// passed through to the model's own server.
    pub openai: bool,
}

impl Capabilities {
    /// The API's names for them.
    pub fn list(&self) -> Vec<Capability> {
        let Self {
            infer,
            embeddings,
            openai,
        } = self;
        let mut list = Vec::new();
        if infer.is_some() {
            list.push(Capability::Infer);
        }
        if embeddings.is_some() {
            list.push(Capability::Embeddings);
        }
        if *openai {
            list.push(Capability::Openai);
        }
        list
    }
}

/// The token ids a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInput {
    /// Token ids are below this.
    pub vocab: u32,
    /// At most this many tokens.
    pub context: u32,
}

/// The vectors an embedding model gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embeddings {
    /// Their width.
    pub dim: usize,
}

/// One kind of model: implemented by each kind's catalog entry (`models/<kind>.rs`).
pub(crate) trait Kind {
    /// The kind's name in the catalog (`kind = "..."`) and the API.
    const NAME: &'static str;

    /// Checks the entry's values; the message names the field.
    fn check(&self) -> Result<(), String>;

    /// Its weights, estimated before a first load.
    fn size(&self) -> Size;

    /// The requests it serves.
    fn capabilities(&self) -> Capabilities;

    /// Fills in, on the agent's side, what the worker needs and cannot get itself (files
    /// fetched into `cache_dir`, with `progress` told what takes time). Most kinds need nothing.
    fn resolve(
        &mut self,
        cache_dir: &Path,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (cache_dir, progress);
        async { Ok(()) }
    }

    /// Builds the model in a worker on `device` (called inside the allocator's persistent
    /// pool: the weights made here get pages of their own size).
    fn load<B: ModelBackend>(&self, device: &B::Device) -> Result<Box<dyn Loaded<B>>, String>;
}

/// A model built in a worker. A request for a capability its kind does not declare is
/// refused by the API before it gets here; the defaults answer it anyway.
pub trait Loaded<B: Backend>: Send {
    /// Parameters.
    fn params(&self) -> u64;

    /// Bytes of the parameters.
    fn param_bytes(&self) -> u64;

    /// One small request, so that kernels are compiled and buffers sized before the first
    /// real one.
    fn warm_up(&self) -> Result<(), String>;

    /// A forward pass: the arg-max token per position and the sum of the logits.
    fn infer(&self, tokens: &[u32]) -> Result<(Vec<u32>, f64), String> {
        let _ = tokens;
        Err("this model does not take token ids (/v1/infer)".into())
    }

    /// Unit-length embeddings and token counts, in the order of `texts`.
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        let _ = texts;
        Err("this model does not embed (/v1/embeddings)".into())
    }
}
