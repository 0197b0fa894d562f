//! Facts about processes from /proc: names, resident memory, and the marker that identifies a
//! vramkeeper worker (`vramkeeper-agent worker --agent-id A --instance I ...` on its command line).

use std::fs;

/// The marker on a worker's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerMarker {
    /// The agent it belongs to (stable across restarts of that agent).
    pub agent_id: String,
    /// The run of that agent that started it.
    pub instance: String,
}

/// The process's name (`comm`), or `?` when it is gone or hidden.
pub fn name(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Resident set size in bytes, `None` when the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Whether the process exists and is not a zombie waiting to be reaped.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised name, which may itself hold parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The worker marker on the process's command line, if it is a vramkeeper worker.
pub fn worker_marker(pid: u32) -> Option<WorkerMarker> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    parse_marker(&cmdline)
}

/// Parses a NUL-separated command line.
pub fn parse_marker(cmdline: &[u8]) -> Option<WorkerMarker> {
    let args: Vec<&str> = cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .collect();
    if args.get(1) != Some(&"worker") {
        return None;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|s| s.to_string())
    };
    Some(WorkerMarker {
        agent_id: value("--agent-id")?,
        instance: value("--instance")?,
    })
}

/// Every live vramkeeper worker of the given agent, with its marker.
pub fn workers_of(agent_id: &str) -> Vec<(u32, WorkerMarker)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, worker_marker(pid)?)))
        .filter(|(pid, m)| m.agent_id == agent_id && is_alive(*pid))
        .collect()
}

fn page_size() -> u64 {
    procfs::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_parsed_from_worker_command_lines() {
        let line =
            b"/bin/vramkeeper-agent\0worker\0--agent-id\0abc\0--instance\0i-1\0--socket\0/s\0";
        assert_eq!(
            parse_marker(line),
            Some(WorkerMarker {
                agent_id: "abc".into(),
                instance: "i-1".into()
            })
        );
        assert_eq!(
            parse_marker(b"/bin/vramkeeper-agent\0serve\0--agent-id\0abc\0"),
            None
        );
        assert_eq!(
            parse_marker(b"/bin/vramkeeper-agent\0worker\0--instance\0i\0"),
            None
        );
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
