//! Condition reasons (CamelCase words).

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
/// The agent has no room for the model (the figures in the message).
pub const INSUFFICIENT_MEMORY: &str = "InsufficientMemory";
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
// Degraded's True reasons are `vramkeeper_crds::DegradedReason`, kept in `ladder.degraded`.
/// Not degraded.
pub const AS_EXPECTED: &str = "AsExpected";
/// Another, older GpuModel owns this (node, GPU).
pub const CONFLICT: &str = vramkeeper_crds::ownership::CONFLICT;
/// Ready while being deleted: the model is being unloaded.
pub const TERMINATING: &str = "Terminating";
/// Terminating: the agent could not be reached or refused the unload.
pub const UNLOAD_BLOCKED: &str = "UnloadBlocked";
