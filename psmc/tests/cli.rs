//! The psmc binary end to end: exit codes, diagnostics, emitted IR, the JSON schema and
//! the demo table. Verdicts themselves are the algebra's to test: nothing here
//! snapshots a verdict or a timing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs psmc in `dir` with colours off.
fn psmc_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_psmc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("psmc runs");
    Run {
        code: out.status.code().expect("psmc exits normally, without a signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs psmc at the repository root, so that paths in messages are relative.
fn psmc(args: &[&str]) -> Run {
    psmc_in(&root(), args)
}

/// The library's files, relative to the root, sorted.
fn library() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("examples/ops"))
        .expect("examples/ops")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".psm"))
        .map(|n| format!("examples/ops/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

// ---------------------------------------------------------------- usage errors: 2

#[test]
fn define_without_equals_is_a_usage_error() {
    let r = psmc(&["check", "examples/ops/gla.psm", "-D", "K"]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty());
    insta::assert_snapshot!("define_without_equals", r.stderr);
}

#[test]
fn define_with_non_integer_is_a_usage_error() {
    let r = psmc(&["check", "examples/ops/gla.psm", "-D", "K=12.5"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!("define_non_integer", r.stderr);
}

#[test]
fn other_usage_errors() {
    assert_eq!(psmc(&["check"]).code, 2, "no files");
    assert_eq!(psmc(&["check", "--format", "xml", "examples/ops/gla.psm"]).code, 2, "unknown format");
    assert_eq!(psmc(&["emit", "examples/ops/gla.psm", "--target", "llvm"]).code, 2, "unknown target");
    assert_eq!(psmc(&["frobnicate"]).code, 2, "unknown command");
    assert_eq!(psmc(&["--help"]).code, 0);
}

// ---------------------------------------------------------- input errors: 1

#[test]
fn syntax_error_is_rendered() {
    let r = psmc(&["check", "psmc/tests/data/syntax_error.psm"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    insta::assert_snapshot!("syntax_error", r.stderr);
}

#[test]
fn validation_error_is_rendered() {
    let r = psmc(&["check", "psmc/tests/data/invalid.psm"]);
    assert_eq!(r.code, 1);
    insta::assert_snapshot!("validation_error", r.stderr);
}

#[test]
fn unknown_dim_in_define() {
    let r = psmc(&["check", "examples/ops/gla.psm", "-D", "KK=32"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    insta::assert_snapshot!("unknown_dim", r.stderr);
}

#[test]
fn unreadable_file() {
    let r = psmc(&["check", "psmc/tests/data/no_such_file.psm"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: cannot read psmc/tests/data/no_such_file.psm: "), "{}", r.stderr);
    let r = psmc(&["check", "examples/ops"]);
    assert_eq!(r.code, 1, "a directory is not a file");
    assert!(r.stderr.starts_with("error: cannot read examples/ops: "), "{}", r.stderr);
}

#[test]
fn errors_do_not_stop_the_other_files() {
    let r = psmc(&["check", "psmc/tests/data/syntax_error.psm", "examples/ops/cumsum.psm", "psmc/tests/data/no_such_file.psm"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("examples/ops/cumsum.psm\n  cumsum\n"), "{}", r.stdout);
    assert!(r.stderr.contains("syntax error"));
    assert!(r.stderr.contains("cannot read psmc/tests/data/no_such_file.psm"));
}

// ------------------------------------------------------------------- check

#[test]
fn check_reports_every_property() {
    let r = psmc(&["check", "examples/ops/gla.psm", "-D", "K=4", "-D", "V=2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "examples/ops/gla.psm");
    assert_eq!(lines[1], "  gla<K = 4, V = 2>");
    for label in ["associative", "identity", "commutative", "structure", "forms", "chunkwise"] {
        assert!(lines.iter().any(|l| l.starts_with(&format!("    {label} "))), "no {label} line:\n{}", r.stdout);
    }
}

// -------------------------------------------------------------------- emit

#[test]
fn emit_ir_cumsum() {
    let r = psmc(&["emit", "examples/ops/cumsum.psm", "--target", "ir"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty());
    insta::assert_snapshot!("emit_ir_cumsum", r.stdout);
}

#[test]
fn emit_ir_attn_agg() {
    let r = psmc(&["emit", "examples/ops/attn_agg.psm", "--target", "ir"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("emit_ir_attn_agg", r.stdout);
}

#[test]
fn emit_clif_cumsum() {
    let r = psmc(&["emit", "examples/ops/cumsum.psm", "--target", "clif"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty());
    insta::assert_snapshot!("emit_clif_cumsum", r.stdout);
}

#[test]
fn emit_ptx_cumsum() {
    let r = psmc(&["emit", "examples/ops/cumsum.psm", "--target", "ptx"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty());
    insta::assert_snapshot!("emit_ptx_cumsum", r.stdout);
}

#[test]
fn emit_ptx_lookback() {
    let r = psmc(&["emit", "examples/ops/cumsum.psm", "--target", "ptx-lookback"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty());
    // The module psm-codegen's look-back snapshot holds (tests/ptx_fast.rs).
    assert!(r.stdout.contains(".entry psm_lookback(") && r.stdout.contains("ld.relaxed.gpu"), "{}", r.stdout);
    // Entries that scan independently: a look-back per entry.
    let r = psmc(&["emit", "examples/ops/diag_affine.psm", "--target", "ptx-lookback", "-D", "D=4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(".entry psm_lookback("), "{}", r.stdout);
}

#[test]
fn emit_ptx_lookback_refuses_with_the_reason() {
    let r = psmc(&["emit", "examples/ops/subtract.psm", "--target", "ptx-lookback"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("aggregator `subtract`: the look-back scan rebrackets the steps: it needs an associative operator"), "{}", r.stderr);
    let r = psmc(&["emit", "examples/ops/gla.psm", "--target", "ptx-lookback"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("aggregator `gla`: no look-back kernel takes it"), "{}", r.stderr);
}

#[test]
fn emit_ptx_applies_defines() {
    let r = psmc(&["emit", "examples/ops/gla.psm", "--target", "ptx", "-D", "K=3", "-D", "V=5"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("// psm aggregator gla<K = 3, V = 5>:"), "{}", r.stdout);
    assert!(r.stdout.contains("// element: 80 bytes; a at 0 (3 x f32), s at 16 (15 x f32)"), "{}", r.stdout);
}

#[test]
fn emit_applies_defines_and_defaults_to_ir() {
    let r = psmc(&["emit", "examples/ops/attn_agg.psm", "-D", "C=2", "-D", "D=3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("aggregator attn_agg<C = 2, D = 3> {"), "{}", r.stdout);
}

#[test]
fn emit_refuses_invalid_input() {
    let r = psmc(&["emit", "psmc/tests/data/invalid.psm", "--target", "ir"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("error: could not emit `psmc/tests/data/invalid.psm`"), "{}", r.stderr);
}

// -------------------------------------------------------------------- json

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", r.stdout))
}

const VERDICTS: [&str; 4] = ["proven", "verified", "refuted", "unknown"];
const STRUCTURES: [&str; 5] = ["elementwise", "affine-scalar", "affine-diagonal", "affine-dense", "general"];
const FORMS: [&str; 4] = ["recurrent", "chunked", "tree", "stream"];

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    k.sort();
    k
}

fn is_num(v: &Value) -> bool {
    v.is_number() || ["inf", "-inf", "nan"].contains(&v.as_str().unwrap_or(""))
}

fn assert_value(v: &Value) {
    for (field, values) in v.as_object().expect("a value is an object") {
        let values = values.as_array().unwrap_or_else(|| panic!("field {field} is an array"));
        assert!(values.iter().all(is_num), "field {field}: {values:?}");
    }
}

fn assert_verdict(v: &Value, what: &str) {
    let k = keys(v);
    assert!(k == ["method", "verdict"] || k == ["counterexample", "method", "verdict"], "{what}: keys {k:?}");
    assert!(VERDICTS.contains(&v["verdict"].as_str().expect("verdict is a string")), "{what}: {v}");
    assert!(v["method"].is_string(), "{what}");
    if let Some(cx) = v.get("counterexample") {
        assert_eq!(v["verdict"], "refuted", "{what}: only refutations carry counterexamples");
        assert_eq!(keys(cx), ["field", "index", "lhs", "lhs_value", "operands", "params", "rhs", "rhs_value"], "{what}");
        for operand in cx["operands"].as_object().expect("operands").values() {
            assert_value(operand);
        }
        for side in ["lhs", "rhs"] {
            assert_eq!(keys(&cx[side]), ["expr", "value"], "{what}");
            assert!(cx[side]["expr"].is_string());
            assert_value(&cx[side]["value"]);
        }
        assert!(cx["field"].is_string());
        assert!(cx["index"].as_array().expect("index").iter().all(Value::is_u64));
        assert!(is_num(&cx["lhs_value"]) && is_num(&cx["rhs_value"]));
        assert_value(&cx["params"]);
    }
}

#[test]
fn json_schema_over_the_library() {
    let files = library();
    let mut args = vec!["check", "--format", "json"];
    args.extend(files.iter().map(String::as_str));
    let r = psmc(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let doc = json(&r);
    assert_eq!(keys(&doc), ["aggregators", "diagnostics"]);
    assert_eq!(doc["diagnostics"], Value::Array(vec![]));
    let aggs = doc["aggregators"].as_array().expect("aggregators");

    // Every aggregator of the library is reported, in file order.
    let expected = std::fs::read_to_string(root().join("examples/ops/EXPECTED.tsv")).expect("EXPECTED.tsv");
    let expected: Vec<(String, String)> = expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            (format!("examples/ops/{}", cols.next().unwrap()), cols.next().unwrap().to_string())
        })
        .collect();
    let found: Vec<(String, String)> =
        aggs.iter().map(|a| (a["file"].as_str().unwrap().to_string(), a["name"].as_str().unwrap().to_string())).collect();
    assert_eq!(found, expected);

    for a in aggs {
        let what = a["name"].as_str().unwrap();
        assert_eq!(
            keys(a),
            ["associative", "assumed", "chunkwise", "commutative", "dims", "file", "forms", "identity", "name", "structure"],
            "{what}"
        );
        for (dim, value) in a["dims"].as_object().expect("dims") {
            assert!(value.is_i64(), "{what}: dim {dim} = {value}");
        }
        assert_verdict(&a["associative"], what);
        assert_verdict(&a["commutative"], what);
        if !a["identity"].is_null() {
            assert_verdict(&a["identity"], what);
        }
        assert!(STRUCTURES.contains(&a["structure"].as_str().expect("structure")), "{what}");
        let forms = a["forms"].as_array().expect("forms");
        assert!(!forms.is_empty() && forms.iter().all(|f| FORMS.contains(&f.as_str().unwrap_or(""))), "{what}");
        assert!(a["assumed"].is_boolean(), "{what}");
        assert!(a["chunkwise"]["applies"].is_boolean() && a["chunkwise"]["detail"].is_string(), "{what}");
    }
}

/// Replaces every leaf by its type, keeping keys: the document's shape.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => Value::Null,
    }
}

#[test]
fn json_shape_of_cumsum() {
    // cumsum holds every law, so no counterexample can appear whatever the algebra finds.
    let r = psmc(&["check", "--format", "json", "examples/ops/cumsum.psm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!("json_shape_cumsum", serde_json::to_string_pretty(&shape(&json(&r))).unwrap());
}

#[test]
fn json_diagnostics() {
    let r = psmc(&[
        "check",
        "--format",
        "json",
        "psmc/tests/data/syntax_error.psm",
        "psmc/tests/data/invalid.psm",
        "psmc/tests/data/no_such_file.psm",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.is_empty(), "json mode writes everything to stdout: {}", r.stderr);
    let doc = json(&r);
    assert_eq!(doc["aggregators"], Value::Array(vec![]));
    let diags = doc["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diags.len(), 3, "{doc:#}");
    for d in diags {
        assert_eq!(keys(d), ["column", "file", "line", "message", "rendered"]);
    }
    let missing = &diags[2];
    assert_eq!(missing["file"], "psmc/tests/data/no_such_file.psm");
    assert!(missing["line"].is_null() && missing["column"].is_null());
    assert!(missing["message"].as_str().unwrap().starts_with("cannot read psmc/tests/data/no_such_file.psm: "));
    // The OS's wording of the I/O error is not ours to snapshot.
    let mut doc = doc;
    doc["diagnostics"].as_array_mut().unwrap().truncate(2);
    insta::assert_snapshot!("json_diagnostics", serde_json::to_string_pretty(&doc).unwrap());
}

#[test]
fn json_unknown_dim_has_no_position() {
    let r = psmc(&["check", "--format", "json", "examples/ops/cumsum.psm", "-D", "K=3"]);
    assert_eq!(r.code, 1);
    let doc = json(&r);
    let d = &doc["diagnostics"][0];
    assert_eq!(d["file"], "examples/ops/cumsum.psm");
    assert!(d["line"].is_null() && d["column"].is_null(), "{d}");
}

// -------------------------------------------------------------------- demo

fn assert_demo_lists_library(r: &Run) {
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let header = r.stdout.lines().find(|l| l.starts_with("file ")).expect("a header row");
    for col in ["aggregator", "associative", "identity", "commutative", "structure", "forms", "ms"] {
        assert!(header.contains(col), "{header}");
    }
    for f in library() {
        let name = f.trim_start_matches("examples/ops/");
        assert!(r.stdout.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing:\n{}", r.stdout);
    }
}

#[test]
fn demo_lists_every_library_file() {
    assert_demo_lists_library(&psmc(&["demo"]));
}

#[test]
fn demo_finds_the_library_from_anywhere() {
    // Outside the repository there is no ./examples/ops: the binary's own workspace is used.
    assert_demo_lists_library(&psmc_in(&std::env::temp_dir(), &["demo"]));
    assert_demo_lists_library(&psmc_in(&std::env::temp_dir(), &["demo", root().join("examples/ops").to_str().unwrap()]));
}

#[test]
fn demo_of_a_missing_directory() {
    let r = psmc(&["demo", "psmc/tests/data/no_such_dir"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("error: cannot read directory psmc/tests/data/no_such_dir: "), "{}", r.stderr);
}

#[test]
fn demo_reports_invalid_files() {
    let r = psmc(&["demo", "psmc/tests/data"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("could not check `psmc/tests/data/syntax_error.psm`"), "{}", r.stderr);
    assert!(r.stdout.contains("2 files with errors"), "{}", r.stdout);
}
