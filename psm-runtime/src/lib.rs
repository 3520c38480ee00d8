//! psm-runtime: runs compiled psm aggregators on the CPU.
//!
//! ```
//! use psm_runtime::{Program, Inputs, RunOptions, Form};
//! let src = "
//!     aggregator ema_like {
//!         input    { a, b }
//!         element  { a, b }
//!         identity { a = 1.0; b = 0.0; }
//!         combine(l, r) { a = l.a * r.a; b = r.a * l.b + r.b; }
//!         readout inclusive(s, x) -> y { y = s.b; }
//!     }";
//! let program = Program::from_source(src, &[]).unwrap();
//! let op = program.aggregator("ema_like").unwrap();
//! // Two sequences of 5 steps: inputs are [batch..., T, field dims...] row-major.
//! let a = vec![0.5f32; 2 * 5];
//! let b: Vec<f32> = (0..10).map(|i| i as f32).collect();
//! let inputs = Inputs::new(&[2], 5).input("a", &a).input("b", &b);
//! let opts = RunOptions { form: Form::Chunked, chunk: Some(2), final_state: true, ..Default::default() };
//! let out = op.run(&inputs, &opts).unwrap();
//! assert_eq!(out.tensor("y").unwrap().shape, vec![2, 5]);
//! assert_eq!(out.f32("y").unwrap()[1], 0.5 * 0.0 + 1.0);
//! assert!(out.final_state().unwrap().get("b").is_some());
//! ```
//!
//! * [`Program`] / [`Aggregator`] — compile a `.psm` file, pick an aggregator and a
//!   [`Backend`] (Cranelift JIT, or the interpreter as the reference), run it over named
//!   buffers ([`Inputs`] → [`Outputs`], or into the caller's buffers with
//!   [`Aggregator::run_into`] and [`OutputsMut`]) or open a [`Stream`] (`push`,
//!   `push_into`). Buffers are slices, or ndarray views ([`arrays`], feature `ndarray`,
//!   on by default); nothing is copied.
//! * [`Kernels`] — the five ABI operations (lift, combine, readout, identity, scan) over
//!   raw element buffers; [`JitKernels`](kernels) and [`InterpKernels`] implement it.
//! * [`Executor`] — the forms (recurrent, chunked, tree, stream; `auto`) over any
//!   `Kernels`, parallel with rayon. Non-associative operators run only in the fixed
//!   tree and its streaming counter, bit-identical to each other and to
//!   `psm_ir::derive` in declared precision.
//! * [`RunError`] — typed errors for every bad input; the runtime never panics on user
//!   data, and NaN/inf flow through.

pub mod accuracy;
pub mod api;
#[cfg(feature = "ndarray")]
pub mod arrays;
pub mod buffers;
pub mod chunkwise;
pub mod cuda;
pub mod error;
pub mod forms;
pub mod kernels;

pub use api::{Aggregator, Backend, Program, StreamBuilder};
#[cfg(feature = "ndarray")]
pub use arrays::Element;
pub use buffers::{Buffer, Data, DataMut, Inputs, Layout, OutputsMut, State, Tensor};
pub use error::{CompileError, RunError, Slot};
pub use forms::{Executor, FieldSpec, Form, Outputs, Prefill, RunOptions, RunStats, RunSummary, Signature, Stream, StreamStats};
pub use kernels::{InterpKernels, JitKernels, Kernels};
pub use psm_ir::ir::Dtype;
/// The `half` crate: the element types of `bf16`/`f16` tensors.
pub use half;
pub use psm_ir::valid::DimOverride;
