//! What psm's benchmarks measure against: the loops a user writes by hand today, and
//! the machine's copy bandwidth, measured in the same run.
//!
//! Each baseline computes exactly what the library operator of the same name computes
//! in f32 (the same operations in the same order, no fused multiply-add), so the
//! benchmarks can also check that psm's output is bit-identical to it.

pub mod baselines;

use std::time::{Duration, Instant};

use rayon::prelude::*;

/// The best of repeated runs of `f`, repeated until `budget` has passed (at least 3
/// runs): the estimate least disturbed by other work on the machine.
pub fn best_time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

/// Copy bandwidth in bytes per second for a buffer of `bytes` bytes (read + write
/// counted once each, as `memcpy` moves them). Both buffers are written before the
/// timed copies, in parallel ([`filled`]), so that no copy pays their page faults.
pub fn copy_bandwidth(bytes: usize, budget: Duration) -> f64 {
    let src = filled(bytes, 1u8);
    let mut dst = filled(bytes, 0u8);
    let t = best_time(budget, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    2.0 * bytes as f64 / t.as_secs_f64()
}

/// `n` copies of `value`, written by every thread of the current rayon pool: a fresh
/// buffer of GiBs spends seconds in page faults when one thread first touches it.
pub fn filled<T: Copy + Default + Send + Sync>(n: usize, value: T) -> Vec<T> {
    // `vec!` of the default (zero) gets untouched zeroed pages; `fill` then faults them
    // in, in parallel, one block of pages per task.
    let mut v = vec![T::default(); n];
    let per_task = (1 << 21) / std::mem::size_of::<T>().max(1);
    v.par_chunks_mut(per_task).for_each(|c| c.fill(value));
    v
}

/// Uniform in [lo, hi) from the top 24 bits of `bits`.
fn uniform_from(bits: u64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * ((bits >> 40) as f32 / (1u64 << 24) as f32)
}

/// A small deterministic generator for benchmark inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        uniform_from(self.0, lo, hi)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A deterministic generator whose draw `i` is a hash of (seed, i) (splitmix64), so that
/// any part of a long input can be drawn on its own: [`IndexedRng::extend`] draws in
/// parallel and gives the same values for any thread count.
#[derive(Clone, Copy)]
pub struct IndexedRng(u64);

impl IndexedRng {
    pub fn new(seed: u64) -> IndexedRng {
        IndexedRng(splitmix64(seed))
    }
    /// Draw `i`, uniform in [lo, hi).
    pub fn uniform(&self, i: usize, lo: f32, hi: f32) -> f32 {
        uniform_from(splitmix64(self.0.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))), lo, hi)
    }
    /// Appends draws 0..n in [lo, hi), each through `convert`, on the current rayon pool.
    pub fn extend<T: Send>(&self, out: &mut Vec<T>, n: usize, lo: f32, hi: f32, convert: impl Fn(f32) -> T + Sync + Send) {
        out.par_extend((0..n).into_par_iter().map(|i| convert(self.uniform(i, lo, hi))));
    }
}

/// The splitmix64 finalizer: a bijective mix in which every input bit moves every
/// output bit.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool")
    }

    /// The same values for any thread count, each the draw of its index, in range.
    #[test]
    fn indexed_draws_do_not_depend_on_the_thread_count() {
        let rng = IndexedRng::new(7);
        let n = 100_003;
        let draws = |threads: usize| {
            let mut v = vec![-5.0f32];
            pool(threads).install(|| rng.extend(&mut v, n, 0.5, 1.0, |x| x));
            v
        };
        let one = draws(1);
        assert_eq!(one.len(), n + 1);
        assert_eq!(one[0], -5.0, "extend appends");
        for (i, x) in one[1..].iter().enumerate() {
            assert_eq!(x.to_bits(), rng.uniform(i, 0.5, 1.0).to_bits());
            assert!((0.5..1.0).contains(x), "{x}");
        }
        for threads in [2, 3, 8] {
            assert_eq!(draws(threads), one, "{threads} threads");
        }
        // Different seeds and neighbouring indices give different values.
        assert_ne!(IndexedRng::new(8).uniform(0, 0.0, 1.0), rng.uniform(0, 0.0, 1.0));
        assert_ne!(one[1], one[2]);
    }

    #[test]
    fn filled_has_every_entry() {
        let v = pool(3).install(|| filled(10_007, 3u16));
        assert_eq!(v.len(), 10_007);
        assert!(v.iter().all(|&x| x == 3));
        assert!(filled(0, 1u8).is_empty());
    }
}
