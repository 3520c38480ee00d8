//! The accuracy contract of the forms (see [`forms`](crate::forms)), as functions: the
//! runtime's tests, psmc's `--compare` and the GPU tests all judge outputs by these.
//!
//! An output is compared with the f64 fold entry by entry, relative to
//! `|ref| + scale_t`, where `scale_t` is the running maximum of `|ref|` over the rows
//! up to step t (so entries near a zero crossing of a large prefix are not held to
//! an impossible relative bound).

/// The tolerance for associative operators at `steps` steps, before conditioning:
/// `1e-5·max(1, log2 steps)`.
pub fn tolerance(steps: usize) -> f64 {
    1e-5 * (steps as f64).log2().max(1.0)
}

/// The tolerance with the operator's condition factor at this length and data: twice
/// the worst error `f32_error` (by [`worst_error`]) of the f32 bracketings psm-ir
/// defines — the sequential fold, and the fixed tree where it is computed — when that
/// exceeds [`tolerance`]. An ill-conditioned operator (log-sum-exp over millions of
/// steps, a fold towards a cancelling fixed point) meets no better bound in f32. An
/// infinite or NaN `f32_error` (the f32 fold overflowed) conditions nothing: it must not
/// let every output pass.
pub fn conditioned_tolerance(steps: usize, f32_error: f64) -> f64 {
    if f32_error.is_finite() {
        tolerance(steps).max(2.0 * f32_error)
    } else {
        tolerance(steps)
    }
}

/// The worst `|found − ref| / (|ref| + scale_t)` over rows of `width` entries (one
/// row per step); entries that are equal, or both NaN, count as exact; a NaN against a
/// number is an infinite error.
pub fn worst_error(found: &[f64], reference: &[f64], width: usize) -> f64 {
    let mut scale = 0.0f64;
    let mut worst = 0.0f64;
    for (f, r) in found.chunks(width.max(1)).zip(reference.chunks(width.max(1))) {
        scale = r.iter().fold(scale, |m, v| m.max(v.abs()));
        for (&a, &b) in f.iter().zip(r) {
            if a == b || (a.is_nan() && b.is_nan()) {
                continue;
            }
            let unit = b.abs() + scale;
            let d = (a - b).abs();
            worst = worst.max(if d.is_nan() || unit == 0.0 { f64::INFINITY } else { d / unit });
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_grows_with_log_length_and_conditioning() {
        assert_eq!(tolerance(0), 1e-5);
        assert_eq!(tolerance(1024), 1e-4);
        assert_eq!(conditioned_tolerance(1024, 1e-6), 1e-4);
        assert_eq!(conditioned_tolerance(1024, 1e-3), 2e-3);
        assert_eq!(conditioned_tolerance(1024, f64::INFINITY), 1e-4);
    }

    #[test]
    fn worst_error_is_relative_to_the_running_scale() {
        // The second row's reference 0 is judged against the first row's scale 4.
        assert_eq!(worst_error(&[4.0, 1.0], &[4.0, 0.0], 1), 0.25);
        assert_eq!(worst_error(&[f64::NAN], &[f64::NAN], 1), 0.0);
        assert_eq!(worst_error(&[f64::NAN], &[1.0], 1), f64::INFINITY);
        assert_eq!(worst_error(&[1.0], &[0.0], 1), f64::INFINITY);
    }
}
