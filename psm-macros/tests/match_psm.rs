//! The macro's diag_affine, mamba_s6, causal_mean, ema (f64) and online_softmax are the
//! `.psm` operators: every output bit-identical, in every form, through the typed run,
//! stream and state APIs, on both backends; and the embedded IR is the `.psm` file's.

#[path = "../examples/common/ops.rs"]
mod ops;
#[path = "../examples/common/compare.rs"]
mod compare;

use psm::Backend;

#[test]
fn diag_affine_matches_psm_file() {
    assert!(compare::diag_affine(Backend::Cpu, 100) > 0);
    assert!(compare::diag_affine(Backend::Interp, 37) > 0);
}

#[test]
fn mamba_s6_matches_psm_file() {
    assert!(compare::mamba_s6::<8, 4>(Backend::Cpu, 100) > 0);
    assert!(compare::mamba_s6::<8, 4>(Backend::Interp, 37) > 0);
}

#[test]
fn mamba_s6_at_other_dims_matches_psm_file() {
    // The structs and the IR at D = 16, N = 3; the `.psm` file with `-D D=16 -D N=3`.
    assert!(compare::mamba_s6::<16, 3>(Backend::Cpu, 50) > 0);
    assert!(compare::mamba_s6::<16, 3>(Backend::Interp, 20) > 0);
}

#[test]
fn causal_mean_matches_psm_file() {
    // `if let Some(p) = p` in Rust, `empty(p)` in psm.
    assert!(compare::causal_mean(Backend::Cpu, 100) > 0);
    assert!(compare::causal_mean(Backend::Interp, 37) > 0);
}

#[test]
fn ema_in_f64_matches_psm_file() {
    assert!(compare::ema(Backend::Cpu, 100) > 0);
    assert!(compare::ema(Backend::Interp, 37) > 0);
}

#[test]
fn online_softmax_matches_psm_file() {
    assert!(compare::online_softmax(Backend::Cpu, 100) > 0);
    assert!(compare::online_softmax(Backend::Interp, 37) > 0);
}

#[test]
fn the_ir_is_the_psm_files() {
    use psm::Aggregator;
    for (module, name) in [
        (<ops::diag_affine::Aggregator>::module(), "diag_affine"),
        (<ops::mamba_s6::Aggregator>::module(), "mamba_s6"),
        (<ops::online_softmax::Aggregator>::module(), "online_softmax"),
        (<ops::ema::Aggregator>::module(), "ema"),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/ops/{name}.psm"));
        let file = psm::ir::front::dsl::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (a, b) = (&module.aggregators[0], &file.aggregators[0]);
        assert_eq!(a.name, b.name);
        // Names may differ (`a_log` is `A_log`); roles, dtypes, shapes and code may not.
        let tensors = |g: &psm::ir::ir::Aggregator| g.tensors.iter().map(|(_, t)| (t.role, t.dtype, t.shape.clone())).collect::<Vec<_>>();
        assert_eq!(tensors(a), tensors(b), "{name}: tensors");
        assert_eq!(a.exprs.len(), b.exprs.len(), "{name}: expression count");
        for ((_, x), (_, y)) in a.exprs.iter().zip(b.exprs.iter()) {
            assert_eq!(x, y, "{name}");
        }
        let stmts = |g: &psm::ir::ir::Aggregator| {
            g.bodies().map(|body| (body.kind, body.stmts.iter().map(|s| (s.target, s.indices.clone(), s.value)).collect::<Vec<_>>())).collect::<Vec<_>>()
        };
        assert_eq!(stmts(a), stmts(b), "{name}: statements");
        assert_eq!(a.readout_kind, b.readout_kind, "{name}");
    }
}

#[test]
fn plain_rust_still_works() {
    let x = ops::diag_affine::State { a: [0.5; 16], b: [1.0; 16] };
    let e = ops::diag_affine::identity();
    assert_eq!(ops::diag_affine::combine(&e, &x), x);
    assert_eq!(ops::diag_affine::combine(&x, &x).b, [1.5; 16]);
}
