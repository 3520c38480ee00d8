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

/// Deepest expression nesting accepted. Every pass over expressions (lowering,
/// validation, the interpreter, the backends) recurses on it; beyond this a diagnostic
/// says so instead of the stack overflowing.
pub const MAX_NESTING: usize = 256;

pub fn parse_file(source: &str) -> Result<File, Diagnostic> {
    let mut pairs = PsmParser::parse(Rule::file, source).map_err(|e| syntax_error(source, e))?;
    let file = pairs.next().expect("the file rule always produces one pair");
    check_nesting(source, file.clone())?;
    let aggregators = file.into_inner().filter(|p| p.as_rule() == Rule::aggregator).map(aggregator).collect();
    Ok(File { aggregators })
}

/// Rejects expressions (and sizes) nested more than [`MAX_NESTING`] levels deep,
/// counting one level per operator of a chain (`a + b + c` nests `a + b` in the sum),
/// per prefix operator, and per parenthesis, call, index list, `if` and reduction.
/// Iterative, so that the check itself cannot overflow.
fn check_nesting(source: &str, file: Pair<Rule>) -> Result<(), Diagnostic> {
    let mut stack = vec![(file, 0usize)];
    while let Some((pair, depth)) = stack.pop() {
        if depth > MAX_NESTING {
            return Err(nested_too_deeply(source, span(&pair)));
        }
        let rule = pair.as_rule();
        let inner: Vec<Pair<Rule>> = pair.into_inner().collect();
        let child_depth = match rule {
            Rule::expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr | Rule::size | Rule::size_term => {
                // k operands joined by k - 1 operators, or by `*` in a size term.
                let operands = inner.iter().filter(|p| !matches!(p.as_rule(), Rule::or_op | Rule::and_op | Rule::cmp_op | Rule::add_op | Rule::mul_op)).count();
                depth + operands.saturating_sub(1) + usize::from(rule == Rule::size)
            }
            Rule::unary => depth + inner.iter().filter(|p| p.as_rule() == Rule::prefix_op).count(),
            Rule::paren | Rule::call | Rule::indices | Rule::if_expr | Rule::reduction => depth + 1,
            _ => depth,
        };
        stack.extend(inner.into_iter().map(|p| (p, child_depth)));
    }
    Ok(())
}

/// The span of a pair without the whitespace and comments pest consumed at its end
/// while trying an optional part that was not there (`v ` in `{ v }`).
fn span(pair: &Pair<Rule>) -> Span {
    let s = pair.as_span();
    let mut text = s.as_str();
    loop {
        let trimmed = text.trim_end();
        let last_line = trimmed.rfind('\n').map_or(0, |k| k + 1);
        match trimmed[last_line..].find("//") {
            // A trailing comment; a doc comment at the very start is part of the item.
            Some(k) if last_line + k > 0 => text = &trimmed[..last_line + k],
            _ => {
                text = trimmed;
                break;
            }
        }
    }
    Span::new(s.start(), s.start() + text.len())
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
    // Descend through one-operand levels and parentheses without recursing, so that
    // the recursion depth is the expression's nesting, not 7 frames per parenthesis.
    let mut pair = pair;
    while let Rule::expr | Rule::and_expr | Rule::cmp_expr | Rule::add_expr | Rule::mul_expr | Rule::paren = pair.as_rule() {
        let mut inner = pair.clone().into_inner();
        match (inner.next(), inner.next()) {
            (Some(only), None) => pair = only,
            _ => break,
        }
    }
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
        Rule::dtype => "a type (`f32`, `f64`, `i32`, `bf16`, `f16`)",
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
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    }
    .min(source.len());
    let mut rules: Vec<Rule> = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        // pest's own resource limits ("stack limit reached", "call limit reached"): the
        // only way to reach them is nesting.
        pest::error::ErrorVariant::CustomError { .. } => return nested_too_deeply(source, Span::new(pos, pos)),
    };
    // pest places its error at the furthest *rule* it tried; a literal (`->`, `,`, `>`)
    // that failed further on is only in the detailed attempts. Prefer the furthest.
    let (tokens, furthest) = expected_tokens(source);
    let mut pos = pos;
    if let Some(f) = furthest.filter(|&f| f > pos && f <= source.len() && source.is_char_boundary(f)) {
        pos = f;
        rules.clear();
    }
    let tokens = if furthest == Some(pos) { tokens } else { Vec::new() };
    let found = found_token(source, pos);
    let end = (pos + found.len().max(1)).min(source.len()).max(pos);
    let found_span = Span::new(pos, end);
    let found_text = if found.is_empty() { "end of file".to_string() } else { format!("`{found}`") };
    let unexpected = if found.is_empty() { "unexpected end of file".to_string() } else { format!("unexpected `{found}`") };
    let expects = |t: &str| tokens.iter().any(|x| x == t);

    // A number that does not scan: `0.5.0`, `2.`, `1e`, `1_000`.
    if let Some((word, span)) = malformed_number(source, pos) {
        return Diagnostic::error(format!("syntax error: malformed number `{word}`"))
            .primary(span, "not a number")
            .help("write numbers as `2`, `2.0`, `0.5` or `1e-6`");
    }

    let open = unclosed_delimiters(source, pos);
    // End of file inside a block: name the `{` that was never closed.
    if found.is_empty() {
        if let Some(&(c, at)) = open.last() {
            let close = closing(c);
            let what = opener_context(source, at);
            let mut d = Diagnostic::error(format!("syntax error: unexpected end of file: this `{c}` is never closed"))
                .primary(Span::new(at, at + 1), format!("unclosed `{c}`{what}"));
            for &(c2, at2) in open.iter().rev().skip(1) {
                d = d.secondary(Span::new(at2, at2 + 1), format!("unclosed `{c2}`{}", opener_context(source, at2)));
            }
            return d.help(format!("close it with `{close}`"));
        }
    }

    // A section keyword where a statement was expected: the body before it lacks its `}`.
    let (prev_start, prev_end) = previous_token(source, pos);
    let prev = &source[prev_start..prev_end];
    const SECTIONS: [&str; 8] = ["input", "param", "element", "identity", "lift", "combine", "readout", "assume"];
    let statement_start = {
        let (s, e) = previous_token(source, prev_start);
        matches!(&source[s..e], ";" | "{" | "}")
    };
    if SECTIONS.contains(&prev) && statement_start && open.len() >= 2 {
        let (c, at) = open[open.len() - 1];
        if c == '{' && at < prev_start {
            let what = opener_context(source, at);
            return Diagnostic::error(format!("syntax error: `{prev}` inside a block: a `}}` is missing before it"))
                .primary(Span::new(prev_start, prev_end), format!("`{prev}` starts a new section"))
                .secondary(Span::new(at, at + 1), format!("this `{{`{what} is not closed"))
                .help(format!("close the block with `}}` before `{prev}`"));
        }
    }

    // A section keyword outside every aggregator: a `}` closed the aggregator early.
    if SECTIONS.contains(&found.as_str()) && open.is_empty() {
        if let Some(close) = last_outer_close(source, pos) {
            return Diagnostic::error(format!("syntax error: `{found}` outside an aggregator"))
                .primary(found_span, format!("`{found}` belongs inside `aggregator NAME {{ ... }}`"))
                .secondary(Span::new(close, close + 1), "this `}` closes the aggregator")
                .help("remove the extra `}`, or move the section into the aggregator");
        }
    }

    // After a complete statement: the `;` is missing, or a stray token follows.
    if expects(";") && found != "=" {
        let mut d = Diagnostic::error(format!("syntax error: expected `;`, found {found_text}"));
        let same_line = !source[prev_end..pos].contains('\n') && !found.is_empty();
        if found == ")" || found == "]" {
            let opener = if found == ")" { '(' } else { '[' };
            d = d.primary(found_span, format!("this `{found}` has no matching `{opener}`")).help(format!("remove the `{found}`, or add the `{opener}` it closes"));
        } else if same_line && found != "}" {
            d = d
                .primary(found_span, unexpected)
                .help("end the statement with `;`; between two values write an operator (`+`, `*`, ...)");
        } else {
            d = d
                .primary(Span::new(prev_end, prev_end), "expected `;` here")
                .secondary(found_span, unexpected)
                .help("end each statement with `;`");
        }
        return d;
    }

    let mut expected = describe_expected(&rules, &tokens);
    if expected.is_empty() {
        expected.push("something else".into());
    }
    let expected_text = match expected.len() {
        1 => expected[0].clone(),
        n => format!("{} or {}", expected[..n - 1].join(", "), expected[n - 1]),
    };
    let mut d = Diagnostic::error(format!("syntax error: expected {expected_text}, found {found_text}")).primary(found_span, unexpected);
    if expects(">") && !expects("<=") && found == "{" {
        d = d.help("close the dim list with `>`: `aggregator NAME<K = 64, V = 64> {`");
    } else if found == "=" && (expects("==") || rules.contains(&Rule::cmp_op)) {
        d = d.help("compare with `==`; assignment is a statement, not an expression");
    } else if matches!(found.as_str(), ")" | "]" | "}") && !open.iter().any(|&(c, _)| closing(c).to_string() == found) {
        d = d.help(format!("this `{found}` closes nothing; remove it"));
    } else if let Some(&(c, at)) = open.last() {
        // A closer of the wrong kind: say which opener is still waiting.
        if matches!(found.as_str(), ")" | "]" | "}") && closing(c).to_string() != found {
            d = d.secondary(Span::new(at, at + 1), format!("this `{c}` is closed by `{}`", closing(c)));
        }
    }
    d
}

/// The diagnostic for an expression (or block) nested beyond [`MAX_NESTING`] levels.
pub(super) fn nested_too_deeply(source: &str, at: Span) -> Diagnostic {
    // The first token of the too-deep part: its whole span could be most of the file.
    let start = (at.start as usize).min(source.len());
    let end = (start + found_token(source, start).len().max(1)).min(source.len());
    Diagnostic::error("expression nested too deeply")
        .primary(Span::new(start, end), format!("more than {MAX_NESTING} levels of nesting here"))
        .help("split the expression into `let` steps")
}

/// Literal tokens pest would have accepted at the furthest position it reached, and
/// that position, from a second parse that records them (pest records them only on
/// request; the first parse does not pay for it).
fn expected_tokens(source: &str) -> (Vec<String>, Option<usize>) {
    // pest's switch is process-wide and read when a parse starts: hold it for the
    // whole parse, so that a concurrent error on another thread cannot turn it off
    // under this one (the message would then depend on timing). Other parses that
    // start meanwhile only record more than they need.
    static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = DETAIL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pest::set_error_detail(true);
    let result = PsmParser::parse(Rule::file, source);
    pest::set_error_detail(false);
    drop(guard);
    let Err(e) = result else { return (Vec::new(), None) };
    let Some(attempts) = e.parse_attempts() else { return (Vec::new(), None) };
    let tokens = attempts
        .expected_tokens()
        .into_iter()
        // `ParsingToken` is not exported; its text is the token, `a..z` for a range.
        .map(|t| t.to_string())
        .filter(|t| !(t.chars().count() == 4 && t.get(1..3) == Some("..")) && t != "BUILTIN_RULE")
        .filter(|t| !t.trim().is_empty() && t != "//" && t != "_" && t != "e" && t != "E")
        .collect();
    (tokens, Some(attempts.max_position))
}

/// What to write at an error position, in the language's words, most useful first.
fn describe_expected(rules: &[Rule], tokens: &[String]) -> Vec<String> {
    // `<` and `>` alone also close and open a dim list: they do not tell an operator.
    const BINARY: [&str; 9] = ["+", "*", "/", "<=", ">=", "==", "!=", "&&", "||"];
    const OPERATOR_RULES: [Rule; 5] = [Rule::or_op, Rule::and_op, Rule::cmp_op, Rule::add_op, Rule::mul_op];
    const EXPRESSION_RULES: [Rule; 12] = [
        Rule::expr, Rule::and_expr, Rule::cmp_expr, Rule::add_expr, Rule::mul_expr, Rule::unary, Rule::reduction,
        Rule::paren, Rule::call, Rule::access, Rule::if_expr, Rule::prefix_op,
    ];
    let has = |t: &str| tokens.iter().any(|x| x == t);
    // The start of an expression: a parenthesis and `if` (or a reduction) are expected.
    let expression = rules.iter().any(|r| EXPRESSION_RULES.contains(r)) || (has("(") && (has("if") || has("sum")));
    let binary = tokens.iter().any(|t| BINARY.contains(&t.as_str())) || rules.iter().any(|r| OPERATOR_RULES.contains(r));
    let mut out: Vec<String> = Vec::new();
    let push = |s: String, out: &mut Vec<String>| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for p in [";", "}", ")", "]", "{", "(", "[", ",", "=", "->", ":", ">"] {
        if p == "(" && expression {
            continue;
        }
        if has(p) && !(p == ">" && binary) {
            push(format!("`{p}`"), &mut out);
        }
    }
    for t in tokens {
        let word = t.chars().all(|c| c.is_ascii_alphabetic());
        let starts_expression = ["if", "sum", "prod", "max", "min", "inf"].contains(&t.as_str());
        if word && !(expression && starts_expression) {
            push(format!("`{t}`"), &mut out);
        }
    }
    if expression {
        push("an expression".to_string(), &mut out);
    }
    for r in rules {
        if OPERATOR_RULES.contains(r) || EXPRESSION_RULES.contains(r) {
            continue;
        }
        if let Some(name) = rule_name(r) {
            push(name.to_string(), &mut out);
        }
    }
    if binary {
        push("an operator".to_string(), &mut out);
    }
    out
}

fn closing(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

/// The brackets opened before `pos` and not yet closed, outermost first, skipping
/// comments. A closer that matches nothing is ignored.
fn unclosed_delimiters(source: &str, pos: usize) -> Vec<(char, usize)> {
    let mut stack: Vec<(char, usize)> = Vec::new();
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < pos.min(bytes.len()) {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            c @ (b'(' | b'[' | b'{') => stack.push((c as char, i)),
            c @ (b')' | b']' | b'}') => {
                if let Some(k) = stack.iter().rposition(|&(o, _)| closing(o) as u8 == c) {
                    stack.truncate(k);
                }
            }
            _ => {}
        }
        i += 1;
    }
    stack
}

/// The position of the last `}` before `pos` that closed an outermost `{`.
fn last_outer_close(source: &str, pos: usize) -> Option<usize> {
    let bytes = source.as_bytes();
    let (mut depth, mut last, mut i) = (0usize, None, 0);
    while i < pos.min(bytes.len()) {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'{' => depth += 1,
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    last = Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    last
}

/// ` of `combine`` for the `{` of a combine body: the first word of what precedes the
/// opener since the previous statement or block boundary.
fn opener_context(source: &str, at: usize) -> String {
    let before = &source[..at.min(source.len())];
    let from = before.rfind([';', '{', '}']).map_or(0, |k| k + 1);
    let head = strip_comments(&before[from..]);
    let word: String = head.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    match word.as_str() {
        "" => String::new(),
        "aggregator" => {
            let name: String = head.trim_start()["aggregator".len()..].trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() { " of the aggregator".to_string() } else { format!(" of aggregator `{name}`") }
        }
        w @ ("input" | "param" | "element" | "identity" | "lift" | "combine" | "readout") => format!(" of `{w}`"),
        _ => String::new(),
    }
}

fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |k| &l[..k])).collect::<Vec<_>>().join("\n")
}

/// The byte range of the last token before `pos`, skipping whitespace and comments.
fn previous_token(source: &str, pos: usize) -> (usize, usize) {
    let bytes = source.as_bytes();
    let pos = pos.min(bytes.len());
    // The end of the last significant byte before `pos`.
    let mut end = 0;
    let mut i = 0;
    while i < pos {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < pos && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if !bytes[i].is_ascii_whitespace() {
            end = i + 1;
        }
        i += 1;
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut start = end.saturating_sub(1);
    if end > 0 && word(bytes[end - 1]) {
        while start > 0 && word(bytes[start - 1]) {
            start -= 1;
        }
    }
    // Keep the range on character boundaries (a non-ASCII byte is never a word byte).
    while start > 0 && !source.is_char_boundary(start) {
        start -= 1;
    }
    while end < source.len() && !source.is_char_boundary(end) {
        end += 1;
    }
    (start, end)
}

/// A word around `pos` that starts with a digit but is not a number: `0.5.0`, `2.`,
/// `1e`, `3x`. Only when the parse stopped inside it.
fn malformed_number(source: &str, pos: usize) -> Option<(String, Span)> {
    let bytes = source.as_bytes();
    let part = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    let mut start = pos.min(bytes.len());
    while start > 0 && part(bytes[start - 1]) {
        start -= 1;
    }
    // A field access (`x.v1`) is a word that starts with a letter.
    if start == pos || !bytes.get(start).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let mut end = pos;
    while end < bytes.len() && (part(bytes[end]) || ((bytes[end] == b'-' || bytes[end] == b'+') && matches!(bytes[end - 1], b'e' | b'E'))) {
        end += 1;
    }
    let word = &source[start..end];
    // `2.0.x`: the number ends where a field access could begin.
    Some((word.to_string(), Span::new(start, end)))
}

/// The token at `pos`, for "unexpected `...`" labels.
fn found_token(source: &str, pos: usize) -> String {
    let rest = source.get(pos..).unwrap_or("");
    let mut chars = rest.char_indices();
    match chars.next() {
        None => String::new(),
        Some((_, c)) if c.is_alphanumeric() || c == '_' => {
            rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
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
