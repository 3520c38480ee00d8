#[psm::psm_aggregator(dims(D = 16))]
mod half {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..8 {
            out.v[d] = l.v[d] + r.v[d];
        }
        out
    }
}
fn main() {}
