//! The `minilm` kind: all-MiniLM-L6-v2 sentence embeddings (the encoder is in
//! [`super::minilm_net`], the on-demand download in [`super::minilm_fetch`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    DType,
    kind::{Capabilities, Embeddings, Kind, Loaded, Size},
    minilm_fetch,
    minilm_net::{self, MiniLm},
};
use crate::backend::{ModelBackend, kernels::Kernels};

/// Sentences per forward pass on the CPU (inputs are sorted by length first, to pad little).
pub(crate) const CPU_BATCH: usize = 64;
/// Sentences per forward pass on a GPU, which wants wide batches.
pub(crate) const GPU_BATCH: usize = 256;

/// Where MiniLM's files are: `model.safetensors`, `config.json`, `tokenizer.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MinilmSpec {
    /// A directory holding the files; absent means the agent's cache, fetched on demand.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Kind for MinilmSpec {
    const NAME: &'static str = "minilm";

    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    fn size(&self) -> Size {
        Size {
            params: minilm_net::PARAMS,
            dtype: DType::F32,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            embeddings: Some(Embeddings {
                dim: minilm_net::DIM,
            }),
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
        let batch = if B::ACCELERATOR { GPU_BATCH } else { CPU_BATCH };
        let dir = self
            .dir
            .as_deref()
            .ok_or("the agent did not resolve the MiniLM directory")?;
        Ok(Box::new(MiniLm::<B>::load(dir, device, batch)?))
    }
}

impl<B: Kernels> Loaded<B> for MiniLm<B> {
    fn params(&self) -> u64 {
        MiniLm::params(self)
    }

    fn param_bytes(&self) -> u64 {
        MiniLm::params(self) * DType::F32.size()
    }

    fn warm_up(&self) -> Result<(), String> {
        MiniLm::embed(self, &["warm-up".to_string()]).map(drop)
    }

    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Vec<u32>), String> {
        MiniLm::embed(self, texts)
    }
}
