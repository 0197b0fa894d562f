//! Zombie memory: free, then (after the cooldown) reset, then Degraded with a Warning, then no
//! automatic action until the ghost clears.

use std::time::Duration;

use kube::runtime::controller::Action;
use serde_json::json;

use super::*;

const SINCE: &str = "2027-01-15T07:00:00Z";

fn zombie(reason: &str, at: &str) -> Value {
    cond("ZombieMemory", true, reason, at, 1)
}

fn remediating(zombie_cond: Value) -> Value {
    owned(
        "Remediating",
        1,
        vec![
            cond("Ready", false, "ZombieMemory", T0, 1),
            cond("Switching", false, "Idle", T0, 1),
            zombie_cond,
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    )
}

/// `body` with the ladder's memory `ladder`.
fn with_ladder(body: Value, ladder: Value) -> Value {
    with(body, "ladder", ladder)
}

#[tokio::test]
async fn free_then_reset_then_degraded_then_hands_off() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    haunt(&mut d, 2000.0, SINCE);
    let mut w = world(d, Setup::default()).await;
    let gm = gpumodel("gm-a").model("tiny-a");
    let freed = "freed: ghost memory 2000 -> 2000 MiB, 0 processes ended";

    // 08:00:00 - zombie memory since 07:00: free.
    let after_free = json!({"episodeSince": SINCE, "attempts": 1, "lastFree": T0});
    let s1 = with_ladder(remediating(zombie("Freeing", T0)), after_free.clone());
    let action = w
        .reconcile(
            &gm,
            vec![
                Call::Event {
                    at: T0,
                    name: "gm-a",
                    type_: "Warning",
                    reason: "ZombieMemory",
                    action: "Detect",
                    note: format!(
                        "ghost memory 2000 MiB over the 1536 MiB threshold since {SINCE}: freeing"
                    ),
                },
                Call::Progress {
                    gm: gm.clone(),
                    phase: "Remediating",
                    condition: ("ZombieMemory", "True", "Freeing"),
                },
                Call::Event {
                    at: T0,
                    name: "gm-a",
                    type_: "Normal",
                    reason: "Freed",
                    action: "Free",
                    note: freed.into(),
                },
                Call::Status(gm.clone(), s1.clone()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_millis(500)));

    // 08:00:30 - inside the 60 s cooldown: no action; the condition says what comes next.
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:00:30Z");
    let s2 = with_ladder(remediating(zombie("CoolingDown", T0)), after_free);
    let action = w
        .reconcile(&gm, vec![Call::Status(gm.clone(), s2.clone())])
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));

    // 08:01:00 - the ghost is still there: reset.
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:01:00Z");
    w.agent
        .edit(|s| s.remediation_at = "2027-01-15T08:01:00Z".into());
    let reset = "reset: ghost memory 2000 -> 2000 MiB, 0 processes ended, tiny-a reloaded, not back at baseline";
    let after_reset = json!({
        "episodeSince": SINCE,
        "attempts": 2,
        "lastFree": T0,
        "lastReset": "2027-01-15T08:01:00Z",
        "resets": ["2027-01-15T08:01:00Z"],
    });
    let s3 = with_ladder(remediating(zombie("Resetting", T0)), after_reset.clone());
    w.reconcile(
        &gm,
        vec![
            Call::Progress {
                gm: gm.clone(),
                phase: "Remediating",
                condition: ("ZombieMemory", "True", "Resetting"),
            },
            Call::Event {
                at: "2027-01-15T08:01:00Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Reset",
                action: "Reset",
                note: reset.into(),
            },
            Call::Status(gm.clone(), s3.clone()),
        ],
    )
    .await
    .unwrap();

    // 08:02:00 - still there after the cooldown: Degraded, with a Warning.
    let gm = gm.status_of(&w.written());
    let t4 = "2027-01-15T08:02:00Z";
    w.at(t4);
    let degraded = cond("Degraded", true, "ResetDidNotClear", t4, 1);
    // The ladder remembers that it gave up, and the condition is built from that memory.
    let mut gave_up = after_reset.clone();
    gave_up["degraded"] = json!({
        "generation": 1,
        "reason": "ResetDidNotClear",
        "message": "zombie memory persists after a free and a reset; no more automatic action until the ghost clears or the spec changes",
        "since": t4,
    });
    let s4 = with_ladder(
        owned(
            "Degraded",
            1,
            vec![
                cond("Ready", false, "ZombieMemory", T0, 1),
                cond("Switching", false, "Idle", T0, 1),
                zombie("ZombieMemory", T0),
                degraded.clone(),
            ],
        ),
        gave_up.clone(),
    );
    w.reconcile(
        &gm,
        vec![
            Call::Event {
 at: "2027-01-15T08:02:00Z",
                name: "gm-a",
                type_: "Warning",
                reason: "Degraded",
                action: "MarkDegraded",
                note: "zombie memory persists after a free and a reset; no more automatic action until the ghost clears or the spec changes".into(),
            },
            Call::Status(gm.clone(), s4.clone()),
        ],
    )
    .await
    .unwrap();

    // 08:30:00 - Degraded: no call to the agent, nothing written.
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:30:00Z");
    let action = w.reconcile(&gm, vec![]).await.unwrap();
    // Degraded is rechecked every 60 s, capped by the longest recheck (30 s by default).
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(
        w.agent.acts(),
        [
            act(
                "/v1/gpu/free",
                json!({"gpu": 0, "trigger": "operator", "kill_foreign": false}),
            ),
            act(
                "/v1/gpu/reset",
                json!({"gpu": 0, "trigger": "operator", "kill_foreign": false}),
            ),
        ]
    );

    // 08:31:00 - the ghost cleared (someone ended the process). Hysteresis: Degraded holds
    // until the ghost has stayed under the threshold for persistSeconds (30 s).
    w.agent.edit(|s| {
        s.device.ghost = Default::default();
        s.device.zombie.over_threshold_since = None;
    });
    let t5 = "2027-01-15T08:31:00Z";
    w.at(t5);
    let mut below = gave_up.clone();
    below["belowSince"] = json!(t5);
    let s5 = with_ladder(
        owned(
            "Degraded",
            1,
            vec![
                cond("Ready", false, "ZombieMemory", T0, 1),
                cond("Switching", false, "Idle", T0, 1),
                cond("ZombieMemory", false, "BelowThreshold", t5, 1),
                degraded,
            ],
        ),
        below,
    );
    w.reconcile(&gm, vec![Call::Status(gm.clone(), s5.clone())])
        .await
        .unwrap();

    // 08:31:30 - under for persistSeconds: the episode is over. Ready again, Recovered; the
    // reset budget stays for the hour, and the ladder remembers when Degraded was lifted.
    let gm = gm.status_of(&w.written());
    let t6 = "2027-01-15T08:31:30Z";
    w.at(t6);
    let s6 = owned(
        "Ready",
        1,
        vec![
            cond("Ready", true, "ModelActive", t6, 1),
            cond("Switching", false, "Idle", T0, 1),
            cond("ZombieMemory", false, "BelowThreshold", t5, 1),
            cond("Degraded", false, "AsExpected", t6, 1),
        ],
    );
    let s6 = with_ladder(
        s6,
        json!({
            "lastFree": T0,
            "lastReset": "2027-01-15T08:01:00Z",
            "resets": ["2027-01-15T08:01:00Z"],
            "liftedAt": t6,
        }),
    );
    w.reconcile(
        &gm,
        vec![
            Call::Event {
                at: "2027-01-15T08:31:30Z",
                name: "gm-a",
                type_: "Normal",
                reason: "Recovered",
                action: "Recover",
                note: "no longer Degraded: the ghost cleared or the spec changed".into(),
            },
            Call::Status(gm.clone(), s6),
        ],
    )
    .await
    .unwrap();
    assert_eq!(w.agent.acts().len(), 2);
}

#[tokio::test]
async fn a_free_that_clears_ends_the_ladder() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    haunt(&mut d, 2000.0, SINCE);
    let w0 = world(d, Setup::default()).await;
    w0.agent.edit(|s| s.free_clears = true);
    let mut w = w0;
    // This GpuModel's policy lets free end foreign processes: the agent is told so.
    let mut gm = gpumodel("gm-a").model("tiny-a");
    gm.spec.zombie.kill_foreign_processes = true;
    let freed = "freed: ghost memory 2000 -> 0 MiB, 0 processes ended";
    let ladder = json!({"episodeSince": SINCE, "attempts": 1, "lastFree": T0});
    let s1 = with_ladder(remediating(zombie("Freeing", T0)), ladder.clone());
    w.reconcile(
        &gm,
        vec![
            Call::Event {
                at: T0,
                name: "gm-a",
                type_: "Warning",
                reason: "ZombieMemory",
                action: "Detect",
                note: format!(
                    "ghost memory 2000 MiB over the 1536 MiB threshold since {SINCE}: freeing"
                ),
            },
            Call::Progress {
                gm: gm.clone(),
                phase: "Remediating",
                condition: ("ZombieMemory", "True", "Freeing"),
            },
            Call::Event {
                at: T0,
                name: "gm-a",
                type_: "Normal",
                reason: "Freed",
                action: "Free",
                note: freed.into(),
            },
            Call::Status(gm.clone(), s1.clone()),
        ],
    )
    .await
    .unwrap();
    let gm = gm.status_of(&w.written());
    let t2 = "2027-01-15T08:00:01Z";
    w.at(t2);
    let s2 = owned(
        "Ready",
        1,
        vec![
            cond("Ready", true, "ModelActive", t2, 1),
            cond("Switching", false, "Idle", T0, 1),
            cond("ZombieMemory", false, "BelowThreshold", t2, 1),
            cond("Degraded", false, "AsExpected", T0, 1),
        ],
    );
    // The episode stays open until the ghost has been under the threshold for 30 s.
    let mut below = ladder.clone();
    below["belowSince"] = json!(t2);
    let s2 = with_ladder(s2, below);
    w.reconcile(&gm, vec![Call::Status(gm.clone(), s2.clone())])
        .await
        .unwrap();
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/gpu/free",
            json!({"gpu": 0, "trigger": "operator", "kill_foreign": true})
        )]
    );

    // 08:00:31 - under for 30 s: the episode ends (only the last free is remembered).
    let gm = gm.status_of(&w.written());
    w.at("2027-01-15T08:00:31Z");
    let mut s3 = s2.clone();
    s3["status"]["ladder"] = json!({"lastFree": T0});
    w.reconcile(&gm, vec![Call::Status(gm.clone(), s3)])
        .await
        .unwrap();
    assert_eq!(w.agent.acts().len(), 1);
}

#[tokio::test]
async fn a_ghost_back_after_a_free_cleared_it_once_escalates_to_a_reset() {
    let mut d = device();
    d.active_model = Some("tiny-a".into());
    haunt(&mut d, 2000.0, SINCE);
    let w0 = world(d, Setup::default()).await;
    w0.agent.edit(|s| s.free_clears = true);
    let mut w = w0;
    let gm = gpumodel("gm-a").model("tiny-a");
    let ladder = json!({"episodeSince": SINCE, "attempts": 1, "lastFree": T0});
    let s1 = with_ladder(remediating(zombie("Freeing", T0)), ladder.clone());
    let gm = gm.status_of(&s1);
    // 08:00:10 - the ghost was under the threshold for one sample, and is back, and the agent
    // (without hysteresis) reports a fresh zombieSince: the same episode all the same.
    w.agent
        .edit(|s| haunt(&mut s.device, 2000.0, "2027-01-15T08:00:09Z"));
    w.at("2027-01-15T08:00:10Z");
    let mut l2 = ladder.clone();
    l2["belowSince"] = json!("2027-01-15T08:00:05Z");
    let gm = gm.status_of(&with_ladder(s1.clone(), l2));
    let action = w
        .reconcile(
            &gm,
            vec![Call::Status(
                gm.clone(),
                with_ladder(remediating(zombie("CoolingDown", T0)), ladder.clone()),
            )],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    // 08:01:00 - after the cooldown: a reset, not a second free.
    w.at("2027-01-15T08:01:00Z");
    w.agent
        .edit(|s| s.remediation_at = "2027-01-15T08:01:00Z".into());
    let r = w
        .reconcile(
            &gm,
            vec![
                Call::Progress {
                    gm: gm.clone(),
                    phase: "Remediating",
                    condition: ("ZombieMemory", "True", "Resetting"),
                },
                Call::Event {
                    at: "2027-01-15T08:01:00Z",
                    name: "gm-a",
                    type_: "Normal",
                    reason: "Reset",
                    action: "Reset",
                    note: "reset: ghost memory 2000 -> 2000 MiB, 0 processes ended, tiny-a reloaded, not back at baseline".into(),
                },
                Call::Progress {
                    gm: gm.clone(),
                    phase: "Remediating",
                    condition: ("ZombieMemory", "True", "Resetting"),
                },
            ],
        )
        .await;
    assert!(r.is_ok());
    assert_eq!(
        w.agent.acts(),
        [act(
            "/v1/gpu/reset",
            json!({"gpu": 0, "trigger": "operator", "kill_foreign": false})
        )]
    );
}
