//! Native code for the host through cranelift-jit.

use std::sync::Mutex;

use cranelift_codegen::ir::{types, FuncRef, Function, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleError};
use psm_ir::ir::Aggregator;
use psm_ir::valid::Info;

use super::funcs::{build, FnKind};
use crate::layout::Layout;
use super::lower::{Ctx, Imports};
use super::math::MathFn;
use super::CodegenError;

/// `lift(params, inputs, step, out, scratch)`.
pub type LiftFn = unsafe extern "C" fn(*const *const u8, *const *const u8, u64, *mut u8, *mut u8);
/// `combine(params, l, r, out, scratch)`, `out` distinct from `l` and `r`.
pub type CombineFn = unsafe extern "C" fn(*const *const u8, *const u8, *const u8, *mut u8, *mut u8);
/// `readout(params, state, inputs, step, outputs, empty, scratch)`.
pub type ReadoutFn =
    unsafe extern "C" fn(*const *const u8, *const u8, *const *const u8, u64, *const *mut u8, u32, *mut u8);
/// `identity(params, out, scratch)`.
pub type IdentityFn = unsafe extern "C" fn(*const *const u8, *mut u8, *mut u8);
/// `scan(params, inputs, outputs, t0, t1, state, flags, scratch) -> holds a prefix`.
pub type ScanFn =
    unsafe extern "C" fn(*const *const u8, *const *const u8, *const *mut u8, u64, u64, *mut u8, u32, *mut u8) -> u32;

/// The compiled functions of one aggregator. The functions are pure apart from the
/// buffers they are given, so they may be called from any number of threads at once
/// (each with its own scratch). The code lives as long as this value: do not call a
/// function pointer copied out of it after it is dropped.
pub struct Compiled {
    pub layout: Layout,
    /// Bytes of scratch every function needs (the `let` tensors, and the fused loop's
    /// two element regions).
    pub scratch_size: usize,
    pub lift: LiftFn,
    pub combine: CombineFn,
    pub readout: ReadoutFn,
    pub identity: Option<IdentityFn>,
    pub scan: ScanFn,
    /// Owns the code. Only `Drop` touches it; the mutex makes the owner `Sync`
    /// (`JITModule` is `Send` but not `Sync`).
    module: Mutex<Option<JITModule>>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("layout", &self.layout)
            .field("scratch_size", &self.scratch_size)
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(module) = module {
            // SAFETY: `free_memory` invalidates the function pointers of this module.
            // They are reachable only through this value's fields, which die with it
            // (`&mut self` here: no call through them is in progress, since every
            // call borrows `self`), and the code never returns pointers into itself.
            // Callers that copied a pointer out are told not to call it after the drop.
            unsafe { module.free_memory() };
        }
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Compiled>();
};

struct Declared {
    ids: Vec<(MathFn, FuncId)>,
}

struct Linked<'m> {
    module: &'m mut JITModule,
    declared: &'m Declared,
}

impl Imports for Linked<'_> {
    fn import(&mut self, func: &mut Function, m: MathFn) -> FuncRef {
        let id = self
            .declared
            .ids
            .iter()
            .find(|(k, _)| *k == m)
            .map(|&(_, id)| id)
            .expect("every math function is declared");
        self.module.declare_func_in_func(id, func)
    }
}

/// Compiles every function of a validated aggregator for the host.
pub fn compile(agg: &Aggregator, info: &Info) -> Result<Compiled, CodegenError> {
    // Lower what psm-ir's exact rewrites make of the operator (psm_ir::opt).
    let rewritten = psm_ir::opt::for_backend(agg, info);
    let (agg, info) = rewritten.as_ref().map_or((agg, info), |(agg, info)| (agg, info));
    let isa = host_isa()?;
    let call_conv = isa.default_call_conv();
    let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
    for m in MathFn::ALL {
        builder.symbol(m.name(), m.address());
    }
    let mut module = JITModule::new(builder);
    let (ids, layout, scratch_size) = match define_all(&mut module, agg, info, call_conv) {
        Ok(done) => done,
        Err(e) => {
            // SAFETY: no pointer into the module escaped.
            unsafe { module.free_memory() };
            return Err(e);
        }
    };
    let ptr = |id: FuncId| module.get_finalized_function(id);
    let (lift, combine, readout, scan) = (ptr(ids.lift), ptr(ids.combine), ptr(ids.readout), ptr(ids.scan));
    let identity = ids.identity.map(ptr);
    // SAFETY: each pointer is the finalized code of a function whose CLIF signature
    // (`FnKind::signature`, in the host's default calling convention) is the C ABI
    // form of the Rust type it becomes: pointers and u64 as i64, u32 as i32.
    unsafe {
        Ok(Compiled {
            layout,
            scratch_size,
            lift: std::mem::transmute::<*const u8, LiftFn>(lift),
            combine: std::mem::transmute::<*const u8, CombineFn>(combine),
            readout: std::mem::transmute::<*const u8, ReadoutFn>(readout),
            identity: identity.map(|p| std::mem::transmute::<*const u8, IdentityFn>(p)),
            scan: std::mem::transmute::<*const u8, ScanFn>(scan),
            module: Mutex::new(Some(module)),
        })
    }
}

/// The host ISA: `opt_level = speed`, the verifier on, and the settings cranelift-jit
/// requires (absolute relocations).
fn host_isa() -> Result<cranelift_codegen::isa::OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    for (name, value) in [("opt_level", "speed"), ("is_pic", "false"), ("use_colocated_libcalls", "false")] {
        flags.set(name, value).map_err(|e| CodegenError::Host(format!("setting {name}={value}: {e}")))?;
    }
    let isa = cranelift_native::builder()
        .map_err(|m| CodegenError::Host(m.to_string()))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| CodegenError::Host(e.to_string()))?;
    if isa.pointer_type() != types::I64 {
        return Err(CodegenError::Host(format!(
            "pointers are {}, psm generates code for 64-bit hosts",
            isa.pointer_type()
        )));
    }
    Ok(isa)
}

struct FnIds {
    lift: FuncId,
    combine: FuncId,
    readout: FuncId,
    identity: Option<FuncId>,
    scan: FuncId,
}

/// Declares the math functions, builds and compiles every function, and links them;
/// returns their ids, the element layout and the scratch size.
fn define_all(
    module: &mut JITModule,
    agg: &Aggregator,
    info: &Info,
    call_conv: CallConv,
) -> Result<(FnIds, Layout, usize), CodegenError> {
    let module_err = |e: ModuleError| CodegenError::Module(e.to_string());
    let mut declared = Declared { ids: Vec::new() };
    for m in MathFn::ALL {
        let id = module.declare_function(m.name(), Linkage::Import, &m.signature(call_conv)).map_err(module_err)?;
        declared.ids.push((m, id));
    }
    let cx = Ctx::new(agg, info);
    let mut fctx = FunctionBuilderContext::new();
    let mut ctx = module.make_context();
    let mut ids = FnIds {
        lift: FuncId::from_u32(0),
        combine: FuncId::from_u32(0),
        readout: FuncId::from_u32(0),
        identity: None,
        scan: FuncId::from_u32(0),
    };
    for kind in FnKind::all(agg.identity.is_some()) {
        let id =
            module.declare_function(kind.name(), Linkage::Local, &kind.signature(call_conv)).map_err(module_err)?;
        let name = UserFuncName::user(0, id.as_u32());
        ctx.func = build(&cx, kind, name, call_conv, &mut Linked { module, declared: &declared }, &mut fctx);
        if let Err(e) = module.define_function(id, &mut ctx) {
            let message = match e {
                ModuleError::Compilation(err) => cranelift_codegen::print_errors::pretty_error(&ctx.func, err),
                other => other.to_string(),
            };
            return Err(CodegenError::Function { function: kind.name().to_string(), message });
        }
        module.clear_context(&mut ctx);
        match kind {
            FnKind::Lift => ids.lift = id,
            FnKind::Combine => ids.combine = id,
            FnKind::Readout => ids.readout = id,
            FnKind::Identity => ids.identity = Some(id),
            FnKind::Scan => ids.scan = id,
        }
    }
    module.finalize_definitions().map_err(module_err)?;
    Ok((ids, cx.layout.clone(), cx.plan.size))
}
