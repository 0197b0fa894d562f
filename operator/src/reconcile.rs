//! The reconcile: check ownership of the GPU, observe the agent, plan, write what is about to
//! happen, execute, write the operator's status. The finalizer's cleanup is in `cleanup.rs`.

use std::sync::Arc;

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as FinalizerEvent, finalizer},
    },
};
use vramkeeper_crds::{Condition, GpuModel, GpuModelStatus, SwitchTrigger};

use crate::{
    conditions::{self, DEGRADED, Situation, ZOMBIE_MEMORY, reason},
    context::Context,
    error::{Error, Result},
    events::EventType,
    executor::{self, event_reason},
    observe,
    plan::{Outcome, Step},
    planner::{self, Input, RECHECK_BUSY, RECHECK_FAILED, RECHECK_SILENT},
    status,
};

/// The finalizer that makes deletion wait for the unload.
pub const FINALIZER: &str = "vramkeeper.dev/unload";

/// Reconciles one GpuModel (wrapped in kube's finalizer helper).
pub async fn reconcile(gm: Arc<GpuModel>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let api: Api<GpuModel> = Api::all(ctx.client.clone());
    let name = gm.name_any();
    let result = finalizer(&api, FINALIZER, gm, |event| async {
        match event {
            FinalizerEvent::Apply(gm) => apply(&gm, &ctx, &api).await,
            FinalizerEvent::Cleanup(gm) => crate::cleanup::cleanup(&gm, &ctx, &api).await,
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
    if let Some(owner) = ctx.owner_other_than(gm) {
        return conflict(gm, ctx, api, &owner).await;
    }
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
        status::write(api, ctx, gm, &op).await
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
        unknown_failures: ctx.unknown_model.in_a_row(&uid, generation),
    });
    tracing::debug!(gpumodel = %name, step = ?plan.step, zombie = ?plan.zombie, "planned");
    let mut written = gm.status.clone();
    if plan.step.acts() {
        // Say what is about to happen before the agent works on it (a load may take minutes).
        let before = conditions::derive(
            spec,
            generation,
            &observed,
            Situation::Planned {
                plan: &plan,
                outcome: &Outcome::NoCall,
            },
            ctx.now(),
        );
        transition_events(ctx, gm, &observed.conditions, &before.conditions).await;
        status::write(api, ctx, gm, &before).await?;
        written = Some(before.over(&observed));
    }
    // The fields just written are the ones the outcome transitions from.
    let observed = match &written {
        Some(w) if plan.step.acts() => w.clone(),
        _ => observed,
    };
    if let Step::Unload { model } = &plan.step {
        drift_event(ctx, gm, &observed, model).await;
    }
    let executed = executor::execute(ctx, gm, &target, &plan).await;
    match (&plan.step, &executed.outcome) {
        (Step::Load { .. }, Outcome::UnknownModel(_)) => {
            ctx.unknown_model.answered(&uid, generation)
        }
        (Step::Load { .. }, Outcome::Done(_)) => ctx.unknown_model.forget(&uid),
        _ => {}
    }
    let mut op = conditions::derive(
        spec,
        generation,
        &observed,
        Situation::Planned {
            plan: &plan,
            outcome: &executed.outcome,
        },
        ctx.now(),
    );
    if let Some(r) = &executed.remediation {
        let mut ladder = op.ladder.take().unwrap_or_default();
        planner::ladder::record(&mut ladder, r);
        op.ladder = Some(ladder);
    }
    let before = written
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    transition_events(ctx, gm, before, &op.conditions).await;
    status::write_over(api, ctx, gm, written.as_ref(), &op).await?;
    if let Some(e) = executed.error {
        return Err(e);
    }
    Ok(Action::requeue(
        match executed.outcome {
            Outcome::Busy(_) => RECHECK_BUSY,
            _ => plan.recheck,
        }
        .min(ctx.max_recheck),
    ))
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

/// A GpuModel that does not own its (node, GPU): `Ready=False` reason `Conflict` naming the
/// owner, a Warning event when that starts, and nothing else: no agent call.
async fn conflict(
    gm: &GpuModel,
    ctx: &Context,
    api: &Api<GpuModel>,
    owner: &str,
) -> Result<Action> {
    let message = crate::ownership::conflict_message(gm, owner);
    let stored = gm.status.clone().unwrap_or_default();
    let was = stored.conflict_with.is_some();
    let op = conditions::derive(
        &gm.spec,
        gm.metadata.generation.unwrap_or(0),
        &stored,
        Situation::Conflict {
            owner,
            message: &message,
        },
        ctx.now(),
    );
    if !was {
        tracing::warn!(gpumodel = %gm.name_any(), owner, "conflict: another GpuModel owns the GPU");
        executor::publish(
            ctx,
            gm,
            EventType::Warning,
            event_reason::CONFLICT,
            "Claim",
            message,
        )
        .await;
    }
    status::write(api, ctx, gm, &op).await?;
    Ok(Action::requeue(RECHECK_CONFLICT.min(ctx.max_recheck)))
}

/// How often a GpuModel in conflict looks again (the owner may be gone).
pub const RECHECK_CONFLICT: std::time::Duration = std::time::Duration::from_secs(10);

/// A Warning `Drift` when the GPU serves a model switched to outside the operator (the
/// agent's API, or an inference request naming it), before the operator reverts it.
async fn drift_event(ctx: &Context, gm: &GpuModel, observed: &GpuModelStatus, model: &str) {
    let Some(last) = observed.last_switch.as_ref() else {
        return;
    };
    let outside = matches!(last.trigger, SwitchTrigger::Api | SwitchTrigger::Auto);
    if !outside || last.to.as_deref() != Some(model) {
        return;
    }
    let how = match last.trigger {
        SwitchTrigger::Auto => "an inference request naming it",
        _ => "the agent's API",
    };
    let want = gm
        .spec
        .model
        .as_deref()
        .map_or("no model".to_string(), |m| format!("model {m}"));
    executor::publish(
        ctx,
        gm,
        EventType::Warning,
        event_reason::DRIFT,
        "Revert",
        format!(
            "GPU {} of node {} serves {model}, switched to at {} by {how}, outside this GpuModel; reverting to {want}",
            gm.spec.gpu, gm.spec.node_name, last.at
        ),
    )
    .await;
}
