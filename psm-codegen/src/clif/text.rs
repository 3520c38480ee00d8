//! CLIF text: the functions as built, before any optimization or legalization, so the
//! text is the same on every machine. Pointers are i64, the calling convention is
//! `system_v`, and math callees are named by their host symbol (`%psm_expf`).

use std::fmt::Write;

use cranelift_codegen::ir::{ExtFuncData, ExternalName, FuncRef, Function, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings;
use cranelift_frontend::FunctionBuilderContext;
use psm_ir::ir::Aggregator;
use psm_ir::valid::Info;

use super::funcs::{build, FnKind};
use super::lower::{Ctx, Imports};
use super::math::MathFn;
use super::CodegenError;

struct Named;

impl Imports for Named {
    fn import(&mut self, func: &mut Function, m: MathFn) -> FuncRef {
        let signature = func.import_signature(m.signature(CallConv::SystemV));
        func.import_function(ExtFuncData {
            name: ExternalName::testcase(m.name()),
            signature,
            colocated: false,
            patchable: false,
        })
    }
}

/// The CLIF of every function of the aggregator — lift, combine, readout, identity
/// (when declared) and scan — each after a `; function NAME` line. Each function is
/// checked by Cranelift's verifier.
pub fn clif_text(agg: &Aggregator, info: &Info) -> Result<String, CodegenError> {
    // Lower what psm-ir's exact rewrites make of the operator (psm_ir::opt).
    let rewritten = psm_ir::opt::for_backend(agg, info);
    let (agg, info) = rewritten.as_ref().map_or((agg, info), |(agg, info)| (agg, info));
    let cx = Ctx::new(agg, info);
    let mut fctx = FunctionBuilderContext::new();
    let flags = settings::Flags::new(settings::builder());
    let mut out = String::new();
    for kind in FnKind::all(agg.identity.is_some()) {
        let func = build(&cx, kind, UserFuncName::testcase(kind.name()), CallConv::SystemV, &mut Named, &mut fctx);
        if let Err(errors) = cranelift_codegen::verify_function(&func, &flags) {
            return Err(CodegenError::Function {
                function: kind.name().to_string(),
                message: cranelift_codegen::print_errors::pretty_verifier_error(&func, None, errors),
            });
        }
        let _ = writeln!(out, "; function {}", kind.name());
        let _ = write!(out, "{}", func.display());
    }
    Ok(out)
}
