//! The delta rule's tensor-core kernels (psm-codegen's `ptx::delta`): a snapshot of one
//! field's module, and the geometry and refusals of `compile_delta`. The kernels run on
//! a GPU in tests/ptx_gpu.rs (`delta_rule_tensor_cores`).

use psm_codegen::ptx::chunkwise::{ChunkDecay, ChunkwiseShape, MAX_KEYS};
use psm_codegen::ptx::delta::compile_delta;

fn shape(keys: usize, values: usize, decay: ChunkDecay, exclusive: bool) -> ChunkwiseShape {
    ChunkwiseShape { keys, values, decay, exclusive }
}

#[test]
fn gated_delta_rule_module() {
    let m = compile_delta(shape(8, 8, ChunkDecay::Log, false), 90).unwrap();
    insta::assert_snapshot!(m.text);
}

#[test]
fn geometry() {
    // (keys, values) → state value tile (the widest whose states kernel fits 48 KiB of
    // static shared memory), keys padded to 16, values to the tile.
    for ((keys, values), (tile, kp, vp)) in [((8, 8), (8, 16, 8)), ((64, 100), (32, 64, 128)), ((128, 128), (16, 128, 128)), ((100, 7), (8, 112, 8))] {
        for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value] {
            for exclusive in [false, true] {
                let m = compile_delta(shape(keys, values, decay, exclusive), 90).unwrap();
                assert_eq!((m.state_value_tile, m.padded_keys, m.padded_values), (tile, kp, vp), "{keys} × {values}");
                assert_eq!(m.state_threads as usize, kp / 16 * 32);
                // ptxas rejects any byte outside ASCII, comments included.
                assert!(m.text.is_ascii() && m.text.contains(".target sm_90"));
                for kernel in ["psm_cwd_prepare(", "psm_cwd_states("] {
                    assert!(m.text.contains(&format!(".visible .entry {kernel}")), "{kernel}");
                }
                assert!(m.text.contains("cp.async.cg.shared.global") && m.text.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
                // Without a gate, no decay is read or written.
                assert_eq!(m.text.contains("decay[m]"), decay != ChunkDecay::None);
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
