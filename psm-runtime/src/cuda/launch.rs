//! Typed launches of the five kernels of psm-codegen's CUDA ABI
//! (`psm_codegen::ptx`'s module doc): each method passes the params, the inputs and
//! outputs it reads or writes, then its own arguments, in the ABI's order.

use std::cell::Cell;

use psm_codegen::ptx::{Kernel, PtxModule};

use super::device::{Args, Device, DeviceBuffer, Function};
use crate::error::RunError;

/// The kernels of one aggregator, loaded on one device.
pub(crate) struct Kernels {
    pub scan: Function,
    pub lift: Function,
    pub combine: Function,
    pub readout: Function,
    /// Present when the aggregator declares an identity.
    pub identity: Option<Function>,
    /// `psm_scan_entries` and its threads per (sequence, chunk), when the module has it.
    pub scan_entries: Option<(Function, usize)>,
    /// `psm_combine_entries` (one thread per entry of each combine: the same entries as
    /// `psm_scan_entries`'s), when the module has both.
    pub combine_entries: Option<Function>,
    /// `psm_scan_block` and `psm_combine_block`, or why they cannot run: the module
    /// lacks them (its reason), or the driver refused their shared memory.
    pub scan_block: Result<BlockKernel, String>,
    pub combine_block: Result<BlockKernel, String>,
}

/// A block-cooperative kernel ready to launch: its block size, dynamic shared memory
/// and blocks per item.
pub(crate) struct BlockKernel {
    pub function: Function,
    pub threads: u32,
    pub shared: u32,
    pub parts: u32,
}

/// Threads per block of the block kernels, at most. Chosen on the H200 with GLA at
/// K = V = 128 (16384 entries per statement of its state) before the kernels split
/// elements across blocks and dropped 64-bit division (BENCHMARKS.md, "GPU decode
/// step"): a decode step of 64 sequences took 48.5 µs with 512 threads, 47.0 µs with
/// 1024; the chunked form over [4, 4096] 10.9 ms with 512 threads (`auto`'s chunk 128:
/// 128 blocks), 21.1 ms with 1024 (chunk 256: 64 blocks, half the SMs idle). Not
/// re-measured since.
const BLOCK_THREADS: u32 = 512;

impl BlockKernel {
    /// A block as wide as the kernel's widest statement (whole warps), as the function
    /// allows, at most [`BLOCK_THREADS`].
    fn load(function: Function, kernel: &psm_codegen::ptx::BlockKernel) -> Result<BlockKernel, RunError> {
        let shared = kernel.shared_bytes;
        let most = function.allow_shared(shared)?;
        let wanted = u32::try_from(kernel.widest.div_ceil(32) * 32).unwrap_or(BLOCK_THREADS);
        let threads = (wanted.min(BLOCK_THREADS).min(most) / 32 * 32).max(32);
        let too_large = |what: &str| RunError::TooLarge { what: format!("the {what} of `{}`", function.name) };
        let shared = u32::try_from(shared).map_err(|_| too_large("shared memory"))?;
        let parts = u32::try_from(kernel.parts).map_err(|_| too_large("blocks per item"))?;
        Ok(BlockKernel { function, threads, shared, parts })
    }

    /// Launches the kernel's blocks per item (its parts, `%ctaid.y`) for every item
    /// (`%ctaid.x`).
    fn launch(&self, device: &Device, items: u64, args: &Args) -> Result<(), RunError> {
        device.launch_shared(&self.function, (items, self.parts), self.threads, self.shared, args)
    }
}

/// That `kernel` of `ptx` takes the `expected` number of parameters a launch passes (or,
/// when `optional`, is absent): a mismatch would corrupt memory, not fail.
pub(crate) fn check_params(aggregator: &str, ptx: &PtxModule, kernel: Kernel, expected: usize, optional: bool) -> Result<(), RunError> {
    let found = ptx.kernel(kernel).map(|k| k.params.len());
    if found.is_some_and(|n| n != expected) || (found.is_none() && !optional) {
        return Err(RunError::Codegen {
            aggregator: aggregator.to_string(),
            message: format!("kernel `{}` takes {found:?} parameters; the runtime passes {expected}", kernel.name()),
        });
    }
    Ok(())
}

impl Kernels {
    /// Loads the module's kernels after checking that each takes the parameters the
    /// launches below pass (a mismatch would corrupt memory, not fail).
    pub fn load(device: &Device, aggregator: &str, ptx: &PtxModule, counts: [usize; 3]) -> Result<Kernels, RunError> {
        let [params, inputs, outputs] = counts;
        for (kernel, own, reads, writes) in [
            (Kernel::Scan, 6, true, true),
            (Kernel::Lift, 4, true, false),
            (Kernel::Combine, 12, false, false),
            (Kernel::Readout, 4, true, true),
            (Kernel::Identity, 3, false, false),
            (Kernel::ScanEntries, 6, true, true),
            (Kernel::CombineEntries, 12, false, false),
            (Kernel::ScanBlock, 6, true, true),
            (Kernel::CombineBlock, 12, false, false),
        ] {
            let expected = params + if reads { inputs } else { 0 } + if writes { outputs } else { 0 } + own;
            let optional = matches!(kernel, Kernel::Identity | Kernel::ScanEntries | Kernel::CombineEntries | Kernel::ScanBlock | Kernel::CombineBlock);
            check_params(aggregator, ptx, kernel, expected, optional)?;
        }
        let module = device.module(aggregator, &ptx.text)?;
        let get = |k: Kernel| module.function(k.name());
        // A device whose blocks hold less shared memory than the PTX target's refuses
        // the kernel, not the module: the other kernels still run.
        let block_kernel = |k: Kernel, block: &Result<psm_codegen::ptx::BlockKernel, String>| match (ptx.kernel(k), block) {
            (Some(_), Ok(block)) => Ok(BlockKernel::load(get(k)?, block).map_err(|e| e.to_string())),
            (_, Err(why)) => Ok(Err(why.clone())),
            (None, Ok(_)) => Ok(Err(format!("the module has no `{}`", k.name()))),
        };
        Ok(Kernels {
            scan: get(Kernel::Scan)?,
            lift: get(Kernel::Lift)?,
            combine: get(Kernel::Combine)?,
            readout: get(Kernel::Readout)?,
            identity: ptx.kernel(Kernel::Identity).map(|_| get(Kernel::Identity)).transpose()?,
            scan_entries: match (ptx.kernel(Kernel::ScanEntries), ptx.entries) {
                (Some(_), Some(entries)) => Some((get(Kernel::ScanEntries)?, entries)),
                _ => None,
            },
            combine_entries: match (ptx.kernel(Kernel::CombineEntries), ptx.entries) {
                (Some(_), Some(_)) => Some(get(Kernel::CombineEntries)?),
                _ => None,
            },
            scan_block: block_kernel(Kernel::ScanBlock, &ptx.block.scan)?,
            combine_block: block_kernel(Kernel::CombineBlock, &ptx.block.combine)?,
        })
    }
}

/// One operand of `psm_combine`: a base address and byte strides per row and column.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    pub base: u64,
    pub row: i64,
    pub col: i64,
}

impl Operand {
    /// Element `first` of an element array laid out `[rows, per_row]`, stepping `step`
    /// elements per column.
    pub fn of(buf: &DeviceBuffer, elem: usize, per_row: usize, first: usize, step: usize) -> Operand {
        Operand { base: buf.ptr() + (first * elem) as u64, row: (per_row * elem) as i64, col: (step * elem) as i64 }
    }
}

/// Launches over one batch of `nseq` sequences of `steps` steps: the device buffers of
/// the params, inputs (`[nseq, steps, len]` per field) and outputs (likewise), and the
/// count of combines launched (as [`RunStats::combines`](crate::RunStats) counts them).
pub(crate) struct Launcher<'a> {
    pub device: &'a Device,
    pub kernels: &'a Kernels,
    pub params: &'a [DeviceBuffer],
    pub inputs: &'a [DeviceBuffer],
    pub outputs: &'a [DeviceBuffer],
    pub nseq: usize,
    pub steps: usize,
    /// Bytes of one element.
    pub elem: usize,
    pub combines: Cell<u64>,
    /// `psm_scan_entries` (`psm_scan`'s ABI, E threads per chunk) and E: `scan`
    /// launches it instead of `psm_scan` when present, and `combine` launches
    /// `psm_combine_entries` (E threads per combine) instead of `psm_combine`.
    pub lanes: Option<(&'a Function, usize)>,
    /// `scan` and `combine` launch the block kernels (`psm_scan_block`,
    /// `psm_combine_block`) where the module has them.
    pub block: bool,
}

impl Launcher<'_> {
    pub(super) fn args(&self, inputs: bool, outputs: bool) -> Args {
        let mut a = Args::new();
        a.ptrs(self.params);
        if inputs {
            a.ptrs(self.inputs);
        }
        if outputs {
            a.ptrs(self.outputs);
        }
        a
    }

    pub(super) fn count(&self, n: u64) {
        self.combines.set(self.combines.get() + n);
    }

    /// `psm_scan` over chunks of `chunk` steps (one thread per sequence and chunk).
    pub fn scan(&self, chunk: usize, state_in: Option<&DeviceBuffer>, state_out: Option<&DeviceBuffer>, flags: u32) -> Result<(), RunError> {
        use psm_codegen::ptx::{CARRY_IN, HAS_STATE};
        let chunk = chunk.max(1);
        let nchunks = self.steps.div_ceil(chunk);
        // Combines: a chunk of n steps folds n − 1 times, plus once more when it starts
        // from a prefix.
        let mut per_seq = (self.steps - nchunks) as u64;
        if flags & CARRY_IN != 0 {
            per_seq += nchunks.saturating_sub(1) as u64;
        }
        if flags & HAS_STATE != 0 && nchunks > 0 {
            per_seq += 1;
        }
        self.count(per_seq * self.nseq as u64);
        let mut a = self.args(true, true);
        a.u64(self.nseq as u64).u64(self.steps as u64).u64(chunk as u64);
        a.u64(state_in.map_or(0, DeviceBuffer::ptr)).u64(state_out.map_or(0, DeviceBuffer::ptr)).u32(flags);
        let items = (self.nseq * nchunks) as u64;
        match (self.lanes, self.block_kernel(&self.kernels.scan_block)) {
            (Some((f, d)), _) => self.device.launch(f, items * d as u64, &a),
            (None, Some(b)) => b.launch(self.device, items, &a),
            (None, None) => self.device.launch(&self.kernels.scan, items, &a),
        }
    }

    /// A block kernel of the module, when this launcher takes them.
    fn block_kernel<'k>(&self, kernel: &'k Result<BlockKernel, String>) -> Option<&'k BlockKernel> {
        kernel.as_ref().ok().filter(|_| self.block)
    }

    /// `psm_lift` of every step into `leaves` (`[nseq, steps]` elements).
    pub fn lift(&self, leaves: &DeviceBuffer, flags: u32) -> Result<(), RunError> {
        let mut a = self.args(true, false);
        a.u64(self.nseq as u64).u64(self.steps as u64).ptr(leaves).u32(flags);
        self.device.launch(&self.kernels.lift, (self.nseq * self.steps) as u64, &a)
    }

    /// `psm_combine` over `rows × cols` operand pairs. With `LEFT_IDENTITY` or
    /// `RIGHT_IDENTITY` it copies (and counts no combine).
    pub fn combine(&self, rows: usize, cols: usize, out: Operand, left: Operand, right: Operand, flags: u32) -> Result<(), RunError> {
        use psm_codegen::ptx::{LEFT_IDENTITY, RIGHT_IDENTITY};
        if flags & (LEFT_IDENTITY | RIGHT_IDENTITY) == 0 {
            self.count((rows * cols) as u64);
        }
        let mut a = self.args(false, false);
        a.u64(rows as u64).u64(cols as u64);
        for op in [out, left, right] {
            a.u64(op.base).u64(op.row as u64).u64(op.col as u64);
        }
        a.u32(flags);
        let pairs = (rows * cols) as u64;
        // Under the lanes kernel the elements are vectors of E independent entries: a
        // thread per entry, not one walking all E (a sweep's top levels have a few
        // pairs per sequence).
        let entries = self.lanes.and_then(|(_, e)| self.kernels.combine_entries.as_ref().map(|f| (f, e)));
        match (self.block_kernel(&self.kernels.combine_block), entries) {
            (Some(b), _) => b.launch(self.device, pairs, &a),
            (None, Some((f, e))) => self.device.launch(f, pairs * e as u64, &a),
            (None, None) => self.device.launch(&self.kernels.combine, pairs, &a),
        }
    }

    /// `psm_readout` of every step from `prefixes` (`[nseq, steps + 1]` elements).
    pub fn readout(&self, prefixes: &DeviceBuffer, flags: u32) -> Result<(), RunError> {
        let mut a = self.args(true, true);
        a.u64(self.nseq as u64).u64(self.steps as u64).ptr(prefixes).u32(flags);
        self.device.launch(&self.kernels.readout, (self.nseq * self.steps) as u64, &a)
    }

    /// The declared identity into `count` consecutive elements of `out`; false (and
    /// nothing written) when none is declared.
    pub fn identity(&self, count: usize, out: &DeviceBuffer) -> Result<bool, RunError> {
        let Some(f) = &self.kernels.identity else { return Ok(false) };
        let mut a = self.args(false, false);
        a.u64(count as u64).ptr(out).u64(self.elem as u64);
        self.device.launch(f, count as u64, &a)?;
        Ok(true)
    }
}
