//! The experiments behind BENCHMARKS.md's explanations of the targets psm misses:
//! where the time goes, measured on the machine that runs them.
//!
//! ```sh
//! cargo run --release -p psm-bench --example breakdown -- overhead   # fixed cost per call, per push
//! cargo run --release -p psm-bench --example breakdown -- push       # GLA K=V=64: run of T steps, push of N steps
//! cargo run --release -p psm-bench --example breakdown -- alloc      # output allocation at DRAM sizes (cumsum, 2^26)
//! cargo run --release -p psm-bench --example breakdown -- diag       # diag_affine [4, 4096, 64] at 1 and 2 threads
//! cargo run --release -p psm-bench --example breakdown -- small      # L1-sized runs: run / run_into vs the hand loop
//! cargo run --release -p psm-bench --example breakdown -- passes     # aggregate scan vs scan with outputs (the chunked form's cost)
//! cargo run --release -p psm-bench --example breakdown -- split      # one sequence on 2 threads: chunked splits vs recurrent
//! cargo run --release -p psm-bench --example breakdown -- chain      # ns per step of the loop-carried chains
//! cargo run --release -p psm-bench --example breakdown -- elu        # linear attention's feature map: libm exp vs a vector polynomial
//! # instructions per step: run under valgrind at two sizes and subtract
//! valgrind --tool=cachegrind --cache-sim=no --smc-check=all \
//!     target/release/examples/breakdown count psm|hand|none cumsum|scalar_affine N
//! ```
//!
//! psm runs inside a pool of the stated thread count, as in `psmc bench`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use psm_bench::{baselines, best_time, Rng};
use psm_runtime::{Aggregator, DimOverride, Form, Inputs, OutputsMut, Program, RunOptions};
use rayon::prelude::*;
use rayon::ThreadPool;

fn op(name: &str, dims: &[(&str, i64)]) -> Aggregator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops").join(format!("{name}.psm"));
    let dims: Vec<DimOverride> = dims.iter().map(|(n, v)| DimOverride { name: n.to_string(), value: *v }).collect();
    let program = Program::from_file(&path, &dims).unwrap_or_else(|e| panic!("{}", e.rendered));
    let agg = program.aggregator(name).expect("the file's aggregator");
    agg.compile().expect("compiles");
    agg
}

fn us(d: Duration) -> String {
    format!("{:.3} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ns_per(d: Duration, n: usize) -> String {
    format!("{:.2} ns", d.as_secs_f64() / n as f64 * 1e9)
}

/// The recurrent form on `pool`.
fn on(pool: &ThreadPool) -> RunOptions<'_> {
    RunOptions { form: Form::Recurrent, pool: Some(pool), ..Default::default() }
}

/// An output zero-filled the way psm-runtime's `Buffer::try_zeros` does it.
fn zero_filled(n: usize) -> Vec<f32> {
    let mut y = Vec::new();
    y.try_reserve_exact(n).expect("memory");
    y.resize(n, 0.0);
    y
}

/// The data of the "passes" and "split" studies: three scalar scans over 2^20 steps and
/// GLA (K = V = 64) over 4096.
struct ScanData {
    a: Vec<f32>,
    x: Vec<f32>,
    q: Vec<f32>,
    alpha: Vec<f32>,
}

const SCAN_STEPS: usize = 1 << 20;
const GLA_STEPS: usize = 4096;

impl ScanData {
    fn new(seed: u64) -> ScanData {
        let mut rng = Rng::new(seed);
        let (a, x) = (rng.vec(SCAN_STEPS, 0.5, 1.0), rng.vec(SCAN_STEPS, -1.0, 1.0));
        let (q, alpha) = (rng.vec(GLA_STEPS * 64, -1.0, 1.0), rng.vec(GLA_STEPS * 64, 0.9, 1.0));
        ScanData { a, x, q, alpha }
    }

    /// (label, operator, inputs, steps) per case.
    fn cases(&self) -> Vec<(&'static str, Aggregator, Inputs<'_>, usize)> {
        let (n, gn) = (SCAN_STEPS, GLA_STEPS);
        let (a, x, q, al) = (&self.a, &self.x, &self.q, &self.alpha);
        vec![
            ("cumsum [2^20]", op("cumsum", &[]), Inputs::new(&[], n).input("v", x), n),
            ("scalar_affine [2^20]", op("scalar_affine", &[]), Inputs::new(&[], n).input("a", a).input("b", x), n),
            ("logcumsumexp [2^20]", op("logcumsumexp", &[]), Inputs::new(&[], n).input("v", x), n),
            (
                "gla K=V=64 [4096]",
                op("gla", &[("K", 64), ("V", 64)]),
                Inputs::new(&[], gn).input("q", q).input("k", q).input("v", q).input("alpha", al),
                gn,
            ),
        ]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("", String::as_str);
    let budget = Duration::from_millis(300);
    let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("a pool");
    let (one, two): (ThreadPool, ThreadPool) = (pool(1), pool(2));
    match what {
        "overhead" => {
            let cumsum = op("cumsum", &[]);
            let v = [1.0f32];
            let inputs = Inputs::new(&[], 1).input("v", &v);
            let o1 = on(&one);
            let t = one.install(|| best_time(budget, || drop(black_box(cumsum.run(&inputs, &o1).expect("runs")))));
            println!("cumsum, run of 1 step inside a 1-thread pool: {}", us(t));
            let outside = RunOptions { form: Form::Recurrent, threads: Some(1), ..Default::default() };
            let t = best_time(budget, || drop(black_box(cumsum.run(&inputs, &outside).expect("runs"))));
            println!("cumsum, run of 1 step with threads: Some(1) from outside the pool: {}", us(t));
            let t = best_time(budget, || {
                let mut y = vec![0.0f32; 1];
                baselines::cumsum(black_box(&v), &mut y, 1);
                black_box(y);
            });
            println!("hand cumsum of 1 step: {}", us(t));
            let n = 4096;
            let xs = vec![0.5f32; n];
            let t = best_time(budget, || {
                let mut s = cumsum.stream(&[]).open().expect("opens");
                for j in 0..n {
                    black_box(s.push(&Inputs::new(&[], 1).input("v", &xs[j..j + 1])).expect("pushes"));
                }
            });
            println!("cumsum, one push per step: {} per step", ns_per(t, n));
            let mut ys = vec![0.0f32; n];
            let t = best_time(budget, || {
                let mut s = cumsum.stream(&[]).open().expect("opens");
                for j in 0..n {
                    let outputs = &mut OutputsMut::new().output("v", &mut ys[j..j + 1]);
                    black_box(s.push_into(&Inputs::new(&[], 1).input("v", &xs[j..j + 1]), outputs).expect("pushes"));
                }
            });
            println!("cumsum, one push_into per step: {} per step", ns_per(t, n));
            let mut y = [0.0f32];
            let t = one.install(|| {
                best_time(budget, || {
                    black_box(cumsum.run_into(&inputs, &mut OutputsMut::new().output("v", &mut y), &o1).expect("runs"));
                })
            });
            println!("cumsum, run_into of 1 step inside a 1-thread pool: {}", us(t));
        }
        "push" => {
            let (k, v, n) = (64usize, 64usize, 4096usize);
            let gla = op("gla", &[("K", k as i64), ("V", v as i64)]);
            let ex = gla.executor().expect("compiles");
            println!("gla K=V=64: element {} bytes, scratch {} bytes", ex.kernels().layout().size, ex.kernels().scratch_size());
            let mut rng = Rng::new(3);
            let (q, kk, vv, al) = (rng.vec(n * k, -1., 1.), rng.vec(n * k, -1., 1.), rng.vec(n * v, -1., 1.), rng.vec(n * k, 0.9, 1.));
            let steps = |j0: usize, j1: usize| {
                Inputs::new(&[], j1 - j0)
                    .input("q", &q[j0 * k..j1 * k])
                    .input("k", &kk[j0 * k..j1 * k])
                    .input("v", &vv[j0 * v..j1 * v])
                    .input("alpha", &al[j0 * k..j1 * k])
            };
            let o1 = on(&one);
            for t in [1usize, 2, 4, 16, 256, 4096] {
                let inputs = steps(0, t);
                let d = one.install(|| best_time(budget, || drop(black_box(gla.run(&inputs, &o1).expect("runs")))));
                println!("gla, run of T = {t}: {} ({} per step)", us(d), ns_per(d, t));
            }
            for chunk in [1usize, 4, 16] {
                let d = best_time(budget, || {
                    let mut s = gla.stream(&[]).open().expect("opens");
                    for j in (0..n).step_by(chunk) {
                        black_box(s.push(&steps(j, j + chunk)).expect("pushes"));
                    }
                });
                println!("gla, pushes of {chunk} steps: {} per step", ns_per(d, n));
            }
            let mut o = vec![0.0f32; n * v];
            let d = best_time(budget, || {
                let mut s = gla.stream(&[]).open().expect("opens");
                for j in 0..n {
                    let outputs = &mut OutputsMut::new().output("o", &mut o[j * v..(j + 1) * v]);
                    black_box(s.push_into(&steps(j, j + 1), outputs).expect("pushes"));
                }
            });
            println!("gla, push_into of 1 step, outputs in the caller's buffer: {} per step", ns_per(d, n));
            let d = best_time(budget, || {
                let mut s = vec![0.0f32; k * v];
                let mut o = vec![0.0f32; n * v];
                for j in 0..n {
                    let (a, b) = (j * k..(j + 1) * k, j * v..(j + 1) * v);
                    baselines::gla_step(&mut s, &q[a.clone()], &kk[a.clone()], &vv[b.clone()], &al[a], &mut o[b], k, v);
                }
                black_box(o);
            });
            println!("hand gla_step: {} per step", ns_per(d, n));
            let words = ex.kernels().layout().size / 8;
            // The kernels alone, every buffer allocated once: the floor a push can reach.
            let kern = ex.kernels();
            let mut scratch = vec![0u64; kern.scratch_size().div_ceil(8)];
            let (mut state, mut next, mut elem) = (vec![0u64; words], vec![0u64; words], vec![0u64; words]);
            let mut o = vec![0.0f32; n * v];
            let params: [*const u8; 0] = [];
            let ptrs = |j: usize| [q[j * k..].as_ptr() as *const u8, kk[j * k..].as_ptr() as *const u8, vv[j * v..].as_ptr() as *const u8, al[j * k..].as_ptr() as *const u8];
            let d = best_time(budget, || {
                for j in 0..n {
                    let ins = ptrs(j);
                    let outs = [o[j * v..].as_mut_ptr() as *mut u8];
                    // SAFETY: buffers of the layout's and scratch's sizes; one step of each input and output.
                    unsafe { kern.scan(params.as_ptr(), ins.as_ptr(), outs.as_ptr(), 0, 1, state.as_mut_ptr() as *mut u8, psm_runtime::kernels::HAS_STATE | psm_runtime::kernels::WRITE_OUTPUTS, scratch.as_mut_ptr() as *mut u8) };
                }
                black_box(&mut o);
            });
            println!("gla, the scan kernel over 1 step per call, buffers reused: {} per step", ns_per(d, n));
            let d = best_time(budget, || {
                for j in 0..n {
                    let ins = ptrs(j);
                    let outs = [o[j * v..].as_mut_ptr() as *mut u8];
                    // SAFETY: as above; three distinct element buffers.
                    unsafe {
                        let (sp, pp) = (scratch.as_mut_ptr() as *mut u8, params.as_ptr());
                        kern.lift(pp, ins.as_ptr(), 0, elem.as_mut_ptr() as *mut u8, sp);
                        kern.combine(pp, state.as_ptr() as *const u8, elem.as_ptr() as *const u8, next.as_mut_ptr() as *mut u8, sp);
                        kern.readout(pp, next.as_ptr() as *const u8, ins.as_ptr(), 0, outs.as_ptr(), false, sp);
                    }
                    std::mem::swap(&mut state, &mut next);
                }
                black_box(&mut o);
            });
            println!("gla, lift + combine + readout per step, states swapped: {} per step", ns_per(d, n));
            let mut e = vec![0u64; words];
            let d = best_time(budget, || {
                black_box(vec![0u64; words]);
                black_box(black_box(&e).clone());
                e[0] += 1;
            });
            println!("allocating a zeroed element and cloning one: {}", us(d));
        }
        "alloc" => {
            let n: usize = args.get(2).map_or(1 << 26, |s| s.parse().expect("a length"));
            let v = Rng::new(1).vec(n, -1.0, 1.0);
            let run = |y: &mut [f32]| baselines::cumsum(black_box(&v), y, n);
            let calloc = best_time(budget, || {
                let mut y = vec![0.0f32; n];
                run(&mut y);
                black_box(y);
            });
            let filled = best_time(budget, || {
                let mut y = zero_filled(n);
                run(&mut y);
                black_box(y);
            });
            let fill_only = best_time(budget, || drop(black_box(zero_filled(n))));
            let mut y = vec![0.0f32; n];
            let reused = best_time(budget, || {
                run(&mut y);
                black_box(&mut y);
            });
            let cumsum = op("cumsum", &[]);
            let inputs = Inputs::new(&[], n).input("v", &v);
            let o1 = on(&one);
            let psm = one.install(|| best_time(budget, || drop(black_box(cumsum.run(&inputs, &o1).expect("runs")))));
            println!("cumsum over {n} steps, 1 thread:");
            println!("  hand, output vec![0.0; n] (calloc):         {}", ms(calloc));
            println!("  hand, output reserved + zero-filled (psm's): {}", ms(filled));
            println!("  hand, output reused:                         {}", ms(reused));
            println!("  the reserve + zero-fill alone:               {}", ms(fill_only));
            println!("  psm, recurrent:                              {}", ms(psm));
            let (b, t) = (4usize, n / 4);
            let inputs = Inputs::new(&[b], t).input("v", &v[..b * t]);
            let o2 = on(&two);
            let psm1 = one.install(|| best_time(budget, || drop(black_box(cumsum.run(&inputs, &o1).expect("runs")))));
            let psm2 = two.install(|| best_time(budget, || drop(black_box(cumsum.run(&inputs, &o2).expect("runs")))));
            let hand2 = |fill: bool| {
                two.install(|| {
                    best_time(budget, || {
                        let mut y = if fill { zero_filled(b * t) } else { vec![0.0f32; b * t] };
                        y.par_chunks_mut(t).zip(v.par_chunks(t)).for_each(|(y, v)| baselines::cumsum(v, y, t));
                        black_box(y);
                    })
                })
            };
            println!("cumsum [{b}, {t}]: psm 1 thread {} / 2 threads {}", ms(psm1), ms(psm2));
            println!("  hand at 2 threads, output vec![0.0; n]: {} / reserved + zero-filled: {}", ms(hand2(false)), ms(hand2(true)));
        }
        "diag" => {
            let (b, t, d) = (4usize, 4096usize, 64usize);
            let (n, seq) = (b * t * d, t * d);
            let mut rng = Rng::new(9);
            let (a, x) = (rng.vec(n, 0.5, 1.0), rng.vec(n, -1.0, 1.0));
            let diag = op("diag_affine", &[("D", d as i64)]);
            let inputs = Inputs::new(&[b], t).input("a", &a).input("b", &x);
            let (o1, o2) = (on(&one), on(&two));
            let p1 = one.install(|| best_time(budget, || drop(black_box(diag.run(&inputs, &o1).expect("runs")))));
            let p2 = two.install(|| best_time(budget, || drop(black_box(diag.run(&inputs, &o2).expect("runs")))));
            println!("diag_affine [{b}, {t}, {d}], psm: 1 thread {} / 2 threads {}", us(p1), us(p2));
            let run = |y: &mut [f32], par: bool| {
                let one_seq = |i: usize, y: &mut [f32]| baselines::diag_affine(&a[i * seq..(i + 1) * seq], &x[i * seq..(i + 1) * seq], y, t, d);
                if par {
                    y.par_chunks_mut(seq).enumerate().for_each(|(i, y)| one_seq(i, y));
                } else {
                    y.chunks_mut(seq).enumerate().for_each(|(i, y)| one_seq(i, y));
                }
            };
            for (label, par, p) in [("1 thread", false, &one), ("2 threads", true, &two)] {
                let mut y = vec![0.0f32; n];
                let reused = p.install(|| best_time(budget, || run(black_box(&mut y), par)));
                let calloc = p.install(|| {
                    best_time(budget, || {
                        let mut y = vec![0.0f32; n];
                        run(&mut y, par);
                        black_box(y);
                    })
                });
                let filled = p.install(|| {
                    best_time(budget, || {
                        let mut y = zero_filled(n);
                        run(&mut y, par);
                        black_box(y);
                    })
                });
                println!("  hand, {label}: output reused {} / vec![0.0; n] {} / reserved + zero-filled {}", us(reused), us(calloc), us(filled));
            }
            println!("  the reserve + zero-fill of the output alone: {}", us(best_time(budget, || drop(black_box(zero_filled(n))))));
        }
        "small" => {
            // L1-sized runs: psm's run (allocating its outputs) and run_into (a reused
            // output buffer) against the hand loop allocating or reusing its output.
            let mut rng = Rng::new(11);
            let (a, x) = (rng.vec(4 * 16 * 64, 0.5, 1.0), rng.vec(4 * 16 * 64, -1.0, 1.0));
            let o1 = on(&one);
            type Hand<'a> = Box<dyn Fn(&mut [f32]) + 'a>;
            let cases: Vec<(&str, Aggregator, Inputs<'_>, &str, usize, Hand<'_>)> = vec![
                ("cumsum [4096]", op("cumsum", &[]), Inputs::new(&[], 4096).input("v", &x), "v", 4096, Box::new(|y| baselines::cumsum(black_box(&x), y, 4096))),
                (
                    "scalar_affine [4096]",
                    op("scalar_affine", &[]),
                    Inputs::new(&[], 4096).input("a", &a).input("b", &x),
                    "y",
                    4096,
                    Box::new(|y| baselines::scalar_affine(black_box(&a), black_box(&x), y, 4096)),
                ),
                (
                    "diag_affine [4, 16, 64]",
                    op("diag_affine", &[("D", 64)]),
                    Inputs::new(&[4], 16).input("a", &a).input("b", &x),
                    "y",
                    4096,
                    Box::new(|y| baselines::diag_affine(black_box(&a), black_box(&x), y, 16, 64)),
                ),
            ];
            for (label, agg, inputs, out, n, hand) in &cases {
                let mut y = vec![0.0f32; *n];
                let run = one.install(|| best_time(budget, || drop(black_box(agg.run(inputs, &o1).expect("runs")))));
                let into = one.install(|| {
                    best_time(budget, || {
                        black_box(agg.run_into(inputs, &mut OutputsMut::new().output(out, &mut y), &o1).expect("runs"));
                    })
                });
                let hand_alloc = best_time(budget, || {
                    let mut y = vec![0.0f32; *n];
                    hand(&mut y);
                    black_box(y);
                });
                let hand_reused = best_time(budget, || {
                    hand(&mut y);
                    black_box(&mut y);
                });
                println!(
                    "{label}: psm run {} / run_into {}; hand allocating {} / reusing {}; hand/psm {:.2} (allocating) {:.2} (reusing)",
                    us(run),
                    us(into),
                    us(hand_alloc),
                    us(hand_reused),
                    hand_alloc.as_secs_f64() / run.as_secs_f64(),
                    hand_reused.as_secs_f64() / into.as_secs_f64()
                );
            }
        }
        "calls" => {
            // For a profiler: run_into of one cumsum step, over and over.
            let cumsum = op("cumsum", &[]);
            let (v, mut y) = ([1.0f32], [0.0f32]);
            let o1 = on(&one);
            one.install(|| {
                for _ in 0..2_000_000 {
                    black_box(cumsum.run_into(&Inputs::new(&[], 1).input("v", &v), &mut OutputsMut::new().output("v", &mut y), &o1).expect("runs"));
                }
            });
        }
        "passes" => {
            // The cost of an aggregate scan (no readouts, no stores) against a scan with
            // outputs, per step, at 1 thread: chunked with 2 chunks of T/2 runs no
            // aggregate (the head and the last chunk need none), with 4 chunks of T/4
            // it also runs the aggregates of the 2 middle chunks (T/2 steps).
            let data = ScanData::new(13);
            let cases = data.cases();
            for (label, agg, inputs, steps) in &cases {
                let time = |chunk: usize| {
                    let opts = RunOptions { form: Form::Chunked, chunk: Some(chunk), pool: Some(&one), ..Default::default() };
                    one.install(|| best_time(budget, || drop(black_box(agg.run(inputs, &opts).expect("runs")))))
                };
                let (halves, quarters) = (time(steps / 2), time(steps / 4));
                let with_outputs = halves.as_secs_f64() / *steps as f64;
                let aggregate = (quarters.as_secs_f64() - halves.as_secs_f64()) / (*steps as f64 / 2.0);
                println!(
                    "{label}: scan with outputs {:.2} ns/step, aggregate scan {:.2} ns/step: ratio {:.2}; 2-thread bound (r + 2) / (r + 1) = {:.2}",
                    with_outputs * 1e9,
                    aggregate * 1e9,
                    aggregate / with_outputs,
                    (aggregate / with_outputs + 2.0) / (aggregate / with_outputs + 1.0)
                );
            }
        }
        "split" => {
            // One sequence on 2 threads: the chunked form with the auto split (a head and
            // two chunks) against uniform chunks (the head one chunk), each against the
            // recurrent form at 1 thread; the rounds interleave so that load on the
            // machine hits every variant alike.
            let data = ScanData::new(17);
            let cases = data.cases();
            let short = Duration::from_millis(100);
            for (label, agg, inputs, steps) in &cases {
                let variants: [(&str, Form, Option<usize>, &ThreadPool); 4] = [
                    ("recurrent, 1 thread", Form::Recurrent, None, &one),
                    ("chunked auto, 2 threads", Form::Chunked, None, &two),
                    ("chunked T/8, 2 threads", Form::Chunked, Some(steps / 8), &two),
                    ("chunked T/3, 2 threads", Form::Chunked, Some(steps.div_ceil(3)), &two),
                ];
                let mut best = [Duration::MAX; 4];
                for _ in 0..4 {
                    for (k, (_, form, chunk, pool)) in variants.iter().enumerate() {
                        let opts = RunOptions { form: *form, chunk: *chunk, pool: Some(pool), ..Default::default() };
                        let t = pool.install(|| best_time(short, || drop(black_box(agg.run(inputs, &opts).expect("runs")))));
                        best[k] = best[k].min(t);
                    }
                }
                let base = best[0].as_secs_f64();
                let text: Vec<String> =
                    variants.iter().zip(&best).map(|((name, ..), t)| format!("{name} {} ({:.2}x)", ms(*t), base / t.as_secs_f64())).collect();
                println!("{label}: {}", text.join("; "));
            }
        }
        "chain" => {
            let (n, reps) = (4096usize, 64usize);
            let mut rng = Rng::new(5);
            let (a, b) = (rng.vec(n, 0.5, 1.0), rng.vec(n, -1.0, 1.0));
            let o1 = on(&one);
            let mut y = vec![0.0f32; n];
            for (name, inputs) in [
                ("scalar_affine", Inputs::new(&[], n).input("a", &a).input("b", &b)),
                ("cumsum", Inputs::new(&[], n).input("v", &b)),
            ] {
                let agg = op(name, &[]);
                let psm = one.install(|| {
                    best_time(budget, || {
                        for _ in 0..reps {
                            drop(black_box(agg.run(&inputs, &o1).expect("runs")));
                        }
                    })
                });
                let hand = best_time(budget, || {
                    for _ in 0..reps {
                        match name {
                            "cumsum" => baselines::cumsum(black_box(&b), &mut y, n),
                            _ => baselines::scalar_affine(black_box(&a), black_box(&b), &mut y, n),
                        }
                        black_box(&mut y);
                    }
                });
                println!("{name}, {n} steps: psm {} per step, hand (reused output) {} per step", ns_per(psm, reps * n), ns_per(hand, reps * n));
            }
        }
        "elu" => {
            // Linear attention's feature map, elu(x) + 1 = if x > 0 { x + 1 } else { exp(x) },
            // over its k and q at T = 4096, K = 64 (rows of 64, a call per row, as the map
            // is evaluated), with each exp psm could use: libm's `expf`, lane by lane (what
            // the JIT calls), and the vectorizing polynomial `exp_approx` compiled for
            // 4, 8 and 16 lanes. What the map costs bounds issue 6's CPU ratio for linear
            // attention (docs/chunkwise.md).
            let (rows, k) = (2 * 4096, 64);
            let x = Rng::new(9).vec(rows * k, -1.0, 1.0);
            let mut y = vec![0.0f32; rows * k];
            let libm = |x: &[f32], y: &mut [f32]| elu_rows(x, y, f32::exp);
            type Map = fn(&[f32], &mut [f32]);
            let mut variants: Vec<(&str, Map)> = vec![("libm expf", libm), ("polynomial, SSE2", elu_poly_sse2)];
            if std::is_x86_feature_detected!("avx2") {
                variants.push(("polynomial, AVX2", elu_poly_avx2));
            }
            if std::is_x86_feature_detected!("avx512f") {
                variants.push(("polynomial, AVX-512F", elu_poly_avx512));
            }
            for (name, map) in variants {
                let t = best_time(budget, || {
                    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(k)) {
                        map(black_box(xr), yr);
                    }
                    black_box(&mut y);
                });
                println!("{name:<22} {} ({} an entry)", ms(t), ns_per(t, rows * k));
            }
        }
        "count" => {
            // One run of one side, for instruction counts under valgrind.
            let (side, name) = (args[2].as_str(), args[3].as_str());
            let n: usize = args[4].parse().expect("a length");
            let mut rng = Rng::new(5);
            let (a, b) = (rng.vec(n, 0.5, 1.0), rng.vec(n, -1.0, 1.0));
            let mut y = vec![0.0f32; n];
            match (side, name) {
                ("psm", _) => {
                    let agg = op(name, &[]);
                    let inputs = if name == "scalar_affine" {
                        Inputs::new(&[], n).input("a", &a).input("b", &b)
                    } else {
                        Inputs::new(&[], n).input("v", &b)
                    };
                    let o1 = on(&one);
                    one.install(|| drop(black_box(agg.run(&inputs, &o1).expect("runs"))));
                }
                ("hand", "scalar_affine") => baselines::scalar_affine(&a, &b, &mut y, n),
                ("hand", _) => baselines::cumsum(&b, &mut y, n),
                _ => {}
            }
            black_box(y);
        }
        _ => eprintln!("usage: breakdown overhead | push | alloc [N] | diag | small | passes | split | chain | elu | count psm|hand|none cumsum|scalar_affine N"),
    }
}

/// `y = elu(x) + 1` with `exp` computed for every lane and selected (as the JIT does).
#[inline(always)]
fn elu_rows(x: &[f32], y: &mut [f32], exp: impl Fn(f32) -> f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        let e = exp(x);
        *y = if x > 0.0 { x + 1.0 } else { e };
    }
}

/// [`elu_rows`] with psm-runtime's polynomial exp, in x86-64's baseline 4-lane vectors
/// (SSE2), the width of the JIT's vectors.
fn elu_poly_sse2(x: &[f32], y: &mut [f32]) {
    elu_rows(x, y, psm_runtime::chunkwise::exp_approx)
}

/// [`elu_rows`] with the polynomial exp in 8-lane vectors; called only where AVX2 is detected.
fn elu_poly_avx2(x: &[f32], y: &mut [f32]) {
    #[target_feature(enable = "avx2")]
    unsafe fn go(x: &[f32], y: &mut [f32]) {
        elu_rows(x, y, psm_runtime::chunkwise::exp_approx)
    }
    // SAFETY: listed only when `is_x86_feature_detected!("avx2")`.
    unsafe { go(x, y) }
}

/// [`elu_rows`] with the polynomial exp in 16-lane vectors; called only where AVX-512F is detected.
fn elu_poly_avx512(x: &[f32], y: &mut [f32]) {
    #[target_feature(enable = "avx512f")]
    unsafe fn go(x: &[f32], y: &mut [f32]) {
        elu_rows(x, y, psm_runtime::chunkwise::exp_approx)
    }
    // SAFETY: listed only when `is_x86_feature_detected!("avx512f")`.
    unsafe { go(x, y) }
}
