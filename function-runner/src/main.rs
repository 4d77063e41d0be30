//! `sluice-function-runner`: one replica of a function's runner.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice_telemetry::LogArgs;

/// The Sluice function runner: consumes a topic in batches and invokes a Lambda-compatible or
/// HTTP function, producing what it returns.
#[derive(Parser, Debug)]
#[command(name = "sluice-function-runner", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one runner replica from its config file.
    Run {
        /// The runner config file (rendered by the operator or by `sluice run`).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match cli.command {
        Command::Run { .. } => {
            eprintln!("sluice-function-runner run: not implemented yet (function runner issue); nothing was done");
            ExitCode::from(2)
        }
    }
}
