//! Linear forms `c0 + Σ c_i·atom_i` with exact rational coefficients.
//!
//! Case splits on max/min/comparisons produce constraints that are linear in opaque
//! subterms ("atoms"); keeping them in this canonical form (sorted atoms, no zero
//! coefficients) makes equal forms structurally equal and lets elimination work
//! exactly. All arithmetic is checked: overflow yields `None`, never a wrong form.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use super::field::Fp;
use super::rational::Rational;

/// An opaque real-valued unknown, identified by the caller's numbering.
pub type Atom = u32;

/// `constant + Σ coeff·atom`; never stores a zero coefficient, so equal forms are
/// structurally equal.
#[derive(Clone, PartialEq, Eq, Debug, Hash)]
pub struct LinForm {
    constant: Rational,
    terms: BTreeMap<Atom, Rational>,
}

impl Default for LinForm {
    fn default() -> LinForm {
        LinForm::zero()
    }
}

impl LinForm {
    /// The zero form.
    pub fn zero() -> LinForm {
        LinForm::constant(Rational::ZERO)
    }

    /// The constant form `c`.
    pub fn constant(c: Rational) -> LinForm {
        LinForm {
            constant: c,
            terms: BTreeMap::new(),
        }
    }

    /// The form `1·a`.
    pub fn atom(a: Atom) -> LinForm {
        LinForm::term(a, Rational::ONE)
    }

    /// The form `c·a` (the zero form when `c` is zero).
    pub fn term(a: Atom, c: Rational) -> LinForm {
        let mut f = LinForm::zero();
        if !c.is_zero() {
            f.terms.insert(a, c);
        }
        f
    }

    /// `constant + Σ c·a` over `terms`, summing repeated atoms; `None` on overflow.
    pub fn from_terms(
        constant: Rational,
        terms: impl IntoIterator<Item = (Atom, Rational)>,
    ) -> Option<LinForm> {
        let mut f = LinForm::constant(constant);
        for (a, c) in terms {
            f.add_term(a, c)?;
        }
        Some(f)
    }

    /// `Some(c)` when the form has no atoms.
    pub fn is_constant(&self) -> Option<Rational> {
        if self.terms.is_empty() {
            Some(self.constant)
        } else {
            None
        }
    }

    /// Whether this is the zero form.
    pub fn is_zero(&self) -> bool {
        self.terms.is_empty() && self.constant.is_zero()
    }

    /// The constant term `c0`.
    pub fn constant_term(&self) -> Rational {
        self.constant
    }

    /// The atoms with their (non-zero) coefficients, in increasing atom order.
    pub fn terms(&self) -> impl Iterator<Item = (Atom, Rational)> + '_ {
        self.terms.iter().map(|(&a, &c)| (a, c))
    }

    /// The atoms with non-zero coefficient, in increasing order.
    pub fn atoms(&self) -> impl Iterator<Item = Atom> + '_ {
        self.terms.keys().copied()
    }

    /// The number of atoms with non-zero coefficient.
    pub fn num_terms(&self) -> usize {
        self.terms.len()
    }

    /// The coefficient of `a` (zero when absent).
    pub fn coeff(&self, a: Atom) -> Rational {
        self.terms.get(&a).copied().unwrap_or(Rational::ZERO)
    }

    /// Whether every coefficient and the constant are integers.
    pub fn has_only_integer_coeffs(&self) -> bool {
        self.constant.is_integer() && self.terms.values().all(|c| c.is_integer())
    }

    /// Adds `c·a` in place, dropping the term if it cancels; `None` on overflow (the
    /// form is then unspecified, so callers discard it).
    fn add_term(&mut self, a: Atom, c: Rational) -> Option<()> {
        if c.is_zero() {
            return Some(());
        }
        match self.terms.entry(a) {
            Entry::Vacant(v) => {
                v.insert(c);
            }
            Entry::Occupied(mut o) => {
                let s = o.get().checked_add(c)?;
                if s.is_zero() {
                    o.remove();
                } else {
                    *o.get_mut() = s;
                }
            }
        }
        Some(())
    }

    /// `self + other`, `None` on overflow.
    pub fn checked_add(&self, other: &LinForm) -> Option<LinForm> {
        let mut out = self.clone();
        out.constant = out.constant.checked_add(other.constant)?;
        for (a, c) in other.terms() {
            out.add_term(a, c)?;
        }
        Some(out)
    }

    /// `self - other`, `None` on overflow.
    pub fn checked_sub(&self, other: &LinForm) -> Option<LinForm> {
        let mut out = self.clone();
        out.constant = out.constant.checked_sub(other.constant)?;
        for (a, c) in other.terms() {
            out.add_term(a, c.checked_neg()?)?;
        }
        Some(out)
    }

    /// `k·self`, `None` on overflow.
    pub fn checked_scale(&self, k: Rational) -> Option<LinForm> {
        if k.is_zero() {
            return Some(LinForm::zero());
        }
        let mut terms = BTreeMap::new();
        for (a, c) in self.terms() {
            // A product of non-zero rationals is non-zero: no cancellation to handle.
            terms.insert(a, c.checked_mul(k)?);
        }
        Some(LinForm {
            constant: self.constant.checked_mul(k)?,
            terms,
        })
    }

    /// `-self`, `None` on overflow.
    pub fn checked_neg(&self) -> Option<LinForm> {
        self.checked_scale(Rational::int(-1))
    }

    /// `self` with `a` replaced by `by` (occurrences of `a` inside `by` are kept, as in
    /// ordinary substitution); `None` on overflow.
    pub fn substitute(&self, a: Atom, by: &LinForm) -> Option<LinForm> {
        let c = self.coeff(a);
        if c.is_zero() {
            return Some(self.clone());
        }
        let mut rest = self.clone();
        rest.terms.remove(&a);
        rest.checked_add(&by.checked_scale(c)?)
    }

    /// The value in GF(p) at `values`; `None` when a coefficient's denominator is
    /// divisible by p (the form has no image there).
    pub fn eval_fp(&self, values: impl Fn(Atom) -> Fp) -> Option<Fp> {
        let mut acc = Fp::from_rational(&self.constant)?;
        for (a, c) in self.terms() {
            acc = acc + Fp::from_rational(&c)? * values(a);
        }
        Some(acc)
    }

    /// The exact value at rational `values`; `None` on overflow.
    pub fn eval_rational(&self, values: impl Fn(Atom) -> Rational) -> Option<Rational> {
        let mut acc = self.constant;
        for (a, c) in self.terms() {
            acc = acc.checked_add(c.checked_mul(values(a))?)?;
        }
        Some(acc)
    }

    /// The approximate value at float `values` (for sampling, not for decisions).
    pub fn eval_f64(&self, values: impl Fn(Atom) -> f64) -> f64 {
        self.terms().fold(self.constant.to_f64(), |acc, (a, c)| {
            acc + c.to_f64() * values(a)
        })
    }
}

impl fmt::Display for LinForm {
    /// Writes e.g. `2*a3 - a5 + 1/2`: atoms in order, then the constant (omitted when
    /// zero, unless the form is zero).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn signed(
            f: &mut fmt::Formatter<'_>,
            first: bool,
            c: Rational,
        ) -> Result<String, fmt::Error> {
            let s = c.to_string();
            let (neg, mag) = match s.strip_prefix('-') {
                Some(m) => (true, m.to_string()),
                None => (false, s.clone()),
            };
            match (first, neg) {
                (true, true) => f.write_str("-")?,
                (true, false) => {}
                (false, true) => f.write_str(" - ")?,
                (false, false) => f.write_str(" + ")?,
            }
            Ok(mag)
        }
        let mut first = true;
        for (a, c) in self.terms() {
            let mag = signed(f, first, c)?;
            if mag == "1" {
                write!(f, "a{a}")?;
            } else {
                write!(f, "{mag}*a{a}")?;
            }
            first = false;
        }
        if first || !self.constant.is_zero() {
            let mag = signed(f, first, self.constant)?;
            f.write_str(&mag)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap()
    }

    fn sample() -> LinForm {
        // 2*a3 - a5 + 1/2
        LinForm::from_terms(q(1, 2), [(3, q(2, 1)), (5, q(-1, 1))]).unwrap()
    }

    #[test]
    fn display() {
        assert_eq!(sample().to_string(), "2*a3 - a5 + 1/2");
        assert_eq!(LinForm::zero().to_string(), "0");
        assert_eq!(LinForm::constant(q(-3, 4)).to_string(), "-3/4");
        assert_eq!(LinForm::atom(7).to_string(), "a7");
        let f = LinForm::from_terms(q(-2, 1), [(1, q(-1, 3)), (2, q(1, 1))]).unwrap();
        assert_eq!(f.to_string(), "-1/3*a1 + a2 - 2");
    }

    #[test]
    fn algebra() {
        let f = sample();
        assert_eq!(f.is_constant(), None);
        assert_eq!(f.constant_term(), q(1, 2));
        assert_eq!(f.coeff(3), q(2, 1));
        assert_eq!(f.coeff(4), Rational::ZERO);
        assert_eq!(f.atoms().collect::<Vec<_>>(), vec![3, 5]);
        assert_eq!(f.checked_sub(&f).unwrap(), LinForm::zero());
        assert!(f.checked_sub(&f).unwrap().is_zero());
        let twice = f.checked_add(&f).unwrap();
        assert_eq!(twice, f.checked_scale(q(2, 1)).unwrap());
        assert!(!f.has_only_integer_coeffs());
        assert!(twice.has_only_integer_coeffs());
        assert_eq!(f.checked_scale(Rational::ZERO).unwrap(), LinForm::zero());
        let g = f.checked_add(&LinForm::term(5, Rational::ONE)).unwrap();
        assert_eq!(
            g.atoms().collect::<Vec<_>>(),
            vec![3],
            "cancelled term is dropped"
        );
        assert_eq!(g.num_terms(), 1);
        assert_eq!(
            f.checked_neg().unwrap().checked_add(&f).unwrap(),
            LinForm::zero()
        );
        assert_eq!(LinForm::term(1, Rational::ZERO), LinForm::zero());
        assert_eq!(
            LinForm::from_terms(Rational::ZERO, [(1, q(1, 1)), (1, q(-1, 1))]).unwrap(),
            LinForm::zero()
        );
        let big = LinForm::term(1, Rational::int(i128::MAX));
        assert_eq!(big.checked_add(&LinForm::atom(1)), None);
        assert_eq!(big.checked_scale(q(2, 1)), None);
    }

    #[test]
    fn substitution() {
        // (2*a3 - a5 + 1/2)[a3 := a5 + 1] = a5 + 5/2
        let f = sample();
        let by = LinForm::from_terms(q(1, 1), [(5, q(1, 1))]).unwrap();
        let g = f.substitute(3, &by).unwrap();
        assert_eq!(g, LinForm::from_terms(q(5, 2), [(5, q(1, 1))]).unwrap());
        // Substituting an absent atom is the identity.
        assert_eq!(f.substitute(9, &by).unwrap(), f);
        // Self-reference is kept: a3[a3 := a3 + 1] = a3 + 1.
        let s =
            LinForm::atom(3).substitute(3, &LinForm::from_terms(q(1, 1), [(3, q(1, 1))]).unwrap());
        assert_eq!(s.unwrap().to_string(), "a3 + 1");
    }

    #[test]
    fn evaluation_agrees() {
        let f = sample();
        let vals = |a: Atom| Rational::int(a as i128 * 10 - 7);
        let exact = f.eval_rational(vals).unwrap();
        assert_eq!(exact, q(2 * 23 - 43, 1).checked_add(q(1, 2)).unwrap());
        let fp = f.eval_fp(|a| Fp::from_i128(a as i128 * 10 - 7)).unwrap();
        assert_eq!(Some(fp), Fp::from_rational(&exact));
        let fl = f.eval_f64(|a| (a as f64) * 10.0 - 7.0);
        assert_eq!(fl, exact.to_f64());
        let bad = LinForm::constant(Rational::new(1, Fp::P as i128).unwrap());
        assert_eq!(bad.eval_fp(|_| Fp::zero()), None);
    }
}
