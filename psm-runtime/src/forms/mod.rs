//! The executor: one compiled aggregator ([`Kernels`]) run over batches of sequences in
//! one of the forms of DESIGN.md §1.
//!
//! * [`recurrent`] — the fused `scan` per sequence, rayon over the batch;
//! * [`chunked`] — 3-phase chunked scan (associative operators only): chunk aggregates
//!   (parallel), exclusive scan of the aggregates (sequential), each chunk re-scanned
//!   from its carry writing outputs (parallel); no per-step element storage;
//! * [`tree`] — the fixed Blelloch bracketing, bit-identical to `psm_ir::derive::tree`:
//!   lift every step, up-sweep level by level, down-sweep, read out every step;
//! * [`stream`] — the binary counter of subtree roots with cached partial folds
//!   (bit-identical to `psm_ir::derive::Stream`) for non-associative operators, one
//!   running element for associative ones; also the push-based [`Stream`] handle.
//!
//! Semantics shared by every form:
//! * inputs `[batch..., T, field dims...]`, outputs likewise, params as declared;
//! * an initial state s0 (one element per sequence) precedes step 0: every prefix is
//!   the left fold that starts from s0, `p_t = (((s0 • B_1) • B_2) • …)` over the form's
//!   blocks `B_i` (for an associative operator simply `s0 • e_0 • … • e_{t-1}`). The
//!   stream holds s0 as a bottom root that never merges, so tree and stream stay
//!   bit-identical with an initial state too;
//! * the final state is p_T; for T = 0 without an initial state it is the declared
//!   identity, or absent when none is declared (the flagged identity has no value);
//! * `reverse` runs the scan from the last step to the first (step T − 1 is the first
//!   operand): the same as scanning the reversed sequence, without a flipped copy;
//! * exclusive readouts read p_t (at the first step without s0: the declared identity,
//!   else zeros with `empty(p)` true); inclusive readouts read p_{t+1}.

pub mod chunked;
pub mod recurrent;
pub mod stream;
pub mod tree;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use psm_ir::ir::{Aggregator, Dtype, ReadoutKind, Role};
use psm_ir::valid::Info;
use rayon::ThreadPool;

use crate::buffers::{dtype_size, read_field, try_words, write_field, Buffer, Data, Inputs, State, Tensor};
use crate::error::{RunError, Slot};
use crate::kernels::{InputPtrs, Kernels, OutputPtrs, ParamPtrs, HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};

pub use stream::{Prefill, Stream, StreamStats};

/// Which schedule a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Form {
    /// Tree for non-associative operators. For associative ones: recurrent with one
    /// thread, at batch ≥ threads, or for T ≤ 2048; otherwise chunked, with chunks of
    /// max(256, ⌈T / ⌈4·threads / batch⌉⌉) steps (about four chunks per thread).
    #[default]
    Auto,
    Recurrent,
    Chunked,
    Tree,
    Stream,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Auto => "auto",
            Form::Recurrent => "recurrent",
            Form::Chunked => "chunked",
            Form::Tree => "tree",
            Form::Stream => "stream",
        }
    }
    pub fn from_name(name: &str) -> Option<Form> {
        [Form::Auto, Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream].into_iter().find(|f| f.name() == name)
    }
}

/// How to run: form, chunk size, direction, states, threads.
#[derive(Clone, Default)]
pub struct RunOptions<'a> {
    pub form: Form,
    /// Steps per chunk of the chunked form; `None` chooses from T, the batch and the
    /// thread count.
    pub chunk: Option<usize>,
    /// Scan from the last step to the first.
    pub reverse: bool,
    /// One element per sequence that precedes step 0.
    pub initial_state: Option<&'a State>,
    /// Return p_T of every sequence in [`Outputs::final_state`].
    pub final_state: bool,
    /// Keep what a [`Stream`] needs to continue after this run
    /// ([`Outputs::take_prefill`], [`Stream::from_prefill`]). Forward runs only.
    pub prefill: bool,
    /// Run on a pool of this many threads, built once per executor and reused.
    pub threads: Option<usize>,
    /// Run on this pool (takes precedence over `threads`). Without either, the run uses
    /// the current rayon context: the global pool, or a pool the caller installed.
    pub pool: Option<&'a ThreadPool>,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("form", &self.form)
            .field("chunk", &self.chunk)
            .field("reverse", &self.reverse)
            .field("initial_state", &self.initial_state.is_some())
            .field("final_state", &self.final_state)
            .field("prefill", &self.prefill)
            .field("threads", &self.threads)
            .field("pool", &self.pool.map(|p| p.current_num_threads()))
            .finish()
    }
}

/// One declared tensor: name, shape, entries, dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub len: usize,
    pub dtype: Dtype,
}

/// What an aggregator takes and returns at one choice of dims, and whether it may be
/// rebracketed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub aggregator: String,
    pub params: Vec<FieldSpec>,
    pub inputs: Vec<FieldSpec>,
    pub element: Vec<FieldSpec>,
    pub outputs: Vec<FieldSpec>,
    pub readout: ReadoutKind,
    /// `Report::associative()`: every form may run; otherwise tree and stream only.
    pub associative: bool,
}

impl Signature {
    pub fn new(agg: &Aggregator, info: &Info, associative: bool) -> Signature {
        let specs = |role| {
            agg.tensors_of(role)
                .map(|t| FieldSpec {
                    name: agg.tensors[t].name.clone(),
                    shape: info.shape(t).to_vec(),
                    len: info.len(t),
                    dtype: agg.tensors[t].dtype,
                })
                .collect()
        };
        Signature {
            aggregator: agg.name.clone(),
            params: specs(Role::Param),
            inputs: specs(Role::Input),
            element: specs(Role::Element),
            outputs: specs(Role::Output),
            readout: agg.readout_kind,
            associative,
        }
    }
    /// The forms this operator may run in (`auto` resolves to one of them).
    pub fn forms(&self) -> Vec<&'static str> {
        if self.associative {
            vec!["recurrent", "chunked", "tree", "stream"]
        } else {
            vec!["tree", "stream"]
        }
    }
    fn slot(&self, slot: Slot) -> &[FieldSpec] {
        match slot {
            Slot::Input => &self.inputs,
            Slot::Param => &self.params,
            Slot::State => &self.element,
        }
    }
}

/// Counts of one run. `combines` is summed over the batch; `peak_elements` is the most
/// element buffers one sequence holds at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub sequences: usize,
    pub steps: usize,
    pub combines: u64,
    pub peak_elements: usize,
}

impl RunStats {
    /// Combines per step of one sequence (0 for empty runs).
    pub fn combines_per_step(&self) -> f64 {
        let n = self.sequences as f64 * self.steps as f64;
        if n > 0.0 {
            self.combines as f64 / n
        } else {
            0.0
        }
    }
}

/// The results of a run: outputs by name, `[batch..., T, field dims...]`.
#[derive(Debug)]
pub struct Outputs {
    pub(crate) batch: Vec<usize>,
    pub(crate) steps: usize,
    pub(crate) outputs: Vec<Tensor>,
    pub(crate) final_state: Option<State>,
    pub(crate) prefill: Option<Prefill>,
    pub(crate) stats: RunStats,
    pub(crate) form: Form,
    pub(crate) chunk: Option<usize>,
}

impl Outputs {
    pub fn get(&self, name: &str) -> Option<&Buffer> {
        self.tensor(name).map(|t| &t.data)
    }
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.name == name)
    }
    /// An f32 output's values (`None` when absent or of another dtype).
    pub fn f32(&self, name: &str) -> Option<&[f32]> {
        self.get(name).and_then(Buffer::as_f32)
    }
    pub fn f64(&self, name: &str) -> Option<&[f64]> {
        self.get(name).and_then(Buffer::as_f64)
    }
    pub fn i32(&self, name: &str) -> Option<&[i32]> {
        self.get(name).and_then(Buffer::as_i32)
    }
    /// Every output, in declaration order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.outputs
    }
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.outputs
    }
    pub fn batch(&self) -> &[usize] {
        &self.batch
    }
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// p_T of every sequence, when [`RunOptions::final_state`] was set (absent for T = 0
    /// without an initial state or a declared identity).
    pub fn final_state(&self) -> Option<&State> {
        self.final_state.as_ref()
    }
    /// What a stream needs to continue this run, when [`RunOptions::prefill`] was set.
    pub fn take_prefill(&mut self) -> Option<Prefill> {
        self.prefill.take()
    }
    pub fn stats(&self) -> RunStats {
        self.stats
    }
    /// The form that ran (`auto` resolved).
    pub fn form(&self) -> Form {
        self.form
    }
    /// The chunk size of a chunked run.
    pub fn chunk(&self) -> Option<usize> {
        self.chunk
    }
}

/// Runs one compiled aggregator. Cheap to clone (shared).
#[derive(Clone)]
pub struct Executor {
    pub(crate) inner: Arc<ExecInner>,
}

pub(crate) struct ExecInner {
    pub(crate) sig: Signature,
    pub(crate) kernels: Arc<dyn Kernels>,
    pools: Mutex<Vec<(usize, Arc<ThreadPool>)>>,
}

/// Validated data of one run: addresses of the user's buffers.
pub(crate) struct Bound {
    pub nseq: usize,
    pub steps: usize,
    pub params: Vec<usize>,
    /// `nseq × inputs`: the base of sequence b's data of input k at `[b · n + k]`.
    pub inputs: Vec<usize>,
}

pub(crate) fn product(dims: &[usize], what: impl Fn() -> String) -> Result<usize, RunError> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| RunError::TooLarge { what: what() })
}

/// Matches named data against declarations: unknown, duplicate, missing, dtype and
/// length errors, in that order. Returns the data in declaration order.
pub(crate) fn match_named<'d>(
    sig: &Signature,
    slot: Slot,
    given: &[(String, Data<'d>)],
    lead: &[usize],
) -> Result<Vec<Data<'d>>, RunError> {
    let specs = sig.slot(slot);
    for (name, _) in given {
        if !specs.iter().any(|s| &s.name == name) {
            let belongs_to = [Slot::Input, Slot::Param, Slot::State]
                .into_iter()
                .find(|&o| o != slot && sig.slot(o).iter().any(|s| &s.name == name));
            return Err(RunError::Unknown {
                slot,
                name: name.clone(),
                declared: specs.iter().map(|s| s.name.clone()).collect(),
                belongs_to,
            });
        }
    }
    for (i, (name, _)) in given.iter().enumerate() {
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(RunError::Duplicate { slot, name: name.clone() });
        }
    }
    let lead_len = product(lead, || format!("the batch shape {lead:?}"))?;
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let Some((_, data)) = given.iter().find(|(n, _)| n == &s.name) else {
            return Err(RunError::Missing { slot, name: s.name.clone() });
        };
        if data.dtype() != s.dtype {
            return Err(RunError::WrongDtype { slot, name: s.name.clone(), expected: s.dtype, found: data.dtype() });
        }
        let expected = lead_len
            .checked_mul(s.len)
            .filter(|n| n.checked_mul(dtype_size(s.dtype)).is_some())
            .ok_or_else(|| RunError::TooLarge { what: format!("{} `{}`", slot.name(), s.name) })?;
        if data.len() != expected {
            let mut shape = lead.to_vec();
            shape.extend(&s.shape);
            return Err(RunError::WrongLength { slot, name: s.name.clone(), expected, found: data.len(), shape });
        }
        out.push(*data);
    }
    Ok(out)
}

impl Executor {
    /// An executor over any implementation of the kernels. `sig` must describe the
    /// aggregator the kernels were compiled from.
    pub fn new(sig: Signature, kernels: Arc<dyn Kernels>) -> Executor {
        Executor { inner: Arc::new(ExecInner { sig, kernels, pools: Mutex::new(Vec::new()) }) }
    }

    pub fn signature(&self) -> &Signature {
        &self.inner.sig
    }

    pub fn kernels(&self) -> &Arc<dyn Kernels> {
        &self.inner.kernels
    }

    /// The pool of `n` threads, built on first use.
    pub(crate) fn pool(&self, n: usize) -> Result<Arc<ThreadPool>, RunError> {
        let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = pools.iter().find(|(k, _)| *k == n) {
            return Ok(p.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| RunError::ThreadPool { message: e.to_string() })?;
        let pool = Arc::new(pool);
        pools.push((n, pool.clone()));
        Ok(pool)
    }

    pub(crate) fn bind_params(&self, given: &[(String, Data<'_>)]) -> Result<Vec<usize>, RunError> {
        Ok(match_named(&self.inner.sig, Slot::Param, given, &[])?.iter().map(Data::addr).collect())
    }

    /// Checks a run's data and returns the addresses the kernels read.
    pub(crate) fn bind(&self, inputs: &Inputs<'_>) -> Result<Bound, RunError> {
        let sig = &self.inner.sig;
        let params = self.bind_params(&inputs.params)?;
        let mut lead = inputs.batch.clone();
        lead.push(inputs.steps);
        let data = match_named(sig, Slot::Input, &inputs.inputs, &lead)?;
        let nseq = product(&inputs.batch, || format!("the batch shape {:?}", inputs.batch))?;
        let steps = inputs.steps;
        let mut addrs = Vec::with_capacity(nseq * data.len());
        for b in 0..nseq {
            for (d, s) in data.iter().zip(&sig.inputs) {
                // In bounds: the length check above covers nseq · T · len entries.
                addrs.push(d.addr() + b * steps * s.len * dtype_size(s.dtype));
            }
        }
        Ok(Bound { nseq, steps, params, inputs: addrs })
    }

    /// Checks an initial state against the element and the batch shape; returns one
    /// element buffer per sequence, flat (`nseq × words`).
    pub(crate) fn bind_state(&self, state: &State, batch: &[usize]) -> Result<Vec<u64>, RunError> {
        if state.batch != batch {
            return Err(RunError::BatchMismatch {
                what: "the initial state".into(),
                expected: batch.to_vec(),
                found: state.batch.clone(),
            });
        }
        let given: Vec<(String, Data<'_>)> = state.fields.iter().map(|t| (t.name.clone(), t.data.as_data())).collect();
        let data = match_named(&self.inner.sig, Slot::State, &given, batch)?;
        let layout = self.inner.kernels.layout();
        let words = crate::buffers::words(layout);
        let nseq = product(batch, || format!("the batch shape {batch:?}"))?;
        let mut out = try_words(nseq, words).ok_or_else(|| RunError::TooLarge { what: "the initial state".into() })?;
        for b in 0..nseq {
            let elem = &mut out[b * words..(b + 1) * words];
            for (k, d) in data.iter().enumerate() {
                write_field(layout, k, elem, *d, b * layout.field_lens[k]);
            }
        }
        Ok(out)
    }

    /// Element buffers (`nseq × words`, flat) as a named state.
    pub(crate) fn state_of(&self, batch: &[usize], elems: &[u64]) -> State {
        let layout = self.inner.kernels.layout();
        let words = crate::buffers::words(layout);
        let nseq = elems.len() / words.max(1);
        let fields = self
            .inner
            .sig
            .element
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let mut data = Buffer::zeros(s.dtype, 0);
                for b in 0..nseq {
                    read_field(layout, k, &elems[b * words..(b + 1) * words], &mut data);
                }
                let mut shape = batch.to_vec();
                shape.extend(&s.shape);
                Tensor { name: s.name.clone(), shape, data }
            })
            .collect();
        State { batch: batch.to_vec(), fields }
    }

    /// Runs every sequence of `inputs` in one form.
    ///
    /// Errors: unknown, duplicate or missing inputs and params, wrong dtypes or lengths,
    /// an initial state of another batch shape, a rebracketing form for a
    /// non-associative operator, out-of-range options. Never panics on user data;
    /// NaN and infinities flow through.
    pub fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        self.check_options(opts)?;
        let bound = self.bind(inputs)?;
        let init = opts.initial_state.map(|s| self.bind_state(s, &inputs.batch)).transpose()?;
        let go = || self.run_bound(inputs, &bound, init.as_deref(), opts);
        match (opts.pool, opts.threads) {
            (Some(pool), _) => pool.install(go),
            (None, Some(n)) => self.pool(n)?.install(go),
            (None, None) => go(),
        }
    }

    /// The checks of a run's options that need no data (every backend makes them).
    pub(crate) fn check_options(&self, opts: &RunOptions<'_>) -> Result<(), RunError> {
        let sig = &self.inner.sig;
        if opts.chunk == Some(0) {
            return Err(RunError::InvalidOption { option: "chunk", message: "a chunk holds at least one step".into() });
        }
        if opts.threads == Some(0) {
            return Err(RunError::InvalidOption { option: "threads", message: "at least one thread is needed".into() });
        }
        if opts.prefill && opts.reverse {
            return Err(RunError::InvalidOption {
                option: "prefill",
                message: "a stream continues a forward scan; a reversed run cannot hand off to one".into(),
            });
        }
        if matches!(opts.form, Form::Recurrent | Form::Chunked) && !sig.associative {
            return Err(RunError::FormNotValid { form: opts.form, aggregator: sig.aggregator.clone(), valid: sig.forms() });
        }
        Ok(())
    }

    fn resolve(&self, form: Form, nseq: usize, steps: usize, threads: usize) -> Form {
        match form {
            Form::Auto if !self.inner.sig.associative => Form::Tree,
            Form::Auto if threads <= 1 || nseq >= threads || steps <= 2048 => Form::Recurrent,
            Form::Auto => Form::Chunked,
            f => f,
        }
    }

    fn run_bound(&self, inputs: &Inputs<'_>, bound: &Bound, init: Option<&[u64]>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        let sig = &self.inner.sig;
        let k = &*self.inner.kernels;
        let threads = rayon::current_num_threads();
        let form = self.resolve(opts.form, bound.nseq, bound.steps, threads);
        let (nseq, steps) = (bound.nseq, bound.steps);
        // Outputs, zeroed; every entry is written by the form.
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
        let mut out_addrs = Vec::with_capacity(nseq * outputs.len());
        let bases: Vec<usize> = outputs.iter_mut().map(Buffer::addr_mut).collect();
        for b in 0..nseq {
            for (base, s) in bases.iter().zip(&sig.outputs) {
                out_addrs.push(base + b * steps * s.len * dtype_size(s.dtype));
            }
        }
        let mut ctx = Ctx::new(k, sig, bound, &out_addrs, opts.reverse, None);
        ctx.keep_state = opts.final_state || opts.prefill;
        let want_counter = opts.prefill && !sig.associative;
        let chunk = match form {
            Form::Chunked => Some(opts.chunk.unwrap_or_else(|| chunked::auto_chunk(steps, nseq, threads))),
            _ => None,
        };
        let ends: Vec<SeqEnd> = match form {
            Form::Recurrent => recurrent::run(&ctx, init),
            Form::Chunked => chunked::run(&ctx, init, chunk.unwrap_or(1))?,
            Form::Tree => tree::run(&ctx, init, want_counter)?,
            Form::Stream => stream::run(&ctx, init),
            // `resolve` never returns Auto.
            Form::Auto => recurrent::run(&ctx, init),
        };
        let peak = ends.iter().map(|e| e.peak).max().unwrap_or(0);
        let stats = RunStats { sequences: nseq, steps, combines: ctx.combines.load(Ordering::Relaxed), peak_elements: peak };
        let has_final = ends.first().is_some_and(|e| e.state.is_some()) || (nseq == 0 && (steps > 0 || init.is_some()));
        let words = crate::buffers::words(k.layout());
        let final_flat: Option<Vec<u64>> = if !opts.final_state {
            None
        } else if has_final {
            Some(ends.iter().flat_map(|e| e.state.clone().unwrap_or_else(|| vec![0; words])).collect())
        } else {
            // T = 0 without s0: the declared identity, if any.
            let mut scratch = ctx.scratch();
            let mut id = vec![0u64; words];
            // SAFETY: element and scratch buffers of the layout's sizes; params bound.
            let declared = unsafe { k.identity(ctx.params_ptr(), id.as_mut_ptr() as *mut u8, scratch.as_mut_ptr() as *mut u8) };
            declared.then(|| id.repeat(nseq))
        };
        let final_state = final_flat.map(|f| self.state_of(&inputs.batch, &f));
        let prefill = if opts.prefill {
            let seqs = ends
                .into_iter()
                .map(|e| match e.counter {
                    // Non-associative: the tree's or the stream's counter.
                    Some(c) => stream::SeqState::Counter(c),
                    None => stream::SeqState::Running(e.state),
                })
                .collect();
            Some(Prefill::new(self.clone(), bound, &inputs.batch, steps as u64, seqs))
        } else {
            None
        };
        let outputs = outputs
            .into_iter()
            .zip(&sig.outputs)
            .map(|(data, s)| {
                let mut shape = inputs.batch.clone();
                shape.push(steps);
                shape.extend(&s.shape);
                Tensor { name: s.name.clone(), shape, data }
            })
            .collect();
        Ok(Outputs { batch: inputs.batch.clone(), steps, outputs, final_state, prefill, stats, form, chunk })
    }
}

/// What one sequence's run leaves behind.
pub(crate) struct SeqEnd {
    /// p_T, when there is one.
    pub state: Option<Vec<u64>>,
    /// The stream counter that continues this run (tree and stream, when asked).
    pub counter: Option<stream::Counter>,
    /// The most element buffers held at once.
    pub peak: usize,
}

/// Everything a form needs to call the kernels for one run.
pub(crate) struct Ctx<'a> {
    pub k: &'a dyn Kernels,
    pub words: usize,
    scratch_words: usize,
    params: &'a [usize],
    inputs: &'a [usize],
    outputs: &'a [usize],
    n_in: usize,
    n_out: usize,
    pub nseq: usize,
    pub steps: usize,
    pub reverse: bool,
    pub readout_kind: ReadoutKind,
    pub associative: bool,
    pub combines: AtomicU64,
    /// What an exclusive readout reads before any prefix: the identity (empty = false)
    /// or zeros (empty = true).
    pub step0: (Vec<u64>, bool),
    /// The caller reads the final state (or hands the run to a stream).
    pub keep_state: bool,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        k: &'a dyn Kernels,
        sig: &Signature,
        bound: &'a Bound,
        outputs: &'a [usize],
        reverse: bool,
        step0: Option<&(Vec<u64>, bool)>,
    ) -> Ctx<'a> {
        let words = crate::buffers::words(k.layout());
        let mut ctx = Ctx {
            k,
            words,
            scratch_words: k.scratch_size().div_ceil(8).max(1),
            params: &bound.params,
            inputs: &bound.inputs,
            outputs,
            n_in: sig.inputs.len(),
            n_out: sig.outputs.len(),
            nseq: bound.nseq,
            steps: bound.steps,
            reverse,
            readout_kind: sig.readout,
            associative: sig.associative,
            combines: AtomicU64::new(0),
            step0: (vec![0u64; words], true),
            keep_state: true,
        };
        ctx.step0 = match step0 {
            Some(s) => s.clone(),
            None => ctx.start_state(),
        };
        ctx
    }

    pub(crate) fn start_state(&self) -> (Vec<u64>, bool) {
        let mut e = vec![0u64; self.words];
        let mut s = self.scratch();
        // SAFETY: buffers of the layout's and scratch's sizes; params bound.
        let declared = unsafe { self.k.identity(self.params_ptr(), e.as_mut_ptr() as *mut u8, s.as_mut_ptr() as *mut u8) };
        if declared {
            (e, false)
        } else {
            (vec![0u64; self.words], true)
        }
    }

    pub fn scratch(&self) -> Vec<u64> {
        vec![0u64; self.scratch_words]
    }
    pub fn element(&self) -> Vec<u64> {
        vec![0u64; self.words]
    }
    pub fn params_ptr(&self) -> ParamPtrs {
        self.params.as_ptr() as ParamPtrs
    }
    fn inputs_ptr(&self, b: usize) -> InputPtrs {
        self.inputs[b * self.n_in..].as_ptr() as InputPtrs
    }
    fn outputs_ptr(&self, b: usize) -> OutputPtrs {
        self.outputs[b * self.n_out..].as_ptr() as OutputPtrs
    }
    /// The buffer step of logical step j (j-th in scan order).
    pub fn phys(&self, j: usize) -> u64 {
        (if self.reverse { self.steps - 1 - j } else { j }) as u64
    }

    pub fn lift(&self, b: usize, j: usize, out: &mut [u64], scratch: &mut [u64]) {
        // SAFETY: j < steps and b < nseq (callers), so the step is inside the bound data.
        unsafe {
            self.k.lift(self.params_ptr(), self.inputs_ptr(b), self.phys(j), out.as_mut_ptr() as *mut u8, scratch.as_mut_ptr() as *mut u8)
        }
    }

    pub fn combine(&self, l: &[u64], r: &[u64], out: &mut [u64], scratch: &mut [u64]) {
        self.combines.fetch_add(1, Ordering::Relaxed);
        // SAFETY: three distinct element buffers of the layout's size.
        unsafe {
            self.k.combine(
                self.params_ptr(),
                l.as_ptr() as *const u8,
                r.as_ptr() as *const u8,
                out.as_mut_ptr() as *mut u8,
                scratch.as_mut_ptr() as *mut u8,
            )
        }
    }

    pub fn combined(&self, l: &[u64], r: &[u64], scratch: &mut [u64]) -> Vec<u64> {
        let mut out = self.element();
        self.combine(l, r, &mut out, scratch);
        out
    }

    /// The readout of logical step j of sequence b from `state` (`None`: no prefix yet).
    /// Writes only step j's outputs, so disjoint steps may run in parallel.
    pub fn readout(&self, b: usize, j: usize, state: Option<&[u64]>, scratch: &mut [u64]) {
        let (s, empty) = match state {
            Some(s) => (s, false),
            None => (&self.step0.0[..], self.step0.1),
        };
        // SAFETY: j < steps, b < nseq; outputs of distinct steps do not overlap.
        unsafe {
            self.k.readout(
                self.params_ptr(),
                s.as_ptr() as *const u8,
                self.inputs_ptr(b),
                self.phys(j),
                self.outputs_ptr(b),
                empty,
                scratch.as_mut_ptr() as *mut u8,
            )
        }
    }

    /// The fused scan of logical steps j0..j1 of sequence b from `state` (`Some` when it
    /// holds a prefix); returns whether it holds one on exit. `state_out`: the caller
    /// reads `state` afterwards (otherwise its contents are unspecified).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        b: usize,
        j0: usize,
        j1: usize,
        state: &mut [u64],
        has_state: bool,
        write: bool,
        state_out: bool,
        scratch: &mut [u64],
    ) -> bool {
        if j1 <= j0 {
            return has_state;
        }
        let (t0, t1) = if self.reverse { (self.steps - j1, self.steps - j0) } else { (j0, j1) };
        let mut flags = 0;
        if has_state {
            flags |= HAS_STATE;
        }
        if write {
            flags |= WRITE_OUTPUTS;
        }
        if self.reverse {
            flags |= REVERSE;
        }
        if !state_out {
            flags |= NO_STATE_OUT;
        }
        let n = (j1 - j0) as u64;
        self.combines.fetch_add(if has_state { n } else { n - 1 }, Ordering::Relaxed);
        // SAFETY: steps t0..t1 are inside the bound data; state is one element.
        unsafe {
            self.k.scan(
                self.params_ptr(),
                self.inputs_ptr(b),
                self.outputs_ptr(b),
                t0 as u64,
                t1 as u64,
                state.as_mut_ptr() as *mut u8,
                flags,
                scratch.as_mut_ptr() as *mut u8,
            )
        }
    }

    /// Sequence b's initial state, if any.
    pub fn init_of<'s>(&self, init: Option<&'s [u64]>, b: usize) -> Option<&'s [u64]> {
        init.map(|s| &s[b * self.words..(b + 1) * self.words])
    }
}

/// A raw pointer that tasks of one level share to write disjoint slots.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub *mut u64);
// SAFETY: used only for writes to disjoint slots and reads of slots no task writes
// in the same parallel phase (see tree.rs).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
