//! Cross-crate tests live in `tests/`; this library only locates the repository.
