//! The process table, as tests see it: which vramkeeper workers run, and ending them.

use std::fs;

/// A worker process: pid, agent id and instance from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerProc {
    /// Process id.
    pub pid: u32,
    /// `--agent-id`.
    pub agent_id: String,
    /// `--instance`.
    pub instance: String,
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z" && st != "X"))
        })
        .unwrap_or(false)
}

/// Every live worker process of the agent `agent_id`.
pub fn workers_of(agent_id: &str) -> Vec<WorkerProc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.get(1).map(String::as_str) != Some("worker") {
                return None;
            }
            let value = |flag: &str| {
                let i = args.iter().position(|a| a == flag)?;
                args.get(i + 1).cloned()
            };
            Some(WorkerProc {
                pid,
                agent_id: value("--agent-id")?,
                instance: value("--instance")?,
            })
        })
        .filter(|w| w.agent_id == agent_id && alive(w.pid))
        .collect()
}

/// Every live process carrying the marker of agent `agent_id` in its environment: its
/// workers and everything they started (model servers and their children), with the
/// model each was started for (`VRAMKEEPER_MODEL`).
pub fn marked_by(agent_id: &str) -> Vec<(u32, Option<String>)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    let prefix = format!("VRAMKEEPER_WORKER_MARKER={agent_id}:");
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
            let vars: Vec<String> = environ
                .split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            if !vars.iter().any(|v| v.starts_with(&prefix)) {
                return None;
            }
            let model = vars
                .iter()
                .find_map(|v| v.strip_prefix("VRAMKEEPER_MODEL=").map(str::to_string));
            Some((pid, model))
        })
        .filter(|(pid, _)| alive(*pid))
        .collect()
}

/// Resident memory of a process in bytes (0 when it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// SIGKILLs a process.
pub fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Whether the process is alive (and not a zombie).
pub fn is_alive(pid: u32) -> bool {
    alive(pid)
}

/// Sends a signal by name (`TERM`, `STOP`, ...).
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}
