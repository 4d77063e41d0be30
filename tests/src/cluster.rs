//! The real single-node cluster of `tests/infra/cluster.sh`, as the end-to-end tests use it: the
//! same commands a user types (`helm`, `kubectl`), the images `images/build.sh` made, Kafka on
//! the node's address.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// What the tests need of the cluster tier, from the variables `tests/run.sh` exports.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: String,
    /// The pinned kubectl.
    pub kubectl: String,
    /// The pinned helm.
    pub helm: String,
    /// Kafka as pods reach it (the node's address).
    pub bootstrap: String,
    /// The Sluice image (`images/build.sh`'s `sluice` line), loaded into the node.
    pub image: String,
    /// The example's settle function image, loaded into the node.
    pub settle_image: String,
}

impl Cluster {
    /// The cluster tier's settings, or `None` (after saying why) outside CI when it is not
    /// running.
    ///
    /// # Panics
    /// Under `CI=true` when one is missing.
    pub fn from_env() -> Option<Cluster> {
        let how = "tests/run.sh (it builds the images, starts tests/infra/cluster.sh and Kafka, and loads the images)";
        Some(Cluster {
            kubeconfig: crate::service("SLUICE_TEST_CLUSTER_KUBECONFIG", how)?,
            kubectl: crate::service("SLUICE_TEST_CLUSTER_KUBECTL", how)?,
            helm: crate::service("SLUICE_TEST_HELM", how)?,
            bootstrap: crate::service("SLUICE_TEST_CLUSTER_BOOTSTRAP", how)?,
            image: crate::service("SLUICE_TEST_IMAGE", how)?,
            settle_image: crate::service("SLUICE_TEST_SETTLE_IMAGE", how)?,
        })
    }

    /// A kube client for the cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        crate::kube_client(&self.kubeconfig).await
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("KUBECONFIG", &self.kubeconfig).stdin(Stdio::null());
        c
    }

    /// `kubectl ARGS...`: its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(&self.kubectl).args(args), "kubectl", args)
    }

    /// `kubectl ARGS...` with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = self
            .command(&self.kubectl)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            anyhow::bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `helm ARGS...`.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(&self.helm).args(args), "helm", args)
    }

    /// The image's repository and tag, as the chart's values take them.
    pub fn image_parts(&self) -> (&str, &str) {
        self.image.rsplit_once(':').unwrap_or((&self.image, "latest"))
    }

    /// Install the chart once per test binary, as the README does, with the locally loaded image.
    /// Returns the operator's namespace.
    pub fn install_operator(&self) -> anyhow::Result<&'static str> {
        const NAMESPACE: &str = "sluice-system";
        static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
        if !*installed {
            let (repository, tag) = self.image_parts();
            let chart = crate::repo_root().join("charts/sluice");
            self.helm(&[
                "upgrade",
                "--install",
                "sluice",
                &chart.to_string_lossy(),
                "--namespace",
                NAMESPACE,
                "--create-namespace",
                "--set",
                &format!("image.repository={repository}"),
                "--set",
                &format!("image.tag={tag}"),
                "--set",
                "image.pullPolicy=Never",
                "--wait",
                "--timeout",
                "180s",
            ])?;
            *installed = true;
        }
        Ok(NAMESPACE)
    }

    /// A namespace of the caller's own, ready for pods (its `default` ServiceAccount exists).
    pub fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = crate::unique(prefix);
        self.kubectl(&["create", "namespace", &name])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.kubectl(&["-n", &name, "get", "serviceaccount", "default"]).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "namespace {name}: no default ServiceAccount after 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(name)
    }

    /// `kubectl -n NS get WHAT... -o jsonpath=PATH`, trimmed; `what` is split on spaces
    /// (`"pods -l app=x"`).
    pub fn jsonpath(&self, ns: &str, what: &str, path: &str) -> anyhow::Result<String> {
        let output = format!("jsonpath={path}");
        let mut args = vec!["-n", ns, "get"];
        args.extend(what.split_whitespace());
        args.extend(["-o", output.as_str()]);
        Ok(self.kubectl(&args)?.trim().to_owned())
    }

    /// `kubectl port-forward` to `target` (e.g. `svc/trades-processor`) port `remote`, waiting
    /// until the local port answers.
    pub fn port_forward(&self, ns: &str, target: &str, remote: u16) -> anyhow::Result<PortForward> {
        let local = crate::free_port();
        let child = self
            .command(&self.kubectl)
            .args(["-n", ns, "port-forward", target, &format!("{local}:{remote}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut forward = PortForward { child: crate::Service(child), port: local };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", local)).is_err() {
            // kubectl exits at once when the target has no running pod.
            anyhow::ensure!(forward.alive(), "port-forward to {ns}/{target} exited (no ready pod behind it?)");
            anyhow::ensure!(Instant::now() < deadline, "port-forward to {ns}/{target} never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(forward)
    }
}

/// A running `kubectl port-forward`, stopped when dropped.
pub struct PortForward {
    child: crate::Service,
    /// The local port.
    pub port: u16,
}

impl PortForward {
    /// Whether it still runs (a forwarded pod that goes away ends it).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

fn run(command: &mut Command, name: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        anyhow::bail!("{name} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One end-to-end scenario at a time: a test binary's tests share a two-core node.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Record a measurement: printed, and appended to `$SLUICE_TEST_MEASUREMENTS` when set (the
/// test command prints that file at the end).
pub fn measured(line: &str) {
    eprintln!("MEASURED {line}");
    if let Ok(path) = std::env::var("SLUICE_TEST_MEASUREMENTS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
