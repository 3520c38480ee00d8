//! psmc, the psm compiler driver: `check` (verdicts), `emit` (compiled forms), `demo`
//! (the bundled operator library at a glance).
//!
//! Exit codes: 0 success; 1 errors in the input (diagnostics, unreadable files);
//! 2 usage errors (clap's default, also for a malformed `-D`).

mod bench;
mod check;
mod demo;
mod emit;
mod json;
mod run;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use psm_ir::valid::DimOverride;

#[derive(Parser)]
#[command(name = "psmc", version, about = "The psm compiler: checks prefix-scannable operators (.psm) and emits their compiled forms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check .psm files: validity, then per aggregator its verdicts, structure and forms
    ///
    /// Parses and validates each file; for each aggregator reports whether combine is
    /// associative and commutative, whether the declared identity is one, its
    /// structure, and the forms it may run in. Exit code 0 when every file is valid,
    /// 1 when any has errors (the others are still checked), 2 on usage errors.
    Check {
        /// The .psm files to check
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        dims: Dims,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print a compiled form of a .psm file
    Emit {
        /// The .psm file
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// What to print
        #[arg(long, value_enum, default_value_t = emit::Target::Ir)]
        target: emit::Target,
        #[command(flatten)]
        dims: Dims,
    },
    /// Run an aggregator on random or .npy data, optionally checked against the interpreter
    ///
    /// Compiles one aggregator for the CPU (Cranelift JIT) or the reference interpreter,
    /// runs it in a form (auto, recurrent, chunked, tree, stream) on seeded random inputs
    /// or .npy files shaped [batch..., T, field dims...], and reports timings, optionally
    /// errors against the interpreter (--compare) and counts (--stats). Exit code 0 on
    /// success, 1 on errors in the input or a failed comparison, 2 on usage errors.
    Run(run::RunArgs),
    /// Time the generated code against the hand-written Rust loop, at 1 and K threads
    ///
    /// Runs one aggregator (or the standard suite, --suite cpu) through psm-runtime and,
    /// for the library operators (cumsum, scalar_affine, diag_affine, logcumsumexp, gla,
    /// attn_agg), the hand-written loop of psm-bench on the same data; checks that the
    /// outputs agree (with the operator's own recurrent form, or tree, where there is no
    /// hand-written loop) and prints per form and thread count the time, the ratio hand/psm,
    /// the bytes per second as a fraction of the copy bandwidth measured in the same run,
    /// and the speedup over 1 thread. Exit code 1 when outputs disagree.
    Bench(bench::BenchArgs),
    /// Check every operator of the bundled library (examples/ops) into one verdict table
    Demo {
        /// Directory of .psm files [default: ./examples/ops, else the repository's examples/ops]
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Dims {
    /// Set a dim, overriding its default (repeatable): -D K=128
    #[arg(short = 'D', value_name = "NAME=VALUE", value_parser = parse_define)]
    define: Vec<DimOverride>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Readable text; diagnostics on stderr
    Human,
    /// One JSON document on stdout: {"aggregators": [...], "diagnostics": [...]}
    Json,
}

/// `NAME=VALUE` with an identifier and an integer. A malformed value is a usage error.
fn parse_define(s: &str) -> Result<DimOverride, String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err("expected NAME=VALUE (no `=` found), e.g. `-D K=128`".to_string());
    };
    let name = name.trim();
    let mut chars = name.chars();
    let is_ident = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !is_ident {
        return Err(format!("`{name}` is not a dim name; expected NAME=VALUE, e.g. `-D K=128`"));
    }
    let value = value.trim();
    match value.parse::<i64>() {
        Ok(value) => Ok(DimOverride { name: name.to_string(), value }),
        Err(_) => Err(format!("`{value}` is not an integer; dims are integers, e.g. `-D {name}=128`")),
    }
}

/// A command's error, printed on stderr; exit code 1.
pub(crate) struct Fail(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// Prints a command's report on stdout (exit code 0 when it says all is well, else 1)
/// or its error on stderr (exit code 1).
pub(crate) fn report(outcome: Result<(String, bool), Fail>) -> ExitCode {
    match outcome {
        Ok((text, ok)) => {
            print_stdout(&text);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(Fail(message)) => {
            print_stderr(&message);
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`psmc demo | head`) is not an error.
pub(crate) fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes to stderr, ignoring failures (there is nowhere left to report them).
pub(crate) fn print_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files, dims, format } => check::run(&files, &dims.define, format == Format::Json),
        Command::Emit { file, target, dims } => emit::run(&file, target, &dims.define),
        Command::Demo { dir } => demo::run(dir),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines() {
        assert_eq!(parse_define("K=128"), Ok(DimOverride { name: "K".into(), value: 128 }));
        assert_eq!(parse_define(" K = -3 "), Ok(DimOverride { name: "K".into(), value: -3 }));
        assert!(parse_define("K").unwrap_err().contains("no `=`"));
        assert!(parse_define("K=abc").unwrap_err().contains("not an integer"));
        assert!(parse_define("K=").unwrap_err().contains("not an integer"));
        assert!(parse_define("=3").unwrap_err().contains("not a dim name"));
        assert!(parse_define("1K=3").unwrap_err().contains("not a dim name"));
        assert!(parse_define("K=99999999999999999999").unwrap_err().contains("not an integer"));
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
