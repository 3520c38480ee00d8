// One readout per aggregator: inclusive or exclusive.
#[psm::psm_aggregator]
mod sum {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub struct Output { pub y: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v + r.v;
        out
    }
    pub fn readout(s: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        out.y = s.v;
        out
    }
    pub fn readout_exclusive(p: &State, _x: &Input) -> Output {
        let mut out = Output::default();
        out.y = p.v;
        out
    }
}
fn main() {}
