//! The lag autoscaler end to end, against the real broker and the real apiserver: an idle
//! function goes to zero; a backlog on 8 partitions raises its Deployment to 8 (never more)
//! within two poll intervals; once the group has committed to the end it returns to zero after
//! `scaleToZeroAfter`; new records activate it again. Prints the reaction times.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::json;
use sluice_crds::Pipeline;
use sluice_tests::{Service as Child, free_port, kafka_bootstrap, kube_client, kubeconfig_path, unique, wait_for};

async fn produce(bootstrap: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for i in 0..n {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload("{}").partition((i % 8) as i32), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Commit the group's offsets to the end of every partition, as a runner that caught up would.
fn commit_to_end(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..8 {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_scale_with_lag_to_the_partition_count_and_to_zero() -> anyhow::Result<()> {
    let (Some(bootstrap), Some(path)) = (kafka_bootstrap(), kubeconfig_path()) else { return Ok(()) };
    let client = kube_client(&path).await?;
    sluice_tests::install_crd(&client).await?;
    let ns = sluice_tests::create_namespace(&client).await?;
    let topic = unique("scale");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    for r in admin.create_topics(&[NewTopic::new(&topic, 8, TopicReplication::Fixed(1))], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice-operator"));
    command.args(["run", "--namespace", &ns, "--listen", &format!("127.0.0.1:{port}")]).env("KUBECONFIG", &path);
    let op = tokio::task::spawn_blocking(move || Child::start(command, port, "/readyz")).await?;

    let poll = Duration::from_secs(1);
    let pipeline = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "lagged", "namespace": ns},
        "spec": {
            "kafka": {"bootstrapServers": bootstrap},
            "functions": [{
                "name": "work",
                "source": {"topic": topic, "startingPosition": "earliest"},
                "runtime": {"http": {"url": "http://work.example:8080/"}},
                "scaling": {"minReplicas": 0, "maxReplicas": 50, "targetLagPerReplica": 10, "activationLag": 1,
                            "scaleToZeroAfter": "4s", "scaleDownStabilization": "2s", "pollInterval": "1s"},
            }],
        },
    });
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    pipelines.patch("lagged", &PatchParams::apply("sluice-tests").force(), &Patch::Apply(&pipeline)).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = || {
        let d = deployments.clone();
        async move { anyhow::Ok(d.get_opt("lagged-fn-work").await?.and_then(|d| d.spec.replicas)) }
    };
    let at = |want: i32, what: &'static str, deadline: Duration| {
        let r = replicas;
        async move { wait_for(what, deadline, || async move { Ok(r().await?.filter(|n| *n == want).map(|_| ())) }).await }
    };
    // Idle from the start: to zero after scaleToZeroAfter.
    at(0, "an idle function at zero", Duration::from_secs(30)).await?;

    // A backlog: up to the partition count, at once, never above it.
    produce(&bootstrap, &topic, 200).await?;
    let start = Instant::now();
    let mut highest = 0;
    let reached = loop {
        let n = replicas().await?.unwrap_or(0);
        highest = highest.max(n);
        if n == 8 {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never reached 8 replicas (at {n})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(highest <= 8, "never above the 8 partitions: saw {highest}");
    assert!(
        reached <= 2 * poll + Duration::from_secs(1),
        "backlog → 8 replicas took {reached:?}, over two poll intervals"
    );
    eprintln!("REACTION backlog -> 8 replicas: {reached:?}");
    let status = wait_for("lag and the scale event in status", Duration::from_secs(60), || {
        let p = pipelines.clone();
        async move {
            let s = p.get("lagged").await?.status;
            Ok(s.and_then(|s| s.functions.into_iter().find(|f| f.last_scale.as_ref().is_some_and(|l| l.to == 8))))
        }
    })
    .await?;
    assert_eq!(status.partitions, Some(8));
    for _ in 0..10 {
        assert_eq!(replicas().await?, Some(8), "no flapping while the lag stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Caught up: back to zero after scaleToZeroAfter.
    let (b, g, t) = (bootstrap.clone(), format!("{ns}.lagged.work"), topic.clone());
    tokio::task::spawn_blocking(move || commit_to_end(&b, &g, &t)).await??;
    let caught_up = Instant::now();
    at(0, "back to zero", Duration::from_secs(30)).await?;
    let to_zero = caught_up.elapsed();
    // Idle time counts from the last reading that saw lag (as KEDA's cooldown counts from the
    // last active report): at most one poll, plus that reading's own time, before the commit.
    assert!(
        to_zero + poll + Duration::from_millis(500) >= Duration::from_secs(4),
        "not before scaleToZeroAfter: {to_zero:?}"
    );
    eprintln!("REACTION caught up -> zero: {to_zero:?} (scaleToZeroAfter 4s)");

    // New records: activation.
    produce(&bootstrap, &topic, 5).await?;
    let produced = Instant::now();
    wait_for("activation from zero", Duration::from_secs(30), || async move {
        Ok(replicas().await?.filter(|n| *n >= 1).map(|_| ()))
    })
    .await?;
    let activation = produced.elapsed();
    assert!(activation <= 2 * poll + Duration::from_secs(1), "zero → activation took {activation:?}");
    eprintln!("REACTION zero -> activation: {activation:?}");
    let status = tokio::task::spawn_blocking(move || op.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}
