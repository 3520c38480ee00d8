//! psm-ir diagnostics and algebra verdicts as Rust compile errors.

use psm_ir::algebra::{Counterexample, Value};
use psm_ir::Diagnostic;

use crate::spans::{message, Spans};

/// A psm-ir diagnostic at the Rust tokens its spans came from, in Rust's words.
pub fn diagnostic(spans: &Spans, d: &Diagnostic, agg: &str, dims: &[(String, i64)]) -> syn::Error {
    let rustify = |s: &str| rustify(s, agg, dims);
    let primary = d.labels.iter().find(|l| l.primary);
    let span = primary.map_or(psm_ir::Span::NONE, |l| l.span);
    let mut notes = Vec::new();
    if let Some(l) = primary {
        if !l.message.is_empty() {
            notes.push(l.message.clone());
        }
    }
    notes.extend(d.notes.iter().cloned());
    let mut notes: Vec<String> = notes.iter().map(|n| rustify(n)).collect();
    for l in d.labels.iter().filter(|l| !l.primary) {
        notes.push(spans.label(l.span, &rustify(&l.message)));
    }
    let helps: Vec<String> = d.help.iter().map(|h| rustify(h)).collect();
    spans.error(span, message(&rustify(&d.message), &notes, &helps))
}

/// Rewrites the `.psm` spellings psm-ir uses in its hints into the macro's Rust ones.
fn rustify(s: &str, agg: &str, dims: &[(String, i64)]) -> String {
    let mut s = s.to_string();
    // `an index variable of extent 2`: in Rust, the variable of a loop over `0..K`.
    const EXTENT: &str = "use an index variable of extent ";
    if let Some(i) = s.find(EXTENT) {
        let rest = &s[i + EXTENT.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<i64>() {
            let named: Vec<&String> = dims.iter().filter(|(_, v)| *v == n).map(|(d, _)| d).collect();
            let bound = if named.len() == 1 { named[0].clone() } else { n.to_string() };
            s = format!("{}index it with the variable of a loop over `0..{bound}`{}", &s[..i], &rest[digits..]);
        }
    }
    let header = format!("`aggregator {agg}<");
    while let Some(i) = s.find(&header) {
        let rest = &s[i + header.len()..];
        let Some(j) = rest.find(">`") else { break };
        let inner = rest[..j].to_string();
        s = format!("{}`#[psm_aggregator(dims({inner}))]`{}", &s[..i], &rest[j + 2..]);
    }
    // `add \`b[i, j] = ...;\``: the statement in the macro's spelling.
    if let Some(rest) = s.strip_prefix("add `") {
        let stmts: Vec<String> = rest
            .split("` and `")
            .map(|st| {
                let st = st.trim_end_matches('`');
                let lhs = st.split(" = ").next().unwrap_or(st).replace(", ", "][");
                format!("`out.{lhs} = ...;`")
            })
            .collect();
        s = format!("add {} (inside `for` loops over each index)", stmts.join(" and "));
        s = s.replace("(inside `for` loops over each index)", if s.contains('[') { "inside `for` loops over its indices" } else { "" }).trim_end().to_string();
    }
    for (from, to) in [
        ("missing `lift(x) { ... }`", "missing `fn lift(x: &Input) -> State`"),
        ("write `lift(x) { ... }` assigning every element field from `x`", "write `pub fn lift(x: &Input) -> State` assigning every field of `State`"),
        ("declare it in `element` and set it in `lift`", "add it to `State` and set it in `lift`"),
        ("the element field `", "the field `"),
        ("the element fields `", "the fields `"),
        ("every element field", "every field of `State`"),
        ("is an element, which", "is a `State`, which"),
        ("is the input, which", "is the `Input`, which"),
        ("the element fields", "the fields of `State`"),
        ("the input fields", "the fields of `Input`"),
        ("in the element", "in `State`"),
        ("in the input", "in `Input`"),
        ("an element field", "a field of `State`"),
        ("an input field", "a field of `Input`"),
        ("`-D ", "`dims("),
        ("each index variable ranges over one size", "a loop variable indexes axes of one size"),
    ] {
        s = s.replace(from, to);
    }
    s
}

fn value(v: &Value) -> String {
    let fields: Vec<String> = v
        .fields
        .iter()
        .map(|(name, xs)| {
            let shown: Vec<String> = xs.iter().take(6).map(|x| x.to_string()).collect();
            let body = match xs.len() {
                1 => shown[0].clone(),
                n if n <= 6 => format!("[{}]", shown.join(", ")),
                n => format!("[{}, ... ({n} values)]", shown.join(", ")),
            };
            format!("{name}: {body}")
        })
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

/// The counterexample as one note: operands, both sides, the first difference.
pub fn counterexample(c: &Counterexample) -> String {
    let mut lines = vec!["counterexample:".to_string()];
    for (name, v) in &c.operands {
        lines.push(format!("    {name} = {}", value(v)));
    }
    if !c.params.fields.is_empty() {
        lines.push(format!("    params = {}", value(&c.params)));
    }
    lines.push(format!("    {} = {}", c.lhs_name, value(&c.lhs)));
    lines.push(format!("    {} = {}", c.rhs_name, value(&c.rhs)));
    let index = if c.index.is_empty() {
        String::new()
    } else {
        c.index.iter().map(|i| format!("[{i}]")).collect::<String>()
    };
    lines.push(format!("    they differ first at `{}{index}`: {} vs {}", c.field, c.lhs_value, c.rhs_value));
    lines.join("\n")
}
