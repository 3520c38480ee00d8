//! The validated IR as Rust code that rebuilds it: the module is built and checked at
//! compile time and embedded in the user's crate as arena pushes, in the arenas' own
//! order, so the runtime receives exactly the IR that was checked (same handles, same
//! spans) without lowering or parsing anything.

use proc_macro2::TokenStream;
use psm_ir::arena::{Arena, Handle};
use psm_ir::ir::{self, Expr, Size, Source, Target};
use quote::{format_ident, quote};

/// An expression of type `psm_ir::ir::Module`, or an error when an arena refers forward
/// (the lowering pushes children before parents; the rebuild relies on it).
pub fn module(m: &ir::Module) -> Result<TokenStream, String> {
    let aggs = m.aggregators.iter().map(aggregator).collect::<Result<Vec<_>, _>>()?;
    Ok(quote! {{
        use ::psm::__private::psm_ir::arena::{Arena, Handle};
        use ::psm::__private::psm_ir::ir as I;
        use ::psm::__private::psm_ir::Span as S;
        I::Module { aggregators: ::std::vec![#(#aggs),*] }
    }})
}

fn span(s: psm_ir::Span) -> TokenStream {
    let (a, b) = (s.start, s.end);
    quote!(S { start: #a, end: #b })
}

fn string(s: &str) -> TokenStream {
    quote!(::std::string::String::from(#s))
}

/// A handle of arena `name`, rebuilt as the `k`-th handle pushed into it.
fn handle<T>(name: &str, h: Handle<T>) -> TokenStream {
    let (v, k) = (format_ident!("{}", name), h.index());
    quote!(#v[#k])
}

fn handles<T>(name: &str, hs: &[Handle<T>]) -> TokenStream {
    let items = hs.iter().map(|&h| handle(name, h));
    quote!(::std::vec![#(#items),*])
}

/// `let mut arena = Arena::new(); let mut name = Vec::new(); name.push(arena.push(v, span)); ...`
fn arena<T>(a: &Arena<T>, arena: &str, name: &str, ty: &str, value: impl Fn(Handle<T>, &T) -> Result<TokenStream, String>) -> Result<TokenStream, String> {
    let (arena, name, ty) = (format_ident!("{}", arena), format_ident!("{}", name), format_ident!("{}", ty));
    let mut pushes = Vec::new();
    for (h, x) in a.iter() {
        let (v, s) = (value(h, x)?, span(a.span(h)));
        pushes.push(quote!(#name.push(#arena.push(#v, #s));));
    }
    Ok(quote! {
        let mut #arena = Arena::new();
        let mut #name: ::std::vec::Vec<Handle<I::#ty>> = ::std::vec::Vec::new();
        #(#pushes)*
    })
}

/// Fails when `child` was pushed after `parent`.
fn backward<T>(parent: Handle<T>, child: Handle<T>) -> Result<(), String> {
    if child.index() < parent.index() {
        Ok(())
    } else {
        Err(format!("the lowered IR refers forward (#{} -> #{}); psm-macros expects children before parents", parent.index(), child.index()))
    }
}

fn aggregator(a: &ir::Aggregator) -> Result<TokenStream, String> {
    let dims = arena(&a.dims, "dims", "dim", "Dim", |_, d| {
        let (n, def) = (string(&d.name), option(&d.default, |v| quote!(#v)));
        Ok(quote!(I::Dim { name: #n, default: #def }))
    })?;
    let sizes = arena(&a.sizes, "sizes", "size", "Size", |h, s| {
        let pair = |x: Handle<Size>, y: Handle<Size>| -> Result<(TokenStream, TokenStream), String> {
            backward(h, x)?;
            backward(h, y)?;
            Ok((handle("size", x), handle("size", y)))
        };
        Ok(match s {
            Size::Lit(v) => quote!(I::Size::Lit(#v)),
            Size::Dim(d) => {
                let d = handle("dim", *d);
                quote!(I::Size::Dim(#d))
            }
            Size::Add(x, y) => {
                let (x, y) = pair(*x, *y)?;
                quote!(I::Size::Add(#x, #y))
            }
            Size::Sub(x, y) => {
                let (x, y) = pair(*x, *y)?;
                quote!(I::Size::Sub(#x, #y))
            }
            Size::Mul(x, y) => {
                let (x, y) = pair(*x, *y)?;
                quote!(I::Size::Mul(#x, #y))
            }
        })
    })?;
    let tensors = arena(&a.tensors, "tensors", "tensor", "Tensor", |_, t| {
        let (n, r, sh, dt) = (string(&t.name), variant("Role", &t.role), handles("size", &t.shape), variant("Dtype", &t.dtype));
        Ok(quote!(I::Tensor { name: #n, role: #r, shape: #sh, dtype: #dt }))
    })?;
    let index_vars = arena(&a.index_vars, "index_vars", "index_var", "IndexVar", |_, v| {
        let (n, e) = (string(&v.name), option(&v.extent, |&s| handle("size", s)));
        Ok(quote!(I::IndexVar { name: #n, extent: #e }))
    })?;
    let locals = arena(&a.locals, "locals", "local", "Local", |_, l| {
        let (n, i) = (string(&l.name), handles("index_var", &l.indices));
        Ok(quote!(I::Local { name: #n, indices: #i }))
    })?;
    let exprs = arena(&a.exprs, "exprs", "expr", "Expr", |h, e| {
        let mut forward = Ok(());
        e.for_each_child(|c| {
            if forward.is_ok() {
                forward = backward(h, c);
            }
        });
        forward?;
        Ok(expr(e))
    })?;
    let (name, doc, s) = (string(&a.name), string(&a.doc), span(a.span));
    let assume = option(&a.assume_associative, |&s| span(s));
    let identity = option(&a.identity, body);
    let (lift, combine, readout) = (body(&a.lift), body(&a.combine), body(&a.readout));
    let readout_kind = variant("ReadoutKind", &a.readout_kind);
    Ok(quote! {{
        #dims
        #sizes
        #tensors
        #index_vars
        #locals
        #exprs
        I::Aggregator {
            name: #name, span: #s, doc: #doc,
            dims, sizes, tensors, index_vars, locals, exprs,
            assume_associative: #assume,
            identity: #identity, lift: #lift, combine: #combine, readout: #readout,
            readout_kind: #readout_kind,
        }
    }})
}

fn option<T>(o: &Option<T>, f: impl Fn(&T) -> TokenStream) -> TokenStream {
    match o {
        Some(x) => {
            let x = f(x);
            quote!(::std::option::Option::Some(#x))
        }
        None => quote!(::std::option::Option::None),
    }
}

/// `I::Enum::Variant` for a unit variant of an IR enum (its `Debug` is the variant's name).
fn variant(enum_name: &str, v: &impl std::fmt::Debug) -> TokenStream {
    let (e, v) = (format_ident!("{}", enum_name), format_ident!("{}", format!("{v:?}")));
    quote!(I::#e::#v)
}

fn body(b: &ir::Body) -> TokenStream {
    let kind = variant("BodyKind", &b.kind);
    let params = b.params.iter().map(|p| string(p));
    let stmts = b.stmts.iter().map(|st| {
        let target = match st.target {
            Target::Tensor(t) => {
                let t = handle("tensor", t);
                quote!(I::Target::Tensor(#t))
            }
            Target::Local(l) => {
                let l = handle("local", l);
                quote!(I::Target::Local(#l))
            }
        };
        let (i, v, s) = (handles("index_var", &st.indices), handle("expr", st.value), span(st.span));
        quote!(I::Stmt { target: #target, indices: #i, value: #v, span: #s })
    });
    let (s, implicit) = (span(b.span), b.implicit);
    quote!(I::Body { kind: #kind, params: ::std::vec![#(#params),*], stmts: ::std::vec![#(#stmts),*], span: #s, implicit: #implicit })
}

fn expr(e: &Expr) -> TokenStream {
    let x = |h: Handle<Expr>| handle("expr", h);
    match e {
        Expr::Float(v) => {
            // Bit-exact, infinities and NaN included.
            let bits = v.to_bits();
            quote!(I::Expr::Float(f64::from_bits(#bits)))
        }
        Expr::Int(v) => quote!(I::Expr::Int(#v)),
        Expr::Dim(d) => {
            let d = handle("dim", *d);
            quote!(I::Expr::Dim(#d))
        }
        Expr::Index(v) => {
            let v = handle("index_var", *v);
            quote!(I::Expr::Index(#v))
        }
        Expr::Load { source, indices } => {
            let source = match *source {
                Source::Input(t) => {
                    let t = handle("tensor", t);
                    quote!(I::Source::Input(#t))
                }
                Source::Param(t) => {
                    let t = handle("tensor", t);
                    quote!(I::Source::Param(#t))
                }
                Source::Element(side, t) => {
                    let side = variant("Side", &side);
                    let t = handle("tensor", t);
                    quote!(I::Source::Element(#side, #t))
                }
                Source::Local(l) => {
                    let l = handle("local", l);
                    quote!(I::Source::Local(#l))
                }
            };
            let indices = handles("expr", indices);
            quote!(I::Expr::Load { source: #source, indices: #indices })
        }
        Expr::Unary { op, arg } => {
            let (op, a) = (variant("UnaryOp", op), x(*arg));
            quote!(I::Expr::Unary { op: #op, arg: #a })
        }
        Expr::Binary { op, lhs, rhs } => {
            let (op, l, r) = (variant("BinaryOp", op), x(*lhs), x(*rhs));
            quote!(I::Expr::Binary { op: #op, lhs: #l, rhs: #r })
        }
        Expr::Call { func, args } => {
            let (f, args) = (variant("Func", func), handles("expr", args));
            quote!(I::Expr::Call { func: #f, args: #args })
        }
        Expr::Select { cond, then, otherwise } => {
            let (c, t, o) = (x(*cond), x(*then), x(*otherwise));
            quote!(I::Expr::Select { cond: #c, then: #t, otherwise: #o })
        }
        Expr::Reduce { op, var, body } => {
            let (op, v, b) = (variant("ReduceOp", op), handle("index_var", *var), x(*body));
            quote!(I::Expr::Reduce { op: #op, var: #v, body: #b })
        }
        Expr::Empty => quote!(I::Expr::Empty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(src: &str) -> ir::Module {
        psm_ir::front::dsl::parse(src).expect("valid psm")
    }

    const SUM: &str = "aggregator sum<D = 2> { input { v[D] } element { v[D] } combine(l, r) { v[i] = l.v[i] + r.v[i]; } }";

    #[test]
    fn lowered_modules_refer_backward_only() {
        assert!(module(&parsed(SUM)).is_ok());
        for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ops")).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "psm") {
                let m = parsed(&std::fs::read_to_string(&path).unwrap());
                assert!(module(&m).is_ok(), "{}", path.display());
            }
        }
    }

    #[test]
    fn a_forward_reference_is_an_error_not_a_wrong_module() {
        let mut m = parsed(SUM);
        let agg = &mut m.aggregators[0];
        // Handle #k of a fresh arena, pushed at a position before k: a forward reference.
        let mut scratch = Arena::new();
        let ahead = (0..=agg.exprs.len()).map(|_| scratch.push(Expr::Int(0), psm_ir::Span::NONE)).last().unwrap();
        agg.exprs.push(Expr::Unary { op: ir::UnaryOp::Neg, arg: ahead }, psm_ir::Span::NONE);
        let e = module(&m).unwrap_err();
        assert!(e.contains("refers forward"), "{e}");
    }
}
