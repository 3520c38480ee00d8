//! What every backend's reductions (`sum(i) e`, `prod`, `max`, `min` over f32, f64 or
//! i32 values) fold with: the interpreter's left fold from the operation's identity,
//! each step one binary operation or built-in call, so that a backend's fold is the
//! interpreter's, bit for bit.

use psm_ir::ir::{BinaryOp, Func, ReduceOp, Scalar};

/// The fold's first accumulator: an integer, or a float.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Int(i64),
    Float(f64),
}

/// One step of the fold, `acc = step(acc, term)`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Bin(BinaryOp),
    Call(Func),
}

/// The identity `op` starts from over values of `ty`.
pub(crate) fn init(op: ReduceOp, ty: Scalar) -> Init {
    match (op, ty) {
        (ReduceOp::Sum, Scalar::I32) => Init::Int(0),
        (ReduceOp::Prod, Scalar::I32) => Init::Int(1),
        (ReduceOp::Max, Scalar::I32) => Init::Int(i32::MIN.into()),
        (ReduceOp::Min, Scalar::I32) => Init::Int(i32::MAX.into()),
        // -0.0 + x = x for every x, including +0.0 and -0.0.
        (ReduceOp::Sum, _) => Init::Float(-0.0),
        (ReduceOp::Prod, _) => Init::Float(1.0),
        // maximum(-inf, x) = x, minimum(+inf, x) = x, NaN included.
        (ReduceOp::Max, _) => Init::Float(f64::NEG_INFINITY),
        (ReduceOp::Min, _) => Init::Float(f64::INFINITY),
    }
}

/// The step of `op`.
pub(crate) fn step(op: ReduceOp) -> Step {
    match op {
        ReduceOp::Sum => Step::Bin(BinaryOp::Add),
        ReduceOp::Prod => Step::Bin(BinaryOp::Mul),
        ReduceOp::Max => Step::Call(Func::Max),
        ReduceOp::Min => Step::Call(Func::Min),
    }
}
