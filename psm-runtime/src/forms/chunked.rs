//! The chunked form (associative operators only), with no per-step element storage:
//!
//! 1. each chunk's aggregate: `scan` without `WRITE_OUTPUTS` (parallel over every
//!    chunk of every sequence; the last chunk of a sequence is not needed);
//! 2. the exclusive scan of the aggregates: carry_0 = s0 (or none),
//!    carry_{q+1} = combine(carry_q, aggregate_q) (sequential per sequence);
//! 3. each chunk re-scanned from its carry with `WRITE_OUTPUTS` (parallel); the last
//!    chunk's state is the final state.
//!
//! Each sequence holds 2·Q − 1 elements for Q chunks.

use rayon::prelude::*;

use super::{Ctx, SeqEnd};
use crate::buffers::try_words;
use crate::error::RunError;

/// Chunk size for `auto`: about four chunks per thread over the whole batch, at least
/// 256 steps each (a chunk re-scans its steps, so tiny chunks only add work).
pub fn auto_chunk(steps: usize, nseq: usize, threads: usize) -> usize {
    let chunks_per_seq = (4 * threads.max(1)).div_ceil(nseq.max(1)).max(1);
    steps.div_ceil(chunks_per_seq).max(256)
}

pub(crate) fn run(ctx: &Ctx<'_>, init: Option<&[u64]>, chunk: usize) -> Result<Vec<SeqEnd>, RunError> {
    let n = ctx.steps;
    let chunk = chunk.max(1);
    let q_count = n.div_ceil(chunk);
    let words = ctx.words;
    let range = |q: usize| (q * chunk, ((q + 1) * chunk).min(n));
    // Phase 1: the aggregates of chunks 0..Q-1 of every sequence.
    let aggs_per_seq = q_count.saturating_sub(1);
    let mut aggs = ctx
        .nseq
        .checked_mul(aggs_per_seq)
        .and_then(|n| try_words(n, words))
        .ok_or_else(|| RunError::TooLarge { what: "the chunk aggregates".into() })?;
    aggs.par_chunks_mut(words).enumerate().for_each_init(
        || ctx.scratch(),
        |scratch, (i, out)| {
            let (b, q) = (i / aggs_per_seq, i % aggs_per_seq);
            let (j0, j1) = range(q);
            ctx.scan(b, j0, j1, out, false, false, true, scratch);
        },
    );
    // Phase 2: carries, per sequence (parallel over the batch, sequential inside).
    let carries: Vec<Vec<Option<Vec<u64>>>> = ctx.map_sequences(|scratch, b| {
        let mut carries = Vec::with_capacity(q_count);
        let mut carry: Option<Vec<u64>> = ctx.init_of(init, b).map(<[u64]>::to_vec);
        for q in 0..q_count {
            let next = if q + 1 < q_count {
                let i = b * aggs_per_seq + q;
                let agg = &aggs[i * words..(i + 1) * words];
                Some(match &carry {
                    Some(c) => ctx.combined(c, agg, scratch),
                    None => agg.to_vec(),
                })
            } else {
                None
            };
            carries.push(carry);
            carry = next;
        }
        carries
    });
    drop(aggs);
    // Phase 3: every chunk from its carry, writing outputs.
    let mut tasks: Vec<(usize, usize, Option<Vec<u64>>)> = Vec::with_capacity(ctx.nseq * q_count);
    for (b, cs) in carries.into_iter().enumerate() {
        for (q, c) in cs.into_iter().enumerate() {
            tasks.push((b, q, c));
        }
    }
    let states: Vec<(usize, usize, Option<Vec<u64>>)> = tasks
        .into_par_iter()
        .map_init(
            || ctx.scratch(),
            |scratch, (b, q, carry)| {
                let has = carry.is_some();
                let mut state = carry.unwrap_or_else(|| ctx.element());
                let (j0, j1) = range(q);
                // Only the last chunk's exit state is the sequence's final state.
                let keep = ctx.keep_state && q + 1 == q_count;
                let held = ctx.scan(b, j0, j1, &mut state, has, true, keep, scratch);
                (b, q, held.then_some(state))
            },
        )
        .collect();
    let peak = if q_count == 0 { usize::from(init.is_some()) } else { 2 * q_count - 1 };
    let mut ends: Vec<SeqEnd> = (0..ctx.nseq)
        .map(|b| SeqEnd { state: ctx.init_of(init, b).map(<[u64]>::to_vec), counter: None, peak })
        .collect();
    for (b, q, s) in states {
        if q + 1 == q_count {
            ends[b].state = s;
        }
    }
    Ok(ends)
}
