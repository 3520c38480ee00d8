//! Which kernels run a batch on the device, and the look-back scan's launch.
//!
//! # The rule ([`CudaKernel::Auto`])
//!
//! For an associative operator (proven, verified, or `assume associative`), `auto`
//! takes, in this order:
//! 1. the **look-back scan** (`psm_lookback`, psm-codegen's `ptx::compile_lookback`:
//!    one pass over the data, fixed tiles, decoupled look-back between tiles) when the
//!    module has the kernel — element fields and input/output rows scalars, or element
//!    fields whose entries scan independently (then a thread per entry of each tile and
//!    a look-back per entry, such as diagonal affine recurrences over `[B, T, D]`) —
//!    the form asked for is `auto` with no chunk size, and the batch has fewer
//!    sequences × entries than one thread each needs to fill the device (65536); the
//!    run reports the form `chunked` with the tile as its chunk;
//! 2. the **lanes kernel** (`psm_scan_entries` of psm-codegen's module: `psm_scan` with
//!    one thread per (sequence, chunk, entry)) when its element fields and outputs share
//!    one shape with independent entries and the form is `auto` (batches that fill the
//!    device with a thread per entry), `recurrent` or `chunked` (`auto` picks between
//!    the two as for `psm_scan`, counting D threads per chunk); the chunk carries'
//!    combines then run `psm_combine_entries` (a thread per entry of each combine, bit
//!    for bit `psm_combine`'s fields);
//! 3. else the **block kernels** (below) for matrix-valued elements;
//! 4. else the **generic kernels** of the form.
//!
//! Non-associative operators take the block kernels where they exist, else the generic
//! ones (`auto` resolves as [`CudaExecutor`](super::CudaExecutor) documents: the tree).
//! Every fast kernel has passed the GPU tests (tests/cuda.rs, `check_kernel`,
//! `block_kernels`).
//!
//! [`CudaKernel::Lookback`] forces the look-back scan: an error when the operator is not
//! associative or has no such kernel, when the form is not `auto` or `chunked`, or when
//! a chunk size is given. [`CudaKernel::Lanes`] forces the lanes kernel: an error when
//! the operator is not associative or has no such kernel, or when the form is the tree
//! or the stream.
//! [`CudaKernel::Generic`] forces the generic kernels.
//!
//! **Block kernels.** For matrix-valued elements (a field of rank ≥ 2: GLA's `s[K, V]`,
//! attn_agg's `h[C, D]`, the linear-RNN family) psm-codegen's module has
//! `psm_scan_block` and `psm_combine_block` (`psm_scan` / `psm_combine` by a thread
//! block per item, the element in shared memory, each statement's entries split over
//! the block's threads; bit for bit the generic kernels' results; `psm_scan_block` two
//! blocks per item where the element splits along a part axis of the IR,
//! `psm_codegen::ptx::BlockKernel::parts`). `auto` takes them
//! whenever the kernel the form runs on exists — `psm_scan_block` for the recurrent and
//! chunked forms and the stream of an associative operator (its chunk aggregates'
//! sweep takes `psm_combine_block` too), `psm_combine_block` for the tree and the
//! stream's counter — and the generic kernels otherwise (the module says why:
//! [`psm_codegen::ptx::BlockKernels`], e.g. a block's shared memory past the target's
//! maximum; or the driver refused that much shared memory on this device, which leaves
//! the other kernels loaded). `auto`'s chunk for them counts a block's threads per chunk.
//! [`CudaKernel::Block`] forces them: an error, with that reason, when the form's
//! kernel is absent. The lift and readout of the tree stay one thread per step.

use std::sync::OnceLock;

use psm_codegen::ptx::{Kernel, LookbackModule, HAS_STATE, NO_STATE_OUT};

use super::device::{Device, DeviceBuffer, Function};
use super::forms::FormEnd;
use super::launch::{check_params, Launcher};
use crate::error::RunError;

/// The kernels a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CudaKernel {
    /// The rule of this module.
    #[default]
    Auto,
    /// The generic kernels of the form (`psm_scan`, `psm_lift`, `psm_combine`,
    /// `psm_readout`).
    Generic,
    /// The single-pass look-back scan.
    Lookback,
    /// The channel-parallel scan (`psm_scan_entries`).
    Lanes,
    /// The block-cooperative kernels (`psm_scan_block`, `psm_combine_block`).
    Block,
}

/// The kernels a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Generic,
    Lookback,
    Lanes,
    Block,
}

impl CudaKernel {
    pub fn name(self) -> &'static str {
        match self {
            CudaKernel::Auto => "auto",
            CudaKernel::Generic => "generic",
            CudaKernel::Lookback => "lookback",
            CudaKernel::Lanes => "lanes",
            CudaKernel::Block => "block",
        }
    }
}

/// The kernel of a look-back module, loaded on first use (a run that does not
/// take it never loads it).
struct Lazy {
    aggregator: String,
    kernel: Kernel,
    /// Params, inputs and outputs, and the kernel's own arguments.
    counts: [usize; 3],
    own: usize,
    function: OnceLock<Result<Function, RunError>>,
}

impl Lazy {
    fn function(&self, device: &Device, module: &psm_codegen::ptx::PtxModule) -> Result<&Function, RunError> {
        match self.function.get_or_init(|| load(device, &self.aggregator, module, self.kernel, self.counts, self.own)) {
            Ok(f) => Ok(f),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The look-back kernel of one aggregator.
pub(crate) struct Lookback {
    pub module: LookbackModule,
    lazy: Lazy,
}

/// Loads the only kernel of `module` after checking that it takes the params, inputs
/// and outputs (`counts`) and `own` arguments of its launch.
fn load(device: &Device, aggregator: &str, module: &psm_codegen::ptx::PtxModule, kernel: Kernel, counts: [usize; 3], own: usize) -> Result<Function, RunError> {
    check_params(aggregator, module, kernel, counts.iter().sum::<usize>() + own, false)?;
    device.module(aggregator, &module.text)?.function(kernel.name())
}

/// State flags of a launch from the run's options.
fn state_flags(init: Option<&DeviceBuffer>, state: Option<&DeviceBuffer>, reverse: u32) -> u32 {
    let mut flags = reverse;
    if init.is_some() {
        flags |= HAS_STATE;
    }
    if state.is_none() {
        flags |= NO_STATE_OUT;
    }
    flags
}

impl Lookback {
    /// The kernel of `module`, loaded (and its parameters checked against those
    /// [`Lookback::run`] passes) on first use.
    pub fn new(aggregator: &str, module: LookbackModule, counts: [usize; 3]) -> Lookback {
        let lazy = Lazy { aggregator: aggregator.to_string(), kernel: Kernel::Lookback, counts, own: 6, function: OnceLock::new() };
        Lookback { module, lazy }
    }

    /// One launch over every sequence of `l` (at least one step): outputs, and p_T of
    /// every sequence when `keep_state`. Counts two combines per step (the fold and the
    /// re-scan of each position), not the O(log) warp, block and look-back combines per
    /// tile.
    pub fn run(&self, l: &Launcher<'_>, init: Option<&DeviceBuffer>, keep_state: bool, reverse: u32) -> Result<FormEnd, RunError> {
        let too_large = || RunError::TooLarge { what: format!("a look-back scan of {} sequences of {} steps", l.nseq, l.steps) };
        let (blocks, status_bytes) = self.module.launch(l.nseq, l.steps).ok_or_else(too_large)?;
        let status = l.device.alloc("the look-back status", status_bytes, true)?;
        let state = keep_state.then(|| l.device.alloc("the final state", l.nseq * l.elem, false)).transpose()?;
        let flags = state_flags(init, state.as_ref(), reverse);
        l.count(2 * (l.nseq * l.steps) as u64);
        let mut a = l.args(true, true);
        a.u64(l.nseq as u64).u64(l.steps as u64);
        a.u64(init.map_or(0, DeviceBuffer::ptr)).u64(state.as_ref().map_or(0, DeviceBuffer::ptr)).ptr(&status).u32(flags);
        l.device.launch_blocks(self.lazy.function(l.device, &self.module.module)?, blocks as u64, self.module.block, &a)?;
        Ok(FormEnd { final_state: state, held: 1 })
    }
}
