//! Rust (syn) → psm's syntax tree ([`psm_ir::front::dsl::ast`]). Everything outside the
//! subset is an error at the offending tokens that says what is supported; names,
//! shapes and types are left to psm-ir's lowering and validation, like a `.psm` file's.

use std::collections::HashMap;

use psm_ir::front::dsl::ast;
use psm_ir::ir::{BinaryOp, ReadoutKind, ReduceOp, UnaryOp};
use psm_ir::Span;
use quote::ToTokens;

use crate::spans::{message, Spans};

/// A Rust range `0..B` bound to a psm index variable: psm infers the variable's extent
/// from what it indexes, and the two must agree for the Rust to mean the same.
pub struct RangeCheck {
    /// The psm span of the variable (every index variable made from it carries it).
    pub var: Span,
    pub name: String,
    pub value: i64,
    /// The psm span of `0..B`.
    pub range: Span,
    pub bound_text: String,
    pub is_loop: bool,
}

/// One struct of the module: its fields as psm declarations, and as Rust types.
pub struct StructInfo {
    pub ident: syn::Ident,
    pub decls: Vec<ast::Decl>,
    pub fields: Vec<(syn::Ident, syn::Type)>,
}

pub struct Translator<'a> {
    pub spans: &'a mut Spans,
    pub dims: &'a [(String, i64)],
    /// The fields of `struct Params`, when the module declares one.
    pub params: Option<Vec<String>>,
    pub errors: Vec<syn::Error>,
    pub checks: Vec<RangeCheck>,
    /// Sizes naming no declared dim (reported once each).
    pub unknown_dims: Vec<syn::Ident>,
}

struct Loop {
    var: String,
    var_span: Span,
    bound: ast::SizeExpr,
}

/// A function's arguments: the psm names of the fixed ones, and the name of its
/// optional trailing `&Params`.
pub struct Args {
    pub names: Vec<ast::Ident>,
    pub params: Option<String>,
    /// `readout_exclusive(p: Option<&State>, ..)`: `p` is `None` where psm's `empty(p)`.
    pub optional: Option<String>,
}

/// What the names of one function body mean.
struct Cx {
    out: String,
    /// The `&Params` argument: `p.w[i]` reads the param `w`.
    params: Option<String>,
    /// An `Option<&State>` argument, and the names `if let Some(q) = p` binds to it.
    optional: Option<String>,
    aliases: Vec<(String, String)>,
    loops: Vec<Loop>,
    /// Index variables of enclosing sums (`|i| ...`).
    reduce_vars: Vec<String>,
    /// The locals in scope; innermost last.
    locals: Vec<Local>,
    used: HashMap<String, usize>,
}

/// A Rust local: its psm name and the loop variables around its `let`.
#[derive(Clone)]
struct Local {
    rust: String,
    psm: String,
    loops: Vec<(String, Span)>,
}

const SUPPORTED_EXPR: &str = "the supported expressions are literals, arguments' fields (`l.a[i]`, `p.w[i][j]`), locals, loop variables, dims, `+ - * /`, comparisons, `&& || !`, `if c { a } else { b }`, the `f32` methods `exp ln sqrt rsqrt tanh sigmoid softplus abs max min powf`, `e as f32` on a dim or loop variable, and sums `(0..N).map(|i| e).sum::<f32>()`";
const SUPPORTED_STMT: &str = "a body is `let mut out = State::default();`, then `let x = e;`, `out.f[i][j] = e;` and `for i in 0..N { ... }`, then `out`";
/// Rust method → psm function. `rsqrt`, `sigmoid` and `softplus` are not std's: they
/// come from `psm::Float`, which the macro imports into the module.
const METHODS: [(&str, &str); 11] = [
    ("exp", "exp"),
    ("ln", "log"),
    ("sqrt", "sqrt"),
    ("rsqrt", "rsqrt"),
    ("abs", "abs"),
    ("tanh", "tanh"),
    ("sigmoid", "sigmoid"),
    ("softplus", "softplus"),
    ("max", "max"),
    ("min", "min"),
    ("powf", "pow"),
];

impl<'a> Translator<'a> {
    fn id(&mut self, node: &dyn ToTokens) -> Span {
        self.spans.id(node)
    }

    fn ident(&mut self, i: &syn::Ident) -> ast::Ident {
        ast::Ident { name: i.to_string(), span: self.id(i) }
    }

    fn err(&mut self, node: &dyn ToTokens, head: &str, help: &str) {
        let helps = if help.is_empty() { vec![] } else { vec![help.to_string()] };
        self.errors.push(syn::Error::new_spanned(node.to_token_stream(), message(head, &[], &helps)));
    }

    fn fail<T>(&mut self, node: &dyn ToTokens, head: &str, help: &str) -> Result<T, ()> {
        self.err(node, head, help);
        Err(())
    }

    fn fail_with<T>(&mut self, node: &dyn ToTokens, head: &str, notes: &[String], help: &str) -> Result<T, ()> {
        self.errors.push(syn::Error::new_spanned(node.to_token_stream(), message(head, notes, &[help.to_string()])));
        Err(())
    }

    pub fn dim_value(&self, name: &str) -> Option<i64> {
        self.dims.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    // ---- declarations -------------------------------------------------------------

    pub fn structure(&mut self, s: &syn::ItemStruct) -> Option<StructInfo> {
        if !s.generics.params.is_empty() {
            self.err(&s.generics, &format!("`{}` cannot be generic", s.ident), "sizes are dims: `#[psm_aggregator(dims(D = 16))]` and `[f32; D]`");
            return None;
        }
        let syn::Fields::Named(named) = &s.fields else {
            self.err(&s.fields, &format!("`{}` must have named fields", s.ident), "write `struct State { a: [f32; D], b: f32 }`");
            return None;
        };
        let mut decls = Vec::new();
        let mut fields = Vec::new();
        let mut ok = true;
        for f in &named.named {
            let ident = f.ident.clone().expect("named");
            match self.field_type(&f.ty) {
                Ok((dtype, shape)) => {
                    let name = self.ident(&ident);
                    let span = self.id(f);
                    decls.push(ast::Decl { name, shape, dtype, span });
                    fields.push((ident, f.ty.clone()));
                }
                Err(()) => ok = false,
            }
        }
        ok.then(|| StructInfo { ident: s.ident.clone(), decls, fields })
    }

    /// `f32`, `f64`, `i32`, `bf16`/`f16` (`half::bf16`, `half::f16`: storage of inputs,
    /// params and outputs), `[T; N]`, `[[T; N]; M]` (shape `[M, N]`).
    fn field_type(&mut self, ty: &syn::Type) -> Result<(Option<ast::Ident>, Vec<ast::SizeExpr>), ()> {
        const HELP: &str = "a field is `f32`, `f64`, `i32`, `half::bf16`, `half::f16` or a fixed array of them: `[f32; D]`, `[[f32; N]; D]`, with integer or dim sizes";
        match ty {
            syn::Type::Path(p) if p.qself.is_none() && p.path.segments.iter().all(|s| s.arguments.is_empty()) => {
                let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
                let i = &p.path.segments.last().expect("a path has a segment").ident;
                let scalar = matches!(segs.as_slice(), [t] if ["f32", "f64", "i32", "bf16", "f16"].contains(&t.as_str()));
                let half = matches!(segs.as_slice(), [.., h, t] if h == "half" && (t == "bf16" || t == "f16"));
                if scalar || half {
                    Ok((Some(self.ident(i)), Vec::new()))
                } else {
                    self.fail(ty, &format!("unsupported field type `{}`", ty.to_token_stream()), HELP)
                }
            }
            syn::Type::Array(a) => {
                let size = self.size(&a.len)?;
                self.size_value(&size, &a.len)?;
                let (dtype, mut inner) = self.field_type(&a.elem)?;
                inner.insert(0, size);
                Ok((dtype, inner))
            }
            syn::Type::Paren(p) => self.field_type(&p.elem),
            _ => self.fail(ty, &format!("unsupported field type `{}`", ty.to_token_stream()), HELP),
        }
    }

    /// An array length or loop bound: an integer literal or a dim.
    fn size(&mut self, e: &syn::Expr) -> Result<ast::SizeExpr, ()> {
        let span = self.id(e);
        match e {
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. }) => match i.base10_parse::<i64>() {
                Ok(v) => Ok(ast::SizeExpr { kind: ast::SizeKind::Int(v), span }),
                Err(_) => self.fail(e, "size out of range", ""),
            },
            syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                Ok(ast::SizeExpr { kind: ast::SizeKind::Name(p.path.get_ident().unwrap().to_string()), span })
            }
            syn::Expr::Group(g) => self.size(&g.expr),
            syn::Expr::Paren(p) => self.size(&p.expr),
            _ => self.fail(e, "unsupported size", "sizes are integer literals or dims declared in `#[psm_aggregator(dims(N = ...))]`"),
        }
    }

    fn size_value(&mut self, s: &ast::SizeExpr, node: &dyn ToTokens) -> Result<i64, ()> {
        match &s.kind {
            ast::SizeKind::Int(v) => Ok(*v),
            ast::SizeKind::Name(n) => match self.dim_value(n) {
                Some(v) => Ok(v),
                None if self.unknown_dims.iter().any(|d| d == n) => Err(()),
                None => {
                    if let Some(i) = node.to_token_stream().into_iter().find_map(|t| match t {
                        proc_macro2::TokenTree::Ident(i) => Some(i),
                        _ => None,
                    }) {
                        self.unknown_dims.push(i);
                    }
                    let declared: Vec<String> = self.dims.iter().map(|(n, _)| format!("`{n}`")).collect();
                    let head = format!("unknown dim `{n}`");
                    let note = if declared.is_empty() { "no dims are declared".to_string() } else { format!("the dims are {}", declared.join(", ")) };
                    self.errors.push(syn::Error::new_spanned(
                        node.to_token_stream(),
                        message(&head, &[note], &[format!("declare it: `#[psm_aggregator(dims({n} = ...))]`")]),
                    ));
                    Err(())
                }
            },
            ast::SizeKind::Binary(..) => Err(()),
        }
    }

    // ---- functions ----------------------------------------------------------------

    /// Checks `fn name(args: &Types[, p: &Params]) -> Ret` and returns the argument names.
    pub fn signature(&mut self, f: &syn::ItemFn, args: &[&str], ret: &str) -> Option<Args> {
        let name = f.sig.ident.to_string();
        let sig = &f.sig;
        let takes_params = sig.inputs.len() == args.len() + 1
            && sig.inputs.last().is_some_and(|a| matches!(a, syn::FnArg::Typed(pt) if type_name(strip_ref(&pt.ty)).as_deref() == Some("Params")));
        let mut expected = args.to_vec();
        if takes_params {
            expected.push("Params");
        }
        let want = match name.as_str() {
            "identity" => format!("fn identity() -> {ret}"),
            "lift" => format!("fn lift(x: &{}) -> {ret}", args[0]),
            "combine" => format!("fn combine(l: &{0}, r: &{0}) -> {ret}", args[0]),
            _ => format!("fn {name}(s: &{}, x: &{}) -> {ret}", args[0], args[1]),
        };
        let what = match name.as_str() {
            "identity" => "takes no arguments".to_string(),
            "lift" => format!("takes one `&{}`", args[0]),
            "combine" => format!("takes two `&{}`, the earlier first", args[0]),
            "readout_exclusive" => "takes the state before the step first (`p: &State`, or `p: Option<&State>`, `None` at step 0 without an identity), then the step's input".to_string(),
            _ => "takes the state first, then the step's input".to_string(),
        };
        let what = if self.params.is_some() { format!("{what}, then optionally the params `p: &Params`") } else { what };
        if !sig.generics.params.is_empty() || sig.asyncness.is_some() || sig.unsafety.is_some() || sig.variadic.is_some() {
            self.err(sig, &format!("`{name}` must be a plain function"), &format!("write `{want}`"));
            return None;
        }
        let misplaced = sig.inputs.iter().take(sig.inputs.len().saturating_sub(1)).find_map(|a| match a {
            syn::FnArg::Typed(pt) if type_name(strip_ref(&pt.ty)).as_deref() == Some("Params") => Some(pt),
            _ => None,
        });
        if let Some(pt) = misplaced {
            let mut want_params = want.replacen(") ->", ", p: &Params) ->", 1);
            if args.is_empty() {
                want_params = want_params.replacen("(, ", "(", 1);
            }
            self.err(pt, &format!("`&Params` comes last in `{name}`"), &format!("write `{want_params}`"));
            return None;
        }
        if sig.inputs.len() != expected.len() {
            let found = sig.inputs.len();
            self.err(
                &sig.inputs,
                &format!("`{name}` takes {} argument{}, found {found}", args.len(), if args.len() == 1 { "" } else { "s" }),
                &format!("`{name}` {what}: `{want}`"),
            );
            if sig.inputs.is_empty() {
                // An empty list has no tokens: point at the name.
                let e = self.errors.pop().unwrap();
                self.errors.push(syn::Error::new(sig.ident.span(), e.to_string()));
            }
            return None;
        }
        let mut names = Vec::new();
        let mut params = None;
        let mut optional = None;
        let mut ok = true;
        for (k, (arg, want_ty)) in sig.inputs.iter().zip(&expected).enumerate() {
            let syn::FnArg::Typed(pt) = arg else {
                self.err(arg, &format!("`{name}` is a free function, not a method"), &format!("write `{want}`"));
                ok = false;
                continue;
            };
            match &*pt.pat {
                syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.mutability.is_none() && pi.subpat.is_none() => {
                    if k < args.len() {
                        names.push(self.ident(&pi.ident));
                    } else if self.params.is_none() {
                        self.err(&pt.ty, "this module declares no `struct Params`", "declare the weights every step shares: `pub struct Params { pub w: [[f32; D]; D] }`");
                        ok = false;
                    } else {
                        params = Some(pi.ident.to_string());
                    }
                }
                p => {
                    self.err(p, "argument patterns are not supported", "name the argument: `l: &State`");
                    ok = false;
                }
            }
            if name == "readout_exclusive" && k == 0 && option_of_ref(&pt.ty).and_then(type_name).as_deref() == Some(*want_ty) {
                optional = names.last().map(|n| n.name.clone());
            } else if type_name(strip_ref(&pt.ty)).as_deref() != Some(*want_ty) {
                self.err(
                    &pt.ty,
                    &format!("expected `&{want_ty}`, found `{}`", pt.ty.to_token_stream().to_string().replace("& ", "&")),
                    &format!("`{name}` {what}: `{want}`"),
                );
                ok = false;
            }
        }
        let ret_ok = match &sig.output {
            syn::ReturnType::Type(_, t) => type_name(t).as_deref() == Some(ret),
            syn::ReturnType::Default => false,
        };
        if !ret_ok {
            let node: &dyn ToTokens = match &sig.output {
                syn::ReturnType::Default => &sig.ident,
                o => o,
            };
            self.err(node, &format!("`{name}` must return `{ret}`"), &format!("write `{want}`"));
            ok = false;
        }
        ok.then_some(Args { names, params, optional })
    }

    /// The body convention: `let mut out = Ret::default();`, statements, `out`.
    pub fn body(&mut self, f: &syn::ItemFn, ret: &str, head: Span, args: &Args) -> Option<ast::Block> {
        let stmts = &f.block.stmts;
        let convention = format!("make the value with `let mut out = {ret}::default();`, assign its fields, and end with `out`");
        let init = stmts.iter().position(|s| matches!(s, syn::Stmt::Local(l) if is_default_init(l, ret)));
        let out_name = match (init, stmts.first()) {
            (Some(k), _) => match &stmts[k] {
                syn::Stmt::Local(l) => match &l.pat {
                    syn::Pat::Ident(pi) => pi.ident.to_string(),
                    syn::Pat::Type(pt) => match &*pt.pat {
                        syn::Pat::Ident(pi) => pi.ident.to_string(),
                        _ => unreachable!("checked by is_default_init"),
                    },
                    _ => unreachable!("checked by is_default_init"),
                },
                _ => unreachable!(),
            },
            (None, Some(_)) => {
                self.err(&f.block, &format!("`{}` never makes the value it returns", f.sig.ident), &convention);
                return None;
            }
            (None, None) => {
                self.err(&f.block, &format!("`{}` has an empty body", f.sig.ident), &convention);
                return None;
            }
        };
        let init = init.unwrap();
        match stmts.last() {
            Some(syn::Stmt::Expr(syn::Expr::Path(p), None)) if stmts.len() > 1 && p.path.is_ident(&out_name) => {}
            Some(s) => {
                let node: &dyn ToTokens = if stmts.len() > 1 { s } else { &f.block };
                self.err(node, &format!("`{}` must end by returning `{out_name}`", f.sig.ident), &convention);
                return None;
            }
            None => unreachable!(),
        }
        // A local named like a param would hide it in psm: such locals get a suffix.
        let used = self.params.iter().flatten().map(|p| (p.clone(), 1)).collect();
        let (params, optional) = (args.params.clone(), args.optional.clone());
        let mut cx = Cx { out: out_name, params, optional, aliases: Vec::new(), loops: Vec::new(), reduce_vars: Vec::new(), locals: Vec::new(), used };
        let mut out = Vec::new();
        let errors = self.errors.len();
        for (k, s) in stmts[..stmts.len() - 1].iter().enumerate() {
            if k != init {
                self.stmt(s, &mut cx, &mut out);
            }
        }
        let span = self.id(&f.block);
        (self.errors.len() == errors).then_some(ast::Block { stmts: out, head, span })
    }

    fn stmt(&mut self, s: &syn::Stmt, cx: &mut Cx, out: &mut Vec<ast::Stmt>) {
        // Each arm reports its own errors; the result only says whether one did.
        let _: Result<(), ()> = match s {
            syn::Stmt::Local(l) => self.let_stmt(l, cx, out),
            syn::Stmt::Expr(syn::Expr::ForLoop(f), _) => self.for_loop(f, cx, out),
            syn::Stmt::Expr(syn::Expr::Assign(a), Some(_)) => self.assign(a, cx, out),
            syn::Stmt::Expr(syn::Expr::Assign(a), None) => self.fail(a, "expected `;` after the assignment", ""),
            syn::Stmt::Expr(syn::Expr::Binary(b), _) if is_compound(&b.op) => self.fail(
                &b.op,
                "compound assignment is not supported",
                "each field is assigned once: write `out.f[i] = ...;`, or accumulate with a sum: `(0..N).map(|i| e).sum::<f32>()`",
            ),
            syn::Stmt::Expr(syn::Expr::While(w), _) => self.fail(&w.while_token, "`while` loops are not supported", "loop over a whole axis: `for i in 0..N { ... }`, with `N` a dim or an integer literal"),
            syn::Stmt::Expr(syn::Expr::Loop(w), _) => self.fail(&w.loop_token, "`loop` is not supported", "loop over a whole axis: `for i in 0..N { ... }`, with `N` a dim or an integer literal"),
            syn::Stmt::Expr(syn::Expr::Return(r), _) => self.fail(&r.return_token, "`return` is not supported", SUPPORTED_STMT),
            syn::Stmt::Expr(e, _) => self.fail(e, "unsupported statement", SUPPORTED_STMT),
            syn::Stmt::Item(i) => self.fail(i, "items are not supported inside a psm body", SUPPORTED_STMT),
            syn::Stmt::Macro(m) => self.fail(&m.mac.path, "macros are not supported inside a psm body", SUPPORTED_STMT),
        };
    }

    fn let_stmt(&mut self, l: &syn::Local, cx: &mut Cx, out: &mut Vec<ast::Stmt>) -> Result<(), ()> {
        let pi = match &l.pat {
            syn::Pat::Ident(pi) => pi,
            syn::Pat::Type(pt) => match &*pt.pat {
                syn::Pat::Ident(pi) => {
                    if !matches!(type_name(&pt.ty).as_deref(), Some("f32" | "f64" | "i32")) {
                        return self.fail(&pt.ty, "a local is a scalar", "write `let x: f32 = ...;` or leave the type out");
                    }
                    pi
                }
                p => return self.fail(p, "unsupported pattern", "bind one name: `let x = ...;`"),
            },
            p => return self.fail(p, "unsupported pattern", "bind one name: `let x = ...;`"),
        };
        if let Some(m) = &pi.mutability {
            return self.fail(m, "locals are immutable in a psm body", "drop `mut`: a local is assigned once, by its `let`");
        }
        let Some(init) = &l.init else {
            return self.fail(l, "a local needs a value", "write `let x = ...;`");
        };
        if let Some((else_token, _)) = &init.diverge {
            return self.fail(else_token, "`let ... else` is not supported", "write `let x = ...;`");
        }
        let value = self.expr(&init.expr, cx)?;
        let rust = pi.ident.to_string();
        let n = cx.used.entry(rust.clone()).or_insert(0);
        // Rust allows shadowing and reuse in sibling loops; psm names each local once.
        let name = if *n == 0 { rust.clone() } else { format!("{rust}_{n}") };
        *n += 1;
        let binders = cx
            .loops
            .iter()
            .map(|lp| ast::Binder { name: ast::Ident { name: lp.var.clone(), span: lp.var_span }, extent: Some(lp.bound.clone()) })
            .collect();
        let target = ast::Ident { name: name.clone(), span: self.id(&pi.ident) };
        let span = self.id(l);
        out.push(ast::Stmt { is_let: true, target, binders, value, span });
        let vars = cx.loops.iter().map(|lp| (lp.var.clone(), lp.var_span)).collect();
        cx.locals.push(Local { rust, psm: name, loops: vars });
        Ok(())
    }

    fn for_loop(&mut self, f: &syn::ExprForLoop, cx: &mut Cx, out: &mut Vec<ast::Stmt>) -> Result<(), ()> {
        if let Some(label) = &f.label {
            return self.fail(label, "loop labels are not supported", "");
        }
        let var = match &*f.pat {
            syn::Pat::Ident(pi) if pi.mutability.is_none() && pi.by_ref.is_none() => pi.ident.clone(),
            p => return self.fail(p, "a `for` loop binds one index variable", "write `for i in 0..N { ... }`"),
        };
        let (range, bound, value) = self.range(&f.expr, "for")?;
        let var_span = self.id(&var);
        self.checks.push(RangeCheck {
            var: var_span,
            name: var.to_string(),
            value,
            range,
            bound_text: bound_text(&bound),
            is_loop: true,
        });
        cx.loops.push(Loop { var: var.to_string(), var_span, bound });
        let locals = cx.locals.len();
        for s in &f.body.stmts {
            self.stmt(s, cx, out);
        }
        cx.locals.truncate(locals);
        cx.loops.pop();
        Ok(())
    }

    /// `0..B` (parenthesized or not) → (span of the range, B, B's value).
    fn range(&mut self, e: &syn::Expr, what: &str) -> Result<(Span, ast::SizeExpr, i64), ()> {
        let help = if what == "for" {
            "loop over a whole axis: `for i in 0..N`, with `N` an integer literal or a dim"
        } else {
            "sum over a whole axis: `(0..N).map(|i| e).sum::<f32>()`, with `N` an integer literal or a dim"
        };
        let r = match strip(e) {
            syn::Expr::Range(r) => r,
            other => return self.fail(other, "expected a range `0..N`", help),
        };
        let zero = matches!(r.start.as_deref().map(strip), Some(syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(i), .. })) if i.base10_digits() == "0");
        if !zero || !matches!(r.limits, syn::RangeLimits::HalfOpen(_)) || r.end.is_none() {
            return self.fail(r, "a range must be `0..N`", help);
        }
        let end = r.end.as_deref().unwrap();
        let bound = self.size(end)?;
        let value = self.size_value(&bound, end)?;
        let span = self.id(r);
        Ok((span, bound, value))
    }

    fn assign(&mut self, a: &syn::ExprAssign, cx: &mut Cx, out: &mut Vec<ast::Stmt>) -> Result<(), ()> {
        let help = format!("assign a field of `{0}`: `{0}.f[i][j] = ...;`, indexed by the variables of the enclosing `for` loops", cx.out);
        // Peel `[i]` from the right.
        let mut indices = Vec::new();
        let mut left = strip(&a.left);
        while let syn::Expr::Index(ix) = left {
            indices.insert(0, &*ix.index);
            left = strip(&ix.expr);
        }
        let field = match left {
            syn::Expr::Field(fe) if matches!(strip(&fe.base), syn::Expr::Path(p) if p.path.is_ident(&cx.out)) => match &fe.member {
                syn::Member::Named(m) => m.clone(),
                syn::Member::Unnamed(_) => return self.fail(&fe.member, "fields are named", &help),
            },
            syn::Expr::Path(p) if p.path.get_ident().is_some_and(|i| cx.locals.iter().any(|l| i == &l.rust)) => {
                return self.fail(left, "locals cannot be reassigned", "a local is assigned once, by its `let`; name the new value with another `let`")
            }
            other => return self.fail(other, &format!("only the fields of `{}` can be assigned", cx.out), &help),
        };
        let mut binders = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut ok = true;
        for ix in &indices {
            let name = match strip(ix) {
                syn::Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
                _ => None,
            };
            match name.as_deref().and_then(|n| cx.loops.iter().find(|l| l.var == n)) {
                Some(lp) if !seen.contains(&lp.var) => {
                    seen.push(lp.var.clone());
                    binders.push(ast::Binder { name: ast::Ident { name: lp.var.clone(), span: lp.var_span }, extent: None });
                }
                Some(lp) => {
                    self.err(*ix, &format!("loop variable `{}` indexes `{}.{field}` twice", lp.var, cx.out), "a field is assigned whole: give each axis its own `for` loop");
                    ok = false;
                }
                None => {
                    self.err(
                        *ix,
                        "a field being assigned is indexed by loop variables alone",
                        &format!("psm assigns every entry of `{0}.{field}`: write `for i in 0..N {{ {0}.{field}[i] = ...; }}` and compute the value from `i`", cx.out),
                    );
                    ok = false;
                }
            }
        }
        if ok {
            if let Some(lp) = cx.loops.iter().find(|l| !seen.contains(&l.var)) {
                let msg = format!("loop variable `{}` does not index `{}.{field}`", lp.var, cx.out);
                let e = self.spans.error(lp.var_span, message(&msg, &[format!("the assignment `{}` would write every entry again for each `{}`", a.to_token_stream(), lp.var)], &["move the assignment out of the loop, or index the field with it".into()]));
                self.errors.push(e);
                ok = false;
            }
        }
        let value = self.expr(&a.right, cx);
        if !ok {
            return Err(());
        }
        let target = self.ident(&field);
        let span = self.id(a);
        out.push(ast::Stmt { is_let: false, target, binders, value: value?, span });
        Ok(())
    }

    // ---- expressions --------------------------------------------------------------

    fn node(&mut self, kind: ast::ExprKind, n: &dyn ToTokens) -> ast::Expr {
        ast::Expr { kind, span: self.id(n) }
    }

    fn name_expr(&mut self, name: String, n: &dyn ToTokens) -> ast::Expr {
        let base = ast::Ident { name, span: self.id(n) };
        self.node(ast::ExprKind::Access { base, field: None, indices: None }, n)
    }

    fn expr(&mut self, e: &syn::Expr, cx: &mut Cx) -> Result<ast::Expr, ()> {
        use syn::Expr as E;
        Ok(match e {
            E::Lit(l) => match &l.lit {
                syn::Lit::Float(f) => match f.base10_parse::<f64>() {
                    Ok(v) => self.node(ast::ExprKind::Float(v), e),
                    Err(_) => return self.fail(e, "invalid float literal", ""),
                },
                syn::Lit::Int(i) => match i.base10_parse::<i64>() {
                    Ok(v) => self.node(ast::ExprKind::Int(v), e),
                    Err(_) => return self.fail(e, "integer literal out of range", ""),
                },
                syn::Lit::Bool(_) => return self.fail(e, "boolean literals are not supported", "write a comparison: `a < b`"),
                _ => return self.fail(e, "unsupported literal", "numbers only: `1.0`, `0`"),
            },
            E::Paren(p) => {
                let inner = self.expr(&p.expr, cx)?;
                ast::Expr { kind: inner.kind, span: self.id(e) }
            }
            E::Group(g) => self.expr(&g.expr, cx)?,
            E::Path(p) => self.path(p, cx)?,
            E::Field(_) | E::Index(_) => self.access(e, cx)?,
            E::Unary(u) => {
                let op = match u.op {
                    syn::UnOp::Neg(_) => UnaryOp::Neg,
                    syn::UnOp::Not(_) => UnaryOp::Not,
                    syn::UnOp::Deref(_) => return self.expr(&u.expr, cx),
                    _ => return self.fail(&u.op, "unsupported operator", "the unary operators are `-` and `!`"),
                };
                let arg = self.expr(&u.expr, cx)?;
                self.node(ast::ExprKind::Unary { op, arg: Box::new(arg) }, e)
            }
            E::Binary(b) => {
                use syn::BinOp as B;
                let op = match b.op {
                    B::Add(_) => BinaryOp::Add,
                    B::Sub(_) => BinaryOp::Sub,
                    B::Mul(_) => BinaryOp::Mul,
                    B::Div(_) => BinaryOp::Div,
                    B::Lt(_) => BinaryOp::Lt,
                    B::Le(_) => BinaryOp::Le,
                    B::Gt(_) => BinaryOp::Gt,
                    B::Ge(_) => BinaryOp::Ge,
                    B::Eq(_) => BinaryOp::Eq,
                    B::Ne(_) => BinaryOp::Ne,
                    B::And(_) => BinaryOp::And,
                    B::Or(_) => BinaryOp::Or,
                    _ => {
                        return self.fail(&b.op, &format!("operator `{}` is not supported", b.op.to_token_stream()), "the operators are `+ - * /`, `< <= > >= == !=`, `&& || !` and unary `-`")
                    }
                };
                let lhs = self.expr(&b.left, cx);
                let rhs = self.expr(&b.right, cx);
                self.node(ast::ExprKind::Binary { op, lhs: Box::new(lhs?), rhs: Box::new(rhs?) }, e)
            }
            E::If(i) if matches!(strip(&i.cond), E::Let(_)) => self.if_let(i, cx)?,
            E::If(i) => {
                let cond = self.expr(&i.cond, cx);
                let then = self.block_value(&i.then_branch, cx);
                let otherwise = match &i.else_branch {
                    Some((_, els)) => self.expr(els, cx),
                    None => return self.fail(e, "an `if` without `else` has no value", "write `if c { a } else { b }`"),
                };
                self.node(ast::ExprKind::If { cond: Box::new(cond?), then: Box::new(then?), otherwise: Box::new(otherwise?) }, e)
            }
            E::Block(b) if b.label.is_none() => self.block_value(&b.block, cx)?,
            E::MethodCall(m) => self.method(m, cx)?,
            E::Call(c) => self.call(c, cx)?,
            E::Cast(c) => {
                let ok_inner = match strip(&c.expr) {
                    E::Path(p) => p.path.get_ident().is_some_and(|i| {
                        let n = i.to_string();
                        self.dim_value(&n).is_some() || cx.loops.iter().any(|l| l.var == n) || cx.reduce_vars.contains(&n)
                    }),
                    E::Lit(syn::ExprLit { lit: syn::Lit::Int(_), .. }) => true,
                    _ => false,
                };
                if !ok_inner || !matches!(type_name(&c.ty).as_deref(), Some("f32" | "f64")) {
                    return self.fail(e, "unsupported cast", "`as f32` / `as f64` converts a dim, a loop variable or an integer literal; psm converts other values itself");
                }
                self.expr(&c.expr, cx)?
            }
            E::Closure(c) => return self.fail(c, "closures are not supported here", "a closure may only be the body of a sum: `(0..N).map(|i| e).sum::<f32>()`"),
            E::While(w) => return self.fail(&w.while_token, "`while` loops are not supported", "loop over a dim: `for i in 0..N { ... }`"),
            E::Loop(l) => return self.fail(&l.loop_token, "`loop` is not supported", "loop over a dim: `for i in 0..N { ... }`"),
            E::ForLoop(f) => return self.fail(&f.for_token, "a `for` loop is a statement, not a value", "sum with `(0..N).map(|i| e).sum::<f32>()`"),
            E::Match(m) => return self.fail(&m.match_token, "`match` is not supported", "write `if c { a } else { b }`"),
            E::Macro(m) => return self.fail(&m.mac.path, "macros are not supported in a psm expression", SUPPORTED_EXPR),
            _ => return self.fail(e, "unsupported expression", SUPPORTED_EXPR),
        })
    }

    /// `empty(p)` (or `!empty(p)`) on the readout's `Option<&State>` argument.
    fn empty(&mut self, p: &str, node: &dyn ToTokens, negate: bool) -> ast::Expr {
        let base = ast::Ident { name: p.to_string(), span: self.id(node) };
        let arg = self.node(ast::ExprKind::Access { base, field: None, indices: None }, node);
        let func = ast::Ident { name: "empty".into(), span: self.id(node) };
        let call = self.node(ast::ExprKind::Call { func, args: vec![arg] }, node);
        if negate {
            self.node(ast::ExprKind::Unary { op: UnaryOp::Not, arg: Box::new(call) }, node)
        } else {
            call
        }
    }

    /// `if let Some(q) = p { a } else { b }`: `a` where the prefix is not empty, reading it as `q`.
    fn if_let(&mut self, i: &syn::ExprIf, cx: &mut Cx) -> Result<ast::Expr, ()> {
        let syn::Expr::Let(l) = strip(&i.cond) else { unreachable!("checked by the caller") };
        let Some(opt) = cx.optional.clone() else {
            return self.fail(&l.let_token, "`if let` is not supported here", "write `if c { a } else { b }`; `if let Some(p) = p` tests the `Option<&State>` of `readout_exclusive`");
        };
        let help = format!("write `if let Some({opt}) = {opt} {{ ... }} else {{ ... }}`");
        let on_opt = matches!(strip(&l.expr), syn::Expr::Path(p) if p.path.is_ident(&opt));
        let bound = match &*l.pat {
            syn::Pat::TupleStruct(ts) if ts.path.is_ident("Some") && ts.elems.len() == 1 => match &ts.elems[0] {
                syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => Some(pi.ident.to_string()),
                _ => None,
            },
            _ => None,
        };
        let (true, Some(bound)) = (on_opt, bound) else {
            return self.fail(l, "unsupported `if let`", &help);
        };
        let Some((_, els)) = &i.else_branch else {
            return self.fail(i, "an `if let` without `else` has no value", &help);
        };
        let cond = self.empty(&opt, &l.expr, true);
        cx.aliases.push((bound, opt));
        let then = self.block_value(&i.then_branch, cx);
        cx.aliases.pop();
        let otherwise = self.expr(els, cx);
        Ok(self.node(ast::ExprKind::If { cond: Box::new(cond), then: Box::new(then?), otherwise: Box::new(otherwise?) }, i))
    }

    /// `p.is_none()`, `p.is_some()`, `p.map_or(b, |q| a)` on the `Option<&State>`.
    fn option_method(&mut self, m: &syn::ExprMethodCall, opt: String, cx: &mut Cx) -> Result<ast::Expr, ()> {
        match (m.method.to_string().as_str(), m.args.len()) {
            ("is_none", 0) => Ok(self.empty(&opt, &m.receiver, false)),
            ("is_some", 0) => Ok(self.empty(&opt, &m.receiver, true)),
            ("map_or", 2) => {
                let bound = match &m.args[1] {
                    syn::Expr::Closure(c) if c.inputs.len() == 1 => match &c.inputs[0] {
                        syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => Some((pi.ident.to_string(), &c.body)),
                        _ => None,
                    },
                    _ => None,
                };
                let Some((bound, body)) = bound else {
                    return self.fail(&m.args[1], "expected a closure `|q| e`", &format!("write `{opt}.map_or(default, |{opt}| ...)`"));
                };
                let cond = self.empty(&opt, &m.receiver, true);
                cx.aliases.push((bound, opt));
                let then = self.expr(body, cx);
                cx.aliases.pop();
                let otherwise = self.expr(&m.args[0], cx);
                Ok(self.node(ast::ExprKind::If { cond: Box::new(cond), then: Box::new(then?), otherwise: Box::new(otherwise?) }, m))
            }
            _ => self.fail(&m.method, &format!("unsupported use of `{opt}: Option<&State>`"), &format!("the previous state is read with `if let Some({opt}) = {opt} {{ ... }} else {{ ... }}` or `{opt}.map_or(default, |{opt}| ...)`; `{opt}.is_none()` tests for its absence")),
        }
    }

    fn block_value(&mut self, b: &syn::Block, cx: &mut Cx) -> Result<ast::Expr, ()> {
        match b.stmts.as_slice() {
            [syn::Stmt::Expr(e, None)] => self.expr(e, cx),
            _ => self.fail(b, "a branch is one expression", "write `if c { a } else { b }`; name intermediate values with `let` before the `if`"),
        }
    }

    fn path(&mut self, p: &syn::ExprPath, cx: &mut Cx) -> Result<ast::Expr, ()> {
        if let Some(i) = p.path.get_ident() {
            let n = i.to_string();
            if n == cx.out {
                return self.fail(p, &format!("`{n}` is being built and cannot be read"), "read the arguments' fields, or name a value with `let` and use it twice");
            }
            if cx.optional.as_ref() == Some(&n) {
                return self.fail(p, &format!("`{n}` is an `Option<&State>`"), &format!("test it with `{n}.is_none()`, or read it with `if let Some({n}) = {n} {{ ... }} else {{ ... }}`"));
            }
            if cx.params.as_ref() == Some(&n) {
                return self.fail(p, "the params are read field by field", &format!("read a field: `{n}.w[i]`"));
            }
            if cx.reduce_vars.contains(&n) || cx.loops.iter().any(|l| l.var == n) {
                return Ok(self.name_expr(n, i));
            }
            if let Some(Local { psm, loops: vars, .. }) = cx.locals.iter().rev().find(|l| l.rust == n).cloned() {
                let base = ast::Ident { name: psm, span: self.id(i) };
                let indices = (!vars.is_empty()).then(|| {
                    vars.into_iter()
                        .map(|(v, sp)| ast::Expr { kind: ast::ExprKind::Access { base: ast::Ident { name: v, span: sp }, field: None, indices: None }, span: sp })
                        .collect()
                });
                return Ok(self.node(ast::ExprKind::Access { base, field: None, indices }, p));
            }
            return Ok(self.name_expr(n, i));
        }
        let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
        match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["f32" | "f64", "INFINITY"] => Ok(self.name_expr("inf".into(), p)),
            ["f32" | "f64", "NEG_INFINITY"] => {
                let inf = self.name_expr("inf".into(), p);
                Ok(self.node(ast::ExprKind::Unary { op: UnaryOp::Neg, arg: Box::new(inf) }, p))
            }
            _ => self.fail(p, &format!("unsupported path `{}`", p.to_token_stream()), "names are arguments, locals, loop variables, dims, `f32::INFINITY` and `f32::NEG_INFINITY`"),
        }
    }

    /// `arg.field[i][j]`.
    fn access(&mut self, e: &syn::Expr, cx: &mut Cx) -> Result<ast::Expr, ()> {
        let mut indices = Vec::new();
        let mut cur = e;
        while let syn::Expr::Index(ix) = cur {
            indices.insert(0, &*ix.index);
            cur = strip(&ix.expr);
        }
        let (base, field) = match cur {
            syn::Expr::Field(fe) => match (strip(&fe.base), &fe.member) {
                (syn::Expr::Path(p), syn::Member::Named(m)) if p.path.get_ident().is_some() => {
                    let b = p.path.get_ident().unwrap();
                    if *b == cx.out {
                        return self.fail(cur, &format!("`{}` is being built and cannot be read", cx.out), "read the arguments' fields; name a value with `let` to use it twice");
                    }
                    match cx.aliases.iter().rev().find(|a| b == &a.0) {
                        // `if let Some(q) = p`: `q.f` reads `p.f`, at `q`'s tokens.
                        Some((_, psm)) => (syn::Ident::new(psm, b.span()), m.clone()),
                        None if cx.optional.as_ref().is_some_and(|o| b == o) => {
                            return self.fail(cur, &format!("`{b}` is an `Option<&State>`"), &format!("read it where it is present: `if let Some({b}) = {b} {{ {b}.{m} ... }} else {{ ... }}`"));
                        }
                        None => (b.clone(), m.clone()),
                    }
                }
                _ => return self.fail(cur, "unsupported field access", "read a field of an argument: `l.a[i]`"),
            },
            syn::Expr::Path(p) => return self.fail(p, "only fields are indexed", "locals and loop variables are scalars; index a field: `l.a[i]`"),
            other => return self.fail(other, "unsupported access", "read a field of an argument: `l.a[i]`"),
        };
        let mut idx = Vec::new();
        for i in indices {
            idx.push(self.expr(i, cx));
        }
        let idx: Result<Vec<_>, ()> = idx.into_iter().collect();
        let indices = if idx.as_ref().is_ok_and(|v| v.is_empty()) { None } else { Some(idx?) };
        if cx.params.as_ref().is_some_and(|p| base == p) {
            let declared = self.params.clone().unwrap_or_default();
            if !declared.iter().any(|f| field == f) {
                let fields: Vec<String> = declared.iter().map(|f| format!("`{f}`")).collect();
                return self.fail_with(&field, &format!("no field `{field}` in `Params`"), &[format!("the fields of `Params` are {}", fields.join(", "))], "add it to `Params`, or read one of its fields");
            }
            // psm reads a param by its bare name.
            let base = self.ident(&field);
            return Ok(self.node(ast::ExprKind::Access { base, field: None, indices }, e));
        }
        let base = self.ident(&base);
        let field = self.ident(&field);
        Ok(self.node(ast::ExprKind::Access { base, field: Some(field), indices }, e))
    }

    fn method(&mut self, m: &syn::ExprMethodCall, cx: &mut Cx) -> Result<ast::Expr, ()> {
        let name = m.method.to_string();
        let e: &dyn ToTokens = m;
        if let (Some(opt), syn::Expr::Path(p)) = (&cx.optional, strip(&m.receiver)) {
            if p.path.is_ident(opt) && !cx.aliases.iter().any(|a| a.0 == *opt) {
                return self.option_method(m, opt.clone(), cx);
            }
        }
        // Reductions: `(0..N).map(|i| e).sum::<f32>()`, `.product()`, `.fold(f32::NEG_INFINITY, f32::max)`.
        let reduce = match name.as_str() {
            "sum" if m.args.is_empty() => Some(ReduceOp::Sum),
            "product" if m.args.is_empty() => Some(ReduceOp::Prod),
            "fold" if m.args.len() == 2 => {
                let a: Vec<String> = m.args.iter().map(|a| a.to_token_stream().to_string().replace(' ', "")).collect();
                match (a[0].as_str(), a[1].as_str()) {
                    ("f32::NEG_INFINITY" | "f64::NEG_INFINITY", "f32::max" | "f64::max") => Some(ReduceOp::Max),
                    ("f32::INFINITY" | "f64::INFINITY", "f32::min" | "f64::min") => Some(ReduceOp::Min),
                    _ => return self.fail(&m.args, "unsupported fold", "the folds are `.fold(f32::NEG_INFINITY, f32::max)` and `.fold(f32::INFINITY, f32::min)`"),
                }
            }
            _ => None,
        };
        if let Some(op) = reduce {
            let syn::Expr::MethodCall(map) = strip(&m.receiver) else {
                return self.fail(&m.receiver, "expected `(0..N).map(|i| e)`", "sum over a whole axis: `(0..N).map(|i| e).sum::<f32>()`");
            };
            if map.method != "map" || map.args.len() != 1 {
                return self.fail(&map.method, "expected `.map(|i| e)`", "sum over a whole axis: `(0..N).map(|i| e).sum::<f32>()`");
            }
            let syn::Expr::Closure(c) = &map.args[0] else {
                return self.fail(&map.args[0], "expected a closure `|i| e`", "sum over a whole axis: `(0..N).map(|i| e).sum::<f32>()`");
            };
            let var = match c.inputs.iter().collect::<Vec<_>>().as_slice() {
                [syn::Pat::Ident(pi)] => pi.ident.clone(),
                _ => return self.fail(&c.inputs, "the closure binds one index variable", "write `|i| e`"),
            };
            let (range, bound, value) = self.range(&map.receiver, "sum")?;
            let var_ident = self.ident(&var);
            self.checks.push(RangeCheck { var: var_ident.span, name: var.to_string(), value, range, bound_text: bound_text(&bound), is_loop: false });
            cx.reduce_vars.push(var.to_string());
            let body = self.expr(&c.body, cx);
            cx.reduce_vars.pop();
            return Ok(self.node(ast::ExprKind::Reduce { op, var: var_ident, body: Box::new(body?) }, e));
        }
        // `x.q[i].to_f32()`: a bf16/f16 value widened, as psm reads it anyway.
        if name == "to_f32" && m.args.is_empty() {
            return self.expr(&m.receiver, cx);
        }
        let Some(&(_, func)) = METHODS.iter().find(|(r, _)| *r == name) else {
            let names: Vec<&str> = METHODS.iter().map(|(r, _)| *r).collect();
            return self.fail(&m.method, &format!("method `{name}` is not supported"), &format!("the supported `f32` methods are {}", names.join(", ")));
        };
        let arity = psm_ir::ir::Func::from_name(func).map_or(1, |f| f.arity());
        if m.args.len() + 1 != arity {
            let call = if arity == 1 { format!("x.{name}()") } else { format!("x.{name}(y)") };
            let takes = if arity == 1 { "no argument" } else { "one argument" };
            return self.fail(m, &format!("`{name}` takes {takes} besides its receiver"), &format!("write `{call}`"));
        }
        let mut args = vec![self.expr(&m.receiver, cx)];
        for a in &m.args {
            args.push(self.expr(a, cx));
        }
        let args: Vec<ast::Expr> = args.into_iter().collect::<Result<_, _>>()?;
        let func = ast::Ident { name: func.into(), span: self.id(&m.method) };
        Ok(self.node(ast::ExprKind::Call { func, args }, e))
    }

    /// `f32::exp(x)`, `f32::max(a, b)`, ...
    fn call(&mut self, c: &syn::ExprCall, cx: &mut Cx) -> Result<ast::Expr, ()> {
        let names: Vec<&str> = METHODS.iter().map(|(r, _)| *r).collect();
        let help = format!("call an `f32` method: `x.exp()` or `f32::exp(x)`; the methods are {}", names.join(", "));
        if let syn::Expr::Closure(cl) = strip(&c.func) {
            return self.fail(cl, "closures are not supported here", "a closure may only be the body of a sum: `(0..N).map(|i| e).sum::<f32>()`; name a value with `let` instead");
        }
        let syn::Expr::Path(p) = strip(&c.func) else {
            return self.fail(&c.func, "unsupported call", &help);
        };
        let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
        // `bf16::from_f32(e)` / `f16::from_f32(e)` into a 16-bit output: psm rounds
        // when it stores the value, the same rounding.
        if let [.., t, f] = segs.as_slice() {
            if (t == "bf16" || t == "f16") && f == "from_f32" && c.args.len() == 1 {
                return self.expr(&c.args[0], cx);
            }
        }
        let func = match segs.as_slice() {
            [t, f] if (t == "f32" || t == "f64") => METHODS.iter().find(|(r, _)| r == f).map(|&(_, p)| p),
            _ => None,
        };
        let Some(func) = func else {
            return self.fail(&c.func, &format!("function `{}` is not supported", p.to_token_stream()), &help);
        };
        let arity = psm_ir::ir::Func::from_name(func).map_or(1, |f| f.arity());
        if c.args.len() != arity {
            let f = p.to_token_stream().to_string().replace(' ', "");
            let call = if arity == 1 { format!("{f}(x)") } else { format!("{f}(x, y)") };
            return self.fail(c, &format!("`{f}` takes {arity} argument{}, found {}", if arity == 1 { "" } else { "s" }, c.args.len()), &format!("write `{call}`"));
        }
        let mut args = Vec::new();
        for a in &c.args {
            args.push(self.expr(a, cx));
        }
        let args: Vec<ast::Expr> = args.into_iter().collect::<Result<_, _>>()?;
        let func = ast::Ident { name: func.into(), span: self.id(&p.path.segments.last().unwrap().ident) };
        Ok(self.node(ast::ExprKind::Call { func, args }, c))
    }
}

pub fn readout_kind(name: &str) -> Option<ReadoutKind> {
    match name {
        "readout" => Some(ReadoutKind::Inclusive),
        "readout_exclusive" => Some(ReadoutKind::Exclusive),
        _ => None,
    }
}

fn strip(e: &syn::Expr) -> &syn::Expr {
    match e {
        syn::Expr::Paren(p) => strip(&p.expr),
        syn::Expr::Group(g) => strip(&g.expr),
        e => e,
    }
}

fn is_compound(op: &syn::BinOp) -> bool {
    use syn::BinOp as B;
    matches!(
        op,
        B::AddAssign(_) | B::SubAssign(_) | B::MulAssign(_) | B::DivAssign(_) | B::RemAssign(_) | B::BitXorAssign(_) | B::BitAndAssign(_) | B::BitOrAssign(_) | B::ShlAssign(_) | B::ShrAssign(_)
    )
}

/// `Option<&T>` → `T`.
fn option_of_ref(t: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = t else { return None };
    let seg = p.path.segments.last().filter(|s| s.ident == "Option" && p.qself.is_none())?;
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else { return None };
    match a.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(syn::Type::Reference(r))] if r.mutability.is_none() => Some(&r.elem),
        _ => None,
    }
}

/// `&T` → `T`.
fn strip_ref(t: &syn::Type) -> &syn::Type {
    match t {
        syn::Type::Reference(r) if r.mutability.is_none() => &r.elem,
        t => t,
    }
}

/// The single identifier a type names (`State`, `f32`), if it is one.
pub fn type_name(t: &syn::Type) -> Option<String> {
    match t {
        syn::Type::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        syn::Type::Paren(p) => type_name(&p.elem),
        syn::Type::Group(g) => type_name(&g.elem),
        _ => None,
    }
}

/// `let mut out = Ret::default();` or `let mut out: Ret = Default::default();`.
fn is_default_init(l: &syn::Local, ret: &str) -> bool {
    let (pi, ty) = match &l.pat {
        syn::Pat::Ident(pi) => (pi, None),
        syn::Pat::Type(pt) => match &*pt.pat {
            syn::Pat::Ident(pi) => (pi, Some(&*pt.ty)),
            _ => return false,
        },
        _ => return false,
    };
    if pi.mutability.is_none() || pi.by_ref.is_some() || pi.subpat.is_some() {
        return false;
    }
    let Some(init) = &l.init else { return false };
    let syn::Expr::Call(c) = &*init.expr else { return false };
    if !c.args.is_empty() {
        return false;
    }
    let syn::Expr::Path(p) = &*c.func else { return false };
    let segs: Vec<String> = p.path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [t, "default"] if *t == ret || *t == "Self" => true,
        ["Default", "default"] => ty.and_then(type_name).as_deref() == Some(ret),
        _ => false,
    }
}

fn bound_text(b: &ast::SizeExpr) -> String {
    match &b.kind {
        ast::SizeKind::Int(v) => v.to_string(),
        ast::SizeKind::Name(n) => n.clone(),
        ast::SizeKind::Binary(..) => "?".into(),
    }
}
