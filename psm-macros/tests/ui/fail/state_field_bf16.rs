// bf16/f16 are storage for inputs, params and outputs: the state accumulates in f32.
use psm::half::bf16;

#[psm::psm_aggregator]
mod running {
    use psm::half::bf16;
    pub struct Input { pub v: bf16 }
    pub struct State { pub v: bf16 }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        out.v = x.v;
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
}
fn main() {
    let _ = bf16::ZERO;
}
