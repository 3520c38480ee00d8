//! The chunkwise form against psm's recurrent form, in one run, on every library
//! operator the chunkwise derivation applies to (issue 6's CPU target: ≥ 3× at
//! T = 4096, K = V = 64).
//!
//! ```sh
//! cargo run --release -p psm-bench --example chunkwise -- [T] [rounds] [budget_ms] [threads] [batch] [operator] [chunk]
//! ```
//!
//! Defaults: T = 4096, 3 rounds, 300 ms per timing, 1 thread, batch 1, every operator,
//! chunks of `psm_runtime::chunkwise::DEFAULT_CHUNK` steps. Each round times
//! both forms of every operator (best of repeated runs, `psm_bench::best_time`) on the
//! same seeded data in a pool of `threads` threads and prints the ratio recurrent /
//! chunkwise; the rounds show how much the shared machine disturbs it. Each row also
//! gives ‖chunkwise − recurrent‖ / ‖recurrent‖ over all outputs.
//!
//! Data: gates of the scalar and diagonal decays close to 1 as trained models have
//! them (GLA's alpha in [0.9, 1), RetNet's gamma 0.97, Mamba-2's A in [-0.2, 0),
//! RWKV-6's wlog in [-6, -2), Gated DeltaNet's g in [-0.1, 0), mLSTM's forget-gate
//! pre-activation in [3, 6)); everything else in [-1, 1).

use std::path::PathBuf;
use std::time::Duration;

use psm_bench::{best_time, Rng};
use psm_runtime::{Aggregator, DimOverride, Form, Inputs, Program, RunOptions};

const OPERATORS: [&str; 8] = ["linear_attention", "retnet", "mamba2", "mlstm_affine", "gla", "rwkv6", "deltanet", "gated_deltanet"];

fn op(name: &str) -> Aggregator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops").join(format!("{name}.psm"));
    let dims = [("K", 64), ("V", 64)].map(|(n, v)| DimOverride { name: n.to_string(), value: v });
    Program::from_file(path, &dims).unwrap_or_else(|e| panic!("{e}")).aggregator(name).unwrap()
}

/// Data by tensor name.
type Named = Vec<(String, Vec<f32>)>;

fn range(field: &str) -> (f32, f32) {
    match field {
        "alpha" => (0.9, 1.0),
        "gamma" => (0.97, 0.970001),
        "A" => (-0.2, 0.0),
        "wlog" => (-6.0, -2.0),
        "g" => (-0.1, 0.0),
        "f_pre" => (3.0, 6.0),
        _ => (-1.0, 1.0),
    }
}

fn arg(args: &[String], k: usize, default: usize) -> usize {
    args.get(k).map_or(default, |a| a.parse().unwrap_or_else(|_| panic!("argument {k}: a number, not `{a}`")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (steps, rounds, budget_ms, threads, nseq) = (arg(&args, 0, 4096), arg(&args, 1, 3), arg(&args, 2, 300), arg(&args, 3, 1), arg(&args, 4, 1));
    let budget = Duration::from_millis(budget_ms as u64);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let chunk = args.get(6).map(|_| arg(&args, 6, 0));
    let shown = chunk.unwrap_or(psm_runtime::chunkwise::DEFAULT_CHUNK);
    println!("T = {steps}, K = V = 64, batch {nseq}, {threads} thread(s), chunk {shown}, best of {budget_ms} ms per timing");
    println!("{:<17} {:>5} {:>14} {:>14} {:>8} {:>14} {:>12}", "operator", "round", "recurrent ms", "chunkwise ms", "ratio", "feature map ms", "rel. diff");
    let only = args.get(5).filter(|o| *o != "all");
    let ops: Vec<(Aggregator, Named, Named)> = OPERATORS
        .iter()
        .enumerate()
        .filter(|(_, name)| only.is_none_or(|o| o == *name))
        .map(|(s, name)| {
            let agg = op(name);
            let sig = agg.signature();
            let mut rng = Rng::new(s as u64 + 1);
            let data = |specs: &[psm_runtime::FieldSpec], per: usize, rng: &mut Rng| -> Named {
                specs.iter().map(|f| (f.name.clone(), { let (lo, hi) = range(&f.name); rng.vec(per * f.len, lo, hi) })).collect()
            };
            let params = data(&sig.params, 1, &mut rng);
            let inputs = data(&sig.inputs, nseq * steps, &mut rng);
            (agg, params, inputs)
        })
        .collect();
    for round in 1..=rounds {
        for (agg, params, data) in &ops {
            let mut x = Inputs::new(&[nseq], steps);
            for (n, v) in data {
                x = x.input(n, &v[..]);
            }
            for (n, v) in params {
                x = x.param(n, &v[..]);
            }
            let run = |form| {
                let opts = RunOptions { form, pool: Some(&pool), chunk: chunk.filter(|_| form == Form::Chunkwise), ..Default::default() };
                let out = agg.run(&x, &opts).unwrap_or_else(|e| panic!("{}: {e}", agg.name()));
                let time = pool.install(|| best_time(budget, || drop(agg.run(&x, &opts).unwrap())));
                (out, time)
            };
            // The feature map alone: the part of the chunkwise time that is not matrix products.
            let t_map = agg.chunkwise().unwrap().features.as_ref().map_or(Duration::ZERO, |src| {
                let features = Program::from_source(src, &[]).unwrap();
                let features = features.aggregator(features.names()[0]).unwrap();
                let map_opts = RunOptions { form: Form::Recurrent, pool: Some(&pool), ..Default::default() };
                pool.install(|| best_time(budget, || drop(features.run(&x, &map_opts).unwrap())))
            });
            let (rec, t_rec) = run(Form::Recurrent);
            let (cw, t_cw) = run(Form::Chunkwise);
            let (mut diff, mut size) = (0.0f64, 0.0f64);
            for t in rec.tensors() {
                let (a, b) = (t.data.as_f32().unwrap(), cw.get(&t.name).unwrap().as_f32().unwrap());
                diff += a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>();
                size += a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
            }
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{:<17} {:>5} {:>14.3} {:>14.3} {:>7.2}x {:>14.3} {:>12.1e}",
                agg.name(),
                round,
                ms(t_rec),
                ms(t_cw),
                t_rec.as_secs_f64() / t_cw.as_secs_f64(),
                ms(t_map),
                (diff / size).sqrt()
            );
        }
    }
}
