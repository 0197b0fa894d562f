//! Zombie detection: ghost memory over the threshold for the persist time; and the cooldown
//! that spaces automatic frees.
//!
//! Hysteresis: once the ghost is over the threshold, the episode (and its `over_since`) ends
//! only after the ghost has stayed at or under the threshold for the persist time too. A free
//! that clears the ghost for one sample before it comes back therefore continues the same
//! episode, and the operator's ladder escalates instead of starting over with another free.

use std::time::Duration;

use jiff::Timestamp;

/// The agent's zombie policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ZombiePolicy {
    /// Ghost above this is suspicious.
    pub threshold_bytes: u64,
    /// For this long before it is zombie memory.
    pub persist: Duration,
    /// Free on its own once zombie memory is seen.
    pub auto_free: bool,
    /// Time between automatic frees.
    pub cooldown: Duration,
    /// Free and reset may kill processes that are no worker of this agent.
    pub kill_foreign: bool,
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing.
    None,
    /// The ghost has now been over the threshold for the persist time.
    Flagged,
    /// The ghost has stayed at or under the threshold for the persist time: the episode ended.
    Cleared,
}

/// Tracks one device's ghost over time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ZombieDetector {
    over_since: Option<Timestamp>,
    below_since: Option<Timestamp>,
    over_now: bool,
    flagged: bool,
    last_auto_free: Option<Timestamp>,
}

impl ZombieDetector {
    /// Feeds one ghost figure.
    pub(crate) fn observe(
        &mut self,
        ghost_bytes: u64,
        policy: &ZombiePolicy,
        now: Timestamp,
    ) -> Change {
        if ghost_bytes <= policy.threshold_bytes {
            self.over_now = false;
            if self.over_since.is_none() {
                return Change::None;
            }
            let below = *self.below_since.get_or_insert(now);
            if elapsed(below, now) < policy.persist {
                // Still within the episode: a dip is not an end.
                return Change::None;
            }
            self.over_since = None;
            self.below_since = None;
            if std::mem::take(&mut self.flagged) {
                return Change::Cleared;
            }
            return Change::None;
        }
        self.over_now = true;
        self.below_since = None;
        let since = *self.over_since.get_or_insert(now);
        if !self.flagged && elapsed(since, now) >= policy.persist {
            self.flagged = true;
            return Change::Flagged;
        }
        Change::None
    }

    /// Whether zombie memory is flagged now.
    pub(crate) fn flagged(&self) -> bool {
        self.flagged
    }

    /// Since when the ghost has been over the threshold.
    pub(crate) fn over_since(&self) -> Option<Timestamp> {
        self.over_since
    }

    /// Whether an automatic free should run now: flagged, over the threshold at the last
    /// sample, allowed, and out of the cooldown.
    pub(crate) fn auto_free_due(&self, policy: &ZombiePolicy, now: Timestamp) -> bool {
        policy.auto_free
            && self.flagged
            && self.over_now
            && self
                .last_auto_free
                .is_none_or(|last| elapsed(last, now) >= policy.cooldown)
    }

    /// The earliest time the next automatic free may run, while zombie memory is flagged.
    pub(crate) fn next_auto_free_at(&self, policy: &ZombiePolicy) -> Option<Timestamp> {
        if !policy.auto_free || !self.flagged {
            return None;
        }
        let last = self.last_auto_free?;
        last.checked_add(jiff::SignedDuration::try_from(policy.cooldown).ok()?)
            .ok()
    }

    /// Records that an automatic free ran.
    pub(crate) fn auto_freed(&mut self, now: Timestamp) {
        self.last_auto_free = Some(now);
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn policy() -> ZombiePolicy {
        ZombiePolicy {
            threshold_bytes: 3 * GIB / 2,
            persist: Duration::from_secs(10),
            auto_free: true,
            cooldown: Duration::from_secs(60),
            kill_foreign: false,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn flags_after_the_persist_time_and_a_dip_does_not_restart_the_clock() {
        let p = policy();
        let mut d = ZombieDetector::default();
        assert_eq!(d.observe(2 * GIB, &p, at(0)), Change::None);
        assert_eq!(d.observe(2 * GIB, &p, at(9)), Change::None);
        // A dip shorter than the persist time is part of the episode.
        assert_eq!(d.observe(GIB, &p, at(10)), Change::None);
        assert_eq!(d.over_since(), Some(at(0)));
        assert_eq!(d.observe(2 * GIB, &p, at(11)), Change::Flagged);
        assert!(d.flagged());
        assert_eq!(d.over_since(), Some(at(0)));
    }

    #[test]
    fn an_episode_ends_only_after_the_persist_time_under_the_threshold() {
        let p = policy();
        let mut d = ZombieDetector::default();
        d.observe(2 * GIB, &p, at(0));
        assert_eq!(d.observe(2 * GIB, &p, at(10)), Change::Flagged);
        // A free clears the ghost for a few samples: still flagged, still the same episode,
        // but no automatic free while the ghost is under the threshold.
        assert_eq!(d.observe(GIB, &p, at(11)), Change::None);
        assert!(d.flagged());
        assert!(!d.auto_free_due(&p, at(11)));
        assert_eq!(d.observe(GIB, &p, at(20)), Change::None);
        // It comes back: the same episode, flagged at once.
        assert_eq!(d.observe(2 * GIB, &p, at(21)), Change::None);
        assert_eq!(d.over_since(), Some(at(0)));
        assert!(d.auto_free_due(&p, at(21)));
        // Under for the whole persist time: the episode ends.
        assert_eq!(d.observe(GIB, &p, at(22)), Change::None);
        assert_eq!(d.observe(GIB, &p, at(31)), Change::None);
        assert_eq!(d.observe(GIB, &p, at(32)), Change::Cleared);
        assert!(!d.flagged());
        assert_eq!(d.over_since(), None);
        // A new episode starts its own clock.
        assert_eq!(d.observe(2 * GIB, &p, at(40)), Change::None);
        assert_eq!(d.over_since(), Some(at(40)));
    }

    #[test]
    fn auto_free_respects_the_cooldown() {
        let p = policy();
        let mut d = ZombieDetector::default();
        d.observe(2 * GIB, &p, at(0));
        d.observe(2 * GIB, &p, at(10));
        assert!(d.auto_free_due(&p, at(10)));
        d.auto_freed(at(10));
        assert!(!d.auto_free_due(&p, at(69)));
        assert_eq!(d.next_auto_free_at(&p), Some(at(70)));
        assert!(d.auto_free_due(&p, at(70)));
        let off = ZombiePolicy {
            auto_free: false,
            ..p
        };
        assert!(!d.auto_free_due(&off, at(100)));
    }
}
