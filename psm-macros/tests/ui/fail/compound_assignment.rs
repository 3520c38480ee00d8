#[psm::psm_aggregator(dims(D = 4))]
mod total {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub s: f32 }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.s += x.v[d];
        }
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.s = l.s + r.s;
        out
    }
}
fn main() {}
