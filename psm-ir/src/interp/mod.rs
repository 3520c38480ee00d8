//! The reference interpreter: the single definition of what an aggregator computes.
//!
//! [`Evaluator`] walks the validated bodies (lift, combine, readout, identity) over
//! values of any [`Domain`]: [`FloatDomain`] gives the numbers (exact f64 or rounded to
//! the declared types), and the algebra reuses the same walk over symbolic values, so
//! there is one reading of every body.
//!
//! Semantics every backend reproduces:
//! * index loops run row-major over the target's shape; statements run in order;
//! * a reduction is the sequential left fold `((e0 ∘ e1) ∘ e2) ...` over its index;
//! * `if`/`select` evaluate only the chosen branch;
//! * `min`/`max` (and the `min`/`max` reductions) are IEEE 754-2019 minimum/maximum:
//!   they propagate NaN and order -0 below +0;
//! * `rsqrt(x) = 1 / sqrt(x)`; `sigmoid(x) = 1 / (1 + exp(-x))`;
//!   `softplus(x) = max(x, 0) + log(1 + exp(-|x|))`; no fused multiply-add;
//! * i32 arithmetic wraps; an integer constant (dims, literals, index arithmetic) is
//!   computed exactly and then converted to its type: rounded to f32, or wrapped to i32;
//! * in `Precision::Declared` every value is held in its declared type, the data too:
//!   `derive::run` converts inputs and params before the first body reads them;
//! * `bf16`/`f16` tensors (inputs, params, outputs; never element fields) hold values
//!   of their format in both precisions: a read gives the value exactly as an f32, and
//!   an output is rounded to the format when written (`Dtype::round_to_storage`: to
//!   f32, then to the format, nearest with ties to even).

mod float;

pub use float::{FloatDomain, Precision};

use crate::arena::Handle;
use crate::ir::*;
use crate::valid::Info;

/// The values an [`Evaluator`] computes with, and the operations on them.
pub trait Domain {
    type V: Clone;
    type Error;
    /// A literal or an exactly computed integer/bool, converted to `ty`.
    fn constant(&mut self, value: f64, ty: Scalar) -> Self::V;
    fn unary(&mut self, op: UnaryOp, ty: Scalar, a: &Self::V) -> Result<Self::V, Self::Error>;
    /// `ty` is the operands' type (both sides have it after validation).
    fn binary(&mut self, op: BinaryOp, ty: Scalar, a: &Self::V, b: &Self::V) -> Result<Self::V, Self::Error>;
    fn call(&mut self, func: Func, ty: Scalar, args: &[Self::V]) -> Result<Self::V, Self::Error>;
    /// Decides a data-dependent condition.
    fn truth(&mut self, cond: &Self::V) -> Result<bool, Self::Error>;
    /// The value an output of storage type `dtype` holds once `value` is written to it
    /// (`Dtype::round_to_storage`). Domains without a rounding (symbolic ones) keep
    /// the value.
    fn store(&mut self, value: Self::V, dtype: Dtype) -> Self::V {
        let _ = dtype;
        value
    }
}

/// A tuple of tensors, one flat row-major `Vec` per field, in declaration order of
/// its role (element fields, inputs of one step, params, or outputs).
pub type Fields<V> = Vec<Vec<V>>;

/// What a body reads.
struct Frame<'a, V> {
    params: &'a [Vec<V>],
    input: Option<&'a [Vec<V>]>,
    left: Option<&'a [Vec<V>]>,
    right: Option<&'a [Vec<V>]>,
    state: Option<&'a [Vec<V>]>,
    empty: bool,
}

impl<V> Clone for Frame<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Frame<'_, V> {}

/// Evaluates the bodies of one validated aggregator.
pub struct Evaluator<'a> {
    pub agg: &'a Aggregator,
    pub info: &'a Info,
    /// Position of each tensor within its role's field list.
    position: Vec<usize>,
}

impl<'a> Evaluator<'a> {
    pub fn new(agg: &'a Aggregator, info: &'a Info) -> Self {
        let mut counts = std::collections::HashMap::new();
        let position = agg
            .tensors
            .iter()
            .map(|(_, t)| {
                let c = counts.entry(t.role).or_insert(0usize);
                *c += 1;
                *c - 1
            })
            .collect();
        Evaluator { agg, info, position }
    }

    /// The tensors of one role, in order: how `Fields` are laid out.
    pub fn fields(&self, role: Role) -> Vec<Handle<Tensor>> {
        self.agg.tensors_of(role).collect()
    }

    pub fn lift<D: Domain>(&self, d: &mut D, params: &[Vec<D::V>], x: &[Vec<D::V>]) -> Result<Fields<D::V>, D::Error> {
        let frame = Frame { params, input: Some(x), left: None, right: None, state: None, empty: false };
        self.run(d, &self.agg.lift, frame, Role::Element)
    }

    /// `combine(l, r)`, `l` the earlier operand.
    pub fn combine<D: Domain>(
        &self,
        d: &mut D,
        params: &[Vec<D::V>],
        l: &[Vec<D::V>],
        r: &[Vec<D::V>],
    ) -> Result<Fields<D::V>, D::Error> {
        let frame = Frame { params, input: None, left: Some(l), right: Some(r), state: None, empty: false };
        self.run(d, &self.agg.combine, frame, Role::Element)
    }

    /// The readout of one step. `state` is s_t (inclusive) or p_t (exclusive); `empty`
    /// says p_t is the flagged identity of step 0, and `state` then holds the declared
    /// identity or zeros.
    pub fn readout<D: Domain>(
        &self,
        d: &mut D,
        params: &[Vec<D::V>],
        state: &[Vec<D::V>],
        x: &[Vec<D::V>],
        empty: bool,
    ) -> Result<Fields<D::V>, D::Error> {
        let frame = Frame { params, input: Some(x), left: None, right: None, state: Some(state), empty };
        self.run(d, &self.agg.readout, frame, Role::Output)
    }

    /// The declared identity, if any.
    pub fn identity<D: Domain>(&self, d: &mut D, params: &[Vec<D::V>]) -> Option<Result<Fields<D::V>, D::Error>> {
        let body = self.agg.identity.as_ref()?;
        let frame = Frame { params, input: None, left: None, right: None, state: None, empty: false };
        Some(self.run(d, body, frame, Role::Element))
    }

    /// An element of zeros: what an exclusive readout reads at step 0 without a
    /// declared identity.
    pub fn zeros<D: Domain>(&self, d: &mut D) -> Fields<D::V> {
        self.fields(Role::Element)
            .into_iter()
            .map(|t| vec![d.constant(0.0, self.agg.tensors[t].dtype.scalar()); self.info.len(t)])
            .collect()
    }

    fn run<D: Domain>(&self, d: &mut D, body: &Body, frame: Frame<'_, D::V>, role: Role) -> Result<Fields<D::V>, D::Error> {
        let mut out: Vec<Vec<D::V>> = self
            .fields(role)
            .into_iter()
            .map(|t| Vec::with_capacity(self.info.len(t)))
            .collect();
        let mut locals: Vec<Vec<D::V>> = vec![Vec::new(); self.agg.locals.len()];
        let mut env = vec![0i64; self.agg.index_vars.len()];
        for stmt in &body.stmts {
            let extents: Vec<usize> = stmt.indices.iter().map(|&v| self.info.extent(v)).collect();
            let total: usize = extents.iter().product();
            let mut values = Vec::with_capacity(total);
            for flat in 0..total {
                let mut rest = flat;
                for (&v, &n) in stmt.indices.iter().zip(&extents).rev() {
                    env[v.index()] = (rest % n) as i64;
                    rest /= n;
                }
                let ctx = Ctx { eval: self, frame, locals: &locals };
                values.push(ctx.eval(d, stmt.value, &mut env)?);
            }
            match stmt.target {
                Target::Tensor(t) => {
                    let dtype = self.agg.tensors[t].dtype;
                    if dtype.is_half() {
                        values = values.into_iter().map(|v| d.store(v, dtype)).collect();
                    }
                    out[self.position[t.index()]] = values;
                }
                Target::Local(l) => locals[l.index()] = values,
            }
        }
        Ok(out)
    }
}

/// The exact integer meaning of a binary operation on index values, dims and integer
/// literals (booleans as 0/1): wrapping i64 arithmetic, and a quotient of 0 where i64
/// division is undefined. Backends folding or emitting integer expressions use this.
pub fn int_binary(op: BinaryOp, a: i64, b: i64) -> i64 {
    match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div => a.checked_div(b).unwrap_or(0),
        BinaryOp::Lt => (a < b) as i64,
        BinaryOp::Le => (a <= b) as i64,
        BinaryOp::Gt => (a > b) as i64,
        BinaryOp::Ge => (a >= b) as i64,
        BinaryOp::Eq => (a == b) as i64,
        BinaryOp::Ne => (a != b) as i64,
        BinaryOp::And => (a != 0 && b != 0) as i64,
        BinaryOp::Or => (a != 0 || b != 0) as i64,
    }
}

struct Ctx<'e, 'a, V> {
    eval: &'e Evaluator<'a>,
    frame: Frame<'e, V>,
    locals: &'e [Vec<V>],
}

impl<V: Clone> Ctx<'_, '_, V> {
    fn eval<D: Domain<V = V>>(&self, d: &mut D, e: Handle<Expr>, env: &mut [i64]) -> Result<V, D::Error> {
        let info = self.eval.info;
        let ty = info.ty(e);
        if info.constant[e.index()] {
            return Ok(d.constant(self.eval_int(e, env) as f64, ty));
        }
        Ok(match &self.eval.agg.exprs[e] {
            Expr::Float(v) => d.constant(*v, ty),
            Expr::Empty => d.constant(if self.frame.empty { 1.0 } else { 0.0 }, Scalar::Bool),
            Expr::Load { source, indices } => self.load(*source, indices, env).clone(),
            Expr::Unary { op, arg } => {
                let a = self.eval(d, *arg, env)?;
                d.unary(*op, info.ty(*arg), &a)?
            }
            Expr::Binary { op, lhs, rhs } => {
                let a = self.eval(d, *lhs, env)?;
                let b = self.eval(d, *rhs, env)?;
                d.binary(*op, info.ty(*lhs), &a, &b)?
            }
            Expr::Call { func, args } => {
                let values = args.iter().map(|&a| self.eval(d, a, env)).collect::<Result<Vec<_>, _>>()?;
                d.call(*func, info.ty(args[0]), &values)?
            }
            Expr::Select { cond, then, otherwise } => {
                let c = self.eval(d, *cond, env)?;
                if d.truth(&c)? {
                    self.eval(d, *then, env)?
                } else {
                    self.eval(d, *otherwise, env)?
                }
            }
            Expr::Reduce { op, var, body } => {
                let n = info.extent(*var);
                env[var.index()] = 0;
                let mut acc = self.eval(d, *body, env)?;
                for k in 1..n {
                    env[var.index()] = k as i64;
                    let next = self.eval(d, *body, env)?;
                    acc = match op {
                        ReduceOp::Sum => d.binary(BinaryOp::Add, ty, &acc, &next)?,
                        ReduceOp::Prod => d.binary(BinaryOp::Mul, ty, &acc, &next)?,
                        ReduceOp::Max => d.call(Func::Max, ty, &[acc, next])?,
                        ReduceOp::Min => d.call(Func::Min, ty, &[acc, next])?,
                    };
                }
                acc
            }
            Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) => unreachable!("integer leaves are constant"),
        })
    }

    fn load(&self, source: Source, indices: &[Handle<Expr>], env: &mut [i64]) -> &V {
        let info = self.eval.info;
        let (data, shape): (&[V], &[usize]) = match source {
            Source::Local(l) => (&self.locals[l.index()], &info.local_shapes[l.index()]),
            Source::Input(t) | Source::Param(t) | Source::Element(_, t) => {
                let fields = match source {
                    Source::Input(_) => self.frame.input,
                    Source::Param(_) => Some(self.frame.params),
                    Source::Element(Side::Left, _) => self.frame.left,
                    Source::Element(Side::Right, _) => self.frame.right,
                    _ => self.frame.state,
                };
                let fields = fields.expect("validation admits only the body's own operands");
                (&fields[self.eval.position[t.index()]], info.shape(t))
            }
        };
        let mut offset = 0usize;
        for (&i, &n) in indices.iter().zip(shape) {
            offset = offset * n + self.eval_int(i, env) as usize;
        }
        &data[offset]
    }

    /// Exact value of an integer or boolean expression of index variables and dims.
    fn eval_int(&self, e: Handle<Expr>, env: &mut [i64]) -> i64 {
        let agg = self.eval.agg;
        match &agg.exprs[e] {
            Expr::Int(v) => *v,
            Expr::Dim(d) => self.eval.info.dim(*d),
            Expr::Index(v) => env[v.index()],
            Expr::Unary { op: UnaryOp::Neg, arg } => self.eval_int(*arg, env).wrapping_neg(),
            Expr::Unary { op: UnaryOp::Not, arg } => (self.eval_int(*arg, env) == 0) as i64,
            Expr::Binary { op, lhs, rhs } => {
                let (a, b) = (self.eval_int(*lhs, env), self.eval_int(*rhs, env));
                int_binary(*op, a, b)
            }
            Expr::Select { cond, then, otherwise } => {
                if self.eval_int(*cond, env) != 0 {
                    self.eval_int(*then, env)
                } else {
                    self.eval_int(*otherwise, env)
                }
            }
            Expr::Call { func, args } => {
                let a = self.eval_int(args[0], env);
                match func {
                    Func::Abs => a.wrapping_abs(),
                    Func::Min => a.min(self.eval_int(args[1], env)),
                    Func::Max => a.max(self.eval_int(args[1], env)),
                    _ => unreachable!("float functions are never integer-valued"),
                }
            }
            Expr::Reduce { op, var, body } => {
                let n = self.eval.info.extent(*var);
                let mut acc = None::<i64>;
                for k in 0..n {
                    env[var.index()] = k as i64;
                    let v = self.eval_int(*body, env);
                    acc = Some(match (acc, op) {
                        (None, _) => v,
                        (Some(a), ReduceOp::Sum) => a.wrapping_add(v),
                        (Some(a), ReduceOp::Prod) => a.wrapping_mul(v),
                        (Some(a), ReduceOp::Max) => a.max(v),
                        (Some(a), ReduceOp::Min) => a.min(v),
                    });
                }
                acc.unwrap_or(0)
            }
            Expr::Float(_) | Expr::Load { .. } | Expr::Empty => unreachable!("not an integer expression"),
        }
    }
}
