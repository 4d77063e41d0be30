//! Persistent queries: planning a `SELECT` into one of three dataflows (project/filter,
//! aggregate, join) and running it record by record over a [`StateStore`].

use std::collections::BTreeSet;

use sluice_sql::{
    SqlError, SqlType,
    ast::{self, Emit, ExprKind, Ident, JoinKind, Relation, SelectItem, SourceKind, WindowExpr},
    catalog::{self, Catalog, Column, ColumnRole, Schema, Source, WindowType},
    error::Pos,
};

use crate::{
    aggregate::{self, Aggregate},
    expr::{self, Expr, Node, Scope},
    format::Window,
    source::{Input, Reader, Record, Writer},
    store::{StateStore, decode_row, encode_row},
    value::Value,
};

/// Names that can't be used for output columns.
const RESERVED: &[&str] = &["ROWTIME", "ROWPARTITION", "ROWOFFSET", "WINDOWSTART", "WINDOWEND"];

/// The default grace period of windows without `GRACE PERIOD` (Kafka Streams': 24 hours).
const DEFAULT_GRACE_MS: i64 = 24 * 3600 * 1000;

/// An input a query reads through a repartition topic: its records, unchanged, sent to the
/// partition of their new key (the grouping or the join key), then processed from there.
#[derive(Debug, Clone)]
pub struct Repartition {
    /// The source topic.
    pub source: String,
    /// The topic name's suffix, ksqlDB's (`Aggregate-GroupBy-repartition`, `Join-left-repartition`).
    pub suffix: String,
    /// The repartition topic, once the runtime named it.
    pub topic: String,
}

/// A running persistent query.
#[derive(Debug)]
pub struct Query {
    /// `CSAS_OUTPUT_1` and the like.
    pub id: String,
    /// The sink's name.
    pub sink: String,
    /// The topics it reads.
    pub inputs: Vec<String>,
    /// Internal topics its plan needs (repartition, changelog), by suffix.
    pub internal_topics: Vec<String>,
    /// The inputs that reach it through a repartition topic when the runtime asks for them
    /// ([`Query::set_repartition_prefix`]); empty otherwise.
    pub repartitions: Vec<Repartition>,
    /// Its state cannot be partitioned like any topic (a table re-grouped: a row's old and new
    /// groups may live in different partitions), so it keeps one logical partition, which is
    /// correct with one replica only.
    pub single_partition: bool,
    kind: Kind,
    writer: Writer,
    /// Stream time per input partition (windowed aggregates), loaded from the store on first
    /// use and saved there by [`Query::save_stream_time`], so it survives a restart.
    stream_time: std::collections::BTreeMap<i32, i64>,
    /// Partitions whose stream time moved since it was last saved.
    stream_time_moved: BTreeSet<i32>,
    /// Records dropped because they could not be processed (see the processing log).
    pub dropped: u64,
    /// Window updates dropped because they arrived after the window closed (end + grace).
    pub late: u64,
    /// Windows deleted past retention.
    pub expired: u64,
}

/// A window start as bytes that sort like the number (the sign bit flipped).
fn ordered(start: i64) -> [u8; 8] {
    (start ^ i64::MIN).to_be_bytes()
}

#[derive(Debug)]
enum Kind {
    Select(Box<Select>),
    Aggregate(Box<Agg>),
    Join(Box<Join>),
}

#[derive(Debug)]
struct Select {
    reader: Reader,
    filter: Option<Expr>,
    key: Vec<Expr>,
    value: Vec<Expr>,
    /// The key comes from PARTITION BY.
    rekeyed: bool,
}

/// One output column of a projection.
#[derive(Debug, Clone)]
struct Item {
    name: String,
    expr: ast::Expr,
    pos: Pos,
}

/// What a planned query produces.
pub struct Planned {
    /// The query.
    pub query: Query,
    /// The sink it writes.
    pub sink: Source,
}

/// Where a query writes.
pub struct Target<'a> {
    /// The sink's name.
    pub name: &'a Ident,
    /// Stream or table for `CREATE ... AS`; `None` for `INSERT INTO` (the sink exists).
    pub kind: Option<SourceKind>,
    /// `WITH (...)`.
    pub properties: &'a ast::Properties,
    /// The statement's text.
    pub sql: &'a str,
    /// The query id.
    pub id: String,
    /// `ksql.new.query.planner.enabled`: streams may drop their key columns.
    pub new_planner: bool,
    /// `ksql.output.topic.name.prefix`: prepended to default sink topic names.
    pub topic_prefix: String,
}

fn err(pos: Pos, msg: impl Into<String>) -> SqlError {
    SqlError::new(pos, msg)
}

fn same(a: &Expr, b: &Expr) -> bool {
    format!("{:?}", a.node) == format!("{:?}", b.node)
}

/// Rebuild an expression bottom-up... top-down: `f` may replace a node (and its subtree).
fn rewrite(e: &ast::Expr, f: &mut dyn FnMut(&ast::Expr) -> Option<ast::Expr>) -> ast::Expr {
    if let Some(r) = f(e) {
        return r;
    }
    let mut w = |x: &ast::Expr| Box::new(rewrite(x, f));
    let kind = match &e.kind {
        ExprKind::Column { .. } | ExprKind::Literal(_) => e.kind.clone(),
        ExprKind::Unary { op, expr } => ExprKind::Unary { op: *op, expr: w(expr) },
        ExprKind::Binary { op, left, right } => ExprKind::Binary { op: *op, left: w(left), right: w(right) },
        ExprKind::Not(x) => ExprKind::Not(w(x)),
        ExprKind::IsNull { expr, negated } => ExprKind::IsNull { expr: w(expr), negated: *negated },
        ExprKind::IsDistinctFrom { left, right, negated } => {
            ExprKind::IsDistinctFrom { left: w(left), right: w(right), negated: *negated }
        }
        ExprKind::Between { expr, low, high, negated } => {
            ExprKind::Between { expr: w(expr), low: w(low), high: w(high), negated: *negated }
        }
        ExprKind::InList { expr, list, negated } => {
            let expr = w(expr);
            ExprKind::InList { expr, list: list.iter().map(|x| rewrite(x, f)).collect(), negated: *negated }
        }
        ExprKind::Like { expr, pattern, escape, negated } => {
            ExprKind::Like { expr: w(expr), pattern: w(pattern), escape: *escape, negated: *negated }
        }
        ExprKind::Case { operand, whens, otherwise } => ExprKind::Case {
            operand: operand.as_ref().map(|o| Box::new(rewrite(o, f))),
            whens: whens.iter().map(|(c, r)| (rewrite(c, f), rewrite(r, f))).collect(),
            otherwise: otherwise.as_ref().map(|o| Box::new(rewrite(o, f))),
        },
        ExprKind::Cast { expr, ty } => ExprKind::Cast { expr: w(expr), ty: ty.clone() },
        ExprKind::Function { name, args, star } => {
            ExprKind::Function { name: name.clone(), args: args.iter().map(|x| rewrite(x, f)).collect(), star: *star }
        }
        ExprKind::Dereference { expr, field } => ExprKind::Dereference { expr: w(expr), field: field.clone() },
        ExprKind::Subscript { expr, index } => ExprKind::Subscript { expr: w(expr), index: w(index) },
        ExprKind::Array(items) => ExprKind::Array(items.iter().map(|x| rewrite(x, f)).collect()),
        ExprKind::Map(entries) => ExprKind::Map(entries.iter().map(|(k, v)| (rewrite(k, f), rewrite(v, f))).collect()),
        ExprKind::Struct(fields) => ExprKind::Struct(fields.iter().map(|(n, v)| (n.clone(), rewrite(v, f))).collect()),
        ExprKind::Lambda { params, body } => ExprKind::Lambda { params: params.clone(), body: w(body) },
    };
    ast::Expr { kind, pos: e.pos }
}

/// Visit every node.
fn visit(e: &ast::Expr, f: &mut dyn FnMut(&ast::Expr)) {
    let _ = rewrite(e, &mut |x| {
        f(x);
        None
    });
}

fn column_ref(name: &str, pos: Pos) -> ast::Expr {
    ast::Expr { kind: ExprKind::Column { qualifier: None, name: Ident { name: name.into(), pos } }, pos }
}

fn contains_aggregate(e: &ast::Expr) -> Option<String> {
    let mut found = None;
    visit(e, &mut |x| {
        if let ExprKind::Function { name, .. } = &x.kind
            && aggregate::is_aggregate(&name.name)
            && found.is_none()
        {
            found = Some(name.name.clone());
        }
    });
    found
}

/// Names the projection, expanding `*`: aliases, column names, struct field names, then
/// `KSQL_COL_n` for the rest.
type StarFn<'a> = dyn Fn(Option<&Ident>, Pos) -> Result<Vec<(String, ast::Expr)>, SqlError> + 'a;

/// `taken`: names generated names must avoid (the sources' columns); `clashing`: in a join, the
/// column names more than one source has — a qualified reference to one is named
/// `ALIAS_COLUMN`, as ksqlDB names join columns.
fn name_items(
    select: &[SelectItem],
    star: &StarFn<'_>,
    taken: &[String],
    clashing: &[String],
) -> Result<Vec<Item>, SqlError> {
    let mut items = Vec::new();
    let mut unnamed = Vec::new();
    for s in select {
        match s {
            SelectItem::Wildcard { qualifier, pos } => {
                for (name, expr) in star(qualifier.as_ref(), *pos)? {
                    items.push(Item { name, expr, pos: *pos });
                }
            }
            SelectItem::Expr { expr, alias } => {
                let name = match (alias, &expr.kind) {
                    (Some(a), _) => {
                        if RESERVED.contains(&a.name.as_str()) {
                            return Err(err(
                                a.pos,
                                format!(
                                    "`{}` is a reserved column name. You cannot use it as an alias for a column.",
                                    a.name
                                ),
                            ));
                        }
                        a.name.clone()
                    }
                    (None, ExprKind::Column { name, qualifier: Some(q) }) if clashing.contains(&name.name) => {
                        format!("{}_{}", q.name, name.name)
                    }
                    (None, ExprKind::Column { name, .. }) => {
                        if RESERVED.contains(&name.name.as_str()) {
                            return Err(err(
                                name.pos,
                                format!(
                                    "Reserved column name in select: `{}`. Please remove or alias the column.",
                                    name.name
                                ),
                            ));
                        }
                        name.name.clone()
                    }
                    (None, ExprKind::Dereference { field, .. }) => field.name.clone(),
                    (None, _) => {
                        unnamed.push(items.len());
                        String::new()
                    }
                };
                items.push(Item { name, expr: expr.clone(), pos: expr.pos });
            }
        }
    }
    let mut n = 0;
    for i in unnamed {
        loop {
            let candidate = format!("KSQL_COL_{n}");
            n += 1;
            if !items.iter().any(|it| it.name == candidate) && !taken.contains(&candidate) {
                items[i].name = candidate;
                break;
            }
        }
    }
    Ok(items)
}

fn check_where(filter: &Option<ast::Expr>, scope: &Scope) -> Result<Option<Expr>, SqlError> {
    let Some(f) = filter else { return Ok(None) };
    if let Some(name) = contains_aggregate(f) {
        return Err(err(f.pos, format!("Aggregate functions are not allowed in WHERE: {name}")));
    }
    let c = expr::compile(f, scope).map_err(|e| {
        let msg = e.message.replace("Column '", "WHERE column '");
        err(e.pos, format!("Error in WHERE expression: {msg}"))
    })?;
    match &c.ty {
        Some(SqlType::Boolean) | None => Ok(Some(c)),
        Some(t) => Err(err(
            f.pos,
            format!("Type error in WHERE expression: Should evaluate to boolean but is {f} ({t}) instead."),
        )),
    }
}

fn compile_select(e: &ast::Expr, scope: &Scope) -> Result<Expr, SqlError> {
    expr::compile(e, scope).map_err(|er| {
        if er.message.starts_with("Column '") {
            err(er.pos, er.message.replace("Column '", "SELECT column '"))
        } else {
            er
        }
    })
}

fn positive_size(d: &ast::Duration, pos: Pos) -> Result<i64, SqlError> {
    match d.millis() {
        ms if ms > 0 => Ok(ms),
        _ => Err(err(pos, "Window size must be positive")),
    }
}

fn window_ms(d: &ast::Duration) -> i64 {
    d.millis()
}

/// Plan a persistent query writing to `target`.
pub fn plan(catalog: &Catalog, q: &ast::Query, target: Target<'_>) -> Result<Planned, SqlError> {
    if q.emit.is_none() {
        // ksqlDB: persistent queries are implicitly EMIT CHANGES.
    }
    if let Some(limit) = q.limit {
        let _ = limit;
        return Err(err(q.pos, "LIMIT is not supported for persistent queries"));
    }
    match &q.from {
        Relation::Source { name, alias } => {
            let source =
                catalog.get(&name.name).ok_or_else(|| err(name.pos, format!("{} does not exist.", name.name)))?;
            let alias = alias.as_ref().map_or(source.name.clone(), |a| a.name.clone());
            let reader = Reader::new(source, &alias).map_err(|m| err(name.pos, m))?;
            if source.window.is_some() && source.kind == SourceKind::Table {
                return Err(err(name.pos, "KSQL does not support persistent queries on windowed tables."));
            }
            let aggregated = !q.group_by.is_empty()
                || q.select
                    .iter()
                    .any(|s| matches!(s, SelectItem::Expr { expr, .. } if contains_aggregate(expr).is_some()))
                || q.having.is_some();
            if aggregated {
                plan_aggregate(catalog, q, reader, target)
            } else {
                if q.window.is_some() {
                    return Err(err(q.pos, "WINDOW clause requires a GROUP BY clause."));
                }
                plan_select(catalog, q, reader, target)
            }
        }
        Relation::Join(join) => plan_join(catalog, q, join, target),
    }
}

fn source_star(reader: &Reader, qualifier: Option<&Ident>, pos: Pos) -> Result<Vec<(String, ast::Expr)>, SqlError> {
    if let Some(qf) = qualifier
        && qf.name != reader.alias
    {
        return Err(err(qf.pos, format!("'{}' is not a valid stream/table name or alias.", qf.name)));
    }
    let scope = reader.scope();
    Ok(reader
        .star()
        .into_iter()
        .map(|(i, _)| {
            let name = scope.fields[i].name.clone();
            let e = ast::Expr {
                kind: ExprKind::Column {
                    qualifier: Some(Ident { name: reader.alias.clone(), pos }),
                    name: Ident { name: name.clone(), pos },
                },
                pos,
            };
            (name, e)
        })
        .collect())
}

/// Build the sink source and its writer from the output columns.
#[allow(clippy::too_many_arguments)]
fn make_sink(
    target: &Target<'_>,
    kind: SourceKind,
    key: Vec<(String, SqlType)>,
    value: Vec<(String, SqlType)>,
    from: &Source,
    window: Option<WindowType>,
    catalog: &Catalog,
    pos: Pos,
) -> Result<(Source, Writer), SqlError> {
    let mut key_format = from.key_format.clone();
    if key.is_empty() {
        key_format = catalog::FormatSpec::plain(catalog::Format::None);
    } else if key_format.format == catalog::Format::None {
        key_format = catalog::FormatSpec::plain(catalog::Format::Kafka);
    }
    if key.len() > 1
        && key_format.format == catalog::Format::Kafka
        && target.properties.get("KEY_FORMAT").is_none()
        && target.properties.get("FORMAT").is_none()
    {
        // ksqlDB switches multi-column keys of KAFKA-keyed sources to JSON? No: it rejects them.
    }
    let props = catalog::sink_properties(target.properties, &key_format, &from.value_format)?;
    let mut sink = match (target.kind, catalog.get(&target.name.name)) {
        (None, Some(existing)) => existing.clone(),
        (None, None) => return Err(err(target.name.pos, format!("{} does not exist.", target.name.name))),
        (Some(_), _) => Source {
            name: target.name.name.clone(),
            kind,
            topic: props.topic.clone().unwrap_or_else(|| format!("{}{}", target.topic_prefix, target.name.name)),
            schema: Schema {
                key: key
                    .iter()
                    .map(|(n, t)| Column { name: n.clone(), ty: t.clone(), role: ColumnRole::Key })
                    .collect(),
                value: value
                    .iter()
                    .map(|(n, t)| Column { name: n.clone(), ty: t.clone(), role: ColumnRole::Value })
                    .collect(),
                headers: Vec::new(),
            },
            key_format: if key.is_empty() {
                catalog::FormatSpec::plain(catalog::Format::None)
            } else {
                props.key_format.clone()
            },
            value_format: props.value_format.clone(),
            timestamp: props.timestamp.clone(),
            window,
            partitions: props.partitions.or(from.partitions),
            replicas: props.replicas,
            read_only: false,
            sql: target.sql.to_owned(),
        },
    };
    if target.kind.is_none() {
        // INSERT INTO: the query's schema must be the sink's.
        let same_cols = |have: &[Column], want: &[(String, SqlType)]| {
            have.len() == want.len() && have.iter().zip(want).all(|(c, (n, t))| c.name == *n && c.ty == *t)
        };
        if !same_cols(&sink.schema.key, &key) || !same_cols(&sink.schema.value, &value) {
            return Err(err(
                pos,
                format!(
                    "Incompatible schema between results and sink. Result schema is {}, but sink schema is {}.",
                    schema_text(&key, &value),
                    source_schema_text(&sink)
                ),
            ));
        }
        if sink.kind == SourceKind::Table {
            return Err(err(
                pos,
                format!("INSERT INTO can only be used to insert into a stream. {} is a table.", sink.name),
            ));
        }
    }
    if let Some(ts) = &sink.timestamp
        && sink.schema.column(&ts.column).is_none()
    {
        return Err(err(
            pos,
            format!("The TIMESTAMP column set in the WITH clause does not exist in the schema: '{}'", ts.column),
        ));
    }
    catalog::check_columns(&sink.key_format, &sink.schema.key, "key", pos)?;
    catalog::check_columns(&sink.value_format, &sink.schema.value, "value", pos)?;
    sink.window = window;
    let writer = Writer::new(&sink).map_err(|m| err(pos, m))?;
    Ok((sink, writer))
}

fn schema_text(key: &[(String, SqlType)], value: &[(String, SqlType)]) -> String {
    let mut parts: Vec<String> = key.iter().map(|(n, t)| format!("`{n}` {t} KEY")).collect();
    parts.extend(value.iter().map(|(n, t)| format!("`{n}` {t}")));
    parts.join(", ")
}

/// `DESCRIBE`-style schema text: `` `ID` INTEGER KEY, `NAME` STRING ``.
pub fn source_schema_text(s: &Source) -> String {
    let key: Vec<(String, SqlType)> = s.schema.key.iter().map(|c| (c.name.clone(), c.ty.clone())).collect();
    let value: Vec<(String, SqlType)> =
        s.schema.value.iter().chain(&s.schema.headers).map(|c| (c.name.clone(), c.ty.clone())).collect();
    schema_text(&key, &value)
}

fn plan_select(catalog: &Catalog, q: &ast::Query, reader: Reader, target: Target<'_>) -> Result<Planned, SqlError> {
    let scope = reader.scope();
    let filter = check_where(&q.filter, &scope)?;
    let taken: Vec<String> = scope.fields.iter().map(|f| f.name.clone()).collect();
    let items = name_items(&q.select, &|qf, pos| source_star(&reader, qf, pos), &taken, &[])?;
    let is_table = reader.is_table();
    let kind = target.kind.unwrap_or(reader.source.kind);
    if kind == SourceKind::Table && !is_table {
        return Err(err(
            q.pos,
            "Invalid result type. Your SELECT query produces a STREAM. Please use CREATE STREAM AS SELECT statement instead.",
        ));
    }
    if kind == SourceKind::Stream && is_table {
        return Err(err(
            q.pos,
            "Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead.",
        ));
    }
    // The key: PARTITION BY expressions, or the source's key columns.
    let partition: Vec<Expr> = q
        .partition_by
        .iter()
        .filter(|e| !matches!(e.kind, ExprKind::Literal(ast::Literal::Null)))
        .map(|e| compile_select(e, &scope))
        .collect::<Result<_, _>>()?;
    if !q.partition_by.is_empty() && is_table {
        return Err(err(q.pos, "Unsupported operation: PARTITION BY on a TABLE"));
    }
    let rekeyed = !q.partition_by.is_empty();
    let key_exprs: Vec<(Expr, String)> = if rekeyed {
        partition
            .iter()
            .zip(q.partition_by.iter().filter(|e| !matches!(e.kind, ExprKind::Literal(ast::Literal::Null))))
            .map(|(c, a)| (c.clone(), a.to_string()))
            .collect()
    } else {
        reader
            .source
            .schema
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| (Expr { node: Node::Column(i), ty: Some(c.ty.clone()) }, c.name.clone()))
            .collect()
    };
    let compiled: Vec<Expr> = items.iter().map(|it| compile_select(&it.expr, &scope)).collect::<Result<_, _>>()?;
    // A stream may drop its key: with no key column projected, the result has no key.
    let key_exprs = if kind == SourceKind::Stream
        && target.new_planner
        && !rekeyed
        && !key_exprs.iter().any(|(k, _)| compiled.iter().any(|c| same(c, k)))
    {
        Vec::new()
    } else {
        key_exprs
    };
    let (key_cols, key_exprs_out, value_cols, value_exprs) =
        split_key(&items, &compiled, &key_exprs, &target, "key column", q.pos)?;
    if value_cols.is_empty() {
        return Err(err(q.pos, "The projection contains no value columns."));
    }
    let (sink, writer) =
        make_sink(&target, kind, key_cols, value_cols, &reader.source, reader.window(), catalog, q.pos)?;
    let mut internal = Vec::new();
    if rekeyed {
        internal.push("PartitionBy-repartition".to_owned());
    }
    let inputs = vec![reader.source.topic.clone()];
    Ok(Planned {
        query: Query {
            id: target.id.clone(),
            sink: sink.name.clone(),
            inputs,
            internal_topics: internal,
            repartitions: Vec::new(),
            single_partition: false,
            kind: Kind::Select(Box::new(Select { reader, filter, key: key_exprs_out, value: value_exprs, rekeyed })),
            writer,
            stream_time: Default::default(),
            stream_time_moved: Default::default(),
            dropped: 0,
            late: 0,
            expired: 0,
        },
        sink,
    })
}

type Split = (Vec<(String, SqlType)>, Vec<Expr>, Vec<(String, SqlType)>, Vec<Expr>);

/// Split projected items into key columns (the items that are the key expressions, in key order)
/// and value columns.
fn split_key(
    items: &[Item],
    compiled: &[Expr],
    keys: &[(Expr, String)],
    target: &Target<'_>,
    what: &str,
    pos: Pos,
) -> Result<Split, SqlError> {
    let mut key_cols = Vec::new();
    let mut key_exprs = Vec::new();
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (k, text) in keys {
        let hits: Vec<usize> = compiled.iter().enumerate().filter(|(_, c)| same(c, k)).map(|(i, _)| i).collect();
        match hits.as_slice() {
            [] => {
                missing.push(text.clone());
            }
            [i] => {
                used.insert(*i);
                key_cols.push((items[*i].name.clone(), k.ty.clone().unwrap_or(SqlType::String)));
                key_exprs.push(compiled[*i].clone());
            }
            many => {
                let names: Vec<String> = many.iter().map(|i| items[*i].name.clone()).collect();
                return Err(err(
                    items[many[1]].pos,
                    format!("The projection contains a key column more than once: `{}`.", names.join("` and `")),
                ));
            }
        }
    }
    if !missing.is_empty() {
        let plural = if missing.len() > 1 { "s" } else { "" };
        let list = match missing.len() {
            1 => missing[0].clone(),
            _ => format!("{} and {}", missing[..missing.len() - 1].join(", "), missing[missing.len() - 1]),
        };
        return Err(err(
            pos,
            format!(
                "The query used to build `{}` must include the {what}{plural} {list} in its projection (eg, SELECT {}...).",
                target.name.name,
                missing.join(", ")
            ),
        ));
    }
    let mut value_cols = Vec::new();
    let mut value_exprs = Vec::new();
    for (i, (it, c)) in items.iter().zip(compiled).enumerate() {
        if used.contains(&i) {
            continue;
        }
        let ty = c.ty.clone().ok_or_else(|| {
            err(it.pos, format!("Can't infer a type of null. Please explicitly cast it to the required type, e.g. CAST(null AS VARCHAR). (column {})", it.name))
        })?;
        if key_cols.iter().any(|(n, _)| *n == it.name)
            || value_cols.iter().any(|(n, _): &(String, SqlType)| *n == it.name)
        {
            return Err(err(it.pos, format!("Duplicate column name: `{}`", it.name)));
        }
        value_cols.push((it.name.clone(), ty));
        value_exprs.push(c.clone());
    }
    Ok((key_cols, key_exprs, value_cols, value_exprs))
}

// ---------------------------------------------------------------------------------------------
// Aggregation.

#[derive(Debug)]
struct Agg {
    reader: Reader,
    filter: Option<Expr>,
    group: Vec<Expr>,
    aggs: Vec<(Aggregate, Vec<Expr>)>,
    window: Option<WindowSpec>,
    /// Tumbling and hopping windows: their state is deleted once stream time is this far past
    /// their start.
    retention: Option<i64>,
    having: Option<Expr>,
    key: Vec<Expr>,
    value: Vec<Expr>,
    emit_final: bool,
}

#[derive(Debug, Clone, Copy)]
enum WindowSpec {
    Tumbling { size: i64, grace: i64 },
    Hopping { size: i64, advance: i64, grace: i64 },
    Session { gap: i64, grace: i64 },
}

impl WindowSpec {
    fn grace(self) -> i64 {
        match self {
            WindowSpec::Tumbling { grace, .. }
            | WindowSpec::Hopping { grace, .. }
            | WindowSpec::Session { grace, .. } => grace,
        }
    }
    fn kind(self) -> WindowType {
        match self {
            WindowSpec::Tumbling { size, .. } => WindowType::Tumbling { size_ms: size },
            WindowSpec::Hopping { size, .. } => WindowType::Hopping { size_ms: size },
            WindowSpec::Session { .. } => WindowType::Session,
        }
    }
}

fn plan_aggregate(catalog: &Catalog, q: &ast::Query, reader: Reader, target: Target<'_>) -> Result<Planned, SqlError> {
    let scope = reader.scope();
    let filter = check_where(&q.filter, &scope)?;
    if let Some(kind) = target.kind
        && kind == SourceKind::Stream
    {
        return Err(err(
            q.pos,
            "Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead.",
        ));
    }
    if reader.source.value_format.format == catalog::Format::Kafka {
        return Err(err(
            q.pos,
            format!(
                "Source(s) {} are using the 'KAFKA' value format. This format does not yet support GROUP BY.",
                reader.source.name
            ),
        ));
    }
    if q.group_by.is_empty() {
        return Err(err(q.pos, "Aggregate functions require a GROUP BY clause (ksqlDB has no global aggregates)."));
    }
    let mut group = Vec::new();
    for g in &q.group_by {
        if let Some(name) = contains_aggregate(g) {
            return Err(err(
                g.pos,
                format!("GROUP BY does not support aggregate functions: {name} is an aggregate function."),
            ));
        }
        let c = expr::compile(g, &scope).map_err(|e| err(e.pos, e.message.replace("Column '", "GROUP BY column '")))?;
        if let Some(SqlType::Map(..)) = &c.ty {
            return Err(err(
                g.pos,
                "Map keys, including types that contain maps, are not supported as they may lead to unexpected behavior due to inconsistent serialization.",
            ));
        }
        group.push(c);
    }
    let window = match &q.window {
        None => None,
        Some(w) => Some(match w {
            WindowExpr::Tumbling { size, options } => WindowSpec::Tumbling {
                size: positive_size(size, q.pos)?,
                grace: options.grace.as_ref().map_or(DEFAULT_GRACE_MS, window_ms),
            },
            WindowExpr::Hopping { size, advance, options } => {
                let (size, advance) = (positive_size(size, q.pos)?, window_ms(advance));
                if advance <= 0 || advance > size {
                    return Err(err(q.pos, "Window advance must be positive and not larger than the window size"));
                }
                WindowSpec::Hopping { size, advance, grace: options.grace.as_ref().map_or(DEFAULT_GRACE_MS, window_ms) }
            }
            WindowExpr::Session { gap, options } => WindowSpec::Session {
                gap: window_ms(gap),
                grace: options.grace.as_ref().map_or(DEFAULT_GRACE_MS, window_ms),
            },
        }),
    };
    if reader.window().is_some() && window.is_some() {
        return Err(err(q.pos, "Cannot apply a WINDOW to an already windowed source"));
    }
    // How long a tumbling or hopping window's state is kept after it starts: Kafka Streams'
    // size + grace, or `RETENTION` when that is longer. Sessions are kept.
    let retention = match (&q.window, window) {
        (Some(WindowExpr::Tumbling { options, .. } | WindowExpr::Hopping { options, .. }), Some(spec)) => {
            let size = match spec {
                WindowSpec::Tumbling { size, .. } | WindowSpec::Hopping { size, .. } => size,
                WindowSpec::Session { .. } => 0,
            };
            Some(size.saturating_add(spec.grace()).max(options.retention.as_ref().map_or(0, window_ms)))
        }
        _ => None,
    };
    let taken: Vec<String> = scope.fields.iter().map(|f| f.name.clone()).collect();
    let items = name_items(&q.select, &|qf, pos| source_star(&reader, qf, pos), &taken, &[])?;
    // Extract aggregate calls into post-aggregation columns.
    let mut aggs: Vec<(Aggregate, Vec<Expr>)> = Vec::new();
    let mut agg_text: Vec<String> = Vec::new();
    let mut failure: Option<SqlError> = None;
    let mut extract = |e: &ast::Expr| -> Option<ast::Expr> {
        if let ExprKind::Function { name, args, star } = &e.kind
            && aggregate::is_aggregate(&name.name)
        {
            let text = e.to_string();
            if let Some(i) = agg_text.iter().position(|t| *t == text) {
                return Some(column_ref(&format!("KSQL_AGG_VARIABLE_{i}"), e.pos));
            }
            for a in args {
                if let Some(inner) = contains_aggregate(a) {
                    failure.get_or_insert(err(
                        a.pos,
                        format!("Aggregate functions can not be nested: {}({inner}())", name.name),
                    ));
                    return Some(column_ref("KSQL_AGG_VARIABLE_0", e.pos));
                }
            }
            let compiled: Result<Vec<Expr>, SqlError> = args.iter().map(|a| compile_select(a, &scope)).collect();
            let compiled = match compiled {
                Ok(c) => c,
                Err(er) => {
                    failure.get_or_insert(er);
                    return Some(column_ref("KSQL_AGG_VARIABLE_0", e.pos));
                }
            };
            let types: Vec<Option<SqlType>> = compiled.iter().map(|c| c.ty.clone()).collect();
            let literals: Vec<Option<Value>> = compiled
                .iter()
                .map(|c| match &c.node {
                    Node::Literal(v) => Some(v.clone()),
                    _ => None,
                })
                .collect();
            match Aggregate::resolve(&name.name, &types, *star, &literals) {
                Ok(a) => {
                    let i = aggs.len();
                    aggs.push((a, compiled));
                    agg_text.push(text);
                    Some(column_ref(&format!("KSQL_AGG_VARIABLE_{i}"), e.pos))
                }
                Err(m) => {
                    failure.get_or_insert(err(e.pos, m));
                    Some(column_ref("KSQL_AGG_VARIABLE_0", e.pos))
                }
            }
        } else {
            None
        }
    };
    // Replace group-by expressions by the key columns.
    let group_ref = |e: &ast::Expr| -> Option<ast::Expr> {
        let c = expr::compile(e, &scope).ok()?;
        group.iter().position(|g| same(g, &c)).map(|i| column_ref(&format!("KSQL_GRP_{i}"), e.pos))
    };
    let mut rewritten_items = Vec::new();
    for it in &items {
        let e = rewrite(&it.expr, &mut |x| group_ref(x).or_else(|| extract(x)));
        rewritten_items.push(e);
    }
    let having = q.having.as_ref().map(|h| rewrite(h, &mut |x| group_ref(x).or_else(|| extract(x))));
    if let Some(f) = failure {
        return Err(f);
    }
    if aggs.iter().any(|(a, _)| !a.can_undo()) && reader.is_table() {
        let names: Vec<&str> = agg_text
            .iter()
            .zip(&aggs)
            .filter(|(_, (a, _))| !a.can_undo())
            .map(|(t, _)| t.split('(').next().unwrap_or(""))
            .collect();
        return Err(err(
            q.pos,
            format!(
                "The aggregation functions {} cannot be applied to a table source, only to a stream source.",
                names.join(", ")
            ),
        ));
    }
    // The post-aggregation scope.
    let mut post = Scope::default();
    for (i, g) in group.iter().enumerate() {
        post.push(None, format!("KSQL_GRP_{i}"), g.ty.clone().unwrap_or(SqlType::String));
    }
    for (i, (a, _)) in aggs.iter().enumerate() {
        post.push(None, format!("KSQL_AGG_VARIABLE_{i}"), a.ret.clone());
    }
    if window.is_some() {
        post.push(Some(&reader.alias), "WINDOWSTART", SqlType::Bigint);
        post.push(Some(&reader.alias), "WINDOWEND", SqlType::Bigint);
    }
    // Any column left refers to the source outside the GROUP BY.
    let mut loose = Vec::new();
    for (e, it) in rewritten_items.iter().zip(&items) {
        visit(e, &mut |x| {
            if let ExprKind::Column { name, qualifier } = &x.kind
                && post.resolve(None, name).is_err()
            {
                let text = match qualifier {
                    Some(qf) => format!("{}.{}", qf.name, name.name),
                    None => name.name.clone(),
                };
                if !loose.contains(&text) {
                    loose.push(text);
                }
            }
        });
        let _ = it;
    }
    if !loose.is_empty() {
        if loose.iter().any(|l| l == "WINDOWSTART" || l == "WINDOWEND") && window.is_none() {
            return Err(err(q.pos, format!("SELECT column '{}' cannot be resolved.", loose[0])));
        }
        return Err(err(
            q.pos,
            format!("Non-aggregate SELECT expression(s) not part of GROUP BY: {}", loose.join(", ")),
        ));
    }
    let compiled: Vec<Expr> = rewritten_items.iter().map(|e| compile_select(e, &post)).collect::<Result<_, _>>()?;
    let having = match having {
        None => None,
        Some(h) => {
            let c = expr::compile(&h, &post).map_err(|e| {
                if e.message.starts_with("Column '") {
                    err(e.pos, format!("Non-aggregate HAVING expression not part of GROUP BY: {}", e.message))
                } else {
                    e
                }
            })?;
            if !matches!(c.ty, Some(SqlType::Boolean) | None) {
                return Err(err(h.pos, "HAVING expression must evaluate to a boolean"));
            }
            Some(c)
        }
    };
    let keys: Vec<(Expr, String)> = group
        .iter()
        .enumerate()
        .map(|(i, g)| (Expr { node: Node::Column(i), ty: g.ty.clone() }, q.group_by[i].to_string()))
        .collect();
    let (key_cols, key_exprs, value_cols, value_exprs) =
        split_key(&items, &compiled, &keys, &target, "grouping expression", q.pos)?;
    if value_cols.is_empty() {
        return Err(err(q.pos, "The projection contains no value columns."));
    }
    let win_kind = window.map(WindowSpec::kind);
    let (sink, writer) =
        make_sink(&target, SourceKind::Table, key_cols, value_cols, &reader.source, win_kind, catalog, q.pos)?;
    // A repartition is needed unless the grouping is exactly the source key.
    let key_count = reader.source.schema.key.len();
    let by_key =
        group.len() == key_count && group.iter().enumerate().all(|(i, g)| matches!(g.node, Node::Column(c) if c == i));
    let mut internal = vec!["Aggregate-Materialize-changelog".to_owned()];
    if !by_key || reader.is_table() {
        internal.push("Aggregate-GroupBy-repartition".to_owned());
    }
    let inputs = vec![reader.source.topic.clone()];
    let repartitions = if by_key || reader.is_table() {
        Vec::new()
    } else {
        vec![Repartition {
            source: reader.source.topic.clone(),
            suffix: "Aggregate-GroupBy-repartition".into(),
            topic: String::new(),
        }]
    };
    let single_partition = reader.is_table() && !by_key;
    Ok(Planned {
        query: Query {
            id: target.id.clone(),
            sink: sink.name.clone(),
            inputs,
            internal_topics: internal,
            repartitions,
            single_partition,
            kind: Kind::Aggregate(Box::new(Agg {
                reader,
                filter,
                group,
                aggs,
                window,
                retention,
                having,
                key: key_exprs,
                value: value_exprs,
                emit_final: q.emit == Some(Emit::Final),
            })),
            writer,
            stream_time: Default::default(),
            stream_time_moved: Default::default(),
            dropped: 0,
            late: 0,
            expired: 0,
        },
        sink,
    })
}

// ---------------------------------------------------------------------------------------------
// Joins.

#[derive(Debug)]
struct Join {
    left: Reader,
    right: Reader,
    kind: JoinKind,
    left_key: Expr,
    right_key: Expr,
    /// Whether a side's records are keyed by its join expression (else it is repartitioned).
    left_by_key: bool,
    right_by_key: bool,
    /// `WITHIN (before, after)` for stream-stream joins.
    within: Option<(i64, i64)>,
    left_width: usize,
    right_width: usize,
    filter: Option<Expr>,
    key: Vec<Expr>,
    value: Vec<Expr>,
}

fn plan_join(catalog: &Catalog, q: &ast::Query, join: &ast::Join, target: Target<'_>) -> Result<Planned, SqlError> {
    let side = |r: &Relation| -> Result<Reader, SqlError> {
        match r {
            Relation::Source { name, alias } => {
                let source =
                    catalog.get(&name.name).ok_or_else(|| err(name.pos, format!("{} does not exist.", name.name)))?;
                let alias = alias.as_ref().map_or(source.name.clone(), |a| a.name.clone());
                Reader::new(source, &alias).map_err(|m| err(name.pos, m))
            }
            Relation::Join(j) => Err(err(j.pos, "Joins of more than two sources are not supported yet")),
        }
    };
    let (left, right) = (side(&join.left)?, side(&join.right)?);
    if left.alias == right.alias {
        return Err(err(
            join.pos,
            format!("Can not join '{}' to '{}': self joins require aliases", left.alias, right.alias),
        ));
    }
    for r in [&left, &right] {
        if r.source.value_format.format == catalog::Format::Kafka {
            return Err(err(
                join.pos,
                format!(
                    "Source(s) {}, {} are using the 'KAFKA' value format. This format does not yet support JOIN.",
                    left.source.name, right.source.name
                ),
            ));
        }
    }
    match (left.window(), right.window()) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(err(join.pos, "Can not join windowed source to non-windowed source."));
        }
        _ => {}
    }
    let (lt, rt) = (left.is_table(), right.is_table());
    if !lt && rt && matches!(join.kind, JoinKind::Right | JoinKind::Full) {
        return Err(err(
            join.pos,
            "Invalid join type: full-outer and right joins of a stream with a table are not supported",
        ));
    }
    if lt && !rt {
        return Err(err(
            join.pos,
            "Invalid join order: table-stream joins are not supported; only stream-table joins. Got TABLE JOIN STREAM.",
        ));
    }
    if !lt && !rt && join.within.is_none() {
        return Err(err(join.pos, "Stream-Stream joins must have a WITHIN clause specified. None was provided."));
    }
    if (lt || rt) && join.within.is_some() {
        return Err(err(join.pos, "A join with a table can not have a WITHIN clause."));
    }
    let (ls, rs) = (left.scope(), right.scope());
    let mut scope = Scope::default();
    scope.fields.extend(ls.fields.iter().cloned());
    scope.fields.extend(rs.fields.iter().cloned());
    // ON: one equality between an expression of each side.
    let ExprKind::Binary { op: ast::BinaryOp::Eq, left: a, right: b } = &join.on.kind else {
        return Err(err(
            join.on.pos,
            format!("Unsupported join expression: {} (only equality of the two sides is supported)", join.on),
        ));
    };
    let side_of = |e: &ast::Expr| -> Result<(bool, Expr), SqlError> {
        let mut uses_left = false;
        let mut uses_right = false;
        let c = expr::compile(e, &scope)?;
        let mut check = |x: &Expr| {
            if let Node::Column(i) = x.node {
                if i < ls.fields.len() {
                    uses_left = true;
                } else {
                    uses_right = true;
                }
            }
        };
        walk_compiled(&c, &mut check);
        if uses_left == uses_right {
            return Err(err(
                join.on.pos,
                format!(
                    "Invalid comparison expression '{e}' in join '{}'. Each side of the join comparision must contain references from exactly one source.",
                    join.on
                ),
            ));
        }
        Ok((uses_left, c))
    };
    let (a_left, ca) = side_of(a)?;
    let (b_left, cb) = side_of(b)?;
    if a_left == b_left {
        return Err(err(join.on.pos, format!("Invalid join condition: {} refers to one side only", join.on)));
    }
    let (left_key, right_key_joined, left_text, right_text) =
        if a_left { (ca, cb, a.to_string(), b.to_string()) } else { (cb, ca, b.to_string(), a.to_string()) };
    if let (Some(x), Some(y)) = (&left_key.ty, &right_key_joined.ty)
        && x != y
    {
        return Err(err(
            join.on.pos,
            format!("Invalid join condition: types don't match. Got {left_text}{{{x}}} = {right_text}{{{y}}}."),
        ));
    }
    // Compile the right key again in the right side's own scope (its columns start at 0).
    let shift = ls.fields.len();
    let right_key = shift_columns(&right_key_joined, shift);
    if rt {
        let is_pk = right.source.schema.key.len() == 1 && matches!(right_key.node, Node::Column(0));
        if !is_pk {
            return Err(err(
                join.on.pos,
                format!(
                    "Cannot repartition a TABLE source. If this is a join, make sure that the criteria uses the TABLE's key column {} instead of {right_text}",
                    right.source.schema.key.first().map_or("?".into(), |c| c.name.clone())
                ),
            ));
        }
    }
    if lt {
        let is_pk = left.source.schema.key.len() == 1 && matches!(left_key.node, Node::Column(0));
        if !is_pk {
            return Err(err(
                join.on.pos,
                "Table-table joins on a non-key column (foreign-key joins) are not supported yet",
            ));
        }
    }
    let filter = check_where(&q.filter, &scope)?;
    let clashing: Vec<String> =
        ls.fields.iter().filter(|f| rs.fields.iter().any(|g| g.name == f.name)).map(|f| f.name.clone()).collect();
    let items = name_items(
        &q.select,
        &|qf, pos| {
            let mut out = Vec::new();
            for r in [&left, &right] {
                if qf.is_some_and(|x| x.name != r.alias) {
                    continue;
                }
                for (name, e) in source_star(r, None, pos)? {
                    out.push((format!("{}_{}", r.alias, name), e));
                }
            }
            if out.is_empty()
                && let Some(x) = qf
            {
                return Err(err(x.pos, format!("'{}' is not a valid stream/table name or alias.", x.name)));
            }
            Ok(out)
        },
        &scope.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        &clashing,
    )?;
    let compiled: Vec<Expr> = items.iter().map(|it| compile_select(&it.expr, &scope)).collect::<Result<_, _>>()?;
    // The key is the join expression; either side's counts (a full outer join needs both merged,
    // which ksqlDB writes as ROWKEY; here either side in the projection is accepted).
    let hits_l: Vec<usize> = compiled.iter().enumerate().filter(|(_, c)| same(c, &left_key)).map(|(i, _)| i).collect();
    let hits_r: Vec<usize> =
        compiled.iter().enumerate().filter(|(_, c)| same(c, &right_key_joined)).map(|(i, _)| i).collect();
    let key_index = match (hits_l.as_slice(), hits_r.as_slice(), join.kind) {
        ([i], [], _) | ([], [i], _) => *i,
        ([i], [_], JoinKind::Inner | JoinKind::Left) => *i,
        ([_], [i], JoinKind::Right) => *i,
        ([], [], _) => {
            let msg = format!(
                "The query used to build `{}` must include the join expressions {left_text} or {right_text} in its projection (eg, SELECT {left_text}...).",
                target.name.name
            );
            return Err(err(q.pos, msg));
        }
        (l, r, _) => {
            let all: Vec<String> = l.iter().chain(r).map(|i| items[*i].name.clone()).collect();
            return Err(err(
                q.pos,
                format!("The projection contains a key column more than once: `{}`.", all.join("` and `")),
            ));
        }
    };
    let key_ty = left_key.ty.clone().unwrap_or(SqlType::String);
    let key_cols = vec![(items[key_index].name.clone(), key_ty)];
    let key_exprs = vec![compiled[key_index].clone()];
    let mut value_cols = Vec::new();
    let mut value_exprs = Vec::new();
    for (i, (it, c)) in items.iter().zip(&compiled).enumerate() {
        if i == key_index {
            continue;
        }
        if hits_l.contains(&i) || hits_r.contains(&i) {
            // The other side's join expression: kept as a value column.
        }
        let ty = c.ty.clone().ok_or_else(|| err(it.pos, "Can't infer a type of null. Please explicitly cast it."))?;
        value_cols.push((it.name.clone(), ty));
        value_exprs.push(c.clone());
    }
    if value_cols.is_empty() {
        return Err(err(q.pos, "The projection contains no value columns."));
    }
    let kind = if lt && rt { SourceKind::Table } else { SourceKind::Stream };
    if let Some(k) = target.kind
        && k != kind
    {
        let (made, want) =
            if kind == SourceKind::Table { ("TABLE", "CREATE TABLE") } else { ("STREAM", "CREATE STREAM") };
        return Err(err(
            q.pos,
            format!(
                "Invalid result type. Your SELECT query produces a {made}. Please use {want} AS SELECT statement instead."
            ),
        ));
    }
    let (sink, writer) = make_sink(&target, kind, key_cols, value_cols, &left.source, left.window(), catalog, q.pos)?;
    let mut internal = Vec::new();
    let left_by_key = left.source.schema.key.len() == 1 && matches!(left_key.node, Node::Column(0));
    let right_by_key = right.source.schema.key.len() == 1 && matches!(right_key.node, Node::Column(0));
    let mut repartitions = Vec::new();
    if !left_by_key {
        internal.push("Join-left-repartition".to_owned());
        repartitions.push(Repartition {
            source: left.source.topic.clone(),
            suffix: "Join-left-repartition".into(),
            topic: String::new(),
        });
    }
    if !right_by_key {
        repartitions.push(Repartition {
            source: right.source.topic.clone(),
            suffix: "Join-right-repartition".into(),
            topic: String::new(),
        });
    }
    let within = join.within.as_ref().map(|w| (w.before.millis(), w.after.millis()));
    let inputs = vec![left.source.topic.clone(), right.source.topic.clone()];
    let (left_width, right_width) = (ls.fields.len(), rs.fields.len());
    Ok(Planned {
        query: Query {
            id: target.id.clone(),
            sink: sink.name.clone(),
            inputs,
            internal_topics: internal,
            repartitions,
            single_partition: false,
            kind: Kind::Join(Box::new(Join {
                left,
                right,
                left_by_key,
                right_by_key,
                kind: join.kind,
                left_key,
                right_key,
                within,
                left_width,
                right_width,
                filter,
                key: key_exprs,
                value: value_exprs,
            })),
            writer,
            stream_time: Default::default(),
            stream_time_moved: Default::default(),
            dropped: 0,
            late: 0,
            expired: 0,
        },
        sink,
    })
}

fn walk_compiled(e: &Expr, f: &mut dyn FnMut(&Expr)) {
    f(e);
    let mut go = |x: &Expr| walk_compiled(x, f);
    match &e.node {
        Node::Column(_) | Node::Literal(_) => {}
        Node::Neg(x)
        | Node::Not(x)
        | Node::IsNull { expr: x, .. }
        | Node::Cast { expr: x, .. }
        | Node::Field { expr: x, .. } => go(x),
        Node::Arith { left, right, .. }
        | Node::Compare { left, right, .. }
        | Node::IsDistinct { left, right, .. }
        | Node::Concat(left, right)
        | Node::And(left, right)
        | Node::Or(left, right)
        | Node::Subscript { expr: left, index: right } => {
            go(left);
            go(right);
        }
        Node::Between { expr, low, high, .. } => {
            go(expr);
            go(low);
            go(high);
        }
        Node::In { expr, list, .. } => {
            go(expr);
            list.iter().for_each(&mut go);
        }
        Node::Like { expr, pattern, .. } => {
            go(expr);
            go(pattern);
        }
        Node::Case { operand, whens, otherwise } => {
            if let Some(o) = operand {
                go(o);
            }
            for (c, r) in whens {
                go(c);
                go(r);
            }
            if let Some(o) = otherwise {
                go(o);
            }
        }
        Node::Call { args, .. } | Node::Array(args) => args.iter().for_each(&mut go),
        Node::Map(entries) => entries.iter().for_each(|(k, v)| {
            go(k);
            go(v);
        }),
        Node::Struct(fields) => fields.iter().for_each(|(_, v)| go(v)),
    }
}

fn shift_columns(e: &Expr, by: usize) -> Expr {
    let mut out = e.clone();
    fn fix(e: &mut Expr, by: usize) {
        match &mut e.node {
            Node::Column(i) => *i -= by,
            Node::Literal(_) => {}
            Node::Neg(x)
            | Node::Not(x)
            | Node::IsNull { expr: x, .. }
            | Node::Cast { expr: x, .. }
            | Node::Field { expr: x, .. } => fix(x, by),
            Node::Arith { left, right, .. }
            | Node::Compare { left, right, .. }
            | Node::IsDistinct { left, right, .. }
            | Node::Concat(left, right)
            | Node::And(left, right)
            | Node::Or(left, right)
            | Node::Subscript { expr: left, index: right } => {
                fix(left, by);
                fix(right, by);
            }
            Node::Between { expr, low, high, .. } => {
                fix(expr, by);
                fix(low, by);
                fix(high, by);
            }
            Node::In { expr, list, .. } => {
                fix(expr, by);
                list.iter_mut().for_each(|x| fix(x, by));
            }
            Node::Like { expr, pattern, .. } => {
                fix(expr, by);
                fix(pattern, by);
            }
            Node::Case { operand, whens, otherwise } => {
                if let Some(o) = operand {
                    fix(o, by);
                }
                for (c, r) in whens {
                    fix(c, by);
                    fix(r, by);
                }
                if let Some(o) = otherwise {
                    fix(o, by);
                }
            }
            Node::Call { args, .. } | Node::Array(args) => args.iter_mut().for_each(|x| fix(x, by)),
            Node::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                fix(k, by);
                fix(v, by);
            }),
            Node::Struct(fields) => fields.iter_mut().for_each(|(_, v)| fix(v, by)),
        }
    }
    fix(&mut out, by);
    out
}

// ---------------------------------------------------------------------------------------------
// Running.

fn eval_all(exprs: &[Expr], row: &[Value]) -> Vec<Value> {
    exprs.iter().map(|e| e.eval(row).unwrap_or(Value::Null)).collect()
}

fn passes(filter: &Option<Expr>, row: &[Value]) -> bool {
    filter.as_ref().is_none_or(|f| f.eval(row).is_ok_and(|v| v.is_true()))
}

impl Query {
    /// The windowing of the sink, if any.
    pub fn process(&mut self, rec: &Record, store: &mut dyn StateStore) -> Result<Vec<Record>, String> {
        let id = self.id.clone();
        let mut out = Vec::new();
        let writer = &self.writer;
        let mut emit =
            |key: &[Value], value: Option<&[Value]>, ts: i64, window: Option<Window>| -> Result<(), String> {
                out.push(writer.write(key, value, ts, window)?);
                Ok(())
            };
        match &mut self.kind {
            Kind::Select(s) => {
                let input = s.reader.decode(rec)?;
                let table = s.reader.is_table();
                if table && !input.key.is_empty() && input.key.iter().all(Value::is_null) {
                    return Err("Skipping a table record with a NULL key".into());
                }
                match &input.value {
                    None => {
                        // Tables forward deletes; streams forward a null value unchanged when
                        // nothing filters it.
                        if table || s.filter.is_none() {
                            let row = s.reader.row(&input);
                            let key = if table { input.key.clone() } else { eval_all(&s.key, &row) };
                            emit(&key, None, input.ts, input.window)?;
                        }
                    }
                    Some(_) => {
                        let row = s.reader.row(&input);
                        if !passes(&s.filter, &row) {
                            if table {
                                emit(&input.key, None, input.ts, input.window)?;
                            }
                        } else {
                            let key = eval_all(&s.key, &row);
                            let value = eval_all(&s.value, &row);
                            let _ = s.rekeyed;
                            emit(&key, Some(&value), input.ts, input.window)?;
                        }
                    }
                }
            }
            Kind::Aggregate(a) => {
                let input = a.reader.decode(rec)?;
                let time = match self.stream_time.entry(input.partition) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let saved = if a.window.is_some() {
                            store
                                .get(&format!("{id}-time"), &input.partition.to_be_bytes())
                                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                                .map(i64::from_be_bytes)
                        } else {
                            None
                        };
                        e.insert(saved.unwrap_or(i64::MIN))
                    }
                };
                if input.ts > *time {
                    *time = input.ts;
                    if a.window.is_some() {
                        self.stream_time_moved.insert(input.partition);
                    }
                }
                let now = *time;
                self.late += a.process(&id, &input, now, store, &mut emit)?;
            }
            Kind::Join(j) => {
                let from_left = rec.topic == j.left.source.topic;
                let from_right = rec.topic == j.right.source.topic;
                if from_left {
                    let input = j.left.decode(rec)?;
                    j.process(&id, true, &input, store, &mut emit)?;
                }
                if from_right {
                    let input = j.right.decode(rec)?;
                    j.process(&id, false, &input, store, &mut emit)?;
                }
            }
        }
        Ok(out)
    }

    /// Whether its state is not aligned with its input partitions: it re-keys its input and no
    /// repartition topic realigns it (not asked for, or a table re-grouped). Such a query keeps
    /// its state in one logical partition (0), which is correct with a single replica.
    pub fn needs_repartition(&self) -> bool {
        self.single_partition || self.repartitions.iter().any(|r| r.topic.is_empty())
    }

    /// Delete the windows of the partitions where stream time moved that are past retention
    /// (their state, and their EMIT FINAL and HAVING marks), through the `<id>-expiry` index
    /// ordered by window start, so the work is the number of windows expired.
    fn expire(&self, store: &mut dyn StateStore) -> usize {
        let Kind::Aggregate(a) = &self.kind else { return 0 };
        let Some(retention) = a.retention else { return 0 };
        let single = self.needs_repartition();
        let (index_store, agg_store) = (format!("{}-expiry", self.id), format!("{}-agg", self.id));
        let (final_store, having_store) = (format!("{}-final", self.id), format!("{}-having", self.id));
        let mut expired = 0;
        for p in &self.stream_time_moved {
            let Some(now) = self.stream_time.get(p) else { continue };
            // Windows starting at or before the cutoff are gone.
            let cutoff = now.saturating_sub(retention);
            store.set_partition(Some(if single { 0 } else { *p }));
            for (index, _) in store.range_to(&index_store, &ordered(cutoff.saturating_add(1))) {
                let (start, gkey) = index.split_at(8);
                let start = i64::from_be_bytes(start.try_into().unwrap_or([0; 8])) ^ i64::MIN;
                let mut k = gkey.to_vec();
                k.extend_from_slice(&start.to_be_bytes());
                store.delete(&agg_store, &k);
                if a.emit_final {
                    store.delete(&final_store, &k);
                }
                if a.having.is_some()
                    && let Some(group) = decode_row(gkey)
                {
                    let states: Vec<Value> = a.aggs.iter().map(|(g, _)| g.init()).collect();
                    let size = match a.window {
                        Some(WindowSpec::Tumbling { size, .. } | WindowSpec::Hopping { size, .. }) => size,
                        _ => 0,
                    };
                    let w = Window { start, end: start.saturating_add(size) };
                    let mut flag = encode_row(&eval_all(&a.key, &a.result_row(&group, &states, Some(w))));
                    flag.extend_from_slice(&start.to_be_bytes());
                    store.delete(&having_store, &flag);
                }
                store.delete(&index_store, &index);
                expired += 1;
            }
        }
        expired
    }

    /// Write the stream time of the partitions where it moved to the store (`<id>-time`, keyed
    /// by input partition, in that partition's state — or the single one), so windows that closed
    /// stay closed after a restart. The runtime calls it once per commit, not per record.
    pub fn save_stream_time(&mut self, store: &mut dyn StateStore) {
        self.expired += self.expire(store) as u64;
        let single = self.needs_repartition();
        let name = format!("{}-time", self.id);
        for p in std::mem::take(&mut self.stream_time_moved) {
            if let Some(t) = self.stream_time.get(&p) {
                store.set_partition(Some(if single { 0 } else { p }));
                store.put(&name, p.to_be_bytes().to_vec(), t.to_be_bytes().to_vec());
            }
        }
    }

    /// Read the inputs that need it through repartition topics named `<prefix><id>-<suffix>`.
    pub fn set_repartition_prefix(&mut self, prefix: &str) {
        for r in &mut self.repartitions {
            r.topic = format!("{prefix}{}-{}", self.id, r.suffix);
        }
    }

    /// Whether this query reads `topic` (a source, or one of its repartition topics).
    pub fn reads(&self, topic: &str) -> bool {
        self.inputs.iter().any(|t| t == topic) || self.repartitions.iter().any(|r| r.topic == topic)
    }

    /// The bytes whose Kafka partition a record of a repartitioned input goes to: the grouping
    /// (any stable encoding: only this query reads it) or the join key (serialized in the key
    /// format of the side that is not repartitioned, so its records' partitions match). `None`:
    /// the record contributes nothing (a tombstone, filtered out, a NULL key) and is dropped, as
    /// Kafka Streams drops it before its repartition topic.
    pub fn route(&self, rec: &Record) -> Result<Option<Vec<u8>>, String> {
        match &self.kind {
            Kind::Select(_) => Ok(None),
            Kind::Aggregate(a) => {
                let input = a.reader.decode(rec)?;
                if input.value.is_none() {
                    return Ok(None);
                }
                let row = a.reader.row(&input);
                if !passes(&a.filter, &row) {
                    return Ok(None);
                }
                let group = eval_all(&a.group, &row);
                Ok((!group.iter().any(Value::is_null)).then(|| encode_row(&group)))
            }
            Kind::Join(j) => {
                let left = rec.topic == j.left.source.topic;
                let (reader, key_expr, partner, partner_by_key) = if left {
                    (&j.left, &j.left_key, &j.right, j.right_by_key)
                } else {
                    (&j.right, &j.right_key, &j.left, j.left_by_key)
                };
                let input = reader.decode(rec)?;
                if input.value.is_none() {
                    return Ok(None);
                }
                let key = key_expr.eval(&reader.row(&input)).unwrap_or(Value::Null);
                if key.is_null() {
                    return Ok(None);
                }
                if partner_by_key {
                    partner.encode_key(std::slice::from_ref(&key))
                } else {
                    Ok(Some(encode_row(std::slice::from_ref(&key))))
                }
            }
        }
    }
}

type EmitFn<'a> = dyn FnMut(&[Value], Option<&[Value]>, i64, Option<Window>) -> Result<(), String> + 'a;

impl Agg {
    fn windows(&self, ts: i64) -> Vec<Window> {
        match self.window {
            None => vec![],
            Some(WindowSpec::Tumbling { size, .. }) => {
                let start = ts - ts.rem_euclid(size);
                vec![Window { start, end: start.saturating_add(size) }]
            }
            Some(WindowSpec::Hopping { size, advance, .. }) => {
                let mut out = Vec::new();
                let last = ts - ts.rem_euclid(advance);
                let mut start = last;
                while start > ts.saturating_sub(size) && start >= 0 {
                    out.push(Window { start, end: start.saturating_add(size) });
                    start -= advance;
                }
                out.reverse();
                out
            }
            Some(WindowSpec::Session { .. }) => vec![Window { start: ts, end: ts }],
        }
    }

    fn result_row(&self, group: &[Value], states: &[Value], window: Option<Window>) -> Vec<Value> {
        let mut row: Vec<Value> = group.to_vec();
        for ((a, _), s) in self.aggs.iter().zip(states) {
            row.push(a.result(s));
        }
        if let Some(w) = window {
            row.push(Value::Bigint(w.start));
            row.push(Value::Bigint(w.end));
        }
        row
    }

    /// Emit the current result of a group/window (a tombstone when HAVING rejects it).
    /// A row HAVING rejects deletes what was emitted for its key before, if anything.
    #[allow(clippy::too_many_arguments)]
    fn output(
        &self,
        id: &str,
        store: &mut dyn StateStore,
        group: &[Value],
        states: &[Value],
        window: Option<Window>,
        ts: i64,
        emit: &mut EmitFn<'_>,
    ) -> Result<(), String> {
        let row = self.result_row(group, states, window);
        let key = eval_all(&self.key, &row);
        if self.having.is_none() {
            let value = eval_all(&self.value, &row);
            return emit(&key, Some(&value), ts, window);
        }
        let having_store = format!("{id}-having");
        let mut flag = encode_row(&key);
        if let Some(w) = window {
            flag.extend_from_slice(&w.start.to_be_bytes());
        }
        if !passes(&self.having, &row) {
            if store.get(&having_store, &flag).is_some() {
                store.delete(&having_store, &flag);
                return emit(&key, None, ts, window);
            }
            return Ok(());
        }
        store.put(&having_store, flag, Vec::new());
        let value = eval_all(&self.value, &row);
        emit(&key, Some(&value), ts, window)
    }

    fn process(
        &self,
        id: &str,
        input: &Input,
        stream_time: i64,
        store: &mut dyn StateStore,
        emit: &mut EmitFn<'_>,
    ) -> Result<u64, String> {
        let mut late = 0;
        let table = self.reader.is_table();
        let agg_store = format!("{id}-agg");
        let src_store = format!("{id}-src");
        // The new contribution (group key and aggregate arguments), if any.
        let new = match &input.value {
            Some(_) => {
                let row = self.reader.row(input);
                if passes(&self.filter, &row) {
                    let group = eval_all(&self.group, &row);
                    if group.iter().any(Value::is_null) {
                        None
                    } else {
                        let args: Vec<Value> = self
                            .aggs
                            .iter()
                            .map(|(_, a)| a.first().map_or(Value::Null, |e| e.eval(&row).unwrap_or(Value::Null)))
                            .collect();
                        Some((group, args))
                    }
                } else {
                    None
                }
            }
            None => None,
        };
        if table {
            if !input.key.is_empty() && input.key.iter().all(Value::is_null) {
                return Err("Skipping a table record with a NULL key".into());
            }
            // Retract the row's previous contribution, then add the new one.
            let src_key = encode_row(&input.key);
            if let Some(old) = store
                .get(&src_store, &src_key)
                .and_then(|b| decode_row(&b))
                .filter(|r| r.len() == self.group.len() + self.aggs.len())
            {
                let n = self.group.len();
                let (group, args) = old.split_at(n);
                // The same group: retract and add, then emit once (as Kafka Streams does when a
                // table row's grouping key is unchanged).
                let same_group = new.as_ref().is_some_and(|(g, _)| g.as_slice() == group);
                let gkey = encode_row(group);
                if let Some(mut state) =
                    store.get(&agg_store, &gkey).and_then(|b| decode_row(&b)).filter(|r| r.len() == 1 + self.aggs.len())
                {
                    let ts = state[0].as_i64().unwrap_or(0).max(input.ts);
                    let mut states: Vec<Value> = state.split_off(1);
                    for (i, (a, _)) in self.aggs.iter().enumerate() {
                        states[i] = a.undo(std::mem::replace(&mut states[i], Value::Null), &args[i]);
                    }
                    let mut rowv = vec![Value::Bigint(ts)];
                    rowv.extend(states.iter().cloned());
                    store.put(&agg_store, gkey, encode_row(&rowv));
                    if !same_group {
                        self.output(id, store, group, &states, None, ts, emit)?;
                    }
                }
                store.delete(&src_store, &src_key);
            }
            if let Some((group, args)) = &new {
                let mut saved = group.clone();
                saved.extend(args.iter().cloned());
                store.put(&src_store, src_key, encode_row(&saved));
            }
        }
        let Some((group, args)) = new else { return Ok(0) };
        let gkey = encode_row(&group);
        match self.window {
            None => {
                let (ts, states, _) = self.fold(store, &agg_store, gkey, &args, input.ts);
                self.output(id, store, &group, &states, None, ts, emit)?;
            }
            Some(WindowSpec::Session { gap, grace }) => {
                let close = stream_time.saturating_sub(grace);
                if input.ts < close {
                    return Ok(1);
                }
                let mut start = input.ts;
                let mut end = input.ts;
                let mut ts = input.ts;
                let mut states: Vec<Value> = self.aggs.iter().map(|(a, _)| a.init()).collect();
                for (i, (a, _)) in self.aggs.iter().enumerate() {
                    states[i] = a.add(std::mem::replace(&mut states[i], Value::Null), &args[i]);
                }
                let mut merged = Vec::new();
                for (k, v) in store.range(&agg_store, &gkey) {
                    let Some(mut saved) = decode_row(&v).filter(|r| r.len() == 3 + self.aggs.len()) else { continue };
                    let (s_start, s_end) = (saved[1].as_i64().unwrap_or(0), saved[2].as_i64().unwrap_or(0));
                    if s_end.saturating_add(gap) >= input.ts && s_start.saturating_sub(gap) <= input.ts {
                        let old_states = saved.split_off(3);
                        ts = ts.max(saved[0].as_i64().unwrap_or(0));
                        start = start.min(s_start);
                        end = end.max(s_end);
                        for (i, (a, _)) in self.aggs.iter().enumerate() {
                            states[i] = a.merge(std::mem::replace(&mut states[i], Value::Null), old_states[i].clone());
                        }
                        merged.push((k, Window { start: s_start, end: s_end }, saved[0].as_i64().unwrap_or(0)));
                    }
                }
                let key_values = |w: Window| -> Vec<Value> {
                    let row = self.result_row(&group, &states, Some(w));
                    eval_all(&self.key, &row)
                };
                for (k, w, old_ts) in &merged {
                    store.delete(&agg_store, k);
                    if !self.emit_final {
                        emit(&key_values(*w), None, *old_ts, Some(*w))?;
                    }
                }
                let w = Window { start, end };
                let mut k = gkey.clone();
                k.extend_from_slice(&start.to_be_bytes());
                let mut rowv = vec![Value::Bigint(ts), Value::Bigint(start), Value::Bigint(end)];
                rowv.extend(states.iter().cloned());
                store.put(&agg_store, k, encode_row(&rowv));
                if !self.emit_final {
                    self.output(id, store, &group, &states, Some(w), ts, emit)?;
                }
            }
            Some(spec) => {
                let grace = spec.grace();
                for w in self.windows(input.ts) {
                    if w.end <= stream_time.saturating_sub(grace) {
                        late += 1;
                        continue;
                    }
                    let mut k = gkey.clone();
                    k.extend_from_slice(&w.start.to_be_bytes());
                    let (ts, states, created) = self.fold(store, &agg_store, k, &args, input.ts);
                    if created && self.retention.is_some() {
                        let mut index = ordered(w.start).to_vec();
                        index.extend_from_slice(&gkey);
                        store.put(&format!("{id}-expiry"), index, Vec::new());
                    }
                    if !self.emit_final {
                        self.output(id, store, &group, &states, Some(w), ts, emit)?;
                    }
                }
            }
        }
        if self.emit_final {
            self.flush_final(id, stream_time, store, emit)?;
        }
        Ok(late)
    }

    /// Fold one record's arguments into the state under `key` (a group, or a group and window
    /// start): returns the state's timestamp (the largest input timestamp), the states, and
    /// whether the state is new.
    fn fold(
        &self,
        store: &mut dyn StateStore,
        agg_store: &str,
        key: Vec<u8>,
        args: &[Value],
        ts: i64,
    ) -> (i64, Vec<Value>, bool) {
        let (old_ts, mut states, created) =
            match store.get(agg_store, &key).and_then(|b| decode_row(&b)).filter(|r| r.len() == 1 + self.aggs.len()) {
                Some(mut s) => (s[0].as_i64().unwrap_or(0), s.split_off(1), false),
                None => (ts, self.aggs.iter().map(|(a, _)| a.init()).collect(), true),
            };
        let ts = old_ts.max(ts);
        for (i, (a, _)) in self.aggs.iter().enumerate() {
            states[i] = a.add(std::mem::replace(&mut states[i], Value::Null), &args[i]);
        }
        let mut row = vec![Value::Bigint(ts)];
        row.extend(states.iter().cloned());
        store.put(agg_store, key, encode_row(&row));
        (ts, states, created)
    }

    /// `EMIT FINAL`: emit each window once stream time passes its end plus grace.
    fn flush_final(
        &self,
        id: &str,
        stream_time: i64,
        store: &mut dyn StateStore,
        emit: &mut EmitFn<'_>,
    ) -> Result<(), String> {
        let Some(spec) = self.window else { return Ok(()) };
        let agg_store = format!("{id}-agg");
        let done_store = format!("{id}-final");
        let mut ready = Vec::new();
        for (k, v) in store.range(&agg_store, &[]) {
            if store.get(&done_store, &k).is_some() {
                continue;
            }
            let width = if matches!(spec, WindowSpec::Session { .. }) { 3 } else { 1 } + self.aggs.len();
            let Some(saved) = decode_row(&v).filter(|r| r.len() == width) else { continue };
            let Some(n) = k.len().checked_sub(8) else { continue };
            let Some(group) = decode_row(&k[..n]) else { continue };
            let start = i64::from_be_bytes(k[n..].try_into().unwrap_or([0; 8]));
            let (w, states) = match spec {
                WindowSpec::Session { .. } => {
                    (Window { start, end: saved[2].as_i64().unwrap_or(start) }, saved[3..].to_vec())
                }
                WindowSpec::Tumbling { size, .. } | WindowSpec::Hopping { size, .. } => {
                    (Window { start, end: start.saturating_add(size) }, saved[1..].to_vec())
                }
            };
            if w.end.saturating_add(spec.grace()) <= stream_time {
                ready.push((w, group, states, saved[0].as_i64().unwrap_or(0), k));
            }
        }
        ready.sort_by_key(|(w, ..)| (w.end, w.start));
        for (w, group, states, ts, k) in ready {
            self.output(id, store, &group, &states, Some(w), ts, emit)?;
            store.put(&done_store, k, Vec::new());
        }
        Ok(())
    }
}

impl Join {
    fn process(
        &self,
        id: &str,
        left_side: bool,
        input: &Input,
        store: &mut dyn StateStore,
        emit: &mut EmitFn<'_>,
    ) -> Result<(), String> {
        let (reader, key_expr) = if left_side { (&self.left, &self.left_key) } else { (&self.right, &self.right_key) };
        let my_store = format!("{id}-{}", if left_side { "left" } else { "right" });
        let other_store = format!("{id}-{}", if left_side { "right" } else { "left" });
        let row = reader.row(input);
        let table = reader.is_table();
        let key = if input.value.is_some() {
            key_expr.eval(&row).unwrap_or(Value::Null)
        } else {
            input.key.first().cloned().unwrap_or(Value::Null)
        };
        if key.is_null() {
            return Ok(());
        }
        let k = encode_row(std::slice::from_ref(&key));
        let nulls_left = vec![Value::Null; self.left_width];
        let nulls_right = vec![Value::Null; self.right_width];
        let mut out = |l: &[Value], r: &[Value], ts: i64| -> Result<(), String> {
            let mut joined = l.to_vec();
            joined.extend_from_slice(r);
            if !passes(&self.filter, &joined) {
                return Ok(());
            }
            let key_vals = eval_all(&self.key, &joined);
            let key_vals = if key_vals.iter().all(Value::is_null) { vec![key.clone()] } else { key_vals };
            let value = eval_all(&self.value, &joined);
            emit(&key_vals, Some(&value), ts, input.window)
        };
        let left_outer = matches!(self.kind, JoinKind::Left | JoinKind::Full);
        let right_outer = matches!(self.kind, JoinKind::Right | JoinKind::Full);
        match (self.left.is_table(), self.right.is_table()) {
            (false, true) => {
                if table {
                    // The table side: remember the latest row per key.
                    match &input.value {
                        Some(_) => store.put(&my_store, k, encode_row(&row)),
                        None => store.delete(&my_store, &k),
                    }
                    return Ok(());
                }
                if input.value.is_none() {
                    return Ok(());
                }
                match store.get(&other_store, &k).and_then(|b| decode_row(&b)) {
                    Some(r) => out(&row, &r, input.ts)?,
                    None if left_outer => out(&row, &nulls_right, input.ts)?,
                    None => {}
                }
            }
            (true, true) => {
                let had = store.get(&my_store, &k).is_some();
                match &input.value {
                    Some(_) => store.put(&my_store, k.clone(), encode_row(&row)),
                    None => store.delete(&my_store, &k),
                }
                let other = store.get(&other_store, &k).and_then(|b| decode_row(&b));
                let me_outer = if left_side { left_outer } else { right_outer };
                let other_outer = if left_side { right_outer } else { left_outer };
                let pair = |me: &[Value], them: &[Value]| -> (Vec<Value>, Vec<Value>) {
                    if left_side { (me.to_vec(), them.to_vec()) } else { (them.to_vec(), me.to_vec()) }
                };
                let my_nulls = if left_side { &nulls_left } else { &nulls_right };
                let their_nulls = if left_side { &nulls_right } else { &nulls_left };
                match (&input.value, other) {
                    (Some(_), Some(o)) => {
                        let (l, r) = pair(&row, &o);
                        out(&l, &r, input.ts)?;
                    }
                    (Some(_), None) if me_outer => {
                        let (l, r) = pair(&row, their_nulls);
                        out(&l, &r, input.ts)?;
                    }
                    (None, Some(o)) if other_outer => {
                        let (l, r) = pair(my_nulls, &o);
                        out(&l, &r, input.ts)?;
                    }
                    (None, o) if had && (o.is_some() || me_outer) => {
                        emit(std::slice::from_ref(&key), None, input.ts, input.window)?;
                    }
                    _ => {}
                }
            }
            (false, false) => {
                let Some((before, after)) = self.within else { return Ok(()) };
                if input.value.is_none() {
                    return Ok(());
                }
                // Buffer this record, then join with the other side's records in range.
                let mut bk = k.clone();
                bk.extend_from_slice(&input.ts.to_be_bytes());
                bk.extend_from_slice(&input.offset.to_be_bytes());
                bk.extend_from_slice(&(input.partition as i64).to_be_bytes());
                let mut saved = vec![Value::Bigint(input.ts)];
                saved.extend(row.iter().cloned());
                store.put(&my_store, bk, encode_row(&saved));
                let (lo, hi) = if left_side {
                    (input.ts.saturating_sub(before), input.ts.saturating_add(after))
                } else {
                    (input.ts.saturating_sub(after), input.ts.saturating_add(before))
                };
                let mut matched = false;
                for (_, v) in store.range(&other_store, &k) {
                    let Some(mut o) = decode_row(&v) else { continue };
                    let ots = o[0].as_i64().unwrap_or(0);
                    if ots < lo || ots > hi {
                        continue;
                    }
                    let orow = o.split_off(1);
                    matched = true;
                    let ts = ots.max(input.ts);
                    if left_side { out(&row, &orow, ts)? } else { out(&orow, &row, ts)? }
                }
                if !matched {
                    if left_side && left_outer {
                        out(&row, &nulls_right, input.ts)?;
                    } else if !left_side && right_outer {
                        out(&nulls_left, &row, input.ts)?;
                    }
                }
            }
            (true, false) => {}
        }
        let _ = id;
        Ok(())
    }
}
