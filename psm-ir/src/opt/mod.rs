//! IR-to-IR rewrites that backends apply before lowering. Each one is exact: the
//! rewritten aggregator computes bit for bit what the original computes (every NaN
//! the same: payloads are not part of the semantics) under the arithmetic every
//! backend shares, so no form's result changes. The interpreter never applies them:
//! it evaluates the operator as written, the oracle the rewrites are tested against.
//!
//! * [`shared_exp`] — one `exp` instead of two where a body rescales two values by a
//!   running max (`exp(x - max(x, y))`, `exp(y - max(x, y))`).

pub mod shared_exp;

use crate::ir::Aggregator;
use crate::valid::{self, DimOverride, Info};

/// The aggregator a backend lowers: `None` when no rewrite applies (lower the original),
/// else the rewritten aggregator validated for the dims `info` was validated for.
pub fn for_backend(agg: &Aggregator, info: &Info) -> Option<(Aggregator, Info)> {
    let rewritten = shared_exp::rewrite(agg, info)?;
    let dims: Vec<DimOverride> =
        info.dim_values(agg).into_iter().map(|(name, value)| DimOverride { name, value }).collect();
    // The rewrite only adds scalar `let`s of values the original already computes, so it
    // validates whenever the original did; should it not, the original is still right.
    let rewritten_info = valid::validate_aggregator(&rewritten, &dims).ok()?;
    Some((rewritten, rewritten_info))
}
