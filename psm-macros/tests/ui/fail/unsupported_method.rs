#[psm::psm_aggregator]
mod wave {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v.sin() + r.v;
        out
    }
}
fn main() {}
