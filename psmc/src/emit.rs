//! `psmc emit`: print a compiled form of a validated file: the IR text form, or a
//! backend's code (backends take `(&Aggregator, &Info)`, so nothing unvalidated is
//! emitted).

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use psm_ir::valid::DimOverride;

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Target {
    /// The IR text form: names resolved, every index with its extent, every `let` typed
    Ir,
    /// Cranelift IR (CLIF) of every function of every aggregator: lift, combine, readout,
    /// identity (when declared) and the fused recurrent loop scan
    Clif,
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
            let mut text = String::new();
            for (k, (agg, info)) in module.aggregators.iter().zip(infos).enumerate() {
                match psm_codegen::clif::clif_text(agg, info) {
                    Ok(clif) => {
                        if k > 0 {
                            text.push('\n');
                        }
                        text.push_str(&format!("; aggregator {}\n", agg.name));
                        text.push_str(&clif);
                    }
                    Err(e) => {
                        crate::print_stderr(&format!(
                            "error: could not emit `{}`: aggregator `{}`: {e}\n",
                            path.display(),
                            agg.name
                        ));
                        return ExitCode::FAILURE;
                    }
                }
            }
            text
        }
    };
    crate::print_stdout(&text);
    ExitCode::SUCCESS
}
