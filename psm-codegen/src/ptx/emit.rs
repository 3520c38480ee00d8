//! PTX text: virtual registers by class, labels with meaning, instructions with
//! comments.

use std::fmt::{self, Write};

use psm_ir::ir::Scalar;

/// A PTX register class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Pred,
    B16,
    B32,
    B64,
    F32,
    F64,
}

impl Class {
    const ALL: [Class; 6] = [Class::Pred, Class::B16, Class::B32, Class::B64, Class::F32, Class::F64];

    fn prefix(self) -> &'static str {
        match self {
            Class::Pred => "%p",
            Class::B16 => "%rs",
            Class::B32 => "%r",
            Class::B64 => "%rd",
            Class::F32 => "%f",
            Class::F64 => "%fd",
        }
    }

    fn decl(self) -> &'static str {
        match self {
            Class::Pred => ".pred",
            Class::B16 => ".b16",
            Class::B32 => ".b32",
            Class::B64 => ".b64",
            Class::F32 => ".f32",
            Class::F64 => ".f64",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The register class of a value type (i32 in `.b32`, bool in `.pred`).
    pub fn of(s: Scalar) -> Class {
        match s {
            Scalar::F32 => Class::F32,
            Scalar::F64 => Class::F64,
            Scalar::I32 => Class::B32,
            Scalar::Bool => Class::Pred,
        }
    }
}

/// A virtual register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg {
    pub class: Class,
    n: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.class.prefix(), self.n)
    }
}

/// The PTX type suffix of a value type in arithmetic and memory instructions.
pub(crate) fn suffix(s: Scalar) -> &'static str {
    match s {
        Scalar::F32 => "f32",
        Scalar::F64 => "f64",
        Scalar::I32 => "s32",
        Scalar::Bool => "pred",
    }
}

/// A constant of a value type, from the interpreter's f64 representation, as a PTX
/// immediate (floats by their exact bits).
pub(crate) fn immediate(s: Scalar, x: f64) -> String {
    match s {
        Scalar::F32 => format!("0f{:08X}", (x as f32).to_bits()),
        Scalar::F64 => format!("0d{:016X}", x.to_bits()),
        Scalar::I32 => (x as i64 as i32).to_string(),
        Scalar::Bool => ((x != 0.0) as i32).to_string(),
    }
}

/// The body of one function being written.
pub(crate) struct Emitter {
    text: String,
    counts: [u32; 6],
    labels: u32,
}

impl Emitter {
    pub fn new() -> Emitter {
        Emitter { text: String::new(), counts: [0; 6], labels: 0 }
    }

    pub fn reg(&mut self, class: Class) -> Reg {
        let c = &mut self.counts[class.index()];
        *c += 1;
        Reg { class, n: *c }
    }

    /// One instruction (without the `;`).
    pub fn ins(&mut self, text: impl fmt::Display) {
        let _ = writeln!(self.text, "\t{text};");
    }

    /// One instruction with a trailing comment.
    pub fn ins_c(&mut self, text: impl fmt::Display, comment: impl fmt::Display) {
        let _ = writeln!(self.text, "\t{text};\t// {comment}");
    }

    pub fn comment(&mut self, text: impl fmt::Display) {
        for line in text.to_string().lines() {
            let _ = writeln!(self.text, "\t// {line}");
        }
    }

    /// A fresh label `$L<n>_<what>`.
    pub fn label(&mut self, what: &str) -> String {
        self.labels += 1;
        format!("$L{}_{what}", self.labels)
    }

    pub fn place(&mut self, label: &str) {
        let _ = writeln!(self.text, "{label}:");
    }

    /// Raw lines (declarations).
    pub fn raw(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The register declarations, then the instructions.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for class in Class::ALL {
            let n = self.counts[class.index()];
            if n > 0 {
                let _ = writeln!(out, "\t.reg {} {}<{}>;", class.decl(), class.prefix(), n + 1);
            }
        }
        out.push_str(&self.text);
        out
    }
}
