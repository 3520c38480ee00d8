#[psm::psm_aggregator(dims(D = 8))]
mod shift {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d + 1] + r.v[d];
        }
        out
    }
}
fn main() {}
