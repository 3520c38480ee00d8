// A function takes `&Params` only when the module declares them.
#[psm::psm_aggregator]
mod scaled {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        out.v = x.v * p.w;
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
}
fn main() {}
