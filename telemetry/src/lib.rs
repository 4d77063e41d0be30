//! Logging for every Sluice binary: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text or as JSON lines (`--log-format json`).

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
