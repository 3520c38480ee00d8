//! Cranelift backend: the CLIF text of an aggregator's functions ([`clif_text`]) and
//! their native code for the host ([`compile`]), per the CPU ABI of the crate
//! documentation.
//!
//! The generated code reproduces the reference interpreter in
//! `FloatDomain::new(Precision::Declared)` bit for bit: the same operations in the same
//! order and type (no fused multiply-add, no reassociation), reductions as sequential
//! left folds, `min`/`max` as IEEE 754-2019 minimum/maximum (Cranelift's `fmin`/`fmax`),
//! only the taken branch of `if`/`select` evaluated, and `exp`, `log`, `tanh`, `pow`
//! computed by the very functions the interpreter's Rust methods call. Vector code
//! (`vector`) computes each entry in its own lane with that same operation sequence.
//!
//! The element and scratch layouts ([`Layout`]) and integer expressions come from the
//! crate's backend-neutral `layout` and `index` modules. Modules: `lower` (bodies →
//! CLIF), `vector` (a statement's innermost loop in SIMD lanes), `math` (host
//! functions), `storage` (bf16/f16 loads and stores), `funcs` (the five functions and
//! the fused loop), `text` (CLIF text),
//! `jit` (native code).

mod funcs;
mod jit;
mod lower;
mod math;
mod storage;
mod text;
mod vector;

pub use jit::{compile, CombineFn, Compiled, IdentityFn, LiftFn, ReadoutFn, ScanFn};
pub use crate::layout::Layout;
pub use text::clif_text;

/// `scan` flag: `state` holds a prefix on entry.
pub const HAS_STATE: u32 = 1;
/// `scan` flag: write each step's readout.
pub const WRITE_OUTPUTS: u32 = 2;
/// `scan` flag: run the steps from t1 − 1 down to t0.
pub const REVERSE: u32 = 4;
/// `scan` flag: the caller does not need `state` on exit (see the crate
/// documentation): prefix fields that nothing reads need not be computed.
pub const NO_STATE_OUT: u32 = 8;

/// Why code could not be generated. Never the user's fault for a validated aggregator:
/// the host is unsupported, or Cranelift rejected or failed to compile a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodegenError {
    /// Cranelift does not support the host (or the host is not 64-bit).
    Host(String),
    /// Cranelift's message for one function (`lift`, `combine`, `readout`,
    /// `identity` or `scan`), e.g. a verifier error or an allocation failure.
    Function { function: String, message: String },
    /// Cranelift's message for the module as a whole (symbol resolution, finalizing).
    Module(String),
}

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodegenError::Host(m) => write!(f, "the host is not supported by the Cranelift backend: {m}"),
            CodegenError::Function { function, message } => {
                write!(f, "Cranelift failed on function `{function}`: {message}")
            }
            CodegenError::Module(m) => write!(f, "Cranelift failed to link the compiled functions: {m}"),
        }
    }
}

impl std::error::Error for CodegenError {}
