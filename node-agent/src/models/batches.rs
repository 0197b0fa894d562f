//! How a request's sentences are cut into forward passes. Every sentence of a pass is padded to
//! the pass's longest, so on a backend whose time follows the token rows it computes (the
//! CPU's), a request mixing short and long sentences runs faster in several passes of similar
//! lengths than in one padded to its longest. Each pass also costs a fixed amount beside its
//! rows (dispatch, allocation, the threads meeting), counted here in token rows.

use std::ops::Range;

/// `n` sentences in passes of `max_batch`, the last one shorter.
pub(crate) fn even(n: usize, max_batch: usize) -> Vec<Range<usize>> {
    let max_batch = max_batch.max(1);
    (0..n)
        .step_by(max_batch)
        .map(|start| start..(start + max_batch).min(n))
        .collect()
}

/// Cuts `lengths` (token counts, longest first) into contiguous passes of at most `max_batch`
/// sentences, minimising the padded token rows computed plus `per_pass` rows for each pass.
pub(crate) fn plan(lengths: &[usize], max_batch: usize, per_pass: u64) -> Vec<Range<usize>> {
    debug_assert!(lengths.windows(2).all(|w| w[0] >= w[1]), "longest first");
    let max_batch = max_batch.max(1);
    let n = lengths.len();
    // best[i]: the least cost of the sentences from i on; cut[i]: where its first pass ends.
    let mut best = vec![0u64; n + 1];
    let mut cut = vec![n; n + 1];
    for i in (0..n).rev() {
        best[i] = u64::MAX;
        let rows = lengths[i] as u64;
        for end in i + 1..=(i + max_batch).min(n) {
            let cost = ((end - i) as u64 * rows)
                .saturating_add(per_pass)
                .saturating_add(best[end]);
            if cost < best[i] {
                best[i] = cost;
                cut[i] = end;
            }
        }
    }
    let mut passes = Vec::new();
    let mut i = 0;
    while i < n {
        passes.push(i..cut[i]);
        i = cut[i];
    }
    passes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cost(lengths: &[usize], passes: &[Range<usize>], per_pass: u64) -> u64 {
        passes
            .iter()
            .map(|p| p.len() as u64 * lengths[p.start] as u64 + per_pass)
            .sum()
    }

    #[test]
    fn a_mixed_request_is_cut_where_the_lengths_drop() {
        let mut lengths = vec![24; 11];
        lengths.extend([14; 21]);
        assert_eq!(plan(&lengths, 64, 24), vec![0..11, 11..32]);
        // A pass costing more than the padding saved: one pass.
        assert_eq!(plan(&lengths, 64, 1_000), vec![0..32]);
        // Never more than max_batch sentences in a pass.
        assert_eq!(
            plan(&lengths, 8, 1 << 32),
            vec![0..8, 8..16, 16..24, 24..32]
        );
        assert!(plan(&[], 8, 24).is_empty());
    }

    proptest! {
        #[test]
        fn passes_cover_every_sentence_once_within_max_batch_and_never_cost_more_than_even_chunks(
            mut lengths in proptest::collection::vec(1usize..512, 0..300),
            max_batch in 1usize..80,
            per_pass in prop_oneof![Just(0u64), 1u64..200, Just(1u64 << 32)],
        ) {
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            let passes = plan(&lengths, max_batch, per_pass);
            let mut next = 0;
            for p in &passes {
                prop_assert_eq!(p.start, next);
                prop_assert!(!p.is_empty() && p.len() <= max_batch);
                next = p.end;
            }
            prop_assert_eq!(next, lengths.len());
            let even = even(lengths.len(), max_batch);
            prop_assert!(cost(&lengths, &passes, per_pass) <= cost(&lengths, &even, per_pass));
            if per_pass == 1 << 32 {
                prop_assert_eq!(passes.len(), even.len());
            }
        }
    }
}
