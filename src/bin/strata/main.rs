//! `strata`: the command-line tool.
//!
//! - `strata node` runs one member of a group over UDP and writes a JSON-lines
//!   delivery log (docs/strata-node.md is its specification).
//! - `strata perf` measures throughput, latency, CPU and memory of a stack
//!   over a real transport, with its members on loopback or one per host
//!   (docs/strata-perf.md).
//! - `strata keygen` writes group keys and X25519 identities for ENCRYPT
//!   (docs/strata-keygen.md).
//! - `strata layers` lists every registered layer with its guarantees and
//!   parameters.
//!
//! Every failure the user can cause (bad arguments, a bad stack string, an
//! address that cannot be bound, a log that cannot be written) ends the
//! process with a non-zero status and one line `strata <command>: <reason>`
//! on stderr, so that scripts can show it as is. Bad arguments exit with
//! status 2 (clap's own errors, and what `strata perf` refuses after parsing).

mod jsonl;
mod keygen;
mod layers;
mod node;
mod perf;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

/// Group communication from composable protocol layers.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one member of a group and write its delivery log (see docs/strata-node.md).
    Node(node::NodeArgs),
    /// Measure a stack: throughput, latency, CPU and memory of N members (see docs/strata-perf.md).
    Perf(perf::PerfArgs),
    /// List every registered layer: what it guarantees, requires and provides, and its parameters.
    Layers(layers::LayersArgs),
    /// Write a fresh group key or X25519 identity, or print an identity's public key (see docs/strata-keygen.md).
    Keygen(keygen::KeygenArgs),
}

/// The names of the subcommands, to prefix error lines with.
const COMMANDS: &[&str] = &["node", "perf", "layers", "keygen"];

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let prefix = match args.get(1).and_then(|a| a.to_str()) {
        Some(cmd) if COMMANDS.contains(&cmd) => format!("strata {cmd}"),
        _ => "strata".to_string(),
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return clap_failure(&prefix, e),
    };
    init_tracing();
    let result = match cli.command {
        Command::Node(args) => node::run(args),
        Command::Perf(args) => match perf::run(args) {
            Ok(code) => Ok(code),
            Err(perf::Failure::Run(reason)) => Err(reason),
            Err(perf::Failure::Usage(reason)) => {
                let _ = fail(&prefix, &reason);
                return ExitCode::from(2);
            }
        },
        Command::Layers(args) => layers::run(&args),
        Command::Keygen(args) => keygen::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(reason) => fail(&prefix, &reason),
    }
}

/// Writes `prefix: reason` as one line on stderr and returns failure.
fn fail(prefix: &str, reason: &str) -> ExitCode {
    // A reason quoting user input could hold a line break; scripts expect one line.
    let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let _ = writeln!(std::io::stderr().lock(), "{prefix}: {}", reason.trim());
    ExitCode::FAILURE
}

/// Help and version go out as clap prints them; argument errors become one
/// line (clap's first paragraph, joined), exit status 2 as clap would use.
fn clap_failure(prefix: &str, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let mut parts: Vec<&str> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() {
            if parts.is_empty() {
                continue;
            }
            break;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    let _ = fail(prefix, &parts.join(" "));
    ExitCode::from(2)
}

/// Diagnostics go to stderr, filtered by `RUST_LOG` (default `warn`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
