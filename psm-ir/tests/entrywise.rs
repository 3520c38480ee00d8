//! The entrywise reduction (`algebra::entrywise`): operators that combine each entry of
//! their element on its own are decided per entry, quickly and with the same verdicts;
//! operators whose entries differ, or whose fields differ in shape, are not reduced.

use std::time::{Duration, Instant};

use psm_ir::algebra::{analyze, Report, Verdict, VerdictKind};
use psm_ir::interp::{Evaluator, FloatDomain, Precision};
use psm_ir::valid::DimOverride;

const PER_ENTRY: &str = "decided per entry";

fn analyze_src(src: &str, dims: &[(&str, i64)]) -> (Report, Duration) {
    let module = psm_ir::front::dsl::parse(src).unwrap();
    let overrides: Vec<DimOverride> = dims.iter().map(|&(n, v)| DimOverride { name: n.into(), value: v }).collect();
    let infos = psm_ir::valid::validate(&module, &overrides).unwrap();
    let start = Instant::now();
    let report = analyze(&module.aggregators[0], &infos[0]);
    (report, start.elapsed())
}

fn assert_holds_per_entry(v: &Verdict) {
    assert!(v.kind.holds() && v.method.starts_with(PER_ENTRY), "{:?}: {}", v.kind, v.method);
}

const EMAX: &str = "
aggregator emax<D = 6> {
    input   { m[D] }
    element { m[D] }
    combine(l, r) { m[d] = max(l.m[d], r.m[d]); }
}";

#[test]
fn emax_is_decided_per_entry_at_every_width() {
    for d in [1, 4, 40, 128] {
        let (report, took) = analyze_src(EMAX, &[("D", d)]);
        assert_holds_per_entry(&report.associative);
        assert_holds_per_entry(&report.commutative);
        assert!(took < Duration::from_secs(2), "D = {d} took {took:?}");
    }
}

/// The refutation is checked against the interpreter here, independently of the algebra.
fn assert_refuted_on_the_operator(src: &str, dims: &[(&str, i64)], v: &Verdict) {
    assert_eq!(v.kind, VerdictKind::Refuted, "{}", v.method);
    let cx = v.counterexample.as_ref().unwrap();
    let module = psm_ir::front::dsl::parse(src).unwrap();
    let overrides: Vec<DimOverride> = dims.iter().map(|&(n, v)| DimOverride { name: n.into(), value: v }).collect();
    let infos = psm_ir::valid::validate(&module, &overrides).unwrap();
    let ev = Evaluator::new(&module.aggregators[0], &infos[0]);
    let fields = |value: &psm_ir::algebra::Value| value.fields.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let params = fields(&cx.params);
    let ops: Vec<_> = cx.operands.iter().map(|(_, o)| fields(o)).collect();
    let combine = |a: &Vec<Vec<f64>>, b: &Vec<Vec<f64>>| ev.combine(&mut FloatDomain::new(Precision::F64), &params, a, b).unwrap();
    let (lhs, rhs) = match cx.lhs_name.as_str() {
        "(a•b)•c" => (combine(&combine(&ops[0], &ops[1]), &ops[2]), combine(&ops[0], &combine(&ops[1], &ops[2]))),
        "a•b" => (combine(&ops[0], &ops[1]), combine(&ops[1], &ops[0])),
        other => panic!("unexpected law {other}"),
    };
    assert_ne!(lhs, rhs, "{}", v.method);
    for (_, o) in &cx.operands {
        for ((_, values), &t) in o.fields.iter().zip(&module.aggregators[0].element()) {
            assert_eq!(values.len(), infos[0].len(t), "the counterexample is one of the whole operator");
        }
    }
}

#[test]
fn a_refutation_of_one_entry_is_confirmed_on_the_whole_operator() {
    let src = "
aggregator esub<D = 6> {
    input   { m[D] }
    element { m[D] }
    combine(l, r) { m[d] = l.m[d] - r.m[d]; }
}";
    let dims = [("D", 40)];
    let (report, took) = analyze_src(src, &dims);
    for v in [&report.associative, &report.commutative] {
        assert!(v.method.starts_with(PER_ENTRY), "{}", v.method);
        assert_refuted_on_the_operator(src, &dims, v);
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn a_body_that_reads_the_index_value_is_not_reduced_and_still_refuted() {
    // Entries 0 and 1 add (associative), the others subtract: one entry decides nothing.
    let src = "
aggregator split<D = 4> {
    input   { m[D] }
    element { m[D] }
    combine(l, r) { m[d] = if d < 2 { l.m[d] + r.m[d] } else { l.m[d] - r.m[d] }; }
}";
    let dims = [("D", 4)];
    let (report, _) = analyze_src(src, &dims);
    for v in [&report.associative, &report.commutative] {
        assert!(!v.method.contains(PER_ENTRY), "{}", v.method);
        assert_refuted_on_the_operator(src, &dims, v);
    }
}

#[test]
fn params_read_at_the_entry_are_one_free_value_per_entry() {
    let holds = "
aggregator shifted<D = 6> {
    param    { w[D] }
    input    { m[D] }
    element  { m[D] }
    identity { m[d] = w[d]; }
    combine(l, r) { m[d] = l.m[d] + r.m[d] - w[d]; }
}";
    let (report, took) = analyze_src(holds, &[("D", 64)]);
    assert_holds_per_entry(&report.associative);
    assert_holds_per_entry(report.identity.as_ref().unwrap());
    assert_holds_per_entry(&report.commutative);
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // (a w + b) w + c ≠ a w + (b w + c) unless w ∈ {0, 1}: refuted, with w at every entry.
    let fails = "
aggregator decayed<D = 6> {
    param   { w[D] }
    input   { m[D] }
    element { m[D] }
    combine(l, r) { m[d] = l.m[d] * w[d] + r.m[d]; }
}";
    let dims = [("D", 16)];
    let (report, _) = analyze_src(fails, &dims);
    assert!(report.associative.method.starts_with(PER_ENTRY), "{}", report.associative.method);
    assert_refuted_on_the_operator(fails, &dims, &report.associative);
    assert_eq!(report.associative.counterexample.as_ref().unwrap().params.fields[0].1.len(), 16);
}

#[test]
fn a_param_read_at_another_entry_is_not_reduced() {
    // Entry d reads w[0]: still the same value everywhere, but not the entry's own, so the
    // conditions do not hold and the ordinary procedure decides.
    let src = "
aggregator pinned<D = 3> {
    param   { w[D] }
    input   { m[D] }
    element { m[D] }
    combine(l, r) { m[d] = l.m[d] + r.m[d] * w[0]; }
}";
    let (report, _) = analyze_src(src, &[]);
    assert!(!report.associative.method.contains(PER_ENTRY), "{}", report.associative.method);
    assert_eq!(report.commutative.kind, VerdictKind::Refuted, "{}", report.commutative.method);
}

#[test]
fn fields_of_different_shapes_are_not_reduced() {
    let src = "
aggregator mixed<D = 3> {
    input   { m[D], s }
    element { m[D], s }
    combine(l, r) {
        m[d] = max(l.m[d], r.m[d]);
        s = l.s + r.s;
    }
}";
    let (report, _) = analyze_src(src, &[]);
    for v in [&report.associative, &report.commutative] {
        assert!(v.kind.holds() && !v.method.contains(PER_ENTRY), "{:?}: {}", v.kind, v.method);
    }
}

#[test]
fn transposed_reads_are_not_reduced() {
    // m[i, j] reads the operands at [j, i]: entries are not combined on their own.
    let src = "
aggregator transposed<N = 2> {
    input   { m[N, N] }
    element { m[N, N] }
    combine(l, r) { m[i, j] = l.m[j, i] + r.m[i, j]; }
}";
    let (report, _) = analyze_src(src, &[]);
    assert!(!report.associative.method.contains(PER_ENTRY), "{}", report.associative.method);
    assert_eq!(report.associative.kind, VerdictKind::Refuted, "{}", report.associative.method);
}

/// Each scalar combine (fields `a`, `b`) and its entrywise vector version get the same
/// verdicts: the vector one per entry.
#[test]
fn vector_verdicts_equal_the_scalar_verdicts() {
    let bodies = [
        "a = max(l.a, r.a); b = min(l.b, r.b);",
        "a = l.a - r.a; b = l.b;",
        "a = l.a * r.a; b = r.a * l.b + r.b;",
        "a = l.a * r.a; b = l.a * l.b + r.b;",
        "a = log(exp(l.a) + exp(r.a)); b = l.b + r.b;",
        "a = if l.a > r.a { l.a } else { r.a - 1.0 }; b = select(r.a > l.a, r.b, l.b);",
        "a = r.a; b = l.b * 0.5 + r.b;",
    ];
    for body in bodies {
        let scalar = format!("aggregator s {{ input {{ a, b }} element {{ a, b }} combine(l, r) {{ {body} }} }}");
        let entrywise = body.replace("l.a", "l.a[d]").replace("l.b", "l.b[d]").replace("r.a", "r.a[d]").replace("r.b", "r.b[d]");
        let entrywise = entrywise.replace("a = ", "a[d] = ").replace("b = ", "b[d] = ");
        let vector = format!("aggregator v<D = 24> {{ input {{ a[D], b[D] }} element {{ a[D], b[D] }} combine(l, r) {{ {entrywise} }} }}");
        let (s, _) = analyze_src(&scalar, &[]);
        let (v, _) = analyze_src(&vector, &[]);
        for (sv, vv) in [(&s.associative, &v.associative), (&s.commutative, &v.commutative)] {
            assert_eq!(sv.kind.holds(), vv.kind.holds(), "{body}: scalar {}, vector {}", sv.method, vv.method);
            assert_eq!(sv.kind == VerdictKind::Refuted, vv.kind == VerdictKind::Refuted, "{body}: {}", vv.method);
            assert!(vv.method.starts_with(PER_ENTRY), "{body}: {}", vv.method);
        }
    }
}
