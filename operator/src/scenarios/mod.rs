//! Reconcile scenarios against a mocked apiserver (tower-test, the ApiServerVerifier pattern)
//! and a scripted agent: each scenario lists the exact API calls a reconcile must make, and
//! the agent calls it must make, in order.

mod fake_agent;
mod lifecycle;
mod switching;
mod verifier;
mod zombie;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus};
use kube::{
    Api, Client,
    api::ObjectMeta,
    client::Body,
    runtime::{controller::Action, reflector, watcher},
};
use serde_json::{Value, json};
use vramkeeper_crds::{GpuModel, GpuModelSpec, GpuModelStatus};

pub use fake_agent::{FakeAgent, device, haunt};
pub use verifier::{ApiServerVerifier, Call};

use crate::{
    agent_client::AgentClient,
    agents::{AgentLocator, TokenSecret},
    context::{Backoff, Context},
    events::EventPublisher,
    metrics::Metrics,
    reconcile::reconcile,
};

/// The operator's clock at the start of every scenario.
pub const T0: &str = "2027-01-15T08:00:00Z";

/// One scenario's world.
pub struct World {
    /// The operator's context.
    pub ctx: Arc<Context>,
    /// The mocked apiserver.
    pub api: Option<ApiServerVerifier>,
    /// The scripted agent.
    pub agent: FakeAgent,
    clock: Arc<Mutex<Timestamp>>,
}

/// How the world is set up.
#[derive(Default)]
pub struct Setup {
    /// No agent Pod at all.
    pub no_pod: bool,
    /// Read the token from the Secret `agent-token`.
    pub token_secret: bool,
}

fn agent_pod(url: &str) -> Pod {
    let port: i32 = url.rsplit(':').next().unwrap().parse().unwrap();
    Pod {
        metadata: ObjectMeta {
            name: Some("vramkeeper-agent-abcde".into()),
            namespace: Some("vramkeeper".into()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_string(),
                    "vramkeeper-agent".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![Container {
                name: "agent".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: port,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("127.0.0.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// Sets up a world whose agent reports `device`.
pub async fn world(device: vramkeeper_crds::api::DeviceStatus, setup: Setup) -> World {
    let agent = FakeAgent::start(device).await;
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let (store, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&watcher::Event::Init);
    if !setup.no_pod {
        writer.apply_watcher_event(&watcher::Event::InitApply(agent_pod(&agent.url)));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The store must outlive the scenario: keep its writer alive.
    std::mem::forget(writer);
    let secret = setup.token_secret.then(|| TokenSecret {
        api: Api::namespaced(client.clone(), "vramkeeper"),
        name: "agent-token".into(),
        key: "token".into(),
    });
    let clock = Arc::new(Mutex::new(T0.parse::<Timestamp>().unwrap()));
    let c = clock.clone();
    let ctx = Context::new(
        client.clone(),
        AgentLocator::new(store, "http".into(), 8470, secret),
        AgentClient::new(Duration::from_secs(10), Duration::from_secs(10)),
        EventPublisher::new(client, "vramkeeper-operator", "test-replica"),
        Arc::new(Metrics::new()),
        Backoff::default(),
    )
    .with_clock(Arc::new(move || *c.lock().unwrap()));
    World {
        ctx: Arc::new(ctx),
        api: Some(ApiServerVerifier::new(handle)),
        agent,
        clock,
    }
}

impl World {
    /// Sets the operator's clock.
    pub fn at(&self, t: &str) {
        *self.clock.lock().unwrap() = t.parse().unwrap();
    }

    /// The body of the last status write, as the operator sent it.
    pub fn written(&self) -> Value {
        self.api
            .as_ref()
            .and_then(|a| a.written.clone())
            .expect("a status was written")
    }

    /// Runs one reconcile of `gm` while the apiserver plays `calls`; asserts that no other
    /// call came, and returns the reconcile's result.
    pub async fn reconcile(&mut self, gm: &GpuModel, calls: Vec<Call>) -> crate::Result<Action> {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let mut verifier = self.api.take().unwrap().play(calls, stopped);
        let reconciling = reconcile(Arc::new(gm.clone()), self.ctx.clone());
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(60), reconciling) => r.expect("the reconcile finished"),
            v = &mut verifier => panic!("the mocked apiserver failed: {:?}", v.err()),
        };
        let _ = stop.send(());
        let api = tokio::time::timeout(Duration::from_secs(10), verifier)
            .await
            .expect("every expected call came")
            .expect("each call was as expected");
        self.api = Some(api);
        result
    }
}

/// A GpuModel `name` on node-a, GPU 0, generation 1, finalizer present, no model.
pub fn gpumodel(name: &'static str) -> GpuModel {
    let mut gm = GpuModel::new(
        name,
        GpuModelSpec {
            node_name: "node-a".into(),
            gpu: 0,
            model: None,
            zombie: Default::default(),
            idle_unload_seconds: None,
        },
    );
    gm.metadata.uid = Some(format!("uid-{name}"));
    gm.metadata.generation = Some(1);
    gm.metadata.resource_version = Some("1".into());
    gm.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
    gm
}

/// Chainable changes to a GpuModel fixture.
pub trait GpuModelExt: Sized {
    /// Wants `m`.
    fn model(self, m: &str) -> Self;
    /// Without the finalizer.
    fn unfinalized(self) -> Self;
    /// Being deleted.
    fn deleting(self) -> Self;
    /// At generation `g`.
    fn generation(self, g: i64) -> Self;
    /// With the status of an apply body the verifier answered.
    fn status_of(self, body: &Value) -> Self;
}

impl GpuModelExt for GpuModel {
    fn model(mut self, m: &str) -> Self {
        self.spec.model = Some(m.into());
        self
    }
    fn unfinalized(mut self) -> Self {
        self.metadata.finalizers = None;
        self
    }
    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(T0.parse().unwrap()),
        );
        self
    }
    fn generation(mut self, g: i64) -> Self {
        self.metadata.generation = Some(g);
        self
    }
    fn status_of(mut self, body: &Value) -> Self {
        self.status =
            Some(serde_json::from_value::<GpuModelStatus>(body["status"].clone()).unwrap());
        self
    }
}

/// One condition as the status body carries it, but for its message (which the verifier
/// does not compare).
pub fn cond(type_: &str, status: bool, reason: &str, at: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "lastTransitionTime": at,
        "observedGeneration": generation,
    })
}

/// `body` with `status.<field>` set to `value`.
pub fn with(mut body: Value, field: &str, value: Value) -> Value {
    body["status"][field] = value;
    body
}

/// The apply body of the operator's status.
pub fn owned(phase: &str, generation: i64, conditions: Vec<Value>) -> Value {
    json!({
        "apiVersion": "vramkeeper.dev/v1alpha1",
        "kind": "GpuModel",
        "status": {
            "phase": phase,
            "observedGeneration": generation,
            "conditions": conditions,
        },
    })
}

/// The agent calls a scenario expects: `(path, body)`.
pub fn act(path: &str, body: Value) -> (String, Value) {
    (format!("POST {path}"), body)
}

/// `Ready`, `Switching` (for `switching`) and `ZombieMemory` and `Degraded` when all is well.
pub fn calm(switching: &str, at: &str) -> Vec<Value> {
    vec![
        cond("Ready", true, "ModelActive", at, 1),
        cond("Switching", false, switching, at, 1),
        cond("ZombieMemory", false, "BelowThreshold", at, 1),
        cond("Degraded", false, "AsExpected", at, 1),
    ]
}
