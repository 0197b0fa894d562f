//! Prometheus metrics of the operator (OpenMetrics text on `/metrics`).

use std::time::{Duration, Instant};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    ])
}

/// Every metric of the operator, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    reconcile_seconds: Histogram,
    steps: Family<StepLabels, Counter>,
    agent_calls: Family<CallLabels, Counter>,
    agent_call_seconds: Family<ActionLabels, Histogram>,
    status_writes: Counter,
    leader: Gauge,
}

/// Error labels the failure counter shows as zeros from the start.
const ERROR_LABELS: [&str; 8] = [
    "kube",
    "finalizer",
    "agent_not_found",
    "agent_unreachable",
    "agent_busy",
    "agent_rejected",
    "token",
    "invalid",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `vramkeeper_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vramkeeper_operator");
        let m = Self {
            registry: Registry::default(),
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_seconds: seconds_buckets(),
            steps: Family::default(),
            agent_calls: Family::default(),
            agent_call_seconds: Family::new_with_constructor(seconds_buckets),
            status_writes: Counter::default(),
            leader: Gauge::default(),
        };
        registry.register("reconciles", "Reconciliations run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error",
            m.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, agent calls included",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "steps",
            "Planner steps: unload, load, idle_unload, parked, free, reset, mark_degraded, wait, in_sync",
            m.steps.clone(),
        );
        registry.register(
            "agent_calls",
            "Calls to node agents by action and result",
            m.agent_calls.clone(),
        );
        registry.register(
            "agent_call_duration_seconds",
            "Time an agent call took",
            m.agent_call_seconds.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches written (unchanged status is not written)",
            m.status_writes.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica holds the leader Lease (1) or waits for it (0)",
            m.leader.clone(),
        );
        for e in ERROR_LABELS {
            let _ = m.failures.get_or_create(&ErrorLabels { error: e.into() });
        }
        Self { registry, ..m }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a reconciliation and times it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconciliation.
    pub fn reconcile_failed(&self, label: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                error: label.into(),
            })
            .inc();
    }

    /// Counts a planner step.
    pub fn step(&self, step: &str) {
        self.steps
            .get_or_create(&StepLabels { step: step.into() })
            .inc();
    }

    /// Counts and times an agent call.
    pub fn agent_call(&self, action: &str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.agent_calls
            .get_or_create(&CallLabels {
                action: action.into(),
                result: result.into(),
            })
            .inc();
        self.agent_call_seconds
            .get_or_create(&ActionLabels {
                action: action.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a status write.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Reconciliations run so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}
