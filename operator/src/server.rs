//! The operator's `/metrics`, `/healthz` and `/readyz` (port 8080).

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
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The result label of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `invalid` (the spec or SQL is wrong) or `error` (an API call failed).
    pub result: String,
}

/// Labels of the replica gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    /// The Pipeline's namespace.
    pub namespace: String,
    /// The Pipeline.
    pub pipeline: String,
    /// The function.
    pub function: String,
}

/// Labels of the scale-decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabel {
    /// The Pipeline's namespace.
    pub namespace: String,
    /// The Pipeline.
    pub pipeline: String,
    /// The function.
    pub function: String,
    /// `up` or `down`.
    pub direction: String,
}

/// Labels of the lag-reading counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadingLabel {
    /// `ok` or `unavailable` (the autoscaler then holds the replicas).
    pub result: String,
}

/// The operator's metrics and readiness.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    current: Family<FunctionLabel, Gauge>,
    desired: Family<FunctionLabel, Gauge>,
    lag: Family<FunctionLabel, Gauge>,
    scalings: Family<ScaleLabel, Counter>,
    readings: Family<ReadingLabel, Counter>,
    /// Set once the operator has started (leading or standing by).
    pub ready: AtomicBool,
    leader: Gauge,
}

impl Metrics {
    /// Registered under `sluice_operator_*`.
    pub fn new() -> Arc<Metrics> {
        let reconciles = Family::<ResultLabel, Counter>::default();
        let (current, desired) = (Family::<FunctionLabel, Gauge>::default(), Family::<FunctionLabel, Gauge>::default());
        let mut registry = Registry::with_prefix("sluice_operator");
        registry.register("reconciles", "Reconciles of Pipelines by result", reconciles.clone());
        registry.register("function_replicas", "Replicas of each function's runner Deployment", current.clone());
        registry.register("function_desired_replicas", "Replicas the autoscaler asks for", desired.clone());
        let lag = Family::<FunctionLabel, Gauge>::default();
        registry.register(
            "function_lag_records",
            "Consumer lag of each function's group at the last reading",
            lag.clone(),
        );
        let scalings = Family::<ScaleLabel, Counter>::default();
        registry.register("scale_decisions", "Changes of a function's replicas by the autoscaler", scalings.clone());
        let readings = Family::<ReadingLabel, Counter>::default();
        registry.register("lag_readings", "Lag readings by result", readings.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        Arc::new(Metrics {
            registry,
            reconciles,
            current,
            desired,
            lag,
            scalings,
            readings,
            ready: AtomicBool::new(false),
            leader,
        })
    }

    /// Record a lag reading (`None`: it failed).
    pub fn reading(&self, namespace: &str, pipeline: &str, function: &str, lag: Option<i64>) {
        let result = if lag.is_some() { "ok" } else { "unavailable" };
        self.readings.get_or_create(&ReadingLabel { result: result.into() }).inc();
        if let Some(lag) = lag {
            let label =
                FunctionLabel { namespace: namespace.into(), pipeline: pipeline.into(), function: function.into() };
            self.lag.get_or_create(&label).set(lag);
        }
    }

    /// Count a change of replicas.
    pub fn scaled(&self, namespace: &str, pipeline: &str, function: &str, from: i32, to: i32) {
        let direction = if to > from { "up" } else { "down" };
        let label = ScaleLabel {
            namespace: namespace.into(),
            pipeline: pipeline.into(),
            function: function.into(),
            direction: direction.into(),
        };
        self.scalings.get_or_create(&label).inc();
    }

    /// Forget the gauges of a function that is gone.
    pub fn forget(&self, namespace: &str, pipeline: &str, function: &str) {
        let label = FunctionLabel { namespace: namespace.into(), pipeline: pipeline.into(), function: function.into() };
        self.current.remove(&label);
        self.desired.remove(&label);
        self.lag.remove(&label);
    }

    /// Record whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Record a function's current and desired replicas.
    pub fn replicas(&self, namespace: &str, pipeline: &str, function: &str, current: i32, desired: i32) {
        let label = FunctionLabel { namespace: namespace.into(), pipeline: pipeline.into(), function: function.into() };
        self.current.get_or_create(&label).set(i64::from(current));
        self.desired.get_or_create(&label).set(i64::from(desired));
    }

    /// Count a reconcile.
    pub fn reconcile(&self, result: &str) {
        self.reconciles.get_or_create(&ResultLabel { result: result.into() }).inc();
    }
}

/// The routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn readyz(State(m): State<Arc<Metrics>>) -> Response {
    if m.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn render(State(m): State<Arc<Metrics>>) -> Response {
    sluice_telemetry::metrics_response(&m.registry)
}
