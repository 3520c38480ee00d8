//! psm-ir: the psm operator language and its meaning.
//!
//! `front` parses `.psm` text into the arena IR of [`ir`]; [`valid`] checks it for one
//! choice of dims and produces the [`valid::Info`] every consumer requires; [`interp`]
//! is the reference interpreter, the single definition of what an operator computes;
//! [`derive`](mod@derive) runs the forms (fold, chunked, tree, stream) over it; [`algebra`] decides
//! associativity, identity and commutativity; [`print`](mod@print) writes the IR's text form;
//! [`opt`] holds the exact IR-to-IR rewrites backends apply before lowering.
//!
//! This crate knows no backend, device or proc-macro.

pub mod algebra;
pub mod arena;
pub mod derive;
pub mod diag;
pub mod front;
pub mod interp;
pub mod ir;
pub mod opt;
pub mod print;
pub mod valid;

pub use diag::{Diagnostic, Span};
