//! The test apiserver is a real kube-apiserver: namespaces and ConfigMaps are stored, the
//! generated CRD is accepted without warnings and becomes Established, a valid Pipeline comes
//! back with the schema's defaults, and invalid ones are rejected with the CEL rules' messages.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ConfigMap, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, CustomResourceExt,
    api::{ApiResource, DynamicObject, ObjectMeta, PostParams},
};
use serde_json::{Value, json};
use sluice_crds::Pipeline;
use sluice_tests::{kube_client, kubeconfig_path, repo_root};

async fn client() -> anyhow::Result<Option<Client>> {
    match kubeconfig_path() {
        Some(path) => Ok(Some(kube_client(&path).await?)),
        None => Ok(None),
    }
}

async fn namespace(client: &Client) -> anyhow::Result<String> {
    sluice_tests::create_namespace(client).await
}

async fn install_crd(client: &Client) -> anyhow::Result<Vec<String>> {
    sluice_tests::install_crd(client).await
}

fn pipelines(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Pipeline>(&()))
}

fn example() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(repo_root().join("examples/stocktrade/pipeline.yaml"))?;
    Ok(serde_norway::from_str(&text)?)
}

async fn create(client: &Client, ns: &str, mut object: Value) -> Result<DynamicObject, kube::Error> {
    object["metadata"]["namespace"] = json!(ns);
    let object: DynamicObject = serde_json::from_value(object).expect("a valid object shape");
    pipelines(client, ns).create(&PostParams::default(), &object).await
}

#[tokio::test]
async fn namespaces_and_configmaps_are_stored() -> anyhow::Result<()> {
    let Some(client) = client().await? else {
        return Ok(());
    };
    let ns = namespace(&client).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("smoke".into()), ..Default::default() },
        data: Some(BTreeMap::from([("answer".to_string(), "42".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    let back = cms.get("smoke").await?;
    assert_eq!(back.data.unwrap()["answer"], "42");
    assert!(back.metadata.uid.is_some(), "the apiserver assigned a uid");
    Ok(())
}

#[tokio::test]
async fn the_crd_is_accepted_without_warnings() -> anyhow::Result<()> {
    let Some(client) = client().await? else {
        return Ok(());
    };
    let warnings = install_crd(&client).await?;
    assert!(warnings.is_empty(), "the apiserver warned about the CRD: {warnings:?}");
    let stored = Api::<CustomResourceDefinition>::all(client).get(Pipeline::crd_name()).await?;
    let version = &stored.spec.versions[0];
    let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Phase", "Lag", "Replicas", "Age"]);
    assert_eq!(stored.spec.names.short_names.as_deref(), Some(&["pl".to_string()][..]));
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource enabled");
    Ok(())
}

#[tokio::test]
async fn a_valid_pipeline_is_stored_with_defaults() -> anyhow::Result<()> {
    let Some(client) = client().await? else {
        return Ok(());
    };
    install_crd(&client).await?;
    let ns = namespace(&client).await?;
    let created = create(&client, &ns, example()?).await?;
    let data = &created.data;
    // Defaults filled in by the apiserver from the CRD schema (the example does not set these).
    let f = &data["spec"]["functions"][0];
    assert_eq!(f["batch"]["maxBytes"], "6Mi");
    assert_eq!(f["ordering"], "partition");
    assert_eq!(f["scaling"]["pollInterval"], "10s");
    assert_eq!(f["scaling"]["scaleToZeroAfter"], "5m");
    assert_eq!(f["onFailure"]["backoff"]["initial"], "100ms");
    assert_eq!(f["runtime"]["lambda"]["concurrency"], 1);
    assert_eq!(data["spec"]["processor"]["exactlyOnce"], true);
    assert_eq!(data["spec"]["processor"]["commitInterval"], "100ms");
    assert_eq!(data["spec"]["kafka"]["securityProtocol"], "PLAINTEXT");
    // And the typed API reads it back.
    let typed: Pipeline = Api::<Pipeline>::namespaced(client, &ns).get("trades").await?;
    assert_eq!(typed.spec.functions[0].scaling.max_replicas, 8);
    assert_eq!(typed.spec.functions[0].batch.max_bytes.bytes(), 6 * 1024 * 1024);
    Ok(())
}

fn rejection(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(o) => panic!("the apiserver accepted an invalid Pipeline: {:?}", o.data),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn invalid_pipelines_are_rejected_with_the_rule_message() -> anyhow::Result<()> {
    let Some(client) = client().await? else {
        return Ok(());
    };
    install_crd(&client).await?;
    let ns = namespace(&client).await?;

    let mut both_runtimes = example()?;
    both_runtimes["metadata"]["name"] = json!("both-runtimes");
    both_runtimes["spec"]["functions"][0]["runtime"]["http"] = json!({"url": "http://settle:8080/"});
    let message = rejection(create(&client, &ns, both_runtimes).await);
    assert!(message.contains("exactly one of runtime.lambda and runtime.http must be set"), "{message}");

    let mut min_above_max = example()?;
    min_above_max["metadata"]["name"] = json!("min-above-max");
    min_above_max["spec"]["functions"][0]["scaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
    let message = rejection(create(&client, &ns, min_above_max).await);
    assert!(message.contains("scaling.minReplicas must not exceed scaling.maxReplicas"), "{message}");

    let mut duplicate = example()?;
    duplicate["metadata"]["name"] = json!("duplicate-names");
    let copy = duplicate["spec"]["functions"][0].clone();
    duplicate["spec"]["functions"].as_array_mut().unwrap().push(copy);
    let message = rejection(create(&client, &ns, duplicate).await);
    assert!(message.contains("function names must be unique") || message.contains("Duplicate value"), "{message}");

    let mut bad_duration = example()?;
    bad_duration["metadata"]["name"] = json!("bad-duration");
    bad_duration["spec"]["functions"][0]["batch"]["maxWait"] = json!("5 seconds");
    let message = rejection(create(&client, &ns, bad_duration).await);
    assert!(message.contains("maxWait"), "{message}");

    let mut bad_size = example()?;
    bad_size["metadata"]["name"] = json!("bad-size");
    bad_size["spec"]["functions"][0]["batch"]["maxBytes"] = json!("6MB");
    let message = rejection(create(&client, &ns, bad_size).await);
    assert!(message.contains("must be a positive whole number of bytes"), "{message}");

    // None of them was stored.
    let stored = pipelines(&client, &ns).list(&Default::default()).await?;
    assert!(stored.items.is_empty(), "rejected pipelines must not be stored");
    Ok(())
}
