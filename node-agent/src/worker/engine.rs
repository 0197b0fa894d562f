//! What a worker runs: a model on one burn backend, with the backend's own memory figures.
//!
//! Everything runs on the worker's main thread: cubecl keeps one memory pool per thread's
//! stream, so loading, inference, measurement and cleanup must share a thread.

use std::time::Instant;

use burn::prelude::*;

use crate::{
    backend::ModelBackend,
    models::{
        Loaded, ModelSpec,
        generate::{GenError, Outcome, Prompt, Sampling},
    },
};

/// A model load's figures.
pub(crate) struct LoadInfo {
    /// Parameters.
    pub params: u64,
    /// Bytes of the parameters.
    pub param_bytes: u64,
    /// Milliseconds creating the device context.
    pub context_ms: f64,
    /// Milliseconds creating the weights.
    pub weights_ms: f64,
    /// Milliseconds of the warm-up pass.
    pub warmup_ms: f64,
    /// Bytes of weight files read.
    pub read_bytes: u64,
    /// The port a model server listens on (server models).
    pub port: Option<u16>,
    /// Bytes of the tensors one request holds at once at its largest, where estimated.
    pub working_bytes: Option<u64>,
}

/// A forward pass's result.
pub(crate) struct Inference {
    /// Arg-max per position.
    pub next_tokens: Vec<u32>,
    /// Sum of the logits.
    pub checksum: f64,
    /// Milliseconds.
    pub compute_ms: f64,
}

/// A model runner, independent of the backend.
pub(crate) trait Engine {
    /// The backend's name.
    fn backend(&self) -> &'static str;
    /// Builds a model (replacing any).
    fn load(&mut self, spec: &ModelSpec) -> Result<LoadInfo, String>;
    /// A forward pass over token ids.
    fn infer(&mut self, tokens: &[u32]) -> Result<Inference, String>;
    /// Sentence embeddings.
    fn embed(&mut self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String>;
    /// Text generation, each piece given to `emit` (which answers whether to go on).
    fn generate(
        &mut self,
        prompt: &Prompt,
        sampling: &Sampling,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Outcome, GenError> {
        let _ = (prompt, sampling, emit);
        Err(GenError::Rejected(
            "this model does not generate text here".into(),
        ))
    }
    /// Allocator bytes (in use, reserved).
    fn allocator(&self) -> (u64, u64);
    /// Releases pooled memory; waits until the device did.
    fn cleanup(&mut self);
    /// Called once the worker has been idle for a while after serving requests: returns
    /// what their temporaries left in the pool (a model server manages its own memory).
    fn idle(&mut self) {
        self.cleanup();
    }
    /// Test-only: holds `bytes` more, pooled (cleanup releases it) or referenced.
    fn leak(&mut self, bytes: u64, pooled: bool) -> Result<(), String>;
    /// Bytes the test-only leak op holds referenced.
    fn leaked(&self) -> u64;
    /// Resident memory of the worker and everything it started.
    fn tree_rss(&self) -> u64 {
        crate::probe::process::rss_bytes(std::process::id()).unwrap_or(0)
    }
    /// Ends what the worker started, before it exits.
    fn stop(&mut self) {}
}

/// The engine of backend `B`.
pub(crate) struct BurnEngine<B: ModelBackend> {
    device: B::Device,
    name: &'static str,
    model: Option<Box<dyn Loaded<B>>>,
    held: Vec<Tensor<B, 1>>,
    held_bytes: u64,
}

impl<B: ModelBackend> BurnEngine<B> {
    /// An engine on `device`.
    pub(crate) fn new(device: B::Device, name: &'static str) -> Self {
        Self {
            device,
            name,
            model: None,
            held: vec![],
            held_bytes: 0,
        }
    }

    fn model(&self) -> Result<&dyn Loaded<B>, String> {
        self.model
            .as_deref()
            .ok_or_else(|| "no model is loaded in this worker".to_string())
    }
}

fn ms(since: Instant) -> f64 {
    crate::units::ms(since.elapsed())
}

impl<B: ModelBackend> Engine for BurnEngine<B> {
    fn backend(&self) -> &'static str {
        self.name
    }

    fn load(&mut self, spec: &ModelSpec) -> Result<LoadInfo, String> {
        self.model = None;
        // The first touch of the device creates its context (CUDA: ~0.1-0.2 s).
        let context = Instant::now();
        let _ = Tensor::<B, 1>::zeros([1], &self.device).into_data();
        let context_ms = ms(context);
        let started = Instant::now();
        // Each kind puts its weights in the allocator's persistent pool (allocations of their
        // exact size), so the dynamic pools hold only temporaries, whose pages the post-load
        // cleanup can return whole.
        let model = spec.kind.load::<B>(&self.device)?;
        B::sync(&self.device).map_err(|e| format!("creating the weights failed: {e}"))?;
        let weights_ms = ms(started);
        let warm = Instant::now();
        model.warm_up()?;
        let info = LoadInfo {
            params: model.params(),
            param_bytes: model.param_bytes(),
            context_ms,
            weights_ms,
            warmup_ms: ms(warm),
            read_bytes: model.read_bytes(),
            port: None,
            working_bytes: model.working_bytes(),
        };
        self.model = Some(model);
        Ok(info)
    }

    fn infer(&mut self, tokens: &[u32]) -> Result<Inference, String> {
        let started = Instant::now();
        let (next_tokens, checksum) = self.model()?.infer(tokens)?;
        Ok(Inference {
            next_tokens,
            checksum,
            compute_ms: ms(started),
        })
    }

    fn embed(&mut self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        self.model()?.embed(texts)
    }

    fn generate(
        &mut self,
        prompt: &Prompt,
        sampling: &Sampling,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Outcome, GenError> {
        self.model()
            .map_err(GenError::Failed)?
            .generate(prompt, sampling, emit)
    }

    fn allocator(&self) -> (u64, u64) {
        B::allocator_bytes(&self.device)
    }

    fn cleanup(&mut self) {
        B::release_pooled(&self.device);
    }

    fn leak(&mut self, bytes: u64, pooled: bool) -> Result<(), String> {
        if pooled {
            B::pooled_leak(&self.device, bytes);
        } else {
            let n = (bytes / 4) as usize;
            self.held.push(Tensor::ones([n], &self.device));
            B::sync(&self.device).map_err(|e| e.to_string())?;
            self.held_bytes += bytes;
        }
        Ok(())
    }

    fn leaked(&self) -> u64 {
        self.held_bytes
    }
}
