//! The exact permissions the operator uses, defined once: the chart's RBAC must grant these
//! and no more (a chart test compares against [`RBAC_RULES`]).

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-wide (a ClusterRole): the GpuModels are cluster-scoped.
    Cluster,
    /// The agents' namespace (a Role there): agent Pods, the token Secret.
    AgentNamespace,
    /// The operator's namespace (a Role there): the leader Lease.
    OperatorNamespace,
    /// The `default` namespace: Events about cluster-scoped objects land there.
    DefaultNamespace,
}

/// One RBAC policy rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where it applies.
    pub scope: Scope,
    /// API groups (`""` is the core group).
    pub api_groups: &'static [&'static str],
    /// Resources (with subresources as `gpumodels/status`).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Every permission the operator uses.
pub const RBAC_RULES: &[Rule] = &[
    Rule {
        scope: Scope::Cluster,
        api_groups: &["vramkeeper.dev"],
        resources: &["gpumodels"],
        // list + watch: the controller; patch: the finalizer.
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        scope: Scope::Cluster,
        api_groups: &["vramkeeper.dev"],
        resources: &["gpumodels/status"],
        // Server-side apply of phase, observedGeneration and conditions.
        verbs: &["patch"],
    },
    Rule {
        scope: Scope::AgentNamespace,
        api_groups: &[""],
        resources: &["pods"],
        verbs: &["list", "watch"],
    },
    Rule {
        scope: Scope::AgentNamespace,
        api_groups: &[""],
        resources: &["secrets"],
        // Only the agent token Secret (the chart may add resourceNames).
        verbs: &["get"],
    },
    Rule {
        scope: Scope::DefaultNamespace,
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    Rule {
        scope: Scope::OperatorNamespace,
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
];

/// Whether the rules grant `verb` on `group`/`resource` (anywhere).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RBAC_RULES.iter().any(|r| {
        r.api_groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_least_privilege() {
        assert!(allows("vramkeeper.dev", "gpumodels/status", "patch"));
        assert!(!allows("vramkeeper.dev", "gpumodels", "delete"));
        assert!(!allows("", "secrets", "list"));
        assert!(!allows("", "pods", "delete"));
        for r in RBAC_RULES {
            assert!(!r.verbs.contains(&"*") && !r.resources.contains(&"*"));
        }
    }
}
