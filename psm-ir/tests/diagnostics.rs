//! The compiler's error messages, one snapshot per mistake a user makes.
//!
//! Each case is a small complete `.psm` source with one mistake, parsed and validated
//! (with `-D` overrides where the mistake is in them) and rendered the way `psmc`
//! prints it. A snapshot is reviewed by reading it: the caret must sit under the
//! mistake, the message must say what is wrong and the help what to write instead.
//! The snapshot's description holds the source, so a `.snap` file reads on its own.

use psm_ir::diag::render;
use psm_ir::front::dsl::parse;
use psm_ir::valid::{validate, DimOverride};

fn overrides(dims: &[(&str, i64)]) -> Vec<DimOverride> {
    dims.iter().map(|&(name, value)| DimOverride { name: name.to_string(), value }).collect()
}

/// Parses and validates; the rendered diagnostics, or a panic if the source is accepted.
fn errors(src: &str, dims: &[(&str, i64)]) -> String {
    let diags = match parse(src) {
        Err(d) => d,
        Ok(m) => match validate(&m, &overrides(dims)) {
            Err(d) => d,
            Ok(_) => panic!("expected an error, but the source was accepted:\n{src}"),
        },
    };
    assert!(!diags.is_empty(), "an Err without diagnostics");
    render(&diags, "example.psm", src)
}

/// Parses and validates; panics with the rendered diagnostics if the source is rejected.
fn accepts(src: &str, dims: &[(&str, i64)]) {
    let result = parse(src).and_then(|m| validate(&m, &overrides(dims)).map(|_| ()));
    if let Err(d) = result {
        panic!("expected the source to be accepted:\n{}", render(&d, "example.psm", src));
    }
}

macro_rules! mistake {
    ($name:ident, $src:expr) => {
        mistake!($name, $src, &[]);
    };
    ($name:ident, $src:expr, $dims:expr) => {
        #[test]
        fn $name() {
            let src: &str = $src;
            let rendered = errors(src, $dims);
            let dims: &[(&str, i64)] = $dims;
            let mut description = src.to_string();
            for (n, v) in dims {
                description.push_str(&format!("\n(psmc -D {n}={v})"));
            }
            insta::with_settings!({ description => description, omit_expression => true }, {
                insta::assert_snapshot!(stringify!($name), rendered);
            });
        }
    };
}

// ---------------------------------------------------------------------------------
// Syntax
// ---------------------------------------------------------------------------------

mistake!(
    syntax_missing_semicolon,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + r.v
    }
}
"#
);

mistake!(
    syntax_missing_semicolon_between_statements,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) {
        m = x.v
        l = 1.0;
    }
    combine(a, b) {
        m = max(a.m, b.m);
        l = a.l + b.l;
    }
}
"#
);

mistake!(
    syntax_missing_closing_brace,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + r.v;

    readout inclusive(s, x) -> y {
        y = s.v;
    }
}
"#
);

mistake!(
    syntax_assignment_in_condition,
    r#"aggregator pick {
    input   { v }
    element { v }
    combine(l, r) {
        v = if l.v = r.v { l.v } else { r.v };
    }
}
"#
);

mistake!(
    syntax_stray_token,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + r.v);
    }
}
"#
);

mistake!(
    syntax_unterminated_block_at_eof,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + r.v;
"#
);

mistake!(
    syntax_bad_number,
    r#"aggregator scaled {
    input   { v }
    element { v }
    combine(l, r) {
        v = 0.5.0 * (l.v + r.v);
    }
}
"#
);

mistake!(
    syntax_number_without_fraction,
    r#"aggregator scaled {
    input   { v }
    element { v }
    combine(l, r) {
        v = 2. * l.v + r.v;
    }
}
"#
);

mistake!(
    syntax_stray_character,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + @r.v;
    }
}
"#
);

mistake!(
    syntax_unclosed_dim_list,
    r#"aggregator gla<K = 4, V = 4 {
    input   { k[K], v[V] }
    element { s[K, V] }
    lift(x) { s[i, j] = x.k[i] * x.v[j]; }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
}
"#
);

mistake!(
    syntax_readout_without_arrow,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) { v = l.v + r.v; }
    readout inclusive(s, x) y { y = s.v; }
}
"#
);

mistake!(
    syntax_stray_closing_brace,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) { v = l.v + r.v; } }
    readout inclusive(s, x) -> y { y = s.v; }
}
"#
);

/// 5000 nested parentheses: a diagnostic, not a stack overflow.
#[test]
fn expression_nested_too_deeply() {
    let depth = 5000;
    let src = format!(
        "aggregator deep {{\n    input   {{ v }}\n    element {{ v }}\n    combine(l, r) {{ v = {}l.v{}; }}\n}}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let rendered = errors(&src, &[]);
    assert!(rendered.contains("nested too deeply"), "{rendered}");
    // The snapshot keeps the first lines only: the source line is 10 000 characters long.
    let head: String = rendered.lines().take(1).collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!("expression_nested_too_deeply", head);
}

/// A long flat chain is as deep for every pass over it: also a diagnostic.
#[test]
fn expression_chain_too_long() {
    let src = format!(
        "aggregator long {{\n    input   {{ v }}\n    element {{ v }}\n    combine(l, r) {{ v = l.v{}; }}\n}}\n",
        " + r.v".repeat(100_000)
    );
    let rendered = errors(&src, &[]);
    assert!(rendered.contains("nested too deeply"), "{rendered}");
}

/// Nesting up to the limit is accepted.
#[test]
fn moderate_nesting_is_accepted() {
    let depth = 100;
    let src = format!(
        "aggregator deep {{\n    input   {{ v }}\n    element {{ v }}\n    combine(l, r) {{ v = {}l.v{} + r.v; }}\n}}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    accepts(&src, &[]);
    let chain = format!(
        "aggregator long {{\n    input   {{ v }}\n    element {{ v }}\n    combine(l, r) {{ v = l.v{}; }}\n}}\n",
        " + r.v".repeat(200)
    );
    accepts(&chain, &[]);
}

// ---------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------

mistake!(
    unknown_name_with_suggestion,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) { m = x.v; l = 1.0; }
    combine(a, b) {
        let mx = max(a.m, b.m);
        m = mxx;
        l = a.l * exp(a.m - mx) + b.l * exp(b.m - mx);
    }
}
"#
);

mistake!(
    unknown_name_without_suggestion,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v + r.v * scale;
    }
}
"#
);

mistake!(
    unknown_input_field,
    r#"aggregator ema {
    input   { value, gate }
    element { a, b }
    lift(x) {
        a = x.gate;
        b = x.valeu;
    }
    combine(l, r) {
        a = l.a * r.a;
        b = r.a * l.b + r.b;
    }
}
"#
);

mistake!(
    unknown_element_field,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V], alpha[K] }
    element { a[K], s[K, V] }
    lift(x) {
        a[i]    = x.alpha[i];
        s[i, j] = x.k[i] * x.v[j];
    }
    combine(l, r) {
        a[i]    = l.alpha[i] * r.a[i];
        s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j];
    }
}
"#
);

mistake!(
    field_read_without_argument,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V], alpha[K] }
    element { a[K], s[K, V] }
    lift(x) {
        a[i]    = x.alpha[i];
        s[i, j] = x.k[i] * x.v[j];
    }
    combine(l, r) {
        a[i]    = a[i] * r.a[i];
        s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j];
    }
}
"#
);

mistake!(
    argument_used_bare,
    r#"aggregator last {
    input   { v }
    element { v }
    combine(l, r) {
        v = l + r.v;
    }
}
"#
);

mistake!(
    unknown_function,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) { m = x.v; l = 1.0; }
    combine(a, b) {
        let mx = max(a.m, b.m);
        m = mx;
        l = a.l * expp(a.m - mx) + b.l * exp(b.m - mx);
    }
}
"#
);

mistake!(
    sum_written_like_a_call,
    r#"aggregator total<D = 4> {
    input   { v[D] }
    element { t }
    lift(x) { t = sum(x.v); }
    combine(l, r) { t = l.t + r.t; }
}
"#
);

mistake!(
    wrong_arity,
    r#"aggregator runmax {
    input   { v }
    element { v }
    combine(l, r) {
        v = max(l.v);
    }
}
"#
);

mistake!(
    field_assigned_twice,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) {
        v = l.v;
        v = l.v + r.v;
    }
}
"#
);

mistake!(
    field_never_assigned_in_lift,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) { m = x.v; }
    combine(a, b) {
        let mx = max(a.m, b.m);
        m = mx;
        l = a.l * exp(a.m - mx) + b.l * exp(b.m - mx);
    }
}
"#
);

mistake!(
    field_never_assigned_in_combine,
    r#"aggregator affine {
    input   { a, b }
    element { a, b }
    combine(l, r) {
        b = r.a * l.b + r.b;
    }
}
"#
);

mistake!(
    field_never_assigned_in_identity,
    r#"aggregator affine {
    input    { a, b }
    element  { a, b }
    identity { a = 1.0; }
    combine(l, r) {
        a = l.a * r.a;
        b = r.a * l.b + r.b;
    }
}
"#
);

mistake!(
    tensor_field_never_assigned,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V], alpha[K] }
    element { a[K], s[K, V] }
    lift(x) {
        a[i] = x.alpha[i];
    }
    combine(l, r) {
        a[i]    = l.a[i] * r.a[i];
        s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j];
    }
}
"#
);

mistake!(
    unknown_output,
    r#"aggregator gla<K = 4, V = 4> {
    input   { q[K], k[K], v[V] }
    element { s[K, V] }
    lift(x) { s[i, j] = x.k[i] * x.v[j]; }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
    readout inclusive(st, x) -> o[V] {
        y[j] = sum(i) st.s[i, j] * x.q[i];
    }
}
"#
);

mistake!(
    extent_on_an_assignment,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V] }
    element { s[K, V] }
    lift(x) { s[i: K, j] = x.k[i] * x.v[j]; }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
}
"#
);

mistake!(
    empty_of_the_wrong_argument,
    r#"aggregator causal_mean {
    input   { v }
    element { s, n }
    lift(x) { s = x.v; n = 1.0; }
    combine(l, r) { s = l.s + r.s; n = l.n + r.n; }
    readout exclusive(p, x) -> y {
        y = if empty(x) { x.v } else { p.s / p.n };
    }
}
"#
);

/// A file with hundreds of mistakes reports the first hundred, and says it stopped.
#[test]
fn too_many_errors_are_capped() {
    let uses: Vec<String> = (0..300).map(|i| format!("let t{i} = nope{i};")).collect();
    let src = format!(
        "aggregator a {{\n    input   {{ v }}\n    element {{ v }}\n    combine(l, r) {{\n        {}\n        v = l.v;\n    }}\n}}\n",
        uses.join("\n        ")
    );
    let d = parse(&src).expect_err("300 unknown names");
    assert_eq!(d.len(), 101, "{}", render(&d, "example.psm", &src));
    insta::assert_snapshot!("too_many_errors_are_capped", render(&d[100..], "example.psm", &src));
}

mistake!(
    output_never_assigned_in_readout,
    r#"aggregator runmax {
    input   { v, pos: i32 }
    element { m, idx: i32 }
    lift(x) { m = x.v; idx = x.pos; }
    combine(l, r) {
        m   = if r.m > l.m { r.m } else { l.m };
        idx = select(r.m > l.m, r.idx, l.idx);
    }
    readout inclusive(s, x) -> (vmax, argmax: i32) {
        vmax = s.m;
    }
}
"#
);

mistake!(
    assignment_to_an_input,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) {
        m = x.v;
        l = 1.0;
        v = 0.0;
    }
    combine(a, b) {
        m = max(a.m, b.m);
        l = a.l + b.l;
    }
}
"#
);

mistake!(
    duplicate_let,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    lift(x) { m = x.v; l = 1.0; }
    combine(a, b) {
        let mx = max(a.m, b.m);
        let mx = a.m;
        m = mx;
        l = a.l * exp(a.m - mx) + b.l * exp(b.m - mx);
    }
}
"#
);

mistake!(
    let_shadows_a_param,
    r#"aggregator ema {
    param   { alpha }
    input   { v }
    element { a, b }
    lift(x) {
        let alpha = 0.5;
        a = 1.0 - alpha;
        b = alpha * x.v;
    }
    combine(l, r) {
        a = l.a * r.a;
        b = r.a * l.b + r.b;
    }
}
"#
);

// ---------------------------------------------------------------------------------
// Shapes and bounds
// ---------------------------------------------------------------------------------

mistake!(
    shape_mismatch,
    r#"aggregator outer<K = 4, V = 8> {
    input   { k[K], v[V] }
    element { s[K] }
    lift(x) { s[i] = x.k[i] * x.v[i]; }
    combine(l, r) { s[i] = l.s[i] + r.s[i]; }
}
"#
);

mistake!(
    index_out_of_bounds,
    r#"aggregator shift<C = 4, D = 2> {
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        h[u, d] = l.h[u + 1, d] + r.h[u, d];
    }
}
"#
);

const UNGUARDED: &str = r#"aggregator concat<C = 4, D = 2> {
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        let z[u: 2*C, d] = l.h[u, d];
        h[t, d] = z[t + C, d];
    }
}
"#;

const GUARDED: &str = r#"aggregator concat<C = 4, D = 2> {
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        let z[u: 2*C, d] = if u < C { l.h[u, d] } else { r.h[u - C, d] };
        h[t, d] = z[t + C, d];
    }
}
"#;

mistake!(unguarded_access, UNGUARDED);

#[test]
fn guard_makes_the_access_safe() {
    accepts(GUARDED, &[]);
    accepts(GUARDED, &[("C", 1), ("D", 1)]);
    accepts(GUARDED, &[("C", 7)]);
}

mistake!(
    guard_on_the_wrong_side,
    r#"aggregator concat<C = 4, D = 2> {
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        let z[u: 2*C, d] = if u >= C { l.h[u, d] } else { r.h[u - C, d] };
        h[t, d] = z[t + C, d];
    }
}
"#
);

mistake!(
    index_not_affine,
    r#"aggregator diag<K = 4> {
    input   { m[K, K] }
    element { d[K] }
    lift(x) { d[i] = sum(j) x.m[i * j, j]; }
    combine(l, r) { d[i] = l.d[i] + r.d[i]; }
}
"#
);

mistake!(
    index_depends_on_data,
    r#"aggregator gather<K = 4> {
    input   { v[K], pos: i32 }
    element { v }
    lift(x) { v = x.v[x.pos]; }
    combine(l, r) { v = l.v + r.v; }
}
"#
);

/// The rewrite the data-dependent-index help suggests is accepted.
#[test]
fn data_dependent_index_rewrite_validates() {
    accepts(
        r#"aggregator gather<K = 4> {
    input   { v[K], pos: i32 }
    element { v }
    lift(x) { v = sum(i) x.v[i] * select(i == x.pos, 1.0, 0.0); }
    combine(l, r) { v = l.v + r.v; }
}
"#,
        &[],
    );
}

mistake!(
    shape_mismatch_smaller_index,
    r#"aggregator outer<K = 8, V = 4> {
    input   { k[K], v[V] }
    element { s[K] }
    lift(x) { s[i] = x.k[i] * x.v[i]; }
    combine(l, r) { s[i] = l.s[i] + r.s[i]; }
}
"#
);

mistake!(
    input_field_read_in_combine,
    r#"aggregator ema {
    input   { v, gate }
    element { b }
    lift(x) { b = x.v; }
    combine(l, r) {
        b = r.gate * l.b + r.b;
    }
}
"#
);

mistake!(
    let_extent_not_positive,
    r#"aggregator window<C = 4> {
    input   { v[C] }
    element { v[C] }
    combine(l, r) {
        let w[i: C - 4] = l.v[i];
        v[i] = w[i] + r.v[i];
    }
}
"#
);

mistake!(
    local_too_large,
    r#"aggregator big<C = 65536> {
    input   { v }
    element { v }
    combine(l, r) {
        let w[i: C, j: C, k: C] = l.v;
        v = r.v + w[0, 0, 0];
    }
}
"#
);

mistake!(
    tensor_too_large_with_many_dims,
    r#"aggregator big<K = 4> {
    input   { v[K, K, K, K, K, K] }
    element { v[K, K, K, K, K, K] }
    combine(l, r) { v[a, b, c, d, e, f] = l.v[a, b, c, d, e, f]; }
}
"#,
    &[("K", 1 << 31)]
);

mistake!(
    rank_mismatch_in_assignment,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V] }
    element { s[K, V] }
    lift(x) { s[i, j] = x.k[i] * x.v[j]; }
    combine(l, r) {
        s = l.s + r.s;
    }
}
"#
);

mistake!(
    rank_mismatch_in_access,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[V] }
    element { s[K, V] }
    lift(x) { s[i, j] = x.k[i, j] * x.v[j]; }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
}
"#
);

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

mistake!(
    mixed_i32_and_f32,
    r#"aggregator weighted {
    input   { v, n: i32 }
    element { v }
    lift(x) { v = x.v * x.n; }
    combine(l, r) { v = l.v + r.v; }
}
"#
);

mistake!(
    float_assigned_to_i32_field,
    r#"aggregator counter {
    input   { v }
    element { n: i32 }
    lift(x) { n = 1.5; }
    combine(l, r) { n = l.n + r.n; }
}
"#
);

mistake!(
    float_function_of_i32,
    r#"aggregator counter {
    input   { n: i32 }
    element { s }
    lift(x) { s = exp(x.n); }
    combine(l, r) { s = l.s * r.s; }
}
"#
);

mistake!(
    bool_used_as_number,
    r#"aggregator count_positive {
    input   { v }
    element { c }
    lift(x) { c = x.v > 0.0; }
    combine(l, r) { c = l.c + r.c; }
}
"#
);

mistake!(
    bool_in_arithmetic,
    r#"aggregator count_positive {
    input   { v }
    element { c }
    lift(x) { c = 1.0 * (x.v > 0.0); }
    combine(l, r) { c = l.c + r.c; }
}
"#
);

mistake!(
    integer_division,
    r#"aggregator halves {
    input   { n: i32 }
    element { n: i32 }
    combine(l, r) { n = (l.n + r.n) / r.n; }
}
"#
);

// ---------------------------------------------------------------------------------
// Index variables and extents
// ---------------------------------------------------------------------------------

mistake!(
    reduction_over_unused_index,
    r#"aggregator total<D = 4> {
    input   { v[D] }
    element { t }
    lift(x) { t = sum(i) x.v[0]; }
    combine(l, r) { t = l.t + r.t; }
}
"#
);

mistake!(
    ambiguous_let_extent,
    r#"aggregator outer<K = 4, V = 8> {
    input   { k[K], v[V] }
    element { s[K, V] }
    lift(x) {
        let w[i] = x.k[i] + x.v[i];
        s[i, j] = w[i] * x.v[j];
    }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
}
"#
);

mistake!(
    extent_cannot_be_inferred,
    r#"aggregator concat<C = 4, D = 2> {
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        let z[u, d] = if u < C { l.h[u, d] } else { r.h[u - C, d] };
        h[t, d] = z[t + C, d];
    }
}
"#
);

// ---------------------------------------------------------------------------------
// Dims
// ---------------------------------------------------------------------------------

const GLA: &str = r#"aggregator gla<K = 4, V = 4> {
    input   { q[K], k[K], v[V], alpha[K] }
    element { a[K], s[K, V] }
    lift(x) {
        a[i]    = x.alpha[i];
        s[i, j] = x.k[i] * x.v[j];
    }
    combine(l, r) {
        a[i]    = l.a[i] * r.a[i];
        s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j];
    }
    readout inclusive(st, x) -> o[V] {
        o[j] = sum(i) st.s[i, j] * x.q[i];
    }
}
"#;

mistake!(dim_override_zero, GLA, &[("K", 0)]);
mistake!(dim_override_negative, GLA, &[("K", -3)]);
mistake!(dim_override_huge, GLA, &[("K", 1 << 40)]);
mistake!(dim_override_unknown, GLA, &[("k", 8)]);
mistake!(dim_override_unknown_without_suggestion, GLA, &[("N", 8)]);

mistake!(
    dim_default_zero,
    r#"aggregator total<D = 0> {
    input   { v[D] }
    element { t }
    lift(x) { t = sum(i) x.v[i]; }
    combine(l, r) { t = l.t + r.t; }
}
"#
);

mistake!(
    dim_without_value,
    r#"aggregator total<D> {
    input   { v[D] }
    element { t }
    lift(x) { t = sum(i) x.v[i]; }
    combine(l, r) { t = l.t + r.t; }
}
"#
);

mistake!(
    unknown_dim_in_shape,
    r#"aggregator gla<K = 4, V = 4> {
    input   { k[K], v[N] }
    element { s[K, V] }
    lift(x) { s[i, j] = x.k[i] * x.v[j]; }
    combine(l, r) { s[i, j] = l.s[i, j] + r.s[i, j]; }
}
"#
);

mistake!(
    size_not_positive,
    r#"aggregator window<C = 4> {
    input   { v[C - 4] }
    element { v[C - 4] }
    combine(l, r) { v[i] = l.v[i] + r.v[i]; }
}
"#
);

// ---------------------------------------------------------------------------------
// Structure of an aggregator
// ---------------------------------------------------------------------------------

mistake!(
    duplicate_aggregator,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) { v = l.v + r.v; }
}

aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) { v = l.v * r.v; }
}
"#
);

mistake!(
    duplicate_field,
    r#"aggregator affine {
    input   { a, b }
    element { a, b, a }
    combine(l, r) {
        a = l.a * r.a;
        b = r.a * l.b + r.b;
    }
}
"#
);

mistake!(
    second_combine,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    combine(l, r) { v = l.v + r.v; }
    combine(l, r) { v = l.v * r.v; }
}
"#
);

mistake!(
    missing_combine,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    readout inclusive(s, x) -> y { y = s.v; }
}
"#
);

mistake!(
    missing_element,
    r#"aggregator cumsum {
    input   { v }
    combine(l, r) { v = l.v + r.v; }
}
"#
);

mistake!(
    lift_omitted_when_element_differs,
    r#"aggregator lse {
    input   { v }
    element { m, l }
    combine(a, b) {
        let mx = max(a.m, b.m);
        m = mx;
        l = a.l * exp(a.m - mx) + b.l * exp(b.m - mx);
    }
}
"#
);

mistake!(
    lift_omitted_with_different_sizes,
    r#"aggregator copy<K = 4, V = 8> {
    input   { v[V] }
    element { v[K] }
    combine(l, r) { v[i] = l.v[i] + r.v[i]; }
}
"#
);

mistake!(
    unknown_type,
    r#"aggregator cumsum {
    input   { v: u8 }
    element { v: u8 }
    combine(l, r) { v = l.v + r.v; }
}
"#
);

mistake!(
    assume_commutative,
    r#"aggregator cumsum {
    input   { v }
    element { v }
    assume commutative;
    combine(l, r) { v = l.v + r.v; }
}
"#
);

mistake!(
    empty_in_inclusive_readout,
    r#"aggregator causal_mean {
    input   { v }
    element { s, n }
    lift(x) { s = x.v; n = 1.0; }
    combine(l, r) { s = l.s + r.s; n = l.n + r.n; }
    readout inclusive(p, x) -> y {
        y = if empty(p) { x.v } else { p.s / p.n };
    }
}
"#
);

// ---------------------------------------------------------------------------------
// Positives: the examples of DESIGN.md §2, verbatim, parse and validate unchanged.
// ---------------------------------------------------------------------------------

const DESIGN_GLA: &str = r#"// examples/ops/gla.psm
/// Gated linear attention: S_t = Diag(alpha_t) S_{t-1} + k_t v_t^T ; o_t = S_t^T q_t
aggregator gla<K = 64, V = 64> {
    input   { q[K], k[K], v[V], alpha[K] }
    element { a[K], s[K, V] }
    identity { a[i] = 1.0; s[i, j] = 0.0; }

    lift(x) {
        a[i]    = x.alpha[i];
        s[i, j] = x.k[i] * x.v[j];
    }
    combine(l, r) {                        // l earlier, r later
        a[i]    = l.a[i] * r.a[i];
        s[i, j] = r.a[i] * l.s[i, j] + r.s[i, j];
    }
    readout inclusive(st, x) -> o[V] {
        o[j] = sum(i) st.s[i, j] * x.q[i];
    }
}
"#;

const DESIGN_LOGCUMSUMEXP: &str = r#"// examples/ops/online_softmax.psm — associative, but only through exp/max algebra
aggregator logcumsumexp {
    input   { v }
    element { m, l }
    lift(x)       { m = x.v; l = 1.0; }
    combine(a, b) {
        let mx = max(a.m, b.m);
        m = mx;
        l = a.l * exp(a.m - mx) + b.l * exp(b.m - mx);
    }
    readout inclusive(s, x) -> y { y = s.m + log(s.l); }
}
"#;

const DESIGN_ATTN_AGG: &str = r#"// examples/ops/attn_agg.psm — the non-associative aggregator of a Transformer-PSM:
// the state is C memory vectors; merging two states = one bidirectional attention
// layer over their concatenation, keeping the right half.
aggregator attn_agg<C = 8, D = 32> {
    param   { wq[D, D], wk[D, D], wv[D, D] }
    input   { tok[C, D] }
    element { h[C, D] }
    lift(x) { h[t, d] = x.tok[t, d]; }
    combine(l, r) {
        let z[u: 2*C, d] = if u < C { l.h[u, d] } else { r.h[u - C, d] };
        let q[u, e]  = sum(d) z[u, d] * wq[d, e];
        let k[u, e]  = sum(d) z[u, d] * wk[d, e];
        let v[u, e]  = sum(d) z[u, d] * wv[d, e];
        let sc[u, w] = sum(e) q[u, e] * k[w, e] * rsqrt(D);
        let m[u]     = max(w) sc[u, w];
        let p[u, w]  = exp(sc[u, w] - m[u]);
        let o[u, e]  = (sum(w) p[u, w] * v[w, e]) / (sum(w) p[u, w]);
        h[t, e] = o[t + C, e] + z[t + C, e];
    }
    readout exclusive(prev, x) -> y[C, D] {
        y[t, d] = x.tok[t, d] + (sum(u) prev.h[u, d]) / C;
    }
}
"#;

#[test]
fn design_examples_validate() {
    for src in [DESIGN_GLA, DESIGN_LOGCUMSUMEXP, DESIGN_ATTN_AGG] {
        accepts(src, &[]);
    }
    // The documented overrides work too.
    accepts(DESIGN_GLA, &[("K", 128), ("V", 8)]);
    accepts(DESIGN_ATTN_AGG, &[("C", 1), ("D", 1)]);
}

#[test]
fn design_examples_in_one_file_validate() {
    let all = format!("{DESIGN_GLA}\n{DESIGN_LOGCUMSUMEXP}\n{DESIGN_ATTN_AGG}");
    accepts(&all, &[]);
    // An override names a dim of some aggregator; the others ignore it.
    accepts(&all, &[("K", 8)]);
}

/// The diagnostics say where: every primary label lies inside the source.
#[test]
fn spans_lie_inside_the_source() {
    let cases = [UNGUARDED, GLA];
    for src in cases {
        let diags = match parse(src) {
            Err(d) => d,
            Ok(m) => validate(&m, &overrides(&[("K", 0)])).err().unwrap_or_default(),
        };
        for d in diags {
            for l in d.labels {
                assert!(l.span.start <= l.span.end && l.span.end as usize <= src.len(), "{l:?}");
            }
        }
    }
}

mistake!(
    element_field_in_16_bit_storage,
    r#"aggregator cumsum {
    input   { v: bf16 }
    element { s: bf16 }
    lift(x) { s = x.v; }
    combine(l, r) { s = l.s + r.s; }
}
"#
);
