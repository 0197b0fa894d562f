//! Command-line arguments, each also from an environment variable.

use std::{net::SocketAddr, time::Duration};

use clap::{Args as ClapArgs, Parser};

use crate::context::Backoff;

/// The vramkeeper operator: reconciles each GpuModel's desired model against what its node
/// agent reports; unloads before it loads; frees, then resets, when zombie memory persists.
#[derive(Parser, Debug, Clone)]
#[command(name = "vramkeeper-operator", version, about)]
pub struct Args {
    /// Address of `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "VRAMKEEPER_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Reconciles that may run at once (0: no limit). Each holds at most one agent call, and a
    /// switch can take a minute: a limit below the number of GpuModels a burst of spec changes
    /// touches makes later ones wait on earlier ones' loads. Each one in flight costs some
    /// 70 KB (mostly its HTTP connection).
    #[arg(long, env = "VRAMKEEPER_OPERATOR_CONCURRENCY", default_value_t = 1024)]
    pub concurrency: u16,

    /// First delay after a failed reconcile, in milliseconds (doubles per failure in a row).
    #[arg(
        long,
        env = "VRAMKEEPER_OPERATOR_BACKOFF_BASE_MS",
        default_value_t = 1000
    )]
    pub backoff_base_ms: u64,

    /// Largest delay after failed reconciles, in seconds.
    #[arg(long, env = "VRAMKEEPER_OPERATOR_BACKOFF_CAP_S", default_value_t = 300)]
    pub backoff_cap_s: u64,

    /// Longest time between two looks at a GpuModel's agent, in seconds (a GPU that serves what
    /// it should is rechecked this often; the agent's status reports trigger looks sooner).
    #[arg(long, env = "VRAMKEEPER_OPERATOR_MAX_RECHECK_S", default_value_t = 30)]
    pub max_recheck_s: u64,

    /// How to reach the agents.
    #[command(flatten)]
    pub agents: AgentArgs,

    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// How to reach the node agents.
#[derive(ClapArgs, Debug, Clone)]
pub struct AgentArgs {
    /// Namespace of the agent DaemonSet's Pods (and of the token Secret).
    #[arg(long, env = "VRAMKEEPER_AGENT_NAMESPACE", default_value = "vramkeeper")]
    pub agent_namespace: String,

    /// Label selector of the agent Pods.
    #[arg(
        long,
        env = "VRAMKEEPER_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=vramkeeper-agent"
    )]
    pub agent_selector: String,

    /// Name of the agent container's HTTP port.
    #[arg(long, env = "VRAMKEEPER_AGENT_PORT_NAME", default_value = "http")]
    pub agent_port_name: String,

    /// The agent's port when no container port has that name.
    #[arg(long, env = "VRAMKEEPER_AGENT_PORT", default_value_t = 8470)]
    pub agent_port: u16,

    /// Secret (in the agents' namespace) holding the agents' bearer token; none when absent.
    #[arg(long, env = "VRAMKEEPER_AGENT_TOKEN_SECRET")]
    pub agent_token_secret: Option<String>,

    /// Key of the token in that Secret.
    #[arg(long, env = "VRAMKEEPER_AGENT_TOKEN_KEY", default_value = "token")]
    pub agent_token_key: String,

    /// Seconds a status read may take.
    #[arg(long, env = "VRAMKEEPER_AGENT_READ_TIMEOUT_S", default_value_t = 10)]
    pub agent_read_timeout_s: u64,

    /// Seconds an acting call may take (a switch includes the model load).
    #[arg(long, env = "VRAMKEEPER_AGENT_ACT_TIMEOUT_S", default_value_t = 330)]
    pub agent_act_timeout_s: u64,
}

/// Leader election.
#[derive(ClapArgs, Debug, Clone)]
pub struct LeaderArgs {
    /// Elect a leader through a Lease (turn off only for a single replica).
    #[arg(long, env = "VRAMKEEPER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the Lease.
    #[arg(
        long,
        env = "VRAMKEEPER_LEASE_NAME",
        default_value = "vramkeeper-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vramkeeper")]
    pub lease_namespace: String,

    /// This replica's identity (its Pod name); the host name when absent.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a lease lasts without renewal.
    #[arg(long, env = "VRAMKEEPER_LEASE_DURATION_S", default_value_t = 15)]
    pub lease_duration_s: u64,

    /// Seconds between renewals.
    #[arg(long, env = "VRAMKEEPER_LEASE_RENEW_S", default_value_t = 5)]
    pub lease_renew_s: u64,
}

impl Args {
    /// The backoff of failed reconciles.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.backoff_base_ms.max(1)),
            cap: Duration::from_secs(self.backoff_cap_s.max(1)),
        }
    }
}

impl LeaderArgs {
    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "vramkeeper-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
