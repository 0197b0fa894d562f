//! Text generation's parts that do not depend on the network: what is asked (a prompt and
//! the sampling settings, as the worker protocol carries them), how the next token is picked
//! (greedy, or temperature and nucleus sampling from a seeded generator), and how generated
//! tokens become text pieces that never split a character and never show a stop sequence.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// What to continue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Prompt {
    /// Raw text (`/v1/completions`), tokenized with the tokenizer's special tokens.
    Text {
        /// The text.
        text: String,
    },
    /// A conversation (`/v1/chat/completions`), rendered by the model's chat template.
    Chat {
        /// Objects with `role` and `content` (text).
        messages: Vec<serde_json::Value>,
    },
}

/// How to pick tokens and when to stop.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); above, logits are divided by it.
    pub temperature: f32,
    /// Nucleus sampling: only the most likely tokens whose probabilities sum to this.
    pub top_p: f32,
    /// Seeds the generator: the same seed gives the same tokens.
    pub seed: Option<u64>,
    /// At most this many new tokens; absent, until the context is full.
    pub max_tokens: Option<u32>,
    /// Text that ends the completion (not included in it).
    pub stop: Vec<String>,
}

/// Why a completion ended (OpenAI's `finish_reason`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model ended it, or a stop sequence did.
    Stop,
    /// `max_tokens`, or the context, was reached.
    Length,
    /// Its client left.
    Cancelled,
}

impl Finish {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A finished generation's counts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Tokens of the prompt (after templating).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Why it ended.
    pub finish: Finish,
}

/// Why a generation did not happen.
#[derive(Debug, Clone, PartialEq)]
pub enum GenError {
    /// The request cannot be served as asked (a 400: too long, no chat template, ...).
    Rejected(String),
    /// The model failed.
    Failed(String),
}

/// Picks tokens as [`Sampling`] says.
pub(crate) struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; without a seed, a random one.
    pub(crate) fn new(sampling: &Sampling) -> Self {
        Self {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            rng: match sampling.seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            },
        }
    }

    /// Whether picking needs the logits (not only their arg-max).
    pub(crate) fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Picks a token from one position's logits.
    pub(crate) fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.greedy() {
            return argmax(logits);
        }
        let t = self.temperature as f64;
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - top) / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        if self.top_p < 1.0 {
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let keep = self.top_p.max(0.0) as f64 * total;
            let mut sum = 0.0;
            let cut = probs
                .iter()
                .position(|p| {
                    sum += p.1;
                    sum >= keep
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(cut.max(1));
        }
        let kept: f64 = probs.iter().map(|p| p.1).sum();
        let mut target = self.rng.random::<f64>() * kept;
        for &(id, p) in &probs {
            target -= p;
            if target <= 0.0 {
                return id;
            }
        }
        probs.last().map_or(0, |p| p.0)
    }
}

/// The index of the largest value (the first of equals).
pub(crate) fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Turns generated tokens into text pieces as the tokenizer means them (multi-token
/// characters, merged spaces), decoding only a window of the last tokens per step (as
/// transformers' streaming does: the text of `ids[prefix..]` minus that of
/// `ids[prefix..read]`), so a long completion costs linear, not quadratic, decoding. Holds back
/// a possible start of a stop sequence and an unfinished character.
pub(crate) struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    stop: &'a [String],
    ids: Vec<u32>,
    /// Start of the decoding window.
    prefix: usize,
    /// End of what `text` already holds.
    read: usize,
    /// The text so far.
    text: String,
    /// Bytes of `text` given out.
    sent: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    /// A stream of nothing yet.
    pub(crate) fn new(tokenizer: &'a Tokenizer, stop: &'a [String]) -> Self {
        Self {
            tokenizer,
            stop,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that may be sent now (maybe empty). After a stop
    /// sequence appears, [`TextStream::stopped`] is true and nothing more comes.
    pub(crate) fn push(&mut self, id: u32) -> Result<String, String> {
        self.ids.push(id);
        if !self.read_new(false)? {
            return Ok(String::new());
        }
        if let Some(at) = self.stop_at() {
            self.stopped = true;
            return Ok(self.take(at));
        }
        let end = self.text.len() - self.held_back();
        Ok(self.take(end))
    }

    /// Whether a stop sequence ended the text.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// What is left to send when generation ends without a stop sequence.
    pub(crate) fn finish(&mut self) -> Result<String, String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.read_new(true)?;
        Ok(self.take(self.text.len()))
    }

    /// Appends the text of the tokens not read yet, unless it ends in an unfinished character
    /// (`last`: whatever it is). True when text was added.
    fn read_new(&mut self, last: bool) -> Result<bool, String> {
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, true)
                .map_err(|e| format!("decoding failed: {e}"))
        };
        let before = decode(&self.ids[self.prefix..self.read])?;
        let now = decode(&self.ids[self.prefix..])?;
        let fresh = now.len() > before.len() && now.is_char_boundary(before.len());
        if !fresh || (!last && now.ends_with('\u{FFFD}')) {
            return Ok(false);
        }
        self.text.push_str(&now[before.len()..]);
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(true)
    }

    /// `text[sent..end]`, marking it sent.
    fn take(&mut self, end: usize) -> String {
        if end <= self.sent || !self.text.is_char_boundary(end) {
            return String::new();
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }

    /// Where the first stop sequence begins, if one has appeared.
    fn stop_at(&self) -> Option<usize> {
        self.stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
    }

    /// Bytes at the end of the text that may be the start of a stop sequence.
    fn held_back(&self) -> usize {
        let text = &self.text;
        self.stop
            .iter()
            .flat_map(|s| {
                s.char_indices()
                    .skip(1)
                    .map(|(i, _)| &s[..i])
                    .filter(|prefix| text.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed: Some(seed),
            max_tokens: None,
            stop: vec![],
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(&sampling(0.0, 1.0, 1));
        assert_eq!(s.pick(&[0.1, 3.0, -2.0, 2.9]), 1);
    }

    #[test]
    fn a_seed_repeats_its_tokens_and_top_p_keeps_the_nucleus() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&sampling(1.0, 1.0, seed));
            (0..40).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // A tiny nucleus is the arg-max alone.
        let mut s = Sampler::new(&sampling(1.0, 1e-6, 3));
        assert!((0..20).all(|_| s.pick(&logits) == argmax(&logits)));
    }
}
