// An aggregator that declares `Params` is run with them: `run` is for those without.
#[psm::psm_aggregator(dims(D = 2))]
mod scaled {
    pub struct Params { pub w: [f32; D] }
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn lift(x: &Input, p: &Params) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = x.v[d] * p.w[d];
        }
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d] + r.v[d];
        }
        out
    }
}
fn main() {
    let op = psm::Op::<scaled::Aggregator>::new().unwrap();
    let xs = [scaled::Input { v: [1.0, 2.0] }];
    let _ = op.run(&xs, &psm::RunOptions::default());
}
