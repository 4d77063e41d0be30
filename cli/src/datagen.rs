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

impl Quickstart {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Quickstart::Stocktrade => "stocktrade",
            Quickstart::Users => "users",
            Quickstart::Pageviews => "pageviews",
        }
    }
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

/// What an in-process generator listens to (stop, pause) and what it reports (records
/// produced), shared with whoever runs it (`sluice run --datagen`, its live view).
#[derive(Debug, Default)]
pub struct Control {
    /// Stop producing.
    pub stop: tokio_util::sync::CancellationToken,
    /// Produce nothing while set.
    pub paused: std::sync::atomic::AtomicBool,
    /// Records produced (acknowledged) so far.
    pub produced: std::sync::atomic::AtomicU64,
}

/// Produce `count` records (or until stopped) at `rate` per second (or as fast as the broker
/// takes them) to `topic`, creating it with the broker's defaults when it is missing. Returns
/// the number produced. Stops on Ctrl-C.
pub async fn run(
    quickstart: Quickstart,
    topic: &str,
    count: Option<u64>,
    rate: Option<u64>,
    bootstrap: &str,
) -> anyhow::Result<u64> {
    let control = Control::default();
    let stop = control.stop.clone();
    let signal = tokio::spawn(async move {
        sluice_telemetry::stop_requested().await;
        stop.cancel();
    });
    ensure_topic(bootstrap, topic).await?;
    let result = produce(quickstart, topic, count, rate, bootstrap, &control).await;
    signal.abort();
    result
}

/// Produce as [`run`] does, under `control`, to a topic that exists. The first records of a
/// table's data set (the nine users) go at once, so that the streams joined with it find them.
pub async fn produce(
    quickstart: Quickstart,
    topic: &str,
    count: Option<u64>,
    rate: Option<u64>,
    bootstrap: &str,
    control: &Control,
) -> anyhow::Result<u64> {
    use std::sync::atomic::Ordering;
    anyhow::ensure!(rate != Some(0), "--rate must be at least 1 record per second");
    // Keys go where Kafka's Java clients would put them (murmur2), so that tables and joins
    // downstream find them in the partitions they expect.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // A broker that went away fails a record within 30 s instead of librdkafka's 5 minutes.
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the producer")?;
    let burst = if quickstart == Quickstart::Users { 9 } else { 0 };
    // A generator of its own (the thread's is not Send across the awaits below).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
    let mut sent = 0u64;
    // The rate's clock: record n goes at `at + (n - from) / rate`, restarted after a pause.
    let (mut at, mut from) = (Instant::now(), burst);
    let mut pending = Vec::new();
    while count.is_none_or(|c| sent < c) && !control.stop.is_cancelled() {
        if control.paused.load(Ordering::SeqCst) {
            tokio::select! {
                () = control.stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            (at, from) = (Instant::now(), sent);
            continue;
        }
        if let Some(rate) = rate.filter(|_| sent >= burst) {
            // An even rate, with no drift.
            let due = at + Duration::from_secs_f64(sent.saturating_sub(from) as f64 / rate as f64);
            tokio::select! {
                () = control.stop.cancelled() => break,
                () = tokio::time::sleep_until(due.into()) => {}
            }
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
                // Told to stop while waiting: what is in flight is left to librdkafka's flush.
                let acked = tokio::select! {
                    a = d => a,
                    () = control.stop.cancelled() => break,
                };
                acked.context("producing")?.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
                control.produced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if !control.stop.is_cancelled() {
        for d in pending {
            d.await.context("producing")?.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
            control.produced.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Bounded: a stop must not wait on a broker that is gone.
    let wait = if control.stop.is_cancelled() { Duration::from_secs(5) } else { Duration::from_secs(30) };
    if let Err(e) = producer.flush(wait) {
        anyhow::ensure!(control.stop.is_cancelled(), "flushing to {topic}: {e}");
    }
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
