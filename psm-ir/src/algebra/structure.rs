//! The structure class of an operator (DESIGN.md §5), read from the combine body:
//! * `elementwise` — every entry of the state is an independent scalar scan: all fields
//!   share one shape and combine reads `l`/`r` only at the entry it writes;
//! * `affine` — the fields split into a transition T (combined from T alone) and a
//!   state S whose new value is linear in the earlier S with coefficients from the
//!   later T: S' = E_r ▶ S_l + S_r. Scalar when T is scalars (or empty: E = I),
//!   diagonal when S_l is read only at the entry written, dense when it is contracted;
//! * `general` — anything else.

use std::collections::HashSet;

use crate::arena::Handle;
use crate::ir::*;
use crate::valid::Info;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Scalar,
    Diagonal,
    Dense,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Structure {
    Elementwise,
    Affine { transition: Transition, gates: Vec<String>, state: Vec<String> },
    General,
}

impl Structure {
    pub fn name(&self) -> &'static str {
        match self {
            Structure::Elementwise => "elementwise",
            Structure::Affine { transition: Transition::Scalar, .. } => "affine-scalar",
            Structure::Affine { transition: Transition::Diagonal, .. } => "affine-diagonal",
            Structure::Affine { transition: Transition::Dense, .. } => "affine-dense",
            Structure::General => "general",
        }
    }
}

pub fn structure(agg: &Aggregator, info: &Info) -> Structure {
    if elementwise(agg, info) {
        return Structure::Elementwise;
    }
    affine(agg).unwrap_or(Structure::General)
}

/// The statement defining each local of combine, for reading through locals.
fn local_defs(agg: &Aggregator) -> Vec<Option<&Stmt>> {
    let mut defs = vec![None; agg.locals.len()];
    for s in &agg.combine.stmts {
        if let Target::Local(l) = s.target {
            defs[l.index()] = Some(s);
        }
    }
    defs
}

fn is_identity_index(agg: &Aggregator, indices: &[Handle<Expr>], vars: &[Handle<IndexVar>]) -> bool {
    indices.len() == vars.len() && indices.iter().zip(vars).all(|(&i, &v)| agg.exprs[i] == Expr::Index(v))
}

fn elementwise(agg: &Aggregator, info: &Info) -> bool {
    let element = agg.element();
    let shape = info.shape(element[0]);
    if element.iter().any(|&f| info.shape(f) != shape) {
        return false;
    }
    agg.combine.stmts.iter().all(|s| {
        let mut ok = true;
        visit(agg, s.value, &mut |e| {
            if let Expr::Load { source: Source::Element(_, _) | Source::Local(_), indices } = e {
                ok &= is_identity_index(agg, indices, &s.indices);
            }
            if let Expr::Reduce { .. } = e {
                ok = false;
            }
        });
        // Locals must have the element's shape too, so identity indices mean the same entry.
        ok && (s.indices.len() == shape.len())
    })
}

fn visit(agg: &Aggregator, e: Handle<Expr>, f: &mut impl FnMut(&Expr)) {
    let expr = &agg.exprs[e];
    f(expr);
    expr.for_each_child(|c| visit(agg, c, f));
}

/// How an expression depends on the state fields S, given the split.
#[derive(Debug, Clone, Copy, Default)]
struct Dependence {
    /// Degree in the S values of either operand, capped at 2 (= not linear).
    degree: u8,
    /// Reads an earlier transition value (`l.T`).
    left_gate: bool,
    /// A product of an earlier state with an earlier transition: not E_r ▶ S_l.
    mixed: bool,
    /// Reads a state field contracted (not at the written entry).
    contracted: bool,
}

/// The affine split (largest state set) of any operator, elementwise ones included.
pub(crate) fn affine(agg: &Aggregator) -> Option<Structure> {
    let fields = agg.element();
    if fields.len() > 12 {
        return None;
    }
    let defs = local_defs(agg);
    let mut best: Option<(HashSet<Handle<Tensor>>, bool)> = None;
    for mask in 1u32..(1 << fields.len()) {
        let state: HashSet<Handle<Tensor>> =
            fields.iter().enumerate().filter(|(k, _)| mask & (1 << k) != 0).map(|(_, &f)| f).collect();
        if best.as_ref().is_some_and(|(b, _)| b.len() >= state.len()) {
            continue;
        }
        let mut contracted = false;
        let valid = agg.combine.stmts.iter().all(|s| {
            let Target::Tensor(t) = s.target else { return true };
            let d = dependence(agg, &defs, &state, s.value, &s.indices);
            contracted |= d.contracted;
            if state.contains(&t) {
                d.degree <= 1 && !d.mixed
            } else {
                d.degree == 0
            }
        });
        if valid {
            best = Some((state, contracted));
        }
    }
    let (state, contracted) = best?;
    let gates: Vec<Handle<Tensor>> = fields.iter().copied().filter(|f| !state.contains(f)).collect();
    let transition = if contracted {
        Transition::Dense
    } else if gates.iter().all(|&g| agg.tensors[g].shape.is_empty()) {
        Transition::Scalar
    } else {
        Transition::Diagonal
    };
    let names = |set: Vec<Handle<Tensor>>| set.into_iter().map(|f| agg.tensors[f].name.clone()).collect();
    let state_list = fields.iter().copied().filter(|f| state.contains(f)).collect();
    Some(Structure::Affine { transition, gates: names(gates), state: names(state_list) })
}

fn dependence(
    agg: &Aggregator,
    defs: &[Option<&Stmt>],
    state: &HashSet<Handle<Tensor>>,
    e: Handle<Expr>,
    vars: &[Handle<IndexVar>],
) -> Dependence {
    let dep = |x: Handle<Expr>| dependence(agg, defs, state, x, vars);
    let join = |a: Dependence, b: Dependence, degree: u8| Dependence {
        degree: degree.min(2),
        left_gate: a.left_gate || b.left_gate,
        mixed: a.mixed || b.mixed,
        contracted: a.contracted || b.contracted,
    };
    let nonlinear = |a: Dependence| Dependence { degree: if a.degree > 0 { 2 } else { 0 }, ..a };
    match &agg.exprs[e] {
        Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Empty => Dependence::default(),
        Expr::Load { source, indices } => match source {
            Source::Element(side, f) => {
                if state.contains(f) {
                    let contracted = *side == Side::Left && !is_identity_index(agg, indices, vars);
                    Dependence { degree: 1, contracted, ..Default::default() }
                } else {
                    Dependence { left_gate: *side == Side::Left, ..Default::default() }
                }
            }
            Source::Local(l) => match defs[l.index()] {
                Some(def) => {
                    let inner = dependence(agg, defs, state, def.value, &def.indices);
                    // A local read away from the entry it was computed at contracts the state in it.
                    let moved = inner.degree > 0 && !is_identity_index(agg, indices, vars);
                    Dependence { contracted: inner.contracted || moved, ..inner }
                }
                None => Dependence::default(),
            },
            Source::Input(_) | Source::Param(_) => Dependence::default(),
        },
        Expr::Unary { op: UnaryOp::Neg, arg } => dep(*arg),
        Expr::Unary { op: UnaryOp::Not, arg } => nonlinear(dep(*arg)),
        Expr::Binary { op, lhs, rhs } => {
            let (a, b) = (dep(*lhs), dep(*rhs));
            match op {
                BinaryOp::Add | BinaryOp::Sub => join(a, b, a.degree.max(b.degree)),
                BinaryOp::Mul => {
                    let mut d = join(a, b, a.degree + b.degree);
                    d.mixed |= (a.degree > 0 && b.left_gate) || (b.degree > 0 && a.left_gate);
                    d
                }
                BinaryOp::Div => {
                    let mut d = join(a, b, if b.degree > 0 { 2 } else { a.degree });
                    d.mixed |= a.degree > 0 && b.left_gate;
                    d
                }
                _ => nonlinear(join(a, b, a.degree.max(b.degree))),
            }
        }
        Expr::Call { args, .. } => {
            let d = args.iter().map(|&a| dep(a)).fold(Dependence::default(), |x, y| join(x, y, x.degree.max(y.degree)));
            nonlinear(d)
        }
        Expr::Select { cond, then, otherwise } => {
            let (c, a, b) = (dep(*cond), dep(*then), dep(*otherwise));
            let d = join(a, b, a.degree.max(b.degree));
            if c.degree > 0 {
                nonlinear(join(d, c, 2))
            } else {
                join(d, c, d.degree)
            }
        }
        Expr::Reduce { body, .. } => {
            let d = dep(*body);
            // A reduction over the state contracts it.
            Dependence { contracted: d.contracted || d.degree > 0, ..d }
        }
    }
}
