//! The user-facing API: [`Program`] (a compiled `.psm` file) and [`Aggregator`] (one
//! operator of it, compiled once for a [`Backend`], runnable and streamable).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use psm_ir::algebra::{self, Report};
use psm_ir::ir::Module;
use psm_ir::valid::{DimOverride, Info};

use crate::buffers::{Data, Inputs, OutputsMut, State};
use crate::error::{CompileError, RunError};
use crate::forms::{Executor, Form, Outputs, RunOptions, RunSummary, Signature, Stream};
use crate::kernels::{InterpKernels, Kernels};

/// Which implementation of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// Native code from psm-codegen's Cranelift backend.
    #[default]
    Cpu,
    /// psm-ir's interpreter in declared precision: the reference, bit-identical to
    /// `Cpu` in every form, and much slower.
    Interp,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Interp => "interp",
        }
    }
}

/// A parsed and validated `.psm` file at one choice of dims.
///
/// ```
/// use psm_runtime::{Program, Inputs, RunOptions};
/// let src = "aggregator cumsum { input { v } element { v } identity { v = 0.0; } combine(l, r) { v = l.v + r.v; } }";
/// let program = Program::from_source(src, &[]).unwrap();
/// let cumsum = program.aggregator("cumsum").unwrap();
/// let v = [1.0f32, 2.0, 3.0, 4.0];
/// let out = cumsum.run(&Inputs::new(&[], 4).input("v", &v), &RunOptions::default()).unwrap();
/// assert_eq!(out.f32("v").unwrap(), &[1.0, 3.0, 6.0, 10.0]);
/// ```
#[derive(Clone)]
pub struct Program {
    inner: Arc<ProgramInner>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("aggregators", &self.names()).finish()
    }
}

struct ProgramInner {
    module: Module,
    infos: Vec<Info>,
    reports: Vec<OnceLock<Report>>,
}

impl Program {
    /// Parses and validates source text; dims take their defaults unless overridden.
    pub fn from_source(source: &str, dims: &[DimOverride]) -> Result<Program, CompileError> {
        Self::from_named_source(source, "<source>", dims)
    }

    /// Reads, parses and validates a `.psm` file.
    pub fn from_file(path: impl AsRef<Path>, dims: &[DimOverride]) -> Result<Program, CompileError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Self::from_named_source(&src, &name, dims),
            Err(e) => Err(CompileError { diagnostics: Vec::new(), rendered: format!("error: cannot read {name}: {e}\n") }),
        }
    }

    fn from_named_source(source: &str, name: &str, dims: &[DimOverride]) -> Result<Program, CompileError> {
        let fail = |diagnostics: Vec<psm_ir::Diagnostic>| CompileError {
            rendered: psm_ir::diag::render(&diagnostics, name, source),
            diagnostics,
        };
        let module = psm_ir::front::dsl::parse(source).map_err(fail)?;
        let infos = psm_ir::valid::validate(&module, dims).map_err(fail)?;
        Ok(Self::validated(module, infos))
    }

    /// Validates a module that was built rather than parsed (`psm_ir::front::builder`,
    /// or the IR `#[psm_aggregator]` embeds at compile time). Its spans point into no
    /// text, so the rendered diagnostics have no source lines.
    ///
    /// ```
    /// use psm_runtime::{DimOverride, Inputs, Program, RunOptions};
    /// let src = "aggregator sum<D = 2> { input { v[D] } element { v[D] } combine(l, r) { v[i] = l.v[i] + r.v[i]; } }";
    /// let module = psm_ir::front::dsl::parse(src).unwrap();
    /// let d3 = [DimOverride { name: "D".into(), value: 3 }];
    /// let sum = Program::from_module(module.clone(), &d3).unwrap().aggregator("sum").unwrap();
    /// let v = [1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0];
    /// let out = sum.run(&Inputs::new(&[], 2).input("v", &v), &RunOptions::default()).unwrap();
    /// assert_eq!(out.f32("v").unwrap(), &[1.0, 2.0, 3.0, 11.0, 22.0, 33.0]);
    /// let bad = [DimOverride { name: "Q".into(), value: 3 }];
    /// let e = Program::from_module(module, &bad).unwrap_err();
    /// assert!(e.rendered.contains("names no dim"), "{e}");
    /// ```
    pub fn from_module(module: Module, dims: &[DimOverride]) -> Result<Program, CompileError> {
        match psm_ir::valid::validate(&module, dims) {
            Ok(infos) => Ok(Self::validated(module, infos)),
            Err(diagnostics) => Err(CompileError { rendered: psm_ir::diag::render(&diagnostics, "<module>", ""), diagnostics }),
        }
    }

    fn validated(module: Module, infos: Vec<Info>) -> Program {
        let reports = infos.iter().map(|_| OnceLock::new()).collect();
        Program { inner: Arc::new(ProgramInner { module, infos, reports }) }
    }

    /// The aggregators' names, in declaration order.
    pub fn names(&self) -> Vec<&str> {
        self.inner.module.aggregators.iter().map(|a| a.name.as_str()).collect()
    }

    pub fn module(&self) -> &Module {
        &self.inner.module
    }

    /// One aggregator, for the default backend ([`Backend::Cpu`]); compiled on first use.
    pub fn aggregator(&self, name: &str) -> Option<Aggregator> {
        let index = self.inner.module.aggregators.iter().position(|a| a.name == name)?;
        Some(Aggregator { program: self.inner.clone(), index, backend: Backend::default(), exec: Arc::new(OnceLock::new()), chunkwise: Default::default() })
    }
}

/// One aggregator of a [`Program`] for one backend. Compiled once, on first use (or
/// [`Aggregator::compile`]); clones share the compiled code.
#[derive(Clone)]
pub struct Aggregator {
    program: Arc<ProgramInner>,
    index: usize,
    backend: Backend,
    exec: Arc<OnceLock<Result<Executor, RunError>>>,
    chunkwise: crate::chunkwise::Cached,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator").field("name", &self.name()).field("backend", &self.backend).finish()
    }
}

impl Aggregator {
    pub fn name(&self) -> &str {
        &self.ir().name
    }

    /// The IR of this aggregator and its validation result.
    pub fn ir(&self) -> &psm_ir::ir::Aggregator {
        &self.program.module.aggregators[self.index]
    }

    pub fn info(&self) -> &Info {
        &self.program.infos[self.index]
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The same aggregator for another backend (compiled separately).
    pub fn with_backend(&self, backend: Backend) -> Aggregator {
        Aggregator { program: self.program.clone(), index: self.index, backend, exec: Arc::new(OnceLock::new()), chunkwise: Default::default() }
    }

    /// The algebra's verdicts (computed once).
    pub fn report(&self) -> &Report {
        self.program.reports[self.index].get_or_init(|| algebra::analyze(self.ir(), self.info()))
    }

    /// Whether every form may run (`Report::associative()`).
    pub fn associative(&self) -> bool {
        self.report().associative()
    }

    /// Names, shapes and dtypes of params, inputs, element fields and outputs.
    pub fn signature(&self) -> Signature {
        Signature::new(self.ir(), self.info(), self.associative())
    }

    /// Compiles for the backend (once); later calls return the same executor.
    pub fn executor(&self) -> Result<&Executor, RunError> {
        self.exec
            .get_or_init(|| {
                let sig = self.signature();
                let kernels: Arc<dyn Kernels> = match self.backend {
                    Backend::Interp => Arc::new(InterpKernels::new(self.ir(), self.info())),
                    Backend::Cpu => jit(self.ir(), self.info())?,
                };
                Ok(Executor::new(sig, kernels))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// This aggregator compiled to PTX and loaded on a CUDA device: runs with the same
    /// inputs, options and outputs as [`Aggregator::run`].
    pub fn cuda(&self, device: &crate::cuda::Device) -> Result<crate::cuda::CudaExecutor, RunError> {
        crate::cuda::CudaExecutor::of_aggregator(self, device)
    }

    /// The chunkwise form psm-ir derives for this operator at these dims, or
    /// [`RunError::ChunkwiseNotApplicable`] with the reason it has none.
    pub fn chunkwise(&self) -> Result<&psm_ir::derive::chunkwise::Chunkwise, RunError> {
        self.chunkwise_program().map(|p| p.plan())
    }

    /// The derived form with its feature and readout maps compiled (once).
    pub(crate) fn chunkwise_program(&self) -> Result<&crate::chunkwise::ChunkwiseProgram, RunError> {
        self.chunkwise
            .get_or_init(|| crate::chunkwise::ChunkwiseProgram::new(self).map(Arc::new))
            .as_ref()
            .map(|p| &**p)
            .map_err(Clone::clone)
    }

    /// Compiles now rather than on the first run.
    pub fn compile(&self) -> Result<(), RunError> {
        self.executor().map(|_| ())
    }

    /// Runs every sequence of `inputs`; see [`Executor::run`].
    ///
    /// ```
    /// use psm_runtime::{Program, Inputs, RunOptions, Form};
    /// let src = "aggregator subtract { input { v } element { v } combine(l, r) { v = l.v - r.v; } }";
    /// let sub = Program::from_source(src, &[]).unwrap().aggregator("subtract").unwrap();
    /// let v: Vec<f32> = (0..6).map(|t| t as f32).collect();
    /// let out = sub.run(&Inputs::new(&[], 6).input("v", &v), &RunOptions::default()).unwrap();
    /// // Not associative: the fixed tree. y_5 reads p_6 = ((0-1)-(2-3))-(4-5).
    /// assert_eq!(out.form(), Form::Tree);
    /// assert_eq!(out.f32("v").unwrap()[5], 1.0);
    /// // Rebracketing forms are refused.
    /// let opts = RunOptions { form: Form::Chunked, ..Default::default() };
    /// assert!(sub.run(&Inputs::new(&[], 6).input("v", &v), &opts).is_err());
    /// ```
    pub fn run(&self, inputs: &Inputs<'_>, opts: &RunOptions<'_>) -> Result<Outputs, RunError> {
        if opts.form == Form::Chunkwise {
            return crate::chunkwise::run(self.chunkwise_program()?, inputs, opts, crate::chunkwise::Engine::Cpu);
        }
        if let Some(program) = self.auto_chunkwise(opts) {
            return crate::chunkwise::run(program, inputs, &RunOptions { form: Form::Chunkwise, ..opts.clone() }, crate::chunkwise::Engine::Cpu);
        }
        self.executor()?.run(inputs, opts)
    }

    /// Runs every sequence of `inputs`, writing the outputs into caller-supplied
    /// buffers; see [`Executor::run_into`].
    pub fn run_into(&self, inputs: &Inputs<'_>, outputs: &mut OutputsMut<'_>, opts: &RunOptions<'_>) -> Result<RunSummary, RunError> {
        if opts.form == Form::Chunkwise {
            return crate::chunkwise::run_into(self.chunkwise_program()?, inputs, outputs, opts);
        }
        if let Some(program) = self.auto_chunkwise(opts) {
            return crate::chunkwise::run_into(program, inputs, outputs, &RunOptions { form: Form::Chunkwise, ..opts.clone() });
        }
        self.executor()?.run_into(inputs, outputs, opts)
    }

    /// The chunkwise form where [`Form::Auto`] takes it: on the CPU backend (the
    /// interpreter stays the reference), without a chunk size (which names the chunked
    /// form's), for an operator it applies to whose state is large enough for the
    /// chunk's products to pay ([`crate::chunkwise::ChunkwiseProgram::pays`]), with
    /// options it takes. Otherwise `None`: the executor's own choice.
    fn auto_chunkwise(&self, opts: &RunOptions<'_>) -> Option<&crate::chunkwise::ChunkwiseProgram> {
        if opts.form != Form::Auto || opts.chunk.is_some() || self.backend != Backend::Cpu {
            return None;
        }
        // Before deriving and compiling the form: a state field as large as the smallest
        // that pays (the derived maps of every operator have one-entry elements).
        let sig = self.executor().ok()?.signature();
        if !sig.associative || sig.element.iter().all(|e| e.len < crate::chunkwise::AUTO_MIN_STATE_DELTA) {
            return None;
        }
        let program = self.chunkwise_program().ok()?;
        program.pays(opts).then_some(program)
    }

    /// Opens a stream over sequences of the given batch shape.
    ///
    /// ```
    /// use psm_runtime::{Program, Inputs};
    /// let src = "aggregator cumsum { input { v } element { v } identity { v = 0.0; } combine(l, r) { v = l.v + r.v; } }";
    /// let cumsum = Program::from_source(src, &[]).unwrap().aggregator("cumsum").unwrap();
    /// let mut s = cumsum.stream(&[]).open().unwrap();
    /// for (t, x) in [1.0f32, 2.0, 3.0].iter().enumerate() {
    ///     let out = s.push(&Inputs::new(&[], 1).input("v", std::slice::from_ref(x))).unwrap();
    ///     assert_eq!(out.f32("v").unwrap()[0], [1.0, 3.0, 6.0][t]);
    /// }
    /// assert_eq!(s.stats().peak_elements, 1);
    /// ```
    pub fn stream(&self, batch: &[usize]) -> StreamBuilder<'_> {
        StreamBuilder { agg: self, batch: batch.to_vec(), params: Vec::new(), initial_state: None }
    }
}

/// Parameters of a stream being opened: params and an optional initial state.
pub struct StreamBuilder<'a> {
    agg: &'a Aggregator,
    batch: Vec<usize>,
    params: Vec<(String, Data<'a>)>,
    initial_state: Option<&'a State>,
}

impl<'a> StreamBuilder<'a> {
    pub fn param(mut self, name: &str, data: impl Into<Data<'a>>) -> Self {
        self.params.push((name.to_string(), data.into()));
        self
    }
    pub fn initial_state(mut self, state: &'a State) -> Self {
        self.initial_state = Some(state);
        self
    }
    pub fn open(self) -> Result<Stream, RunError> {
        self.agg.executor()?.stream(&self.batch, &self.params, self.initial_state)
    }
}

fn jit(agg: &psm_ir::ir::Aggregator, info: &Info) -> Result<Arc<dyn Kernels>, RunError> {
    crate::kernels::JitKernels::new(agg, info)
        .map(|k| Arc::new(k) as Arc<dyn Kernels>)
        .map_err(|message| RunError::Codegen { aggregator: agg.name.clone(), message })
}

