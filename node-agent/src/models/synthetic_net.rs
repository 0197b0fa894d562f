//! The synthetic model in burn: token and position embeddings, pre-norm decoder blocks
//! (causal multi-head attention, GELU MLP), a final norm and logits tied to the embeddings.

use burn::{
    module::{Module, Param},
    nn::{Embedding, LayerNorm, LayerNormConfig, Linear},
    prelude::*,
    tensor::{DType, TensorPrimitive, activation},
};

use super::{DType as WeightType, weights};
use crate::backend::ModelBackend;

/// Width of one attention head.
pub(crate) const HEAD_DIM: u64 = 64;

/// The model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Architecture {
    /// Model width (a multiple of [`HEAD_DIM`]).
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest input.
    pub context: usize,
}

impl Architecture {
    /// The exact parameter count.
    pub fn params(&self) -> u64 {
        let d = self.d_model as u64;
        let per_layer = 2 * d          // attention layer norm
            + 3 * d * d + 3 * d        // query, key, value
            + d * d + d                // attention output
            + 2 * d                    // MLP layer norm
            + 4 * d * d + 4 * d        // MLP up
            + 4 * d * d + d; // MLP down
        (self.vocab as u64 + self.context as u64) * d + self.layers as u64 * per_layer + 2 * d
    }
}

/// One decoder block.
#[derive(Module, Debug)]
pub(crate) struct Block<B: Backend> {
    ln_attn: LayerNorm<B>,
    qkv: Linear<B>,
    out: Linear<B>,
    ln_mlp: LayerNorm<B>,
    up: Linear<B>,
    down: Linear<B>,
    heads: usize,
}

/// The whole model.
#[derive(Module, Debug)]
pub(crate) struct SyntheticNet<B: Backend> {
    tokens: Embedding<B>,
    positions: Embedding<B>,
    blocks: Vec<Block<B>>,
    ln_final: LayerNorm<B>,
}

/// Builds tensors of one model from its seed, numbering them in construction order.
struct Init<'a, B: ModelBackend> {
    device: &'a B::Device,
    seed: u64,
    dtype: DType,
    next: u64,
    threads: usize,
    on_device: bool,
}

impl<B: ModelBackend> Init<'_, B> {
    fn matrix(&mut self, rows: usize, cols: usize) -> Param<Tensor<B, 2>> {
        self.next += 1;
        // Uniform with the variance of Xavier init: forward activations stay in range.
        let scale = (6.0 / (rows + cols) as f32).sqrt();
        if self.on_device {
            // Drawn where they live: no host-to-device transfer. Seeded per tensor, so the
            // weights do not depend on the order of creation (the same on one GPU model).
            B::seed(self.device, weights::tensor_seed(self.seed, self.next));
            return Param::from_tensor(Tensor::from_primitive(TensorPrimitive::Float(
                B::random_weight(self.device, vec![rows, cols], scale, self.dtype),
            )));
        }
        let values = weights::uniform(self.seed, self.next, rows * cols, scale, self.threads);
        Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [rows, cols]),
            (self.device, self.dtype),
        ))
    }

    fn linear(&mut self, d_in: usize, d_out: usize) -> Linear<B> {
        Linear {
            weight: self.matrix(d_in, d_out),
            bias: Some(Param::from_tensor(Tensor::zeros(
                [d_out],
                (self.device, self.dtype),
            ))),
        }
    }

    fn norm(&mut self, d: usize) -> LayerNorm<B> {
        let norm: LayerNorm<B> = LayerNormConfig::new(d).init(self.device);
        let dtype = self.dtype;
        norm.map(&mut CastTo(dtype))
    }
}

/// Casts every float parameter of a module.
struct CastTo(DType);

impl<B: Backend> burn::module::ModuleMapper<B> for CastTo {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        p.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}

/// The burn element type of a catalog dtype.
pub(crate) fn burn_dtype(dtype: WeightType) -> DType {
    match dtype {
        WeightType::F32 => DType::F32,
        WeightType::F16 => DType::F16,
        WeightType::Bf16 => DType::BF16,
    }
}

impl<B: ModelBackend> SyntheticNet<B> {
    /// Creates the model on `device` with the weights its seed defines: generated on the host
    /// by a counter-based generator (identical on every backend), or with `on_device` by the
    /// device's own generator (no transfer; identical on one GPU model).
    pub(crate) fn new(
        architecture: Architecture,
        weight_type: WeightType,
        seed: u64,
        device: &B::Device,
        on_device: bool,
    ) -> Result<Self, String> {
        let dtype = burn_dtype(weight_type);
        if !B::supports_dtype(device, dtype) {
            return Err(format!(
                "dtype {} is not supported by the {} backend (use f32 on the CPU)",
                weight_type.as_str(),
                B::name(device)
            ));
        }
        let Architecture {
            d_model: d,
            heads,
            layers,
            vocab,
            context,
        } = architecture;
        let mut init = Init::<B> {
            device,
            seed,
            dtype,
            next: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            on_device,
        };
        let tokens = Embedding {
            weight: init.matrix(vocab, d),
        };
        let positions = Embedding {
            weight: init.matrix(context, d),
        };
        let blocks = (0..layers)
            .map(|_| Block {
                ln_attn: init.norm(d),
                qkv: init.linear(d, 3 * d),
                out: init.linear(d, d),
                ln_mlp: init.norm(d),
                up: init.linear(d, 4 * d),
                down: init.linear(4 * d, d),
                heads,
            })
            .collect();
        let ln_final = init.norm(d);
        Ok(Self {
            tokens,
            positions,
            blocks,
            ln_final,
        })
    }
}

impl<B: Backend> SyntheticNet<B> {
    /// Logits `[1, s, vocab]` for token ids `[s]`.
    pub(crate) fn forward(&self, ids: &[u32]) -> Tensor<B, 3> {
        let device = self.tokens.weight.device();
        let s = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, s]), &device);
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &device).reshape([1, s]);
        let mut x = self.tokens.forward(ids) + self.positions.forward(positions);
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = self.ln_final.forward(x);
        let table = self.tokens.weight.val().transpose().unsqueeze::<3>();
        x.matmul(table)
    }
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let h = self.heads;
        let dk = d / h;
        let qkv = self.qkv.forward(self.ln_attn.forward(x.clone()));
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([b, s, h, dk])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.transpose()).div_scalar((dk as f32).sqrt());
        let mask = Tensor::<B, 2, Bool>::tril_mask([s, s], 0, &x.device()).unsqueeze::<4>();
        let weights = activation::softmax(scores.mask_fill(mask, -1e4), 3);
        let attended = weights.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        let x = x + self.out.forward(attended);
        let mlp = self.down.forward(activation::gelu(
            self.up.forward(self.ln_mlp.forward(x.clone())),
        ));
        x + mlp
    }
}
