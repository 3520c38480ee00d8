//! `psmc emit`: print a compiled form of a validated file. Only the IR text form
//! exists today; backends add their targets here (they take `(&Module, &[Info])`, so
//! nothing unvalidated is emitted).

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use psm_ir::valid::DimOverride;

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Target {
    /// The IR text form: names resolved, every index with its extent, every `let` typed
    Ir,
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
    };
    crate::print_stdout(&text);
    ExitCode::SUCCESS
}
