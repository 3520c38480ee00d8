//! [`DeviceStream`]: decoding on the device, every sequence of a batch one push at a
//! time, the state resident on the device between pushes.
//!
//! Associative operators keep one running element per sequence and run the decode
//! step as `psm_scan` over the pushed steps with the state updated in place;
//! non-associative ones keep the binary counter of the stream form (`forms::Counter`),
//! so a pushed step gives exactly the tree's outputs on the device.

use super::device::DeviceBuffer;
use super::exec::{matched, upload_fields, upload_state, CudaExecutor};
use super::forms::Counter;
use crate::buffers::{Data, Inputs, State};
use crate::error::{RunError, Slot};
use crate::forms::stream::check_push;
use crate::forms::{product, Form, Outputs, RunStats, RunSummary, StreamStats};

enum Held {
    /// The running prefix of every sequence (`None` before the first step without an
    /// initial state).
    Running(Option<DeviceBuffer>),
    Counter(Counter),
}

/// A stream on a CUDA device; see the module doc.
pub struct DeviceStream {
    exec: CudaExecutor,
    params: Vec<DeviceBuffer>,
    batch: Vec<usize>,
    nseq: usize,
    held: Held,
    position: u64,
    stats: StreamStats,
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
        let sig = self.signature();
        let param_data = matched(sig, Slot::Param, params, &[], None)?;
        let nseq = product(batch, || format!("the batch shape {batch:?}"))?;
        let init = initial_state.map(|s| self.host().bind_state(s, batch)).transpose()?;
        let device = self.device();
        device.bind()?;
        let params = upload_fields(device, Slot::Param, &sig.params, &param_data)?;
        let base = init.as_deref().map(|w| upload_state(device, w)).transpose()?;
        let held = if sig.associative { Held::Running(base) } else { Held::Counter(Counter::new(base)) };
        let mut s = DeviceStream { exec: self.clone(), params, batch: batch.to_vec(), nseq, held, position: 0, stats: StreamStats::default() };
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
            Held::Running(s) => usize::from(s.is_some()),
            Held::Counter(c) => c.peak,
        }
    }

    fn prefix_buffer(&self) -> Option<&DeviceBuffer> {
        match &self.held {
            Held::Running(s) => s.as_ref(),
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
        check_push(&self.batch, inputs)?;
        let exec = self.exec.clone();
        let sig = exec.signature();
        let data = matched(sig, Slot::Input, &inputs.inputs, &inputs.batch, Some(inputs.steps))?;
        let (nseq, steps) = (self.nseq, inputs.steps);
        let device = exec.device();
        device.bind()?;
        let input_bufs = upload_fields(device, Slot::Input, &sig.inputs, &data)?;
        let output_bufs = exec.alloc_outputs(nseq, steps)?;
        let l = exec.launcher(&self.params, &input_bufs, &output_bufs, nseq, steps);
        if steps > 0 && nseq > 0 {
            match &mut self.held {
                Held::Running(state) => {
                    use psm_codegen::ptx::{HAS_STATE, WRITE_OUTPUTS};
                    let flags = WRITE_OUTPUTS | if state.is_some() { HAS_STATE } else { 0 };
                    let buf = match state.take() {
                        Some(b) => b,
                        None => device.alloc("the stream's state", nseq * exec.elem(), false)?,
                    };
                    // The state is read before it is written, in place.
                    l.scan(steps, Some(&buf), Some(&buf), flags)?;
                    *state = Some(buf);
                }
                Held::Counter(c) => c.run_steps(&l, &exec.step_sizes(), sig.readout, false)?,
            }
        }
        let outputs = exec.download_outputs(&output_bufs, &self.batch, steps)?;
        let combines = l.combines.get();
        self.position += steps as u64;
        self.stats.steps += steps as u64;
        self.stats.combines += combines / nseq.max(1) as u64;
        self.stats.peak_elements = self.stats.peak_elements.max(self.elements());
        let stats = RunStats { sequences: nseq, steps, combines, peak_elements: self.stats.peak_elements };
        let summary = RunSummary { final_state: None, prefill: None, stats, form: Form::Stream, chunk: None };
        Ok(Outputs { batch: self.batch.clone(), steps, outputs, summary })
    }
}
