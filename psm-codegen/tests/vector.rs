//! The vector paths of the Cranelift backend (SIMD across independent entries): f32,
//! i32 and f64 lanes, extents that are not multiples of the lane count, broadcast
//! loads, reductions over another index, lane masks, conditions shared by all lanes,
//! host calls lane by lane, and statements that must stay scalar — each against the
//! interpreter bit for bit, and with the CLIF checked for the vectors it should hold.

mod common;

use common::*;
use psm_codegen::clif;

/// Extents around the lane counts (4 for f32/i32, 2 for f64) and the group sizes.
const EXTENTS: [i64; 7] = [1, 3, 5, 7, 16, 63, 65];

/// The CLIF text of one function (`; function NAME` up to the next).
fn function_text(op: &Op, name: &str) -> String {
    let text = clif::clif_text(&op.agg, &op.info).expect("text");
    let start = text.find(&format!("; function {name}\n")).unwrap_or_else(|| panic!("no {name}"));
    let rest = &text[start + 1..];
    let end = rest.find("; function ").unwrap_or(rest.len());
    rest[..end].to_string()
}

fn check_program(source: &str, n: i64, seed: u64) -> Op {
    let op = from_source(source, &[("N", n)]);
    check_op(&op, seed);
    let mut rng = Rng::new(seed ^ 0xabc);
    let data = special_data(&op, &mut rng, 12);
    check_against_interpreter(&op, &data);
    op
}

const F32: &str = "
aggregator vf32<N = 7, M = 3> {
    param   { w[N], c }
    input   { x[N], y[M, N], s }
    element { a[N], b[M, N], m[N], g[N] }
    lift(x) {
        a[i]    = x.x[i] * c + x.s;
        b[j, i] = x.y[j, i] * w[i] - x.x[i];
        m[i]    = max(x.x[i], x.s);
        g[i]    = select(x.x[i] > 0.0, x.x[i], w[i]) + sqrt(abs(x.x[i]));
    }
    combine(l, r) {
        a[i]    = l.a[i] * r.a[i] + (sum(j) l.b[j, i] * r.b[j, i]);
        b[j, i] = r.a[i] * l.b[j, i] + r.b[j, i];
        m[i]    = max(l.m[i], r.m[i]) - (min(j) r.b[j, i]);
        g[i]    = if l.a[0] > 0.0 { l.g[i] + r.g[i] } else { exp(r.g[i]) - l.g[i] };
    }
    readout inclusive(st, x) -> (o[N], p[M, N]) {
        o[i]    = (sum(j) st.b[j, i] * x.y[j, i]) / (st.a[i] + 2.0) + sigmoid(st.g[i]) + softplus(st.m[i]);
        p[j, i] = st.b[j, i] * x.s - rsqrt(abs(st.m[i]) + 1.0);
    }
}
";

#[test]
fn f32_lanes_at_every_extent() {
    for n in EXTENTS {
        let op = check_program(F32, n, 100 + n as u64);
        let text = clif::clif_text(&op.agg, &op.info).unwrap();
        assert_eq!(text.contains("f32x4"), n >= 4, "N = {n}: vectors iff N >= 4");
    }
}

const F64: &str = "
aggregator vf64<N = 7, M = 3> {
    param   { w[N]: f64, c: f64 }
    input   { x[N]: f64, y[M, N]: f64, s: f64 }
    element { a[N]: f64, b[M, N]: f64, m[N]: f64, g[N]: f64 }
    lift(x) {
        a[i]    = x.x[i] * c + x.s;
        b[j, i] = x.y[j, i] * w[i] - x.x[i];
        m[i]    = min(x.x[i], x.s);
        g[i]    = select(x.x[i] <= 0.0 || x.x[i] != x.x[i], x.x[i], w[i]) + sqrt(abs(x.x[i]));
    }
    combine(l, r) {
        a[i]    = l.a[i] * r.a[i] + (sum(j) l.b[j, i] * r.b[j, i]);
        b[j, i] = r.a[i] * l.b[j, i] + r.b[j, i];
        m[i]    = min(l.m[i], r.m[i]) * (prod(j) r.b[j, i]);
        g[i]    = if r.a[0] >= 0.0 { l.g[i] - r.g[i] } else { log(abs(r.g[i])) + pow(abs(l.g[i]), r.g[i]) };
    }
    readout inclusive(st, x) -> (o[N]: f64, p[M, N]: f64) {
        o[i]    = (max(j) st.b[j, i] * x.y[j, i]) / (st.a[i] - 2.0) + tanh(st.g[i]);
        p[j, i] = -st.b[j, i] / x.s;
    }
}
";

#[test]
fn f64_lanes_at_every_extent() {
    for n in EXTENTS {
        let op = check_program(F64, n, 200 + n as u64);
        let text = clif::clif_text(&op.agg, &op.info).unwrap();
        assert_eq!(text.contains("f64x2"), n >= 2, "N = {n}: vectors iff N >= 2");
    }
}

const I32: &str = "
aggregator vi32<N = 7> {
    param   { w[N]: i32 }
    input   { x[N]: i32, k: i32, f[N] }
    element { a[N]: i32, b[N]: i32, c[N] }
    lift(x) {
        a[i] = x.x[i] * w[i] + x.k;
        b[i] = abs(x.x[i]) - min(x.x[i], x.k);
        c[i] = select(x.x[i] > x.k, x.f[i], -x.f[i]);
    }
    combine(l, r) {
        a[i] = l.a[i] * r.a[i] - (sum(j) l.b[j] * r.a[i]);
        b[i] = max(l.b[i], r.b[i]) + (max(j) r.a[j]) - (prod(j) (r.a[i] + j + l.b[j]));
        c[i] = select(l.a[i] < r.a[i] && !(l.b[i] == r.b[i]), l.c[i], r.c[i]) * 2.0;
    }
    readout exclusive(p, x) -> (o[N]: i32, q[N]) {
        o[i] = -p.a[i] + (min(j) p.b[j] * x.x[i]);
        q[i] = if empty(p) { x.f[i] } else { p.c[i] - x.f[i] };
    }
}
";

#[test]
fn i32_lanes_at_every_extent() {
    for n in EXTENTS {
        let op = check_program(I32, n, 300 + n as u64);
        let text = clif::clif_text(&op.agg, &op.info).unwrap();
        assert_eq!(text.contains("i32x4"), n >= 4, "N = {n}: vectors iff N >= 4");
    }
}

/// Loads whose offset moves by two entries per lane, or backwards, or that depend on
/// the lane index through a condition on it, keep their statement scalar; the others
/// in the same body are vectorized.
const SCALAR: &str = "
aggregator stays_scalar<N = 8, M = 16> {
    input   { x[M], v[N] }
    element { a[N], b[N], c[N], d[N] }
    lift(x) {
        a[i] = x.x[2 * i] + x.v[i];
        b[i] = x.v[N - 1 - i];
        c[i] = if i < N - 1 { x.v[i + 1] } else { x.v[0] };
        d[i] = x.v[i] * (i + 1);
    }
    combine(l, r) {
        a[i] = l.a[i] + r.a[i];
        b[i] = l.b[i] * r.b[i];
        c[i] = l.c[i] - r.c[i];
        d[i] = max(l.d[i], r.d[i]);
    }
}
";

#[test]
fn strided_reversed_and_index_valued_statements_stay_scalar() {
    for n in [4, 5, 8] {
        let op = from_source(SCALAR, &[("N", n), ("M", 2 * n)]);
        check_op(&op, 400 + n as u64);
        let lift = function_text(&op, "lift");
        assert!(!lift.contains("f32x4"), "N = {n}: the lift stays scalar:\n{lift}");
        let combine = function_text(&op, "combine");
        assert!(combine.contains("f32x4"), "N = {n}: the combine is vectorized");
    }
}

/// The library's hot statements are vectorized: GLA's lift, combine and readout, and
/// attn_agg's projections.
#[test]
fn library_statements_are_vectorized() {
    let op = load_op("gla");
    for f in ["lift", "combine", "readout", "scan"] {
        assert!(function_text(&op, f).contains("f32x4"), "gla {f}");
    }
    let op = load_op("attn_agg");
    assert!(function_text(&op, "combine").contains("f32x4"));
    let op = load_op("ema");
    assert!(!function_text(&op, "scan").contains("x2"), "rank-0 statements stay scalar");
}

// ---------------------------------------------------------------- no over-reads

const TIGHT: &str = "
aggregator tight<N = 7> {
    param   { w[N] }
    input   { v[N] }
    element { h[N] }
    lift(x) { h[i] = x.v[i] * w[i]; }
    combine(l, r) { h[i] = l.h[i] + r.h[i] * w[i]; }
}
";

/// Vector loads and stores touch only the entries of their extent: every buffer ends
/// (or starts) at a page boundary, and the remainder runs scalar.
#[test]
fn vector_accesses_stay_within_their_buffers() {
    for n in [4usize, 5, 7, 9, 63] {
        let op = from_source(TIGHT, &[("N", n as i64)]);
        assert!(function_text(&op, "combine").contains("f32x4"));
        let bytes = 4 * n;
        let pages: Vec<Guarded> = (0..5).map(|_| Guarded::new()).collect();
        let (l, r, w, v, out) = (
            pages[0].at_end(bytes),
            pages[1].at_start(),
            pages[2].at_end(bytes),
            pages[3].at_end(bytes),
            pages[4].at_end(bytes),
        );
        let vals = |k: usize| (0..n).map(|i| (i * 7 + k) as f32 * 0.25 - 3.0).collect::<Vec<f32>>();
        let (lv, rv, wv, vv) = (vals(1), vals(2), vals(3), vals(4));
        unsafe {
            std::ptr::copy_nonoverlapping(lv.as_ptr() as *const u8, l, bytes);
            std::ptr::copy_nonoverlapping(rv.as_ptr() as *const u8, r, bytes);
            std::ptr::copy_nonoverlapping(wv.as_ptr() as *const u8, w, bytes);
            std::ptr::copy_nonoverlapping(vv.as_ptr() as *const u8, v, bytes);
        }
        let mut scratch = Buf::garbage(op.compiled.scratch_size);
        let params = [w as *const u8];
        let inputs = [v as *const u8];
        unsafe { (op.compiled.combine)(params.as_ptr(), l, r, out, scratch.mut_ptr()) };
        let got = unsafe { std::slice::from_raw_parts(out as *const f32, n) };
        let want: Vec<f32> = (0..n).map(|i| lv[i] + rv[i] * wv[i]).collect();
        assert_eq!(got, &want[..], "N = {n}: combine");
        unsafe { (op.compiled.lift)(params.as_ptr(), inputs.as_ptr(), 0, out, scratch.mut_ptr()) };
        let got = unsafe { std::slice::from_raw_parts(out as *const f32, n) };
        let want: Vec<f32> = (0..n).map(|i| vv[i] * wv[i]).collect();
        assert_eq!(got, &want[..], "N = {n}: lift");
    }
}
