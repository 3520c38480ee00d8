//! Front ends: everything that produces IR. The `.psm` language lives in [`dsl`]; the
//! `#[psm_aggregator]` macro builds the same IR from Rust syntax.

pub mod dsl;
pub mod builder;
