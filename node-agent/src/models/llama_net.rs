//! Llama-family decoders in burn (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `MistralForCausalLM`): RMSNorm, rotary position embeddings (Hugging Face's half-rotation,
//! Llama 3's frequency scaling), grouped-query attention, a SwiGLU feed-forward layer,
//! optionally tied embeddings, and a key/value cache so that each new token costs one position.
//! Parameter names follow the checkpoints' (`model.layers.N.self_attn.q_proj`, ...).

use std::path::Path;

use rayon::prelude::*;

use burn::{
    module::Module,
    nn::{Embedding, EmbeddingConfig, RmsNorm, RmsNormConfig},
    prelude::*,
    tensor::{DType, activation},
};

use super::{
    hf_config::{DecoderConfig, Llama3Scaling},
    hf_weights,
    torch_linear::TorchLinear,
};
use crate::backend::ModelBackend;

#[derive(Module, Debug)]
struct Attention<B: Backend> {
    q_proj: TorchLinear<B>,
    k_proj: TorchLinear<B>,
    v_proj: TorchLinear<B>,
    o_proj: TorchLinear<B>,
}

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    gate_proj: TorchLinear<B>,
    up_proj: TorchLinear<B>,
    down_proj: TorchLinear<B>,
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    self_attn: Attention<B>,
    mlp: Mlp<B>,
    input_layernorm: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
}

/// The parameters, named as in the checkpoints (after `model.` is stripped).
#[derive(Module, Debug)]
struct Net<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<Block<B>>,
    norm: RmsNorm<B>,
    /// Absent when the output projection is the embedding's transpose.
    lm_head: Option<TorchLinear<B>>,
}

/// Keys of a checkpoint, renamed to the module's (burn's RMSNorm calls its weight `gamma`).
const REMAPS: [(&str, &str); 2] = [
    (r"^model\.", ""),
    (r"(_layernorm|^norm)\.weight$", "${1}.gamma"),
];

/// The keys and values of the positions seen so far, per layer (`[1, kv_heads, len, head_dim]`).
pub(crate) struct Cache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

/// A decoder with its weights on a device.
pub(crate) struct Decoder<B: Backend> {
    net: Net<B>,
    config: DecoderConfig,
    /// `[context, head_dim]` cosines and sines of each position's rotation.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    dtype: DType,
    device: B::Device,
}

fn rms<B: Backend>(c: &DecoderConfig, device: &B::Device) -> RmsNorm<B> {
    RmsNormConfig::new(c.hidden)
        .with_epsilon(c.eps)
        .init(device)
}

impl<B: Backend> Net<B> {
    fn init(c: &DecoderConfig, device: &B::Device) -> Self {
        let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        Self {
            embed_tokens: EmbeddingConfig::new(c.vocab, h).init(device),
            layers: (0..c.layers)
                .map(|_| Block {
                    self_attn: Attention {
                        q_proj: TorchLinear::new(h, q, c.qkv_bias, device),
                        k_proj: TorchLinear::new(h, kv, c.qkv_bias, device),
                        v_proj: TorchLinear::new(h, kv, c.qkv_bias, device),
                        o_proj: TorchLinear::new(q, h, false, device),
                    },
                    mlp: Mlp {
                        gate_proj: TorchLinear::new(h, c.intermediate, false, device),
                        up_proj: TorchLinear::new(h, c.intermediate, false, device),
                        down_proj: TorchLinear::new(c.intermediate, h, false, device),
                    },
                    input_layernorm: rms(c, device),
                    post_attention_layernorm: rms(c, device),
                })
                .collect(),
            norm: rms(c, device),
            lm_head: (!c.tied_embeddings).then(|| TorchLinear::new(h, c.vocab, false, device)),
        }
    }

    /// Every linear layer's weight stored `[in, out]` (for the CPU backend).
    fn transposed(self) -> Self {
        Self {
            embed_tokens: self.embed_tokens,
            layers: self
                .layers
                .into_iter()
                .map(|b| Block {
                    self_attn: Attention {
                        q_proj: b.self_attn.q_proj.transposed(),
                        k_proj: b.self_attn.k_proj.transposed(),
                        v_proj: b.self_attn.v_proj.transposed(),
                        o_proj: b.self_attn.o_proj.transposed(),
                    },
                    mlp: Mlp {
                        gate_proj: b.mlp.gate_proj.transposed(),
                        up_proj: b.mlp.up_proj.transposed(),
                        down_proj: b.mlp.down_proj.transposed(),
                    },
                    input_layernorm: b.input_layernorm,
                    post_attention_layernorm: b.post_attention_layernorm,
                })
                .collect(),
            norm: self.norm,
            lm_head: self.lm_head.map(TorchLinear::transposed),
        }
    }
}

/// The rotation frequencies, Llama 3's scaling applied (as transformers computes them).
pub(crate) fn inv_freq(c: &DecoderConfig) -> Vec<f64> {
    let d = c.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    let Some(Llama3Scaling {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_positions: original,
    }) = c.rope_scaling
    else {
        return base;
    };
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// `[context, head_dim]` cosines and sines of each position's rotation, both halves of a head
/// sharing the frequencies (transformers' `cat(freqs, freqs)`); computed in f64, rows in
/// parallel (Llama 3's 131,072 positions are 8 M angles).
fn rotation_tables(c: &DecoderConfig) -> (Vec<f32>, Vec<f32>) {
    let freqs = inv_freq(c);
    let d = c.head_dim;
    let mut cos = vec![0f32; c.context * d];
    let mut sin = vec![0f32; c.context * d];
    cos.par_chunks_mut(d)
        .zip(sin.par_chunks_mut(d))
        .enumerate()
        .for_each(|(pos, (cos, sin))| {
            for (i, f) in freqs.iter().enumerate() {
                let (s, c) = (pos as f64 * f).sin_cos();
                (cos[i], cos[i + d / 2]) = (c as f32, c as f32);
                (sin[i], sin[i + d / 2]) = (s as f32, s as f32);
            }
        });
    (cos, sin)
}

/// [`rotation_tables`] computed on the device, in f64 as there, and kept in `dtype` in the
/// allocator's persistent pool (a GPU makes Llama 3's 8 M angles in a millisecond; the host
/// needs tens of them, and the copy).
fn device_rotation_tables<B: Backend>(
    c: &DecoderConfig,
    dtype: DType,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = Tensor::<B, 1>::from_data(
        TensorData::new(inv_freq(c), [c.head_dim / 2]),
        (device, DType::F64),
    );
    let freqs = Tensor::cat(vec![half.clone(), half], 0).reshape([1, c.head_dim]);
    let positions = Tensor::<B, 1, Int>::arange(0..c.context as i64, device)
        .float()
        .cast(DType::F64)
        .reshape([c.context, 1]);
    let angles = positions.mul(freqs);
    B::memory_persistent_allocations(device, angles, |angles| {
        (angles.clone().cos().cast(dtype), angles.sin().cast(dtype))
    })
}

impl<B: ModelBackend> Decoder<B> {
    /// Builds the decoder and loads its weights from `dir` in `dtype`; returns it with the
    /// bytes read. `transpose` stores the linear layers' weights `[in, out]` (the CPU backend's
    /// matrix product wants them so).
    pub(crate) fn load(
        dir: &Path,
        config: DecoderConfig,
        dtype: DType,
        transpose: bool,
        device: &B::Device,
    ) -> Result<(Self, u64), String> {
        // The rotation tables are made while the weights' bytes are in flight; on a GPU their
        // kernels are also waited for then (queued, they would run at the next flush, after
        // the copy).
        let tables = || {
            if B::ACCELERATOR {
                let tables = device_rotation_tables(&config, dtype, device);
                B::sync(device).map(|()| tables)
            } else {
                let (cos, sin) = rotation_tables(&config);
                let table = |v: Vec<f32>| {
                    let data = TensorData::new(v, [config.context, config.head_dim]);
                    Tensor::<B, 2>::from_data(data, device).cast(dtype)
                };
                Ok((table(cos), table(sin)))
            }
        };
        let (net, bytes, tables) = hf_weights::load_beside(
            Net::init(&config, device),
            dir,
            &REMAPS,
            dtype,
            device,
            tables,
        )?;
        let (cos, sin) = tables.map_err(|e| format!("making the rotation tables failed: {e}"))?;
        let net = if transpose { net.transposed() } else { net };
        Ok((
            Self {
                net,
                config,
                cos,
                sin,
                dtype,
                device: device.clone(),
            },
            bytes,
        ))
    }
}

impl<B: Backend> Decoder<B> {
    /// Its dimensions.
    pub(crate) fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Parameters.
    pub(crate) fn params(&self) -> u64 {
        self.net.num_params() as u64
    }

    /// An empty cache.
    pub(crate) fn cache(&self) -> Cache<B> {
        Cache {
            layers: vec![None; self.config.layers],
            len: 0,
        }
    }

    /// Runs `tokens` after the positions in `cache` (which grows by them) and returns the
    /// logits, in f32: `[tokens.len(), vocab]` with `all`, else `[1, vocab]` for the last.
    pub(crate) fn forward(&self, tokens: &[u32], cache: &mut Cache<B>, all: bool) -> Tensor<B, 2> {
        let s = tokens.len();
        let start = cache.len;
        assert!(
            s > 0 && start + s <= self.config.context,
            "past the context"
        );
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, s]), &self.device);
        let mut x = self.net.embed_tokens.forward(ids);
        let d = self.config.head_dim;
        let cos = self
            .cos
            .clone()
            .slice([start..start + s, 0..d])
            .reshape([1, 1, s, d]);
        let sin = self
            .sin
            .clone()
            .slice([start..start + s, 0..d])
            .reshape([1, 1, s, d]);
        let mask = (s > 1).then(|| self.causal_mask(start, s));
        for (block, kv) in self.net.layers.iter().zip(cache.layers.iter_mut()) {
            let h = block.input_layernorm.forward(x.clone());
            let attended = self.attention(&block.self_attn, h, &cos, &sin, mask.clone(), kv);
            x = x + attended;
            let h = block.post_attention_layernorm.forward(x.clone());
            let mlp = &block.mlp;
            let gated = activation::silu(mlp.gate_proj.forward(h.clone())) * mlp.up_proj.forward(h);
            x = x + mlp.down_proj.forward(gated);
        }
        cache.len += s;
        let hidden = self.config.hidden;
        let x = if all || s == 1 {
            x.reshape([s, hidden])
        } else {
            x.slice([0..1, s - 1..s, 0..hidden]).reshape([1, hidden])
        };
        let x = self.net.norm.forward(x);
        let logits = match &self.net.lm_head {
            Some(head) => head.forward(x),
            None => x.matmul(self.net.embed_tokens.weight.val().transpose()),
        };
        logits.cast(DType::F32)
    }

    /// `[1, 1, s, start + s]`: 0 where position `start + i` may look at `j`, a large negative
    /// number where `j` is in its future.
    fn causal_mask(&self, start: usize, s: usize) -> Tensor<B, 4> {
        let t = start + s;
        let values: Vec<f32> = (0..s)
            .flat_map(|i| (0..t).map(move |j| if j > start + i { -1e30 } else { 0.0 }))
            .collect();
        Tensor::<B, 4>::from_data(TensorData::new(values, [1, 1, s, t]), &self.device)
    }

    fn attention(
        &self,
        attn: &Attention<B>,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        mask: Option<Tensor<B, 4>>,
        kv: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [_, s, _] = x.dims();
        let (heads, kv_heads, d) = (c.heads, c.kv_heads, c.head_dim);
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([1, s, n, d]).swap_dims(1, 2);
        let q = rotate(split(attn.q_proj.forward(x.clone()), heads), cos, sin);
        let k = rotate(split(attn.k_proj.forward(x.clone()), kv_heads), cos, sin);
        let v = split(attn.v_proj.forward(x), kv_heads);
        let (k, v) = match kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let t = k.dims()[2];
        // Grouped-query attention without copying keys and values per query head: the query
        // heads that share a key/value head are stacked as rows of one product with it.
        let group = heads / kv_heads;
        let q = q.reshape([1, kv_heads, group * s, d]);
        let scores = q.matmul(k.transpose()).mul_scalar(1.0 / (d as f64).sqrt());
        // Softmax in f32 whatever the weights' dtype, as transformers does.
        let mut scores = scores.cast(DType::F32);
        if let Some(mask) = mask {
            scores = (scores.reshape([1, kv_heads, group, s, t]) + mask.unsqueeze_dim(2))
                .reshape([1, kv_heads, group * s, t]);
        }
        let weights = activation::softmax(scores, 3).cast(self.dtype);
        let out = weights
            .matmul(v)
            .reshape([1, heads, s, d])
            .swap_dims(1, 2)
            .reshape([1, s, heads * d]);
        attn.o_proj.forward(out)
    }
}

/// `x * cos + rotate_half(x) * sin`, where `rotate_half` swaps a head's halves and negates
/// the second (transformers' convention, not the interleaved pairs of the original Llama).
fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let first = x.clone().slice([0..b, 0..h, 0..s, 0..d / 2]);
    let second = x.clone().slice([0..b, 0..h, 0..s, d / 2..d]);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos.clone() + rotated * sin.clone()
}
