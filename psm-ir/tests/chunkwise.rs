//! The chunkwise derivation over the whole library: which operators have the
//! linear-attention shape (their derived form snapshot-tested: transitions,
//! contractions, and the feature and readout maps in the psm language) and, for every
//! other operator, the reason it does not.

use psm_ir::derive::chunkwise::chunkwise;
use psm_testgen::library;

/// Operators whose IR has the shape; every other library operator must be refused.
const APPLIES: [&str; 9] = ["deltanet", "gated_deltanet", "gla", "gla_bf16", "linear_attention", "mamba2", "mlstm_affine", "retnet", "rwkv6"];

#[test]
fn library_plans_and_reasons() {
    let mut reasons = String::new();
    let mut applied = Vec::new();
    for (_, src) in library() {
        let module = psm_ir::front::dsl::parse(&src).unwrap();
        let infos = psm_ir::valid::validate(&module, &[]).unwrap();
        for (agg, info) in module.aggregators.iter().zip(&infos) {
            match chunkwise(agg, info) {
                Ok(plan) => {
                    applied.push(agg.name.clone());
                    insta::assert_snapshot!(format!("chunkwise_{}", agg.name), plan.to_string());
                }
                Err(why) => {
                    assert!(!why.0.starts_with("internal"), "{}: {why}", agg.name);
                    reasons.push_str(&format!("{}: {why}\n", agg.name));
                }
            }
        }
    }
    applied.sort();
    assert_eq!(applied, APPLIES, "reasons for the others:\n{reasons}");
    insta::assert_snapshot!("chunkwise_reasons", reasons);
}

/// The pass matches structure, not names: GLA renamed, its fields reordered and its
/// products commuted derives the same form.
#[test]
fn matches_structure_not_names() {
    let src = "aggregator renamed<K = 4, V = 3> {
        input { gate[K], val[V], key[K], query[K] }
        element { mem[K, V], decay[K] }
        lift(inp) { decay[a] = inp.gate[a]; mem[a, b] = inp.val[b] * (2.0 * inp.key[a]); }
        combine(x, y) { mem[a, b] = y.mem[a, b] + l_times(x, y); decay[a] = y.decay[a] * x.decay[a]; }
        readout inclusive(s, inp) -> out[V] { out[b] = sum(a) inp.query[a] * s.mem[a, b]; }
    }"
    .replace("l_times(x, y)", "x.mem[a, b] * y.decay[a]");
    let module = psm_ir::front::dsl::parse(&src).unwrap();
    let info = psm_ir::valid::validate(&module, &[]).unwrap();
    let plan = chunkwise(&module.aggregators[0], &info[0]).unwrap();
    assert_eq!(plan.summary(), "mem[4, 3] diagonal decay; 1 inclusive contraction(s)");
    let features = plan.features.unwrap();
    assert!(features.contains("cw_v_mem[b] = 2.0 * x.val[b];"), "{features}");
    let inputs: Vec<(&str, &str)> = plan.inputs.iter().map(|(f, i)| (f.as_str(), i.as_str())).collect();
    assert_eq!(inputs, [("cw_k_mem", "key"), ("cw_decay_decay", "gate"), ("cw_q0", "query")]);
}

/// A dense transition that is not a projector is refused with its reason.
#[test]
fn general_dense_transition_is_refused() {
    let src = "aggregator dense<K = 3> {
        input { m[K, K], k[K], q[K] }
        element { A[K, K], s[K] }
        lift(x) { A[i, j] = x.m[i, j]; s[i] = x.k[i]; }
        combine(l, r) { A[i, j] = sum(p) r.A[i, p] * l.A[p, j]; s[i] = (sum(p) r.A[i, p] * l.s[p]) + r.s[i]; }
        readout inclusive(st, x) -> o { o = sum(i) st.s[i] * x.q[i]; }
    }";
    let module = psm_ir::front::dsl::parse(src).unwrap();
    let info = psm_ir::valid::validate(&module, &[]).unwrap();
    let why = chunkwise(&module.aggregators[0], &info[0]).unwrap_err();
    assert!(why.0.contains("not the delta rule"), "{why}");
}

/// Per library operator: whether every output is a contraction as it is (a backend may
/// skip the readout map), and the element field holding each state field's transition
/// (what a backend composes for the final element).
#[test]
fn direct_outputs_and_transition_fields() {
    let expected: [(&str, bool, &[Option<&str>]); 8] = [
        ("deltanet", true, &[Some("A")]),
        ("gated_deltanet", true, &[Some("A")]),
        ("gla", true, &[Some("a")]),
        ("linear_attention", false, &[None, None]),
        ("mamba2", false, &[Some("a")]),
        ("mlstm_affine", false, &[Some("f"), Some("f")]),
        ("retnet", true, &[Some("g")]),
        ("rwkv6", false, &[Some("a")]),
    ];
    let plans: Vec<_> = library()
        .into_iter()
        .flat_map(|(_, src)| {
            let module = psm_ir::front::dsl::parse(&src).unwrap();
            let infos = psm_ir::valid::validate(&module, &[]).unwrap();
            module.aggregators.iter().zip(&infos).filter_map(|(agg, info)| chunkwise(agg, info).ok()).collect::<Vec<_>>()
        })
        .collect();
    for (name, direct, transitions) in expected {
        let plan = plans.iter().find(|p| p.aggregator == name).unwrap();
        assert_eq!(plan.direct.is_some(), direct, "{name}: {:?}", plan.direct);
        if let Some(d) = &plan.direct {
            assert_eq!(d, &vec![0], "{name}: its one output is its one contraction");
        }
        let found: Vec<Option<&str>> = plan.fields.iter().map(|f| f.transition.as_deref()).collect();
        assert_eq!(found, transitions, "{name}");
    }
}
