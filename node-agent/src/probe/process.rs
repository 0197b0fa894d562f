//! Facts about processes from /proc: names, resident memory, start times, and the marker that
//! identifies a vramkeeper worker: `VRAMKEEPER_WORKER_MARKER=<agent id>:<instance>` in its
//! environment. Command lines prove nothing (anyone can write one); a marker counts only on a
//! process that runs as the agent's own user.

use std::{fs, os::unix::fs::MetadataExt};

/// The environment variable that marks a worker: `<agent id>:<instance>`.
pub(crate) const MARKER_ENV: &str = "VRAMKEEPER_WORKER_MARKER";

/// The marker in a worker's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerMarker {
    /// The agent it belongs to (stable across restarts of that agent).
    pub agent_id: String,
    /// The run of that agent that started it.
    pub instance: String,
}

/// The process's name (`comm`), or `?` when it is gone or hidden.
pub(crate) fn name(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Resident set size in bytes, `None` when the process is gone.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Whether the process exists and is not a zombie waiting to be reaped.
pub(crate) fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised name, which may itself hold parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The worker marker in the process's environment, if it runs as this agent's user and carries
/// one.
pub(crate) fn worker_marker(pid: u32) -> Option<WorkerMarker> {
    if owner_uid(pid)? != nix::unistd::geteuid().as_raw() {
        return None;
    }
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    parse_marker(&environ)
}

/// The user a process runs as (the owner of its /proc entry).
pub(crate) fn owner_uid(pid: u32) -> Option<u32> {
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// The marker value for a worker of `agent_id`, run `instance`.
pub(crate) fn marker_value(agent_id: &str, instance: &str) -> String {
    format!("{agent_id}:{instance}")
}

/// Parses a NUL-separated environment (`/proc/<pid>/environ`).
pub(crate) fn parse_marker(environ: &[u8]) -> Option<WorkerMarker> {
    let prefix = format!("{MARKER_ENV}=");
    let value = environ
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix(prefix.as_str()))?;
    let (agent_id, instance) = value.split_once(':')?;
    (!agent_id.is_empty() && !instance.is_empty()).then(|| WorkerMarker {
        agent_id: agent_id.into(),
        instance: instance.into(),
    })
}

/// When the process started, in clock ticks since boot (`/proc/<pid>/stat` field 22): with the
/// pid, it names one process for good (a reused pid starts later).
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name, which may itself hold spaces and parentheses:
    // state is field 3, so start time (22) is the 20th after the name.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// CPU time the process has used, in clock ticks (user + system).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime are fields 14 and 15: the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// How long the process has existed.
pub(crate) fn age(pid: u32) -> Option<std::time::Duration> {
    let started = start_ticks(pid)? as f64 / procfs::ticks_per_second() as f64;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    std::time::Duration::try_from_secs_f64(uptime - started).ok()
}

/// Live processes whose command line matches `pattern`.
pub(crate) fn matching(pattern: &regex::Regex) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_alive(*pid) && pattern.is_match(&cmdline(*pid)))
        .collect()
}

/// The process's command line, arguments joined by spaces (empty when gone or hidden).
pub(crate) fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Every live process that carries some vramkeeper worker marker and runs as this user.
pub(crate) fn marked_workers() -> Vec<(u32, WorkerMarker)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, worker_marker(pid)?)))
        .filter(|(pid, _)| is_alive(*pid))
        .collect()
}

/// Every live vramkeeper worker of the given agent, with its marker.
pub(crate) fn workers_of(agent_id: &str) -> Vec<(u32, WorkerMarker)> {
    marked_workers()
        .into_iter()
        .filter(|(_, m)| m.agent_id == agent_id)
        .collect()
}

fn page_size() -> u64 {
    procfs::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_parsed_from_the_environment_not_the_command_line() {
        let environ = b"PATH=/bin\0VRAMKEEPER_WORKER_MARKER=abc:i-1\0HOME=/\0";
        assert_eq!(
            parse_marker(environ),
            Some(WorkerMarker {
                agent_id: "abc".into(),
                instance: "i-1".into()
            })
        );
        // A command line that imitates a worker's carries no marker.
        assert_eq!(
            parse_marker(b"/bin/vramkeeper-agent\0worker\0--agent-id\0abc\0--instance\0i\0"),
            None
        );
        assert_eq!(parse_marker(b"VRAMKEEPER_WORKER_MARKER=abc\0"), None);
        assert_eq!(parse_marker(b"VRAMKEEPER_WORKER_MARKER=:i\0"), None);
    }

    #[test]
    fn own_process_has_a_start_time_and_a_command_line() {
        let me = std::process::id();
        assert!(start_ticks(me).is_some_and(|t| t > 0));
        assert!(!cmdline(me).is_empty());
        assert_eq!(owner_uid(me), Some(nix::unistd::geteuid().as_raw()));
        assert_eq!(start_ticks(u32::MAX - 1), None);
        assert!(cpu_ticks(me).is_some());
        assert!(age(me).is_some_and(|a| a < std::time::Duration::from_secs(24 * 3600 * 365)));
    }

    #[test]
    fn own_process_is_alive_and_measured() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        assert!(!name(me).is_empty());
        assert!(!is_alive(u32::MAX - 1));
    }
}
