//! Reading a source's records into rows, and writing a sink's rows into records.

use sluice_sql::{
    SqlType,
    ast::SourceKind,
    catalog::{ColumnRole, Source, WindowType},
};

use crate::{
    expr::Scope,
    format::{self, Serde, Window},
    value::{self, Value},
};

/// A Kafka record as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp, ms.
    pub timestamp: i64,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A decoded record.
#[derive(Debug, Clone)]
pub struct Input {
    /// Key columns (NULLs for a null key).
    pub key: Vec<Value>,
    /// Value columns; `None` for a tombstone.
    pub value: Option<Vec<Value>>,
    /// Event time.
    pub ts: i64,
    /// The window of a windowed key.
    pub window: Option<Window>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Names of the pseudo columns, in scope order after the declared columns.
pub const PSEUDO: [(&str, SqlType); 3] =
    [("ROWTIME", SqlType::Bigint), ("ROWPARTITION", SqlType::Int), ("ROWOFFSET", SqlType::Bigint)];

/// Decodes one source's records.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The source.
    pub source: Source,
    /// Its alias in the query.
    pub alias: String,
    key: Serde,
    value: Serde,
    timestamp: Option<(usize, Option<String>)>,
}

impl Reader {
    /// A reader of `source` under `alias`.
    pub fn new(source: &Source, alias: &str) -> Result<Reader, String> {
        let cols = |role: fn(&ColumnRole) -> bool| -> Vec<(String, SqlType)> {
            source
                .schema
                .key
                .iter()
                .chain(&source.schema.value)
                .filter(|c| role(&c.role))
                .map(|c| (c.name.clone(), c.ty.clone()))
                .collect()
        };
        let key = Serde::new(&source.key_format, cols(|r| *r == ColumnRole::Key), true)?;
        let value = Serde::new(&source.value_format, cols(|r| *r == ColumnRole::Value), false)?;
        let mut reader = Reader { source: source.clone(), alias: alias.to_owned(), key, value, timestamp: None };
        if let Some(ts) = &source.timestamp {
            let scope = reader.scope();
            if let Some(i) = scope.fields.iter().position(|f| f.name == ts.column) {
                reader.timestamp = Some((i, ts.format.clone()));
            }
        }
        Ok(reader)
    }

    /// Serialize key columns in the source's key format (how its producers partition them).
    pub fn encode_key(&self, key: &[Value]) -> Result<Option<Vec<u8>>, String> {
        self.key.encode(Some(key))
    }

    /// Whether the source is windowed.
    pub fn window(&self) -> Option<WindowType> {
        self.source.window
    }

    /// The row layout: key, value and header columns, the pseudo columns, then the window bounds.
    pub fn scope(&self) -> Scope {
        let mut s = Scope::default();
        let q = Some(self.alias.as_str());
        let schema = &self.source.schema;
        for c in schema.key.iter().chain(&schema.value).chain(&schema.headers) {
            s.push(q, c.name.clone(), c.ty.clone());
        }
        for (n, t) in PSEUDO {
            s.push(q, n, t);
        }
        if self.source.window.is_some() {
            s.push(q, "WINDOWSTART", SqlType::Bigint);
            s.push(q, "WINDOWEND", SqlType::Bigint);
        }
        s
    }

    /// The columns `SELECT *` expands to: (name, type, is key), window bounds of a windowed
    /// source included as key columns.
    pub fn star(&self) -> Vec<(usize, bool)> {
        let schema = &self.source.schema;
        let mut out = Vec::new();
        let mut i = 0;
        for _ in &schema.key {
            out.push((i, true));
            i += 1;
        }
        for _ in schema.value.iter().chain(&schema.headers) {
            out.push((i, false));
            i += 1;
        }
        out
    }

    /// Decode a record of the source's topic.
    pub fn decode(&self, rec: &Record) -> Result<Input, String> {
        let (key_bytes, window) = match (self.source.window, &rec.key) {
            (Some(kind), Some(k)) => {
                let (inner, w) = format::split_window_key(k, kind)?;
                (Some(inner.to_vec()), Some(w))
            }
            (_, k) => (k.clone(), None),
        };
        let key = self
            .key
            .decode(key_bytes.as_deref())
            .map_err(|e| format!("Failed to deserialise key: {e}"))?
            .unwrap_or_else(|| vec![Value::Null; self.key.columns().len()]);
        let value = self.value.decode(rec.value.as_deref()).map_err(|e| format!("Failed to deserialise value: {e}"))?;
        let mut input = Input {
            key,
            value,
            ts: rec.timestamp,
            window,
            partition: rec.partition,
            offset: rec.offset,
            headers: rec.headers.clone(),
        };
        if let Some((i, fmt)) = &self.timestamp
            && input.value.is_some()
        {
            let row = self.row(&input);
            input.ts = match (&row[*i], fmt) {
                (Value::Bigint(t) | Value::Timestamp(t), _) => *t,
                (Value::String(s), Some(f)) => parse_with_format(s, f)?,
                (Value::Null, _) => return Err(format!("Timestamp column {} is NULL", self.scope().fields[*i].name)),
                (other, _) => return Err(format!("Invalid timestamp {other:?}")),
            };
            if input.ts < 0 {
                return Err(format!("Negative timestamp {}", input.ts));
            }
        }
        Ok(input)
    }

    /// The row of a decoded record in [`Reader::scope`] order.
    pub fn row(&self, input: &Input) -> Vec<Value> {
        let schema = &self.source.schema;
        let mut row = Vec::with_capacity(schema.key.len() + schema.value.len() + 5);
        row.extend(input.key.iter().cloned());
        match &input.value {
            Some(v) => row.extend(v.iter().cloned()),
            None => row.extend(std::iter::repeat_n(Value::Null, schema.value.len())),
        }
        for h in &schema.headers {
            row.push(match &h.role {
                ColumnRole::Header(Some(k)) => input
                    .headers
                    .iter()
                    .rev()
                    .find(|(name, _)| name == k)
                    .and_then(|(_, v)| v.clone())
                    .map_or(Value::Null, Value::Bytes),
                _ => Value::Array(
                    input
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            Value::Struct(vec![
                                ("KEY".into(), Value::String(k.clone())),
                                ("VALUE".into(), v.clone().map_or(Value::Null, Value::Bytes)),
                            ])
                        })
                        .collect(),
                ),
            });
        }
        row.push(Value::Bigint(input.ts));
        row.push(Value::Int(input.partition));
        row.push(Value::Bigint(input.offset));
        if self.source.window.is_some() {
            let w = input.window.unwrap_or(Window { start: 0, end: 0 });
            row.push(Value::Bigint(w.start));
            row.push(Value::Bigint(w.end));
        }
        row
    }

    /// Whether this is a table.
    pub fn is_table(&self) -> bool {
        self.source.kind == SourceKind::Table
    }
}

/// Parse a timestamp string with a `java.time` pattern (the common letters).
pub fn parse_with_format(text: &str, pattern: &str) -> Result<i64, String> {
    let chrono_fmt = java_pattern(pattern);
    if let Ok(t) = chrono::DateTime::parse_from_str(text, &chrono_fmt) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, &chrono_fmt) {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, &chrono_fmt) {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(0));
    }
    Err(format!("Failed to parse timestamp '{text}' with formatter '{pattern}'"))
}

/// Translate a `java.time` pattern to chrono's.
pub fn java_pattern(p: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let piece = match (c, n) {
            ('y', 2) | ('u', 2) => "%y",
            ('y', _) | ('u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', _) => "%3f",
            ('a', _) => "%p",
            ('X', _) | ('x', _) | ('Z', _) => "%z",
            ('E', _) => "%a",
            _ => "",
        };
        if piece.is_empty() {
            for _ in 0..n {
                out.push(c);
            }
        } else {
            out.push_str(piece);
        }
        i += n;
    }
    out
}

/// Writes a sink's rows.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The sink topic.
    pub topic: String,
    key: Serde,
    value: Serde,
    window: Option<WindowType>,
    /// Index into the value columns (then the key columns) of the `TIMESTAMP` column.
    timestamp: Option<(bool, usize, Option<String>)>,
}

impl Writer {
    /// A writer for a sink source.
    pub fn new(sink: &Source) -> Result<Writer, String> {
        let key_cols: Vec<(String, SqlType)> = sink.schema.key.iter().map(|c| (c.name.clone(), c.ty.clone())).collect();
        let value_cols: Vec<(String, SqlType)> =
            sink.schema.value.iter().map(|c| (c.name.clone(), c.ty.clone())).collect();
        let timestamp = sink.timestamp.as_ref().and_then(|t| {
            value_cols
                .iter()
                .position(|(n, _)| *n == t.column)
                .map(|i| (false, i, t.format.clone()))
                .or_else(|| key_cols.iter().position(|(n, _)| *n == t.column).map(|i| (true, i, t.format.clone())))
        });
        Ok(Writer {
            topic: sink.topic.clone(),
            key: Serde::new(&sink.key_format, key_cols, true)?,
            value: Serde::new(&sink.value_format, value_cols, false)?,
            window: sink.window,
            timestamp,
        })
    }

    /// Encode one output row.
    pub fn write(
        &self,
        key: &[Value],
        value: Option<&[Value]>,
        ts: i64,
        window: Option<Window>,
    ) -> Result<Record, String> {
        let mut key_bytes =
            if key.iter().all(Value::is_null) && !key.is_empty() { None } else { self.key.encode(Some(key))? };
        if let (Some(kind), Some(w)) = (self.window, window) {
            key_bytes = Some(format::window_key(key_bytes.unwrap_or_default(), w, kind));
        }
        let mut timestamp = ts;
        if let (Some((in_key, i, fmt)), Some(v)) = (&self.timestamp, value) {
            let cell = if *in_key { key.get(*i) } else { v.get(*i) };
            match (cell, fmt) {
                (Some(Value::Bigint(t) | Value::Timestamp(t)), _) => timestamp = *t,
                (Some(Value::String(s)), Some(f)) => timestamp = parse_with_format(s, f)?,
                _ => {}
            }
        }
        Ok(Record {
            topic: self.topic.clone(),
            key: key_bytes,
            value: self.value.encode(value)?,
            timestamp,
            partition: 0,
            offset: 0,
            headers: Vec::new(),
        })
    }
}

/// A value printed for a message.
pub fn show(v: &Value) -> String {
    value::to_text(v).unwrap_or_else(|| "null".into())
}
