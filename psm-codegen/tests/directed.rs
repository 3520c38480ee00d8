//! Directed tests of the Cranelift backend: special values (NaN, ±inf, ±0) through
//! min/max, reductions and every built-in function, i32 wrapping and the conversion
//! of integer constants, guarded accesses that would fault if evaluated, layouts,
//! threads, and compile times.

mod common;

use common::*;
use psm_codegen::clif::{self, Layout, HAS_STATE, WRITE_OUTPUTS};
use psm_ir::ir::Dtype;

const EXTREMES: &str = "
aggregator extremes<D = 4> {
    input   { v[D], w[D], a[D]: f64, b[D]: f64 }
    element { mx, mn, s, p, hi[D], lo[D], hi2[D], dmx: f64, dmn: f64, ds: f64, dhi[D]: f64, dlo[D]: f64 }
    lift(x) {
        mx     = max(i) x.v[i];
        mn     = min(i) x.v[i];
        s      = sum(i) x.v[i];
        p      = prod(i) x.w[i];
        hi[i]  = max(x.v[i], x.w[i]);
        lo[i]  = min(x.v[i], x.w[i]);
        hi2[i] = max(x.w[i], x.v[i]);
        dmx    = max(i) x.a[i];
        dmn    = min(i) x.a[i];
        ds     = sum(i) x.a[i];
        dhi[i] = max(x.a[i], x.b[i]);
        dlo[i] = min(x.b[i], x.a[i]);
    }
    combine(l, r) {
        mx     = max(l.mx, r.mx);
        mn     = min(l.mn, r.mn);
        s      = l.s + r.s;
        p      = l.p * r.p;
        hi[i]  = max(l.hi[i], r.lo[i]);
        lo[i]  = min(l.lo[i], r.hi[i]);
        hi2[i] = sum(j) l.hi2[j] * r.hi2[i];
        dmx    = max(l.dmx, r.dmx);
        dmn    = min(l.dmn, r.dmn);
        ds     = l.ds + r.ds;
        dhi[i] = max(l.dhi[i], r.dlo[i]);
        dlo[i] = min(l.dlo[i], r.dhi[i]);
    }
}
";

#[test]
fn nan_inf_and_signed_zeros_through_min_max_and_reductions() {
    let op = from_source(EXTREMES, &[]);
    let mut rng = Rng::new(7);
    let data = special_data(&op, &mut rng, 300);
    check_against_interpreter(&op, &data);
}

#[test]
fn min_max_and_sums_of_signed_zeros_and_nans() {
    let op = from_source(EXTREMES, &[]);
    let mut c = Calls::new(&op);
    let lift = |c: &mut Calls, v: [f64; 4], w: [f64; 4]| {
        let data = Data::new(&op, vec![], vec![v.to_vec(), w.to_vec(), v.to_vec(), w.to_vec()], 1);
        let jit = c.jit_lift(&data, 0);
        let (en, ed) = element_names(&op);
        assert_same("extremes", &en, &ed, &jit, &c.interp_lift(&data, 0));
        jit
    };
    let bits = |x: f64| (x as f32).to_bits();
    // Sums of negative zeros stay negative (the fold starts at e0, not at +0).
    let e = lift(&mut c, [-0.0; 4], [-0.0; 4]);
    assert_eq!(bits(e[2][0]), (-0.0f32).to_bits(), "sum of -0s");
    assert_eq!(e[9][0].to_bits(), (-0.0f64).to_bits(), "f64 sum of -0s");
    assert_eq!(bits(e[0][0]), (-0.0f32).to_bits(), "max of -0s");
    // -0 < +0 in both operand orders.
    let e = lift(&mut c, [-0.0, 0.0, -0.0, 0.0], [0.0, -0.0, 0.0, -0.0]);
    assert_eq!(bits(e[0][0]), 0.0f32.to_bits(), "max(-0, +0)");
    assert_eq!(bits(e[1][0]), (-0.0f32).to_bits(), "min(-0, +0)");
    #[allow(clippy::needless_range_loop)]
    for i in 0..4 {
        assert_eq!(bits(e[4][i]), 0.0f32.to_bits(), "hi[{i}]");
        assert_eq!(bits(e[5][i]), (-0.0f32).to_bits(), "lo[{i}]");
        assert_eq!(bits(e[6][i]), 0.0f32.to_bits(), "hi2[{i}]");
        assert_eq!(e[10][i].to_bits(), 0.0f64.to_bits(), "dhi[{i}]");
        assert_eq!(e[11][i].to_bits(), (-0.0f64).to_bits(), "dlo[{i}]");
    }
    // NaN anywhere propagates, also past -inf and +inf.
    let e = lift(&mut c, [f64::NEG_INFINITY, f64::NAN, f64::INFINITY, 1.0], [f64::INFINITY, 1.0, f64::NAN, -0.0]);
    assert!(e[0][0].is_nan() && e[1][0].is_nan() && e[2][0].is_nan() && e[3][0].is_nan());
    assert!(e[4][1].is_nan() && e[5][1].is_nan() && e[4][2].is_nan() && e[5][2].is_nan());
    assert!(e[7][0].is_nan() && e[8][0].is_nan());
    assert_eq!(e[4][0], f64::INFINITY);
    assert_eq!(e[5][0], f64::NEG_INFINITY);
    // Infinite extremes without NaN.
    let e = lift(&mut c, [f64::NEG_INFINITY, -1.0, f64::INFINITY, 1.0], [1.0; 4]);
    assert_eq!((e[0][0], e[1][0]), (f64::INFINITY, f64::NEG_INFINITY));
    assert!(e[2][0].is_nan(), "-inf + inf");
}

const FUNCS: &str = "
aggregator funcs {
    input   { v, w, a: f64, b: f64 }
    element { e1, l1, q1, r1, t1, g1, p1, a1, w1, n1, x1, e2: f64, l2: f64, q2: f64, r2: f64, t2: f64,
              g2: f64, p2: f64, a2: f64, w2: f64, n2: f64, x2: f64, c1, c2, c3, c4, c5: f64 }
    lift(x) {
        e1 = exp(x.v);  l1 = log(x.v);  q1 = sqrt(x.v);  r1 = rsqrt(x.v);  t1 = tanh(x.v);
        g1 = sigmoid(x.v);  p1 = softplus(x.v);  a1 = abs(x.v);  w1 = pow(x.v, x.w);
        n1 = min(x.v, x.w);  x1 = max(x.v, x.w);
        e2 = exp(x.a);  l2 = log(x.a);  q2 = sqrt(x.a);  r2 = rsqrt(x.a);  t2 = tanh(x.a);
        g2 = sigmoid(x.a);  p2 = softplus(x.a);  a2 = abs(x.a);  w2 = pow(x.a, x.b);
        n2 = min(x.b, x.a);  x2 = max(x.b, x.a);
        c1 = select((x.v < x.w && !(x.v == x.w)) || x.v != x.v, 1.0, 0.0);
        c2 = select(x.v <= x.w, 1.0, 0.0) + select(x.v >= x.w, 2.0, 0.0) + select(x.v > x.w, 4.0, 0.0);
        c3 = if x.v != x.w { x.v / x.w } else { -x.v };
        c4 = x.v - x.w * 2 + 1 / 3;
        c5 = if x.a > x.b || x.a == x.b { x.a - x.b } else { 0.1 * x.b };
    }
    combine(l, r) {
        e1 = l.e1 + r.e1;  l1 = l.l1 - r.l1;  q1 = l.q1 * r.q1;  r1 = l.r1 / r.r1;  t1 = r.t1;
        g1 = r.g1;  p1 = r.p1;  a1 = r.a1;  w1 = r.w1;  n1 = min(l.n1, r.n1);  x1 = max(l.x1, r.x1);
        e2 = l.e2 + r.e2;  l2 = l.l2 - r.l2;  q2 = l.q2 * r.q2;  r2 = l.r2 / r.r2;  t2 = r.t2;
        g2 = r.g2;  p2 = r.p2;  a2 = r.a2;  w2 = r.w2;  n2 = min(l.n2, r.n2);  x2 = max(l.x2, r.x2);
        c1 = r.c1;  c2 = l.c2 + r.c2;  c3 = -r.c3;  c4 = r.c4;  c5 = l.c5 * r.c5;
    }
}
";

#[test]
fn every_builtin_function_on_special_values() {
    let op = from_source(FUNCS, &[]);
    let mut rng = Rng::new(11);
    let data = special_data(&op, &mut rng, 400);
    check_against_interpreter(&op, &data);
}

const WRAP: &str = "
aggregator wrap<N = 65536, D = 4> {
    input   { a: i32, b: i32, v }
    element { s: i32, p: i32, n: i32, q: i32, m: i32, k[D]: i32, big[D]: i32, f[D], g, h[D]: f64 }
    lift(x) {
        s    = x.a + x.b;
        p    = x.a * x.b;
        n    = -x.a;
        q    = abs(x.a);
        m    = max(x.a, x.b) - min(x.a, x.b);
        k[i] = N * N + i * x.a + 2147483647;
        big[i] = (i + 1) * 9007199254740993 + x.b;
        f[i] = (i + 1) * 18014399583223809 + x.v;
        g    = 18014399583223809 + x.v;
        h[i] = (i - 2) * 9007199254740993 * 3;
    }
    combine(l, r) {
        s    = l.s + r.s;
        p    = l.p * r.p;
        n    = l.n - r.n;
        q    = max(l.q, r.q) + min(l.q, r.q);
        m    = -l.m;
        k[i] = l.k[i] * r.k[i] + (sum(j) l.k[j]) + (prod(j) r.k[j]) + (max(j) l.k[j]) - (min(j) r.k[j]);
        big[i] = abs(l.big[i] - r.big[i]);
        f[i] = l.f[i] + r.f[i];
        g    = l.g * r.g;
        h[i] = l.h[i] + r.h[i] * (D * D);
    }
}
";

#[test]
fn i32_wraps_and_integer_constants_convert_like_the_interpreter() {
    let op = from_source(WRAP, &[]);
    let mut rng = Rng::new(13);
    let data = special_data(&op, &mut rng, 300);
    check_against_interpreter(&op, &data);

    // Spot checks of the meaning itself.
    let mut c = Calls::new(&op);
    let data = Data::new(&op, vec![], vec![vec![i32::MAX as f64], vec![1.0], vec![0.0]], 1);
    let e = c.jit_lift(&data, 0);
    assert_eq!(e[0][0], i32::MIN as f64, "MAX + 1 wraps");
    assert_eq!(e[2][0], -(i32::MAX as f64));
    // N * N = 2^32 is 0 as an i32; k[0] = 0 + 0 + MAX.
    assert_eq!(e[5][0], i32::MAX as f64);
    // (2^53 + 1) goes through f64 (2^53) before wrapping to i32: 0, not 1; plus b = 1.
    assert_eq!(e[6][0], 1.0);
    // 2^54 + 2^30 + 1 rounds to f64 first (2^54 + 2^30), then to f32 (ties to even: 2^54).
    assert_eq!(e[7][0], 2f64.powi(54));
    assert_eq!(e[8][0], 2f64.powi(54));
    let data = Data::new(&op, vec![], vec![vec![i32::MIN as f64], vec![-1.0], vec![0.0]], 1);
    let e = c.jit_lift(&data, 0);
    assert_eq!(e[1][0], i32::MIN as f64, "MIN * -1 wraps");
    assert_eq!(e[2][0], i32::MIN as f64, "-MIN wraps");
    assert_eq!(e[3][0], i32::MIN as f64, "abs(MIN) wraps");
}

// ---------------------------------------------------------------- guarded accesses

const GUARDED: &str = "
aggregator guarded<C = 4> {
    param   { w[C] }
    input   { v[C] }
    element { h[C] }
    lift(x) {
        h[i] = if i < C { x.v[i] } else { x.v[i + 1000000000] + x.v[i * i + 1000000000] };
    }
    combine(l, r) {
        let z[u: 2*C] = if u < C { l.h[u] } else { r.h[u - C] };
        h[t] = l.h[t] + z[t + C] * (if t < C { w[t] } else { w[t + 1000000000] });
    }
    readout inclusive(s, x) -> y[C] {
        y[i] = select(i >= C, s.h[i - C], s.h[i]) + select(x.v[i] > 0.0, x.v[i], 0.0);
    }
}
";

#[test]
fn guarded_accesses_are_never_evaluated_in_the_untaken_branch() {
    let op = from_source(GUARDED, &[]);
    let text = clif::clif_text(&op.agg, &op.info).expect("text");
    assert!(text.contains("brif"), "the guards are branches");
    let bytes = 4 * 4;
    let (l_page, r_page, w_page, v_page) = (Guarded::new(), Guarded::new(), Guarded::new(), Guarded::new());
    // l.h[u] for u >= C would read past the end of l's page; r.h[u - C] for u < C
    // before the start of r's page; w[t + 10^9] and x.v[...] far away.
    let (l, r, w, v) = (l_page.at_end(bytes), r_page.at_start(), w_page.at_end(bytes), v_page.at_end(bytes));
    let (lv, rv, wv, vv) =
        ([1.0f32, 2.0, 3.0, 4.0], [5.0f32, 6.0, 7.0, 8.0], [0.5f32, 0.25, 2.0, -1.0], [-1.0f32, 1.0, 2.0, -3.0]);
    unsafe {
        std::ptr::copy_nonoverlapping(lv.as_ptr() as *const u8, l, bytes);
        std::ptr::copy_nonoverlapping(rv.as_ptr() as *const u8, r, bytes);
        std::ptr::copy_nonoverlapping(wv.as_ptr() as *const u8, w, bytes);
        std::ptr::copy_nonoverlapping(vv.as_ptr() as *const u8, v, bytes);
    }
    let mut scratch = Buf::garbage(op.compiled.scratch_size);
    let mut out = Buf::garbage(op.compiled.layout.size);
    let params = [w as *const u8];
    let inputs = [v as *const u8];
    unsafe {
        (op.compiled.combine)(params.as_ptr(), l, r, out.mut_ptr(), scratch.mut_ptr());
    }
    let got = read_values(out.bytes(), Dtype::F32, 4);
    let want: Vec<f64> = (0..4).map(|t| (lv[t] + rv[t] * wv[t]) as f64).collect();
    assert_eq!(got, want);
    unsafe { (op.compiled.lift)(params.as_ptr(), inputs.as_ptr(), 0, out.mut_ptr(), scratch.mut_ptr()) };
    assert_eq!(read_values(out.bytes(), Dtype::F32, 4), vv.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let mut y = Buf::garbage(bytes);
    let outputs = [y.mut_ptr()];
    unsafe {
        (op.compiled.readout)(params.as_ptr(), l, inputs.as_ptr(), 0, outputs.as_ptr(), 0, scratch.mut_ptr());
    }
    let want: Vec<f64> = (0..4).map(|i| (lv[i] + vv[i].max(0.0)) as f64).collect();
    assert_eq!(read_values(y.bytes(), Dtype::F32, 4), want);

    // The interpreter agrees on ordinary buffers.
    let mut rng = Rng::new(3);
    let data = Data::random(&op, &mut rng, 5);
    check_against_interpreter(&op, &data);
}

// ---------------------------------------------------------------- layouts and the ABI

#[test]
fn element_layout_aligns_fields_to_8_bytes() {
    let op = load_op("mlstm");
    // lf, m, c[16, 16], n[16]
    assert_eq!(
        op.compiled.layout,
        Layout {
            size: 8 + 8 + 1024 + 64,
            offsets: vec![0, 8, 16, 1040],
            field_lens: vec![1, 1, 256, 16],
            dtypes: vec![Dtype::F32; 4],
        }
    );
    let op = from_source(WRAP, &[]);
    let l = &op.compiled.layout;
    assert_eq!(l.offsets, vec![0, 8, 16, 24, 32, 40, 56, 72, 88, 96]);
    assert_eq!(l.size, 128);
    assert_eq!(l.dtypes[9], Dtype::F64);
    assert_eq!(clif::HAS_STATE | clif::WRITE_OUTPUTS | clif::REVERSE, 7);
}

#[test]
fn scan_without_steps_leaves_state_and_reports_it() {
    let op = load_op("online_softmax");
    let mut rng = Rng::new(5);
    let data = Data::random(&op, &mut rng, 4);
    let mut c = Calls::new(&op);
    let s = c.interp_lift(&data, 2);
    let (r, _, after) = c.jit_scan(&data, 3, 3, Some(&s), HAS_STATE | WRITE_OUTPUTS);
    assert_eq!(r, 1);
    let (en, ed) = element_names(&op);
    assert_same("empty scan with state", &en, &ed, &after, &s);
    // No steps, no state: nothing is touched, not even the pointers.
    let r = unsafe {
        (op.compiled.scan)(
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            7,
            7,
            std::ptr::null_mut(),
            WRITE_OUTPUTS,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn compiled_functions_run_on_many_threads_at_once() {
    let op = load_op("gla");
    let mut rng = Rng::new(9);
    let data = Data::random(&op, &mut rng, 32);
    let reference = {
        let mut c = Calls::new(&op);
        c.jit_scan(&data, 0, 32, None, WRITE_OUTPUTS)
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = Calls::new(&op);
                for _ in 0..20 {
                    let (r, outs, st) = c.jit_scan(&data, 0, 32, None, WRITE_OUTPUTS);
                    assert_eq!(r, reference.0);
                    assert_eq!(st, reference.2);
                    for (a, b) in outs.bufs.iter().zip(&reference.1.bufs) {
                        assert_eq!(a.0, b.0);
                    }
                }
            });
        }
    });
}

#[test]
fn compiling_and_dropping_repeatedly_frees_the_code() {
    let (agg, info) = parse_one(&library_source("cumsum"), &[]);
    for _ in 0..200 {
        let c = clif::compile(&agg, &info).expect("compiles");
        assert_eq!(c.layout.size, 8);
        drop(c);
    }
}

#[test]
fn text_is_deterministic_and_verified_for_every_operator() {
    for name in library_names() {
        let name = name.as_str();
        let (agg, info) = parse_one(&library_source(name), test_dims(name));
        let a = clif::clif_text(&agg, &info).unwrap_or_else(|e| panic!("{name}: {e}"));
        let b = clif::clif_text(&agg, &info).unwrap();
        assert_eq!(a, b, "{name}");
        let functions: Vec<&str> = a.lines().filter_map(|l| l.strip_prefix("; function ")).collect();
        let mut want = vec!["lift", "combine", "readout"];
        if agg.identity.is_some() {
            want.push("identity");
        }
        want.push("scan");
        assert_eq!(functions, want, "{name}");
    }
}

/// Compile time of every library operator at its default dims (run with
/// `--nocapture` to see them). The bound only catches blow-ups; see the report for
/// the measured numbers.
#[test]
fn compile_times_of_the_library() {
    let mut total = std::time::Duration::ZERO;
    for name in library_names() {
        let name = name.as_str();
        let (agg, info) = parse_one(&library_source(name), &[]);
        let _ = clif::compile(&agg, &info).expect("compiles");
        let start = std::time::Instant::now();
        const RUNS: u32 = 3;
        for _ in 0..RUNS {
            let _ = clif::compile(&agg, &info).expect("compiles");
        }
        let each = start.elapsed() / RUNS;
        total += each;
        println!("compile {name:>20}: {:>8.2} ms", each.as_secs_f64() * 1e3);
        assert!(each.as_secs_f64() < 2.0, "{name} took {each:?} to compile");
    }
    println!("compile {:>20}: {:>8.2} ms", "total", total.as_secs_f64() * 1e3);
}

// ---------------------------------------------------------------- scan loops

const COPY_OUT: &str = "
aggregator copy_out<D = 7> {
    input   { a[D], b[D] }
    element { a[D], b[D] }
    combine(l, r) {
        a[d] = l.a[d] * r.a[d];
        b[d] = r.a[d] * l.b[d] + r.b[d];
    }
    readout inclusive(s, x) -> (y[D], z[D]) { y[d] = s.b[d]; z[d] = s.a[d] - s.b[d]; }
}
";

/// A field whose readout copies it lives in its output's rows during the loop; on exit
/// it is copied back into `state` reading exactly the row's bytes (28 here, not the 32
/// of the padded element field): the last row ends at an inaccessible page.
#[test]
fn fields_kept_in_output_rows_are_copied_back_exactly() {
    let op = from_source(COPY_OUT, &[]);
    let steps = 9usize;
    let mut rng = Rng::new(21);
    let data = Data::random(&op, &mut rng, steps);
    let mut c = Calls::new(&op);
    let row = 7 * 4;
    let (y_page, z_page) = (Guarded::new(), Guarded::new());
    let (y, z) = (y_page.at_end(row * steps), z_page.at_end(row * steps));
    unsafe {
        std::ptr::write_bytes(y, 0xFF, row * steps);
        std::ptr::write_bytes(z, 0xFF, row * steps);
    }
    let layout = op.compiled.layout.clone();
    let mut state = Buf::garbage(layout.size);
    let (p, x) = (data.param_ptrs(), data.input_ptrs());
    let outputs = [y, z];
    let r = unsafe {
        (op.compiled.scan)(
            p.as_ptr(),
            x.as_ptr(),
            outputs.as_ptr(),
            0,
            steps as u64,
            state.mut_ptr(),
            WRITE_OUTPUTS,
            c.scratch.mut_ptr(),
        )
    };
    assert_eq!(r, 1);
    let (_, want) = c.interp_scan(&data, 0, steps, None, false);
    let (en, ed) = element_names(&op);
    assert_same("final state", &en, &ed, &decode_element(&layout, state.bytes()), want.as_ref().unwrap());
    let last = unsafe { std::slice::from_raw_parts(y.add(row * (steps - 1)) as *const f32, 7) };
    let b: Vec<f32> = want.as_ref().unwrap()[1].iter().map(|&v| v as f32).collect();
    assert_eq!(last, &b[..], "the last row of y holds the final b");
}

/// With NO_STATE_OUT the prefix fields nothing reads are not computed: GLA's running
/// decay `a` (only `s` is read) never reaches the buffers, while the outputs agree.
#[test]
fn no_state_out_skips_prefix_fields_nothing_reads() {
    let op = load_op("gla");
    let mut rng = Rng::new(17);
    let steps = 6;
    let data = Data::random(&op, &mut rng, steps);
    let mut c = Calls::new(&op);
    c.scratch = Buf::garbage(op.compiled.scratch_size);
    let (r, outs, _) = c.jit_scan(&data, 0, steps, None, WRITE_OUTPUTS | clif::NO_STATE_OUT);
    assert_eq!(r, 1);
    let (ys, _) = c.interp_scan(&data, 0, steps, None, false);
    let (on, od) = output_names(&op);
    for (t, y) in &ys {
        assert_same(&format!("output {t}"), &on, &od, &outs.row(&op, *t), y);
    }
    // Scratch region B (`a` at its start) holds the element of step 1 (its `a` read
    // straight from the input row) and the prefix of steps 2 and 5: `s`, never `a`.
    let layout = &op.compiled.layout;
    let b = op.compiled.scratch_size - layout.size;
    let a_bytes = layout.field_lens[0] * 4;
    assert!(c.scratch.bytes()[b..b + a_bytes].iter().all(|&x| x == 0xFF), "`a` was computed");
    assert!(c.scratch.bytes()[b + layout.offsets[1]..b + layout.size].iter().any(|&x| x != 0xFF));
    // Without the flag the state holds the full prefix.
    let (_, _, s) = c.jit_scan(&data, 0, steps, None, WRITE_OUTPUTS);
    let (_, p) = c.interp_scan(&data, 0, steps, None, false);
    let (en, ed) = element_names(&op);
    assert_same("state", &en, &ed, &s, p.as_ref().unwrap());
}

/// Without WRITE_OUTPUTS `scan` never reads the outputs array (it may be null).
#[test]
fn scan_without_outputs_never_reads_the_outputs_array() {
    for name in ["diag_affine", "gla", "online_softmax", "cumsum"] {
        let op = load_op(name);
        let mut rng = Rng::new(23);
        let steps = 5;
        let data = Data::random(&op, &mut rng, steps);
        let mut c = Calls::new(&op);
        let layout = op.compiled.layout.clone();
        for flags in [0, clif::REVERSE] {
            let mut state = Buf::garbage(layout.size);
            let (p, x) = (data.param_ptrs(), data.input_ptrs());
            let r = unsafe {
                (op.compiled.scan)(
                    p.as_ptr(),
                    x.as_ptr(),
                    std::ptr::null(),
                    0,
                    steps as u64,
                    state.mut_ptr(),
                    flags,
                    c.scratch.mut_ptr(),
                )
            };
            assert_eq!(r, 1);
            let (_, want) = c.interp_scan(&data, 0, steps, None, flags != 0);
            let (en, ed) = element_names(&op);
            assert_same(name, &en, &ed, &decode_element(&layout, state.bytes()), want.as_ref().unwrap());
        }
    }
}

// ---------------------------------------------------------------- 16-bit storage

/// Every bf16 and f16 bit pattern widened (inputs `a`, `h` read back through f32
/// outputs), and f32 values rounded to both (`v` through the state into bf16 and f16
/// outputs): ties of either format, its subnormals, overflow, NaN and infinities.
const STORAGE: &str = "
aggregator storage<N = 256> {
    input   { a[N]: bf16, h[N]: f16, v[N] }
    element { s[N] }
    lift(x) { s[i] = x.v[i]; }
    combine(l, r) { s[i] = r.s[i]; }
    readout inclusive(st, x) -> (wa[N], wh[N], nb[N]: bf16, nh[N]: f16) {
        wa[i] = x.a[i];
        wh[i] = x.h[i];
        nb[i] = st.s[i];
        nh[i] = st.s[i];
    }
}
";

/// An f32 bit pattern of one of the classes the 16-bit roundings must get right.
fn storage_case(rng: &mut Rng, k: usize) -> f32 {
    let r = rng.next_u64() as u32;
    let bits = match k % 6 {
        0 => r,
        // A bf16 tie: the dropped half is exactly 0x8000.
        1 => (r & 0xFFFF_0000) | 0x8000,
        // An f16 tie in its normal range: 13 dropped bits exactly 0x1000.
        2 => (r & 0x807F_E000) | (((r >> 23) % 30 + 113) << 23) | 0x1000,
        // Near f16's top: around 65504..65536, where rounding overflows to inf.
        3 => (r & 0x8000_0000) | (0x477F_E000 + (r & 0x3FFF)),
        // f16 subnormals and their ties: an odd multiple of 2^-25 below 2^-14.
        4 => {
            let x = (((r >> 8) & 0x7FF) * 2 + 1) as f32 * 2f32.powi(-25);
            (x.to_bits()) | (r & 0x8000_0000)
        }
        // Special patterns: NaNs (payloads too), infinities, f32 subnormals, zeros.
        _ => [0x7FC0_0000, 0xFFC0_0001, 0x7F80_0001, 0x7F80_0000, 0xFF80_0000, 1, 0x8000_8000, 0, 0x8000_0000, 0x0001_8000]
            [(r % 10) as usize],
    };
    f32::from_bits(bits)
}

#[test]
fn bf16_and_f16_loads_and_stores_match_the_interpreter_bit_for_bit() {
    let op = from_source(STORAGE, &[]);
    let n = 256;
    let steps = 256;
    let patterns: Vec<f64> = (0..=u16::MAX).map(|b| b as f64).collect();
    let a: Vec<f64> = patterns.iter().map(|&b| half::bf16::from_bits(b as u16).to_f64()).collect();
    let h: Vec<f64> = patterns.iter().map(|&b| half::f16::from_bits(b as u16).to_f64()).collect();
    let mut rng = Rng::new(16);
    for round in 0..3 {
        let v: Vec<f64> = (0..n * steps).map(|k| storage_case(&mut rng, k + round) as f64).collect();
        let data = Data::new(&op, vec![], vec![a.clone(), h.clone(), v], steps);
        check_against_interpreter(&op, &data);
    }
    // The widened values are the formats' own: spot-check against `half` directly.
    let data = Data::new(&op, vec![], vec![a.clone(), h.clone(), vec![0.0; n * steps]], steps);
    let mut c = Calls::new(&op);
    let (_, outs, _) = c.jit_scan(&data, 0, steps, None, WRITE_OUTPUTS);
    for t in [0, 1, 127, 128, 255] {
        let row = outs.row(&op, t);
        for (i, (&b, &f)) in row[0].iter().zip(row[1].iter()).take(n).enumerate() {
            let bits = (t * n + i) as u16;
            assert!(same(Dtype::F32, b, half::bf16::from_bits(bits).to_f64()), "bf16 {bits:#06x}");
            assert!(same(Dtype::F32, f, half::f16::from_bits(bits).to_f64()), "f16 {bits:#06x}");
        }
    }
}
