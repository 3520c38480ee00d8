//! Backend-neutral analysis of expressions: integer expressions (index variables, dims,
//! integer literals) folded at compile time, as affine forms for addresses and as value
//! ranges, reproducing the interpreter's exact i64 evaluation (`wrapping` arithmetic,
//! `checked_div` or 0); float expressions of literals and dims folded by the
//! interpreter's own arithmetic ([`Folds`]); and which branches may be evaluated
//! speculatively ([`speculatable`]).

use psm_ir::arena::Handle;
use psm_ir::interp::{Domain, FloatDomain, Precision};
use psm_ir::ir::{Aggregator, BinaryOp, Body, Expr, Func, IndexVar, ReduceOp, Role, Source, UnaryOp};
use psm_ir::valid::Info;

/// Calls `f` on every load source under `e`.
pub(crate) fn sources(agg: &Aggregator, e: Handle<Expr>, f: &mut impl FnMut(Source)) {
    if let Expr::Load { source, .. } = &agg.exprs[e] {
        f(*source);
    }
    agg.exprs[e].for_each_child(|c| sources(agg, c, f));
}

/// The exact value of an integer (or boolean, as 0/1) expression that involves no
/// index variable, as the interpreter's `eval_int` computes it.
pub(crate) fn fold(agg: &Aggregator, info: &Info, e: Handle<Expr>) -> Option<i64> {
    Some(match &agg.exprs[e] {
        Expr::Int(v) => *v,
        Expr::Dim(d) => info.dim(*d),
        Expr::Index(_) | Expr::Reduce { .. } => return None,
        Expr::Unary { op: UnaryOp::Neg, arg } => fold(agg, info, *arg)?.wrapping_neg(),
        Expr::Unary { op: UnaryOp::Not, arg } => (fold(agg, info, *arg)? == 0) as i64,
        Expr::Binary { op, lhs, rhs } => {
            let (a, b) = (fold(agg, info, *lhs)?, fold(agg, info, *rhs)?);
            psm_ir::interp::int_binary(*op, a, b)
        }
        Expr::Select { cond, then, otherwise } => {
            if fold(agg, info, *cond)? != 0 {
                fold(agg, info, *then)?
            } else {
                fold(agg, info, *otherwise)?
            }
        }
        Expr::Call { func, args } => {
            let a = fold(agg, info, args[0])?;
            match func {
                Func::Abs => a.wrapping_abs(),
                Func::Min => a.min(fold(agg, info, *args.get(1)?)?),
                Func::Max => a.max(fold(agg, info, *args.get(1)?)?),
                _ => return None,
            }
        }
        Expr::Float(_) | Expr::Load { .. } | Expr::Empty => return None,
    })
}


/// `constant + Σ coeff·var` over the integers mod 2^64: equal to the wrapping
/// evaluation of the expression it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Affine {
    pub constant: i64,
    pub terms: Vec<(Handle<IndexVar>, i64)>,
}

impl Affine {
    pub fn add(&mut self, other: &Affine, scale: i64) {
        self.constant = self.constant.wrapping_add(other.constant.wrapping_mul(scale));
        for &(v, c) in &other.terms {
            let c = c.wrapping_mul(scale);
            match self.terms.iter_mut().find(|(w, _)| *w == v) {
                Some((_, k)) => *k = k.wrapping_add(c),
                None => self.terms.push((v, c)),
            }
        }
        self.terms.retain(|&(_, c)| c != 0);
    }
}

/// Which tensors of `role` the bodies read, by position among that role's tensors
/// (`positions`: each tensor's).
pub(crate) fn used(agg: &Aggregator, positions: &[usize], bodies: &[&Body], role: Role) -> Vec<bool> {
    let mut used = vec![false; agg.tensors_of(role).count()];
    for body in bodies {
        for stmt in &body.stmts {
            sources(agg, stmt.value, &mut |s| {
                if let Source::Param(t) | Source::Input(t) = s {
                    if agg.tensors[t].role == role {
                        used[positions[t.index()]] = true;
                    }
                }
            });
        }
    }
    used
}

/// The byte offset of an access `[indices]` into a tensor of `shape` with entries of
/// `size` bytes, as a backend lowers it: `affine` — the constant and the index
/// variables' byte coefficients of the indices that have an affine form — plus the
/// indices that have none, each with its byte scale (lowered as values, in index order).
pub(crate) fn access_form(agg: &Aggregator, info: &Info, shape: &[usize], indices: &[Handle<Expr>], size: usize) -> (Affine, Vec<(Handle<Expr>, i64)>) {
    let st = crate::layout::strides(shape);
    let mut form = Affine::default();
    let mut generic = Vec::new();
    for (k, &i) in indices.iter().enumerate() {
        let scale = st.get(k).copied().unwrap_or(0).wrapping_mul(size as i64);
        match affine(agg, info, i) {
            Some(a) => form.add(&a, scale),
            None => generic.push((i, scale)),
        }
    }
    (form, generic)
}

/// The affine form of an integer expression, if it has one.
pub(crate) fn affine(agg: &Aggregator, info: &Info, e: Handle<Expr>) -> Option<Affine> {
    if let Some(k) = fold(agg, info, e) {
        return Some(Affine { constant: k, terms: Vec::new() });
    }
    match &agg.exprs[e] {
        Expr::Index(v) => Some(Affine { constant: 0, terms: vec![(*v, 1)] }),
        Expr::Unary { op: UnaryOp::Neg, arg } => {
            let mut f = Affine::default();
            f.add(&affine(agg, info, *arg)?, -1);
            Some(f)
        }
        Expr::Binary { op: op @ (BinaryOp::Add | BinaryOp::Sub), lhs, rhs } => {
            let mut f = affine(agg, info, *lhs)?;
            f.add(&affine(agg, info, *rhs)?, if *op == BinaryOp::Add { 1 } else { -1 });
            Some(f)
        }
        Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => {
            let (a, b) = (affine(agg, info, *lhs)?, affine(agg, info, *rhs)?);
            let mut f = Affine::default();
            match (a.terms.is_empty(), b.terms.is_empty()) {
                (true, _) => f.add(&b, a.constant),
                (_, true) => f.add(&a, b.constant),
                _ => return None,
            }
            Some(f)
        }
        _ => None,
    }
}

/// Bounds of an integer expression over the full extents of its index variables, when
/// they are known and within i64 (so that the wrapping evaluation is the exact one).
pub(crate) fn range(agg: &Aggregator, info: &Info, e: Handle<Expr>) -> Option<(i128, i128)> {
    let r = match &agg.exprs[e] {
        Expr::Int(v) => (*v as i128, *v as i128),
        Expr::Dim(d) => (info.dim(*d) as i128, info.dim(*d) as i128),
        Expr::Index(v) => (0, info.extent(*v) as i128 - 1),
        Expr::Unary { op: UnaryOp::Neg, arg } => {
            let (lo, hi) = range(agg, info, *arg)?;
            (-hi, -lo)
        }
        Expr::Unary { op: UnaryOp::Not, .. } => (0, 1),
        Expr::Binary { op, lhs, rhs } => {
            let (a, b) = (range(agg, info, *lhs)?, range(agg, info, *rhs)?);
            match op {
                BinaryOp::Add => (a.0 + b.0, a.1 + b.1),
                BinaryOp::Sub => (a.0 - b.1, a.1 - b.0),
                BinaryOp::Mul => {
                    let p =
                        [a.0.checked_mul(b.0)?, a.0.checked_mul(b.1)?, a.1.checked_mul(b.0)?, a.1.checked_mul(b.1)?];
                    (*p.iter().min()?, *p.iter().max()?)
                }
                BinaryOp::Div => return None,
                _ => (0, 1),
            }
        }
        Expr::Select { then, otherwise, .. } => {
            let (a, b) = (range(agg, info, *then)?, range(agg, info, *otherwise)?);
            (a.0.min(b.0), a.1.max(b.1))
        }
        Expr::Call { func, args } => {
            let a = range(agg, info, args[0])?;
            match func {
                Func::Abs => {
                    let m = a.0.abs().max(a.1.abs());
                    (if a.0 <= 0 && a.1 >= 0 { 0 } else { a.0.abs().min(a.1.abs()) }, m)
                }
                Func::Min | Func::Max => {
                    let b = range(agg, info, *args.get(1)?)?;
                    if *func == Func::Min {
                        (a.0.min(b.0), a.1.min(b.1))
                    } else {
                        (a.0.max(b.0), a.1.max(b.1))
                    }
                }
                _ => return None,
            }
        }
        Expr::Reduce { op, var, body } => {
            let b = range(agg, info, *body)?;
            let n = info.extent(*var) as i128;
            match op {
                ReduceOp::Sum => (b.0.checked_mul(n)?.min(b.0), b.1.checked_mul(n)?.max(b.1)),
                ReduceOp::Max | ReduceOp::Min => b,
                ReduceOp::Prod => return None,
            }
        }
        Expr::Float(_) | Expr::Load { .. } | Expr::Empty => return None,
    };
    let within = |v: i128| v >= i64::MIN as i128 && v <= i64::MAX as i128;
    (within(r.0) && within(r.1)).then_some(r)
}

/// Values of expressions that depend on nothing but literals and dims, computed at
/// compile time by the interpreter's own arithmetic (the public `FloatDomain` in
/// Declared precision, walked as the interpreter walks it), so `rsqrt(K)` or `1 / 3`
/// cost nothing at run time and equal the interpreter's on every backend. Memoized
/// per expression.
pub(crate) struct Folds(Vec<Option<Option<f64>>>);

impl Folds {
    pub fn new(agg: &Aggregator) -> Folds {
        Folds(vec![None; agg.exprs.len()])
    }

    /// The interpreter's value of `e` (its f64 representation), if `e` folds.
    pub fn get(&mut self, agg: &Aggregator, info: &Info, e: Handle<Expr>) -> Option<f64> {
        if let Some(v) = self.0[e.index()] {
            return v;
        }
        let v = self.compute(agg, info, e);
        self.0[e.index()] = Some(v);
        v
    }

    fn compute(&mut self, agg: &Aggregator, info: &Info, e: Handle<Expr>) -> Option<f64> {
        let mut d = FloatDomain::new(Precision::Declared);
        let ty = info.ty(e);
        if info.constant[e.index()] {
            return fold(agg, info, e).map(|k| d.constant(k as f64, ty));
        }
        Some(match &agg.exprs[e] {
            Expr::Float(x) => d.constant(*x, ty),
            Expr::Unary { op, arg } => {
                let a = self.get(agg, info, *arg)?;
                never(d.unary(*op, info.ty(*arg), &a))
            }
            Expr::Binary { op, lhs, rhs } => {
                let a = self.get(agg, info, *lhs)?;
                let b = self.get(agg, info, *rhs)?;
                never(d.binary(*op, info.ty(*lhs), &a, &b))
            }
            Expr::Call { func, args } => {
                let values = args.iter().map(|&a| self.get(agg, info, a)).collect::<Option<Vec<f64>>>()?;
                never(d.call(*func, info.ty(args[0]), &values))
            }
            Expr::Select { cond, then, otherwise } => {
                let c = self.get(agg, info, *cond)?;
                if never(d.truth(&c)) {
                    self.get(agg, info, *then)?
                } else {
                    self.get(agg, info, *otherwise)?
                }
            }
            _ => return None,
        })
    }
}

fn never<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(x) => match x {},
    }
}

/// The shape of what a load reads.
pub(crate) fn source_shape(info: &Info, source: Source) -> &[usize] {
    match source {
        Source::Input(t) | Source::Param(t) | Source::Element(_, t) => info.shape(t),
        Source::Local(l) => &info.local_shapes[l.index()],
    }
}

/// Whether every index of an access lies in bounds for every value of its index
/// variables (not only under the guards around it).
pub(crate) fn in_bounds(agg: &Aggregator, info: &Info, shape: &[usize], indices: &[Handle<Expr>]) -> bool {
    indices.len() == shape.len()
        && indices.iter().zip(shape).all(|(&i, &n)| {
            info.constant[i.index()] && range(agg, info, i).is_some_and(|(lo, hi)| lo >= 0 && hi < n as i128)
        })
}

/// Largest number of expression nodes in a branch evaluated speculatively.
const SPECULATE_NODES: usize = 12;

/// Which calls a speculated branch may make besides `abs`/`min`/`max`/`sqrt`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Calls {
    /// None.
    Inline,
    /// `exp` too: a host call with no effect psm can observe, cheaper than the branch
    /// it replaces where the condition follows the data (the CPU: elu's
    /// `if x > 0 { x + 1 } else { exp(x) }` on signs at random mispredicts half its
    /// branches, and a lane mask lets the statement run in vectors).
    Exp,
}

/// Whether evaluating `e` when its branch is not taken is cheap and unobservable: a
/// few nodes, no call but `abs`/`min`/`max`/`sqrt` (and those `calls` allows), no
/// reduction, every load in bounds for every index value.
pub(crate) fn speculatable(agg: &Aggregator, info: &Info, e: Handle<Expr>, calls: Calls) -> bool {
    let mut budget = SPECULATE_NODES;
    speculatable_in(agg, info, e, calls, &mut budget)
}

fn speculatable_in(agg: &Aggregator, info: &Info, e: Handle<Expr>, calls: Calls, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    if info.constant[e.index()] {
        return fold(agg, info, e).is_some() || range(agg, info, e).is_some();
    }
    match &agg.exprs[e] {
        Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Empty => true,
        // The indices are constant expressions: safe if in bounds everywhere.
        Expr::Load { source, indices } => in_bounds(agg, info, source_shape(info, *source), indices),
        Expr::Call { func, .. } if !(matches!(func, Func::Abs | Func::Min | Func::Max | Func::Sqrt) || (*func == Func::Exp && calls == Calls::Exp)) => false,
        Expr::Reduce { .. } => false,
        other => {
            let mut all = true;
            other.for_each_child(|c| all = all && speculatable_in(agg, info, c, calls, budget));
            all
        }
    }
}
