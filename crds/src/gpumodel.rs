//! The `GpuModel` custom resource: the model one GPU of one node should serve, and what the node
//! agent observed it actually serving.
// kube's `printcolumn(...)` repeats `type_ = ...` per column, which clippy misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{GhostSourceKind, ModelState, SwitchTrigger},
    conditions::Condition,
};

/// The model a GPU should serve and the zombie-memory policy that guards it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vramkeeper.dev",
    version = "v1alpha1",
    kind = "GpuModel",
    plural = "gpumodels",
    singular = "gpumodel",
    shortname = "gpm",
    category = "vramkeeper",
    status = "GpuModelStatus",
    derive = "PartialEq",
    cel,
    doc = "GpuModel declares which model one GPU of one node serves. The vramkeeper node agent \
           reports what the GPU really holds into status; the operator reconciles the two.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "GPU", type_ = "integer", json_path = ".spec.gpu"),
    printcolumn(
        name = "Desired",
        type_ = "string",
        json_path = ".spec.model",
        description = "The model this GPU should serve"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.activeModel",
        description = "The model this GPU serves now"
    ),
    printcolumn(
        name = "VRAM-MiB",
        type_ = "integer",
        json_path = ".status.device.usedMiB",
        description = "Device memory in use, MiB"
    ),
    printcolumn(
        name = "Ghost-MiB",
        type_ = "integer",
        json_path = ".status.device.ghostMiB",
        description = "Device memory no loaded model accounts for, MiB"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GpuModelSpec {
    /// Name of the node whose GPU this object describes. Immutable: create a new GpuModel to
    /// move a model to another node.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable"))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("nodeName must not be empty"))]
    pub node_name: String,

    /// Index of the GPU on that node, as NVML numbers them (0 for the CPU device). Immutable
    /// like `nodeName`: a GpuModel that moved GPUs would leave the old one's model loaded and
    /// unclaimed. Only one GpuModel owns a (node, GPU): the oldest; later ones show
    /// `Ready=False`, reason `Conflict`, and act on nothing.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("gpu is immutable"))]
    pub gpu: u32,

    /// Catalog name of the model the GPU should serve; absent means the GPU should hold none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')"
    ).message("model must be a DNS-1123-like name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    pub model: Option<String>,

    /// When memory that no loaded model accounts for is treated as zombie memory, and what is
    /// done about it.
    #[serde(default)]
    pub zombie: ZombiePolicy,

    /// Unload the model after it has served nothing for this many seconds (absent: never). The
    /// operator does not load it again by itself afterwards: the next inference request that
    /// names it loads it (the agent switches on demand), and `Ready` says `IdleUnloaded`
    /// meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("idleUnloadSeconds must be positive"))]
    pub idle_unload_seconds: Option<u32>,
}

/// Default ghost threshold: 1.5 GiB.
pub const DEFAULT_THRESHOLD_MIB: u64 = 1536;
/// Default time the ghost must stay over the threshold before it counts as zombie memory.
pub const DEFAULT_PERSIST_SECONDS: u32 = 30;
/// Default time after a free before another free or a reset may run.
pub const DEFAULT_FREE_COOLDOWN_SECONDS: u32 = 60;
/// Default budget of automatic resets per hour.
pub const DEFAULT_MAX_RESETS_PER_HOUR: u32 = 2;

fn default_threshold_mib() -> u64 {
    DEFAULT_THRESHOLD_MIB
}
fn default_persist_seconds() -> u32 {
    DEFAULT_PERSIST_SECONDS
}
fn default_free_cooldown_seconds() -> u32 {
    DEFAULT_FREE_COOLDOWN_SECONDS
}
fn default_true() -> bool {
    true
}
fn default_max_resets_per_hour() -> u32 {
    DEFAULT_MAX_RESETS_PER_HOUR
}

/// The zombie-memory policy: ghost over `thresholdMiB` for `persistSeconds` is zombie memory;
/// the remedy is a free, then (after `freeCooldownSeconds`) a reset, then Degraded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZombiePolicy {
    /// Ghost memory above this many MiB is suspicious.
    #[serde(rename = "thresholdMiB", default = "default_threshold_mib")]
    #[x_kube(validation = Rule::new("self > 0").message("thresholdMiB must be positive"))]
    pub threshold_mib: u64,

    /// Seconds the ghost must stay above the threshold before it is zombie memory.
    #[serde(default = "default_persist_seconds")]
    #[x_kube(validation = Rule::new("self > 0").message("persistSeconds must be positive"))]
    pub persist_seconds: u32,

    /// Seconds after a free before the next free or reset may run.
    #[serde(default = "default_free_cooldown_seconds")]
    #[x_kube(validation = Rule::new("self > 0").message("freeCooldownSeconds must be positive"))]
    pub free_cooldown_seconds: u32,

    /// Escalate to a reset when a free did not clear the zombie memory.
    #[serde(default = "default_true")]
    pub reset_after_free: bool,

    /// At most this many automatic resets in any hour; 0 disables automatic resets.
    #[serde(default = "default_max_resets_per_hour")]
    pub max_resets_per_hour: u32,

    /// Allow free and reset to kill processes that hold device memory and are no worker of this
    /// agent (stale servers, other tenants). Off by default: such processes are only reported.
    /// Takes effect only where the agent's own policy allows it too (`--kill-foreign-processes`;
    /// chart: `agent.killForeignProcesses`).
    #[serde(default)]
    pub kill_foreign_processes: bool,
}

impl Default for ZombiePolicy {
    fn default() -> Self {
        Self {
            threshold_mib: DEFAULT_THRESHOLD_MIB,
            persist_seconds: DEFAULT_PERSIST_SECONDS,
            free_cooldown_seconds: DEFAULT_FREE_COOLDOWN_SECONDS,
            reset_after_free: true,
            max_resets_per_hour: DEFAULT_MAX_RESETS_PER_HOUR,
            kill_foreign_processes: false,
        }
    }
}

/// Where a GpuModel stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing observed yet: the agent has not reported.
    #[default]
    Pending,
    /// A model switch is under way.
    Switching,
    /// The desired model is active and no zombie memory persists.
    Ready,
    /// Zombie memory persists and the ladder works on it: a free or a reset runs, or its
    /// cooldown is under way.
    Remediating,
    /// Zombie memory persists after free and reset; no more automatic action.
    Degraded,
    /// The desired model cannot be loaded, or another (older) GpuModel owns this GPU
    /// (`Ready` reason `Conflict`).
    Failed,
}

/// What the node agent and the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuModelStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary of where this GpuModel stands (set by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The model the GPU serves now, as the agent reports it; absent when none is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_model: Option<String>,

    /// Whether the agent is in the middle of a switch.
    #[serde(default)]
    pub switching: bool,

    /// Device memory as the agent measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceMemory>,

    /// One record per catalog model: loaded, unloaded with last-known figures, or never loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub models: Vec<ModelRecordStatus>,

    /// What holds the ghost memory, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghost_sources: Vec<GhostSourceStatus>,

    /// Since when (RFC 3339) the ghost has been over the threshold; absent when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zombie_since: Option<String>,

    /// The most recent model switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switch: Option<SwitchStatus>,

    /// Free and reset steps taken, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediations: Vec<RemediationStatus>,

    /// When the agent last wrote this status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,

    /// The zombie ladder's memory (set by the operator): the episode under way, the steps taken
    /// in it, the resets that count against `maxResetsPerHour`, and whether it gave up
    /// (`degraded`, which the `Degraded` condition shows). Kept here so that a restart of the
    /// operator or of the agent never resets a budget or lifts a hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ladder: Option<LadderStatus>,

    /// The load the agent last refused because it does not know the model (set by the
    /// operator): the operator waits before it tries again (see `unknownModel.at`). Absent
    /// when no such wait is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_model: Option<UnknownModelStatus>,

    /// What the operator's last unload or load did, in words, kept while the GPU serves what
    /// that switch left it serving (set by the operator); `Switching` shows it, reason `Done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_summary: Option<String>,

    /// The GpuModel that owns this one's (node, GPU), while another one does (set by the
    /// operator): this one acts on nothing, and deleting it unloads nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_with: Option<String>,

    /// Standard conditions: Ready, Switching, ZombieMemory, Degraded (and Terminating while a
    /// deletion cannot finish).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The zombie ladder's memory, owned by the operator.
///
/// An episode opens when the ghost has been over the threshold for `persistSeconds`, and ends
/// only once the ghost has stayed at or under the threshold for `persistSeconds` again
/// (hysteresis): a free that clears the ghost for one sample does not start a fresh ladder.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LadderStatus {
    /// When the episode under way began (RFC 3339); absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_since: Option<String>,
    /// Since when the ghost has been at or under the threshold within the episode (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_since: Option<String>,
    /// Frees and resets the operator ran in this episode.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// When the operator's last free finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_free: Option<String>,
    /// When the operator's last reset finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<String>,
    /// When each of the operator's resets of the last hour finished (RFC 3339): the budget
    /// `maxResetsPerHour` counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<String>,
    /// Where the ladder gave up (the `Degraded` condition says so): absent while it has not.
    /// The hold lasts while the ghost persists (or its episode is open) at `generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedStatus>,
    /// When the operator last lifted `degraded` (RFC 3339): frees and resets before it belong
    /// to the episode that was judged, and the ladder starts again after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<String>,
}

/// The zombie ladder gave up: no more automatic action until the ghost clears or the spec
/// changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DegradedStatus {
    /// The `metadata.generation` it gave up at: a spec change ends the hold.
    pub generation: i64,
    /// Why it gave up (the `Degraded` condition's reason).
    pub reason: DegradedReason,
    /// What the operator said (the `Degraded` condition's message).
    #[serde(default)]
    pub message: String,
    /// Since when it has been Degraded (RFC 3339), kept when it gives up again at a later
    /// generation without being lifted in between.
    pub since: String,
}

/// Why the zombie ladder gave up.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DegradedReason {
    /// A free and then a reset did not clear the ghost.
    ResetDidNotClear,
    /// A free did not clear the ghost, and the hour's reset budget is spent.
    ResetBudgetSpent,
    /// A free did not clear the ghost, and the policy allows no reset.
    NoResetAllowed,
}

impl DegradedReason {
    /// The `Degraded` condition's reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ResetDidNotClear => "ResetDidNotClear",
            Self::ResetBudgetSpent => "ResetBudgetSpent",
            Self::NoResetAllowed => "NoResetAllowed",
        }
    }
}

/// A load the agent refused because it does not know the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnknownModelStatus {
    /// The model the agent did not know.
    pub model: String,
    /// The `metadata.generation` the load was tried at: a spec change ends the wait.
    pub generation: i64,
    /// When the agent refused it (RFC 3339): the next try backs off from here.
    pub at: String,
    /// What the agent said.
    #[serde(default)]
    pub message: String,
}

/// Device memory of one GPU (or of the CPU device), in MiB.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceMemory {
    /// Product name of the device (e.g. "NVIDIA H100 80GB HBM3", or "cpu").
    pub name: String,
    /// Total device memory.
    #[serde(rename = "totalMiB")]
    pub total_mib: u64,
    /// Device memory in use.
    #[serde(rename = "usedMiB")]
    pub used_mib: u64,
    /// Memory in use when the agent started, before any model: the driver, the display, others.
    #[serde(rename = "baselineMiB")]
    pub baseline_mib: u64,
    /// used - baseline - what the loaded models should use.
    #[serde(rename = "ghostMiB")]
    pub ghost_mib: u64,
}

/// One catalog model's record on this device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecordStatus {
    /// Catalog name.
    pub name: String,
    /// Loaded, Unloaded (figures are the last known) or NeverLoaded.
    pub state: ModelState,
    /// Device memory the model uses: its footprint, measured right after its last load.
    #[serde(rename = "vramMiB", default, skip_serializing_if = "Option::is_none")]
    pub vram_mib: Option<u64>,
    /// Host memory its worker uses (live when loaded, last known otherwise).
    #[serde(rename = "ramMiB", default, skip_serializing_if = "Option::is_none")]
    pub ram_mib: Option<u64>,
    /// Milliseconds its last load took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<u64>,
    /// How many times it was loaded.
    #[serde(default)]
    pub loads: u64,
    /// How many times its worker exited on its own while loaded (crashed, or killed from
    /// outside); the switch history says how each ended.
    #[serde(default)]
    pub crashes: u64,
    /// When it was last loaded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loaded: Option<String>,
    /// When it was last unloaded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unloaded: Option<String>,
    /// While loaded: when it last answered an inference request, or when it was loaded if it
    /// has answered none (RFC 3339). `idleUnloadSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
}

/// One holder of ghost memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GhostSourceStatus {
    /// What kind of holder this is.
    pub kind: GhostSourceKind,
    /// How much it holds.
    #[serde(rename = "mib")]
    pub mib: u64,
    /// The process holding it, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// That process's name, or the model a worker served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A model switch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchStatus {
    /// The model unloaded, if one was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The model loaded; absent for a plain unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// What asked for it.
    pub trigger: SwitchTrigger,
    /// When it finished (RFC 3339).
    pub at: String,
    /// Milliseconds spent unloading the old model and verifying the release.
    pub unload_ms: u64,
    /// Milliseconds spent loading the new model until it answered.
    pub load_ms: u64,
    /// Device memory the new model uses.
    #[serde(rename = "vramMiB", default, skip_serializing_if = "Option::is_none")]
    pub vram_mib: Option<u64>,
    /// Host memory the new model's worker uses.
    #[serde(rename = "ramMiB", default, skip_serializing_if = "Option::is_none")]
    pub ram_mib: Option<u64>,
}

/// A free or reset step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStatus {
    /// `free` or `reset`.
    pub action: crate::api::RemediationAction,
    /// Who asked: `auto`, `api` or `operator`.
    pub trigger: crate::api::RemediationTrigger,
    /// When it finished (RFC 3339).
    pub at: String,
    /// Ghost memory before the step.
    #[serde(rename = "ghostBeforeMiB")]
    pub ghost_before_mib: u64,
    /// Ghost memory after the step.
    #[serde(rename = "ghostAfterMiB")]
    pub ghost_after_mib: u64,
    /// Processes the step killed.
    #[serde(default)]
    pub killed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Whole MiB for a status field: rounded; 0 for anything negative or not finite.
pub fn whole_mib(mb: f64) -> u64 {
    if mb.is_finite() && mb > 0.0 {
        mb.round() as u64
    } else {
        0
    }
}

impl GpuModelStatus {
    /// What an agent observes on device `d`, in status form: the observation fields only. The
    /// operator's fields, `remediations` and `reportedAt` are left empty for the writer (the
    /// agent's report, or the operator when no report reaches it) to fill.
    pub fn observed(d: &crate::api::DeviceStatus) -> Self {
        GpuModelStatus {
            active_model: d.active_model.clone(),
            switching: d.busy,
            device: Some(DeviceMemory {
                name: d.name.clone(),
                total_mib: whole_mib(d.memory.total_mb),
                used_mib: whole_mib(d.memory.used_mb),
                baseline_mib: whole_mib(d.memory.baseline_mb),
                ghost_mib: whole_mib(d.ghost.total_mb),
            }),
            models: d
                .models
                .iter()
                .map(|m| ModelRecordStatus {
                    name: m.name.clone(),
                    state: m.state,
                    vram_mib: m.vram_mb.map(whole_mib),
                    ram_mib: m.ram_mb.map(whole_mib),
                    load_ms: m.load_ms.map(whole_mib),
                    loads: m.loads,
                    crashes: m.crashes,
                    last_loaded: m.last_loaded.clone(),
                    last_unloaded: m.last_unloaded.clone(),
                    last_used: m.last_used.clone(),
                })
                .collect(),
            ghost_sources: d
                .ghost
                .sources
                .iter()
                .map(|g| GhostSourceStatus {
                    kind: g.kind,
                    mib: whole_mib(g.mb),
                    pid: g.pid,
                    name: g.name.clone(),
                })
                .collect(),
            zombie_since: d.zombie.over_threshold_since.clone(),
            last_switch: d.last_switch.as_ref().map(|s| SwitchStatus {
                from: s.from.clone(),
                to: s.to.clone(),
                trigger: s.trigger,
                at: s.at.clone(),
                unload_ms: whole_mib(s.unload_ms),
                load_ms: whole_mib(s.load_ms),
                vram_mib: s.vram_mb.map(whole_mib),
                ram_mib: s.ram_mb.map(whole_mib),
            }),
            ..Default::default()
        }
    }
}

impl From<&crate::api::RemediationReport> for RemediationStatus {
    fn from(r: &crate::api::RemediationReport) -> Self {
        RemediationStatus {
            action: r.action,
            trigger: r.trigger,
            at: r.at.clone(),
            ghost_before_mib: whole_mib(r.ghost_before_mb),
            ghost_after_mib: whole_mib(r.ghost_after_mb),
            killed: r.killed.len() as u32,
        }
    }
}
