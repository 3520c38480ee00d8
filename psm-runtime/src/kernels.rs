//! The five operations of the CPU ABI (psm-codegen's crate doc) behind one object-safe
//! trait, [`Kernels`], and its two implementations:
//!
//! * [`JitKernels`] — the functions psm-codegen's Cranelift backend compiles;
//! * [`InterpKernels`] — the psm-ir interpreter in `Precision::Declared`, reading and
//!   writing the same byte layouts: the reference backend (`Backend::Interp`).
//!
//! The executor (`forms`) schedules every form over these operations only, so two
//! implementations that agree bit for bit on each operation agree bit for bit on every
//! form.

use psm_ir::interp::{Evaluator, Fields, FloatDomain, Precision};
use psm_ir::ir::{Aggregator, Dtype, ReadoutKind, Role};
use psm_ir::valid::Info;

use crate::buffers::{dtype_size, Layout};

/// The `scan` flags of the CPU ABI (psm-codegen's `lib.rs` documents them).
pub use psm_codegen::clif::{HAS_STATE, NO_STATE_OUT, REVERSE, WRITE_OUTPUTS};

/// One base pointer per param, declaration order.
pub type ParamPtrs = *const *const u8;
/// One base pointer per input field of one sequence; step t's entries at
/// `base + t · len · size_of(dtype)`.
pub type InputPtrs = *const *const u8;
/// One base pointer per output of one sequence, indexed like inputs.
pub type OutputPtrs = *const *mut u8;

/// The compiled operations of one aggregator on raw buffers (psm-codegen's CPU ABI).
///
/// # Safety
///
/// Callers guarantee what the ABI requires: element buffers of `layout().size` bytes,
/// 8-byte aligned; pointer arrays with one valid pointer per declared tensor, covering
/// every step that is read or written; `scratch` of at least `scratch_size()` bytes,
/// 8-byte aligned, used by one thread at a time; `out` distinct from `l` and `r`.
pub trait Kernels: Send + Sync {
    /// The element layout every element buffer uses.
    fn layout(&self) -> &Layout;
    /// Bytes of scratch one call needs.
    fn scratch_size(&self) -> usize;
    /// `out = lift(x_step)`.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn lift(&self, params: ParamPtrs, inputs: InputPtrs, step: u64, out: *mut u8, scratch: *mut u8);
    /// `out = combine(l, r)`, `l` the earlier operand.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn combine(&self, params: ParamPtrs, l: *const u8, r: *const u8, out: *mut u8, scratch: *mut u8);
    /// Writes the readout of step `step`, reading `state` (s_t or p_t by the
    /// aggregator's readout kind); `empty` is `empty(p)`.
    ///
    /// # Safety
    /// See the trait.
    #[allow(clippy::too_many_arguments)]
    unsafe fn readout(
        &self,
        params: ParamPtrs,
        state: *const u8,
        inputs: InputPtrs,
        step: u64,
        outputs: OutputPtrs,
        empty: bool,
        scratch: *mut u8,
    );
    /// Writes the declared identity into `out` and returns true; returns false (writing
    /// nothing) when none is declared.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn identity(&self, params: ParamPtrs, out: *mut u8, scratch: *mut u8) -> bool;
    /// The fused recurrent loop over steps t0..t1 (see the ABI); returns whether
    /// `state` holds a prefix on exit.
    ///
    /// # Safety
    /// See the trait.
    #[allow(clippy::too_many_arguments)]
    unsafe fn scan(
        &self,
        params: ParamPtrs,
        inputs: InputPtrs,
        outputs: OutputPtrs,
        t0: u64,
        t1: u64,
        state: *mut u8,
        flags: u32,
        scratch: *mut u8,
    ) -> bool;
}

// ================================================================= interpreter

/// The reference backend: psm-ir's interpreter in declared precision (every value
/// rounded to its declared type), on the same byte layouts as the JIT.
pub struct InterpKernels {
    agg: Aggregator,
    info: Info,
    layout: Layout,
    params: Vec<(usize, Dtype)>,
    inputs: Vec<(usize, Dtype)>,
    outputs: Vec<(usize, Dtype)>,
}

fn specs(agg: &Aggregator, info: &Info, role: Role) -> Vec<(usize, Dtype)> {
    agg.tensors_of(role).map(|t| (info.len(t), agg.tensors[t].dtype)).collect()
}

/// Reads entries `start..start + len` of a buffer of `dtype` as f64 values.
///
/// # Safety
/// `ptr` points to at least `start + len` entries of `dtype`.
unsafe fn read_values(ptr: *const u8, dtype: Dtype, start: usize, len: usize) -> Vec<f64> {
    let size = dtype_size(dtype);
    let base = ptr.add(start * size);
    (0..len)
        .map(|i| {
            let p = base.add(i * size);
            match dtype {
                Dtype::F32 => std::ptr::read_unaligned(p as *const f32) as f64,
                Dtype::F64 => std::ptr::read_unaligned(p as *const f64),
                Dtype::I32 => std::ptr::read_unaligned(p as *const i32) as f64,
                Dtype::BF16 => std::ptr::read_unaligned(p as *const half::bf16).to_f64(),
                Dtype::F16 => std::ptr::read_unaligned(p as *const half::f16).to_f64(),
            }
        })
        .collect()
}

/// Writes f64 values (already rounded to `dtype` by declared precision) as entries
/// `start..` of a buffer of `dtype`.
///
/// # Safety
/// `ptr` points to at least `start + values.len()` writable entries of `dtype`.
unsafe fn write_values(ptr: *mut u8, dtype: Dtype, start: usize, values: &[f64]) {
    let size = dtype_size(dtype);
    let base = ptr.add(start * size);
    for (i, &v) in values.iter().enumerate() {
        let p = base.add(i * size);
        match dtype {
            Dtype::F32 => std::ptr::write_unaligned(p as *mut f32, v as f32),
            Dtype::F64 => std::ptr::write_unaligned(p as *mut f64, v),
            Dtype::I32 => std::ptr::write_unaligned(p as *mut i32, v as i32),
            // Exact: the interpreter rounded the value to the format when it wrote it.
            Dtype::BF16 => std::ptr::write_unaligned(p as *mut half::bf16, half::bf16::from_f64(v)),
            Dtype::F16 => std::ptr::write_unaligned(p as *mut half::f16, half::f16::from_f64(v)),
        }
    }
}

fn never<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

impl InterpKernels {
    pub fn new(agg: &Aggregator, info: &Info) -> InterpKernels {
        InterpKernels {
            layout: Layout::new(agg, info),
            params: specs(agg, info, Role::Param),
            inputs: specs(agg, info, Role::Input),
            outputs: specs(agg, info, Role::Output),
            agg: agg.clone(),
            info: info.clone(),
        }
    }

    fn domain() -> FloatDomain {
        FloatDomain::new(Precision::Declared)
    }

    unsafe fn load_params(&self, params: ParamPtrs) -> Fields<f64> {
        self.params.iter().enumerate().map(|(k, &(len, d))| read_values(*params.add(k), d, 0, len)).collect()
    }

    unsafe fn load_step(&self, inputs: InputPtrs, step: u64) -> Fields<f64> {
        let step = step as usize;
        self.inputs.iter().enumerate().map(|(k, &(len, d))| read_values(*inputs.add(k), d, step * len, len)).collect()
    }

    unsafe fn load_element(&self, ptr: *const u8) -> Fields<f64> {
        let l = &self.layout;
        (0..l.offsets.len()).map(|k| read_values(ptr.add(l.offsets[k]), l.dtypes[k], 0, l.field_lens[k])).collect()
    }

    unsafe fn store_element(&self, ptr: *mut u8, e: &Fields<f64>) {
        let l = &self.layout;
        for (k, values) in e.iter().enumerate() {
            write_values(ptr.add(l.offsets[k]), l.dtypes[k], 0, values);
        }
    }

    unsafe fn store_outputs(&self, outputs: OutputPtrs, step: u64, ys: &Fields<f64>) {
        for (k, (values, &(len, d))) in ys.iter().zip(&self.outputs).enumerate() {
            write_values(*outputs.add(k), d, step as usize * len, values);
        }
    }
}

impl Kernels for InterpKernels {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn scratch_size(&self) -> usize {
        0
    }

    unsafe fn lift(&self, params: ParamPtrs, inputs: InputPtrs, step: u64, out: *mut u8, _scratch: *mut u8) {
        let eval = Evaluator::new(&self.agg, &self.info);
        let p = self.load_params(params);
        let x = self.load_step(inputs, step);
        let e = never(eval.lift(&mut Self::domain(), &p, &x));
        self.store_element(out, &e);
    }

    unsafe fn combine(&self, params: ParamPtrs, l: *const u8, r: *const u8, out: *mut u8, _scratch: *mut u8) {
        let eval = Evaluator::new(&self.agg, &self.info);
        let p = self.load_params(params);
        let (a, b) = (self.load_element(l), self.load_element(r));
        let c = never(eval.combine(&mut Self::domain(), &p, &a, &b));
        self.store_element(out, &c);
    }

    unsafe fn readout(
        &self,
        params: ParamPtrs,
        state: *const u8,
        inputs: InputPtrs,
        step: u64,
        outputs: OutputPtrs,
        empty: bool,
        _scratch: *mut u8,
    ) {
        let eval = Evaluator::new(&self.agg, &self.info);
        let p = self.load_params(params);
        let s = self.load_element(state);
        let x = self.load_step(inputs, step);
        let ys = never(eval.readout(&mut Self::domain(), &p, &s, &x, empty));
        self.store_outputs(outputs, step, &ys);
    }

    unsafe fn identity(&self, params: ParamPtrs, out: *mut u8, _scratch: *mut u8) -> bool {
        let eval = Evaluator::new(&self.agg, &self.info);
        let p = self.load_params(params);
        match eval.identity(&mut Self::domain(), &p) {
            Some(r) => {
                self.store_element(out, &never(r));
                true
            }
            None => false,
        }
    }

    unsafe fn scan(
        &self,
        params: ParamPtrs,
        inputs: InputPtrs,
        outputs: OutputPtrs,
        t0: u64,
        t1: u64,
        state: *mut u8,
        flags: u32,
        _scratch: *mut u8,
    ) -> bool {
        let eval = Evaluator::new(&self.agg, &self.info);
        let mut d = Self::domain();
        let p = self.load_params(params);
        let mut prefix: Option<Fields<f64>> = (flags & HAS_STATE != 0).then(|| self.load_element(state));
        let write = flags & WRITE_OUTPUTS != 0;
        // What an exclusive readout reads before any prefix: the identity, or zeros.
        let start: Option<(Fields<f64>, bool)> = match (write, self.agg.readout_kind) {
            (true, ReadoutKind::Exclusive) => Some(match eval.identity(&mut d, &p) {
                Some(id) => (never(id), false),
                None => (eval.zeros(&mut d), true),
            }),
            _ => None,
        };
        let steps: Box<dyn Iterator<Item = u64>> =
            if flags & REVERSE != 0 { Box::new((t0..t1).rev()) } else { Box::new(t0..t1) };
        for t in steps {
            let x = self.load_step(inputs, t);
            let e = never(eval.lift(&mut d, &p, &x));
            let next = match &prefix {
                Some(s) => never(eval.combine(&mut d, &p, s, &e)),
                None => e,
            };
            if write {
                let ys = match self.agg.readout_kind {
                    ReadoutKind::Inclusive => never(eval.readout(&mut d, &p, &next, &x, false)),
                    ReadoutKind::Exclusive => match (&prefix, &start) {
                        (Some(s), _) => never(eval.readout(&mut d, &p, s, &x, false)),
                        (None, Some((s, empty))) => never(eval.readout(&mut d, &p, s, &x, *empty)),
                        (None, None) => unreachable!("set when writing an exclusive readout"),
                    },
                };
                self.store_outputs(outputs, t, &ys);
            }
            prefix = Some(next);
        }
        match prefix {
            Some(s) => {
                self.store_element(state, &s);
                true
            }
            None => false,
        }
    }
}

// ================================================================= JIT

pub use jit::JitKernels;

mod jit {
    use super::*;
    use psm_codegen::clif::{self, Compiled};

    /// The Cranelift-compiled functions of one aggregator (psm-codegen).
    pub struct JitKernels {
        compiled: Compiled,
    }

    impl JitKernels {
        /// Compiles one validated aggregator.
        pub fn new(agg: &Aggregator, info: &Info) -> Result<JitKernels, String> {
            let compiled = clif::compile(agg, info).map_err(|e| e.to_string())?;
            Ok(JitKernels { compiled })
        }
    }

    impl Kernels for JitKernels {
        fn layout(&self) -> &Layout {
            &self.compiled.layout
        }
        fn scratch_size(&self) -> usize {
            self.compiled.scratch_size
        }
        unsafe fn lift(&self, params: ParamPtrs, inputs: InputPtrs, step: u64, out: *mut u8, scratch: *mut u8) {
            (self.compiled.lift)(params, inputs, step, out, scratch)
        }
        unsafe fn combine(&self, params: ParamPtrs, l: *const u8, r: *const u8, out: *mut u8, scratch: *mut u8) {
            (self.compiled.combine)(params, l, r, out, scratch)
        }
        unsafe fn readout(
            &self,
            params: ParamPtrs,
            state: *const u8,
            inputs: InputPtrs,
            step: u64,
            outputs: OutputPtrs,
            empty: bool,
            scratch: *mut u8,
        ) {
            (self.compiled.readout)(params, state, inputs, step, outputs, empty as u32, scratch)
        }
        unsafe fn identity(&self, params: ParamPtrs, out: *mut u8, scratch: *mut u8) -> bool {
            match self.compiled.identity {
                Some(f) => {
                    f(params, out, scratch);
                    true
                }
                None => false,
            }
        }
        unsafe fn scan(
            &self,
            params: ParamPtrs,
            inputs: InputPtrs,
            outputs: OutputPtrs,
            t0: u64,
            t1: u64,
            state: *mut u8,
            flags: u32,
            scratch: *mut u8,
        ) -> bool {
            (self.compiled.scan)(params, inputs, outputs, t0, t1, state, flags, scratch) != 0
        }
    }
}
