//! Deterministic weights: a counter-based generator, so every element is a pure function of
//! (seed, tensor, index). The same seed gives bit-identical weights on every backend and with
//! any number of threads.

/// SplitMix64's finaliser: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of one tensor of a model, for generators seeded per tensor.
pub(crate) fn tensor_seed(seed: u64, tensor: u64) -> u64 {
    mix(seed ^ mix(tensor))
}

/// `n` values uniform in `[-scale, scale)` for tensor `tensor` of the model seeded `seed`,
/// generated on up to `threads` threads.
pub(crate) fn uniform(seed: u64, tensor: u64, n: usize, scale: f32, threads: usize) -> Vec<f32> {
    let key = tensor_seed(seed, tensor);
    let mut out = vec![0f32; n];
    let chunk = n.div_ceil(threads.max(1)).max(1 << 16);
    std::thread::scope(|s| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let base = (c * chunk) as u64;
                for (i, v) in part.iter_mut().enumerate() {
                    // 24 random bits -> [0, 1) -> [-scale, scale)
                    let bits = (mix(key ^ (base + i as u64)) >> 40) as f32;
                    *v = (bits * (2.0 / (1u64 << 24) as f32) - 1.0) * scale;
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_deterministic_bounded_and_thread_independent() {
        let a = uniform(7, 3, 300_000, 0.5, 1);
        let b = uniform(7, 3, 300_000, 0.5, 4);
        assert_eq!(a, b);
        assert_ne!(a, uniform(8, 3, 300_000, 0.5, 1));
        assert_ne!(a, uniform(7, 4, 300_000, 0.5, 1));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
    }
}
