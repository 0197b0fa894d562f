//! Where the bearer token comes from: `--token` (fixed), or `--token-file`, read again whenever
//! the file changes. A Secret rotated by a GitOps sync (or `helm template` drawing a new token)
//! reaches the mounted file without a restart: kubelet swaps the file, and the next request is
//! checked against the new token, the old one refused from then on.
//!
//! The file is looked at (one `stat`) on each check; it is read only when its identity, size
//! or times changed. A changed file that is empty or unreadable keeps the last good token (and
//! is tried again at the next check): a half-rotated Secret must not lock everyone out.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::Context;

use super::Token;

/// The configured token.
pub(crate) enum TokenSource {
    /// `--token`: never changes.
    Fixed(Token),
    /// `--token-file`: followed as it changes.
    File(TokenFile),
}

impl TokenSource {
    /// The token to check a request against now.
    pub(crate) fn current(&self) -> Token {
        match self {
            Self::Fixed(token) => token.clone(),
            Self::File(file) => file.current(),
        }
    }
}

/// A token file and the token last read from it.
pub(crate) struct TokenFile {
    path: PathBuf,
    last: Mutex<(Stamp, Token)>,
}

/// What tells a changed file apart: kubelet's atomic swap makes a new inode; an edit in place
/// changes the size or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

fn read(path: &Path) -> anyhow::Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    Token::new(&text).with_context(|| {
        format!(
            "the token file {} is empty or only whitespace: refusing to start, since no \
             request could ever present it; give a real secret or leave it unset",
            path.display()
        )
    })
}

impl TokenFile {
    /// Reads the file once; an unreadable or empty file refuses to start.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let before = stamp(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let token = read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            last: Mutex::new((before, token)),
        })
    }

    /// The token, read again first when the file changed since the last read.
    pub(crate) fn current(&self) -> Token {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = match stamp(&self.path) {
            Ok(now) if now != last.0 => now,
            Ok(_) => return last.1.clone(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot look at the token file: keeping the last token");
                return last.1.clone();
            }
        };
        match read(&self.path) {
            Ok(token) => {
                tracing::info!(path = %self.path.display(), "the token file changed: checking requests against its new token");
                *last = (now, token);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token file changed but holds no token: keeping the last one");
            }
        }
        last.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_gives_the_new_token_and_an_emptied_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(file.current().matches("first"));

        // Replaced as kubelet does: a new file renamed over the old one.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let token = file.current();
        assert!(token.matches("second") && !token.matches("first"));

        std::fs::write(&path, " \n").unwrap();
        assert!(
            file.current().matches("second"),
            "an empty file keeps the token"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            file.current().matches("second"),
            "a missing file keeps the token"
        );
        std::fs::write(&path, "third").unwrap();
        assert!(
            file.current().matches("third"),
            "and a good file is read again"
        );
    }

    #[test]
    fn an_empty_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let e = TokenFile::open(&path).err().unwrap().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
