//! BERT encoders in burn (`BertModel`): embeddings, then post-norm encoder layers with GELU,
//! of any size `config.json` gives. Parameter names follow the checkpoints' after renaming
//! ([`REMAPS`]); a pooler, if saved, is not used. The attention and GELU are the backend's [`Kernels`].

use burn::{
    module::Module,
    nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig},
    prelude::*,
    tensor::DType,
};

use super::{hf_config::BertConfig, torch_linear::TorchLinear};
use crate::backend::kernels::Kernels;

/// Keys of a checkpoint, renamed to the module's.
pub(crate) const REMAPS: [(&str, &str); 11] = [
    (r"^bert\.", ""),
    (r"^embeddings\.LayerNorm\.", "embeddings_norm."),
    (r"^embeddings\.", ""),
    (
        r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
        "layers.$1.$2.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        "layers.$1.attn_out.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
        "layers.$1.attn_norm.",
    ),
    (
        r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
        "layers.$1.inter.",
    ),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", "layers.$1.out."),
    (
        r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
        "layers.$1.out_norm.",
    ),
    // burn's LayerNorm calls its parameters gamma and beta.
    (r"norm\.weight$", "norm.gamma"),
    (r"norm\.bias$", "norm.beta"),
];

/// One encoder layer.
#[derive(Module, Debug)]
pub(crate) struct Layer<B: Backend> {
    query: TorchLinear<B>,
    key: TorchLinear<B>,
    value: TorchLinear<B>,
    attn_out: TorchLinear<B>,
    attn_norm: LayerNorm<B>,
    inter: TorchLinear<B>,
    out: TorchLinear<B>,
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

fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> TorchLinear<B> {
    TorchLinear::new(d_in, d_out, true, device)
}

fn norm<B: Backend>(c: &BertConfig, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(c.hidden)
        .with_epsilon(c.eps)
        .init(device)
}

impl<B: Kernels> Bert<B> {
    /// The encoder of `c`'s dimensions, its parameters to be loaded.
    pub(crate) fn init(c: &BertConfig, device: &B::Device) -> Self {
        let h = c.hidden;
        Self {
            word_embeddings: EmbeddingConfig::new(c.vocab, h).init(device),
            position_embeddings: EmbeddingConfig::new(c.max_positions, h).init(device),
            token_type_embeddings: EmbeddingConfig::new(c.type_vocab, h).init(device),
            embeddings_norm: norm(c, device),
            layers: (0..c.layers)
                .map(|_| Layer {
                    query: linear(h, h, device),
                    key: linear(h, h, device),
                    value: linear(h, h, device),
                    attn_out: linear(h, h, device),
                    attn_norm: norm(c, device),
                    inter: linear(h, c.intermediate, device),
                    out: linear(c.intermediate, h, device),
                    out_norm: norm(c, device),
                })
                .collect(),
        }
    }

    /// Every linear layer's weight stored `[in, out]` (for the CPU backend).
    pub(crate) fn transposed(self) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| Layer {
                    query: l.query.transposed(),
                    key: l.key.transposed(),
                    value: l.value.transposed(),
                    attn_out: l.attn_out.transposed(),
                    inter: l.inter.transposed(),
                    out: l.out.transposed(),
                    ..l
                })
                .collect(),
            ..self
        }
    }

    /// Hidden states `[b, s, hidden]` for ids and mask `[b, s]`; `heads` attention heads.
    pub(crate) fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2>,
        heads: usize,
    ) -> Tensor<B, 3> {
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
            .reshape([b, 1, 1, s])
            .cast(x.dtype());
        for layer in &self.layers {
            x = layer.forward(x, bias.clone(), heads);
        }
        x
    }

    /// The weights' dtype.
    pub(crate) fn dtype(&self) -> DType {
        self.word_embeddings.weight.val().dtype()
    }
}

impl<B: Kernels> Layer<B> {
    /// One encoder layer. The linear layers run on `[b * s, hidden]`: one large matrix
    /// product each, rather than one small product (and one packing of the weights) per
    /// sentence.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>, heads: usize) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let x = x.reshape([b * s, h]);
        let q = self.query.forward(x.clone());
        let k = self.key.forward(x.clone());
        let v = self.value.forward(x.clone());
        let attended = B::self_attention(q, k, v, bias, [b, s, heads]);
        let x = self.attn_norm.forward(self.attn_out.forward(attended) + x);
        let h2 = self.out.forward(B::gelu_erf(self.inter.forward(x.clone())));
        self.out_norm.forward(h2 + x).reshape([b, s, h])
    }
}
