//! Helpers for the integration tests: find the real services started by `tests/infra/*.sh`,
//! name things uniquely, and wait on conditions with deadlines.
//!
//! The services are found through the variables the scripts print (`SLUICE_TEST_BOOTSTRAP`,
//! `SLUICE_TEST_KUBECONFIG`). When one is missing a test stops with a message that says how to
//! start it — and under `CI=true` it fails instead, so CI can never pass by skipping.

pub mod cluster;

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The Kafka bootstrap address of the test broker, or `None` (after saying why) when it is not
/// running outside CI.
///
/// # Panics
/// Under `CI=true` when `SLUICE_TEST_BOOTSTRAP` is not set.
pub fn kafka_bootstrap() -> Option<String> {
    service("SLUICE_TEST_BOOTSTRAP", "eval \"$(tests/infra/kafka.sh start)\"")
}

/// The kubeconfig path of the test apiserver, or `None` (after saying why) when it is not
/// running outside CI.
///
/// # Panics
/// Under `CI=true` when `SLUICE_TEST_KUBECONFIG` is not set.
pub fn kubeconfig_path() -> Option<String> {
    service("SLUICE_TEST_KUBECONFIG", "eval \"$(tests/infra/kube.sh start)\"")
}

/// The directory holding the real `awslambdaric` (put it on `PYTHONPATH`), or `None` (after
/// saying why) when it was not installed outside CI.
///
/// # Panics
/// Under `CI=true` when `SLUICE_TEST_AWSLAMBDARIC` is not set.
pub fn awslambdaric() -> Option<String> {
    service("SLUICE_TEST_AWSLAMBDARIC", "eval \"$(tests/infra/lambda.sh fetch)\"")
}

/// The `helm` binary built by `tests/infra/helm.sh`, or `None` (after saying why) outside CI.
///
/// # Panics
/// Under `CI=true` when `SLUICE_TEST_HELM` is not set.
pub fn helm() -> Option<String> {
    service("SLUICE_TEST_HELM", "eval \"$(tests/infra/helm.sh fetch)\"")
}

pub(crate) fn service(var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{var} is not set under CI=true: the real service must be running (start it with: {how})");
            eprintln!("SKIPPED: {var} is not set; start the service with: {how}");
            None
        }
    }
}

/// A kube client for the test apiserver.
pub async fn kube_client(kubeconfig: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A name no other test (in this run or an earlier one against the same services) uses:
/// `<prefix>-<pid>-<millis>-<counter>`, lower-case and DNS-label safe.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() % 100_000_000).unwrap_or(0);
    format!("{prefix}-{}-{millis}-{n}", std::process::id())
}

/// Poll `check` until it returns `Some`, or fail after `deadline` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > deadline {
            anyhow::bail!(
                "timed out after {deadline:?} waiting for {what}{}",
                last_error.map(|e| format!(" (last error: {e:#})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The repository root (for reading `examples/` and `crds/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A free TCP port on 127.0.0.1 (for a child's listen address).
/// A binary of the workspace's build, beside the test binaries (`target/<profile>/NAME`), for
/// tests of another package than the binary's.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    exe.parent().and_then(std::path::Path::parent).expect("target/<profile>").join(name)
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port`; the status and the body, or `None` when the
/// server cannot be reached.
pub fn http(port: u16, method: &str, path: &str, body: Option<&serde_json::Value>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// A child process of a test (one of our binaries), killed when dropped so that a failing test
/// leaves nothing running.
pub struct Service(pub std::process::Child);

impl Service {
    /// Spawn `command` and wait until `GET ready_path` on `port` answers 200.
    ///
    /// # Panics
    /// When the process exits first or is not ready within two minutes.
    pub fn start(mut command: std::process::Command, port: u16, ready_path: &str) -> Service {
        let child = command.spawn().expect("the binary starts");
        let mut service = Service(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = service.0.try_wait().expect("waiting on the child") {
                panic!("{command:?} exited before it was ready: {status}");
            }
            if http(port, "GET", ready_path, None).is_some_and(|(s, _)| s == 200) {
                return service;
            }
            assert!(std::time::Instant::now() < deadline, "{command:?} was not ready within two minutes");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and the exit status once it stopped.
    ///
    /// # Panics
    /// When it has not stopped after a minute.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "the process did not stop on SIGTERM within a minute");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A record read back by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp (ms).
    pub timestamp: i64,
}

/// Read `topic` from the beginning with `read_committed` until `want` records arrived or
/// `deadline` passed, then keep reading 1.5 s more so that records beyond those expected show
/// up too. Waits for the topic to exist.
///
/// # Panics
/// When the broker cannot be reached or the topic never appears.
pub fn read_committed(bootstrap: &str, topic: &str, want: usize, deadline: Duration) -> Vec<Consumed> {
    use rdkafka::{
        ClientConfig, Message, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
        message::Headers,
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let end = std::time::Instant::now() + deadline;
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
        let n = md.topics().first().map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n as i32;
        }
        assert!(std::time::Instant::now() < end, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("a partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut settle_until: Option<std::time::Instant> = None;
    loop {
        let now = std::time::Instant::now();
        match settle_until {
            None if out.len() >= want || now >= end => settle_until = Some(now + Duration::from_millis(1500)),
            Some(t) if now >= t => break,
            _ => {}
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                    .unwrap_or_default(),
                timestamp: m.timestamp().to_millis().unwrap_or(0),
            });
        }
    }
    out
}

/// Create a namespace no other test uses; its name.
pub async fn create_namespace(client: &kube::Client) -> anyhow::Result<String> {
    let name = unique("ns");
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await?;
    Ok(name)
}

/// Apply the committed CRD (the file, not the types: what users install) with server-side apply
/// and wait until it is Established. Returns the warnings the apiserver sent back.
pub async fn install_crd(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("crds").join(sluice_crds::CRD_FILE))?;
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_norway::from_str(&text)?;
    let name = kube::ResourceExt::name_any(&crd);
    let params = kube::api::PatchParams::apply("sluice-tests").force();
    let request = kube::core::Request::new("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").patch(
        &name,
        &params,
        &kube::api::Patch::Apply(&crd),
    )?;
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if !status.is_success() {
        let body = response.into_body().collect_bytes().await?;
        anyhow::bail!("applying the CRD failed with HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client.clone());
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(crds, &name, kube::runtime::wait::conditions::is_crd_established()),
    )
    .await??;
    Ok(warnings)
}
