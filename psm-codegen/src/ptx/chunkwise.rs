//! Tensor-core kernels of the chunkwise-parallel form (psm-ir's `derive::chunkwise`)
//! for state fields with no decay or a scalar decay: `mma.sync.m16n8k16` with bf16
//! operands and f32 accumulators (sm_80 and later), the state kept in f32.
//!
//! Per sequence s and state field S[keys, values], with C = [`CHUNK`] steps per chunk,
//! Λ_t the cumulative log decay from the chunk's start through step t (0 without a
//! decay), and e_t = Λ_t for an inclusive readout, Λ_(t−1) (Λ_(−1) = 0) for an
//! exclusive one:
//!
//! ```text
//! psm_cw_states(k, v, g, state_in, states, steps, flags: u32)
//!     grid (⌈values / vtile⌉, nseq), 32 · ⌈keys / 16⌉ threads (one warp per 16 keys)
//!     states[s, c] = S entering chunk c, for c = 0 ..= nchunks (the last: the final state)
//!     S ← e^(Λ_last) S + (K ⊙ e^(Λ_last − Λ))ᵀ V            chunk by chunk
//! psm_cw_outputs(q, k, v, g, states, out, steps, flags: u32)
//!     grid (⌈values / vtile⌉, nchunks, nseq), 128 threads (one warp per 16 steps)
//!     out_t = e^(e_t) q_tᵀ S_c + Σ_(τ ≤ t, or τ < t) e^(e_t − Λ_τ) (q_t · k_τ) v_τ
//! ```
//!
//! Buffers are f32, row-major: `k`, `q` `[nseq, steps, keys]`; `v`, `out` `[nseq, steps,
//! values]`; `g` `[nseq, steps]`, the per-step log decay ([`Gate::Log`]) or the decay
//! itself ([`Gate::Value`], whose natural log the kernels take); `state_in` `[nseq, keys,
//! values]` (read with [`HAS_STATE`]); `states` `[nseq, nchunks + 1, keys, values]`.
//! Steps past the sequence's end are zero keys and values with no decay.
//!
//! In the emitted comments (PTX is ASCII), L is Λ and s a column step τ.
//!
//! Both kernels stage their operands in shared memory as bf16 (rounded to nearest),
//! laid out with the products' reduction index contiguous and rows padded by 8 entries,
//! so that every fragment is one 32-bit load without bank conflicts; the intra-chunk
//! scores Q Kᵀ stay in registers, are masked and decayed pair by pair
//! (e^(e_t − Λ_τ): no factor can overflow), and are reused as the A operand of the
//! product with V, as their accumulator layout allows. Exponentials and logs are
//! `ex2.approx` / `lg2.approx` (relative error about 2⁻²²), far below bf16's rounding.
//!
//! [`Gate::Log`]: psm_ir::derive::chunkwise::Gate::Log
//! [`Gate::Value`]: psm_ir::derive::chunkwise::Gate::Value

use std::fmt::Write;

use super::emit::{Class, Emitter, Reg};
use super::HAS_STATE;

/// Steps per chunk.
pub const CHUNK: usize = 64;
/// Threads per block of `psm_cw_outputs` (one warp per 16 steps of the chunk).
pub const OUTPUT_THREADS: u32 = (CHUNK / 16 * 32) as u32;
/// Most keys of a state field (one warp per 16 keys in `psm_cw_states`, at most 8).
pub const MAX_KEYS: usize = 128;
/// Most values of a state field a block covers; wider fields take several blocks.
pub const MAX_VALUE_TILE: usize = 64;

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
}

/// The two kernels' module and launch geometry.
#[derive(Debug, Clone)]
pub struct ChunkwiseModule {
    pub text: String,
    pub shape: ChunkwiseShape,
    /// Values per block (`grid.x = ⌈values / value_tile⌉`).
    pub value_tile: usize,
    /// Threads per block of `psm_cw_states`.
    pub state_threads: u32,
}

/// Why a state field has no tensor-core kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// Entries each thread has in flight while staging.
const BATCH: usize = 8;

/// Static shared memory a block may declare.
pub(super) const STATIC_SHARED: usize = 48 * 1024;

/// Shared bytes of `psm_cw_outputs`: Q and K `[CHUNK][kp + 8]`, Vᵀ `[vt][CHUNK + 8]`,
/// S_cᵀ `[vt][kp + 8]` in bf16, and two f32 arrays of CHUNK log decays.
fn output_shared_bytes(kp: usize, vt: usize) -> usize {
    (2 * CHUNK * (kp + 8) + vt * (CHUNK + 8) + vt * (kp + 8)) * 2 + 2 * CHUNK * 4
}

/// Keys rounded up to the mma's 16.
pub(super) fn padded_keys(keys: usize) -> usize {
    keys.div_ceil(16) * 16
}

/// The kernels of one state field for `arch` (compute capability × 10, at least 80).
pub fn compile_chunkwise(shape: ChunkwiseShape, arch: u32) -> Result<ChunkwiseModule, Unsupported> {
    if arch < 80 {
        return Err(Unsupported(format!("bf16 tensor-core products need sm_80 or later, not sm_{arch}")));
    }
    if shape.keys == 0 || shape.values == 0 {
        return Err(Unsupported("a state field without entries".into()));
    }
    if shape.keys > MAX_KEYS {
        return Err(Unsupported(format!("{} keys: the state kernel keeps at most {MAX_KEYS} keys in one block", shape.keys)));
    }
    let kp = padded_keys(shape.keys);
    // The widest value tile (a multiple of 8) whose output kernel fits a block's 48 KiB
    // of static shared memory.
    let mut value_tile = shape.values.div_ceil(8).min(MAX_VALUE_TILE / 8) * 8;
    while value_tile > 8 && output_shared_bytes(kp, value_tile) > STATIC_SHARED {
        value_tile = (value_tile / 2).div_ceil(8) * 8;
    }
    let g = Geometry { keys: shape.keys, kp, values: shape.values, vt: value_tile, shape };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "// psm chunkwise kernels: keys {}, values {}, decay {:?}, {} readout, chunk {CHUNK}, value tile {value_tile}",
        shape.keys,
        shape.values,
        shape.decay,
        if shape.exclusive { "exclusive" } else { "inclusive" }
    );
    // mma.sync with bf16 and cvt.rn.bf16(x2).f32 need PTX 7.0; 7.8 for sm_90 as the ABI.
    let version = if arch >= 90 { "7.8" } else { "7.0" };
    let _ = writeln!(text, ".version {version}\n.target sm_{arch}\n.address_size 64\n");
    text.push_str(&states_kernel(&g));
    text.push('\n');
    text.push_str(&outputs_kernel(&g));
    Ok(ChunkwiseModule { text, shape, value_tile, state_threads: (g.kp / 16 * 32) as u32 })
}

pub(super) struct Geometry {
    pub(super) keys: usize,
    /// Keys padded to 16.
    pub(super) kp: usize,
    pub(super) values: usize,
    /// Values per block.
    pub(super) vt: usize,
    pub(super) shape: ChunkwiseShape,
}

impl Geometry {
    /// Row stride (entries) of operands whose reduction index is the step: C + 8.
    pub(super) fn step_stride(&self) -> usize {
        CHUNK + 8
    }
    /// Row stride (entries) of operands whose reduction index is the key: keys + 8.
    pub(super) fn key_stride(&self) -> usize {
        self.kp + 8
    }
    fn decayed(&self) -> bool {
        self.shape.decay != ChunkDecay::None
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
        Writer { e, shared: String::new(), gq, cq, tid, warp }
    }

    /// A shared array of `bytes`; its 32-bit shared address in a register.
    pub(super) fn shared(&mut self, name: &str, bytes: usize) -> Reg {
        let _ = writeln!(self.shared, "\t.shared .align 16 .b8 {name}[{bytes}];");
        let r = self.e.reg(Class::B32);
        self.e.ins(format!("mov.u32 {r}, {name}"));
        r
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

    /// A bf16 pair at `addr + byte_offset`.
    pub(super) fn ld_pair(&mut self, addr: Reg, byte_offset: usize) -> Reg {
        let r = self.e.reg(Class::B32);
        self.e.ins(format!("ld.shared.b32 {r}, [{addr}+{byte_offset}]"));
        r
    }

    /// The A fragment (rows `row`, `row + 8`; columns `col`.., `col + 8`..) of a
    /// row-major bf16 array, at a column offset of `k0` entries.
    pub(super) fn a_fragment(&mut self, addr: Reg, stride: usize, k0: usize) -> [Reg; 4] {
        let down = 8 * stride * 2;
        [
            self.ld_pair(addr, 2 * k0),
            self.ld_pair(addr, down + 2 * k0),
            self.ld_pair(addr, 2 * (k0 + 8)),
            self.ld_pair(addr, down + 2 * (k0 + 8)),
        ]
    }

    /// The B fragment of an array stored `[n][k]` (`addr` at row n = 8·tile + gq, column
    /// 2·cq) at a reduction offset of `k0`, for the n-tile `tile_offset` rows further.
    pub(super) fn b_fragment(&mut self, addr: Reg, stride: usize, n0: usize, k0: usize) -> [Reg; 2] {
        let row = n0 * stride * 2;
        [self.ld_pair(addr, row + 2 * k0), self.ld_pair(addr, row + 2 * (k0 + 8))]
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
        let idx = self.e.reg(Class::B32);
        let p = self.e.reg(Class::Pred);
        let top = self.e.label(what);
        let done = self.e.label(&format!("{what}_done"));
        self.e.ins(format!("mov.u32 {idx}, {}", self.tid));
        self.e.place(&top);
        self.e.ins(format!("setp.ge.u32 {p}, {idx}, {total}"));
        self.e.ins(format!("@{p} bra {done}"));
        body(self, idx);
        self.e.ins(format!("add.u32 {idx}, {idx}, {threads}"));
        self.e.ins(format!("bra {top}"));
        self.e.place(&done);
    }

    /// Stages `total` f32 entries into shared bf16, `threads` at a time, `lanes` (1 or
    /// 4: one 16-byte load) per load and [`BATCH`] loads per thread in flight: every
    /// load of a batch is issued before the first store waits for one (a loop of one
    /// load per iteration is bound by the memory's latency). `load(entry, live)` gets
    /// the first entry of a load and returns its values (0 where `live` is false),
    /// their shared addresses and their step; `scale(step)`, when given, multiplies
    /// them.
    #[allow(clippy::type_complexity)]
    pub(super) fn staged(
        &mut self,
        total: usize,
        threads: usize,
        lanes: usize,
        what: &str,
        load: impl Fn(&mut Writer, Reg, Reg) -> (Vec<Reg>, Vec<Reg>, Reg),
        scale: Scale<'_>,
    ) {
        let loads = total / lanes;
        let batch = BATCH.min(loads.div_ceil(threads)).max(1);
        self.strided(loads, threads * batch, what, |w, base| {
            let mut pending = Vec::with_capacity(batch);
            for u in 0..batch {
                let idx = w.e.reg(Class::B32);
                let live = w.e.reg(Class::Pred);
                w.e.ins(format!("add.u32 {idx}, {base}, {}", u * threads));
                w.e.ins(format!("setp.lt.u32 {live}, {idx}, {loads}"));
                let entry = w.e.reg(Class::B32);
                w.e.ins(format!("mul.lo.u32 {entry}, {idx}, {lanes}"));
                let (xs, addrs, t) = load(w, entry, live);
                pending.push((xs, addrs, t, live));
            }
            for (xs, addrs, t, live) in pending {
                let s = scale.map(|f| f(w, t));
                for (x, addr) in xs.into_iter().zip(addrs) {
                    if let Some(s) = s {
                        w.e.ins(format!("mul.rn.f32 {x}, {x}, {s}"));
                    }
                    let h = w.e.reg(Class::B16);
                    w.e.ins(format!("cvt.rn.bf16.f32 {h}, {x}"));
                    w.e.ins(format!("@{live} st.shared.b16 [{addr}], {h}"));
                }
            }
        });
    }

    /// The (row, first column) of the load whose first entry is `entry` (a multiple of
    /// `lanes`) when staging `rows` rows transposed: load k = entry / lanes takes row
    /// k % rows and columns lanes · (k / rows) ...
    pub(super) fn transposed_position(&mut self, entry: Reg, lanes: usize, rows: usize) -> (Reg, Reg) {
        let k = self.e.reg(Class::B32);
        self.e.ins(format!("div.u32 {k}, {entry}, {lanes}"));
        let (group, row) = self.divmod(k, rows);
        self.e.ins(format!("mul.lo.u32 {group}, {group}, {lanes}"));
        (row, group)
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

    /// Loads `lanes` f32 (1, or 4 in one 16-byte load) at `base[(row_base + row) ·
    /// width + col]` when `row < rows`, `col < cols` and `live` (else 0): `row_base` is
    /// a 64-bit entry index; with 4 lanes, `width`, `cols` and `col` are multiples of 4.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load_or_zero(&mut self, base: Reg, row_base: Reg, row: Reg, rows: Reg, width: usize, col: Reg, cols: usize, live: Reg, lanes: usize) -> Vec<Reg> {
        let v: Vec<Reg> = (0..lanes).map(|_| self.e.reg(Class::F32)).collect();
        let p = self.e.reg(Class::Pred);
        let q = self.e.reg(Class::Pred);
        for x in &v {
            self.e.ins(format!("mov.f32 {x}, 0f00000000"));
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
        let a = self.f32_addr(base, index);
        if lanes == 4 {
            self.e.ins(format!("@{q} ld.global.nc.v4.f32 {{{}, {}, {}, {}}}, [{a}]", v[0], v[1], v[2], v[3]));
        } else {
            self.e.ins(format!("@{q} ld.global.nc.f32 {}, [{a}]", v[0]));
        }
        v
    }

    /// Λ of the current chunk into `lam` (f32 × CHUNK): the block's `threads` load each
    /// step's log decay (0 past the sequence's end) into `raw`, then each sums one
    /// step's prefix in step order. Ends with a barrier.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cumulative_decay(&mut self, g: &Geometry, threads: usize, gate: Reg, row_base: Reg, n: Reg, raw: Reg, lam: Reg) {
        let value = g.shape.decay == ChunkDecay::Value;
        self.strided(CHUNK, threads, "decay", |w, t| {
            let x = w.e.reg(Class::F32);
            w.e.ins(format!("mov.f32 {x}, 0f00000000"));
            let live = w.e.reg(Class::Pred);
            w.e.ins(format!("setp.lt.u32 {live}, {t}, {n}"));
            let t64 = w.e.reg(Class::B64);
            w.e.ins(format!("cvt.u64.u32 {t64}, {t}"));
            w.e.ins(format!("add.u64 {t64}, {t64}, {row_base}"));
            let a = w.f32_addr(gate, t64);
            w.e.ins(format!("@{live} ld.global.nc.f32 {x}, [{a}]"));
            if value {
                w.e.comment("the decay's natural log: lg2 * ln 2 (a padded step's 1 gives 0)");
                w.e.ins(format!("@!{live} mov.f32 {x}, 0f3F800000"));
                w.e.ins(format!("lg2.approx.ftz.f32 {x}, {x}"));
                w.e.ins(format!("mul.rn.f32 {x}, {x}, {}", f32_imm(LN2)));
            }
            let at = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {at}, {t}, 4, {raw}"));
            w.e.ins(format!("st.shared.f32 [{at}], {x}"));
        });
        self.e.ins("bar.sync 0");
        self.strided(CHUNK, threads, "prefix", |w, t| {
            let sum = w.e.reg(Class::F32);
            let u = w.e.reg(Class::B32);
            let last = w.e.reg(Class::B32);
            let q = w.e.reg(Class::Pred);
            let top = w.e.label("prefix_sum");
            w.e.ins(format!("mov.f32 {sum}, 0f00000000"));
            w.e.ins(format!("mov.u32 {u}, {raw}"));
            w.e.ins(format!("mad.lo.u32 {last}, {t}, 4, {raw}"));
            w.e.place(&top);
            let y = w.e.reg(Class::F32);
            w.e.ins(format!("ld.shared.f32 {y}, [{u}]"));
            w.e.ins(format!("add.rn.f32 {sum}, {sum}, {y}"));
            w.e.ins(format!("setp.lt.u32 {q}, {u}, {last}"));
            w.e.ins(format!("add.u32 {u}, {u}, 4"));
            w.e.ins(format!("@{q} bra {top}"));
            let out = w.e.reg(Class::B32);
            w.e.ins(format!("mad.lo.u32 {out}, {t}, 4, {lam}"));
            w.e.ins(format!("st.shared.f32 [{out}], {sum}"));
        });
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
        let a = self.e.reg(Class::B32);
        let x = self.e.reg(Class::F32);
        self.e.ins(format!("mad.lo.u32 {a}, {t}, 4, {lam}"));
        self.e.ins(format!("ld.shared.f32 {x}, [{a}]"));
        x
    }

    pub(super) fn finish(self, name: &str, params: &[&str]) -> String {
        let mut text = format!(".visible .entry {name}(\n");
        for (k, p) in params.iter().enumerate() {
            let sep = if k + 1 < params.len() { "," } else { "" };
            let ty = if *p == "flags" { ".u32" } else { ".u64" };
            let _ = writeln!(text, "\t.param {ty} {p}{sep}");
        }
        text.push_str(")\n{\n");
        text.push_str(&self.shared);
        text.push_str(&self.e.finish());
        text.push_str("\tret;\n}\n");
        text
    }
}

/// A per-step factor computed from the step index, when staging scales.
pub(super) type Scale<'a> = Option<&'a dyn Fn(&mut Writer, Reg) -> Reg>;

/// Stages `CHUNK` steps of a `[steps, width]` f32 array transposed into a bf16 array
/// `[width_tile][CHUNK + 8]` (the step contiguous): entry (t, col0 + j) at row j,
/// column t, times `scale(t)` when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_transposed(
    w: &mut Writer,
    g: &Geometry,
    threads: usize,
    src: Reg,
    row_base: Reg,
    n: Reg,
    width: usize,
    col0: Reg,
    tile: usize,
    dst: Reg,
    scale: Scale<'_>,
    what: &str,
) {
    let lanes = if width % 4 == 0 { 4 } else { 1 };
    w.staged(
        CHUNK * tile,
        threads,
        lanes,
        what,
        |w, entry, live| {
            // Consecutive threads take consecutive steps of the same `lanes` columns, so
            // a warp's stores fill one shared row without bank conflicts.
            let (t, j) = w.transposed_position(entry, lanes, CHUNK);
            let col = w.e.reg(Class::B32);
            w.e.ins(format!("add.u32 {col}, {col0}, {j}"));
            let xs = w.load_or_zero(src, row_base, t, n, width, col, width, live, lanes);
            let addrs = (0..lanes)
                .map(|l| {
                    let jl = w.e.reg(Class::B32);
                    w.e.ins(format!("add.u32 {jl}, {j}, {l}"));
                    w.bf16_addr(dst, jl, g.step_stride(), t)
                })
                .collect();
            (xs, addrs, t)
        },
        scale,
    );
}

/// Stages `CHUNK` steps of a `[steps, keys]` f32 array as a bf16 array
/// `[CHUNK][keys + 8]` (the key contiguous), keys padded with zeros.
#[allow(clippy::too_many_arguments)]
pub(super) fn stage_rows(w: &mut Writer, g: &Geometry, threads: usize, src: Reg, row_base: Reg, n: Reg, dst: Reg, what: &str) {
    let lanes = if g.keys % 4 == 0 { 4 } else { 1 };
    w.staged(
        CHUNK * g.kp,
        threads,
        lanes,
        what,
        |w, idx, live| {
            let (t, i) = w.divmod(idx, g.kp);
            let xs = w.load_or_zero(src, row_base, t, n, g.keys, i, g.keys, live, lanes);
            let a = w.bf16_addr(dst, t, g.key_stride(), i);
            let addrs = (0..lanes)
                .map(|l| {
                    let r = w.e.reg(Class::B32);
                    w.e.ins(format!("add.u32 {r}, {a}, {}", 2 * l));
                    r
                })
                .collect();
            (xs, addrs, t)
        },
        None,
    );
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
    // n = min(CHUNK, steps − start), in 32 bits.
    let left = w.e.reg(Class::B64);
    w.e.ins(format!("sub.u64 {left}, {steps}, {start}"));
    w.e.ins(format!("min.u64 {left}, {left}, {CHUNK}"));
    let n = w.e.reg(Class::B32);
    w.e.ins(format!("cvt.u32.u64 {n}, {left}"));
    ChunkPos { row_base, n }
}

/// Loads or stores the accumulator tiles of a warp's 16 rows (`row0 = 16 · warp`) of a
/// `[rows, values]` f32 matrix at `base` (64-bit entry index `matrix` of its first
/// entry), columns `col0 + 8 · tile + 2 · cq (+1)`, rows `row0 + gq (+8)`, within
/// `rows` × `values`.
#[allow(clippy::too_many_arguments)]
pub(super) fn tile_io(w: &mut Writer, g: &Geometry, acc: &[[Reg; 4]], base: Reg, matrix: Reg, row0: Reg, rows: Reg, col0: Reg, store: bool) {
    for (nt, a) in acc.iter().enumerate() {
        for half in 0..2 {
            for k in 0..2 {
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
                let addr = w.f32_addr(base, index);
                let reg = a[2 * half + k];
                if store {
                    w.e.ins(format!("@{q} st.global.f32 [{addr}], {reg}"));
                } else {
                    w.e.ins(format!("@{q} ld.global.nc.f32 {reg}, [{addr}]"));
                }
            }
        }
    }
}

fn states_kernel(g: &Geometry) -> String {
    let mut w = Writer::new();
    let threads = g.kp / 16 * 32;
    let params = ["k", "v", "g", "state_in", "states", "steps", "flags"];
    let k = w.param("k");
    let v = w.param("v");
    let gate = w.param("g");
    let state_in = w.param("state_in");
    let states = w.param("states");
    let steps = w.param("steps");
    let flags = w.e.reg(Class::B32);
    w.e.ins(format!("ld.param.u32 {flags}, [flags]"));
    let (vtile, seq) = (w.e.reg(Class::B32), w.e.reg(Class::B32));
    w.e.ins(format!("mov.u32 {vtile}, %ctaid.x"));
    w.e.ins(format!("mov.u32 {seq}, %ctaid.y"));
    let col0 = w.e.reg(Class::B32);
    w.e.ins(format!("mul.lo.u32 {col0}, {vtile}, {}", g.vt));
    let kt = w.shared("kt", g.kp * g.step_stride() * 2);
    let vs = w.shared("vt", g.vt * g.step_stride() * 2);
    let (raw, lam) = if g.decayed() { (Some(w.shared("raw", CHUNK * 4)), Some(w.shared("lam", CHUNK * 4))) } else { (None, None) };
    let nchunks = w.chunk_count(steps);
    // This warp's 16 keys, and the entry index of sequence seq's first state matrix.
    let row0 = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {row0}, {}, 4", w.warp));
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
    tile_io(&mut w, g, &acc, state_in, first, row0, keys, col0, false);
    w.e.place(&no_state);
    // Fragment addresses: A from kt (row 16·warp + gq, column 2·cq), B from vt (row gq).
    let arow = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {arow}, {row0}, {}", w.gq));
    let acol = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {acol}, {}, 1", w.cq));
    let a_addr = w.bf16_addr(kt, arow, g.step_stride(), acol);
    let b_addr = w.bf16_addr(vs, w.gq, g.step_stride(), acol);

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
    w.e.comment("stage (K * exp(L_last - L))^T and V^T, the step contiguous");
    let scale = |w: &mut Writer, t: Reg| -> Reg {
        let (lam, last) = (lam.expect("decayed"), last.expect("decayed"));
        let x = w.lam_at(lam, t);
        let d = w.e.reg(Class::F32);
        w.e.ins(format!("sub.rn.f32 {d}, {last}, {x}"));
        w.exp(d)
    };
    let zero = w.e.reg(Class::B32);
    w.e.ins(format!("mov.u32 {zero}, 0"));
    let scale_ref: Scale<'_> = if g.decayed() { Some(&scale) } else { None };
    stage_transposed(&mut w, g, threads, k, pos.row_base, pos.n, g.keys, zero, g.kp, kt, scale_ref, "stage_k");
    stage_transposed(&mut w, g, threads, v, pos.row_base, pos.n, g.values, col0, g.vt, vs, None, "stage_v");
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
    w.e.comment("S += (scaled K)^T V");
    for kk in 0..CHUNK / 16 {
        let a = w.a_fragment(a_addr, g.step_stride(), 16 * kk);
        for (nt, t) in acc.iter().enumerate() {
            let b = w.b_fragment(b_addr, g.step_stride(), 8 * nt, 16 * kk);
            w.mma(t, &a, &b);
        }
    }
    w.e.ins("bar.sync 0");
    w.e.ins(format!("add.u32 {chunk}, {chunk}, 1"));
    w.e.ins(format!("bra.uni {top}"));
    w.e.place(&done);
    w.finish("psm_cw_states", &params)
}

fn outputs_kernel(g: &Geometry) -> String {
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
    let qs = w.shared("qs", CHUNK * g.key_stride() * 2);
    let ks = w.shared("ks", CHUNK * g.key_stride() * 2);
    let vs = w.shared("vt", g.vt * g.step_stride() * 2);
    let st = w.shared("st", g.vt * g.key_stride() * 2);
    let (raw, lam) = if g.decayed() { (Some(w.shared("raw", CHUNK * 4)), Some(w.shared("lam", CHUNK * 4))) } else { (None, None) };
    let pos = chunk_pos(&mut w, seq, steps, chunk);
    if let (Some(raw), Some(lam)) = (raw, lam) {
        w.cumulative_decay(g, threads, gate, pos.row_base, pos.n, raw, lam);
    }
    w.e.comment("stage Q and K (the key contiguous), V^T (the step contiguous), S_c^T (the key contiguous)");
    stage_rows(&mut w, g, threads, q, pos.row_base, pos.n, qs, "stage_q");
    stage_rows(&mut w, g, threads, k, pos.row_base, pos.n, ks, "stage_k");
    stage_transposed(&mut w, g, threads, v, pos.row_base, pos.n, g.values, col0, g.vt, vs, None, "stage_v");
    {
        let nchunks = w.chunk_count(steps);
        let s64 = w.e.reg(Class::B64);
        let c64 = w.e.reg(Class::B64);
        w.e.ins(format!("cvt.u64.u32 {s64}, {seq}"));
        w.e.ins(format!("cvt.u64.u32 {c64}, {chunk}"));
        let matrix = w.state_matrix(g, s64, nchunks, c64);
        let keys = w.e.reg(Class::B32);
        w.e.ins(format!("mov.u32 {keys}, {}", g.keys));
        let lanes = if g.values % 4 == 0 { 4 } else { 1 };
        w.staged(
            g.kp * g.vt,
            threads,
            lanes,
            "stage_s",
            |w, entry, live| {
                let (i, j) = w.transposed_position(entry, lanes, g.kp);
                let col = w.e.reg(Class::B32);
                w.e.ins(format!("add.u32 {col}, {col0}, {j}"));
                let xs = w.load_or_zero(states, matrix, i, keys, g.values, col, g.values, live, lanes);
                let addrs = (0..lanes)
                    .map(|l| {
                        let jl = w.e.reg(Class::B32);
                        w.e.ins(format!("add.u32 {jl}, {j}, {l}"));
                        w.bf16_addr(st, jl, g.key_stride(), i)
                    })
                    .collect();
                (xs, addrs, i)
            },
            None,
        );
    }
    w.e.ins("bar.sync 0");

    let row0 = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {row0}, {}, 4", w.warp));
    let arow = w.e.reg(Class::B32);
    w.e.ins(format!("add.u32 {arow}, {row0}, {}", w.gq));
    let acol = w.e.reg(Class::B32);
    w.e.ins(format!("shl.b32 {acol}, {}, 1", w.cq));
    let q_addr = w.bf16_addr(qs, arow, g.key_stride(), acol);
    let s_addr = w.bf16_addr(st, w.gq, g.key_stride(), acol);
    let k_addr = w.bf16_addr(ks, w.gq, g.key_stride(), acol);
    let v_addr = w.bf16_addr(vs, w.gq, g.step_stride(), acol);
    let o = w.zeros(g.vt / 8);
    let scores = w.zeros(CHUNK / 8);
    w.e.comment("O = Q S_c and P = Q K^T, sharing Q's fragments");
    for kk in 0..g.kp / 16 {
        let a = w.a_fragment(q_addr, g.key_stride(), 16 * kk);
        for (nt, t) in o.iter().enumerate() {
            let b = w.b_fragment(s_addr, g.key_stride(), 8 * nt, 16 * kk);
            w.mma(t, &a, &b);
        }
        for (pt, t) in scores.iter().enumerate() {
            let b = w.b_fragment(k_addr, g.key_stride(), 8 * pt, 16 * kk);
            w.mma(t, &a, &b);
        }
    }
    // The rows' e_t: Λ_t (inclusive) or Λ_(t−1) (exclusive, Λ_(−1) = 0).
    let rows = [w.e.reg(Class::B32), w.e.reg(Class::B32)];
    w.e.ins(format!("mov.u32 {}, {arow}", rows[0]));
    w.e.ins(format!("add.u32 {}, {arow}, 8", rows[1]));
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
        for t in &o {
            for (j, r) in t.iter().enumerate() {
                w.e.ins(format!("mul.rn.f32 {r}, {r}, {}", f[j / 2]));
            }
        }
    }
    w.e.comment(if g.shape.exclusive { "P: keep s < t, times exp(e_t - L_s)" } else { "P: keep s <= t, times exp(e_t - L_s)" });
    let cmp = if g.shape.exclusive { "lt" } else { "le" };
    for (pt, t) in scores.iter().enumerate() {
        for (j, r) in t.iter().enumerate() {
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
    w.e.comment("O += P V, P's accumulators reused as A fragments");
    for kk in 0..CHUNK / 16 {
        let pack = |w: &mut Writer, lo: Reg, hi: Reg| {
            let r = w.e.reg(Class::B32);
            w.e.ins(format!("cvt.rn.bf16x2.f32 {r}, {hi}, {lo}"));
            r
        };
        let (left, right) = (scores[2 * kk], scores[2 * kk + 1]);
        let a = [pack(&mut w, left[0], left[1]), pack(&mut w, left[2], left[3]), pack(&mut w, right[0], right[1]), pack(&mut w, right[2], right[3])];
        for (nt, t) in o.iter().enumerate() {
            let b = w.b_fragment(v_addr, g.step_stride(), 8 * nt, 16 * kk);
            w.mma(t, &a, &b);
        }
    }
    w.e.comment("out rows of this chunk");
    let outrow = w.e.reg(Class::B64);
    w.e.ins(format!("mov.u64 {outrow}, {}", pos.row_base));
    tile_io(&mut w, g, &o, out, outrow, row0, pos.n, col0, true);
    w.finish("psm_cw_outputs", &params)
}
