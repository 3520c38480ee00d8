//! Numbers: the interpreter's f64 oracle and its declared-precision mode.

use super::Domain;
use crate::ir::{BinaryOp, Dtype, Func, Scalar, UnaryOp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Every float computed in f64, whatever the declared types: the oracle that
    /// tolerances are measured against.
    F64,
    /// Every operation rounded to its declared type (f32 arithmetic for f32 values):
    /// what a backend computes, bit for bit for a fixed bracketing.
    Declared,
}

/// Plain numbers. Every value is held as an f64; i32 and bool values are exact integers.
#[derive(Debug, Clone, Copy)]
pub struct FloatDomain {
    pub precision: Precision,
}

impl FloatDomain {
    pub fn new(precision: Precision) -> Self {
        FloatDomain { precision }
    }
    fn single(&self, ty: Scalar) -> bool {
        ty == Scalar::F32 && self.precision == Precision::Declared
    }
}

/// IEEE 754-2019 `maximum`: NaN if either operand is NaN, and -0 < +0, so that the
/// result never depends on the order of the operands (what Cranelift's `fmax`,
/// WebAssembly's `f32.max` and LLVM's `llvm.maximum` compute).
pub(crate) fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        // Only ±0 compare equal with different bits: +0 wins.
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if b > a {
        b
    } else {
        a
    }
}

/// IEEE 754-2019 `minimum`: NaN if either operand is NaN, and -0 < +0.
pub(crate) fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == b {
        // Only ±0 compare equal with different bits: -0 wins.
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if b < a {
        b
    } else {
        a
    }
}

macro_rules! float_fn {
    ($t:ty, $f:expr, $args:expr) => {{
        let a = $args[0] as $t;
        let b = $args.get(1).map_or(0.0, |&b| b as $t);
        let r: $t = match $f {
            Func::Exp => a.exp(),
            Func::Log => a.ln(),
            Func::Sqrt => a.sqrt(),
            Func::Rsqrt => 1.0 / a.sqrt(),
            Func::Tanh => a.tanh(),
            Func::Sigmoid => 1.0 / (1.0 + (-a).exp()),
            Func::Softplus => (if a > 0.0 { a } else { 0.0 }) + (1.0 + (-a.abs()).exp()).ln(),
            Func::Abs => a.abs(),
            Func::Pow => a.powf(b),
            Func::Max => nan_max(a as f64, b as f64) as $t,
            Func::Min => nan_min(a as f64, b as f64) as $t,
        };
        r as f64
    }};
}

impl Domain for FloatDomain {
    type V = f64;
    type Error = std::convert::Infallible;

    fn constant(&mut self, value: f64, ty: Scalar) -> f64 {
        match ty {
            _ if self.single(ty) => value as f32 as f64,
            // An exactly computed integer becomes an i32 value the way i32 arithmetic
            // would produce it: wrapped (`N * N` with N = 65536 is 0), never saturated.
            Scalar::I32 => value as i64 as i32 as f64,
            _ => value,
        }
    }

    fn unary(&mut self, op: UnaryOp, ty: Scalar, a: &f64) -> Result<f64, Self::Error> {
        Ok(match (op, ty) {
            (UnaryOp::Not, _) => (*a == 0.0) as i32 as f64,
            (UnaryOp::Neg, Scalar::I32) => (*a as i32).wrapping_neg() as f64,
            (UnaryOp::Neg, _) => -*a,
        })
    }

    fn binary(&mut self, op: BinaryOp, ty: Scalar, a: &f64, b: &f64) -> Result<f64, Self::Error> {
        let (a, b) = (*a, *b);
        if op.is_comparison() || op.is_logic() {
            let r = match op {
                BinaryOp::Lt => a < b,
                BinaryOp::Le => a <= b,
                BinaryOp::Gt => a > b,
                BinaryOp::Ge => a >= b,
                BinaryOp::Eq => a == b,
                BinaryOp::Ne => a != b,
                BinaryOp::And => a != 0.0 && b != 0.0,
                _ => a != 0.0 || b != 0.0,
            };
            return Ok(r as i32 as f64);
        }
        Ok(if ty == Scalar::I32 {
            let (x, y) = (a as i32, b as i32);
            (match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                _ => x.checked_div(y).unwrap_or(0),
            }) as f64
        } else if self.single(ty) {
            let (x, y) = (a as f32, b as f32);
            (match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                _ => x / y,
            }) as f64
        } else {
            match op {
                BinaryOp::Add => a + b,
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                _ => a / b,
            }
        })
    }

    fn call(&mut self, func: Func, ty: Scalar, args: &[f64]) -> Result<f64, Self::Error> {
        Ok(match ty {
            Scalar::I32 => {
                let a = args[0] as i32;
                let b = args.get(1).map_or(0, |&b| b as i32);
                (match func {
                    Func::Abs => a.wrapping_abs(),
                    Func::Min => a.min(b),
                    _ => a.max(b),
                }) as f64
            }
            _ if self.single(ty) => float_fn!(f32, func, args),
            _ => float_fn!(f64, func, args),
        })
    }

    fn truth(&mut self, cond: &f64) -> Result<bool, Self::Error> {
        Ok(*cond != 0.0)
    }

    fn store(&mut self, value: f64, dtype: Dtype) -> f64 {
        dtype.round_to_storage(value)
    }
}
