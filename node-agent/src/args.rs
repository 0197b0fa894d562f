//! Command-line arguments (each also from an environment variable).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// vramkeeper's node agent: runs models in worker processes, measures what each really costs,
/// finds the memory nothing accounts for, and frees it.
#[derive(Parser, Debug)]
#[command(name = "vramkeeper-agent", version, about)]
pub struct Cli {
    /// What to run (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Agent options (when serving).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API, the status page and the models (the default).
    Serve,
    /// A worker process (started by the agent; not for direct use).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Which device the agent manages.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// Every NVIDIA GPU NVML finds, else the CPU.
    Auto,
    /// Every NVIDIA GPU NVML finds; refuse to start when NVML or the CUDA driver is unusable
    /// or lists no GPU (a GPU node never quietly serves on its CPU).
    Cuda,
    /// The CPU, even where GPUs exist.
    Cpu,
}

/// The most MiB a memory option takes (1 PiB): its bytes fit in a u64 with room to add.
const MAX_MIB: u64 = 1 << 30;

/// The agent's options.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the API and the status page.
    #[arg(long, env = "VRAMKEEPER_LISTEN", default_value = "127.0.0.1:8470")]
    pub listen: SocketAddr,

    /// Model catalog (TOML); the built-in catalog when absent.
    #[arg(long, env = "VRAMKEEPER_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Where the state file lives (records survive restarts). Default: $XDG_STATE_HOME/vramkeeper.
    #[arg(long, env = "VRAMKEEPER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Downloaded weights and compiled kernels. Default: $XDG_CACHE_HOME/vramkeeper.
    #[arg(long, env = "VRAMKEEPER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Stable identity of this agent, carried by its workers so that a restarted agent finds
    /// the orphans of its earlier runs. Default: derived from the state directory.
    #[arg(long, env = "VRAMKEEPER_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Which device to manage.
    #[arg(long, env = "VRAMKEEPER_DEVICE", value_enum, default_value = "auto")]
    pub device: DeviceChoice,

    /// Not ready (`/readyz`) while fewer GPUs than this can be read; `--device cuda` implies 1.
    /// For a node whose GPUs are known, e.g. the GPUs a Pod requests from the device plugin.
    #[arg(long, env = "VRAMKEEPER_MIN_GPUS", default_value_t = 0)]
    pub min_gpus: u32,

    /// Load this model at start.
    #[arg(long, env = "VRAMKEEPER_LOAD")]
    pub load: Option<String>,

    /// Bearer token required by acting routes (switch, unload, test-load, free, reset), and
    /// accepted by inference routes. Surrounding whitespace is ignored; an empty token is refused.
    #[arg(long, env = "VRAMKEEPER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the bearer token (a mounted Secret); surrounding whitespace and the
    /// trailing newline are ignored, an empty file is refused.
    #[arg(long, env = "VRAMKEEPER_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// An inference key: accepted (besides the token) by the inference routes, which can load
    /// and unload models by naming them, as `Authorization: Bearer <key>` (what OpenAI clients
    /// send). Repeatable; the variable takes a comma-separated list. With a token or a key
    /// configured, inference needs one of them.
    #[arg(
        long = "api-key",
        env = "VRAMKEEPER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// UNSAFE: serve inference without the token or a key even when one is configured. Anyone
    /// who reaches the agent can then unload the active model and load another by naming it.
    #[arg(long, env = "VRAMKEEPER_INFERENCE_WITHOUT_AUTH")]
    pub inference_without_auth: bool,

    /// Require the token on read routes too.
    #[arg(long, env = "VRAMKEEPER_AUTH_READS")]
    pub auth_reads: bool,

    /// Acting requests allowed per second (a burst of that many, refilled evenly).
    #[arg(long, env = "VRAMKEEPER_RATE_LIMIT", default_value_t = 20)]
    pub rate_limit: u32,

    /// Inference requests allowed per second for each credential (the token, each key), when
    /// inference needs one (a burst of that many, refilled evenly).
    #[arg(long, env = "VRAMKEEPER_INFERENCE_RATE_LIMIT", default_value_t = 100)]
    pub inference_rate_limit: u32,

    /// Host names requests may be addressed to (the `Host` header, port ignored), besides IP
    /// addresses, `localhost` and the node name. Others get 421: a DNS-rebinding page addresses
    /// its requests to its own name. Repeatable; the variable takes a comma-separated list.
    #[arg(
        long = "allowed-hosts",
        env = "VRAMKEEPER_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Milliseconds between memory samples.
    #[arg(long, env = "VRAMKEEPER_SAMPLE_MS", default_value_t = 1000)]
    pub sample_ms: u64,

    /// Ghost memory above this many MiB is suspicious.
    #[arg(long, env = "VRAMKEEPER_ZOMBIE_THRESHOLD_MIB", default_value_t = 1536)]
    pub zombie_threshold_mib: u64,

    /// Seconds the ghost must stay above the threshold to be zombie memory.
    #[arg(long, env = "VRAMKEEPER_ZOMBIE_PERSIST_S", default_value_t = 30.0)]
    pub zombie_persist_s: f64,

    /// Free zombie memory automatically (turn off when an operator manages the agent).
    #[arg(long, env = "VRAMKEEPER_AUTO_FREE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_free: bool,

    /// Seconds between automatic frees.
    #[arg(long, env = "VRAMKEEPER_FREE_COOLDOWN_S", default_value_t = 60.0)]
    pub free_cooldown_s: f64,

    /// Let free and reset kill processes that are no worker of this agent.
    #[arg(long, env = "VRAMKEEPER_KILL_FOREIGN")]
    pub kill_foreign_processes: bool,

    /// With --kill-foreign-processes: only foreign processes whose command line matches this
    /// regular expression may be ended. On the CPU device, matching processes are also listed
    /// as holders of device memory (their resident memory), so stale servers show as ghost.
    #[arg(long, env = "VRAMKEEPER_KILL_FOREIGN_MATCHING", value_parser = parse_regex)]
    pub kill_foreign_matching: Option<regex::Regex>,

    /// Unload a model that served nothing for this many seconds.
    #[arg(long, env = "VRAMKEEPER_IDLE_UNLOAD_S")]
    pub idle_unload_s: Option<f64>,

    /// Seconds a model load (warm-up included) may take.
    #[arg(long, env = "VRAMKEEPER_LOAD_TIMEOUT_S", default_value_t = 300.0)]
    pub load_timeout_s: f64,

    /// Seconds one inference request may take.
    #[arg(long, env = "VRAMKEEPER_INFER_TIMEOUT_S", default_value_t = 120.0)]
    pub infer_timeout_s: f64,

    /// Milliseconds a worker may take to exit when asked before it is killed.
    #[arg(long, env = "VRAMKEEPER_SHUTDOWN_GRACE_MS", default_value_t = 1000)]
    pub shutdown_grace_ms: u64,

    /// Seconds an unload or switch waits for requests in flight on the model (streams
    /// included) before it ends them.
    #[arg(long, env = "VRAMKEEPER_DRAIN_TIMEOUT_S", default_value_t = 30.0, value_parser = parse_secs)]
    pub drain_timeout_s: f64,

    /// Milliseconds to wait for released memory to show in the readings.
    #[arg(long, env = "VRAMKEEPER_VERIFY_TIMEOUT_MS", default_value_t = 5000)]
    pub verify_timeout_ms: u64,

    /// MiB above the pre-load level that still counts as released.
    #[arg(long, env = "VRAMKEEPER_RELEASE_TOLERANCE_MIB", default_value_t = 64)]
    pub release_tolerance_mib: u64,

    /// MiB kept free beyond a model's footprint when admitting a load (a request's working
    /// memory comes on top of the footprint).
    #[arg(long, env = "VRAMKEEPER_HEADROOM_MIB", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=MAX_MIB))]
    pub headroom_mib: u64,

    /// The CPU device's memory, in MiB: its total, so that admission and ghost accounting work
    /// under a budget as on a GPU. Free is the budget less what the workers hold (or the
    /// host's available memory, if less). Refused with a GPU.
    #[arg(long, env = "VRAMKEEPER_MEMORY_BUDGET_MIB",
          value_parser = clap::value_parser!(u64).range(1..=MAX_MIB))]
    pub memory_budget_mib: Option<u64>,

    /// This node's name. When set and a cluster is reachable (in-cluster service account or a
    /// kubeconfig), the agent reports into the status of the GpuModels with this `spec.nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Enable test-only routes (/v1/debug/leak). Never in production.
    #[arg(long, env = "VRAMKEEPER_ENABLE_TEST_OPS", hide = true)]
    pub enable_test_ops: bool,

    /// How many device operations (switches, loads, unloads, frees, resets, auto-switches of
    /// inference calls) may wait for a device; one more is answered 409 with what is ahead.
    #[arg(long, env = "VRAMKEEPER_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,

    /// How long an operation may wait for its turn on a device before it is answered 409.
    #[arg(long, env = "VRAMKEEPER_QUEUE_TIMEOUT_S", default_value_t = 120.0)]
    pub queue_timeout_s: f64,

    /// An idle worker that does not answer a poll within this time is marked hung and
    /// replaced at the next request for its model.
    #[arg(long, env = "VRAMKEEPER_HANG_TIMEOUT_S", default_value_t = 5.0)]
    pub hang_timeout_s: f64,

    /// Seconds a client has to send a request's headers (and, on a kept-alive connection,
    /// to start its next request).
    #[arg(long, env = "VRAMKEEPER_HEADER_TIMEOUT_S", default_value_t = 10.0)]
    pub header_timeout_s: f64,

    /// Seconds a client has to send a request's body.
    #[arg(long, env = "VRAMKEEPER_BODY_TIMEOUT_S", default_value_t = 30.0)]
    pub body_timeout_s: f64,

    /// Connections kept at once; one over the cap is served once, then closed.
    #[arg(long, env = "VRAMKEEPER_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// On SIGTERM, how long in-flight requests may finish before the workers are ended
    /// regardless.
    #[arg(long, env = "VRAMKEEPER_SHUTDOWN_TIMEOUT_S", default_value_t = 10.0)]
    pub shutdown_timeout_s: f64,
}

/// A worker's options (set by the agent).
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The agent it belongs to.
    #[arg(long)]
    pub agent_id: String,
    /// The run of the agent that started it.
    #[arg(long)]
    pub instance: String,
    /// The Unix socket to listen on.
    #[arg(long)]
    pub socket: PathBuf,
    /// `cuda` or `flex`.
    #[arg(long)]
    pub backend: String,
    /// CUDA device ordinal: 0 when the agent names the GPU by UUID in CUDA_VISIBLE_DEVICES.
    #[arg(long, default_value_t = 0)]
    pub device_index: u32,
    /// Kernel caches and weights.
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// The device's index as NVML numbers it (a model server's `{gpu}`).
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// The GPU's UUID (a model server's `{gpu_uuid}`); absent on the CPU.
    #[arg(long)]
    pub gpu_uuid: Option<String>,
    /// Where a model server's output is mirrored (`<model>.log`).
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Allow the test-only ops.
    #[arg(long)]
    pub test_ops: bool,
    /// Test-only fault to inject (needs --test-ops).
    #[arg(long, value_enum, requires = "test_ops")]
    pub fault: Option<Fault>,
}

/// Faults a worker can be started with, for tests of the agent's failure handling.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Abort the process in the middle of a load.
    CrashOnLoad,
    /// Never answer a load.
    HangOnLoad,
    /// Never answer an inference (after loading normally).
    HangOnInfer,
    /// Ignore shutdown requests.
    IgnoreShutdown,
}

impl Fault {
    /// The command-line value.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::CrashOnLoad => "crash-on-load",
            Self::HangOnLoad => "hang-on-load",
            Self::HangOnInfer => "hang-on-infer",
            Self::IgnoreShutdown => "ignore-shutdown",
        }
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err("not a number of seconds from 0 to 86400".into()),
    }
}

fn parse_regex(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("not a regular expression: {e}"))
}
