//! `#[psm_aggregator]`: a psm aggregator written in Rust, lowered into the same IR as a
//! `.psm` file and checked (names, shapes, types, the algebra) during expansion.
//! Use it through the `psm` crate, which re-exports it with the runtime trait.
//!
//! The accepted shape (docs/macros.md has the full reference):
//!
//! ```ignore
//! #[psm::psm_aggregator(associative, dims(D = 16))]
//! mod diag_affine {
//!     pub struct Input { pub a: [f32; D], pub b: [f32; D] }
//!     pub struct State { pub a: [f32; D], pub b: [f32; D] }
//!     pub struct Output { pub y: [f32; D] }
//!     pub fn identity() -> State { let mut e = State::default(); for d in 0..D { e.a[d] = 1.0; e.b[d] = 0.0; } e }
//!     pub fn combine(l: &State, r: &State) -> State {   // l earlier, r later
//!         let mut out = State::default();
//!         for d in 0..D {
//!             out.a[d] = l.a[d] * r.a[d];
//!             out.b[d] = r.a[d] * l.b[d] + r.b[d];
//!         }
//!         out
//!     }
//!     pub fn readout(s: &State, x: &Input) -> Output { let mut y = Output::default(); for d in 0..D { y.y[d] = s.b[d]; } y }
//! }
//! ```
//!
//! Attribute arguments: `associative` (a claim: a compile error unless the checker
//! proves or verifies it), `assume_associative` (trust it when the checker can only say
//! `unknown`), `dims(D = 16, N = 4)` (sizes; each becomes `pub const D: usize` and a
//! const generic, with that default, of the structs that use it and of `Aggregator`).
//! A `struct Params` holds weights; any function may take `p: &Params` last.

use std::collections::HashMap;

use proc_macro2::TokenStream;
use psm_ir::front::dsl::ast;
use psm_ir::ir::Role;
use quote::{format_ident, quote, ToTokens};

mod emit;
mod report;
mod spans;
mod translate;

use spans::{message, Spans};
use translate::{StructInfo, Translator};

#[proc_macro_attribute]
pub fn psm_aggregator(attr: proc_macro::TokenStream, item: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand(attr.into(), item.into()).into()
}

#[derive(Default)]
struct Args {
    associative: Option<syn::Path>,
    assume: Option<syn::Path>,
    dims: Vec<(syn::Ident, i64)>,
}

fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let mut args = Args::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("associative") {
            args.associative = Some(meta.path.clone());
            Ok(())
        } else if meta.path.is_ident("assume_associative") {
            args.assume = Some(meta.path.clone());
            Ok(())
        } else if meta.path.is_ident("dims") {
            meta.parse_nested_meta(|d| {
                let Some(name) = d.path.get_ident().cloned() else {
                    return Err(d.error("a dim is a name: `dims(D = 16)`"));
                };
                let lit: syn::LitInt = d.value()?.parse()?;
                let v = lit.base10_parse::<i64>()?;
                if v <= 0 {
                    return Err(syn::Error::new(lit.span(), "dims must be positive"));
                }
                if args.dims.iter().any(|(n, _)| *n == name) {
                    return Err(syn::Error::new(name.span(), format!("dim `{name}` is declared twice")));
                }
                args.dims.push((name, v));
                Ok(())
            })
        } else {
            Err(meta.error(message(
                "unknown argument of `psm_aggregator`",
                &[],
                &["the arguments are `associative`, `assume_associative` and `dims(D = 16, ...)`".into()],
            )))
        }
    });
    syn::parse::Parser::parse2(parser, attr)?;
    Ok(args)
}

fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut module: syn::ItemMod = match syn::parse2(item.clone()) {
        Ok(m) => m,
        Err(_) => {
            let e = syn::Error::new_spanned(
                first_tokens(&item),
                message(
                    "`#[psm_aggregator]` goes on an inline module",
                    &[],
                    &["write `mod name { struct Input {..} struct State {..} fn combine(l: &State, r: &State) -> State {..} }`".into()],
                ),
            )
            .to_compile_error();
            return quote!(#item #e);
        }
    };
    let args = match parse_args(attr) {
        Ok(a) => a,
        Err(e) => {
            let e = e.to_compile_error();
            return quote!(#module #e);
        }
    };
    if module.content.is_none() {
        let e = syn::Error::new_spanned(&module, "`#[psm_aggregator]` needs the module's items inline: `mod name { ... }`").to_compile_error();
        return quote!(#module #e);
    }
    let dims: Vec<(String, i64)> = args.dims.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let mut spans = Spans::new(&module.ident);
    let mut placeholders = Vec::new();
    let checked = check(&module, &args, &dims, &mut spans, &mut placeholders);
    let (errors, generated) = match checked {
        Ok(c) => (None, Some(c)),
        Err((errors, structs)) => (spans::combine(errors), structs.map(|s| Generated { structs: *s, module: None })),
    };
    augment(&mut module, &args, generated.as_ref(), &placeholders);
    let errors = errors.map(|e| e.to_compile_error());
    quote!(#module #errors)
}

/// What the module declares, for the generated impl.
struct Structs {
    input: StructInfo,
    state: StructInfo,
    /// `None`: no readout, the outputs are the state's fields.
    output: Option<StructInfo>,
    params: Option<StructInfo>,
}

struct Generated {
    structs: Structs,
    /// The IR as arena pushes; `None` when the item did not check.
    module: Option<TokenStream>,
}

/// The errors, and the structs when they were read (boxed: a `Result`'s error stays small).
type Failure = (Vec<syn::Error>, Option<Box<Structs>>);

fn check(module: &syn::ItemMod, args: &Args, dims: &[(String, i64)], spans: &mut Spans, placeholders: &mut Vec<syn::Ident>) -> Result<Generated, Failure> {
    let items = &module.content.as_ref().expect("checked").1;
    let name = module.ident.to_string();
    let params_struct = items.iter().find_map(|i| match i {
        syn::Item::Struct(s) if s.ident == "Params" => Some(s),
        _ => None,
    });
    let param_names = params_struct.map(|s| s.fields.iter().filter_map(|f| f.ident.as_ref().map(|i| i.to_string())).collect());
    let mut t = Translator { spans, dims, params: param_names, errors: Vec::new(), checks: Vec::new(), unknown_dims: Vec::new() };
    let mut input = None;
    let mut state = None;
    let mut output = None;
    let mut fns: Vec<(&str, &syn::ItemFn)> = Vec::new();
    const SHAPE: &str = "a psm aggregator module holds `struct Input`, `struct State`, the optional `struct Output` and `struct Params`, `fn combine` and the optional `fn identity`, `fn lift`, `fn readout` (or `fn readout_exclusive`)";
    for item in items {
        match item {
            syn::Item::Struct(s) => {
                let slot = match s.ident.to_string().as_str() {
                    "Input" => &mut input,
                    "State" => &mut state,
                    "Output" => &mut output,
                    "Params" => continue,
                    other => {
                        t.errors.push(syn::Error::new(s.ident.span(), message(&format!("unexpected struct `{other}`"), &[], &[SHAPE.into()])));
                        continue;
                    }
                };
                *slot = Some(s);
            }
            syn::Item::Fn(f) => {
                let n = f.sig.ident.to_string();
                match n.as_str() {
                    "identity" | "lift" | "combine" | "readout" | "readout_exclusive" => {
                        let kind = if n.starts_with("readout") { "readout" } else { fns_kind(&n) };
                        if let Some(prev) = fns.iter().find(|(k, _)| *k == kind) {
                            let first = t.spans.id(&prev.1.sig.ident);
                            let note = t.spans.label(first, &format!("the first `{kind}` is defined here"));
                            let help = format!("an aggregator has one `{kind}`: remove one of them");
                            t.errors.push(syn::Error::new(f.sig.ident.span(), message(&format!("second `{kind}` in aggregator `{name}`"), &[note], &[help])));
                            continue;
                        }
                        fns.push((kind, f));
                    }
                    other => t.errors.push(syn::Error::new(
                        f.sig.ident.span(),
                        message(&format!("unexpected function `{other}`"), &[], &[SHAPE.into(), "helper functions are not supported yet: write the expression inline or name it with `let`".into()]),
                    )),
                }
            }
            syn::Item::Use(_) => {}
            syn::Item::Impl(i) if is_default_impl(i) => {}
            other => t.errors.push(syn::Error::new_spanned(first_tokens(&other.to_token_stream()), message("unexpected item", &[], &[SHAPE.into()]))),
        }
    }
    let missing = |what: &str, help: &str, t: &mut Translator| {
        t.errors.push(syn::Error::new(module.ident.span(), message(&format!("aggregator `{name}` has no {what}"), &[], &[help.into()])));
    };
    if input.is_none() {
        missing("`struct Input`", "declare the per-step data: `pub struct Input { pub v: f32 }`", &mut t);
    }
    if state.is_none() {
        missing("`struct State`", "declare the scanned value: `pub struct State { pub v: f32 }`", &mut t);
    }
    if !fns.iter().any(|(n, _)| *n == "combine") {
        missing("`combine`", "write how two states merge, the earlier one first: `pub fn combine(l: &State, r: &State) -> State`", &mut t);
    }
    let readout = fns.iter().find(|(n, _)| *n == "readout").map(|(_, f)| *f);
    match (readout, output) {
        (Some(f), None) => t.errors.push(syn::Error::new(
            f.sig.output.to_token_stream().into_iter().last().map_or(f.sig.ident.span(), |t| t.span()),
            message("a readout returns `Output`, which this module does not declare", &[], &["declare it: `pub struct Output { pub y: [f32; D] }`".into()]),
        )),
        (None, Some(o)) => t.errors.push(syn::Error::new(
            o.ident.span(),
            message("`Output` is declared but there is no readout", &[], &["add `pub fn readout(s: &State, x: &Input) -> Output`, or remove `Output` (the outputs are then the state's fields)".into()]),
        )),
        _ => {}
    }

    let input = input.and_then(|s| t.structure(s));
    let state = state.and_then(|s| t.structure(s));
    let output = output.and_then(|s| t.structure(s));
    let params = params_struct.map(|s| t.structure(s));
    let structs = match (input, state, params) {
        (Some(input), Some(state), params) if (readout.is_none() || output.is_some()) && !matches!(params, Some(None)) => {
            Some(Structs { input, state, output: if readout.is_some() { output } else { None }, params: params.flatten() })
        }
        _ => None,
    };
    let Some(structs) = structs else {
        *placeholders = t.unknown_dims.clone();
        return Err((t.errors, None));
    };

    // The syntax tree.
    let agg_span = t.spans.id(&module.ident);
    // In a `.psm` file's order: param, input, element.
    let mut ast_items = Vec::new();
    if let Some(p) = &structs.params {
        ast_items.push(ast::Item::Decls { role: Role::Param, decls: p.decls.clone(), span: t.spans.id(&p.ident) });
    }
    ast_items.push(ast::Item::Decls { role: Role::Input, decls: structs.input.decls.clone(), span: t.spans.id(&structs.input.ident) });
    ast_items.push(ast::Item::Decls { role: Role::Element, decls: structs.state.decls.clone(), span: t.spans.id(&structs.state.ident) });
    let mut heads = std::collections::HashMap::new();
    for (kind, f) in &fns {
        let head = t.spans.id(&f.sig.ident);
        heads.insert(*kind, head);
        let errors = t.errors.len();
        match *kind {
            "identity" => {
                if let Some(a) = t.signature(f, &[], "State") {
                    if let Some(body) = t.body(f, "State", head, &a) {
                        ast_items.push(ast::Item::Identity { body });
                    }
                }
            }
            "lift" => {
                if let Some(a) = t.signature(f, &["Input"], "State") {
                    if let Some(body) = t.body(f, "State", head, &a) {
                        ast_items.push(ast::Item::Lift { input: a.names[0].clone(), body });
                    }
                }
            }
            "combine" => {
                if let Some(a) = t.signature(f, &["State", "State"], "State") {
                    if let Some(body) = t.body(f, "State", head, &a) {
                        ast_items.push(ast::Item::Combine { left: a.names[0].clone(), right: a.names[1].clone(), body });
                    }
                }
            }
            _ => {
                let kind = translate::readout_kind(&f.sig.ident.to_string()).expect("a readout");
                if let Some(a) = t.signature(f, &["State", "Input"], "Output") {
                    if let Some(body) = t.body(f, "Output", head, &a) {
                        let outputs = structs.output.as_ref().map(|o| o.decls.clone()).unwrap_or_default();
                        ast_items.push(ast::Item::Readout { kind, state: a.names[0].clone(), input: a.names[1].clone(), outputs, body });
                    }
                }
            }
        }
        debug_assert!(t.errors.len() >= errors);
    }
    if let Some(p) = &args.assume {
        let span = t.spans.id(p);
        ast_items.push(ast::Item::Assume { property: ast::Ident { name: "associative".into(), span }, span });
    }
    if !t.errors.is_empty() {
        *placeholders = t.unknown_dims.clone();
        return Err((t.errors, Some(Box::new(structs))));
    }
    let doc = module
        .attrs
        .iter()
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dim_decls = args
        .dims
        .iter()
        .map(|(n, v)| {
            let span = t.spans.id(n);
            ast::DimDecl { name: ast::Ident { name: n.to_string(), span }, default: Some((*v, span)) }
        })
        .collect();
    let file = ast::File {
        aggregators: vec![ast::Aggregator { doc, name: ast::Ident { name: name.clone(), span: agg_span }, dims: dim_decls, items: ast_items, span: agg_span }],
    };
    let checks = std::mem::take(&mut t.checks);
    let fail = |spans: &Spans, diags: Vec<psm_ir::Diagnostic>| diags.iter().map(|d| report::diagnostic(spans, d, &name, dims)).collect::<Vec<_>>();

    // Lowering, validation, the algebra: exactly a `.psm` file's.
    let ir = match psm_ir::front::builder::lower(&file) {
        Ok(m) => m,
        Err(d) => return Err((fail(spans, d), Some(Box::new(structs)))),
    };
    let info = match psm_ir::valid::validate(&ir, &[]) {
        Ok(mut i) => i.remove(0),
        Err(d) => return Err((fail(spans, d), Some(Box::new(structs)))),
    };
    let agg = &ir.aggregators[0];
    let mut errors = Vec::new();
    let mut reported = Vec::new();
    for (h, _) in agg.index_vars.iter() {
        let span = agg.index_vars.span(h);
        let Some(c) = checks.iter().find(|c| c.var == span) else { continue };
        let extent = info.extent(h) as i64;
        if extent != c.value && !reported.contains(&c.var) {
            reported.push(c.var);
            let dim = dims.iter().find(|(_, v)| *v == extent).map(|(n, _)| n.clone()).unwrap_or(extent.to_string());
            let (what, note) = if c.is_loop {
                (
                    format!("`for {} in 0..{}` runs over {} values, but the field it indexes has {extent}", c.name, c.bound_text, c.value),
                    format!("psm assigns every entry: `{}` ranges over the whole axis it indexes", c.name),
                )
            } else {
                (
                    format!("this sum runs over {} values, but `{}` indexes an axis of {extent}", c.value, c.name),
                    format!("psm sums over the whole axis `{}` indexes", c.name),
                )
            };
            errors.push(spans.error(c.range, message(&what, &[note], &[format!("write `0..{dim}`")])));
        }
    }
    if !errors.is_empty() {
        return Err((errors, Some(Box::new(structs))));
    }
    let report = psm_ir::algebra::analyze(agg, &info);
    use psm_ir::algebra::VerdictKind;
    let assoc = &report.associative;
    let combine_head = heads["combine"];
    // The counterexample, the statement of `body` that sets the field where the two
    // sides first differ (as a secondary label), and how the checker got there.
    let cx = |v: &psm_ir::algebra::Verdict, body: Option<&psm_ir::ir::Body>, what: &str| {
        let mut notes = Vec::new();
        if let Some(c) = &v.counterexample {
            notes.push(report::counterexample(c));
            let stmt = body.and_then(|b| b.stmts.iter().find(|s| matches!(s.target, psm_ir::ir::Target::Tensor(h) if agg.tensors[h].name == c.field)));
            if let Some(s) = stmt {
                notes.push(spans.label(s.span, &format!("`{}` and `{}` first differ in `{}`, which {what} sets here", c.lhs_name, c.rhs_name, c.field)));
            }
        }
        notes.push(format!("checker: {}", v.method));
        notes
    };
    if let Some(p) = &args.associative {
        let claim = p.to_token_stream().to_string();
        match assoc.kind {
            VerdictKind::Refuted => errors.push(spans.error(
                combine_head,
                message(
                    &format!("`combine` is not associative, but `#[psm_aggregator({claim})]` says it is"),
                    &cx(assoc, Some(&agg.combine), "`combine`"),
                    &["fix `combine`, or remove `associative`: a non-associative operator still compiles and runs in the tree and stream forms".into()],
                ),
            )),
            VerdictKind::Unknown if args.assume.is_none() => errors.push(spans.error(
                combine_head,
                message(
                    "the checker could not decide whether `combine` is associative",
                    &cx(assoc, None, ""),
                    &["if you know it is, write `#[psm_aggregator(assume_associative)]`; otherwise remove `associative` (the tree and stream forms need no claim)".into()],
                ),
            )),
            _ => {}
        }
    }
    if args.assume.is_some() && assoc.kind == VerdictKind::Refuted && args.associative.is_none() {
        errors.push(spans.error(
            combine_head,
            message(
                "`assume_associative` on a `combine` that is not associative",
                &cx(assoc, Some(&agg.combine), "`combine`"),
                &["an assumption never overrides a counterexample: fix `combine` or remove `assume_associative`".into()],
            ),
        ));
    }
    if let (Some(v), Some(&head)) = (&report.identity, heads.get("identity")) {
        if v.kind == VerdictKind::Refuted {
            errors.push(spans.error(
                head,
                message(
                    "`identity` is not an identity of `combine`",
                    &cx(v, agg.identity.as_ref(), "the identity"),
                    &["fix it, or remove `fn identity`: psm then uses a flagged identity that is never evaluated".into()],
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err((errors, Some(Box::new(structs))));
    }
    match emit::module(&ir) {
        Ok(module) => Ok(Generated { structs, module: Some(module) }),
        Err(e) => Err((vec![spans.error(agg_span, format!("internal error of psm-macros: {e}"))], Some(Box::new(structs)))),
    }
}

fn fns_kind(n: &str) -> &'static str {
    match n {
        "identity" => "identity",
        "lift" => "lift",
        _ => "combine",
    }
}

fn is_default_impl(i: &syn::ItemImpl) -> bool {
    i.trait_.as_ref().is_some_and(|(_, p, _)| p.is_ident("Default"))
}

/// The first token of a stream (errors about a whole item point at its start).
fn first_tokens(ts: &TokenStream) -> TokenStream {
    ts.clone().into_iter().take(1).collect()
}

/// The user's module as written, plus derives, dims as consts and the generated type.
fn augment(module: &mut syn::ItemMod, args: &Args, generated: Option<&Generated>, placeholders: &[syn::Ident]) {
    let items = &mut module.content.as_mut().expect("checked").1;
    let user_default: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Impl(im) if is_default_impl(im) => translate::type_name(&im.self_ty),
            _ => None,
        })
        .collect();
    let mut extra: Vec<syn::Item> = Vec::new();
    // Each struct is generic over the dims its fields use, defaulting to the attribute's
    // values: `State` is `State<16>`, and `Aggregator<64>` runs `State<64>`.
    let mut generic: HashMap<String, Vec<syn::Ident>> = HashMap::new();
    for item in items.iter_mut() {
        if let syn::Item::Fn(f) = item {
            // psm runs them: never calling the plain Rust is no reason for a warning; and
            // their bodies follow the convention the translation requires (`let mut out =
            // State::default();`, then field assignments), which clippy would flag.
            if translate::readout_kind(&f.sig.ident.to_string()).is_some() || ["identity", "lift", "combine"].iter().any(|n| f.sig.ident == n) {
                f.attrs.push(syn::parse_quote!(#[allow(dead_code, clippy::field_reassign_with_default)]));
            }
            continue;
        }
        let syn::Item::Struct(s) = item else { continue };
        if !["Input", "State", "Output", "Params"].contains(&s.ident.to_string().as_str()) {
            continue;
        }
        if s.generics.params.is_empty() {
            let used = dims_used(s, &args.dims);
            for (n, v) in &used {
                let v = *v as usize;
                s.generics.params.push(syn::parse_quote!(const #n: usize = #v));
            }
            if !used.is_empty() {
                // std derives `Default` for arrays of at most 32 entries only; the zero
                // `Default` below is what it would have made.
                strip_derive(&mut s.attrs, "Default");
            }
            generic.insert(s.ident.to_string(), used.into_iter().map(|(n, _)| n).collect());
        }
        let derived = derived(&s.attrs);
        let want: Vec<syn::Ident> = ["Clone", "Copy", "Debug", "PartialEq"]
            .iter()
            .filter(|d| !derived.iter().any(|x| x == *d))
            .map(|d| format_ident!("{}", d))
            .collect();
        if !want.is_empty() {
            s.attrs.push(syn::parse_quote!(#[derive(#(#want),*)]));
        }
        let has_default = derived.iter().any(|d| d == "Default") || user_default.contains(&s.ident.to_string());
        if !has_default {
            if let syn::Fields::Named(named) = &s.fields {
                let ident = &s.ident;
                let (impl_generics, ty_generics, _) = s.generics.split_for_impl();
                let fields = named.named.iter().map(|f| {
                    let (n, z) = (f.ident.as_ref().expect("named"), zero(&f.ty));
                    quote!(#n: #z)
                });
                extra.push(syn::parse_quote! {
                    impl #impl_generics ::core::default::Default for #ident #ty_generics {
                        fn default() -> Self { #ident { #(#fields),* } }
                    }
                });
            }
        }
    }
    // `x.rsqrt()`, `x.sigmoid()`, `x.softplus()` in the plain Rust.
    extra.push(syn::parse_quote!(#[allow(unused_imports)] use ::psm::Float as _;));
    for (n, v) in &args.dims {
        let v = *v as usize;
        extra.push(syn::parse_quote!(#[allow(dead_code)] pub const #n: usize = #v;));
    }
    // Unknown dims already have an error: a placeholder keeps rustc from repeating it.
    for n in placeholders {
        extra.push(syn::parse_quote!(#[doc(hidden)] #[allow(dead_code)] pub const #n: usize = 1;));
    }
    if let Some(g) = generated {
        extra.extend(aggregator_impl(&module.ident, g, &args.dims, &generic));
    }
    items.extend(extra);
}

/// The dims a struct's field types name, in the attribute's order.
fn dims_used(s: &syn::ItemStruct, dims: &[(syn::Ident, i64)]) -> Vec<(syn::Ident, i64)> {
    fn idents(ts: TokenStream, out: &mut Vec<String>) {
        for t in ts {
            match t {
                proc_macro2::TokenTree::Ident(i) => out.push(i.to_string()),
                proc_macro2::TokenTree::Group(g) => idents(g.stream(), out),
                _ => {}
            }
        }
    }
    let mut names = Vec::new();
    for f in &s.fields {
        idents(f.ty.to_token_stream(), &mut names);
    }
    dims.iter().filter(|(n, _)| names.iter().any(|x| n == x)).cloned().collect()
}

/// Removes `name` from the struct's `#[derive(...)]` lists.
fn strip_derive(attrs: &mut [syn::Attribute], name: &str) {
    for a in attrs.iter_mut().filter(|a| a.path().is_ident("derive")) {
        let Ok(paths) = a.parse_args_with(syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated) else { continue };
        let kept: Vec<&syn::Path> = paths.iter().filter(|p| p.segments.last().is_none_or(|s| s.ident != name)).collect();
        *a = syn::parse_quote!(#[derive(#(#kept),*)]);
    }
}

fn derived(attrs: &[syn::Attribute]) -> Vec<String> {
    let mut out = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = a.parse_nested_meta(|m| {
            if let Some(i) = m.path.segments.last() {
                out.push(i.ident.to_string());
            }
            Ok(())
        });
    }
    out
}

fn zero(ty: &syn::Type) -> TokenStream {
    match ty {
        syn::Type::Array(a) => {
            let (z, len) = (zero(&a.elem), &a.len);
            quote!([#z; #len])
        }
        syn::Type::Paren(p) => zero(&p.elem),
        t if translate::type_name(t).as_deref() == Some("i32") => quote!(0),
        t if matches!(translate::type_name(t).as_deref(), Some("f32" | "f64")) => quote!(0.0),
        _ => quote!(::core::default::Default::default()),
    }
}

fn aggregator_impl(ident: &syn::Ident, g: &Generated, dims: &[(syn::Ident, i64)], generic: &HashMap<String, Vec<syn::Ident>>) -> Vec<syn::Item> {
    let name = ident.to_string();
    let s = &g.structs;
    // A struct's type at the aggregator's dims: `State<D, N>`.
    let full = |info: &StructInfo| {
        let ty = &info.ident;
        match generic.get(&ty.to_string()) {
            Some(d) if !d.is_empty() => quote!(#ty<#(#d),*>),
            _ => quote!(#ty),
        }
    };
    let fields = |info: &StructInfo, xs: TokenStream| {
        let ty = full(info);
        let entries = info.fields.iter().map(|(f, _)| {
            let n = f.to_string();
            quote!((#n, ::psm::__private::gather(#xs, |x: &#ty| &x.#f)))
        });
        quote!(::std::vec![#(#entries),*])
    };
    // Values of a struct from named tensors, `n` of them.
    let read = |info: &StructInfo| {
        let ty = &info.ident;
        let cols = info.fields.iter().map(|(f, fty)| {
            let (n, var) = (f.to_string(), format_ident!("__psm_{}", f));
            quote!(let #var: ::std::vec::Vec<#fty> = ::psm::__private::column(tensors, #n, n);)
        });
        let inits = info.fields.iter().map(|(f, _)| {
            let var = format_ident!("__psm_{}", f);
            quote!(#f: #var[t])
        });
        quote! {
            #(#cols)*
            (0..n).map(|t| #ty { #(#inits),* }).collect()
        }
    };
    let (input_ty, state_ty) = (full(&s.input), full(&s.state));
    let out = s.output.as_ref().unwrap_or(&s.state);
    let out_ty = full(out);
    let input_fields = fields(&s.input, quote!(xs));
    let state_fields = fields(&s.state, quote!(xs));
    let (params_ty, param_fields) = match &s.params {
        Some(p) => (full(p), fields(p, quote!(::std::slice::from_ref(p)))),
        None => (quote!(()), quote!({ let _ = p; ::std::vec::Vec::new() })),
    };
    let (read_outputs, read_states) = (read(out), read(&s.state));
    let dim_values = dims.iter().map(|(n, _)| {
        let text = n.to_string();
        quote!(::psm::DimOverride { name: ::std::string::String::from(#text), value: #n as i64 })
    });
    let module_body = match &g.module {
        Some(m) => m.clone(),
        None => quote!(::std::panic!("psm: `{}` did not compile", #name)),
    };
    let doc = format!(
        "The psm aggregator `{name}`: run it with `psm::Op::<{name}::Aggregator>`; `Aggregator<{}>` runs it at other dims.",
        dims.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
    );
    let dim_params: Vec<TokenStream> = dims
        .iter()
        .map(|(n, v)| {
            let v = *v as usize;
            quote!(const #n: usize = #v)
        })
        .collect();
    let impl_params = dims.iter().map(|(n, _)| quote!(const #n: usize));
    let dim_names = dims.iter().map(|(n, _)| n);
    vec![
        syn::parse_quote!(#[doc = #doc] #[derive(Clone, Copy, Debug, Default)] pub struct Aggregator<#(#dim_params),*>;),
        syn::parse_quote! {
            impl<#(#impl_params),*> ::psm::Aggregator for Aggregator<#(#dim_names),*> {
                type Params = #params_ty;
                type Input = #input_ty;
                type State = #state_ty;
                type Output = #out_ty;
                const NAME: &'static str = #name;
                // Arenas a module leaves empty are never pushed to, nor their handles read.
                #[allow(unused_mut, unused_variables)]
                fn module() -> ::psm::__private::psm_ir::ir::Module { #module_body }
                fn dims() -> ::std::vec::Vec<::psm::DimOverride> { ::std::vec![#(#dim_values),*] }
                fn param_fields(p: &#params_ty) -> ::std::vec::Vec<(&'static str, ::psm::Buffer)> { #param_fields }
                fn input_fields(xs: &[#input_ty]) -> ::std::vec::Vec<(&'static str, ::psm::Buffer)> { #input_fields }
                fn state_fields(xs: &[#state_ty]) -> ::std::vec::Vec<(&'static str, ::psm::Buffer)> { #state_fields }
                fn outputs(tensors: &[::psm::Tensor], n: usize) -> ::std::vec::Vec<#out_ty> { #read_outputs }
                fn states(tensors: &[::psm::Tensor], n: usize) -> ::std::vec::Vec<#state_ty> { #read_states }
            }
        },
    ]
}
