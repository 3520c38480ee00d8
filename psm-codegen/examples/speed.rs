//! ns/step of the fused `scan` (one thread) against the hand-written loops of
//! `psm-bench`, with the outputs checked bit for bit against them.
//!
//! `cargo run -p psm-codegen --release --example speed -- [FILTER] [--budget-ms N]
//! [--no-state-out] [--flags F] [--op PATH]`
//!
//! * FILTER selects cases by substring;
//! * the scan flags are WRITE_OUTPUTS, plus NO_STATE_OUT with `--no-state-out`, or
//!   exactly F with `--flags` (given last);
//! * ours and the hand-written loop are timed in alternating rounds (best of each), so
//!   that a change in the machine's load hits both;
//! * `--op PATH` also times the scan of any aggregator (its inputs uniform in
//!   (0.5, 1)), without a hand-written counterpart.

use std::time::Duration;

use psm_bench::baselines;
use psm_bench::{best_time, Rng};
use psm_codegen::clif::{self, Compiled, NO_STATE_OUT, WRITE_OUTPUTS};
use psm_ir::ir::{Aggregator, Role};
use psm_ir::valid::{DimOverride, Info};

const ROUNDS: u32 = 4;

fn load_source(source: &str, dims: &[(&str, i64)]) -> (Aggregator, Info) {
    let module = psm_ir::front::dsl::parse(source).expect("parses");
    let overrides: Vec<DimOverride> =
        dims.iter().map(|&(n, v)| DimOverride { name: n.to_string(), value: v }).collect();
    let infos = psm_ir::valid::validate(&module, &overrides).expect("validates");
    (module.aggregators[0].clone(), infos[0].clone())
}

fn load(name: &str, dims: &[(&str, i64)]) -> (Aggregator, Info) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/ops/{name}.psm"));
    load_source(&std::fs::read_to_string(path).expect("library operator"), dims)
}

/// An 8-byte aligned copy of f32 values.
fn aligned(values: &[f32]) -> Vec<u64> {
    let mut b = vec![0u64; values.len().div_ceil(2).max(1)];
    // SAFETY: `b` holds at least `values.len()` f32s.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), b.as_mut_ptr() as *mut f32, values.len()) };
    b
}

fn as_f32(b: &[u64], n: usize) -> &[f32] {
    assert!(n <= 2 * b.len());
    // SAFETY: in bounds (checked above), u64 alignment exceeds f32's.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, n) }
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// One scan's buffers.
struct Scan<'c> {
    c: &'c Compiled,
    params: Vec<Vec<u64>>,
    inputs: Vec<Vec<u64>>,
    outs: Vec<Vec<u64>>,
    scratch: Vec<u64>,
    state: Vec<u64>,
    steps: usize,
    flags: u32,
}

impl<'c> Scan<'c> {
    fn new(
        c: &'c Compiled,
        params: Vec<Vec<u64>>,
        inputs: Vec<Vec<u64>>,
        out_lens: &[usize],
        steps: usize,
        flags: u32,
    ) -> Self {
        Scan {
            c,
            params,
            inputs,
            outs: out_lens.iter().map(|&n| vec![0u64; (n * steps).div_ceil(2)]).collect(),
            scratch: vec![0u64; c.scratch_size.div_ceil(8).max(1)],
            state: vec![0u64; c.layout.size.div_ceil(8).max(1)],
            steps,
            flags,
        }
    }

    fn run(&mut self) {
        let p: Vec<*const u8> = self.params.iter().map(|b| b.as_ptr() as *const u8).collect();
        let x: Vec<*const u8> = self.inputs.iter().map(|b| b.as_ptr() as *const u8).collect();
        let o: Vec<*mut u8> = self.outs.iter_mut().map(|b| b.as_mut_ptr() as *mut u8).collect();
        // SAFETY: every buffer has the size the ABI asks for.
        let r = unsafe {
            (self.c.scan)(
                p.as_ptr(),
                x.as_ptr(),
                o.as_ptr(),
                0,
                self.steps as u64,
                self.state.as_mut_ptr() as *mut u8,
                self.flags,
                self.scratch.as_mut_ptr() as *mut u8,
            )
        };
        std::hint::black_box(r);
    }
}

/// Best times (ns) of `ours` and `hand`, in alternating rounds.
fn compare(budget: Duration, ours: &mut dyn FnMut(), hand: &mut dyn FnMut()) -> (f64, f64) {
    let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..ROUNDS {
        a = a.min(best_time(budget / ROUNDS, &mut *ours).as_secs_f64() * 1e9);
        b = b.min(best_time(budget / ROUNDS, &mut *hand).as_secs_f64() * 1e9);
    }
    (a, b)
}

/// An operator over one sequence: its dims, steps, the range of each f32 input, and the
/// hand-written loop (inputs, outputs).
struct ScanCase {
    name: &'static str,
    dims: Vec<(&'static str, i64)>,
    steps: usize,
    ranges: Vec<(f32, f32)>,
    hand: Box<HandLoop>,
}

/// A hand-written loop: (inputs, outputs).
type HandLoop = dyn Fn(&[Vec<f32>], &mut [f32]);

struct Case {
    name: String,
    ours_ns: f64,
    hand_ns: f64,
    identical: bool,
}

fn main() {
    let mut filter = String::new();
    let mut budget = Duration::from_millis(800);
    let mut flags = WRITE_OUTPUTS;
    let mut op_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--budget-ms" => budget = Duration::from_millis(args.next().expect("ms").parse().expect("ms")),
            "--flags" => flags = args.next().expect("flags").parse().expect("flags"),
            "--no-state-out" => flags |= NO_STATE_OUT,
            "--op" => op_path = Some(args.next().expect("path")),
            _ => filter = a,
        }
    }
    let want = |n: &str| n.contains(filter.as_str());
    let mut cases: Vec<Case> = Vec::new();
    let mut rng = Rng::new(42);

    let mut scans: Vec<ScanCase> = Vec::new();
    {
        let t = 65536;
        scans.push(ScanCase {
            name: "cumsum",
            dims: vec![],
            steps: t,
            ranges: vec![(-1.0, 1.0)],
            hand: Box::new(move |x, y| baselines::cumsum(&x[0], y, t)),
        });
        scans.push(ScanCase {
            name: "scalar_affine",
            dims: vec![],
            steps: t,
            ranges: vec![(0.5, 1.0), (-1.0, 1.0)],
            hand: Box::new(move |x, y| baselines::scalar_affine(&x[0], &x[1], y, t)),
        });
        for (d, t) in [(64usize, 16384usize), (1024, 4096)] {
            scans.push(ScanCase {
                name: "diag_affine",
                dims: vec![("D", d as i64)],
                steps: t,
                ranges: vec![(0.5, 1.0), (-1.0, 1.0)],
                hand: Box::new(move |x, y| baselines::diag_affine(&x[0], &x[1], y, t, d)),
            });
        }
        scans.push(ScanCase {
            name: "logcumsumexp",
            dims: vec![],
            steps: t,
            ranges: vec![(-1.0, 1.0)],
            hand: Box::new(move |x, y| baselines::logcumsumexp(&x[0], y, t)),
        });
        let (kd, vd, t) = (64usize, 64usize, 4096usize);
        scans.push(ScanCase {
            name: "gla",
            dims: vec![("K", kd as i64), ("V", vd as i64)],
            steps: t,
            ranges: vec![(-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0), (0.5, 1.0)],
            hand: Box::new(move |x, y| baselines::gla(&x[0], &x[1], &x[2], &x[3], y, t, kd, vd)),
        });
    }
    for ScanCase { name, dims, steps: t, ranges, hand } in &scans {
        let label = format!("{name}{} T={t}", dims.iter().map(|(d, v)| format!(" {d}={v}")).collect::<String>());
        if !want(&label) {
            continue;
        }
        let (agg, info) = load(name, dims);
        let c = clif::compile(&agg, &info).expect("compiles");
        let x: Vec<Vec<f32>> =
            agg.tensors_of(Role::Input).zip(ranges).map(|(f, &(lo, hi))| rng.vec(t * info.len(f), lo, hi)).collect();
        let out_lens: Vec<usize> = agg.tensors_of(Role::Output).map(|f| info.len(f)).collect();
        assert_eq!(out_lens.len(), 1, "one output");
        let out_len = out_lens[0];
        let mut scan = Scan::new(&c, Vec::new(), x.iter().map(|v| aligned(v)).collect(), &out_lens, *t, flags);
        let mut y = vec![0.0f32; t * out_len];
        let (ours, hand_ns) = compare(budget, &mut || scan.run(), &mut || hand(std::hint::black_box(&x), &mut y));
        cases.push(Case {
            name: label,
            ours_ns: ours / *t as f64,
            hand_ns: hand_ns / *t as f64,
            identical: flags & WRITE_OUTPUTS == 0 || same(as_f32(&scan.outs[0], t * out_len), &y),
        });
    }

    // attn_agg: one combine call.
    if want("attn_agg") {
        let (cc, dd) = (8usize, 32usize);
        let (agg, info) = load("attn_agg", &[("C", cc as i64), ("D", dd as i64)]);
        let c = clif::compile(&agg, &info).expect("compiles");
        let w: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(dd * dd, -0.3, 0.3)).collect();
        let (l, r) = (rng.vec(cc * dd, -1.0, 1.0), rng.vec(cc * dd, -1.0, 1.0));
        let params: Vec<Vec<u64>> = w.iter().map(|x| aligned(x)).collect();
        let p: Vec<*const u8> = params.iter().map(|b| b.as_ptr() as *const u8).collect();
        let (lb, rb) = (aligned(&l), aligned(&r));
        let mut out = vec![0u64; c.layout.size.div_ceil(8)];
        let mut scratch = vec![0u64; c.scratch_size.div_ceil(8).max(1)];
        const CALLS: u32 = 100;
        let weights = baselines::AttnWeights { wq: &w[0], wk: &w[1], wv: &w[2], c: cc, d: dd };
        let mut hout = vec![0.0f32; cc * dd];
        let (ours, hand) = compare(
            budget,
            &mut || {
                for _ in 0..CALLS {
                    // SAFETY: buffers of the ABI's sizes.
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
            },
            &mut || {
                for _ in 0..CALLS {
                    baselines::attn_combine(&weights, &l, std::hint::black_box(&r), &mut hout);
                }
            },
        );
        cases.push(Case {
            name: format!("attn_agg combine C={cc} D={dd} (ns/call)"),
            ours_ns: ours / CALLS as f64,
            hand_ns: hand / CALLS as f64,
            identical: same(as_f32(&out, cc * dd), &hout),
        });
    }

    // A host function lane by lane: one lift of `a[i] = exp(v[i]) * w[i] + w[i]`.
    if want("exp_lift") {
        let d = 1024usize;
        let (agg, info) = load_source(
            "aggregator exp_lift<D = 1024> { input { v[D], w[D] } element { a[D] }
             lift(x) { a[i] = exp(x.v[i]) * x.w[i] + x.w[i]; } combine(l, r) { a[i] = l.a[i] + r.a[i]; } }",
            &[],
        );
        let c = clif::compile(&agg, &info).expect("compiles");
        let (v, w) = (rng.vec(d, -1.0, 1.0), rng.vec(d, -1.0, 1.0));
        let inputs = [aligned(&v), aligned(&w)];
        let x: Vec<*const u8> = inputs.iter().map(|b| b.as_ptr() as *const u8).collect();
        let mut out = vec![0u64; c.layout.size.div_ceil(8)];
        let mut scratch = vec![0u64; c.scratch_size.div_ceil(8).max(1)];
        let mut a = vec![0.0f32; d];
        let (ours, hand) = compare(
            budget,
            // SAFETY: buffers of the ABI's sizes; the lift reads no param.
            &mut || unsafe {
                (c.lift)(std::ptr::null(), x.as_ptr(), 0, out.as_mut_ptr() as *mut u8, scratch.as_mut_ptr() as *mut u8)
            },
            &mut || {
                for ((o, &v), &w) in a.iter_mut().zip(std::hint::black_box(&v)).zip(&w) {
                    *o = v.exp() * w + w;
                }
            },
        );
        cases.push(Case {
            name: format!("exp lift D={d} (ns/call)"),
            ours_ns: ours,
            hand_ns: hand,
            identical: same(as_f32(&out, d), &a),
        });
    }

    if let Some(path) = &op_path {
        let t = 16384usize;
        let (agg, info) = load_source(&std::fs::read_to_string(path).expect("readable"), &[]);
        let c = clif::compile(&agg, &info).expect("compiles");
        let inputs: Vec<Vec<u64>> =
            agg.tensors_of(Role::Input).map(|x| aligned(&rng.vec(t * info.len(x), 0.5, 1.0))).collect();
        let out_lens: Vec<usize> = agg.tensors_of(Role::Output).map(|f| info.len(f)).collect();
        let mut scan = Scan::new(&c, Vec::new(), inputs, &out_lens, t, flags);
        let ours = best_time(budget, || scan.run()).as_secs_f64() * 1e9;
        cases.push(Case { name: path.clone(), ours_ns: ours / t as f64, hand_ns: f64::NAN, identical: true });
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
