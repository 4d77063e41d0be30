//! `sluice run`: a whole Pipeline on this machine. The data-plane config files are rendered as
//! the operator renders them (one processor replica, one runner per function, local addresses),
//! `sluice-processor` and one `sluice-function-runner` per function are started as child
//! processes, and they are stopped together: on Ctrl-C, after `--for`, or when one of them fails.
//!
//! A function's `runtime.lambda.command` is started by its runner as a local process (its
//! `image` is for Kubernetes); `runtime.http.url` is called. Children run in the Pipeline file's
//! directory, so a relative handler path (`settle.handler` beside the file) resolves as on
//! Lambda, and in process groups of their own, so that Ctrl-C reaches them only through `sluice
//! run`, which stops them in order.
//!
//! Without `--bootstrap-servers`, a real Apache Kafka broker is started for the run (`broker`):
//! the Pipeline runs with every guarantee it states, exactly-once included, and its data stays in
//! the state directory for the next run. `--datagen QUICKSTART:TOPIC` produces a quickstart data
//! set from this process while the Pipeline runs.
//!
//! A Python function (`runtime.lambda.command` starting with `python3`) runs in a virtual
//! environment made under the state directory from the `requirements.txt` beside the Pipeline
//! file (by default: the pinned `awslambdaric`), so that the system's Python is left alone.

use std::{
    collections::BTreeSet,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use nix::{sys::signal::Signal, unistd::Pid};
use sluice_crds::{
    Pipeline,
    config::{KafkaConfig, ProcessorConfig, RunnerConfig, TopicCreation},
};
use tokio::process::{Child, Command};

use crate::{
    datagen::{self, Quickstart},
    live,
};

/// What `sluice run` was asked to do.
pub struct Options {
    /// The Pipeline file.
    pub pipeline: PathBuf,
    /// Kafka to use; `None`: a broker started for the run.
    pub bootstrap_servers: Option<String>,
    /// Where the processor keeps its state (default `.sluice/<pipeline>`).
    pub state_dir: Option<PathBuf>,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// The processor's HTTP address.
    pub listen: String,
    /// Data sets to produce while the Pipeline runs, and to which topic.
    pub datagen: Vec<(Quickstart, String)>,
    /// Their records per second, each.
    pub datagen_rate: u64,
    /// Log lines instead of the live view, even on a terminal.
    pub plain: bool,
    /// The table shown first (default: the last of the SQL).
    pub table: Option<String>,
}

/// The config files of a local run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfigs {
    /// The processor's, when the Pipeline has SQL.
    pub processor: Option<ProcessorConfig>,
    /// One per function.
    pub runners: Vec<RunnerConfig>,
}

/// Render a Pipeline's data-plane configs for this machine: Kafka at `bootstrap`, state under
/// `state_dir`, the processor on `listen`, each runner's endpoints on the given free ports. The
/// guarantees are the Pipeline's own. Errors name the field that cannot run locally.
pub fn local_configs(
    pipeline: &Pipeline,
    bootstrap: &str,
    state_dir: &Path,
    listen: &str,
    mut ports: impl FnMut() -> anyhow::Result<u16>,
) -> anyhow::Result<LocalConfigs> {
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let namespace = pipeline.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = &pipeline.spec;
    let mut kafka = KafkaConfig::from_spec(&spec.kafka, None);
    kafka.bootstrap_servers = bootstrap.to_owned();
    let processor = match &spec.processor {
        Some(p) => {
            if p.replicas != 1 {
                eprintln!("sluice run: runs one processor replica (spec.processor.replicas is {})", p.replicas);
            }
            Some(ProcessorConfig {
                application_id: format!("{namespace}.{name}"),
                kafka: kafka.clone(),
                sql: p.sql.clone(),
                replicas: 1,
                ordinal: Some(0),
                state_dir: state_dir.join("processor").to_string_lossy().into_owned(),
                exactly_once: p.exactly_once,
                commit_interval: p.commit_interval.clone(),
                properties: p.properties.clone(),
                listen: listen.to_owned(),
                peers: Vec::new(),
                topic_creation: TopicCreation::Admin,
                function_topics: spec.functions.iter().flat_map(|f| f.written_topics()).collect(),
            })
        }
        None => None,
    };
    let mut runners = Vec::new();
    for (i, f) in spec.functions.iter().enumerate() {
        let mut function = f.clone();
        if let Some(l) = function.runtime.lambda.as_mut() {
            anyhow::ensure!(
                !l.command.is_empty(),
                "spec.functions[{i}].runtime.lambda.command: sluice run starts the function as a local process and needs \
                 its command (the image runs only on Kubernetes)"
            );
            // Locally the command runs; the image is for the cluster.
            l.image = None;
        }
        runners.push(RunnerConfig {
            pipeline: name.clone(),
            namespace: namespace.clone(),
            kafka: kafka.clone(),
            group: None,
            runtime_api_listen: format!("127.0.0.1:{}", ports()?),
            listen: format!("127.0.0.1:{}", ports()?),
            function,
        });
    }
    Ok(LocalConfigs { processor, runners })
}

/// The topics a Pipeline reads that someone else must create: the SQL's sources (not the
/// topics its queries write) and the functions' sources, outputs and dead-letter topics.
pub fn external_topics(pipeline: &Pipeline) -> anyhow::Result<BTreeSet<String>> {
    let mut topics = BTreeSet::new();
    if let Some(p) = &pipeline.spec.processor {
        let mut engine = sluice_engine::Engine::default();
        engine.execute_script(&p.sql).map_err(|e| anyhow::anyhow!("spec.processor.sql: {e}"))?;
        let sinks: BTreeSet<&str> = engine.queries.iter().map(|q| q.sink.as_str()).collect();
        for s in engine.catalog.sources() {
            if !sinks.contains(s.name.as_str()) {
                topics.insert(s.topic.clone());
            }
        }
    }
    for f in &pipeline.spec.functions {
        topics.insert(f.source.topic.clone());
        topics.extend(f.output.iter().map(|o| o.topic.clone()));
        topics.extend(f.on_failure.dead_letter_topic.iter().cloned());
    }
    Ok(topics)
}

/// What a Python handler gets when its Pipeline has no `requirements.txt` beside it: the Lambda
/// runtime interface client (the example's pin).
const DEFAULT_PYTHON_REQUIREMENTS: &str = "awslambdaric==4.2.2\n";

/// Whether a function's local command runs Python (`python3 -m awslambdaric ...`).
fn runs_python(command: &[String]) -> bool {
    command
        .first()
        .and_then(|c| Path::new(c).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "python" || n.strip_prefix("python3").is_some_and(|v| v.is_empty() || v.starts_with('.')))
}

/// For a Pipeline with a Python function: a virtual environment with the requirements of `dir`
/// (`requirements.txt`, else [`DEFAULT_PYTHON_REQUIREMENTS`]), made once under `state/python`
/// (keyed by the requirements and the interpreter), and its `bin` directory. The system's Python
/// is never installed into.
async fn python_environment(pipeline: &Pipeline, dir: &Path, state: &Path) -> anyhow::Result<Option<PathBuf>> {
    use sha2::Digest;
    let python = pipeline
        .spec
        .functions
        .iter()
        .filter_map(|f| f.runtime.lambda.as_ref())
        .find(|l| runs_python(&l.command))
        .map(|l| l.command[0].clone());
    let Some(python) = python else { return Ok(None) };
    let file = dir.join("requirements.txt");
    let requirements = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT_PYTHON_REQUIREMENTS.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let version = Command::new(&python)
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .await
        .with_context(|| format!("running {python} (the functions' command): is Python installed?"))?;
    let key = sha2::Sha256::digest(format!("{requirements}\0{}", String::from_utf8_lossy(&version.stdout)));
    let key: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let env = state.join("python").join(key);
    let bin = env.join("bin");
    if env.join(".complete").exists() {
        return Ok(Some(bin));
    }
    eprintln!(
        "sluice run: making a Python environment for the functions in {} ({}; once)",
        env.display(),
        if file.exists() { file.display().to_string() } else { DEFAULT_PYTHON_REQUIREMENTS.trim().to_owned() }
    );
    let _ = std::fs::remove_dir_all(&env);
    let out = Command::new(&python).args(["-m", "venv"]).arg(&env).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "{python} -m venv {} failed (on Debian/Ubuntu: sudo apt-get install python3-venv): {}",
        env.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let listed = env.join("requirements.txt");
    std::fs::write(&listed, &requirements)?;
    let out = Command::new(bin.join("python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"])
        .arg(&listed)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "installing the functions' Python requirements into {} failed: {}",
        env.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    std::fs::write(env.join(".complete"), "")?;
    Ok(Some(bin))
}

/// A binary of ours: beside this one (a release or a `cargo build` directory), else on `PATH`.
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(name)));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is neither beside sluice nor on PATH (cargo build --release builds it)"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Running {
    what: String,
    child: Child,
}

/// Run until stopped. `Ok` after a clean stop (Ctrl-C or `--for`); `Err` when the Pipeline
/// cannot run or one of its processes failed.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let path = &options.pipeline;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let pipelines = sluice_crds::validate::load_pipelines(&text).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("{}: {p}", path.display())).collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    let [pipeline] = pipelines.as_slice() else {
        anyhow::bail!("{} holds {} Pipelines; sluice run runs one (split the file)", path.display(), pipelines.len());
    };
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let topics = external_topics(pipeline).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).canonicalize()?;

    let state = match &options.state_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(".sluice").join(&name),
    };
    std::fs::create_dir_all(&state).with_context(|| format!("--state-dir {}", state.display()))?;
    let state = state.canonicalize()?;
    let say = |line: &str| eprintln!("sluice run: {line}");
    // Ctrl-C (or SIGTERM) from here on stops the run cleanly, whatever it is doing.
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = tokio::spawn({
        let stop = stop.clone();
        async move {
            // The terminal closing (SIGHUP) stops the run cleanly too, the broker included.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut hangup) => tokio::select! {
                    () = sluice_telemetry::stop_requested() => {}
                    _ = hangup.recv() => {}
                },
                Err(_) => sluice_telemetry::stop_requested().await,
            }
            stop.cancel();
        }
    });

    // Kafka and the functions' Python environment are made side by side.
    let kafka = async {
        match &options.bootstrap_servers {
            Some(b) => anyhow::Ok((None, b.clone())),
            None => {
                let started = std::time::Instant::now();
                let broker = crate::broker::Broker::start(&state.join("kafka"), &say).await?;
                let bootstrap = broker.bootstrap.clone();
                // Its topics are ours to make: the Pipeline's sources and the topics its
                // functions write, 4 partitions each (the sinks are made by the processor).
                let created = create_topics(&bootstrap, &topics, 4).await?;
                say(&format!(
                    "started Apache Kafka {} at {bootstrap} in {:.1}s (data in {}, kept for the next run){}; produce \
                     to it with `sluice datagen --bootstrap-servers {bootstrap} ...`",
                    crate::broker::KAFKA_VERSION,
                    started.elapsed().as_secs_f64(),
                    broker.data.display(),
                    if created.is_empty() { String::new() } else { format!(", created topics {}", created.join(", ")) },
                ));
                Ok((Some(broker), bootstrap))
            }
        }
    };
    let (kafka, python) = tokio::select! {
        both = async { tokio::join!(kafka, python_environment(pipeline, &dir, &state)) } => both,
        // Dropping the starts kills a broker half started.
        () = stop.cancelled() => anyhow::bail!("stopped while starting"),
    };
    let (broker, bootstrap) = kafka?;
    let python = match python {
        Ok(p) => p,
        Err(e) => {
            if let Some(b) = broker {
                let _ = b.stop(Duration::from_secs(30)).await;
            }
            return Err(e);
        }
    };
    let result = run_on(&options, pipeline, &dir, &state, &bootstrap, python.as_deref(), &stop).await;
    signal.abort();
    if let Some(broker) = broker
        && let Err(e) = broker.stop(Duration::from_secs(30)).await
    {
        say(&format!("{e:#}"));
    }
    say(&format!("stopped; the state is in {} (delete it to start afresh)", state.display()));
    result
}

/// Create the `topics` that do not exist, with `partitions` each; returns those created.
async fn create_topics(bootstrap: &str, topics: &BTreeSet<String>, partitions: i32) -> anyhow::Result<Vec<String>> {
    use rdkafka::{
        ClientConfig,
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        client::DefaultClientContext,
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let mut created = Vec::new();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(t) => created.push(t),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(created)
}

/// Run the Pipeline's processes (and the data generators) against `bootstrap` until stopped.
async fn run_on(
    options: &Options,
    pipeline: &Pipeline,
    dir: &Path,
    state: &Path,
    bootstrap: &str,
    python: Option<&Path>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let name = pipeline.metadata.name.as_deref().unwrap_or_default();
    let configs = local_configs(pipeline, bootstrap, state, &options.listen, free_port)?;

    // On a terminal, the live view; the children's logs then go to it (and to files).
    let live = !options.plain && std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let (log_tx, log_rx) = tokio::sync::mpsc::unbounded_channel();
    let logs = state.join("logs");
    let capture = |source: &str| -> anyhow::Result<Option<Capture>> {
        if !live {
            return Ok(None);
        }
        std::fs::create_dir_all(&logs)?;
        let file = logs.join(format!("{}.log", source.replace(' ', "-")));
        Ok(Some(Capture { source: source.to_owned(), file, to: log_tx.clone() }))
    };
    let mut running = Vec::new();
    let mut stop_grace = Duration::from_secs(30);
    if let Some(config) = &configs.processor {
        let file = state.join("processor.yaml");
        std::fs::write(&file, serde_norway::to_string(config)?)?;
        let child = spawn(&binary("sluice-processor")?, &file, dir, None, capture("processor")?)?;
        running.push(Running { what: "sluice-processor".into(), child });
    }
    for config in &configs.runners {
        let f = &config.function;
        let file = state.join(format!("function-{}.yaml", f.name));
        std::fs::write(&file, serde_norway::to_string(config)?)?;
        let source = format!("function {}", f.name);
        let child = spawn(&binary("sluice-function-runner")?, &file, dir, python, capture(&source)?)?;
        running.push(Running { what: source, child });
        let timeout =
            f.runtime.lambda.as_ref().map(|l| l.timeout.get()).or(f.runtime.http.as_ref().map(|h| h.timeout.get()));
        stop_grace = stop_grace.max(timeout.unwrap_or_default() + Duration::from_secs(30));
    }
    let endpoints: Vec<String> = configs
        .runners
        .iter()
        .map(|r| format!("function {}: http://{}/metrics", r.function.name, r.listen))
        .chain(configs.processor.iter().map(|p| {
            format!("processor: http://{} (sluice query --server http://{} \"SELECT ...\")", p.listen, p.listen)
        }))
        .collect();
    eprintln!("sluice run: Pipeline {name:?} started (state in {}); {}", state.display(), endpoints.join("; "));
    if live {
        eprintln!("sluice run: the children's logs are in {}", logs.display());
    }

    // The data generators, in this process, into topics that exist by now.
    let stop_generators = tokio_util::sync::CancellationToken::new();
    let mut controls = Vec::new();
    let mut generators = tokio::task::JoinSet::new();
    for (quickstart, topic) in &options.datagen {
        let control = std::sync::Arc::new(datagen::Control {
            stop: stop_generators.child_token(),
            ..datagen::Control::default()
        });
        controls.push((control.clone(), quickstart.name().to_owned(), topic.clone()));
        let (q, t, b, rate) = (*quickstart, topic.clone(), bootstrap.to_owned(), options.datagen_rate);
        create_topics(bootstrap, &BTreeSet::from([t.clone()]), 4).await?;
        generators.spawn(async move {
            datagen::produce(q, &t, None, Some(rate), &b, &control).await.with_context(|| format!("--datagen into {t}"))
        });
    }
    if !options.datagen.is_empty() {
        let list: Vec<String> = options.datagen.iter().map(|(q, t)| format!("{} into {t}", q.name())).collect();
        eprintln!("sluice run: producing {} at {} records/s each", list.join(", "), options.datagen_rate);
    }

    let deadline = options.run_for.map(|d| tokio::time::Instant::now() + d);
    let mut watch = Watch { stop, generators: &mut generators, running: &mut running, deadline };
    drop(log_tx);
    let kafka = match &options.bootstrap_servers {
        Some(b) => format!("Kafka {b}"),
        None => format!("Kafka {bootstrap} (this run's)"),
    };
    let mut view = crate::view::View::new(pipeline, &configs, kafka, state, controls, options.datagen_rate)?;
    if let Some(table) = &options.table {
        view.show(table)?;
    }
    let failure = if live {
        view.run(|| watch.ended(), log_rx).await?
    } else {
        view.run_plain(|| watch.ended(), PLAIN_EVERY).await
    };
    eprintln!("sluice run: stopping");
    stop_generators.cancel();
    while generators.join_next().await.is_some() {}
    let stopped = stop_all(&mut running, stop_grace).await;
    match failure {
        Some(why) => anyhow::bail!("{why}; stopped the others"),
        None if stopped.is_empty() => Ok(()),
        None => anyhow::bail!("{}", stopped.join("; ")),
    }
}

/// How often a run without a terminal prints its rates and the newest rows.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What ends the wait for a run: Ctrl-C, `--for`, a generator that failed, a child that exited.
struct Watch<'a> {
    stop: &'a tokio_util::sync::CancellationToken,
    generators: &'a mut tokio::task::JoinSet<anyhow::Result<u64>>,
    running: &'a mut Vec<Running>,
    deadline: Option<tokio::time::Instant>,
}

impl Watch<'_> {
    /// `Some(None)`: a clean stop; `Some(Some(why))`: a failure; `None`: go on.
    fn ended(&mut self) -> Option<Option<String>> {
        if self.stop.is_cancelled() || self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Some(None);
        }
        if let Some(Ok(Err(e))) = self.generators.try_join_next() {
            return Some(Some(format!("{e:#}")));
        }
        exited(self.running).map(Some)
    }
}

/// Where a child's output goes in the live view: a log file, and the view's log.
struct Capture {
    source: String,
    file: PathBuf,
    to: tokio::sync::mpsc::UnboundedSender<live::LogEntry>,
}

/// Start `binary run --config CONFIG` in `dir`; `path` goes first on its `PATH` (a Python
/// environment's `bin`, for the function processes a runner starts). With `capture`, its output
/// goes there (as JSON log lines) instead of to the terminal.
fn spawn(
    binary: &Path,
    config: &Path,
    dir: &Path,
    path: Option<&Path>,
    capture: Option<Capture>,
) -> anyhow::Result<Child> {
    let mut command = Command::new(binary);
    if capture.is_some() {
        command.args(["--log-format", "json"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    if let Some(first) = path {
        let rest = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(first.to_path_buf()).chain(std::env::split_paths(&rest)))?;
        command.env("PATH", joined).env("VIRTUAL_ENV", first.parent().unwrap_or(first));
    }
    command
        .args(["run", "--config"])
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        // A process group of its own: the terminal's Ctrl-C reaches `sluice run` alone, which
        // stops the children itself.
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    // Should this process be killed outright, the children notice and stop instead of living on.
    command.env(sluice_telemetry::STOP_WITH_PARENT_ENV, std::process::id().to_string());
    let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
    if let Some(capture) = capture {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&capture.file)?;
        let file = std::sync::Arc::new(std::sync::Mutex::new(file));
        let streams: [Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let (file, source, to) = (file.clone(), capture.source.clone(), capture.to.clone());
            tokio::spawn(async move {
                use std::io::Write;
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if let Some(entry) = log_entry(&source, &line) {
                        let _ = to.send(entry);
                    }
                }
            });
        }
    }
    Ok(child)
}

/// A child's log line as the view shows it: its JSON (tracing's) read into time, level and
/// text; anything else (a function process's own output) as it is. Debug chatter is dropped.
fn log_entry(source: &str, line: &str) -> Option<live::LogEntry> {
    let now = || {
        live::clock(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
        )
    };
    let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(line) else {
        return (!line.trim().is_empty()).then(|| live::LogEntry {
            time: now(),
            level: "OUT".into(),
            source: source.to_owned(),
            text: line.to_owned(),
        });
    };
    let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("INFO").to_owned();
    if matches!(level.as_str(), "DEBUG" | "TRACE") {
        return None;
    }
    let time = v.get("timestamp").and_then(|t| t.as_str()).and_then(|t| t.get(11..19)).map_or_else(now, str::to_owned);
    let fields = v.get("fields").and_then(|f| f.as_object()).cloned().unwrap_or_default();
    let message = fields.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_owned();
    let mut text = message.clone();
    for (k, value) in &fields {
        if k == "message" {
            continue;
        }
        let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
        text.push_str(&format!(" {k}={}", value.replace('\n', " ⏎ ")));
    }
    // The processing log's entries (records skipped with an error) stand out.
    let level = if message == "record skipped" { "RECORD".to_owned() } else { level };
    Some(live::LogEntry { time, level, source: source.to_owned(), text })
}

/// A child that exited by itself, and how.
fn exited(running: &mut [Running]) -> Option<String> {
    for r in running.iter_mut() {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Some(format!("{} exited ({status})", r.what));
        }
    }
    None
}

/// SIGTERM every child still running, wait up to `grace` (SIGKILL after), and say which did not
/// stop cleanly.
async fn stop_all(running: &mut [Running], grace: Duration) -> Vec<String> {
    for r in running.iter() {
        if let Some(pid) = r.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let mut problems = Vec::new();
    for r in running.iter_mut() {
        match tokio::time::timeout(grace, r.child.wait()).await {
            Ok(Ok(status)) if status.success() || status.code().is_none() => {}
            Ok(Ok(status)) => problems.push(format!("{} stopped with {status}", r.what)),
            Ok(Err(e)) => problems.push(format!("{}: {e}", r.what)),
            Err(_) => {
                let _ = r.child.kill().await;
                problems.push(format!("{} did not stop within {grace:?} and was killed", r.what));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Pipeline {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stocktrade/pipeline.yaml"))
                .expect("the example");
        sluice_crds::validate::load_pipelines(&text).expect("valid").remove(0)
    }

    #[test]
    fn the_example_renders_local_configs() {
        let mut port = 40000;
        let configs = local_configs(&example(), "127.0.0.1:9092", Path::new("/tmp/s"), "127.0.0.1:8088", || {
            port += 1;
            Ok(port)
        })
        .unwrap();
        let p = configs.processor.expect("SQL");
        assert_eq!(p.application_id, "default.trades");
        assert_eq!(p.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!((p.replicas, p.ordinal), (1, Some(0)));
        assert_eq!(p.state_dir, "/tmp/s/processor");
        let r = &configs.runners[0];
        assert_eq!(r.group(), "default.trades.settle");
        assert_eq!((r.runtime_api_listen.as_str(), r.listen.as_str()), ("127.0.0.1:40001", "127.0.0.1:40002"));
        let l = r.function.runtime.lambda.as_ref().unwrap();
        assert_eq!(l.image, None, "locally the command runs");
        assert_eq!(l.command, ["python3", "-m", "awslambdaric"]);
    }

    #[test]
    fn a_local_run_keeps_the_pipelines_guarantees() {
        let configs = local_configs(&example(), "127.0.0.1:9092", Path::new("/s"), "127.0.0.1:8088", || Ok(1)).unwrap();
        let p = configs.processor.unwrap();
        assert!(p.exactly_once);
        assert_eq!(p.topic_creation, TopicCreation::Admin);
        assert_eq!(configs.runners[0].function.delivery, sluice_crds::pipeline::Delivery::ExactlyOnce);
    }

    #[test]
    fn python_commands_are_recognised() {
        let c = |v: &[&str]| runs_python(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert!(c(&["python3", "-m", "awslambdaric"]));
        assert!(c(&["/usr/bin/python3.11", "-m", "awslambdaric"]));
        assert!(c(&["python"]));
        assert!(!c(&["python3-config"]));
        assert!(!c(&["node", "index.js"]));
        assert!(!c(&[]));
    }

    #[test]
    fn the_default_python_requirements_are_the_examples_pin() {
        let example = include_str!("../../examples/stocktrade/requirements.txt");
        assert!(example.lines().any(|l| l == DEFAULT_PYTHON_REQUIREMENTS.trim()), "{example}");
    }

    #[test]
    fn an_image_alone_cannot_run_locally() {
        let mut p = example();
        p.spec.functions[0].runtime.lambda.as_mut().unwrap().command.clear();
        let e = local_configs(&p, "k:9092", Path::new("/s"), "127.0.0.1:8088", || Ok(1)).unwrap_err();
        assert!(e.to_string().starts_with("spec.functions[0].runtime.lambda.command:"), "{e}");
    }

    #[test]
    fn the_topics_someone_else_creates() {
        let topics = external_topics(&example()).unwrap();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        assert_eq!(topics, ["stocktrade", "trade-settlements", "user_trades", "user_trades.dlq", "users"]);
    }
}
