//! Unit tests of the reference interpreter's semantics (psm-ir/src/interp), on small
//! inline operators run for one or a few steps through `derive::run`.
//!
//! Each test pins one rule of interp/mod.rs's contract: rounding to the declared type
//! in `Precision::Declared` (f64 everywhere in `Precision::F64`), NaN propagation of
//! `max`/`min` (also as reductions), inf flowing through, i32 wrapping, row-major index
//! order, reductions as sequential left folds, `if`/`select` evaluating only the taken
//! branch, the definitions of `rsqrt`/`sigmoid`/`softplus`, constants such as
//! `rsqrt(D)` computed in the declared type, and locals with explicit extents.

use psm_ir::derive::{run, Form};
use psm_ir::interp::{FloatDomain, Precision};
use psm_ir::valid::DimOverride;

/// Parses and validates a one-aggregator source; panics with the rendered diagnostics.
fn compile(src: &str, dims: &[(&str, i64)]) -> (psm_ir::ir::Module, psm_ir::valid::Info) {
    let overrides: Vec<DimOverride> = dims.iter().map(|&(n, v)| DimOverride { name: n.into(), value: v }).collect();
    let m = match psm_ir::front::dsl::parse(src) {
        Ok(m) => m,
        Err(d) => panic!("{}", psm_ir::diag::render(&d, "inline.psm", src)),
    };
    let infos = match psm_ir::valid::validate(&m, &overrides) {
        Ok(i) => i,
        Err(d) => panic!("{}", psm_ir::diag::render(&d, "inline.psm", src)),
    };
    assert_eq!(infos.len(), 1);
    let info = infos.into_iter().next().unwrap();
    (m, info)
}

/// Runs `steps` steps with the sequential fold and returns the output buffers.
fn outputs(src: &str, dims: &[(&str, i64)], p: Precision, params: &[Vec<f64>], inputs: &[Vec<f64>], steps: usize) -> Vec<Vec<f64>> {
    let (m, info) = compile(src, dims);
    run(&m.aggregators[0], &info, FloatDomain::new(p), Form::Fold, params, inputs, steps).unwrap().outputs
}

/// One step of a readout-only operator: `element` repeats the inputs, the readout
/// computes the expression under test from `x`.
fn one(src: &str, p: Precision, inputs: &[f64]) -> Vec<Vec<f64>> {
    let ins: Vec<Vec<f64>> = inputs.iter().map(|&v| vec![v]).collect();
    outputs(src, &[], p, &[], &ins, 1)
}

/// `y = EXPR` of two scalar f32 inputs `a`, `b`.
fn scalar2(expr: &str) -> String {
    format!(
        "aggregator t {{
            input {{ a, b }}
            element {{ a, b }}
            combine(l, r) {{ a = r.a; b = r.b; }}
            readout inclusive(s, x) -> y {{ y = {expr}; }}
        }}"
    )
}

fn y(src: &str, p: Precision, a: f64, b: f64) -> f64 {
    one(src, p, &[a, b])[0][0]
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[track_caller]
fn assert_same(found: f64, expected: f64) {
    assert!(same(found, expected), "found {found:e} ({:#x}), expected {expected:e} ({:#x})", found.to_bits(), expected.to_bits());
}

// ---------------------------------------------------------------------------------
// Precision

#[test]
fn declared_precision_rounds_every_operation_to_f32() {
    let src = scalar2("x.a + x.b");
    // 1 + 1e-8 is 1 in f32 and not in f64.
    assert_same(y(&src, Precision::Declared, 1.0, 1e-8), 1.0);
    assert_same(y(&src, Precision::F64, 1.0, 1e-8), 1.0 + 1e-8);

    // Every intermediate is rounded, not just the result: (a*b)*b in f32 steps.
    let src = scalar2("x.a * x.b * x.b - x.a");
    let (a, b) = (1.0f32 + f32::EPSILON, 1.0f32 + 3.0 * f32::EPSILON);
    let f32_result = ((a * b) * b - a) as f64;
    let f64_result = (a as f64) * (b as f64) * (b as f64) - (a as f64);
    assert_ne!(f32_result, f64_result);
    assert_same(y(&src, Precision::Declared, a as f64, b as f64), f32_result);
    assert_same(y(&src, Precision::F64, a as f64, b as f64), f64_result);
}

#[test]
fn declared_precision_rounds_literals_to_f32() {
    let src = scalar2("x.a * 0.1");
    let a = 3.0f64;
    assert_same(y(&src, Precision::Declared, a, 0.0), (3.0f32 * 0.1f32) as f64);
    assert_same(y(&src, Precision::F64, a, 0.0), 3.0 * 0.1);
    assert_ne!((3.0f32 * 0.1f32) as f64, 3.0 * 0.1);
}

#[test]
fn declared_precision_rounds_inputs_and_params_to_their_type() {
    // A backend holds an f32 input in an f32 buffer: 0.1 is f32(0.1) from the start,
    // for a pass-through as for a comparison.
    let src = scalar2("x.a");
    assert_same(y(&src, Precision::Declared, 0.1, 0.0), 0.1f32 as f64);
    assert_same(y(&src, Precision::F64, 0.1, 0.0), 0.1);
    let src = scalar2("select(x.a == x.b, 1.0, 0.0)");
    assert_same(y(&src, Precision::Declared, 0.1, 0.1 + 1e-12), 1.0);
    assert_same(y(&src, Precision::F64, 0.1, 0.1 + 1e-12), 0.0);

    let src = "aggregator t {
        param { w }
        input { a }
        element { a }
        combine(l, r) { a = r.a; }
        readout inclusive(s, x) -> y { y = w; }
    }";
    let o = outputs(src, &[], Precision::Declared, &[vec![0.1]], &[vec![1.0]], 1);
    assert_same(o[0][0], 0.1f32 as f64);
    let o = outputs(src, &[], Precision::F64, &[vec![0.1]], &[vec![1.0]], 1);
    assert_same(o[0][0], 0.1);
}

#[test]
fn f64_fields_are_computed_in_f64_in_declared_precision() {
    let src = "aggregator t {
        input { a: f64, b: f64 }
        element { a: f64, b: f64 }
        combine(l, r) { a = r.a; b = r.b; }
        readout inclusive(s, x) -> y: f64 { y = x.a + x.b * 0.1; }
    }";
    for p in [Precision::Declared, Precision::F64] {
        assert_same(one(src, p, &[1.0, 1e-8])[0][0], 1.0 + 1e-8 * 0.1);
    }
}

#[test]
fn f32_sum_and_f64_oracle_differ_through_a_whole_scan() {
    // cumsum of 0.1 over 1000 steps: f32 drifts, f64 does not (much).
    let src = "aggregator c { input { v } element { v } combine(l, r) { v = l.v + r.v; } }";
    let n = 1000;
    let ins = vec![vec![0.1; n]];
    let d = outputs(src, &[], Precision::Declared, &[], &ins, n);
    let f = outputs(src, &[], Precision::F64, &[], &ins, n);
    let mut acc32 = 0.0f32;
    let mut acc64 = 0.0f64;
    for t in 0..n {
        acc32 = if t == 0 { 0.1f32 } else { acc32 + 0.1f32 };
        acc64 = if t == 0 { 0.1 } else { acc64 + 0.1 };
        assert_same(d[0][t], acc32 as f64);
        assert_same(f[0][t], acc64);
    }
    assert!((d[0][n - 1] - f[0][n - 1]).abs() > 1e-4);
}

// ---------------------------------------------------------------------------------
// Non-finite values

#[test]
fn max_and_min_propagate_nan() {
    let nan = f64::NAN;
    for p in [Precision::Declared, Precision::F64] {
        for (f, a, b) in [("max", nan, 1.0), ("max", 1.0, nan), ("min", nan, 1.0), ("min", 1.0, nan), ("max", nan, nan)] {
            let r = y(&scalar2(&format!("{f}(x.a, x.b)")), p, a, b);
            assert!(r.is_nan(), "{f}({a}, {b}) = {r} in {p:?}");
        }
        assert_same(y(&scalar2("max(x.a, x.b)"), p, -1.0, 2.0), 2.0);
        assert_same(y(&scalar2("min(x.a, x.b)"), p, -1.0, 2.0), -1.0);
        // Infinities are ordinary values for max/min.
        assert_same(y(&scalar2("max(x.a, x.b)"), p, f64::NEG_INFINITY, 2.0), 2.0);
        assert_same(y(&scalar2("min(x.a, x.b)"), p, f64::INFINITY, 2.0), 2.0);
    }
}

#[test]
fn max_and_min_reductions_propagate_nan_from_any_position() {
    let src = "aggregator t<N = 5> {
        input { v[N] }
        element { v[N] }
        combine(l, r) { v[i] = r.v[i]; }
        readout inclusive(s, x) -> (hi, lo, total) {
            hi = max(i) x.v[i];
            lo = min(i) x.v[i];
            total = sum(i) x.v[i];
        }
    }";
    for p in [Precision::Declared, Precision::F64] {
        for pos in 0..5 {
            let mut v = vec![3.0, -2.0, 7.0, 0.5, -9.0];
            v[pos] = f64::NAN;
            let o = outputs(src, &[], p, &[], &[v], 1);
            assert!(o[0][0].is_nan() && o[1][0].is_nan() && o[2][0].is_nan(), "NaN at {pos}: {o:?}");
        }
        let o = outputs(src, &[], p, &[], &[vec![3.0, -2.0, 7.0, 0.5, -9.0]], 1);
        assert_eq!((o[0][0], o[1][0], o[2][0]), (7.0, -9.0, -0.5));
    }
}

#[test]
fn infinities_flow_through() {
    let inf = f64::INFINITY;
    for p in [Precision::Declared, Precision::F64] {
        assert_same(y(&scalar2("x.a + 1.0"), p, inf, 0.0), inf);
        assert_same(y(&scalar2("x.a * x.b"), p, -inf, 2.0), -inf);
        assert!(y(&scalar2("x.a - x.b"), p, inf, inf).is_nan());
        assert!(y(&scalar2("x.a * x.b"), p, inf, 0.0).is_nan());
        assert_same(y(&scalar2("exp(x.a)"), p, inf, 0.0), inf);
        assert_same(y(&scalar2("exp(x.a)"), p, -inf, 0.0), 0.0);
        assert_same(y(&scalar2("log(x.a)"), p, 0.0, 0.0), -inf);
        assert_same(y(&scalar2("x.a / x.b"), p, 1.0, 0.0), inf);
        assert_same(y(&scalar2("x.a / x.b"), p, -1.0, 0.0), -inf);
        assert_same(y(&scalar2("tanh(x.a)"), p, inf, 0.0), 1.0);
        // The `inf` literal.
        assert_same(y(&scalar2("min(x.a, inf)"), p, 5.0, 0.0), 5.0);
        assert_same(y(&scalar2("-inf"), p, 0.0, 0.0), -inf);
        assert_same(y(&scalar2("max(x.a, -inf)"), p, -inf, 0.0), -inf);
        assert_same(y(&scalar2("select(x.a > x.b, 1.0, 0.0)"), p, inf, 1e30), 1.0);
    }
    // f32 overflow to inf in Declared precision, a finite value in F64.
    assert_same(y(&scalar2("x.a * x.b"), Precision::Declared, 1e30, 1e30), inf);
    assert_same(y(&scalar2("x.a * x.b"), Precision::F64, 1e30, 1e30), 1e30 * 1e30);
    assert_same(y(&scalar2("exp(x.a)"), Precision::Declared, 100.0, 0.0), inf);
    assert!(y(&scalar2("exp(x.a)"), Precision::F64, 100.0, 0.0).is_finite());
}

// ---------------------------------------------------------------------------------
// Integers

const I32_OPS: &str = "aggregator t {
    input { a: i32, b: i32 }
    element { a: i32, b: i32 }
    combine(l, r) { a = r.a; b = r.b; }
    readout inclusive(s, x) -> (sum: i32, diff: i32, prod: i32, neg: i32, mag: i32, hi: i32, lo: i32) {
        sum  = x.a + x.b;
        diff = x.a - x.b;
        prod = x.a * x.b;
        neg  = -x.a;
        mag  = abs(x.a);
        hi   = max(x.a, x.b);
        lo   = min(x.a, x.b);
    }
}";

#[test]
fn i32_arithmetic_wraps() {
    let cases: [(i32, i32); 6] =
        [(i32::MAX, 1), (i32::MIN, 1), (i32::MIN, -1), (65536, 65536), (-7, 3), (123456789, -987654321)];
    for p in [Precision::Declared, Precision::F64] {
        for &(a, b) in &cases {
            let o = one(I32_OPS, p, &[a as f64, b as f64]);
            let expected = [
                a.wrapping_add(b),
                a.wrapping_sub(b),
                a.wrapping_mul(b),
                a.wrapping_neg(),
                a.wrapping_abs(),
                a.max(b),
                a.min(b),
            ];
            let found: Vec<f64> = o.iter().map(|v| v[0]).collect();
            let expected: Vec<f64> = expected.iter().map(|&v| v as f64).collect();
            assert_eq!(found, expected, "a = {a}, b = {b}, {p:?}");
        }
    }
}

#[test]
fn i32_scan_wraps_across_steps() {
    let src = "aggregator c { input { v: i32 } element { v: i32 } combine(l, r) { v = l.v + r.v; } }";
    let ins = vec![vec![i32::MAX as f64, 1.0, 1.0, i32::MIN as f64]];
    for form in [Form::Fold, Form::Tree, Form::Stream, Form::Chunked(2)] {
        let (m, info) = compile(src, &[]);
        let o = run(&m.aggregators[0], &info, FloatDomain::new(Precision::Declared), form, &[], &ins, 4).unwrap().outputs;
        assert_eq!(o[0], vec![i32::MAX as f64, i32::MIN as f64, (i32::MIN + 1) as f64, 1.0], "{form:?}");
    }
}

#[test]
fn i32_constants_wrap_when_they_become_i32_values() {
    // An integer expression of dims and literals is computed exactly and converted to
    // its type: as an i32 value it wraps like i32 arithmetic does.
    let src = "aggregator t<N = 65536> {
        input { a: i32 }
        element { a: i32 }
        combine(l, r) { a = r.a; }
        readout inclusive(s, x) -> (y: i32, z: i32) { y = x.a + N * N; z = N * N + 5; }
    }";
    let o = one(src, Precision::Declared, &[3.0]);
    assert_eq!(o[0][0], 3.0, "65536 * 65536 wraps to 0 in i32");
    assert_eq!(o[1][0], 5.0);
}

// ---------------------------------------------------------------------------------
// Index order and reductions

#[test]
fn multi_index_statements_are_row_major() {
    let src = "aggregator t<R = 2, S = 3> {
        input { m[R, S] }
        element { m[R, S] }
        combine(l, r) { m[i, j] = r.m[i, j]; }
        readout inclusive(st, x) -> (idx[R, S], tr[S, R], flat[R, S]) {
            idx[i, j] = 10 * i + j;
            tr[j, i]  = x.m[i, j];
            let z[i, j] = x.m[i, j] * 2.0;
            flat[a, b] = z[a, b] + 0.5;
        }
    }";
    let m = vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
    let o = outputs(src, &[], Precision::Declared, &[], &[m], 1);
    assert_eq!(o[0], vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
    assert_eq!(o[1], vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
    assert_eq!(o[2], vec![0.5, 2.5, 4.5, 20.5, 22.5, 24.5]);
}

#[test]
fn three_index_statement_is_row_major() {
    let src = "aggregator t<A = 2, B = 3, C = 4> {
        input { v }
        element { v }
        combine(l, r) { v = r.v; }
        readout inclusive(st, x) -> y[A, B, C] { y[i, j, k] = 100 * i + 10 * j + k; }
    }";
    let o = outputs(src, &[], Precision::F64, &[], &[vec![0.0]], 1);
    let expected: Vec<f64> =
        (0..2).flat_map(|i| (0..3).flat_map(move |j| (0..4).map(move |k| (100 * i + 10 * j + k) as f64))).collect();
    assert_eq!(o[0], expected);
}

/// A sum whose value depends on the order of its terms, in f64 and in f32.
#[test]
fn reductions_are_sequential_left_folds() {
    let src = "aggregator t<N = 4> {
        input { v[N] }
        element { v[N] }
        combine(l, r) { v[i] = r.v[i]; }
        readout inclusive(s, x) -> (total, product) {
            total = sum(i) x.v[i];
            product = prod(i) x.v[i];
        }
    }";
    // f64: 1e16 + 1 rounds back to 1e16, 1e16 + 3 does not.
    let v = [1.0, 1.0, 1.0, 1e16];
    let left = ((v[0] + v[1]) + v[2]) + v[3];
    let right = v[0] + (v[1] + (v[2] + v[3]));
    let pairwise = (v[0] + v[1]) + (v[2] + v[3]);
    let reversed = ((v[3] + v[2]) + v[1]) + v[0];
    assert!(left != right && left != pairwise && left != reversed, "{left} {right} {pairwise} {reversed}");
    let o = outputs(src, &[], Precision::F64, &[], &[v.to_vec()], 1);
    assert_same(o[0][0], left);

    // f32: the same with 1e8.
    let w = [1.0f32, 1.0, 3.0, 1e8];
    let left32 = ((w[0] + w[1]) + w[2]) + w[3];
    let pair32 = (w[0] + w[1]) + (w[2] + w[3]);
    let right32 = w[0] + (w[1] + (w[2] + w[3]));
    let reversed32 = ((w[3] + w[2]) + w[1]) + w[0];
    assert!(left32 != pair32 && left32 != right32 && left32 != reversed32);
    let ws: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let o = outputs(src, &[], Precision::Declared, &[], std::slice::from_ref(&ws), 1);
    assert_same(o[0][0], left32 as f64);
    // The same data in F64 precision: exact.
    let o = outputs(src, &[], Precision::F64, &[], &[ws], 1);
    assert_same(o[0][0], 1e8 + 5.0);

    // Products: (a*b)*c*d in f32 steps, and overflow then underflow is order dependent.
    let w = [1e30f32, 1e30, 1e-30, 1e-30];
    let left32 = ((w[0] * w[1]) * w[2]) * w[3];
    assert!(left32.is_infinite());
    let ws: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let o = outputs(src, &[], Precision::Declared, &[], &[ws], 1);
    assert_same(o[1][0], left32 as f64);
}

#[test]
fn nested_reductions_fold_the_outer_index_over_inner_folds() {
    let src = "aggregator t<R = 3, S = 3> {
        input { m[R, S] }
        element { m[R, S] }
        combine(l, r) { m[i, j] = r.m[i, j]; }
        readout inclusive(st, x) -> (rows, cols) {
            rows = sum(i) sum(j) x.m[i, j];
            cols = sum(j) sum(i) x.m[i, j];
        }
    }";
    let m = [1e16, 1.0, 1.0, -1e16, 1.0, 1.0, 1.0, 1.0, 1.0];
    let row = |i: usize| (m[3 * i] + m[3 * i + 1]) + m[3 * i + 2];
    let col = |j: usize| (m[j] + m[3 + j]) + m[6 + j];
    let rows = (row(0) + row(1)) + row(2);
    let cols = (col(0) + col(1)) + col(2);
    assert_ne!(rows, cols);
    let o = outputs(src, &[], Precision::F64, &[], &[m.to_vec()], 1);
    assert_same(o[0][0], rows);
    assert_same(o[1][0], cols);
}

// ---------------------------------------------------------------------------------
// Guards

#[test]
fn if_and_select_evaluate_only_the_taken_branch() {
    // z[u] reads a[u] for u < C and b[u - C] otherwise: evaluating the other branch
    // would read a[C..2C) or b[-C..0), outside both buffers.
    let src = "aggregator t<C = 3> {
        input { a[C], b[C] }
        element { a[C], b[C] }
        combine(l, r) { a[i] = r.a[i]; b[i] = r.b[i]; }
        readout inclusive(s, x) -> (y[2 * C], w[2 * C]) {
            let z[u: 2 * C] = if u < C { x.a[u] } else { x.b[u - C] };
            y[u] = z[u];
            w[u] = select(u >= C, x.b[u - C], x.a[u]);
        }
    }";
    let o = outputs(src, &[], Precision::Declared, &[], &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]], 1);
    assert_eq!(o[0], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(o[1], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn data_dependent_select_takes_one_branch_per_element() {
    let src = scalar2("if x.a > 0.0 { log(x.a) } else { x.b }");
    for p in [Precision::Declared, Precision::F64] {
        assert_same(y(&src, p, -1.0, 7.0), 7.0);
        let e = y(&src, p, std::f64::consts::E, 7.0);
        assert!((e - 1.0).abs() < 1e-6);
    }
    // A NaN condition is false: the else branch.
    assert_same(y(&scalar2("select(x.a > 0.0, 1.0, 2.0)"), Precision::Declared, f64::NAN, 0.0), 2.0);
    assert_same(y(&scalar2("select(!(x.a > 0.0), 1.0, 2.0)"), Precision::Declared, f64::NAN, 0.0), 1.0);
}

// ---------------------------------------------------------------------------------
// Functions

fn sample_points() -> Vec<f64> {
    let mut v = vec![0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-3, -1e-3, 3.0, -3.0, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e-30];
    v.extend((0..50).map(|k| (k as f64 - 25.0) * 0.37 + 0.011));
    v.into_iter().map(|x| x as f32 as f64).collect()
}

#[test]
fn function_definitions_in_f32() {
    let f = |name: &str| scalar2(&format!("{name}(x.a)"));
    let (rsqrt, sigmoid, softplus) = (f("rsqrt"), f("sigmoid"), f("softplus"));
    for x in sample_points() {
        let a = x as f32;
        let p = Precision::Declared;
        assert_same(y(&rsqrt, p, x, 0.0), (1.0f32 / a.sqrt()) as f64);
        assert_same(y(&sigmoid, p, x, 0.0), (1.0f32 / (1.0f32 + (-a).exp())) as f64);
        assert_same(y(&softplus, p, x, 0.0), (a.max(0.0) + (1.0f32 + (-a.abs()).exp()).ln()) as f64);
        assert_same(y(&f("exp"), p, x, 0.0), a.exp() as f64);
        assert_same(y(&f("tanh"), p, x, 0.0), a.tanh() as f64);
        assert_same(y(&f("abs"), p, x, 0.0), a.abs() as f64);
        assert_same(y(&f("log"), p, x, 0.0), a.ln() as f64);
        assert_same(y(&f("sqrt"), p, x, 0.0), a.sqrt() as f64);
        assert_same(y(&scalar2("pow(x.a, x.b)"), p, x, 1.5), a.powf(1.5) as f64);
    }
}

#[test]
fn function_definitions_in_f64() {
    let f = |name: &str| scalar2(&format!("{name}(x.a)"));
    let (rsqrt, sigmoid, softplus) = (f("rsqrt"), f("sigmoid"), f("softplus"));
    for x in sample_points() {
        let p = Precision::F64;
        assert_same(y(&rsqrt, p, x, 0.0), 1.0 / x.sqrt());
        assert_same(y(&sigmoid, p, x, 0.0), 1.0 / (1.0 + (-x).exp()));
        assert_same(y(&softplus, p, x, 0.0), x.max(0.0) + (1.0 + (-x.abs()).exp()).ln());
    }
}

#[test]
fn function_edge_values() {
    for p in [Precision::Declared, Precision::F64] {
        let f = |name: &str, x: f64| y(&scalar2(&format!("{name}(x.a)")), p, x, 0.0);
        assert_same(f("rsqrt", 0.0), f64::INFINITY);
        assert!(f("rsqrt", -1.0).is_nan());
        assert_same(f("rsqrt", 4.0), 0.5);
        // softplus neither overflows for large x nor loses large negative x to log(1 + inf).
        assert_same(f("softplus", 1000.0), 1000.0);
        assert!(f("softplus", -1000.0) >= 0.0 && f("softplus", -1000.0) < 1e-300);
        assert!((f("softplus", 0.0) - std::f64::consts::LN_2).abs() < 1e-7);
        assert_same(f("sigmoid", 0.0), 0.5);
        assert_same(f("sigmoid", 1000.0), 1.0);
        assert_same(f("sigmoid", -1000.0), 0.0);
        assert!(f("sigmoid", f64::NAN).is_nan());
        assert!(f("softplus", f64::NAN).is_nan());
    }
}

// ---------------------------------------------------------------------------------
// Constants

#[test]
fn dim_constants_are_computed_in_the_declared_type() {
    let src = "aggregator t<D = 3> {
        input { v: f32, w: f64 }
        element { v: f32, w: f64 }
        combine(l, r) { v = r.v; w = r.w; }
        readout inclusive(s, x) -> (y: f32, z: f64, q: f32, h: f32, k: f32) {
            y = x.v * rsqrt(D);
            z = x.w * rsqrt(D);
            let c = rsqrt(D);
            q = c * x.v;
            h = x.v * (1 / D);
            k = x.v / D;
        }
    }";
    let (v, w) = (0.7f32, 0.7f64);
    let r32 = 1.0f32 / 3.0f32.sqrt();
    let r64 = 1.0f64 / 3.0f64.sqrt();
    let o = one(src, Precision::Declared, &[v as f64, w]);
    assert_same(o[0][0], (v * r32) as f64);
    assert_same(o[1][0], w * r64);
    assert_same(o[2][0], (r32 * v) as f64);
    assert_same(o[3][0], (v * (1.0f32 / 3.0f32)) as f64);
    assert_same(o[4][0], (v / 3.0f32) as f64);
    let o = one(src, Precision::F64, &[v as f64, w]);
    assert_same(o[0][0], v as f64 * r64);
    assert_same(o[1][0], w * r64);
    assert_same(o[2][0], r64 * v as f64);
    assert_same(o[3][0], v as f64 * (1.0 / 3.0));
    assert_same(o[4][0], v as f64 / 3.0);
}

#[test]
fn integer_quotients_are_float_division() {
    let src = "aggregator t<C = 4> {
        input { v }
        element { v }
        combine(l, r) { v = r.v; }
        readout inclusive(s, x) -> (a, b) { a = 1 / C; b = x.v + 3 / 2; }
    }";
    let o = one(src, Precision::Declared, &[1.0]);
    assert_eq!(o[0][0], 0.25);
    assert_eq!(o[1][0], 2.5);
}

#[test]
fn dims_follow_overrides() {
    let src = "aggregator t<D = 3> {
        input { v }
        element { v }
        combine(l, r) { v = r.v; }
        readout inclusive(s, x) -> y { y = x.v * D; }
    }";
    let o = outputs(src, &[("D", 7)], Precision::Declared, &[], &[vec![2.0]], 1);
    assert_eq!(o[0][0], 14.0);
}

// ---------------------------------------------------------------------------------
// Locals

#[test]
fn locals_with_explicit_extents() {
    let src = "aggregator t<C = 2, D = 3> {
        input { a[C, D], b[C, D] }
        element { a[C, D], b[C, D] }
        combine(l, r) { a[i, j] = r.a[i, j]; b[i, j] = r.b[i, j]; }
        readout inclusive(s, x) -> (y[2 * C, D], tot[D]) {
            let z[u: 2 * C, d] = if u < C { x.a[u, d] } else { x.b[u - C, d] };
            y[u, d] = z[u, d];
            tot[d] = sum(u) z[u, d];
        }
    }";
    let a = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0];
    let o = outputs(src, &[], Precision::Declared, &[], &[a.clone(), b.clone()], 1);
    let mut y = a.clone();
    y.extend(&b);
    assert_eq!(o[0], y);
    assert_eq!(o[1], vec![55.0, 77.0, 99.0]);
    // With other dims.
    let o = outputs(src, &[("C", 1), ("D", 2)], Precision::Declared, &[], &[vec![1.0, 2.0], vec![3.0, 4.0]], 1);
    assert_eq!(o[0], vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(o[1], vec![4.0, 6.0]);
}

#[test]
fn locals_are_computed_in_statement_order_and_read_back() {
    let src = "aggregator t<N = 3> {
        input { v[N] }
        element { v[N] }
        combine(l, r) { v[i] = r.v[i]; }
        readout inclusive(s, x) -> (y[N], m) {
            let sq[i] = x.v[i] * x.v[i];
            let tot = sum(i) sq[i];
            let nrm[i: N] = sq[i] / tot;
            y[i] = nrm[i];
            m = max(i) nrm[i];
        }
    }";
    let o = outputs(src, &[], Precision::F64, &[], &[vec![1.0, 2.0, 3.0]], 1);
    assert_eq!(o[0], vec![1.0 / 14.0, 4.0 / 14.0, 9.0 / 14.0]);
    assert_eq!(o[1][0], 9.0 / 14.0);
}

#[test]
fn combine_reads_left_as_the_earlier_operand() {
    let src = "aggregator s { input { v } element { v } combine(l, r) { v = l.v - r.v; } }";
    let o = outputs(src, &[], Precision::F64, &[], &[vec![10.0, 3.0, 2.0]], 3);
    assert_eq!(o[0], vec![10.0, 7.0, 5.0]);
}

#[test]
fn max_and_min_order_negative_zero_below_positive_zero() {
    // IEEE 754-2019 maximum/minimum: the result does not depend on the operand order.
    for p in [Precision::Declared, Precision::F64] {
        for (a, b) in [(-0.0, 0.0), (0.0, -0.0)] {
            assert_same(y(&scalar2("max(x.a, x.b)"), p, a, b), 0.0);
            assert_same(y(&scalar2("min(x.a, x.b)"), p, a, b), -0.0);
        }
        assert_same(y(&scalar2("max(x.a, x.b)"), p, -0.0, -0.0), -0.0);
        assert_same(y(&scalar2("min(x.a, x.b)"), p, 0.0, 0.0), 0.0);
    }
    let src = "aggregator t<N = 3> {
        input { v[N] }
        element { v[N] }
        combine(l, r) { v[i] = r.v[i]; }
        readout inclusive(s, x) -> (hi, lo) { hi = max(i) x.v[i]; lo = min(i) x.v[i]; }
    }";
    for v in [vec![-0.0, 0.0, -0.0], vec![0.0, -0.0, 0.0]] {
        let o = outputs(src, &[], Precision::Declared, &[], &[v], 1);
        assert_same(o[0][0], 0.0);
        assert_same(o[1][0], -0.0);
    }
}

#[test]
fn integer_literals_adapt_to_the_float_context() {
    for p in [Precision::Declared, Precision::F64] {
        assert_same(y(&scalar2("max(0, x.a)"), p, -2.5, 0.0), 0.0);
        assert_same(y(&scalar2("max(x.a, 0)"), p, 2.5, 0.0), 2.5);
        assert_same(y(&scalar2("pow(2, x.a)"), p, 3.0, 0.0), 8.0);
        assert_same(y(&scalar2("select(x.a > 0.0, 1, 2) * x.b"), p, 1.0, 0.25), 0.25);
        assert_same(y(&scalar2("select(x.a > 0.0, 1, 2) * x.b"), p, -1.0, 0.25), 0.5);
    }
    // A float literal bound to a scalar local is an f32 value in Declared precision.
    let src = "aggregator t {
        input { a }
        element { a }
        combine(l, r) { a = r.a; }
        readout inclusive(s, x) -> y { let c = 0.1; y = c * x.a; }
    }";
    assert_same(one(src, Precision::Declared, &[3.0])[0][0], (0.1f32 * 3.0f32) as f64);
    assert_same(one(src, Precision::F64, &[3.0])[0][0], 0.1 * 3.0);
}

#[test]
fn lift_combine_and_readout_each_round_in_declared_precision() {
    // cumsum of values that are f32-representable: every partial sum is an f32 sum.
    let src = "aggregator t {
        input { v }
        element { s }
        lift(x) { s = x.v * 3.0; }
        combine(l, r) { s = l.s + r.s; }
        readout inclusive(st, x) -> y { y = st.s / 7.0; }
    }";
    let v = [0.1f32, 0.2, 0.3, 1e-3, 5.0];
    let ins = vec![v.iter().map(|&x| x as f64).collect::<Vec<_>>()];
    let o = outputs(src, &[], Precision::Declared, &[], &ins, v.len());
    let mut acc: Option<f32> = None;
    for (t, &x) in v.iter().enumerate() {
        let e = x * 3.0;
        acc = Some(match acc {
            None => e,
            Some(a) => a + e,
        });
        assert_same(o[0][t], (acc.unwrap() / 7.0) as f64);
    }
}
