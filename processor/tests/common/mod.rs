//! Helpers shared by the processor's integration tests: HTTP without a client library, a child
//! process that is killed when dropped, a `read_committed` reader.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::Value;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.1 request; returns the status and the body.
pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
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

pub struct Processor(pub Child);

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn read_committed(
    bootstrap: &str,
    topic: &str,
    want: usize,
    deadline: Duration,
) -> Vec<(Option<String>, Value, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", sluice_tests::unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let end = Instant::now() + deadline;
    // The topic is created by the processor: wait for it.
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
        let n = md.topics().first().map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n as i32;
        }
        assert!(Instant::now() < end, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < end {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let value = m.payload().map_or(Value::Null, |v| serde_json::from_slice(v).unwrap_or(Value::Null));
            out.push((key, value, m.timestamp().to_millis().unwrap_or(0)));
        }
    }
    // Nothing beyond what is expected shows up either.
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            out.push((key, m.payload().map_or(Value::Null, |v| serde_json::from_slice(v).unwrap_or(Value::Null)), 0));
        }
    }
    out
}

impl Processor {
    /// Start `sluice-processor run` with this config file and wait until `/readyz` answers 200.
    pub fn start(config: &std::path::Path, port: u16) -> Processor {
        let child =
            Command::new(env!("CARGO_BIN_EXE_sluice-processor")).args(["run", "--config"]).arg(config).spawn().unwrap();
        let mut p = Processor(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = p.0.try_wait().unwrap() {
                panic!("the processor exited: {status}");
            }
            if http(port, "GET", "/readyz", None).is_some_and(|(s, _)| s == 200) {
                return p;
            }
            assert!(Instant::now() < deadline, "the processor was not ready within two minutes");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the processor did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
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
