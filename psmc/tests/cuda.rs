//! `psmc run --backend cuda` and `psmc bench --backend cuda`: with a CUDA device, the
//! run agrees with the interpreter and reports the same JSON fields as on the CPU;
//! without one, both fail cleanly (exit code 1, "CUDA not available", no panic).
//!
//! The binary is `PSMC` when set (a psmc built elsewhere), else the one cargo built;
//! the repository root is the current directory when it holds examples/ops, else the
//! source tree's.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    if Path::new("examples/ops").is_dir() {
        PathBuf::from(".")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }
}

/// Exit code, stdout, stderr.
fn psmc(args: &[&str]) -> (i32, String, String) {
    let bin = std::env::var_os("PSMC").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_psmc")), PathBuf::from);
    let out = Command::new(bin).args(args).current_dir(root()).env("NO_COLOR", "1").output().expect("psmc runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code().expect("psmc exits normally, without a signal"), text(out.stdout), text(out.stderr))
}

/// The JSON document of a successful run, or `None` after checking the clean failure
/// of a machine without CUDA.
fn json_or_unavailable(args: &[&str]) -> Option<Value> {
    let (code, stdout, stderr) = psmc(args);
    if code == 1 && stderr.contains("CUDA not available") {
        assert!(!stderr.contains("panicked"), "{stderr}");
        println!("CUDA not available here: {}", stderr.trim());
        return None;
    }
    assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}")))
}

#[test]
fn run_on_cuda_matches_the_interpreter_or_fails_cleanly() {
    for (op, form) in [("cumsum", "chunked"), ("gla", "recurrent"), ("attn_agg", "tree"), ("attn_agg", "stream"), ("logcumsumexp", "tree")] {
        let file = format!("examples/ops/{op}.psm");
        let args = ["run", &file, "--backend", "cuda", "--form", form, "--len", "300", "--batch", "2", "--compare", "--stats", "--format", "json"];
        let Some(doc) = json_or_unavailable(&args) else { return };
        assert_eq!(doc["backend"], "cuda", "{doc}");
        assert_eq!(doc["form"], form, "{doc}");
        assert_eq!(doc["compare"]["ok"], true, "{op} {form}: {doc}");
        for field in ["compile_seconds", "seconds", "elements_per_second", "combines_per_step", "peak_elements", "max_rel_err", "outputs"] {
            assert!(!doc[field].is_null(), "{field} missing: {doc}");
        }
    }
}

#[test]
fn bench_on_cuda_reports_rows_or_fails_cleanly() {
    let cumsum = ["bench", "examples/ops/cumsum.psm", "--backend", "cuda", "--len", "100000", "--budget-ms", "20", "--format", "json"];
    let push = [
        "bench", "examples/ops/gla.psm", "--backend", "cuda", "--form", "push", "-D", "K=8", "-D", "V=8", "--batch", "4", "--len", "64",
        "--budget-ms", "20", "--format", "json",
    ];
    for args in [&cumsum[..], &push[..]] {
        let Some(doc) = json_or_unavailable(args) else { return };
        assert_eq!(doc["backend"], "cuda");
        let rows = doc["rows"].as_array().expect("rows");
        assert!(!rows.is_empty());
        for r in rows {
            assert_eq!(r["threads"], 1, "{r}");
            assert_eq!(r["within_tolerance"], true, "{r}");
            assert!(r["seconds"].as_f64().is_some_and(|s| s > 0.0), "{r}");
        }
    }
}
