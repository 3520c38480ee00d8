#[psm::psm_aggregator]
mod twice {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = (|x: f32| x * 2.0)(l.v) + r.v;
        out
    }
}
fn main() {}
