#![allow(dead_code)]
//! examples/ops/diag_affine.psm, mamba_s6.psm, online_softmax.psm, causal_mean.psm and
//! ema.psm, written in Rust with `#[psm_aggregator]`: the same operators, statement for
//! statement.

/// Diagonal affine recurrence over D channels: h_t[d] = a_t[d] * h_{t-1}[d] + b_t[d]
/// (the scan of S4D/Mamba-style selective state spaces once a and b are discretized).
#[psm::psm_aggregator(associative, dims(D = 16))]
pub mod diag_affine {
    pub struct Input {
        pub a: [f32; D],
        pub b: [f32; D],
    }
    pub struct State {
        pub a: [f32; D],
        pub b: [f32; D],
    }
    pub struct Output {
        pub y: [f32; D],
    }

    pub fn identity() -> State {
        let mut e = State::default();
        for d in 0..D {
            e.a[d] = 1.0;
            e.b[d] = 0.0;
        }
        e
    }

    // lift omitted: the state has exactly the input's fields.

    /// `l` earlier, `r` later.
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.a[d] = l.a[d] * r.a[d];
            out.b[d] = r.a[d] * l.b[d] + r.b[d];
        }
        out
    }

    pub fn readout(s: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = s.b[d];
        }
        out
    }
}

/// Online softmax with a value accumulator: y_t = sum_{s<=t} exp(s_s) v_s / sum_{s<=t} exp(s_s),
/// kept stably as (m, l, o) rescaled to the running max.
#[psm::psm_aggregator(associative, dims(D = 16))]
pub mod online_softmax {
    pub struct Input {
        pub s: f32,
        pub v: [f32; D],
    }
    pub struct State {
        pub m: f32,
        pub l: f32,
        pub o: [f32; D],
    }
    pub struct Output {
        pub y: [f32; D],
    }

    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        out.m = x.s;
        out.l = 1.0;
        for d in 0..D {
            out.o[d] = x.v[d];
        }
        out
    }

    /// `a` earlier, `b` later.
    pub fn combine(a: &State, b: &State) -> State {
        let mx = a.m.max(b.m);
        let ca = (a.m - mx).exp();
        let cb = (b.m - mx).exp();
        let mut out = State::default();
        out.m = mx;
        out.l = a.l * ca + b.l * cb;
        for d in 0..D {
            out.o[d] = a.o[d] * ca + b.o[d] * cb;
        }
        out
    }

    pub fn readout(st: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = st.o[d] / st.l;
        }
        out
    }
}

/// Mamba selective state space layer (S6), diagonal A, per channel d and state n:
///   delta_t = softplus(dt_t),  A = -exp(A_log),
///   h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] B_t[n] x_t[d],
///   y_t[d] = sum_n C_t[n] h_t[d, n] + skip[d] x_t[d].
#[psm::psm_aggregator(associative, dims(D = 8, N = 4))]
pub mod mamba_s6 {
    /// The layer's weights, shared by every step.
    pub struct Params {
        pub a_log: [[f32; N]; D],
        pub skip: [f32; D],
    }
    pub struct Input {
        pub dt: [f32; D],
        pub x: [f32; D],
        pub b: [f32; N],
        pub c: [f32; N],
    }
    pub struct State {
        pub a: [[f32; N]; D],
        pub h: [[f32; N]; D],
    }
    pub struct Output {
        pub y: [f32; D],
    }

    pub fn identity() -> State {
        let mut e = State::default();
        for d in 0..D {
            for n in 0..N {
                e.a[d][n] = 1.0;
                e.h[d][n] = 0.0;
            }
        }
        e
    }

    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        for d in 0..D {
            let delta = x.dt[d].softplus();
            for n in 0..N {
                out.a[d][n] = (-delta * p.a_log[d][n].exp()).exp();
                out.h[d][n] = delta * x.b[n] * x.x[d];
            }
        }
        out
    }

    /// `l` earlier, `r` later: no params needed, so none taken.
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            for n in 0..N {
                out.a[d][n] = l.a[d][n] * r.a[d][n];
                out.h[d][n] = r.a[d][n] * l.h[d][n] + r.h[d][n];
            }
        }
        out
    }

    pub fn readout(s: &State, x: &Input, p: &Params) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = (0..N).map(|n| s.h[d][n] * x.c[n]).sum::<f32>() + p.skip[d] * x.x[d];
        }
        out
    }
}

/// Causal mean of the previous tokens: y_0 = v_0, y_t = (1/t) sum_{s<t} v_s. An exclusive
/// readout without an identity: the state before step 0 is `None`.
#[psm::psm_aggregator(associative, dims(D = 16))]
pub mod causal_mean {
    pub struct Input {
        pub v: [f32; D],
    }
    pub struct State {
        pub s: [f32; D],
        pub n: f32,
    }
    pub struct Output {
        pub y: [f32; D],
    }

    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.s[d] = x.v[d];
        }
        out.n = 1.0;
        out
    }

    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.s[d] = l.s[d] + r.s[d];
        }
        out.n = l.n + r.n;
        out
    }

    pub fn readout_exclusive(p: Option<&State>, x: &Input) -> Output {
        let mut out = Output::default();
        for d in 0..D {
            out.y[d] = if let Some(p) = p { p.s[d] / p.n } else { x.v[d] };
        }
        out
    }
}

/// Exponential moving average in double precision: y_t = (1 - alpha) y_{t-1} + alpha v_t.
#[psm::psm_aggregator(associative)]
pub mod ema {
    pub struct Params {
        pub alpha: f64,
    }
    pub struct Input {
        pub v: f64,
    }
    pub struct State {
        pub a: f64,
        pub b: f64,
    }
    pub struct Output {
        pub y: f64,
    }

    pub fn identity() -> State {
        let mut e = State::default();
        e.a = 1.0;
        e.b = 0.0;
        e
    }

    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        out.a = 1.0 - p.alpha;
        out.b = p.alpha * x.v;
        out
    }

    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.a = l.a * r.a;
        out.b = r.a * l.b + r.b;
        out
    }

    pub fn readout(s: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        out.y = s.b;
        out
    }
}
