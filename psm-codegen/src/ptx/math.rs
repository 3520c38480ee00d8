//! The transcendental functions. f64 `exp`, `log`, `tanh`, `pow` are device functions
//! of the module (`.func`, with register parameters) without approximation
//! instructions; f32 `tanh` and `pow` call them on the exactly widened argument and
//! round the result once to f32 (`cvt.rn.f32.f64`): correctly rounded except when the
//! exact value lies within about 2^-26 f32 ulp of a rounding boundary.
//!
//! f32 `exp` and `log` (and so `sigmoid` and `softplus`) are f32 sequences emitted
//! inline at each use ([`exp_f32`], [`log_f32`]) around the hardware's
//! `ex2.approx.f32` / `lg2.approx.f32` (PTX ISA 9.1, "Floating Point Instructions": ex2
//! within 2 ulp of the correctly rounded result over the full range, subnormals
//! supported; lg2 within 2^-22 absolute on (0.5, 2) and 2^-22 relative elsewhere).
//! Through the f64 routines (about 30 f64 operations a call) log-cumsum-exp was bound
//! by arithmetic, 0.11× the copy bandwidth on an H200 with four `exp` and a `log` per
//! step; `exp_f32` is nine f32 instructions and one `ex2` (12 in SASS). Inline, not
//! `.func`: ptxas 13.0 keeps a `.func` a real call (CALL.REL, arguments in fixed
//! registers, nothing scheduled across it), and as calls log-cumsum-exp took 1.47 ms
//! at 2^28 (1.40 ms inline). Bounds (the
//! interpreter stays the oracle; the forms' tolerance of 1e-5·log2 T relative,
//! psm-runtime's `accuracy`, is 9× above the worst below):
//!
//! * f32 `exp`: t = RN(x·L) with L = log2 e rounded to f32, δ = x·log2 e − t
//!   (x·L − t exactly by one `fma`, plus x·(log2 e − L)), e^x = 2^t·2^δ ≈
//!   ex2(t)·(1 + δ·ln2): |δ| ≤ 2^-18 for |t| < 128, so the dropped (δ·ln2)²/2 is below
//!   2^-37 relative; ex2's 2.5 ulp from the exact 2^t plus the final rounding: **within
//!   3 ulp** of 2^t's binade (subnormal results in units of the least subnormal), so
//!   5.5 ulp of the result where it falls into the binade below (t an integer, δ < 0).
//!   With a correctly rounded ex2 in its place the sequence is within 1.5 ulp (a unit
//!   test, on the host). t ≥ 128 (exactly the f32 x whose correctly rounded e^x
//!   overflows; a unit test tries the f32 values around that edge) or t = −inf (x below
//!   −2.36e38, whose product overflows) return ex2(t): +inf and +0. NaN → NaN.
//! * f32 `log`: near 1 (|x − 1| < 1/4, x − 1 exact) log(1 + f) by its Taylor series to
//!   f^11 in Horner form (the tail is below 2^-25 relative), f32 `fma` and `mul` only,
//!   which the host reproduces bit for bit: a unit test tries every such f32 x, **within
//!   2 ulp** (1.552 the worst); elsewhere ln2·lg2(x): within 2^-22·ln2 absolute on
//!   (0.5, 2), where |log x| ≥ 0.223, so **within 12 ulp** (11.1 + the product's
//!   rounding), and within 2^-22 + 2^-24 relative (**5 ulp**) outside it. Special
//!   values from lg2: x < 0 or NaN → NaN, ±0 → −inf, +inf → +inf.
//!
//! The f64 routines use explicit `fma.rn` (part of the routine, deterministic; user
//! arithmetic is never contracted):
//!
//! * `psm_exp`: x = k·ln2 + r with k = rint(x·log2 e) and ln2 in two parts (the high
//!   part has 32 significant bits, so k·ln2_hi is exact), |r| ≤ 0.35; e^r by its
//!   Taylor polynomial of degree 13 (truncation below 2^-57 relative) in Horner form;
//!   scaled by 2^k in two exact-or-once-rounded steps (subnormal results rounded
//!   once). NaN → NaN, x > 709.78 → +inf, x < -745.14 → +0.
//! * `psm_log`: x = 2^e·m with m in [√½, √2), log m = 2·atanh(s), s = (m−1)/(m+1),
//!   |s| ≤ 0.1716, by the odd series to s^23 (truncation below 2^-60); result
//!   e·ln2_hi + (e·ln2_lo + log m). Subnormals scaled by 2^54 first. x < 0 or NaN →
//!   NaN, ±0 → −inf, +inf → +inf.
//! * `psm_tanh`: |x| > 22 → ±1, |x| < 2^-28 → x, |x| < 2^-10 → x − x³/3 + 2x⁵/15; else
//!   with y = 2|x|, expm1(y) = (e^y − 1)·(y / log e^y) (Kahan's correction of the
//!   cancellation in e^y − 1), tanh |x| = expm1(y) / (expm1(y) + 2), sign of x.
//! * `psm_pow`: C99 `pow` special cases (y = 0 → 1 and x = 1 → 1 even with NaN,
//!   (−1)^±inf = 1, a negative finite x with a finite non-integer y → NaN, odd integer
//!   y keeping the sign of x and of ±0), otherwise exp(y·log|x|). In f64 the rounding of
//!   y·log|x| adds a relative error up to |y·log|x||·2^-53 (large only for results
//!   near the overflow or underflow thresholds); in f32 it is negligible.
//!
//! Measured on an H200 (psm-codegen/tests/ptx_gpu.rs, `device_math_accuracy`: 2^20
//! arguments over each function's range plus special values; 2026-11-28, the same
//! with the f32 sequences inline and as `.func`): f32 `exp` within 2.494 ulp, `log`
//! 5.051 ulp, `sigmoid` 4.000 ulp and `softplus` 2.000 (of the interpreter's formula
//! around correctly rounded exp and log), `tanh` and `pow` 0.500 ulp of the f64 value;
//! f64 `exp` within 1 ulp, `log` within 2 ulp and `tanh` within 4 ulp of the C
//! library's, f64 `pow` within 940 ulp (the rounding of y·log|x| above).

use std::fmt::Write;

use super::emit::{Class, Emitter, Reg};

/// A math device function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum MathFn {
    Exp,
    Log,
    Tanh,
    Pow,
}

impl MathFn {
    pub fn name(self) -> &'static str {
        match self {
            MathFn::Exp => "psm_exp",
            MathFn::Log => "psm_log",
            MathFn::Tanh => "psm_tanh",
            MathFn::Pow => "psm_pow",
        }
    }

    /// The functions this one calls.
    fn deps(self) -> &'static [MathFn] {
        match self {
            MathFn::Exp | MathFn::Log => &[],
            MathFn::Tanh | MathFn::Pow => &[MathFn::Exp, MathFn::Log],
        }
    }

    fn text(self) -> String {
        match self {
            MathFn::Exp => exp(),
            MathFn::Log => log(),
            MathFn::Tanh => tanh(),
            MathFn::Pow => pow(),
        }
    }
}

/// The definitions of `used` and of what they call, callees first.
pub(crate) fn definitions(used: &std::collections::BTreeSet<MathFn>) -> String {
    let mut all: std::collections::BTreeSet<MathFn> = used.clone();
    for f in used {
        all.extend(f.deps());
    }
    // Exp and Log (no callees) sort before Tanh and Pow.
    all.into_iter().map(|f| f.text()).collect::<Vec<_>>().join("\n")
}

fn d(x: f64) -> String {
    format!("0d{:016X}", x.to_bits())
}

fn f(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

/// `acc = c[n]; acc = fma(acc, x, c[k])` for k = n-1 down to 0, each instruction (without
/// its `;`) given to `ins`, in `ty` with the coefficients written by `imm`.
fn horner(ins: &mut dyn FnMut(String), ty: &str, imm: fn(f64) -> String, acc: &str, x: &str, coeffs: &[f64]) {
    let n = coeffs.len() - 1;
    ins(format!("mov.{ty} {acc}, {}", imm(coeffs[n])));
    for &c in coeffs[..n].iter().rev() {
        ins(format!("fma.rn.{ty} {acc}, {acc}, {x}, {}", imm(c)));
    }
}

/// [`horner`] in f64 into a function's text.
fn horner_f64(out: &mut String, acc: &str, x: &str, coeffs: &[f64]) {
    horner(&mut |line| { let _ = writeln!(out, "\t{line};"); }, "f64", d, acc, x, coeffs);
}

const LN2_HI: u64 = 0x3FE6_2E42_FEE0_0000;
const LN2_LO: u64 = 0x3DEA_39EF_3579_3C76;

fn exp() -> String {
    let mut o = String::new();
    o.push_str("// e^x in f64 (see the module documentation of psm-codegen's ptx::math)\n");
    o.push_str(".func (.reg .f64 %ret) psm_exp (.reg .f64 %x)\n{\n");
    o.push_str("\t.reg .pred %p<4>;\n\t.reg .b32 %r<4>;\n\t.reg .b64 %rd<6>;\n\t.reg .f64 %fd<10>;\n");
    let _ = writeln!(o, "\tsetp.nan.f64 %p1, %x, %x;");
    let _ = writeln!(o, "\t@%p1 bra $exp_nan;");
    let _ = writeln!(o, "\tsetp.gt.f64 %p2, %x, {};\t// above ln(DBL_MAX): +inf", d(709.782712893384));
    let _ = writeln!(o, "\t@%p2 bra $exp_inf;");
    let _ = writeln!(o, "\tsetp.lt.f64 %p3, %x, {};\t// below ln(2^-1075): +0", d(-745.1332191019412));
    let _ = writeln!(o, "\t@%p3 bra $exp_zero;");
    let _ = writeln!(o, "\tmul.rn.f64 %fd1, %x, {};\t// x*log2(e)", d(std::f64::consts::LOG2_E));
    let _ = writeln!(o, "\tcvt.rni.f64.f64 %fd2, %fd1;\t// k");
    let _ = writeln!(o, "\tneg.f64 %fd3, %fd2;");
    let _ = writeln!(o, "\tfma.rn.f64 %fd4, %fd3, 0d{LN2_HI:016X}, %x;\t// x - k*ln2_hi (exact)");
    let _ = writeln!(o, "\tfma.rn.f64 %fd5, %fd3, 0d{LN2_LO:016X}, %fd4;\t// r = x - k*ln2");
    let mut coeffs = Vec::new();
    let mut fact = 1.0f64;
    for i in 0..=13 {
        if i > 0 {
            fact *= i as f64;
        }
        coeffs.push(1.0 / fact);
    }
    o.push_str("\t// e^r by its Taylor polynomial of degree 13\n");
    horner_f64(&mut o, "%fd6", "%fd5", &coeffs);
    o.push_str("\t// times 2^k = 2^k1 * 2^k2, k1 = k >> 1, each factor a normal number\n");
    let _ = writeln!(o, "\tcvt.rni.s32.f64 %r1, %fd2;");
    let _ = writeln!(o, "\tshr.s32 %r2, %r1, 1;");
    let _ = writeln!(o, "\tsub.s32 %r3, %r1, %r2;");
    let _ = writeln!(o, "\tcvt.s64.s32 %rd1, %r2;");
    let _ = writeln!(o, "\tadd.s64 %rd1, %rd1, 1023;");
    let _ = writeln!(o, "\tshl.b64 %rd2, %rd1, 52;");
    let _ = writeln!(o, "\tmov.b64 %fd7, %rd2;");
    let _ = writeln!(o, "\tcvt.s64.s32 %rd3, %r3;");
    let _ = writeln!(o, "\tadd.s64 %rd3, %rd3, 1023;");
    let _ = writeln!(o, "\tshl.b64 %rd4, %rd3, 52;");
    let _ = writeln!(o, "\tmov.b64 %fd8, %rd4;");
    let _ = writeln!(o, "\tmul.rn.f64 %fd9, %fd6, %fd7;");
    let _ = writeln!(o, "\tmul.rn.f64 %ret, %fd9, %fd8;");
    let _ = writeln!(o, "\tret.uni;");
    let _ = writeln!(o, "$exp_nan:\n\tadd.rn.f64 %ret, %x, %x;\n\tret.uni;");
    let _ = writeln!(o, "$exp_inf:\n\tmov.f64 %ret, {};\n\tret.uni;", d(f64::INFINITY));
    let _ = writeln!(o, "$exp_zero:\n\tmov.f64 %ret, 0d0000000000000000;\n\tret.uni;");
    o.push_str("}\n");
    o
}

/// log2 e rounded to f32 (L), and the f32 nearest log2 e − L.
fn log2e_f32() -> (f32, f32) {
    let log2e = std::f64::consts::LOG2_E;
    (log2e as f32, (log2e - (log2e as f32) as f64) as f32)
}

/// f32 `log` takes the series below where |x − 1| is under this.
const NEAR_ONE: f32 = 0.25;

/// log(1 + f) = f · Σ (−f)^k / (k + 1), k = 0..=10: the coefficients of the sum.
fn log1p_series() -> Vec<f64> {
    (0..=10).map(|k| (if k % 2 == 0 { 1.0 } else { -1.0 }) / (k + 1) as f64).collect()
}

/// e^x of the f32 register `x`, emitted inline (see the module documentation).
pub(crate) fn exp_f32(e: &mut Emitter, x: Reg) -> Reg {
    let (l, l_lo) = log2e_f32();
    let [t, two_t, neg_t, rest, delta, c, fixed, r] = [(); 8].map(|_| e.reg(Class::F32));
    let big = e.reg(Class::Pred);
    e.comment(format!("e^{x} in f32 around ex2.approx (psm-codegen's ptx::math)"));
    e.ins_c(format!("mul.rn.f32 {t}, {x}, {}", f(l)), "t = x*L");
    e.ins(format!("ex2.approx.f32 {two_t}, {t}"));
    e.ins(format!("neg.f32 {neg_t}, {t}"));
    e.ins_c(format!("fma.rn.f32 {rest}, {x}, {}, {neg_t}", f(l)), "x*L - t (exact)");
    e.ins_c(format!("fma.rn.f32 {delta}, {x}, {}, {rest}", f(l_lo)), "delta = x*log2(e) - t");
    e.ins_c(format!("mul.rn.f32 {c}, {delta}, {}", f(std::f32::consts::LN_2)), "2^delta - 1 to first order");
    e.ins_c(format!("fma.rn.f32 {fixed}, {two_t}, {c}, {two_t}"), "2^t * 2^delta");
    e.ins_c(format!("setp.ge.f32 {big}, {t}, {}", f(128.0)), "e^x overflows (exactly there, over every f32 x)");
    e.ins_c(format!("setp.eq.or.f32 {big}, {t}, {}, {big}", f(f32::NEG_INFINITY)), "x*L overflowed to -inf");
    e.ins_c(format!("selp.f32 {r}, {two_t}, {fixed}, {big}"), "there ex2's +inf or +0, as is");
    r
}

/// ln x of the f32 register `x`, emitted inline (see the module documentation).
pub(crate) fn log_f32(e: &mut Emitter, x: Reg) -> Reg {
    let [m1, dist, lg, acc, r] = [(); 5].map(|_| e.reg(Class::F32));
    let near = e.reg(Class::Pred);
    let (near_one, done) = (e.label("log_near_one"), e.label("log_done"));
    e.comment(format!("ln {x} in f32 around lg2.approx (psm-codegen's ptx::math)"));
    e.ins_c(format!("sub.rn.f32 {m1}, {x}, {}", f(1.0)), "f = x - 1 (exact near 1)");
    e.ins(format!("abs.f32 {dist}, {m1}"));
    e.ins(format!("setp.lt.f32 {near}, {dist}, {}", f(NEAR_ONE)));
    e.ins(format!("@{near} bra {near_one}"));
    e.ins(format!("lg2.approx.f32 {lg}, {x}"));
    e.ins(format!("mul.rn.f32 {r}, {lg}, {}", f(std::f32::consts::LN_2)));
    e.ins(format!("bra {done}"));
    e.place(&near_one);
    e.comment("f * sum (-f)^k / (k + 1), k = 0..10");
    horner(&mut |line| e.ins(line), "f32", |c| f(c as f32), &acc.to_string(), &m1.to_string(), &log1p_series());
    e.ins(format!("mul.rn.f32 {r}, {acc}, {m1}"));
    e.place(&done);
    r
}

fn log() -> String {
    let mut o = String::new();
    o.push_str("// ln x in f64 (see the module documentation of psm-codegen's ptx::math)\n");
    o.push_str(".func (.reg .f64 %ret) psm_log (.reg .f64 %x)\n{\n");
    o.push_str("\t.reg .pred %p<8>;\n\t.reg .b32 %r<4>;\n\t.reg .b64 %rd<8>;\n\t.reg .f64 %fd<16>;\n");
    let _ = writeln!(o, "\tsetp.nan.f64 %p1, %x, %x;");
    let _ = writeln!(o, "\t@%p1 bra $log_nan;");
    let _ = writeln!(o, "\tsetp.lt.f64 %p2, %x, 0d0000000000000000;");
    let _ = writeln!(o, "\t@%p2 bra $log_negative;");
    let _ = writeln!(o, "\tsetp.eq.f64 %p3, %x, 0d0000000000000000;");
    let _ = writeln!(o, "\t@%p3 bra $log_zero;");
    let _ = writeln!(o, "\tsetp.eq.f64 %p4, %x, {};", d(f64::INFINITY));
    let _ = writeln!(o, "\t@%p4 bra $log_nan;\t// +inf + +inf = +inf");
    o.push_str("\t// subnormals: scale by 2^54\n");
    let _ = writeln!(o, "\tsetp.lt.f64 %p5, %x, {};", d(f64::MIN_POSITIVE));
    let _ = writeln!(o, "\tmul.rn.f64 %fd1, %x, {};", d(2f64.powi(54)));
    let _ = writeln!(o, "\tselp.f64 %fd2, %fd1, %x, %p5;");
    let _ = writeln!(o, "\tselp.s64 %rd1, -54, 0, %p5;");
    o.push_str("\t// x = 2^e * m, m in [1, 2)\n");
    let _ = writeln!(o, "\tmov.b64 %rd2, %fd2;");
    let _ = writeln!(o, "\tshr.u64 %rd3, %rd2, 52;");
    let _ = writeln!(o, "\tadd.s64 %rd3, %rd3, %rd1;");
    let _ = writeln!(o, "\tadd.s64 %rd3, %rd3, -1023;\t// e");
    let _ = writeln!(o, "\tand.b64 %rd4, %rd2, 0x000FFFFFFFFFFFFF;");
    let _ = writeln!(o, "\tor.b64 %rd4, %rd4, 0x3FF0000000000000;");
    let _ = writeln!(o, "\tmov.b64 %fd3, %rd4;\t// m");
    o.push_str("\t// m in [sqrt(1/2), sqrt(2)): halve m above sqrt(2)\n");
    let _ = writeln!(o, "\tsetp.gt.f64 %p6, %fd3, {};", d(std::f64::consts::SQRT_2));
    let _ = writeln!(o, "\tmul.rn.f64 %fd4, %fd3, 0d3FE0000000000000;");
    let _ = writeln!(o, "\tselp.f64 %fd3, %fd4, %fd3, %p6;");
    let _ = writeln!(o, "\tselp.s64 %rd5, 1, 0, %p6;");
    let _ = writeln!(o, "\tadd.s64 %rd3, %rd3, %rd5;");
    let _ = writeln!(o, "\tcvt.rn.f64.s64 %fd5, %rd3;");
    o.push_str("\t// s = (m - 1) / (m + 1), log m = 2s + 2s*z*R(z), z = s^2\n");
    let _ = writeln!(o, "\tsub.rn.f64 %fd6, %fd3, 0d3FF0000000000000;\t// f = m - 1 (exact)");
    let _ = writeln!(o, "\tadd.rn.f64 %fd7, %fd6, 0d4000000000000000;");
    let _ = writeln!(o, "\tdiv.rn.f64 %fd8, %fd6, %fd7;\t// s");
    let _ = writeln!(o, "\tmul.rn.f64 %fd9, %fd8, %fd8;\t// z");
    let coeffs: Vec<f64> = (1..=11).map(|k| 1.0 / (2 * k + 1) as f64).collect();
    horner_f64(&mut o, "%fd10", "%fd9", &coeffs);
    let _ = writeln!(o, "\tmul.rn.f64 %fd10, %fd10, %fd9;\t// z*R(z)");
    let _ = writeln!(o, "\tadd.rn.f64 %fd11, %fd8, %fd8;\t// 2s");
    let _ = writeln!(o, "\tfma.rn.f64 %fd12, %fd11, %fd10, %fd11;\t// log m");
    let _ = writeln!(o, "\tfma.rn.f64 %fd13, %fd5, 0d{LN2_LO:016X}, %fd12;");
    let _ = writeln!(o, "\tfma.rn.f64 %ret, %fd5, 0d{LN2_HI:016X}, %fd13;\t// e*ln2_hi exact");
    let _ = writeln!(o, "\tret.uni;");
    let _ = writeln!(o, "$log_nan:\n\tadd.rn.f64 %ret, %x, %x;\n\tret.uni;");
    let _ = writeln!(o, "$log_negative:\n\tmov.f64 %ret, {};\n\tret.uni;", d(f64::NAN));
    let _ = writeln!(o, "$log_zero:\n\tmov.f64 %ret, {};\n\tret.uni;", d(f64::NEG_INFINITY));
    o.push_str("}\n");
    o
}

fn tanh() -> String {
    let mut o = String::new();
    o.push_str("// tanh x in f64 (see the module documentation of psm-codegen's ptx::math)\n");
    o.push_str(".func (.reg .f64 %ret) psm_tanh (.reg .f64 %x)\n{\n");
    o.push_str("\t.reg .pred %p<5>;\n\t.reg .f64 %fd<12>;\n");
    let _ = writeln!(o, "\tsetp.nan.f64 %p1, %x, %x;");
    let _ = writeln!(o, "\t@%p1 bra $tanh_small;\t// NaN: x");
    let _ = writeln!(o, "\tabs.f64 %fd1, %x;");
    let _ = writeln!(o, "\tsetp.gt.f64 %p2, %fd1, {};", d(22.0));
    let _ = writeln!(o, "\t@%p2 bra $tanh_one;");
    let _ = writeln!(o, "\tsetp.lt.f64 %p3, %fd1, {};", d(2f64.powi(-28)));
    let _ = writeln!(o, "\t@%p3 bra $tanh_small;");
    let _ = writeln!(o, "\tsetp.lt.f64 %p4, %fd1, {};", d(2f64.powi(-10)));
    let _ = writeln!(o, "\t@%p4 bra $tanh_series;");
    let _ = writeln!(o, "\tadd.rn.f64 %fd2, %fd1, %fd1;\t// y = 2|x|");
    let _ = writeln!(o, "\tcall.uni (%fd3), psm_exp, (%fd2);\t// u = e^y");
    let _ = writeln!(o, "\tsub.rn.f64 %fd4, %fd3, 0d3FF0000000000000;\t// u - 1");
    let _ = writeln!(o, "\tcall.uni (%fd5), psm_log, (%fd3);\t// log u");
    let _ = writeln!(o, "\tdiv.rn.f64 %fd6, %fd2, %fd5;");
    let _ = writeln!(o, "\tmul.rn.f64 %fd7, %fd4, %fd6;\t// expm1(y) = (u - 1)*(y / log u)");
    let _ = writeln!(o, "\tadd.rn.f64 %fd8, %fd7, 0d4000000000000000;");
    let _ = writeln!(o, "\tdiv.rn.f64 %fd9, %fd7, %fd8;\t// tanh |x|");
    let _ = writeln!(o, "\tcopysign.f64 %ret, %x, %fd9;");
    let _ = writeln!(o, "\tret.uni;");
    let _ = writeln!(o, "$tanh_one:\n\tcopysign.f64 %ret, %x, 0d3FF0000000000000;\n\tret.uni;");
    let _ = writeln!(o, "$tanh_small:\n\tmov.f64 %ret, %x;\n\tret.uni;");
    o.push_str("$tanh_series:\t// x - x^3/3 + 2x^5/15 (the next term is below 2^-60 relative)\n");
    let _ = writeln!(o, "\tmul.rn.f64 %fd10, %x, %x;");
    let _ = writeln!(o, "\tfma.rn.f64 %fd11, %fd10, {}, {};", d(2.0 / 15.0), d(-1.0 / 3.0));
    let _ = writeln!(o, "\tmul.rn.f64 %fd10, %fd10, %x;");
    let _ = writeln!(o, "\tfma.rn.f64 %ret, %fd10, %fd11, %x;");
    let _ = writeln!(o, "\tret.uni;");
    o.push_str("}\n");
    o
}

fn pow() -> String {
    let mut o = String::new();
    o.push_str("// x^y in f64 (see the module documentation of psm-codegen's ptx::math)\n");
    o.push_str(".func (.reg .f64 %ret) psm_pow (.reg .f64 %x, .reg .f64 %y)\n{\n");
    o.push_str("\t.reg .pred %p<16>;\n\t.reg .b64 %rd<4>;\n\t.reg .f64 %fd<10>;\n");
    let inf = d(f64::INFINITY);
    let _ = writeln!(o, "\tsetp.eq.f64 %p1, %y, 0d0000000000000000;");
    let _ = writeln!(o, "\tsetp.eq.f64 %p2, %x, 0d3FF0000000000000;");
    let _ = writeln!(o, "\tor.pred %p1, %p1, %p2;");
    let _ = writeln!(o, "\t@%p1 bra $pow_one;\t// y = +-0 or x = 1, even with NaN");
    let _ = writeln!(o, "\tsetp.nan.f64 %p3, %x, %y;");
    let _ = writeln!(o, "\t@%p3 bra $pow_nan;");
    let _ = writeln!(o, "\tabs.f64 %fd1, %x;");
    let _ = writeln!(o, "\tabs.f64 %fd2, %y;");
    let _ = writeln!(o, "\tsetp.eq.f64 %p4, %fd2, {inf};\t// y = +-inf");
    let _ = writeln!(o, "\tsetp.eq.f64 %p5, %fd1, 0d3FF0000000000000;");
    let _ = writeln!(o, "\tand.pred %p5, %p5, %p4;");
    let _ = writeln!(o, "\t@%p5 bra $pow_one;\t// (-1)^+-inf");
    o.push_str("\t// y integer (every |y| >= 2^53 is, and even); odd\n");
    let _ = writeln!(o, "\tcvt.rzi.f64.f64 %fd3, %y;");
    let _ = writeln!(o, "\tsetp.eq.f64 %p6, %fd3, %y;\t// integer (inf passes this test; excluded next)");
    let _ = writeln!(o, "\tnot.pred %p7, %p4;");
    let _ = writeln!(o, "\tand.pred %p6, %p6, %p7;");
    let _ = writeln!(o, "\tsetp.lt.f64 %p8, %fd2, {};", d(2f64.powi(53)));
    let _ = writeln!(o, "\tcvt.rzi.s64.f64 %rd1, %y;");
    let _ = writeln!(o, "\tand.b64 %rd2, %rd1, 1;");
    let _ = writeln!(o, "\tsetp.ne.s64 %p9, %rd2, 0;");
    let _ = writeln!(o, "\tand.pred %p9, %p9, %p8;");
    let _ = writeln!(o, "\tand.pred %p9, %p9, %p6;\t// y odd integer");
    o.push_str("\t// a finite negative x with a finite non-integer y: NaN\n");
    let _ = writeln!(o, "\tsetp.lt.f64 %p10, %x, 0d0000000000000000;");
    let _ = writeln!(o, "\tsetp.ne.f64 %p11, %fd1, {inf};");
    let _ = writeln!(o, "\tand.pred %p10, %p10, %p11;");
    let _ = writeln!(o, "\tor.pred %p12, %p6, %p4;");
    let _ = writeln!(o, "\tnot.pred %p12, %p12;");
    let _ = writeln!(o, "\tand.pred %p10, %p10, %p12;");
    let _ = writeln!(o, "\t@%p10 bra $pow_invalid;");
    o.push_str("\t// exp(y*log|x|), negated for a negative x (sign bit, so -0 too) and odd y\n");
    let _ = writeln!(o, "\tcall.uni (%fd4), psm_log, (%fd1);");
    let _ = writeln!(o, "\tmul.rn.f64 %fd5, %y, %fd4;");
    let _ = writeln!(o, "\tcall.uni (%fd6), psm_exp, (%fd5);");
    let _ = writeln!(o, "\tmov.b64 %rd3, %x;");
    let _ = writeln!(o, "\tsetp.lt.s64 %p13, %rd3, 0;");
    let _ = writeln!(o, "\tand.pred %p13, %p13, %p9;");
    let _ = writeln!(o, "\tneg.f64 %fd7, %fd6;");
    let _ = writeln!(o, "\tselp.f64 %ret, %fd7, %fd6, %p13;");
    let _ = writeln!(o, "\tret.uni;");
    let _ = writeln!(o, "$pow_one:\n\tmov.f64 %ret, 0d3FF0000000000000;\n\tret.uni;");
    let _ = writeln!(o, "$pow_nan:\n\tadd.rn.f64 %ret, %x, %y;\n\tret.uni;");
    let _ = writeln!(o, "$pow_invalid:\n\tmov.f64 %ret, {};\n\tret.uni;", d(f64::NAN));
    o.push_str("}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit in the last place of the f32 nearest `x` (the least subnormal at least).
    fn ulp(x: f64) -> f64 {
        let a = (x as f32).abs();
        (f32::from_bits(a.to_bits() + 1) as f64 - a as f64).max(f32::from_bits(1) as f64)
    }

    /// [`log_f32`]'s series path in host f32 arithmetic (`mul_add` is `fma.rn.f32`).
    fn log_near_one(x: f32) -> f32 {
        let f = x - 1.0;
        let coeffs: Vec<f32> = log1p_series().iter().map(|&c| c as f32).collect();
        let acc = coeffs[..coeffs.len() - 1].iter().rev().fold(coeffs[coeffs.len() - 1], |acc, &c| acc.mul_add(f, c));
        acc * f
    }

    #[test]
    fn log_near_one_is_within_2_ulp_on_every_argument() {
        let (lo, hi) = ((1.0 - NEAR_ONE).to_bits() + 1, (1.0 + NEAR_ONE).to_bits());
        let mut worst = (0.0f64, 0.0f32);
        for bits in lo..hi {
            let x = f32::from_bits(bits);
            let exact = (x as f64).ln();
            let err = if exact == 0.0 { (log_near_one(x) as f64).abs() } else { (log_near_one(x) as f64 - exact).abs() / ulp(exact) };
            if err > worst.0 {
                worst = (err, x);
            }
        }
        println!("log near 1: max {:.3} ulp (argument {:e})", worst.0, worst.1);
        assert!(worst.0 <= 2.0, "{} ulp at {:e}", worst.0, worst.1);
    }

    /// [`exp_f32`] with ex2 replaced by the correctly rounded 2^t: the rest of the
    /// sequence adds at most 1 ulp (1.5 where the result falls into a lower binade).
    #[test]
    fn exp_correction_leaves_only_the_ex2_error() {
        let (l, l_lo) = log2e_f32();
        let mut worst = (0.0f64, 0.0f32);
        // Every 4099th f32 from −87.3 to 88.7 (e^x a normal number).
        let bits = (0..88.7f32.to_bits()).chain(0x8000_0000..=(-87.3f32).to_bits());
        for x in bits.step_by(4099).map(f32::from_bits) {
            let t = x * l;
            let two_t = (t as f64).exp2() as f32;
            let delta = x.mul_add(l_lo, x.mul_add(l, -t));
            let found = two_t.mul_add(delta * std::f32::consts::LN_2, two_t) as f64;
            let exact = (x as f64).exp();
            let err = (found - exact).abs() / ulp(exact);
            if err > worst.0 {
                worst = (err, x);
            }
        }
        println!("exp with a correctly rounded ex2: max {:.3} ulp (argument {:e})", worst.0, worst.1);
        assert!(worst.0 <= 1.5, "{} ulp at {:e}", worst.0, worst.1);
    }

    /// t = x·L rounds to 128 or more exactly where the correctly rounded e^x overflows.
    #[test]
    fn exp_overflows_exactly_where_t_reaches_128() {
        let (l, _) = log2e_f32();
        let edge = 88.72284f32.to_bits();
        for bits in edge - 4096..edge + 4096 {
            let x = f32::from_bits(bits);
            assert_eq!(x * l >= 128.0, ((x as f64).exp() as f32).is_infinite(), "{x:e}");
        }
    }
}
