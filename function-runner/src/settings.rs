//! The runner's settings, resolved once from its config file: every default applied, every
//! conversion done and checked, so the IO shell downstream never re-validates.

use std::{collections::BTreeMap, time::Duration};

use sluice_crds::{
    config::RunnerConfig,
    pipeline::{Delivery, Ordering, StartingPosition},
};

use crate::{batch::Limits, retry::Policy};

/// How the function is invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The runner serves the Lambda Runtime API; runtimes poll it.
    Lambda {
        /// Runtimes polling at once per replica: the invocations in flight.
        concurrency: usize,
        /// The process to start and supervise (local runs), when the config has a command and
        /// no image.
        process: Option<Process>,
    },
    /// The runner POSTs the event to a URL.
    Http {
        /// The URL.
        url: String,
        /// Requests in flight at once.
        max_concurrency: usize,
    },
}

/// A local function process (`runtime.lambda.command` without an image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Extra environment (the function's `env` entries with a plain value).
    pub env: Vec<(String, String)>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, from the memory limit when there is one.
    pub memory_mb: u64,
}

/// Everything the runner needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Pipeline.
    pub pipeline: String,
    /// The function's name.
    pub function: String,
    /// The consumer group.
    pub group: String,
    /// The source topic.
    pub topic: String,
    /// Where a new group starts.
    pub starting_position: StartingPosition,
    /// librdkafka properties shared by the consumer and the producer (secrets resolved).
    pub kafka: BTreeMap<String, String>,
    /// The bootstrap servers as the event names them.
    pub bootstrap_servers: String,
    /// Batch limits.
    pub limits: Limits,
    /// Retry policy.
    pub policy: Policy,
    /// The dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Topic for returned records that name none.
    pub output_topic: Option<String>,
    /// The topics the function writes (output, dead letters), as they are created when missing.
    pub written_topics: Vec<sluice_crds::config::TopicSpec>,
    /// Outputs and offsets in one transaction.
    pub exactly_once: bool,
    /// `ordering: key`.
    pub key_ordering: bool,
    /// Longest one invocation may take.
    pub timeout: Duration,
    /// How the function is invoked.
    pub mode: Mode,
    /// Where the Runtime API is served.
    pub runtime_api_listen: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: String,
}

/// A config that cannot run, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SettingsError {
    /// Field path in the config file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(path: &str, message: impl Into<String>) -> SettingsError {
    SettingsError { path: path.into(), message: message.into() }
}

impl Settings {
    /// Resolve a parsed config; `env` reads environment variables (for the SASL credentials).
    pub fn resolve(config: &RunnerConfig, env: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let f = &config.function;
        f.check().map_err(|p| invalid(&format!("function.{}", p.path), p.message))?;
        let kafka = config.kafka.client_properties(env).map_err(|e| invalid("kafka", e.to_string()))?;
        let max_records = usize::try_from(f.batch.max_records)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid("function.batch.maxRecords", "must be at least 1"))?;
        let max_bytes = usize::try_from(f.batch.max_bytes.bytes())
            .map_err(|_| invalid("function.batch.maxBytes", "too large for this machine"))?;
        let limits = Limits { max_records, max_bytes, max_wait: f.batch.max_wait.get() };
        let max_retries = u32::try_from(f.on_failure.max_retries)
            .map_err(|_| invalid("function.onFailure.maxRetries", "must not be negative"))?;
        let (initial, max) = (f.on_failure.backoff.initial.get(), f.on_failure.backoff.max.get());
        let policy = Policy {
            max_retries,
            initial,
            max,
            bisect: f.on_failure.bisect_batch,
            dead_letter: f.on_failure.dead_letter_topic.is_some(),
        };
        let (mode, timeout) = match (&f.runtime.lambda, &f.runtime.http) {
            (Some(l), None) => {
                let concurrency = usize::try_from(l.concurrency)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("function.runtime.lambda.concurrency", "must be at least 1"))?;
                let process = if l.image.is_none() && !l.command.is_empty() {
                    let mut env = Vec::new();
                    for (i, var) in l.env.iter().enumerate() {
                        let Some(value) = &var.value else {
                            return Err(invalid(
                                &format!("function.runtime.lambda.env[{i}]"),
                                format!(
                                    "{}: only plain values can be used by a local process (valueFrom needs Kubernetes)",
                                    var.name
                                ),
                            ));
                        };
                        env.push((var.name.clone(), value.clone()));
                    }
                    let memory_mb = l.memory_mb();
                    Some(Process { argv: l.command.iter().chain(&l.args).cloned().collect(), env, memory_mb })
                } else {
                    None
                };
                (Mode::Lambda { concurrency, process }, l.timeout.get())
            }
            (None, Some(h)) => {
                let max_concurrency = usize::try_from(h.max_concurrency)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid("function.runtime.http.maxConcurrency", "must be at least 1"))?;
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(invalid("function.runtime.http.url", "must start with http:// or https://"));
                }
                (Mode::Http { url: h.url.clone(), max_concurrency }, h.timeout.get())
            }
            _ => return Err(invalid("function.runtime", "exactly one of runtime.lambda and runtime.http must be set")),
        };
        Ok(Settings {
            pipeline: config.pipeline.clone(),
            function: f.name.clone(),
            group: config.group(),
            topic: f.source.topic.clone(),
            starting_position: f.source.starting_position,
            bootstrap_servers: config.kafka.bootstrap_servers.clone(),
            kafka,
            limits,
            policy,
            dead_letter_topic: f.on_failure.dead_letter_topic.clone(),
            output_topic: f.output.as_ref().map(|o| o.topic.clone()),
            written_topics: f.written_topics(),
            exactly_once: f.delivery == Delivery::ExactlyOnce,
            key_ordering: f.ordering == Ordering::Key,
            timeout,
            mode,
            runtime_api_listen: config.runtime_api_listen.clone(),
            listen: config.listen.clone(),
        })
    }

    /// Invocations in flight at once per replica.
    pub fn concurrency(&self) -> usize {
        match &self.mode {
            Mode::Lambda { concurrency, .. } => *concurrency,
            Mode::Http { max_concurrency, .. } => *max_concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<Settings, SettingsError> {
        let config: RunnerConfig = sluice_crds::config::parse(yaml).unwrap();
        Settings::resolve(&config, |_| None)
    }

    #[test]
    fn defaults_are_applied_once() {
        let s = resolve(
            "pipeline: trades\nkafka: {bootstrapServers: 'k:9092'}\nfunction: {name: settle, source: {topic: t}, runtime: {http: {url: 'http://f:8080/'}}}\n",
        )
        .unwrap();
        assert_eq!(s.group, "default.trades.settle");
        assert_eq!(
            s.limits,
            Limits { max_records: 100, max_bytes: 6 * 1024 * 1024, max_wait: Duration::from_millis(500) }
        );
        assert_eq!(s.policy.max_retries, 3);
        assert!(s.policy.bisect && !s.policy.dead_letter && !s.exactly_once && !s.key_ordering);
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.concurrency(), 8);
        assert_eq!(s.kafka["bootstrap.servers"], "k:9092");
    }

    #[test]
    fn a_local_lambda_process_gets_its_command_env_and_memory() {
        let s = resolve(
            r#"
pipeline: p
kafka: {bootstrapServers: k}
function:
  name: f
  source: {topic: t}
  runtime:
    lambda:
      command: [python3, -m, awslambdaric]
      args: [handler.handle]
      env: [{name: A, value: "1"}]
      concurrency: 2
      resources: {limits: {memory: 256Mi}}
"#,
        )
        .unwrap();
        let Mode::Lambda { concurrency, process: Some(p) } = &s.mode else { panic!("{:?}", s.mode) };
        assert_eq!(*concurrency, 2);
        assert_eq!(p.argv, ["python3", "-m", "awslambdaric", "handler.handle"]);
        assert_eq!(p.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(p.memory_mb, 256);
    }

    #[test]
    fn an_image_means_the_function_runs_beside_the_runner() {
        let s = resolve(
            "pipeline: p\nkafka: {bootstrapServers: k}\nfunction: {name: f, source: {topic: t}, runtime: {lambda: {image: 'r/f:1', command: [x]}}}\n",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Lambda { concurrency: 1, process: None });
    }

    #[test]
    fn errors_name_the_field() {
        let e = resolve(
            "pipeline: p\nkafka: {bootstrapServers: k}\nfunction: {name: f, source: {topic: t}, runtime: {lambda: {command: [x], env: [{name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "function.runtime.lambda.env[0]");
        let e = resolve(
            "pipeline: p\nkafka: {bootstrapServers: k}\nfunction: {name: f, source: {topic: t}, runtime: {}}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "function.runtime");
        let e = resolve(
            "pipeline: p\nkafka: {bootstrapServers: k}\nfunction: {name: f, source: {topic: t}, runtime: {http: {url: 'http://x/'}}, onFailure: {backoff: {initial: 10s, max: 1s}}}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "function.onFailure.backoff.initial");
        // Durations with no sensible use (and that would overflow clock arithmetic) are refused.
        for (field, path) in [
            ("batch: {maxWait: 100000000000h}", "function.batch.maxWait"),
            ("runtime: {http: {url: 'http://x/', timeout: 2h}}", "function.runtime.http.timeout"),
            ("onFailure: {backoff: {max: 9999999h}}", "function.onFailure.backoff.max"),
            ("batch: {maxBytes: 7Mi}", "function.batch.maxBytes"),
        ] {
            let text = format!(
                "pipeline: p\nkafka: {{bootstrapServers: k}}\nfunction: {{name: f, source: {{topic: t}}, runtime: {{http: {{url: 'http://x/'}}}}, {field}}}\n"
            );
            // The runtime case brings its own runtime (keys may not repeat).
            let text = if field.starts_with("runtime") {
                text.replacen("runtime: {http: {url: 'http://x/'}}, ", "", 1)
            } else {
                text
            };
            let e = resolve(&text).unwrap_err();
            assert_eq!(e.path, path, "{field}");
        }
    }
}
