//! The CUDA backend: aggregators compiled to PTX by psm-codegen (`psm_codegen::ptx`,
//! whose module doc is the kernel ABI) and run on an NVIDIA GPU through cudarc (driver
//! API, loaded at run time: nothing CUDA is needed to build psm or to run it on the CPU).
//!
//! * [`device`] — [`Device`]: context, stream, buffers, copies, the PTX module cache
//!   and launches; no driver → [`RunError::CudaUnavailable`](crate::RunError), never a
//!   panic;
//! * `launch` — typed launches of the ABI's kernels;
//! * `forms` — recurrent, chunked, tree and the stream's counter on the device;
//! * [`select`] — which kernels run a batch ([`CudaKernel`]: the rule, and the user's
//!   override): the single-pass look-back scan and the channel-parallel lanes kernel;
//! * [`exec`] — [`CudaExecutor`], the CPU executor's `run` on the device;
//! * [`stream`] — [`DeviceStream`], decoding one push at a time with the state on the
//!   device (the decode step: `psm_scan` in place — `psm_scan_block` for matrix-valued
//!   elements — or the counter); `push_resident` pushes inputs already on the device.
//!
//! ```no_run
//! use psm_runtime::{cuda::Device, Inputs, Program, RunOptions};
//! let program = Program::from_file("examples/ops/cumsum.psm", &[]).unwrap();
//! let device = Device::open(0)?; // RunError::CudaUnavailable without a GPU
//! let cumsum = program.aggregator("cumsum").unwrap().cuda(&device)?;
//! let v = vec![1.0f32; 1 << 20];
//! let out = cumsum.run(&Inputs::new(&[], v.len()).input("v", &v), &RunOptions::default())?;
//! assert_eq!(out.f32("v").unwrap()[9], 10.0);
//! # Ok::<(), psm_runtime::RunError>(())
//! ```

pub mod device;
pub mod exec;
pub(crate) mod chunkwise;
mod delta;
mod forms;
mod launch;
pub mod select;
pub mod stream;

pub use device::{driver_present, Device};
pub use exec::{CudaExecutor, ResidentTimes};
pub use select::{Chosen, CudaKernel};
pub use stream::{DeviceStream, DeviceSteps};
