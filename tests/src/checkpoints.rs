//! Tiny random-weight Hugging Face checkpoints made with transformers and sentence-transformers
//! (`scripts/make-tiny-hf.py`, run by the Python of `.tools/hf` that `scripts/install-test-tools`
//! installs), each with a `reference.json` of what those libraries compute for it. Made once
//! per version of the script into the system's temporary directory and shared by every test
//! process (made in a folder of its own, then renamed into place).

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::OnceLock,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding `llama`, `qwen2`, `mistral`, `bert` and `bert-cls`.
pub fn tiny_checkpoints() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(make)
}

/// The reference outputs of one checkpoint.
pub fn reference(name: &str) -> serde_json::Value {
    let path = tiny_checkpoints().join(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn make() -> PathBuf {
    let script = root().join("scripts/make-tiny-hf.py");
    let source = std::fs::read(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let mut hasher = std::hash::DefaultHasher::new();
    source.hash(&mut hasher);
    let target = std::env::temp_dir().join(format!("vramkeeper-tiny-hf-{:016x}", hasher.finish()));
    if target.join("done").is_file() {
        return target;
    }
    let python = root().join(".tools/hf/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        python.display()
    );
    let staging = target.with_extension(format!("part-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let made = std::process::Command::new(&python)
        .arg(&script)
        .arg(&staging)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::write(staging.join("done"), b"").unwrap();
    if std::fs::rename(&staging, &target).is_err() {
        // Another test process made it first.
        let _ = std::fs::remove_dir_all(&staging);
    }
    assert!(
        target.join("done").is_file(),
        "{} was not made",
        target.display()
    );
    target
}
