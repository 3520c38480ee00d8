// Params as the user's struct, psm's builtins in their Rust spelling, typed streams,
// initial and final states, and the embedded IR validated at other dims at run time.
#[psm::psm_aggregator(associative, dims(D = 3))]
mod gated {
    pub struct Params { pub w: [f32; D], pub bias: f32 }
    pub struct Input { pub g: [f32; D], pub v: [f32; D] }
    pub struct State { pub a: [f32; D], pub h: [f32; D] }
    pub struct Output { pub y: [f32; D] }
    pub fn identity() -> State {
        let mut e = State::default();
        for d in 0..D {
            e.a[d] = 1.0;
            e.h[d] = 0.0;
        }
        e
    }
    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.a[d] = (x.g[d] * p.w[d] + p.bias).sigmoid();
            out.h[d] = x.v[d].softplus() * (D as f32).rsqrt();
        }
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.a[d] = l.a[d] * r.a[d];
            out.h[d] = r.a[d] * l.h[d] + r.h[d];
        }
        out
    }
    pub fn readout(s: &State, _x: &Input, p: &Params) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = s.h[d] * p.w[d];
        }
        out
    }
}

fn main() {
    use psm::Float;
    let params = gated::Params { w: [0.5, -1.0, 2.0], bias: 0.25 };
    let xs: Vec<gated::Input> = (0..9).map(|t| gated::Input { g: [t as f32 * 0.1, -0.3, 1.0], v: [1.0, -2.0, t as f32] }).collect();
    let op = psm::Op::<gated::Aggregator>::with_backend(psm::Backend::Interp).unwrap();
    let opts = psm::RunOptions { form: psm::Form::Recurrent, ..Default::default() };
    let ys = op.run_with(&params, &xs, &opts).unwrap();

    // The plain Rust, params and builtins included, computes the same scan.
    let mut s = gated::identity();
    for (t, x) in xs.iter().enumerate() {
        s = gated::combine(&s, &gated::lift(x, &params));
        let y = gated::readout(&s, x, &params);
        for d in 0..gated::D {
            assert!((y.y[d] - ys[t].y[d]).abs() <= 1e-6 * y.y[d].abs().max(1.0), "step {t}: {y:?} vs {:?}", ys[t]);
        }
    }
    assert_eq!(4.0f32.rsqrt(), 0.5);
    assert_eq!(0.0f64.sigmoid(), 0.5);

    // A stream pushed step by step is the recurrent run, bit for bit.
    let mut stream = op.stream(&params, None).unwrap();
    for (t, x) in xs.iter().enumerate() {
        assert_eq!(stream.push(x).unwrap(), ys[t]);
    }
    // Two runs handing the state over are the whole run.
    let head = op.run_from(&params, None, &xs[..4], &opts).unwrap();
    let tail = op.run_from(&params, head.final_state.as_ref(), &xs[4..], &opts).unwrap();
    assert_eq!(&tail.outputs[..], &ys[4..]);
    assert_eq!(tail.final_state, stream.state());

    // The embedded IR validates at other dims (named buffers: the structs are sized at D = 3).
    use psm::Aggregator;
    let d5 = [psm::DimOverride { name: "D".into(), value: 5 }];
    let wide = psm::runtime::Program::from_module(<gated::Aggregator>::module(), &d5).unwrap().aggregator("gated").unwrap();
    assert_eq!(wide.signature().inputs[0].shape, vec![5]);
}
