//! Vocabulary shared by the GpuModel status and the agent's HTTP contract.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What started a model switch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchTrigger {
    /// The operator, reconciling a GpuModel's `spec.model`.
    Spec,
    /// A direct call of the agent's switch or unload route.
    Api,
    /// An inference call that named a model that was not active.
    Auto,
    /// The test-load cycle over every catalog model.
    TestLoad,
    /// The idle timeout: the model served nothing for too long.
    Idle,
    /// A reset reloading the model that was active before it.
    Reset,
    /// The worker exited on its own (it crashed or was killed from outside): the model is
    /// unloaded, and the record's error says how the process ended.
    Crash,
}

impl SwitchTrigger {
    /// Every trigger, for metrics that should show zeros rather than gaps.
    pub const ALL: [SwitchTrigger; 7] = [
        Self::Spec,
        Self::Api,
        Self::Auto,
        Self::TestLoad,
        Self::Idle,
        Self::Reset,
        Self::Crash,
    ];

    /// The wire name (`test-load`, `auto`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spec => "spec",
            Self::Api => "api",
            Self::Auto => "auto",
            Self::TestLoad => "test-load",
            Self::Idle => "idle",
            Self::Reset => "reset",
            Self::Crash => "crash",
        }
    }
}

/// Where a catalog model stands on a device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelState {
    /// A worker holds it now; its figures are live.
    Loaded,
    /// It was loaded before; its figures are the last known.
    Unloaded,
    /// It has never been loaded on this device.
    NeverLoaded,
}

/// What holds a piece of ghost memory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum GhostSourceKind {
    /// A worker of this agent whose model should be gone (an unload that did not finish).
    ZombieWorker,
    /// A worker started by an earlier run of this agent.
    OrphanWorker,
    /// A process that holds device memory and is no worker of this agent.
    ForeignProcess,
    /// Memory a live worker's allocator keeps reserved but does not use.
    AllocatorCache,
    /// Memory in a live worker beyond what its model measured at load.
    WorkerGrowth,
    /// Memory that no process accounts for.
    Unattributed,
}

impl GhostSourceKind {
    /// Every kind, for metrics that should show zeros rather than gaps.
    pub const ALL: [GhostSourceKind; 6] = [
        Self::ZombieWorker,
        Self::OrphanWorker,
        Self::ForeignProcess,
        Self::AllocatorCache,
        Self::WorkerGrowth,
        Self::Unattributed,
    ];

    /// The wire name (`zombie-worker`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZombieWorker => "zombie-worker",
            Self::OrphanWorker => "orphan-worker",
            Self::ForeignProcess => "foreign-process",
            Self::AllocatorCache => "allocator-cache",
            Self::WorkerGrowth => "worker-growth",
            Self::Unattributed => "unattributed",
        }
    }
}
