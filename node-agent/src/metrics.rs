//! Prometheus metrics (OpenMetrics text) of the agent.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use vramkeeper_crds::{
    GhostSourceKind, SwitchTrigger,
    api::{RemediationAction, RemediationTrigger},
};

use crate::{ghost::Ghost, probe::DeviceReading};

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryLabels {
    gpu: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    gpu: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    gpu: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabels {
    gpu: String,
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    gpu: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemediationLabels {
    gpu: String,
    action: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerFailureLabels {
    gpu: String,
    model: String,
    failure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    gpu: String,
    model: String,
    outcome: String,
}

/// Every metric of the agent, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    device_memory: Family<MemoryLabels, FloatGauge>,
    model_memory: Family<ModelLabels, FloatGauge>,
    model_loaded: Family<ModelLabels, Gauge>,
    ghost: Family<SourceLabels, FloatGauge>,
    ghost_total: Family<DeviceLabels, FloatGauge>,
    zombie: Family<DeviceLabels, Gauge>,
    switches: Family<SwitchLabels, Counter>,
    switch_seconds: Family<PhaseLabels, Histogram>,
    release_seconds: Family<DeviceLabels, Histogram>,
    releases_unverified: Family<DeviceLabels, Counter>,
    remediations: Family<RemediationLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    probe_errors: Family<DeviceLabels, Counter>,
    worker_failures: Family<WorkerFailureLabels, Counter>,
    catalog: Vec<String>,
}

fn gpu(index: u32) -> String {
    index.to_string()
}

fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

impl Metrics {
    /// Registers every metric.
    pub(crate) fn new(catalog: &[String], devices: &[u32]) -> Self {
        let mut registry = Registry::with_prefix("vramkeeper");
        let m = Self {
            device_memory: Family::default(),
            model_memory: Family::default(),
            model_loaded: Family::default(),
            ghost: Family::default(),
            ghost_total: Family::default(),
            zombie: Family::default(),
            switches: Family::default(),
            switch_seconds: Family::new_with_constructor(seconds_buckets),
            release_seconds: Family::new_with_constructor(seconds_buckets),
            releases_unverified: Family::default(),
            remediations: Family::default(),
            requests: Family::default(),
            probe_errors: Family::default(),
            worker_failures: Family::default(),
            registry: Registry::default(),
            catalog: catalog.to_vec(),
        };
        registry.register(
            "device_memory_bytes",
            "Device memory by kind: total, used, free, baseline",
            m.device_memory.clone(),
        );
        registry.register(
            "model_memory_bytes",
            "Device memory of each model: live while loaded, last known after",
            m.model_memory.clone(),
        );
        registry.register(
            "model_loaded",
            "1 while the model is loaded",
            m.model_loaded.clone(),
        );
        registry.register(
            "ghost_memory_bytes",
            "Ghost memory by source (zombie-worker, orphan-worker, foreign-process, allocator-cache, worker-growth, unattributed)",
            m.ghost.clone(),
        );
        registry.register(
            "ghost_memory_total_bytes",
            "used - baseline - the loaded models' expected memory",
            m.ghost_total.clone(),
        );
        registry.register(
            "zombie_memory",
            "1 while ghost memory has stayed over the threshold for the persist time",
            m.zombie.clone(),
        );
        registry.register(
            "switches",
            "Model switches by trigger and outcome",
            m.switches.clone(),
        );
        registry.register(
            "switch_duration_seconds",
            "Switch phases: unload (release verified included) and load",
            m.switch_seconds.clone(),
        );
        registry.register(
            "release_duration_seconds",
            "From an unload request to the verified release of the memory",
            m.release_seconds.clone(),
        );
        registry.register(
            "releases_unverified",
            "Unloads whose memory did not come back within the tolerance",
            m.releases_unverified.clone(),
        );
        registry.register(
            "remediations",
            "Frees and resets by trigger",
            m.remediations.clone(),
        );
        registry.register(
            "inference_requests",
            "Requests served by models",
            m.requests.clone(),
        );
        registry.register(
            "probe_errors",
            "Failed device memory readings",
            m.probe_errors.clone(),
        );
        registry.register(
            "worker_failures",
            "Workers of loaded models that exited on their own (crashed) or stopped answering (hung)",
            m.worker_failures.clone(),
        );
        // Zeros rather than gaps for the series dashboards query.
        for &d in devices {
            let g = gpu(d);
            for kind in GhostSourceKind::ALL {
                let _ = m.ghost.get_or_create(&SourceLabels {
                    gpu: g.clone(),
                    source: kind.as_str().into(),
                });
            }
            for trigger in SwitchTrigger::ALL {
                for outcome in ["ok", "failed"] {
                    let _ = m.switches.get_or_create(&SwitchLabels {
                        gpu: g.clone(),
                        trigger: trigger.as_str().into(),
                        outcome: outcome.into(),
                    });
                }
            }
            for model in catalog {
                let _ = m.model_loaded.get_or_create(&ModelLabels {
                    gpu: g.clone(),
                    model: model.clone(),
                });
            }
            let _ = m.zombie.get_or_create(&DeviceLabels { gpu: g.clone() });
            // A zero from the start: `increase()` (the unverified-release alert) misses a
            // counter's first step when the series begins at 1.
            let _ = m
                .releases_unverified
                .get_or_create(&DeviceLabels { gpu: g.clone() });
            let _ = m.probe_errors.get_or_create(&DeviceLabels { gpu: g });
        }
        Self { registry, ..m }
    }

    /// The OpenMetrics text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Publishes one sampling tick.
    pub(crate) fn observe_device(
        &self,
        index: u32,
        reading: &DeviceReading,
        baseline: u64,
        ghost: &Ghost,
        zombie: bool,
        live: Option<&(String, u64, u64)>,
    ) {
        let g = gpu(index);
        for (kind, value) in [
            ("total", reading.total_bytes),
            ("used", reading.used_bytes),
            ("free", reading.free_bytes),
            ("baseline", baseline),
        ] {
            self.device_memory
                .get_or_create(&MemoryLabels {
                    gpu: g.clone(),
                    kind: kind.into(),
                })
                .set(value as f64);
        }
        for kind in GhostSourceKind::ALL {
            let bytes: u64 = ghost
                .sources
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.bytes)
                .sum();
            self.ghost
                .get_or_create(&SourceLabels {
                    gpu: g.clone(),
                    source: kind.as_str().into(),
                })
                .set(bytes as f64);
        }
        self.ghost_total
            .get_or_create(&DeviceLabels { gpu: g.clone() })
            .set(ghost.bytes as f64);
        self.zombie
            .get_or_create(&DeviceLabels { gpu: g.clone() })
            .set(zombie as i64);
        for model in &self.catalog {
            let loaded = live.is_some_and(|(m, _, _)| m == model);
            self.model_loaded
                .get_or_create(&ModelLabels {
                    gpu: g.clone(),
                    model: model.clone(),
                })
                .set(loaded as i64);
        }
        if let Some((model, vram, _)) = live {
            let labels = ModelLabels {
                gpu: g.clone(),
                model: model.clone(),
            };
            self.model_memory.get_or_create(&labels).set(*vram as f64);
        }
    }

    /// Counts a switch and times its phases.
    pub(crate) fn switched(
        &self,
        index: u32,
        trigger: SwitchTrigger,
        ok: bool,
        unload_ms: f64,
        load_ms: f64,
    ) {
        let g = gpu(index);
        self.switches
            .get_or_create(&SwitchLabels {
                gpu: g.clone(),
                trigger: trigger.as_str().into(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
        for (phase, value) in [("unload", unload_ms), ("load", load_ms)] {
            self.switch_seconds
                .get_or_create(&PhaseLabels {
                    gpu: g.clone(),
                    phase: phase.into(),
                })
                .observe(value / 1000.0);
        }
    }

    /// Times a release.
    pub(crate) fn released(&self, index: u32, verified: bool, elapsed_ms: f64) {
        let labels = DeviceLabels { gpu: gpu(index) };
        self.release_seconds
            .get_or_create(&labels)
            .observe(elapsed_ms / 1000.0);
        if !verified {
            self.releases_unverified.get_or_create(&labels).inc();
        }
    }

    /// Counts a free or reset.
    pub(crate) fn remediated(
        &self,
        index: u32,
        action: RemediationAction,
        trigger: RemediationTrigger,
    ) {
        let action = match action {
            RemediationAction::Free => "free",
            RemediationAction::Reset => "reset",
        };
        let trigger = match trigger {
            RemediationTrigger::Auto => "auto",
            RemediationTrigger::Api => "api",
            RemediationTrigger::Operator => "operator",
        };
        self.remediations
            .get_or_create(&RemediationLabels {
                gpu: gpu(index),
                action: action.into(),
                trigger: trigger.into(),
            })
            .inc();
    }

    /// Counts a request served by a model.
    pub(crate) fn request(&self, index: u32, model: &str, ok: bool) {
        self.requests
            .get_or_create(&RequestLabels {
                gpu: gpu(index),
                model: model.into(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// Counts a worker that crashed or hung (`failure`: `crashed` or `hung`).
    pub(crate) fn worker_failed(&self, index: u32, model: &str, failure: &str) {
        self.worker_failures
            .get_or_create(&WorkerFailureLabels {
                gpu: gpu(index),
                model: model.into(),
                failure: failure.into(),
            })
            .inc();
    }

    /// Counts a failed reading.
    pub(crate) fn probe_errors(&self, index: u32) {
        self.probe_errors
            .get_or_create(&DeviceLabels { gpu: gpu(index) })
            .inc();
    }
}
