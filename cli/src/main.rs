//! `sluice`: validate Pipelines, run them locally, generate quickstart data, query a processor.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use sluice_telemetry::LogArgs;

mod broker;
mod datagen;
mod live;
mod query;
mod run;
mod view;

/// Serverless stream processing on Apache Kafka: one Pipeline of SQL and functions.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole Pipeline on this machine: the processor and every function.
    Run {
        /// The Pipeline file.
        pipeline: PathBuf,
        /// Kafka to use; without it, an Apache Kafka broker is started for the run (it needs
        /// Java 17 or newer; its data stays in the state directory).
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// Where the processor keeps its state.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
        #[arg(long = "for")]
        run_for: Option<String>,
        /// Where the processor serves its HTTP API (`sluice query --server`).
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: String,
        /// Produce a quickstart data set into a topic while the Pipeline runs
        /// (`stocktrade:stocktrade`, `users:users`, `pageviews:TOPIC`); repeatable.
        #[arg(long, value_name = "QUICKSTART:TOPIC", value_parser = parse_datagen)]
        datagen: Vec<(datagen::Quickstart, String)>,
        /// Records per second of each `--datagen`.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        datagen_rate: u64,
        /// Log lines instead of the live view (the default when not on a terminal).
        #[arg(long)]
        plain: bool,
        /// The table whose latest rows are shown first (default: the last table of the SQL).
        #[arg(long)]
        table: Option<String>,
    },
    /// Check Pipeline files against the API schema and rules; exit 1 on any error.
    Validate {
        /// Pipeline files (YAML, one or more documents each).
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Produce the quickstart data sets of the seed example (JSON values).
    Datagen {
        /// Which data set.
        #[arg(long, value_enum)]
        quickstart: Quickstart,
        /// Topic to produce to.
        #[arg(long)]
        topic: String,
        /// Records to produce (default: until stopped).
        #[arg(long)]
        count: Option<u64>,
        /// Records per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "localhost:9092")]
        bootstrap_servers: String,
    },
    /// Run a query or statement against a processor, or, without one, an interactive session.
    Query {
        /// The processor's HTTP address.
        #[arg(long, default_value = "http://localhost:8088")]
        server: String,
        /// How results are printed.
        #[arg(long, value_enum, default_value = "table")]
        output: query::Output,
        /// The SQL statement; without it, statements are read interactively (ending with `;`).
        sql: Option<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Quickstart {
    Stocktrade,
    Users,
    Pageviews,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    // `validate` parses and plans SQL: room for the deepest tree the parser accepts.
    std::thread::Builder::new()
        .name("main".into())
        .stack_size(sluice_sql::SQL_STACK_SIZE)
        .spawn(move || command(cli.command))
        .and_then(|t| t.join().map_err(|_| std::io::Error::other("panicked")))
        .unwrap_or_else(|e| {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        })
}

fn command(command: Command) -> ExitCode {
    match command {
        Command::Validate { pipelines } => validate(&pipelines),
        Command::Run {
            pipeline,
            bootstrap_servers,
            state_dir,
            run_for,
            listen,
            datagen,
            datagen_rate,
            plain,
            table,
        } => {
            let run_for = match run_for.as_deref().map(str::parse::<sluice_crds::Duration>).transpose() {
                Ok(d) => d.map(|d| d.get()),
                Err(e) => return fail("sluice run", &anyhow::anyhow!("--for: {e}")),
            };
            let options = run::Options {
                pipeline,
                bootstrap_servers,
                state_dir,
                run_for,
                listen,
                datagen,
                datagen_rate,
                plain,
                table,
            };
            finish("sluice run", block_on(run::run(options)))
        }
        Command::Datagen { quickstart, topic, count, rate, bootstrap_servers } => {
            let q = match quickstart {
                Quickstart::Stocktrade => datagen::Quickstart::Stocktrade,
                Quickstart::Users => datagen::Quickstart::Users,
                Quickstart::Pageviews => datagen::Quickstart::Pageviews,
            };
            let result = block_on(datagen::run(q, &topic, count, rate, &bootstrap_servers));
            if let Ok(n) = &result {
                eprintln!("sluice datagen: produced {n} records to {topic}");
            }
            finish("sluice datagen", result.map(|_| ()))
        }
        Command::Query { server, output, sql: Some(sql) } => {
            let mut out = std::io::stdout();
            finish("sluice query", block_on(query::run(&server, &sql, output, &mut out)))
        }
        Command::Query { server, output, sql: None } => {
            // ksqlDB's CLI keeps its history in the home directory; ours in the XDG state one.
            let history = std::env::var_os("XDG_STATE_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state")))
                .map(|d| d.join("sluice/query_history"));
            finish("sluice query", block_on(query::interactive(&server, output, history)))
        }
    }
}

/// `QUICKSTART:TOPIC`.
fn parse_datagen(text: &str) -> Result<(datagen::Quickstart, String), String> {
    let (q, topic) = text.split_once(':').ok_or_else(|| format!("{text:?}: expected QUICKSTART:TOPIC"))?;
    let q = match q {
        "stocktrade" => datagen::Quickstart::Stocktrade,
        "users" => datagen::Quickstart::Users,
        "pageviews" => datagen::Quickstart::Pageviews,
        other => return Err(format!("{other:?}: the quickstarts are stocktrade, users and pageviews")),
    };
    if topic.is_empty() {
        return Err(format!("{text:?}: no topic after the colon"));
    }
    Ok((q, topic.to_owned()))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new()?.block_on(f)
}

fn finish(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(command, &e),
    }
}

fn fail(command: &str, e: &anyhow::Error) -> ExitCode {
    eprintln!("{command}: {e:#}");
    ExitCode::FAILURE
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{shown}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        match sluice_crds::validate::load_pipelines(&text) {
            Ok(pipelines) => {
                for p in pipelines {
                    let name = p.metadata.name.as_deref().unwrap_or_default();
                    let functions = p.spec.functions.len();
                    let mut processor = "no processor".to_owned();
                    if let Some(spec) = &p.spec.processor {
                        // Parse, then analyse and plan every statement as the processor would.
                        let mut engine = sluice_engine::Engine::default();
                        match engine.execute_script(&spec.sql) {
                            Ok(statements) => {
                                processor = format!(
                                    "{} SQL statements, {} persistent queries",
                                    statements.len(),
                                    engine.queries.len()
                                )
                            }
                            Err(e) => {
                                eprintln!("{shown}: Pipeline {name:?}: spec.processor.sql: {e}");
                                failed = true;
                                continue;
                            }
                        }
                    }
                    println!(
                        "{shown}: Pipeline {name:?} is valid ({processor}, {functions} function{})",
                        if functions == 1 { "" } else { "s" }
                    );
                }
            }
            Err(problems) => {
                failed = true;
                for problem in problems {
                    let doc = if problem.document > 0 {
                        format!(" (document {})", problem.document + 1)
                    } else {
                        String::new()
                    };
                    eprintln!("{shown}{doc}: {problem}");
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
