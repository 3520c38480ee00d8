//! Errors: [`RunError`] for everything a run, a stream or a compilation (for the CPU or
//! a CUDA device) can reject, and [`CompileError`] for source text that does not parse or validate.
//!
//! Every check on user data happens before any kernel runs: a run either returns an
//! error and touches nothing, or runs to completion. NaN and infinities are data, never
//! errors.

use std::fmt;

use psm_ir::ir::Dtype;
use psm_ir::Diagnostic;

use crate::forms::Form;

/// Which kind of named tensor an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Per-step data (`input { ... }`), shaped `[batch..., T, field dims...]`.
    Input,
    /// A runtime tensor shared by every step (`param { ... }`), shaped as declared.
    Param,
    /// A field of an initial state (an element per sequence), `[batch..., field dims...]`.
    State,
    /// A caller-supplied output buffer, shaped `[batch..., T, field dims...]`.
    Output,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::Input => "input",
            Slot::Param => "param",
            Slot::State => "state field",
            Slot::Output => "output",
        }
    }
    fn with_article(self) -> &'static str {
        match self {
            Slot::Input => "an input",
            Slot::Param => "a param",
            Slot::State => "a state field",
            Slot::Output => "an output",
        }
    }
}

/// Why a run (or a stream push, or a compilation for a backend) was rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// A name the aggregator does not declare for that slot.
    Unknown {
        slot: Slot,
        name: String,
        /// The names declared for that slot.
        declared: Vec<String>,
        /// The slot the name does belong to, when it is declared elsewhere (an input
        /// given as a param, ...).
        belongs_to: Option<Slot>,
    },
    /// A declared tensor that was not given.
    Missing { slot: Slot, name: String },
    /// The same name given twice (an extra tensor).
    Duplicate { slot: Slot, name: String },
    /// Data of another element type than the declaration's (no implicit conversion).
    WrongDtype { slot: Slot, name: String, expected: Dtype, found: Dtype },
    /// Data with the wrong number of values.
    WrongLength {
        slot: Slot,
        name: String,
        expected: usize,
        found: usize,
        /// The expected shape, e.g. `[2, 100, 16]` (batch `[2]`, T = 100, field `[16]`).
        shape: Vec<usize>,
    },
    /// Two things that must have the same batch shape do not (an initial state and the
    /// inputs, a stream and the data pushed into it).
    BatchMismatch { what: String, expected: Vec<usize>, found: Vec<usize> },
    /// A buffer whose size does not fit in memory (`usize` overflow of batch × T × field).
    TooLarge { what: String },
    /// The form rebrackets the scan, and the operator is not associative: it would
    /// compute a different model. `valid` lists the forms that may run.
    FormNotValid { form: Form, aggregator: String, valid: Vec<&'static str> },
    /// An array view that is not row-major and contiguous: psm reads and writes
    /// buffers in place and never copies behind the caller's back.
    NotContiguous { what: String },
    /// An option out of range (chunk 0, 0 threads, prefill of a reversed scan, ...).
    InvalidOption { option: &'static str, message: String },
    /// The backend could not compile the aggregator.
    Codegen { aggregator: String, message: String },
    /// The thread pool for `threads` could not be built.
    ThreadPool { message: String },
    /// The CUDA backend cannot run here: no CUDA driver library, no device, or a driver
    /// older than the CUDA version psm is built for.
    CudaUnavailable { reason: String },
    /// A device allocation failed: the device has too little free memory.
    DeviceOutOfMemory { what: String, bytes: usize },
    /// The driver rejected a PTX module; `log` is the JIT compiler's error log.
    PtxLoad { aggregator: String, message: String, log: String },
    /// Any other CUDA driver call that failed (`operation` names it).
    Cuda { operation: String, message: String },
    /// The chunkwise form was asked for and the operator does not have its shape;
    /// `reason` is psm-ir's (`psm_ir::derive::chunkwise`).
    ChunkwiseNotApplicable { aggregator: String, reason: String },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

fn shape_text(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Unknown { slot, name, declared, belongs_to } => {
                write!(f, "unknown {} `{name}`", slot.name())?;
                match belongs_to {
                    Some(other) => write!(f, ": `{name}` is declared as {}, pass it as one", other.with_article()),
                    None => write!(f, "; the declared {}s are {}", slot.name(), list(declared)),
                }
            }
            RunError::Missing { slot, name } => write!(f, "missing {} `{name}`: every declared {} must be given", slot.name(), slot.name()),
            RunError::Duplicate { slot, name } => write!(f, "{} `{name}` is given twice", slot.name()),
            RunError::WrongDtype { slot, name, expected, found } => write!(
                f,
                "{} `{name}` is declared {} but the data is {}; convert it first (psm never converts implicitly)",
                slot.name(),
                expected.name(),
                found.name()
            ),
            RunError::WrongLength { slot, name, expected, found, shape } => write!(
                f,
                "{} `{name}` has {found} values, expected {expected} (shape {}, row-major)",
                slot.name(),
                shape_text(shape)
            ),
            RunError::BatchMismatch { what, expected, found } => {
                write!(f, "batch shape mismatch: {what} has batch shape {}, expected {}", shape_text(found), shape_text(expected))
            }
            RunError::TooLarge { what } => write!(f, "{what} is too large to address"),
            RunError::FormNotValid { form, aggregator, valid } => write!(
                f,
                "the {} form is not valid for `{aggregator}`: its combine is not associative, so rebracketing would compute a different model; valid forms: {}",
                form.name(),
                valid.join(", ")
            ),
            RunError::NotContiguous { what } => write!(
                f,
                "{what} is not in standard layout (row-major, contiguous); pass `.as_standard_layout()` of it, a contiguous copy"
            ),
            RunError::InvalidOption { option, message } => write!(f, "invalid option `{option}`: {message}"),
            RunError::Codegen { aggregator, message } => write!(f, "cannot compile `{aggregator}`: {message}"),
            RunError::ThreadPool { message } => write!(f, "cannot build the thread pool: {message}"),
            RunError::CudaUnavailable { reason } => write!(f, "CUDA not available: {reason}"),
            RunError::DeviceOutOfMemory { what, bytes } => {
                write!(f, "out of device memory: cannot allocate {bytes} bytes for {what}")
            }
            RunError::PtxLoad { aggregator, message, log } => {
                write!(f, "the CUDA driver rejected the PTX of `{aggregator}`: {message}")?;
                if !log.trim().is_empty() {
                    write!(f, "\nJIT log:\n{}", log.trim_end())?;
                }
                Ok(())
            }
            RunError::Cuda { operation, message } => write!(f, "CUDA error in {operation}: {message}"),
            RunError::ChunkwiseNotApplicable { aggregator, reason } => {
                write!(f, "the chunkwise form does not apply to `{aggregator}`: {reason}")
            }
        }
    }
}

impl std::error::Error for RunError {}

/// Source text that does not read, parse or validate. `rendered` holds the
/// diagnostics as psmc prints them (file:line:column, a caret under the span, help).
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    /// The parse and validation diagnostics (empty when the file could not be read).
    pub diagnostics: Vec<Diagnostic>,
    /// Everything as text, ready to print.
    pub rendered: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rendered.trim_end())
    }
}

impl std::error::Error for CompileError {}
