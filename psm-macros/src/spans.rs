//! Synthetic spans: every psm-ir [`Span`](psm_ir::Span) the macro writes is
//! `{start: k, end: k + 1}` for an entry `k` of a table of Rust token ranges, so a
//! psm-ir diagnostic maps back to the Rust tokens it is about.

use proc_macro2::{Punct, Spacing, Span, TokenStream, TokenTree};
use quote::ToTokens;

pub struct Entry {
    pub first: Span,
    pub last: Span,
    /// The tokens as written, for notes that refer to a second place.
    pub text: String,
}

pub struct Spans {
    table: Vec<Entry>,
}

impl Spans {
    /// Entry 0 is `whole`: where an error without a span of its own goes.
    pub fn new(whole: &dyn ToTokens) -> Spans {
        let mut s = Spans { table: Vec::new() };
        s.id(whole);
        s
    }

    pub fn id(&mut self, node: &dyn ToTokens) -> psm_ir::Span {
        let ts = node.to_token_stream();
        let mut it = ts.clone().into_iter();
        let first = it.next().map(|t| t.span()).unwrap_or_else(Span::call_site);
        let last = it.last().map(|t| t.span()).unwrap_or(first);
        let mut text = ts.to_string();
        if text.len() > 80 {
            text = format!("{}...", text.chars().take(77).collect::<String>());
        }
        self.table.push(Entry { first, last, text });
        let k = self.table.len() - 1;
        psm_ir::Span::new(k, k + 1)
    }

    fn entry(&self, k: usize) -> &Entry {
        self.table.get(k).unwrap_or(&self.table[0])
    }

    /// The Rust tokens of a psm span (a join of several entries covers them all).
    pub fn tokens(&self, span: psm_ir::Span) -> TokenStream {
        let (a, b) = if span == psm_ir::Span::NONE {
            (0, 1)
        } else {
            (span.start as usize, (span.end as usize).max(span.start as usize + 1))
        };
        let first = self.entry(a).first;
        let last = self.entry(b - 1).last;
        let mut p = Punct::new('#', Spacing::Alone);
        p.set_span(first);
        let mut q = Punct::new('#', Spacing::Alone);
        q.set_span(last);
        [TokenTree::Punct(p), TokenTree::Punct(q)].into_iter().collect()
    }

    /// A second place an error involves, drawn below the note the way rustc draws a
    /// secondary label: the source line, `-` under the tokens, the label beside them.
    /// (A proc macro on stable Rust cannot attach a second span to an error; rustc's
    /// `Diagnostic` API is unstable.) Without the source file, the tokens are quoted.
    pub fn label(&self, span: psm_ir::Span, label: &str) -> String {
        let e = self.entry(span.start as usize);
        let (start, end) = (e.first.start(), e.last.end());
        let line = e.first.local_file().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|src| src.lines().nth(start.line.checked_sub(1)?).map(|l| l.replace('\t', " ")));
        let Some(line) = line.filter(|l| start.line > 0 && start.column < l.chars().count()) else {
            return format!("{label}: `{}`", e.text);
        };
        let width = if end.line == start.line && end.column > start.column { end.column - start.column } else { 1 };
        let number = start.line.to_string();
        let pad = " ".repeat(number.len());
        format!("{label}\n  {pad} |\n  {number} | {line}\n  {pad} | {}{}", " ".repeat(start.column), "-".repeat(width))
    }

    pub fn error(&self, span: psm_ir::Span, message: impl std::fmt::Display) -> syn::Error {
        syn::Error::new_spanned(self.tokens(span), message)
    }
}

/// `message`, then `= note:` and `= help:` lines, the way rustc lays them out.
pub fn message(head: &str, notes: &[String], helps: &[String]) -> String {
    let mut m = head.to_string();
    for n in notes {
        m.push_str(&format!("\n= note: {n}"));
    }
    for h in helps {
        m.push_str(&format!("\n= help: {h}"));
    }
    m
}

/// Several errors as one (each keeps its span).
pub fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    let mut it = errors.into_iter();
    let mut first = it.next()?;
    for e in it {
        first.combine(e);
    }
    Some(first)
}
