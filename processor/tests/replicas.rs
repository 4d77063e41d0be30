//! Two replicas (ordinals 0 and 1) split the partitions. The queries re-key their input (a
//! GROUP BY of a value column, a join on a value column), so records cross from one replica to
//! the other through repartition topics; the totals and the joined records are right, a pull
//! query sent to either returns the right row (forwarded to the owner of the key's partition),
//! and a scan sent to either returns every row.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Processor, free_port, pull, read_committed};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_split_the_partitions_and_answer_for_each_other() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = sluice_tests::unique("replicas");
    let (input, users) = (format!("{run}-payments"), format!("{run}-users"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    let topics =
        [NewTopic::new(&input, 4, TopicReplication::Fixed(1)), NewTopic::new(&users, 4, TopicReplication::Fixed(1))];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    // Users keyed by id; payments keyed by payment id, so neither the per-user totals nor the
    // join with users can be computed where a payment lands. Partitioned as Java clients do
    // (murmur2), which co-partitioning assumes; librdkafka's default is CRC32.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("partitioner", "murmur2_random").create()?;
    for u in 0..20 {
        let value = json!({"region": format!("region-{}", u % 3)}).to_string();
        let key = format!("user-{u}");
        producer
            .send(FutureRecord::to(&users).key(&key).payload(&value).timestamp(1), Duration::from_secs(10))
            .await
            .unwrap();
    }
    let mut truth: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for i in 0..200i64 {
        let user = format!("user-{}", i % 20);
        let entry = truth.entry(user.clone()).or_default();
        entry.0 += 1;
        entry.1 += i;
        let value = json!({"userid": user, "amount": i}).to_string();
        let key = format!("payment-{i}");
        let record = FutureRecord::to(&input).key(&key).payload(&value).timestamp(1000 + i);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    producer.flush(Duration::from_secs(10))?;

    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let ports = [free_port(), free_port()];
    let peers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let sql = format!(
        "CREATE STREAM PAYMENTS (id VARCHAR KEY, userid VARCHAR, amount BIGINT) WITH (kafka_topic = '{input}', value_format = 'json');
         CREATE TABLE USERS (userid VARCHAR PRIMARY KEY, region VARCHAR) WITH (kafka_topic = '{users}', value_format = 'json');
         CREATE TABLE SPEND WITH (kafka_topic = '{run}-spend') AS
           SELECT userid, COUNT(*) AS N, SUM(amount) AS TOTAL FROM PAYMENTS GROUP BY userid;
         CREATE STREAM PAYMENT_REGIONS WITH (kafka_topic = '{run}-regions') AS
           SELECT p.userid AS userid, p.id AS id, u.region AS region FROM PAYMENTS p LEFT JOIN USERS u ON p.userid = u.userid;"
    );
    let mut replicas = Vec::new();
    for ordinal in 0..2 {
        let config = json!({
            "applicationId": format!("test.{run}"),
            "kafka": {"bootstrapServers": bootstrap},
            "sql": sql,
            "replicas": 2,
            "ordinal": ordinal,
            "stateDir": dir.join(format!("state-{ordinal}")).to_string_lossy(),
            "commitInterval": "100ms",
            "listen": peers[ordinal],
            "peers": peers,
        });
        let path = dir.join(format!("processor-{ordinal}.yaml"));
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        replicas.push(Processor::start(&path, ports[ordinal]));
    }

    // Each payment joined exactly once, with its user's region (the users precede it in time).
    let joined = read_committed(&bootstrap, &format!("{run}-regions"), 200, Duration::from_secs(120));
    assert_eq!(joined.len(), 200);
    let mut ids: Vec<&str> = joined.iter().map(|(_, v, _)| v["ID"].as_str().unwrap_or("")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every payment once");
    for (key, value, _) in &joined {
        let user = key.as_deref().unwrap_or("");
        let u: i64 = user.trim_start_matches("user-").parse().unwrap_or(-1);
        assert_eq!(value["REGION"], json!(format!("region-{}", u % 3)), "{key:?} {value}");
    }

    let want_row = |user: &str| {
        let (n, total) = truth[user];
        json!([user, n, total])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for (user, _) in truth.iter() {
        for port in ports {
            loop {
                let rows = pull(port, &format!("SELECT * FROM SPEND WHERE userid = '{user}';")).unwrap_or_default();
                if rows == vec![want_row(user)] {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{user} via port {port}: {rows:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut want_all: Vec<Value> = truth.keys().map(|u| want_row(u)).collect();
    want_all.sort_by_key(|r| r[0].as_str().unwrap_or("").to_owned());
    for port in ports {
        let mut rows = pull(port, "SELECT * FROM SPEND;").unwrap_or_default();
        rows.sort_by_key(|r| r[0].as_str().unwrap_or("").to_owned());
        assert_eq!(rows, want_all, "a scan via port {port}");
    }
    for p in replicas {
        assert!(p.terminate().success());
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
