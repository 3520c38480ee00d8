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
use super::select::{Chosen, CudaKernel, Lookback};
use crate::buffers::{dtype_size, Buffer, Data, Inputs, Tensor};
use crate::error::{RunError, Slot};
use crate::forms::{match_named, Executor, Form, Outputs, RunOptions, RunStats, RunSummary, Signature};
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
    /// The look-back scan, when the aggregator's element and rows are scalars or its
    /// entries scan independently (loaded on first use, so that a run of the generic
    /// kernels never depends on it).
    lookback: Option<Lookback>,
    /// The aggregator this executor was made from (`Aggregator::cuda`): its derived
    /// chunkwise form, when it has one.
    source: Option<crate::api::Aggregator>,
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

/// The chunkwise form asked of the CUDA backend.
fn no_chunkwise() -> RunError {
    RunError::InvalidOption {
        option: "form",
        message: "the chunkwise form runs on the CUDA backend through `run` of an executor made by `Aggregator::cuda`, without resident timing yet".into(),
    }
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
        let counts = [sig.params.len(), sig.inputs.len(), sig.outputs.len()];
        let kernels = Kernels::load(device, &agg.name, &ptx, counts)?;
        let lookback = psm_codegen::ptx::compile_lookback(agg, info, &ptx_options(device))
            .map_err(|e| RunError::Codegen { aggregator: agg.name.clone(), message: e.to_string() })?
            .map(|m| Lookback::new(&agg.name, m, counts));
        let host = Executor::new(sig, Arc::new(InterpKernels::new(agg, info)));
        Ok(CudaExecutor { inner: Arc::new(Inner { host, device: device.clone(), ptx, kernels, lookback, source: None }) })
    }

    /// The executor of an API aggregator, which can also run its chunkwise form.
    pub(crate) fn of_aggregator(agg: &crate::api::Aggregator, device: &Device) -> Result<CudaExecutor, RunError> {
        let mut exec = CudaExecutor::new(agg.ir(), agg.info(), agg.signature(), device)?;
        Arc::get_mut(&mut exec.inner).expect("a new executor is not shared").source = Some(agg.clone());
        Ok(exec)
    }

    /// The compute capability × 10 the generated PTX targets.
    pub(crate) fn arch(&self) -> u32 {
        ptx_options(&self.inner.device).arch
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

    /// Positions per tile of the look-back scan, when the aggregator has one.
    pub fn lookback_tile(&self) -> Option<usize> {
        self.inner.lookback.as_ref().map(|l| l.module.tile)
    }

    /// Threads per sequence of the lanes kernel (the vectors' length), when the
    /// aggregator has one.
    pub fn lanes(&self) -> Option<usize> {
        self.inner.kernels.scan_entries.as_ref().map(|(_, entries)| *entries)
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
    /// threads) do not apply and `prefill` is not supported yet. Kernels by the rule of
    /// [`select`](super::select).
    pub fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        self.run_with(inputs, opts, CudaKernel::Auto)
    }

    /// [`run`](Self::run) with the kernels chosen by `kernel`.
    pub fn run_with(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>, kernel: CudaKernel) -> Result<Outputs, RunError> {
        if let (Form::Chunkwise, Some(agg)) = (opts.form, &self.inner.source) {
            if kernel != CudaKernel::Auto {
                return Err(RunError::InvalidOption { option: "kernel", message: "the chunkwise form runs its own kernels; leave the kernel to auto".into() });
            }
            return crate::chunkwise::run(agg.chunkwise_program()?, inputs, opts, crate::chunkwise::Engine::Cuda(self));
        }
        let p = self.prepare(inputs, opts, kernel)?;
        let output_bufs = self.alloc_outputs(p.nseq, p.steps)?;
        let launcher = self.planned_launcher(&p, &output_bufs);
        let end = self.run_planned(&launcher, &p, opts)?;
        let outputs = self.download_outputs(&output_bufs, &inputs.batch, p.steps)?;
        let final_state = if opts.final_state { self.final_state(&launcher, end.final_state.as_ref(), p.init.as_deref(), &inputs.batch)? } else { None };
        let stats = RunStats { sequences: p.nseq, steps: p.steps, combines: launcher.combines.get(), peak_elements: end.held };
        let (form, chunk) = (p.form, p.chunk);
        let summary = RunSummary { final_state, prefill: None, stats, form, chunk };
        Ok(Outputs { batch: inputs.batch.clone(), steps: p.steps, outputs, summary })
    }

    /// Device time of runs with the inputs and outputs resident on the device: the
    /// inputs are uploaded and the outputs allocated once, then `warmup` untimed runs
    /// and `repeats` runs each timed by CUDA events around everything the run submits
    /// (its scratch allocations and launches). Nothing is copied back.
    pub fn time_resident(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>, kernel: CudaKernel, warmup: usize, repeats: usize) -> Result<ResidentTimes, RunError> {
        let p = self.prepare(inputs, opts, kernel)?;
        let output_bufs = self.alloc_outputs(p.nseq, p.steps)?;
        let launcher = self.planned_launcher(&p, &output_bufs);
        for _ in 0..warmup {
            self.run_planned(&launcher, &p, opts)?;
        }
        let mut seconds = Vec::with_capacity(repeats);
        for _ in 0..repeats.max(1) {
            let (_, s) = self.inner.device.timed(|| self.run_planned(&launcher, &p, opts))?;
            seconds.push(s);
        }
        seconds.sort_by(f64::total_cmp);
        Ok(ResidentTimes { seconds, form: p.form, chunk: p.chunk, kernel: p.chosen })
    }

    /// Checks and binds a run's options and data, chooses its form and kernels, and
    /// uploads its params, inputs and initial state.
    fn prepare(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>, kernel: CudaKernel) -> Result<Prepared, RunError> {
        let host = &self.inner.host;
        if opts.form == Form::Chunkwise {
            return Err(no_chunkwise());
        }
        host.check_options(opts)?;
        if opts.prefill {
            return Err(RunError::InvalidOption {
                option: "prefill",
                message: "the CUDA backend cannot hand a run to a stream yet; run the prompt on the CPU backend".into(),
            });
        }
        let sig = self.signature();
        let params = matched(sig, Slot::Param, &inputs.params, &[], None)?;
        let data = matched(sig, Slot::Input, &inputs.inputs, &inputs.batch, Some(inputs.steps))?;
        let init = opts.initial_state.map(|s| host.bind_state(s, &inputs.batch)).transpose()?;
        let nseq = inputs.batch.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| RunError::TooLarge {
            what: format!("the batch shape {:?}", inputs.batch),
        })?;
        let steps = inputs.steps;
        let chosen = self.choose(opts, kernel, nseq)?;
        let (form, chunk) = match (chosen, &self.inner.lookback) {
            (Chosen::Lookback, Some(lb)) => (Form::Chunked, Some(lb.module.tile)),
            _ => {
                // The lanes kernel runs D threads per chunk, the block kernel a block.
                let threads = nseq.saturating_mul(self.threads_per_chunk(chosen));
                let form = self.resolve(opts.form, threads, steps);
                (form, (form == Form::Chunked).then(|| opts.chunk.unwrap_or_else(|| auto_chunk(steps, threads))))
            }
        };
        let device = &self.inner.device;
        device.bind()?;
        let params = upload_fields(device, Slot::Param, &sig.params, &params)?;
        let inputs = upload_fields(device, Slot::Input, &sig.inputs, &data)?;
        let init_buf = init.as_deref().map(|w| upload_state(device, w)).transpose()?;
        Ok(Prepared { params, inputs, init, init_buf, nseq, steps, form, chunk, chosen })
    }

    /// The kernels a run of `nseq` sequences with these options takes: the rule of
    /// [`select`](super::select); an error when `kernel` forces kernels that do not
    /// apply.
    pub fn choose(&self, opts: &RunOptions<'_>, kernel: CudaKernel, nseq: usize) -> Result<Chosen, RunError> {
        let associative = self.signature().associative;
        let lookback_forms = &[Form::Auto, Form::Chunked][..];
        let lanes_forms = &[Form::Auto, Form::Recurrent, Form::Chunked][..];
        let block_absent = self.block_absent(opts.form);
        let (chosen, available, forms, name) = match kernel {
            CudaKernel::Generic => return Ok(Chosen::Generic),
            CudaKernel::Auto => {
                // The look-back scan for the few sequences (× entries) that one thread
                // each would leave the device idle with (its tile is fixed: no chunk
                // size given); the lanes kernel where entries scan independently; the
                // block kernels for the matrix-valued elements that remain.
                let few = |lb: &Lookback| nseq.saturating_mul(lb.module.entries) < ENOUGH_THREADS;
                let lookback = self.inner.lookback.as_ref().is_some_and(few) && opts.form == Form::Auto && opts.chunk.is_none();
                let lanes = self.inner.kernels.scan_entries.is_some() && lanes_forms.contains(&opts.form);
                return Ok(if associative && lookback {
                    Chosen::Lookback
                } else if associative && lanes {
                    Chosen::Lanes
                } else if block_absent.is_none() {
                    Chosen::Block
                } else {
                    Chosen::Generic
                });
            }
            CudaKernel::Block => {
                return match block_absent {
                    None => Ok(Chosen::Block),
                    Some(message) => Err(RunError::InvalidOption { option: "kernel", message }),
                }
            }
            CudaKernel::Lookback => (Chosen::Lookback, self.inner.lookback.is_some(), lookback_forms, "look-back scan"),
            CudaKernel::Lanes => (Chosen::Lanes, self.inner.kernels.scan_entries.is_some(), lanes_forms, "lanes kernel"),
        };
        let why = if !associative {
            format!("the {name} changes the bracketing of the tree, so it needs an associative operator")
        } else if !available {
            match chosen {
                Chosen::Lookback => {
                    "the look-back scan needs scalar element fields and input and output rows, or element fields whose entries scan independently".to_string()
                }
                _ => "the lanes kernel needs element fields and outputs of one vector length whose entries are independent".to_string(),
            }
        } else if !forms.contains(&opts.form) {
            format!("the {name} runs the forms {}", forms.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "))
        } else if chosen == Chosen::Lookback && opts.chunk.is_some() {
            "the look-back scan's tile is fixed; leave the chunk size unset".to_string()
        } else {
            return Ok(chosen);
        };
        Err(RunError::InvalidOption { option: "kernel", message: why })
    }

    /// Why the block kernel that `form` runs on is absent (`None`: present):
    /// `psm_scan_block` for an associative operator's forms but the tree,
    /// `psm_combine_block` for the tree and the counter.
    fn block_absent(&self, form: Form) -> Option<String> {
        let kernels = &self.inner.kernels;
        let kernel = if self.signature().associative && form != Form::Tree { &kernels.scan_block } else { &kernels.combine_block };
        kernel.as_ref().err().cloned()
    }

    /// Threads that run one chunk of `psm_scan` under `chosen`.
    fn threads_per_chunk(&self, chosen: Chosen) -> usize {
        match chosen {
            Chosen::Lanes => self.lanes().unwrap_or(1),
            Chosen::Block => self.inner.kernels.scan_block.as_ref().ok().map_or(1, |b| b.threads as usize),
            Chosen::Generic | Chosen::Lookback => 1,
        }
    }

    /// The launcher of a prepared run: with the lanes kernel in place of `psm_scan` when
    /// it was chosen, or the block kernels.
    fn planned_launcher<'a>(&'a self, p: &'a Prepared, outputs: &'a [DeviceBuffer]) -> Launcher<'a> {
        let mut l = self.launcher(&p.params, &p.inputs, outputs, p.nseq, p.steps);
        if p.chosen == Chosen::Lanes {
            l.lanes = self.inner.kernels.scan_entries.as_ref().map(|(f, entries)| (f, *entries));
        }
        l.block = p.chosen == Chosen::Block;
        l
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
            lanes: None,
            block: false,
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

    fn run_planned(&self, l: &Launcher<'_>, p: &Prepared, opts: &RunOptions<'_>) -> Result<FormEnd, RunError> {
        let (form, chunk, init) = (p.form, p.chunk, p.init_buf.as_ref());
        if l.steps == 0 || l.nseq == 0 {
            return Ok(FormEnd { final_state: None, held: usize::from(init.is_some()) });
        }
        let keep = opts.final_state;
        let reverse = if opts.reverse { REVERSE } else { 0 };
        let associative = self.signature().associative;
        if let (Chosen::Lookback, Some(lb)) = (p.chosen, &self.inner.lookback) {
            return lb.run(l, init, keep, reverse);
        }
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
            Form::Chunkwise => Err(no_chunkwise()),
        }
    }

    pub(crate) fn step_sizes(&self) -> StepSizes {
        let sig = self.signature();
        let bytes = |specs: &[crate::forms::FieldSpec]| specs.iter().map(|s| s.len * dtype_size(s.dtype)).collect();
        StepSizes { inputs: bytes(&sig.inputs), outputs: bytes(&sig.outputs) }
    }

    /// p_T as a named state: the form's, else (T = 0) the initial state, else the
    /// declared identity, else none.
    fn final_state(
        &self,
        l: &Launcher<'_>,
        from_form: Option<&DeviceBuffer>,
        init: Option<&[u64]>,
        batch: &[usize],
    ) -> Result<Option<crate::buffers::State>, RunError> {
        let words = self.elem() / 8;
        let mut flat = vec![0u64; l.nseq * words];
        if let Some(buf) = from_form {
            l.device.copy_to_host(buf, 0, crate::buffers::bytes_mut(&mut flat))?;
        } else if let Some(s0) = init {
            flat.copy_from_slice(s0);
        } else if l.steps > 0 && l.nseq == 0 {
            // An empty batch has a (field-less) final state whenever it ran steps.
        } else {
            let ids = l.device.alloc("the identity", flat.len() * 8, false)?;
            if !l.identity(l.nseq, &ids)? {
                return Ok(None);
            }
            l.device.copy_to_host(&ids, 0, crate::buffers::bytes_mut(&mut flat))?;
        }
        Ok(Some(self.inner.host.state_of(batch, &flat)))
    }
}

/// A run's data on the device and its plan.
struct Prepared {
    params: Vec<DeviceBuffer>,
    inputs: Vec<DeviceBuffer>,
    /// The initial state as bound on the host (flat elements) and on the device.
    init: Option<Vec<u64>>,
    init_buf: Option<DeviceBuffer>,
    nseq: usize,
    steps: usize,
    form: Form,
    chunk: Option<usize>,
    chosen: Chosen,
}

/// What [`CudaExecutor::time_resident`] measured.
#[derive(Debug, Clone)]
pub struct ResidentTimes {
    /// Device seconds of each timed run, ascending.
    pub seconds: Vec<f64>,
    /// The form that ran (`chunked` for the look-back scan, with its tile as `chunk`).
    pub form: Form,
    pub chunk: Option<usize>,
    /// The kernels that ran.
    pub kernel: Chosen,
}

impl ResidentTimes {
    /// The median of the timed runs.
    pub fn median(&self) -> f64 {
        let n = self.seconds.len();
        if n % 2 == 1 {
            self.seconds[n / 2]
        } else {
            0.5 * (self.seconds[n / 2 - 1] + self.seconds[n / 2])
        }
    }
}

/// Threads that keep the device busy (an H200 holds 132 SMs × 2048 resident threads);
/// `auto` chunks a batch into about this many (sequence, chunk) pairs.
const ENOUGH_THREADS: usize = 1 << 16;

/// The chunk size of `auto`: about `ENOUGH_THREADS` chunks over the whole batch, at
/// least 16 steps each (a chunk's steps are scanned twice).
pub fn auto_chunk(steps: usize, nseq: usize) -> usize {
    let chunks_per_seq = ENOUGH_THREADS.div_ceil(nseq.max(1)).max(1);
    steps.div_ceil(chunks_per_seq).max(16)
}
