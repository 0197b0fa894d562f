//! The node agent's HTTP contract: request and response bodies of its `/v1` routes.
//!
//! Memory figures are MiB (2^20 bytes) as `f64`, named `*_mb` as the seed's API named them;
//! durations are milliseconds; times are RFC 3339 strings.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{GhostSourceKind, ModelState, SwitchTrigger};

/// `POST /v1/models/switch`: make `model` the active model of device `gpu`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// Catalog name of the model to load.
    pub model: String,
    /// Device index (default 0).
    #[serde(default)]
    pub gpu: u32,
    /// Who asks: `api` (the default), `spec` (the operator, which holds the token) or
    /// `test-load` (the status page's cycle). `auto` and `reset` are the agent's own (it acted
    /// by itself) and are refused with 422, as is `idle` (an unload's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<SwitchTrigger>,
}

/// What a switch did and what the new model costs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SwitchResponse {
    /// The model unloaded first, if one was active.
    pub from: Option<String>,
    /// The model now active.
    pub to: String,
    /// What asked for the switch.
    pub trigger: SwitchTrigger,
    /// Unloading the old model, verification of the release included.
    pub unload_ms: f64,
    /// Waiting for the memory to come back (part of `unload_ms`).
    pub verify_ms: f64,
    /// Loading the new model until it answered, post-load cleanup and measurement included.
    pub load_ms: f64,
    /// Device memory the new model uses.
    pub vram_mb: f64,
    /// Host memory the new model's worker uses.
    pub ram_mb: f64,
    /// How the old model's release went; absent when nothing was loaded.
    pub release: Option<ReleaseReport>,
    /// True when the model was already active and nothing was done.
    #[serde(default)]
    pub already_active: bool,
    /// Where the load's time went; absent when nothing was loaded.
    #[serde(default)]
    pub phases: Option<LoadPhases>,
    /// Growth of the device's used memory over the load: a cross-check of `vram_mb`, which is
    /// the worker's own usage (they differ by what others allocated or freed meanwhile).
    #[serde(default)]
    pub device_delta_mb: f64,
    /// What `vram_mb` is made of; absent when nothing was loaded, and for model servers (their
    /// process tree's memory has no allocator to split it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
}

/// What a loaded model's memory is made of, measured right after its load and cleanup:
/// `weights_mb + pool_mb + context_mb` is its measured footprint (`vram_mb`). A request adds
/// working memory while it runs (its batches are at most the model's `max_batch`), which the
/// worker gives back once idle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Footprint {
    /// Its weights: the allocator's bytes in use after the cleanup (a GPU), or the parameters'
    /// bytes (the CPU).
    pub weights_mb: f64,
    /// What the allocator still keeps beyond what is in use: its pool (about 0 once the
    /// cleanup returned it).
    pub pool_mb: f64,
    /// Everything else the worker holds: the CUDA context and the kernels' modules (a GPU),
    /// the process, its runtime and tokenizer (the CPU).
    pub context_mb: f64,
    /// The tensors a request holds at once at its largest: the model's largest batch
    /// (`max_batch`) at its longest input, or its longest sequence, estimated from its shapes.
    /// The allocator takes device memory in pages, so what a worker grows by is this rounded
    /// up to its pages (on CUDA, cubecl's pools: hundreds of MiB at least; see
    /// docs/benchmarks.md). Absent where no estimate is made: decoders (whose prompts are not
    /// yet processed in bounded chunks) and model servers (which manage their own memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_estimate_mb: Option<f64>,
}

/// Where a load's time went, in milliseconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct LoadPhases {
    /// Starting the worker process until it answered.
    pub spawn_ms: f64,
    /// Creating the device context in the worker.
    pub context_ms: f64,
    /// Creating the weights on the device (reading or generating them, and copying).
    pub weights_ms: f64,
    /// The first forward pass.
    pub warmup_ms: f64,
    /// Releasing what the load left in the allocator's pool.
    pub cleanup_ms: f64,
    /// Reading the worker's memory.
    pub measure_ms: f64,
    /// Parameters loaded.
    pub params: u64,
    /// Bytes of the parameters.
    pub param_bytes: u64,
    /// Bytes of weight files read (checkpoints; 0 for weights made on the device).
    #[serde(default)]
    pub weights_read_bytes: u64,
    /// `weights_read_bytes` over `weights_ms`, in GB/s (10^9 bytes): file to device.
    #[serde(default)]
    pub weights_gb_per_s: f64,
    /// The worker's allocator after the post-load cleanup: bytes handed out to tensors.
    #[serde(default)]
    pub allocator_in_use_mb: f64,
    /// The same: bytes the allocator holds from the device.
    #[serde(default)]
    pub allocator_reserved_mb: f64,
}

/// How an unload went: whether the memory came back, and how.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReleaseReport {
    /// The model unloaded.
    pub model: String,
    /// Device memory in use before the unload.
    pub before_mb: f64,
    /// Device memory in use after it.
    pub after_mb: f64,
    /// The level the memory had to come back to (the pre-load level).
    pub target_mb: f64,
    /// The tolerance allowed above the target.
    pub tolerance_mb: f64,
    /// True when the memory came back within the tolerance.
    pub verified: bool,
    /// True when the worker did not exit when asked and was killed.
    pub killed: bool,
    /// Milliseconds from the request to the verified release.
    pub elapsed_ms: f64,
}

/// `POST /v1/models/unload`: unload the active model of a device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UnloadRequest {
    /// Device index (default 0).
    #[serde(default)]
    pub gpu: u32,
    /// Who asks: `api` (the default), the operator (which holds the token): `spec` or `idle`,
    /// or `test-load` (the status page's cycle). `auto` and `reset` are the agent's own (it
    /// acted by itself) and are refused with 422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<SwitchTrigger>,
}

/// What an unload did.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UnloadResponse {
    /// The release, or absent when no model was loaded.
    pub release: Option<ReleaseReport>,
}

/// `POST /v1/models/test-load`: load every catalog model in turn and measure it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TestLoadRequest {
    /// Device index (default 0).
    #[serde(default)]
    pub gpu: u32,
    /// Only these models, in this order, each once and at most as many as the catalog holds
    /// (default: the whole catalog, less models too big for the device, which are reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

/// One model's result in a test-load cycle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TestLoadEntry {
    /// Catalog name.
    pub model: String,
    /// The measurement, when the model loaded.
    pub result: Option<SwitchResponse>,
    /// Why it did not load.
    pub error: Option<ErrorDetail>,
}

/// The whole test-load cycle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TestLoadResponse {
    /// One entry per model, in the order they were loaded.
    pub results: Vec<TestLoadEntry>,
    /// The model active again at the end (the one active before the cycle).
    pub restored: Option<String>,
}

/// `POST /v1/gpu/free` and `POST /v1/gpu/reset`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RemediateRequest {
    /// Device index (default 0).
    #[serde(default)]
    pub gpu: u32,
    /// Who asks: `api` (default) or `operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RemediationTrigger>,
    /// Whether this step may end foreign processes (not workers of this agent). Absent: the
    /// agent's own policy (`--kill-foreign-processes`). `true` takes effect only where that
    /// policy allows it too; `false` spares them whatever the policy. The operator sends its
    /// GpuModel's `spec.zombie.killForeignProcesses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_foreign: Option<bool>,
}

/// Who asked for a free or reset.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RemediationTrigger {
    /// The agent's own zombie detection.
    Auto,
    /// A direct call (the status page's buttons, curl).
    Api,
    /// The operator's zombie ladder.
    Operator,
}

/// Free or reset.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum RemediationAction {
    /// Clean allocator pools in live workers, kill workers that should be gone and orphans.
    Free,
    /// Stop every worker, wait for memory to return to baseline, reload the active model.
    Reset,
}

impl RemediationAction {
    /// The wire name (`free`, `reset`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Reset => "reset",
        }
    }
}

/// A process a free or reset ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KilledProcess {
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub name: String,
    /// Why it was ended (its ghost source).
    pub kind: GhostSourceKind,
    /// Memory it held.
    pub mb: f64,
}

/// What a free or reset did, measured before and after.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RemediationReport {
    /// Free or reset.
    pub action: RemediationAction,
    /// Who asked.
    pub trigger: RemediationTrigger,
    /// When it finished.
    pub at: String,
    /// Device memory in use before.
    pub used_before_mb: f64,
    /// Device memory in use after.
    pub used_after_mb: f64,
    /// Ghost memory before.
    pub ghost_before_mb: f64,
    /// Ghost memory after.
    pub ghost_after_mb: f64,
    /// Pooled memory released by live workers' cleanup.
    pub cleaned_mb: f64,
    /// Processes ended.
    pub killed: Vec<KilledProcess>,
    /// Processes that hold memory but were left alone (foreign processes, policy forbids).
    pub spared: Vec<GhostSource>,
    /// The model reloaded by a reset.
    pub reloaded: Option<String>,
    /// Milliseconds the step took.
    pub duration_ms: f64,
    /// True when memory was back at baseline within the tolerance (reset only).
    pub at_baseline: Option<bool>,
}

/// One holder of ghost memory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GhostSource {
    /// What kind of holder this is.
    pub kind: GhostSourceKind,
    /// How much it holds.
    pub mb: f64,
    /// The process holding it, when one does.
    pub pid: Option<u32>,
    /// That process's name, or the model a worker served.
    pub name: Option<String>,
    /// Why a free or reset left it alone (in `spared` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Ghost memory and what holds it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GhostReport {
    /// used - baseline - sum of the loaded models' expected figures (never below 0).
    pub total_mb: f64,
    /// Its holders, largest first; the unattributed rest last.
    pub sources: Vec<GhostSource>,
}

/// Zombie detection state of a device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ZombieStatus {
    /// True once the ghost has stayed over the threshold for the persist time.
    pub flagged: bool,
    /// Since when the ghost has been over the threshold.
    pub over_threshold_since: Option<String>,
    /// The threshold.
    pub threshold_mb: f64,
    /// Seconds the ghost must stay over the threshold.
    pub persist_seconds: u64,
    /// Whether the agent frees on its own.
    pub auto_free: bool,
    /// The earliest time the next automatic free may run (cooldown).
    pub next_auto_free_at: Option<String>,
    /// The last free or reset, whoever asked.
    pub last_remediation: Option<RemediationReport>,
}

/// Memory of one device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeviceMemoryReport {
    /// Total memory.
    pub total_mb: f64,
    /// Memory in use.
    pub used_mb: f64,
    /// Memory free.
    pub free_mb: f64,
    /// Memory the driver reserves (NVML), 0 on the CPU.
    pub reserved_mb: f64,
    /// Memory in use when the agent started, before any model.
    pub baseline_mb: f64,
}

/// A catalog model's record on a device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelRecord {
    /// Catalog name.
    pub name: String,
    /// Model kind: `synthetic` or `minilm`.
    pub kind: String,
    /// Loaded, Unloaded or NeverLoaded.
    pub state: ModelState,
    /// Device memory: its footprint, measured right after its last load (growth after it is
    /// ghost memory, source `worker-growth`).
    pub vram_mb: Option<f64>,
    /// Host memory of its worker right after its last load.
    pub ram_mb: Option<f64>,
    /// What it measured right after load and cleanup (the expected figure ghost uses).
    pub expected_mb: Option<f64>,
    /// Milliseconds its last load took.
    pub load_ms: Option<f64>,
    /// How many times it was loaded.
    pub loads: u64,
    /// How many times its worker exited on its own while loaded.
    #[serde(default)]
    pub crashes: u64,
    /// Its worker stopped answering: the next request replaces it.
    #[serde(default)]
    pub hung: bool,
    /// When it was last loaded.
    pub last_loaded: Option<String>,
    /// When it was last unloaded.
    pub last_unloaded: Option<String>,
    /// What triggered its last load.
    pub last_trigger: Option<SwitchTrigger>,
    /// While loaded: when it last answered an inference request, or when it was loaded if it
    /// has answered none (what idle unload counts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// The worker's process id while loaded.
    pub pid: Option<u32>,
    /// Inference requests it answered since it was loaded.
    pub requests: u64,
    /// What its footprint is made of, as measured after its last load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
}

/// A finished switch (or plain unload), as kept in the history.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SwitchRecord {
    /// When it finished.
    pub at: String,
    /// The model unloaded.
    pub from: Option<String>,
    /// The model loaded; absent for a plain unload.
    pub to: Option<String>,
    /// What asked for it.
    pub trigger: SwitchTrigger,
    /// Unloading and verifying.
    pub unload_ms: f64,
    /// Loading.
    pub load_ms: f64,
    /// Device memory the new model uses.
    pub vram_mb: Option<f64>,
    /// Host memory the new model's worker uses.
    pub ram_mb: Option<f64>,
    /// Whether the release was verified.
    pub release_verified: Option<bool>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// What the new model's memory is made of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footprint: Option<Footprint>,
}

/// One device's whole state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeviceStatus {
    /// Device index.
    pub gpu: u32,
    /// Product name, or `cpu`.
    pub name: String,
    /// `cuda` or `flex`.
    pub backend: String,
    /// Memory figures.
    pub memory: DeviceMemoryReport,
    /// Ghost memory and its holders.
    pub ghost: GhostReport,
    /// Zombie detection.
    pub zombie: ZombieStatus,
    /// The model loaded now.
    pub active_model: Option<String>,
    /// True while a switch, unload, free or reset runs.
    pub busy: bool,
    /// What runs now, when busy.
    pub busy_with: Option<String>,
    /// Operations waiting for the device, oldest first.
    #[serde(default)]
    pub queued: Vec<String>,
    /// Every catalog model's record.
    pub models: Vec<ModelRecord>,
    /// The latest switch.
    pub last_switch: Option<SwitchRecord>,
    /// Switches made by inference calls that named an inactive model.
    pub implicit_switches: u64,
    /// True when the last memory reading failed; figures are then the last good ones.
    pub probe_error: Option<String>,
}

/// `GET /v1/status`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusResponse {
    /// This agent process.
    pub agent: AgentInfo,
    /// One entry per device this agent manages.
    pub devices: Vec<DeviceStatus>,
}

/// Facts about the agent process.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AgentInfo {
    /// Crate version.
    pub version: String,
    /// This run's instance id; its workers carry it.
    pub instance: String,
    /// When this run started.
    pub started_at: String,
    /// The node name, in a cluster.
    pub node: Option<String>,
    /// Why the agent uses the device it uses.
    pub device_reason: String,
    /// Whether acting routes need a bearer token.
    pub auth_required: bool,
}

/// `GET /v1/models?gpu=INDEX`: the catalog.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelsResponse {
    /// Catalog entries with their state on the device asked for.
    pub models: Vec<CatalogEntry>,
}

/// One catalog model.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CatalogEntry {
    /// Catalog name.
    pub name: String,
    /// The model kind (`synthetic`, `minilm`, ...).
    pub kind: String,
    /// Parameter count.
    pub params: u64,
    /// Bytes the parameters take.
    pub param_bytes: u64,
    /// Element type (`f32`, `f16`, ...).
    pub dtype: String,
    /// Whether the model answers `/v1/embeddings` (also in `capabilities`).
    pub embeddings: bool,
    /// The requests it serves.
    pub capabilities: Vec<Capability>,
    /// Its state on the device the request named (`?gpu=`, default 0).
    pub state: ModelState,
}

/// `GET /v1/models/{name}/logs`: what a server model's process printed, newest last.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServerLogsResponse {
    /// The model.
    pub model: String,
    /// Its last lines (at most 2000, each cut at 4096 bytes), from its current run or, once
    /// it stopped or failed, its last.
    pub lines: Vec<ServerLogLine>,
    /// Older lines the ring dropped.
    pub dropped: u64,
}

/// One line a model server printed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServerLogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub text: String,
}

/// A kind of request a model serves.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `POST /v1/infer`: a forward pass over token ids.
    Infer,
    /// `POST /v1/embeddings`: one vector per input text.
    Embeddings,
    /// `POST /v1/chat/completions` and `/v1/completions`, generated by the agent's own worker
    /// (Hugging Face decoders), streams included.
    Completions,
    /// OpenAI-style `POST /v1/*` requests (`/v1/chat/completions`, `/v1/completions`,
    /// `/v1/embeddings`, ...), passed through to the model's own server, streams included.
    Openai,
}

/// `GET /v1/history?gpu=INDEX&window=SECONDS`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HistoryResponse {
    /// Device index.
    pub gpu: u32,
    /// Memory samples, oldest first: 1 s apart for the last hour, 1 min apart before that.
    pub samples: Vec<MemorySample>,
    /// Switches in the window, oldest first.
    pub switches: Vec<SwitchRecord>,
    /// Frees and resets in the window, oldest first.
    pub remediations: Vec<RemediationReport>,
}

/// One point of the device-memory history.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemorySample {
    /// Unix time, milliseconds.
    pub t_ms: i64,
    /// Device memory in use.
    pub used_mb: f64,
    /// Baseline.
    pub baseline_mb: f64,
    /// Ghost memory.
    pub ghost_mb: f64,
    /// Memory of each loaded model.
    pub models: BTreeMap<String, f64>,
}

/// `POST /v1/infer`: a forward pass of a synthetic model (switches to it first if needed).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Catalog name.
    pub model: String,
    /// Device index (default 0).
    #[serde(default)]
    pub gpu: u32,
    /// Input token ids (each below the model's vocabulary size); at most the model's context.
    pub tokens: Vec<u32>,
}

/// The result of a forward pass.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct InferResponse {
    /// The model that answered.
    pub model: String,
    /// Arg-max next token for each input position.
    pub next_tokens: Vec<u32>,
    /// A checksum of the output logits (sum), to compare runs.
    pub checksum: f64,
    /// The switch made first, if the model was not active.
    pub switched: Option<SwitchResponse>,
    /// Milliseconds the forward pass took in the worker.
    pub compute_ms: f64,
}

/// Every error the agent answers: `{"error": {"code": ..., "message": ...}}`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`unknown_model`, `busy`, `malformed_body`, ...).
    pub code: ErrorCode,
    /// A sentence naming the problem.
    pub message: String,
}

/// The stable machine-readable codes of the agent's error bodies: the agent answers with them,
/// the operator matches them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The model is not in the catalog (404).
    UnknownModel,
    /// No device with that index (404).
    UnknownDevice,
    /// The body is not JSON of the expected shape (400).
    MalformedBody,
    /// No `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// The body exceeds the route's limit (413).
    BodyTooLarge,
    /// A request over a bound on work (413).
    OverLimit,
    /// Well-formed but unacceptable values (422).
    InvalidValue,
    /// A model whose estimate exceeds the device's total memory (422).
    TooBigForDevice,
    /// No route has this path (404).
    NoRoute,
    /// The path exists, but not with this method (405).
    MethodNotAllowed,
    /// The device's queue turned the request away (409).
    Busy,
    /// An inference request would switch a GPU away from its GpuModel's model (409).
    NotDesired,
    /// No or wrong bearer token (401).
    Unauthorized,
    /// Addressed to a host name the agent does not answer for (421).
    MisdirectedHost,
    /// A browser page of another origin (403).
    CrossOrigin,
    /// Over the per-credential request rate (429).
    RateLimited,
    /// A load the device has no room for, even after evicting every model it may (409).
    InsufficientMemory,
    /// A model failed to load (502).
    LoadFailed,
    /// A worker failed while serving (502).
    WorkerFailed,
    /// Not possible now (503).
    Unavailable,
    /// A bug (500).
    Internal,
    /// Never sent by the agent: a code this version does not know (a newer agent), or an
    /// answer a client could not read.
    #[serde(other)]
    Unrecognized,
}

impl ErrorCode {
    /// The code as it appears in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownModel => "unknown_model",
            Self::UnknownDevice => "unknown_device",
            Self::MalformedBody => "malformed_body",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::OverLimit => "over_limit",
            Self::InvalidValue => "invalid_value",
            Self::TooBigForDevice => "too_big_for_device",
            Self::InsufficientMemory => "insufficient_memory",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Busy => "busy",
            Self::NotDesired => "not_desired",
            Self::Unauthorized => "unauthorized",
            Self::MisdirectedHost => "misdirected_host",
            Self::CrossOrigin => "cross_origin",
            Self::RateLimited => "rate_limited",
            Self::LoadFailed => "load_failed",
            Self::WorkerFailed => "worker_failed",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Unrecognized => "unrecognized",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod error_code_tests {
    use super::ErrorCode;

    #[test]
    fn codes_serialize_as_they_are_written_and_unknown_ones_are_recognised_as_such() {
        for code in [
            ErrorCode::UnknownModel,
            ErrorCode::NotDesired,
            ErrorCode::TooBigForDevice,
            ErrorCode::InsufficientMemory,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
        let newer: ErrorCode = serde_json::from_str("\"from_a_newer_agent\"").unwrap();
        assert_eq!(newer, ErrorCode::Unrecognized);
    }
}
