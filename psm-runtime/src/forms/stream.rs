//! Streaming: the binary counter of subtree roots with cached partial folds, which
//! reproduces the fixed tree's bracketing exactly (bit-identical to
//! `psm_ir::derive::Stream`) in O(log n) elements and about 2 combines per step, for
//! non-associative operators; one running element for associative ones.
//!
//! An initial state s0 is a bottom root that never merges: the first cached fold is
//! combine(s0, root) instead of the root itself, and the prefix of an empty counter is
//! s0. That is the tree's bracketing with p_0 = s0 (see tree.rs).

use rayon::prelude::*;

use psm_ir::ir::ReadoutKind;

use super::{match_named, Bound, Ctx, Executor, Outputs, RunStats, SeqEnd};
use crate::buffers::{dtype_size, Buffer, Data, Inputs, State, Tensor};
use crate::error::{RunError, Slot};
use crate::kernels::Kernels;

/// Running counts of a stream, per sequence (every sequence of a batch runs the same
/// schedule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Steps pushed since the stream was created (a prefill's steps not included).
    pub steps: u64,
    /// Combines since the stream was created.
    pub combines: u64,
    /// The most elements held at once: roots and cached folds (and s0), or the one
    /// running element.
    pub peak_elements: usize,
}

impl StreamStats {
    pub fn combines_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.combines as f64 / self.steps as f64
        }
    }
}

/// The counter of one sequence.
#[derive(Debug, Clone)]
pub(crate) struct Counter {
    base: Option<Vec<u64>>,
    /// (size, root, fold of base and roots[..=k]); without a base the first fold is
    /// the first root itself (`None`).
    roots: Vec<(u64, Vec<u64>, Option<Vec<u64>>)>,
    pub stats: StreamStats,
}

impl Counter {
    pub fn new(base: Option<Vec<u64>>) -> Counter {
        let mut c = Counter { base, roots: Vec::new(), stats: StreamStats::default() };
        c.stats.peak_elements = c.held();
        c
    }

    fn held(&self) -> usize {
        usize::from(self.base.is_some()) + self.roots.len() + self.roots.iter().filter(|r| r.2.is_some()).count()
    }

    /// Appends a root as a prefill found it (largest first).
    pub fn restore(&mut self, size: u64, root: Vec<u64>, fold: Option<Vec<u64>>) {
        self.roots.push((size, root, fold));
        self.stats.peak_elements = self.stats.peak_elements.max(self.held());
    }

    /// The exclusive prefix before the next push.
    pub fn prefix(&self) -> Option<&[u64]> {
        match self.roots.last() {
            Some((_, root, fold)) => Some(fold.as_deref().unwrap_or(root)),
            None => self.base.as_deref(),
        }
    }

    /// Merges equal-size roots (older on the left), then caches the fold of the new top.
    pub fn push(&mut self, element: Vec<u64>, ctx: &Ctx<'_>, scratch: &mut [u64]) {
        let mut size = 1u64;
        let mut root = element;
        while self.roots.last().is_some_and(|r| r.0 == size) {
            let (_, older, _) = self.roots.pop().expect("checked");
            root = ctx.combined(&older, &root, scratch);
            self.stats.combines += 1;
            size *= 2;
        }
        let fold = self.prefix().map(|p| ctx.combined(p, &root, scratch));
        self.stats.combines += u64::from(fold.is_some());
        self.roots.push((size, root, fold));
        self.stats.steps += 1;
        self.stats.peak_elements = self.stats.peak_elements.max(self.held());
    }
}

/// The state of one sequence of a stream.
#[derive(Debug, Clone)]
pub(crate) enum SeqState {
    /// Associative operators: the running prefix (`None` before any step).
    Running(Option<Vec<u64>>),
    /// Non-associative operators: the counter.
    Counter(Counter),
}

impl SeqState {
    fn new(associative: bool, s0: Option<&[u64]>) -> SeqState {
        if associative {
            SeqState::Running(s0.map(<[u64]>::to_vec))
        } else {
            SeqState::Counter(Counter::new(s0.map(<[u64]>::to_vec)))
        }
    }

    fn prefix(&self) -> Option<&[u64]> {
        match self {
            SeqState::Running(s) => s.as_deref(),
            SeqState::Counter(c) => c.prefix(),
        }
    }

    /// Logical steps j0..j1 of sequence b.
    fn advance(&mut self, ctx: &Ctx<'_>, b: usize, j0: usize, j1: usize, scratch: &mut [u64]) {
        match self {
            SeqState::Running(state) => {
                let has = state.is_some();
                let mut s = state.take().unwrap_or_else(|| ctx.element());
                let held = ctx.scan(b, j0, j1, &mut s, has, true, true, scratch);
                *state = held.then_some(s);
            }
            SeqState::Counter(c) => {
                for j in j0..j1 {
                    let mut e = ctx.element();
                    ctx.lift(b, j, &mut e, scratch);
                    if ctx.readout_kind == ReadoutKind::Exclusive {
                        ctx.readout(b, j, c.prefix(), scratch);
                    }
                    c.push(e, ctx, scratch);
                    if ctx.readout_kind == ReadoutKind::Inclusive {
                        ctx.readout(b, j, c.prefix(), scratch);
                    }
                }
            }
        }
    }
}

/// The stream form of a run: every sequence pushed step by step.
pub(crate) fn run(ctx: &Ctx<'_>, init: Option<&[u64]>) -> Vec<SeqEnd> {
    let associative = ctx.associative;
    (0..ctx.nseq)
        .into_par_iter()
        .map_init(
            || ctx.scratch(),
            |scratch, b| {
                let mut seq = SeqState::new(associative, ctx.init_of(init, b));
                seq.advance(ctx, b, 0, ctx.steps, scratch);
                let state = seq.prefix().map(<[u64]>::to_vec);
                match seq {
                    SeqState::Counter(c) => SeqEnd { state, peak: c.stats.peak_elements, counter: Some(c) },
                    SeqState::Running(_) => SeqEnd { state, peak: 1, counter: None },
                }
            },
        )
        .collect()
}

/// What a run leaves for a stream to continue it without replaying the prompt: per
/// sequence the final state (associative operators) or the counter's roots and cached
/// folds (the tree's up-sweep nodes of the binary decomposition of T, and its
/// down-sweep prefixes). Holds a copy of the run's params.
#[derive(Debug)]
pub struct Prefill {
    exec: Executor,
    params: Vec<Buffer>,
    batch: Vec<usize>,
    steps: u64,
    seqs: Vec<SeqState>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("aggregator", &self.inner.sig.aggregator).finish_non_exhaustive()
    }
}

/// Copies params out of bound addresses.
fn copy_params(exec: &Executor, addrs: &[usize]) -> Vec<Buffer> {
    exec.inner
        .sig
        .params
        .iter()
        .zip(addrs)
        .map(|(s, &a)| {
            // SAFETY: the address is a bound param of `s.len` entries of `s.dtype`,
            // alive for the duration of the run that calls this.
            unsafe {
                match s.dtype {
                    psm_ir::ir::Dtype::F32 => Buffer::F32(std::slice::from_raw_parts(a as *const f32, s.len).to_vec()),
                    psm_ir::ir::Dtype::F64 => Buffer::F64(std::slice::from_raw_parts(a as *const f64, s.len).to_vec()),
                    psm_ir::ir::Dtype::I32 => Buffer::I32(std::slice::from_raw_parts(a as *const i32, s.len).to_vec()),
                }
            }
        })
        .collect()
}

impl Prefill {
    pub(crate) fn new(exec: Executor, bound: &Bound, batch: &[usize], steps: u64, seqs: Vec<SeqState>) -> Prefill {
        let params = copy_params(&exec, &bound.params);
        Prefill { exec, params, batch: batch.to_vec(), steps, seqs }
    }
    /// Steps of the prompt.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    pub fn batch(&self) -> &[usize] {
        &self.batch
    }
}

/// The checks of a push that need no declarations (every backend's streams make them):
/// the stream's batch shape, and no params.
pub(crate) fn check_push(batch: &[usize], inputs: &Inputs<'_>) -> Result<(), RunError> {
    if inputs.batch != batch {
        return Err(RunError::BatchMismatch { what: "the pushed inputs".into(), expected: batch.to_vec(), found: inputs.batch.clone() });
    }
    if let Some((name, _)) = inputs.params.first() {
        return Err(RunError::InvalidOption {
            option: "param",
            message: format!("params are fixed when a stream is opened; `{name}` cannot be pushed"),
        });
    }
    Ok(())
}

/// A push-based run: each [`Stream::push`] takes the next steps of every sequence of
/// the batch and returns their outputs. Non-associative operators keep the binary
/// counter (O(log n) elements, about 2 combines per step, bit-identical to the tree
/// form); associative ones keep one running element.
#[derive(Debug)]
pub struct Stream {
    exec: Executor,
    /// Owns the param data that `param_addrs` point into.
    #[allow(dead_code)]
    params: Vec<Buffer>,
    param_addrs: Vec<usize>,
    batch: Vec<usize>,
    seqs: Vec<SeqState>,
    position: u64,
    stats: StreamStats,
    step0: (Vec<u64>, bool),
    /// The kernels' scratch, kept across pushes of a single sequence: a decode loop
    /// pushes one token per call and should not allocate it every time.
    scratch: Vec<u64>,
}

impl Executor {
    /// Opens a stream over `batch` sequences with the given params, starting from an
    /// initial state (one element per sequence) or from nothing.
    pub fn stream(&self, batch: &[usize], params: &[(String, Data<'_>)], initial_state: Option<&State>) -> Result<Stream, RunError> {
        let addrs = self.bind_params(params)?;
        let params = copy_params(self, &addrs);
        let nseq = batch.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| RunError::TooLarge {
            what: format!("the batch shape {batch:?}"),
        })?;
        let init = initial_state.map(|s| self.bind_state(s, batch)).transpose()?;
        let words = crate::buffers::words(self.inner.kernels.layout());
        let seqs = (0..nseq)
            .map(|b| SeqState::new(self.inner.sig.associative, init.as_ref().map(|s| &s[b * words..(b + 1) * words])))
            .collect();
        Ok(Stream::assemble(self.clone(), params, batch.to_vec(), seqs, 0))
    }
}

impl Stream {
    fn assemble(exec: Executor, params: Vec<Buffer>, batch: Vec<usize>, seqs: Vec<SeqState>, position: u64) -> Stream {
        let mut params = params;
        let param_addrs = params.iter_mut().map(Buffer::addr_mut).collect::<Vec<_>>();
        let bound = Bound { nseq: 0, steps: 0, params: param_addrs.clone(), inputs: Vec::new() };
        let ctx = Ctx::new(&*exec.inner.kernels, &exec.inner.sig, &bound, &[], false, None);
        let step0 = ctx.start_state();
        let mut s =
            Stream { exec, params, param_addrs, batch, seqs, position, stats: StreamStats::default(), step0, scratch: Vec::new() };
        s.refresh_stats(0, false);
        s
    }

    /// Continues a run made with [`RunOptions::prefill`](super::RunOptions::prefill)
    /// (tree, stream, or for associative operators any form), without replaying its
    /// steps: the next push is step T of every sequence.
    pub fn from_prefill(prefill: Prefill) -> Stream {
        let Prefill { exec, params, batch, steps, seqs } = prefill;
        Stream::assemble(exec, params, batch, seqs, steps)
    }

    pub fn batch(&self) -> &[usize] {
        &self.batch
    }

    /// Steps consumed so far, a prefill's included: the index of the next step.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    fn refresh_stats(&mut self, pushed: usize, had_prefix: bool) {
        match self.seqs.first() {
            Some(SeqState::Counter(c)) => self.stats = c.stats,
            Some(SeqState::Running(s)) => {
                self.stats.steps += pushed as u64;
                if pushed > 0 {
                    self.stats.combines += pushed as u64 - u64::from(!had_prefix);
                }
                self.stats.peak_elements = self.stats.peak_elements.max(usize::from(s.is_some()));
            }
            None => self.stats.steps += pushed as u64,
        }
    }

    /// The exclusive prefix p_t of every sequence (the state before the next push);
    /// `None` before the first step when no initial state was given.
    pub fn prefix(&self) -> Option<State> {
        let words = crate::buffers::words(self.exec.inner.kernels.layout());
        let mut flat = Vec::with_capacity(self.seqs.len() * words);
        for s in &self.seqs {
            flat.extend_from_slice(s.prefix()?);
        }
        Some(self.exec.state_of(&self.batch, &flat))
    }

    /// Pushes the next `inputs.steps()` steps (usually 1) of every sequence, shaped
    /// `[batch..., T, field dims...]` like a run's inputs (the batch shape must be the
    /// stream's; params were fixed when the stream was opened), and returns their
    /// outputs.
    pub fn push(&mut self, inputs: &Inputs<'_>) -> Result<Outputs, RunError> {
        check_push(&self.batch, inputs)?;
        let exec = self.exec.clone();
        let sig = &exec.inner.sig;
        let mut lead = inputs.batch.clone();
        lead.push(inputs.steps);
        let data = match_named(sig, Slot::Input, &inputs.inputs, &lead)?;
        let nseq = self.seqs.len();
        let steps = inputs.steps;
        let mut in_addrs = Vec::with_capacity(nseq * data.len());
        for b in 0..nseq {
            for (d, s) in data.iter().zip(&sig.inputs) {
                in_addrs.push(d.addr() + b * steps * s.len * dtype_size(s.dtype));
            }
        }
        let bound = Bound { nseq, steps, params: self.param_addrs.clone(), inputs: in_addrs };
        let mut outputs: Vec<Buffer> = Vec::with_capacity(sig.outputs.len());
        for s in &sig.outputs {
            let n = nseq
                .checked_mul(steps)
                .and_then(|n| n.checked_mul(s.len))
                .filter(|n| n.checked_mul(dtype_size(s.dtype)).is_some())
                .and_then(|n| Buffer::try_zeros(s.dtype, n))
                .ok_or_else(|| RunError::TooLarge { what: format!("output `{}`", s.name) })?;
            outputs.push(n);
        }
        let bases: Vec<usize> = outputs.iter_mut().map(Buffer::addr_mut).collect();
        let mut out_addrs = Vec::with_capacity(nseq * outputs.len());
        for b in 0..nseq {
            for (base, s) in bases.iter().zip(&sig.outputs) {
                out_addrs.push(base + b * steps * s.len * dtype_size(s.dtype));
            }
        }
        let had_prefix = self.seqs.first().is_some_and(|s| s.prefix().is_some());
        let before = self.stats.combines;
        {
            let kernels: &dyn Kernels = &*exec.inner.kernels;
            let ctx = Ctx::new(kernels, sig, &bound, &out_addrs, false, Some(&self.step0));
            let ctx = &ctx;
            if nseq == 1 {
                // The scratch holds no state between calls: kernels write before reading.
                if self.scratch.is_empty() {
                    self.scratch = ctx.scratch();
                }
                self.seqs[0].advance(ctx, 0, 0, steps, &mut self.scratch);
            } else {
                self.seqs
                    .par_iter_mut()
                    .enumerate()
                    .for_each_init(|| ctx.scratch(), |scratch, (b, seq)| seq.advance(ctx, b, 0, steps, scratch));
            }
        }
        self.position += steps as u64;
        self.refresh_stats(steps, had_prefix);
        let stats = RunStats {
            sequences: nseq,
            steps,
            combines: (self.stats.combines - before) * nseq as u64,
            peak_elements: self.stats.peak_elements,
        };
        let outputs = outputs
            .into_iter()
            .zip(&sig.outputs)
            .map(|(data, s)| {
                let mut shape = self.batch.clone();
                shape.push(steps);
                shape.extend(&s.shape);
                Tensor { name: s.name.clone(), shape, data }
            })
            .collect();
        Ok(Outputs {
            batch: self.batch.clone(),
            steps,
            outputs,
            final_state: None,
            prefill: None,
            stats,
            form: super::Form::Stream,
            chunk: None,
        })
    }
}
