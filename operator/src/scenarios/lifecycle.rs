//! The finalizer, deletion, a missing agent, the token Secret, errors and their backoff.

use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::json;

use super::*;
use crate::reconcile::error_policy;

#[tokio::test]
async fn the_finalizer_is_added_first() {
    let mut w = world(device(), Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a").unfinalized();
    let action = w
        .reconcile(&gm, vec![Call::AddFinalizer(gm.clone())])
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(w.agent.acts(), []);
}

#[tokio::test]
async fn deletion_unloads_the_model_then_removes_the_finalizer() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    let mut w = world(d, Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a").deleting();
    let action = w
        .reconcile(
            &gm,
            vec![
                Call::Event {
                    at: T0,
                    name: "gm-a",
                    type_: "Normal",
                    reason: "Unloaded",
                    action: "Finalize",
                    note: "deleted: unloaded tiny-a; memory came back to 100 MiB".into(),
                },
                Call::RemoveFinalizer(gm.clone()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/models/unload",
            json!({"gpu": 0, "trigger": "spec"})
        )]
    );
}

#[tokio::test]
async fn deletion_with_nothing_loaded_just_removes_the_finalizer() {
    let mut w = world(device(), Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a").deleting();
    w.reconcile(&gm, vec![Call::RemoveFinalizer(gm.clone())])
        .await
        .unwrap();
    assert_eq!(w.agent.acts(), []);
}

#[tokio::test]
async fn deletion_without_an_agent_on_the_node_removes_the_finalizer() {
    let mut w = world(
        device(),
        Setup {
            no_pod: true,
            ..Default::default()
        },
    )
    .await;
    let gm = gpumodel("gm-a").model("tiny-a").deleting();
    w.reconcile(&gm, vec![Call::RemoveFinalizer(gm.clone())])
        .await
        .unwrap();
}

#[tokio::test]
async fn deletion_waits_for_a_busy_agent() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    let w0 = world(d, Setup::default()).await;
    w0.agent.edit(|s| s.busy_answers = 1);
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a").deleting();
    // The finalizer stays: no call to the apiserver; the busy answer is retried soon.
    let error = w.reconcile(&gm, vec![]).await.unwrap_err();
    assert!(error.is_busy(), "{error}");
    let action = error_policy(std::sync::Arc::new(gm.clone()), &error, w.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    w.reconcile(
        &gm,
        vec![
            Call::Event {
                at: T0,
                name: "gm-a",
                type_: "Normal",
                reason: "Unloaded",
                action: "Finalize",
                note: "deleted: unloaded tiny-a; memory came back to 100 MiB".into(),
            },
            Call::RemoveFinalizer(gm.clone()),
        ],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_missing_agent_is_reported_and_rechecked() {
    let mut w = world(
        device(),
        Setup {
            no_pod: true,
            ..Default::default()
        },
    )
    .await;
    let gm = gpumodel("gm-a").model("tiny-a");
    let status = json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "status": {
            "phase": "Pending",
            "conditions": [
                cond("Ready", false, "AgentNotFound", T0, 1),
                cond("Switching", false, "AgentNotFound", T0, 1),
                {
                    "type": "ZombieMemory", "status": "Unknown", "reason": "AgentSilent",
                    "lastTransitionTime": T0,
                    "observedGeneration": 1,
                },
                {
                    "type": "Degraded", "status": "Unknown", "reason": "AgentSilent",
                    "lastTransitionTime": T0,
                    "observedGeneration": 1,
                },
            ],
        },
    });
    let action = w
        .reconcile(&gm, vec![Call::Status(gm.clone(), status)])
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn the_token_comes_from_the_secret_and_is_cached() {
    let w0 = world(
        device(),
        Setup {
            token_secret: true,
            ..Default::default()
        },
    )
    .await;
    w0.agent.edit(|s| s.token = Some("s3cret".into()));
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a");
    let loaded =
        "loaded tiny-a in 250 ms; it uses 40 MiB of device memory and 42 MiB of host memory";
    let status = with(
        owned("Ready", 1, calm("Done", T0)),
        "switchSummary",
        json!(loaded),
    );
    w.reconcile(
        &gm,
        vec![
            Call::GetSecret {
                name: "agent-token",
                token: "s3cret",
            },
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
                note: loaded.into(),
            },
            Call::Status(gm.clone(), status.clone()),
        ],
    )
    .await
    .unwrap();
    // Cached: the next reconcile reads no Secret.
    let gm = gm.status_of(&w.written());
    w.reconcile(&gm, vec![]).await.unwrap();
}

/// The calls of a reconcile whose first load the agent refused: progress, a Warning event
/// (`event_reason`) with the agent's words, and the status Failed with Ready's `ready_reason`.
fn refused_load(
    gm: &GpuModel,
    ready_reason: &str,
    event_reason: &'static str,
    error: &str,
) -> Vec<Call> {
    let status = owned(
        "Failed",
        1,
        vec![
            cond("Ready", false, ready_reason, T0, 1),
            cond("Switching", true, "Loading", T0, 1),
            cond("ZombieMemory", false, "BelowThreshold", T0, 1),
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    );
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
            reason: event_reason,
            action: "Load",
            note: error.to_string(),
        },
        Call::Status(gm.clone(), status),
    ]
}

#[tokio::test]
async fn agent_errors_back_off_exponentially_and_are_counted() {
    let w0 = world(device(), Setup::default()).await;
    w0.agent.edit(|s| s.fail_with = Some(500));
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a");
    let error = format!(
        "agent {} answered 500 (internal): the worker crashed",
        w.agent.url
    );
    let e = w
        .reconcile(&gm, refused_load(&gm, "StepFailed", "SwitchFailed", &error))
        .await
        .unwrap_err();
    assert_eq!(e.metric_label(), "agent_rejected");
    let gm = std::sync::Arc::new(gm);
    let delays: Vec<Action> = (0..4)
        .map(|_| error_policy(gm.clone(), &e, w.ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    let metrics = w.ctx.metrics.render();
    assert!(
        metrics.contains("vramkeeper_operator_reconcile_errors_total{error=\"agent_rejected\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("vramkeeper_operator_agent_calls_total{action=\"load\",result=\"error\"} 1")
    );
}

#[tokio::test]
async fn a_load_the_agent_has_no_room_for_is_insufficient_memory_with_its_figures() {
    let w0 = world(device(), Setup::default()).await;
    let words = "tiny-a needs 2310 MiB on device 0 (estimated footprint plus headroom), but 900 \
                 MiB is free and the models that may make way for it hold 700 MiB (0 MiB more is \
                 held by models that stay: pinned or serving); nothing was changed";
    w0.agent.edit(|s| s.no_room = Some(words.into()));
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a");
    let error = format!(
        "agent {} answered 409 (insufficient_memory): {words}",
        w.agent.url
    );
    let e = w
        .reconcile(
            &gm,
            refused_load(&gm, "InsufficientMemory", "InsufficientMemory", &error),
        )
        .await
        .unwrap_err();
    // Retried with backoff, like any refusal: memory may come back.
    assert_eq!(e.metric_label(), "agent_rejected");
    let ready = &w.written()["status"]["conditions"][0];
    assert_eq!(ready["message"], format!("load failed: {error}"), "{ready}");
}

#[tokio::test]
async fn a_deletion_the_agent_cannot_finish_says_why_once() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    let w0 = world(d, Setup::default()).await;
    w0.agent.edit(|s| s.fail_with = Some(500));
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a").deleting();
    let message = format!(
        "deletion waits: the model on GPU 0 of node node-a could not be unloaded (agent {} answered 500 (internal): the worker crashed); it finishes once the agent unloads it, or once no agent Pod runs on the node",
        w.agent.url
    );
    let blocked = json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "status": {
            "phase": "Pending",
            "conditions": [
                cond("Ready", false, "Terminating", T0, 1),
                cond("Terminating", true, "UnloadBlocked", T0, 1),
            ],
        },
    });
    let e = w
        .reconcile(
            &gm,
            vec![
                Call::Event {
                    at: T0,
                    name: "gm-a",
                    type_: "Warning",
                    reason: "DeletionBlocked",
                    action: "Finalize",
                    note: message.clone(),
                },
                Call::Status(gm.clone(), blocked.clone()),
            ],
        )
        .await
        .unwrap_err();
    assert!(!e.is_busy());
    // Still blocked a minute later: the same words, no second Warning, nothing rewritten.
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:01:00Z");
    w.reconcile(&gm, vec![]).await.unwrap_err();
    // The agent recovers: the unload runs and the finalizer goes.
    w.agent.edit(|s| s.fail_with = None);
    w.reconcile(
        &gm,
        vec![
            Call::Event {
                at: "2027-01-15T08:01:00Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Unloaded",
                action: "Finalize",
                note: "deleted: unloaded tiny-a; memory came back to 100 MiB".into(),
            },
            Call::RemoveFinalizer(gm.clone()),
        ],
    )
    .await
    .unwrap();
}
