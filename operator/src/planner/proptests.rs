//! Property tests: random histories of spec changes, leaks, busy agents, silent agents and
//! clock jumps, planned step by step against a simulated agent. The planner's conditions are
//! fed back as the executor would write them.

use proptest::prelude::*;
use vramkeeper_crds::{
    GpuModelSpec, GpuModelStatus, RemediationStatus,
    conditions::{DEGRADED, READY},
};

use super::{fixtures::t, *};
use crate::{
    conditions::{Outcome, Situation, derive, reason},
    observe,
};

const MODELS: [&str; 3] = ["a", "b", "unknown"];

/// What a leak yields to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leak {
    /// A free clears it (allocator pools, a zombie worker).
    Pooled,
    /// Only a reset clears it.
    Held,
    /// Nothing clears it (a foreign process).
    Stuck,
}

#[derive(Clone, Debug)]
struct Tick {
    advance_s: i64,
    spec_change: Option<Option<usize>>,
    leak: Option<(u64, Leak)>,
    api_load: Option<usize>,
    busy: bool,
    silent: bool,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        0i64..=120,
        prop::option::weighted(0.1, prop::option::of(0usize..3)),
        prop::option::weighted(
            0.15,
            (
                1u64..400,
                prop_oneof![Just(Leak::Pooled), Just(Leak::Held), Just(Leak::Stuck)],
            ),
        ),
        prop::option::weighted(0.03, 0usize..2),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(advance_s, spec_change, leak, api_load, busy, silent)| Tick {
                advance_s,
                spec_change,
                leak,
                api_load,
                busy,
                silent,
            },
        )
}

fn policy() -> impl Strategy<Value = ZombiePolicyParams> {
    (1u32..=90, 1u32..=300, any::<bool>(), 0u32..=3).prop_map(
        |(persist, cooldown, reset_after_free, max_resets)| ZombiePolicyParams {
            persist,
            cooldown,
            reset_after_free,
            max_resets,
        },
    )
}

#[derive(Clone, Debug)]
struct ZombiePolicyParams {
    persist: u32,
    cooldown: u32,
    reset_after_free: bool,
    max_resets: u32,
}

/// The simulated GPU and agent, and what the operator wrote.
struct Sim {
    spec: GpuModelSpec,
    generation: i64,
    now: i64,
    active: Option<String>,
    leaks: Vec<(u64, Leak)>,
    zombie_since: Option<i64>,
    remediations: Vec<RemediationStatus>,
    by_planner: Vec<(i64, RemedyKind)>,
    conditions: Vec<vramkeeper_crds::Condition>,
}

impl Sim {
    fn new(p: &ZombiePolicyParams) -> Self {
        let mut spec = fixtures::spec()
            .persist(p.persist)
            .cooldown(p.cooldown)
            .max_resets(p.max_resets);
        if !p.reset_after_free {
            spec = spec.no_reset();
        }
        Self {
            spec: spec.model("a").build(),
            generation: 1,
            now: 0,
            active: None,
            leaks: vec![],
            zombie_since: None,
            remediations: vec![],
            by_planner: vec![],
            conditions: vec![],
        }
    }

    fn ghost(&self) -> u64 {
        self.leaks.iter().map(|l| l.0).sum()
    }

    /// The agent's own detector: since when the ghost is over the threshold.
    fn sample(&mut self) {
        if self.ghost() > self.spec.zombie.threshold_mib {
            self.zombie_since.get_or_insert(self.now);
        } else {
            self.zombie_since = None;
        }
    }

    fn status(&self, busy: bool, silent: bool) -> GpuModelStatus {
        let mut s = fixtures::status()
            .ghost(self.ghost(), self.zombie_since)
            .build();
        s.active_model = self.active.clone();
        s.switching = busy;
        s.reported_at = Some(t(if silent { self.now - 1000 } else { self.now }).to_string());
        s.remediations = self.remediations.clone();
        s.conditions = self.conditions.clone();
        s
    }

    fn holds(&self, type_: &str, reason_: Option<&str>) -> bool {
        self.conditions.iter().any(|c| {
            c.type_ == type_
                && c.observed_generation == Some(self.generation)
                && reason_.is_none_or(|r| c.reason == r)
                && (reason_.is_some() || c.status == "True")
        })
    }

    fn remediate(&mut self, kind: RemedyKind) {
        let cleared: &[Leak] = match kind {
            RemedyKind::Free => &[Leak::Pooled],
            RemedyKind::Reset => &[Leak::Pooled, Leak::Held],
        };
        self.leaks.retain(|l| !cleared.contains(&l.1));
        self.by_planner.push((self.now, kind));
        self.remediations.push(RemediationStatus {
            action: kind.as_str().into(),
            trigger: "operator".into(),
            at: t(self.now).to_string(),
            ghost_before_mib: 0,
            ghost_after_mib: 0,
            killed: 0,
        });
    }

    /// One reconcile: plan, check the invariants, act, write the conditions.
    fn reconcile(&mut self, busy: bool, silent: bool) -> Result<Plan, TestCaseError> {
        self.sample();
        let status = self.status(busy, silent);
        let history = observe::history(&status, &[]);
        let now = t(self.now);
        let plan = plan(&Input {
            spec: &self.spec,
            generation: self.generation,
            status: &status,
            now,
            history: &history,
        });
        let threshold = self.spec.zombie.threshold_mib;
        let cooldown = i64::from(self.spec.zombie.free_cooldown_seconds);
        let desired = self.spec.model.clone();

        // Never a load while another model is active.
        if let Step::Load { .. } = plan.step {
            prop_assert!(
                self.active.is_none(),
                "load while {:?} is active",
                self.active
            );
        }
        // Never two remediations inside a cooldown; never more resets than allowed.
        if let Step::Free | Step::Reset = plan.step {
            for (at, _) in &self.by_planner {
                prop_assert!(
                    self.now - at >= cooldown,
                    "remediation {}s after one at {at}",
                    self.now - at
                );
            }
        }
        if plan.step == Step::Reset {
            let recent = self
                .by_planner
                .iter()
                .filter(|(at, k)| *k == RemedyKind::Reset && self.now - at < 3600)
                .count() as u32;
            prop_assert!(
                recent < self.spec.zombie.max_resets_per_hour,
                "reset {} of {}",
                recent + 1,
                self.spec.zombie.max_resets_per_hour
            );
            prop_assert!(self.spec.zombie.reset_after_free);
        }
        // No automatic action while Degraded, until the ghost clears or the spec changes.
        if self.holds(DEGRADED, None) && self.ghost() > threshold && !silent {
            prop_assert_eq!(&plan.step, &Step::Wait(Wait::Degraded));
        }
        // Progress toward the desired model when nothing blocks it.
        let failed = self.holds(READY, Some(reason::UNKNOWN_MODEL));
        if !busy && !silent && self.ghost() <= threshold && !failed {
            let expected = match (&self.active, &desired) {
                (Some(a), d) if Some(a) != d.as_ref() => Step::Unload { model: a.clone() },
                (None, Some(d)) => Step::Load { model: d.clone() },
                _ => Step::InSync,
            };
            prop_assert_eq!(&plan.step, &expected);
        }

        let outcome = match &plan.step {
            Step::Unload { .. } => {
                self.active = None;
                Outcome::Done("unloaded".into())
            }
            Step::Load { model } if model == "unknown" => {
                Outcome::UnknownModel("no such model".into())
            }
            Step::Load { model } => {
                self.active = Some(model.clone());
                Outcome::Done("loaded".into())
            }
            Step::Free => {
                self.remediate(RemedyKind::Free);
                Outcome::Done("freed".into())
            }
            Step::Reset => {
                self.remediate(RemedyKind::Reset);
                Outcome::Done("reset".into())
            }
            _ => Outcome::NoCall,
        };
        let op = derive(
            &self.spec,
            self.generation,
            &status,
            Situation::Planned {
                plan: &plan,
                outcome: &outcome,
            },
            now,
        );
        self.conditions = op.conditions;
        self.sample();
        Ok(plan)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_the_rules(p in policy(), ticks in prop::collection::vec(tick(), 1..80)) {
        let mut sim = Sim::new(&p);
        for tk in &ticks {
            sim.now += tk.advance_s;
            if let Some(change) = tk.spec_change {
                let model = change.map(|i| MODELS[i].to_string());
                if model != sim.spec.model {
                    sim.spec.model = model;
                    sim.generation += 1;
                }
            }
            if let Some(leak) = tk.leak {
                sim.leaks.push(leak);
            }
            if let Some(i) = tk.api_load {
                sim.active = Some(MODELS[i].to_string());
            }
            sim.reconcile(tk.busy, tk.silent)?;
        }
        // Once nothing blocks (no ghost, a model the agent knows), the desired model comes.
        sim.leaks.clear();
        if sim.spec.model.as_deref() == Some("unknown") {
            sim.spec.model = Some("b".into());
            sim.generation += 1;
        }
        for _ in 0..3 {
            sim.now += 1;
            sim.reconcile(false, false)?;
        }
        prop_assert_eq!(&sim.active, &sim.spec.model);
    }
}

/// The whole ladder, with conditions fed back: free, reset, Degraded, held, restarted by a
/// spec change, lifted when the ghost clears.
#[test]
fn ladder_walk_with_conditions_fed_back() {
    let p = ZombiePolicyParams {
        persist: 10,
        cooldown: 60,
        reset_after_free: true,
        max_resets: 2,
    };
    let mut sim = Sim::new(&p);
    let mut steps = vec![];
    let run = |sim: &mut Sim, secs: i64, steps: &mut Vec<String>| {
        for _ in 0..secs / 5 {
            sim.now += 5;
            let plan = sim.reconcile(false, false).unwrap();
            let name = match &plan.step {
                Step::Wait(w) => format!("wait:{w:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap()
                    .to_string(),
                s => s.name().to_string(),
            };
            if steps.last() != Some(&name) {
                steps.push(name);
            }
        }
    };
    run(&mut sim, 10, &mut steps);
    sim.leaks.push((500, Leak::Stuck));
    run(&mut sim, 400, &mut steps);
    assert!(sim.holds(DEGRADED, None));
    sim.spec.model = Some("b".into());
    sim.generation += 1;
    run(&mut sim, 200, &mut steps);
    sim.leaks.clear();
    run(&mut sim, 10, &mut steps);
    assert_eq!(
        steps,
        [
            "load",
            "in_sync",
            "wait:ZombieSuspected",
            "free",
            "wait:Cooldown",
            "reset",
            "wait:Cooldown",
            "mark_degraded",
            "wait:Degraded",
            // The spec changed: unload, free again, then the reset budget (2 an hour) allows
            // one more reset before Degraded again.
            "unload",
            "free",
            "wait:Cooldown",
            "reset",
            "wait:Cooldown",
            "mark_degraded",
            "wait:Degraded",
            // The ghost cleared.
            "load",
            "in_sync",
        ]
    );
    assert!(!sim.holds(DEGRADED, None));
    assert_eq!(sim.active.as_deref(), Some("b"));
}
