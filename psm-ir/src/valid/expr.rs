//! The expression walk of validation: index extents, types (with integer literals,
//! dims and index variables adapting to their context), and bounds of every access,
//! narrowed by the guards around it.

use std::collections::HashMap;

use super::{eval_size, Info};
use crate::arena::Handle;
use crate::ir::*;
use crate::{Diagnostic, Span};

/// A type before context has fixed it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    /// An integer computed from literals, dims and index variables: adapts to any
    /// numeric type.
    Int,
    /// A boolean computed from integers alone (a guard such as `u < C`).
    Cond,
    /// A float computed from literals alone: adapts to f32 or f64 (f32 by default).
    Float,
    Val(Scalar),
    /// Already reported; absorbs further errors.
    Error,
}

impl Ty {
    fn describe(self) -> &'static str {
        match self {
            Ty::Int => "an integer",
            Ty::Cond | Ty::Val(Scalar::Bool) => "a bool",
            Ty::Float => "a float",
            Ty::Val(Scalar::F32) => "f32",
            Ty::Val(Scalar::F64) => "f64",
            Ty::Val(Scalar::I32) => "i32",
            Ty::Error => "an error",
        }
    }
}

/// An affine integer expression: `constant + Σ coeff·var`, exact: the coefficients are
/// those of the expression over the integers (no wrapping), or there is no form.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Affine {
    pub constant: i128,
    pub terms: Vec<(Handle<IndexVar>, i128)>,
}

impl Affine {
    fn constant(k: i128) -> Affine {
        Affine { constant: k, terms: Vec::new() }
    }
    fn add(mut self, other: Affine, sign: i128) -> Option<Affine> {
        self.constant = self.constant.checked_add(sign.checked_mul(other.constant)?)?;
        for (v, c) in other.terms {
            let c = sign.checked_mul(c)?;
            match self.terms.iter_mut().find(|(w, _)| *w == v) {
                Some((_, k)) => *k = k.checked_add(c)?,
                None => self.terms.push((v, c)),
            }
        }
        self.terms.retain(|(_, c)| *c != 0);
        Some(self)
    }
    fn scale(mut self, k: i128) -> Option<Affine> {
        self.constant = self.constant.checked_mul(k)?;
        for (_, c) in &mut self.terms {
            *c = c.checked_mul(k)?;
        }
        self.terms.retain(|(_, c)| *c != 0);
        Some(self)
    }
}

/// Why an integer expression has no [`Affine`] form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NotAffine {
    /// A product of two index variables, a division, a value read from data, ...
    Shape,
    /// Affine, but a coefficient exceeds 128 bits.
    Overflow,
}

/// The affine form of an integer expression, if it is one.
pub(crate) fn affine(agg: &Aggregator, dims: &[i64], e: Handle<Expr>) -> Result<Affine, NotAffine> {
    use NotAffine::*;
    let form = match &agg.exprs[e] {
        Expr::Int(v) => Some(Affine::constant(*v as i128)),
        Expr::Dim(d) => Some(Affine::constant(dims[d.index()] as i128)),
        Expr::Index(v) => Some(Affine { constant: 0, terms: vec![(*v, 1)] }),
        Expr::Unary { op: UnaryOp::Neg, arg } => affine(agg, dims, *arg)?.scale(-1),
        Expr::Binary { op: BinaryOp::Add, lhs, rhs } => affine(agg, dims, *lhs)?.add(affine(agg, dims, *rhs)?, 1),
        Expr::Binary { op: BinaryOp::Sub, lhs, rhs } => affine(agg, dims, *lhs)?.add(affine(agg, dims, *rhs)?, -1),
        Expr::Binary { op: BinaryOp::Mul, lhs, rhs } => {
            let (a, b) = (affine(agg, dims, *lhs)?, affine(agg, dims, *rhs)?);
            match (a.terms.is_empty(), b.terms.is_empty()) {
                (true, _) => b.scale(a.constant),
                (_, true) => a.scale(b.constant),
                _ => return Err(Shape),
            }
        }
        _ => return Err(Shape),
    };
    form.ok_or(Overflow)
}

type Interval = (i64, i64);

/// What binds an index variable whose extent is inferred.
#[derive(Clone, Copy)]
enum Binding {
    Let(Handle<Local>),
    Reduce(ReduceOp),
}

#[derive(Clone, Default)]
struct Env {
    /// Interval of each index variable in scope, narrowed by the guards around.
    ranges: HashMap<Handle<IndexVar>, Interval>,
    /// Inside a branch that no index values can reach: bounds are not checked there.
    dead: bool,
}

struct Checker<'a> {
    agg: &'a Aggregator,
    body: &'a Body,
    info: &'a mut Info,
    diags: &'a mut Vec<Diagnostic>,
    /// Inferred types, for the resolution pass.
    inferred: Vec<Option<Ty>>,
    /// Locals whose `let` failed: reading them reports nothing more.
    failed: Vec<bool>,
}

pub(super) fn check_body(agg: &Aggregator, body: &Body, info: &mut Info, diags: &mut Vec<Diagnostic>) {
    let mut c = Checker { agg, body, info, diags, inferred: vec![None; agg.exprs.len()], failed: vec![false; agg.locals.len()] };
    for stmt in &body.stmts {
        if c.diags.len() > crate::front::dsl::MAX_ERRORS {
            break;
        }
        c.stmt(stmt);
    }
}

impl Checker<'_> {
    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }
    fn span(&self, e: Handle<Expr>) -> Span {
        self.agg.exprs.span(e)
    }
    fn var_name(&self, v: Handle<IndexVar>) -> &str {
        &self.agg.index_vars[v].name
    }

    fn stmt(&mut self, stmt: &Stmt) {
        let agg = self.agg;
        let mut env = Env::default();
        match stmt.target {
            Target::Tensor(t) => {
                let shape = self.info.shapes[t.index()].clone();
                let tensor = &agg.tensors[t];
                if shape.len() != stmt.indices.len() {
                    let written = if shape.is_empty() {
                        tensor.name.clone()
                    } else {
                        let names = ["i", "j", "k", "l", "m", "n"];
                        let idx: Vec<&str> = (0..shape.len()).map(|k| names[k % names.len()]).collect();
                        format!("{}[{}]", tensor.name, idx.join(", "))
                    };
                    self.error(
                        Diagnostic::error(format!(
                            "`{}` has {} dimension{} but is assigned with {} ind{}",
                            tensor.name,
                            shape.len(),
                            if shape.len() == 1 { "" } else { "s" },
                            stmt.indices.len(),
                            if stmt.indices.len() == 1 { "ex" } else { "ices" }
                        ))
                        .primary(stmt.span, format!("shape of `{}` is {:?}", tensor.name, shape))
                        .help(format!("write `{written} = ...;`")),
                    );
                    return;
                }
                if self.body.implicit {
                    // The omitted lift copies each input field into the element field of
                    // the same name: their sizes must agree at these dims.
                    if let Expr::Load { source: Source::Input(input), .. } = agg.exprs[stmt.value] {
                        let from = &self.info.shapes[input.index()];
                        if *from != shape {
                            self.error(
                                Diagnostic::error(format!(
                                    "the omitted lift copies input `{0}` into element field `{0}`, but their shapes differ",
                                    tensor.name
                                ))
                                .primary(agg.tensors.span(t), format!("the element field has shape {shape:?}"))
                                .secondary(agg.tensors.span(input), format!("the input has shape {from:?}"))
                                .help(format!("declare both with the same shape, or write `lift(x) {{ ... }}` assigning `{}`", super::written(agg, t))),
                            );
                            return;
                        }
                    }
                }
                for (&v, &n) in stmt.indices.iter().zip(&shape) {
                    self.info.extents[v.index()] = n;
                    env.ranges.insert(v, (0, n as i64 - 1));
                }
                let ty = self.infer(stmt.value, &env);
                self.resolve(stmt.value, ty, tensor.dtype.scalar());
            }
            Target::Local(local) => {
                let mut shape = Vec::new();
                for &v in &stmt.indices {
                    let n = match agg.index_vars[v].extent {
                        Some(s) => match eval_size(agg, &self.info.dims, s) {
                            Some(n) if n > 0 && n <= super::MAX_DIM as i128 => n as usize,
                            value => {
                                let shown = value.map_or("too large to represent".to_string(), |v| v.to_string());
                                self.error(
                                    Diagnostic::error(format!("the extent of `{}` is {shown}", self.var_name(v)))
                                        .primary(agg.sizes.span(s), format!("this size is {shown} with {}", super::dims_text(agg, &self.info.dims)))
                                        .help(format!("extents must be between 1 and {}", super::MAX_DIM)),
                                );
                                self.failed[local.index()] = true;
                                return;
                            }
                        },
                        None => match self.infer_extent(v, stmt.value, Binding::Let(local)) {
                            Some(n) => n,
                            None => {
                                self.failed[local.index()] = true;
                                return;
                            }
                        },
                    };
                    self.info.extents[v.index()] = n;
                    env.ranges.insert(v, (0, n as i64 - 1));
                    shape.push(n);
                }
                let entries = shape.iter().try_fold(1u128, |acc, &n| acc.checked_mul(n as u128));
                if entries.is_none_or(|e| e > super::MAX_ELEMENTS) {
                    self.error(
                        Diagnostic::error(format!("`{}` has more than 2^32 entries", agg.locals[local].name))
                            .primary(agg.locals.span(local), format!("shape {shape:?}"))
                            .help("use smaller dims or extents"),
                    );
                    self.failed[local.index()] = true;
                    return;
                }
                self.info.local_shapes[local.index()] = shape;
                let ty = self.infer(stmt.value, &env);
                let scalar = match ty {
                    Ty::Int => Scalar::I32,
                    Ty::Cond => Scalar::Bool,
                    Ty::Float | Ty::Error => Scalar::F32,
                    Ty::Val(s) => s,
                };
                self.resolve(stmt.value, ty, scalar);
                self.info.local_types[local.index()] = scalar;
            }
        }
    }

    /// The extent of `var` from the accesses that index a dimension with it alone,
    /// leaving out those under a guard that mentions it.
    fn infer_extent(&mut self, var: Handle<IndexVar>, root: Handle<Expr>, binding: Binding) -> Option<usize> {
        let mut uses = Vec::new();
        let mut mentioned = false;
        self.collect_uses(var, root, &mut uses, &mut mentioned);
        let name = self.var_name(var).to_string();
        let var_span = self.agg.index_vars.span(var);
        let Some(&(first, first_span)) = uses.first() else {
            let d = match (mentioned, binding) {
                (true, Binding::Let(local)) => {
                    let l = &self.agg.locals[local];
                    let binders: Vec<String> = l
                        .indices
                        .iter()
                        .map(|&v| if v == var { format!("{name}: N") } else { self.var_name(v).to_string() })
                        .collect();
                    Diagnostic::error(format!("cannot infer the extent of `{name}`"))
                        .primary(var_span, "never used alone as an index outside a guard")
                        .note(format!("a `let` index takes its extent from an unguarded access such as `x.f[{name}]`"))
                        .help(format!("state it: `let {}[{}] = ...`", l.name, binders.join(", ")))
                }
                (true, Binding::Reduce(op)) => Diagnostic::error(format!("cannot infer the extent of `{name}`"))
                    .primary(var_span, "never used alone as an index outside a guard")
                    .note(format!("`{}({name})` ranges over the dimension that `{name}` indexes alone, e.g. `x.f[{name}]`", op.name()))
                    .help(format!("index a tensor with `{name}` outside the guard, or reduce over a `let` with a stated extent")),
                (false, Binding::Reduce(op)) => Diagnostic::error(format!("`{}({name})` reduces over `{name}`, but its body does not use `{name}`", op.name()))
                    .primary(var_span, format!("nothing in the body depends on `{name}`"))
                    .help(format!("index the body with it (`{}({name}) x.v[{name}]`), or drop the reduction", op.name())),
                (false, Binding::Let(local)) => Diagnostic::error(format!("index `{name}` of `{}` is not used", self.agg.locals[local].name))
                    .primary(var_span, format!("nothing on the right side depends on `{name}`"))
                    .help(format!("use `{name}` on the right side, or state its extent to repeat the value: `{name}: N`")),
            };
            self.error(d);
            return None;
        };
        if let Some(&(other, other_span)) = uses.iter().find(|(n, _)| *n != first) {
            let help = match binding {
                Binding::Let(local) => format!(
                    "state the extent on the binder (`let {}[{name}: N]`) and guard the access that is larger, or use separate index variables",
                    self.agg.locals[local].name
                ),
                Binding::Reduce(_) => "use separate index variables, one per dimension size".to_string(),
            };
            self.error(
                Diagnostic::error(format!("ambiguous extent for `{name}`: {first} or {other}"))
                    .primary(other_span, format!("here `{name}` indexes a dimension of size {other}"))
                    .secondary(first_span, format!("here it indexes a dimension of size {first}"))
                    .help(help),
            );
            return None;
        }
        Some(first)
    }

    fn collect_uses(&self, var: Handle<IndexVar>, e: Handle<Expr>, uses: &mut Vec<(usize, Span)>, mentioned: &mut bool) {
        match &self.agg.exprs[e] {
            Expr::Index(v) if *v == var => *mentioned = true,
            Expr::Load { source, indices } => {
                for (pos, &i) in indices.iter().enumerate() {
                    if self.agg.exprs[i] == Expr::Index(var) {
                        if let Some(&n) = self.source_shape(*source).get(pos) {
                            uses.push((n, self.span(i)));
                        }
                    }
                    self.collect_uses(var, i, uses, mentioned);
                }
            }
            Expr::Select { cond, then, otherwise } => {
                let mut in_cond = false;
                self.collect_uses(var, *cond, &mut Vec::new(), &mut in_cond);
                *mentioned |= in_cond;
                if in_cond {
                    // A guarded use says nothing about the full extent; only note it.
                    self.collect_uses(var, *then, &mut Vec::new(), mentioned);
                    self.collect_uses(var, *otherwise, &mut Vec::new(), mentioned);
                } else {
                    self.collect_uses(var, *then, uses, mentioned);
                    self.collect_uses(var, *otherwise, uses, mentioned);
                }
            }
            other => other.for_each_child(|c| self.collect_uses(var, c, uses, mentioned)),
        }
    }

    fn source_shape(&self, source: Source) -> &[usize] {
        match source {
            Source::Input(t) | Source::Param(t) | Source::Element(_, t) => &self.info.shapes[t.index()],
            Source::Local(l) => &self.info.local_shapes[l.index()],
        }
    }

    /// A short text for a simple expression, for help lines (`x.pos`); `k` otherwise.
    fn expr_text(&self, e: Handle<Expr>) -> String {
        match &self.agg.exprs[e] {
            Expr::Load { source, indices } if indices.is_empty() => self.source_name(*source),
            Expr::Index(v) => self.var_name(*v).to_string(),
            Expr::Dim(d) => self.agg.dims[*d].name.clone(),
            Expr::Int(v) => v.to_string(),
            _ => "k".to_string(),
        }
    }

    /// How the body names what it reads: `l.h` (with the body's own argument names), a
    /// param, or a local.
    fn source_name(&self, source: Source) -> String {
        let agg = self.agg;
        let params = &self.body.params;
        let arg = |k: usize| params.get(k).cloned();
        let prefix = match (source, self.body.kind) {
            (Source::Input(_), BodyKind::Lift) => arg(0),
            (Source::Input(_), BodyKind::Readout) => arg(1),
            (Source::Element(Side::Left, _), _) => arg(0),
            (Source::Element(Side::Right, _), _) => arg(1),
            (Source::Element(Side::State, _), _) => arg(0),
            _ => None,
        };
        match source {
            Source::Element(_, t) | Source::Input(t) | Source::Param(t) => match prefix {
                Some(p) => format!("{p}.{}", agg.tensors[t].name),
                None => agg.tensors[t].name.clone(),
            },
            Source::Local(l) => agg.locals[l].name.clone(),
        }
    }

    fn source_type(&self, source: Source) -> Scalar {
        match source {
            Source::Input(t) | Source::Param(t) | Source::Element(_, t) => self.agg.tensors[t].dtype.scalar(),
            Source::Local(l) => self.info.local_types[l.index()],
        }
    }

    fn infer(&mut self, e: Handle<Expr>, env: &Env) -> Ty {
        let ty = self.infer_inner(e, env);
        self.inferred[e.index()] = Some(ty);
        self.info.constant[e.index()] = matches!(ty, Ty::Int | Ty::Cond);
        self.info.types[e.index()] = match ty {
            Ty::Int => Scalar::I32,
            Ty::Cond => Scalar::Bool,
            Ty::Val(s) => s,
            Ty::Float | Ty::Error => Scalar::F32,
        };
        ty
    }

    fn type_error(&mut self, e: Handle<Expr>, expected: &str, found: Ty, help: &str) -> Ty {
        if found == Ty::Error {
            return Ty::Error;
        }
        let mut d = Diagnostic::error(format!("expected {expected}, found {}", found.describe()))
            .primary(self.span(e), format!("this is {}", found.describe()));
        if !help.is_empty() {
            d = d.help(help.to_string());
        }
        self.error(d);
        Ty::Error
    }

    /// The common numeric type of two operands, fixing the operand that adapts.
    fn unify(&mut self, op_span: Span, a: (Handle<Expr>, Ty), b: (Handle<Expr>, Ty)) -> Ty {
        use Ty::*;
        match (a.1, b.1) {
            (Error, _) | (_, Error) => Error,
            (Cond, _) | (Val(Scalar::Bool), _) => self.type_error(a.0, "a number", a.1, "use `select(c, a, b)` to turn a condition into a value"),
            (_, Cond) | (_, Val(Scalar::Bool)) => self.type_error(b.0, "a number", b.1, "use `select(c, a, b)` to turn a condition into a value"),
            (Int, Int) => Int,
            (Int, Float) | (Float, Int) | (Float, Float) => Float,
            (Int | Float, Val(s)) => {
                self.resolve(a.0, a.1, s);
                Val(s)
            }
            (Val(s), Int | Float) => {
                self.resolve(b.0, b.1, s);
                Val(s)
            }
            (Val(x), Val(y)) if x == y => Val(x),
            (Val(x), Val(y)) => {
                self.error(
                    Diagnostic::error(format!("mismatched types {} and {}", x.name(), y.name()))
                        .primary(op_span, format!("{} on the left, {} on the right", x.name(), y.name()))
                        .help("psm converts no value implicitly; declare both with the same type"),
                );
                Error
            }
        }
    }

    fn infer_inner(&mut self, e: Handle<Expr>, env: &Env) -> Ty {
        let agg = self.agg;
        let span = self.span(e);
        match agg.exprs[e].clone() {
            Expr::Float(_) => Ty::Float,
            Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) => Ty::Int,
            Expr::Empty => Ty::Val(Scalar::Bool),
            Expr::Load { source, indices } => {
                if let Source::Local(l) = source {
                    if self.failed[l.index()] {
                        // Its `let` was reported; its shape and type are unknown.
                        for &i in &indices {
                            self.infer(i, env);
                        }
                        return Ty::Error;
                    }
                }
                let shape = self.source_shape(source).to_vec();
                let name = self.source_name(source);
                if shape.len() != indices.len() {
                    let help = if shape.is_empty() {
                        format!("write `{name}` without indices")
                    } else {
                        let names = ["i", "j", "k", "l", "m", "n"];
                        let idx: Vec<&str> = (0..shape.len()).map(|k| names[k % names.len()]).collect();
                        format!("write `{name}[{}]`", idx.join(", "))
                    };
                    self.error(
                        Diagnostic::error(format!(
                            "`{name}` has {} dimension{}, indexed with {}",
                            shape.len(),
                            if shape.len() == 1 { "" } else { "s" },
                            indices.len()
                        ))
                        .primary(span, format!("shape of `{name}` is {shape:?}"))
                        .help(help),
                    );
                    return Ty::Error;
                }
                for (pos, &i) in indices.iter().enumerate() {
                    let ty = self.infer(i, env);
                    match ty {
                        Ty::Int => self.check_bounds(i, env, &name, pos, shape[pos]),
                        Ty::Error => {}
                        Ty::Val(Scalar::I32) => {
                            // An integer read from data: its value is unknown until run time.
                            let d = Diagnostic::error(format!("index of `{name}` depends on data"))
                                .primary(self.span(i), "this index is read at run time")
                                .note("indices are affine in index variables and dims (`i`, `i + C`, `2*i + 1`), so that every access is checked here")
                                .help(format!(
                                    "to pick the entry a data value names, compare it with an index: `sum(i) {name}[i] * select(i == {}, 1.0, 0.0)`",
                                    self.expr_text(i)
                                ));
                            self.error(d);
                        }
                        other => {
                            let d = Diagnostic::error(format!("index of `{name}` is {}", other.describe()))
                                .primary(self.span(i), "not an integer expression")
                                .help("indices are affine in index variables and dims: `i`, `i + C`, `2*i + 1`");
                            self.error(d);
                        }
                    }
                }
                Ty::Val(self.source_type(source))
            }
            Expr::Unary { op: UnaryOp::Neg, arg } => match self.infer(arg, env) {
                t @ (Ty::Cond | Ty::Val(Scalar::Bool)) => self.type_error(arg, "a number", t, "negate a condition with `!`"),
                t => t,
            },
            Expr::Unary { op: UnaryOp::Not, arg } => match self.infer(arg, env) {
                Ty::Cond => Ty::Cond,
                Ty::Val(Scalar::Bool) | Ty::Error => Ty::Val(Scalar::Bool),
                t => self.type_error(arg, "a bool", t, "`!` negates a condition; negate a number with `-`"),
            },
            Expr::Binary { op, lhs, rhs } if op.is_logic() => {
                let (a, b) = (self.infer(lhs, env), self.infer(rhs, env));
                for (h, t) in [(lhs, a), (rhs, b)] {
                    if !matches!(t, Ty::Cond | Ty::Val(Scalar::Bool) | Ty::Error) {
                        self.type_error(h, "a bool", t, "compare numbers first, e.g. `a > 0.0`");
                        return Ty::Error;
                    }
                }
                match (a, b) {
                    (Ty::Cond, Ty::Cond) => Ty::Cond,
                    _ => Ty::Val(Scalar::Bool),
                }
            }
            Expr::Binary { op, lhs, rhs } => {
                let (a, b) = (self.infer(lhs, env), self.infer(rhs, env));
                let t = self.unify(span, (lhs, a), (rhs, b));
                if op.is_comparison() {
                    return match t {
                        Ty::Int => Ty::Cond,
                        Ty::Error => Ty::Error,
                        Ty::Float => {
                            self.resolve(lhs, a, Scalar::F32);
                            self.resolve(rhs, b, Scalar::F32);
                            Ty::Val(Scalar::Bool)
                        }
                        _ => Ty::Val(Scalar::Bool),
                    };
                }
                match (op, t) {
                    (BinaryOp::Div, Ty::Val(Scalar::I32)) => {
                        self.error(
                            Diagnostic::error("integer division is not supported")
                                .primary(span, "both operands are i32")
                                .help("divide floats, or keep integer fields to indices and comparisons"),
                        );
                        Ty::Error
                    }
                    // An integer quotient is a float (`1 / C`), never a truncation.
                    (BinaryOp::Div, Ty::Int) => Ty::Float,
                    _ => t,
                }
            }
            Expr::Select { cond, then, otherwise } => {
                let c = self.infer(cond, env);
                let mut cond_ok = true;
                if !matches!(c, Ty::Cond | Ty::Val(Scalar::Bool) | Ty::Error) {
                    self.type_error(cond, "a bool", c, "write a comparison, e.g. `x.v > 0.0`");
                    cond_ok = false;
                }
                let (then_env, else_env) = if c == Ty::Cond { self.narrow(cond, env) } else { (env.clone(), env.clone()) };
                let a = self.infer(then, &then_env);
                let b = self.infer(otherwise, &else_env);
                let t = self.unify(span, (then, a), (otherwise, b));
                match t {
                    Ty::Int if c != Ty::Cond => Ty::Float,
                    _ if !cond_ok => Ty::Error,
                    _ => t,
                }
            }
            Expr::Call { func, args } => {
                let tys: Vec<Ty> = args.iter().map(|&a| self.infer(a, env)).collect();
                let mut t = tys[0];
                for k in 1..args.len() {
                    t = self.unify(span, (args[0], t), (args[k], tys[k]));
                }
                if func.float_only() {
                    match t {
                        Ty::Int | Ty::Float => Ty::Float,
                        Ty::Val(s) if s.is_float() => t,
                        Ty::Error => Ty::Error,
                        other => self.type_error(args[0], "a float", other, &format!("`{}` is defined on f32 and f64", func.name())),
                    }
                } else {
                    t
                }
            }
            Expr::Reduce { op, var, body } => {
                let Some(n) = self.infer_extent(var, body, Binding::Reduce(op)) else {
                    return Ty::Error;
                };
                self.info.extents[var.index()] = n;
                let mut inner = env.clone();
                inner.ranges.insert(var, (0, n as i64 - 1));
                match self.infer(body, &inner) {
                    t @ (Ty::Cond | Ty::Val(Scalar::Bool)) => {
                        self.type_error(body, "a number", t, &format!("`{}` reduces numbers", op.name()))
                    }
                    t => t,
                }
            }
        }
    }

    /// Fixes the type of an expression whose type adapts, checking it fits.
    fn resolve(&mut self, e: Handle<Expr>, ty: Ty, want: Scalar) {
        match ty {
            Ty::Error => {}
            Ty::Val(s) if s == want => {}
            Ty::Val(s) => {
                let help = match (s, want) {
                    (Scalar::Bool, _) => "turn a condition into a value with `select(c, 1.0, 0.0)`".to_string(),
                    _ => format!("psm converts no value implicitly; declare this field as `{}`", s.name()),
                };
                self.error(
                    Diagnostic::error(format!("expected {}, found {}", want.name(), s.name()))
                        .primary(self.span(e), format!("this is {}", s.name()))
                        .help(help),
                );
            }
            Ty::Int if want != Scalar::Bool => self.info.types[e.index()] = want,
            Ty::Cond if want == Scalar::Bool => {}
            Ty::Float if want.is_float() => {
                self.info.types[e.index()] = want;
                let children: Vec<Handle<Expr>> = match &self.agg.exprs[e] {
                    Expr::Select { then, otherwise, .. } => vec![*then, *otherwise],
                    Expr::Binary { op, lhs, rhs } if !op.is_comparison() => vec![*lhs, *rhs],
                    other => {
                        let mut v = Vec::new();
                        other.for_each_child(|c| v.push(c));
                        v
                    }
                };
                for c in children {
                    if let Some(t @ (Ty::Int | Ty::Float)) = self.inferred[c.index()] {
                        self.resolve(c, t, want);
                    }
                }
            }
            other => {
                let help = if want == Scalar::I32 && other == Ty::Float {
                    "i32 values hold integers; write an integer".to_string()
                } else {
                    String::new()
                };
                self.type_error(e, want.name(), other, &help);
            }
        }
    }

    fn check_bounds(&mut self, index: Handle<Expr>, env: &Env, name: &str, pos: usize, size: usize) {
        if env.dead {
            return;
        }
        let form = match affine(self.agg, &self.info.dims, index) {
            Ok(form) => form,
            Err(NotAffine::Shape) => {
                self.error(
                    Diagnostic::error(format!("index of `{name}` is not affine"))
                        .primary(self.span(index), "indices must be affine in index variables and dims")
                        .help("write sums of index variables times constants: `i`, `i + C`, `2*i + 1`, `u - C`"),
                );
                return;
            }
            Err(NotAffine::Overflow) => {
                self.error(
                    Diagnostic::error(format!("index of `{name}` overflows"))
                        .primary(self.span(index), "the constants of this index are too large to represent")
                        .help("indices stay within the tensor's shape; use small constants"),
                );
                return;
            }
        };
        let Some((lo, hi)) = self.interval(&form, env) else {
            self.error(
                Diagnostic::error(format!("index out of bounds on `{name}` dimension {pos}"))
                    .primary(self.span(index), "this index takes values too large to represent")
                    .note(format!("dimension {pos} of `{name}` has size {size}: valid indices are [0, {}]", size.saturating_sub(1))),
            );
            return;
        };
        let size = size as i128;
        if let (Expr::Index(v), [(_, 1)]) = (&self.agg.exprs[index], form.terms.as_slice()) {
            let extent = self.info.extents[v.index()] as i128;
            let narrowed = (lo, hi) != (0, extent - 1);
            if !narrowed && extent != size {
                let var = self.var_name(*v).to_string();
                let binder = self.agg.index_vars.span(*v);
                let mut d = Diagnostic::error(format!("shape mismatch: `{var}` ranges over {extent} values, `{name}` dimension {pos} has {size}"))
                    .primary(self.span(index), format!("`{var}` takes values in [0, {}] here", extent - 1));
                if binder != Span::NONE && binder != self.span(index) {
                    d = d.secondary(binder, format!("`{var}` is bound here, with extent {extent}"));
                }
                let help = if extent > size {
                    format!("guard the access with `if {var} < {size} {{ ... }} else {{ ... }}`, or use an index variable of extent {size}")
                } else {
                    format!("use an index variable of extent {size}: each index variable ranges over one size")
                };
                self.error(d.help(help));
                return;
            }
        }
        if lo < 0 || hi >= size {
            self.error(
                Diagnostic::error(format!("index out of bounds on `{name}` dimension {pos}"))
                    .primary(self.span(index), format!("this index takes values in [{lo}, {hi}]"))
                    .note(format!("dimension {pos} of `{name}` has size {size}: valid indices are [0, {}]", size - 1))
                    .help("narrow the index with a guard, e.g. `if u < C { ... } else { ... }`"),
            );
        }
    }

    /// The exact range of an affine form over the index ranges of `env`; `None` beyond
    /// 128 bits.
    fn interval(&self, form: &Affine, env: &Env) -> Option<(i128, i128)> {
        let (mut lo, mut hi) = (form.constant, form.constant);
        for &(v, c) in &form.terms {
            let (a, b) = env.ranges.get(&v).copied().unwrap_or((0, self.info.extents[v.index()] as i64 - 1));
            let (x, y) = ((a as i128).checked_mul(c)?, (b as i128).checked_mul(c)?);
            lo = lo.checked_add(x.min(y))?;
            hi = hi.checked_add(x.max(y))?;
        }
        Some((lo, hi))
    }

    /// The environments of the then- and else-branches of a guard.
    fn narrow(&self, cond: Handle<Expr>, env: &Env) -> (Env, Env) {
        let (mut then_env, mut else_env) = (env.clone(), env.clone());
        self.apply(cond, true, &mut then_env);
        self.apply(cond, false, &mut else_env);
        (then_env, else_env)
    }

    /// Narrows `env` by `cond == truth` where that is a conjunction of comparisons.
    fn apply(&self, cond: Handle<Expr>, truth: bool, env: &mut Env) {
        match &self.agg.exprs[cond] {
            Expr::Unary { op: UnaryOp::Not, arg } => self.apply(*arg, !truth, env),
            Expr::Binary { op: BinaryOp::And, lhs, rhs } if truth => {
                self.apply(*lhs, true, env);
                self.apply(*rhs, true, env);
            }
            Expr::Binary { op: BinaryOp::Or, lhs, rhs } if !truth => {
                self.apply(*lhs, false, env);
                self.apply(*rhs, false, env);
            }
            Expr::Binary { op, lhs, rhs } if op.is_comparison() => {
                let (Ok(a), Ok(b)) = (affine(self.agg, &self.info.dims, *lhs), affine(self.agg, &self.info.dims, *rhs)) else {
                    return;
                };
                // The comparison is evaluated on 64-bit integers (wrapping): it means what
                // the exact forms say only where both sides stay within 64 bits.
                let fits = |form: &Affine| {
                    self.interval(form, env).is_some_and(|(lo, hi)| lo >= i64::MIN as i128 && hi <= i64::MAX as i128)
                };
                if !fits(&a) || !fits(&b) {
                    return;
                }
                // d = lhs - rhs; each constraint below is `d' <= 0`.
                let Some(d) = a.add(b, -1) else { return };
                let op = if truth { *op } else { negate(*op) };
                let one = Affine::constant(1);
                let constraints: Vec<Option<Affine>> = match op {
                    BinaryOp::Lt => vec![d.add(one, 1)],
                    BinaryOp::Le => vec![Some(d)],
                    BinaryOp::Gt => vec![d.scale(-1).and_then(|n| n.add(one, 1))],
                    BinaryOp::Ge => vec![d.scale(-1)],
                    BinaryOp::Eq => vec![Some(d.clone()), d.scale(-1)],
                    _ => vec![],
                };
                for c in constraints.into_iter().flatten() {
                    self.bound(&c, env);
                }
            }
            _ => {}
        }
    }

    /// Narrows the one variable of `c*v + k <= 0`.
    fn bound(&self, form: &Affine, env: &mut Env) {
        match form.terms.as_slice() {
            [] if form.constant > 0 => env.dead = true,
            [(v, c)] => {
                let (c, k) = (*c, form.constant);
                let range = env.ranges.get(v).copied().unwrap_or((0, self.info.extents[v.index()] as i64 - 1));
                let (mut lo, mut hi) = (range.0 as i128, range.1 as i128);
                // `c*v <= -k`; both sides fit in i128 with room (|k| < 2^64 here).
                let (Some(neg_k), Some(neg_c)) = (k.checked_neg(), c.checked_neg()) else { return };
                if c > 0 {
                    hi = hi.min(neg_k.div_euclid(c));
                } else {
                    lo = lo.max(-(neg_k.div_euclid(neg_c)));
                }
                if lo > hi {
                    env.dead = true;
                }
                env.ranges.insert(*v, (lo.clamp(i64::MIN as i128, i64::MAX as i128) as i64, hi.clamp(i64::MIN as i128, i64::MAX as i128) as i64));
            }
            _ => {}
        }
    }
}

fn negate(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Lt => BinaryOp::Ge,
        BinaryOp::Le => BinaryOp::Gt,
        BinaryOp::Gt => BinaryOp::Le,
        BinaryOp::Ge => BinaryOp::Lt,
        BinaryOp::Eq => BinaryOp::Ne,
        BinaryOp::Ne => BinaryOp::Eq,
        other => other,
    }
}

