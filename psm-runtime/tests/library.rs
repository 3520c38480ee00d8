//! Every operator of examples/ops × every valid form × lengths {0, 1, 2, 3, 7, 64,
//! 1000, 4097} × batch {1, 3}, on every backend, against psm-ir's reference driver
//! (`psm_ir::derive::run`):
//!
//! * non-associative operators (tree, stream): outputs and final states BIT-identical
//!   to `derive::run` in `Precision::Declared` with `Form::Tree`;
//! * associative operators (recurrent, chunked with the automatic chunk and with
//!   chunks of 5, tree, stream): within the tolerance of psm-ir/tests/forms.rs against
//!   the F64 fold, |out − ref| ≤ 1e-5·max(1, log2 n)·(|ref| + running max |ref|);
//! * the JIT and the interpreter bit-identical in every form (when the JIT is built).
//!
//! Large states run at small dims (-D overrides) to keep the file fast in debug builds;
//! every operator also runs at its declared dims at lengths up to 33.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use psm_ir::derive::Form as RefForm;
use psm_ir::interp::Precision;
use psm_ir::ir::{Dtype, Role};
use psm_runtime::{Backend, Form, RunOptions};

const ALL_LENGTHS: [usize; 8] = [0, 1, 2, 3, 7, 64, 1000, 4097];

fn dims_of(name: &str) -> Vec<(&'static str, i64)> {
    match name {
        "attn_agg" => vec![("C", 2), ("D", 4)],
        "gla" | "gla_bf16" | "linear_attention" | "retnet" | "mamba2" | "mlstm" | "mlstm_affine" | "rwkv6" | "deltanet" | "gated_deltanet" => {
            vec![("K", 4), ("V", 4)]
        }
        "mamba_s6" => vec![("D", 4), ("N", 2)],
        "online_softmax" | "causal_mean" | "average" | "tanh_rnn" | "diag_affine" => vec![("D", 4)],
        _ => vec![],
    }
}

fn forms(associative: bool) -> Vec<(Form, Option<usize>)> {
    if associative {
        vec![(Form::Recurrent, None), (Form::Chunked, None), (Form::Chunked, Some(5)), (Form::Tree, None), (Form::Stream, None)]
    } else {
        vec![(Form::Tree, None), (Form::Stream, None)]
    }
}

fn check_operator(name: &str) {
    check_at(name, &dims_of(name), &ALL_LENGTHS);
    // The declared dims too (the sizes users run), at short lengths.
    check_at(name, &[], &[0, 1, 2, 7, 33]);
}

fn check_at(name: &str, dims: &[(&str, i64)], lengths: &[usize]) {
    let start = std::time::Instant::now();
    let agg = load(name, dims);
    let associative = agg.associative();
    let lengths: Vec<usize> = lengths.to_vec();
    let max = *lengths.iter().max().unwrap();
    let data = Batch::new(&agg, 3, max, 0x5eed ^ name.len() as u64);
    let out_lens = lens(&agg, Role::Output);
    let out_dtypes = dtypes(&agg, Role::Output);
    let el_lens = lens(&agg, Role::Element);
    let el_dtypes = dtypes(&agg, Role::Element);
    let el_names = names(&agg, Role::Element);
    let backends = backends(&agg);
    let mut worst = 0.0f64;
    for &n in &lengths {
        let refs: Vec<_> = (0..3)
            .map(|b| {
                let x = data.first(&agg, b, n);
                if associative {
                    reference(&agg, Precision::F64, RefForm::Fold, &data.params, &x, n)
                } else {
                    reference(&agg, Precision::Declared, RefForm::Tree, &data.params, &x, n)
                }
            })
            .collect();
        let tol = tolerance(n);
        for (form, chunk) in forms(associative) {
            for (batch, nseq) in [(&[][..], 1usize), (&[3][..], 3)] {
                let bufs = data.input_bufs(&agg, nseq, n);
                let mut per_backend = Vec::new();
                for be in &backends {
                    let what = format!("{name} {:?} {form:?} chunk {chunk:?} n = {n} batch {batch:?}", be.backend());
                    let opts = RunOptions { form, chunk, final_state: true, ..Default::default() };
                    let out = be.run(&inputs(&agg, batch, n, &bufs, &data.param_bufs), &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(out.form(), form, "{what}");
                    for (k, t) in out.tensors().iter().enumerate() {
                        let mut shape = batch.to_vec();
                        shape.push(n);
                        shape.extend(agg.info().shape(agg.ir().tensors_of(Role::Output).nth(k).unwrap()));
                        assert_eq!(t.shape, shape, "{what}: shape of {}", t.name);
                        assert_eq!(t.data.dtype(), out_dtypes[k], "{what}: dtype of {}", t.name);
                        for b in 0..nseq {
                            let got = seq_slice(&t.data, b, n * out_lens[k]);
                            let want = &refs[b].outputs[k];
                            let what = format!("{what}, output {} of sequence {b}", t.name);
                            if associative {
                                // A bf16/f16 output may round to the neighbour of the reference's.
                                let tol = tol + out_dtypes[k].rounding_bound();
                                worst = worst.max(close(&what, &got, want, out_lens[k], out_dtypes[k] == Dtype::I32, tol));
                            } else {
                                assert_eq!(bits(&got), bits(want), "{what}: not bit-identical to the reference tree");
                            }
                        }
                    }
                    // Without a final state asked for, fields only the state needs may be
                    // skipped (NO_STATE_OUT): the outputs stay bit-identical.
                    let lean_opts = RunOptions { form, chunk, ..Default::default() };
                    let lean = be.run(&inputs(&agg, batch, n, &bufs, &data.param_bufs), &lean_opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                    for (t, u) in out.tensors().iter().zip(lean.tensors()) {
                        assert_eq!(bits(&t.data.to_f64()), bits(&u.data.to_f64()), "{what}: output {} without the final state", t.name);
                    }
                    // The final state is p_n.
                    let fin = out.final_state();
                    for b in 0..nseq {
                        match (&refs[b].prefixes[n], fin) {
                            (Some(p), Some(s)) => {
                                for (k, field) in el_names.iter().enumerate() {
                                    let got = seq_slice(s.get(field).unwrap(), b, el_lens[k]);
                                    let what = format!("{what}: final state {field} of sequence {b}");
                                    if associative {
                                        close_state(&what, &got, &refs[b].prefixes, k, el_dtypes[k] == Dtype::I32, tol);
                                    } else {
                                        assert_eq!(bits(&got), bits(&p[k]), "{what}");
                                    }
                                }
                            }
                            (None, s) => {
                                assert_eq!(n, 0, "{what}");
                                assert_eq!(s.is_some(), agg.ir().identity.is_some(), "{what}: final state at n = 0 is the identity");
                            }
                            (Some(_), None) => panic!("{what}: no final state"),
                        }
                    }
                    per_backend.push((be.backend(), out.into_tensors().into_iter().map(|t| bits(&t.data.to_f64())).collect::<Vec<_>>()));
                }
                for (be, b) in &per_backend[1..] {
                    for (k, (x, y)) in b.iter().zip(&per_backend[0].1).enumerate() {
                        if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
                            panic!(
                                "{name} {form:?} chunk {chunk:?} n = {n} batch {batch:?}: {be:?} differs from {:?} in output {k} at {i} \
                                 (step {} of a sequence): {:e} vs {:e}",
                                per_backend[0].0,
                                (i / out_lens[k]) % n.max(1),
                                f64::from_bits(x[i]),
                                f64::from_bits(y[i])
                            );
                        }
                    }
                }
            }
        }
    }
    println!(
        "{name:22} {dims:?} {} lengths ≤ {max}, worst err / bound {worst:.4} ({:.1}s, backends {:?})",
        lengths.len(),
        start.elapsed().as_secs_f64(),
        backends.iter().map(|b| b.backend()).collect::<Vec<Backend>>()
    );
}

macro_rules! operators {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            #[allow(non_snake_case)]
            fn $name() {
                check_operator(stringify!($name));
            }
        )*

        #[test]
        fn every_library_operator_is_covered() {
            let mut listed = vec![$(stringify!($name).to_string()),*];
            listed.sort();
            assert_eq!(listed, library_names());
        }
    };
}

psm_testgen::library_operators!(operators);
