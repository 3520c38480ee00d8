//! Every `RunError` variant provoked through the public API, with its message; and
//! `CompileError`s. Nothing here may panic: bad data is an error, never a crash.

#![allow(clippy::type_complexity)]

mod common;

use common::*;
use psm_runtime::{Backend, Buffer, Dtype, Form, Inputs, Program, RunError, RunOptions, Slot, State, Stream};

fn gla() -> psm_runtime::Aggregator {
    load("gla", &[("K", 2), ("V", 2)])
}

/// Valid gla data for batch [2], T = 3 (K = V = 2).
struct G {
    q: Vec<f32>,
    a: Vec<f32>,
}

fn g() -> G {
    G { q: vec![0.5; 2 * 3 * 2], a: vec![0.9; 2 * 3 * 2] }
}

fn ok_inputs(d: &G) -> Inputs<'_> {
    Inputs::new(&[2], 3).input("q", &d.q).input("k", &d.q).input("v", &d.q).input("alpha", &d.a)
}

fn err(r: Result<psm_runtime::Outputs, RunError>) -> RunError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn valid_inputs_run() {
    let d = g();
    gla().run(&ok_inputs(&d), &RunOptions::default()).unwrap();
}

#[test]
fn unknown_inputs_and_params() {
    let d = g();
    let agg = gla();
    let e = err(agg.run(&ok_inputs(&d).input("qq", &d.q), &RunOptions::default()));
    assert!(matches!(&e, RunError::Unknown { slot: Slot::Input, name, belongs_to: None, .. } if name == "qq"), "{e:?}");
    assert!(e.to_string().contains("unknown input `qq`") && e.to_string().contains("`alpha`"), "{e}");
    let e = err(agg.run(&ok_inputs(&d).param("w", &d.q), &RunOptions::default()));
    assert!(matches!(&e, RunError::Unknown { slot: Slot::Param, .. }), "{e:?}");
    assert!(e.to_string().contains("the declared params are none"), "{e}");
    // A name of another slot: an input passed as a param.
    let tanh = load("tanh_rnn", &[("D", 2)]);
    let x = vec![0.0f32; 4];
    let e = err(tanh.run(&Inputs::new(&[], 2).param("x", &x).param("w", &x), &RunOptions::default()));
    assert!(matches!(&e, RunError::Unknown { slot: Slot::Param, belongs_to: Some(Slot::Input), .. }), "{e:?}");
    assert!(e.to_string().contains("declared as an input"), "{e}");
}

#[test]
fn missing_inputs_and_params() {
    let d = g();
    let e = err(gla().run(&Inputs::new(&[2], 3).input("q", &d.q), &RunOptions::default()));
    assert_eq!(e, RunError::Missing { slot: Slot::Input, name: "k".into() });
    assert!(e.to_string().contains("missing input `k`"));
    let tanh = load("tanh_rnn", &[("D", 2)]);
    let x = vec![0.0f32; 4];
    let e = err(tanh.run(&Inputs::new(&[], 2).input("x", &x), &RunOptions::default()));
    assert_eq!(e, RunError::Missing { slot: Slot::Param, name: "w".into() });
}

#[test]
fn duplicate_inputs_and_params() {
    let d = g();
    let e = err(gla().run(&ok_inputs(&d).input("q", &d.q), &RunOptions::default()));
    assert_eq!(e, RunError::Duplicate { slot: Slot::Input, name: "q".into() });
    assert!(e.to_string().contains("given twice"));
    let tanh = load("tanh_rnn", &[("D", 2)]);
    let x = vec![0.0f32; 4];
    let e = err(tanh.run(&Inputs::new(&[], 2).input("x", &x).param("w", &x).param("w", &x), &RunOptions::default()));
    assert_eq!(e, RunError::Duplicate { slot: Slot::Param, name: "w".into() });
}

#[test]
fn wrong_dtypes() {
    let d = g();
    let q64: Vec<f64> = d.q.iter().map(|&x| x as f64).collect();
    let x = Inputs::new(&[2], 3).input("q", &q64).input("k", &d.q).input("v", &d.q).input("alpha", &d.a);
    let e = err(gla().run(&x, &RunOptions::default()));
    assert_eq!(e, RunError::WrongDtype { slot: Slot::Input, name: "q".into(), expected: Dtype::F32, found: Dtype::F64 });
    assert!(e.to_string().contains("declared f32 but the data is f64"));
    // ema's param and input are f64; f32 data is refused.
    let ema = load("ema", &[]);
    let e = err(ema.run(&Inputs::new(&[], 1).input("v", &[1.0f64]).param("alpha", &[0.5f32]), &RunOptions::default()));
    assert!(matches!(e, RunError::WrongDtype { slot: Slot::Param, .. }), "{e:?}");
    // i32 position of running_max_index.
    let rmi = load("running_max_index", &[]);
    let e = err(rmi.run(&Inputs::new(&[], 2).input("v", &[1.0f32, 2.0]).input("pos", &[0.0f32, 1.0]), &RunOptions::default()));
    assert!(matches!(e, RunError::WrongDtype { expected: Dtype::I32, found: Dtype::F32, .. }), "{e:?}");
}

#[test]
fn wrong_lengths_and_batch_or_t_mismatches() {
    let d = g();
    // T says 4, the data has 3 steps.
    let x = Inputs::new(&[2], 4).input("q", &d.q).input("k", &d.q).input("v", &d.q).input("alpha", &d.a);
    let e = err(gla().run(&x, &RunOptions::default()));
    assert_eq!(
        e,
        RunError::WrongLength { slot: Slot::Input, name: "q".into(), expected: 16, found: 12, shape: vec![2, 4, 2] }
    );
    assert!(e.to_string().contains("has 12 values, expected 16 (shape [2, 4, 2]"), "{e}");
    // Batch says 3.
    let x = Inputs::new(&[3], 3).input("q", &d.q).input("k", &d.q).input("v", &d.q).input("alpha", &d.a);
    assert!(matches!(err(gla().run(&x, &RunOptions::default())), RunError::WrongLength { expected: 18, .. }));
    // A param of the wrong size.
    let tanh = load("tanh_rnn", &[("D", 2)]);
    let x = vec![0.0f32; 4];
    let e = err(tanh.run(&Inputs::new(&[], 2).input("x", &x).param("w", &x[..3]), &RunOptions::default()));
    assert!(matches!(e, RunError::WrongLength { slot: Slot::Param, expected: 4, found: 3, .. }), "{e:?}");
}

#[test]
fn initial_state_errors() {
    let d = g();
    let agg = gla();
    let good = State::new(&[2]).field("a", vec![1.0f32; 4]).field("s", vec![0.0f32; 8]);
    agg.run(&ok_inputs(&d), &RunOptions { initial_state: Some(&good), ..Default::default() }).unwrap();
    let cases: Vec<(State, Box<dyn Fn(&RunError) -> bool>)> = vec![
        (
            State::new(&[3]).field("a", vec![1.0f32; 6]).field("s", vec![0.0f32; 12]),
            Box::new(|e| matches!(e, RunError::BatchMismatch { .. })),
        ),
        (State::new(&[2]).field("a", vec![1.0f32; 4]), Box::new(|e| matches!(e, RunError::Missing { slot: Slot::State, .. }))),
        (
            State::new(&[2]).field("a", vec![1.0f32; 4]).field("s", vec![0.0f32; 8]).field("z", vec![0.0f32]),
            Box::new(|e| matches!(e, RunError::Unknown { slot: Slot::State, .. })),
        ),
        (
            State::new(&[2]).field("a", vec![1.0f32; 4]).field("s", vec![0.0f32; 7]),
            Box::new(|e| matches!(e, RunError::WrongLength { slot: Slot::State, expected: 8, .. })),
        ),
        (
            State::new(&[2]).field("a", vec![1.0f64; 4]).field("s", vec![0.0f32; 8]),
            Box::new(|e| matches!(e, RunError::WrongDtype { slot: Slot::State, .. })),
        ),
    ];
    for (state, check) in cases {
        let e = err(agg.run(&ok_inputs(&d), &RunOptions { initial_state: Some(&state), ..Default::default() }));
        assert!(check(&e), "{e:?}");
        assert!(!e.to_string().is_empty());
    }
    let e = agg.stream(&[2]).initial_state(&State::new(&[1])).open().unwrap_err();
    assert!(matches!(e, RunError::BatchMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("batch shape mismatch"));
}

#[test]
fn forms_that_rebracket_a_non_associative_operator() {
    let sub = load("subtract", &[]);
    let v = [1.0f32, 2.0, 3.0];
    for form in [Form::Recurrent, Form::Chunked] {
        let e = err(sub.run(&Inputs::new(&[], 3).input("v", &v), &RunOptions { form, ..Default::default() }));
        assert_eq!(e, RunError::FormNotValid { form, aggregator: "subtract".into(), valid: vec!["tree", "stream"] });
        assert!(e.to_string().contains("not associative") && e.to_string().contains("tree, stream"), "{e}");
    }
    for form in [Form::Auto, Form::Tree, Form::Stream] {
        sub.run(&Inputs::new(&[], 3).input("v", &v), &RunOptions { form, ..Default::default() }).unwrap();
    }
}

#[test]
fn invalid_options() {
    let d = g();
    let agg = gla();
    let cases = [
        RunOptions { form: Form::Chunked, chunk: Some(0), ..Default::default() },
        RunOptions { threads: Some(0), ..Default::default() },
        RunOptions { prefill: true, reverse: true, ..Default::default() },
    ];
    for opts in cases {
        let e = err(agg.run(&ok_inputs(&d), &opts));
        assert!(matches!(e, RunError::InvalidOption { .. }), "{e:?}");
        assert!(e.to_string().starts_with("invalid option"), "{e}");
    }
    // Params are fixed when a stream opens.
    let mut s = agg.stream(&[2]).open().unwrap();
    let x = Inputs::new(&[2], 3).input("q", &d.q).input("k", &d.q).input("v", &d.q).input("alpha", &d.a).param("w", &d.q);
    assert!(matches!(s.push(&x), Err(RunError::InvalidOption { option: "param", .. })));
    // Pushes of another batch shape.
    let x = Inputs::new(&[1], 3).input("q", &d.q).input("k", &d.q).input("v", &d.q).input("alpha", &d.a);
    assert!(matches!(s.push(&x), Err(RunError::BatchMismatch { .. })));
    // Nothing was pushed by the failed calls.
    assert_eq!(s.position(), 0);
    // A failed push leaves the stream usable.
    s.push(&ok_inputs(&d)).unwrap();
    assert_eq!(s.position(), 3);
}

#[test]
fn sizes_that_cannot_be_addressed() {
    let agg = gla();
    let q = vec![0.0f32; 4];
    let x = Inputs::new(&[usize::MAX, 2], 1).input("q", &q).input("k", &q).input("v", &q).input("alpha", &q);
    let e = err(agg.run(&x, &RunOptions::default()));
    assert!(matches!(e, RunError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("too large"));
    let x = Inputs::new(&[1], usize::MAX / 2).input("q", &q).input("k", &q).input("v", &q).input("alpha", &q);
    assert!(matches!(err(agg.run(&x, &RunOptions::default())), RunError::TooLarge { .. }));
}

#[test]
fn the_cpu_backend_compiles() {
    gla().with_backend(Backend::Cpu).compile().unwrap();
}

#[test]
fn prefill_requires_the_option_and_streams_start_from_it() {
    let d = g();
    let mut out = gla().run(&ok_inputs(&d), &RunOptions::default()).unwrap();
    assert!(out.take_prefill().is_none());
    let mut out = gla().run(&ok_inputs(&d), &RunOptions { prefill: true, ..Default::default() }).unwrap();
    let s = Stream::from_prefill(out.take_prefill().unwrap());
    assert_eq!(s.position(), 3);
}

#[test]
fn compile_errors_carry_rendered_diagnostics() {
    let e = Program::from_source("aggregator a { input { v } element { v } combine(l, r) { v = l.w; } }", &[]).unwrap_err();
    assert!(!e.diagnostics.is_empty());
    assert!(e.rendered.contains("<source>:1:"), "{}", e.rendered);
    assert!(e.to_string().contains('^'), "{e}");
    let e = Program::from_file("/nonexistent/x.psm", &[]).unwrap_err();
    assert!(e.diagnostics.is_empty() && e.rendered.contains("cannot read /nonexistent/x.psm"));
    let e = Program::from_file(
        library_dir().join("gla.psm"),
        &[psm_runtime::DimOverride { name: "Q".into(), value: 3 }],
    )
    .unwrap_err();
    assert!(e.rendered.contains("names no dim"), "{}", e.rendered);
    let p = Program::from_file(library_dir().join("gla.psm"), &[]).unwrap();
    assert_eq!(p.names(), vec!["gla"]);
    assert!(p.aggregator("nope").is_none());
}

#[test]
fn outputs_accessors() {
    let d = g();
    let out = gla().run(&ok_inputs(&d), &RunOptions::default()).unwrap();
    assert_eq!(out.batch(), &[2]);
    assert_eq!(out.steps(), 3);
    assert!(out.f32("o").is_some() && out.f64("o").is_none() && out.i32("o").is_none() && out.get("x").is_none());
    assert_eq!(out.tensor("o").unwrap().shape, vec![2, 3, 2]);
    assert!(matches!(out.get("o"), Some(Buffer::F32(v)) if v.len() == 12));
}

/// Caller-supplied outputs are checked like inputs, before anything is written.
#[test]
fn caller_supplied_output_errors() {
    let d = g();
    let agg = gla();
    let opts = RunOptions::default();
    let mut o = vec![3.0f32; 2 * 3 * 2];
    let mut o64 = vec![3.0f64; 2 * 3 * 2];
    let mut short = vec![3.0f32; 2 * 3 * 2 - 1];
    let cases: Vec<(psm_runtime::OutputsMut<'_>, Box<dyn Fn(&RunError) -> bool>)> = vec![
        (psm_runtime::OutputsMut::new(), Box::new(|e| matches!(e, RunError::Missing { slot: Slot::Output, .. }))),
        (
            psm_runtime::OutputsMut::new().output("y", &mut o),
            Box::new(|e| matches!(e, RunError::Unknown { slot: Slot::Output, name, .. } if name == "y")),
        ),
        (
            psm_runtime::OutputsMut::new().output("o", &mut o64),
            Box::new(|e| matches!(e, RunError::WrongDtype { slot: Slot::Output, expected: Dtype::F32, found: Dtype::F64, .. })),
        ),
        (
            psm_runtime::OutputsMut::new().output("o", &mut short),
            Box::new(|e| matches!(e, RunError::WrongLength { slot: Slot::Output, expected: 12, found: 11, shape, .. } if shape == &[2, 3, 2])),
        ),
    ];
    for (mut outputs, is) in cases {
        let e = agg.run_into(&ok_inputs(&d), &mut outputs, &opts).unwrap_err();
        assert!(is(&e), "{e:?}");
        assert!(e.to_string().contains("output"), "{e}");
    }
    let (mut a, mut b) = (vec![3.0f32; 12], vec![3.0f32; 12]);
    let mut twice = psm_runtime::OutputsMut::new().output("o", &mut a).output("o", &mut b);
    let e = agg.run_into(&ok_inputs(&d), &mut twice, &opts).unwrap_err();
    assert_eq!(e, RunError::Duplicate { slot: Slot::Output, name: "o".into() });
    // Bad inputs: an error, and the outputs untouched.
    let mut fine = vec![3.0f32; 12];
    let bad = Inputs::new(&[2], 3).input("q", &d.q);
    assert!(agg.run_into(&bad, &mut psm_runtime::OutputsMut::new().output("o", &mut fine), &opts).is_err());
    assert!(fine.iter().all(|&x| x == 3.0));
    // A push checks its outputs against one push's steps.
    let mut s = agg.stream(&[2]).open().unwrap();
    let step = Inputs::new(&[2], 1).input("q", &d.q[..4]).input("k", &d.q[..4]).input("v", &d.q[..4]).input("alpha", &d.a[..4]);
    let mut long = vec![0.0f32; 12];
    let e = s.push_into(&step, &mut psm_runtime::OutputsMut::new().output("o", &mut long)).unwrap_err();
    assert!(matches!(e, RunError::WrongLength { slot: Slot::Output, expected: 4, found: 12, .. }), "{e:?}");
    assert_eq!(s.position(), 0, "a rejected push consumes nothing");
    let mut one = vec![0.0f32; 4];
    s.push_into(&step, &mut psm_runtime::OutputsMut::new().output("o", &mut one)).unwrap();
    assert_eq!(s.position(), 1);
}

/// Array views that are not row-major and contiguous are refused, never copied.
#[cfg(feature = "ndarray")]
#[test]
fn non_contiguous_array_views() {
    let a = ndarray::Array2::<f32>::zeros((2, 3));
    let e = psm_runtime::Data::try_from(a.t()).unwrap_err();
    assert_eq!(e, RunError::NotContiguous { what: "an array view of shape [3, 2]".into() });
    assert!(e.to_string().contains("as_standard_layout"), "{e}");
    let mut m = ndarray::Array2::<f64>::zeros((4, 4));
    let e = psm_runtime::DataMut::try_from(m.slice_mut(ndarray::s![.., 1..3])).unwrap_err();
    assert!(matches!(e, RunError::NotContiguous { .. }), "{e:?}");
    // A contiguous slice of rows is fine.
    assert_eq!(psm_runtime::DataMut::try_from(m.slice_mut(ndarray::s![1..3, ..])).unwrap().len(), 8);
}
