//! `psm_lookback`: a single-pass scan for associative operators whose element is a few
//! scalars (every element field of rank 0) and whose inputs and outputs are one scalar
//! per step: Merrill & Garland's decoupled look-back ("Single-pass Parallel Prefix Scan
//! with Decoupled Look-back", 2016), over the same lowered lift/combine/readout bodies
//! as the other kernels. Its own module (`ptx::compile_lookback`), so the ABI module of
//! `compile` is unchanged.
//!
//! ```text
//! psm_lookback(params…, inputs…, outputs…, nseq, steps, state_in, state_out, status, flags: u32)
//! ```
//!
//! Elements whose entries scan independently (diagonal affine recurrences) get
//! channels.rs's kernel of the same name, arguments and status protocol instead: a
//! thread per entry of each tile of 32 steps, a look-back per entry.
//!
//! Launched with [`LookbackModule::block`] threads per block ([`LOOKBACK_BLOCK`] here)
//! and exactly the blocks of
//! [`LookbackModule::launch`] (`nseq · ⌈steps / tile⌉` here: `tile` =
//! [`LookbackModule::tile`] positions, `items` per thread). `status` holds the bytes
//! [`LookbackModule::launch`] gives, zeroed before each launch: a `u64` tile counter,
//! then one record per tile (and entry) of [`LookbackModule::record`] bytes: one
//! 8-byte slot per 32-bit word of the element, the word in its low half and the
//! record's status in its high half (1: the tile's aggregate, 2: its inclusive prefix,
//! which overwrites the aggregate). Each slot is written and read by one relaxed
//! 64-bit access, so a reader that sees one status in every slot holds that element:
//! no fence between data and flag, and the value arrives with the flag. Flags: [`HAS_STATE`] (sequence s starts from
//! element s of `state_in`), [`REVERSE`], [`NO_STATE_OUT`] (else p_T of sequence s goes
//! to element s of `state_out`). Outputs are always written.
//!
//! A block:
//! 1. takes the next tile from the counter (tiles are taken in order, so every
//!    predecessor has started: forward progress without co-scheduling);
//! 2. stages the tile's inputs in shared memory (16-byte loads when the tile is full and
//!    its rows 16-byte aligned; one pad scalar per 128 bytes against bank conflicts);
//! 3. each thread folds its `items` consecutive positions (in a full tile unrolled, its
//!    staged rows a pointer step apart); a warp scan by shuffles, then warp 0 scans the
//!    warp aggregates;
//! 4. warp 0 publishes the tile aggregate (status 1), looks back over the predecessors
//!    of the same sequence 32 at a time (aggregates folded until an inclusive prefix, or
//!    the sequence's start with its initial state), publishes the inclusive prefix
//!    (status 2); tile 0 publishes its prefix at once;
//! 5. each thread re-scans its positions from its exclusive prefix (unrolled as in 3),
//!    reading out into shared memory, and the block stores the outputs as it loaded the
//!    inputs.
//!
//! What bounds it (cumsum over 2^28 f32 on an H200 moves 2 GiB; 0.56 ms is 0.9× the
//! copy bandwidth): a block's life is a chain of latencies — tile counter, loads,
//! fold, look-back, re-scan, stores — and only its loads and stores move bytes, so the
//! bytes in flight per SM are bounded by the resident blocks' tiles. Each step of that
//! chain is kept short: the look-back reads value and status in one relaxed access per
//! word (an acquire load and a release store compile to an L1 invalidation and a
//! `MEMBAR.GPU`, each a round trip to L2, on every poll and publication), and a full
//! tile's positions are unrolled (the loop's 64-bit row and padding arithmetic was
//! about 25 instructions per position per pass, more than the bandwidth budget of a
//! cheap operator: about 3 remain for cumsum). Blocks that loop over tiles and take
//! their next tile early, to load it during the current one's look-back, were slower
//! at every register budget (BENCHMARKS.md, "Look-back scan: persistent blocks"): a
//! tile taken before its block can fold it publishes its aggregate late, and the tiles
//! after it wait in their look-back.
//!
//! Positions in a tile past `steps` and threads without positions carry a validity
//! predicate: a missing operand is the flagged identity (never evaluated), so no
//! declared identity is needed. Bracketings differ from the sequential fold, hence
//! associative operators only (the runtime's rule).

use std::collections::BTreeSet;

use psm_ir::ir::{Body, ReadoutKind, Role};

use super::emit::{suffix, Class, Emitter, Reg};
use super::kernels::{combine_into, lift_at, param_bases, readout_at, used, Frame, Generated};
use super::lower::{Ctx, ElemView, Loc, Space};
use super::channels::{CHANNEL_BLOCK, CHANNEL_CHUNK};
use super::math::MathFn;
use super::{Kernel, PtxError, PtxModule, PtxOptions, HAS_STATE, NO_STATE_OUT, REVERSE};
use crate::layout::dtype_size;

/// Threads per block of `psm_lookback`.
pub const LOOKBACK_BLOCK: u32 = 256;
const BLOCK: usize = LOOKBACK_BLOCK as usize;
const WARPS: usize = BLOCK / 32;
// A tile (BLOCK · items, items halving from MAX_ITEMS) is a power of two: tiles per
// sequence are a shift of the steps.
const _: () = assert!(BLOCK.is_power_of_two() && MAX_ITEMS.is_power_of_two());
/// Positions per thread when the staged rows fit. Larger tiles spread a tile's fixed
/// latencies (counter, barriers, look-back) over more bytes: cumsum over 2^28 f32 on an
/// H200 took 1.83 / 1.15 / 0.89 ms at 4 / 8 / 16 (one run, separate input and output
/// stages), 0.71 ms at 32 with the output staged over the input (another run; over
/// 2^26 that run measured 0.260 ms at 32 against 0.245 ms at 16).
const MAX_ITEMS: usize = 32;
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
    /// Positions per tile of a sequence (`LOOKBACK_BLOCK · items` for scalar elements,
    /// `items` for elements of independent entries).
    pub tile: usize,
    /// Bytes of one status record.
    pub record: usize,
    /// Entries scanned apart per sequence, a thread each: 1 for scalar elements, the
    /// fields' entries for elements of independent entries (channels.rs).
    pub entries: usize,
    /// Threads per block of the launch.
    pub block: u32,
}

impl LookbackModule {
    /// The launch over `nseq` sequences of `steps` steps: its blocks (of
    /// [`LookbackModule::block`] threads) and the bytes of its zeroed `status` buffer (the
    /// counter, then a record per tile and entry); `None` when they overflow.
    pub fn launch(&self, nseq: usize, steps: usize) -> Option<(usize, usize)> {
        let tiles = steps.div_ceil(self.tile).checked_mul(nseq)?;
        let blocks = tiles.checked_mul(self.entries.div_ceil(self.block as usize))?;
        let status = tiles.checked_mul(self.entries)?.checked_mul(self.record)?.checked_add(8)?;
        Some((blocks, status))
    }
}

/// Bytes of shared memory that stage `tile` scalars of `size` bytes, padded.
fn staged_bytes(tile: usize, size: usize) -> usize {
    let raw = tile * size;
    raw + raw / PAD_EVERY * size
}

/// Scalar size of each input the bodies read (None: not read), of each output, the
/// input stage each output's stage shares (see [`plan`]), and the positions per
/// thread; `None` when the aggregator does not fit the kernel.
struct Plan {
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
    shares: Vec<Option<usize>>,
    items: usize,
}

fn plan(cx: &Ctx<'_>) -> Option<Plan> {
    let (agg, info) = (cx.agg, cx.info);
    if agg.tensors_of(Role::Element).any(|t| !info.shape(t).is_empty()) {
        return None;
    }
    // Rows are staged in 4-byte words: a 2-byte (bf16/f16) row could start off a word
    // boundary and a tile of odd length would overrun it, so such rows keep the
    // generic kernels.
    let scalar = |t| (info.len(t) == 1 && dtype_size(agg.tensors[t].dtype) >= 4).then(|| dtype_size(agg.tensors[t].dtype));
    let read = used(cx, &[&agg.lift, &agg.readout], Role::Input);
    let mut inputs = Vec::new();
    for (t, &r) in agg.tensors_of(Role::Input).zip(&read) {
        inputs.push(if r { Some(scalar(t)?) } else { None });
    }
    let outputs = agg.tensors_of(Role::Output).map(scalar).collect::<Option<Vec<_>>>()?;
    // When the readout reads no input, an output row can overwrite the input row of its
    // position, which the re-scan has lifted just before (and nothing reads again): an
    // output's stage shares an input stage of its scalar size, one output per input,
    // halving cumsum's shared memory so that its tile doubles.
    let readout_reads = used(cx, &[&agg.readout], Role::Input).iter().any(|&u| u);
    let mut taken = vec![readout_reads; inputs.len()];
    let shares: Vec<Option<usize>> = outputs
        .iter()
        .map(|&z| {
            let m = (0..inputs.len()).find(|&m| !taken[m] && inputs[m] == Some(z))?;
            taken[m] = true;
            Some(m)
        })
        .collect();
    let own_outputs = outputs.iter().zip(&shares).filter(|(_, s)| s.is_none()).map(|(z, _)| z);
    let sizes: Vec<usize> = inputs.iter().flatten().chain(own_outputs).copied().collect();
    let staged = |items: usize| sizes.iter().map(|&z| staged_bytes(BLOCK * items, z)).sum::<usize>();
    let mut items = MAX_ITEMS;
    while items > 2 && staged(items) > STAGE_LIMIT {
        items /= 2;
    }
    (staged(items) <= STAGE_LIMIT).then_some(Plan { inputs, outputs, shares, items })
}

/// The look-back module of an aggregator: this file's kernel for scalar elements and
/// rows, channels.rs's for elements of independent entries; `None` for others (or
/// scalar rows too many to stage). Callers take `ptx::compile_lookback`, which lowers
/// psm-ir's exact rewrites of the aggregator first.
pub(super) fn compile_lookback(
    agg: &psm_ir::ir::Aggregator,
    info: &psm_ir::valid::Info,
    options: &PtxOptions,
) -> Result<Option<LookbackModule>, PtxError> {
    let version = super::module_version(agg, options.arch)?;
    let cx = Ctx::new(agg, info, options.arch);
    let mut math = BTreeSet::new();
    // (kernel, positions per thread, positions per tile, entries, threads per block)
    let (g, items, tile, entries, block) = match plan(&cx) {
        Some(plan) => (kernel(&cx, &mut math, &plan), plan.items, BLOCK * plan.items, 1, BLOCK),
        None => match super::channels::kernel(&cx, &mut math) {
            Some((entries, g)) => (g, CHANNEL_CHUNK, CHANNEL_CHUNK, entries, CHANNEL_BLOCK),
            None => return Ok(None),
        },
    };
    if g.local_bytes > super::LOCAL_LIMIT {
        return Err(PtxError::LocalMemory { kernel: Kernel::Lookback.name(), bytes: g.local_bytes, limit: super::LOCAL_LIMIT });
    }
    let text = super::module_text(&cx, options, version, &math, std::slice::from_ref(&g));
    let record = record_bytes(&cx);
    let block_kernels = super::BlockKernels::absent("the look-back module has no block kernels");
    let module = PtxModule { text, layout: cx.layout.clone(), local_bytes: g.local_bytes, kernels: vec![g.sig], entries: None, block: block_kernels };
    Ok(Some(LookbackModule { module, items, tile, record, entries, block: block as u32 }))
}

/// The look-back kernels' own arguments as the ABI orders them (`nseq`, `steps`,
/// `state_in`, `state_out`, `status`, the flags they read) and the params' bases.
pub(super) struct LookbackArgs {
    pub nseq: Reg,
    pub steps: Reg,
    pub state_in: Reg,
    pub state_out: Reg,
    pub status: Reg,
    pub has0: Reg,
    pub rev: Reg,
    pub no_state: Reg,
    pub params: Vec<Option<Reg>>,
}

pub(super) fn lookback_args(f: &mut Frame<'_>, bodies: &[&Body]) -> LookbackArgs {
    let (nseq, steps) = (f.param("nseq"), f.param("steps"));
    let state_in = f.global("state_in");
    let state_out = f.global("state_out");
    let status = f.global("status");
    let flags = f.param("flags");
    let has0 = f.flag(flags, HAS_STATE, "HAS_STATE");
    let rev = f.flag(flags, REVERSE, "REVERSE");
    let no_state = f.flag(flags, NO_STATE_OUT, "NO_STATE_OUT");
    let params = param_bases(f, bodies);
    LookbackArgs { nseq, steps, state_in, state_out, status, has0, rev, no_state, params }
}

/// Reads the `words` 8-byte slots of a status record at `addr` (each one word of the
/// element beside the status, relaxed: no fence), where `guard` holds (else zeros):
/// the element's words and the status, 0 (not yet) where two slots carry different
/// statuses (the reader saw parts of two publications).
pub(super) fn read_record(e: &mut Emitter, addr: Reg, words: usize, guard: Option<Reg>) -> (Vec<Reg>, Reg) {
    let slots: Vec<Reg> = (0..words).map(|_| e.reg(Class::B64)).collect();
    let data: Vec<Reg> = (0..words).map(|_| e.reg(Class::B32)).collect();
    let (flag, other, differs) = (e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::Pred));
    for (k, slot) in slots.iter().enumerate() {
        match guard {
            Some(g) => {
                e.ins(format!("mov.u64 {slot}, 0"));
                e.ins(format!("@{g} ld.relaxed.gpu.global.u64 {slot}, [{addr}+{}]", 8 * k));
            }
            None => e.ins(format!("ld.relaxed.gpu.global.u64 {slot}, [{addr}+{}]", 8 * k)),
        }
    }
    e.ins(format!("mov.b64 {{{}, {flag}}}, {}", data[0], slots[0]));
    for (d, slot) in data.iter().zip(&slots).skip(1) {
        e.ins(format!("mov.b64 {{{d}, {other}}}, {slot}"));
        e.ins(format!("setp.ne.u32 {differs}, {other}, {flag}"));
        e.ins_c(format!("selp.u32 {flag}, 0, {flag}, {differs}"), "slots of two publications: not yet");
    }
    (data, flag)
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
pub(super) fn op(f: &mut Frame<'_>, params: &[Option<Reg>], x: &(Regs, Reg), y: &(Regs, Reg)) -> (Regs, Reg) {
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
    let record = record_bytes(cx);
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
    for (k, (&z, share)) in plan.outputs.iter().zip(&plan.shares).enumerate() {
        let stage = match share.and_then(|m| in_stages[m]) {
            Some((stage, _)) => stage,
            None => shared(&mut f, &format!("stage_out{k}"), staged_bytes(tile, z), 16),
        };
        out_stages.push(Some((stage, z)));
    }
    let warp_incl = shared(&mut f, "warp_incl", WARPS * elem, 8);
    let warp_valid = shared(&mut f, "warp_valid", WARPS * 4, 4);
    let tile_excl = shared(&mut f, "tile_excl", elem, 8);
    let tile_excl_valid = shared(&mut f, "tile_excl_valid", 4, 4);

    let LookbackArgs { nseq, steps, state_in, state_out, status, has0, rev, no_state, params } = lookback_args(&mut f, &bodies);
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
    e.ins_c(format!("shr.u64 {tps}, {tps}, {}", tile.trailing_zeros()), "the tile is a power of two");
    e.ins(format!("mul.lo.s64 {total}, {nseq}, {tps}"));
    let split = TileSplit::new(&mut f, tps);
    let g = take_tile(&mut f, status, tid32, total);
    let (s, t) = split.apply(&mut f, g);
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

    // A full tile walks each thread's positions unrolled, its staged rows one pointer
    // step apart: the thread's `items` rows are one aligned block inside a pad group
    // when `items · size` divides PAD_EVERY (else only the loop is emitted). This spares
    // the loop's per-position 64-bit row and padding arithmetic, which is most of the
    // instructions of a cheap operator.
    let unrolled = in_stages.iter().chain(&out_stages).flatten().all(|&(_, z)| PAD_EVERY.is_multiple_of(items * z));
    let full = f.l.e.reg(Class::Pred);
    f.l.e.ins(format!("setp.eq.u64 {full}, {len}, {tile}"));
    // Row pointers of the thread's first position in every stage, with their step.
    let walk = |f: &mut Frame<'_>, stages: &[Option<(Reg, usize)>]| -> Vec<Option<(Reg, Reg)>> {
        let r = row_of(f, j0);
        let rows = staged_rows(f, stages, r);
        rows.iter()
            .zip(stages)
            .map(|(row, stage)| {
                let (row, (_, z)) = (row.as_ref()?, stage.as_ref()?);
                let dir = f.l.e.reg(Class::B64);
                f.l.e.ins(format!("selp.s64 {dir}, -{z}, {z}, {rev}"));
                Some((*row, dir))
            })
            .collect()
    };
    let rows_now = |w: &[Option<(Reg, Reg)>]| -> Vec<Option<Reg>> { w.iter().map(|p| p.map(|(r, _)| r)).collect() };
    let advance = |f: &mut Frame<'_>, w: &[Option<(Reg, Reg)>]| {
        for (r, dir) in w.iter().flatten() {
            f.l.e.ins(format!("add.s64 {r}, {r}, {dir}"));
        }
    };

    f.l.e.comment("the thread's aggregate");
    let a = (fresh(&mut f), has);
    // One position of the fold: a = a • lift(x).
    let fold_step = |f: &mut Frame<'_>, rows: &[Option<Reg>]| {
        let x = fresh(f);
        lift_at(f, &params, rows, zero64, view(&x));
        let next = fresh(f);
        combine_into(f, &params, view(&a.0), view(&x), view(&next));
        for (d, s) in a.0.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    };
    let (no_items, fold_loop) = (f.l.e.label("no_items"), f.l.e.label("fold_loop"));
    f.l.e.ins(format!("@!{has} bra {no_items}"));
    if unrolled {
        f.l.e.ins(format!("@!{full} bra {fold_loop}"));
        f.l.e.comment(format!("full tile: {items} positions unrolled"));
        let w = walk(&mut f, &in_stages);
        lift_at(&mut f, &params, &rows_now(&w), zero64, view(&a.0));
        for _ in 1..items {
            advance(&mut f, &w);
            fold_step(&mut f, &rows_now(&w));
        }
        f.l.e.ins(format!("bra.uni {no_items}"));
    }
    f.l.e.place(&fold_loop);
    let r = row_of(&mut f, j0);
    let rows = staged_rows(&mut f, &in_stages, r);
    lift_at(&mut f, &params, &rows, zero64, view(&a.0));
    positions(&mut f, one, &mut |f, j| {
        let r = row_of(f, j);
        let rows = staged_rows(f, &in_stages, r);
        fold_step(f, &rows);
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
    f.l.e.comment("publish the aggregate (status 1), then look back");
    let skip_agg = f.l.e.label("aggregate_published");
    f.l.e.ins(format!("@!{lane0} bra {skip_agg}"));
    publish_record(&mut f, &agg_t.0, rec, AGGREGATE);
    f.l.e.place(&skip_agg);
    look_back_loop(&mut f, &params, LookBack { status, s, tps, t, lane, has0, seq_state, record }, &excl);

    f.l.e.place(&publish);
    let incl_t = op(&mut f, &params, &excl, &agg_t);
    let e = &mut f.l.e;
    let skip_pub = e.label("prefix_published");
    e.ins(format!("@!{lane0} bra {skip_pub}"));
    publish_record(&mut f, &incl_t.0, rec, PREFIX);
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
    // One position of the re-scan: read out and p = p • lift(x).
    let rescan_step = |f: &mut Frame<'_>, rows_in: &[Option<Reg>], rows_out: &[Option<Reg>]| {
        let x = fresh(f);
        lift_at(f, &params, rows_in, zero64, view(&x));
        if exclusive {
            readout_at(f, &params, rows_in, rows_out, zero64, Some(view(&p_)), None);
        }
        let next = fresh(f);
        combine_into(f, &params, view(&p_), view(&x), view(&next));
        if !exclusive {
            readout_at(f, &params, rows_in, rows_out, zero64, Some(view(&next)), None);
        }
        for (d, s) in p_.iter().zip(&next) {
            f.l.mov(*d, *s);
        }
    };
    let e = &mut f.l.e;
    let (rescan_done, from_prefix, rescan_loop) = (e.label("rescan_done"), e.label("from_prefix"), e.label("rescan_loop"));
    e.ins(format!("@!{has} bra {rescan_done}"));
    if unrolled {
        let e = &mut f.l.e;
        let fast = e.reg(Class::Pred);
        e.ins(format!("and.pred {fast}, {full}, {}", start_p.1));
        e.ins(format!("@!{fast} bra {rescan_loop}"));
        e.comment(format!("full tile after a prefix: {items} positions unrolled"));
        for (d, s) in p_.iter().zip(&start_p.0) {
            f.l.mov(*d, *s);
        }
        let (w_in, w_out) = (walk(&mut f, &in_stages), walk(&mut f, &out_stages));
        for k in 0..items {
            if k > 0 {
                advance(&mut f, &w_in);
                advance(&mut f, &w_out);
            }
            rescan_step(&mut f, &rows_now(&w_in), &rows_now(&w_out));
        }
        f.l.e.ins(format!("bra.uni {rescan_done}"));
    }
    let e = &mut f.l.e;
    e.place(&rescan_loop);
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
        rescan_step(f, &rows_in, &rows_out);
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

/// Splits a tile index `g` into its sequence and its tile in the sequence, `g / tps` and
/// `g % tps`, where `tps` (tiles per sequence) is a power of two by shift and mask and
/// in the first sequence (`g < tps`, every tile of a single sequence) at once; else by
/// a 64-bit division, which ptxas makes a subroutine of about 70 instructions on
/// sm_90, on every block's path from the tile counter to its loads.
struct TileSplit {
    tps: Reg,
    mask: Reg,
    shift: Reg,
    pow2: Reg,
}

impl TileSplit {
    /// The shift and mask of `tps`, computed before the tile is known.
    fn new(f: &mut Frame<'_>, tps: Reg) -> TileSplit {
        let e = &mut f.l.e;
        let (mask, low, shift, pow2) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B32), e.reg(Class::Pred));
        e.ins(format!("sub.s64 {mask}, {tps}, 1"));
        e.ins(format!("and.b64 {low}, {tps}, {mask}"));
        e.ins_c(format!("setp.eq.u64 {pow2}, {low}, 0"), "tiles per sequence a power of two");
        e.ins(format!("clz.b64 {shift}, {tps}"));
        e.ins(format!("sub.u32 {shift}, 63, {shift}"));
        TileSplit { tps, mask, shift, pow2 }
    }

    /// `(g / tps, g % tps)`.
    fn apply(&self, f: &mut Frame<'_>, g: Reg) -> (Reg, Reg) {
        let TileSplit { tps, mask, shift, pow2 } = *self;
        let e = &mut f.l.e;
        let (s, t, first) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::Pred));
        let (divide, done) = (e.label("divide"), e.label("split"));
        e.ins(format!("mov.u64 {s}, 0"));
        e.ins(format!("mov.u64 {t}, {g}"));
        e.ins(format!("setp.lt.u64 {first}, {g}, {tps}"));
        e.ins_c(format!("@{first} bra {done}"), "the first sequence");
        e.ins(format!("@!{pow2} bra {divide}"));
        e.ins(format!("shr.u64 {s}, {g}, {shift}"));
        e.ins(format!("and.b64 {t}, {g}, {mask}"));
        e.ins(format!("bra.uni {done}"));
        e.place(&divide);
        let (q, r) = f.divmod(g, tps);
        f.l.e.ins(format!("mov.u64 {s}, {q}"));
        f.l.e.ins(format!("mov.u64 {t}, {r}"));
        f.l.e.place(&done);
        (s, t)
    }
}

/// The block's tile: the next value of the counter at status word 0, taken by thread 0
/// in the order blocks start (so every earlier tile has started) and shared through
/// shared memory; the block leaves when it is at or past `total`.
pub(super) fn take_tile(f: &mut Frame<'_>, status: Reg, tid32: Reg, total: Reg) -> Reg {
    let tile_slot = shared(f, "tile_id", 8, 8);
    let e = &mut f.l.e;
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
    g
}

/// Status of a published record word: the tile's aggregate, or its inclusive prefix
/// (0: nothing yet; the buffer is zeroed before each launch).
pub(super) const AGGREGATE: u32 = 1;
pub(super) const PREFIX: u32 = 2;

/// 32-bit words of an element in registers (an f64 field is two).
fn word_count(cx: &Ctx<'_>) -> usize {
    cx.layout.dtypes.iter().map(|d| if Class::of(d.scalar()) == Class::F64 { 2 } else { 1 }).sum()
}

/// Bytes of one tile's status record: one 8-byte slot per 32-bit word of the element.
pub(super) fn record_bytes(cx: &Ctx<'_>) -> usize {
    8 * word_count(cx)
}

/// The 32-bit words of an element in registers.
fn words_of(f: &mut Frame<'_>, x: &[Reg]) -> Vec<Reg> {
    let mut words = Vec::new();
    for &r in x {
        let e = &mut f.l.e;
        match r.class {
            Class::F64 => {
                let (lo, hi) = (e.reg(Class::B32), e.reg(Class::B32));
                e.ins(format!("mov.b64 {{{lo}, {hi}}}, {r}"));
                words.extend([lo, hi]);
            }
            Class::B32 => words.push(r),
            // F32 (element fields are f32, f64 or i32).
            _ => {
                let w = e.reg(Class::B32);
                e.ins(format!("mov.b32 {w}, {r}"));
                words.push(w);
            }
        }
    }
    words
}

/// Sets the element registers `x` from its 32-bit words (as [`words_of`] gave them).
pub(super) fn set_from_words(f: &mut Frame<'_>, x: &[Reg], words: &[Reg]) {
    let mut k = 0;
    for &r in x {
        if r.class == Class::F64 {
            f.l.e.ins(format!("mov.b64 {r}, {{{}, {}}}", words[k], words[k + 1]));
            k += 2;
        } else {
            f.l.e.ins(format!("mov.b32 {r}, {}", words[k]));
            k += 1;
        }
    }
}

/// Publishes an element at the status record `rec`: each 32-bit word in its own 8-byte
/// slot beside `status`, by relaxed 64-bit stores. A reader that sees one status in
/// every slot has the element that status names, with no fence between data and flag
/// (each slot is one single-copy-atomic access); the prefix overwrites the aggregate.
pub(super) fn publish_record(f: &mut Frame<'_>, x: &[Reg], rec: Reg, status: u32) {
    let words = words_of(f, x);
    let e = &mut f.l.e;
    let (st, slot) = (e.reg(Class::B32), e.reg(Class::B64));
    e.ins(format!("mov.u32 {st}, {status}"));
    for (k, w) in words.iter().enumerate() {
        e.ins(format!("mov.b64 {slot}, {{{w}, {st}}}"));
        e.ins(format!("st.relaxed.gpu.global.u64 [{rec}+{}], {slot}", 8 * k));
    }
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
}

/// Warp 0 folds the predecessors of tile `t` (of sequence `s`), 32 per round, lane l
/// reading tile `base - l` (every slot of its record in one poll, so that the value
/// comes with its status): waits until every lane's record is published (one status in
/// all its slots), then folds the aggregates of the lanes before the first inclusive
/// prefix (or the sequence's start, where the initial state stands in for a prefix)
/// and that prefix. `excl` receives the fold (valid in lane 0).
fn look_back_loop(f: &mut Frame<'_>, params: &[Option<Reg>], lb: LookBack, excl: &(Regs, Reg)) {
    let LookBack { status, s, tps, t, lane, has0, seq_state, record } = lb;
    let words = record / 8;
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
    e.place(&spin);
    let (data, flag) = read_record(e, addr, words, Some(in_seq));
    let (ready, all) = (e.reg(Class::Pred), e.reg(Class::Pred));
    e.ins(format!("setp.ne.u32 {ready}, {flag}, 0"));
    e.ins(format!("or.pred {ready}, {ready}, {not_in}"));
    e.ins(format!("vote.sync.all.pred {all}, {ready}, 0xffffffff"));
    e.ins(format!("@!{all} bra {spin}"));
    let (is_p, at_start, m, k, rb) = (e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::B32));
    e.ins(format!("setp.eq.u32 {is_p}, {flag}, {PREFIX}"));
    e.ins(format!("setp.eq.s64 {at_start}, {ti}, -1"));
    e.ins_c(format!("or.pred {is_p}, {is_p}, {at_start}"), "an inclusive prefix, or the sequence's start");
    e.ins(format!("vote.sync.ballot.b32 {m}, {is_p}, 0xffffffff"));
    e.ins(format!("brev.b32 {rb}, {m}"));
    e.ins_c(format!("clz.b32 {k}, {rb}"), "the first such lane (32: none)");
    let (before, at, take_p, take_init) = (e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::Pred), e.reg(Class::Pred));
    e.ins(format!("setp.lt.u32 {before}, {lane}, {k}"));
    e.ins(format!("setp.eq.u32 {at}, {lane}, {k}"));
    e.ins(format!("and.pred {take_p}, {at}, {in_seq}"));
    e.ins(format!("and.pred {take_init}, {at}, {at_start}"));
    e.ins(format!("and.pred {take_init}, {take_init}, {has0}"));
    let x = (fresh(f), f.l.e.reg(Class::Pred));
    f.l.e.ins(format!("or.pred {}, {before}, {take_p}", x.1));
    set_from_words(f, &x.0, &data);
    let skip_init = f.l.e.label("no_state");
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
