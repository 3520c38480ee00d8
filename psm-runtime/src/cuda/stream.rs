//! [`DeviceStream`]: decoding on the device, every sequence of a batch one push at a
//! time, the state resident on the device between pushes.
//!
//! Associative operators keep one running element per sequence and run the decode
//! step as `psm_scan` over the pushed steps from the state into a second buffer, then
//! swap the two (the block scan of a split element reads every whole field in each of
//! a sequence's blocks, so no block may overwrite the state another still reads);
//! non-associative ones keep the binary counter of the stream form (`forms::Counter`),
//! so a pushed step gives exactly the tree's outputs on the device. Matrix-valued
//! elements take the block kernels (`psm_scan_block`, `psm_combine_block`: the rule of
//! [`select`](super::select)), so one decode step of a batch is one launch of a block
//! per sequence, or of two where the element splits (`psm_codegen::ptx::BlockKernel::parts`).
//!
//! [`DeviceStream::push`] copies the step's inputs to the device and its outputs back;
//! [`DeviceStream::push_resident`] runs on inputs already on the device
//! ([`DeviceStream::upload`]) into outputs left there ([`DeviceStream::output_buffers`],
//! copied back on demand by [`DeviceStream::download`]): no host copy, only the
//! launches of the step (one for an associative operator).

use super::device::DeviceBuffer;
use super::exec::{matched, upload_fields, upload_state, CudaExecutor};
use super::forms::Counter;
use super::select::{Chosen, CudaKernel};
use crate::buffers::{Data, Inputs, State, Tensor};
use crate::error::{RunError, Slot};
use crate::forms::stream::check_push;
use crate::forms::{product, Form, Outputs, RunOptions, RunStats, RunSummary, StreamStats};

enum Held {
    /// The running prefix of every sequence (`None` before the first step without an
    /// initial state), and the buffer the next push writes its new prefix into: a
    /// push never updates the state in place, since `psm_scan_block`'s blocks of one
    /// sequence each read the whole fields they do not split.
    Running { state: Option<DeviceBuffer>, spare: Option<DeviceBuffer> },
    Counter(Counter),
}

/// A stream on a CUDA device; see the module doc.
pub struct DeviceStream {
    exec: CudaExecutor,
    params: Vec<DeviceBuffer>,
    batch: Vec<usize>,
    nseq: usize,
    held: Held,
    /// Pushes launch the block kernels.
    block: bool,
    position: u64,
    stats: StreamStats,
}

/// Steps of every sequence of a stream's batch on the device: one buffer per input field
/// (`[nseq, steps, len]`, from [`DeviceStream::upload`]) or per output field (from
/// [`DeviceStream::output_buffers`]).
pub struct DeviceSteps {
    bufs: Vec<DeviceBuffer>,
    slot: Slot,
    nseq: usize,
    steps: usize,
}

impl std::fmt::Debug for DeviceSteps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSteps").field("slot", &self.slot).field("nseq", &self.nseq).field("steps", &self.steps).finish()
    }
}

impl DeviceSteps {
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// That these are `slot` buffers of `nseq` sequences.
    fn check(&self, slot: Slot, nseq: usize) -> Result<(), RunError> {
        if self.slot != slot {
            let message = format!("{} buffers were given where {} buffers belong", self.slot.name(), slot.name());
            return Err(RunError::InvalidOption { option: "device buffers", message });
        }
        if self.nseq != nseq {
            return Err(RunError::BatchMismatch { what: format!("the device {} buffers", slot.name()), expected: vec![nseq], found: vec![self.nseq] });
        }
        Ok(())
    }
}

impl std::fmt::Debug for DeviceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStream").field("batch", &self.batch).field("position", &self.position).finish_non_exhaustive()
    }
}

impl CudaExecutor {
    /// Opens a stream over `batch` sequences with the given params (copied to the device
    /// once), from an initial state or from nothing; the same checks as
    /// [`Executor::stream`](crate::Executor::stream).
    pub fn stream(&self, batch: &[usize], params: &[(String, Data<'_>)], initial_state: Option<&State>) -> Result<DeviceStream, RunError> {
        self.stream_with(batch, params, initial_state, CudaKernel::Auto)
    }

    /// [`stream`](Self::stream) with the kernels chosen by `kernel` (as for a run of the
    /// stream form).
    pub fn stream_with(&self, batch: &[usize], params: &[(String, Data<'_>)], initial_state: Option<&State>, kernel: CudaKernel) -> Result<DeviceStream, RunError> {
        let nseq = product(batch, || format!("the batch shape {batch:?}"))?;
        let block = self.choose(&RunOptions { form: Form::Stream, ..Default::default() }, kernel, nseq)? == Chosen::Block;
        let sig = self.signature();
        let param_data = matched(sig, Slot::Param, params, &[], None)?;
        let init = initial_state.map(|s| self.host().bind_state(s, batch)).transpose()?;
        let device = self.device();
        device.bind()?;
        let params = upload_fields(device, Slot::Param, &sig.params, &param_data)?;
        let base = init.as_deref().map(|w| upload_state(device, w)).transpose()?;
        let held = if sig.associative { Held::Running { state: base, spare: None } } else { Held::Counter(Counter::new(base)) };
        let mut s = DeviceStream { exec: self.clone(), params, batch: batch.to_vec(), nseq, held, block, position: 0, stats: StreamStats::default() };
        s.stats.peak_elements = s.elements();
        Ok(s)
    }
}

impl DeviceStream {
    pub fn batch(&self) -> &[usize] {
        &self.batch
    }

    /// Steps pushed so far: the index of the next step.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    fn elements(&self) -> usize {
        match &self.held {
            Held::Running { state, .. } => usize::from(state.is_some()),
            Held::Counter(c) => c.peak,
        }
    }

    fn prefix_buffer(&self) -> Option<&DeviceBuffer> {
        match &self.held {
            Held::Running { state, .. } => state.as_ref(),
            Held::Counter(c) => c.prefix(),
        }
    }

    /// The exclusive prefix p_t of every sequence (the state before the next push),
    /// copied to the host; `None` before the first step without an initial state.
    pub fn prefix(&self) -> Result<Option<State>, RunError> {
        let Some(buf) = self.prefix_buffer() else { return Ok(None) };
        let device = self.exec.device();
        device.bind()?;
        let mut flat = vec![0u64; self.nseq * self.exec.elem() / 8];
        device.copy_to_host(buf, 0, crate::buffers::bytes_mut(&mut flat))?;
        Ok(Some(self.exec.host().state_of(&self.batch, &flat)))
    }

    /// Pushes the next `inputs.steps()` steps (usually 1) of every sequence, shaped
    /// `[batch..., T, field dims...]`, and returns their outputs.
    pub fn push(&mut self, inputs: &Inputs<'_>) -> Result<Outputs, RunError> {
        let staged = self.upload(inputs)?;
        let mut outputs = self.output_buffers(staged.steps)?;
        let stats = self.push_resident(&staged, &mut outputs)?;
        let outputs = self.download(&outputs)?;
        let summary = RunSummary { final_state: None, prefill: None, stats, form: Form::Stream, chunk: None };
        Ok(Outputs { batch: self.batch.clone(), steps: staged.steps, outputs, summary })
    }

    /// Steps of inputs (`[batch..., T, field dims...]`, the checks of
    /// [`push`](Self::push)) copied to the device for [`push_resident`](Self::push_resident).
    pub fn upload(&self, inputs: &Inputs<'_>) -> Result<DeviceSteps, RunError> {
        check_push(&self.batch, inputs)?;
        let sig = self.exec.signature();
        let data = matched(sig, Slot::Input, &inputs.inputs, &inputs.batch, Some(inputs.steps))?;
        let device = self.exec.device();
        device.bind()?;
        let bufs = upload_fields(device, Slot::Input, &sig.inputs, &data)?;
        Ok(DeviceSteps { bufs, slot: Slot::Input, nseq: self.nseq, steps: inputs.steps })
    }

    /// Device buffers for the outputs of `steps` steps of every sequence.
    pub fn output_buffers(&self, steps: usize) -> Result<DeviceSteps, RunError> {
        self.exec.device().bind()?;
        let bufs = self.exec.alloc_outputs(self.nseq, steps)?;
        Ok(DeviceSteps { bufs, slot: Slot::Output, nseq: self.nseq, steps })
    }

    /// Pushes the steps of `inputs` (on the device) and leaves their outputs in
    /// `outputs` (on the device, as many steps): only the step's launches, no copy
    /// between host and device. Returns the push's statistics.
    pub fn push_resident(&mut self, inputs: &DeviceSteps, outputs: &mut DeviceSteps) -> Result<RunStats, RunError> {
        inputs.check(Slot::Input, self.nseq)?;
        outputs.check(Slot::Output, self.nseq)?;
        if outputs.steps != inputs.steps {
            let message = format!("output buffers of {} steps for a push of {} steps", outputs.steps, inputs.steps);
            return Err(RunError::InvalidOption { option: "device buffers", message });
        }
        let exec = self.exec.clone();
        let (nseq, steps) = (self.nseq, inputs.steps);
        let device = exec.device();
        device.bind()?;
        let mut l = exec.launcher(&self.params, &inputs.bufs, &outputs.bufs, nseq, steps);
        l.block = self.block;
        if steps > 0 && nseq > 0 {
            match &mut self.held {
                Held::Running { state, spare } => {
                    use psm_codegen::ptx::{HAS_STATE, WRITE_OUTPUTS};
                    let flags = WRITE_OUTPUTS | if state.is_some() { HAS_STATE } else { 0 };
                    let next = match spare.take() {
                        Some(b) => b,
                        None => device.alloc("the stream's state", nseq * exec.elem(), false)?,
                    };
                    l.scan(steps, state.as_ref(), Some(&next), flags)?;
                    *spare = state.replace(next);
                }
                Held::Counter(c) => c.run_steps(&l, &exec.step_sizes(), exec.signature().readout, false)?,
            }
        }
        let combines = l.combines.get();
        self.position += steps as u64;
        self.stats.steps += steps as u64;
        self.stats.combines += combines / nseq.max(1) as u64;
        self.stats.peak_elements = self.stats.peak_elements.max(self.elements());
        Ok(RunStats { sequences: nseq, steps, combines, peak_elements: self.stats.peak_elements })
    }

    /// Output buffers of a push copied back as named tensors `[batch..., T, dims...]`.
    pub fn download(&self, outputs: &DeviceSteps) -> Result<Vec<Tensor>, RunError> {
        outputs.check(Slot::Output, self.nseq)?;
        self.exec.device().bind()?;
        self.exec.download_outputs(&outputs.bufs, &self.batch, outputs.steps)
    }
}
