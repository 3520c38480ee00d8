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

        #[test]
        fn every_library_operator_is_covered() {
            let mut listed = vec![$(stringify!($name).to_string()),*];
            listed.sort();
            assert_eq!(listed, library_names());
        }
    };
}

psm_testgen::library_operators!(operators);
