//! The backend never panics and never fails on a validated aggregator: mutants of the
//! library that still validate are compiled (and, when small, checked against the
//! interpreter), and the library is compiled at huge dims (offsets beyond 32 bits).

mod common;

use common::*;
use psm_ir::ir::Role;
use psm_ir::valid::DimOverride;

/// Splits source text into identifier/number tokens and single punctuation characters,
/// keeping whitespace and comments as they are.
fn tokens(src: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric()
            || c == '_'
            || c == '.' && out.last().is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
        {
            let mut t = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_alphanumeric() || d == '_' || (d == '.' && t.chars().all(|c| c.is_ascii_digit())) {
                    t.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(t);
        } else {
            out.push(c.to_string());
        }
    }
    out
}

fn mutate(rng: &mut Rng, toks: &[String], vocabulary: &[String]) -> String {
    let mut t = toks.to_vec();
    let significant: Vec<usize> = (0..t.len()).filter(|&k| !t[k].trim().is_empty()).collect();
    for _ in 0..1 + rng.below(3) {
        let k = significant[rng.below(significant.len() as u64) as usize];
        match rng.below(4) {
            0 => t[k] = vocabulary[rng.below(vocabulary.len() as u64) as usize].clone(),
            1 => {
                // Swap with another token of the same kind (identifier, number, punctuation).
                let kind = |s: &str| {
                    (s.chars().next().is_some_and(|c| c.is_alphabetic()), s.chars().all(|c| c.is_ascii_digit()))
                };
                let same: Vec<usize> = significant.iter().copied().filter(|&j| kind(&t[j]) == kind(&t[k])).collect();
                let j = same[rng.below(same.len() as u64) as usize];
                t.swap(j, k);
            }
            2 => t[k] = ["+", "-", "*", "/", "<", ">", "==", "!=", "&&", "||"][rng.below(10) as usize].to_string(),
            _ => {
                t[k] = [
                    "exp", "log", "max", "min", "abs", "sqrt", "rsqrt", "sigmoid", "softplus", "tanh", "sum", "max",
                    "prod", "1", "0", "2", "i", "j", "D", "K",
                ][rng.below(20) as usize]
                    .to_string()
            }
        }
    }
    t.concat()
}

#[test]
fn mutants_of_the_library_compile_and_agree() {
    let sources: Vec<String> = library_names().iter().map(|n| library_source(n)).collect();
    let all: Vec<Vec<String>> = sources.iter().map(|s| tokens(s)).collect();
    assert_eq!(all[0].concat(), sources[0], "tokens reassemble the source");
    let mut vocabulary: Vec<String> = all.iter().flatten().filter(|t| !t.trim().is_empty()).cloned().collect();
    vocabulary.sort();
    vocabulary.dedup();
    let mut rng = Rng::new(77);
    let (mut valid, mut checked) = (0, 0);
    for n in 0..4000u64 {
        let k = rng.below(all.len() as u64) as usize;
        let src = mutate(&mut rng, &all[k], &vocabulary);
        let Ok(module) = psm_ir::front::dsl::parse(&src) else { continue };
        let small = [DimOverride { name: "C".into(), value: 2 }, DimOverride { name: "D".into(), value: 3 }];
        let overrides: Vec<DimOverride> = small
            .iter()
            .filter(|o| module.aggregators.iter().any(|a| a.find_dim(&o.name).is_some()))
            .cloned()
            .collect();
        let Ok(infos) = psm_ir::valid::validate(&module, &overrides) else { continue };
        for (agg, info) in module.aggregators.iter().zip(&infos) {
            valid += 1;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                psm_codegen::clif::clif_text(agg, info).unwrap_or_else(|e| panic!("text: {e}"));
                let op = from_parts(agg.clone(), info.clone());
                // Compare with the interpreter where the data stay small.
                let sizes: Vec<usize> = agg
                    .tensors
                    .iter()
                    .map(|(t, _)| info.len(t))
                    .chain(info.local_shapes.iter().map(|s| s.iter().product()))
                    .collect();
                let small = sizes.into_iter().all(|n| n <= 4096) && agg.tensors_of(Role::Input).count() > 0;
                if small {
                    let data = special_data(&op, &mut Rng::new(n), 6);
                    check_against_interpreter(&op, &data);
                    let data = Data::random(&op, &mut Rng::new(n + 1), 6);
                    check_against_interpreter(&op, &data);
                }
                small
            }));
            match outcome {
                Ok(small) => checked += small as usize,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    panic!("mutant {n} of {}: {msg}\n{src}", library_names()[k]);
                }
            }
        }
    }
    println!("{valid} valid mutants, {checked} checked against the interpreter");
    assert!(valid > 200, "only {valid} mutants validated");
}

#[test]
fn huge_dims_compile() {
    for name in library_names() {
        let (module, _) = (psm_ir::front::dsl::parse(&library_source(&name)).unwrap(), ());
        let agg = &module.aggregators[0];
        let dims: Vec<String> = agg.dims.iter().map(|(_, d)| d.name.clone()).collect();
        for value in [1i64 << 16, 1 << 31] {
            let overrides: Vec<DimOverride> = dims.iter().map(|d| DimOverride { name: d.clone(), value }).collect();
            let Ok(infos) = psm_ir::valid::validate(&module, &overrides) else { continue };
            psm_codegen::clif::clif_text(agg, &infos[0]).unwrap_or_else(|e| panic!("{name} at {value}: {e}"));
            let c = psm_codegen::clif::compile(agg, &infos[0]).unwrap_or_else(|e| panic!("{name} at {value}: {e}"));
            assert!(c.layout.size >= 8);
        }
        // One dim huge at a time.
        for d in &dims {
            let overrides = [DimOverride { name: d.clone(), value: 1 << 31 }];
            let Ok(infos) = psm_ir::valid::validate(&module, &overrides) else { continue };
            psm_codegen::clif::compile(agg, &infos[0]).unwrap_or_else(|e| panic!("{name} with {d} huge: {e}"));
        }
    }
}
