//! Integer expressions (index variables, dims, integer literals): compile-time folding,
//! affine forms for addresses, and value ranges. Everything here reproduces the
//! interpreter's exact i64 evaluation (`wrapping` arithmetic, `checked_div` or 0).

use psm_ir::arena::Handle;
use psm_ir::ir::{Aggregator, BinaryOp, Expr, Func, IndexVar, ReduceOp, Source, UnaryOp};
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
