//! The planner: a pure, synchronous function from what is wanted and what was observed to the
//! one next step. No client, no clock, no I/O: the executor gathers the inputs and carries out
//! the step.
//!
//! Rules, in order:
//! 1. No fresh report from the agent: wait for one.
//! 2. Degraded at this generation (`ladder.degraded`, never the condition) and the ghost is
//!    still there or its episode still open: no automatic action.
//! 3. The agent is busy (a switch, unload, free or reset runs): wait.
//! 4. Another model is active: unload it (unload before load).
//! 5. Zombie memory (ghost over `thresholdMiB` for `persistSeconds`): the ladder, free ->
//!    (cooldown) -> reset (at most `maxResetsPerHour`) -> (cooldown) -> Degraded. An episode
//!    ends only after the ghost stayed under the threshold for `persistSeconds` (hysteresis,
//!    `ladder.rs`); within one, a ghost back over the threshold is zombie memory at once.
//! 6. Nothing is active and a model is wanted: load it, but only once the status shows the
//!    memory came back (ghost under the threshold), and not again after the agent said the
//!    model does not exist (until the spec changes, the agent's catalog lists the model, or
//!    [`RETRY_UNKNOWN_MAX`] passed: retries back off). A model the agent last unloaded for
//!    idleness is parked instead: the next inference request that names it loads it.
//! 7. The wanted model is active but served nothing for `idleUnloadSeconds`: unload it (trigger
//!    `idle`).
//! 8. Otherwise the GPU serves what it should: in sync.

pub mod ladder;
mod zombie;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::Timestamp;
use vramkeeper_crds::{GpuModelSpec, GpuModelStatus, SwitchTrigger};

use crate::plan::{Plan, Step, Wait, Zombie};

/// How old an agent report may be before the planner stops trusting it.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Recheck soon after acting: the next step usually follows at once.
pub const RECHECK_AFTER_STEP: Duration = Duration::from_millis(500);
/// Recheck a busy agent.
pub const RECHECK_BUSY: Duration = Duration::from_secs(2);
/// Recheck when the agent has not reported.
pub const RECHECK_SILENT: Duration = Duration::from_secs(10);
/// Recheck while the memory is on its way back or under watch.
pub const RECHECK_MEMORY_MAX: Duration = Duration::from_secs(15);
/// Recheck a GPU that serves what it should.
pub const RECHECK_IN_SYNC: Duration = Duration::from_secs(30);
/// Recheck a Degraded GPU (the ghost may clear).
pub const RECHECK_DEGRADED: Duration = Duration::from_secs(60);
/// Recheck after the agent said the model does not exist.
pub const RECHECK_FAILED: Duration = Duration::from_secs(300);
/// A model the agent did not know, and whose catalog lists it now, is retried after this
/// long since the last failure at the earliest (the catalog may lag the agent's answer); each
/// further failure doubles it, up to [`RETRY_UNKNOWN_MAX`].
pub const RETRY_UNKNOWN_MIN: Duration = Duration::from_secs(5);
/// A model the agent did not know is retried after this long since the last failure even
/// when the catalog does not list it (the agent Pod may have rolled with a new catalog).
pub const RETRY_UNKNOWN_MAX: Duration = Duration::from_secs(300);
/// The window `maxResetsPerHour` counts over.
pub const RESET_WINDOW: Duration = Duration::from_secs(3600);

/// A free or a reset: the agent's own word for it.
pub type RemedyKind = vramkeeper_crds::api::RemediationAction;

/// One free or reset that ran on the GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remediation {
    /// Free or reset.
    pub kind: RemedyKind,
    /// When it finished.
    pub at: Timestamp,
    /// Whether the operator asked for it (only those count against `maxResetsPerHour`).
    pub by_operator: bool,
}

/// Everything the planner looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// What is wanted.
    pub spec: &'a GpuModelSpec,
    /// `metadata.generation` of the object.
    pub generation: i64,
    /// What the agent observed (active model, busy, ghost, zombie since, reported at) and the
    /// operator's own conditions of earlier reconciles.
    pub status: &'a GpuModelStatus,
    /// Now.
    pub now: Timestamp,
    /// Frees and resets that ran on this GPU, any order.
    pub history: &'a [Remediation],
    /// Loads at this generation that the agent answered `unknown_model`, in a row, as this
    /// operator counted them (0 after a restart, when one failure is assumed).
    pub unknown_failures: u32,
}

/// The next step for one GpuModel.
pub fn plan(input: &Input<'_>) -> Plan {
    let raw = zombie::assess(&input.spec.zombie, input.status, input.now);
    let ladder = ladder::track(
        input.status.ladder.as_ref(),
        &raw,
        &input.spec.zombie,
        input.now,
    );
    let mut ladder = ladder;
    ladder::absorb(&mut ladder, input.history, input.now);
    let zombie = ladder::within_episode(raw, &ladder);
    let in_episode = ladder.episode_since.is_some();
    let mut p = plan_with(input, zombie, in_episode);
    p.ladder = ladder;
    p
}

fn plan_with(input: &Input<'_>, zombie: Zombie, in_episode: bool) -> Plan {
    let Input {
        spec,
        generation,
        status,
        now,
        ..
    } = *input;
    let wait = |w: Wait, recheck: Duration| Plan::new(Step::Wait(w), zombie.clone(), recheck);

    let reported_at = status.reported_at.as_deref().and_then(parse_time);
    if reported_at.is_none_or(|at| elapsed(at, now) > STALE_AFTER) {
        return wait(Wait::AgentSilent { reported_at }, RECHECK_SILENT);
    }
    if (zombie != Zombie::Clear || in_episode) && degraded_at(status, generation) {
        return wait(Wait::Degraded, RECHECK_DEGRADED);
    }
    if status.switching {
        return wait(Wait::AgentBusy, RECHECK_BUSY);
    }
    let desired = spec.model.as_deref();
    let active = status.active_model.as_deref();
    if let Some(model) = active.filter(|a| Some(*a) != desired) {
        return Plan::new(
            Step::Unload {
                model: model.to_string(),
            },
            zombie,
            RECHECK_AFTER_STEP,
        );
    }
    if let Zombie::Persisting { since, .. } = zombie {
        return zombie::ladder(input, since, zombie.clone());
    }
    let memory_recheck = |until: Option<Timestamp>| {
        until.map_or(RECHECK_MEMORY_MAX, |u| {
            elapsed(now, u).clamp(Duration::from_secs(1), RECHECK_MEMORY_MAX)
        })
    };
    match (desired, active) {
        (Some(model), None) => {
            if parked(status, model) {
                return match zombie {
                    Zombie::Suspected { until, .. } => {
                        wait(Wait::ZombieSuspected, memory_recheck(until))
                    }
                    _ => Plan::new(
                        Step::Parked {
                            model: model.to_string(),
                        },
                        zombie,
                        RECHECK_IN_SYNC,
                    ),
                };
            }
            if let Some(failed) = failed_at(status, generation) {
                let since = elapsed(failed, now);
                let listed = status.models.iter().any(|m| m.name == model);
                let due = retry_unknown_after(listed, input.unknown_failures);
                if since < due {
                    return wait(Wait::Failed, (due - since).max(Duration::from_secs(1)));
                }
            }
            if let Zombie::Suspected { until, .. } = zombie {
                return wait(Wait::MemoryNotBack, memory_recheck(until));
            }
            Plan::new(
                Step::Load {
                    model: model.to_string(),
                },
                zombie,
                RECHECK_AFTER_STEP,
            )
        }
        _ => match zombie {
            Zombie::Suspected { until, .. } => wait(Wait::ZombieSuspected, memory_recheck(until)),
            _ => match (active, spec.idle_unload_seconds) {
                (Some(model), Some(limit)) => {
                    let limit = Duration::from_secs(limit.into());
                    match idle_for(status, model, now) {
                        Some(idle) if idle >= limit => Plan::new(
                            Step::IdleUnload {
                                model: model.to_string(),
                                idle_s: idle.as_secs(),
                            },
                            zombie,
                            RECHECK_AFTER_STEP,
                        ),
                        // Look again when the model would turn idle.
                        Some(idle) => Plan::new(
                            Step::InSync,
                            zombie,
                            (limit - idle).clamp(Duration::from_secs(1), RECHECK_IN_SYNC),
                        ),
                        None => Plan::new(Step::InSync, zombie, RECHECK_IN_SYNC),
                    }
                }
                _ => Plan::new(Step::InSync, zombie, RECHECK_IN_SYNC),
            },
        },
    }
}

/// How long `model` has served nothing: since its record's `lastUsed` (or `lastLoaded`, from an
/// agent that does not report use). None when the record has neither.
fn idle_for(status: &GpuModelStatus, model: &str, now: Timestamp) -> Option<Duration> {
    let record = status.models.iter().find(|m| m.name == model)?;
    let since = record
        .last_used
        .as_deref()
        .or(record.last_loaded.as_deref())
        .and_then(parse_time)?;
    Some(elapsed(since, now))
}

/// Nothing is active because the agent last unloaded `model` for idleness (by the operator's
/// `idleUnloadSeconds` or by its own idle timeout), and nothing was loaded since.
fn parked(status: &GpuModelStatus, model: &str) -> bool {
    status.active_model.is_none()
        && status.last_switch.as_ref().is_some_and(|s| {
            s.trigger == SwitchTrigger::Idle && s.to.is_none() && s.from.as_deref() == Some(model)
        })
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// Time from `since` to `now`, zero when `now` is earlier.
pub fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

/// `at + d`, saturating.
pub fn after(at: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The ladder gave up at this generation (its typed memory says so; the Degraded condition is
/// output only).
fn degraded_at(status: &GpuModelStatus, generation: i64) -> bool {
    status
        .ladder
        .as_ref()
        .and_then(|l| l.degraded.as_ref())
        .is_some_and(|d| d.generation == generation)
}

/// How long after the last `unknown_model` answer a load is tried again: when the agent's
/// catalog lists the model, [`RETRY_UNKNOWN_MIN`] doubled for each failure after the first, up
/// to [`RETRY_UNKNOWN_MAX`]; when it does not, [`RETRY_UNKNOWN_MAX`] (the agent's Pod may have
/// rolled with a catalog that has it).
pub fn retry_unknown_after(listed: bool, failures: u32) -> Duration {
    if !listed {
        return RETRY_UNKNOWN_MAX;
    }
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_UNKNOWN_MIN
        .saturating_mul(1 << doublings)
        .min(RETRY_UNKNOWN_MAX)
}

/// When the agent last said, at this generation, that the desired model does not exist.
fn failed_at(status: &GpuModelStatus, generation: i64) -> Option<Timestamp> {
    status
        .unknown_model
        .as_ref()
        .filter(|u| u.generation == generation)
        .map(|u| parse_time(&u.at).unwrap_or(Timestamp::UNIX_EPOCH))
}
