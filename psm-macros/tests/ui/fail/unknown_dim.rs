#[psm::psm_aggregator(dims(D = 4))]
mod gla {
    pub struct Input { pub k: [f32; K] }
    pub struct State { pub k: [f32; K] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for i in 0..K {
            out.k[i] = l.k[i] + r.k[i];
        }
        out
    }
}
fn main() {}
