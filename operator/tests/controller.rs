//! `sluice-operator run` against the real kube-apiserver: the example Pipeline's children appear
//! with the Pipeline as owner; a SQL change rolls the processor's template (and only its); a
//! removed function's Deployment is deleted; bad SQL gives `SqlValid=False`, a Warning Event and
//! leaves the children as they were; a restarted operator makes no duplicates and loses no status.

use std::{process::Command, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Event, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sluice_crds::Pipeline;
use sluice_tests::{Service as Child, free_port, kube_client, kubeconfig_path, repo_root, wait_for};

const HASH: &str = "sluice.dev/config-hash";

/// A running operator and the port of its `/metrics`.
struct Operator {
    child: Child,
    port: u16,
}

impl Operator {
    fn terminate(self) -> std::process::ExitStatus {
        self.child.terminate()
    }
}

fn operator(kubeconfig: &str, ns: &str) -> Operator {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
    command
        .args(["run", "--namespace", ns, "--listen", &format!("127.0.0.1:{port}"), "--image", "sluice:test"])
        .env("KUBECONFIG", kubeconfig);
    Operator { child: Child::start(command, port, "/readyz"), port }
}

fn example(ns: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(repo_root().join("examples/stocktrade/pipeline.yaml"))?;
    let mut v: Value = serde_norway::from_str(&text)?;
    v["metadata"]["namespace"] = json!(ns);
    Ok(v)
}

async fn apply(client: &Client, ns: &str, object: &Value) -> anyhow::Result<Pipeline> {
    let api: Api<Pipeline> = Api::namespaced(client.clone(), ns);
    Ok(api.patch("trades", &PatchParams::apply("sluice-tests").force(), &Patch::Apply(object)).await?)
}

fn template_hash(s: &StatefulSet) -> String {
    s.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(HASH))
        .cloned()
        .unwrap_or_default()
}

async fn condition(api: &Api<Pipeline>, type_: &str) -> anyhow::Result<Option<(String, String, Option<i64>)>> {
    let p = api.get("trades").await?;
    let generation = p.metadata.generation;
    Ok(p.status.and_then(|s| {
        (s.observed_generation == generation)
            .then(|| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == type_)
                    .map(|c| (c.status, c.message, c.observed_generation))
            })
            .flatten()
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_are_reconciled_into_their_children() -> anyhow::Result<()> {
    let Some(path) = kubeconfig_path() else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let (p, n) = (path.clone(), ns.clone());
    let op = tokio::task::spawn_blocking(move || operator(&p, &n)).await?;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    let created = apply(&client, &ns, &example(&ns)?).await?;
    let uid = created.uid().unwrap_or_default();

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let sts = wait_for("the processor StatefulSet", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?) }
    })
    .await?;
    let owner = &sts.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Pipeline", uid.as_str(), Some(true)));
    let deployment = wait_for("the function Deployment", Duration::from_secs(60), || {
        let d = deployments.clone();
        async move { Ok(d.get_opt("trades-fn-settle").await?) }
    })
    .await?;
    assert_eq!(deployment.owner_references()[0].uid, uid);
    let containers: Vec<String> =
        deployment.spec.template.spec.as_ref().unwrap().containers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(containers, ["runner", "function"]);
    // The function's Service is applied after its Deployment: wait for it rather than race it.
    for name in ["trades-processor", "trades-processor-peers", "trades-fn-settle"] {
        let s = wait_for("the Services", Duration::from_secs(30), || {
            let api = services.clone();
            async move { Ok(api.get_opt(name).await?) }
        })
        .await?;
        assert_eq!(s.owner_references()[0].uid, uid, "{name}");
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("trades-sluice-config").await?;
    let data = cm.data.unwrap_or_default();
    assert!(data["processor.yaml"].contains(&format!("applicationId: {ns}.trades")), "{data:?}");
    assert!(data.contains_key("function-settle.yaml"));
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns).get("trades-processor").await?;
    wait_for("SqlValid=True in status", Duration::from_secs(60), || {
        let api = pipelines.clone();
        async move { Ok(condition(&api, "SqlValid").await?.filter(|c| c.0 == "True")) }
    })
    .await?;
    let status = pipelines.get("trades").await?.status.expect("status");
    assert_eq!(status.processor.as_ref().map(|p| p.queries.len()), Some(5), "{status:?}");

    // A restarted operator: no duplicate, nothing rewritten that did not change, status kept.
    let before = statefulsets.get("trades-processor").await?.resource_version();
    let status_before = pipelines.get("trades").await?.status;
    tokio::task::spawn_blocking(move || op.terminate()).await?;
    let (p, n) = (path.clone(), ns.clone());
    let op = tokio::task::spawn_blocking(move || operator(&p, &n)).await?;
    let op_port = op.port;
    wait_for("the restarted operator's first reconcile", Duration::from_secs(60), || async move {
        Ok((reconciles(op_port, "ok") >= 1.0).then_some(()))
    })
    .await?;
    assert_eq!(
        statefulsets.get("trades-processor").await?.resource_version(),
        before,
        "an unchanged Pipeline causes no writes"
    );
    assert_eq!(pipelines.get("trades").await?.status, status_before, "status survives the restart");
    assert_eq!(deployments.list(&ListParams::default()).await?.items.len(), 1);

    // The volume claims are fixed: a storage change is refused at apply time, by the CRD.
    let mut bigger = example(&ns)?;
    bigger["spec"]["processor"]["storage"] = json!({"size": "5Gi"});
    let refused = apply(&client, &ns, &bigger).await.expect_err("a storage change is refused");
    assert!(refused.to_string().contains("processor.storage cannot be changed"), "{refused}");

    // A Kafka property that makes librdkafka run a command is refused at apply time, by the CRD,
    // with its field path and the key.
    let mut kinit = example(&ns)?;
    kinit["spec"]["kafka"]["properties"] =
        json!({"client.rack": "a", "sasl.kerberos.kinit.cmd": "sh -c 'id > /tmp/pwned'"});
    let refused = apply(&client, &ns, &kinit).await.expect_err("a command-running property is refused");
    let text = refused.to_string();
    assert!(text.contains("spec.kafka.properties"), "{text}");
    assert!(text.contains("\"sasl.kerberos.kinit.cmd\" may not be set in a Pipeline"), "{text}");

    // Change the SQL: the processor's template hash changes, the function's does not.
    let old_hash = template_hash(&sts);
    let fn_hash = deployment.spec.template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    let mut changed = example(&ns)?;
    let sql = changed["spec"]["processor"]["sql"].as_str().unwrap_or_default().to_owned();
    changed["spec"]["processor"]["sql"] = json!(format!("{sql}\n-- one more line\n"));
    apply(&client, &ns, &changed).await?;
    let sts = wait_for("a new template hash", Duration::from_secs(60), || {
        let (s, old) = (statefulsets.clone(), old_hash.clone());
        async move { Ok(s.get_opt("trades-processor").await?.filter(|s| template_hash(s) != old)) }
    })
    .await?;
    let d = deployments.get("trades-fn-settle").await?;
    assert_eq!(d.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default(), fn_hash);

    // Bad SQL: condition, Event, children unchanged.
    let config_before = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("trades-sluice-config").await?;
    let deployment_before = deployments.get("trades-fn-settle").await?.resource_version();
    let mut bad = changed.clone();
    bad["spec"]["processor"]["sql"] = json!(format!("{sql}\nCREATE STREAM X AS SELECT nope FROM STOCKTRADE;\n"));
    apply(&client, &ns, &bad).await?;
    let (_, message, _) = wait_for("SqlValid=False", Duration::from_secs(60), || {
        let api = pipelines.clone();
        async move { Ok(condition(&api, "SqlValid").await?.filter(|c| c.0 == "False")) }
    })
    .await?;
    assert!(message.contains("line "), "the message names the SQL line: {message}");
    warning_event(&client, &ns, "InvalidSql").await?;
    assert_eq!(
        template_hash(&statefulsets.get("trades-processor").await?),
        template_hash(&sts),
        "children left as they were"
    );
    let config_after = Api::<ConfigMap>::namespaced(client.clone(), &ns).get("trades-sluice-config").await?;
    assert_eq!(config_after.data, config_before.data, "the config files are left as they were");
    assert_eq!(deployments.get("trades-fn-settle").await?.resource_version(), deployment_before);
    assert_eq!(pipelines.get("trades").await?.status.and_then(|s| s.phase), Some(sluice_crds::pipeline::Phase::Failed));

    // SQL nested deeper than the parser's limit: an SQL error like any other, and the operator
    // (which plans every Pipeline's SQL) stays up.
    let mut deep = changed.clone();
    deep["spec"]["processor"]["sql"] = json!(format!(
        "{sql}\nCREATE STREAM X AS SELECT * FROM STOCKTRADE WHERE quantity = {}1{};\n",
        "(".repeat(20_000),
        ")".repeat(20_000)
    ));
    apply(&client, &ns, &deep).await?;
    wait_for("SqlValid=False for nested SQL", Duration::from_secs(60), || {
        let api = pipelines.clone();
        async move { Ok(condition(&api, "SqlValid").await?.filter(|c| c.0 == "False" && c.1.contains("nested too deeply"))) }
    })
    .await?;
    assert!(sluice_tests::http(op.port, "GET", "/healthz", None).is_some_and(|(s, _)| s == 200), "the operator is up");

    // Remove the function: its Deployment and Service go.
    let mut no_function = changed.clone();
    no_function["spec"]["functions"] = json!([]);
    apply(&client, &ns, &no_function).await?;
    wait_for("the removed function's Deployment to be deleted", Duration::from_secs(60), || {
        let d = deployments.clone();
        async move { Ok(d.get_opt("trades-fn-settle").await?.is_none().then_some(())) }
    })
    .await?;
    wait_for("the removed function's Service to be deleted", Duration::from_secs(30), || {
        let s = services.clone();
        async move { Ok(s.get_opt("trades-fn-settle").await?.is_none().then_some(())) }
    })
    .await?;
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// No controllers run in the test apiserver, so the test plays the StatefulSet controller: it
/// creates the pods a StatefulSet of 2 would have, then deletes them once the operator scaled it
/// to zero — and checks that 3 is applied only after that, with the new config.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_change_rescales_through_zero() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let Some(path) = kubeconfig_path() else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let (p, n) = (path.clone(), ns.clone());
    let op = tokio::task::spawn_blocking(move || operator(&p, &n)).await?;
    let mut pipeline = example(&ns)?;
    pipeline["spec"]["functions"] = json!([]);
    pipeline["spec"]["processor"]["replicas"] = json!(2);
    apply(&client, &ns, &pipeline).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let replicas = |s: &StatefulSet| s.spec.replicas.unwrap_or(-1);
    let config_replicas = |c: &ConfigMap| {
        let text = c.data.as_ref().and_then(|d| d.get("processor.yaml")).cloned().unwrap_or_default();
        let v: Value = serde_norway::from_str(&text).unwrap_or(Value::Null);
        v["replicas"].as_i64().unwrap_or(-1)
    };
    let sts = wait_for("the StatefulSet of 2", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?.filter(|s| s.spec.replicas == Some(2))) }
    })
    .await?;
    // Play the StatefulSet controller: two pods, ready.
    let labels = sts.spec.selector.match_labels.clone().unwrap_or_default();
    for i in 0..2 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("trades-processor-{i}"), "labels": labels},
            "spec": {"containers": [{"name": "processor", "image": "sluice:test"}]},
        }))?;
        pods.create(&Default::default(), &pod).await?;
    }
    statefulsets
        .patch_status(
            "trades-processor",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 2}})),
        )
        .await?;

    pipeline["spec"]["processor"]["replicas"] = json!(3);
    apply(&client, &ns, &pipeline).await?;
    wait_for("the StatefulSet scaled to zero", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?.filter(|s| s.spec.replicas == Some(0))) }
    })
    .await?;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    wait_for("ProcessorReady=False, Rescaling", Duration::from_secs(30), || {
        let api = pipelines.clone();
        async move {
            let p = api.get("trades").await?;
            Ok(p.status.and_then(|s| {
                s.conditions.into_iter().find(|c| c.type_ == "ProcessorReady" && c.reason == "Rescaling")
            }))
        }
    })
    .await?;
    // While the old pods exist: still zero, and the old config.
    tokio::time::sleep(Duration::from_secs(5)).await; // several 2 s polls of the operator must change nothing
    assert_eq!(replicas(&statefulsets.get("trades-processor").await?), 0, "never the new count while old pods exist");
    assert_eq!(config_replicas(&configs.get("trades-sluice-config").await?), 2, "the old pods' config stays");
    for i in 0..2 {
        pods.delete(&format!("trades-processor-{i}"), &Default::default()).await?;
    }
    wait_for("the StatefulSet of 3", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?.filter(|s| s.spec.replicas == Some(3))) }
    })
    .await?;
    assert_eq!(config_replicas(&configs.get("trades-sluice-config").await?), 3);
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// Wait for a Warning Event with `reason` in the namespace.
async fn warning_event(client: &Client, ns: &str, reason: &str) -> anyhow::Result<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("a {reason} Warning Event"), Duration::from_secs(30), || {
        let e = events.clone();
        async move {
            let list = e.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason)))
        }
    })
    .await
}

/// `sluice_operator_reconciles_total{result=...}` of an operator.
fn reconciles(port: u16, result: &str) -> f64 {
    let Some((_, text)) = sluice_tests::http(port, "GET", "/metrics", None) else { return 0.0 };
    let prefix = format!("sluice_operator_reconciles_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
}

/// An object the operator cannot apply (here a Service of the same name, created by someone
/// else, whose cluster IP cannot become `None`): the reconcile fails and is retried, and the
/// Pipeline says so — `Ready=False`/`ReconcileFailed` with the apiserver's message, and a
/// Warning Event — instead of only the operator's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_apply_is_reported_in_status_and_events() -> anyhow::Result<()> {
    let Some(path) = kubeconfig_path() else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let clash: Service = serde_json::from_value(json!({
        "metadata": {"name": "trades-processor-peers"},
        "spec": {"ports": [{"port": 80}]},
    }))?;
    services.create(&Default::default(), &clash).await?;
    let (p, n) = (path.clone(), ns.clone());
    let op = tokio::task::spawn_blocking(move || operator(&p, &n)).await?;
    let mut pipeline = example(&ns)?;
    pipeline["spec"]["functions"] = json!([]);
    apply(&client, &ns, &pipeline).await?;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    let (status, message, _) = wait_for("Ready=False with ReconcileFailed", Duration::from_secs(60), || {
        let api = pipelines.clone();
        async move {
            let p = api.get("trades").await?;
            Ok(p.status.and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready" && c.reason == "ReconcileFailed")
                    .map(|c| (c.status, c.message, c.observed_generation))
            }))
        }
    })
    .await?;
    assert_eq!(status, "False");
    assert!(message.contains("trades-processor-peers"), "the message names the object: {message}");
    warning_event(&client, &ns, "ReconcileFailed").await?;
    // Once the clash is gone, the reconcile succeeds and Ready stops saying it failed.
    services.delete("trades-processor-peers", &Default::default()).await?;
    wait_for("the failure to clear", Duration::from_secs(60), || {
        let api = pipelines.clone();
        async move {
            let p = api.get("trades").await?;
            let cleared = p
                .status
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason != "ReconcileFailed"));
            Ok(cleared.then_some(()))
        }
    })
    .await?;
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

fn leader_metric(port: u16) -> Option<f64> {
    let (_, text) = sluice_tests::http(port, "GET", "/metrics", None)?;
    text.lines().find(|l| l.starts_with("sluice_operator_leader "))?.rsplit(' ').next()?.parse().ok()
}

/// Two replicas: one leads (the other acts on nothing); when the leader stops it releases the
/// Lease and the other takes over at once and reconciles.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_hand_over() -> anyhow::Result<()> {
    let Some(path) = kubeconfig_path() else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let start = |path: String, ns: String| {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
        command.args(["run", "--namespace", &ns, "--listen", &format!("127.0.0.1:{port}")]).env("KUBECONFIG", &path);
        (Child::start(command, port, "/readyz"), port)
    };
    let (p, n) = (path.clone(), ns.clone());
    let (a, a_port) = tokio::task::spawn_blocking(move || start(p, n)).await?;
    wait_for("the first replica to lead", Duration::from_secs(30), || async move {
        Ok((leader_metric(a_port) == Some(1.0)).then_some(()))
    })
    .await?;
    let (p, n) = (path.clone(), ns.clone());
    let (b, b_port) = tokio::task::spawn_blocking(move || start(p, n)).await?;
    tokio::time::sleep(Duration::from_secs(6)).await; // more than one Lease round of the second replica
    assert_eq!(leader_metric(b_port), Some(0.0), "the second replica stands by");
    assert_eq!(leader_metric(a_port), Some(1.0));

    let status = tokio::task::spawn_blocking(move || a.terminate()).await?;
    assert!(status.success(), "{status}");
    let handed_over = std::time::Instant::now();
    wait_for("the second replica to lead", Duration::from_secs(30), || async move {
        Ok((leader_metric(b_port) == Some(1.0)).then_some(()))
    })
    .await?;
    assert!(handed_over.elapsed() < Duration::from_secs(10), "released, not expired: {:?}", handed_over.elapsed());
    // The new leader reconciles.
    apply(&client, &ns, &example(&ns)?).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    wait_for("the processor StatefulSet from the new leader", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?) }
    })
    .await?;
    let status = tokio::task::spawn_blocking(move || b.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

/// Credentials rotated in a referenced Secret roll the pods: the Secret is watched and its
/// digest is part of the pod templates' hash.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_secret_rolls_the_pods() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let Some(path) = kubeconfig_path() else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |password: &str| -> anyhow::Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "kafka-user"},
            "stringData": {"username": "sluice", "password": password},
        }))?)
    };
    secrets.create(&Default::default(), &secret("one")?).await?;
    let (p, n) = (path.clone(), ns.clone());
    let op = tokio::task::spawn_blocking(move || operator(&p, &n)).await?;
    let mut pipeline = example(&ns)?;
    pipeline["spec"]["functions"] = json!([]);
    pipeline["spec"]["kafka"]["securityProtocol"] = json!("SASL_PLAINTEXT");
    pipeline["spec"]["kafka"]["sasl"] = json!({"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-user"}});
    apply(&client, &ns, &pipeline).await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let first = wait_for("the processor StatefulSet", Duration::from_secs(60), || {
        let s = statefulsets.clone();
        async move { Ok(s.get_opt("trades-processor").await?) }
    })
    .await?;
    let before = template_hash(&first);
    secrets
        .replace("kafka-user", &Default::default(), &{
            let mut s = secrets.get("kafka-user").await?;
            s.data = None;
            s.string_data = Some([("username".into(), "sluice".into()), ("password".into(), "two".into())].into());
            s
        })
        .await?;
    wait_for("a new template hash after the Secret changed", Duration::from_secs(60), || {
        let (s, old) = (statefulsets.clone(), before.clone());
        async move { Ok(s.get_opt("trades-processor").await?.filter(|s| template_hash(s) != old)) }
    })
    .await?;
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
