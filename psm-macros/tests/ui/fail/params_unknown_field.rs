// A param is read by a field `Params` declares.
#[psm::psm_aggregator(dims(D = 2))]
mod scaled {
    pub struct Params { pub w: [f32; D] }
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = x.v[d] * p.scale[d];
        }
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d] + r.v[d];
        }
        out
    }
}
fn main() {}
