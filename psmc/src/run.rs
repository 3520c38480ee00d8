//! `psmc run`: compile one aggregator of a .psm file for the CPU (or the interpreter, or
//! CUDA device 0 with `--backend cuda`) and run it on seeded random data or on .npy files; optionally compare with the
//! reference interpreter, print counts, and write the outputs as .npy.
//!
//! Data: inputs are `[batch..., T, field dims...]`, params as declared. Given .npy
//! inputs fix the batch shape and T; missing ones are drawn from a seeded generator
//! (splitmix64): f32/f64 uniform in (-1, 1) (bf16/f16: those values rounded to the
//! format), i32 fields hold the step index. Dtypes must match the declarations (no
//! implicit conversion). .npy type strings: `<f4`, `<f8`, `<i4`, `<f2` (f16), and for
//! bf16, which numpy has no type string for, its bit patterns as `<u2` (read and
//! written; `a.view(np.uint16)` of an `ml_dtypes.bfloat16` array, read back with
//! `np.load(p).view(ml_dtypes.bfloat16)`) or `|V2` (read; what `np.save` writes for
//! an `ml_dtypes.bfloat16` array).
//!
//! `--compare` runs psm-ir's reference driver per sequence: the F64 fold for
//! associative operators, checked against psm's tolerance (`psm_runtime::accuracy`)
//! |out − ref| ≤ tol·(|ref| + running max |ref|), tol = max(1e-5·max(1, log2 T), 2·e32) + u
//! with e32 the same error of the f32 sequential fold on the data (the operator's
//! condition factor: log-cumsum-exp over millions of steps meets no better bound) and u
//! one unit in the last place at 1 of a bf16 (2^-7) or f16 (2^-10) output, else 0; the fixed tree in
//! declared precision for non-associative ones, which must match bit for bit on the CPU
//! backends (on the GPU, whose transcendental functions are not the CPU's libm, within
//! the same tolerance).
//! `max_rel_err` is |out − ref| / (|ref| + running max |ref| of that output), the
//! normalization of the tolerance, so entries near zero do not blow it up.
//!
//! `--format json` prints one object: `file`, `aggregator`, `dims` (name → value),
//! `backend` (`cpu`/`interp`/`cuda`), `associative`, `form` (the form that ran), `chunk`
//! (chunked only, else null), `batch`, `len`, `seed`, `compile_seconds`, `seconds` (the
//! run alone; with `cuda` the copies to and from the device included), `elements_per_second` (steps of all sequences per second),
//! `combines_per_step`, `peak_elements` (most elements one sequence held),
//! `max_abs_err` and `max_rel_err` (null without `--compare`; "inf"/"NaN" as strings),
//! `compare` (null, or `reference`, `tolerance` (null for bit-identity), `bit_identical`,
//! `ok`), and `outputs` (`name`, `shape`, `dtype`, `path` of the written .npy or null).
//!
//! Exit codes: 0 success; 1 errors in the input (diagnostics, unreadable or mismatched
//! .npy files, run errors) or a failed comparison; 2 usage errors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use psm_ir::derive::{self, Form as RefForm};
use psm_ir::interp::{FloatDomain, Precision};
use psm_ir::ir::Dtype;
use psm_runtime::cuda::CudaKernel;
use psm_runtime::half::{bf16, f16};
use psm_runtime::{accuracy, Backend, Buffer, FieldSpec, Form, Inputs, Program, RunOptions, Signature};
use serde_json::json;

use crate::Fail;

#[derive(Args)]
pub struct RunArgs {
    /// The .psm file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The aggregator to run [default: the file's only aggregator]
    #[arg(long, value_name = "NAME")]
    aggregator: Option<String>,
    #[command(flatten)]
    dims: crate::Dims,
    /// Steps per sequence, T [default: 64, or the steps of the --input files]
    #[arg(long, value_name = "N")]
    len: Option<usize>,
    /// Batch shape, `B` or `B1,B2,...` [default: one sequence, or that of the --input files]
    #[arg(long, value_name = "B", value_parser = parse_shape)]
    batch: Option<Shape>,
    /// Seed of the random inputs and params
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Read an input field from a .npy file shaped [batch..., T, field dims...] (repeatable)
    #[arg(long = "input", value_name = "FIELD=PATH.npy", value_parser = parse_assign)]
    inputs: Vec<(String, PathBuf)>,
    /// Read a param from a .npy file shaped as declared (repeatable)
    #[arg(long = "param", value_name = "NAME=PATH.npy", value_parser = parse_assign)]
    params: Vec<(String, PathBuf)>,
    /// Write each output as DIR/NAME.npy
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// The form to run
    #[arg(long, value_enum, default_value_t = FormArg::Auto)]
    form: FormArg,
    /// Steps per chunk of the chunked form [default: chosen from T, batch and threads]
    #[arg(long, value_name = "STEPS")]
    chunk: Option<usize>,
    /// Threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The implementation that runs
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// The CUDA kernels (with --backend cuda)
    #[arg(long, value_enum, default_value_t = KernelArg::Auto)]
    kernel: KernelArg,
    /// Compare the outputs with the reference interpreter (max_abs_err, max_rel_err)
    #[arg(long)]
    compare: bool,
    /// Print combines per step and the peak number of stored elements
    #[arg(long)]
    stats: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = crate::Format::Human)]
    format: crate::Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormArg {
    /// Recurrent for associative operators at batch ≥ threads or short T, chunked for long ones, tree otherwise
    Auto,
    /// One fused scan per sequence (associative operators)
    Recurrent,
    /// 3-phase chunked scan (associative operators)
    Chunked,
    /// The fixed Blelloch tree
    Tree,
    /// The binary counter (non-associative) or one running element (associative)
    Stream,
    /// Matrix products over chunks, derived for the linear-attention family (`psmc check` says whether it applies)
    Chunkwise,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    /// Native code from the Cranelift JIT
    Cpu,
    /// The reference interpreter in declared precision (slow)
    Interp,
    /// PTX on CUDA device 0 (inputs copied to the device and outputs back in every run)
    Cuda,
}

impl BackendArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BackendArg::Cpu => "cpu",
            BackendArg::Interp => "interp",
            BackendArg::Cuda => "cuda",
        }
    }
}

/// Which CUDA kernels run (psm_runtime::cuda::select).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KernelArg {
    /// psm-runtime's choice: for associative operators the look-back scan or the lanes
    /// kernel where they apply, else the block kernels for matrix-valued elements, else
    /// the generic kernels of the form
    Auto,
    /// The generic kernels of the form
    Generic,
    /// The single-pass look-back scan (forms auto and chunked, no --chunk)
    Lookback,
    /// A thread per (sequence, chunk, vector entry) (forms auto, recurrent and chunked)
    Lanes,
    /// A thread block per (sequence, chunk) or per combine, the element in shared memory
    /// (matrix-valued elements; auto takes it for them)
    Block,
}

impl KernelArg {
    pub(crate) fn cuda(self) -> CudaKernel {
        match self {
            KernelArg::Auto => CudaKernel::Auto,
            KernelArg::Generic => CudaKernel::Generic,
            KernelArg::Lookback => CudaKernel::Lookback,
            KernelArg::Lanes => CudaKernel::Lanes,
            KernelArg::Block => CudaKernel::Block,
        }
    }
}

/// What runs an aggregator: a host backend, or a CUDA device with a kernel choice.
pub(crate) enum Runner {
    Host(psm_runtime::Aggregator),
    Cuda(psm_runtime::cuda::CudaExecutor, CudaKernel),
}

impl Runner {
    /// Compiles `agg` for the backend (a CUDA device is opened here).
    pub(crate) fn new(agg: &psm_runtime::Aggregator, backend: BackendArg, kernel: KernelArg) -> Result<Runner, psm_runtime::RunError> {
        if kernel != KernelArg::Auto && backend != BackendArg::Cuda {
            return Err(psm_runtime::RunError::InvalidOption { option: "kernel", message: "--kernel chooses CUDA kernels; use it with --backend cuda".into() });
        }
        match backend {
            BackendArg::Cpu | BackendArg::Interp => {
                let host = agg.with_backend(if backend == BackendArg::Cpu { Backend::Cpu } else { Backend::Interp });
                host.compile()?;
                Ok(Runner::Host(host))
            }
            BackendArg::Cuda => Ok(Runner::Cuda(agg.cuda(&psm_runtime::cuda::Device::open(0)?)?, kernel.cuda())),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Runner::Host(agg) => agg.backend().name(),
            Runner::Cuda(..) => BackendArg::Cuda.name(),
        }
    }

    pub(crate) fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<psm_runtime::Outputs, psm_runtime::RunError> {
        match self {
            Runner::Host(agg) => agg.run(inputs, opts),
            Runner::Cuda(gpu, kernel) => gpu.run_with(inputs, opts, *kernel),
        }
    }

    /// Whether a non-associative operator's outputs equal the interpreter's bit for
    /// bit: the host backends compute exactly what it does; the GPU's transcendental
    /// functions differ from the CPU's libm in the last bits.
    pub(crate) fn bit_exact(&self) -> bool {
        matches!(self, Runner::Host(_))
    }
}

/// A batch shape (a newtype, so that clap takes it as one value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape(pub(crate) Vec<usize>);

pub(crate) fn parse_shape(s: &str) -> Result<Shape, String> {
    s.split(',')
        .map(|d| d.trim().parse::<usize>().map_err(|_| format!("`{s}` is not a batch shape; expected `B` or `B1,B2,...`, e.g. `--batch 4`")))
        .collect::<Result<Vec<_>, _>>()
        .map(Shape)
}

fn parse_assign(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.is_empty() => Ok((name.trim().to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH.npy, e.g. `--input q=q.npy`, got `{s}`")),
    }
}

pub fn run(args: RunArgs) -> ExitCode {
    crate::report(execute(&args))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in (-1, 1).
    fn signed(&mut self) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Random data of one tensor (`count` leading entries: batch × T for inputs, 1 for
/// params); i32 fields hold the step index. An error when it cannot be allocated.
fn random(what: &str, spec: &FieldSpec, count: usize, steps: usize, rng: &mut Rng) -> Result<Buffer, Fail> {
    let fail = || Fail(format!("error: {what} `{}` is too large to allocate ({count} × {} entries)\n", spec.name, spec.len));
    let n = count.checked_mul(spec.len).ok_or_else(fail)?;
    fn alloc<T>(n: usize) -> Option<Vec<T>> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).ok()?;
        Some(v)
    }
    Ok(match spec.dtype {
        Dtype::F32 => {
            let mut v = alloc(n).ok_or_else(fail)?;
            v.extend((0..n).map(|_| rng.signed() as f32));
            Buffer::F32(v)
        }
        Dtype::F64 => {
            let mut v = alloc(n).ok_or_else(fail)?;
            v.extend((0..n).map(|_| rng.signed()));
            Buffer::F64(v)
        }
        Dtype::I32 => {
            let mut v = alloc(n).ok_or_else(fail)?;
            v.extend((0..n).map(|k| ((k / spec.len.max(1)) % steps.max(1)) as i32));
            Buffer::I32(v)
        }
        Dtype::BF16 => {
            let mut v = alloc(n).ok_or_else(fail)?;
            v.extend((0..n).map(|_| bf16::from_f32(rng.signed() as f32)));
            Buffer::BF16(v)
        }
        Dtype::F16 => {
            let mut v = alloc(n).ok_or_else(fail)?;
            v.extend((0..n).map(|_| f16::from_f32(rng.signed() as f32)));
            Buffer::F16(v)
        }
    })
}

/// The dtype a .npy type string holds. bf16 has no numpy type string: psm reads and
/// writes it as its bit patterns, `<u2` (`a.view(np.uint16)` of an `ml_dtypes.bfloat16`
/// array, read back with `.view(ml_dtypes.bfloat16)`), and also reads `|V2`, what
/// `np.save` writes for an `ml_dtypes.bfloat16` array.
fn npy_dtype(descr: &str) -> Option<Dtype> {
    match descr {
        "<f4" | "|f4" => Some(Dtype::F32),
        "<f8" | "|f8" => Some(Dtype::F64),
        "<i4" | "|i4" => Some(Dtype::I32),
        "<f2" | "|f2" => Some(Dtype::F16),
        "<u2" | "|u2" | "|V2" => Some(Dtype::BF16),
        _ => None,
    }
}

/// How to write an array of a dtype with numpy, for messages.
fn numpy_type(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "a.astype(np.float32)",
        Dtype::F64 => "a.astype(np.float64)",
        Dtype::I32 => "a.astype(np.int32)",
        Dtype::F16 => "a.astype(np.float16)",
        Dtype::BF16 => "a.astype(ml_dtypes.bfloat16).view(np.uint16)",
    }
}

/// Reads a C-order little-endian .npy of f32, f64, i32, f16 or bf16 (see
/// [`npy_dtype`]): (shape, data).
fn read_npy(what: &str, path: &Path, expected: Dtype) -> Result<(Vec<usize>, Buffer), Fail> {
    let fail = |m: String| Fail(format!("error: cannot read {what} from {}: {m}\n", path.display()));
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| fail(e.to_string()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        return Err(fail("the array is in Fortran order; save it C-contiguous (np.ascontiguousarray)".into()));
    }
    let descr = npy.dtype().descr();
    let descr = descr.trim_matches('\'').to_string();
    let Some(dtype) = npy_dtype(&descr) else {
        return Err(fail(format!(
            "unsupported dtype `{descr}`; psm reads little-endian float32, float64, int32, float16, and bfloat16 as uint16 bit patterns"
        )));
    };
    if dtype != expected {
        return Err(fail(format!(
            "the file holds {} but {what} is declared {}; convert it first (e.g. {})",
            dtype.name(),
            expected.name(),
            numpy_type(expected)
        )));
    }
    let read = |e: std::io::Error| fail(e.to_string());
    let data = match dtype {
        Dtype::F32 => Buffer::F32(npy.into_vec::<f32>().map_err(read)?),
        Dtype::F64 => Buffer::F64(npy.into_vec::<f64>().map_err(read)?),
        Dtype::I32 => Buffer::I32(npy.into_vec::<i32>().map_err(read)?),
        Dtype::F16 => Buffer::F16(npy.into_vec::<f16>().map_err(read)?),
        Dtype::BF16 if descr == "|V2" => {
            let raw = npy.into_vec::<Vec<u8>>().map_err(read)?;
            Buffer::BF16(raw.iter().map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect())
        }
        Dtype::BF16 => Buffer::BF16(npy.into_vec::<u16>().map_err(read)?.into_iter().map(bf16::from_bits).collect()),
    };
    Ok((shape, data))
}

fn write_npy(path: &Path, shape: &[usize], data: &Buffer) -> Result<(), Fail> {
    use npyz::WriterBuilder;
    let fail = |e: std::io::Error| Fail(format!("error: cannot write {}: {e}\n", path.display()));
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut out = std::io::BufWriter::new(file);
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    macro_rules! write {
        ($v:expr, $t:ty) => {{
            let mut w = npyz::WriteOptions::<$t>::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(fail)?;
            w.extend($v.iter().copied()).map_err(fail)?;
            w.finish().map_err(fail)?;
        }};
    }
    match data {
        Buffer::F32(v) => write!(v, f32),
        Buffer::F64(v) => write!(v, f64),
        Buffer::I32(v) => write!(v, i32),
        Buffer::F16(v) => write!(v, f16),
        // Bit patterns as `<u2` (see `npy_dtype`).
        Buffer::BF16(v) => write!(v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>(), u16),
    }
    std::io::Write::flush(&mut out).map_err(fail)?;
    Ok(())
}

fn shape_text(s: &[usize]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// The data of a run: buffers in declaration order, the batch shape and T.
struct Data {
    batch: Vec<usize>,
    steps: usize,
    inputs: Vec<Buffer>,
    params: Vec<Buffer>,
}

fn gather(args: &RunArgs, sig: &Signature) -> Result<Data, Fail> {
    let agg = &sig.aggregator;
    let mut given_inputs: Vec<(usize, Vec<usize>, Buffer)> = Vec::new();
    for (name, path) in &args.inputs {
        let Some(k) = sig.inputs.iter().position(|s| &s.name == name) else {
            let names: Vec<String> = sig.inputs.iter().map(|s| format!("`{}`", s.name)).collect();
            return Err(Fail(format!("error: `{agg}` has no input `{name}`; its inputs are {}\n", names.join(", "))));
        };
        if given_inputs.iter().any(|g| g.0 == k) {
            return Err(Fail(format!("error: input `{name}` is given twice\n")));
        }
        let spec = &sig.inputs[k];
        let (shape, data) = read_npy(&format!("input `{name}`"), path, spec.dtype)?;
        let nd = spec.shape.len();
        if shape.len() < nd + 1 || shape[shape.len() - nd..] != spec.shape[..] {
            return Err(Fail(format!(
                "error: input `{name}` from {} has shape {}; expected [batch..., T, {}]\n",
                path.display(),
                shape_text(&shape),
                spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        given_inputs.push((k, shape[..shape.len() - nd].to_vec(), data));
    }
    // Batch shape and T: from the files, checked against --batch and --len.
    let mut lead: Option<Vec<usize>> = None;
    for (k, l, _) in &given_inputs {
        match &lead {
            None => lead = Some(l.clone()),
            Some(prev) if prev != l => {
                return Err(Fail(format!(
                    "error: the --input files disagree on [batch..., T]: {} for `{}` but {} before\n",
                    shape_text(l),
                    sig.inputs[*k].name,
                    shape_text(prev)
                )))
            }
            _ => {}
        }
    }
    let (batch, steps) = match lead {
        Some(l) => {
            let (steps, batch) = (l[l.len() - 1], l[..l.len() - 1].to_vec());
            if args.len.is_some_and(|n| n != steps) {
                return Err(Fail(format!("error: --len {} but the --input files hold {steps} steps\n", args.len.unwrap_or(0))));
            }
            if args.batch.as_ref().is_some_and(|b| b.0 != batch) {
                return Err(Fail(format!(
                    "error: --batch {} but the --input files have batch shape {}\n",
                    shape_text(args.batch.as_ref().map_or(&[][..], |b| &b.0)),
                    shape_text(&batch)
                )));
            }
            (batch, steps)
        }
        None => (args.batch.clone().map(|b| b.0).unwrap_or_default(), args.len.unwrap_or(64)),
    };
    let given: Vec<usize> = given_inputs.iter().map(|g| g.0).collect();
    let Data { mut inputs, mut params, .. } = random_data(sig, &batch, steps, args.seed, &given)?;
    for (k, _, data) in given_inputs {
        inputs[k] = data;
    }
    let mut seen = Vec::new();
    for (name, path) in &args.params {
        let Some(k) = sig.params.iter().position(|s| &s.name == name) else {
            let names: Vec<String> = sig.params.iter().map(|s| format!("`{}`", s.name)).collect();
            let list = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Err(Fail(format!("error: `{agg}` has no param `{name}`; its params are {list}\n")));
        };
        if seen.contains(&k) {
            return Err(Fail(format!("error: param `{name}` is given twice\n")));
        }
        seen.push(k);
        let spec = &sig.params[k];
        let (shape, data) = read_npy(&format!("param `{name}`"), path, spec.dtype)?;
        if shape != spec.shape && !(shape.len() <= 1 && data.len() == spec.len) {
            return Err(Fail(format!(
                "error: param `{name}` from {} has shape {}; expected {}\n",
                path.display(),
                shape_text(&shape),
                shape_text(&spec.shape)
            )));
        }
        params[k] = data;
    }
    Ok(Data { batch, steps, inputs, params })
}

/// Seeded random params and inputs (params first, then inputs, from one stream); the
/// inputs listed in `skip` are left empty for the caller to fill.
fn random_data(sig: &Signature, batch: &[usize], steps: usize, seed: u64, skip: &[usize]) -> Result<Data, Fail> {
    let count = batch.iter().try_fold(steps, |a, &d| a.checked_mul(d)).ok_or_else(|| Fail("error: the batch is too large\n".into()))?;
    let mut rng = Rng(seed);
    let mut params = Vec::new();
    for spec in &sig.params {
        params.push(random("param", spec, 1, 1, &mut rng)?);
    }
    let mut inputs = Vec::new();
    for (k, spec) in sig.inputs.iter().enumerate() {
        inputs.push(if skip.contains(&k) { Buffer::F32(Vec::new()) } else { random("input", spec, count, steps, &mut rng)? });
    }
    Ok(Data { batch: batch.to_vec(), steps, inputs, params })
}

/// Runs once on `data`, timing the run alone.
fn run_once(runner: &Runner, sig: &Signature, data: &Data, opts: &RunOptions) -> Result<(psm_runtime::Outputs, f64), Fail> {
    let mut inputs = Inputs::new(&data.batch, data.steps);
    for (s, b) in sig.inputs.iter().zip(&data.inputs) {
        inputs = inputs.input(&s.name, b);
    }
    for (s, b) in sig.params.iter().zip(&data.params) {
        inputs = inputs.param(&s.name, b);
    }
    let start = Instant::now();
    let outputs = runner.run(&inputs, opts).map_err(|e| Fail(format!("error: {e}\n")))?;
    Ok((outputs, start.elapsed().as_secs_f64()))
}

/// What `psmc demo` shows of one aggregator on the CPU, in the automatic form.
pub(crate) struct Trial {
    pub form: &'static str,
    /// Agrees with the interpreter: bit for bit (non-associative) or within the
    /// tolerance of the f64 fold (associative).
    pub agrees: bool,
    pub bit_identical: bool,
    pub max_rel_err: f64,
    pub steps_per_second: f64,
}

/// A seeded run of `compare_steps` steps checked against the interpreter, then runs of
/// growing length until one takes 50 ms, for the throughput.
pub(crate) fn trial(agg: &psm_runtime::Aggregator, batch: usize, compare_steps: usize, seed: u64) -> Result<Trial, String> {
    let sig = agg.signature();
    let fail = |Fail(m): Fail| m;
    agg.compile().map_err(|e| e.to_string())?;
    let runner = Runner::Host(agg.clone());
    let data = random_data(&sig, &[batch], compare_steps, seed, &[]).map_err(fail)?;
    let (outputs, _) = run_once(&runner, &sig, &data, &RunOptions::default()).map_err(fail)?;
    let c = compare(agg, &sig, &data, &outputs, true);
    let mut steps = 1024;
    let steps_per_second = loop {
        let data = random_data(&sig, &[batch], steps, seed, &[]).map_err(fail)?;
        let (_, seconds) = run_once(&runner, &sig, &data, &RunOptions::default()).map_err(fail)?;
        if seconds >= 0.05 || steps >= 1 << 20 {
            break (batch * steps) as f64 / seconds.max(1e-9);
        }
        steps *= 8;
    };
    Ok(Trial { form: outputs.form().name(), agrees: c.ok, bit_identical: c.bit_identical, max_rel_err: c.max_rel_err, steps_per_second })
}

/// Comparison with the reference interpreter.
struct Compared {
    reference: &'static str,
    max_abs_err: f64,
    max_rel_err: f64,
    tolerance: Option<f64>,
    bit_identical: bool,
    ok: bool,
}

/// `bit_exact`: the backend computes exactly what the interpreter does, so a
/// non-associative operator must match the reference tree bit for bit; otherwise (the
/// GPU) it is held to the tolerance too.
fn compare(agg: &psm_runtime::Aggregator, sig: &Signature, data: &Data, outputs: &psm_runtime::Outputs, bit_exact: bool) -> Compared {
    let nseq: usize = data.batch.iter().product();
    let n = data.steps;
    let params: Vec<Vec<f64>> = data.params.iter().map(Buffer::to_f64).collect();
    let inputs: Vec<Vec<f64>> = data.inputs.iter().map(Buffer::to_f64).collect();
    let (precision, form, reference) = if sig.associative {
        (Precision::F64, RefForm::Fold, "the f64 fold")
    } else {
        (Precision::Declared, RefForm::Tree, "the fixed tree in declared precision")
    };
    let mut abs = 0.0f64;
    let mut rel = 0.0f64;
    // The worst error of the f32 sequential fold on the same data: the operator's
    // condition factor in the tolerance (psm_runtime::accuracy).
    let mut f32_fold = 0.0f64;
    let mut identical = true;
    for b in 0..nseq {
        let x: Vec<Vec<f64>> = inputs.iter().zip(&sig.inputs).map(|(v, s)| v[b * n * s.len..(b + 1) * n * s.len].to_vec()).collect();
        let Ok(r) = derive::run(agg.ir(), agg.info(), FloatDomain::new(precision), form, &params, &x, n) else {
            identical = false;
            continue;
        };
        let fold32 = if sig.associative {
            derive::run(agg.ir(), agg.info(), FloatDomain::new(Precision::Declared), RefForm::Fold, &params, &x, n).ok()
        } else {
            None
        };
        for (k, s) in sig.outputs.iter().enumerate() {
            let got = outputs.tensors()[k].data.to_f64();
            let got = &got[b * n * s.len..(b + 1) * n * s.len];
            let want = &r.outputs[k];
            identical &= got.iter().zip(want).all(|(a, e)| a.to_bits() == e.to_bits() || (a.is_nan() && e.is_nan()));
            abs = got.iter().zip(want).filter(|(a, e)| a.to_bits() != e.to_bits()).fold(abs, |m, (a, e)| {
                let d = (a - e).abs();
                m.max(if d.is_nan() { f64::INFINITY } else { d })
            });
            rel = rel.max(accuracy::worst_error(got, want, s.len));
            if let Some(f) = &fold32 {
                f32_fold = f32_fold.max(accuracy::worst_error(&f.outputs[k], want, s.len));
            }
        }
    }
    if sig.associative || !bit_exact {
        // bf16/f16 outputs: the reference and the run may round to neighbours.
        let storage = sig.outputs.iter().map(|s| s.dtype.rounding_bound()).fold(0.0, f64::max);
        let tol = accuracy::conditioned_tolerance(n, f32_fold) + storage;
        Compared { reference, max_abs_err: abs, max_rel_err: rel, tolerance: Some(tol), bit_identical: identical, ok: rel <= tol }
    } else {
        Compared { reference, max_abs_err: abs, max_rel_err: rel, tolerance: None, bit_identical: identical, ok: identical }
    }
}

/// Loads `path` and picks its aggregator: the one named, or the file's only one. The
/// error is the text for stderr; `verb` names the command (`run`, `bench`).
pub(crate) fn load_aggregator(
    path: &Path,
    dims: &[psm_ir::valid::DimOverride],
    chosen: Option<&str>,
    verb: &str,
) -> Result<(psm_runtime::Aggregator, String), String> {
    let file = path.display().to_string();
    let program = Program::from_file(path, dims).map_err(|e| {
        let n = e.diagnostics.len().max(1);
        let s = if n == 1 { "" } else { "s" };
        format!("{}error: could not {verb} `{file}` due to {n} previous error{s}\n", e.rendered)
    })?;
    let names = program.names();
    let name = match (chosen, names.as_slice()) {
        (Some(n), _) => n.to_string(),
        (None, [only]) => only.to_string(),
        (None, []) => return Err(format!("error: `{file}` declares no aggregator\n")),
        (None, many) => {
            let list: Vec<String> = many.iter().map(|n| format!("`{n}`")).collect();
            return Err(format!("error: `{file}` declares {}; pick one with --aggregator NAME\n", list.join(", ")));
        }
    };
    match program.aggregator(&name) {
        Some(agg) => Ok((agg, name)),
        None => {
            let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            Err(format!("error: `{file}` has no aggregator `{name}`; it declares {}\n", list.join(", ")))
        }
    }
}

fn execute(args: &RunArgs) -> Result<(String, bool), Fail> {
    let file = args.file.display().to_string();
    let (agg, name) = load_aggregator(&args.file, &args.dims.define, args.aggregator.as_deref(), "run").map_err(Fail)?;
    let sig = agg.signature();
    let data = gather(args, &sig)?;
    let start = Instant::now();
    let runner = Runner::new(&agg, args.backend, args.kernel).map_err(|e| Fail(format!("error: {e}\n")))?;
    let compile_seconds = start.elapsed().as_secs_f64();
    let form = match args.form {
        FormArg::Auto => Form::Auto,
        FormArg::Recurrent => Form::Recurrent,
        FormArg::Chunked => Form::Chunked,
        FormArg::Tree => Form::Tree,
        FormArg::Stream => Form::Stream,
        FormArg::Chunkwise => Form::Chunkwise,
    };
    let opts = RunOptions { form, chunk: args.chunk, threads: args.threads, ..Default::default() };
    let (outputs, seconds) = run_once(&runner, &sig, &data, &opts)?;
    let nseq: usize = data.batch.iter().product();
    let steps_total = (nseq * data.steps) as f64;
    let eps = if seconds > 0.0 { steps_total / seconds } else { 0.0 };
    let stats = outputs.stats();
    let compared = args.compare.then(|| compare(&agg, &sig, &data, &outputs, runner.bit_exact()));
    let mut written: Vec<Option<String>> = vec![None; sig.outputs.len()];
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).map_err(|e| Fail(format!("error: cannot create {}: {e}\n", dir.display())))?;
        for (k, t) in outputs.tensors().iter().enumerate() {
            let path = dir.join(format!("{}.npy", t.name));
            write_npy(&path, &t.shape, &t.data)?;
            written[k] = Some(path.display().to_string());
        }
    }
    let ok = compared.as_ref().is_none_or(|c| c.ok);
    let dims: serde_json::Map<String, serde_json::Value> =
        agg.info().dim_values(agg.ir()).into_iter().map(|(n, v)| (n, json!(v))).collect();
    if args.format == crate::Format::Json {
        let outs: Vec<serde_json::Value> = outputs
            .tensors()
            .iter()
            .zip(&written)
            .map(|(t, p)| json!({"name": t.name, "shape": t.shape, "dtype": t.data.dtype().name(), "path": p}))
            .collect();
        let finite = |x: f64| if x.is_finite() { json!(x) } else { json!(x.to_string()) };
        let doc = json!({
            "file": file,
            "aggregator": name,
            "dims": dims,
            "backend": runner.name(),
            "associative": sig.associative,
            "form": outputs.form().name(),
            "chunk": outputs.chunk(),
            "batch": data.batch,
            "len": data.steps,
            "seed": args.seed,
            "compile_seconds": compile_seconds,
            "seconds": seconds,
            "elements_per_second": eps,
            "combines_per_step": stats.combines_per_step(),
            "peak_elements": stats.peak_elements,
            "max_abs_err": compared.as_ref().map(|c| finite(c.max_abs_err)),
            "max_rel_err": compared.as_ref().map(|c| finite(c.max_rel_err)),
            "compare": compared.as_ref().map(|c| json!({
                "reference": c.reference,
                "tolerance": c.tolerance,
                "bit_identical": c.bit_identical,
                "ok": c.ok,
            })),
            "outputs": outs,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Fail(format!("error: cannot serialize: {e}\n")))?;
        return Ok((text + "\n", ok));
    }
    let mut text = String::new();
    let dims_text: Vec<String> = dims.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    let dims_text = if dims_text.is_empty() { String::new() } else { format!("<{}> ", dims_text.join(", ")) };
    let chunk = outputs.chunk().map(|c| format!(", chunk {c}")).unwrap_or_default();
    let _ = writeln!(
        text,
        "{name} {dims_text}on {}: {} form{chunk}, batch {}, T = {}",
        runner.name(),
        outputs.form().name(),
        shape_text(&data.batch),
        data.steps
    );
    let _ = writeln!(text, "  ran in {seconds:.6} s ({eps:.0} steps/s); compiled in {compile_seconds:.3} s");
    for (t, p) in outputs.tensors().iter().zip(&written) {
        let v = t.data.to_f64();
        let int = t.data.dtype() == Dtype::I32;
        let head: Vec<String> = v.iter().take(4).map(|x| if int { format!("{x}") } else { format!("{x:.6}") }).collect();
        let more = if v.len() > 4 { " ..." } else { "" };
        let _ = write!(text, "  {} {} {}: {}{more}", t.name, shape_text(&t.shape), t.data.dtype().name(), head.join(" "));
        if let Some(p) = p {
            let _ = write!(text, " (wrote {p})");
        }
        text.push('\n');
    }
    if let Some(c) = &compared {
        let verdict = match (c.tolerance, c.ok) {
            (Some(tol), true) => format!("within the tolerance {tol:.1e}"),
            (Some(tol), false) => format!("EXCEEDS the tolerance {tol:.1e}"),
            (None, true) => "bit-identical".to_string(),
            (None, false) => "NOT bit-identical".to_string(),
        };
        let _ = writeln!(
            text,
            "  compare with {}: max_abs_err {:.3e}, max_rel_err {:.3e}: {verdict}",
            c.reference, c.max_abs_err, c.max_rel_err
        );
    }
    if args.stats {
        let _ = writeln!(
            text,
            "  stats: {:.3} combines per step, peak {} stored elements per sequence",
            stats.combines_per_step(),
            stats.peak_elements
        );
    }
    Ok((text, ok))
}
