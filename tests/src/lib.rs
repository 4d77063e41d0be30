//! Helpers for the integration tests: find the real services started by `tests/infra/*.sh`,
//! name things uniquely, and wait on conditions with deadlines.
//!
//! The services are found through the variables the scripts print (`SLUICE_TEST_BOOTSTRAP`,
//! `SLUICE_TEST_KUBECONFIG`). When one is missing a test stops with a message that says how to
//! start it — and under `CI=true` it fails instead, so CI can never pass by skipping.

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

fn service(var: &str, how: &str) -> Option<String> {
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
