// The state before step 0 may be absent: it is read inside `if let Some(p) = p`.
#[psm::psm_aggregator(dims(D = 2))]
mod mean {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub s: [f32; D], pub n: f32 }
    pub struct Output { pub y: [f32; D] }
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
            out.y[d] = if p.is_none() { x.v[d] } else { p.s[d] / p.n };
        }
        out
    }
}
fn main() {}
