//! Per-model records, the switch and remediation history, and the memory history of a device:
//! everything that survives a restart through the state file.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use vramkeeper_crds::{
    ModelState, SwitchTrigger,
    api::{Footprint, RemediationReport, SwitchRecord},
};

use crate::history::History;

/// Switches kept.
pub(crate) const SWITCH_HISTORY: usize = 200;
/// Frees and resets kept.
pub(crate) const REMEDIATION_HISTORY: usize = 50;

/// What is known of one model on one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelRecord {
    /// Times loaded.
    pub loads: u64,
    /// Device memory measured right after load and cleanup: the model's footprint, fixed at
    /// load. Growth after it is ghost (worker growth), never folded in here.
    pub vram_bytes: Option<u64>,
    /// Host memory of its worker right after load.
    pub ram_bytes: Option<u64>,
    /// Device memory right after load and cleanup.
    pub expected_bytes: Option<u64>,
    /// Milliseconds its last load took.
    pub load_ms: Option<f64>,
    /// When it was last loaded.
    pub last_loaded: Option<Timestamp>,
    /// When it was last unloaded.
    pub last_unloaded: Option<Timestamp>,
    /// What triggered its last load.
    pub last_trigger: Option<SwitchTrigger>,
    /// Times its worker exited on its own while loaded.
    #[serde(default)]
    pub crashes: u64,
    /// What its footprint is made of, as measured after its last load.
    #[serde(default)]
    pub footprint: Option<Footprint>,
}

impl ModelRecord {
    /// Loaded, Unloaded or NeverLoaded, given whether it is loaded now.
    pub(crate) fn state(&self, loaded: bool) -> ModelState {
        match (loaded, self.loads) {
            (true, _) => ModelState::Loaded,
            (false, 0) => ModelState::NeverLoaded,
            (false, _) => ModelState::Unloaded,
        }
    }
}

/// A worker this agent started, kept in the state file: its pid and start time name the
/// process for good, so a restarted agent knows its orphans (and the models they served)
/// without trusting anything the process says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpawnRecord {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat`).
    pub start_ticks: u64,
    /// The agent run that started it.
    pub instance: String,
    /// The model it was started for.
    pub model: String,
    /// Its number in that run: the marker of everything it started (absent in records of
    /// older agents).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Everything tracked for one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracker {
    /// Records by model name.
    pub models: BTreeMap<String, ModelRecord>,
    /// Finished switches, oldest first.
    pub switches: VecDeque<SwitchRecord>,
    /// Frees and resets, oldest first.
    pub remediations: VecDeque<RemediationReport>,
    /// Switches made by inference calls.
    pub implicit_switches: u64,
    /// Memory history.
    pub history: History,
    /// The model that was active when the state was written.
    pub active_model: Option<String>,
    /// Workers started and not yet reaped.
    #[serde(default)]
    pub spawned: Vec<SpawnRecord>,
}

impl Tracker {
    /// The record of a model (created empty on first use).
    pub(crate) fn record(&mut self, model: &str) -> &mut ModelRecord {
        self.models.entry(model.to_string()).or_default()
    }

    /// Records a model as loaded with its measured figures.
    pub(crate) fn loaded(
        &mut self,
        model: &str,
        trigger: SwitchTrigger,
        vram: u64,
        ram: u64,
        load_ms: f64,
        now: Timestamp,
    ) {
        let r = self.record(model);
        r.loads += 1;
        r.vram_bytes = Some(vram);
        r.ram_bytes = Some(ram);
        r.expected_bytes = Some(vram);
        r.load_ms = Some(load_ms);
        r.last_loaded = Some(now);
        r.last_trigger = Some(trigger);
        self.active_model = Some(model.to_string());
        if trigger == SwitchTrigger::Auto {
            self.implicit_switches += 1;
        }
    }

    /// Records that a loaded model's worker exited on its own: the model is unloaded.
    pub(crate) fn crashed(&mut self, model: &str, now: Timestamp) {
        self.record(model).crashes += 1;
        self.unloaded(model, now);
    }

    /// Records a model as unloaded (its last figures stay).
    pub(crate) fn unloaded(&mut self, model: &str, now: Timestamp) {
        self.record(model).last_unloaded = Some(now);
        if self.active_model.as_deref() == Some(model) {
            self.active_model = None;
        }
    }

    /// Records a worker just started.
    pub(crate) fn spawned(&mut self, record: SpawnRecord) {
        self.spawned.retain(|r| r.pid != record.pid);
        self.spawned.push(record);
    }

    /// Forgets a worker that was reaped.
    pub(crate) fn reaped(&mut self, pid: u32) {
        self.spawned.retain(|r| r.pid != pid);
    }

    /// The record of the process `pid` that started at `start_ticks`, if this agent started it.
    pub(crate) fn spawn_of(&self, pid: u32, start_ticks: Option<u64>) -> Option<&SpawnRecord> {
        let start = start_ticks?;
        self.spawned
            .iter()
            .find(|r| r.pid == pid && r.start_ticks == start)
    }

    /// Appends a switch.
    pub(crate) fn push_switch(&mut self, record: SwitchRecord) {
        if self.switches.len() == SWITCH_HISTORY {
            self.switches.pop_front();
        }
        self.switches.push_back(record);
    }

    /// Appends a free or reset.
    pub(crate) fn push_remediation(&mut self, report: RemediationReport) {
        if self.remediations.len() == REMEDIATION_HISTORY {
            self.remediations.pop_front();
        }
        self.remediations.push_back(report);
    }

    /// After a restart: the worker of the model that was active belongs to the earlier run
    /// (an orphan now), so no model is loaded; its record keeps its figures.
    pub(crate) fn restarted(&mut self, now: Timestamp) {
        if let Some(model) = self.active_model.take() {
            self.record(&model).last_unloaded = Some(now);
        }
    }

    /// What the state file keeps (the fine history is not worth the writes).
    pub(crate) fn for_state_file(&self) -> Tracker {
        Tracker {
            history: self.history.coarse_only(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_move_through_the_three_states() {
        let mut t = Tracker::default();
        let now = Timestamp::now();
        assert_eq!(t.record("a").state(false), ModelState::NeverLoaded);
        t.loaded("a", SwitchTrigger::Auto, 100, 120, 5.0, now);
        assert_eq!(t.models["a"].state(true), ModelState::Loaded);
        assert_eq!(t.implicit_switches, 1);
        t.unloaded("a", now);
        let r = &t.models["a"];
        assert_eq!(r.state(false), ModelState::Unloaded);
        assert_eq!(
            (r.vram_bytes, r.expected_bytes, r.loads),
            (Some(100), Some(100), 1)
        );
        assert_eq!(t.active_model, None);
    }

    #[test]
    fn a_restart_turns_the_active_model_into_an_unloaded_one() {
        let mut t = Tracker::default();
        t.loaded("a", SwitchTrigger::Api, 100, 120, 5.0, Timestamp::now());
        t.restarted(Timestamp::now());
        assert_eq!(t.active_model, None);
        assert_eq!(t.models["a"].state(false), ModelState::Unloaded);
    }
}
