//! `psmc bench`: the generated code (Cranelift JIT through psm-runtime) against the
//! hand-written Rust loop for the same operator (`psm_bench::baselines`), at 1 thread
//! and at K threads, with the machine's copy bandwidth measured in the same run.
//!
//! One *case* is one aggregator at one choice of dims, batch shape and T, run in a few
//! *modes* (a form at a thread count, or `push`: one [`psm_runtime::Stream::push`] per
//! step). Each mode gives one row. Per case the bench
//!
//! * draws seeded inputs (`psm_bench::IndexedRng`, one seed per field, in parallel with
//!   the same values for any thread count; gates of the affine operators in [0.5, 1),
//!   GLA's `alpha` in [0.9, 1), attention weights in [-0.2, 0.2), everything else in
//!   [-1, 1));
//! * runs the hand-written loop once for the reference outputs (untimed, over the
//!   sequences on all cores), then times it at 1 thread and, for a batch, at K
//!   threads (rayon over the sequences: what a user writes by hand; a single sequence
//!   has no hand-written parallel form, so its baseline stays at 1 thread and
//!   `baseline_threads` says so);
//! * per mode runs psm once and checks its outputs: bit-identical to the hand-written
//!   loop's (what the recurrent, tree and stream forms give on these operators), or
//!   else, for the associative operators, within psm's tolerance of the f64 fold
//!   (`psm_bench::baselines::f64_fold`): |psm − f64| ≤ 1e-5·max(1, log2 T)·(|f64| +
//!   running max |f64|), the allowance of the rebracketed forms, times the operator's
//!   condition factor at that length: at most twice as far from the f64 fold as the
//!   hand-written sequential f32 loop itself is, where that is further (over millions
//!   of steps an f32 fold drifts past 1e-5·log2 T: logcumsumexp at 2^24 steps);
//!   then times it;
//! * measures the copy bandwidth (`psm_bench::copy_bandwidth`) on a buffer of the
//!   case's bytes (inputs + outputs), so that a row's fraction of copy compares like
//!   with like: an L1-sized case against an L1-sized copy. The copy reuses its
//!   destination; psm and the hand-written loop allocate theirs in every run, so at
//!   DRAM sizes their fraction includes the page faults of fresh output memory.
//!
//! The work around the timed runs (drawing, the reference outputs, the f64 fold, the
//! checks, the copy's buffers) runs on rayon's global pool, over all cores, and writes
//! its large buffers from all threads (`psm_bench::filled`): at 2^28 steps their page
//! faults alone take seconds on one thread. The reference outputs and the f64 fold,
//! sequential within a sequence, run side by side. The checks give what a sequential
//! pass gives (maxima are exact in any order).
//!
//! Timing: `psm_bench::best_time` (the best of repeated runs, at least 3, for
//! `--budget-ms` each). Both sides allocate their outputs inside the timed region
//! (psm's `run` returns owned outputs; the hand-written side does `vec![0.0; n]`). Each
//! timing loop runs on a worker of a rayon pool of the row's thread count, and psm runs
//! on that pool (`RunOptions::pool`), so no row pays a hand-off between threads per
//! call.
//!
//! Baselines are matched by aggregator name (`cumsum`, `scalar_affine`, `diag_affine`,
//! `logcumsumexp`, `gla`, `attn_agg`) when the signature is the library's (field names,
//! f32); other operators are timed without one.
//!
//! `--backend cuda` runs psm on CUDA device 0 instead, each form once (host threads do
//! not apply), timed with the copies of inputs to the device and outputs back (`push`:
//! a `cuda::DeviceStream`, the state on the device, each push copying its step's inputs
//! in and outputs out); the hand-written loops and the copy bandwidth stay on the CPU.
//! `--resident` (with `--backend cuda`) times what GPU libraries are compared by: the
//! inputs uploaded and the outputs allocated once, then each run timed on the device by
//! CUDA events around everything it submits (its scratch allocations and launches; the
//! median of 20 after 3 warm-up runs); nothing is copied per run. With `--resident`,
//! `push` uploads every step's inputs once and pushes them with
//! `DeviceStream::push_resident` into outputs left on the device: timed is the wall
//! clock of T pushes and one synchronisation (launches included; the best of repeated
//! passes of one stream, decoding on). `--kernel` picks the
//! CUDA kernels (`auto`, `generic`, `lookback`, `lanes`, `block`:
//! psm_runtime::cuda::select); a row that ran the look-back scan or the lanes kernel
//! says `form` `lookback` or `lanes`, one that ran the block kernels `FORM/block`.
//!
//! `--format json` prints one object: `suite` (`"cpu"` or null), `backend` (`cpu`,
//! `interp` or `cuda`), `threads` (K),
//! `budget_seconds`, `total_seconds` (the whole bench), and `rows`, each with
//! `operator`, `dims` (name → value), `shape` (`[batch..., T, first input's dims...]`),
//! `form` (`recurrent`, `chunked`, `tree`, `stream`, `chunkwise`, `push`, `lookback`, `lanes`, or a form `/block`), `chunk` (chunked
//! only, else null), `threads`, `seconds` (one run of the whole case), `seconds_per_step`
//! (seconds / (sequences × T)), `baseline_seconds` and `baseline_threads` (null without
//! a baseline or with `--no-baseline`), `ratio` (baseline_seconds / seconds: > 1 means psm is faster),
//! `elements_per_second` (steps of all sequences per second), `bytes` (inputs +
//! outputs), `bytes_per_second`, `copy_bytes_per_second`, `fraction_of_copy`,
//! `speedup_vs_1_thread` (the same form's 1-thread time over this row's; null at 1
//! thread), `speedup_vs_best_1_thread` (the case's fastest 1-thread psm row over this
//! row's), `identical` (bit-identical to the reference outputs: the hand-written loop's,
//! or without one psm's own recurrent form, the tree where the operator is not
//! associative, run apart by the CPU JIT; null where the first output is not f32),
//! `within_tolerance` (the check passed), `reference` (what `max_rel_err` is measured
//! against: `f64`, `hand`, `recurrent` or `tree`), `max_rel_err`,
//! `baseline_max_rel_err` (the hand-written loop's own error against the f64 fold),
//! `tolerance` (0 for a non-associative operator's forms on the CPU: bit for bit).
//!
//! Exit codes: 0 success; 1 errors in the input, a failed run, or outputs that differ
//! from the reference beyond the tolerance; 2 usage errors.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use psm_bench::baselines;
use psm_bench::{best_time, copy_bandwidth, filled, IndexedRng};
use psm_ir::ir::Dtype;
use psm_ir::valid::DimOverride;
use psm_runtime::cuda::{Chosen, CudaExecutor, CudaKernel};
use psm_runtime::{Aggregator, Backend, Buffer, FieldSpec, Form, Inputs, OutputsMut, RunOptions, Signature};
use rayon::prelude::*;
use rayon::ThreadPool;
use serde_json::json;

use crate::run::{parse_shape, BackendArg, KernelArg, Runner, Shape};
use crate::Fail;

#[derive(Args)]
pub struct BenchArgs {
    /// The .psm file (or --suite)
    #[arg(value_name = "FILE", required_unless_present = "suite")]
    file: Option<PathBuf>,
    /// Run a standard suite instead of one file
    #[arg(long, value_enum, conflicts_with_all = ["file", "aggregator", "len", "batch", "form", "define"])]
    suite: Option<Suite>,
    /// The aggregator to bench [default: the file's only aggregator]
    #[arg(long, value_name = "NAME")]
    aggregator: Option<String>,
    #[command(flatten)]
    dims: crate::Dims,
    /// Steps per sequence, T
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    len: usize,
    /// Batch shape, `B` or `B1,B2,...` [default: one sequence]
    #[arg(long, value_name = "B", value_parser = parse_shape)]
    batch: Option<Shape>,
    /// The thread count compared with 1 thread
    #[arg(long, value_name = "K", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// The form to time at 1 and K threads [default: recurrent at 1 thread, then over a
    /// batch recurrent at K threads, for one sequence chunked at 1 and K threads, and on
    /// the CPU the chunkwise form at 1 and K threads where it applies; tree and stream
    /// for non-associative operators]
    #[arg(long, value_enum)]
    form: Option<BenchForm>,
    /// The implementation psm runs on (`cuda`: device 0; each run copies its inputs to
    /// the device and its outputs back, and is timed with them)
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// The CUDA kernels (with --backend cuda)
    #[arg(long, value_enum, default_value_t = KernelArg::Auto)]
    kernel: KernelArg,
    /// With --backend cuda: keep inputs and outputs on the device and time each run on
    /// the device with CUDA events (median of 20 after 3 warm-up runs)
    #[arg(long)]
    resident: bool,
    /// Time budget of each measurement, in milliseconds (at least 3 runs are timed)
    #[arg(long, value_name = "MS", default_value_t = 200)]
    budget_ms: u64,
    /// Do not time the hand-written loop (its outputs still check psm's):
    /// `baseline_seconds` and `ratio` are null. For device rows, whose rivals are GPU
    /// libraries, where the loop's host time would dominate the run
    #[arg(long)]
    no_baseline: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = crate::Format::Human)]
    format: crate::Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// cumsum, scalar_affine, diag_affine, logcumsumexp, GLA (K = V = 64) and the
    /// attention aggregator (C = 8, D = 32), from L1-sized to DRAM-sized, 1 and K threads
    Cpu,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchForm {
    /// psm-runtime's automatic choice
    Auto,
    /// One fused scan per sequence (associative operators)
    Recurrent,
    /// 3-phase chunked scan (associative operators)
    Chunked,
    /// The fixed Blelloch tree
    Tree,
    /// The binary counter (non-associative) or one running element (associative)
    Stream,
    /// One Stream::push per step, and one Stream::push_into a reused buffer: decode loops
    Push,
    /// The chunkwise form (linear-attention family), beside the recurrent form at 1 thread
    Chunkwise,
}

/// How one row runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Form(Form),
    /// A decode loop of `Stream::push`, or (`into`) of `Stream::push_into` one reused
    /// output buffer.
    Push { into: bool },
}

/// One aggregator at one choice of dims, batch and T, run in several modes.
struct Case {
    file: PathBuf,
    aggregator: Option<String>,
    dims: Vec<DimOverride>,
    batch: Vec<usize>,
    len: usize,
    modes: Vec<(Mode, usize)>,
}

/// What the bench found for one mode of one case.
struct Row {
    operator: String,
    dims: Vec<(String, i64)>,
    shape: Vec<usize>,
    form: String,
    chunk: Option<usize>,
    threads: usize,
    seconds: f64,
    steps: usize,
    baseline: Option<(f64, usize)>,
    bytes: usize,
    copy_bps: f64,
    speedup: Option<f64>,
    speedup_best: Option<f64>,
    check: Option<Check>,
}

/// psm's outputs against the hand-written loop's: bit-identical, or else within psm's
/// tolerance of the f64 fold (the associative operators) or of the hand-written
/// outputs (the others). An operator without a hand-written loop is checked against
/// its own definition run by the CPU JIT, untimed: the recurrent form, or the tree
/// where it is not associative (then bit for bit where the backend is the host's).
#[derive(Clone, Copy)]
struct Check {
    identical: bool,
    /// What `max_rel_err` is measured against: `f64` (the f64 fold, for the
    /// associative operators), `hand` (the hand-written outputs), or psm's own
    /// `recurrent` or `tree` outputs.
    reference: &'static str,
    max_rel_err: f64,
    /// The hand-written f32 loop's own error against the f64 fold.
    hand_rel: Option<f64>,
    tolerance: f64,
}

impl Check {
    /// Bit-identical, or within psm's tolerance max(1e-5·max(1, log2 T), 2 × the
    /// hand-written f32 loop's own error): the second term is the operator's
    /// conditioning (over millions of steps an f32 fold drifts past 1e-5·log2 T, the
    /// sequential loop first).
    fn ok(&self) -> bool {
        self.identical || self.max_rel_err <= self.tolerance || self.hand_rel.is_some_and(|h| self.max_rel_err <= 2.0 * h)
    }
    fn text(&self) -> String {
        let hand = self.hand_rel.map(|h| format!(" (hand {h:.0e})")).unwrap_or_default();
        if self.identical {
            "bit-identical".into()
        } else if self.ok() {
            format!("{} rel {:.0e}{hand}", self.reference, self.max_rel_err)
        } else {
            format!("MISMATCH {} rel {:.1e}{hand} > {:.0e}", self.reference, self.max_rel_err, self.tolerance)
        }
    }
}

pub fn run(args: BenchArgs) -> ExitCode {
    crate::report(execute(&args))
}

/// `./examples/ops` when it exists, else the repository's.
fn ops_dir() -> PathBuf {
    let local = PathBuf::from("examples/ops");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join("ops")
}

/// The standard CPU suite (BENCHMARKS.md): L1-sized to DRAM-sized, 1 and K threads. A
/// single long sequence runs recurrent at 1 thread and chunked at 1 and K threads; a
/// batch runs recurrent with rayon over the sequences.
fn cpu_suite(k: usize) -> Vec<Case> {
    let ops = ops_dir();
    let d = |n: &str, v: i64| DimOverride { name: n.into(), value: v };
    let single = |name: &str, dims: Vec<DimOverride>, len: usize| Case {
        file: ops.join(format!("{name}.psm")),
        aggregator: None,
        dims,
        batch: vec![],
        len,
        modes: vec![(Mode::Form(Form::Recurrent), 1), (Mode::Form(Form::Chunked), 1), (Mode::Form(Form::Chunked), k)],
    };
    let batched = |name: &str, dims: Vec<DimOverride>, batch: usize, len: usize| Case {
        file: ops.join(format!("{name}.psm")),
        aggregator: None,
        dims,
        batch: vec![batch],
        len,
        modes: vec![(Mode::Form(Form::Recurrent), 1), (Mode::Form(Form::Recurrent), k)],
    };
    let with = |mut c: Case, modes: Vec<(Mode, usize)>| {
        c.modes = modes;
        c
    };
    let gla = || vec![d("K", 64), d("V", 64)];
    let attn = || vec![d("C", 8), d("D", 32)];
    let mut cases = Vec::new();
    for len in [4096, 1 << 16, 1 << 20, 1 << 26] {
        cases.push(single("cumsum", vec![], len));
    }
    cases.push(batched("cumsum", vec![], 4, 1 << 14));
    cases.push(batched("cumsum", vec![], 4, 1 << 24));
    for len in [4096, 1 << 20, 1 << 26] {
        cases.push(single("scalar_affine", vec![], len));
    }
    cases.push(batched("scalar_affine", vec![], 4, 1 << 14));
    cases.push(batched("scalar_affine", vec![], 4, 1 << 24));
    cases.push(batched("diag_affine", vec![d("D", 64)], 4, 16));
    cases.push(batched("diag_affine", vec![d("D", 64)], 4, 4096));
    cases.push(batched("diag_affine", vec![d("D", 64)], 4, 1 << 18));
    for len in [4096, 1 << 20, 1 << 24] {
        cases.push(single("logcumsumexp", vec![], len));
    }
    cases.push(batched("logcumsumexp", vec![], 4, 1 << 16));
    cases.push(single("gla", gla(), 4096));
    cases.push(with(single("gla", gla(), 2048), vec![(Mode::Push { into: false }, 1), (Mode::Push { into: true }, 1)]));
    cases.push(batched("gla", gla(), 4, 1024));
    cases.push(with(single("attn_agg", attn(), 1024), vec![(Mode::Form(Form::Tree), 1), (Mode::Form(Form::Tree), k)]));
    cases.push(with(single("attn_agg", attn(), 1024), vec![(Mode::Form(Form::Stream), 1), (Mode::Push { into: false }, 1)]));
    cases.push(with(batched("attn_agg", attn(), 2, 1024), vec![(Mode::Form(Form::Stream), 1), (Mode::Form(Form::Stream), k)]));
    for c in &mut cases {
        dedup(&mut c.modes);
    }
    cases
}

fn dedup(modes: &mut Vec<(Mode, usize)>) {
    let mut seen = Vec::new();
    modes.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
}

fn execute(args: &BenchArgs) -> Result<(String, bool), Fail> {
    let k = args.threads as usize;
    let budget = Duration::from_millis(args.budget_ms);
    let started = Instant::now();
    if args.suite.is_some() && args.backend != BackendArg::Cpu {
        return Err(Fail("error: the cpu suite runs on the cpu backend; bench one file with --backend\n".into()));
    }
    let cases = match (args.suite, &args.file) {
        (Some(Suite::Cpu), _) => cpu_suite(k),
        (None, Some(file)) => {
            let batch = args.batch.clone().map(|b| b.0).unwrap_or_default();
            vec![Case { file: file.clone(), aggregator: args.aggregator.clone(), dims: args.dims.define.clone(), batch, len: args.len, modes: Vec::new() }]
        }
        (None, None) => return Err(Fail("error: give a .psm FILE or --suite cpu\n".into())),
    };
    let pool = |n: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| Fail(format!("error: cannot start {n} threads: {e}\n")))
    };
    let pools = (pool(1)?, pool(k)?);
    let human = args.format == crate::Format::Human;
    let mut rows = Vec::new();
    for case in cases {
        let mut case = case;
        let found = bench_case(&mut case, args.form, (args.backend, args.kernel, args.resident), k, &pools, (budget, !args.no_baseline), human)?;
        rows.extend(found);
    }
    let ok = rows.iter().all(|r| r.check.is_none_or(|c| c.ok()));
    let total = started.elapsed().as_secs_f64();
    let suite = args.suite.map(|_| "cpu");
    if args.format == crate::Format::Json {
        let doc = json!({
            "suite": suite,
            "backend": args.backend.name(),
            "threads": k,
            "budget_seconds": budget.as_secs_f64(),
            "total_seconds": total,
            "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Fail(format!("error: cannot serialize: {e}\n")))?;
        return Ok((text + "\n", ok));
    }
    Ok((table(&rows, k, total), ok))
}

/// Resolves a case's file and aggregator, draws its data and runs every mode.
#[allow(clippy::too_many_arguments)]
fn bench_case(
    case: &mut Case,
    form: Option<BenchForm>,
    (backend, kernel, resident): (BackendArg, KernelArg, bool),
    k: usize,
    pools: &(ThreadPool, ThreadPool),
    (budget, time_baseline): (Duration, bool),
    progress: bool,
) -> Result<Vec<Row>, Fail> {
    let (agg, name) = crate::run::load_aggregator(&case.file, &case.dims, case.aggregator.as_deref(), "bench").map_err(Fail)?;
    let runner = Runner::new(&agg, backend, kernel).map_err(|e| Fail(format!("error: {e}\n")))?;
    if resident && backend != BackendArg::Cuda {
        return Err(Fail("error: --resident times runs on a CUDA device; use it with --backend cuda\n".into()));
    }
    let sig = agg.signature();
    if case.modes.is_empty() {
        // The chunkwise form beside the others where it applies (on the CPU: the CUDA form
        // takes fewer options, and the GPU's rows are chosen by --form).
        let chunkwise = match &runner {
            Runner::Host(host) => backend == BackendArg::Cpu && host.chunkwise().is_ok(),
            Runner::Cuda(..) => false,
        };
        case.modes = default_modes(form, sig.associative, case.batch.iter().product(), k, chunkwise);
    }
    if let Runner::Cuda(..) = runner {
        // Host threads do not apply to the device: each form once.
        case.modes.iter_mut().for_each(|m| m.1 = 1);
        dedup(&mut case.modes);
    }
    for (m, _) in &case.modes {
        if matches!(m, Mode::Form(Form::Recurrent | Form::Chunked)) && !sig.associative {
            return Err(Fail(format!(
                "error: `{name}` is not associative: it runs only in {}; pick one with --form\n",
                sig.forms().join(" and ")
            )));
        }
    }
    let nseq: usize = case.batch.iter().product();
    let steps = case.len;
    let count = nseq.checked_mul(steps).ok_or_else(|| Fail("error: the batch is too large\n".into()))?;
    let data = draw(&sig, count, steps)?;
    let dims = agg.info().dim_values(agg.ir());
    if progress {
        let dims_text = dims_label(&dims);
        crate::print_stderr(&format!("bench {name}{dims_text} batch {:?} T = {steps}\n", case.batch));
    }
    let mut shape = case.batch.clone();
    shape.push(steps);
    if let Some(first) = sig.inputs.first() {
        shape.extend(&first.shape);
    }
    let bytes: usize = data.inputs.iter().chain(&data.params).map(byte_len).sum::<usize>()
        + sig.outputs.iter().map(|s| count.saturating_mul(s.len).saturating_mul(psm_runtime::buffers::dtype_size(s.dtype))).sum::<usize>();
    let base = Baseline::detect(&sig);
    // Without a hand-written loop: the operator's own definition (the recurrent form, the
    // tree where it is not associative) on the CPU, untimed, on all cores.
    let own = match base {
        Some(_) => None,
        None => Some(own_reference(&agg, &runner, &sig, &data, &case.batch, steps)?),
    };
    let width = sig.outputs.first().map_or(0, |s| s.len);
    let out_len = width * steps;
    // The hand-written loop's outputs, untimed, on all cores (over the sequences; the
    // sequences' outputs do not depend on the thread count), into a buffer faulted in
    // on all cores.
    let hand_outputs = |stream: bool| -> Option<Vec<f32>> {
        let b = base.as_ref()?;
        let mut y = filled(nseq * out_len, 0.0f32);
        b.run_into(&data, steps, out_len, stream, nseq > 1, &mut y);
        Some(y)
    };
    // The hand-written loop's time at 1 or K threads.
    let hand_time = |stream: bool, threads: usize| -> Option<(f64, usize)> {
        let b = base.as_ref().filter(|_| time_baseline)?;
        let pool = if threads > 1 && nseq > 1 { &pools.1 } else { &pools.0 };
        let threads = pool.current_num_threads();
        let t = pool.install(|| {
            best_time(budget, || {
                black_box(b.run_all(&data, nseq, steps, out_len, stream, threads > 1));
            })
        });
        Some((t.as_secs_f64(), threads))
    };
    // The CUDA stream returns its outputs: it has no push_into.
    case.modes.retain(|(m, _)| !matches!((m, &runner), (Mode::Push { into: true }, Runner::Cuda(..))));
    let is_stream = |m: Mode| matches!(m, Mode::Form(Form::Stream) | Mode::Push { .. });
    let mut stream_flags: Vec<bool> = case.modes.iter().map(|(m, _)| is_stream(*m)).collect();
    stream_flags.sort();
    stream_flags.dedup();
    // Before any timing, side by side (within a sequence each is sequential, so one long
    // sequence would run them one after the other): the hand-written outputs by
    // `stream` (the attention aggregator's stream and tree loops differ), and the f64
    // fold with the hand-written loop's error against it.
    let (references, folded) = rayon::join(
        || stream_flags.par_iter().map(|&s| (s, hand_outputs(s))).collect::<Vec<_>>(),
        || base.as_ref().and_then(|b| b.fold_f64(&data, nseq, steps, width)),
    );
    // Where there is a fold, the hand-written outputs do not depend on `stream`.
    let hand_rel = folded.as_ref().zip(references.first().and_then(|(_, y)| y.as_ref())).map(|(f, want)| max_rel_err(want, f, nseq, steps, width));
    // The hand-written loop's (seconds, threads) by (stream, threads).
    type HandTime = Option<(f64, usize)>;
    let mut hand_times: Vec<((bool, usize), HandTime)> = Vec::new();
    let mut rows = Vec::new();
    for &(mode, threads) in &case.modes {
        let stream = is_stream(mode);
        let key = (stream, if nseq > 1 && threads > 1 { k } else { 1 });
        if !hand_times.iter().any(|(k, _)| *k == key) {
            hand_times.push((key, hand_time(key.0, key.1)));
        }
        let pool = if threads > 1 { &pools.1 } else { &pools.0 };
        let (outputs, seconds, form_name, chunk) = match mode {
            Mode::Form(f) => run_form(&runner, &sig, &data, &case.batch, steps, f, pool, budget, resident)?,
            Mode::Push { .. } if resident => match &runner {
                Runner::Cuda(gpu, kernel) => run_push_resident(gpu, *kernel, &sig, &data, &case.batch, steps, budget)?,
                Runner::Host(_) => unreachable!("--resident is refused without --backend cuda"),
            },
            Mode::Push { into } => run_push(&runner, &sig, &data, &case.batch, steps, into, pool, budget)?,
        };
        let reference = references.iter().find(|(s, _)| *s == stream).and_then(|(_, y)| y.as_ref());
        let baseline = hand_times.iter().find(|(k, _)| *k == key).and_then(|(_, h)| *h);
        let tolerance = 1e-5 * (steps.max(1) as f64).log2().max(1.0);
        let check = match (reference, outputs.first()) {
            (None, Some(got)) => own.as_ref().map(|(label, want)| {
                let got = got.to_f64();
                let identical = got.len() == want.len() && got.iter().zip(want).all(|(a, e)| a == e || (a.is_nan() && e.is_nan()));
                let rel = if identical { 0.0 } else { max_rel_err(&got, want, nseq, steps, width) };
                // The forms of a non-associative operator agree bit for bit on the host.
                let tolerance = if !sig.associative && runner.bit_exact() { 0.0 } else { tolerance };
                Check { identical, reference: label, max_rel_err: rel, hand_rel: None, tolerance }
            }),
            (Some(want), Some(Buffer::F32(got))) => {
                let identical = bit_identical(got, want);
                Some(match &folded {
                    Some(f) => {
                        let rel = if identical { hand_rel.unwrap_or(0.0) } else { max_rel_err(got, f, nseq, steps, width) };
                        Check { identical, reference: "f64", max_rel_err: rel, hand_rel, tolerance }
                    }
                    None => {
                        let rel = if identical { 0.0 } else { max_rel_err(got, want, nseq, steps, width) };
                        Check { identical, reference: "hand", max_rel_err: rel, hand_rel: None, tolerance }
                    }
                })
            }
            _ => None,
        };
        rows.push(Row {
            operator: name.clone(),
            dims: dims.clone(),
            shape: shape.clone(),
            form: form_name,
            chunk,
            threads: pool.current_num_threads(),
            seconds,
            steps: count,
            baseline,
            bytes,
            copy_bps: 0.0,
            speedup: None,
            speedup_best: None,
            check,
        });
    }
    drop((references, folded));
    let copy_bps = copy_bandwidth(bytes.max(64), budget);
    let best1 = rows.iter().filter(|r| r.threads == 1).map(|r| r.seconds).fold(f64::INFINITY, f64::min);
    let ones: Vec<(String, f64)> = rows.iter().filter(|r| r.threads == 1).map(|r| (r.form.clone(), r.seconds)).collect();
    for r in &mut rows {
        r.copy_bps = copy_bps;
        if r.threads > 1 {
            r.speedup = ones.iter().find(|(f, _)| *f == r.form).map(|(_, s)| s / r.seconds);
            r.speedup_best = best1.is_finite().then(|| best1 / r.seconds);
        }
    }
    Ok(rows)
}

fn default_modes(form: Option<BenchForm>, associative: bool, nseq: usize, k: usize, chunkwise: bool) -> Vec<(Mode, usize)> {
    let mut modes = match form {
        Some(BenchForm::Push) => vec![(Mode::Push { into: false }, 1), (Mode::Push { into: true }, 1)],
        Some(BenchForm::Chunkwise) => {
            vec![(Mode::Form(Form::Recurrent), 1), (Mode::Form(Form::Chunkwise), 1), (Mode::Form(Form::Chunkwise), k)]
        }
        Some(f) => {
            let f = match f {
                BenchForm::Auto => Form::Auto,
                BenchForm::Recurrent => Form::Recurrent,
                BenchForm::Chunked => Form::Chunked,
                BenchForm::Tree => Form::Tree,
                BenchForm::Stream => Form::Stream,
                BenchForm::Push | BenchForm::Chunkwise => unreachable!("handled above"),
            };
            vec![(Mode::Form(f), 1), (Mode::Form(f), k)]
        }
        None if !associative => {
            let mut m = vec![(Mode::Form(Form::Tree), 1), (Mode::Form(Form::Tree), k), (Mode::Form(Form::Stream), 1)];
            if nseq > 1 {
                m.push((Mode::Form(Form::Stream), k));
            }
            m
        }
        None => {
            let mut m = if nseq >= k {
                vec![(Mode::Form(Form::Recurrent), 1), (Mode::Form(Form::Recurrent), k)]
            } else {
                vec![(Mode::Form(Form::Recurrent), 1), (Mode::Form(Form::Chunked), 1), (Mode::Form(Form::Chunked), k)]
            };
            if chunkwise {
                m.extend([(Mode::Form(Form::Chunkwise), 1), (Mode::Form(Form::Chunkwise), k)]);
            }
            m
        }
    };
    dedup(&mut modes);
    modes
}

fn byte_len(b: &Buffer) -> usize {
    b.len() * psm_runtime::buffers::dtype_size(b.dtype())
}

/// The data of a case, in declaration order.
struct Data {
    inputs: Vec<Buffer>,
    params: Vec<Buffer>,
    sig: Signature,
}

impl Data {
    fn input(&self, name: &str) -> &[f32] {
        let k = self.sig.inputs.iter().position(|s| s.name == name).expect("checked by Baseline::detect");
        self.inputs[k].as_f32().expect("checked by Baseline::detect")
    }
    fn param(&self, name: &str) -> &[f32] {
        let k = self.sig.params.iter().position(|s| s.name == name).expect("checked by Baseline::detect");
        self.params[k].as_f32().expect("checked by Baseline::detect")
    }
}

/// Seeded inputs (`count` = sequences × T leading entries) and params, drawn in
/// parallel on the current pool: field k (params, then inputs, in declaration order)
/// from `IndexedRng::new(7 + k)`, the same values for any thread count.
fn draw(sig: &Signature, count: usize, steps: usize) -> Result<Data, Fail> {
    let agg = sig.aggregator.as_str();
    let make = |what: &str, field: usize, spec: &FieldSpec, lead: usize| -> Result<Buffer, Fail> {
        let fail = || Fail(format!("error: {what} `{}` is too large to allocate ({lead} × {} entries)\n", spec.name, spec.len));
        let n = lead.checked_mul(spec.len).ok_or_else(fail)?;
        fn alloc<T>(n: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            Some(v)
        }
        let (lo, hi) = match (agg, what, spec.name.as_str()) {
            ("scalar_affine" | "diag_affine", "input", "a") => (0.5, 1.0),
            ("gla", "input", "alpha") => (0.9, 1.0),
            // Mamba-2's A is negative by construction (−exp(A_log)): a positive one grows
            // the state by up to e^0.26 a step, past f32's range within a few hundred.
            ("mamba2", "param", "A") => (-0.2, 0.0),
            (_, "param", _) => (-0.2, 0.2),
            _ => (-1.0, 1.0),
        };
        let rng = IndexedRng::new(7 + field as u64);
        Ok(match spec.dtype {
            Dtype::F32 => {
                let mut v = alloc(n).ok_or_else(fail)?;
                rng.extend(&mut v, n, lo, hi, |x| x);
                Buffer::F32(v)
            }
            Dtype::F64 => {
                let mut v = alloc(n).ok_or_else(fail)?;
                rng.extend(&mut v, n, lo, hi, f64::from);
                Buffer::F64(v)
            }
            Dtype::I32 => {
                let mut v = alloc(n).ok_or_else(fail)?;
                v.par_extend((0..n).into_par_iter().map(|i| ((i / spec.len.max(1)) % steps.max(1)) as i32));
                Buffer::I32(v)
            }
            Dtype::BF16 => {
                let mut v = alloc(n).ok_or_else(fail)?;
                rng.extend(&mut v, n, lo, hi, psm_runtime::half::bf16::from_f32);
                Buffer::BF16(v)
            }
            Dtype::F16 => {
                let mut v = alloc(n).ok_or_else(fail)?;
                rng.extend(&mut v, n, lo, hi, psm_runtime::half::f16::from_f32);
                Buffer::F16(v)
            }
        })
    };
    let params = sig.params.iter().enumerate().map(|(k, s)| make("param", k, s, 1)).collect::<Result<Vec<_>, _>>()?;
    let inputs = sig.inputs.iter().enumerate().map(|(k, s)| make("input", sig.params.len() + k, s, count)).collect::<Result<Vec<_>, _>>()?;
    Ok(Data { inputs, params, sig: sig.clone() })
}

fn inputs_of<'a>(sig: &Signature, data: &'a Data, batch: &[usize], steps: usize) -> Inputs<'a> {
    let mut inputs = Inputs::new(batch, steps);
    for (s, b) in sig.inputs.iter().zip(&data.inputs) {
        inputs = inputs.input(&s.name, b);
    }
    for (s, b) in sig.params.iter().zip(&data.params) {
        inputs = inputs.param(&s.name, b);
    }
    inputs
}

type Timed = (Vec<Buffer>, f64, String, Option<usize>);

/// One form at one pool: a checked run, then the timed runs.
#[allow(clippy::too_many_arguments)]
fn run_form(
    runner: &Runner,
    sig: &Signature,
    data: &Data,
    batch: &[usize],
    steps: usize,
    form: Form,
    pool: &ThreadPool,
    budget: Duration,
    resident: bool,
) -> Result<Timed, Fail> {
    let inputs = inputs_of(sig, data, batch, steps);
    let opts = RunOptions { form, pool: Some(pool), ..Default::default() };
    let fail = |e: psm_runtime::RunError| Fail(format!("error: {e}\n"));
    let out = pool.install(|| runner.run(&inputs, &opts)).map_err(fail)?;
    let (mut form_name, chunk) = (out.form().name().to_string(), out.chunk());
    let seconds = match runner {
        Runner::Cuda(gpu, kernel) => {
            match gpu.choose(&opts, *kernel, batch.iter().product()).map_err(fail)? {
                Chosen::Lookback => form_name = "lookback".into(),
                Chosen::Lanes => form_name = "lanes".into(),
                Chosen::Block => form_name = format!("{form_name}/block"),
                Chosen::Generic => {}
            }
            if resident {
                gpu.time_resident(&inputs, &opts, *kernel, 3, 20).map_err(fail)?.median()
            } else {
                best_time(budget, || {
                    let _ = black_box(runner.run(&inputs, &opts));
                })
                .as_secs_f64()
            }
        }
        Runner::Host(_) => pool
            .install(|| {
                best_time(budget, || {
                    let _ = black_box(runner.run(&inputs, &opts));
                })
            })
            .as_secs_f64(),
    };
    let outputs = out.into_tensors().into_iter().map(|t| t.data).collect();
    Ok((outputs, seconds, form_name, chunk))
}

/// The first output of the operator's own definition, run untimed by the CPU JIT (the
/// runner's, where it runs on the CPU) on the global pool, in f64 (exactly: every
/// output dtype converts without rounding): the recurrent form, or the tree where the
/// operator is not associative (its meaning, which the other forms of psm must equal
/// bit for bit), and which form it was.
fn own_reference(agg: &Aggregator, runner: &Runner, sig: &Signature, data: &Data, batch: &[usize], steps: usize) -> Result<(&'static str, Vec<f64>), Fail> {
    let form = if sig.associative { Form::Recurrent } else { Form::Tree };
    // The runner's own JIT where it is the CPU's: compiled once.
    let compiled;
    let host = match runner {
        Runner::Host(host) if host.backend() == Backend::Cpu => host,
        _ => {
            compiled = agg.with_backend(Backend::Cpu);
            &compiled
        }
    };
    let inputs = inputs_of(sig, data, batch, steps);
    let out = host.run(&inputs, &RunOptions { form, ..Default::default() }).map_err(|e| Fail(format!("error: {e}\n")))?;
    Ok((form.name(), out.tensors().first().map(|t| t.data.to_f64()).unwrap_or_default()))
}

/// A decode loop: a stream opened and pushed one step at a time (every sequence of the
/// batch per push), its outputs returned per push or (`into`) written into one reused
/// buffer per output.
#[allow(clippy::too_many_arguments)]
fn run_push(
    runner: &Runner,
    sig: &Signature,
    data: &Data,
    batch: &[usize],
    steps: usize,
    into: bool,
    pool: &ThreadPool,
    budget: Duration,
) -> Result<Timed, Fail> {
    let nseq: usize = batch.iter().product();
    let per_step = step_major_inputs(sig, data, nseq, steps);
    let decode = |keep: bool| -> Result<Vec<Vec<Buffer>>, psm_runtime::RunError> {
        let mut stream = Decoder::open(runner, sig, data, batch)?;
        let mut kept = Vec::new();
        let mut reused: Vec<Buffer> = sig.outputs.iter().map(|s| Buffer::zeros(s.dtype, nseq * s.len)).collect();
        for step in &per_step {
            let mut inputs = Inputs::new(batch, 1);
            for (s, b) in sig.inputs.iter().zip(step) {
                inputs = inputs.input(&s.name, b);
            }
            if into {
                let mut outputs = OutputsMut::new();
                for (s, b) in sig.outputs.iter().zip(reused.iter_mut()) {
                    outputs = outputs.output(&s.name, b);
                }
                black_box(stream.push_into(&inputs, &mut outputs)?);
                if keep {
                    kept.push(reused.clone());
                }
            } else {
                let out = stream.push(&inputs)?;
                if keep {
                    kept.push(out.into_tensors().into_iter().map(|t| t.data).collect());
                } else {
                    black_box(out);
                }
            }
        }
        Ok(kept)
    };
    let kept = pool.install(|| decode(true)).map_err(|e| Fail(format!("error: {e}\n")))?;
    let t = pool.install(|| {
        best_time(budget, || {
            let _ = black_box(decode(false));
        })
    });
    let outputs = sequence_major_outputs(sig, &kept, nseq, steps);
    Ok((outputs, t.as_secs_f64(), if into { "push_into" } else { "push" }.into(), None))
}

/// Step-major copies of a batch's inputs: the inputs of step t of every sequence,
/// contiguous, per input field.
fn step_major_inputs(sig: &Signature, data: &Data, nseq: usize, steps: usize) -> Vec<Vec<Buffer>> {
(0..steps)
        .map(|t| {
            sig.inputs
                .iter()
                .zip(&data.inputs)
                .map(|(s, buf)| {
                    let mut v = Buffer::zeros(s.dtype, 0);
                    for b in 0..nseq {
                        let from = (b * steps + t) * s.len;
                        match (&mut v, buf) {
                            (Buffer::F32(v), Buffer::F32(x)) => v.extend_from_slice(&x[from..from + s.len]),
                            (Buffer::F64(v), Buffer::F64(x)) => v.extend_from_slice(&x[from..from + s.len]),
                            (Buffer::I32(v), Buffer::I32(x)) => v.extend_from_slice(&x[from..from + s.len]),
                            _ => unreachable!("drawn in the declared dtype"),
                        }
                    }
                    v
                })
                .collect()
        })
        .collect()
}

/// Per-step outputs (every sequence's step t, per output field) back to
/// `[batch..., T, dims...]`.
fn sequence_major_outputs(sig: &Signature, kept: &[Vec<Buffer>], nseq: usize, steps: usize) -> Vec<Buffer> {
    sig
        .outputs
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut full = Buffer::zeros(s.dtype, nseq * steps * s.len);
            for (t, outs) in kept.iter().enumerate() {
                for b in 0..nseq {
                    let (src, dst) = (b * s.len, (b * steps + t) * s.len);
                    match (&mut full, &outs[k]) {
                        (Buffer::F32(f), Buffer::F32(o)) => f[dst..dst + s.len].copy_from_slice(&o[src..src + s.len]),
                        (Buffer::F64(f), Buffer::F64(o)) => f[dst..dst + s.len].copy_from_slice(&o[src..src + s.len]),
                        (Buffer::I32(f), Buffer::I32(o)) => f[dst..dst + s.len].copy_from_slice(&o[src..src + s.len]),
                        _ => unreachable!("outputs in the declared dtype"),
                    }
                }
            }
            full
        })
        .collect()
}

/// A decode loop on the device with nothing copied per push: every step's inputs
/// uploaded once ([`DeviceStream::upload`](psm_runtime::cuda::DeviceStream::upload)),
/// then `steps` pushes of a stream (`push_resident`) into outputs left on the device.
/// The outputs of a first pass are checked; timed is the wall clock of `steps` pushes
/// and a final synchronisation (launches included), the best of repeated passes of the
/// same stream (decoding on).
fn run_push_resident(gpu: &CudaExecutor, kernel: CudaKernel, sig: &Signature, data: &Data, batch: &[usize], steps: usize, budget: Duration) -> Result<Timed, Fail> {
    let fail = |e: psm_runtime::RunError| Fail(format!("error: {e}\n"));
    let nseq: usize = batch.iter().product();
    let params: Vec<(String, psm_runtime::Data<'_>)> = sig.params.iter().zip(&data.params).map(|(s, b)| (s.name.clone(), b.as_data())).collect();
    let mut stream = gpu.stream_with(batch, &params, None, kernel).map_err(fail)?;
    let staged = step_major_inputs(sig, data, nseq, steps)
        .iter()
        .map(|step| {
            let inputs = sig.inputs.iter().zip(step).fold(Inputs::new(batch, 1), |x, (s, b)| x.input(&s.name, b));
            stream.upload(&inputs)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let mut outs = (0..steps).map(|_| stream.output_buffers(1)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    let pass = |stream: &mut psm_runtime::cuda::DeviceStream, outs: &mut [psm_runtime::cuda::DeviceSteps]| -> Result<(), psm_runtime::RunError> {
        for (x, o) in staged.iter().zip(outs.iter_mut()) {
            stream.push_resident(x, o)?;
        }
        gpu.device().synchronize()
    };
    pass(&mut stream, &mut outs).map_err(fail)?;
    let kept = outs
        .iter()
        .map(|o| Ok(stream.download(o)?.into_iter().map(|t| t.data).collect()))
        .collect::<Result<Vec<Vec<Buffer>>, psm_runtime::RunError>>()
        .map_err(fail)?;
    let mut failed = None;
    let t = best_time(budget, || {
        if let Err(e) = pass(&mut stream, &mut outs) {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(fail(e));
    }
    Ok((sequence_major_outputs(sig, &kept, nseq, steps), t.as_secs_f64(), "push".into(), None))
}

/// A stream on the runner's backend (boxed: the two differ in size by hundreds of bytes).
enum Decoder {
    Host(Box<psm_runtime::Stream>),
    Cuda(Box<psm_runtime::cuda::DeviceStream>),
}

impl Decoder {
    fn open(runner: &Runner, sig: &Signature, data: &Data, batch: &[usize]) -> Result<Decoder, psm_runtime::RunError> {
        match runner {
            Runner::Host(agg) => {
                let mut builder = agg.stream(batch);
                for (s, b) in sig.params.iter().zip(&data.params) {
                    builder = builder.param(&s.name, b);
                }
                builder.open().map(|s| Decoder::Host(Box::new(s)))
            }
            Runner::Cuda(gpu, kernel) => {
                let params: Vec<(String, psm_runtime::Data<'_>)> = sig.params.iter().zip(&data.params).map(|(s, b)| (s.name.clone(), b.as_data())).collect();
                gpu.stream_with(batch, &params, None, *kernel).map(|s| Decoder::Cuda(Box::new(s)))
            }
        }
    }

    fn push(&mut self, inputs: &Inputs<'_>) -> Result<psm_runtime::Outputs, psm_runtime::RunError> {
        match self {
            Decoder::Host(s) => s.push(inputs),
            Decoder::Cuda(s) => s.push(inputs),
        }
    }

    /// Only host streams write into caller buffers (the CUDA modes skip `push_into`).
    fn push_into(&mut self, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>) -> Result<(), psm_runtime::RunError> {
        match self {
            Decoder::Host(s) => s.push_into(inputs, outputs).map(drop),
            Decoder::Cuda(_) => unreachable!("push_into modes are skipped on the CUDA backend"),
        }
    }
}

/// Whether psm's outputs are bit for bit the hand-written loop's (NaN equal to NaN).
fn bit_identical(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.par_iter().zip(want).all(|(a, e)| a.to_bits() == e.to_bits() || (a.is_nan() && e.is_nan()))
}

/// Steps per block of [`max_rel_err`]'s parallel pass.
const CHECK_BLOCK_STEPS: usize = 1 << 14;

/// The largest error of `got` against `want` in psm's normalization, |got − want| /
/// (|want| + running max |want| along the sequence): psm's tolerance for rebracketed
/// forms bounds it by 1e-5·max(1, log2 T).
fn max_rel_err<G: Copy + Into<f64> + Sync, W: Copy + Into<f64> + Sync>(got: &[G], want: &[W], nseq: usize, steps: usize, width: usize) -> f64 {
    max_rel_err_in_blocks(got, want, nseq, steps, width, CHECK_BLOCK_STEPS)
}

/// [`max_rel_err`] over blocks of `block_steps` steps in parallel (on the current pool):
/// each block starts from the running max |want| of its sequence's earlier blocks, so
/// the result is the sequential pass's, for any block size.
fn max_rel_err_in_blocks<G: Copy + Into<f64> + Sync, W: Copy + Into<f64> + Sync>(
    got: &[G],
    want: &[W],
    nseq: usize,
    steps: usize,
    width: usize,
    block_steps: usize,
) -> f64 {
    if got.len() != want.len() || got.len() != nseq * steps * width {
        return f64::INFINITY;
    }
    if got.is_empty() {
        return 0.0;
    }
    let (seq_len, block) = (steps * width, block_steps * width);
    let per_seq = seq_len.div_ceil(block);
    let range = |k: usize| {
        let start = (k / per_seq) * seq_len + (k % per_seq) * block;
        start..(start + block).min((k / per_seq + 1) * seq_len)
    };
    let peak = |w: &[W], from: f64| w.iter().fold(from, |m, v| m.max((*v).into().abs()));
    let peaks: Vec<f64> = (0..nseq * per_seq).into_par_iter().map(|k| peak(&want[range(k)], 0.0)).collect();
    // The running max before each block, restarting at every sequence.
    let mut before = vec![0.0f64; peaks.len()];
    for (b, p) in before.chunks_mut(per_seq).zip(peaks.chunks(per_seq)) {
        for j in 1..per_seq {
            b[j] = b[j - 1].max(p[j - 1]);
        }
    }
    (0..nseq * per_seq)
        .into_par_iter()
        .map(|k| {
            let r = range(k);
            let (mut scale, mut rel) = (before[k], 0.0f64);
            for (g, w) in got[r.clone()].chunks(width).zip(want[r].chunks(width)) {
                scale = peak(w, scale);
                for (&a, &e) in g.iter().zip(w) {
                    let (a, e): (f64, f64) = (a.into(), e.into());
                    if a == e || (a.is_nan() && e.is_nan()) {
                        continue;
                    }
                    let d = (a - e).abs();
                    let unit = e.abs() + scale;
                    rel = rel.max(if d.is_nan() { f64::INFINITY } else if unit > 0.0 { d / unit } else { f64::INFINITY });
                }
            }
            rel
        })
        .reduce(|| 0.0, f64::max)
}

/// A hand-written loop for a library operator.
enum Baseline {
    Cumsum,
    ScalarAffine,
    DiagAffine { d: usize },
    Logcumsumexp,
    Gla { k: usize, v: usize },
    Attn { c: usize, d: usize },
}

impl Baseline {
    /// The baseline for an aggregator of the library's name and signature.
    fn detect(sig: &Signature) -> Option<Baseline> {
        let f32s = |specs: &[FieldSpec]| specs.iter().all(|s| s.dtype == Dtype::F32);
        if !f32s(&sig.inputs) || !f32s(&sig.params) || sig.outputs.len() != 1 || !f32s(&sig.outputs) {
            return None;
        }
        fn names(specs: &[FieldSpec]) -> Vec<&str> {
            specs.iter().map(|s| s.name.as_str()).collect()
        }
        let shapes = |specs: &[FieldSpec]| specs.iter().map(|s| s.shape.clone()).collect::<Vec<_>>();
        let (ins, params, out) = (names(&sig.inputs), names(&sig.params), &sig.outputs[0]);
        let scalar = |n: &[&str]| ins == n && sig.inputs.iter().all(|s| s.len == 1) && out.len == 1 && params.is_empty();
        match sig.aggregator.as_str() {
            "cumsum" if scalar(&["v"]) => Some(Baseline::Cumsum),
            "scalar_affine" if scalar(&["a", "b"]) => Some(Baseline::ScalarAffine),
            "logcumsumexp" if scalar(&["v"]) => Some(Baseline::Logcumsumexp),
            "diag_affine" if ins == ["a", "b"] && params.is_empty() => {
                let d = sig.inputs[0].len;
                (shapes(&sig.inputs) == [vec![d], vec![d]] && out.shape == [d]).then_some(Baseline::DiagAffine { d })
            }
            "gla" if ins == ["q", "k", "v", "alpha"] && params.is_empty() => {
                let (k, v) = (sig.inputs[0].len, sig.inputs[2].len);
                (shapes(&sig.inputs) == [vec![k], vec![k], vec![v], vec![k]] && out.shape == [v]).then_some(Baseline::Gla { k, v })
            }
            "attn_agg" if ins == ["tok"] && params == ["wq", "wk", "wv"] => {
                let s = &sig.inputs[0].shape;
                let (c, d) = (*s.first()?, *s.get(1)?);
                let square = sig.params.iter().all(|p| p.shape == [d, d]);
                (s.len() == 2 && square && out.shape == [c, d]).then_some(Baseline::Attn { c, d })
            }
            _ => None,
        }
    }

    /// Every sequence's outputs (`[nseq, T, out dims]`), allocated here as a user would;
    /// in parallel over the sequences (on the current pool) when `par`.
    fn run_all(&self, data: &Data, nseq: usize, steps: usize, out_len: usize, stream: bool, par: bool) -> Vec<f32> {
        let mut y = vec![0.0f32; nseq * out_len];
        self.run_into(data, steps, out_len, stream, par, &mut y);
        y
    }

    /// [`Baseline::run_all`] into `y` (`[nseq, T, out dims]`, `out_len` per sequence).
    fn run_into(&self, data: &Data, steps: usize, out_len: usize, stream: bool, par: bool, y: &mut [f32]) {
        if out_len == 0 {
            return;
        }
        if par {
            y.par_chunks_mut(out_len).enumerate().for_each(|(b, out)| self.run_seq(data, b, steps, stream, out));
        } else {
            for (b, out) in y.chunks_mut(out_len).enumerate() {
                self.run_seq(data, b, steps, stream, out);
            }
        }
    }

    /// Every sequence's outputs folded in f64 (`None` for the attention aggregator,
    /// which is not associative: its forms are checked bit for bit), the sequences in
    /// parallel on the current pool.
    fn fold_f64(&self, data: &Data, nseq: usize, t: usize, width: usize) -> Option<Vec<f64>> {
        use baselines::f64_fold;
        if let Baseline::Attn { .. } = self {
            return None;
        }
        let mut all = filled(nseq * t * width, 0.0f64);
        if t * width == 0 {
            return Some(all);
        }
        all.par_chunks_mut(t * width).enumerate().for_each(|(b, y)| {
            let seq = |name: &str, width: usize| &data.input(name)[b * t * width..(b + 1) * t * width];
            match *self {
                Baseline::Cumsum => f64_fold::cumsum(seq("v", 1), y),
                Baseline::ScalarAffine => f64_fold::scalar_affine(seq("a", 1), seq("b", 1), y),
                Baseline::DiagAffine { d } => f64_fold::diag_affine(seq("a", d), seq("b", d), y, d),
                Baseline::Logcumsumexp => f64_fold::logcumsumexp(seq("v", 1), y),
                Baseline::Gla { k, v } => f64_fold::gla(seq("q", k), seq("k", k), seq("v", v), seq("alpha", k), y, t, k, v),
                Baseline::Attn { .. } => unreachable!("returned above"),
            }
        });
        Some(all)
    }

    /// Sequence b's outputs.
    fn run_seq(&self, data: &Data, b: usize, t: usize, stream: bool, out: &mut [f32]) {
        let seq = |name: &str, width: usize| &data.input(name)[b * t * width..(b + 1) * t * width];
        match *self {
            Baseline::Cumsum => baselines::cumsum(seq("v", 1), out, t),
            Baseline::ScalarAffine => baselines::scalar_affine(seq("a", 1), seq("b", 1), out, t),
            Baseline::DiagAffine { d } => baselines::diag_affine(seq("a", d), seq("b", d), out, t, d),
            Baseline::Logcumsumexp => baselines::logcumsumexp(seq("v", 1), out, t),
            Baseline::Gla { k, v } => baselines::gla(seq("q", k), seq("k", k), seq("v", v), seq("alpha", k), out, t, k, v),
            Baseline::Attn { c, d } => {
                let w = baselines::AttnWeights { wq: data.param("wq"), wk: data.param("wk"), wv: data.param("wv"), c, d };
                let tok = seq("tok", c * d);
                let prefixes = if stream { baselines::attn_stream(&w, tok) } else { baselines::attn_tree(&w, tok) };
                let size = c * d;
                for (j, p) in prefixes.iter().enumerate() {
                    baselines::attn_readout(p.as_deref(), &tok[j * size..(j + 1) * size], &mut out[j * size..(j + 1) * size], c, d);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- output

fn dims_label(dims: &[(String, i64)]) -> String {
    if dims.is_empty() {
        String::new()
    } else {
        format!("<{}>", dims.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(","))
    }
}

fn shape_text(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn time_text(s: f64) -> String {
    if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(x.to_string())
    }
}

fn row_json(r: &Row) -> serde_json::Value {
    let dims: serde_json::Map<String, serde_json::Value> = r.dims.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
    let bps = r.bytes as f64 / r.seconds;
    json!({
        "operator": r.operator,
        "dims": dims,
        "shape": r.shape,
        "form": r.form,
        "chunk": r.chunk,
        "threads": r.threads,
        "seconds": r.seconds,
        "seconds_per_step": r.seconds / r.steps.max(1) as f64,
        "baseline_seconds": r.baseline.map(|b| b.0),
        "baseline_threads": r.baseline.map(|b| b.1),
        "ratio": r.baseline.map(|b| b.0 / r.seconds),
        "elements_per_second": r.steps as f64 / r.seconds,
        "bytes": r.bytes,
        "bytes_per_second": bps,
        "copy_bytes_per_second": r.copy_bps,
        "fraction_of_copy": bps / r.copy_bps,
        "speedup_vs_1_thread": r.speedup,
        "speedup_vs_best_1_thread": r.speedup_best,
        "identical": r.check.map(|c| c.identical),
        "within_tolerance": r.check.map(|c| c.ok()),
        "baseline_max_rel_err": r.check.and_then(|c| c.hand_rel).map(finite),
        "reference": r.check.map(|c| c.reference),
        "max_rel_err": r.check.map(|c| finite(c.max_rel_err)),
        "tolerance": r.check.map(|c| c.tolerance),
    })
}

fn table(rows: &[Row], k: usize, total: f64) -> String {
    const HEAD: [&str; 14] = [
        "operator", "shape", "form", "thr", "psm", "ns/step", "hand", "hand/psm", "psm GB/s", "copy GB/s", "of copy", "×1 thr", "×best 1", "check",
    ];
    let cells: Vec<[String; 14]> = rows
        .iter()
        .map(|r| {
            let bps = r.bytes as f64 / r.seconds;
            let form = match r.chunk {
                Some(c) => format!("{}/{c}", r.form),
                None => r.form.clone(),
            };
            let x = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            [
                format!("{}{}", r.operator, dims_label(&r.dims)),
                shape_text(&r.shape),
                form,
                r.threads.to_string(),
                time_text(r.seconds),
                format!("{:.2}", r.seconds / r.steps.max(1) as f64 * 1e9),
                r.baseline.map_or("-".into(), |(t, n)| if n > 1 { format!("{} ({n}t)", time_text(t)) } else { time_text(t) }),
                x(r.baseline.map(|b| b.0 / r.seconds)),
                format!("{:.2}", bps / 1e9),
                format!("{:.2}", r.copy_bps / 1e9),
                format!("{:.2}", bps / r.copy_bps),
                x(r.speedup),
                x(r.speedup_best),
                r.check.map_or("-".into(), |c| c.text()),
            ]
        })
        .collect();
    let mut widths = HEAD.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = " ".repeat(w - c.chars().count());
            let text = if (3..=12).contains(&i) { format!("{pad}{c}") } else { format!("{c}{pad}") };
            out.push_str(if i == 0 { "" } else { "  " });
            out.push_str(&text);
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(&mut out, &HEAD.map(String::from));
    for row in &cells {
        line(&mut out, row);
    }
    let _ = writeln!(
        out,
        "\npsm: psm-runtime with the Cranelift JIT; hand: psm_bench::baselines (rayon over the batch at {k} threads, \
         marked (Nt)); hand/psm > 1: psm faster.\n\
         GB/s: (inputs + outputs) bytes per second; copy: memcpy of a buffer of the same bytes, measured in this run; \
         ×1 thr: over the same form at 1 thread; ×best 1: over the case's fastest 1-thread psm row.\n\
         check: psm's outputs against the hand-written loop's: bit-identical, or within psm's tolerance of the f64 fold, \
         max(1e-5·log2 T, 2 × the hand-written f32 loop's own error) (relative); without a hand-written loop, against \
         the operator's own recurrent form (tree if not associative, bit for bit on the CPU), run apart on the CPU.\n\
         total {total:.1} s"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool")
    }

    fn signature(file: &str, dims: &[(&str, i64)]) -> Signature {
        let dims: Vec<DimOverride> = dims.iter().map(|(n, v)| DimOverride { name: (*n).into(), value: *v }).collect();
        let (agg, _) = crate::run::load_aggregator(&ops_dir().join(file), &dims, None, "bench").expect("a library operator");
        agg.signature()
    }

    /// The inputs and params drawn on 1, 2 and 3 threads are the same, and the fields
    /// differ from each other.
    #[test]
    fn drawn_data_do_not_depend_on_the_thread_count() {
        let sig = signature("gla.psm", &[("K", 4), ("V", 3)]);
        let drawn = |threads: usize| pool(threads).install(|| draw(&sig, 3 * 1000, 1000)).unwrap_or_else(|Fail(e)| panic!("{e}"));
        let one = drawn(1);
        for threads in [2, 3] {
            let other = drawn(threads);
            assert_eq!(other.inputs, one.inputs, "{threads} threads");
            assert_eq!(other.params, one.params, "{threads} threads");
        }
        assert_ne!(one.input("q"), one.input("k"), "each field has its own seed");
        assert!(one.input("alpha").iter().all(|a| (0.9..1.0).contains(a)));
    }

    /// Any block size gives the sequential pass's error: NaNs matched or not, several
    /// sequences and widths. Each sequence opens with |want| = 8, so that every later
    /// block must start from that running max (its small |want| would otherwise give
    /// the absolute errors of `got` large relative errors).
    #[test]
    fn blocked_max_rel_err_is_the_sequential_one() {
        for (nseq, steps, width) in [(1, 17, 1), (3, 10, 2), (2, 1, 3)] {
            let n = nseq * steps * width;
            let rng = IndexedRng::new(nseq as u64);
            let mut want: Vec<f64> = (0..n).map(|i| rng.uniform(i, -1.0, 1.0) as f64).collect();
            want.chunks_mut(steps * width).for_each(|s| s[..width].fill(8.0));
            let mut got: Vec<f32> = want.iter().enumerate().map(|(i, &w)| (w + 1e-3 * rng.uniform(n + i, -1.0, 1.0) as f64) as f32).collect();
            want[n / 2 + 1] = f64::NAN;
            got[n / 2 + 1] = f32::NAN;
            let whole = max_rel_err_in_blocks(&got, &want, nseq, steps, width, steps);
            assert!(whole > 0.0 && whole.is_finite(), "{whole}");
            for block in [1, 2, 3, steps + 4] {
                assert_eq!(max_rel_err_in_blocks(&got, &want, nseq, steps, width, block).to_bits(), whole.to_bits(), "{nseq} {steps} {width} {block}");
            }
            got[0] = f32::NAN;
            assert_eq!(max_rel_err_in_blocks(&got, &want, nseq, steps, width, 2), f64::INFINITY);
        }
        assert_eq!(max_rel_err(&[1.0], &[1.0f32, 2.0], 1, 2, 1), f64::INFINITY, "lengths differ");
        assert_eq!(max_rel_err::<f32, f32>(&[], &[], 0, 5, 1), 0.0);
    }

    /// The f64 fold of a batch is each sequence's fold on its own.
    #[test]
    fn batched_f64_fold_is_per_sequence() {
        let sig = signature("diag_affine.psm", &[("D", 2)]);
        let (nseq, t, d) = (3, 50, 2);
        let data = draw(&sig, nseq * t, t).unwrap_or_else(|Fail(e)| panic!("{e}"));
        let folded = Baseline::detect(&sig).expect("the library's diag_affine").fold_f64(&data, nseq, t, d).expect("associative");
        for b in 0..nseq {
            let seq = |name: &str| &data.input(name)[b * t * d..(b + 1) * t * d];
            let mut alone = vec![0.0f64; t * d];
            baselines::f64_fold::diag_affine(seq("a"), seq("b"), &mut alone, d);
            assert_eq!(folded[b * t * d..(b + 1) * t * d], alone[..], "sequence {b}");
        }
    }
}
