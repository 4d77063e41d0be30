//! `sluice-processor`: one replica of the stateful SQL processor, and the QTT conformance runner.

mod http;
mod runtime;
mod state;

use std::{path::PathBuf, process::ExitCode, sync::atomic::Ordering};

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
    // Every thread that parses, plans or evaluates SQL gets room for the deepest tree the parser
    // accepts (sluice_sql::MAX_DEPTH), this one (the SQL of the config and of `test`) included.
    std::thread::Builder::new()
        .name("main".into())
        .stack_size(sluice_sql::SQL_STACK_SIZE)
        .spawn(move || command(cli.command))
        .and_then(|t| t.join().map_err(|_| std::io::Error::other("panicked")))
        .unwrap_or_else(|e| {
            eprintln!("sluice-processor: {e}");
            ExitCode::from(1)
        })
}

fn command(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice-processor run: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Test { filter, files } => test(filter.as_deref(), &files),
    }
}

/// `sluice-processor run`: the processing loop on a thread of its own, the HTTP side on tokio,
/// SIGTERM/SIGINT stop the loop after it commits what it processed.
fn run(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: sluice_crds::config::ProcessorConfig =
        sluice_crds::config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let ordinal = config.resolve_ordinal(std::env::var("POD_NAME").ok().as_deref())?;
    let shared = runtime::Shared::new(&config, ordinal)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(sluice_sql::SQL_STACK_SIZE)
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&config.listen))
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(listen = %config.listen, application = %config.application_id, ordinal, "processor starting");
    let app = http::router(shared.clone());
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let stopper = shared.clone();
    rt.spawn(async move {
        sluice_telemetry::stop_requested().await;
        stopper.stop.store(true, Ordering::SeqCst);
    });
    let worker = shared.clone();
    let result = std::thread::Builder::new()
        .name("processing".into())
        .stack_size(sluice_sql::SQL_STACK_SIZE)
        .spawn(move || runtime::run(&config, ordinal, worker))?
        .join()
        .map_err(|_| anyhow::anyhow!("the processing thread panicked"))?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
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
