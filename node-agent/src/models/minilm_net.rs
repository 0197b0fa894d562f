//! all-MiniLM-L6-v2 sentence embeddings: a 6-layer BERT encoder in burn, weights from
//! `model.safetensors` through burn-store, tokens from `tokenizer.json` through `tokenizers`,
//! then mean pooling over the attention mask and L2 normalisation, as sentence-transformers
//! does for this model.
//!
//! Inputs longer than 256 tokens ([CLS] and [SEP] included) are truncated to 256, as
//! sentence-transformers truncates them (`max_seq_length` 256); the rest of the text is ignored.

use std::path::Path;

use burn::{
    module::Module,
    nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig},
    prelude::*,
    store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore},
};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::backend::kernels::Kernels;

/// Parameters of all-MiniLM-L6-v2 (the pooler excluded).
pub(crate) const PARAMS: u64 = 22_565_376;
/// The longest input, in tokens.
pub(crate) const MAX_TOKENS: usize = 256;
/// Embedding width.
pub(crate) const DIM: usize = 384;
const VOCAB: usize = 30_522;
const POSITIONS: usize = 512;
const HEADS: usize = 12;
const LAYERS: usize = 6;
const FFN: usize = 1536;
const EPS: f64 = 1e-12;

/// The files a MiniLM directory must hold.
pub(crate) const FILES: [&str; 2] = ["model.safetensors", "tokenizer.json"];

/// One encoder layer.
#[derive(Module, Debug)]
pub(crate) struct Layer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    inter: Linear<B>,
    out: Linear<B>,
    out_norm: LayerNorm<B>,
}

/// The BERT encoder.
#[derive(Module, Debug)]
pub(crate) struct Bert<B: Backend> {
    word_embeddings: Embedding<B>,
    position_embeddings: Embedding<B>,
    token_type_embeddings: Embedding<B>,
    embeddings_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
}

/// The model with its tokenizer.
pub(crate) struct MiniLm<B: Backend> {
    bert: Bert<B>,
    tokenizer: Tokenizer,
    device: B::Device,
    batch: usize,
}

fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out).init(device)
}

fn norm<B: Backend>(device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(DIM).with_epsilon(EPS).init(device)
}

impl<B: Kernels> Bert<B> {
    fn init(device: &B::Device) -> Self {
        Self {
            word_embeddings: EmbeddingConfig::new(VOCAB, DIM).init(device),
            position_embeddings: EmbeddingConfig::new(POSITIONS, DIM).init(device),
            token_type_embeddings: EmbeddingConfig::new(2, DIM).init(device),
            embeddings_norm: norm(device),
            layers: (0..LAYERS)
                .map(|_| Layer {
                    query: linear(DIM, DIM, device),
                    key: linear(DIM, DIM, device),
                    value: linear(DIM, DIM, device),
                    attn_out: linear(DIM, DIM, device),
                    attn_norm: norm(device),
                    inter: linear(DIM, FFN, device),
                    out: linear(FFN, DIM, device),
                    out_norm: norm(device),
                })
                .collect(),
        }
    }

    /// Hidden states `[b, s, DIM]` for ids and mask `[b, s]`.
    fn forward(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &device)
            .reshape([1, s])
            .expand([b, s]);
        let types = Tensor::<B, 2, Int>::zeros([b, s], &device);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(types);
        let mut x = self.embeddings_norm.forward(x);
        // Padding positions get a large negative score before the softmax.
        let bias = (mask.ones_like() - mask)
            .mul_scalar(-1e4)
            .reshape([b, 1, 1, s]);
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        x
    }
}

impl<B: Kernels> Layer<B> {
    /// One encoder layer. The linear layers run on `[b * s, DIM]`: one large matrix product
    /// each, rather than one small product (and one packing of the weights) per sentence.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let x = x.reshape([b * s, DIM]);
        let q = self.query.forward(x.clone());
        let k = self.key.forward(x.clone());
        let v = self.value.forward(x.clone());
        let attended = B::self_attention(q, k, v, bias, [b, s, HEADS]);
        let x = self.attn_norm.forward(self.attn_out.forward(attended) + x);
        let h = self.out.forward(B::gelu_erf(self.inter.forward(x.clone())));
        self.out_norm.forward(h + x).reshape([b, s, DIM])
    }
}

/// The weights file of a MiniLM directory, with a hint on how to get it.
pub(crate) fn missing(dir: &Path) -> Option<String> {
    FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| !p.is_file())
        .map(|p| {
            format!(
                "{} is missing: the agent downloads all-MiniLM-L6-v2 into its cache on first use \
             (network needed), or set `dir` in the catalog to a folder holding {}",
                p.display(),
                FILES.join(" and ")
            )
        })
}

impl<B: Kernels> MiniLm<B> {
    /// Loads the weights and the tokenizer from `dir`; `batch` sentences go through the
    /// model at once.
    pub(crate) fn load(dir: &Path, device: &B::Device, batch: usize) -> Result<Self, String> {
        if let Some(problem) = missing(dir) {
            return Err(problem);
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("{}: {e}", dir.join("tokenizer.json").display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let weights = dir.join("model.safetensors");
        let mut store = SafetensorsStore::from_file(&weights)
            .with_key_remapping(r"^embeddings\.LayerNorm\.", "embeddings_norm.")
            .with_key_remapping(r"^embeddings\.", "")
            .with_key_remapping(
                r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
                "layers.$1.$2.",
            )
            .with_key_remapping(
                r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
                "layers.$1.attn_out.",
            )
            .with_key_remapping(
                r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
                "layers.$1.attn_norm.",
            )
            .with_key_remapping(
                r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
                "layers.$1.inter.",
            )
            .with_key_remapping(r"^encoder\.layer\.(\d+)\.output\.dense\.", "layers.$1.out.")
            .with_key_remapping(
                r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
                "layers.$1.out_norm.",
            )
            .with_from_adapter(PyTorchToBurnAdapter)
            .allow_partial(false);
        let mut bert = Bert::init(device);
        let result = bert
            .load_from(&mut store)
            .map_err(|e| format!("{}: {e}", weights.display()))?;
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(format!(
                "{}: cannot load the weights: {result}",
                weights.display()
            ));
        }
        B::sync(device).map_err(|e| e.to_string())?;
        Ok(Self {
            bert,
            tokenizer,
            device: device.clone(),
            batch,
        })
    }

    /// Parameters.
    pub(crate) fn params(&self) -> u64 {
        self.bert.num_params() as u64
    }

    /// Normalised embeddings and token counts (after truncation, [CLS] and [SEP] included),
    /// in the order of `texts`.
    pub(crate) fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        // Sort by length so that each batch pads little; answers go back in input order.
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut counts = vec![0u32; texts.len()];
        for chunk in order.chunks(self.batch) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let (v, c) = self.embed_batch(&batch)?;
            for ((&i, v), c) in chunk.iter().zip(v).zip(c) {
                vectors[i] = v;
                counts[i] = c;
            }
        }
        Ok((vectors, counts))
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        let b = encodings.len();
        let s = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        let mut counts = Vec::with_capacity(b);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&t| t as i64));
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
            counts.push(e.get_attention_mask().iter().sum::<u32>());
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &self.device);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, s]), &self.device);
        let hidden = self.bert.forward(ids, mask.clone());
        // Mean over the real tokens, then unit length.
        let mask3 = mask.clone().unsqueeze_dim::<3>(2);
        let summed = (hidden * mask3).sum_dim(1).reshape([b, DIM]);
        let lengths = mask.sum_dim(1).clamp_min(1e-9);
        let mean = summed / lengths;
        let norm = mean
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let normalised = mean / norm;
        let flat: Vec<f32> = normalised
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("reading embeddings: {e:?}"))?;
        Ok((flat.chunks(DIM).map(<[f32]>::to_vec).collect(), counts))
    }
}
