//! `sluice-function-runner`: one replica of a function's runner.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdkafka::producer::Producer;
use sluice_function_runner::{
    invoke::Invoker,
    kafka, outputs,
    runner::{self, Env, Metrics},
    runtime_api::{self, RuntimeApi},
    server::{self, Health},
    settings::{Mode, Settings},
    supervisor,
};
use sluice_telemetry::LogArgs;
use tokio_util::sync::CancellationToken;

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
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("sluice-function-runner: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: sluice_crds::config::RunnerConfig =
        sluice_crds::config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let settings = Settings::resolve(&config, |name| std::env::var(name).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(serve(Arc::new(settings)));
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// This instance's name: the pod's (stable across container restarts, so a restarted runner's
/// transactional id fences its predecessor at once), else host and process id.
fn instance() -> String {
    std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into());
        format!("{host}-{}", std::process::id())
    })
}

async fn serve(settings: Arc<Settings>) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let stop_processes = CancellationToken::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let (metrics, registry) = Metrics::new(&settings.pipeline, &settings.function);

    let signal_stop = stop.clone();
    let signal_stopping = stopping.clone();
    tokio::spawn(async move {
        sluice_telemetry::stop_requested().await;
        signal_stopping.store(true, Ordering::SeqCst);
        signal_stop.cancel();
    });

    let (invoker, runtime) = match &settings.mode {
        Mode::Lambda { .. } => {
            let api = RuntimeApi::new(&settings.function, stop.clone());
            let listener = tokio::net::TcpListener::bind(&settings.runtime_api_listen)
                .await
                .with_context(|| format!("runtimeApiListen: cannot listen on {}", settings.runtime_api_listen))?;
            let app = runtime_api::router(api.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "the Runtime API server stopped");
                }
            });
            (Invoker::Lambda(api.clone()), Some(api))
        }
        Mode::Http { url, .. } => (Invoker::http(url)?, None),
    };

    let (timed_out, timed_out_rx) = tokio::sync::watch::channel(0u64);
    let supervisor = match (&settings.mode, &runtime) {
        (Mode::Lambda { concurrency, process: Some(process) }, Some(api)) => {
            let handler = process.argv.last().cloned().unwrap_or_default();
            let env = sluice_crds::config::lambda_env(
                &settings.function,
                &supervisor::reachable(&settings.runtime_api_listen),
                settings.timeout,
                process.memory_mb,
                &handler,
            );
            Some(tokio::spawn(supervisor::supervise(
                process.clone(),
                env,
                *concurrency,
                api.clone(),
                timed_out_rx,
                stop_processes.clone(),
                metrics.process_exits.clone(),
            )))
        }
        _ => None,
    };

    let transactional_id = settings.exactly_once.then(|| format!("{}-{}", settings.group, instance()));
    let producer = kafka::producer(&settings, transactional_id.as_deref())?;
    // Health first: while the runner waits for its source (which may be the processor's sink,
    // created when the processor starts), the pod is alive but not ready.
    let joined = Arc::new(AtomicBool::new(false));
    let consumer_done = Arc::new(AtomicBool::new(false));
    let done = consumer_done.clone();
    let health = Arc::new(Health {
        registry,
        joined: joined.clone(),
        runtime,
        stopping: stopping.clone(),
        timeout: settings.timeout,
        consumer_done: Arc::new(move || done.load(Ordering::SeqCst)),
    });
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listen: cannot listen on {}", settings.listen))?;
    let app = server::router(health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    // Transactions after the health server: a broker that cannot be reached yet (or refuses the
    // credentials for now) keeps the pod alive and not ready, retrying, instead of a crash loop.
    if settings.exactly_once {
        let mut backoff = Duration::from_secs(1);
        loop {
            let p = producer.clone();
            match tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30))).await? {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "initialising Kafka transactions failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => {
                            stop_processes.cancel();
                            if let Some(s) = supervisor {
                                let _ = s.await;
                            }
                            return Err(anyhow::Error::new(e).context("initialising Kafka transactions"));
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    // The source first (outputs without a partition count take its count), then the topics the
    // function writes: created when missing.
    let waited =
        match kafka::await_topics(&producer, &[("function.source.topic", settings.topic.as_str())], &stop).await {
            Ok(()) => kafka::create_written_topics(&settings, &producer).await,
            Err(e) => Err(e),
        };
    let mut topics = vec![];
    if let Some(t) = &settings.output_topic {
        topics.push(("function.output.topic", t.as_str()));
    }
    if let Some(t) = &settings.dead_letter_topic {
        topics.push(("function.onFailure.deadLetterTopic", t.as_str()));
    }
    let waited = match waited {
        Ok(()) => kafka::await_topics(&producer, &topics, &stop).await,
        Err(e) => Err(e),
    };
    if let Err(e) = waited {
        stop_processes.cancel();
        if let Some(s) = supervisor {
            let _ = s.await;
        }
        return Err(e);
    }
    let producer_max = settings
        .kafka
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(outputs::DEFAULT_MESSAGE_MAX_BYTES);
    let outputs = Arc::new(outputs::OutputCheck::new(producer.clone(), &kafka::client_config(&settings), producer_max));
    let (to_dispatcher, inbox) = tokio::sync::mpsc::unbounded_channel();
    let s = settings.clone();
    let consumer =
        tokio::task::spawn_blocking(move || kafka::start_consumer(&s, to_dispatcher, joined, consumer_done)).await??;

    tracing::info!(
        function = %settings.function, topic = %settings.topic, group = %settings.group,
        exactly_once = settings.exactly_once, key_ordering = settings.key_ordering, "function runner started"
    );
    let env = Env {
        settings: settings.clone(),
        invoker,
        producer,
        outputs,
        metrics,
        timed_out,
        stop: stop.clone(),
        failed: failed.clone(),
    };
    runner::run(env, consumer, inbox).await;
    stopping.store(true, Ordering::SeqCst);
    stop.cancel();
    stop_processes.cancel();
    if let Some(s) = supervisor {
        let _ = s.await;
    }
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("stopped after a fatal Kafka error (see the log above); nothing uncommitted was lost");
    }
    Ok(())
}
