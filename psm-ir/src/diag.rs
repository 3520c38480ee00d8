//! Diagnostics: a message, labelled spans and help, rendered the way rustc renders
//! them (file, line, caret under the span) through codespan-reporting.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::NoColor};

/// A byte range in one source text. `Span::NONE` marks IR that has no source
/// (written by a builder rather than parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub const NONE: Span = Span { start: 0, end: 0 };
    pub fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
    }
    pub fn join(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub labels: Vec<Label>,
    /// `help:` lines: what to write instead.
    pub help: Vec<String>,
    /// `note:` lines: facts that explain the error.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic { message: message.into(), labels: Vec::new(), help: Vec::new(), notes: Vec::new() }
    }
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label { span, message: message.into(), primary: true });
        self
    }
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label { span, message: message.into(), primary: false });
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help.push(help.into());
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
    /// The span of the first primary label, if any.
    pub fn span(&self) -> Option<Span> {
        self.labels.iter().find(|l| l.primary).map(|l| l.span)
    }
}

/// Renders diagnostics against the source they refer to, without colour.
pub fn render(diagnostics: &[Diagnostic], file_name: &str, source: &str) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = term::Config::default();
    let mut out = NoColor::new(Vec::new());
    for d in diagnostics {
        let mut labels = Vec::new();
        for l in &d.labels {
            // Clamp so that a stale span can never make the renderer fail: inside the
            // source, on character boundaries.
            let mut end = (l.span.end as usize).min(source.len());
            while !source.is_char_boundary(end) {
                end += 1;
            }
            let mut start = (l.span.start as usize).min(end);
            while !source.is_char_boundary(start) {
                start -= 1;
            }
            let label = if l.primary { CsLabel::primary((), start..end) } else { CsLabel::secondary((), start..end) };
            labels.push(label.with_message(l.message.clone()));
        }
        let mut notes: Vec<String> = d.notes.iter().map(|n| format!("note: {n}")).collect();
        notes.extend(d.help.iter().map(|h| format!("help: {h}")));
        let cs = CsDiagnostic::error().with_message(d.message.clone()).with_labels(labels).with_notes(notes);
        // Writing into a Vec cannot fail; a renderer error would only drop the text.
        let _ = term::emit(&mut out, &config, &file, &cs);
    }
    String::from_utf8_lossy(&out.into_inner()).into_owned()
}
