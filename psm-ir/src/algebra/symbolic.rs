//! The exact decision procedure: randomized identity testing over GF(2^61 − 1),
//! run through the interpreter's own walk of the bodies ([`Domain`]).
//!
//! Every scalar of the operands and params is an *atom*: a real variable with a random
//! field value `r` and an independent random value `E` standing for `exp(atom)`. A
//! value carries its field value and, when it is one, its linear form over atoms:
//! * `exp` of a linear form with integer coefficients is the product of the atoms' `E`
//!   powers (with `e` itself an independent random value) — exact, since an identity in
//!   independent variables holds under every specialization, including E = exp(r);
//! * `log(x)` is a fresh atom whose `E` is x (keyed by x's value, so equal arguments
//!   share it); `tanh`, `sigmoid` and `softplus` unfold into `exp` and `log`;
//! * `max`, `min`, `abs` and comparisons split into the cases d < 0, d = 0, d > 0 of
//!   the linear form compared, keeping only the cases feasible together with the
//!   choices made so far (decided exactly over the rationals). A tie (d = 0) is
//!   realised by solving for one atom, so the tested point lies in the tie.
//!
//! Each case is a fixed rational function of the atoms on both sides; the law holds
//! in it iff the difference vanishes identically, which a random point detects except
//! with probability deg/p (Schwartz–Zippel). The check fails (`Err`) — never guesses —
//! on anything outside this fragment.

use std::collections::HashMap;
use std::rc::Rc;

use super::exact::feasible::{self, Constraint, Rel};
use super::exact::field::{Fp, SplitMix64};
use super::exact::linform::{Atom, LinForm};
use super::exact::rational::Rational;
use super::{Law, Verdict, VerdictKind};
use crate::interp::{Domain, Evaluator, Fields};
use crate::ir::{Aggregator, BinaryOp, Func, Role, Scalar, UnaryOp};
use crate::valid::Info;

/// Random points tested in every case.
const TRIALS: u32 = 2;
/// Most ordering cases explored before giving up.
const MAX_CASES: usize = 4096;
/// Most domain operations spent on one law (about half a second): a count, not a
/// clock, so that verdicts never depend on the machine's load.
const BUDGET: u64 = 5_000_000;

/// Why the exact procedure reached no verdict, and where to look for a counterexample.
#[derive(Debug, Clone)]
pub(super) struct Hint {
    pub why: String,
    /// A point of the case where the two sides differ, when one was found.
    pub witness: Option<Vec<(Atom, f64)>>,
}

impl Hint {
    fn unsupported(why: impl Into<String>) -> Self {
        Hint { why: why.into(), witness: None }
    }
}

/// A degree bound of a rational function: (numerator, denominator).
type Degree = (u64, u64);

#[derive(Debug, Clone)]
pub(super) enum Sym {
    /// `lin`: the value as a linear form of the atoms, where it is one (shared: values
    /// are cloned at every load).
    Num { f: Fp, lin: Option<Rc<LinForm>>, deg: Degree },
    Bool(bool),
}

impl Sym {
    fn constant(f: Fp, lin: Option<LinForm>) -> Sym {
        Sym::Num { f, lin: lin.map(Rc::new), deg: (0, 0) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Neg,
    Zero,
    Pos,
}

/// One case split: the feasible signs and the one taken on the current path.
#[derive(Debug, Clone)]
struct Branch {
    form: LinForm,
    options: Vec<Sign>,
    taken: usize,
}

impl Branch {
    fn sign(&self) -> Sign {
        self.options[self.taken]
    }
    fn constraint(&self) -> Constraint {
        constraint(&self.form, self.sign())
    }
}

fn constraint(d: &LinForm, sign: Sign) -> Constraint {
    match sign {
        Sign::Neg => Constraint::new(d.clone(), Rel::Lt),
        Sign::Zero => Constraint::new(d.clone(), Rel::Eq),
        Sign::Pos => Constraint::new(d.checked_neg().unwrap_or_else(|| d.clone()), Rel::Lt),
    }
}

#[derive(Debug)]
enum Stop {
    Unsupported(String),
    /// A new tie was chosen: values must be redrawn inside it.
    Restart,
    /// A random value hit a zero denominator: draw again.
    Unlucky,
}

#[derive(Debug, Clone)]
struct AtomValue {
    r: Fp,
    e: Fp,
    e_deg: Degree,
}

/// The symbolic domain for one evaluation of a law along one path of case splits.
struct SymDomain<'p> {
    atoms: Vec<AtomValue>,
    /// Log atoms by the value of their argument.
    logs: HashMap<u64, Atom>,
    e_const: Fp,
    rng: SplitMix64,
    path: &'p mut Vec<Branch>,
    /// Branches of `path` replayed so far in this run.
    pos: usize,
    constraints: Vec<Constraint>,
    /// Atoms solved from the ties on the path: atom = form over free input atoms.
    pivots: Vec<(Atom, LinForm)>,
    /// A non-finite constant was met: outside the fragment.
    poison: Option<String>,
    /// Operations performed, charged against [`BUDGET`].
    ops: u64,
}

fn sat_add(a: u64, b: u64) -> u64 {
    a.saturating_add(b)
}

impl<'p> SymDomain<'p> {
    /// Draws a fresh point for `inputs` atoms satisfying the ties on `path`.
    fn new(path: &'p mut Vec<Branch>, inputs: usize, seed: u64) -> Result<Self, Stop> {
        let mut rng = SplitMix64::new(seed);
        let mut atoms: Vec<AtomValue> =
            (0..inputs).map(|_| AtomValue { r: rng.next_fp(), e: rng.next_fp(), e_deg: (1, 0) }).collect();
        let e_const = rng.next_fp();
        let pivots = solve_ties(path, inputs)?;
        for (atom, form) in &pivots {
            let r = form.eval_fp(|a| atoms[a as usize].r).ok_or_else(|| Stop::Unsupported("a tie with huge coefficients".into()))?;
            let (e, e_deg) = exp_value(form, &atoms, e_const)?;
            atoms[*atom as usize] = AtomValue { r, e, e_deg };
        }
        Ok(SymDomain {
            atoms,
            logs: HashMap::new(),
            e_const,
            rng,
            path,
            pos: 0,
            constraints: Vec::new(),
            pivots,
            poison: None,
            ops: 0,
        })
    }

    fn atom(&self, a: Atom) -> Sym {
        Sym::Num { f: self.atoms[a as usize].r, lin: Some(Rc::new(LinForm::atom(a))), deg: (1, 0) }
    }

    /// The sign of `d` on this path: replayed, forced by the constraints, or a new
    /// case split (first feasible option; the others are explored by backtracking).
    fn branch(&mut self, d: &LinForm) -> Result<Sign, Stop> {
        if let Some(c) = d.is_constant() {
            return Ok(match c.signum() {
                -1 => Sign::Neg,
                0 => Sign::Zero,
                _ => Sign::Pos,
            });
        }
        let sign = if self.pos < self.path.len() {
            self.path[self.pos].sign()
        } else {
            let [lt, eq, gt] = feasible::sign_options(&self.constraints, d)
                .map_err(|_| Stop::Unsupported("too many ordering constraints".into()))?;
            let options: Vec<Sign> =
                [(lt, Sign::Neg), (eq, Sign::Zero), (gt, Sign::Pos)].into_iter().filter(|(ok, _)| *ok).map(|(_, s)| s).collect();
            if options.is_empty() {
                return Err(Stop::Unsupported("an infeasible case was reached".into()));
            }
            let sign = options[0];
            self.path.push(Branch { form: d.clone(), options, taken: 0 });
            // A new tie not implied by the ties already solved moves the point: redraw.
            if sign == Sign::Zero && !self.implied_zero(d) {
                return Err(Stop::Restart);
            }
            sign
        };
        self.pos += 1;
        self.constraints.push(constraint(d, sign));
        Ok(sign)
    }

    fn implied_zero(&self, d: &LinForm) -> bool {
        let mut form = d.clone();
        for (atom, by) in &self.pivots {
            match form.substitute(*atom, by) {
                Some(f) => form = f,
                None => return false,
            }
        }
        form.is_zero()
    }

    fn compare(&mut self, a: &Sym, b: &Sym) -> Result<Sign, Stop> {
        match (a, b) {
            (Sym::Num { lin: Some(x), .. }, Sym::Num { lin: Some(y), .. }) => {
                let d = x.checked_sub(y).ok_or_else(|| Stop::Unsupported("coefficients overflow".into()))?;
                self.branch(&d)
            }
            _ => Err(Stop::Unsupported("a comparison of values that are not linear in the operands".into())),
        }
    }

    fn exp(&mut self, a: &Sym) -> Result<Sym, Stop> {
        let Sym::Num { lin: Some(form), .. } = a else {
            return Err(Stop::Unsupported("`exp` of a value that is not linear in the operands".into()));
        };
        let (f, deg) = exp_value(form, &self.atoms, self.e_const)?;
        Ok(Sym::Num { f, lin: None, deg })
    }

    fn log(&mut self, a: &Sym) -> Result<Sym, Stop> {
        let Sym::Num { f, deg, .. } = a else { unreachable!("validated: log of a number") };
        if f.is_zero() {
            return Err(Stop::Unlucky);
        }
        let atom = match self.logs.get(&f.value()) {
            Some(&atom) => atom,
            None => {
                let atom = self.atoms.len() as Atom;
                self.atoms.push(AtomValue { r: self.rng.next_fp(), e: *f, e_deg: *deg });
                self.logs.insert(f.value(), atom);
                atom
            }
        };
        Ok(self.atom(atom))
    }

    fn arith(&mut self, op: BinaryOp, a: &Sym, b: &Sym) -> Result<Sym, Stop> {
        let (Sym::Num { f: fa, lin: la, deg: da }, Sym::Num { f: fb, lin: lb, deg: db }) = (a, b) else {
            unreachable!("validated: arithmetic on numbers")
        };
        let lin_const = |l: &Option<Rc<LinForm>>| l.as_deref().and_then(LinForm::is_constant);
        Ok(match op {
            BinaryOp::Add | BinaryOp::Sub => {
                let lin = match (la, lb) {
                    (Some(x), Some(y)) if op == BinaryOp::Add => x.checked_add(y),
                    (Some(x), Some(y)) => x.checked_sub(y),
                    _ => None,
                };
                let f = if op == BinaryOp::Add { *fa + *fb } else { *fa - *fb };
                let deg = (sat_add(da.0, db.1).max(sat_add(db.0, da.1)), sat_add(da.1, db.1));
                Sym::Num { f, lin: lin.map(Rc::new), deg }
            }
            BinaryOp::Mul => {
                let lin = match (lin_const(la), lin_const(lb), la, lb) {
                    (Some(c), _, _, Some(y)) => y.checked_scale(c),
                    (_, Some(c), Some(x), _) => x.checked_scale(c),
                    _ => None,
                };
                Sym::Num { f: *fa * *fb, lin: lin.map(Rc::new), deg: (sat_add(da.0, db.0), sat_add(da.1, db.1)) }
            }
            _ => {
                let inv = fb.inv().ok_or(Stop::Unlucky)?;
                let lin = match (lin_const(lb), la) {
                    (Some(c), Some(x)) if !c.is_zero() => c.checked_recip().and_then(|k| x.checked_scale(k)),
                    _ => None,
                };
                Sym::Num { f: *fa * inv, lin: lin.map(Rc::new), deg: (sat_add(da.0, db.1), sat_add(da.1, db.0)) }
            }
        })
    }

    fn num(&mut self, c: f64) -> Sym {
        match Rational::from_f64(c).and_then(|r| Some((Fp::from_rational(&r)?, r))) {
            Some((f, r)) => Sym::constant(f, Some(LinForm::constant(r))),
            None => {
                self.poison.get_or_insert_with(|| format!("the constant {c}"));
                Sym::constant(Fp::zero(), Some(LinForm::zero()))
            }
        }
    }
}

/// exp of a linear form with integer coefficients: Π E_atom^c · e^c0.
fn exp_value(form: &LinForm, atoms: &[AtomValue], e_const: Fp) -> Result<(Fp, Degree), Stop> {
    if !form.has_only_integer_coeffs() {
        return Err(Stop::Unsupported("`exp` of a linear form with fractional coefficients".into()));
    }
    let too_big = || Stop::Unsupported("`exp` with huge coefficients".into());
    let mut f = Fp::one();
    let mut deg: Degree = (0, 0);
    let factors = form.terms().map(|(a, c)| (atoms[a as usize].e, atoms[a as usize].e_deg, c)).chain(std::iter::once((
        e_const,
        (1, 0),
        form.constant_term(),
    )));
    for (e, e_deg, c) in factors {
        let k = i64::try_from(c.num()).map_err(|_| too_big())?;
        if k == 0 {
            continue;
        }
        f = f * e.powi(k).ok_or(Stop::Unlucky)?;
        let m = k.unsigned_abs();
        let (num, den) = if k > 0 { e_deg } else { (e_deg.1, e_deg.0) };
        deg = (sat_add(deg.0, num.saturating_mul(m)), sat_add(deg.1, den.saturating_mul(m)));
    }
    Ok((f, deg))
}

/// Solves the ties (`d = 0` choices) of a path for some input atoms, each as a form
/// over the free input atoms with integer coefficients.
fn solve_ties(path: &[Branch], inputs: usize) -> Result<Vec<(Atom, LinForm)>, Stop> {
    let unsupported = |why: &str| Stop::Unsupported(why.to_string());
    let mut pivots: Vec<(Atom, LinForm)> = Vec::new();
    for b in path.iter().filter(|b| b.sign() == Sign::Zero) {
        let mut form = b.form.clone();
        for (atom, by) in &pivots {
            form = form.substitute(*atom, by).ok_or_else(|| unsupported("a tie with huge coefficients"))?;
        }
        if form.is_constant().is_some() {
            continue;
        }
        if form.atoms().any(|a| a as usize >= inputs) {
            return Err(unsupported("a tie between values that involve `log`"));
        }
        // Prefer a unit coefficient, so the solved form keeps integer coefficients.
        let (atom, c) = form
            .terms()
            .find(|(_, c)| c.num().abs() == 1 && c.den() == 1)
            .or_else(|| form.terms().next())
            .expect("not constant");
        let rest = form.checked_sub(&LinForm::term(atom, c)).ok_or_else(|| unsupported("overflow"))?;
        let solved = c
            .checked_neg()
            .and_then(Rational::checked_recip)
            .and_then(|k| rest.checked_scale(k))
            .ok_or_else(|| unsupported("overflow"))?;
        if !solved.has_only_integer_coeffs() {
            return Err(unsupported("a tie with fractional coefficients"));
        }
        for (_, by) in &mut pivots {
            *by = by.substitute(atom, &solved).ok_or_else(|| unsupported("overflow"))?;
        }
        pivots.push((atom, solved));
    }
    Ok(pivots)
}

impl Domain for SymDomain<'_> {
    type V = Sym;
    type Error = Stop;

    fn constant(&mut self, value: f64, ty: Scalar) -> Sym {
        if ty == Scalar::Bool {
            Sym::Bool(value != 0.0)
        } else {
            self.num(value)
        }
    }

    fn unary(&mut self, op: UnaryOp, _ty: Scalar, a: &Sym) -> Result<Sym, Stop> {
        self.ops += 1;
        Ok(match (op, a) {
            (UnaryOp::Not, Sym::Bool(b)) => Sym::Bool(!b),
            (UnaryOp::Neg, Sym::Num { f, lin, deg }) => {
                Sym::Num { f: -*f, lin: lin.as_deref().and_then(LinForm::checked_neg).map(Rc::new), deg: *deg }
            }
            _ => unreachable!("validated unary operand"),
        })
    }

    fn binary(&mut self, op: BinaryOp, _ty: Scalar, a: &Sym, b: &Sym) -> Result<Sym, Stop> {
        self.ops += 1;
        if op.is_logic() {
            let (Sym::Bool(x), Sym::Bool(y)) = (a, b) else { unreachable!("validated logic operands") };
            return Ok(Sym::Bool(if op == BinaryOp::And { *x && *y } else { *x || *y }));
        }
        if op.is_comparison() {
            let s = self.compare(a, b)?;
            return Ok(Sym::Bool(match op {
                BinaryOp::Lt => s == Sign::Neg,
                BinaryOp::Le => s != Sign::Pos,
                BinaryOp::Gt => s == Sign::Pos,
                BinaryOp::Ge => s != Sign::Neg,
                BinaryOp::Eq => s == Sign::Zero,
                _ => s != Sign::Zero,
            }));
        }
        self.arith(op, a, b)
    }

    fn call(&mut self, func: Func, _ty: Scalar, args: &[Sym]) -> Result<Sym, Stop> {
        self.ops += 1;
        let one = Sym::constant(Fp::one(), Some(LinForm::constant(Rational::int(1))));
        Ok(match func {
            Func::Exp => self.exp(&args[0])?,
            Func::Log => self.log(&args[0])?,
            // Ties return the first operand, as the interpreter's NaN-propagating max/min do.
            Func::Max => match self.compare(&args[1], &args[0])? {
                Sign::Pos => args[1].clone(),
                _ => args[0].clone(),
            },
            Func::Min => match self.compare(&args[1], &args[0])? {
                Sign::Neg => args[1].clone(),
                _ => args[0].clone(),
            },
            Func::Abs => {
                let zero = self.num(0.0);
                match self.compare(&args[0], &zero)? {
                    Sign::Neg => self.unary(UnaryOp::Neg, Scalar::F64, &args[0])?,
                    _ => args[0].clone(),
                }
            }
            Func::Sigmoid => {
                let neg = self.unary(UnaryOp::Neg, Scalar::F64, &args[0])?;
                let e = self.exp(&neg)?;
                let den = self.arith(BinaryOp::Add, &one, &e)?;
                self.arith(BinaryOp::Div, &one, &den)?
            }
            Func::Tanh => {
                let two = self.num(2.0);
                let x2 = self.arith(BinaryOp::Mul, &two, &args[0])?;
                let e = self.exp(&x2)?;
                let num = self.arith(BinaryOp::Sub, &e, &one)?;
                let den = self.arith(BinaryOp::Add, &e, &one)?;
                self.arith(BinaryOp::Div, &num, &den)?
            }
            Func::Softplus => {
                let e = self.exp(&args[0])?;
                let s = self.arith(BinaryOp::Add, &one, &e)?;
                self.log(&s)?
            }
            Func::Pow => match &args[1] {
                Sym::Num { lin: Some(l), .. } if l.is_constant().is_some_and(|c| c.is_integer() && c.num().abs() <= 64) => {
                    let k = l.is_constant().map_or(0, |c| c.num()) as i64;
                    let mut acc = one.clone();
                    for _ in 0..k.unsigned_abs() {
                        acc = self.arith(BinaryOp::Mul, &acc, &args[0])?;
                    }
                    if k < 0 {
                        self.arith(BinaryOp::Div, &one, &acc)?
                    } else {
                        acc
                    }
                }
                _ => return Err(Stop::Unsupported("`pow` with an exponent that is not a small integer".into())),
            },
            Func::Sqrt | Func::Rsqrt => return Err(Stop::Unsupported(format!("`{}`", func.name()))),
        })
    }

    fn truth(&mut self, cond: &Sym) -> Result<bool, Stop> {
        match cond {
            Sym::Bool(b) => Ok(*b),
            Sym::Num { .. } => unreachable!("validated: conditions are bools"),
        }
    }
}

/// The pairs of sides a law equates, each as (left name, right name, left, right).
pub(super) type Sides<V> = Vec<(String, String, Fields<V>, Fields<V>)>;

/// Evaluates both sides of a law in any domain. `operands` are the law's variables
/// (a, b, c; a, b; or x), already made.
pub(super) fn sides<D: Domain>(
    eval: &Evaluator,
    d: &mut D,
    law: Law,
    params: &[Vec<D::V>],
    operands: &[Fields<D::V>],
) -> Result<Sides<D::V>, D::Error> {
    Ok(match law {
        Law::Associative => {
            let (a, b, c) = (&operands[0], &operands[1], &operands[2]);
            let ab = eval.combine(d, params, a, b)?;
            let lhs = eval.combine(d, params, &ab, c)?;
            let bc = eval.combine(d, params, b, c)?;
            let rhs = eval.combine(d, params, a, &bc)?;
            vec![("(a•b)•c".into(), "a•(b•c)".into(), lhs, rhs)]
        }
        Law::Commutative => {
            let (a, b) = (&operands[0], &operands[1]);
            let lhs = eval.combine(d, params, a, b)?;
            let rhs = eval.combine(d, params, b, a)?;
            vec![("a•b".into(), "b•a".into(), lhs, rhs)]
        }
        Law::Identity => {
            let x = &operands[0];
            let e = match eval.identity(d, params) {
                Some(e) => e?,
                None => return Ok(Vec::new()),
            };
            let left = eval.combine(d, params, &e, x)?;
            let right = eval.combine(d, params, x, &e)?;
            vec![("e•x".into(), "x".into(), left, x.clone()), ("x•e".into(), "x".into(), right, x.clone())]
        }
    })
}

/// How many operands a law quantifies over.
pub(super) fn arity(law: Law) -> usize {
    match law {
        Law::Associative => 3,
        Law::Commutative => 2,
        Law::Identity => 1,
    }
}

/// The exact check of one law: `Ok` with a verified verdict, or `Err` with why not.
pub(super) fn check(agg: &Aggregator, info: &Info, law: Law) -> Result<Verdict, Hint> {
    let eval = Evaluator::new(agg, info);
    let mut spent = 0u64;
    let element_sizes: Vec<usize> = eval.fields(Role::Element).iter().map(|&t| info.len(t)).collect();
    let param_sizes: Vec<usize> = eval.fields(Role::Param).iter().map(|&t| info.len(t)).collect();
    let per_operand: usize = element_sizes.iter().sum();
    let inputs = per_operand * arity(law) + param_sizes.iter().sum::<usize>();

    let mut path: Vec<Branch> = Vec::new();
    let mut cases = 0usize;
    let mut max_degree = 0u64;
    let mut entries = 0usize;
    let mut max_logs = 0usize;
    loop {
        if spent > BUDGET {
            return Err(Hint::unsupported(format!("the case analysis needs more than {BUDGET} operations")));
        }
        // One case: its first trial may extend the path; restarts redraw inside new ties.
        let mut trial = 0u32;
        let mut unlucky = 0u32;
        while trial < TRIALS {
            let seed = 0x5eed_0000_u64 ^ ((cases as u64) << 20) ^ ((trial as u64) << 8) ^ unlucky as u64;
            let known = path.len();
            let outcome = run_case(&eval, law, &mut path, inputs, per_operand, &element_sizes, &param_sizes, seed, &mut spent);
            match outcome {
                Ok(CaseResult::Equal { degree, compared, logs }) => {
                    max_degree = max_degree.max(degree);
                    entries = entries.max(compared);
                    max_logs = max_logs.max(logs);
                    trial += 1;
                }
                Ok(CaseResult::Differ) => {
                    let constraints: Vec<Constraint> = path.iter().map(Branch::constraint).collect();
                    // Only a case split makes a witness worth more than a random point.
                    let witness = feasible::witness(&constraints)
                        .map(|w| w.into_iter().filter(|(a, _)| (*a as usize) < inputs).map(|(a, r)| (a, r.to_f64())).collect::<Vec<_>>())
                        .filter(|w| !w.is_empty());
                    let why = if path.is_empty() {
                        "the two sides differ as rational functions".to_string()
                    } else {
                        format!("the two sides differ in one of the ordering cases ({} case splits)", path.len())
                    };
                    return Err(Hint { why, witness });
                }
                Err(Stop::Unsupported(why)) => return Err(Hint::unsupported(why)),
                Err(Stop::Restart) => {
                    if trial > 0 || path.len() <= known {
                        return Err(Hint::unsupported("the case analysis did not settle"));
                    }
                }
                Err(Stop::Unlucky) => {
                    unlucky += 1;
                    if unlucky > 8 {
                        return Err(Hint::unsupported("a division by an expression that vanishes"));
                    }
                }
            }
        }
        cases += 1;
        if cases > MAX_CASES {
            return Err(Hint::unsupported(format!("more than {MAX_CASES} ordering cases")));
        }
        // Backtrack to the last split with an option left.
        loop {
            match path.last_mut() {
                None => return Ok(verified(cases, max_degree, entries, max_logs)),
                Some(b) if b.taken + 1 < b.options.len() => {
                    b.taken += 1;
                    break;
                }
                Some(_) => {
                    path.pop();
                }
            }
        }
    }
}

enum CaseResult {
    Equal { degree: u64, compared: usize, logs: usize },
    Differ,
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    eval: &Evaluator,
    law: Law,
    path: &mut Vec<Branch>,
    inputs: usize,
    per_operand: usize,
    element_sizes: &[usize],
    param_sizes: &[usize],
    seed: u64,
    spent: &mut u64,
) -> Result<CaseResult, Stop> {
    let mut d = SymDomain::new(path, inputs, seed)?;
    let result = evaluate_case(eval, law, &mut d, per_operand, element_sizes, param_sizes);
    *spent += d.ops;
    result
}

fn evaluate_case(
    eval: &Evaluator,
    law: Law,
    d: &mut SymDomain,
    per_operand: usize,
    element_sizes: &[usize],
    param_sizes: &[usize],
) -> Result<CaseResult, Stop> {
    let mut next: Atom = 0;
    let mut fresh = |d: &SymDomain, sizes: &[usize]| -> Fields<Sym> {
        sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        next += 1;
                        d.atom(next - 1)
                    })
                    .collect()
            })
            .collect()
    };
    let operands: Vec<Fields<Sym>> = (0..arity(law)).map(|_| fresh(d, element_sizes)).collect();
    let params = fresh(d, param_sizes);
    debug_assert_eq!(next as usize, per_operand * arity(law) + param_sizes.iter().sum::<usize>());
    let pairs = sides(eval, d, law, &params, &operands)?;
    if let Some(why) = d.poison.take() {
        return Err(Stop::Unsupported(why));
    }
    let mut degree = 0u64;
    let mut compared = 0usize;
    for (_, _, lhs, rhs) in &pairs {
        for (x, y) in lhs.iter().flatten().zip(rhs.iter().flatten()) {
            let (Sym::Num { f: fx, deg: dx, .. }, Sym::Num { f: fy, deg: dy, .. }) = (x, y) else {
                return Err(Stop::Unsupported("a boolean element".into()));
            };
            compared += 1;
            degree = degree.max(sat_add(dx.0, dy.1).max(sat_add(dy.0, dx.1)));
            if fx != fy {
                return Ok(CaseResult::Differ);
            }
        }
    }
    if d.pos != d.path.len() {
        // The path recorded splits this run never reached: cannot happen for a
        // deterministic walk; refuse rather than trust it.
        return Err(Stop::Unsupported("the case analysis was not deterministic".into()));
    }
    Ok(CaseResult::Equal { degree, compared, logs: d.logs.len() })
}

/// The verdict and its stated error bound: each case's difference is a nonzero
/// rational function of degree ≤ D with probability of vanishing at a random point
/// ≤ D/p, independently over the trials; log atoms merge two arguments only when
/// their values collide (≤ D/p per pair).
fn verified(cases: usize, degree: u64, entries: usize, logs: usize) -> Verdict {
    let p = (1u64 << 61) as f64 - 1.0;
    let d = degree.max(1) as f64;
    let per = (d / p).powi(TRIALS as i32);
    let collisions = (logs * logs) as f64 * d / p * TRIALS as f64;
    let bound = cases as f64 * (entries.max(1) as f64 * per + collisions);
    let bits = (-bound.log2()).floor().max(0.0) as u64;
    let cases_text = if cases > 1 { format!(" in each of {cases} ordering cases") } else { String::new() };
    Verdict {
        kind: VerdictKind::Verified,
        method: format!(
            "identity testing over GF(2^61-1) at {TRIALS} random points{cases_text} (degree ≤ {degree}); error probability ≤ 2^-{bits}"
        ),
        counterexample: None,
    }
}
