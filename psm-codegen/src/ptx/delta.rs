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
//! T = (I + L)⁻¹ depends only on the chunk's own steps, so it is computed for every
//! chunk at once; only U = T (V − diag(β e^Λ) B S₀) waits for the chunk's entering
//! state. Three kernels:
//!
//! ```text
//! psm_cwd_inverse(k, b, beta, g, inverse, steps)
//!     grid (nchunks, nseq), 128 threads
//!     inverse[s, c] = T of chunk c, [C, C] f32: the Gram matrix B Kᵀ on tensor cores,
//!     then forward substitution in f32, one thread per column of T held in registers
//! psm_cwd_states(k, b, beta, g, inverse, v, state_in, states, u, steps, flags: u32)
//!     grid (⌈values / vtile⌉, nseq), 32 · ⌈keys / 16⌉ threads (one warp per 16 keys)
//!     states[s, c] = S entering chunk c (c = 0 ..= nchunks), u = the pseudo-values;
//!     per chunk: R = V − diag(β e^Λ) (B S), U = T R, S ← e^(Λ_last) S + K̂ᵀ U
//! psm_cw_outputs(q, k, u, g, states, out, steps, flags)   (ptx::chunkwise's, over U)
//! ```
//!
//! Buffers are row-major f32 as in `ptx::chunkwise`; `b` is `[nseq, steps, keys]`,
//! `beta` `[nseq, steps]`, `inverse` `[nseq, nchunks, C, C]`, `u` `[nseq, steps,
//! values]`. Steps past a sequence's end have zero keys, b and β, so their rows of T
//! are the identity's and their pseudo-values 0.

use std::fmt::Write;

use super::chunkwise::{
    chunk_pos, compile_chunkwise, f32_imm, stage_rows, stage_transposed, tile_io, ChunkDecay, ChunkwiseModule, ChunkwiseShape, Geometry, Scale,
    Unsupported, Writer, CHUNK, STATIC_SHARED,
};
use super::emit::{Class, Reg};
use super::HAS_STATE;

/// Threads per block of `psm_cwd_inverse` (one warp per 16 rows of the Gram matrix;
/// the first C threads substitute, one column of T each).
pub const INVERSE_THREADS: u32 = (CHUNK / 16 * 32) as u32;

/// Shared bytes of `psm_cwd_states`: B rows `[C][kp + 8]` sharing their space with
/// K̂ᵀ `[kp][C + 8]`, T `[C][C + 8]`, Sᵀ `[vt][kp + 8]` sharing with Uᵀ `[vt][C + 8]`,
/// Rᵀ `[vt][C + 8]` in bf16, and three f32 arrays of C (raw and cumulative log
/// decays, β e^Λ).
fn states_shared_bytes(kp: usize, vt: usize) -> usize {
    let (c, step_stride, key_stride) = (CHUNK, CHUNK + 8, kp + 8);
    let halves = (c * key_stride).max(kp * step_stride) + c * step_stride + (vt * key_stride).max(vt * step_stride) + vt * step_stride;
    halves * 2 + 3 * c * 4
}

/// The delta rule's kernels for one state field: `psm_cwd_inverse`, `psm_cwd_states`,
/// and `ptx::chunkwise`'s module for the same shape (whose `psm_cw_outputs` reads the
/// pseudo-values; its `psm_cw_states` is not used). `shape.decay` is the gate's
/// (`None` for DeltaNet); the value tile is the chunkwise module's.
pub fn compile_delta(shape: ChunkwiseShape, arch: u32) -> Result<ChunkwiseModule, Unsupported> {
    let mut m = compile_chunkwise(shape, arch)?;
    let g = Geometry { keys: shape.keys, kp: shape.keys.div_ceil(16) * 16, values: shape.values, vt: m.value_tile, shape };
    let bytes = states_shared_bytes(g.kp, g.vt);
    if bytes > STATIC_SHARED {
        return Err(Unsupported(format!("the delta rule's state kernel needs {bytes} bytes of shared memory at {} keys", shape.keys)));
    }
    let _ = writeln!(m.text, "\n// the delta rule's kernels (WY/UT form)");
    m.text.push_str(&inverse_kernel(&g));
    m.text.push('\n');
    m.text.push_str(&states_kernel(&g));
    Ok(m)
}

/// `seq`, `chunk` and the chunk count as 64-bit values, and the row index of
/// `inverse[seq, chunk]`'s first row.
fn inverse_rows(w: &mut Writer, seq: Reg, chunk: Reg, nchunks: Reg) -> Reg {
    let s64 = w.e.reg(Class::B64);
    let c64 = w.e.reg(Class::B64);
    let rows = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
    w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
    w.e.ins(format!("mad.lo.u64 {rows}, {s64}, {nchunks}, {c64}"));
    w.e.ins(format!("mul.lo.u64 {rows}, {rows}, {CHUNK}"));
    rows
}

/// `dst[t] = β_t` (0 past the chunk's `n` steps), times e^(Λ_t) when `lam` is given.
fn beta_row(w: &mut Writer, threads: usize, beta: Reg, row_base: Reg, n: Reg, dst: Reg, lam: Option<Reg>) {
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
        if let Some(lam) = lam {
            let l = w.lam_at(lam, t);
            let f = w.exp(l);
            w.e.ins(format!("mul.rn.f32 {x}, {x}, {f}"));
        }
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("mad.lo.u32 {at}, {t}, 4, {dst}"));
        w.e.ins(format!("st.shared.f32 [{at}], {x}"));
    });
}

/// The f32 entry `base[t]` of a shared array.
fn shared_f32(w: &mut Writer, base: Reg, t: Reg) -> Reg {
    let a = w.e.reg(Class::B32);
    let x = w.e.reg(Class::F32);
    w.e.ins(format!("mad.lo.u32 {a}, {t}, 4, {base}"));
    w.e.ins(format!("ld.shared.f32 {x}, [{a}]"));
    x
}

/// Stores accumulator tiles transposed into a shared bf16 array: entry (row, col) of
/// the tiles at `[col][row]` (row stride `stride`), `addr` at row `row0 + gq`, column
/// `2 · cq` of the first tile.
fn store_transposed(w: &mut Writer, acc: &[[Reg; 4]], addr: Reg, stride: usize) {
    for (nt, tile) in acc.iter().enumerate() {
        for (r, x) in tile.iter().enumerate() {
            let h = w.e.reg(Class::B16);
            w.e.ins(format!("cvt.rn.bf16.f32 {h}, {x}"));
            let offset = ((8 * nt + r % 2) * stride + 8 * (r / 2)) * 2;
            w.e.ins(format!("st.shared.b16 [{addr}+{offset}], {h}"));
        }
    }
}

fn inverse_kernel(g: &Geometry) -> String {
    let mut w = Writer::new();
    let threads = INVERSE_THREADS as usize;
    let params = ["k", "b", "beta", "g", "inverse", "steps"];
    let k = w.param("k");
    let b = w.param("b");
    let beta = w.param("beta");
    let gate = w.param("g");
    let inverse = w.param("inverse");
    let steps = w.param("steps");
    let (chunk, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {chunk}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    // B's rows, later L (f32 [C][C]) once the Gram product has read them.
    let bs = w.shared("bs", (CHUNK * g.key_stride() * 2).max(CHUNK * CHUNK * 4));
    let ks = w.shared("ks", CHUNK * g.key_stride() * 2);
    let betas = w.shared("betas", CHUNK * 4);
    let decayed = g.shape.decay != ChunkDecay::None;
    let lam = if decayed {
        let raw = w.shared("raw", CHUNK * 4);
        let lam = w.shared("lam", CHUNK * 4);
        Some((raw, lam))
    } else {
        None
    };
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    if let Some((raw, lam)) = lam {
        w.cumulative_decay(g, threads, gate, pos.row_base, pos.n, raw, lam);
    }
    w.e.comment("stage B and K (the key contiguous), beta");
    beta_row(&mut w, threads, beta, pos.row_base, pos.n, betas, None);
    stage_rows(&mut w, g, threads, b, pos.row_base, pos.n, bs, "stage_b");
    stage_rows(&mut w, g, threads, k, pos.row_base, pos.n, ks, "stage_k");
    w.e.ins("bar.sync 0");
    let row0 = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {row0}, {}, 4", w.warp));
    let arow = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {arow}, {row0}, {}", w.gq));
    let acol = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {acol}, {}, 1", w.cq));
    let b_addr = w.bf16_addr(bs, arow, g.key_stride(), acol);
    let k_addr = w.bf16_addr(ks, w.gq, g.key_stride(), acol);
    let gram = w.zeros(CHUNK / 8);
    w.e.comment("G = B K^T");
    for kk in 0..g.kp / 16 {
        let a = w.a_fragment(b_addr, g.key_stride(), 16 * kk);
        for (pt, t) in gram.iter().enumerate() {
            let f = w.b_fragment(k_addr, g.key_stride(), 8 * pt, 16 * kk);
            w.mma(t, &a, &f);
        }
    }
    w.e.ins("bar.sync 0");
    w.e.comment("-L into bs (f32 [C][C]): -beta_t exp(L_t - L_s) G_ts for s < t, else 0");
    let rows = [arow, w.e.reg(Class::B32)];
    w.e.ins(format!("add.u32 {}, {arow}, 8", rows[1]));
    let betas_t = rows.map(|r| shared_f32(&mut w, betas, r));
    let lam_t = lam.map(|(_, lam)| rows.map(|r| w.lam_at(lam, r)));
    let store = w.e.reg(Class::B32);
    w.e.ins(format!("mad.lo.u32 {store}, {arow}, {CHUNK}, {acol}"));
    w.e.ins(format!("mad.lo.u32 {store}, {store}, 4, {bs}"));
    for (pt, t) in gram.iter().enumerate() {
        for (j, x) in t.iter().enumerate() {
            let tau = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {tau}, {}, 2, {}", w.cq, 8 * pt + j % 2));
            let keep = w.e.reg(Class::Pred);
            w.e.ins(format!("setp.lt.u32 {keep}, {tau}, {}", rows[j / 2]));
            w.e.ins(format!("mul.rn.f32 {x}, {x}, {}", betas_t[j / 2]));
            if let (Some(lt), Some((_, lam))) = (lam_t, lam) {
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
    w.e.comment("forward substitution: thread j < C holds column j of T = (I + L)^-1,");
    w.e.comment("T_tj = [t == j] - sum(s < t) L_ts T_sj, reading -L's rows four at a time");
    let done = w.e.label("substituted");
    let idle = w.e.reg(Class::Pred);
    w.e.ins(format!("setp.ge.u32 {idle}, {}, {CHUNK}", w.tid));
    w.e.ins(format!("@{idle} bra {done}"));
    let mut column: Vec<Reg> = Vec::with_capacity(CHUNK);
    let one = f32_imm(1.0);
    for t in 0..CHUNK {
        let x = w.e.reg(Class::F32);
        let diagonal = w.e.reg(Class::Pred);
        w.e.ins(format!("setp.eq.u32 {diagonal}, {}, {t}", w.tid));
        w.e.ins(format!("selp.f32 {x}, {one}, 0f00000000, {diagonal}"));
        for s0 in (0..t).step_by(4) {
            let l = [(); 4].map(|_| w.e.reg(Class::F32));
            w.e.ins(format!("ld.shared.v4.f32 {{{}, {}, {}, {}}}, [{bs}+{}]", l[0], l[1], l[2], l[3], (t * CHUNK + s0) * 4));
            for (s, l) in (s0..t.min(s0 + 4)).zip(l) {
                w.e.ins(format!("fma.rn.f32 {x}, {l}, {}, {x}", column[s]));
            }
        }
        column.push(x);
    }
    w.e.comment("inverse[seq, chunk] column j");
    let nchunks = w.chunk_count(steps);
    let first = inverse_rows(&mut w, seq, chunk, nchunks);
    let j64 = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {j64}, {}", w.tid));
    w.e.ins(format!("mad.lo.u64 {first}, {first}, {CHUNK}, {j64}"));
    let addr = w.f32_addr(inverse, first);
    for (t, x) in column.iter().enumerate() {
        w.e.ins(format!("st.global.f32 [{addr}+{}], {x}", t * CHUNK * 4));
    }
    w.e.place(&done);
    w.finish("psm_cwd_inverse", &params)
}

/// A runtime loop over the work items `warp, warp + warps, ... < items` of a block's
/// warps; `body` gets the item.
fn per_item(w: &mut Writer, items: usize, warps: usize, what: &str, body: impl FnOnce(&mut Writer, Reg)) {
    let item = w.e.reg(Class::B32);
    let p = w.e.reg(Class::Pred);
    let top = w.e.label(what);
    let done = w.e.label(&format!("{what}_done"));
    w.e.ins(format!("mov.u32 {item}, {}", w.warp));
    w.e.place(&top);
    w.e.ins(format!("setp.ge.u32 {p}, {item}, {items}"));
    w.e.ins(format!("@{p} bra.uni {done}"));
    body(w, item);
    w.e.ins(format!("add.u32 {item}, {item}, {warps}"));
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
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

fn states_kernel(g: &Geometry) -> String {
    let mut w = Writer::new();
    let warps = g.kp / 16;
    let threads = warps * 32;
    let split = Split::new(g.vt, warps);
    let params = ["k", "b", "beta", "g", "inverse", "v", "state_in", "states", "u", "steps", "flags"];
    let k = w.param("k");
    let b = w.param("b");
    let beta = w.param("beta");
    let gate = w.param("g");
    let inverse = w.param("inverse");
    let v = w.param("v");
    let state_in = w.param("state_in");
    let states = w.param("states");
    let u = w.param("u");
    let steps = w.param("steps");
    let flags = w.e.reg(Class::B32);
    w.e.ins(format!("ld.param.u32 {flags}, [flags]"));
    let (vtile, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {vtile}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    let col0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {col0}, {vtile}, {}", g.vt));
    let (ss, ks) = (g.step_stride(), g.key_stride());
    // B's rows, then K-hat^T; S^T, then U^T.
    let bk = w.shared("bk", (CHUNK * ks).max(g.kp * ss) * 2);
    let ts = w.shared("ts", CHUNK * ss * 2);
    let su = w.shared("su", (g.vt * ks).max(g.vt * ss) * 2);
    let rt = w.shared("rt", g.vt * ss * 2);
    let coef = w.shared("coef", CHUNK * 4);
    let decayed = g.shape.decay != ChunkDecay::None;
    let (raw, lam) = if decayed { (Some(w.shared("raw", CHUNK * 4)), Some(w.shared("lam", CHUNK * 4))) } else { (None, None) };
    let nchunks = w.chunk_count(steps);
    let row0 = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {row0}, {}, 4", w.warp));
    let keys = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {keys}, {}", g.keys));
    let chunk_rows = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {chunk_rows}, {CHUNK}"));
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
    tile_io(&mut w, g, &acc, state_in, first, row0, keys, col0, false);
    w.e.place(&no_state);
    let arow = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {arow}, {row0}, {}", w.gq));
    let acol = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {acol}, {}, 1", w.cq));
    // This warp's S rows transposed into su, and the fragments of S += K-hat^T U.
    let s_store = w.bf16_addr(su, acol, ks, arow);
    let khat_addr = w.bf16_addr(bk, arow, ss, acol);
    let u_addr = w.bf16_addr(su, w.gq, ss, acol);
    // T staged as a [C, C] array of rows.
    let tg = Geometry { keys: CHUNK, kp: CHUNK, values: g.values, vt: g.vt, shape: g.shape };

    let chunk = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {chunk}, 0"));
    let top = w.e.label("chunk");
    let done = w.e.label("chunks_done");
    w.e.place(&top);
    let c64 = w.e.reg(Class::B64);
    w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
    w.e.comment("states[seq, chunk] = S entering the chunk");
    let matrix = w.state_matrix(g, s64, nchunks, c64);
    tile_io(&mut w, g, &acc, states, matrix, row0, keys, col0, true);
    let end = w.e.reg(Class::Pred);
    w.e.ins(format!("setp.ge.u64 {end}, {c64}, {nchunks}"));
    w.e.ins(format!("@{end} bra.uni {done}"));
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    let last = if let (Some(raw), Some(lam)) = (raw, lam) {
        w.cumulative_decay(g, threads, gate, pos.row_base, pos.n, raw, lam);
        let at = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {at}, {lam}, {}", 4 * (CHUNK - 1)));
        let l = w.e.reg(Class::F32);
        w.e.ins(format!("ld.shared.f32 {l}, [{at}]"));
        Some(l)
    } else {
        None
    };
    w.e.comment("coef = beta * exp(L); S^T into su; stage B (the key contiguous) and T");
    beta_row(&mut w, threads, beta, pos.row_base, pos.n, coef, lam);
    store_transposed(&mut w, &acc, s_store, ks);
    stage_rows(&mut w, g, threads, b, pos.row_base, pos.n, bk, "stage_b");
    let t_rows = inverse_rows(&mut w, seq, chunk, nchunks);
    stage_rows(&mut w, &tg, threads, inverse, t_rows, chunk_rows, ts, "stage_t");
    w.e.ins("bar.sync 0");
    w.e.comment("R = V - coef_t (B S), into rt transposed");
    per_item(&mut w, split.items(), warps, "residual", |w, item| {
        let (r0, c) = split.position(w, item);
        let r = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {r}, {r0}, {}", w.gq));
        let a_addr = w.bf16_addr(bk, r, ks, acol);
        let n0 = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {n0}, {c}, {}", w.gq));
        let s_addr = w.bf16_addr(su, n0, ks, acol);
        let bs = w.zeros(split.tiles);
        for kk in 0..g.kp / 16 {
            let a = w.a_fragment(a_addr, ks, 16 * kk);
            for (nt, t) in bs.iter().enumerate() {
                let f = w.b_fragment(s_addr, ks, 8 * nt, 16 * kk);
                w.mma(t, &a, &f);
            }
        }
        let vals = w.zeros(split.tiles);
        let vcol = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {vcol}, {col0}, {c}"));
        tile_io(w, g, &vals, v, pos.row_base, r0, pos.n, vcol, false);
        let r8 = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {r8}, {r}, 8"));
        let f = [r, r8].map(|row| {
            let x = shared_f32(w, coef, row);
            w.e.ins(format!("neg.f32 {x}, {x}"));
            x
        });
        for (vt, bt) in vals.iter().zip(&bs) {
            for (e, (x, y)) in vt.iter().zip(bt).enumerate() {
                w.e.ins(format!("fma.rn.f32 {x}, {}, {y}, {x}", f[e / 2]));
            }
        }
        let col = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {col}, {c}, {acol}"));
        let at = w.bf16_addr(rt, col, ss, r);
        store_transposed(w, &vals, at, ss);
    });
    w.e.ins("bar.sync 0");
    w.e.comment("stage (K * exp(L_last - L))^T over B; U = T R, to u and transposed into su");
    let scale = |w: &mut Writer, t: Reg| -> Reg {
        let (lam, last) = (lam.expect("decayed"), last.expect("decayed"));
        let x = w.lam_at(lam, t);
        let d = w.e.reg(Class::F32);
        w.e.ins(format!("sub.rn.f32 {d}, {last}, {x}"));
        w.exp(d)
    };
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    let scale_ref: Scale<'_> = if decayed { Some(&scale) } else { None };
    stage_transposed(&mut w, g, threads, k, pos.row_base, pos.n, g.keys, zero, g.kp, bk, scale_ref, "stage_khat");
    per_item(&mut w, split.items(), warps, "pseudo", |w, item| {
        let (r0, c) = split.position(w, item);
        let r = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {r}, {r0}, {}", w.gq));
        let a_addr = w.bf16_addr(ts, r, ss, acol);
        let n0 = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {n0}, {c}, {}", w.gq));
        let r_addr = w.bf16_addr(rt, n0, ss, acol);
        let us = w.zeros(split.tiles);
        for kk in 0..CHUNK / 16 {
            let a = w.a_fragment(a_addr, ss, 16 * kk);
            for (nt, t) in us.iter().enumerate() {
                let f = w.b_fragment(r_addr, ss, 8 * nt, 16 * kk);
                w.mma(t, &a, &f);
            }
        }
        let ucol = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {ucol}, {col0}, {c}"));
        tile_io(w, g, &us, u, pos.row_base, r0, pos.n, ucol, true);
        let col = w.e.reg(Class::B32);
        w.e.ins(format!("add.u32 {col}, {c}, {acol}"));
        let at = w.bf16_addr(su, col, ss, r);
        store_transposed(w, &us, at, ss);
    });
    w.e.ins("bar.sync 0");
    if let Some(last) = last {
        w.e.comment("S = exp(L_last) S");
        let f = w.exp(last);
        for a in &acc {
            for r in a {
                w.e.ins(format!("mul.rn.f32 {r}, {r}, {f}"));
            }
        }
    }
    w.e.comment("S += (scaled K)^T U");
    for kk in 0..CHUNK / 16 {
        let a = w.a_fragment(khat_addr, ss, 16 * kk);
        for (nt, t) in acc.iter().enumerate() {
            let f = w.b_fragment(u_addr, ss, 8 * nt, 16 * kk);
            w.mma(t, &a, &f);
        }
    }
    w.e.ins("bar.sync 0");
    w.e.ins(format!("add.u32 {chunk}, {chunk}, 1"));
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
    w.finish("psm_cwd_states", &params)
}
