//! The syntax tree of a `.psm` file, as written: names unresolved, spans everywhere.

use crate::ir::{BinaryOp, ReadoutKind, ReduceOp, Role, UnaryOp};
use crate::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct File {
    pub aggregators: Vec<Aggregator>,
}

#[derive(Debug, Clone)]
pub struct Aggregator {
    pub doc: String,
    pub name: Ident,
    pub dims: Vec<DimDecl>,
    pub items: Vec<Item>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct DimDecl {
    pub name: Ident,
    pub default: Option<(i64, Span)>,
}

#[derive(Debug, Clone)]
pub enum Item {
    Decls { role: Role, decls: Vec<Decl>, span: Span },
    Identity { body: Block },
    Lift { input: Ident, body: Block },
    Combine { left: Ident, right: Ident, body: Block },
    Readout { kind: ReadoutKind, state: Ident, input: Ident, outputs: Vec<Decl>, body: Block },
    Assume { property: Ident, span: Span },
}

#[derive(Debug, Clone)]
pub struct Decl {
    pub name: Ident,
    pub shape: Vec<SizeExpr>,
    pub dtype: Option<Ident>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum SizeKind {
    Int(i64),
    Name(String),
    Binary(char, Box<SizeExpr>, Box<SizeExpr>),
}

#[derive(Debug, Clone)]
pub struct SizeExpr {
    pub kind: SizeKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    /// The span of the keyword and header, for "missing assignment" errors.
    pub head: Span,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Binder {
    pub name: Ident,
    pub extent: Option<SizeExpr>,
}

#[derive(Debug, Clone)]
pub struct Stmt {
    pub is_let: bool,
    pub target: Ident,
    pub binders: Vec<Binder>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum ExprKind {
    Float(f64),
    Int(i64),
    /// `name`, `name[i, j]`, `base.field`, `base.field[i]`.
    Access { base: Ident, field: Option<Ident>, indices: Option<Vec<Expr>> },
    Call { func: Ident, args: Vec<Expr> },
    Unary { op: UnaryOp, arg: Box<Expr> },
    Binary { op: BinaryOp, lhs: Box<Expr>, rhs: Box<Expr> },
    If { cond: Box<Expr>, then: Box<Expr>, otherwise: Box<Expr> },
    Reduce { op: ReduceOp, var: Ident, body: Box<Expr> },
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}
