//! Which kernels run a batch on the device, and the look-back scan's launch.
//!
//! # The rule ([`CudaKernel::Auto`])
//!
//! Today `auto` takes the **generic kernels** of the form (`auto` resolves as
//! [`CudaExecutor`](super::CudaExecutor) documents: the tree for non-associative
//! operators; for associative ones recurrent when one thread per sequence fills the
//! device, else chunked). The **look-back scan** (`psm_lookback`, psm-codegen's
//! `ptx::compile_lookback`: one pass over the data, tiles of 2048 positions, decoupled
//! look-back between tiles) is assembled by ptxas 13.0 for every eligible library
//! operator but has not yet run on a GPU, so it is only taken when forced. Once the GPU
//! tests (tests/cuda.rs, `check_lookback`) pass, the intended rule is: the look-back
//! scan when the operator is associative (proven, verified, or `assume associative`),
//! its element fields and input/output rows are scalars (the module has the kernel),
//! the form asked for is `auto`, and the batch has fewer sequences than one thread per
//! sequence needs to fill the device (65536).
//!
//! [`CudaKernel::Lookback`] forces the look-back scan: an error when the operator is not
//! associative or has no such kernel, when the form is not `auto` or `chunked`, or when
//! a chunk size is given; the run reports the form `chunked` with the tile as its chunk.
//! [`CudaKernel::Lanes`] forces the channel-parallel kernel (`psm_scan_entries` of
//! psm-codegen's module: `psm_scan` with one thread per (sequence, chunk, entry), for
//! associative operators whose element fields and outputs share one shape with
//! independent entries, such as diagonal affine recurrences over `[B, T, D]`) in
//! the recurrent and chunked forms (`auto` picks between them as for `psm_scan`,
//! counting D threads per chunk): an error when the operator is not associative or has
//! no such kernel, or when the form is the tree or the stream. The kernel itself has
//! run on the GPU (psm-codegen's tests/ptx_gpu.rs: bit for bit `psm_scan`), but not yet
//! through this runtime path, so it too is forced-only; the intended rule then is to
//! take it in `auto` for such operators.
//! [`CudaKernel::Generic`] forces the generic kernels.
//!
//! **Block kernels.** For matrix-valued elements (a field of rank ≥ 2: GLA's `s[K, V]`,
//! attn_agg's `h[C, D]`, the linear-RNN family) psm-codegen's module has
//! `psm_scan_block` and `psm_combine_block` (`psm_scan` / `psm_combine` by a thread
//! block per item, the element in shared memory, each statement's entries split over
//! the block's threads; bit for bit the generic kernels' results). `auto` takes them
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

use psm_codegen::ptx::{Kernel, LookbackModule, HAS_STATE, LOOKBACK_BLOCK, NO_STATE_OUT};

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
        let tiles = l.steps.div_ceil(self.module.tile).checked_mul(l.nseq).ok_or_else(too_large)?;
        let status = l.device.alloc("the look-back status", self.module.status_bytes(tiles).ok_or_else(too_large)?, true)?;
        let state = keep_state.then(|| l.device.alloc("the final state", l.nseq * l.elem, false)).transpose()?;
        let flags = state_flags(init, state.as_ref(), reverse);
        l.count(2 * (l.nseq * l.steps) as u64);
        let mut a = l.args(true, true);
        a.u64(l.nseq as u64).u64(l.steps as u64);
        a.u64(init.map_or(0, DeviceBuffer::ptr)).u64(state.as_ref().map_or(0, DeviceBuffer::ptr)).ptr(&status).u32(flags);
        l.device.launch_blocks(self.lazy.function(l.device, &self.module.module)?, tiles as u64, LOOKBACK_BLOCK, &a)?;
        Ok(FormEnd { final_state: state, held: 1 })
    }
}
