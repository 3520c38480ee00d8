// psm's builtins keep their arity: `sigmoid` takes no argument besides its receiver.
#[psm::psm_aggregator]
mod gate {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v.sigmoid(r.v);
        out
    }
}
fn main() {}
