//! Which foreign processes a free or reset may end: with `--kill-foreign-processes` only, and
//! then only the fewest needed to bring the ghost under the threshold, largest first, among
//! those that are old enough, idle on the device for the whole persistence window, and (with
//! `--kill-foreign-matching`) whose command line matches. Every other one is spared, with the
//! reason. Pure: facts in, a decision out.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use regex::Regex;

/// What the agent remembers of a process's use of the device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Activity {
    start_ticks: Option<u64>,
    cpu_ticks: Option<u64>,
    /// When it last used the device (or was first seen: before that nothing is known).
    pub last_busy: Instant,
}

/// Updates what is known of the processes holding device memory now: a process is busy when
/// the device says it used it (`device_busy`, NVML) or, where the device cannot say, when its
/// CPU time moved. `facts` reads a pid's start time and CPU time. Processes no longer listed
/// are forgotten; a pid that now names another process starts afresh.
pub(super) fn track(
    activity: &mut HashMap<u32, Activity>,
    pids: &[u32],
    device_busy: Option<&HashSet<u32>>,
    now: Instant,
    facts: impl Fn(u32) -> (Option<u64>, Option<u64>),
) {
    activity.retain(|pid, _| pids.contains(pid));
    for &pid in pids {
        let (start_ticks, cpu_ticks) = facts(pid);
        match activity.get_mut(&pid) {
            Some(a) if a.start_ticks == start_ticks => {
                let busy = match device_busy {
                    Some(set) => set.contains(&pid),
                    None => cpu_ticks != a.cpu_ticks,
                };
                if busy {
                    a.last_busy = now;
                }
                a.cpu_ticks = cpu_ticks;
            }
            _ => {
                activity.insert(
                    pid,
                    Activity {
                        start_ticks,
                        cpu_ticks,
                        last_busy: now,
                    },
                );
            }
        }
    }
}

/// A foreign process holding device memory, as the agent sees it now.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    /// Its pid.
    pub pid: u32,
    /// Device memory it holds.
    pub bytes: u64,
    /// Its command line.
    pub cmdline: String,
    /// How long it has existed (`None` when unknown: never ended).
    pub age: Option<Duration>,
    /// How long it has been idle on the device (`None` when never seen busy or idle long
    /// enough to say: never ended).
    pub idle_for: Option<Duration>,
}

/// What the policy says about foreign processes.
#[derive(Debug, Clone, Default)]
pub(super) struct ForeignPolicy {
    /// `--kill-foreign-processes` (narrowed by the request).
    pub allowed: bool,
    /// The ghost level to get under.
    pub threshold_bytes: u64,
    /// A process must be at least this old and idle at least this long.
    pub persist: Duration,
    /// When set, only processes whose command line matches.
    pub matching: Option<Regex>,
}

/// Why a process was spared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Spared {
    /// Policy does not allow ending foreign processes.
    PolicyOff,
    /// Its command line does not match `--kill-foreign-matching`.
    NotMatching,
    /// Younger than the persistence time, or of unknown age.
    TooYoung,
    /// Used the device within the persistence window, or its use is unknown.
    Busy,
    /// The ghost is under the threshold without ending it.
    NotNeeded,
}

impl Spared {
    /// Words for logs, reports and the status page.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Self::PolicyOff => "foreign processes are never ended without --kill-foreign-processes",
            Self::NotMatching => "its command line does not match --kill-foreign-matching",
            Self::TooYoung => "younger than the persistence time",
            Self::Busy => "it used the device within the persistence window",
            Self::NotNeeded => "the ghost is under the threshold without ending it",
        }
    }
}

/// Chooses which candidates to end given the ghost that remains once this agent's own strays
/// are gone: the fewest (largest first) that bring it under the threshold. Returns the pids to
/// end and every other candidate with why it was spared.
pub(super) fn choose(
    candidates: &[Candidate],
    ghost_bytes: u64,
    policy: &ForeignPolicy,
) -> (Vec<u32>, Vec<(u32, Spared)>) {
    let mut spared = vec![];
    let mut eligible = vec![];
    for c in candidates {
        let reason = if !policy.allowed {
            Some(Spared::PolicyOff)
        } else if policy
            .matching
            .as_ref()
            .is_some_and(|re| !re.is_match(&c.cmdline))
        {
            Some(Spared::NotMatching)
        } else if c.age.is_none_or(|a| a < policy.persist) {
            Some(Spared::TooYoung)
        } else if c.idle_for.is_none_or(|i| i < policy.persist) {
            Some(Spared::Busy)
        } else {
            None
        };
        match reason {
            Some(r) => spared.push((c.pid, r)),
            None => eligible.push(c),
        }
    }
    eligible.sort_by_key(|c| (std::cmp::Reverse(c.bytes), c.pid));
    let mut remaining = ghost_bytes;
    let mut end = vec![];
    for c in eligible {
        if remaining >= policy.threshold_bytes && c.bytes > 0 {
            end.push(c.pid);
            remaining = remaining.saturating_sub(c.bytes);
        } else {
            spared.push((c.pid, Spared::NotNeeded));
        }
    }
    (end, spared)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;
    const PERSIST: Duration = Duration::from_secs(30);

    fn old_idle(pid: u32, bytes: u64) -> Candidate {
        Candidate {
            pid,
            bytes,
            cmdline: format!("python3 server-{pid}.py"),
            age: Some(PERSIST * 10),
            idle_for: Some(PERSIST * 2),
        }
    }

    fn policy() -> ForeignPolicy {
        ForeignPolicy {
            allowed: true,
            threshold_bytes: 3 * GIB / 2,
            persist: PERSIST,
            matching: None,
        }
    }

    #[test]
    fn activity_counts_from_the_last_use_and_restarts_with_a_new_process() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut a = HashMap::new();
        track(&mut a, &[1, 2], None, t0, |_| (Some(7), Some(100)));
        // Pid 1's CPU time moved, pid 2's did not.
        track(&mut a, &[1, 2], None, later(5), |p| {
            (Some(7), Some(if p == 1 { 101 } else { 100 }))
        });
        assert_eq!(a[&1].last_busy, later(5));
        assert_eq!(a[&2].last_busy, t0);
        // The device's own word wins where it has one.
        let busy: HashSet<u32> = [2].into();
        track(&mut a, &[1, 2], Some(&busy), later(9), |_| {
            (Some(7), Some(500))
        });
        assert_eq!((a[&1].last_busy, a[&2].last_busy), (later(5), later(9)));
        // A reused pid is a new process; a vanished one is forgotten.
        track(&mut a, &[1], None, later(12), |_| (Some(8), Some(0)));
        assert_eq!(a[&1].last_busy, later(12));
        assert!(!a.contains_key(&2));
    }

    #[test]
    fn one_stale_server_over_the_threshold_spares_the_bystander_under_it() {
        // The H100 finding: a 3.5 GiB stale process and an unrelated 1 GiB one.
        let stale = old_idle(1, 7 * GIB / 2);
        let bystander = old_idle(2, GIB);
        let (end, spared) = choose(&[bystander, stale], 9 * GIB / 2, &policy());
        assert_eq!(end, [1]);
        assert_eq!(spared, [(2, Spared::NotNeeded)]);
    }

    #[test]
    fn young_busy_unmatched_and_disallowed_processes_are_spared_with_reasons() {
        let mut young = old_idle(1, 4 * GIB);
        young.age = Some(PERSIST / 2);
        let mut busy = old_idle(2, 4 * GIB);
        busy.idle_for = Some(Duration::ZERO);
        let mut unknown = old_idle(3, 4 * GIB);
        unknown.idle_for = None;
        let mut other = old_idle(4, 4 * GIB);
        other.cmdline = "/usr/bin/training-job".into();
        let p = ForeignPolicy {
            matching: Some(Regex::new("server-").unwrap()),
            ..policy()
        };
        let (end, spared) = choose(&[young, busy, unknown, other], 16 * GIB, &p);
        assert!(end.is_empty());
        assert_eq!(
            spared,
            [
                (1, Spared::TooYoung),
                (2, Spared::Busy),
                (3, Spared::Busy),
                (4, Spared::NotMatching)
            ]
        );
        let off = ForeignPolicy {
            allowed: false,
            ..policy()
        };
        let (end, spared) = choose(&[old_idle(5, 4 * GIB)], 4 * GIB, &off);
        assert!(end.is_empty());
        assert_eq!(spared, [(5, Spared::PolicyOff)]);
    }

    proptest! {
        /// Ends the fewest eligible processes that bring the ghost under the threshold (the
        /// largest first), or all eligible ones when even that is not enough; never an
        /// ineligible one; every candidate is either ended or spared.
        #[test]
        fn ends_the_fewest_largest_first(
            sizes in proptest::collection::vec(0u64..8 * GIB, 0..8),
            extra in 0u64..4 * GIB,
            busy_mask in 0u8..=255,
        ) {
            let candidates: Vec<Candidate> = sizes.iter().enumerate().map(|(i, b)| {
                let mut c = old_idle(i as u32 + 1, *b);
                if busy_mask & (1 << i) != 0 {
                    c.idle_for = Some(Duration::ZERO);
                }
                c
            }).collect();
            let ghost = sizes.iter().sum::<u64>() + extra;
            let p = policy();
            let (end, spared) = choose(&candidates, ghost, &p);
            prop_assert_eq!(end.len() + spared.len(), candidates.len());
            let by_pid = |pid: u32| &candidates[pid as usize - 1];
            for pid in &end {
                prop_assert!(busy_mask & (1 << (pid - 1)) == 0, "a busy process was ended");
            }
            let freed: u64 = end.iter().map(|p| by_pid(*p).bytes).sum();
            let mut eligible: Vec<u64> = candidates.iter().enumerate()
                .filter(|(i, c)| busy_mask & (1 << i) == 0 && c.bytes > 0)
                .map(|(_, c)| c.bytes).collect();
            eligible.sort_unstable_by(|a, b| b.cmp(a));
            // The fewest: no smaller count of eligible processes reaches the target.
            let target = ghost.saturating_sub(p.threshold_bytes);
            if freed > target || ghost < p.threshold_bytes {
                let best_with_one_less: u64 = eligible.iter().take(end.len().saturating_sub(1)).sum();
                prop_assert!(end.is_empty() || best_with_one_less <= target,
                    "{} ended where fewer would do", end.len());
            } else {
                prop_assert_eq!(end.len(), eligible.len(), "not enough: every eligible one ended");
            }
        }
    }
}
