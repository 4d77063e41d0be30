//! The processor's HTTP side: ksqlDB-compatible `/info`, `/healthcheck`, `/ksql` (read-only
//! statements), `/query` and `/query-stream` (pull and push queries), and `/metrics`, `/healthz`,
//! `/readyz`.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value as Json_, json};
use sluice_engine::{Outcome, Value};
use sluice_sql::ast::{ShowKind, SourceKind, Statement};

use crate::runtime::Shared;

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/info", get(info))
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics))
        .route("/ksql", post(ksql))
        .route("/query", post(query))
        .route("/query-stream", post(query_stream))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        "ready".into_response()
    } else {
        let waiting = s.waiting_for.lock().map(|w| w.clone()).unwrap_or_default();
        let why = if waiting.is_empty() {
            "not ready: starting (topics, partitions, state)".to_owned()
        } else {
            format!("not ready: waiting for source topics that do not exist: {}", waiting.join(", "))
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn info(State(s): State<Arc<Shared>>) -> Json<Json_> {
    Json(json!({"KsqlServerInfo": {
        "version": env!("CARGO_PKG_VERSION"),
        "ksqlServiceId": s.application_id,
        "serverStatus": if s.ready.load(Ordering::SeqCst) { "RUNNING" } else { "STARTING" },
        "server": "sluice-processor",
    }}))
}

async fn healthcheck(State(s): State<Arc<Shared>>) -> Response {
    let ready = s.ready.load(Ordering::SeqCst);
    let body =
        json!({"isHealthy": ready, "details": {"kafka": {"isHealthy": ready}, "metastore": {"isHealthy": true}}});
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    sluice_telemetry::metrics_response(&s.registry)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        code,
        Json(json!({"@type": "statement_error", "error_code": u32::from(code.as_u16()) * 100 + 1, "message": message})),
    )
        .into_response()
}

fn statement_of(body: &Json_) -> Result<(Statement, String), Box<Response>> {
    // `/ksql` and `/query` take "ksql", `/query-stream` takes "sql".
    let Some(sql) = body.get("ksql").or_else(|| body.get("sql")).and_then(Json_::as_str) else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "the request needs a \"ksql\" (or \"sql\") string")));
    };
    let mut parsed =
        sluice_sql::parse_statements(sql).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))?;
    if parsed.len() != 1 {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "send exactly one statement")));
    }
    Ok(parsed.remove(0))
}

fn json_value(v: &Value) -> Json_ {
    match v {
        Value::Decimal(d) => serde_json::from_str(&sluice_engine::value::plain_decimal(d)).unwrap_or(Json_::Null),
        Value::Timestamp(_) | Value::Date(_) | Value::Time(_) => {
            Json_::String(sluice_engine::value::to_text(v).unwrap_or_default())
        }
        Value::Array(items) => Json_::Array(items.iter().map(json_value).collect()),
        Value::Struct(fields) => Json_::Object(fields.iter().map(|(k, v)| (k.clone(), json_value(v))).collect()),
        Value::Map(entries) => Json_::Object(
            entries
                .iter()
                .map(|(k, v)| (sluice_engine::value::to_text(k).unwrap_or_default(), json_value(v)))
                .collect(),
        ),
        other => serde_json::from_str(&sluice_engine::format::to_json_text(other)).unwrap_or(Json_::Null),
    }
}

/// `/ksql`: the read-only statements; anything that would change the pipeline is refused.
async fn ksql(State(s): State<Arc<Shared>>, Json(body): Json<Json_>) -> Response {
    let (statement, text) = match statement_of(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Ok(engine) = s.engine.lock() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable") };
    let entity = match &statement {
        Statement::Show(kind @ (ShowKind::Streams | ShowKind::Tables)) => {
            let want = if *kind == ShowKind::Streams { SourceKind::Stream } else { SourceKind::Table };
            let items: Vec<Json_> = engine
                .catalog
                .sources()
                .filter(|src| src.kind == want)
                .map(|src| {
                    json!({"type": if want == SourceKind::Stream { "STREAM" } else { "TABLE" }, "name": src.name,
                           "topic": src.topic, "keyFormat": src.key_format.format.to_string(),
                           "valueFormat": src.value_format.format.to_string(), "isWindowed": src.window.is_some()})
                })
                .collect();
            let key = if want == SourceKind::Stream { "streams" } else { "tables" };
            json!({"@type": key, "statementText": text, key: items})
        }
        Statement::Show(ShowKind::Queries) => {
            let queries: Vec<Json_> = engine
                .queries
                .iter()
                .map(|q| json!({"id": q.id, "sinks": [q.sink], "queryType": "PERSISTENT", "state": "RUNNING"}))
                .collect();
            json!({"@type": "queries", "statementText": text, "queries": queries})
        }
        Statement::Describe { name, .. } => match engine.catalog.get(&name.name) {
            Some(src) => json!({"@type": "sourceDescription", "statementText": text, "sourceDescription": {
                "name": src.name, "type": if src.kind == SourceKind::Stream { "STREAM" } else { "TABLE" },
                "topic": src.topic, "keyFormat": src.key_format.format.to_string(),
                "valueFormat": src.value_format.format.to_string(),
                "schema": sluice_engine::query::source_schema_text(src), "statement": src.sql,
            }}),
            None => return error(StatusCode::BAD_REQUEST, format!("Could not find STREAM/TABLE '{}'", name.name)),
        },
        Statement::Explain(sluice_sql::ast::Explain::QueryId(id)) => {
            let Some(q) = engine.queries.iter().find(|q| q.id.eq_ignore_ascii_case(&id.name)) else {
                return error(StatusCode::BAD_REQUEST, format!("Query with id:{} does not exist", id.name));
            };
            let sink = engine.catalog.get(&q.sink);
            let sources: Vec<String> = engine
                .catalog
                .sources()
                .filter(|src| q.inputs.contains(&src.topic) && src.name != q.sink)
                .map(|src| src.name.clone())
                .collect();
            let internal: Vec<String> = q
                .repartitions
                .iter()
                .filter(|r| !r.topic.is_empty())
                .map(|r| format!("repartition {} (from {})", r.topic, r.source))
                .collect();
            json!({"@type": "queryDescription", "statementText": text, "queryDescription": {
                "id": q.id,
                "statementText": sink.map(|src| src.sql.clone()).unwrap_or_default(),
                "windowType": sink.and_then(|src| src.window).map(|w| match w {
                    sluice_sql::catalog::WindowType::Tumbling { .. } => "TUMBLING",
                    sluice_sql::catalog::WindowType::Hopping { .. } => "HOPPING",
                    sluice_sql::catalog::WindowType::Session => "SESSION",
                }),
                "sources": sources,
                "sinks": [q.sink],
                "sinkKafkaTopics": sink.map(|src| vec![src.topic.clone()]).unwrap_or_default(),
                "topology": format!("inputs: {}; internal topics: {}", q.inputs.join(", "),
                    if internal.is_empty() { "none".to_owned() } else { internal.join(", ") }),
                "executionPlan": sink.map(|src| src.sql.clone()).unwrap_or_default(),
                "overriddenProperties": {},
                "queryType": "PERSISTENT",
                "state": "RUNNING",
                "ksqlHostQueryStatus": {},
            }})
        }
        Statement::Explain(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "EXPLAIN of a statement is not served: the pipeline's statements come from its Pipeline \
                 resource; EXPLAIN <query id> describes a running query",
            );
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "only SHOW STREAMS, SHOW TABLES, SHOW QUERIES, DESCRIBE and EXPLAIN <query id> are served here: \
                 the Pipeline resource is the source of truth for the pipeline's statements",
            );
        }
    };
    Json(json!([entity])).into_response()
}

const FORWARDED: &str = "x-sluice-forwarded";

/// Where a pull query goes: this replica, the owner of its key's partition, or every replica.
enum Route {
    Local,
    Owner(usize),
    Everyone,
}

/// How a query's answer is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// ksqlDB's `/query`: one JSON array of `{"header": ...}` then `{"row": {"columns": [...]}}`.
    Query,
    /// `/query-stream` with `application/vnd.ksqlapi.delimited.v1` (the default): a header object
    /// (`queryId`, `columnNames`, `columnTypes`), then one JSON array per row, one per line.
    Delimited,
    /// `/query-stream` with `Accept: application/json`: one JSON array of the header and the rows.
    JsonArray,
}

impl Style {
    fn content_type(self) -> &'static str {
        match self {
            Style::Delimited => "application/vnd.ksqlapi.delimited.v1",
            Style::Query | Style::JsonArray => "application/json",
        }
    }

    /// The opening of the answer.
    fn header(self, id: &str, schema: &str) -> String {
        match self {
            Style::Query => format!("[{},\n", json!({"header": {"queryId": id, "schema": schema}})),
            Style::Delimited | Style::JsonArray => {
                let (names, types) = columns_of(schema);
                let header = json!({"queryId": id, "columnNames": names, "columnTypes": types});
                if self == Style::Delimited { format!("{header}\n") } else { format!("[{header}") }
            }
        }
    }

    /// One row; `last` closes the answer.
    fn row(self, row: Json_, last: bool) -> String {
        match self {
            Style::Query => {
                let line = json!({"row": {"columns": row}});
                if last { format!("{line}\n]\n") } else { format!("{line},\n") }
            }
            Style::Delimited => format!("{row}\n"),
            Style::JsonArray => {
                if last {
                    format!(",\n{row}]\n")
                } else {
                    format!(",\n{row}")
                }
            }
        }
    }

    /// The close of an answer whose last row was written without `last` (or had no rows).
    fn end(self) -> &'static str {
        match self {
            Style::Query | Style::JsonArray => "]\n",
            Style::Delimited => "",
        }
    }

    /// A whole answer.
    fn answer(self, id: &str, schema: &str, rows: Vec<Json_>) -> Response {
        let mut text = self.header(id, schema);
        for r in rows {
            text.push_str(&self.row(r, false));
        }
        if self == Style::Query && text.ends_with(",\n") {
            text.truncate(text.len() - 2);
            text.push('\n');
        }
        text.push_str(self.end());
        ([(header::CONTENT_TYPE, self.content_type())], text).into_response()
    }
}

/// Column names and types of a schema text (`` `A` STRING, `B` DECIMAL(10, 2) ``).
fn columns_of(schema: &str) -> (Vec<String>, Vec<String>) {
    let (mut names, mut types) = (Vec::new(), Vec::new());
    let mut depth = 0i32;
    let mut part = String::new();
    let mut parts = Vec::new();
    let mut quoted = false;
    for c in schema.chars() {
        match c {
            '`' => quoted = !quoted,
            '<' | '(' if !quoted => depth += 1,
            '>' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        part.push(c);
    }
    parts.push(part);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (name, ty) = match p.strip_prefix('`').and_then(|r| r.split_once('`')) {
            Some((name, rest)) => (name.to_owned(), rest.trim()),
            None => match p.split_once(' ') {
                Some((n, t)) => (n.to_owned(), t.trim()),
                None => (p.to_owned(), ""),
            },
        };
        // Key columns carry a trailing KEY in the schema text.
        let ty = ty.strip_suffix(" KEY").unwrap_or(ty);
        names.push(name);
        types.push(ty.to_owned());
    }
    (names, types)
}

/// `/query`: pull queries on materialized tables, as ksqlDB's `/query` answers them, and push
/// queries (`EMIT CHANGES`).
async fn query(State(s): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Json_>) -> Response {
    answer(s, &headers, body, Style::Query).await
}

/// `/query-stream`: the same queries in ksqlDB's newer protocol (`{"sql": ...}`; delimited rows,
/// or one JSON array with `Accept: application/json`).
async fn query_stream(State(s): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Json_>) -> Response {
    let json_array = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("delimited"));
    answer(s, &headers, body, if json_array { Style::JsonArray } else { Style::Delimited }).await
}

async fn answer(s: Arc<Shared>, headers: &HeaderMap, body: Json_, style: Style) -> Response {
    let (statement, _) = match statement_of(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Statement::Query(q) = &statement else { return error(StatusCode::BAD_REQUEST, "a query takes a SELECT") };
    if q.emit.is_some() {
        return push_query(s, q, style);
    }
    match pull(&s, headers, &body, q).await {
        Ok((schema, rows)) => style.answer("pull", &schema, rows),
        Err(r) => *r,
    }
}

/// A pull query's schema and rows. A key lookup goes to the replica owning the key's
/// partition; a scan gathers every replica's rows (peers are asked through `/query`).
async fn pull(
    s: &Arc<Shared>,
    headers: &HeaderMap,
    body: &Json_,
    q: &sluice_sql::ast::Query,
) -> Result<(String, Vec<Json_>), Box<Response>> {
    let fail = |code, message: String| Box::new(error(code, message));
    let forwarded = headers.contains_key(FORWARDED);
    let (route, local) = {
        let Ok(engine) = s.engine.lock() else {
            return Err(fail(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable".into()));
        };
        let route = if forwarded || s.replicas <= 1 {
            Route::Local
        } else {
            match engine.pull_key(q) {
                Some((topic, key)) => {
                    let partitions = s.partitions.lock().ok().and_then(|p| p.get(&topic).copied()).unwrap_or(1);
                    let owner = sluice_engine::format::kafka_partition(&key, partitions) % s.replicas;
                    if owner == s.ordinal { Route::Local } else { Route::Owner(owner as usize) }
                }
                None => Route::Everyone,
            }
        };
        (route, engine.pull(q))
    };
    let (schema, mut rows) = match local {
        Ok(Outcome::Rows { schema, rows }) => {
            (schema, rows.iter().map(|r| Json_::Array(r.iter().map(json_value).collect())).collect::<Vec<_>>())
        }
        Ok(_) => return Err(fail(StatusCode::BAD_REQUEST, "not a pull query".into())),
        Err(e) => return Err(fail(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let peers: Vec<usize> = match route {
        Route::Local => Vec::new(),
        Route::Owner(owner) => {
            rows.clear();
            vec![owner]
        }
        Route::Everyone => (0..s.replicas as usize).filter(|i| *i as i32 != s.ordinal).collect(),
    };
    // Peers answer `/query`, which takes "ksql".
    let sql = body.get("ksql").or_else(|| body.get("sql")).cloned().unwrap_or(Json_::Null);
    let forwarded_body =
        json!({"ksql": sql, "streamsProperties": body.get("properties").cloned().unwrap_or(json!({}))});
    for i in peers {
        let Some(peer) = s.peers.get(i) else {
            return Err(fail(StatusCode::SERVICE_UNAVAILABLE, format!("no peer address for replica {i}: set peers")));
        };
        match forward(peer, &forwarded_body).await {
            Ok(Json_::Array(parts)) => {
                rows.extend(parts.iter().filter_map(|p| p.get("row").map(|r| r["columns"].clone())));
            }
            Ok(other) => return Err(fail(StatusCode::BAD_GATEWAY, format!("replica {i} answered {other}"))),
            Err(e) => return Err(fail(StatusCode::BAD_GATEWAY, format!("asking replica {i} ({peer}): {e}"))),
        }
    }
    Ok((schema, rows))
}

/// A push query: the header, then each row as the replica's records produce it, streamed as
/// ksqlDB's `/query` streams them (one JSON array, one element per line), until `LIMIT` rows or
/// the client goes away. Each replica answers for the partitions it owns.
fn push_query(s: Arc<Shared>, q: &sluice_sql::ast::Query, style: Style) -> Response {
    let push = {
        let Ok(mut engine) = s.engine.lock() else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable");
        };
        match engine.add_push(q) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Json_>>(10_000);
    let first = style.header(&push.id, &push.schema);
    if let Ok(mut subscribers) = s.push.lock() {
        subscribers.insert(push.topic.clone(), (push.clone(), tx));
    }
    let push = push.clone();
    let limit = q.limit;
    struct State {
        rx: tokio::sync::mpsc::Receiver<Vec<Json_>>,
        sent: u64,
        limit: Option<u64>,
        done: bool,
        first: Option<String>,
        shared: Arc<Shared>,
        push: sluice_engine::PushQuery,
        style: Style,
    }
    let state = State { rx, sent: 0, limit, done: false, first: Some(first), shared: s.clone(), push, style };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(first)), st));
        }
        if st.done {
            return None;
        }
        match st.rx.recv().await {
            Some(row) => {
                st.sent += 1;
                let last = st.limit.is_some_and(|l| st.sent >= l);
                let text = st.style.row(Json_::Array(row), last);
                if last {
                    st.done = true;
                    // The client has what it asked for: stop the query now.
                    if let Ok(mut subscribers) = st.shared.push.lock() {
                        subscribers.remove(&st.push.topic);
                    }
                    if let Ok(mut engine) = st.shared.engine.lock() {
                        engine.remove_query(&st.push.id);
                    }
                }
                Some((Ok(axum::body::Bytes::from(text)), st))
            }
            None => None,
        }
    });
    ([(header::CONTENT_TYPE, style.content_type())], axum::body::Body::from_stream(stream)).into_response()
}

/// Send a `/query` body to a peer and return its JSON answer.
async fn forward(peer: &str, body: &Json_) -> Result<Json_, String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<axum::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = axum::http::Request::post(format!("http://{peer}/query"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(FORWARDED, "1")
        .body(http_body_util::Full::from(body.to_string()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let answer: Json_ = serde_json::from_slice(&bytes).map_err(|e| format!("{status}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {answer}"));
    }
    Ok(answer)
}
