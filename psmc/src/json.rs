//! `psmc check --format json`: one document, stable schema.
//!
//! ```text
//! {"aggregators": [{"file": str, "name": str, "dims": {NAME: int},
//!                   "associative": VERDICT, "identity": VERDICT | null, "commutative": VERDICT,
//!                   "structure": str, "forms": [str], "assumed": bool,
//!                   "chunkwise": {"applies": bool, "detail": str}}],
//!  "diagnostics": [{"file": str, "message": str, "line": int | null, "column": int | null,
//!                   "rendered": str}]}
//! VERDICT = {"verdict": "proven" | "verified" | "refuted" | "unknown", "method": str,
//!            "counterexample": CX}            ("counterexample" only when there is one)
//! CX = {"operands": {"a": VALUE, ...}, "lhs": {"expr": "(a•b)•c", "value": VALUE},
//!       "rhs": {"expr": str, "value": VALUE}, "field": str, "index": [int],
//!       "lhs_value": num, "rhs_value": num, "params": VALUE}
//! VALUE = {FIELD: [num]}   (flat row-major values, fields in declaration order)
//! ```
//! Maps keep declaration order. Non-finite numbers are the strings "inf", "-inf", "nan".
//! `line` and `column` are 1-based (column in characters) and locate the diagnostic's
//! primary span; they are null when it has no span (e.g. an unknown `-D` name).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde::Serialize as DeriveSerialize;

use psm_ir::algebra::{Counterexample, Value, Verdict};
use psm_ir::Diagnostic;

use crate::check::{Analysis, Checked, Failure};

#[derive(DeriveSerialize)]
struct Document<'a> {
    aggregators: Vec<Aggregator<'a>>,
    diagnostics: Vec<Diag>,
}

#[derive(DeriveSerialize)]
struct Aggregator<'a> {
    file: &'a str,
    name: &'a str,
    dims: Ordered<'a, i64>,
    associative: VerdictJson<'a>,
    identity: Option<VerdictJson<'a>>,
    commutative: VerdictJson<'a>,
    structure: &'static str,
    forms: Vec<&'static str>,
    assumed: bool,
    chunkwise: ChunkwiseJson<'a>,
}

/// Whether the chunkwise form applies; `detail` is its summary or the reason it does not.
#[derive(DeriveSerialize)]
struct ChunkwiseJson<'a> {
    applies: bool,
    detail: &'a str,
}

#[derive(DeriveSerialize)]
struct VerdictJson<'a> {
    verdict: &'static str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    counterexample: Option<CounterexampleJson<'a>>,
}

#[derive(DeriveSerialize)]
struct CounterexampleJson<'a> {
    operands: Operands<'a>,
    lhs: Side<'a>,
    rhs: Side<'a>,
    field: &'a str,
    index: &'a [usize],
    lhs_value: Num,
    rhs_value: Num,
    params: ValueJson<'a>,
}

#[derive(DeriveSerialize)]
struct Side<'a> {
    expr: &'a str,
    value: ValueJson<'a>,
}

#[derive(DeriveSerialize)]
struct Diag {
    file: String,
    message: String,
    line: Option<usize>,
    column: Option<usize>,
    rendered: String,
}

/// A float that is a JSON number when finite and a string otherwise.
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f64(x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

/// `(name, value)` pairs as a JSON object, in their order.
struct Ordered<'a, T>(&'a [(String, T)]);

impl<T: Serialize> Serialize for Ordered<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct Nums<'a>(&'a [f64]);

impl Serialize for Nums<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &x in self.0 {
            seq.serialize_element(&Num(x))?;
        }
        seq.end()
    }
}

struct ValueJson<'a>(&'a Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.fields.len()))?;
        for (name, values) in &self.0.fields {
            map.serialize_entry(name, &Nums(values))?;
        }
        map.end()
    }
}

struct Operands<'a>(&'a [(String, Value)]);

impl Serialize for Operands<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &ValueJson(value))?;
        }
        map.end()
    }
}

fn verdict(v: &Verdict) -> VerdictJson<'_> {
    VerdictJson { verdict: v.kind.name(), method: &v.method, counterexample: v.counterexample.as_deref().map(counterexample) }
}

fn counterexample(cx: &Counterexample) -> CounterexampleJson<'_> {
    CounterexampleJson {
        operands: Operands(&cx.operands),
        lhs: Side { expr: &cx.lhs_name, value: ValueJson(&cx.lhs) },
        rhs: Side { expr: &cx.rhs_name, value: ValueJson(&cx.rhs) },
        field: &cx.field,
        index: &cx.index,
        lhs_value: Num(cx.lhs_value),
        rhs_value: Num(cx.rhs_value),
        params: ValueJson(&cx.params),
    }
}

fn aggregator<'a>(file: &'a str, a: &'a Analysis) -> Aggregator<'a> {
    let r = &a.report;
    Aggregator {
        file,
        name: &a.name,
        dims: Ordered(&a.dims),
        associative: verdict(&r.associative),
        identity: r.identity.as_ref().map(verdict),
        commutative: verdict(&r.commutative),
        structure: r.structure.name(),
        forms: r.forms(),
        assumed: r.assumed,
        chunkwise: match &a.chunkwise {
            Ok(summary) => ChunkwiseJson { applies: true, detail: summary },
            Err(reason) => ChunkwiseJson { applies: false, detail: reason },
        },
    }
}

/// 1-based line and character column of a byte offset (clamped into the source).
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn diagnostic(file: &str, source: &str, d: &Diagnostic) -> Diag {
    let span = d.span().or_else(|| d.labels.first().map(|l| l.span));
    let (line, column) = match span {
        Some(span) => {
            let (l, c) = line_column(source, span.start as usize);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    Diag {
        file: file.to_string(),
        message: d.message.clone(),
        line,
        column,
        rendered: psm_ir::diag::render(std::slice::from_ref(d), file, source),
    }
}

/// The whole `--format json` document, pretty-printed, with a final newline.
pub fn document(checked: &[Checked]) -> serde_json::Result<String> {
    let mut doc = Document { aggregators: Vec::new(), diagnostics: Vec::new() };
    for c in checked {
        let l = &c.loaded;
        match &l.result {
            Ok(_) => doc.aggregators.extend(c.analyses.iter().map(|a| aggregator(&l.file, a))),
            Err(Failure::Unreadable(reason)) => {
                let message = format!("cannot read {}: {reason}", l.file);
                let rendered = format!("error: {message}\n");
                doc.diagnostics.push(Diag { file: l.file.clone(), message, line: None, column: None, rendered });
            }
            Err(Failure::Invalid(diags)) => {
                doc.diagnostics.extend(diags.iter().map(|d| diagnostic(&l.file, &l.source, d)));
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_columns() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 3), (2, 1));
        assert_eq!(line_column(src, 5), (2, 3));
        assert_eq!(line_column(src, 6), (2, 3)); // inside `é`: its start
        assert_eq!(line_column(src, 8), (3, 1));
        assert_eq!(line_column(src, 100), (3, 2));
    }

    #[test]
    fn every_verdict_kind_serializes() {
        let a = crate::check::tests::sample();
        let json = serde_json::to_string_pretty(&aggregator("dir/sample.psm", &a)).unwrap();
        insta::assert_snapshot!(json);
    }
}
