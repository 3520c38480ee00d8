//! ns/step of the fused `scan` (WRITE_OUTPUTS, one thread) against the hand-written
//! loops of `psm-bench`, with the outputs checked bit for bit against them.
//!
//! `cargo run -p psm-codegen --release --example speed [FILTER] [--budget-ms N] [--flags F]`
//! FILTER selects cases by substring; `--flags` adds scan flag bits (e.g. 8 for
//! NO_STATE_OUT).

use std::time::Duration;

use psm_bench::baselines;
use psm_bench::{best_time, Rng};
use psm_codegen::clif::{self, Compiled, WRITE_OUTPUTS};
use psm_ir::ir::{Aggregator, Role};
use psm_ir::valid::{DimOverride, Info};

fn load(name: &str, dims: &[(&str, i64)]) -> (Aggregator, Info) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/ops/{name}.psm"));
    let source = std::fs::read_to_string(path).expect("library operator");
    let module = psm_ir::front::dsl::parse(&source).expect("parses");
    let overrides: Vec<DimOverride> =
        dims.iter().map(|&(n, v)| DimOverride { name: n.to_string(), value: v }).collect();
    let infos = psm_ir::valid::validate(&module, &overrides).expect("validates");
    (module.aggregators[0].clone(), infos[0].clone())
}

/// An 8-byte aligned f32 buffer.
fn aligned(values: &[f32]) -> Vec<u64> {
    let mut b = vec![0u64; values.len().div_ceil(2).max(1)];
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), b.as_mut_ptr() as *mut f32, values.len()) };
    b
}

fn as_f32(b: &[u64], n: usize) -> &[f32] {
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, n) }
}

struct Case {
    name: String,
    ours_ns: f64,
    hand_ns: f64,
    identical: bool,
}

/// Times `scan` over `steps` steps of `inputs` (one f32 buffer per input field, in
/// declaration order) and returns (ns/step, the outputs).
fn time_scan(
    c: &Compiled,
    params: &[Vec<u64>],
    inputs: &[Vec<u64>],
    out_lens: &[usize],
    steps: usize,
    flags: u32,
    budget: Duration,
) -> (f64, Vec<Vec<u64>>) {
    let mut outs: Vec<Vec<u64>> = out_lens.iter().map(|&n| vec![0u64; (n * steps).div_ceil(2)]).collect();
    let mut scratch = vec![0u64; c.scratch_size.div_ceil(8).max(1)];
    let mut state = vec![0u64; c.layout.size.div_ceil(8).max(1)];
    let p: Vec<*const u8> = params.iter().map(|b| b.as_ptr() as *const u8).collect();
    let x: Vec<*const u8> = inputs.iter().map(|b| b.as_ptr() as *const u8).collect();
    let o: Vec<*mut u8> = outs.iter_mut().map(|b| b.as_mut_ptr() as *mut u8).collect();
    let t = best_time(budget, || unsafe {
        let r = (c.scan)(
            p.as_ptr(),
            x.as_ptr(),
            o.as_ptr(),
            0,
            steps as u64,
            state.as_mut_ptr() as *mut u8,
            WRITE_OUTPUTS | flags,
            scratch.as_mut_ptr() as *mut u8,
        );
        std::hint::black_box(r);
    });
    (t.as_secs_f64() * 1e9 / steps as f64, outs)
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn main() {
    let mut filter = String::new();
    let mut budget = Duration::from_millis(700);
    let mut flags = 0u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--budget-ms" => budget = Duration::from_millis(args.next().unwrap().parse().unwrap()),
            "--flags" => flags = args.next().unwrap().parse().unwrap(),
            _ => filter = a,
        }
    }
    let want = |n: &str| n.contains(filter.as_str());
    let mut cases: Vec<Case> = Vec::new();
    let mut rng = Rng::new(42);

    // cumsum
    if want("cumsum") {
        let t = 65536;
        let (agg, info) = load("cumsum", &[]);
        let c = clif::compile(&agg, &info).unwrap();
        let v = rng.vec(t, -1.0, 1.0);
        let (ours, outs) = time_scan(&c, &[], &[aligned(&v)], &[1], t, flags, budget);
        let mut y = vec![0.0f32; t];
        let hand = best_time(budget, || baselines::cumsum(std::hint::black_box(&v), &mut y, t));
        cases.push(Case {
            name: format!("cumsum T={t}"),
            ours_ns: ours,
            hand_ns: hand.as_secs_f64() * 1e9 / t as f64,
            identical: same(as_f32(&outs[0], t), &y),
        });
    }

    // scalar_affine
    if want("scalar_affine") {
        let t = 65536;
        let (agg, info) = load("scalar_affine", &[]);
        let c = clif::compile(&agg, &info).unwrap();
        let (a, b) = (rng.vec(t, 0.5, 1.0), rng.vec(t, -1.0, 1.0));
        let (ours, outs) = time_scan(&c, &[], &[aligned(&a), aligned(&b)], &[1], t, flags, budget);
        let mut y = vec![0.0f32; t];
        let hand = best_time(budget, || baselines::scalar_affine(std::hint::black_box(&a), &b, &mut y, t));
        cases.push(Case {
            name: format!("scalar_affine T={t}"),
            ours_ns: ours,
            hand_ns: hand.as_secs_f64() * 1e9 / t as f64,
            identical: same(as_f32(&outs[0], t), &y),
        });
    }

    // diag_affine
    for (d, t) in [(64usize, 16384usize), (1024, 4096)] {
        let name = format!("diag_affine D={d} T={t}");
        if !want(&name) {
            continue;
        }
        let (agg, info) = load("diag_affine", &[("D", d as i64)]);
        let c = clif::compile(&agg, &info).unwrap();
        let (a, b) = (rng.vec(t * d, 0.5, 1.0), rng.vec(t * d, -1.0, 1.0));
        let (ours, outs) = time_scan(&c, &[], &[aligned(&a), aligned(&b)], &[d], t, flags, budget);
        let mut y = vec![0.0f32; t * d];
        let hand = best_time(budget, || baselines::diag_affine(std::hint::black_box(&a), &b, &mut y, t, d));
        cases.push(Case {
            name,
            ours_ns: ours,
            hand_ns: hand.as_secs_f64() * 1e9 / t as f64,
            identical: same(as_f32(&outs[0], t * d), &y),
        });
    }

    // logcumsumexp
    if want("logcumsumexp") {
        let t = 65536;
        let (agg, info) = load("logcumsumexp", &[]);
        let c = clif::compile(&agg, &info).unwrap();
        let v = rng.vec(t, -1.0, 1.0);
        let (ours, outs) = time_scan(&c, &[], &[aligned(&v)], &[1], t, flags, budget);
        let mut y = vec![0.0f32; t];
        let hand = best_time(budget, || baselines::logcumsumexp(std::hint::black_box(&v), &mut y, t));
        cases.push(Case {
            name: format!("logcumsumexp T={t}"),
            ours_ns: ours,
            hand_ns: hand.as_secs_f64() * 1e9 / t as f64,
            identical: same(as_f32(&outs[0], t), &y),
        });
    }

    // gla
    if want("gla") {
        let (kd, vd, t) = (64usize, 64usize, 4096usize);
        let (agg, info) = load("gla", &[("K", kd as i64), ("V", vd as i64)]);
        let c = clif::compile(&agg, &info).unwrap();
        let q = rng.vec(t * kd, -1.0, 1.0);
        let k = rng.vec(t * kd, -1.0, 1.0);
        let v = rng.vec(t * vd, -1.0, 1.0);
        let alpha = rng.vec(t * kd, 0.5, 1.0);
        let inputs = [aligned(&q), aligned(&k), aligned(&v), aligned(&alpha)];
        let (ours, outs) = time_scan(&c, &[], &inputs, &[vd], t, flags, budget);
        let mut o = vec![0.0f32; t * vd];
        let hand = best_time(budget, || baselines::gla(std::hint::black_box(&q), &k, &v, &alpha, &mut o, t, kd, vd));
        cases.push(Case {
            name: format!("gla K=V={kd} T={t}"),
            ours_ns: ours,
            hand_ns: hand.as_secs_f64() * 1e9 / t as f64,
            identical: same(as_f32(&outs[0], t * vd), &o),
        });
    }

    // attn_agg: one combine call (ns/call).
    if want("attn_agg") {
        let (cc, dd) = (8usize, 32usize);
        let (agg, info) = load("attn_agg", &[("C", cc as i64), ("D", dd as i64)]);
        let c = clif::compile(&agg, &info).unwrap();
        assert_eq!(agg.tensors_of(Role::Param).count(), 3);
        let w: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(dd * dd, -0.3, 0.3)).collect();
        let (l, r) = (rng.vec(cc * dd, -1.0, 1.0), rng.vec(cc * dd, -1.0, 1.0));
        let params: Vec<Vec<u64>> = w.iter().map(|x| aligned(x)).collect();
        let p: Vec<*const u8> = params.iter().map(|b| b.as_ptr() as *const u8).collect();
        let (lb, rb) = (aligned(&l), aligned(&r));
        let mut out = vec![0u64; c.layout.size.div_ceil(8)];
        let mut scratch = vec![0u64; c.scratch_size.div_ceil(8).max(1)];
        const CALLS: u32 = 200;
        let ours = best_time(budget, || {
            for _ in 0..CALLS {
                unsafe {
                    (c.combine)(
                        p.as_ptr(),
                        lb.as_ptr() as *const u8,
                        std::hint::black_box(rb.as_ptr() as *const u8),
                        out.as_mut_ptr() as *mut u8,
                        scratch.as_mut_ptr() as *mut u8,
                    )
                }
            }
        });
        let weights = baselines::AttnWeights { wq: &w[0], wk: &w[1], wv: &w[2], c: cc, d: dd };
        let mut hout = vec![0.0f32; cc * dd];
        let hand = best_time(budget, || {
            for _ in 0..CALLS {
                baselines::attn_combine(&weights, &l, std::hint::black_box(&r), &mut hout);
            }
        });
        cases.push(Case {
            name: format!("attn_agg combine C={cc} D={dd} (ns/call)"),
            ours_ns: ours.as_secs_f64() * 1e9 / CALLS as f64,
            hand_ns: hand.as_secs_f64() * 1e9 / CALLS as f64,
            identical: same(as_f32(&out, cc * dd), &hout),
        });
    }

    // exp lane by lane or scalar: one lift of `a[i] = exp(x.v[i]) * x.w[i] + x.w[i]`.
    if want("exp_lift") {
        let d = 1024usize;
        let src = "aggregator exp_lift<D = 1024> { input { v[D], w[D] } element { a[D] }
            lift(x) { a[i] = exp(x.v[i]) * x.w[i] + x.w[i]; } combine(l, r) { a[i] = l.a[i] + r.a[i]; } }";
        let module = psm_ir::front::dsl::parse(src).expect("parses");
        let info = psm_ir::valid::validate(&module, &[]).expect("validates").remove(0);
        let c = clif::compile(&module.aggregators[0], &info).unwrap();
        let (v, w) = (rng.vec(d, -1.0, 1.0), rng.vec(d, -1.0, 1.0));
        let inputs = [aligned(&v), aligned(&w)];
        let x: Vec<*const u8> = inputs.iter().map(|b| b.as_ptr() as *const u8).collect();
        let mut out = vec![0u64; c.layout.size.div_ceil(8)];
        let mut scratch = vec![0u64; c.scratch_size.div_ceil(8).max(1)];
        let ours = best_time(budget, || unsafe {
            (c.lift)(std::ptr::null(), x.as_ptr(), 0, out.as_mut_ptr() as *mut u8, scratch.as_mut_ptr() as *mut u8)
        });
        let mut a = vec![0.0f32; d];
        let hand = best_time(budget, || {
            for ((o, &v), &w) in a.iter_mut().zip(std::hint::black_box(&v)).zip(&w) {
                *o = v.exp() * w + w;
            }
        });
        cases.push(Case {
            name: format!("exp lift D={d} (ns/call)"),
            ours_ns: ours.as_secs_f64() * 1e9,
            hand_ns: hand.as_secs_f64() * 1e9,
            identical: same(as_f32(&out, d), &a),
        });
    }

    println!("{:<40} {:>12} {:>12} {:>10} {:>10}", "case", "ours ns/step", "hand ns/step", "hand/ours", "identical");
    for c in &cases {
        println!(
            "{:<40} {:>12.2} {:>12.2} {:>10.2} {:>10}",
            c.name,
            c.ours_ns,
            c.hand_ns,
            c.hand_ns / c.ours_ns,
            if c.identical { "yes" } else { "NO" }
        );
    }
}
