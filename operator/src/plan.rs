//! The planner's answer and what came of it: the types the planner produces, the executor
//! carries out and the conditions describe. They depend on nothing else in the crate, so that
//! the planner (`planner`) and the status it leads to (`conditions`) stay independent.

use std::time::Duration;

use jiff::Timestamp;
use vramkeeper_crds::LadderStatus;

/// The zombie-memory assessment of one observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Zombie {
    /// Ghost memory at or under the threshold.
    Clear,
    /// Ghost memory over the threshold, not yet for the persist time.
    Suspected {
        /// The ghost.
        ghost_mib: u64,
        /// Since when it has been over the threshold, as the agent reports it.
        since: Option<Timestamp>,
        /// When it becomes zombie memory if it stays.
        until: Option<Timestamp>,
    },
    /// Ghost memory over the threshold for the persist time: zombie memory.
    Persisting {
        /// The ghost.
        ghost_mib: u64,
        /// Since when it has been over the threshold.
        since: Timestamp,
    },
}

/// Why the ladder gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DegradedWhy {
    /// The policy allows no reset (`resetAfterFree: false` or `maxResetsPerHour: 0`), and a
    /// free did not clear the ghost.
    NoResetAllowed,
    /// The hour's reset budget is spent.
    ResetBudgetSpent {
        /// Resets by the operator in the last hour.
        resets: u32,
        /// The budget.
        max: u32,
    },
    /// A free and then a reset did not clear the ghost.
    ResetDidNotClear,
}

/// Why the planner waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No report from the agent, or only an old one.
    AgentSilent {
        /// When it last reported.
        reported_at: Option<Timestamp>,
    },
    /// The agent is in the middle of an operation.
    AgentBusy,
    /// Ghost memory over the threshold, not yet for the persist time, and a model should be
    /// loaded: the memory has not come back.
    MemoryNotBack,
    /// Ghost memory over the threshold, not yet for the persist time; the GPU serves what it
    /// should meanwhile.
    ZombieSuspected,
    /// The last free or reset was too recent.
    Cooldown {
        /// What runs (or is judged) next.
        next: Next,
        /// When the cooldown ends.
        until: Timestamp,
    },
    /// Degraded at this generation: no automatic action until the ghost clears or the spec
    /// changes.
    Degraded,
    /// The agent said the model does not exist; retried when the spec changes, when the
    /// agent's catalog lists the model, or after the planner's `RETRY_UNKNOWN_MAX`.
    Failed,
}

/// What the ladder does once a cooldown ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A free.
    Free,
    /// A reset.
    Reset,
    /// Judge: cleared, or Degraded.
    Judge,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Unload the active model.
    Unload {
        /// The model active now.
        model: String,
    },
    /// Load the desired model (nothing is active).
    Load {
        /// The desired model.
        model: String,
    },
    /// Unload the desired model: it served nothing for `idleUnloadSeconds`.
    IdleUnload {
        /// The model active now, which is the desired one.
        model: String,
        /// Whole seconds since it last served.
        idle_s: u64,
    },
    /// The desired model was unloaded for idleness and stays so until an inference request
    /// names it (the agent then loads it on demand).
    Parked {
        /// The desired model.
        model: String,
    },
    /// Free zombie memory.
    Free,
    /// Reset the device.
    Reset,
    /// Give up on zombie memory: Degraded, with a Warning event.
    MarkDegraded(DegradedWhy),
    /// Do nothing now.
    Wait(Wait),
    /// The GPU serves what it should.
    InSync,
}

impl Step {
    /// A short stable name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unload { .. } => "unload",
            Self::Load { .. } => "load",
            Self::IdleUnload { .. } => "idle_unload",
            Self::Parked { .. } => "parked",
            Self::Free => "free",
            Self::Reset => "reset",
            Self::MarkDegraded(_) => "mark_degraded",
            Self::Wait(_) => "wait",
            Self::InSync => "in_sync",
        }
    }

    /// Whether the step calls the agent to act.
    pub fn acts(&self) -> bool {
        matches!(
            self,
            Self::Unload { .. }
                | Self::Load { .. }
                | Self::IdleUnload { .. }
                | Self::Free
                | Self::Reset
        )
    }
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What to do.
    pub step: Step,
    /// The zombie-memory assessment it rests on.
    pub zombie: Zombie,
    /// When to look again if nothing else triggers a reconcile.
    pub recheck: Duration,
    /// The ladder's memory after this observation (before the step's own free or reset is
    /// recorded into it).
    pub ladder: LadderStatus,
}

impl Plan {
    /// A plan with an empty ladder (the planner fills it in).
    pub fn new(step: Step, zombie: Zombie, recheck: Duration) -> Self {
        Self {
            step,
            zombie,
            recheck,
            ladder: LadderStatus::default(),
        }
    }

    /// Whether this plan leaves the object Degraded.
    pub fn degraded(&self) -> bool {
        matches!(
            self.step,
            Step::MarkDegraded(_) | Step::Wait(Wait::Degraded)
        )
    }
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
    /// The agent has no room for the model, even after evicting what it may (409
    /// `insufficient_memory`); its words carry the figures.
    NoRoom(String),
    /// The agent call failed otherwise.
    Failed(String),
}
