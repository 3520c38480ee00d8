#[psm::psm_aggregator(dims(D = 4))]
mod affine {
    pub struct Input { pub a: [f32; D], pub b: [f32; D] }
    pub struct State { pub a: [f32; D], pub b: [f32; D] }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.a[d] = l.a[d] * r.a[d];
        }
        out
    }
}
fn main() {}
