//! What a function returns: output records to produce and the records that failed
//! (CONTRACTS.md, "The function event and response").
//!
//! ```json
//! {"records": [{"topic": "trade-settlements", "key": "User_1", "value": {"disposition": "Completed"},
//!               "headers": {"source": "settle"}}],
//!  "batchItemFailures": [{"itemIdentifier": {"partition": "user_trades-0", "offset": 15}}]}
//! ```
//!
//! `null`, an empty body, or any JSON without these fields is success with no output. Anything
//! malformed fails the whole batch (and nothing it returned is produced): a response is applied
//! all or nothing.

use base64::Engine;
use serde_json::Value;

/// Lambda's limit on a synchronous response, which we keep.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic (`output.topic` when the function named none).
    pub topic: String,
    /// Partition, when the function chose one.
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers.
    /// Headers (`None`: a header with a null value, as dead letters copy them).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A record the function reports as failed: it and every later record of its partition in the
/// batch are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// A parsed response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Records to produce.
    pub records: Vec<OutputRecord>,
    /// Failed records (empty: the whole batch succeeded).
    pub failures: Vec<ItemFailure>,
}

/// Why a response fails its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Larger than [`MAX_RESPONSE_BYTES`].
    #[error("response of {0} bytes exceeds the {MAX_RESPONSE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not the documented shape.
    #[error("malformed response: {0}")]
    Malformed(String),
}

fn malformed(message: impl Into<String>) -> ResponseError {
    ResponseError::Malformed(message.into())
}

/// Parse a function's response body. `default_topic` is the function's `output.topic`.
pub fn parse_response(body: &[u8], default_topic: Option<&str>) -> Result<Response, ResponseError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(ResponseError::TooLarge(body.len()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Response::default());
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let Value::Object(object) = json else { return Ok(Response::default()) };
    let mut response = Response::default();
    match object.get("records") {
        None | Some(Value::Null) => {}
        Some(Value::Array(records)) => {
            for (i, record) in records.iter().enumerate() {
                response
                    .records
                    .push(output_record(record, default_topic).map_err(|e| malformed(format!("records[{i}]: {e}")))?);
            }
        }
        Some(_) => return Err(malformed("records must be an array")),
    }
    match object.get("batchItemFailures") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                response
                    .failures
                    .push(item_failure(item).map_err(|e| malformed(format!("batchItemFailures[{i}]: {e}")))?);
            }
        }
        Some(_) => return Err(malformed("batchItemFailures must be an array")),
    }
    Ok(response)
}

fn output_record(record: &Value, default_topic: Option<&str>) -> Result<OutputRecord, String> {
    let Value::Object(fields) = record else { return Err("must be an object".into()) };
    for name in fields.keys() {
        if !["topic", "partition", "key", "keyBase64", "value", "valueBase64", "headers"].contains(&name.as_str()) {
            return Err(format!("unknown field {name:?}"));
        }
    }
    let topic = match fields.get("topic") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        None | Some(Value::Null) => default_topic.ok_or("no topic, and the function has no output.topic")?.to_owned(),
        Some(_) => return Err("topic must be a non-empty string".into()),
    };
    let partition = match fields.get("partition") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p >= 0)
                .ok_or("partition must be a non-negative integer")?,
        ),
    };
    let key = bytes(fields.get("key"), fields.get("keyBase64"), "key")?;
    let value = bytes(fields.get("value"), fields.get("valueBase64"), "value")?;
    let headers = match fields.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), Some(s.as_bytes().to_vec()))),
                _ => Err(format!("header {k:?} must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("headers must be an object of strings".into()),
    };
    Ok(OutputRecord { topic, partition, key, value, headers })
}

/// `value` (a JSON string as its UTF-8 text, anything else as JSON text) or `valueBase64`.
fn bytes(plain: Option<&Value>, base64: Option<&Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    match (plain, base64) {
        (Some(p), Some(b)) if !p.is_null() && !b.is_null() => Err(format!("both {name} and {name}Base64 are set")),
        (_, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| format!("{name}Base64 is not base64: {e}")),
        (_, Some(v)) if !v.is_null() => Err(format!("{name}Base64 must be a string")),
        (None | Some(Value::Null), _) => Ok(None),
        (Some(Value::String(s)), _) => Ok(Some(s.as_bytes().to_vec())),
        (Some(other), _) => Ok(Some(other.to_string().into_bytes())),
    }
}

fn item_failure(item: &Value) -> Result<ItemFailure, String> {
    let id = item.get("itemIdentifier").ok_or("missing itemIdentifier")?;
    let partition = id
        .get("partition")
        .and_then(Value::as_str)
        .ok_or("itemIdentifier.partition must be \"<topic>-<partition>\"")?;
    let (topic, partition) =
        split_topic_partition(partition).ok_or_else(|| format!("{partition:?} is not \"<topic>-<partition>\""))?;
    let offset = match id.get("offset") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|o| *o >= 0)
    .ok_or("itemIdentifier.offset must be a non-negative integer")?;
    Ok(ItemFailure { topic, partition, offset })
}

/// `"user_trades-0"` → (`user_trades`, 0). Topic names may contain `-`; the partition is after
/// the last one.
pub fn split_topic_partition(text: &str) -> Option<(String, i32)> {
    let (topic, partition) = text.rsplit_once('-')?;
    let partition: i32 = partition.parse().ok().filter(|p: &i32| *p >= 0)?;
    (!topic.is_empty()).then(|| (topic.to_owned(), partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Response, ResponseError> {
        parse_response(body.as_bytes(), Some("out"))
    }

    #[test]
    fn empty_null_and_unrelated_json_are_success() {
        for body in ["", "  ", "null", "{}", "\"done\"", "[1,2]", r#"{"statusCode": 200}"#] {
            assert_eq!(parse(body).unwrap(), Response::default(), "{body:?}");
        }
    }

    #[test]
    fn records_follow_the_contract() {
        let r = parse(
            r#"{"records": [
                {"topic": "trade-settlements", "key": "User_1", "value": {"disposition": "Completed"}, "headers": {"source": "settle"}},
                {"value": "plain text", "partition": 3},
                {"keyBase64": "AAE=", "valueBase64": "/w=="},
                {"key": 42, "value": null}
            ]}"#,
        )
        .unwrap();
        assert_eq!(r.records[0].topic, "trade-settlements");
        assert_eq!(r.records[0].key.as_deref(), Some(&b"User_1"[..]));
        assert_eq!(r.records[0].value.as_deref(), Some(&br#"{"disposition":"Completed"}"#[..]));
        assert_eq!(r.records[0].headers, [("source".to_string(), Some(b"settle".to_vec()))]);
        assert_eq!(r.records[1].topic, "out", "defaults to output.topic");
        assert_eq!(r.records[1].value.as_deref(), Some(&b"plain text"[..]), "a JSON string is written as its text");
        assert_eq!(r.records[1].partition, Some(3));
        assert_eq!(r.records[2].key.as_deref(), Some(&[0u8, 1][..]));
        assert_eq!(r.records[2].value.as_deref(), Some(&[255u8][..]));
        assert_eq!(r.records[3].key.as_deref(), Some(&b"42"[..]));
        assert_eq!(r.records[3].value, None, "null value: a tombstone");
    }

    #[test]
    fn batch_item_failures() {
        let r = parse(
            r#"{"batchItemFailures": [{"itemIdentifier": {"partition": "user-trades-0", "offset": 15}},
                                      {"itemIdentifier": {"partition": "t-12", "offset": "7"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.failures,
            [
                ItemFailure { topic: "user-trades".into(), partition: 0, offset: 15 },
                ItemFailure { topic: "t".into(), partition: 12, offset: 7 }
            ]
        );
        assert!(parse(r#"{"batchItemFailures": []}"#).unwrap().failures.is_empty());
    }

    #[test]
    fn malformed_responses_fail_the_batch() {
        let cases = [
            ("{not json", "not JSON"),
            (r#"{"records": {}}"#, "records must be an array"),
            (r#"{"records": [1]}"#, "records[0]: must be an object"),
            (r#"{"records": [{"value": "x", "valu": 1}]}"#, "unknown field"),
            (r#"{"records": [{"key": "a", "keyBase64": "YQ=="}]}"#, "both key and keyBase64"),
            (r#"{"records": [{"valueBase64": "***"}]}"#, "not base64"),
            (r#"{"records": [{"partition": -1}]}"#, "partition must be a non-negative integer"),
            (r#"{"records": [{"headers": {"a": 1}}]}"#, "header \"a\" must be a string"),
            (r#"{"batchItemFailures": [{}]}"#, "missing itemIdentifier"),
            (
                r#"{"batchItemFailures": [{"itemIdentifier": {"partition": "nopartition", "offset": 1}}]}"#,
                "is not \"<topic>-<partition>\"",
            ),
            (r#"{"batchItemFailures": [{"itemIdentifier": {"partition": "t-0", "offset": -1}}]}"#, "offset must be"),
        ];
        for (body, expected) in cases {
            match parse(body) {
                Err(ResponseError::Malformed(m)) => assert!(m.contains(expected), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let no_default = parse_response(br#"{"records": [{"value": "x"}]}"#, None).unwrap_err();
        assert!(no_default.to_string().contains("no topic"));
        let big = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert_eq!(parse_response(&big, None), Err(ResponseError::TooLarge(MAX_RESPONSE_BYTES + 1)));
    }
}
