//! The few operations of MiniLM that a backend may run better than burn's generic composition.
//!
//! The defaults are burn's own tensor operations, which the CUDA backend fuses well. The CPU
//! backend (burn-flex) overrides both: attention with flex's fused attention (GEMM-backed, no
//! score tensor per op), and GELU with one vectorised pass over the buffer ([`super::gelu`]),
//! where flex would call libm's scalar `erff` per element.

use burn::{
    backend::Flex,
    prelude::*,
    tensor::{activation, module, ops::AttentionModuleOptions},
};
use rayon::prelude::*;

/// Backend-specific versions of MiniLM's heaviest non-GEMM operations.
pub trait Kernels: Backend {
    /// GELU, erf form, element-wise.
    fn gelu_erf(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        activation::gelu(x)
    }

    /// Multi-head self-attention over the projections `q`, `k`, `v`, each `[b * s, heads * d]`
    /// (sentence-major, as the linear layers give them): `softmax(q kᵀ / √d + bias) v` per
    /// head, with an additive `bias` `[b, 1, 1, s]` (large and negative at padding). The answer
    /// has the same `[b * s, heads * d]` form. `shape` is `[b, s, heads]`.
    fn self_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        bias: Tensor<Self, 4>,
        shape: [usize; 3],
    ) -> Tensor<Self, 2> {
        composed_self_attention(q, k, v, bias, shape)
    }
}

/// [`Kernels::self_attention`] composed of burn's generic tensor operations.
pub(crate) fn composed_self_attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    bias: Tensor<B, 4>,
    [b, s, heads]: [usize; 3],
) -> Tensor<B, 2> {
    let width = q.dims()[1];
    let d = width / heads;
    let split = |t: Tensor<B, 2>| t.reshape([b, s, heads, d]).swap_dims(1, 2);
    let scores = split(q)
        .matmul(split(k).transpose())
        .div_scalar((d as f32).sqrt())
        + bias;
    activation::softmax(scores, 3)
        .matmul(split(v))
        .swap_dims(1, 2)
        .reshape([b * s, width])
}

impl Kernels for Flex<f32> {
    fn gelu_erf(x: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let device = x.device();
        let mut data = x.into_data();
        match data.as_mut_slice::<f32>() {
            Ok(values) => {
                super::gelu::gelu_in_place(values);
                Tensor::from_data(data, &device)
            }
            // Not f32 (never for this backend's float type): burn's own GELU.
            Err(_) => activation::gelu(Tensor::from_data(data, &device)),
        }
    }

    /// The heads are split and merged by copying whole `d`-runs between buffers (flex's
    /// generic strided copy went element by element, a fifth of MiniLM's time), and the
    /// attention itself is flex's fused, GEMM-backed op. Flex runs that op's heads one after
    /// another on one thread, so the sentences are cut into one group per thread, each split,
    /// attended and merged on its own.
    fn self_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        bias: Tensor<Self, 4>,
        [b, s, heads]: [usize; 3],
    ) -> Tensor<Self, 2> {
        let device = q.device();
        let width = q.dims()[1];
        let d = width / heads;
        let (q, k, v, bias) = (
            f32_values(q),
            f32_values(k),
            f32_values(v),
            f32_values(bias),
        );
        // Values per sentence, and sentences per group.
        let per = s * width;
        let group = b.div_ceil(rayon::current_num_threads()).max(1);
        let mut out = vec![0.0f32; b * per];
        out.par_chunks_mut(group * per)
            .enumerate()
            .for_each(|(g, out)| {
                let (first, n) = (g * group, out.len() / per);
                let split = |t: &[f32]| {
                    let mine = &t[first * per..(first + n) * per];
                    let values = swap_middle(mine, [n, s, heads, d]);
                    Tensor::<Self, 4>::from_data(TensorData::new(values, [n, heads, s, d]), &device)
                };
                // Flex broadcasts a bias over heads without copying, but wants its last two
                // dims whole.
                let bias = bias[first * s..(first + n) * s].to_vec();
                let bias =
                    Tensor::<Self, 4>::from_data(TensorData::new(bias, [n, 1, 1, s]), &device)
                        .expand([n, 1, s, s]);
                let attended = module::attention(
                    split(&q),
                    split(&k),
                    split(&v),
                    None,
                    Some(bias),
                    AttentionModuleOptions::default(),
                );
                swap_middle_into(&f32_values(attended), [n, heads, s, d], out);
            });
        Tensor::from_data(TensorData::new(out, [b * s, width]), &device)
    }
}

/// A tensor's values, row-major.
fn f32_values<const D: usize>(t: Tensor<Flex<f32>, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 just above")
}

/// `[b, x, y, d]` row-major to `[b, y, x, d]`, moving whole `d`-runs: sentence-major
/// `[b, s, heads, d]` to head-major `[b, heads, s, d]`, and back with the middle dims swapped.
fn swap_middle(from: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let mut to = vec![0.0f32; from.len()];
    swap_middle_into(from, shape, &mut to);
    to
}

/// [`swap_middle`] into `to`, of the same length.
fn swap_middle_into(from: &[f32], [b, x, y, d]: [usize; 4], to: &mut [f32]) {
    assert!(
        from.len() == b * x * y * d && to.len() == from.len(),
        "swap_middle: {} values into {}",
        from.len(),
        to.len()
    );
    for (src, dst) in from
        .chunks_exact(x * y * d)
        .zip(to.chunks_exact_mut(x * y * d))
    {
        for xi in 0..x {
            for yi in 0..y {
                let f = (xi * y + yi) * d;
                let t = (yi * x + xi) * d;
                dst[t..t + d].copy_from_slice(&src[f..f + d]);
            }
        }
    }
}

#[cfg(feature = "cuda")]
impl Kernels for super::Gpu {}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    type Cpu = Flex<f32>;

    fn max_abs_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn flex_overrides_agree_with_burns_generic_ops() {
        let device = Default::default();
        let normal = Distribution::Normal(0.0, 1.0);
        Cpu::seed(&device, 7);
        let [b, s, heads, d] = [3, 9, 4, 8];
        let proj = || Tensor::<Cpu, 2>::random([b * s, heads * d], normal, &device);
        let (q, k, v) = (proj(), proj(), proj());
        // Sentence 1 has 4 padding positions, sentence 2 one.
        let mut pad = vec![0.0f32; b * s];
        pad[s + 5..2 * s].fill(-1e4);
        pad[3 * s - 1] = -1e4;
        let bias = Tensor::<Cpu, 1>::from_floats(pad.as_slice(), &device).reshape([b, 1, 1, s]);
        // Two threads, whatever the host: three sentences make groups of two and one.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let fused = pool.install(|| {
            <Cpu as Kernels>::self_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                bias.clone(),
                [b, s, heads],
            )
        });
        let generic = composed_self_attention(q, k, v, bias, [b, s, heads]);
        assert_eq!(fused.dims(), [b * s, heads * d]);
        let diff = max_abs_diff(fused, generic);
        assert!(diff < 1e-5, "attention differs by {diff}");

        let x = Tensor::<Cpu, 2>::random([37, 53], Distribution::Normal(0.0, 3.0), &device);
        let diff = max_abs_diff(<Cpu as Kernels>::gelu_erf(x.clone()), activation::gelu(x));
        assert!(diff < 1e-5, "gelu differs by {diff}");
    }

    #[test]
    fn heads_split_and_merge_are_inverse_permutations() {
        let [b, s, heads, d] = [2, 3, 4, 5];
        let from: Vec<f32> = (0..b * s * heads * d).map(|i| i as f32).collect();
        let split = swap_middle(&from, [b, s, heads, d]);
        // Element (b=1, s=2, h=3, d=4) moves to (b=1, h=3, s=2, d=4).
        let at = |bi: usize, x: usize, y: usize, di: usize, ny: usize, nx: usize| {
            ((bi * nx + x) * ny + y) * d + di
        };
        assert_eq!(
            split[at(1, 3, 2, 4, s, heads)],
            from[at(1, 2, 3, 4, heads, s)]
        );
        assert_eq!(swap_middle(&split, [b, heads, s, d]), from);
    }
}
