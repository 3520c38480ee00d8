//! Random aggregators: seeded programs over every construct of the language (every
//! operator and built-in, reductions, guards, `let`s, i32 and f64 values, both readout
//! kinds, `empty(p)`), each compiled and checked against the interpreter like a library
//! operator, on ordinary data and on special values.

mod common;

use common::programs::program;
use common::*;

/// `count` valid random programs with vectors of `d` entries, each checked against the
/// interpreter on ordinary data and on special values.
fn random_programs(seed: u64, d: usize, count: usize) {
    let mut rng = Rng::new(seed);
    let (mut valid, mut tried) = (0, 0);
    while valid < count && tried < 2000 {
        tried += 1;
        let source = program(&mut rng, tried, d);
        let Ok(module) = psm_ir::front::dsl::parse(&source) else {
            panic!("generated source does not parse:\n{source}");
        };
        let Ok(infos) = psm_ir::valid::validate(&module, &[]) else { continue };
        valid += 1;
        let (agg, info) = (module.aggregators[0].clone(), infos[0].clone());
        let text = psm_codegen::clif::clif_text(&agg, &info).unwrap_or_else(|e| panic!("{e}\n{source}"));
        assert!(!text.is_empty());
        let op = from_parts(agg, info);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_op(&op, tried as u64);
            let mut r = Rng::new(tried as u64 + 1);
            let data = special_data(&op, &mut r, 40);
            check_against_interpreter(&op, &data);
        }));
        if let Err(e) = outcome {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("program {tried} disagrees: {msg}\n{source}");
        }
    }
    println!("{valid} valid programs of {tried}");
    assert!(valid * 3 >= count * 2, "only {valid} of {tried} generated programs validate");
}

#[test]
fn random_programs_agree_with_the_interpreter() {
    random_programs(2024, 3, 150);
}

/// D = 9: two f32 vectors and a scalar entry, four f64 vectors and a scalar entry.
#[test]
fn random_vector_programs_agree_with_the_interpreter() {
    random_programs(4242, 9, 100);
}

/// Expressions as deep as the parser admits compile on an ordinary thread (lowering
/// recurses along the expression, as the interpreter does).
#[test]
fn deepest_expressions_compile() {
    let chain: Vec<String> = (0..240).map(|k| format!("r.a * {}", k % 7)).collect();
    let nested = (0..120).fold("r.a".to_string(), |e, k| format!("max({e}, l.a - {k})"));
    let source = format!(
        "aggregator long {{ input {{ a }} element {{ a, b }} lift(x) {{ a = x.a; b = x.a; }} combine(l, r) {{ a = l.a + {}; b = {nested}; }} }}",
        chain.join(" + ")
    );
    let (agg, info) = parse_one(&source, &[]);
    let op = from_parts(agg, info);
    let mut rng = Rng::new(1);
    let data = Data::random(&op, &mut rng, 4);
    check_against_interpreter(&op, &data);
}
