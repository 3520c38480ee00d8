//! Compile-time behaviour of `#[psm_aggregator]`: every case of ui/fail must fail with
//! the error snapshotted beside it; every case of ui/pass must build and run.
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test -p psm-macros --test ui`
//! and read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
