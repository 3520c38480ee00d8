//! `psmc check`: load (read, parse, validate) and analyse files, and the human report.
//!
//! [`check_file`] is the one analysis loop; `check` and `demo` both call it.

use std::collections::HashSet;
use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use psm_ir::algebra::{self, Counterexample, Report, Structure, Value, Verdict, VerdictKind};
use psm_ir::derive::chunkwise::chunkwise;
use psm_ir::ir::Module;
use psm_ir::valid::{self, DimOverride, Info};
use psm_ir::Diagnostic;

/// Why a file produced no IR.
pub enum Failure {
    /// The file could not be read (missing, a directory, not UTF-8, ...).
    Unreadable(String),
    /// Parse or validation diagnostics.
    Invalid(Vec<Diagnostic>),
}

/// A file read, parsed and validated.
pub struct Loaded {
    /// The path as the user wrote it, for messages.
    pub file: String,
    pub source: String,
    pub result: Result<(Module, Vec<Info>), Failure>,
}

/// Reads, parses and validates one file. An override that names no dim of this file
/// is an error unless another file of the same command declares it (`elsewhere`):
/// `psmc check gla.psm cumsum.psm -D K=64` sets K where it exists.
pub fn load(path: &Path, overrides: &[DimOverride], elsewhere: &HashSet<String>) -> Loaded {
    let file = path.display().to_string();
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => return Loaded { file, source: String::new(), result: Err(Failure::Unreadable(e.to_string())) },
    };
    let result = psm_ir::front::dsl::parse(&source)
        .and_then(|module| {
            let own: Vec<DimOverride> = overrides
                .iter()
                .filter(|o| declares(&module, &o.name) || !elsewhere.contains(&o.name))
                .cloned()
                .collect();
            valid::validate(&module, &own).map(|infos| (module, infos))
        })
        .map_err(Failure::Invalid);
    Loaded { file, source, result }
}

fn declares(module: &Module, dim: &str) -> bool {
    module.aggregators.iter().any(|a| a.find_dim(dim).is_some())
}

/// The dims declared by any of `files` that parse.
fn declared_dims(files: &[std::path::PathBuf]) -> HashSet<String> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|src| psm_ir::front::dsl::parse(&src).ok())
        .flat_map(|m| m.aggregators.into_iter().flat_map(|a| a.dims.iter().map(|(_, d)| d.name.clone()).collect::<Vec<_>>()))
        .collect()
}

impl Loaded {
    /// The failure as text for stderr: rendered diagnostics and a closing line naming
    /// the file and what could not be done (`verb`: "check", "emit").
    pub fn render_failure(&self, verb: &str) -> Option<String> {
        match self.result.as_ref().err()? {
            Failure::Unreadable(reason) => Some(format!("error: cannot read {}: {reason}\n", self.file)),
            Failure::Invalid(diags) => {
                let mut text = psm_ir::diag::render(diags, &self.file, &self.source);
                let n = diags.len();
                let s = if n == 1 { "" } else { "s" };
                let _ = writeln!(text, "error: could not {verb} `{}` due to {n} previous error{s}\n", self.file);
                Some(text)
            }
        }
    }
}

/// The analysis of one aggregator.
pub struct Analysis {
    pub name: String,
    pub dims: Vec<(String, i64)>,
    pub report: Report,
    /// Whether the chunkwise form applies (`psm_ir::derive::chunkwise`): its summary,
    /// or the reason it does not.
    pub chunkwise: Result<String, String>,
    /// Time spent in the algebra (validation excluded).
    pub elapsed: Duration,
}

/// A checked file: its analyses, one per aggregator in declaration order, or why
/// there are none.
pub struct Checked {
    pub loaded: Loaded,
    pub analyses: Vec<Analysis>,
}

/// The analysis loop shared by `check` and `demo`.
pub fn check_file(path: &Path, overrides: &[DimOverride], elsewhere: &HashSet<String>) -> Checked {
    let loaded = load(path, overrides, elsewhere);
    let mut analyses = Vec::new();
    if let Ok((module, infos)) = &loaded.result {
        for (agg, info) in module.aggregators.iter().zip(infos) {
            let start = Instant::now();
            let report = algebra::analyze(agg, info);
            analyses.push(Analysis {
                name: agg.name.clone(),
                dims: info.dim_values(agg),
                report,
                chunkwise: chunkwise(agg, info).map(|plan| plan.summary()).map_err(|why| why.0),
                elapsed: start.elapsed(),
            });
        }
    }
    Checked { loaded, analyses }
}

pub fn run(files: &[std::path::PathBuf], overrides: &[DimOverride], json: bool) -> ExitCode {
    let elsewhere = if overrides.is_empty() { HashSet::new() } else { declared_dims(files) };
    let checked: Vec<Checked> = files.iter().map(|f| check_file(f, overrides, &elsewhere)).collect();
    let failed = checked.iter().any(|c| c.loaded.result.is_err());
    if json {
        match crate::json::document(&checked) {
            Ok(text) => crate::print_stdout(&text),
            Err(e) => {
                crate::print_stderr(&format!("error: cannot serialize the report: {e}\n"));
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut first = true;
        for c in &checked {
            match c.loaded.render_failure("check") {
                Some(text) => crate::print_stderr(&text),
                None => {
                    let sep = if first { "" } else { "\n" };
                    first = false;
                    crate::print_stdout(&format!("{sep}{}", human(&c.loaded.file, &c.analyses)));
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Where the verdict details start: after `    ` + a 12-column label + a 10-column verdict.
const DETAIL: usize = 4 + 13 + 11;

/// The report of one valid file.
pub fn human(file: &str, analyses: &[Analysis]) -> String {
    let mut out = format!("{file}\n");
    for a in analyses {
        let _ = writeln!(out, "  {}", heading(&a.name, &a.dims));
        let r = &a.report;
        verdict(&mut out, "associative", Some(&r.associative), r.assumed);
        verdict(&mut out, "identity", r.identity.as_ref(), false);
        verdict(&mut out, "commutative", Some(&r.commutative), false);
        let _ = writeln!(out, "    {:<12} {}", "structure", structure(&r.structure));
        let _ = writeln!(out, "    {:<12} {}", "forms", r.forms().join(", "));
        let chunkwise = match &a.chunkwise {
            Ok(summary) => format!("applies: {summary}"),
            Err(reason) => format!("does not apply: {reason}"),
        };
        let _ = writeln!(out, "    {:<12} {chunkwise}", "chunkwise");
    }
    out
}

/// `gla<K = 16, V = 16>`, or the bare name without dims.
pub fn heading(name: &str, dims: &[(String, i64)]) -> String {
    if dims.is_empty() {
        return name.to_string();
    }
    let dims: Vec<String> = dims.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    format!("{name}<{}>", dims.join(", "))
}

/// A verdict's short name as tables show it: `unknown (assumed associative)` when the
/// operator is treated as associative on the user's word.
pub fn verdict_name(v: &Verdict, assumed: bool) -> String {
    if assumed {
        format!("{} (assumed associative)", v.kind.name())
    } else {
        v.kind.name().to_string()
    }
}

fn verdict(out: &mut String, label: &str, v: Option<&Verdict>, assumed: bool) {
    let Some(v) = v else {
        let _ = writeln!(out, "    {label:<12} {:<10} (none declared: a flagged identity, never evaluated)", "none");
        return;
    };
    let name = verdict_name(v, assumed);
    match (&v.kind, &v.counterexample) {
        (VerdictKind::Refuted, Some(cx)) => {
            let _ = writeln!(out, "    {label:<12} {name:<10} {}", counterexample_summary(cx));
            let pad = " ".repeat(DETAIL);
            for (operand, value) in &cx.operands {
                let _ = writeln!(out, "{pad}{operand} = {}", compact(value));
            }
            if !cx.params.fields.is_empty() {
                let _ = writeln!(out, "{pad}params = {}", compact(&cx.params));
            }
            if !v.method.is_empty() {
                let _ = writeln!(out, "{pad}({})", v.method);
            }
        }
        _ if v.method.is_empty() => {
            let _ = writeln!(out, "    {label:<12} {name}");
        }
        _ => {
            let _ = writeln!(out, "    {label:<12} {name:<10} ({})", v.method);
        }
    }
}

/// `(a•b)•c ≠ a•(b•c) at s[0, 1]: 0.25 vs 0.5`
pub fn counterexample_summary(cx: &Counterexample) -> String {
    format!(
        "{} ≠ {} at {}: {} vs {}",
        cx.lhs_name,
        cx.rhs_name,
        entry(&cx.field, &cx.index),
        number(cx.lhs_value),
        number(cx.rhs_value)
    )
}

/// `s[0, 1]`, or `s` for a scalar field.
pub fn entry(field: &str, index: &[usize]) -> String {
    if index.is_empty() {
        return field.to_string();
    }
    let index: Vec<String> = index.iter().map(usize::to_string).collect();
    format!("{field}[{}]", index.join(", "))
}

/// `{a: 0.5, s: [0.25, 1, 2, 3, 4, 5, … 10 more]}`: at most six values per field.
pub fn compact(value: &Value) -> String {
    const SHOWN: usize = 6;
    let fields: Vec<String> = value
        .fields
        .iter()
        .map(|(name, values)| {
            let shown: Vec<String> = values.iter().take(SHOWN).map(|&x| number(x)).collect();
            let text = match values.len() {
                1 => shown[0].clone(),
                n if n > SHOWN => format!("[{}, … {} more]", shown.join(", "), n - SHOWN),
                _ => format!("[{}]", shown.join(", ")),
            };
            format!("{name}: {text}")
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Shortest round-trip text, exponent form for very large or small magnitudes.
pub fn number(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        (if x > 0.0 { "inf" } else { "-inf" }).into()
    } else if x != 0.0 && !(1e-4..1e7).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// `affine-diagonal (transition a; state s)`
pub fn structure(s: &Structure) -> String {
    match s {
        Structure::Affine { gates, state, .. } => {
            let gates = if gates.is_empty() { "identity".to_string() } else { gates.join(", ") };
            format!("{} (transition {gates}; state {})", s.name(), state.join(", "))
        }
        _ => s.name().to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use psm_ir::algebra::Transition;

    fn value(fields: &[(&str, &[f64])]) -> Value {
        Value { fields: fields.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect() }
    }

    /// A report with every kind of verdict, built by hand: the formatting must not
    /// wait for the algebra to produce each kind.
    pub(crate) fn sample() -> Analysis {
        let cx = Counterexample {
            operands: vec![
                ("a".into(), value(&[("m", &[0.5]), ("l", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])])),
                ("b".into(), value(&[("m", &[f64::NEG_INFINITY]), ("l", &[1e-9, 2.5e12])])),
            ],
            lhs_name: "a•b".into(),
            rhs_name: "b•a".into(),
            lhs: value(&[("m", &[0.5]), ("l", &[f64::NAN])]),
            rhs: value(&[("m", &[f64::INFINITY]), ("l", &[0.5])]),
            field: "l".into(),
            index: vec![0, 1],
            lhs_value: 0.25,
            rhs_value: f64::NAN,
            params: value(&[("w", &[1.0, -1.0])]),
        };
        Analysis {
            name: "sample".into(),
            dims: vec![("K".into(), 2), ("V".into(), 4)],
            report: Report {
                associative: Verdict { kind: VerdictKind::Unknown, method: "float search found nothing".into(), counterexample: None },
                identity: Some(Verdict { kind: VerdictKind::Verified, method: "identity testing over GF(2^61-1)".into(), counterexample: None }),
                commutative: Verdict { kind: VerdictKind::Refuted, method: "float search, confirmed in f64".into(), counterexample: Some(Box::new(cx)) },
                structure: Structure::Affine { transition: Transition::Diagonal, gates: vec!["a".into()], state: vec!["s".into(), "n".into()] },
                assumed: true,
            },
            chunkwise: Ok("s[2, 4] diagonal decay; 1 inclusive contraction(s)".into()),
            elapsed: Duration::from_millis(3),
        }
    }

    #[test]
    fn human_report_of_every_verdict_kind() {
        let mut a = sample();
        let mut b = sample();
        b.name = "plain".into();
        b.dims.clear();
        b.report.identity = None;
        b.report.assumed = false;
        b.report.structure = Structure::General;
        b.chunkwise = Err("combine is not affine".into());
        a.report.associative.method.clear();
        insta::assert_snapshot!(human("dir/sample.psm", &[a, b]));
    }

    #[test]
    fn numbers() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(-0.25), "-0.25");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1e-9), "1e-9");
        assert_eq!(number(2.5e12), "2.5e12");
        assert_eq!(number(f64::NAN), "nan");
        assert_eq!(number(f64::NEG_INFINITY), "-inf");
    }
}
