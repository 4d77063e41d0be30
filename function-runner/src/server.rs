//! `/metrics`, `/healthz` and `/readyz` on `listen`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;

use crate::runtime_api::RuntimeApi;

/// What the endpoints read.
pub struct Health {
    /// The metrics.
    pub registry: Registry,
    /// Set once the runner has joined its consumer group.
    pub joined: Arc<AtomicBool>,
    /// The Runtime API, in Lambda mode: ready only once a runtime has polled it.
    pub runtime: Option<Arc<RuntimeApi>>,
    /// Set while stopping.
    pub stopping: Arc<AtomicBool>,
}

impl Health {
    /// Ready: in the group, the runtime (if any) polling, and not stopping.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("stopping");
        }
        if !self.joined.load(Ordering::SeqCst) {
            return Err("not yet assigned partitions by the consumer group");
        }
        if self.runtime.as_ref().is_some_and(|r| !r.polled()) {
            return Err("no function runtime has polled the Runtime API yet");
        }
        Ok(())
    }
}

/// The routes.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    match h.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> Response {
    sluice_telemetry::metrics_response(&h.registry)
}
