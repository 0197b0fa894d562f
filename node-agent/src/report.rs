//! Report: in a cluster, the agent writes what it observes into the status of its node's
//! GpuModels, by server-side apply under its own field manager (`vramkeeper-agent`).
//!
//! It owns the observation fields (`activeModel`, `switching`, `device`, `models`,
//! `ghostSources`, `zombieSince`, `lastSwitch`, `remediations`, `reportedAt`) and never writes
//! the operator's (`phase`, `observedGeneration`, `conditions`). A change of state (active
//! model, busy, zombie flag, a new switch or remediation, a model's state) is written at once;
//! changed figures at most every `min_interval`; an unchanged status every `heartbeat`, so
//! that `reportedAt` says the agent is alive.
//!
//! The same watch tells each device which GpuModel owns it (`device::ManagedBy`): an inference
//! request that would switch a GPU away from its GpuModel's model is refused.
//!
//! ```text
//!   Device::subscribe() --tick--> report loop --SSA status (vramkeeper-agent)--> GpuModel
//!   GpuModels (list/watch) ------^  (those with spec.nodeName == this node, by spec.gpu)
//! ```

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use vramkeeper_crds::{
    GpuModel, GpuModelStatus, RemediationStatus,
    api::{DeviceStatus, RemediationReport},
    observed::{self, merge_remediations},
    ownership::owner_of,
    whole_mib,
};

use crate::device::ManagedBy;

/// The field manager of the agent's status writes.
pub(crate) const FIELD_MANAGER: &str = "vramkeeper-agent";

// The permissions this module's calls need (list and watch GpuModels, patch their status)
// are `vramkeeper_crds::rbac::AGENT_RBAC_RULES`, which the chart grants: change both together.

/// How the reporter runs.
#[derive(Clone, Debug)]
pub(crate) struct ReportConfig {
    /// This node's name (`spec.nodeName` of the GpuModels it reports into).
    pub node_name: String,
    /// Changed figures are written at most this often.
    pub min_interval: Duration,
    /// An unchanged status is rewritten this often (`reportedAt`).
    pub heartbeat: Duration,
}

impl ReportConfig {
    /// Defaults: figures at most every 5 s, a heartbeat every 30 s.
    pub(crate) fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            min_interval: Duration::from_secs(5),
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// What the reporter reads: the devices' status, their remediations, and change ticks.
pub(crate) trait ReportSource: Send + Sync + 'static {
    /// Every device's status now.
    fn devices(&self) -> Vec<DeviceStatus>;
    /// The remediations of device `gpu` in the last hour, oldest first (read only when the
    /// device's last remediation changed).
    fn remediations(&self, gpu: u32) -> Vec<RemediationReport>;
    /// Receivers that tick whenever a device's state changes.
    fn changes(&self) -> Vec<watch::Receiver<u64>>;
    /// Says which GpuModel owns device `gpu` (none: no GpuModel names it).
    fn managed(&self, gpu: u32, by: Option<ManagedBy>);
}

/// Who owns device `gpu` of node `node` among `gpumodels`, by the operator's rule (the
/// oldest GpuModel naming it; [`vramkeeper_crds::ownership`]).
pub(crate) fn managed_by<'a>(
    gpumodels: impl IntoIterator<Item = &'a GpuModel>,
    node: &str,
    gpu: u32,
) -> Option<ManagedBy> {
    owner_of(gpumodels, node, gpu).map(|g| ManagedBy {
        gpumodel: g.name_any(),
        desired: g.spec.model.clone(),
        deleting: g.metadata.deletion_timestamp.is_some(),
    })
}

/// The agent's status fields for device `d`, as a server-side apply body. Empty lists and
/// absent values are left out: server-side apply then removes what the agent wrote before.
pub(crate) fn status_body(
    d: &DeviceStatus,
    remediations: &[RemediationReport],
    now: Timestamp,
) -> Value {
    let mut status = observed(d, remediations);
    status.reported_at = Some(now.to_string());
    // The operator's fields are empty here, and empty fields are not serialized: the agent
    // never claims them.
    json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "status": status,
    })
}

/// The agent's fields of the status for device `d`, its remediations of the last hour merged
/// with the latest (the operator reads them back the same way).
fn observed(d: &DeviceStatus, remediations: &[RemediationReport]) -> GpuModelStatus {
    GpuModelStatus {
        remediations: merge_remediations(
            remediations.iter().map(RemediationStatus::from),
            d.zombie.last_remediation.as_ref(),
        ),
        ..GpuModelStatus::observed(d)
    }
}

/// What, if it changes, is written at once: the observed state as crds defines it, and
/// whether the agent has flagged zombie memory.
type StateKey = (observed::StateKey, bool);

fn state_key(d: &DeviceStatus) -> StateKey {
    (observed(d, &[]).state_key(), d.zombie.flagged)
}

/// Figures that are written at most every `min_interval` when they change.
fn figures(d: &DeviceStatus) -> (u64, u64, Vec<(u64, u64)>) {
    (
        whole_mib(d.memory.used_mb),
        whole_mib(d.ghost.total_mb),
        d.models
            .iter()
            .map(|m| {
                (
                    m.vram_mb.map_or(0, whole_mib),
                    m.ram_mb.map_or(0, whole_mib),
                )
            })
            .collect(),
    )
}

struct Written {
    uid: String,
    at: Instant,
    key: StateKey,
    figures: (u64, u64, Vec<(u64, u64)>),
}

/// Whether a status must be written now.
fn due(
    last: Option<&Written>,
    uid: &str,
    d: &DeviceStatus,
    config: &ReportConfig,
    now: Instant,
) -> bool {
    let Some(last) = last.filter(|l| l.uid == uid) else {
        return true;
    };
    let since = now.duration_since(last.at);
    last.key != state_key(d)
        || (last.figures != figures(d) && since >= config.min_interval)
        || since >= config.heartbeat
}

/// Reports until `stop` fires.
pub(crate) async fn run(
    client: Client,
    source: Arc<dyn ReportSource>,
    config: ReportConfig,
    stop: CancellationToken,
) {
    let api: Api<GpuModel> = Api::all(client);
    let wake = Arc::new(Notify::new());
    let (store, writer) = reflector::store::<GpuModel>();
    let watching = {
        let wake = wake.clone();
        let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            stream
                .for_each(|event| {
                    if let Err(e) = event {
                        tracing::debug!(error = %e, "GpuModel watch");
                    }
                    wake.notify_one();
                    futures::future::ready(())
                })
                .await;
        })
    };
    for mut rx in source.changes() {
        let (wake, stop) = (wake.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        wake.notify_one();
                    }
                }
            }
        });
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut remediations: HashMap<u32, (Option<String>, Vec<RemediationReport>)> = HashMap::new();
    tracing::info!(node = %config.node_name, "reporting into GpuModel status");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let devices = source.devices();
        let known = store.state();
        for d in &devices {
            source.managed(
                d.gpu,
                managed_by(known.iter().map(|g| g.as_ref()), &config.node_name, d.gpu),
            );
        }
        let mine: Vec<Arc<GpuModel>> = known
            .into_iter()
            .filter(|g| {
                g.spec.node_name == config.node_name && g.metadata.deletion_timestamp.is_none()
            })
            .collect();
        written.retain(|name, _| mine.iter().any(|g| g.name_any() == *name));
        for gm in mine {
            let Some(d) = devices.iter().find(|d| d.gpu == gm.spec.gpu) else {
                continue;
            };
            let name = gm.name_any();
            let uid = gm.uid().unwrap_or_default();
            let now = Instant::now();
            if !due(written.get(&name), &uid, d, &config, now) {
                continue;
            }
            let last_at = d.zombie.last_remediation.as_ref().map(|r| r.at.clone());
            let cached = remediations.entry(d.gpu).or_insert((None, vec![]));
            if cached.0 != last_at {
                *cached = (last_at, source.remediations(d.gpu));
            }
            let body = status_body(d, &cached.1, Timestamp::now());
            match api.patch_status(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => {
                    written.insert(
                        name,
                        Written {
                            uid,
                            at: now,
                            key: state_key(d),
                            figures: figures(d),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(gpumodel = %name, error = %e, "cannot report into the status")
                }
            }
        }
    }
    watching.abort();
    for d in source.devices() {
        source.managed(d.gpu, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceStatus {
        serde_json::from_value(json!({
            "gpu": 0, "name": "cpu", "backend": "flex",
            "memory": {"total_mb": 16000.0, "used_mb": 400.4, "free_mb": 15599.6, "reserved_mb": 0.0, "baseline_mb": 100.0},
            "ghost": {"total_mb": 0.0, "sources": []},
            "zombie": {"flagged": false, "over_threshold_since": null, "threshold_mb": 1536.0, "persist_seconds": 30,
                       "auto_free": false, "next_auto_free_at": null, "last_remediation": null},
            "active_model": "tiny-a", "busy": false, "busy_with": null,
            "models": [{"name": "tiny-a", "kind": "synthetic", "state": "Loaded", "vram_mb": 300.2, "ram_mb": 310.0,
                        "expected_mb": 300.0, "load_ms": 120.0, "loads": 1, "last_loaded": "2027-01-01T00:00:00Z",
                        "last_unloaded": null, "last_trigger": "spec", "pid": 42, "requests": 0}],
            "last_switch": null, "implicit_switches": 0, "probe_error": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_body_holds_the_agents_fields_only() {
        let now: Timestamp = "2027-01-01T00:01:00Z".parse().unwrap();
        let body = status_body(&device(), &[], now);
        let status = body["status"].as_object().unwrap();
        let mut keys: Vec<&str> = status.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["activeModel", "device", "models", "reportedAt", "switching"]
        );
        assert_eq!(body["status"]["device"]["usedMiB"], 400);
        assert_eq!(body["status"]["models"][0]["vramMiB"], 300);
        for operator_owned in ["phase", "conditions", "observedGeneration"] {
            assert!(!status.contains_key(operator_owned));
        }
    }

    #[test]
    fn the_oldest_gpumodel_of_the_node_manages_its_gpu() {
        let gm = |name: &str, node: &str, model: Option<&str>, created: &str| -> GpuModel {
            serde_json::from_value(json!({
                "apiVersion": "vramkeeper.dev/v1alpha1", "kind": "GpuModel",
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"nodeName": node, "gpu": 0, "model": model},
            }))
            .unwrap()
        };
        let old = gm("old", "node-a", Some("tiny-a"), "2027-01-01T00:00:00Z");
        let new = gm("new", "node-a", Some("tiny-b"), "2027-01-01T00:00:10Z");
        let elsewhere = gm(
            "elsewhere",
            "node-b",
            Some("tiny-c"),
            "2026-01-01T00:00:00Z",
        );
        let all = [&new, &elsewhere, &old];
        let by = managed_by(all, "node-a", 0).unwrap();
        assert_eq!(
            by,
            ManagedBy {
                gpumodel: "old".into(),
                desired: Some("tiny-a".into()),
                deleting: false
            }
        );
        assert!(managed_by(all, "node-a", 1).is_none());
        assert!(managed_by([&elsewhere], "node-a", 0).is_none());
        let mut going = old.clone();
        going.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        assert!(managed_by([&going, &new], "node-a", 0).unwrap().deleting);
    }

    #[test]
    fn state_changes_are_due_at_once_figures_later() {
        let config = ReportConfig::new("node-a");
        let d = device();
        let t0 = Instant::now();
        let last = Written {
            uid: "u".into(),
            at: t0,
            key: state_key(&d),
            figures: figures(&d),
        };
        assert!(!due(Some(&last), "u", &d, &config, t0));
        assert!(due(Some(&last), "other-uid", &d, &config, t0));
        let mut busy = d.clone();
        busy.busy = true;
        assert!(due(Some(&last), "u", &busy, &config, t0));
        let mut grown = d.clone();
        grown.memory.used_mb += 50.0;
        assert!(!due(
            Some(&last),
            "u",
            &grown,
            &config,
            t0 + Duration::from_secs(1)
        ));
        assert!(due(
            Some(&last),
            "u",
            &grown,
            &config,
            t0 + config.min_interval
        ));
        assert!(due(Some(&last), "u", &d, &config, t0 + config.heartbeat));
    }
}
