//! The IR text form of every library operator, validated at its default dims, is
//! snapshot-tested: a change to lowering, validation or printing shows up here.

#[test]
fn library_ir_snapshots() {
    for (name, src) in psm_tests::library() {
        let module = psm_ir::front::dsl::parse(&src).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, &name, &src)));
        let infos = psm_ir::valid::validate(&module, &[]).unwrap_or_else(|d| panic!("{}", psm_ir::diag::render(&d, &name, &src)));
        let text = psm_ir::print::module(&module, Some(&infos));
        insta::assert_snapshot!(name.trim_end_matches(".psm"), text);
    }
}

/// Printing needs no validation: the dimension-generic IR prints on its own.
#[test]
fn printing_without_info_is_total() {
    for (_, src) in psm_tests::library() {
        let module = psm_ir::front::dsl::parse(&src).expect("library parses");
        assert!(psm_ir::print::module(&module, None).contains("aggregator "));
    }
}
