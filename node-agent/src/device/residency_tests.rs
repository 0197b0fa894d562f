//! The admission decision: named cases, then its rules as properties over random sets.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::residency::{Candidate, Decision, Mode, Resident, Room, Shortfall, decide};

const MIB: u64 = 1 << 20;

fn resident(model: &str, mib: u64, age_s: u64, base: Instant) -> Resident {
    Resident {
        model: model.into(),
        holds: mib * MIB,
        pinned: false,
        busy: false,
        last_used: base + Duration::from_secs(100 - age_s),
    }
}

fn candidate(mib: u64) -> Candidate {
    Candidate {
        model: "new".into(),
        footprint: mib * MIB,
        estimated: false,
    }
}

fn room(free_mib: u64, max_resident: usize) -> Room {
    Room {
        free: free_mib * MIB,
        headroom: 0,
        max_resident,
    }
}

const ADD: Mode = Mode::Add { drain_busy: false };

fn evicts(names: &[&str]) -> Decision {
    Decision::Admit {
        evict: names.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_load_that_fits_evicts_nothing_and_one_that_does_not_evicts_the_least_recently_used() {
    let t = Instant::now();
    let set = [resident("a", 300, 10, t), resident("b", 300, 50, t)];
    assert_eq!(
        decide(&set, &candidate(200), room(250, 4), ADD),
        evicts(&[])
    );
    // b was used 50 s ago, a 10 s ago.
    assert_eq!(
        decide(&set, &candidate(400), room(250, 4), ADD),
        evicts(&["b"])
    );
    assert_eq!(
        decide(&set, &candidate(800), room(250, 4), ADD),
        evicts(&["b", "a"])
    );
}

#[test]
fn pinned_and_busy_models_are_never_evicted_and_the_refusal_carries_the_figures() {
    let t = Instant::now();
    let mut a = resident("a", 300, 10, t);
    a.pinned = true;
    let mut b = resident("b", 200, 50, t);
    b.busy = true;
    let c = resident("c", 150, 5, t);
    let set = [a, b, c];
    let mut want = candidate(500);
    want.estimated = true;
    let mut r = room(250, 4);
    r.headroom = 64 * MIB;
    assert_eq!(
        decide(&set, &want, r, ADD),
        Decision::Refuse(Shortfall {
            needed: 564 * MIB,
            estimated: true,
            free: 250 * MIB,
            evictable: 150 * MIB,
            kept: 500 * MIB,
            resident: 3,
            max_resident: 4,
        })
    );
    // Allowed to drain it, the busy one goes (it was used before c).
    assert_eq!(
        decide(&set, &want, r, Mode::Add { drain_busy: true }),
        evicts(&["b", "c"])
    );
    // A switch replaces the pinned one too.
    assert_eq!(
        decide(&set, &want, room(0, 4), Mode::Replace),
        evicts(&["b", "a", "c"])
    );
}

#[test]
fn the_count_limit_evicts_even_when_memory_suffices() {
    let t = Instant::now();
    let set = [resident("a", 10, 10, t), resident("b", 10, 50, t)];
    assert_eq!(
        decide(&set, &candidate(1), room(1000, 2), ADD),
        evicts(&["b"])
    );
    assert_eq!(
        decide(&set, &candidate(1), room(1000, 1), ADD),
        evicts(&["b", "a"])
    );
}

#[test]
fn a_resident_model_is_admitted_as_it_is_and_a_switch_to_it_sends_the_others_away() {
    let t = Instant::now();
    let set = [resident("a", 10, 10, t), resident("new", 10, 50, t)];
    assert_eq!(
        decide(&set, &candidate(1 << 20), room(0, 1), ADD),
        evicts(&[])
    );
    assert_eq!(
        decide(&set, &candidate(1 << 20), room(0, 1), Mode::Replace),
        evicts(&["a"])
    );
}

fn residents() -> impl Strategy<Value = Vec<Resident>> {
    let base = Instant::now();
    proptest::collection::vec((0u64..4096, any::<bool>(), any::<bool>(), 0u64..100), 0..8).prop_map(
        move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (mib, pinned, busy, age))| Resident {
                    model: format!("m{i}"),
                    holds: mib * MIB,
                    pinned,
                    busy,
                    last_used: base + Duration::from_secs(100 - age),
                })
                .collect()
        },
    )
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Replace),
        any::<bool>().prop_map(|drain_busy| Mode::Add { drain_busy }),
    ]
}

proptest! {
    #[test]
    fn an_admitted_load_never_goes_over_and_evicts_only_what_it_may_in_lru_order(
        set in residents(),
        footprint_mib in 0u64..8192,
        free_mib in 0u64..8192,
        headroom_mib in 0u64..512,
        max_resident in 1usize..6,
        mode in mode(),
    ) {
        let want = candidate(footprint_mib);
        let r = Room { free: free_mib * MIB, headroom: headroom_mib * MIB, max_resident };
        let may = |x: &Resident| match mode {
            Mode::Replace => true,
            Mode::Add { drain_busy } => !x.pinned && (drain_busy || !x.busy),
        };
        let mut order: Vec<&Resident> = set.iter().filter(|x| may(x)).collect();
        order.sort_by_key(|x| (x.last_used, x.model.clone()));
        let holds = |names: &[&Resident]| names.iter().map(|x| x.holds).sum::<u64>();
        let fits = |n: usize| {
            r.free + holds(&order[..n]) >= want.footprint + r.headroom
                && (mode == Mode::Replace || set.len() - n < max_resident)
        };
        match decide(&set, &want, r, mode) {
            Decision::Admit { evict } => {
                let n = evict.len();
                // Never over the budget (by the figures given), never over the count.
                prop_assert!(fits(n));
                // The least recently used first, among those it may evict.
                let lru: Vec<String> = order[..n].iter().map(|x| x.model.clone()).collect();
                prop_assert_eq!(&evict, &lru);
                match mode {
                    // A switch leaves the model alone.
                    Mode::Replace => prop_assert_eq!(n, set.len()),
                    // The fewest: one fewer would not have fitted.
                    Mode::Add { .. } => prop_assert!(n == 0 || !fits(n - 1)),
                }
            }
            Decision::Refuse(s) => {
                // Refused only when evicting all it may still would not fit.
                prop_assert!(!fits(order.len()));
                prop_assert_eq!(s.needed, want.footprint + r.headroom);
                prop_assert_eq!(s.free, r.free);
                prop_assert_eq!(s.evictable, holds(&order));
                prop_assert_eq!(s.evictable + s.kept, holds(&set.iter().collect::<Vec<_>>()));
                prop_assert_eq!(s.resident, set.len());
            }
        }
    }
}
