//! The finalizer's cleanup: unload what the GPU holds before the GpuModel goes away.
//!
//! - A GpuModel that does not own its GPU (see `ownership.rs`) unloads nothing: the owner's
//!   model stays.
//! - No agent Pod on the node (the node is gone): nothing to unload.
//! - The agent cannot be reached, or refuses: the deletion waits, and says why: `Ready=False`
//!   and `Terminating=True` (reason `UnloadBlocked`), with a Warning event `DeletionBlocked`
//!   when that starts.

use kube::{Api, ResourceExt, runtime::controller::Action};
use vramkeeper_crds::{Condition, GpuModel, SwitchTrigger};

use crate::{
    conditions::{READY, TERMINATING, reason},
    context::Context,
    error::{Error, Result},
    events::EventType,
    executor::{self, event_reason},
    status::{self, OperatorStatus},
};

/// Unloads whatever the GPU holds before `gm` goes away, unless another GpuModel owns it.
pub async fn cleanup(gm: &GpuModel, ctx: &Context, api: &Api<GpuModel>) -> Result<Action> {
    let name = gm.name_any();
    let conflict_with = gm.status.as_ref().and_then(|s| s.conflict_with.clone());
    if let Some(owner) = ctx.owner_other_than(gm).or(conflict_with) {
        tracing::info!(gpumodel = %name, owner = %owner, "deleted; another GpuModel owns the GPU, nothing to unload");
        ctx.forget(gm.uid().as_deref().unwrap_or(&name), &name);
        return Ok(Action::await_change());
    }
    match unload(gm, ctx).await {
        Err(e) if !e.is_busy() => {
            blocked(gm, ctx, api, &e).await;
            Err(e)
        }
        other => other,
    }
}

async fn unload(gm: &GpuModel, ctx: &Context) -> Result<Action> {
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

/// Shows why the deletion cannot finish: `Ready=False` and `Terminating=True`, reason
/// `UnloadBlocked`; a Warning event when that starts. Failures to write are logged only (the
/// error policy retries the cleanup anyway).
async fn blocked(gm: &GpuModel, ctx: &Context, api: &Api<GpuModel>, e: &Error) {
    let stored = gm.status.clone().unwrap_or_default();
    let message = format!(
        "deletion waits: the model on GPU {} of node {} could not be unloaded ({e}); it finishes once the agent unloads it, or once no agent Pod runs on the node",
        gm.spec.gpu, gm.spec.node_name
    );
    let already = stored
        .conditions
        .iter()
        .any(|c| c.type_ == TERMINATING && c.status == "True");
    let now = ctx.now().to_string();
    let generation = gm.metadata.generation;
    let keep = |c: &Condition| c.type_ != READY && c.type_ != TERMINATING;
    let mut conditions: Vec<Condition> = stored
        .conditions
        .iter()
        .filter(|c| keep(c))
        .cloned()
        .collect();
    let transition = |type_: &str, status: &str| {
        stored
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(now.clone(), |c| c.last_transition_time.clone())
    };
    conditions.insert(
        0,
        Condition {
            type_: READY.into(),
            status: "False".into(),
            reason: reason::TERMINATING.into(),
            message: message.clone(),
            last_transition_time: transition(READY, "False"),
            observed_generation: generation,
        },
    );
    conditions.push(Condition {
        type_: TERMINATING.into(),
        status: "True".into(),
        reason: reason::UNLOAD_BLOCKED.into(),
        message: message.clone(),
        last_transition_time: transition(TERMINATING, "True"),
        observed_generation: generation,
    });
    let op = OperatorStatus {
        conditions,
        ..OperatorStatus::of(&stored)
    };
    if !already {
        tracing::warn!(gpumodel = %gm.name_any(), error = %e, "deletion blocked");
        executor::publish(
            ctx,
            gm,
            EventType::Warning,
            event_reason::DELETION_BLOCKED,
            "Finalize",
            message,
        )
        .await;
    }
    if let Err(e) = status::write(api, ctx, gm, &op).await {
        tracing::warn!(gpumodel = %gm.name_any(), error = %e, "cannot write the Terminating condition");
    }
}
