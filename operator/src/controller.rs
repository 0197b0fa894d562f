//! The controller: GpuModels, plus the agent Pods they depend on, so that a new or restarted
//! agent triggers the reconciles of its node's GpuModels at once.

use std::{
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client,
    runtime::{
        Controller, PredicateConfig, WatchStreamExt,
        controller::Config,
        reflector::{self, ObjectRef, reflector},
        watcher,
    },
};
use vramkeeper_crds::GpuModel;

use crate::{
    agent_client::AgentClient,
    agents::{AgentLocator, TokenSecret},
    args::Args,
    context::Context,
    events::EventPublisher,
    metrics::Metrics,
    reconcile::{error_policy, reconcile},
};

/// The name the operator reports Events under.
pub const REPORTER: &str = "vramkeeper-operator";

/// What of a GpuModel, when it changes, is worth a reconcile: the spec (generation), deletion
/// and finalizers, and what the agent reports that the planner acts on. The operator's own
/// status writes and the agent's heartbeat (`reportedAt`) and figures are not: they would only
/// trigger reconciles that find nothing to do.
pub fn worth_a_look(gm: &GpuModel) -> Option<u64> {
    let mut h = DefaultHasher::new();
    gm.metadata.generation.hash(&mut h);
    gm.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    gm.metadata.finalizers.hash(&mut h);
    if let Some(s) = &gm.status {
        s.state_key().hash(&mut h);
        s.device
            .as_ref()
            .map(|d| d.ghost_mib > gm.spec.zombie.threshold_mib)
            .hash(&mut h);
    }
    Some(h.finish())
}

/// Builds the context and runs the controller until `shutdown` resolves (then lets running
/// reconciles finish).
pub async fn run(
    client: Client,
    args: &Args,
    identity: &str,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let a = &args.agents;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &a.agent_namespace);
    let (pod_store, pod_writer) = reflector::store();
    let pod_events = reflector(
        pod_writer,
        watcher(pods, watcher::Config::default().labels(&a.agent_selector)),
    )
    .default_backoff()
    .touched_objects();

    let models: Api<GpuModel> = Api::all(client.clone());
    let (model_store, model_writer) = reflector::store();
    let model_events = reflector(model_writer, watcher(models, watcher::Config::default()))
        .default_backoff()
        .applied_objects()
        .predicate_filter(worth_a_look, PredicateConfig::default());
    let owners = model_store.clone();
    let controller = Controller::for_stream(model_events, model_store.clone())
        .with_config(Config::default().concurrency(args.concurrency));
    let controller = controller.watches_stream(pod_events, move |pod: Pod| {
        let node = pod.spec.and_then(|s| s.node_name);
        model_store
            .state()
            .into_iter()
            .filter(|m| Some(&m.spec.node_name) == node.as_ref())
            .map(|m| ObjectRef::from_obj(&*m))
            .collect::<Vec<_>>()
    });

    let secret = a.agent_token_secret.clone().map(|name| TokenSecret {
        api: Api::<Secret>::namespaced(client.clone(), &a.agent_namespace),
        name,
        key: a.agent_token_key.clone(),
    });
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            AgentLocator::new(pod_store, a.agent_port_name.clone(), a.agent_port, secret),
            AgentClient::new(
                Duration::from_secs(a.agent_read_timeout_s),
                Duration::from_secs(a.agent_act_timeout_s),
            ),
            EventPublisher::new(client, REPORTER, identity),
            metrics,
            args.backoff(),
        )
        .with_max_recheck(Duration::from_secs(args.max_recheck_s.max(1)))
        .with_models(owners),
    );
    tracing::info!(agent_namespace = %a.agent_namespace, selector = %a.agent_selector, "controller started");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::trace!(gpumodel = %obj.name, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::debug!(gpumodel = %obj.name, error = %e, "reconcile failed")
                }
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
        })
        .await;
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use vramkeeper_crds::{Condition, DeviceMemory, GpuModelSpec, GpuModelStatus, Phase};

    use super::*;

    #[test]
    fn only_what_the_planner_acts_on_triggers_a_reconcile() {
        let mut gm = GpuModel::new(
            "a",
            GpuModelSpec {
                node_name: "n".into(),
                gpu: 0,
                model: Some("m".into()),
                zombie: Default::default(),
                idle_unload_seconds: None,
            },
        );
        gm.metadata.generation = Some(1);
        gm.status = Some(GpuModelStatus {
            device: Some(DeviceMemory {
                ghost_mib: 10,
                ..Default::default()
            }),
            ..Default::default()
        });
        let base = worth_a_look(&gm);
        let same = |f: &dyn Fn(&mut GpuModel)| {
            let mut g = gm.clone();
            f(&mut g);
            worth_a_look(&g) == base
        };
        // The operator's own writes, the heartbeat, figures under the threshold: no.
        assert!(same(&|g| {
            let s = g.status.as_mut().unwrap();
            s.phase = Some(Phase::Ready);
            s.observed_generation = Some(1);
            s.reported_at = Some("2027-01-01T00:00:00Z".into());
            s.device.as_mut().unwrap().ghost_mib = 20;
            s.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "ModelActive".into(),
                message: String::new(),
                last_transition_time: "2027-01-01T00:00:00Z".into(),
                observed_generation: Some(1),
            });
        }));
        // The spec, finalizers, the agent's state, the ghost crossing the threshold: yes.
        assert!(!same(&|g| g.metadata.generation = Some(2)));
        assert!(!same(&|g| g.metadata.finalizers = Some(vec!["f".into()])));
        assert!(!same(
            &|g| g.status.as_mut().unwrap().active_model = Some("m".into())
        ));
        assert!(!same(&|g| g.status.as_mut().unwrap().switching = true));
        assert!(!same(&|g| g
            .status
            .as_mut()
            .unwrap()
            .device
            .as_mut()
            .unwrap()
            .ghost_mib = 5000));
    }
}
