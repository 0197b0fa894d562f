//! Zombie memory: whether the ghost has persisted, and the ladder that answers it.

use std::time::Duration;

use jiff::Timestamp;
use vramkeeper_crds::{GpuModelStatus, ZombiePolicy};

use super::{Input, RESET_WINDOW, RemedyKind, after, elapsed, parse_time};
use crate::plan::{DegradedWhy, Next, Plan, Step, Wait, Zombie};

/// Assesses the ghost of `status` against `policy`.
///
/// The agent reports since when its ghost has been over *its* threshold (`zombieSince`); the
/// policy's threshold decides whether the ghost counts now. Configure the agent's threshold at
/// or under the policy's, or the persist time may never start.
pub fn assess(policy: &ZombiePolicy, status: &GpuModelStatus, now: Timestamp) -> Zombie {
    let ghost_mib = status.device.as_ref().map_or(0, |d| d.ghost_mib);
    if ghost_mib <= policy.threshold_mib {
        return Zombie::Clear;
    }
    let since = status.zombie_since.as_deref().and_then(parse_time);
    let persist = Duration::from_secs(policy.persist_seconds.into());
    match since {
        Some(since) if elapsed(since, now) >= persist => Zombie::Persisting { ghost_mib, since },
        _ => Zombie::Suspected {
            ghost_mib,
            since,
            until: since.map(|s| after(s, persist)),
        },
    }
}

/// The ladder for zombie memory that has persisted since `since`: free, then (after the
/// cooldown) reset within the hour's budget, then (after the cooldown) Degraded.
pub(super) fn ladder(input: &Input<'_>, since: Timestamp, zombie: Zombie) -> Plan {
    let Input {
        spec,
        generation,
        status,
        now,
        history,
        ..
    } = *input;
    let policy = &spec.zombie;
    // Steps taken before a spec change (or before Degraded was lifted) belong to an episode
    // that is over: the ladder starts again.
    let start = restart_marker(status, generation).map_or(since, |m| m.max(since));
    let in_episode = |kind| {
        history
            .iter()
            .filter(|r| r.kind == kind && r.at >= start)
            .count()
    };
    let frees = in_episode(RemedyKind::Free);
    let resets = in_episode(RemedyKind::Reset);
    let resets_this_hour = history
        .iter()
        .filter(|r| r.kind == RemedyKind::Reset && r.by_operator)
        .filter(|r| elapsed(r.at, now) < RESET_WINDOW)
        .count() as u32;
    let reset_allowed = policy.reset_after_free && policy.max_resets_per_hour > 0;
    let next = if frees == 0 && resets == 0 {
        Next::Free
    } else if resets == 0 && reset_allowed && resets_this_hour < policy.max_resets_per_hour {
        Next::Reset
    } else {
        Next::Judge
    };
    let cooldown = Duration::from_secs(policy.free_cooldown_seconds.into());
    if let Some(last) = history.iter().map(|r| r.at).max() {
        let until = after(last, cooldown);
        if now < until {
            let recheck =
                elapsed(now, until).clamp(Duration::from_secs(1), Duration::from_secs(300));
            return Plan::new(Step::Wait(Wait::Cooldown { next, until }), zombie, recheck);
        }
    }
    let step = match next {
        Next::Free => Step::Free,
        Next::Reset => Step::Reset,
        Next::Judge => Step::MarkDegraded(if resets > 0 {
            DegradedWhy::ResetDidNotClear
        } else if !reset_allowed {
            DegradedWhy::NoResetAllowed
        } else {
            DegradedWhy::ResetBudgetSpent {
                resets: resets_this_hour,
                max: policy.max_resets_per_hour,
            }
        }),
    };
    let recheck = if matches!(step, Step::MarkDegraded(_)) {
        super::RECHECK_DEGRADED
    } else {
        super::RECHECK_AFTER_STEP
    };
    Plan::new(step, zombie, recheck)
}

/// Where an earlier episode's steps end, from the ladder's typed memory (never from the
/// Degraded condition): none while the ladder holds Degraded at this generation; when it gave
/// up at an earlier generation, since when it has been Degraded (a spec change ends the episode
/// it judged); when it was lifted, the time of the lift. Before `ladder.liftedAt` existed the
/// Degraded condition's `lastTransitionTime` served, which also cut off steps older than the
/// operator's first reconcile (when the condition was first written False); now only a lift
/// does, and the episode's start (`ladder.episodeSince`) bounds the rest.
fn restart_marker(status: &GpuModelStatus, generation: i64) -> Option<Timestamp> {
    let ladder = status.ladder.as_ref()?;
    match &ladder.degraded {
        Some(d) if d.generation == generation => None,
        Some(d) => parse_time(&d.since),
        None => ladder.lifted_at.as_deref().and_then(parse_time),
    }
}
