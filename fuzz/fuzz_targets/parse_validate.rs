//! Parsing and validation never panic and never hang on any input (DESIGN.md §3):
//! the bytes, read as UTF-8 (lossily), are parsed and validated with the default dims;
//! diagnostics are rendered against the source, and an accepted module is printed.
//!
//!     cargo +nightly fuzz run parse_validate seeds -- -dict=psm.dict -timeout=10

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    match psm_ir::front::dsl::parse(&source) {
        Err(diags) => {
            assert!(!diags.is_empty(), "an error without diagnostics");
            let _ = psm_ir::diag::render(&diags, "fuzz.psm", &source);
        }
        Ok(module) => match psm_ir::valid::validate(&module, &[]) {
            Ok(infos) => {
                let _ = psm_ir::print::module(&module, Some(&infos));
            }
            Err(diags) => {
                assert!(!diags.is_empty(), "an error without diagnostics");
                let _ = psm_ir::diag::render(&diags, "fuzz.psm", &source);
                let _ = psm_ir::print::module(&module, None);
            }
        },
    }
});
