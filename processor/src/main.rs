//! `sluice-processor`: one replica of the stateful SQL processor, and the QTT conformance runner.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice_telemetry::LogArgs;

/// The Sluice processor: ksqlDB-dialect SQL over Kafka with RocksDB state and exactly-once.
#[derive(Parser, Debug)]
#[command(name = "sluice-processor", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one processor replica from its config file.
    Run {
        /// The processor config file (rendered by the operator or by `sluice run`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run ksqlDB query-validation-test (QTT) JSON files in-process; prints PASS/FAIL per case.
    Test {
        /// Run only the cases whose full name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// QTT or REST-QTT JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let what = match cli.command {
        Command::Run { .. } => {
            "sluice-processor run: the processor runtime is not implemented yet (processor runtime issue)"
        }
        Command::Test { .. } => "sluice-processor test: the SQL engine is not implemented yet (SQL engine issue)",
    };
    eprintln!("{what}; nothing was done");
    ExitCode::from(2)
}
