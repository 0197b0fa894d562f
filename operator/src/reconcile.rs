//! The reconcile: observe the agent, plan, execute, write the operator's status; and the
//! finalizer's cleanup, which unloads the model before the GpuModel goes away.

use std::sync::Arc;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use serde::Serialize;
use vramkeeper_crds::{Condition, GpuModel, Phase, SwitchTrigger};

use crate::{
    conditions::{self, DEGRADED, OperatorStatus, Situation, ZOMBIE_MEMORY, reason},
    context::Context,
    error::{Error, Result},
    events::EventType,
    executor::{self, event_reason},
    observe,
    planner::{self, Input, RECHECK_BUSY, RECHECK_FAILED, RECHECK_SILENT},
};

/// The finalizer that makes deletion wait for the unload.
pub const FINALIZER: &str = "vramkeeper.dev/unload";
/// The field manager of the operator's status writes.
pub const FIELD_MANAGER: &str = "vramkeeper-operator";

/// Reconciles one GpuModel (wrapped in kube's finalizer helper).
pub async fn reconcile(gm: Arc<GpuModel>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let api: Api<GpuModel> = Api::all(ctx.client.clone());
    let name = gm.name_any();
    let result = finalizer(&api, FINALIZER, gm, |event| async {
        match event {
            FinalizerEvent::Apply(gm) => apply(&gm, &ctx, &api).await,
            FinalizerEvent::Cleanup(gm) => cleanup(&gm, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        ctx.succeeded(&name);
    }
    result
}

/// After a failed reconcile: count it by label, then retry with capped exponential backoff
/// (a busy agent is retried soon, without growing the backoff).
pub fn error_policy(gm: Arc<GpuModel>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    if error.is_busy() {
        return Action::requeue(RECHECK_BUSY);
    }
    let name = gm.name_any();
    let n = ctx.failed(&name);
    let delay = ctx.backoff.delay(n);
    tracing::warn!(gpumodel = %name, error = %error, label = error.metric_label(), failures = n, retry_in_s = delay.as_secs_f64(), "reconcile failed");
    Action::requeue(delay)
}

async fn apply(gm: &GpuModel, ctx: &Context, api: &Api<GpuModel>) -> Result<Action> {
    let name = gm.name_any();
    let generation = gm.metadata.generation.unwrap_or(0);
    let stored = gm.status.as_ref();
    let spec = &gm.spec;
    let unheard = |reason: &'static str, message: String| async move {
        let observed = stored.cloned().unwrap_or_default();
        let op = conditions::derive(
            spec,
            generation,
            &observed,
            Situation::Unheard {
                reason,
                message: &message,
            },
            ctx.now(),
        );
        write_status(api, ctx, gm, &op).await
    };
    let target = match ctx.agents.target(&spec.node_name).await {
        Ok(t) => t,
        Err(e @ Error::AgentNotFound { .. }) => {
            tracing::info!(gpumodel = %name, node = %spec.node_name, "no agent on the node yet");
            unheard(reason::AGENT_NOT_FOUND, e.to_string()).await?;
            // The Pod watch triggers a reconcile when the agent appears.
            return Ok(Action::requeue(RECHECK_SILENT.min(ctx.max_recheck)));
        }
        Err(e) => return Err(e),
    };
    let response = match ctx.agent.status(&target).await {
        Ok(r) => r,
        Err(e) => {
            if let Error::AgentRejected { status: 401, .. } = e {
                ctx.agents.forget_token();
            }
            unheard(reason::AGENT_UNREACHABLE, e.to_string()).await?;
            return Err(e);
        }
    };
    let Some(device) = response.devices.iter().find(|d| d.gpu == spec.gpu) else {
        let known: Vec<String> = response.devices.iter().map(|d| d.gpu.to_string()).collect();
        let message = format!(
            "the agent on node {} manages no GPU {} (it has: {})",
            spec.node_name,
            spec.gpu,
            known.join(", ")
        );
        unheard(reason::UNKNOWN_GPU, message).await?;
        return Ok(Action::requeue(RECHECK_FAILED.min(ctx.max_recheck)));
    };
    let now = ctx.now();
    let observed = observe::status_from_agent(device, stored, now);
    let uid = gm.uid().unwrap_or_else(|| name.clone());
    let history = observe::history(&observed, &ctx.journal(&uid));
    let plan = planner::plan(&Input {
        spec,
        generation,
        status: &observed,
        now,
        history: &history,
    });
    tracing::debug!(gpumodel = %name, step = ?plan.step, zombie = ?plan.zombie, "planned");
    let executed = executor::execute(ctx, gm, &target, &plan).await;
    let op = conditions::derive(
        spec,
        generation,
        &observed,
        Situation::Planned {
            plan: &plan,
            outcome: &executed.outcome,
        },
        ctx.now(),
    );
    transition_events(ctx, gm, &observed.conditions, &op.conditions).await;
    write_status(api, ctx, gm, &op).await?;
    if let Some(e) = executed.error {
        return Err(e);
    }
    Ok(Action::requeue(
        match executed.outcome {
            conditions::Outcome::Busy(_) => RECHECK_BUSY,
            _ => plan.recheck,
        }
        .min(ctx.max_recheck),
    ))
}

/// Unloads whatever the GPU holds before the GpuModel goes away. No agent Pod on the node
/// (the node is gone): nothing to unload.
async fn cleanup(gm: &GpuModel, ctx: &Context) -> Result<Action> {
    let name = gm.name_any();
    let spec = &gm.spec;
    let target = match ctx.agents.target(&spec.node_name).await {
        Ok(t) => t,
        Err(Error::AgentNotFound { node }) => {
            tracing::info!(gpumodel = %name, node = %node, "deleted; no agent on the node, nothing to unload");
            ctx.forget(gm.uid().as_deref().unwrap_or(&name), &name);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let status = ctx.agent.status(&target).await?;
    let active = status
        .devices
        .iter()
        .find(|d| d.gpu == spec.gpu)
        .and_then(|d| d.active_model.clone());
    if let Some(model) = active {
        let started = std::time::Instant::now();
        let result = ctx
            .agent
            .unload(&target, spec.gpu, SwitchTrigger::Spec)
            .await;
        ctx.metrics
            .agent_call("unload", result.is_ok(), started.elapsed());
        let release = result?.release;
        let note = match &release {
            Some(r) if r.verified => format!(
                "deleted: unloaded {model}; memory came back to {:.0} MiB",
                r.after_mb
            ),
            Some(r) => format!(
                "deleted: unloaded {model}, but memory stayed at {:.0} MiB (target {:.0} MiB)",
                r.after_mb, r.target_mb
            ),
            None => format!("deleted: {model} was already unloaded"),
        };
        tracing::info!(gpumodel = %name, model = %model, "unloaded before deletion");
        executor::publish(
            ctx,
            gm,
            EventType::Normal,
            event_reason::UNLOADED,
            "Finalize",
            note,
        )
        .await;
    }
    ctx.forget(gm.uid().as_deref().unwrap_or(&name), &name);
    Ok(Action::await_change())
}

/// Events for changes no single step announces: zombie memory found, Degraded lifted.
async fn transition_events(
    ctx: &Context,
    gm: &GpuModel,
    before: &[Condition],
    after: &[Condition],
) {
    let was = |t: &str| before.iter().any(|c| c.type_ == t && c.status == "True");
    let now = |t: &str| after.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(c) = now(ZOMBIE_MEMORY).filter(|_| !was(ZOMBIE_MEMORY)) {
        executor::publish(
            ctx,
            gm,
            EventType::Warning,
            event_reason::ZOMBIE_MEMORY,
            "Detect",
            c.message.clone(),
        )
        .await;
    }
    if was(DEGRADED) && now(DEGRADED).is_none() {
        executor::publish(
            ctx,
            gm,
            EventType::Normal,
            event_reason::RECOVERED,
            "Recover",
            "no longer Degraded: the ghost cleared or the spec changed".into(),
        )
        .await;
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OwnedStatus<'a> {
    phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    conditions: &'a [Condition],
}

/// The server-side apply body of the operator's status fields.
pub fn status_patch(op: &OperatorStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": GpuModel::api_version(&()),
        "kind": GpuModel::kind(&()),
        "status": OwnedStatus {
            phase: op.phase,
            observed_generation: op.observed_generation,
            conditions: &op.conditions,
        },
    })
}

/// Writes the operator's fields by server-side apply, unless they are already so.
async fn write_status(
    api: &Api<GpuModel>,
    ctx: &Context,
    gm: &GpuModel,
    op: &OperatorStatus,
) -> Result<()> {
    if op.is_in(gm.status.as_ref()) {
        return Ok(());
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&gm.name_any(), &params, &Patch::Apply(status_patch(op)))
        .await?;
    ctx.metrics.status_written();
    Ok(())
}
