//! Exact arithmetic used by the algebra's decision procedures: a prime field for
//! randomized identity testing, checked rationals, linear forms over atoms, and
//! feasibility of linear constraint systems (the case splits of max/min/comparisons).

pub mod feasible;
pub mod field;
pub mod linform;
pub mod rational;
