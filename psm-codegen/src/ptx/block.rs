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
//! item, its positions and flags are the block's), as the barriers require. The kernels
//! are in the module only for matrix-valued elements (a field of rank ≥ 2) and when a
//! block's shared memory fits the target ([`shared_limit`]); [`BlockKernels`] says how
//! many bytes each needs, or why it is absent.

use std::collections::BTreeSet;

use psm_ir::ir::{Body, Role};

use super::emit::Class;
use super::kernels::{combine_kernel, scan_kernel, Frame, Generated, Threads};
use super::lower::{Ctx, Lowerer, Split};
use super::math::MathFn;
use super::Kernel;

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

/// Copies `words` 8-byte words from `src` to `dst` (generic), word k by thread
/// `k mod ntid`, then waits for the block. [`COPY_UNROLL`] words of a thread at a time
/// while that many remain, their loads issued before their stores.
pub(super) fn copy_words(l: &mut Lowerer<'_>, dst: super::emit::Reg, src: super::emit::Reg, words: usize, split: Split) {
    let e = &mut l.e;
    e.comment(format!("copy one element ({words} words), split over the block"));
    let (wide, head, done) = (e.label("words_unrolled"), e.label("word"), e.label("words_done"));
    let (k, last, step, a, b) = (e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64), e.reg(Class::B64));
    let p = e.reg(Class::Pred);
    e.ins(format!("mov.u64 {k}, {}", split.tid));
    e.ins_c(format!("shl.b64 {step}, {}, 3", split.ntid), "bytes between a thread's words");
    e.place(&wide);
    e.ins(format!("mad.lo.s64 {last}, {}, {}, {k}", split.ntid, COPY_UNROLL - 1));
    e.ins(format!("setp.ge.u64 {p}, {last}, {words}"));
    e.ins(format!("@{p} bra {head}"));
    let w: Vec<_> = (0..COPY_UNROLL).map(|_| e.reg(Class::B64)).collect();
    e.ins(format!("mad.lo.s64 {a}, {k}, 8, {src}"));
    for (u, w) in w.iter().enumerate() {
        if u > 0 {
            e.ins(format!("add.s64 {a}, {a}, {step}"));
        }
        e.ins(format!("ld.u64 {w}, [{a}]"));
    }
    e.ins(format!("mad.lo.s64 {b}, {k}, 8, {dst}"));
    for (u, w) in w.iter().enumerate() {
        if u > 0 {
            e.ins(format!("add.s64 {b}, {b}, {step}"));
        }
        e.ins(format!("st.u64 [{b}], {w}"));
    }
    e.ins(format!("mad.lo.s64 {k}, {}, {COPY_UNROLL}, {k}", split.ntid));
    e.ins(format!("bra.uni {wide}"));
    e.place(&head);
    e.ins(format!("setp.ge.u64 {p}, {k}, {words}"));
    e.ins(format!("@{p} bra {done}"));
    e.ins(format!("mad.lo.s64 {a}, {k}, 8, {src}"));
    e.ins(format!("mad.lo.s64 {b}, {k}, 8, {dst}"));
    e.ins(format!("ld.u64 {}, [{a}]", w[0]));
    e.ins(format!("st.u64 [{b}], {}", w[0]));
    e.ins(format!("add.s64 {k}, {k}, {}", split.ntid));
    e.ins(format!("bra.uni {head}"));
    e.place(&done);
    e.ins("bar.sync 0");
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
    let fit = |g: Generated, bodies: &[&Body]| -> (Option<Generated>, Result<BlockKernel, String>) {
        let bytes = g.shared_bytes;
        if bytes > limit {
            let why = format!("`{}` needs {bytes} bytes of shared memory per block; the target allows {limit}", g.sig.kernel.name());
            (None, Err(why))
        } else {
            (Some(g), Ok(BlockKernel { shared_bytes: bytes, widest: widest(cx, bodies) }))
        }
    };
    let agg = cx.agg;
    // The bodies are psm_scan's and psm_combine's: no math function beyond theirs.
    let scan_bodies: Vec<&Body> = [&agg.lift, &agg.combine, &agg.readout].into_iter().chain(&agg.identity).collect();
    let (scan, scan_bytes) = fit(scan_kernel(cx, math, Threads::Block), &scan_bodies);
    let (combine, combine_bytes) = fit(combine_kernel(cx, math, Threads::Block), &[&agg.combine]);
    let generated = scan.into_iter().chain(combine).collect();
    (generated, BlockKernels { scan: scan_bytes, combine: combine_bytes })
}
