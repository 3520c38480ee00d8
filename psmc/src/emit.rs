//! `psmc emit`: print a compiled form of a validated file: the IR text form, or a
//! backend's code (backends take `(&Aggregator, &Info)`, so nothing unvalidated is
//! emitted).

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use psm_ir::ir::{Aggregator, Module};
use psm_ir::valid::{DimOverride, Info};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Target {
    /// The IR text form: names resolved, every index with its extent, every `let` typed
    Ir,
    /// Cranelift IR (CLIF) of every function of every aggregator: lift, combine, readout,
    /// identity (when declared) and the fused recurrent loop scan
    Clif,
    /// PTX for NVIDIA GPUs (sm_90): one module per aggregator with the kernels of the CUDA
    /// ABI (psm_scan, psm_lift, psm_combine, psm_readout, psm_identity); a file with several
    /// aggregators prints one module after another
    Ptx,
    /// PTX of the single-pass look-back scan (psm_lookback) that `--kernel auto` takes on
    /// the GPU for few long sequences: for associative operators whose element fields
    /// and input and output rows are scalars, or whose entries scan independently (a
    /// look-back per entry); any other operator is refused with the reason
    PtxLookback,
}

pub fn run(path: &Path, target: Target, overrides: &[DimOverride]) -> ExitCode {
    let loaded = crate::check::load(path, overrides, &Default::default());
    if let Some(text) = loaded.render_failure("emit") {
        crate::print_stderr(&text);
        return ExitCode::FAILURE;
    }
    let Ok((module, infos)) = &loaded.result else { return ExitCode::FAILURE };
    let text = match target {
        Target::Ir => psm_ir::print::module(module, Some(infos)),
        Target::Clif => {
            let clif = |agg: &Aggregator, info: &Info| {
                psm_codegen::clif::clif_text(agg, info)
                    .map(|text| format!("; aggregator {}\n{text}", agg.name))
                    .map_err(|e| e.to_string())
            };
            match per_aggregator(path, module, infos, clif) {
                Some(text) => text,
                None => return ExitCode::FAILURE,
            }
        }
        Target::Ptx => {
            let ptx = |agg: &Aggregator, info: &Info| {
                psm_codegen::ptx::compile(agg, info, &Default::default()).map(|m| m.text).map_err(|e| e.to_string())
            };
            match per_aggregator(path, module, infos, ptx) {
                Some(text) => text,
                None => return ExitCode::FAILURE,
            }
        }
        Target::PtxLookback => match per_aggregator(path, module, infos, lookback) {
            Some(text) => text,
            None => return ExitCode::FAILURE,
        },
    };
    crate::print_stdout(&text);
    ExitCode::SUCCESS
}

/// The look-back module of one aggregator, or why it has none.
fn lookback(agg: &Aggregator, info: &Info) -> Result<String, String> {
    if !psm_ir::algebra::analyze(agg, info).associative() {
        return Err("the look-back scan rebrackets the steps: it needs an associative operator (`psmc check` gives the verdict)".into());
    }
    match psm_codegen::ptx::compile_lookback(agg, info, &Default::default()) {
        Ok(Some(m)) => Ok(m.module.text),
        Ok(None) => Err("no look-back kernel takes it: its element fields and input and output rows are not all scalars, and its entries do not scan independently".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The text of every aggregator, separated by blank lines, or `None` after reporting the
/// first failure.
fn per_aggregator(
    path: &Path,
    module: &Module,
    infos: &[Info],
    emit: impl Fn(&Aggregator, &Info) -> Result<String, String>,
) -> Option<String> {
    let mut text = String::new();
    for (k, (agg, info)) in module.aggregators.iter().zip(infos).enumerate() {
        match emit(agg, info) {
            Ok(part) => {
                if k > 0 {
                    text.push('\n');
                }
                text.push_str(&part);
            }
            Err(e) => {
                crate::print_stderr(&format!(
                    "error: could not emit `{}`: aggregator `{}`: {e}\n",
                    path.display(),
                    agg.name
                ));
                return None;
            }
        }
    }
    Some(text)
}
