//! Test-data generators shared by the test suites of several psm crates (a dev-only
//! dependency; nothing here is part of psm's API).

pub mod algebra;

/// Every operator of the bundled library (`examples/ops/*.psm`), as (file name, source),
/// sorted by file name.
pub fn library() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ops");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ops")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "psm"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let source = std::fs::read_to_string(&p).expect("a library source");
            (p.file_name().expect("a file name").to_string_lossy().into_owned(), source)
        })
        .collect()
}
