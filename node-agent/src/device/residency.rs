//! Whether a model may be loaded on a device, and which resident models must go first: the
//! admission decision by measured footprint (issue 17). A load is admitted when the model's
//! footprint plus the headroom fits in the memory free now plus what the models it evicts
//! hold; the models evicted are the fewest, least recently used first, and never a pinned one
//! or (unless the load may drain them) one with requests in flight. Pure: facts in, a decision
//! out; the caller releases each model evicted, verified, before the load starts.

use std::time::Instant;

/// A model loaded on the device, as admission sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resident {
    pub model: String,
    /// Device memory its worker (with its process tree) holds in the latest reading: what
    /// its exit frees.
    pub holds: u64,
    /// Never evicted to make room (an explicit switch still replaces it).
    pub pinned: bool,
    /// Requests in flight.
    pub busy: bool,
    /// When it last answered a request (or was loaded).
    pub last_used: Instant,
}

/// The model asked for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub model: String,
    /// Its footprint: measured at an earlier load, else the kind's estimate.
    pub footprint: u64,
    /// Whether `footprint` is an estimate (never loaded on this device).
    pub estimated: bool,
}

/// The device's room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Room {
    /// Free device memory in the latest reading.
    pub free: u64,
    /// Kept free beyond the footprint (a request's working memory comes on top of it).
    pub headroom: u64,
    /// Models resident at once, at most.
    pub max_resident: usize,
}

/// How the set of residents changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// The model joins the set, evicting what it must. `drain_busy`: a model with requests in
    /// flight may be evicted once they drain (one resident per device: the only way to
    /// serve another model).
    Add { drain_busy: bool },
    /// The set becomes the model alone (a switch): every other resident goes, pinned or not.
    Replace,
}

/// Why a load was refused, with the figures (bytes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shortfall {
    /// Footprint plus headroom.
    pub needed: u64,
    /// Whether the footprint is an estimate.
    pub estimated: bool,
    /// Free now.
    pub free: u64,
    /// What the residents that may be evicted hold.
    pub evictable: u64,
    /// What pinned or busy residents hold (never evicted for this load).
    pub kept: u64,
    /// Residents now and the most allowed.
    pub resident: usize,
    pub max_resident: usize,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Load, after releasing these residents in this order (least recently used first).
    Admit { evict: Vec<String> },
    /// Refuse: nothing changes.
    Refuse(Shortfall),
}

/// The residents `mode` may evict for `candidate`, least recently used first.
fn evictable<'a>(residents: &'a [Resident], candidate: &str, mode: Mode) -> Vec<&'a Resident> {
    let mut order: Vec<&Resident> = residents
        .iter()
        .filter(|r| r.model != candidate)
        .filter(|r| match mode {
            Mode::Replace => true,
            Mode::Add { drain_busy } => !r.pinned && (drain_busy || !r.busy),
        })
        .collect();
    order.sort_by(|a, b| (a.last_used, &a.model).cmp(&(b.last_used, &b.model)));
    order
}

/// Decides whether `candidate` may be loaded with `residents` on a device with `room`.
pub(crate) fn decide(
    residents: &[Resident],
    candidate: &Candidate,
    room: Room,
    mode: Mode,
) -> Decision {
    let order = evictable(residents, &candidate.model, mode);
    let names = |n: usize| order[..n].iter().map(|r| r.model.clone()).collect();
    let already = residents.iter().any(|r| r.model == candidate.model);
    if already {
        // Resident now: nothing to load. A switch still makes it the only one.
        let n = if mode == Mode::Replace {
            order.len()
        } else {
            0
        };
        return Decision::Admit { evict: names(n) };
    }
    let needed = candidate.footprint.saturating_add(room.headroom);
    let evictable_bytes = order.iter().fold(0u64, |n, r| n.saturating_add(r.holds));
    let first = match mode {
        // A switch evicts every other resident whatever it frees.
        Mode::Replace => {
            Some(order.len()).filter(|_| room.free.saturating_add(evictable_bytes) >= needed)
        }
        Mode::Add { .. } => {
            let mut freed = room.free;
            (0..=order.len()).find(|&n| {
                if n > 0 {
                    freed = freed.saturating_add(order[n - 1].holds);
                }
                freed >= needed && residents.len() - n < room.max_resident.max(1)
            })
        }
    };
    match first {
        Some(n) => Decision::Admit { evict: names(n) },
        None => Decision::Refuse(Shortfall {
            needed,
            estimated: candidate.estimated,
            free: room.free,
            evictable: evictable_bytes,
            kept: residents
                .iter()
                .fold(0u64, |n, r| n.saturating_add(r.holds))
                .saturating_sub(evictable_bytes),
            resident: residents.len(),
            max_resident: room.max_resident,
        }),
    }
}
