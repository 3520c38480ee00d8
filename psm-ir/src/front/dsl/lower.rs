//! [`ast`](super::ast) → [`ir`](crate::ir): name resolution, default lift and readout,
//! and every error that needs only names (unknown, duplicate, misplaced).

use std::collections::HashMap;

use super::ast;
use crate::arena::{Arena, Handle};
use crate::ir::*;
use crate::{Diagnostic, Span};

pub fn lower(file: &ast::File) -> Result<Module, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut module = Module::default();
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for agg in &file.aggregators {
        if diags.len() > MAX_ERRORS {
            break;
        }
        if let Some(first) = seen.get(agg.name.name.as_str()) {
            diags.push(
                Diagnostic::error(format!("duplicate aggregator `{}`", agg.name.name))
                    .primary(agg.name.span, "declared again here")
                    .secondary(*first, "first declared here")
                    .help("give each aggregator of a file its own name"),
            );
            continue;
        }
        seen.insert(&agg.name.name, agg.name.span);
        if let Some(a) = AggregatorLowering::new(agg, &mut diags).run() {
            module.aggregators.push(a);
        }
    }
    if diags.is_empty() {
        Ok(module)
    } else {
        Err(cap(diags))
    }
}

/// Most errors reported for one file; past them lowering and validation stop early.
pub(crate) const MAX_ERRORS: usize = 100;

/// Keeps the first [`MAX_ERRORS`] diagnostics and says that more were left out.
pub(crate) fn cap(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    if diags.len() > MAX_ERRORS {
        diags.truncate(MAX_ERRORS);
        diags.push(
            Diagnostic::error(format!("too many errors: stopped after {MAX_ERRORS}"))
                .note("fix the errors above first; the rest were not checked"),
        );
    }
    diags
}

/// The closest of `candidates` to `name`, for "did you mean" hints: a different
/// case (`k` for `K`), or at most one edit in three characters (a transposition counts
/// as one edit), and never a name that shares nothing with it (`N` for `K`).
pub(crate) fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        // Optimal string alignment distance.
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }
    // Names are short; a pathological one is not worth a quadratic table, nor are
    // thousands of candidates: the work per hint is bounded.
    const BUDGET: usize = 1 << 18;
    if name.len() > 64 {
        return None;
    }
    let n = name.chars().count();
    let mut spent = 0usize;
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c == name || c.len() > 64 {
            continue;
        }
        let m = c.chars().count();
        let limit = (n.max(m) / 3).max(1).min(n.min(m).saturating_sub(1));
        let d = if c.eq_ignore_ascii_case(name) {
            0
        } else {
            // The distance is at least the difference in length.
            if n.abs_diff(m) > limit {
                continue;
            }
            spent += n * m;
            if spent > BUDGET {
                break;
            }
            distance(name, c)
        };
        if d <= limit && (d == 0 || d < n.min(m)) && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// The keyword and header of a body item, for labels.
fn item_head(item: &ast::Item) -> Option<Span> {
    match item {
        ast::Item::Identity { body } | ast::Item::Lift { body, .. } | ast::Item::Combine { body, .. } | ast::Item::Readout { body, .. } => {
            Some(body.head)
        }
        _ => None,
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    }
}

struct AggregatorLowering<'a> {
    ast: &'a ast::Aggregator,
    diags: &'a mut Vec<Diagnostic>,
    errors_before: usize,
    dims: Arena<Dim>,
    sizes: Arena<Size>,
    tensors: Arena<Tensor>,
    index_vars: Arena<IndexVar>,
    locals: Arena<Local>,
    exprs: Arena<Expr>,
    /// Name lookups in constant time: a file may declare thousands of names.
    tensor_index: HashMap<(Role, String), Handle<Tensor>>,
    dim_index: HashMap<String, Handle<Dim>>,
}

/// What the names of one body refer to.
struct Scope {
    kind: BodyKind,
    /// Argument name → what `name.field` reads.
    args: Vec<(String, Arg)>,
    locals: Vec<(String, Handle<Local>)>,
    local_index: HashMap<String, Handle<Local>>,
    indices: Vec<(String, Handle<IndexVar>)>,
    /// The exclusive readout's state argument, the one `empty(p)` may name.
    exclusive_state: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Arg {
    Input,
    Element(Side),
}

impl<'a> AggregatorLowering<'a> {
    fn new(ast: &'a ast::Aggregator, diags: &'a mut Vec<Diagnostic>) -> Self {
        let errors_before = diags.len();
        AggregatorLowering {
            ast,
            diags,
            errors_before,
            dims: Arena::new(),
            sizes: Arena::new(),
            tensors: Arena::new(),
            index_vars: Arena::new(),
            locals: Arena::new(),
            exprs: Arena::new(),
            tensor_index: HashMap::new(),
            dim_index: HashMap::new(),
        }
    }

    fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn run(mut self) -> Option<Aggregator> {
        let ast = self.ast;
        for d in &ast.dims {
            if self.diags.len() > MAX_ERRORS {
                break;
            }
            if self.dim_index.contains_key(&d.name.name) {
                self.error(
                    Diagnostic::error(format!("dim `{}` is declared twice", d.name.name))
                        .primary(d.name.span, "declared again here"),
                );
                continue;
            }
            let h = self.dims.push(Dim { name: d.name.name.clone(), default: d.default.map(|(v, _)| v) }, d.name.span);
            self.dim_index.insert(d.name.name.clone(), h);
        }

        let mut identity = None;
        let mut lift = None;
        let mut combine = None;
        let mut readout = None;
        let mut assume = None;
        let mut sections: HashMap<Role, Span> = HashMap::new();
        // Declarations first: bodies may name any of them regardless of order.
        for item in &ast.items {
            if let ast::Item::Decls { role, decls, span } = item {
                if let Some(first) = sections.insert(*role, *span) {
                    self.error(
                        Diagnostic::error(format!("second `{}` section", role.keyword()))
                            .primary(*span, "declared again here")
                            .secondary(first, "first declared here")
                            .help("list all the fields in one section"),
                    );
                    continue;
                }
                for d in decls {
                    if self.diags.len() > MAX_ERRORS {
                        break;
                    }
                    self.declare(*role, d);
                }
            }
        }
        for item in &ast.items {
            let (slot, name, head): (&mut Option<&ast::Item>, &str, Span) = match item {
                ast::Item::Decls { .. } => continue,
                ast::Item::Identity { body } => (&mut identity, "identity", body.head),
                ast::Item::Lift { body, .. } => (&mut lift, "lift", body.head),
                ast::Item::Combine { body, .. } => (&mut combine, "combine", body.head),
                ast::Item::Readout { body, .. } => (&mut readout, "readout", body.head),
                ast::Item::Assume { property, span } => {
                    if property.name != "associative" {
                        self.error(
                            Diagnostic::error(format!("unknown property `{}`", property.name))
                                .primary(property.span, "not a property psm can assume")
                                .help("write `assume associative;`"),
                        );
                    } else if assume.replace(*span).is_some() {
                        self.error(Diagnostic::error("`assume associative;` is written twice").primary(*span, "again here"));
                    }
                    continue;
                }
            };
            if let Some(first) = *slot {
                let mut d = Diagnostic::error(format!("second `{name}` in aggregator `{}`", ast.name.name))
                    .primary(head, "defined again here");
                if let Some(first) = item_head(first) {
                    d = d.secondary(first, "first defined here");
                }
                let d = d.help(format!("an aggregator has at most one `{name}`; merge the two or remove one"));
                self.error(d);
                continue;
            }
            *slot = Some(item);
        }
        let no_element = !sections.contains_key(&Role::Element);
        if no_element {
            let example = match self.names_of(Role::Input).first() {
                Some(f) => format!("`element {{ {f} }}`"),
                None => "`element { s[K] }`".to_string(),
            };
            self.error(
                Diagnostic::error(format!("aggregator `{}` declares no element", ast.name.name))
                    .primary(ast.name.span, "missing `element { ... }`")
                    .help(format!("declare the scanned value, e.g. {example}")),
            );
        }
        let Some(ast::Item::Combine { left, right, body }) = combine else {
            self.error(
                Diagnostic::error(format!("aggregator `{}` has no combine", ast.name.name))
                    .primary(ast.name.span, "missing `combine(l, r) { ... }`")
                    .help("write how two elements merge, the earlier one on the left"),
            );
            return None;
        };
        if no_element {
            // Every body would report every field it names as unknown: stop here.
            return None;
        }

        // Readout outputs are declared before any body is lowered.
        let (readout_kind, readout_args) = match readout {
            Some(ast::Item::Readout { kind, state, input, outputs, .. }) => {
                for d in outputs {
                    self.declare(Role::Output, d);
                }
                (*kind, Some((state.clone(), input.clone())))
            }
            _ => {
                for h in self.tensors_of(Role::Element) {
                    let t = self.tensors[h].clone();
                    let span = self.tensors.span(h);
                    let name = t.name.clone();
                    let out = self.tensors.push(Tensor { role: Role::Output, ..t }, span);
                    self.tensor_index.insert((Role::Output, name), out);
                }
                (ReadoutKind::Inclusive, None)
            }
        };

        if left.name == right.name {
            self.error(
                Diagnostic::error("combine's two arguments have the same name")
                    .primary(right.span, "already the name of the left argument")
                    .help("name them apart, e.g. `combine(l, r)`"),
            );
        }
        let combine_scope = self.scope(
            BodyKind::Combine,
            vec![(left.name.clone(), Arg::Element(Side::Left)), (right.name.clone(), Arg::Element(Side::Right))],
        );
        let combine = self.body(combine_scope, body, vec![left.name.clone(), right.name.clone()]);

        let lift = match lift {
            Some(ast::Item::Lift { input, body }) => {
                let scope = self.scope(BodyKind::Lift, vec![(input.name.clone(), Arg::Input)]);
                self.body(scope, body, vec![input.name.clone()])
            }
            _ => self.default_lift(),
        };
        let identity = identity.map(|item| {
            let ast::Item::Identity { body } = item else { unreachable!() };
            let scope = self.scope(BodyKind::Identity, Vec::new());
            self.body(scope, body, Vec::new())
        });
        let readout = match (readout, readout_args) {
            (Some(ast::Item::Readout { body, .. }), Some((state, input))) => {
                if state.name == input.name {
                    self.error(
                        Diagnostic::error("readout's two arguments have the same name")
                            .primary(input.span, "already the name of the state argument")
                            .help("name them apart, e.g. `readout inclusive(s, x)`"),
                    );
                }
                let mut scope = self.scope(
                    BodyKind::Readout,
                    vec![(state.name.clone(), Arg::Element(Side::State)), (input.name.clone(), Arg::Input)],
                );
                if readout_kind == ReadoutKind::Exclusive {
                    scope.exclusive_state = Some(state.name.clone());
                }
                self.body(scope, body, vec![state.name.clone(), input.name.clone()])
            }
            _ => self.default_readout(),
        };

        if self.diags.len() > self.errors_before {
            return None;
        }
        Some(Aggregator {
            name: ast.name.name.clone(),
            span: ast.span,
            doc: ast.doc.clone(),
            dims: self.dims,
            sizes: self.sizes,
            tensors: self.tensors,
            index_vars: self.index_vars,
            locals: self.locals,
            exprs: self.exprs,
            assume_associative: assume,
            identity,
            lift,
            combine,
            readout,
            readout_kind,
        })
    }

    fn tensors_of(&self, role: Role) -> Vec<Handle<Tensor>> {
        self.tensors.iter().filter(|(_, t)| t.role == role).map(|(h, _)| h).collect()
    }

    fn names_of(&self, role: Role) -> Vec<String> {
        self.tensors_of(role).into_iter().map(|h| self.tensors[h].name.clone()).collect()
    }

    fn find(&self, role: Role, name: &str) -> Option<Handle<Tensor>> {
        self.tensor_index.get(&(role, name.to_string())).copied()
    }

    fn find_dim(&self, name: &str) -> Option<Handle<Dim>> {
        self.dim_index.get(name).copied()
    }

    fn declare(&mut self, role: Role, d: &ast::Decl) {
        if let Some(prev) = self.find(role, &d.name.name) {
            let first = self.tensors.span(prev);
            self.error(
                Diagnostic::error(format!("`{}` is declared twice in `{}`", d.name.name, role.keyword()))
                    .primary(d.name.span, "declared again here")
                    .secondary(first, "first declared here"),
            );
            return;
        }
        if role == Role::Param && self.find_dim(&d.name.name).is_some() {
            self.error(
                Diagnostic::error(format!("param `{}` has the name of a dim", d.name.name))
                    .primary(d.name.span, "a bare name would be ambiguous")
                    .help("rename the param or the dim"),
            );
            return;
        }
        let dtype = match &d.dtype {
            None => Dtype::F32,
            Some(t) => match t.name.as_str() {
                "f32" => Dtype::F32,
                "f64" => Dtype::F64,
                "i32" => Dtype::I32,
                "bf16" => Dtype::BF16,
                "f16" => Dtype::F16,
                other => {
                    self.error(
                        Diagnostic::error(format!("unknown type `{other}`"))
                            .primary(t.span, "not a psm type")
                            .help("the types are `f32` (the default), `f64`, `i32`, and `bf16` and `f16` for inputs, params and outputs"),
                    );
                    Dtype::F32
                }
            },
        };
        if role == Role::Element && dtype.is_half() {
            let span = d.dtype.as_ref().map_or(d.span, |t| t.span);
            self.error(
                Diagnostic::error(format!("element field `{}` is declared {}", d.name.name, dtype.name()))
                    .primary(span, "16-bit types are storage for inputs, params and outputs only")
                    .note("the scanned state accumulates in f32 (or f64): 16-bit values are widened to f32 when read and rounded when an output is written")
                    .help(format!("declare `{}` as f32 (the default) and keep `{}` on the input it is lifted from", d.name.name, dtype.name())),
            );
        }
        let shape = d.shape.iter().map(|s| self.size(s)).collect();
        let h = self.tensors.push(Tensor { name: d.name.name.clone(), role, shape, dtype }, d.span);
        self.tensor_index.insert((role, d.name.name.clone()), h);
    }

    fn size(&mut self, s: &ast::SizeExpr) -> Handle<Size> {
        let size = match &s.kind {
            ast::SizeKind::Int(v) => Size::Lit(*v),
            ast::SizeKind::Name(n) => match self.find_dim(n) {
                Some(h) => Size::Dim(h),
                None => {
                    let dims: Vec<String> = self.dims.iter().map(|(_, d)| d.name.clone()).collect();
                    let mut d = Diagnostic::error(format!("unknown dim `{n}`"))
                        .primary(s.span, "not a dim of this aggregator")
                        .note(format!("the dims are {}", list(&dims)));
                    d = match suggest(n, dims.iter().map(String::as_str)) {
                        Some(c) => d.help(format!("did you mean `{c}`?")),
                        None => d.help(format!("declare it: `aggregator {}<{n} = ...>`", self.ast.name.name)),
                    };
                    self.error(d);
                    Size::Lit(1)
                }
            },
            ast::SizeKind::Binary(op, a, b) => {
                let (a, b) = (self.size(a), self.size(b));
                match op {
                    '+' => Size::Add(a, b),
                    '-' => Size::Sub(a, b),
                    _ => Size::Mul(a, b),
                }
            }
        };
        self.sizes.push(size, s.span)
    }

    fn scope(&self, kind: BodyKind, args: Vec<(String, Arg)>) -> Scope {
        Scope { kind, args, locals: Vec::new(), local_index: HashMap::new(), indices: Vec::new(), exclusive_state: None }
    }

    fn body(&mut self, mut scope: Scope, block: &ast::Block, params: Vec<String>) -> Body {
        let mut stmts = Vec::new();
        for s in &block.stmts {
            if self.diags.len() > MAX_ERRORS {
                break;
            }
            if let Some(stmt) = self.stmt(&mut scope, s) {
                stmts.push(stmt);
            }
        }
        Body { kind: scope.kind, params, stmts, span: block.head, implicit: false }
    }

    fn stmt(&mut self, scope: &mut Scope, s: &ast::Stmt) -> Option<Stmt> {
        let name = &s.target.name;
        let mut indices = Vec::new();
        for b in &s.binders {
            if !s.is_let {
                if let Some(e) = &b.extent {
                    self.error(
                        Diagnostic::error("an extent on an assignment's index")
                            .primary(e.span, "the target's shape already fixes this extent")
                            .help(format!("write `{}` alone; extents are written on `let` indices", b.name.name)),
                    );
                }
            }
            if s.binders.iter().take_while(|o| !std::ptr::eq(*o, b)).any(|o| o.name.name == b.name.name) {
                self.error(
                    Diagnostic::error(format!("index `{}` is bound twice", b.name.name))
                        .primary(b.name.span, "already bound on this left side")
                        .help("give each dimension its own index variable"),
                );
            }
            let extent = b.extent.as_ref().map(|e| self.size(e));
            indices.push(self.index_vars.push(IndexVar { name: b.name.name.clone(), extent }, b.name.span));
        }
        let bound = indices.len();
        for (b, &h) in s.binders.iter().zip(&indices) {
            scope.indices.push((b.name.name.clone(), h));
        }
        let value = self.expr(scope, &s.value);
        scope.indices.truncate(scope.indices.len() - bound);

        let target = if s.is_let {
            if let Some((what, first)) = self.defined_as(scope, name) {
                let mut d = Diagnostic::error(format!("`{name}` is already defined"))
                    .primary(s.target.span, format!("`{name}` is already {what}"));
                if let Some(first) = first {
                    d = d.secondary(first, format!("`{name}` is defined here"));
                }
                self.error(d.help(format!("give the local a name of its own, e.g. `{name}2`")));
                return None;
            }
            let local = self.locals.push(Local { name: name.clone(), indices: indices.clone() }, s.target.span);
            scope.locals.push((name.clone(), local));
            scope.local_index.insert(name.clone(), local);
            Target::Local(local)
        } else {
            let role = if scope.kind == BodyKind::Readout { Role::Output } else { Role::Element };
            match self.find(role, name) {
                Some(t) => Target::Tensor(t),
                None => {
                    self.unknown_target(scope, role, &s.target);
                    return None;
                }
            }
        };
        Some(Stmt { target, indices, value, span: s.span })
    }

    /// What `name` already means in this scope, and where, for "already defined" errors.
    fn defined_as(&self, scope: &Scope, name: &str) -> Option<(&'static str, Option<Span>)> {
        if let Some(&l) = scope.local_index.get(name) {
            Some(("a local of this body", Some(self.locals.span(l))))
        } else if scope.args.iter().any(|(n, _)| n == name) {
            Some(("an argument of this body", None))
        } else if let Some(t) = self.find(Role::Param, name) {
            Some(("a param", Some(self.tensors.span(t))))
        } else if let Some(d) = self.find_dim(name) {
            Some(("a dim", Some(self.dims.span(d))))
        } else {
            None
        }
    }

    fn unknown_target(&mut self, scope: &Scope, role: Role, target: &ast::Ident) {
        let name = &target.name;
        let kind = if role == Role::Output { "output" } else { "element field" };
        let names = self.names_of(role);
        let body = scope.kind.name();
        let what_is_assigned = if role == Role::Output {
            format!("`{body}` assigns the outputs ({})", list(&names))
        } else {
            format!("`{body}` assigns the element fields ({})", list(&names))
        };
        let read_only = [(Role::Input, "an input field"), (Role::Param, "a param")]
            .into_iter()
            .find(|&(r, _)| self.find(r, name).is_some());
        if let Some((r, what)) = read_only {
            let decl = self.find(r, name).map(|h| self.tensors.span(h));
            let reader = match r {
                Role::Input => scope
                    .args
                    .iter()
                    .find(|(_, a)| *a == Arg::Input)
                    .map(|(n, _)| format!("; read it as `{n}.{name}`"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let mut d = Diagnostic::error(format!("cannot assign to `{name}`: it is {what}"))
                .primary(target.span, format!("{what} is read-only"))
                .help(format!("{what_is_assigned}{reader}"));
            if let Some(decl) = decl {
                d = d.secondary(decl, format!("`{name}` is declared in `{}`", r.keyword()));
            }
            self.error(d);
            return;
        }
        let mut d = Diagnostic::error(format!("`{name}` is not an {kind}")).primary(target.span, format!("unknown {kind}"));
        d = if let Some(&local) = scope.local_index.get(name.as_str()) {
            d.secondary(self.locals.span(local), "the local is defined here")
                .note(format!("`{name}` is a local; a local is assigned once, by its `let`"))
        } else {
            d.note(what_is_assigned)
        };
        d = match suggest(name, names.iter().map(String::as_str)) {
            Some(c) => d.help(format!("did you mean `{c}`?")),
            None if role == Role::Element => d.help(format!("to name an intermediate value, write `let {name} = ...;`")),
            None => d.help(format!("declare it after `->` in the readout header: `-> ({}{name})`", names.iter().map(|n| format!("{n}, ")).collect::<String>())),
        };
        self.error(d);
    }

    fn push(&mut self, e: Expr, span: Span) -> Handle<Expr> {
        self.exprs.push(e, span)
    }

    fn expr(&mut self, scope: &mut Scope, e: &ast::Expr) -> Handle<Expr> {
        let lowered = match &e.kind {
            ast::ExprKind::Float(v) => Expr::Float(*v),
            ast::ExprKind::Int(v) => Expr::Int(*v),
            ast::ExprKind::Unary { op, arg } => Expr::Unary { op: *op, arg: self.expr(scope, arg) },
            ast::ExprKind::Binary { op, lhs, rhs } => {
                Expr::Binary { op: *op, lhs: self.expr(scope, lhs), rhs: self.expr(scope, rhs) }
            }
            ast::ExprKind::If { cond, then, otherwise } => Expr::Select {
                cond: self.expr(scope, cond),
                then: self.expr(scope, then),
                otherwise: self.expr(scope, otherwise),
            },
            ast::ExprKind::Reduce { op, var, body } => {
                let h = self.index_vars.push(IndexVar { name: var.name.clone(), extent: None }, var.span);
                scope.indices.push((var.name.clone(), h));
                let body = self.expr(scope, body);
                scope.indices.pop();
                Expr::Reduce { op: *op, var: h, body }
            }
            ast::ExprKind::Call { func, args } => self.call(scope, e.span, func, args),
            ast::ExprKind::Access { base, field, indices } => {
                let idx: Vec<Handle<Expr>> =
                    indices.iter().flatten().map(|i| self.expr(scope, i)).collect();
                self.access(scope, base, field.as_ref(), indices.is_some(), idx)
            }
        };
        self.push(lowered, e.span)
    }

    fn call(&mut self, scope: &mut Scope, span: Span, func: &ast::Ident, args: &[ast::Expr]) -> Expr {
        let arity = |this: &mut Self, want: usize| {
            if args.len() != want {
                this.error(
                    Diagnostic::error(format!(
                        "`{}` takes {want} argument{}, found {}",
                        func.name,
                        if want == 1 { "" } else { "s" },
                        args.len()
                    ))
                    .primary(span, "wrong number of arguments")
                    .help(match func.name.as_str() {
                        "select" => "write `select(condition, then, otherwise)`".to_string(),
                        "max" | "min" if want == 2 => format!(
                            "write `{0}(a, b)`; to reduce over an index, write `{0}(i) e`",
                            func.name
                        ),
                        name if want == 2 => format!("write `{name}(a, b)`"),
                        name => format!("write `{name}(a)`"),
                    }),
                );
                false
            } else {
                true
            }
        };
        let lowered: Vec<Handle<Expr>> = match func.name.as_str() {
            // `empty(p)` takes a name, not a value.
            "empty" => Vec::new(),
            _ => args.iter().map(|a| self.expr(scope, a)).collect(),
        };
        match func.name.as_str() {
            "select" => {
                if arity(self, 3) {
                    return Expr::Select { cond: lowered[0], then: lowered[1], otherwise: lowered[2] };
                }
                Expr::Float(0.0)
            }
            "empty" => {
                let named = match args {
                    [ast::Expr { kind: ast::ExprKind::Access { base, field: None, indices: None }, .. }] => {
                        Some(base.name.clone())
                    }
                    _ => None,
                };
                match (&scope.exclusive_state, named) {
                    (Some(state), Some(n)) if *state == n => {}
                    (Some(state), _) => self.error(
                        Diagnostic::error("`empty` takes the readout's state argument")
                            .primary(span, "not the exclusive state")
                            .help(format!("write `empty({state})`")),
                    ),
                    (None, _) => self.error(
                        Diagnostic::error("`empty` is only meaningful in an exclusive readout")
                            .primary(span, "the state here is never empty")
                            .help("use `readout exclusive(p, x)`, where `empty(p)` is true at step 0"),
                    ),
                }
                Expr::Empty
            }
            name => match Func::from_name(name) {
                Some(f) => {
                    if arity(self, f.arity()) {
                        Expr::Call { func: f, args: lowered }
                    } else {
                        Expr::Float(0.0)
                    }
                }
                None => {
                    let mut names: Vec<&str> = Func::ALL.iter().map(|f| f.name()).collect();
                    names.push("select");
                    let mut d = Diagnostic::error(format!("unknown function `{name}`"))
                        .primary(func.span, "not a psm function")
                        .note(format!("the functions are {}", names.join(", ")));
                    if ["sum", "prod"].contains(&name) {
                        d = d.help(format!("a reduction names its index: `{name}(i) x.v[i]`"));
                    } else if let Some(c) = suggest(name, names.iter().copied()) {
                        d = d.help(format!("did you mean `{c}`?"));
                    }
                    self.error(d);
                    Expr::Float(0.0)
                }
            },
        }
    }

    fn access(
        &mut self,
        scope: &Scope,
        base: &ast::Ident,
        field: Option<&ast::Ident>,
        indexed: bool,
        indices: Vec<Handle<Expr>>,
    ) -> Expr {
        let name = base.name.as_str();
        if let Some(field) = field {
            let Some(&(_, arg)) = scope.args.iter().find(|(n, _)| n == name) else {
                let args: Vec<String> = scope.args.iter().map(|(n, _)| n.clone()).collect();
                let mut d = Diagnostic::error(format!("`{name}` has no fields"))
                    .primary(base.span, "not an argument of this body");
                d = if args.is_empty() {
                    d.note(format!("`{}` takes no arguments", scope.kind.name()))
                } else {
                    d.note(format!("the arguments of `{}` are {}", scope.kind.name(), list(&args)))
                };
                if let Some(c) = suggest(name, args.iter().map(String::as_str)) {
                    d = d.help(format!("did you mean `{c}.{}`?", field.name));
                }
                self.error(d);
                return Expr::Float(0.0);
            };
            let (role, source): (Role, fn(Handle<Tensor>) -> Source) = match arg {
                Arg::Input => (Role::Input, Source::Input),
                Arg::Element(Side::Left) => (Role::Element, |t| Source::Element(Side::Left, t)),
                Arg::Element(Side::Right) => (Role::Element, |t| Source::Element(Side::Right, t)),
                Arg::Element(Side::State) => (Role::Element, |t| Source::Element(Side::State, t)),
            };
            return match self.find(role, &field.name) {
                Some(t) => Expr::Load { source: source(t), indices },
                None => {
                    let names = self.names_of(role);
                    let what = if role == Role::Input { "input" } else { "element" };
                    let mut d = Diagnostic::error(format!("no field `{}` in the {what}", field.name))
                        .primary(field.span, format!("`{name}` is {} {what}, which has no field `{}`", if role == Role::Input { "the" } else { "an" }, field.name))
                        .note(format!("the {what} fields are {}", list(&names)));
                    let other = if role == Role::Input { Role::Element } else { Role::Input };
                    let other_arg = scope.args.iter().find(|(_, a)| (*a == Arg::Input) == (other == Role::Input)).map(|(n, _)| n.clone());
                    if let Some(c) = suggest(&field.name, names.iter().map(String::as_str)) {
                        d = d.help(format!("did you mean `{name}.{c}`?"));
                    } else if self.find(other, &field.name).is_some() {
                        let other_what = if other == Role::Input { "an input field" } else { "an element field" };
                        d = d.note(format!("`{}` is {other_what}", field.name));
                        d = match other_arg {
                            Some(a) => d.help(format!("write `{a}.{}`", field.name)),
                            None if other == Role::Input => d.help(format!(
                                "`{}` sees only elements: carry `{}` in the element (declare it in `element` and set it in `lift`)",
                                scope.kind.name(),
                                field.name
                            )),
                            None => d.help("the element is read through the state argument"),
                        };
                    }
                    self.error(d);
                    Expr::Float(0.0)
                }
            };
        }
        let scalar_only = |this: &mut Self, what: &str| {
            if indexed {
                this.error(
                    Diagnostic::error(format!("`{name}` cannot be indexed"))
                        .primary(base.span, format!("{what}, not a tensor")),
                );
            }
        };
        if let Some(&(_, h)) = scope.indices.iter().rev().find(|(n, _)| n == name) {
            scalar_only(self, "an index variable");
            return Expr::Index(h);
        }
        if let Some(&h) = scope.local_index.get(name) {
            return Expr::Load { source: Source::Local(h), indices };
        }
        if let Some(t) = self.find(Role::Param, name) {
            return Expr::Load { source: Source::Param(t), indices };
        }
        if let Some(d) = self.find_dim(name) {
            scalar_only(self, "a dim");
            return Expr::Dim(d);
        }
        if name == "inf" {
            scalar_only(self, "a number");
            return Expr::Float(f64::INFINITY);
        }
        let mut d = Diagnostic::error(format!("unknown name `{name}`")).primary(base.span, "not defined here");
        if let Some(&(_, arg)) = scope.args.iter().find(|(n, _)| n == name) {
            let example = match arg {
                Arg::Input => self.names_of(Role::Input).first().cloned(),
                Arg::Element(_) => self.names_of(Role::Element).first().cloned(),
            }
            .unwrap_or_else(|| "f".into());
            d = Diagnostic::error(format!("`{name}` is a whole {}, not a value", if arg == Arg::Input { "input" } else { "element" }))
                .primary(base.span, "read one of its fields")
                .help(format!("write `{name}.{example}`"));
        } else if self.find(Role::Element, name).is_some() || self.find(Role::Input, name).is_some() {
            let args: Vec<String> = scope.args.iter().map(|(n, _)| format!("`{n}.{name}`")).collect();
            let role = if self.find(Role::Element, name).is_some() { "an element field" } else { "an input field" };
            d = d.note(format!("`{name}` is {role}; fields are read through an argument"));
            if !args.is_empty() {
                d = d.help(format!("write {}", args.join(" or ")));
            }
        } else {
            let mut candidates: Vec<String> = scope.indices.iter().map(|(n, _)| n.clone()).collect();
            candidates.extend(scope.locals.iter().map(|(n, _)| n.clone()));
            candidates.extend(self.names_of(Role::Param));
            candidates.extend(self.dims.iter().map(|(_, d)| d.name.clone()));
            if let Some(c) = suggest(name, candidates.iter().map(String::as_str)) {
                d = d.help(format!("did you mean `{c}`?"));
            } else if name.len() == 1 && name.chars().all(|c| c.is_ascii_lowercase()) {
                d = d.help(format!("index variables are bound on the left side (`f[{name}] = ...`) or by a reduction (`sum({name}) ...`)"));
            } else if name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                d = d.help(format!("a size is declared as a dim: `aggregator {}<{name} = ...>`", self.ast.name.name));
            } else {
                d = d.help(format!("a value shared by every step is a param: `param {{ {name} }}`; a value of this body is a `let {name} = ...;`"));
            }
        }
        self.error(d);
        Expr::Float(0.0)
    }

    /// `f[i0, ..] = x.f[i0, ..]` for every element field: the lift a user may omit
    /// when the element has exactly the input's fields.
    fn default_lift(&mut self) -> Body {
        let element = self.tensors_of(Role::Element);
        let inputs = self.tensors_of(Role::Input);
        let same = element.len() == inputs.len()
            && element.iter().all(|&e| {
                self.find(Role::Input, &self.tensors[e].name)
                    .is_some_and(|i| {
                        // A 16-bit input lifts into the f32 field it widens to.
                        self.tensors[i].dtype.scalar() == self.tensors[e].dtype.scalar()
                            && self.tensors[i].shape.len() == self.tensors[e].shape.len()
                    })
            });
        if !same {
            let d = Diagnostic::error(format!("aggregator `{}` has no lift", self.ast.name.name))
                .primary(self.ast.name.span, "missing `lift(x) { ... }`")
                .note(format!(
                    "lift may be omitted only when the element has exactly the input's fields; element: {}; input: {}",
                    list(&self.names_of(Role::Element)),
                    list(&self.names_of(Role::Input))
                ))
                .help("write `lift(x) { ... }` assigning every element field from `x`");
            self.error(d);
            return Body { kind: BodyKind::Lift, params: vec!["x".into()], stmts: Vec::new(), span: self.ast.name.span, implicit: true };
        }
        let stmts = element
            .iter()
            .map(|&e| {
                let input = self.find(Role::Input, &self.tensors[e].name).expect("checked above");
                self.copy_stmt(e, Source::Input(input))
            })
            .collect();
        Body { kind: BodyKind::Lift, params: vec!["x".into()], stmts, span: self.ast.name.span, implicit: true }
    }

    /// `f[..] = s.f[..]` for every element field: the readout a user may omit.
    fn default_readout(&mut self) -> Body {
        let stmts = self
            .tensors_of(Role::Output)
            .into_iter()
            .map(|out| {
                let field = self.find(Role::Element, &self.tensors[out].name).expect("outputs mirror the element");
                self.copy_stmt(out, Source::Element(Side::State, field))
            })
            .collect();
        Body {
            kind: BodyKind::Readout,
            params: vec!["s".into(), "x".into()],
            stmts,
            span: self.ast.name.span,
            implicit: true,
        }
    }

    fn copy_stmt(&mut self, target: Handle<Tensor>, source: Source) -> Stmt {
        let span = self.tensors.span(target);
        let rank = self.tensors[target].shape.len();
        let vars: Vec<Handle<IndexVar>> =
            (0..rank).map(|k| self.index_vars.push(IndexVar { name: format!("i{k}"), extent: None }, span)).collect();
        let indices = vars.iter().map(|&v| self.exprs.push(Expr::Index(v), span)).collect();
        let value = self.exprs.push(Expr::Load { source, indices }, span);
        Stmt { target: Target::Tensor(target), indices: vars, value, span }
    }
}
