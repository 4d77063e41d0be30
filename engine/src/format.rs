//! Serialization formats: JSON, DELIMITED, KAFKA (Kafka's own primitive serializers) and NONE,
//! for keys and values, and Kafka Streams' windowed-key layout. AVRO and PROTOBUF plug in here
//! later as more [`Format`]s with a Schema Registry client.

use std::{fmt::Write, str::FromStr};

use base64::Engine as _;
use bigdecimal::BigDecimal;
use serde_json::Value as Json;
use sluice_sql::{
    SqlType,
    catalog::{Format, FormatSpec, WindowType},
};

use crate::value::{self, Value};

/// A window: `[start, end)` for time windows, `[start, end]` for sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// Start, ms since the epoch.
    pub start: i64,
    /// End, ms since the epoch.
    pub end: i64,
}

/// Reads and writes one side (key or value) of a topic's records.
#[derive(Debug, Clone)]
pub struct Serde {
    format: FormatSpec,
    columns: Vec<(String, SqlType)>,
    /// A single column written bare rather than in an object or record.
    unwrapped: bool,
}

impl Serde {
    /// A serde for these columns; `key` selects the key rules (a single key column is unwrapped).
    pub fn new(format: &FormatSpec, columns: Vec<(String, SqlType)>, key: bool) -> Result<Serde, String> {
        let unwrapped = columns.len() == 1
            && match format.format {
                Format::Json => key || format.wrap_single_value == Some(false),
                Format::Kafka => true,
                _ => false,
            };
        match format.format {
            Format::Kafka => {
                if columns.len() > 1 {
                    let names: Vec<String> = columns.iter().map(|(n, t)| format!("`{n}` {t}")).collect();
                    return Err(format!(
                        "The 'KAFKA' format only supports a single field. Got: [{}]",
                        names.join(", ")
                    ));
                }
                if let Some((_, t)) = columns.first()
                    && !matches!(t, SqlType::Int | SqlType::Bigint | SqlType::Double | SqlType::String | SqlType::Bytes)
                {
                    return Err(format!("The 'KAFKA' format does not support type '{}'", kafka_type_name(t)));
                }
            }
            Format::Delimited => {
                if let Some((_, t)) =
                    columns.iter().find(|(_, t)| matches!(t, SqlType::Array(_) | SqlType::Map(..) | SqlType::Struct(_)))
                {
                    return Err(format!("The 'DELIMITED' format does not support type '{}'", kafka_type_name(t)));
                }
            }
            Format::None => {
                if !columns.is_empty() {
                    return Err("The 'NONE' format can only be used when no columns are defined.".into());
                }
            }
            Format::Avro | Format::Protobuf | Format::JsonSr => {
                return Err(format!(
                    "The '{}' format needs a Schema Registry, which Sluice does not support yet",
                    format.format
                ));
            }
            Format::Json => {}
        }
        Ok(Serde { format: format.clone(), columns, unwrapped })
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[(String, SqlType)] {
        &self.columns
    }

    /// Decode bytes (`None`: a null key or a tombstone) into one value per column.
    pub fn decode(&self, bytes: Option<&[u8]>) -> Result<Option<Vec<Value>>, String> {
        let Some(bytes) = bytes else { return Ok(None) };
        match self.format.format {
            Format::None => Ok(Some(Vec::new())),
            Format::Kafka => {
                let Some((_, t)) = self.columns.first() else { return Ok(Some(Vec::new())) };
                Ok(Some(vec![kafka_decode(bytes, t)?]))
            }
            Format::Delimited => self.delimited_decode(bytes).map(Some),
            Format::Json => {
                let json: Json =
                    serde_json::from_slice(bytes).map_err(|e| format!("Failed to deserialize JSON: {e}"))?;
                if json.is_null() {
                    return Ok(None);
                }
                if self.unwrapped {
                    let (name, t) = &self.columns[0];
                    return Ok(Some(vec![from_json(&json, t).map_err(|e| format!("{name}: {e}"))?]));
                }
                let Json::Object(map) = &json else {
                    if self.columns.len() == 1 {
                        // ksqlDB accepts an unwrapped single value even when wrapping is the default.
                        let (name, t) = &self.columns[0];
                        return Ok(Some(vec![from_json(&json, t).map_err(|e| format!("{name}: {e}"))?]));
                    }
                    return Err(format!("Expected a JSON object, got {json}"));
                };
                let mut row = Vec::with_capacity(self.columns.len());
                for (name, t) in &self.columns {
                    let field = map
                        .get(name)
                        .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v));
                    row.push(match field {
                        None | Some(Json::Null) => Value::Null,
                        Some(v) => from_json(v, t).map_err(|e| format!("Can't convert field {name}: {e}"))?,
                    });
                }
                Ok(Some(row))
            }
            other => Err(format!("The '{other}' format is not supported")),
        }
    }

    /// Encode one value per column (`None`: a tombstone / null key).
    pub fn encode(&self, values: Option<&[Value]>) -> Result<Option<Vec<u8>>, String> {
        let Some(values) = values else { return Ok(None) };
        match self.format.format {
            Format::None => Ok(None),
            Format::Kafka => match values.first() {
                None | Some(Value::Null) => Ok(None),
                Some(v) => Ok(Some(kafka_encode(v)?)),
            },
            Format::Delimited => {
                let delimiter = self.format.delimiter.unwrap_or(',');
                let mut out = String::new();
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(delimiter);
                    }
                    if let Some(text) = delimited_text(v) {
                        if needs_quotes(&text, delimiter, i == 0) {
                            let _ = write!(out, "\"{}\"", text.replace('"', "\"\""));
                        } else {
                            out.push_str(&text);
                        }
                    }
                }
                Ok(Some(out.into_bytes()))
            }
            Format::Json => {
                if self.unwrapped {
                    let v = values.first().unwrap_or(&Value::Null);
                    if v.is_null() && self.columns.len() == 1 {
                        return Ok(Some(b"null".to_vec()));
                    }
                    return Ok(Some(to_json_text(v).into_bytes()));
                }
                let mut out = String::from("{");
                for (i, ((name, _), v)) in self.columns.iter().zip(values).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(name.clone()).to_string());
                    out.push(':');
                    out.push_str(&to_json_text(v));
                }
                out.push('}');
                Ok(Some(out.into_bytes()))
            }
            other => Err(format!("The '{other}' format is not supported")),
        }
    }

    fn delimited_decode(&self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("DELIMITED data is not UTF-8: {e}"))?;
        let delimiter = self.format.delimiter.unwrap_or(',');
        let fields = split_delimited(text, delimiter)?;
        if fields.len() != self.columns.len() {
            return Err(format!(
                "Unexpected field count, csvFields:{} schemaFields:{} line: {text}",
                fields.len(),
                self.columns.len()
            ));
        }
        self.columns
            .iter()
            .zip(fields)
            .map(|((name, t), field)| match field {
                None => Ok(Value::Null),
                Some(f) if f.is_empty() && *t != SqlType::String => Ok(Value::Null),
                Some(f) => delimited_value(&f, t).map_err(|e| format!("{name}: {e}")),
            })
            .collect()
    }
}

fn kafka_type_name(t: &SqlType) -> String {
    match t {
        SqlType::Array(_) => "ARRAY".into(),
        SqlType::Map(..) => "MAP".into(),
        SqlType::Struct(_) => "STRUCT".into(),
        SqlType::Decimal { .. } => "DECIMAL".into(),
        other => other.to_string(),
    }
}

fn kafka_decode(bytes: &[u8], t: &SqlType) -> Result<Value, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(format!("Size of data received by the {t} deserializer is not {n}: {}", bytes.len()))
        }
    };
    Ok(match t {
        SqlType::Int => Value::Int(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "bad INT")?)),
        SqlType::Bigint => Value::Bigint(i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "bad BIGINT")?)),
        SqlType::Double => Value::Double(f64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "bad DOUBLE")?)),
        SqlType::String => Value::String(String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?),
        SqlType::Bytes => Value::Bytes(bytes.to_vec()),
        other => return Err(format!("The 'KAFKA' format does not support type '{other}'")),
    })
}

fn kafka_encode(v: &Value) -> Result<Vec<u8>, String> {
    Ok(match v {
        Value::Int(i) => i.to_be_bytes().to_vec(),
        Value::Bigint(i) => i.to_be_bytes().to_vec(),
        Value::Double(d) => d.to_be_bytes().to_vec(),
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bytes(b) => b.clone(),
        other => return Err(format!("The 'KAFKA' format cannot write {other:?}")),
    })
}

/// Whether a DELIMITED field is quoted, by the rules of the CSV printer ksqlDB uses (minimal
/// quoting): a record that starts with anything but a letter or digit, a field that starts with
/// a control character, space, `!`, `"` or `#`, contains the delimiter, a quote or a line break, or
/// ends with whitespace.
fn needs_quotes(text: &str, delimiter: char, first: bool) -> bool {
    let Some(c) = text.chars().next() else { return first };
    if first && !c.is_ascii_alphanumeric() {
        return true;
    }
    if c <= '#' {
        return true;
    }
    if text.chars().any(|ch| ch == delimiter || ch == '"' || ch == '\n' || ch == '\r') {
        return true;
    }
    text.chars().last().is_some_and(|l| l <= ' ')
}

/// Split one DELIMITED line into fields (`None` for an empty unquoted field), honouring quotes.
fn split_delimited(text: &str, delimiter: char) -> Result<Vec<Option<String>>, String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        let mut quoted = false;
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("Unterminated quote in DELIMITED data".into()),
                }
            }
        }
        loop {
            match chars.peek() {
                Some(&c) if c == delimiter => break,
                Some(&c) => {
                    field.push(c);
                    chars.next();
                }
                None => break,
            }
        }
        fields.push(if field.is_empty() && !quoted { None } else { Some(field) });
        if chars.next().is_none() {
            break;
        }
    }
    Ok(fields)
}

fn delimited_value(text: &str, t: &SqlType) -> Result<Value, String> {
    let bad = || format!("Cannot parse '{text}' as {t}");
    Ok(match t {
        SqlType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(bad()),
        },
        SqlType::Int => Value::Int(text.trim().parse().map_err(|_| bad())?),
        SqlType::Bigint => Value::Bigint(text.trim().parse().map_err(|_| bad())?),
        SqlType::Double => Value::Double(text.trim().parse().map_err(|_| bad())?),
        SqlType::Decimal { precision, scale } => {
            let d = BigDecimal::from_str(text.trim()).map_err(|_| bad())?;
            if !value::fits(&d, *precision, *scale) {
                return Err(bad());
            }
            Value::Decimal(value::rescale(&d, *scale))
        }
        SqlType::String => Value::String(text.to_owned()),
        SqlType::Bytes => {
            Value::Bytes(base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| bad())?)
        }
        SqlType::Timestamp => Value::Timestamp(text.trim().parse().map_err(|_| bad())?),
        SqlType::Date => Value::Date(text.trim().parse().map_err(|_| bad())?),
        SqlType::Time => Value::Time(text.trim().parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    })
}

fn delimited_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Timestamp(t) | Value::Time(t) => Some(t.to_string()),
        Value::Date(d) => Some(d.to_string()),
        other => value::to_text(other),
    }
}

/// Convert JSON to a value of a type, with ksqlDB's JSON coercions (numbers from numeric text,
/// text from any scalar, case-insensitive struct fields).
pub fn from_json(json: &Json, t: &SqlType) -> Result<Value, String> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let bad = || format!("Can't convert type. sourceType: {}, requiredType: {t}, value: {json}", json_kind(json));
    Ok(match t {
        SqlType::Boolean => match json {
            Json::Bool(b) => Value::Boolean(*b),
            Json::String(s) if s.eq_ignore_ascii_case("true") => Value::Boolean(true),
            Json::String(s) if s.eq_ignore_ascii_case("false") => Value::Boolean(false),
            _ => return Err(bad()),
        },
        SqlType::Int | SqlType::Bigint => {
            let n = match json {
                Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or_else(bad)?,
                Json::String(s) => s.trim().parse::<i64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if *t == SqlType::Int { Value::Int(i32::try_from(n).map_err(|_| bad())?) } else { Value::Bigint(n) }
        }
        SqlType::Double => match json {
            Json::Number(n) => Value::Double(n.as_f64().ok_or_else(bad)?),
            Json::String(s) => Value::Double(s.trim().parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        SqlType::Decimal { precision, scale } => {
            let d = match json {
                Json::Number(n) => BigDecimal::from_str(&n.to_string()).map_err(|_| bad())?,
                Json::String(s) => BigDecimal::from_str(s.trim()).map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if !value::fits(&d, *precision, *scale) {
                return Err(format!("Value {json} does not fit {t}"));
            }
            Value::Decimal(value::rescale(&d, *scale))
        }
        SqlType::String => match json {
            Json::String(s) => Value::String(s.clone()),
            Json::Number(n) => Value::String(n.to_string()),
            Json::Bool(b) => Value::String(b.to_string()),
            other => Value::String(other.to_string()),
        },
        SqlType::Bytes => match json {
            Json::String(s) => Value::Bytes(base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        SqlType::Timestamp | SqlType::Time => {
            let n = match json {
                Json::Number(n) => n.as_i64().ok_or_else(bad)?,
                Json::String(s) => s.trim().parse::<i64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if *t == SqlType::Timestamp { Value::Timestamp(n) } else { Value::Time(n) }
        }
        SqlType::Date => match json {
            Json::Number(n) => Value::Date(i32::try_from(n.as_i64().ok_or_else(bad)?).map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        SqlType::Array(item) => match json {
            Json::Array(items) => Value::Array(items.iter().map(|i| from_json(i, item)).collect::<Result<_, _>>()?),
            _ => return Err(bad()),
        },
        SqlType::Map(k, v) => match json {
            Json::Object(map) => Value::Map(
                map.iter()
                    .map(|(key, val)| Ok((from_json(&Json::String(key.clone()), k)?, from_json(val, v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            _ => return Err(bad()),
        },
        SqlType::Struct(fields) => match json {
            Json::Object(map) => Value::Struct(
                fields
                    .iter()
                    .map(|(name, ft)| {
                        let field = map
                            .get(name)
                            .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v));
                        Ok((
                            name.clone(),
                            match field {
                                None => Value::Null,
                                Some(v) => from_json(v, ft)?,
                            },
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            _ => return Err(bad()),
        },
    })
}

fn json_kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "NULL",
        Json::Bool(_) => "BOOLEAN",
        Json::Number(n) if n.is_f64() => "DOUBLE",
        Json::Number(_) => "BIGINT",
        Json::String(_) => "STRING",
        Json::Array(_) => "ARRAY",
        Json::Object(_) => "OBJECT",
    }
}

/// JSON text for a value as ksqlDB's JSON serializer writes it.
pub fn to_json_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bigint(i) | Value::Timestamp(i) | Value::Time(i) => i.to_string(),
        Value::Date(d) => d.to_string(),
        Value::Double(d) => {
            if d.is_finite() {
                let s = value::java_double(*d);
                if s.contains('E') {
                    serde_json::Number::from_f64(*d).map_or_else(|| "null".into(), |n| n.to_string())
                } else {
                    s
                }
            } else {
                Json::String(value::java_double(*d)).to_string()
            }
        }
        Value::Decimal(d) => value::plain_decimal(d),
        Value::String(s) => Json::String(s.clone()).to_string(),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)).to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(to_json_text).collect::<Vec<_>>().join(",")),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!(
                    "{}:{}",
                    Json::String(value::to_text(k).unwrap_or_else(|| "null".into())),
                    to_json_text(v)
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Struct(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("{}:{}", Json::String(k.clone()), to_json_text(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Append Kafka Streams' window suffix to serialized key bytes: time windows add the start,
/// sessions add the end then the start (8 bytes big-endian each).
pub fn window_key(mut key: Vec<u8>, window: Window, kind: WindowType) -> Vec<u8> {
    if matches!(kind, WindowType::Session) {
        key.extend_from_slice(&window.end.to_be_bytes());
    }
    key.extend_from_slice(&window.start.to_be_bytes());
    key
}

/// Split windowed key bytes into the inner key bytes and the window.
pub fn split_window_key(bytes: &[u8], kind: WindowType) -> Result<(&[u8], Window), String> {
    let long = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    match kind {
        WindowType::Session => {
            if bytes.len() < 16 {
                return Err("A session-windowed key needs at least 16 bytes".into());
            }
            let n = bytes.len();
            Ok((&bytes[..n - 16], Window { end: long(&bytes[n - 16..n - 8]), start: long(&bytes[n - 8..]) }))
        }
        WindowType::Tumbling { size_ms } | WindowType::Hopping { size_ms } => {
            if bytes.len() < 8 {
                return Err("A time-windowed key needs at least 8 bytes".into());
            }
            let n = bytes.len();
            let start = long(&bytes[n - 8..]);
            Ok((&bytes[..n - 8], Window { start, end: start.saturating_add(size_ms) }))
        }
    }
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default (Java) partitioner gives a key.
pub fn kafka_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    fn spec(format: Format) -> FormatSpec {
        FormatSpec { format, delimiter: None, wrap_single_value: None }
    }

    #[test]
    fn kafka_primitives_match_kafkas_serializers() {
        let s = Serde::new(&spec(Format::Kafka), vec![("K".into(), SqlType::Int)], true).unwrap();
        assert_eq!(s.encode(Some(&[Value::Int(1)])).unwrap(), Some(vec![0, 0, 0, 1]));
        assert_eq!(s.decode(Some(&[0, 0, 1, 0])).unwrap(), Some(vec![Value::Int(256)]));
        let s = Serde::new(&spec(Format::Kafka), vec![("K".into(), SqlType::Bigint)], true).unwrap();
        assert_eq!(s.encode(Some(&[Value::Bigint(-1)])).unwrap(), Some(vec![255; 8]));
        assert!(Serde::new(&spec(Format::Kafka), vec![("K".into(), SqlType::Boolean)], true).is_err());
    }

    #[test]
    fn json_values_are_case_insensitive_and_coerced() {
        let s = Serde::new(
            &spec(Format::Json),
            vec![("ID".into(), SqlType::Bigint), ("NAME".into(), SqlType::String)],
            false,
        )
        .unwrap();
        let row = s.decode(Some(br#"{"id": "12", "Name": 5}"#)).unwrap().unwrap();
        assert_eq!(row, vec![Value::Bigint(12), Value::String("5".into())]);
        assert_eq!(s.encode(Some(&row)).unwrap().unwrap(), br#"{"ID":12,"NAME":"5"}"#.to_vec());
    }

    #[test]
    fn delimited_round_trips_with_quotes_and_nulls() {
        let s = Serde::new(
            &spec(Format::Delimited),
            vec![("A".into(), SqlType::Int), ("B".into(), SqlType::String), ("C".into(), SqlType::Double)],
            false,
        )
        .unwrap();
        let row = s.decode(Some(b"1,\"x,y\",")).unwrap().unwrap();
        assert_eq!(row, vec![Value::Int(1), Value::String("x,y".into()), Value::Null]);
        assert_eq!(s.encode(Some(&row)).unwrap().unwrap(), b"1,\"x,y\",".to_vec());
    }

    #[test]
    fn windowed_keys() {
        let w = Window { start: 1000, end: 2000 };
        let k = window_key(vec![1], w, WindowType::Session);
        assert_eq!(split_window_key(&k, WindowType::Session).unwrap(), (&[1u8][..], w));
        let k = window_key(vec![1], w, WindowType::Tumbling { size_ms: 1000 });
        assert_eq!(k.len(), 9);
        assert_eq!(split_window_key(&k, WindowType::Tumbling { size_ms: 1000 }).unwrap(), (&[1u8][..], w));
    }
}
