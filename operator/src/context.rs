//! What every reconcile shares: the clients, the agent locator, the event recorder, metrics,
//! and two small memories (the remediations this operator ran, and failure counts for backoff).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use jiff::Timestamp;
use kube::{Client, runtime::reflector::Store};
use vramkeeper_crds::GpuModel;

use crate::{
    agent_client::AgentClient,
    agents::AgentLocator,
    events::EventPublisher,
    metrics::Metrics,
    planner::{RESET_WINDOW, Remediation, elapsed},
};

/// Exponential backoff for failed reconciles: `base * 2^(n-1)`, at most `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after the `n`th failure in a row (n >= 1).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Per object (by uid): the generation of its last `unknown_model` answer and how many came
/// in a row at that generation. Kept in memory, like the reconcile backoff: a restarted
/// operator assumes one.
#[derive(Default)]
pub struct UnknownModelAnswers(Mutex<HashMap<String, (i64, u32)>>);

impl UnknownModelAnswers {
    /// The answers in a row to loads of object `uid` at `generation`.
    pub fn in_a_row(&self, uid: &str, generation: i64) -> u32 {
        match self.0.lock().unwrap().get(uid) {
            Some((g, n)) if *g == generation => *n,
            _ => 0,
        }
    }

    /// Counts an answer to a load of object `uid` at `generation`.
    pub fn answered(&self, uid: &str, generation: i64) {
        let mut answers = self.0.lock().unwrap();
        let entry = answers.entry(uid.to_string()).or_insert((generation, 0));
        if entry.0 != generation {
            *entry = (generation, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// A load of object `uid` succeeded, or the object is gone: it starts over.
    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap().remove(uid);
    }
}

/// The operator's clock (tests fix it).
pub type Clock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Shared by every reconcile.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Finds each node's agent.
    pub agents: AgentLocator,
    /// Calls agents.
    pub agent: AgentClient,
    /// Publishes Events.
    pub events: EventPublisher,
    /// Metrics.
    pub metrics: std::sync::Arc<Metrics>,
    /// Backoff of failed reconciles.
    pub backoff: Backoff,
    /// The longest a reconcile waits before looking again (the agent is polled at least this
    /// often).
    pub max_recheck: Duration,
    /// The GpuModels the controller watches, to find each GPU's owner (absent: every object
    /// owns its GPU).
    pub models: Option<Store<GpuModel>>,
    clock: Clock,
    journal: Mutex<HashMap<String, Vec<Remediation>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// `unknown_model` answers to loads, for the retries' backoff.
    pub unknown_model: UnknownModelAnswers,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        agents: AgentLocator,
        agent: AgentClient,
        events: EventPublisher,
        metrics: std::sync::Arc<Metrics>,
        backoff: Backoff,
    ) -> Self {
        Self {
            client,
            agents,
            agent,
            events,
            metrics,
            backoff,
            max_recheck: Duration::from_secs(30),
            models: None,
            clock: std::sync::Arc::new(Timestamp::now),
            journal: Mutex::default(),
            failures: Mutex::default(),
            unknown_model: UnknownModelAnswers::default(),
        }
    }

    /// The same context with another longest recheck.
    pub fn with_max_recheck(mut self, d: Duration) -> Self {
        self.max_recheck = d;
        self
    }

    /// The same context with the watched GpuModels, for ownership.
    pub fn with_models(mut self, models: Store<GpuModel>) -> Self {
        self.models = Some(models);
        self
    }

    /// The GpuModel that owns `gm`'s (node, GPU) when it is another one.
    pub fn owner_other_than(&self, gm: &GpuModel) -> Option<String> {
        let models = self.models.as_ref()?.state();
        crate::ownership::owner_other_than(gm, models.iter().map(|m| m.as_ref()))
    }

    /// The same context with another clock.
    #[cfg(test)]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by the operator's clock.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The remediations this operator ran on object `uid` in the last hour.
    pub fn journal(&self, uid: &str) -> Vec<Remediation> {
        self.journal
            .lock()
            .unwrap()
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a remediation this operator ran on object `uid`.
    pub fn record(&self, uid: &str, r: Remediation) {
        let now = self.now();
        let mut journal = self.journal.lock().unwrap();
        let entries = journal.entry(uid.to_string()).or_default();
        entries.retain(|e| elapsed(e.at, now) < RESET_WINDOW);
        entries.push(r);
    }

    /// Forgets object `uid` (it is gone).
    pub fn forget(&self, uid: &str, name: &str) {
        self.journal.lock().unwrap().remove(uid);
        self.unknown_model.forget(uid);
        self.failures.lock().unwrap().remove(name);
    }

    /// Counts a failure of object `name`; returns how many in a row.
    pub fn failed(&self, name: &str) -> u32 {
        let mut f = self.failures.lock().unwrap();
        let n = f.entry(name.to_string()).or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// Object `name` reconciled fine: its backoff starts over.
    pub fn succeeded(&self, name: &str) {
        self.failures.lock().unwrap().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_answers_are_counted_per_generation() {
        let c = UnknownModelAnswers::default();
        assert_eq!(c.in_a_row("u", 1), 0);
        c.answered("u", 1);
        c.answered("u", 1);
        assert_eq!(c.in_a_row("u", 1), 2);
        // Another generation (a spec change) starts over.
        assert_eq!(c.in_a_row("u", 2), 0);
        c.answered("u", 2);
        assert_eq!(c.in_a_row("u", 2), 1);
        c.forget("u");
        assert_eq!(c.in_a_row("u", 2), 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=12).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(b.delay(u32::MAX), b.cap);
    }
}
