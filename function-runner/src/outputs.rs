//! What Kafka will accept of a function's output records, checked before any of them is
//! produced: a record Kafka refuses for good (too large for its topic, a partition the topic does
//! not have, a topic that does not exist) is the function's error and fails its batch, which is
//! then retried and dead-lettered like any other failure — instead of blocking the partition
//! (at-least-once) or aborting every transaction (exactly-once) forever.
//!
//! Topic facts (partition count, `max.message.bytes`) are read from the cluster and cached for a
//! minute; when they cannot be read (the broker is away), records are not judged: producing them
//! is then retried until the broker is back, as before.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
    producer::{FutureProducer, Producer},
};

use crate::response::OutputRecord;

/// How long what we learnt of a topic is trusted.
const FRESH: Duration = Duration::from_secs(60);
/// How long "this topic does not exist" is trusted (it may be created any moment).
const FRESH_MISSING: Duration = Duration::from_secs(5);
/// Bytes a record costs in a record batch beyond its key, value and headers (batch header and
/// the record's varints), rounded up.
const RECORD_OVERHEAD: usize = 128;

/// The librdkafka default of `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Topic {
    Exists { partitions: i32, max_message_bytes: Option<usize> },
    Missing,
}

/// Checks output records against what their topics accept.
pub struct OutputCheck {
    producer: FutureProducer,
    admin: Option<AdminClient<DefaultClientContext>>,
    producer_max: usize,
    cache: Mutex<HashMap<String, (Instant, Topic)>>,
}

impl OutputCheck {
    /// A checker reading topics through `producer` (metadata) and an admin client made from the
    /// same settings (topic configs); `producer_max` is the producer's `message.max.bytes`.
    pub fn new(producer: FutureProducer, admin_config: &ClientConfig, producer_max: usize) -> OutputCheck {
        let admin = admin_config.create::<AdminClient<DefaultClientContext>>().ok();
        OutputCheck { producer, admin, producer_max, cache: Mutex::new(HashMap::new()) }
    }

    /// `Err` with the reason when Kafka would refuse one of the records for good.
    pub async fn check(&self, records: &[OutputRecord]) -> Result<(), String> {
        let mut topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let mut known = HashMap::new();
        for topic in topics {
            if let Some(t) = self.topic(topic).await {
                known.insert(topic, t);
            }
        }
        for (i, r) in records.iter().enumerate() {
            if let Some(t) = known.get(r.topic.as_str()) {
                judge(i, r, t, self.producer_max)?;
            }
        }
        Ok(())
    }

    async fn topic(&self, name: &str) -> Option<Topic> {
        if let Some((at, t)) = self.cache.lock().ok()?.get(name)
            && at.elapsed() < if *t == Topic::Missing { FRESH_MISSING } else { FRESH }
        {
            return Some(t.clone());
        }
        let producer = self.producer.clone();
        let owned = name.to_owned();
        let partitions = tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(Some(&owned), Duration::from_secs(10)).ok()?;
            let t = md.topics().first()?;
            match t.error() {
                None if !t.partitions().is_empty() => Some(Some(t.partitions().len() as i32)),
                // Unknown topic (auto-creation is off on real clusters, and our own test broker).
                Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) | None => Some(None),
                Some(_) => None,
            }
        })
        .await
        .ok()??;
        let topic = match partitions {
            None => Topic::Missing,
            Some(partitions) => Topic::Exists { partitions, max_message_bytes: self.max_message_bytes(name).await },
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name.to_owned(), (Instant::now(), topic.clone()));
        }
        Some(topic)
    }

    async fn max_message_bytes(&self, topic: &str) -> Option<usize> {
        let admin = self.admin.as_ref()?;
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts).await.ok()?;
        let resource = results.into_iter().next()?.ok()?;
        resource.get("max.message.bytes")?.value.as_deref()?.parse().ok()
    }
}

fn judge(index: usize, r: &OutputRecord, topic: &Topic, producer_max: usize) -> Result<(), String> {
    let (partitions, max_message_bytes) = match topic {
        Topic::Missing => return Err(format!("output record {index}: topic '{}' does not exist", r.topic)),
        Topic::Exists { partitions, max_message_bytes } => (*partitions, *max_message_bytes),
    };
    if let Some(p) = r.partition
        && !(0..partitions).contains(&p)
    {
        return Err(format!("output record {index}: topic '{}' has no partition {p} (it has {partitions})", r.topic));
    }
    let size = record_size(r);
    let limit = max_message_bytes.map_or(producer_max, |m| m.min(producer_max));
    if size > limit {
        return Err(format!(
            "output record {index}: {size} bytes is more than topic '{}' accepts ({limit} bytes: max.message.bytes)",
            r.topic
        ));
    }
    Ok(())
}

/// A record's size as Kafka counts it, rounded up.
pub fn record_size(r: &OutputRecord) -> usize {
    r.key.as_ref().map_or(0, Vec::len)
        + r.value.as_ref().map_or(0, Vec::len)
        + r.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 8).sum::<usize>()
        + RECORD_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: Option<i32>, value_len: usize) -> OutputRecord {
        OutputRecord {
            topic: "out".into(),
            partition,
            key: Some(b"k".to_vec()),
            value: Some(vec![b'x'; value_len]),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
        }
    }

    #[test]
    fn records_kafka_refuses_for_good_are_named() {
        let t = Topic::Exists { partitions: 4, max_message_bytes: Some(10_000) };
        assert_eq!(judge(0, &record(Some(3), 10), &t, DEFAULT_MESSAGE_MAX_BYTES), Ok(()));
        assert_eq!(judge(0, &record(None, 10), &t, DEFAULT_MESSAGE_MAX_BYTES), Ok(()));
        let e = judge(2, &record(Some(4), 10), &t, DEFAULT_MESSAGE_MAX_BYTES).unwrap_err();
        assert_eq!(e, "output record 2: topic 'out' has no partition 4 (it has 4)");
        assert!(judge(0, &record(Some(-1), 10), &t, DEFAULT_MESSAGE_MAX_BYTES).is_err());
        let e = judge(0, &record(None, 20_000), &t, DEFAULT_MESSAGE_MAX_BYTES).unwrap_err();
        assert!(e.contains("more than topic 'out' accepts (10000 bytes"), "{e}");
        // The producer's own limit counts when it is the lower one.
        let e = judge(0, &record(None, 5_000), &t, 4_000).unwrap_err();
        assert!(e.contains("(4000 bytes"), "{e}");
        let e = judge(1, &record(None, 1), &Topic::Missing, DEFAULT_MESSAGE_MAX_BYTES).unwrap_err();
        assert_eq!(e, "output record 1: topic 'out' does not exist");
    }
}
