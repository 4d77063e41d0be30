//! The Helm chart against the real apiserver: `helm lint` and `helm template` pass in both RBAC
//! modes; `helm install` succeeds, taking over the CRD (installed and upgraded by the chart, kept
//! on uninstall); and the operator, run with the chart's ServiceAccount token rather than as
//! admin — once per RBAC mode, namespaced Roles and the ClusterRole — reconciles a Pipeline and
//! scales its function on a real backlog: the rendered RBAC is enough, and (namespaced) no more
//! than that is granted.

use std::{process::Command, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        authentication::v1::TokenRequest,
        core::v1::{Event, ServiceAccount},
    },
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

    run_under_the_charts_rbac(&client, &path, release, &release_ns, &watched).await?;

    // Cluster-wide: a second release without the CRD (the first one owns it), whose ClusterRole
    // is what its operator runs under.
    let cluster_ns = sluice_tests::create_namespace(&client).await?;
    let watched_too = sluice_tests::create_namespace(&client).await?;
    helm(
        &bin,
        &[
            "install",
            "sluice-all",
            "charts/sluice",
            "--namespace",
            &cluster_ns,
            "--kubeconfig",
            &path,
            "--set",
            "crds.install=false",
        ],
    )?;
    run_under_the_charts_rbac(&client, &path, "sluice-all", &cluster_ns, &watched_too).await?;
    helm(&bin, &["uninstall", "sluice-all", "--namespace", &cluster_ns, "--kubeconfig", &path])?;

    helm(&bin, &["uninstall", release, "--namespace", &release_ns, "--kubeconfig", &path])?;
    assert!(crds.get_opt("pipelines.sluice.dev").await?.is_some(), "the CRD is kept on uninstall");
    Ok(())
}

/// Run the operator with a token of release `release`'s ServiceAccount (not as admin) on the
/// namespace `watched`, and check that it can do all it does there: apply a Pipeline's children,
/// write status, and — against the real broker — read lag, scale the function's Deployment
/// through the scale subresource and publish the Event; and nothing in another namespace.
async fn run_under_the_charts_rbac(
    client: &kube::Client,
    path: &str,
    release: &str,
    release_ns: &str,
    watched: &str,
) -> anyhow::Result<()> {
    let sa = format!("{release}-operator");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), release_ns);
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let token = accounts.create_token_request(&sa, &PostParams::default(), &request).await?;
    let token = token.status.and_then(|s| s.token).unwrap_or_default();
    let admin = Kubeconfig::read_from(path)?;
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
            watched,
            "--leader-election-namespace",
            release_ns,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KUBECONFIG", &own_path);
    let op = tokio::task::spawn_blocking(move || Child::start(command, port, "/readyz")).await?;

    let text = std::fs::read_to_string(repo_root().join("examples/stocktrade/pipeline.yaml"))?;
    let mut pipeline: Value = serde_norway::from_str(&text)?;
    pipeline["metadata"]["namespace"] = json!(watched);
    // With the real broker, a backlog on the function's source makes the autoscaler act.
    let bootstrap = sluice_tests::kafka_bootstrap();
    let source = sluice_tests::unique("chart-src");
    if let Some(bootstrap) = &bootstrap {
        backlog(bootstrap, &source, 300).await?;
        pipeline["spec"]["kafka"]["bootstrapServers"] = json!(bootstrap);
        let f = &mut pipeline["spec"]["functions"][0];
        f["source"] = json!({"topic": source, "startingPosition": "earliest"});
        f["scaling"] = json!({"pollInterval": "1s", "targetLagPerReplica": 100, "maxReplicas": 10});
    }
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), watched);
    pipelines.patch("trades", &PatchParams::apply("sluice-tests").force(), &Patch::Apply(&pipeline)).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), watched);
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
    if bootstrap.is_some() {
        // 300 records, 100 per replica, 4 partitions: 3 replicas, written through the scale
        // subresource, with a Scaled Event.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), watched);
        wait_for("the function scaled to 3 under the chart's RBAC", Duration::from_secs(60), || {
            let d = deployments.clone();
            async move { Ok(d.get_opt("trades-fn-settle").await?.filter(|d| d.spec.replicas == Some(3))) }
        })
        .await?;
        let events: Api<Event> = Api::namespaced(client.clone(), watched);
        wait_for("the Scaled Event", Duration::from_secs(30), || {
            let e = events.clone();
            async move {
                Ok(e.list(&Default::default()).await?.items.into_iter().find(|e| e.reason.as_deref() == Some("Scaled")))
            }
        })
        .await?;
    }
    // Least privilege: nothing outside the watched namespace.
    let as_operator = kube_client(&own_path.to_string_lossy()).await?;
    let elsewhere: Api<StatefulSet> = Api::namespaced(as_operator, release_ns);
    match elsewhere.list(&Default::default()).await {
        Err(kube::Error::Api(e)) if release == "sluice" => assert_eq!(e.code, 403),
        Ok(_) if release != "sluice" => {} // cluster-wide: every namespace, by design
        other => panic!("unexpected answer for {release} in {release_ns}: {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// A topic of 4 partitions holding `n` records.
async fn backlog(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    use rdkafka::{
        ClientConfig,
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        client::DefaultClientContext,
        producer::{FutureProducer, FutureRecord},
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for r in admin.create_topics(&[NewTopic::new(topic, 4, TopicReplication::Fixed(1))], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for i in 0..n {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload("{}").partition((i % 4) as i32), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}
