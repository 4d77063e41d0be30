//! `sluice-operator`: the Kubernetes controller for Pipelines.

use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use clap::{Parser, Subcommand};
use sluice_telemetry::LogArgs;

/// The Sluice operator: reconciles Pipeline resources into processor StatefulSets and function
/// Deployments, and scales functions on consumer lag.
#[derive(Parser, Debug)]
#[command(name = "sluice-operator", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (in-cluster config, else KUBECONFIG).
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long)]
        namespace: Option<String>,
        /// Where `/metrics`, `/healthz` and `/readyz` are served.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// The data-plane image for Pipelines that name none.
        #[arg(long, env = "SLUICE_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION")))]
        image: String,
    },
    /// Print the Pipeline CRD as YAML (the source of crds/pipelines.sluice.dev.yaml).
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match cli.command {
        Command::Crd => {
            print!("{}", sluice_crds::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run { namespace, listen, image } => match run(namespace, &listen, image) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("sluice-operator: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn run(namespace: Option<String>, listen: &str, image: String) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster config, else KUBECONFIG)")?;
        // Say so plainly when the CRD is missing, rather than failing in a watch.
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
        match crds.get_opt("pipelines.sluice.dev").await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!(
                "the Pipeline CRD (pipelines.sluice.dev) is not installed: install the chart, or kubectl apply -f crds/pipelines.sluice.dev.yaml"
            ),
            // Without the permission to read CRDs (namespaced installs), the watch will tell.
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            Err(e) => return Err(e).context("checking for the Pipeline CRD"),
        }
        let metrics = sluice_operator::server::Metrics::new();
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}"))?;
        let app = sluice_operator::server::router(metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        tracing::info!(?namespace, %image, "operator starting");
        metrics.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        sluice_operator::controller::run(client, namespace, image, metrics, sluice_telemetry::stop_requested()).await;
        tracing::info!("operator stopped");
        Ok(())
    })
}
