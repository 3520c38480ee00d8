//! The public entry point for front ends that build the syntax tree themselves rather
//! than parse `.psm` text — the `#[psm_aggregator]` macro translates Rust items into
//! [`dsl::ast`](super::dsl::ast) and lowers them here, so that names, defaults, validation
//! and the algebra are exactly those of a `.psm` file.
//!
//! Spans in the tree are opaque to psm-ir: it only copies them into the IR and its
//! diagnostics. A builder may use them as indices into a table of its own (the macro
//! maps them back to Rust tokens).

use super::dsl::ast;
use crate::ir::Module;
use crate::Diagnostic;

/// Name-resolves a syntax tree into the IR, exactly as [`super::dsl::parse`] does after
/// parsing. Never panics; every problem is a diagnostic.
pub fn lower(file: &ast::File) -> Result<Module, Vec<Diagnostic>> {
    super::dsl::lower::lower(file)
}
