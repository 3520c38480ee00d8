//! `psmc bench` end to end, quickly: it runs, checks psm against the hand-written loop
//! and prints the documented JSON fields. No timing is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn psmc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_psmc")).args(args).current_dir(root()).env("NO_COLOR", "1").output().expect("psmc runs");
    (
        out.status.code().expect("psmc exits normally, without a signal"),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

const FIELDS: [&str; 11] = [
    "operator",
    "shape",
    "form",
    "threads",
    "seconds",
    "baseline_seconds",
    "ratio",
    "elements_per_second",
    "fraction_of_copy",
    "speedup_vs_1_thread",
    "identical",
];

#[test]
fn cumsum_json_has_every_field() {
    let (code, stdout, stderr) = psmc(&["bench", "examples/ops/cumsum.psm", "--len", "1000", "--format", "json", "--budget-ms", "5"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let rows = doc["rows"].as_array().expect("rows");
    // Recurrent at 1 thread, chunked at 1 and 2 threads.
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in rows {
        for f in FIELDS {
            assert!(row.get(f).is_some(), "row without `{f}`: {row}");
        }
        assert_eq!(row["operator"], "cumsum");
        assert_eq!(row["shape"], serde_json::json!([1000]));
        assert!(row["seconds"].as_f64().is_some_and(|s| s > 0.0), "{row}");
        assert!(row["baseline_seconds"].as_f64().is_some_and(|s| s > 0.0), "{row}");
        assert!(row["within_tolerance"].as_bool().expect("a baseline exists"), "{row}");
    }
    // The recurrent form folds in the hand-written loop's order: bit for bit.
    assert_eq!(rows[0]["form"], "recurrent");
    assert_eq!(rows[0]["threads"], 1);
    assert_eq!(rows[0]["identical"], true);
    assert!(rows[0]["speedup_vs_1_thread"].is_null());
    assert_eq!(rows[2]["threads"], 2);
    assert!(rows[2]["speedup_vs_1_thread"].as_f64().is_some(), "{}", rows[2]);
}

#[test]
fn no_baseline_skips_the_hand_loops_timing_not_the_check() {
    let (code, stdout, stderr) =
        psmc(&["bench", "examples/ops/cumsum.psm", "--len", "1000", "--format", "json", "--budget-ms", "5", "--no-baseline"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for row in doc["rows"].as_array().expect("rows") {
        assert!(row["baseline_seconds"].is_null() && row["ratio"].is_null(), "{row}");
        assert!(row["within_tolerance"].as_bool().expect("still checked against the f64 fold"), "{row}");
    }
}

#[test]
fn human_table_and_operators_without_a_baseline() {
    let (code, stdout, stderr) = psmc(&["bench", "examples/ops/ema.psm", "--len", "300", "--threads", "1", "--budget-ms", "5"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("operator"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("ema") && l.contains("recurrent")), "{stdout}");
    // Checked against its own recurrent form, run apart (the recurrent row itself bit for bit).
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ema")).collect();
    assert!(rows[0].ends_with("bit-identical"), "{stdout}");
    assert!(rows.iter().all(|l| l.ends_with("bit-identical") || l.contains("recurrent rel")), "{stdout}");
}

#[test]
fn operators_without_a_baseline_are_checked_against_their_own_definition() {
    // Associative: every form against the recurrent form, within psm's tolerance.
    let (code, stdout, stderr) = psmc(&[
        "bench", "examples/ops/mamba2.psm", "-D", "K=4", "-D", "V=4", "--len", "100", "--form", "chunkwise", "--format", "json", "--budget-ms", "5",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for row in doc["rows"].as_array().expect("rows") {
        assert_eq!(row["reference"], "recurrent", "{row}");
        assert_eq!(row["within_tolerance"], true, "{row}");
        assert!(row["max_rel_err"].as_f64().expect("measured") <= row["tolerance"].as_f64().expect("a tolerance"), "{row}");
    }
    // Not associative: the tree and the stream against the tree, bit for bit on the host.
    let (code, stdout, stderr) = psmc(&["bench", "examples/ops/tanh_rnn.psm", "-D", "D=4", "--len", "37", "--format", "json", "--budget-ms", "5"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for row in doc["rows"].as_array().expect("rows") {
        assert_eq!(row["reference"], "tree", "{row}");
        assert_eq!((&row["identical"], &row["tolerance"]), (&Value::Bool(true), &Value::from(0.0)), "{row}");
    }
}

#[test]
fn the_chunkwise_form_is_timed_where_it_applies() {
    let forms = |file: &str, dims: &[&str]| -> Vec<String> {
        let mut args = vec!["bench", file, "--len", "64", "--format", "json", "--budget-ms", "5"];
        args.extend(dims);
        let (code, stdout, stderr) = psmc(&args);
        assert_eq!(code, 0, "{stdout}{stderr}");
        let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let rows = doc["rows"].as_array().expect("rows");
        assert!(rows.iter().all(|r| r["within_tolerance"] == true), "{stdout}");
        rows.iter().map(|r| format!("{}/{}", r["form"].as_str().expect("form"), r["threads"])).collect()
    };
    assert_eq!(forms("examples/ops/retnet.psm", &["-D", "K=4", "-D", "V=4"]), ["recurrent/1", "chunked/1", "chunked/2", "chunkwise/1", "chunkwise/2"]);
    assert_eq!(forms("examples/ops/cumsum.psm", &[]), ["recurrent/1", "chunked/1", "chunked/2"]);
}

#[test]
fn non_associative_operators_run_tree_and_stream() {
    let (code, stdout, stderr) = psmc(&[
        "bench", "examples/ops/attn_agg.psm", "-D", "C=2", "-D", "D=4", "--len", "20", "--format", "json", "--budget-ms", "5",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let forms: Vec<&str> = doc["rows"].as_array().expect("rows").iter().map(|r| r["form"].as_str().expect("form")).collect();
    assert_eq!(forms, ["tree", "tree", "stream"]);
    for row in doc["rows"].as_array().expect("rows") {
        assert_eq!(row["identical"], true, "{row}");
    }
}

#[test]
fn usage_and_input_errors() {
    let (code, _, stderr) = psmc(&["bench"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = psmc(&["bench", "--suite", "cpu", "examples/ops/cumsum.psm"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, stderr) = psmc(&["bench", "examples/ops/subtract.psm", "--form", "recurrent", "--len", "10"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not associative"), "{stderr}");
    let (code, _, stderr) = psmc(&["bench", "no/such/file.psm"]);
    assert_eq!(code, 1, "{stderr}");
}
