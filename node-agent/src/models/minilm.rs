//! The `minilm` kind: all-MiniLM-L6-v2 sentence embeddings, one instance of the BERT
//! sentence encoder ([`super::sentence`]), with its files fetched on demand
//! ([`super::minilm_fetch`]) when the catalog names no directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    DType,
    hf_config::BertConfig,
    kind::{Capabilities, Embeddings, Kind, Loaded, Size},
    minilm_fetch,
    sentence::{self, Pool, Pooling, SentenceEncoder},
};
use crate::backend::ModelBackend;

/// all-MiniLM-L6-v2's dimensions (its `config.json`).
pub(crate) const CONFIG: BertConfig = BertConfig {
    vocab: 30_522,
    hidden: 384,
    layers: 6,
    heads: 12,
    intermediate: 1536,
    max_positions: 512,
    type_vocab: 2,
    eps: 1e-12,
};

/// Its sentence-transformers pipeline: mean pooling, unit length, inputs truncated to 256
/// tokens (`max_seq_length`).
pub(crate) const POOLING: Pooling = Pooling {
    pool: Pool::Mean,
    normalize: true,
    max_tokens: Some(256),
};

/// The files a MiniLM directory must hold.
pub(crate) const FILES: [&str; 2] = ["model.safetensors", "tokenizer.json"];

/// Where MiniLM's files are: `model.safetensors`, `config.json`, `tokenizer.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MinilmSpec {
    /// A directory holding the files; absent means the agent's cache, fetched on demand.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Sentences per forward pass at most (longer requests run in several), which bounds the
    /// working pool; 64 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
}

/// The file a MiniLM directory lacks, with a hint on how to get it.
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

impl Kind for MinilmSpec {
    const NAME: &'static str = "minilm";

    fn check(&self) -> Result<(), String> {
        sentence::check_max_batch(self.max_batch)
    }

    fn size(&self) -> Size {
        Size {
            params: CONFIG.params(),
            dtype: DType::F32,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            embeddings: Some(Embeddings { dim: CONFIG.hidden }),
            ..Capabilities::default()
        }
    }

    async fn resolve(
        &mut self,
        cache_dir: &Path,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), String> {
        if self.dir.is_none() {
            progress("fetching its weights");
            self.dir = Some(minilm_fetch::ensure(cache_dir).await?);
        }
        Ok(())
    }

    fn load<B: ModelBackend>(&self, device: &B::Device) -> Result<Box<dyn Loaded<B>>, String> {
        let dir = self
            .dir
            .as_deref()
            .ok_or("the agent did not resolve the MiniLM directory")?;
        if let Some(problem) = missing(dir) {
            return Err(problem);
        }
        let encoder = SentenceEncoder::<B>::load(
            dir,
            CONFIG,
            POOLING,
            burn::tensor::DType::F32,
            self.max_batch,
            device,
        )?;
        Ok(Box::new(encoder))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn minilm_has_its_published_parameter_count() {
        // The pooler excluded, as sentence-transformers' model does not use it.
        assert_eq!(super::CONFIG.params(), 22_565_376);
    }

    #[test]
    fn max_batch_is_checked_by_name() {
        use super::{Kind, MinilmSpec};
        let spec = |max_batch| MinilmSpec {
            dir: None,
            max_batch,
        };
        assert!(spec(None).check().is_ok());
        assert!(spec(Some(4096)).check().is_ok());
        assert!(spec(Some(0)).check().unwrap_err().contains("max_batch 0"));
        assert!(
            spec(Some(4097))
                .check()
                .unwrap_err()
                .contains("max_batch 4097")
        );
    }
}
