//! The look-back kernel (`psm_codegen::ptx::compile_lookback`): which library
//! operators get it, its parameters, snapshots of its modules, and assembly by NVIDIA's `ptxas` when one is found (`PSM_PTXAS`, else
//! `ptxas` on PATH). Running them is psm-runtime's GPU test suite (tests/cuda.rs).

mod common;

use common::*;
use psm_codegen::ptx::{self, Kernel, PtxOptions};

fn lookback(name: &str) -> Option<ptx::LookbackModule> {
    let (agg, info) = parse_one(&library_source(name), &[]);
    ptx::compile_lookback(&agg, &info, &PtxOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Operators whose element fields and input/output rows are all scalars.
const SCALAR: [&str; 9] = [
    "cumsum",
    "cumsum_f16",
    "ema",
    "last_value",
    "logcumsumexp",
    "lse_missing_rescale",
    "running_max_index",
    "scalar_affine",
    "subtract",
];

#[test]
fn exactly_the_operators_with_scalar_elements_and_rows_get_the_kernel() {
    let with: Vec<String> = library().into_iter().filter(|n| lookback(n).is_some()).collect();
    assert_eq!(with, SCALAR);
}

#[test]
fn geometry_and_parameters() {
    let m = lookback("ema").expect("ema has scalar fields");
    assert_eq!((m.items, m.tile, m.record), (8, 2048, 8 + 2 * m.module.layout.size));
    assert_eq!(m.status_bytes(3), Some(8 + 3 * m.record));
    let names: Vec<&str> = m.module.kernels[0].params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(m.module.kernels[0].kernel, Kernel::Lookback);
    assert_eq!(names, ["param_alpha", "in_v", "out_y", "nseq", "steps", "state_in", "state_out", "status", "flags"]);
}

#[test]
fn snapshots() {
    for name in ["cumsum", "running_max_index"] {
        insta::assert_snapshot!(format!("lookback_{name}"), lookback(name).unwrap().module.text);
    }
}

#[test]
fn ptxas_assembles_every_lookback_module() {
    let ptxas = std::env::var_os("PSM_PTXAS").map(std::path::PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
    });
    let Some(ptxas) = ptxas else {
        println!("skipped: no ptxas (set PSM_PTXAS or put ptxas on PATH)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("psm-lookback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    let modules = SCALAR.iter().map(|n| (format!("{n}_lookback"), lookback(n).unwrap().module.text));
    for (name, text) in modules {
        let path = dir.join(format!("{name}.ptx"));
        std::fs::write(&path, text).expect("write ptx");
        let out = std::process::Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.join(format!("{name}.cubin")))
            .arg(&path)
            .output()
            .expect("run ptxas");
        println!("{name}: {}", String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("Used")).collect::<Vec<_>>().join(" "));
        if !out.status.success() {
            failures.push(format!("{name}:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "ptxas rejected:\n{}", failures.join("\n"));
}
