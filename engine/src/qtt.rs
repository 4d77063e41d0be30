//! ksqlDB's query-validation tests (QTT and REST QTT), run the way ksqlDB's own harness runs
//! them: one partition, records fed one at a time in file order, every output compared per topic
//! in order.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value as Json;
use sluice_sql::{
    SqlType,
    ast::{SourceKind, Statement},
    catalog::{ColumnRole, Format, Source, WindowType},
};

use crate::{
    engine::{Engine, Outcome},
    format::{self, Serde, Window},
    source::Record,
    value::{self, Value},
};

/// One run of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// `<file stem> - <test name>[ - <FORMAT>]`.
    pub name: String,
    /// `None` when it passed; otherwise why not.
    pub failure: Option<String>,
}

/// How cases are run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Send re-keyed inputs through repartition topics of this many partitions, as the
    /// processor runtime does (the records come back within the same call), instead of keeping
    /// such queries' state in one logical partition.
    pub repartition: Option<i32>,
}

/// The prefix of the repartition topics' names when [`Options::repartition`] is set.
const REPARTITION_PREFIX: &str = "_qtt-repartition-";

/// Run every case of a QTT or REST-QTT file whose full name contains `filter`.
pub fn run_file(path: &Path, filter: Option<&str>) -> Result<Vec<CaseResult>, String> {
    run_file_with(path, filter, Options::default())
}

/// [`run_file`] with options.
pub fn run_file_with(path: &Path, filter: Option<&str>, options: Options) -> Result<Vec<CaseResult>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("tests").to_owned();
    let cases =
        doc.get("tests").and_then(Json::as_array).ok_or_else(|| format!("{}: no \"tests\" array", path.display()))?;
    let mut results = Vec::new();
    for case in cases {
        let name = case.get("name").and_then(Json::as_str).unwrap_or("unnamed");
        let formats: Vec<Option<String>> = match case.get("format").and_then(Json::as_array) {
            Some(f) if !f.is_empty() => f.iter().map(|x| x.as_str().map(str::to_owned)).collect(),
            _ => vec![None],
        };
        for format in formats {
            let full = match &format {
                Some(f) => format!("{stem} - {name} - {f}"),
                None => format!("{stem} - {name}"),
            };
            if filter.is_some_and(|f| !full.contains(f)) {
                continue;
            }
            let failure =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case, format.as_deref(), options)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                        Err(format!("engine panicked: {}", msg.unwrap_or_default()))
                    })
                    .err();
            results.push(CaseResult { name: full, failure });
        }
    }
    Ok(results)
}

fn statements(case: &Json, format: Option<&str>) -> Vec<String> {
    case.get("statements")
        .and_then(Json::as_array)
        .map(|s| {
            s.iter()
                .filter_map(Json::as_str)
                .map(|t| match format {
                    Some(f) => t.replace("{FORMAT}", f),
                    None => t.to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn run_case(case: &Json, format: Option<&str>, options: Options) -> Result<(), String> {
    let mut engine = Engine::default();
    if let Some(props) = case.get("properties").and_then(Json::as_object) {
        for (k, v) in props {
            let v = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            engine.set_property(k, &v)?;
        }
    }
    let expect_error = case.get("expectedException").or_else(|| case.get("expectedError"));
    if case.get("responses").is_some() || (case.get("expectedError").is_some() && case.get("outputs").is_none()) {
        return run_rest(case, format, &mut engine, expect_error);
    }
    for (i, sql) in statements(case, format).iter().enumerate() {
        if let Err(e) = execute_text(&mut engine, sql) {
            return if expect_error.is_some() { Ok(()) } else { Err(format!("statement {} rejected: {e}", i + 1)) };
        }
    }
    if let Some(n) = options.repartition {
        for (topic, _) in engine.use_repartition_topics(REPARTITION_PREFIX) {
            engine.repartition_partitions.insert(topic, n);
        }
    }
    let produced = feed_inputs(case, &mut engine)?;
    if let Some(expected) = expect_error {
        let msg = expected.get("message").and_then(Json::as_str).unwrap_or("");
        if !engine.errors.is_empty() {
            return Ok(());
        }
        return Err(format!("expected the statements to be rejected ({msg}), but they were accepted"));
    }
    compare_outputs(case, &engine, &produced)?;
    check_post(case, &engine)
}

fn execute_text(engine: &mut Engine, sql: &str) -> Result<Vec<Outcome>, String> {
    let parsed = sluice_sql::parse_statements(sql).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (statement, text) in parsed {
        out.push(engine.execute(&statement, &text).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The source whose topic an input goes to: a declared source before a query's sink.
fn source_for_topic<'a>(engine: &'a Engine, topic: &str) -> Option<&'a Source> {
    let sinks: Vec<&str> = engine.queries.iter().map(|q| q.sink.as_str()).collect();
    let mut candidates: Vec<&Source> = engine.catalog.sources().filter(|s| s.topic == topic).collect();
    candidates.sort_by_key(|s| sinks.contains(&s.name.as_str()));
    candidates.into_iter().next()
}

fn columns(s: &Source, role: ColumnRole) -> Vec<(String, SqlType)> {
    s.schema
        .key
        .iter()
        .chain(&s.schema.value)
        .filter(|c| c.role == role)
        .map(|c| (c.name.clone(), c.ty.clone()))
        .collect()
}

fn window_of(json: Option<&Json>) -> Option<Window> {
    let w = json?;
    Some(Window { start: w.get("start")?.as_i64()?, end: w.get("end")?.as_i64()? })
}

fn feed_inputs(case: &Json, engine: &mut Engine) -> Result<BTreeMap<String, Vec<Record>>, String> {
    let mut produced: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    let mut offsets: BTreeMap<String, i64> = BTreeMap::new();
    let inputs = case.get("inputs").and_then(Json::as_array).cloned().unwrap_or_default();
    for (n, input) in inputs.iter().enumerate() {
        let topic = input.get("topic").and_then(Json::as_str).ok_or_else(|| format!("input {n} has no topic"))?;
        let source = source_for_topic(engine, topic)
            .ok_or_else(|| format!("input {n}: no stream or table reads topic '{topic}'"))?
            .clone();
        let key = encode_key(&source, input.get("key"), window_of(input.get("window")))
            .map_err(|e| format!("input {n}: key: {e}"))?;
        let value = encode_value(&source, input.get("value")).map_err(|e| format!("input {n}: value: {e}"))?;
        let offset = offsets.entry(topic.to_owned()).or_insert(0);
        let headers = input
            .get("headers")
            .and_then(Json::as_array)
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        use base64::Engine as _;
                        let k = h.get("KEY")?.as_str()?.to_owned();
                        let v = h
                            .get("VALUE")
                            .and_then(Json::as_str)
                            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                        Some((k, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rec = Record {
            topic: topic.to_owned(),
            key,
            value,
            timestamp: input.get("timestamp").and_then(Json::as_i64).unwrap_or(0),
            partition: 0,
            offset: *offset,
            headers,
        };
        *offset += 1;
        for r in engine.process(rec) {
            if r.topic.starts_with(REPARTITION_PREFIX) {
                continue;
            }
            produced.entry(r.topic.clone()).or_default().push(r);
        }
    }
    Ok(produced)
}

fn encode_key(source: &Source, key: Option<&Json>, window: Option<Window>) -> Result<Option<Vec<u8>>, String> {
    let cols = columns(source, ColumnRole::Key);
    let serde = Serde::new(&source.key_format, cols.clone(), true)?;
    let values = match key {
        None | Some(Json::Null) => None,
        Some(_) if cols.is_empty() => None,
        Some(j) if source.key_format.format == Format::Delimited => Some(vec![Value::String(j.to_string())]),
        Some(j) => Some(json_to_values(j, &cols, true)?),
    };
    let mut bytes = match (&values, source.key_format.format) {
        (_, Format::None) => None,
        (_, _) if cols.is_empty() => None,
        (Some(_), Format::Delimited) => match key {
            Some(Json::String(text)) => Some(text.as_bytes().to_vec()),
            Some(other) => Some(other.to_string().into_bytes()),
            None => None,
        },
        (Some(v), Format::Json) if cols.len() == 1 => {
            Some(serde_json::to_vec(&key_json(&v[0])).map_err(|e| e.to_string())?)
        }
        (Some(v), _) => serde.encode(Some(v))?,
        (None, _) => None,
    };
    if let Some(kind) = source.window {
        let w = window.unwrap_or(Window { start: 0, end: 0 });
        bytes = Some(format::window_key(bytes.unwrap_or_default(), w, kind));
    }
    Ok(bytes)
}

fn key_json(v: &Value) -> Json {
    serde_json::from_str(&format::to_json_text(v)).unwrap_or(Json::Null)
}

fn encode_value(source: &Source, value: Option<&Json>) -> Result<Option<Vec<u8>>, String> {
    let Some(v) = value else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    match source.value_format.format {
        Format::Json => Ok(Some(serde_json::to_vec(v).map_err(|e| e.to_string())?)),
        Format::Delimited => match v {
            Json::String(s) => Ok(Some(s.as_bytes().to_vec())),
            other => Ok(Some(other.to_string().into_bytes())),
        },
        _ => {
            let cols = columns(source, ColumnRole::Value);
            let serde = Serde::new(&source.value_format, cols.clone(), false)?;
            serde.encode(Some(&json_to_values(v, &cols, false)?))
        }
    }
}

fn json_to_values(j: &Json, cols: &[(String, SqlType)], key: bool) -> Result<Vec<Value>, String> {
    if cols.len() == 1 && (key || !j.is_object()) {
        return Ok(vec![format::from_json(j, &cols[0].1)?]);
    }
    let Json::Object(map) = j else { return Err(format!("expected an object for {} columns, got {j}", cols.len())) };
    cols.iter()
        .map(|(n, t)| {
            let f = map.get(n).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v));
            f.map_or(Ok(Value::Null), |f| format::from_json(f, t))
        })
        .collect()
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Decimal(d) => serde_json::from_str(&value::plain_decimal(d)).unwrap_or(Json::Null),
        Value::Timestamp(_) | Value::Date(_) | Value::Time(_) => Json::String(value::to_text(v).unwrap_or_default()),
        Value::Array(items) => Json::Array(items.iter().map(value_json).collect()),
        Value::Struct(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect()),
        Value::Map(entries) => {
            Json::Object(entries.iter().map(|(k, v)| (value::to_text(k).unwrap_or_default(), value_json(v))).collect())
        }
        other => serde_json::from_str(&format::to_json_text(other)).unwrap_or(Json::Null),
    }
}

/// Decode an output record to JSON the way the expected outputs are written.
fn decode_output(engine: &Engine, rec: &Record) -> Result<(Json, Json, Option<Window>), String> {
    let sink = engine
        .queries
        .iter()
        .filter_map(|q| engine.catalog.get(&q.sink))
        .find(|s| s.topic == rec.topic)
        .or_else(|| source_for_topic(engine, &rec.topic))
        .ok_or_else(|| format!("no source for topic {}", rec.topic))?;
    let (key_bytes, window) = match (sink.window, &rec.key) {
        (Some(kind), Some(k)) => {
            let (inner, w) = format::split_window_key(k, kind)?;
            (if inner.is_empty() { None } else { Some(inner.to_vec()) }, Some(w))
        }
        (_, k) => (k.clone(), None),
    };
    let key_cols = columns(sink, ColumnRole::Key);
    let key = match key_bytes {
        None => Json::Null,
        Some(b) => match sink.key_format.format {
            Format::Json => serde_json::from_slice(&b).map_err(|e| format!("key is not JSON: {e}"))?,
            Format::Delimited => Json::String(String::from_utf8_lossy(&b).into_owned()),
            _ => {
                let serde = Serde::new(&sink.key_format, key_cols.clone(), true)?;
                match serde.decode(Some(&b))? {
                    None => Json::Null,
                    Some(values) if values.len() == 1 => value_json(&values[0]),
                    Some(values) if sink.key_format.format == Format::Delimited => Json::String(
                        values.iter().map(|v| value::to_text(v).unwrap_or_default()).collect::<Vec<_>>().join(","),
                    ),
                    Some(values) => Json::Object(
                        key_cols.iter().zip(&values).map(|((n, _), v)| (n.clone(), value_json(v))).collect(),
                    ),
                }
            }
        },
    };
    let value = match &rec.value {
        None => Json::Null,
        Some(b) => match sink.value_format.format {
            Format::Json => serde_json::from_slice(b).map_err(|e| format!("value is not JSON: {e}"))?,
            Format::Delimited => Json::String(String::from_utf8_lossy(b).into_owned()),
            _ => {
                let cols = columns(sink, ColumnRole::Value);
                let serde = Serde::new(&sink.value_format, cols.clone(), false)?;
                match serde.decode(Some(b))? {
                    None => Json::Null,
                    Some(values) if values.len() == 1 => value_json(&values[0]),
                    Some(values) => {
                        Json::Object(cols.iter().zip(&values).map(|((n, _), v)| (n.clone(), value_json(v))).collect())
                    }
                }
            }
        },
    };
    Ok((key, value, window))
}

/// JSON equality with doubles within 1e-6 and numbers compared by value.
fn json_equal(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(a), Json::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-6 * x.abs().max(1.0),
            _ => a == b,
        },
        (Json::Object(a), Json::Object(b)) => {
            // Field names as the sink's schema-aware deserializer reads them: case-insensitively.
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    b.get(k)
                        .or_else(|| b.iter().find(|(bk, _)| bk.eq_ignore_ascii_case(k)).map(|(_, w)| w))
                        .is_some_and(|w| json_equal(v, w))
                })
        }
        (Json::Array(a), Json::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_equal(x, y)),
        (Json::String(a), Json::Number(_)) | (Json::Number(_), Json::String(a)) => {
            // Decimal text in one, a number in the other.
            let other = if let Json::Number(n) = actual {
                n.to_string()
            } else if let Json::Number(n) = expected {
                n.to_string()
            } else {
                String::new()
            };
            a.parse::<f64>().ok().zip(other.parse::<f64>().ok()).is_some_and(|(x, y)| (x - y).abs() <= 1e-9)
        }
        _ => expected == actual,
    }
}

fn compare_outputs(case: &Json, engine: &Engine, produced: &BTreeMap<String, Vec<Record>>) -> Result<(), String> {
    let expected = case.get("outputs").and_then(Json::as_array).cloned().unwrap_or_default();
    let mut by_topic: Vec<(String, Vec<Json>)> = Vec::new();
    for e in expected {
        let topic = e.get("topic").and_then(Json::as_str).unwrap_or("").to_owned();
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(e),
            None => by_topic.push((topic, vec![e])),
        }
    }
    for (topic, want) in &by_topic {
        let empty = Vec::new();
        let got = produced.get(topic).unwrap_or(&empty);
        for (i, w) in want.iter().enumerate() {
            let Some(rec) = got.get(i) else {
                return Err(format!(
                    "topic {topic}: expected {} records, got {} (missing #{}: key={} value={})",
                    want.len(),
                    got.len(),
                    i + 1,
                    w.get("key").unwrap_or(&Json::Null),
                    w.get("value").unwrap_or(&Json::Null)
                ));
            };
            let (key, value, window) = decode_output(engine, rec)?;
            let want_key = w.get("key").cloned().unwrap_or(Json::Null);
            let want_value = w.get("value").cloned().unwrap_or(Json::Null);
            let key_ok = json_equal(&want_key, &key);
            let value_ok = json_equal(&want_value, &value);
            let ts_ok = w.get("timestamp").and_then(Json::as_i64).is_none_or(|t| t == rec.timestamp);
            let window_ok = match window_of(w.get("window")) {
                None => true,
                Some(ew) => window.is_some_and(|aw| aw.start == ew.start && aw.end == ew.end),
            };
            if !(key_ok && value_ok && ts_ok && window_ok) {
                return Err(format!(
                    "topic {topic} record #{}: expected key={want_key} value={want_value} timestamp={} window={}, got key={key} value={value} timestamp={} window={}",
                    i + 1,
                    w.get("timestamp").map_or("-".into(), |t| t.to_string()),
                    w.get("window").map_or("-".into(), |t| t.to_string()),
                    rec.timestamp,
                    window.map_or("-".into(), |w| format!("[{},{}]", w.start, w.end)),
                ));
            }
        }
        if got.len() > want.len() {
            let (k, v, _) = decode_output(engine, &got[want.len()])?;
            return Err(format!(
                "topic {topic}: expected {} records, got {} (first extra: key={k} value={v})",
                want.len(),
                got.len()
            ));
        }
    }
    Ok(())
}

fn normalize_schema(s: &str) -> String {
    let s = s.replace('`', "").to_ascii_uppercase();
    let s = regex::Regex::new(r"\bINTEGER\b").map(|re| re.replace_all(&s, "INT").into_owned()).unwrap_or(s);
    let s = regex::Regex::new(r"\bVARCHAR\b").map(|re| re.replace_all(&s, "STRING").into_owned()).unwrap_or(s);
    let s = s.replace(", ", ",").replace(" ,", ",");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_post(case: &Json, engine: &Engine) -> Result<(), String> {
    let Some(post) = case.get("post") else { return Ok(()) };
    for s in post.get("sources").and_then(Json::as_array).cloned().unwrap_or_default() {
        let name = s.get("name").and_then(Json::as_str).unwrap_or("");
        let source = engine.catalog.get(name).ok_or_else(|| format!("post: source {name} does not exist"))?;
        if let Some(t) = s.get("type").and_then(Json::as_str) {
            let kind = if source.kind == SourceKind::Table { "table" } else { "stream" };
            if !t.eq_ignore_ascii_case(kind) {
                return Err(format!("post: {name} is a {kind}, expected a {t}"));
            }
        }
        if let Some(schema) = s.get("schema").and_then(Json::as_str) {
            let actual = crate::query::source_schema_text(source);
            if normalize_schema(schema) != normalize_schema(&actual) {
                return Err(format!("post: {name} schema is `{actual}`, expected `{schema}`"));
            }
        }
        if let Some(kf) = s.get("keyFormat") {
            if let Some(f) = kf.get("format").and_then(Json::as_str)
                && !f.eq_ignore_ascii_case(&source.key_format.format.to_string())
            {
                return Err(format!("post: {name} key format is {}, expected {f}", source.key_format.format));
            }
            let (wt, ws) = match source.window {
                None => (None, None),
                Some(WindowType::Session) => (Some("SESSION"), None),
                Some(WindowType::Tumbling { size_ms }) => (Some("TUMBLING"), Some(size_ms)),
                Some(WindowType::Hopping { size_ms }) => (Some("HOPPING"), Some(size_ms)),
            };
            if let Some(t) = kf.get("windowType")
                && t.as_str() != wt
            {
                return Err(format!("post: {name} window type is {wt:?}, expected {t}"));
            }
            if let Some(size) = kf.get("windowSize").and_then(Json::as_i64)
                && Some(size) != ws
            {
                return Err(format!("post: {name} window size is {ws:?}, expected {size}"));
            }
        }
        if let Some(f) = s.get("valueFormat").and_then(|v| v.get("format")).and_then(Json::as_str)
            && !f.eq_ignore_ascii_case(&source.value_format.format.to_string())
        {
            return Err(format!("post: {name} value format is {}, expected {f}", source.value_format.format));
        }
    }
    if let Some(pattern) = post.get("topics").and_then(|t| t.get("blacklist")).and_then(Json::as_str) {
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("post: bad blacklist: {e}"))?;
        for q in &engine.queries {
            for t in &q.internal_topics {
                let topic = format!("_confluent-ksql-default_query_{}-{t}", q.id);
                if re.is_match(&topic) {
                    return Err(format!("post: the plan creates topic {topic}, which the blacklist {pattern} forbids"));
                }
            }
        }
    }
    Ok(())
}

fn run_rest(case: &Json, format: Option<&str>, engine: &mut Engine, expect_error: Option<&Json>) -> Result<(), String> {
    let texts = statements(case, format);
    let mut parsed = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        match sluice_sql::parse_statements(t) {
            Ok(p) => parsed.extend(p),
            Err(e) => {
                return if expect_error.is_some() { Ok(()) } else { Err(format!("statement {} rejected: {e}", i + 1)) };
            }
        }
    }
    let responses = case.get("responses").and_then(Json::as_array).cloned().unwrap_or_default();
    let first_query = parsed.iter().position(|(s, _)| matches!(s, Statement::Query(_))).unwrap_or(parsed.len());
    let mut outcomes = Vec::new();
    for (i, (s, text)) in parsed.iter().enumerate() {
        if i == first_query {
            feed_inputs(case, engine)?;
        }
        match engine.execute(s, text) {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                return if expect_error.is_some() { Ok(()) } else { Err(format!("statement {} rejected: {e}", i + 1)) };
            }
        }
    }
    if first_query == parsed.len() {
        feed_inputs(case, engine)?;
    }
    if let Some(e) = expect_error {
        let msg = e.get("message").and_then(Json::as_str).unwrap_or("");
        return Err(format!("expected an error ({msg}), but every statement succeeded"));
    }
    for (i, (response, outcome)) in responses.iter().zip(&outcomes).enumerate() {
        let Some(query) = response.get("query").and_then(Json::as_array) else { continue };
        let Outcome::Rows { schema, rows } = outcome else {
            return Err(format!("statement {}: expected query rows, got {outcome:?}", i + 1));
        };
        let mut want_rows = Vec::new();
        for part in query {
            if let Some(h) = part.get("header").and_then(|h| h.get("schema")).and_then(Json::as_str)
                && normalize_schema(h) != normalize_schema(schema)
            {
                return Err(format!("statement {}: header schema is `{schema}`, expected `{h}`", i + 1));
            }
            if let Some(cols) = part.get("row").and_then(|r| r.get("columns")).and_then(Json::as_array) {
                want_rows.push(Json::Array(cols.clone()));
            }
        }
        let got: Vec<Json> = rows.iter().map(|r| Json::Array(r.iter().map(value_json).collect())).collect();
        let mut unmatched = got.clone();
        let mut ok = want_rows.len() == got.len();
        for w in &want_rows {
            match unmatched.iter().position(|g| json_equal(w, g)) {
                Some(p) => {
                    unmatched.remove(p);
                }
                None => ok = false,
            }
        }
        if !ok {
            return Err(format!(
                "statement {}: expected rows {}, got {}",
                i + 1,
                Json::Array(want_rows),
                Json::Array(got)
            ));
        }
    }
    Ok(())
}
