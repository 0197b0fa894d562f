//! The executor: carries out the planner's step on the agent, records what came of it, and
//! publishes an Event for every step that does something.

use std::time::Instant;

use kube::{Resource, ResourceExt};
use vramkeeper_crds::{
    GpuModel, SwitchTrigger,
    api::{ErrorCode, ReleaseReport, RemediationAction, RemediationReport},
};

use crate::{
    agent_client::AgentTarget,
    context::Context,
    error::Error,
    events::EventType,
    plan::{DegradedWhy, Outcome, Plan, Step},
    planner::{Remediation, RemedyKind, parse_time},
};

/// Event reasons.
pub mod event_reason {
    /// A model was unloaded.
    pub const UNLOADED: &str = "Unloaded";
    /// A model that served nothing for `idleUnloadSeconds` was unloaded.
    pub const IDLE_UNLOADED: &str = "IdleUnloaded";
    /// An unload finished but the memory did not come back within the tolerance.
    pub const RELEASE_UNVERIFIED: &str = "ReleaseUnverified";
    /// A model was loaded.
    pub const LOADED: &str = "Loaded";
    /// The agent does not know the model.
    pub const UNKNOWN_MODEL: &str = "UnknownModel";
    /// An unload or load failed.
    pub const SWITCH_FAILED: &str = "SwitchFailed";
    /// The agent has no room for the model.
    pub const INSUFFICIENT_MEMORY: &str = "InsufficientMemory";
    /// Zombie memory was found.
    pub const ZOMBIE_MEMORY: &str = "ZombieMemory";
    /// A free ran.
    pub const FREED: &str = "Freed";
    /// A reset ran.
    pub const RESET: &str = "Reset";
    /// A free or reset failed.
    pub const REMEDIATION_FAILED: &str = "RemediationFailed";
    /// The ladder gave up.
    pub const DEGRADED: &str = "Degraded";
    /// Degraded was lifted.
    pub const RECOVERED: &str = "Recovered";
    /// Another GpuModel owns this one's (node, GPU).
    pub const CONFLICT: &str = "Conflict";
    /// The GPU serves a model the spec does not want, switched to outside the operator (through
    /// the agent's API or an inference request): it is reverted next.
    pub const DRIFT: &str = "Drift";
    /// A deletion cannot finish: the model could not be unloaded.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
}

/// What came of a step: the outcome the conditions show, and the error to back off on.
#[derive(Debug)]
pub struct Executed {
    /// For the conditions.
    pub outcome: Outcome,
    /// For the error policy (busy and unknown-model answers are not errors).
    pub error: Option<Error>,
    /// The free or reset the step ran, for the ladder's memory.
    pub remediation: Option<Remediation>,
}

impl Executed {
    fn no_call() -> Self {
        Self {
            outcome: Outcome::NoCall,
            error: None,
            remediation: None,
        }
    }

    fn done(summary: String) -> Self {
        Self {
            outcome: Outcome::Done(summary),
            error: None,
            remediation: None,
        }
    }
}

/// Publishes an Event about `gm`; a failure is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    gm: &GpuModel,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let regarding = gm.object_ref(&());
    if let Err(e) = ctx
        .events
        .publish(&regarding, type_, reason, action, &note, ctx.now())
        .await
    {
        tracing::warn!(gpumodel = %gm.name_any(), reason, error = %e, "cannot publish an event");
    }
}

/// Carries out `plan`'s step against the agent at `target`.
pub async fn execute(ctx: &Context, gm: &GpuModel, target: &AgentTarget, plan: &Plan) -> Executed {
    let gpu = gm.spec.gpu;
    let name = gm.name_any();
    ctx.metrics.step(plan.step.name());
    match &plan.step {
        Step::Unload { model } => unload(ctx, gm, target, model, None).await,
        Step::IdleUnload { model, idle_s } => unload(ctx, gm, target, model, Some(*idle_s)).await,
        Step::Load { model } => {
            let started = Instant::now();
            let result = ctx.agent.switch(target, gpu, model).await;
            ctx.metrics
                .agent_call("load", result.is_ok(), started.elapsed());
            match result {
                Ok(r) => {
                    let summary = format!(
                        "loaded {} in {:.0} ms; it uses {:.0} MiB of device memory and {:.0} MiB of host memory",
                        r.to, r.load_ms, r.vram_mb, r.ram_mb
                    );
                    tracing::info!(gpumodel = %name, model = %r.to, load_ms = r.load_ms, vram_mb = r.vram_mb, "loaded");
                    publish(
                        ctx,
                        gm,
                        EventType::Normal,
                        event_reason::LOADED,
                        "Load",
                        summary.clone(),
                    )
                    .await;
                    Executed::done(summary)
                }
                Err(Error::AgentRejected {
                    code: ErrorCode::UnknownModel,
                    message,
                    ..
                }) => {
                    tracing::warn!(gpumodel = %name, model = %model, "the agent does not know the model");
                    publish(
                        ctx,
                        gm,
                        EventType::Warning,
                        event_reason::UNKNOWN_MODEL,
                        "Load",
                        message.clone(),
                    )
                    .await;
                    Executed {
                        outcome: Outcome::UnknownModel(message),
                        error: None,
                        remediation: None,
                    }
                }
                Err(e) => failed(ctx, gm, "Load", event_reason::SWITCH_FAILED, e).await,
            }
        }
        Step::Free | Step::Reset => {
            let (kind, action) = if plan.step == Step::Free {
                (RemedyKind::Free, "Free")
            } else {
                (RemedyKind::Reset, "Reset")
            };
            let started = Instant::now();
            let kill_foreign = gm.spec.zombie.kill_foreign_processes;
            let result = match kind {
                RemedyKind::Free => ctx.agent.free(target, gpu, kill_foreign).await,
                RemedyKind::Reset => ctx.agent.reset(target, gpu, kill_foreign).await,
            };
            ctx.metrics
                .agent_call(kind.as_str(), result.is_ok(), started.elapsed());
            match result {
                Ok(r) => {
                    let ran = parse_time(&r.at).map(|at| Remediation {
                        kind,
                        at,
                        by_operator: true,
                    });
                    if let Some(ran) = &ran {
                        ctx.record(gm.uid().as_deref().unwrap_or(&name), ran.clone());
                    }
                    let summary = remediation_words(&r);
                    tracing::info!(gpumodel = %name, action = kind.as_str(), ghost_before_mb = r.ghost_before_mb, ghost_after_mb = r.ghost_after_mb, killed = r.killed.len(), "remediated");
                    let reason = match r.action {
                        RemediationAction::Free => event_reason::FREED,
                        RemediationAction::Reset => event_reason::RESET,
                    };
                    publish(ctx, gm, EventType::Normal, reason, action, summary.clone()).await;
                    Executed {
                        remediation: ran,
                        ..Executed::done(summary)
                    }
                }
                Err(e) => failed(ctx, gm, action, event_reason::REMEDIATION_FAILED, e).await,
            }
        }
        Step::MarkDegraded(why) => {
            let note = match why {
                DegradedWhy::ResetDidNotClear => "zombie memory persists after a free and a reset",
                DegradedWhy::ResetBudgetSpent { .. } => {
                    "zombie memory persists after a free, and this hour's reset budget is spent"
                }
                DegradedWhy::NoResetAllowed => {
                    "zombie memory persists after a free, and the policy allows no reset"
                }
            };
            tracing::warn!(gpumodel = %name, ?why, "degraded");
            publish(
                ctx,
                gm,
                EventType::Warning,
                event_reason::DEGRADED,
                "MarkDegraded",
                format!(
                    "{note}; no more automatic action until the ghost clears or the spec changes"
                ),
            )
            .await;
            Executed::no_call()
        }
        Step::Wait(_) | Step::InSync | Step::Parked { .. } => Executed::no_call(),
    }
}

async fn failed(ctx: &Context, gm: &GpuModel, action: &str, reason: &str, e: Error) -> Executed {
    if e.is_busy() {
        tracing::debug!(gpumodel = %gm.name_any(), action, "agent busy");
        return Executed {
            outcome: Outcome::Busy(e.to_string()),
            error: None,
            remediation: None,
        };
    }
    if let Error::AgentRejected { status: 401, .. } = e {
        ctx.agents.forget_token();
    }
    tracing::warn!(gpumodel = %gm.name_any(), action, error = %e, "agent call failed");
    let no_room = matches!(
        e.inner(),
        Error::AgentRejected {
            code: ErrorCode::InsufficientMemory,
            ..
        }
    );
    let reason = if no_room {
        event_reason::INSUFFICIENT_MEMORY
    } else {
        reason
    };
    publish(ctx, gm, EventType::Warning, reason, action, e.to_string()).await;
    Executed {
        outcome: if no_room {
            Outcome::NoRoom(e.to_string())
        } else {
            Outcome::Failed(e.to_string())
        },
        error: Some(e),
        remediation: None,
    }
}

/// Unloads `model`: for the spec, or (`idle_s` given) because it served nothing that long.
async fn unload(
    ctx: &Context,
    gm: &GpuModel,
    target: &AgentTarget,
    model: &str,
    idle_s: Option<u64>,
) -> Executed {
    let (trigger, action) = match idle_s {
        Some(_) => (SwitchTrigger::Idle, "IdleUnload"),
        None => (SwitchTrigger::Spec, "Unload"),
    };
    let started = Instant::now();
    let result = ctx.agent.unload(target, gm.spec.gpu, trigger).await;
    ctx.metrics
        .agent_call("unload", result.is_ok(), started.elapsed());
    match result {
        Ok(r) => {
            let (verified, mut summary) = match &r.release {
                Some(rel) => (rel.verified, release_words(rel)),
                None => (true, format!("{model} was already unloaded")),
            };
            if let Some(s) = idle_s {
                summary = format!(
                    "{summary}; it served nothing for {s} s (idleUnloadSeconds), and the next inference request that names it loads it again"
                );
            }
            tracing::info!(gpumodel = %gm.name_any(), model = %model, verified, idle_s, "unloaded");
            let (type_, reason) = match (verified, idle_s) {
                (false, _) => (EventType::Warning, event_reason::RELEASE_UNVERIFIED),
                (true, Some(_)) => (EventType::Normal, event_reason::IDLE_UNLOADED),
                (true, None) => (EventType::Normal, event_reason::UNLOADED),
            };
            publish(ctx, gm, type_, reason, action, summary.clone()).await;
            Executed::done(summary)
        }
        Err(e) => failed(ctx, gm, action, event_reason::SWITCH_FAILED, e).await,
    }
}

fn release_words(r: &ReleaseReport) -> String {
    if r.verified {
        format!(
            "unloaded {} in {:.0} ms; memory came back to {:.0} MiB (target {:.0} MiB)",
            r.model, r.elapsed_ms, r.after_mb, r.target_mb
        )
    } else {
        format!(
            "unloaded {} in {:.0} ms, but memory stayed at {:.0} MiB (target {:.0} + {:.0} MiB)",
            r.model, r.elapsed_ms, r.after_mb, r.target_mb, r.tolerance_mb
        )
    }
}

fn remediation_words(r: &RemediationReport) -> String {
    let what = match r.action {
        RemediationAction::Free => "freed",
        RemediationAction::Reset => "reset",
    };
    let mut s = format!(
        "{what}: ghost memory {:.0} -> {:.0} MiB, {} processes ended",
        r.ghost_before_mb,
        r.ghost_after_mb,
        r.killed.len()
    );
    if r.cleaned_mb > 0.0 {
        s.push_str(&format!(", {:.0} MiB of pools released", r.cleaned_mb));
    }
    if let Some(m) = &r.reloaded {
        s.push_str(&format!(", {m} reloaded"));
    }
    if let Some(b) = r.at_baseline {
        s.push_str(if b {
            ", back at baseline"
        } else {
            ", not back at baseline"
        });
    }
    s
}
