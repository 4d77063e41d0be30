//! Helpers shared by the processor's integration tests: the processor as a child process,
//! outputs read with `read_committed` as JSON, pull queries.

#![allow(dead_code)]

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
pub use sluice_tests::{free_port, http};

pub struct Processor(sluice_tests::Service);

/// Records of `topic` (key as text, value as JSON, timestamp), read with `read_committed`.
pub fn read_committed(
    bootstrap: &str,
    topic: &str,
    want: usize,
    deadline: Duration,
) -> Vec<(Option<String>, Value, i64)> {
    sluice_tests::read_committed(bootstrap, topic, want, deadline)
        .into_iter()
        .map(|m| {
            let key = m.key.map(|k| String::from_utf8_lossy(&k).into_owned());
            let value = m.value.map_or(Value::Null, |v| serde_json::from_slice(&v).unwrap_or(Value::Null));
            (key, value, m.timestamp)
        })
        .collect()
}

impl Processor {
    /// Start `sluice-processor run` with this config file and wait until `/readyz` answers 200.
    pub fn start(config: &Path, port: u16) -> Processor {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-processor"));
        command.args(["run", "--config"]).arg(config);
        Processor(sluice_tests::Service::start(command, port, "/readyz"))
    }

    /// SIGKILL, as a crash.
    pub fn kill(self) {
        self.0.kill();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.0.terminate()
    }
}

/// Run a pull query; the rows, when it answered 200.
pub fn pull(port: u16, sql: &str) -> Option<Vec<Value>> {
    let (status, body) = http(port, "POST", "/query", Some(&serde_json::json!({"ksql": sql})))?;
    if status != 200 {
        return None;
    }
    let parsed: Value = serde_json::from_str(&body).ok()?;
    Some(parsed.as_array()?.iter().filter_map(|r| r.get("row").map(|x| x["columns"].clone())).collect())
}

/// `sluice_processor_records_in_total` of a replica (0 when it does not answer).
pub fn records_in(port: u16) -> u64 {
    let Some((_, text)) = http(port, "GET", "/metrics", None) else { return 0 };
    text.lines()
        .find(|l| l.starts_with("sluice_processor_records_in_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
