//! A worker's memory is its whole process tree's: a model server's engine processes, even one
//! that left the process group, carry the worker's marker (`probe::process`), and a reading
//! attributes what they hold to the worker, so every figure of the agent (the model's
//! footprint, ghost, the release check) counts the tree.

use std::time::Duration;

use crate::probe::{DeviceReading, ProcessUsage, process};

/// Time a model server's worker may need, beyond `stop_grace_s`, to SIGKILL what is left of
/// its tree and see it gone.
pub(crate) const KILL_MARGIN: Duration = Duration::from_secs(6);

/// Moves the usage of every process of a live worker's tree onto the worker's own entry.
/// `roots` are the workers of run `instance` by number (`seq`, pid). A process whose worker
/// is gone stays on its own: a leftover, named by the model in its marker.
pub(crate) fn fold_trees(reading: &mut DeviceReading, instance: &str, roots: &[(u64, u32)]) {
    let live: Vec<(u64, u32)> = roots
        .iter()
        .copied()
        .filter(|(_, pid)| process::is_alive(*pid))
        .collect();
    if live.is_empty() {
        return;
    }
    fold_with(reading, |pid| {
        if live.iter().any(|(_, root)| *root == pid) {
            return None;
        }
        let marker = process::worker_marker(pid)?;
        live.iter()
            .find(|(seq, _)| marker.in_tree(instance, *seq))
            .map(|(_, root)| *root)
    });
}

/// Moves each process's usage onto `root_of(pid)`'s entry (creating it) when it has a root.
fn fold_with(reading: &mut DeviceReading, root_of: impl Fn(u32) -> Option<u32>) {
    let mut kept: Vec<ProcessUsage> = Vec::with_capacity(reading.processes.len());
    let mut moved: Vec<(u32, u64)> = vec![];
    for p in reading.processes.drain(..) {
        match root_of(p.pid) {
            Some(root) => moved.push((root, p.used_bytes)),
            None => kept.push(p),
        }
    }
    for (root, bytes) in moved {
        match kept.iter_mut().find(|p| p.pid == root) {
            Some(entry) => entry.used_bytes += bytes,
            None => kept.push(ProcessUsage {
                pid: root,
                used_bytes: bytes,
            }),
        }
    }
    reading.processes = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(pid: u32, mib: u64) -> ProcessUsage {
        ProcessUsage {
            pid,
            used_bytes: mib << 20,
        }
    }

    #[test]
    fn a_tree_is_summed_onto_its_root_even_when_the_root_holds_nothing() {
        let mut reading = DeviceReading {
            processes: vec![usage(10, 100), usage(11, 50), usage(20, 7), usage(12, 30)],
            ..Default::default()
        };
        // 11 and 12 belong to worker 10; 20 to nobody. Worker 30 holds nothing itself; 31 is
        // its server.
        reading.processes.push(usage(31, 400));
        fold_with(&mut reading, |pid| match pid {
            11 | 12 => Some(10),
            31 => Some(30),
            _ => None,
        });
        assert_eq!(reading.usage_of(10), 180 << 20);
        assert_eq!(reading.usage_of(20), 7 << 20);
        assert_eq!(reading.usage_of(30), 400 << 20);
        assert_eq!(reading.usage_of(11), 0);
        assert_eq!(reading.processes.len(), 3);
    }
}
