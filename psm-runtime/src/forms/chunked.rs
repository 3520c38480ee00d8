//! The chunked form (associative operators only), with no per-step element storage.
//! A sequence is cut into a head (steps 0..h) and chunks of c steps after it:
//!
//! 1. in one parallel pass over the batch: each head scanned from s0 (or nothing)
//!    with `WRITE_OUTPUTS`, its exit state the carry of chunk 1 — and, at the same
//!    time, the aggregate of every other chunk but the last: `scan` without outputs;
//! 2. the carries: carry_{q+1} = combine(carry_q, aggregate_q) (sequential per
//!    sequence);
//! 3. each chunk re-scanned from its carry with `WRITE_OUTPUTS` (parallel); the last
//!    chunk's state is the final state.
//!
//! The head needs no aggregate, so its outputs are written while the other threads
//! compute aggregates, and the last chunk's aggregate is not needed either: with
//! `auto` ([`auto_split`]) a sequence has a head and ⌈threads / batch⌉ chunks after
//! it, sized so that the head's scan and one aggregate take about as long. With a
//! given chunk size the head is one chunk. Each sequence holds 2·Q − 1 elements for Q
//! chunks, the head included.

use rayon::prelude::*;

use super::{Ctx, SeqEnd};
use crate::buffers::try_words;
use crate::error::RunError;

/// Head and chunk sizes for `auto`: m = ⌈threads / batch⌉ chunks after the head, so
/// that the last pass keeps every thread busy, and a head about as long to scan with
/// outputs as one aggregate scan (no readouts, no stores) takes. That cost ratio r is
/// 0.96 for cumsum, 0.93 for scalar_affine, 0.71 for GLA and 0.49 for logcumsumexp
/// (measured: `breakdown passes`); the split assumes 0.8, so head = 0.8·chunk and
/// T = head + m·chunk.
///
/// On 2 threads a single sequence then takes max(head, r·chunk) + chunk scans with
/// outputs against head + 2·chunk for the recurrent form: 1.43× (r = 0.96) to 1.56×
/// (r ≤ 0.8); no split does better than (r + 2) / (r + 1) (1.51 to 1.67), since every
/// step after the head is scanned twice.
pub fn auto_split(steps: usize, nseq: usize, threads: usize) -> (usize, usize) {
    let m = threads.max(1).div_ceil(nseq.max(1));
    let head = steps.saturating_mul(4) / (4 + 5 * m);
    let chunk = (steps - head).div_ceil(m).max(1);
    (head.max(1), chunk)
}

/// One task of the first pass.
enum First {
    /// Sequence b's head, with outputs.
    Head(usize),
    /// The aggregate of chunk q (≥ 1) of sequence b, into slot i.
    Aggregate { b: usize, q: usize, i: usize },
}

pub(crate) fn run(ctx: &Ctx<'_>, init: Option<&[u64]>, head: usize, chunk: usize) -> Result<Vec<SeqEnd>, RunError> {
    let n = ctx.steps;
    let chunk = chunk.max(1);
    let head = head.clamp(1, n.max(1));
    // Chunk 0 is the head; chunks 1.. follow it.
    let q_count = 1 + n.saturating_sub(head).div_ceil(chunk);
    let words = ctx.words;
    let range = |q: usize| if q == 0 { (0, head.min(n)) } else { (head + (q - 1) * chunk, (head + q * chunk).min(n)) };
    // Aggregates of chunks 1..Q-1 (not the last) of every sequence.
    let aggs_per_seq = q_count.saturating_sub(2);
    let mut aggs = ctx
        .nseq
        .checked_mul(aggs_per_seq)
        .and_then(|n| try_words(n, words))
        .ok_or_else(|| RunError::TooLarge { what: "the chunk aggregates".into() })?;
    // Phase 1: heads first, so that they start before the aggregates.
    let mut tasks: Vec<First> = (0..ctx.nseq).map(First::Head).collect();
    tasks.extend((0..ctx.nseq).flat_map(|b| (1..q_count - 1).map(move |q| First::Aggregate { b, q, i: b * aggs_per_seq + q - 1 })));
    let aggs_ptr = super::SyncPtr(aggs.as_mut_ptr());
    let heads: Vec<(usize, Option<Vec<u64>>)> = tasks
        .into_par_iter()
        .map_init(
            || ctx.scratch(),
            |scratch, task| match task {
                First::Head(b) => {
                    let s0 = ctx.init_of(init, b);
                    let mut state = s0.map_or_else(|| ctx.element(), <[u64]>::to_vec);
                    let (j0, j1) = range(0);
                    // The head's exit state is the next chunk's carry, or the final state.
                    let keep = q_count > 1 || ctx.keep_state;
                    let held = ctx.scan(b, j0, j1, &mut state, s0.is_some(), true, keep, scratch);
                    Some((b, held.then_some(state)))
                }
                First::Aggregate { b, q, i } => {
                    let p = aggs_ptr;
                    // SAFETY: slot i belongs to this task alone; `aggs` outlives the pass.
                    let out = unsafe { std::slice::from_raw_parts_mut(p.0.add(i * words), words) };
                    let (j0, j1) = range(q);
                    ctx.scan(b, j0, j1, out, false, false, true, scratch);
                    None
                }
            },
        )
        .flatten()
        .collect();
    // Phase 2: the carries of chunks 1..Q-1, per sequence.
    let mut carries: Vec<Vec<Option<Vec<u64>>>> = vec![Vec::new(); ctx.nseq];
    let peak = if n == 0 { usize::from(init.is_some()) } else { 2 * q_count - 1 };
    let mut ends: Vec<SeqEnd> = (0..ctx.nseq).map(|_| SeqEnd { state: None, counter: None, peak }).collect();
    for (b, state) in heads {
        if q_count == 1 {
            ends[b].state = state;
        } else {
            carries[b].push(state);
        }
    }
    let carries: Vec<Vec<Option<Vec<u64>>>> = if q_count > 1 {
        let aggs = &aggs;
        carries
            .into_par_iter()
            .enumerate()
            .map_init(
                || ctx.scratch(),
                |scratch, (b, mut carries)| {
                    for q in 1..q_count - 1 {
                        let i = b * aggs_per_seq + q - 1;
                        let agg = &aggs[i * words..(i + 1) * words];
                        let next = match &carries[q - 1] {
                            Some(c) => ctx.combined(c, agg, scratch),
                            None => agg.to_vec(),
                        };
                        carries.push(Some(next));
                    }
                    carries
                },
            )
            .collect()
    } else {
        carries
    };
    drop(aggs);
    // Phase 3: chunks 1..Q-1 from their carries, writing outputs.
    let tasks: Vec<(usize, usize, Option<Vec<u64>>)> = carries
        .into_iter()
        .enumerate()
        .flat_map(|(b, cs)| cs.into_iter().enumerate().map(move |(k, c)| (b, k + 1, c)))
        .collect();
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
    for (b, q, s) in states {
        if q + 1 == q_count {
            ends[b].state = s;
        }
    }
    Ok(ends)
}
