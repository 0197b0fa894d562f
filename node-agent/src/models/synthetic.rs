//! Synthetic models: a GPT-like decoder stack of a requested parameter count, with weights
//! drawn from a seeded generator, so that a catalog can hold models of any size without
//! downloading anything, and their memory, load time and leaks can be measured for real.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    DType,
    kind::{Capabilities, Kind, Loaded, Size, TokenInput},
    synthetic_net::{Architecture, HEAD_DIM, SyntheticNet},
    working,
};
use crate::backend::ModelBackend;

/// The smallest synthetic model: below this the fixed overheads dominate every figure.
pub(crate) const MIN_PARAMS: u64 = 100_000;
/// The largest: 100 billion parameters.
pub(crate) const MAX_PARAMS: u64 = 100_000_000_000;

/// A synthetic model's catalog entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// The parameter count to aim for; the real one is within a few percent.
    pub params: u64,
    /// Element type of the weights.
    #[serde(default)]
    pub dtype: DType,
    /// Decoder layers.
    #[serde(default = "default_layers")]
    pub layers: u32,
    /// Vocabulary size (token ids are below it).
    #[serde(default = "default_vocab")]
    pub vocab: u32,
    /// The longest input, in tokens.
    #[serde(default = "default_context")]
    pub context: u32,
    /// Seed of the weights: the same seed gives the same weights on every backend.
    #[serde(default)]
    pub seed: u64,
}

fn default_layers() -> u32 {
    4
}
fn default_vocab() -> u32 {
    4096
}
fn default_context() -> u32 {
    256
}

impl SyntheticSpec {
    /// Checks the ranges; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_PARAMS..=MAX_PARAMS).contains(&self.params) {
            return Err(format!(
                "params {} is outside {MIN_PARAMS}..={MAX_PARAMS}",
                self.params
            ));
        }
        if !(1..=128).contains(&self.layers) {
            return Err(format!("layers {} is outside 1..=128", self.layers));
        }
        if !(2..=1_000_000).contains(&self.vocab) {
            return Err(format!("vocab {} is outside 2..=1000000", self.vocab));
        }
        if !(1..=8192).contains(&self.context) {
            return Err(format!("context {} is outside 1..=8192", self.context));
        }
        Ok(())
    }

    /// The width that brings the parameter count closest to `params`: each layer holds about
    /// 12·d² parameters (attention 4·d², MLP 8·d²), the embeddings (vocab + context)·d.
    pub fn architecture(&self) -> Architecture {
        let l = self.layers as f64;
        let e = (self.vocab + self.context) as f64;
        let d = (-e + (e * e + 48.0 * l * self.params as f64).sqrt()) / (24.0 * l);
        let heads = ((d / HEAD_DIM as f64).round() as u64).max(1);
        Architecture {
            d_model: (heads * HEAD_DIM) as usize,
            heads: heads as usize,
            layers: self.layers as usize,
            vocab: self.vocab as usize,
            context: self.context as usize,
        }
    }
}

impl Kind for SyntheticSpec {
    const NAME: &'static str = "synthetic";

    fn check(&self) -> Result<(), String> {
        SyntheticSpec::check(self)
    }

    fn size(&self) -> Size {
        Size {
            params: self.architecture().params(),
            dtype: self.dtype,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            infer: Some(TokenInput {
                vocab: self.vocab,
                context: self.context,
            }),
            ..Capabilities::default()
        }
    }

    fn load<B: ModelBackend>(&self, device: &B::Device) -> Result<Box<dyn Loaded<B>>, String> {
        // Each weight matrix is drawn into an allocation of its exact size in the persistent
        // pool (`ModelBackend::random_weight`). No persistent scope around the whole build:
        // cubecl ends any scope by switching back to its dynamic pools, so an enclosing one
        // would not cover what follows the first matrix anyway. The biases and norms (small)
        // are in the dynamic pools, the 19-20 MiB of pool a synthetic model keeps on an H100.
        let net = SyntheticNet::new(
            self.architecture(),
            self.dtype,
            self.seed,
            device,
            B::ACCELERATOR,
        )?;
        Ok(Box::new(Synthetic {
            net,
            arch: self.architecture(),
            size: Kind::size(self),
            probe: (0..self.context.min(16)).map(|i| i % self.vocab).collect(),
        }))
    }
}

/// A synthetic model built in a worker.
struct Synthetic<B: Backend> {
    net: SyntheticNet<B>,
    arch: Architecture,
    size: Size,
    /// The warm-up's token ids.
    probe: Vec<u32>,
}

impl<B: Backend> Loaded<B> for Synthetic<B> {
    fn params(&self) -> u64 {
        self.size.params
    }

    fn param_bytes(&self) -> u64 {
        self.size.bytes()
    }

    fn working_bytes(&self) -> Option<u64> {
        // One sequence at its longest, and its logits (with the copy the arg-max reads).
        let a = &self.arch;
        let elem = self.size.dtype.size() as usize;
        let logits = 2 * (a.context * a.vocab * elem) as u64;
        let block =
            working::transformer_block(1, a.context, a.d_model, 4 * a.d_model, a.heads, elem);
        Some(block + logits)
    }

    fn warm_up(&self) -> Result<(), String> {
        let _ = self.net.forward(&self.probe).sum().into_data();
        Ok(())
    }

    fn infer(&self, tokens: &[u32]) -> Result<(Vec<u32>, f64), String> {
        let logits = self.net.forward(tokens);
        let [_, s, _] = logits.dims();
        let next = logits
            .clone()
            .argmax(2)
            .reshape([s])
            .into_data()
            .iter::<i64>()
            .map(|t| t as u32)
            .collect();
        let checksum = logits.sum().into_data().iter::<f64>().next().unwrap_or(0.0);
        Ok((next, checksum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(params: u64, layers: u32) -> SyntheticSpec {
        SyntheticSpec {
            params,
            dtype: DType::F32,
            layers,
            vocab: 4096,
            context: 256,
            seed: 0,
        }
    }

    #[test]
    fn parameter_count_is_close_to_the_request() {
        for (params, layers) in [(25_000_000, 4), (100_000_000, 6), (2_000_000_000, 8)] {
            let real = spec(params, layers).architecture().params() as f64;
            let err = (real - params as f64).abs() / params as f64;
            assert!(
                err < 0.08,
                "{params} params, {layers} layers: got {real} ({err:.3})"
            );
        }
    }

    #[test]
    fn ranges_are_checked() {
        assert!(spec(10, 4).check().unwrap_err().contains("params"));
        assert!(spec(1_000_000, 0).check().unwrap_err().contains("layers"));
        assert!(spec(1_000_000, 4).check().is_ok());
    }
}
