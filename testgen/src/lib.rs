//! Test-data generators shared by the test suites of several psm crates (a dev-only
//! dependency; nothing here is part of psm's API).

pub mod algebra;
