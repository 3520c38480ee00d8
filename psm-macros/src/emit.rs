//! The syntax tree as Rust code that rebuilds it: the IR is embedded in the user's
//! crate as constructors, and rebuilt through `psm_ir::front::builder` at run time.

use proc_macro2::TokenStream;
use psm_ir::front::dsl::ast;
use psm_ir::ir::{BinaryOp, ReadoutKind, ReduceOp, Role, UnaryOp};
use quote::quote;

pub fn file(f: &ast::File) -> TokenStream {
    let aggs = f.aggregators.iter().map(aggregator);
    quote! {{
        use ::psm::__private::psm_ir::front::dsl::ast as A;
        use ::psm::__private::psm_ir::ir as I;
        use ::psm::__private::psm_ir::Span as S;
        A::File { aggregators: ::std::vec![#(#aggs),*] }
    }}
}

fn span(s: psm_ir::Span) -> TokenStream {
    let (a, b) = (s.start, s.end);
    quote!(S { start: #a, end: #b })
}

fn string(s: &str) -> TokenStream {
    quote!(::std::string::String::from(#s))
}

fn ident(i: &ast::Ident) -> TokenStream {
    let (n, s) = (string(&i.name), span(i.span));
    quote!(A::Ident { name: #n, span: #s })
}

fn opt<T>(o: &Option<T>, f: impl Fn(&T) -> TokenStream) -> TokenStream {
    match o {
        Some(x) => {
            let x = f(x);
            quote!(::std::option::Option::Some(#x))
        }
        None => quote!(::std::option::Option::None),
    }
}

fn list<T>(v: &[T], f: impl Fn(&T) -> TokenStream) -> TokenStream {
    let items = v.iter().map(f);
    quote!(::std::vec![#(#items),*])
}

fn aggregator(a: &ast::Aggregator) -> TokenStream {
    let doc = string(&a.doc);
    let name = ident(&a.name);
    let dims = list(&a.dims, |d| {
        let n = ident(&d.name);
        let def = opt(&d.default, |(v, s)| {
            let s = span(*s);
            quote!((#v, #s))
        });
        quote!(A::DimDecl { name: #n, default: #def })
    });
    let items = list(&a.items, item);
    let s = span(a.span);
    quote!(A::Aggregator { doc: #doc, name: #name, dims: #dims, items: #items, span: #s })
}

fn role(r: Role) -> TokenStream {
    match r {
        Role::Param => quote!(I::Role::Param),
        Role::Input => quote!(I::Role::Input),
        Role::Element => quote!(I::Role::Element),
        Role::Output => quote!(I::Role::Output),
    }
}

fn item(i: &ast::Item) -> TokenStream {
    match i {
        ast::Item::Decls { role: r, decls, span: s } => {
            let (r, d, s) = (role(*r), list(decls, decl), span(*s));
            quote!(A::Item::Decls { role: #r, decls: #d, span: #s })
        }
        ast::Item::Identity { body } => {
            let b = block(body);
            quote!(A::Item::Identity { body: #b })
        }
        ast::Item::Lift { input, body } => {
            let (i, b) = (ident(input), block(body));
            quote!(A::Item::Lift { input: #i, body: #b })
        }
        ast::Item::Combine { left, right, body } => {
            let (l, r, b) = (ident(left), ident(right), block(body));
            quote!(A::Item::Combine { left: #l, right: #r, body: #b })
        }
        ast::Item::Readout { kind, state, input, outputs, body } => {
            let k = match kind {
                ReadoutKind::Inclusive => quote!(I::ReadoutKind::Inclusive),
                ReadoutKind::Exclusive => quote!(I::ReadoutKind::Exclusive),
            };
            let (s, i, o, b) = (ident(state), ident(input), list(outputs, decl), block(body));
            quote!(A::Item::Readout { kind: #k, state: #s, input: #i, outputs: #o, body: #b })
        }
        ast::Item::Assume { property, span: s } => {
            let (p, s) = (ident(property), span(*s));
            quote!(A::Item::Assume { property: #p, span: #s })
        }
    }
}

fn decl(d: &ast::Decl) -> TokenStream {
    let (n, sh, dt, s) = (ident(&d.name), list(&d.shape, size), opt(&d.dtype, ident), span(d.span));
    quote!(A::Decl { name: #n, shape: #sh, dtype: #dt, span: #s })
}

fn size(s: &ast::SizeExpr) -> TokenStream {
    let kind = match &s.kind {
        ast::SizeKind::Int(v) => quote!(A::SizeKind::Int(#v)),
        ast::SizeKind::Name(n) => {
            let n = string(n);
            quote!(A::SizeKind::Name(#n))
        }
        ast::SizeKind::Binary(op, a, b) => {
            let (a, b) = (size(a), size(b));
            quote!(A::SizeKind::Binary(#op, ::std::boxed::Box::new(#a), ::std::boxed::Box::new(#b)))
        }
    };
    let sp = span(s.span);
    quote!(A::SizeExpr { kind: #kind, span: #sp })
}

fn block(b: &ast::Block) -> TokenStream {
    let (st, h, s) = (list(&b.stmts, stmt), span(b.head), span(b.span));
    quote!(A::Block { stmts: #st, head: #h, span: #s })
}

fn stmt(s: &ast::Stmt) -> TokenStream {
    let is_let = s.is_let;
    let target = ident(&s.target);
    let binders = list(&s.binders, |b| {
        let (n, e) = (ident(&b.name), opt(&b.extent, size));
        quote!(A::Binder { name: #n, extent: #e })
    });
    let (v, sp) = (expr(&s.value), span(s.span));
    quote!(A::Stmt { is_let: #is_let, target: #target, binders: #binders, value: #v, span: #sp })
}

fn boxed(e: &ast::Expr) -> TokenStream {
    let e = expr(e);
    quote!(::std::boxed::Box::new(#e))
}

fn expr(e: &ast::Expr) -> TokenStream {
    let kind = match &e.kind {
        ast::ExprKind::Float(v) => {
            // Bit-exact, infinities included.
            let bits = v.to_bits();
            quote!(A::ExprKind::Float(f64::from_bits(#bits)))
        }
        ast::ExprKind::Int(v) => quote!(A::ExprKind::Int(#v)),
        ast::ExprKind::Access { base, field, indices } => {
            let (b, f) = (ident(base), opt(field, ident));
            let i = opt(indices, |v| list(v, expr));
            quote!(A::ExprKind::Access { base: #b, field: #f, indices: #i })
        }
        ast::ExprKind::Call { func, args } => {
            let (f, a) = (ident(func), list(args, expr));
            quote!(A::ExprKind::Call { func: #f, args: #a })
        }
        ast::ExprKind::Unary { op, arg } => {
            let op = match op {
                UnaryOp::Neg => quote!(I::UnaryOp::Neg),
                UnaryOp::Not => quote!(I::UnaryOp::Not),
            };
            let a = boxed(arg);
            quote!(A::ExprKind::Unary { op: #op, arg: #a })
        }
        ast::ExprKind::Binary { op, lhs, rhs } => {
            let op = match op {
                BinaryOp::Add => quote!(Add),
                BinaryOp::Sub => quote!(Sub),
                BinaryOp::Mul => quote!(Mul),
                BinaryOp::Div => quote!(Div),
                BinaryOp::Lt => quote!(Lt),
                BinaryOp::Le => quote!(Le),
                BinaryOp::Gt => quote!(Gt),
                BinaryOp::Ge => quote!(Ge),
                BinaryOp::Eq => quote!(Eq),
                BinaryOp::Ne => quote!(Ne),
                BinaryOp::And => quote!(And),
                BinaryOp::Or => quote!(Or),
            };
            let (l, r) = (boxed(lhs), boxed(rhs));
            quote!(A::ExprKind::Binary { op: I::BinaryOp::#op, lhs: #l, rhs: #r })
        }
        ast::ExprKind::If { cond, then, otherwise } => {
            let (c, t, o) = (boxed(cond), boxed(then), boxed(otherwise));
            quote!(A::ExprKind::If { cond: #c, then: #t, otherwise: #o })
        }
        ast::ExprKind::Reduce { op, var, body } => {
            let op = match op {
                ReduceOp::Sum => quote!(Sum),
                ReduceOp::Prod => quote!(Prod),
                ReduceOp::Max => quote!(Max),
                ReduceOp::Min => quote!(Min),
            };
            let (v, b) = (ident(var), boxed(body));
            quote!(A::ExprKind::Reduce { op: I::ReduceOp::#op, var: #v, body: #b })
        }
    };
    let sp = span(e.span);
    quote!(A::Expr { kind: #kind, span: #sp })
}
