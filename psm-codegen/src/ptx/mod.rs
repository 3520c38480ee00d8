//! PTX backend: one PTX module per aggregator ([`compile`] → [`PtxModule`]), for NVIDIA
//! GPUs of compute capability 7.0 and later (`sm_90` by default), loaded and launched by
//! psm-runtime's CUDA executor. `psmc emit --target ptx` prints [`PtxModule::text`].
//!
//! # The CUDA kernel ABI
//!
//! **Module.** `.version` is the lowest PTX ISA that the target needs (7.8 for
//! `sm_90`, accepted by every CUDA 12 and 13 driver; 7.1 for bf16 tensors on `sm_80`,
//! which need `sm_80` or later), `.address_size 64`. Kernel names
//! are fixed ([`Kernel::name`]): `psm_scan`, `psm_lift`, `psm_combine`, `psm_readout`,
//! `psm_identity` when the aggregator declares an identity, `psm_scan_entries` /
//! `psm_combine_entries` where its entries scan / combine independently, and
//! `psm_scan_block` / `psm_combine_block` where a block's shared memory holds what they
//! need. Every kernel is 1-D:
//! any grid and block size; a thread computes its 64-bit global index
//! `ctaid.x · ntid.x + tid.x` and returns when it is not below the kernel's count (the
//! block kernels: a block per item, its index `ctaid.x`).
//! Every offset into a buffer is computed in 64 bits.
//!
//! **Buffers** (device pointers, passed as `.u64`):
//! * *element* — the CPU's element layout ([`Layout`], shared code): `layout.size`
//!   bytes (a multiple of 8), field k at byte `layout.offsets[k]`, entries row-major in
//!   its dtype. An element array is `layout.size` bytes per element, 8-byte aligned.
//! * *param* `p` — row-major in its dtype, shared by all sequences.
//! * A `bf16`/`f16` input, param or output holds 2-byte entries (`ld`/`st.b16`),
//!   widened to f32 when read (`cvt.f32.bf16`, `cvt.f32.f16`: exact) and rounded to
//!   nearest-even when written (`cvt.rn.bf16.f32`, `cvt.rn.f16.f32`).
//! * Every buffer is aligned to its entries' size (element arrays to 8 bytes).
//! * *input* field `x` — `[nseq, steps, len_x]` row-major: sequence s, step t starts at
//!   entry `(s · steps + t) · len_x`. *Output* fields likewise.
//!
//! **Parameters.** Every kernel takes, first, one `.u64` per param (declaration order,
//! named `param_NAME`); kernels that read inputs (`psm_scan`, `psm_lift`,
//! `psm_readout`) then take one per input field (`in_NAME`); kernels that write
//! outputs (`psm_scan`, `psm_readout`) then one per output field (`out_NAME`); then
//! the kernel's own arguments below (`.u64` unless marked `.u32`). Every pointer is
//! passed even when the kernel does not read it; pointers a kernel does not read may be
//! 0. [`PtxModule::kernels`] lists every kernel's parameters in order.
//!
//! **Flags** (one `.u32 flags` argument; bits a kernel does not list are ignored):
//! [`HAS_STATE`] 1, [`WRITE_OUTPUTS`] 2, [`REVERSE`] 4, [`NO_STATE_OUT`] 8 (the CPU's),
//! [`CARRY_IN`] 16, [`EMPTY_FIRST`] 32, [`LEFT_IDENTITY`] 64, [`RIGHT_IDENTITY`] 128.
//!
//! **Scan order.** With `REVERSE`, position i of a sequence is its memory step
//! `steps − 1 − i`; without, step i. Prefixes, chunks and leaves are indexed by
//! position: a reverse scan is the forward scan of the flipped sequence, no copy.
//!
//! Kernels:
//!
//! ```text
//! psm_scan(params…, inputs…, outputs…, nseq, steps, chunk, state_in, state_out, flags: u32)
//! ```
//! One thread per (sequence s, chunk c), `nseq · ⌈steps / chunk⌉` threads, index
//! `s · nchunks + c`; chunk c covers positions `[c · chunk, min((c+1) · chunk, steps))`
//! (`chunk = 0` runs nothing). The fused recurrent loop of the CPU's `scan` over those
//! positions, a left fold (so for several steps valid for associative operators only): e = lift(x_t);
//! p' = combine(p, e), or e when no prefix is held; the readout reads p' (inclusive) or
//! p (exclusive; with no prefix held, the declared identity, else zeros with `empty(p)`
//! true), written only with `WRITE_OUTPUTS`. The starting prefix of chunk c is the
//! element in slot `s · nchunks + c` of `state_in` (an element array) when `c = 0` and
//! `HAS_STATE`, or `c > 0` and `CARRY_IN`; else none. Without `NO_STATE_OUT` the final
//! prefix is written to the same slot of `state_out` (`state_out` may equal
//! `state_in`: a thread reads its slot before it writes it). Uses: the recurrent form
//! (`chunk ≥ steps`); chunk aggregates (no `WRITE_OUTPUTS`, no `CARRY_IN`); the chunk
//! pass from carries (`WRITE_OUTPUTS | CARRY_IN | NO_STATE_OUT`); one decode step
//! (`steps = chunk = 1`, state in place). Reads `HAS_STATE`, `WRITE_OUTPUTS`,
//! `REVERSE`, `NO_STATE_OUT`, `CARRY_IN`.
//!
//! ```text
//! psm_scan_entries(params…, inputs…, outputs…, nseq, steps, chunk, state_in, state_out, flags: u32)
//! ```
//! Only for operators whose element entries scan independently (structure
//! `elementwise` over E ≥ 2 entries, no `let` in combine, a readout writing outputs of
//! the fields' shape and reading the state only at the entry it writes; today
//! diag_affine and average of the library): `psm_scan` with one thread per entry,
//! `nseq · nchunks · E` threads, index `(s · nchunks + c) · E + e`, each field's entry
//! in a register, adjacent threads reading adjacent entries (coalesced over the
//! channel axis). Same arguments, flags, slots and results as `psm_scan`, bit for bit.
//!
//! ```text
//! psm_lift(params…, inputs…, nseq, steps, leaves, flags: u32)
//! ```
//! One thread per (s, position i), `nseq · steps` threads, index `s · steps + i`:
//! `leaves[s · steps + i] = lift(x of position i)`. Reads `REVERSE`.
//!
//! ```text
//! psm_combine(params…, rows, cols, out, out_row, out_col, left, left_row, left_col,
//!             right, right_row, right_col, flags: u32)
//! ```
//! One thread per (row, col), `rows · cols` threads, index `row · cols + col`:
//! `out + row · out_row + col · out_col ← combine(left + row · left_row + col ·
//! left_col, right + …)`; the strides are in bytes (two's complement: negative
//! strides work). `LEFT_IDENTITY`: the left operand is the flagged identity and the
//! result is a copy of the right one (nothing is evaluated); `RIGHT_IDENTITY`
//! likewise. The output must not overlap either operand. The one primitive for chunk
//! carries, tree sweeps and the stream's counter: every combine of every form runs this
//! code or `psm_scan`'s, which lower the body identically, so tree and stream agree bit
//! for bit.
//!
//! ```text
//! psm_combine_entries(params…, rows, cols, out, out_row, out_col, left, left_row,
//!                     left_col, right, right_row, right_col, flags: u32)
//! ```
//! Only where combine runs per entry (structure `elementwise` over E ≥ 2 entries, no
//! `let` in combine; today average, diag_affine and mamba_s6 of the library):
//! `psm_combine` with one thread per entry, `rows · cols · E` threads, index
//! `(row · cols + col) · E + e`; same arguments, flags and results (field values bit for
//! bit; padding bytes of `out` are not written).
//!
//! ```text
//! psm_scan_block(params…, inputs…, outputs…, nseq, steps, chunk, state_in, state_out, flags: u32)
//! psm_combine_block(params…, rows, cols, out, out_row, out_col, left, left_row, left_col,
//!                   right, right_row, right_col, flags: u32)
//! ```
//! `psm_scan` and `psm_combine` with one *block* per item (grid = the item count, any
//! block size): same arguments, flags, slots and results, bit for bit. `psm_scan_block`
//! of an element that splits ([`BlockKernel::parts`] > 1) takes a grid of `items ×
//! parts` blocks, `%ctaid.y` the part, and its `state_in` and `state_out` must not
//! overlap (each block reads the fields it does not split whole). A launch passes
//! [`PtxModule::block`]'s bytes of dynamic shared memory (the element regions and `let`
//! tensors; above 48 KiB the function's maximum must be raised first); the threads split
//! each statement's entries (the design is in `block`'s module doc). Present only when
//! those bytes fit the target ([`shared_limit`]: 227 KiB on sm_90); else
//! [`BlockKernels`] holds the reason.
//!
//! ```text
//! psm_readout(params…, inputs…, outputs…, nseq, steps, prefixes, flags: u32)
//! ```
//! One thread per (s, position i), `nseq · steps` threads: the readout of position i
//! from `prefixes`, an element array `[nseq, steps + 1]` holding p_0 … p_steps of each
//! sequence: an exclusive readout reads slot i, an inclusive one slot i + 1. With
//! `EMPTY_FIRST` p_0 is the flagged identity (its slot is not read): an exclusive
//! readout at position 0 reads the declared identity, else zeros with `empty(p)` true.
//! Reads `REVERSE`, `EMPTY_FIRST`.
//!
//! ```text
//! psm_identity(params…, count, out, stride)        only when an identity is declared
//! ```
//! One thread per k < count: the declared identity into `out + k · stride`.
//!
//! **The look-back module.** [`compile_lookback`] gives a second module, for
//! associative operators whose element fields and input/output rows are scalars, or
//! whose element entries scan independently (a thread per entry), with one kernel,
//! `psm_lookback`: a single-pass scan with decoupled look-back (its ABI is in
//! [`lookback`]).
//!
//! **Per-thread memory.** `let` tensors and element temporaries live in `.local`
//! memory declared by each kernel ([`PtxModule::local_bytes`] is the largest); the
//! runtime passes no scratch. Rank-0 element fields of the fused loop stay in
//! registers.
//!
//! **Arithmetic** as the CPU backend and the interpreter in `Precision::Declared`
//! (DESIGN.md §4): f32 arithmetic in f32 and f64 in f64 with `.rn` on every add, sub,
//! mul, div and sqrt (PTX never contracts `.rn` instructions into fused multiply-adds),
//! no flush to zero, IEEE 754-2019 `min`/`max` (NaN propagates, −0 < +0), i32
//! arithmetic wrapping, division by zero and `MIN / −1` giving 0, integer expressions of
//! indices and dims computed exactly in 64 bits and converted as the interpreter
//! converts them, reductions as sequential left folds, only the taken branch of
//! `if`/`select` evaluated (both when neither can fault nor costs much). Expressions of
//! literals and dims alone are folded at compile time by the interpreter's own
//! arithmetic. Transcendental functions are device functions of the module (see
//! `math` for their error bounds); they are not bit-identical to the CPU's libm, so
//! associative operators agree with the interpreter within the tolerance, while tree
//! and stream on the GPU — the same device code — are bit-identical to each other.

mod block;
mod channels;
pub mod chunkwise;
pub mod delta;
mod emit;
mod kernels;
pub mod lookback;
mod lower;
mod math;

pub use block::{shared_limit, BlockKernel, BlockKernels};
pub use lookback::{LookbackModule, LOOKBACK_BLOCK};

use std::collections::BTreeSet;
use std::fmt::Write;

use psm_ir::ir::{Aggregator, Dtype};
use psm_ir::valid::Info;

pub use crate::clif::{HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};
pub use crate::layout::Layout;

/// `psm_scan` flag: chunks c > 0 start from their slot of `state_in`.
pub const CARRY_IN: u32 = 16;
/// `psm_readout` flag: p_0 is the flagged identity (its slot is not read).
pub const EMPTY_FIRST: u32 = 32;
/// `psm_combine` flag: the left operand is the flagged identity; out = right.
pub const LEFT_IDENTITY: u32 = 64;
/// `psm_combine` flag: the right operand is the flagged identity; out = left.
pub const RIGHT_IDENTITY: u32 = 128;

/// Options of [`compile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxOptions {
    /// Compute capability × 10 (`90` for `sm_90`).
    pub arch: u32,
}

impl Default for PtxOptions {
    fn default() -> Self {
        PtxOptions { arch: 90 }
    }
}

/// The kernels of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Scan,
    ScanEntries,
    CombineEntries,
    /// `psm_scan` by a block per (sequence, chunk) (`block`).
    ScanBlock,
    /// `psm_combine` by a block per combine (`block`).
    CombineBlock,
    Lift,
    Combine,
    Readout,
    Identity,
    /// The single-pass decoupled look-back scan ([`compile_lookback`]).
    Lookback,
}

impl Kernel {
    /// The entry name in the PTX.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scan => "psm_scan",
            Kernel::ScanEntries => "psm_scan_entries",
            Kernel::CombineEntries => "psm_combine_entries",
            Kernel::ScanBlock => "psm_scan_block",
            Kernel::CombineBlock => "psm_combine_block",
            Kernel::Lift => "psm_lift",
            Kernel::Combine => "psm_combine",
            Kernel::Readout => "psm_readout",
            Kernel::Identity => "psm_identity",
            Kernel::Lookback => "psm_lookback",
        }
    }
}

/// The PTX type of a kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    U64,
    U32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelParam {
    /// The parameter's name in the PTX (`param_w`, `in_k`, `out_y`, `nseq`, ...).
    pub name: String,
    pub ty: ParamType,
}

/// One kernel's entry name and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSig {
    pub kernel: Kernel,
    pub params: Vec<KernelParam>,
}

/// The PTX of one aggregator and what a launcher needs to know about it.
#[derive(Debug, Clone)]
pub struct PtxModule {
    /// The module text, for `cuModuleLoadData` (no NUL terminator; append one).
    pub text: String,
    /// The element layout, the same as the CPU's.
    pub layout: Layout,
    /// Every kernel of the module with its parameters: scan, lift, combine, readout,
    /// identity when declared, scan_entries and combine_entries where the entries scan
    /// or combine independently.
    pub kernels: Vec<KernelSig>,
    /// The largest per-thread `.local` array any kernel declares, in bytes.
    pub local_bytes: usize,
    /// Threads per (sequence, chunk) of `psm_scan_entries` (the entries of one field),
    /// when the module has it.
    pub entries: Option<usize>,
    /// Dynamic shared memory per block of `psm_scan_block` and `psm_combine_block`, or
    /// why the module lacks them.
    pub block: BlockKernels,
}

impl PtxModule {
    pub fn kernel(&self, kernel: Kernel) -> Option<&KernelSig> {
        self.kernels.iter().find(|k| k.kernel == kernel)
    }
}

/// Why no PTX was generated. Never the user's fault for a validated aggregator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtxError {
    /// The target architecture is older than `sm_70` or unknown.
    UnsupportedArch(u32),
    /// The aggregator stores a dtype the target cannot convert (`bf16` before `sm_80`).
    UnsupportedDtype { dtype: Dtype, arch: u32 },
    /// A kernel needs more per-thread local memory than the device allows.
    LocalMemory { kernel: &'static str, bytes: usize, limit: usize },
}

impl std::fmt::Display for PtxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PtxError::UnsupportedArch(a) => write!(f, "sm_{a} is not supported by the PTX backend (sm_70 or later)"),
            PtxError::UnsupportedDtype { dtype, arch } => {
                write!(f, "{} tensors need sm_80 or later (its conversions); the target is sm_{arch}", dtype.name())
            }
            PtxError::LocalMemory { kernel, bytes, limit } => write!(
                f,
                "kernel `{kernel}` needs {bytes} bytes of per-thread local memory; the device allows {limit}"
            ),
        }
    }
}

impl std::error::Error for PtxError {}

/// Per-thread local memory a kernel may use (512 KiB on every architecture since
/// compute capability 2.0).
const LOCAL_LIMIT: usize = 512 * 1024;

/// The lowest PTX ISA version that supports a target.
fn isa_version(arch: u32) -> Option<&'static str> {
    Some(match arch {
        70 => "6.0",
        72 => "6.1",
        75 => "6.3",
        80 => "7.0",
        86 => "7.1",
        87 => "7.4",
        89 | 90 => "7.8",
        _ => return None,
    })
}

/// The lowest PTX ISA version for a target and the storage dtypes of an aggregator:
/// bf16 tensors are converted by `cvt.f32.bf16` (PTX 7.1, sm_80) and `cvt.rn.bf16.f32`
/// (PTX 7.0, sm_80); f16's `cvt.f32.f16` / `cvt.rn.f16.f32` exist on every target.
pub(crate) fn module_version(agg: &Aggregator, arch: u32) -> Result<&'static str, PtxError> {
    let version = isa_version(arch).ok_or(PtxError::UnsupportedArch(arch))?;
    if !agg.tensors.iter().any(|(_, t)| t.dtype == Dtype::BF16) {
        return Ok(version);
    }
    match arch {
        80 => Ok("7.1"),
        a if a < 80 => Err(PtxError::UnsupportedDtype { dtype: Dtype::BF16, arch }),
        _ => Ok(version),
    }
}

/// The PTX module of a validated aggregator.
pub fn compile(agg: &Aggregator, info: &Info, options: &PtxOptions) -> Result<PtxModule, PtxError> {
    // Lower what psm-ir's exact rewrites make of the operator (psm_ir::opt).
    let rewritten = psm_ir::opt::for_backend(agg, info);
    let (agg, info) = rewritten.as_ref().map_or((agg, info), |(agg, info)| (agg, info));
    let version = module_version(agg, options.arch)?;
    let cx = lower::Ctx::new(agg, info, options.arch);
    let mut math = BTreeSet::new();
    let mut generated = vec![
        kernels::scan(&cx, &mut math),
        kernels::lift(&cx, &mut math),
        kernels::combine(&cx, &mut math),
        kernels::readout(&cx, &mut math),
    ];
    generated.extend(kernels::identity(&cx, &mut math));
    let entries = kernels::entry_shape(&cx).map(|shape| shape.iter().product());
    generated.extend(kernels::scan_entries(&cx, &mut math));
    generated.extend(kernels::combine_entries(&cx, &mut math));
    let (block_kernels, block) = block::kernels(&cx, &mut math, shared_limit(options.arch));
    generated.extend(block_kernels);
    if let Some(k) = generated.iter().find(|k| k.local_bytes > LOCAL_LIMIT) {
        return Err(PtxError::LocalMemory { kernel: k.sig.kernel.name(), bytes: k.local_bytes, limit: LOCAL_LIMIT });
    }
    let text = module_text(&cx, options, version, &math, &generated);
    let layout = cx.layout.clone();
    Ok(PtxModule {
        text,
        layout,
        local_bytes: generated.iter().map(|g| g.local_bytes).max().unwrap_or(0),
        kernels: generated.into_iter().map(|g| g.sig).collect(),
        entries,
        block,
    })
}

/// The look-back module of a validated aggregator (lookback.rs's kernel, or channels.rs's
/// for elements of independent entries) after psm-ir's exact rewrites, as [`compile`]
/// applies them; `None` where no look-back kernel applies.
pub fn compile_lookback(agg: &Aggregator, info: &Info, options: &PtxOptions) -> Result<Option<LookbackModule>, PtxError> {
    // Lower what psm-ir's exact rewrites make of the operator (psm_ir::opt).
    let rewritten = psm_ir::opt::for_backend(agg, info);
    let (agg, info) = rewritten.as_ref().map_or((agg, info), |(agg, info)| (agg, info));
    lookback::compile_lookback(agg, info, options)
}

/// The text of a module of `generated` kernels: a header naming the aggregator and its
/// element layout, the target, the math device functions the kernels call, the kernels.
fn module_text(cx: &lower::Ctx<'_>, options: &PtxOptions, version: &str, math: &BTreeSet<math::MathFn>, generated: &[kernels::Generated]) -> String {
    let (agg, info) = (cx.agg, cx.info);
    let mut text = String::new();
    let dims: Vec<String> = info.dim_values(agg).iter().map(|(n, v)| format!("{n} = {v}")).collect();
    let dims = if dims.is_empty() { String::new() } else { format!("<{}>", dims.join(", ")) };
    let _ = writeln!(text, "// psm aggregator {}{dims}: kernels of the CUDA ABI of psm-codegen's ptx module", agg.name);
    let layout = &cx.layout;
    let fields: Vec<String> = agg
        .tensors_of(psm_ir::ir::Role::Element)
        .enumerate()
        .map(|(k, t)| format!("{} at {} ({} x {})", agg.tensors[t].name, layout.offsets[k], layout.field_lens[k], layout.dtypes[k].name()))
        .collect();
    let _ = writeln!(text, "// element: {} bytes; {}", layout.size, fields.join(", "));
    let _ = writeln!(text, ".version {version}\n.target sm_{}\n.address_size 64\n", options.arch);
    if !math.is_empty() {
        text.push_str(&math::definitions(math));
        text.push('\n');
    }
    let n = generated.len();
    for (k, g) in generated.iter().enumerate() {
        text.push_str(&g.text);
        if k + 1 < n {
            text.push('\n');
        }
    }
    text
}
