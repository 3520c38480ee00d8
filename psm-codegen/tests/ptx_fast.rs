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
const SCALAR: [&str; 8] =
    ["cumsum", "ema", "last_value", "logcumsumexp", "lse_missing_rescale", "running_max_index", "scalar_affine", "subtract"];
/// Operators whose element entries scan independently (the per-entry kernel).
const ENTRIES: [&str; 2] = ["average", "diag_affine"];

#[test]
fn exactly_the_operators_with_scalar_or_independent_entries_get_the_kernel() {
    let with: Vec<String> = library_names().into_iter().filter(|n| lookback(n).is_some()).collect();
    let mut want: Vec<&str> = SCALAR.iter().chain(&ENTRIES).copied().collect();
    want.sort();
    assert_eq!(with, want);
    for name in SCALAR {
        assert_eq!(lookback(name).unwrap().entries, 1, "{name}");
    }
}

#[test]
fn geometry_and_parameters() {
    let m = lookback("ema").expect("ema has scalar fields");
    // One 8-byte status slot per 32-bit word of the element: ema's is two f64 fields.
    // Positions per thread as the stages fit: ema's f64 input and output share a stage
    // (its readout reads no input), as cumsum's do.
    assert_eq!((m.items, m.tile, m.record), (16, 4096, 4 * 8));
    let c = lookback("cumsum").expect("cumsum has scalar fields");
    assert_eq!((c.items, c.tile, c.record), (32, 8192, 8));
    assert!(!c.module.text.contains("stage_out"), "cumsum's output is staged over its input");
    // 3 sequences of 2 tiles and a step: 9 tiles, a record each after the counter.
    assert_eq!(m.launch(3, 2 * m.tile + 1), Some((9, 8 + 9 * m.record)));
    // diag_affine at D = 16: a thread per entry, a block per chunk of 64 steps; 3
    // sequences of 65 steps are 6 chunks, a record per chunk and entry.
    let d = lookback("diag_affine").expect("diag_affine's entries scan independently");
    assert_eq!((d.entries, d.tile, d.record, d.block), (16, 64, 2 * 8, 64));
    assert_eq!(d.launch(3, 65), Some((6, 8 + 6 * 16 * d.record)));
    assert_eq!(m.block, ptx::LOOKBACK_BLOCK);
    let names: Vec<&str> = m.module.kernels[0].params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(m.module.kernels[0].kernel, Kernel::Lookback);
    assert_eq!(names, ["param_alpha", "in_v", "out_y", "nseq", "steps", "state_in", "state_out", "status", "flags"]);
}

#[test]
fn snapshots() {
    for name in ["cumsum", "running_max_index", "logcumsumexp", "diag_affine"] {
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
    let modules = SCALAR.iter().chain(&ENTRIES).map(|n| (format!("{n}_lookback"), lookback(n).unwrap().module.text));
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
