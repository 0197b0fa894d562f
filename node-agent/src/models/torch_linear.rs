//! A linear layer in the checkpoints' (PyTorch's) layout, shared by the BERT encoders and the
//! Llama-family decoders.

use burn::{
    module::{Module, Param},
    nn::Initializer,
    prelude::*,
};

/// A linear layer whose `weight` is `[out, in]` as checkpoints store it: loaded as it is, with no
/// transposition on the host; CUDA's matrix product reads it transposed as it is. The CPU
/// backend would copy a transposed operand at every product, so there the weights are
/// transposed once after loading ([`TorchLinear::transposed`]).
#[derive(Module, Debug)]
pub(crate) struct TorchLinear<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Option<Param<Tensor<B, 1>>>,
    /// `weight` is stored `[in, out]`.
    #[module(skip)]
    stored_transposed: bool,
}

impl<B: Backend> TorchLinear<B> {
    /// A layer of these dimensions whose parameters are still to be loaded (lazy: nothing is
    /// allocated until they are).
    pub(crate) fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Zeros.init([d_out, d_in], device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
            stored_transposed: false,
        }
    }

    /// `x · weightᵀ + bias` over the last dimension of `x`.
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.val();
        let w = if self.stored_transposed {
            w
        } else {
            w.transpose()
        };
        let y = x.matmul(w.unsqueeze());
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        }
    }

    /// The same layer with its weight stored `[in, out]`, contiguous.
    pub(crate) fn transposed(self) -> Self {
        let w = self.weight.val().transpose();
        let device = w.device();
        Self {
            weight: Param::from_tensor(Tensor::from_data(w.into_data(), &device)),
            bias: self.bias,
            stored_transposed: true,
        }
    }
}
