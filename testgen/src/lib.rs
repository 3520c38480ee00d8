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

/// The source of the library's operator `name`.
pub fn library_source(name: &str) -> String {
    std::fs::read_to_string(library_dir().join(format!("{name}.psm"))).unwrap_or_else(|e| panic!("the library operator {name}: {e}"))
}

/// Every operator of the bundled library, as (file name, source), sorted by file name.
pub fn library() -> Vec<(String, String)> {
    library_names().into_iter().map(|n| (format!("{n}.psm"), library_source(&n))).collect()
}
