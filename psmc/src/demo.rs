//! `psmc demo`: check every operator of a directory (the bundled library by default)
//! and print one verdict table.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use psm_ir::algebra::{Verdict, VerdictKind};

use psm_runtime::Program;

use crate::check::{check_file, Checked};
use crate::run::{trial, Trial};

/// DIR, else `./examples/ops` when it exists, else the repository's `examples/ops`.
fn library_dir(dir: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = dir {
        return dir;
    }
    let local = PathBuf::from("examples/ops");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join("ops")
}

fn psm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "psm") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub fn run(dir: Option<PathBuf>) -> ExitCode {
    let dir = library_dir(dir);
    let files = match psm_files(&dir) {
        Ok(f) if f.is_empty() => {
            crate::print_stderr(&format!("error: no .psm files in {}\n", dir.display()));
            return ExitCode::FAILURE;
        }
        Ok(f) => f,
        Err(e) => {
            crate::print_stderr(&format!("error: cannot read directory {}: {e}\n", dir.display()));
            return ExitCode::FAILURE;
        }
    };
    let checked: Vec<Checked> = files.iter().map(|f| check_file(f, &[], &Default::default())).collect();
    let trials: Vec<Vec<Result<Trial, String>>> = checked.iter().map(run_on_cpu).collect();
    let mut failed = 0;
    for c in &checked {
        if let Some(text) = c.loaded.render_failure("check") {
            crate::print_stderr(&text);
            failed += 1;
        }
    }
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
    let mismatches = trials.iter().flatten().filter(|t| !t.as_ref().is_ok_and(|t| t.agrees)).count();
    crate::print_stdout(&table(&dir, &names, &checked, &trials, failed));
    if failed > 0 || mismatches > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs every aggregator of a valid file on the CPU (JIT), checked against the
/// interpreter.
fn run_on_cpu(c: &Checked) -> Vec<Result<Trial, String>> {
    if c.loaded.result.is_err() {
        return Vec::new();
    }
    let program = match Program::from_source(&c.loaded.source, &[]) {
        Ok(p) => p,
        Err(e) => return c.analyses.iter().map(|_| Err(e.rendered.clone())).collect(),
    };
    c.analyses
        .iter()
        .map(|a| match program.aggregator(&a.name) {
            Some(agg) => trial(&agg, 2, 300, 7),
            None => Err(format!("no aggregator `{}`", a.name)),
        })
        .collect()
}

fn agreement(t: &Result<Trial, String>) -> String {
    match t {
        Ok(t) if t.agrees && t.bit_identical => "bit-identical".into(),
        Ok(t) if t.agrees => format!("rel err {:.0e}", t.max_rel_err),
        Ok(t) => format!("MISMATCH (rel err {:.1e})", t.max_rel_err),
        Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
    }
}

fn rate(t: &Result<Trial, String>) -> String {
    match t {
        Ok(t) if t.steps_per_second >= 1e6 => format!("{:.1} M", t.steps_per_second / 1e6),
        Ok(t) => format!("{:.1} k", t.steps_per_second / 1e3),
        Err(_) => "-".into(),
    }
}

fn cell(v: Option<&Verdict>, assumed: bool) -> String {
    match v {
        None => "none".into(),
        Some(v) if assumed => format!("{}*", v.kind.name()),
        Some(v) => v.kind.name().into(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn table(dir: &Path, names: &[String], checked: &[Checked], trials: &[Vec<Result<Trial, String>>], failed: usize) -> String {
    const HEAD: [&str; 11] = [
        "file",
        "aggregator",
        "associative",
        "identity",
        "commutative",
        "structure",
        "forms",
        "ms",
        "cpu form",
        "cpu vs interpreter",
        "steps/s",
    ];
    let mut rows: Vec<[String; 11]> = Vec::new();
    let (mut holds, mut refuted, mut unknown, mut assumed, mut total) = (0, 0, 0, 0, Duration::ZERO);
    for ((name, c), runs) in names.iter().zip(checked).zip(trials) {
        for (a, t) in c.analyses.iter().zip(runs) {
            let r = &a.report;
            match r.associative.kind {
                k if k.holds() => holds += 1,
                VerdictKind::Refuted => refuted += 1,
                _ => unknown += 1,
            }
            assumed += usize::from(r.assumed);
            total += a.elapsed;
            rows.push([
                name.clone(),
                a.name.clone(),
                cell(Some(&r.associative), r.assumed),
                cell(r.identity.as_ref(), false),
                cell(Some(&r.commutative), false),
                r.structure.name().to_string(),
                r.forms().join(","),
                ms(a.elapsed),
                t.as_ref().map_or("-", |t| t.form).to_string(),
                agreement(t),
                rate(t),
            ]);
        }
    }
    let mut widths = HEAD.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (k, (c, w)) in cells.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            match k {
                0 => s.push_str(&format!("{c}{pad}")),
                7 | 10 => s.push_str(&format!("  {pad}{c}")), // numbers right-aligned
                _ => s.push_str(&format!("  {c}{pad}")),
            }
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "psm operator library: {} ({} files)\n", dir.display(), names.len());
    let _ = writeln!(out, "{}", line(&HEAD.map(String::from)));
    let _ = writeln!(out, "{}", line(&widths.map(|w| "-".repeat(w))));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out.push('\n');
    let n = rows.len();
    let _ = writeln!(
        out,
        "{n} aggregators: {holds} associative (proven or verified), {refuted} refuted, {unknown} unknown; {} ms in the algebra",
        ms(total)
    );
    if assumed > 0 {
        let _ = writeln!(out, "* unknown, treated as associative on the user's word (`assume associative;`)");
    }
    if failed > 0 {
        let s = if failed == 1 { "" } else { "s" };
        let _ = writeln!(out, "{failed} file{s} with errors (diagnostics on stderr)");
    }
    out.push_str(
        "verdicts: proven = a symbolic proof; verified = exact randomized identity testing (error bound in the method);\n\
         \x20         refuted = a concrete counterexample; unknown = only floating-point evidence.\n\
         `psmc check FILE` shows the methods and counterexamples.\n\
         cpu: the Cranelift-compiled operator run in the automatic form on 2 random sequences, checked against\n\
         \x20    the interpreter (bit for bit where the bracketing is fixed; within 1e-5·log2(T) of the f64 fold otherwise);\n\
         \x20    steps/s from a run of up to 2 × 2^20 steps.\n",
    );
    out
}
