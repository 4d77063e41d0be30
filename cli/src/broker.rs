//! The Kafka of `sluice run` when it is given none: a real Apache Kafka broker (KRaft, one node
//! that is its own controller), started as a child process and stopped with the run.
//!
//! A real broker rather than librdkafka's mock cluster: the mock answers `read_committed`
//! fetches with every record, aborted ones included, and keeps no offsets committed in a
//! transaction, so a Pipeline would run with weaker guarantees than it states. This one runs it
//! exactly as specified, exactly-once included. It needs a Java runtime (17 or newer); its jars
//! come from Maven Central once (checked against the SHA-256 of `kafka-4.1.1.jars`) into
//! `~/.cache/sluice/kafka-4.1.1/libs`, the directory the test suite's broker uses. Its data
//! lives in the run's state directory, so a later run of the same Pipeline goes on where the last
//! one stopped.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use sha2::Digest;
use tokio::process::{Child, Command};

/// The broker's version.
pub const KAFKA_VERSION: &str = "4.1.1";

/// Paths under Maven Central and SHA-256 of the broker's jars.
const JARS: &str = include_str!("kafka-4.1.1.jars");

/// Where the jars come from; `SLUICE_MAVEN_REPOSITORY` names a mirror.
const MAVEN_CENTRAL: &str = "https://repo1.maven.org/maven2";

/// How long the broker may take to answer its first metadata request.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// A running broker, stopped (SIGTERM, then SIGKILL) by [`Broker::stop`] or when dropped.
pub struct Broker {
    child: Child,
    /// `host:port` of its client listener.
    pub bootstrap: String,
    /// Its log file.
    pub log: PathBuf,
    /// Its data directory.
    pub data: PathBuf,
    /// Where its pid is recorded while it runs.
    pid_file: PathBuf,
}

/// The cache root (`SLUICE_CACHE`, else `~/.cache/sluice`).
pub fn cache_root() -> PathBuf {
    match std::env::var_os("SLUICE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache/sluice"),
    }
}

/// The jars' directory, with every jar present and verified; downloads what is missing.
pub fn jars(say: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
    let libs = cache_root().join(format!("kafka-{KAFKA_VERSION}")).join("libs");
    let marker = libs.join(".verified-by-sluice");
    let manifest: Vec<(&str, &str)> = JARS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' '))
        .collect();
    let wanted = manifest.iter().map(|(p, h)| format!("{p} {h}\n")).collect::<String>();
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(libs);
    }
    std::fs::create_dir_all(&libs).with_context(|| format!("creating {}", libs.display()))?;
    let repository = std::env::var("SLUICE_MAVEN_REPOSITORY").unwrap_or_else(|_| MAVEN_CENTRAL.to_owned());
    let agent = http_agent();
    let mut fetched = 0usize;
    for (path, sha256) in &manifest {
        let name = path.rsplit('/').next().unwrap_or(path);
        let file = libs.join(name);
        if std::fs::read(&file).is_ok_and(|bytes| hex(&sha2::Sha256::digest(&bytes)) == *sha256) {
            continue;
        }
        if fetched == 0 {
            say(&format!(
                "fetching Apache Kafka {KAFKA_VERSION} ({} jars, about 43 MB, once) from {repository} into {}",
                manifest.len(),
                libs.display()
            ));
        }
        let url = format!("{}/{path}", repository.trim_end_matches('/'));
        let bytes = agent
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().with_config().limit(256 << 20).read_to_vec())
            .with_context(|| format!("downloading {url}"))?;
        let got = hex(&sha2::Sha256::digest(&bytes));
        anyhow::ensure!(got == *sha256, "{url}: SHA-256 {got}, expected {sha256}: refusing it");
        let tmp = libs.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &file)?;
        fetched += 1;
    }
    std::fs::write(&marker, wanted)?;
    Ok(libs)
}

/// An HTTP client that trusts the system's certificate store (a proxy's own CA included).
fn http_agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder().provider(TlsProvider::NativeTls).root_certs(RootCerts::PlatformVerifier).build(),
        )
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .new_agent()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `java` (from `JAVA_HOME`, else `PATH`), checked to be 17 or newer.
pub fn java() -> anyhow::Result<PathBuf> {
    let java = match std::env::var_os("JAVA_HOME") {
        Some(home) => PathBuf::from(home).join("bin/java"),
        None => PathBuf::from("java"),
    };
    let out = std::process::Command::new(&java).arg("-version").stdin(Stdio::null()).output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "the embedded Kafka needs a Java runtime (17 or newer) and found none: install one (Debian/Ubuntu: \
             sudo apt-get install default-jre-headless), or give --bootstrap-servers"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {} -version", java.display())),
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let major = java_major(&text).with_context(|| format!("{} -version said: {text}", java.display()))?;
    anyhow::ensure!(
        major >= 17,
        "the embedded Kafka needs Java 17 or newer; {} is Java {major} (set JAVA_HOME to a newer one)",
        java.display()
    );
    Ok(java)
}

/// The major version in `java -version`'s first line (`openjdk version "17.0.15" …`,
/// `java version "1.8.0_392"`).
fn java_major(text: &str) -> Option<u32> {
    let quoted = text.lines().next()?.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '-', '+', '_']);
    match parts.next()?.parse().ok()? {
        1 => parts.next()?.parse().ok(),
        n => Some(n),
    }
}

/// The broker's settings for one node on loopback; `data` is its log directory.
fn server_properties(port: u16, controller_port: u16, data: &Path) -> String {
    format!(
        "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs={}
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
log.segment.bytes=16777216
log.retention.hours=168
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
min.insync.replicas=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.share.enable=false
",
        data.display()
    )
}

const LOG4J: &str = "status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Broker {
    /// Start the broker with its state in `dir` (made on first use: ports, cluster id and
    /// storage are kept there, so a later start resumes the same cluster), and wait until it
    /// answers. `say` tells the user what takes time.
    pub async fn start(dir: &Path, say: &dyn Fn(&str)) -> anyhow::Result<Broker> {
        let java = java()?;
        let libs = jars(say)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join("data");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        // The ports are part of the cluster's identity (the controller's address is in its
        // quorum): chosen once, kept.
        let ports_file = dir.join("ports");
        let (port, controller_port) = match std::fs::read_to_string(&ports_file) {
            Ok(text) => {
                let mut p = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
                match (p.next(), p.next()) {
                    (Some(a), Some(b)) => (a, b),
                    _ => anyhow::bail!(
                        "{} is damaged: remove {} to start a new Kafka",
                        ports_file.display(),
                        dir.display()
                    ),
                }
            }
            Err(_) => {
                let ports = (free_port()?, free_port()?);
                std::fs::write(&ports_file, format!("{} {}\n", ports.0, ports.1))?;
                ports
            }
        };
        // A broker of this directory that outlived its `sluice run` (killed outright): stop it
        // first, by the pid it recorded, if that process still runs our broker.
        let pid_file = dir.join("broker.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*dir.join("server.properties").to_string_lossy()));
            if ours {
                say(&format!("stopping the Kafka an earlier run left behind (pid {pid})"));
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(30);
                while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(&pid_file);
        }
        for p in [port, controller_port] {
            anyhow::ensure!(
                port_free(p),
                "the embedded Kafka of {} listens on 127.0.0.1:{p}, which is in use: is another `sluice run` of this \
                 Pipeline running? (or remove {} to start a new Kafka, losing its data)",
                dir.display(),
                dir.display()
            );
        }
        let properties = dir.join("server.properties");
        std::fs::write(&properties, server_properties(port, controller_port, &data))?;
        let log4j = dir.join("log4j2.properties");
        std::fs::write(&log4j, LOG4J)?;
        let classpath = format!("{}/*", libs.display());
        let jvm = |heap: &str| {
            let mut c = Command::new(&java);
            c.arg(heap)
                .arg("-XX:+UseSerialGC")
                .arg("-XX:+ExitOnOutOfMemoryError")
                .arg("-Djava.awt.headless=true")
                .arg(format!("-Dkafka.logs.dir={}", logs.display()))
                .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
                .arg("-cp")
                .arg(&classpath)
                .current_dir(dir)
                .stdin(Stdio::null());
            c
        };
        if !data.join("meta.properties").exists() {
            let cluster_id = cluster_id();
            let out = jvm("-Xmx256m")
                .args(["kafka.tools.StorageTool", "format", "--standalone", "-t", &cluster_id, "-c"])
                .arg(&properties)
                .output()
                .await
                .context("formatting the embedded Kafka's storage")?;
            anyhow::ensure!(
                out.status.success(),
                "formatting the embedded Kafka's storage failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = std::fs::File::create(logs.join("stdout.log"))?;
        let child = jvm("-Xmx512m")
            .arg("-Xms128m")
            .arg("kafka.Kafka")
            .arg(&properties)
            .stdout(stdout.try_clone()?)
            .stderr(stdout)
            // Its own process group: the terminal's Ctrl-C reaches `sluice run`, which stops the
            // broker last, after the processes that use it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", java.display()))?;
        if let Some(pid) = child.id() {
            std::fs::write(&pid_file, format!("{pid}\n"))?;
        }
        let mut broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            log: logs.join("server.log"),
            data: data.clone(),
            pid_file,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        use rdkafka::{
            ClientConfig,
            consumer::{BaseConsumer, Consumer},
        };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the embedded Kafka exited ({status}) while starting; its log: {}", self.log.display());
            }
            let bootstrap = self.bootstrap.clone();
            let answered = tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("log_level", "0")
                    .create()
                    .map_err(|e| e.to_string())?;
                consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|md| !md.brokers().is_empty())
                    .map_err(|e| e.to_string())
            })
            .await?;
            if answered == Ok(true) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < START_DEADLINE,
                "the embedded Kafka did not answer within {START_DEADLINE:?}; its log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stop it: SIGTERM (a controlled shutdown that flushes its logs), SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                status?;
                let _ = std::fs::remove_file(&self.pid_file);
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("the embedded Kafka did not stop within {grace:?} and was killed")
            }
        }
    }
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
fn cluster_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut bits = 0u32;
    let mut n = 0;
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions() {
        assert_eq!(java_major("openjdk version \"17.0.15\" 2025-04-15\nOpenJDK Runtime"), Some(17));
        assert_eq!(java_major("openjdk version \"21\" 2023-09-19"), Some(21));
        assert_eq!(java_major("java version \"1.8.0_392\""), Some(8));
        assert_eq!(java_major("nonsense"), None);
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
        assert_ne!(id, cluster_id());
    }

    #[test]
    fn the_manifest_names_every_jar_once_with_a_sha256() {
        let lines: Vec<&str> = JARS.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 47);
        let mut names = std::collections::BTreeSet::new();
        for l in lines {
            let (path, sha) = l.split_once(' ').expect("path sha256");
            assert!(path.ends_with(".jar") && sha.len() == 64, "{l}");
            assert!(names.insert(path.rsplit('/').next().unwrap()), "{l}");
        }
        assert!(names.contains("kafka_2.13-4.1.1.jar"));
    }
}
