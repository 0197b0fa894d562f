//! The permissions the node agent's status reporting uses (`node-agent/src/report.rs`): a
//! reflector over GpuModels (list, watch) and server-side apply of their status (patch). The
//! chart grants the agent exactly these; its test compares the rendered role with this list.

/// `(apiGroup, resource, verbs)`, cluster-wide (GpuModels are cluster-scoped).
pub const AGENT_RBAC_RULES: &[(&str, &str, &[&str])] = &[
    ("vramkeeper.dev", "gpumodels", &["list", "watch"]),
    ("vramkeeper.dev", "gpumodels/status", &["patch"]),
];
