//! The entrywise reduction: an operator that combines every entry of its element on
//! its own, by the same scalar function, is decided on one representative entry.
//!
//! **When it applies.** Every element field has the same shape `S` (rank ≥ 1), and in
//! combine and in the identity body (when declared) every statement writes one
//! element field — each field exactly once — at its own distinct index variables
//! `v₁…vₖ`, and its value reads
//! * `l`/`r` element fields only at exactly `[v₁, …, vₖ]`;
//! * params either of rank 0 (no subscript), or of shape `S` at exactly `[v₁, …, vₖ]`;
//! * nothing else that varies: no index variable as a value (arithmetic, comparison,
//!   guard, another subscript), no `let`, no reduction, no input.
//!
//! **Why the verdicts carry over.** Under these conditions the entry `e ∈ S` of
//! `l • r` is `F(l[e], r[e], w[e], p)` and the identity's entry `e` is `G(w[e], p)`,
//! where `l[e]` is the tuple of the fields' entries `e`, `w[e]` that of the
//! entry-indexed params, `p` the rank-0 params, and `F`, `G` are the same
//! expressions (the same operations in the same arithmetic, so also the same
//! rounding) for every `e`, because nothing in them depends on `e`. Every law is an
//! equation between such entrywise functions of operands and params, all of whose
//! entries are independent free values; so it holds for the whole operator iff it
//! holds at each entry for all values, i.e. iff it holds for the *representative*:
//! the operator with every element field and entry-indexed param made rank 0 and
//! `F`, `G` as its combine and identity.
//! * holds for the representative ⇒ holds at every entry ⇒ holds for the operator;
//! * a counterexample of the representative, repeated at every entry, is one of the
//!   operator. It is still confirmed on the real operator in f64 (as every refutation
//!   is) before it is reported; if it were not, the reduction reports nothing and the
//!   ordinary procedure runs.
//!
//! The representative's lift is not reduced and never run: its counterexamples are
//! drawn as raw elements, over which the laws are quantified anyway.

use std::collections::HashSet;

use super::{float_search, Law, Value, Verdict, VerdictKind};
use crate::arena::Handle;
use crate::ir::{Aggregator, Body, Expr, IndexVar, Role, Side, Source, Target, Tensor};
use crate::valid::Info;

/// The representative of an entrywise operator: rank-0 element fields and
/// entry-indexed params, combine and identity without subscripts.
pub(super) struct Representative {
    pub agg: Aggregator,
    pub info: Info,
    /// Entries of the whole operator's element shape.
    entries: usize,
    /// The params that are read per entry (rank 0 in the representative).
    per_entry_params: Vec<Handle<Tensor>>,
}

/// The representative when every condition of the module docs holds; `None` otherwise.
pub(super) fn representative(agg: &Aggregator, info: &Info) -> Option<Representative> {
    let element = agg.element();
    let shape = info.shape(*element.first()?).to_vec();
    if shape.is_empty() || element.iter().any(|&t| info.shape(t) != shape.as_slice()) {
        return None;
    }
    let mut per_entry_params = HashSet::new();
    for body in std::iter::once(&agg.combine).chain(agg.identity.as_ref()) {
        let mut written = HashSet::new();
        for stmt in &body.stmts {
            let Target::Tensor(t) = stmt.target else { return None };
            let distinct: HashSet<_> = stmt.indices.iter().collect();
            if agg.tensors[t].role != Role::Element || !written.insert(t) || distinct.len() != stmt.indices.len() {
                return None;
            }
            if !entrywise(agg, info, &shape, &stmt.indices, stmt.value, &mut per_entry_params) {
                return None;
            }
        }
        if written.len() != element.len() {
            return None;
        }
    }
    let mut reduced_agg = agg.clone();
    let mut reduced_info = info.clone();
    for &t in element.iter().chain(&per_entry_params) {
        reduced_info.shapes[t.index()] = Vec::new();
    }
    let mut reduce_body = |body: &Body| Body {
        stmts: body
            .stmts
            .iter()
            .map(|s| {
                let mut stmt = s.clone();
                stmt.indices = Vec::new();
                stmt.value = unsubscripted(agg, &mut reduced_agg, &mut reduced_info, s.value);
                stmt
            })
            .collect(),
        ..body.clone()
    };
    let combine = reduce_body(&agg.combine);
    let identity = agg.identity.as_ref().map(&mut reduce_body);
    reduced_agg.combine = combine;
    reduced_agg.identity = identity;
    Some(Representative {
        agg: reduced_agg,
        info: reduced_info,
        entries: shape.iter().product(),
        per_entry_params: per_entry_params.into_iter().collect(),
    })
}

/// Whether `e` reads only what the module docs allow, with `vars` the statement's
/// index variables; records the params read per entry.
fn entrywise(
    agg: &Aggregator,
    info: &Info,
    shape: &[usize],
    vars: &[Handle<IndexVar>],
    e: Handle<Expr>,
    per_entry_params: &mut HashSet<Handle<Tensor>>,
) -> bool {
    let at_entry = |indices: &[Handle<Expr>]| {
        indices.len() == vars.len() && indices.iter().zip(vars).all(|(&i, &v)| agg.exprs[i] == Expr::Index(v))
    };
    match &agg.exprs[e] {
        Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) => true,
        Expr::Index(_) | Expr::Reduce { .. } | Expr::Empty => false,
        Expr::Load { source, indices } => match *source {
            Source::Element(Side::Left | Side::Right, _) => at_entry(indices),
            Source::Param(t) if indices.is_empty() => info.shape(t).is_empty(),
            Source::Param(t) => {
                let ok = info.shape(t) == shape && at_entry(indices);
                if ok {
                    per_entry_params.insert(t);
                }
                ok
            }
            _ => false,
        },
        other => {
            let mut ok = true;
            other.for_each_child(|c| ok = ok && entrywise(agg, info, shape, vars, c, per_entry_params));
            ok
        }
    }
}

/// A copy of `e` (from `original`) in `reduced` with every load's subscript dropped.
fn unsubscripted(original: &Aggregator, reduced: &mut Aggregator, info: &mut Info, e: Handle<Expr>) -> Handle<Expr> {
    let mut expr = original.exprs[e].clone();
    let mut copy = |c: Handle<Expr>| unsubscripted(original, reduced, info, c);
    match &mut expr {
        Expr::Load { indices, .. } => indices.clear(),
        Expr::Unary { arg, .. } => *arg = copy(*arg),
        Expr::Binary { lhs, rhs, .. } => {
            *lhs = copy(*lhs);
            *rhs = copy(*rhs);
        }
        Expr::Call { args, .. } => args.iter_mut().for_each(|a| *a = copy(*a)),
        Expr::Select { cond, then, otherwise } => {
            *cond = copy(*cond);
            *then = copy(*then);
            *otherwise = copy(*otherwise);
        }
        Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Reduce { .. } | Expr::Empty => {}
    }
    let handle = reduced.exprs.push(expr, original.exprs.span(e));
    debug_assert_eq!(handle.index(), info.types.len());
    info.types.push(info.types[e.index()]);
    info.constant.push(info.constant[e.index()]);
    handle
}

impl Representative {
    /// The operator's verdict from the representative's: a holding verdict as it is,
    /// a refutation only once its counterexample, repeated at every entry, is confirmed
    /// on the operator (`None` otherwise), and `unknown` as it is.
    pub(super) fn lift_verdict(&self, agg: &Aggregator, info: &Info, law: Law, verdict: Verdict) -> Option<Verdict> {
        let entries = match self.entries {
            1 => "its one entry".to_string(),
            n => format!("each of its {n} entries, which all compute the same scalar function"),
        };
        let how = if verdict.kind == VerdictKind::Unknown { "checked" } else { "decided" };
        let per_entry = format!("{how} per entry ({entries})");
        match (verdict.kind, verdict.counterexample) {
            (VerdictKind::Refuted, Some(cx)) => {
                let operands: Vec<_> = cx.operands.iter().map(|(_, v)| self.repeated(agg, info, Role::Element, v)).collect();
                let params = self.repeated(agg, info, Role::Param, &cx.params);
                let confirmed = float_search::confirm(agg, info, law, &params, &operands)?;
                Some(Verdict {
                    method: format!(
                        "{per_entry}: one entry's {}; repeated at every entry, it is confirmed on the whole operator by the same test",
                        verdict.method
                    ),
                    ..confirmed
                })
            }
            (VerdictKind::Refuted, None) => None,
            (kind, _) => Some(Verdict { kind, method: format!("{per_entry}: {}", verdict.method), counterexample: None }),
        }
    }

    /// The representative's values of one role as the operator's: rank-0 fields
    /// repeated at every entry, other params as they are.
    fn repeated(&self, agg: &Aggregator, info: &Info, role: Role, value: &Value) -> Vec<Vec<f64>> {
        agg.tensors_of(role)
            .zip(&value.fields)
            .map(|(t, (_, v))| {
                let reduced = role == Role::Element || self.per_entry_params.contains(&t);
                match v.as_slice() {
                    [x] if reduced => vec![*x; info.len(t)],
                    _ => v.clone(),
                }
            })
            .collect()
    }
}
