//! `psm_lookback`: a single-pass scan for associative operators whose element is a few
//! scalars (every element field of rank 0) and whose inputs and outputs are one scalar
//! per step: Merrill & Garland's decoupled look-back ("Single-pass Parallel Prefix Scan
//! with Decoupled Look-back", 2016), over the same lowered lift/combine/readout bodies
//! as the other kernels. Its own module ([`compile_lookback`]), so the ABI module of
//! `compile` is unchanged.
//!
//! ```text
//! psm_lookback(params…, inputs…, outputs…, nseq, steps, state_in, state_out, status, flags: u32)
//! ```
//!
//! Launched with [`LOOKBACK_BLOCK`] threads per block and exactly `nseq · ⌈steps / tile⌉`
//! blocks (`tile` = [`LookbackModule::tile`] positions, `items` per thread). `status`
//! holds [`LookbackModule::status_bytes`] bytes, zeroed before each launch: a `u64`
//! tile counter, then one record per tile (a `u32` flag padded to 8 bytes, the tile's
//! aggregate, its inclusive prefix). Flags: [`HAS_STATE`] (sequence s starts from
//! element s of `state_in`), [`REVERSE`], [`NO_STATE_OUT`] (else p_T of sequence s goes
//! to element s of `state_out`). Outputs are always written.
//!
//! A block:
//! 1. takes the next tile from the counter (tiles are taken in order, so every
//!    predecessor has started: forward progress without co-scheduling);
//! 2. stages the tile's inputs in shared memory (16-byte loads when the tile is full and
//!    its rows 16-byte aligned; one pad scalar per 128 bytes against bank conflicts);
//! 3. each thread folds its `items` consecutive positions; a warp scan by shuffles,
//!    then warp 0 scans the warp aggregates;
//! 4. warp 0 publishes the tile aggregate (flag 1), looks back over the predecessors of
//!    the same sequence 32 at a time (aggregates folded until an inclusive prefix, or the
//!    sequence's start with its initial state), publishes the inclusive prefix (flag 2);
//!    tile 0 publishes its prefix at once;
//! 5. each thread re-scans its positions from its exclusive prefix, reading out into
//!    shared memory, and the block stores the outputs as it loaded the inputs.
//!
//! Positions in a tile past `steps` and threads without positions carry a validity
//! predicate: a missing operand is the flagged identity (never evaluated), so no
//! declared identity is needed. Bracketings differ from the sequential fold, hence
//! associative operators only (the runtime's rule).

use std::collections::BTreeSet;

use psm_ir::ir::{Body, ReadoutKind, Role};

use super::emit::{suffix, Class, Reg};
use super::kernels::{combine_into, lift_at, param_bases, readout_at, used, Frame, Generated};
use super::lower::{Ctx, ElemView, Loc, Space};
use super::math::MathFn;
use super::{Kernel, PtxError, PtxModule, PtxOptions, HAS_STATE, NO_STATE_OUT, REVERSE};
use crate::layout::dtype_size;

/// Threads per block of `psm_lookback`.
pub const LOOKBACK_BLOCK: u32 = 256;
const BLOCK: usize = LOOKBACK_BLOCK as usize;
const WARPS: usize = BLOCK / 32;
/// Positions per thread when the staged rows fit.
const MAX_ITEMS: usize = 8;
/// Shared memory for staged inputs and outputs (of the 48 KiB a block may declare
/// statically).
const STAGE_LIMIT: usize = 40 * 1024;
/// Bytes staged contiguously before one pad scalar.
const PAD_EVERY: usize = 128;

/// The look-back kernel of one aggregator and its launch geometry.
#[derive(Debug, Clone)]
pub struct LookbackModule {
    /// A module whose only kernel is `psm_lookback`.
    pub module: PtxModule,
    /// Positions per thread.
    pub items: usize,
    /// Positions per block (`LOOKBACK_BLOCK · items`).
    pub tile: usize,
    /// Bytes of one tile's status record.
    pub record: usize,
}

impl LookbackModule {
    /// Bytes of the `status` buffer for `tiles` tiles in all (every sequence's).
    pub fn status_bytes(&self, tiles: usize) -> Option<usize> {
        tiles.checked_mul(self.record)?.checked_add(8)
    }
}

/// Bytes of shared memory that stage `tile` scalars of `size` bytes, padded.
fn staged_bytes(tile: usize, size: usize) -> usize {
    let raw = tile * size;
    raw + raw / PAD_EVERY * size
}

/// Scalar size of each input the bodies read (None: not read), of each output, and
/// the positions per thread; `None` when the aggregator does not fit the kernel.
struct Plan {
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
    items: usize,
}

fn plan(cx: &Ctx<'_>) -> Option<Plan> {
    let (agg, info) = (cx.agg, cx.info);
    if agg.tensors_of(Role::Element).any(|t| !info.shape(t).is_empty()) {
        return None;
    }
    let scalar = |t| (info.len(t) == 1).then(|| dtype_size(agg.tensors[t].dtype));
    let read = used(cx, &[&agg.lift, &agg.readout], Role::Input);
    let mut inputs = Vec::new();
    for (t, &r) in agg.tensors_of(Role::Input).zip(&read) {
        inputs.push(if r { Some(scalar(t)?) } else { None });
    }
    let outputs = agg.tensors_of(Role::Output).map(scalar).collect::<Option<Vec<_>>>()?;
    let staged = |items: usize| inputs.iter().flatten().chain(&outputs).map(|&z| staged_bytes(BLOCK * items, z)).sum::<usize>();
    let mut items = MAX_ITEMS;
    while items > 2 && staged(items) > STAGE_LIMIT {
        items /= 2;
    }
    (staged(items) <= STAGE_LIMIT).then_some(Plan { inputs, outputs, items })
}

/// The look-back module of an aggregator, or `None` when its element or rows are not
/// scalars (or too many to stage).
pub fn compile_lookback(
    agg: &psm_ir::ir::Aggregator,
    info: &psm_ir::valid::Info,
    options: &PtxOptions,
) -> Result<Option<LookbackModule>, PtxError> {
    let version = super::isa_version(options.arch).ok_or(PtxError::UnsupportedArch(options.arch))?;
    let cx = Ctx::new(agg, info);
    let Some(plan) = plan(&cx) else { return Ok(None) };
    let mut math = BTreeSet::new();
    let g = kernel(&cx, &mut math, &plan);
    if g.local_bytes > super::LOCAL_LIMIT {
        return Err(PtxError::LocalMemory { kernel: Kernel::Lookback.name(), bytes: g.local_bytes, limit: super::LOCAL_LIMIT });
    }
    let text = super::module_text(&cx, options, version, &math, std::slice::from_ref(&g));
    let record = 8 + 2 * cx.layout.size;
    let block = super::BlockKernels::absent("the look-back module has no block kernels");
    let module = PtxModule { text, layout: cx.layout.clone(), local_bytes: g.local_bytes, kernels: vec![g.sig], entries: None, block };
    Ok(Some(LookbackModule { module, items: plan.items, tile: BLOCK * plan.items, record }))
}

/// An element in registers (every field is rank 0).
pub(super) type Regs = Vec<Reg>;

pub(super) fn fresh(f: &mut Frame<'_>) -> Regs {
    let dtypes = f.l.cx.layout.dtypes.clone();
    dtypes.iter().map(|d| f.l.e.reg(Class::of(d.scalar()))).collect()
}

pub(super) fn view(r: &[Reg]) -> ElemView {
    ElemView(r.iter().map(|&x| Loc::Reg(x)).collect())
}

fn pred(f: &mut Frame<'_>, value: bool) -> Reg {
    let (z, p) = (f.l.e.reg(Class::B32), f.l.e.reg(Class::Pred));
    f.l.e.ins(format!("mov.u32 {z}, {}", u32::from(value)));
    f.l.e.ins(format!("setp.ne.u32 {p}, {z}, 0"));
    p
}

fn assign(f: &mut Frame<'_>, dst: &(Regs, Reg), src: &(Regs, Reg)) {
    for (d, s) in dst.0.iter().zip(&src.0) {
        f.l.mov(*d, *s);
    }
    f.l.mov(dst.1, src.1);
}

/// `x • y` with validity (x earlier): a missing operand is the flagged identity.
fn op(f: &mut Frame<'_>, params: &[Option<Reg>], x: &(Regs, Reg), y: &(Regs, Reg)) -> (Regs, Reg) {
    let out = fresh(f);
    let dtypes = f.l.cx.layout.dtypes.clone();
    for (k, d) in dtypes.iter().enumerate() {
        f.l.e.ins(format!("selp.{} {}, {}, {}, {}", suffix(d.scalar()), out[k], y.0[k], x.0[k], y.1));
    }
    let (both, valid) = (f.l.e.reg(Class::Pred), f.l.e.reg(Class::Pred));
    f.l.e.ins(format!("and.pred {both}, {}, {}", x.1, y.1));
    f.l.e.ins(format!("or.pred {valid}, {}, {}", x.1, y.1));
    let skip = f.l.e.label("one_missing");
    f.l.e.ins(format!("@!{both} bra {skip}"));
    combine_into(f, params, view(&x.0), view(&y.0), view(&out));
    f.l.e.place(&skip);
    (out, valid)
}

/// `shfl.sync.<mode>` of an element and its validity; a source lane out of range
/// gives an invalid element.
fn shfl(f: &mut Frame<'_>, mode: &str, x: &(Regs, Reg), b: &str) -> (Regs, Reg) {
    let c = if mode == "up" { 0 } else { 31 };
    let e = &mut f.l.e;
    let (bits, got, inside, valid) = (e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::Pred), e.reg(Class::Pred));
    e.ins(format!("selp.u32 {bits}, 1, 0, {}", x.1));
    e.ins(format!("shfl.sync.{mode}.b32 {got}|{inside}, {bits}, {b}, {c}, 0xffffffff"));
    e.ins(format!("setp.ne.u32 {valid}, {got}, 0"));
    e.ins(format!("and.pred {valid}, {valid}, {inside}"));
    let mut out = Vec::with_capacity(x.0.len());
    for &r in &x.0 {
        let o = e.reg(r.class);
        if r.class == Class::F64 {
            let (lo, hi) = (e.reg(Class::B32), e.reg(Class::B32));
            e.ins(format!("mov.b64 {{{lo}, {hi}}}, {r}"));
            e.ins(format!("shfl.sync.{mode}.b32 {lo}, {lo}, {b}, {c}, 0xffffffff"));
            e.ins(format!("shfl.sync.{mode}.b32 {hi}, {hi}, {b}, {c}, 0xffffffff"));
            e.ins(format!("mov.b64 {o}, {{{lo}, {hi}}}"));
        } else {
            e.ins(format!("shfl.sync.{mode}.b32 {o}, {r}, {b}, {c}, 0xffffffff"));
        }
        out.push(o);
    }
    (out, valid)
}

/// Inclusive warp scan by `shfl.up` (Kogge–Stone).
fn warp_scan(f: &mut Frame<'_>, params: &[Option<Reg>], x: (Regs, Reg)) -> (Regs, Reg) {
    let mut x = x;
    for d in [1, 2, 4, 8, 16] {
        let y = shfl(f, "up", &x, &d.to_string());
        x = op(f, params, &y, &x);
    }
    x
}

/// Loads the fields of an element at `base` (an address in `space`, with a load
/// qualifier such as `.relaxed.gpu`).
fn load(f: &mut Frame<'_>, into: &[Reg], space: &str, base: Reg) {
    let layout = f.l.cx.layout.clone();
    for (k, r) in into.iter().enumerate() {
        f.l.e.ins(format!("ld{space}.{} {r}, [{base}+{}]", suffix(layout.dtypes[k].scalar()), layout.offsets[k]));
    }
}

fn store(f: &mut Frame<'_>, from: &[Reg], space: &str, base: Reg) {
    let layout = f.l.cx.layout.clone();
    for (k, r) in from.iter().enumerate() {
        f.l.e.ins(format!("st{space}.{} [{base}+{}], {r}", suffix(layout.dtypes[k].scalar()), layout.offsets[k]));
    }
}

/// A `.shared` array of the kernel and its address.
fn shared(f: &mut Frame<'_>, name: &str, bytes: usize, align: usize) -> Reg {
    f.l.e.raw(&format!("\t.shared .align {align} .b8 {name}[{}];\n", bytes.max(align)));
    let r = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("mov.u64 {r}, {name}"));
    r
}

/// The padded shared address of byte `b` of a staged row block of `size`-byte scalars.
fn padded(f: &mut Frame<'_>, stage: Reg, b: Reg, size: usize) -> Reg {
    let e = &mut f.l.e;
    let (blk, a) = (e.reg(Class::B64), e.reg(Class::B64));
    e.ins(format!("shr.u64 {blk}, {b}, {}", PAD_EVERY.trailing_zeros()));
    e.ins(format!("mad.lo.s64 {a}, {blk}, {size}, {stage}"));
    e.ins(format!("add.s64 {a}, {a}, {b}"));
    a
}

/// Copies the tile's `nbytes` between global `g` and the padded stage (`to_shared`:
/// global → shared). A full tile at a 16-byte aligned address moves in 16-byte global
/// accesses, all issued before the first store; anything else word by word.
#[allow(clippy::too_many_arguments)]
fn copy(f: &mut Frame<'_>, g: Reg, stage: Reg, nbytes: Reg, full: usize, size: usize, tid: Reg, to_shared: bool) {
    let e = &mut f.l.e;
    let (low, fast, whole) = (e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::Pred));
    let (slow, done) = (e.label("copy_words"), e.label("copy_done"));
    e.ins(format!("and.b64 {low}, {g}, 15"));
    e.ins(format!("setp.eq.u64 {fast}, {low}, 0"));
    e.ins(format!("setp.eq.u64 {whole}, {nbytes}, {full}"));
    e.ins(format!("and.pred {fast}, {fast}, {whole}"));
    let vectors = full / 16 / BLOCK;
    if full.is_multiple_of(16 * BLOCK) {
        e.ins(format!("@!{fast} bra {slow}"));
        e.comment(format!("full aligned tile: {vectors} 16-byte accesses per thread"));
        let (gb, sb, t16, blk) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
        e.ins(format!("shl.b64 {t16}, {tid}, 4"));
        e.ins(format!("add.s64 {gb}, {g}, {t16}"));
        e.ins(format!("shr.u64 {blk}, {tid}, {}", (PAD_EVERY / 16).trailing_zeros()));
        e.ins(format!("mad.lo.s64 {sb}, {blk}, {size}, {stage}"));
        e.ins(format!("add.s64 {sb}, {sb}, {t16}"));
        let g_step = 16 * BLOCK;
        let s_step = g_step + g_step / PAD_EVERY * size;
        let words: Vec<[Reg; 4]> = (0..vectors).map(|_| [0; 4].map(|_| e.reg(Class::B32))).collect();
        for (k, w) in words.iter().enumerate() {
            if to_shared {
                e.ins(format!("ld.global.nc.v4.u32 {{{}, {}, {}, {}}}, [{gb}+{}]", w[0], w[1], w[2], w[3], k * g_step));
            } else {
                for (i, r) in w.iter().enumerate() {
                    e.ins(format!("ld.shared.u32 {r}, [{sb}+{}]", k * s_step + 4 * i));
                }
            }
        }
        for (k, w) in words.iter().enumerate() {
            if to_shared {
                for (i, r) in w.iter().enumerate() {
                    e.ins(format!("st.shared.u32 [{sb}+{}], {r}", k * s_step + 4 * i));
                }
            } else {
                e.ins(format!("st.global.v4.u32 [{gb}+{}], {{{}, {}, {}, {}}}", k * g_step, w[0], w[1], w[2], w[3]));
            }
        }
        e.ins(format!("bra.uni {done}"));
    }
    e.place(&slow);
    e.comment("word by word");
    let (b, stop, w) = (e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::B32));
    let head = e.label("copy_word");
    e.ins(format!("shl.b64 {b}, {tid}, 2"));
    e.place(&head);
    e.ins(format!("setp.ge.u64 {stop}, {b}, {nbytes}"));
    e.ins(format!("@{stop} bra {done}"));
    let ga = e.reg(Class::B64);
    e.ins(format!("add.s64 {ga}, {g}, {b}"));
    let sa = padded(f, stage, b, size);
    let e = &mut f.l.e;
    if to_shared {
        e.ins(format!("ld.global.nc.u32 {w}, [{ga}]"));
        e.ins(format!("st.shared.u32 [{sa}], {w}"));
    } else {
        e.ins(format!("ld.shared.u32 {w}, [{sa}]"));
        e.ins(format!("st.global.u32 [{ga}], {w}"));
    }
    e.ins(format!("add.s64 {b}, {b}, {}", 4 * BLOCK));
    e.ins(format!("bra.uni {head}"));
    e.place(&done);
}

/// Row pointers (shared) of staged position `r` of every stage.
fn staged_rows(f: &mut Frame<'_>, stages: &[Option<(Reg, usize)>], r: Reg) -> Vec<Option<Reg>> {
    stages
        .iter()
        .map(|s| {
            s.map(|(stage, size)| {
                let b = f.l.e.reg(Class::B64);
                f.l.e.ins(format!("mul.lo.s64 {b}, {r}, {size}"));
                padded(f, stage, b, size)
            })
        })
        .collect()
}

fn kernel(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, plan: &Plan) -> Generated {
    let agg = cx.agg;
    let exclusive = agg.readout_kind == ReadoutKind::Exclusive;
    let (elem, items) = (cx.layout.size, plan.items);
    let tile = BLOCK * items;
    let record = 8 + 2 * elem;
    let mut bodies: Vec<&Body> = vec![&agg.lift, &agg.combine, &agg.readout];
    bodies.extend(agg.identity.as_ref().filter(|_| exclusive));
    let mut f = Frame::new(cx, math, Kernel::Lookback, &bodies, 0);
    f.rows_space = Space::Shared;

    // Shared memory: the stages, the warps' inclusive aggregates, the tile's prefix.
    let mut in_stages = Vec::new();
    for (k, z) in plan.inputs.iter().enumerate() {
        in_stages.push(z.map(|z| (shared(&mut f, &format!("stage_in{k}"), staged_bytes(tile, z), 16), z)));
    }
    let mut out_stages = Vec::new();
    for (k, &z) in plan.outputs.iter().enumerate() {
        out_stages.push(Some((shared(&mut f, &format!("stage_out{k}"), staged_bytes(tile, z), 16), z)));
    }
    let warp_incl = shared(&mut f, "warp_incl", WARPS * elem, 8);
    let warp_valid = shared(&mut f, "warp_valid", WARPS * 4, 4);
    let tile_excl = shared(&mut f, "tile_excl", elem, 8);
    let tile_excl_valid = shared(&mut f, "tile_excl_valid", 4, 4);
    let tile_slot = shared(&mut f, "tile_id", 8, 8);

    let (nseq, steps) = (f.param("nseq"), f.param("steps"));
    let state_in = f.global("state_in");
    let state_out = f.global("state_out");
    let status = f.global("status");
    let flags = f.param("flags");
    let has0 = f.flag(flags, HAS_STATE, "HAS_STATE");
    let rev = f.flag(flags, REVERSE, "REVERSE");
    let no_state = f.flag(flags, NO_STATE_OUT, "NO_STATE_OUT");
    let params = param_bases(&mut f, &bodies);
    let read = plan.inputs.iter().map(Option::is_some).collect::<Vec<_>>();
    let in_bases = f.bases(Role::Input, "in_", &read);
    let out_bases = f.bases(Role::Output, "out_", &vec![true; plan.outputs.len()]);

    let e = &mut f.l.e;
    let (tid32, tid, lane, warp) = (e.reg(Class::B32), e.reg(Class::B64), e.reg(Class::B32), e.reg(Class::B32));
    e.ins(format!("mov.u32 {tid32}, %tid.x"));
    e.ins(format!("cvt.u64.u32 {tid}, {tid32}"));
    e.ins(format!("and.b32 {lane}, {tid32}, 31"));
    e.ins(format!("shr.u32 {warp}, {tid32}, 5"));
    e.comment(format!("tiles per sequence: ceil(steps / {tile})"));
    let (tps, total, zero) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred));
    e.ins(format!("setp.eq.u64 {zero}, {steps}, 0"));
    e.ins(format!("@{zero} bra {}", f.exit));
    e.ins(format!("add.s64 {tps}, {steps}, {}", tile - 1));
    e.ins(format!("div.u64 {tps}, {tps}, {tile}"));
    e.ins(format!("mul.lo.s64 {total}, {nseq}, {tps}"));
    e.comment("the next tile from the counter (status word 0), in the order blocks start");
    let (first, g) = (e.reg(Class::Pred), e.reg(Class::B64));
    let taken = e.label("taken");
    e.ins(format!("setp.ne.u32 {first}, {tid32}, 0"));
    e.ins(format!("@{first} bra {taken}"));
    e.ins(format!("atom.global.add.u64 {g}, [{status}], 1"));
    e.ins(format!("st.shared.u64 [{tile_slot}], {g}"));
    e.place(&taken);
    e.ins("bar.sync 0");
    e.ins(format!("ld.shared.u64 {g}, [{tile_slot}]"));
    let past = e.reg(Class::Pred);
    e.ins(format!("setp.ge.u64 {past}, {g}, {total}"));
    e.ins(format!("@{past} bra {}", f.exit));
    let (s, t) = f.divmod(g, tps);
    let e = &mut f.l.e;
    let (start, len, mem_start, row0) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    e.ins(format!("mul.lo.s64 {start}, {t}, {tile}"));
    e.ins(format!("sub.s64 {len}, {steps}, {start}"));
    e.ins_c(format!("min.u64 {len}, {len}, {tile}"), "positions in this tile");
    e.ins(format!("sub.s64 {mem_start}, {steps}, {start}"));
    e.ins(format!("sub.s64 {mem_start}, {mem_start}, {len}"));
    e.ins_c(format!("selp.b64 {mem_start}, {mem_start}, {start}, {rev}"), "first memory step: steps - start - len when reversed");
    e.ins_c(format!("mad.lo.s64 {row0}, {s}, {steps}, {mem_start}"), "its row");

    // 2. Stage the inputs.
    for (stage, base) in in_stages.iter().zip(&in_bases) {
        if let (Some((stage, z)), Some(base)) = (stage, base) {
            let (ga, nb) = (f.l.e.reg(Class::B64), f.l.e.reg(Class::B64));
            f.l.e.ins(format!("mad.lo.s64 {ga}, {row0}, {z}, {base}"));
            f.l.e.ins(format!("mul.lo.s64 {nb}, {len}, {z}"));
            copy(&mut f, ga, *stage, nb, tile * z, *z, tid, true);
        }
    }
    f.l.e.ins("bar.sync 0");

    // 3. Each thread's positions [j0, j0 + n).
    let e = &mut f.l.e;
    let (j0, n, has, zero64) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::B64));
    e.ins(format!("mov.u64 {zero64}, 0"));
    e.ins(format!("mul.lo.s64 {j0}, {tid}, {items}"));
    e.ins(format!("sub.s64 {n}, {len}, {j0}"));
    e.ins(format!("max.s64 {n}, {n}, 0"));
    e.ins_c(format!("min.s64 {n}, {n}, {items}"), "the thread's positions");
    e.ins(format!("setp.gt.s64 {has}, {n}, 0"));
    // Staged row of position j: j, or len - 1 - j reversed.
    let row_of = |f: &mut Frame<'_>, j: Reg| {
        let e = &mut f.l.e;
        let (back, r) = (e.reg(Class::B64), e.reg(Class::B64));
        e.ins(format!("sub.s64 {back}, {len}, {j}"));
        e.ins(format!("sub.s64 {back}, {back}, 1"));
        e.ins(format!("selp.b64 {r}, {back}, {j}, {rev}"));
        r
    };
    // A loop over positions j0 + k, k from `from` to n.
    let positions = |f: &mut Frame<'_>, from: Reg, body: &mut dyn FnMut(&mut Frame<'_>, Reg)| {
        let e = &mut f.l.e;
        let (k, stop, j) = (e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::B64));
        let (head, done) = (e.label("position"), e.label("positions_done"));
        e.ins(format!("mov.u64 {k}, {from}"));
        e.place(&head);
        e.ins(format!("setp.ge.s64 {stop}, {k}, {n}"));
        e.ins(format!("@{stop} bra {done}"));
        e.ins(format!("add.s64 {j}, {j0}, {k}"));
        body(f, j);
        f.l.e.ins(format!("add.s64 {k}, {k}, 1"));
        f.l.e.ins(format!("bra.uni {head}"));
        f.l.e.place(&done);
    };
    let one = f.l.u64_const(1);

    f.l.e.comment("the thread's aggregate");
    let a = (fresh(&mut f), has);
    let no_items = f.l.e.label("no_items");
    f.l.e.ins(format!("@!{has} bra {no_items}"));
    let r = row_of(&mut f, j0);
    let rows = staged_rows(&mut f, &in_stages, r);
    lift_at(&mut f, &params, &rows, zero64, view(&a.0));
    positions(&mut f, one, &mut |f, j| {
        let r = row_of(f, j);
        let rows = staged_rows(f, &in_stages, r);
        let x = fresh(f);
        lift_at(f, &params, &rows, zero64, view(&x));
        let next = fresh(f);
        combine_into(f, &params, view(&a.0), view(&x), view(&next));
        for (d, s) in a.0.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    });
    f.l.e.place(&no_items);

    f.l.e.comment("warp scan of the threads' aggregates");
    let incl = warp_scan(&mut f, &params, a);
    let e = &mut f.l.e;
    let (last_lane, after_store, wslot, wv) = (e.reg(Class::Pred), e.label("warp_stored"), e.reg(Class::B64), e.reg(Class::B64));
    e.ins(format!("setp.ne.u32 {last_lane}, {lane}, 31"));
    e.ins(format!("@{last_lane} bra {after_store}"));
    e.ins(format!("mul.wide.u32 {wslot}, {warp}, {elem}"));
    e.ins(format!("add.s64 {wslot}, {wslot}, {warp_incl}"));
    e.ins(format!("mul.wide.u32 {wv}, {warp}, 4"));
    e.ins(format!("add.s64 {wv}, {wv}, {warp_valid}"));
    let bits = e.reg(Class::B32);
    e.ins(format!("selp.u32 {bits}, 1, 0, {}", incl.1));
    e.ins(format!("st.shared.u32 [{wv}], {bits}"));
    store(&mut f, &incl.0, ".shared", wslot);
    f.l.e.place(&after_store);
    f.l.e.ins("bar.sync 0");

    // 4. Warp 0: the block scan over warps, publication and look-back.
    let e = &mut f.l.e;
    let (not_w0, w0_done) = (e.reg(Class::Pred), e.label("warp0_done"));
    e.ins(format!("setp.ne.u32 {not_w0}, {warp}, 0"));
    e.ins(format!("@{not_w0} bra {w0_done}"));
    let w = (fresh(&mut f), pred(&mut f, false));
    let e = &mut f.l.e;
    let (outside, skip_w, lslot, lv) = (e.reg(Class::Pred), e.label("no_warp"), e.reg(Class::B64), e.reg(Class::B64));
    e.ins(format!("setp.ge.u32 {outside}, {lane}, {WARPS}"));
    e.ins(format!("@{outside} bra {skip_w}"));
    e.ins(format!("mul.wide.u32 {lslot}, {lane}, {elem}"));
    e.ins(format!("add.s64 {lslot}, {lslot}, {warp_incl}"));
    e.ins(format!("mul.wide.u32 {lv}, {lane}, 4"));
    e.ins(format!("add.s64 {lv}, {lv}, {warp_valid}"));
    let vb = e.reg(Class::B32);
    e.ins(format!("ld.shared.u32 {vb}, [{lv}]"));
    e.ins(format!("setp.ne.u32 {}, {vb}, 0", w.1));
    load(&mut f, &w.0, ".shared", lslot);
    f.l.e.place(&skip_w);
    let block = warp_scan(&mut f, &params, w);
    let store_back = f.l.e.label("block_stored");
    f.l.e.ins(format!("@{outside} bra {store_back}"));
    store(&mut f, &block.0, ".shared", lslot);
    f.l.e.place(&store_back);
    f.l.e.comment("the tile aggregate, in every lane");
    let agg_t = shfl(&mut f, "idx", &block, "31");
    let e = &mut f.l.e;
    let (rec, lane0, later_tile) = (e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::Pred));
    e.ins(format!("mad.lo.s64 {rec}, {g}, {record}, {status}"));
    e.ins_c(format!("add.s64 {rec}, {rec}, 8"), "this tile's status record");
    e.ins(format!("setp.eq.u32 {lane0}, {lane}, 0"));
    e.ins(format!("setp.ne.u64 {later_tile}, {t}, 0"));
    let seq_state = e.reg(Class::B64);
    e.ins(format!("mad.lo.s64 {seq_state}, {s}, {elem}, {state_in}"));
    let excl = (fresh(&mut f), pred(&mut f, false));
    let (look_back, publish) = (f.l.e.label("look_back"), f.l.e.label("publish"));
    f.l.e.ins(format!("@{later_tile} bra {look_back}"));
    f.l.e.comment("tile 0: its exclusive prefix is the initial state, when given");
    let skip_init = f.l.e.label("no_initial_state");
    f.l.e.ins(format!("@!{has0} bra {skip_init}"));
    load(&mut f, &excl.0, ".global", seq_state);
    f.l.mov(excl.1, has0);
    f.l.e.place(&skip_init);
    f.l.e.ins(format!("bra.uni {publish}"));

    f.l.e.place(&look_back);
    f.l.e.comment("publish the aggregate (flag 1), then look back");
    let skip_agg = f.l.e.label("aggregate_published");
    f.l.e.ins(format!("@!{lane0} bra {skip_agg}"));
    let agg_slot = f.l.e.reg(Class::B64);
    f.l.e.ins(format!("add.s64 {agg_slot}, {rec}, 8"));
    store(&mut f, &agg_t.0, ".global", agg_slot);
    f.l.e.ins(format!("st.release.gpu.global.u32 [{rec}], 1"));
    f.l.e.place(&skip_agg);
    look_back_loop(&mut f, &params, LookBack { status, s, tps, t, lane, has0, seq_state, record, elem }, &excl);

    f.l.e.place(&publish);
    let incl_t = op(&mut f, &params, &excl, &agg_t);
    let e = &mut f.l.e;
    let skip_pub = e.label("prefix_published");
    e.ins(format!("@!{lane0} bra {skip_pub}"));
    let pre_slot = e.reg(Class::B64);
    e.ins(format!("add.s64 {pre_slot}, {rec}, {}", 8 + elem));
    store(&mut f, &incl_t.0, ".global", pre_slot);
    f.l.e.ins(format!("st.release.gpu.global.u32 [{rec}], 2"));
    store(&mut f, &excl.0, ".shared", tile_excl);
    let e = &mut f.l.e;
    let eb = e.reg(Class::B32);
    e.ins(format!("selp.u32 {eb}, 1, 0, {}", excl.1));
    e.ins(format!("st.shared.u32 [{tile_excl_valid}], {eb}"));
    e.comment("p_T of the sequence from its last tile, unless NO_STATE_OUT");
    let (last_t, tl) = (e.reg(Class::Pred), e.reg(Class::B64));
    e.ins(format!("sub.s64 {tl}, {tps}, 1"));
    e.ins(format!("setp.ne.u64 {last_t}, {t}, {tl}"));
    e.ins(format!("or.pred {last_t}, {last_t}, {no_state}"));
    e.ins(format!("@{last_t} bra {skip_pub}"));
    let out_state = e.reg(Class::B64);
    e.ins(format!("mad.lo.s64 {out_state}, {s}, {elem}, {state_out}"));
    store(&mut f, &incl_t.0, ".global", out_state);
    f.l.e.place(&skip_pub);
    f.l.e.place(&w0_done);
    f.l.e.ins("bar.sync 0");

    // 5. The thread's exclusive prefix: tile • warps before • lanes before.
    f.l.e.comment("the thread's exclusive prefix: tile, earlier warps, earlier lanes");
    let tp = (fresh(&mut f), f.l.e.reg(Class::Pred));
    load(&mut f, &tp.0, ".shared", tile_excl);
    let e = &mut f.l.e;
    let tb = e.reg(Class::B32);
    e.ins(format!("ld.shared.u32 {tb}, [{tile_excl_valid}]"));
    e.ins(format!("setp.ne.u32 {}, {tb}, 0", tp.1));
    let wp = (fresh(&mut f), f.l.e.reg(Class::Pred));
    let e = &mut f.l.e;
    let skip_wp = e.label("first_warp");
    e.ins(format!("setp.ne.u32 {}, {warp}, 0", wp.1));
    e.ins(format!("@!{} bra {skip_wp}", wp.1));
    let pslot = e.reg(Class::B64);
    let wm1 = e.reg(Class::B64);
    e.ins(format!("cvt.u64.u32 {wm1}, {warp}"));
    e.ins(format!("sub.s64 {wm1}, {wm1}, 1"));
    e.ins(format!("mad.lo.s64 {pslot}, {wm1}, {elem}, {warp_incl}"));
    load(&mut f, &wp.0, ".shared", pslot);
    f.l.e.place(&skip_wp);
    let lanes_before = shfl(&mut f, "up", &incl, "1");
    let before = op(&mut f, &params, &tp, &wp);
    let start_p = op(&mut f, &params, &before, &lanes_before);

    // The re-scan with readouts into the output stage.
    f.l.e.comment("re-scan the thread's positions, reading out");
    let p_ = fresh(&mut f);
    let e = &mut f.l.e;
    let (rescan_done, from_prefix) = (e.label("rescan_done"), e.label("from_prefix"));
    e.ins(format!("@!{has} bra {rescan_done}"));
    e.ins(format!("@{} bra {from_prefix}", start_p.1));
    e.comment("the sequence's first position, without a prefix");
    let r = row_of(&mut f, j0);
    let rows_in = staged_rows(&mut f, &in_stages, r);
    let rows_out = staged_rows(&mut f, &out_stages, r);
    lift_at(&mut f, &params, &rows_in, zero64, view(&p_));
    if exclusive {
        let spare = fresh(&mut f);
        readout_at(&mut f, &params, &rows_in, &rows_out, zero64, None, Some(view(&spare)));
    } else {
        readout_at(&mut f, &params, &rows_in, &rows_out, zero64, Some(view(&p_)), None);
    }
    let e = &mut f.l.e;
    let (k1, scan_rest) = (e.reg(Class::B64), e.label("scan_rest"));
    e.ins(format!("mov.u64 {k1}, 1"));
    e.ins(format!("bra.uni {scan_rest}"));
    e.place(&from_prefix);
    for (d, s) in p_.iter().zip(&start_p.0) {
        f.l.mov(*d, *s);
    }
    f.l.e.ins(format!("mov.u64 {k1}, 0"));
    f.l.e.place(&scan_rest);
    positions(&mut f, k1, &mut |f, j| {
        let r = row_of(f, j);
        let rows_in = staged_rows(f, &in_stages, r);
        let rows_out = staged_rows(f, &out_stages, r);
        let x = fresh(f);
        lift_at(f, &params, &rows_in, zero64, view(&x));
        if exclusive {
            readout_at(f, &params, &rows_in, &rows_out, zero64, Some(view(&p_)), None);
        }
        let next = fresh(f);
        combine_into(f, &params, view(&p_), view(&x), view(&next));
        if !exclusive {
            readout_at(f, &params, &rows_in, &rows_out, zero64, Some(view(&next)), None);
        }
        for (d, s) in p_.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    });
    f.l.e.place(&rescan_done);
    f.l.e.ins("bar.sync 0");

    // 6. Store the outputs.
    for (stage, base) in out_stages.iter().zip(&out_bases) {
        if let (Some((stage, z)), Some(base)) = (stage, base) {
            let (ga, nb) = (f.l.e.reg(Class::B64), f.l.e.reg(Class::B64));
            f.l.e.ins(format!("mad.lo.s64 {ga}, {row0}, {z}, {base}"));
            f.l.e.ins(format!("mul.lo.s64 {nb}, {len}, {z}"));
            copy(&mut f, ga, *stage, nb, tile * z, *z, tid, false);
        }
    }
    f.finish()
}

/// What the look-back reads.
struct LookBack {
    status: Reg,
    s: Reg,
    tps: Reg,
    t: Reg,
    lane: Reg,
    has0: Reg,
    seq_state: Reg,
    record: usize,
    elem: usize,
}

/// Warp 0 folds the predecessors of tile `t` (of sequence `s`), 32 per round, lane l
/// reading tile `base - l`: waits until none of them is unpublished, then folds the
/// aggregates of the lanes before the first inclusive prefix (or the sequence's start,
/// where the initial state stands in for a prefix) and that prefix. `excl` receives
/// the fold (valid in lane 0).
fn look_back_loop(f: &mut Frame<'_>, params: &[Option<Reg>], lb: LookBack, excl: &(Regs, Reg)) {
    let LookBack { status, s, tps, t, lane, has0, seq_state, record, elem } = lb;
    let e = &mut f.l.e;
    let (base, ti, in_seq, not_in, gi, addr) =
        (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::B64), e.reg(Class::B64));
    let (round, spin, found_label) = (e.label("look_back_round"), e.label("spin"), e.label("look_back_done"));
    e.ins(format!("sub.s64 {base}, {t}, 1"));
    e.place(&round);
    let lane64 = e.reg(Class::B64);
    e.ins(format!("cvt.u64.u32 {lane64}, {lane}"));
    e.ins_c(format!("sub.s64 {ti}, {base}, {lane64}"), "the predecessor this lane reads");
    e.ins(format!("setp.ge.s64 {in_seq}, {ti}, 0"));
    e.ins(format!("not.pred {not_in}, {in_seq}"));
    e.ins(format!("mad.lo.s64 {gi}, {s}, {tps}, {ti}"));
    e.ins(format!("mad.lo.s64 {addr}, {gi}, {record}, {status}"));
    e.ins(format!("add.s64 {addr}, {addr}, 8"));
    let (flag, ready, all) = (e.reg(Class::B32), e.reg(Class::Pred), e.reg(Class::Pred));
    e.place(&spin);
    e.ins(format!("mov.u32 {flag}, 0"));
    e.ins(format!("@{in_seq} ld.acquire.gpu.global.u32 {flag}, [{addr}]"));
    e.ins(format!("setp.ne.u32 {ready}, {flag}, 0"));
    e.ins(format!("or.pred {ready}, {ready}, {not_in}"));
    e.ins(format!("vote.sync.all.pred {all}, {ready}, 0xffffffff"));
    e.ins(format!("@!{all} bra {spin}"));
    let (is_p, at_start, m, k, rb) = (e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::B32));
    e.ins(format!("setp.eq.u32 {is_p}, {flag}, 2"));
    e.ins(format!("setp.eq.s64 {at_start}, {ti}, -1"));
    e.ins_c(format!("or.pred {is_p}, {is_p}, {at_start}"), "an inclusive prefix, or the sequence's start");
    e.ins(format!("vote.sync.ballot.b32 {m}, {is_p}, 0xffffffff"));
    e.ins(format!("brev.b32 {rb}, {m}"));
    e.ins_c(format!("clz.b32 {k}, {rb}"), "the first such lane (32: none)");
    let (before, at, take_p, take_init, src) = (e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::B64));
    e.ins(format!("setp.lt.u32 {before}, {lane}, {k}"));
    e.ins(format!("setp.eq.u32 {at}, {lane}, {k}"));
    e.ins(format!("and.pred {take_p}, {at}, {in_seq}"));
    e.ins(format!("and.pred {take_init}, {at}, {at_start}"));
    e.ins(format!("and.pred {take_init}, {take_init}, {has0}"));
    let pre = e.reg(Class::B64);
    e.ins(format!("add.s64 {src}, {addr}, 8"));
    e.ins(format!("add.s64 {pre}, {addr}, {}", 8 + elem));
    e.ins(format!("selp.b64 {src}, {pre}, {src}, {take_p}"));
    let x = (fresh(f), f.l.e.reg(Class::Pred));
    let e = &mut f.l.e;
    e.ins(format!("or.pred {}, {before}, {take_p}", x.1));
    let (skip_load, skip_init) = (e.label("no_record"), e.label("no_state"));
    e.ins(format!("@!{} bra {skip_load}", x.1));
    load(f, &x.0, ".relaxed.gpu.global", src);
    f.l.e.place(&skip_load);
    f.l.e.ins(format!("@!{take_init} bra {skip_init}"));
    load(f, &x.0, ".global", seq_state);
    f.l.e.place(&skip_init);
    f.l.e.ins(format!("or.pred {}, {}, {take_init}", x.1, x.1));
    let mut x = x;
    for d in [1, 2, 4, 8, 16] {
        let y = shfl(f, "down", &x, &d.to_string());
        x = op(f, params, &y, &x);
    }
    let folded = op(f, params, &x, excl);
    assign(f, excl, &folded);
    let e = &mut f.l.e;
    let found = e.reg(Class::Pred);
    e.ins(format!("setp.ne.u32 {found}, {m}, 0"));
    e.ins(format!("@{found} bra {found_label}"));
    e.ins(format!("sub.s64 {base}, {base}, 32"));
    e.ins(format!("bra.uni {round}"));
    e.place(&found_label);
}
