//! A chained Pipeline — a join, a filter on its output, and a grouped table over that (through a
//! repartition topic) — started on inputs of four partitions with none of its internal topics
//! there yet, then SIGKILLed mid-stream and restarted, three times, under exactly-once. Every
//! start must come up (the first one used to create the repartition topic with one partition,
//! and every later one refused it), the pull query must equal a ground truth, and a
//! `read_committed` reader must see every filtered trade once and every count once.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::{Processor, free_port, pull, read_committed, records_in};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::{Value, json};

const PARTITIONS: i32 = 4;
const USERS: usize = 10;

fn region(user: usize) -> String {
    format!("R{}", user % 3)
}

/// What the chain must hold: per region, the count and the sum of the quantities of the trades
/// above 10; and the ids of those trades.
#[derive(Clone, Default)]
struct Truth {
    per_region: BTreeMap<String, (i64, i64)>,
    big: BTreeSet<i64>,
    sent: i64,
}

async fn produce(producer: &FutureProducer, topic: &str, truth: &mut Truth, n: i64) {
    for _ in 0..n {
        let id = truth.sent;
        let user = (id as usize * 7) % USERS;
        let qty = id % 25;
        if qty > 10 {
            let e = truth.per_region.entry(region(user)).or_default();
            e.0 += 1;
            e.1 += qty;
            truth.big.insert(id);
        }
        let value = json!({"id": id, "symbol": format!("S{}", id % 5), "qty": qty}).to_string();
        let key = format!("U{user}");
        let record = FutureRecord::to(topic).key(&key).payload(&value).timestamp(10_000 + id);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        truth.sent += 1;
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn wait_for_truth(port: u16, truth: &Truth) {
    let want: Vec<Value> = truth.per_region.iter().map(|(r, (n, q))| json!([r, n, q])).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut rows = pull(port, "SELECT region, n, q FROM PER_REGION;").unwrap_or_default();
        rows.sort_by_key(|r| r[0].as_str().unwrap_or("").to_owned());
        if rows == want {
            return;
        }
        assert!(Instant::now() < deadline, "the pull query never reached the truth: {rows:?} != {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chained_pipeline_restarts_after_sigkill_with_every_level_exactly_once() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = sluice_tests::unique("chain");
    let [users, trades, enriched, big, per_region] =
        ["users", "trades", "enriched", "big", "per-region"].map(|t| format!("{run}-{t}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    let topics: Vec<NewTopic<'_>> =
        [&users, &trades].iter().map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    // Keys partitioned as Java clients do (murmur2): the join relies on it.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("partitioner", "murmur2_random").create()?;
    for u in 0..USERS {
        let value = json!({"region": region(u)}).to_string();
        let key = format!("U{u}");
        producer
            .send(FutureRecord::to(&users).key(&key).payload(&value).timestamp(1_000), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    let mut truth = Truth::default();
    produce(&producer, &trades, &mut truth, 300).await;

    let port = free_port();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let config = json!({
        "applicationId": format!("test.{run}"),
        "kafka": {"bootstrapServers": bootstrap},
        "sql": format!(
            "CREATE TABLE USERS (userid VARCHAR PRIMARY KEY, region VARCHAR)
               WITH (kafka_topic = '{users}', value_format = 'json');
             CREATE STREAM TRADES (userid VARCHAR KEY, id BIGINT, symbol VARCHAR, qty BIGINT)
               WITH (kafka_topic = '{trades}', value_format = 'json');
             CREATE STREAM ENRICHED WITH (kafka_topic = '{enriched}') AS
               SELECT t.userid AS userid, t.id AS id, t.symbol AS symbol, t.qty AS qty, u.region AS region
               FROM TRADES t JOIN USERS u ON t.userid = u.userid;
             CREATE STREAM BIG WITH (kafka_topic = '{big}') AS SELECT * FROM ENRICHED WHERE qty > 10;
             CREATE TABLE PER_REGION WITH (kafka_topic = '{per_region}') AS
               SELECT region, COUNT(*) AS n, SUM(qty) AS q FROM BIG GROUP BY region;"),
        "replicas": 1,
        "ordinal": 0,
        "stateDir": dir.join("state").to_string_lossy(),
        "exactlyOnce": true,
        "commitInterval": "100ms",
        "listen": format!("127.0.0.1:{port}"),
    });
    let config_path = dir.join("processor.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;

    let mut p = Some(Processor::start(&config_path, port));
    wait_for_truth(port, &truth);
    // Every internal topic took the inputs' partition count.
    let partitions: BTreeMap<String, usize> = tokio::task::spawn_blocking({
        let (b, run) = (bootstrap.clone(), run.clone());
        move || {
            use rdkafka::consumer::Consumer;
            let c: rdkafka::consumer::BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
            let metadata = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
            metadata
                .topics()
                .iter()
                .filter(|t| t.name().contains(&run))
                .map(|t| (t.name().to_owned(), t.partitions().len()))
                .collect()
        }
    })
    .await?;
    let repartition: Vec<_> = partitions.iter().filter(|(t, _)| t.ends_with("-repartition")).collect();
    assert_eq!(repartition.len(), 1, "{partitions:?}");
    for (topic, n) in &partitions {
        if !topic.ends_with("-processing-log") {
            assert_eq!(*n, PARTITIONS as usize, "{topic}: {partitions:?}");
        }
    }

    // SIGKILL while trades arrive, three times; each restart must come up and catch up.
    for _ in 0..3 {
        let before = records_in(port);
        let batch = tokio::spawn({
            let (producer, trades, mut truth) = (producer.clone(), trades.clone(), truth.clone());
            async move {
                produce(&producer, &trades, &mut truth, 400).await;
                truth
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while records_in(port) < before + 50 {
            assert!(Instant::now() < deadline, "the replica never read the batch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p.take().expect("running").kill();
        truth = batch.await?;
        p = Some(Processor::start(&config_path, port));
    }
    wait_for_truth(port, &truth);

    // The filtered stream: every qualifying trade exactly once.
    let big_records = tokio::task::spawn_blocking({
        let (b, t, n) = (bootstrap.clone(), big.clone(), truth.big.len());
        move || read_committed(&b, &t, n, Duration::from_secs(60))
    })
    .await?;
    let ids: Vec<i64> = big_records.iter().map(|(_, v, _)| v["ID"].as_i64().unwrap_or(-1)).collect();
    assert_eq!(ids.len(), truth.big.len(), "committed BIG records");
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), truth.big, "BIG: lost or doubled trades");

    // The grouped table: per region the counts 1..=n, each once.
    let total: i64 = truth.per_region.values().map(|(n, _)| n).sum();
    let counts = tokio::task::spawn_blocking({
        let (b, t) = (bootstrap.clone(), per_region.clone());
        move || read_committed(&b, &t, total as usize, Duration::from_secs(60))
    })
    .await?;
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, value, _) in &counts {
        seen.entry(key.clone().unwrap_or_default()).or_default().push(value["N"].as_i64().unwrap_or(-1));
    }
    for (region, (n, _)) in &truth.per_region {
        let mut got = seen.get(region).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, (1..=*n).collect::<Vec<_>>(), "{region}: the committed counts are not 1..={n}");
    }
    assert!(p.take().expect("running").terminate().success());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
