//! The chunkwise-parallel form on the CPU ([`Form::Chunkwise`]): runs the form
//! `psm_ir::derive::chunkwise` derives from the operator's IR.
//!
//! 1. The derived *feature map* aggregator (compiled like any other, run in the
//!    recurrent form: it has no state to speak of) computes the per-step keys, values,
//!    log-decays, delta-rule β and b, and queries from the user's inputs and params.
//! 2. Per sequence (rayon over the batch), chunk by chunk, the state contractions are
//!    computed with matrix products (`matrixmultiply::sgemm`), all in f32: the
//!    intra-chunk decay-masked (Q Kᵀ ⊙ D) V, the inter-chunk Q S₀, the state passed to
//!    the next chunk, and for the delta rule the pseudo-values of the UT transform
//!    (forward substitution of the unit lower-triangular system).
//! 3. The derived *readout map* turns the contractions into the operator's outputs.
//!
//! Decays are applied in log space: Λ is the cumulative log decay from the chunk's
//! start, and the factorization D_tτ = e^Λ_t · e^−Λ_τ is used only when every |Λ| in
//! the chunk is at most [`FACTOR_LIMIT`] (each factor then stays well inside f32's
//! range, so the product is as accurate as e^(Λ_t − Λ_τ)); a chunk with a larger range
//! computes D_tτ = e^(Λ_t − Λ_τ) pair by pair.

use std::sync::Arc;

use psm_ir::derive::chunkwise::{Chunkwise, Decay, Gate};
use rayon::prelude::*;

use crate::api::Aggregator;
use crate::buffers::{Data, Inputs, OutputsMut};
use crate::error::RunError;
use crate::forms::{Form, Outputs, RunOptions, RunStats, RunSummary};

/// Steps per chunk when [`RunOptions::chunk`] is not given.
pub const DEFAULT_CHUNK: usize = 64;

/// Most steps per chunk: the intra-chunk products hold chunk² entries per sequence.
pub const MAX_CHUNK: usize = 4096;

/// Largest |Λ| (cumulative log decay within a chunk) for which the decay mask is
/// factored into row and column scalings: e^±60 ≈ 1.1e±26 is far from f32's limits.
pub const FACTOR_LIMIT: f32 = 60.0;

/// The derived form of one aggregator with its two derived aggregators compiled.
pub(crate) struct ChunkwiseProgram {
    plan: Chunkwise,
    /// The operator itself: its signature checks the user's data.
    operator: Aggregator,
    features: Option<Aggregator>,
    readout: Aggregator,
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
        Ok(ChunkwiseProgram { operator: agg.clone(), features, readout: compile(&plan.readout)?, plan })
    }

    pub(crate) fn plan(&self) -> &Chunkwise {
        &self.plan
    }
}

fn check_options(opts: &RunOptions<'_>) -> Result<(), RunError> {
    let refuse = |option: &'static str, what: &str| {
        Err(RunError::InvalidOption { option, message: format!("the chunkwise form does not {what} yet; use another form") })
    };
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
        Some(0) => Err(RunError::InvalidOption { option: "chunk", message: "a chunk holds at least one step".into() }),
        Some(c) if c > MAX_CHUNK => Err(RunError::InvalidOption {
            option: "chunk",
            message: format!("the chunkwise form takes at most {MAX_CHUNK} steps per chunk (its intra-chunk products hold chunk² entries)"),
        }),
        _ => Ok(()),
    }
}

/// Options of the derived per-step maps: the recurrent form on the caller's threads.
fn map_options<'a>(opts: &RunOptions<'a>) -> RunOptions<'a> {
    RunOptions { form: Form::Recurrent, threads: opts.threads, pool: opts.pool, ..Default::default() }
}

/// Checks the options and the user's data, runs the feature map and the chunk
/// computation; returns the contractions, `[contraction][sequence × steps × values]`.
fn contractions(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Vec<Vec<f32>>, RunError> {
    check_options(opts)?;
    let operator = cw.operator.executor()?;
    operator.bind(inputs)?;
    let features = cw.features.as_ref().map(|f| f.run(inputs, &map_options(opts))).transpose()?;
    let plan = &cw.plan;
    let feature = |name: &str| -> &[f32] {
        let given = plan.inputs.iter().find(|(f, _)| f == name).and_then(|(_, input)| inputs.inputs.iter().find(|(n, _)| n == input));
        match given {
            // Bound above: an f32 input of the feature's shape.
            Some((_, Data::F32(data))) => data,
            _ => features.as_ref().and_then(|f| f.f32(name)).expect("the feature map declares every name the plan does not read from an input"),
        }
    };
    let steps = inputs.steps;
    let nseq = inputs.batch.iter().product::<usize>();
    // A chunk longer than the sequence needs no more scratch than the sequence.
    let chunk = opts.chunk.unwrap_or(DEFAULT_CHUNK).min(steps.max(1));
    let gated = |channels, gate: &Gate| {
        let (Gate::Log(name) | Gate::Value(name)) = gate;
        DecayData::Gated { channels, data: feature(name), log: matches!(gate, Gate::Log(_)) }
    };
    let fields: Vec<FieldData<'_>> = plan
        .fields
        .iter()
        .map(|f| FieldData {
            keys: f.keys,
            values: f.values,
            k: feature(&f.key),
            v: feature(&f.value),
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
        .map(|c| {
            let len = nseq.checked_mul(steps).and_then(|n| n.checked_mul(fields[c.field].values));
            let mut buffer = Vec::new();
            match len {
                Some(len) if buffer.try_reserve_exact(len).is_ok() => {
                    buffer.resize(len, 0.0);
                    Ok(buffer)
                }
                _ => Err(RunError::TooLarge { what: format!("the contraction `{}`", c.output) }),
            }
        })
        .collect::<Result<_, _>>()?;
    if steps == 0 {
        return Ok(buffers);
    }
    // Each sequence's slice of every contraction: [sequence][contraction].
    let mut per_seq: Vec<Vec<&mut [f32]>> = (0..nseq).map(|_| Vec::new()).collect();
    for (c, buffer) in plan.contractions.iter().zip(&mut buffers) {
        for (b, slice) in buffer.chunks_mut(steps * fields[c.field].values).enumerate() {
            per_seq[b].push(slice);
        }
    }
    let run = || {
        per_seq.into_par_iter().enumerate().for_each(|(b, mut outs)| {
            for (fi, field) in fields.iter().enumerate() {
                let mine: Vec<usize> = (0..plan.contractions.len()).filter(|&m| plan.contractions[m].field == fi).collect();
                let qs: Vec<&[f32]> = mine.iter().map(|&m| &queries[m][b * steps * field.keys..(b + 1) * steps * field.keys]).collect();
                let mut mine_outs: Vec<&mut [f32]> = Vec::with_capacity(mine.len());
                for (m, out) in outs.iter_mut().enumerate() {
                    if mine.contains(&m) {
                        mine_outs.push(out);
                    }
                }
                field.sequence(b, steps).run(steps, chunk, plan.exclusive, &qs, &mut mine_outs);
            }
        })
    };
    match (opts.pool, opts.threads) {
        (Some(pool), _) => pool.install(run),
        (None, Some(n)) => operator.pool(n)?.install(run),
        (None, None) => run(),
    }
    Ok(buffers)
}

fn readout_inputs<'a>(cw: &ChunkwiseProgram, inputs: &Inputs<'a>, contractions: &'a [Vec<f32>]) -> Inputs<'a> {
    let mut all = inputs.clone();
    for (c, data) in cw.plan.contractions.iter().zip(contractions) {
        all.inputs.push((c.output.clone(), Data::F32(data)));
    }
    all
}

/// The readout map's summary made the chunkwise run's: no combines (the form runs none).
fn summary(summary: &mut RunSummary, inputs: &Inputs<'_>, chunk: usize) {
    summary.form = Form::Chunkwise;
    summary.chunk = Some(chunk);
    summary.stats = RunStats { sequences: inputs.batch.iter().product(), steps: inputs.steps, combines: 0, peak_elements: 0 };
}

pub(crate) fn run(cw: &ChunkwiseProgram, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
    let c = contractions(cw, inputs, opts)?;
    let mut out = cw.readout.run(&readout_inputs(cw, inputs, &c), &map_options(opts))?;
    summary(&mut out.summary, inputs, opts.chunk.unwrap_or(DEFAULT_CHUNK));
    Ok(out)
}

pub(crate) fn run_into(
    cw: &ChunkwiseProgram,
    inputs: &Inputs<'_>,
    outputs: &mut OutputsMut<'_>,
    opts: &RunOptions<'_>,
) -> Result<RunSummary, RunError> {
    let c = contractions(cw, inputs, opts)?;
    let mut s = cw.readout.run_into(&readout_inputs(cw, inputs, &c), outputs, &map_options(opts))?;
    summary(&mut s, inputs, opts.chunk.unwrap_or(DEFAULT_CHUNK));
    Ok(s)
}

/// One state field's features over the whole batch.
struct FieldData<'a> {
    keys: usize,
    values: usize,
    k: &'a [f32],
    v: &'a [f32],
    decay: DecayData<'a>,
}

#[derive(Clone, Copy)]
enum DecayData<'a> {
    None,
    /// `channels` decays per step, 1 (scalar) or `keys` (diagonal): their logs (`log`)
    /// or the decays themselves.
    Gated { channels: usize, data: &'a [f32], log: bool },
    Delta { log: Option<&'a [f32]>, beta: &'a [f32], b: &'a [f32] },
}

impl<'a> FieldData<'a> {
    fn sequence(&self, b: usize, steps: usize) -> Sequence<'a> {
        let rows = |data: &'a [f32], width: usize| &data[b * steps * width..(b + 1) * steps * width];
        let decay = match self.decay {
            DecayData::None => DecayData::None,
            DecayData::Gated { channels, data, log } => DecayData::Gated { channels, data: rows(data, channels), log },
            DecayData::Delta { log, beta, b: bv } => {
                DecayData::Delta { log: log.map(|l| rows(l, 1)), beta: rows(beta, 1), b: rows(bv, self.keys) }
            }
        };
        Sequence { keys: self.keys, values: self.values, k: rows(self.k, self.keys), v: rows(self.v, self.values), decay }
    }
}

/// One field of one sequence: `[steps × width]` slices.
struct Sequence<'a> {
    keys: usize,
    values: usize,
    k: &'a [f32],
    v: &'a [f32],
    decay: DecayData<'a>,
}

/// `c = a · b + beta · c`: `a` is m×k and `b` k×n with the given (row, column)
/// strides, `c` m×n row-major with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
fn gemm(m: usize, k: usize, n: usize, a: &[f32], sa: (usize, usize), b: &[f32], sb: (usize, usize), beta: f32, c: &mut [f32], ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs;
    if k > 0 {
        assert!(last(m, k, sa) < a.len() && last(k, n, sb) < b.len(), "gemm operands out of bounds");
    }
    assert!(last(m, n, (ldc, 1)) < c.len(), "gemm output out of bounds");
    // SAFETY: every element sgemm reads or writes lies inside the slices (checked above).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            sa.0 as isize,
            sa.1 as isize,
            b.as_ptr(),
            sb.0 as isize,
            sb.1 as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        )
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
        match self.decay {
            DecayData::Gated { data, log, .. } => (data, log),
            DecayData::Delta { log: Some(log), .. } => (log, true),
            _ => (&[], true),
        }
    }

    /// Computes every contraction `outs[m]` (`[steps × values]`) of this field with
    /// queries `qs[m]` (`[steps × keys]`).
    fn run(&self, steps: usize, chunk: usize, exclusive: bool, qs: &[&[f32]], outs: &mut [&mut [f32]]) {
        let (kd, vd, nc) = (self.keys, self.values, self.channels());
        let mut state = vec![0.0f32; kd * vd];
        // Per-chunk scratch.
        let mut lam = vec![0.0f32; chunk * nc]; // Λ_t, inclusive
        let mut grow = vec![0.0f32; chunk * nc]; // e^Λ_t (times `sign`)
        // The sign of the cumulative product of decays given as values (Λ is the log of
        // its magnitude); 1 for decays given as logs.
        let mut sign = vec![1.0f32; chunk * nc];
        let mut ks = vec![0.0f32; kd * chunk]; // k_τ e^−Λ_τ, transposed: [key][step] (row-major operands pack fastest)
        let mut qt = vec![0.0f32; chunk * kd];
        let mut att = vec![0.0f32; chunk * chunk];
        let mut u = vec![0.0f32; chunk * vd];
        let mut t0 = 0;
        while t0 < steps {
            let len = chunk.min(steps - t0);
            let k = &self.k[t0 * kd..(t0 + len) * kd];
            let (data, is_log) = self.decays();
            let data = if nc > 0 { &data[t0 * nc..(t0 + len) * nc] } else { &[][..] };
            // Decays given as values are multiplied cumulatively; only a chunk whose
            // products leave e^±FACTOR_LIMIT goes to log space.
            let mut in_log = is_log;
            if !is_log {
                let (lo, hi) = ((-FACTOR_LIMIT).exp(), FACTOR_LIMIT.exp());
                let mut inside = true;
                for t in 0..len {
                    for c in 0..nc {
                        let prev = if t == 0 { 1.0 } else { grow[(t - 1) * nc + c] };
                        let g = prev * data[t * nc + c];
                        grow[t * nc + c] = g;
                        inside &= g.abs() >= lo && g.abs() <= hi;
                    }
                }
                in_log = !inside;
            }
            let mut range = 0.0f32;
            if in_log {
                for t in 0..len {
                    for c in 0..nc {
                        let (prev, prev_sign) = if t == 0 { (0.0, 1.0) } else { (lam[(t - 1) * nc + c], sign[(t - 1) * nc + c]) };
                        let d = data[t * nc + c];
                        let (step, s) = if is_log { (d, 1.0) } else { (d.abs().ln(), prev_sign * d.signum()) };
                        let l = prev + step;
                        lam[t * nc + c] = l;
                        sign[t * nc + c] = s;
                        grow[t * nc + c] = s * l.exp();
                        range = range.max(l.abs());
                    }
                }
            }
            // NaN in a decay makes `range` ignore it; the factored path propagates it.
            // Without logs (`in_log` false) Λ is not computed and only the factored path runs.
            let factored = range <= FACTOR_LIMIT;
            let at = |t: usize, c: usize| if nc == 1 { t * nc } else { t * nc + c };
            // Values: the inputs', or the delta rule's pseudo-values.
            let v: &[f32] = match self.decay {
                DecayData::Delta { beta, b, .. } => {
                    self.pseudo_values(t0, len, &state, &lam, &grow, beta, b, &mut att, &mut u);
                    &u[..len * vd]
                }
                _ => &self.v[t0 * vd..(t0 + len) * vd],
            };
            // K̃ᵀ = (k ⊙ e^−Λ)ᵀ.
            for t in 0..len {
                for i in 0..kd {
                    ks[i * len + t] = if nc == 0 { k[t * kd + i] } else { k[t * kd + i] / grow[at(t, i)] };
                }
            }
            for (q, out) in qs.iter().zip(outs.iter_mut()) {
                let q = &q[t0 * kd..(t0 + len) * kd];
                let out = &mut out[t0 * vd..(t0 + len) * vd];
                // Q̃ = q ⊙ e^E, E = Λ_t (inclusive) or Λ_{t−1} (exclusive; 0 at the chunk's start).
                let scale = |t: usize, i: usize| -> f32 {
                    if nc == 0 {
                        1.0
                    } else if exclusive {
                        if t == 0 {
                            1.0
                        } else {
                            grow[at(t - 1, i)]
                        }
                    } else {
                        grow[at(t, i)]
                    }
                };
                for t in 0..len {
                    for i in 0..kd {
                        qt[t * kd + i] = q[t * kd + i] * scale(t, i);
                    }
                }
                if factored {
                    gemm(len, kd, len, &qt, (kd, 1), &ks, (len, 1), 0.0, &mut att, len);
                } else {
                    for t in 0..len {
                        for tau in 0..=t {
                            att[t * len + tau] = (0..kd)
                                .map(|i| {
                                    let (e, s) = match (exclusive, t) {
                                        (true, 0) => (0.0, 1.0),
                                        (true, _) => (lam[at(t - 1, i)], sign[at(t - 1, i)]),
                                        (false, _) => (lam[at(t, i)], sign[at(t, i)]),
                                    };
                                    let decay = s * sign[at(tau, i)] * (e - lam[at(tau, i)]).exp();
                                    q[t * kd + i] * k[tau * kd + i] * decay
                                })
                                .sum();
                        }
                    }
                }
                for t in 0..len {
                    let first_masked = if exclusive { t } else { t + 1 };
                    att[t * len + first_masked.min(len)..(t + 1) * len].fill(0.0);
                }
                gemm(len, kd, vd, &qt, (kd, 1), &state, (vd, 1), 0.0, out, vd);
                gemm(len, len, vd, &att, (len, 1), v, (vd, 1), 1.0, out, vd);
            }
            // S ← e^Λ_L ⊙ S + (k ⊙ e^(Λ_L − Λ))ᵀ v.
            if nc > 0 {
                let last = len - 1;
                for t in 0..len {
                    for i in 0..kd {
                        let d = if factored {
                            ks[i * len + t] * grow[at(last, i)]
                        } else {
                            let s = sign[at(last, i)] * sign[at(t, i)];
                            k[t * kd + i] * s * (lam[at(last, i)] - lam[at(t, i)]).exp()
                        };
                        ks[i * len + t] = d;
                    }
                }
                for i in 0..kd {
                    let g = grow[at(last, i)];
                    state[i * vd..(i + 1) * vd].iter_mut().for_each(|s| *s *= g);
                }
            }
            gemm(kd, len, vd, &ks, (len, 1), v, (vd, 1), 1.0, &mut state, vd);
            t0 += len;
        }
    }

    /// The delta rule's pseudo-values of one chunk into `u`: (I + L) U = V − diag(β e^Λ) B S₀
    /// with L_tτ = β_t e^(Λ_t − Λ_τ) b_t·k_τ for τ < t, by forward substitution.
    #[allow(clippy::too_many_arguments)]
    fn pseudo_values(&self, t0: usize, len: usize, state: &[f32], lam: &[f32], grow: &[f32], beta: &[f32], b: &[f32], gram: &mut [f32], u: &mut [f32]) {
        let (kd, vd, nc) = (self.keys, self.values, self.channels());
        let bs = &b[t0 * kd..(t0 + len) * kd];
        let k = &self.k[t0 * kd..(t0 + len) * kd];
        let beta = &beta[t0..t0 + len];
        let u = &mut u[..len * vd];
        // U ← B S₀, then V − diag(β e^Λ) B S₀.
        gemm(len, kd, vd, bs, (kd, 1), state, (vd, 1), 0.0, u, vd);
        for t in 0..len {
            let g = if nc == 0 { 1.0 } else { grow[t] };
            let s = beta[t] * g;
            let v = &self.v[(t0 + t) * vd..(t0 + t + 1) * vd];
            for j in 0..vd {
                u[t * vd + j] = v[j] - s * u[t * vd + j];
            }
        }
        // gram[t, τ] = b_t · k_τ.
        gemm(len, kd, len, bs, (kd, 1), k, (1, kd), 0.0, gram, len);
        for t in 1..len {
            let (done, rest) = u.split_at_mut(t * vd);
            let ut = &mut rest[..vd];
            for tau in 0..t {
                let decay = if nc == 0 { 1.0 } else { (lam[t] - lam[tau]).exp() };
                let coef = beta[t] * decay * gram[t * len + tau];
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
