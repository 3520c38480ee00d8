// Non-associative operators compile without a claim and run in the fixed tree;
// `assume_associative` accepts an operator the checker cannot decide.
#[psm::psm_aggregator]
mod subtract {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = l.v - r.v;
        out
    }
}

#[psm::psm_aggregator(assume_associative)]
mod hypot {
    pub struct Input { pub v: f32 }
    pub struct State { pub v: f32 }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        out.v = if l.v > r.v { (l.v * l.v + r.v * r.v).sqrt() } else { (r.v * r.v + l.v * l.v).sqrt() };
        out
    }
}

fn main() {
    assert!(psm::Op::<hypot::Aggregator>::with_backend(psm::Backend::Interp).unwrap().associative());
    let xs: Vec<subtract::Input> = (0..6).map(|t| subtract::Input { v: t as f32 }).collect();
    let op = psm::Op::<subtract::Aggregator>::with_backend(psm::Backend::Interp).unwrap();
    assert!(!op.associative());
    let ys = op.run(&xs, &psm::RunOptions::default()).unwrap();
    // y_5 reads the fixed tree's p_6 = ((0-1)-(2-3))-(4-5).
    assert_eq!(ys[5].v, 1.0);
    let chunked = psm::RunOptions { form: psm::Form::Chunked, ..Default::default() };
    assert!(op.run(&xs, &chunked).is_err());
}
