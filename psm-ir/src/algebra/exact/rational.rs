//! Checked rationals over `i128`.
//!
//! The decision procedures must never give a wrong verdict, so every operation that
//! could overflow returns `None` (callers turn that into "too large to decide") rather
//! than wrapping or panicking. Values are kept normalized so that the derived
//! `Eq`/`Hash` are value equality and duplicates are recognized structurally.

use std::cmp::Ordering;
use std::fmt;

/// A rational `num/den`, always normalized: `den > 0` and `gcd(|num|, den) = 1`
/// (zero is `0/1`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd_u(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

/// The full 256-bit product of two `u128`s as `(high, low)` halves, so that cross
/// multiplication in comparisons is exact even when `i128` would overflow.
fn mul_wide(x: u128, y: u128) -> (u128, u128) {
    const M: u128 = u64::MAX as u128;
    let (x1, x0) = (x >> 64, x & M);
    let (y1, y0) = (y >> 64, y & M);
    let p00 = x0 * y0;
    let p01 = x0 * y1;
    let p10 = x1 * y0;
    let p11 = x1 * y1;
    // Each term is below 2^64, so the sum is below 3 * 2^64.
    let mid = (p00 >> 64) + (p01 & M) + (p10 & M);
    let lo = (p00 & M) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

impl Rational {
    /// Zero.
    pub const ZERO: Rational = Rational { num: 0, den: 1 };
    /// One.
    pub const ONE: Rational = Rational { num: 1, den: 1 };

    /// The integer `n`.
    pub const fn int(n: i128) -> Rational {
        Rational { num: n, den: 1 }
    }

    /// `num/den` in lowest terms; `None` when `den == 0` or when the normalized value
    /// is not representable (only possible with `i128::MIN` operands).
    pub fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 {
            return None;
        }
        if num == 0 {
            return Some(Self::ZERO);
        }
        let g = gcd_u(num.unsigned_abs(), den.unsigned_abs());
        let n = num.unsigned_abs() / g;
        let d = den.unsigned_abs() / g;
        let d = i128::try_from(d).ok()?;
        let num = if (num < 0) != (den < 0) {
            0i128.checked_sub_unsigned(n)?
        } else {
            i128::try_from(n).ok()?
        };
        Some(Rational { num, den: d })
    }

    /// The exact value of a finite `f64` (every finite float is a dyadic rational);
    /// `None` for NaN/infinities or when numerator or denominator exceed `i128`
    /// (very large or very small magnitudes).
    pub fn from_f64(x: f64) -> Option<Rational> {
        if !x.is_finite() {
            return None;
        }
        let bits = x.to_bits();
        let negative = bits >> 63 == 1;
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1u64 << 52) - 1);
        let (mut mant, mut exp) = if biased == 0 {
            (frac, -1074)
        } else {
            (frac | (1u64 << 52), biased - 1075)
        };
        if mant == 0 {
            return Some(Self::ZERO);
        }
        let mag: i128 = if exp >= 0 {
            let bits_needed = 64 - mant.leading_zeros() as i32 + exp;
            if bits_needed > 126 {
                return None;
            }
            (mant as i128) << exp
        } else {
            let tz = (mant.trailing_zeros() as i32).min(-exp);
            mant >>= tz;
            exp += tz;
            if exp < -126 {
                return None;
            }
            let r = Rational {
                num: mant as i128,
                den: 1i128 << (-exp),
            };
            return Some(if negative {
                Rational {
                    num: -r.num,
                    den: r.den,
                }
            } else {
                r
            });
        };
        Some(Rational::int(if negative { -mag } else { mag }))
    }

    /// The nearest `f64` (exact whenever the value came from [`Rational::from_f64`]);
    /// an approximation otherwise.
    pub fn to_f64(self) -> f64 {
        if self.den == 1 {
            return self.num as f64;
        }
        let q = self.num as f64 / self.den as f64;
        if q.is_finite() && q != 0.0 {
            return q;
        }
        // Both parts are huge or the quotient underflowed: split off the integer part.
        let int = self.num.div_euclid(self.den);
        let rem = self.num.rem_euclid(self.den);
        int as f64 + rem as f64 / self.den as f64
    }

    /// Whether the value is zero.
    pub const fn is_zero(self) -> bool {
        self.num == 0
    }

    /// Whether the value is an integer.
    pub const fn is_integer(self) -> bool {
        self.den == 1
    }

    /// The numerator (carries the sign).
    pub const fn num(self) -> i128 {
        self.num
    }

    /// The denominator (always positive).
    pub const fn den(self) -> i128 {
        self.den
    }

    /// -1, 0 or 1.
    pub const fn signum(self) -> i32 {
        self.num.signum() as i32
    }

    /// `self + other`, `None` on overflow.
    pub fn checked_add(self, other: Rational) -> Option<Rational> {
        if self.den == 1 && other.den == 1 {
            return Some(Rational::int(self.num.checked_add(other.num)?));
        }
        // Work over lcm(den) rather than den*den to keep intermediates small.
        let g = gcd_u(self.den as u128, other.den as u128) as i128;
        let a = self.num.checked_mul(other.den / g)?;
        let b = other.num.checked_mul(self.den / g)?;
        let n = a.checked_add(b)?;
        let d = (self.den / g).checked_mul(other.den)?;
        Rational::new(n, d)
    }

    /// `self - other`, `None` on overflow.
    pub fn checked_sub(self, other: Rational) -> Option<Rational> {
        if self.den == 1 && other.den == 1 {
            return Some(Rational::int(self.num.checked_sub(other.num)?));
        }
        self.checked_add(other.checked_neg()?)
    }

    /// `self * other`, `None` on overflow.
    pub fn checked_mul(self, other: Rational) -> Option<Rational> {
        if self.num == 0 || other.num == 0 {
            return Some(Self::ZERO);
        }
        // Cancel across before multiplying so that representable results stay so.
        let g1 = gcd_u(self.num.unsigned_abs(), other.den as u128) as i128;
        let g2 = gcd_u(other.num.unsigned_abs(), self.den as u128) as i128;
        let n = (self.num / g1).checked_mul(other.num / g2)?;
        let d = (self.den / g2).checked_mul(other.den / g1)?;
        Rational::new(n, d)
    }

    /// `self / other`, `None` on overflow or division by zero.
    pub fn checked_div(self, other: Rational) -> Option<Rational> {
        self.checked_mul(other.checked_recip()?)
    }

    /// `1 / self`, `None` for zero (or the unrepresentable `1/i128::MIN` sign flip).
    pub fn checked_recip(self) -> Option<Rational> {
        Rational::new(self.den, self.num)
    }

    /// `-self`, `None` only for a numerator of `i128::MIN`.
    pub fn checked_neg(self) -> Option<Rational> {
        Some(Rational {
            num: self.num.checked_neg()?,
            den: self.den,
        })
    }
}

impl From<i64> for Rational {
    fn from(n: i64) -> Rational {
        Rational::int(n as i128)
    }
}

impl Ord for Rational {
    /// Exact: cross-multiplies in `i128` when that cannot overflow, otherwise compares
    /// signs and then the 256-bit products of the magnitudes.
    fn cmp(&self, other: &Rational) -> Ordering {
        if self.den == other.den {
            return self.num.cmp(&other.num);
        }
        if let (Some(l), Some(r)) = (
            self.num.checked_mul(other.den),
            other.num.checked_mul(self.den),
        ) {
            return l.cmp(&r);
        }
        let (sa, sb) = (self.num.signum(), other.num.signum());
        if sa != sb {
            return sa.cmp(&sb);
        }
        let l = mul_wide(self.num.unsigned_abs(), other.den as u128);
        let r = mul_wide(other.num.unsigned_abs(), self.den as u128);
        if sa >= 0 {
            l.cmp(&r)
        } else {
            r.cmp(&l)
        }
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, other: &Rational) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::field::SplitMix64;
    use super::*;

    fn r(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap()
    }

    #[test]
    fn normalization() {
        assert_eq!(r(2, -4), r(-1, 2));
        assert_eq!(r(-2, -4).num(), 1);
        assert_eq!(r(-2, -4).den(), 2);
        assert_eq!(r(0, -5), Rational::ZERO);
        assert_eq!(r(0, -5).den(), 1);
        assert_eq!(Rational::new(1, 0), None);
        assert_eq!(r(6, 3), Rational::int(2));
        assert!(r(6, 3).is_integer());
        assert_eq!(r(i128::MIN, 2), Rational::int(i128::MIN / 2));
        assert_eq!(r(i128::MIN, i128::MIN), Rational::ONE);
        assert_eq!(
            Rational::new(1, i128::MIN),
            None,
            "den 2^127 is not representable"
        );
        assert_eq!(Rational::new(i128::MIN, -1), None);
        assert_eq!(r(i128::MIN, 1).num(), i128::MIN);
        assert_eq!(r(3, -7).signum(), -1);
        assert_eq!(r(3, 4).to_string(), "3/4");
        assert_eq!(r(-3, 4).to_string(), "-3/4");
        assert_eq!(Rational::int(5).to_string(), "5");
    }

    #[test]
    fn arithmetic() {
        assert_eq!(r(1, 2).checked_add(r(1, 3)), Some(r(5, 6)));
        assert_eq!(r(1, 6).checked_add(r(1, 3)), Some(r(1, 2)));
        assert_eq!(r(1, 2).checked_sub(r(1, 2)), Some(Rational::ZERO));
        assert_eq!(r(2, 3).checked_mul(r(9, 4)), Some(r(3, 2)));
        assert_eq!(r(2, 3).checked_div(r(-4, 9)), Some(r(-3, 2)));
        assert_eq!(r(2, 3).checked_div(Rational::ZERO), None);
        assert_eq!(Rational::ZERO.checked_recip(), None);
        assert_eq!(r(-3, 5).checked_recip(), Some(r(-5, 3)));
    }

    #[test]
    fn overflow_returns_none() {
        let max = Rational::int(i128::MAX);
        assert_eq!(max.checked_add(Rational::ONE), None);
        assert_eq!(Rational::int(i128::MIN).checked_sub(Rational::ONE), None);
        assert_eq!(max.checked_mul(Rational::int(2)), None);
        assert_eq!(Rational::int(i128::MIN).checked_neg(), None);
        let tiny = r(1, i128::MAX);
        assert_eq!(tiny.checked_mul(r(1, 2)), None);
        assert_eq!(tiny.checked_add(r(1, 2)), None);
        // Cancellation keeps representable products representable.
        assert_eq!(max.checked_mul(r(1, i128::MAX)), Some(Rational::ONE));
    }

    #[test]
    fn ordering_is_exact() {
        assert!(r(1, 3) < r(1, 2));
        assert!(r(-1, 2) < r(-1, 3));
        assert!(r(-1, 2) < Rational::ZERO);
        let n = i128::MAX - 2;
        // (n+1)/n > (n+2)/(n+1): the cross products overflow i128.
        let a = r(n + 1, n);
        let b = r(n + 2, n + 1);
        assert!(a > b);
        assert!(b < a);
        assert!(a.checked_neg().unwrap() < b.checked_neg().unwrap());
        assert_eq!(a.cmp(&a), Ordering::Equal);
        let big = r(i128::MAX, 3);
        let big2 = r(i128::MAX - 1, 3);
        assert!(big2 < big);
        assert!(r(i128::MIN, 1) < r(i128::MIN + 1, 1));
        assert!(r(i128::MIN + 1, 7) < r(i128::MIN + 1, 11));
        // Random small values against exact subtraction.
        let mut rng = SplitMix64::new(3);
        for _ in 0..2000 {
            let x = r(
                rng.next_below(41) as i128 - 20,
                rng.next_below(20) as i128 + 1,
            );
            let y = r(
                rng.next_below(41) as i128 - 20,
                rng.next_below(20) as i128 + 1,
            );
            let d = x.checked_sub(y).unwrap();
            assert_eq!(x.cmp(&y), d.signum().cmp(&0));
        }
    }

    #[test]
    fn wide_product_matches_small_cases() {
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 100, 1 << 100), (1 << 72, 0));
        assert_eq!(mul_wide(12345, 678), (0, 12345 * 678));
    }

    #[test]
    fn from_f64_is_exact() {
        assert_eq!(Rational::from_f64(0.5), Some(r(1, 2)));
        assert_eq!(Rational::from_f64(-3.0), Some(Rational::int(-3)));
        assert_eq!(Rational::from_f64(0.0), Some(Rational::ZERO));
        assert_eq!(Rational::from_f64(-0.0), Some(Rational::ZERO));
        // 0.1 is the dyadic 3602879701896397 / 2^55.
        assert_eq!(Rational::from_f64(0.1), Some(r(3602879701896397, 1 << 55)));
        assert_ne!(Rational::from_f64(0.1), Some(r(1, 10)));
        assert_eq!(Rational::from_f64(f64::NAN), None);
        assert_eq!(Rational::from_f64(f64::INFINITY), None);
        assert_eq!(Rational::from_f64(1e300), None);
        assert_eq!(Rational::from_f64(1e-300), None);
        assert_eq!(
            Rational::from_f64(2f64.powi(125)),
            Some(Rational::int(1 << 125))
        );
        assert_eq!(Rational::from_f64(2f64.powi(-126)), Some(r(1, 1 << 126)));
        assert_eq!(Rational::from_f64(2f64.powi(-127)), None);
        let mut rng = SplitMix64::new(11);
        let mut samples = vec![0.1, 1e-3, -2.75, 123456.789, 1e30, -1e-15, f64::EPSILON];
        for _ in 0..1000 {
            samples.push(rng.next_f64_in(-1e6, 1e6));
            samples.push(rng.next_f64_in(0.5, 1.0) * 1e-20);
        }
        for x in samples {
            let q = Rational::from_f64(x).unwrap();
            assert_eq!(q.to_f64().to_bits(), x.to_bits(), "{x} -> {q}");
        }
    }

    #[test]
    fn to_f64_of_general_values() {
        assert_eq!(r(1, 3).to_f64(), 1.0 / 3.0);
        assert_eq!(Rational::int(-7).to_f64(), -7.0);
        let x = r(i128::MAX, i128::MAX - 1).to_f64();
        assert!((x - 1.0).abs() < 1e-12);
    }
}
