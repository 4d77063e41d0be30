//! The catalog: the streams and tables a script declares, with their schemas, topics, formats,
//! timestamps and windows — what `CREATE STREAM/TABLE (...) WITH (...)` means, checked as
//! ksqlDB checks it.

use std::{collections::BTreeMap, fmt};

use crate::{
    ast::{ColumnConstraint, CreateSource, Ident, Literal, Properties, Property, SourceKind},
    error::{Pos, SqlError},
    types::SqlType,
};

/// Pseudo columns every source has; they cannot be declared.
pub const PSEUDO_COLUMNS: &[&str] = &["ROWTIME", "ROWPARTITION", "ROWOFFSET"];
/// Window bounds of windowed sources; they cannot be declared either.
pub const WINDOW_BOUNDS: &[&str] = &["WINDOWSTART", "WINDOWEND"];

/// A column's role in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnRole {
    /// Part of the record key.
    Key,
    /// Part of the record value.
    Value,
    /// All headers (`HEADERS`), or one header's value (`HEADER('k')`).
    Header(Option<String>),
}

/// A declared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name as resolved.
    pub name: String,
    /// Type.
    pub ty: SqlType,
    /// Key, value or header.
    pub role: ColumnRole,
}

/// The columns of a source, in declaration order within each role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Key columns.
    pub key: Vec<Column>,
    /// Value columns.
    pub value: Vec<Column>,
    /// Header columns.
    pub headers: Vec<Column>,
}

impl Schema {
    /// A column by name, whatever its role.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.key.iter().chain(&self.value).chain(&self.headers).find(|c| c.name == name)
    }
}

/// Serialization formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON objects (or a bare JSON value with a single unwrapped column).
    Json,
    /// Comma- (or otherwise-) separated text.
    Delimited,
    /// Kafka's own primitive serializers.
    Kafka,
    /// No key.
    None,
    /// Avro with a Schema Registry (not supported yet).
    Avro,
    /// Protobuf with a Schema Registry (not supported yet).
    Protobuf,
    /// JSON with a Schema Registry (not supported yet).
    JsonSr,
}

impl Format {
    /// Parse a format name as ksqlDB does (case-insensitive).
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name.to_ascii_uppercase().as_str() {
            "JSON" => Format::Json,
            "DELIMITED" => Format::Delimited,
            "KAFKA" => Format::Kafka,
            "NONE" => Format::None,
            "AVRO" => Format::Avro,
            "PROTOBUF" | "PROTOBUF_NOSR" => Format::Protobuf,
            "JSON_SR" => Format::JsonSr,
            _ => return None,
        })
    }

    /// Whether this engine can read and write it yet.
    pub fn is_supported(self) -> bool {
        matches!(self, Format::Json | Format::Delimited | Format::Kafka | Format::None)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Delimited => "DELIMITED",
            Format::Kafka => "KAFKA",
            Format::None => "NONE",
            Format::Avro => "AVRO",
            Format::Protobuf => "PROTOBUF",
            Format::JsonSr => "JSON_SR",
        })
    }
}

/// A format with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatSpec {
    /// The format.
    pub format: Format,
    /// `DELIMITED`'s separator (default `,`).
    pub delimiter: Option<char>,
    /// Whether a single column is wrapped in an object/record (`WRAP_SINGLE_VALUE`); `None` =
    /// the format's default.
    pub wrap_single_value: Option<bool>,
}

impl FormatSpec {
    /// A format with default options.
    pub fn plain(format: Format) -> Self {
        FormatSpec { format, delimiter: None, wrap_single_value: None }
    }
}

/// How a windowed source's keys are windowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowType {
    /// Fixed windows of a size.
    Tumbling {
        /// Size in milliseconds.
        size_ms: i64,
    },
    /// Overlapping fixed windows of a size.
    Hopping {
        /// Size in milliseconds.
        size_ms: i64,
    },
    /// Sessions.
    Session,
}

/// Where a record's event time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampColumn {
    /// The column.
    pub column: String,
    /// `TIMESTAMP_FORMAT` for a STRING column (a `java.time` pattern).
    pub format: Option<String>,
}

/// A stream or table.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Name as resolved.
    pub name: String,
    /// Stream or table.
    pub kind: SourceKind,
    /// The Kafka topic.
    pub topic: String,
    /// Columns.
    pub schema: Schema,
    /// Key format.
    pub key_format: FormatSpec,
    /// Value format.
    pub value_format: FormatSpec,
    /// Event-time column, when not the record timestamp.
    pub timestamp: Option<TimestampColumn>,
    /// Windowed key, for sources over windowed topics.
    pub window: Option<WindowType>,
    /// `PARTITIONS` to create the topic with, when given.
    pub partitions: Option<i32>,
    /// `REPLICAS` to create the topic with, when given.
    pub replicas: Option<i16>,
    /// `CREATE SOURCE`: read-only, materialized.
    pub read_only: bool,
    /// The statement that created it.
    pub sql: String,
}

/// Defaults that `WITH` properties fall back on (ksqlDB's `ksql.persistence.default.format.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Key format when none is given (ksqlDB: `KAFKA`).
    pub key_format: Format,
    /// Value format when none is given (ksqlDB: none, the property is required).
    pub value_format: Option<Format>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { key_format: Format::Kafka, value_format: None }
    }
}

/// The streams and tables declared so far.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    sources: BTreeMap<String, Source>,
    /// Format defaults.
    pub defaults: Defaults,
}

const SOURCE_PROPERTIES: &[&str] = &[
    "KAFKA_TOPIC",
    "PARTITIONS",
    "REPLICAS",
    "FORMAT",
    "KEY_FORMAT",
    "VALUE_FORMAT",
    "KEY_DELIMITER",
    "VALUE_DELIMITER",
    "WRAP_SINGLE_VALUE",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "WINDOW_TYPE",
    "WINDOW_SIZE",
    "RETENTION_MS",
    "CLEANUP_POLICY",
    "KEY_SCHEMA_ID",
    "VALUE_SCHEMA_ID",
    "KEY_SCHEMA_FULL_NAME",
    "VALUE_SCHEMA_FULL_NAME",
    "VALUE_AVRO_SCHEMA_FULL_NAME",
];

impl Catalog {
    /// A source by resolved name.
    pub fn get(&self, name: &str) -> Option<&Source> {
        self.sources.get(name)
    }

    /// Every source, by name.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.values()
    }

    /// Remove a source; returns it if it existed.
    pub fn remove(&mut self, name: &str) -> Option<Source> {
        self.sources.remove(name)
    }

    /// Add a source, replacing one of the same name when `replace` is set.
    pub fn insert(&mut self, source: Source, replace: bool, pos: Pos) -> Result<(), SqlError> {
        if !replace && self.sources.contains_key(&source.name) {
            let existing = &self.sources[&source.name];
            return Err(SqlError::new(
                pos,
                format!(
                    "Cannot add {} '{}': A {} with the same name already exists",
                    kind_word(source.kind),
                    source.name,
                    kind_word(existing.kind)
                ),
            ));
        }
        self.sources.insert(source.name.clone(), source);
        Ok(())
    }

    /// Check a `CREATE STREAM/TABLE (...) WITH (...)` and add the source it declares.
    pub fn create_source(&mut self, statement: &CreateSource, sql: &str) -> Result<&Source, SqlError> {
        if statement.if_not_exists && self.sources.contains_key(&statement.name.name) {
            return Ok(&self.sources[&statement.name.name]);
        }
        let source = self.declare(statement, sql)?;
        let name = source.name.clone();
        self.insert(source, statement.or_replace, statement.pos)?;
        Ok(&self.sources[&name])
    }

    fn declare(&self, statement: &CreateSource, sql: &str) -> Result<Source, SqlError> {
        let props = &statement.properties;
        let pos = statement.pos;
        for p in &props.0 {
            if !SOURCE_PROPERTIES.contains(&p.name.as_str()) {
                return Err(SqlError::new(p.pos, format!("Invalid config variable(s) in the WITH clause: {}", p.name)));
            }
        }
        let topic = string_property(props, "KAFKA_TOPIC")?.ok_or_else(|| {
            SqlError::new(pos, "Missing required property \"KAFKA_TOPIC\" which has no default value.")
        })?;
        let schema = self.schema(statement)?;
        let (key_format, value_format) = self.formats(props, pos)?;
        check_format_supports(&key_format, &schema.key, "key", pos)?;
        check_format_supports(&value_format, &schema.value, "value", pos)?;
        let timestamp = timestamp_column(props, &schema)?;
        let window = window_type(props)?;
        let partitions = match props.get("PARTITIONS") {
            Some(p) => Some(positive_int(p)?),
            None => None,
        };
        let replicas = match props.get("REPLICAS") {
            Some(p) => {
                Some(i16::try_from(positive_int(p)?).map_err(|_| SqlError::new(p.pos, "REPLICAS is too large"))?)
            }
            None => None,
        };
        Ok(Source {
            name: statement.name.name.clone(),
            kind: statement.kind,
            topic,
            schema,
            key_format,
            value_format,
            timestamp,
            window,
            partitions,
            replicas,
            read_only: statement.source,
            sql: sql.to_owned(),
        })
    }

    fn schema(&self, statement: &CreateSource) -> Result<Schema, SqlError> {
        let mut schema = Schema::default();
        let mut seen: Vec<&Ident> = Vec::new();
        for element in &statement.elements {
            let name = &element.name;
            if seen.iter().any(|s| s.name == name.name) {
                return Err(SqlError::new(name.pos, format!("Duplicate column names: `{}`", name.name)));
            }
            seen.push(name);
            if PSEUDO_COLUMNS.contains(&name.name.as_str()) || WINDOW_BOUNDS.contains(&name.name.as_str()) {
                return Err(SqlError::new(
                    name.pos,
                    format!("'{}' is a reserved column name. You cannot use it as a name for a column.", name.name),
                ));
            }
            let column = |role| Column { name: name.name.clone(), ty: element.ty.clone(), role };
            match (&element.constraint, statement.kind) {
                (ColumnConstraint::Key, SourceKind::Stream) | (ColumnConstraint::PrimaryKey, SourceKind::Table) => {
                    schema.key.push(column(ColumnRole::Key));
                }
                (ColumnConstraint::PrimaryKey, SourceKind::Stream) => {
                    return Err(SqlError::new(
                        name.pos,
                        format!(
                            "Column `{}` is a 'PRIMARY KEY' column: please use 'KEY' for streams.\n\
                             Tables have PRIMARY KEYs, which are unique and NON NULL.\n\
                             Streams have KEYs, which have no uniqueness or NON NULL constraints.",
                            name.name
                        ),
                    ));
                }
                (ColumnConstraint::Key, SourceKind::Table) => {
                    return Err(SqlError::new(
                        name.pos,
                        format!(
                            "Column `{}` is a 'KEY' column: please use 'PRIMARY KEY' for tables.\n\
                             Tables have PRIMARY KEYs, which are unique and NON NULL.\n\
                             Streams have KEYs, which have no uniqueness or NON NULL constraints.",
                            name.name
                        ),
                    ));
                }
                (ColumnConstraint::None, _) => schema.value.push(column(ColumnRole::Value)),
                (ColumnConstraint::Headers, _) => {
                    let expected = headers_type();
                    if element.ty != expected {
                        return Err(SqlError::new(
                            name.pos,
                            format!("Invalid type for HEADERS column: expected {expected}, got {}", element.ty),
                        ));
                    }
                    schema.headers.push(column(ColumnRole::Header(None)));
                }
                (ColumnConstraint::Header(key), _) => {
                    if element.ty != SqlType::Bytes {
                        return Err(SqlError::new(
                            name.pos,
                            format!("Invalid type for HEADER('{key}') column: expected BYTES, got {}", element.ty),
                        ));
                    }
                    schema.headers.push(column(ColumnRole::Header(Some(key.clone()))));
                }
            }
        }
        if statement.elements.is_empty() {
            return Err(SqlError::new(statement.pos, "The statement does not define any columns."));
        }
        if statement.kind == SourceKind::Table && schema.key.is_empty() {
            return Err(SqlError::new(statement.pos, "Tables require a PRIMARY KEY. Please define the PRIMARY KEY."));
        }
        Ok(schema)
    }

    fn formats(&self, props: &Properties, pos: Pos) -> Result<(FormatSpec, FormatSpec), SqlError> {
        let (key, value) = explicit_formats(props)?;
        let key = key.unwrap_or(self.defaults.key_format);
        let value = match value {
            Some(f) => f,
            None => self.defaults.value_format.ok_or_else(|| {
                SqlError::new(
                    pos,
                    "Statement is missing the 'VALUE_FORMAT' property from the WITH clause. Either provide one or set a \
                     default via the 'ksql.persistence.default.format.value' config.",
                )
            })?,
        };
        let mut key = FormatSpec::plain(key);
        let mut value = FormatSpec::plain(value);
        format_options(props, &mut key, &mut value)?;
        Ok((key, value))
    }
}

/// The formats `FORMAT`, `KEY_FORMAT` and `VALUE_FORMAT` name (`FORMAT` sets both, and excludes
/// the other two).
fn explicit_formats(props: &Properties) -> Result<(Option<Format>, Option<Format>), SqlError> {
    let format_of = |name: &str| -> Result<Option<(Format, Pos)>, SqlError> {
        match props.get(name) {
            None => Ok(None),
            Some(p) => {
                let text = property_string(p)?;
                Format::parse(&text)
                    .map(|f| Some((f, p.pos)))
                    .ok_or_else(|| SqlError::new(p.pos, format!("Unknown format: {}", text.to_ascii_uppercase())))
            }
        }
    };
    let both = format_of("FORMAT")?;
    let key = format_of("KEY_FORMAT")?;
    let value = format_of("VALUE_FORMAT")?;
    if let Some((_, at)) = both
        && (key.is_some() || value.is_some())
    {
        return Err(SqlError::new(
            at,
            "Cannot supply both 'KEY_FORMAT' and 'FORMAT' properties, as 'FORMAT' sets both key and value formats. \
             Either use just 'FORMAT', or use 'KEY_FORMAT' and 'VALUE_FORMAT'.",
        ));
    }
    Ok((both.or(key).map(|(f, _)| f), both.or(value).map(|(f, _)| f)))
}

/// Apply `KEY_DELIMITER`, `VALUE_DELIMITER` and `WRAP_SINGLE_VALUE` to the formats.
fn format_options(props: &Properties, key: &mut FormatSpec, value: &mut FormatSpec) -> Result<(), SqlError> {
    for (spec, property) in [(&mut *key, "KEY_DELIMITER"), (&mut *value, "VALUE_DELIMITER")] {
        if let Some(p) = props.get(property) {
            if spec.format != Format::Delimited {
                return Err(SqlError::new(p.pos, format!("{property} can only be used with DELIMITED format")));
            }
            spec.delimiter = Some(delimiter(p)?);
        }
    }
    if let Some(p) = props.get("WRAP_SINGLE_VALUE") {
        value.wrap_single_value = Some(match &p.value {
            Literal::Boolean(b) => *b,
            Literal::String(s) if s.eq_ignore_ascii_case("true") => true,
            Literal::String(s) if s.eq_ignore_ascii_case("false") => false,
            _ => return Err(SqlError::new(p.pos, "WRAP_SINGLE_VALUE must be true or false")),
        });
    }
    Ok(())
}

fn kind_word(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "stream",
        SourceKind::Table => "table",
    }
}

/// `ARRAY<STRUCT<KEY STRING, VALUE BYTES>>`: the type of a `HEADERS` column.
pub fn headers_type() -> SqlType {
    SqlType::Array(Box::new(SqlType::Struct(vec![("KEY".into(), SqlType::String), ("VALUE".into(), SqlType::Bytes)])))
}

fn property_string(p: &Property) -> Result<String, SqlError> {
    match &p.value {
        Literal::String(s) => Ok(s.clone()),
        other => Err(SqlError::new(p.pos, format!("{} must be a string, not {other}", p.name))),
    }
}

fn string_property(props: &Properties, name: &str) -> Result<Option<String>, SqlError> {
    props.get(name).map(property_string).transpose()
}

fn positive_int(p: &Property) -> Result<i32, SqlError> {
    let text = match &p.value {
        Literal::Integer(n) => n.clone(),
        Literal::String(s) => s.clone(),
        other => return Err(SqlError::new(p.pos, format!("{} must be a positive integer, not {other}", p.name))),
    };
    match text.trim().parse::<i32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(SqlError::new(p.pos, format!("{} must be a positive integer, not {text}", p.name))),
    }
}

fn delimiter(p: &Property) -> Result<char, SqlError> {
    let text = property_string(p)?;
    let named = match text.to_ascii_uppercase().as_str() {
        "TAB" => Some('\t'),
        "SPACE" => Some(' '),
        _ => None,
    };
    if let Some(c) = named {
        return Ok(c);
    }
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        (None, _) => Err(SqlError::new(
            p.pos,
            format!(
                "Configuration {} is invalid: Delimiter cannot be empty, if you meant to have a tab or space for \
                 delimiter, please use the special values 'TAB' or 'SPACE'",
                p.name
            ),
        )),
        _ => Err(SqlError::new(
            p.pos,
            format!(
                "Configuration {} is invalid: Delimiter should be a single character or one of the special values \
                 'TAB' or 'SPACE'",
                p.name
            ),
        )),
    }
}

/// What a format can carry: KAFKA and DELIMITED hold primitives only, KAFKA a single column,
/// NONE nothing, JSON maps only with STRING keys.
fn check_format_supports(spec: &FormatSpec, columns: &[Column], part: &str, pos: Pos) -> Result<(), SqlError> {
    let format = spec.format;
    if format == Format::None && !columns.is_empty() {
        let names: Vec<String> = columns.iter().map(|c| format!("`{}` {}", c.name, c.ty)).collect();
        return Err(SqlError::new(
            pos,
            format!("The 'NONE' format can only be used when no columns are defined. Got: [{}]", names.join(", ")),
        ));
    }
    if format == Format::Kafka && columns.len() > 1 {
        let names: Vec<String> = columns.iter().map(|c| format!("`{}` {}", c.name, c.ty)).collect();
        return Err(SqlError::new(
            pos,
            format!("The 'KAFKA' format only supports a single field. Got: [{}] for the {part}", names.join(", ")),
        ));
    }
    for column in columns {
        check_type(format, &column.ty, pos)?;
    }
    Ok(())
}

fn check_type(format: Format, ty: &SqlType, pos: Pos) -> Result<(), SqlError> {
    let unsupported = |name: &str| SqlError::new(pos, format!("The '{format}' format does not support type '{name}'"));
    match (format, ty) {
        (Format::Kafka | Format::Delimited, SqlType::Array(_)) => Err(unsupported("ARRAY")),
        (Format::Kafka | Format::Delimited, SqlType::Map(..)) => Err(unsupported("MAP")),
        (Format::Kafka | Format::Delimited, SqlType::Struct(_)) => Err(unsupported("STRUCT")),
        (Format::Kafka, SqlType::Boolean) => Err(unsupported("BOOLEAN")),
        (Format::Kafka, SqlType::Decimal { .. }) => Err(unsupported("DECIMAL")),
        (Format::Kafka, SqlType::Timestamp | SqlType::Date | SqlType::Time) => Err(unsupported(&ty.to_string())),
        (_, SqlType::Map(key, value)) => {
            if format == Format::Json && **key != SqlType::String {
                return Err(SqlError::new(pos, "JSON only supports MAP types with STRING keys"));
            }
            check_type(format, key, pos)?;
            check_type(format, value, pos)
        }
        (_, SqlType::Array(item)) => check_type(format, item, pos),
        (_, SqlType::Struct(fields)) => fields.iter().try_for_each(|(_, t)| check_type(format, t, pos)),
        _ => Ok(()),
    }
}

fn timestamp_column(props: &Properties, schema: &Schema) -> Result<Option<TimestampColumn>, SqlError> {
    let Some(p) = props.get("TIMESTAMP") else {
        if let Some(f) = props.get("TIMESTAMP_FORMAT") {
            return Err(SqlError::new(f.pos, "TIMESTAMP_FORMAT can only be used together with TIMESTAMP"));
        }
        return Ok(None);
    };
    let text = property_string(p)?;
    let name = resolve_name(&text);
    let column = schema.column(&name).ok_or_else(|| {
        SqlError::new(
            p.pos,
            format!("The TIMESTAMP column set in the WITH clause does not exist in the schema: '{name}'"),
        )
    })?;
    let format = string_property(props, "TIMESTAMP_FORMAT")?;
    match (&column.ty, &format) {
        (SqlType::Bigint | SqlType::Timestamp, None) | (SqlType::String, Some(_)) => {}
        (SqlType::String, None) => {
            return Err(SqlError::new(
                p.pos,
                format!("Timestamp column `{name}` is a STRING: set TIMESTAMP_FORMAT to say how to read it"),
            ));
        }
        (ty, _) => {
            return Err(SqlError::new(
                p.pos,
                format!(
                    "Timestamp column, `{name}`, should be LONG(INT64), TIMESTAMP, or a String with a timestamp_format specified. Got {ty}"
                ),
            ));
        }
    }
    Ok(Some(TimestampColumn { column: name, format }))
}

/// A name given in a string property: quoted names keep their case, bare ones are upper-cased.
fn resolve_name(text: &str) -> String {
    let t = text.trim();
    if t.len() >= 2 && t.starts_with('`') && t.ends_with('`') {
        t[1..t.len() - 1].to_owned()
    } else {
        t.to_ascii_uppercase()
    }
}

fn window_type(props: &Properties) -> Result<Option<WindowType>, SqlError> {
    let size = match props.get("WINDOW_SIZE") {
        Some(p) => Some((window_size(p)?, p.pos)),
        None => None,
    };
    let Some(p) = props.get("WINDOW_TYPE") else {
        if let Some((_, at)) = size {
            return Err(SqlError::new(at, "WINDOW_SIZE can only be used together with WINDOW_TYPE"));
        }
        return Ok(None);
    };
    let kind = property_string(p)?.to_ascii_uppercase();
    Ok(Some(match (kind.as_str(), size) {
        ("SESSION", None) => WindowType::Session,
        ("SESSION", Some((_, at))) => {
            return Err(SqlError::new(at, "'WINDOW_SIZE' should not be set for SESSION windows."));
        }
        ("TUMBLING", Some((size_ms, _))) => WindowType::Tumbling { size_ms },
        ("HOPPING", Some((size_ms, _))) => WindowType::Hopping { size_ms },
        ("TUMBLING" | "HOPPING", None) => {
            return Err(SqlError::new(p.pos, format!("WINDOW_SIZE is required for {kind} windows")));
        }
        _ => {
            return Err(SqlError::new(
                p.pos,
                format!("Invalid WINDOW_TYPE '{kind}': expected SESSION, HOPPING or TUMBLING"),
            ));
        }
    }))
}

/// `'30 SECONDS'` → milliseconds.
fn window_size(p: &Property) -> Result<i64, SqlError> {
    let text = property_string(p)?;
    let invalid = |why: String| {
        SqlError::new(p.pos, format!("Configuration WINDOW_SIZE is invalid: Invalid duration: '{text}'. {why}"))
    };
    let mut parts = text.split_whitespace();
    let (Some(number), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("Expected a number and a time unit, e.g. '30 SECONDS'".into()));
    };
    let n: i64 = number.parse().map_err(|_| invalid(format!("Not a number: '{number}'")))?;
    let unit_ms = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        other => {
            return Err(invalid(format!(
                "Unknown time unit: '{}'",
                if other.is_empty() { unit } else { other }.to_ascii_uppercase() + "S"
            )));
        }
    };
    Ok(n.saturating_mul(unit_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ast::Statement, parse_statement};

    fn create(catalog: &mut Catalog, sql: &str) -> Result<Source, SqlError> {
        let Statement::CreateSource(statement) = parse_statement(sql).unwrap() else { panic!("not a CREATE: {sql}") };
        catalog.create_source(&statement, sql).cloned()
    }

    fn error(sql: &str) -> String {
        create(&mut Catalog::default(), sql).unwrap_err().message
    }

    #[test]
    fn the_seed_sources() {
        let mut catalog = Catalog::default();
        let trades = create(
            &mut catalog,
            "CREATE STREAM STOCKTRADE (side varchar, quantity int, symbol varchar, price int, account varchar, userid varchar) \
             with (kafka_topic = 'stocktrade', value_format = 'json');",
        )
        .unwrap();
        assert_eq!(trades.topic, "stocktrade");
        assert_eq!(trades.key_format.format, Format::Kafka);
        assert_eq!(trades.value_format.format, Format::Json);
        assert!(trades.schema.key.is_empty());
        assert_eq!(trades.schema.value.len(), 6);
        let users = create(
            &mut catalog,
            "CREATE TABLE USERS (userid varchar primary key, registertime BIGINT, regionid varchar) \
             with (kafka_topic = 'users', value_format = 'json', timestamp = 'registertime');",
        )
        .unwrap();
        assert_eq!(users.schema.key[0].name, "USERID");
        assert_eq!(users.timestamp, Some(TimestampColumn { column: "REGISTERTIME".into(), format: None }));
        assert!(catalog.get("USERS").is_some());
        assert!(
            create(
                &mut catalog,
                "CREATE TABLE USERS (ID INT PRIMARY KEY) WITH (kafka_topic='x', value_format='json');"
            )
            .unwrap_err()
            .message
            .contains("already exists")
        );
    }

    #[test]
    fn rejections_match_ksqldb() {
        let cases = [
            ("CREATE TABLE T (A INT) WITH (kafka_topic='t', value_format='json');", "Tables require a PRIMARY KEY"),
            (
                "CREATE STREAM S (A INT PRIMARY KEY) WITH (kafka_topic='t', value_format='json');",
                "please use 'KEY' for streams",
            ),
            (
                "CREATE TABLE T (A INT KEY) WITH (kafka_topic='t', value_format='json');",
                "please use 'PRIMARY KEY' for tables",
            ),
            ("CREATE STREAM S (A INT) WITH (value_format='json');", "Missing required property \"KAFKA_TOPIC\""),
            ("CREATE STREAM S (A INT) WITH (kafka_topic='t');", "missing the 'VALUE_FORMAT' property"),
            ("CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='foo');", "Unknown format: FOO"),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', format='json', value_format='json');",
                "Cannot supply both",
            ),
            (
                "CREATE STREAM S (A STRUCT<B INT>) WITH (kafka_topic='t', value_format='KAFKA');",
                "The 'KAFKA' format does not support type 'STRUCT'",
            ),
            (
                "CREATE STREAM S (A ARRAY<INT>) WITH (kafka_topic='t', value_format='DELIMITED');",
                "The 'DELIMITED' format does not support type 'ARRAY'",
            ),
            (
                "CREATE STREAM S (A MAP<INT, INT>) WITH (kafka_topic='t', value_format='JSON');",
                "JSON only supports MAP types with STRING keys",
            ),
            (
                "CREATE STREAM S (K INT KEY, A INT) WITH (kafka_topic='t', key_format='NONE', value_format='JSON');",
                "The 'NONE' format can only be used when no columns are defined",
            ),
            (
                "CREATE STREAM S (A INT, B INT) WITH (kafka_topic='t', value_format='KAFKA');",
                "only supports a single field",
            ),
            (
                "CREATE STREAM S (A INT, a STRING) WITH (kafka_topic='t', value_format='JSON');",
                "Duplicate column names: `A`",
            ),
            ("CREATE STREAM S (ROWTIME BIGINT) WITH (kafka_topic='t', value_format='JSON');", "reserved column name"),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='JSON', foo='bar');",
                "Invalid config variable(s) in the WITH clause: FOO",
            ),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='DELIMITED', value_delimiter='');",
                "Delimiter cannot be empty",
            ),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='JSON', timestamp='B');",
                "does not exist in the schema",
            ),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='JSON', timestamp='A');",
                "should be LONG(INT64), TIMESTAMP",
            ),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='JSON', window_type='session', window_size='1 SECOND');",
                "'WINDOW_SIZE' should not be set for SESSION windows.",
            ),
            (
                "CREATE STREAM S (A INT) WITH (kafka_topic='t', value_format='JSON', window_type='tumbling', window_size='30 bobs');",
                "Unknown time unit: 'BOBS'",
            ),
            ("CREATE STREAM S WITH (kafka_topic='t', value_format='JSON');", "does not define any columns"),
        ];
        for (sql, expected) in cases {
            let message = error(sql);
            assert!(message.contains(expected), "{sql}\n  got: {message}\n  want: {expected}");
        }
    }

    #[test]
    fn formats_windows_and_delimiters() {
        let mut catalog = Catalog::default();
        let s = create(
            &mut catalog,
            "CREATE STREAM S (K STRING KEY, A INT) WITH (kafka_topic='t', format='DELIMITED', value_delimiter='TAB', \
             window_type='Hopping', window_size='30 seconds', partitions=4);",
        )
        .unwrap();
        assert_eq!(s.key_format.format, Format::Delimited);
        assert_eq!(s.value_format.delimiter, Some('\t'));
        assert_eq!(s.window, Some(WindowType::Hopping { size_ms: 30_000 }));
        assert_eq!(s.partitions, Some(4));
        let t = create(
            &mut catalog,
            "CREATE TABLE T (K BIGINT PRIMARY KEY, TS STRING, H ARRAY<STRUCT<KEY STRING, VALUE BYTES>> HEADERS) \
             WITH (kafka_topic='t2', value_format='JSON', timestamp='ts', timestamp_format='yyyy-MM-dd');",
        )
        .unwrap();
        assert_eq!(t.schema.headers.len(), 1);
        assert_eq!(t.timestamp.unwrap().format.as_deref(), Some("yyyy-MM-dd"));
        // IF NOT EXISTS keeps the first declaration; OR REPLACE replaces it.
        let again = create(
            &mut catalog,
            "CREATE STREAM IF NOT EXISTS S (X INT) WITH (kafka_topic='other', value_format='JSON');",
        )
        .unwrap();
        assert_eq!(again.topic, "t");
        let replaced =
            create(&mut catalog, "CREATE OR REPLACE STREAM S (X INT) WITH (kafka_topic='other', value_format='JSON');")
                .unwrap();
        assert_eq!(replaced.topic, "other");
    }
}

/// The `WITH` properties a `CREATE ... AS SELECT` or `INSERT INTO` may carry.
const SINK_PROPERTIES: &[&str] = &[
    "KAFKA_TOPIC",
    "PARTITIONS",
    "REPLICAS",
    "FORMAT",
    "KEY_FORMAT",
    "VALUE_FORMAT",
    "KEY_DELIMITER",
    "VALUE_DELIMITER",
    "WRAP_SINGLE_VALUE",
    "TIMESTAMP",
    "TIMESTAMP_FORMAT",
    "RETENTION_MS",
    "KEY_SCHEMA_ID",
    "VALUE_SCHEMA_ID",
    "KEY_SCHEMA_FULL_NAME",
    "VALUE_SCHEMA_FULL_NAME",
    "VALUE_AVRO_SCHEMA_FULL_NAME",
];

/// What a sink's `WITH (...)` says, with formats falling back on the source's.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkProperties {
    /// `KAFKA_TOPIC`, when given.
    pub topic: Option<String>,
    /// Key format.
    pub key_format: FormatSpec,
    /// Value format.
    pub value_format: FormatSpec,
    /// `PARTITIONS`.
    pub partitions: Option<i32>,
    /// `REPLICAS`.
    pub replicas: Option<i16>,
    /// `TIMESTAMP` column name (resolved) and `TIMESTAMP_FORMAT`.
    pub timestamp: Option<TimestampColumn>,
}

/// Check a sink's `WITH` clause; formats not given are inherited from `key`/`value`.
pub fn sink_properties(props: &Properties, key: &FormatSpec, value: &FormatSpec) -> Result<SinkProperties, SqlError> {
    for p in &props.0 {
        if !SINK_PROPERTIES.contains(&p.name.as_str()) {
            return Err(SqlError::new(p.pos, format!("Invalid config variable(s) in the WITH clause: {}", p.name)));
        }
    }
    let (k, v) = explicit_formats(props)?;
    let mut key_format = match k {
        Some(f) => FormatSpec::plain(f),
        None => FormatSpec { wrap_single_value: None, ..key.clone() },
    };
    let mut value_format = match v {
        Some(f) => FormatSpec::plain(f),
        None => FormatSpec { wrap_single_value: None, ..value.clone() },
    };
    format_options(props, &mut key_format, &mut value_format)?;
    let partitions = props.get("PARTITIONS").map(positive_int).transpose()?;
    let replicas = match props.get("REPLICAS") {
        Some(p) => Some(i16::try_from(positive_int(p)?).map_err(|_| SqlError::new(p.pos, "REPLICAS is too large"))?),
        None => None,
    };
    let timestamp = match props.get("TIMESTAMP") {
        Some(p) => Some(TimestampColumn {
            column: resolve_name(&property_string(p)?),
            format: string_property(props, "TIMESTAMP_FORMAT")?,
        }),
        None => None,
    };
    Ok(SinkProperties {
        topic: string_property(props, "KAFKA_TOPIC")?,
        key_format,
        value_format,
        partitions,
        replicas,
        timestamp,
    })
}

/// Check that a format can carry these columns (the sink side of [`Catalog::create_source`]).
pub fn check_columns(spec: &FormatSpec, columns: &[Column], part: &str, pos: Pos) -> Result<(), SqlError> {
    check_format_supports(spec, columns, part, pos)
}
