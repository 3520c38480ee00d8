// Associative in exact arithmetic, but `sqrt` is outside what the checker decides.
#[psm::psm_aggregator(associative)]
mod hypot {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = (l.v * l.v + r.v * r.v).sqrt();
        out
    }
}
fn main() {}
