// `Aggregator<4>` runs the structs at D = 4: steps sized at the default D = 2 do not fit.
#[psm::psm_aggregator(dims(D = 2))]
mod sum {
    pub struct Input { pub v: [f32; D] }
    pub struct State { pub v: [f32; D] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d] + r.v[d];
        }
        out
    }
}
fn main() {
    let xs: Vec<sum::Input> = vec![sum::Input { v: [1.0, 2.0] }];
    let op = psm::Op::<sum::Aggregator<4>>::new().unwrap();
    let _ = op.run(&xs, &psm::RunOptions::default());
}
