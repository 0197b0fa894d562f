//! A scripted stand-in for the node agent's HTTP API (the real agent runs in the end-to-end
//! tests): it answers from a `DeviceStatus` the test sets, applies acting calls to it, and
//! records every call.

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use vramkeeper_crds::{
    ModelState, SwitchTrigger,
    api::{
        AgentInfo, DeviceMemoryReport, DeviceStatus, GhostReport, GhostSource, ModelRecord,
        ReleaseReport, RemediationAction, RemediationReport, RemediationTrigger, StatusResponse,
        SwitchRecord, SwitchResponse, UnloadResponse, ZombieStatus,
    },
};

/// What the fake agent holds and how it answers.
pub struct Script {
    /// Its one device.
    pub device: DeviceStatus,
    /// Models it says do not exist.
    pub unknown: Vec<String>,
    /// Answer this many acting calls with 409 busy.
    pub busy_answers: u32,
    /// Answer acting calls with this status (a broken agent).
    pub fail_with: Option<u16>,
    /// Answer switches with 409 `insufficient_memory` and these words (no room).
    pub no_room: Option<String>,
    /// The token acting calls must carry.
    pub token: Option<String>,
    /// The time a free or reset reports.
    pub remediation_at: String,
    /// Whether a free clears the ghost.
    pub free_clears: bool,
    /// Whether a reset clears the ghost.
    pub reset_clears: bool,
    /// Every call: `METHOD path`, the body.
    pub calls: Vec<(String, Value)>,
}

/// A running fake agent.
pub struct FakeAgent {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its script and record.
    pub script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A device: CPU, 100 MiB baseline, nothing loaded, no ghost.
pub fn device() -> DeviceStatus {
    DeviceStatus {
        gpu: 0,
        name: "cpu".into(),
        backend: "flex".into(),
        memory: DeviceMemoryReport {
            total_mb: 16_000.0,
            used_mb: 100.0,
            free_mb: 15_900.0,
            reserved_mb: 0.0,
            baseline_mb: 100.0,
        },
        ghost: GhostReport::default(),
        zombie: ZombieStatus {
            flagged: false,
            over_threshold_since: None,
            threshold_mb: 100.0,
            persist_seconds: 30,
            auto_free: false,
            next_auto_free_at: None,
            last_remediation: None,
        },
        active_model: None,
        busy: false,
        busy_with: None,
        queued: vec![],
        models: vec![],
        last_switch: None,
        implicit_switches: 0,
        probe_error: None,
    }
}

/// Sets a ghost on `d`, over the threshold since `since`.
pub fn haunt(d: &mut DeviceStatus, mb: f64, since: &str) {
    d.ghost = GhostReport {
        total_mb: mb,
        sources: vec![GhostSource {
            kind: vramkeeper_crds::GhostSourceKind::WorkerGrowth,
            mb,
            pid: Some(4242),
            name: d.active_model.clone(),
            reason: None,
        }],
    };
    d.zombie.flagged = true;
    d.zombie.over_threshold_since = Some(since.into());
}

impl FakeAgent {
    /// Starts one on 127.0.0.1.
    pub async fn start(device: DeviceStatus) -> FakeAgent {
        let script = Arc::new(Mutex::new(Script {
            device,
            unknown: vec![],
            busy_answers: 0,
            fail_with: None,
            no_room: None,
            token: None,
            remediation_at: "2027-01-15T08:00:00Z".into(),
            free_clears: false,
            reset_clears: false,
            calls: vec![],
        }));
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/models/switch", post(switch))
            .route("/v1/models/unload", post(unload))
            .route("/v1/gpu/free", post(free))
            .route("/v1/gpu/reset", post(reset))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeAgent { url, script, task }
    }

    /// The acting calls so far (`POST path`, body), reads left out.
    pub fn acts(&self) -> Vec<(String, Value)> {
        self.script
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(c, _)| c.starts_with("POST"))
            .cloned()
            .collect()
    }

    /// Changes the script.
    pub fn edit(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }
}

type S = State<Arc<Mutex<Script>>>;

fn error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Records the call; answers the refusal the script asks for, if any.
fn admit(s: &mut Script, path: &str, headers: &HeaderMap, body: &Value) -> Option<Response> {
    s.calls.push((format!("POST {path}"), body.clone()));
    if let Some(token) = &s.token {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return Some(error(
                401,
                "unauthorized",
                "this route needs the agent's bearer token",
            ));
        }
    }
    if let Some(status) = s.fail_with {
        return Some(error(status, "internal", "the worker crashed"));
    }
    if let (Some(words), "/v1/models/switch") = (&s.no_room, path) {
        return Some(error(409, "insufficient_memory", words));
    }
    if s.busy_answers > 0 {
        s.busy_answers -= 1;
        return Some(error(
            409,
            "busy",
            "device 0 is busy: loading (running for 1.0 s)",
        ));
    }
    None
}

async fn status(State(s): S) -> Json<StatusResponse> {
    let mut s = s.lock().unwrap();
    s.calls.push(("GET /v1/status".into(), Value::Null));
    Json(StatusResponse {
        agent: AgentInfo {
            version: "0.1.0".into(),
            instance: "fake".into(),
            started_at: "2027-01-15T07:00:00Z".into(),
            node: Some("node-a".into()),
            device_reason: "fake".into(),
            auth_required: s.token.is_some(),
        },
        devices: vec![s.device.clone()],
    })
}

fn release(model: &str) -> ReleaseReport {
    ReleaseReport {
        model: model.into(),
        before_mb: 140.0,
        after_mb: 100.0,
        target_mb: 100.0,
        tolerance_mb: 64.0,
        verified: true,
        killed: false,
        elapsed_ms: 12.0,
    }
}

async fn switch(State(s): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut s = s.lock().unwrap();
    if let Some(r) = admit(&mut s, "/v1/models/switch", &headers, &body) {
        return r;
    }
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if s.unknown.contains(&model) {
        return error(
            404,
            "unknown_model",
            &format!("unknown model {model:?}; the catalog has: tiny-a, tiny-b"),
        );
    }
    let from = s.device.active_model.replace(model.clone());
    s.device.models.retain(|m| m.name != model);
    s.device.models.push(ModelRecord {
        footprint: None,
        name: model.clone(),
        kind: "synthetic".into(),
        state: ModelState::Loaded,
        vram_mb: Some(40.0),
        ram_mb: Some(42.0),
        expected_mb: Some(40.0),
        load_ms: Some(250.0),
        loads: 1,
        crashes: 0,
        hung: false,
        last_loaded: Some("2027-01-15T08:00:00Z".into()),
        last_unloaded: None,
        last_trigger: Some(SwitchTrigger::Spec),
        pid: Some(4242),
        requests: 0,
        last_used: Some("2027-01-15T08:00:00Z".into()),
    });
    Json(SwitchResponse {
        footprint: None,
        release: from.as_deref().map(release),
        from,
        to: model,
        trigger: SwitchTrigger::Spec,
        unload_ms: 0.0,
        verify_ms: 0.0,
        load_ms: 250.0,
        vram_mb: 40.0,
        ram_mb: 42.0,
        already_active: false,
        phases: None,
        device_delta_mb: 40.0,
    })
    .into_response()
}

async fn unload(State(s): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut s = s.lock().unwrap();
    if let Some(r) = admit(&mut s, "/v1/models/unload", &headers, &body) {
        return r;
    }
    let from = s.device.active_model.take();
    let trigger = serde_json::from_value(body["trigger"].clone()).unwrap_or(SwitchTrigger::Api);
    s.device.last_switch = Some(SwitchRecord {
        footprint: None,
        at: "2027-01-15T08:00:00Z".into(),
        from: from.clone(),
        to: None,
        trigger,
        unload_ms: 12.0,
        load_ms: 0.0,
        vram_mb: None,
        ram_mb: None,
        release_verified: Some(true),
        error: None,
    });
    Json(UnloadResponse {
        release: from.as_deref().map(release),
    })
    .into_response()
}

fn remediate(s: &mut Script, action: RemediationAction) -> RemediationReport {
    let before = s.device.ghost.total_mb;
    let clears = match action {
        RemediationAction::Free => s.free_clears,
        RemediationAction::Reset => s.reset_clears,
    };
    if clears {
        s.device.ghost = GhostReport::default();
        s.device.zombie.flagged = false;
        s.device.zombie.over_threshold_since = None;
    }
    let report = RemediationReport {
        action,
        trigger: RemediationTrigger::Operator,
        at: s.remediation_at.clone(),
        used_before_mb: 100.0 + before,
        used_after_mb: 100.0 + s.device.ghost.total_mb,
        ghost_before_mb: before,
        ghost_after_mb: s.device.ghost.total_mb,
        cleaned_mb: 0.0,
        killed: vec![],
        spared: vec![],
        reloaded: match action {
            RemediationAction::Reset => s.device.active_model.clone(),
            RemediationAction::Free => None,
        },
        duration_ms: 5.0,
        at_baseline: match action {
            RemediationAction::Reset => Some(clears),
            RemediationAction::Free => None,
        },
    };
    s.device.zombie.last_remediation = Some(report.clone());
    report
}

async fn free(State(s): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut s = s.lock().unwrap();
    if let Some(r) = admit(&mut s, "/v1/gpu/free", &headers, &body) {
        return r;
    }
    Json(remediate(&mut s, RemediationAction::Free)).into_response()
}

async fn reset(State(s): S, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mut s = s.lock().unwrap();
    if let Some(r) = admit(&mut s, "/v1/gpu/reset", &headers, &body) {
        return r;
    }
    Json(remediate(&mut s, RemediationAction::Reset)).into_response()
}
