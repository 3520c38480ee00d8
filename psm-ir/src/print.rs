//! The IR's text form: stable (snapshot-tested), explicit where the source is implicit.
//! References are printed resolved (`in.k`, `left.a`, `right.s`, `state.s`,
//! `param.w`, `local.q`); with an [`Info`], every index shows its extent and every
//! `let` its type, so the text says exactly what validation decided.

use std::fmt::Write;

use crate::arena::Handle;
use crate::ir::*;
use crate::valid::Info;

pub fn module(module: &Module, infos: Option<&[Info]>) -> String {
    let mut out = String::new();
    for (k, agg) in module.aggregators.iter().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        out.push_str(&aggregator(agg, infos.and_then(|i| i.get(k))));
    }
    out
}

pub fn aggregator(agg: &Aggregator, info: Option<&Info>) -> String {
    let p = Printer { agg, info };
    let mut out = String::new();
    for line in agg.doc.lines() {
        let _ = writeln!(out, "/// {line}");
    }
    let dims: Vec<String> = agg
        .dims
        .iter()
        .map(|(h, d)| match (info, d.default) {
            (Some(i), _) => format!("{} = {}", d.name, i.dim(h)),
            (None, Some(v)) => format!("{} = {v}", d.name),
            (None, None) => d.name.clone(),
        })
        .collect();
    let dims = if dims.is_empty() { String::new() } else { format!("<{}>", dims.join(", ")) };
    let _ = writeln!(out, "aggregator {}{} {{", agg.name, dims);
    for role in [Role::Param, Role::Input, Role::Element, Role::Output] {
        let decls: Vec<String> = agg.tensors_of(role).map(|t| p.decl(t)).collect();
        if !decls.is_empty() {
            let _ = writeln!(out, "    {} {{ {} }}", role.keyword(), decls.join(", "));
        }
    }
    if agg.assume_associative.is_some() {
        out.push_str("    assume associative;\n");
    }
    if let Some(id) = &agg.identity {
        p.body(&mut out, "identity", id);
    }
    p.body(&mut out, &format!("lift({})", agg.lift.params.join(", ")), &agg.lift);
    p.body(&mut out, &format!("combine({})", agg.combine.params.join(", ")), &agg.combine);
    let head = format!("readout {}({})", agg.readout_kind.name(), agg.readout.params.join(", "));
    p.body(&mut out, &head, &agg.readout);
    out.push_str("}\n");
    out
}

/// One statement of a body as the text form prints it, without the `;` (backends
/// quote it in comments of the code they emit).
pub fn stmt(agg: &Aggregator, info: Option<&Info>, stmt: &Stmt) -> String {
    Printer { agg, info }.stmt(stmt)
}

struct Printer<'a> {
    agg: &'a Aggregator,
    info: Option<&'a Info>,
}

impl Printer<'_> {
    fn size(&self, s: Handle<Size>) -> String {
        match &self.agg.sizes[s] {
            Size::Lit(v) => v.to_string(),
            Size::Dim(d) => self.agg.dims[*d].name.clone(),
            Size::Add(a, b) => format!("({} + {})", self.size(*a), self.size(*b)),
            Size::Sub(a, b) => format!("({} - {})", self.size(*a), self.size(*b)),
            Size::Mul(a, b) => format!("{} * {}", self.size(*a), self.size(*b)),
        }
    }

    fn decl(&self, t: Handle<Tensor>) -> String {
        let tensor = &self.agg.tensors[t];
        let mut s = tensor.name.clone();
        if !tensor.shape.is_empty() {
            let dims: Vec<String> = tensor.shape.iter().map(|&d| self.size(d)).collect();
            let _ = write!(s, "[{}]", dims.join(", "));
        }
        let _ = write!(s, ": {}", tensor.dtype.name());
        if let Some(info) = self.info {
            if !tensor.shape.is_empty() {
                let _ = write!(s, " {:?}", info.shape(t));
            }
        }
        s
    }

    fn var(&self, v: Handle<IndexVar>) -> String {
        let name = &self.agg.index_vars[v].name;
        match self.info {
            Some(i) => format!("{name}: {}", i.extent(v)),
            None => match self.agg.index_vars[v].extent {
                Some(s) => format!("{name}: {}", self.size(s)),
                None => name.clone(),
            },
        }
    }

    fn body(&self, out: &mut String, head: &str, body: &Body) {
        let note = if body.implicit { "  // implicit" } else { "" };
        let _ = writeln!(out, "    {head} {{{note}");
        for stmt in &body.stmts {
            let _ = writeln!(out, "        {};", self.stmt(stmt));
        }
        out.push_str("    }\n");
    }

    fn stmt(&self, stmt: &Stmt) -> String {
        let vars: Vec<String> = stmt.indices.iter().map(|&v| self.var(v)).collect();
        let vars = if vars.is_empty() { String::new() } else { format!("[{}]", vars.join(", ")) };
        let value = self.expr(stmt.value, 0);
        match stmt.target {
            Target::Tensor(t) => format!("{}{vars} = {value}", self.agg.tensors[t].name),
            Target::Local(l) => {
                let ty = self.info.map(|i| format!(": {}", i.local_types[l.index()].name())).unwrap_or_default();
                format!("let {}{vars}{ty} = {value}", self.agg.locals[l].name)
            }
        }
    }

    fn source(&self, s: Source) -> String {
        let agg = self.agg;
        match s {
            Source::Input(t) => format!("in.{}", agg.tensors[t].name),
            Source::Param(t) => format!("param.{}", agg.tensors[t].name),
            Source::Element(Side::Left, t) => format!("left.{}", agg.tensors[t].name),
            Source::Element(Side::Right, t) => format!("right.{}", agg.tensors[t].name),
            Source::Element(Side::State, t) => format!("state.{}", agg.tensors[t].name),
            Source::Local(l) => format!("local.{}", agg.locals[l].name),
        }
    }

    /// Prints with the fewest parentheses that keep the tree unambiguous.
    fn expr(&self, e: Handle<Expr>, outer: u8) -> String {
        let (text, prec) = match &self.agg.exprs[e] {
            Expr::Float(v) if v.is_infinite() => ((if *v > 0.0 { "inf" } else { "-inf" }).to_string(), 9),
            Expr::Float(v) => (format!("{v:?}"), 9),
            Expr::Int(v) => (v.to_string(), 9),
            Expr::Dim(d) => (self.agg.dims[*d].name.clone(), 9),
            Expr::Index(v) => (self.agg.index_vars[*v].name.clone(), 9),
            Expr::Empty => ("empty(state)".to_string(), 9),
            Expr::Load { source, indices } => {
                let idx: Vec<String> = indices.iter().map(|&i| self.expr(i, 0)).collect();
                let idx = if idx.is_empty() { String::new() } else { format!("[{}]", idx.join(", ")) };
                (format!("{}{idx}", self.source(*source)), 9)
            }
            Expr::Unary { op, arg } => {
                let sym = if *op == UnaryOp::Neg { "-" } else { "!" };
                (format!("{sym}{}", self.expr(*arg, 8)), 8)
            }
            Expr::Binary { op, lhs, rhs } => {
                let prec = match op {
                    BinaryOp::Or => 1,
                    BinaryOp::And => 2,
                    o if o.is_comparison() => 3,
                    BinaryOp::Add | BinaryOp::Sub => 4,
                    _ => 5,
                };
                // Left-associative: the right operand of an equal-precedence op needs parentheses.
                (format!("{} {} {}", self.expr(*lhs, prec), op.symbol(), self.expr(*rhs, prec + 1)), prec)
            }
            Expr::Call { func, args } => {
                let args: Vec<String> = args.iter().map(|&a| self.expr(a, 0)).collect();
                (format!("{}({})", func.name(), args.join(", ")), 9)
            }
            Expr::Select { cond, then, otherwise } => (
                format!("select({}, {}, {})", self.expr(*cond, 0), self.expr(*then, 0), self.expr(*otherwise, 0)),
                9,
            ),
            // A reduction's body extends as far right as it can: parenthesise it inside any product.
            Expr::Reduce { op, var, body } => (format!("{}({}) {}", op.name(), self.var(*var), self.expr(*body, 5)), 4),
        };
        if prec < outer {
            format!("({text})")
        } else {
            text
        }
    }
}
