//! A Llama-family checkpoint serving completions: the decoder ([`super::llama_net`]), its
//! tokenizer, its chat template, and the generation loop (prefill the prompt once, then one
//! position per new token from the key/value cache).

use std::path::Path;

use burn::{prelude::*, tensor::DType};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{
    chat_template::{self, ChatTemplate},
    generate::{Finish, GenError, Outcome, Prompt, Sampler, Sampling, TextStream, argmax},
    hf_config::DecoderConfig,
    kind::Loaded,
    llama_net::Decoder,
};
use crate::backend::ModelBackend;

/// A decoder with what turns text into its tokens and back.
pub(crate) struct HfDecoder<B: Backend> {
    decoder: Decoder<B>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Tokens that end a completion.
    eos: Vec<u32>,
    /// Bytes of weight files read.
    read_bytes: u64,
    dtype: DType,
}

/// Token ids in a `config.json`-style field: one id or a list.
fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// The end-of-sequence tokens: `generation_config.json`'s and `config.json`'s ids, and the
/// tokenizer's `eos_token`.
fn eos_ids(dir: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    for file in ["generation_config.json", "config.json"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", dir.join(file).display()))?;
            ids.extend(ids_of(value.get("eos_token_id")));
        }
    }
    let config = chat_template::tokenizer_config(dir)?;
    let eos = config.get("eos_token").and_then(|t| match t {
        Value::String(s) => Some(s.as_str()),
        other => other.get("content").and_then(Value::as_str),
    });
    ids.extend(eos.and_then(|t| tokenizer.token_to_id(t)));
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

impl<B: ModelBackend> HfDecoder<B> {
    /// Loads the checkpoint in `dir`.
    pub(crate) fn load(
        dir: &Path,
        config: DecoderConfig,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, String> {
        // The tokenizer and chat template are read while the weights are read and copied.
        let (tokenizer, weights) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| {
                let path = dir.join("tokenizer.json");
                let tokenizer =
                    Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let template = ChatTemplate::load(dir)?;
                let eos = eos_ids(dir, &tokenizer)?;
                Ok::<_, String>((tokenizer, template, eos))
            });
            let weights = Decoder::load(dir, config, dtype, !B::ACCELERATOR, device);
            (
                tokenizer
                    .join()
                    .expect("the tokenizer thread does not panic"),
                weights,
            )
        });
        let ((tokenizer, template, eos), (decoder, read_bytes)) = (tokenizer?, weights?);
        B::sync(device).map_err(|e| e.to_string())?;
        Ok(Self {
            decoder,
            tokenizer,
            template,
            eos,
            read_bytes,
            dtype,
        })
    }

    /// The prompt's tokens.
    fn tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, GenError> {
        let (text, special) = match prompt {
            Prompt::Text { text } => (text.clone(), true),
            Prompt::Chat { messages } => {
                let template = self.template.as_ref().ok_or_else(|| {
                    GenError::Rejected(
                        "this model has no chat template (tokenizer_config.json); use \
                         /v1/completions"
                            .into(),
                    )
                })?;
                // The template writes the special tokens itself.
                (
                    template.render(messages).map_err(GenError::Rejected)?,
                    false,
                )
            }
        };
        let encoding = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| GenError::Failed(format!("tokenization failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The next token from `[1, vocab]` logits: picked on the device when greedy (one id
    /// crosses to the host, not the vocabulary's logits).
    fn pick(&self, logits: Tensor<B, 2>, sampler: &mut Sampler) -> Result<u32, GenError> {
        let read = |e| GenError::Failed(format!("reading logits: {e:?}"));
        if sampler.greedy() {
            let id = logits.argmax(1).into_data().convert::<i64>();
            let id = id.to_vec::<i64>().map_err(read)?;
            return Ok(id.first().copied().unwrap_or(0) as u32);
        }
        let values = logits.into_data().to_vec::<f32>().map_err(read)?;
        Ok(sampler.pick(&values))
    }
}

impl<B: ModelBackend> Loaded<B> for HfDecoder<B> {
    fn params(&self) -> u64 {
        self.decoder.params()
    }

    fn param_bytes(&self) -> u64 {
        self.decoder.params() * self.dtype.size() as u64
    }

    fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    fn warm_up(&self) -> Result<(), String> {
        // A prefill and a decoding step: both kinds of kernels compile now.
        let mut cache = self.decoder.cache();
        let _ = self.decoder.forward(&[0, 0], &mut cache, false).into_data();
        let _ = self.decoder.forward(&[0], &mut cache, false).into_data();
        Ok(())
    }

    fn infer(&self, tokens: &[u32]) -> Result<(Vec<u32>, f64), String> {
        let mut cache = self.decoder.cache();
        let logits = self.decoder.forward(tokens, &mut cache, true);
        let vocab = self.decoder.config().vocab;
        let values = logits
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("reading logits: {e:?}"))?;
        let next = values.chunks(vocab).map(argmax).collect();
        Ok((next, values.iter().map(|&v| v as f64).sum()))
    }

    fn generate(
        &self,
        prompt: &Prompt,
        sampling: &Sampling,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Outcome, GenError> {
        let ids = self.tokens(prompt)?;
        let context = self.decoder.config().context;
        if ids.is_empty() {
            return Err(GenError::Rejected("the prompt has no tokens".into()));
        }
        if ids.len() >= context {
            return Err(GenError::Rejected(format!(
                "the prompt is {} tokens; this model's context is {context} tokens (prompt and \
                 completion together)",
                ids.len()
            )));
        }
        let room = context - ids.len();
        let max = match sampling.max_tokens {
            Some(m) if m as usize > room => {
                return Err(GenError::Rejected(format!(
                    "max_tokens {m} does not fit: the prompt is {} tokens and the context \
                     {context}, which leaves {room}",
                    ids.len()
                )));
            }
            Some(m) => m as usize,
            None => room,
        };
        let mut sampler = Sampler::new(sampling);
        let mut text = TextStream::new(&self.tokenizer, &sampling.stop);
        let mut cache = self.decoder.cache();
        let mut logits = self.decoder.forward(&ids, &mut cache, false);
        let mut generated = 0;
        let finish = loop {
            let next = self.pick(logits, &mut sampler)?;
            if self.eos.contains(&next) {
                break Finish::Stop;
            }
            generated += 1;
            let piece = text.push(next).map_err(GenError::Failed)?;
            if !piece.is_empty() && !emit(&piece) {
                break Finish::Cancelled;
            }
            if text.stopped() {
                break Finish::Stop;
            }
            if generated == max {
                break Finish::Length;
            }
            logits = self.decoder.forward(&[next], &mut cache, false);
        };
        if finish != Finish::Cancelled {
            let rest = text.finish().map_err(GenError::Failed)?;
            if !rest.is_empty() {
                emit(&rest);
            }
        }
        Ok(Outcome {
            prompt_tokens: ids.len() as u32,
            completion_tokens: generated as u32,
            finish,
        })
    }
}
