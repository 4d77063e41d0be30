//! Invoking the function once with an event: through the Runtime API (a runtime polls for it)
//! or by POSTing it to an HTTP endpoint. Either way the answer is the response body, or an
//! [`InvokeError`] that fails the batch.

use std::{sync::Arc, time::Duration};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    response::{MAX_RESPONSE_BYTES, ResponseError},
    runtime_api::RuntimeApi,
};

/// Why an invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// No answer within the invocation timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The runtime reported an error (`/error`).
    #[error("function error {error_type}: {message}")]
    Function {
        /// `errorType` (or the error-type header).
        error_type: String,
        /// `errorMessage`.
        message: String,
    },
    /// The HTTP function answered with a status other than 2xx.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The HTTP request failed (connection refused, reset, TLS).
    #[error("request failed: {0}")]
    Transport(String),
    /// The response is too large or not the documented shape.
    #[error("{0}")]
    Response(ResponseError),
    /// The runtime holding the invocation went away (its process exited).
    #[error("the function's runtime went away: {0}")]
    RuntimeGone(String),
    /// The runner replaced the runtime holding the invocation because of *another*
    /// invocation's timeout: not this batch's failure, so it is retried without counting.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// The runner is stopping.
    #[error("the runner is stopping")]
    Stopped,
}

impl InvokeError {
    /// A bounded label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            InvokeError::Timeout(_) => "timeout",
            InvokeError::Function { .. } => "function_error",
            InvokeError::Status { .. } => "http_error",
            InvokeError::Transport(_) => "transport_error",
            InvokeError::Response(_) => "bad_response",
            InvokeError::RuntimeGone(_) => "runtime_gone",
            InvokeError::Interrupted(_) => "interrupted",
            InvokeError::Stopped => "stopped",
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Invokes the function.
#[derive(Clone)]
pub enum Invoker {
    /// Through the Runtime API this runner serves.
    Lambda(Arc<RuntimeApi>),
    /// By POSTing to a URL.
    Http {
        /// The client (connections are kept alive and reused).
        client: Box<HttpsClient>,
        /// The URL.
        url: hyper::Uri,
    },
}

impl Invoker {
    /// An HTTP invoker for `url` (`http://` or `https://`, trusting the system's CA roots).
    pub fn http(url: &str) -> anyhow::Result<Invoker> {
        let url: hyper::Uri = url.parse().map_err(|e| anyhow::anyhow!("function.runtime.http.url: {e}"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| anyhow::anyhow!("loading the system's CA certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Invoker::Http { client: Box::new(client), url })
    }

    /// Invoke once with `event`; the response body on success.
    pub async fn invoke(&self, event: Bytes, timeout: Duration) -> Result<Bytes, InvokeError> {
        match self {
            Invoker::Lambda(api) => api.invoke(event, timeout).await,
            Invoker::Http { client, url } => match tokio::time::timeout(timeout, post(client, url, event)).await {
                Ok(result) => result,
                Err(_) => Err(InvokeError::Timeout(timeout)),
            },
        }
    }
}

async fn post(client: &HttpsClient, url: &hyper::Uri, event: Bytes) -> Result<Bytes, InvokeError> {
    let request = hyper::Request::post(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(event))
        .map_err(|e| InvokeError::Transport(e.to_string()))?;
    let response = client.request(request).await.map_err(|e| InvokeError::Transport(error_chain(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            InvokeError::Response(ResponseError::TooLarge(MAX_RESPONSE_BYTES + 1))
        } else {
            InvokeError::Transport(e.to_string())
        }
    })?;
    let body = body.to_bytes();
    if !status.is_success() {
        return Err(InvokeError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        });
    }
    Ok(body)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
