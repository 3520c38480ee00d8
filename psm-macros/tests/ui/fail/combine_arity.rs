#[psm::psm_aggregator]
mod lonely {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State) -> State {
        let mut out = State::default();
        out.v = l.v;
        out
    }
}
fn main() {}
