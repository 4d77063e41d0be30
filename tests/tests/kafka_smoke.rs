//! The test broker is a real Apache Kafka: topics, produce/consume, and transactions whose
//! aborted records a `read_committed` consumer never sees.

use std::time::Duration;

use rdkafka::{
    ClientConfig, Message, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord, Producer},
};
use sluice_tests::{kafka_bootstrap, unique};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn create_topic(bootstrap: &str, partitions: i32) -> anyhow::Result<String> {
    let topic = unique("smoke");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let results = admin
        .create_topics(&[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(topic)
}

/// Read every record of `topic`'s partitions from the beginning until `stop` returns true for the
/// values seen so far, or fail at the deadline.
fn read_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    stop: impl Fn(&[(i32, Vec<u8>)]) -> bool,
) -> anyhow::Result<Vec<(i32, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("smoke-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while !stop(&seen) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "timed out reading {topic}; read so far: {}", seen.len());
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            seen.push((message.partition(), message.payload().unwrap_or_default().to_vec()));
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_and_consume_across_partitions() -> anyhow::Result<()> {
    let Some(bootstrap) = kafka_bootstrap() else {
        return Ok(());
    };
    let topic = create_topic(&bootstrap, 3).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let n = 300;
    for i in 0..n {
        let key = format!("key-{}", i % 17);
        let value = format!("value-{i}");
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(&value), TIMEOUT)
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing record {i}: {e}"))?;
    }
    let bootstrap2 = bootstrap.clone();
    let topic2 = topic.clone();
    let seen = tokio::task::spawn_blocking(move || {
        read_until(&bootstrap2, &topic2, 3, "read_uncommitted", |seen| seen.len() >= n)
    })
    .await??;
    assert_eq!(seen.len(), n, "every record comes back exactly once");
    let mut values: Vec<String> = seen.iter().map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), n, "no record is duplicated");
    let used: std::collections::BTreeSet<i32> = seen.iter().map(|(p, _)| *p).collect();
    assert!(used.len() > 1, "keys spread over more than one partition: {used:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn read_committed_sees_committed_transactions_only() -> anyhow::Result<()> {
    let Some(bootstrap) = kafka_bootstrap() else {
        return Ok(());
    };
    let topic = create_topic(&bootstrap, 1).await?;
    let transactional_id = unique("smoke-tx");
    let bootstrap2 = bootstrap.clone();
    let topic2 = topic.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap2)
            .set("transactional.id", &transactional_id)
            .set("transaction.timeout.ms", "10000")
            .create()?;
        producer.init_transactions(TIMEOUT)?;
        let send = |value: &str| -> anyhow::Result<()> {
            producer
                .send(rdkafka::producer::BaseRecord::<(), str>::to(&topic2).payload(value))
                .map_err(|(e, _)| anyhow::anyhow!("send {value}: {e}"))
        };
        producer.begin_transaction()?;
        send("committed-1")?;
        producer.commit_transaction(TIMEOUT)?;

        producer.begin_transaction()?;
        send("aborted-1")?;
        producer.flush(TIMEOUT)?;
        producer.abort_transaction(TIMEOUT)?;

        producer.begin_transaction()?;
        send("committed-2")?;
        producer.commit_transaction(TIMEOUT)?;
        Ok(())
    })
    .await??;

    let has_last = |seen: &[(i32, Vec<u8>)]| seen.iter().any(|(_, v)| v == b"committed-2");
    let (b1, t1, b2, t2) = (bootstrap.clone(), topic.clone(), bootstrap, topic);
    let committed = tokio::task::spawn_blocking(move || read_until(&b1, &t1, 1, "read_committed", has_last)).await??;
    let uncommitted =
        tokio::task::spawn_blocking(move || read_until(&b2, &t2, 1, "read_uncommitted", has_last)).await??;

    let text =
        |seen: &[(i32, Vec<u8>)]| seen.iter().map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>();
    assert_eq!(text(&committed), ["committed-1", "committed-2"], "read_committed never sees the aborted record");
    assert_eq!(
        text(&uncommitted),
        ["committed-1", "aborted-1", "committed-2"],
        "the aborted record was really written (read_uncommitted sees it)"
    );
    Ok(())
}
