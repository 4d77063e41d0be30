//! `sluice-bench p`: the processor workloads P1–P3 (../shared/design/BENCHMARKS.md), each run
//! side by side with the raw rdkafka consume→produce ceiling (bytes only, and with JSON decode +
//! encode) and with the same workload in Kafka Streams (`bench/kstreams`, built with Maven at the
//! broker's Kafka version).
//!
//! Per run: fresh topics (4 partitions), the input preloaded (pageviews keyed `user_NNNNNN`,
//! ~150-byte JSON values, event time spread over 30 minutes; P2 also 100,000 users, 5% of the
//! pageviews naming a user that does not exist and 1% of them followed by an update of a user),
//! then the system under test started on it with an empty group and state. A `read_committed`
//! consumer of the output checks the result against the generator's ground truth (P1: the count
//! and the sum of durations kept; P2: the count, the sum of durations and the number of misses;
//! P3: the final count of every page and minute) and times the run.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::ValueEnum;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};
use serde_json::Value;

use crate::{Killed, cpu_seconds, free_port, unique};

/// Users in the P2 table.
const USERS: usize = 100_000;
/// Distinct pages (the P3 grouping).
const PAGES: usize = 10_000;
/// Event time covered by the preloaded pageviews.
const SPAN_MS: i64 = 30 * 60 * 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Workload {
    /// Stateless filter + project.
    P1,
    /// Stream–table LEFT JOIN.
    P2,
    /// 60-second tumbling COUNT over 10,000 pages.
    P3,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum System {
    /// The rdkafka consume→produce loop, bytes only.
    Raw,
    /// The same loop decoding and re-encoding each JSON value.
    RawJson,
    /// `sluice-processor run`.
    Sluice,
    /// The same workload in Kafka Streams.
    Kstreams,
}

/// What a run is given.
pub struct Bench {
    pub bootstrap: String,
    pub processor: PathBuf,
    pub kstreams_jar: PathBuf,
    pub java: String,
    pub exactly_once: bool,
    pub broker_pid: Option<u32>,
    pub partitions: i32,
}

/// What a run measured.
pub struct Measured {
    pub rate: f64,
    pub cpu_per_million: f64,
    pub broker_cpu_per_million: Option<f64>,
    pub outputs: usize,
}

/// One pageview of the preloaded input.
struct View {
    user: String,
    page: usize,
    duration: i64,
    region: usize,
    ts: i64,
}

fn view(i: usize, base: i64, n: usize) -> View {
    // Every 20th view names a user that is not in the table.
    let user = if i.is_multiple_of(20) { USERS + i % USERS } else { (i * 7919) % USERS };
    View {
        user: format!("user_{user:06}"),
        page: (i * 104_729) % PAGES,
        duration: (i % 110) as i64,
        region: i % 10,
        ts: base + (i as i64 * SPAN_MS) / n.max(1) as i64,
    }
}

fn view_json(v: &View) -> String {
    format!(
        "{{\"pageid\":\"page_{:04}\",\"duration\":{},\"region\":\"region_{}\",\"viewtime\":{},\"url\":\"https://example.com/articles/{:010}/comments?sort=newest&page=2\"}}",
        v.page, v.duration, v.region, v.ts, v.page
    )
}

fn user_json(u: usize, version: usize) -> String {
    format!("{{\"name\":\"name_{u:06}\",\"region\":\"region_{}\",\"registertime\":{version}}}", (u + version) % 10)
}

/// The ground truth of a workload's output.
enum Truth {
    /// Records, sum of DURATION, outputs whose NAME is NULL.
    Rows { count: usize, duration_sum: i64, misses: Option<usize> },
    /// Final count per output key (page + window start).
    Counts(HashMap<Vec<u8>, i64>),
    /// Every input record once (the raw loops).
    Copies(usize),
}

fn sql(w: Workload, input: &str, users: &str, output: &str) -> String {
    let views = format!(
        "CREATE STREAM PAGEVIEWS (userid VARCHAR KEY, pageid VARCHAR, duration INT, region VARCHAR, viewtime BIGINT, url VARCHAR)
           WITH (kafka_topic = '{input}', value_format = 'json');"
    );
    match w {
        Workload::P1 => format!(
            "{views}
             CREATE STREAM P1 WITH (kafka_topic = '{output}') AS
               SELECT userid, pageid, duration, UCASE(region) AS region FROM PAGEVIEWS WHERE duration > 10;"
        ),
        Workload::P2 => format!(
            "{views}
             CREATE TABLE USERS (userid VARCHAR PRIMARY KEY, name VARCHAR, region VARCHAR, registertime BIGINT)
               WITH (kafka_topic = '{users}', value_format = 'json');
             CREATE STREAM P2 WITH (kafka_topic = '{output}') AS
               SELECT p.userid AS userid, p.pageid AS pageid, p.duration AS duration, u.name AS name, u.region AS uregion
               FROM PAGEVIEWS p LEFT JOIN USERS u ON p.userid = u.userid;"
        ),
        Workload::P3 => format!(
            "{views}
             CREATE TABLE P3 WITH (kafka_topic = '{output}') AS
               SELECT pageid, COUNT(*) AS views FROM PAGEVIEWS WINDOW TUMBLING (SIZE 60 SECONDS) GROUP BY pageid;"
        ),
    }
}

fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Java's partitioner, which Kafka Streams and the processor's joins assume.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "262144")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, value: &str, ts: i64) {
    let mut record = BaseRecord::to(topic).key(key).payload(value).timestamp(ts);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Write the input and compute the truth of `w` over it.
fn preload(b: &Bench, w: Workload, n: usize, input: &str, users: &str) -> anyhow::Result<Truth> {
    let p = producer(&b.bootstrap)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let base = now - SPAN_MS - 3_600_000;
    if w == Workload::P2 {
        for u in 0..USERS {
            send(&p, users, &format!("user_{u:06}"), &user_json(u, 0), base - 1);
        }
    }
    let (mut count, mut duration_sum, mut misses) = (0, 0i64, 0);
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    for i in 0..n {
        let v = view(i, base, n);
        send(&p, input, &v.user, &view_json(&v), v.ts);
        if w == Workload::P2 && i % 100 == 50 {
            let u = (i * 31) % USERS;
            send(&p, users, &format!("user_{u:06}"), &user_json(u, i), v.ts);
        }
        match w {
            Workload::P1 if v.duration > 10 => {
                count += 1;
                duration_sum += v.duration;
            }
            Workload::P1 => {}
            Workload::P2 => {
                count += 1;
                duration_sum += v.duration;
                let user: usize = v.user[5..].parse().unwrap_or(0);
                if user >= USERS {
                    misses += 1;
                }
            }
            Workload::P3 => {
                let mut key = format!("page_{:04}", v.page).into_bytes();
                key.extend_from_slice(&(v.ts - v.ts.rem_euclid(60_000)).to_be_bytes());
                *counts.entry(key).or_default() += 1;
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    Ok(match w {
        Workload::P1 => Truth::Rows { count, duration_sum, misses: None },
        Workload::P2 => Truth::Rows { count, duration_sum, misses: Some(misses) },
        Workload::P3 => Truth::Counts(counts),
    })
}

async fn create_topics(b: &Bench, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &b.bootstrap).create()?;
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|t| NewTopic::new(t, b.partitions, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

impl Bench {
    /// One run of `system` on workload `w` over `n` preloaded records.
    pub async fn run(&self, w: Workload, system: System, n: usize) -> anyhow::Result<Measured> {
        let name = unique(&format!("{w:?}-{system:?}").to_lowercase());
        let (input, users, output) = (format!("{name}-views"), format!("{name}-users"), format!("{name}-out"));
        create_topics(self, &[&input, &users, &output]).await?;
        let truth = {
            let (b, i, u) = (self.bootstrap.clone(), input.clone(), users.clone());
            let bench = Bench { bootstrap: b, ..self.clone_settings() };
            tokio::task::spawn_blocking(move || preload(&bench, w, n, &i, &u)).await??
        };
        let truth = if matches!(system, System::Raw | System::RawJson) { Truth::Copies(n) } else { truth };
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut child = self.command(w, system, &name, &input, &users, &output, &dir)?;
        child.stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = Killed(child.spawn().with_context(|| format!("starting {system:?}"))?);
        let pid = child.0.id();
        let (bootstrap, broker) = (self.bootstrap.clone(), self.broker_pid);
        let result = tokio::task::spawn_blocking(move || verify(&bootstrap, &output, &truth, n, pid, broker)).await?;
        drop(child);
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    /// The command line of `system` running workload `w`.
    #[allow(clippy::too_many_arguments)]
    fn command(
        &self,
        w: Workload,
        system: System,
        name: &str,
        input: &str,
        users: &str,
        output: &str,
        dir: &Path,
    ) -> anyhow::Result<Command> {
        Ok(match system {
            System::Raw | System::RawJson => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["raw-loop", "--bootstrap", &self.bootstrap, "--input", input, "--output", output]);
                c.args(["--group", name]);
                if system == System::RawJson {
                    c.arg("--json");
                }
                c
            }
            System::Sluice => {
                let port = free_port()?;
                let config = serde_json::json!({
                    "applicationId": name,
                    "kafka": {"bootstrapServers": self.bootstrap},
                    "sql": sql(w, input, users, output),
                    "replicas": 1,
                    "ordinal": 0,
                    "stateDir": dir.join("state").to_string_lossy(),
                    "exactlyOnce": self.exactly_once,
                    "commitInterval": "100ms",
                    "listen": format!("127.0.0.1:{port}"),
                });
                let path = dir.join("processor.yaml");
                std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
                let mut c = Command::new(&self.processor);
                c.args(["run", "--config"]).arg(&path).env("RUST_LOG", "warn");
                c
            }
            System::Kstreams => {
                let mut c = Command::new(&self.java);
                c.args(["-Xms1g", "-Xmx1g", "-jar"]).arg(&self.kstreams_jar);
                c.arg(format!("{w:?}").to_lowercase());
                c.arg(format!("bootstrap={}", self.bootstrap));
                c.arg(format!("application={name}"));
                c.arg(format!("input={input}"));
                c.arg(format!("users={users}"));
                c.arg(format!("output={output}"));
                c.arg(format!("guarantee={}", if self.exactly_once { "exactly_once_v2" } else { "at_least_once" }));
                c.arg("commit=100");
                c.arg("threads=2");
                c.arg(format!("state={}", dir.join("kstreams").to_string_lossy()));
                c.env("JAVA_TOOL_OPTIONS", "-Dorg.slf4j.simpleLogger.defaultLogLevel=error");
                c
            }
        })
    }

    fn clone_settings(&self) -> Bench {
        Bench {
            bootstrap: self.bootstrap.clone(),
            processor: self.processor.clone(),
            kstreams_jar: self.kstreams_jar.clone(),
            java: self.java.clone(),
            exactly_once: self.exactly_once,
            broker_pid: self.broker_pid,
            partitions: self.partitions,
        }
    }
}

/// Read the output with `read_committed` until it matches the truth; time and CPU from the end
/// of the warm-up (20% of the expected records; for P3, the first output) to the last output.
fn verify(
    bootstrap: &str,
    topic: &str,
    truth: &Truth,
    n: usize,
    pid: u32,
    broker: Option<u32>,
) -> anyhow::Result<Measured> {
    let consumer = output_consumer(bootstrap, topic, false)?;
    let (expected, warm_up) = match truth {
        Truth::Rows { count, .. } | Truth::Copies(count) => (*count, count / 5),
        Truth::Counts(c) => (c.len(), 0),
    };
    let mut outputs = 0usize;
    let (mut rows, mut duration_sum, mut misses) = (0usize, 0i64, 0usize);
    let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut correct = 0usize;
    let mut start: Option<(Instant, f64, Option<f64>, usize)> = None;
    let mut quiet_since = Instant::now();
    loop {
        let done = match truth {
            Truth::Rows { count, .. } | Truth::Copies(count) => rows >= *count,
            Truth::Counts(c) => correct == c.len(),
        };
        if done {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                outputs += 1;
                match truth {
                    Truth::Copies(_) => rows += 1,
                    Truth::Rows { .. } => {
                        rows += 1;
                        let v: Value = m.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
                        duration_sum += v["DURATION"].as_i64().unwrap_or(0);
                        if v.get("NAME").is_some_and(Value::is_null) {
                            misses += 1;
                        }
                    }
                    Truth::Counts(c) => {
                        let key = m.key().unwrap_or_default().to_vec();
                        let v: Value = m.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
                        let count = v["VIEWS"].as_i64().unwrap_or(-1);
                        let want = c.get(&key).copied();
                        let was = latest.insert(key, count);
                        let hit = |x: Option<i64>| x.is_some() && x == want;
                        match (hit(was), hit(Some(count))) {
                            (false, true) => correct += 1,
                            (true, false) => correct -= 1,
                            _ => {}
                        }
                    }
                }
                let progress = match truth {
                    Truth::Counts(_) => outputs,
                    _ => rows,
                };
                if start.is_none() && progress > warm_up {
                    start =
                        Some((Instant::now(), cpu_seconds(pid).unwrap_or(0.0), broker.and_then(cpu_seconds), progress));
                }
            }
            Some(Err(e)) => bail!("verifier: {e}"),
            None if quiet_since.elapsed() > Duration::from_secs(60) => {
                bail!("stalled: {rows} rows, {correct} of {expected} final counts, {outputs} outputs")
            }
            None => {}
        }
    }
    let end = Instant::now();
    let (t0, cpu0, broker0, at) = start.unwrap_or((end, 0.0, None, 0));
    let cpu1 = cpu_seconds(pid).unwrap_or(cpu0);
    if let Truth::Rows { count, duration_sum: want_sum, misses: want_misses } = truth {
        if rows != *count || duration_sum != *want_sum {
            bail!("wrong output: {rows} rows with duration sum {duration_sum}, want {count} and {want_sum}");
        }
        if let Some(m) = want_misses
            && *m != misses
        {
            bail!("wrong output: {misses} unjoined rows, want {m}");
        }
    }
    // Input records the measured window covers: the share of the outputs after the warm-up
    // (P1 keeps ~90% of its input); for P3 all of them.
    let input_records = match truth {
        Truth::Rows { .. } | Truth::Copies(_) => {
            (n as f64 * (expected - at.min(expected)) as f64 / expected.max(1) as f64) as usize
        }
        Truth::Counts(_) => n,
    };
    let seconds = end.duration_since(t0).as_secs_f64().max(1e-3);
    let million = input_records as f64 / 1e6;
    Ok(Measured {
        rate: input_records as f64 / seconds,
        cpu_per_million: (cpu1 - cpu0) / million,
        broker_cpu_per_million: broker.and_then(cpu_seconds).zip(broker0).map(|(b1, b0)| (b1 - b0) / million),
        outputs,
    })
}

/// `java`, or the one in `$JAVA_HOME`.
pub fn java() -> String {
    std::env::var("JAVA_HOME").map_or_else(|_| "java".into(), |h| format!("{h}/bin/java"))
}

/// The Kafka Streams program's jar, built with Maven when missing.
pub fn kstreams_jar(root: &Path) -> anyhow::Result<PathBuf> {
    let jar = root.join("target/sluice-bench-kstreams.jar");
    if !jar.exists() {
        let status = Command::new("mvn").args(["-q", "-B", "package"]).current_dir(root).status()?;
        if !status.success() {
            bail!("building {} with Maven failed", root.display());
        }
    }
    Ok(jar)
}

/// What P4 measured for one system: seconds from the process start until a record produced
/// after the start comes out (the state restored and processing again).
pub struct Restore {
    pub catch_up_rate: f64,
    pub clean_restart: f64,
    pub empty_state: f64,
    pub after_sigkill: f64,
}

impl Bench {
    fn p4_command(&self, system: System, name: &str, input: &str, output: &str, dir: &Path) -> anyhow::Result<Command> {
        Ok(match system {
            System::Sluice => {
                let config = serde_json::json!({
                    "applicationId": name,
                    "kafka": {"bootstrapServers": self.bootstrap},
                    "sql": format!(
                        "CREATE STREAM KV (k VARCHAR KEY, v VARCHAR) WITH (kafka_topic = '{input}', value_format = 'json');
                         CREATE TABLE LATEST WITH (kafka_topic = '{output}') AS SELECT k, LATEST_BY_OFFSET(v) AS v FROM KV GROUP BY k;"
                    ),
                    "replicas": 1,
                    "ordinal": 0,
                    "stateDir": dir.join("state").to_string_lossy(),
                    "exactlyOnce": self.exactly_once,
                    "commitInterval": "100ms",
                    "listen": format!("127.0.0.1:{}", free_port()?),
                });
                let path = dir.join("processor.yaml");
                std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
                let mut c = Command::new(&self.processor);
                c.args(["run", "--config"]).arg(&path).env("RUST_LOG", "warn");
                c
            }
            System::Kstreams => {
                let mut c = Command::new(&self.java);
                c.args(["-Xms1g", "-Xmx1g", "-jar"]).arg(&self.kstreams_jar).arg("p4");
                c.arg(format!("bootstrap={}", self.bootstrap));
                c.arg(format!("application={name}"));
                c.arg(format!("input={input}"));
                c.arg(format!("output={output}"));
                c.arg(format!("guarantee={}", if self.exactly_once { "exactly_once_v2" } else { "at_least_once" }));
                c.arg("commit=100").arg("threads=2");
                c.arg(format!("state={}", dir.join("kstreams").to_string_lossy()));
                c.env("JAVA_TOOL_OPTIONS", "-Dorg.slf4j.simpleLogger.defaultLogLevel=error");
                c
            }
            other => bail!("P4 compares sluice and kstreams, not {other:?}"),
        })
    }

    /// P4: `n` distinct keys (100-byte values) into a latest-value table; then the time until a
    /// new record is processed after a clean restart, with an empty state directory, and after
    /// SIGKILL.
    pub async fn p4(&self, system: System, n: usize) -> anyhow::Result<Restore> {
        let name = unique(&format!("p4-{system:?}").to_lowercase());
        let (input, output) = (format!("{name}-kv"), format!("{name}-out"));
        create_topics(self, &[&input, &output]).await?;
        let bootstrap = self.bootstrap.clone();
        let topic = input.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let p = producer(&bootstrap)?;
            for i in 0..n {
                let value = format!("{{\"v\":\"{i:010}{}\"}}", "x".repeat(78));
                send(&p, &topic, &format!("key_{i:07}"), &value, now_ms());
            }
            p.flush(Duration::from_secs(120))?;
            Ok(())
        })
        .await??;
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let spawn = |b: &Bench| -> anyhow::Result<Killed> {
            let mut c = b.p4_command(system, &name, &input, &output, &dir)?;
            c.stdout(Stdio::null()).stderr(Stdio::inherit());
            Ok(Killed(c.spawn()?))
        };
        // Catch up: every key's latest value out.
        let started = Instant::now();
        let child = spawn(self)?;
        let (b, out) = (self.bootstrap.clone(), output.clone());
        tokio::task::spawn_blocking(move || wait_for_keys(&b, &out, n)).await??;
        let catch_up_rate = n as f64 / started.elapsed().as_secs_f64();
        let mut marker = 0;
        let mut restart = |child: Killed, how: &str| -> anyhow::Result<(Killed, f64)> {
            match how {
                "kill" => drop(child),
                _ => terminate(child)?,
            }
            if how == "wipe" {
                for sub in ["state", "kstreams"] {
                    std::fs::remove_dir_all(dir.join(sub)).ok();
                }
            }
            marker += 1;
            let consumer = output_consumer(&self.bootstrap, &output, true)?;
            let p = producer(&self.bootstrap)?;
            let t0 = Instant::now();
            let child = spawn(self)?;
            let key = format!("marker_{marker}");
            send(&p, &input, &key, "{\"v\":\"marker\"}", now_ms());
            p.flush(Duration::from_secs(30))?;
            wait_for_key(&consumer, &key)?;
            Ok((child, t0.elapsed().as_secs_f64()))
        };
        let (child, clean_restart) = restart(child, "term")?;
        let (child, empty_state) = restart(child, "wipe")?;
        let (child, after_sigkill) = restart(child, "kill")?;
        terminate(child)?;
        std::fs::remove_dir_all(&dir).ok();
        Ok(Restore { catch_up_rate, clean_restart, empty_state, after_sigkill })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// SIGTERM, then wait for the exit.
fn terminate(mut child: Killed) -> anyhow::Result<()> {
    let pid = child.0.id();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("pid {pid} did not stop within a minute of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A `read_committed` reader of `topic`, from the beginning or from its current end.
fn output_consumer(bootstrap: &str, topic: &str, from_end: bool) -> anyhow::Result<BaseConsumer> {
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
        let from = if from_end {
            Offset::Offset(consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1)
        } else {
            Offset::Beginning
        };
        tpl.add_partition_offset(topic, p, from)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Wait until `n` distinct keys came out.
fn wait_for_keys(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let consumer = output_consumer(bootstrap, topic, false)?;
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut quiet = Instant::now();
    while seen.len() < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet = Instant::now();
                seen.insert(m.key().unwrap_or_default().to_vec());
            }
            Some(Err(e)) => bail!("verifier: {e}"),
            None if quiet.elapsed() > Duration::from_secs(120) => bail!("stalled at {} of {n} keys", seen.len()),
            None => {}
        }
    }
    Ok(())
}

/// Wait until `key` comes out.
fn wait_for_key(consumer: &BaseConsumer, key: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
            && m.key() == Some(key.as_bytes())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{key} did not come out within 10 minutes");
        }
    }
}

/// Latency percentiles of one rate-limited run, in milliseconds.
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
}

impl Bench {
    /// A rate-limited run: the system started on empty input (P2: with the users loaded), then
    /// pageviews produced at `rate` per second for `seconds`, stamped with the wall clock; the
    /// latency of each output is the verifier's clock when it reads it minus its timestamp (the
    /// input's, for P3 the latest input of the window). The first 20% of the samples are warm-up.
    pub async fn latency(&self, w: Workload, system: System, rate: usize, seconds: u64) -> anyhow::Result<Latency> {
        let name = unique(&format!("lat-{w:?}-{system:?}").to_lowercase());
        let (input, users, output) = (format!("{name}-views"), format!("{name}-users"), format!("{name}-out"));
        create_topics(self, &[&input, &users, &output]).await?;
        if w == Workload::P2 {
            let (b, u) = (self.bootstrap.clone(), users.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let p = producer(&b)?;
                let ts = now_ms() - 3_600_000;
                for i in 0..USERS {
                    send(&p, &u, &format!("user_{i:06}"), &user_json(i, 0), ts);
                }
                p.flush(Duration::from_secs(120))?;
                Ok(())
            })
            .await??;
        }
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut command = self.command(w, system, &name, &input, &users, &output, &dir)?;
        command.stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = Killed(command.spawn()?);
        let (b, i, o) = (self.bootstrap.clone(), input.clone(), output.clone());
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<Latency> {
            let consumer = output_consumer(&b, &o, false)?;
            let p = producer(&b)?;
            // Until the system answers: a record every 100 ms.
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut seq = 0usize;
            'ready: loop {
                let v = View { ts: now_ms(), ..view(seq, 0, 1) };
                seq += 1;
                send(&p, &i, &v.user, &view_json(&v), v.ts);
                p.flush(Duration::from_secs(10))?;
                let until = Instant::now() + Duration::from_millis(100);
                while Instant::now() < until {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(10)) {
                        break 'ready;
                    }
                }
                if Instant::now() > deadline {
                    bail!("no output within 3 minutes of the start");
                }
            }
            let started = now_ms();
            let mut samples = Vec::with_capacity(rate * seconds as usize);
            let t0 = Instant::now();
            let total = rate * seconds as usize;
            let mut sent = 0usize;
            while sent < total {
                // Pace in 5 ms steps.
                let due = ((t0.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
                while sent < due {
                    let v = View { ts: now_ms(), ..view(seq, 0, 1) };
                    seq += 1;
                    sent += 1;
                    send(&p, &i, &v.user, &view_json(&v), v.ts);
                }
                let until = Instant::now() + Duration::from_millis(5);
                while let Some(Ok(m)) = consumer.poll(until.saturating_duration_since(Instant::now())) {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    if ts >= started {
                        samples.push((now_ms() - ts) as f64);
                    }
                    if Instant::now() >= until {
                        break;
                    }
                }
            }
            // Drain what is still coming.
            let mut quiet = Instant::now();
            while quiet.elapsed() < Duration::from_secs(3) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    quiet = Instant::now();
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    if ts >= started {
                        samples.push((now_ms() - ts) as f64);
                    }
                }
            }
            let mut measured = samples.split_off(samples.len() / 5);
            if measured.is_empty() {
                bail!("no outputs measured");
            }
            measured.sort_by(f64::total_cmp);
            let at = |q: f64| measured[((measured.len() as f64 * q) as usize).min(measured.len() - 1)];
            Ok(Latency { p50: at(0.5), p99: at(0.99), p999: at(0.999), samples: measured.len() })
        })
        .await?;
        drop(child);
        std::fs::remove_dir_all(&dir).ok();
        result
    }
}
