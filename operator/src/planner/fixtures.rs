//! Chainable fixture builders for planner and conditions tests.

use jiff::Timestamp;
use vramkeeper_crds::{
    Condition, DegradedReason, DegradedStatus, DeviceMemory, GpuModelSpec, GpuModelStatus,
    ModelRecordStatus, ModelState, SwitchStatus, SwitchTrigger, UnknownModelStatus, ZombiePolicy,
    conditions::DEGRADED,
};

use super::{Input, Remediation, RemedyKind, plan};
use crate::plan::Plan;

/// A fixed instant plus `s` seconds.
pub fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

/// A free the operator ran at `t(s)`.
pub fn free_at(s: i64) -> Remediation {
    Remediation {
        kind: RemedyKind::Free,
        at: t(s),
        by_operator: true,
    }
}

/// A reset the operator ran at `t(s)`.
pub fn reset_at(s: i64) -> Remediation {
    Remediation {
        kind: RemedyKind::Reset,
        at: t(s),
        by_operator: true,
    }
}

/// Builds a spec: node-a, GPU 0, no model; threshold 100 MiB, persist 30 s, cooldown 60 s,
/// reset after free, 2 resets an hour.
pub struct SpecBuilder(GpuModelSpec);

/// A spec builder.
pub fn spec() -> SpecBuilder {
    SpecBuilder(GpuModelSpec {
        node_name: "node-a".into(),
        gpu: 0,
        model: None,
        zombie: ZombiePolicy {
            threshold_mib: 100,
            persist_seconds: 30,
            free_cooldown_seconds: 60,
            reset_after_free: true,
            max_resets_per_hour: 2,
            kill_foreign_processes: false,
        },
        idle_unload_seconds: None,
    })
}

impl SpecBuilder {
    /// The desired model.
    pub fn model(mut self, m: &str) -> Self {
        self.0.model = Some(m.into());
        self
    }
    /// Persist seconds.
    pub fn persist(mut self, s: u32) -> Self {
        self.0.zombie.persist_seconds = s;
        self
    }
    /// Cooldown seconds.
    pub fn cooldown(mut self, s: u32) -> Self {
        self.0.zombie.free_cooldown_seconds = s;
        self
    }
    /// Reset budget per hour.
    pub fn max_resets(mut self, n: u32) -> Self {
        self.0.zombie.max_resets_per_hour = n;
        self
    }
    /// Unload after `s` seconds without requests.
    pub fn idle_unload(mut self, s: u32) -> Self {
        self.0.idle_unload_seconds = Some(s);
        self
    }
    /// No reset after a free.
    pub fn no_reset(mut self) -> Self {
        self.0.zombie.reset_after_free = false;
        self
    }
    /// The spec.
    pub fn build(self) -> GpuModelSpec {
        self.0
    }
}

/// Builds an observed status: reported at `t(0)`, nothing active, no ghost.
pub struct StatusBuilder(GpuModelStatus);

/// A status builder.
pub fn status() -> StatusBuilder {
    StatusBuilder(GpuModelStatus {
        device: Some(DeviceMemory {
            name: "cpu".into(),
            total_mib: 16_000,
            used_mib: 100,
            baseline_mib: 100,
            ghost_mib: 0,
        }),
        reported_at: Some(t(0).to_string()),
        ..Default::default()
    })
}

impl StatusBuilder {
    /// The active model.
    pub fn active(mut self, m: &str) -> Self {
        self.0.active_model = Some(m.into());
        self
    }
    /// The agent is busy.
    pub fn busy(mut self) -> Self {
        self.0.switching = true;
        self
    }
    /// Ghost memory, over its threshold since `t(since)`.
    pub fn ghost(mut self, mib: u64, since: Option<i64>) -> Self {
        if let Some(d) = self.0.device.as_mut() {
            d.ghost_mib = mib;
        }
        self.0.zombie_since = since.map(|s| t(s).to_string());
        self
    }
    /// `m` loaded, last used at `t(s)` (None: the agent does not report use).
    pub fn used(mut self, m: &str, s: Option<i64>) -> Self {
        self.0.models.retain(|r| r.name != m);
        self.0.models.push(ModelRecordStatus {
            name: m.into(),
            state: ModelState::Loaded,
            vram_mib: Some(40),
            ram_mib: Some(42),
            load_ms: Some(250),
            loads: 1,
            crashes: 0,
            last_loaded: Some(t(-3600).to_string()),
            last_unloaded: None,
            last_used: s.map(|s| t(s).to_string()),
        });
        self
    }
    /// The last switch was a plain unload of `m` with `trigger`.
    pub fn unloaded_by(mut self, m: &str, trigger: SwitchTrigger) -> Self {
        self.0.last_switch = Some(SwitchStatus {
            from: Some(m.into()),
            to: None,
            trigger,
            at: t(-10).to_string(),
            unload_ms: 12,
            load_ms: 0,
            vram_mib: None,
            ram_mib: None,
        });
        self
    }
    /// Never reported.
    pub fn unreported(mut self) -> Self {
        self.0.reported_at = None;
        self
    }
    /// A condition.
    pub fn condition(
        mut self,
        type_: &str,
        status: bool,
        reason: &str,
        generation: i64,
        at: i64,
    ) -> Self {
        self.0.conditions.retain(|c| c.type_ != type_);
        self.0.conditions.push(Condition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: t(at).to_string(),
            observed_generation: Some(generation),
        });
        self
    }
    /// Degraded since `t(at)`, set at `generation`: the ladder's typed memory and the
    /// condition that shows it.
    pub fn degraded(self, generation: i64, at: i64) -> Self {
        self.degraded_memory(generation, at).condition(
            DEGRADED,
            true,
            "ResetDidNotClear",
            generation,
            at,
        )
    }
    /// Only the ladder's typed memory of giving up at `generation`, since `t(at)`.
    pub fn degraded_memory(mut self, generation: i64, at: i64) -> Self {
        self.0.ladder.get_or_insert_default().degraded = Some(DegradedStatus {
            generation,
            reason: DegradedReason::ResetDidNotClear,
            message: "zombie memory persists after a free and a reset".into(),
            since: t(at).to_string(),
        });
        self
    }
    /// The ladder's typed memory of a Degraded lifted at `t(at)`.
    pub fn lifted(mut self, at: i64) -> Self {
        let l = self.0.ladder.get_or_insert_default();
        l.degraded = None;
        l.lifted_at = Some(t(at).to_string());
        self
    }
    /// The agent said at `t(0)`, at `generation`, that the model `nope` does not exist.
    pub fn unknown_model(mut self, generation: i64) -> Self {
        self.0.unknown_model = Some(UnknownModelStatus {
            model: "nope".into(),
            generation,
            at: t(0).to_string(),
            message: "the agent knows no model nope".into(),
        });
        self
    }
    /// The status.
    pub fn build(self) -> GpuModelStatus {
        self.0
    }
}

/// One planner call.
pub struct Case {
    /// The spec.
    pub spec: GpuModelSpec,
    /// Generation.
    pub generation: i64,
    /// Observed status.
    pub status: GpuModelStatus,
    /// Now.
    pub now: Timestamp,
    /// History.
    pub history: Vec<Remediation>,
    /// `unknown_model` answers in a row.
    pub unknown_failures: u32,
}

/// A case at `t(0)`, generation 1, no history.
pub fn case(spec: SpecBuilder, status: StatusBuilder) -> Case {
    Case {
        spec: spec.build(),
        generation: 1,
        status: status.build(),
        now: t(0),
        history: vec![],
        unknown_failures: 0,
    }
}

impl Case {
    /// Now is `t(s)` (and the agent reported then).
    pub fn at(mut self, s: i64) -> Self {
        self.now = t(s);
        self.status.reported_at = Some(t(s).to_string());
        self
    }
    /// Generation.
    pub fn generation(mut self, g: i64) -> Self {
        self.generation = g;
        self
    }
    /// History.
    pub fn history(mut self, h: &[Remediation]) -> Self {
        self.history = h.to_vec();
        self
    }
    /// `unknown_model` answers in a row.
    pub fn unknown_failures(mut self, n: u32) -> Self {
        self.unknown_failures = n;
        self
    }
    /// Plans.
    pub fn plan(&self) -> Plan {
        plan(&Input {
            spec: &self.spec,
            generation: self.generation,
            status: &self.status,
            now: self.now,
            history: &self.history,
            unknown_failures: self.unknown_failures,
        })
    }
}
