//! The OpenAI-style completions contract of the agent's own decoders (`POST
//! /v1/chat/completions`, `POST /v1/completions`). Fields OpenAI clients commonly send and
//! the agent does not use (`user`, penalties, ...) are accepted and ignored; settings the
//! agent cannot honour (`n` above 1, `logprobs`, tools) are refused by name.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most stop sequences, as OpenAI allows.
pub const MAX_STOP: usize = 4;

/// One text or several; the agent takes one.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The texts, in order.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A part of a message's content.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ContentPart {
    /// `text` (other kinds, such as images, are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A message's content: text, or text parts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    /// Text.
    Text(String),
    /// Parts, joined.
    Parts(Vec<ContentPart>),
}

/// One message of a conversation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ... (the model's chat template decides what it accepts).
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// The speaker's name, passed to the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `stream_options`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct StreamOptions {
    /// A last chunk carries the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The settings both routes share.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SamplingFields {
    /// 0 to 2 (default 1); 0 picks the most likely token each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Above 0, at most 1 (default 1): nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The same seed and settings give the same completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Up to [`MAX_STOP`] texts that end the completion (not included in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<OneOrMany>,
    /// Server-sent events, a chunk per piece of text, then `data: [DONE]`.
    #[serde(default)]
    pub stream: bool,
    /// With `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Must be 1 when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// `POST /v1/chat/completions`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatCompletionRequest {
    /// Catalog name; switched to first when it is not active.
    pub model: String,
    /// The conversation, rendered by the model's chat template.
    pub messages: Vec<ChatMessage>,
    /// At most this many new tokens (default: until the context is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The same as `max_tokens` (OpenAI's newer name); not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Not supported: `true` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Not supported: a non-empty list is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
}

/// `POST /v1/completions`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CompletionRequest {
    /// Catalog name; switched to first when it is not active.
    pub model: String,
    /// The text to continue (one).
    pub prompt: OneOrMany,
    /// At most this many new tokens (default 16, as OpenAI's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling and streaming.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Not supported: `true` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Not supported: a number is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Not supported: text is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// Token counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// Tokens of the prompt (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
}

/// A message in an answer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnswerMessage {
    /// `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One answer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatChoice {
    /// 0.
    pub index: u32,
    /// The answer.
    pub message: AnswerMessage,
    /// `stop` (the model ended it, or a stop sequence) or `length` (`max_tokens` or the
    /// context).
    pub finish_reason: String,
}

/// The answer of `POST /v1/chat/completions` without `stream`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// One.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// What a chunk adds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Delta {
    /// `assistant`, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One answer's chunk.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChunkChoice {
    /// 0.
    pub index: u32,
    /// What it adds.
    pub delta: Delta,
    /// In the last chunk with text.
    pub finish_reason: Option<String>,
}

/// A server-sent event of `POST /v1/chat/completions` with `stream`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChatCompletionChunk {
    /// The same in every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// One, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// In the usage chunk (`stream_options.include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One text answer (or a chunk of it).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TextChoice {
    /// 0.
    pub index: u32,
    /// The text (a piece of it in a chunk).
    pub text: String,
    /// `stop` or `length`; null until the last chunk.
    pub finish_reason: Option<String>,
    /// Always null.
    pub logprobs: Option<serde_json::Value>,
}

/// The answer of `POST /v1/completions`, and each event of its stream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TextCompletion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model.
    pub model: String,
    /// One, or none in the usage chunk.
    pub choices: Vec<TextChoice>,
    /// Token counts (in a stream, only in the usage chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
