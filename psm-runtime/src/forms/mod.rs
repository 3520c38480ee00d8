//! The executor: one compiled aggregator ([`Kernels`]) run over batches of sequences in
//! one of the forms of DESIGN.md §1.
//!
//! * [`recurrent`] — the fused `scan` per sequence, rayon over the batch;
//! * [`chunked`] — 3-phase chunked scan (associative operators only): chunk aggregates
//!   (parallel, while the first chunk, which needs none, writes its outputs),
//!   exclusive scan of the aggregates (sequential), each chunk re-scanned
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
//!
//! Accuracy. Non-associative operators: tree and stream are bit-identical to
//! `psm_ir::derive`'s tree in declared precision. Associative operators: recurrent and
//! stream are its sequential fold and tree its tree, bit for bit; every form (chunked
//! included) is within `|out − ref| ≤ tol·(|ref| + running max |ref|)` of the f64 fold,
//! `tol = max(1e-5·max(1, log2 T), 2·e32)`, where e32 is the same error of the f32
//! sequential fold (and tree) on the same data: the operator's condition factor at
//! that length. For the library up to 4097 steps the first term decides; the second
//! does for ill-conditioned cases — logcumsumexp over 2^24 steps (f32 fold 5e-4,
//! chunked 3–4e-4, against 1e-5·24 = 2.4e-4), or a fold towards a cancelling fixed
//! point (`l + r + 2·l·r` near −1/2), where no f32 bracketing meets the first term.

pub mod chunked;
pub mod recurrent;
pub mod stream;
pub mod tree;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use psm_ir::ir::{Aggregator, Dtype, ReadoutKind, Role};
use psm_ir::valid::Info;
use rayon::prelude::*;
use rayon::ThreadPool;
use smallvec::SmallVec;

use crate::buffers::{dtype_size, read_field, try_words, write_field, Buffer, Data, DataMut, Inputs, OutputsMut, State, Tensor};
use crate::error::{RunError, Slot};
use crate::kernels::{InputPtrs, Kernels, OutputPtrs, ParamPtrs, HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};

pub use stream::{Prefill, Stream, StreamStats};

/// Which schedule a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Form {
    /// Tree for non-associative operators. For associative ones: recurrent with one
    /// thread, at batch ≥ threads, or for T ≤ 2048; otherwise chunked, with a head and
    /// ⌈threads / batch⌉ chunks after it ([`chunked::auto_split`]).
    #[default]
    Auto,
    Recurrent,
    Chunked,
    Tree,
    Stream,
    /// The chunkwise-parallel form of the linear-attention family, derived from the IR
    /// (`psm_ir::derive::chunkwise`); runs through [`crate::Aggregator`] only.
    Chunkwise,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Auto => "auto",
            Form::Recurrent => "recurrent",
            Form::Chunked => "chunked",
            Form::Tree => "tree",
            Form::Stream => "stream",
            Form::Chunkwise => "chunkwise",
        }
    }
    pub fn from_name(name: &str) -> Option<Form> {
        [Form::Auto, Form::Recurrent, Form::Chunked, Form::Tree, Form::Stream, Form::Chunkwise].into_iter().find(|f| f.name() == name)
    }
}

/// How to run: form, chunk size, direction, states, threads.
#[derive(Clone, Default)]
pub struct RunOptions<'a> {
    pub form: Form,
    /// Steps per chunk of the chunked form (the first chunk, the head, included);
    /// `None` chooses from T, the batch and the
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
    /// Run on a pool of this many threads, built once per executor and reused. The
    /// chunked form's chunks, and the chunkwise form's parts of a sequence where there are
    /// more threads than sequences, follow the thread count, and so do their last bits.
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
            Slot::Output => &self.outputs,
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

/// What a run leaves besides its outputs: the final state, a prefill, counts, and the
/// form that ran. [`Executor::run_into`] returns it; [`Outputs`] carries one.
#[derive(Debug)]
pub struct RunSummary {
    pub(crate) final_state: Option<State>,
    pub(crate) prefill: Option<Prefill>,
    pub(crate) stats: RunStats,
    pub(crate) form: Form,
    pub(crate) chunk: Option<usize>,
}

impl RunSummary {
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

/// The results of a run: outputs by name, `[batch..., T, field dims...]`, and the
/// run's [`RunSummary`].
#[derive(Debug)]
pub struct Outputs {
    pub(crate) batch: Vec<usize>,
    pub(crate) steps: usize,
    pub(crate) outputs: Vec<Tensor>,
    pub(crate) summary: RunSummary,
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
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }
    /// See [`RunSummary::final_state`].
    pub fn final_state(&self) -> Option<&State> {
        self.summary.final_state()
    }
    /// See [`RunSummary::take_prefill`].
    pub fn take_prefill(&mut self) -> Option<Prefill> {
        self.summary.take_prefill()
    }
    pub fn stats(&self) -> RunStats {
        self.summary.stats
    }
    /// The form that ran (`auto` resolved).
    pub fn form(&self) -> Form {
        self.summary.form
    }
    /// The chunk size of a chunked run.
    pub fn chunk(&self) -> Option<usize> {
        self.summary.chunk
    }
}

/// Output buffers a call allocates itself (`run`, `push`): zeroed by the allocator, so
/// the first touch of their pages happens in the kernels, on the threads that compute.
pub(crate) struct OwnedOutputs {
    buffers: Vec<Buffer>,
}

impl OwnedOutputs {
    pub(crate) fn allocate(sig: &Signature, nseq: usize, steps: usize) -> Result<OwnedOutputs, RunError> {
        let buffers = sig
            .outputs
            .iter()
            .map(|s| {
                nseq.checked_mul(steps)
                    .and_then(|n| n.checked_mul(s.len))
                    .filter(|n| n.checked_mul(dtype_size(s.dtype)).is_some())
                    .and_then(|n| Buffer::try_zeros(s.dtype, n))
                    .ok_or_else(|| RunError::TooLarge { what: format!("output `{}`", s.name) })
            })
            .collect::<Result<_, _>>()?;
        Ok(OwnedOutputs { buffers })
    }

    /// Per-sequence base addresses (see [`sequence_bases`]).
    pub(crate) fn addrs(&mut self, sig: &Signature, nseq: usize, steps: usize, into: &mut Addrs) {
        sequence_bases(&sig.outputs, self.buffers.iter_mut().map(Buffer::addr_mut), nseq, steps, into);
    }

    /// The buffers as named tensors `[batch..., T, field dims...]`.
    pub(crate) fn into_outputs(self, sig: &Signature, batch: &[usize], steps: usize, summary: RunSummary) -> Outputs {
        let outputs = self
            .buffers
            .into_iter()
            .zip(&sig.outputs)
            .map(|(data, s)| {
                let mut shape = Vec::with_capacity(batch.len() + 1 + s.shape.len());
                shape.extend(batch);
                shape.push(steps);
                shape.extend(&s.shape);
                Tensor { name: s.name.clone(), shape, data }
            })
            .collect();
        Outputs { batch: batch.to_vec(), steps, outputs, summary }
    }
}

/// Appends to `into` the base address of every sequence's data of every field, `[b · n
/// + k]` for sequence b and field k of `n`: field k's buffer holds `nseq × steps` rows of
/// `specs[k].len` entries. The caller has checked each buffer's length.
pub(crate) fn sequence_bases(
    specs: &[FieldSpec],
    buffers: impl Iterator<Item = usize>,
    nseq: usize,
    steps: usize,
    into: &mut Addrs,
) {
    into.clear();
    into.extend(buffers); // sequence 0
    let n = into.len();
    into.reserve(nseq.saturating_sub(1) * n);
    for b in 1..nseq {
        for (k, s) in specs.iter().enumerate() {
            into.push(into[k] + b * steps * s.len * dtype_size(s.dtype));
        }
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

/// A table of buffer addresses handed to the kernels: inline up to 8 entries.
pub(crate) type Addrs = SmallVec<[usize; 8]>;

/// The kernels' per-thread scratch: inline up to 256 bytes.
pub(crate) type Scratch = SmallVec<[u64; 32]>;

/// Validated data of one run: addresses of the user's buffers.
pub(crate) struct Bound {
    pub nseq: usize,
    pub steps: usize,
    pub params: Addrs,
    /// `nseq × inputs`: the base of sequence b's data of input k at `[b · n + k]`.
    pub inputs: Addrs,
}

pub(crate) fn product(dims: &[usize], what: impl Fn() -> String) -> Result<usize, RunError> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| RunError::TooLarge { what: what() })
}

/// Data whose dtype and length can be checked against a declaration.
pub(crate) trait Checked {
    fn dtype(&self) -> Dtype;
    fn len(&self) -> usize;
}

impl Checked for Data<'_> {
    fn dtype(&self) -> Dtype {
        Data::dtype(self)
    }
    fn len(&self) -> usize {
        Data::len(self)
    }
}

impl Checked for DataMut<'_> {
    fn dtype(&self) -> Dtype {
        DataMut::dtype(self)
    }
    fn len(&self) -> usize {
        DataMut::len(self)
    }
}

/// Matches named data against declarations: unknown, duplicate, missing, dtype and
/// length errors, in that order. Each tensor has `batch` leading dims, then `steps`
/// when given (per-step data), then the declared dims. Returns, in declaration order,
/// the index in `given` of each declared tensor (no allocation: runs over L1-sized
/// data and stream pushes pay this per call).
pub(crate) fn match_named<'g, D: Checked>(
    sig: &'g Signature,
    slot: Slot,
    given: &'g [(String, D)],
    batch: &[usize],
    steps: Option<usize>,
) -> Result<impl Iterator<Item = usize> + 'g, RunError> {
    let specs = sig.slot(slot);
    for (name, _) in given {
        if !specs.iter().any(|s| &s.name == name) {
            let belongs_to = [Slot::Input, Slot::Param, Slot::State, Slot::Output]
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
    let lead_len = product(batch, || format!("the batch shape {batch:?}"))?
        .checked_mul(steps.unwrap_or(1))
        .ok_or_else(|| RunError::TooLarge { what: format!("{} steps of the batch shape {batch:?}", steps.unwrap_or(1)) })?;
    // Usually given in declaration order: then one comparison per name.
    let index = |k: usize, s: &FieldSpec| match given.get(k) {
        Some((n, _)) if n == &s.name => Some(k),
        _ => given.iter().position(|(n, _)| n == &s.name),
    };
    for (k, s) in specs.iter().enumerate() {
        let Some(i) = index(k, s) else {
            return Err(RunError::Missing { slot, name: s.name.clone() });
        };
        let data = &given[i].1;
        if data.dtype() != s.dtype {
            return Err(RunError::WrongDtype { slot, name: s.name.clone(), expected: s.dtype, found: data.dtype() });
        }
        let expected = lead_len
            .checked_mul(s.len)
            .filter(|n| n.checked_mul(dtype_size(s.dtype)).is_some())
            .ok_or_else(|| RunError::TooLarge { what: format!("{} `{}`", slot.name(), s.name) })?;
        if data.len() != expected {
            let mut shape = batch.to_vec();
            shape.extend(steps);
            shape.extend(&s.shape);
            return Err(RunError::WrongLength { slot, name: s.name.clone(), expected, found: data.len(), shape });
        }
    }
    // Every lookup succeeds: each name was found above.
    Ok(specs.iter().enumerate().map(move |(k, s)| index(k, s).unwrap_or(k)))
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

    pub(crate) fn bind_params(&self, given: &[(String, Data<'_>)]) -> Result<Addrs, RunError> {
        Ok(match_named(&self.inner.sig, Slot::Param, given, &[], None)?.map(|i| given[i].1.addr()).collect())
    }

    /// Checks per-step inputs `[batch..., T, field dims...]`; writes the per-sequence
    /// base addresses into `into` (see [`sequence_bases`]).
    pub(crate) fn bind_inputs(&self, inputs: &Inputs<'_>, into: &mut Addrs) -> Result<usize, RunError> {
        let sig = &self.inner.sig;
        let order = match_named(sig, Slot::Input, &inputs.inputs, &inputs.batch, Some(inputs.steps))?;
        let nseq = product(&inputs.batch, || format!("the batch shape {:?}", inputs.batch))?;
        sequence_bases(&sig.inputs, order.map(|i| inputs.inputs[i].1.addr()), nseq, inputs.steps, into);
        Ok(nseq)
    }

    /// Checks caller-supplied outputs for `batch` × `steps`; writes the per-sequence
    /// base addresses into `into`.
    pub(crate) fn bind_outputs(&self, outputs: &mut OutputsMut<'_>, batch: &[usize], steps: usize, into: &mut Addrs) -> Result<(), RunError> {
        let sig = &self.inner.sig;
        match_named(sig, Slot::Output, &outputs.outputs, batch, Some(steps))?.for_each(drop);
        let nseq = product(batch, || format!("the batch shape {batch:?}"))?;
        let given = &mut outputs.outputs;
        // Every declared name is present (checked above); the lookup needs the buffers
        // mutably, which the checked order's borrow of the names does not allow.
        let addrs = sig.outputs.iter().map(|s| given.iter_mut().find(|(n, _)| n == &s.name).map_or(0, |(_, d)| d.addr_mut()));
        sequence_bases(&sig.outputs, addrs, nseq, steps, into);
        Ok(())
    }

    /// Checks a run's data and returns the addresses the kernels read.
    pub(crate) fn bind(&self, inputs: &Inputs<'_>) -> Result<Bound, RunError> {
        let params = self.bind_params(&inputs.params)?;
        let mut addrs = Addrs::new();
        let nseq = self.bind_inputs(inputs, &mut addrs)?;
        Ok(Bound { nseq, steps: inputs.steps, params, inputs: addrs })
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
        let order: Vec<usize> = match_named(&self.inner.sig, Slot::State, &given, batch, None)?.collect();
        let layout = self.inner.kernels.layout();
        let words = crate::buffers::words(layout);
        let nseq = product(batch, || format!("the batch shape {batch:?}"))?;
        let mut out = try_words(nseq, words).ok_or_else(|| RunError::TooLarge { what: "the initial state".into() })?;
        for b in 0..nseq {
            let elem = &mut out[b * words..(b + 1) * words];
            for (k, &i) in order.iter().enumerate() {
                write_field(layout, k, elem, given[i].1, b * layout.field_lens[k]);
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

    /// Runs every sequence of `inputs` in one form and returns its outputs, allocated
    /// for this run.
    ///
    /// Errors: unknown, duplicate or missing inputs and params, wrong dtypes or lengths,
    /// an initial state of another batch shape, a rebracketing form for a
    /// non-associative operator, out-of-range options. Never panics on user data;
    /// NaN and infinities flow through.
    pub fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        let sig = &self.inner.sig;
        self.check_options(opts)?;
        let bound = self.bind(inputs)?;
        let mut owned = OwnedOutputs::allocate(sig, bound.nseq, bound.steps)?;
        let mut out_addrs = Addrs::new();
        owned.addrs(sig, bound.nseq, bound.steps, &mut out_addrs);
        let summary = self.run_on_pool(inputs, &bound, &out_addrs, opts)?;
        Ok(owned.into_outputs(sig, &inputs.batch, bound.steps, summary))
    }

    /// [`run`](Self::run), writing every output into a caller-supplied buffer (each
    /// entry is overwritten): no allocation for the outputs, and buffers that can be
    /// reused from run to run. The same errors as `run`, and for `outputs` the same
    /// checks as for inputs (unknown, duplicate, missing, dtype, length
    /// `[batch..., T, field dims...]`), all before anything is written.
    ///
    /// ```
    /// use psm_runtime::{Program, Inputs, OutputsMut, RunOptions};
    /// let src = "aggregator cumsum { input { v } element { v } identity { v = 0.0; } combine(l, r) { v = l.v + r.v; } }";
    /// let cumsum = Program::from_source(src, &[]).unwrap().aggregator("cumsum").unwrap();
    /// let v = [1.0f32, 2.0, 3.0, 4.0];
    /// let mut y = [0.0f32; 4];
    /// let summary = cumsum
    ///     .run_into(&Inputs::new(&[], 4).input("v", &v), &mut OutputsMut::new().output("v", &mut y), &RunOptions::default())
    ///     .unwrap();
    /// assert_eq!(y, [1.0, 3.0, 6.0, 10.0]);
    /// assert_eq!(summary.stats().combines, 3);
    /// ```
    pub fn run_into(&self, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>, opts: &RunOptions<'_>) -> Result<RunSummary, RunError> {
        self.check_options(opts)?;
        let bound = self.bind(inputs)?;
        let mut out_addrs = Addrs::new();
        self.bind_outputs(outputs, &inputs.batch, inputs.steps, &mut out_addrs)?;
        self.run_on_pool(inputs, &bound, &out_addrs, opts)
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
        if opts.form == Form::Chunkwise {
            return Err(RunError::InvalidOption {
                option: "form",
                message: "the chunkwise form is derived from the operator's IR: run it through psm_runtime::Aggregator".into(),
            });
        }
        if matches!(opts.form, Form::Recurrent | Form::Chunked) && !sig.associative {
            return Err(RunError::FormNotValid { form: opts.form, aggregator: sig.aggregator.clone(), valid: sig.forms() });
        }
        Ok(())
    }

    /// Checks the initial state, then runs on the pool the options ask for.
    fn run_on_pool(&self, inputs: &Inputs<'_>, bound: &Bound, out_addrs: &[usize], opts: &RunOptions<'_>) -> Result<RunSummary, RunError> {
        let init = opts.initial_state.map(|s| self.bind_state(s, &inputs.batch)).transpose()?;
        self.install(opts, || self.run_bound(&inputs.batch, bound, out_addrs, init.as_deref(), opts))?
    }

    /// Runs `f` on the pool the options ask for: theirs, one of `threads` threads built
    /// once per executor, or the current rayon context.
    pub(crate) fn install<R: Send>(&self, opts: &RunOptions<'_>, f: impl FnOnce() -> R + Send) -> Result<R, RunError> {
        Ok(match (opts.pool, opts.threads) {
            (Some(pool), _) => pool.install(f),
            (None, Some(n)) => self.pool(n)?.install(f),
            (None, None) => f(),
        })
    }

    fn resolve(&self, form: Form, nseq: usize, steps: usize, threads: usize) -> Form {
        match form {
            Form::Auto if !self.inner.sig.associative => Form::Tree,
            Form::Auto if threads <= 1 || nseq >= threads || steps <= 2048 => Form::Recurrent,
            Form::Auto => Form::Chunked,
            f => f,
        }
    }

    fn run_bound(
        &self,
        batch: &[usize],
        bound: &Bound,
        out_addrs: &[usize],
        init: Option<&[u64]>,
        opts: &RunOptions<'_>,
    ) -> Result<RunSummary, RunError> {
        let sig = &self.inner.sig;
        let k = &*self.inner.kernels;
        let threads = rayon::current_num_threads();
        let form = self.resolve(opts.form, bound.nseq, bound.steps, threads);
        let (nseq, steps) = (bound.nseq, bound.steps);
        let mut ctx = Ctx::new(k, sig, bound.io(out_addrs), opts.reverse, None);
        ctx.keep_state = opts.final_state || opts.prefill;
        let want_counter = opts.prefill && !sig.associative;
        let mut chunk = None;
        let ends: Vec<SeqEnd> = match form {
            Form::Recurrent => recurrent::run(&ctx, init),
            Form::Chunked => {
                let (head, size) = opts.chunk.map_or_else(|| chunked::auto_split(steps, nseq, threads), |c| (c, c));
                chunk = Some(size);
                chunked::run(&ctx, init, head, size)?
            }
            Form::Tree => tree::run(&ctx, init, want_counter)?,
            Form::Stream => stream::run(&ctx, init),
            // `resolve` never returns Auto; `check_options` refuses Chunkwise.
            Form::Auto | Form::Chunkwise => recurrent::run(&ctx, init),
        };
        let peak = ends.iter().map(|e| e.peak).max().unwrap_or(0);
        let stats = RunStats { sequences: nseq, steps, combines: ctx.combines.load(Ordering::Relaxed), peak_elements: peak };
        let has_final = ends.first().is_some_and(|e| e.state.is_some()) || (nseq == 0 && (steps > 0 || init.is_some()));
        let final_flat: Option<Vec<u64>> = if !opts.final_state {
            None
        } else if has_final {
            Some(ends.iter().flat_map(|e| e.state.clone().unwrap_or_else(|| vec![0; ctx.words])).collect())
        } else {
            // T = 0 without s0: the declared identity, if any.
            let step0 = ctx.step0();
            (!step0.empty).then(|| step0.element.repeat(nseq))
        };
        let final_state = final_flat.map(|f| self.state_of(batch, &f));
        let prefill = if opts.prefill {
            let seqs = ends
                .into_iter()
                .map(|e| match e.counter {
                    // Non-associative: the tree's or the stream's counter.
                    Some(c) => stream::SeqState::Counter(c),
                    None => stream::SeqState::running(e.state),
                })
                .collect();
            Some(Prefill::new(self.clone(), bound, batch, steps as u64, seqs))
        } else {
            None
        };
        Ok(RunSummary { final_state, prefill, stats, form, chunk })
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

/// The addresses one call of the kernels reads and writes.
#[derive(Clone, Copy)]
pub(crate) struct Io<'a> {
    pub nseq: usize,
    pub steps: usize,
    pub params: &'a [usize],
    /// `nseq × inputs` per-sequence bases (see [`sequence_bases`]).
    pub inputs: &'a [usize],
    /// `nseq × outputs` per-sequence bases.
    pub outputs: &'a [usize],
}

impl Bound {
    pub(crate) fn io<'a>(&'a self, outputs: &'a [usize]) -> Io<'a> {
        Io { nseq: self.nseq, steps: self.steps, params: &self.params, inputs: &self.inputs, outputs }
    }
}

/// What an exclusive readout reads before any prefix: the declared identity (`empty`
/// false) or, without one, zeros with `empty(p)` true. It depends on the params only.
#[derive(Debug, Clone)]
pub(crate) struct Step0 {
    pub element: Vec<u64>,
    pub empty: bool,
}

impl Step0 {
    pub(crate) fn new(k: &dyn Kernels, params: &[usize]) -> Step0 {
        let words = crate::buffers::words(k.layout());
        let mut element = vec![0u64; words];
        let mut scratch = vec![0u64; scratch_words(k)];
        // SAFETY: buffers of the layout's and scratch's sizes; params bound.
        let declared =
            unsafe { k.identity(params.as_ptr() as ParamPtrs, element.as_mut_ptr() as *mut u8, scratch.as_mut_ptr() as *mut u8) };
        Step0 { element, empty: !declared }
    }
}

fn scratch_words(k: &dyn Kernels) -> usize {
    k.scratch_size().div_ceil(8).max(1)
}

/// Everything a form needs to call the kernels for one run. Borrows every buffer: a
/// context costs no allocation.
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
    /// The step-0 state: a stream's (computed when it was opened), or computed on first
    /// use (only exclusive readouts outside the fused scan and empty final states read
    /// it).
    step0: Step0Source<'a>,
    /// The caller reads the final state (or hands the run to a stream).
    pub keep_state: bool,
}

enum Step0Source<'a> {
    Given(&'a Step0),
    Lazy(OnceLock<Step0>),
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(k: &'a dyn Kernels, sig: &Signature, io: Io<'a>, reverse: bool, step0: Option<&'a Step0>) -> Ctx<'a> {
        Ctx {
            k,
            words: crate::buffers::words(k.layout()),
            scratch_words: scratch_words(k),
            params: io.params,
            inputs: io.inputs,
            outputs: io.outputs,
            n_in: sig.inputs.len(),
            n_out: sig.outputs.len(),
            nseq: io.nseq,
            steps: io.steps,
            reverse,
            readout_kind: sig.readout,
            associative: sig.associative,
            combines: AtomicU64::new(0),
            step0: match step0 {
                Some(s) => Step0Source::Given(s),
                None => Step0Source::Lazy(OnceLock::new()),
            },
            keep_state: true,
        }
    }

    pub(crate) fn step0(&self) -> &Step0 {
        match &self.step0 {
            Step0Source::Given(s) => s,
            Step0Source::Lazy(cell) => cell.get_or_init(|| Step0::new(self.k, self.params)),
        }
    }

    pub fn scratch(&self) -> Scratch {
        smallvec::smallvec![0u64; self.scratch_words]
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

    /// One step j of sequence b from a held prefix, by the three kernels: `lifted =
    /// lift(x_j)`, `next = combine(state, lifted)`, the readout, then `state` and `next`
    /// swap. Bit for bit the fused scan over one step, without its exit copy of the
    /// element into the caller's state (16.6 KB for GLA at K = V = 64).
    pub fn step(&self, b: usize, j: usize, state: &mut Vec<u64>, lifted: &mut [u64], next: &mut Vec<u64>, scratch: &mut [u64]) {
        self.lift(b, j, lifted, scratch);
        if self.readout_kind == ReadoutKind::Exclusive {
            self.readout(b, j, Some(state), scratch);
        }
        self.combine(state, lifted, next, scratch);
        std::mem::swap(state, next);
        if self.readout_kind == ReadoutKind::Inclusive {
            self.readout(b, j, Some(state), scratch);
        }
    }

    /// `f(scratch, b)` for every sequence b, in parallel over the batch with one scratch
    /// per rayon task; a single sequence, or a pool of one thread, runs on the calling
    /// thread with one scratch (no fork-join).
    pub fn map_sequences<T: Send>(&self, f: impl Fn(&mut [u64], usize) -> T + Sync + Send) -> Vec<T> {
        if self.nseq <= 1 || rayon::current_num_threads() == 1 {
            let mut scratch = self.scratch();
            (0..self.nseq).map(|b| f(&mut scratch, b)).collect()
        } else {
            (0..self.nseq).into_par_iter().map_init(|| self.scratch(), |scratch, b| f(scratch, b)).collect()
        }
    }

    /// The readout of logical step j of sequence b from `state` (`None`: no prefix yet).
    /// Writes only step j's outputs, so disjoint steps may run in parallel.
    pub fn readout(&self, b: usize, j: usize, state: Option<&[u64]>, scratch: &mut [u64]) {
        let (s, empty) = match state {
            Some(s) => (s, false),
            None => {
                let step0 = self.step0();
                (&step0.element[..], step0.empty)
            }
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
