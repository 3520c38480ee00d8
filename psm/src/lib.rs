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
//! The accepted Rust is documented on [`psm_aggregator`] (and in docs/macros.md).

use std::marker::PhantomData;
use std::sync::Arc;

pub use psm_macros::psm_aggregator;
pub use psm_runtime::{Backend, Buffer, Form, Inputs, Outputs, RunError, RunOptions, Signature};
pub use psm_runtime as runtime;
pub use psm_ir as ir;

use psm_ir::ir::Module;
use psm_ir::valid::Info;
use psm_runtime::{Executor, InterpKernels, Kernels};

/// An aggregator declared with `#[psm_aggregator]`: `module::Aggregator` implements it.
/// Everything here is generated; users call [`Op`] or [`run`].
pub trait Aggregator: 'static {
    /// The module's `Input`, `State` and `Output` structs (`Output` is `State` when the
    /// module has no readout).
    type Input: Copy;
    type State: Copy;
    type Output: Copy;
    /// The aggregator's name: the module's.
    const NAME: &'static str;
    /// The algebra's verdict at compile time: every form may run (`Report::associative`).
    const ASSOCIATIVE: bool;
    /// The IR, rebuilt from the syntax tree embedded at compile time (no text parsed).
    fn module() -> Module;
    /// Every input field of the steps `xs`, in declaration order: `(name, [T, dims...])`.
    fn input_fields(xs: &[Self::Input]) -> Vec<(&'static str, Buffer)>;
    /// Every element field of the states `xs`, in declaration order.
    fn state_fields(xs: &[Self::State]) -> Vec<(&'static str, Buffer)>;
    /// The first `n` outputs of a run's outputs.
    fn outputs(out: &Outputs, n: usize) -> Vec<Self::Output>;
}

/// One aggregator compiled for one backend; reuse it across runs.
pub struct Op<A: Aggregator> {
    module: Module,
    info: Info,
    exec: Executor,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregator> Op<A> {
    /// Compiles for the default backend (Cranelift, [`Backend::Cpu`]).
    pub fn new() -> Result<Self, RunError> {
        Self::with_backend(Backend::Cpu)
    }

    pub fn with_backend(backend: Backend) -> Result<Self, RunError> {
        let module = A::module();
        // Validated during expansion; a failure here is a bug of psm, not of the user.
        let info = psm_ir::valid::validate(&module, &[])
            .unwrap_or_else(|d| panic!("psm: `{}` was checked at compile time but does not validate: {d:?}", A::NAME))
            .remove(0);
        let agg = &module.aggregators[0];
        let kernels: Arc<dyn Kernels> = match backend {
            Backend::Interp => Arc::new(InterpKernels::new(agg, &info)),
            Backend::Cpu => jit(agg, &info)?,
        };
        let exec = Executor::new(Signature::new(agg, &info, A::ASSOCIATIVE), kernels);
        Ok(Op { module, info, exec, _a: PhantomData })
    }

    /// The IR of the aggregator.
    pub fn ir(&self) -> &psm_ir::ir::Aggregator {
        &self.module.aggregators[0]
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    pub fn signature(&self) -> &Signature {
        self.exec.signature()
    }

    /// Runs one sequence: one output per step.
    pub fn run(&self, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Vec<A::Output>, RunError> {
        let out = self.run_outputs(xs, opts)?;
        Ok(A::outputs(&out, xs.len()))
    }

    /// Runs one sequence and returns the runtime's named outputs (stats, final state).
    pub fn run_outputs(&self, xs: &[A::Input], opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        let fields = A::input_fields(xs);
        let mut inputs = Inputs::new(&[], xs.len());
        for (name, buffer) in &fields {
            inputs = inputs.input(name, buffer);
        }
        self.exec.run(&inputs, opts)
    }
}

/// Runs one sequence on the default backend.
pub fn run<A: Aggregator>(xs: &[A::Input]) -> Result<Vec<A::Output>, RunError> {
    Op::<A>::new()?.run(xs, &RunOptions::default())
}

fn jit(agg: &psm_ir::ir::Aggregator, info: &Info) -> Result<Arc<dyn Kernels>, RunError> {
    psm_runtime::JitKernels::new(agg, info)
        .map(|k| Arc::new(k) as Arc<dyn Kernels>)
        .map_err(|message| RunError::Codegen { aggregator: agg.name.clone(), message })
}

/// What generated code uses. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use psm_ir;
    use psm_runtime::{Buffer, Outputs};

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

    /// The output `name` of a run, one value per step.
    pub fn column<F: Field>(out: &Outputs, name: &str, n: usize) -> Vec<F> {
        let buffer = out.get(name).unwrap_or_else(|| panic!("psm: the run has no output `{name}`"));
        let s = F::Scalar::slice(buffer).unwrap_or_else(|| panic!("psm: output `{name}` has another dtype"));
        (0..n).map(|t| F::read(&s[t * F::LEN..(t + 1) * F::LEN])).collect()
    }
}
