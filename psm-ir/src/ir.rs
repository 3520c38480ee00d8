//! The arena IR: one [`Aggregator`] per declared operator, its declarations, and the
//! tensor-comprehension bodies of lift, combine, readout and identity.
//!
//! The IR is dimension-generic: shapes are [`Size`] expressions over the declared dims,
//! resolved to numbers by validation ([`crate::valid`]) for one choice of dims. Names
//! are resolved: every access says what it reads (input field, element field of which
//! operand, param, or local).

use crate::arena::{Arena, Handle};
use crate::Span;

/// A parsed and name-resolved file: the aggregators in declaration order.
#[derive(Debug, Clone, Default)]
pub struct Module {
    pub aggregators: Vec<Aggregator>,
}

impl Module {
    pub fn aggregator(&self, name: &str) -> Option<&Aggregator> {
        self.aggregators.iter().find(|a| a.name == name)
    }
}

/// Storage type of a declared tensor.
///
/// `BF16` and `F16` are storage only (inputs, params, outputs): a load widens the
/// value to f32 exactly, arithmetic is f32, and a store rounds the f32 value to
/// nearest, ties to even ([`Dtype::round_to_storage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    I32,
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits (the upper half of an f32).
    BF16,
    /// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits.
    F16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I32 => "i32",
            Dtype::BF16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
    /// The type of the values read from and written to a tensor of this dtype.
    pub fn scalar(self) -> Scalar {
        match self {
            Dtype::F32 | Dtype::BF16 | Dtype::F16 => Scalar::F32,
            Dtype::F64 => Scalar::F64,
            Dtype::I32 => Scalar::I32,
        }
    }
    /// Bytes of one entry.
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 => 8,
        }
    }
    /// Whether the dtype is a 16-bit storage format (widened on load, rounded on store).
    pub fn is_half(self) -> bool {
        matches!(self, Dtype::BF16 | Dtype::F16)
    }
    /// The largest relative difference that storing in this dtype makes between two
    /// values that were close before: one unit in the last place of a 16-bit format
    /// at 1 (2^-7 for bf16, 2^-10 for f16; two values straddling a rounding boundary
    /// land one unit apart), 0 for the dtypes that store a computed value as it is.
    /// Tolerances against the f64 oracle add it.
    pub fn rounding_bound(self) -> f64 {
        match self {
            Dtype::BF16 => 2f64.powi(-7),
            Dtype::F16 => 2f64.powi(-10),
            Dtype::F32 | Dtype::F64 | Dtype::I32 => 0.0,
        }
    }
    /// The value a tensor of this dtype holds after `v` is stored in it: for the 16-bit
    /// formats, `v` rounded to f32 and then to the format, both to nearest with ties to
    /// even (NaN stays NaN, overflow gives ±inf, subnormals are kept); other dtypes
    /// return `v` unchanged. In declared precision `v` is an f32 value already, so
    /// the store rounds once, as every backend does.
    pub fn round_to_storage(self, v: f64) -> f64 {
        match self {
            Dtype::BF16 => half::bf16::from_f32(v as f32).to_f64(),
            Dtype::F16 => half::f16::from_f32(v as f32).to_f64(),
            Dtype::F32 | Dtype::F64 | Dtype::I32 => v,
        }
    }
}

/// Type of a value computed by an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    F32,
    F64,
    I32,
    Bool,
}

impl Scalar {
    pub fn name(self) -> &'static str {
        match self {
            Scalar::F32 => "f32",
            Scalar::F64 => "f64",
            Scalar::I32 => "i32",
            Scalar::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Scalar::F32 | Scalar::F64)
    }
}

/// A compile-time size, declared `<K = 64>` and overridable (`-D K=128`).
#[derive(Debug, Clone)]
pub struct Dim {
    pub name: String,
    pub default: Option<i64>,
}

/// A shape extent: an integer expression over dims.
#[derive(Debug, Clone)]
pub enum Size {
    Lit(i64),
    Dim(Handle<Dim>),
    Add(Handle<Size>, Handle<Size>),
    Sub(Handle<Size>, Handle<Size>),
    Mul(Handle<Size>, Handle<Size>),
}

/// What a declared tensor is to the aggregator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Read-only runtime tensor shared by all steps (`param`).
    Param,
    /// Per-step data (`input`).
    Input,
    /// A field of the scanned element (`element`).
    Element,
    /// A per-step result of the readout.
    Output,
}

impl Role {
    pub fn keyword(self) -> &'static str {
        match self {
            Role::Param => "param",
            Role::Input => "input",
            Role::Element => "element",
            Role::Output => "output",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub role: Role,
    pub shape: Vec<Handle<Size>>,
    pub dtype: Dtype,
}

/// An index variable: bound by a statement's left side, a `let`, or a reduction.
#[derive(Debug, Clone)]
pub struct IndexVar {
    pub name: String,
    /// Extent written by the user (`let z[u: 2*C] = ...`); otherwise validation infers it.
    pub extent: Option<Handle<Size>>,
}

/// A `let` tensor (or scalar), local to one body.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub indices: Vec<Handle<IndexVar>>,
}

/// Which element a body reads: combine's `l` (earlier) and `r` (later), or the
/// readout's state (`s`, inclusive; `p`, exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Left,
    Right,
    State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Input(Handle<Tensor>),
    Param(Handle<Tensor>),
    Element(Side, Handle<Tensor>),
    Local(Handle<Local>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne
        )
    }
    pub fn is_logic(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

/// Built-in functions. `min`/`max` propagate NaN (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Softplus,
    Abs,
    Min,
    Max,
    Pow,
}

impl Func {
    pub const ALL: [Func; 11] = [
        Func::Exp,
        Func::Log,
        Func::Sqrt,
        Func::Rsqrt,
        Func::Tanh,
        Func::Sigmoid,
        Func::Softplus,
        Func::Abs,
        Func::Min,
        Func::Max,
        Func::Pow,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Sqrt => "sqrt",
            Func::Rsqrt => "rsqrt",
            Func::Tanh => "tanh",
            Func::Sigmoid => "sigmoid",
            Func::Softplus => "softplus",
            Func::Abs => "abs",
            Func::Min => "min",
            Func::Max => "max",
            Func::Pow => "pow",
        }
    }
    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }
    pub fn arity(self) -> usize {
        match self {
            Func::Min | Func::Max | Func::Pow => 2,
            _ => 1,
        }
    }
    /// Functions defined on floats only (the rest also take `i32`).
    pub fn float_only(self) -> bool {
        !matches!(self, Func::Abs | Func::Min | Func::Max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Prod,
    Max,
    Min,
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A float literal (`1.0`, `inf`).
    Float(f64),
    /// An integer literal; adapts to the type its context needs.
    Int(i64),
    Dim(Handle<Dim>),
    Index(Handle<IndexVar>),
    Load { source: Source, indices: Vec<Handle<Expr>> },
    Unary { op: UnaryOp, arg: Handle<Expr> },
    Binary { op: BinaryOp, lhs: Handle<Expr>, rhs: Handle<Expr> },
    Call { func: Func, args: Vec<Handle<Expr>> },
    /// `if c { a } else { b }` and `select(c, a, b)`: only the chosen branch is evaluated.
    Select { cond: Handle<Expr>, then: Handle<Expr>, otherwise: Handle<Expr> },
    /// A sequential left fold over `var`'s extent; the empty fold is the op's identity.
    Reduce { op: ReduceOp, var: Handle<IndexVar>, body: Handle<Expr> },
    /// `empty(p)`: true in an exclusive readout at step 0 when no identity is declared.
    Empty,
}

impl Expr {
    /// Calls `f` on every direct child, in evaluation order.
    pub fn for_each_child(&self, mut f: impl FnMut(Handle<Expr>)) {
        match self {
            Expr::Float(_) | Expr::Int(_) | Expr::Dim(_) | Expr::Index(_) | Expr::Empty => {}
            Expr::Load { indices, .. } => indices.iter().for_each(|&i| f(i)),
            Expr::Unary { arg, .. } => f(*arg),
            Expr::Binary { lhs, rhs, .. } => {
                f(*lhs);
                f(*rhs)
            }
            Expr::Call { args, .. } => args.iter().for_each(|&a| f(a)),
            Expr::Select { cond, then, otherwise } => {
                f(*cond);
                f(*then);
                f(*otherwise)
            }
            Expr::Reduce { body, .. } => f(*body),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An element field (lift, combine, identity) or an output (readout).
    Tensor(Handle<Tensor>),
    Local(Handle<Local>),
}

/// `target[indices] = value;` — the indices range over the target's shape.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub target: Target,
    pub indices: Vec<Handle<IndexVar>>,
    pub value: Handle<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    Identity,
    Lift,
    Combine,
    Readout,
}

impl BodyKind {
    pub fn name(self) -> &'static str {
        match self {
            BodyKind::Identity => "identity",
            BodyKind::Lift => "lift",
            BodyKind::Combine => "combine",
            BodyKind::Readout => "readout",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Body {
    pub kind: BodyKind,
    /// The user's names for the body's arguments (`x`; `l, r`; `s, x`).
    pub params: Vec<String>,
    pub stmts: Vec<Stmt>,
    pub span: Span,
    /// Written by the front end because the user omitted it (default lift or readout).
    pub implicit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadoutKind {
    /// Reads s_t, the state after step t (for the fixed tree: p_{t+1}).
    Inclusive,
    /// Reads p_t, the state before step t.
    Exclusive,
}

impl ReadoutKind {
    pub fn name(self) -> &'static str {
        match self {
            ReadoutKind::Inclusive => "inclusive",
            ReadoutKind::Exclusive => "exclusive",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Aggregator {
    pub name: String,
    pub span: Span,
    /// The `///` lines before the item, without the slashes.
    pub doc: String,
    pub dims: Arena<Dim>,
    pub sizes: Arena<Size>,
    /// Params, inputs, element fields and outputs, in declaration order.
    pub tensors: Arena<Tensor>,
    pub index_vars: Arena<IndexVar>,
    pub locals: Arena<Local>,
    pub exprs: Arena<Expr>,
    /// `assume associative;`
    pub assume_associative: Option<Span>,
    pub identity: Option<Body>,
    pub lift: Body,
    pub combine: Body,
    pub readout: Body,
    pub readout_kind: ReadoutKind,
}

impl Aggregator {
    pub fn tensors_of(&self, role: Role) -> impl Iterator<Item = Handle<Tensor>> + '_ {
        self.tensors.iter().filter(move |(_, t)| t.role == role).map(|(h, _)| h)
    }
    pub fn element(&self) -> Vec<Handle<Tensor>> {
        self.tensors_of(Role::Element).collect()
    }
    pub fn find_tensor(&self, role: Role, name: &str) -> Option<Handle<Tensor>> {
        self.tensors_of(role).find(|&h| self.tensors[h].name == name)
    }
    pub fn find_dim(&self, name: &str) -> Option<Handle<Dim>> {
        self.dims.iter().find(|(_, d)| d.name == name).map(|(h, _)| h)
    }
    /// Every body, in the order lift, combine, readout, identity.
    pub fn bodies(&self) -> impl Iterator<Item = &Body> {
        [Some(&self.lift), Some(&self.combine), Some(&self.readout), self.identity.as_ref()]
            .into_iter()
            .flatten()
    }
}
