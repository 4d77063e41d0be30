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
//! Without `--bootstrap-servers`, an embedded Kafka is started in this process: librdkafka's
//! mock cluster, for a zero-setup demo only (no durability, no ACLs, a subset of the protocol).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use nix::{sys::signal::Signal, unistd::Pid};
use sluice_crds::{
    Pipeline,
    config::{KafkaConfig, ProcessorConfig, RunnerConfig, TopicCreation},
    pipeline::Delivery,
};
use tokio::process::{Child, Command};

/// What `sluice run` was asked to do.
pub struct Options {
    /// The Pipeline file.
    pub pipeline: PathBuf,
    /// Kafka to use; `None`: the embedded demo cluster.
    pub bootstrap_servers: Option<String>,
    /// Where the processor keeps its state (default `.sluice/<pipeline>`).
    pub state_dir: Option<PathBuf>,
    /// Stop after this long.
    pub run_for: Option<Duration>,
    /// The processor's HTTP address.
    pub listen: String,
}

/// The config files of a local run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfigs {
    /// The processor's, when the Pipeline has SQL.
    pub processor: Option<ProcessorConfig>,
    /// One per function.
    pub runners: Vec<RunnerConfig>,
}

/// Render a Pipeline's data-plane configs for this machine: Kafka at `bootstrap` (`embedded`:
/// the demo cluster, which creates topics on first use), state under `state_dir`, the processor
/// on `listen`, each runner's endpoints on the given free ports. Errors name the field that
/// cannot run locally.
pub fn local_configs(
    pipeline: &Pipeline,
    bootstrap: &str,
    embedded: bool,
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
                // The embedded demo Kafka's transactions do not carry read_committed consumers
                // along: the demo runs at-least-once.
                exactly_once: p.exactly_once && !embedded,
                commit_interval: p.commit_interval.clone(),
                properties: p.properties.clone(),
                listen: listen.to_owned(),
                peers: Vec::new(),
                topic_creation: if embedded { TopicCreation::AutoCreate } else { TopicCreation::Admin },
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
        if embedded {
            function.delivery = Delivery::AtLeastOnce;
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

    let (embedded, bootstrap) = match &options.bootstrap_servers {
        Some(b) => (None, b.clone()),
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1).context("starting the embedded Kafka")?;
            for t in &topics {
                cluster.create_topic(t, 4, 1).with_context(|| format!("creating topic {t}"))?;
            }
            let bootstrap = cluster.bootstrap_servers();
            eprintln!(
                "sluice run: no --bootstrap-servers: started an embedded Kafka (demo only: in memory, gone when this stops) \
                 at {bootstrap}, with topics {}, running everything at-least-once; produce to it with \
                 `sluice datagen --bootstrap-servers {bootstrap} ...`",
                topics.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            (Some(cluster), bootstrap)
        }
    };

    let state = match &options.state_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(".sluice").join(&name),
    };
    std::fs::create_dir_all(&state).with_context(|| format!("--state-dir {}", state.display()))?;
    let state = state.canonicalize()?;
    let configs = local_configs(pipeline, &bootstrap, embedded.is_some(), &state, &options.listen, free_port)?;

    let mut running = Vec::new();
    let mut stop_grace = Duration::from_secs(30);
    if let Some(config) = &configs.processor {
        let file = state.join("processor.yaml");
        std::fs::write(&file, serde_norway::to_string(config)?)?;
        let child = spawn(&binary("sluice-processor")?, &file, &dir)?;
        running.push(Running { what: "sluice-processor".into(), child });
    }
    for config in &configs.runners {
        let f = &config.function;
        let file = state.join(format!("function-{}.yaml", f.name));
        std::fs::write(&file, serde_norway::to_string(config)?)?;
        let child = spawn(&binary("sluice-function-runner")?, &file, &dir)?;
        running.push(Running { what: format!("function {}", f.name), child });
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

    let stop = tokio::spawn(sluice_telemetry::stop_requested());
    let deadline = options.run_for.map(|d| tokio::time::Instant::now() + d);
    let failure = loop {
        if stop.is_finished() {
            break None;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break None;
        }
        if let Some(exited) = exited(&mut running) {
            break Some(exited);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.abort();
    eprintln!("sluice run: stopping");
    let stopped = stop_all(&mut running, stop_grace).await;
    match failure {
        Some(why) => anyhow::bail!("{why}; stopped the others"),
        None if stopped.is_empty() => Ok(()),
        None => anyhow::bail!("{}", stopped.join("; ")),
    }
}

fn spawn(binary: &Path, config: &Path, dir: &Path) -> anyhow::Result<Child> {
    let mut command = Command::new(binary);
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
    command.spawn().with_context(|| format!("starting {}", binary.display()))
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
        let configs = local_configs(&example(), "127.0.0.1:9092", false, Path::new("/tmp/s"), "127.0.0.1:8088", || {
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
    fn the_embedded_demo_runs_at_least_once_and_lets_the_cluster_create_topics() {
        let configs =
            local_configs(&example(), "127.0.0.1:9092", true, Path::new("/s"), "127.0.0.1:8088", || Ok(1)).unwrap();
        let p = configs.processor.unwrap();
        assert!(!p.exactly_once);
        assert_eq!(p.topic_creation, TopicCreation::AutoCreate);
        assert_eq!(configs.runners[0].function.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn an_image_alone_cannot_run_locally() {
        let mut p = example();
        p.spec.functions[0].runtime.lambda.as_mut().unwrap().command.clear();
        let e = local_configs(&p, "k:9092", false, Path::new("/s"), "127.0.0.1:8088", || Ok(1)).unwrap_err();
        assert!(e.to_string().starts_with("spec.functions[0].runtime.lambda.command:"), "{e}");
    }

    #[test]
    fn the_topics_someone_else_creates() {
        let topics = external_topics(&example()).unwrap();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        assert_eq!(topics, ["stocktrade", "trade-settlements", "user_trades", "user_trades.dlq", "users"]);
    }
}
