//! `sluice-bench`: Sluice's benchmarks against the real local broker (method:
//! ../shared/design/BENCHMARKS.md; results: docs/benchmarks.md).
//!
//! `sluice-bench f1` — the function runner with a no-op function, in HTTP mode and in Runtime-API
//! mode, at several batch sizes, each run beside the ceiling: a plain rdkafka consume→produce
//! loop over the same records (`sluice-bench raw-loop`, a child process like the runner, so that
//! both are measured the same way).
//!
//! For each run: fresh topics, the input preloaded, the system under test started, and a
//! `read_committed` consumer of the output that checks every input came out and times the run:
//! the first 20% of the outputs are warm-up (group join, connections, first fetches), and
//! throughput = the other 80% / (last output seen − the output that ended the warm-up). CPU is the
//! child's user+system time from `/proc/<pid>/stat`, per million records; the broker's too.

use std::{
    collections::HashSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{BaseRecord, FutureProducer, FutureRecord, Producer, ThreadedProducer},
};
use serde_json::{Value, json};

mod processor;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice's benchmarks against a real local broker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Mode {
    /// The raw rdkafka consume→produce loop (the ceiling).
    Raw,
    /// The runner POSTing to a no-op HTTP function.
    Http,
    /// The runner serving the Runtime API to no-op runtimes.
    Lambda,
}

#[derive(Subcommand)]
enum Cmd {
    /// F1: the function runner with a no-op function against the raw consume→produce ceiling.
    F1 {
        /// Bootstrap servers of the broker (e.g. from `tests/infra/kafka.sh start`).
        #[arg(long, env = "SLUICE_TEST_BOOTSTRAP")]
        bootstrap: String,
        /// The `sluice-function-runner` binary (a release build).
        #[arg(long)]
        runner: PathBuf,
        /// Records per run.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Records per run at batch size 1 (one invocation each).
        #[arg(long, default_value_t = 20_000)]
        records_batch_one: usize,
        /// Bytes of each value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Partitions of the input and output topics.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Batch sizes (maxRecords).
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        batches: Vec<usize>,
        /// Modes to run.
        #[arg(long, value_delimiter = ',', default_value = "raw,http,lambda")]
        modes: Vec<Mode>,
        /// Runs of each (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The broker's pid, for its CPU time (default: from tests/infra/kafka.sh's pid file).
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// P1–P3: the processor against the raw ceiling and Kafka Streams, side by side.
    P {
        #[arg(long, env = "SLUICE_TEST_BOOTSTRAP")]
        bootstrap: String,
        /// The `sluice-processor` binary (a release build).
        #[arg(long)]
        processor: PathBuf,
        /// The Kafka Streams program's Maven project (built when its jar is missing).
        #[arg(long, default_value = "bench/kstreams")]
        kstreams: PathBuf,
        /// Workloads.
        #[arg(long, value_delimiter = ',', default_value = "p1,p2,p3")]
        workloads: Vec<processor::Workload>,
        /// Systems, run in this order for every workload.
        #[arg(long, value_delimiter = ',', default_value = "raw,raw-json,sluice,kstreams")]
        systems: Vec<processor::System>,
        /// Preloaded pageviews per run.
        #[arg(long, default_value_t = 500_000)]
        records: usize,
        /// Runs of each (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// At-least-once instead of exactly-once (the raw loops are always at-least-once).
        #[arg(long)]
        at_least_once: bool,
        /// Also a rate-limited run per workload of sluice and kstreams at this many records per
        /// second, for latency (0: none).
        #[arg(long, default_value_t = 0)]
        latency_rate: usize,
        /// Seconds of the rate-limited runs.
        #[arg(long, default_value_t = 30)]
        latency_seconds: u64,
        /// The broker's pid, for its CPU time (default: from tests/infra/kafka.sh's pid file).
        #[arg(long)]
        broker_pid: Option<u32>,
    },
    /// P4: restore of a latest-value table, in the processor and in Kafka Streams.
    P4 {
        #[arg(long, env = "SLUICE_TEST_BOOTSTRAP")]
        bootstrap: String,
        /// The `sluice-processor` binary (a release build).
        #[arg(long)]
        processor: PathBuf,
        /// The Kafka Streams program's Maven project (built when its jar is missing).
        #[arg(long, default_value = "bench/kstreams")]
        kstreams: PathBuf,
        /// Systems.
        #[arg(long, value_delimiter = ',', default_value = "sluice,kstreams")]
        systems: Vec<processor::System>,
        /// Distinct keys.
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        /// Runs of each (the median is reported).
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// The ceiling: consume `input`, produce each record's key and value to `output`, commit.
    RawLoop {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        output: String,
        #[arg(long)]
        group: String,
        /// Decode each value as JSON and encode it again (the cost of a format).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::RawLoop { bootstrap, input, output, group, json } => raw_loop(&bootstrap, &input, &output, &group, json),
        Cmd::P4 { bootstrap, processor, kstreams, systems, keys, runs } => {
            let rt = tokio::runtime::Runtime::new()?;
            let bench = processor::Bench {
                bootstrap,
                processor,
                kstreams_jar: processor::kstreams_jar(&kstreams)?,
                java: processor::java(),
                exactly_once: true,
                broker_pid: None,
                partitions: 4,
            };
            println!(
                "| system | keys | runs | catch-up records/s | ready after a clean restart (s) | with an empty state dir (s) | after SIGKILL, exactly-once (s) |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- |");
            for system in systems {
                let mut results = Vec::new();
                for run in 0..runs {
                    let r = rt.block_on(bench.p4(system, keys)).with_context(|| format!("P4 {system:?} run {run}"))?;
                    eprintln!(
                        "P4 {system:?} run {run}: catch-up {:.0}/s, clean {:.2} s, empty {:.2} s, SIGKILL {:.2} s",
                        r.catch_up_rate, r.clean_restart, r.empty_state, r.after_sigkill
                    );
                    results.push(r);
                }
                let median = |f: fn(&processor::Restore) -> f64| {
                    let mut v: Vec<f64> = results.iter().map(f).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                println!(
                    "| {} | {keys} | {runs} | {:.0} | {:.2} | {:.2} | {:.2} |",
                    format!("{system:?}").to_lowercase(),
                    median(|r| r.catch_up_rate),
                    median(|r| r.clean_restart),
                    median(|r| r.empty_state),
                    median(|r| r.after_sigkill),
                );
            }
            Ok(())
        }
        Cmd::P {
            bootstrap,
            processor,
            kstreams,
            workloads,
            systems,
            records,
            runs,
            at_least_once,
            latency_rate,
            latency_seconds,
            broker_pid,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let bench = processor::Bench {
                bootstrap,
                processor,
                kstreams_jar: if systems.contains(&processor::System::Kstreams) {
                    processor::kstreams_jar(&kstreams)?
                } else {
                    PathBuf::new()
                },
                java: processor::java(),
                exactly_once: !at_least_once,
                broker_pid: broker_pid.or_else(default_broker_pid),
                partitions: 4,
            };
            let guarantee = if at_least_once { "at-least-once" } else { "exactly-once" };
            if latency_rate > 0 {
                println!(
                    "| workload | system | guarantee | records/s offered | seconds | p50 (ms) | p99 (ms) | p99.9 (ms) | samples |"
                );
                println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
                for w in &workloads {
                    let measured =
                        systems.iter().filter(|s| matches!(s, processor::System::Sluice | processor::System::Kstreams));
                    for system in measured {
                        let l = rt
                            .block_on(bench.latency(*w, *system, latency_rate, latency_seconds))
                            .with_context(|| format!("{w:?} {system:?} latency"))?;
                        println!(
                            "| {} | {} | {guarantee} | {latency_rate} | {latency_seconds} | {:.0} | {:.0} | {:.0} | {} |",
                            format!("{w:?}").to_lowercase(),
                            format!("{system:?}").to_lowercase(),
                            l.p50,
                            l.p99,
                            l.p999,
                            l.samples
                        );
                    }
                }
                if runs == 0 {
                    return Ok(());
                }
            }
            println!(
                "| workload | system | guarantee | records | runs | records/s (median) | ratio to raw | ratio to Kafka Streams | CPU-s per M records | broker CPU-s per M records | output records |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            for w in workloads {
                let mut medians: Vec<(processor::System, f64)> = Vec::new();
                let mut rows = Vec::new();
                for system in &systems {
                    let mut results = Vec::new();
                    for run in 0..runs {
                        let r = rt
                            .block_on(bench.run(w, *system, records))
                            .with_context(|| format!("{w:?} {system:?} run {run}"))?;
                        eprintln!(
                            "{w:?} {system:?} run {run}: {:.0} rec/s, {:.2} CPU-s/M, {} outputs",
                            r.rate, r.cpu_per_million, r.outputs
                        );
                        results.push(r);
                    }
                    results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                    let median = results.swap_remove(results.len() / 2);
                    medians.push((*system, median.rate));
                    rows.push((*system, median));
                }
                let rate_of = |s: processor::System| medians.iter().find(|(x, _)| *x == s).map(|(_, r)| *r);
                for (system, m) in rows {
                    let ratio = |base: Option<f64>| base.map_or("—".to_string(), |b| format!("{:.2}", m.rate / b));
                    let g = if matches!(system, processor::System::Raw | processor::System::RawJson) {
                        "at-least-once"
                    } else {
                        guarantee
                    };
                    println!(
                        "| {} | {} | {g} | {records} | {runs} | {:.0} | {} | {} | {:.1} | {} | {} |",
                        format!("{w:?}").to_lowercase(),
                        format!("{system:?}").to_lowercase(),
                        m.rate,
                        ratio(rate_of(processor::System::Raw)),
                        ratio(rate_of(processor::System::Kstreams)),
                        m.cpu_per_million,
                        m.broker_cpu_per_million.map_or("—".to_string(), |c| format!("{c:.1}")),
                        m.outputs,
                    );
                }
            }
            Ok(())
        }
        Cmd::F1 {
            bootstrap,
            runner,
            records,
            records_batch_one,
            value_bytes,
            partitions,
            batches,
            modes,
            runs,
            broker_pid,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let broker_pid = broker_pid.or_else(default_broker_pid);
            let f1 = F1 { bootstrap, runner, value_bytes, partitions, broker_pid };
            println!(
                "| mode | batch | records | runs | records/s (median) | ratio to raw | runner CPU-s per M records | broker CPU-s per M records | mean invocation (ms) | function's own (ms) | runner overhead per invocation (ms) |"
            );
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            let median_of = |mode: Mode, batch: usize, n: usize| -> anyhow::Result<RunResult> {
                let mut results = Vec::new();
                for run in 0..runs {
                    let r = rt
                        .block_on(f1.run(mode, batch, n))
                        .with_context(|| format!("{mode:?} batch {batch} run {run}"))?;
                    eprintln!(
                        "{mode:?} batch {batch} run {run}: {:.0} rec/s, {:.2} CPU-s/M",
                        r.rate, r.cpu_per_million
                    );
                    results.push(r);
                }
                results.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                Ok(results.swap_remove(results.len() / 2))
            };
            let ms = |v: Option<f64>| v.map_or("—".to_string(), |ms| format!("{ms:.3}"));
            let row = |mode: Mode, batch: String, n: usize, m: &RunResult, ratio: String| {
                let overhead = m.mean_invocation_ms.zip(m.function_ms).map(|(i, f)| i - f);
                println!(
                    "| {} | {batch} | {n} | {runs} | {:.0} | {ratio} | {:.1} | {} | {} | {} | {} |",
                    format!("{mode:?}").to_lowercase(),
                    m.rate,
                    m.cpu_per_million,
                    m.broker_cpu_per_million.map_or("—".to_string(), |c| format!("{c:.1}")),
                    ms(m.mean_invocation_ms),
                    ms(m.function_ms),
                    ms(overhead),
                );
            };
            // The ceiling once per invocation of this command, at the full record count (a
            // small run of the raw loop is a burst, not a rate): every ratio below is to it.
            let raw_rate = if modes.contains(&Mode::Raw) {
                let m = median_of(Mode::Raw, 0, records)?;
                row(Mode::Raw, "—".into(), records, &m, "1.00".into());
                Some(m.rate)
            } else {
                None
            };
            for batch in batches {
                let n = if batch == 1 { records_batch_one } else { records };
                for mode in modes.iter().filter(|m| **m != Mode::Raw) {
                    let m = median_of(*mode, batch, n)?;
                    let ratio = raw_rate.map_or("—".to_string(), |raw| format!("{:.3}", m.rate / raw));
                    row(*mode, batch.to_string(), n, &m, ratio);
                }
            }
            Ok(())
        }
    }
}

fn default_broker_pid() -> Option<u32> {
    let home = std::env::var("HOME").ok()?;
    let run = std::env::var("SLUICE_RUN_DIR").unwrap_or_else(|_| format!("{home}/.cache/sluice/run"));
    std::fs::read_to_string(format!("{run}/kafka/kafka.pid")).ok()?.trim().parse().ok()
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) are space-separated; utime and stime
    // are the 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct RunResult {
    rate: f64,
    cpu_per_million: f64,
    broker_cpu_per_million: Option<f64>,
    mean_invocation_ms: Option<f64>,
    /// The no-op function's own time per invocation (decode the event, encode the answer).
    function_ms: Option<f64>,
}

/// Time the no-op functions spend on their own work, summed over a run: the runner's overhead
/// per invocation is its measured invocation time minus this.
static FUNCTION_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static FUNCTION_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `echo`, timed into [`FUNCTION_NANOS`].
fn timed_echo(event: &[u8]) -> Vec<u8> {
    use std::sync::atomic::Ordering;
    let started = Instant::now();
    let answer = echo(event);
    FUNCTION_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    FUNCTION_CALLS.fetch_add(1, Ordering::Relaxed);
    answer
}

struct F1 {
    bootstrap: String,
    runner: PathBuf,
    value_bytes: usize,
    partitions: i32,
    broker_pid: Option<u32>,
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unique(prefix: &str) -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{prefix}-{}-{millis}", std::process::id())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl F1 {
    async fn run(&self, mode: Mode, batch: usize, n: usize) -> anyhow::Result<RunResult> {
        let name = unique(&format!("f1-{}-{batch}", format!("{mode:?}").to_lowercase()));
        let (input, output) = (format!("{name}-in"), format!("{name}-out"));
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        let topics = [
            NewTopic::new(&input, self.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&output, self.partitions, TopicReplication::Fixed(1)),
        ];
        for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
        self.preload(&input, n).await?;
        FUNCTION_NANOS.store(0, std::sync::atomic::Ordering::Relaxed);
        FUNCTION_CALLS.store(0, std::sync::atomic::Ordering::Relaxed);

        let http_port = free_port()?;
        let (runtime_port, listen_port) = (free_port()?, free_port()?);
        let mut servers = Vec::new();
        let child = match mode {
            Mode::Raw => Command::new(std::env::current_exe()?)
                .args([
                    "raw-loop",
                    "--bootstrap",
                    &self.bootstrap,
                    "--input",
                    &input,
                    "--output",
                    &output,
                    "--group",
                    &name,
                ])
                .stderr(Stdio::inherit())
                .spawn()?,
            Mode::Http | Mode::Lambda => {
                let runtime = if mode == Mode::Http {
                    servers.push(tokio::spawn(noop_http(http_port)));
                    json!({"http": {"url": format!("http://127.0.0.1:{http_port}/"), "maxConcurrency": self.partitions}})
                } else {
                    json!({"lambda": {"image": "bench/noop", "concurrency": self.partitions}})
                };
                let config = json!({
                    "pipeline": name,
                    "kafka": {"bootstrapServers": self.bootstrap},
                    "listen": format!("127.0.0.1:{listen_port}"),
                    "runtimeApiListen": format!("127.0.0.1:{runtime_port}"),
                    "function": {
                        "name": "noop",
                        "source": {"topic": input, "startingPosition": "earliest"},
                        "batch": {"maxRecords": batch, "maxWait": "20ms"},
                        "runtime": runtime,
                        "output": {"topic": output},
                    },
                });
                let path = std::env::temp_dir().join(format!("{name}.json"));
                std::fs::write(&path, config.to_string())?;
                let child = Command::new(&self.runner)
                    .args(["run", "--config"])
                    .arg(&path)
                    .env("RUST_LOG", "warn")
                    .stderr(Stdio::inherit())
                    .spawn()
                    .with_context(|| format!("starting {}", self.runner.display()))?;
                if mode == Mode::Lambda {
                    for _ in 0..self.partitions {
                        servers.push(tokio::spawn(noop_runtime(runtime_port)));
                    }
                }
                child
            }
        };
        let child = Killed(child);
        let pid = child.0.id();
        let broker_before = self.broker_pid.and_then(cpu_seconds);
        let (bootstrap, out) = (self.bootstrap.clone(), output.clone());
        let (first, last) = tokio::task::spawn_blocking(move || verify(&bootstrap, &out, n)).await??;
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        let broker = broker_before.zip(self.broker_pid.and_then(cpu_seconds)).map(|(a, b)| (b - a) / n as f64 * 1e6);
        let mean_invocation_ms = if mode == Mode::Raw { None } else { mean_invocation(listen_port).await };
        let calls = FUNCTION_CALLS.load(std::sync::atomic::Ordering::Relaxed);
        let function_ms =
            (calls > 0).then(|| FUNCTION_NANOS.load(std::sync::atomic::Ordering::Relaxed) as f64 / calls as f64 / 1e6);
        drop(child);
        for s in servers {
            s.abort();
        }
        let _ = admin.delete_topics(&[&input, &output], &AdminOptions::new()).await;
        let seconds = last.duration_since(first).as_secs_f64().max(1e-6);
        Ok(RunResult {
            rate: (n - n / 5 - 1) as f64 / seconds,
            cpu_per_million: cpu / n as f64 * 1e6,
            broker_cpu_per_million: broker,
            mean_invocation_ms,
            function_ms,
        })
    }

    async fn preload(&self, topic: &str, n: usize) -> anyhow::Result<()> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "20")
            .set("enable.idempotence", "true")
            .create()?;
        let mut pending = futures::stream::FuturesUnordered::new();
        use futures::StreamExt;
        for i in 0..n {
            let key = format!("user_{:06}", i % 10_000);
            let value = value_of(i, self.value_bytes);
            let mut record = FutureRecord::to(topic).key(&key).payload(&value);
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(d) => break d,
                    Err((_, r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            pending.push(delivery);
            if pending.len() >= 10_000 {
                while let Some(r) = pending.next().await {
                    r?.map_err(|(e, _)| e)?;
                }
            }
        }
        while let Some(r) = pending.next().await {
            r?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// A JSON value of exactly `bytes` bytes carrying the record's number.
fn value_of(i: usize, bytes: usize) -> String {
    let head = format!("{{\"seq\":{i},\"pad\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn seq_of(value: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix("{\"seq\":")?;
    rest[..rest.find(',')?].parse().ok()
}

/// Read the output with `read_committed` until every input's record arrived; the instants of the
/// first and the last. Fails on a missing or unknown record after a quiet minute.
fn verify(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<(Instant, Instant)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("verify"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = HashSet::with_capacity(n);
    let warm_up = n / 5;
    let (mut first, mut last) = (None, Instant::now());
    let mut quiet_since = Instant::now();
    while seen.len() < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                if seen.len() >= warm_up {
                    first.get_or_insert(now);
                }
                last = now;
                quiet_since = now;
                let Some(seq) = m.payload().and_then(seq_of) else {
                    bail!("an output that is no input: {:?}", m.payload())
                };
                if seq >= n {
                    bail!("an output for an unknown input {seq}");
                }
                seen.insert(seq);
            }
            Some(Err(e)) => bail!("verifier: {e}"),
            None if quiet_since.elapsed() > Duration::from_secs(60) => {
                bail!("only {} of {n} outputs arrived", seen.len())
            }
            None => {}
        }
    }
    Ok((first.unwrap_or(last), last))
}

async fn mean_invocation(port: u16) -> Option<f64> {
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .ok()??;
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("sluice_function_runner_invocation_duration_seconds_{suffix}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let (sum, count) = (value("sum")?, value("count")?);
    (count > 0.0).then(|| sum / count * 1000.0)
}

/// The no-op function's answer: every input back, as raw bytes.
fn echo(event: &[u8]) -> Vec<u8> {
    let Ok(event) = serde_json::from_slice::<Value>(event) else { return b"{}".to_vec() };
    let mut records = Vec::new();
    for group in event["records"].as_object().into_iter().flat_map(|g| g.values()) {
        for r in group.as_array().into_iter().flatten() {
            records.push(json!({"keyBase64": r["key"], "valueBase64": r["value"]}));
        }
    }
    json!({"records": records}).to_string().into_bytes()
}

async fn noop_http(port: u16) {
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else { return };
    let app =
        axum::Router::new().route("/", axum::routing::post(|body: axum::body::Bytes| async move { timed_echo(&body) }));
    let _ = axum::serve(listener, app).await;
}

/// A no-op Lambda runtime: poll `/next`, post the echo to `/response`, forever.
async fn noop_runtime(port: u16) {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<axum::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{port}/2018-06-01/runtime/invocation");
    loop {
        let Ok(uri) = format!("{base}/next").parse::<hyper::Uri>() else { return };
        let Ok(response) = client.get(uri).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(id) =
            response.headers().get("Lambda-Runtime-Aws-Request-Id").and_then(|v| v.to_str().ok()).map(str::to_owned)
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(body) = response.into_body().collect().await else { continue };
        let answer = timed_echo(&body.to_bytes());
        let Ok(uri) = format!("{base}/{id}/response").parse::<hyper::Uri>() else { return };
        let Ok(request) = hyper::Request::post(uri).body(Full::new(axum::body::Bytes::from(answer))) else { return };
        let _ = client.request(request).await;
    }
}

/// The ceiling: consume, produce the same key and value, commit every 100 ms; until killed.
fn raw_loop(bootstrap: &str, input: &str, output: &str, group: &str, json: bool) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[input])?;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let producer = Arc::new(producer);
    let mut last_commit = Instant::now();
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            let encoded;
            if let Some(v) = m.payload() {
                if json {
                    encoded =
                        serde_json::from_slice::<Value>(v).map(|j| j.to_string().into_bytes()).unwrap_or_default();
                    record = record.payload(encoded.as_slice());
                } else {
                    record = record.payload(v);
                }
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(5));
                        record = r;
                    }
                }
            }
            let _ = consumer.store_offset_from_message(&m);
        }
        if last_commit.elapsed() > Duration::from_millis(100) {
            let _ = producer.flush(Duration::from_secs(30));
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
}
