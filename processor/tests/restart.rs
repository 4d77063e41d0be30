//! Crashes and restores against the real broker: a replica is SIGKILLed mid-stream several times
//! and restarted; under exactly-once a `read_committed` reader sees every count exactly once
//! (1, 2, 3, … per key, no gaps, no repeats) and the tables equal the ground truth. Then the
//! state directory is deleted and the state comes back from the changelog.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Processor, free_port, pull, read_committed, records_in};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::{Value, json};

const SYMBOLS: usize = 7;

fn wait_for_totals(port: u16, truth: &BTreeMap<String, i64>) -> Vec<Value> {
    let want: Vec<Value> = truth.iter().map(|(s, n)| json!([s, n])).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut rows = pull(port, "SELECT * FROM TOTALS;").unwrap_or_default();
        rows.sort_by_key(|r| r[0].as_str().unwrap_or("").to_owned());
        if rows == want {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "totals never reached the truth: {rows:?} != {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produce `n` settlements over the symbols, counting them into `truth`.
async fn produce(
    producer: &FutureProducer,
    input: &str,
    truth: &mut BTreeMap<String, i64>,
    sent: &mut usize,
    n: usize,
) {
    for _ in 0..n {
        let symbol = format!("S{}", *sent % SYMBOLS);
        *truth.entry(symbol.clone()).or_default() += 1;
        let value = json!({"symbol": symbol, "disposition": "Completed"}).to_string();
        let key = format!("U{}", *sent % 11);
        producer.send(FutureRecord::to(input).key(&key).payload(&value), Duration::from_secs(10)).await.unwrap();
        *sent += 1;
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_lose_and_duplicate_nothing_and_state_comes_back_from_the_changelog() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = sluice_tests::unique("restart");
    let (input, output) = (format!("{run}-settlements"), format!("{run}-totals"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    for r in admin.create_topics(&[NewTopic::new(&input, 3, TopicReplication::Fixed(1))], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    // Keys partitioned as Java clients (and Kafka Streams) do: murmur2; joins rely on it.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("partitioner", "murmur2_random").create()?;
    let mut truth: BTreeMap<String, i64> = BTreeMap::new();
    let mut sent = 0usize;
    let port = free_port();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("state");
    let config = json!({
        "applicationId": format!("test.{run}"),
        "kafka": {"bootstrapServers": bootstrap},
        "sql": format!(
            "CREATE STREAM TRADE_SETTLEMENT (userid VARCHAR KEY, symbol VARCHAR, disposition VARCHAR)
               WITH (kafka_topic = '{input}', value_format = 'json');
             CREATE TABLE TOTALS WITH (kafka_topic = '{output}') AS
               SELECT symbol, COUNT(*) AS N FROM TRADE_SETTLEMENT GROUP BY symbol;"),
        "replicas": 1,
        "ordinal": 0,
        "stateDir": state.to_string_lossy(),
        "exactlyOnce": true,
        "commitInterval": "100ms",
        "listen": format!("127.0.0.1:{port}"),
    });
    let config_path = dir.join("processor.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;

    produce(&producer, &input, &mut truth, &mut sent, 300).await;
    let p = Processor::start(&config_path, port);
    wait_for_totals(port, &truth);

    // Crash while records are arriving, three times.
    let mut p = Some(p);
    for _ in 0..3 {
        let before = records_in(port);
        let batch = tokio::spawn({
            let (producer, input) = (producer.clone(), input.clone());
            let mut truth = truth.clone();
            let mut sent_copy = sent;
            async move {
                produce(&producer, &input, &mut truth, &mut sent_copy, 400).await;
                (truth, sent_copy)
            }
        });
        // Kill once the replica has read part of the batch.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while records_in(port) < before + 50 {
            assert!(std::time::Instant::now() < deadline, "the replica never read the batch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p.take().unwrap().kill();
        (truth, sent) = batch.await?;
        p = Some(Processor::start(&config_path, port));
    }
    wait_for_totals(port, &truth);

    // Every count exactly once, per key, in the committed output.
    let total: i64 = truth.values().sum();
    let records = tokio::task::spawn_blocking({
        let (b, t) = (bootstrap.clone(), output.clone());
        move || read_committed(&b, &t, total as usize, Duration::from_secs(60))
    })
    .await?;
    let mut counts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, value, _) in &records {
        counts.entry(key.clone().unwrap_or_default()).or_default().push(value["N"].as_i64().unwrap_or(-1));
    }
    for (symbol, n) in &truth {
        let got = counts.get(symbol).cloned().unwrap_or_default();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=*n).collect::<Vec<_>>(), "{symbol}: the committed counts are not 1..={n}");
    }

    // A clean stop, the state directory deleted: the state is restored from the changelog.
    let status = p.take().unwrap().terminate();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&state)?;
    let p = Processor::start(&config_path, port);
    wait_for_totals(port, &truth);
    produce(&producer, &input, &mut truth, &mut sent, 50).await;
    wait_for_totals(port, &truth);
    assert!(p.terminate().success());

    // After a clean stop the state is intact: nothing is restored, the totals are right.
    let p = Processor::start(&config_path, port);
    wait_for_totals(port, &truth);
    let (_, metrics) = common::http(port, "GET", "/metrics", None).unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_processor_restored_total") && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(p.terminate().success());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
