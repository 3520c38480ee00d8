// Derives the user wrote are kept (and not repeated); `Default` on arrays of any size
// is psm's zero `Default`, and a hand-written `impl Default` is the user's.
#[psm::psm_aggregator(associative, dims(D = 40))]
mod wide {
    #[derive(Debug, Default, Clone, Copy, PartialEq)]
    pub struct Input { pub v: [f32; D] }
    #[derive(Clone, Copy)]
    pub struct State { pub v: [f32; D], pub n: i32 }
    impl Default for State {
        fn default() -> Self {
            State { v: [0.0; D], n: 0 }
        }
    }
    pub fn lift(x: &Input) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = x.v[d];
        }
        out.n = 1;
        out
    }
    pub fn combine(l: &State, r: &State) -> State {
        let mut out = State::default();
        for d in 0..D {
            out.v[d] = l.v[d] + r.v[d];
        }
        out.n = l.n + r.n;
        out
    }
}

fn main() {
    let xs: Vec<wide::Input> = (0..5).map(|t| wide::Input { v: [t as f32 - 2.0; 40] }).collect();
    assert_eq!(wide::Input::default().v, [0.0; 40]);
    let ys = psm::run::<wide::Aggregator>(&xs).unwrap();
    assert_eq!(ys[4].n, 5);
    assert_eq!(ys[4].v, [0.0; 40]);
    assert_eq!(ys[0], wide::lift(&xs[0]));
}
