//! The `.psm` front end: pest grammar → [`ast`] → lowering to the IR.

pub mod ast;
pub(crate) mod lower;
mod parse;

pub(crate) use lower::{cap, suggest, MAX_ERRORS};
pub use parse::MAX_NESTING;

use crate::ir::Module;
use crate::Diagnostic;

/// Parses and name-resolves a `.psm` source. Never panics; every problem is a diagnostic.
pub fn parse(source: &str) -> Result<Module, Vec<Diagnostic>> {
    let file = parse::parse_file(source).map_err(|d| vec![d])?;
    lower::lower(&file)
}

/// The syntax tree alone, without name resolution.
pub fn parse_ast(source: &str) -> Result<ast::File, Diagnostic> {
    parse::parse_file(source)
}
