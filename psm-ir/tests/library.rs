//! Every operator of the bundled library parses and validates at its default dims.

use psm_testgen::library;

#[test]
fn every_library_file_validates() {
    let mut failures = String::new();
    for (name, src) in library() {
        let result = psm_ir::front::dsl::parse(&src).and_then(|m| psm_ir::valid::validate(&m, &[]).map(|_| ()));
        if let Err(d) = result {
            failures.push_str(&psm_ir::diag::render(&d, &name, &src));
        }
    }
    assert!(failures.is_empty(), "{failures}");
}
