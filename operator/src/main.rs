//! `sluice-operator`: the Kubernetes controller for Pipelines.

use std::process::ExitCode;

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
        Command::Run { namespace } => {
            tracing::debug!(?namespace, "run requested");
            eprintln!(
                "sluice-operator run: the controller is not implemented yet (tracked in the operator issue); \
                 nothing was started"
            );
            ExitCode::from(2)
        }
    }
}
