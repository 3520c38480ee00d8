//! Streams: push-by-push outputs equal the tree form's (bit for bit, non-associative),
//! stats within the bounds of DESIGN.md §1 and equal to psm-ir's `Stream`, and the
//! prefill → stream hand-off equal to a stream run from scratch.

mod common;

use common::*;
use psm_ir::derive::Form as RefForm;
use psm_ir::interp::Precision;
use psm_ir::ir::Role;
use psm_runtime::{Aggregator, Buffer, Form, Outputs, RunOptions, Stream};

fn out_bits(o: &Outputs) -> Vec<Vec<u64>> {
    o.tensors().iter().map(|t| bits(&t.data.to_f64())).collect()
}

/// Outputs of a sequence of pushes, concatenated per sequence along T, as bits.
fn concat_steps(agg: &Aggregator, nseq: usize, pieces: &[Outputs]) -> Vec<Vec<u64>> {
    let out_lens = lens(agg, Role::Output);
    (0..out_lens.len())
        .map(|k| {
            let mut v = Vec::new();
            for b in 0..nseq {
                for p in pieces {
                    let unit = p.steps() * out_lens[k];
                    v.extend(seq_slice(&p.tensors()[k].data, b, unit));
                }
            }
            bits(&v)
        })
        .collect()
}

/// Pushes steps j0..j1 one at a time.
fn push_each(agg: &Aggregator, s: &mut Stream, data: &Batch, batch: &[usize], nseq: usize, j0: usize, j1: usize) -> Vec<Outputs> {
    (j0..j1)
        .map(|j| {
            let bufs = data.window_bufs(agg, nseq, j, j + 1);
            s.push(&inputs(agg, batch, 1, &bufs, &[])).unwrap()
        })
        .collect()
}

fn open(agg: &Aggregator, batch: &[usize], data: &Batch) -> Stream {
    let mut b = agg.stream(batch);
    for (name, buf) in names(agg, Role::Param).iter().zip(&data.param_bufs) {
        b = b.param(name, buf);
    }
    b.open().unwrap()
}

const NON_ASSOCIATIVE: [(&str, &[(&str, i64)]); 5] = [
    ("subtract", &[]),
    ("tanh_rnn", &[("D", 4)]),
    ("attn_agg", &[("C", 2), ("D", 4)]),
    ("average", &[]),
    ("lse_missing_rescale", &[]),
];

#[test]
fn pushes_equal_the_tree_and_stats_stay_within_bounds() {
    for (name, dims) in NON_ASSOCIATIVE {
        let base = load(name, dims);
        for agg in backends(&base) {
            let n = 300;
            let data = Batch::new(&agg, 2, n, 17);
            let mut s = open(&agg, &[2], &data);
            let mut pieces = Vec::new();
            for j in 0..n {
                let bufs = data.window_bufs(&agg, 2, j, j + 1);
                pieces.push(s.push(&inputs(&agg, &[2], 1, &bufs, &[])).unwrap());
                let st = s.stats();
                let steps = (j + 1) as u64;
                assert_eq!(st.steps, steps);
                assert!(st.combines <= 2 * steps, "{name}: {} combines after {steps} steps", st.combines);
                let log = (u64::BITS - steps.leading_zeros()) as usize; // ⌈log2(steps + 1)⌉
                assert!(st.peak_elements <= 2 * log, "{name}: peak {} after {steps} steps", st.peak_elements);
            }
            assert_eq!(s.position(), n as u64);
            // Equal to psm-ir's stream, count for count.
            let reference = reference(&agg, Precision::Declared, RefForm::Stream, &data.params, &data.first(&agg, 0, n), n);
            assert_eq!(s.stats().combines, reference.stats.combines, "{name}");
            assert_eq!(s.stats().peak_elements, reference.stats.peak_elements, "{name}");
            assert!(s.stats().combines_per_step() < 2.0);
            // Bit-identical to the tree form over the whole sequence.
            let bufs = data.input_bufs(&agg, 2, n);
            let tree = agg
                .run(&inputs(&agg, &[2], n, &bufs, &data.param_bufs), &RunOptions { form: Form::Tree, ..Default::default() })
                .unwrap();
            assert_eq!(concat_steps(&agg, 2, &pieces), out_bits(&tree), "{name} {:?}: pushes vs tree", agg.backend());
            // And the prefix is the tree's final state.
            let fin = agg
                .run(
                    &inputs(&agg, &[2], n, &bufs, &data.param_bufs),
                    &RunOptions { form: Form::Tree, final_state: true, ..Default::default() },
                )
                .unwrap();
            assert_eq!(s.prefix().as_ref(), fin.final_state(), "{name}");
        }
    }
}

#[test]
fn associative_streams_hold_one_element() {
    let base = load("gla", &[("K", 4), ("V", 4)]);
    for agg in backends(&base) {
        let n = 50;
        let data = Batch::new(&agg, 1, n, 3);
        let mut s = open(&agg, &[], &data);
        assert!(s.prefix().is_none());
        let pieces = push_each(&agg, &mut s, &data, &[], 1, 0, n);
        assert_eq!(s.stats().steps, n as u64);
        assert_eq!(s.stats().combines, n as u64 - 1);
        assert_eq!(s.stats().peak_elements, 1);
        // The running element is the recurrent scan, bit for bit.
        let bufs = data.input_bufs(&agg, 1, n);
        let rec = agg
            .run(&inputs(&agg, &[], n, &bufs, &data.param_bufs), &RunOptions { form: Form::Recurrent, ..Default::default() })
            .unwrap();
        assert_eq!(concat_steps(&agg, 1, &pieces), out_bits(&rec));
    }
}

#[test]
fn multi_step_pushes_equal_single_steps() {
    let base = load("attn_agg", &[("C", 2), ("D", 4)]);
    for agg in backends(&base) {
        let data = Batch::new(&agg, 3, 40, 8);
        let mut a = open(&agg, &[3], &data);
        let single = push_each(&agg, &mut a, &data, &[3], 3, 0, 40);
        let mut b = open(&agg, &[3], &data);
        let mut multi = Vec::new();
        for (j0, j1) in [(0, 0), (0, 5), (5, 6), (6, 23), (23, 40)] {
            let bufs = data.window_bufs(&agg, 3, j0, j1);
            multi.push(b.push(&inputs(&agg, &[3], j1 - j0, &bufs, &[])).unwrap());
        }
        assert_eq!(concat_steps(&agg, 3, &single), concat_steps(&agg, 3, &multi));
        assert_eq!(a.stats(), b.stats());
    }
}

/// A tree (or stream) pass over n steps with prefill, then m pushes, equals a stream
/// from scratch over n + m steps and a tree over n + m steps, bit for bit.
#[test]
fn prefill_hand_off_equals_a_stream_from_scratch() {
    for (name, dims) in NON_ASSOCIATIVE {
        let base = load(name, dims);
        for agg in backends(&base) {
            let total = 80;
            let data = Batch::new(&agg, 2, total, 23);
            let bufs = data.input_bufs(&agg, 2, total);
            let full = agg
                .run(&inputs(&agg, &[2], total, &bufs, &data.param_bufs), &RunOptions { form: Form::Tree, ..Default::default() })
                .unwrap();
            let mut scratch = open(&agg, &[2], &data);
            let from_scratch = push_each(&agg, &mut scratch, &data, &[2], 2, 0, total);
            assert_eq!(concat_steps(&agg, 2, &from_scratch), out_bits(&full), "{name}: stream vs tree");
            for n in [0usize, 1, 2, 5, 8, 13, 32, 64, 79] {
                for form in [Form::Tree, Form::Stream] {
                    let head = data.window_bufs(&agg, 2, 0, n);
                    let mut pre = agg
                        .run(
                            &inputs(&agg, &[2], n, &head, &data.param_bufs),
                            &RunOptions { form, prefill: true, ..Default::default() },
                        )
                        .unwrap();
                    let mut s = Stream::from_prefill(pre.take_prefill().unwrap());
                    assert_eq!(s.position(), n as u64);
                    let mut pieces = vec![pre];
                    pieces.extend(push_each(&agg, &mut s, &data, &[2], 2, n, total));
                    assert_eq!(concat_steps(&agg, 2, &pieces), out_bits(&full), "{name} {form:?}: prefill of {n} steps");
                    assert_eq!(s.prefix(), scratch.prefix(), "{name} {form:?}: prefix after prefill of {n}");
                }
            }
        }
    }
}

#[test]
fn associative_prefill_continues_from_the_final_state() {
    for (name, dims) in [("gla", &[("K", 4), ("V", 4)][..]), ("cumsum", &[]), ("online_softmax", &[("D", 4)])] {
        let base = load(name, dims);
        for agg in backends(&base) {
            let total = 120;
            let data = Batch::new(&agg, 1, total, 5);
            let all = data.input_bufs(&agg, 1, total);
            let rec = agg
                .run(&inputs(&agg, &[], total, &all, &data.param_bufs), &RunOptions { form: Form::Recurrent, ..Default::default() })
                .unwrap();
            let reference = reference(&agg, Precision::F64, RefForm::Fold, &data.params, &data.first(&agg, 0, total), total);
            for form in [Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream] {
                let n = 70;
                let head = data.window_bufs(&agg, 1, 0, n);
                let mut pre = agg
                    .run(
                        &inputs(&agg, &[], n, &head, &data.param_bufs),
                        &RunOptions { form, chunk: Some(8), prefill: true, ..Default::default() },
                    )
                    .unwrap();
                let mut s = Stream::from_prefill(pre.take_prefill().unwrap());
                let mut pieces = vec![pre];
                pieces.extend(push_each(&agg, &mut s, &data, &[], 1, n, total));
                let got = concat_steps(&agg, 1, &pieces);
                if matches!(form, Form::Recurrent | Form::Stream) {
                    assert_eq!(got, out_bits(&rec), "{name} {form:?}: the same fold, bit for bit");
                }
                let out_lens = lens(&agg, Role::Output);
                for (k, g) in got.iter().enumerate() {
                    let g: Vec<f64> = g.iter().map(|&b| f64::from_bits(b)).collect();
                    close(&format!("{name} {form:?}"), &g, &reference.outputs[k], out_lens[k], false, tolerance(total));
                }
            }
        }
    }
}

#[test]
fn initial_state_opens_a_stream_like_it_starts_a_run() {
    // Non-associative: s0 is the left end of every prefix's fold, in the tree and in
    // the stream alike.
    let base = load("tanh_rnn", &[("D", 4)]);
    for agg in backends(&base) {
        let n = 45;
        let data = Batch::new(&agg, 2, 2 * n, 31);
        // s0: the final state of a first segment.
        let head = data.window_bufs(&agg, 2, 0, n);
        let first = agg
            .run(&inputs(&agg, &[2], n, &head, &data.param_bufs), &RunOptions { final_state: true, ..Default::default() })
            .unwrap();
        let s0 = first.final_state().unwrap().clone();
        let tail = data.window_bufs(&agg, 2, n, 2 * n);
        let x = inputs(&agg, &[2], n, &tail, &data.param_bufs);
        let tree = agg.run(&x, &RunOptions { form: Form::Tree, initial_state: Some(&s0), final_state: true, ..Default::default() }).unwrap();
        let stream = agg.run(&x, &RunOptions { form: Form::Stream, initial_state: Some(&s0), final_state: true, ..Default::default() }).unwrap();
        assert_eq!(out_bits(&tree), out_bits(&stream));
        assert_eq!(tree.final_state(), stream.final_state());
        let mut b = agg.stream(&[2]).initial_state(&s0);
        for (name, buf) in names(&agg, Role::Param).iter().zip(&data.param_bufs) {
            b = b.param(name, buf);
        }
        let mut s = b.open().unwrap();
        assert_eq!(s.prefix().as_ref(), Some(&s0));
        let pieces = push_each(&agg, &mut s, &data, &[2], 2, n, 2 * n);
        // push_each indexes the data from step n: compare with the tail run.
        assert_eq!(concat_steps(&agg, 2, &pieces), out_bits(&tree));
        // Tree with prefill from s0 hands off too.
        let mut pre = agg.run(&x, &RunOptions { form: Form::Tree, initial_state: Some(&s0), prefill: true, ..Default::default() }).unwrap();
        let cont = Stream::from_prefill(pre.take_prefill().unwrap());
        assert_eq!(cont.prefix(), s.prefix());
    }
}

#[test]
fn subtract_with_an_initial_state_follows_the_documented_bracketing() {
    // p_t = (((s0 • B1) • B2) • ...) over the aligned blocks of t's binary
    // decomposition, largest first; y_t (inclusive) reads p_{t+1}.
    let base = load("subtract", &[]);
    for agg in backends(&base) {
        let xs: Vec<f32> = (0..23).map(|t| ((t * 7 % 11) as f32) * 0.37 - 1.0).collect();
        let s0 = psm_runtime::State::new(&[]).field("v", vec![0.25f32]);
        fn block(xs: &[f32], start: usize, size: usize) -> f32 {
            if size == 1 {
                xs[start]
            } else {
                block(xs, start, size / 2) - block(xs, start + size / 2, size / 2)
            }
        }
        let expected: Vec<f32> = (1..=xs.len())
            .map(|i| {
                let mut acc = 0.25f32;
                let mut start = 0;
                for k in (0..usize::BITS).rev() {
                    if i >> k & 1 == 1 {
                        acc -= block(&xs, start, 1 << k);
                        start += 1 << k;
                    }
                }
                acc
            })
            .collect();
        for form in [Form::Tree, Form::Stream] {
            let out = agg
                .run(
                    &psm_runtime::Inputs::new(&[], xs.len()).input("v", &xs),
                    &RunOptions { form, initial_state: Some(&s0), ..Default::default() },
                )
                .unwrap();
            assert_eq!(out.f32("v").unwrap(), &expected[..], "{form:?}");
        }
    }
}

#[test]
fn stream_prefix_and_exclusive_readouts_at_the_first_step() {
    // causal_mean: exclusive readout, no identity: the first step reads zeros with
    // empty(p) true and returns its own input.
    let base = load("causal_mean", &[("D", 2)]);
    for agg in backends(&base) {
        let data = Batch::new(&agg, 1, 5, 2);
        let mut s = open(&agg, &[], &data);
        assert!(s.prefix().is_none());
        let first = push_each(&agg, &mut s, &data, &[], 1, 0, 1);
        let v = &data.seqs[0][0];
        assert_eq!(first[0].f32("y").unwrap(), &[v[0] as f32, v[1] as f32]);
        let p = s.prefix().unwrap();
        assert_eq!(p.get("n"), Some(&Buffer::F32(vec![1.0])));
    }
}

/// Every associative library operator: pushes of one step (the three kernels, states
/// swapped) and `push_into` the caller's buffers equal the recurrent form bit for bit,
/// exclusive readouts included.
#[test]
fn single_step_pushes_equal_the_recurrent_form() {
    let mut checked = 0;
    for name in library_names() {
        let base = load(&name, &[]);
        if !base.associative() {
            continue;
        }
        checked += 1;
        for agg in backends(&base) {
            let n = 9;
            let data = Batch::new(&agg, 2, n, 41);
            let bufs = data.input_bufs(&agg, 2, n);
            let rec = agg
                .run(&inputs(&agg, &[2], n, &bufs, &data.param_bufs), &RunOptions { form: Form::Recurrent, ..Default::default() })
                .unwrap();
            let mut s = open(&agg, &[2], &data);
            let pieces = push_each(&agg, &mut s, &data, &[2], 2, 0, n);
            assert_eq!(concat_steps(&agg, 2, &pieces), out_bits(&rec), "{name} {:?}: push", agg.backend());
            // push_into: the same values in the caller's buffers, reused from push to push.
            let mut into = open(&agg, &[2], &data);
            let dtypes = dtypes(&agg, Role::Output);
            let out_lens = lens(&agg, Role::Output);
            let out_names = names(&agg, Role::Output);
            for (j, piece) in pieces.iter().enumerate() {
                let mut bufs_out: Vec<Buffer> = dtypes.iter().zip(&out_lens).map(|(&d, &len)| to_buffer(d, &vec![7.0; 2 * len])).collect();
                let window = data.window_bufs(&agg, 2, j, j + 1);
                let mut outs = psm_runtime::OutputsMut::new();
                for (name, b) in out_names.iter().zip(bufs_out.iter_mut()) {
                    outs = outs.output(name, b);
                }
                let stats = into.push_into(&inputs(&agg, &[2], 1, &window, &[]), &mut outs).unwrap();
                assert_eq!(stats, piece.stats(), "{name}: stats of push {j}");
                let got: Vec<Vec<u64>> = bufs_out.iter().map(|b| bits(&b.to_f64())).collect();
                assert_eq!(got, out_bits(piece), "{name} {:?}: push_into at step {j}", agg.backend());
            }
            assert_eq!(into.prefix(), s.prefix(), "{name}");
        }
    }
    // EXPECTED.tsv: most of the library is associative.
    assert!(checked >= 15, "{checked} associative operators");
}
