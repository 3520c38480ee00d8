//! Test-data generators shared by the test suites of several psm crates (a dev-only
//! dependency; nothing here is part of psm's API).

pub mod algebra;

use std::path::{Path, PathBuf};

/// The bundled library's directory: `PSM_OPS_DIR` when set (a test binary run away from
/// its checkout, as on the GPU machine), else the source tree's examples/ops, else
/// ./examples/ops (a binary built elsewhere, run from a copy of the repository).
pub fn library_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PSM_OPS_DIR") {
        return dir.into();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ops");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("examples/ops")
    }
}

/// The library's operators (the `.psm` files' stems), sorted.
pub fn library_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(library_dir())
        .expect("the library's directory (examples/ops, or PSM_OPS_DIR)")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".psm").map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Calls the macro `$m` with the name of every operator of the library as an
/// identifier, so that a test file makes one test per operator. The users check the
/// list against [`library_names`], the directory's own, so that a new operator cannot
/// go untested.
#[macro_export]
macro_rules! library_operators {
    ($m:ident) => {
        $m!(
            attn_agg,
            average,
            causal_mean,
            cumsum,
            cumsum_f16,
            deltanet,
            diag_affine,
            ema,
            gated_deltanet,
            gla,
            gla_bf16,
            last_value,
            linear_attention,
            logcumsumexp,
            lse_missing_rescale,
            mamba2,
            mamba_s6,
            matmul2x2,
            mlstm,
            mlstm_affine,
            online_softmax,
            retnet,
            running_max_index,
            rwkv6,
            scalar_affine,
            subtract,
            tanh_rnn,
        );
    };
}

/// splitmix64 (Steele, Lea & Flood 2014): the tests' small seeded generator, so that a
/// failure reproduces from its seed. The seed is the state as given.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1), 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in the open interval (lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        loop {
            let v = lo + (hi - lo) * self.unit();
            if v > lo && v < hi {
                return v;
            }
        }
    }
    /// In [0, n) (by remainder: for n far below 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The range the tests draw a library operator's input `field` from: gates and decays
/// in (0.5, 1), log-gates and the state-space A in (-1, 0), everything else in (-1, 1).
pub fn value_range(op: &str, field: &str) -> (f64, f64) {
    match (op, field) {
        ("gla" | "gla_bf16", "alpha") | ("scalar_affine", "a") | ("retnet", "gamma") | ("ema", "alpha") => (0.5, 1.0),
        ("gated_deltanet", "g") | ("mamba2", "A") => (-1.0, 0.0),
        _ => (-1.0, 1.0),
    }
}

/// The source of the library's operator `name`.
pub fn library_source(name: &str) -> String {
    std::fs::read_to_string(library_dir().join(format!("{name}.psm"))).unwrap_or_else(|e| panic!("the library operator {name}: {e}"))
}

/// Every operator of the bundled library, as (file name, source), sorted by file name.
pub fn library() -> Vec<(String, String)> {
    library_names().into_iter().map(|n| (format!("{n}.psm"), library_source(&n))).collect()
}
