//! The CLIF text of a few library operators, reviewed by reading: the pre-optimization
//! IR as built, identical on every machine (i64 pointers, `system_v`).

mod common;

use common::*;

fn text(name: &str, dims: &[(&str, i64)]) -> String {
    let (agg, info) = parse_one(&library_source(name), dims);
    psm_codegen::clif::clif_text(&agg, &info).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn clif_cumsum() {
    insta::assert_snapshot!("cumsum", text("cumsum", &[]));
}

#[test]
fn clif_scalar_affine() {
    insta::assert_snapshot!("scalar_affine", text("scalar_affine", &[]));
}

#[test]
fn clif_gla() {
    insta::assert_snapshot!("gla", text("gla", &[]));
}

#[test]
fn clif_attn_agg_small() {
    insta::assert_snapshot!("attn_agg_c2_d4", text("attn_agg", &[("C", 2), ("D", 4)]));
}
