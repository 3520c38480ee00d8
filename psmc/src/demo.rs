//! `psmc demo`: check every operator of a directory (the bundled library by default)
//! and print one verdict table.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use psm_ir::algebra::{Verdict, VerdictKind};

use crate::check::{check_file, Checked};

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
    let mut failed = 0;
    for c in &checked {
        if let Some(text) = c.loaded.render_failure("check") {
            crate::print_stderr(&text);
            failed += 1;
        }
    }
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
    crate::print_stdout(&table(&dir, &names, &checked, failed));
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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

fn table(dir: &Path, names: &[String], checked: &[Checked], failed: usize) -> String {
    const HEAD: [&str; 8] = ["file", "aggregator", "associative", "identity", "commutative", "structure", "forms", "ms"];
    let mut rows: Vec<[String; 8]> = Vec::new();
    let (mut holds, mut refuted, mut unknown, mut assumed, mut total) = (0, 0, 0, 0, Duration::ZERO);
    for (name, c) in names.iter().zip(checked) {
        for a in &c.analyses {
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
                7 => s.push_str(&format!("  {pad}{c}")), // times right-aligned
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
         `psmc check FILE` shows the methods and counterexamples.\n",
    );
    out
}
