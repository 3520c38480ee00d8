//! Runs a macro-declared aggregator and its `.psm` twin on the same data and asserts
//! that every output is bit-identical.

use super::ops::{diag_affine, online_softmax};
use psm::{Backend, Form, Op, RunOptions};

fn psm_file(name: &str) -> psm::runtime::Aggregator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/ops/{name}.psm"));
    psm::runtime::Program::from_file(&path, &[]).unwrap().aggregator(name).unwrap()
}

/// A deterministic pseudo-random stream in [-1, 1).
fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn forms(assoc: bool) -> Vec<RunOptions<'static>> {
    let mut v = vec![RunOptions { form: Form::Tree, ..Default::default() }];
    if assoc {
        v.push(RunOptions { form: Form::Recurrent, ..Default::default() });
        v.push(RunOptions { form: Form::Chunked, chunk: Some(16), ..Default::default() });
    }
    v
}

fn same_bits(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}: entry {k} differs: {x} vs {y}");
    }
}

/// Returns the number of values compared.
pub fn diag_affine(backend: Backend, steps: usize) -> usize {
    let mut r = noise(1);
    let xs: Vec<diag_affine::Input> = (0..steps)
        .map(|_| diag_affine::Input { a: std::array::from_fn(|_| 0.9 + 0.1 * r()), b: std::array::from_fn(|_| r()) })
        .collect();
    let op = Op::<diag_affine::Aggregator>::with_backend(backend).unwrap();
    let twin = psm_file("diag_affine").with_backend(backend);
    let a: Vec<f32> = xs.iter().flat_map(|x| x.a).collect();
    let b: Vec<f32> = xs.iter().flat_map(|x| x.b).collect();
    let mut n = 0;
    for opts in forms(true) {
        let ys = op.run(&xs, &opts).unwrap();
        let want = twin.run(&psm::Inputs::new(&[], steps).input("a", &a).input("b", &b), &opts).unwrap();
        let got: Vec<f32> = ys.iter().flat_map(|y| y.y).collect();
        same_bits(&format!("diag_affine {:?}", opts.form), &got, want.f32("y").unwrap());
        n += got.len();
    }
    n
}

pub fn online_softmax(backend: Backend, steps: usize) -> usize {
    let mut r = noise(2);
    let xs: Vec<online_softmax::Input> =
        (0..steps).map(|_| online_softmax::Input { s: 4.0 * r(), v: std::array::from_fn(|_| r()) }).collect();
    let op = Op::<online_softmax::Aggregator>::with_backend(backend).unwrap();
    let twin = psm_file("online_softmax").with_backend(backend);
    let s: Vec<f32> = xs.iter().map(|x| x.s).collect();
    let v: Vec<f32> = xs.iter().flat_map(|x| x.v).collect();
    let mut n = 0;
    for opts in forms(true) {
        let ys = op.run(&xs, &opts).unwrap();
        let want = twin.run(&psm::Inputs::new(&[], steps).input("s", &s).input("v", &v), &opts).unwrap();
        let got: Vec<f32> = ys.iter().flat_map(|y| y.y).collect();
        same_bits(&format!("online_softmax {:?}", opts.form), &got, want.f32("y").unwrap());
        n += got.len();
    }
    n
}
