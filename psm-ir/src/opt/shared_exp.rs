//! One `exp` for the two rescalings of a running max.
//!
//! Log-space operators (log-cumsum-exp, online softmax, mLSTM's stabilizer) combine
//! with `M = max(X, Y)` and scale both sides by `exp(X - M)` and `exp(Y - M)`. Unless
//! something is NaN or infinite one of the two shifts is exactly 0, so one `exp` of the
//! other serves both. The pass finds the pattern by structure — two `exp` calls in one
//! body whose arguments are `X - M` and `Y - M`, where `M` is the same `max(X, Y)` (a
//! scalar `let` or the call itself) and `X`, `Y` are the max's operands (compared as
//! expression trees) — and rewrites
//!
//! ```text
//! let a = X - M;  let b = Y - M;  let e = exp(a + b);
//! exp(X - M)  →  if a >= 0 { 1 } else { if a < lowest { 0 } else { e } }
//! exp(Y - M)  →  if b >= 0 { 1 } else { if b < lowest { 0 } else { e } }
//! ```
//!
//! with `lowest` the type's most negative finite value. Since `M ≥ X`, `a` is in
//! [-inf, 0] or NaN, so `a >= 0` means `a = ±0` and `a < lowest` means `a = -inf`
//! (both false for NaN): the same tests as `a == 0` and `a == -inf`, but ordered
//! comparisons, one flag each on x86-64 where `==` also tests the parity flag.
//!
//! The `let`s go before the first statement that reads either `exp`. Only index-free
//! `X`, `Y` are rewritten (no index variable, reduction or indexed load), so the
//! scalar `let`s compute exactly the values the original computes in place.
//!
//! **Exactness** (every NaN the same; what each backend provides: `max` returns one of
//! its operands or NaN if either is NaN, `exp(±0) = 1` exactly, `exp(-inf) = +0`, and
//! IEEE subtraction, so `v - v = +0` for finite `v`, `x - y = 0` only if `x = y`,
//! `x + 0 = x` for `x ≠ 0`). Shown for `exp(a)`; `exp(b)` is the mirror image.
//! * `a = ±0`: `exp(a) = 1`, the first branch (`a >= 0`).
//! * `a = -inf`: `exp(a) = +0`, the second branch (`a < lowest`).
//! * `a` NaN: `a + b` is NaN, so `e` is NaN, as `exp(a)` is.
//! * `a` finite and nonzero: then `X ≠ M` and neither is NaN (else `a` would be NaN), so
//!   `M = Y`; `Y` is not `+inf` (else `a = X - inf` would be `-inf` or NaN) nor `-inf`
//!   (else `X ≤ M = -inf` and `a = -inf - -inf` NaN), so `b = Y - Y = +0` and
//!   `e = exp(a + 0) = exp(a)`.
//!
//! Both `exp`s are needed as branches: with `X = +inf` and `Y` finite, `M = +inf`,
//! `a` is NaN and `b = -inf`, so `exp(a + b)` (NaN) is not `exp(b)` (0) — which the
//! `-inf` branch answers. NaN payloads may differ (`e` carries whichever NaN `a + b`
//! yields); psm's semantics does not specify payloads.

use crate::arena::{Arena, Handle};
use crate::ir::{Aggregator, BinaryOp, Body, Expr, Func, Local, Scalar, Source, Stmt, Target};
use crate::valid::Info;
use crate::Span;

/// One `exp(X - M)` of a rescaling pair.
struct Rescale {
    /// The `exp` call, rewritten in place.
    exp: Handle<Expr>,
    /// Its argument `X - M`, which becomes the shift `let`'s value.
    shift: Handle<Expr>,
    /// The statement that reads it.
    stmt: usize,
}

/// The rescalings by one `max(X, Y)`: `sides[0]` by `X - M`, `sides[1]` by `Y - M`.
struct Pair {
    max: Handle<Expr>,
    sides: [Vec<Rescale>; 2],
    /// The most negative finite value of the shifts' type.
    lowest: f64,
}

/// The aggregator with every rescaling pair of every body sharing one `exp`; `None`
/// when no body has one.
pub fn rewrite(agg: &Aggregator, info: &Info) -> Option<Aggregator> {
    let mut out = agg.clone();
    let mut changed = false;
    let Aggregator { exprs, locals, lift, combine, readout, identity, .. } = &mut out;
    for body in [Some(lift), Some(combine), Some(readout), identity.as_mut()].into_iter().flatten() {
        changed |= rewrite_body(exprs, locals, info, body);
    }
    changed.then_some(out)
}

fn rewrite_body(exprs: &mut Arena<Expr>, locals: &mut Arena<Local>, info: &Info, body: &mut Body) -> bool {
    let pairs = find_pairs(exprs, locals, info, &body.stmts);
    if pairs.is_empty() {
        return false;
    }
    // The `let`s to insert before each statement.
    let mut before: Vec<Vec<Stmt>> = vec![Vec::new(); body.stmts.len()];
    for pair in pairs {
        let at = pair.sides.iter().flatten().map(|r| r.stmt).min().expect("a pair has both sides");
        let span = body.stmts[at].span;
        // Names no local has, so that the printed IR stays unambiguous.
        let names = |n: usize| [format!("shift{n}_0"), format!("shift{n}_1"), format!("exp{n}")];
        let n = (0..).find(|&n| !locals.iter().any(|(_, l)| names(n).contains(&l.name))).expect("a free name");
        let [shift_a, shift_b, exp_name] = names(n);
        let mut scalar_let = |name: String, value: Handle<Expr>| {
            let local = locals.push(Local { name, indices: Vec::new() }, span);
            before[at].push(Stmt { target: Target::Local(local), indices: Vec::new(), value, span });
            local
        };
        let shifts = [scalar_let(shift_a, pair.sides[0][0].shift), scalar_let(shift_b, pair.sides[1][0].shift)];
        let exp_span = exprs.span(pair.sides[0][0].exp);
        let [a, b] = shifts.map(|l| load(exprs, l, exp_span));
        let sum = exprs.push(Expr::Binary { op: BinaryOp::Add, lhs: a, rhs: b }, exp_span);
        let shared = exprs.push(Expr::Call { func: Func::Exp, args: vec![sum] }, exp_span);
        let shared = scalar_let(exp_name, shared);
        for (shift, rescales) in shifts.into_iter().zip(&pair.sides) {
            for r in rescales {
                let span = exprs.span(r.exp);
                exprs[r.exp] = guarded(exprs, shift, shared, pair.lowest, span);
            }
        }
    }
    let stmts = std::mem::take(&mut body.stmts);
    body.stmts = stmts
        .into_iter()
        .zip(before)
        .flat_map(|(stmt, mut inserted)| {
            inserted.push(stmt);
            inserted
        })
        .collect();
    true
}

/// `if shift >= 0 { 1 } else { if shift < lowest { 0 } else { shared } }`.
fn guarded(exprs: &mut Arena<Expr>, shift: Handle<Local>, shared: Handle<Local>, lowest: f64, span: Span) -> Expr {
    let compare = |exprs: &mut Arena<Expr>, op: BinaryOp, value: f64| {
        let lhs = load(exprs, shift, span);
        let rhs = exprs.push(Expr::Float(value), span);
        exprs.push(Expr::Binary { op, lhs, rhs }, span)
    };
    let (is_zero, is_neg_inf) = (compare(exprs, BinaryOp::Ge, 0.0), compare(exprs, BinaryOp::Lt, lowest));
    let (one, zero, shared) = (exprs.push(Expr::Float(1.0), span), exprs.push(Expr::Float(0.0), span), load(exprs, shared, span));
    let otherwise = exprs.push(Expr::Select { cond: is_neg_inf, then: zero, otherwise: shared }, span);
    Expr::Select { cond: is_zero, then: one, otherwise }
}

fn load(exprs: &mut Arena<Expr>, local: Handle<Local>, span: Span) -> Handle<Expr> {
    exprs.push(Expr::Load { source: Source::Local(local), indices: Vec::new() }, span)
}

/// The rescaling pairs of a body's statements, each with both sides.
fn find_pairs(exprs: &Arena<Expr>, locals: &Arena<Local>, info: &Info, stmts: &[Stmt]) -> Vec<Pair> {
    // The value of each scalar `let`.
    let let_value = |local: Handle<Local>| {
        stmts.iter().find(|s| s.target == Target::Local(local) && s.indices.is_empty()).map(|s| s.value)
    };
    // `max(X, Y)` read directly or through a scalar `let`.
    let max_of = |m: Handle<Expr>| {
        let call = match &exprs[m] {
            Expr::Load { source: Source::Local(l), indices } if indices.is_empty() && locals[*l].indices.is_empty() => let_value(*l)?,
            _ => m,
        };
        match &exprs[call] {
            Expr::Call { func: Func::Max, args } if args.len() == 2 => Some((call, [args[0], args[1]])),
            _ => None,
        }
    };
    let mut pairs: Vec<Pair> = Vec::new();
    for (k, stmt) in stmts.iter().enumerate() {
        let mut calls = Vec::new();
        each_expr(exprs, stmt.value, &mut |e| {
            if let Expr::Call { func: Func::Exp, args } = &exprs[e] {
                calls.push((e, args[0]));
            }
        });
        for (exp, shift) in calls {
            let Expr::Binary { op: BinaryOp::Sub, lhs: x, rhs: m } = exprs[shift] else { continue };
            let Some((max, operands)) = max_of(m) else { continue };
            let Some(side) = operands.iter().position(|&o| index_free(exprs, o) && same(exprs, o, x)) else { continue };
            let lowest = match info.ty(shift) {
                Scalar::F32 => f32::MIN as f64,
                Scalar::F64 => f64::MIN,
                Scalar::I32 | Scalar::Bool => continue,
            };
            let rescale = Rescale { exp, shift, stmt: k };
            match pairs.iter_mut().find(|p| same(exprs, p.max, max)) {
                Some(p) if !p.sides[side].iter().any(|r| r.exp == exp) => p.sides[side].push(rescale),
                Some(_) => {}
                None => {
                    let mut sides = [Vec::new(), Vec::new()];
                    sides[side].push(rescale);
                    pairs.push(Pair { max, sides, lowest });
                }
            }
        }
    }
    pairs.retain(|p| p.sides.iter().all(|s| !s.is_empty()));
    pairs
}

/// Calls `f` on `e` and every expression below it.
fn each_expr(exprs: &Arena<Expr>, e: Handle<Expr>, f: &mut impl FnMut(Handle<Expr>)) {
    f(e);
    exprs[e].for_each_child(|c| each_expr(exprs, c, f));
}

/// No index variable, reduction or indexed load: one value per evaluation of the body.
fn index_free(exprs: &Arena<Expr>, e: Handle<Expr>) -> bool {
    let mut free = true;
    each_expr(exprs, e, &mut |e| {
        free &= match &exprs[e] {
            Expr::Index(_) | Expr::Reduce { .. } => false,
            Expr::Load { indices, .. } => indices.is_empty(),
            _ => true,
        }
    });
    free
}

/// The same expression tree: the same value wherever both are evaluated.
fn same(exprs: &Arena<Expr>, x: Handle<Expr>, y: Handle<Expr>) -> bool {
    let all_same = |xs: &[Handle<Expr>], ys: &[Handle<Expr>]| xs.len() == ys.len() && xs.iter().zip(ys).all(|(&a, &b)| same(exprs, a, b));
    x == y
        || match (&exprs[x], &exprs[y]) {
            (Expr::Float(a), Expr::Float(b)) => a.to_bits() == b.to_bits(),
            (Expr::Int(a), Expr::Int(b)) => a == b,
            (Expr::Dim(a), Expr::Dim(b)) => a == b,
            (Expr::Index(a), Expr::Index(b)) => a == b,
            (Expr::Load { source: a, indices: ia }, Expr::Load { source: b, indices: ib }) => a == b && all_same(ia, ib),
            (Expr::Unary { op: a, arg: x }, Expr::Unary { op: b, arg: y }) => a == b && same(exprs, *x, *y),
            (Expr::Binary { op: a, lhs: la, rhs: ra }, Expr::Binary { op: b, lhs: lb, rhs: rb }) => {
                a == b && same(exprs, *la, *lb) && same(exprs, *ra, *rb)
            }
            (Expr::Call { func: a, args: xa }, Expr::Call { func: b, args: xb }) => a == b && all_same(xa, xb),
            (Expr::Select { cond: ca, then: ta, otherwise: oa }, Expr::Select { cond: cb, then: tb, otherwise: ob }) => {
                same(exprs, *ca, *cb) && same(exprs, *ta, *tb) && same(exprs, *oa, *ob)
            }
            (Expr::Reduce { op: a, var: va, body: ba }, Expr::Reduce { op: b, var: vb, body: bb }) => {
                a == b && va == vb && same(exprs, *ba, *bb)
            }
            (Expr::Empty, Expr::Empty) => true,
            _ => false,
        }
}
