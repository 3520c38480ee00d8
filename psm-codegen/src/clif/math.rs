//! The transcendental functions generated code calls: host functions that compute
//! exactly what the interpreter (psm-ir `interp/float.rs`) computes, through the same
//! Rust `f32`/`f64` methods, so JIT and interpreter agree bit for bit. Everything
//! else (`sqrt`, `rsqrt = 1 / sqrt`, `abs`, `min`, `max`, and the arithmetic of
//! `sigmoid` and `softplus` around their `exp`/`log`) is emitted inline.
//!
//! Those methods are the C math library's functions (`f32::exp` is `expf`, `f32::ln`
//! is `logf`, `f32::tanh` is `tanhf`, `f32::powf` is `powf`, and the f64 ones `exp`,
//! `log`, `tanh`, `pow`), reached through a wrapper that only jumps on. Generated code
//! calls the C functions themselves — measured 1–2 ns faster per call than through the
//! wrapper — once a self-check on this host has found them equal, bit for bit, to the
//! Rust methods on a few thousand arguments (special values, subnormals, and spreads
//! over the useful ranges); else it calls the wrappers ([`direct_libm`]).

use cranelift_codegen::ir::{types, AbiParam, Signature, Type};
use cranelift_codegen::isa::CallConv;

/// A host function generated code may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum MathFn {
    ExpF32,
    ExpF64,
    LogF32,
    LogF64,
    TanhF32,
    TanhF64,
    PowF32,
    PowF64,
}

impl MathFn {
    pub const ALL: [MathFn; 8] = [
        MathFn::ExpF32,
        MathFn::ExpF64,
        MathFn::LogF32,
        MathFn::LogF64,
        MathFn::TanhF32,
        MathFn::TanhF64,
        MathFn::PowF32,
        MathFn::PowF64,
    ];

    /// The symbol name (also how the CLIF text names the callee).
    pub fn name(self) -> &'static str {
        match self {
            MathFn::ExpF32 => "psm_expf",
            MathFn::ExpF64 => "psm_exp",
            MathFn::LogF32 => "psm_logf",
            MathFn::LogF64 => "psm_log",
            MathFn::TanhF32 => "psm_tanhf",
            MathFn::TanhF64 => "psm_tanh",
            MathFn::PowF32 => "psm_powf",
            MathFn::PowF64 => "psm_pow",
        }
    }

    fn ty(self) -> Type {
        match self {
            MathFn::ExpF32 | MathFn::LogF32 | MathFn::TanhF32 | MathFn::PowF32 => types::F32,
            _ => types::F64,
        }
    }

    fn arity(self) -> usize {
        match self {
            MathFn::PowF32 | MathFn::PowF64 => 2,
            _ => 1,
        }
    }

    pub fn signature(self, call_conv: CallConv) -> Signature {
        let mut sig = Signature::new(call_conv);
        for _ in 0..self.arity() {
            sig.params.push(AbiParam::new(self.ty()));
        }
        sig.returns.push(AbiParam::new(self.ty()));
        sig
    }

    /// The host implementation: the C function when [`direct_libm`] holds, else the
    /// wrapper that calls the Rust method.
    pub fn address(self) -> *const u8 {
        if direct_libm() {
            self.libm()
        } else {
            self.wrapper()
        }
    }

    fn wrapper(self) -> *const u8 {
        match self {
            MathFn::ExpF32 => psm_expf as *const u8,
            MathFn::ExpF64 => psm_exp as *const u8,
            MathFn::LogF32 => psm_logf as *const u8,
            MathFn::LogF64 => psm_log as *const u8,
            MathFn::TanhF32 => psm_tanhf as *const u8,
            MathFn::TanhF64 => psm_tanh as *const u8,
            MathFn::PowF32 => psm_powf as *const u8,
            MathFn::PowF64 => psm_pow as *const u8,
        }
    }

    fn libm(self) -> *const u8 {
        match self {
            MathFn::ExpF32 => libm::expf as *const u8,
            MathFn::ExpF64 => libm::exp as *const u8,
            MathFn::LogF32 => libm::logf as *const u8,
            MathFn::LogF64 => libm::log as *const u8,
            MathFn::TanhF32 => libm::tanhf as *const u8,
            MathFn::TanhF64 => libm::tanh as *const u8,
            MathFn::PowF32 => libm::powf as *const u8,
            MathFn::PowF64 => libm::pow as *const u8,
        }
    }
}

/// The C math library, which the Rust float methods call.
mod libm {
    extern "C" {
        pub fn expf(x: f32) -> f32;
        pub fn exp(x: f64) -> f64;
        pub fn logf(x: f32) -> f32;
        pub fn log(x: f64) -> f64;
        pub fn tanhf(x: f32) -> f32;
        pub fn tanh(x: f64) -> f64;
        pub fn powf(x: f32, y: f32) -> f32;
        pub fn pow(x: f64, y: f64) -> f64;
    }
}

extern "C" fn psm_expf(x: f32) -> f32 {
    x.exp()
}
extern "C" fn psm_exp(x: f64) -> f64 {
    x.exp()
}
extern "C" fn psm_logf(x: f32) -> f32 {
    x.ln()
}
extern "C" fn psm_log(x: f64) -> f64 {
    x.ln()
}
extern "C" fn psm_tanhf(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn psm_tanh(x: f64) -> f64 {
    x.tanh()
}
extern "C" fn psm_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}
extern "C" fn psm_pow(x: f64, y: f64) -> f64 {
    x.powf(y)
}

/// Whether the C math functions are, on this host, the Rust methods the interpreter
/// calls: equal bit for bit (any NaN equal to any NaN) on every probe argument. Checked
/// once per process. `PSM_NO_DIRECT_LIBM` (set to anything) turns direct calls off.
pub(crate) fn direct_libm() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var_os("PSM_NO_DIRECT_LIBM").is_none() && libm_matches_rust())
}

fn libm_matches_rust() -> bool {
    use std::hint::black_box;
    let same32 = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let same64 = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let probes = probe_values();
    let mut ok = true;
    for (k, &x) in probes.iter().enumerate() {
        let y = probes[(k * 7 + 3) % probes.len()];
        let (xf, yf) = (black_box(x as f32), black_box(y as f32));
        let (xd, yd) = (black_box(x), black_box(y));
        // SAFETY: the C math functions are total over floats.
        unsafe {
            ok &= same32(libm::expf(xf), xf.exp());
            ok &= same32(libm::logf(xf), xf.ln());
            ok &= same32(libm::tanhf(xf), xf.tanh());
            ok &= same32(libm::powf(xf, yf), xf.powf(yf));
            ok &= same64(libm::exp(xd), xd.exp());
            ok &= same64(libm::log(xd), xd.ln());
            ok &= same64(libm::tanh(xd), xd.tanh());
            ok &= same64(libm::pow(xd, yd), xd.powf(yd));
        }
    }
    ok
}

/// Special values, subnormals, powers of two and spreads over the ranges where the
/// functions do their work.
fn probe_values() -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        1e-310,
        -1e-310,
        1e-40,
        -1e-45,
        f32::MAX as f64,
        f32::MIN_POSITIVE as f64,
        88.72,
        -103.9,
        709.78,
        -745.1,
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for k in 0..1500 {
        let r = next();
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        v.push(match k % 5 {
            0 => unit * 40.0 - 20.0,
            1 => unit * 4.0 - 2.0,
            2 => (unit * 200.0 - 100.0).exp2(),
            3 => f64::from_bits(r),
            _ => f32::from_bits(r as u32) as f64,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    /// On the hosts psm is developed on the C functions are the Rust methods: generated
    /// code calls them directly (a silent fallback to the wrappers would cost speed).
    #[test]
    fn the_c_math_functions_are_the_rust_methods() {
        assert!(super::libm_matches_rust());
    }
}
