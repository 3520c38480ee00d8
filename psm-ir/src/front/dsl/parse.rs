//! pest parse tree → [`ast`](super::ast). Syntax errors become diagnostics that name
//! what was expected in the language's own words.

use pest::iterators::Pair;
use pest::Parser;
use pest_derive::Parser;

use super::ast::*;
use crate::ir::{BinaryOp, ReadoutKind, ReduceOp, Role, UnaryOp};
use crate::{Diagnostic, Span};

#[derive(Parser)]
#[grammar = "front/dsl/psm.pest"]
struct PsmParser;

pub fn parse_file(source: &str) -> Result<File, Diagnostic> {
    let mut pairs = PsmParser::parse(Rule::file, source).map_err(|e| syntax_error(source, e))?;
    let file = pairs.next().expect("the file rule always produces one pair");
    let aggregators = file.into_inner().filter(|p| p.as_rule() == Rule::aggregator).map(aggregator).collect();
    Ok(File { aggregators })
}

fn span(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn ident(pair: Pair<Rule>) -> Ident {
    Ident { name: pair.as_str().to_string(), span: span(&pair) }
}

fn aggregator(pair: Pair<Rule>) -> Aggregator {
    let whole = span(&pair);
    let mut doc = Vec::new();
    let mut name = None;
    let mut dims = Vec::new();
    let mut items = Vec::new();
    let mut start = whole.start;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::doc_line if name.is_none() => doc.push(p.as_str()[3..].strip_prefix(' ').unwrap_or(&p.as_str()[3..]).trim_end().to_string()),
            Rule::doc_line => {}
            // The item's span starts at the keyword; its doc comment stays out.
            Rule::kw_aggregator => start = span(&p).start,
            Rule::ident => name = Some(ident(p)),
            Rule::dim_list => dims = p.into_inner().map(dim_decl).collect(),
            _ => items.push(item(p)),
        }
    }
    let name = name.expect("grammar requires a name");
    Aggregator { doc: doc.join("\n"), name, dims, items, span: Span { start, end: whole.end } }
}

fn dim_decl(pair: Pair<Rule>) -> DimDecl {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("dim name"));
    let default = inner.next().map(|p| {
        // Out-of-range literals become i64::MAX so validation reports them as too large.
        (p.as_str().parse::<i64>().unwrap_or(i64::MAX), span(&p))
    });
    DimDecl { name, default }
}

fn item(pair: Pair<Rule>) -> Item {
    let sp = span(&pair);
    let rule = pair.as_rule();
    let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::doc_line);
    match rule {
        Rule::decl_section => {
            let role = match inner.next().expect("section keyword").as_str() {
                "param" => Role::Param,
                "input" => Role::Input,
                _ => Role::Element,
            };
            Item::Decls { role, decls: inner.map(decl).collect(), span: sp }
        }
        Rule::identity => Item::Identity { body: block(inner.next().expect("block"), sp) },
        Rule::lift => {
            let input = ident(inner.next().expect("param"));
            Item::Lift { input, body: block(inner.next().expect("block"), sp) }
        }
        Rule::combine => {
            let left = ident(inner.next().expect("left"));
            let right = ident(inner.next().expect("right"));
            Item::Combine { left, right, body: block(inner.next().expect("block"), sp) }
        }
        Rule::readout => {
            let kind = match inner.next().expect("kind").as_str() {
                "inclusive" => ReadoutKind::Inclusive,
                _ => ReadoutKind::Exclusive,
            };
            let state = ident(inner.next().expect("state"));
            let input = ident(inner.next().expect("input"));
            let outputs = inner.next().expect("outputs").into_inner().map(decl).collect();
            Item::Readout { kind, state, input, outputs, body: block(inner.next().expect("block"), sp) }
        }
        Rule::assume => Item::Assume { property: ident(inner.next().expect("property")), span: sp },
        other => unreachable!("grammar produced {other:?} as an item"),
    }
}

fn decl(pair: Pair<Rule>) -> Decl {
    let sp = span(&pair);
    let mut name = None;
    let mut shape = Vec::new();
    let mut dtype = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::ident => name = Some(ident(p)),
            Rule::shape => shape = p.into_inner().map(size).collect(),
            Rule::dtype => dtype = Some(ident(p.into_inner().next().expect("dtype name"))),
            _ => {}
        }
    }
    Decl { name: name.expect("decl name"), shape, dtype, span: sp }
}

fn size(pair: Pair<Rule>) -> SizeExpr {
    let sp = span(&pair);
    match pair.as_rule() {
        Rule::int => SizeExpr { kind: SizeKind::Int(pair.as_str().parse().unwrap_or(i64::MAX)), span: sp },
        Rule::ident => SizeExpr { kind: SizeKind::Name(pair.as_str().to_string()), span: sp },
        Rule::size | Rule::size_term => {
            let mut inner = pair.into_inner();
            let mut acc = size(inner.next().expect("operand"));
            while let Some(next) = inner.next() {
                let (op, rhs) = if next.as_rule() == Rule::add_op {
                    (next.as_str().chars().next().unwrap_or('+'), inner.next().expect("operand"))
                } else {
                    ('*', next)
                };
                let rhs = size(rhs);
                let sp = acc.span.join(rhs.span);
                acc = SizeExpr { kind: SizeKind::Binary(op, Box::new(acc), Box::new(rhs)), span: sp };
            }
            acc
        }
        other => unreachable!("grammar produced {other:?} as a size"),
    }
}

fn block(pair: Pair<Rule>, head: Span) -> Block {
    let sp = span(&pair);
    let head = Span { start: head.start, end: sp.start.max(head.start) };
    Block { stmts: pair.into_inner().map(stmt).collect(), head, span: sp }
}

fn stmt(pair: Pair<Rule>) -> Stmt {
    let sp = span(&pair);
    let is_let = pair.as_rule() == Rule::let_stmt;
    let mut inner = pair.into_inner();
    let target = ident(inner.next().expect("target"));
    let mut binders = Vec::new();
    let mut value = None;
    for p in inner {
        match p.as_rule() {
            Rule::binders => binders = p.into_inner().map(binder).collect(),
            _ => value = Some(expr(p)),
        }
    }
    Stmt { is_let, target, binders, value: value.expect("value"), span: sp }
}

fn binder(pair: Pair<Rule>) -> Binder {
    let mut inner = pair.into_inner();
    let name = ident(inner.next().expect("binder name"));
    Binder { name, extent: inner.next().map(size) }
}

fn binary_op(s: &str) -> BinaryOp {
    match s {
        "+" => BinaryOp::Add,
        "-" => BinaryOp::Sub,
        "*" => BinaryOp::Mul,
        "/" => BinaryOp::Div,
        "<" => BinaryOp::Lt,
        "<=" => BinaryOp::Le,
        ">" => BinaryOp::Gt,
        ">=" => BinaryOp::Ge,
        "==" => BinaryOp::Eq,
        "!=" => BinaryOp::Ne,
        "&&" => BinaryOp::And,
        _ => BinaryOp::Or,
    }
}

fn expr(pair: Pair<Rule>) -> Expr {
    let sp = span(&pair);
    match pair.as_rule() {
        Rule::expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr => {
            let mut inner = pair.into_inner();
            let mut acc = expr(inner.next().expect("operand"));
            while let Some(op) = inner.next() {
                let rhs = expr(inner.next().expect("operand"));
                let sp = acc.span.join(rhs.span);
                let kind = ExprKind::Binary { op: binary_op(op.as_str()), lhs: Box::new(acc), rhs: Box::new(rhs) };
                acc = Expr { kind, span: sp };
            }
            acc
        }
        Rule::unary => {
            let mut ops = Vec::new();
            let mut operand = None;
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::prefix_op => ops.push((p.as_str() == "!", span(&p))),
                    _ => operand = Some(expr(p)),
                }
            }
            let mut acc = operand.expect("operand");
            for (not, op_span) in ops.into_iter().rev() {
                let op = if not { UnaryOp::Not } else { UnaryOp::Neg };
                let sp = op_span.join(acc.span);
                acc = Expr { kind: ExprKind::Unary { op, arg: Box::new(acc) }, span: sp };
            }
            acc
        }
        Rule::reduction => {
            let mut inner = pair.into_inner();
            let op = match inner.next().expect("op").as_str() {
                "sum" => ReduceOp::Sum,
                "prod" => ReduceOp::Prod,
                "max" => ReduceOp::Max,
                _ => ReduceOp::Min,
            };
            let var = ident(inner.next().expect("var"));
            let body = expr(inner.next().expect("body"));
            Expr { kind: ExprKind::Reduce { op, var, body: Box::new(body) }, span: sp }
        }
        Rule::paren => expr(pair.into_inner().next().expect("inner")),
        Rule::float => Expr { kind: ExprKind::Float(pair.as_str().parse().unwrap_or(f64::INFINITY)), span: sp },
        Rule::int => match pair.as_str().parse::<i64>() {
            Ok(v) => Expr { kind: ExprKind::Int(v), span: sp },
            // Too large for an integer: keep it as a float so validation can say so.
            Err(_) => Expr { kind: ExprKind::Float(pair.as_str().parse().unwrap_or(f64::INFINITY)), span: sp },
        },
        Rule::call => {
            let mut inner = pair.into_inner();
            let func = ident(inner.next().expect("func"));
            Expr { kind: ExprKind::Call { func, args: inner.map(expr).collect() }, span: sp }
        }
        Rule::access => {
            let mut base = None;
            let mut field = None;
            let mut indices = None;
            for p in pair.into_inner() {
                match p.as_rule() {
                    Rule::ident if base.is_none() => base = Some(ident(p)),
                    Rule::ident => field = Some(ident(p)),
                    _ => indices = Some(p.into_inner().map(expr).collect()),
                }
            }
            Expr { kind: ExprKind::Access { base: base.expect("base"), field, indices }, span: sp }
        }
        Rule::if_expr => {
            let mut inner = pair.into_inner();
            let cond = expr(inner.next().expect("cond"));
            let then = expr(inner.next().expect("then"));
            let otherwise = expr(inner.next().expect("else"));
            let kind = ExprKind::If { cond: Box::new(cond), then: Box::new(then), otherwise: Box::new(otherwise) };
            Expr { kind, span: sp }
        }
        other => unreachable!("grammar produced {other:?} as an expression"),
    }
}

fn rule_name(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::aggregator | Rule::kw_aggregator => "`aggregator`",
        Rule::doc_line => "a doc comment",
        Rule::dim_list => "`<`",
        Rule::dim_decl => "a dim declaration",
        Rule::signed_int | Rule::int => "an integer",
        Rule::decl_section | Rule::section_kw => "a section (`input`, `param`, `element`)",
        Rule::decl => "a declaration",
        Rule::shape => "a shape `[...]`",
        Rule::dtype => "a type (`f32`, `f64`, `i32`)",
        Rule::size | Rule::size_term => "a size",
        Rule::identity => "`identity`",
        Rule::lift => "`lift`",
        Rule::combine => "`combine`",
        Rule::readout => "`readout`",
        Rule::readout_kind => "`inclusive` or `exclusive`",
        Rule::outputs => "outputs",
        Rule::assume => "`assume`",
        Rule::block => "`{`",
        Rule::let_stmt => "`let`",
        Rule::assign => "an assignment",
        Rule::binders => "`[`",
        Rule::binder => "an index variable",
        Rule::expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr | Rule::unary => {
            "an expression"
        }
        Rule::reduction => "a reduction",
        Rule::paren => "`(`",
        Rule::call => "a call",
        Rule::access => "a name",
        Rule::indices => "`[`",
        Rule::if_expr => "`if`",
        Rule::or_op => "`||`",
        Rule::and_op => "`&&`",
        Rule::cmp_op => "a comparison",
        Rule::add_op => "`+` or `-`",
        Rule::mul_op => "`*` or `/`",
        Rule::prefix_op => "`-` or `!`",
        Rule::reduce_op => "`sum`, `prod`, `max` or `min`",
        Rule::ident => "a name",
        Rule::float => "a number",
        _ => return None,
    })
}

fn syntax_error(source: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    {
        pest::set_error_detail(true);
        let r = PsmParser::parse(Rule::file, source);
        pest::set_error_detail(false);
        if let Err(e2) = r { if let Some(a) = e2.parse_attempts() { eprintln!("DETAIL pos={} expected={:?} unexpected={:?} stacks={:?}", a.max_position, a.expected_tokens(), a.unexpected_tokens(), a.call_stacks()); } }
    }
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let found = found_token(source, pos);
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(rule_name).collect();
            names.dedup();
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(*n));
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let expected_text = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let end = (pos + found.len().max(1)).min(source.len()).max(pos);
    let label = if found.is_empty() { "unexpected end of file".to_string() } else { format!("unexpected `{found}`") };
    let mut d = Diagnostic::error(format!("syntax error: expected {expected_text}")).primary(Span::new(pos, end), label);
    if found == "=" && expected.contains(&"a comparison") {
        d = d.help("compare with `==`; assignment is a statement, not an expression");
    }
    d
}

/// The token at `pos`, for "unexpected `...`" labels.
fn found_token(source: &str, pos: usize) -> String {
    let rest = source.get(pos..).unwrap_or("");
    let mut chars = rest.char_indices();
    match chars.next() {
        None => String::new(),
        Some((_, c)) if c.is_alphanumeric() || c == '_' => {
            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect()
        }
        Some((_, c)) => {
            let two: String = rest.chars().take(2).collect();
            if ["<=", ">=", "==", "!=", "&&", "||", "->", "//"].contains(&two.as_str()) {
                two
            } else {
                c.to_string()
            }
        }
    }
}
