//! The PTX kernels run on a GPU, every library operator against the interpreter: the
//! recurrent scan (forward, reverse, with a final state), chunk aggregates + carries
//! (`psm_combine`) + the chunk pass, `psm_lift` + prefixes by `psm_combine` +
//! `psm_readout`, one decode step at a time, and `psm_identity`.
//!
//! Operators without transcendental functions must match the interpreter in Declared
//! precision bit for bit where the bracketing is the interpreter's (the same operations
//! in the same order); the others, and the chunked bracketing, within a relative 1e-4. Every GPU composition with the recurrent bracketing must equal the
//! GPU recurrent scan bit for bit (the same device code), transcendentals included.
//!
//! Needs the CUDA driver (`libcuda.so.1`, loaded at run time through dlopen: no build
//! dependency); without one the test prints that it skipped. On a machine with cargo
//! and a GPU: `cargo test -p psm-codegen --test ptx_gpu -- --nocapture` (add
//! `--ignored diag_affine_timings` for the timing). A binary built elsewhere
//! (`cargo test -p psm-codegen --test ptx_gpu --no-run` prints its path) runs on a GPU
//! machine without Rust with `PSM_OPS_DIR` naming the library's directory.

mod common;

use std::ffi::{c_void, CString};

use common::*;
use psm_codegen::ptx::{self, Kernel, PtxModule, CARRY_IN, EMPTY_FIRST, HAS_STATE, LEFT_IDENTITY, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};
use psm_ir::derive::{self, Form};
use psm_ir::interp::Fields;
use psm_ir::ir::{Aggregator, Dtype, Expr, Func, Role};
use psm_ir::valid::Info;

// ------------------------------------------------------------------ the driver API

type CuResult = i32;

struct Cuda {
    _lib: *mut c_void,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    htod: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    module_load: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> CuResult,
    get_function: unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const i8) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch: unsafe extern "C" fn(
        *mut c_void,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    sync: unsafe extern "C" fn() -> CuResult,
    func_set_attribute: unsafe extern "C" fn(*mut c_void, i32, i32) -> CuResult,
    /// Multiprocessors of device 0.
    sms: usize,
}

/// CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT (cuda.h).
const MULTIPROCESSOR_COUNT: i32 = 16;

/// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (cuda.h).
const MAX_DYNAMIC_SHARED_SIZE_BYTES: i32 = 8;

/// The function `name` of the driver as a function pointer of type `F`.
///
/// # Safety
/// `F` must be the C signature of `name`.
unsafe fn sym<F: Copy>(lib: *mut c_void, name: &str) -> F {
    let c = CString::new(name).unwrap();
    let p = libc::dlsym(lib, c.as_ptr());
    assert!(!p.is_null(), "libcuda has no {name}");
    std::mem::transmute_copy::<*mut c_void, F>(&p)
}

fn check(what: &str, r: CuResult) {
    assert_eq!(r, 0, "{what} failed with CUresult {r}");
}

impl Cuda {
    /// The driver with a current context on device 0, or `None` without a driver or GPU.
    /// The device, or `None` after the line saying that `test` skipped (which
    /// bench/gpu/cuda_tests.sh looks for).
    fn open_or_skip(test: &str) -> Option<Cuda> {
        let cuda = Cuda::open();
        if cuda.is_none() {
            println!("{test}: skipped: CUDA not available (no libcuda.so.1 or no GPU)");
        }
        cuda
    }

    fn open() -> Option<Cuda> {
        unsafe {
            let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW);
            if lib.is_null() {
                return None;
            }
            let init: unsafe extern "C" fn(u32) -> CuResult = sym(lib, "cuInit");
            if init(0) != 0 {
                return None;
            }
            let device_get: unsafe extern "C" fn(*mut i32, i32) -> CuResult = sym(lib, "cuDeviceGet");
            let retain: unsafe extern "C" fn(*mut *mut c_void, i32) -> CuResult = sym(lib, "cuDevicePrimaryCtxRetain");
            let set_current: unsafe extern "C" fn(*mut c_void) -> CuResult = sym(lib, "cuCtxSetCurrent");
            let mut dev = 0;
            if device_get(&mut dev, 0) != 0 {
                return None;
            }
            let mut ctx = std::ptr::null_mut();
            check("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev));
            check("cuCtxSetCurrent", set_current(ctx));
            let attribute: unsafe extern "C" fn(*mut i32, i32, i32) -> CuResult = sym(lib, "cuDeviceGetAttribute");
            let mut sms = 0;
            check("cuDeviceGetAttribute", attribute(&mut sms, MULTIPROCESSOR_COUNT, dev));
            Some(Cuda {
                _lib: lib,
                mem_alloc: sym(lib, "cuMemAlloc_v2"),
                mem_free: sym(lib, "cuMemFree_v2"),
                htod: sym(lib, "cuMemcpyHtoD_v2"),
                dtoh: sym(lib, "cuMemcpyDtoH_v2"),
                module_load: sym(lib, "cuModuleLoadData"),
                get_function: sym(lib, "cuModuleGetFunction"),
                launch: sym(lib, "cuLaunchKernel"),
                sync: sym(lib, "cuCtxSynchronize"),
                func_set_attribute: sym(lib, "cuFuncSetAttribute"),
                sms: sms as usize,
            })
        }
    }

    /// A device buffer holding `bytes` (at least 8 bytes).
    fn upload(&self, bytes: &[u8]) -> Dev {
        let mut p = 0u64;
        let n = bytes.len().max(8);
        unsafe {
            check("cuMemAlloc", (self.mem_alloc)(&mut p, n));
            if !bytes.is_empty() {
                check("cuMemcpyHtoD", (self.htod)(p, bytes.as_ptr() as *const c_void, bytes.len()));
            }
        }
        Dev { ptr: p, bytes: n }
    }

    fn zeros(&self, bytes: usize) -> Dev {
        self.upload(&vec![0u8; bytes])
    }

    fn download(&self, d: &Dev) -> Vec<u8> {
        let mut out = vec![0u8; d.bytes];
        unsafe { check("cuMemcpyDtoH", (self.dtoh)(out.as_mut_ptr() as *mut c_void, d.ptr, d.bytes)) };
        out
    }

    fn free(&self, d: Dev) {
        unsafe { check("cuMemFree", (self.mem_free)(d.ptr)) };
    }

    fn load(&self, m: &PtxModule) -> *mut c_void {
        self.load_text(&m.text)
    }

    fn load_text(&self, text: &str) -> *mut c_void {
        let text = CString::new(text).unwrap();
        let mut module = std::ptr::null_mut();
        unsafe { check("cuModuleLoadData", (self.module_load)(&mut module, text.as_ptr() as *const c_void)) };
        module
    }

    /// Launches `kernel` over `threads` threads (blocks of 128) with `args` in the
    /// kernel's parameter order, and waits for it.
    fn run(&self, module: *mut c_void, m: &PtxModule, kernel: Kernel, threads: u64, args: &[Arg]) {
        let sig = m.kernel(kernel).expect("kernel in module");
        assert_eq!(sig.params.len(), args.len(), "{}: argument count", kernel.name());
        let blocks = threads.div_ceil(128).max(1) as u32;
        self.launch_grid(module, kernel.name(), [blocks, 1, 1], 128, args);
    }

    /// Launches the kernel `name` on a `grid` of blocks of `block` threads, and waits.
    fn launch_grid(&self, module: *mut c_void, name: &str, grid: [u32; 3], block: u32, args: &[Arg]) {
        self.launch_async(module, name, grid, block, args, true);
    }

    fn synchronize(&self) {
        unsafe { check("cuCtxSynchronize", (self.sync)()) };
    }

    /// Launches the kernel `name` on a `grid` of blocks of `block` threads; waits for it
    /// when `wait`.
    fn launch_async(&self, module: *mut c_void, name: &str, grid: [u32; 3], block: u32, args: &[Arg], wait: bool) {
        self.launch_shared(module, name, grid, (block, 0), args, wait);
    }

    /// [`launch_async`](Self::launch_async) with `shared` bytes of dynamic shared memory
    /// per block (the function's limit raised to that first).
    fn launch_shared(&self, module: *mut c_void, name: &str, grid: [u32; 3], (block, shared): (u32, u32), args: &[Arg], wait: bool) {
        let cname = CString::new(name).unwrap();
        let mut f = std::ptr::null_mut();
        unsafe { check("cuModuleGetFunction", (self.get_function)(&mut f, module, cname.as_ptr())) };
        if shared > 0 {
            unsafe { check("cuFuncSetAttribute", (self.func_set_attribute)(f, MAX_DYNAMIC_SHARED_SIZE_BYTES, shared as i32)) };
        }
        let mut storage: Vec<u64> = args.iter().map(|a| a.bits()).collect();
        let mut ptrs: Vec<*mut c_void> = storage.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        unsafe {
            check(
                name,
                (self.launch)(f, grid[0], grid[1], grid[2], block, 1, 1, shared, std::ptr::null_mut(), ptrs.as_mut_ptr(), std::ptr::null_mut()),
            );
        }
        if wait {
            self.synchronize();
        }
    }
}

struct Dev {
    ptr: u64,
    bytes: usize,
}

/// A kernel argument: `.u64` or `.u32` (little-endian, so a u32 is the low half).
#[derive(Clone, Copy)]
enum Arg {
    U64(u64),
    U32(u32),
}

impl Arg {
    fn bits(self) -> u64 {
        match self {
            Arg::U64(v) => v,
            Arg::U32(v) => v as u64,
        }
    }
}

// ------------------------------------------------------------------ data

/// Whether any body calls a transcendental function (computed differently on the GPU).
fn transcendental(agg: &Aggregator) -> bool {
    agg.exprs.iter().any(|(_, e)| {
        matches!(e, Expr::Call { func, .. } if !matches!(func, Func::Abs | Func::Min | Func::Max | Func::Sqrt | Func::Rsqrt))
    })
}

struct Case<'a> {
    agg: &'a Aggregator,
    info: &'a Info,
    nseq: usize,
    steps: usize,
    params: Vec<Vec<f64>>,
    /// Per sequence: one buffer per input field, `[steps, len]`.
    inputs: Vec<Vec<Vec<f64>>>,
}

impl Case<'_> {
    fn dtypes(&self, role: Role) -> Vec<Dtype> {
        self.agg.tensors_of(role).map(|t| self.agg.tensors[t].dtype).collect()
    }
    fn lens(&self, role: Role) -> Vec<usize> {
        self.agg.tensors_of(role).map(|t| self.info.len(t)).collect()
    }

    /// The interpreter's outputs per sequence, `form` over `inputs` (reversed in time
    /// with `reverse`, outputs put back in memory order).
    fn reference(&self, form: Form, reverse: bool) -> Vec<Vec<Vec<f64>>> {
        let lens = self.lens(Role::Input);
        let out_lens = self.lens(Role::Output);
        self.inputs
            .iter()
            .map(|inp| {
                let inp: Vec<Vec<f64>> =
                    if reverse { inp.iter().zip(&lens).map(|(b, &n)| flip(b, n)).collect() } else { inp.clone() };
                let out = derive::run(self.agg, self.info, domain(), form, &self.params, &inp, self.steps).expect("run");
                if reverse {
                    out.outputs.iter().zip(&out_lens).map(|(b, &n)| flip(b, n)).collect()
                } else {
                    out.outputs
                }
            })
            .collect()
    }
}

/// `[steps, n]` rows in reverse order.
fn flip(b: &[f64], n: usize) -> Vec<f64> {
    if n == 0 {
        return b.to_vec();
    }
    b.chunks(n).rev().flatten().copied().collect()
}

/// The bytes of one field over all sequences: `[nseq, steps, len]`.
fn field_bytes(dtype: Dtype, per_seq: &[&Vec<f64>]) -> Vec<u8> {
    let all: Vec<f64> = per_seq.iter().flat_map(|v| v.iter().copied()).collect();
    let mut b = vec![0u8; all.len() * dsize(dtype)];
    write_values(&mut b, dtype, &all);
    b
}

/// Compares GPU outputs (per output field, `[nseq, steps, len]` bytes) with reference
/// outputs per sequence: bit for bit, or within psm-ir's tolerance for associative
/// operators, `|gpu - ref| <= TOL * (|ref| + scale_t)` with `scale_t` the largest |ref|
/// of the field at steps up to t of the sequence.
fn compare(what: &str, case: &Case<'_>, exact: bool, gpu: &[Vec<u8>], reference: &[Vec<Vec<f64>>]) {
    let (dtypes, lens) = (case.dtypes(Role::Output), case.lens(Role::Output));
    for (k, bytes) in gpu.iter().enumerate() {
        let w = lens[k];
        let found = read_values(bytes, dtypes[k], case.nseq * case.steps * w);
        for (s, seq) in reference.iter().enumerate() {
            let mut scale = 0.0f64;
            for t in 0..case.steps {
                let row = &seq[k][t * w..(t + 1) * w];
                scale = row.iter().filter(|x| x.is_finite()).fold(scale, |m, x| m.max(x.abs()));
                for (j, &b) in row.iter().enumerate() {
                    let a = found[(s * case.steps + t) * w + j];
                    // A bf16/f16 output may round to the neighbour of the reference's.
                    let tol = TOL + dtypes[k].rounding_bound();
                    let ok = same(dtypes[k], a, b) || (!exact && (a - b).abs() <= tol * (b.abs() + scale));
                    assert!(ok, "{}: {what}: output {k}, sequence {s}, step {t}, entry {j}: gpu {a:e}, expected {b:e}", case.agg.name);
                }
            }
        }
    }
}

/// 1e-5 * log2(steps) for 45 steps (psm-ir's tolerance), rounded up.
const TOL: f64 = 1e-4;

fn assert_bytes_equal(what: &str, name: &str, a: &[Vec<u8>], b: &[Vec<u8>]) {
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x == y, "{name}: {what}: output {k} differs from the recurrent scan's bits");
    }
}

// ------------------------------------------------------------------ the runs

struct Gpu<'a> {
    cuda: &'a Cuda,
    m: PtxModule,
    module: *mut c_void,
    params: Vec<Dev>,
    inputs: Vec<Dev>,
}

impl Gpu<'_> {
    fn outputs(&self, case: &Case<'_>) -> Vec<Dev> {
        let (dtypes, lens) = (case.dtypes(Role::Output), case.lens(Role::Output));
        dtypes.iter().zip(&lens).map(|(&d, &n)| self.cuda.zeros(case.nseq * case.steps * n * dsize(d))).collect()
    }

    fn head(&self, with_inputs: bool, outputs: &[Dev]) -> Vec<Arg> {
        let mut a: Vec<Arg> = self.params.iter().map(|d| Arg::U64(d.ptr)).collect();
        if with_inputs {
            a.extend(self.inputs.iter().map(|d| Arg::U64(d.ptr)));
        }
        a.extend(outputs.iter().map(|d| Arg::U64(d.ptr)));
        a
    }

    #[allow(clippy::too_many_arguments)]
    fn scan(&self, case: &Case<'_>, outputs: &[Dev], steps: usize, chunk: usize, state_in: u64, state_out: u64, flags: u32) {
        self.scan_with(Kernel::Scan, 1, case, outputs, steps, chunk, state_in, state_out, flags)
    }

    /// `psm_scan`, or `psm_scan_entries` with `entries` threads per (sequence, chunk).
    #[allow(clippy::too_many_arguments)]
    fn scan_with(
        &self,
        kernel: Kernel,
        entries: usize,
        case: &Case<'_>,
        outputs: &[Dev],
        steps: usize,
        chunk: usize,
        state_in: u64,
        state_out: u64,
        flags: u32,
    ) {
        let mut args = self.head(true, outputs);
        args.extend([
            Arg::U64(case.nseq as u64),
            Arg::U64(steps as u64),
            Arg::U64(chunk as u64),
            Arg::U64(state_in),
            Arg::U64(state_out),
            Arg::U32(flags),
        ]);
        let threads = (case.nseq * steps.div_ceil(chunk) * entries) as u64;
        self.cuda.run(self.module, &self.m, kernel, threads, &args);
    }

    /// out[r] = combine(left[r], right[r]) for r < rows, byte strides per row.
    #[allow(clippy::too_many_arguments)]
    fn combine(&self, rows: usize, out: (u64, u64), left: (u64, u64), right: (u64, u64), flags: u32) {
        let mut args = self.head(false, &[]);
        args.extend([
            Arg::U64(rows as u64),
            Arg::U64(1),
            Arg::U64(out.0),
            Arg::U64(out.1),
            Arg::U64(0),
            Arg::U64(left.0),
            Arg::U64(left.1),
            Arg::U64(0),
            Arg::U64(right.0),
            Arg::U64(right.1),
            Arg::U64(0),
            Arg::U32(flags),
        ]);
        self.cuda.run(self.module, &self.m, Kernel::Combine, rows as u64, &args);
    }

    fn get(&self, bufs: &[Dev]) -> Vec<Vec<u8>> {
        bufs.iter().map(|d| self.cuda.download(d)).collect()
    }
}

fn check_operator(cuda: &Cuda, name: &str) {
    let (agg, info) = parse_one(&library_source(name), test_dims(name));
    let m = ptx::compile(&agg, &info, &Default::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut rng = Rng::new(0x9e37 ^ name.len() as u64);
    let (nseq, steps, chunk) = (3usize, 45usize, 8usize);
    let params: Vec<Vec<f64>> =
        agg.tensors_of(Role::Param).map(|t| random_values(&mut rng, &agg, t, info.len(t))).collect();
    let inputs: Vec<Vec<Vec<f64>>> = (0..nseq)
        .map(|_| agg.tensors_of(Role::Input).map(|t| random_values(&mut rng, &agg, t, steps * info.len(t))).collect())
        .collect();
    let case = Case { agg: &agg, info: &info, nseq, steps, params, inputs };
    let exact = !transcendental(&agg);
    let size = m.layout.size;

    let param_devs: Vec<Dev> = agg
        .tensors_of(Role::Param)
        .zip(&case.params)
        .map(|(t, v)| {
            let mut b = vec![0u8; v.len() * dsize(agg.tensors[t].dtype)];
            write_values(&mut b, agg.tensors[t].dtype, v);
            cuda.upload(&b)
        })
        .collect();
    let input_devs: Vec<Dev> = agg
        .tensors_of(Role::Input)
        .enumerate()
        .map(|(k, t)| {
            let per_seq: Vec<&Vec<f64>> = case.inputs.iter().map(|seq| &seq[k]).collect();
            cuda.upload(&field_bytes(agg.tensors[t].dtype, &per_seq))
        })
        .collect();
    let module = cuda.load(&m);
    let gpu = Gpu { cuda, m, module, params: param_devs, inputs: input_devs };

    // Recurrent, forward, with the final state.
    let fold = case.reference(Form::Fold, false);
    let outs = gpu.outputs(&case);
    let state = cuda.zeros(nseq * size);
    gpu.scan(&case, &outs, steps, steps, 0, state.ptr, WRITE_OUTPUTS);
    let recurrent = gpu.get(&outs);
    compare("recurrent", &case, exact, &recurrent, &fold);
    let final_state = cuda.download(&state);
    for (s, inp) in case.inputs.iter().enumerate() {
        let r = derive::run(&agg, &info, domain(), Form::Fold, &case.params, inp, steps).unwrap();
        let expected = r.prefixes[steps].clone().expect("a prefix after steps > 0");
        let found = decode_element(&gpu.m.layout, &final_state[s * size..]);
        check_fields(name, "final state", exact, &gpu.m.layout.dtypes, &found, &expected);
    }
    // Without a final state: the same outputs.
    let outs2 = gpu.outputs(&case);
    gpu.scan(&case, &outs2, steps, steps, 0, 0, WRITE_OUTPUTS | NO_STATE_OUT);
    assert_bytes_equal("NO_STATE_OUT", name, &gpu.get(&outs2), &recurrent);

    // Reverse.
    let outs3 = gpu.outputs(&case);
    gpu.scan(&case, &outs3, steps, steps, 0, 0, WRITE_OUTPUTS | NO_STATE_OUT | REVERSE);
    compare("reverse", &case, exact, &gpu.get(&outs3), &case.reference(Form::Fold, true));

    // Chunked: aggregates, carries by psm_combine, the chunk pass from the carries.
    let nchunks = steps.div_ceil(chunk);
    let aggs = cuda.zeros(nseq * nchunks * size);
    gpu.scan(&case, &gpu.outputs(&case), steps, chunk, 0, aggs.ptr, 0);
    let carries = cuda.zeros(nseq * nchunks * size);
    let row = (nchunks * size) as u64;
    for c in 1..nchunks {
        let out = (carries.ptr + (c * size) as u64, row);
        let right = (aggs.ptr + ((c - 1) * size) as u64, row);
        let left = (carries.ptr + ((c - 1) * size) as u64, row);
        gpu.combine(nseq, out, left, right, if c == 1 { LEFT_IDENTITY } else { 0 });
    }
    let outs4 = gpu.outputs(&case);
    gpu.scan(&case, &outs4, steps, chunk, carries.ptr, 0, WRITE_OUTPUTS | CARRY_IN | NO_STATE_OUT);
    // Carries times the chunk's running fold: a bracketing of its own (the interpreter's
    // chunked form multiplies the carry into each local prefix instead), so it is
    // compared within the tolerance, and only for associative operators.
    if psm_ir::algebra::analyze(&agg, &info).associative() {
        compare("chunked", &case, false, &gpu.get(&outs4), &fold);
    }

    // Leaves, prefixes p_1..p_steps by psm_combine (the recurrent bracketing), readouts.
    let leaves = cuda.zeros(nseq * steps * size);
    let mut args = gpu.head(true, &[]);
    args.extend([Arg::U64(nseq as u64), Arg::U64(steps as u64), Arg::U64(leaves.ptr), Arg::U32(0)]);
    cuda.run(module, &gpu.m, Kernel::Lift, (nseq * steps) as u64, &args);
    let prefixes = cuda.zeros(nseq * (steps + 1) * size);
    let prow = ((steps + 1) * size) as u64;
    for i in 0..steps {
        let out = (prefixes.ptr + ((i + 1) * size) as u64, prow);
        let left = (prefixes.ptr + (i * size) as u64, prow);
        let right = (leaves.ptr + (i * size) as u64, (steps * size) as u64);
        gpu.combine(nseq, out, left, right, if i == 0 { LEFT_IDENTITY } else { 0 });
    }
    let outs5 = gpu.outputs(&case);
    let mut args = gpu.head(true, &outs5);
    args.extend([Arg::U64(nseq as u64), Arg::U64(steps as u64), Arg::U64(prefixes.ptr), Arg::U32(EMPTY_FIRST)]);
    cuda.run(module, &gpu.m, Kernel::Readout, (nseq * steps) as u64, &args);
    assert_bytes_equal("lift + combine + readout", name, &gpu.get(&outs5), &recurrent);

    // Decode: one step at a time, the state in place. Inputs and outputs of one step
    // are [nseq, 1, len]: copy them per step.
    let in_lens = case.lens(Role::Input);
    let in_types = case.dtypes(Role::Input);
    let (out_lens, out_types) = (case.lens(Role::Output), case.dtypes(Role::Output));
    let dstate = cuda.zeros(nseq * size);
    let mut decoded: Vec<Vec<u8>> = out_types.iter().zip(&out_lens).map(|(&d, &n)| vec![0u8; nseq * steps * n * dsize(d)]).collect();
    for t in 0..steps {
        let step_inputs: Vec<Dev> = (0..in_lens.len())
            .map(|k| {
                let per_seq: Vec<Vec<f64>> = case.inputs.iter().map(|seq| seq[k][t * in_lens[k]..(t + 1) * in_lens[k]].to_vec()).collect();
                let refs: Vec<&Vec<f64>> = per_seq.iter().collect();
                cuda.upload(&field_bytes(in_types[k], &refs))
            })
            .collect();
        let step_outs: Vec<Dev> =
            out_types.iter().zip(&out_lens).map(|(&d, &n)| cuda.zeros(nseq * n * dsize(d))).collect();
        let mut args: Vec<Arg> = gpu.params.iter().map(|d| Arg::U64(d.ptr)).collect();
        args.extend(step_inputs.iter().map(|d| Arg::U64(d.ptr)));
        args.extend(step_outs.iter().map(|d| Arg::U64(d.ptr)));
        let flags = WRITE_OUTPUTS | if t > 0 { HAS_STATE } else { 0 };
        args.extend([
            Arg::U64(nseq as u64),
            Arg::U64(1),
            Arg::U64(1),
            Arg::U64(dstate.ptr),
            Arg::U64(dstate.ptr),
            Arg::U32(flags),
        ]);
        cuda.run(module, &gpu.m, Kernel::Scan, nseq as u64, &args);
        for (k, d) in step_outs.iter().enumerate() {
            let bytes = cuda.download(d);
            let w = out_lens[k] * dsize(out_types[k]);
            for s in 0..nseq {
                let at = (s * steps + t) * w;
                decoded[k][at..at + w].copy_from_slice(&bytes[s * w..(s + 1) * w]);
            }
        }
        step_inputs.into_iter().chain(step_outs).for_each(|d| cuda.free(d));
    }
    let recurrent_trimmed: Vec<Vec<u8>> = recurrent.iter().zip(&decoded).map(|(r, d)| r[..d.len()].to_vec()).collect();
    assert_bytes_equal("decode steps", name, &decoded, &recurrent_trimmed);

    // One thread per entry, where the operator has that kernel: the same values bit for
    // bit as psm_scan, recurrent (with the final state), reverse and from carries.
    if gpu.m.kernel(Kernel::ScanEntries).is_some() {
        let entries = gpu.m.layout.field_lens[0];
        let outs6 = gpu.outputs(&case);
        let state6 = cuda.zeros(nseq * size);
        gpu.scan_with(Kernel::ScanEntries, entries, &case, &outs6, steps, steps, 0, state6.ptr, WRITE_OUTPUTS);
        assert_bytes_equal("psm_scan_entries", name, &gpu.get(&outs6), &recurrent);
        assert!(cuda.download(&state6) == final_state, "{name}: psm_scan_entries: final state");
        let outs7 = gpu.outputs(&case);
        gpu.scan_with(Kernel::ScanEntries, entries, &case, &outs7, steps, steps, 0, 0, WRITE_OUTPUTS | NO_STATE_OUT | REVERSE);
        assert_bytes_equal("psm_scan_entries reverse", name, &gpu.get(&outs7), &gpu.get(&outs3));
        let aggs8 = cuda.zeros(nseq * nchunks * size);
        gpu.scan_with(Kernel::ScanEntries, entries, &case, &gpu.outputs(&case), steps, chunk, 0, aggs8.ptr, 0);
        assert!(
            same_elements(&gpu.m.layout, &cuda.download(&aggs8), &cuda.download(&aggs), nseq * nchunks),
            "{name}: psm_scan_entries: chunk aggregates"
        );
        let outs8 = gpu.outputs(&case);
        let flags = WRITE_OUTPUTS | CARRY_IN | NO_STATE_OUT;
        gpu.scan_with(Kernel::ScanEntries, entries, &case, &outs8, steps, chunk, carries.ptr, 0, flags);
        assert_bytes_equal("psm_scan_entries from carries", name, &gpu.get(&outs8), &gpu.get(&outs4));
        println!("{name}: psm_scan_entries ({entries} entries) = psm_scan bit for bit");
    }

    // Combines one thread per entry: the carries again, equal to psm_combine's.
    if let Some(sig) = gpu.m.kernel(Kernel::CombineEntries) {
        let entries = gpu.m.layout.field_lens[0];
        let carries2 = cuda.zeros(nseq * nchunks * size);
        for c in 1..nchunks {
            let mut args: Vec<Arg> = gpu.params.iter().map(|d| Arg::U64(d.ptr)).collect();
            args.extend([
                Arg::U64(nseq as u64),
                Arg::U64(1),
                Arg::U64(carries2.ptr + (c * size) as u64),
                Arg::U64(row),
                Arg::U64(0),
                Arg::U64(carries2.ptr + ((c - 1) * size) as u64),
                Arg::U64(row),
                Arg::U64(0),
                Arg::U64(aggs.ptr + ((c - 1) * size) as u64),
                Arg::U64(row),
                Arg::U64(0),
                Arg::U32(if c == 1 { LEFT_IDENTITY } else { 0 }),
            ]);
            assert_eq!(sig.params.len(), args.len());
            cuda.run(module, &gpu.m, Kernel::CombineEntries, (nseq * entries) as u64, &args);
        }
        assert!(
            same_elements(&gpu.m.layout, &cuda.download(&carries2), &cuda.download(&carries), nseq * nchunks),
            "{name}: psm_combine_entries: carries"
        );
        println!("{name}: psm_combine_entries ({entries} entries) = psm_combine bit for bit");
    }

    // The declared identity.
    if agg.identity.is_some() {
        let ids = cuda.zeros(3 * size);
        let mut args: Vec<Arg> = gpu.params.iter().map(|d| Arg::U64(d.ptr)).collect();
        args.extend([Arg::U64(3), Arg::U64(ids.ptr), Arg::U64(size as u64)]);
        cuda.run(module, &gpu.m, Kernel::Identity, 3, &args);
        let eval = psm_ir::interp::Evaluator::new(&agg, &info);
        let mut d = domain();
        let expected = eval.identity(&mut d, &case.params).unwrap().unwrap();
        let bytes = cuda.download(&ids);
        for k in 0..3 {
            let found = decode_element(&gpu.m.layout, &bytes[k * size..]);
            check_fields(name, "identity", exact, &gpu.m.layout.dtypes, &found, &expected);
        }
    }
    println!("{name}: ok ({})", if exact { "recurrent bit-identical to the interpreter" } else { "within the tolerance" });
}

/// Whether two element arrays of `count` elements hold the same field values bit for
/// bit (padding bytes aside).
fn same_elements(layout: &psm_codegen::clif::Layout, a: &[u8], b: &[u8], count: usize) -> bool {
    (0..count).all(|k| {
        let (x, y) = (decode_element(layout, &a[k * layout.size..]), decode_element(layout, &b[k * layout.size..]));
        x.iter().zip(&y).zip(&layout.dtypes).all(|((u, v), &d)| u.iter().zip(v).all(|(p, q)| same(d, *p, *q)))
    })
}

fn check_fields(name: &str, what: &str, exact: bool, dtypes: &[Dtype], found: &Fields<f64>, expected: &Fields<f64>) {
    for (k, (a, b)) in found.iter().zip(expected).enumerate() {
        let scale = b.iter().map(|x| x.abs()).filter(|x| x.is_finite()).fold(0.0, f64::max);
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let ok = same(dtypes[k], x, y) || (!exact && (x - y).abs() <= TOL * (y.abs() + scale));
            assert!(ok, "{name}: {what}: field {k} entry {i}: gpu {x:e}, expected {y:e}");
        }
    }
}

#[test]
fn every_library_operator_on_the_gpu() {
    let Some(cuda) = Cuda::open_or_skip("every_library_operator_on_the_gpu") else { return };
    for name in library_names() {
        check_operator(&cuda, &name);
    }
}

// ------------------------------------------------------------------ random programs

/// Random programs (every construct, i32/f64/bool values, guards, lets, both readout
/// kinds, `empty(p)`): the recurrent scan with its final state bit for bit against the
/// interpreter, on random data and on special values (NaN, infinities, ±0, subnormals,
/// extreme integers). Transcendental calls are replaced by exact built-ins of the same
/// arity (`exp`/`tanh`/`softplus` → `abs`, `log`/`sigmoid` → `sqrt`, `pow` → `max`):
/// the device math is measured on its own (`device_math_accuracy`), and a random
/// recurrence amplifies a last-bit difference beyond any fixed tolerance.
#[test]
fn random_programs_on_the_gpu() {
    let Some(cuda) = Cuda::open_or_skip("random_programs_on_the_gpu") else { return };
    let mut checked = 0;
    for (seed, d, count) in [(2024u64, 3usize, 150usize), (4242, 9, 100)] {
        let mut rng = Rng::new(seed);
        let (mut valid, mut tried) = (0, 0);
        while valid < count && tried < 2000 {
            tried += 1;
            let source = exact_builtins(&common::programs::program(&mut rng, tried, d));
            let module = psm_ir::front::dsl::parse(&source).expect("generated source parses");
            let Ok(infos) = psm_ir::valid::validate(&module, &[]) else { continue };
            valid += 1;
            let (agg, info) = (module.aggregators[0].clone(), infos[0].clone());
            assert!(!transcendental(&agg), "{source}");
            let op = from_parts(agg.clone(), info.clone());
            let mut data_rng = Rng::new(tried as u64 + 1);
            let sets = [Data::random(&op, &mut data_rng, 20), special_data(&op, &mut data_rng, 40)];
            for data in sets {
                let case = Case {
                    agg: &agg,
                    info: &info,
                    nseq: 1,
                    steps: data.steps,
                    params: data.params.clone(),
                    inputs: vec![data.inputs.clone()],
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let (outputs, state) = recurrent(&cuda, &case);
                    {
                        compare("recurrent", &case, true, &outputs, &case.reference(Form::Fold, false));
                        let r = derive::run(&agg, &info, domain(), Form::Fold, &case.params, &case.inputs[0], case.steps)
                            .expect("run");
                        let layout = psm_codegen::clif::Layout::new(&agg, &info);
                        let found = decode_element(&layout, &state);
                        let expected = r.prefixes[case.steps].clone().expect("a prefix");
                        check_fields(&agg.name, "final state", true, &layout.dtypes, &found, &expected);
                    }
                }));
                if let Err(e) = outcome {
                    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                    panic!("program {tried} disagrees: {msg}\n{source}");
                }
                checked += 1;
            }
        }
        assert!(valid * 3 >= count * 2, "only {valid} of {tried} generated programs validate");
    }
    println!("{checked} data sets of random programs bit-identical to the interpreter");
}

/// f32 `max` and `min` (PTX `max.NaN` / `min.NaN` from sm_80 on) over every ordered
/// pair of special values, bit for bit against the interpreter: IEEE 754-2019 maximum
/// and minimum, NaN when either operand is one (of either sign), +0 over -0 for max and
/// -0 over +0 for min, subnormals kept. Random programs cover f64 and i32 only.
#[test]
fn f32_min_max_special_values() {
    let Some(cuda) = Cuda::open_or_skip("f32_min_max_special_values") else { return };
    let source = "aggregator min_max_pairs {
        input   { u, w }
        element { hi, lo }
        lift(x)       { hi = max(x.u, x.w); lo = min(x.u, x.w); }
        combine(a, b) { hi = b.hi; lo = b.lo; }
        readout inclusive(s, x) -> (mx, mn) { mx = s.hi; mn = s.lo; }
    }";
    let (agg, info) = parse_one(source, &[]);
    let subnormal = f32::from_bits(1) as f64;
    let special = [
        0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -f64::NAN, 1.0, -1.0, 0.5,
        subnormal, -subnormal, f32::MAX as f64, f32::MIN as f64, f32::MIN_POSITIVE as f64,
    ];
    let (u, w): (Vec<f64>, Vec<f64>) = special.iter().flat_map(|&a| special.iter().map(move |&b| (a, b))).unzip();
    let case = Case { agg: &agg, info: &info, nseq: 1, steps: u.len(), params: vec![], inputs: vec![vec![u, w]] };
    let text = &ptx::compile(&agg, &info, &Default::default()).expect("compile").text;
    assert!(text.contains("max.NaN.f32") && text.contains("min.NaN.f32"), "sm_90 takes PTX's NaN-propagating forms");
    let (outputs, _) = recurrent(&cuda, &case);
    compare("max and min", &case, true, &outputs, &case.reference(Form::Fold, false));
    let mx = read_values(&outputs[0], Dtype::F32, case.steps);
    let signed_zero = |k: usize| (mx[k] as f32).to_bits();
    assert_eq!((signed_zero(1), signed_zero(special.len())), (0, 0), "max(+0, -0) and max(-0, +0) are +0");
    println!("f32 max and min: {} ordered pairs of special values bit-identical to the interpreter", case.steps);
}

/// The program with every transcendental call replaced by an exact built-in.
fn exact_builtins(source: &str) -> String {
    [("exp(", "abs("), ("tanh(", "abs("), ("softplus(", "abs("), ("log(", "sqrt("), ("sigmoid(", "sqrt("), ("pow(", "max(")]
        .iter()
        .fold(source.to_string(), |s, (from, to)| s.replace(from, to))
}

/// The recurrent scan of every sequence of `case` with its final state: the outputs
/// (bytes per output field) and the final state of sequence 0.
fn recurrent(cuda: &Cuda, case: &Case<'_>) -> (Vec<Vec<u8>>, Vec<u8>) {
    let (agg, info) = (case.agg, case.info);
    let m = ptx::compile(agg, info, &Default::default()).expect("compile");
    let params: Vec<Dev> = agg
        .tensors_of(Role::Param)
        .zip(&case.params)
        .map(|(t, v)| {
            let mut b = vec![0u8; v.len() * dsize(agg.tensors[t].dtype)];
            write_values(&mut b, agg.tensors[t].dtype, v);
            cuda.upload(&b)
        })
        .collect();
    let inputs: Vec<Dev> = agg
        .tensors_of(Role::Input)
        .enumerate()
        .map(|(k, t)| {
            let per_seq: Vec<&Vec<f64>> = case.inputs.iter().map(|seq| &seq[k]).collect();
            cuda.upload(&field_bytes(agg.tensors[t].dtype, &per_seq))
        })
        .collect();
    let module = cuda.load(&m);
    let gpu = Gpu { cuda, m, module, params, inputs };
    let outs = gpu.outputs(case);
    let state = cuda.zeros(case.nseq * gpu.m.layout.size);
    gpu.scan(case, &outs, case.steps, case.steps, 0, state.ptr, WRITE_OUTPUTS);
    let result = (gpu.get(&outs), cuda.download(&state));
    for d in gpu.params.into_iter().chain(gpu.inputs).chain(outs).chain([state]) {
        cuda.free(d);
    }
    result
}

// ------------------------------------------------------------------ device math

/// The device math functions measured against the host's: f32 results in f32 ulps
/// from the f64 function (so a correctly rounded result is within 0.5), f64 results in
/// ulps of Rust's f64 methods (the C library, itself within about 1 ulp), over 2^20
/// arguments spread over each function's range plus special values, each against the
/// bound the module documentation of psm-codegen's `ptx::math` derives. Prints the
/// largest errors.
#[test]
fn device_math_accuracy() {
    let Some(cuda) = Cuda::open_or_skip("device_math_accuracy") else { return };
    let source = "aggregator math {
        input   { ex, lx, tx, sx, px, wx, wy, exd: f64, lxd: f64, txd: f64, wxd: f64, wyd: f64 }
        element { e, l, t, s, p, w, ed: f64, ld: f64, td: f64, wd: f64 }
        lift(x) {
            e = exp(x.ex); l = log(x.lx); t = tanh(x.tx); s = sigmoid(x.sx); p = softplus(x.px);
            w = pow(x.wx, x.wy);
            ed = exp(x.exd); ld = log(x.lxd); td = tanh(x.txd); wd = pow(x.wxd, x.wyd);
        }
        combine(a, b) {
            e = b.e; l = b.l; t = b.t; s = b.s; p = b.p; w = b.w; ed = b.ed; ld = b.ld; td = b.td; wd = b.wd;
        }
    }";
    let (agg, info) = parse_one(source, &[]);
    let n = 1usize << 20;
    let mut rng = Rng::new(7);
    let special = [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1.0, -1.0, 2.0, 0.5, -0.5, 3.0, -3.0];
    // Arguments: the special values first, then spreads over each function's range.
    let spread = |rng: &mut Rng, k: usize, lo: f64, hi: f64, log_scale: bool| -> f64 {
        if k < special.len() {
            special[k]
        } else if log_scale {
            2f64.powf(rng.uniform(lo, hi))
        } else {
            rng.uniform(lo, hi)
        }
    };
    let mut cols: Vec<Vec<f64>> = (0..12).map(|_| Vec::with_capacity(n)).collect();
    for k in 0..n {
        let vals = [
            spread(&mut rng, k, -104.0, 89.0, false),
            spread(&mut rng, k, -149.0, 128.0, true),
            spread(&mut rng, k, -12.0, 12.0, false),
            spread(&mut rng, k, -30.0, 30.0, false),
            spread(&mut rng, k, -30.0, 30.0, false),
            spread(&mut rng, k, -8.0, 8.0, true),
            spread(&mut rng, k, -12.0, 12.0, false),
            spread(&mut rng, k, -746.0, 710.0, false),
            spread(&mut rng, k, -1074.0, 1024.0, true),
            spread(&mut rng, k, -25.0, 25.0, false),
            spread(&mut rng, k, -30.0, 30.0, true),
            spread(&mut rng, k, -30.0, 30.0, false),
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
    }
    // Negative bases with integer and non-integer exponents, small arguments of tanh.
    let some = special.len()..special.len() + 2000;
    cols[5][some.clone()].iter_mut().for_each(|x| *x = -*x);
    cols[6][some.clone()].iter_mut().for_each(|x| *x = x.round());
    cols[10][some.clone()].iter_mut().for_each(|x| *x = -*x);
    cols[11][some.clone()].iter_mut().step_by(2).for_each(|x| *x = x.round());
    cols[2][some.clone()].iter_mut().for_each(|x| *x *= 1e-6);
    cols[9][some].iter_mut().for_each(|x| *x *= 1e-9);
    let m = ptx::compile(&agg, &info, &Default::default()).expect("compile");
    let inputs: Vec<Dev> = agg
        .tensors_of(Role::Input)
        .enumerate()
        .map(|(k, t)| cuda.upload(&field_bytes(agg.tensors[t].dtype, &[&cols[k]])))
        .collect();
    let module = cuda.load(&m);
    let gpu = Gpu { cuda: &cuda, m, module, params: vec![], inputs };
    let leaves = cuda.zeros(n * gpu.m.layout.size);
    let mut args = gpu.head(true, &[]);
    args.extend([Arg::U64(1), Arg::U64(n as u64), Arg::U64(leaves.ptr), Arg::U32(0)]);
    cuda.run(module, &gpu.m, Kernel::Lift, n as u64, &args);
    let bytes = cuda.download(&leaves);
    let layout = &gpu.m.layout;
    let f32_of = |x: f64| x as f32 as f64;
    type Reference = fn(f64, f64) -> f64;
    let fields: [(&str, usize, usize, Reference); 10] = [
        ("exp f32", 0, 0, |x, _| x.exp()),
        ("log f32", 1, 1, |x, _| x.ln()),
        ("tanh f32", 2, 2, |x, _| x.tanh()),
        // sigmoid and softplus: the interpreter's f32 formula around correctly rounded
        // exp and log (what the device computes, up to the errors of its exp and log).
        ("sigmoid f32", 3, 3, |x, _| {
            let e = (-x).exp() as f32;
            (1.0 / (1.0 + e)) as f64
        }),
        ("softplus f32", 4, 4, |x, _| {
            let head = if x > 0.0 { x as f32 } else { 0.0 };
            let s = 1.0 + (-x.abs()).exp() as f32;
            (head + (s as f64).ln() as f32) as f64
        }),
        ("pow f32", 5, 5, |x, y| x.powf(y)),
        ("exp f64", 6, 7, |x, _| x.exp()),
        ("log f64", 7, 8, |x, _| x.ln()),
        ("tanh f64", 8, 9, |x, _| x.tanh()),
        ("pow f64", 9, 10, |x, y| x.powf(y)),
    ];
    // psm-ir's opt::shared_exp writes 1 for exp(±0) (the first two arguments): exact
    // only if the device's exp of ±0 is exactly 1, in f32 (fields[0]) and f64 (fields[6]).
    for field in [0, 6] {
        for k in 0..2 {
            let found = read_values(&bytes[k * layout.size + layout.offsets[field]..], layout.dtypes[field], 1)[0];
            assert!(found == 1.0, "{}({:e}): gpu {found:e}, not exactly 1", fields[field].0, special[k]);
        }
    }
    let mut report = Vec::new();
    for (name, field, col, reference) in fields {
        let single = layout.dtypes[field] == Dtype::F32;
        let mut worst = (0.0f64, 0usize);
        for k in 0..n {
            let at = k * layout.size + layout.offsets[field];
            let found = read_values(&bytes[at..], layout.dtypes[field], 1)[0];
            let (x, y) = (cols[col][k], cols.get(col + 1).map_or(0.0, |c| c[k]));
            let (x, y) = if single { (f32_of(x), f32_of(y)) } else { (x, y) };
            let exact = reference(x, y);
            let expected = if single { f32_of(exact) } else { exact };
            if expected.is_nan() || found.is_nan() {
                assert!(expected.is_nan() && found.is_nan(), "{name}({x:e}, {y:e}): gpu {found:e}, expected {expected:e}");
                continue;
            }
            if expected.is_infinite() || found.is_infinite() || expected == 0.0 {
                assert!(found == expected, "{name}({x:e}, {y:e}): gpu {found:e}, expected {expected:e}");
                continue;
            }
            let ulp = if single { ulp32(expected as f32) } else { ulp64(expected) };
            // softplus rounds 1 + e^-|x| to f32: where that sum is within a few ulps of
            // a rounding boundary, exp's error may round it the other way, moving the
            // result by up to an ulp of 1 (far more than its own ulp when it is small).
            let unit = if name == "softplus f32" { ulp.max(ulp32(1.0)) } else { ulp };
            let err = (found - exact).abs() / unit;
            if err > worst.0 {
                worst = (err, k);
            }
        }
        // f64 pow rounds y·log|x| (|y·log|x|| ≤ 745 for a finite non-zero result): up
        // to about 3·|y·log|x|| ulp (the module documentation of ptx::math).
        // f32 exp and log (ex2.approx / lg2.approx): 5.5 (3 but where the result falls
        // into the binade below 2^t's) and 12 ulp; sigmoid: exp's relative error
        // (2.5·2^-23 + 2^-24) against the reference's correctly rounded e (2^-24 more),
        // then the roundings of 1 + e and of the quotient, 4.8e-7 in all: 8 ulp at the
        // top of a binade; softplus: log's 12 plus the ulp of 1 + e (in the unit above).
        let bound = match name {
            "pow f64" => 3.0 * 745.0 + 4.0,
            "tanh f64" => 8.0,
            n if n.ends_with("f64") => 4.0,
            "exp f32" => 5.5,
            "log f32" => 12.0,
            "sigmoid f32" => 8.0,
            "softplus f32" => 14.0,
            _ => 1.0,
        };
        report.push((format!("{name}: max {:.3} ulp (argument {:e}), bound {bound}", worst.0, cols[col][worst.1]), worst.0 <= bound));
    }
    println!("{}", report.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>().join("\n"));
    assert!(report.iter().all(|(_, ok)| *ok), "a device math function exceeds its bound");
}

fn ulp32(x: f32) -> f64 {
    let a = x.abs();
    let next = f32::from_bits(a.to_bits() + 1);
    (next as f64 - a as f64).max(f32::from_bits(1) as f64)
}

fn ulp64(x: f64) -> f64 {
    let a = x.abs();
    (f64::from_bits(a.to_bits() + 1) - a).max(f64::from_bits(1))
}


/// The diagonal affine recurrence of the issue's benchmark, [8, 1024, 8192] f32, run by
/// `psm_scan_entries` (one thread per channel): prints the time per run (launch and
/// synchronisation included, mean of 10 after a warm-up) and the effective bandwidth
/// (inputs read once, outputs written once).
#[test]
#[ignore = "a benchmark: run on a GPU machine with --ignored"]
fn diag_affine_timings() {
    let Some(cuda) = Cuda::open_or_skip("diag_affine_timings") else { return };
    let (agg, info) = parse_one(&library_source("diag_affine"), &[("D", 8192)]);
    let (nseq, steps, d) = (8usize, 1024usize, 8192usize);
    let mut rng = Rng::new(3);
    let inputs: Vec<Vec<Vec<f64>>> = (0..nseq)
        .map(|_| agg.tensors_of(Role::Input).map(|t| random_values(&mut rng, &agg, t, steps * d)).collect())
        .collect();
    let case = Case { agg: &agg, info: &info, nseq, steps, params: vec![], inputs };
    let m = ptx::compile(&agg, &info, &Default::default()).expect("compile");
    let input_devs: Vec<Dev> = (0..2)
        .map(|k| {
            let per_seq: Vec<&Vec<f64>> = case.inputs.iter().map(|seq| &seq[k]).collect();
            cuda.upload(&field_bytes(Dtype::F32, &per_seq))
        })
        .collect();
    let module = cuda.load(&m);
    let gpu = Gpu { cuda: &cuda, m, module, params: vec![], inputs: input_devs };
    let bytes = (nseq * steps * d * 4 * 3) as f64;
    let time = |label: &str, f: &mut dyn FnMut()| {
        f();
        let reps = 10;
        let start = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        println!("{label}: {:.3} ms, {:.0} GB/s effective", secs * 1e3, bytes / secs / 1e9);
    };
    let outs = gpu.outputs(&case);
    time("psm_scan_entries recurrent (65536 threads)", &mut || {
        gpu.scan_with(Kernel::ScanEntries, d, &case, &outs, steps, steps, 0, 0, WRITE_OUTPUTS | NO_STATE_OUT)
    });
}

/// Issue 6's sequence lengths for the fla-shaped timings, or those listed in
/// PSM_FLA_LENGTHS (e.g. `16384`, to profile one length; bench/gpu/baselines.py reads the
/// same variable).
fn fla_lengths() -> Vec<usize> {
    let listed: Vec<usize> = std::env::var("PSM_FLA_LENGTHS").unwrap_or_default().split(',').filter_map(|t| t.trim().parse().ok()).collect();
    if listed.is_empty() {
        vec![1024, 4096, 16384]
    } else {
        listed
    }
}

/// The median seconds of one `launch` over `rounds` rounds of 10 back-to-back calls
/// between two synchronizations, after one round of warm-up.
fn median_seconds(cuda: &Cuda, rounds: usize, mut launch: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..=rounds)
        .map(|_| {
            cuda.synchronize();
            let t0 = std::time::Instant::now();
            for _ in 0..10 {
                launch();
            }
            cuda.synchronize();
            t0.elapsed().as_secs_f64() / 10.0
        })
        .skip(1)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

// ------------------------------------------------------------------ delta rule (tensor cores)

/// The buffers of one run of the delta rule's kernels (psm-codegen's `ptx::delta`, then
/// `psm_cw_outputs` over the pseudo-values) for `nseq` sequences of `steps`.
struct DeltaRun {
    nseq: usize,
    steps: usize,
    nchunks: usize,
    w: Dev,
    khat: Dev,
    upre: Dev,
    decay: Dev,
    states: Dev,
    u: Dev,
    out: Dev,
}

/// The inputs of a [`DeltaRun`], in the modules' storage (`beta`, `g` and `s0` f32); the
/// keys serve as b (DeltaNet's and Gated DeltaNet's b = k).
struct DeltaInputs {
    q: Dev,
    k: Dev,
    v: Dev,
    beta: Dev,
    g: Dev,
    s0: Option<Dev>,
}

impl DeltaInputs {
    fn free(self, cuda: &Cuda) {
        for d in [self.q, self.k, self.v, self.beta, self.g].into_iter().chain(self.s0) {
            cuda.free(d);
        }
    }
}

/// A kernel launch: in the outputs module or the delta rule's, name, grid, (threads,
/// dynamic shared bytes), arguments.
type Launch = (bool, &'static str, [u32; 3], (u32, u32), Vec<Arg>);

impl DeltaRun {
    fn new(cuda: &Cuda, m: &psm_codegen::ptx::delta::DeltaModule, nseq: usize, steps: usize) -> DeltaRun {
        let (keys, values) = (m.shape.keys, m.shape.values);
        let nchunks = steps.div_ceil(psm_codegen::ptx::chunkwise::CHUNK);
        let per_chunk = nseq * nchunks * psm_codegen::ptx::chunkwise::CHUNK;
        let entry = m.entry_bytes();
        DeltaRun {
            nseq,
            steps,
            nchunks,
            w: cuda.zeros(nseq * nchunks * m.operand_bytes()),
            khat: cuda.zeros(nseq * nchunks * m.operand_bytes()),
            upre: cuda.zeros(per_chunk * m.padded_values * entry),
            decay: cuda.zeros(nseq * nchunks * 4),
            states: cuda.zeros(nseq * (nchunks + 1) * keys * values * 4),
            u: cuda.zeros(nseq * steps * values * entry),
            out: cuda.zeros(nseq * steps * values * entry),
        }
    }

    /// The three launches over `x` in order: prepare, states (from `x.s0` when given),
    /// outputs.
    fn kernels(&self, m: &psm_codegen::ptx::delta::DeltaModule, c: &psm_codegen::ptx::chunkwise::ChunkwiseModule, x: &DeltaInputs) -> Vec<Launch> {
        let p = |d: &Dev| Arg::U64(d.ptr);
        let (nseq, nchunks, steps) = (self.nseq as u32, self.nchunks as u32, Arg::U64(self.steps as u64));
        let (s0, flags) = x.s0.as_ref().map_or((Arg::U64(0), 0), |s| (p(s), HAS_STATE));
        let (gx, gy, gz) = c.output_grid(nchunks, nseq);
        let prepare = vec![p(&x.k), p(&x.k), p(&x.beta), p(&x.g), p(&x.v), p(&self.w), p(&self.khat), p(&self.upre), p(&self.decay), steps];
        let states = vec![p(&self.w), p(&self.khat), p(&self.upre), p(&self.decay), s0, p(&self.states), p(&self.u), steps, Arg::U32(flags)];
        let outputs = vec![p(&x.q), p(&x.k), p(&self.u), p(&x.g), p(&self.states), p(&self.out), steps, Arg::U32(0)];
        let vtiles = m.shape.values.div_ceil(m.state_value_tile) as u32;
        vec![
            (false, "psm_cwd_prepare", [nchunks, nseq, 1], (psm_codegen::ptx::delta::PREPARE_THREADS, m.prepare_shared_bytes as u32), prepare),
            (false, "psm_cwd_states", [vtiles, nseq, 1], (m.state_threads, m.state_shared_bytes as u32), states),
            (true, "psm_cw_outputs", [gx, gy, gz], (psm_codegen::ptx::chunkwise::OUTPUT_THREADS, c.output_shared_bytes as u32), outputs),
        ]
    }

    fn launch(&self, cuda: &Cuda, (delta, outputs): (*mut c_void, *mut c_void), launches: &[Launch], wait: bool) {
        for (in_outputs, name, grid, block, args) in launches {
            cuda.launch_shared(if *in_outputs { outputs } else { delta }, name, *grid, *block, args, wait);
        }
    }

    fn free(self, cuda: &Cuda) {
        for d in [self.w, self.khat, self.upre, self.decay, self.states, self.u, self.out] {
            cuda.free(d);
        }
    }
}

/// `count` rows of `width` uniform entries in [−1, 1), each scaled to unit length, then
/// passed through `round` (the library's operators normalize their keys and queries).
fn unit_rows(seed: &mut u64, count: usize, width: usize, round: fn(f32) -> f32) -> Vec<f32> {
    let x: Vec<f32> = (0..count * width).map(|_| uniform(seed, -1.0, 1.0) as f32).collect();
    x.chunks(width)
        .flat_map(|r| {
            let norm = r.iter().map(|a| a * a).sum::<f32>().sqrt();
            r.iter().map(move |a| round(a / norm)).collect::<Vec<_>>()
        })
        .collect()
}

/// The delta rule's tensor-core kernels (psm-codegen's `ptx::delta`) against the
/// recurrence in f64: S_t = γ_t (I − β_t k_t k_tᵀ) S_(t−1) + k_t v_tᵀ (DeltaNet without a
/// gate, Gated DeltaNet with one given as a log or a value), o_t = S_tᵀ q_t (or
/// S_(t−1)ᵀ q_t), keys L2-normalized and β in (0, 1) as the library's operators make
/// them, at lengths around the chunk, key/value counts that are not multiples of the
/// tiles, with an initial state at odd lengths. bf16 products on bf16 inputs, read as
/// f32 and (two of the shapes) as bf16, the state kernel's value tile at its default and
/// (the wider shapes) 16 and 64: outputs and the final state within issue 6's
/// ‖out − ref‖ / ‖ref‖ < 1e-2. Split products (`Products::Bf16x3`, the value tile at its
/// default and, the wider shapes, 64) on f32 inputs that are not bf16 values: within
/// 1e-4 ("far below 1e-3 in f32"), where bf16 products on the same kind of inputs are
/// not (checked last, so that the bound tells the two apart).
#[test]
fn delta_rule_tensor_cores() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage, MAX_VALUE_TILE};
    use psm_codegen::ptx::delta::{compile_delta_with, DeltaOptions, STATE_VALUE_TILE};
    const SPLIT_BOUND: f64 = 1e-4;
    let Some(cuda) = Cuda::open_or_skip("delta_rule_tensor_cores") else { return };
    let mut seed = 5u64;
    // The worst error of each (storage, state value tile, products), for where the margin goes.
    let mut worst: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let load = |shape: ChunkwiseShape, options: DeltaOptions| {
        let m = compile_delta_with(shape, options, 90).expect("kernels");
        let c = compile_chunkwise_with(shape, options.storage, options.products, 90).expect("kernels");
        let loaded = (cuda.load_text(&m.text), cuda.load_text(&c.text));
        (m, c, loaded)
    };
    for (keys, values) in [(16, 16), (8, 8), (64, 100), (128, 128)] {
        let wide = values > 32;
        let option = |storage, state_value_tile, products| DeltaOptions { storage, state_value_tile, products };
        let mut options = vec![option(Storage::F32, STATE_VALUE_TILE, Products::Bf16), option(Storage::F32, STATE_VALUE_TILE, Products::Bf16x3)];
        if wide {
            options.extend([
                option(Storage::F32, 16, Products::Bf16),
                option(Storage::F32, MAX_VALUE_TILE, Products::Bf16),
                option(Storage::F32, MAX_VALUE_TILE, Products::Bf16x3),
            ]);
        }
        if [(8, 8), (128, 128)].contains(&(keys, values)) {
            options.push(option(Storage::Bf16, STATE_VALUE_TILE, Products::Bf16));
        }
        for decay in [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value] {
            for exclusive in [false, true] {
                let shape = ChunkwiseShape { keys, values, decay, exclusive };
                let modules: Vec<_> = options.iter().map(|&o| load(shape, o)).collect();
                for steps in [1usize, 2, 7, 63, 64, 65, 200] {
                    // bf16 inputs for bf16 products (the error measured is the kernels'
                    // own), f32 inputs that are not bf16 values for split ones.
                    for products in [Products::Bf16, Products::Bf16x3] {
                        let round: fn(f32) -> f32 = if products == Products::Bf16 { bf16_round } else { |x| x };
                        let case = DeltaCase::new(&mut seed, shape, steps, round);
                        for (m, c, loaded) in modules.iter().filter(|(m, _, _)| m.products == products) {
                            let what = format!("{:?} storage, state value tile {}, {products:?} products", m.storage, m.state_value_tile);
                            let (found, found_finals) = case.run(&cuda, (m, c, *loaded));
                            let bound = if products == Products::Bf16 { 1e-2 } else { SPLIT_BOUND };
                            let err = within_bound(bound, &format!("{}, {what}", case.what), (&found, &case.want), (&found_finals, &case.finals));
                            let slot = worst.entry(what).or_default();
                            *slot = slot.max(err);
                        }
                    }
                }
            }
        }
    }
    for (options, err) in &worst {
        eprintln!("delta_rule_tensor_cores: {options}: worst relative error {err:e}");
    }
    let shape = ChunkwiseShape { keys: 128, values: 128, decay: ChunkDecay::Log, exclusive: false };
    let case = DeltaCase::new(&mut seed, shape, 200, |x| x);
    let (m, c, loaded) = load(shape, DeltaOptions::default());
    let (found, _) = case.run(&cuda, (&m, &c, loaded));
    let bf16 = relative(&found, &case.want);
    eprintln!("delta_rule_tensor_cores: bf16 products on f32 inputs {bf16:e}");
    assert!(bf16 > SPLIT_BOUND, "bf16 products within the split products' bound ({bf16:e}): the test would not tell them apart");
}

/// One case of [`delta_rule_tensor_cores`]: 3 sequences' inputs (values, unit keys and
/// queries passed through `round`, β in (0, 1), decays in (0.8, 1), an initial state at
/// odd lengths) and the f64 recurrence's outputs and final states.
struct DeltaCase {
    shape: psm_codegen::ptx::chunkwise::ChunkwiseShape,
    nseq: usize,
    steps: usize,
    what: String,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    beta: Vec<f32>,
    g: Vec<f32>,
    s0: Option<Vec<f32>>,
    want: Vec<f64>,
    finals: Vec<f64>,
}

impl DeltaCase {
    fn new(seed: &mut u64, shape: psm_codegen::ptx::chunkwise::ChunkwiseShape, steps: usize, round: fn(f32) -> f32) -> DeltaCase {
        use psm_codegen::ptx::chunkwise::ChunkDecay;
        let psm_codegen::ptx::chunkwise::ChunkwiseShape { keys, values, decay, exclusive } = shape;
        let nseq = 3;
        let with_state = steps % 2 == 1;
        let mut gen = |n: usize, lo: f64, hi: f64| (0..n).map(|_| uniform(seed, lo, hi) as f32).collect::<Vec<f32>>();
        let v: Vec<f32> = gen(nseq * steps * values, -1.0, 1.0).into_iter().map(round).collect();
        let beta = gen(nseq * steps, 0.0, 1.0);
        let gamma = gen(nseq * steps, 0.8, 1.0);
        let s0 = with_state.then(|| gen(nseq * keys * values, -1.0, 1.0));
        let (q, k) = (unit_rows(seed, nseq * steps, keys, round), unit_rows(seed, nseq * steps, keys, round));
        let g: Vec<f32> = match decay {
            ChunkDecay::Log => gamma.iter().map(|x| x.ln()).collect(),
            _ => gamma.clone(),
        };
        let reference = Recurrence { keys, values, nseq, steps, exclusive, q: &q, k: &k, v: &v, beta: Some(&beta), s0: s0.as_deref() };
        let (want, finals) = reference.run(|row, _| if decay == ChunkDecay::None { 1.0 } else { gamma[row] as f64 });
        let what = format!("keys {keys}, values {values}, {decay:?}, exclusive {exclusive}, steps {steps}, initial state {with_state}");
        DeltaCase { shape, nseq, steps, what, q, k, v, beta, g, s0, want, finals }
    }

    /// The outputs and final states of the delta rule's kernels and the outputs kernel
    /// on the case's inputs (in the modules' storage).
    fn run(
        &self,
        cuda: &Cuda,
        (m, c, loaded): (&psm_codegen::ptx::delta::DeltaModule, &psm_codegen::ptx::chunkwise::ChunkwiseModule, (*mut c_void, *mut c_void)),
    ) -> (Vec<f32>, Vec<f32>) {
        let stored = |x: &[f32]| cuda.upload(&stored_bytes(x, m.storage));
        let inputs = DeltaInputs {
            q: stored(&self.q),
            k: stored(&self.k),
            v: stored(&self.v),
            beta: cuda.upload(&f32_bytes(&self.beta)),
            g: cuda.upload(&f32_bytes(&self.g)),
            s0: self.s0.as_ref().map(|s| cuda.upload(&f32_bytes(s))),
        };
        let run = DeltaRun::new(cuda, m, self.nseq, self.steps);
        run.launch(cuda, loaded, &run.kernels(m, c, &inputs), true);
        let found = stored_values(&cuda.download(&run.out), m.storage);
        let found_finals = final_states(&f32s(&cuda.download(&run.states)), self.nseq, run.nchunks, self.shape.keys * self.shape.values);
        run.free(cuda);
        inputs.free(cuda);
        (found[..self.want.len()].to_vec(), found_finals)
    }
}

/// Timings of the delta rule's kernels at fla's chunk_delta_rule shape (B = 4, H = 16,
/// K = V = 128; T = 1024, 4096, 16384), Gated DeltaNet's log gate, unit keys and
/// queries, with the default options (f32 storage, the default state value tile, bf16
/// products), a state value tile of 16 (the kernels' first version), split products
/// (`Products::Bf16x3`, f32 accuracy, as the runtime takes them for f32 data) and bf16
/// storage (k, v, q, U', the pseudo-values and the outputs; β and the gate f32): the
/// median over 10 rounds of 10
/// back-to-back runs of the three kernels between two synchronizations, and each kernel
/// alone (its inputs as the whole run leaves them). Prints one JSON line per length for
/// the default value tile in bf16 in bench/gpu/baselines.py's format (as
/// `chunkwise_timings`: "vs" names fla's row of the same problem).
/// `cargo test -p psm-codegen --test ptx_gpu -- --ignored delta_rule_timings --nocapture`
#[test]
#[ignore = "a benchmark: run on a GPU machine"]
fn delta_rule_timings() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage};
    use psm_codegen::ptx::delta::{compile_delta_with, DeltaOptions};
    let Some(cuda) = Cuda::open_or_skip("delta_rule_timings") else { return };
    let (batch, heads, d) = (4usize, 16usize, 128usize);
    let nseq = batch * heads;
    let shape = ChunkwiseShape { keys: d, values: d, decay: ChunkDecay::Log, exclusive: false };
    let default = DeltaOptions::default();
    let options = [
        default,
        DeltaOptions { state_value_tile: 16, ..default },
        DeltaOptions { products: Products::Bf16x3, ..default },
        DeltaOptions { storage: Storage::Bf16, ..default },
    ];
    let modules: Vec<_> = options
        .iter()
        .map(|&o| {
            let (m, c) = (compile_delta_with(shape, o, 90).expect("kernels"), compile_chunkwise_with(shape, o.storage, o.products, 90).expect("kernels"));
            let loaded = (cuda.load_text(&m.text), cuda.load_text(&c.text));
            (m, c, loaded)
        })
        .collect();
    let mut seed = 13u64;
    for steps in fla_lengths() {
        let rows = nseq * steps;
        let (q, k) = (unit_rows(&mut seed, rows, d, bf16_round), unit_rows(&mut seed, rows, d, bf16_round));
        let mut gen = |n: usize, lo: f64, hi: f64| (0..n).map(|_| bf16_round(uniform(&mut seed, lo, hi) as f32)).collect::<Vec<f32>>();
        let (v, beta, g) = (gen(rows * d, -1.0, 1.0), gen(rows, 0.0, 1.0), gen(rows, -0.1, 0.0));
        for (m, c, loaded) in &modules {
            let stored = |x: &[f32]| cuda.upload(&stored_bytes(x, m.storage));
            let inputs = DeltaInputs { q: stored(&q), k: stored(&k), v: stored(&v), beta: cuda.upload(&f32_bytes(&beta)), g: cuda.upload(&f32_bytes(&g)), s0: None };
            let run = DeltaRun::new(&cuda, m, nseq, steps);
            let launches = run.kernels(m, c, &inputs);
            let median = |launches: &[Launch], rounds: usize| median_seconds(&cuda, rounds, || run.launch(&cuda, *loaded, launches, false));
            let seconds = median(&launches, 10);
            let parts: Vec<String> = launches.iter().map(|l| format!("{} {:.3} ms", l.1, median(std::slice::from_ref(l), 5) * 1e3)).collect();
            // (bf16 products unnamed: their rows read as before.)
            eprintln!(
                "delta rule T = {steps}, {:?}, state value tile {}{}: {:.3} ms = {}",
                m.storage,
                m.state_value_tile,
                if m.products == Products::Bf16x3 { ", Bf16x3 products" } else { "" },
                seconds * 1e3,
                parts.join(" + ")
            );
            if m.storage == Storage::Bf16 {
                // q, k, v read and o written once (bf16), β and the gate (f32).
                let bytes = 4 * rows * d * 2 + 2 * rows * 4;
                let shape = [batch, steps, heads, d];
                println!(r#"{{"suite": "fla", "name": "psm chunkwise, delta rule", "shape": {shape:?}, "seconds": {seconds:e}, "bytes": {bytes}, "vs": ["chunk_delta_rule"]}}"#);
            }
            run.free(&cuda);
            inputs.free(&cuda);
        }
    }
}

// ------------------------------------------------------------------ chunkwise (tensor cores)

/// A seeded uniform in [lo, hi).
fn uniform(state: &mut u64, lo: f64, hi: f64) -> f64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    lo + (hi - lo) * ((*state >> 11) as f64 / (1u64 << 53) as f64)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// x rounded to the nearest bf16 (ties to even), as an f32.
fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// ‖found − want‖ / ‖want‖ (Frobenius).
fn relative(found: &[f32], want: &[f64]) -> f64 {
    let num: f64 = found.iter().zip(want).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The reference recurrence of the tensor-core tests, in f64, over `nseq` sequences of
/// `steps`: S_t = D_t (S_(t−1) − β_t k_t (k_tᵀ S_(t−1))) + k_t v_tᵀ, D_t diagonal (one
/// decay, or one per key), from `s0` (zeros without one); without β the delta term is
/// absent (S_t = D_t S_(t−1) + k_t v_tᵀ). Inputs `[nseq, steps, width]`, β `[nseq, steps]`.
struct Recurrence<'a> {
    keys: usize,
    values: usize,
    nseq: usize,
    steps: usize,
    exclusive: bool,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    beta: Option<&'a [f32]>,
    s0: Option<&'a [f32]>,
}

impl Recurrence<'_> {
    /// The outputs o_t = S_tᵀ q_t (S_(t−1)ᵀ q_t when exclusive) `[nseq, steps, values]`
    /// and the final states `[nseq, keys, values]`, with `decay(row, key)` the entry of
    /// D at row `seq · steps + t`.
    fn run(&self, decay: impl Fn(usize, usize) -> f64) -> (Vec<f64>, Vec<f64>) {
        let (keys, values, steps) = (self.keys, self.values, self.steps);
        let size = keys * values;
        let mut want = vec![0.0f64; self.nseq * steps * values];
        let mut finals = vec![0.0f64; self.nseq * size];
        for s in 0..self.nseq {
            let mut st: Vec<f64> = match self.s0 {
                Some(s0) => s0[s * size..(s + 1) * size].iter().map(|&x| x as f64).collect(),
                None => vec![0.0; size],
            };
            for t in 0..steps {
                let row = s * steps + t;
                let read = |st: &[f64], want: &mut [f64]| {
                    for j in 0..values {
                        want[row * values + j] = (0..keys).map(|i| self.q[row * keys + i] as f64 * st[i * values + j]).sum();
                    }
                };
                if self.exclusive {
                    read(&st, &mut want);
                }
                let kk = |i: usize| self.k[row * keys + i] as f64;
                let d: Vec<f64> = (0..keys).map(|i| decay(row, i)).collect();
                for j in 0..values {
                    // β_t (k_tᵀ S)_j, read before column j changes.
                    let removed = self.beta.map_or(0.0, |beta| beta[row] as f64 * (0..keys).map(|i| kk(i) * st[i * values + j]).sum::<f64>());
                    for i in 0..keys {
                        let x = &mut st[i * values + j];
                        *x = d[i] * (*x - kk(i) * removed) + kk(i) * self.v[row * values + j] as f64;
                    }
                }
                if !self.exclusive {
                    read(&st, &mut want);
                }
            }
            finals[s * size..(s + 1) * size].copy_from_slice(&st);
        }
        (want, finals)
    }
}

/// The final states (`[nseq, size]`) of a states buffer `[nseq, nchunks + 1, size]`.
fn final_states(all: &[f32], nseq: usize, nchunks: usize, size: usize) -> Vec<f32> {
    (0..nseq).flat_map(|s| all[(s * (nchunks + 1) + nchunks) * size..][..size].to_vec()).collect()
}

/// Asserts issue 6's bound for bf16 inputs with f32 accumulation, ‖out − ref‖ / ‖ref‖
/// < 1e-2, on the (found, wanted) outputs and final states; the larger error.
fn within_bf16_bound(what: &str, (found, want): (&[f32], &[f64]), (found_finals, finals): (&[f32], &[f64])) -> f64 {
    within_bound(1e-2, what, (found, want), (found_finals, finals))
}

/// The larger of the outputs' and the final states' relative errors, each asserted below `bound`.
fn within_bound(bound: f64, what: &str, (found, want): (&[f32], &[f64]), (found_finals, finals): (&[f32], &[f64])) -> f64 {
    let (e_out, e_state) = (relative(found, want), relative(found_finals, finals));
    assert!(e_out < bound, "{what}: outputs relative error {e_out:e}");
    assert!(e_state < bound, "{what}: final state relative error {e_state:e}");
    e_out.max(e_state)
}

/// The tensor-core chunkwise kernels (psm-codegen's `ptx::chunkwise`) against the
/// recurrence in f64: S_t = Diag(γ_t) S_(t−1) + k_t v_tᵀ (γ_t one decay, or one per key),
/// o_t = S_tᵀ q_t (or S_(t−1)ᵀ q_t), for every decay kind and readout, at lengths around
/// the chunk and its sub-chunks and key/value counts that are not multiples of the
/// tiles; with bf16 inputs, outputs and the final state within issue 6's bound for bf16
/// inputs with f32 accumulation, ‖out − ref‖ / ‖ref‖ < 1e-2 (every chunk's entering
/// state is checked through the final one). Per-key decays also run strong, logs in
/// (−6, −3) a step, so that diagonal blocks both within and beyond the factorization's
/// range occur (16 steps decay by e^−48 to e^−96).
#[test]
fn chunkwise_tensor_cores() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_stored, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_tensor_cores") else { return };
    let mut seed = 7u64;
    let mut worst = 0.0f64;
    for (shape, strong) in chunkwise_variants() {
        for storage in [Storage::F32, Storage::Bf16] {
            if storage == Storage::Bf16 && ![(8, 8), (128, 128), (7, 5)].contains(&(shape.keys, shape.values)) {
                continue;
            }
            let m = compile_chunkwise_stored(shape, storage, 90).expect("kernels");
            let module = cuda.load_text(&m.text);
            for steps in CHUNKWISE_STEPS {
                // bf16 inputs (issue 6's criterion): the error measured is the kernels'
                // own (bf16 scores, decayed keys and states; f32 sums).
                let (what, (found, want), (found_finals, finals)) = chunkwise_case(&cuda, (module, &m), &mut seed, steps, strong, bf16_round, (false, false));
                worst = worst.max(within_bf16_bound(&what, (&found, &want), (&found_finals, &finals)));
            }
        }
    }
    eprintln!("chunkwise_tensor_cores: worst relative error {worst:e}");
}

/// `psm_cw_fused` (no decay or a scalar one, bf16 inputs, outputs and products) on shapes with a key
/// group for every warp (128 keys: two), for some (40 keys: three groups of four warps,
/// 8 keys: one), inclusive and exclusive, with and without initial states, at the
/// chunkwise lengths and over 1000 steps (both shared buffers many times): outputs and
/// final states within the bf16 bound of the f64 recurrence, and bit for bit the states
/// and outputs kernels' on the same inputs (the same products in the same order; so it
/// measured on the H200 for every case, 2026-11-29).
#[test]
fn chunkwise_fused() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_stored, ChunkDecay, ChunkwiseShape, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_fused") else { return };
    let mut seed = 17u64;
    let (mut worst, mut differing) = (0.0f64, Vec::new());
    let variants = [(8, 8, ChunkDecay::None), (40, 24, ChunkDecay::Log), (128, 128, ChunkDecay::None), (128, 128, ChunkDecay::Log), (16, 64, ChunkDecay::Value)];
    for (keys, values, decay) in variants {
        for exclusive in [false, true] {
            let m = compile_chunkwise_stored(ChunkwiseShape { keys, values, decay, exclusive }, Storage::Bf16, 90).expect("kernels");
            assert!(m.fused_shared_bytes.is_some(), "{keys} keys, {values} values: no psm_cw_fused");
            let module = cuda.load_text(&m.text);
            for steps in CHUNKWISE_STEPS.into_iter().chain([1000]) {
                for initial in [false, true] {
                    let start = seed;
                    let (what, (found, want), (found_finals, finals)) = chunkwise_case(&cuda, (module, &m), &mut seed, steps, false, bf16_round, (true, initial));
                    worst = worst.max(within_bf16_bound(&what, (&found, &want), (&found_finals, &finals)));
                    let mut again = start;
                    let (_, (split, _), (split_finals, _)) = chunkwise_case(&cuda, (module, &m), &mut again, steps, false, bf16_round, (false, initial));
                    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    if !same(&found, &split) || !same(&found_finals, &split_finals) {
                        differing.push(what);
                    }
                }
            }
        }
    }
    eprintln!("chunkwise_fused: worst relative error {worst:e}; {} of the cases differ from the states and outputs kernels' bits: {differing:?}", differing.len());
    assert!(differing.is_empty(), "psm_cw_fused differs from the states and outputs kernels: {differing:?}");
}

/// The sequence lengths every chunkwise GPU test runs: within one chunk, across chunk
/// boundaries (64, 65) and over several chunks.
const CHUNKWISE_STEPS: [usize; 6] = [1, 7, 17, 64, 65, 200];

/// The chunkwise GPU tests' variants: shapes (tile-sized, padded and odd), every decay
/// kind, strong decays for the per-key kinds, inclusive and exclusive readouts, each as
/// (shape, strong).
fn chunkwise_variants() -> impl Iterator<Item = (psm_codegen::ptx::chunkwise::ChunkwiseShape, bool)> {
    use psm_codegen::ptx::chunkwise::{ChunkDecay, ChunkwiseShape};
    let kinds = [ChunkDecay::None, ChunkDecay::Log, ChunkDecay::Value, ChunkDecay::DiagonalLog, ChunkDecay::DiagonalValue];
    [(16, 16), (8, 8), (64, 100), (128, 128), (7, 5)].into_iter().flat_map(move |(keys, values)| {
        kinds.into_iter().flat_map(move |decay| {
            let strengths: &[bool] = if decay.per_key() { &[false, true] } else { &[false] };
            strengths.iter().flat_map(move |&strong| [false, true].map(|exclusive| (ChunkwiseShape { keys, values, decay, exclusive }, strong)))
        })
    })
}

/// One run of a chunkwise module over 3 sequences of `steps` random steps (q, k, v in
/// (−1, 1) passed through `input`; decays in (0.8, 1), or logs in (−6, −3) when
/// `strong`) against the f64 recurrence: a description, (outputs, reference) and (final
/// states, reference).
#[allow(clippy::type_complexity)]
fn chunkwise_case(
    cuda: &Cuda,
    (module, m): (*mut c_void, &psm_codegen::ptx::chunkwise::ChunkwiseModule),
    seed: &mut u64,
    steps: usize,
    strong: bool,
    input: fn(f32) -> f32,
    (fused, initial): (bool, bool),
) -> (String, (Vec<f32>, Vec<f64>), (Vec<f32>, Vec<f64>)) {
    use psm_codegen::ptx::chunkwise::{ChunkDecay, ChunkwiseShape};
    let ChunkwiseShape { keys, values, decay, exclusive } = m.shape;
    let storage = m.storage;
    let nseq = 3;
    let mut gen = |n: usize, lo: f64, hi: f64| (0..n).map(|_| uniform(seed, lo, hi)).collect::<Vec<f64>>();
    let q: Vec<f32> = gen(nseq * steps * keys, -1.0, 1.0).into_iter().map(|x| input(x as f32)).collect();
    let k: Vec<f32> = gen(nseq * steps * keys, -1.0, 1.0).into_iter().map(|x| input(x as f32)).collect();
    let v: Vec<f32> = gen(nseq * steps * values, -1.0, 1.0).into_iter().map(|x| input(x as f32)).collect();
    // Decays in (0.8, 1), or strong ones, as logs or as values (one per step, or one
    // per step and key); the reference uses the f32 values the kernels get.
    let channels = if decay.per_key() { keys } else { 1 };
    let logs = if strong { gen(nseq * steps * channels, -6.0, -3.0) } else { gen(nseq * steps * channels, 0.8, 1.0).iter().map(|x| x.ln()).collect() };
    let g: Vec<f32> = match decay {
        ChunkDecay::Log | ChunkDecay::DiagonalLog => logs.iter().map(|&x| x as f32).collect(),
        _ => logs.iter().map(|&x| x.exp() as f32).collect(),
    };
    let decay_of = |row: usize, i: usize| match decay {
        ChunkDecay::None => 1.0,
        ChunkDecay::Log | ChunkDecay::DiagonalLog => (g[row * channels + i % channels] as f64).exp(),
        _ => g[row * channels + i % channels] as f64,
    };
    let s0: Option<Vec<f32>> = initial.then(|| gen(nseq * keys * values, -1.0, 1.0).into_iter().map(|x| x as f32).collect());
    let reference = Recurrence { keys, values, nseq, steps, exclusive, q: &q, k: &k, v: &v, beta: None, s0: s0.as_deref() };
    let (want, finals) = reference.run(decay_of);
    let stored = |x: &[f32]| cuda.upload(&stored_bytes(x, storage));
    let (dq, dk, dv, dg) = (stored(&q), stored(&k), stored(&v), cuda.upload(&f32_bytes(&g)));
    let ds0 = s0.map(|s0| cuda.upload(&f32_bytes(&s0)));
    let mut run = ChunkwiseRun::new(cuda, m, nseq, steps);
    run.fused = fused;
    run.state_in = ds0.as_ref().map(|d| d.ptr);
    run.launch(cuda, module, m, [&dq, &dk, &dv, &dg], true);
    let mut found = stored_values(&cuda.download(&run.out), storage);
    found.truncate(want.len());
    let found_finals = final_states(&f32s(&cuda.download(&run.states)), nseq, run.nchunks, keys * values);
    run.free(cuda);
    for d in [dq, dk, dv, dg].into_iter().chain(ds0) {
        cuda.free(d);
    }
    let what = format!(
        "keys {keys}, values {values}, {decay:?}, strong {strong}, exclusive {exclusive}, {storage:?}, {:?} products, {}, initial state {initial}, steps {steps}",
        m.products,
        if fused { "psm_cw_fused" } else { "states and outputs kernels" }
    );
    (what, (found, want), (found_finals, finals))
}

/// Issue 6's "far below 1e-3 in f32": the split-operand kernels ([`Products::Bf16x3`])
/// on f32 inputs that are not bf16 values, every decay kind, readout and the shapes and
/// lengths of [`chunkwise_tensor_cores`], outputs and final states within 1e-4 of the
/// f64 recurrence. A numpy emulation of the split products measured 5.5e-6 typically
/// (median, every shape and length) but up to 4e-5 at one step (300 draws of 3
/// sequences: the norm is then one q · k per sequence, and a near-cancelling one
/// amplifies the operands' 2⁻¹⁸); bf16 operands 3e-3 (up to 9.5e-3). The bf16-operand
/// kernels on the same kind of inputs must miss the bound, so that it tells the two
/// apart.
///
/// [`Products::Bf16x3`]: psm_codegen::ptx::chunkwise::Products::Bf16x3
#[test]
fn chunkwise_bf16x3_f32_inputs() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_bf16x3_f32_inputs") else { return };
    const BOUND: f64 = 1e-4;
    let mut seed = 11u64;
    let mut worst = 0.0f64;
    for (shape, strong) in chunkwise_variants() {
        let m = compile_chunkwise_with(shape, Storage::F32, Products::Bf16x3, 90).expect("kernels");
        let module = cuda.load_text(&m.text);
        for steps in CHUNKWISE_STEPS {
            let (what, (found, want), (found_finals, finals)) = chunkwise_case(&cuda, (module, &m), &mut seed, steps, strong, |x| x, (false, false));
            worst = worst.max(within_bound(BOUND, &what, (&found, &want), (&found_finals, &finals)));
        }
    }
    eprintln!("chunkwise_bf16x3_f32_inputs: worst relative error {worst:e}");
    let m = compile_chunkwise_with(ChunkwiseShape { keys: 128, values: 128, decay: ChunkDecay::Log, exclusive: false }, Storage::F32, Products::Bf16, 90).expect("kernels");
    let module = cuda.load_text(&m.text);
    let (_, (found, want), _) = chunkwise_case(&cuda, (module, &m), &mut seed, 200, false, |x| x, (false, false));
    let bf16 = relative(&found, &want);
    eprintln!("chunkwise_bf16x3_f32_inputs: bf16 products on the same kind of inputs {bf16:e}");
    assert!(bf16 > BOUND, "bf16 products within the f32 bound ({bf16:e}): the test would not tell them apart");
}

/// Values as the bytes of `storage` (bf16: the upper halves of the f32, which must be
/// bf16 values already).
fn stored_bytes(v: &[f32], storage: psm_codegen::ptx::chunkwise::Storage) -> Vec<u8> {
    match storage {
        psm_codegen::ptx::chunkwise::Storage::F32 => f32_bytes(v),
        psm_codegen::ptx::chunkwise::Storage::Bf16 => v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect(),
    }
}

fn stored_values(b: &[u8], storage: psm_codegen::ptx::chunkwise::Storage) -> Vec<f32> {
    match storage {
        psm_codegen::ptx::chunkwise::Storage::F32 => f32s(b),
        psm_codegen::ptx::chunkwise::Storage::Bf16 => b.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
    }
}

/// A kernel launch within one module: name, grid, (threads, dynamic shared bytes), arguments.
type ModuleLaunch = (&'static str, [u32; 3], (u32, u32), Vec<Arg>);

/// The buffers and grids of one chunkwise run (the decays kernel's Λ for a per-key decay).
struct ChunkwiseRun {
    nseq: usize,
    steps: usize,
    nchunks: usize,
    lam: Option<Dev>,
    states: Dev,
    out: Dev,
    /// Launch `psm_cw_fused` instead of the states and outputs kernels.
    fused: bool,
    /// The sequences' initial states (`[nseq, keys, values]` f32), if any.
    state_in: Option<u64>,
}

impl ChunkwiseRun {
    fn new(cuda: &Cuda, m: &psm_codegen::ptx::chunkwise::ChunkwiseModule, nseq: usize, steps: usize) -> ChunkwiseRun {
        let (keys, values) = (m.shape.keys, m.shape.values);
        let nchunks = steps.div_ceil(psm_codegen::ptx::chunkwise::CHUNK);
        let lam = m.decay_threads.map(|_| cuda.zeros(nseq * steps * keys * 4));
        let states = cuda.zeros(nseq * (nchunks + 1) * keys * values * 4);
        let out = cuda.zeros(nseq * steps * values * if m.storage == psm_codegen::ptx::chunkwise::Storage::Bf16 { 2 } else { 4 });
        ChunkwiseRun { nseq, steps, nchunks, lam, states, out, fused: false, state_in: None }
    }

    /// The module's kernels over `[q, k, v, g]` in launch order.
    fn kernels(&self, m: &psm_codegen::ptx::chunkwise::ChunkwiseModule, [q, k, v, g]: [&Dev; 4]) -> Vec<ModuleLaunch> {
        let p = |d: &Dev| Arg::U64(d.ptr);
        let (nseq, steps, nchunks) = (self.nseq as u32, Arg::U64(self.steps as u64), self.nchunks as u32);
        let grid = |(x, y, z): (u32, u32, u32)| [x, y, z];
        let (state_in, flags) = self.state_in.map_or((Arg::U64(0), Arg::U32(0)), |d| (Arg::U64(d), Arg::U32(HAS_STATE)));
        let outputs_block = (psm_codegen::ptx::chunkwise::OUTPUT_THREADS, m.output_shared_bytes as u32);
        if self.fused {
            let shared = m.fused_shared_bytes.expect("a module with psm_cw_fused") as u32;
            let args = vec![p(q), p(k), p(v), p(g), state_in, p(&self.states), p(&self.out), steps, flags];
            return vec![("psm_cw_fused", grid(m.fused_grid(nseq)), (outputs_block.0, shared), args)];
        }
        let mut kernels = Vec::new();
        let g = match (&self.lam, m.decay_threads) {
            (Some(lam), Some(threads)) => {
                kernels.push(("psm_cw_decays", [nchunks, nseq, 1], (threads, 0), vec![p(g), p(lam), steps]));
                lam
            }
            _ => g,
        };
        kernels.push(("psm_cw_states", grid(m.state_grid(nseq)), (m.state_threads, 0), vec![p(k), p(v), p(g), state_in, p(&self.states), steps, flags]));
        let output_args = vec![p(q), p(k), p(v), p(g), p(&self.states), p(&self.out), steps, Arg::U32(0)];
        kernels.push(("psm_cw_outputs", grid(m.output_grid(nchunks, nseq)), outputs_block, output_args));
        kernels
    }

    /// The module's kernels over `[q, k, v, g]`, each waited for when `wait`.
    fn launch(&self, cuda: &Cuda, module: *mut c_void, m: &psm_codegen::ptx::chunkwise::ChunkwiseModule, operands: [&Dev; 4], wait: bool) {
        for (name, grid, block, args) in self.kernels(m, operands) {
            cuda.launch_shared(module, name, grid, block, &args, wait);
        }
    }

    /// The median time of a whole run (over 10 rounds of 10 back-to-back runs between two
    /// synchronizations, after one round of warm-up), and each kernel's alone (its inputs
    /// as the whole run leaves them), for where the time goes.
    fn time(&self, cuda: &Cuda, module: *mut c_void, m: &psm_codegen::ptx::chunkwise::ChunkwiseModule, operands: [&Dev; 4]) -> (f64, String) {
        let seconds = median_seconds(cuda, 10, || self.launch(cuda, module, m, operands, false));
        let parts: Vec<String> = self
            .kernels(m, operands)
            .into_iter()
            .map(|(kernel, grid, block, args)| format!("{kernel} {:.3} ms", median_seconds(cuda, 5, || cuda.launch_shared(module, kernel, grid, block, &args, false)) * 1e3))
            .collect();
        (seconds, parts.join(" + "))
    }
    fn free(self, cuda: &Cuda) {
        for d in self.lam.into_iter().chain([self.states, self.out]) {
            cuda.free(d);
        }
    }
}

/// Resident timings of the chunkwise kernels at issue 6's benchmark shape (B = 4, H = 16,
/// K = V = D = 128; T = 1024, 4096, 16384) for no decay (fla's chunk_linear_attn), a
/// scalar log decay (chunk_simple_gla) and a log decay per key (chunk_gla), bf16 q, k, v
/// and outputs and f32 decays as fla's rows have them: the median over 10 rounds of 10
/// back-to-back runs of every kernel (decays, states, outputs) between two
/// synchronizations. Prints one JSON line per row in bench/gpu/baselines.py's format
/// (suite "fla", names "psm chunkwise ...", shape [B, T, H, D]) with "vs", the fla rows
/// of the same problem, for bench/gpu/table.py; each kernel's time alone on stderr.
/// `cargo test -p psm-codegen --test ptx_gpu -- --ignored chunkwise_timings --nocapture`
#[test]
#[ignore = "a benchmark: run on a GPU machine"]
fn chunkwise_timings() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_stored, ChunkDecay, ChunkwiseShape, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_timings") else { return };
    let (batch, heads, d) = (4usize, 16usize, 128usize);
    let nseq = batch * heads;
    let mut seed = 11u64;
    for steps in fla_lengths() {
        // The fla rows of the same problem (bench/gpu/baselines.py fla_suite), and the
        // decays' logs: retention's fixed decay is a scalar one.
        for (name, vs, decay, lo, hi) in [
            ("psm chunkwise, no decay", r#"["chunk_linear_attn"]"#, ChunkDecay::None, 0.0, 0.0),
            ("psm chunkwise, scalar decay", r#"["chunk_simple_gla", "chunk_retention"]"#, ChunkDecay::Log, -0.2, 0.0),
            ("psm chunkwise, per-key decay", r#"["chunk_gla"]"#, ChunkDecay::DiagonalLog, -0.2, 0.0),
        ] {
            let m = compile_chunkwise_stored(ChunkwiseShape { keys: d, values: d, decay, exclusive: false }, Storage::Bf16, 90).expect("kernels");
            let module = cuda.load_text(&m.text);
            let channels = if decay.per_key() { d } else { 1 };
            let mut gen = |n: usize, lo: f64, hi: f64, storage| {
                let x: Vec<f32> = (0..n).map(|_| bf16_round(uniform(&mut seed, lo, hi) as f32)).collect();
                cuda.upload(&stored_bytes(&x, storage))
            };
            let n = nseq * steps * d;
            let (dq, dk, dv) = (gen(n, -1.0, 1.0, Storage::Bf16), gen(n, -1.0, 1.0, Storage::Bf16), gen(n, -1.0, 1.0, Storage::Bf16));
            let dg = gen(nseq * steps * channels, lo, hi, Storage::F32);
            // psm's choice of kernels (ChunkwiseModule::fused_pays) gives the row; the
            // other choice is timed too, for stderr.
            let mut run = ChunkwiseRun::new(&cuda, &m, nseq, steps);
            let (split, parts) = run.time(&cuda, module, &m, [&dq, &dk, &dv, &dg]);
            eprintln!("T = {steps}, {name}: states and outputs kernels {:.3} ms = {parts}", split * 1e3);
            let mut seconds = split;
            if m.fused_shared_bytes.is_some() {
                run.fused = true;
                let (fused, _) = run.time(&cuda, module, &m, [&dq, &dk, &dv, &dg]);
                let taken = m.fused_pays(nseq, cuda.sms);
                eprintln!("T = {steps}, {name}: psm_cw_fused {:.3} ms (taken: {taken})", fused * 1e3);
                if taken {
                    seconds = fused;
                }
            }
            // q, k, v read and o written once (bf16), and the decays (f32).
            let bytes = 4 * nseq * steps * d * 2 + nseq * steps * channels * 4;
            let shape = [batch, steps, heads, d];
            println!(r#"{{"suite": "fla", "name": "{name}", "shape": {shape:?}, "seconds": {seconds:e}, "bytes": {bytes}, "vs": {vs}}}"#);
            run.free(&cuda);
            for x in [dq, dk, dv, dg] {
                cuda.free(x);
            }
        }
    }
}

/// Where `psm_cw_fused` pays: resident timings of it and of the states and outputs
/// kernels, no decay, bf16, K = V = 128 (two value tiles: two fused blocks a sequence),
/// over 4 to 128 sequences and T = 1024, 4096, 16384, with psm's choice
/// (`ChunkwiseModule::fused_pays`). One line per case on stdout.
/// `cargo test -p psm-codegen --test ptx_gpu -- --ignored chunkwise_fused_timings --nocapture`
#[test]
#[ignore = "a benchmark: run on a GPU machine"]
fn chunkwise_fused_timings() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_stored, ChunkDecay, ChunkwiseShape, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_fused_timings") else { return };
    let d = 128;
    let m = compile_chunkwise_stored(ChunkwiseShape { keys: d, values: d, decay: ChunkDecay::None, exclusive: false }, Storage::Bf16, 90).expect("kernels");
    let module = cuda.load_text(&m.text);
    let mut seed = 19u64;
    for steps in [1024usize, 4096, 16384] {
        for nseq in [4usize, 16, 24, 32, 48, 64, 128] {
            let n = nseq * steps * d;
            let mut gen = || cuda.upload(&stored_bytes(&(0..n).map(|_| bf16_round(uniform(&mut seed, -1.0, 1.0) as f32)).collect::<Vec<_>>(), Storage::Bf16));
            let (dq, dk, dv) = (gen(), gen(), gen());
            let dg = cuda.zeros(8);
            let mut run = ChunkwiseRun::new(&cuda, &m, nseq, steps);
            let (split, parts) = run.time(&cuda, module, &m, [&dq, &dk, &dv, &dg]);
            run.fused = true;
            let (fused, _) = run.time(&cuda, module, &m, [&dq, &dk, &dv, &dg]);
            let taken = m.fused_pays(nseq, cuda.sms);
            println!("fused vs split: T = {steps}, {nseq} sequences: fused {:.3} ms, split {:.3} ms ({parts}): {:.2}x (fused taken: {taken})", fused * 1e3, split * 1e3, fused / split);
            run.free(&cuda);
            for x in [dq, dk, dv, dg] {
                cuda.free(x);
            }
        }
    }
}

/// The price of f32 accuracy: resident timings of the chunkwise kernels with f32 q, k, v
/// and outputs at B = 4, H = 16, K = V = 128, T = 4096, each operand rounded to bf16
/// against split into hi + lo planes ([`Products::Bf16x3`]), for no decay, a scalar log
/// decay and a log decay per key. One line per case on stdout.
/// `cargo test -p psm-codegen --test ptx_gpu -- --ignored chunkwise_products_timings --nocapture`
///
/// [`Products::Bf16x3`]: psm_codegen::ptx::chunkwise::Products::Bf16x3
#[test]
#[ignore = "a benchmark: run on a GPU machine"]
fn chunkwise_products_timings() {
    use psm_codegen::ptx::chunkwise::{compile_chunkwise_with, ChunkDecay, ChunkwiseShape, Products, Storage};
    let Some(cuda) = Cuda::open_or_skip("chunkwise_products_timings") else { return };
    let (nseq, steps, d) = (64usize, 4096usize, 128usize);
    let mut seed = 13u64;
    for (name, decay, lo, hi) in [("no decay", ChunkDecay::None, 0.0, 0.0), ("scalar decay", ChunkDecay::Log, -0.2, 0.0), ("per-key decay", ChunkDecay::DiagonalLog, -0.2, 0.0)] {
        let channels = if decay.per_key() { d } else { 1 };
        let mut gen = |n: usize, lo: f64, hi: f64| cuda.upload(&f32_bytes(&(0..n).map(|_| uniform(&mut seed, lo, hi) as f32).collect::<Vec<_>>()));
        let n = nseq * steps * d;
        let (dq, dk, dv, dg) = (gen(n, -1.0, 1.0), gen(n, -1.0, 1.0), gen(n, -1.0, 1.0), gen(nseq * steps * channels, lo, hi));
        for products in [Products::Bf16, Products::Bf16x3] {
            let m = compile_chunkwise_with(ChunkwiseShape { keys: d, values: d, decay, exclusive: false }, Storage::F32, products, 90).expect("kernels");
            let module = cuda.load_text(&m.text);
            let run = ChunkwiseRun::new(&cuda, &m, nseq, steps);
            let (seconds, parts) = run.time(&cuda, module, &m, [&dq, &dk, &dv, &dg]);
            println!("chunkwise f32 I/O, T = {steps}, {name}, {products:?} products (value tile {}): {:.3} ms = {parts}", m.value_tile, seconds * 1e3);
            run.free(&cuda);
        }
        for x in [dq, dk, dv, dg] {
            cuda.free(x);
        }
    }
}
