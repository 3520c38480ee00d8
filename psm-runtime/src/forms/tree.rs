//! The tree form: the fixed Blelloch bracketing of DESIGN.md §1, bit-identical to
//! `psm_ir::derive::tree`.
//!
//! Per sequence of n steps:
//! 1. lift every step (parallel);
//! 2. up-sweep: level i holds the complete aligned blocks of 2^i steps,
//!    `node = combine(left, right)` (parallel over the nodes of a level). Blocks that
//!    run past step n are never read by the reference tree, so they are not built;
//! 3. down-sweep into the prefix array p_0..p_n, top level first: for block size b and
//!    every k with (2k+1)·b ≤ n, `p[(2k+1)·b] = combine(p[2k·b], level_b[2k])` (with
//!    the flagged identity at p_0 this is a copy; with an initial state s0, p_0 = s0).
//!    Within a level the writes go to odd multiples of b and the reads to multiples of
//!    2b, so a level runs in parallel;
//! 4. read out every step (parallel): p_t (exclusive) or p_{t+1} (inclusive) — never
//!    combine(p_t, e_t).
//!
//! A prefill hands the stream the roots of the binary decomposition of n (up-sweep
//! nodes) with their cached folds (down-sweep prefixes), exactly what the counter would
//! hold after n pushes.

use rayon::prelude::*;

use super::stream::Counter;
use super::{Ctx, SeqEnd, SyncPtr};
use crate::buffers::try_words;
use crate::error::RunError;

pub(crate) fn run(ctx: &Ctx<'_>, init: Option<&[u64]>, want_counter: bool) -> Result<Vec<SeqEnd>, RunError> {
    // Each sequence holds about 3n elements (leaves, complete blocks, prefixes).
    let too_large = || RunError::TooLarge { what: format!("the tree of {} steps", ctx.steps) };
    ctx.steps.checked_mul(3).and_then(|n| n.checked_add(1)).and_then(|n| n.checked_mul(ctx.words * 8)).ok_or_else(too_large)?;
    (0..ctx.nseq).into_par_iter().map(|b| sequence(ctx, b, ctx.init_of(init, b), want_counter).ok_or_else(too_large)).collect()
}

/// `None` when an allocation fails.
fn sequence(ctx: &Ctx<'_>, b: usize, s0: Option<&[u64]>, want_counter: bool) -> Option<SeqEnd> {
    let n = ctx.steps;
    let w = ctx.words;
    // 1. Leaves.
    let mut leaves = try_words(n, w)?;
    leaves.par_chunks_mut(w).enumerate().for_each_init(|| ctx.scratch(), |scratch, (j, out)| ctx.lift(b, j, out, scratch));
    // 2. Up-sweep: levels[i] has n >> i nodes.
    let mut levels: Vec<Vec<u64>> = vec![leaves];
    while levels.last().map_or(0, |l| l.len() / w) >= 2 {
        let below = levels.last().expect("non-empty");
        let count = below.len() / w / 2;
        let mut above = try_words(count, w)?;
        above.par_chunks_mut(w).enumerate().for_each_init(
            || ctx.scratch(),
            |scratch, (m, out)| ctx.combine(&below[2 * m * w..(2 * m + 1) * w], &below[(2 * m + 1) * w..(2 * m + 2) * w], out, scratch),
        );
        levels.push(above);
    }
    // 3. Down-sweep into p_0..p_n.
    let mut pre = try_words(n + 1, w)?;
    if let Some(s) = s0 {
        pre[..w].copy_from_slice(s);
    }
    let has0 = s0.is_some();
    let ptr = SyncPtr(pre.as_mut_ptr());
    if n > 0 {
        for i in (0..levels.len()).rev() {
            let block = 1usize << i;
            let level = &levels[i];
            let count = (n / block).div_ceil(2); // k with (2k+1)·block ≤ n
            (0..count).into_par_iter().for_each_init(
                || ctx.scratch(),
                |scratch, k| {
                    let node = &level[2 * k * w..(2 * k + 1) * w];
                    let p = ptr;
                    // SAFETY: slot (2k+1)·block is written by this task only; slot
                    // 2k·block (a multiple of 2·block) was written by an earlier level
                    // (or is p_0) and no task of this level writes it.
                    let (left, out) = unsafe {
                        (
                            std::slice::from_raw_parts(p.0.add(2 * k * block * w), w),
                            std::slice::from_raw_parts_mut(p.0.add((2 * k + 1) * block * w), w),
                        )
                    };
                    if k == 0 && !has0 {
                        out.copy_from_slice(node);
                    } else {
                        ctx.combine(left, node, out, scratch);
                    }
                },
            );
        }
    }
    // 4. Readouts.
    let present = |t: usize| t > 0 || has0;
    let slot = |t: usize| &pre[t * w..(t + 1) * w];
    (0..n).into_par_iter().for_each_init(
        || ctx.scratch(),
        |scratch, j| {
            let t = match ctx.readout_kind {
                psm_ir::ir::ReadoutKind::Exclusive => j,
                psm_ir::ir::ReadoutKind::Inclusive => j + 1,
            };
            ctx.readout(b, j, present(t).then(|| slot(t)), scratch);
        },
    );
    let held: usize = levels.iter().map(|l| l.len() / w).sum::<usize>() + n + 1;
    let state = present(n).then(|| slot(n).to_vec());
    let counter = want_counter.then(|| {
        let mut c = Counter::new(s0.map(<[u64]>::to_vec));
        let mut start = 0usize;
        for i in (0..usize::BITS as usize).rev() {
            if n >> i & 1 == 1 {
                let root = levels[i][(start >> i) * w..((start >> i) + 1) * w].to_vec();
                let end = start + (1 << i);
                let fold = (start > 0 || has0).then(|| slot(end).to_vec());
                c.restore(1u64 << i, root, fold);
                start = end;
            }
        }
        c
    });
    Some(SeqEnd { state, counter, peak: held })
}
