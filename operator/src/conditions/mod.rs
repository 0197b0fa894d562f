//! The operator's part of the status: `phase`, `observedGeneration` and the four conditions,
//! derived (purely) from the plan, what came of it, and the conditions before.
//!
//! When the agent cannot be heard, ZombieMemory and Degraded carry over unchanged: the
//! Degraded hold must survive an agent restart.

use jiff::Timestamp;
use vramkeeper_crds::{Condition, GpuModelSpec, GpuModelStatus, LadderStatus, Phase};

pub use vramkeeper_crds::conditions::{DEGRADED, READY, SWITCHING, TERMINATING, ZOMBIE_MEMORY};

use crate::planner::{DegradedWhy, Next, Plan, Step, Wait, Zombie};

/// Condition reasons (CamelCase words).
pub mod reason {
    /// Ready: the desired model is active.
    pub const MODEL_ACTIVE: &str = "ModelActive";
    /// Ready: no model is wanted and none is loaded.
    pub const NO_MODEL: &str = "NoModelWanted";
    /// Ready: the desired model was unloaded for idleness and loads on the next request.
    pub const IDLE_UNLOADED: &str = "IdleUnloaded";
    /// No agent Pod on the node.
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    /// The agent Pod did not answer.
    pub const AGENT_UNREACHABLE: &str = "AgentUnreachable";
    /// The agent manages no GPU of that index.
    pub const UNKNOWN_GPU: &str = "UnknownGpu";
    /// The agent's report is missing or old.
    pub const AGENT_SILENT: &str = "AgentSilent";
    /// The agent is busy with another operation.
    pub const AGENT_BUSY: &str = "AgentBusy";
    /// The agent does not know the model.
    pub const UNKNOWN_MODEL: &str = "UnknownModel";
    /// An agent call failed.
    pub const STEP_FAILED: &str = "StepFailed";
    /// A switch is under way or pending.
    pub const SWITCHING: &str = "Switching";
    /// Unloading the active model.
    pub const UNLOADING: &str = "Unloading";
    /// Loading the desired model.
    pub const LOADING: &str = "Loading";
    /// A step finished.
    pub const DONE: &str = "Done";
    /// Waiting for memory to come back before loading.
    pub const WAITING_FOR_MEMORY: &str = "WaitingForMemory";
    /// A switch is pending behind zombie memory.
    pub const BLOCKED: &str = "BlockedByZombieMemory";
    /// Nothing to do.
    pub const IDLE: &str = "Idle";
    /// Ghost under the threshold.
    pub const BELOW_THRESHOLD: &str = "BelowThreshold";
    /// Ghost over the threshold, not yet for the persist time.
    pub const SUSPECTED: &str = "OverThreshold";
    /// Zombie memory, waiting out a cooldown.
    pub const COOLING_DOWN: &str = "CoolingDown";
    /// Zombie memory, freeing.
    pub const FREEING: &str = "Freeing";
    /// Zombie memory, resetting.
    pub const RESETTING: &str = "Resetting";
    /// Zombie memory the ladder could not clear.
    pub const ZOMBIE_MEMORY: &str = "ZombieMemory";
    /// Degraded: free and reset did not clear it.
    pub const RESET_DID_NOT_CLEAR: &str = "ResetDidNotClear";
    /// Degraded: the hour's reset budget is spent.
    pub const RESET_BUDGET_SPENT: &str = "ResetBudgetSpent";
    /// Degraded: the policy allows no reset and a free did not clear it.
    pub const NO_RESET_ALLOWED: &str = "NoResetAllowed";
    /// Not degraded.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Another, older GpuModel owns this (node, GPU).
    pub const CONFLICT: &str = vramkeeper_crds::ownership::CONFLICT;
    /// Ready while being deleted: the model is being unloaded.
    pub const TERMINATING: &str = "Terminating";
    /// Terminating: the agent could not be reached or refused the unload.
    pub const UNLOAD_BLOCKED: &str = "UnloadBlocked";
}

/// What came of the step the executor ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step did not call the agent.
    NoCall,
    /// The agent did it; a sentence saying what.
    Done(String),
    /// The agent was busy (409).
    Busy(String),
    /// The agent does not know the model (404).
    UnknownModel(String),
    /// The agent call failed otherwise.
    Failed(String),
}

/// Where the reconcile got to.
#[derive(Clone, Copy, Debug)]
pub enum Situation<'a> {
    /// The agent could not be heard: no Pod, no answer, or no such GPU.
    Unheard {
        /// A condition reason (`AgentNotFound`, `AgentUnreachable`, `UnknownGpu`).
        reason: &'a str,
        /// What went wrong.
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

/// The fields the operator owns.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorStatus {
    /// Summary.
    pub phase: Phase,
    /// The generation acted on.
    pub observed_generation: Option<i64>,
    /// Ready, Switching, ZombieMemory, Degraded (and Terminating while deletion is blocked).
    pub conditions: Vec<Condition>,
    /// The zombie ladder's memory; absent when there is nothing to remember.
    pub ladder: Option<LadderStatus>,
}

impl OperatorStatus {
    /// Whether `status` already holds exactly these fields (then nothing is written).
    pub fn is_in(&self, status: Option<&GpuModelStatus>) -> bool {
        status.is_some_and(|s| {
            s.phase == Some(self.phase)
                && s.observed_generation == self.observed_generation
                && s.conditions == self.conditions
                && s.ladder == self.ladder
        })
    }
}

struct Builder<'a> {
    prev: &'a [Condition],
    generation: i64,
    now: String,
    out: Vec<Condition>,
}

impl Builder<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let prev = self.prev.iter().find(|c| c.type_ == type_);
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => self.now.clone(),
        };
        self.out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: Some(self.generation),
        });
    }

    /// Sets a condition whose `lastTransitionTime` is now even when its status stays: a
    /// failure that happened again (the planner times its retries from it).
    fn set_fresh(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        self.set(type_, status, reason, message);
        if let Some(c) = self.out.last_mut() {
            c.last_transition_time = self.now.clone();
        }
    }

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

/// Derives phase and conditions.
pub fn derive(
    spec: &GpuModelSpec,
    generation: i64,
    observed: &GpuModelStatus,
    situation: Situation<'_>,
    now: Timestamp,
) -> OperatorStatus {
    let prev = observed.conditions.as_slice();
    let mut b = Builder {
        prev,
        generation,
        now: now.to_string(),
        out: Vec::with_capacity(4),
    };
    let gpu = format!("GPU {} of node {}", spec.gpu, spec.node_name);
    let (plan, outcome) = match situation {
        Situation::Planned { plan, outcome }
            if !matches!(plan.step, Step::Wait(Wait::AgentSilent { .. })) =>
        {
            (plan, outcome)
        }
        other => {
            let (r, m) = match other {
                Situation::Unheard { reason, message } => (reason, message.to_string()),
                Situation::Planned { .. } => (
                    reason::AGENT_SILENT,
                    "the agent has not reported recently".to_string(),
                ),
            };
            b.set(READY, false, r, m.clone());
            b.set(SWITCHING, false, r, m);
            b.carry(ZOMBIE_MEMORY);
            b.carry(DEGRADED);
            return OperatorStatus {
                phase: if r == reason::CONFLICT {
                    Phase::Failed
                } else {
                    Phase::Pending
                },
                observed_generation: observed.observed_generation,
                conditions: b.out,
                ladder: observed.ladder.clone(),
            };
        }
    };

    let desired = spec.model.as_deref();
    let active = match (&plan.step, outcome) {
        (Step::Unload { .. } | Step::IdleUnload { .. }, Outcome::Done(_)) => None,
        (Step::Load { model }, Outcome::Done(_)) => Some(model.as_str()),
        _ => observed.active_model.as_deref(),
    };
    // Unloaded for idleness: the wanted model loads again on the next request that names it.
    let parked = matches!(plan.step, Step::Parked { .. })
        || matches!(
            (&plan.step, outcome),
            (Step::IdleUnload { .. }, Outcome::Done(_))
        );
    let in_sync = active == desired || parked;
    let degraded = plan.degraded();
    let unknown = matches!(plan.step, Step::Wait(Wait::Failed))
        || matches!(outcome, Outcome::UnknownModel(_));
    let busy =
        matches!(plan.step, Step::Wait(Wait::AgentBusy)) || matches!(outcome, Outcome::Busy(_));
    let persisting = matches!(plan.zombie, Zombie::Persisting { .. });
    let failed_msg = match outcome {
        Outcome::UnknownModel(m) | Outcome::Failed(m) => Some(m.clone()),
        _ => None,
    };
    let done_msg = match outcome {
        Outcome::Done(m) | Outcome::Busy(m) => Some(m.clone()),
        _ => None,
    };
    let want = desired.map_or("no model".to_string(), |m| format!("model {m}"));
    let have = active.map_or("no model".to_string(), |m| format!("model {m}"));

    // Ready.
    let ready = !degraded && !unknown && failed_msg.is_none() && in_sync && !persisting && !busy;
    let (r, m) = if degraded {
        (
            reason::ZOMBIE_MEMORY,
            format!("{gpu} is Degraded: zombie memory persists"),
        )
    } else if unknown {
        (
            reason::UNKNOWN_MODEL,
            failed_msg
                .clone()
                .unwrap_or_else(|| format!("the agent does not know {want}")),
        )
    } else if let Some(e) = &failed_msg {
        (
            reason::STEP_FAILED,
            format!("{} failed: {e}", plan.step.name()),
        )
    } else if !in_sync {
        (
            reason::SWITCHING,
            format!("{gpu} holds {have}; {want} is wanted"),
        )
    } else if persisting {
        (
            reason::ZOMBIE_MEMORY,
            format!("{gpu} serves {want}, but zombie memory persists"),
        )
    } else if busy {
        (
            reason::AGENT_BUSY,
            format!("{gpu} serves {want}; the agent is busy"),
        )
    } else if let (true, Some(m)) = (parked, desired) {
        (
            reason::IDLE_UNLOADED,
            format!(
                "{m} was unloaded from {gpu} after serving nothing for a while; the next inference request that names it loads it again"
            ),
        )
    } else if let Some(m) = desired {
        (reason::MODEL_ACTIVE, format!("{m} is active on {gpu}"))
    } else {
        (reason::NO_MODEL, format!("{gpu} holds no model, as wanted"))
    };
    match prev
        .iter()
        .find(|c| c.type_ == READY && c.reason == reason::UNKNOWN_MODEL)
    {
        // Still the same failure: keep its words (the agent's message).
        Some(c) if matches!(plan.step, Step::Wait(Wait::Failed)) => {
            let mut c = c.clone();
            c.observed_generation = Some(generation);
            b.out.push(c);
        }
        _ if matches!(outcome, Outcome::UnknownModel(_)) => b.set_fresh(READY, ready, r, m),
        _ => b.set(READY, ready, r, m),
    }

    // Switching. An idle unload about to run is one too, though the model is still wanted.
    let idle_unloading = matches!(
        (&plan.step, outcome),
        (Step::IdleUnload { .. }, Outcome::NoCall)
    );
    let switching = busy || idle_unloading || (!in_sync && !degraded && !unknown);
    let (r, m) = if busy {
        (
            reason::AGENT_BUSY,
            done_msg
                .clone()
                .unwrap_or_else(|| "the agent is busy with another operation".into()),
        )
    } else if !switching {
        let last_done = prev
            .iter()
            .find(|c| c.type_ == SWITCHING && c.status == "False" && c.reason == reason::DONE);
        match (&plan.step, outcome, last_done) {
            (
                Step::Load { .. } | Step::Unload { .. } | Step::IdleUnload { .. },
                Outcome::Done(s),
                _,
            ) => (reason::DONE, s.clone()),
            // The last switch's words stay until the next one.
            (_, _, Some(c)) if in_sync => (reason::DONE, c.message.clone()),
            _ => (reason::IDLE, "no switch under way".to_string()),
        }
    } else {
        match (&plan.step, outcome) {
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
                format!("{want} is wanted; zombie memory on {gpu} is dealt with first"),
            ),
        }
    };
    b.set(SWITCHING, switching, r, m);

    // ZombieMemory.
    let threshold = spec.zombie.threshold_mib;
    match &plan.zombie {
        Zombie::Clear => {
            let ghost = observed.device.as_ref().map_or(0, |d| d.ghost_mib);
            b.set(
                ZOMBIE_MEMORY,
                false,
                reason::BELOW_THRESHOLD,
                format!("ghost memory {ghost} MiB, threshold {threshold} MiB"),
            );
        }
        Zombie::Suspected { ghost_mib, .. } => b.set(
            ZOMBIE_MEMORY,
            false,
            reason::SUSPECTED,
            format!(
                "ghost memory {ghost_mib} MiB is over the {threshold} MiB threshold, not yet for {} s",
                spec.zombie.persist_seconds
            ),
        ),
        Zombie::Persisting { ghost_mib, since } => {
            let (r, what) = match (&plan.step, outcome) {
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
                _ if degraded => (reason::ZOMBIE_MEMORY, "no more automatic action".into()),
                _ => (reason::ZOMBIE_MEMORY, "unloading first".into()),
            };
            b.set(
                ZOMBIE_MEMORY,
                true,
                r,
                format!(
                    "ghost memory {ghost_mib} MiB over the {threshold} MiB threshold since {since}: {what}"
                ),
            );
        }
    }

    // Degraded.
    match &plan.step {
        Step::MarkDegraded(why) => {
            let (r, m) = degraded_words(why, spec);
            b.set(DEGRADED, true, r, m);
        }
        Step::Wait(Wait::Degraded) => match prev.iter().find(|c| c.type_ == DEGRADED) {
            Some(c) => b.out.push(c.clone()),
            None => b.set(
                DEGRADED,
                true,
                reason::ZOMBIE_MEMORY,
                "zombie memory persists".into(),
            ),
        },
        _ => b.set(
            DEGRADED,
            false,
            reason::AS_EXPECTED,
            "automatic remediation has not given up".into(),
        ),
    }

    let phase = if degraded {
        Phase::Degraded
    } else if unknown
        || matches!(
            (&plan.step, outcome),
            (Step::Load { .. }, Outcome::Failed(_))
        )
    {
        Phase::Failed
    } else if ready {
        Phase::Ready
    } else if switching {
        Phase::Switching
    } else if persisting {
        Phase::Remediating
    } else {
        Phase::Pending
    };
    OperatorStatus {
        phase,
        observed_generation: Some(generation),
        conditions: b.out,
        ladder: Some(plan.ladder.clone()).filter(|l| *l != LadderStatus::default()),
    }
}

fn degraded_words(why: &DegradedWhy, spec: &GpuModelSpec) -> (&'static str, String) {
    let tail = "no more automatic action until the ghost clears or the spec changes";
    match why {
        DegradedWhy::ResetDidNotClear => (
            reason::RESET_DID_NOT_CLEAR,
            format!("zombie memory persists after a free and a reset; {tail}"),
        ),
        DegradedWhy::ResetBudgetSpent { resets, max } => (
            reason::RESET_BUDGET_SPENT,
            format!(
                "zombie memory persists after a free, and {resets} of {max} resets this hour are spent; {tail}"
            ),
        ),
        DegradedWhy::NoResetAllowed => (
            reason::NO_RESET_ALLOWED,
            format!(
                "zombie memory persists after a free, and the policy allows no reset (resetAfterFree {}, maxResetsPerHour {}); {tail}",
                spec.zombie.reset_after_free, spec.zombie.max_resets_per_hour
            ),
        ),
    }
}
