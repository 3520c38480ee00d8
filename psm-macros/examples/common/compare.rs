//! Runs a macro-declared aggregator through the typed API and its `.psm` twin through
//! named buffers on the same data, and asserts that every output is bit-identical: in
//! every form, pushed step by step through a stream, and split in two runs that hand
//! the state over.

use super::ops::{causal_mean, diag_affine, ema, mamba_s6, online_softmax};
use psm::{Aggregator, Backend, Form, Inputs, Op, RunOptions};

/// The `.psm` twin of `A`, at `A`'s dims.
fn psm_file<A: Aggregator>(backend: Backend) -> psm::runtime::Aggregator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/ops/{}.psm", A::NAME));
    psm::runtime::Program::from_file(&path, &A::dims()).unwrap().aggregator(A::NAME).unwrap().with_backend(backend)
}

/// A deterministic pseudo-random stream in [-1, 1).
fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Values widened to f64 (exactly) so that one comparison serves f32 and f64 outputs.
fn same_bits(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: entry {k} differs: {x} vs {y}");
    }
}

/// The typed aggregator `A` against its twin; `named` holds the same params and steps
/// as named buffers, `y` flattens an output (widened to f64). Returns the number of
/// values compared.
fn compare<A: Aggregator>(backend: Backend, params: &A::Params, xs: &[A::Input], named: &Inputs<'_>, y: impl Fn(&A::Output) -> Vec<f64>) -> usize {
    let op = Op::<A>::with_backend(backend).unwrap();
    assert!(op.associative(), "{}", A::NAME);
    let twin = psm_file::<A>(backend);
    let flat = |ys: &[A::Output]| ys.iter().flat_map(&y).collect::<Vec<f64>>();
    let mut n = 0;
    let forms = [
        RunOptions { form: Form::Tree, ..Default::default() },
        RunOptions { form: Form::Recurrent, ..Default::default() },
        RunOptions { form: Form::Chunked, chunk: Some(16), ..Default::default() },
    ];
    for opts in &forms {
        let got = flat(&op.run_with(params, xs, opts).unwrap());
        same_bits(&format!("{} {:?}", A::NAME, opts.form), &got, &twin.run(named, opts).unwrap().get("y").unwrap().to_f64());
        n += got.len();
    }
    // Recurrent: the reference for the step-by-step forms below.
    let recurrent = op.run_from(params, None, xs, &forms[1]).unwrap();
    let want = flat(&recurrent.outputs);

    // One step at a time; the stream's state is the run's final state at the end.
    let mut stream = op.stream(params, None).unwrap();
    assert!(stream.state().is_none());
    let pushed: Vec<A::Output> = xs.iter().map(|x| stream.push(x).unwrap()).collect();
    same_bits(&format!("{} stream", A::NAME), &flat(&pushed), &want);
    assert_eq!(stream.position(), xs.len() as u64);
    assert_eq!(format!("{:?}", stream.state()), format!("{:?}", recurrent.final_state));

    // Two runs, the second starting from the first one's final state.
    let k = xs.len() / 3;
    let head = op.run_from(params, None, &xs[..k], &forms[1]).unwrap();
    let tail = op.run_from(params, head.final_state.as_ref(), &xs[k..], &forms[1]).unwrap();
    let mut split = flat(&head.outputs);
    split.extend(flat(&tail.outputs));
    same_bits(&format!("{} split at {k}", A::NAME), &split, &want);
    assert_eq!(format!("{:?}", tail.final_state), format!("{:?}", recurrent.final_state));

    // A stream resumed from a state behaves as the run it continues.
    let mut resumed = op.stream(params, head.final_state.as_ref()).unwrap();
    let pushed: Vec<A::Output> = xs[k..].iter().map(|x| resumed.push(x).unwrap()).collect();
    same_bits(&format!("{} resumed stream", A::NAME), &flat(&pushed), &want[want.len() - flat(&pushed).len()..]);
    n + 3 * want.len()
}

pub fn diag_affine(backend: Backend, steps: usize) -> usize {
    let mut r = noise(1);
    let xs: Vec<diag_affine::Input> =
        (0..steps).map(|_| diag_affine::Input { a: std::array::from_fn(|_| 0.9 + 0.1 * r()), b: std::array::from_fn(|_| r()) }).collect();
    let a: Vec<f32> = xs.iter().flat_map(|x| x.a).collect();
    let b: Vec<f32> = xs.iter().flat_map(|x| x.b).collect();
    let named = Inputs::new(&[], steps).input("a", &a).input("b", &b);
    compare::<diag_affine::Aggregator>(backend, &(), &xs, &named, |o| o.y.map(f64::from).to_vec())
}

/// At the attribute's dims (8, 4) or any other: `mamba_s6::Aggregator<D, N>`.
pub fn mamba_s6<const D: usize, const N: usize>(backend: Backend, steps: usize) -> usize {
    let mut r = noise(3);
    let params = mamba_s6::Params::<D, N> { a_log: std::array::from_fn(|_| std::array::from_fn(|_| r())), skip: std::array::from_fn(|_| r()) };
    let xs: Vec<mamba_s6::Input<D, N>> = (0..steps)
        .map(|_| mamba_s6::Input {
            dt: std::array::from_fn(|_| r()),
            x: std::array::from_fn(|_| r()),
            b: std::array::from_fn(|_| r()),
            c: std::array::from_fn(|_| r()),
        })
        .collect();
    let a_log: Vec<f32> = params.a_log.iter().flatten().copied().collect();
    let (dt, x, b, c): (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) = (
        xs.iter().flat_map(|s| s.dt).collect(),
        xs.iter().flat_map(|s| s.x).collect(),
        xs.iter().flat_map(|s| s.b).collect(),
        xs.iter().flat_map(|s| s.c).collect(),
    );
    let named = Inputs::new(&[], steps)
        .param("A_log", &a_log)
        .param("skip", &params.skip)
        .input("dt", &dt)
        .input("x", &x)
        .input("B", &b)
        .input("C", &c);
    compare::<mamba_s6::Aggregator<D, N>>(backend, &params, &xs, &named, |o| o.y.map(f64::from).to_vec())
}

pub fn online_softmax(backend: Backend, steps: usize) -> usize {
    let mut r = noise(2);
    let xs: Vec<online_softmax::Input> =
        (0..steps).map(|_| online_softmax::Input { s: 4.0 * r(), v: std::array::from_fn(|_| r()) }).collect();
    let s: Vec<f32> = xs.iter().map(|x| x.s).collect();
    let v: Vec<f32> = xs.iter().flat_map(|x| x.v).collect();
    let named = Inputs::new(&[], steps).input("s", &s).input("v", &v);
    compare::<online_softmax::Aggregator>(backend, &(), &xs, &named, |o| o.y.map(f64::from).to_vec())
}

pub fn causal_mean(backend: Backend, steps: usize) -> usize {
    let mut r = noise(4);
    let xs: Vec<causal_mean::Input> = (0..steps).map(|_| causal_mean::Input { v: std::array::from_fn(|_| r()) }).collect();
    let v: Vec<f32> = xs.iter().flat_map(|x| x.v).collect();
    let named = Inputs::new(&[], steps).input("v", &v);
    compare::<causal_mean::Aggregator>(backend, &(), &xs, &named, |o| o.y.map(f64::from).to_vec())
}

pub fn ema(backend: Backend, steps: usize) -> usize {
    let mut r = noise(5);
    let params = ema::Params { alpha: 0.125 };
    let xs: Vec<ema::Input> = (0..steps).map(|_| ema::Input { v: f64::from(r()) }).collect();
    let v: Vec<f64> = xs.iter().map(|x| x.v).collect();
    let alpha = [params.alpha];
    let named = Inputs::new(&[], steps).param("alpha", &alpha).input("v", &v);
    compare::<ema::Aggregator>(backend, &params, &xs, &named, |o| vec![o.y])
}
