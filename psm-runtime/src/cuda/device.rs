//! One CUDA device: its context and stream, device buffers, host↔device copies, PTX
//! modules (cached by their text) and kernel launches.
//!
//! Everything goes through cudarc's driver API, loaded at run time. [`Device::open`]
//! first checks that the driver library can be loaded at all (cudarc panics when a
//! symbol is first used without one) and that the driver is recent enough for the
//! bindings, so a machine without CUDA gets [`RunError::CudaUnavailable`], never a
//! panic.
//!
//! All work of a device is ordered on one stream: copies, launches and frees run in
//! submission order, so no event tracking is needed (it is switched off).

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};

use crate::error::RunError;

/// The oldest driver the bindings are generated for (cudarc's `cuda-13000`): CUDA 13.0.
const MIN_DRIVER_VERSION: i32 = 13000;

/// Threads per block of every launch (kernels take any block size).
const BLOCK: u32 = 128;

/// A CUDA device with its context, one stream and a cache of loaded modules. Cheap to
/// clone (shared).
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

pub(crate) struct DeviceInner {
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    name: String,
    ordinal: usize,
    compute_capability: (i32, i32),
    /// Loaded modules by PTX text: an aggregator compiled twice loads once.
    modules: Mutex<HashMap<String, Arc<Module>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("ordinal", &self.inner.ordinal).field("name", &self.inner.name).finish()
    }
}

/// A driver error as a typed run error: out-of-memory is its own variant.
pub(crate) fn driver_error(operation: &str, e: DriverError) -> RunError {
    RunError::Cuda { operation: operation.to_string(), message: describe(e) }
}

fn describe(e: DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(text) => format!("{name} ({})", text.to_string_lossy()),
        Err(_) => name,
    }
}

fn check(operation: &str, r: CUresult) -> Result<(), RunError> {
    r.result().map_err(|e| driver_error(operation, e))
}

/// Whether the CUDA driver library can be loaded (without loading any symbol).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

impl Device {
    /// Opens device `ordinal` (its primary context) with one stream.
    ///
    /// Errors: [`RunError::CudaUnavailable`] when there is no driver library, the
    /// driver is older than CUDA 13.0, or there is no such device.
    pub fn open(ordinal: usize) -> Result<Device, RunError> {
        if !driver_present() {
            return Err(RunError::CudaUnavailable {
                reason: "the CUDA driver library (libcuda) cannot be loaded; is an NVIDIA driver installed?".into(),
            });
        }
        let unavailable = |reason: String| RunError::CudaUnavailable { reason };
        let mut version = 0i32;
        // SAFETY: the library is present; cuDriverGetVersion needs no initialisation.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| unavailable(format!("cannot query the driver version: {}", describe(e))))?;
        if version < MIN_DRIVER_VERSION {
            return Err(unavailable(format!(
                "the driver supports CUDA {}.{}; psm's CUDA backend needs 13.0 or newer",
                version / 1000,
                version % 1000 / 10
            )));
        }
        let count = CudaContext::device_count().map_err(|e| unavailable(format!("cannot initialise CUDA: {}", describe(e))))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!("no CUDA device {ordinal} (this machine has {count})")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("cannot open device {ordinal}: {}", describe(e))))?;
        // SAFETY: every buffer of a device is used on its one stream only (module doc).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_error("cuStreamCreate", e))?;
        let name = ctx.name().map_err(|e| driver_error("cuDeviceGetName", e))?;
        let compute_capability = ctx.compute_capability().map_err(|e| driver_error("cuDeviceGetAttribute", e))?;
        Ok(Device {
            inner: Arc::new(DeviceInner { ctx, stream, name, ordinal, compute_capability, modules: Mutex::new(HashMap::new()) }),
        })
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.compute_capability
    }

    /// Makes the context current on the calling thread (every entry point calls it).
    pub(crate) fn bind(&self) -> Result<(), RunError> {
        self.inner.ctx.bind_to_thread().map_err(|e| driver_error("cuCtxSetCurrent", e))
    }

    /// Waits for everything submitted so far.
    pub fn synchronize(&self) -> Result<(), RunError> {
        self.inner.stream.synchronize().map_err(|e| driver_error("cuStreamSynchronize", e))
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.inner.stream.cu_stream()
    }

    /// A device buffer of `bytes` bytes (at least 8, so even an empty tensor has an
    /// address), zeroed when asked.
    pub(crate) fn alloc(&self, what: &str, bytes: usize, zeroed: bool) -> Result<DeviceBuffer, RunError> {
        let size = bytes.max(8);
        // SAFETY: u8 has no invalid bit patterns; the memory is written before it is read
        // (or zeroed below).
        let slice = unsafe { self.inner.stream.alloc::<u8>(size) }.map_err(|e| match e.0 {
            CUresult::CUDA_ERROR_OUT_OF_MEMORY => RunError::DeviceOutOfMemory { what: what.to_string(), bytes: size },
            _ => driver_error("cuMemAllocAsync", e),
        })?;
        let buf = DeviceBuffer { slice, bytes };
        if zeroed {
            // SAFETY: the range is inside the allocation; ordered on the stream.
            check("cuMemsetD8Async", unsafe { sys::cuMemsetD8Async(buf.ptr(), 0, size, self.cu_stream()) })?;
        }
        Ok(buf)
    }

    /// A device buffer holding a copy of `data`.
    pub(crate) fn upload(&self, what: &str, data: &[u8]) -> Result<DeviceBuffer, RunError> {
        let buf = self.alloc(what, data.len(), false)?;
        self.copy_to_device(data, &buf, 0)?;
        Ok(buf)
    }

    /// Copies host bytes into `dst` at byte `offset`. Synchronous in effect for the
    /// host memory: the driver stages pageable memory before returning.
    pub(crate) fn copy_to_device(&self, src: &[u8], dst: &DeviceBuffer, offset: usize) -> Result<(), RunError> {
        if src.is_empty() {
            return Ok(());
        }
        assert!(offset + src.len() <= dst.bytes, "copy past the end of a device buffer");
        // SAFETY: the ranges are inside both buffers (checked above); pageable host
        // memory is copied before the call returns.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst.ptr() + offset as u64, src.as_ptr() as *const c_void, src.len(), self.cu_stream())
        })
    }

    /// Copies `dst.len()` bytes from `src` at byte `offset` into host memory and waits
    /// for them.
    pub(crate) fn copy_to_host(&self, src: &DeviceBuffer, offset: usize, dst: &mut [u8]) -> Result<(), RunError> {
        if dst.is_empty() {
            return Ok(());
        }
        assert!(offset + dst.len() <= src.bytes, "copy past the end of a device buffer");
        // SAFETY: as above; the stream is synchronised before `dst` is used.
        check("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr() as *mut c_void, src.ptr() + offset as u64, dst.len(), self.cu_stream())
        })?;
        self.synchronize()
    }

    /// Copies `rows` rows of `width` bytes between device buffers, each side with its
    /// own byte offset and row pitch (a column of elements of a batch, say).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_rows(
        &self,
        src: &DeviceBuffer,
        src_offset: usize,
        src_pitch: usize,
        dst: &DeviceBuffer,
        dst_offset: usize,
        dst_pitch: usize,
        width: usize,
        rows: usize,
    ) -> Result<(), RunError> {
        if width == 0 || rows == 0 {
            return Ok(());
        }
        let end = |offset: usize, pitch: usize| offset + (rows - 1) * pitch + width;
        assert!(end(src_offset, src_pitch) <= src.bytes && end(dst_offset, dst_pitch) <= dst.bytes, "strided copy out of bounds");
        if rows == 1 || (src_pitch == width && dst_pitch == width) {
            // SAFETY: both ranges are inside their buffers (checked above).
            return check("cuMemcpyDtoDAsync", unsafe {
                sys::cuMemcpyDtoDAsync_v2(dst.ptr() + dst_offset as u64, src.ptr() + src_offset as u64, width * rows, self.cu_stream())
            });
        }
        let device_memory = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
        let copy = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: device_memory,
            srcHost: std::ptr::null(),
            srcDevice: src.ptr() + src_offset as u64,
            srcArray: std::ptr::null_mut(),
            srcPitch: src_pitch,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: device_memory,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst.ptr() + dst_offset as u64,
            dstArray: std::ptr::null_mut(),
            dstPitch: dst_pitch,
            WidthInBytes: width,
            Height: rows,
        };
        // SAFETY: the rows are inside both buffers (checked above).
        check("cuMemcpy2DAsync", unsafe { sys::cuMemcpy2DAsync_v2(&copy, self.cu_stream()) })
    }

    /// The module of this PTX text, loaded once per device.
    pub(crate) fn module(&self, aggregator: &str, ptx: &str) -> Result<Arc<Module>, RunError> {
        let mut modules = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(ptx) {
            return Ok(m.clone());
        }
        let m = Arc::new(Module::load(self, aggregator, ptx)?);
        modules.insert(ptx.to_string(), m.clone());
        Ok(m)
    }

    /// Launches `f` over `count` threads (1-D grid, [`BLOCK`] per block) with `args`.
    /// Nothing is launched for `count` = 0.
    pub(crate) fn launch(&self, f: &Function, count: u64, args: &Args) -> Result<(), RunError> {
        self.launch_blocks(f, count.div_ceil(BLOCK as u64), BLOCK, args)
    }

    /// Launches `f` on `blocks` blocks of `block` threads (1-D) with `args`. Nothing is
    /// launched for `blocks` = 0.
    pub(crate) fn launch_blocks(&self, f: &Function, blocks: u64, block: u32, args: &Args) -> Result<(), RunError> {
        self.launch_shared(f, (blocks, 1), block, 0, args)
    }

    /// [`launch_blocks`](Self::launch_blocks) over a grid of `(blocks, rows)` with
    /// `shared` bytes of dynamic shared memory per block (above 48 KiB only for a
    /// function prepared by [`Function::allow_shared`]).
    pub(crate) fn launch_shared(&self, f: &Function, (blocks, rows): (u64, u32), block: u32, shared: u32, args: &Args) -> Result<(), RunError> {
        // The grid's x dimension holds at most 2^31 − 1 blocks.
        let grid = u32::try_from(blocks).ok().filter(|&b| b <= i32::MAX as u32).ok_or_else(|| RunError::TooLarge {
            what: format!("a launch of {blocks} blocks of `{}`", f.name),
        })?;
        self.launch_grid(f, (grid, rows, 1), block, shared, args)
    }

    /// Launches `f` on a 3-D `grid` of blocks of `block` threads with `shared` bytes of
    /// dynamic shared memory; nothing for an empty grid. The y and z dimensions hold at
    /// most 65535 blocks.
    pub(crate) fn launch_grid(&self, f: &Function, grid: (u32, u32, u32), block: u32, shared: u32, args: &Args) -> Result<(), RunError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if grid.1 > 65535 || grid.2 > 65535 {
            return Err(RunError::TooLarge { what: format!("a launch of {grid:?} blocks of `{}`", f.name) });
        }
        let mut params: Vec<*mut c_void> = args.values.iter().map(|v| v.as_ptr() as *mut c_void).collect();
        // SAFETY: `params` holds one pointer per kernel parameter, each to 8 bytes that
        // hold the value in its leading bytes (Args); the kernel only dereferences
        // device pointers its caller made valid for the threads launched.
        unsafe {
            cudarc::driver::result::launch_kernel(f.raw, grid, (block, 1, 1), shared, self.cu_stream(), &mut params)
                .map_err(|e| driver_error(&format!("the launch of `{}`", f.name), e))
        }
    }

    /// Device time of the work `work` submits, between two CUDA events on the stream
    /// (seconds), waiting for it to finish.
    pub(crate) fn timed<R>(&self, work: impl FnOnce() -> Result<R, RunError>) -> Result<(R, f64), RunError> {
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.inner.stream.record_event(timing).map_err(|e| driver_error("cuEventRecord", e))?;
        let r = work()?;
        let end = self.inner.stream.record_event(timing).map_err(|e| driver_error("cuEventRecord", e))?;
        let ms = start.elapsed_ms(&end).map_err(|e| driver_error("cuEventElapsedTime", e))?;
        Ok((r, f64::from(ms) * 1e-3))
    }
}

/// Device memory owned by a run (freed, in stream order, on drop).
pub(crate) struct DeviceBuffer {
    slice: CudaSlice<u8>,
    /// The size asked for (the allocation holds at least 8 bytes).
    pub bytes: usize,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> u64 {
        // With event tracking off, the returned guard records nothing.
        let (ptr, _guard) = self.slice.device_ptr(self.slice.stream());
        ptr
    }
}

/// The values of one launch's parameters, in order: 64-bit pointers and counts, 32-bit
/// flags. Each lives in its own 8-byte slot, the value in the leading bytes, which is
/// what the driver reads for a parameter of that size.
#[derive(Default)]
pub(crate) struct Args {
    values: Vec<[u8; 8]>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }
    pub fn u64(&mut self, v: u64) -> &mut Args {
        self.values.push(v.to_ne_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Args {
        let mut slot = [0u8; 8];
        slot[..4].copy_from_slice(&v.to_ne_bytes());
        self.values.push(slot);
        self
    }
    pub fn ptr(&mut self, b: &DeviceBuffer) -> &mut Args {
        self.u64(b.ptr())
    }
    pub fn ptrs<'b>(&mut self, bufs: impl IntoIterator<Item = &'b DeviceBuffer>) -> &mut Args {
        for b in bufs {
            self.ptr(b);
        }
        self
    }
}

/// A loaded PTX module.
pub(crate) struct Module {
    raw: sys::CUmodule,
    /// The context, not the [`Device`]: the device's cache holds its modules.
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule handle may be used from any thread whose current context is its
// own; every use binds the device's context first.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

/// One kernel of a loaded module.
pub(crate) struct Function {
    raw: sys::CUfunction,
    pub name: String,
    /// Keeps the module loaded while the function exists.
    _module: Arc<Module>,
}

// SAFETY: as for Module.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

/// Bytes of each JIT log buffer.
const LOG_BYTES: usize = 1 << 16;

impl Module {
    /// Loads PTX text through the driver's JIT, with its error and info logs.
    fn load(device: &Device, aggregator: &str, ptx: &str) -> Result<Module, RunError> {
        device.bind()?;
        let text = CString::new(ptx).map_err(|_| RunError::PtxLoad {
            aggregator: aggregator.to_string(),
            message: "the PTX text contains a NUL byte".into(),
            log: String::new(),
        })?;
        let mut error_log = vec![0u8; LOG_BYTES];
        let mut info_log = vec![0u8; LOG_BYTES];
        let mut options = [
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
            sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        ];
        // Sizes are passed by value in the pointer-sized slot (the driver's convention).
        let mut values: [*mut c_void; 4] = [
            error_log.as_mut_ptr() as *mut c_void,
            LOG_BYTES as *mut c_void,
            info_log.as_mut_ptr() as *mut c_void,
            LOG_BYTES as *mut c_void,
        ];
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: a NUL-terminated PTX image; option and value arrays of equal length
        // with buffers that outlive the call.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                raw.as_mut_ptr(),
                text.as_ptr() as *const c_void,
                options.len() as u32,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        let log_text = |buf: &[u8]| {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        };
        match r.result() {
            // SAFETY: initialised by a successful call.
            Ok(()) => Ok(Module { raw: unsafe { raw.assume_init() }, ctx: device.inner.ctx.clone() }),
            Err(e) => Err(RunError::PtxLoad {
                aggregator: aggregator.to_string(),
                message: describe(e),
                log: [log_text(&error_log), log_text(&info_log)].join("\n").trim().to_string(),
            }),
        }
    }

    /// The kernel `name` of this module.
    pub fn function(self: &Arc<Module>, name: &str) -> Result<Function, RunError> {
        let c_name = CString::new(name).map_err(|_| driver_error("cuModuleGetFunction", DriverError(CUresult::CUDA_ERROR_INVALID_VALUE)))?;
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: a loaded module and a NUL-terminated name.
        unsafe { sys::cuModuleGetFunction(raw.as_mut_ptr(), self.raw, c_name.as_ptr()) }
            .result()
            .map_err(|e| driver_error(&format!("cuModuleGetFunction(`{name}`)"), e))?;
        // SAFETY: initialised by the successful call.
        Ok(Function { raw: unsafe { raw.assume_init() }, name: name.to_string(), _module: self.clone() })
    }
}

impl Function {
    /// Raises the function's dynamic shared memory per block to `bytes` (the driver
    /// refuses more than the device allows: a typed error), and returns the most
    /// threads a block of it may have (its register use bounds that).
    pub fn allow_shared(&self, bytes: usize) -> Result<u32, RunError> {
        use sys::CUfunction_attribute_enum as Attr;
        let what = |op: &str| format!("{op} of `{}` ({bytes} bytes of shared memory per block)", self.name);
        let bytes = i32::try_from(bytes).map_err(|_| RunError::TooLarge { what: what("the shared memory") })?;
        // SAFETY: a function of a loaded module (held alive by `_module`).
        unsafe { cudarc::driver::result::function::set_function_attribute(self.raw, Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes) }
            .map_err(|e| driver_error(&what("cuFuncSetAttribute"), e))?;
        // SAFETY: as above.
        let threads = unsafe { cudarc::driver::result::function::get_function_attribute(self.raw, Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK) }
            .map_err(|e| driver_error(&what("cuFuncGetAttribute"), e))?;
        Ok(threads.max(0) as u32)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Errors cannot be reported from a drop; the context outlives the module.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: the module was loaded in this context and no function of it is
            // alive (each holds an Arc to the module).
            let _ = unsafe { sys::cuModuleUnload(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    //! On a machine with a CUDA device (skipped, printing why, elsewhere).
    use super::*;

    fn device() -> Option<Device> {
        match Device::open(0) {
            Ok(d) => Some(d),
            Err(RunError::CudaUnavailable { reason }) => {
                println!("skipped: CUDA not available: {reason}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn launch_arguments_hold_each_value_in_its_leading_bytes() {
        let mut a = Args::new();
        a.u64(0x0102_0304_0506_0708).u32(0xa0b0_c0d0);
        assert_eq!(a.values[0], 0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(a.values[1][..4], 0xa0b0_c0d0u32.to_ne_bytes());
        assert_eq!(a.values[1][4..], [0; 4]);
    }

    #[test]
    fn copies_round_trip_and_strided_copies_move_rows() {
        let Some(d) = device() else { return };
        let data: Vec<u8> = (0..=255).collect();
        let buf = d.upload("test data", &data).unwrap();
        let mut back = vec![0u8; 256];
        d.copy_to_host(&buf, 0, &mut back).unwrap();
        assert_eq!(back, data);
        // Column 2 (4 bytes wide) of 8 rows of 32 bytes, packed.
        let packed = d.alloc("packed", 32, true).unwrap();
        d.copy_rows(&buf, 8, 32, &packed, 0, 4, 4, 8).unwrap();
        let mut col = vec![0u8; 32];
        d.copy_to_host(&packed, 0, &mut col).unwrap();
        let want: Vec<u8> = (0..8).flat_map(|r| (0..4).map(move |i| (r * 32 + 8 + i) as u8)).collect();
        assert_eq!(col, want);
        let zeros = d.alloc("zeros", 100, true).unwrap();
        let mut z = vec![1u8; 100];
        d.copy_to_host(&zeros, 0, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_memory_is_a_typed_error() {
        let Some(d) = device() else { return };
        match d.alloc("a petabyte", 1 << 50, false) {
            Err(RunError::DeviceOutOfMemory { what, bytes }) => assert_eq!((what.as_str(), bytes), ("a petabyte", 1 << 50)),
            Err(e) => panic!("not an out-of-memory error: {e}"),
            Ok(_) => panic!("a petabyte was allocated"),
        }
        // The device still works afterwards.
        d.upload("after", &[1, 2, 3]).unwrap();
    }

    #[test]
    fn bad_ptx_is_a_typed_error_with_the_jit_log() {
        let Some(d) = device() else { return };
        let ptx = ".version 7.8\n.target sm_90\n.address_size 64\n.visible .entry k() {\n  mov.u32 %r1, 1;\n  ret;\n}\n";
        match d.module("broken", ptx) {
            Err(e @ RunError::PtxLoad { .. }) => {
                let RunError::PtxLoad { aggregator, log, .. } = &e else { unreachable!() };
                assert_eq!(aggregator, "broken");
                // ptxas names the undeclared register.
                assert!(log.contains("%r1"), "JIT log without the error: {log}");
                println!("{e}");
            }
            Err(e) => panic!("not a PTX load error: {e}"),
            Ok(_) => panic!("invalid PTX was loaded"),
        }
        let good = ".version 7.8\n.target sm_90\n.address_size 64\n.visible .entry k() {\n  ret;\n}\n";
        let m = d.module("good", good).unwrap();
        assert!(Arc::ptr_eq(&m, &d.module("good", good).unwrap()), "the cache loads a text once");
        let f = m.function("k").unwrap();
        d.launch(&f, 1000, &Args::new()).unwrap();
        d.synchronize().unwrap();
        assert!(matches!(m.function("missing"), Err(RunError::Cuda { .. })));
    }
}
