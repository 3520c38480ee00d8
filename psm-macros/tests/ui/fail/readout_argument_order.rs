#[psm::psm_aggregator]
mod cumsum {
    pub struct Input { pub v: f32, pub w: f32 }
    pub struct State { pub v: f32 }
    pub struct Output { pub y: f32 }
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
    pub fn readout(x: &Input, s: &State) -> Output {
        let mut out = Output::default();
        out.y = s.v * x.w;
        out
    }
}
fn main() {}
