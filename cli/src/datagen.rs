//! `sluice datagen`: the quickstart data sets of the seeds' example, with the field names, keys
//! and value ranges of Confluent's datagen quickstarts (`stock_trades`, `users`, `pageviews`), as
//! JSON values, so that the example's SQL (`CREATE STREAM STOCKTRADE (side VARCHAR, quantity INT,
//! ...)`) reads them as it would read the connector's output.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, seq::IndexedRandom};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::{Value, json};

/// A quickstart data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quickstart {
    /// Simulated trades, keyed by `symbol`.
    Stocktrade,
    /// Users, keyed by `userid` (nine of them: a table's worth).
    Users,
    /// Page views, keyed by `viewtime`.
    Pageviews,
}

const SYMBOLS: [&str; 7] = ["ZBZX", "ZJZZT", "ZTEST", "ZVV", "ZVZZT", "ZWZZT", "ZXZZT"];
const ACCOUNTS: [&str; 3] = ["ABC123", "LMN456", "XYZ789"];
const SIDES: [&str; 3] = ["BUY", "SELL", "SHORT"];
const GENDERS: [&str; 3] = ["MALE", "FEMALE", "OTHER"];

/// The `i`-th record of a data set: its key and JSON value.
pub fn record(quickstart: Quickstart, i: u64, rng: &mut impl Rng) -> (String, Value) {
    let user = format!("User_{}", rng.random_range(1..=9));
    match quickstart {
        Quickstart::Stocktrade => {
            let symbol = *SYMBOLS.choose(rng).unwrap_or(&"ZVV");
            let value = json!({
                "side": SIDES.choose(rng).unwrap_or(&"BUY"),
                "quantity": rng.random_range(1..=5000),
                "symbol": symbol,
                "price": rng.random_range(5..=1000),
                "account": ACCOUNTS.choose(rng).unwrap_or(&"ABC123"),
                "userid": user,
            });
            (symbol.to_owned(), value)
        }
        Quickstart::Users => {
            // The users cycle through User_1..User_9, so that a short run covers every user a
            // trade can name (the connector draws them at random).
            let userid = format!("User_{}", i % 9 + 1);
            let value = json!({
                "registertime": rng.random_range(1_487_715_775_521_i64..=1_519_273_364_600),
                "userid": userid,
                "regionid": format!("Region_{}", rng.random_range(1..=9)),
                "gender": GENDERS.choose(rng).unwrap_or(&"OTHER"),
            });
            (userid, value)
        }
        Quickstart::Pageviews => {
            let viewtime = 1 + 10 * i;
            let value = json!({
                "viewtime": viewtime,
                "userid": user,
                "pageid": format!("Page_{}", rng.random_range(1..=99)),
            });
            (viewtime.to_string(), value)
        }
    }
}

/// Produce `count` records (or until stopped) at `rate` per second (or as fast as the broker
/// takes them) to `topic`, creating it with the broker's defaults when it is missing. Returns
/// the number produced.
pub async fn run(
    quickstart: Quickstart,
    topic: &str,
    count: Option<u64>,
    rate: Option<u64>,
    bootstrap: &str,
) -> anyhow::Result<u64> {
    anyhow::ensure!(rate != Some(0), "--rate must be at least 1 record per second");
    ensure_topic(bootstrap, topic).await?;
    // Keys go where Kafka's Java clients would put them (murmur2), so that tables and joins
    // downstream find them in the partitions they expect.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let stop = tokio::spawn(sluice_telemetry::stop_requested());
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut sent = 0u64;
    let mut pending = Vec::new();
    while count.is_none_or(|c| sent < c) && !stop.is_finished() {
        if let Some(rate) = rate {
            // Record n goes at n / rate seconds: an even rate, with no drift.
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let (key, value) = record(quickstart, sent, &mut rng);
        let payload = value.to_string();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
        pending.push(delivery);
        sent += 1;
        if pending.len() >= 1000 || rate.is_some() {
            for d in pending.drain(..) {
                d.await.context("producing")?.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
            }
        }
    }
    for d in pending {
        d.await.context("producing")?.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    }
    producer.flush(Duration::from_secs(30)).context("flushing")?;
    stop.abort();
    Ok(sent)
}

async fn ensure_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().context("creating an admin client")?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reaching Kafka at {bootstrap}"))?;
    let exists = metadata.topics().first().is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
    if exists {
        return Ok(());
    }
    // -1: the broker's default partition count and replication factor.
    let new = NewTopic::new(topic, -1, TopicReplication::Fixed(-1));
    for r in admin.create_topics(&[new], &AdminOptions::new()).await? {
        match r {
            Ok(_) => eprintln!("sluice datagen: created topic {topic} with the broker's default partitions"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("topic {t} does not exist and cannot be created: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_quickstart_fields_keys_and_ranges() {
        let mut rng = rand::rng();
        for i in 0..200 {
            let (key, v) = record(Quickstart::Stocktrade, i, &mut rng);
            assert_eq!(v["symbol"], key.as_str());
            assert!(SYMBOLS.contains(&key.as_str()));
            assert!((1..=5000).contains(&v["quantity"].as_i64().unwrap()));
            assert!((5..=1000).contains(&v["price"].as_i64().unwrap()));
            assert!(v["userid"].as_str().unwrap().starts_with("User_"));
            let fields: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(fields.len(), 6, "{fields:?}");

            let (key, v) = record(Quickstart::Users, i, &mut rng);
            assert_eq!(v["userid"], key.as_str());
            assert_eq!(key, format!("User_{}", i % 9 + 1));
            assert!(v["regionid"].as_str().unwrap().starts_with("Region_"));
            assert!(v["registertime"].as_i64().unwrap() > 1_487_000_000_000);

            let (key, v) = record(Quickstart::Pageviews, i, &mut rng);
            assert_eq!(key, (1 + 10 * i).to_string());
            assert_eq!(v["viewtime"].as_u64(), Some(1 + 10 * i));
            assert!(v["pageid"].as_str().unwrap().starts_with("Page_"));
        }
    }
}
