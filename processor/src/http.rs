//! The processor's HTTP side: ksqlDB-compatible `/info`, `/healthcheck`, `/ksql` (read-only
//! statements), `/query` (pull queries), and `/metrics`, `/healthz`, `/readyz`.

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
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: assigning partitions").into_response()
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
    let Some(sql) = body.get("ksql").and_then(Json_::as_str) else {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "the request needs a \"ksql\" string")));
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
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "only SHOW STREAMS, SHOW TABLES, SHOW QUERIES and DESCRIBE are served here: the Pipeline resource \
                 is the source of truth for the pipeline's statements",
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

/// `/query`: pull queries on materialized tables, as ksqlDB's `/query` answers them. A key lookup
/// goes to the replica owning the key's partition; a scan gathers every replica's rows.
async fn query(State(s): State<Arc<Shared>>, headers: HeaderMap, Json(body): Json<Json_>) -> Response {
    let (statement, _) = match statement_of(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Statement::Query(q) = &statement else { return error(StatusCode::BAD_REQUEST, "/query takes a SELECT") };
    if q.emit.is_some() {
        return push_query(s, q);
    }
    let forwarded = headers.contains_key(FORWARDED);
    let (route, local) = {
        let Ok(engine) = s.engine.lock() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "engine unavailable") };
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
        Ok(_) => return error(StatusCode::BAD_REQUEST, "not a pull query"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match route {
        Route::Local => {}
        Route::Owner(owner) => {
            let Some(peer) = s.peers.get(owner) else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no peer address for replica {owner}: set peers"),
                );
            };
            return match forward(peer, &body).await {
                Ok(answer) => Json(answer).into_response(),
                Err(e) => error(StatusCode::BAD_GATEWAY, format!("forwarding to replica {owner} ({peer}): {e}")),
            };
        }
        Route::Everyone => {
            for (i, peer) in s.peers.iter().enumerate() {
                if i as i32 == s.ordinal || i as i32 >= s.replicas {
                    continue;
                }
                match forward(peer, &body).await {
                    Ok(Json_::Array(parts)) => {
                        rows.extend(parts.iter().filter_map(|p| p.get("row").map(|r| r["columns"].clone())));
                    }
                    Ok(other) => return error(StatusCode::BAD_GATEWAY, format!("replica {i} answered {other}")),
                    Err(e) => return error(StatusCode::BAD_GATEWAY, format!("scanning replica {i} ({peer}): {e}")),
                }
            }
        }
    }
    let mut out = vec![json!({"header": {"queryId": "pull", "schema": schema}})];
    out.extend(rows.into_iter().map(|r| json!({"row": {"columns": r}})));
    Json(Json_::Array(out)).into_response()
}

/// A push query: the header, then each row as the replica's records produce it, streamed as
/// ksqlDB's `/query` streams them (one JSON array, one element per line), until `LIMIT` rows or
/// the client goes away. Each replica answers for the partitions it owns.
fn push_query(s: Arc<Shared>, q: &sluice_sql::ast::Query) -> Response {
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
    let header = json!({"header": {"queryId": push.id, "schema": push.schema}});
    if let Ok(mut subscribers) = s.push.lock() {
        subscribers.insert(push.topic.clone(), (push.clone(), tx));
    }
    let push = push.clone();
    let limit = q.limit;
    let first = format!("[{header},\n");
    struct State {
        rx: tokio::sync::mpsc::Receiver<Vec<Json_>>,
        sent: u64,
        limit: Option<u64>,
        done: bool,
        first: Option<String>,
        shared: Arc<Shared>,
        push: sluice_engine::PushQuery,
    }
    let state = State { rx, sent: 0, limit, done: false, first: Some(first), shared: s.clone(), push };
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
                let line = json!({"row": {"columns": row}});
                let text = if last {
                    st.done = true;
                    // The client has what it asked for: stop the query now.
                    if let Ok(mut subscribers) = st.shared.push.lock() {
                        subscribers.remove(&st.push.topic);
                    }
                    if let Ok(mut engine) = st.shared.engine.lock() {
                        engine.remove_query(&st.push.id);
                    }
                    format!("{line}\n]\n")
                } else {
                    format!("{line},\n")
                };
                Some((Ok(axum::body::Bytes::from(text)), st))
            }
            None => None,
        }
    });
    ([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream)).into_response()
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
