//! The operator's part of the status: `phase`, `observedGeneration`, the four conditions and
//! the typed memory the next reconcile plans on (`ladder`, `unknownModel`, `switchSummary`,
//! `conflictWith`), derived purely from the plan, what came of it, and the status before.
//!
//! Conditions are output only: nothing here or in the planner decides anything from an
//! earlier condition. An earlier condition is read back only to keep its `lastTransitionTime`
//! while its status stays, and to carry ZombieMemory and Degraded over unchanged while the
//! agent cannot be heard. The Degraded hold itself lives in `ladder.degraded` (the generation,
//! reason, words and since when), which the Degraded condition is built from; lifting it
//! records `ladder.liftedAt`, where the ladder starts again.
//!
//! `derive` composes one function per condition (`ready`, `switching`, `zombie_memory`,
//! `degraded`) and `phase`; each returns a [`Verdict`] and is tested on its own.

use jiff::Timestamp;
use vramkeeper_crds::{
    Condition, DegradedReason, DegradedStatus, GpuModelSpec, GpuModelStatus, LadderStatus, Phase,
    UnknownModelStatus,
};

pub use vramkeeper_crds::conditions::{DEGRADED, READY, SWITCHING, TERMINATING, ZOMBIE_MEMORY};

use crate::{
    plan::{DegradedWhy, Next, Outcome, Plan, Step, Wait, Zombie},
    status::OperatorStatus,
};

pub mod reason;
#[cfg(test)]
mod tests;

/// Where the reconcile got to.
#[derive(Clone, Copy, Debug)]
pub enum Situation<'a> {
    /// The agent could not be heard: no Pod, no answer, or no such GPU.
    Unheard {
        /// A condition reason (`AgentNotFound`, `AgentUnreachable`, `UnknownGpu`).
        reason: &'static str,
        /// What went wrong.
        message: &'a str,
    },
    /// Another, older GpuModel owns this one's (node, GPU): nothing is asked of the agent.
    Conflict {
        /// The owner's name.
        owner: &'a str,
        /// What to tell people.
        message: &'a str,
    },
    /// The planner ran and the executor carried out its step.
    Planned {
        /// The plan.
        plan: &'a Plan,
        /// What came of its step.
        outcome: &'a Outcome,
    },
}

/// One condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True or False.
    pub status: bool,
    /// The reason, one of [`reason`].
    pub reason: &'static str,
    /// The sentence for people.
    pub message: String,
}

fn verdict(status: bool, reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict {
        status,
        reason,
        message: message.into(),
    }
}

struct Builder<'a> {
    prev: &'a [Condition],
    generation: i64,
    now: String,
    out: Vec<Condition>,
}

impl Builder<'_> {
    fn set(&mut self, type_: &str, v: Verdict) {
        let status = if v.status { "True" } else { "False" };
        let prev = self.prev.iter().find(|c| c.type_ == type_);
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        self.out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: v.reason.into(),
            message: v.message,
            last_transition_time,
            observed_generation: Some(self.generation),
        });
    }

    /// Sets a condition whose `lastTransitionTime` is now even when its status stays: a
    /// failure that happened again.
    fn set_fresh(&mut self, type_: &str, v: Verdict) {
        self.set(type_, v);
        if let Some(c) = self.out.last_mut() {
            c.last_transition_time = self.now.clone();
        }
    }

    /// Keeps the earlier condition as it is; Unknown when there is none.
    fn carry(&mut self, type_: &str) {
        match self.prev.iter().find(|c| c.type_ == type_) {
            Some(c) => self.out.push(c.clone()),
            None => self.out.push(Condition {
                type_: type_.into(),
                status: "Unknown".into(),
                reason: reason::AGENT_SILENT.into(),
                message: "the agent has not reported".into(),
                last_transition_time: self.now.clone(),
                observed_generation: Some(self.generation),
            }),
        }
    }
}

/// Derives the operator's status fields.
pub fn derive(
    spec: &GpuModelSpec,
    generation: i64,
    observed: &GpuModelStatus,
    situation: Situation<'_>,
    now: Timestamp,
) -> OperatorStatus {
    let mut b = Builder {
        prev: &observed.conditions,
        generation,
        now: now.to_string(),
        out: Vec::with_capacity(4),
    };
    let (plan, outcome) = match situation {
        Situation::Planned { plan, outcome }
            if !matches!(plan.step, Step::Wait(Wait::AgentSilent { .. })) =>
        {
            (plan, outcome)
        }
        Situation::Conflict { owner, message } => {
            let mut op = unheard(&mut b, observed, reason::CONFLICT, message);
            op.phase = Phase::Failed;
            op.conflict_with = Some(owner.to_string());
            return op;
        }
        Situation::Unheard { reason, message } => {
            return unheard(&mut b, observed, reason, message);
        }
        Situation::Planned { .. } => {
            return unheard(
                &mut b,
                observed,
                reason::AGENT_SILENT,
                "the agent has not reported recently",
            );
        }
    };

    let f = Facts::new(spec, observed, plan, outcome);
    let ready_v = ready(&f, observed.unknown_model.as_ref());
    let is_ready = ready_v.status;
    let unknown_model = unknown_model_after(&f, generation, now, observed);
    if matches!(outcome, Outcome::UnknownModel(_)) {
        b.set_fresh(READY, ready_v);
    } else {
        b.set(READY, ready_v);
    }
    let switching_v = switching(&f, observed.switch_summary.as_deref());
    let is_switching = switching_v.status;
    let switch_summary = (switching_v.reason == reason::DONE).then(|| switching_v.message.clone());
    b.set(SWITCHING, switching_v);
    b.set(ZOMBIE_MEMORY, zombie_memory(&f));
    let ladder = ladder_after(&f, generation, now);
    b.set(DEGRADED, degraded(ladder.degraded.as_ref()));
    OperatorStatus {
        phase: phase(&f, is_ready, is_switching),
        observed_generation: Some(generation),
        conditions: b.out,
        ladder: Some(ladder).filter(|l| *l != LadderStatus::default()),
        unknown_model,
        switch_summary,
        conflict_with: None,
    }
}

/// Ready and Switching say why the agent was not heard; ZombieMemory and Degraded, and the
/// ladder's memory, carry over.
fn unheard(
    b: &mut Builder<'_>,
    observed: &GpuModelStatus,
    reason: &'static str,
    message: &str,
) -> OperatorStatus {
    b.set(READY, verdict(false, reason, message));
    b.set(SWITCHING, verdict(false, reason, message));
    b.carry(ZOMBIE_MEMORY);
    b.carry(DEGRADED);
    OperatorStatus {
        phase: Phase::Pending,
        observed_generation: observed.observed_generation,
        conditions: std::mem::take(&mut b.out),
        ladder: observed.ladder.clone(),
        unknown_model: None,
        switch_summary: None,
        conflict_with: None,
    }
}

/// What the conditions of a planned reconcile rest on.
struct Facts<'a> {
    spec: &'a GpuModelSpec,
    plan: &'a Plan,
    outcome: &'a Outcome,
    /// "GPU 0 of node n".
    gpu: String,
    /// The ghost the agent measured.
    ghost_mib: u64,
    desired: Option<&'a str>,
    /// Unloaded for idleness: the wanted model loads again on the next request that names it.
    parked: bool,
    in_sync: bool,
    degraded: bool,
    /// The agent does not know the desired model.
    unknown: bool,
    busy: bool,
    persisting: bool,
    /// "model m" or "no model".
    want: String,
    /// "model m" or "no model".
    have: String,
}

impl<'a> Facts<'a> {
    fn new(
        spec: &'a GpuModelSpec,
        observed: &'a GpuModelStatus,
        plan: &'a Plan,
        outcome: &'a Outcome,
    ) -> Self {
        let desired = spec.model.as_deref();
        let done = matches!(outcome, Outcome::Done(_));
        let active = match &plan.step {
            Step::Unload { .. } | Step::IdleUnload { .. } if done => None,
            Step::Load { model } if done => Some(model.as_str()),
            _ => observed.active_model.as_deref(),
        };
        let parked = matches!(plan.step, Step::Parked { .. })
            || (matches!(plan.step, Step::IdleUnload { .. }) && done);
        let model = |m: Option<&str>| m.map_or("no model".to_string(), |m| format!("model {m}"));
        Self {
            spec,
            plan,
            outcome,
            gpu: format!("GPU {} of node {}", spec.gpu, spec.node_name),
            ghost_mib: observed.device.as_ref().map_or(0, |d| d.ghost_mib),
            desired,
            parked,
            in_sync: active == desired || parked,
            degraded: plan.degraded(),
            unknown: matches!(plan.step, Step::Wait(Wait::Failed))
                || matches!(outcome, Outcome::UnknownModel(_)),
            busy: matches!(plan.step, Step::Wait(Wait::AgentBusy))
                || matches!(outcome, Outcome::Busy(_)),
            persisting: matches!(plan.zombie, Zombie::Persisting { .. }),
            want: model(desired),
            have: model(active),
        }
    }

    /// The agent's words when its call failed.
    fn failed(&self) -> Option<&'a str> {
        match self.outcome {
            Outcome::UnknownModel(m) | Outcome::Failed(m) | Outcome::NoRoom(m) => Some(m),
            _ => None,
        }
    }
}

/// Ready: the desired model serves, with no zombie memory and nothing pending.
fn ready(f: &Facts<'_>, refused: Option<&UnknownModelStatus>) -> Verdict {
    let (gpu, want) = (&f.gpu, &f.want);
    let failed = f.failed();
    let status =
        !f.degraded && !f.unknown && failed.is_none() && f.in_sync && !f.persisting && !f.busy;
    let (r, m) = if f.degraded {
        (
            reason::ZOMBIE_MEMORY,
            format!("{gpu} is Degraded: zombie memory persists"),
        )
    } else if f.unknown {
        // Still the same failure while the retry waits: the agent's words.
        let waiting = matches!(f.plan.step, Step::Wait(Wait::Failed));
        let m = failed
            .or(refused.filter(|_| waiting).map(|u| u.message.as_str()))
            .map_or_else(|| format!("the agent does not know {want}"), str::to_string);
        (reason::UNKNOWN_MODEL, m)
    } else if let Some(e) = failed {
        let r = if matches!(f.outcome, Outcome::NoRoom(_)) {
            reason::INSUFFICIENT_MEMORY
        } else {
            reason::STEP_FAILED
        };
        (r, format!("{} failed: {e}", f.plan.step.name()))
    } else if !f.in_sync {
        (
            reason::SWITCHING,
            format!("{gpu} holds {}; {want} is wanted", f.have),
        )
    } else if f.persisting {
        (
            reason::ZOMBIE_MEMORY,
            format!("{gpu} serves {want}, but zombie memory persists"),
        )
    } else if f.busy {
        (
            reason::AGENT_BUSY,
            format!("{gpu} serves {want}; the agent is busy"),
        )
    } else if let (true, Some(m)) = (f.parked, f.desired) {
        (
            reason::IDLE_UNLOADED,
            format!(
                "{m} was unloaded from {gpu} after serving nothing for a while; the next inference request that names it loads it again"
            ),
        )
    } else if let Some(m) = f.desired {
        (reason::MODEL_ACTIVE, format!("{m} is active on {gpu}"))
    } else {
        (reason::NO_MODEL, format!("{gpu} holds no model, as wanted"))
    };
    verdict(status, r, m)
}

/// The load the agent refused, kept while the planner waits to try it again: recorded when a
/// load is refused, kept while the planner waits on it, dropped otherwise.
fn unknown_model_after(
    f: &Facts<'_>,
    generation: i64,
    now: Timestamp,
    observed: &GpuModelStatus,
) -> Option<UnknownModelStatus> {
    match (&f.plan.step, f.outcome) {
        (Step::Load { model }, Outcome::UnknownModel(message)) => Some(UnknownModelStatus {
            model: model.clone(),
            generation,
            at: now.to_string(),
            message: message.clone(),
        }),
        (Step::Wait(Wait::Failed), _) => observed.unknown_model.clone(),
        _ => None,
    }
}

/// Switching: a switch is under way or pending; or, once over, what the last one did.
/// `summary` is the last finished switch's words, as the status keeps them.
fn switching(f: &Facts<'_>, summary: Option<&str>) -> Verdict {
    // An idle unload about to run is a switch too, though the model is still wanted.
    let idle_unloading = matches!(
        (&f.plan.step, f.outcome),
        (Step::IdleUnload { .. }, Outcome::NoCall)
    );
    let status = f.busy || idle_unloading || (!f.in_sync && !f.degraded && !f.unknown);
    let want = &f.want;
    if f.busy {
        let m = match f.outcome {
            Outcome::Done(m) | Outcome::Busy(m) => m.clone(),
            _ => "the agent is busy with another operation".into(),
        };
        return verdict(status, reason::AGENT_BUSY, m);
    }
    if !status {
        return match (&f.plan.step, f.outcome, summary) {
            (
                Step::Load { .. } | Step::Unload { .. } | Step::IdleUnload { .. },
                Outcome::Done(s),
                _,
            ) => verdict(false, reason::DONE, s.clone()),
            // The last switch's words stay until the next one.
            (_, _, Some(s)) if f.in_sync => verdict(false, reason::DONE, s),
            _ => verdict(false, reason::IDLE, "no switch under way"),
        };
    }
    let (r, m) = match (&f.plan.step, f.outcome) {
        (Step::Unload { model }, Outcome::Done(s)) => (
            reason::UNLOADING,
            format!("{s}; next: {want}, once memory is back (was {model})"),
        ),
        (Step::Unload { model }, _) => (reason::UNLOADING, format!("unloading {model}")),
        (Step::IdleUnload { model, idle_s }, _) => (
            reason::UNLOADING,
            format!("unloading {model}: it served nothing for {idle_s} s"),
        ),
        (Step::Load { model }, _) => (reason::LOADING, format!("loading {model}")),
        (Step::Wait(Wait::MemoryNotBack), _) => (
            reason::WAITING_FOR_MEMORY,
            format!("{want} loads once the ghost memory is back under the threshold"),
        ),
        _ => (
            reason::BLOCKED,
            format!(
                "{want} is wanted; zombie memory on {} is dealt with first",
                f.gpu
            ),
        ),
    };
    verdict(true, r, m)
}

/// ZombieMemory: the ghost has been over the threshold for the persist time.
fn zombie_memory(f: &Facts<'_>) -> Verdict {
    let threshold = f.spec.zombie.threshold_mib;
    match &f.plan.zombie {
        Zombie::Clear => verdict(
            false,
            reason::BELOW_THRESHOLD,
            format!(
                "ghost memory {} MiB, threshold {threshold} MiB",
                f.ghost_mib
            ),
        ),
        Zombie::Suspected { ghost_mib, .. } => verdict(
            false,
            reason::SUSPECTED,
            format!(
                "ghost memory {ghost_mib} MiB is over the {threshold} MiB threshold, not yet for {} s",
                f.spec.zombie.persist_seconds
            ),
        ),
        Zombie::Persisting { ghost_mib, since } => {
            let (r, what) = match (&f.plan.step, f.outcome) {
                (Step::Free, Outcome::Done(s)) => (reason::FREEING, s.clone()),
                (Step::Free, _) => (reason::FREEING, "freeing".into()),
                (Step::Reset, Outcome::Done(s)) => (reason::RESETTING, s.clone()),
                (Step::Reset, _) => (reason::RESETTING, "resetting".into()),
                (Step::Wait(Wait::Cooldown { next, until }), _) => (
                    reason::COOLING_DOWN,
                    format!(
                        "{} after the cooldown, at {until}",
                        match next {
                            Next::Free => "free",
                            Next::Reset => "reset",
                            Next::Judge => "judge",
                        }
                    ),
                ),
                _ if f.degraded => (reason::ZOMBIE_MEMORY, "no more automatic action".into()),
                _ => (reason::ZOMBIE_MEMORY, "unloading first".into()),
            };
            verdict(
                true,
                r,
                format!(
                    "ghost memory {ghost_mib} MiB over the {threshold} MiB threshold since {since}: {what}"
                ),
            )
        }
    }
}

/// The summary: Degraded, Failed, Ready, Switching, Remediating or Pending, the first that
/// holds.
fn phase(f: &Facts<'_>, ready: bool, switching: bool) -> Phase {
    let load_failed = matches!(
        (&f.plan.step, f.outcome),
        (Step::Load { .. }, Outcome::Failed(_) | Outcome::NoRoom(_))
    );
    if f.degraded {
        Phase::Degraded
    } else if f.unknown || load_failed {
        Phase::Failed
    } else if ready {
        Phase::Ready
    } else if switching {
        Phase::Switching
    } else if f.persisting {
        Phase::Remediating
    } else {
        Phase::Pending
    }
}

/// The ladder's memory after this reconcile: giving up is recorded (since when carried over
/// from an earlier generation's, as a condition's `lastTransitionTime` is), a hold stays as it
/// is, and anything else lifts it.
fn ladder_after(f: &Facts<'_>, generation: i64, now: Timestamp) -> LadderStatus {
    let mut l = f.plan.ladder.clone();
    match &f.plan.step {
        Step::MarkDegraded(why) => {
            let (reason, message) = degraded_words(why, f.spec);
            let since = l
                .degraded
                .as_ref()
                .map_or_else(|| now.to_string(), |d| d.since.clone());
            l.degraded = Some(DegradedStatus {
                generation,
                reason,
                message,
                since,
            });
        }
        Step::Wait(Wait::Degraded) => {}
        _ => {
            if l.degraded.take().is_some() {
                l.lifted_at = Some(now.to_string());
            }
        }
    }
    l
}

/// Degraded: what the ladder's memory says, True while it holds that the ladder gave up.
fn degraded(held: Option<&DegradedStatus>) -> Verdict {
    match held {
        Some(d) => verdict(true, d.reason.as_str(), d.message.clone()),
        None => verdict(
            false,
            reason::AS_EXPECTED,
            "automatic remediation has not given up",
        ),
    }
}

fn degraded_words(why: &DegradedWhy, spec: &GpuModelSpec) -> (DegradedReason, String) {
    let tail = "no more automatic action until the ghost clears or the spec changes";
    match why {
        DegradedWhy::ResetDidNotClear => (
            DegradedReason::ResetDidNotClear,
            format!("zombie memory persists after a free and a reset; {tail}"),
        ),
        DegradedWhy::ResetBudgetSpent { resets, max } => (
            DegradedReason::ResetBudgetSpent,
            format!(
                "zombie memory persists after a free, and {resets} of {max} resets this hour are spent; {tail}"
            ),
        ),
        DegradedWhy::NoResetAllowed => (
            DegradedReason::NoResetAllowed,
            format!(
                "zombie memory persists after a free, and the policy allows no reset (resetAfterFree {}, maxResetsPerHour {}); {tail}",
                spec.zombie.reset_after_free, spec.zombie.max_resets_per_hour
            ),
        ),
    }
}
