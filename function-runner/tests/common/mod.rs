//! Helpers for the runner's integration tests: topics, producing inputs, the runner as a child
//! process, an HTTP function served from the test, and reading outputs and group lag back.

#![allow(dead_code)]

use std::{collections::BTreeMap, path::PathBuf, process::Command, sync::Arc, time::Duration};

use base64::Engine;
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{Value, json};
pub use sluice_tests::{Consumed, free_port, http, read_committed, unique};

/// Create topics with the given partition counts.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new: Vec<NewTopic<'_>> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// An input record.
#[derive(Debug, Clone)]
pub struct Input {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: Option<i32>,
}

impl Input {
    /// Key `k<seq % keys>`, value `{"seq": seq}`.
    pub fn numbered(seq: usize, keys: usize) -> Input {
        Input {
            key: Some(format!("k{}", seq % keys)),
            value: json!({"seq": seq}).to_string().into_bytes(),
            headers: Vec::new(),
            partition: None,
        }
    }
}

/// Produce records in order and wait for every acknowledgement.
pub async fn produce(bootstrap: &str, topic: &str, records: &[Input]) -> anyhow::Result<()> {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("enable.idempotence", "true").create()?;
    let mut pending = Vec::new();
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record = FutureRecord::to(topic).payload(&r.value).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_str());
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        pending.push(producer.send(record, Duration::from_secs(30)));
        if pending.len() >= 500 {
            for f in pending.drain(..) {
                f.await.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending {
        f.await.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Records behind the group's committed offsets, summed over the topic's partitions (a
/// partition with no commit counts from its start).
pub fn group_lag(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let (consumer, committed) = committed_offsets(bootstrap, group, topic)?;
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
        let position = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Ok(lag)
}

/// The group's committed offsets for every partition of the topic (`Offset::Invalid` where it
/// has none), with the consumer that read them.
fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<(BaseConsumer, TopicPartitionList)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((consumer, committed))
}

/// Whether the group has a committed offset for every partition of the topic.
pub fn committed_everywhere(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<bool> {
    let (_, committed) = committed_offsets(bootstrap, group, topic)?;
    Ok(committed.count() > 0 && committed.elements().iter().all(|e| matches!(e.offset(), Offset::Offset(_))))
}

/// `sluice-function-runner run` as a child process.
pub struct Runner {
    pub service: sluice_tests::Service,
    pub port: u16,
}

/// A runner config: `function` is the function's entry (name, source, runtime, ...).
pub fn runner_config(bootstrap: &str, pipeline: &str, function: Value) -> (Value, u16) {
    let port = free_port();
    let config = json!({
        "pipeline": pipeline,
        "kafka": {"bootstrapServers": bootstrap},
        "listen": format!("127.0.0.1:{port}"),
        "runtimeApiListen": format!("127.0.0.1:{}", free_port()),
        "function": function,
    });
    (config, port)
}

impl Runner {
    /// Write `config` to a file and start a runner with it; returns once `/readyz` is 200.
    pub fn start(config: &Value, port: u16) -> Runner {
        let dir = std::env::temp_dir().join(unique("runner"));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path: PathBuf = dir.join("runner.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(config).expect("json")).expect("writing the config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-function-runner"));
        command.args(["run", "--config"]).arg(&path);
        Runner { service: sluice_tests::Service::start(command, port, "/readyz"), port }
    }

    /// A metric's value summed over its label sets (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let Some((_, text)) = http(self.port, "GET", "/metrics", None) else { return 0.0 };
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// What the test function does with one event.
pub type Handler = Arc<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

/// Serve `handler` over HTTP on a free port (POST /); returns the port.
pub async fn serve_function(handler: Handler) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: axum::body::Bytes| {
            let handler = handler.clone();
            async move {
                let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, body) =
                    tokio::task::spawn_blocking(move || handler(&event)).await.unwrap_or((500, String::new()));
                (
                    axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// A record of an event, decoded.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The records of an event, decoded.
pub fn event_records(event: &Value) -> Vec<EventRecord> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (_, records) in event["records"].as_object().into_iter().flatten() {
        for r in records.as_array().into_iter().flatten() {
            let key =
                r["key"].as_str().and_then(|k| b64.decode(k).ok()).map(|k| String::from_utf8_lossy(&k).into_owned());
            let value = r["value"].as_str().and_then(|v| b64.decode(v).ok()).unwrap_or_default();
            let headers = r["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_object())
                .flat_map(|h| h.iter())
                .map(|(k, v)| {
                    let bytes = v.as_array().into_iter().flatten().filter_map(Value::as_i64).map(|b| b as u8).collect();
                    (k.clone(), bytes)
                })
                .collect();
            out.push(EventRecord {
                topic: r["topic"].as_str().unwrap_or_default().to_owned(),
                partition: r["partition"].as_i64().unwrap_or(-1),
                offset: r["offset"].as_i64().unwrap_or(-1),
                key,
                value,
                headers,
            });
        }
    }
    out
}

/// The echo function's response: for each input one output with the same key and the value
/// `{"in": <input value>, "partition": p, "offset": o}`.
pub fn echo(event: &Value) -> Value {
    let records: Vec<Value> = event_records(event)
        .into_iter()
        .map(|r| {
            let input: Value = serde_json::from_slice(&r.value).unwrap_or(Value::Null);
            json!({"key": r.key, "value": {"in": input, "partition": r.partition, "offset": r.offset}})
        })
        .collect();
    json!({"records": records})
}

/// Outputs of the echo function: (key, seq, source partition, source offset).
pub fn echoed(outputs: &[Consumed]) -> Vec<(String, i64, i64, i64)> {
    outputs
        .iter()
        .map(|m| {
            let v: Value = m.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or(Value::Null);
            (
                m.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                v["in"]["seq"].as_i64().unwrap_or(-1),
                v["partition"].as_i64().unwrap_or(-1),
                v["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Check that every seq in `0..n` came out exactly once (`exactly`) or at least once, and that
/// each key's seqs appear in increasing order (the order of its input records).
pub fn check_delivery(outputs: &[Consumed], n: usize, exactly: bool) {
    let echoed = echoed(outputs);
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, seq, _, _) in &echoed {
        *count.entry(*seq).or_default() += 1;
    }
    let missing: Vec<i64> = (0..n as i64).filter(|s| !count.contains_key(s)).collect();
    assert!(missing.is_empty(), "{} inputs have no output: {:?}", missing.len(), &missing[..missing.len().min(20)]);
    assert!(count.keys().all(|s| (0..n as i64).contains(s)), "outputs for unknown inputs");
    if exactly {
        let doubled: Vec<(&i64, &usize)> = count.iter().filter(|(_, c)| **c > 1).collect();
        assert!(doubled.is_empty(), "outputs seen more than once: {doubled:?}");
        assert_eq!(echoed.len(), n);
    }
    // Per key, in the order the outputs were written (one output partition per key), seqs rise
    // — allowing repeats only of the whole tail after a crash (at-least-once replays).
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (key, seq, _, _) in &echoed {
        by_key.entry(key).or_default().push(*seq);
    }
    for (key, seqs) in by_key {
        let mut highest = -1;
        for s in &seqs {
            if exactly {
                assert!(*s > highest, "key {key}: out of order {seqs:?}");
            }
            highest = highest.max(*s);
        }
        if !exactly {
            let first_seen: Vec<i64> = {
                let mut seen = std::collections::BTreeSet::new();
                seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
            };
            let mut sorted = first_seen.clone();
            sorted.sort();
            assert_eq!(first_seen, sorted, "key {key}: first deliveries out of order {seqs:?}");
        }
    }
}
