//! Arithmetic in GF(p), p = 2^61 - 1.
//!
//! Identity testing evaluates both sides of a candidate law at random field points
//! (Schwartz–Zippel): a Mersenne prime keeps reduction to shifts and adds, and its
//! size makes a false "equal" vanishingly unlikely. [`SplitMix64`] supplies the
//! random points deterministically, so every verdict is reproducible.

use std::fmt;
use std::ops::{Add, Mul, Neg, Sub};

use super::rational::Rational;

/// An element of GF(2^61 - 1), always stored reduced (`0 <= value < P`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fp(u64);

/// The modulus, 2^61 - 1.
const MODULUS: u64 = (1u64 << 61) - 1;

/// Reduces any `u64` modulo `2^61 - 1` (folding the top bits onto the bottom ones).
const fn reduce64(x: u64) -> u64 {
    let y = (x & MODULUS) + (x >> 61);
    if y >= MODULUS {
        y - MODULUS
    } else {
        y
    }
}

/// Reduces a product of two reduced elements (`x < 2^122`).
const fn reduce128(x: u128) -> u64 {
    let lo = (x as u64) & MODULUS;
    let hi = (x >> 61) as u64;
    // `lo, hi < 2^61`, so the sum fits in a u64.
    reduce64(lo + hi)
}

impl Fp {
    /// The field's modulus, the Mersenne prime 2^61 - 1.
    pub const P: u64 = MODULUS;

    /// The element `v mod P`.
    pub const fn new(v: u64) -> Fp {
        Fp(reduce64(v))
    }

    /// The element `v mod P` for a signed value (negative values wrap around).
    pub fn from_i128(v: i128) -> Fp {
        // rem_euclid by a positive modulus never overflows and lies in [0, P).
        Fp(v.rem_euclid(MODULUS as i128) as u64)
    }

    /// The image of `num/den`; `None` when the denominator is divisible by `P`, where
    /// the rational has no image in the field.
    pub fn from_rational(r: &Rational) -> Option<Fp> {
        let inv_den = Fp::from_i128(r.den()).inv()?;
        Some(Fp::from_i128(r.num()).mul(inv_den))
    }

    /// The additive identity.
    pub const fn zero() -> Fp {
        Fp(0)
    }

    /// The multiplicative identity.
    pub const fn one() -> Fp {
        Fp(1)
    }

    /// The canonical representative in `[0, P)`.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// Whether this is the zero element.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Field addition.
    pub const fn add(self, other: Fp) -> Fp {
        // Both operands are below 2^61, so the sum cannot overflow.
        let s = self.0 + other.0;
        Fp(if s >= MODULUS { s - MODULUS } else { s })
    }

    /// Field subtraction.
    pub const fn sub(self, other: Fp) -> Fp {
        Fp(if self.0 >= other.0 {
            self.0 - other.0
        } else {
            self.0 + MODULUS - other.0
        })
    }

    /// Field multiplication (a full 122-bit product, then Mersenne folding).
    pub const fn mul(self, other: Fp) -> Fp {
        Fp(reduce128(self.0 as u128 * other.0 as u128))
    }

    /// Additive inverse.
    pub const fn neg(self) -> Fp {
        Fp(if self.0 == 0 { 0 } else { MODULUS - self.0 })
    }

    /// `self^e` by square-and-multiply; `0^0 = 1`.
    pub const fn pow(self, mut e: u64) -> Fp {
        let mut base = self;
        let mut acc = Fp(1);
        while e > 0 {
            if e & 1 == 1 {
                acc = acc.mul(base);
            }
            base = base.mul(base);
            e >>= 1;
        }
        acc
    }

    /// Multiplicative inverse by Fermat (`a^(P-2)`); `None` for zero.
    pub const fn inv(self) -> Option<Fp> {
        if self.0 == 0 {
            None
        } else {
            Some(self.pow(MODULUS - 2))
        }
    }

    /// `self^e` for a signed exponent; `None` when `e < 0` and `self` is zero.
    pub fn powi(self, e: i64) -> Option<Fp> {
        if e >= 0 {
            Some(self.pow(e as u64))
        } else {
            Some(self.inv()?.pow(e.unsigned_abs()))
        }
    }
}

impl fmt::Display for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Add for Fp {
    type Output = Fp;
    fn add(self, other: Fp) -> Fp {
        Fp::add(self, other)
    }
}

impl Sub for Fp {
    type Output = Fp;
    fn sub(self, other: Fp) -> Fp {
        Fp::sub(self, other)
    }
}

impl Mul for Fp {
    type Output = Fp;
    fn mul(self, other: Fp) -> Fp {
        Fp::mul(self, other)
    }
}

impl Neg for Fp {
    type Output = Fp;
    fn neg(self) -> Fp {
        Fp::neg(self)
    }
}

/// SplitMix64 (Steele, Lea, Flood): a tiny, fast, well-mixed deterministic generator,
/// so that randomized checks are reproducible from a seed without a `rand` dependency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`; equal seeds give equal streams.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform field element in `[0, P)` (61-bit rejection sampling; the one rejected
    /// value has probability 2^-61, so this loop practically never repeats).
    pub fn next_fp(&mut self) -> Fp {
        loop {
            let v = self.next_u64() >> 3;
            if v < MODULUS {
                return Fp(v);
            }
        }
    }

    /// A value in `[0, bound)` (0 when `bound == 0`), by multiply-high; the bias is
    /// at most `bound / 2^64`, irrelevant for test-case generation.
    pub fn next_below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// A float in `[lo, hi)` built from 53 random bits (for sampling real-valued inputs).
    pub fn next_f64_in(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        lo + (hi - lo) * unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_mul(a: Fp, b: Fp) -> u64 {
        ((a.value() as u128 * b.value() as u128) % Fp::P as u128) as u64
    }

    #[test]
    fn reduction_edges() {
        assert_eq!(Fp::new(Fp::P).value(), 0);
        assert_eq!(Fp::new(Fp::P + 1).value(), 1);
        assert_eq!(Fp::new(u64::MAX).value(), u64::MAX % Fp::P);
        assert_eq!(Fp::from_i128(-1).value(), Fp::P - 1);
        assert_eq!(
            Fp::from_i128(i128::MIN).value(),
            i128::MIN.rem_euclid(Fp::P as i128) as u64
        );
        assert_eq!(
            Fp::from_i128(i128::MAX).value(),
            (i128::MAX % Fp::P as i128) as u64
        );
        let m = Fp::new(Fp::P - 1);
        assert_eq!(m * m, Fp::one());
        assert_eq!(m + Fp::one(), Fp::zero());
        assert_eq!(Fp::zero() - Fp::one(), m);
        assert_eq!(-Fp::zero(), Fp::zero());
    }

    #[test]
    fn field_laws_on_random_values() {
        let mut rng = SplitMix64::new(0x5eed);
        for _ in 0..2000 {
            let (a, b, c) = (rng.next_fp(), rng.next_fp(), rng.next_fp());
            assert!(a.value() < Fp::P);
            assert_eq!((a * b).value(), reference_mul(a, b));
            assert_eq!((a + b) + c, a + (b + c));
            assert_eq!((a * b) * c, a * (b * c));
            assert_eq!(a * b, b * a);
            assert_eq!(a + b, b + a);
            assert_eq!(a * (b + c), a * b + a * c);
            assert_eq!(a - b + b, a);
            assert_eq!(a + (-a), Fp::zero());
            if let Some(ai) = a.inv() {
                assert_eq!(a * ai, Fp::one());
            } else {
                assert!(a.is_zero());
            }
            if !a.is_zero() {
                assert_eq!(a.pow(Fp::P - 1), Fp::one(), "Fermat");
            }
            assert_eq!(a.pow(Fp::P), a, "Frobenius is the identity on GF(p)");
        }
    }

    #[test]
    fn pow_and_powi() {
        let two = Fp::new(2);
        assert_eq!(two.pow(0), Fp::one());
        assert_eq!(two.pow(10).value(), 1024);
        assert_eq!(two.pow(61), Fp::one(), "2^61 = 1 mod 2^61 - 1");
        assert_eq!(Fp::zero().pow(0), Fp::one());
        assert_eq!(Fp::zero().powi(-1), None);
        assert_eq!(Fp::zero().powi(3), Some(Fp::zero()));
        let mut rng = SplitMix64::new(7);
        for _ in 0..200 {
            let a = rng.next_fp();
            if a.is_zero() {
                continue;
            }
            let e = (rng.next_below(100) as i64) - 50;
            let p = a.powi(e).unwrap();
            let q = a.powi(-e).unwrap();
            assert_eq!(p * q, Fp::one());
            assert_eq!(a.powi(e + 1).unwrap(), p * a);
        }
        assert_eq!(
            Fp::new(3).powi(i64::MIN).unwrap() * Fp::new(3).pow(1u64 << 63),
            Fp::one()
        );
    }

    #[test]
    fn from_rational_maps_fractions() {
        let half = Rational::new(1, 2).unwrap();
        let h = Fp::from_rational(&half).unwrap();
        assert_eq!(h + h, Fp::one());
        let r = Rational::new(-7, 3).unwrap();
        assert_eq!(
            Fp::from_rational(&r).unwrap() * Fp::new(3),
            Fp::from_i128(-7)
        );
        let bad = Rational::new(1, Fp::P as i128).unwrap();
        assert_eq!(Fp::from_rational(&bad), None);
    }

    #[test]
    fn prng_is_deterministic_and_in_range() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            let x = a.next_f64_in(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x));
            assert!(a.next_below(5) < 5);
        }
        assert_eq!(a.next_below(0), 0);
    }
}
