//! The controller: GpuModels, plus the agent Pods they depend on, so that a new or restarted
//! agent triggers the reconciles of its node's GpuModels at once.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
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
    let controller = Controller::new(models, watcher::Config::default())
        .with_config(Config::default().concurrency(args.concurrency));
    let model_store = controller.store();
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
        .with_max_recheck(Duration::from_secs(args.max_recheck_s.max(1))),
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
