//! The Helm chart against the real apiserver: `helm lint` and `helm template` pass in both RBAC
//! modes; `helm install` succeeds, taking over the CRD (installed and upgraded by the chart, kept
//! on uninstall); and the operator, run with the chart's ServiceAccount token rather than as
//! admin, reconciles a Pipeline — the rendered RBAC is enough, and no more than that is granted.

use std::{process::Command, time::Duration};

use k8s_openapi::{
    api::{apps::v1::StatefulSet, authentication::v1::TokenRequest, core::v1::ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use serde_json::{Value, json};
use sluice_crds::Pipeline;
use sluice_tests::{Service as Child, free_port, kube_client, kubeconfig_path, repo_root, wait_for};

fn helm(bin: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin).args(args).current_dir(repo_root()).output()?;
    anyhow::ensure!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_installs_and_its_rbac_is_enough() -> anyhow::Result<()> {
    let (Some(bin), Some(path)) = (sluice_tests::helm(), kubeconfig_path()) else { return Ok(()) };
    // Lint and render, cluster-wide and namespaced.
    helm(&bin, &["lint", "charts/sluice", "--strict"])?;
    let cluster = helm(&bin, &["template", "sluice", "charts/sluice", "--namespace", "sluice-system"])?;
    assert!(cluster.contains("kind: ClusterRole\n") && cluster.contains("kind: CustomResourceDefinition"), "{cluster}");
    let scoped = helm(&bin, &["template", "sluice", "charts/sluice", "--set", "watchNamespaces={a,b}"])?;
    assert!(!scoped.contains("kind: ClusterRole\n") && scoped.matches("\nkind: Role\n").count() == 3, "{scoped}");
    let bad = Command::new(&bin)
        .args(["template", "x", "charts/sluice", "--set", "replicaz=2"])
        .current_dir(repo_root())
        .output()?;
    assert!(!bad.status.success(), "values.schema.json rejects unknown keys");
    // The chart's CRD is byte for byte the committed one.
    assert_eq!(
        std::fs::read(repo_root().join("charts/sluice/files/pipelines.sluice.dev.yaml"))?,
        std::fs::read(repo_root().join("crds/pipelines.sluice.dev.yaml"))?,
        "charts/sluice/files/pipelines.sluice.dev.yaml must be a copy of crds/pipelines.sluice.dev.yaml"
    );

    let client = kube_client(&path).await?;
    let release_ns = sluice_tests::create_namespace(&client).await?;
    let watched = sluice_tests::create_namespace(&client).await?;
    let release = "sluice";
    // Other tests install the CRD too: mark it as this release's, as Helm requires to adopt it.
    sluice_tests::install_crd(&client).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let adopt = json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": release_ns}}});
    crds.patch("pipelines.sluice.dev", &PatchParams::default(), &Patch::Merge(&adopt)).await?;
    let set = format!("watchNamespaces={{{watched}}}");
    helm(
        &bin,
        &["install", release, "charts/sluice", "--namespace", &release_ns, "--kubeconfig", &path, "--set", &set],
    )?;

    // A token of the chart's ServiceAccount, in a kubeconfig of its own.
    let sa = format!("{release}-operator");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &release_ns);
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let token = accounts.create_token_request(&sa, &PostParams::default(), &request).await?;
    let token = token.status.and_then(|s| s.token).unwrap_or_default();
    let admin = Kubeconfig::read_from(&path)?;
    let cluster = admin.clusters.first().ok_or_else(|| anyhow::anyhow!("no cluster in {path}"))?;
    let own = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [serde_json::to_value(cluster)?],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster.name, "user": "operator"}}],
        "current-context": "operator",
    });
    let own_path = std::env::temp_dir().join(format!("{release_ns}-operator.kubeconfig"));
    std::fs::write(&own_path, serde_norway::to_string(&own)?)?;

    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
    command
        .args([
            "run",
            "--namespace",
            &watched,
            "--leader-election-namespace",
            &release_ns,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KUBECONFIG", &own_path);
    let op = tokio::task::spawn_blocking(move || Child::start(command, port, "/readyz")).await?;

    let text = std::fs::read_to_string(repo_root().join("examples/stocktrade/pipeline.yaml"))?;
    let mut pipeline: Value = serde_norway::from_str(&text)?;
    pipeline["metadata"]["namespace"] = json!(watched);
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &watched);
    pipelines.patch("trades", &PatchParams::apply("sluice-tests").force(), &Patch::Apply(&pipeline)).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &watched);
    wait_for("the processor StatefulSet, made under the chart's RBAC", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?) }
    })
    .await?;
    wait_for("status written under the chart's RBAC", Duration::from_secs(60), || {
        let p = pipelines.clone();
        async move { Ok(p.get("trades").await?.status.filter(|s| s.observed_generation.is_some())) }
    })
    .await?;
    // Least privilege: nothing outside the watched namespace.
    let as_operator = kube_client(&own_path.to_string_lossy()).await?;
    let elsewhere: Api<StatefulSet> = Api::namespaced(as_operator, &release_ns);
    match elsewhere.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("the operator's token reached another namespace: {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");

    helm(&bin, &["uninstall", release, "--namespace", &release_ns, "--kubeconfig", &path])?;
    assert!(crds.get_opt("pipelines.sluice.dev").await?.is_some(), "the CRD is kept on uninstall");
    Ok(())
}
