//! The chunkwise-parallel form on the CPU ([`Form::Chunkwise`]): runs the form
//! `psm_ir::derive::chunkwise` derives from the operator's IR.
//!
//! 1. The derived *feature map* aggregator (compiled like any other, run in the
//!    automatic form: it has no state to speak of) computes the per-step keys, values,
//!    log-decays, delta-rule β and b, and queries from the user's inputs and params.
//! 2. Per sequence (rayon over the batch; a sequence in consecutive parts where the
//!    pool has more threads than sequences: `Sequence::run_parts`), chunk by chunk,
//!    the state contractions are
//!    computed with matrix products (AVX2/FMA kernels for the chunk's small ones, the
//!    `gemm` crate otherwise), all in f32: the inter-chunk Q S₀, the intra-chunk
//!    decay-masked (Q Kᵀ ⊙ D) V over the values each row sees, the state passed to the
//!    next chunk, and for the delta rule the pseudo-values of the UT transform (forward
//!    substitution of the unit lower-triangular system).
//! 3. The derived *readout map* turns the contractions into the operator's outputs;
//!    when every output is a contraction as it is (`Chunkwise::direct`), `run` returns
//!    the contractions themselves.
//!
//! Decays are applied in log space: Λ is the cumulative log decay from the chunk's
//! start, and the factorization D_tτ = e^Λ_t · e^−Λ_τ is used only when every |Λ| in
//! the chunk is at most [`FACTOR_LIMIT`] (each factor then stays well inside f32's
//! range, so the product is as accurate as e^(Λ_t − Λ_τ)); a chunk with a larger range,
//! or with a decay of exactly 0 (a hard reset, where Λ restarts), computes
//! D_tτ = e^(Λ_t − Λ_τ) pair by pair.
//!
//! A run whose features and contractions would exceed the buffers kept between runs
//! goes sequence by sequence in blocks of steps chained through their states
//! (`run_into_blocks`).
//!
//! An initial state seeds S₀; the final element's state fields are the last S₀, its
//! transition fields (gates, the delta rule's matrix) the same recurrence run over the
//! initial transition with zero values. A reversed run reads each sequence's rows
//! from the last step (copies), and a prefill hands the final element to a stream.

use std::borrow::Cow;
use std::sync::Arc;

use psm_codegen::ptx::chunkwise::Products;
use psm_ir::derive::chunkwise::{Chunkwise, Decay, Gate};
use psm_ir::ir::Dtype;
use rayon::prelude::*;

use crate::api::Aggregator;
use crate::buffers::{Buffer, Data, DataMut, Inputs, OutputsMut, State, Tensor};
use crate::error::RunError;
use crate::forms::stream::SeqState;
use crate::forms::{Executor, FieldSpec, Form, Outputs, Prefill, RunOptions, RunStats, RunSummary, Signature};

/// Steps per chunk when [`RunOptions::chunk`] is not given.
pub const DEFAULT_CHUNK: usize = 16;

/// Most steps per chunk: the intra-chunk products hold chunk² entries per sequence.
pub const MAX_CHUNK: usize = 4096;

/// Smallest keys × values of a state field for which [`Form::Auto`] runs the chunkwise
/// form (measured on the CPU, K = V: at 32 × 32 1.5–2.5× faster than the recurrent
/// form at T = 4096 on 1 thread, 1.9× at T = 16384 over 2 sequences on 2 threads; at
/// 16 × 16 from 1.6× faster to 1.2× slower).
pub const AUTO_MIN_STATE: usize = 1024;

/// [`AUTO_MIN_STATE`] for the delta rule, whose recurrent combine costs K³ a step
/// (measured at 16 × 16: 3–4.7× faster at T = 4096, 1 thread; at 8 × 8 1.0–1.4×).
pub const AUTO_MIN_STATE_DELTA: usize = 256;

/// Fewest chunks in a part of a sequence split across threads (`Sequence::run_parts`):
/// a part's fixed costs (its transition, its state's products) amortized over several.
pub const MIN_PART_CHUNKS: usize = 4;

/// Largest |Λ| (cumulative log decay within a chunk) for which the decay mask is
/// factored into row and column scalings: e^±60 ≈ 1.1e±26 is far from f32's limits.
pub const FACTOR_LIMIT: f32 = 60.0;

/// Where the form runs: the derived maps and the chunk computation on the CPU, or on a
/// CUDA device (the maps through the CUDA executor, the chunks on tensor cores:
/// `cuda::chunkwise`).
#[derive(Clone, Copy)]
pub(crate) enum Engine<'a> {
    Cpu,
    Cuda(&'a crate::cuda::CudaExecutor),
}

impl Engine<'_> {
    /// Runs a derived map aggregator on this engine.
    fn run_map(self, map: &Aggregator, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        match self {
            Engine::Cpu => map.run(inputs, &map_options(opts)),
            // The recurrent kernels, as the GPU tests run them.
            Engine::Cuda(exec) => map.cuda(exec.device())?.run(inputs, &RunOptions { form: Form::Recurrent, ..map_options(opts) }),
        }
    }

    /// Runs the feature map: its outputs by name (f32, `[sequences × steps × len]`), on
    /// the CPU in buffers from `scratch`.
    fn run_features(self, map: &Aggregator, inputs: &Inputs<'_>, opts: &RunOptions<'_>, scratch: &Scratch) -> Result<Vec<(String, Vec<f32>)>, RunError> {
        if let Engine::Cuda(_) = self {
            let out = self.run_map(map, inputs, opts)?;
            return Ok(out.into_tensors().into_iter().filter_map(|t| if let Buffer::F32(data) = t.data { Some((t.name, data)) } else { None }).collect());
        }
        let rows = inputs.batch.iter().product::<usize>().checked_mul(inputs.steps);
        let mut buffers = map
            .signature()
            .outputs
            .iter()
            .map(|o| Ok((o.name.clone(), scratch.zeros(rows.and_then(|n| n.checked_mul(o.len)), || format!("the feature `{}`", o.name))?)))
            .collect::<Result<Vec<_>, RunError>>()?;
        let mut outputs = OutputsMut::new();
        for (name, data) in &mut buffers {
            outputs = outputs.output(name, &mut data[..]);
        }
        map.run_into(inputs, &mut outputs, &map_options(opts))?;
        Ok(buffers)
    }
}

/// f32 buffers the form reuses between runs: a fresh buffer of a few MB costs its page
/// faults at every run (the allocator hands large blocks back to the system when they
/// are freed), measured as about 1.5 ms of mLSTM's 3.4 ms at T = 4096.
#[derive(Default)]
pub(crate) struct Scratch(std::sync::Mutex<Vec<Vec<f32>>>);

/// Most bytes [`Scratch`] keeps.
const SCRATCH_BYTES: usize = 64 << 20;

impl Scratch {
    /// A buffer of `len` zeros, a kept one where one is large enough.
    fn zeros(&self, len: Option<usize>, what: impl FnOnce() -> String) -> Result<Vec<f32>, RunError> {
        let kept = self.0.lock().ok().and_then(|mut kept| {
            let fits = kept.iter().enumerate().filter(|(_, b)| len.is_some_and(|n| b.capacity() >= n)).min_by_key(|(_, b)| b.capacity());
            fits.map(|(i, _)| i).or(kept.len().checked_sub(1)).map(|i| kept.swap_remove(i))
        });
        zeros_in(kept.unwrap_or_default(), len, what)
    }

    /// Keeps buffers for later runs, up to [`SCRATCH_BYTES`] in all.
    fn keep(&self, buffers: impl IntoIterator<Item = Vec<f32>>) {
        if let Ok(mut kept) = self.0.lock() {
            let mut bytes: usize = kept.iter().map(|b| b.capacity() * 4).sum();
            for b in buffers {
                if bytes + b.capacity() * 4 <= SCRATCH_BYTES {
                    bytes += b.capacity() * 4;
                    kept.push(b);
                }
            }
        }
    }
}

/// What the CUDA chunkwise kernels do not do yet, refused before any work.
fn check_cuda_options(opts: &RunOptions<'_>) -> Result<(), RunError> {
    let refuse = |option: &'static str, what: &str| Err(RunError::InvalidOption { option, message: format!("the chunkwise form on CUDA does not {what} yet; use the CPU backend") });
    if opts.reverse {
        return refuse("reverse", "scan in reverse");
    }
    if opts.initial_state.is_some() {
        return refuse("initial_state", "take an initial state");
    }
    if opts.final_state {
        return refuse("final_state", "return the final state");
    }
    if opts.prefill {
        return refuse("prefill", "hand off to a stream");
    }
    match opts.chunk {
        Some(c) if c != psm_codegen::ptx::chunkwise::CHUNK => {
            refuse("chunk", &format!("take chunks other than {} steps", psm_codegen::ptx::chunkwise::CHUNK))
        }
        _ => Ok(()),
    }
}

/// The derived form of one aggregator with its two derived aggregators compiled.
pub(crate) struct ChunkwiseProgram {
    plan: Chunkwise,
    /// The operator itself: its signature checks the user's data.
    operator: Aggregator,
    features: Option<Aggregator>,
    readout: Aggregator,
    scratch: Scratch,
}

impl ChunkwiseProgram {
    pub(crate) fn new(agg: &Aggregator) -> Result<ChunkwiseProgram, RunError> {
        let plan = psm_ir::derive::chunkwise::chunkwise(agg.ir(), agg.info())
            .map_err(|why| RunError::ChunkwiseNotApplicable { aggregator: agg.name().to_string(), reason: why.0 })?;
        let compile = |src: &str| -> Result<Aggregator, RunError> {
            let program = crate::api::Program::from_source(src, &[])
                .map_err(|e| RunError::Codegen { aggregator: agg.name().to_string(), message: e.to_string() })?;
            let name = program.names()[0].to_string();
            let derived = program.aggregator(&name).expect("a derived source holds one aggregator");
            Ok(derived.with_backend(agg.backend()))
        };
        let features = plan.features.as_deref().map(compile).transpose()?;
        Ok(ChunkwiseProgram { operator: agg.clone(), features, readout: compile(&plan.readout)?, plan, scratch: Scratch::default() })
    }

    pub(crate) fn plan(&self) -> &Chunkwise {
        &self.plan
    }

    /// Whether [`Form::Auto`] runs this form: a state field of at least
    /// [`AUTO_MIN_STATE`] keys × values ([`AUTO_MIN_STATE_DELTA`] for the delta rule),
    /// and a final element it can compose where the options ask for one.
    pub(crate) fn pays(&self, opts: &RunOptions<'_>) -> bool {
        let large = self.plan.fields.iter().any(|f| {
            let least = if matches!(f.decay, Decay::DeltaRule { .. }) { AUTO_MIN_STATE_DELTA } else { AUTO_MIN_STATE };
            f.keys * f.values >= least
        });
        large && (!(opts.final_state || opts.prefill) || self.composes_final())
    }

    /// f32 intermediates per step of a sequence: the feature map's outputs and the
    /// contractions.
    fn floats_per_step(&self) -> usize {
        let features: usize = self.features.as_ref().map_or(0, |f| f.signature().outputs.iter().map(|o| o.len).sum());
        features + self.plan.contractions.iter().map(|c| self.plan.fields[c.field].values).sum::<usize>()
    }

    /// Whether the form computes every field of the final element ([`parts`]).
    fn composes_final(&self) -> bool {
        self.operator.executor().is_ok_and(|op| parts(&self.plan, op.signature()).is_ok())
    }
}

/// The chunkwise form's own option checks; the executor makes the shared ones.
fn check_options(operator: &Executor, opts: &RunOptions<'_>) -> Result<(), RunError> {
    operator.check_options(&RunOptions { form: Form::Recurrent, ..opts.clone() })?;
    match opts.chunk {
        Some(c) if c > MAX_CHUNK => Err(RunError::InvalidOption {
            option: "chunk",
            message: format!("the chunkwise form takes at most {MAX_CHUNK} steps per chunk (its intra-chunk products hold chunk² entries)"),
        }),
        _ => Ok(()),
    }
}

/// Options of the derived per-step maps on the caller's threads.
fn map_options<'a>(opts: &RunOptions<'a>) -> RunOptions<'a> {
    // Auto: the recurrent form, or the chunked one over the steps of sequences fewer than
    // the threads (a map's outputs depend on its step alone: the same bits either way).
    RunOptions { form: Form::Auto, threads: opts.threads, pool: opts.pool, ..Default::default() }
}

/// A buffer of `len` zeros, or [`RunError::TooLarge`].
fn zeros(len: Option<usize>, what: impl FnOnce() -> String) -> Result<Vec<f32>, RunError> {
    zeros_in(Vec::new(), len, what)
}

/// `buffer` (its allocation) made `len` zeros, or [`RunError::TooLarge`].
fn zeros_in(mut buffer: Vec<f32>, len: Option<usize>, what: impl FnOnce() -> String) -> Result<Vec<f32>, RunError> {
    buffer.clear();
    match len {
        Some(len) if buffer.try_reserve_exact(len).is_ok() => {
            buffer.resize(len, 0.0);
            Ok(buffer)
        }
        _ => Err(RunError::TooLarge { what: what() }),
    }
}

/// What the chunk computation returns: the contractions,
/// `[contraction][sequence × steps × values]`, and the final state when asked.
struct Computed {
    contractions: Vec<Vec<f32>>,
    final_state: Option<State>,
}

/// The element field each part of the final element comes from: a state field's S
/// (`fields[i]`), or the transition of `fields[i]`, composed from the identity (1 or I)
/// or the initial state's value.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    State(usize),
    Transition(usize),
}

/// Every element field's part, in element order, or why the final element cannot be
/// composed (a state field the readout never contracts, a non-f32 transition).
fn parts(plan: &Chunkwise, sig: &Signature) -> Result<Vec<Part>, String> {
    sig.element
        .iter()
        .map(|e| {
            if let Some(i) = plan.fields.iter().position(|f| f.name == e.name) {
                return Ok(Part::State(i));
            }
            match plan.fields.iter().position(|f| f.transition.as_deref() == Some(e.name.as_str())) {
                Some(i) if e.dtype == Dtype::F32 => Ok(Part::Transition(i)),
                Some(_) => Err(format!("its transition field `{}` is {}, not f32", e.name, e.dtype.name())),
                None => Err(format!("its readout never reads element field `{}`, so the form does not compute it", e.name)),
            }
        })
        .collect()
}

/// One sequence's slices of every contraction and of every final element field.
type SeqSlices<'a> = (Vec<&'a mut [f32]>, Vec<&'a mut [f32]>);

/// Checks the options and the user's data, runs the feature map and the chunk
/// computation.
/// The device's tensor-core products for a run on `inputs`: bf16 operands when every
/// float input and parameter is given as bf16 (the user's data has bf16's precision
/// already, and the bf16 kernels take a third of the mma work), else f32-accurate
/// split operands (f32 data gets f32-level accuracy, about 1e-5 rather than bf16's 3e-3).
fn tensor_products(inputs: &Inputs<'_>) -> Products {
    let floats = || inputs.inputs.iter().chain(&inputs.params).map(|(_, d)| d).filter(|d| !matches!(d, Data::I32(_)));
    if floats().next().is_some() && floats().all(|d| matches!(d, Data::BF16(_))) {
        Products::Bf16
    } else {
        Products::Bf16x3
    }
}

/// `split`: the parts a sequence may run in ([`Sequence::run_parts`]); `None`: the
/// threads of the pool beyond one per sequence.
fn compute(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>, engine: Engine<'_>, split: Option<usize>) -> Result<Computed, RunError> {
    let operator = cw.operator.executor()?;
    check_options(operator, opts)?;
    if let Engine::Cuda(_) = engine {
        check_cuda_options(opts)?;
    }
    operator.bind(inputs)?;
    let plan = &cw.plan;
    let sig = operator.signature();
    let want_final = opts.final_state || opts.prefill;
    let parts = if want_final {
        parts(plan, sig).map_err(|why| RunError::InvalidOption {
            option: if opts.final_state { "final_state" } else { "prefill" },
            message: format!("the chunkwise form of `{}` cannot return its final element: {why}; use another form", sig.aggregator),
        })?
    } else {
        Vec::new()
    };
    // The initial state, checked and in element order.
    let initial = opts.initial_state.map(|s| operator.bind_state(s, &inputs.batch).map(|w| operator.state_of(&inputs.batch, &w))).transpose()?;
    let features = cw.features.as_ref().map(|f| engine.run_features(f, inputs, opts, &cw.scratch)).transpose()?;
    let feature = |name: &str| -> &[f32] {
        let given = plan.inputs.iter().find(|(f, _)| f == name).and_then(|(_, input)| inputs.inputs.iter().find(|(n, _)| n == input));
        match given {
            // Bound above: an f32 input of the feature's shape.
            Some((_, Data::F32(data))) => data,
            _ => features
                .as_ref()
                .and_then(|f| f.iter().find(|(n, _)| n == name))
                .map(|(_, data)| &data[..])
                .expect("the feature map declares every name the plan does not read from an input"),
        }
    };
    let steps = inputs.steps;
    let nseq = inputs.batch.iter().product::<usize>();
    if let Engine::Cuda(exec) = engine {
        let contractions = crate::cuda::chunkwise::contract(exec.device(), exec.arch(), plan, feature, nseq, steps, tensor_products(inputs))?;
        return Ok(Computed { contractions, final_state: None });
    }
    // A chunk longer than the sequence needs no more scratch than the sequence.
    let chunk = opts.chunk.unwrap_or(DEFAULT_CHUNK).min(steps.max(1));
    let gated = |channels, gate: &Gate| {
        let (Gate::Log(name) | Gate::Value(name)) = gate;
        DecayData::Gated { channels, data: feature(name), log: matches!(gate, Gate::Log(_)) }
    };
    // Fields with the same key feature and transition share one chunk loop.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (fi, f) in plan.fields.iter().enumerate() {
        match groups.iter_mut().find(|g| plan.fields[g[0]].key == f.key && plan.fields[g[0]].decay == f.decay) {
            Some(g) => g.push(fi),
            None => groups.push(vec![fi]),
        }
    }
    let fields: Vec<FieldData<'_>> = groups
        .iter()
        .map(|members| (members, &plan.fields[members[0]]))
        .map(|(members, f)| FieldData {
            keys: f.keys,
            k: feature(&f.key),
            v: members.iter().map(|&m| (feature(&plan.fields[m].value), plan.fields[m].values)).collect(),
            decay: match &f.decay {
                Decay::None => DecayData::None,
                Decay::Scalar { gate } => gated(1, gate),
                Decay::Diagonal { gate } => gated(f.keys, gate),
                Decay::DeltaRule { log_decay, beta, b } => {
                    DecayData::Delta { log: log_decay.as_deref().map(feature), beta: feature(beta), b: feature(b) }
                }
            },
        })
        .collect();
    let queries: Vec<&[f32]> = plan.contractions.iter().map(|c| feature(&c.query)).collect();
    // [contraction][sequence × steps × values], every entry written by the products.
    let mut buffers: Vec<Vec<f32>> = plan
        .contractions
        .iter()
        .map(|c| cw.scratch.zeros(nseq.checked_mul(steps).and_then(|n| n.checked_mul(plan.fields[c.field].values)), || format!("the contraction `{}`", c.output)))
        .collect::<Result<_, _>>()?;
    // The final element's fields, `[sequence × entries]` each, when asked.
    let wanted = if want_final { &sig.element[..] } else { &[] };
    let mut ends: Vec<Vec<f32>> =
        wanted.iter().map(|e| zeros(nseq.checked_mul(e.len), || format!("the final state's `{}`", e.name))).collect::<Result<_, _>>()?;
    let initial_of = |name: &str, b: usize, len: usize| initial.as_ref().and_then(|s| s.get(name)).and_then(|d| d.as_f32()).map(|d| &d[b * len..(b + 1) * len]);
    // Each sequence's slice of every contraction and final field.
    let mut per_seq: Vec<SeqSlices<'_>> = (0..nseq).map(|_| (Vec::new(), Vec::new())).collect();
    for (c, buffer) in plan.contractions.iter().zip(&mut buffers) {
        for (b, slice) in buffer.chunks_mut((steps * plan.fields[c.field].values).max(1)).enumerate() {
            per_seq[b].0.push(slice);
        }
    }
    for (e, end) in sig.element.iter().zip(&mut ends) {
        for (b, slice) in end.chunks_mut(e.len.max(1)).enumerate() {
            per_seq[b].1.push(slice);
        }
    }
    let reverse = opts.reverse;
    let run = || {
        // Threads beyond one per sequence go to parts of each sequence.
        let split = split.unwrap_or_else(|| rayon::current_num_threads().div_ceil(nseq.max(1)));
        per_seq.into_par_iter().enumerate().for_each(|(b, (mut outs, mut finals))| {
            for (members, field) in groups.iter().zip(&fields) {
                let seq = field.sequence(b, steps, reverse);
                let kd = field.keys;
                let member = |m: usize| members.iter().position(|&fi| fi == plan.contractions[m].field);
                // The group's contractions; those with the same query share its products.
                let mut distinct: Vec<usize> = Vec::new();
                let mut mine: Vec<Out<'_>> = Vec::new();
                for (m, out) in outs.iter_mut().enumerate() {
                    let Some(k) = member(m) else { continue };
                    let query = match distinct.iter().position(|&d| plan.contractions[d].query == plan.contractions[m].query) {
                        Some(q) => q,
                        None => {
                            distinct.push(m);
                            distinct.len() - 1
                        }
                    };
                    mine.push(Out { query, member: k, data: out });
                }
                let qs: Vec<&[f32]> = distinct.iter().map(|&m| &queries[m][b * steps * kd..(b + 1) * steps * kd]).collect();
                let s0: Vec<Option<&[f32]>> = members.iter().map(|&fi| initial_of(&plan.fields[fi].name, b, kd * plan.fields[fi].values)).collect();
                let ends = seq.contract(chunk, plan.exclusive, &s0, &qs, &mut mine, reverse, split);
                for (end, &fi) in ends.iter().zip(members) {
                    if let Some(p) = parts.iter().position(|&p| p == Part::State(fi)) {
                        finals[p].copy_from_slice(end);
                    }
                    if let Some(p) = parts.iter().position(|&p| p == Part::Transition(fi)) {
                        let e0 = initial_of(&sig.element[p].name, b, sig.element[p].len);
                        finals[p].copy_from_slice(&seq.transition(chunk, e0));
                    }
                }
            }
        })
    };
    if steps > 0 || want_final {
        operator.install(opts, run)?;
    }
    cw.scratch.keep(features.into_iter().flatten().map(|(_, data)| data));
    // T = 0 without an initial state: the declared identity, if any (as the other forms).
    let final_state = (want_final && (steps > 0 || initial.is_some() || cw.operator.ir().identity.is_some())).then(|| {
        let fields = sig
            .element
            .iter()
            .zip(ends)
            .map(|(e, data)| {
                let mut shape = inputs.batch.clone();
                shape.extend(&e.shape);
                Tensor { name: e.name.clone(), shape, data: Buffer::F32(data) }
            })
            .collect();
        State { batch: inputs.batch.clone(), fields }
    });
    Ok(Computed { contractions: buffers, final_state })
}

fn readout_inputs<'a>(cw: &ChunkwiseProgram, inputs: &Inputs<'a>, contractions: &'a [Vec<f32>]) -> Inputs<'a> {
    let mut all = inputs.clone();
    for (c, data) in cw.plan.contractions.iter().zip(contractions) {
        all.inputs.push((c.output.clone(), Data::F32(data)));
    }
    all
}

/// The readout map's summary made the chunkwise run's: no combines (the form runs
/// none), the final state and the prefill of the chunk computation.
fn summary(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>, final_state: Option<State>) -> Result<RunSummary, RunError> {
    let stats = RunStats { sequences: inputs.batch.iter().product(), steps: inputs.steps, combines: 0, peak_elements: 0 };
    let prefill = if opts.prefill {
        let operator = cw.operator.executor()?;
        if !operator.signature().associative {
            return Err(RunError::InvalidOption { option: "prefill", message: "a stream of an operator not known to be associative continues a tree's counter, which the chunkwise form does not build; use the tree form".into() });
        }
        let bound = operator.bind(inputs)?;
        let words = final_state.as_ref().map(|s| operator.bind_state(s, &inputs.batch)).transpose()?;
        let nseq = inputs.batch.iter().product::<usize>();
        let per_seq = words.as_ref().map_or(0, |w| w.len() / nseq.max(1));
        let seqs = (0..nseq).map(|b| SeqState::running(words.as_ref().map(|w| w[b * per_seq..(b + 1) * per_seq].to_vec()))).collect();
        Some(Prefill::new(operator.clone(), &bound, &inputs.batch, inputs.steps as u64, seqs))
    } else {
        None
    };
    Ok(RunSummary { final_state: final_state.filter(|_| opts.final_state), prefill, stats, form: Form::Chunkwise, chunk: Some(opts.chunk.unwrap_or(DEFAULT_CHUNK)) })
}

/// An output of the whole run, `[batch..., T, field dims...]`.
fn output_tensor(inputs: &Inputs<'_>, spec: &FieldSpec, data: Buffer) -> Tensor {
    let mut shape = inputs.batch.clone();
    shape.push(inputs.steps);
    shape.extend(&spec.shape);
    Tensor { name: spec.name.clone(), shape, data }
}

pub(crate) fn run(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>, engine: Engine<'_>) -> Result<Outputs, RunError> {
    if let (Engine::Cpu, Some(block)) = (engine, block_steps(cw, inputs, opts)) {
        return run_blocks(cw, inputs, opts, block);
    }
    let Computed { contractions, final_state } = compute(cw, inputs, opts, engine, None)?;
    let summary = summary(cw, inputs, opts, final_state)?;
    let mut out = match &cw.plan.direct {
        // The readout map would copy the contractions: they are the outputs.
        Some(direct) => {
            let sig = cw.operator.executor()?.signature();
            let mut contractions = contractions;
            let outputs = sig
                .outputs
                .iter()
                .zip(direct)
                .map(|(s, &m)| {
                    let shared = direct.iter().filter(|&&d| d == m).count() > 1;
                    let data = if shared { contractions[m].clone() } else { std::mem::take(&mut contractions[m]) };
                    output_tensor(inputs, s, Buffer::F32(data))
                })
                .collect();
            Outputs { batch: inputs.batch.clone(), steps: inputs.steps, outputs, summary }
        }
        None => {
            let mut out = engine.run_map(&cw.readout, &readout_inputs(cw, inputs, &contractions), opts)?;
            cw.scratch.keep(contractions);
            out.summary = summary;
            out
        }
    };
    if let Engine::Cuda(_) = engine {
        out.summary.chunk = Some(psm_codegen::ptx::chunkwise::CHUNK);
    }
    Ok(out)
}

/// Into the caller's buffers: the readout map writes them (and checks them), direct or not.
pub(crate) fn run_into(
    cw: &ChunkwiseProgram,
    inputs: &Inputs<'_>,
    outputs: &mut OutputsMut<'_>,
    opts: &RunOptions<'_>,
) -> Result<RunSummary, RunError> {
    match block_steps(cw, inputs, opts) {
        Some(block) => run_into_blocks(cw, inputs, outputs, opts, block),
        None => run_into_whole(cw, inputs, outputs, opts, None),
    }
}

/// [`run_into`] in one piece (`split` as [`compute`]'s).
fn run_into_whole(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>, opts: &RunOptions<'_>, split: Option<usize>) -> Result<RunSummary, RunError> {
    let Computed { contractions, final_state } = compute(cw, inputs, opts, Engine::Cpu, split)?;
    cw.readout.run_into(&readout_inputs(cw, inputs, &contractions), outputs, &map_options(opts))?;
    cw.scratch.keep(contractions);
    summary(cw, inputs, opts, final_state)
}

/// Most bytes of intermediates (features and contractions) one sequence's block holds
/// in a run in blocks ([`run_into_blocks`]).
const BLOCK_BYTES: usize = 4 << 20;

/// Fewest chunks in a block of a run in blocks.
const MIN_BLOCK_CHUNKS: usize = 16;

/// Steps per block where the whole run's intermediates would exceed the kept buffers
/// ([`SCRATCH_BYTES`]: past them every run faults fresh ones in) and blocks can hand
/// their final element on (every field computed; no prefill, whose stream counts the
/// steps of the whole run); `None` runs it whole.
fn block_steps(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Option<usize> {
    let per_step = cw.floats_per_step().saturating_mul(4).max(1);
    let whole = inputs.batch.iter().product::<usize>().saturating_mul(inputs.steps).saturating_mul(per_step);
    if whole <= SCRATCH_BYTES || opts.prefill || !cw.composes_final() {
        return None;
    }
    let chunk = opts.chunk.unwrap_or(DEFAULT_CHUNK).max(1);
    Some((BLOCK_BYTES / per_step).max(MIN_BLOCK_CHUNKS * chunk) / chunk * chunk)
}

/// Entries `r` of `data`.
fn data_range<'a>(data: Data<'a>, r: std::ops::Range<usize>) -> Data<'a> {
    match data {
        Data::F32(d) => Data::F32(&d[r]),
        Data::F64(d) => Data::F64(&d[r]),
        Data::I32(d) => Data::I32(&d[r]),
        Data::BF16(d) => Data::BF16(&d[r]),
        Data::F16(d) => Data::F16(&d[r]),
    }
}

/// Entries `r` of `data`, reborrowed.
fn data_mut_range<'a>(data: &'a mut DataMut<'_>, r: std::ops::Range<usize>) -> DataMut<'a> {
    match data {
        DataMut::F32(d) => DataMut::F32(&mut d[r]),
        DataMut::F64(d) => DataMut::F64(&mut d[r]),
        DataMut::I32(d) => DataMut::I32(&mut d[r]),
        DataMut::BF16(d) => DataMut::BF16(&mut d[r]),
        DataMut::F16(d) => DataMut::F16(&mut d[r]),
    }
}

/// `data` in pieces of `len` entries.
fn data_mut_pieces<'a>(data: &'a mut DataMut<'_>, len: usize) -> Vec<DataMut<'a>> {
    let len = len.max(1);
    match data {
        DataMut::F32(d) => d.chunks_mut(len).map(DataMut::F32).collect(),
        DataMut::F64(d) => d.chunks_mut(len).map(DataMut::F64).collect(),
        DataMut::I32(d) => d.chunks_mut(len).map(DataMut::I32).collect(),
        DataMut::BF16(d) => d.chunks_mut(len).map(DataMut::BF16).collect(),
        DataMut::F16(d) => d.chunks_mut(len).map(DataMut::F16).collect(),
    }
}

/// Sequence `b` of `nseq` of a bound state: a state of no batch (a field's shape is
/// its length: the data is what binds, [`State::field`]'s shapes are flat too).
fn sequence_state(state: &State, b: usize, nseq: usize) -> State {
    let fields = state
        .fields
        .iter()
        .map(|t| {
            let len = t.data.len() / nseq;
            Tensor { name: t.name.clone(), shape: vec![len], data: data_range(t.data.as_data(), b * len..(b + 1) * len).to_buffer() }
        })
        .collect();
    State { batch: Vec::new(), fields }
}

/// [`run_into_blocks`] into buffers of its own.
fn run_blocks(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>, block: usize) -> Result<Outputs, RunError> {
    let sig = cw.operator.executor()?.signature();
    let rows = inputs.batch.iter().product::<usize>().checked_mul(inputs.steps);
    let mut buffers = sig
        .outputs
        .iter()
        .map(|o| rows.and_then(|n| n.checked_mul(o.len)).and_then(|n| Buffer::try_zeros(o.dtype, n)).ok_or_else(|| RunError::TooLarge { what: format!("the output `{}`", o.name) }))
        .collect::<Result<Vec<_>, _>>()?;
    let mut into = OutputsMut::new();
    for (o, data) in sig.outputs.iter().zip(&mut buffers) {
        into = into.output(&o.name, data);
    }
    let summary = run_into_blocks(cw, inputs, &mut into, opts, block)?;
    let outputs = sig.outputs.iter().zip(buffers).map(|(o, data)| output_tensor(inputs, o, data)).collect();
    Ok(Outputs { batch: inputs.batch.clone(), steps: inputs.steps, outputs, summary })
}

/// A run whose intermediates would exceed the kept buffers, as consecutive blocks of
/// `block` steps of each sequence (from the last when reversed): sequences side by
/// side, each block a whole run of its sequence on its rows where they lie, from the
/// state the blocks before it left (as runs chain through `initial_state` and
/// `final_state`), writing its rows of the outputs in place. Each block's features and
/// contractions come from the kept buffers and stay in cache.
fn run_into_blocks(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>, opts: &RunOptions<'_>, block: usize) -> Result<RunSummary, RunError> {
    let operator = cw.operator.executor()?;
    check_options(operator, opts)?;
    operator.bind(inputs)?;
    operator.bind_outputs(outputs, &inputs.batch, inputs.steps, &mut Default::default())?;
    if let Some(s) = opts.initial_state {
        operator.bind_state(s, &inputs.batch)?;
    }
    let sig = operator.signature();
    let (nseq, steps) = (inputs.batch.iter().product::<usize>(), inputs.steps);
    let mut per_seq: Vec<Vec<(String, DataMut<'_>)>> = (0..nseq).map(|_| Vec::new()).collect();
    for (name, data) in &mut outputs.outputs {
        let len = data.len() / nseq;
        for (mine, piece) in per_seq.iter_mut().zip(data_mut_pieces(data, len)) {
            mine.push((name.clone(), piece));
        }
    }
    let run = || -> Result<Vec<Option<State>>, RunError> {
        // Threads beyond one per sequence go to parts of each block, a block's worth each.
        let split = rayon::current_num_threads().div_ceil(nseq);
        let block = block * split;
        let mut starts: Vec<usize> = (0..steps).step_by(block).collect();
        if opts.reverse {
            starts.reverse();
        }
        per_seq
            .into_par_iter()
            .enumerate()
            .map(|(b, mut outs)| {
                let mut state = opts.initial_state.map(|s| sequence_state(s, b, nseq));
                for &t0 in &starts {
                    let t1 = (t0 + block).min(steps);
                    let mut x = Inputs::new(&[], t1 - t0);
                    // This block's rows of the sequence's inputs and outputs, where they lie.
                    x.inputs = inputs
                        .inputs
                        .iter()
                        .map(|(n, d)| {
                            let width = d.len() / (nseq * steps);
                            (n.clone(), data_range(*d, width * (b * steps + t0)..width * (b * steps + t1)))
                        })
                        .collect();
                    x.params = inputs.params.clone();
                    let mut o = OutputsMut::new();
                    o.outputs = outs
                        .iter_mut()
                        .map(|(n, d)| {
                            let width = d.len() / steps;
                            (n.clone(), data_mut_range(d, width * t0..width * t1))
                        })
                        .collect();
                    let sub = RunOptions { initial_state: state.as_ref(), final_state: true, pool: None, threads: None, ..opts.clone() };
                    state = run_into_whole(cw, &x, &mut o, &sub, Some(split))?.final_state;
                }
                Ok(state)
            })
            .collect()
    };
    let finals = operator.install(opts, run)??;
    // The batch's final element from its sequences'.
    let final_state = finals.iter().all(Option::is_some).then(|| {
        let fields = sig
            .element
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let mut data = Buffer::zeros(e.dtype, nseq * e.len);
                let mut all = DataMut::from(&mut data);
                for (piece, one) in data_mut_pieces(&mut all, e.len).into_iter().zip(finals.iter().flatten()) {
                    copy_data(piece, one.fields[k].data.as_data());
                }
                let mut shape = inputs.batch.clone();
                shape.extend(&e.shape);
                Tensor { name: e.name.clone(), shape, data }
            })
            .collect();
        State { batch: inputs.batch.clone(), fields }
    });
    summary(cw, inputs, opts, final_state)
}

/// `src` into `dst` (the same dtype and length).
fn copy_data(dst: DataMut<'_>, src: Data<'_>) {
    match (dst, src) {
        (DataMut::F32(d), Data::F32(s)) => d.copy_from_slice(s),
        (DataMut::F64(d), Data::F64(s)) => d.copy_from_slice(s),
        (DataMut::I32(d), Data::I32(s)) => d.copy_from_slice(s),
        (DataMut::BF16(d), Data::BF16(s)) => d.copy_from_slice(s),
        (DataMut::F16(d), Data::F16(s)) => d.copy_from_slice(s),
        _ => unreachable!("a sequence's final element has the element's dtypes"),
    }
}

/// The features over the whole batch of the state fields that share keys and a
/// transition (usually one field): the members of a group.
struct FieldData<'a> {
    keys: usize,
    k: &'a [f32],
    /// Each field's values and their width.
    v: Vec<(&'a [f32], usize)>,
    decay: DecayData<&'a [f32]>,
}

/// A field's transition data, `R` the per-step rows (the batch's, or one sequence's).
#[derive(Clone)]
enum DecayData<R> {
    None,
    /// `channels` decays per step, 1 (scalar) or `keys` (diagonal): their logs (`log`)
    /// or the decays themselves.
    Gated { channels: usize, data: R, log: bool },
    Delta { log: Option<R>, beta: R, b: R },
}

impl<R> DecayData<R> {
    /// The same transition over other rows: `f(rows, entries per step)`.
    fn map<'r, S>(&'r self, keys: usize, f: impl Fn(&'r R, usize) -> S) -> DecayData<S> {
        match self {
            DecayData::None => DecayData::None,
            DecayData::Gated { channels, data, log } => DecayData::Gated { channels: *channels, data: f(data, *channels), log: *log },
            DecayData::Delta { log, beta, b } => DecayData::Delta { log: log.as_ref().map(|l| f(l, 1)), beta: f(beta, 1), b: f(b, keys) },
        }
    }
}

/// Per-step rows of one sequence: borrowed, or copied in reverse step order for a
/// reversed run (the chunk computation then runs forward over them).
type Rows<'a> = Cow<'a, [f32]>;

/// `data`'s rows (`width` entries each) from last to first.
fn reversed(data: &[f32], width: usize) -> Vec<f32> {
    data.chunks(width.max(1)).rev().flatten().copied().collect()
}

impl<'a> FieldData<'a> {
    fn sequence(&self, b: usize, steps: usize, reverse: bool) -> Sequence<'a> {
        let rows = |data: &'a [f32], width: usize| -> Rows<'a> {
            let mine = &data[b * steps * width..(b + 1) * steps * width];
            if reverse {
                Cow::Owned(reversed(mine, width))
            } else {
                Cow::Borrowed(mine)
            }
        };
        let decay = self.decay.map(self.keys, |data, width| rows(data, width));
        let v = self.v.iter().map(|&(data, width)| (rows(data, width), width)).collect();
        Sequence { steps, keys: self.keys, k: rows(self.k, self.keys), v, decay }
    }
}

/// One contraction of one sequence: which of the distinct queries, the member field
/// whose state it reads, and its output rows `[steps × the member's width]`.
struct Out<'o> {
    query: usize,
    member: usize,
    data: &'o mut [f32],
}

/// One field (or fields sharing keys and transition) of one sequence: `[steps × width]`
/// rows.
struct Sequence<'a> {
    steps: usize,
    keys: usize,
    k: Rows<'a>,
    /// Each member field's values and their width.
    v: Vec<(Rows<'a>, usize)>,
    decay: DecayData<Rows<'a>>,
}

/// `c = a · b` (`accumulate`: `c += a · b`): `a` is m×k, `b` k×n and `c` m×n, each
/// with its (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn gemm(m: usize, k: usize, n: usize, a: &[f32], sa: (usize, usize), b: &[f32], sb: (usize, usize), accumulate: bool, c: &mut [f32], sc: (usize, usize)) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, sc) < c.len(), "gemm output out of bounds");
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|r| (0..n).for_each(|j| c[r * sc.0 + j * sc.1] = 0.0));
        }
        return;
    }
    assert!(last(m, k, sa) < a.len() && last(k, n, sb) < b.len(), "gemm operands out of bounds");
    #[cfg(target_arch = "x86_64")]
    if sc.1 == 1 && k * n <= SMALL_RHS_ENTRIES && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY (both): the CPU has AVX2 and FMA (checked just above), every element read
        // or written lies inside the slices (checked above), the rows or columns named
        // contiguous are so, and `c` is borrowed mutably, so it overlaps neither operand.
        if sb.1 == 1 {
            unsafe { small_gemm_fma(m, k, n, a.as_ptr(), sa, b.as_ptr(), sb.0, accumulate, c.as_mut_ptr(), sc.0) };
            return;
        }
        if sa.1 == 1 && sb.0 == 1 {
            unsafe { small_gemm_dots_fma(m, k, n, a.as_ptr(), sa.0, b.as_ptr(), sb.1, accumulate, c.as_mut_ptr(), sc.0) };
            return;
        }
    }
    // SAFETY: every element gemm reads or writes lies inside the slices (checked above);
    // `c` is borrowed mutably, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            sc.1 as isize,
            sc.0 as isize,
            accumulate,
            a.as_ptr(),
            sa.1 as isize,
            sa.0 as isize,
            b.as_ptr(),
            sb.1 as isize,
            sb.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Rows of the intra-chunk product A V per call, [`small_gemm_fma`]'s block of rows:
/// each block reads only the values its last row sees, which skips most of the zeros
/// above A's diagonal.
const CAUSAL_ROWS: usize = 4;

/// Most entries of `b` for [`small_gemm_fma`]: 32 KiB, so that `b` stays in the L1
/// cache while every block of `c`'s rows passes over it (the chunk's products: S₀ is
/// K × V, V is C × V). Larger products go to the `gemm` crate, whose packing and cache
/// blocking then pay for themselves.
#[cfg(target_arch = "x86_64")]
const SMALL_RHS_ENTRIES: usize = 8192;

/// `c = a · b` (`accumulate`: `c += a · b`) for products small enough that the `gemm`
/// crate's packing of both operands and its dispatch cost more than the product (at
/// K = V = 64, C = 16 a chunk's Q̃ S₀ is 16 × 64 × 64, its state update 64 × 16 × 64):
/// blocks of 4 rows × 16 columns of `c` in eight registers, `a`'s entries broadcast (any
/// strides `sa`), `b`'s rows (stride `rb`) loaded as they lie; `c`'s rows have stride
/// `rc`. Columns past the last 8 are summed one at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a`, `b` and `c` hold every entry of an m × k, k × n and
/// m × n matrix at those strides (columns of `b` and `c` contiguous); `c` overlaps
/// neither operand.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm_fma(m: usize, k: usize, n: usize, a: *const f32, sa: (usize, usize), b: *const f32, rb: usize, accumulate: bool, c: *mut f32, rc: usize) {
    let (mut r, mut j) = (0, 0);
    while r + 4 <= m {
        j = 0;
        while j + 16 <= n {
            product_block::<4, 2>(k, a.add(r * sa.0), sa, b.add(j), rb, accumulate, c.add(r * rc + j), rc);
            j += 16;
        }
        if j + 8 <= n {
            product_block::<4, 1>(k, a.add(r * sa.0), sa, b.add(j), rb, accumulate, c.add(r * rc + j), rc);
            j += 8;
        }
        r += 4;
    }
    while r < m {
        j = 0;
        while j + 8 <= n {
            product_block::<1, 1>(k, a.add(r * sa.0), sa, b.add(j), rb, accumulate, c.add(r * rc + j), rc);
            j += 8;
        }
        r += 1;
    }
    // The columns from `j` on (fewer than 8), every row.
    let vector_columns = j;
    for r in 0..m {
        for j in vector_columns..n {
            let mut sum = 0.0f32;
            for p in 0..k {
                sum = (*a.add(r * sa.0 + p * sa.1)).mul_add(*b.add(p * rb + j), sum);
            }
            let out = c.add(r * rc + j);
            *out = if accumulate { *out + sum } else { sum };
        }
    }
}

/// One `R` × 8`V` block of [`small_gemm_fma`]'s `c` (pointers at the block's first
/// row and column), its `R · V` sums held in registers over all of `k`.
///
/// # Safety
/// As for [`small_gemm_fma`], for the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn product_block<const R: usize, const V: usize>(k: usize, a: *const f32, sa: (usize, usize), b: *const f32, rb: usize, accumulate: bool, c: *mut f32, rc: usize) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm256_setzero_ps(); V]; R];
    for p in 0..k {
        let mut row = [_mm256_setzero_ps(); V];
        for (v, x) in row.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b.add(p * rb + 8 * v));
        }
        for (i, sums) in sums.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a.add(i * sa.0 + p * sa.1));
            for (s, &y) in sums.iter_mut().zip(&row) {
                *s = _mm256_fmadd_ps(x, y, *s);
            }
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        for (v, &s) in sums.iter().enumerate() {
            let out = c.add(i * rc + 8 * v);
            _mm256_storeu_ps(out, if accumulate { _mm256_add_ps(_mm256_loadu_ps(out), s) } else { s });
        }
    }
}

/// `c = a · b` (`accumulate`: `c += a · b`) as dot products of `a`'s rows (stride `ra`)
/// with `b`'s columns (stride `cb`), both contiguous — the product A = Q̃ K̃ᵀ of two
/// row-major matrices, for which [`small_gemm_fma`]'s broadcasts would need K̃
/// transposed: blocks of 4 rows × 2 columns of `c`, each entry's sum 8 lanes wide in a
/// register over `k`, then added across its lanes; `c`'s rows have stride `rc`.
///
/// # Safety
/// As for [`small_gemm_fma`], with `a`'s rows and `b`'s columns contiguous.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm_dots_fma(m: usize, k: usize, n: usize, a: *const f32, ra: usize, b: *const f32, cb: usize, accumulate: bool, c: *mut f32, rc: usize) {
    let mut r = 0;
    while r < m {
        let mut j = 0;
        if r + 4 <= m {
            while j + 2 <= n {
                dots_block::<4, 2>(k, a.add(r * ra), ra, b.add(j * cb), cb, accumulate, c.add(r * rc + j), rc);
                j += 2;
            }
        }
        let rows = if r + 4 <= m { 4 } else { 1 };
        while j < n {
            if rows == 4 {
                dots_block::<4, 1>(k, a.add(r * ra), ra, b.add(j * cb), cb, accumulate, c.add(r * rc + j), rc);
            } else {
                dots_block::<1, 1>(k, a.add(r * ra), ra, b.add(j * cb), cb, accumulate, c.add(r * rc + j), rc);
            }
            j += 1;
        }
        r += rows;
    }
}

/// One `R` × `J` block of [`small_gemm_dots_fma`]'s `c` (pointers at the block's first
/// row and column): 8 lanes of each sum over the first multiple of 8 of `k`, the rest
/// entry by entry.
///
/// # Safety
/// As for [`small_gemm_dots_fma`], for the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_block<const R: usize, const J: usize>(k: usize, a: *const f32, ra: usize, b: *const f32, cb: usize, accumulate: bool, c: *mut f32, rc: usize) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm256_setzero_ps(); J]; R];
    let vector_k = k - k % 8;
    for p in (0..vector_k).step_by(8) {
        let mut columns = [_mm256_setzero_ps(); J];
        for (j, x) in columns.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b.add(j * cb + p));
        }
        for (i, sums) in sums.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(a.add(i * ra + p));
            for (s, &y) in sums.iter_mut().zip(&columns) {
                *s = _mm256_fmadd_ps(x, y, *s);
            }
        }
    }
    for (i, sums) in sums.iter().enumerate() {
        for (j, &s) in sums.iter().enumerate() {
            // The 8 lanes added pairwise, then the entries past the last 8.
            let quad = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            let mut sum = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
            for p in vector_k..k {
                sum = (*a.add(i * ra + p)).mul_add(*b.add(j * cb + p), sum);
            }
            let out = c.add(i * rc + j);
            *out = if accumulate { *out + sum } else { sum };
        }
    }
}

/// `dst[i] = op(src[i], scale[i])`, a scale of one entry applying to all, of none
/// copying `src` (each arm one loop that vectorizes, with no call per row).
#[inline]
fn scale_row(dst: &mut [f32], src: &[f32], scale: &[f32], op: impl Fn(f32, f32) -> f32) {
    match scale {
        [] => dst.copy_from_slice(src),
        &[g] => dst.iter_mut().zip(src).for_each(|(d, &x)| *d = op(x, g)),
        _ => dst.iter_mut().zip(src).zip(scale).for_each(|((d, &x), &g)| *d = op(x, g)),
    }
}

/// e^x within 1.2 ulp (1.197 ulp worst over every 7th f32 of [−103.9, 88.72];
/// `exp_approx_accuracy` sweeps the range),
/// with exp's overflow to ∞, underflow through the subnormals to 0, and NaN; written so
/// that a loop of it vectorizes (libm's `expf` is a call per entry). The chunk
/// computation is held to a tolerance, not to the interpreter's bits, so it need not
/// round as `expf` does. Public for psm-bench's measurement of what a vectorized
/// feature map could cost (`breakdown elu`).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    // x = n ln 2 + r with |r| ≤ ln 2 / 2; ln 2 in two parts, the first with few enough
    // bits that n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer, held in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-104.0, 89.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor to degree 7: the remainder is below 2⁻²⁷ on |r| ≤ 0.35.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ in two normal factors, so that n from −150 to 129 scales p exactly or rounds once.
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow2 = |e: i32| f32::from_bits((e.wrapping_add(127) as u32) << 23);
    p * pow2(n >> 1) * pow2(n - (n >> 1))
}

/// The cumulative decays of one chunk from its start, `[step × channel]`.
///
/// In log space (`factored` false, or decays given as logs), Λ restarts at every decay
/// of exactly 0 (a hard reset: `reset` holds the chunk's last such step up to t, −1 for
/// none), so products across a reset are exactly 0 instead of e^(−∞ + ∞).
struct ChunkDecays {
    channels: usize,
    /// Λ_t: the log of the product's magnitude since the chunk's start or the last reset.
    lam: Vec<f32>,
    /// The product's sign (decays given as values may be negative).
    sign: Vec<f32>,
    reset: Vec<i32>,
    /// e^Λ_t times the sign: the product from the chunk's start (0 after a reset).
    grow: Vec<f32>,
    /// D_tτ = grow_t / grow_τ is as accurate as the log-space pair (every |Λ| at most
    /// [`FACTOR_LIMIT`], no reset).
    factored: bool,
}

impl ChunkDecays {
    fn new(chunk: usize, channels: usize) -> ChunkDecays {
        let n = chunk * channels;
        ChunkDecays { channels, lam: vec![0.0; n], sign: vec![1.0; n], reset: vec![-1; n], grow: vec![0.0; n], factored: true }
    }

    /// The entry of step `t`, channel `c` (a scalar decay has one channel for every key).
    #[inline]
    fn at(&self, t: usize, c: usize) -> usize {
        if self.channels == 1 {
            t
        } else {
            t * self.channels + c
        }
    }

    /// Step `t`'s products from the chunk's start, one per channel (none without decay).
    #[inline]
    fn row(&self, t: usize) -> &[f32] {
        &self.grow[t * self.channels..(t + 1) * self.channels]
    }

    /// The product of the decays from the chunk's start through step `t`.
    #[inline]
    fn cumulative(&self, t: usize, c: usize) -> f32 {
        if self.channels == 0 {
            1.0
        } else {
            self.grow[self.at(t, c)]
        }
    }

    /// The product of the decays of steps τ+1 ..= t (τ ≤ t), from the logs; needs
    /// `fill` to have gone to log space (always so for logs, or when not `factored`).
    #[inline]
    fn between(&self, t: usize, tau: usize, c: usize) -> f32 {
        if self.channels == 0 {
            return 1.0;
        }
        let (a, b) = (self.at(t, c), self.at(tau, c));
        if self.reset[a] > tau as i32 {
            0.0
        } else {
            self.sign[a] * self.sign[b] * (self.lam[a] - self.lam[b]).exp()
        }
    }

    /// The chunk's decays from `data` (`[len × channels]`, logs when `is_log`). Decays
    /// given as values are multiplied cumulatively; only a chunk whose products leave
    /// e^±FACTOR_LIMIT goes to log space.
    #[inline(always)]
    fn fill(&mut self, data: &[f32], len: usize, is_log: bool) {
        let nc = self.channels;
        if nc == 0 {
            self.factored = true;
            return;
        }
        if !is_log {
            // Row by row (each channel's product depends only on its own previous one).
            self.grow[..nc].copy_from_slice(&data[..nc]);
            for t in 1..len {
                let (done, rest) = self.grow.split_at_mut(t * nc);
                let prev = &done[(t - 1) * nc..];
                rest[..nc].iter_mut().zip(prev).zip(&data[t * nc..(t + 1) * nc]).for_each(|((g, &p), &d)| *g = p * d);
            }
            let (lo, hi) = ((-FACTOR_LIMIT).exp(), FACTOR_LIMIT.exp());
            // Without short-circuits, so that it vectorizes; NaN is outside.
            let inside = self.grow[..len * nc].iter().fold(true, |ok, g| ok & (g.abs() >= lo) & (g.abs() <= hi));
            if inside {
                self.factored = true;
                return;
            }
        }
        let n = len * nc;
        if is_log && data[..n].iter().fold(true, |ok, &d| ok & (d != f32::NEG_INFINITY)) {
            // No reset: Λ row by row, then every e^Λ in one loop that vectorizes.
            self.lam[..nc].copy_from_slice(&data[..nc]);
            for t in 1..len {
                let (done, rest) = self.lam.split_at_mut(t * nc);
                rest[..nc].iter_mut().zip(&done[(t - 1) * nc..]).zip(&data[t * nc..(t + 1) * nc]).for_each(|((l, &p), &d)| *l = p + d);
            }
            self.sign[..n].fill(1.0);
            self.reset[..n].fill(-1);
            self.grow[..n].iter_mut().zip(&self.lam[..n]).for_each(|(g, &l)| *g = exp_approx(l));
            // NaN is ignored here, as below.
            self.factored = self.lam[..n].iter().fold(0.0f32, |r, l| r.max(l.abs())) <= FACTOR_LIMIT;
            return;
        }
        let mut range = 0.0f32;
        for (i, &d) in data[..n].iter().enumerate() {
            let (lam, sign, reset) = if i < nc { (0.0, 1.0, -1) } else { (self.lam[i - nc], self.sign[i - nc], self.reset[i - nc]) };
            let (step, s) = if is_log { (d, 1.0) } else { (d.abs().ln(), d.signum()) };
            if step == f32::NEG_INFINITY {
                (self.lam[i], self.sign[i], self.reset[i], self.grow[i]) = (0.0, 1.0, (i / nc) as i32, 0.0);
                range = f32::INFINITY;
            } else {
                let l = lam + step;
                (self.lam[i], self.sign[i], self.reset[i]) = (l, sign * s, reset);
                self.grow[i] = if reset >= 0 { 0.0 } else { sign * s * l.exp() };
                // NaN in a decay is ignored here; the product propagates it.
                range = range.max(l.abs());
            }
        }
        self.factored = range <= FACTOR_LIMIT;
    }
}

impl Sequence<'_> {
    /// Log-decay channels per step (0: no decay).
    fn channels(&self) -> usize {
        match self.decay {
            DecayData::None | DecayData::Delta { log: None, .. } => 0,
            DecayData::Gated { channels, .. } => channels,
            DecayData::Delta { log: Some(_), .. } => 1,
        }
    }

    /// The per-step decay data and whether it holds logs.
    fn decays(&self) -> (&[f32], bool) {
        match &self.decay {
            DecayData::Gated { data, log, .. } => (data, *log),
            DecayData::Delta { log: Some(log), .. } => (log, true),
            _ => (&[], true),
        }
    }

    /// Every contraction `outs` (in the caller's step order) with the queries `qs`
    /// (`[steps × keys]` each) from the members' states `initial` (`[keys × width]`,
    /// zeros when absent), in up to `parts` parts ([`Sequence::run_parts`]); returns
    /// each member's state after the last step.
    #[allow(clippy::too_many_arguments)]
    fn contract(&self, chunk: usize, exclusive: bool, initial: &[Option<&[f32]>], qs: &[&[f32]], outs: &mut [Out<'_>], reverse: bool, parts: usize) -> Vec<Vec<f32>> {
        if !reverse {
            return self.run_parts(chunk, exclusive, initial, qs, outs, parts);
        }
        let qs: Vec<Vec<f32>> = qs.iter().map(|q| reversed(q, self.keys)).collect();
        let mut found: Vec<Vec<f32>> = outs.iter().map(|o| vec![0.0; o.data.len()]).collect();
        let mut mine: Vec<Out<'_>> = outs.iter().zip(&mut found).map(|(o, data)| Out { query: o.query, member: o.member, data }).collect();
        let ends = self.run_parts(chunk, exclusive, initial, &qs.iter().map(Vec::as_slice).collect::<Vec<_>>(), &mut mine, parts);
        for (o, found) in outs.iter_mut().zip(&found) {
            o.data.copy_from_slice(&reversed(found, self.v[o.member].1));
        }
        ends
    }

    /// Steps `from..to` as a sequence of their own (borrowed rows).
    fn steps(&self, from: usize, to: usize) -> Sequence<'_> {
        fn rows<'s>(data: &'s [f32], (from, to): (usize, usize), width: usize) -> Rows<'s> {
            Cow::Borrowed(&data[from * width..to * width])
        }
        Sequence {
            steps: to - from,
            keys: self.keys,
            k: rows(&self.k, (from, to), self.keys),
            v: self.v.iter().map(|(data, width)| (rows(data, (from, to), *width), *width)).collect(),
            decay: self.decay.map(self.keys, |data, width| rows(data, (from, to), width)),
        }
    }

    /// [`Sequence::run`] over up to `parts` consecutive parts of the steps (whole chunks,
    /// at least [`MIN_PART_CHUNKS`] each; one for the delta rule) on the current pool:
    /// every part but the last runs from a zero state without outputs, for what it adds
    /// to the state, F_p, and its transition M_p ([`Sequence::transition`]: the state after the part is
    /// M_p S + F_p for the state S before it, the recurrence being linear in S); the
    /// parts' states then follow in order, S_{p+1} = M_p S_p + F_p, and every part runs
    /// from its own, writing its outputs. The states are summed in another order than
    /// one pass sums them, so the results depend on the number of parts (as the chunked
    /// form's on its chunks), within the form's tolerance; one part is [`Sequence::run`].
    fn run_parts(&self, chunk: usize, exclusive: bool, initial: &[Option<&[f32]>], qs: &[&[f32]], outs: &mut [Out<'_>], parts: usize) -> Vec<Vec<f32>> {
        let chunks = self.steps.div_ceil(chunk);
        let parts = parts.min(chunks / MIN_PART_CHUNKS).max(1);
        // The delta rule's transition is a K × K matrix: computing it costs as much as
        // the part's own run, so that parts do not pay on two threads (measured: DeltaNet
        // at T = 4096, K = V = 64, 2.11 ms whole, 2.44 in two parts).
        if parts == 1 || matches!(self.decay, DecayData::Delta { .. }) {
            return self.run(chunk, exclusive, initial, qs, outs);
        }
        let bounds: Vec<(usize, usize)> = (0..parts).map(|p| (p * chunks / parts * chunk, ((p + 1) * chunks / parts * chunk).min(self.steps))).collect();
        let kd = self.keys;
        let zero: Vec<Option<&[f32]>> = vec![None; self.v.len()];
        let added: Vec<(Vec<Vec<f32>>, Vec<f32>)> = bounds[..parts - 1]
            .par_iter()
            .map(|&(from, to)| {
                let part = self.steps(from, to);
                (part.run(chunk, exclusive, &zero, &[], &mut []), part.transition(chunk, None))
            })
            .collect();
        // S_0 is the initial state; S_{p+1} = M_p S_p + F_p.
        let mut states: Vec<Vec<Vec<f32>>> = vec![self.v.iter().zip(initial).map(|(&(_, width), s0)| s0.map_or_else(|| vec![0.0f32; kd * width], <[f32]>::to_vec)).collect()];
        for (f, m) in &added {
            let next = states[states.len() - 1]
                .iter()
                .zip(f)
                .zip(&self.v)
                .map(|((state, f), &(_, width))| {
                    let mut next = match &self.decay {
                        DecayData::None => state.clone(),
                        // One gate for every key, or one per key.
                        DecayData::Gated { .. } => {
                            state.chunks(width).enumerate().flat_map(|(i, row)| row.iter().map(move |s| s * m[i % m.len()])).collect()
                        }
                        DecayData::Delta { .. } => unreachable!("the delta rule runs whole (above)"),
                    };
                    next.iter_mut().zip(f).for_each(|(s, f)| *s += f);
                    next
                })
                .collect();
            states.push(next);
        }
        // Each part's rows of every output and query.
        let mut part_outs: Vec<Vec<Out<'_>>> = (0..parts).map(|_| Vec::new()).collect();
        for o in outs.iter_mut() {
            let width = self.v[o.member].1;
            let mut rest = &mut *o.data;
            for (mine, &(from, to)) in part_outs.iter_mut().zip(&bounds) {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut((to - from) * width);
                mine.push(Out { query: o.query, member: o.member, data: head });
                rest = tail;
            }
        }
        let mut ends: Vec<Vec<Vec<f32>>> = part_outs
            .into_par_iter()
            .zip(bounds.par_iter().zip(&states))
            .map(|(mut mine, (&(from, to), state))| {
                let s0: Vec<Option<&[f32]>> = state.iter().map(|s| Some(&s[..])).collect();
                let qs: Vec<&[f32]> = qs.iter().map(|q| &q[from * kd..to * kd]).collect();
                self.steps(from, to).run(chunk, exclusive, &s0, &qs, &mut mine)
            })
            .collect();
        ends.pop().expect("two parts or more")
    }

    /// The field's transition after the last step, E_{T−1} ⋯ E_0 E₀ with E₀ the initial
    /// one (or the identity): the same recurrence run over E₀ as its state, with zero
    /// values (a gate is a `[channels × 1]` state, the delta rule's matrix `[keys × keys]`).
    fn transition(&self, chunk: usize, initial: Option<&[f32]>) -> Vec<f32> {
        let (keys, values, k, identity) = match &self.decay {
            // E = I: the plan names no transition field for it.
            DecayData::None => return Vec::new(),
            DecayData::Gated { channels, .. } => (*channels, 1, Cow::Owned(vec![0.0; self.steps * channels]), vec![1.0; *channels]),
            DecayData::Delta { .. } => {
                let eye = (0..self.keys * self.keys).map(|e| if e / self.keys == e % self.keys { 1.0 } else { 0.0 }).collect();
                (self.keys, self.keys, self.k.clone(), eye)
            }
        };
        let zero_values = vec![(Cow::Owned(vec![0.0; self.steps * values]), values)];
        let seq = Sequence { steps: self.steps, keys, k, v: zero_values, decay: self.decay.clone() };
        seq.run(chunk, false, &[Some(initial.unwrap_or(&identity))], &[], &mut []).swap_remove(0)
    }

    /// Computes every contraction `outs` (`[steps × its member's width]`) with the
    /// queries `qs` (`[steps × keys]` each), from the members' states `initial`
    /// (`[keys × width]`, zeros when absent); returns each member's state after the last
    /// step.
    ///
    /// Per chunk of `len` steps: the decays, K̃ and K̂ once; per query A = Q̃ K̃ᵀ
    /// (masked) once; per member field out = Q̃ S₀ + A V (A V by blocks of rows, each
    /// over the values its rows see; the values read where they lie), then
    /// S₀ ← e^Λ_L ⊙ S₀ + K̂ᵀ V.
    fn run(&self, chunk: usize, exclusive: bool, initial: &[Option<&[f32]>], qs: &[&[f32]], outs: &mut [Out<'_>]) -> Vec<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.run_avx2(chunk, exclusive, initial, qs, outs) };
        }
        self.run_chunks(chunk, exclusive, initial, qs, outs)
    }

    /// [`Sequence::run_chunks`] compiled for AVX2: the scaling loops between the
    /// products run 8 lanes wide instead of SSE2's 4 (no FMA: products and sums round
    /// as written).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, chunk: usize, exclusive: bool, initial: &[Option<&[f32]>], qs: &[&[f32]], outs: &mut [Out<'_>]) -> Vec<Vec<f32>> {
        self.run_chunks(chunk, exclusive, initial, qs, outs)
    }

    #[inline(always)]
    fn run_chunks(&self, chunk: usize, exclusive: bool, initial: &[Option<&[f32]>], qs: &[&[f32]], outs: &mut [Out<'_>]) -> Vec<Vec<f32>> {
        let (steps, kd, nc) = (self.steps, self.keys, self.channels());
        // Q̃: [step × key].
        let mut qt = vec![0.0f32; chunk * kd];
        // A: [step × step], row stride `chunk`.
        let mut att = vec![0.0f32; chunk * chunk];
        // Per member, S₀: `[keys × width]`.
        let mut states: Vec<Vec<f32>> = self.v.iter().zip(initial).map(|(&(_, width), s0)| s0.map_or_else(|| vec![0.0f32; kd * width], <[f32]>::to_vec)).collect();
        // Per member, the delta rule's pseudo-values of a chunk (other values are read
        // where they lie).
        let delta = matches!(self.decay, DecayData::Delta { .. });
        let mut pseudo: Vec<Vec<f32>> = self.v.iter().map(|&(_, width)| if delta { vec![0.0f32; chunk * width] } else { Vec::new() }).collect();
        // K̃ = k ⊙ e^−Λ and K̂ = k ⊙ e^(Λ_L − Λ): [step × key].
        let mut kt = vec![0.0f32; chunk * kd];
        let mut khat = vec![0.0f32; chunk * kd];
        // The delta rule's Gram matrix.
        let mut gram = if delta { vec![0.0f32; chunk * chunk] } else { Vec::new() };
        let mut dec = ChunkDecays::new(chunk, nc);
        let (data, is_log) = self.decays();
        let mut t0 = 0;
        while t0 < steps {
            let len = chunk.min(steps - t0);
            let k = &self.k[t0 * kd..(t0 + len) * kd];
            dec.fill(if nc > 0 { &data[t0 * nc..(t0 + len) * nc] } else { &[] }, len, is_log);
            // Values: the inputs', or the delta rule's pseudo-values.
            let values: Vec<&[f32]> = self
                .v
                .iter()
                .zip(&states)
                .zip(&mut pseudo)
                .map(|(((v, width), state), pseudo)| {
                    let given = &v[t0 * width..(t0 + len) * width];
                    match &self.decay {
                        DecayData::Delta { beta, b, .. } => {
                            self.pseudo_values(t0, len, *width, state, &dec, beta, b, given, &mut gram, pseudo);
                            &pseudo[..len * width]
                        }
                        _ => given,
                    }
                })
                .collect();
            if dec.factored && nc > 0 {
                for t in 0..len {
                    scale_row(&mut kt[t * kd..(t + 1) * kd], &k[t * kd..(t + 1) * kd], dec.row(t), |x, g| x / g);
                }
            }
            let kf: &[f32] = if nc > 0 { &kt } else { k };
            for (qi, q) in qs.iter().enumerate() {
                let q = &q[t0 * kd..(t0 + len) * kd];
                // Q̃ = q ⊙ e^Λ_t (inclusive) or e^Λ_{t−1} (exclusive; 1 at the chunk's start).
                for t in 0..len {
                    let scale = match (exclusive, t) {
                        (true, 0) => &[][..],
                        (true, _) => dec.row(t - 1),
                        (false, _) => dec.row(t),
                    };
                    scale_row(&mut qt[t * kd..(t + 1) * kd], &q[t * kd..(t + 1) * kd], scale, |x, g| x * g);
                }
                if dec.factored {
                    gemm(len, kd, len, &qt, (kd, 1), kf, (1, kd), false, &mut att, (chunk, 1));
                } else {
                    for t in 0..len {
                        let seen = if exclusive { t } else { t + 1 };
                        for tau in 0..seen {
                            let e = if exclusive { t - 1 } else { t };
                            att[t * chunk + tau] = (0..kd).map(|i| q[t * kd + i] * k[tau * kd + i] * dec.between(e, tau, i)).sum();
                        }
                    }
                }
                // Causally masked: A_tτ = 0 for τ > t (τ ≥ t when exclusive).
                for t in 0..len {
                    let seen = if exclusive { t } else { t + 1 };
                    att[t * chunk + seen..t * chunk + len].fill(0.0);
                }
                for o in outs.iter_mut().filter(|o| o.query == qi) {
                    let width = self.v[o.member].1;
                    let out = &mut o.data[t0 * width..(t0 + len) * width];
                    gemm(len, kd, width, &qt, (kd, 1), &states[o.member], (width, 1), false, out, (width, 1));
                    // + A V, each block of rows reading only the values its last row sees
                    // (the masked entries above the diagonal in between are zeros).
                    for r in (0..len).step_by(CAUSAL_ROWS) {
                        let rows = CAUSAL_ROWS.min(len - r);
                        let seen = if exclusive { r + rows - 1 } else { r + rows };
                        gemm(rows, seen, width, &att[r * chunk..], (chunk, 1), values[o.member], (width, 1), true, &mut out[r * width..], (width, 1));
                    }
                }
            }
            // S₀ ← e^Λ_L ⊙ S₀ + K̂ᵀ V.
            if nc > 0 {
                let last = len - 1;
                for t in 0..len {
                    let row = &mut khat[t * kd..(t + 1) * kd];
                    if dec.factored {
                        scale_row(row, &kt[t * kd..(t + 1) * kd], dec.row(last), |x, g| x * g);
                    } else {
                        row.iter_mut().enumerate().for_each(|(i, x)| *x = k[t * kd + i] * dec.between(last, t, i));
                    }
                }
            }
            let kh: &[f32] = if nc > 0 { &khat } else { k };
            for ((&(_, width), state), values) in self.v.iter().zip(&mut states).zip(&values) {
                if nc > 0 {
                    for (i, row) in state.chunks_mut(width).enumerate() {
                        let g = dec.cumulative(len - 1, i);
                        row.iter_mut().for_each(|s| *s *= g);
                    }
                }
                gemm(kd, len, width, kh, (1, kd), values, (width, 1), true, state, (width, 1));
            }
            t0 += len;
        }
        states
    }

    /// The delta rule's pseudo-values of one chunk into `u` (rows of `vd`): (I + L) U =
    /// V − diag(β e^Λ) B S₀ with L_tτ = β_t e^(Λ_t − Λ_τ) b_t·k_τ for τ < t, by forward
    /// substitution; `given` holds the chunk's values V.
    #[allow(clippy::too_many_arguments)]
    fn pseudo_values(&self, t0: usize, len: usize, vd: usize, state: &[f32], dec: &ChunkDecays, beta: &[f32], b: &[f32], given: &[f32], gram: &mut [f32], u: &mut [f32]) {
        let kd = self.keys;
        let bs = &b[t0 * kd..(t0 + len) * kd];
        let k = &self.k[t0 * kd..(t0 + len) * kd];
        let beta = &beta[t0..t0 + len];
        // U ← B S₀, then V − diag(β e^Λ) B S₀.
        gemm(len, kd, vd, bs, (kd, 1), state, (vd, 1), false, u, (vd, 1));
        for t in 0..len {
            let s = beta[t] * dec.cumulative(t, 0);
            let v = &given[t * vd..(t + 1) * vd];
            for j in 0..vd {
                u[t * vd + j] = v[j] - s * u[t * vd + j];
            }
        }
        // gram[t, τ] = b_t · k_τ.
        gemm(len, kd, len, bs, (kd, 1), k, (1, kd), false, gram, (len, 1));
        for t in 1..len {
            let (done, rest) = u.split_at_mut(t * vd);
            let ut = &mut rest[..vd];
            for tau in 0..t {
                let coef = beta[t] * dec.between(t, tau, 0) * gram[t * len + tau];
                let uu = &done[tau * vd..(tau + 1) * vd];
                for j in 0..vd {
                    ut[j] -= coef * uu[j];
                }
            }
        }
    }
}

/// Shared handle the API keeps per aggregator.
pub(crate) type Cached = Arc<std::sync::OnceLock<Result<Arc<ChunkwiseProgram>, RunError>>>;

#[cfg(test)]
mod tests {
    /// A run in blocks ([`super::run_blocks`], of 3 chunks here, 6 on 2 threads for one
    /// sequence) against the same run whole (which the integration tests hold to the
    /// interpreter): every operator the form applies to, one and two sequences, from an
    /// initial state forward and reversed, with a ragged last block; outputs and final state within the form's
    /// tolerance (‖Δ‖ / ‖whole‖ < 1e-5, plus a bf16 output's rounding; ‖whole‖ at least
    /// 1e-25).
    #[test]
    fn blocks_chain_like_a_whole_run() {
        use crate::{Buffer, Dtype, Form, Inputs, RunOptions};
        let ops = ["deltanet", "gated_deltanet", "gla", "gla_bf16", "linear_attention", "mamba2", "mlstm_affine", "retnet", "rwkv6"];
        let (steps, chunk) = (101, 4);
        let error = |a: &[f64], b: &[f64]| {
            let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            // Against at least 1e-25: gates multiplied over 100 steps reach f32's subnormals.
            diff.sqrt() / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-25)
        };
        for name in ops {
            let path = format!("{}/../examples/ops/{name}.psm", env!("CARGO_MANIFEST_DIR"));
            let dims = [("K", 6), ("V", 5)].map(|(n, v)| crate::DimOverride { name: n.into(), value: v });
            let agg = crate::Program::from_file(&path, &dims).unwrap().aggregator(name).unwrap();
            let program = super::ChunkwiseProgram::new(&agg).unwrap();
            let sig = agg.signature();
            // Gates in (0.5, 1), log-gates and A in (−1, 0), the rest in (−1, 1).
            let data = |field: &str, n: usize, salt: usize| -> Vec<f64> {
                let (lo, hi) = match field {
                    "alpha" | "gamma" => (0.5, 1.0),
                    "g" | "A" => (-1.0, 0.0),
                    _ => (-1.0, 1.0),
                };
                (0..n).map(|i| lo + (hi - lo) * (((i * 7919 + salt * 104_729) % 2003) as f64 + 0.5) / 2003.0).collect()
            };
            let buffer = |dtype: Dtype, v: Vec<f64>| match dtype {
                Dtype::BF16 => Buffer::BF16(v.into_iter().map(half::bf16::from_f64).collect()),
                _ => Buffer::F32(v.into_iter().map(|x| x as f32).collect()),
            };
            for nseq in [1, 2] {
                let inputs: Vec<Buffer> = sig.inputs.iter().enumerate().map(|(k, f)| buffer(f.dtype, data(&f.name, nseq * steps * f.len, k))).collect();
                let params: Vec<Buffer> = sig.params.iter().enumerate().map(|(k, f)| buffer(f.dtype, data(&f.name, f.len, 50 + k))).collect();
                let mut x = Inputs::new(&[nseq], steps);
                for (f, b) in sig.inputs.iter().zip(&inputs) {
                    x = x.input(&f.name, b.as_data());
                }
                for (f, b) in sig.params.iter().zip(&params) {
                    x = x.param(&f.name, b.as_data());
                }
                let opts = RunOptions { form: Form::Chunkwise, chunk: Some(chunk), final_state: true, ..Default::default() };
                let whole = |opts: &RunOptions<'_>| super::run(&program, &x, opts, super::Engine::Cpu).unwrap();
                let start = whole(&opts).summary.final_state.unwrap();
                // 1 thread: blocks of 3 chunks whatever the machine; 2: of 6 for one sequence.
                for (reverse, threads) in [(false, 1), (true, 1), (false, 2)] {
                    let opts = RunOptions { initial_state: Some(&start), reverse, threads: Some(threads), ..opts.clone() };
                    let (whole, blocks) = (whole(&opts), super::run_blocks(&program, &x, &opts, 3 * chunk).unwrap());
                    let what = format!("{name}, {nseq} sequence(s), reverse {reverse}, {threads} thread(s)");
                    for (w, b) in whole.tensors().iter().zip(blocks.tensors()) {
                        let bf16 = if w.data.dtype() == Dtype::BF16 { 8e-3 } else { 0.0 };
                        let e = error(&b.data.to_f64(), &w.data.to_f64());
                        assert!(e < 1e-5 + bf16, "{what} `{}`: {e:e}", w.name);
                        assert_eq!((&w.name, &w.shape), (&b.name, &b.shape));
                    }
                    let (w, b) = (whole.final_state().unwrap(), blocks.final_state().unwrap());
                    assert_eq!(w.batch, b.batch);
                    for (w, b) in w.fields.iter().zip(&b.fields) {
                        let e = error(&b.data.to_f64(), &w.data.to_f64());
                        assert!(e < 1e-5, "{what} final `{}`: {e:e}", w.name);
                        assert_eq!((&w.name, &w.shape), (&b.name, &b.shape));
                    }
                }
            }
        }
    }

    /// [`super::gemm`] against an f64 product, at shapes and layouts that take every
    /// block of [`super::small_gemm_fma`] (4 × 16, 4 × 8, 1 × 8, the columns past the
    /// last 8), of [`super::small_gemm_dots_fma`] (4 × 2, 4 × 1, 1 × 1, k past the last
    /// 8) and the `gemm` crate (`c` column-major, `a` column-major with `b`'s columns
    /// contiguous, a large `b`), overwriting and accumulating.
    #[test]
    fn products() {
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0 - 1.0;
        for (m, k, n) in [(1, 1, 1), (3, 7, 5), (4, 16, 16), (5, 9, 8), (16, 80, 64), (16, 64, 16), (17, 3, 27), (64, 16, 64), (6, 0, 9), (2, 200, 64)] {
            for a_transposed in [false, true] {
                for (b_transposed, c_transposed, accumulate) in [(false, false, false), (false, false, true), (true, false, false), (true, false, true), (true, true, false)] {
                    // Strides (rows, columns), each with a gap between rows or columns.
                    let sa = if a_transposed { (1, m + 1) } else { (k + 1, 1) };
                    let sb = if b_transposed { (1, k + 1) } else { (n + 2, 1) };
                    let sc = if c_transposed { (1, m + 1) } else { (n + 1, 1) };
                    let a: Vec<f32> = (0..(m + 1) * (k + 1)).map(|i| value(i, 1)).collect();
                    let b: Vec<f32> = (0..(k + 1) * (n + 2)).map(|i| value(i, 2)).collect();
                    let before: Vec<f32> = (0..(m + 1) * (n + 1)).map(|i| value(i, 3)).collect();
                    let mut c = before.clone();
                    super::gemm(m, k, n, &a, sa, &b, sb, accumulate, &mut c, sc);
                    for r in 0..m {
                        for j in 0..n {
                            let mut want: f64 = (0..k).map(|p| a[r * sa.0 + p * sa.1] as f64 * b[p * sb.0 + j * sb.1] as f64).sum();
                            let at = r * sc.0 + j * sc.1;
                            if accumulate {
                                want += before[at] as f64;
                            }
                            let layouts = format!("a transposed {a_transposed}, b transposed {b_transposed}, c transposed {c_transposed}, accumulate {accumulate}");
                            assert!((c[at] as f64 - want).abs() <= 1e-5 * (k as f64 + 1.0), "{m}×{k}×{n} ({layouts}) at [{r}, {j}]: {} against {want}", c[at]);
                        }
                    }
                }
            }
        }
    }

    /// Bf16 products only for data that is all bf16: f32, f16 or mixed data gets the
    /// f32-accurate split products.
    #[test]
    fn tensor_products_follow_the_data() {
        use super::{tensor_products, Products};
        use crate::buffers::Inputs;
        use half::{bf16, f16};
        let (b, h, f, i) = ([bf16::ONE; 4], [f16::ONE; 4], [1.0f32; 4], [1i32; 4]);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("x", &b[..]).input("n", &i[..])), Products::Bf16);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("x", &b[..]).param("w", &b[..])), Products::Bf16);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("x", &b[..]).param("w", &f[..])), Products::Bf16x3);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("x", &f[..])), Products::Bf16x3);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("x", &h[..])), Products::Bf16x3);
        assert_eq!(tensor_products(&Inputs::new(&[], 4).input("n", &i[..])), Products::Bf16x3);
    }

    /// [`super::exp_approx`] against f64's exp: within 1.2 ulp of the f32 result (the
    /// gap to the next f32, so one subnormal step for subnormal results) over exp's
    /// range, and the special values.
    #[test]
    fn exp_approx_accuracy() {
        let mut worst = 0.0f64;
        let mut x = -103.9f32;
        while x < 88.72 {
            let exact = (x as f64).exp();
            let y = exact as f32;
            let ulp = (f32::from_bits(y.to_bits() + 1) - y) as f64;
            worst = worst.max((super::exp_approx(x) as f64 - exact).abs() / ulp);
            x += 1e-3 + x.abs() * 1e-5;
        }
        assert!(worst <= 1.2, "worst error {worst} ulp");
        for (x, e) in [(0.0, 1.0), (-0.0, 1.0), (f32::INFINITY, f32::INFINITY), (89.0, f32::INFINITY), (f32::NEG_INFINITY, 0.0), (-110.0, 0.0)] {
            assert_eq!(super::exp_approx(x), e, "exp({x})");
        }
        assert!(super::exp_approx(f32::NAN).is_nan());
    }
}
