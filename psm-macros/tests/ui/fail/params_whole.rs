// The params are read field by field, like the other arguments.
#[psm::psm_aggregator]
mod scaled {
    pub struct Params { pub w: f32 }
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        let q = p;
        out.v = x.v * q.w;
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
}
fn main() {}
