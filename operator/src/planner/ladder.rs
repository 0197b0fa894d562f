//! The zombie ladder's memory across reconciles and restarts: the episode under way, with
//! hysteresis, kept in `status.ladder` (the operator's own field).
//!
//! ```text
//!   ghost over threshold for persistSeconds ──> episode opens (episodeSince)
//!   ghost dips under ──> belowSince set; back over before persistSeconds ──> same episode,
//!                         zombie memory at once (the ladder goes on: free -> reset -> Degraded)
//!   under for persistSeconds ──> episode ends (attempts back to 0; the reset budget stays)
//! ```

use std::time::Duration;

use jiff::Timestamp;
use vramkeeper_crds::{LadderStatus, ZombiePolicy};

use super::{RESET_WINDOW, Remediation, RemedyKind, elapsed, parse_time};
use crate::plan::Zombie;

/// The ladder after observing `zombie` at `now`, from `prev` (the stored one).
pub fn track(
    prev: Option<&LadderStatus>,
    zombie: &Zombie,
    policy: &ZombiePolicy,
    now: Timestamp,
) -> LadderStatus {
    let mut l = prev.cloned().unwrap_or_default();
    l.resets
        .retain(|r| parse_time(r).is_some_and(|at| elapsed(at, now) < RESET_WINDOW));
    let persist = Duration::from_secs(policy.persist_seconds.into());
    match zombie {
        Zombie::Persisting { since, .. } => {
            if l.episode_since.is_none() {
                l.episode_since = Some(since.to_string());
                l.attempts = 0;
            }
            l.below_since = None;
        }
        Zombie::Suspected { .. } => l.below_since = None,
        Zombie::Clear if l.episode_since.is_some() => {
            let below = l.below_since.as_deref().and_then(parse_time).unwrap_or(now);
            if elapsed(below, now) >= persist {
                l.episode_since = None;
                l.below_since = None;
                l.attempts = 0;
            } else {
                l.below_since = Some(below.to_string());
            }
        }
        Zombie::Clear => {}
    }
    l
}

/// When the episode under way began, if one is.
pub fn episode_since(l: &LadderStatus) -> Option<Timestamp> {
    l.episode_since.as_deref().and_then(parse_time)
}

/// Within an open episode, ghost memory back over the threshold is zombie memory at once: the
/// persist time was served when the episode opened.
pub fn within_episode(zombie: Zombie, l: &LadderStatus) -> Zombie {
    match (zombie, episode_since(l)) {
        (
            Zombie::Suspected { ghost_mib, .. } | Zombie::Persisting { ghost_mib, .. },
            Some(since),
        ) => Zombie::Persisting { ghost_mib, since },
        (z, _) => z,
    }
}

/// Records a free or reset the operator ran (`r.at` is when it finished).
pub fn record(l: &mut LadderStatus, r: &Remediation) {
    let at = r.at.to_string();
    l.attempts = l.attempts.saturating_add(1);
    match r.kind {
        RemedyKind::Free => l.last_free = Some(at),
        RemedyKind::Reset => {
            l.last_reset = Some(at.clone());
            if !l.resets.contains(&at) {
                l.resets.push(at);
            }
        }
    }
}

/// Folds the operator's own frees and resets of `history` (its journal, the agent's records)
/// into `l`, so that a status read from a cache that lags the operator's last write never
/// makes the ladder forget a step.
pub fn absorb(l: &mut LadderStatus, history: &[Remediation], now: Timestamp) {
    let later = |stored: &Option<String>, at: Timestamp| {
        stored
            .as_deref()
            .and_then(parse_time)
            .is_none_or(|s| s < at)
    };
    let start = episode_since(l);
    let mut in_episode = 0;
    for r in history.iter().filter(|r| r.by_operator) {
        match r.kind {
            RemedyKind::Free if later(&l.last_free, r.at) => l.last_free = Some(r.at.to_string()),
            RemedyKind::Reset => {
                if later(&l.last_reset, r.at) {
                    l.last_reset = Some(r.at.to_string());
                }
                let known = l
                    .resets
                    .iter()
                    .filter_map(|x| parse_time(x))
                    .any(|x| x == r.at);
                if !known && elapsed(r.at, now) < RESET_WINDOW {
                    l.resets.push(r.at.to_string());
                }
            }
            RemedyKind::Free => {}
        }
        if start.is_some_and(|s| r.at >= s) {
            in_episode += 1;
        }
    }
    l.resets
        .sort_by_key(|x| parse_time(x).unwrap_or(Timestamp::UNIX_EPOCH));
    l.attempts = l.attempts.max(in_episode);
}

/// The operator's frees and resets the ladder remembers, as the planner counts them.
pub fn remembered(l: &LadderStatus) -> Vec<Remediation> {
    let op = |kind, at: &str| {
        parse_time(at).map(|at| Remediation {
            kind,
            at,
            by_operator: true,
        })
    };
    l.last_free
        .iter()
        .filter_map(|a| op(RemedyKind::Free, a))
        .chain(l.last_reset.iter().filter_map(|a| op(RemedyKind::Reset, a)))
        .chain(l.resets.iter().filter_map(|a| op(RemedyKind::Reset, a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn policy() -> ZombiePolicy {
        ZombiePolicy {
            persist_seconds: 10,
            ..Default::default()
        }
    }

    const OVER: Zombie = Zombie::Suspected {
        ghost_mib: 2000,
        since: None,
        until: None,
    };

    #[test]
    fn an_episode_survives_a_dip_and_ends_after_the_persist_time_under() {
        let p = policy();
        let l = track(
            None,
            &Zombie::Persisting {
                ghost_mib: 2000,
                since: t(0),
            },
            &p,
            t(10),
        );
        assert_eq!(episode_since(&l), Some(t(0)));
        // A dip of 5 s: still the episode; back over, it is zombie memory at once.
        let l = track(Some(&l), &Zombie::Clear, &p, t(11));
        let l = track(Some(&l), &Zombie::Clear, &p, t(16));
        assert_eq!(episode_since(&l), Some(t(0)));
        let l = track(Some(&l), &OVER, &p, t(17));
        assert_eq!(l.below_since, None);
        assert!(matches!(
            within_episode(OVER, &l),
            Zombie::Persisting { since, .. } if since == t(0)
        ));
        // Under for the persist time: over.
        let l = track(Some(&l), &Zombie::Clear, &p, t(20));
        let l = track(Some(&l), &Zombie::Clear, &p, t(29));
        assert!(episode_since(&l).is_some());
        let l = track(Some(&l), &Zombie::Clear, &p, t(30));
        assert_eq!(episode_since(&l), None);
        assert_eq!(within_episode(OVER, &l), OVER);
    }

    #[test]
    fn steps_missing_from_a_stale_status_are_taken_from_the_history() {
        let mut l = LadderStatus {
            episode_since: Some(t(0).to_string()),
            ..Default::default()
        };
        let h = [
            Remediation {
                kind: RemedyKind::Free,
                at: t(10),
                by_operator: true,
            },
            Remediation {
                kind: RemedyKind::Reset,
                at: t(70),
                by_operator: true,
            },
            Remediation {
                kind: RemedyKind::Free,
                at: t(80),
                by_operator: false,
            },
        ];
        absorb(&mut l, &h, t(100));
        assert_eq!(l.last_free, Some(t(10).to_string()));
        assert_eq!(l.last_reset, Some(t(70).to_string()));
        assert_eq!(l.resets, [t(70).to_string()]);
        assert_eq!(l.attempts, 2);
        // Idempotent.
        let again = l.clone();
        absorb(&mut l, &h, t(100));
        assert_eq!(l, again);
    }

    #[test]
    fn the_reset_budget_outlives_episodes_for_an_hour() {
        let p = policy();
        let mut l = LadderStatus::default();
        record(
            &mut l,
            &Remediation {
                kind: RemedyKind::Reset,
                at: t(0),
                by_operator: true,
            },
        );
        assert_eq!(l.attempts, 1);
        assert_eq!(remembered(&l).len(), 2);
        let l2 = track(Some(&l), &Zombie::Clear, &p, t(3599));
        assert_eq!(l2.resets.len(), 1);
        let l3 = track(Some(&l), &Zombie::Clear, &p, t(3600));
        assert!(l3.resets.is_empty());
    }
}
