//! all-MiniLM-L6-v2 sentence embeddings (being built: see the embeddings issue).

use burn::tensor::backend::Backend;

use super::MinilmSpec;

/// Parameters of all-MiniLM-L6-v2.
pub const PARAMS: u64 = 22_713_216;

/// The model.
pub struct MiniLm<B: Backend> {
    _device: B::Device,
}

impl<B: Backend> MiniLm<B> {
    /// Loads the weights.
    pub fn load(_spec: &MinilmSpec, _device: &B::Device) -> Result<Self, String> {
        Err("the minilm kind is not available in this build yet".into())
    }

    /// Parameters.
    pub fn params(&self) -> u64 {
        PARAMS
    }

    /// Embeddings and token counts.
    pub fn embed(&self, _texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        Err("the minilm kind is not available in this build yet".into())
    }
}
