//! Loading, switching, unloading: unload before load, and what each step writes.

use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::json;

use super::*;

const LOADED_A: &str =
    "loaded tiny-a in 250 ms; it uses 40 MiB of device memory and 42 MiB of host memory";
const LOADED_B: &str =
    "loaded tiny-b in 250 ms; it uses 40 MiB of device memory and 42 MiB of host memory";
const LOADED_NOPE: &str =
    "loaded nope in 250 ms; it uses 40 MiB of device memory and 42 MiB of host memory";
const UNLOADED_A: &str = "unloaded tiny-a in 12 ms; memory came back to 100 MiB (target 100 MiB)";

#[tokio::test]
async fn loads_the_desired_model() {
    let mut w = world(device(), Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a");
    let status = with(
        owned("Ready", 1, calm("Done", T0)),
        "switchSummary",
        json!(LOADED_A),
    );
    let action = w
        .reconcile(
            &gm,
            vec![
                Call::Progress {
                    gm: gm.clone(),
                    phase: "Switching",
                    condition: ("Switching", "True", "Loading"),
                },
                Call::Event {
                    at: T0,
                    name: "gm-a",
                    type_: "Normal",
                    reason: "Loaded",
                    action: "Load",
                    note: LOADED_A.into(),
                },
                Call::Status(gm.clone(), status),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/models/switch",
            json!({"model": "tiny-a", "gpu": 0, "trigger": "spec"})
        )]
    );
}

#[tokio::test]
async fn in_sync_writes_nothing_and_calls_nothing() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    let mut w = world(d, Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a");
    let settled = owned("Ready", 1, calm("Idle", T0));
    w.reconcile(&gm, vec![Call::Status(gm.clone(), settled)])
        .await
        .unwrap();
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:05:00Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(w.agent.acts(), []);
}

#[tokio::test]
async fn a_new_model_is_loaded_only_after_the_old_one_is_unloaded() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    let mut w = world(d, Setup::default()).await;
    let gm = gpumodel("gm-a")
        .model("tiny-b")
        .generation(2)
        .status_of(&owned("Ready", 1, calm("Done", T0)));

    // First: the unload.
    w.at("2027-01-15T08:01:00Z");
    let t1 = "2027-01-15T08:01:00Z";
    let switching = owned(
        "Switching",
        2,
        vec![
            cond("Ready", false, "Switching", t1, 2),
            cond("Switching", true, "Unloading", t1, 2),
            cond("ZombieMemory", false, "BelowThreshold", T0, 2),
            cond("Degraded", false, "AsExpected", T0, 2),
        ],
    );
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Switching",
                condition: ("Switching", "True", "Unloading"),
            },
            Call::Event {
                at: "2027-01-15T08:01:00Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Unloaded",
                action: "Unload",
                note: UNLOADED_A.into(),
            },
            Call::Status(gm.clone(), switching.clone()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/models/unload",
            json!({"gpu": 0, "trigger": "spec"})
        )]
    );

    // Then: the load, once the status shows nothing active and no ghost.
    let gm = gm.status_of(&w.written());
    let t2 = "2027-01-15T08:01:01Z";
    w.at(t2);
    let ready = owned(
        "Ready",
        2,
        vec![
            cond("Ready", true, "ModelActive", t2, 2),
            cond("Switching", false, "Done", t2, 2),
            cond("ZombieMemory", false, "BelowThreshold", T0, 2),
            cond("Degraded", false, "AsExpected", T0, 2),
        ],
    );
    let ready = with(ready, "switchSummary", json!(LOADED_B));
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Switching",
                condition: ("Switching", "True", "Loading"),
            },
            Call::Event {
                at: "2027-01-15T08:01:01Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Loaded",
                action: "Load",
                note: LOADED_B.into(),
            },
            Call::Status(gm.clone(), ready),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        w.agent.acts(),
        [
            act("/v1/models/unload", json!({"gpu": 0, "trigger": "spec"})),
            act(
                "/v1/models/switch",
                json!({"model": "tiny-b", "gpu": 0, "trigger": "spec"})
            ),
        ]
    );
}

#[tokio::test]
async fn waits_for_the_memory_before_loading() {
    let mut d = device();
    haunt(&mut d, 2000.0, "2027-01-15T07:59:50Z");
    let mut w = world(d, Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a");
    let status = owned(
        "Switching",
        1,
        vec![
            cond("Ready", false, "Switching", T0, 1),
            cond("Switching", true, "WaitingForMemory", T0, 1),
            cond("ZombieMemory", false, "OverThreshold", T0, 1),
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    );
    let action = w
        .reconcile(&gm, vec![Call::Status(gm.clone(), status)])
        .await
        .unwrap();
    // Rechecks when the ghost would become zombie memory: 20 s from now.
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert_eq!(w.agent.acts(), []);
}

#[tokio::test]
async fn a_busy_agent_is_retried_soon_without_an_error() {
    let w0 = world(device(), Setup::default()).await;
    w0.agent.edit(|s| s.busy_answers = 1);
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a");
    let status = owned(
        "Switching",
        1,
        vec![
            cond("Ready", false, "Switching", T0, 1),
            cond("Switching", true, "AgentBusy", T0, 1),
            cond("ZombieMemory", false, "BelowThreshold", T0, 1),
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    );
    let action = w
        .reconcile(
            &gm,
            vec![
                Call::Progress {
                    gm: gm.clone(),
                    phase: "Switching",
                    condition: ("Switching", "True", "Loading"),
                },
                Call::Status(gm.clone(), status),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn an_unknown_model_fails_once_and_is_retried_when_the_catalog_lists_it() {
    let w0 = world(device(), Setup::default()).await;
    w0.agent.edit(|s| s.unknown = vec!["nope".into()]);
    let mut w = w0;
    let gm = gpumodel("gm-a").model("nope");
    let message = "unknown model \"nope\"; the catalog has: tiny-a, tiny-b";
    let failed = owned(
        "Failed",
        1,
        vec![
            cond("Ready", false, "UnknownModel", T0, 1),
            cond("Switching", false, "Idle", T0, 1),
            cond("ZombieMemory", false, "BelowThreshold", T0, 1),
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    );
    let failed = with(
        failed,
        "unknownModel",
        json!({"model": "nope", "generation": 1, "at": T0, "message": message}),
    );
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Switching",
                condition: ("Switching", "True", "Loading"),
            },
            Call::Event {
                at: T0,
                name: "gm-a",
                type_: "Warning",
                reason: "UnknownModel",
                action: "Load",
                note: message.into(),
            },
            Call::Status(gm.clone(), failed.clone()),
        ],
    )
    .await
    .unwrap();
    // Not retried at this generation: no agent call, nothing written.
    let gm = gm.status_of(&w.written());
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    // Rechecked every 300 s, capped by the longest recheck (30 s by default).
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(w.agent.acts().len(), 1);

    // The agent's catalog gains the model (its Pod rolled with a new catalog): retried once
    // the short retry delay has passed since the failure, without a spec change.
    w.agent.edit(|s| {
        s.unknown.clear();
        s.device.models.push(vramkeeper_crds::api::ModelRecord {
            footprint: None,
            name: "nope".into(),
            kind: "synthetic".into(),
            state: vramkeeper_crds::ModelState::NeverLoaded,
            vram_mb: None,
            ram_mb: None,
            expected_mb: None,
            load_ms: None,
            loads: 0,
            crashes: 0,
            hung: false,
            last_loaded: None,
            last_unloaded: None,
            last_trigger: None,
            pid: None,
            requests: 0,
            last_used: None,
        });
    });
    w.at("2027-01-15T08:00:02Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3)));
    let t5 = "2027-01-15T08:00:05Z";
    w.at(t5);
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Switching",
                condition: ("Switching", "True", "Loading"),
            },
            Call::Event {
                at: "2027-01-15T08:00:05Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Loaded",
                action: "Load",
                note: LOADED_NOPE.into(),
            },
            Call::Status(
                gm.clone(),
                with(
                    owned(
                        "Ready",
                        1,
                        vec![
                            cond("Ready", true, "ModelActive", t5, 1),
                            cond("Switching", false, "Done", t5, 1),
                            cond("ZombieMemory", false, "BelowThreshold", T0, 1),
                            cond("Degraded", false, "AsExpected", T0, 1),
                        ],
                    ),
                    "switchSummary",
                    json!(LOADED_NOPE),
                ),
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(w.agent.acts().len(), 2);
}

#[tokio::test]
async fn an_idle_model_is_unloaded_and_stays_unloaded_until_a_request_names_it() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    d.models = vec![vramkeeper_crds::api::ModelRecord {
        footprint: None,
        name: "tiny-a".into(),
        kind: "synthetic".into(),
        state: vramkeeper_crds::ModelState::Loaded,
        vram_mb: Some(40.0),
        ram_mb: Some(42.0),
        expected_mb: Some(40.0),
        load_ms: Some(250.0),
        loads: 1,
        crashes: 0,
        hung: false,
        last_loaded: Some(T0.into()),
        last_unloaded: None,
        last_trigger: Some(vramkeeper_crds::SwitchTrigger::Spec),
        pid: Some(4242),
        requests: 3,
        last_used: Some("2027-01-15T08:01:00Z".into()),
    }];
    let mut w = world(d, Setup::default()).await;
    let mut gm = gpumodel("gm-a").model("tiny-a");
    gm.spec.idle_unload_seconds = Some(300);
    let settled = owned("Ready", 1, calm("Idle", T0));
    w.reconcile(&gm, vec![Call::Status(gm.clone(), settled)])
        .await
        .unwrap();
    let gm = gm.status_of(&w.written());

    // 4 minutes after its last request: in sync, and a look again when it turns idle.
    w.at("2027-01-15T08:05:00Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    w.at("2027-01-15T08:05:50Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    assert_eq!(w.agent.acts(), []);

    // 5 minutes: unloaded with trigger idle; still Ready, saying why nothing is loaded.
    let t1 = "2027-01-15T08:06:00Z";
    w.at(t1);
    let note = format!(
        "{UNLOADED_A}; it served nothing for 300 s (idleUnloadSeconds), and the next inference request that names it loads it again"
    );
    let mut conditions = calm("Done", T0);
    conditions[0] = cond("Ready", true, "IdleUnloaded", T0, 1);
    // Switching was True (Unloading) while the agent worked: it changed at t1.
    conditions[1] = cond("Switching", false, "Done", t1, 1);
    let parked = with(owned("Ready", 1, conditions), "switchSummary", json!(note));
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Ready",
                condition: ("Switching", "True", "Unloading"),
            },
            Call::Event {
                at: t1,
                name: "gm-a",
                type_: "Normal",
                reason: "IdleUnloaded",
                action: "IdleUnload",
                note: note.clone(),
            },
            Call::Status(gm.clone(), parked.clone()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/models/unload",
            json!({"gpu": 0, "trigger": "idle"})
        )]
    );

    // Later: the operator does not load it back by itself, and writes nothing.
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:30:00Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(w.agent.acts().len(), 1);
}
