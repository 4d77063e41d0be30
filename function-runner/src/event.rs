//! The event a function receives: byte for byte AWS Lambda's self-managed Kafka event, so a
//! handler written for Lambda's Kafka event source works unchanged.
//!
//! ```json
//! {"eventSource":"SelfManagedKafka","bootstrapServers":"kafka:9092",
//!  "records":{"user_trades-0":[{"topic":"user_trades","partition":0,"offset":15,
//!   "timestamp":1545084650987,"timestampType":"CREATE_TIME","key":"VXNlcl8x",
//!   "value":"eyJzaWRlIjoiQlVZIn0=","headers":[{"traceid":[49,50,51]}]}]}}
//! ```
//!
//! Written by hand rather than through a serializer: the field order is fixed, and the batcher
//! needs each record's exact encoded length to honour `maxBytes` before it builds the event.

use std::fmt::Write;

use base64::Engine;

/// How the broker timestamped a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
    /// Unknown (very old message formats).
    NotAvailable,
}

impl TimestampType {
    fn as_str(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CREATE_TIME",
            TimestampType::LogAppendTime => "LOG_APPEND_TIME",
            TimestampType::NotAvailable => "NO_TIMESTAMP_TYPE",
        }
    }
}

/// A consumed record, as the event carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp, milliseconds since the epoch.
    pub timestamp: i64,
    /// What the timestamp means.
    pub timestamp_type: TimestampType,
    /// Key bytes; `None` is omitted from the event, as AWS does.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` (a tombstone) is omitted from the event.
    pub value: Option<Vec<u8>>,
    /// Headers in record order; a header without a value is sent as an empty array.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The event for one batch, whose records may span several partitions (grouped by
/// `"<topic>-<partition>"` in order of first appearance, each group in record order).
pub fn encode_event(bootstrap_servers: &str, records: &[InputRecord]) -> String {
    let mut out = String::with_capacity(96 + bootstrap_servers.len() + records.len() * 160);
    out.push_str(r#"{"eventSource":"SelfManagedKafka","bootstrapServers":"#);
    push_json_string(&mut out, bootstrap_servers);
    out.push_str(r#","records":{"#);
    let mut groups: Vec<(String, Vec<&InputRecord>)> = Vec::new();
    for record in records {
        let name = group_name(record);
        match groups.iter_mut().find(|(g, _)| *g == name) {
            Some((_, members)) => members.push(record),
            None => groups.push((name, vec![record])),
        }
    }
    for (i, (name, members)) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push_str(":[");
        for (j, record) in members.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_record(&mut out, record);
        }
        out.push(']');
    }
    out.push_str("}}");
    out
}

/// `"<topic>-<partition>"`.
pub fn group_name(record: &InputRecord) -> String {
    format!("{}-{}", record.topic, record.partition)
}

/// Bytes of the event around its records (with no record at all).
pub fn event_overhead(bootstrap_servers: &str) -> usize {
    encode_event(bootstrap_servers, &[]).len()
}

/// Bytes one more record adds to an event: its object, plus its group's key and brackets when it
/// opens a new group, plus a separating comma when it is not the first.
pub fn record_cost(record: &InputRecord, first_in_event: bool, opens_group: bool) -> usize {
    let mut s = String::new();
    push_record(&mut s, record);
    let mut cost = s.len();
    if opens_group {
        let mut name = String::new();
        push_json_string(&mut name, &group_name(record));
        cost += name.len() + 3; // `:[` and `]`
        if !first_in_event {
            cost += 1; // `,` between groups
        }
    } else {
        cost += 1; // `,` between records
    }
    cost
}

fn push_record(out: &mut String, r: &InputRecord) {
    out.push_str(r#"{"topic":"#);
    push_json_string(out, &r.topic);
    let _ = write!(
        out,
        r#","partition":{},"offset":{},"timestamp":{},"timestampType":"{}""#,
        r.partition,
        r.offset,
        r.timestamp,
        r.timestamp_type.as_str()
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(key) = &r.key {
        out.push_str(r#","key":""#);
        b64.encode_string(key, out);
        out.push('"');
    }
    if let Some(value) = &r.value {
        out.push_str(r#","value":""#);
        b64.encode_string(value, out);
        out.push('"');
    }
    out.push_str(r#","headers":["#);
    for (i, (name, value)) in r.headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        push_json_string(out, name);
        out.push_str(":[");
        for (j, byte) in value.iter().flatten().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", header_byte(*byte));
        }
        out.push_str("]}");
    }
    out.push_str("]}");
}

/// A header byte as a JSON number: Java's signed `byte` (-128..=127), which is what AWS's event
/// source (a JVM service) writes.
fn header_byte(byte: u8) -> i8 {
    byte as i8
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> InputRecord {
        InputRecord {
            topic: "user_trades".into(),
            partition,
            offset,
            timestamp: 1_545_084_650_987,
            timestamp_type: TimestampType::CreateTime,
            key: Some(b"User_1".to_vec()),
            value: Some(br#"{"side":"BUY"}"#.to_vec()),
            headers: vec![("traceid".into(), Some(b"123".to_vec()))],
        }
    }

    #[test]
    fn the_contracts_example_byte_for_byte() {
        let event = encode_event("kafka:9092", &[record(0, 15)]);
        assert_eq!(
            event,
            r#"{"eventSource":"SelfManagedKafka","bootstrapServers":"kafka:9092","records":{"user_trades-0":[{"topic":"user_trades","partition":0,"offset":15,"timestamp":1545084650987,"timestampType":"CREATE_TIME","key":"VXNlcl8x","value":"eyJzaWRlIjoiQlVZIn0=","headers":[{"traceid":[49,50,51]}]}]}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&event).unwrap();
        assert_eq!(parsed["records"]["user_trades-0"][0]["offset"], 15);
    }

    #[test]
    fn null_key_and_value_are_omitted_and_partitions_grouped() {
        let mut tombstone = record(1, 7);
        tombstone.key = None;
        tombstone.value = None;
        tombstone.headers = vec![("empty".into(), None), ("bin".into(), Some(vec![0, 127, 128, 255]))];
        let event = encode_event("a:1,b:2", &[record(0, 1), tombstone, record(0, 2)]);
        let v: serde_json::Value = serde_json::from_str(&event).unwrap();
        let groups: Vec<&String> = v["records"].as_object().unwrap().keys().collect();
        assert_eq!(groups.len(), 2);
        assert_eq!(v["records"]["user_trades-0"].as_array().unwrap().len(), 2);
        let t = &v["records"]["user_trades-1"][0];
        assert!(t.get("key").is_none() && t.get("value").is_none(), "{t}");
        assert_eq!(t["headers"][0]["empty"], serde_json::json!([]));
        assert_eq!(t["headers"][1]["bin"], serde_json::json!([0, 127, -128, -1]));
        assert_eq!(v["bootstrapServers"], "a:1,b:2");
    }

    #[test]
    fn record_costs_add_up_to_the_event_length() {
        let records = [record(0, 1), record(0, 2), record(3, 9), record(0, 3)];
        let mut total = event_overhead("k:9092");
        let mut seen_groups: Vec<String> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let opens = !seen_groups.contains(&group_name(r));
            if opens {
                seen_groups.push(group_name(r));
            }
            total += record_cost(r, i == 0, opens);
        }
        assert_eq!(total, encode_event("k:9092", &records).len());
    }
}
