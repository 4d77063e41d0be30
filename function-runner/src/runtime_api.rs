//! The AWS Lambda Runtime API (`2018-06-01`), served to the function's runtimes so that any
//! Lambda runtime — the AWS base images, `awslambdaric`, the Rust `lambda_runtime`, the Java and
//! Node runtime interface clients — runs unchanged beside the runner.
//!
//! * `GET /2018-06-01/runtime/invocation/next` long-polls until an invocation is waiting and
//!   answers with the event and the `Lambda-Runtime-*` headers real runtimes read (some panic
//!   without `Lambda-Runtime-Deadline-Ms` or the function ARN).
//! * `POST .../invocation/{id}/response` and `.../invocation/{id}/error` finish it with `202`;
//!   an unknown or already finished id gets `400` with `InvalidRequestID`, a body over 6 MiB
//!   `413` (and the invocation fails).
//! * `POST .../runtime/init/error` records that the runtime could not start.
//!
//! Each runtime polling `/next` is one invocation in flight; the invoker's timeout starts when a
//! runtime takes the invocation, as Lambda's does.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{invoke::InvokeError, response::MAX_RESPONSE_BYTES};

/// An invocation waiting for a runtime.
struct Queued {
    event: Bytes,
    timeout: Duration,
    started: oneshot::Sender<String>,
    reply: oneshot::Sender<Result<Bytes, InvokeError>>,
}

/// The server's state, shared by the HTTP handlers and the invoker.
pub struct RuntimeApi {
    function_name: String,
    function_arn: String,
    queue: mpsc::UnboundedSender<Queued>,
    next: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Result<Bytes, InvokeError>>>>,
    polled: AtomicBool,
    init_errors: AtomicU64,
    stop: CancellationToken,
    /// Invocations no runtime has taken yet, by sequence number, with when they were queued.
    untaken: Mutex<std::collections::BTreeMap<u64, std::time::Instant>>,
    sequence: AtomicU64,
}

/// Removes an invocation from [`RuntimeApi::untaken`] when it is taken or given up.
struct Untaken<'a> {
    api: &'a RuntimeApi,
    sequence: u64,
}

impl Drop for Untaken<'_> {
    fn drop(&mut self) {
        self.api.untaken.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.sequence);
    }
}

impl RuntimeApi {
    /// The API for one function (`name` goes into the ARN runtimes are handed). After `stop`,
    /// invocations no runtime has taken yet end as [`InvokeError::Stopped`].
    pub fn new(function_name: &str, stop: CancellationToken) -> Arc<RuntimeApi> {
        let (queue, next) = mpsc::unbounded_channel();
        Arc::new(RuntimeApi {
            function_name: function_name.to_owned(),
            function_arn: format!("arn:aws:lambda:local:000000000000:function:{function_name}"),
            queue,
            next: tokio::sync::Mutex::new(next),
            in_flight: Mutex::new(HashMap::new()),
            polled: AtomicBool::new(false),
            init_errors: AtomicU64::new(0),
            stop,
            untaken: Mutex::new(std::collections::BTreeMap::new()),
            sequence: AtomicU64::new(0),
        })
    }

    /// Whether a runtime has asked for an invocation at least once.
    pub fn polled(&self) -> bool {
        self.polled.load(Ordering::Relaxed)
    }

    /// How long the oldest invocation has waited for a runtime to take it. A runtime that is
    /// free takes work at once, so a long wait means every runtime is stuck (a handler that
    /// outlived its timeout and never came back) or none is running.
    pub fn oldest_untaken(&self) -> Option<Duration> {
        let untaken = self.untaken.lock().unwrap_or_else(|p| p.into_inner());
        untaken.values().next().map(|t| t.elapsed())
    }

    /// `/runtime/init/error` reports so far.
    pub fn init_errors(&self) -> u64 {
        self.init_errors.load(Ordering::Relaxed)
    }

    /// Hand `event` to the next runtime that polls and wait for its answer, at most `timeout`
    /// after the runtime took it. Waiting for a runtime has no limit: with no runtime running
    /// (it crashed and is being restarted) the invocation waits rather than fails.
    pub async fn invoke(&self, event: Bytes, timeout: Duration) -> Result<Bytes, InvokeError> {
        let (started_tx, started_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        self.untaken.lock().unwrap_or_else(|p| p.into_inner()).insert(sequence, std::time::Instant::now());
        let untaken = Untaken { api: self, sequence };
        self.queue
            .send(Queued { event, timeout, started: started_tx, reply: reply_tx })
            .map_err(|_| InvokeError::Stopped)?;
        let id = tokio::select! {
            id = started_rx => id.map_err(|_| InvokeError::Stopped)?,
            _ = self.stop.cancelled() => return Err(InvokeError::Stopped),
        };
        drop(untaken);
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InvokeError::Stopped),
            Err(_) => {
                // A late answer now finds no invocation and is refused.
                self.lock_in_flight().remove(&id);
                Err(InvokeError::Timeout(timeout))
            }
        }
    }

    /// Fail every invocation a runtime holds, at once (its process exited): they are retried
    /// instead of waiting for their timeout.
    pub fn fail_in_flight(&self, reason: &str) {
        let held: Vec<_> = self.lock_in_flight().drain().collect();
        for (_, reply) in held {
            let _ = reply.send(Err(InvokeError::RuntimeGone(reason.to_owned())));
        }
    }

    /// End every invocation a runtime holds because the runtimes are being replaced for a
    /// reason of their own (another invocation timed out): retried without counting as a
    /// failure of their records.
    pub fn interrupt_in_flight(&self, reason: &str) {
        let held: Vec<_> = self.lock_in_flight().drain().collect();
        for (_, reply) in held {
            let _ = reply.send(Err(InvokeError::Interrupted(reason.to_owned())));
        }
    }

    fn lock_in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Bytes, InvokeError>>>> {
        // A panic while holding this lock cannot leave the map inconsistent: use it anyway.
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn request_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// The Runtime API's routes.
pub fn router(api: Arc<RuntimeApi>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(not_found)
        .with_state(api)
}

fn error_body(status: StatusCode, error_type: &str, message: &str) -> Response {
    (status, Json(json!({"errorMessage": message, "errorType": error_type}))).into_response()
}

async fn not_found() -> Response {
    error_body(StatusCode::NOT_FOUND, "NotFound", "no such Runtime API path")
}

async fn next(State(api): State<Arc<RuntimeApi>>) -> Response {
    api.polled.store(true, Ordering::Relaxed);
    loop {
        let queued = {
            let mut next = api.next.lock().await;
            match next.recv().await {
                Some(q) => q,
                None => {
                    return error_body(StatusCode::INTERNAL_SERVER_ERROR, "ServiceStopped", "the runner is stopping");
                }
            }
        };
        if queued.reply.is_closed() {
            continue; // the invoker gave up (shutdown) before any runtime took it
        }
        let id = api.request_id();
        let deadline = SystemTime::now()
            .checked_add(queued.timeout)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis());
        api.lock_in_flight().insert(id.clone(), queued.reply);
        if queued.started.send(id.clone()).is_err() {
            api.lock_in_flight().remove(&id);
            continue;
        }
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        set("Lambda-Runtime-Aws-Request-Id", id.clone());
        set("Lambda-Runtime-Deadline-Ms", deadline.to_string());
        set("Lambda-Runtime-Invoked-Function-Arn", api.function_arn.clone());
        set("Lambda-Runtime-Trace-Id", trace_id(&id));
        set("Content-Type", "application/json".into());
        tracing::debug!(request_id = %id, function = %api.function_name, "invocation handed to a runtime");
        return (StatusCode::OK, headers, Body::from(queued.event)).into_response();
    }
}

/// An X-Ray-shaped trace header (`Root=1-<time>-<24 hex>;Parent=<16 hex>;Sampled=0`).
fn trace_id(request_id: &str) -> String {
    let hex: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("Root=1-{secs:08x}-{};Parent={};Sampled=0", &hex[..24.min(hex.len())], &hex[hex.len().saturating_sub(16)..])
}

async fn read_limited(body: Body) -> Result<Bytes, usize> {
    match axum::body::to_bytes(body, MAX_RESPONSE_BYTES + 1).await {
        Ok(bytes) if bytes.len() <= MAX_RESPONSE_BYTES => Ok(bytes),
        Ok(bytes) => Err(bytes.len()),
        Err(_) => Err(MAX_RESPONSE_BYTES + 1),
    }
}

async fn response(State(api): State<Arc<RuntimeApi>>, Path(id): Path<String>, body: Body) -> Response {
    let Some(reply) = api.lock_in_flight().remove(&id) else {
        return unknown_request(&id);
    };
    match read_limited(body).await {
        Ok(bytes) => {
            let _ = reply.send(Ok(bytes));
            accepted()
        }
        Err(len) => {
            let _ = reply.send(Err(InvokeError::Response(crate::response::ResponseError::TooLarge(len))));
            error_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("response payload exceeds the {MAX_RESPONSE_BYTES}-byte limit"),
            )
        }
    }
}

async fn error(State(api): State<Arc<RuntimeApi>>, Path(id): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let Some(reply) = api.lock_in_flight().remove(&id) else {
        return unknown_request(&id);
    };
    let (error_type, message) = function_error(&headers, read_limited(body).await.ok());
    let _ = reply.send(Err(InvokeError::Function { error_type, message }));
    accepted()
}

async fn init_error(State(api): State<Arc<RuntimeApi>>, headers: HeaderMap, body: Body) -> Response {
    let (error_type, message) = function_error(&headers, read_limited(body).await.ok());
    api.init_errors.fetch_add(1, Ordering::Relaxed);
    tracing::error!(function = %api.function_name, %error_type, %message, "the function's runtime failed to initialise");
    accepted()
}

/// The error type (the `Lambda-Runtime-Function-Error-Type` header when sent — `awslambdaric`
/// does not — else the body's `errorType`) and message of an `/error` post.
fn function_error(headers: &HeaderMap, body: Option<Bytes>) -> (String, String) {
    let parsed: Option<serde_json::Value> = body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(|v| v.as_str()).map(str::to_owned);
    let error_type = headers
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| field("errorType"))
        .unwrap_or_else(|| "Unhandled".into());
    let message = field("errorMessage")
        .or_else(|| body.as_deref().map(|b| String::from_utf8_lossy(&b[..b.len().min(1024)]).into_owned()))
        .unwrap_or_default();
    (error_type, message)
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, Json(json!({"status": "OK"}))).into_response()
}

fn unknown_request(id: &str) -> Response {
    error_body(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("no invocation {id} is in flight (it finished, or timed out)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_type_from_header_then_body() {
        let mut headers = HeaderMap::new();
        let body = Bytes::from_static(br#"{"errorMessage":"boom","errorType":"ValueError","stackTrace":[]}"#);
        assert_eq!(function_error(&headers, Some(body.clone())), ("ValueError".into(), "boom".into()));
        headers.insert("Lambda-Runtime-Function-Error-Type", HeaderValue::from_static("Runtime.Custom"));
        assert_eq!(function_error(&headers, Some(body)).0, "Runtime.Custom");
        assert_eq!(function_error(&HeaderMap::new(), Some(Bytes::from_static(b"plain"))).1, "plain");
    }

    #[test]
    fn trace_ids_have_the_xray_shape() {
        let t = trace_id("8476a536-e9f4-11e8-9739-2dfe598c3fcd");
        assert!(t.starts_with("Root=1-") && t.contains(";Parent=") && t.ends_with(";Sampled=0"), "{t}");
    }
}
