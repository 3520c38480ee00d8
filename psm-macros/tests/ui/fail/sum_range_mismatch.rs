#[psm::psm_aggregator(dims(D = 4, N = 8))]
mod mix {
    pub struct Input { pub v: [f32; N] }
    pub struct State { pub s: f32 }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        out.s = (0..D).map(|n| x.v[n]).sum::<f32>();
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.s = l.s + r.s;
        out
    }
}
fn main() {}
