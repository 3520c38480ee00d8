//! psm for Rust users: declare an aggregator in Rust with [`psm_aggregator`], get it
//! checked at compile time, and run it with your own structs as inputs and outputs.
//!
//! ```
//! #[psm::psm_aggregator(associative, dims(D = 4))]
//! mod diag_affine {
//!     pub struct Input { pub a: [f32; D], pub b: [f32; D] }
//!     pub struct State { pub a: [f32; D], pub b: [f32; D] }
//!     pub fn combine(l: &State, r: &State) -> State {
//!         let mut out = State::default();
//!         for d in 0..D {
//!             out.a[d] = l.a[d] * r.a[d];
//!             out.b[d] = r.a[d] * l.b[d] + r.b[d];
//!         }
//!         out
//!     }
//! }
//! let xs = [diag_affine::Input { a: [0.5; 4], b: [1.0; 4] }; 3];
//! let op = psm::Op::<diag_affine::Aggregator>::with_backend(psm::Backend::Interp).unwrap();
//! let ys = op.run(&xs, &psm::RunOptions::default()).unwrap();
//! assert_eq!(ys[2].b, [1.75; 4]);
//! // The Rust stays plain Rust.
//! assert_eq!(diag_affine::combine(&ys[0], &ys[1]).a, [0.125; 4]);
//! ```
//!
//! The accepted Rust, how verdicts become compile errors and the generated API are
//! documented in docs/macros.md, whose examples run as this crate's doctests.

use std::marker::PhantomData;

pub use psm_macros::psm_aggregator;
pub use psm_runtime::{Backend, Buffer, CompileError, DimOverride, Form, Inputs, Outputs, RunError, RunOptions, RunStats, Signature, StreamStats, Tensor};
pub use psm_runtime as runtime;
/// The `half` crate: `half::bf16` and `half::f16` are the Rust types of `bf16` and `f16`
/// fields (inputs, params, outputs).
pub use psm_runtime::half;
pub use psm_ir as ir;

use psm_ir::ir::Module;
use psm_ir::valid::Info;

/// An aggregator declared with `#[psm_aggregator]`: `module::Aggregator` implements it.
/// Everything here is generated; users call [`Op`], [`Stream`] or [`run`].
pub trait Aggregator: 'static {
    /// The module's `Params` struct, or `()` when it declares none.
    type Params;
    /// The module's `Input`, `State` and `Output` structs (`Output` is `State` when the
    /// module has no readout).
    type Input: Copy + std::fmt::Debug;
    type State: Copy + std::fmt::Debug;
    type Output: Copy + std::fmt::Debug;
    /// The aggregator's name: the module's.
    const NAME: &'static str;
    /// The validated IR, built and checked at compile time and embedded as arena pushes.
    fn module() -> Module;
    /// The dims the structs are sized at, for validation at run time.
    fn dims() -> Vec<DimOverride>;
    /// Every param field, in declaration order: `(name, [dims...])`.
    fn param_fields(p: &Self::Params) -> Vec<(&'static str, Buffer)>;
    /// Every input field of the steps `xs`, in declaration order: `(name, [T, dims...])`.
    fn input_fields(xs: &[Self::Input]) -> Vec<(&'static str, Buffer)>;
    /// Every element field of the states `xs`, in declaration order.
    fn state_fields(xs: &[Self::State]) -> Vec<(&'static str, Buffer)>;
    /// `n` outputs from a run's named outputs.
    fn outputs(out: &[Tensor], n: usize) -> Vec<Self::Output>;
    /// `n` states from named element fields (a final state, a stream's prefix).
    fn states(fields: &[Tensor], n: usize) -> Vec<Self::State>;
}

/// Why an [`Op`] could not be made.
#[derive(Debug, Clone)]
pub enum Error {
    /// The IR does not validate at the dims the structs were sized at.
    Compile(CompileError),
    /// The backend could not compile it.
    Run(RunError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Compile(e) => e.fmt(f),
            Error::Run(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

/// One aggregator compiled for one backend; reuse it across runs.
pub struct Op<A: Aggregator> {
    agg: psm_runtime::Aggregator,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregator> Clone for Op<A> {
    /// Shares the compiled code.
    fn clone(&self) -> Self {
        Op { agg: self.agg.clone(), _a: PhantomData }
    }
}

/// A run's outputs with the state after its last step.
#[derive(Debug, Clone)]
pub struct Run<A: Aggregator> {
    pub outputs: Vec<A::Output>,
    /// p_T: `None` for an empty run without an initial state.
    pub final_state: Option<A::State>,
    pub stats: RunStats,
}

impl<A: Aggregator> Op<A> {
    /// Compiles for the default backend (Cranelift, [`Backend::Cpu`]).
    pub fn new() -> Result<Self, Error> {
        Self::with_backend(Backend::Cpu)
    }

    pub fn with_backend(backend: Backend) -> Result<Self, Error> {
        let program = psm_runtime::Program::from_module(A::module(), &A::dims()).map_err(Error::Compile)?;
        let agg = program.aggregator(A::NAME).expect("the module declares the aggregator it is named after").with_backend(backend);
        agg.compile().map_err(Error::Run)?;
        Ok(Op { agg, _a: PhantomData })
    }

    /// The runtime's aggregator (named buffers, batches, every option).
    pub fn runtime(&self) -> &psm_runtime::Aggregator {
        &self.agg
    }

    /// The IR of the aggregator.
    pub fn ir(&self) -> &psm_ir::ir::Aggregator {
        self.agg.ir()
    }

    pub fn info(&self) -> &Info {
        self.agg.info()
    }

    pub fn signature(&self) -> Signature {
        self.agg.signature()
    }

    /// Whether every form may run: the algebra's verdict at these dims.
    pub fn associative(&self) -> bool {
        self.agg.associative()
    }

    /// Runs one sequence with its params: one output per step.
    pub fn run_with(&self, params: &A::Params, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Vec<A::Output>, RunError> {
        let out = self.run_outputs(params, xs, opts)?;
        Ok(A::outputs(out.tensors(), xs.len()))
    }

    /// Runs one sequence after `initial` (an element that precedes step 0) and returns
    /// the state after its last step too. `opts.initial_state` and `opts.final_state`
    /// are replaced by these.
    pub fn run_from(&self, params: &A::Params, initial: Option<&A::State>, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Run<A>, RunError> {
        let initial = initial.map(state::<A>);
        let opts = RunOptions { initial_state: initial.as_ref(), final_state: true, ..opts.clone() };
        let out = self.run_outputs(params, xs, &opts)?;
        let final_state = out.final_state().map(|s| A::states(&s.fields, 1)[0]);
        Ok(Run { outputs: A::outputs(out.tensors(), xs.len()), final_state, stats: out.stats() })
    }

    /// Runs one sequence and returns the runtime's named outputs.
    pub fn run_outputs(&self, params: &A::Params, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        let (params, inputs) = (A::param_fields(params), A::input_fields(xs));
        self.agg.run(&named(&params, &inputs, xs.len()), opts)
    }

    /// The same aggregator compiled to PTX and loaded on a CUDA device: the same typed
    /// runs on the GPU (`RunError::CudaUnavailable` on a machine without CUDA).
    pub fn cuda(&self, device: &psm_runtime::cuda::Device) -> Result<CudaOp<A>, RunError> {
        Ok(CudaOp { gpu: self.agg.cuda(device)?, _a: PhantomData })
    }

    /// Opens a stream: push one step at a time, `O(log n)` memory (one state for an
    /// associative operator), the same outputs as a run of the same steps.
    pub fn stream(&self, params: &A::Params, initial: Option<&A::State>) -> Result<Stream<A>, RunError> {
        let fields = A::param_fields(params);
        let initial = initial.map(state::<A>);
        let mut builder = self.agg.stream(&[]);
        for (name, buffer) in &fields {
            builder = builder.param(name, buffer);
        }
        if let Some(s) = &initial {
            builder = builder.initial_state(s);
        }
        Ok(Stream { inner: builder.open()?, _a: PhantomData })
    }
}

impl<A: Aggregator<Params = ()>> Op<A> {
    /// Runs one sequence of an aggregator without params: one output per step.
    pub fn run(&self, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Vec<A::Output>, RunError> {
        self.run_with(&(), xs, opts)
    }
}

/// The named inputs of one sequence: its params and input fields.
fn named<'a>(params: &'a [(&'static str, Buffer)], inputs: &'a [(&'static str, Buffer)], steps: usize) -> Inputs<'a> {
    let mut named = Inputs::new(&[], steps);
    for (name, buffer) in params {
        named = named.param(name, buffer);
    }
    for (name, buffer) in inputs {
        named = named.input(name, buffer);
    }
    named
}

/// An aggregator compiled for a CUDA device ([`Op::cuda`]).
pub struct CudaOp<A: Aggregator> {
    gpu: psm_runtime::cuda::CudaExecutor,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregator> CudaOp<A> {
    /// Runs one sequence with its params on the device: one output per step, within
    /// the associative tolerance of the CPU's (the GPU's transcendental functions are
    /// not the CPU's libm).
    pub fn run_with(&self, params: &A::Params, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Vec<A::Output>, RunError> {
        let (params, inputs) = (A::param_fields(params), A::input_fields(xs));
        let out = self.gpu.run(&named(&params, &inputs, xs.len()), opts)?;
        Ok(A::outputs(out.tensors(), xs.len()))
    }
}

/// One sequence fed a step at a time ([`Op::stream`]).
pub struct Stream<A: Aggregator> {
    inner: psm_runtime::Stream,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregator> Stream<A> {
    /// Consumes the next step and returns its output.
    pub fn push(&mut self, x: &A::Input) -> Result<A::Output, RunError> {
        let fields = A::input_fields(std::slice::from_ref(x));
        let mut named = Inputs::new(&[], 1);
        for (name, buffer) in &fields {
            named = named.input(name, buffer);
        }
        let out = self.inner.push(&named)?;
        Ok(A::outputs(out.tensors(), 1)[0])
    }

    /// The state before the next step (p_t); `None` before the first step of a stream
    /// opened without an initial state.
    pub fn state(&self) -> Option<A::State> {
        self.inner.prefix().map(|s| A::states(&s.fields, 1)[0])
    }

    /// Steps consumed so far.
    pub fn position(&self) -> u64 {
        self.inner.position()
    }

    pub fn stats(&self) -> StreamStats {
        self.inner.stats()
    }
}

/// A typed state as the runtime's named one.
fn state<A: Aggregator>(s: &A::State) -> psm_runtime::State {
    A::state_fields(std::slice::from_ref(s)).into_iter().fold(psm_runtime::State::new(&[]), |st, (name, b)| st.field(name, b))
}

/// Runs one sequence of an aggregator without params on the default backend.
pub fn run<A: Aggregator<Params = ()>>(xs: &[A::Input]) -> Result<Vec<A::Output>, Error> {
    Op::<A>::new()?.run(xs, &RunOptions::default()).map_err(Error::Run)
}

/// The `f32`/`f64` functions psm has and std does not, with psm's definitions
/// (docs/language.md, Numerics). `#[psm_aggregator]` imports it into the module, so the
/// plain Rust calls `x.rsqrt()`, `x.sigmoid()`, `x.softplus()` too.
pub trait Float: Copy {
    /// `1 / sqrt(x)`.
    fn rsqrt(self) -> Self;
    /// `1 / (1 + exp(-x))`.
    fn sigmoid(self) -> Self;
    /// `max(x, 0) + ln(1 + exp(-|x|))`.
    fn softplus(self) -> Self;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            fn rsqrt(self) -> Self {
                1.0 / self.sqrt()
            }
            fn sigmoid(self) -> Self {
                1.0 / (1.0 + (-self).exp())
            }
            fn softplus(self) -> Self {
                self.max(0.0) + (1.0 + (-self.abs()).exp()).ln()
            }
        }
    };
}
float!(f32);
float!(f64);

/// docs/macros.md: its Rust examples are compiled and run as doctests.
#[doc = include_str!("../../docs/macros.md")]
#[cfg(doctest)]
pub struct MacrosGuide;

/// What generated code uses. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use psm_ir;
    use psm_runtime::{half, Buffer, Tensor};

    /// A scalar dtype of a field.
    pub trait Scalar: Copy {
        fn into_buffer(v: Vec<Self>) -> Buffer;
        fn slice(b: &Buffer) -> Option<&[Self]>;
    }
    impl Scalar for f32 {
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::F32(v)
        }
        fn slice(b: &Buffer) -> Option<&[Self]> {
            b.as_f32()
        }
    }
    impl Scalar for f64 {
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::F64(v)
        }
        fn slice(b: &Buffer) -> Option<&[Self]> {
            b.as_f64()
        }
    }
    impl Scalar for i32 {
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::I32(v)
        }
        fn slice(b: &Buffer) -> Option<&[Self]> {
            b.as_i32()
        }
    }
    impl Scalar for half::bf16 {
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::BF16(v)
        }
        fn slice(b: &Buffer) -> Option<&[Self]> {
            b.as_bf16()
        }
    }
    impl Scalar for half::f16 {
        fn into_buffer(v: Vec<Self>) -> Buffer {
            Buffer::F16(v)
        }
        fn slice(b: &Buffer) -> Option<&[Self]> {
            b.as_f16()
        }
    }

    /// A field type: a scalar or a (nested) fixed array of one, row-major.
    pub trait Field: Copy {
        type Scalar: Scalar;
        const LEN: usize;
        fn write(&self, out: &mut Vec<Self::Scalar>);
        fn read(s: &[Self::Scalar]) -> Self;
    }
    macro_rules! scalar_field {
        ($t:ty) => {
            impl Field for $t {
                type Scalar = $t;
                const LEN: usize = 1;
                fn write(&self, out: &mut Vec<$t>) {
                    out.push(*self);
                }
                fn read(s: &[$t]) -> Self {
                    s[0]
                }
            }
        };
    }
    scalar_field!(f32);
    scalar_field!(f64);
    scalar_field!(i32);
    scalar_field!(half::bf16);
    scalar_field!(half::f16);
    impl<T: Field, const N: usize> Field for [T; N] {
        type Scalar = T::Scalar;
        const LEN: usize = N * T::LEN;
        fn write(&self, out: &mut Vec<Self::Scalar>) {
            for x in self {
                x.write(out);
            }
        }
        fn read(s: &[Self::Scalar]) -> Self {
            std::array::from_fn(|i| T::read(&s[i * T::LEN..(i + 1) * T::LEN]))
        }
    }

    /// One field of every value of `xs`, flattened into a buffer `[len(xs), dims...]`.
    pub fn gather<X, F: Field>(xs: &[X], field: impl Fn(&X) -> &F) -> Buffer {
        let mut v = Vec::with_capacity(xs.len() * F::LEN);
        for x in xs {
            field(x).write(&mut v);
        }
        F::Scalar::into_buffer(v)
    }

    /// The named tensor `name` of `tensors`, `n` values of one field.
    pub fn column<F: Field>(tensors: &[Tensor], name: &str, n: usize) -> Vec<F> {
        let tensor = tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("psm: the runtime returned no `{name}`"));
        let s = F::Scalar::slice(&tensor.data).unwrap_or_else(|| panic!("psm: `{name}` came back with another dtype"));
        (0..n).map(|t| F::read(&s[t * F::LEN..(t + 1) * F::LEN])).collect()
    }
}
