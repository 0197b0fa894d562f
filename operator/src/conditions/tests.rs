//! The one place condition messages are checked: a table per condition. Scenario tests compare
//! type, status and reason only, so rewording a message breaks only its row here.

use vramkeeper_crds::{GpuModelStatus, UnknownModelStatus};

use super::*;
use crate::planner::fixtures::{self, t};

const GPU: &str = "GPU 0 of node node-a";
const NOW: i64 = 100;

/// A planned reconcile: spec wanting `a` (threshold 100 MiB, persist 30 s), the observed
/// status, the plan and what came of it.
struct Case {
    spec: GpuModelSpec,
    status: GpuModelStatus,
    plan: Plan,
    outcome: Outcome,
}

fn case(step: Step) -> Case {
    Case {
        spec: fixtures::spec().model("a").build(),
        status: fixtures::status().active("a").build(),
        plan: Plan::new(step, Zombie::Clear, std::time::Duration::ZERO),
        outcome: Outcome::NoCall,
    }
}

impl Case {
    fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = o;
        self
    }
    fn zombie(mut self, z: Zombie) -> Self {
        self.plan.zombie = z;
        self
    }
    fn active(mut self, m: Option<&str>) -> Self {
        self.status.active_model = m.map(Into::into);
        self
    }
    fn wants(mut self, m: Option<&str>) -> Self {
        self.spec.model = m.map(Into::into);
        self
    }
    fn facts(&self) -> Facts<'_> {
        Facts::new(&self.spec, &self.status, &self.plan, &self.outcome)
    }
    fn ready(&self) -> Verdict {
        ready(&self.facts(), self.status.unknown_model.as_ref())
    }
    fn switching(&self) -> Verdict {
        switching(&self.facts(), self.status.switch_summary.as_deref())
    }
    fn zombie_memory(&self) -> Verdict {
        zombie_memory(&self.facts())
    }
    fn ladder_after(&self) -> LadderStatus {
        ladder_after(&self.facts(), 1, t(NOW))
    }
    fn degraded(&self) -> Verdict {
        degraded(self.ladder_after().degraded.as_ref())
    }
    fn derive(&self) -> OperatorStatus {
        derive(
            &self.spec,
            1,
            &self.status,
            Situation::Planned {
                plan: &self.plan,
                outcome: &self.outcome,
            },
            t(NOW),
        )
    }
}

fn persisting() -> Zombie {
    Zombie::Persisting {
        ghost_mib: 500,
        since: t(0),
    }
}

fn done(s: &str) -> Outcome {
    Outcome::Done(s.into())
}

fn load(m: &str) -> Step {
    Step::Load { model: m.into() }
}

fn unload(m: &str) -> Step {
    Step::Unload { model: m.into() }
}

fn refused() -> UnknownModelStatus {
    UnknownModelStatus {
        model: "a".into(),
        generation: 1,
        at: t(0).to_string(),
        message: "the agent knows no model a".into(),
    }
}

fn check(rows: Vec<(&str, Verdict, (bool, &'static str, String))>) {
    for (name, got, (status, reason, message)) in rows {
        assert_eq!(got, verdict(status, reason, message), "{name}");
    }
}

#[test]
fn ready_words() {
    let mut waiting = case(Step::Wait(Wait::Failed)).active(None);
    waiting.status.unknown_model = Some(refused());
    check(vec![
        (
            "degraded",
            case(Step::Wait(Wait::Degraded)).ready(),
            (
                false,
                reason::ZOMBIE_MEMORY,
                format!("{GPU} is Degraded: zombie memory persists"),
            ),
        ),
        (
            "refused now",
            case(load("a"))
                .active(None)
                .outcome(Outcome::UnknownModel("no model a".into()))
                .ready(),
            (false, reason::UNKNOWN_MODEL, "no model a".into()),
        ),
        (
            "refused before: the agent's words, from the status",
            waiting.ready(),
            (
                false,
                reason::UNKNOWN_MODEL,
                "the agent knows no model a".into(),
            ),
        ),
        (
            "refused, words lost",
            case(Step::Wait(Wait::Failed)).active(None).ready(),
            (
                false,
                reason::UNKNOWN_MODEL,
                "the agent does not know model a".into(),
            ),
        ),
        (
            "step failed",
            case(load("a"))
                .active(None)
                .outcome(Outcome::Failed("boom".into()))
                .ready(),
            (false, reason::STEP_FAILED, "load failed: boom".into()),
        ),
        (
            "switching",
            case(unload("b")).active(Some("b")).ready(),
            (
                false,
                reason::SWITCHING,
                format!("{GPU} holds model b; model a is wanted"),
            ),
        ),
        (
            "zombie memory",
            case(Step::Wait(Wait::Cooldown {
                next: Next::Reset,
                until: t(60),
            }))
            .zombie(persisting())
            .ready(),
            (
                false,
                reason::ZOMBIE_MEMORY,
                format!("{GPU} serves model a, but zombie memory persists"),
            ),
        ),
        (
            "busy",
            case(Step::Wait(Wait::AgentBusy)).ready(),
            (
                false,
                reason::AGENT_BUSY,
                format!("{GPU} serves model a; the agent is busy"),
            ),
        ),
        (
            "parked",
            case(Step::Parked { model: "a".into() })
                .active(None)
                .ready(),
            (
                true,
                reason::IDLE_UNLOADED,
                format!(
                    "a was unloaded from {GPU} after serving nothing for a while; the next inference request that names it loads it again"
                ),
            ),
        ),
        (
            "active",
            case(Step::InSync).ready(),
            (true, reason::MODEL_ACTIVE, format!("a is active on {GPU}")),
        ),
        (
            "no model",
            case(Step::InSync).wants(None).active(None).ready(),
            (
                true,
                reason::NO_MODEL,
                format!("{GPU} holds no model, as wanted"),
            ),
        ),
    ]);
}

#[test]
fn switching_words() {
    let mut after_load = case(Step::InSync);
    after_load.status.switch_summary = Some("loaded a".into());
    check(vec![
        (
            "busy",
            case(Step::Wait(Wait::AgentBusy)).switching(),
            (
                true,
                reason::AGENT_BUSY,
                "the agent is busy with another operation".into(),
            ),
        ),
        (
            "busy, in the agent's words",
            case(load("a"))
                .active(None)
                .outcome(Outcome::Busy("switching to b".into()))
                .switching(),
            (true, reason::AGENT_BUSY, "switching to b".into()),
        ),
        (
            "loaded",
            case(load("a"))
                .active(None)
                .outcome(done("loaded a"))
                .switching(),
            (false, reason::DONE, "loaded a".into()),
        ),
        (
            "the last switch's words stay",
            after_load.switching(),
            (false, reason::DONE, "loaded a".into()),
        ),
        (
            "idle",
            case(Step::InSync).switching(),
            (false, reason::IDLE, "no switch under way".into()),
        ),
        (
            "unloaded, more to come",
            case(unload("b"))
                .active(Some("b"))
                .outcome(done("unloaded b"))
                .switching(),
            (
                true,
                reason::UNLOADING,
                "unloaded b; next: model a, once memory is back (was b)".into(),
            ),
        ),
        (
            "unloading",
            case(unload("b")).active(Some("b")).switching(),
            (true, reason::UNLOADING, "unloading b".into()),
        ),
        (
            "unloading for idleness",
            case(Step::IdleUnload {
                model: "a".into(),
                idle_s: 600,
            })
            .switching(),
            (
                true,
                reason::UNLOADING,
                "unloading a: it served nothing for 600 s".into(),
            ),
        ),
        (
            "loading",
            case(load("a")).active(None).switching(),
            (true, reason::LOADING, "loading a".into()),
        ),
        (
            "waiting for memory",
            case(Step::Wait(Wait::MemoryNotBack))
                .active(None)
                .switching(),
            (
                true,
                reason::WAITING_FOR_MEMORY,
                "model a loads once the ghost memory is back under the threshold".into(),
            ),
        ),
        (
            "blocked",
            case(Step::Free)
                .active(None)
                .zombie(persisting())
                .switching(),
            (
                true,
                reason::BLOCKED,
                format!("model a is wanted; zombie memory on {GPU} is dealt with first"),
            ),
        ),
    ]);
}

#[test]
fn zombie_memory_words() {
    let over = "ghost memory 500 MiB over the 100 MiB threshold since 2027-01-15T08:00:00Z";
    let cooldown =
        |next| case(Step::Wait(Wait::Cooldown { next, until: t(60) })).zombie(persisting());
    check(vec![
        (
            "clear",
            case(Step::InSync).zombie_memory(),
            (
                false,
                reason::BELOW_THRESHOLD,
                "ghost memory 0 MiB, threshold 100 MiB".into(),
            ),
        ),
        (
            "suspected",
            case(Step::Wait(Wait::ZombieSuspected))
                .zombie(Zombie::Suspected {
                    ghost_mib: 500,
                    since: Some(t(0)),
                    until: Some(t(30)),
                })
                .zombie_memory(),
            (
                false,
                reason::SUSPECTED,
                "ghost memory 500 MiB is over the 100 MiB threshold, not yet for 30 s".into(),
            ),
        ),
        (
            "freed",
            case(Step::Free)
                .zombie(persisting())
                .outcome(done("freed 400 MiB"))
                .zombie_memory(),
            (true, reason::FREEING, format!("{over}: freed 400 MiB")),
        ),
        (
            "freeing",
            case(Step::Free).zombie(persisting()).zombie_memory(),
            (true, reason::FREEING, format!("{over}: freeing")),
        ),
        (
            "reset",
            case(Step::Reset)
                .zombie(persisting())
                .outcome(done("reset the device"))
                .zombie_memory(),
            (true, reason::RESETTING, format!("{over}: reset the device")),
        ),
        (
            "resetting",
            case(Step::Reset).zombie(persisting()).zombie_memory(),
            (true, reason::RESETTING, format!("{over}: resetting")),
        ),
        (
            "cooling down before a free",
            cooldown(Next::Free).zombie_memory(),
            (
                true,
                reason::COOLING_DOWN,
                format!("{over}: free after the cooldown, at 2027-01-15T08:01:00Z"),
            ),
        ),
        (
            "cooling down before a reset",
            cooldown(Next::Reset).zombie_memory(),
            (
                true,
                reason::COOLING_DOWN,
                format!("{over}: reset after the cooldown, at 2027-01-15T08:01:00Z"),
            ),
        ),
        (
            "cooling down before the judgement",
            cooldown(Next::Judge).zombie_memory(),
            (
                true,
                reason::COOLING_DOWN,
                format!("{over}: judge after the cooldown, at 2027-01-15T08:01:00Z"),
            ),
        ),
        (
            "degraded",
            case(Step::Wait(Wait::Degraded))
                .zombie(persisting())
                .zombie_memory(),
            (
                true,
                reason::ZOMBIE_MEMORY,
                format!("{over}: no more automatic action"),
            ),
        ),
        (
            "another model first",
            case(unload("b"))
                .active(Some("b"))
                .zombie(persisting())
                .zombie_memory(),
            (
                true,
                reason::ZOMBIE_MEMORY,
                format!("{over}: unloading first"),
            ),
        ),
    ]);
}

#[test]
fn degraded_words() {
    let tail = "no more automatic action until the ghost clears or the spec changes";
    let marked = |why| case(Step::MarkDegraded(why)).degraded();
    check(vec![
        (
            "reset did not clear",
            marked(DegradedWhy::ResetDidNotClear),
            (
                true,
                DegradedReason::ResetDidNotClear.as_str(),
                format!("zombie memory persists after a free and a reset; {tail}"),
            ),
        ),
        (
            "budget spent",
            marked(DegradedWhy::ResetBudgetSpent { resets: 2, max: 2 }),
            (
                true,
                DegradedReason::ResetBudgetSpent.as_str(),
                format!(
                    "zombie memory persists after a free, and 2 of 2 resets this hour are spent; {tail}"
                ),
            ),
        ),
        (
            "no reset allowed",
            marked(DegradedWhy::NoResetAllowed),
            (
                true,
                DegradedReason::NoResetAllowed.as_str(),
                format!(
                    "zombie memory persists after a free, and the policy allows no reset (resetAfterFree true, maxResetsPerHour 2); {tail}"
                ),
            ),
        ),
        (
            "as expected",
            case(Step::InSync).degraded(),
            (
                false,
                reason::AS_EXPECTED,
                "automatic remediation has not given up".into(),
            ),
        ),
    ]);
}

/// A plan's ladder starts from the stored one (the planner clones it), so these cases put the
/// stored memory there too.
fn with_ladder(mut c: Case, l: &LadderStatus) -> Case {
    c.status.ladder = Some(l.clone());
    c.plan.ladder = l.clone();
    c
}

#[test]
fn degraded_comes_from_the_typed_memory_and_keeps_its_words() {
    let held = fixtures::status().degraded_memory(1, 10).build();
    let l = held.ladder.clone().unwrap();
    let d = l.degraded.clone().unwrap();
    // While it holds: the stored words, and the memory as it is.
    let c = with_ladder(case(Step::Wait(Wait::Degraded)), &l);
    assert_eq!(
        c.degraded(),
        verdict(true, d.reason.as_str(), d.message.clone())
    );
    assert_eq!(c.ladder_after(), l);
    // Anything else lifts it, and says when.
    let lifted = with_ladder(case(Step::Free), &l).ladder_after();
    assert_eq!(lifted.degraded, None);
    assert_eq!(lifted.lifted_at, Some(t(NOW).to_string()));
    // Giving up again at a later generation keeps since when.
    let again = with_ladder(case(Step::MarkDegraded(DegradedWhy::NoResetAllowed)), &l);
    let again = again.ladder_after().degraded.unwrap();
    assert_eq!(
        (again.generation, again.reason, again.since),
        (1, DegradedReason::NoResetAllowed, d.since)
    );
    // Giving up for the first time: since now.
    let first = case(Step::MarkDegraded(DegradedWhy::ResetDidNotClear)).ladder_after();
    assert_eq!(first.degraded.unwrap().since, t(NOW).to_string());
}

#[test]
fn a_degraded_condition_without_the_typed_memory_is_not_kept() {
    // A status whose Degraded condition says True (written before `ladder.degraded` existed,
    // or by hand) but whose ladder holds nothing: derive does not carry the condition.
    let mut c = case(Step::Wait(Wait::Degraded));
    c.status = fixtures::status()
        .active("a")
        .condition(
            DEGRADED,
            true,
            DegradedReason::ResetDidNotClear.as_str(),
            1,
            10,
        )
        .build();
    let out = c.derive();
    let d = out.conditions.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("False", reason::AS_EXPECTED)
    );
}

#[test]
fn unheard_words() {
    let c = case(Step::InSync);
    let op = derive(
        &c.spec,
        1,
        &c.status,
        Situation::Unheard {
            reason: reason::AGENT_UNREACHABLE,
            message: "connection refused",
        },
        t(NOW),
    );
    let words: Vec<_> = op
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.reason.as_str(), c.message.as_str()))
        .collect();
    assert_eq!(
        words,
        [
            (READY, reason::AGENT_UNREACHABLE, "connection refused"),
            (SWITCHING, reason::AGENT_UNREACHABLE, "connection refused"),
            (
                ZOMBIE_MEMORY,
                reason::AGENT_SILENT,
                "the agent has not reported"
            ),
            (DEGRADED, reason::AGENT_SILENT, "the agent has not reported"),
        ]
    );
    let silent = case(Step::Wait(Wait::AgentSilent { reported_at: None })).derive();
    assert_eq!(silent.conditions[0].reason, reason::AGENT_SILENT);
    assert_eq!(
        silent.conditions[0].message,
        "the agent has not reported recently"
    );
}

/// The memory the next reconcile plans on is in typed fields, never in a condition: a refused
/// load is recorded with the agent's words, kept while the retry waits, dropped after.
#[test]
fn a_refused_load_is_remembered_in_the_status_not_in_ready() {
    let c = case(load("a"))
        .active(None)
        .outcome(Outcome::UnknownModel("the agent knows no model a".into()));
    let op = c.derive();
    assert_eq!(
        op.unknown_model,
        Some(UnknownModelStatus {
            at: t(NOW).to_string(),
            ..refused()
        })
    );
    assert_eq!(op.phase, Phase::Failed);
    let mut waiting = case(Step::Wait(Wait::Failed)).active(None);
    waiting.status.unknown_model = Some(refused());
    assert_eq!(waiting.derive().unknown_model, Some(refused()));
    // A Ready condition that says UnknownModel does not make a refusal.
    let mut c = case(Step::InSync);
    c.status.conditions = op.conditions;
    assert_eq!(c.derive().unknown_model, None);
}

/// `switchSummary` holds the words of `Switching`'s `Done`, and only while it shows them.
#[test]
fn the_last_switch_is_remembered_while_done_shows() {
    let loaded = case(load("a"))
        .active(None)
        .outcome(done("loaded a"))
        .derive();
    assert_eq!(loaded.switch_summary.as_deref(), Some("loaded a"));
    let mut c = case(Step::InSync);
    c.status = loaded.over(&c.status);
    assert_eq!(c.derive().switch_summary.as_deref(), Some("loaded a"));
    // A Switching condition that says Done does not make a summary.
    c.status.switch_summary = None;
    assert_eq!(c.derive().switch_summary, None);
    assert_eq!(c.switching().reason, reason::IDLE);
    // The next switch ends it.
    let mut c = case(unload("a")).wants(Some("b"));
    c.status.switch_summary = Some("loaded a".into());
    assert_eq!(c.derive().switch_summary, None);
}

#[test]
fn a_conflict_fails_names_the_owner_and_carries_the_ladder() {
    let c = case(Step::InSync);
    let op = derive(
        &c.spec,
        1,
        &c.status,
        Situation::Conflict {
            owner: "gm-old",
            message: "owned by gm-old",
        },
        t(NOW),
    );
    assert_eq!(op.phase, Phase::Failed);
    assert_eq!(op.conflict_with.as_deref(), Some("gm-old"));
    assert_eq!(
        (
            op.conditions[0].reason.as_str(),
            op.conditions[0].message.as_str()
        ),
        (reason::CONFLICT, "owned by gm-old")
    );
}
