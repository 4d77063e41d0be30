//! Logging for every Sluice binary: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text or as JSON lines (`--log-format json`); and the stop signal they all obey.

/// The `--log-format` flag.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags every binary takes: `#[command(flatten)] log: LogArgs`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Install the global subscriber with these flags. Call once, first thing in `main`.
    pub fn init(self) {
        init(self.log_format);
    }
}

/// Install the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves when the process is asked to stop: SIGTERM (Kubernetes) or Ctrl-C. If SIGTERM
/// cannot be watched, only Ctrl-C stops it (and the error is logged).
pub async fn stop_requested() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = parent_gone() => tracing::warn!("the process that started this one is gone"),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stop requested");
}

/// The environment variable with which a parent (`sluice run`) asks its children to stop when
/// it is gone: its process id. A child whose parent id is no longer that one was orphaned (the
/// parent was killed without a chance to stop it) and stops cleanly instead of running on.
pub const STOP_WITH_PARENT_ENV: &str = "SLUICE_STOP_WITH_PARENT";

/// Resolves once the parent named by [`STOP_WITH_PARENT_ENV`] is gone; never without it.
async fn parent_gone() {
    let Some(parent) = std::env::var(STOP_WITH_PARENT_ENV).ok().and_then(|p| p.parse::<u32>().ok()) else {
        return std::future::pending().await;
    };
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A `/metrics` response: the registry in Prometheus' OpenMetrics text format.
pub fn metrics_response(registry: &prometheus_client::registry::Registry) -> axum::response::Response {
    use axum::{
        http::{StatusCode, header},
        response::IntoResponse,
    };
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
