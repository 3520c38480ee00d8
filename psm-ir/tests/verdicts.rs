//! Every operator of the library gets the verdicts EXPECTED.tsv records, within the
//! time budget, and no verdict contradicts the interpreter.

use std::path::PathBuf;
use std::time::Instant;

use psm_ir::algebra::{analyze, VerdictKind};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops")
}

/// `holds` accepts proven or verified; `fails` requires refuted.
fn matches(expected: &str, kind: VerdictKind) -> bool {
    match expected {
        "holds" => kind.holds(),
        "fails" => kind == VerdictKind::Refuted,
        other => panic!("unknown expectation {other}"),
    }
}

#[test]
fn library_verdicts_match_expected() {
    let table = std::fs::read_to_string(root().join("EXPECTED.tsv")).unwrap();
    let mut failures = Vec::new();
    let mut rows = 0;
    for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [file, name, assoc, identity, comm, structure] = cols[..] else { panic!("bad row {line}") };
        rows += 1;
        let src = std::fs::read_to_string(root().join(file)).unwrap();
        let module = psm_ir::front::dsl::parse(&src).unwrap();
        let infos = psm_ir::valid::validate(&module, &[]).unwrap();
        let k = module.aggregators.iter().position(|a| a.name == name).unwrap();
        let start = Instant::now();
        let report = analyze(&module.aggregators[k], &infos[k]);
        let elapsed = start.elapsed();
        let mut problems = Vec::new();
        if !matches(assoc, report.associative.kind) {
            problems.push(format!("associative {} ({})", report.associative.kind.name(), report.associative.method));
        }
        match (identity, &report.identity) {
            ("none", None) => {}
            (want, Some(v)) if want != "none" && matches(want, v.kind) => {}
            (want, got) => problems.push(format!("identity expected {want}, got {:?}", got.as_ref().map(|v| (v.kind, &v.method)))),
        }
        if !matches(comm, report.commutative.kind) {
            problems.push(format!("commutative {} ({})", report.commutative.kind.name(), report.commutative.method));
        }
        if report.structure.name() != structure {
            problems.push(format!("structure {} expected {structure}", report.structure.name()));
        }
        if elapsed.as_secs_f64() > 3.0 {
            problems.push(format!("took {elapsed:?}"));
        }
        eprintln!("{name}: {:?} {}", elapsed, report.associative.method);
        if !problems.is_empty() {
            failures.push(format!("{file} {name}: {}", problems.join("; ")));
        }
    }
    assert!(rows >= 14, "the library has at least 14 operators");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
