//! Satisfiability of conjunctions of linear constraints over real-valued atoms.
//!
//! Case splits on max/min/comparisons are only worth exploring when the branch
//! condition can hold together with the path so far; this module decides that exactly
//! over the rationals (which agree with the reals for linear systems): equalities are
//! eliminated by Gaussian substitution, then inequalities by Fourier–Motzkin with
//! strictness tracking. When the problem grows past a bound or a coefficient overflows
//! the answer is [`Feasibility::TooLarge`], never a guess.

use std::collections::BTreeMap;
use std::fmt;

use super::linform::{Atom, LinForm};
use super::rational::Rational;

/// The most constraints (inputs, or live inequalities during elimination) before
/// giving up with `TooLarge`: Fourier–Motzkin can grow quadratically per atom.
pub const MAX_CONSTRAINTS: usize = 4000;

/// The relation of a constraint's form to zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Rel {
    /// `form < 0`
    Lt,
    /// `form <= 0`
    Le,
    /// `form = 0`
    Eq,
}

/// The constraint `form rel 0`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Constraint {
    pub form: LinForm,
    pub rel: Rel,
}

impl Constraint {
    /// `form rel 0`.
    pub fn new(form: LinForm, rel: Rel) -> Constraint {
        Constraint { form, rel }
    }

    /// `lhs rel rhs`, stored as `lhs - rhs rel 0`; `None` on overflow.
    pub fn compare(lhs: &LinForm, rel: Rel, rhs: &LinForm) -> Option<Constraint> {
        Some(Constraint {
            form: lhs.checked_sub(rhs)?,
            rel,
        })
    }

    /// Whether the constraint holds exactly at `point` (absent atoms are 0); `None`
    /// on overflow.
    pub fn holds_at(&self, point: &BTreeMap<Atom, Rational>) -> Option<bool> {
        let v = self
            .form
            .eval_rational(|a| point.get(&a).copied().unwrap_or(Rational::ZERO))?;
        Some(match self.rel {
            Rel::Lt => v.signum() < 0,
            Rel::Le => v.signum() <= 0,
            Rel::Eq => v.is_zero(),
        })
    }
}

/// The verdict of [`feasible`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Feasibility {
    /// Some rational point satisfies every constraint.
    Feasible,
    /// No real point satisfies them all.
    Infeasible,
    /// Undecided: the system grew past [`MAX_CONSTRAINTS`] or a coefficient overflowed.
    TooLarge,
}

/// The error of [`sign_options`]: some branch could not be decided.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TooLarge;

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("linear constraint system too large to decide exactly")
    }
}

impl std::error::Error for TooLarge {}

fn ov<T>(x: Option<T>) -> Result<T, TooLarge> {
    x.ok_or(TooLarge)
}

/// One elimination, recorded so that a witness can be rebuilt backwards.
enum Step {
    /// `atom = value` (from an equality).
    Solved { atom: Atom, value: LinForm },
    /// `max(lower) (<|<=) atom (<|<=) min(upper)`; the flag marks a strict bound.
    Bounded {
        atom: Atom,
        lower: Vec<(LinForm, bool)>,
        upper: Vec<(LinForm, bool)>,
    },
}

/// Inequalities `form (<|<=) 0`, each scaled so its atom coefficients are coprime
/// integers and keyed by that term part: duplicates and constraints dominated by a
/// tighter one with the same terms collapse into one entry.
#[derive(Default)]
struct IneqSet {
    map: BTreeMap<Vec<(Atom, Rational)>, (LinForm, bool)>,
}

/// The positive factor `lcm(dens) / gcd(nums)` that makes the atom coefficients of
/// `form` coprime integers (`form` must have at least one atom).
fn primitive_scale(form: &LinForm) -> Option<Rational> {
    let mut lcm: i128 = 1;
    let mut gcd: i128 = 0;
    for (_, c) in form.terms() {
        let d = c.den();
        lcm = (lcm / gcd_i(lcm, d)).checked_mul(d)?;
        gcd = gcd_i(gcd, c.num().checked_abs()?);
    }
    Rational::new(lcm, gcd)
}

fn gcd_i(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a.abs()
}

impl IneqSet {
    /// Adds `form (<|<=) 0`; `Ok(false)` when it is a false constant constraint.
    fn insert(&mut self, form: &LinForm, strict: bool) -> Result<bool, TooLarge> {
        if let Some(c) = form.is_constant() {
            return Ok(if strict {
                c.signum() < 0
            } else {
                c.signum() <= 0
            });
        }
        let f = ov(form.checked_scale(ov(primitive_scale(form))?))?;
        let key: Vec<(Atom, Rational)> = f.terms().collect();
        match self.map.entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((f, strict));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                // t + c (<|<=) 0 is tighter for larger c, and strict beats non-strict.
                let (old, old_strict) = o.get();
                let (c, c0) = (f.constant_term(), old.constant_term());
                if c > c0 || (c == c0 && strict && !*old_strict) {
                    o.insert((f, strict));
                }
            }
        }
        if self.map.len() > MAX_CONSTRAINTS {
            return Err(TooLarge);
        }
        Ok(true)
    }

    /// The atom whose elimination adds the fewest constraints (`pos·neg - pos - neg`),
    /// smallest id on ties; `None` when no inequality is left.
    fn choose_atom(&self) -> Option<Atom> {
        let mut counts: BTreeMap<Atom, (usize, usize)> = BTreeMap::new();
        for (f, _) in self.map.values() {
            for (a, c) in f.terms() {
                let e = counts.entry(a).or_insert((0, 0));
                if c.signum() > 0 {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
        counts
            .into_iter()
            .min_by_key(|&(a, (p, n))| ((p * n) as i128 - (p + n) as i128, a))
            .map(|(a, _)| a)
    }
}

/// The solved form of `form = 0` for `x` (coefficient `cx != 0`): `x = -(form - cx·x)/cx`.
fn solve_for(form: &LinForm, x: Atom, cx: Rational) -> Option<LinForm> {
    let rest = form.checked_sub(&LinForm::term(x, cx))?;
    rest.checked_scale(cx.checked_recip()?.checked_neg()?)
}

/// Runs the elimination. `Ok(None)`: infeasible; `Ok(Some(trace))`: feasible, with the
/// elimination steps when `record` is set.
fn solve(constraints: &[Constraint], record: bool) -> Result<Option<Vec<Step>>, TooLarge> {
    if constraints.len() > MAX_CONSTRAINTS {
        return Err(TooLarge);
    }
    let mut trace = Vec::new();
    let mut eqs: Vec<LinForm> = Vec::new();
    let mut ineqs: Vec<(LinForm, bool)> = Vec::new();
    for c in constraints {
        match c.rel {
            Rel::Eq => eqs.push(c.form.clone()),
            Rel::Lt => ineqs.push((c.form.clone(), true)),
            Rel::Le => ineqs.push((c.form.clone(), false)),
        }
    }

    // Gaussian substitution: each equality removes one atom everywhere.
    while let Some(e) = eqs.pop() {
        if let Some(c) = e.is_constant() {
            if c.is_zero() {
                continue;
            }
            return Ok(None);
        }
        // Prefer a unit coefficient: it keeps the substituted coefficients small.
        let (x, cx) = e
            .terms()
            .find(|(_, c)| c.is_integer() && c.num().unsigned_abs() == 1)
            .or_else(|| e.terms().next())
            .ok_or(TooLarge)?;
        let value = ov(solve_for(&e, x, cx))?;
        for f in eqs.iter_mut() {
            *f = ov(f.substitute(x, &value))?;
        }
        for (f, _) in ineqs.iter_mut() {
            *f = ov(f.substitute(x, &value))?;
        }
        if record {
            trace.push(Step::Solved { atom: x, value });
        }
    }

    // Fourier–Motzkin on the inequalities.
    let mut set = IneqSet::default();
    for (f, strict) in &ineqs {
        if !set.insert(f, *strict)? {
            return Ok(None);
        }
    }
    while let Some(x) = set.choose_atom() {
        let mut rest = IneqSet::default();
        let mut pos: Vec<(LinForm, bool)> = Vec::new();
        let mut neg: Vec<(LinForm, bool)> = Vec::new();
        for (f, strict) in set.map.into_values() {
            match f.coeff(x).signum() {
                0 => {
                    // Already normalized and non-constant: re-inserting cannot fail.
                    rest.map.insert(f.terms().collect(), (f, strict));
                }
                s if s > 0 => pos.push((f, strict)),
                _ => neg.push((f, strict)),
            }
        }
        let total = pos
            .len()
            .saturating_mul(neg.len())
            .saturating_add(rest.map.len());
        if total > MAX_CONSTRAINTS {
            return Err(TooLarge);
        }
        for (p, ps) in &pos {
            let a = p.coeff(x);
            for (n, ns) in &neg {
                let b = n.coeff(x);
                // (-b)·p + a·n cancels x exactly; strict if either side is.
                let comb = ov(ov(p.checked_scale(ov(b.checked_neg())?))?
                    .checked_add(&ov(n.checked_scale(a))?))?;
                if !rest.insert(&comb, *ps || *ns)? {
                    return Ok(None);
                }
            }
        }
        if record {
            // c·x + r (<|<=) 0 bounds x by -r/c: above when c > 0, below when c < 0.
            let bound = |(f, s): &(LinForm, bool)| -> Result<(LinForm, bool), TooLarge> {
                Ok((ov(solve_for(f, x, f.coeff(x)))?, *s))
            };
            let upper = pos.iter().map(bound).collect::<Result<Vec<_>, _>>()?;
            let lower = neg.iter().map(bound).collect::<Result<Vec<_>, _>>()?;
            trace.push(Step::Bounded {
                atom: x,
                lower,
                upper,
            });
        }
        set = rest;
    }
    Ok(Some(trace))
}

/// Decides whether all `constraints` hold at some real point.
pub fn feasible(constraints: &[Constraint]) -> Feasibility {
    match solve(constraints, false) {
        Ok(Some(_)) => Feasibility::Feasible,
        Ok(None) => Feasibility::Infeasible,
        Err(TooLarge) => Feasibility::TooLarge,
    }
}

/// Which of `d < 0`, `d = 0`, `d > 0` can each hold together with `constraints`, so
/// that a comparison only branches into satisfiable cases.
pub fn sign_options(constraints: &[Constraint], d: &LinForm) -> Result<[bool; 3], TooLarge> {
    let cases = [
        Constraint::new(d.clone(), Rel::Lt),
        Constraint::new(d.clone(), Rel::Eq),
        Constraint::new(ov(d.checked_neg())?, Rel::Lt),
    ];
    let mut system = constraints.to_vec();
    let mut out = [false; 3];
    for (slot, case) in out.iter_mut().zip(cases) {
        system.push(case);
        *slot = match feasible(&system) {
            Feasibility::Feasible => true,
            Feasibility::Infeasible => false,
            Feasibility::TooLarge => return Err(TooLarge),
        };
        system.pop();
    }
    Ok(out)
}

/// The tightest of `bounds` evaluated at `point`: the largest (`lower`) or smallest
/// value, strict if any bound attaining it is strict. `Ok(None)` when there are none.
fn tightest(
    bounds: &[(LinForm, bool)],
    point: &BTreeMap<Atom, Rational>,
    lower: bool,
) -> Option<Option<(Rational, bool)>> {
    let mut best: Option<(Rational, bool)> = None;
    for (f, strict) in bounds {
        let v = f.eval_rational(|a| point.get(&a).copied().unwrap_or(Rational::ZERO))?;
        best = Some(match best {
            None => (v, *strict),
            Some((b, bs)) if v == b => (b, bs || *strict),
            Some((b, bs)) => {
                if (v > b) == lower {
                    (v, *strict)
                } else {
                    (b, bs)
                }
            }
        });
    }
    Some(best)
}

/// A rational point satisfying all `constraints` (every atom they mention is
/// assigned); `None` when infeasible, too large, or the point's arithmetic overflows.
/// The point is re-checked against the constraints before it is returned, since it
/// is used to build concrete counterexamples.
pub fn witness(constraints: &[Constraint]) -> Option<BTreeMap<Atom, Rational>> {
    let trace = solve(constraints, true).ok()??;
    let mut point: BTreeMap<Atom, Rational> = BTreeMap::new();
    for step in trace.iter().rev() {
        let (atom, value) = match step {
            Step::Solved { atom, value } => {
                let v =
                    value.eval_rational(|a| point.get(&a).copied().unwrap_or(Rational::ZERO))?;
                (*atom, v)
            }
            Step::Bounded { atom, lower, upper } => {
                let lo = tightest(lower, &point, true)?;
                let hi = tightest(upper, &point, false)?;
                let v = match (lo, hi) {
                    (None, None) => Rational::ZERO,
                    (Some((l, s)), None) => {
                        if s {
                            l.checked_add(Rational::ONE)?
                        } else {
                            l
                        }
                    }
                    (None, Some((h, s))) => {
                        if s {
                            h.checked_sub(Rational::ONE)?
                        } else {
                            h
                        }
                    }
                    (Some((l, ls)), Some((h, hs))) => {
                        if l < h {
                            l.checked_add(h)?.checked_mul(Rational::new(1, 2)?)?
                        } else if l == h && !ls && !hs {
                            l
                        } else {
                            // Unreachable for a feasible system; refuse rather than lie.
                            return None;
                        }
                    }
                };
                (*atom, v)
            }
        };
        point.insert(atom, value);
    }
    for c in constraints {
        for a in c.form.atoms() {
            point.entry(a).or_insert(Rational::ZERO);
        }
    }
    for c in constraints {
        if c.holds_at(&point) != Some(true) {
            return None;
        }
    }
    Some(point)
}

#[cfg(test)]
mod tests {
    use super::super::field::SplitMix64;
    use super::*;

    const A: Atom = 0;
    const B: Atom = 1;
    const C: Atom = 2;

    fn at(a: Atom) -> LinForm {
        LinForm::atom(a)
    }

    fn cmp(l: Atom, rel: Rel, r: Atom) -> Constraint {
        Constraint::compare(&at(l), rel, &at(r)).unwrap()
    }

    fn q(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap()
    }

    fn check_witness(cs: &[Constraint]) -> BTreeMap<Atom, Rational> {
        let w = witness(cs).expect("feasible system has a witness");
        for c in cs {
            assert_eq!(
                c.holds_at(&w),
                Some(true),
                "{} {:?} 0 at {:?}",
                c.form,
                c.rel,
                w
            );
        }
        w
    }

    #[test]
    fn cycles_and_chains() {
        use Rel::*;
        let cyc = [cmp(A, Lt, B), cmp(B, Lt, C), cmp(C, Lt, A)];
        assert_eq!(feasible(&cyc), Feasibility::Infeasible);
        assert_eq!(witness(&cyc), None);
        let chain = [cmp(A, Lt, B), cmp(B, Lt, C)];
        assert_eq!(feasible(&chain), Feasibility::Feasible);
        let w = check_witness(&chain);
        assert!(w[&A] < w[&B] && w[&B] < w[&C]);
        let weak_cycle = [cmp(A, Le, B), cmp(B, Le, C), cmp(C, Le, A)];
        assert_eq!(feasible(&weak_cycle), Feasibility::Feasible);
        check_witness(&weak_cycle);
        assert_eq!(feasible(&[]), Feasibility::Feasible);
        assert_eq!(witness(&[]), Some(BTreeMap::new()));
    }

    #[test]
    fn equalities() {
        use Rel::*;
        assert_eq!(
            feasible(&[cmp(A, Eq, B), cmp(A, Lt, B)]),
            Feasibility::Infeasible
        );
        let sys = [cmp(A, Eq, B), cmp(A, Le, B)];
        assert_eq!(feasible(&sys), Feasibility::Feasible);
        check_witness(&sys);
        // a = b, b = c + 1, a < c  ⇒  c + 1 < c: infeasible.
        let one = LinForm::constant(Rational::ONE);
        let c1 = at(C).checked_add(&one).unwrap();
        let sys = [
            cmp(A, Eq, B),
            Constraint::compare(&at(B), Eq, &c1).unwrap(),
            cmp(A, Lt, C),
        ];
        assert_eq!(feasible(&sys), Feasibility::Infeasible);
        // ... with a > c instead it is feasible, and the witness respects the equalities.
        let sys = [
            cmp(A, Eq, B),
            Constraint::compare(&at(B), Eq, &c1).unwrap(),
            cmp(C, Lt, A),
        ];
        let w = check_witness(&sys);
        assert_eq!(w[&A], w[&C].checked_add(Rational::ONE).unwrap());
        // Constant equations.
        assert_eq!(
            feasible(&[Constraint::new(one.clone(), Eq)]),
            Feasibility::Infeasible
        );
        assert_eq!(
            feasible(&[Constraint::new(LinForm::zero(), Eq)]),
            Feasibility::Feasible
        );
        // 2a = 1 and 3b = a: a = 1/2, b = 1/6.
        let sys = [
            Constraint::new(LinForm::from_terms(q(-1, 1), [(A, q(2, 1))]).unwrap(), Eq),
            Constraint::new(
                LinForm::from_terms(Rational::ZERO, [(A, q(-1, 1)), (B, q(3, 1))]).unwrap(),
                Eq,
            ),
        ];
        let w = check_witness(&sys);
        assert_eq!((w[&A], w[&B]), (q(1, 2), q(1, 6)));
    }

    #[test]
    fn strictness() {
        use Rel::*;
        assert_eq!(
            feasible(&[cmp(A, Lt, B), cmp(B, Le, A)]),
            Feasibility::Infeasible
        );
        let sys = [cmp(A, Le, B), cmp(B, Le, A)];
        assert_eq!(feasible(&sys), Feasibility::Feasible);
        let w = check_witness(&sys);
        assert_eq!(w[&A], w[&B]);
        // a <= b, b <= a, a < c, c <= b: forces a = b and a < c <= a.
        let sys = [cmp(A, Le, B), cmp(B, Le, A), cmp(A, Lt, C), cmp(C, Le, B)];
        assert_eq!(feasible(&sys), Feasibility::Infeasible);
        // 0 < a < 1/1000 (tight open interval).
        let sys = [
            Constraint::new(at(A).checked_neg().unwrap(), Lt),
            Constraint::new(
                LinForm::from_terms(q(-1, 1000), [(A, Rational::ONE)]).unwrap(),
                Lt,
            ),
        ];
        let w = check_witness(&sys);
        assert!(w[&A] > Rational::ZERO && w[&A] < q(1, 1000));
        // Constant constraints.
        assert_eq!(
            feasible(&[Constraint::new(LinForm::zero(), Lt)]),
            Feasibility::Infeasible
        );
        assert_eq!(
            feasible(&[Constraint::new(LinForm::zero(), Le)]),
            Feasibility::Feasible
        );
        // Duplicates and dominated copies collapse.
        let sys = [cmp(A, Lt, B), cmp(A, Lt, B), cmp(A, Le, B), cmp(B, Lt, C)];
        check_witness(&sys);
        // A strict copy arriving after a weak one with the same terms must win.
        let sys = [cmp(A, Le, B), cmp(A, Lt, B), cmp(B, Le, A)];
        assert_eq!(feasible(&sys), Feasibility::Infeasible);
        // A tighter constant arriving later must win too: a - b + 1 <= 0 after a - b <= 0.
        let tight = LinForm::from_terms(Rational::ONE, [(A, q(1, 1)), (B, q(-1, 1))]).unwrap();
        let sys = [cmp(A, Le, B), Constraint::new(tight, Le), cmp(B, Lt, A)];
        assert_eq!(feasible(&sys), Feasibility::Infeasible);
    }

    #[test]
    fn sign_options_branches() {
        use Rel::*;
        let sys = [cmp(A, Lt, B), cmp(B, Lt, C)];
        let d = at(A).checked_sub(&at(C)).unwrap();
        assert_eq!(sign_options(&sys, &d), Ok([true, false, false]));
        let d = at(A).checked_sub(&at(B)).unwrap();
        assert_eq!(sign_options(&[cmp(A, Le, B)], &d), Ok([true, true, false]));
        assert_eq!(sign_options(&[], &d), Ok([true, true, true]));
        assert_eq!(
            sign_options(&[cmp(A, Lt, B), cmp(B, Lt, A)], &d),
            Ok([false, false, false])
        );
        assert_eq!(
            sign_options(&[], &LinForm::constant(q(-2, 1))),
            Ok([true, false, false])
        );
    }

    #[test]
    fn too_large_on_overflow_or_size() {
        let huge = Rational::int(i128::MAX / 3);
        // huge·a < 0 and a·(huge - 1)... combinations overflow rather than mislead.
        let f1 = LinForm::from_terms(Rational::ONE, [(A, huge), (B, q(1, 1))]).unwrap();
        let f2 = LinForm::from_terms(
            Rational::ONE,
            [(A, Rational::int(-(i128::MAX / 3 - 1))), (B, q(3, 1))],
        )
        .unwrap();
        let f3 = LinForm::from_terms(huge, [(B, q(-1, 7))]).unwrap();
        let sys = [
            Constraint::new(f1, Rel::Lt),
            Constraint::new(f2, Rel::Lt),
            Constraint::new(f3, Rel::Le),
        ];
        let v = feasible(&sys);
        assert!(
            v == Feasibility::TooLarge || v == Feasibility::Feasible,
            "{v:?}"
        );
        if v == Feasibility::Feasible {
            check_witness(&sys);
        }
        let many: Vec<Constraint> = (0..=MAX_CONSTRAINTS as u32)
            .map(|i| Constraint::new(LinForm::atom(i), Rel::Le))
            .collect();
        assert_eq!(feasible(&many), Feasibility::TooLarge);
        assert_eq!(witness(&many), None);
        assert_eq!(sign_options(&many, &at(A)), Err(TooLarge));
    }

    #[test]
    fn blowup_is_bounded() {
        // Dense systems make Fourier–Motzkin grow quadratically per eliminated atom: the
        // answer is either checked (witness / no witness) or an honest TooLarge.
        let mut rng = SplitMix64::new(5);
        let mut too_large = 0;
        for _ in 0..3 {
            let sys: Vec<Constraint> = (0..40)
                .map(|_| {
                    let terms: Vec<(Atom, Rational)> = (0..10)
                        .map(|a| (a, Rational::int(rng.next_below(9) as i128 - 4)))
                        .collect();
                    let k = Rational::int(rng.next_below(21) as i128 - 10);
                    Constraint::new(LinForm::from_terms(k, terms).unwrap(), Rel::Le)
                })
                .collect();
            match feasible(&sys) {
                Feasibility::Feasible => {
                    check_witness(&sys);
                }
                Feasibility::Infeasible => assert_eq!(witness(&sys), None),
                Feasibility::TooLarge => too_large += 1,
            }
        }
        assert!(too_large > 0, "expected dense systems to exceed the bound");
    }

    /// Integer-coefficient constraint for the grid search: `Σ coeffs·x + k rel 0`.
    struct Small {
        coeffs: [i64; 3],
        k: i64,
        rel: Rel,
    }

    fn random_system(rng: &mut SplitMix64) -> Vec<Small> {
        let n = 2 + rng.next_below(5) as usize;
        (0..n)
            .map(|_| {
                let mut coeffs = [0i64; 3];
                for c in coeffs.iter_mut() {
                    *c = rng.next_below(5) as i64 - 2;
                }
                let k = rng.next_below(7) as i64 - 3;
                let rel = match rng.next_below(5) {
                    0 => Rel::Eq,
                    1 | 2 => Rel::Lt,
                    _ => Rel::Le,
                };
                Small { coeffs, k, rel }
            })
            .collect()
    }

    fn to_constraint(s: &Small) -> Constraint {
        let terms = (0..3).map(|i| (i as Atom, Rational::int(s.coeffs[i] as i128)));
        Constraint::new(
            LinForm::from_terms(Rational::int(s.k as i128), terms).unwrap(),
            s.rel,
        )
    }

    /// Searches x_i = n_i / 4, n_i in [-32, 32], in exact integer arithmetic (×4).
    fn grid_point(sys: &[Small]) -> Option<[i64; 3]> {
        let holds = |n: [i64; 3]| {
            sys.iter().all(|s| {
                let v = s.coeffs[0] * n[0] + s.coeffs[1] * n[1] + s.coeffs[2] * n[2] + 4 * s.k;
                match s.rel {
                    Rel::Lt => v < 0,
                    Rel::Le => v <= 0,
                    Rel::Eq => v == 0,
                }
            })
        };
        for x in -32..=32 {
            for y in -32..=32 {
                for z in -32..=32 {
                    if holds([x, y, z]) {
                        return Some([x, y, z]);
                    }
                }
            }
        }
        None
    }

    #[test]
    fn random_small_systems_against_grid() {
        let mut rng = SplitMix64::new(0xfea5_1b1e);
        let (mut feasible_count, mut infeasible_count) = (0, 0);
        for _ in 0..400 {
            let small = random_system(&mut rng);
            let sys: Vec<Constraint> = small.iter().map(to_constraint).collect();
            let verdict = feasible(&sys);
            let w = witness(&sys);
            match verdict {
                Feasibility::Feasible => {
                    feasible_count += 1;
                    let w = w.expect("feasible ⇒ witness");
                    for c in &sys {
                        assert_eq!(c.holds_at(&w), Some(true));
                    }
                }
                Feasibility::Infeasible => {
                    infeasible_count += 1;
                    assert!(w.is_none());
                    assert_eq!(grid_point(&small), None, "grid point found ⇒ feasible");
                }
                Feasibility::TooLarge => panic!("tiny system reported too large"),
            }
            // sign_options agrees with feasibility of the three branches' union.
            let d = to_constraint(&random_system(&mut rng)[0]).form;
            let opts = sign_options(&sys, &d).unwrap();
            assert_eq!(opts.iter().any(|&o| o), verdict == Feasibility::Feasible);
        }
        assert!(
            feasible_count > 20 && infeasible_count > 20,
            "{feasible_count} / {infeasible_count}"
        );
    }

    #[test]
    fn random_larger_systems_have_valid_witnesses() {
        let mut rng = SplitMix64::new(99);
        for _ in 0..200 {
            let n = 2 + rng.next_below(8) as usize;
            let sys: Vec<Constraint> = (0..n)
                .map(|_| {
                    let terms: Vec<(Atom, Rational)> = (0..6)
                        .map(|a| {
                            (
                                a,
                                q(rng.next_below(7) as i128 - 3, 1 + rng.next_below(3) as i128),
                            )
                        })
                        .collect();
                    let k = q(
                        rng.next_below(11) as i128 - 5,
                        1 + rng.next_below(4) as i128,
                    );
                    let rel = [Rel::Lt, Rel::Le, Rel::Le, Rel::Eq][rng.next_below(4) as usize];
                    Constraint::new(LinForm::from_terms(k, terms).unwrap(), rel)
                })
                .collect();
            match feasible(&sys) {
                Feasibility::Feasible => {
                    check_witness(&sys);
                }
                Feasibility::Infeasible => assert_eq!(witness(&sys), None),
                Feasibility::TooLarge => {}
            }
        }
    }
}
