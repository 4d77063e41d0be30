//! `sluice-operator`: the Kubernetes controller for Pipelines.

use std::process::ExitCode;

use anyhow::Context;

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
        /// Watch only these namespaces (repeat the flag; default: all namespaces).
        #[arg(long)]
        namespace: Vec<String>,
        /// Where `/metrics`, `/healthz` and `/readyz` are served.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
        /// The namespace of the leader-election Lease (default: `$POD_NAMESPACE`, else the
        /// watched namespace, else `default`).
        #[arg(long)]
        leader_election_namespace: Option<String>,
        /// The data-plane image for Pipelines that name none.
        #[arg(long, env = "SLUICE_IMAGE", default_value = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// A librdkafka property for every data-plane client and the operator's own lag reader,
        /// as `KEY=VALUE` (repeat the flag). The cluster administrator's: it may set the keys a
        /// Pipeline may not (Kerberos, an OpenSSL engine, files), and it wins over a Pipeline's.
        #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value)]
        kafka_properties: Vec<(String, String)>,
        /// `imagePullPolicy` of the data-plane containers (default: Kubernetes' for the tag).
        #[arg(long, env = "SLUICE_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
        image_pull_policy: Option<String>,
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
        Command::Run { namespace, listen, image, leader_election_namespace, kafka_properties, image_pull_policy } => {
            let settings = sluice_operator::render::Settings {
                image,
                kafka_properties: kafka_properties.into_iter().collect(),
                image_pull_policy,
            };
            match run(namespace, &listen, settings, leader_election_namespace) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sluice-operator: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn run(
    namespaces: Vec<String>,
    listen: &str,
    settings: sluice_operator::render::Settings,
    lease_namespace: Option<String>,
) -> anyhow::Result<()> {
    // Reconciles parse and plan each Pipeline's SQL: room for the deepest tree the parser accepts.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(sluice_sql::SQL_STACK_SIZE)
        .build()?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster config, else KUBECONFIG)")?;
        // Say so plainly when the CRD is missing, rather than failing in a watch: list Pipelines
        // where the operator will watch them, which needs no permission on CRDs (a namespaced
        // install has none) and answers 404 exactly when the API is not installed.
        for scope in if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(Some).collect() } {
            let pipelines: kube::Api<sluice_crds::Pipeline> = match scope {
                Some(ns) => kube::Api::namespaced(client.clone(), ns),
                None => kube::Api::all(client.clone()),
            };
            let where_ = scope.map_or_else(|| "in any namespace".to_owned(), |ns| format!("in namespace {ns}"));
            match pipelines.list(&kube::api::ListParams::default().limit(1)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
                    "the Pipeline CRD (pipelines.sluice.dev) is not installed: install the chart, or kubectl apply -f crds/pipelines.sluice.dev.yaml"
                ),
                Err(kube::Error::Api(e)) if e.code == 403 => anyhow::bail!(
                    "the operator may not list Pipelines {where_} ({}): check its ClusterRole/Role and --namespace",
                    e.message
                ),
                Err(e) => return Err(e).context("checking for the Pipeline CRD"),
            }
        }
        let metrics = sluice_operator::server::Metrics::new();
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--listen {listen}"))?;
        let app = sluice_operator::server::router(metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        tracing::info!(?namespaces, image = %settings.image, "operator starting");
        metrics.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let stop = tokio_util::sync::CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            sluice_telemetry::stop_requested().await;
            stopper.cancel();
        });
        // Only the holder of the Lease acts; another replica waits to take over.
        let lease_namespace = lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
            .or_else(|| namespaces.first().cloned())
            .unwrap_or_else(|| "default".into());
        let identity = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            format!("{host}-{}", std::process::id())
        });
        let elector = sluice_operator::leader::Elector::new(
            client.clone(),
            &lease_namespace,
            "sluice-operator",
            &identity,
            std::time::Duration::from_secs(15),
        );
        let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
        let election = tokio::spawn(elector.run(leading_tx, stop.clone()));
        tokio::select! {
            _ = leading.wait_for(|l| *l) => {}
            _ = stop.cancelled() => {}
        }
        if !stop.is_cancelled() {
            metrics.set_leader(true);
            let mut lost = leading.clone();
            let stopped = stop.clone();
            let shutdown = async move {
                tokio::select! {
                    _ = stopped.cancelled() => {}
                    _ = lost.wait_for(|l| !*l) => {}
                }
            };
            // One controller per watched namespace (Roles only), or one for all namespaces.
            let scopes: Vec<Option<String>> =
                if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
            let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
            let controllers = scopes.into_iter().map(|scope| {
                sluice_operator::controller::run(client.clone(), scope, settings.clone(), metrics.clone(), shutdown.clone())
            });
            futures::future::join_all(controllers).await;
            metrics.set_leader(false);
        }
        stop.cancel();
        if !election.await.unwrap_or(false) {
            anyhow::bail!("lost the leader Lease; restarting as a candidate");
        }
        tracing::info!("operator stopped");
        Ok(())
    })
}
