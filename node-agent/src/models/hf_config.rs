//! A Hugging Face checkpoint's `config.json`: which architecture it is and its dimensions.
//! Only the architectures the agent implements are accepted; anything else is refused with
//! its name when the catalog loads.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// The architectures `config.json` may name.
pub(crate) const SUPPORTED: [&str; 4] = [
    "BertModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
];

/// What a checkpoint is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Architecture {
    /// A BERT encoder (sentence embeddings).
    Bert(BertConfig),
    /// A Llama-family decoder (text generation).
    Decoder(DecoderConfig),
}

/// A BERT encoder's dimensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BertConfig {
    /// Token ids are below this.
    pub vocab: usize,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate: usize,
    /// Positions the model has embeddings for.
    pub max_positions: usize,
    /// Token types (segments).
    pub type_vocab: usize,
    /// Layer norm epsilon.
    pub eps: f64,
}

impl BertConfig {
    /// Parameters (the pooler excluded: sentence embeddings do not use it).
    pub(crate) fn params(&self) -> u64 {
        let (h, i) = (self.hidden as u64, self.intermediate as u64);
        let embeddings = (self.vocab + self.max_positions + self.type_vocab) as u64 * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h;
        embeddings + self.layers as u64 * layer
    }
}

/// The decoder families: the same stack, told apart by their defaults and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `LlamaForCausalLM`.
    Llama,
    /// `Qwen2ForCausalLM` (q/k/v biases).
    Qwen2,
    /// `MistralForCausalLM`.
    Mistral,
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Llama3Scaling {
    /// Divides the low frequencies.
    pub factor: f64,
    /// Wavelengths above `original / low_freq_factor` are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are not scaled.
    pub high_freq_factor: f64,
    /// The context the model was first trained on.
    pub original_max_positions: f64,
}

/// A Llama-family decoder's dimensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DecoderConfig {
    /// Which family.
    pub family: Family,
    /// Token ids are below this.
    pub vocab: usize,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads`: grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the SwiGLU layer.
    pub intermediate: usize,
    /// The longest sequence (prompt and completion), capped by a sliding window if any.
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    pub rope_scaling: Option<Llama3Scaling>,
    /// The output projection is the token embedding's transpose.
    pub tied_embeddings: bool,
    /// q/k/v projections have biases.
    pub qkv_bias: bool,
}

impl DecoderConfig {
    /// Parameters.
    pub(crate) fn params(&self) -> u64 {
        let h = self.hidden as u64;
        let q = (self.heads * self.head_dim) as u64;
        let kv = (self.kv_heads * self.head_dim) as u64;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let attention = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * self.intermediate as u64;
        let layer = attention + mlp + 2 * h;
        let embeddings = self.vocab as u64 * h;
        let head = if self.tied_embeddings { 0 } else { embeddings };
        embeddings + head + self.layers as u64 * layer + h
    }
}

/// The fields read from `config.json` (others are ignored).
#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// Reads and checks `dir/config.json`.
pub(crate) fn read(dir: &Path) -> Result<Architecture, String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks a `config.json`'s text.
pub(crate) fn parse(text: &str) -> Result<Architecture, String> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("not a config: {e}"))?;
    let arch = match raw.architectures.as_slice() {
        [one] => one.as_str(),
        [] => return Err("names no architecture (`architectures` is empty)".into()),
        many => return Err(format!("names several architectures: {many:?}")),
    };
    match arch {
        "BertModel" => bert(&raw).map(Architecture::Bert),
        "LlamaForCausalLM" => decoder(&raw, Family::Llama).map(Architecture::Decoder),
        "Qwen2ForCausalLM" => decoder(&raw, Family::Qwen2).map(Architecture::Decoder),
        "MistralForCausalLM" => decoder(&raw, Family::Mistral).map(Architecture::Decoder),
        other => Err(format!(
            "architecture {other} is not supported; supported: {}",
            SUPPORTED.join(", ")
        )),
    }
}

fn need(value: Option<usize>, field: &str) -> Result<usize, String> {
    match value {
        Some(0) => Err(format!("`{field}` is 0")),
        Some(v) => Ok(v),
        None => Err(format!("`{field}` is missing")),
    }
}

fn bert(raw: &Raw) -> Result<BertConfig, String> {
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "gelu") {
        return Err(format!(
            "hidden_act {act:?} is not supported for BertModel (only \"gelu\")"
        ));
    }
    if let Some(p) = raw
        .position_embedding_type
        .as_deref()
        .filter(|p| *p != "absolute")
    {
        return Err(format!(
            "position_embedding_type {p:?} is not supported (only \"absolute\")"
        ));
    }
    let config = BertConfig {
        vocab: need(raw.vocab_size, "vocab_size")?,
        hidden: need(raw.hidden_size, "hidden_size")?,
        layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
        heads: need(raw.num_attention_heads, "num_attention_heads")?,
        intermediate: need(raw.intermediate_size, "intermediate_size")?,
        max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
        type_vocab: raw.type_vocab_size.unwrap_or(2).max(1),
        eps: raw.layer_norm_eps.unwrap_or(1e-12),
    };
    if !config.hidden.is_multiple_of(config.heads) {
        return Err(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden, config.heads
        ));
    }
    Ok(config)
}

fn decoder(raw: &Raw, family: Family) -> Result<DecoderConfig, String> {
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(format!(
            "hidden_act {act:?} is not supported for {family:?} decoders (only \"silu\")"
        ));
    }
    if raw.mlp_bias == Some(true) {
        return Err("mlp_bias = true is not supported".into());
    }
    let hidden = need(raw.hidden_size, "hidden_size")?;
    let heads = need(raw.num_attention_heads, "num_attention_heads")?;
    let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        ));
    }
    let head_dim = match raw.head_dim {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            ));
        }
    };
    if !head_dim.is_multiple_of(2) {
        return Err(format!("head_dim {head_dim} is odd (RoPE rotates pairs)"));
    }
    let max_positions = need(raw.max_position_embeddings, "max_position_embeddings")?;
    // A sliding window wider than the context changes nothing; a narrower one bounds it.
    let window = match family {
        Family::Qwen2 if raw.use_sliding_window != Some(true) => None,
        _ => raw.sliding_window,
    };
    let rope = raw.rope_scaling.as_ref().or(raw.rope_parameters.as_ref());
    let rope_theta = raw
        .rope_theta
        .or_else(|| {
            rope.and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10_000.0);
    Ok(DecoderConfig {
        family,
        vocab: need(raw.vocab_size, "vocab_size")?,
        hidden,
        layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim,
        intermediate: need(raw.intermediate_size, "intermediate_size")?,
        context: window.map_or(max_positions, |w| w.min(max_positions)),
        eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta,
        rope_scaling: rope.map(scaling).transpose()?.flatten(),
        tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        qkv_bias: raw.attention_bias.unwrap_or(family == Family::Qwen2),
    })
}

/// `rope_scaling`: none, `default`, or `llama3`; other kinds are refused.
fn scaling(value: &Value) -> Result<Option<Llama3Scaling>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let field = |name: &str| {
                value
                    .get(name)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("rope_scaling.{name} is missing"))
            };
            let scaling = Llama3Scaling {
                factor: field("factor")?,
                low_freq_factor: field("low_freq_factor")?,
                high_freq_factor: field("high_freq_factor")?,
                original_max_positions: field("original_max_position_embeddings")?,
            };
            if scaling.high_freq_factor <= scaling.low_freq_factor {
                return Err("rope_scaling.high_freq_factor must exceed low_freq_factor".into());
            }
            Ok(Some(scaling))
        }
        other => Err(format!(
            "rope_scaling type {other:?} is not supported (only \"default\" and \"llama3\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 8192, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu",
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
        })
    }

    #[test]
    fn llama_3_2_1b_has_its_published_parameter_count() {
        let Architecture::Decoder(c) = parse(&llama().to_string()).unwrap() else {
            panic!("not a decoder")
        };
        assert_eq!(c.params(), 1_235_814_400);
        assert_eq!(c.head_dim, 64);
        assert!(c.rope_scaling.is_some());
    }

    #[test]
    fn unsupported_architectures_and_settings_are_named() {
        let mut gpt = llama();
        gpt["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        assert!(
            parse(&gpt.to_string())
                .unwrap_err()
                .contains("GPT2LMHeadModel")
        );
        let mut yarn = llama();
        yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        assert!(parse(&yarn.to_string()).unwrap_err().contains("yarn"));
        let mut gelu = llama();
        gelu["hidden_act"] = "gelu".into();
        assert!(parse(&gelu.to_string()).unwrap_err().contains("hidden_act"));
        let mut odd = llama();
        odd["num_key_value_heads"] = 5.into();
        assert!(
            parse(&odd.to_string())
                .unwrap_err()
                .contains("num_key_value_heads")
        );
    }

    #[test]
    fn a_narrow_sliding_window_bounds_the_context() {
        let mut mistral = llama();
        mistral["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        mistral["sliding_window"] = 4096.into();
        let Architecture::Decoder(c) = parse(&mistral.to_string()).unwrap() else {
            panic!("not a decoder")
        };
        assert_eq!(c.context, 4096);
    }
}
