//! Differential property tests of the forms over random operators: psm-testgen's
//! families (associative by construction, non-associative by construction, random
//! expressions and mutants — the generator of psm-ir's algebra property tests), each
//! run in every form its verdict allows, on both backends, at awkward lengths and
//! chunk sizes, against psm-ir's reference driver:
//!
//! * verdict associative (proven/verified): recurrent and stream are the sequential
//!   fold, bit for bit the interpreter's in declared precision, and tree the fixed tree;
//!   chunked (a bracketing of its own) within psm's tolerance of the f64 fold,
//!   max(1e-5·max(1, log2 T), 2 × the largest error of the f32 fold and tree) — the
//!   second term is the operator's conditioning on this data, which random operators
//!   do reach (`l + r + 2·l·r` is `((1 + 2l)(1 + 2r) − 1) / 2`: near its fixed point
//!   −1/2 the tree's f32 error reaches 1e-2 at T = 257, where the fold's is 1e-5);
//! * otherwise: tree == stream == the interpreter's declared-precision tree, bit for
//!   bit, and the rebracketing forms are refused.

mod common;

use common::*;
use proptest::prelude::*;
use psm_ir::derive::Form as RefForm;
use psm_ir::interp::Precision;
use psm_ir::ir::Role;
use psm_runtime::{Aggregator, Form, Outputs, RunError, RunOptions};
use psm_testgen::algebra::{Class, Gen};

/// Outputs as bits, every NaN the same (payloads are not part of the semantics).
fn canonical_bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|x| if x.is_nan() { f64::NAN.to_bits() } else { x.to_bits() }).collect()
}

fn outputs_bits(out: &Outputs) -> Vec<Vec<u64>> {
    out.tensors().iter().map(|t| canonical_bits(&t.data.to_f64())).collect()
}

/// The reference outputs of every sequence of `data`, concatenated like a batched run's.
fn reference_bits(agg: &Aggregator, data: &Batch, nseq: usize, n: usize, precision: Precision, form: RefForm) -> Vec<Vec<f64>> {
    let mut per_output = vec![Vec::new(); lens(agg, Role::Output).len()];
    for b in 0..nseq {
        let r = reference(agg, precision, form, &data.params, &data.first(agg, b, n), n);
        for (k, o) in r.outputs.into_iter().enumerate() {
            per_output[k].extend(o);
        }
    }
    per_output
}

fn check(agg: &Aggregator, n: usize, chunk: usize, seed: u64) {
    let nseq = 2;
    let data = Batch::new(agg, nseq, n, seed);
    let bufs = data.input_bufs(agg, nseq, n);
    let x = inputs(agg, &[nseq], n, &bufs, &data.param_bufs);
    let run = |form| agg.run(&x, &RunOptions { form, chunk: Some(chunk), ..Default::default() });
    let declared = |form| -> Vec<Vec<u64>> {
        reference_bits(agg, &data, nseq, n, Precision::Declared, form).iter().map(|v| canonical_bits(v)).collect()
    };
    let tree = run(Form::Tree).unwrap();
    assert_eq!(outputs_bits(&tree), declared(RefForm::Tree), "tree vs the interpreter's tree");
    let stream = run(Form::Stream).unwrap();
    if !agg.associative() {
        assert_eq!(outputs_bits(&stream), outputs_bits(&tree), "stream vs tree");
        for form in [Form::Recurrent, Form::Chunked] {
            assert!(matches!(run(form), Err(RunError::FormNotValid { .. })), "{form:?} must be refused");
        }
        return;
    }
    let fold = declared(RefForm::Fold);
    assert_eq!(outputs_bits(&stream), fold, "stream vs the interpreter's fold");
    let recurrent = run(Form::Recurrent).unwrap();
    assert_eq!(outputs_bits(&recurrent), fold, "recurrent vs the interpreter's fold");
    let exact = reference_bits(agg, &data, nseq, n, Precision::F64, RefForm::Fold);
    let chunked = run(Form::Chunked).unwrap();
    let out_lens = lens(agg, Role::Output);
    let sequence = |v: &[f64], k: usize, b: usize| v[b * n * out_lens[k]..(b + 1) * n * out_lens[k]].to_vec();
    for b in 0..nseq {
        for k in 0..out_lens.len() {
            let r = sequence(&exact[k], k, b);
            let error = |out: &Outputs| worst_error(&sequence(&out.tensors()[k].data.to_f64(), k, b), &r, out_lens[k]);
            // The f32 bracketings the interpreter defines (checked bit for bit above).
            let f32_err = error(&recurrent).max(error(&tree));
            let f = sequence(&chunked.tensors()[k].data.to_f64(), k, b);
            let what = format!("chunked output {k} sequence {b} (f32 fold and tree errors up to {f32_err:.1e})");
            close(&what, &f, &r, out_lens[k], false, conditioned_tolerance(n, f32_err));
        }
    }
}

fn class(k: u8) -> Class {
    match k {
        0 => Class::Assoc,
        1 => Class::NonAssoc,
        _ => Class::Random,
    }
}

proptest! {
    // A fixed seed: CI sees the same 120 operators every run (PROPTEST_RNG_SEED=random
    // or another number explores others).
    #![proptest_config(ProptestConfig {
        cases: 120,
        rng_seed: proptest::test_runner::RngSeed::Fixed(3),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_allowed_form_agrees_with_the_interpreter(
        seed in any::<u64>(),
        kind in 0u8..3,
        n in prop::sample::select(vec![0usize, 1, 2, 3, 5, 7, 13, 31, 64, 100, 257]),
        chunk in prop::sample::select(vec![1usize, 3, 7, 16]),
    ) {
        let source = Gen::new(seed).op(class(kind)).source("random");
        let program = match psm_runtime::Program::from_source(&source, &[]) {
            Ok(p) => p,
            Err(e) => {
                // Random expressions may not validate; the families always do.
                prop_assert!(kind == 2, "a family's operator does not validate: {e}\n{source}");
                return Err(TestCaseError::reject("a random expression that does not validate"));
            }
        };
        let base = program.aggregator("random").expect("the generated aggregator").with_backend(psm_runtime::Backend::Interp);
        for agg in backends(&base) {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&agg, n, chunk, seed)));
            if let Err(e) = outcome {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                panic!("{:?}, T = {n}, chunk {chunk}, associative: {}: {msg}\n{source}", agg.backend(), agg.associative());
            }
        }
    }
}
