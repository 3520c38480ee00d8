//! Cross-crate tests over the operator library. This library gives them the library's
//! files.

use std::path::PathBuf;

/// The directory of the bundled operator library.
pub fn ops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ops")
}

/// Every `.psm` file of the library, sorted by name, with its text.
pub fn library() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(ops_dir())
        .expect("examples/ops exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "psm"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("a file name").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("readable library file");
            (name, text)
        })
        .collect()
}
