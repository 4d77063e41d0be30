//! `/metrics`, `/healthz`, `/readyz` and `/function/healthz` on `listen`.

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
    /// The invocation timeout: an invocation no runtime takes within it (plus a grace) means
    /// the function is stuck.
    pub timeout: std::time::Duration,
    /// Set when the consumer thread has ended without being told to.
    pub consumer_done: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Grace beyond the invocation timeout before a function that takes no work counts as stuck.
pub const STUCK_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

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

    /// Alive: the consumer thread runs (if it died, a restart is the way back).
    pub fn alive(&self) -> Result<(), &'static str> {
        if (self.consumer_done)() && !self.stopping.load(Ordering::SeqCst) {
            return Err("the Kafka consumer thread has stopped");
        }
        Ok(())
    }

    /// The function container's liveness (Lambda mode): `Err` when an invocation has waited
    /// for a runtime longer than the invocation timeout plus [`STUCK_GRACE`] — every runtime is
    /// stuck in a handler, so the function container should be restarted, as Lambda resets an
    /// execution environment after a timeout.
    pub fn function_alive(&self) -> Result<(), String> {
        let Some(waited) = self.runtime.as_ref().and_then(|r| r.oldest_untaken()) else { return Ok(()) };
        if waited > self.timeout + STUCK_GRACE {
            return Err(format!(
                "an invocation has waited {}s for the function to take it (timeout {}s): the function's runtimes are stuck or not running",
                waited.as_secs(),
                self.timeout.as_secs()
            ));
        }
        Ok(())
    }
}

/// The routes.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/function/healthz", get(function_healthz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn healthz(State(h): State<Arc<Health>>) -> Response {
    match h.alive() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn function_healthz(State(h): State<Arc<Health>>) -> Response {
    match h.function_alive() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
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
