//! The OpenAI-style embeddings contract of the agent (`POST /v1/embeddings`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most inputs in one request. OpenAI allows 2,048; 2,048 texts of 500 characters kept a CPU
/// agent busy past two minutes, so the agent takes fewer: batch larger jobs.
pub const MAX_INPUTS: usize = 256;

/// Most characters (Unicode scalar values) over all inputs of one request: 256 Ki.
pub const MAX_INPUT_CHARS: usize = 256 * 1024;

/// One text or several.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// A single text.
    One(String),
    /// Several texts, embedded in one call.
    Many(Vec<String>),
}

impl EmbeddingInput {
    /// The texts, in order.
    pub fn texts(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// How vectors are encoded in the answer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON arrays of floats.
    #[default]
    Float,
    /// Base64 of little-endian f32s.
    Base64,
}

/// `POST /v1/embeddings`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EmbeddingRequest {
    /// Catalog name of an embedding model; switched to first when it is not active.
    pub model: String,
    /// A string or an array of strings (token arrays are not accepted); at most
    /// [`MAX_INPUTS`] of them, [`MAX_INPUT_CHARS`] characters in all.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Accepted for compatibility; must equal the model's width when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Accepted for compatibility and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Device index (default 0); a vramkeeper extension.
    #[serde(default)]
    pub gpu: u32,
}

/// A vector, as floats or base64.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// Floats.
    Float(Vec<f32>),
    /// Base64 of little-endian f32s.
    Base64(String),
}

/// One embedding.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Position of its input.
    pub index: usize,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// Token counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EmbeddingUsage {
    /// Tokens read, after truncation, [CLS] and [SEP] included.
    pub prompt_tokens: u64,
    /// The same (embeddings produce no tokens).
    pub total_tokens: u64,
}

/// The answer of `POST /v1/embeddings`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One per input, in input order.
    pub data: Vec<Embedding>,
    /// The model that answered.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}
