//! Proof by normal form: when a law's two sides are polynomials in the operands and
//! params (sums, products, constants, division by constants, and branches decided by
//! constants), both sides expand into a canonical sum of monomials with exact rational
//! coefficients; equal expansions prove the law.
//!
//! Anything else (`exp`, a comparison of variables, a large expansion) is left to the
//! randomized procedure.

use std::collections::BTreeMap;

use super::exact::linform::Atom;
use super::exact::rational::Rational;
use super::symbolic::{arity, sides};
use super::{Law, Verdict, VerdictKind};
use crate::interp::{Domain, Evaluator, Fields};
use crate::ir::{Aggregator, BinaryOp, Func, Role, Scalar, UnaryOp};
use crate::valid::Info;

/// A monomial: atoms with their exponents, sorted by atom.
type Monomial = Vec<(Atom, u32)>;

/// Expansions larger than this are left to the randomized procedure.
const MAX_TERMS: usize = 4096;
/// Most work for one law: monomial products formed and terms copied or added.
const BUDGET: u64 = 4_000_000;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Poly {
    Sum(BTreeMap<Monomial, Rational>),
    Bool(bool),
}

struct Stop;

struct PolyDomain {
    /// Work done (monomial products), against [`BUDGET`].
    work: u64,
    /// A constant that is not a finite number was met.
    poison: bool,
}

fn constant_of(p: &BTreeMap<Monomial, Rational>) -> Option<Rational> {
    match p.len() {
        0 => Some(Rational::int(0)),
        1 => p.get(&Vec::new()).copied(),
        _ => None,
    }
}

fn single(m: Monomial, c: Rational) -> Poly {
    let mut p = BTreeMap::new();
    if !c.is_zero() {
        p.insert(m, c);
    }
    Poly::Sum(p)
}

impl PolyDomain {
    /// Counts `n` units of work against [`BUDGET`].
    fn charge(&mut self, n: usize) -> Result<(), Stop> {
        self.work += n as u64;
        if self.work > BUDGET {
            return Err(Stop);
        }
        Ok(())
    }

    fn add(&mut self, a: &BTreeMap<Monomial, Rational>, b: &BTreeMap<Monomial, Rational>, sign: i128) -> Result<Poly, Stop> {
        // The copy of `a` is work too: a long sum built term by term copies its growing
        // partial sums (quadratic in its length).
        self.charge(a.len() + b.len())?;
        let mut out = a.clone();
        for (m, c) in b {
            let c = c.checked_mul(Rational::int(sign)).ok_or(Stop)?;
            let slot = out.entry(m.clone()).or_insert(Rational::int(0));
            *slot = slot.checked_add(c).ok_or(Stop)?;
            if slot.is_zero() {
                out.remove(m);
            }
        }
        if out.len() > MAX_TERMS {
            return Err(Stop);
        }
        Ok(Poly::Sum(out))
    }

    fn mul(&mut self, a: &BTreeMap<Monomial, Rational>, b: &BTreeMap<Monomial, Rational>) -> Result<Poly, Stop> {
        self.charge(a.len() * b.len())?;
        let mut out: BTreeMap<Monomial, Rational> = BTreeMap::new();
        for (ma, ca) in a {
            for (mb, cb) in b {
                let m = multiply(ma, mb);
                let c = ca.checked_mul(*cb).ok_or(Stop)?;
                let slot = out.entry(m).or_insert(Rational::int(0));
                *slot = slot.checked_add(c).ok_or(Stop)?;
            }
        }
        out.retain(|_, c| !c.is_zero());
        if out.len() > MAX_TERMS {
            return Err(Stop);
        }
        Ok(Poly::Sum(out))
    }
}

fn multiply(a: &Monomial, b: &Monomial) -> Monomial {
    let mut out: Monomial = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(&(x, p)), Some(&(y, q))) if x == y => {
                out.push((x, p + q));
                i += 1;
                j += 1;
            }
            (Some(&(x, p)), Some(&(y, _))) if x < y => {
                out.push((x, p));
                i += 1;
            }
            (Some(&(x, p)), None) => {
                out.push((x, p));
                i += 1;
            }
            (_, Some(&(y, q))) => {
                out.push((y, q));
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    out
}

impl Domain for PolyDomain {
    type V = Poly;
    type Error = Stop;

    fn constant(&mut self, value: f64, ty: Scalar) -> Poly {
        if ty == Scalar::Bool {
            return Poly::Bool(value != 0.0);
        }
        match Rational::from_f64(value) {
            Some(c) => single(Vec::new(), c),
            None => {
                self.poison = true;
                single(Vec::new(), Rational::int(0))
            }
        }
    }

    fn unary(&mut self, op: UnaryOp, _ty: Scalar, a: &Poly) -> Result<Poly, Stop> {
        match (op, a) {
            (UnaryOp::Not, Poly::Bool(b)) => Ok(Poly::Bool(!b)),
            (UnaryOp::Neg, Poly::Sum(p)) => self.add(&BTreeMap::new(), p, -1),
            _ => Err(Stop),
        }
    }

    fn binary(&mut self, op: BinaryOp, _ty: Scalar, a: &Poly, b: &Poly) -> Result<Poly, Stop> {
        match (a, b) {
            (Poly::Bool(x), Poly::Bool(y)) => Ok(Poly::Bool(match op {
                BinaryOp::And => *x && *y,
                BinaryOp::Or => *x || *y,
                BinaryOp::Eq => x == y,
                BinaryOp::Ne => x != y,
                _ => return Err(Stop),
            })),
            (Poly::Sum(p), Poly::Sum(q)) => match op {
                BinaryOp::Add => self.add(p, q, 1),
                BinaryOp::Sub => self.add(p, q, -1),
                BinaryOp::Mul => self.mul(p, q),
                BinaryOp::Div => {
                    let c = constant_of(q).filter(|c| !c.is_zero()).ok_or(Stop)?;
                    let inv = single(Vec::new(), c.checked_recip().ok_or(Stop)?);
                    let Poly::Sum(inv) = inv else { unreachable!() };
                    self.mul(p, &inv)
                }
                _ => {
                    // Only comparisons of constants are decided here.
                    let (x, y) = (constant_of(p).ok_or(Stop)?, constant_of(q).ok_or(Stop)?);
                    Ok(Poly::Bool(match op {
                        BinaryOp::Lt => x < y,
                        BinaryOp::Le => x <= y,
                        BinaryOp::Gt => x > y,
                        BinaryOp::Ge => x >= y,
                        BinaryOp::Eq => x == y,
                        _ => x != y,
                    }))
                }
            },
            _ => Err(Stop),
        }
    }

    fn call(&mut self, func: Func, _ty: Scalar, args: &[Poly]) -> Result<Poly, Stop> {
        let constants: Option<Vec<Rational>> = args
            .iter()
            .map(|a| match a {
                Poly::Sum(p) => constant_of(p),
                Poly::Bool(_) => None,
            })
            .collect();
        let c = constants.ok_or(Stop)?;
        let value = match func {
            Func::Abs => {
                if c[0].signum() < 0 {
                    c[0].checked_neg().ok_or(Stop)?
                } else {
                    c[0]
                }
            }
            Func::Max => {
                if c[1] > c[0] {
                    c[1]
                } else {
                    c[0]
                }
            }
            Func::Min => {
                if c[1] < c[0] {
                    c[1]
                } else {
                    c[0]
                }
            }
            _ => return Err(Stop),
        };
        Ok(single(Vec::new(), value))
    }

    fn truth(&mut self, cond: &Poly) -> Result<bool, Stop> {
        match cond {
            Poly::Bool(b) => Ok(*b),
            Poly::Sum(_) => Err(Stop),
        }
    }
}

/// `Some(proven)` when both sides of the law expand to the same polynomial.
pub(super) fn check(agg: &Aggregator, info: &Info, law: Law) -> Option<Verdict> {
    let eval = Evaluator::new(agg, info);
    let mut next: Atom = 0;
    let mut fresh = |role: Role| -> Fields<Poly> {
        eval.fields(role)
            .into_iter()
            .map(|t| {
                (0..info.len(t))
                    .map(|_| {
                        next += 1;
                        single(vec![(next - 1, 1)], Rational::int(1))
                    })
                    .collect()
            })
            .collect()
    };
    let operands: Vec<Fields<Poly>> = (0..arity(law)).map(|_| fresh(Role::Element)).collect();
    let params = fresh(Role::Param);
    let mut d = PolyDomain { work: 0, poison: false };
    let pairs = sides(&eval, &mut d, law, &params, &operands).ok()?;
    if d.poison || pairs.iter().any(|(_, _, l, r)| l != r) {
        return None;
    }
    let terms = pairs.iter().flat_map(|(_, _, l, _)| l.iter().flatten()).map(|p| match p {
        Poly::Sum(s) => s.len(),
        Poly::Bool(_) => 0,
    });
    let largest = terms.max().unwrap_or(0);
    Some(Verdict {
        kind: VerdictKind::Proven,
        method: format!(
            "normal form: both sides expand to the same polynomial (at most {largest} monomial{} per entry)",
            if largest == 1 { "" } else { "s" }
        ),
        counterexample: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sum built term by term (as `sum(p)` evaluates) is charged for copying its
    /// partial sums, so a long one stops at the budget instead of running for seconds.
    #[test]
    fn sums_are_charged_for_their_copies() {
        let mut d = PolyDomain { work: 0, poison: false };
        let term = |atom: Atom| BTreeMap::from([(vec![(atom, 1)], Rational::int(1))]);
        let mut sum = BTreeMap::new();
        let n = 1000;
        for atom in 0..n {
            match d.add(&sum, &term(atom), 1) {
                Ok(Poly::Sum(s)) => sum = s,
                _ => panic!("a sum of {n} monomials is within the budget and MAX_TERMS"),
            }
        }
        assert_eq!(sum.len(), n as usize);
        let copies = u64::from(n) * u64::from(n - 1) / 2;
        assert!(d.work >= copies, "work {} < the {copies} terms copied", d.work);
    }
}
