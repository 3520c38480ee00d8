//! Algebra: decides whether combine is associative and commutative and whether the
//! declared identity is one (DESIGN.md §5), and classifies the operator's structure.
//!
//! A verdict is never a guess presented as a proof:
//! * `proven` — both sides expand to the same polynomial (exact rational
//!   coefficients): the law holds identically;
//! * `verified` — the two sides are equal as functions, by randomized identity testing
//!   in exact arithmetic over GF(2^61 − 1), with `exp`/`log` mapped through their
//!   homomorphisms and `max`/`min`/comparisons/`select` split into every feasible
//!   ordering case (decided exactly over the rationals). The error probability is
//!   stated in the method.
//! * `refuted` — a concrete counterexample, found in floating point and confirmed at
//!   higher precision, with both sides and the first differing field and index.
//! * `unknown` — neither; only floating-point evidence.
//!
//! An operator that combines each entry of its element on its own, by one scalar
//! function, is decided on a representative entry (`entrywise`, where the argument
//! is written down); its verdicts say so.

mod entrywise;
pub mod exact;
mod float_search;
mod normal;
mod structure;
mod symbolic;

use crate::ir::Aggregator;
use crate::valid::Info;

pub use structure::{structure, Structure, Transition};
pub(crate) use structure::affine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    Proven,
    Verified,
    Refuted,
    Unknown,
}

impl VerdictKind {
    pub fn name(self) -> &'static str {
        match self {
            VerdictKind::Proven => "proven",
            VerdictKind::Verified => "verified",
            VerdictKind::Refuted => "refuted",
            VerdictKind::Unknown => "unknown",
        }
    }
    /// Proven or verified: the property holds.
    pub fn holds(self) -> bool {
        matches!(self, VerdictKind::Proven | VerdictKind::Verified)
    }
}

/// A named element (or input) value of a counterexample: field name and flat values.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub fields: Vec<(String, Vec<f64>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Counterexample {
    /// The operands, named as in the law: `a`, `b`, `c` (associativity), `a`, `b`
    /// (commutativity), `x` (identity).
    pub operands: Vec<(String, Value)>,
    /// The law's two sides, e.g. `(a•b)•c` and `a•(b•c)`.
    pub lhs_name: String,
    pub rhs_name: String,
    pub lhs: Value,
    pub rhs: Value,
    /// The first differing entry: its field and multi-index.
    pub field: String,
    pub index: Vec<usize>,
    pub lhs_value: f64,
    pub rhs_value: f64,
    /// Param values used (weights), when the aggregator has params.
    pub params: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// How the verdict was reached, in words (with the error bound when verified).
    pub method: String,
    pub counterexample: Option<Box<Counterexample>>,
}

/// Everything `psmc check` reports about one aggregator.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub associative: Verdict,
    /// `None` when no identity is declared.
    pub identity: Option<Verdict>,
    pub commutative: Verdict,
    pub structure: Structure,
    /// `assume associative;` was written and the verdict was unknown: the operator is
    /// treated as associative.
    pub assumed: bool,
}

impl Report {
    /// Whether forms that rebracket (fold, chunked) may be used.
    pub fn associative(&self) -> bool {
        self.associative.kind.holds() || self.assumed
    }
    /// The forms this operator may run in: associative operators every form, others
    /// the fixed tree and its streaming counter only.
    pub fn forms(&self) -> Vec<&'static str> {
        if self.associative() {
            vec!["recurrent", "chunked", "tree", "stream"]
        } else {
            vec!["tree", "stream"]
        }
    }
}

/// The laws the algebra checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// (a•b)•c = a•(b•c)
    Associative,
    /// e•x = x = x•e for the declared e
    Identity,
    /// a•b = b•a
    Commutative,
}

/// One law by the three procedures in turn; `lifts`: whether the search may draw
/// operands as lifts of inputs.
fn decide(agg: &Aggregator, info: &Info, law: Law, lifts: bool) -> Verdict {
    normal::check(agg, info, law).unwrap_or_else(|| match symbolic::check(agg, info, law) {
        Ok(v) => v,
        Err(hint) => float_search::check(agg, info, law, &hint, lifts),
    })
}

/// Analyses one validated aggregator: an entrywise operator on its representative
/// entry (`entrywise`), any other (or one whose representative's refutation is not
/// confirmed) by the procedures directly.
pub fn analyze(agg: &Aggregator, info: &Info) -> Report {
    let representative = entrywise::representative(agg, info);
    let check = |law| {
        representative
            .as_ref()
            .and_then(|rep| rep.lift_verdict(agg, info, law, decide(&rep.agg, &rep.info, law, false)))
            .unwrap_or_else(|| decide(agg, info, law, true))
    };
    let associative = check(Law::Associative);
    let identity = agg.identity.as_ref().map(|_| check(Law::Identity));
    let commutative = check(Law::Commutative);
    let assumed = agg.assume_associative.is_some() && associative.kind == VerdictKind::Unknown;
    Report { associative, identity, commutative, structure: structure(agg, info), assumed }
}
