//! The `hf` kind: a Hugging Face checkpoint directory (`config.json`, safetensors weights,
//! `tokenizer.json`, `tokenizer_config.json`), or a repository looked up offline in the
//! Hugging Face cache. Its `config.json` says what it is ([`hf_config`]): a BERT encoder serves
//! `/v1/embeddings`, a Llama-family decoder `/v1/chat/completions` and `/v1/completions`.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use serde::{Deserialize, Serialize};

use super::{
    DType,
    hf_config::{self, Architecture},
    hf_decoder::HfDecoder,
    hf_weights,
    kind::{Capabilities, Completions, Embeddings, Kind, Loaded, Size, TokenInput},
    sentence::{self, Pooling, SentenceEncoder},
};
use crate::backend::ModelBackend;

/// Where the checkpoint is, and the dtype to serve it in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HfSpec {
    /// The checkpoint's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Or a repository (`org/name`) in the Hugging Face cache (`$HF_HUB_CACHE`,
    /// `$HF_HOME/hub` or `~/.cache/huggingface/hub`); never downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The weights' element type on the device: f32 anywhere, f16 and bf16 on CUDA.
    #[serde(default)]
    pub dtype: DType,
    /// Encoders: sentences per forward pass at most (longer requests run in several), which
    /// bounds the working pool; 64 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// What `config.json` says, read once.
    #[serde(skip)]
    arch: Read,
}

/// `config.json` once read: not part of what the entry is (two entries that name the same
/// checkpoint are equal whether or not either has read it yet).
#[derive(Debug, Clone, Default)]
struct Read(OnceLock<Architecture>);

impl PartialEq for Read {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The snapshot directory of `repo` in the Hugging Face cache.
fn cached(repo: &str) -> Result<PathBuf, String> {
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 || !parts.iter().all(|p| valid(p)) {
        return Err(format!("repo {repo:?} is not `org/name`"));
    }
    let env = |name| std::env::var_os(name).map(PathBuf::from);
    let hub = env("HF_HUB_CACHE")
        .or_else(|| env("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/huggingface/hub")))
        .ok_or("no Hugging Face cache: set HF_HUB_CACHE or HF_HOME")?;
    snapshot(&hub, repo, parts[0], parts[1])
}

/// `hub/models--ORG--NAME/snapshots/<refs/main>`.
fn snapshot(hub: &Path, repo: &str, org: &str, name: &str) -> Result<PathBuf, String> {
    let root = hub.join(format!("models--{org}--{name}"));
    let refs = root.join("refs").join("main");
    let commit = std::fs::read_to_string(&refs).map_err(|_| {
        format!(
            "repo {repo} is not in the Hugging Face cache ({} is missing); the agent never \
             downloads: fetch it on a machine with access, or set `dir`",
            refs.display()
        )
    })?;
    Ok(root.join("snapshots").join(commit.trim()))
}

impl HfSpec {
    /// The checkpoint's directory.
    pub(crate) fn dir(&self) -> Result<PathBuf, String> {
        match (&self.dir, &self.repo) {
            (Some(dir), None) => Ok(dir.clone()),
            (None, Some(repo)) => cached(repo),
            (Some(_), Some(_)) => Err("set one of `dir` and `repo`, not both".into()),
            (None, None) => Err("`dir` (or `repo`) is required".into()),
        }
    }

    /// What the checkpoint is.
    fn arch(&self) -> Result<&Architecture, String> {
        if let Some(arch) = self.arch.0.get() {
            return Ok(arch);
        }
        let arch = hf_config::read(&self.dir()?)?;
        Ok(self.arch.0.get_or_init(|| arch))
    }
}

impl Kind for HfSpec {
    const NAME: &'static str = "hf";

    fn check(&self) -> Result<(), String> {
        let dir = self.dir()?;
        let arch = self.arch()?;
        if !dir.join("tokenizer.json").is_file() {
            return Err(format!("{} has no tokenizer.json", dir.display()));
        }
        hf_weights::files(&dir)?;
        match arch {
            Architecture::Bert(_) => {
                Pooling::read(&dir)?;
                sentence::check_max_batch(self.max_batch)
            }
            Architecture::Decoder(_) if self.max_batch.is_some() => Err(
                "max_batch applies to encoders (embeddings); a decoder generates one sequence \
                 at a time"
                    .into(),
            ),
            Architecture::Decoder(_) => Ok(()),
        }
    }

    fn size(&self) -> Size {
        let params = match self.arch() {
            Ok(Architecture::Bert(c)) => c.params(),
            Ok(Architecture::Decoder(c)) => c.params(),
            Err(_) => 0,
        };
        Size {
            params,
            dtype: self.dtype,
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self.arch() {
            Ok(Architecture::Bert(c)) => Capabilities {
                embeddings: Some(Embeddings { dim: c.hidden }),
                ..Capabilities::default()
            },
            Ok(Architecture::Decoder(c)) => Capabilities {
                infer: Some(TokenInput {
                    vocab: c.vocab as u32,
                    context: c.context as u32,
                }),
                completions: Some(Completions {
                    context: c.context as u32,
                }),
                ..Capabilities::default()
            },
            Err(_) => Capabilities::default(),
        }
    }

    fn load<B: ModelBackend>(&self, device: &B::Device) -> Result<Box<dyn Loaded<B>>, String> {
        let dtype = match self.dtype {
            DType::F32 => burn::tensor::DType::F32,
            other if !B::ACCELERATOR => {
                return Err(format!(
                    "dtype {} needs a CUDA device; on the CPU use dtype = \"f32\"",
                    other.as_str()
                ));
            }
            DType::F16 => burn::tensor::DType::F16,
            DType::Bf16 => burn::tensor::DType::BF16,
        };
        let dir = self.dir()?;
        Ok(match self.arch()? {
            Architecture::Bert(config) => Box::new(SentenceEncoder::<B>::load_dir(
                &dir,
                *config,
                dtype,
                self.max_batch,
                device,
            )?),
            Architecture::Decoder(config) => {
                Box::new(HfDecoder::<B>::load(&dir, *config, dtype, device)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repo_is_found_in_the_hugging_face_cache_layout_and_never_fetched() {
        let hub = tempfile::tempdir().unwrap();
        let root = hub.path().join("models--Qwen--Qwen2.5-0.5B-Instruct");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        let found = snapshot(
            hub.path(),
            "Qwen/Qwen2.5-0.5B-Instruct",
            "Qwen",
            "Qwen2.5-0.5B-Instruct",
        );
        assert_eq!(found.unwrap(), root.join("snapshots/abc123"));
        let missing = snapshot(
            hub.path(),
            "meta-llama/Llama-3.2-1B",
            "meta-llama",
            "Llama-3.2-1B",
        );
        assert!(missing.unwrap_err().contains("never downloads"));
        assert!(cached("../etc/passwd").unwrap_err().contains("org/name"));
        assert!(cached("a/..").unwrap_err().contains("org/name"));
    }
}
