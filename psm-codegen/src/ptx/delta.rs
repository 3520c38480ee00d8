//! Tensor-core kernels of the chunkwise form for the delta rule (psm-ir's
//! `Decay::DeltaRule`): DeltaNet's transition I − β k bᵀ, and Gated DeltaNet's
//! e^g (I − β k bᵀ), through the WY/UT representation, with bf16 operands on
//! `mma.sync.m16n8k16`, f32 accumulators and the state in f32.
//!
//! Within a chunk of C = [`CHUNK`] steps, with Λ the cumulative log decay from the
//! chunk's start (0 without a gate), the state's update is that of a scalar decay with
//! the values v replaced by pseudo-values u (as psm-runtime's CPU form):
//!
//! ```text
//! (I + L) U = V − diag(β e^Λ) B S₀,   L_tτ = β_t e^(Λ_t − Λ_τ) b_t·k_τ  (τ < t, else 0)
//! S ← e^(Λ_last) S₀ + (K ⊙ e^(Λ_last − Λ))ᵀ U
//! ```
//!
//! With T = (I + L)⁻¹, U = U' + W S₀ where U' = T V and W = −T diag(β e^Λ) B depend only
//! on the chunk's own steps: they are computed for every chunk at once, and the
//! sequential pass over the chunks is two products per chunk. Two kernels:
//!
//! ```text
//! psm_cwd_prepare(k, b, beta, g, v, w, khat, upre, decay, steps)
//!     grid (nchunks, nseq), 128 threads
//!     per chunk: B, K and V staged once, as bf16 rows (coalesced 16-byte loads);
//!     the Gram matrix B Kᵀ on tensor cores and K̂ᵀ = (K ⊙ e^(Λ_last − Λ))ᵀ (bf16,
//!     transposed from K's rows by `ldmatrix.trans`); T blockwise in f32 over −L: its
//!     four 16 × 16 diagonal blocks by forward substitution (a thread per column of one,
//!     while with a gate the other half of the block turns β into β e^Λ in place), then
//!     the blocks below merged 16 → 32 → 64 by products of blocks on every thread
//!     (T_BA = T_B (−L)_BA T_A, as fla's `solve_tril`; each warp skips the terms where
//!     its part of T_A or T_B is zero); T rounded to bf16 twice, as T
//!     and with its columns scaled, T diag(β e^Λ) (a multiply per entry where B's rows
//!     would take one per key), then on tensor cores W = −(T diag(β e^Λ)) B (bf16,
//!     staged over B's rows and stored 16 bytes a lane) and U' = T V, and e^(Λ_last); every fragment by `ldmatrix` (`.trans` where the staged
//!     rows' index is the product's k). With f32 storage K and B are rounded to bf16
//!     when staged and K̂ again when scaled (bf16 inputs: once, as before)
//! psm_cwd_states(w, khat, upre, decay, state_in, states, u, steps, flags: u32)
//!     grid (⌈values / state_value_tile⌉, nseq), 32 · ⌈keys / 16⌉ threads,
//!     `state_shared_bytes` of dynamic shared memory (W and K̂ᵀ alone take 35 KiB at
//!     128 keys, so that within the 48 KiB of static shared memory the value tile
//!     could only be 16, and every block of a sequence reads them)
//!     states[s, c] = S entering chunk c (c = 0 ..= nchunks), u = the pseudo-values;
//!     per chunk U = U' + W S, S ← e^(Λ_last) S + K̂ᵀ U, the fragments taken by
//!     `ldmatrix` (S and U kept row-major in bf16, read transposed as B); the next
//!     chunk's W, K̂ᵀ and U' copied into shared memory (cp.async) while this one computes
//! ```
//!
//! ptx::chunkwise's `psm_cw_outputs` then reads U in place of the values.
//!
//! With [`Products::Bf16x3`] ([`DeltaOptions::products`]) every operand rounded to bf16
//! above is split instead into a hi and a lo bf16 plane, as ptx::chunkwise does, and
//! each mma becomes three (lo·hi, hi·lo, hi·hi): the staged rows of B, K and V, T and
//! T diag(β e^Λ), W and K̂ᵀ (stored with their lo planes), and the states kernel's S and
//! U; a chunk state's lo plane fills the second half of its f32 slot, for an outputs
//! kernel compiled with the same products. T is computed in f32 either way.
//! The prepare kernel's arrays then take 86.5 KiB at 128 keys: they move to a dynamic
//! shared window ([`DeltaModule::prepare_shared_bytes`]), with the widest value tile.
//!
//! Buffers: `k`, `b` `[nseq, steps, keys]`, `v`, `u` `[nseq, steps, values]` of the
//! options' storage type, `beta`, `g` `[nseq, steps]` f32, as in ptx::chunkwise; per
//! chunk c of sequence s (matrix m = s · nchunks + c): `w[m]` `[C, kp]` and `khat[m]`
//! `[kp, C]` bf16 (split: `[2, C, kp]` and `[2, kp, C]`, the lo plane second;
//! [`DeltaModule::operand_bytes`]), `upre[m]` `[C, vp]` of the storage type (bf16 as
//! fla's u), `decay[m]` f32, with kp and vp the keys and values padded ([`DeltaModule`])
//! and zeros in the padding. Steps past a sequence's end have zero keys, b and β: their
//! rows of T are the identity's and their pseudo-values 0.

use std::fmt::Write;

use super::block::shared_limit;
use super::chunkwise::{
    Products, check_shape, chunk_pos, f32_imm, initial_state, module_header, padded_keys, stage_row_tile, state_loop_head, state_stage_bytes, store_rows, tile_io,
    value_tile, AsyncCopy, ChunkDecay, ChunkwiseShape, Geometry, Scale, StepFactor, Storage, TileIo, Unsupported, Writer, CHUNK, MAX_VALUE_TILE, STATIC_SHARED,
};
use super::emit::{Class, Reg};

/// Threads per block of `psm_cwd_prepare` (one warp per 16 rows of the chunk; the
/// first C threads substitute, one column of a diagonal block of T each).
pub const PREPARE_THREADS: u32 = (CHUNK / 16 * 32) as u32;

/// Blocks of `psm_cwd_prepare` a multiprocessor should hold at once (`.minnctapersm`):
/// left to itself ptxas gave it 250 registers a thread, two blocks (8 warps) a
/// multiprocessor, too few to hide its latencies (Nsight Compute on the H200: 75% of
/// issue slots without an eligible warp). Four cap it at 128 registers.
const PREPARE_BLOCKS_PER_SM: u32 = 4;

/// Values per block of `psm_cwd_states` by default: measured on the H200 (B·H = 64,
/// K = V = 128, T = 4096, f32 storage) the states kernel took 0.416, 0.350 and 0.383 ms
/// with tiles of 16, 32 and 64 (docs/chunkwise.md).
pub const STATE_VALUE_TILE: usize = 32;

/// How [`compile_delta_with`] builds the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaOptions {
    /// The type of k, b, v, U' and the pseudo-values u in global memory (β, the gate
    /// and the states are f32).
    pub storage: Storage,
    /// Values per block of `psm_cwd_states` (a multiple of 8; at most the values padded
    /// to 8, at most [`MAX_VALUE_TILE`]).
    pub state_value_tile: usize,
    /// How both kernels take their tensor-core products: [`Products::Bf16x3`] keeps
    /// every bf16 operand (W, K̂ᵀ, T, the staged rows, S and U) as a hi and a lo plane.
    pub products: Products,
}

impl Default for DeltaOptions {
    /// f32 storage, a state value tile of [`STATE_VALUE_TILE`] and bf16 products.
    fn default() -> DeltaOptions {
        DeltaOptions { storage: Storage::F32, state_value_tile: STATE_VALUE_TILE, products: Products::Bf16 }
    }
}

/// The delta rule's kernels of one state field and their geometry.
#[derive(Debug, Clone)]
pub struct DeltaModule {
    pub text: String,
    pub shape: ChunkwiseShape,
    pub storage: Storage,
    pub products: Products,
    /// Values per block of `psm_cwd_states` (`grid.x = ⌈values / state_value_tile⌉`).
    pub state_value_tile: usize,
    /// Threads per block of `psm_cwd_states`.
    pub state_threads: u32,
    /// Bytes of dynamic shared memory per block of `psm_cwd_states` (more than 48 KiB
    /// need the function's limit raised first).
    pub state_shared_bytes: usize,
    /// Bytes of dynamic shared memory per block of `psm_cwd_prepare`: 0 with bf16
    /// products (its arrays are static), its whole window when split.
    pub prepare_shared_bytes: usize,
    /// Row widths of the per-chunk operands: keys padded to 16, values to the state
    /// value tile.
    pub padded_keys: usize,
    pub padded_values: usize,
}

impl DeltaModule {
    /// Bytes of one entry of k, b, v, the pseudo-values u and `upre` in global memory.
    pub fn entry_bytes(&self) -> usize {
        entry_bytes(self.storage)
    }

    /// Bytes of a chunk's W (`[C, padded_keys]`) and of its K̂ᵀ (`[padded_keys, C]`): bf16,
    /// and with split products a lo plane after the hi one.
    pub fn operand_bytes(&self) -> usize {
        operand_bytes(self.padded_keys, self.products)
    }
}

/// [`DeltaModule::operand_bytes`] for keys padded to `kp`.
fn operand_bytes(kp: usize, products: Products) -> usize {
    CHUNK * kp * 2 * planes(products)
}

/// bf16 planes of each operand under `products`: hi, and lo when split.
fn planes(products: Products) -> usize {
    match products {
        Products::Bf16 => 1,
        Products::Bf16x3 => 2,
    }
}

/// Shared bytes of `psm_cwd_states`: W `[C][kp + 8]`, K̂ᵀ `[kp][C + 8]`, S `[kp][vt + 8]`
/// and U `[C][vt + 8]` in bf16 (`planes` of each, the lo plane after the hi one), U'
/// `[C]` rows of [`upre_row_bytes`]. Every row is 16 bytes longer than its entries, so
/// that the 8 rows an `ldmatrix` (or a warp's fragment loads) reads start in different
/// banks.
fn states_shared_bytes(kp: usize, vt: usize, storage: Storage, planes: usize) -> usize {
    (CHUNK * (kp + 8) + kp * (CHUNK + 8) + kp * (vt + 8) + CHUNK * (vt + 8)) * 2 * planes + CHUNK * upre_row_bytes(vt, storage)
}

/// Bytes of a row of U' in `psm_cwd_states`' shared memory: `vt` entries and 16 of padding.
fn upre_row_bytes(vt: usize, storage: Storage) -> usize {
    vt * entry_bytes(storage) + 16
}

/// Bytes of one entry of `storage`.
fn entry_bytes(storage: Storage) -> usize {
    match storage {
        Storage::F32 => 4,
        Storage::Bf16 => 2,
    }
}

/// Shared bytes of `psm_cwd_prepare`: B's rows `[C][kp + 8]` (bf16); K's rows, then −L
/// (f32 `[C][C]`), then T and T diag(β e^Λ) (bf16 `[C][C + 8]` each); a value tile of
/// V's rows `[C][vt + 8]` (`planes` of each bf16 array, the lo plane after the hi one);
/// two f32 arrays of C (β, then β e^Λ, and Λ) besides.
fn prepare_shared_bytes(kp: usize, vt: usize, planes: usize) -> (usize, usize, usize) {
    let rows = CHUNK * (kp + 8) * 2 * planes;
    (rows, rows.max(CHUNK * CHUNK * 4).max(2 * t_plane_bytes() * planes), CHUNK * (vt + 8) * 2 * planes)
}

/// Bytes of one bf16 plane of T `[C][C + 8]` in `psm_cwd_prepare`'s shared memory.
const fn t_plane_bytes() -> usize {
    CHUNK * (CHUNK + 8) * 2
}

/// All shared bytes of `psm_cwd_prepare` with a value tile of `vt`.
fn prepare_total_bytes(kp: usize, vt: usize, planes: usize) -> usize {
    let (a, b, c) = prepare_shared_bytes(kp, vt, planes);
    a + b + c + 2 * CHUNK * 4
}

/// The name of `psm_cwd_states`'s dynamic shared window.
const STATES_WINDOW: &str = "psm_cwd_states_shared";
/// The name of `psm_cwd_prepare`'s dynamic shared window, with split products (its
/// arrays' planes take 86.5 KiB at 128 keys).
const PREPARE_WINDOW: &str = "psm_cwd_prepare_shared";

/// The delta rule's kernels for one state field for `arch` (compute capability × 10, at
/// least 80) with the default options (f32 storage); `shape.decay` is the gate's (`None`
/// for DeltaNet).
pub fn compile_delta(shape: ChunkwiseShape, arch: u32) -> Result<DeltaModule, Unsupported> {
    compile_delta_with(shape, DeltaOptions::default(), arch)
}

/// [`compile_delta`] with `options`.
pub fn compile_delta_with(shape: ChunkwiseShape, options: DeltaOptions, arch: u32) -> Result<DeltaModule, Unsupported> {
    check_shape(shape, arch, "bf16 tensor-core products and cp.async")?;
    let requested = options.state_value_tile;
    if requested == 0 || !requested.is_multiple_of(8) || requested > MAX_VALUE_TILE {
        return Err(Unsupported(format!("a state value tile of {requested}: a multiple of 8 from 8 to {MAX_VALUE_TILE}")));
    }
    let kp = padded_keys(shape.keys);
    let svt = requested.min(shape.values.div_ceil(8) * 8);
    let split = options.products == Products::Bf16x3;
    let planes = planes(options.products);
    // Split, the prepare kernel's arrays are dynamic: the widest value tile.
    let pvt = value_tile(shape.values, |vt| if split { 0 } else { prepare_total_bytes(kp, vt, planes) });
    let prepare_bytes = prepare_total_bytes(kp, pvt, planes);
    // All keys in one block.
    let geometry = |vt| Geometry { keys: shape.keys, kp, kt: kp, values: shape.values, vt, shape, storage: options.storage, products: options.products };
    // And each warp's staging of its chunk-state rows (ptx::chunkwise's state_loop_head).
    let state_shared_bytes = states_shared_bytes(kp, svt, options.storage, planes) + state_stage_bytes(&geometry(svt), kp / 16);
    let prepare_limit = if split { shared_limit(arch) } else { STATIC_SHARED };
    for (bytes, limit) in [(state_shared_bytes, shared_limit(arch)), (prepare_bytes, prepare_limit)] {
        if bytes > limit {
            return Err(Unsupported(format!("{} keys: the delta rule's kernels would need {bytes} bytes of shared memory", shape.keys)));
        }
    }
    let vp = shape.values.div_ceil(svt) * svt;
    let mut text = String::new();
    // (bf16 products are not named, so that their modules stay as they were.)
    let _ = writeln!(
        text,
        "// psm delta rule kernels (WY/UT form): keys {}, values {}, gate {:?}, {:?} storage{}, chunk {CHUNK}, value tiles {svt} (states), {pvt} (prepare)",
        shape.keys,
        shape.values,
        shape.decay,
        options.storage,
        if split { ", Bf16x3 products" } else { "" }
    );
    text.push_str(&module_header(arch));
    if split {
        let _ = writeln!(text, ".extern .shared .align 16 .b8 {PREPARE_WINDOW}[];\n");
    }
    text.push_str(&prepare_kernel(&geometry(pvt), vp));
    text.push('\n');
    let _ = writeln!(text, ".extern .shared .align 16 .b8 {STATES_WINDOW}[];\n");
    text.push_str(&states_kernel(&geometry(svt), vp));
    Ok(DeltaModule {
        text,
        shape,
        storage: options.storage,
        products: options.products,
        state_value_tile: svt,
        state_threads: (kp / 16 * 32) as u32,
        state_shared_bytes,
        prepare_shared_bytes: if split { prepare_bytes } else { 0 },
        padded_keys: kp,
        padded_values: vp,
    })
}

/// The 64-bit index m = seq · nchunks + chunk of a chunk's per-chunk operands.
fn chunk_matrix(w: &mut Writer, seq: Reg, chunk: Reg, nchunks: Reg) -> Reg {
    let s64 = w.e.reg(Class::B64);
    let c64 = w.e.reg(Class::B64);
    let m = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
    w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
    w.e.ins(format!("mad.lo.u64 {m}, {s64}, {nchunks}, {c64}"));
    m
}

/// `base + m · bytes`: the global address of operand m of `bytes` each.
fn operand_addr(w: &mut Writer, base: Reg, m: Reg, bytes: usize) -> Reg {
    let a = w.e.reg(Class::B64);
    w.e.ins(format!("mad.lo.u64 {a}, {m}, {bytes}, {base}"));
    a
}

/// `dst[t] = β_t` (0 past the chunk's `n` steps).
fn beta_row(w: &mut Writer, threads: usize, beta: Reg, row_base: Reg, n: Reg, dst: Reg) {
    w.strided(CHUNK, threads, "beta", |w, t| {
        let x = w.e.reg(Class::F32);
        let live = w.e.reg(Class::Pred);
        w.e.ins(format!("mov.f32 {x}, 0f00000000"));
        w.e.ins(format!("setp.lt.u32 {live}, {t}, {n}"));
        let t64 = w.e.reg(Class::B64);
        w.e.ins(format!("cvt.u64.u32 {t64}, {t}"));
        w.e.ins(format!("add.u64 {t64}, {t64}, {row_base}"));
        let a = w.f32_addr(beta, t64);
        w.e.ins(format!("@{live} ld.global.nc.f32 {x}, [{a}]"));
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {at}, {t}, 4, {dst}"));
        w.e.ins(format!("st.shared.f32 [{at}], {x}"));
    });
}

/// How the B operand of [`ldmatrix_product`] lies in shared memory (bf16, 16-byte
/// aligned rows; the address is [`Writer::ldmatrix_lane_at`]'s at row 0 and the first tile's column).
#[derive(Clone, Copy)]
enum BLayout {
    /// `[k][n]`, the reduction index the row: read by `ldmatrix.trans`, two n-tiles (or
    /// a last one alone) at a time.
    KRows,
    /// `[n][k]`, the reduction index contiguous: read by `ldmatrix`, two n-tiles at a
    /// time (its four matrices are (n 0.., k 0..), (n 8.., k 0..), (n 0.., k 8..),
    /// (n 8.., k 8..), so the first tile's fragment is the first and third).
    NRows,
}

/// acc += A B over `depth` (a multiple of 16) reduction entries by `ldmatrix` and
/// `mma.sync`: A row-major `[m][k]` (`a_addr`: [`Writer::ldmatrix_lane_at`]'s address at the warp's
/// 16 rows, column 0), B as `layout` says (`b`: its address and row stride); `acc`'s
/// tiles are consecutive 8-wide n-tiles. Four 32-bit shared loads of an A fragment and
/// two of each B fragment become one `ldmatrix` for A and one for every two n-tiles.
/// `lo`: the byte offsets of A's and B's lo planes when the operands are split (three
/// mma per tile, [`Writer::mma_split`]).
fn ldmatrix_product(w: &mut Writer, acc: &[[Reg; 4]], a_addr: Reg, (b_addr, b_stride, layout): (Reg, usize, BLayout), depth: usize, lo: Option<(usize, usize)>) {
    let planes = |lo: Option<usize>| std::iter::once(0).chain(lo);
    for kk in 0..depth / 16 {
        let a: Vec<[Reg; 4]> = planes(lo.map(|l| l.0))
            .map(|plane| {
                let a = w.ldmatrix(a_addr, plane + 16 * kk * 2, 4, false);
                [a[0], a[1], a[2], a[3]]
            })
            .collect();
        for (pair, tiles) in acc.chunks(2).enumerate() {
            let b: Vec<Vec<[Reg; 2]>> = planes(lo.map(|l| l.1))
                .map(|plane| match layout {
                    BLayout::KRows => w.b_fragments_trans(b_addr, plane + (16 * kk * b_stride + 16 * pair) * 2, tiles.len()),
                    BLayout::NRows => {
                        assert_eq!(tiles.len(), 2, "an [n][k] operand is read two n-tiles at a time");
                        let r = w.ldmatrix(b_addr, plane + (16 * pair * b_stride + 16 * kk) * 2, 4, false);
                        vec![[r[0], r[2]], [r[1], r[3]]]
                    }
                })
                .collect();
            for (n, t) in tiles.iter().enumerate() {
                let b: Vec<[Reg; 2]> = b.iter().map(|p| p[n]).collect();
                w.mma_planes(t, &a, &b);
            }
        }
    }
}

/// The entries of the bf16 pair `pair` (the lower one in the low half) as f32 into `lo`
/// and `hi`: a bf16 is the upper half of its f32.
fn unpack_pair(w: &mut Writer, pair: Reg, lo: Reg, hi: Reg) {
    let [lo_bits, hi_bits] = [(); 2].map(|_| w.e.reg(Class::B32));
    w.e.ins(format!("shl.b32 {lo_bits}, {pair}, 16"));
    w.e.ins(format!("and.b32 {hi_bits}, {pair}, 0xFFFF0000"));
    w.e.ins(format!("mov.b32 {lo}, {lo_bits}"));
    w.e.ins(format!("mov.b32 {hi}, {hi_bits}"));
}

/// The bf16 pair whose planes are `planes` (hi, then lo when split: their sum) times
/// `lo` and `hi` entry by entry, as planes again (rounded to a bf16 pair, and split
/// anew when `planes` are).
fn scale_planes(w: &mut Writer, planes: &[Reg], lo: Reg, hi: Reg) -> Vec<Reg> {
    let [x, y] = [(); 2].map(|_| w.e.reg(Class::F32));
    unpack_pair(w, planes[0], x, y);
    for &plane in &planes[1..] {
        let [xl, yl] = [(); 2].map(|_| w.e.reg(Class::F32));
        unpack_pair(w, plane, xl, yl);
        w.e.ins(format!("add.rn.f32 {x}, {x}, {xl}"));
        w.e.ins(format!("add.rn.f32 {y}, {y}, {yl}"));
    }
    w.e.ins(format!("mul.rn.f32 {x}, {x}, {lo}"));
    w.e.ins(format!("mul.rn.f32 {y}, {y}, {hi}"));
    w.pack_planes(x, y, planes.len() > 1)
}

fn prepare_kernel(g: &Geometry, vp: usize) -> String {
    let mut w = Writer::new();
    let threads = PREPARE_THREADS as usize;
    let (ss, ks, vs_stride) = (g.step_stride(), g.key_stride(), g.vt + 8);
    let params = ["k", "b", "beta", "g", "v", "w", "khat", "upre", "decay", "steps"];
    let k = w.param("k");
    let b = w.param("b");
    let beta = w.param("beta");
    let gate = w.param("g");
    let v = w.param("v");
    let wout = w.param("w");
    let khat = w.param("khat");
    let upre = w.param("upre");
    let decay = w.param("decay");
    let steps = w.param("steps");
    let (chunk, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {chunk}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    let split = g.split();
    let (rows_bytes, second, third) = prepare_shared_bytes(g.kp, g.vt, planes(g.products));
    // The lo planes' offsets (when split): of B's and K's rows, of T, of V's rows.
    let (rows_lo, t_lo, v_lo) = (CHUNK * ks * 2, t_plane_bytes(), CHUNK * vs_stride * 2);
    // T diag(beta exp(L)) (for W) follows T's planes.
    let scaled_t = t_plane_bytes() * planes(g.products);
    let gated = g.shape.decay != ChunkDecay::None;
    // B's rows; K's rows, then -L, then T; a value tile of V's rows; beta; Lambda.
    let (bs, kl, vs, betas, lam) = if split {
        let [bs, kl, vs, betas, lam] = w.window_arrays(PREPARE_WINDOW, [rows_bytes, second, third, CHUNK * 4, CHUNK * 4]);
        (bs, kl, vs, betas, gated.then_some(lam))
    } else {
        let bs = w.shared("bs", rows_bytes);
        let kl = w.shared("kl", second);
        let vs = w.shared("vs", third);
        let betas = w.shared("betas", CHUNK * 4);
        (bs, kl, vs, betas, gated.then(|| w.shared("lam", CHUNK * 4)))
    };
    let lo = |a: usize, b: usize| split.then_some((a, b));
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    let nchunks = w.chunk_count(steps);
    let m = chunk_matrix(&mut w, seq, chunk, nchunks);
    if let Some(lam) = lam {
        w.cumulative_decay(g, gate, pos.row_base, pos.n, lam);
    }
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    w.e.comment("stage B, K and V's first value tile once, as rows (coalesced loads), and beta");
    beta_row(&mut w, threads, beta, pos.row_base, pos.n, betas);
    stage_row_tile(&mut w, g, threads, b, pos.row_base, pos.n, g.keys, zero, g.kp, bs, Scale::None);
    stage_row_tile(&mut w, g, threads, k, pos.row_base, pos.n, g.keys, zero, g.kp, kl, Scale::None);
    stage_row_tile(&mut w, g, threads, v, pos.row_base, pos.n, g.values, zero, g.vt, vs, Scale::None);
    w.e.ins("bar.sync 0");
    let (row0, arow, acol) = w.warp_fragment_rows();
    let gram = w.zeros(CHUNK / 8);
    w.e.comment("G = B K^T (K's rows are the [n][k] operand)");
    let b_lane = w.ldmatrix_lane_at(bs, row0, ks, zero);
    let k_lane = w.ldmatrix_lane_at(kl, zero, ks, zero);
    ldmatrix_product(&mut w, &gram, b_lane, (k_lane, ks, BLayout::NRows), g.kp, lo(rows_lo, rows_lo));
    let last = lam.map(|lam| {
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {at}, {lam}, {}", 4 * (CHUNK - 1)));
        let l = w.e.reg(Class::F32);
        w.e.ins(format!("ld.shared.f32 {l}, [{at}]"));
        l
    });
    let khat_factor = last.zip(lam).map(|(last, lam)| {
        move |w: &mut Writer, t: Reg| -> Reg {
            let l = w.lam_at(lam, t);
            let d = w.e.reg(Class::F32);
            w.e.ins(format!("sub.rn.f32 {d}, {last}, {l}"));
            w.exp(d)
        }
    });
    store_khat(&mut w, g, (khat, m), row0, acol, kl, khat_factor.as_ref().map(|f| f as StepFactor<'_>));
    w.e.ins("bar.sync 0");
    w.e.comment("-L over K's rows (f32 [C][C]): -beta_t exp(L_t - L_s) G_ts for s < t, else 0");
    let rows = [arow, w.e.reg(Class::B32)];
    w.e.ins(format!("add.u32 {}, {arow}, 8", rows[1]));
    let betas_t = rows.map(|r| w.f32_at(betas, r));
    let lam_t = lam.map(|lam| rows.map(|r| w.lam_at(lam, r)));
    let store = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {store}, {arow}, {CHUNK}, {acol}"));
    w.e.ins(format!("mad.lo.u32 {store}, {store}, 4, {kl}"));
    for (pt, t) in gram.iter().enumerate() {
        for (j, x) in t.iter().enumerate() {
            let tau = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {tau}, {}, 2, {}", w.cq, 8 * pt + j % 2));
            let keep = w.e.reg(Class::Pred);
            w.e.ins(format!("setp.lt.u32 {keep}, {tau}, {}", rows[j / 2]));
            w.e.ins(format!("mul.rn.f32 {x}, {x}, {}", betas_t[j / 2]));
            if let (Some(lt), Some(lam)) = (lam_t, lam) {
                let l = w.lam_at(lam, tau);
                let d = w.e.reg(Class::F32);
                w.e.ins(format!("sub.rn.f32 {d}, {}, {l}", lt[j / 2]));
                let f = w.exp(d);
                w.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
            }
            w.e.ins(format!("neg.f32 {x}, {x}"));
            w.e.ins(format!("selp.f32 {x}, {x}, 0f00000000, {keep}"));
            let offset = ((j / 2) * 8 * CHUNK + 8 * pt + j % 2) * 4;
            w.e.ins(format!("st.shared.f32 [{store}+{offset}], {x}"));
        }
    }
    w.e.ins("bar.sync 0");
    w.e.comment("T = (I + L)^-1 blockwise in f32 over -L: first its four 16x16 diagonal blocks by");
    w.e.comment("forward substitution, thread j < C holding column j mod 16 of block j / 16,");
    w.e.comment("T_tj = [t == j] - sum(s < t) L_ts T_sj, reading -L's rows four at a time into four");
    w.e.comment("partial sums (s mod 4), so that the dependent adds are a quarter as many;");
    w.e.comment("meanwhile, with a gate, the other threads turn beta into beta exp(L) in place (T's");
    w.e.comment("columns' factors for W)");
    let substituted = w.e.label("substituted");
    let factors = if gated { w.e.label("column_factors") } else { substituted.clone() };
    let idle = w.e.reg(Class::Pred);
    w.e.ins(format!("setp.ge.u32 {idle}, {}, {CHUNK}", w.tid));
    let (block, col) = w.divmod(w.tid, DIAGONAL_BLOCK);
    // The thread's diagonal block of -L (then T), from its entry (0, 0), and its column there.
    let block_origin = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {block_origin}, {block}, {}, {kl}", DIAGONAL_BLOCK * (CHUNK + 1) * 4));
    let diagonal_column = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {diagonal_column}, {col}, 4, {block_origin}"));
    let mut column: Vec<Reg> = Vec::with_capacity(DIAGONAL_BLOCK);
    w.e.ins(format!("@{idle} bra {factors}"));
    let one = f32_imm(1.0);
    for t in 0..DIAGONAL_BLOCK {
        let x = w.e.reg(Class::F32);
        let diagonal = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.eq.u32 {diagonal}, {col}, {t}"));
        w.e.ins(format!("selp.f32 {x}, {one}, 0f00000000, {diagonal}"));
        let partial = [(); 4].map(|_| w.e.reg(Class::F32));
        for p in &partial[..t.min(4)] {
            w.e.ins(format!("mov.f32 {p}, 0f00000000"));
        }
        for s0 in (0..t).step_by(4) {
            let l = [(); 4].map(|_| w.e.reg(Class::F32));
            w.e.ins(format!("ld.shared.v4.f32 {{{}, {}, {}, {}}}, [{block_origin}+{}]", l[0], l[1], l[2], l[3], (t * CHUNK + s0) * 4));
            for ((s, l), p) in (s0..t.min(s0 + 4)).zip(l).zip(&partial) {
                w.e.ins(format!("fma.rn.f32 {p}, {l}, {}, {p}", column[s]));
            }
        }
        for p in &partial[..t.min(4)] {
            w.e.ins(format!("add.rn.f32 {x}, {x}, {p}"));
        }
        column.push(x);
    }
    w.e.ins(format!("bra.uni {substituted}"));
    if let Some(lam) = lam {
        w.e.place(&factors);
        let helper = w.e.reg(Class::B32);
        w.e.ins(format!("sub.u32 {helper}, {}, {CHUNK}", w.tid));
        w.counted(helper, CHUNK, threads - CHUNK, false, "column_factors", |w, t| {
            let x = w.f32_at(betas, t);
            let l = w.lam_at(lam, t);
            let f = w.exp(l);
            w.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
            let at = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {at}, {t}, 4, {betas}"));
            w.e.ins(format!("st.shared.f32 [{at}], {x}"));
        });
    }
    w.e.place(&substituted);
    w.e.ins("bar.sync 0");
    let written = w.e.label("diagonal_written");
    w.e.ins(format!("@{idle} bra {written}"));
    for (t, x) in column.iter().enumerate() {
        w.e.ins(format!("st.shared.f32 [{diagonal_column}+{}], {x}", t * CHUNK * 4));
    }
    w.e.place(&written);
    w.e.ins("bar.sync 0");
    let mut merged = DIAGONAL_BLOCK;
    while merged < CHUNK {
        merge_diagonal_blocks(&mut w, kl, merged);
        merged *= 2;
    }
    w.e.comment("T and T diag(beta exp(L)) (bf16, [t][s]) over T's f32 rows: every thread reads its");
    w.e.comment("entries and its four columns' factors, then writes both");
    let groups = CHUNK / 4;
    let passes = CHUNK * groups / threads;
    let (first_row, group) = w.divmod(w.tid, groups);
    // The thread's first four entries as f32 (rows of C) and as bf16 (rows of ss).
    let [from, to] = [(CHUNK, 4), (ss, 2)].map(|(stride, bytes)| {
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {at}, {first_row}, {}, {kl}", stride * bytes));
        w.e.ins(format!("mad.lo.u32 {at}, {group}, {}, {at}", 4 * bytes));
        at
    });
    let rows_apart = threads / groups;
    let entries: Vec<[Reg; 4]> = (0..passes)
        .map(|i| {
            let x = [(); 4].map(|_| w.e.reg(Class::F32));
            w.e.ins(format!("ld.shared.v4.f32 {{{}, {}, {}, {}}}, [{from}+{}]", x[0], x[1], x[2], x[3], i * rows_apart * CHUNK * 4));
            x
        })
        .collect();
    let factor = [(); 4].map(|_| w.e.reg(Class::F32));
    let factors_at = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {factors_at}, {group}, 16, {betas}"));
    w.e.ins(format!("ld.shared.v4.f32 {{{}, {}, {}, {}}}, [{factors_at}]", factor[0], factor[1], factor[2], factor[3]));
    w.e.ins("bar.sync 0");
    for (i, x) in entries.iter().enumerate() {
        let scaled = [(); 4].map(|_| w.e.reg(Class::F32));
        for ((y, x), f) in scaled.iter().zip(x).zip(&factor) {
            w.e.ins(format!("mul.rn.f32 {y}, {x}, {f}"));
        }
        for (array, x) in [(0, x), (scaled_t, &scaled)] {
            let pairs = [w.pack_planes(x[0], x[1], split), w.pack_planes(x[2], x[3], split)];
            for (plane, offset) in std::iter::once(0).chain(split.then_some(t_lo)).enumerate() {
                w.e.ins(format!("st.shared.v2.b32 [{to}+{}], {{{}, {}}}", array + offset + i * rows_apart * ss * 2, pairs[0][plane], pairs[1][plane]));
            }
        }
    }
    w.e.ins("bar.sync 0");
    let t_lane = w.ldmatrix_lane_at(kl, row0, ss, zero);
    {
        w.e.comment("w[m] = -(T diag(beta exp(L))) B, bf16 [C][kp] (B's rows are the [k][n] operand)");
        let acc = w.zeros(g.kp / 8);
        let scaled_t_lane = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {scaled_t_lane}, {t_lane}, {scaled_t}"));
        let b_rows_lane = w.ldmatrix_lane_at(bs, zero, ks, zero);
        ldmatrix_product(&mut w, &acc, scaled_t_lane, (b_rows_lane, ks, BLayout::KRows), CHUNK, lo(t_lo, rows_lo));
        for x in acc.iter().flatten() {
            w.e.ins(format!("neg.f32 {x}, {x}"));
        }
        w.e.comment("staged over B's rows (every warp done reading them), each warp's own 16 rows");
        w.e.ins("bar.sync 0");
        let fragment = w.bf16_addr(bs, arow, ks, acol);
        store_rows(&mut w, &acc, fragment, ks, split.then_some(rows_lo));
        w.e.ins("bar.warp.sync 0xffffffff");
        let base = operand_addr(&mut w, wout, m, operand_bytes(g.kp, g.products));
        copy_warp_rows(&mut w, g, bs, row0, base, split.then_some(rows_lo));
    }
    {
        w.e.comment("upre[m] = T V, [C][vp] of the storage type, a value tile at a time");
        // U' rows are vp wide.
        let ug = Geometry { keys: g.keys, kp: g.kp, kt: g.kt, values: vp, vt: g.vt, shape: g.shape, storage: g.storage, products: g.products };
        let first_row = w.e.reg(Class::B64);
        w.e.ins(format!("mul.lo.u64 {first_row}, {m}, {CHUNK}"));
        let v_lane = w.ldmatrix_lane_at(vs, zero, vs_stride, zero);
        let rows_all = w.e.reg(Class::B32);
        w.e.ins(format!("mov.u32 {rows_all}, {CHUNK}"));
        for tile in 0..vp.div_ceil(g.vt) {
            let col0 = w.e.reg(Class::B32);
            w.e.ins(format!("mov.u32 {col0}, {}", tile * g.vt));
            if tile > 0 {
                w.e.ins("bar.sync 0");
                stage_row_tile(&mut w, g, threads, v, pos.row_base, pos.n, g.values, col0, g.vt, vs, Scale::None);
                w.e.ins("bar.sync 0");
            }
            let acc = w.zeros(g.vt / 8);
            ldmatrix_product(&mut w, &acc, t_lane, (v_lane, vs_stride, BLayout::KRows), CHUNK, lo(t_lo, v_lo));
            tile_io(&mut w, &ug, &acc, upre, first_row, row0, rows_all, col0, TileIo::Store(g.storage));
        }
    }
    if let Some(last) = last {
        w.e.comment("decay[m] = exp(L_last)");
        let skip = w.e.label("decay_written");
        let p = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.ne.u32 {p}, {}, 0", w.tid));
        w.e.ins(format!("@{p} bra {skip}"));
        let f = w.exp(last);
        let a = w.f32_addr(decay, m);
        w.e.ins(format!("st.global.f32 [{a}], {f}"));
        w.e.place(&skip);
    }
    w.occupancy(PREPARE_THREADS, PREPARE_BLOCKS_PER_SM);
    w.finish("psm_cwd_prepare", &params)
}

/// The warp's 16 staged bf16 rows from `row0` of `rows` (`[C][kp + 8]`, a lo plane
/// `lo` bytes further when given) to its rows of the global `[C][kp]` matrix at `dst`
/// (the lo plane the chunk's second matrix), 16 bytes a lane: a warp's store covers
/// whole sectors, where its fragments' bf16 pairs filled half of each.
fn copy_warp_rows(w: &mut Writer, g: &Geometry, rows: Reg, row0: Reg, dst: Reg, lo: Option<usize>) {
    let pieces = g.kp / 8;
    let lane = w.e.reg(Class::B32);
    w.e.ins(format!("and.b32 {lane}, {}, 31", w.tid));
    for i in 0..16 * pieces / 32 {
        let piece = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {piece}, {lane}, {}", 32 * i));
        let (r, c) = w.divmod(piece, pieces);
        w.e.ins(format!("add.u32 {r}, {r}, {row0}"));
        w.e.ins(format!("shl.b32 {c}, {c}, 3"));
        let from = w.bf16_addr(rows, r, g.key_stride(), c);
        let to = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {to}, {r}, {}, {c}", g.kp));
        let to64 = w.e.reg(Class::B64);
        w.e.ins(format!("mul.wide.u32 {to64}, {to}, 2"));
        w.e.ins(format!("add.u64 {to64}, {to64}, {dst}"));
        for (plane, offset) in std::iter::once(0).chain(lo).enumerate() {
            let x = [(); 4].map(|_| w.e.reg(Class::B32));
            w.e.ins(format!("ld.shared.v4.b32 {{{}, {}, {}, {}}}, [{from}+{offset}]", x[0], x[1], x[2], x[3]));
            w.e.ins(format!("st.global.v4.b32 [{to64}+{}], {{{}, {}, {}, {}}}", plane * CHUNK * g.kp * 2, x[0], x[1], x[2], x[3]));
        }
    }
}

/// Rows and columns of the diagonal blocks of T that `psm_cwd_prepare` inverts by forward
/// substitution before merging them.
const DIAGONAL_BLOCK: usize = 16;

/// In `m`, the f32 `[C][C]` array of −L whose `n` × `n` diagonal blocks already hold T's,
/// T's blocks of 2n: with A and B the two halves of such a diagonal block, I + L's
/// inverse there has T_BA = −T_B L_BA T_A = T_B (−L)_BA T_A below its diagonal (as fla's
/// `solve_tril` merges). The C / 2n blocks share the threads: each takes a column and
/// n² / (its block's threads) rows of T_BA, in two products, each read whole before its
/// result goes over its operand: X = (−L)_BA T_A over (−L)_BA, then T_B X over X. A
/// warp's lanes in groups of 8 or more share rows (their loads of the left operand
/// broadcast) over consecutive columns. T_A and T_B are lower triangular: in X a warp
/// takes a range of columns and skips T_A's rows above the first (zero there), in T_B X a
/// range of rows and skips T_B's columns past the last.
fn merge_diagonal_blocks(w: &mut Writer, m: Reg, n: usize) {
    let blocks = CHUNK / (2 * n);
    let block_threads = PREPARE_THREADS as usize / blocks;
    let rows = n * n / block_threads;
    // Columns of a warp in X (all rows), rows of a warp in T_B X (all columns).
    let (warp_cols, warp_rows) = (32 * n / block_threads, 32 * rows / n);
    w.e.comment(format!("T's blocks of {}: T_BA = T_B (-L_BA) T_A, skipping T_A's and T_B's zero halves", 2 * n));
    let (block, local) = w.divmod(w.tid, block_threads);
    let (warp, lane) = w.divmod(local, 32);
    // The merged block's first row and column (A's), and B's.
    let a0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {a0}, {block}, {}", 2 * n));
    let b0 = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {b0}, {a0}, {n}"));
    let entry = |w: &mut Writer, r: Reg, c: Reg| -> Reg {
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {at}, {r}, {CHUNK}, {c}"));
        w.e.ins(format!("mad.lo.u32 {at}, {at}, 4, {m}"));
        at
    };
    // The thread's first row (in B) and column (in A) from its row group and its column
    // in the block, and the entries of its left and right operands and of its result.
    let place = |w: &mut Writer, row_group: Reg, col: Reg, left_col: Reg, right_row: Reg| -> [Reg; 3] {
        let row = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {row}, {row_group}, {rows}, {b0}"));
        let a_col = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {a_col}, {a0}, {col}"));
        [entry(w, row, left_col), entry(w, right_row, a_col), entry(w, row, a_col)]
    };
    let first_col = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {first_col}, {warp}, {warp_cols}"));
    let (row_group, col) = w.divmod(lane, warp_cols);
    w.e.ins(format!("add.u32 {col}, {col}, {first_col}"));
    let x = place(w, row_group, col, a0, a0);
    let rows_end = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {rows_end}, {warp}, {warp_rows}, {warp_rows}"));
    let (row_group, col) = w.divmod(local, n);
    let y = place(w, row_group, col, b0, b0);
    for ([left, right, out], zeros) in [(x, Zeros::Before(first_col)), (y, Zeros::From(rows_end))] {
        let product = column_product(w, left, right, n, rows, zeros);
        w.e.ins("bar.sync 0");
        for (i, x) in product.iter().enumerate() {
            w.e.ins(format!("st.shared.f32 [{out}+{}], {x}", i * CHUNK * 4));
        }
        w.e.ins("bar.sync 0");
    }
}

/// The reduction entries k a warp's [`column_product`] skips, four at a time, its terms
/// there being zero in all its lanes (the bound a warp-uniform register, a multiple of 4).
#[derive(Clone, Copy)]
enum Zeros {
    Before(Reg),
    From(Reg),
}

/// `rows` entries of one column of a product of f32 `[C][C]` shared blocks over `depth`
/// (a multiple of 4): entry i = Σ_k P_ik Q_k, with `left` the address of P_00 (16-byte
/// aligned; its rows C entries apart) and `right` that of Q_0 (its entries C apart),
/// the k of `zeros` left out.
fn column_product(w: &mut Writer, left: Reg, right: Reg, depth: usize, rows: usize, zeros: Zeros) -> Vec<Reg> {
    let acc: Vec<Reg> = (0..rows).map(|_| w.e.reg(Class::F32)).collect();
    for a in &acc {
        w.e.ins(format!("mov.f32 {a}, 0f00000000"));
    }
    for k0 in (0..depth).step_by(4) {
        let zero = w.e.reg(Class::Pred);
        match zeros {
            Zeros::Before(first) => w.e.ins(format!("setp.gt.u32 {zero}, {first}, {k0}")),
            Zeros::From(end) => w.e.ins(format!("setp.le.u32 {zero}, {end}, {k0}")),
        }
        let skip = w.e.label("zero_terms");
        w.e.ins(format!("@{zero} bra.uni {skip}"));
        let q = [(); 4].map(|_| w.e.reg(Class::F32));
        for (k, x) in q.iter().enumerate() {
            w.e.ins(format!("ld.shared.f32 {x}, [{right}+{}]", (k0 + k) * CHUNK * 4));
        }
        for (i, a) in acc.iter().enumerate() {
            let p = [(); 4].map(|_| w.e.reg(Class::F32));
            w.e.ins(format!("ld.shared.v4.f32 {{{}, {}, {}, {}}}, [{left}+{}]", p[0], p[1], p[2], p[3], (i * CHUNK + k0) * 4));
            for (p, q) in p.iter().zip(&q) {
                w.e.ins(format!("fma.rn.f32 {a}, {p}, {q}, {a}"));
            }
        }
        w.e.place(&skip);
    }
    acc
}

/// khat[m] = (K ⊙ e^(Λ_last − Λ))ᵀ, bf16 `[kp][C]` (`out`: the array and m), from K's
/// staged rows `ks_rows` `[C][kp + 8]`: the warp of rows `row0`.. transposes them 16 keys
/// at a time by `ldmatrix.x4.trans`, which hands each lane the bf16 pairs of steps
/// (row0 + 2 cq, + 1) and (row0 + 8 + 2 cq, + 1) of keys gq and 8 + gq: scaled by
/// `factor(t)` with a gate, they are stored four bytes a lane (a quad's four lanes fill
/// 16 consecutive bytes of a row of K̂ᵀ). Split, both planes of K are read, and K̂ᵀ's
/// planes (hi + lo of the scaled sum) stored.
fn store_khat(w: &mut Writer, g: &Geometry, (khat, m): (Reg, Reg), row0: Reg, acol: Reg, ks_rows: Reg, factor: Option<StepFactor<'_>>) {
    w.e.comment("khat[m] (bf16 [kp][C]) from K's rows, transposed by ldmatrix");
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    let lane = w.ldmatrix_lane_at(ks_rows, row0, g.key_stride(), zero);
    // Factors of steps row0 + 2 cq + (0, 1, 8, 9).
    let factors = factor.map(|factor| {
        [0, 1, 8, 9].map(|d| {
            let t = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {t}, {row0}, {acol}"));
            w.e.ins(format!("add.u32 {t}, {t}, {d}"));
            factor(w, t)
        })
    });
    let at = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {at}, {}, {CHUNK}, {row0}", w.gq));
    w.e.ins(format!("add.u32 {at}, {at}, {acol}"));
    let dst = w.e.reg(Class::B64);
    w.e.ins(format!("mul.wide.u32 {dst}, {at}, 2"));
    let base = operand_addr(w, khat, m, operand_bytes(g.kp, g.products));
    w.e.ins(format!("add.u64 {dst}, {dst}, {base}"));
    // K's lo plane (when split) follows its rows; K-hat^T's is the chunk's second [kp][C].
    let planes: Vec<usize> = std::iter::once(0).chain(g.split().then_some(CHUNK * g.key_stride() * 2)).collect();
    for kb in 0..g.kp / 16 {
        let r: Vec<Vec<Reg>> = planes.iter().map(|plane| w.ldmatrix(lane, plane + 16 * kb * 2, 4, true)).collect();
        for q in 0..4 {
            // Matrix q: keys 8 (q / 2) + gq, steps 8 (q % 2) + 2 cq.
            let pairs: Vec<Reg> = r.iter().map(|p| p[q]).collect();
            let pairs = match &factors {
                Some(f) => scale_planes(w, &pairs, f[2 * (q % 2)], f[2 * (q % 2) + 1]),
                None => pairs,
            };
            for (plane, pair) in pairs.iter().enumerate() {
                let offset = (((plane * g.kp + 16 * kb + 8 * (q / 2)) * CHUNK) + 8 * (q % 2)) * 2;
                w.e.ins(format!("st.global.b32 [{dst}+{offset}], {pair}"));
            }
        }
    }
}

/// A runtime loop over the work items `warp, warp + warps, ... < items` of a block's
/// warps; `body` gets the item.
fn per_item(w: &mut Writer, items: usize, warps: usize, what: &str, body: impl FnOnce(&mut Writer, Reg)) {
    let warp = w.warp;
    w.counted(warp, items, warps, true, what, body);
}

/// How the products over a chunk's rows (C / 16 row blocks × the value tile's 8-wide
/// tiles) split into work items for `warps` warps: `groups` groups of `tiles` tiles.
struct Split {
    groups: usize,
    tiles: usize,
}

impl Split {
    fn new(vt: usize, warps: usize) -> Split {
        let (blocks, all) = (CHUNK / 16, vt / 8);
        // As many tile groups as the warps beyond one per row block can take.
        let groups = (1..=all).rev().find(|&n| all % n == 0 && n * blocks <= warps.max(blocks)).unwrap_or(1);
        Split { groups, tiles: all / groups }
    }
    fn items(&self) -> usize {
        CHUNK / 16 * self.groups
    }
    /// The item's first row (16 · row block) and its first column in the value tile.
    fn position(&self, w: &mut Writer, item: Reg) -> (Reg, Reg) {
        let (group, block) = w.divmod(item, CHUNK / 16);
        let row0 = w.e.reg(Class::B32);
        let col = w.e.reg(Class::B32);
        w.e.ins(format!("shl.b32 {row0}, {block}, 4"));
        w.e.ins(format!("mul.lo.u32 {col}, {group}, {}", 8 * self.tiles));
        (row0, col)
    }
}

fn states_kernel(g: &Geometry, vp: usize) -> String {
    let mut w = Writer::new();
    let warps = g.kp / 16;
    let threads = warps * 32;
    let split = Split::new(g.vt, warps);
    let (ss, ks) = (g.step_stride(), g.key_stride());
    // Row strides (entries) of S and U in shared memory, and bytes of U' entries and rows.
    let vs = g.vt + 8;
    let eb = entry_bytes(g.storage);
    let upb = upre_row_bytes(g.vt, g.storage);
    let names = ["w", "khat", "upre", "decay", "state_in", "states", "u", "steps"];
    let ([wmat, khat, upre, decay, state_in, states, u, steps], flags) = w.params_and_flags(names);
    let (col0, seq) = w.value_tile_and_sequence(g.vt);
    w.e.comment("W, K-hat^T, S, U (bf16), U' (the storage type) and the state rows' staging in the dynamic shared window");
    // Each bf16 array's lo plane (when split) right after it: these are the offsets.
    let (w_lo, kh_lo, st_lo, ut_lo) = (CHUNK * ks * 2, g.kp * ss * 2, g.kp * vs * 2, CHUNK * vs * 2);
    let planes = planes(g.products);
    let split_operands = g.split();
    let lo = |a: usize, b: usize| split_operands.then_some((a, b));
    let stage_bytes = state_stage_bytes(g, warps);
    let [ws, kh, st, ut, up, stage] = w.window_arrays(STATES_WINDOW, [w_lo * planes, kh_lo * planes, st_lo * planes, ut_lo * planes, CHUNK * upb, stage_bytes]);
    let gated = g.shape.decay != ChunkDecay::None;
    let nchunks = w.chunk_count(steps);
    let (row0, arow, acol) = w.warp_fragment_rows();
    let (keys, s64, acc) = initial_state(&mut w, g, flags, state_in, seq, row0, col0);
    // This warp's S rows into st, and the ldmatrix addresses of S += K-hat^T U.
    let s_store = w.bf16_addr(st, arow, vs, acol);
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    let khat_lane = w.ldmatrix_lane_at(kh, row0, ss, zero);
    let u_lane = w.ldmatrix_lane_at(ut, zero, vs, zero);
    // The byte offset of this block's value tile in a row of U'.
    let up_col = w.e.reg(Class::B64);
    w.e.ins(format!("mul.wide.u32 {up_col}, {col0}, {eb}"));
    // W's and K-hat^T's planes are consecutive rows in global and in shared memory.
    let copy_w = AsyncCopy::new(&mut w, threads, g.kp * 2, ws, ks * 2, CHUNK * planes, g.kp * 2);
    let copy_upre = AsyncCopy::new(&mut w, threads, vp * eb, up, upb, CHUNK, g.vt * eb);
    let copy_khat = AsyncCopy::new(&mut w, threads, CHUNK * 2, kh, ss * 2, g.kp * planes, CHUNK * 2);
    let chunk = w.e.reg(Class::B32);
    // Copies chunk `c`'s W and U' (`first`) or K-hat^T into shared memory, as one
    // cp.async group; an empty group past the last chunk keeps the count.
    let prefetch = |w: &mut Writer, c: Reg, first: bool| {
        let skip = w.e.label(if first { "no_next_w" } else { "no_next_khat" });
        let c64 = w.e.reg(Class::B64);
        let past = w.e.reg(Class::Pred);
        w.e.ins(format!("cvt.u64.u32 {c64}, {c}"));
        w.e.ins(format!("setp.ge.u64 {past}, {c64}, {nchunks}"));
        w.e.ins(format!("@{past} bra.uni {skip}"));
        let m = chunk_matrix(w, seq, c, nchunks);
        if first {
            let src = operand_addr(w, wmat, m, operand_bytes(g.kp, g.products));
            copy_w.issue(w, src);
            let src = operand_addr(w, upre, m, CHUNK * vp * eb);
            w.e.ins(format!("add.u64 {src}, {src}, {up_col}"));
            copy_upre.issue(w, src);
        } else {
            let src = operand_addr(w, khat, m, operand_bytes(g.kp, g.products));
            copy_khat.issue(w, src);
        }
        w.e.place(&skip);
        w.e.ins("cp.async.commit_group");
    };
    w.e.comment("chunk 0's W and U', then its K-hat^T, in flight");
    w.e.ins(format!("mov.u32 {chunk}, 0"));
    prefetch(&mut w, chunk, true);
    prefetch(&mut w, chunk, false);

    let (top, done) = state_loop_head(&mut w, g, &acc, (states, s64, nchunks), chunk, (row0, keys, col0), (stage_bytes > 0).then_some(stage));
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    let m = chunk_matrix(&mut w, seq, chunk, nchunks);
    let d = gated.then(|| {
        let d = w.e.reg(Class::F32);
        let a = w.f32_addr(decay, m);
        w.e.ins(format!("ld.global.nc.f32 {d}, [{a}]"));
        d
    });
    w.e.comment("S (bf16) into st; wait for W and U'");
    store_rows(&mut w, &acc, s_store, vs, split_operands.then_some(st_lo));
    w.e.ins("cp.async.wait_group 1");
    w.e.ins("bar.sync 0");
    w.e.comment("U = U' + W S: to u, and into ut");
    per_item(&mut w, split.items(), warps, "pseudo", |w, item| {
        let (r0, c) = split.position(w, item);
        let r = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {r}, {r0}, {}", w.gq));
        let w_lane = w.ldmatrix_lane_at(ws, r0, ks, zero);
        let s_lane = w.ldmatrix_lane_at(st, zero, vs, c);
        // U' entries (row r (+8), column c + 8 nt + 2 cq (+1)) from up.
        let col = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {col}, {c}, {acol}"));
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("mul.lo.u32 {at}, {col}, {eb}"));
        w.e.ins(format!("mad.lo.u32 {at}, {r}, {upb}, {at}"));
        w.e.ins(format!("add.u32 {at}, {at}, {up}"));
        let us: Vec<[Reg; 4]> = (0..split.tiles)
            .map(|nt| {
                let t = [(); 4].map(|_| w.e.reg(Class::F32));
                for half in 0..2 {
                    let offset = half * 8 * upb + 8 * nt * eb;
                    let (lo, hi) = (t[2 * half], t[2 * half + 1]);
                    match g.storage {
                        Storage::F32 => w.e.ins(format!("ld.shared.v2.f32 {{{lo}, {hi}}}, [{at}+{offset}]")),
                        Storage::Bf16 => {
                            let pair = w.e.reg(Class::B32);
                            w.e.ins(format!("ld.shared.b32 {pair}, [{at}+{offset}]"));
                            unpack_pair(w, pair, lo, hi);
                        }
                    }
                }
                t
            })
            .collect();
        ldmatrix_product(w, &us, w_lane, (s_lane, vs, BLayout::KRows), g.kp, lo(w_lo, st_lo));
        let ucol = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {ucol}, {col0}, {c}"));
        tile_io(w, g, &us, u, pos.row_base, r0, pos.n, ucol, TileIo::Store(g.storage));
        let at = w.bf16_addr(ut, r, vs, col);
        store_rows(w, &us, at, vs, split_operands.then_some(ut_lo));
    });
    w.e.ins("bar.sync 0");
    w.e.comment("the next chunk's W and U' in flight; wait for K-hat^T");
    let next = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {next}, {chunk}, 1"));
    prefetch(&mut w, next, true);
    w.e.ins("cp.async.wait_group 1");
    w.e.ins("bar.sync 0");
    if let Some(d) = d {
        w.e.comment("S = exp(L_last) S");
        for a in &acc {
            for r in a {
                w.e.ins(format!("mul.rn.f32 {r}, {r}, {d}"));
            }
        }
    }
    w.e.comment("S += K-hat^T U");
    ldmatrix_product(&mut w, &acc, khat_lane, (u_lane, vs, BLayout::KRows), CHUNK, lo(kh_lo, ut_lo));
    w.e.ins("bar.sync 0");
    w.e.comment("the next chunk's K-hat^T in flight");
    prefetch(&mut w, next, false);
    w.e.ins(format!("mov.u32 {chunk}, {next}"));
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
    w.finish_flagged("psm_cwd_states", &names)
}
