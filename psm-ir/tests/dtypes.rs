//! The 16-bit storage dtypes (`bf16`, `f16`): the rounding of `Dtype::round_to_storage`
//! against an independent reference (exact arithmetic on f32 values held in f64), at
//! ties, NaN, infinities, overflow and subnormals; and the interpreter's reading of
//! them: inputs hold values of their format, arithmetic stays f32, outputs are rounded
//! when written, in both precisions.

use psm_ir::derive::{run, Form};
use psm_ir::interp::{FloatDomain, Precision};
use psm_ir::ir::Dtype;

/// A binary floating-point format: mantissa bits (without the hidden bit) and the
/// exponent range of its normal numbers.
struct Format {
    mantissa: i32,
    min_exp: i32,
    max_exp: i32,
}

const BF16: Format = Format { mantissa: 7, min_exp: -126, max_exp: 127 };
const F16: Format = Format { mantissa: 10, min_exp: -14, max_exp: 15 };

fn format(d: Dtype) -> &'static Format {
    match d {
        Dtype::BF16 => &BF16,
        Dtype::F16 => &F16,
        _ => unreachable!("16-bit dtypes only"),
    }
}

/// Round-to-nearest-even of the f32 value `x` to `fmt`, computed exactly in f64 (every
/// step below is exact for an f32 input): the quantum of x's binade (or of the
/// subnormal range), the quotient's integer part, and the tie broken towards even.
fn reference(x: f32, fmt: &Format) -> f64 {
    let x = x as f64;
    if x.is_nan() {
        return f64::NAN;
    }
    if x.is_infinite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    let binade = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let quantum = 2f64.powi(binade.max(fmt.min_exp) - fmt.mantissa);
    let q = a / quantum;
    let n = q.floor();
    let rest = q - n;
    let n = if rest > 0.5 || (rest == 0.5 && n % 2.0 == 1.0) { n + 1.0 } else { n };
    let r = n * quantum;
    let r = if r >= 2f64.powi(fmt.max_exp + 1) { f64::INFINITY } else { r };
    r.copysign(x)
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn check(d: Dtype, x: f32) {
    let got = d.round_to_storage(x as f64);
    let want = reference(x, format(d));
    assert!(same(got, want), "{} of {x:e} ({:#010x}): {got:e}, expected {want:e}", d.name(), x.to_bits());
}

#[test]
fn rounding_matches_the_exact_reference_over_a_sweep_of_f32_bit_patterns() {
    // Every 4099th bit pattern (a prime stride, so every mantissa position varies):
    // about a million values of both signs, every binade, NaNs, subnormals.
    for d in [Dtype::BF16, Dtype::F16] {
        let mut bits = 0u64;
        while bits <= u32::MAX as u64 {
            check(d, f32::from_bits(bits as u32));
            bits += 4099;
        }
    }
}

#[test]
fn ties_round_to_even() {
    // bf16 keeps the upper 16 bits of an f32: a low half of exactly 0x8000 is a tie.
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x3F80_8000) as f64), 1.0); // 1 + 2^-8: even is 1.0
    let up = f32::from_bits(0x3F81_0000) as f64; // 1 + 2^-7
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x3F81_8000) as f64), f32::from_bits(0x3F82_0000) as f64); // odd → up
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x3F80_8001) as f64), up); // just above the tie
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x3F80_7FFF) as f64), 1.0); // just below
    // f16 has a 10-bit mantissa: 1 + 2^-11 is a tie between 1 and 1 + 2^-10.
    assert_eq!(Dtype::F16.round_to_storage(1.0 + 2f64.powi(-11)), 1.0);
    assert_eq!(Dtype::F16.round_to_storage(1.0 + 3.0 * 2f64.powi(-11)), 1.0 + 2.0 * 2f64.powi(-10));
    assert_eq!(Dtype::F16.round_to_storage(-(1.0 + 3.0 * 2f64.powi(-11))), -(1.0 + 2.0 * 2f64.powi(-10)));
    for x in [1.0 + 2f32.powi(-8), 3.0 + 2f32.powi(-7), 1.0 + 2f32.powi(-11), 2049.0, 2051.0] {
        check(Dtype::BF16, x);
        check(Dtype::F16, x);
    }
}

#[test]
fn nan_stays_nan_and_infinities_stay_infinite() {
    for d in [Dtype::BF16, Dtype::F16] {
        assert!(d.round_to_storage(f64::NAN).is_nan());
        assert!(d.round_to_storage(f32::from_bits(0x7F80_0001) as f64).is_nan(), "a NaN with only a low payload bit");
        assert_eq!(d.round_to_storage(f64::INFINITY), f64::INFINITY);
        assert_eq!(d.round_to_storage(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert!(d.round_to_storage(-0.0).is_sign_negative());
    }
}

#[test]
fn overflow_rounds_to_infinity_at_the_halfway_point() {
    // f16: the largest finite is 65504; 65519.996 rounds down, 65520 (halfway to 2^16) to inf.
    assert_eq!(Dtype::F16.round_to_storage(65504.0), 65504.0);
    assert_eq!(Dtype::F16.round_to_storage(65519.99), 65504.0);
    assert_eq!(Dtype::F16.round_to_storage(65520.0), f64::INFINITY);
    assert_eq!(Dtype::F16.round_to_storage(-1e6), f64::NEG_INFINITY);
    // bf16: the largest f32 lies above the halfway point between bf16's largest and 2^128.
    assert_eq!(Dtype::BF16.round_to_storage(f32::MAX as f64), f64::INFINITY);
    let bf16_max = f32::from_bits(0x7F7F_0000) as f64;
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x7F7F_7FFF) as f64), bf16_max);
}

#[test]
fn subnormals_are_kept_and_rounded_to_even() {
    // f16's smallest subnormal is 2^-24; half of it is a tie that rounds to 0 (even),
    // three halves round to 2 · 2^-24.
    let tiny = 2f64.powi(-24);
    assert_eq!(Dtype::F16.round_to_storage(tiny), tiny);
    assert_eq!(Dtype::F16.round_to_storage(tiny / 2.0), 0.0);
    assert_eq!(Dtype::F16.round_to_storage(1.5 * tiny), 2.0 * tiny);
    assert_eq!(Dtype::F16.round_to_storage(2.5 * tiny), 2.0 * tiny);
    assert_eq!(Dtype::F16.round_to_storage(tiny * 0.500_001), tiny);
    // The largest f16 subnormal rounds up into the smallest normal 2^-14 near the top.
    assert_eq!(Dtype::F16.round_to_storage(2f64.powi(-14) - tiny / 4.0), 2f64.powi(-14));
    // bf16 subnormals are f32 subnormals with the low 16 bits rounded off.
    let s = f32::from_bits(0x0000_8000) as f64; // a tie between 0 and 0x0001_0000
    assert_eq!(Dtype::BF16.round_to_storage(s), 0.0);
    assert_eq!(Dtype::BF16.round_to_storage(f32::from_bits(0x0001_8000) as f64), f32::from_bits(0x0002_0000) as f64);
    for bits in [1u32, 0x7FFF, 0x8000, 0x8001, 0x1_7FFF, 0x7F_FFFF, 0x8000_0001, 0x807F_FFFF] {
        check(Dtype::BF16, f32::from_bits(bits));
        check(Dtype::F16, f32::from_bits(bits));
    }
}

#[test]
fn every_value_of_a_format_is_kept_exactly() {
    for bits in 0..=u16::MAX {
        let b = half::bf16::from_bits(bits).to_f64();
        let h = half::f16::from_bits(bits).to_f64();
        assert!(same(Dtype::BF16.round_to_storage(b), b), "bf16 {bits:#06x}");
        assert!(same(Dtype::F16.round_to_storage(h), h), "f16 {bits:#06x}");
    }
}

// ---- the interpreter ------------------------------------------------------------------

const SCALE: &str = "aggregator scale {
    input   { a: bf16, b: f16 }
    element { s }
    lift(x) { s = x.a; }
    combine(l, r) { s = l.s + r.s; }
    readout inclusive(st, x) -> (y: bf16, z: f16, w) { y = st.s * x.b; z = st.s * x.b; w = st.s * x.b; }
}";

fn outputs(p: Precision, a: &[f64], b: &[f64]) -> Vec<Vec<f64>> {
    let m = psm_ir::front::dsl::parse(SCALE).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "s.psm", SCALE)));
    let info = psm_ir::valid::validate(&m, &[]).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "s.psm", SCALE)));
    run(&m.aggregators[0], &info[0], FloatDomain::new(p), Form::Fold, &[], &[a.to_vec(), b.to_vec()], a.len())
        .unwrap()
        .outputs
}

#[test]
fn inputs_hold_values_of_their_format_and_outputs_are_rounded_when_written() {
    // a = 1 + 2^-9 is not a bf16 (it rounds to 1); b = 1 + 2^-11 is not an f16 (it
    // rounds to 1, even). The sums are f32: 1, 2, 3 + 2^-7 (a third input exact in bf16).
    let a = [1.0 + 2f64.powi(-9), 1.0, 1.0 + 2f64.powi(-7)];
    let b = [1.0 + 2f64.powi(-11), 1.0 + 2f64.powi(-10), 1.0];
    for p in [Precision::Declared, Precision::F64] {
        let out = outputs(p, &a, &b);
        let (y, z, w) = (&out[0], &out[1], &out[2]);
        // Step 0: s = 1, b = 1 → 1 everywhere.
        assert_eq!((y[0], z[0], w[0]), (1.0, 1.0, 1.0));
        // Step 1: s = 2, b = 1 + 2^-10 → 2 + 2^-9, exact in f16 and f32; bf16 rounds
        // the tie-free value to 2 (its quantum at 2 is 2^-6).
        assert_eq!(w[1], 2.0 + 2f64.powi(-9));
        assert_eq!(z[1], 2.0 + 2f64.powi(-9));
        assert_eq!(y[1], 2.0);
        // Step 2: s = 3 + 2^-7 in f32; bf16 at [2, 4) has quantum 2^-6, so 3 + 2^-7 is
        // a tie between 3 and 3 + 2^-6: even is 3. f16 keeps it (quantum 2^-9).
        assert_eq!(w[2], 3.0 + 2f64.powi(-7));
        assert_eq!(y[2], 3.0);
        assert_eq!(z[2], 3.0 + 2f64.powi(-7));
    }
}

#[test]
fn nan_and_infinity_flow_through_16_bit_storage() {
    let out = outputs(Precision::Declared, &[f64::NAN, f64::INFINITY], &[1.0, 1.0]);
    assert!(out[0][0].is_nan() && out[1][0].is_nan());
    assert!(out[0][1].is_nan(), "NaN + inf is NaN");
    // 1e5 is finite in bf16 and f32 but overflows f16.
    let out = outputs(Precision::Declared, &[1e5], &[1.0]);
    assert_eq!(out[1][0], f64::INFINITY);
    assert_eq!(out[0][0], Dtype::BF16.round_to_storage(1e5));
    assert_eq!(out[2][0], Dtype::BF16.round_to_storage(1e5), "the f32 output holds the bf16 input's value");
}

#[test]
fn a_16_bit_input_lifts_by_default_into_the_f32_field_of_its_name() {
    let src = "aggregator cumsum16 { input { v: f16 } element { v } combine(l, r) { v = l.v + r.v; } }";
    let m = psm_ir::front::dsl::parse(src).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "c.psm", src)));
    let info = psm_ir::valid::validate(&m, &[]).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, "c.psm", src)));
    let out = run(&m.aggregators[0], &info[0], FloatDomain::new(Precision::Declared), Form::Fold, &[], &[vec![0.1, 0.2]], 2).unwrap();
    let (a, b) = (half::f16::from_f64(0.1).to_f32(), half::f16::from_f64(0.2).to_f32());
    assert_eq!(out.outputs[0], vec![a as f64, (a + b) as f64]);
}
