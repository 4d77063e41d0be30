//! Batching per partition by `maxRecords`, `maxBytes` and `maxWait`, as a pure state machine
//! the consumer loop feeds and polls. `maxBytes` bounds the encoded event exactly (not the raw
//! record sizes: base64 and JSON framing grow them by about a third).

use std::{collections::HashMap, time::Duration};

use crate::event::{InputRecord, event_overhead, record_cost};

/// Batch limits (from the function's `batch` spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records per batch (at least 1).
    pub max_records: usize,
    /// Most bytes of the encoded event.
    pub max_bytes: usize,
    /// Longest a batch stays open after its first record.
    pub max_wait: Duration,
}

/// What the batcher hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// A batch to invoke the function with: records of one partition, in offset order.
    Batch(Vec<InputRecord>),
    /// A record whose event alone exceeds `maxBytes`: it can never be sent and goes to the
    /// dead-letter topic with this reason (after every earlier record of its partition).
    Oversize(InputRecord, String),
}

#[derive(Debug)]
struct Open {
    records: Vec<InputRecord>,
    bytes: usize,
    since: Duration,
}

/// Open batches, one per partition.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    overhead: usize,
    open: HashMap<(String, i32), Open>,
}

impl Batcher {
    /// A batcher whose events name `bootstrap_servers`.
    pub fn new(limits: Limits, bootstrap_servers: &str) -> Self {
        let limits = Limits { max_records: limits.max_records.max(1), ..limits };
        Batcher { limits, overhead: event_overhead(bootstrap_servers), open: HashMap::new() }
    }

    /// Add a consumed record (in offset order per partition). Returns what became ready.
    pub fn push(&mut self, record: InputRecord, now: Duration) -> Vec<Ready> {
        let mut ready = Vec::new();
        let key = (record.topic.clone(), record.partition);
        let alone = self.overhead + record_cost(&record, true, true);
        if alone > self.limits.max_bytes {
            if let Some(open) = self.open.remove(&key) {
                ready.push(Ready::Batch(open.records));
            }
            let reason = format!(
                "record too large for one invocation: its event is {alone} bytes, over maxBytes {}",
                self.limits.max_bytes
            );
            ready.push(Ready::Oversize(record, reason));
            return ready;
        }
        if let Some(open) = self.open.get(&key) {
            let more = record_cost(&record, false, false);
            if open.bytes + more > self.limits.max_bytes {
                let open = self.open.remove(&key).expect("present");
                ready.push(Ready::Batch(open.records));
            }
        }
        let open = self.open.entry(key.clone()).or_insert_with(|| Open { records: Vec::new(), bytes: 0, since: now });
        open.bytes = if open.records.is_empty() { alone } else { open.bytes + record_cost(&record, false, false) };
        open.records.push(record);
        if open.records.len() >= self.limits.max_records {
            let open = self.open.remove(&key).expect("present");
            ready.push(Ready::Batch(open.records));
        }
        ready
    }

    /// Batches that have waited `maxWait`.
    pub fn due(&mut self, now: Duration) -> Vec<Ready> {
        let wait = self.limits.max_wait;
        let mut keys: Vec<(String, i32)> =
            self.open.iter().filter(|(_, o)| now.saturating_sub(o.since) >= wait).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.into_iter().filter_map(|k| self.open.remove(&k)).map(|o| Ready::Batch(o.records)).collect()
    }

    /// When the next open batch becomes due.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.open.values().map(|o| o.since + self.limits.max_wait).min()
    }

    /// The open batch of a partition, now (on revocation or shutdown).
    pub fn take(&mut self, topic: &str, partition: i32) -> Option<Vec<InputRecord>> {
        self.open.remove(&(topic.to_owned(), partition)).map(|o| o.records)
    }

    /// Records held in open batches.
    pub fn buffered(&self) -> usize {
        self.open.values().map(|o| o.records.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{TimestampType, encode_event};
    use proptest::prelude::*;

    const BOOTSTRAP: &str = "kafka:9092";

    fn rec(partition: i32, offset: i64, size: usize) -> InputRecord {
        InputRecord {
            topic: "t".into(),
            partition,
            offset,
            timestamp: 0,
            timestamp_type: TimestampType::CreateTime,
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(vec![b'x'; size]),
            headers: Vec::new(),
        }
    }

    fn batch(r: &Ready) -> &[InputRecord] {
        match r {
            Ready::Batch(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn max_records_closes_a_batch() {
        let mut b =
            Batcher::new(Limits { max_records: 3, max_bytes: 1 << 20, max_wait: Duration::from_secs(1) }, BOOTSTRAP);
        assert!(b.push(rec(0, 0, 10), Duration::ZERO).is_empty());
        assert!(b.push(rec(1, 0, 10), Duration::ZERO).is_empty());
        assert!(b.push(rec(0, 1, 10), Duration::ZERO).is_empty());
        let ready = b.push(rec(0, 2, 10), Duration::ZERO);
        assert_eq!(batch(&ready[0]).iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(b.buffered(), 1, "partition 1's record is still open");
    }

    #[test]
    fn max_wait_makes_a_batch_due() {
        let mut b = Batcher::new(
            Limits { max_records: 100, max_bytes: 1 << 20, max_wait: Duration::from_millis(500) },
            BOOTSTRAP,
        );
        b.push(rec(0, 0, 10), Duration::from_millis(100));
        b.push(rec(0, 1, 10), Duration::from_millis(400));
        assert_eq!(b.next_deadline(), Some(Duration::from_millis(600)));
        assert!(b.due(Duration::from_millis(599)).is_empty());
        assert_eq!(batch(&b.due(Duration::from_millis(600))[0]).len(), 2);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn an_oversize_record_is_set_aside_after_its_predecessors() {
        let mut b =
            Batcher::new(Limits { max_records: 100, max_bytes: 1000, max_wait: Duration::from_secs(1) }, BOOTSTRAP);
        b.push(rec(0, 0, 10), Duration::ZERO);
        let ready = b.push(rec(0, 1, 5000), Duration::ZERO);
        assert_eq!(batch(&ready[0])[0].offset, 0);
        match &ready[1] {
            Ready::Oversize(r, reason) => {
                assert_eq!(r.offset, 1);
                assert!(reason.contains("over maxBytes 1000"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Every record comes out exactly once, in order per partition; no batch exceeds the
        /// limits; only records that cannot fit alone are set aside.
        #[test]
        fn limits_order_and_no_loss(
            records in prop::collection::vec((0i32..3, 0usize..600), 1..80),
            max_records in 1usize..10,
            max_bytes in 300usize..3000,
        ) {
            let limits = Limits { max_records, max_bytes, max_wait: Duration::from_secs(5) };
            let mut b = Batcher::new(limits, BOOTSTRAP);
            let mut next_offset = [0i64; 3];
            let mut out = Vec::new();
            for (i, (p, size)) in records.iter().enumerate() {
                let o = next_offset[*p as usize];
                next_offset[*p as usize] += 1;
                out.extend(b.push(rec(*p, o, *size), Duration::from_millis(i as u64)));
            }
            out.extend(b.due(Duration::from_secs(3600)));
            let mut seen: Vec<Vec<i64>> = vec![Vec::new(); 3];
            for r in &out {
                match r {
                    Ready::Batch(records) => {
                        prop_assert!(!records.is_empty() && records.len() <= max_records);
                        prop_assert!(records.iter().all(|r| r.partition == records[0].partition));
                        let event = encode_event(BOOTSTRAP, records);
                        prop_assert!(event.len() <= max_bytes, "event {} > {}", event.len(), max_bytes);
                        for r in records { seen[r.partition as usize].push(r.offset); }
                    }
                    Ready::Oversize(r, _) => {
                        prop_assert!(encode_event(BOOTSTRAP, std::slice::from_ref(r)).len() > max_bytes);
                        seen[r.partition as usize].push(r.offset);
                    }
                }
            }
            for (p, offsets) in seen.iter().enumerate() {
                prop_assert_eq!(offsets.clone(), (0..next_offset[p]).collect::<Vec<_>>());
            }
        }
    }
}
