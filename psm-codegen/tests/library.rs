//! Every operator of examples/ops: each compiled function against the interpreter in
//! Declared precision, bit for bit (any NaN equal to any NaN), on seeded random data.

mod common;

use common::*;

fn check_operator(name: &str) {
    let op = load_op(name);
    check_op(&op, 0x5eed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
}

macro_rules! operators {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_operator(stringify!($name));
            }
        )*

        /// Operators added to the library after this list was written.
        #[test]
        fn the_rest_of_the_library() {
            let listed = [$(stringify!($name)),*];
            for name in library_names() {
                if !listed.contains(&name.as_str()) {
                    check_operator(&name);
                }
            }
        }
    };
}

operators!(
    attn_agg,
    average,
    causal_mean,
    cumsum,
    deltanet,
    diag_affine,
    ema,
    gated_deltanet,
    gla,
    last_value,
    linear_attention,
    logcumsumexp,
    lse_missing_rescale,
    mamba2,
    mamba_s6,
    matmul2x2,
    mlstm,
    online_softmax,
    retnet,
    running_max_index,
    rwkv6,
    scalar_affine,
    subtract,
    tanh_rnn,
);
