//! The delta rule's tensor-core kernels (psm-codegen's `ptx::delta`): a snapshot of
//! the kernels it adds to the chunkwise module, the geometry it shares with that
//! module, and its refusals. The kernels run on a GPU in tests/ptx_gpu.rs
//! (`delta_rule_tensor_cores`).

use psm_codegen::ptx::chunkwise::{compile_chunkwise, ChunkDecay, ChunkwiseShape, MAX_KEYS};
use psm_codegen::ptx::delta::compile_delta;

fn shape(keys: usize, values: usize, decay: ChunkDecay, exclusive: bool) -> ChunkwiseShape {
    ChunkwiseShape { keys, values, decay, exclusive }
}

/// The part of the module after the chunkwise kernels (which ptx_chunkwise.rs snapshots).
fn delta_kernels(text: &str) -> &str {
    let at = text.find("// the delta rule's kernels").expect("the delta rule's kernels follow the chunkwise module");
    &text[at..]
}

#[test]
fn gated_delta_rule_kernels() {
    let m = compile_delta(shape(8, 8, ChunkDecay::Log, false), 90).unwrap();
    insta::assert_snapshot!(delta_kernels(&m.text));
}

#[test]
fn geometry() {
    // The chunkwise module's value tile and state threads, its kernels kept.
    for (keys, values) in [(8, 8), (64, 100), (128, 128), (100, 7)] {
        for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value] {
            for exclusive in [false, true] {
                let s = shape(keys, values, decay, exclusive);
                let (m, plain) = (compile_delta(s, 90).unwrap(), compile_chunkwise(s, 90).unwrap());
                assert_eq!((m.value_tile, m.state_threads), (plain.value_tile, plain.state_threads));
                assert!(m.text.starts_with(&plain.text));
                // ptxas rejects any byte outside ASCII, comments included.
                assert!(m.text.is_ascii());
                for kernel in ["psm_cwd_inverse(", "psm_cwd_states(", "psm_cw_outputs("] {
                    assert!(m.text.contains(&format!(".visible .entry {kernel}")), "{kernel}");
                }
                // Without a gate, no decay is read.
                assert_eq!(delta_kernels(&m.text).contains("lam"), decay != ChunkDecay::None);
            }
        }
    }
}

#[test]
fn refusals() {
    let err = |s, arch| compile_delta(s, arch).unwrap_err().0;
    assert!(err(shape(16, 16, ChunkDecay::None, false), 75).contains("sm_80"));
    assert!(err(shape(MAX_KEYS + 1, 16, ChunkDecay::Log, false), 90).contains("keys"));
    assert!(err(shape(16, 0, ChunkDecay::None, false), 90).contains("without entries"));
}
