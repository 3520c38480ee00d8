//! bf16/f16 fields in `#[psm_aggregator]`: a GLA with bf16 inputs and output, written in
//! Rust (`.to_f32()` to widen, `bf16::from_f32` to round, as psm reads and writes
//! them), is `examples/ops/gla_bf16.psm`: outputs bit-identical in every form on both
//! backends; and the plain Rust functions compute the same values.

use psm::half::{bf16, f16};
use psm::{Backend, Form, Op, RunOptions};

#[psm::psm_aggregator(associative, dims(K = 4, V = 4))]
mod gla_bf16 {
    use psm::half::bf16;

    pub struct Input { pub q: [bf16; K], pub k: [bf16; K], pub v: [bf16; V], pub alpha: [bf16; K] }
    pub struct State { pub a: [f32; K], pub s: [[f32; V]; K] }
    pub struct Output { pub o: [bf16; V] }

    pub fn identity() -> State {
        let mut e = State::default();
        for i in 0..K {
            e.a[i] = 1.0;
            for j in 0..V {
                e.s[i][j] = 0.0;
            }
        }
        e
    }

    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for i in 0..K {
            out.a[i] = x.alpha[i].to_f32();
            for j in 0..V {
                out.s[i][j] = x.k[i].to_f32() * x.v[j].to_f32();
            }
        }
        out
    }

    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for i in 0..K {
            out.a[i] = l.a[i] * r.a[i];
            for j in 0..V {
                out.s[i][j] = r.a[i] * l.s[i][j] + r.s[i][j];
            }
        }
        out
    }

    pub fn readout(st: &State, x: &Input) -> Output {
        let mut out = Output::default();
        for j in 0..V {
            out.o[j] = bf16::from_f32((0..K).map(|i| st.s[i][j] * x.q[i].to_f32()).sum::<f32>());
        }
        out
    }
}

#[psm::psm_aggregator(associative)]
mod cumsum_f16 {
    use psm::half::f16;

    pub struct Input { pub v: f16 }
    pub struct State { pub v: f32 }
    pub struct Output { pub y: f16 }

    pub fn identity() -> State {
        let mut out = State::default();
        out.v = 0.0;
        out
    }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        out.v = x.v.to_f32();
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
    pub fn readout(s: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        out.y = f16::from_f32(s.v);
        out
    }
}

/// Deterministic data in (-1, 1), gates in (0.5, 1), rounded to bf16.
fn inputs(n: usize) -> Vec<gla_bf16::Input> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    (0..n)
        .map(|_| gla_bf16::Input {
            q: std::array::from_fn(|_| bf16::from_f32(next())),
            k: std::array::from_fn(|_| bf16::from_f32(next())),
            v: std::array::from_fn(|_| bf16::from_f32(next())),
            alpha: std::array::from_fn(|_| bf16::from_f32(0.75 + 0.25 * next())),
        })
        .collect()
}

#[test]
fn the_macro_gla_bf16_is_the_psm_file() {
    let n = 57;
    let xs = inputs(n);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ops/gla_bf16.psm");
    let dims = [psm::DimOverride { name: "K".into(), value: 4 }, psm::DimOverride { name: "V".into(), value: 4 }];
    let program = psm::runtime::Program::from_file(&file, &dims).unwrap();
    for backend in [Backend::Cpu, Backend::Interp] {
        let op = Op::<gla_bf16::Aggregator>::with_backend(backend).unwrap();
        let from_file = program.aggregator("gla_bf16").unwrap().with_backend(backend);
        let field = |f: fn(&gla_bf16::Input) -> &[bf16; 4]| xs.iter().flat_map(|x| *f(x)).collect::<Vec<bf16>>();
        let (q, k, v, alpha) = (field(|x| &x.q), field(|x| &x.k), field(|x| &x.v), field(|x| &x.alpha));
        let named = psm::Inputs::new(&[], n).input("q", &q).input("k", &k).input("v", &v).input("alpha", &alpha);
        for form in [Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream] {
            let opts = RunOptions { form, chunk: Some(8), ..Default::default() };
            let ours: Vec<bf16> = op.run(&xs, &opts).unwrap().iter().flat_map(|y| y.o).collect();
            let theirs = from_file.run(&named, &opts).unwrap();
            let theirs = theirs.get("o").unwrap().as_bf16().unwrap();
            let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(theirs), "{backend:?} {form:?}");
        }
    }
}

#[test]
fn the_plain_rust_functions_compute_the_same_values() {
    let xs = inputs(30);
    let op = Op::<gla_bf16::Aggregator>::new().unwrap();
    let recurrent = RunOptions { form: Form::Recurrent, ..Default::default() };
    let ys = op.run(&xs, &recurrent).unwrap();
    let mut s = gla_bf16::identity();
    for (x, y) in xs.iter().zip(&ys) {
        s = gla_bf16::combine(&s, &gla_bf16::lift(x));
        // `==` on bf16: +0 and -0 are equal (Rust's sum starts from -0.0, psm's
        // reduction from its first term).
        assert_eq!(gla_bf16::readout(&s, x).o, y.o);
    }
}

#[test]
fn f16_fields_round_like_the_psm_file() {
    let xs: Vec<cumsum_f16::Input> = [1.0f32, 0.000_976_6, 2048.0, 1.0, 60000.0, 10000.0].iter().map(|&v| cumsum_f16::Input { v: f16::from_f32(v) }).collect();
    let ys = psm::run::<cumsum_f16::Aggregator>(&xs).unwrap();
    let mut total = 0.0f32;
    for (x, y) in xs.iter().zip(&ys) {
        total += x.v.to_f32();
        assert_eq!(y.y.to_bits(), f16::from_f32(total).to_bits());
    }
    assert_eq!(ys[5].y, f16::INFINITY);
}
