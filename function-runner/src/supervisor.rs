//! Local function processes (`runtime.lambda.command` without an image, as `sluice run` uses):
//! started with the Lambda environment, restarted with backoff when they die, replaced when an
//! invocation timed out (the runtime is stuck in the handler, as Lambda resets such a sandbox),
//! and killed when the runner stops.

use std::{process::Stdio, time::Duration};

use tokio::{process::Command, sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{runtime_api::RuntimeApi, settings::Process};

/// The address a local process reaches a listen address at (`0.0.0.0:9001` → `127.0.0.1:9001`).
pub fn reachable(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "", port)) => format!("127.0.0.1:{port}"),
        _ => listen.to_owned(),
    }
}

/// Keep `copies` processes of `process` running until `stop`; every change of `restart` (an
/// invocation timed out: a runtime is stuck) replaces them all at once, interrupting the
/// invocations they held so that those are retried (without counting against their records)
/// rather than time out in turn. When the only process
/// exits, its invocation fails at once too; with several, the one that was lost runs into its
/// timeout (nothing tells which runtime held it).
pub async fn supervise(
    process: Process,
    env: Vec<(String, String)>,
    copies: usize,
    api: std::sync::Arc<RuntimeApi>,
    mut restart: watch::Receiver<u64>,
    stop: CancellationToken,
    exits: prometheus_client::metrics::counter::Counter,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let generation = CancellationToken::new();
        for copy in 0..copies {
            let (process, env, stop, generation) = (process.clone(), env.clone(), stop.clone(), generation.clone());
            let api = (copies == 1).then(|| api.clone());
            let exits = exits.clone();
            tasks.spawn(async move { keep_running(process, env, copy, api, stop, generation, exits).await });
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            changed = restart.changed() => {
                if changed.is_ok() {
                    tracing::warn!("an invocation timed out: restarting the function's processes");
                }
            }
        }
        generation.cancel();
        while tasks.join_next().await.is_some() {}
        api.interrupt_in_flight("the function's processes were restarted after another invocation timed out");
        if stop.is_cancelled() {
            return;
        }
    }
}

async fn keep_running(
    process: Process,
    env: Vec<(String, String)>,
    copy: usize,
    sole: Option<std::sync::Arc<RuntimeApi>>,
    stop: CancellationToken,
    generation: CancellationToken,
    exits: prometheus_client::metrics::counter::Counter,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let mut command = Command::new(&process.argv[0]);
        command
            .args(&process.argv[1..])
            .envs(env.iter().cloned())
            .envs(process.env.iter().cloned())
            // The runner's Kafka credentials are its own, not the function's.
            .env_remove(sluice_crds::config::SASL_USERNAME_ENV)
            .env_remove(sluice_crds::config::SASL_PASSWORD_ENV)
            .stdin(Stdio::null())
            // Its errors pass through (to the runner's own stderr), and the last lines are kept
            // to say why it died.
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(command = %process.argv[0], error = %e, "cannot start the function process");
                if wait_or_stop(backoff, &stop, &generation).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tracing::info!(copy, pid = child.id().unwrap_or(0), command = %process.argv.join(" "), "function process started");
        let tail = child.stderr.take().map(|e| tokio::spawn(pass_through(e)));
        tokio::select! {
            status = child.wait() => {
                exits.inc();
                let last = match tail {
                    Some(t) => t.await.unwrap_or_default(),
                    None => Vec::new(),
                };
                let last_output = last.join("\n");
                match status {
                    Ok(s) => tracing::warn!(copy, status = %s, last_output, "the function process exited; restarting it"),
                    Err(e) => tracing::warn!(copy, error = %e, last_output, "lost the function process; restarting it"),
                }
                if let Some(api) = &sole {
                    api.fail_in_flight("the function process exited");
                }
            }
            _ = stop.cancelled() => { let _ = child.kill().await; return; }
            _ = generation.cancelled() => { let _ = child.kill().await; return; }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        if wait_or_stop(backoff, &stop, &generation).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// How many of a function process's last stderr lines are kept to say why it died.
const LAST_LINES: usize = 20;

/// Copy a function process's stderr to ours line by line until it closes; returns its last
/// [`LAST_LINES`] lines.
async fn pass_through(stderr: tokio::process::ChildStderr) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut last = std::collections::VecDeque::with_capacity(LAST_LINES);
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{line}");
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(line);
    }
    last.into()
}

/// Sleep `wait`; `true` when told to stop meanwhile.
async fn wait_or_stop(wait: Duration, stop: &CancellationToken, generation: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.cancelled() => true,
        _ = generation.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:9001"), "127.0.0.1:9001");
        assert_eq!(reachable("127.0.0.1:9001"), "127.0.0.1:9001");
    }
}
