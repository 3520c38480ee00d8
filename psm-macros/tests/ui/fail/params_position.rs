// `&Params` comes last, after the arguments the function always takes.
#[psm::psm_aggregator]
mod scaled {
    pub struct Params { pub w: f32 }
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(p: &Params, l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + p.w * r.v;
        out
    }
}
fn main() {}
