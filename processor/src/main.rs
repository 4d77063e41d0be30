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
    match cli.command {
        Command::Run { .. } => {
            eprintln!(
                "sluice-processor run: the processor runtime is not implemented yet (processor runtime issue); nothing was done"
            );
            ExitCode::from(2)
        }
        Command::Test { filter, files } => test(filter.as_deref(), &files),
    }
}

/// `sluice-processor test`: one `PASS`/`FAIL` line per case run, then `N passed, M failed`.
/// Failing cases are a result, not an error: the exit code is 1 only when a file can't be run.
fn test(filter: Option<&str>, files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut unreadable = false;
    for file in files {
        match sluice_engine::qtt::run_file(file, filter) {
            Ok(results) => {
                for r in results {
                    match r.failure {
                        None => {
                            passed += 1;
                            println!("PASS {}", r.name);
                        }
                        Some(why) => {
                            failed += 1;
                            println!("FAIL {} :: {}", r.name, why.replace('\n', " "));
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("sluice-processor test: {e}");
                unreadable = true;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if unreadable { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
