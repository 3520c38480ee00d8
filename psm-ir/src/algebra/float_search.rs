//! The search for counterexamples when the exact procedure reached no verdict.
//!
//! Operands are drawn as lifts of random inputs first (a counterexample made of
//! reachable elements), then as raw elements, from several value distributions that
//! include small integers (to hit ties) and the exact procedure's witness point. A
//! difference found with the declared arithmetic (usually f32) is refuted only if it
//! persists in f64, far above rounding.

use super::exact::field::SplitMix64;
use super::symbolic::{arity, sides, Hint, Sides};
use super::{Counterexample, Law, Value, Verdict, VerdictKind};
use crate::arena::Handle;
use crate::interp::{Evaluator, Fields, FloatDomain, Precision};
use crate::ir::{Aggregator, Role, Tensor};
use crate::valid::Info;

/// Most samples drawn, and the total cost allowed (in expression evaluations, about
/// 0.3 s): a count, not a clock, so that verdicts never depend on the machine's load.
const SAMPLES: usize = 600;
const BUDGET: u64 = 20_000_000;
/// A candidate: relative difference in the declared arithmetic.
const DECLARED_GAP: f64 = 1e-4;
/// Confirmation: relative difference in f64, about 10^10 times its rounding error.
const F64_GAP: f64 = 1e-6;
/// Confirmation: the difference must also exceed this fraction of the largest
/// magnitude computed on the way (operands and every intermediate), so that
/// cancellation noise around a true zero is never taken for a difference. f64
/// rounding stays below about (operations)·1.1e-16 of that magnitude.
const F64_NOISE: f64 = 1e-9;

/// The f64 domain, recording the largest finite magnitude it computes.
struct Tracking {
    inner: FloatDomain,
    peak: f64,
}

impl Tracking {
    fn seen(&mut self, v: f64) -> f64 {
        if v.is_finite() {
            self.peak = self.peak.max(v.abs());
        }
        v
    }
}

impl crate::interp::Domain for Tracking {
    type V = f64;
    type Error = std::convert::Infallible;
    fn constant(&mut self, value: f64, ty: crate::ir::Scalar) -> f64 {
        let v = self.inner.constant(value, ty);
        self.seen(v)
    }
    fn unary(&mut self, op: crate::ir::UnaryOp, ty: crate::ir::Scalar, a: &f64) -> Result<f64, Self::Error> {
        let v = self.inner.unary(op, ty, a)?;
        Ok(self.seen(v))
    }
    fn binary(&mut self, op: crate::ir::BinaryOp, ty: crate::ir::Scalar, a: &f64, b: &f64) -> Result<f64, Self::Error> {
        let v = self.inner.binary(op, ty, a, b)?;
        Ok(self.seen(v))
    }
    fn call(&mut self, func: crate::ir::Func, ty: crate::ir::Scalar, args: &[f64]) -> Result<f64, Self::Error> {
        let v = self.inner.call(func, ty, args)?;
        Ok(self.seen(v))
    }
    fn truth(&mut self, cond: &f64) -> Result<bool, Self::Error> {
        self.inner.truth(cond)
    }
}

#[derive(Clone, Copy, Debug)]
enum Draw {
    SmallIntegers,
    Unit,
    Positive,
    Wide,
}

const DRAWS: [Draw; 4] = [Draw::SmallIntegers, Draw::Unit, Draw::Positive, Draw::Wide];

fn draw(rng: &mut SplitMix64, how: Draw, integer: bool) -> f64 {
    let v = match how {
        Draw::SmallIntegers => rng.next_below(7) as f64 - 3.0,
        Draw::Unit => rng.next_f64_in(-1.0, 1.0),
        Draw::Positive => rng.next_f64_in(0.5, 1.5),
        Draw::Wide => rng.next_f64_in(-4.0, 4.0),
    };
    // Values a user can type back exactly: f32-representable, integers for i32 fields.
    if integer {
        v.round()
    } else {
        v as f32 as f64
    }
}

struct Search<'a> {
    eval: Evaluator<'a>,
    law: Law,
    rng: SplitMix64,
}

impl Search<'_> {
    /// Random values for the fields of `role`; entries of `fixed` that are `Some`
    /// (a witness of the exact procedure) are taken as they are.
    fn random_fields(&mut self, role: Role, how: Draw, fixed: &[Option<f64>]) -> Fields<f64> {
        let info = self.eval.info;
        let mut k = 0usize;
        self.eval
            .fields(role)
            .into_iter()
            .map(|t| {
                let integer = self.eval.agg.tensors[t].dtype == crate::ir::Dtype::I32;
                (0..info.len(t))
                    .map(|_| {
                        k += 1;
                        fixed.get(k - 1).copied().flatten().unwrap_or_else(|| draw(&mut self.rng, how, integer))
                    })
                    .collect()
            })
            .collect()
    }

    fn lifted(&mut self, how: Draw, params: &Fields<f64>) -> Fields<f64> {
        let x = self.random_fields(Role::Input, how, &[]);
        match self.eval.lift(&mut FloatDomain::new(Precision::Declared), params, &x) {
            Ok(v) => v,
            Err(e) => match e {},
        }
    }

    /// Both sides, and the largest magnitude met (operands, params, intermediates).
    fn evaluate(&self, precision: Precision, params: &Fields<f64>, operands: &[Fields<f64>]) -> (Sides<f64>, f64) {
        let mut d = Tracking { inner: FloatDomain::new(precision), peak: 0.0 };
        for v in operands.iter().flatten().chain(params).flatten() {
            d.seen(*v);
        }
        match sides(&self.eval, &mut d, self.law, params, operands) {
            Ok(s) => (s, d.peak),
            Err(e) => match e {},
        }
    }
}

/// The first entry whose sides differ by more than `gap` relative to the scale of the
/// field; `None` if none does or if any value is not finite.
fn first_gap(fields: &[Handle<Tensor>], sides: &Sides<f64>, gap: f64, floor: f64) -> Option<(usize, usize, usize)> {
    for (pair, (_, _, lhs, rhs)) in sides.iter().enumerate() {
        if lhs.iter().chain(rhs).flatten().any(|v| !v.is_finite()) {
            return None;
        }
        for (k, (l, r)) in lhs.iter().zip(rhs).enumerate() {
            let scale = l.iter().chain(r).fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (x, y)) in l.iter().zip(r).enumerate() {
                let denom = x.abs().max(y.abs()) + 1e-3 * scale + 1e-300;
                if (x - y).abs() / denom > gap && (x - y).abs() > floor {
                    debug_assert!(k < fields.len());
                    return Some((pair, k, i));
                }
            }
        }
    }
    None
}

/// Expression evaluations of one run of a body: the cost model of the search budget.
fn body_cost(agg: &Aggregator, info: &Info, body: &crate::ir::Body) -> u64 {
    fn expr_cost(agg: &Aggregator, info: &Info, e: Handle<crate::ir::Expr>) -> u64 {
        let mut children = 0u64;
        agg.exprs[e].for_each_child(|c| children = children.saturating_add(expr_cost(agg, info, c)));
        match &agg.exprs[e] {
            crate::ir::Expr::Reduce { var, .. } => (info.extent(*var) as u64).saturating_mul(children).saturating_add(1),
            _ => children.saturating_add(1),
        }
    }
    body.stmts
        .iter()
        .map(|s| {
            let n: u64 = s.indices.iter().map(|&v| info.extent(v) as u64).product();
            n.saturating_mul(expr_cost(agg, info, s.value))
        })
        .fold(0u64, u64::saturating_add)
}

/// Operands for the search: lifts of random inputs for half the samples when `lifts`
/// (and the operator has inputs), raw elements otherwise.
pub(super) fn check(agg: &Aggregator, info: &Info, law: Law, hint: &Hint, lifts: bool) -> Verdict {
    // Per sample: the law's combines in two precisions, plus lifting the operands.
    let lift_cost = if lifts { body_cost(agg, info, &agg.lift) * 3 } else { 0 };
    let per_sample = (body_cost(agg, info, &agg.combine) * 4 * 2 + lift_cost).max(1);
    let samples = ((BUDGET / per_sample) as usize).clamp(16, SAMPLES);
    let eval = Evaluator::new(agg, info);
    let element = eval.fields(Role::Element);
    let has_inputs = lifts && !eval.fields(Role::Input).is_empty();
    let mut search = Search { eval, law, rng: SplitMix64::new(0xC0FFEE ^ law as u64) };
    let mut tried = 0usize;
    // The witness (atom → value) lists the operands' entries in order, then the params'.
    let per_operand: usize = element.iter().map(|&t| info.len(t)).sum();
    let operand_atoms = per_operand * arity(law);
    let mut witness = vec![None; operand_atoms + search.eval.fields(Role::Param).iter().map(|&t| info.len(t)).sum::<usize>()];
    for &(atom, v) in hint.witness.iter().flatten() {
        if let Some(slot) = witness.get_mut(atom as usize) {
            *slot = Some(v);
        }
    }
    while tried < samples {
        let how = DRAWS[tried % DRAWS.len()];
        // The witness first, then lifts of inputs, then raw elements.
        let use_witness = tried < 8 && hint.witness.is_some();
        let lifted = !use_witness && has_inputs && tried < samples / 2;
        tried += 1;
        let fixed: &[Option<f64>] = if use_witness { &witness } else { &[] };
        let params = search.random_fields(Role::Param, how, fixed.get(operand_atoms..).unwrap_or(&[]));
        let operands: Vec<Fields<f64>> = (0..arity(law))
            .map(|k| {
                if lifted {
                    search.lifted(how, &params)
                } else {
                    search.random_fields(Role::Element, how, fixed.get(k * per_operand..).unwrap_or(&[]))
                }
            })
            .collect();
        let (declared, _) = search.evaluate(Precision::Declared, &params, &operands);
        if first_gap(&element, &declared, DECLARED_GAP, 0.0).is_none() {
            continue;
        }
        let Some(confirmed) = confirmed(&search, &params, &operands) else {
            continue;
        };
        let origin = if lifted { "lifts of random inputs" } else { "random elements" };
        return Verdict {
            method: format!("counterexample on {origin} (sample {tried}), found in the declared arithmetic and {}", confirmed.method),
            ..confirmed
        };
    }
    Verdict {
        kind: VerdictKind::Unknown,
        method: format!("exact procedure: {}; no counterexample in {tried} random samples", hint.why),
        counterexample: None,
    }
}

/// The refutation of `law` by these operands and params, if their sides differ in f64
/// far above rounding (the method says so); `None` otherwise.
pub(super) fn confirm(agg: &Aggregator, info: &Info, law: Law, params: &Fields<f64>, operands: &[Fields<f64>]) -> Option<Verdict> {
    let search = Search { eval: Evaluator::new(agg, info), law, rng: SplitMix64::new(0) };
    confirmed(&search, params, operands)
}

fn confirmed(search: &Search, params: &Fields<f64>, operands: &[Fields<f64>]) -> Option<Verdict> {
    let (agg, info, law) = (search.eval.agg, search.eval.info, search.law);
    let element = search.eval.fields(Role::Element);
    let (exact, peak) = search.evaluate(Precision::F64, params, operands);
    let (pair, field, index) = first_gap(&element, &exact, F64_GAP, F64_NOISE * peak)?;
    let (lhs_name, rhs_name, lhs, rhs) = exact[pair].clone();
    let value = |fields: &Fields<f64>, role: Role| Value {
        fields: search
            .eval
            .fields(role)
            .into_iter()
            .zip(fields)
            .map(|(t, v)| (agg.tensors[t].name.clone(), v.clone()))
            .collect(),
    };
    let names: &[&str] = match law {
        Law::Associative => &["a", "b", "c"],
        Law::Commutative => &["a", "b"],
        Law::Identity => &["x"],
    };
    let shape = info.shape(element[field]);
    let mut multi = vec![0; shape.len()];
    let mut rest = index;
    for (k, &n) in shape.iter().enumerate().rev() {
        multi[k] = rest % n;
        rest /= n;
    }
    let cx = Counterexample {
        operands: names.iter().zip(operands).map(|(n, o)| (n.to_string(), value(o, Role::Element))).collect(),
        lhs_name,
        rhs_name,
        lhs: value(&lhs, Role::Element),
        rhs: value(&rhs, Role::Element),
        field: agg.tensors[element[field]].name.clone(),
        index: multi,
        lhs_value: lhs[field][index],
        rhs_value: rhs[field][index],
        params: value(params, Role::Param),
    };
    Some(Verdict {
        kind: VerdictKind::Refuted,
        method: format!("confirmed in f64 (gap > {F64_GAP:e} relative, > {F64_NOISE:e} of the largest magnitude computed)"),
        counterexample: Some(Box::new(cx)),
    })
}
