//! The shared-exp rewrite (`psm_ir::opt::shared_exp`, applied by `opt::for_backend`):
//! which library operators it applies to, the IR it writes (snapshots), and that the
//! rewritten bodies compute bit for bit what the originals compute in the interpreter
//! (every NaN the same), over special values (±0, ±inf, NaN, subnormals, the largest
//! f32, exp's overflow and underflow edges) mixed with random ones, in both precisions.

use psm_ir::interp::{Evaluator, FloatDomain, Precision};
use psm_ir::ir::{Aggregator, Module, Role};
use psm_ir::valid::{DimOverride, Info};
use psm_testgen::algebra::Rng;

/// The f32 values the rewrite's proof distinguishes, and the neighbours of exp's edges.
const SPECIAL: [f32; 16] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    1.0e-45,
    -1.0e-40,
    f32::MIN_POSITIVE,
    f32::MAX,
    f32::MIN,
    88.72284,
    -103.97208,
    1.0e30,
    -2.5,
];

/// A special value half of the time, else a random f32 of magnitude up to 2^7 (where
/// exp's results are normal numbers) or, one time in four, any f32 bit pattern. Seeded
/// (psm-testgen's splitmix64): a failure reproduces.
fn value(rng: &mut Rng) -> f64 {
    let r = rng.next_u64();
    let v = match r % 8 {
        0..=3 => SPECIAL[(r >> 8) as usize % SPECIAL.len()],
        4 => f32::from_bits((r >> 32) as u32),
        _ => ((r >> 11) as f64 / (1u64 << 53) as f64 * 256.0 - 128.0) as f32,
    };
    v as f64
}

/// The aggregators of a source, validated with every dim at most 2 (the interpreter
/// runs thousands of combines; the rewrite does not depend on sizes).
fn small(src: &str) -> Vec<(Aggregator, Info)> {
    let module = psm_ir::front::dsl::parse(src).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "op.psm", src)));
    module
        .aggregators
        .into_iter()
        .map(|agg| {
            let dims: Vec<DimOverride> = agg
                .dims
                .iter()
                .map(|(_, d)| DimOverride { name: d.name.clone(), value: d.default.map_or(2, |v| v.min(2)) })
                .collect();
            let info = psm_ir::valid::validate_aggregator(&agg, &dims).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "op.psm", src)));
            (agg, info)
        })
        .collect()
}

fn library() -> Vec<(String, Aggregator, Info)> {
    psm_testgen::library()
        .into_iter()
        .flat_map(|(file, src)| small(&src).into_iter().map(move |(agg, info)| (file.clone(), agg, info)))
        .collect()
}

fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Combines `trials` random pairs of elements (and random params) with the original and
/// the rewritten aggregator, in both precisions, and asserts bit-identical results.
fn assert_combine_unchanged(name: &str, agg: &Aggregator, info: &Info, trials: usize) {
    let (rewritten, rewritten_info) = psm_ir::opt::for_backend(agg, info).unwrap_or_else(|| panic!("{name}: not rewritten"));
    let (before, after) = (Evaluator::new(agg, info), Evaluator::new(&rewritten, &rewritten_info));
    let mut rng = Rng::new(0x5EED ^ name.len() as u64);
    let mut draw = |role: Role| -> Vec<Vec<f64>> {
        agg.tensors_of(role).map(|t| (0..info.len(t)).map(|_| value(&mut rng)).collect()).collect()
    };
    for trial in 0..trials {
        let (params, l, r) = (draw(Role::Param), draw(Role::Element), draw(Role::Element));
        for precision in [Precision::Declared, Precision::F64] {
            let mut d = FloatDomain::new(precision);
            let want = before.combine(&mut d, &params, &l, &r).expect("the original combines");
            let got = after.combine(&mut d, &params, &l, &r).expect("the rewritten combines");
            for (field, (w, g)) in want.iter().zip(&got).enumerate() {
                for (k, (&w, &g)) in w.iter().zip(g).enumerate() {
                    assert!(
                        same_bits(w, g),
                        "{name} trial {trial} {precision:?}: field {field}[{k}] {w:e} (original) vs {g:e} (rewritten)\n l = {l:?}\n r = {r:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn applies_to_the_operators_that_rescale_by_a_running_max() {
    let rewritten: Vec<String> =
        library().iter().filter(|(_, agg, info)| psm_ir::opt::for_backend(agg, info).is_some()).map(|(_, agg, _)| agg.name.clone()).collect();
    assert_eq!(rewritten, ["logcumsumexp", "mlstm", "online_softmax"]);
}

#[test]
fn rewritten_library_combines_are_bit_identical() {
    for (_, agg, info) in library() {
        if psm_ir::opt::for_backend(&agg, &info).is_some() {
            assert_combine_unchanged(&agg.name, &agg, &info, 4000);
        }
    }
}

/// The rescaling factors themselves as outputs, so that no later arithmetic hides a
/// wrong one (in log-cumsum-exp `a.l * NaN` makes `l` NaN whatever the other factor
/// is): `X = +inf` with `Y` finite gives `exp(X - M)` NaN but `exp(Y - M)` 0, which one
/// `exp(a + b)` alone would get wrong.
const FACTORS: &str = "
aggregator factors {
    input   { m, ca, cb, s }
    element { m, ca, cb, s }
    combine(a, b) {
        let mx = max(a.m + a.s, b.m);
        m  = mx;
        ca = exp(a.m + a.s - mx);
        cb = exp(b.m - mx);
        s  = exp(b.m - max(a.m + a.s, b.m)) + b.s;
    }
}
";

/// `FACTORS` in f64: the `-inf` test compares with f64's lowest finite value.
fn factors_f64() -> String {
    FACTORS.replace("{ m, ca, cb, s }", "{ m: f64, ca: f64, cb: f64, s: f64 }")
}

/// Both factors over every pair (X, Y) of `values`, then random elements.
fn assert_factors_unchanged(src: &str, values: &[f64]) {
    let (agg, info) = small(src).pop().unwrap();
    let (rewritten, rewritten_info) = psm_ir::opt::for_backend(&agg, &info).expect("the factors are rewritten");
    let (before, after) = (Evaluator::new(&agg, &info), Evaluator::new(&rewritten, &rewritten_info));
    for precision in [Precision::Declared, Precision::F64] {
        let mut d = FloatDomain::new(precision);
        for &x in values {
            for &y in values {
                let (l, r) = ([x, 0.5, 0.5, 0.0].map(|v| vec![v]), [y, 0.5, 0.5, 0.0].map(|v| vec![v]));
                let want = before.combine(&mut d, &[], &l, &r).unwrap();
                let got = after.combine(&mut d, &[], &l, &r).unwrap();
                for (w, g) in want.iter().zip(&got) {
                    assert!(same_bits(w[0], g[0]), "{precision:?} X = {x:e}, Y = {y:e}: {want:?} vs {got:?}");
                }
            }
        }
    }
    assert_combine_unchanged(&agg.name, &agg, &info, 20000);
}

#[test]
fn every_pair_of_special_values_keeps_both_factors() {
    let f32_values: Vec<f64> = SPECIAL.iter().map(|&v| v as f64).collect();
    assert_factors_unchanged(FACTORS, &f32_values);
    let f64_values: Vec<f64> = f32_values.iter().copied().chain([f64::MAX, f64::MIN, 5e-324, -1e300]).collect();
    assert_factors_unchanged(&factors_f64(), &f64_values);
}

#[test]
fn rewritten_ir() {
    for name in ["logcumsumexp", "online_softmax", "mlstm"] {
        let (agg, info) = small(&psm_testgen::library_source(name)).pop().unwrap();
        let (rewritten, rewritten_info) = psm_ir::opt::for_backend(&agg, &info).unwrap();
        let text = psm_ir::print::module(&Module { aggregators: vec![rewritten] }, Some(&[rewritten_info]));
        insta::assert_snapshot!(format!("shared_exp_{name}"), text);
    }
    for (name, src) in [("factors", FACTORS.to_string()), ("factors_f64", factors_f64())] {
        let (agg, info) = small(&src).pop().unwrap();
        let (rewritten, rewritten_info) = psm_ir::opt::for_backend(&agg, &info).unwrap();
        let text = psm_ir::print::module(&Module { aggregators: vec![rewritten] }, Some(&[rewritten_info]));
        insta::assert_snapshot!(format!("shared_exp_{name}"), text);
    }
}
