//! Run options: reverse scans, initial and final states across segments, threads and
//! pools, the `auto` form, batch shapes, non-finite data.

mod common;

use common::*;
use psm_ir::ir::Role;
use psm_runtime::{Aggregator, Buffer, Form, Inputs, Outputs, RunOptions};

fn out_bits(o: &Outputs) -> Vec<Vec<u64>> {
    o.tensors().iter().map(|t| bits(&t.data.to_f64())).collect()
}

fn all_forms(agg: &Aggregator) -> Vec<Form> {
    if agg.associative() {
        vec![Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream]
    } else {
        vec![Form::Tree, Form::Stream]
    }
}

/// Flips each sequence of `[nseq, n, len]` buffers along T.
fn flip(bufs: &[Buffer], lens: &[usize], nseq: usize, n: usize) -> Vec<Buffer> {
    bufs.iter()
        .zip(lens)
        .map(|(b, &len)| {
            let v = b.to_f64();
            let mut out = Vec::with_capacity(v.len());
            for s in 0..nseq {
                for t in (0..n).rev() {
                    let at = (s * n + t) * len;
                    out.extend_from_slice(&v[at..at + len]);
                }
            }
            to_buffer(b.dtype(), &out)
        })
        .collect()
}

#[test]
fn reverse_equals_the_forward_scan_of_the_flipped_sequence() {
    let ops: [(&str, &[(&str, i64)]); 5] = [
        ("gla", &[("K", 4), ("V", 4)]),
        ("attn_agg", &[("C", 2), ("D", 4)]),
        ("rwkv6", &[("K", 4), ("V", 4)]),
        ("causal_mean", &[("D", 3)]),
        ("subtract", &[]),
    ];
    for (name, dims) in ops {
        let base = load(name, dims);
        for agg in backends(&base) {
            for n in [0usize, 1, 6, 37] {
                let data = Batch::new(&agg, 2, n, 77);
                let bufs = data.input_bufs(&agg, 2, n);
                let flipped = flip(&bufs, &lens(&agg, Role::Input), 2, n);
                for form in all_forms(&agg) {
                    let opts = RunOptions { form, chunk: Some(4), reverse: true, final_state: true, ..Default::default() };
                    let rev = agg.run(&inputs(&agg, &[2], n, &bufs, &data.param_bufs), &opts).unwrap();
                    let opts = RunOptions { form, chunk: Some(4), final_state: true, ..Default::default() };
                    let fwd = agg.run(&inputs(&agg, &[2], n, &flipped, &data.param_bufs), &opts).unwrap();
                    let back: Vec<Buffer> = fwd.tensors().iter().map(|t| t.data.clone()).collect();
                    let back = flip(&back, &lens(&agg, Role::Output), 2, n);
                    let rev_bits: Vec<Vec<u64>> = rev.tensors().iter().map(|t| bits(&t.data.to_f64())).collect();
                    let back_bits: Vec<Vec<u64>> = back.iter().map(|b| bits(&b.to_f64())).collect();
                    assert_eq!(rev_bits, back_bits, "{name} {form:?} n = {n}");
                    assert_eq!(rev.final_state(), fwd.final_state(), "{name} {form:?} n = {n}");
                }
            }
        }
    }
}

#[test]
fn segments_chained_through_final_and_initial_states() {
    // Associative: the recurrent form over two segments chained by the state is the
    // recurrent form over the whole sequence, bit for bit.
    let base = load("mamba2", &[("K", 4), ("V", 4)]);
    for agg in backends(&base) {
        let data = Batch::new(&agg, 3, 90, 4);
        let all = data.input_bufs(&agg, 3, 90);
        let opts = RunOptions { form: Form::Recurrent, final_state: true, ..Default::default() };
        let whole = agg.run(&inputs(&agg, &[3], 90, &all, &data.param_bufs), &opts).unwrap();
        let head = data.window_bufs(&agg, 3, 0, 40);
        let a = agg.run(&inputs(&agg, &[3], 40, &head, &data.param_bufs), &opts).unwrap();
        let tail = data.window_bufs(&agg, 3, 40, 90);
        let opts2 = RunOptions { form: Form::Recurrent, final_state: true, initial_state: a.final_state(), ..Default::default() };
        let b = agg.run(&inputs(&agg, &[3], 50, &tail, &data.param_bufs), &opts2).unwrap();
        assert_eq!(b.final_state(), whole.final_state());
        let y_whole = whole.f32("y").unwrap();
        let y_b = b.f32("y").unwrap();
        let v = 4;
        for s in 0..3 {
            assert_eq!(&y_b[s * 50 * v..(s + 1) * 50 * v], &y_whole[(s * 90 + 40) * v..(s + 1) * 90 * v]);
        }
        // Every other form agrees within the tolerance, from the same state.
        for form in [Form::Chunked, Form::Tree, Form::Stream] {
            let o = RunOptions { form, chunk: Some(7), initial_state: a.final_state(), ..Default::default() };
            let c = agg.run(&inputs(&agg, &[3], 50, &tail, &data.param_bufs), &o).unwrap();
            let got: Vec<f64> = c.f32("y").unwrap().iter().map(|&x| x as f64).collect();
            let want: Vec<f64> = y_b.iter().map(|&x| x as f64).collect();
            close(&format!("mamba2 {form:?} from a state"), &got, &want, v, false, tolerance(90));
        }
    }
}

#[test]
fn threads_and_pools_do_not_change_results() {
    let ops: [(&str, &[(&str, i64)]); 2] = [("linear_attention", &[("K", 4), ("V", 4)]), ("attn_agg", &[("C", 2), ("D", 4)])];
    for (name, dims) in ops {
        let base = load(name, dims);
        for agg in backends(&base) {
            let data = Batch::new(&agg, 3, 300, 9);
            let bufs = data.input_bufs(&agg, 3, 300);
            let x = inputs(&agg, &[3], 300, &bufs, &data.param_bufs);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            for form in all_forms(&agg) {
                let base_opts = RunOptions { form, chunk: Some(16), ..Default::default() };
                let reference = out_bits(&agg.run(&x, &base_opts).unwrap());
                for threads in [1, 2, 4] {
                    let o = RunOptions { threads: Some(threads), ..base_opts.clone() };
                    assert_eq!(out_bits(&agg.run(&x, &o).unwrap()), reference, "{name} {form:?} threads {threads}");
                }
                let o = RunOptions { pool: Some(&pool), ..base_opts.clone() };
                assert_eq!(out_bits(&agg.run(&x, &o).unwrap()), reference, "{name} {form:?} pool");
                let installed = pool.install(|| agg.run(&x, &base_opts).unwrap());
                assert_eq!(out_bits(&installed), reference, "{name} {form:?} installed pool");
            }
        }
    }
}

#[test]
fn auto_picks_a_valid_form() {
    let gla = load("gla", &[("K", 2), ("V", 2)]);
    let data = Batch::new(&gla, 4, 5000, 1);
    let run = |nseq: usize, n: usize, threads: usize| {
        let bufs = data.input_bufs(&gla, nseq, n);
        let o = RunOptions { threads: Some(threads), ..Default::default() };
        gla.run(&inputs(&gla, &[nseq], n, &bufs, &data.param_bufs), &o).unwrap()
    };
    assert_eq!(run(1, 100, 4).form(), Form::Recurrent, "short sequences");
    assert_eq!(run(4, 5000, 4).form(), Form::Recurrent, "batch ≥ threads");
    let long = run(1, 5000, 4);
    assert_eq!(long.form(), Form::Chunked, "one long sequence");
    assert!(long.chunk().unwrap() >= 256);
    assert_eq!(run(1, 5000, 1).form(), Form::Recurrent, "one thread");
    let sub = load("subtract", &[]);
    let v = vec![1.0f32; 10];
    assert_eq!(sub.run(&Inputs::new(&[], 10).input("v", &v), &RunOptions::default()).unwrap().form(), Form::Tree);
}

#[test]
fn batch_shapes_empty_batches_and_empty_sequences() {
    let base = load("online_softmax", &[("D", 3)]);
    for agg in backends(&base) {
        let data = Batch::new(&agg, 6, 11, 12);
        let flat = {
            let bufs = data.input_bufs(&agg, 6, 11);
            agg.run(&inputs(&agg, &[6], 11, &bufs, &data.param_bufs), &RunOptions::default()).unwrap()
        };
        let bufs = data.input_bufs(&agg, 6, 11);
        let shaped = agg.run(&inputs(&agg, &[2, 3], 11, &bufs, &data.param_bufs), &RunOptions::default()).unwrap();
        assert_eq!(shaped.tensor("y").unwrap().shape, vec![2, 3, 11, 3]);
        assert_eq!(shaped.get("y"), flat.get("y"));
        for form in all_forms(&agg) {
            let opts = RunOptions { form, final_state: true, ..Default::default() };
            // No sequences at all.
            let bufs = data.input_bufs(&agg, 0, 11);
            let o = agg.run(&inputs(&agg, &[0, 4], 11, &bufs, &data.param_bufs), &opts).unwrap();
            assert_eq!(o.tensor("y").unwrap().shape, vec![0, 4, 11, 3]);
            assert!(o.get("y").unwrap().is_empty());
            // Empty sequences: no outputs, and no final state (no identity declared).
            let bufs = data.input_bufs(&agg, 6, 0);
            let o = agg.run(&inputs(&agg, &[6], 0, &bufs, &data.param_bufs), &opts).unwrap();
            assert!(o.get("y").unwrap().is_empty());
            assert!(o.final_state().is_none());
            assert_eq!(o.stats().combines, 0);
        }
    }
}

#[test]
fn non_finite_data_flows_through() {
    let base = load("cumsum", &[]);
    for agg in backends(&base) {
        let v = [1.0f32, f32::NAN, 2.0, f32::INFINITY, f32::NEG_INFINITY, 3.0];
        for form in all_forms(&agg) {
            let o = agg.run(&Inputs::new(&[], 6).input("v", &v), &RunOptions { form, chunk: Some(2), ..Default::default() }).unwrap();
            let y = o.f32("v").unwrap();
            assert_eq!(y[0], 1.0);
            assert!(y[1..].iter().all(|x| x.is_nan()), "{form:?}: {y:?}");
        }
    }
    let base = load("logcumsumexp", &[]);
    for agg in backends(&base) {
        let v = [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, f32::INFINITY];
        for form in all_forms(&agg) {
            let o = agg.run(&Inputs::new(&[], 4).input("v", &v), &RunOptions { form, ..Default::default() }).unwrap();
            let y = o.f32("y").unwrap();
            assert_eq!(y.len(), 4, "{form:?}");
        }
    }
    let base = load("attn_agg", &[("C", 2), ("D", 2)]);
    for agg in backends(&base) {
        let mut tok = vec![0.5f32; 5 * 4];
        tok[6] = f32::NAN;
        let w = vec![0.1f32; 4];
        let x = Inputs::new(&[], 5).input("tok", &tok).param("wq", &w).param("wk", &w).param("wv", &w);
        let t = agg.run(&x, &RunOptions { form: Form::Tree, ..Default::default() }).unwrap();
        let s = agg.run(&x, &RunOptions { form: Form::Stream, ..Default::default() }).unwrap();
        assert_eq!(out_bits(&t), out_bits(&s));
        assert!(t.f32("y").unwrap().iter().any(|v| v.is_nan()));
    }
}

#[test]
fn stats_count_combines() {
    let base = load("cumsum", &[]);
    let agg = &base;
    let v = vec![1.0f32; 3 * 100];
    let x = Inputs::new(&[3], 100).input("v", &v);
    let rec = agg.run(&x, &RunOptions { form: Form::Recurrent, ..Default::default() }).unwrap();
    assert_eq!(rec.stats().combines, 3 * 99);
    assert_eq!(rec.stats().peak_elements, 1);
    let ch = agg.run(&x, &RunOptions { form: Form::Chunked, chunk: Some(10), ..Default::default() }).unwrap();
    // Phase 1: the head (chunk 0) with its outputs, 9, and the aggregates of chunks
    // 1..8, 8 × 9; phase 2: 8 carries combined; phase 3: chunks 1..9, 9 × 10.
    assert_eq!(ch.stats().combines, 3 * (9 + 72 + 8 + 90));
    assert_eq!(ch.stats().peak_elements, 19);
    // The tree builds only the complete blocks: as many combines as psm-ir's reference
    // tree at powers of two, fewer elsewhere (the reference also combines partial
    // blocks that no prefix reads).
    for n in [64usize, 100] {
        let v = vec![1.0f32; 3 * n];
        let x = Inputs::new(&[3], n).input("v", &v);
        let tree = agg.run(&x, &RunOptions { form: Form::Tree, ..Default::default() }).unwrap();
        let r = psm_ir::derive::run(
            agg.ir(),
            agg.info(),
            psm_ir::interp::FloatDomain::new(psm_ir::interp::Precision::Declared),
            psm_ir::derive::Form::Tree,
            &[],
            &[vec![1.0; n]],
            n,
        )
        .unwrap();
        if n == 64 {
            assert_eq!(tree.stats().combines, 3 * r.stats.combines);
        } else {
            assert!(tree.stats().combines < 3 * r.stats.combines);
        }
        // Up-sweep n − popcount(n) (complete blocks), down-sweep n − (⌊log2 n⌋ + 1) (one
        // copy per level where the flagged identity is the left operand).
        let exact = 2 * n - n.count_ones() as usize - n.ilog2() as usize - 1;
        assert_eq!(tree.stats().combines, 3 * exact as u64);
        assert!(tree.stats().combines_per_step() < 2.0);
    }
}

/// `run_into` writes exactly what `run` returns, in every form, and its summary is the
/// run's (stats, form, chunk, final state); the caller's buffers are overwritten.
#[test]
fn run_into_equals_run() {
    for (name, dims) in [("gla", &[("K", 3), ("V", 2)][..]), ("causal_mean", &[("D", 2)]), ("attn_agg", &[("C", 2), ("D", 2)])] {
        let base = load(name, dims);
        for agg in backends(&base) {
            let (nseq, n) = (3, 37);
            let data = Batch::new(&agg, nseq, n, 12);
            let bufs = data.input_bufs(&agg, nseq, n);
            let x = inputs(&agg, &[nseq], n, &bufs, &data.param_bufs);
            for form in all_forms(&agg) {
                for threads in [1, 2] {
                    let opts = RunOptions { form, chunk: Some(5), final_state: true, threads: Some(threads), ..Default::default() };
                    let want = agg.run(&x, &opts).unwrap();
                    let mut outs: Vec<Buffer> = want.tensors().iter().map(|t| to_buffer(t.data.dtype(), &vec![9.0; t.data.len()])).collect();
                    let mut given = psm_runtime::OutputsMut::new();
                    for (t, b) in want.tensors().iter().zip(outs.iter_mut()) {
                        given = given.output(&t.name, b);
                    }
                    let summary = agg.run_into(&x, &mut given, &opts).unwrap();
                    let got: Vec<Vec<u64>> = outs.iter().map(|b| bits(&b.to_f64())).collect();
                    assert_eq!(got, out_bits(&want), "{name} {form:?} {threads} threads");
                    assert_eq!(summary.stats(), want.stats());
                    assert_eq!((summary.form(), summary.chunk()), (want.form(), want.chunk()));
                    assert_eq!(summary.final_state(), want.final_state());
                }
            }
        }
    }
}
