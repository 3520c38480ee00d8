//! Algebra verdicts.

pub mod exact;
