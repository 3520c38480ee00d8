#[psm::psm_aggregator]
mod counter {
    pub struct Input { pub n: i32 }
    pub struct State { pub n: i32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.n = l.n + r.n / 2;
        out
    }
}
fn main() {}
