#[psm::psm_aggregator(associative, dims(D = 4))]
mod cumsum {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn identity() -> State {
        let mut e = State::default();
        for d in 0..D {
            e.v[d] = 1.0;
        }
        e
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
