//! The state file of one device: its tracker, written with an atomic replace, so that a restart (or a
//! crash in the middle of a write) loses nothing and never leaves a half-written file.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::tracker::Tracker;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    tracker: Tracker,
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    path: PathBuf,
    /// One writer at a time: writers share the temporary file, and a snapshot taken under
    /// this lock is never overwritten by an older one.
    writing: std::sync::Arc<std::sync::Mutex<()>>,
}

/// What loading found.
pub(crate) struct Loaded {
    /// The tracker (empty on a clean start).
    pub tracker: Tracker,
    /// Why the file was not used, when it was not (a warning, never a failure).
    pub warning: Option<String>,
}

impl StateStore {
    /// A store at `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            writing: Default::default(),
        }
    }

    /// Takes a snapshot with `snapshot` and writes it, one writer at a time.
    pub(crate) fn save_snapshot(&self, snapshot: impl FnOnce() -> Tracker) -> std::io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.save(&snapshot())
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state. A missing file is a clean start; a corrupt or foreign one is set
    /// aside (renamed `.corrupt`) with a warning.
    pub(crate) fn load(&self) -> Loaded {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Loaded {
                    tracker: Tracker::default(),
                    warning: None,
                };
            }
            Err(e) => return self.clean_start(format!("cannot read it: {e}")),
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(file) if file.version == VERSION => Loaded {
                tracker: file.tracker,
                warning: None,
            },
            Ok(file) => self.clean_start(format!("unknown version {}", file.version)),
            Err(e) => self.clean_start(format!("it is not valid: {e}")),
        }
    }

    fn clean_start(&self, why: String) -> Loaded {
        let aside = self.path.with_extension("json.corrupt");
        let kept = std::fs::rename(&self.path, &aside).is_ok();
        Loaded {
            tracker: Tracker::default(),
            warning: Some(format!(
                "state file {} ignored ({why}); starting clean{}",
                self.path.display(),
                if kept {
                    format!(", the old file is kept as {}", aside.display())
                } else {
                    String::new()
                }
            )),
        }
    }

    /// Writes the state: to a temporary file, synced, then renamed over the old one.
    pub(crate) fn save(&self, tracker: &Tracker) -> std::io::Result<()> {
        let file = StateFile {
            version: VERSION,
            tracker: tracker.for_state_file(),
        };
        let body = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The lock of a state directory: one agent per directory. Two agents on one directory would
/// share an agent id, take each other's workers for orphans of their own and kill them.
///
/// An advisory `flock` on `agent.lock`, held as long as the process lives: the kernel drops it
/// when the process ends, however it ends, so a crash leaves no stale lock. Workers do not
/// inherit it (Rust opens files close-on-exec). The file holds the holder's pid, for the
/// message of the agent that is refused.
#[derive(Debug)]
pub(crate) struct StateDirLock {
    file: std::fs::File,
}

impl StateDirLock {
    /// The lock file's name in the state directory.
    pub(crate) const FILE: &str = "agent.lock";

    /// Takes the lock of `dir`, or says which agent holds it.
    pub(crate) fn acquire(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let path = dir.join(Self::FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                anyhow::bail!(
                    "the state directory {} is in use by another agent ({}): two agents on one \
                     state directory would end each other's workers; stop that agent, or give \
                     this one its own --state-dir",
                    dir.display(),
                    if holder.is_empty() {
                        "its pid is not recorded".to_string()
                    } else {
                        format!("pid {holder}")
                    }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(Self { file })
    }

    /// Keeps the lock until the process ends.
    pub(crate) fn hold_until_exit(self) {
        std::mem::forget(self.file);
    }
}

/// `Ok` when a file can be created, written and removed in `dir`; else why not.
pub(crate) fn check_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".writable-check");
    let result = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| format!("the state directory {} is not writable: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use vramkeeper_crds::SwitchTrigger;

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state.json"));
        let mut t = Tracker::default();
        t.loaded("a", SwitchTrigger::Api, 1, 2, 3.0, Timestamp::now());
        store.save(&t).unwrap();
        let loaded = store.load();
        assert!(loaded.warning.is_none());
        assert_eq!(loaded.tracker.models, t.models);
    }

    #[test]
    fn missing_is_clean_and_corrupt_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state.json"));
        let loaded = store.load();
        assert!(loaded.tracker.models.is_empty() && loaded.warning.is_none());
        std::fs::write(store.path(), b"{\"version\": 1, \"tracker\": {").unwrap();
        let loaded = store.load();
        assert!(loaded.tracker.models.is_empty());
        assert!(loaded.warning.unwrap().contains("not valid"));
        assert!(dir.path().join("state.json.corrupt").exists());
    }

    #[test]
    fn a_second_lock_on_a_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path()).unwrap();
        let e = StateDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())),
            "names the holder: {e}"
        );
        drop(first);
        StateDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn writable_check_says_why() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path()).is_ok());
        let gone = dir.path().join("missing");
        let e = check_writable(&gone).unwrap_err();
        assert!(e.contains("not writable") && e.contains("missing"), "{e}");
    }
}
