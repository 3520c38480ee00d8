//! Criterion benchmarks of the CPU executor: the library operators that `psmc bench
//! --suite cpu` measures, at smaller sizes, each beside the hand-written loop of
//! `psm_bench::baselines` on the same data.
//!
//! ```sh
//! cargo bench -p psm-runtime --bench cpu            # everything
//! cargo bench -p psm-runtime --bench cpu -- cumsum  # one group
//! ```
//!
//! psm runs on a rayon pool of the benchmark's thread count, with the timing loop
//! itself on a worker of that pool (as `psmc bench` does), so no iteration pays a
//! hand-off between threads. Both sides allocate their outputs in each iteration, except
//! the `run_into` / `push_into` / `hand into` rows, which reuse one output buffer.
//! `psmc bench` (BENCHMARKS.md) is the report of record: it also checks the outputs and
//! measures the copy bandwidth; this file is for quick, statistically careful A/B
//! comparisons while working on the code generator or the runtime.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use psm_bench::baselines::{self, AttnWeights};
use psm_bench::Rng;
use psm_runtime::{Aggregator, DimOverride, Form, Inputs, OutputsMut, Program, RunOptions};
use rayon::ThreadPool;

fn op(name: &str, dims: &[(&str, i64)]) -> Aggregator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops").join(format!("{name}.psm"));
    let dims: Vec<DimOverride> = dims.iter().map(|(n, v)| DimOverride { name: n.to_string(), value: *v }).collect();
    let program = Program::from_file(&path, &dims).unwrap_or_else(|e| panic!("{}", e.rendered));
    let agg = program.aggregator(name).expect("the file's aggregator");
    agg.compile().expect("compiles");
    agg
}

fn pool(threads: usize) -> ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool")
}

/// Times `agg.run` in `form` on `pool`, inside the pool.
fn bench_psm(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, id: BenchmarkId, agg: &Aggregator, inputs: &Inputs<'_>, form: Form, pool: &ThreadPool) {
    let opts = RunOptions { form, pool: Some(pool), ..Default::default() };
    agg.run(inputs, &opts).expect("runs");
    g.bench_function(id, |b| pool.install(|| b.iter(|| black_box(agg.run(black_box(inputs), &opts).expect("runs")))));
}

fn scalar_scans(c: &mut Criterion) {
    let one = pool(1);
    for (name, fields) in [("cumsum", &["v"][..]), ("scalar_affine", &["a", "b"][..]), ("logcumsumexp", &["v"][..])] {
        let agg = op(name, &[]);
        let mut g = c.benchmark_group(name);
        for t in [4096usize, 1 << 16] {
            let mut rng = Rng::new(1);
            let data: Vec<Vec<f32>> = fields.iter().map(|f| if *f == "a" { rng.vec(t, 0.5, 1.0) } else { rng.vec(t, -1.0, 1.0) }).collect();
            let mut inputs = Inputs::new(&[], t);
            for (f, d) in fields.iter().zip(&data) {
                inputs = inputs.input(f, d);
            }
            g.throughput(Throughput::Elements(t as u64));
            bench_psm(&mut g, BenchmarkId::new("psm recurrent", t), &agg, &inputs, Form::Recurrent, &one);
            // Into a reused output, beside the hand loop reusing its own.
            let opts = RunOptions { form: Form::Recurrent, pool: Some(&one), ..Default::default() };
            let out_name = agg.signature().outputs[0].name.clone();
            let mut y = vec![0.0f32; t];
            g.bench_function(BenchmarkId::new("psm run_into", t), |b| {
                one.install(|| b.iter(|| black_box(agg.run_into(&inputs, &mut OutputsMut::new().output(&out_name, &mut y), &opts).expect("runs"))))
            });
            let mut y_hand = vec![0.0f32; t];
            g.bench_function(BenchmarkId::new("hand into", t), |b| {
                b.iter(|| match name {
                    "cumsum" => baselines::cumsum(black_box(&data[0]), &mut y_hand, t),
                    "scalar_affine" => baselines::scalar_affine(black_box(&data[0]), black_box(&data[1]), &mut y_hand, t),
                    _ => baselines::logcumsumexp(black_box(&data[0]), &mut y_hand, t),
                })
            });
            g.bench_function(BenchmarkId::new("hand", t), |b| {
                b.iter(|| {
                    let mut y = vec![0.0f32; t];
                    match name {
                        "cumsum" => baselines::cumsum(black_box(&data[0]), &mut y, t),
                        "scalar_affine" => baselines::scalar_affine(black_box(&data[0]), black_box(&data[1]), &mut y, t),
                        _ => baselines::logcumsumexp(black_box(&data[0]), &mut y, t),
                    }
                    y
                })
            });
        }
        g.finish();
    }
}

fn diag_affine(c: &mut Criterion) {
    let (b, t, d) = (4usize, 1024usize, 64usize);
    let agg = op("diag_affine", &[("D", d as i64)]);
    let mut rng = Rng::new(2);
    let (a, x) = (rng.vec(b * t * d, 0.5, 1.0), rng.vec(b * t * d, -1.0, 1.0));
    let inputs = Inputs::new(&[b], t).input("a", &a).input("b", &x);
    let mut g = c.benchmark_group("diag_affine");
    g.throughput(Throughput::Elements((b * t) as u64));
    let id = format!("[{b}, {t}, {d}]");
    bench_psm(&mut g, BenchmarkId::new("psm recurrent 1 thread", &id), &agg, &inputs, Form::Recurrent, &pool(1));
    bench_psm(&mut g, BenchmarkId::new("psm recurrent 2 threads", &id), &agg, &inputs, Form::Recurrent, &pool(2));
    g.bench_function(BenchmarkId::new("hand", &id), |bch| {
        bch.iter(|| {
            let mut y = vec![0.0f32; b * t * d];
            baselines::diag_affine(black_box(&a), black_box(&x), &mut y, t, d);
            y
        })
    });
    g.finish();
}

fn gla(c: &mut Criterion) {
    let (t, k, v) = (256usize, 64usize, 64usize);
    let agg = op("gla", &[("K", k as i64), ("V", v as i64)]);
    let mut rng = Rng::new(3);
    let (q, kk, vv, alpha) = (rng.vec(t * k, -1.0, 1.0), rng.vec(t * k, -1.0, 1.0), rng.vec(t * v, -1.0, 1.0), rng.vec(t * k, 0.9, 1.0));
    let inputs = Inputs::new(&[], t).input("q", &q).input("k", &kk).input("v", &vv).input("alpha", &alpha);
    let mut g = c.benchmark_group("gla K=V=64");
    g.throughput(Throughput::Elements(t as u64));
    bench_psm(&mut g, BenchmarkId::new("psm recurrent", t), &agg, &inputs, Form::Recurrent, &pool(1));
    // Step j's inputs, for the pushes.
    let step = |j: usize| {
        Inputs::new(&[], 1)
            .input("q", &q[j * k..(j + 1) * k])
            .input("k", &kk[j * k..(j + 1) * k])
            .input("v", &vv[j * v..(j + 1) * v])
            .input("alpha", &alpha[j * k..(j + 1) * k])
    };
    g.bench_function(BenchmarkId::new("psm push per step", t), |b| {
        b.iter(|| {
            let mut s = agg.stream(&[]).open().expect("opens");
            for j in 0..t {
                black_box(s.push(&step(j)).expect("pushes"));
            }
        })
    });
    let mut o = vec![0.0f32; t * v];
    g.bench_function(BenchmarkId::new("psm push_into per step", t), |b| {
        b.iter(|| {
            let mut s = agg.stream(&[]).open().expect("opens");
            for j in 0..t {
                black_box(s.push_into(&step(j), &mut OutputsMut::new().output("o", &mut o[j * v..(j + 1) * v])).expect("pushes"));
            }
        })
    });
    g.bench_function(BenchmarkId::new("hand", t), |b| {
        b.iter(|| {
            let mut o = vec![0.0f32; t * v];
            baselines::gla(black_box(&q), &kk, &vv, &alpha, &mut o, t, k, v);
            o
        })
    });
    g.finish();
}

fn attn_agg(c: &mut Criterion) {
    let (t, cc, d) = (128usize, 8usize, 32usize);
    let agg = op("attn_agg", &[("C", cc as i64), ("D", d as i64)]);
    let mut rng = Rng::new(4);
    let (wq, wk, wv) = (rng.vec(d * d, -0.2, 0.2), rng.vec(d * d, -0.2, 0.2), rng.vec(d * d, -0.2, 0.2));
    let tok = rng.vec(t * cc * d, -1.0, 1.0);
    let inputs = Inputs::new(&[], t).input("tok", &tok).param("wq", &wq).param("wk", &wk).param("wv", &wv);
    let w = AttnWeights { wq: &wq, wk: &wk, wv: &wv, c: cc, d };
    let mut g = c.benchmark_group("attn_agg C=8 D=32");
    g.throughput(Throughput::Elements(t as u64));
    let one = pool(1);
    bench_psm(&mut g, BenchmarkId::new("psm tree 1 thread", t), &agg, &inputs, Form::Tree, &one);
    bench_psm(&mut g, BenchmarkId::new("psm tree 2 threads", t), &agg, &inputs, Form::Tree, &pool(2));
    bench_psm(&mut g, BenchmarkId::new("psm stream", t), &agg, &inputs, Form::Stream, &one);
    for (name, stream) in [("hand tree", false), ("hand stream", true)] {
        g.bench_function(BenchmarkId::new(name, t), |b| {
            b.iter(|| {
                let prefixes = if stream { baselines::attn_stream(&w, black_box(&tok)) } else { baselines::attn_tree(&w, black_box(&tok)) };
                let size = cc * d;
                let mut y = vec![0.0f32; t * size];
                for (j, p) in prefixes.iter().enumerate() {
                    baselines::attn_readout(p.as_deref(), &tok[j * size..(j + 1) * size], &mut y[j * size..(j + 1) * size], cc, d);
                }
                y
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = scalar_scans, diag_affine, gla, attn_agg
}
criterion_main!(benches);
