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

use super::{Addrs, Bound, Ctx, Executor, Form, Io, Outputs, OwnedOutputs, RunStats, RunSummary, Scratch, SeqEnd, Step0};
use crate::buffers::{Buffer, Data, Inputs, OutputsMut, State};
use crate::error::RunError;

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
    /// Element buffers released by merges, reused by later pushes so that a push
    /// allocates nothing once the counter has grown; not counted as held.
    free: Vec<Vec<u64>>,
    pub stats: StreamStats,
}

impl Counter {
    pub fn new(base: Option<Vec<u64>>) -> Counter {
        let mut c = Counter { base, roots: Vec::new(), free: Vec::new(), stats: StreamStats::default() };
        c.stats.peak_elements = c.held();
        c
    }

    fn held(&self) -> usize {
        usize::from(self.base.is_some()) + self.roots.len() + self.roots.iter().filter(|r| r.2.is_some()).count()
    }

    /// An element buffer: a released one, or a new one (its contents are unspecified).
    fn buffer(&mut self, words: usize) -> Vec<u64> {
        self.free.pop().unwrap_or_else(|| vec![0u64; words])
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
            let (_, older, fold) = self.roots.pop().expect("checked");
            let mut merged = self.buffer(ctx.words);
            ctx.combine(&older, &root, &mut merged, scratch);
            self.free.extend([older, root]);
            self.free.extend(fold);
            root = merged;
            self.stats.combines += 1;
            size *= 2;
        }
        let mut fold = self.buffer(ctx.words);
        let fold = match self.prefix() {
            Some(p) => {
                ctx.combine(p, &root, &mut fold, scratch);
                self.stats.combines += 1;
                Some(fold)
            }
            None => {
                self.free.push(fold);
                None
            }
        };
        self.roots.push((size, root, fold));
        self.stats.steps += 1;
        self.stats.peak_elements = self.stats.peak_elements.max(self.held());
    }
}

/// The running prefix of one sequence of an associative operator.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    /// `None` before any step.
    state: Option<Vec<u64>>,
    /// Workspace of single-step pushes ([`Ctx::step`]): the lifted element and the next
    /// state. Empty until the first such push; not counted as held.
    lifted: Vec<u64>,
    next: Vec<u64>,
}

/// The state of one sequence of a stream.
#[derive(Debug, Clone)]
pub(crate) enum SeqState {
    /// Associative operators: the running prefix.
    Running(Running),
    /// Non-associative operators: the counter.
    Counter(Counter),
}

impl SeqState {
    pub(crate) fn running(state: Option<Vec<u64>>) -> SeqState {
        SeqState::Running(Running { state, lifted: Vec::new(), next: Vec::new() })
    }

    fn new(associative: bool, s0: Option<&[u64]>) -> SeqState {
        let s0 = s0.map(<[u64]>::to_vec);
        if associative {
            SeqState::running(s0)
        } else {
            SeqState::Counter(Counter::new(s0))
        }
    }

    fn prefix(&self) -> Option<&[u64]> {
        match self {
            SeqState::Running(r) => r.state.as_deref(),
            SeqState::Counter(c) => c.prefix(),
        }
    }

    /// Logical steps j0..j1 of sequence b.
    fn advance(&mut self, ctx: &Ctx<'_>, b: usize, j0: usize, j1: usize, scratch: &mut [u64]) {
        match self {
            SeqState::Running(Running { state: Some(state), lifted, next }) if j1 == j0 + 1 => {
                if lifted.is_empty() {
                    *lifted = ctx.element();
                    *next = ctx.element();
                }
                ctx.step(b, j0, state, lifted, next, scratch);
            }
            SeqState::Running(Running { state, .. }) => {
                let has = state.is_some();
                let mut s = state.take().unwrap_or_else(|| ctx.element());
                let held = ctx.scan(b, j0, j1, &mut s, has, true, true, scratch);
                *state = held.then_some(s);
            }
            SeqState::Counter(c) => {
                for j in j0..j1 {
                    let mut e = c.buffer(ctx.words);
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
    ctx.map_sequences(|scratch, b| {
        let mut seq = SeqState::new(associative, ctx.init_of(init, b));
        seq.advance(ctx, b, 0, ctx.steps, scratch);
        let state = seq.prefix().map(<[u64]>::to_vec);
        match seq {
            SeqState::Counter(c) => SeqEnd { state, peak: c.stats.peak_elements, counter: Some(c) },
            SeqState::Running(_) => SeqEnd { state, peak: 1, counter: None },
        }
    })
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
                    psm_ir::ir::Dtype::BF16 => Buffer::BF16(std::slice::from_raw_parts(a as *const half::bf16, s.len).to_vec()),
                    psm_ir::ir::Dtype::F16 => Buffer::F16(std::slice::from_raw_parts(a as *const half::f16, s.len).to_vec()),
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
/// the batch and returns their outputs ([`Stream::push_into`] writes them into the
/// caller's buffers). Non-associative operators keep the binary counter (O(log n)
/// elements, about 2 combines per step, bit-identical to the tree form); associative
/// ones keep one running element.
///
/// A push allocates nothing beyond its outputs once the stream is warm: the kernels'
/// scratch, the address tables and the element buffers are kept across pushes, and a
/// push of one step of an associative operator swaps two state buffers instead of
/// copying the state.
#[derive(Debug)]
pub struct Stream {
    exec: Executor,
    /// Owns the param data that `param_addrs` point into.
    #[allow(dead_code)]
    params: Vec<Buffer>,
    param_addrs: Addrs,
    batch: Vec<usize>,
    seqs: Vec<SeqState>,
    position: u64,
    stats: StreamStats,
    step0: Step0,
    /// The kernels' scratch, kept across pushes of a single sequence (the kernels write
    /// it before reading it).
    scratch: Scratch,
    /// The current push's input and output addresses (kept for their capacity).
    in_addrs: Addrs,
    out_addrs: Addrs,
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
        let param_addrs: Addrs = params.iter_mut().map(Buffer::addr_mut).collect();
        let step0 = Step0::new(&*exec.inner.kernels, &param_addrs);
        let mut s = Stream {
            exec,
            params,
            param_addrs,
            batch,
            seqs,
            position,
            stats: StreamStats::default(),
            step0,
            scratch: Scratch::new(),
            in_addrs: Addrs::new(),
            out_addrs: Addrs::new(),
        };
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
            Some(SeqState::Running(r)) => {
                self.stats.steps += pushed as u64;
                if pushed > 0 {
                    self.stats.combines += pushed as u64 - u64::from(!had_prefix);
                }
                self.stats.peak_elements = self.stats.peak_elements.max(usize::from(r.state.is_some()));
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
        self.bind_push(inputs)?;
        let sig = &self.exec.inner.sig;
        let (nseq, steps) = (self.seqs.len(), inputs.steps);
        let mut owned = OwnedOutputs::allocate(sig, nseq, steps)?;
        owned.addrs(sig, nseq, steps, &mut self.out_addrs);
        let stats = self.push_bound(steps);
        let summary = RunSummary { final_state: None, prefill: None, stats, form: Form::Stream, chunk: None };
        Ok(owned.into_outputs(&self.exec.inner.sig, &self.batch, steps, summary))
    }

    /// [`push`](Self::push), writing the outputs into caller-supplied buffers shaped
    /// `[batch..., T, field dims...]` (checked like inputs before anything runs): a
    /// decode loop that reuses its output buffers allocates nothing per push.
    ///
    /// ```
    /// use psm_runtime::{Program, Inputs, OutputsMut};
    /// let src = "aggregator cumsum { input { v } element { v } identity { v = 0.0; } combine(l, r) { v = l.v + r.v; } }";
    /// let cumsum = Program::from_source(src, &[]).unwrap().aggregator("cumsum").unwrap();
    /// let mut s = cumsum.stream(&[]).open().unwrap();
    /// let mut y = [0.0f32];
    /// for x in [1.0f32, 2.0, 3.0] {
    ///     s.push_into(&Inputs::new(&[], 1).input("v", &[x]), &mut OutputsMut::new().output("v", &mut y)).unwrap();
    /// }
    /// assert_eq!(y, [6.0]);
    /// ```
    pub fn push_into(&mut self, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>) -> Result<RunStats, RunError> {
        self.bind_push(inputs)?;
        self.exec.bind_outputs(outputs, &self.batch, inputs.steps, &mut self.out_addrs)?;
        Ok(self.push_bound(inputs.steps))
    }

    /// Checks pushed inputs and binds their addresses.
    fn bind_push(&mut self, inputs: &Inputs<'_>) -> Result<(), RunError> {
        check_push(&self.batch, inputs)?;
        self.exec.bind_inputs(inputs, &mut self.in_addrs)?;
        Ok(())
    }

    /// Runs `steps` steps of every sequence on the bound addresses.
    fn push_bound(&mut self, steps: usize) -> RunStats {
        let nseq = self.seqs.len();
        let had_prefix = self.seqs.first().is_some_and(|s| s.prefix().is_some());
        let before = self.stats.combines;
        {
            let inner = &*self.exec.inner;
            let io = Io { nseq, steps, params: &self.param_addrs, inputs: &self.in_addrs, outputs: &self.out_addrs };
            let ctx = Ctx::new(&*inner.kernels, &inner.sig, io, false, Some(&self.step0));
            let ctx = &ctx;
            if nseq == 1 {
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
        RunStats { sequences: nseq, steps, combines: (self.stats.combines - before) * nseq as u64, peak_elements: self.stats.peak_elements }
    }
}
