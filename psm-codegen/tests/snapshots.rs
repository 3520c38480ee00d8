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

/// elu's `if x > 0 { x + 1 } else { exp(x) }`: both sides computed and picked (lane by
/// lane in vectors: `exp` called for every lane), no branch on the data's signs.
#[test]
fn clif_linear_attention_small() {
    insta::assert_snapshot!("linear_attention_k4_v4", text("linear_attention", &[("K", 4), ("V", 4)]));
}
