//! The tensor-core chunkwise kernels' PTX (psm-codegen's `ptx::chunkwise`): a snapshot
//! of one field's module, and the geometry and refusals of `compile_chunkwise`. The
//! kernels run on a GPU in tests/ptx_gpu.rs (`chunkwise_tensor_cores`).

use psm_codegen::ptx::chunkwise::{compile_chunkwise, compile_chunkwise_stored, compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage, MAX_KEYS};

fn shape(keys: usize, values: usize, decay: ChunkDecay, exclusive: bool) -> ChunkwiseShape {
    ChunkwiseShape { keys, values, decay, exclusive }
}

#[test]
fn exclusive_log_decay_module() {
    let m = compile_chunkwise(shape(8, 8, ChunkDecay::Log, true), 90).unwrap();
    insta::assert_snapshot!(m.text);
}

#[test]
fn geometry() {
    // The state kernel: one warp per 16 keys (padded) of a tile of at most 64, two when
    // the value tile splits into halves of whole mma tiles (8 values); value tiles as
    // wide as 48 KiB allow the output kernel's arrays besides its staged queries, all of
    // them in its dynamic shared window.
    let m = compile_chunkwise(shape(8, 8, ChunkDecay::None, false), 90).unwrap();
    assert_eq!((m.state_threads, m.key_tile, m.value_tile), (32, 16, 8));
    assert_eq!((m.state_grid(3), m.output_grid(5, 3), m.decay_threads), ((1, 3, 1), (1, 5, 3), None));
    let m = compile_chunkwise(shape(64, 100, ChunkDecay::Value, false), 90).unwrap();
    assert_eq!((m.state_threads, m.key_tile, m.value_tile), (256, 64, 64));
    assert_eq!((m.state_grid(3), m.output_grid(5, 3)), ((2, 3, 1), (2, 5, 3)));
    let m = compile_chunkwise(shape(128, 128, ChunkDecay::Log, false), 90).unwrap();
    assert_eq!((m.state_threads, m.key_tile, m.value_tile), (256, 64, 64));
    assert_eq!((m.state_grid(3), m.output_grid(5, 3)), ((4, 3, 1), (2, 5, 3)));
    // Q and K [64][136], V [64][72], S_c [128][72] in bf16, Λ [64] in f32: 3 blocks an
    // SM on sm_90 (228 KiB), for which ptxas may take 168 registers a thread.
    assert_eq!(m.output_shared_bytes, 2 * 64 * 136 * 2 + 64 * 72 * 2 + 128 * 72 * 2 + 64 * 4);
    assert!(m.text.contains(".minnctapersm 3\n"));
    let outputs = m.text.split(".visible .entry ").find(|k| k.starts_with("psm_cw_outputs(")).unwrap();
    assert!(m.text.contains(".extern .shared .align 16 .b8 psm_cw_outputs_shared[];") && !outputs.contains(".shared .align"));
    let m = compile_chunkwise(shape(100, 128, ChunkDecay::DiagonalValue, true), 90).unwrap();
    assert_eq!((m.state_threads, m.key_tile, m.value_tile, m.decay_threads), (256, 64, 64, Some(128)));
    assert_eq!(m.state_grid(3), (4, 3, 1));
    // Λ's last row spans both key tiles (128 keys), not just the 112 padded ones.
    assert!(m.text.contains(".shared .align 16 .b8 last[512];"));
    assert!(m.text.contains(".target sm_90") && m.text.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
    // ptxas rejects any byte outside ASCII, comments included.
    for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value, ChunkDecay::DiagonalLog, ChunkDecay::DiagonalValue] {
        for exclusive in [false, true] {
            for storage in [Storage::F32, Storage::Bf16] {
                assert!(compile_chunkwise_stored(shape(16, 16, decay, exclusive), storage, 90).unwrap().text.is_ascii());
            }
        }
    }
}

#[test]
fn refusals() {
    let err = |s, arch| compile_chunkwise(s, arch).unwrap_err().0;
    assert!(err(shape(16, 16, ChunkDecay::None, false), 75).contains("sm_80"));
    assert!(err(shape(MAX_KEYS + 1, 16, ChunkDecay::None, false), 90).contains("keys"));
    assert!(err(shape(0, 16, ChunkDecay::None, false), 90).contains("without entries"));
}

#[test]
fn bf16_scalar_decay_module() {
    let m = compile_chunkwise_stored(shape(8, 8, ChunkDecay::Value, false), Storage::Bf16, 90).unwrap();
    insta::assert_snapshot!(m.text);
}

/// Without a decay the state kernel keeps two chunks' loads in flight: its loop body is
/// there twice, one register set each.
#[test]
fn bf16_no_decay_module() {
    let m = compile_chunkwise_stored(shape(16, 16, ChunkDecay::None, false), Storage::Bf16, 90).unwrap();
    assert_eq!(m.text.matches("issue the loads of chunk + 2").count(), 2);
    insta::assert_snapshot!(m.text);
}

/// `psm_cw_fused` is in the modules whose operands it copies as they are (no decay or a
/// scalar one, bf16 storage and products, keys a multiple of 8, whole value tiles), and
/// taken where its blocks are at least half the multiprocessors.
#[test]
fn fused_kernel_where_it_applies() {
    let bf16 = |keys, values, decay| compile_chunkwise_stored(shape(keys, values, decay, false), Storage::Bf16, 90).unwrap();
    for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value] {
        let m = bf16(128, 128, decay);
        assert!(m.text.contains(".entry psm_cw_fused("), "{decay:?}");
        assert_eq!(m.fused_shared_bytes, Some(2 * (2 * 64 * 136 + 64 * 72) * 2 + 128 * 72 * 2 + if decay == ChunkDecay::None { 0 } else { 64 * 4 }));
        assert_eq!(m.fused_grid(64), (2, 64, 1));
        // 132 SMs: 33 sequences (66 blocks) and more.
        assert!(!m.fused_pays(32, 132) && m.fused_pays(33, 132));
    }
    for m in [
        bf16(128, 128, ChunkDecay::DiagonalLog),
        bf16(7, 8, ChunkDecay::None),
        bf16(8, 100, ChunkDecay::None),
        compile_chunkwise(shape(128, 128, ChunkDecay::None, false), 90).unwrap(),
        compile_chunkwise_with(shape(128, 128, ChunkDecay::None, false), Storage::Bf16, Products::Bf16x3, 90).unwrap(),
    ] {
        assert_eq!(m.fused_shared_bytes, None, "{:?}", m.shape);
        assert!(!m.text.contains("psm_cw_fused") && !m.fused_pays(1000, 132));
    }
}

#[test]
fn exclusive_diagonal_log_decay_module() {
    let m = compile_chunkwise(shape(8, 8, ChunkDecay::DiagonalLog, true), 90).unwrap();
    assert_eq!(m.decay_threads, Some(32));
    insta::assert_snapshot!(m.text);
}

#[test]
fn bf16x3_diagonal_log_decay_module() {
    let m = compile_chunkwise_with(shape(8, 8, ChunkDecay::DiagonalLog, false), Storage::F32, Products::Bf16x3, 90).unwrap();
    insta::assert_snapshot!(m.text);
}

#[test]
fn bf16x3_geometry() {
    let split = |s| compile_chunkwise_with(s, Storage::F32, Products::Bf16x3, 90).unwrap();
    // Every product of the split kernels is three mma.sync (lo·hi, hi·lo, hi·hi) where
    // the bf16 kernels take one, at the same value tile.
    for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value, ChunkDecay::DiagonalLog, ChunkDecay::DiagonalValue] {
        for exclusive in [false, true] {
            let (one, three) = (compile_chunkwise(shape(16, 16, decay, exclusive), 90).unwrap(), split(shape(16, 16, decay, exclusive)));
            assert_eq!(one.value_tile, three.value_tile);
            let mmas = |t: &str| t.matches("mma.sync").count();
            assert_eq!(3 * mmas(&one.text), mmas(&three.text), "{decay:?} exclusive {exclusive}");
            assert!(three.text.is_ascii() && three.products == Products::Bf16x3);
        }
    }
    // The lo planes double the staged operands' shared memory: value tiles as wide as
    // two blocks of the outputs kernel fit an SM (sm_90: 113 KiB a block; 48 KiB of
    // static shared memory allowed 8 at 128 keys), which ptxas is told; the same key tiles.
    let m = split(shape(128, 128, ChunkDecay::Log, false));
    assert_eq!((m.state_threads, m.key_tile, m.value_tile), (256, 64, 32));
    assert_eq!((m.state_grid(3), m.output_grid(5, 3)), ((8, 3, 1), (4, 5, 3)));
    // Q and K [64][136], V [64][40], S_c [128][40], two planes each; Λ [64] in f32.
    assert_eq!(m.output_shared_bytes, (2 * 64 * 136 + 64 * 40 + 128 * 40) * 2 * 2 + 64 * 4);
    assert!(m.text.contains(".minnctapersm 2\n"));
    let m = split(shape(64, 64, ChunkDecay::DiagonalValue, true));
    assert_eq!((m.key_tile, m.value_tile), (64, 64));
    // On sm_80 (164 KiB an SM) two blocks of 128 keys fit at 8 values only.
    let m = compile_chunkwise_with(shape(128, 128, ChunkDecay::Log, false), Storage::F32, Products::Bf16x3, 80).unwrap();
    assert_eq!((m.value_tile, m.output_shared_bytes), (8, (2 * 64 * 136 + 64 * 16 + 128 * 16) * 2 * 2 + 64 * 4));
    assert!(m.text.contains(".minnctapersm 2\n"));
}
