#[psm::psm_aggregator]
mod running {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        while out.v < 1.0 {
            out.v = l.v + r.v;
        }
        out
    }
}
fn main() {}
