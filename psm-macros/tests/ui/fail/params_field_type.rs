// Params are fixed-size like every psm tensor.
#[psm::psm_aggregator]
mod scaled {
    pub struct Params { pub w: Vec<f32> }
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
}
fn main() {}
