//! What psm's benchmarks measure against: the loops a user writes by hand today, and
//! the machine's copy bandwidth, measured in the same run.
//!
//! Each baseline computes exactly what the library operator of the same name computes
//! in f32 (the same operations in the same order, no fused multiply-add), so the
//! benchmarks can also check that psm's output is bit-identical to it.

pub mod baselines;

use std::time::{Duration, Instant};

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
/// counted once each, as `memcpy` moves them).
pub fn copy_bandwidth(bytes: usize, budget: Duration) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let t = best_time(budget, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    2.0 * bytes as f64 / t.as_secs_f64()
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
        lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}
