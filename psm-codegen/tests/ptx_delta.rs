//! The delta rule's tensor-core kernels (psm-codegen's `ptx::delta`): snapshots of three
//! fields' modules (f32 and bf16 storage, split products), and the geometry and refusals
//! of `compile_delta_with`. The kernels run on a GPU in tests/ptx_gpu.rs
//! (`delta_rule_tensor_cores`).

use psm_codegen::ptx::chunkwise::{ChunkDecay, ChunkwiseShape, Products, Storage, MAX_KEYS, MAX_VALUE_TILE};
use psm_codegen::ptx::delta::{compile_delta, compile_delta_with, DeltaOptions, STATE_VALUE_TILE};

fn shape(keys: usize, values: usize, decay: ChunkDecay, exclusive: bool) -> ChunkwiseShape {
    ChunkwiseShape { keys, values, decay, exclusive }
}

#[test]
fn gated_delta_rule_module() {
    let m = compile_delta(shape(8, 8, ChunkDecay::Log, false), 90).unwrap();
    insta::assert_snapshot!(m.text);
}

#[test]
fn bf16_storage_module() {
    let options = DeltaOptions { storage: Storage::Bf16, state_value_tile: MAX_VALUE_TILE, ..DeltaOptions::default() };
    let m = compile_delta_with(shape(8, 8, ChunkDecay::None, false), options, 90).unwrap();
    insta::assert_snapshot!(m.text);
}

#[test]
fn split_products_module() {
    let options = DeltaOptions { products: Products::Bf16x3, ..DeltaOptions::default() };
    let m = compile_delta_with(shape(8, 8, ChunkDecay::Log, false), options, 90).unwrap();
    insta::assert_snapshot!(m.text);
}

/// Split products (`Products::Bf16x3`): every operand of the tensor cores in two bf16
/// planes, so W, K-hat^T and the states kernel's bf16 arrays take twice the bytes, the
/// prepare kernel's arrays move to a dynamic window (with the widest value tile), and
/// every mma of the bf16 kernels becomes three, on twice the fragments.
#[test]
fn split_geometry() {
    let split = DeltaOptions { products: Products::Bf16x3, ..DeltaOptions::default() };
    // (keys, values) → prepare value tile (bf16 products: from the module's first line)
    // and the split prepare kernel's dynamic bytes: B's rows [64][kp + 8] in two planes,
    // K's rows there too, then -L (f32 [64][64]), then T and T diag(beta exp(L)) (two
    // planes of [64][72] each), V's
    // rows [64][tile + 8] in two planes, beta and Lambda (f32 [64]).
    for ((keys, values), prepare_tile) in [((8, 8), 8), ((64, 100), 64), ((128, 128), 64), ((100, 7), 8)] {
        for decay in [ChunkDecay::None, ChunkDecay::Log] {
            let s = shape(keys, values, decay, false);
            let (bf16, m) = (compile_delta_with(s, DeltaOptions::default(), 90).unwrap(), compile_delta_with(s, split, 90).unwrap());
            let (kp, tile) = (m.padded_keys, m.state_value_tile);
            assert_eq!((m.products, bf16.products), (Products::Bf16x3, Products::Bf16));
            assert_eq!((tile, kp, m.padded_values), (bf16.state_value_tile, bf16.padded_keys, bf16.padded_values));
            assert_eq!((bf16.operand_bytes(), m.operand_bytes()), (64 * kp * 2, 2 * 64 * kp * 2));
            // U' and the state rows' staging (values a multiple of 8: see geometry) have one plane.
            let upre = 64 * (tile * 4 + 16) + stage_bytes(kp, values, tile);
            assert_eq!(m.state_shared_bytes - upre, 2 * (bf16.state_shared_bytes - upre), "{keys} × {values}");
            assert_eq!(bf16.prepare_shared_bytes, 0);
            let rows = 64 * (kp + 8) * 2 * 2;
            let second = rows.max(64 * 64 * 4).max(2 * 64 * 72 * 2 * 2);
            assert_eq!(m.prepare_shared_bytes, rows + second + 64 * (prepare_tile + 8) * 2 * 2 + 2 * 64 * 4, "{keys} × {values}");
            assert!(m.text.lines().next().unwrap().ends_with(&format!("Bf16x3 products, chunk 64, value tiles {tile} (states), {prepare_tile} (prepare)")));
            assert!(!bf16.text.contains("Bf16x3") && !bf16.text.contains("psm_cwd_prepare_shared"));
            assert!(m.text.contains(".extern .shared .align 16 .b8 psm_cwd_prepare_shared[];"));
            let prepare = |t: &str| t[t.find(".entry psm_cwd_prepare(").unwrap()..t.find(".entry psm_cwd_states(").unwrap()].to_string();
            assert!(!prepare(&m.text).contains(".shared .align 16 .b8 bs["), "no static arrays");
            // Three mma (lo hi, hi lo, hi hi) for each of bf16's, on twice the fragments.
            let count = |t: &str, what: &str| t.matches(what).count();
            let mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
            assert_eq!(count(&m.text, mma), 3 * count(&bf16.text, mma), "{keys} × {values}");
            let states = |t: &str| t[t.find(".entry psm_cwd_states(").unwrap()..].to_string();
            for (kernel, text) in [("prepare", prepare as fn(&str) -> String), ("states", states)] {
                let ldmatrix = "ldmatrix.sync.aligned";
                assert_eq!(count(&text(&m.text), ldmatrix), 2 * count(&text(&bf16.text), ldmatrix), "{kernel}");
            }
            // The chunk states' lo planes for the outputs kernel (second half of a slot).
            assert!(m.text.contains("// and S - bf16(S), bf16 in the slot's second half"));
        }
    }
    // Narrower state value tiles stay available; the bound on shared memory is the device's.
    for tile in [8, 16, 64] {
        let m = compile_delta_with(shape(128, 128, ChunkDecay::Log, false), DeltaOptions { state_value_tile: tile, ..split }, 90).unwrap();
        assert_eq!(m.state_value_tile, tile);
        assert!(m.state_shared_bytes <= 227 * 1024);
    }
}

/// Shared bytes of the states kernel's staging of its chunk-state rows: where `values`
/// is a multiple of 8 (rows copied 16 bytes at a time), 16 rows for each of the kp / 16
/// warps, of `tile` bf16 and 8 more (16 where the tile is not a multiple of 16, so that
/// the rows stay an odd number of 16 bytes apart).
fn stage_bytes(kp: usize, values: usize, tile: usize) -> usize {
    if !values.is_multiple_of(8) {
        return 0;
    }
    kp * (tile + if tile.is_multiple_of(16) { 8 } else { 16 }) * 2
}

#[test]
fn geometry() {
    // (keys, values) → state value tile (the default, 32, or the values padded to 8 when
    // fewer), keys padded to 16, values to the tile; the states kernel's dynamic shared
    // bytes: W [64][kp + 8] + K-hat^T [kp][72] + S [kp][tile + 8] + U [64][tile + 8] in
    // bf16, U' 64 rows of tile entries in f32 (as listed) or bf16 and 16 bytes of padding,
    // and each warp's staging of its chunk-state rows ([`stage_bytes`]: 16 × 24 × 2 at
    // 8 × 8, 128 × 40 × 2 at 128 × 128, none where the values are not a multiple of 8).
    for ((keys, values), (tile, kp, vp, shared)) in
        [((8, 8), (8, 16, 8, 11008 + 768)), ((64, 100), (32, 64, 128, 37888)), ((128, 128), (32, 128, 128, 60416 + 10240)), ((100, 7), (8, 112, 8, 40192))]
    {
        for storage in [Storage::F32, Storage::Bf16] {
            for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value] {
                for exclusive in [false, true] {
                    let options = DeltaOptions { storage, ..DeltaOptions::default() };
                    let m = compile_delta_with(shape(keys, values, decay, exclusive), options, 90).unwrap();
                    assert_eq!((m.state_value_tile, m.padded_keys, m.padded_values), (tile, kp, vp), "{keys} × {values}");
                    let shared = if storage == Storage::Bf16 { shared - 64 * tile * 2 } else { shared };
                    assert_eq!((m.state_threads as usize, m.state_shared_bytes, m.storage), (kp / 16 * 32, shared, storage));
                    // ptxas rejects any byte outside ASCII, comments included.
                    assert!(m.text.is_ascii() && m.text.contains(".target sm_90"));
                    for kernel in ["psm_cwd_prepare(", "psm_cwd_states("] {
                        assert!(m.text.contains(&format!(".visible .entry {kernel}")), "{kernel}");
                    }
                    assert!(m.text.contains(".extern .shared .align 16 .b8 psm_cwd_states_shared[];"));
                    assert!(m.text.contains("psm_cwd_prepare(") && m.text.contains(")\n.maxntid 128, 1, 1\n.minnctapersm 4\n{\n"));
                    assert!(m.text.contains("cp.async.cg.shared.global") && m.text.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));
                    // The states kernel's fragments come by ldmatrix, 16 × 16 of A or two
                    // 8-wide n-tiles of B at a time: at 128 × 128 (tile 32, 8 warps, two
                    // n-tiles an item) 8 k-steps of 1 + 1 for U = U' + W S and 4 of 1 + 2
                    // for S += K-hat^T U.
                    let states = &m.text[m.text.find(".entry psm_cwd_states(").unwrap()..];
                    if (keys, values) == (128, 128) {
                        assert_eq!(states.matches("ldmatrix.sync.aligned.m8n8.x4.shared.b16").count(), 8 + 4);
                        assert_eq!(states.matches("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16").count(), 8 + 4 * 2);
                    }
                    // The prepare kernel stages B, K and V once, as rows, and takes every
                    // fragment by ldmatrix: it has no 32-bit shared loads, and where keys
                    // and values come 8 to a 16-byte load it has no 2-byte shared stores (the
                    // bf16 rows of T and of T diag(beta exp(L)) go four entries, 8 bytes, to a
                    // store: 8 a thread each). At
                    // 128 × 128 (value tile 64): G = B K^T 8 k-steps of 1 + 4, K-hat^T 8
                    // transposes, W = (T diag(beta exp(L))) B 4 k-steps of 1 + 8 and U' = T V
                    // two value tiles of 4 k-steps of 1 + 4.
                    let prepare = &m.text[m.text.find(".entry psm_cwd_prepare(").unwrap()..m.text.find(".entry psm_cwd_states(").unwrap()];
                    if keys % 8 == 0 && values % 8 == 0 {
                        assert_eq!(prepare.matches("st.shared.b16").count(), 0);
                        assert_eq!(prepare.matches("st.shared.v2.b32").count(), 2 * 8);
                    }
                    assert!(!prepare.contains("ld.shared.b32"));
                    // W goes out through its staged rows, 16 bytes a lane: kp / 16 a lane.
                    assert_eq!(prepare.matches("st.global.v4.b32").count(), kp / 16, "{keys} × {values}");
                    if (keys, values) == (128, 128) {
                        assert_eq!(prepare.matches("ldmatrix.sync.aligned.m8n8.x4.shared.b16").count(), 8 * 5 + 4 + 2 * 4);
                        assert_eq!(prepare.matches("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16").count(), 8 + 4 * 8 + 2 * 4 * 4);
                    }
                    // Without a gate, no decay is read or written.
                    assert_eq!(m.text.contains("decay[m]"), decay != ChunkDecay::None);
                    // bf16 storage stores U' as bf16 (in pairs), f32 storage as f32 (both
                    // store the chunk states as bf16 pairs, and the decays as f32).
                    let upre = &m.text[m.text.find("// upre[m] = T V").unwrap()..];
                    let upre = &upre[..upre.find("// decay[m]").or(upre.find(".entry")).unwrap_or(upre.len())];
                    assert_eq!(upre.contains("st.global.f32"), storage == Storage::F32);
                }
            }
        }
    }
    // Narrower tiles on request (more blocks a sequence, each reading W and K-hat^T).
    assert_eq!(STATE_VALUE_TILE, 32);
    for tile in [8, 16, 64] {
        let m = compile_delta_with(shape(128, 128, ChunkDecay::Log, false), DeltaOptions { state_value_tile: tile, ..DeltaOptions::default() }, 90).unwrap();
        assert_eq!((m.state_value_tile, m.padded_values), (tile, 128));
    }
}

#[test]
fn refusals() {
    let err = |s, arch| compile_delta(s, arch).unwrap_err().0;
    assert!(err(shape(16, 16, ChunkDecay::None, false), 75).contains("sm_80"));
    assert!(err(shape(MAX_KEYS + 1, 16, ChunkDecay::Log, false), 90).contains("keys"));
    assert!(err(shape(16, 0, ChunkDecay::None, false), 90).contains("without entries"));
    for tile in [0, 12, MAX_VALUE_TILE + 8] {
        let options = DeltaOptions { state_value_tile: tile, ..DeltaOptions::default() };
        let e = compile_delta_with(shape(16, 16, ChunkDecay::None, false), options, 90).unwrap_err().0;
        assert!(e.contains("state value tile"), "{tile}: {e}");
    }
}

/// The delta rule's state kernel writes its bf16 chunk states through per-warp shared
/// staging rows (`state_loop_head`'s staging; its bytes are in `geometry`), 16 bytes a
/// store, exactly where the values are a multiple of 8 (a warp barrier before and after
/// each plane's fragment stores); otherwise each lane stores its pairs. Split, the lo
/// plane goes the same way. (ptx::chunkwise's state kernel stores its pairs: staging was
/// measured slower there.)
#[test]
fn state_staging() {
    for (keys, values) in [(128, 128), (8, 8), (64, 24), (64, 100), (8, 7)] {
        for products in [Products::Bf16, Products::Bf16x3] {
            let m = compile_delta_with(shape(keys, values, ChunkDecay::Log, false), DeltaOptions { products, ..DeltaOptions::default() }, 90).unwrap();
            let states = &m.text[m.text.find(".entry psm_cwd_states(").unwrap()..];
            let staged = values % 8 == 0;
            let planes = if products == Products::Bf16x3 { 2 } else { 1 };
            assert_eq!(states.matches("bar.warp.sync 0xffffffff;").count(), if staged { 2 * planes } else { 0 }, "{keys} × {values}");
            assert_eq!(states.matches("st.global.v4.b32").count(), if staged { planes * m.state_value_tile.div_ceil(16) } else { 0 }, "{keys} × {values}");
        }
    }
}
