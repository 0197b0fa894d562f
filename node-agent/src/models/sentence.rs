//! Sentence embeddings from a BERT encoder, as sentence-transformers computes them: tokens
//! from `tokenizer.json` (truncated to `max_seq_length`), the encoder ([`super::bert_net`]),
//! pooling (mean over the attention mask, or the `[CLS]` position) and, when the model has a
//! `Normalize` module, L2 normalisation. The pipeline comes from `modules.json`,
//! `1_Pooling/config.json` and `sentence_bert_config.json`.

use std::path::Path;

use burn::{prelude::*, tensor::DType};
use serde_json::Value;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use super::{
    batches,
    bert_net::{self, Bert},
    hf_config::BertConfig,
    hf_weights,
    kind::Loaded,
    working,
};
use crate::backend::ModelBackend;

/// Sentences per forward pass at most unless the catalog sets `max_batch` (inputs are sorted
/// by length first, to pad little), on every backend: on a GPU wide enough to keep it busy,
/// narrow enough that the working pool stays small beside the model (measured in
/// docs/benchmarks.md).
pub(crate) const DEFAULT_BATCH: usize = 64;
/// What one more forward pass costs the CPU beside its rows, in token rows (see
/// [`batches`]). On the 2-core machine (`scripts/bench-embeddings.py`) a token row costs
/// ~0.17 ms in wide passes and a one-sentence pass of ~17 tokens ~7 ms: ~24 rows more. Batches
/// of 32 ran at 303-324 sentences/s with 16 to 64 here, 249 with one pass.
const CPU_PASS_ROWS: u64 = 24;
/// The largest `max_batch` a catalog may set.
pub(crate) const MAX_BATCH: u32 = 4096;

/// Checks a catalog's `max_batch`, naming the field.
pub(crate) fn check_max_batch(max_batch: Option<u32>) -> Result<(), String> {
    match max_batch {
        Some(b) if !(1..=MAX_BATCH).contains(&b) => {
            Err(format!("max_batch {b} is outside 1..={MAX_BATCH}"))
        }
        _ => Ok(()),
    }
}

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// The mean over real (unpadded) tokens.
    Mean,
    /// The first token's state.
    Cls,
}

/// The pipeline after the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pooling {
    /// How states are pooled.
    pub pool: Pool,
    /// Whether vectors are scaled to unit length.
    pub normalize: bool,
    /// The longest input in tokens (special tokens included); longer ones are truncated.
    pub max_tokens: Option<usize>,
}

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not JSON: {e}", path.display())),
        Err(_) => Ok(None),
    }
}

impl Pooling {
    /// The pipeline of the sentence-transformers directory `dir`; a plain checkpoint (no
    /// `modules.json`) pools by the mean and does not normalise, as sentence-transformers
    /// does for it. The longest input is `max_seq_length` (`sentence_bert_config.json`), else
    /// the tokenizer's `model_max_length`.
    pub(crate) fn read(dir: &Path) -> Result<Self, String> {
        let limit = |file: &str, key: &str| -> Result<Option<usize>, String> {
            Ok(read_json(&dir.join(file))?
                .and_then(|c| c.get(key)?.as_u64())
                // transformers writes a huge number for "no limit".
                .filter(|&n| n < 1 << 24)
                .map(|n| n as usize))
        };
        let max_tokens = match limit("sentence_bert_config.json", "max_seq_length")? {
            Some(n) => Some(n),
            None => limit("tokenizer_config.json", "model_max_length")?,
        };
        let Some(modules) = read_json(&dir.join("modules.json"))? else {
            return Ok(Self {
                pool: Pool::Mean,
                normalize: false,
                max_tokens,
            });
        };
        let modules = modules
            .as_array()
            .ok_or("modules.json is not a list of modules")?;
        let mut pooling = Self {
            pool: Pool::Mean,
            normalize: false,
            max_tokens,
        };
        for module in modules {
            let kind = module.get("type").and_then(Value::as_str).unwrap_or("");
            let path = module.get("path").and_then(Value::as_str).unwrap_or("");
            match kind.rsplit('.').next().unwrap_or("") {
                "Transformer" => {}
                "Normalize" => pooling.normalize = true,
                "Pooling" => pooling.pool = pool_mode(&dir.join(path).join("config.json"))?,
                other => {
                    return Err(format!(
                        "{}: module {other} ({kind}) is not supported (Transformer, Pooling and \
                         Normalize are)",
                        dir.join("modules.json").display()
                    ));
                }
            }
        }
        Ok(pooling)
    }
}

/// `1_Pooling/config.json`: `pooling_mode` (sentence-transformers 6), or one of the
/// `pooling_mode_*` flags (earlier versions).
fn pool_mode(path: &Path) -> Result<Pool, String> {
    let config = read_json(path)?.ok_or_else(|| format!("{} is missing", path.display()))?;
    if let Some(mode) = config.get("pooling_mode").and_then(Value::as_str) {
        return match mode {
            "mean" => Ok(Pool::Mean),
            "cls" => Ok(Pool::Cls),
            other => Err(format!(
                "{}: pooling {other:?} is not supported (one of mean or cls)",
                path.display()
            )),
        };
    }
    let on = |key: &str| config.get(key).and_then(Value::as_bool) == Some(true);
    let modes: Vec<&str> = [
        "pooling_mode_cls_token",
        "pooling_mode_mean_tokens",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ]
    .into_iter()
    .filter(|k| on(k))
    .collect();
    match modes.as_slice() {
        ["pooling_mode_mean_tokens"] => Ok(Pool::Mean),
        ["pooling_mode_cls_token"] => Ok(Pool::Cls),
        other => Err(format!(
            "{}: pooling {other:?} is not supported (one of mean or cls)",
            path.display()
        )),
    }
}

/// A sentence-embedding model on a device.
pub(crate) struct SentenceEncoder<B: Backend> {
    bert: Bert<B>,
    config: BertConfig,
    pooling: Pooling,
    tokenizer: Tokenizer,
    device: B::Device,
    /// Sentences per forward pass at most.
    batch: usize,
    /// Tokens of the longest input (longer ones are truncated).
    max_len: usize,
    read_bytes: u64,
}

impl<B: ModelBackend> SentenceEncoder<B> {
    /// The sentence-transformers (or plain BERT) checkpoint in `dir`.
    pub(crate) fn load_dir(
        dir: &Path,
        config: BertConfig,
        dtype: DType,
        max_batch: Option<u32>,
        device: &B::Device,
    ) -> Result<Self, String> {
        Self::load(dir, config, Pooling::read(dir)?, dtype, max_batch, device)
    }

    /// The encoder in `dir` with the given pooling, running at most `max_batch` sentences at
    /// once (the backend's default when `None`).
    pub(crate) fn load(
        dir: &Path,
        config: BertConfig,
        pooling: Pooling,
        dtype: DType,
        max_batch: Option<u32>,
        device: &B::Device,
    ) -> Result<Self, String> {
        check_max_batch(max_batch)?;
        // The tokenizer is parsed while the weights are read and copied.
        let (tokenizer, weights) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| tokenizer(dir, &config, &pooling));
            let weights = hf_weights::load(
                Bert::init(&config, device),
                dir,
                &bert_net::REMAPS,
                dtype,
                device,
            );
            (
                tokenizer
                    .join()
                    .expect("the tokenizer thread does not panic"),
                weights,
            )
        });
        let (tokenizer, (bert, read_bytes)) = (tokenizer?, weights?);
        let bert = if B::ACCELERATOR {
            bert
        } else {
            bert.transposed()
        };
        B::sync(device).map_err(|e| e.to_string())?;
        Ok(Self {
            max_len: max_len(&config, &pooling),
            bert,
            config,
            pooling,
            tokenizer,
            device: device.clone(),
            batch: max_batch.map_or(DEFAULT_BATCH, |b| b as usize),
            read_bytes,
        })
    }
}

/// Tokens of the longest input: the pipeline's limit, within the encoder's positions.
fn max_len(config: &BertConfig, pooling: &Pooling) -> usize {
    pooling
        .max_tokens
        .unwrap_or(config.max_positions)
        .min(config.max_positions)
}

/// The checkpoint's tokenizer, truncating at the encoder's length and never padding (each
/// pass pads to its own longest with id 0, masked out: [`SentenceEncoder::embed`]).
fn tokenizer(dir: &Path, config: &BertConfig, pooling: &Pooling) -> Result<Tokenizer, String> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let max_length = max_len(config, pooling);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| format!("tokenizer truncation: {e}"))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

impl<B: ModelBackend> SentenceEncoder<B> {
    /// Embeddings and token counts (after truncation, special tokens included), in the order
    /// of `texts`.
    pub(crate) fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenization failed: {e}"))?;
        // Longest first, so that each pass pads little; answers go back in input order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let lengths: Vec<usize> = order
            .iter()
            .map(|&i| encodings[i].get_ids().len())
            .collect();
        if let Some(i) = lengths.iter().position(|&n| n == 0) {
            return Err(format!(
                "input {} has no tokens after tokenization",
                order[i]
            ));
        }
        // On an accelerator a pass's time hardly follows its rows: passes of `batch`, as few
        // as there can be, and of the same few shapes.
        let passes = if B::ACCELERATOR {
            batches::even(texts.len(), self.batch)
        } else {
            batches::plan(&lengths, self.batch, CPU_PASS_ROWS)
        };
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut counts = vec![0u32; texts.len()];
        for pass in passes {
            let chunk = &order[pass];
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&batch)?) {
                vectors[i] = v;
                counts[i] = encodings[i].get_ids().len() as u32;
            }
        }
        Ok((vectors, counts))
    }

    /// The vectors of `encodings` (longest first), in one forward pass padded to the first.
    fn embed_batch(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, String> {
        let b = encodings.len();
        let s = encodings.first().map_or(0, |e| e.get_ids().len());
        let dim = self.config.hidden;
        let mut ids = Vec::with_capacity(b * s);
        let mut mask = Vec::with_capacity(b * s);
        for e in encodings {
            let n = e.get_ids().len();
            ids.extend(e.get_ids().iter().map(|&t| t as i64));
            ids.resize(ids.len() + s - n, 0);
            mask.extend(std::iter::repeat_n(1.0f32, n));
            mask.resize(mask.len() + s - n, 0.0);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), &self.device);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, s]), &self.device);
        let hidden = self
            .bert
            .forward(ids, mask.clone(), self.config.heads)
            .cast(DType::F32);
        let pooled = match self.pooling.pool {
            Pool::Mean => {
                let mask3 = mask.clone().unsqueeze_dim::<3>(2);
                let summed = (hidden * mask3).sum_dim(1).reshape([b, dim]);
                summed / mask.sum_dim(1).clamp_min(1e-9)
            }
            Pool::Cls => hidden.slice([0..b, 0..1, 0..dim]).reshape([b, dim]),
        };
        let vectors = if self.pooling.normalize {
            let norm = pooled
                .clone()
                .powf_scalar(2.0)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        };
        let flat: Vec<f32> = vectors
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("reading embeddings: {e:?}"))?;
        Ok(flat.chunks(dim).map(<[f32]>::to_vec).collect())
    }
}

impl<B: ModelBackend> Loaded<B> for SentenceEncoder<B> {
    fn params(&self) -> u64 {
        self.bert.num_params() as u64
    }

    fn param_bytes(&self) -> u64 {
        self.bert.num_params() as u64 * self.bert.dtype().size() as u64
    }

    fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    fn working_bytes(&self) -> Option<u64> {
        let c = &self.config;
        let elem = self.bert.dtype().size();
        Some(working::transformer_block(
            self.batch,
            self.max_len,
            c.hidden,
            c.intermediate,
            c.heads,
            elem,
        ))
    }

    fn warm_up(&self) -> Result<(), String> {
        self.embed(&["warm-up".to_string()]).map(drop)
    }

    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        SentenceEncoder::embed(self, texts)
    }
}
