//! A mocked apiserver (tower-test) that plays a scenario: each call the operator makes must be
//! the next one expected, with the exact method, path and body; it answers as the apiserver
//! would. Every call is also checked against the RBAC rules.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::Handle;
use vramkeeper_crds::GpuModel;

use crate::rbac;

/// One call the operator must make next.
#[derive(Debug)]
pub enum Call {
    /// The finalizer helper adds the finalizer (JSON patch with a test).
    AddFinalizer(GpuModel),
    /// The finalizer helper removes it (JSON patch with a test).
    RemoveFinalizer(GpuModel),
    /// An Event about `name`, created (its generated name is not compared).
    Event {
        /// The GpuModel's name.
        name: &'static str,
        /// `Normal` or `Warning`.
        type_: &'static str,
        /// Reason.
        reason: &'static str,
        /// Action.
        action: &'static str,
        /// Note, exactly.
        note: String,
        /// Its time (the operator's clock).
        at: &'static str,
    },
    /// The operator's status by server-side apply: the exact body, except that conditions are
    /// compared by type, status, reason, `lastTransitionTime` and `observedGeneration` (their
    /// messages are checked once, in `conditions::tests`). The answer is the object with the
    /// status written.
    Status(GpuModel, Value),
    /// The operator's status before an agent call (what is about to happen): the phase, and
    /// one condition's `(type, status, reason)`; the rest of the body is not compared. The
    /// answer is the object with that status.
    Progress {
        /// The object.
        gm: GpuModel,
        /// Its phase.
        phase: &'static str,
        /// One condition: type, status, reason.
        condition: (&'static str, &'static str, &'static str),
    },
    /// The token Secret is read.
    GetSecret {
        /// Its name.
        name: &'static str,
        /// The token it holds.
        token: &'static str,
    },
}

/// Plays scenarios against the operator's client.
pub struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    /// The body of the last status write, as the operator sent it.
    pub written: Option<Value>,
}

impl ApiServerVerifier {
    /// A verifier answering through `handle`.
    pub fn new(handle: Handle<Request<Body>, Response<Body>>) -> Self {
        Self {
            handle,
            written: None,
        }
    }
}

/// `body` without its conditions' messages.
fn without_messages(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(cs) = body["status"]["conditions"].as_array_mut() {
        for c in cs {
            if let Some(c) = c.as_object_mut() {
                c.remove("message");
            }
        }
    }
    body
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// The RBAC verb of a request.
fn verb(method: &http::Method, path: &str) -> &'static str {
    match *method {
        http::Method::GET if path.contains("watch=true") => "watch",
        http::Method::GET => {
            let p = path.split('?').next().unwrap();
            // Named objects have an odd number of segments after the group/version prefix.
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            let core = segs.first() == Some(&"api");
            let rest = if core { &segs[2..] } else { &segs[3..] };
            let named = match rest {
                ["namespaces", _, _, _, ..] => true,
                ["namespaces", ..] => false,
                [_, _, ..] => true,
                _ => false,
            };
            if named { "get" } else { "list" }
        }
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// `(group, resource[/subresource])` of a request path.
fn resource(path: &str) -> (String, String) {
    let p = path.split('?').next().unwrap();
    let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
    let (group, rest) = if segs[0] == "api" {
        ("", &segs[2..])
    } else {
        (segs[1], &segs[3..])
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] => rest,
        rest => rest,
    };
    let res = match rest {
        [r, _, sub, ..] => format!("{r}/{sub}"),
        [r, ..] => r.to_string(),
        [] => String::new(),
    };
    (group.to_string(), res)
}

impl ApiServerVerifier {
    /// Plays `calls` in order, in a task; then fails on any further call until `stop` fires,
    /// and returns the verifier.
    pub fn play(
        mut self,
        calls: Vec<Call>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<Self> {
        tokio::spawn(async move {
            for call in calls {
                self.expect(call).await;
            }
            tokio::select! {
                _ = &mut stop => {}
                next = self.handle.next_request() => {
                    if let Some((request, _)) = next {
                        let (method, uri) = (request.method().clone(), request.uri().clone());
                        let body = request.into_body().collect_bytes().await.unwrap_or_default();
                        panic!(
                            "unexpected call {method} {uri}: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
            }
            self
        })
    }

    async fn expect(&mut self, call: Call) {
        let (request, send) = self
            .handle
            .next_request()
            .await
            .expect("the client is gone");
        let method = request.method().clone();
        let path = request.uri().to_string();
        let (group, res) = resource(&path);
        let v = verb(&method, &path);
        assert!(
            rbac::allows(&group, &res, v),
            "{method} {path} needs {v} on {group}/{res}, which RBAC_RULES do not grant"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let got = format!("{method} {path}");
        match call {
            Call::AddFinalizer(gm) => {
                let name = gm.metadata.name.clone().unwrap();
                assert_eq!(
                    got,
                    format!("PATCH /apis/vramkeeper.dev/v1alpha1/gpumodels/{name}?")
                );
                assert_eq!(
                    body,
                    json!([
                        {"op": "test", "path": "/metadata/finalizers", "value": null},
                        {"op": "add", "path": "/metadata/finalizers", "value": [crate::FINALIZER]},
                    ])
                );
                let mut out = gm;
                out.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
                respond(send, StatusCode::OK, &serde_json::to_value(out).unwrap());
            }
            Call::RemoveFinalizer(gm) => {
                let name = gm.metadata.name.clone().unwrap();
                assert_eq!(
                    got,
                    format!("PATCH /apis/vramkeeper.dev/v1alpha1/gpumodels/{name}?")
                );
                assert_eq!(
                    body,
                    json!([
                        {"op": "test", "path": "/metadata/finalizers/0", "value": crate::FINALIZER},
                        {"op": "remove", "path": "/metadata/finalizers/0"},
                    ])
                );
                let mut out = gm;
                out.metadata.finalizers = None;
                respond(send, StatusCode::OK, &serde_json::to_value(out).unwrap());
            }
            Call::Event {
                name,
                type_,
                reason,
                action,
                note,
                at: event_time,
            } => {
                assert_eq!(
                    got,
                    "POST /apis/events.k8s.io/v1/namespaces/default/events?"
                );
                let mut seen = body.clone();
                // The name is unique per Event; everything else is as written.
                seen["metadata"].as_object_mut().unwrap().remove("name");
                assert_eq!(
                    seen,
                    json!({
                        "action": action,
                        "reason": reason,
                        "note": note,
                        "type": type_,
                        "apiVersion": "events.k8s.io/v1",
                        "kind": "Event",
                        "metadata": {"namespace": "default"},
                        "eventTime": event_time.replace('Z', ".000000Z"),
                        "regarding": {
                            "apiVersion": "vramkeeper.dev/v1alpha1",
                            "kind": "GpuModel",
                            "name": name,
                            "uid": format!("uid-{name}"),
                        },
                        "reportingController": "vramkeeper-operator",
                        "reportingInstance": "test-replica",
                    }),
                    "event {reason}"
                );
                respond(send, StatusCode::CREATED, &body);
            }
            Call::Status(gm, expected) => {
                let name = gm.metadata.name.clone().unwrap();
                assert_eq!(
                    got,
                    format!(
                        "PATCH /apis/vramkeeper.dev/v1alpha1/gpumodels/{name}/status?&force=true&fieldManager=vramkeeper-operator"
                    )
                );
                assert_eq!(
                    without_messages(&body),
                    without_messages(&expected),
                    "status of {name}"
                );
                let mut out = serde_json::to_value(gm).unwrap();
                out["status"] = body["status"].clone();
                respond(send, StatusCode::OK, &out);
                self.written = Some(body);
            }
            Call::Progress {
                gm,
                phase,
                condition: (type_, status, reason),
            } => {
                let name = gm.metadata.name.clone().unwrap();
                assert_eq!(
                    got,
                    format!(
                        "PATCH /apis/vramkeeper.dev/v1alpha1/gpumodels/{name}/status?&force=true&fieldManager=vramkeeper-operator"
                    )
                );
                assert_eq!(body["status"]["phase"], phase, "phase of {name}: {body}");
                let found = body["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason);
                assert!(found, "{type_}={status} ({reason}) in {body}");
                let mut out = serde_json::to_value(gm).unwrap();
                out["status"] = body["status"].clone();
                respond(send, StatusCode::OK, &out);
                self.written = Some(body);
            }
            Call::GetSecret { name, token } => {
                assert_eq!(
                    got,
                    format!("GET /api/v1/namespaces/vramkeeper/secrets/{name}")
                );
                let secret = k8s_openapi::api::core::v1::Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some("vramkeeper".into()),
                        ..Default::default()
                    },
                    data: Some(
                        [(
                            "token".to_string(),
                            k8s_openapi::ByteString(token.as_bytes().to_vec()),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                };
                respond(send, StatusCode::OK, &serde_json::to_value(secret).unwrap());
            }
        }
    }
}

#[test]
fn request_paths_map_to_rbac_verbs() {
    let m = http::Method::GET;
    assert_eq!(
        verb(&m, "/api/v1/namespaces/vramkeeper/pods?labelSelector=x"),
        "list"
    );
    assert_eq!(
        verb(&m, "/api/v1/namespaces/vramkeeper/pods?watch=true"),
        "watch"
    );
    assert_eq!(verb(&m, "/api/v1/namespaces/vramkeeper/secrets/tok"), "get");
    assert_eq!(verb(&m, "/apis/vramkeeper.dev/v1alpha1/gpumodels?"), "list");
    assert_eq!(verb(&m, "/apis/vramkeeper.dev/v1alpha1/gpumodels/a"), "get");
    assert_eq!(
        resource("/apis/vramkeeper.dev/v1alpha1/gpumodels/a/status?x"),
        ("vramkeeper.dev".into(), "gpumodels/status".into())
    );
    assert_eq!(
        resource("/api/v1/namespaces/ns/secrets/tok"),
        ("".into(), "secrets".into())
    );
}
