//! Seeded random aggregators over every construct of the language (every operator and
//! built-in, reductions, guards, `let`s, i32 and f64 values, both readout kinds,
//! `empty(p)`), for the tests that check a backend against the interpreter.

use super::Rng;

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    F32,
    F64,
    I32,
}

#[derive(Clone, Copy, PartialEq)]
enum Body {
    Lift,
    Combine,
    Readout,
}

struct Gen<'r> {
    rng: &'r mut Rng,
    body: Body,
    /// Index variables in scope.
    vars: Vec<String>,
    /// Locals of the current body: (name, type, rank).
    locals: Vec<(String, Ty, bool)>,
    fresh: usize,
    exclusive: bool,
    /// The extent of every vector dimension.
    d: usize,
}

impl Gen<'_> {
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.rng.below(xs.len() as u64) as usize]
    }
    fn chance(&mut self, n: u64) -> bool {
        self.rng.below(n) == 0
    }

    /// An in-range index for a dimension of size D.
    fn index(&mut self) -> String {
        let mut options = vec![format!("{}", self.rng.below(self.d as u64))];
        for v in &self.vars {
            options.push(v.clone());
            options.push(format!("D - 1 - {v}"));
        }
        let k = self.rng.below(options.len() as u64) as usize;
        options.swap_remove(k)
    }

    /// A vector read at an index; guarded forms read outside the range in the untaken
    /// branch's interval only.
    fn vector(&mut self, name: &str) -> String {
        if !self.vars.is_empty() && self.chance(5) {
            let v = self.pick(&self.vars.clone()).clone();
            return format!("(if {v} < D - 1 {{ {name}[{v} + 1] }} else {{ {name}[{v} - (D - 1)] }})");
        }
        let i = self.index();
        format!("{name}[{i}]")
    }

    fn atom(&mut self, ty: Ty) -> String {
        let mut options: Vec<String> = Vec::new();
        match ty {
            Ty::F32 => {
                options.push(self.pick(&["0.5", "2", "1.0", "-3", "0", "inf", "1e-3"]).to_string());
                options.push("q".into());
                options.push(self.vector("p"));
                options.push("rsqrt(D)".into());
                for v in self.vars.clone() {
                    options.push(format!("({v} + 1)"));
                }
                match self.body {
                    Body::Lift | Body::Readout => {
                        options.push("x.y".into());
                        options.push(self.vector("x.x"));
                    }
                    Body::Combine => {}
                }
                match self.body {
                    Body::Combine => {
                        for s in ["l", "r"] {
                            options.push(format!("{s}.a"));
                            options.push(self.vector(&format!("{s}.v")));
                        }
                    }
                    Body::Readout => {
                        options.push("s.a".into());
                        options.push(self.vector("s.v"));
                    }
                    Body::Lift => {}
                }
            }
            Ty::F64 => {
                options.push(self.pick(&["0.25", "2", "-1.5"]).to_string());
                match self.body {
                    Body::Lift | Body::Readout => options.push(self.vector("x.z")),
                    Body::Combine => {}
                }
                match self.body {
                    Body::Combine => {
                        options.push(self.vector("l.w"));
                        options.push(self.vector("r.w"));
                    }
                    Body::Readout => options.push(self.vector("s.w")),
                    Body::Lift => {}
                }
            }
            Ty::I32 => {
                options.push(self.pick(&["1", "-2", "2147483647", "65536", "D"]).to_string());
                for v in self.vars.clone() {
                    options.push(v);
                }
                match self.body {
                    Body::Lift | Body::Readout => options.push("x.n".into()),
                    Body::Combine => {
                        options.push("l.k".into());
                        options.push("r.k".into());
                    }
                }
                if self.body == Body::Readout {
                    options.push("s.k".into());
                }
            }
        }
        for (name, lty, ranked) in self.locals.clone() {
            if lty == ty {
                if ranked {
                    options.push(self.vector(&name));
                } else {
                    options.push(name);
                }
            }
        }
        let k = self.rng.below(options.len() as u64) as usize;
        options.swap_remove(k)
    }

    fn cond(&mut self, depth: u32) -> String {
        let ty = *self.pick(&[Ty::F32, Ty::F32, Ty::F64, Ty::I32]);
        match self.rng.below(if depth == 0 { 2 } else { 6 }) {
            0 => {
                let op = *self.pick(&["<", "<=", ">", ">=", "==", "!="]);
                format!("{} {op} {}", self.expr(ty, depth.saturating_sub(1)), self.expr(ty, depth.saturating_sub(1)))
            }
            1 if !self.vars.is_empty() => {
                let v = self.pick(&self.vars.clone()).clone();
                format!("{v} < {}", self.rng.below(self.d as u64 + 1))
            }
            1 if self.body == Body::Readout && self.exclusive => "empty(s)".into(),
            2 => format!("!({})", self.cond(depth - 1)),
            3 => format!("({}) && ({})", self.cond(depth - 1), self.cond(depth - 1)),
            4 => format!("({}) || ({})", self.cond(depth - 1), self.cond(depth - 1)),
            _ => format!("{} < {}", self.atom(ty), self.atom(ty)),
        }
    }

    fn expr(&mut self, ty: Ty, depth: u32) -> String {
        if depth == 0 || self.chance(4) {
            return self.atom(ty);
        }
        let d = depth - 1;
        let float = ty != Ty::I32;
        match self.rng.below(10) {
            0..=2 => {
                let ops: &[&str] = if float { &["+", "-", "*", "/"] } else { &["+", "-", "*"] };
                let op = *self.pick(ops);
                format!("({} {op} {})", self.expr(ty, d), self.expr(ty, d))
            }
            3 => format!("-({})", self.expr(ty, d)),
            4 if float => {
                let f = *self.pick(&["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "softplus", "abs"]);
                format!("{f}({})", self.expr(ty, d))
            }
            4 => format!("abs({})", self.expr(ty, d)),
            5 => {
                let f = *self.pick(if float { &["min", "max", "pow"][..] } else { &["min", "max"][..] });
                format!("{f}({}, {})", self.expr(ty, d), self.expr(ty, d))
            }
            6 => format!("select({}, {}, {})", self.cond(d), self.expr(ty, d), self.expr(ty, d)),
            7 => format!("(if {} {{ {} }} else {{ {} }})", self.cond(d), self.expr(ty, d), self.expr(ty, d)),
            8 if ty != Ty::I32 => {
                // A reduction over a fresh variable that indexes a vector alone.
                let j = format!("j{}", self.fresh);
                self.fresh += 1;
                let op = *self.pick(&["sum", "prod", "max", "min"]);
                let base = match (ty, self.body) {
                    (Ty::F32, Body::Combine) => format!("{}.v[{j}]", self.pick(&["l", "r"])),
                    (Ty::F32, Body::Readout) => format!("s.v[{j}]"),
                    (Ty::F32, Body::Lift) => format!("x.x[{j}]"),
                    (_, Body::Combine) => format!("{}.w[{j}]", self.pick(&["l", "r"])),
                    (_, Body::Readout) => format!("s.w[{j}]"),
                    (_, Body::Lift) => format!("x.z[{j}]"),
                };
                self.vars.push(j.clone());
                let inner = self.expr(ty, d);
                self.vars.pop();
                format!("({op}({j}) {base} * {inner})")
            }
            _ => self.atom(ty),
        }
    }

    /// `let`s, then the statements assigning `targets` (name, type, rank 1?).
    fn body(&mut self, targets: &[(&str, Ty, bool)]) -> String {
        self.locals.clear();
        self.vars.clear();
        let mut out = String::new();
        for _ in 0..self.rng.below(3) {
            let name = format!("t{}", self.fresh);
            self.fresh += 1;
            let ty = *self.pick(&[Ty::F32, Ty::F32, Ty::F64, Ty::I32]);
            let ranked = self.chance(2);
            if ranked {
                self.vars = vec!["i".into()];
                let e = self.expr(ty, 3);
                out.push_str(&format!("        let {name}[i: D] = {e};\n"));
            } else {
                self.vars.clear();
                let e = self.expr(ty, 3);
                out.push_str(&format!("        let {name} = {e};\n"));
            }
            self.locals.push((name, ty, ranked));
        }
        for &(name, ty, ranked) in targets {
            if ranked {
                self.vars = vec!["i".into()];
                let e = self.expr(ty, 4);
                out.push_str(&format!("        {name}[i] = {e};\n"));
            } else {
                self.vars.clear();
                let e = self.expr(ty, 4);
                out.push_str(&format!("        {name} = {e};\n"));
            }
        }
        out
    }
}

/// The source of random aggregator number `n` with vectors of `d` entries (it may not
/// validate: callers skip those).
pub fn program(rng: &mut Rng, n: usize, d: usize) -> String {
    let exclusive = rng.below(2) == 0;
    let identity = rng.below(2) == 0;
    let mut g = Gen { rng, body: Body::Lift, vars: vec![], locals: vec![], fresh: 0, exclusive, d };
    let element = [("a", Ty::F32, false), ("v", Ty::F32, true), ("w", Ty::F64, true), ("k", Ty::I32, false)];
    let lift = g.body(&element);
    g.body = Body::Combine;
    let combine = g.body(&element);
    g.body = Body::Readout;
    let readout = g.body(&[("o", Ty::F32, true), ("m", Ty::F64, false), ("c", Ty::I32, false)]);
    let identity = if identity { "    identity { a = 1.0; v[i] = 0.0; w[i] = -0.0; k = 0; }\n" } else { "" };
    let kind = if exclusive { "exclusive" } else { "inclusive" };
    format!(
        "aggregator rnd{n}<D = {d}> {{
    param   {{ p[D], q }}
    input   {{ x[D], y, z[D]: f64, n: i32 }}
    element {{ a, v[D], w[D]: f64, k: i32 }}
{identity}    lift(x) {{
{lift}    }}
    combine(l, r) {{
{combine}    }}
    readout {kind}(s, x) -> (o[D], m: f64, c: i32) {{
{readout}    }}
}}
"
    )
}

