//! The engine: executes statements against a catalog, routes records through the persistent
//! queries (a query's output feeds the queries that read its topic), keeps tables materialized,
//! and answers pull queries and `DESCRIBE`.

use std::collections::{BTreeMap, VecDeque};

use sluice_sql::{
    SqlError, SqlType,
    ast::{self, ExprKind, Relation, SelectItem, SourceKind, Statement},
    catalog::{Catalog, Format, Source},
    error::Pos,
};

use crate::{
    expr::{self, Scope},
    query::{self, Query, Target},
    source::{Reader, Record},
    store::{MemoryStore, StateStore, decode_row, encode_row},
    value::Value,
};

/// What executing a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A source was created or dropped, a property set: nothing to show.
    Done,
    /// A persistent query started.
    Started {
        /// Its id.
        query: String,
    },
    /// Rows of a pull query.
    Rows {
        /// The header schema, as ksqlDB's `/query` prints it.
        schema: String,
        /// The rows.
        rows: Vec<Vec<Value>>,
    },
    /// `DESCRIBE`.
    Description {
        /// The schema text.
        schema: String,
    },
}

/// A processing error: the record was skipped (ksqlDB's processing log).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessingError {
    /// The query.
    pub query: String,
    /// What went wrong.
    pub message: String,
    /// The record's topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The engine over a state store.
pub struct Engine<S: StateStore = MemoryStore> {
    /// Streams and tables.
    pub catalog: Catalog,
    /// Persistent queries, in creation order.
    pub queries: Vec<Query>,
    /// State.
    pub store: S,
    /// `SET` properties.
    pub properties: BTreeMap<String, String>,
    /// Errors from processing records.
    pub errors: Vec<ProcessingError>,
    next_query: usize,
    offsets: BTreeMap<String, i64>,
    /// Whether a query's output is fed to the queries reading its topic within the same call
    /// (tests, `sluice-processor test`), or left to come back through Kafka (the runtime).
    pub chain: bool,
    /// Partition counts of the repartition topics (the runtime's; see
    /// [`Engine::use_repartition_topics`]).
    pub repartition_partitions: BTreeMap<String, i32>,
}

impl Default for Engine<MemoryStore> {
    fn default() -> Self {
        Engine::new(MemoryStore::default())
    }
}

const VIEW_PREFIX: &str = "view-";

/// Topic names of push queries' outputs start with this; they are never produced.
pub const PUSH_PREFIX: &str = "__sluice_push_";

/// A running push query.
#[derive(Debug, Clone, PartialEq)]
pub struct PushQuery {
    /// Its id.
    pub id: String,
    /// The topic name its outputs carry.
    pub topic: String,
    /// The header schema.
    pub schema: String,
    /// Key column names (the key is JSON: a bare value for one column, an object for more).
    pub key: Vec<String>,
    /// Value column names (the value is a JSON object).
    pub value: Vec<String>,
    /// The window of a windowed result (its bounds follow the key columns in a row).
    pub window: Option<sluice_sql::catalog::WindowType>,
}

impl<S: StateStore> Engine<S> {
    /// An empty engine.
    pub fn new(store: S) -> Self {
        Engine {
            catalog: Catalog::default(),
            queries: Vec::new(),
            store,
            properties: BTreeMap::new(),
            errors: Vec::new(),
            next_query: 1,
            offsets: BTreeMap::new(),
            chain: true,
            repartition_partitions: BTreeMap::new(),
        }
    }

    /// Have the persistent queries that re-key a stream read it through repartition topics
    /// named `<prefix><query id>-<suffix>`, as Kafka Streams does, so their state is partitioned
    /// by the new key and any replica count works. A record of such an input is then returned by
    /// [`Engine::process`] as an output to that topic, with the partition of its new key set
    /// (once [`Engine::repartition_partitions`] has the topic's count), and processed when it
    /// comes back. Returns the repartition topics with the inputs whose partition count they need.
    pub fn use_repartition_topics(&mut self, prefix: &str) -> Vec<(String, Vec<String>)> {
        let mut topics = Vec::new();
        for q in &mut self.queries {
            q.set_repartition_prefix(prefix);
            for r in &q.repartitions {
                topics.push((r.topic.clone(), q.inputs.clone()));
            }
        }
        topics
    }

    /// Apply a ksqlDB property (`ksql.persistence.default.format.*` change the catalog defaults).
    pub fn set_property(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "ksql.persistence.default.format.value" => {
                self.catalog.defaults.value_format =
                    Some(Format::parse(value).ok_or_else(|| format!("Unknown format: {value}"))?);
            }
            "ksql.persistence.default.format.key" => {
                self.catalog.defaults.key_format =
                    Format::parse(value).ok_or_else(|| format!("Unknown format: {value}"))?;
            }
            _ => {}
        }
        self.properties.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// Execute every statement of a script, stopping at the first error.
    pub fn execute_script(&mut self, sql: &str) -> Result<Vec<Outcome>, SqlError> {
        let mut out = Vec::new();
        for (statement, text) in sluice_sql::parse_statements(sql)? {
            out.push(self.execute(&statement, &text)?);
        }
        Ok(out)
    }

    /// Execute one parsed statement.
    pub fn execute(&mut self, statement: &Statement, text: &str) -> Result<Outcome, SqlError> {
        match statement {
            Statement::CreateSource(c) => {
                if let Some(existing) = self.catalog.get(&c.name.name)
                    && c.or_replace
                    && existing.kind != c.kind
                {
                    return Err(SqlError::new(
                        c.pos,
                        format!("Cannot replace {} with a different kind of source", c.name.name),
                    ));
                }
                let source = self.catalog.create_source(c, text)?.clone();
                // Formats the engine can't read are rejected up front.
                Reader::new(&source, &source.name).map_err(|m| SqlError::new(c.pos, m))?;
                Ok(Outcome::Done)
            }
            Statement::CreateAsSelect(c) => {
                if self.catalog.get(&c.name.name).is_some() && !c.or_replace {
                    if c.if_not_exists {
                        return Ok(Outcome::Done);
                    }
                    let existing = self.catalog.get(&c.name.name).map(|s| s.kind).unwrap_or(c.kind);
                    return Err(SqlError::new(
                        c.pos,
                        format!(
                            "Cannot add {} '{}': A {} with the same name already exists",
                            kind_word(c.kind),
                            c.name.name,
                            kind_word(existing)
                        ),
                    ));
                }
                let prefix = if c.kind == SourceKind::Stream { "CSAS" } else { "CTAS" };
                let id = format!("{prefix}_{}_{}", c.name.name, self.next_query);
                let planned = query::plan(
                    &self.catalog,
                    &c.query,
                    Target {
                        name: &c.name,
                        kind: Some(c.kind),
                        properties: &c.properties,
                        sql: text,
                        id: id.clone(),
                        new_planner: self.new_planner(),
                        topic_prefix: self.topic_prefix(),
                    },
                )?;
                self.check_sink_topic(&planned.sink, c.pos)?;
                self.next_query += 1;
                if c.or_replace {
                    self.queries.retain(|q| q.sink != planned.sink.name);
                }
                self.catalog.insert(planned.sink, true, c.pos)?;
                self.queries.push(planned.query);
                Ok(Outcome::Started { query: id })
            }
            Statement::InsertInto(i) => {
                let id = format!("INSERTQUERY_{}", self.next_query);
                let planned = query::plan(
                    &self.catalog,
                    &i.query,
                    Target {
                        name: &i.target,
                        kind: None,
                        properties: &i.properties,
                        sql: text,
                        id: id.clone(),
                        new_planner: self.new_planner(),
                        topic_prefix: self.topic_prefix(),
                    },
                )?;
                self.next_query += 1;
                self.queries.push(planned.query);
                Ok(Outcome::Started { query: id })
            }
            Statement::Query(q) => self.pull(q),
            Statement::Describe { name, .. } => {
                let s = self.catalog.get(&name.name).ok_or_else(|| {
                    SqlError::new(name.pos, format!("Could not find STREAM/TABLE '{}' in the Metastore", name.name))
                })?;
                Ok(Outcome::Description { schema: query::source_schema_text(s) })
            }
            Statement::Drop { name, if_exists, .. } => {
                if self.catalog.get(&name.name).is_none() {
                    if *if_exists {
                        return Ok(Outcome::Done);
                    }
                    return Err(SqlError::new(name.pos, format!("Source {} does not exist.", name.name)));
                }
                if let Some(q) = self
                    .queries
                    .iter()
                    .find(|q| q.sink != name.name && self.catalog.get(&name.name).is_some_and(|s| q.reads(&s.topic)))
                {
                    return Err(SqlError::new(
                        name.pos,
                        format!(
                            "Cannot drop {}.\nThe following queries read from this source: [{}].\nYou need to terminate them before dropping {}.",
                            name.name, q.id, name.name
                        ),
                    ));
                }
                self.queries.retain(|q| q.sink != name.name);
                self.catalog.remove(&name.name);
                Ok(Outcome::Done)
            }
            Statement::SetProperty { name, value } => {
                self.set_property(name, value).map_err(|m| SqlError::new(Pos::default(), m))?;
                Ok(Outcome::Done)
            }
            Statement::UnsetProperty { name } => {
                self.properties.remove(name);
                Ok(Outcome::Done)
            }
            Statement::Terminate { query } => {
                match query {
                    None => self.queries.clear(),
                    Some(id) => {
                        let before = self.queries.len();
                        self.queries.retain(|q| !q.id.eq_ignore_ascii_case(&id.name));
                        if self.queries.len() == before {
                            return Err(SqlError::new(id.pos, format!("Unknown queryId: {}", id.name)));
                        }
                    }
                }
                Ok(Outcome::Done)
            }
            Statement::Show(_) | Statement::Explain(_) => Ok(Outcome::Done),
        }
    }

    fn topic_prefix(&self) -> String {
        self.properties.get("ksql.output.topic.name.prefix").cloned().unwrap_or_default()
    }

    fn new_planner(&self) -> bool {
        self.properties.get("ksql.new.query.planner.enabled").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn check_sink_topic(&self, sink: &Source, pos: Pos) -> Result<(), SqlError> {
        for s in self.catalog.sources() {
            if s.topic == sink.topic && s.name != sink.name {
                let written_by_query = self.queries.iter().any(|q| q.sink == s.name);
                if written_by_query || s.key_format != sink.key_format || s.value_format != sink.value_format {
                    return Err(SqlError::new(
                        pos,
                        format!("A source with the same topic '{}' already exists: {}", sink.topic, s.name),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Feed one record (of any topic); returns every record the queries wrote because of it, in
    /// order, with offsets assigned per topic.
    pub fn process(&mut self, record: Record) -> Vec<Record> {
        let mut produced = Vec::new();
        let mut queue = VecDeque::from([record]);
        while let Some(rec) = queue.pop_front() {
            self.store.set_partition(Some(rec.partition));
            self.materialize(&rec);
            for q in &mut self.queries {
                if !q.reads(&rec.topic) {
                    continue;
                }
                // A source record this query reads through a repartition topic: send it there.
                if let Some(r) = q.repartitions.iter().find(|r| !r.topic.is_empty() && r.source == rec.topic) {
                    let partitions = self.repartition_partitions.get(&r.topic).copied();
                    let routed = q.route(&rec).and_then(|bytes| match (bytes, partitions) {
                        (None, _) => Ok(None),
                        (Some(b), Some(n)) => Ok(Some(crate::format::kafka_partition(&b, n))),
                        (Some(_), None) => Err(format!("the partition count of '{}' is not known", r.topic)),
                    });
                    match routed {
                        Ok(Some(partition)) => {
                            let offset = self.offsets.entry(r.topic.clone()).or_insert(0);
                            let out = Record { topic: r.topic.clone(), partition, offset: *offset, ..rec.clone() };
                            *offset += 1;
                            produced.push(out.clone());
                            if self.chain {
                                queue.push_back(out);
                            }
                        }
                        Ok(None) => {}
                        Err(message) => {
                            q.dropped += 1;
                            self.errors.push(ProcessingError {
                                query: q.id.clone(),
                                message,
                                topic: rec.topic.clone(),
                                partition: rec.partition,
                                offset: rec.offset,
                            });
                        }
                    }
                    continue;
                }
                // A record back from a repartition topic: processed as a record of its source,
                // in the repartition topic's partition.
                let back = q
                    .repartitions
                    .iter()
                    .find(|r| r.topic == rec.topic)
                    .map(|r| Record { topic: r.source.clone(), ..rec.clone() });
                self.store.set_partition(Some(if q.needs_repartition() { 0 } else { rec.partition }));
                match q.process(back.as_ref().unwrap_or(&rec), &mut self.store) {
                    Ok(out) => {
                        for mut r in out {
                            let offset = self.offsets.entry(r.topic.clone()).or_insert(0);
                            r.offset = *offset;
                            *offset += 1;
                            produced.push(r.clone());
                            if self.chain {
                                queue.push_back(r);
                            }
                        }
                    }
                    Err(message) => {
                        q.dropped += 1;
                        self.errors.push(ProcessingError {
                            query: q.id.clone(),
                            message,
                            topic: rec.topic.clone(),
                            partition: rec.partition,
                            offset: rec.offset,
                        });
                    }
                }
            }
        }
        self.store.set_partition(None);
        produced
    }

    /// Save every query's stream time where it moved (see [`Query::save_stream_time`]).
    pub fn save_stream_times(&mut self) {
        for q in &mut self.queries {
            q.save_stream_time(&mut self.store);
        }
        self.store.set_partition(None);
    }

    /// The topics the queries read, and those they write.
    pub fn topics(&self) -> (Vec<String>, Vec<String>) {
        let mut read: Vec<String> = self.queries.iter().flat_map(|q| q.inputs.iter().cloned()).collect();
        // Tables are materialized for pull queries even when no query reads them.
        read.extend(self.catalog.sources().filter(|s| s.kind == SourceKind::Table).map(|s| s.topic.clone()));
        read.sort();
        read.dedup();
        let repartitions = self.queries.iter().flat_map(|q| &q.repartitions).filter(|r| !r.topic.is_empty());
        read.extend(repartitions.clone().map(|r| r.topic.clone()));
        read.sort();
        read.dedup();
        let mut written: Vec<String> =
            self.queries.iter().filter_map(|q| self.catalog.get(&q.sink).map(|s| s.topic.clone())).collect();
        written.extend(repartitions.map(|r| r.topic.clone()));
        written.sort();
        written.dedup();
        (read, written)
    }

    /// Keep every table's rows, by record key, for pull queries.
    fn materialize(&mut self, rec: &Record) {
        let tables: Vec<Source> =
            self.catalog.sources().filter(|s| s.kind == SourceKind::Table && s.topic == rec.topic).cloned().collect();
        for t in tables {
            let Ok(reader) = Reader::new(&t, &t.name) else { continue };
            let store = format!("{VIEW_PREFIX}{}", t.name);
            let key = rec.key.clone().unwrap_or_default();
            match reader.decode(rec) {
                Ok(input) if input.value.is_some() => self.store.put(&store, key, encode_row(&reader.row(&input))),
                Ok(_) => self.store.delete(&store, &key),
                Err(_) => {}
            }
        }
    }

    /// Start a push query (`SELECT ... EMIT CHANGES`): a transient query whose outputs (JSON key
    /// and value) carry the returned topic name; the caller delivers them to the client instead of
    /// producing them, and removes the query with [`Engine::remove_query`].
    pub fn add_push(&mut self, q: &ast::Query) -> Result<PushQuery, SqlError> {
        let id = format!("transient_{}", self.next_query);
        let topic = format!("{PUSH_PREFIX}{id}");
        let name = ast::Ident::new(id.to_ascii_uppercase());
        let property = |name: &str, value: &str| ast::Property {
            name: name.into(),
            value: ast::Literal::String(value.into()),
            pos: Pos::default(),
        };
        let properties = ast::Properties(vec![
            property("KAFKA_TOPIC", &topic),
            property("KEY_FORMAT", "JSON"),
            property("VALUE_FORMAT", "JSON"),
        ]);
        // LIMIT ends the client's stream; the query itself runs unbounded.
        let q = &ast::Query { limit: None, ..q.clone() };
        let mut planned = None;
        for kind in [SourceKind::Stream, SourceKind::Table] {
            let target = Target {
                name: &name,
                kind: Some(kind),
                properties: &properties,
                sql: "",
                id: id.clone(),
                new_planner: true,
                topic_prefix: String::new(),
            };
            match query::plan(&self.catalog, q, target) {
                Ok(p) => {
                    planned = Some(p);
                    break;
                }
                Err(e) if e.message.starts_with("Invalid result type") => continue,
                Err(e) => return Err(e),
            }
        }
        let planned = planned.ok_or_else(|| SqlError::new(q.pos, "The query produces neither a stream nor a table"))?;
        self.next_query += 1;
        let key: Vec<String> = planned.sink.schema.key.iter().map(|c| c.name.clone()).collect();
        let value: Vec<String> = planned.sink.schema.value.iter().map(|c| c.name.clone()).collect();
        let mut schema = query::source_schema_text(&planned.sink);
        if planned.sink.window.is_some() {
            schema = schema.replacen(" KEY,", " KEY, `WINDOWSTART` BIGINT KEY, `WINDOWEND` BIGINT KEY,", 1);
        }
        let window = planned.sink.window;
        self.queries.push(planned.query);
        Ok(PushQuery { id, topic, schema, key, value, window })
    }

    /// Stop a query (a push query whose client went away).
    pub fn remove_query(&mut self, id: &str) {
        self.queries.retain(|q| q.id != id);
    }

    /// For a pull query whose `WHERE` pins a table's single key column to a literal: the table's
    /// topic and the key as serialized in it (what Kafka partitions by), so that the query can go
    /// to the replica owning that partition. `None` for scans.
    pub fn pull_key(&self, q: &ast::Query) -> Option<(String, Vec<u8>)> {
        let Relation::Source { name, .. } = &q.from else { return None };
        let source = self.catalog.get(&name.name)?;
        let [key] = source.schema.key.as_slice() else { return None };
        let literal = pinned(q.filter.as_ref()?, &key.name)?;
        let (value, _) = expr::literal(&literal, Pos::default()).ok()?;
        let value = crate::value::cast(&value, &key.ty).ok()?;
        let serde =
            crate::format::Serde::new(&source.key_format, vec![(key.name.clone(), key.ty.clone())], true).ok()?;
        Some((source.topic.clone(), serde.encode(Some(&[value])).ok()??))
    }

    /// A pull query against a table's materialized rows.
    pub fn pull(&self, q: &ast::Query) -> Result<Outcome, SqlError> {
        let Relation::Source { name, alias } = &q.from else {
            return Err(SqlError::new(q.pos, "Pull queries don't support JOIN clauses."));
        };
        let source = self
            .catalog
            .get(&name.name)
            .ok_or_else(|| SqlError::new(name.pos, format!("{} does not exist.", name.name)))?;
        if q.emit.is_some() {
            return Err(SqlError::new(
                q.pos,
                "Push queries (EMIT CHANGES) are served by the processor's HTTP endpoint, not here",
            ));
        }
        if source.kind != SourceKind::Table {
            return Err(SqlError::new(
                q.pos,
                format!(
                    "Pull queries on streams are not supported here: '{}' is a stream. Add EMIT CHANGES for a push query.",
                    source.name
                ),
            ));
        }
        if !q.group_by.is_empty() || q.window.is_some() || q.having.is_some() || !q.partition_by.is_empty() {
            return Err(SqlError::new(
                q.pos,
                "Pull queries don't support GROUP BY, WINDOW, HAVING or PARTITION BY clauses.",
            ));
        }
        let alias = alias.as_ref().map_or(source.name.clone(), |a| a.name.clone());
        let reader = Reader::new(source, &alias).map_err(|m| SqlError::new(name.pos, m))?;
        let mut scope: Scope = reader.scope();
        // Pull queries see ROWTIME but not ROWPARTITION or ROWOFFSET.
        for f in &mut scope.fields {
            if f.name == "ROWPARTITION" || f.name == "ROWOFFSET" {
                f.name = format!("{} (not available in pull queries)", f.name);
            }
        }
        let filter = match &q.filter {
            None => None,
            Some(f) => {
                let c = expr::compile(f, &scope)
                    .map_err(|e| SqlError::new(e.pos, format!("Error in WHERE expression: {}", e.message)))?;
                if !matches!(c.ty, Some(SqlType::Boolean) | None) {
                    return Err(SqlError::new(f.pos, "Type error in WHERE expression: should evaluate to boolean"));
                }
                Some(c)
            }
        };
        // The projection: `*` is the key columns, the window bounds, then the value columns.
        let key_names: Vec<String> = source.schema.key.iter().map(|c| c.name.clone()).collect();
        let mut items: Vec<(String, expr::Expr, bool)> = Vec::new();
        let windowed = source.window.is_some();
        for s in &q.select {
            match s {
                SelectItem::Wildcard { .. } => {
                    for (i, f) in scope.fields.iter().enumerate() {
                        let is_key = key_names.contains(&f.name);
                        let is_bound = windowed && (f.name == "WINDOWSTART" || f.name == "WINDOWEND");
                        let is_value =
                            source.schema.value.iter().chain(&source.schema.headers).any(|c| c.name == f.name);
                        if is_key || is_bound || is_value {
                            items.push((
                                f.name.clone(),
                                expr::Expr { node: expr::Node::Column(i), ty: Some(f.ty.clone()) },
                                is_key || is_bound,
                            ));
                        }
                    }
                    // Keys, then window bounds, then values.
                    items.sort_by_key(|(n, _, k)| (!k, !key_names.contains(n)));
                }
                SelectItem::Expr { expr: e, alias } => {
                    let c = expr::compile(e, &scope)
                        .map_err(|er| SqlError::new(er.pos, er.message.replace("Column '", "SELECT column '")))?;
                    let (name, is_key) = match (&e.kind, alias) {
                        (ExprKind::Column { name, .. }, a) => (
                            a.as_ref().map_or(name.name.clone(), |a| a.name.clone()),
                            key_names.contains(&name.name)
                                || (windowed && (name.name == "WINDOWSTART" || name.name == "WINDOWEND")),
                        ),
                        (_, Some(a)) => (a.name.clone(), false),
                        (ExprKind::Dereference { field, .. }, None) => (field.name.clone(), false),
                        _ => (format!("KSQL_COL_{}", items.len()), false),
                    };
                    items.push((name, c, is_key));
                }
            }
        }
        let schema = items
            .iter()
            .map(|(n, e, k)| {
                let t = e.ty.clone().map_or("STRING".to_owned(), |t| t.to_string());
                if *k { format!("`{n}` {t} KEY") } else { format!("`{n}` {t}") }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut rows = Vec::new();
        for (_, v) in self.store.range(&format!("{VIEW_PREFIX}{}", source.name), &[]) {
            let Some(row) = decode_row(&v) else { continue };
            if let Some(f) = &filter
                && !f.eval(&row).is_ok_and(|v| v.is_true())
            {
                continue;
            }
            rows.push(items.iter().map(|(_, e, _)| e.eval(&row).unwrap_or(Value::Null)).collect());
            if q.limit.is_some_and(|l| rows.len() as u64 >= l) {
                break;
            }
        }
        Ok(Outcome::Rows { schema, rows })
    }
}

/// The literal a condition (or one side of an `AND`) sets `column` equal to.
fn pinned(e: &ast::Expr, column: &str) -> Option<ast::Literal> {
    match &e.kind {
        ExprKind::Binary { op: ast::BinaryOp::And, left, right } => {
            pinned(left, column).or_else(|| pinned(right, column))
        }
        ExprKind::Binary { op: ast::BinaryOp::Eq, left, right } => match (&left.kind, &right.kind) {
            (ExprKind::Column { name, .. }, ExprKind::Literal(l))
            | (ExprKind::Literal(l), ExprKind::Column { name, .. })
                if name.name == column =>
            {
                Some(l.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

fn kind_word(k: SourceKind) -> &'static str {
    match k {
        SourceKind::Stream => "stream",
        SourceKind::Table => "table",
    }
}

impl PushQuery {
    /// A push output record as a row of JSON values: key columns, window bounds, value columns.
    /// `None` for a delete (a table row that went away) or bytes that are not this query's.
    pub fn row(&self, rec: &Record) -> Option<Vec<serde_json::Value>> {
        use serde_json::Value as Json;
        let value: Json = serde_json::from_slice(rec.value.as_deref()?).ok()?;
        let (key_bytes, window) = match (self.window, &rec.key) {
            (Some(kind), Some(k)) => {
                let (inner, w) = crate::format::split_window_key(k, kind).ok()?;
                (Some(inner.to_vec()), Some(w))
            }
            (_, k) => (k.clone(), None),
        };
        let key: Json = match key_bytes {
            Some(b) if !b.is_empty() => serde_json::from_slice(&b).ok()?,
            _ => Json::Null,
        };
        let mut row = Vec::new();
        match self.key.as_slice() {
            [] => {}
            [_] => row.push(key),
            many => row.extend(many.iter().map(|k| key.get(k).cloned().unwrap_or(Json::Null))),
        }
        if let Some(w) = window {
            row.push(Json::from(w.start));
            row.push(Json::from(w.end));
        }
        row.extend(self.value.iter().map(|c| value.get(c).cloned().unwrap_or(Json::Null)));
        Some(row)
    }
}
