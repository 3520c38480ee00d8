//! Random aggregators whose algebra is known by construction: associative families
//! (sums, products, max/min, affine maps, log-sum-exp, arg-max, ...), non-associative
//! ones, their compositions, and random expressions and mutants. Each [`Op`] is `.psm`
//! text plus what its laws must be ([`Expect`]).
//!
//! Shared by psm-ir's algebra property tests (verdicts are sound) and psm-runtime's
//! differential tests of the forms (every form a verdict allows agrees with the
//! interpreter). Seeded: an operator reproduces from its seed.

use std::fmt::Write as _;

use crate::SplitMix64;

// ---------------------------------------------------------------------------------
// Randomness

/// The generator of the random families: [`SplitMix64`] from a seed mixed with a
/// constant.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64(seed ^ 0x6a09_e667_f3bc_c908))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn unit(&mut self) -> f64 {
        self.0.unit()
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0.uniform(lo, hi)
    }
    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

// ---------------------------------------------------------------------------------
// Operators as source text

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Scalar,
    Vector,
    Matrix,
    Int,
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub kind: Kind,
}

impl Field {
    pub fn decl(&self) -> String {
        match self.kind {
            Kind::Scalar => self.name.clone(),
            Kind::Vector => format!("{}[2]", self.name),
            Kind::Matrix => format!("{}[2, 2]", self.name),
            Kind::Int => format!("{}: i32", self.name),
        }
    }
    /// The assignment target.
    pub fn lhs(&self) -> String {
        match self.kind {
            Kind::Scalar | Kind::Int => self.name.clone(),
            Kind::Vector => format!("{}[i]", self.name),
            Kind::Matrix => format!("{}[i, j]", self.name),
        }
    }
    /// `side.field` read at the entry being written.
    pub fn at(&self, side: &str) -> String {
        match self.kind {
            Kind::Scalar | Kind::Int => format!("{side}.{}", self.name),
            Kind::Vector => format!("{side}.{}[i]", self.name),
            Kind::Matrix => format!("{side}.{}[i, j]", self.name),
        }
    }
}

/// What a law must be, by construction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    Holds,
    Fails,
    Any,
}

impl Expect {
    /// Fields are independent: the law holds iff it holds on every part.
    pub fn and(self, other: Expect) -> Expect {
        match (self, other) {
            (Expect::Fails, _) | (_, Expect::Fails) => Expect::Fails,
            (Expect::Holds, Expect::Holds) => Expect::Holds,
            _ => Expect::Any,
        }
    }
}

/// A group of element fields with their combine statements (and identity).
#[derive(Clone, Debug)]
pub struct Part {
    pub family: &'static str,
    pub fields: Vec<Field>,
    pub stmts: Vec<String>,
    /// Identity statements for these fields, when one is declared.
    pub identity: Option<Vec<String>>,
    pub assoc: Expect,
    pub comm: Expect,
    /// Meaningful only when `identity` is declared.
    pub ident: Expect,
    /// A simple algebraic family: its associativity must be proven or verified.
    pub must_verify: bool,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub family: String,
    pub fields: Vec<Field>,
    pub stmts: Vec<String>,
    pub identity: Option<Vec<String>>,
    pub assoc: Expect,
    pub comm: Expect,
    pub ident: Expect,
    pub must_verify: bool,
}

impl Op {
    pub fn from_parts(parts: Vec<Part>, family: String) -> Op {
        let mut op = Op {
            family,
            fields: Vec::new(),
            stmts: Vec::new(),
            identity: Some(Vec::new()),
            assoc: Expect::Holds,
            comm: Expect::Holds,
            ident: Expect::Holds,
            must_verify: true,
        };
        for p in parts {
            op.fields.extend(p.fields);
            op.stmts.extend(p.stmts);
            op.identity = match (op.identity, p.identity) {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
                _ => None,
            };
            op.assoc = op.assoc.and(p.assoc);
            op.comm = op.comm.and(p.comm);
            op.ident = op.ident.and(p.ident);
            op.must_verify &= p.must_verify;
        }
        if op.identity.is_none() {
            op.ident = Expect::Any;
        }
        op.must_verify &= op.assoc == Expect::Holds;
        op
    }

    pub fn source(&self, name: &str) -> String {
        let decls: Vec<String> = self.fields.iter().map(Field::decl).collect();
        let decls = decls.join(", ");
        let mut s = String::new();
        writeln!(s, "aggregator {name} {{").unwrap();
        writeln!(s, "    input   {{ {decls} }}").unwrap();
        writeln!(s, "    element {{ {decls} }}").unwrap();
        if let Some(id) = &self.identity {
            writeln!(s, "    identity {{ {} }}", id.join(" ")).unwrap();
        }
        writeln!(s, "    combine(l, r) {{").unwrap();
        for st in &self.stmts {
            writeln!(s, "        {st}").unwrap();
        }
        writeln!(s, "    }}").unwrap();
        writeln!(s, "}}").unwrap();
        s
    }
}

/// A float literal as source text (negative ones parenthesized).
pub fn lit(x: f64) -> String {
    if x == f64::INFINITY {
        "inf".into()
    } else if x == f64::NEG_INFINITY {
        "(-inf)".into()
    } else if x < 0.0 {
        format!("(-{:?})", -x)
    } else {
        format!("{:?}", x)
    }
}

pub struct Names(pub usize);

impl Names {
    pub fn field(&mut self, kind: Kind) -> Field {
        self.0 += 1;
        let p = match kind {
            Kind::Scalar => "a",
            Kind::Vector => "v",
            Kind::Matrix => "m",
            Kind::Int => "k",
        };
        Field { name: format!("{p}{}", self.0), kind }
    }
    pub fn local(&mut self) -> String {
        self.0 += 1;
        format!("t{}", self.0)
    }
}

// ---------------------------------------------------------------------------------
// Families

pub struct Gen {
    pub rng: Rng,
    pub names: Names,
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen { rng: Rng::new(seed), names: Names(0) }
    }

    pub fn scalar_or_vector(&mut self) -> Field {
        let kind = if self.rng.chance(0.25) { Kind::Vector } else { Kind::Scalar };
        self.names.field(kind)
    }

    pub fn part(
        family: &'static str,
        fields: Vec<Field>,
        stmts: Vec<String>,
        identity: Option<(Vec<String>, bool)>,
        assoc: Expect,
        comm: Expect,
        must_verify: bool,
    ) -> Part {
        let (identity, ident) = match identity {
            Some((id, ok)) => (Some(id), if ok { Expect::Holds } else { Expect::Fails }),
            None => (None, Expect::Any),
        };
        Part { family, fields, stmts, identity, assoc, comm, ident, must_verify }
    }

    /// `identity` lines for one field, or a wrong one, chosen at random.
    pub fn ident_choice(&mut self, field: &Field, right: f64, wrong: f64) -> (String, bool) {
        let ok = self.rng.chance(0.6);
        (format!("{} = {};", field.lhs(), lit(if ok { right } else { wrong })), ok)
    }

    /// Declares an identity with probability `p`.
    pub fn maybe_identity(&mut self, p: f64, lines: Vec<(String, bool)>) -> Option<(Vec<String>, bool)> {
        if !self.rng.chance(p) {
            return None;
        }
        let ok = lines.iter().all(|(_, ok)| *ok);
        Some((lines.into_iter().map(|(l, _)| l).collect(), ok))
    }

    // ---- associative by construction

    pub fn sum(&mut self) -> Part {
        let f = self.scalar_or_vector();
        let k = self.rng.pick(&[0.0, 0.0, 0.0, 1.0, -0.5, 2.0]);
        let (l, r) = (f.at("l"), f.at("r"));
        let mut rhs = self.rng.pick(&[format!("{l} + {r}"), format!("{r} + {l}")]);
        if k != 0.0 {
            rhs = format!("{rhs} + {}", lit(k));
        }
        let wrong = -k + self.rng.pick(&[1.0, -1.0, 0.5]);
        let id = self.ident_choice(&f, -k, wrong);
        let identity = self.maybe_identity(0.5, vec![id]);
        Self::part("sum", vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Holds, Expect::Holds, true)
    }

    pub fn product(&mut self) -> Part {
        let f = self.scalar_or_vector();
        let k = self.rng.pick(&[1.0, 1.0, 1.0, 2.0, 0.5, -1.0, -2.0]);
        let (l, r) = (f.at("l"), f.at("r"));
        let mut rhs = self.rng.pick(&[format!("{l} * {r}"), format!("{r} * {l}")]);
        if k != 1.0 {
            rhs = format!("{rhs} * {}", lit(k));
        }
        let wrong = self.rng.pick(&[0.0, 2.0 * k]);
        let id = self.ident_choice(&f, 1.0 / k, wrong);
        let identity = self.maybe_identity(0.5, vec![id]);
        Self::part("product", vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Holds, Expect::Holds, true)
    }

    pub fn max_min(&mut self) -> Part {
        let f = self.scalar_or_vector();
        let (l, r) = (f.at("l"), f.at("r"));
        let is_max = self.rng.chance(0.5);
        let (func, gt, ge, neutral) = if is_max { ("max", ">", ">=", f64::NEG_INFINITY) } else { ("min", "<", "<=", f64::INFINITY) };
        let rhs = match self.rng.below(5) {
            0 => format!("{func}({l}, {r})"),
            1 => format!("{func}({r}, {l})"),
            2 => format!("if {r} {gt} {l} {{ {r} }} else {{ {l} }}"),
            3 => format!("select({l} {ge} {r}, {l}, {r})"),
            _ => format!("{func}({func}({l}, {r}), {l})"),
        };
        let id = self.ident_choice(&f, neutral, 0.0);
        let identity = self.maybe_identity(0.4, vec![id]);
        Self::part("max/min", vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Holds, Expect::Holds, true)
    }

    pub fn first_last(&mut self) -> Part {
        let f = self.scalar_or_vector();
        let side = self.rng.pick(&["l", "r"]);
        // No identity exists: a declared one is wrong.
        let identity = self.maybe_identity(0.3, vec![(format!("{} = 0.0;", f.lhs()), false)]);
        Self::part("first/last", vec![f.clone()], vec![format!("{} = {};", f.lhs(), f.at(side))], identity, Expect::Holds, Expect::Fails, true)
    }

    pub fn affine(&mut self) -> Part {
        let diagonal = self.rng.chance(0.25);
        let gate = self.names.field(if diagonal { Kind::Vector } else { Kind::Scalar });
        let state = if diagonal || self.rng.chance(0.3) { self.names.field(Kind::Vector) } else { self.names.field(Kind::Scalar) };
        let (gl, gr, sl, sr) = (gate.at("l"), gate.at("r"), state.at("l"), state.at("r"));
        let g = self.rng.pick(&[format!("{gl} * {gr}"), format!("{gr} * {gl}")]);
        let s = self.rng.pick(&[format!("{gr} * {sl} + {sr}"), format!("{sl} * {gr} + {sr}"), format!("{sr} + {gr} * {sl}")]);
        let ig = self.ident_choice(&gate, 1.0, 0.0);
        let is = self.ident_choice(&state, 0.0, 1.0);
        let identity = self.maybe_identity(0.6, vec![ig, is]);
        let stmts = vec![format!("{} = {g};", gate.lhs()), format!("{} = {s};", state.lhs())];
        Self::part("affine", vec![gate, state], stmts, identity, Expect::Holds, Expect::Fails, true)
    }

    pub fn lse(&mut self) -> Part {
        let m = self.names.field(Kind::Scalar);
        let s = self.names.field(Kind::Scalar);
        let (ml, mr, sl, sr) = (m.at("l"), m.at("r"), s.at("l"), s.at("r"));
        let stmts = if self.rng.chance(0.5) {
            let t = self.names.local();
            vec![
                format!("let {t} = max({ml}, {mr});"),
                format!("{} = {t};", m.lhs()),
                format!("{} = {sl} * exp({ml} - {t}) + {sr} * exp({mr} - {t});", s.lhs()),
            ]
        } else {
            let mx = format!("max({ml}, {mr})");
            vec![format!("{} = {mx};", m.lhs()), format!("{} = {sr} * exp({mr} - {mx}) + {sl} * exp({ml} - {mx});", s.lhs())]
        };
        let ok = self.rng.chance(0.6);
        let id = if ok { vec![format!("{} = -inf;", m.lhs()), format!("{} = 0.0;", s.lhs())] } else { vec![format!("{} = 0.0;", m.lhs()), format!("{} = 0.0;", s.lhs())] };
        let identity = if self.rng.chance(0.4) { Some((id, ok)) } else { None };
        Self::part("log-sum-exp", vec![m, s], stmts, identity, Expect::Holds, Expect::Holds, true)
    }

    pub fn argmax(&mut self) -> Part {
        let m = self.names.field(Kind::Scalar);
        let k = self.names.field(Kind::Int);
        let (ml, mr, kl, kr) = (m.at("l"), m.at("r"), k.at("l"), k.at("r"));
        // Strict comparison keeps the earlier on ties, non-strict the later: both are
        // lexicographic extrema, hence associative.
        let cmp = self.rng.pick(&[">", ">=", "<", "<="]);
        let wins = format!("{mr} {cmp} {ml}");
        let mstmt = match self.rng.below(3) {
            0 => format!("{} = if {wins} {{ {mr} }} else {{ {ml} }};", m.lhs()),
            1 => format!("{} = select({wins}, {mr}, {ml});", m.lhs()),
            _ => format!("{} = {}({ml}, {mr});", m.lhs(), if cmp.starts_with('>') { "max" } else { "min" }),
        };
        let kstmt = if self.rng.chance(0.5) {
            format!("{} = select({wins}, {kr}, {kl});", k.lhs())
        } else {
            format!("{} = if {wins} {{ {kr} }} else {{ {kl} }};", k.lhs())
        };
        let identity = self.maybe_identity(0.25, vec![(format!("{} = 0.0; {} = 0;", m.lhs(), k.lhs()), false)]);
        // Sometimes the i32 field comes first, so it is the first field to differ.
        let (fields, stmts) =
            if self.rng.chance(0.5) { (vec![k, m], vec![kstmt, mstmt]) } else { (vec![m, k], vec![mstmt, kstmt]) };
        Self::part("argmax-index", fields, stmts, identity, Expect::Holds, Expect::Fails, true)
    }

    /// x•y = x + y + k·x·y, i.e. (1 + kx)(1 + ky) = 1 + k(x•y).
    pub fn shifted_product(&mut self) -> Part {
        let f = self.names.field(Kind::Scalar);
        let k = self.rng.pick(&[1.0, 0.5, -1.0, 2.0]);
        let (l, r) = (f.at("l"), f.at("r"));
        let rhs = format!("{l} + {r} + {} * {l} * {r}", lit(k));
        let id = self.ident_choice(&f, 0.0, 1.0);
        let identity = self.maybe_identity(0.5, vec![id]);
        Self::part("shifted-product", vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Holds, Expect::Holds, true)
    }

    /// L•R = L·C·R for a fixed integer matrix C of determinant ±1: associative, with
    /// identity C⁻¹.
    pub fn sandwich(&mut self) -> Part {
        if self.rng.chance(0.3) {
            let m = self.names.field(Kind::Matrix);
            let stmt = format!("{} = sum(p) l.{n}[i, p] * r.{n}[p, j];", m.lhs(), n = m.name);
            let ok = self.rng.chance(0.6);
            let id = if ok { "if i == j { 1.0 } else { 0.0 }" } else { "1.0" };
            let identity = if self.rng.chance(0.6) { Some((vec![format!("{} = {id};", m.lhs())], ok)) } else { None };
            return Self::part("matrix-product", vec![m], vec![stmt], identity, Expect::Holds, Expect::Fails, true);
        }
        let mut c = [[1i64, 0], [0, 1]];
        for _ in 0..self.rng.below(3) {
            match self.rng.below(3) {
                0 => {
                    let k = self.rng.pick(&[-1i64, 1, 2]);
                    let (a, b) = if self.rng.chance(0.5) { (0, 1) } else { (1, 0) };
                    let from = c[b];
                    for (x, y) in c[a].iter_mut().zip(from) {
                        *x += k * y;
                    }
                }
                1 => c.swap(0, 1),
                _ => {
                    let row = self.rng.below(2);
                    c[row] = [-c[row][0], -c[row][1]];
                }
            }
        }
        let det = c[0][0] * c[1][1] - c[0][1] * c[1][0];
        assert!(det == 1 || det == -1);
        let inv = [[c[1][1] * det, -c[0][1] * det], [-c[1][0] * det, c[0][0] * det]];
        let f: Vec<Field> = (0..4).map(|_| self.names.field(Kind::Scalar)).collect();
        let at = |i: usize, j: usize| &f[2 * i + j].name;
        let t: Vec<String> = (0..4).map(|_| self.names.local()).collect();
        let mut stmts = Vec::new();
        // t = L·C
        for i in 0..2 {
            for j in 0..2 {
                let terms: Vec<String> = (0..2)
                    .filter(|&p| c[p][j] != 0)
                    .map(|p| if c[p][j] == 1 { format!("l.{}", at(i, p)) } else { format!("l.{} * {}", at(i, p), lit(c[p][j] as f64)) })
                    .collect();
                let e = if terms.is_empty() { "0.0".to_string() } else { terms.join(" + ") };
                stmts.push(format!("let {} = {e};", t[2 * i + j]));
            }
        }
        // out = t·R
        for i in 0..2 {
            for j in 0..2 {
                stmts.push(format!("{} = {} * r.{} + {} * r.{};", at(i, j), t[2 * i], at(0, j), t[2 * i + 1], at(1, j)));
            }
        }
        let ok = self.rng.chance(0.6);
        let e = if ok {
            inv
        } else if c == [[1, 0], [0, 1]] {
            [[2, 0], [0, 2]]
        } else {
            [[1, 0], [0, 1]]
        };
        let id: Vec<String> = (0..4).map(|q| format!("{} = {};", f[q].name, lit(e[q / 2][q % 2] as f64))).collect();
        let identity = if self.rng.chance(0.6) { Some((id, ok)) } else { None };
        Self::part("matrix-sandwich", f, stmts, identity, Expect::Holds, Expect::Fails, true)
    }

    /// Associative through exp/log (or 1/x) algebra only: never refuted, may be unknown.
    pub fn transcendental(&mut self) -> Part {
        let f = self.names.field(Kind::Scalar);
        let (l, r) = (f.at("l"), f.at("r"));
        let (family, rhs, neutral) = match self.rng.below(3) {
            0 => ("logaddexp", format!("log(exp({l}) + exp({r}))"), f64::NEG_INFINITY),
            1 => {
                let mx = format!("max({l}, {r})");
                ("logaddexp-stable", format!("{mx} + log(exp({l} - {mx}) + exp({r} - {mx}))"), f64::NEG_INFINITY)
            }
            _ => ("harmonic", format!("1.0 / (1.0 / {l} + 1.0 / {r})"), f64::INFINITY),
        };
        let id = self.ident_choice(&f, neutral, 0.0);
        let identity = self.maybe_identity(0.4, vec![id]);
        Self::part(family, vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Holds, Expect::Holds, false)
    }

    // ---- non-associative by construction

    pub fn non_assoc(&mut self) -> Part {
        let f = self.scalar_or_vector();
        let (l, r) = (f.at("l"), f.at("r"));
        let k = self.rng.pick(&[2.0, 0.5, 3.0, -2.0]);
        let c = self.rng.pick(&[1.0, -1.0, 0.5]);
        let (family, rhs, comm) = match self.rng.below(11) {
            0 => ("average", self.rng.pick(&[format!("0.5 * ({l} + {r})"), format!("({l} + {r}) / 2.0")]), Expect::Holds),
            1 => ("subtract", format!("{l} - {r}"), Expect::Fails),
            2 => ("weighted-sum", format!("{l} + {} * {r}", lit(k)), Expect::Fails),
            3 => ("tanh-sum", format!("tanh({l} + {r})"), Expect::Holds),
            4 => ("sigmoid-sum", format!("sigmoid({l} + {r})"), Expect::Holds),
            5 => ("product-plus-const", format!("{l} * {r} + {}", lit(c)), Expect::Holds),
            6 => ("max-plus-const", format!("max({l}, {r}) + {}", lit(c)), Expect::Holds),
            7 => ("product-plus-left", format!("{l} * {r} + {l}"), Expect::Fails),
            8 => ("square-plus", format!("{l} * {l} + {r}"), Expect::Fails),
            9 => ("abs-difference", format!("abs({l} - {r})"), Expect::Holds),
            _ => ("exp-sum", format!("exp({l} + {r})"), Expect::Holds),
        };
        // None of these has a two-sided identity.
        let wrong = self.rng.pick(&[0.0, 1.0, -1.0]);
        let identity = self.maybe_identity(0.3, vec![(format!("{} = {};", f.lhs(), lit(wrong)), false)]);
        Self::part(family, vec![f.clone()], vec![format!("{} = {rhs};", f.lhs())], identity, Expect::Fails, comm, false)
    }

    pub fn non_assoc_pair(&mut self) -> Part {
        match self.rng.below(3) {
            0 => {
                let m = self.names.field(Kind::Scalar);
                let s = self.names.field(Kind::Scalar);
                let (ml, mr, sl, sr) = (m.at("l"), m.at("r"), s.at("l"), s.at("r"));
                let t = self.names.local();
                let stmts = vec![
                    format!("let {t} = max({ml}, {mr});"),
                    format!("{} = {t};", m.lhs()),
                    format!("{} = {sl} * exp({ml} - {t}) + {sr};", s.lhs()),
                ];
                Self::part("lse-missing-rescale", vec![m, s], stmts, None, Expect::Fails, Expect::Fails, false)
            }
            1 => {
                let a = self.names.field(Kind::Scalar);
                let b = self.names.field(Kind::Scalar);
                let stmts = vec![
                    format!("{} = {} * {};", a.lhs(), a.at("l"), a.at("r")),
                    format!("{} = {} * {} + {};", b.lhs(), a.at("l"), b.at("l"), b.at("r")),
                ];
                let identity = self.maybe_identity(0.4, vec![(format!("{} = 1.0; {} = 0.0;", a.lhs(), b.lhs()), false)]);
                Self::part("affine-wrong-gate", vec![a, b], stmts, identity, Expect::Fails, Expect::Fails, false)
            }
            _ => {
                let m = self.names.field(Kind::Scalar);
                let k = self.names.field(Kind::Int);
                let (ml, mr, kl, kr) = (m.at("l"), m.at("r"), k.at("l"), k.at("r"));
                let stmts = vec![
                    format!("{} = if {mr} > {ml} {{ {mr} }} else {{ {ml} }};", m.lhs()),
                    format!("{} = select({mr} > {ml}, {kl}, {kr});", k.lhs()),
                ];
                Self::part("argmax-swapped-index", vec![k, m], stmts, None, Expect::Fails, Expect::Any, false)
            }
        }
    }

    // ---- random expressions

    pub fn literal(&mut self) -> String {
        lit(self.rng.pick(&[-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]))
    }

    pub fn leaf(&mut self, cx: &ExprCx) -> String {
        if self.rng.chance(0.2) {
            return self.literal();
        }
        let side = self.rng.pick(&["l", "r"]);
        match &cx.vector {
            Some(v) if self.rng.chance(0.5) => format!("{side}.{v}[i]"),
            _ => format!("{side}.{}", self.rng.pick(&cx.scalars)),
        }
    }

    pub fn expr(&mut self, cx: &ExprCx, depth: usize) -> String {
        if depth == 0 || self.rng.chance(0.15) {
            return self.leaf(cx);
        }
        let d = depth - 1;
        match self.rng.below(20) {
            0..=5 => {
                let op = self.rng.pick(&["+", "+", "-", "*", "*", "/"]);
                format!("({} {op} {})", self.expr(cx, d), self.expr(cx, d))
            }
            6 => format!("max({}, {})", self.expr(cx, d), self.expr(cx, d)),
            7 => format!("min({}, {})", self.expr(cx, d), self.expr(cx, d)),
            8 => format!("abs({})", self.expr(cx, d)),
            9 => format!("exp({})", self.expr(cx, d)),
            10 => format!("tanh({})", self.expr(cx, d)),
            11 => format!("sigmoid({})", self.expr(cx, d)),
            12 => {
                let dd = d.saturating_sub(1);
                match self.rng.below(3) {
                    0 => format!("log(exp({}) + exp({}))", self.expr(cx, dd), self.expr(cx, dd)),
                    1 => format!("log(1.0 + exp({}))", self.expr(cx, dd)),
                    _ => format!("log(abs({}) + 1.0)", self.expr(cx, dd)),
                }
            }
            13..=15 => format!("select({}, {}, {})", self.cond(cx, d), self.expr(cx, d), self.expr(cx, d)),
            16 => format!("(if {} {{ {} }} else {{ {} }})", self.cond(cx, d), self.expr(cx, d), self.expr(cx, d)),
            _ => {
                let f = self.leaf(cx);
                let g = self.leaf(cx);
                format!("({f} {} {g})", self.rng.pick(&["+", "*"]))
            }
        }
    }

    pub fn cond(&mut self, cx: &ExprCx, depth: usize) -> String {
        let cmp = self.rng.pick(&["<", "<=", ">", ">=", "==", "!="]);
        let c = if !cx.ints.is_empty() && self.rng.chance(0.35) {
            let k = self.rng.pick(&cx.ints);
            let other = self.rng.pick(&[format!("r.{k}"), format!("l.{k}"), "0".to_string(), "1".to_string()]);
            format!("{}.{k} {cmp} {other}", self.rng.pick(&["l", "r"]))
        } else {
            let d = depth.min(1);
            format!("{} {cmp} {}", self.expr(cx, d), self.expr(cx, d))
        };
        if depth > 0 && self.rng.chance(0.15) {
            let op = self.rng.pick(&["&&", "||"]);
            format!("{c} {op} {}", self.cond(cx, 0))
        } else {
            c
        }
    }

    pub fn int_stmt(&mut self, cx: &ExprCx, k: &Field) -> String {
        let (kl, kr) = (k.at("l"), k.at("r"));
        let rhs = match self.rng.below(5) {
            0 => kl,
            1 => kr,
            2 => format!("select({}, {kl}, {kr})", self.cond(cx, 1)),
            3 => format!("if {} {{ {kr} }} else {{ {kl} }}", self.cond(cx, 1)),
            _ => format!("select({}, {kl}, select({}, {kr}, {kl}))", self.cond(cx, 1), self.cond(cx, 1)),
        };
        format!("{} = {rhs};", k.lhs())
    }

    pub fn random_op(&mut self) -> Op {
        let n = 1 + self.rng.below(3);
        let mut fields: Vec<Field> = (0..n).map(|_| self.names.field(Kind::Scalar)).collect();
        if self.rng.chance(0.25) {
            fields.push(self.names.field(Kind::Vector));
        }
        if self.rng.chance(0.3) {
            fields.push(self.names.field(Kind::Int));
        }
        let scalars: Vec<String> = fields.iter().filter(|f| f.kind == Kind::Scalar).map(|f| f.name.clone()).collect();
        let ints: Vec<String> = fields.iter().filter(|f| f.kind == Kind::Int).map(|f| f.name.clone()).collect();
        let mut stmts = Vec::new();
        for f in &fields {
            let cx = ExprCx {
                scalars: scalars.clone(),
                vector: (f.kind == Kind::Vector).then(|| f.name.clone()),
                ints: ints.clone(),
            };
            stmts.push(match f.kind {
                Kind::Int => self.int_stmt(&cx, f),
                _ => {
                    let depth = 1 + self.rng.below(3);
                    format!("{} = {};", f.lhs(), self.expr(&cx, depth))
                }
            });
        }
        let identity = self.rng.chance(0.3).then(|| {
            fields
                .iter()
                .map(|f| match f.kind {
                    Kind::Int => format!("{} = {};", f.lhs(), self.rng.pick(&["0", "1"])),
                    _ => format!("{} = {};", f.lhs(), lit(self.rng.pick(&[0.0, 1.0, -1.0, 0.5]))),
                })
                .collect()
        });
        Op {
            family: "random".into(),
            fields,
            stmts,
            identity,
            assoc: Expect::Any,
            comm: Expect::Any,
            ident: Expect::Any,
            must_verify: false,
        }
    }

    /// An associative operator with one textual mutation (a side swapped, an operator
    /// changed): near misses, associative or not.
    pub fn mutant(&mut self) -> Op {
        let part = self.assoc_part();
        let mut op = Op::from_parts(vec![part], "mutant".into());
        let candidates: Vec<usize> = (0..op.stmts.len()).filter(|&i| !op.stmts[i].starts_with("let ")).collect();
        let s = self.rng.pick(&candidates);
        let text = op.stmts[s].clone();
        let (lhs, rhs) = text.split_once(" = ").unwrap();
        let choices: Vec<(&str, &str)> = vec![("l.", "r."), ("r.", "l."), (" + ", " - "), (" * ", " + "), (" + ", " * "), (">", "<"), ("max", "min")];
        let mut mutated = rhs.to_string();
        for _ in 0..8 {
            let (from, to) = self.rng.pick(&choices);
            let hits: Vec<usize> = rhs.match_indices(from).map(|(i, _)| i).collect();
            if hits.is_empty() {
                continue;
            }
            let at = self.rng.pick(&hits);
            mutated = format!("{}{to}{}", &rhs[..at], &rhs[at + from.len()..]);
            break;
        }
        op.stmts[s] = format!("{lhs} = {mutated}");
        op.assoc = Expect::Any;
        op.comm = Expect::Any;
        op.ident = Expect::Any;
        op.must_verify = false;
        op
    }

    pub fn assoc_part(&mut self) -> Part {
        match self.rng.below(10) {
            0 => self.sum(),
            1 => self.product(),
            2 => self.max_min(),
            3 => self.first_last(),
            4 => self.affine(),
            5 => self.lse(),
            6 => self.argmax(),
            7 => self.shifted_product(),
            8 => self.sandwich(),
            _ => self.transcendental(),
        }
    }

    pub fn non_assoc_part(&mut self) -> Part {
        if self.rng.chance(0.3) {
            self.non_assoc_pair()
        } else {
            self.non_assoc()
        }
    }

    /// One operator, of the class chosen by `class`.
    pub fn op(&mut self, class: Class) -> Op {
        match class {
            Class::Assoc => {
                let n = if self.rng.chance(0.7) { 1 } else { 2 + self.rng.below(2) };
                let parts: Vec<Part> = (0..n).map(|_| self.assoc_part()).collect();
                let family = if n == 1 { parts[0].family.to_string() } else { "compose(assoc)".into() };
                Op::from_parts(parts, family)
            }
            Class::NonAssoc => {
                let mut parts = vec![self.non_assoc_part()];
                if self.rng.chance(0.35) {
                    for _ in 0..1 + self.rng.below(2) {
                        parts.push(self.assoc_part());
                    }
                    let k = self.rng.below(parts.len());
                    parts.swap(0, k);
                    let family = "compose(non-assoc)".to_string();
                    return Op::from_parts(parts, family);
                }
                let family = parts[0].family.to_string();
                Op::from_parts(parts, family)
            }
            Class::Random => {
                if self.rng.chance(0.3) {
                    self.mutant()
                } else {
                    self.random_op()
                }
            }
        }
    }
}

pub struct ExprCx {
    pub scalars: Vec<String>,
    pub vector: Option<String>,
    pub ints: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
pub enum Class {
    Assoc,
    NonAssoc,
    Random,
}
