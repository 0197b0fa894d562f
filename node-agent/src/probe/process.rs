//! Facts about processes from /proc: names, resident memory, start times, and the marker that
//! identifies a vramkeeper worker: `VRAMKEEPER_WORKER_MARKER=<agent id>:<instance>` in its
//! environment, with `VRAMKEEPER_WORKER_SEQ` (which worker of that run) and `VRAMKEEPER_MODEL`
//! (the model it was started for). Every process a worker starts inherits them, so a model
//! server's whole tree is attributable, even a descendant that left its process group, and a
//! restarted agent names each by its model. Command lines prove nothing (anyone can write one);
//! a marker counts only on a process that runs as the agent's own user.

use std::{fs, os::unix::fs::MetadataExt};

/// The environment variable that marks a worker: `<agent id>:<instance>`.
pub(crate) const MARKER_ENV: &str = "VRAMKEEPER_WORKER_MARKER";
/// Which worker of its run a marked process belongs to (a number).
pub(crate) const SEQ_ENV: &str = "VRAMKEEPER_WORKER_SEQ";
/// The model the worker was started for.
pub(crate) const MODEL_ENV: &str = "VRAMKEEPER_MODEL";

/// The marker in a worker's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerMarker {
    /// The agent it belongs to (stable across restarts of that agent).
    pub agent_id: String,
    /// The run of that agent that started it.
    pub instance: String,
    /// Which worker of that run (absent on markers of older agents).
    pub seq: Option<u64>,
    /// The model it was started for.
    pub model: Option<String>,
}

impl WorkerMarker {
    /// Whether the process belongs to worker `seq` of run `instance` (the worker itself or
    /// anything it started).
    pub(crate) fn in_tree(&self, instance: &str, seq: u64) -> bool {
        self.instance == instance && self.seq == Some(seq)
    }
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
    let var = |name: &str| {
        let prefix = format!("{name}=");
        environ
            .split(|b| *b == 0)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|v| v.strip_prefix(prefix.as_str()).map(str::to_string))
    };
    let value = var(MARKER_ENV)?;
    let (agent_id, instance) = value.split_once(':')?;
    (!agent_id.is_empty() && !instance.is_empty()).then(|| WorkerMarker {
        agent_id: agent_id.into(),
        instance: instance.into(),
        seq: var(SEQ_ENV).and_then(|s| s.parse().ok()),
        model: var(MODEL_ENV).filter(|m| !m.is_empty()),
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

/// Every live process of worker `seq` of run `instance` of agent `agent_id`: the worker and
/// everything it started, wherever it moved in the process tree.
pub(crate) fn tree_of(agent_id: &str, instance: &str, seq: u64) -> Vec<u32> {
    workers_of(agent_id)
        .into_iter()
        .filter(|(_, m)| m.in_tree(instance, seq))
        .map(|(pid, _)| pid)
        .collect()
}

/// Sends `signal` to every process of the tree (see [`tree_of`]) but `spare`; returns the
/// pids signalled.
pub(crate) fn signal_tree(
    agent_id: &str,
    instance: &str,
    seq: u64,
    signal: nix::sys::signal::Signal,
    spare: Option<u32>,
) -> Vec<u32> {
    let pids: Vec<u32> = tree_of(agent_id, instance, seq)
        .into_iter()
        .filter(|pid| Some(*pid) != spare)
        .collect();
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal);
    }
    pids
}

/// The processes (that this agent may inspect) listening on TCP `port`, any address, IPv4 or
/// IPv6. Empty when none is visible.
pub(crate) fn listeners_on(port: u16) -> Vec<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return vec![];
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        })
        .collect()
}

/// The socket inodes of a `/proc/net/tcp` table that listen on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
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
                instance: "i-1".into(),
                seq: None,
                model: None,
            })
        );
        let server = b"VRAMKEEPER_MODEL=qwen-chat\0VRAMKEEPER_WORKER_MARKER=abc:i-1\0VRAMKEEPER_WORKER_SEQ=7\0";
        let marker = parse_marker(server).unwrap();
        assert_eq!(marker.seq, Some(7));
        assert_eq!(marker.model.as_deref(), Some("qwen-chat"));
        assert!(marker.in_tree("i-1", 7));
        assert!(!marker.in_tree("i-1", 8));
        assert!(!marker.in_tree("i-2", 7));
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
    fn a_listening_socket_is_found_with_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listeners_on(port), [std::process::id()]);
        drop(listener);
        assert!(listeners_on(port).is_empty());
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n   \
             1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n";
        assert_eq!(listening_inodes(table, 8080), [4242]);
        assert!(listening_inodes(table, 8081).is_empty());
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
