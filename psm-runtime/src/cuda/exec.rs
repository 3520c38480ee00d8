//! [`CudaExecutor`]: one aggregator compiled to PTX and loaded on one [`Device`], run
//! over batches of sequences with the CPU executor's API and semantics.
//!
//! The host side is the CPU runtime's own code: the option checks, name/dtype/length
//! checks and binding of inputs, params and initial states, and the conversion of
//! elements to named states all go through the [`Executor`] built for the same
//! aggregator (with the interpreter's kernels, which nothing here runs). A run
//! uploads each input field and param once (they are already `[nseq, T, len]`
//! row-major on the host), runs its form on the device, and copies the outputs and
//! the final state back.

use std::sync::Arc;

use psm_codegen::ptx::{PtxModule, PtxOptions, REVERSE};

use super::device::{Device, DeviceBuffer};
use super::forms::{self, Counter, FormEnd, StepSizes};
use super::launch::{Kernels, Launcher};
use crate::buffers::{dtype_size, Buffer, Data, Inputs, Tensor};
use crate::error::{RunError, Slot};
use crate::forms::{match_named, product, Executor, Form, Outputs, RunOptions, RunStats, RunSummary, Signature};
use crate::kernels::InterpKernels;

/// One aggregator on one CUDA device. Cheap to clone (shared).
#[derive(Clone)]
pub struct CudaExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    host: Executor,
    device: Device,
    ptx: PtxModule,
    kernels: Kernels,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor").field("aggregator", &self.signature().aggregator).field("device", &self.inner.device).finish()
    }
}

/// The bytes of borrowed data.
fn data_bytes(d: Data<'_>) -> &[u8] {
    // SAFETY: a slice of f32/f64/i32 viewed as its bytes: same memory, alignment 1.
    unsafe { std::slice::from_raw_parts(d.addr() as *const u8, d.len() * dtype_size(d.dtype())) }
}

fn buffer_bytes_mut(b: &mut Buffer) -> &mut [u8] {
    let len = b.len() * dtype_size(b.dtype());
    // SAFETY: as above, for the exclusively borrowed vector's elements.
    unsafe { std::slice::from_raw_parts_mut(b.addr_mut() as *mut u8, len) }
}

fn words_bytes(w: &[u64]) -> &[u8] {
    crate::buffers::bytes(w)
}

/// One device buffer per checked field (params, or a run's inputs).
pub(crate) fn upload_fields(device: &Device, slot: Slot, specs: &[crate::forms::FieldSpec], data: &[Data<'_>]) -> Result<Vec<DeviceBuffer>, RunError> {
    specs.iter().zip(data).map(|(s, d)| device.upload(&format!("{} `{}`", slot.name(), s.name), data_bytes(*d))).collect()
}

/// The given tensors of `slot` in declaration order, after the host executor's checks
/// (unknown, duplicate, missing, dtype, length).
pub(crate) fn matched<'a>(
    sig: &Signature,
    slot: Slot,
    given: &[(String, Data<'a>)],
    batch: &[usize],
    steps: Option<usize>,
) -> Result<Vec<Data<'a>>, RunError> {
    Ok(match_named(sig, slot, given, batch, steps)?.map(|i| given[i].1).collect())
}

/// An initial state (flat elements) on the device.
pub(crate) fn upload_state(device: &Device, words: &[u64]) -> Result<DeviceBuffer, RunError> {
    device.upload("the initial state", words_bytes(words))
}

/// The PTX target for a device: its own architecture up to sm_90 (newer devices JIT
/// sm_90 PTX forward).
fn ptx_options(device: &Device) -> PtxOptions {
    let (major, minor) = device.compute_capability();
    PtxOptions { arch: ((major * 10 + minor).max(0) as u32).min(PtxOptions::default().arch) }
}

impl CudaExecutor {
    /// Compiles an aggregator to PTX and loads it on `device` (once per device and PTX
    /// text: the device caches modules).
    pub fn new(agg: &psm_ir::ir::Aggregator, info: &psm_ir::valid::Info, sig: Signature, device: &Device) -> Result<CudaExecutor, RunError> {
        let ptx = psm_codegen::ptx::compile(agg, info, &ptx_options(device))
            .map_err(|e| RunError::Codegen { aggregator: agg.name.clone(), message: e.to_string() })?;
        device.bind()?;
        let kernels = Kernels::load(device, &agg.name, &ptx, [sig.params.len(), sig.inputs.len(), sig.outputs.len()])?;
        let host = Executor::new(sig, Arc::new(InterpKernels::new(agg, info)));
        Ok(CudaExecutor { inner: Arc::new(Inner { host, device: device.clone(), ptx, kernels }) })
    }

    pub fn signature(&self) -> &Signature {
        self.inner.host.signature()
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The PTX module that runs.
    pub fn ptx(&self) -> &PtxModule {
        &self.inner.ptx
    }

    pub(crate) fn elem(&self) -> usize {
        self.inner.ptx.layout.size
    }

    /// The form `auto` picks: the tree for non-associative operators; for associative
    /// ones chunked with [`auto_chunk`], or recurrent (a thread per sequence) when that
    /// chunk holds the whole sequence (a batch that fills the device alone, or short
    /// sequences).
    fn resolve(&self, form: Form, nseq: usize, steps: usize) -> Form {
        match form {
            Form::Auto if !self.signature().associative => Form::Tree,
            Form::Auto if auto_chunk(steps, nseq) >= steps => Form::Recurrent,
            Form::Auto => Form::Chunked,
            f => f,
        }
    }

    /// Runs every sequence of `inputs` on the device; the same options, checks, errors
    /// and results as [`Executor::run`], except that `threads` and `pool` (host
    /// threads) do not apply and `prefill` is not supported yet. The same as
    /// [`CudaExecutor::upload`], [`CudaExecutor::run_device`] and
    /// [`DeviceOutputs::to_host`] in turn.
    pub fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        self.inner.host.check_options(opts)?;
        self.run_device(&self.upload(inputs)?, opts)?.to_host()
    }

    /// Checks a run's inputs and params (as [`Executor::run`] does) and copies them to
    /// the device, to run them there once or many times.
    pub fn upload(&self, inputs: &Inputs<'_>) -> Result<DeviceInputs, RunError> {
        let sig = self.signature();
        let params = matched(sig, Slot::Param, &inputs.params, &[], None)?;
        let data = matched(sig, Slot::Input, &inputs.inputs, &inputs.batch, Some(inputs.steps))?;
        let nseq = product(&inputs.batch, || format!("the batch shape {:?}", inputs.batch))?;
        let device = &self.inner.device;
        device.bind()?;
        Ok(DeviceInputs {
            batch: inputs.batch.clone(),
            nseq,
            steps: inputs.steps,
            params: upload_fields(device, Slot::Param, &sig.params, &params)?,
            inputs: upload_fields(device, Slot::Input, &sig.inputs, &data)?,
        })
    }

    /// Runs uploaded inputs in one form and waits for the device; the outputs and the
    /// final state stay on the device until [`DeviceOutputs::to_host`].
    pub fn run_device(&self, x: &DeviceInputs, opts: &RunOptions<'_>) -> Result<DeviceOutputs, RunError> {
        let host = &self.inner.host;
        host.check_options(opts)?;
        if opts.prefill {
            return Err(RunError::InvalidOption {
                option: "prefill",
                message: "the CUDA backend cannot hand a run to a stream yet; run the prompt on the CPU backend".into(),
            });
        }
        let init = opts.initial_state.map(|s| host.bind_state(s, &x.batch)).transpose()?;
        let (nseq, steps) = (x.nseq, x.steps);
        let form = self.resolve(opts.form, nseq, steps);
        let chunk = (form == Form::Chunked).then(|| opts.chunk.unwrap_or_else(|| auto_chunk(steps, nseq)));
        let device = &self.inner.device;
        device.bind()?;
        let init_buf = init.as_deref().map(|w| upload_state(device, w)).transpose()?;
        let output_bufs = self.alloc_outputs(nseq, steps)?;
        let launcher = self.launcher(&x.params, &x.inputs, &output_bufs, nseq, steps);
        let end = self.run_form(&launcher, form, chunk, init_buf.as_ref(), opts)?;
        let final_state = if opts.final_state { Some(self.final_state(&launcher, end.final_state, init.as_deref())?) } else { None };
        device.synchronize()?;
        let stats = RunStats { sequences: nseq, steps, combines: launcher.combines.get(), peak_elements: end.held };
        Ok(DeviceOutputs { exec: self.clone(), batch: x.batch.clone(), steps, outputs: output_bufs, final_state, stats, form, chunk })
    }

    pub(crate) fn launcher<'a>(
        &'a self,
        params: &'a [DeviceBuffer],
        inputs: &'a [DeviceBuffer],
        outputs: &'a [DeviceBuffer],
        nseq: usize,
        steps: usize,
    ) -> Launcher<'a> {
        Launcher {
            device: &self.inner.device,
            kernels: &self.inner.kernels,
            params,
            inputs,
            outputs,
            nseq,
            steps,
            elem: self.elem(),
            combines: std::cell::Cell::new(0),
        }
    }

    /// Device buffers for every output, `[nseq, steps, len]`.
    pub(crate) fn alloc_outputs(&self, nseq: usize, steps: usize) -> Result<Vec<DeviceBuffer>, RunError> {
        self.signature()
            .outputs
            .iter()
            .map(|s| {
                let bytes = nseq
                    .checked_mul(steps)
                    .and_then(|n| n.checked_mul(s.len))
                    .and_then(|n| n.checked_mul(dtype_size(s.dtype)))
                    .ok_or_else(|| RunError::TooLarge { what: format!("output `{}`", s.name) })?;
                self.inner.device.alloc(&format!("output `{}`", s.name), bytes, false)
            })
            .collect()
    }

    /// The outputs copied back as named tensors `[batch..., steps, dims...]`.
    pub(crate) fn download_outputs(&self, bufs: &[DeviceBuffer], batch: &[usize], steps: usize) -> Result<Vec<Tensor>, RunError> {
        self.signature()
            .outputs
            .iter()
            .zip(bufs)
            .map(|(s, buf)| {
                let too_large = || RunError::TooLarge { what: format!("output `{}`", s.name) };
                let n = buf.bytes / dtype_size(s.dtype);
                let mut data = Buffer::try_zeros(s.dtype, n).ok_or_else(too_large)?;
                self.inner.device.copy_to_host(buf, 0, buffer_bytes_mut(&mut data))?;
                let mut shape = batch.to_vec();
                shape.push(steps);
                shape.extend(&s.shape);
                Ok(Tensor { name: s.name.clone(), shape, data })
            })
            .collect()
    }

    pub(crate) fn host(&self) -> &Executor {
        &self.inner.host
    }

    fn run_form(&self, l: &Launcher<'_>, form: Form, chunk: Option<usize>, init: Option<&DeviceBuffer>, opts: &RunOptions<'_>) -> Result<FormEnd, RunError> {
        if l.steps == 0 || l.nseq == 0 {
            return Ok(FormEnd { final_state: None, held: usize::from(init.is_some()) });
        }
        let keep = opts.final_state;
        let reverse = if opts.reverse { REVERSE } else { 0 };
        let associative = self.signature().associative;
        match form {
            Form::Chunked => forms::chunked(l, init, chunk.unwrap_or(1).max(1), keep, reverse),
            Form::Tree => forms::tree(l, init, keep, reverse),
            // Associative operators stream one running element: the recurrent kernel.
            Form::Stream if !associative => {
                let copy = init.map(|s| forms::column(l, s, 1, 0)).transpose()?;
                let mut counter = Counter::new(copy);
                counter.run_steps(l, &self.step_sizes(), self.signature().readout, opts.reverse)?;
                let final_state = if keep { counter.prefix().map(|p| forms::column(l, p, 1, 0)).transpose()? } else { None };
                Ok(FormEnd { final_state, held: counter.peak })
            }
            Form::Recurrent | Form::Stream | Form::Auto => forms::recurrent(l, init, keep, reverse),
        }
    }

    pub(crate) fn step_sizes(&self) -> StepSizes {
        let sig = self.signature();
        let bytes = |specs: &[crate::forms::FieldSpec]| specs.iter().map(|s| s.len * dtype_size(s.dtype)).collect();
        StepSizes { inputs: bytes(&sig.inputs), outputs: bytes(&sig.outputs) }
    }

    /// p_T: the form's (on the device), else (T = 0) the initial state, else the
    /// declared identity (on the device), else none.
    fn final_state(&self, l: &Launcher<'_>, from_form: Option<DeviceBuffer>, init: Option<&[u64]>) -> Result<FinalState, RunError> {
        Ok(if let Some(buf) = from_form {
            FinalState::Device(buf)
        } else if let Some(s0) = init {
            FinalState::Host(s0.to_vec())
        } else if l.steps > 0 && l.nseq == 0 {
            // An empty batch has a (field-less) final state whenever it ran steps.
            FinalState::Host(Vec::new())
        } else {
            let ids = l.device.alloc("the identity", l.nseq * self.elem(), false)?;
            if l.identity(l.nseq, &ids)? {
                FinalState::Device(ids)
            } else {
                FinalState::None
            }
        })
    }
}

/// A run's inputs and params on the device ([`CudaExecutor::upload`]).
pub struct DeviceInputs {
    batch: Vec<usize>,
    nseq: usize,
    steps: usize,
    params: Vec<DeviceBuffer>,
    inputs: Vec<DeviceBuffer>,
}

impl DeviceInputs {
    pub fn batch(&self) -> &[usize] {
        &self.batch
    }
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// p_T of every sequence after a device run.
enum FinalState {
    Device(DeviceBuffer),
    /// Flat elements (the initial state of a run without steps).
    Host(Vec<u64>),
    /// No steps, no initial state and no declared identity.
    None,
}

/// The results of [`CudaExecutor::run_device`], still on the device.
pub struct DeviceOutputs {
    exec: CudaExecutor,
    batch: Vec<usize>,
    steps: usize,
    outputs: Vec<DeviceBuffer>,
    /// Present when the run was asked for it.
    final_state: Option<FinalState>,
    stats: RunStats,
    form: Form,
    chunk: Option<usize>,
}

impl DeviceOutputs {
    pub fn stats(&self) -> RunStats {
        self.stats
    }
    /// The form that ran (`auto` resolved).
    pub fn form(&self) -> Form {
        self.form
    }
    pub fn chunk(&self) -> Option<usize> {
        self.chunk
    }

    /// Copies the outputs (and the final state, when asked for) to the host.
    pub fn to_host(&self) -> Result<Outputs, RunError> {
        let exec = &self.exec;
        exec.device().bind()?;
        let outputs = exec.download_outputs(&self.outputs, &self.batch, self.steps)?;
        let flat = match &self.final_state {
            Some(FinalState::Device(buf)) => {
                let mut flat = vec![0u64; buf.bytes / 8];
                exec.device().copy_to_host(buf, 0, crate::buffers::bytes_mut(&mut flat))?;
                Some(flat)
            }
            Some(FinalState::Host(words)) => Some(words.clone()),
            Some(FinalState::None) | None => None,
        };
        let final_state = flat.map(|f| exec.host().state_of(&self.batch, &f));
        Ok(Outputs {
            batch: self.batch.clone(),
            steps: self.steps,
            outputs,
            summary: RunSummary { final_state, prefill: None, stats: self.stats, form: self.form, chunk: self.chunk },
        })
    }
}

/// (Sequence, chunk) pairs `auto` aims for: a quarter of the threads an H200 holds
/// resident (132 SMs × 2048), so that the chunk passes fill the device while chunks
/// stay long (every step is scanned twice). Chosen, not tuned.
const ENOUGH_THREADS: usize = 1 << 16;

/// The chunk size of `auto`: about 2^16 (sequence, chunk) pairs over the whole batch, at
/// least 16 steps each (a chunk's steps are scanned twice).
pub fn auto_chunk(steps: usize, nseq: usize) -> usize {
    let chunks_per_seq = ENOUGH_THREADS.div_ceil(nseq.max(1)).max(1);
    steps.div_ceil(chunks_per_seq).max(16)
}
