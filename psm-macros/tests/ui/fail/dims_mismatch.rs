// An input sized by another dim than the state it is lifted into.
#[psm::psm_aggregator(dims(D = 4, K = 2))]
mod proj {
    pub struct Input { pub v: [f32; K] }
    pub struct State { pub v: [f32; D] }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = x.v[d];
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
