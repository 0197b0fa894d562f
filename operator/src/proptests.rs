//! Property tests of the pure pipeline (observe -> plan -> derive): random histories of spec
//! changes, leaks, busy agents, silent agents, clock jumps, inference requests and idle
//! unloads, planned step by step against a simulated agent. The operator's status fields are
//! fed back as the reconcile would write them.

use proptest::prelude::*;
use vramkeeper_crds::{
    GpuModelSpec, GpuModelStatus, ModelRecordStatus, ModelState, RemediationStatus, SwitchStatus,
    SwitchTrigger,
    conditions::{DEGRADED, READY},
};

use crate::{
    conditions::{Situation, derive, reason},
    observe,
    plan::{Outcome, Plan, Step, Wait},
    planner::{Input, Remediation, RemedyKind, fixtures, fixtures::t, ladder, plan},
    status::OperatorStatus,
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
    /// An inference request naming the desired model (the agent loads it on demand).
    request: bool,
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
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(advance_s, spec_change, leak, api_load, request, busy, silent)| Tick {
                advance_s,
                spec_change,
                leak,
                api_load,
                request,
                busy,
                silent,
            },
        )
}

fn policy() -> impl Strategy<Value = ZombiePolicyParams> {
    (
        1u32..=90,
        1u32..=300,
        any::<bool>(),
        0u32..=3,
        prop::option::of(1u32..=300),
    )
        .prop_map(|(persist, cooldown, reset_after_free, max_resets, idle)| {
            ZombiePolicyParams {
                persist,
                cooldown,
                reset_after_free,
                max_resets,
                idle,
            }
        })
}

#[derive(Clone, Debug)]
struct ZombiePolicyParams {
    persist: u32,
    cooldown: u32,
    reset_after_free: bool,
    max_resets: u32,
    idle: Option<u32>,
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
    /// The operator's fields as last written (fed back, as from the stored status).
    owned: Option<OperatorStatus>,
    /// When the active model last answered a request or was loaded.
    last_used: i64,
    /// The agent's last switch: from, to, trigger.
    last_switch: Option<(Option<String>, Option<String>, SwitchTrigger)>,
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
        let mut spec = spec.model("a").build();
        spec.idle_unload_seconds = p.idle;
        Self {
            spec,
            generation: 1,
            now: 0,
            active: None,
            leaks: vec![],
            zombie_since: None,
            remediations: vec![],
            by_planner: vec![],
            owned: None,
            last_used: 0,
            last_switch: None,
        }
    }

    /// The agent loads `model` (or unloads, with None) for `trigger`.
    fn switch(&mut self, to: Option<String>, trigger: SwitchTrigger) {
        let from = std::mem::replace(&mut self.active, to.clone());
        self.last_used = self.now;
        self.last_switch = Some((from, to, trigger));
    }

    /// An inference request for the desired model: loaded on demand if need be, and used.
    fn request(&mut self) {
        if let Some(d) = self.spec.model.clone().filter(|d| d != "unknown") {
            if self.active.as_ref() != Some(&d) {
                self.switch(Some(d), SwitchTrigger::Auto);
            }
            self.last_used = self.now;
        }
    }

    /// Unloaded for idleness, and nothing loaded since.
    fn parked(&self) -> bool {
        self.active.is_none()
            && matches!(&self.last_switch, Some((from, None, SwitchTrigger::Idle)) if *from == self.spec.model)
    }

    fn idle_over(&self) -> bool {
        self.spec
            .idle_unload_seconds
            .is_some_and(|s| self.now - self.last_used >= i64::from(s))
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
        s.models = self
            .active
            .iter()
            .map(|m| ModelRecordStatus {
                name: m.clone(),
                state: ModelState::Loaded,
                vram_mib: None,
                ram_mib: None,
                load_ms: None,
                loads: 1,
                crashes: 0,
                last_loaded: None,
                last_unloaded: None,
                last_used: Some(t(self.last_used).to_string()),
            })
            .collect();
        s.last_switch = self
            .last_switch
            .clone()
            .map(|(from, to, trigger)| SwitchStatus {
                from,
                to,
                trigger,
                at: t(self.last_used).to_string(),
                unload_ms: 0,
                load_ms: 0,
                vram_mib: None,
                ram_mib: None,
            });
        s.switching = busy;
        s.reported_at = Some(t(if silent { self.now - 1000 } else { self.now }).to_string());
        s.remediations = self.remediations.clone();
        match &self.owned {
            Some(o) => o.over(&s),
            None => s,
        }
    }

    /// Whether the ladder's episode is still open (the ghost has not yet stayed under the
    /// threshold for the persist time).
    fn episode_open(&self) -> bool {
        self.owned
            .as_ref()
            .and_then(|o| o.ladder.as_ref())
            .is_some_and(|l| l.episode_since.is_some())
    }

    fn holds(&self, type_: &str, reason_: Option<&str>) -> bool {
        self.owned.iter().flat_map(|o| &o.conditions).any(|c| {
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
            action: kind,
            trigger: vramkeeper_crds::api::RemediationTrigger::Operator,
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
            unknown_failures: 0,
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
        // Never an idle unload without the setting, of another model, or too early.
        if let Step::IdleUnload { model, .. } = &plan.step {
            prop_assert!(
                self.idle_over(),
                "idle unload at {} after use at {}",
                self.now,
                self.last_used
            );
            prop_assert_eq!(Some(model), desired.as_ref());
        }
        // Never a load of a model parked for idleness.
        if let Step::Load { model } = &plan.step {
            prop_assert!(!self.parked(), "reloaded {model} after an idle unload");
        }
        // Progress toward the desired model when nothing blocks it.
        let failed = self.holds(READY, Some(reason::UNKNOWN_MODEL));
        let waits_on_refusal = status
            .unknown_model
            .as_ref()
            .is_some_and(|u| u.generation == self.generation);
        prop_assert_eq!(failed, waits_on_refusal);
        // Degraded holds through a dip, until the episode ends (hysteresis).
        let held = self.holds(DEGRADED, None) && self.episode_open();
        if !busy && !silent && self.ghost() <= threshold && !failed && !held {
            let expected = match (&self.active, &desired) {
                (Some(a), d) if Some(a) != d.as_ref() => Step::Unload { model: a.clone() },
                (None, Some(d)) if self.parked() => Step::Parked { model: d.clone() },
                (None, Some(d)) => Step::Load { model: d.clone() },
                (Some(a), _) if self.idle_over() => Step::IdleUnload {
                    model: a.clone(),
                    idle_s: (self.now - self.last_used) as u64,
                },
                _ => Step::InSync,
            };
            prop_assert_eq!(&plan.step, &expected);
        }

        let outcome = match &plan.step {
            Step::Unload { .. } => {
                self.switch(None, SwitchTrigger::Spec);
                Outcome::Done("unloaded".into())
            }
            Step::IdleUnload { .. } => {
                self.switch(None, SwitchTrigger::Idle);
                Outcome::Done("unloaded for idleness".into())
            }
            Step::Load { model } if model == "unknown" => {
                Outcome::UnknownModel("no such model".into())
            }
            Step::Load { model } => {
                self.switch(Some(model.clone()), SwitchTrigger::Spec);
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
        let mut op = op;
        let mut ladder = op.ladder.take().unwrap_or_default();
        if let Step::Free | Step::Reset = plan.step {
            let kind = if plan.step == Step::Free {
                RemedyKind::Free
            } else {
                RemedyKind::Reset
            };
            ladder::record(
                &mut ladder,
                &Remediation {
                    kind,
                    at: now,
                    by_operator: true,
                },
            );
        }
        op.ladder = Some(ladder).filter(|l| *l != Default::default());
        self.owned = Some(op);
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
                sim.switch(Some(MODELS[i].to_string()), SwitchTrigger::Api);
            }
            if tk.request {
                sim.request();
            }
            sim.reconcile(tk.busy, tk.silent)?;
        }
        // Once nothing blocks (no ghost, a model the agent knows), the desired model comes, or
        // is parked for idleness until a request names it.
        sim.leaks.clear();
        if sim.spec.model.as_deref() == Some("unknown") {
            sim.spec.model = Some("b".into());
            sim.generation += 1;
        }
        // Past the hysteresis: the episode ends once the ghost stayed under for persistSeconds.
        let persist = i64::from(sim.spec.zombie.persist_seconds);
        for _ in 0..3 {
            sim.now += 1 + persist;
            sim.reconcile(false, false)?;
        }
        prop_assert!(sim.active == sim.spec.model || sim.parked(), "{:?} {:?}", sim.active, sim.last_switch);
        // A request brings a parked model back, and the operator keeps it.
        sim.request();
        sim.reconcile(false, false)?;
        prop_assert_eq!(&sim.active, &sim.spec.model);
    }
}

/// The whole ladder, with conditions and the ladder's memory fed back: free, reset, Degraded,
/// held, restarted by a spec change, lifted when the ghost has cleared for persistSeconds.
#[test]
fn ladder_walk_with_conditions_fed_back() {
    let p = ZombiePolicyParams {
        persist: 10,
        cooldown: 60,
        reset_after_free: true,
        max_resets: 2,
        idle: None,
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
    // Degraded holds until the ghost stayed under the threshold for persistSeconds (10 s).
    run(&mut sim, 20, &mut steps);
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
            // The ghost cleared, and stayed so for persistSeconds.
            "load",
            "in_sync",
        ]
    );
    assert!(!sim.holds(DEGRADED, None));
    assert_eq!(sim.active.as_deref(), Some("b"));
}

/// A ghost that a free clears for a moment and that comes back within persistSeconds is the
/// same episode: the ladder goes on to a reset, then Degraded, instead of freeing forever.
#[test]
fn a_flickering_ghost_escalates() {
    let p = ZombiePolicyParams {
        persist: 30,
        cooldown: 60,
        reset_after_free: true,
        max_resets: 2,
        idle: None,
    };
    let mut sim = Sim::new(&p);
    sim.reconcile(false, false).unwrap();
    let mut frees = 0;
    let mut resets = 0;
    for _ in 0..120 {
        sim.now += 5;
        // The ghost comes back whenever a free took it away: it clears for one sample only.
        if sim.leaks.is_empty() {
            sim.leaks.push((500, Leak::Pooled));
        }
        let plan = sim.reconcile(false, false).unwrap();
        match plan.step {
            Step::Free => frees += 1,
            Step::Reset => resets += 1,
            _ => {}
        }
        if sim.holds(DEGRADED, None) {
            break;
        }
    }
    assert_eq!((frees, resets), (1, 1), "one free, then one reset");
    assert!(sim.holds(DEGRADED, None), "then Degraded");
}
