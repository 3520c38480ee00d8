//! Block-cooperative kernels: one thread block per work item, for elements too large for
//! one thread (matrix-valued states such as GLA's `s[K, V]`, or combines with large
//! `let` tensors such as attn_agg's attention layer).
//!
//! `psm_scan_block` is `psm_scan` (same parameters, flags, slots and results) with a
//! block per (sequence, chunk), and `psm_combine_block` is `psm_combine` with a block
//! per (row, col). Both are generated from the same bodies by the same code as the
//! per-thread kernels (`kernels::scan_kernel` / `combine_kernel` with
//! `Threads::Block`); what differs is where values live and who computes them:
//!
//! * the scan's three element regions (prefix, lifted element, next prefix) and every
//!   `let` tensor of rank ≥ 1 live in the block's dynamic shared memory (one
//!   `.extern .shared` window per kernel, addressed generically);
//! * each statement that writes memory (a field, a `let` tensor, an output row) has
//!   its entries split over the block's threads, entry k (row-major) by thread
//!   `k mod ntid`; a reduction inside an entry is one thread's sequential left fold, so
//!   every entry is computed by exactly the instructions of the per-thread kernels and
//!   the results are bit for bit theirs;
//! * a statement whose target is a register (a rank-0 `let`, a rank-0 field of the
//!   scan) is computed by every thread, each holding the same value;
//! * every statement ends at `bar.sync 0`, so the next one reads what it wrote and
//!   overwrites nothing it still reads; element copies (state in and out, identity
//!   copies) are split by 8-byte words and end at a barrier too.
//!
//! Every thread of a block follows the same control flow outside the split loops (the
//! item, its positions and flags are the block's), as the barriers require.
//!
//! `psm_scan_block` may split an item's element across [`PARTS`] blocks (`%ctaid.y`
//! the part) where the IR allows it ([`Partition`], found by [`partition`]): each block
//! computes its part of the split tensors and the other tensors whole, and copies only
//! its part of the state in and out. Two blocks per sequence double the SMs a decode
//! step of a batch occupies.
//!
//! The kernels are in the module only for matrix-valued elements (a field of rank ≥ 2)
//! and when a block's shared memory fits the target ([`shared_limit`]); [`BlockKernels`]
//! says how many bytes each needs, or why it is absent.

use std::collections::BTreeSet;

use psm_ir::arena::Handle;
use psm_ir::ir::{Aggregator, Body, Expr, Role, Source, Stmt, Target};

use super::emit::{Class, Reg};
use super::kernels::{combine_kernel, scan_kernel, Frame, Generated, Threads};
use super::lower::{Ctx, Lowerer, Split};
use super::math::MathFn;
use super::Kernel;
use crate::layout::dtype_size;

/// What a launch of each block-cooperative kernel needs to know, or why the module
/// does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKernels {
    /// `psm_scan_block`.
    pub scan: Result<BlockKernel, String>,
    /// `psm_combine_block`.
    pub combine: Result<BlockKernel, String>,
}

/// One block-cooperative kernel of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKernel {
    /// Bytes of dynamic shared memory per block.
    pub shared_bytes: usize,
    /// The most entries one of its statements has: threads beyond it idle.
    pub widest: usize,
    /// Blocks per item, `%ctaid.y` their part (a launch's grid is items × parts):
    /// `Partition::parts` for `psm_scan_block` of a partitioned element, else 1.
    pub parts: usize,
}

/// How `psm_scan_block` splits one item's element across [`PARTS`] blocks: a *part
/// axis* for each tensor the scan's bodies write (element fields, `let` tensors,
/// outputs) that is split, every part axis of the same extent, block b holding
/// coordinates `[b·width, (b+1)·width)` of it; the other tensors are computed whole by
/// every block, from whole tensors only (bit for bit the same in each block).
///
/// Sound when every statement that writes a split tensor reads split tensors only at
/// its own part coordinate — the index at the source's part axis is the target's
/// variable at the target's part axis, no other expression — and every other
/// statement reads no split tensor: then a block computes its part from its part and
/// whole tensors, exactly as one block would. [`partition`] finds such a split from the
/// IR: GLA's `s[i, j]` and `o[j]` along `j` (its readout sums over `i`), `a[i]` whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The part axis of each tensor of the aggregator (by handle index), `None` where whole.
    pub tensors: Vec<Option<usize>>,
    /// The part axis of each `let` tensor.
    pub locals: Vec<Option<usize>>,
    /// The extent of every part axis.
    pub extent: usize,
    /// Coordinates of a part axis per block: `extent / parts`.
    pub width: usize,
    /// Blocks per item.
    pub parts: usize,
}

/// Blocks per item of a partitioned element. Two: a decode batch of 64 sequences then
/// fills 128 blocks — with the three element regions in shared memory (GLA at K = V =
/// 128: 198 KB) a block per SM, 128 of the H200's 132 — and the chunked form's batches,
/// already a block per SM or more, run the same work in twice the blocks of half the
/// size. More parts would want the regions compacted to the block's part.
pub const PARTS: usize = 2;

/// The narrowest part: 8 coordinates (32 bytes of a row of f32). Narrower parts would
/// leave most of a block's threads to the whole tensors.
const MIN_WIDTH: usize = 8;

impl Partition {
    /// The part axis of a statement's target, `None` where it is computed whole.
    pub(super) fn axis(&self, target: Target) -> Option<usize> {
        match target {
            Target::Tensor(t) => self.tensors[t.index()],
            Target::Local(l) => self.locals[l.index()],
        }
    }

    fn source_axis(&self, source: Source) -> Option<usize> {
        match source {
            Source::Element(_, t) => self.tensors[t.index()],
            Source::Local(l) => self.locals[l.index()],
            Source::Input(_) | Source::Param(_) => None,
        }
    }
}

/// The split of the scan's `bodies` into [`PARTS`] parts, when one exists: seeded by
/// each axis of each matrix-valued element field (fields in order, last axis first)
/// whose extent divides into parts of at least [`MIN_WIDTH`], the first seed whose
/// consequences hold.
pub(super) fn partition(cx: &Ctx<'_>, bodies: &[&Body]) -> Option<Partition> {
    let (agg, info) = (cx.agg, cx.info);
    let stmts: Vec<&Stmt> = bodies.iter().flat_map(|b| &b.stmts).collect();
    agg.tensors_of(Role::Element).filter(|&t| info.shape(t).len() >= 2).find_map(|seed| {
        let shape = info.shape(seed);
        (0..shape.len()).rev().find_map(|axis| {
            let extent = shape[axis];
            if !extent.is_multiple_of(PARTS) || extent / PARTS < MIN_WIDTH {
                return None;
            }
            let mut p = Partition {
                tensors: vec![None; agg.tensors.len()],
                locals: vec![None; agg.locals.len()],
                extent,
                width: extent / PARTS,
                parts: PARTS,
            };
            p.tensors[seed.index()] = Some(axis);
            propagate(cx, &stmts, &mut p).then_some(p)
        })
    })
}

/// Splits what the split tensors force to be split (a statement that reads a split
/// tensor writes its target split along the target variable that indexes the read),
/// until nothing changes; false when a statement reads a split tensor other than at
/// its own part coordinate.
fn propagate(cx: &Ctx<'_>, stmts: &[&Stmt], p: &mut Partition) -> bool {
    let (agg, info) = (cx.agg, cx.info);
    loop {
        let mut changed = false;
        for stmt in stmts {
            let mut reads = Vec::new();
            split_reads(agg, stmt.value, p, &mut reads);
            match p.axis(stmt.target) {
                Some(a) => {
                    let own = stmt.indices[a];
                    if !reads.iter().all(|&e| matches!(agg.exprs[e], Expr::Index(v) if v == own)) {
                        return false;
                    }
                }
                None => {
                    let Some(&first) = reads.first() else { continue };
                    let Expr::Index(v) = agg.exprs[first] else { return false };
                    let Some(axis) = stmt.indices.iter().position(|&w| w == v) else { return false };
                    let shape = match stmt.target {
                        Target::Tensor(t) => info.shape(t),
                        Target::Local(l) => &info.local_shapes[l.index()],
                    };
                    if shape[axis] != p.extent {
                        return false;
                    }
                    match stmt.target {
                        Target::Tensor(t) => p.tensors[t.index()] = Some(axis),
                        Target::Local(l) => p.locals[l.index()] = Some(axis),
                    }
                    changed = true;
                }
            }
        }
        if !changed {
            return true;
        }
    }
}

/// The index expressions at the part axis of every read of a split tensor in `e`.
fn split_reads(agg: &Aggregator, e: Handle<Expr>, p: &Partition, out: &mut Vec<Handle<Expr>>) {
    if let Expr::Load { source, indices } = &agg.exprs[e] {
        if let Some(axis) = p.source_axis(*source) {
            out.push(indices[axis]);
        }
    }
    agg.exprs[e].for_each_child(|c| split_reads(agg, c, p, out));
}

impl BlockKernels {
    /// Neither kernel, for one reason.
    pub fn absent(why: &str) -> BlockKernels {
        BlockKernels { scan: Err(why.to_string()), combine: Err(why.to_string()) }
    }
}

/// The most dynamic shared memory one block may use on a target (the opt-in maximum of
/// the CUDA programming guide's table of compute capabilities).
pub fn shared_limit(arch: u32) -> usize {
    let kib = match arch {
        70 | 72 => 96,
        75 => 64,
        80 | 87 => 163,
        86 | 89 => 99,
        _ => 227,
    };
    kib * 1024
}

/// The name of a kernel's dynamic shared window.
pub(super) fn shared_window(kernel: Kernel) -> String {
    format!("{}_shared", kernel.name())
}

/// The block's item (`%ctaid.x`, 64-bit); blocks at or past `count` leave, all their
/// threads together. Turns on the split of statements over the block's threads.
pub(super) fn block_index_below(f: &mut Frame<'_>, count: super::emit::Reg) -> super::emit::Reg {
    let e = &mut f.l.e;
    let (b, t, n) = (e.reg(Class::B32), e.reg(Class::B32), e.reg(Class::B32));
    let (gid, tid, ntid) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    e.comment("the block's item, 64-bit; the thread's place in the block");
    e.ins(format!("mov.u32 {b}, %ctaid.x"));
    e.ins(format!("cvt.u64.u32 {gid}, {b}"));
    let p = e.reg(Class::Pred);
    e.ins(format!("setp.ge.u64 {p}, {gid}, {count}"));
    e.ins(format!("@{p} bra {}", f.exit));
    e.ins(format!("mov.u32 {t}, %tid.x"));
    e.ins(format!("cvt.u64.u32 {tid}, {t}"));
    e.ins(format!("mov.u32 {n}, %ntid.x"));
    e.ins(format!("cvt.u64.u32 {ntid}, {n}"));
    f.l.split = Some(Split { tid, ntid });
    gid
}

/// Enters the block's part of `partition` (`%ctaid.y`): its first coordinate of every
/// part axis, to which the split statements of a partitioned target are restricted.
pub(super) fn enter_part(l: &mut Lowerer<'_>, partition: &Partition) {
    let e = &mut l.e;
    let (y, part, first) = (e.reg(Class::B32), e.reg(Class::B64), e.reg(Class::B64));
    e.comment(format!("the block's part: coordinates [part*{w}, part*{w} + {w}) of each part axis", w = partition.width));
    e.ins(format!("mov.u32 {y}, %ctaid.y"));
    e.ins(format!("cvt.u64.u32 {part}, {y}"));
    e.ins(format!("mul.lo.s64 {first}, {part}, {}", partition.width));
    l.part = Some(super::lower::Part { first, partition: partition.clone() });
}

/// Copies `words` 8-byte words from `src` to `dst` (generic), split over the block,
/// then waits for the block.
pub(super) fn copy_words(l: &mut Lowerer<'_>, dst: Reg, src: Reg, words: usize, split: Split) {
    l.e.comment(format!("copy one element ({words} words), split over the block"));
    copy_runs(l, (dst, src), None, Runs { count: 1, units: words, unit: 8, stride: 0 }, split);
    l.e.ins("bar.sync 0");
}

/// Copies the block's part of an element (whole fields whole, split fields their part)
/// from `src` to `dst` (generic), split over the block, then waits for the block.
/// Rank-0 fields are left to the caller: a block kernel holds them in registers.
pub(super) fn copy_part(l: &mut Lowerer<'_>, dst: Reg, src: Reg, split: Split, part: &super::lower::Part) {
    let (agg, info) = (l.cx.agg, l.cx.info);
    let fields: Vec<_> = agg.tensors_of(Role::Element).zip(l.cx.layout.offsets.clone()).collect();
    l.e.comment("copy the block's part of one element, split over the block");
    for (t, offset) in fields {
        let shape = info.shape(t);
        if shape.is_empty() {
            continue;
        }
        let size = dtype_size(agg.tensors[t].dtype);
        let bytes = shape.iter().product::<usize>() * size;
        let (runs, first) = match part.partition.tensors[t.index()] {
            // Run o of the part: the part's coordinates of the axis at outer coordinate o.
            Some(axis) => {
                let inner = shape[axis + 1..].iter().product::<usize>() * size;
                let run = part.partition.width * inner;
                let first = l.e.reg(Class::B64);
                l.e.ins_c(format!("mul.lo.s64 {first}, {}, {inner}", part.first), format!("the part of field {}", agg.tensors[t].name));
                l.e.ins(format!("add.s64 {first}, {first}, {offset}"));
                (Runs { count: bytes / (part.partition.extent * inner), units: run, unit: 1, stride: part.partition.extent * inner }, Some(first))
            }
            None => (Runs { count: 1, units: bytes, unit: 1, stride: 0 }, Some(l.u64_const(offset as i64))),
        };
        // The widest unit that divides the field's offset, its runs and their stride
        // (a part starts a whole number of runs in).
        let unit = [8, 4, 2, 1].into_iter().find(|u| (runs.units | runs.stride | offset) % u == 0).unwrap_or(1);
        copy_runs(l, (dst, src), first, Runs { units: runs.units / unit, unit, ..runs }, split);
    }
    l.e.ins("bar.sync 0");
}

/// `count` runs of `units` units of `unit` bytes each, run o starting `o · stride`
/// bytes after the first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Runs {
    count: usize,
    units: usize,
    unit: usize,
    stride: usize,
}

/// Copies `runs` starting `first` bytes (a b64 register; 0 when `None`) into `src` to
/// the same offsets in `dst`, unit k by thread `k mod ntid`: [`COPY_UNROLL`] units of
/// a thread at a time while that many remain, their loads issued before their stores.
fn copy_runs(l: &mut Lowerer<'_>, (dst, src): (Reg, Reg), first: Option<Reg>, runs: Runs, split: Split) {
    let total = runs.count * runs.units;
    let class = match runs.unit {
        8 => Class::B64,
        4 => Class::B32,
        _ => Class::B16,
    };
    let bits = 8 * runs.unit;
    // The byte offset of unit `k` (< total) from the start of both elements.
    let offset = |l: &mut Lowerer<'_>, k: Reg| -> Reg {
        let off = l.e.reg(Class::B64);
        if runs.count == 1 {
            l.e.ins(format!("mul.lo.s64 {off}, {k}, {}", runs.unit));
        } else {
            let (q, r) = l.divmod_const(k, runs.units as i64, total as i64);
            l.e.ins(format!("mul.lo.s64 {off}, {r}, {}", runs.unit));
            l.e.ins(format!("mad.lo.s64 {off}, {q}, {}, {off}", runs.stride));
        }
        if let Some(first) = first {
            l.e.ins(format!("add.s64 {off}, {off}, {first}"));
        }
        off
    };
    let load = |l: &mut Lowerer<'_>, k: Reg| {
        let off = offset(l, k);
        let (a, w) = (l.e.reg(Class::B64), l.e.reg(class));
        l.e.ins(format!("add.s64 {a}, {src}, {off}"));
        l.e.ins(format!("ld.b{bits} {w}, [{a}]"));
        (off, w)
    };
    let store = |l: &mut Lowerer<'_>, (off, w): (Reg, Reg)| {
        let b = l.e.reg(Class::B64);
        l.e.ins(format!("add.s64 {b}, {dst}, {off}"));
        l.e.ins(format!("st.b{bits} [{b}], {w}"));
    };
    let single = |l: &mut Lowerer<'_>, k: Reg| {
        let moved = load(l, k);
        store(l, moved);
    };
    l.unrolled(split, total as i64, COPY_UNROLL, ["units_unrolled", "unit", "units_done"], load, store, single);
}

/// Words of an element copy a thread moves at a time.
const COPY_UNROLL: usize = 4;

/// The most entries a statement of `bodies` has.
fn widest(cx: &Ctx<'_>, bodies: &[&Body]) -> usize {
    let entries = |stmt: &psm_ir::ir::Stmt| stmt.indices.iter().map(|&v| cx.info.extent(v)).product::<usize>();
    bodies.iter().flat_map(|b| &b.stmts).map(entries).max().unwrap_or(1)
}

/// The block-cooperative kernels that fit `limit` bytes of shared memory per block, and
/// what [`BlockKernels`] records of each.
/// Only for matrix-valued elements (a field of rank ≥ 2): smaller ones leave a block's
/// threads idle, and one thread per item (or per entry) serves them.
pub(super) fn kernels(cx: &Ctx<'_>, math: &mut BTreeSet<MathFn>, limit: usize) -> (Vec<Generated>, BlockKernels) {
    let matrix = cx.agg.tensors_of(Role::Element).any(|t| cx.info.shape(t).len() >= 2);
    if !matrix {
        return (Vec::new(), BlockKernels::absent("the block kernels are generated for matrix-valued elements (a field of rank 2 or more) only"));
    }
    let fit = |g: Generated, bodies: &[&Body], parts: usize| -> (Option<Generated>, Result<BlockKernel, String>) {
        let bytes = g.shared_bytes;
        if bytes > limit {
            let why = format!("`{}` needs {bytes} bytes of shared memory per block; the target allows {limit}", g.sig.kernel.name());
            (None, Err(why))
        } else {
            (Some(g), Ok(BlockKernel { shared_bytes: bytes, widest: widest(cx, bodies), parts }))
        }
    };
    let agg = cx.agg;
    // The bodies are psm_scan's and psm_combine's: no math function beyond theirs.
    let scan_bodies: Vec<&Body> = [&agg.lift, &agg.combine, &agg.readout].into_iter().chain(&agg.identity).collect();
    let partition = partition(cx, &scan_bodies);
    let parts = partition.as_ref().map_or(1, |p| p.parts);
    let (scan, scan_bytes) = fit(scan_kernel(cx, math, Threads::Block(partition.as_ref())), &scan_bodies, parts);
    let (combine, combine_bytes) = fit(combine_kernel(cx, math, Threads::Block(None)), &[&agg.combine], 1);
    let generated = scan.into_iter().chain(combine).collect();
    (generated, BlockKernels { scan: scan_bytes, combine: combine_bytes })
}
