//! Parsing and validation never panic and never hang on any input (DESIGN.md §3):
//! the bytes, read as UTF-8 (lossily), are parsed and validated with the default dims;
//! diagnostics are rendered against the source, and an accepted module is printed.
//!
//! Lines of the form `//-D NAME=VALUE` (comments to the parser) are also applied as
//! `-D` overrides in a second validation, so that the fuzzer mutates dim values too.
//!
//!     cargo +nightly fuzz run parse_validate corpus/parse_validate seeds -- -dict=psm.dict -timeout=10

#![no_main]

use libfuzzer_sys::fuzz_target;
use psm_ir::valid::DimOverride;

fn overrides(source: &str) -> Vec<DimOverride> {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//-D "))
        .filter_map(|o| {
            let (name, value) = o.split_once('=')?;
            Some(DimOverride { name: name.trim().to_string(), value: value.trim().parse().ok()? })
        })
        .collect()
}

fn check(source: &str, overrides: &[DimOverride]) {
    match psm_ir::front::dsl::parse(source) {
        Err(diags) => {
            assert!(!diags.is_empty(), "an error without diagnostics");
            let _ = psm_ir::diag::render(&diags, "fuzz.psm", source);
        }
        Ok(module) => match psm_ir::valid::validate(&module, overrides) {
            Ok(infos) => {
                let _ = psm_ir::print::module(&module, Some(&infos));
            }
            Err(diags) => {
                assert!(!diags.is_empty(), "an error without diagnostics");
                for d in &diags {
                    for l in &d.labels {
                        let (s, e) = (l.span.start as usize, l.span.end as usize);
                        assert!(s <= e && e <= source.len(), "label outside the source: {l:?}");
                        assert!(source.is_char_boundary(s) && source.is_char_boundary(e), "label inside a character: {l:?}");
                    }
                }
                let _ = psm_ir::diag::render(&diags, "fuzz.psm", source);
                let _ = psm_ir::print::module(&module, None);
            }
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    check(&source, &[]);
    let o = overrides(&source);
    if !o.is_empty() {
        check(&source, &o);
    }
});
