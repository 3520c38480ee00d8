//! The typed API's edges: empty runs, states before the first step, initial states of
//! empty runs, backends agreeing, forms refused for a non-associative operator.

use psm::{Backend, Form, Op, RunError, RunOptions};

#[psm::psm_aggregator(associative, dims(D = 3))]
mod sum {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d] + r.v[d];
        }
        out
    }
}

#[psm::psm_aggregator]
mod subtract {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v - r.v;
        out
    }
}

fn steps(n: usize) -> Vec<sum::Input> {
    (0..n).map(|t| sum::Input { v: [t as f32, 1.0, -0.5] }).collect()
}

#[test]
fn empty_runs() {
    let op = Op::<sum::Aggregator>::with_backend(Backend::Interp).unwrap();
    assert!(op.run(&[], &RunOptions::default()).unwrap().is_empty());
    let run = op.run_from(&(), None, &[], &RunOptions::default()).unwrap();
    assert!(run.outputs.is_empty());
    assert_eq!(run.final_state, None);
    // An empty run after a state ends in that state.
    let s = sum::State { v: [1.0, 2.0, 3.0] };
    let run = op.run_from(&(), Some(&s), &[], &RunOptions::default()).unwrap();
    assert_eq!(run.final_state, Some(s));
}

#[test]
fn stream_states() {
    let op = Op::<sum::Aggregator>::new().unwrap();
    let mut stream = op.stream(&(), None).unwrap();
    assert_eq!(stream.state(), None);
    assert_eq!(stream.push(&steps(1)[0]).unwrap().v, [0.0, 1.0, -0.5]);
    assert_eq!(stream.state(), Some(sum::State { v: [0.0, 1.0, -0.5] }));
    let from = sum::State { v: [10.0, 0.0, 0.0] };
    let mut stream = op.stream(&(), Some(&from)).unwrap();
    assert_eq!(stream.state(), Some(from));
    assert_eq!(stream.push(&steps(1)[0]).unwrap().v, [10.0, 1.0, -0.5]);
    assert_eq!(stream.position(), 1);
}

#[test]
fn backends_agree_and_ops_clone() {
    let xs = steps(50);
    let cpu = Op::<sum::Aggregator>::new().unwrap();
    let interp = Op::<sum::Aggregator>::with_backend(Backend::Interp).unwrap();
    let tree = RunOptions { form: Form::Tree, ..Default::default() };
    assert_eq!(cpu.clone().run(&xs, &tree).unwrap(), interp.run(&xs, &tree).unwrap());
    assert_eq!(psm::run::<sum::Aggregator>(&xs).unwrap().last().unwrap().v, [1225.0, 50.0, -25.0]);
}

#[test]
fn a_non_associative_operator_runs_only_in_the_fixed_tree() {
    let op = Op::<subtract::Aggregator>::new().unwrap();
    assert!(!op.associative());
    let xs: Vec<subtract::Input> = (0..6).map(|t| subtract::Input { v: t as f32 }).collect();
    let chunked = RunOptions { form: Form::Chunked, ..Default::default() };
    assert!(matches!(op.run(&xs, &chunked), Err(RunError::FormNotValid { .. })));
    // The stream reproduces the tree's bracketing: y_5 reads p_6 = ((0-1)-(2-3))-(4-5).
    let mut stream = op.stream(&(), None).unwrap();
    let pushed: Vec<subtract::State> = xs.iter().map(|x| stream.push(x).unwrap()).collect();
    assert_eq!(pushed, op.run(&xs, &RunOptions { form: Form::Tree, ..Default::default() }).unwrap());
    assert_eq!(pushed[5].v, 1.0);
}

/// The typed API on a CUDA device gives the CPU's outputs (exactly, here: sums of small
/// integers and halves in any bracketing); without CUDA, the typed error.
#[test]
fn cuda_runs_the_same_structs() {
    let op = Op::<sum::Aggregator>::new().unwrap();
    let device = match psm::runtime::cuda::Device::open(0) {
        Ok(device) => device,
        Err(RunError::CudaUnavailable { reason }) => {
            println!("skipped: CUDA not available: {reason}");
            return;
        }
        Err(e) => panic!("opening the device: {e}"),
    };
    let gpu = op.cuda(&device).unwrap();
    for n in [0, 1, 7, 1000, 4097] {
        let xs = steps(n);
        let want = op.run(&xs, &RunOptions::default()).unwrap();
        let got = gpu.run_with(&(), &xs, &RunOptions::default()).unwrap();
        assert_eq!(got.iter().map(|o| o.v).collect::<Vec<_>>(), want.iter().map(|o| o.v).collect::<Vec<_>>(), "n = {n}");
    }
}
