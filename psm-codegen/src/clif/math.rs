//! The transcendental functions generated code calls: host functions that compute
//! exactly what the interpreter (psm-ir `interp/float.rs`) computes, through the same
//! Rust `f32`/`f64` methods, so JIT and interpreter agree bit for bit. Everything
//! else (`sqrt`, `rsqrt = 1 / sqrt`, `abs`, `min`, `max`, and the arithmetic of
//! `sigmoid` and `softplus` around their `exp`/`log`) is emitted inline.

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

    /// The host implementation.
    pub fn address(self) -> *const u8 {
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
