//! Every operator of the bundled library parses and validates at its default dims.

use std::path::PathBuf;

fn library() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "psm")).collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap())).collect()
}

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
