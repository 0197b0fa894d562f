//! The device-memory history: fine samples for the last hour, one averaged sample per minute
//! for the last day.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One point: memory of the device, its ghost, and each loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// Unix time, milliseconds.
    pub t_ms: i64,
    /// In use.
    pub used: u64,
    /// Baseline.
    pub baseline: u64,
    /// Ghost.
    pub ghost: u64,
    /// Per loaded model.
    pub models: BTreeMap<String, u64>,
}

/// Fine samples kept: one hour at one per second.
pub(crate) const FINE_CAPACITY: usize = 3600;
/// Coarse samples kept: one day at one per minute.
pub(crate) const COARSE_CAPACITY: usize = 1440;
const MINUTE_MS: i64 = 60_000;

/// Fine and coarse rings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct History {
    fine: VecDeque<Sample>,
    coarse: VecDeque<Sample>,
    #[serde(skip)]
    minute: Vec<Sample>,
}

impl History {
    /// Adds a sample (times must not go backwards; an earlier one is dropped).
    pub(crate) fn push(&mut self, sample: Sample) {
        if self.fine.back().is_some_and(|last| sample.t_ms < last.t_ms) {
            return;
        }
        if let Some(first) = self.minute.first()
            && sample.t_ms / MINUTE_MS != first.t_ms / MINUTE_MS
        {
            let bucket = std::mem::take(&mut self.minute);
            push_capped(&mut self.coarse, average(&bucket), COARSE_CAPACITY);
        }
        self.minute.push(sample.clone());
        push_capped(&mut self.fine, sample, FINE_CAPACITY);
    }

    /// Samples of the last `window_ms` before `now_ms`, oldest first: every fine one for windows
    /// up to the fine ring's span (an hour), else coarse ones followed by the fine ones taken
    /// once a minute.
    pub(crate) fn window(&self, now_ms: i64, window_ms: i64) -> Vec<Sample> {
        let from = now_ms - window_ms;
        let fine_from = self.fine.front().map_or(i64::MAX, |s| s.t_ms);
        if window_ms <= FINE_CAPACITY as i64 * 1000 {
            let coarse = self
                .coarse
                .iter()
                .filter(|s| s.t_ms >= from && s.t_ms < fine_from);
            return coarse
                .chain(self.fine.iter().filter(|s| s.t_ms >= from))
                .cloned()
                .collect();
        }
        let mut out: Vec<Sample> = self
            .coarse
            .iter()
            .filter(|s| s.t_ms >= from && s.t_ms < fine_from)
            .cloned()
            .collect();
        let mut last_minute = i64::MIN;
        for s in &self.fine {
            if s.t_ms / MINUTE_MS != last_minute {
                last_minute = s.t_ms / MINUTE_MS;
                out.push(s.clone());
            }
        }
        out
    }

    /// Keeps only the coarse ring (what the state file stores).
    pub(crate) fn coarse_only(&self) -> History {
        History {
            fine: VecDeque::new(),
            coarse: self.coarse.clone(),
            minute: vec![],
        }
    }
}

fn push_capped<T>(ring: &mut VecDeque<T>, item: T, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

fn average(bucket: &[Sample]) -> Sample {
    let n = bucket.len().max(1) as u64;
    let mean = |f: fn(&Sample) -> u64| bucket.iter().map(f).sum::<u64>() / n;
    let mut models: BTreeMap<String, u64> = BTreeMap::new();
    for s in bucket {
        for (name, bytes) in &s.models {
            *models.entry(name.clone()).or_default() += bytes;
        }
    }
    models.values_mut().for_each(|v| *v /= n);
    Sample {
        t_ms: bucket.first().map_or(0, |s| s.t_ms),
        used: mean(|s| s.used),
        baseline: mean(|s| s.baseline),
        ghost: mean(|s| s.ghost),
        models,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: i64, used: u64) -> Sample {
        Sample {
            t_ms: t_s * 1000,
            used,
            baseline: 10,
            ghost: used / 10,
            models: BTreeMap::from([("m".to_string(), used / 2)]),
        }
    }

    #[test]
    fn fine_ring_keeps_an_hour_and_coarse_averages_minutes() {
        let mut h = History::default();
        for t in 0..(2 * 3600) {
            h.push(sample(t, (t / 60) as u64 * 100));
        }
        assert_eq!(h.fine.len(), FINE_CAPACITY);
        // 119 finished minutes, each the average of a constant.
        assert_eq!(h.coarse.len(), 119);
        assert_eq!(h.coarse[5].used, 500);
        assert_eq!(h.coarse[5].models["m"], 250);
        assert_eq!(h.coarse[5].t_ms, 5 * 60_000);
        let now = 2 * 3600 * 1000;
        assert_eq!(h.window(now, 15 * 60_000).len(), 15 * 60);
        let day = h.window(now, 24 * 3600 * 1000);
        // One hour of coarse minutes, then one fine sample per minute of the last hour.
        assert_eq!(day.len(), 60 + 60);
        assert!(day.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    }

    #[test]
    fn a_young_history_answers_every_fine_sample() {
        let mut h = History::default();
        for t in 0..120 {
            h.push(sample(t, 1));
        }
        assert_eq!(h.window(120_000, 15 * 60_000).len(), 120);
        assert_eq!(h.window(120_000, 30_000).len(), 30);
    }

    #[test]
    fn samples_going_back_in_time_are_dropped() {
        let mut h = History::default();
        h.push(sample(10, 1));
        h.push(sample(5, 2));
        assert_eq!(h.fine.len(), 1);
    }

    #[test]
    fn coarse_ring_is_capped_at_a_day() {
        let mut h = History::default();
        for m in 0..(COARSE_CAPACITY as i64 + 10) {
            h.push(sample(m * 60, 1));
        }
        assert_eq!(h.coarse.len(), COARSE_CAPACITY);
    }
}
