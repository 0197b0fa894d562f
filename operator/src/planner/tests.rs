//! One test per planner rule.

use std::time::Duration;

use super::{fixtures::*, *};
use crate::plan::{DegradedWhy, Next};

fn step(c: &Case) -> Step {
    c.plan().step
}

fn unload(m: &str) -> Step {
    Step::Unload { model: m.into() }
}

fn load(m: &str) -> Step {
    Step::Load { model: m.into() }
}

#[test]
fn waits_for_a_report_and_distrusts_an_old_one() {
    let c = case(spec().model("a"), status().unreported());
    assert_eq!(
        step(&c),
        Step::Wait(Wait::AgentSilent { reported_at: None })
    );
    let mut c = case(spec().model("a"), status()).at(1000);
    c.status.reported_at = Some(t(1000 - 61).to_string());
    assert!(matches!(step(&c), Step::Wait(Wait::AgentSilent { .. })));
    c.status.reported_at = Some(t(1000 - 59).to_string());
    assert_eq!(step(&c), load("a"));
}

#[test]
fn waits_while_the_agent_is_busy() {
    let c = case(spec().model("b"), status().active("a").busy());
    assert_eq!(step(&c), Step::Wait(Wait::AgentBusy));
    assert_eq!(c.plan().recheck, RECHECK_BUSY);
}

#[test]
fn unloads_another_model_before_loading() {
    assert_eq!(
        step(&case(spec().model("b"), status().active("a"))),
        unload("a")
    );
    // Then, with nothing active, loads.
    assert_eq!(step(&case(spec().model("b"), status())), load("b"));
}

#[test]
fn unloads_when_no_model_is_wanted() {
    assert_eq!(step(&case(spec(), status().active("a"))), unload("a"));
    assert_eq!(step(&case(spec(), status())), Step::InSync);
}

#[test]
fn loads_only_once_the_memory_came_back() {
    // Ghost over the threshold right after the unload: not yet.
    let c = case(spec().model("b"), status().ghost(500, Some(-5)));
    let p = c.plan();
    assert_eq!(p.step, Step::Wait(Wait::MemoryNotBack));
    // Rechecks when it would become zombie memory (25 s), capped.
    assert_eq!(p.recheck, RECHECK_MEMORY_MAX);
    let c = case(spec().model("b"), status().ghost(500, Some(-28)));
    assert_eq!(c.plan().recheck, Duration::from_secs(2));
    // Back under the threshold: load.
    assert_eq!(
        step(&case(spec().model("b"), status().ghost(100, None))),
        load("b")
    );
}

#[test]
fn in_sync_is_in_sync_and_a_suspect_ghost_is_watched() {
    let c = case(spec().model("a"), status().active("a"));
    assert_eq!(
        c.plan(),
        Plan::new(Step::InSync, Zombie::Clear, RECHECK_IN_SYNC)
    );
    let c = case(
        spec().model("a"),
        status().active("a").ghost(500, Some(-10)),
    );
    assert_eq!(step(&c), Step::Wait(Wait::ZombieSuspected));
}

#[test]
fn persisting_ghost_is_freed_first() {
    let c = case(
        spec().model("a"),
        status().active("a").ghost(500, Some(-30)),
    );
    let p = c.plan();
    assert_eq!(p.step, Step::Free);
    assert_eq!(
        p.zombie,
        Zombie::Persisting {
            ghost_mib: 500,
            since: t(-30)
        }
    );
    // Also with nothing loaded and nothing wanted (an orphan holds it).
    assert_eq!(
        step(&case(spec(), status().ghost(500, Some(-30)))),
        Step::Free
    );
}

#[test]
fn a_persisting_ghost_waits_for_the_unload_first() {
    let c = case(
        spec().model("b"),
        status().active("a").ghost(500, Some(-300)),
    );
    assert_eq!(step(&c), unload("a"));
}

#[test]
fn reset_follows_a_free_after_the_cooldown() {
    let s = || status().active("a").ghost(500, Some(-100));
    let c = case(spec().model("a"), s()).history(&[free_at(-30)]);
    let p = c.plan();
    assert_eq!(
        p.step,
        Step::Wait(Wait::Cooldown {
            next: Next::Reset,
            until: t(30)
        })
    );
    assert_eq!(p.recheck, Duration::from_secs(30));
    let c = case(spec().model("a"), s()).history(&[free_at(-60)]);
    assert_eq!(step(&c), Step::Reset);
}

#[test]
fn degraded_after_a_reset_that_did_not_clear() {
    let s = || status().active("a").ghost(500, Some(-200));
    let c = case(spec().model("a"), s()).history(&[free_at(-150), reset_at(-30)]);
    assert_eq!(
        step(&c),
        Step::Wait(Wait::Cooldown {
            next: Next::Judge,
            until: t(30)
        })
    );
    let c = case(spec().model("a"), s()).history(&[free_at(-150), reset_at(-90)]);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::ResetDidNotClear));
    assert!(c.plan().degraded());
}

#[test]
fn the_reset_budget_is_never_exceeded() {
    let s = || status().active("a").ghost(500, Some(-100));
    // Two resets by the operator in the last hour (earlier episodes), a free in this one.
    let h = [reset_at(-3000), reset_at(-2000), free_at(-90)];
    let c = case(spec().model("a"), s()).history(&h);
    assert_eq!(
        step(&c),
        Step::MarkDegraded(DegradedWhy::ResetBudgetSpent { resets: 2, max: 2 })
    );
    // An hour later the first no longer counts.
    let h = [reset_at(-3601), reset_at(-2000), free_at(-90)];
    assert_eq!(step(&case(spec().model("a"), s()).history(&h)), Step::Reset);
    // Resets asked for through the API do not spend the operator's budget.
    let mut h = [reset_at(-3000), reset_at(-2000), free_at(-90)];
    h[0].by_operator = false;
    assert_eq!(step(&case(spec().model("a"), s()).history(&h)), Step::Reset);
}

#[test]
fn no_reset_when_the_policy_allows_none() {
    let s = || status().active("a").ghost(500, Some(-100));
    let h = [free_at(-90)];
    let c = case(spec().model("a").no_reset(), s()).history(&h);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::NoResetAllowed));
    let c = case(spec().model("a").max_resets(0), s()).history(&h);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::NoResetAllowed));
}

#[test]
fn no_automatic_action_while_degraded() {
    let s = || status().active("a").ghost(500, Some(-500)).degraded(1, -10);
    let c = case(spec().model("a"), s()).history(&[free_at(-400), reset_at(-300)]);
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
    assert!(c.plan().degraded());
    // Not even an unload the spec did not ask for (another model, loaded through the API).
    let c = case(spec().model("a"), s().active("x"));
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
    // A suspect ghost keeps it Degraded too.
    let c = case(
        spec().model("a"),
        status().active("a").ghost(500, Some(-1)).degraded(1, -10),
    );
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
}

#[test]
fn degraded_lifts_when_the_ghost_clears() {
    let c = case(spec().model("a"), status().active("a").degraded(1, -10));
    assert_eq!(step(&c), Step::InSync);
    assert!(!c.plan().degraded());
}

#[test]
fn a_spec_change_restarts_the_ladder() {
    let s = || status().ghost(500, Some(-500)).degraded(1, -10);
    let h = [free_at(-400), reset_at(-300)];
    // Generation 2: the spec changed since Degraded was set. Unload first...
    let c = case(spec().model("b"), s().active("a"))
        .generation(2)
        .history(&h);
    assert_eq!(step(&c), unload("a"));
    // ... then free again: the earlier free and reset belong to the judged episode.
    let c = case(spec().model("b"), s()).generation(2).history(&h);
    assert_eq!(step(&c), Step::Free);
    // At generation 1 it stays Degraded.
    let c = case(spec().model("b"), s()).history(&h);
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
}

#[test]
fn the_hold_is_read_from_the_typed_memory_not_the_condition() {
    let s = || status().active("a").ghost(500, Some(-500));
    let h = [free_at(-400), reset_at(-300)];
    // The Degraded condition says True at this generation, but the ladder holds nothing: no
    // hold (the ladder judges again from its steps).
    let c = case(
        spec().model("a"),
        s().condition("Degraded", true, "ResetDidNotClear", 1, -10),
    )
    .history(&h);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::ResetDidNotClear));
    // The ladder holds Degraded, whatever the condition says (absent, or False).
    let c = case(spec().model("a"), s().degraded_memory(1, -10)).history(&h);
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
    let c = case(
        spec().model("a"),
        s().degraded_memory(1, -10)
            .condition("Degraded", false, "AsExpected", 1, -10),
    )
    .history(&h);
    assert_eq!(step(&c), Step::Wait(Wait::Degraded));
}

#[test]
fn the_ladder_starts_again_after_a_lift_not_after_a_condition_change() {
    let s = || status().active("a").ghost(500, Some(-500));
    let h = [free_at(-400), reset_at(-300)];
    // Lifted at -200: the free and reset before it belong to the judged episode.
    let c = case(spec().model("a"), s().lifted(-200)).history(&h);
    assert_eq!(step(&c), Step::Free);
    // A Degraded condition that turned False at -200, with no typed lift: the steps count.
    let c = case(
        spec().model("a"),
        s().condition("Degraded", false, "AsExpected", 1, -200),
    )
    .history(&h);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::ResetDidNotClear));
    // Degraded at an earlier generation since -350: only the reset after it counts.
    let c = case(spec().model("a"), s().degraded_memory(1, -350))
        .generation(2)
        .history(&h);
    assert_eq!(step(&c), Step::MarkDegraded(DegradedWhy::ResetDidNotClear));
    let c = case(spec().model("a"), s().degraded_memory(1, -250))
        .generation(2)
        .history(&h);
    assert_eq!(step(&c), Step::Free);
}

#[test]
fn a_new_episode_starts_with_a_free() {
    // A free and a reset long ago cleared an earlier episode; the ghost is back.
    let h = [free_at(-2000), reset_at(-1900)];
    let c = case(
        spec().model("a"),
        status().active("a").ghost(500, Some(-40)),
    )
    .history(&h);
    assert_eq!(step(&c), Step::Free);
}

#[test]
fn any_recent_remediation_holds_the_cooldown() {
    // A free through the API 10 s ago: no free by the operator now.
    let mut api_free = free_at(-10);
    api_free.by_operator = false;
    let c = case(
        spec().model("a"),
        status().active("a").ghost(500, Some(-100)),
    )
    .history(&[api_free]);
    assert!(matches!(
        step(&c),
        Step::Wait(Wait::Cooldown {
            next: Next::Reset,
            ..
        })
    ));
}

#[test]
fn an_unknown_model_is_not_retried_until_the_spec_changes() {
    let c = case(spec().model("nope"), status().unknown_model(1));
    assert_eq!(step(&c), Step::Wait(Wait::Failed));
    assert_eq!(c.plan().recheck, RECHECK_FAILED);
    let c = case(spec().model("other"), status().unknown_model(1)).generation(2);
    assert_eq!(step(&c), load("other"));
}

#[test]
fn an_unknown_model_the_catalog_lists_is_retried_with_a_growing_backoff() {
    // Failed at t(0); the agent's catalog lists the model now.
    let listed = || status().unknown_model(1).used("nope", None);
    for (failures, delay) in [
        (0, 5),
        (1, 5),
        (2, 10),
        (3, 20),
        (5, 80),
        (7, 300),
        (40, 300),
    ] {
        let c = case(spec().model("nope"), listed())
            .unknown_failures(failures)
            .at(delay - 1);
        assert_eq!(step(&c), Step::Wait(Wait::Failed), "{failures} failures");
        assert_eq!(c.plan().recheck, Duration::from_secs(1));
        let c = case(spec().model("nope"), listed())
            .unknown_failures(failures)
            .at(delay);
        assert_eq!(step(&c), load("nope"), "{failures} failures, {delay} s");
    }
    // Not listed: every RETRY_UNKNOWN_MAX, however many failures.
    for failures in [1, 9] {
        let c = case(spec().model("nope"), status().unknown_model(1))
            .unknown_failures(failures)
            .at(299);
        assert_eq!(step(&c), Step::Wait(Wait::Failed));
    }
    assert_eq!(retry_unknown_after(false, 1), RETRY_UNKNOWN_MAX);
}

#[test]
fn the_policy_threshold_decides_and_persist_counts_from_the_agents_since() {
    // Ghost at the threshold is not over it.
    let c = case(
        spec().model("a"),
        status().active("a").ghost(100, Some(-1000)),
    );
    assert_eq!(step(&c), Step::InSync);
    // Over it, but the agent has no "since" (its own threshold is higher): suspect, no action.
    let c = case(spec().model("a"), status().active("a").ghost(500, None));
    assert_eq!(step(&c), Step::Wait(Wait::ZombieSuspected));
    // Persist 10 s.
    let c = case(
        spec().model("a").persist(10),
        status().active("a").ghost(500, Some(-10)),
    );
    assert_eq!(step(&c), Step::Free);
    let c = case(
        spec().model("a").cooldown(5),
        status().active("a").ghost(500, Some(-100)),
    )
    .history(&[free_at(-5)]);
    assert_eq!(step(&c), Step::Reset);
}

#[test]
fn an_idle_model_is_unloaded_after_idle_unload_seconds() {
    // Last used 299 s ago, limit 300 s: in sync, looking again when it turns idle.
    let c = case(
        spec().model("a").idle_unload(300),
        status().active("a").used("a", Some(-299)),
    );
    let p = c.plan();
    assert_eq!(p.step, Step::InSync);
    assert_eq!(p.recheck, Duration::from_secs(1));
    let c = case(
        spec().model("a").idle_unload(300),
        status().active("a").used("a", Some(-100)),
    );
    assert_eq!(c.plan().recheck, RECHECK_IN_SYNC);
    // 300 s: unloaded, trigger idle.
    let c = case(
        spec().model("a").idle_unload(300),
        status().active("a").used("a", Some(-300)),
    );
    assert_eq!(
        step(&c),
        Step::IdleUnload {
            model: "a".into(),
            idle_s: 300
        }
    );
    // Without a use report, idleness counts from the load (an hour ago here).
    let c = case(
        spec().model("a").idle_unload(300),
        status().active("a").used("a", None),
    );
    assert!(matches!(step(&c), Step::IdleUnload { idle_s: 3600, .. }));
    // No idleUnloadSeconds: never.
    let c = case(
        spec().model("a"),
        status().active("a").used("a", Some(-86_400)),
    );
    assert_eq!(step(&c), Step::InSync);
    // Zombie memory comes first.
    let c = case(
        spec().model("a").idle_unload(300),
        status()
            .active("a")
            .used("a", Some(-300))
            .ghost(500, Some(-40)),
    );
    assert_eq!(step(&c), Step::Free);
}

#[test]
fn a_model_unloaded_for_idleness_stays_parked_until_a_request_loads_it() {
    let parked =
        |s: SpecBuilder, st: StatusBuilder| case(s, st.unloaded_by("a", SwitchTrigger::Idle));
    // By the operator's idleUnloadSeconds or the agent's own idle timeout: not reloaded.
    let c = parked(spec().model("a").idle_unload(300), status());
    assert_eq!(c.plan().step, Step::Parked { model: "a".into() });
    assert_eq!(c.plan().recheck, RECHECK_IN_SYNC);
    assert!(!c.plan().step.acts());
    assert_eq!(
        step(&parked(spec().model("a"), status())),
        Step::Parked { model: "a".into() }
    );
    // A ghost over the threshold is still watched.
    let c = parked(spec().model("a"), status().ghost(500, None));
    assert_eq!(step(&c), Step::Wait(Wait::ZombieSuspected));
    // Another model wanted now: loaded.
    assert_eq!(step(&parked(spec().model("b"), status())), load("b"));
    // Unloaded by the spec or the API, not for idleness: loaded again.
    let c = case(
        spec().model("a"),
        status().unloaded_by("a", SwitchTrigger::Api),
    );
    assert_eq!(step(&c), load("a"));
    // A request loaded it again: in sync (and idle counting starts over).
    let c = parked(
        spec().model("a").idle_unload(300),
        status().active("a").used("a", Some(-5)),
    );
    assert_eq!(step(&c), Step::InSync);
}
