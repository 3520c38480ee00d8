// A macro aggregator runs with its own structs, and stays plain Rust.
#[psm::psm_aggregator(associative, dims(D = 2, N = 3))]
mod ssm {
    pub struct Input { pub a: [f32; D], pub b: [f32; N], pub x: [f32; D], pub c: [f32; N] }
    pub struct State { pub a: [f32; D], pub h: [[f32; N]; D] }
    pub struct Output { pub y: [f32; D] }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for d in 0..D {
            let decay = (-(x.a[d].abs())).exp();
            out.a[d] = decay;
            for n in 0..N {
                out.h[d][n] = x.b[n] * x.x[d];
            }
        }
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.a[d] = l.a[d] * r.a[d];
            for n in 0..N {
                out.h[d][n] = r.a[d] * l.h[d][n] + r.h[d][n];
            }
        }
        out
    }
    pub fn readout(s: &State, x: &Input) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = (0..N).map(|n| s.h[d][n] * x.c[n]).sum::<f32>();
        }
        out
    }
}

fn main() {
    let xs: Vec<ssm::Input> = (0..5)
        .map(|t| ssm::Input { a: [0.1 * t as f32, 0.2], b: [1.0, 0.5, 0.25], x: [1.0, -1.0], c: [1.0, 1.0, 1.0] })
        .collect();
    let op = psm::Op::<ssm::Aggregator>::with_backend(psm::Backend::Interp).unwrap();
    assert!(op.associative());
    let ys = op.run(&xs, &psm::RunOptions::default()).unwrap();
    // The same scan in plain Rust, through the user's own functions.
    let mut s = ssm::lift(&xs[0]);
    for (t, x) in xs.iter().enumerate() {
        if t > 0 {
            s = ssm::combine(&s, &ssm::lift(x));
        }
        let y = ssm::readout(&s, x);
        for d in 0..ssm::D {
            assert!((y.y[d] - ys[t].y[d]).abs() < 1e-5, "step {t}: {:?} vs {:?}", y, ys[t]);
        }
    }
}
