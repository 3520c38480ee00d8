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

const SAMPLES: usize = 600;
const BUDGET: std::time::Duration = std::time::Duration::from_millis(300);
/// A candidate: relative difference in the declared arithmetic.
const DECLARED_GAP: f64 = 1e-4;
/// Confirmation: relative difference in f64, about 10^10 times its rounding error.
const F64_GAP: f64 = 1e-6;

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
    fn random_fields(&mut self, role: Role, how: Draw, mut fixed: impl FnMut() -> Option<f64>) -> Fields<f64> {
        let info = self.eval.info;
        self.eval
            .fields(role)
            .into_iter()
            .map(|t| {
                let integer = self.eval.agg.tensors[t].dtype == crate::ir::Dtype::I32;
                (0..info.len(t)).map(|_| fixed().unwrap_or_else(|| draw(&mut self.rng, how, integer))).collect()
            })
            .collect()
    }

    fn operands(&mut self, how: Draw, lifted: bool, params: &Fields<f64>, witness: &mut dyn FnMut() -> Option<f64>) -> Fields<f64> {
        if lifted {
            let x = self.random_fields(Role::Input, how, || None);
            let never = |r: Result<_, std::convert::Infallible>| match r {
                Ok(v) => v,
                Err(e) => match e {},
            };
            never(self.eval.lift(&mut FloatDomain::new(Precision::Declared), params, &x))
        } else {
            self.random_fields(Role::Element, how, witness)
        }
    }

    fn evaluate(&self, precision: Precision, params: &Fields<f64>, operands: &[Fields<f64>]) -> Sides<f64> {
        match sides(&self.eval, &mut FloatDomain::new(precision), self.law, params, operands) {
            Ok(s) => s,
            Err(e) => match e {},
        }
    }
}

/// The first entry whose sides differ by more than `gap` relative to the scale of the
/// field; `None` if none does or if any value is not finite.
fn first_gap(agg: &Aggregator, fields: &[Handle<Tensor>], sides: &Sides<f64>, gap: f64) -> Option<(usize, usize, usize)> {
    let _ = agg;
    for (pair, (_, _, lhs, rhs)) in sides.iter().enumerate() {
        if lhs.iter().chain(rhs).flatten().any(|v| !v.is_finite()) {
            return None;
        }
        for (k, (l, r)) in lhs.iter().zip(rhs).enumerate() {
            let scale = l.iter().chain(r).fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, (x, y)) in l.iter().zip(r).enumerate() {
                let denom = x.abs().max(y.abs()) + 1e-3 * scale + 1e-300;
                if (x - y).abs() / denom > gap {
                    debug_assert!(k < fields.len());
                    return Some((pair, k, i));
                }
            }
        }
    }
    None
}

pub(super) fn check(agg: &Aggregator, info: &Info, law: Law, hint: &Hint) -> Verdict {
    let start = std::time::Instant::now();
    let eval = Evaluator::new(agg, info);
    let element = eval.fields(Role::Element);
    let has_inputs = eval.fields(Role::Input).iter().count() > 0;
    let mut search = Search { eval, law, rng: SplitMix64::new(0xC0FFEE ^ law as u64) };
    let mut tried = 0usize;
    // The witness (atom → value) covers operands in order, then params.
    let witness: Vec<Option<f64>> = {
        let total: usize = element.iter().map(|&t| info.len(t)).sum::<usize>() * arity(law)
            + search.eval.fields(Role::Param).iter().map(|&t| info.len(t)).sum::<usize>();
        let mut w = vec![None; total];
        for &(atom, v) in hint.witness.iter().flatten() {
            if let Some(slot) = w.get_mut(atom as usize) {
                *slot = Some(v);
            }
        }
        w
    };
    while tried < SAMPLES && start.elapsed() < BUDGET {
        let how = DRAWS[tried % DRAWS.len()];
        // Witness first, then lifts of inputs, then raw elements.
        let use_witness = tried < 8 && hint.witness.is_some();
        let lifted = !use_witness && has_inputs && tried < SAMPLES / 2;
        tried += 1;
        let mut cursor = 0usize;
        let mut next_witness = || {
            let v = if use_witness { witness.get(cursor).copied().flatten() } else { None };
            cursor += 1;
            v
        };
        let operands: Vec<Fields<f64>> =
            (0..arity(law)).map(|_| search.operands(how, lifted, &Fields::new(), &mut next_witness)).collect::<Vec<_>>();
        // Params are drawn after the operands (the witness lists them last); lifting
        // needs them, so redraw lifted operands with these params.
        let params = search.random_fields(Role::Param, how, &mut next_witness);
        let operands = if lifted {
            (0..arity(law)).map(|_| search.operands(how, true, &params, &mut || None)).collect()
        } else {
            operands
        };
        let declared = search.evaluate(Precision::Declared, &params, &operands);
        if first_gap(agg, &element, &declared, DECLARED_GAP).is_none() {
            continue;
        }
        let exact = search.evaluate(Precision::F64, &params, &operands);
        let Some((pair, field, index)) = first_gap(agg, &element, &exact, F64_GAP) else {
            continue;
        };
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
        let origin = if lifted { "lifts of random inputs" } else { "random elements" };
        let cx = Counterexample {
            operands: names.iter().zip(&operands).map(|(n, o)| (n.to_string(), value(o, Role::Element))).collect(),
            lhs_name,
            rhs_name,
            lhs: value(&lhs, Role::Element),
            rhs: value(&rhs, Role::Element),
            field: agg.tensors[element[field]].name.clone(),
            index: multi,
            lhs_value: lhs[field][index],
            rhs_value: rhs[field][index],
            params: value(&params, Role::Param),
        };
        return Verdict {
            kind: VerdictKind::Refuted,
            method: format!(
                "counterexample on {origin} (sample {tried}), found in the declared arithmetic and confirmed in f64 (relative gap > {F64_GAP:e})"
            ),
            counterexample: Some(Box::new(cx)),
        };
    }
    Verdict {
        kind: VerdictKind::Unknown,
        method: format!("exact procedure: {}; no counterexample in {tried} random samples", hint.why),
        counterexample: None,
    }
}
