//! Tensor-core kernels of the chunkwise-parallel form (psm-ir's `derive::chunkwise`)
//! for state fields with no decay, a scalar decay or a decay per key (diagonal):
//! `mma.sync.m16n8k16` with bf16 operands and f32 accumulators (sm_80 and later), the
//! state kept in f32.
//!
//! Per sequence s and state field S[keys, values], with C = [`CHUNK`] steps per chunk,
//! Λ_t the cumulative log decay from the chunk's start through step t (0 without a
//! decay; per key for a diagonal one), and e_t = Λ_t for an inclusive readout, Λ_(t−1)
//! (Λ_(−1) = 0) for an exclusive one:
//!
//! ```text
//! psm_cw_decays(g, lam, steps)                      (per-key decays only)
//!     grid (nchunks, nseq), 32 · ⌈keys / 32⌉ threads (one per key)
//!     lam[s, t, i] = Λ_t[i]; the two kernels below then take `lam` for `g`
//! psm_cw_states(k, v, g, state_in, states, steps, flags: u32)
//!     grid (⌈keys / ktile⌉ · ⌈values / vtile⌉, nseq), a warp per 16 keys of the key
//!     tile and half of the value tile (all of it when the halves are not multiples of 8)
//!     states[s, c] = S entering chunk c, for c = 0 ..= nchunks (the last: the final state)
//!     S ← e^(Λ_last) ⊙ S + (K ⊙ e^(Λ_last − Λ))ᵀ V            chunk by chunk
//! psm_cw_outputs(q, k, v, g, states, out, steps, flags: u32)
//!     grid (⌈values / vtile⌉, nchunks, nseq), 128 threads (one warp per 16 steps),
//!     its arrays in dynamic shared memory (`output_shared_bytes`, 61 KiB at 128 keys)
//!     out_t = (q_t ⊙ e^(e_t))ᵀ S_c + Σ_(τ ≤ t, or τ < t) (q_t ⊙ e^(e_t − Λ_τ)) · k_τ v_τ
//! psm_cw_fused(q, k, v, g, state_in, states, out, steps, flags: u32)   (no or a scalar
//!     decay, bf16 storage and products: `fused_kernel`) grid (⌈values / vtile⌉, nseq),
//!     128 threads: both kernels' work, S in registers; only the final state in `states`
//! ```
//!
//! Buffers are f32, row-major: `k`, `q` `[nseq, steps, keys]`; `v`, `out` `[nseq, steps,
//! values]`; `g` `[nseq, steps]` (`[nseq, steps, keys]` per key), the per-step log decay
//! ([`Gate::Log`]) or the decay itself ([`Gate::Value`], whose natural log the kernels
//! take); `state_in` `[nseq, keys, values]` (read with [`HAS_STATE`]); `states` `[nseq,
//! nchunks + 1, keys, values]` f32 slots, of which the final state (slot nchunks) is f32
//! and each chunk's entering state, which the outputs kernel multiplies in bf16, is
//! bf16 `[keys, values]` in the first half of its slot (half the bytes; the rounding is
//! the one the outputs kernel did itself before); `states` 16-byte aligned (as any
//! allocation is: its rows are stored 16 bytes at a time). Steps past the sequence's end
//! are zero keys and values with no decay.
//!
//! In the emitted comments (PTX is ASCII), L is Λ and s a column step τ.
//!
//! The delta rule's state kernel writes each chunk's bf16 state through per-warp shared
//! rows, 16 bytes a lane (`state_loop_head`'s staging), where the values are a multiple
//! of 8; this module's state kernel stores each lane's pairs (staging measured slower).
//!
//! Both kernels stage K and V (the outputs kernel Q too) in shared memory as bf16
//! (rounded to nearest) in the layout they have in global memory, rows of a chunk's steps
//! `[CHUNK][tile + 8]` (the padding keeps the rows 16-byte aligned and `ldmatrix` free of
//! bank conflicts): each thread loads 8 consecutive entries of a row (16 bytes of bf16,
//! two 16-byte loads of f32; 4, 2 or 1 where the width is not a multiple of 8),
//! consecutive threads the consecutive groups of a row, so a warp's loads are coalesced,
//! and stores them, scaled and rounded pair by pair (`cvt.rn.bf16x2.f32`), with one
//! 16-byte shared store. The outputs kernel copies the arrays it stages as they are
//! instead (bf16 Q, K and V with bf16 products, K unless a per-key decay scales it,
//! widths multiples of 8 and whole value tiles; S_c, `[keys][values]`, in every such
//! shape) by `cp.async` (`AsyncCopy`), 16 bytes a piece, all issued before the block
//! waits on anything, so that they are in flight at once and hold no registers. The
//! mma fragments come from `ldmatrix`: `.trans` where the staged rows' column is the
//! product's m or n index (Kᵀ as A and V as B of the state product, V as B of P V, S_c),
//! plain for K as the B of Q Kᵀ and for Q, each warp's own rows, as the A of both of its
//! products. The intra-chunk scores Q Kᵀ stay in registers, are masked (decayed pair by
//! pair for a scalar decay, e^(e_t − Λ_τ): no factor can overflow), and are reused as the
//! A operand of the product with V, as their accumulator layout allows. Score tiles above
//! the diagonal (a warp's later sub-chunks) are neither computed nor multiplied.
//!
//! A per-key decay cannot be applied to the scores after the product. The chunk is split
//! into sub-chunks of 16 steps (one warp's rows), with R_b = Λ at sub-chunk b's last
//! step (fla's chunk_gla does the same):
//!
//! ```text
//! A[t, τ] = Σ_i (q_t[i] e^(e_t[i] − R_b[i])) (k_τ[i] e^(R_b[i] − Λ_τ[i]))      τ in sub-chunk b
//! ```
//!
//! The keys' factors (at most 1) are staged once; each warp scales its queries' fragments
//! in registers per sub-chunk (in f32, from their staged bf16 planes: for f32 queries
//! that are not bf16 values, one rounding more than scaling them in f32). Below the
//! warp's own sub-chunk the query factor is at most 1 too. On the diagonal block it is at
//! least 1: the factorization is used while every exponent e_t − R_b there stays within
//! [`FACTOR_RANGE`] (both factors then far inside f32's and bf16's range, so each product
//! is as accurate as e^(e_t − Λ_τ)); a block whose keys decay more than that in 16 steps
//! is summed pair by pair instead, `Σ_i q_t[i] k_τ[i] e^(e_t[i] − Λ_τ[i])`, exact at any
//! decay.
//!
//! Exponentials and logs are `ex2.approx` / `lg2.approx` (relative error about 2⁻²²),
//! far below bf16's rounding.
//!
//! With [`Products::Bf16x3`] every operand rounded to bf16 above is split instead into a
//! hi and a lo bf16 plane, x ≈ bf16(x) + bf16(x − bf16(x)), and each mma becomes three
//! (lo·hi, hi·lo, hi·hi) on the same fragments: a staged array's lo plane follows it in
//! shared memory (a per-key decay's scaled queries are split again in registers), the
//! scores' are split in registers, and a chunk state's lo plane fills the second half
//! of its f32 slot.
//!
//! [`Gate::Log`]: psm_ir::derive::chunkwise::Gate::Log
//! [`Gate::Value`]: psm_ir::derive::chunkwise::Gate::Value

use std::fmt::Write;

use super::block::shared_limit;
use super::emit::{Class, Emitter, Reg};
use super::HAS_STATE;

/// Steps per chunk.
pub const CHUNK: usize = 64;
/// Threads per block of `psm_cw_outputs` (one warp per 16 steps of the chunk).
pub const OUTPUT_THREADS: u32 = (CHUNK / 16 * 32) as u32;
/// Most blocks of `psm_cw_outputs` resident per SM that ptxas is asked to fit by
/// registers (at most 128 a thread for 4): left to itself it took 134 at 128 keys (sm_90,
/// when the warps still read their queries from global memory), so 3 blocks fit where
/// the ~45 KB of shared memory allowed 5, and the kernel waited on its loads. Fewer
/// where fewer blocks' shared memory fits an SM ([`output_blocks`]: 3 at 128 keys on
/// sm_90, 2 with split products), so that ptxas does not spill for blocks that could not
/// be resident anyway.
const OUTPUT_BLOCKS_PER_SM: usize = 4;
/// Shared memory the driver reserves for each block (sm_80 and later): an SM holds
/// [`shared_limit`] bytes and this, each block its own bytes and this.
const RESERVED_SHARED: usize = 1024;
/// Most keys of a state field.
pub const MAX_KEYS: usize = 128;
/// Most values of a state field a block covers; wider fields take several blocks.
pub const MAX_VALUE_TILE: usize = 64;
/// Most keys a block of `psm_cw_states` covers: wider fields take several blocks, so
/// that a sequence's chunk loop is spread over more of the device (issue 6's 128 keys:
/// 2 × 2 blocks a sequence, as fla's chunk_fwd_h).
const MAX_KEY_TILE: usize = 64;
/// Steps per sub-chunk of a per-key decay: one warp's rows.
const SUB_CHUNK: usize = 16;
/// The largest exponent e_t − R_b a factorized diagonal block's query factor may take
/// (e^60 ≈ 1.1e26, far below f32's and bf16's 3.4e38 ≈ e^88.7, with room for |q| and
/// the sums).
pub const FACTOR_RANGE: f32 = 60.0;

/// What the kernels of one state field compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkwiseShape {
    pub keys: usize,
    pub values: usize,
    pub decay: ChunkDecay,
    /// The readout reads S_(t−1) instead of S_t.
    pub exclusive: bool,
}

/// The transition of the state field between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkDecay {
    None,
    /// A scalar decay given by its natural log.
    Log,
    /// A scalar decay given as a value.
    Value,
    /// A decay per key (a diagonal transition) given by its natural log.
    DiagonalLog,
    /// A decay per key given as a value.
    DiagonalValue,
}

impl ChunkDecay {
    /// The decay differs between keys: the module has `psm_cw_decays`, and `g` holds Λ.
    pub fn per_key(self) -> bool {
        matches!(self, ChunkDecay::DiagonalLog | ChunkDecay::DiagonalValue)
    }
    /// The decay is given as a value, whose natural log the kernels take.
    fn as_value(self) -> bool {
        matches!(self, ChunkDecay::Value | ChunkDecay::DiagonalValue)
    }
}

/// The element type of the inputs q, k, v and the outputs in global memory (decays,
/// states and Λ are f32 in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Read as they are, without a copy to f32 first; the outputs rounded to nearest.
    Bf16,
}

/// How the kernels take the products of their f32 operands on the tensor cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// Each operand rounded to bf16 (relative error 2⁻⁹ an operand): about 1e-3–4e-3
    /// relative to an f64 reference on f32 inputs that are not bf16 values.
    Bf16,
    /// Each operand split into bf16 planes, x = hi + lo with hi = bf16(x) and lo =
    /// bf16(x − hi), and a · b taken as lo_a · hi_b + hi_a · lo_b + hi_a · hi_b (three
    /// mma.sync, f32 accumulators): the operands keep 16 of f32's 24 significant bits
    /// and the dropped lo_a · lo_b is about 2⁻¹⁸ of the product, so f32 inputs get
    /// errors near 1e-5 rather than bf16's 1e-3. Three times the mma work, twice the
    /// shared memory of the staged operands (so two blocks of the outputs kernel an SM
    /// on sm_90 at 128 keys, with value tiles of 32; 64 at 64 keys).
    Bf16x3,
}

/// The two kernels' module and launch geometry.
#[derive(Debug, Clone)]
pub struct ChunkwiseModule {
    pub text: String,
    pub shape: ChunkwiseShape,
    pub storage: Storage,
    pub products: Products,
    /// Values per block (`grid.x = ⌈values / value_tile⌉` for `psm_cw_outputs`).
    pub value_tile: usize,
    /// Bytes of dynamic shared memory per block of `psm_cw_outputs` (above 48 KiB: the
    /// function's limit must be raised first, cuFuncSetAttribute's
    /// MAX_DYNAMIC_SHARED_SIZE_BYTES).
    pub output_shared_bytes: usize,
    /// Keys per block of `psm_cw_states` (its `grid.x` is ⌈keys / key_tile⌉ value tiles).
    pub key_tile: usize,
    /// Threads per block of `psm_cw_states`.
    pub state_threads: u32,
    /// Threads per block of `psm_cw_decays`, the module's third kernel when the decay
    /// is per key.
    pub decay_threads: Option<u32>,
    /// Bytes of dynamic shared memory per block of `psm_cw_fused` ([`OUTPUT_THREADS`]
    /// threads, grid [`ChunkwiseModule::fused_grid`]), where the module has it: the
    /// states and outputs kernels' work in one, for fields without a decay with bf16
    /// inputs, outputs and products.
    pub fused_shared_bytes: Option<usize>,
}

impl ChunkwiseModule {
    /// The grid of `psm_cw_states` over `nseq` sequences: key tiles × value tiles, then
    /// sequences.
    pub fn state_grid(&self, nseq: u32) -> (u32, u32, u32) {
        let tiles = self.shape.keys.div_ceil(self.key_tile) * self.value_tiles();
        (tiles as u32, nseq, 1)
    }

    /// Value tiles of the field: the blocks a sequence's chunk (outputs) or walk (fused)
    /// takes.
    fn value_tiles(&self) -> usize {
        self.shape.values.div_ceil(self.value_tile)
    }

    /// The grid of `psm_cw_fused`: value tiles, sequences.
    pub fn fused_grid(&self, nseq: u32) -> (u32, u32, u32) {
        (self.value_tiles() as u32, nseq, 1)
    }

    /// Whether a run over `nseq` sequences on a device of `sms` multiprocessors takes
    /// `psm_cw_fused` rather than the states and outputs kernels: where the module has
    /// it and its blocks (one per value tile and sequence, each walking its sequence's
    /// chunks) number at least half the multiprocessors. Fewer leave the device idle,
    /// where the outputs kernel spreads every chunk over it. Measured on the H200 (132
    /// SMs; 2026-11-29, bf16, K = V = 128, no decay, two blocks a sequence): at 16
    /// sequences the two kernels are faster (T = 16384 0.386 against 0.545 ms), at 64 the
    /// fused kernel (0.625 against 0.997); the lines cross near 30 sequences at every T.
    pub fn fused_pays(&self, nseq: usize, sms: usize) -> bool {
        self.fused_shared_bytes.is_some() && 2 * self.value_tiles() * nseq >= sms
    }

    /// The grid of `psm_cw_outputs`: value tiles, chunks, sequences.
    pub fn output_grid(&self, nchunks: u32, nseq: u32) -> (u32, u32, u32) {
        (self.value_tiles() as u32, nchunks, nseq)
    }
}

/// Why a state field has no tensor-core kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// Entries each thread has in flight while staging.
const BATCH: usize = 8;
/// Registers a thread's loads fill at most while [`stage_row_tile`] stages.
const STAGE_REGISTERS: usize = 32;

/// Static shared memory a block may declare.
pub(super) const STATIC_SHARED: usize = 48 * 1024;

/// Dynamic shared bytes of `psm_cw_outputs`: Q and K `[CHUNK][kp + 8]`, V `[CHUNK][vt +
/// 8]`, S_c `[kp][vt + 8]` in bf16 (`planes` of each), and CHUNK log decays (scalar) or
/// the sub-chunks' R_b `[CHUNK / 16][kp]` (per key) in f32.
fn output_shared_bytes(kp: usize, vt: usize, decay: ChunkDecay, planes: usize) -> usize {
    let decays = match decay {
        ChunkDecay::None => 0,
        ChunkDecay::Log | ChunkDecay::Value => CHUNK,
        ChunkDecay::DiagonalLog | ChunkDecay::DiagonalValue => CHUNK / SUB_CHUNK * kp,
    };
    query_shared_bytes(kp, planes) + (CHUNK * (kp + 8) + CHUNK * (vt + 8) + kp * (vt + 8)) * 2 * planes + decays * 4
}

/// Shared bytes of `psm_cw_outputs`' staged queries, `[CHUNK][kp + 8]` bf16 (`planes`).
fn query_shared_bytes(kp: usize, planes: usize) -> usize {
    CHUNK * (kp + 8) * 2 * planes
}

/// The name of `psm_cw_outputs`'s dynamic shared window.
const OUTPUTS_WINDOW: &str = "psm_cw_outputs_shared";

/// The name of `psm_cw_fused`'s dynamic shared window.
const FUSED_WINDOW: &str = "psm_cw_fused_shared";

/// Whether a module has `psm_cw_fused`: no decay or a scalar one, bf16 in global memory and bf16
/// products, keys a multiple of 8 and whole value tiles (its operands copied as they are,
/// 16 bytes a piece).
fn fused_applies(g: &Geometry) -> bool {
    !g.per_key() && g.storage == Storage::Bf16 && !g.split() && g.keys.is_multiple_of(8) && g.values.is_multiple_of(8) && g.values.is_multiple_of(g.vt)
}

/// Bytes of `psm_cw_fused`'s S, `[kp][vt + 8]` bf16.
fn fused_state_bytes(g: &Geometry) -> usize {
    g.kp * g.value_stride() * 2
}

/// Bytes of `psm_cw_fused`'s Λ: f32 × CHUNK for a scalar decay.
fn fused_decay_bytes(g: &Geometry) -> usize {
    if g.scalar_decay() {
        CHUNK * 4
    } else {
        0
    }
}

/// Dynamic shared bytes of `psm_cw_fused`: Q, K and V twice, S once, a scalar decay's Λ.
fn fused_shared_bytes(g: &Geometry) -> usize {
    2 * (2 * CHUNK * g.key_stride() + CHUNK * g.value_stride()) * 2 + fused_state_bytes(g) + fused_decay_bytes(g)
}

/// Keys rounded up to the mma's 16.
pub(super) fn padded_keys(keys: usize) -> usize {
    keys.div_ceil(16) * 16
}

/// Why the tensor-core kernels (which need `features`) cannot take `shape` for `arch`
/// (compute capability × 10), if they cannot.
pub(super) fn check_shape(shape: ChunkwiseShape, arch: u32, features: &str) -> Result<(), Unsupported> {
    if arch < 80 {
        return Err(Unsupported(format!("{features} need sm_80 or later, not sm_{arch}")));
    }
    if shape.keys == 0 || shape.values == 0 {
        return Err(Unsupported("a state field without entries".into()));
    }
    if shape.keys > MAX_KEYS {
        return Err(Unsupported(format!("{} keys: the state kernel keeps at most {MAX_KEYS} keys in one block", shape.keys)));
    }
    Ok(())
}

/// The widest value tile (a multiple of 8, at most [`MAX_VALUE_TILE`]) of `values`
/// for which `bytes(tile)` fits a block's static shared memory.
pub(super) fn value_tile(values: usize, bytes: impl Fn(usize) -> usize) -> usize {
    value_tile_within(values, STATIC_SHARED, bytes)
}

/// The widest value tile (a multiple of 8, at most [`MAX_VALUE_TILE`]) of `values` for
/// which `bytes(tile)` is at most `limit`; 8 if none is.
fn value_tile_within(values: usize, limit: usize, bytes: impl Fn(usize) -> usize) -> usize {
    let mut tile = values.div_ceil(8).min(MAX_VALUE_TILE / 8) * 8;
    while tile > 8 && bytes(tile) > limit {
        tile = (tile / 2).div_ceil(8) * 8;
    }
    tile
}

/// A tensor-core module's `.version`, `.target` and `.address_size` lines: mma.sync with
/// bf16, cvt.rn.bf16(x2).f32 and cp.async need PTX 7.0; 7.8 for sm_90 as the ABI.
pub(super) fn module_header(arch: u32) -> String {
    let version = if arch >= 90 { "7.8" } else { "7.0" };
    format!(".version {version}\n.target sm_{arch}\n.address_size 64\n\n")
}

/// The kernels of one state field with f32 inputs and outputs for `arch` (compute
/// capability × 10, at least 80).
pub fn compile_chunkwise(shape: ChunkwiseShape, arch: u32) -> Result<ChunkwiseModule, Unsupported> {
    compile_chunkwise_stored(shape, Storage::F32, arch)
}

/// The kernels of one state field with inputs and outputs of type `storage`, each
/// operand rounded to bf16 ([`Products::Bf16`]).
pub fn compile_chunkwise_stored(shape: ChunkwiseShape, storage: Storage, arch: u32) -> Result<ChunkwiseModule, Unsupported> {
    compile_chunkwise_with(shape, storage, Products::Bf16, arch)
}

/// The kernels of one state field with inputs and outputs of type `storage`, taking
/// their products as `products` says.
pub fn compile_chunkwise_with(shape: ChunkwiseShape, storage: Storage, products: Products, arch: u32) -> Result<ChunkwiseModule, Unsupported> {
    check_shape(shape, arch, "bf16 tensor-core products")?;
    let kp = padded_keys(shape.keys);
    let planes = planes(products);
    // As wide as 48 KiB allowed the arrays besides the staged queries (in static shared
    // memory), or wider while two blocks fit an SM: the split products' tiles in 48 KiB
    // (8 at 128 keys) recomputed the chunk's scores for every 8 values.
    let bytes = |vt| output_shared_bytes(kp, vt, shape.decay, planes);
    let static_tile = value_tile(shape.values, |vt| bytes(vt) - query_shared_bytes(kp, planes));
    let two_blocks = (shared_limit(arch) + RESERVED_SHARED) / 2 - RESERVED_SHARED;
    let value_tile = value_tile_within(shape.values, two_blocks, bytes).max(static_tile);
    let output_shared_bytes = bytes(value_tile);
    if output_shared_bytes > shared_limit(arch) {
        return Err(Unsupported(format!("{} keys: the outputs kernel would need {output_shared_bytes} bytes of shared memory", shape.keys)));
    }
    let g = Geometry { keys: shape.keys, kp, kt: kp.min(MAX_KEY_TILE), values: shape.values, vt: value_tile, shape, storage, products };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "// psm chunkwise kernels: keys {}, values {}, decay {:?}, {} readout, {storage:?} inputs and outputs, {products:?} products, chunk {CHUNK}, value tile {value_tile}",
        shape.keys,
        shape.values,
        shape.decay,
        if shape.exclusive { "exclusive" } else { "inclusive" }
    );
    text.push_str(&module_header(arch));
    text.push_str(&states_kernel(&g));
    text.push('\n');
    let _ = writeln!(text, ".extern .shared .align 16 .b8 {OUTPUTS_WINDOW}[];\n");
    text.push_str(&outputs_kernel(&g, output_blocks(output_shared_bytes, arch)));
    let fused_bytes = fused_shared_bytes(&g);
    let fused_shared_bytes = (fused_applies(&g) && fused_bytes <= shared_limit(arch)).then(|| {
        text.push('\n');
        let _ = writeln!(text, ".extern .shared .align 16 .b8 {FUSED_WINDOW}[];\n");
        text.push_str(&fused_kernel(&g, output_blocks(fused_bytes, arch)));
        fused_bytes
    });
    let decay_threads = shape.decay.per_key().then(|| {
        text.push('\n');
        text.push_str(&decays_kernel(&g));
        (shape.keys.div_ceil(32) * 32) as u32
    });
    Ok(ChunkwiseModule { text, shape, storage, products, value_tile, output_shared_bytes, key_tile: g.kt, state_threads: g.state_threads() as u32, decay_threads, fused_shared_bytes })
}

#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) keys: usize,
    /// Keys padded to 16.
    pub(super) kp: usize,
    /// Keys per block of `psm_cw_states`.
    pub(super) kt: usize,
    pub(super) values: usize,
    /// Values per block.
    pub(super) vt: usize,
    pub(super) shape: ChunkwiseShape,
    pub(super) storage: Storage,
    pub(super) products: Products,
}

/// bf16 planes each staged operand has under `products`: hi, and lo for [`Products::Bf16x3`].
fn planes(products: Products) -> usize {
    match products {
        Products::Bf16 => 1,
        Products::Bf16x3 => 2,
    }
}

impl Geometry {
    /// The operands are split into hi and lo bf16 planes ([`Products::Bf16x3`]).
    pub(super) fn split(&self) -> bool {
        self.products == Products::Bf16x3
    }
    /// Row stride (entries) of operands whose reduction index is the step: C + 8.
    pub(super) fn step_stride(&self) -> usize {
        CHUNK + 8
    }
    /// Row stride (entries) of operands whose reduction index is the key: keys + 8.
    pub(super) fn key_stride(&self) -> usize {
        self.kp + 8
    }
    /// Row stride (entries) of a value tile's rows in shared memory (S_c, its rows the
    /// keys, read by `ldmatrix.trans`): vt + 8, 16-byte aligned rows without bank conflicts.
    fn value_stride(&self) -> usize {
        self.vt + 8
    }
    fn decayed(&self) -> bool {
        self.shape.decay != ChunkDecay::None
    }
    /// A scalar decay (Λ per step, in shared memory).
    fn scalar_decay(&self) -> bool {
        self.decayed() && !self.per_key()
    }
    fn per_key(&self) -> bool {
        self.shape.decay.per_key()
    }
    /// Keys the state kernel's key tiles span: padded to whole tiles.
    fn key_span(&self) -> usize {
        self.kp.div_ceil(self.kt) * self.kt
    }
    /// Warps of `psm_cw_states` that share each 16 keys of its tile, each taking an equal
    /// part of the value tile (a multiple of 8): two where the tile allows, so that a
    /// warp's serial chunk loop (staging, products, state stores) is half as long and
    /// twice as many warps hide each other's latency.
    fn state_value_parts(&self) -> usize {
        if self.vt.is_multiple_of(16) {
            2
        } else {
            1
        }
    }
    /// Threads per block of `psm_cw_states`.
    fn state_threads(&self) -> usize {
        self.kt / 16 * self.state_value_parts() * 32
    }
}

/// The registers and shared arrays both kernels use, and the pieces they share.
pub(super) struct Writer {
    pub(super) e: Emitter,
    shared: String,
    /// lane / 4 and lane % 4: a fragment's row and column pair.
    pub(super) gq: Reg,
    pub(super) cq: Reg,
    pub(super) tid: Reg,
    pub(super) warp: Reg,
    /// Performance directives between the parameters and the body (see [`Writer::occupancy`]).
    directives: String,
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;

pub(super) fn f32_imm(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

impl Writer {
    pub(super) fn new() -> Writer {
        let mut e = Emitter::new();
        let tid = e.reg(Class::B32);
        let lane = e.reg(Class::B32);
        let warp = e.reg(Class::B32);
        let gq = e.reg(Class::B32);
        let cq = e.reg(Class::B32);
        e.ins(format!("mov.u32 {tid}, %tid.x"));
        e.ins(format!("and.b32 {lane}, {tid}, 31"));
        e.ins(format!("shr.u32 {warp}, {tid}, 5"));
        e.ins(format!("shr.u32 {gq}, {lane}, 2"));
        e.ins(format!("and.b32 {cq}, {lane}, 3"));
        Writer { e, shared: String::new(), gq, cq, tid, warp, directives: String::new() }
    }

    /// A shared array of `bytes`; its 32-bit shared address in a register.
    pub(super) fn shared(&mut self, name: &str, bytes: usize) -> Reg {
        let _ = writeln!(self.shared, "\t.shared .align 16 .b8 {name}[{bytes}];");
        let r = self.e.reg(Class::B32);
        self.e.ins(format!("mov.u32 {r}, {name}"));
        r
    }

    /// Consecutive arrays of `bytes` each (multiples of 16) in the kernel's dynamic shared
    /// window `window` (declared `.extern .shared` in the module): their addresses.
    pub(super) fn window_arrays<const N: usize>(&mut self, window: &str, bytes: [usize; N]) -> [Reg; N] {
        let base = self.e.reg(Class::B32);
        self.e.ins(format!("mov.u32 {base}, {window}"));
        let mut offset = 0;
        bytes.map(|n| {
            let r = self.e.reg(Class::B32);
            self.e.ins(format!("add.u32 {r}, {base}, {offset}"));
            offset += n;
            r
        })
    }

    /// This warp's 16 rows of a tile (a warp per 16 rows): the first, 16 warp, the lane's
    /// fragment row 16 warp + gq, and its first fragment column 2 cq.
    pub(super) fn warp_fragment_rows(&mut self) -> (Reg, Reg, Reg) {
        let row0 = self.e.reg(Class::B32);
        self.e.ins(format!("shl.b32 {row0}, {}, 4", self.warp));
        let arow = self.e.reg(Class::B32);
        self.e.ins(format!("add.u32 {arow}, {row0}, {}", self.gq));
        let acol = self.e.reg(Class::B32);
        self.e.ins(format!("shl.b32 {acol}, {}, 1", self.cq));
        (row0, arow, acol)
    }

    /// A block of a grid (value tiles, sequences): its first value (tile x · `vt`) and its
    /// sequence.
    pub(super) fn value_tile_and_sequence(&mut self, vt: usize) -> (Reg, Reg) {
        let (vtile, seq) = (self.e.reg(Class::B32), self.e.reg(Class::B32));
        self.e.ins(format!("mov.u32 {vtile}, %ctaid.x"));
        self.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
        let col0 = self.e.reg(Class::B32);
        self.e.ins(format!("mul.lo.u32 {col0}, {vtile}, {vt}"));
        (col0, seq)
    }

    /// The kernel's u64 parameters `names`, then its u32 `flags` (the last parameter).
    pub(super) fn params_and_flags<const N: usize>(&mut self, names: [&str; N]) -> ([Reg; N], Reg) {
        let regs = names.map(|n| self.param(n));
        let flags = self.e.reg(Class::B32);
        self.e.ins(format!("ld.param.u32 {flags}, [flags]"));
        (regs, flags)
    }

    pub(super) fn param(&mut self, name: &str) -> Reg {
        let r = self.e.reg(Class::B64);
        self.e.ins(format!("ld.param.u64 {r}, [{name}]"));
        r
    }

    /// e^x by `ex2.approx`.
    pub(super) fn exp(&mut self, x: Reg) -> Reg {
        let s = self.e.reg(Class::F32);
        let r = self.e.reg(Class::F32);
        self.e.ins(format!("mul.rn.f32 {s}, {x}, {}", f32_imm(LOG2E)));
        self.e.ins(format!("ex2.approx.ftz.f32 {r}, {s}"));
        r
    }

    /// `base + 4 · index` for a 64-bit global byte address.
    pub(super) fn f32_addr(&mut self, base: Reg, index: Reg) -> Reg {
        let a = self.e.reg(Class::B64);
        self.e.ins(format!("mad.lo.u64 {a}, {index}, 4, {base}"));
        a
    }

    /// `(row · stride + col) · 2 + base` for a shared bf16 array.
    pub(super) fn bf16_addr(&mut self, base: Reg, row: Reg, stride: usize, col: Reg) -> Reg {
        let a = self.e.reg(Class::B32);
        self.e.ins(format!("mad.lo.u32 {a}, {row}, {stride}, {col}"));
        self.e.ins(format!("shl.b32 {a}, {a}, 1"));
        self.e.ins(format!("add.u32 {a}, {a}, {base}"));
        a
    }

    /// The B fragments of `tiles` (1 or 2) consecutive n-tiles of a bf16 array stored
    /// `[k][n]` (the reduction index the row), by `ldmatrix.trans`: `addr` is the lane's
    /// row address of [`Writer::ldmatrix_lane`] and `offset` the bytes to the first
    /// tile's (k0, n0).
    pub(super) fn b_fragments_trans(&mut self, addr: Reg, offset: usize, tiles: usize) -> Vec<[Reg; 2]> {
        self.ldmatrix(addr, offset, 2 * tiles, true).chunks(2).map(|b| [b[0], b[1]]).collect()
    }

    /// `ldmatrix` of `count` (2 or 4) 8 × 8 bf16 matrices at `addr + offset` (the lane's
    /// row address), transposed when `trans`.
    pub(super) fn ldmatrix(&mut self, addr: Reg, offset: usize, count: usize, trans: bool) -> Vec<Reg> {
        let r: Vec<Reg> = (0..count).map(|_| self.e.reg(Class::B32)).collect();
        let list = r.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let trans = if trans { ".trans" } else { "" };
        self.e.ins(format!("ldmatrix.sync.aligned.m8n8.x{count}{trans}.shared.b16 {{{list}}}, [{addr}+{offset}]"));
        r
    }

    /// The lane's row address for [`Writer::b_fragments_trans`] in a `[k][n]` bf16 array
    /// of row stride `stride`: lanes 0–15 address rows k0 + lane of the first n-tile
    /// (its two 8 × 8 matrices), lanes 16–31 the same rows of the next.
    fn ldmatrix_lane(&mut self, base: Reg, stride: usize) -> Reg {
        let row = self.e.reg(Class::B32);
        let tile = self.e.reg(Class::B32);
        self.e.ins(format!("and.b32 {row}, {}, 15", self.tid));
        self.e.ins(format!("shr.u32 {tile}, {}, 4", self.tid));
        self.e.ins(format!("and.b32 {tile}, {tile}, 1"));
        self.e.ins(format!("shl.b32 {tile}, {tile}, 3"));
        self.bf16_addr(base, row, stride, tile)
    }

    /// [`Writer::ldmatrix_lane`]'s lanes over the 16 rows from `row0` and the 16 columns
    /// from `col0` of a row-major bf16 array: read plainly (`.x4`), the four matrices
    /// are the A fragment of `mma.m16n8k16` for rows row0.. over the reduction entries
    /// col0..; read transposed from `[k][n]` storage, the B fragments of the two n-tiles
    /// at col0 and col0 + 8 ([`Writer::b_fragments_trans`]).
    pub(super) fn ldmatrix_lane_at(&mut self, base: Reg, row0: Reg, stride: usize, col0: Reg) -> Reg {
        let row = self.e.reg(Class::B32);
        let col = self.e.reg(Class::B32);
        self.e.ins(format!("and.b32 {row}, {}, 15", self.tid));
        self.e.ins(format!("add.u32 {row}, {row}, {row0}"));
        self.e.ins(format!("shr.u32 {col}, {}, 4", self.tid));
        self.e.ins(format!("and.b32 {col}, {col}, 1"));
        self.e.ins(format!("mad.lo.u32 {col}, {col}, 8, {col0}"));
        self.bf16_addr(base, row, stride, col)
    }

    /// The lane's row address for an `ldmatrix.x4` of a 16 × 16 bf16 tile of row stride
    /// `stride`: lane l addresses row 8 (l / 16) + l % 8, columns 8 ((l / 8) % 2), so the
    /// four 8 × 8 matrices are (rows 0.., columns 0..), (0.., 8..), (8.., 0..), (8.., 8..):
    /// stored `[k][m]` and read `.trans`, the A fragment's a0–a3
    /// ([`Writer::a_fragment_trans`]); stored `[n][k]`, the B fragments of two n-tiles
    /// ([`Writer::b_fragments_rows`]).
    fn ldmatrix_x4_lane(&mut self, base: Reg, stride: usize) -> Reg {
        let row = self.e.reg(Class::B32);
        let high = self.e.reg(Class::B32);
        let col = self.e.reg(Class::B32);
        self.e.ins(format!("and.b32 {row}, {}, 7", self.tid));
        self.e.ins(format!("shr.u32 {high}, {}, 1", self.tid));
        self.e.ins(format!("and.b32 {high}, {high}, 8"));
        self.e.ins(format!("or.b32 {row}, {row}, {high}"));
        self.e.ins(format!("and.b32 {col}, {}, 8", self.tid));
        self.bf16_addr(base, row, stride, col)
    }

    /// The A fragment of an m16 × k16 tile stored transposed (`[k][m]`, bf16), by one
    /// `ldmatrix.x4.trans`: `addr` is the lane's row address of [`Writer::ldmatrix_x4_lane`]
    /// and `offset` the bytes to the tile's (k0, m0).
    fn a_fragment_trans(&mut self, addr: Reg, offset: usize) -> [Reg; 4] {
        let r = self.ldmatrix(addr, offset, 4, true);
        [r[0], r[1], r[2], r[3]]
    }

    /// The A fragment of an m16 × k16 tile stored as rows (`[m][k]`, bf16), by one
    /// `ldmatrix.x4`: `addr` is the lane's row address of [`Writer::ldmatrix_lane_at`]
    /// and `offset` the bytes to the tile's (m0, k0).
    fn a_fragment_rows(&mut self, addr: Reg, offset: usize) -> [Reg; 4] {
        let r = self.ldmatrix(addr, offset, 4, false);
        [r[0], r[1], r[2], r[3]]
    }

    /// The B fragments of two consecutive n-tiles of a bf16 array stored `[n][k]` (the
    /// reduction index contiguous), by one `ldmatrix.x4`: `addr` is the lane's row
    /// address of [`Writer::ldmatrix_x4_lane`] and `offset` the bytes to (n0, k0).
    fn b_fragments_rows(&mut self, addr: Reg, offset: usize) -> [[Reg; 2]; 2] {
        let r = self.ldmatrix(addr, offset, 4, false);
        [[r[0], r[1]], [r[2], r[3]]]
    }

    /// acc[n] += A B_n over one k16 step, B a bf16 array stored `[k][n]` (its lo plane
    /// `lo` bytes further when split) read two n-tiles at a time by
    /// [`Writer::b_fragments_trans`] from the lane address `addr`, `offset` the bytes to
    /// the first tile's (k0, n0); `a` holds A's fragment of each plane.
    fn mma_trans_b(&mut self, acc: &[[Reg; 4]], a: &[[Reg; 4]], addr: Reg, offset: usize, lo: Option<usize>) {
        for (pair, tiles) in acc.chunks(2).enumerate() {
            let at = offset + 2 * 16 * pair;
            let planes: Vec<Vec<[Reg; 2]>> = std::iter::once(0).chain(lo).map(|plane| self.b_fragments_trans(addr, plane + at, tiles.len())).collect();
            for (n, t) in tiles.iter().enumerate() {
                let b: Vec<[Reg; 2]> = planes.iter().map(|p| p[n]).collect();
                self.mma_planes(t, a, &b);
            }
        }
    }

    /// acc += A B over the operands' planes (hi, then lo when split): the terms lo · hi
    /// and hi · lo first (the small ones), then hi · hi; lo · lo (about 2⁻¹⁸ of the
    /// product) is dropped.
    pub(super) fn mma_planes(&mut self, acc: &[Reg; 4], a: &[[Reg; 4]], b: &[[Reg; 2]]) {
        for sum in (0..2).rev() {
            for (i, ap) in a.iter().enumerate() {
                for (j, bp) in b.iter().enumerate() {
                    if i + j == sum {
                        self.mma(acc, ap, bp);
                    }
                }
            }
        }
    }

    /// Two f32 rounded to a bf16 pair, `lo` in the low half.
    pub(super) fn pack(&mut self, lo: Reg, hi: Reg) -> Reg {
        let r = self.e.reg(Class::B32);
        self.e.ins(format!("cvt.rn.bf16x2.f32 {r}, {hi}, {lo}"));
        r
    }

    /// [`Writer::pack`]'s pair, then when `split` the pair of what its rounding left
    /// ([`Writer::residual`]): the A fragment words of each plane.
    pub(super) fn pack_planes(&mut self, lo: Reg, hi: Reg, split: bool) -> Vec<Reg> {
        let mut planes = vec![self.pack(lo, hi)];
        if split {
            let (rl, rh) = (self.residual(lo), self.residual(hi));
            planes.push(self.pack(rl, rh));
        }
        planes
    }

    /// x − bf16(x) (bf16 rounded to nearest), exact in f32: the lo plane's value before
    /// its own rounding.
    pub(super) fn residual(&mut self, x: Reg) -> Reg {
        let h = self.e.reg(Class::B16);
        let bits = self.e.reg(Class::B32);
        let rounded = self.e.reg(Class::F32);
        let r = self.e.reg(Class::F32);
        self.e.ins(format!("cvt.rn.bf16.f32 {h}, {x}"));
        self.e.ins(format!("cvt.u32.u16 {bits}, {h}"));
        self.e.ins(format!("shl.b32 {bits}, {bits}, 16"));
        self.e.ins(format!("mov.b32 {rounded}, {bits}"));
        self.e.ins(format!("sub.rn.f32 {r}, {x}, {rounded}"));
        r
    }

    /// A predicate that is true.
    fn always(&mut self) -> Reg {
        let p = self.e.reg(Class::Pred);
        self.e.ins(format!("setp.eq.u32 {p}, {}, {}", self.tid, self.tid));
        p
    }

    /// Emits `body` for the column sub-chunk `sub` (steps 16 sub ..) of an output warp
    /// (rows 16 warp ..), skipped above the diagonal (sub > warp), where every score is
    /// masked.
    fn up_to_diagonal(&mut self, sub: usize, body: impl FnOnce(&mut Writer)) {
        let skip = self.e.label("above_diagonal");
        let above = self.e.reg(Class::Pred);
        self.e.ins(format!("setp.lt.u32 {above}, {}, {sub}", self.warp));
        self.e.ins(format!("@{above} bra.uni {skip}"));
        body(self);
        self.e.place(&skip);
    }

    pub(super) fn mma(&mut self, acc: &[Reg; 4], a: &[Reg; 4], b: &[Reg; 2]) {
        let [d0, d1, d2, d3] = acc;
        let [a0, a1, a2, a3] = a;
        let [b0, b1] = b;
        self.e.ins(format!(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}}"
        ));
    }

    pub(super) fn zeros(&mut self, n: usize) -> Vec<[Reg; 4]> {
        (0..n)
            .map(|_| {
                let acc = [(); 4].map(|_| self.e.reg(Class::F32));
                for r in &acc {
                    self.e.ins(format!("mov.f32 {r}, 0f00000000"));
                }
                acc
            })
            .collect()
    }

    /// A runtime loop `for idx in (tid..total).step_by(threads)`; `body` gets idx.
    pub(super) fn strided(&mut self, total: usize, threads: usize, what: &str, body: impl FnOnce(&mut Writer, Reg)) {
        let tid = self.tid;
        self.counted(tid, total, threads, false, what, body);
    }

    /// A runtime loop `for i in (first..total).step_by(step)`; `body` gets i. `uniform`:
    /// every thread of a warp has the same `first` (a loop over warps), so its branches
    /// are warp-uniform.
    pub(super) fn counted(&mut self, first: Reg, total: usize, step: usize, uniform: bool, what: &str, body: impl FnOnce(&mut Writer, Reg)) {
        let bra = if uniform { "bra.uni" } else { "bra" };
        let idx = self.e.reg(Class::B32);
        let p = self.e.reg(Class::Pred);
        let top = self.e.label(what);
        let done = self.e.label(&format!("{what}_done"));
        self.e.ins(format!("mov.u32 {idx}, {first}"));
        self.e.place(&top);
        self.e.ins(format!("setp.ge.u32 {p}, {idx}, {total}"));
        self.e.ins(format!("@{p} {bra} {done}"));
        body(self, idx);
        self.e.ins(format!("add.u32 {idx}, {idx}, {step}"));
        self.e.ins(format!("{bra} {top}"));
        self.e.place(&done);
    }

    /// Load `base + offset` of `loads` (each `lanes` entries): whether it exists
    /// (`live`) and its first entry.
    fn load_slot(&mut self, base: Reg, offset: usize, loads: usize, lanes: usize) -> (Reg, Reg) {
        let idx = self.e.reg(Class::B32);
        let live = self.e.reg(Class::Pred);
        self.e.ins(format!("add.u32 {idx}, {base}, {offset}"));
        self.e.ins(format!("setp.lt.u32 {live}, {idx}, {loads}"));
        let entry = self.e.reg(Class::B32);
        self.e.ins(format!("mul.lo.u32 {entry}, {idx}, {lanes}"));
        (live, entry)
    }

    /// The factors [`Scale`] multiplies `lanes` staged values by (none, one for all, or
    /// one each), from their step, first key and Λ.
    fn factors(&mut self, scale: Scale<'_>, step: Reg, key: Reg, lams: &[Reg], lanes: usize) -> Vec<Reg> {
        match scale {
            Scale::None => Vec::new(),
            Scale::Step(f) => vec![f(self, step); lanes],
            Scale::PerKey { reference, .. } => {
                let row = reference(self, step);
                let at = self.e.reg(Class::B32);
                self.e.ins(format!("mad.lo.u32 {at}, {key}, 4, {row}"));
                let references = self.shared_f32s(at, lanes);
                references
                    .into_iter()
                    .zip(lams)
                    .map(|(r, lam)| {
                        let d = self.e.reg(Class::F32);
                        self.e.ins(format!("sub.rn.f32 {d}, {r}, {lam}"));
                        self.exp(d)
                    })
                    .collect()
            }
        }
    }

    /// `n` consecutive f32 from the shared address `at` (aligned to the widest vector
    /// of them: 16 bytes for n a multiple of 4), in vector loads of up to 4.
    fn shared_f32s(&mut self, at: Reg, n: usize) -> Vec<Reg> {
        let width = [4, 2, 1].into_iter().find(|w| n.is_multiple_of(*w)).unwrap_or(1);
        let xs: Vec<Reg> = (0..n).map(|_| self.e.reg(Class::F32)).collect();
        for (c, part) in xs.chunks(width).enumerate() {
            let list = part.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
            let ty = match width {
                4 => format!("v4.f32 {{{list}}}"),
                2 => format!("v2.f32 {{{list}}}"),
                _ => format!("f32 {list}"),
            };
            self.e.ins(format!("ld.shared.{ty}, [{at}+{}]", 4 * width * c));
        }
        xs
    }

    /// Stores staged values (times `factors[u]` where given) as bf16 at their shared
    /// addresses when `live`, and what the rounding left ([`Writer::residual`]) as bf16
    /// `lo` bytes further when given (the lo plane).
    fn store_staged(&mut self, xs: Vec<Reg>, addrs: &[Reg], live: Reg, factors: &[Reg], lo: Option<usize>) {
        for (u, (x, addr)) in xs.into_iter().zip(addrs).enumerate() {
            if let Some(f) = factors.get(u) {
                self.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
            }
            let h = self.e.reg(Class::B16);
            self.e.ins(format!("cvt.rn.bf16.f32 {h}, {x}"));
            self.e.ins(format!("@{live} st.shared.b16 [{addr}], {h}"));
            if let Some(lo) = lo {
                let r = self.residual(x);
                let l = self.e.reg(Class::B16);
                self.e.ins(format!("cvt.rn.bf16.f32 {l}, {r}"));
                self.e.ins(format!("@{live} st.shared.b16 [{addr}+{lo}], {l}"));
            }
        }
    }

    /// Stores bf16 pairs (`words`: 1, 2 or 4 of them, in one store) at the shared address
    /// `addr + offset` when `live`.
    fn store_bf16_words(&mut self, addr: Reg, offset: usize, words: &[Reg], live: Reg) {
        let list = words.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let (kind, value) = match words.len() {
            1 => ("b32", list),
            n => (if n == 4 { "v4.b32" } else { "v2.b32" }, format!("{{{list}}}")),
        };
        let at = if offset == 0 { addr.to_string() } else { format!("{addr}+{offset}") };
        self.e.ins(format!("@{live} st.shared.{kind} [{at}], {value}"));
    }

    /// `idx / d` and `idx % d` for a compile-time d.
    pub(super) fn divmod(&mut self, idx: Reg, d: usize) -> (Reg, Reg) {
        let q = self.e.reg(Class::B32);
        let r = self.e.reg(Class::B32);
        if d.is_power_of_two() {
            self.e.ins(format!("shr.u32 {q}, {idx}, {}", d.trailing_zeros()));
            self.e.ins(format!("and.b32 {r}, {idx}, {}", d - 1));
        } else {
            self.e.ins(format!("div.u32 {q}, {idx}, {d}"));
            self.e.ins(format!("rem.u32 {r}, {idx}, {d}"));
        }
        (q, r)
    }

    /// Loads `lanes` entries (1, or 2, 4 or 8 in one load; 8 f32 in two) of type `storage` at
    /// `base[(row_base + row) · width + col]` as f32 when `row < rows`, `col < cols` and
    /// `live` (else 0): `row_base` is a 64-bit entry index; with n > 1 lanes, `width`,
    /// `cols` and `col` are multiples of n.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load_or_zero(&mut self, base: Reg, row_base: Reg, row: Reg, rows: Reg, width: usize, col: Reg, cols: usize, live: Reg, lanes: usize, storage: Storage) -> Vec<Reg> {
        let raw = self.raw_regs(lanes, storage);
        self.load_raw(&raw, base, row_base, row, rows, width, col, cols, live, lanes, storage);
        self.decode(&raw, lanes, storage)
    }

    /// Registers for `lanes` entries of type `storage` as loaded: f32, or bf16 pairs in
    /// 32-bit words.
    fn raw_regs(&mut self, lanes: usize, storage: Storage) -> Vec<Reg> {
        match storage {
            Storage::F32 => (0..lanes).map(|_| self.e.reg(Class::F32)).collect(),
            Storage::Bf16 => (0..lanes.div_ceil(2)).map(|_| self.e.reg(Class::B32)).collect(),
        }
    }

    /// [`Writer::load_or_zero`]'s load into `raw` ([`Writer::raw_regs`]), without the
    /// conversion to f32 ([`Writer::decode`]), which would wait for it.
    #[allow(clippy::too_many_arguments)]
    fn load_raw(&mut self, raw: &[Reg], base: Reg, row_base: Reg, row: Reg, rows: Reg, width: usize, col: Reg, cols: usize, live: Reg, lanes: usize, storage: Storage) {
        let p = self.e.reg(Class::Pred);
        let q = self.e.reg(Class::Pred);
        let zero = match storage {
            Storage::F32 => "mov.f32 {}, 0f00000000",
            Storage::Bf16 => "mov.b32 {}, 0",
        };
        for x in raw {
            self.e.ins(zero.replace("{}", &x.to_string()));
        }
        self.e.ins(format!("setp.lt.and.u32 {p}, {row}, {rows}, {live}"));
        self.e.ins(format!("setp.lt.and.u32 {q}, {col}, {cols}, {p}"));
        let index = self.e.reg(Class::B64);
        let r64 = self.e.reg(Class::B64);
        let c64 = self.e.reg(Class::B64);
        self.e.ins(format!("cvt.u64.u32 {r64}, {row}"));
        self.e.ins(format!("cvt.u64.u32 {c64}, {col}"));
        self.e.ins(format!("add.u64 {index}, {row_base}, {r64}"));
        self.e.ins(format!("mad.lo.u64 {index}, {index}, {width}, {c64}"));
        match storage {
            Storage::F32 => {
                let a = self.f32_addr(base, index);
                match lanes {
                    8 => {
                        self.e.ins(format!("@{q} ld.global.nc.v4.f32 {{{}, {}, {}, {}}}, [{a}]", raw[0], raw[1], raw[2], raw[3]));
                        self.e.ins(format!("@{q} ld.global.nc.v4.f32 {{{}, {}, {}, {}}}, [{a}+16]", raw[4], raw[5], raw[6], raw[7]));
                    }
                    4 => self.e.ins(format!("@{q} ld.global.nc.v4.f32 {{{}, {}, {}, {}}}, [{a}]", raw[0], raw[1], raw[2], raw[3])),
                    2 => self.e.ins(format!("@{q} ld.global.nc.v2.f32 {{{}, {}}}, [{a}]", raw[0], raw[1])),
                    _ => self.e.ins(format!("@{q} ld.global.nc.f32 {}, [{a}]", raw[0])),
                }
            }
            Storage::Bf16 => {
                let a = self.e.reg(Class::B64);
                self.e.ins(format!("mad.lo.u64 {a}, {index}, 2, {base}"));
                match lanes {
                    8 => self.e.ins(format!("@{q} ld.global.nc.v4.b32 {{{}, {}, {}, {}}}, [{a}]", raw[0], raw[1], raw[2], raw[3])),
                    4 => self.e.ins(format!("@{q} ld.global.nc.v2.b32 {{{}, {}}}, [{a}]", raw[0], raw[1])),
                    2 => self.e.ins(format!("@{q} ld.global.nc.b32 {}, [{a}]", raw[0])),
                    _ => self.e.ins(format!("@{q} ld.global.nc.u16 {}, [{a}]", raw[0])),
                }
            }
        }
    }

    /// The f32 values of `lanes` entries loaded by [`Writer::load_raw`] (a bf16 is the
    /// upper half of its f32; the lower entry of a pair is the word's low half).
    fn decode(&mut self, raw: &[Reg], lanes: usize, storage: Storage) -> Vec<Reg> {
        match storage {
            Storage::F32 => raw.to_vec(),
            Storage::Bf16 => (0..lanes)
                .map(|l| {
                    let bits = self.e.reg(Class::B32);
                    if l % 2 == 0 {
                        self.e.ins(format!("shl.b32 {bits}, {}, 16", raw[l / 2]));
                    } else {
                        self.e.ins(format!("and.b32 {bits}, {}, 0xFFFF0000", raw[l / 2]));
                    }
                    let x = self.e.reg(Class::F32);
                    self.e.ins(format!("mov.b32 {x}, {bits}"));
                    x
                })
                .collect(),
        }
    }

    /// Λ of the current chunk into `lam` (f32 × CHUNK): [`Writer::decay_loads`] issued
    /// at once, then [`Writer::scan_decays`].
    pub(super) fn cumulative_decay(&mut self, g: &Geometry, gate: Reg, row_base: Reg, n: Reg, lam: Reg) {
        let loads = self.decay_loads();
        self.issue_decays(g, &loads, gate, row_base, n);
        self.scan_decays(g, &loads, lam);
    }

    /// Each lane's steps of a chunk's decays, one in each 32 (for the first warp, which
    /// scans them), and the registers they arrive in.
    fn decay_loads(&mut self) -> Vec<(Reg, Reg)> {
        (0..CHUNK / 32)
            .map(|seg| {
                let t = self.e.reg(Class::B32);
                self.e.ins(format!("add.u32 {t}, {}, {}", self.tid, 32 * seg));
                (t, self.e.reg(Class::F32))
            })
            .collect()
    }

    /// Loads the chunk's decays into [`Writer::decay_loads`]' registers (no decay past
    /// the sequence's end: log 0, or the value 1).
    fn issue_decays(&mut self, g: &Geometry, loads: &[(Reg, Reg)], gate: Reg, row_base: Reg, n: Reg) {
        let none = if g.shape.decay.as_value() { "0f3F800000" } else { "0f00000000" };
        for &(t, x) in loads {
            let live = self.e.reg(Class::Pred);
            self.e.ins(format!("setp.lt.u32 {live}, {t}, {n}"));
            let t64 = self.e.reg(Class::B64);
            self.e.ins(format!("cvt.u64.u32 {t64}, {t}"));
            self.e.ins(format!("add.u64 {t64}, {t64}, {row_base}"));
            let a = self.f32_addr(gate, t64);
            self.e.ins(format!("mov.f32 {x}, {none}"));
            self.e.ins(format!("@{live} ld.global.nc.f32 {x}, [{a}]"));
        }
    }

    /// Λ into `lam` from the loaded decays, by the block's first warp: a shuffle scan sums
    /// the prefixes (5 steps per 32: a loop over the prefix was 64 dependent shared loads
    /// for the last step), and the first 32 steps' total is carried into the next. Ends
    /// with a barrier.
    fn scan_decays(&mut self, g: &Geometry, loads: &[(Reg, Reg)], lam: Reg) {
        let skip = self.e.label("decay_done");
        let others = self.e.reg(Class::Pred);
        self.e.ins(format!("setp.ne.u32 {others}, {}, 0", self.warp));
        self.e.ins(format!("@{others} bra.uni {skip}"));
        let carry = self.e.reg(Class::F32);
        self.e.ins(format!("mov.f32 {carry}, 0f00000000"));
        for &(t, loaded) in loads {
            let x = self.e.reg(Class::F32);
            if g.shape.decay.as_value() {
                self.e.comment("the decay's natural log: lg2 * ln 2");
                self.e.ins(format!("lg2.approx.ftz.f32 {x}, {loaded}"));
                self.e.ins(format!("mul.rn.f32 {x}, {x}, {}", f32_imm(LN2)));
            } else {
                self.e.ins(format!("mov.f32 {x}, {loaded}"));
            }
            for d in [1, 2, 4, 8, 16] {
                let y = self.e.reg(Class::F32);
                let from = self.e.reg(Class::Pred);
                self.e.ins(format!("shfl.sync.up.b32 {y}|{from}, {x}, {d}, 0, 0xffffffff"));
                self.e.ins(format!("@{from} add.rn.f32 {x}, {x}, {y}"));
            }
            self.e.ins(format!("add.rn.f32 {x}, {x}, {carry}"));
            let at = self.e.reg(Class::B32);
            self.e.ins(format!("mad.lo.u32 {at}, {t}, 4, {lam}"));
            self.e.ins(format!("st.shared.f32 [{at}], {x}"));
            self.e.ins(format!("shfl.sync.idx.b32 {carry}, {x}, 31, 31, 0xffffffff"));
        }
        self.e.place(&skip);
        self.e.ins("bar.sync 0");
    }

    /// ⌈steps / CHUNK⌉, in 64 bits.
    pub(super) fn chunk_count(&mut self, steps: Reg) -> Reg {
        let nchunks = self.e.reg(Class::B64);
        self.e.ins(format!("add.u64 {nchunks}, {steps}, {}", CHUNK - 1));
        self.e.ins(format!("div.u64 {nchunks}, {nchunks}, {CHUNK}"));
        nchunks
    }

    /// The row index (64 bits) of `states[seq, chunk]`'s first key: the state buffer
    /// holds `nchunks + 1` matrices of `keys` rows per sequence.
    pub(super) fn state_matrix(&mut self, g: &Geometry, seq: Reg, nchunks: Reg, chunk: Reg) -> Reg {
        let matrix = self.e.reg(Class::B64);
        self.e.ins(format!("mad.lo.u64 {matrix}, {seq}, {nchunks}, {seq}"));
        self.e.ins(format!("add.u64 {matrix}, {matrix}, {chunk}"));
        self.e.ins(format!("mul.lo.u64 {matrix}, {matrix}, {}", g.keys));
        matrix
    }

    /// Λ at step `t` (a register index) from `lam`.
    pub(super) fn lam_at(&mut self, lam: Reg, t: Reg) -> Reg {
        self.f32_at(lam, t)
    }

    /// Entry `i` (a register index) of a shared f32 array.
    pub(super) fn f32_at(&mut self, array: Reg, i: Reg) -> Reg {
        let a = self.e.reg(Class::B32);
        let x = self.e.reg(Class::F32);
        self.e.ins(format!("mad.lo.u32 {a}, {i}, 4, {array}"));
        self.e.ins(format!("ld.shared.f32 {x}, [{a}]"));
        x
    }

    /// Asks ptxas for `blocks` resident blocks of (at most) `threads` threads per SM: it
    /// then keeps a thread's registers within 65536 / (threads · blocks), spilling if it
    /// must, and the kernel cannot be launched with more threads.
    pub(super) fn occupancy(&mut self, threads: u32, blocks: u32) {
        self.directives = format!(".maxntid {threads}, 1, 1\n.minnctapersm {blocks}\n");
    }

    /// [`Writer::finish`] of a kernel whose parameters are [`Writer::params_and_flags`]'s
    /// `names` and then `flags`.
    pub(super) fn finish_flagged(self, name: &str, names: &[&str]) -> String {
        self.finish(name, &[names, &["flags"]].concat())
    }

    pub(super) fn finish(self, name: &str, params: &[&str]) -> String {
        let mut text = format!(".visible .entry {name}(\n");
        for (k, p) in params.iter().enumerate() {
            let sep = if k + 1 < params.len() { "," } else { "" };
            let ty = if *p == "flags" { ".u32" } else { ".u64" };
            let _ = writeln!(text, "\t.param {ty} {p}{sep}");
        }
        text.push_str(")\n");
        text.push_str(&self.directives);
        text.push_str("{\n");
        text.push_str(&self.shared);
        text.push_str(&self.e.finish());
        text.push_str("\tret;\n}\n");
        text
    }
}

/// A factor computed from a step (its register).
pub(super) type StepFactor<'a> = &'a dyn Fn(&mut Writer, Reg) -> Reg;

/// How staging scales the values it stores.
#[derive(Clone, Copy)]
pub(super) enum Scale<'a> {
    None,
    /// By a factor computed from the step.
    Step(StepFactor<'a>),
    /// Entry (t, i) by e^(R[i] − Λ_t[i]), Λ read from `lam` (`[steps, keys]` like the
    /// staged array) and R a shared f32 row, indexed by key, whose address `reference(t)`
    /// gives (16-byte aligned).
    PerKey { lam: Reg, reference: &'a dyn Fn(&mut Writer, Reg) -> Reg },
}

/// One thread's share of staging a tile chunk after chunk as rows, `[CHUNK][tile + 8]`
/// bf16 (its lo plane right after it when split; the column contiguous, 16-byte aligned
/// rows, conflict-free for `ldmatrix`): each load's position (the same in every chunk)
/// and the registers its values (and, for a per-key scale, their Λ) arrive in, so that
/// the next chunk's loads can be in flight while the current chunk is multiplied.
/// Consecutive threads take consecutive groups of `lanes` columns of a row, 8 where the
/// array's width allows (4, 2, 1 otherwise): coalesced 16-byte global loads (two for
/// f32) and one shared store a group.
struct Prefetch {
    lanes: usize,
    storage: Storage,
    width: usize,
    /// The shared array, its row stride and its lo plane's byte offset (when split).
    dst: Reg,
    stride: usize,
    lo: Option<usize>,
    slots: Vec<Slot>,
}

/// One load: its step, its first column in the tile (`j`) and in the array (`col`); the
/// shared addresses are computed when committing (registers held across the products
/// are the loaded values alone, as far as possible).
struct Slot {
    live: Reg,
    step: Reg,
    j: Reg,
    col: Reg,
    raw: Vec<Reg>,
    lams: Vec<Reg>,
}

impl Prefetch {
    /// The positions of the loads staging `CHUNK` steps of a `[steps, width]` array of
    /// type `storage`, columns `col0`.. of `tile` (a multiple of 8), into `dst`;
    /// `per_key`: registers for the values' Λ too.
    #[allow(clippy::too_many_arguments)]
    fn new(w: &mut Writer, g: &Geometry, threads: usize, (width, col0, tile): (usize, Reg, usize), dst: Reg, storage: Storage, per_key: bool) -> Prefetch {
        let lanes = [8, 4, 2].into_iter().find(|&n| width.is_multiple_of(n)).unwrap_or(1);
        let loads = CHUNK * tile / lanes;
        let slots = (0..loads.div_ceil(threads))
            .map(|u| {
                let (live, entry) = w.load_slot(w.tid, u * threads, loads, lanes);
                let (step, j) = w.divmod(entry, tile);
                let col = w.e.reg(Class::B32);
                w.e.ins(format!("add.u32 {col}, {col0}, {j}"));
                let raw = w.raw_regs(lanes, storage);
                let lams = if per_key { w.raw_regs(lanes, Storage::F32) } else { Vec::new() };
                Slot { live, step, j, col, raw, lams }
            })
            .collect();
        let (stride, bytes) = (tile + 8, CHUNK * (tile + 8) * 2);
        Prefetch { lanes, storage, width, dst, stride, lo: g.split().then_some(bytes), slots }
    }

    /// The loads in groups that fill at most [`STAGE_REGISTERS`] registers a thread
    /// (values and Λ), to be issued and committed one group after another: all of a
    /// 128-key chunk at once would hold up to 128 in the outputs kernel (f32, per key).
    fn batches(self) -> Vec<Prefetch> {
        let per_load = self.slots.first().map_or(1, |s| s.raw.len() + s.lams.len());
        let size = (STAGE_REGISTERS / per_load).max(1);
        let Prefetch { lanes, storage, width, dst, stride, lo, mut slots } = self;
        let mut batches = Vec::new();
        while !slots.is_empty() {
            let rest = slots.split_off(size.min(slots.len()));
            batches.push(Prefetch { lanes, storage, width, dst, stride, lo, slots });
            slots = rest;
        }
        batches
    }

    /// Issues the loads of the chunk at `row_base` (`n` steps) from `src`, and their Λ
    /// from `lam` for a per-key scale.
    fn issue(&self, w: &mut Writer, src: Reg, lam: Option<Reg>, row_base: Reg, n: Reg) {
        for s in &self.slots {
            w.load_raw(&s.raw, src, row_base, s.step, n, self.width, s.col, self.width, s.live, self.lanes, self.storage);
            if let Some(lam) = lam {
                w.load_raw(&s.lams, lam, row_base, s.step, n, self.width, s.col, self.width, s.live, self.lanes, Storage::F32);
            }
        }
    }

    /// Stores the loaded values into shared memory as bf16, times `scale`: each load's
    /// entries as bf16 pairs (packed by `cvt.rn.bf16x2.f32` after scaling; bf16 inputs
    /// that are not scaled as they came, with a zero lo plane) in one shared store per
    /// plane.
    fn commit(&self, w: &mut Writer, scale: Scale<'_>) {
        for s in &self.slots {
            self.commit_load(w, s, scale);
        }
    }

    /// [`Prefetch::commit`] of one load.
    fn commit_load(&self, w: &mut Writer, s: &Slot, scale: Scale<'_>) {
        let addr = w.bf16_addr(self.dst, s.step, self.stride, s.j);
        if self.lanes == 1 {
            let xs = w.decode(&s.raw, 1, self.storage);
            let factors = w.factors(scale, s.step, s.col, &s.lams, 1);
            w.store_staged(xs, &[addr], s.live, &factors, self.lo);
            return;
        }
        let planes: Vec<Vec<Reg>> = if self.storage == Storage::Bf16 && matches!(scale, Scale::None) {
            let zero = w.e.reg(Class::B32);
            w.e.ins(format!("mov.b32 {zero}, 0"));
            std::iter::once(s.raw.clone()).chain(self.lo.map(|_| vec![zero; s.raw.len()])).collect()
        } else {
            let xs = w.decode(&s.raw, self.lanes, self.storage);
            let factors = w.factors(scale, s.step, s.col, &s.lams, self.lanes);
            for (x, f) in xs.iter().zip(&factors) {
                w.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
            }
            let words: Vec<Vec<Reg>> = xs.chunks(2).map(|p| w.pack_planes(p[0], p[1], self.lo.is_some())).collect();
            (0..words[0].len()).map(|plane| words.iter().map(|x| x[plane]).collect()).collect()
        };
        for (plane, words) in planes.iter().enumerate() {
            w.store_bf16_words(addr, plane * self.lo.unwrap_or(0), words, s.live);
        }
    }
}

/// Stages `CHUNK` steps of columns `col0`.. (`tile` of them, a multiple of 8) of a
/// `[steps, width]` array of the kernels' storage as rows: a bf16 array `[CHUNK][tile +
/// 8]` (the column contiguous, rows 16-byte aligned; its lo plane right after it when
/// split), entry (t, col0 + j) at row t, column j, times `scale`; zeros past the
/// sequence's end and the array's width. Coalesced 16-byte loads where `width` is a
/// multiple of 8, in batches of at most [`STAGE_REGISTERS`] registers
/// a thread, each batch's loads issued before its first store. Read the tile by
/// `ldmatrix` (`.trans` where its column is the mma's m or n index).
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_row_tile(w: &mut Writer, g: &Geometry, threads: usize, src: Reg, row_base: Reg, n: Reg, width: usize, col0: Reg, tile: usize, dst: Reg, scale: Scale<'_>) {
    let lam = scale_lam(scale);
    let loads = Prefetch::new(w, g, threads, (width, col0, tile), dst, g.storage, lam.is_some());
    for batch in loads.batches() {
        batch.issue(w, src, lam, row_base, n);
        batch.commit(w, scale);
    }
}

/// Where a per-key scale's Λ comes from.
fn scale_lam(scale: Scale<'_>) -> Option<Reg> {
    match scale {
        Scale::PerKey { lam, .. } => Some(lam),
        _ => None,
    }
}

/// Copies the `[kp][vt]` tile (columns `col0`..) of a bf16 `[keys][values]` matrix, whose
/// rows start at row `rows` of `src` (64 bits, in rows of `values` entries) and of which
/// `keys` rows exist (zeros below, and right of the values), into a shared bf16 array
/// of row stride `stride` as it is: up to 8 entries (16 bytes) a load, every load issued
/// before the first store.
fn copy_bf16_rows(w: &mut Writer, g: &Geometry, threads: usize, (src, rows, keys): (Reg, Reg, Reg), col0: Reg, (dst, stride): (Reg, usize)) {
    let lanes = [8, 4, 2].into_iter().find(|&n| g.values.is_multiple_of(n)).unwrap_or(1);
    let loads = g.kp * g.vt / lanes;
    let copies: Vec<(Reg, Reg, Vec<Reg>)> = (0..loads.div_ceil(threads))
        .map(|u| {
            let (live, entry) = w.load_slot(w.tid, u * threads, loads, lanes);
            let (i, j) = w.divmod(entry, g.vt);
            let col = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {col}, {col0}, {j}"));
            let raw = w.raw_regs(lanes, Storage::Bf16);
            w.load_raw(&raw, src, rows, i, keys, g.values, col, g.values, live, lanes, Storage::Bf16);
            (live, w.bf16_addr(dst, i, stride, j), raw)
        })
        .collect();
    for (live, addr, raw) in copies {
        if lanes == 1 {
            w.e.ins(format!("@{live} st.shared.b16 [{addr}], {}", raw[0]));
        } else {
            w.store_bf16_words(addr, 0, &raw, live);
        }
    }
}

/// A `cp.async` copy of `rows` rows of `row_bytes` (a multiple of 16) from a global
/// matrix (row stride `src_stride` bytes) into shared memory (row stride `dst_stride`),
/// 16 bytes a piece, whose per-thread offsets are set up once (before a chunk loop):
/// thread t copies piece t mod p of rows t / p + i · (threads / p) (p the pieces of a
/// row), so that every further piece of a thread is an immediate offset and a copy is
/// its base address and one instruction a piece. The copies hold no registers while in
/// flight: a block issues all of them, then waits once (`cp.async.wait_group`).
pub(super) struct AsyncCopy {
    /// The thread's first piece's byte offset in the global matrix (64 bits).
    src: Reg,
    /// The thread's first piece's shared address.
    dst: Reg,
    /// The thread's first row and its piece of a row.
    row: Reg,
    piece: Reg,
    per_row: usize,
    /// Rows a round of the threads covers.
    step: usize,
    src_stride: usize,
    dst_stride: usize,
    /// Per round: whether the thread's piece exists, where not every thread has one.
    live: Vec<Option<Reg>>,
}

impl AsyncCopy {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(w: &mut Writer, threads: usize, src_stride: usize, dst: Reg, dst_stride: usize, rows: usize, row_bytes: usize) -> AsyncCopy {
        let per_row = row_bytes / 16;
        // Threads past the last whole row of pieces a round stay idle.
        let step = threads / per_row;
        let busy = step * per_row;
        let (row, piece) = w.divmod(w.tid, per_row);
        let src32 = w.e.reg(Class::B32);
        w.e.ins(format!("mul.lo.u32 {src32}, {row}, {src_stride}"));
        w.e.ins(format!("mad.lo.u32 {src32}, {piece}, 16, {src32}"));
        let src = w.e.reg(Class::B64);
        w.e.ins(format!("cvt.u64.u32 {src}, {src32}"));
        let first = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {first}, {row}, {dst_stride}, {dst}"));
        w.e.ins(format!("mad.lo.u32 {first}, {piece}, 16, {first}"));
        let live = (0..rows.div_ceil(step))
            .map(|i| {
                let whole = (i + 1) * step <= rows && busy == threads;
                (!whole).then(|| {
                    let p = w.e.reg(Class::Pred);
                    w.e.ins(format!("setp.lt.u32 {p}, {row}, {}", rows - i * step));
                    if busy < threads {
                        w.e.ins(format!("setp.lt.and.u32 {p}, {}, {busy}, {p}", w.tid));
                    }
                    p
                })
            })
            .collect();
        AsyncCopy { src, dst: first, row, piece, per_row, step, src_stride, dst_stride, live }
    }

    /// Issues the copy of the global matrix at `base` (not committed).
    pub(super) fn issue(&self, w: &mut Writer, base: Reg) {
        let src = w.e.reg(Class::B64);
        w.e.ins(format!("add.u64 {src}, {base}, {}", self.src));
        for (i, live) in self.live.iter().enumerate() {
            let guard = live.map_or(String::new(), |p| format!("@{p} "));
            let (s, d) = (i * self.step * self.src_stride, i * self.step * self.dst_stride);
            w.e.ins(format!("{guard}cp.async.cg.shared.global [{}+{d}], [{src}+{s}], 16", self.dst));
        }
    }

    /// Issues the copy (not committed) of a global matrix at `base` of which the first
    /// `rows` rows (a register) exist, and of each row the first `pieces`, into the
    /// shared array `offset` bytes past the one set up: the pieces that do not exist
    /// (past a sequence's end, or the padding of a tile) are zeros, by a source size of
    /// 0, which reads nothing.
    pub(super) fn issue_filled(&self, w: &mut Writer, base: Reg, offset: usize, rows: Reg, pieces: usize) {
        let src = w.e.reg(Class::B64);
        w.e.ins(format!("add.u64 {src}, {base}, {}", self.src));
        let in_row = (pieces < self.per_row).then(|| {
            let p = w.e.reg(Class::Pred);
            w.e.ins(format!("setp.lt.u32 {p}, {}, {pieces}", self.piece));
            p
        });
        // Rows left from the thread's first (signed: none when negative); round i's row
        // exists while more than i · step are left.
        let left = w.e.reg(Class::B32);
        w.e.ins(format!("sub.s32 {left}, {rows}, {}", self.row));
        for (i, live) in self.live.iter().enumerate() {
            let exists = w.e.reg(Class::Pred);
            let size = w.e.reg(Class::B32);
            w.e.ins(format!("setp.gt.s32 {exists}, {left}, {}", i * self.step));
            if let Some(p) = in_row {
                w.e.ins(format!("and.pred {exists}, {exists}, {p}"));
            }
            w.e.ins(format!("selp.u32 {size}, 16, 0, {exists}"));
            let guard = live.map_or(String::new(), |p| format!("@{p} "));
            let (s, d) = (i * self.step * self.src_stride, offset + i * self.step * self.dst_stride);
            w.e.ins(format!("{guard}cp.async.cg.shared.global [{}+{d}], [{src}+{s}], 16, {size}", self.dst));
        }
    }
}

/// Block ids, the chunk's first step and its number of steps `n`, and the 64-bit entry
/// index of the sequence's first step (`seq · steps`) plus the chunk's start.
pub(super) struct ChunkPos {
    /// seq · steps + chunk · CHUNK.
    pub(super) row_base: Reg,
    pub(super) n: Reg,
}

pub(super) fn chunk_pos(w: &mut Writer, seq: Reg, steps: Reg, chunk: Reg) -> ChunkPos {
    let row_base = w.e.reg(Class::B64);
    let start = w.e.reg(Class::B64);
    let s64 = w.e.reg(Class::B64);
    let c64 = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
    w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
    w.e.ins(format!("mul.lo.u64 {start}, {c64}, {CHUNK}"));
    w.e.ins(format!("mad.lo.u64 {row_base}, {s64}, {steps}, {start}"));
    // n = min(CHUNK, steps − start), 0 past the end (the state kernel's prefetch), in 32 bits.
    let left = w.e.reg(Class::B64);
    w.e.ins(format!("max.u64 {left}, {steps}, {start}"));
    w.e.ins(format!("sub.u64 {left}, {left}, {start}"));
    w.e.ins(format!("min.u64 {left}, {left}, {CHUNK}"));
    let n = w.e.reg(Class::B32);
    w.e.ins(format!("cvt.u32.u64 {n}, {left}"));
    ChunkPos { row_base, n }
}

/// A state kernel's start: the key count as a register, `seq` in 64 bits, and the
/// accumulators of the warp's state rows (`row0`, columns from `col0`): zeros, or
/// sequence `seq`'s initial state from `state_in` when `flags` has [`HAS_STATE`].
#[allow(clippy::too_many_arguments)]
pub(super) fn initial_state(w: &mut Writer, g: &Geometry, flags: Reg, state_in: Reg, seq: Reg, row0: Reg, col0: Reg) -> (Reg, Reg, Vec<[Reg; 4]>) {
    let keys = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {keys}, {}", g.keys));
    let s64 = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
    let acc = w.zeros(g.vt / 8);
    w.e.comment("an initial state (HAS_STATE): state_in[seq] is S entering chunk 0");
    let no_state = w.e.label("no_state");
    let has = w.e.reg(Class::B32);
    let p = w.e.reg(Class::Pred);
    w.e.ins(format!("and.b32 {has}, {flags}, {HAS_STATE}"));
    w.e.ins(format!("setp.eq.u32 {p}, {has}, 0"));
    w.e.ins(format!("@{p} bra {no_state}"));
    let first = w.e.reg(Class::B64);
    w.e.ins(format!("mul.lo.u64 {first}, {s64}, {}", g.keys));
    tile_io(w, g, &acc, state_in, first, row0, keys, col0, TileIo::LoadF32);
    w.e.place(&no_state);
    (keys, s64, acc)
}

/// The head of a state kernel's loop over its chunks (`chunk`, 0 ..= nchunks): S entering
/// the chunk (`acc`, the warp's rows `row0` of `keys`, columns from `col0`) stored as
/// `states[seq, chunk]` (`s64` the sequence), then out of the loop after the final state.
/// A chunk's state is stored for the outputs kernel, which multiplies it in bf16: rounded
/// to bf16 (`[keys][values]`) in the first half of its f32 slot (half the bytes written
/// and read), and when split what the rounding left, as bf16, in the second half (the
/// lo plane); the final state stays f32. `stage`: the block's [`state_stage_bytes`] of
/// shared memory, where it has any, through which each warp copies its bf16 rows
/// ([`StagedRows`]); without it, each lane stores its own pairs. Returns the loop's top
/// and end labels.
pub(super) fn state_loop_head(
    w: &mut Writer,
    g: &Geometry,
    acc: &[[Reg; 4]],
    (states, s64, nchunks): (Reg, Reg, Reg),
    chunk: Reg,
    (row0, keys, col0): (Reg, Reg, Reg),
    stage: Option<Reg>,
) -> (String, String) {
    assert!(stage.is_none() || state_stage_stride(g).is_some(), "bf16 state rows staged where they cannot be copied 16 bytes at a time");
    let staged = stage.map(|stage| StagedRows::new(w, g, stage, states, (row0, keys, col0)));
    let top = w.e.label("chunk");
    let done = w.e.label("chunks_done");
    w.e.place(&top);
    state_store(w, g, acc, (states, s64, nchunks), chunk, (row0, keys, col0), staged.as_ref(), &done);
    (top, done)
}

/// [`state_loop_head`] without its label: stores S entering `chunk`, or the final state
/// and then out to `done`.
#[allow(clippy::too_many_arguments)]
fn state_store(
    w: &mut Writer,
    g: &Geometry,
    acc: &[[Reg; 4]],
    (states, s64, nchunks): (Reg, Reg, Reg),
    chunk: Reg,
    (row0, keys, col0): (Reg, Reg, Reg),
    staged: Option<&StagedRows>,
    done: &str,
) {
    let c64 = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
    let matrix = w.state_matrix(g, s64, nchunks, c64);
    let end = w.e.reg(Class::Pred);
    let entering = w.e.label("entering");
    w.e.ins(format!("setp.ge.u64 {end}, {c64}, {nchunks}"));
    w.e.ins(format!("@!{end} bra.uni {entering}"));
    w.e.comment("states[seq, nchunks] = the final state, f32");
    tile_io(w, g, acc, states, matrix, row0, keys, col0, TileIo::Store(Storage::F32));
    w.e.ins(format!("bra.uni {done}"));
    w.e.place(&entering);
    w.e.comment("states[seq, chunk] = S entering the chunk, bf16 in the slot's first half");
    let residuals = |w: &mut Writer| -> Vec<[Reg; 4]> { acc.iter().map(|t| t.map(|r| w.residual(r))).collect() };
    match staged {
        Some(staged) => {
            // The slot's bf16 rows start 2 · matrix rows of `values` in: 4 · values bytes a matrix row.
            let at = w.e.reg(Class::B64);
            w.e.ins(format!("mad.lo.u64 {at}, {matrix}, {}, {}", 4 * g.values, staged.lane_base));
            staged.copy(w, acc, at);
            if g.split() {
                w.e.comment("and S - bf16(S), bf16 in the slot's second half");
                let residuals = residuals(w);
                let lo_at = w.e.reg(Class::B64);
                w.e.ins(format!("add.u64 {lo_at}, {at}, {}", 2 * g.keys * g.values));
                staged.copy(w, &residuals, lo_at);
            }
        }
        None => {
            let bf16_rows = w.e.reg(Class::B64);
            w.e.ins(format!("shl.b64 {bf16_rows}, {matrix}, 1"));
            tile_io(w, g, acc, states, bf16_rows, row0, keys, col0, TileIo::Store(Storage::Bf16));
            if g.split() {
                w.e.comment("and S - bf16(S), bf16 in the slot's second half");
                let residuals = residuals(w);
                let lo_rows = w.e.reg(Class::B64);
                w.e.ins(format!("add.u64 {lo_rows}, {bf16_rows}, {}", g.keys));
                tile_io(w, g, &residuals, states, lo_rows, row0, keys, col0, TileIo::Store(Storage::Bf16));
            }
        }
    }
}

/// Stores accumulator tiles row-major into a shared bf16 array (row stride `stride`
/// entries), a bf16 pair per instruction: `addr` at the first tile's row `row0 + gq`,
/// column `2 · cq` (entries (gq, 2 cq), (gq, 2 cq + 1) of tile nt are 8 · nt columns on,
/// those of row gq + 8 eight rows down); what the rounding left into the lo plane `lo`
/// bytes further when given.
pub(super) fn store_rows(w: &mut Writer, acc: &[[Reg; 4]], addr: Reg, stride: usize, lo: Option<usize>) {
    for (nt, tile) in acc.iter().enumerate() {
        for half in 0..2 {
            let planes = w.pack_planes(tile[2 * half], tile[2 * half + 1], lo.is_some());
            for (pair, plane) in planes.iter().zip(std::iter::once(0).chain(lo)) {
                w.e.ins(format!("st.shared.b32 [{addr}+{}], {pair}", plane + (half * 8 * stride + 8 * nt) * 2));
            }
        }
    }
}

/// The row stride (entries) of a warp's shared staging of its 16 bf16 chunk-state rows
/// (`g.vt` values): 16-byte aligned rows an odd number of 16 bytes apart, so that a
/// quarter warp's fragment stores (8 rows, 4 words each) and its 16-byte row reads (8
/// rows, the same 16 bytes of each) fall in distinct banks. None where `values` is not
/// a multiple of 8: a row's 16 bytes in global memory would not be aligned.
fn state_stage_stride(g: &Geometry) -> Option<usize> {
    g.values.is_multiple_of(8).then(|| g.vt + if g.vt.is_multiple_of(16) { 8 } else { 16 })
}

/// Shared bytes of a state kernel's chunk-state staging for `warps` warps of `g.vt`
/// values each ([`state_loop_head`]'s `stage`): 0 where it stages none.
pub(super) fn state_stage_bytes(g: &Geometry, warps: usize) -> usize {
    state_stage_stride(g).map_or(0, |stride| warps * 16 * stride * 2)
}

/// A warp's copy of its bf16 state rows (16 keys from `row0`, `g.vt` values from `col0`)
/// to a chunk's slot through its shared staging rows: the accumulator fragments stored
/// as bf16 pairs into the rows, then each lane copies 16 bytes at a time (row lane % 16,
/// 16-byte columns lane / 16, + 2, ..) with one shared and one global vector access, so
/// the warp writes whole 32-byte sectors. Every lane's addresses and bounds are fixed
/// once, before the chunk loop; a chunk only adds its slot's offset.
struct StagedRows {
    stride: usize,
    /// The lane's fragment row gq, column 2 cq in the staging rows.
    fragments: Reg,
    /// The lane's first 16 bytes to copy in the staging rows.
    read: Reg,
    /// `states` plus the byte offset of the lane's first 16 bytes in a chunk's bf16 rows.
    lane_base: Reg,
    /// Per copy (32 bytes further each): whether its row and columns are in the field.
    live: Vec<Reg>,
}

impl StagedRows {
    fn new(w: &mut Writer, g: &Geometry, stage: Reg, states: Reg, (row0, keys, col0): (Reg, Reg, Reg)) -> StagedRows {
        let stride = state_stage_stride(g).expect("values a multiple of 8");
        w.e.comment("this warp's staging rows of its bf16 state, and the lane's part of copying them");
        let rows = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {rows}, {}, {}, {stage}", w.warp, 16 * stride * 2));
        let pair_col = w.e.reg(Class::B32);
        w.e.ins(format!("shl.b32 {pair_col}, {}, 1", w.cq));
        let fragments = w.bf16_addr(rows, w.gq, stride, pair_col);
        let (lane, row, part) = (w.e.reg(Class::B32), w.e.reg(Class::B32), w.e.reg(Class::B32));
        w.e.ins(format!("and.b32 {lane}, {}, 31", w.tid));
        w.e.ins(format!("and.b32 {row}, {lane}, 15"));
        w.e.ins(format!("shr.u32 {part}, {lane}, 4"));
        let col = w.e.reg(Class::B32);
        w.e.ins(format!("shl.b32 {col}, {part}, 3"));
        let read = w.bf16_addr(rows, row, stride, col);
        let (key, value) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
        w.e.ins(format!("add.u32 {key}, {row0}, {row}"));
        w.e.ins(format!("add.u32 {value}, {col0}, {col}"));
        let (entry, col64, lane_base) = (w.e.reg(Class::B64), w.e.reg(Class::B64), w.e.reg(Class::B64));
        w.e.ins(format!("mul.wide.u32 {entry}, {key}, {}", g.values));
        w.e.ins(format!("cvt.u64.u32 {col64}, {value}"));
        w.e.ins(format!("add.u64 {entry}, {entry}, {col64}"));
        w.e.ins(format!("mad.lo.u64 {lane_base}, {entry}, 2, {states}"));
        let in_rows = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.lt.u32 {in_rows}, {key}, {keys}"));
        let live = (0..g.vt.div_ceil(16))
            .map(|i| {
                // 16-byte column part + 2 i: within the warp's g.vt values and the field's.
                let (p, q) = (w.e.reg(Class::Pred), w.e.reg(Class::Pred));
                w.e.ins(format!("setp.lt.u32 {p}, {part}, {}", g.vt / 8 - 2 * i));
                w.e.ins(format!("and.pred {p}, {p}, {in_rows}"));
                let c = w.e.reg(Class::B32);
                w.e.ins(format!("add.u32 {c}, {value}, {}", 16 * i));
                w.e.ins(format!("setp.lt.and.u32 {q}, {c}, {}, {p}", g.values));
                q
            })
            .collect();
        StagedRows { stride, fragments, read, lane_base, live }
    }

    /// Copies the bf16 rounding of `acc` to the rows whose lane's first 16 bytes are at
    /// `at` (global).
    fn copy(&self, w: &mut Writer, acc: &[[Reg; 4]], at: Reg) {
        // The first barrier keeps the previous copy's reads before these stores.
        w.e.ins("bar.warp.sync 0xffffffff");
        store_rows(w, acc, self.fragments, self.stride, None);
        w.e.ins("bar.warp.sync 0xffffffff");
        let words: Vec<[Reg; 4]> = (0..self.live.len())
            .map(|i| {
                let x = [(); 4].map(|_| w.e.reg(Class::B32));
                w.e.ins(format!("ld.shared.v4.b32 {{{}, {}, {}, {}}}, [{}+{}]", x[0], x[1], x[2], x[3], self.read, 32 * i));
                x
            })
            .collect();
        for (i, (x, live)) in words.iter().zip(&self.live).enumerate() {
            w.e.ins(format!("@{live} st.global.v4.b32 [{at}+{}], {{{}, {}, {}, {}}}", 32 * i, x[0], x[1], x[2], x[3]));
        }
    }
}

/// What [`tile_io`] does with a matrix in global memory.
#[derive(Clone, Copy)]
pub(super) enum TileIo {
    LoadF32,
    Store(Storage),
}

/// Loads or stores the accumulator tiles of a warp's 16 rows (`row0 = 16 · warp`) of a
/// `[rows, values]` matrix at `base` (64-bit row index `matrix` of its first row),
/// columns `col0 + 8 · tile + 2 · cq (+1)`, rows `row0 + gq (+8)`, within `rows` ×
/// `values`. bf16 is stored a pair of columns at a time where `values` is even.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_io(w: &mut Writer, g: &Geometry, acc: &[[Reg; 4]], base: Reg, matrix: Reg, row0: Reg, rows: Reg, col0: Reg, io: TileIo) {
    let paired = matches!(io, TileIo::Store(Storage::Bf16)) && g.values.is_multiple_of(2);
    for (nt, a) in acc.iter().enumerate() {
        for half in 0..2 {
            for k in 0..if paired { 1 } else { 2 } {
                let row = w.e.reg(Class::B32);
                let col = w.e.reg(Class::B32);
                w.e.ins(format!("add.u32 {row}, {row0}, {}", w.gq));
                if half == 1 {
                    w.e.ins(format!("add.u32 {row}, {row}, 8"));
                }
                w.e.ins(format!("mad.lo.u32 {col}, {}, 2, {col0}", w.cq));
                w.e.ins(format!("add.u32 {col}, {col}, {}", 8 * nt + k));
                let p = w.e.reg(Class::Pred);
                let q = w.e.reg(Class::Pred);
                w.e.ins(format!("setp.lt.u32 {p}, {row}, {rows}"));
                w.e.ins(format!("setp.lt.and.u32 {q}, {col}, {}, {p}", g.values));
                let r64 = w.e.reg(Class::B64);
                let c64 = w.e.reg(Class::B64);
                let index = w.e.reg(Class::B64);
                w.e.ins(format!("cvt.u64.u32 {r64}, {row}"));
                w.e.ins(format!("cvt.u64.u32 {c64}, {col}"));
                w.e.ins(format!("add.u64 {index}, {matrix}, {r64}"));
                w.e.ins(format!("mad.lo.u64 {index}, {index}, {}, {c64}", g.values));
                let reg = a[2 * half + k];
                match io {
                    TileIo::Store(Storage::Bf16) if paired => {
                        let addr = w.e.reg(Class::B64);
                        w.e.ins(format!("mad.lo.u64 {addr}, {index}, 2, {base}"));
                        let h = w.pack(reg, a[2 * half + 1]);
                        w.e.ins(format!("@{q} st.global.b32 [{addr}], {h}"));
                    }
                    TileIo::Store(Storage::F32) => {
                        let addr = w.f32_addr(base, index);
                        w.e.ins(format!("@{q} st.global.f32 [{addr}], {reg}"));
                    }
                    TileIo::Store(Storage::Bf16) => {
                        let addr = w.e.reg(Class::B64);
                        w.e.ins(format!("mad.lo.u64 {addr}, {index}, 2, {base}"));
                        let h = w.e.reg(Class::B16);
                        w.e.ins(format!("cvt.rn.bf16.f32 {h}, {reg}"));
                        w.e.ins(format!("@{q} st.global.b16 [{addr}], {h}"));
                    }
                    TileIo::LoadF32 => {
                        let addr = w.f32_addr(base, index);
                        w.e.ins(format!("@{q} ld.global.nc.f32 {reg}, [{addr}]"));
                    }
                }
            }
        }
    }
}

/// One chunk's loads of `psm_cw_states`, in flight while earlier chunks are multiplied:
/// K's and V's tiles, the scalar decays, and per key the row of Λ at the chunk's last step
/// (this thread's keys, their predicates, the registers they arrive in).
struct StateLoads {
    k: Prefetch,
    v: Prefetch,
    decays: Option<Vec<(Reg, Reg)>>,
    last: Vec<(Reg, Reg, Reg)>,
}

/// Chunks whose loads `psm_cw_states` keeps in flight: two without a decay, one with.
/// Measured on the H200 (2026-11-29, bf16, B·H = 64, K = V = 128, states kernel alone):
/// without a decay 0.543 → 0.516 ms at T = 16384 (0.141 → 0.132 at 4096) from one to two;
/// with a scalar decay 0.510 → 0.665, per key 0.600 → 0.738 (their decay scan and the
/// second set of registers on the chunk's path); three no better than two anywhere.
fn state_prefetch_depth(g: &Geometry) -> usize {
    if g.decayed() {
        1
    } else {
        2
    }
}

fn states_kernel(g: &Geometry) -> String {
    let mut w = Writer::new();
    let threads = g.state_threads();
    let names = ["k", "v", "g", "state_in", "states", "steps"];
    let ([k, v, gate, state_in, states, steps], flags) = w.params_and_flags(names);
    let (tile, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {tile}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    // Block x: key tile x / vtiles, value tile x % vtiles.
    let (ktile, vtile) = w.divmod(tile, g.values.div_ceil(g.vt));
    let col0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {col0}, {vtile}, {}", g.vt));
    let key0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {key0}, {ktile}, {}", g.kt));
    let planes = planes(g.products);
    // K and V staged as rows, [CHUNK][tile + 8] (each lo plane right after its array).
    let (k_stride, v_stride) = (g.kt + 8, g.vt + 8);
    let (ks_bytes, vs_bytes) = (CHUNK * k_stride * 2, CHUNK * v_stride * 2);
    let ks = w.shared("ks", ks_bytes * planes);
    let vs = w.shared("vs", vs_bytes * planes);
    let lam = g.scalar_decay().then(|| w.shared("lam", CHUNK * 4));
    // Per key: Λ at the chunk's last step, f32 for every key the key tiles span (0 past
    // the field's keys).
    let lam_last = g.per_key().then(|| w.shared("last", g.key_span() * 4));
    let nchunks = w.chunk_count(steps);
    // This warp's 16 keys (from row0; from local0 = 16 (warp % key warps) in the block's
    // tile) and its part of the value tile (from wcol0; from vpart = part · wg.vt in the
    // tile, part = warp / key warps).
    let wg = Geometry { vt: g.vt / g.state_value_parts(), ..*g };
    let (part, key_warp) = w.divmod(w.warp, g.kt / 16);
    let local0 = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {local0}, {key_warp}, 4"));
    let row0 = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {row0}, {key0}, {local0}"));
    let vpart = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {vpart}, {part}, {}", wg.vt));
    let wcol0 = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {wcol0}, {col0}, {vpart}"));
    let (keys, s64, acc) = initial_state(&mut w, &wg, flags, state_in, seq, row0, wcol0);
    // The lanes' ldmatrix row addresses: A = Kᵀ from ks's columns local0.., B = V from
    // vs's columns vpart.. (both stored [step][column]: .trans).
    let (k_cols, v_cols) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mad.lo.u32 {k_cols}, {local0}, 2, {ks}"));
    w.e.ins(format!("mad.lo.u32 {v_cols}, {vpart}, 2, {vs}"));
    let a_addr = w.ldmatrix_x4_lane(k_cols, k_stride);
    let b_addr = w.ldmatrix_lane(v_cols, v_stride);

    // Every chunk's loads are issued `depth` chunks ahead (the first `depth` before the
    // loop), each into its own set of registers: the memory's latency overlaps the
    // products and state stores of the chunks in between. The loop body is unrolled
    // `depth` times, once per set, so that the registers a set's loads arrive in are
    // fixed names.
    let depth = state_prefetch_depth(g);
    let sets: Vec<StateLoads> = (0..depth)
        .map(|_| {
            let k = Prefetch::new(&mut w, g, threads, (g.keys, key0, g.kt), ks, g.storage, g.per_key());
            let v = Prefetch::new(&mut w, g, threads, (g.values, col0, g.vt), vs, g.storage, false);
            let decays = lam.map(|_| w.decay_loads());
            // Per key: this thread's keys of Λ's row at the chunk's last step.
            let last = if g.per_key() {
                (0..g.key_span().div_ceil(threads))
                    .map(|u| {
                        let i = w.e.reg(Class::B32);
                        w.e.ins(format!("add.u32 {i}, {}, {}", w.tid, u * threads));
                        let live = w.e.reg(Class::Pred);
                        w.e.ins(format!("setp.lt.u32 {live}, {i}, {}", g.key_span()));
                        (i, live, w.e.reg(Class::F32))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            StateLoads { k, v, decays, last }
        })
        .collect();
    let issue = |w: &mut Writer, set: &StateLoads, chunk: Reg| {
        let pos = chunk_pos(w, seq, steps, chunk);
        set.k.issue(w, k, g.per_key().then_some(gate), pos.row_base, pos.n);
        set.v.issue(w, v, None, pos.row_base, pos.n);
        if let Some(loads) = &set.decays {
            w.issue_decays(g, loads, gate, pos.row_base, pos.n);
        }
        let step = w.e.reg(Class::B32);
        w.e.ins(format!("sub.u32 {step}, {}, 1", pos.n));
        for &(i, live, x) in &set.last {
            w.load_raw(&[x], gate, pos.row_base, step, pos.n, g.keys, i, g.keys, live, 1, Storage::F32);
        }
    };
    let chunk = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {chunk}, 0"));
    for (ahead, set) in sets.iter().enumerate() {
        w.e.comment(format!("issue chunk {ahead}'s loads"));
        let c = if ahead == 0 {
            chunk
        } else {
            let c = w.e.reg(Class::B32);
            w.e.ins(format!("mov.u32 {c}, {ahead}"));
            c
        };
        issue(&mut w, set, c);
    }
    let top = w.e.label("chunk");
    let done = w.e.label("chunks_done");
    w.e.place(&top);
    for set in &sets {
        // Each lane stores its own pairs: staging the rows (as the delta rule's state
        // kernel does) made this kernel 7% slower with a scalar or per-key decay (H200,
        // 2026-11-29).
        state_store(&mut w, &wg, &acc, (states, s64, nchunks), chunk, (row0, keys, wcol0), None, &done);
        let last = if let (Some(lam), Some(loads)) = (lam, &set.decays) {
            w.scan_decays(g, loads, lam);
            let at = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {at}, {lam}, {}", 4 * (CHUNK - 1)));
            let l = w.e.reg(Class::F32);
            w.e.ins(format!("ld.shared.f32 {l}, [{at}]"));
            Some(l)
        } else {
            None
        };
        if let Some(lam_last) = lam_last {
            w.e.comment("the row of L at the chunk's last step, per key");
            for &(i, live, x) in &set.last {
                let at = w.e.reg(Class::B32);
                w.e.ins(format!("mad.lo.u32 {at}, {i}, 4, {lam_last}"));
                w.e.ins(format!("@{live} st.shared.f32 [{at}], {x}"));
            }
            w.e.ins("bar.sync 0");
        }
        w.e.comment("stage K * exp(L_last - L) and V as rows, the key and the value contiguous");
        let scale = |w: &mut Writer, t: Reg| -> Reg {
            let (lam, last) = (lam.expect("decayed"), last.expect("decayed"));
            let x = w.lam_at(lam, t);
            let d = w.e.reg(Class::F32);
            w.e.ins(format!("sub.rn.f32 {d}, {last}, {x}"));
            w.exp(d)
        };
        let last_of_key = |_: &mut Writer, _t: Reg| -> Reg { lam_last.expect("per key") };
        let scale_k = if g.per_key() {
            Scale::PerKey { lam: gate, reference: &last_of_key }
        } else if g.decayed() {
            Scale::Step(&scale)
        } else {
            Scale::None
        };
        set.k.commit(&mut w, scale_k);
        set.v.commit(&mut w, Scale::None);
        w.e.ins("bar.sync 0");
        w.e.comment(if depth == 1 { "issue the next chunk's loads".to_string() } else { format!("issue the loads of chunk + {depth}") });
        let ahead = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {ahead}, {chunk}, {depth}"));
        issue(&mut w, set, ahead);
        if let Some(last) = last {
            w.e.comment("S = exp(L_last) S");
            let f = w.exp(last);
            for a in &acc {
                for r in a {
                    w.e.ins(format!("mul.rn.f32 {r}, {r}, {f}"));
                }
            }
        }
        if let Some(lam_last) = lam_last {
            w.e.comment("S = exp(L_last) * S, row by row (this lane's keys 16 warp + gq, + 8)");
            let rows = [w.e.reg(Class::B32), w.e.reg(Class::B32)];
            w.e.ins(format!("add.u32 {}, {row0}, {}", rows[0], w.gq));
            w.e.ins(format!("add.u32 {}, {}, 8", rows[1], rows[0]));
            let f = rows.map(|r| {
                let x = w.f32_at(lam_last, r);
                w.exp(x)
            });
            for a in &acc {
                for (j, r) in a.iter().enumerate() {
                    w.e.ins(format!("mul.rn.f32 {r}, {r}, {}", f[j / 2]));
                }
            }
        }
        w.e.comment("S += (scaled K)^T V, both operands by ldmatrix.trans");
        let lo = |bytes: usize| g.split().then_some(bytes);
        for kk in 0..CHUNK / 16 {
            let a: Vec<[Reg; 4]> = std::iter::once(0).chain(lo(ks_bytes)).map(|plane| w.a_fragment_trans(a_addr, plane + 2 * 16 * kk * k_stride)).collect();
            w.mma_trans_b(&acc, &a, b_addr, 2 * 16 * kk * v_stride, lo(vs_bytes));
        }
        w.e.ins("bar.sync 0");
        w.e.ins(format!("add.u32 {chunk}, {chunk}, 1"));
    }
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
    w.finish_flagged("psm_cw_states", &names)
}

/// Blocks of `psm_cw_outputs` with `bytes` of shared memory each that ptxas is asked to
/// fit an SM of `arch` by registers: as many as fit its shared memory, at most
/// [`OUTPUT_BLOCKS_PER_SM`].
fn output_blocks(bytes: usize, arch: u32) -> u32 {
    ((shared_limit(arch) + RESERVED_SHARED) / (bytes + RESERVED_SHARED)).clamp(1, OUTPUT_BLOCKS_PER_SM) as u32
}

/// `psm_cw_outputs`, for `blocks` resident per SM.
fn outputs_kernel(g: &Geometry, blocks: u32) -> String {
    let mut w = Writer::new();
    let threads = OUTPUT_THREADS as usize;
    let params = ["q", "k", "v", "g", "states", "out", "steps", "flags"];
    let q = w.param("q");
    let k = w.param("k");
    let v = w.param("v");
    let gate = w.param("g");
    let states = w.param("states");
    let out = w.param("out");
    let steps = w.param("steps");
    let (vtile, chunk, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {vtile}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {chunk}, %ctaid.y"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.z"));
    let col0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {col0}, {vtile}, {}", g.vt));
    // Each bf16 array's lo plane (when split) right after it: these are the offsets.
    let planes = planes(g.products);
    // Q's and K's rows are alike, [CHUNK][kp + 8].
    let (key_rows_bytes, vs_bytes, st_bytes) = (CHUNK * g.key_stride() * 2, CHUNK * g.value_stride() * 2, g.kp * g.value_stride() * 2);
    let lo = |bytes: usize| g.split().then_some(bytes);
    // Λ (scalar decay), f32 × CHUNK; R_b (per key), f32 [CHUNK / SUB_CHUNK][kp].
    let lam_bytes = if g.scalar_decay() { CHUNK * 4 } else { 0 };
    let ends_bytes = if g.per_key() { CHUNK / SUB_CHUNK * g.kp * 4 } else { 0 };
    w.e.comment("Q, K, V, S_c (bf16) and the decays (f32) in the dynamic shared window");
    let [qs, ks, vs, st, lam, ends] = w.window_arrays(OUTPUTS_WINDOW, [key_rows_bytes * planes, key_rows_bytes * planes, vs_bytes * planes, st_bytes * planes, lam_bytes, ends_bytes]);
    let (lam, ends) = (g.scalar_decay().then_some(lam), g.per_key().then_some(ends));
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    // A scalar decay's loads first: few, and warp 0 scans them while the copies below
    // are in flight.
    let decay_loads = lam.map(|_| {
        let loads = w.decay_loads();
        w.issue_decays(g, &loads, gate, pos.row_base, pos.n);
        loads
    });
    let keys = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {keys}, {}", g.keys));
    // The chunk's state is bf16 in the first half of its f32 slot: its first row of bf16
    // values is row 2 · matrix.
    let state_rows = {
        let nchunks = w.chunk_count(steps);
        let s64 = w.e.reg(Class::B64);
        let c64 = w.e.reg(Class::B64);
        w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
        w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
        let matrix = w.state_matrix(g, s64, nchunks, c64);
        let bf16_rows = w.e.reg(Class::B64);
        w.e.ins(format!("shl.b64 {bf16_rows}, {matrix}, 1"));
        bf16_rows
    };
    // The arrays staged as they are, in whole 16-byte pieces of bf16 rows, are copied by
    // cp.async, all in flight at once before anything else waits; the others (converted
    // from f32, split into planes, scaled by a per-key decay, or of widths that are not
    // multiples of 8, or value tiles that are not all whole) go through registers after.
    let whole_value_tiles = g.values.is_multiple_of(8) && g.values.is_multiple_of(g.vt);
    let as_stored = g.storage == Storage::Bf16 && !g.split();
    let copy_q = as_stored && g.keys.is_multiple_of(8);
    let copy_k = copy_q && !g.per_key();
    let copy_v = as_stored && whole_value_tiles;
    let copy_s = whole_value_tiles;
    let copied: Vec<&str> = [(copy_q, "Q"), (copy_k, "K"), (copy_v, "V"), (copy_s, "S_c")].into_iter().filter_map(|(c, name)| c.then_some(name)).collect();
    if !copied.is_empty() {
        w.e.comment(format!("{} by cp.async (zeros for the rows and columns that do not exist), all in flight at once", listed(&copied)));
        let value_rows = |w: &mut Writer, rows: usize, dst: Reg| AsyncCopy::new(w, threads, g.values * 2, dst, g.value_stride() * 2, rows, g.vt * 2);
        if copy_q {
            // Q's and K's rows are alike, K's array right after Q's.
            let key_rows = AsyncCopy::new(&mut w, threads, g.keys * 2, qs, g.key_stride() * 2, CHUNK, g.kp * 2);
            for (array, offset) in [(q, 0)].into_iter().chain(copy_k.then_some((k, key_rows_bytes))) {
                let base = bf16_rows_at(&mut w, array, pos.row_base, g.keys, None);
                key_rows.issue_filled(&mut w, base, offset, pos.n, g.keys / 8);
            }
        }
        if copy_v {
            let base = bf16_rows_at(&mut w, v, pos.row_base, g.values, Some(col0));
            value_rows(&mut w, CHUNK, vs).issue_filled(&mut w, base, 0, pos.n, g.vt / 8);
        }
        if copy_s {
            let state = value_rows(&mut w, g.kp, st);
            let base = bf16_rows_at(&mut w, states, state_rows, g.values, Some(col0));
            state.issue_filled(&mut w, base, 0, keys, g.vt / 8);
            if g.split() {
                w.e.comment("S_c's lo plane: the slot's second half");
                let lo = w.e.reg(Class::B64);
                w.e.ins(format!("add.u64 {lo}, {base}, {}", g.keys * g.values * 2));
                state.issue_filled(&mut w, lo, st_bytes, keys, g.vt / 8);
            }
        }
        w.e.ins("cp.async.commit_group");
    }
    if let (Some(lam), Some(loads)) = (lam, &decay_loads) {
        w.scan_decays(g, loads, lam);
    }
    if let Some(ends) = ends {
        w.e.comment("R_b: the row of L at each sub-chunk's last step (at the sequence's last past its end)");
        let last = w.e.reg(Class::B32);
        w.e.ins(format!("sub.u32 {last}, {}, 1", pos.n));
        w.strided(CHUNK / SUB_CHUNK * g.kp, threads, "ends", |w, idx| {
            let (b, i) = w.divmod(idx, g.kp);
            let t = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {t}, {b}, {SUB_CHUNK}, {}", SUB_CHUNK - 1));
            w.e.ins(format!("min.u32 {t}, {t}, {last}"));
            let live = w.always();
            let x = w.load_or_zero(gate, pos.row_base, t, pos.n, g.keys, i, g.keys, live, 1, Storage::F32)[0];
            let at = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {at}, {idx}, 4, {ends}"));
            w.e.ins(format!("st.shared.f32 [{at}], {x}"));
        });
        w.e.ins("bar.sync 0");
    }
    let end_of_sub_chunk = |w: &mut Writer, t: Reg| -> Reg {
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("shr.u32 {at}, {t}, {}", SUB_CHUNK.trailing_zeros()));
        w.e.ins(format!("mad.lo.u32 {at}, {at}, {}, {}", 4 * g.kp, ends.expect("per key")));
        at
    };
    let scale_k = if g.per_key() { Scale::PerKey { lam: gate, reference: &end_of_sub_chunk } } else { Scale::None };
    let staged: Vec<&str> = [(copy_q, "Q"), (copy_k, if g.per_key() { "K * exp(R_b - L)" } else { "K" }), (copy_v, "V")].into_iter().filter_map(|(c, name)| (!c).then_some(name)).collect();
    if !staged.is_empty() {
        w.e.comment(format!("stage {} as rows (the key and the value contiguous) through registers", listed(&staged)));
    }
    if !copy_q || !copy_k {
        let first_key = w.e.reg(Class::B32);
        w.e.ins(format!("mov.u32 {first_key}, 0"));
        if !copy_q {
            stage_row_tile(&mut w, g, threads, q, pos.row_base, pos.n, g.keys, first_key, g.kp, qs, Scale::None);
        }
        if !copy_k {
            stage_row_tile(&mut w, g, threads, k, pos.row_base, pos.n, g.keys, first_key, g.kp, ks, scale_k);
        }
    }
    if !copy_v {
        stage_row_tile(&mut w, g, threads, v, pos.row_base, pos.n, g.values, col0, g.vt, vs, Scale::None);
    }
    if !copy_s {
        w.e.comment("S_c as it is, through registers");
        copy_bf16_rows(&mut w, g, threads, (states, state_rows, keys), col0, (st, g.value_stride()));
        if g.split() {
            w.e.comment("S_c's lo plane: the slot's second half");
            let lo_rows = w.e.reg(Class::B64);
            w.e.ins(format!("add.u64 {lo_rows}, {state_rows}, {}", g.keys));
            let st_lo = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {st_lo}, {st}, {st_bytes}"));
            copy_bf16_rows(&mut w, g, threads, (states, lo_rows, keys), col0, (st_lo, g.value_stride()));
        }
    }
    if !copied.is_empty() {
        w.e.ins("cp.async.wait_group 0");
    }
    w.e.ins("bar.sync 0");

    let OutputLanes { row0, rows, acol, q_addr, k_addr, v_addr, s_addr } = output_lanes(&mut w, g, [qs, ks, vs, st]);
    let o = w.zeros(g.vt / 8);
    let scores = w.zeros(CHUNK / 8);
    let ops = WarpOperands { q, k, lam: gate, ends, q_addr, s_addr, k_addr, acol, q_lo: lo(key_rows_bytes), s_lo: lo(st_bytes), k_lo: lo(key_rows_bytes) };
    warp_products(&mut w, g, &ops, &pos, rows, &o, &scores);
    intra_chunk(&mut w, g, lam, rows, (&o, &scores), (v_addr, lo(vs_bytes)));
    w.e.comment("out rows of this chunk");
    let outrow = w.e.reg(Class::B64);
    w.e.ins(format!("mov.u64 {outrow}, {}", pos.row_base));
    tile_io(&mut w, g, &o, out, outrow, row0, pos.n, col0, TileIo::Store(g.storage));
    w.occupancy(OUTPUT_THREADS, blocks);
    w.finish("psm_cw_outputs", &params)
}

/// `psm_cw_fused`: the state kernel's chunk walk and the outputs kernel's products in
/// one kernel, for a field without a decay or with a scalar one whose Q, K and V are
/// bf16 in global memory and multiplied in bf16 ([`fused_applies`]). A block per (value tile, sequence), the
/// outputs kernel's 128 threads, walks its sequence's chunks in order with S in f32
/// registers (warp w the key groups w, w + 4, … of 16 keys, every value of the tile):
///
/// ```text
/// for each chunk c:   S → shared, bf16 (as the outputs kernel's S_c)
///                     chunk c + 1's Q, K, V by cp.async into the other buffer
///                     O = Q S_c + (Q Kᵀ ⊙ mask) V        warp w's 16 steps
///                     S += Kᵀ V                           warp w's key groups
/// ```
///
/// With a scalar decay as the two kernels: Λ scanned into shared memory, O's rows times
/// e^(e_t), the scores times e^(e_t − Λ_s), and S ← e^(Λ_last) S + (K ⊙ e^(Λ_last −
/// Λ))ᵀ V, K's fragments scaled in registers after `ldmatrix` (the keys in shared memory
/// serve Q Kᵀ unscaled): from bf16 K each product rounds as the state kernel's staging.
///
/// No chunk state goes through global memory (the two kernels write and read one bf16
/// matrix per chunk, as many bytes as the chunk's K and V); the final state is stored,
/// f32, in `states[seq, nchunks]` as the state kernel's. Shared memory: Q, K and V
/// twice (`[CHUNK][kp + 8]`, `[CHUNK][vt + 8]` bf16), S once (`[kp][vt + 8]`).
fn fused_kernel(g: &Geometry, blocks: u32) -> String {
    let mut w = Writer::new();
    let threads = OUTPUT_THREADS as usize;
    let names = ["q", "k", "v", "g", "state_in", "states", "out", "steps"];
    let ([q, k, v, gate, state_in, states, out, steps], flags) = w.params_and_flags(names);
    let (col0, seq) = w.value_tile_and_sequence(g.vt);
    let (key_rows_bytes, vs_bytes) = (CHUNK * g.key_stride() * 2, CHUNK * g.value_stride() * 2);
    let buffer_bytes = 2 * key_rows_bytes + vs_bytes;
    w.e.comment("two buffers of Q, K, V, then S (bf16) and a scalar decay's L (f32) in the dynamic shared window");
    let [qs, st, lam] = w.window_arrays(FUSED_WINDOW, [2 * buffer_bytes, fused_state_bytes(g), fused_decay_bytes(g)]);
    let lam = g.scalar_decay().then_some(lam);
    // A scalar decay's loads of the chunk ahead (registers), scanned into `lam` at its turn.
    let decay_loads = lam.map(|_| w.decay_loads());
    let nchunks = w.chunk_count(steps);
    // Copies of one chunk's Q and K rows (K's right after Q's) and V's tile.
    let key_rows = AsyncCopy::new(&mut w, threads, g.keys * 2, qs, g.key_stride() * 2, CHUNK, g.kp * 2);
    let value_rows = AsyncCopy::new(&mut w, threads, g.values * 2, qs, g.value_stride() * 2, CHUNK, g.vt * 2);
    let issue = |w: &mut Writer, buffer: usize, chunk: Reg| {
        let pos = chunk_pos(w, seq, steps, chunk);
        if let Some(loads) = &decay_loads {
            w.issue_decays(g, loads, gate, pos.row_base, pos.n);
        }
        let at = buffer * buffer_bytes;
        for (array, offset) in [(q, at), (k, at + key_rows_bytes)] {
            let base = bf16_rows_at(w, array, pos.row_base, g.keys, None);
            key_rows.issue_filled(w, base, offset, pos.n, g.keys / 8);
        }
        let base = bf16_rows_at(w, v, pos.row_base, g.values, Some(col0));
        value_rows.issue_filled(w, base, at + 2 * key_rows_bytes, pos.n, g.vt / 8);
        w.e.ins("cp.async.commit_group");
    };
    // This warp's key groups of S and their accumulators (from `state_in` when given).
    let groups = g.kp / 16;
    let warps = threads / 32;
    // `initial_state`'s key count and 64-bit sequence, made before each group's branch.
    let mut keys_and_seq = None;
    let mine: Vec<(Reg, Vec<[Reg; 4]>, Option<Reg>)> = (0..groups.div_ceil(warps))
        .map(|j| {
            let row0 = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {row0}, {}, {}", w.warp, warps * j));
            // Warps past the last group in this round have none (uniform per warp).
            let none = (warps * (j + 1) > groups).then(|| {
                let p = w.e.reg(Class::Pred);
                w.e.ins(format!("setp.ge.u32 {p}, {row0}, {}", groups - warps * j));
                p
            });
            w.e.ins(format!("shl.b32 {row0}, {row0}, 4"));
            let (keys, s64, acc) = initial_state(&mut w, g, flags, state_in, seq, row0, col0);
            keys_and_seq.get_or_insert((keys, s64));
            (row0, acc, none)
        })
        .collect();
    let (keys, s64) = keys_and_seq.expect("a key group");
    let ks = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {ks}, {qs}, {key_rows_bytes}"));
    // Each group's fragment addresses: its S rows (`store_rows`: row 16 group + gq, pair
    // cq) and Kᵀ as the A operand of the state product (columns 16 group.. of K's rows).
    let group_addrs: Vec<[Reg; 2]> = mine
        .iter()
        .map(|&(row0, _, _)| {
            let s_row = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {s_row}, {row0}, {}", w.gq));
            let s_at = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {s_at}, {s_row}, {}, {st}", 2 * g.value_stride()));
            w.e.ins(format!("mad.lo.u32 {s_at}, {}, 4, {s_at}", w.cq));
            let k_cols = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {k_cols}, {row0}, 2, {ks}"));
            [s_at, w.ldmatrix_x4_lane(k_cols, g.key_stride())]
        })
        .collect();
    // The outputs' fragment addresses in buffer 0 (buffer 1's are `buffer_bytes` on).
    let vs = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {vs}, {qs}, {}", 2 * key_rows_bytes));
    let OutputLanes { row0, rows, acol, q_addr, k_addr, v_addr, s_addr } = output_lanes(&mut w, g, [qs, ks, vs, st]);

    let chunk = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {chunk}, 0"));
    w.e.comment("chunk 0's copies");
    issue(&mut w, 0, chunk);
    let top = w.e.label("chunk");
    let done = w.e.label("chunks_done");
    w.e.place(&top);
    // The loop body twice, once per buffer, so that every shared offset is immediate.
    for buffer in 0..2 {
        let c64 = w.e.reg(Class::B64);
        w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
        let end = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.ge.u64 {end}, {c64}, {nchunks}"));
        w.e.ins(format!("@{end} bra.uni {done}"));
        let at = buffer * buffer_bytes;
        let shifted = |w: &mut Writer, r: Reg| -> Reg {
            if at == 0 {
                return r;
            }
            let x = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {x}, {r}, {at}"));
            x
        };
        w.e.comment("S entering the chunk into shared memory, bf16");
        for ((_, acc, none), [s_at, _]) in mine.iter().zip(&group_addrs) {
            for_group(&mut w, *none, |w| store_rows(w, acc, *s_at, g.value_stride(), None));
        }
        if let (Some(lam), Some(loads)) = (lam, &decay_loads) {
            w.scan_decays(g, loads, lam);
        }
        w.e.comment("the next chunk's copies into the other buffer; wait for this chunk's");
        let next = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {next}, {chunk}, 1"));
        issue(&mut w, 1 - buffer, next);
        w.e.ins("cp.async.wait_group 1");
        w.e.ins("bar.sync 0");
        let pos = chunk_pos(&mut w, seq, steps, chunk);
        let (q_at, k_at, v_at) = (shifted(&mut w, q_addr), shifted(&mut w, k_addr), shifted(&mut w, v_addr));
        let o = w.zeros(g.vt / 8);
        let scores = w.zeros(CHUNK / 8);
        // Without a decay nothing reads `lam` (given `q`) or the pairwise sums' `q`, `k`.
        let ops = WarpOperands { q, k, lam: gate, ends: None, q_addr: q_at, s_addr, k_addr: k_at, acol, q_lo: None, s_lo: None, k_lo: None };
        warp_products(&mut w, g, &ops, &pos, rows, &o, &scores);
        intra_chunk(&mut w, g, lam, rows, (&o, &scores), (v_at, None));
        w.e.comment("out rows of this chunk");
        tile_io(&mut w, g, &o, out, pos.row_base, row0, pos.n, col0, TileIo::Store(g.storage));
        // A scalar decay: e^(L_last) for S, and e^(L_last - L_t) for the lane's steps of
        // Kᵀ's fragments, t = 16 kk + 2 cq (+ 1, + 8, + 9).
        let decays = lam.map(|lam| {
            let at = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {at}, {lam}, {}", 4 * (CHUNK - 1)));
            let last = w.e.reg(Class::F32);
            w.e.ins(format!("ld.shared.f32 {last}, [{at}]"));
            let factors: Vec<[Reg; 4]> = (0..CHUNK / 16)
                .map(|kk| {
                    [0, 1, 8, 9].map(|d| {
                        let t = w.e.reg(Class::B32);
                        w.e.ins(format!("mad.lo.u32 {t}, {}, 2, {}", w.cq, 16 * kk + d));
                        let x = w.lam_at(lam, t);
                        let e = w.e.reg(Class::F32);
                        w.e.ins(format!("sub.rn.f32 {e}, {last}, {x}"));
                        w.exp(e)
                    })
                })
                .collect();
            (w.exp(last), factors)
        });
        w.e.comment(if decays.is_some() { "S = exp(L_last) S + (K * exp(L_last - L))^T V, K^T and V by ldmatrix.trans" } else { "S += K^T V, K^T and V by ldmatrix.trans" });
        for ((_, acc, none), [_, a_addr]) in mine.iter().zip(&group_addrs) {
            for_group(&mut w, *none, |w| {
                if let Some((f, _)) = &decays {
                    for r in acc.iter().flatten() {
                        w.e.ins(format!("mul.rn.f32 {r}, {r}, {f}"));
                    }
                }
                for kk in 0..CHUNK / 16 {
                    let mut a = w.a_fragment_trans(*a_addr, at + 2 * 16 * kk * g.key_stride());
                    if let Some((_, factors)) = &decays {
                        // Words 0, 1 hold steps 2 cq, 2 cq + 1; words 2, 3 the steps 8 on.
                        for (word, half) in a.iter_mut().zip([0, 0, 1, 1]) {
                            let x = w.decode(&[*word], 2, Storage::Bf16);
                            for (x, f) in x.iter().zip(&factors[kk][2 * half..2 * half + 2]) {
                                w.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
                            }
                            *word = w.pack(x[0], x[1]);
                        }
                    }
                    w.mma_trans_b(acc, &[a], v_addr, at + 2 * 16 * kk * g.value_stride(), None);
                }
            });
        }
        w.e.ins("bar.sync 0");
        w.e.ins(format!("add.u32 {chunk}, {chunk}, 1"));
    }
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
    w.e.ins("cp.async.wait_all");
    w.e.comment("states[seq, nchunks] = the final state, f32");
    let matrix = w.state_matrix(g, s64, nchunks, nchunks);
    for (row0, acc, none) in &mine {
        for_group(&mut w, *none, |w| tile_io(w, g, acc, states, matrix, *row0, keys, col0, TileIo::Store(Storage::F32)));
    }
    w.occupancy(OUTPUT_THREADS, blocks);
    w.finish_flagged("psm_cw_fused", &names)
}

/// `body` unless `none` (a warp-uniform predicate) holds.
fn for_group(w: &mut Writer, none: Option<Reg>, body: impl FnOnce(&mut Writer)) {
    match none {
        Some(p) => {
            let skip = w.e.label("no_group");
            w.e.ins(format!("@{p} bra.uni {skip}"));
            body(w);
            w.e.place(&skip);
        }
        None => body(w),
    }
}

/// The intra-chunk part of a warp's outputs after [`warp_products`]: `o` (Q S_c) times
/// e^(e_t) for a scalar decay (Λ in shared `lam`), the scores P = Q Kᵀ masked to s ≤ t
/// (s < t when exclusive) and decayed by e^(e_t − Λ_s), then O += P V (V's rows by
/// `ldmatrix.trans` from `v_addr`, its lo plane `v_lo` bytes on when split), P's
/// accumulators reused as A fragments.
fn intra_chunk(w: &mut Writer, g: &Geometry, lam: Option<Reg>, rows: [Reg; 2], (o, scores): (&[[Reg; 4]], &[[Reg; 4]]), (v_addr, v_lo): (Reg, Option<usize>)) {
    let planes = planes(g.products);
    // The rows' e_t for a scalar decay: Λ_t (inclusive) or Λ_(t−1) (exclusive, Λ_(−1) = 0).
    let e_rows = lam.map(|lam| {
        rows.map(|r| {
            if g.shape.exclusive {
                let x = w.e.reg(Class::F32);
                let p = w.e.reg(Class::Pred);
                let prev = w.e.reg(Class::B32);
                w.e.ins(format!("mov.f32 {x}, 0f00000000"));
                w.e.ins(format!("setp.ne.u32 {p}, {r}, 0"));
                w.e.ins(format!("sub.u32 {prev}, {r}, 1"));
                let a = w.e.reg(Class::B32);
                w.e.ins(format!("mad.lo.u32 {a}, {prev}, 4, {lam}"));
                w.e.ins(format!("@{p} ld.shared.f32 {x}, [{a}]"));
                x
            } else {
                w.lam_at(lam, r)
            }
        })
    });
    if let Some(e) = e_rows {
        w.e.comment("O row t times exp(e_t)");
        let f = e.map(|x| w.exp(x));
        for t in o {
            for (j, r) in t.iter().enumerate() {
                w.e.ins(format!("mul.rn.f32 {r}, {r}, {}", f[j / 2]));
            }
        }
    }
    w.e.comment(match (g.shape.exclusive, e_rows.is_some()) {
        (false, false) => "P: keep s <= t",
        (true, false) => "P: keep s < t",
        (false, true) => "P: keep s <= t, times exp(e_t - L_s)",
        (true, true) => "P: keep s < t, times exp(e_t - L_s)",
    });
    let cmp = if g.shape.exclusive { "lt" } else { "le" };
    for sub in 0..CHUNK / SUB_CHUNK {
        w.up_to_diagonal(sub, |w| {
            for pt in [2 * sub, 2 * sub + 1] {
                for (j, r) in scores[pt].iter().enumerate() {
                    let tau = w.e.reg(Class::B32);
                    w.e.ins(format!("mad.lo.u32 {tau}, {}, 2, {}", w.cq, 8 * pt + j % 2));
                    let keep = w.e.reg(Class::Pred);
                    w.e.ins(format!("setp.{cmp}.u32 {keep}, {tau}, {}", rows[j / 2]));
                    if let (Some(e), Some(lam)) = (e_rows, lam) {
                        let l = w.lam_at(lam, tau);
                        let d = w.e.reg(Class::F32);
                        w.e.ins(format!("sub.rn.f32 {d}, {}, {l}", e[j / 2]));
                        let f = w.exp(d);
                        w.e.ins(format!("mul.rn.f32 {r}, {r}, {f}"));
                    }
                    w.e.ins(format!("selp.f32 {r}, {r}, 0f00000000, {keep}"));
                }
            }
        });
    }
    w.e.comment("O += P V up to the diagonal, P's accumulators reused as A fragments");
    for kk in 0..CHUNK / 16 {
        w.up_to_diagonal(kk, |w| {
            let (left, right) = (scores[2 * kk], scores[2 * kk + 1]);
            let words = [(left[0], left[1]), (left[2], left[3]), (right[0], right[1]), (right[2], right[3])].map(|(l, h)| w.pack_planes(l, h, g.split()));
            let a: Vec<[Reg; 4]> = (0..planes).map(|p| words.each_ref().map(|x| x[p])).collect();
            w.mma_trans_b(o, &a, v_addr, 2 * 16 * kk * g.value_stride(), v_lo);
        });
    }
}

/// `names` as an English list: "A", "A and B", "A, B and C".
fn listed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The global address of entry (`row`, `col`) of a bf16 matrix `width` entries wide at
/// `array`: `row` 64 bits, `col` (32 bits) 0 where not given.
fn bf16_rows_at(w: &mut Writer, array: Reg, row: Reg, width: usize, col: Option<Reg>) -> Reg {
    let a = w.e.reg(Class::B64);
    w.e.ins(format!("mad.lo.u64 {a}, {row}, {}, {array}", width * 2));
    if let Some(col) = col {
        let bytes = w.e.reg(Class::B64);
        w.e.ins(format!("mul.wide.u32 {bytes}, {col}, 2"));
        w.e.ins(format!("add.u64 {a}, {a}, {bytes}"));
    }
    a
}

/// What [`warp_products`] reads: the global queries, keys and (per key) Λ `lam` (for
/// the diagonal blocks summed pair by pair), the shared R_b `ends` (per key), and the
/// lane's `ldmatrix` row addresses of the warp's staged query rows
/// ([`Writer::ldmatrix_lane_at`]), of S_c ([`Writer::ldmatrix_lane`]) and of the
/// (scaled) keys ([`Writer::ldmatrix_x4_lane`]).
struct WarpOperands {
    q: Reg,
    k: Reg,
    lam: Reg,
    ends: Option<Reg>,
    q_addr: Reg,
    s_addr: Reg,
    k_addr: Reg,
    /// 2 · cq: the lane's first fragment column.
    acol: Reg,
    /// The byte offsets of Q's, S_c's and K's lo planes, when split.
    q_lo: Option<usize>,
    s_lo: Option<usize>,
    k_lo: Option<usize>,
}

/// An output warp's lane: its first row (16 warp), its rows t = 16 warp + gq and + 8,
/// its first fragment column 2 cq, and its `ldmatrix` addresses in the staged Q, K, V
/// and S_c (`[qs, ks, vs, st]`, the outputs kernel's layouts).
struct OutputLanes {
    row0: Reg,
    rows: [Reg; 2],
    acol: Reg,
    q_addr: Reg,
    k_addr: Reg,
    v_addr: Reg,
    s_addr: Reg,
}

fn output_lanes(w: &mut Writer, g: &Geometry, [qs, ks, vs, st]: [Reg; 4]) -> OutputLanes {
    let (row0, arow, acol) = w.warp_fragment_rows();
    let s_addr = w.ldmatrix_lane(st, g.value_stride());
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    let q_addr = w.ldmatrix_lane_at(qs, row0, g.key_stride(), zero);
    let k_addr = w.ldmatrix_x4_lane(ks, g.key_stride());
    let v_addr = w.ldmatrix_lane(vs, g.value_stride());
    let rows = [w.e.reg(Class::B32), w.e.reg(Class::B32)];
    w.e.ins(format!("mov.u32 {}, {arow}", rows[0]));
    w.e.ins(format!("add.u32 {}, {arow}, 8", rows[1]));
    OutputLanes { row0, rows, acol, q_addr, k_addr, v_addr, s_addr }
}

/// One output warp's products, its queries' A fragments read from their staged rows by
/// `ldmatrix.x4`: O = Q S_c into `o` and the score tiles up to the diagonal, P = Q Kᵀ.
/// For a per-key decay the fragments' queries are scaled in registers (in f32, from
/// their bf16 planes): O = (Q ⊙ e^e) S_c, and each sub-chunk b's tiles (Q ⊙ e^(e − R_b))
/// (K ⊙ e^(R_b − Λ))ᵀ; then, where a diagonal block's query exponents exceed
/// [`FACTOR_RANGE`] (any lane of the warp), that block again pair by pair.
fn warp_products(w: &mut Writer, g: &Geometry, ops: &WarpOperands, pos: &ChunkPos, rows: [Reg; 2], o: &[[Reg; 4]], scores: &[[Reg; 4]]) {
    let keys = g.keys;
    let always = w.always();
    // e_t's rows: t, or t − 1 (at t = 0 it wraps past n, so e_0 = Λ_(−1) loads as 0).
    let e_rows = rows.map(|r| {
        if g.shape.exclusive {
            let prev = w.e.reg(Class::B32);
            w.e.ins(format!("sub.u32 {prev}, {r}, 1"));
            prev
        } else {
            r
        }
    });
    // Rows past the sequence's end load zero queries and Λ: their exponents stay out of
    // the range check.
    let live = rows.map(|r| {
        let p = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.lt.u32 {p}, {r}, {}", pos.n));
        p
    });
    let top = w.e.reg(Class::F32);
    w.e.ins(format!("mov.f32 {top}, 0fFF800000"));
    // Two consecutive keys of Λ at (row, col), in one load when keys are even.
    let lam_pair = |w: &mut Writer, row: Reg, col: Reg| -> [Reg; 2] {
        if keys.is_multiple_of(2) {
            let v = w.load_or_zero(ops.lam, pos.row_base, row, pos.n, keys, col, keys, always, 2, Storage::F32);
            [v[0], v[1]]
        } else {
            let next = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {next}, {col}, 1"));
            let a = w.load_or_zero(ops.lam, pos.row_base, row, pos.n, keys, col, keys, always, 1, Storage::F32)[0];
            let b = w.load_or_zero(ops.lam, pos.row_base, row, pos.n, keys, next, keys, always, 1, Storage::F32)[0];
            [a, b]
        }
    };
    // The A fragment of q ⊙ e^x for exponents x[h][c] (rows h, key pairs c), q[h][c]
    // in f32, in the order a0 (row gq, keys 2cq..), a1 (row gq + 8), a2 (keys 2cq +
    // 8..), a3; one for each plane.
    let split = g.split();
    let scaled = |w: &mut Writer, qv: &[[[Reg; 2]; 2]; 2], x: &[[[Reg; 2]; 2]; 2]| -> Vec<[Reg; 4]> {
        let words = [(0, 0), (1, 0), (0, 1), (1, 1)].map(|(h, c)| {
            let [lo, hi] = [0, 1].map(|u| {
                let f = w.exp(x[h][c][u]);
                let y = w.e.reg(Class::F32);
                w.e.ins(format!("mul.rn.f32 {y}, {}, {f}", qv[h][c][u]));
                y
            });
            w.pack_planes(lo, hi, split)
        });
        (0..words[0].len()).map(|p| words.each_ref().map(|x| x[p])).collect()
    };
    w.e.comment(if ops.ends.is_some() {
        "O = (Q * exp(e)) S_c; P's sub-chunk b = (Q * exp(e - R_b)) (K * exp(R_b - L))^T up to the diagonal"
    } else {
        "O = Q S_c and P = Q K^T up to the diagonal, sharing Q's fragments"
    });
    for kk in 0..g.kp / 16 {
        let cols = [w.e.reg(Class::B32), w.e.reg(Class::B32)];
        w.e.ins(format!("add.u32 {}, {}, {}", cols[0], ops.acol, 16 * kk));
        w.e.ins(format!("add.u32 {}, {}, {}", cols[1], ops.acol, 16 * kk + 8));
        let staged: Vec<[Reg; 4]> = std::iter::once(0).chain(ops.q_lo).map(|plane| w.a_fragment_rows(ops.q_addr, plane + 2 * 16 * kk)).collect();
        let ev = ops.ends.map(|_| [0, 1].map(|h| [0, 1].map(|c| lam_pair(w, e_rows[h], cols[c]))));
        // Per key: the fragment's queries in f32 (word h + 2c holds rows h, keys c; hi +
        // lo, exact), to be scaled.
        let qv = ev.map(|_| {
            [0, 1].map(|h| {
                [0, 1].map(|c| {
                    let planes: Vec<Vec<Reg>> = staged.iter().map(|p| w.decode(&[p[h + 2 * c]], 2, Storage::Bf16)).collect();
                    if let [hi, lo] = &planes[..] {
                        for (x, l) in hi.iter().zip(lo) {
                            w.e.ins(format!("add.rn.f32 {x}, {x}, {l}"));
                        }
                    }
                    [planes[0][0], planes[0][1]]
                })
            })
        });
        let a = match (&qv, &ev) {
            (Some(qv), Some(ev)) => scaled(w, qv, ev),
            _ => staged,
        };
        w.mma_trans_b(o, &a, ops.s_addr, 2 * 16 * kk * g.value_stride(), ops.s_lo);
        for sub in 0..CHUNK / SUB_CHUNK {
            w.up_to_diagonal(sub, |w| {
                let a = match (ops.ends, &ev, &qv) {
                    (Some(ends), Some(ev), Some(qv)) => {
                        let r = [0, 1].map(|c| {
                            let at = w.e.reg(Class::B32);
                            w.e.ins(format!("mad.lo.u32 {at}, {}, 4, {ends}", cols[c]));
                            let (lo, hi) = (w.e.reg(Class::F32), w.e.reg(Class::F32));
                            w.e.ins(format!("ld.shared.v2.f32 {{{lo}, {hi}}}, [{at}+{}]", 4 * sub * g.kp));
                            [lo, hi]
                        });
                        let diagonal = w.e.reg(Class::Pred);
                        w.e.ins(format!("setp.eq.u32 {diagonal}, {}, {sub}", w.warp));
                        let d = [0, 1].map(|h| {
                            let counted = w.e.reg(Class::Pred);
                            w.e.ins(format!("and.pred {counted}, {diagonal}, {}", live[h]));
                            [0, 1].map(|c| {
                                [0, 1].map(|u| {
                                    let x = w.e.reg(Class::F32);
                                    w.e.ins(format!("sub.rn.f32 {x}, {}, {}", ev[h][c][u], r[c][u]));
                                    w.e.ins(format!("@{counted} max.f32 {top}, {top}, {x}"));
                                    x
                                })
                            })
                        });
                        scaled(w, qv, &d)
                    }
                    _ => a.clone(),
                };
                let offset = 2 * (SUB_CHUNK * sub * g.key_stride() + 16 * kk);
                let planes: Vec<[[Reg; 2]; 2]> = std::iter::once(0).chain(ops.k_lo).map(|plane| w.b_fragments_rows(ops.k_addr, plane + offset)).collect();
                for (n, pt) in [2 * sub, 2 * sub + 1].into_iter().enumerate() {
                    let b: Vec<[Reg; 2]> = planes.iter().map(|p| p[n]).collect();
                    w.mma_planes(&scores[pt], &a, &b);
                }
            });
        }
    }
    if ops.ends.is_none() {
        return;
    }
    let over = w.e.reg(Class::Pred);
    w.e.ins(format!("setp.gt.f32 {over}, {top}, {}", f32_imm(FACTOR_RANGE)));
    w.e.ins(format!("vote.sync.any.pred {over}, {over}, 0xffffffff"));
    for sub in 0..CHUNK / SUB_CHUNK {
        let skip = w.e.label("factorized");
        let other = w.e.reg(Class::Pred);
        w.e.ins(format!("@!{over} bra.uni {skip}"));
        w.e.ins(format!("setp.ne.u32 {other}, {}, {sub}", w.warp));
        w.e.ins(format!("@{other} bra.uni {skip}"));
        w.e.comment("the diagonal block decays beyond exp(-range) in 16 steps: sum q_t k_s exp(e_t - L_s) over the keys pair by pair");
        let tiles = [2 * sub, 2 * sub + 1];
        for pt in tiles {
            for r in &scores[pt] {
                w.e.ins(format!("mov.f32 {r}, 0f00000000"));
            }
        }
        // The lane's columns τ = 16 sub + 8 p + 2 cq + c.
        let taus = [0, 1].map(|p| {
            [0, 1].map(|c| {
                let tau = w.e.reg(Class::B32);
                w.e.ins(format!("add.u32 {tau}, {}, {}", ops.acol, SUB_CHUNK * sub + 8 * p + c));
                tau
            })
        });
        let i = w.e.reg(Class::B32);
        let more = w.e.reg(Class::Pred);
        let top_label = w.e.label("pairwise");
        w.e.ins(format!("mov.u32 {i}, 0"));
        w.e.place(&top_label);
        let one = |w: &mut Writer, base: Reg, row: Reg, storage: Storage| w.load_or_zero(base, pos.row_base, row, pos.n, keys, i, keys, always, 1, storage)[0];
        let qv = rows.map(|r| one(w, ops.q, r, g.storage));
        let ev = e_rows.map(|r| one(w, ops.lam, r, Storage::F32));
        let kv = taus.map(|p| p.map(|t| one(w, ops.k, t, g.storage)));
        let lv = taus.map(|p| p.map(|t| one(w, ops.lam, t, Storage::F32)));
        for (p, pt) in tiles.into_iter().enumerate() {
            for (j, acc) in scores[pt].iter().enumerate() {
                let (h, c) = (j / 2, j % 2);
                let d = w.e.reg(Class::F32);
                w.e.ins(format!("sub.rn.f32 {d}, {}, {}", ev[h], lv[p][c]));
                let f = w.exp(d);
                let x = w.e.reg(Class::F32);
                w.e.ins(format!("mul.rn.f32 {x}, {}, {}", qv[h], kv[p][c]));
                w.e.ins(format!("fma.rn.f32 {acc}, {x}, {f}, {acc}"));
            }
        }
        w.e.ins(format!("add.u32 {i}, {i}, 1"));
        w.e.ins(format!("setp.lt.u32 {more}, {i}, {keys}"));
        w.e.ins(format!("@{more} bra {top_label}"));
        w.e.place(&skip);
    }
}

/// `psm_cw_decays`: Λ per key, chunk by chunk. One thread per key sums its log decays
/// over the chunk's steps, [`BATCH`] loads in flight at a time.
fn decays_kernel(g: &Geometry) -> String {
    let mut w = Writer::new();
    let params = ["g", "lam", "steps"];
    let gate = w.param("g");
    let lam = w.param("lam");
    let steps = w.param("steps");
    let (chunk, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {chunk}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    let done = w.e.label("done");
    let idle = w.e.reg(Class::Pred);
    w.e.ins(format!("setp.ge.u32 {idle}, {}, {}", w.tid, g.keys));
    w.e.ins(format!("@{idle} bra {done}"));
    let sum = w.e.reg(Class::F32);
    w.e.ins(format!("mov.f32 {sum}, 0f00000000"));
    let t0 = w.e.reg(Class::B32);
    let top = w.e.label("steps");
    w.e.ins(format!("mov.u32 {t0}, 0"));
    w.e.place(&top);
    let value = g.shape.decay.as_value();
    let batch: Vec<(Reg, Reg, Reg)> = (0..BATCH)
        .map(|u| {
            let t = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {t}, {t0}, {u}"));
            let live = w.e.reg(Class::Pred);
            w.e.ins(format!("setp.lt.u32 {live}, {t}, {}", pos.n));
            let index = w.e.reg(Class::B64);
            let t64 = w.e.reg(Class::B64);
            let i64 = w.e.reg(Class::B64);
            w.e.ins(format!("cvt.u64.u32 {t64}, {t}"));
            w.e.ins(format!("cvt.u64.u32 {i64}, {}", w.tid));
            w.e.ins(format!("add.u64 {index}, {}, {t64}", pos.row_base));
            w.e.ins(format!("mad.lo.u64 {index}, {index}, {}, {i64}", g.keys));
            let x = w.e.reg(Class::F32);
            // A padded step has no decay: log 0, or the value 1.
            w.e.ins(format!("mov.f32 {x}, {}", if value { "0f3F800000" } else { "0f00000000" }));
            let src = w.f32_addr(gate, index);
            w.e.ins(format!("@{live} ld.global.nc.f32 {x}, [{src}]"));
            let dst = w.f32_addr(lam, index);
            (x, dst, live)
        })
        .collect();
    for (x, dst, live) in batch {
        if value {
            w.e.ins(format!("lg2.approx.ftz.f32 {x}, {x}"));
            w.e.ins(format!("mul.rn.f32 {x}, {x}, {}", f32_imm(LN2)));
        }
        w.e.ins(format!("add.rn.f32 {sum}, {sum}, {x}"));
        w.e.ins(format!("@{live} st.global.f32 [{dst}], {sum}"));
    }
    let more = w.e.reg(Class::Pred);
    w.e.ins(format!("add.u32 {t0}, {t0}, {BATCH}"));
    w.e.ins(format!("setp.lt.u32 {more}, {t0}, {}", pos.n));
    w.e.ins(format!("@{more} bra {top}"));
    w.e.place(&done);
    w.finish("psm_cw_decays", &params)
}
