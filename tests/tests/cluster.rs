//! End to end on a real single-node cluster (`tests/infra/cluster.sh`): the chart installed with
//! `helm`, the example Pipeline applied with `kubectl`, everything running as pods from the
//! images `images/build.sh` made, Kafka reached on the node's address. Each test owns its
//! namespace and topics; one runs at a time (the node has two cores).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
};
use serde_json::{Value, json};
use sluice_tests::{
    cluster::{Cluster, exclusive, measured},
    http, read_committed, repo_root, unique,
};

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).create()?)
}

async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let new: Vec<NewTopic<'_>> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    for r in admin(bootstrap)?.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    // Java's partitioner (murmur2), as Kafka Streams and ksqlDB clients use.
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).set("partitioner", "murmur2_random").create()?)
}

async fn send(p: &FutureProducer, topic: &str, key: &str, value: &Value) -> anyhow::Result<()> {
    let value = value.to_string();
    p.send(FutureRecord::to(topic).key(key).payload(&value), Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    Ok(())
}

/// `kubectl get pipeline NAME`'s Ready condition: (status, reason, message).
fn ready_condition(c: &Cluster, ns: &str, name: &str) -> Option<(String, String, String)> {
    let text = c.kubectl(&["-n", ns, "get", "pipeline", name, "-o", "json"]).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let cond = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
    Some((
        cond["status"].as_str()?.to_owned(),
        cond["reason"].as_str()?.to_owned(),
        cond["message"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Poll `check` (a blocking closure) every 250 ms until it gives `Some`, or fail.
fn until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn replicas(c: &Cluster, ns: &str, deployment: &str) -> Option<i32> {
    c.jsonpath(ns, &format!("deployment/{deployment}"), "{.spec.replicas}").ok()?.parse().ok()
}

fn ready_replicas(c: &Cluster, ns: &str, what: &str) -> i32 {
    c.jsonpath(ns, what, "{.status.readyReplicas}").ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Rows of a pull query through a port-forward: `None` while it does not answer 200.
fn pull(port: u16, sql: &str) -> Option<Vec<Value>> {
    let (status, body) = http(port, "POST", "/query", Some(&json!({"ksql": sql})))?;
    if status != 200 {
        return None;
    }
    let parsed: Value = serde_json::from_str(&body).ok()?;
    Some(parsed.as_array()?.iter().filter_map(|r| r.get("row").map(|x| x["columns"].clone())).collect())
}

/// Every container of the pods `kubectl get pods ARGS` lists that has restarted, with its last
/// state: a crash loop shows here even when the container happens to be ready right now.
fn restarted(c: &Cluster, ns: &str, selector: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["-n", ns, "get", "pods", "-o", "json"];
    args.extend_from_slice(selector);
    let v: Value = serde_json::from_str(&c.kubectl(&args)?)?;
    let mut out = Vec::new();
    for pod in v["items"].as_array().into_iter().flatten() {
        for s in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
            if s["restartCount"].as_i64().unwrap_or(0) > 0 {
                out.push(format!("{}/{}: {}", pod["metadata"]["name"], s["name"], s["lastState"]));
            }
        }
    }
    Ok(out)
}

/// The first pod of `selector` whose containers are all running and ready.
fn ready_pod(c: &Cluster, ns: &str, selector: &str, containers: usize) -> Option<Value> {
    let v: Value =
        serde_json::from_str(&c.kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]).ok()?).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .find(|p| {
            let statuses = p["status"]["containerStatuses"].as_array().map(Vec::as_slice).unwrap_or_default();
            p["metadata"]["deletionTimestamp"].is_null()
                && statuses.len() == containers
                && statuses.iter().all(|s| s["ready"] == true)
        })
        .cloned()
}

fn delete_namespace(c: &Cluster, ns: &str) {
    let _ = c.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_installs_the_operator_and_it_runs_as_a_non_root_pod() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    let ns = c.install_operator()?;
    let pods: Value = serde_json::from_str(&c.kubectl(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "json",
    ])?)?;
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "the operator pod is Ready: {}", pod["status"]);
    assert_eq!(pod["spec"]["serviceAccountName"], "sluice-operator");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], c.image.as_str());
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let uid = c.kubectl(&["-n", ns, "exec", name, "--", "id", "-u"])?;
    assert_eq!(uid.trim(), "65532");
    Ok(())
}

/// What `settle.py` decides for a trade (its rules, restated).
fn disposition(trade: &Value, known_user: bool) -> &'static str {
    let amount = trade["quantity"].as_i64().unwrap_or(0) * trade["price"].as_i64().unwrap_or(0);
    if !known_user {
        "Rejected"
    } else if trade["side"] == "SHORT" {
        "Flagged"
    } else if amount > 2_000_000 {
        "Pending"
    } else {
        "Completed"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_pipeline_runs_as_pods() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    c.install_operator()?;
    let ns = c.namespace("seed")?;
    // The example's own topic names: remove what an earlier run against this broker left.
    // The tables' sinks too: their default topics are the tables' names, which any earlier run
    // of the example on this broker wrote (the processor reads a table's sink back to serve
    // pull queries, so old counts would show).
    let example_topics = [
        "stocktrade",
        "users",
        "user_trades",
        "trade-settlements",
        "user_trades.dlq",
        "COMPLETED_PER_MINUTE",
        "PENDING_PER_MINUTE",
        "FLAGGED_PER_MINUTE",
        "REJECTED_PER_MINUTE",
    ];
    let _ = admin(&c.bootstrap)?.delete_topics(&example_topics, &AdminOptions::new()).await;
    until("the example's topics gone", Duration::from_secs(60), || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.bootstrap).create().ok()?;
        let md = consumer.fetch_metadata(None, Duration::from_secs(10)).ok()?;
        (!md.topics().iter().any(|t| example_topics.contains(&t.name()))).then_some(())
    })?;

    // The example file as it is, with the two settings a user changes through an overlay.
    let overlay = std::env::temp_dir().join(unique("overlay"));
    std::fs::create_dir_all(&overlay)?;
    std::fs::copy(repo_root().join("examples/stocktrade/pipeline.yaml"), overlay.join("pipeline.yaml"))?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "namespace: {ns}\nresources: [pipeline.yaml]\npatches:\n- target: {{group: sluice.dev, kind: Pipeline, name: trades}}\n  patch: |\n    - {{op: replace, path: /spec/kafka/bootstrapServers, value: \"{}\"}}\n    - {{op: replace, path: /spec/functions/0/runtime/lambda/image, value: \"{}\"}}\n",
            c.bootstrap, c.settle_image
        ),
    )?;
    let applied = Instant::now();
    c.kubectl(&["apply", "-k", &overlay.to_string_lossy()])?;

    // No source topic yet: a condition names them, nothing crash-loops.
    let (_, reason, message) = until("Ready=False SourceTopicMissing", Duration::from_secs(90), || {
        ready_condition(&c, &ns, "trades").filter(|(s, r, _)| s == "False" && r == "SourceTopicMissing")
    })?;
    assert!(message.contains("'stocktrade'") && message.contains("'users'"), "{reason}: {message}");
    create_topics(&c.bootstrap, &[("stocktrade", 4), ("users", 4)]).await?;

    // The Pipeline starts on its own: the processor Running with a bound volume.
    until("the processor Ready", Duration::from_secs(180), || {
        (ready_replicas(&c, &ns, "statefulset/trades-processor") == 1).then_some(())
    })?;
    measured(&format!(
        "seed: kubectl apply → processor ready (topics created meanwhile): {:.1}s",
        applied.elapsed().as_secs_f64()
    ));
    assert_eq!(c.jsonpath(&ns, "pvc/state-trades-processor-0", "{.status.phase}")?, "Bound");
    // The function's output topic was created by the processor, with its source's partitions.
    let md = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.bootstrap).create()?;
        let md = consumer.fetch_metadata(Some("trade-settlements"), Duration::from_secs(10))?;
        md.topics().first().map_or(0, |t| t.partitions().len())
    };
    assert_eq!(md, 4, "trade-settlements: the partitions of user_trades");

    // The data, as a user makes it (README): `sluice datagen`'s users first (a trade finds its
    // user only if the user came first), then its trades; and some trades of a user who never
    // registered, to be Rejected.
    let sluice = sluice_tests::workspace_binary("sluice");
    for (quickstart, count) in [("users", 9), ("stocktrade", 300)] {
        let out = std::process::Command::new(&sluice)
            .args(["datagen", "--quickstart", quickstart, "--topic", quickstart, "--count", &count.to_string()])
            .args(["--bootstrap-servers", &c.bootstrap])
            .output()?;
        anyhow::ensure!(out.status.success(), "sluice datagen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let p = producer(&c.bootstrap)?;
    for i in 0..30 {
        let trade = json!({"side": "BUY", "quantity": i + 1, "symbol": "ZVV", "price": 10, "account": "ABC123",
                           "userid": "User_10"});
        send(&p, "stocktrade", "ZVV", &trade).await?;
    }
    p.flush(Duration::from_secs(10))?;
    // The truth: every trade read back, its disposition by the handler's rules.
    let trades = 330;
    let bootstrap = c.bootstrap.clone();
    let inputs =
        tokio::task::spawn_blocking(move || read_committed(&bootstrap, "stocktrade", trades, Duration::from_secs(60)))
            .await?;
    assert_eq!(inputs.len(), trades);
    let mut want: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for m in &inputs {
        let trade: Value = serde_json::from_slice(m.value.as_deref().unwrap_or_default())?;
        let user = trade["userid"].as_str().unwrap_or_default();
        let known = (1..=9).any(|i| user == format!("User_{i}"));
        *want
            .entry((trade["symbol"].as_str().unwrap_or_default().to_owned(), disposition(&trade, known)))
            .or_default() += 1;
    }

    // The function scales up on the join's output; its pod runs the runner and the function.
    let pod = until("a settle pod with both containers ready", Duration::from_secs(180), || {
        ready_pod(&c, &ns, "sluice.dev/function=settle", 2)
    })?;
    let names: BTreeSet<&str> =
        pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["function", "runner"]));

    // The per-minute counts through the processor's client Service equal the truth.
    let mut forward = c.port_forward(&ns, "svc/trades-processor", 8088)?;
    let tables = [
        ("COMPLETED_PER_MINUTE", "NUM_COMPLETED", "Completed"),
        ("PENDING_PER_MINUTE", "NUM_PENDING", "Pending"),
        ("FLAGGED_PER_MINUTE", "NUM_FLAGGED", "Flagged"),
        ("REJECTED_PER_MINUTE", "NUM_REJECTED", "Rejected"),
    ];
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if !forward.alive() {
            match c.port_forward(&ns, "svc/trades-processor", 8088) {
                Ok(f) => forward = f,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        got.clear();
        for (table, column, d) in tables {
            // `sluice query`, as the README has a user read them.
            let out = std::process::Command::new(&sluice)
                .args(["query", "--server", &format!("http://127.0.0.1:{}", forward.port), "--output", "json"])
                .arg(format!("SELECT * FROM {table};"))
                .output()?;
            let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for row in rows {
                let symbol = row["SYMBOL"].as_str().unwrap_or_default().to_owned();
                let n = row[column].as_i64().unwrap_or(0);
                *got.entry((symbol, d)).or_insert(0) += n;
            }
        }
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(got, want, "per-minute counts per symbol and disposition, summed over windows");
    measured(&format!(
        "seed: {trades} trades counted through the function, {:.1}s after kubectl apply",
        applied.elapsed().as_secs_f64()
    ));

    // `kubectl get pl` shows the phase, the lag and the replicas.
    // Lag 0 once all is done: the function's source is written in transactions, whose markers
    // a caught-up runner commits past.
    let line = until("kubectl get pl: Running with lag 0", Duration::from_secs(120), || {
        let out = c.kubectl(&["-n", &ns, "get", "pl"]).ok()?;
        let line = out.lines().nth(1)?.to_owned();
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&"Running") && cols.get(2) == Some(&"0")).then_some(line)
    })?;
    assert!(line.contains("processor 1/1, functions"), "{line}");

    // The data plane runs the image the chart was given, as the chart said to pull it.
    for (what, container) in [("statefulset/trades-processor", 0), ("deployment/trades-fn-settle", 0)] {
        let image = c.jsonpath(&ns, what, &format!("{{.spec.template.spec.containers[{container}].image}}"))?;
        assert_eq!(image, c.image, "{what}");
        let policy =
            c.jsonpath(&ns, what, &format!("{{.spec.template.spec.containers[{container}].imagePullPolicy}}"))?;
        assert_eq!(policy, "Never", "{what}");
    }
    // The topics the Pipeline writes were made with its sources' partitions: the function's
    // output and dead-letter topics (by the runner), the tables' sinks (by the processor).
    {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.bootstrap).create()?;
        for topic in ["user_trades", "user_trades.dlq", "COMPLETED_PER_MINUTE", "REJECTED_PER_MINUTE"] {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            assert_eq!(n, 4, "{topic}: the partitions of its sources");
        }
    }

    // Every data-plane container: non-root, read-only root, probes passing (ready), never
    // restarted. A settle pod that is up now (the autoscaler may have replaced the first one).
    let pod = until("a settle pod with both containers ready", Duration::from_secs(120), || {
        ready_pod(&c, &ns, "sluice.dev/function=settle", 2)
    })?;
    let restarts = restarted(&c, &ns, &[])?;
    assert!(restarts.is_empty(), "containers restarted: {restarts:#?}");
    for pod in ["trades-processor-0", pod["metadata"]["name"].as_str().unwrap_or_default()] {
        let v: Value = serde_json::from_str(&c.kubectl(&["-n", &ns, "get", "pod", pod, "-o", "json"])?)?;
        assert_eq!(v["spec"]["securityContext"]["runAsNonRoot"], true, "{pod}");
        assert_eq!(v["spec"]["automountServiceAccountToken"], false, "{pod}");
        for container in v["spec"]["containers"].as_array().into_iter().flatten() {
            let name = container["name"].as_str().unwrap_or_default();
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{pod}/{name}");
            let uid = c.kubectl(&["-n", &ns, "exec", pod, "-c", name, "--", "id", "-u"])?;
            assert_eq!(uid.trim(), "65532", "{pod}/{name}");
            let written = c.kubectl(&["-n", &ns, "exec", pod, "-c", name, "--", "touch", "/usr/x"]);
            assert!(written.is_err(), "{pod}/{name}: the root filesystem is writable");
        }
        for s in v["status"]["containerStatuses"].as_array().into_iter().flatten() {
            assert_eq!(s["ready"], true, "{pod}: {s}");
        }
    }
    drop(forward);
    delete_namespace(&c, &ns);
    std::fs::remove_dir_all(&overlay).ok();
    Ok(())
}

/// A Pipeline of one function, the example's settle image on its own topics.
fn function_pipeline(c: &Cluster, ns: &str, name: &str, input: &str, output: &str, scaling: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Pipeline
metadata: {{name: {name}, namespace: {ns}}}
spec:
  kafka: {{bootstrapServers: \"{}\"}}
  functions:
  - name: settle
    source: {{topic: {input}, startingPosition: earliest}}
    batch: {{maxRecords: 50, maxWait: 200ms}}
    runtime: {{lambda: {{image: \"{}\", timeout: 30s}}}}
    output: {{topic: {output}}}
    delivery: exactlyOnce
    scaling: {scaling}
",
        c.bootstrap, c.settle_image
    )
}

/// Consume `topic` from the start into `into` until `stop` (every record's value as JSON).
fn collect(
    bootstrap: String,
    topic: String,
    into: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Value)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use rdkafka::{
        Message,
        consumer::{BaseConsumer, Consumer},
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique("collect"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v = m.payload().and_then(|p| serde_json::from_slice(p).ok()).unwrap_or(Value::Null);
            into.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), v));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_scales_on_lag_with_real_pods_up_to_its_partitions_and_down_to_zero() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    c.install_operator()?;
    let ns = c.namespace("scale")?;
    let run = unique("scale");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&c.bootstrap, &[(&input, 4)]).await?;
    let pipeline = function_pipeline(
        &c,
        &ns,
        "scale",
        &input,
        &output,
        "{minReplicas: 0, maxReplicas: 8, targetLagPerReplica: 50, pollInterval: 1s, scaleToZeroAfter: 15s}",
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &pipeline)?;
    let deployment = "scale-fn-settle";
    // At zero, and its first pod (the Deployment's default of one, before the autoscaler's
    // first decision) gone: from here every pod is one the backlog started.
    until("the function at zero pods with no lag", Duration::from_secs(90), || {
        let pods = c.kubectl(&["-n", &ns, "get", "pods", "-l", "sluice.dev/function=settle", "-o", "name"]).ok()?;
        (replicas(&c, &ns, deployment) == Some(0)
            && pods.trim().is_empty()
            && ready_replicas(&c, &ns, &format!("deployment/{deployment}")) == 0)
            .then_some(())
    })?;

    let outputs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = std::thread::spawn({
        let (b, t, o, s) = (c.bootstrap.clone(), output.clone(), outputs.clone(), stop.clone());
        move || collect(b, t, o, s)
    });

    // A backlog: the Deployment goes up to the partition count, never above, and drains it.
    let p = producer(&c.bootstrap)?;
    let n = 10_000usize;
    // The whole backlog at once (sends in flight together), so the clock starts with the lag.
    let values: Vec<(String, String)> = (0..n)
        .map(|i| (format!("k{i}"), json!({"id": i, "QUANTITY": 1, "PRICE": 1, "REGIONID": "R"}).to_string()))
        .collect();
    let mut deliveries = Vec::new();
    for (k, v) in &values {
        deliveries.push(p.send_result(FutureRecord::to(&input).key(k).payload(v)).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    let produced = Instant::now();
    let mut most = 0;
    let mut members = BTreeSet::new();
    let mut scaled_at = None;
    let mut first_ready = None;
    let mut first_output = None;
    let drained = loop {
        let r = replicas(&c, &ns, deployment).unwrap_or(0);
        most = most.max(r);
        if r > 0 && scaled_at.is_none() {
            scaled_at = Some(produced.elapsed());
        }
        if first_ready.is_none() && ready_replicas(&c, &ns, &format!("deployment/{deployment}")) > 0 {
            first_ready = Some(produced.elapsed());
        }
        // Which pods are in the function's group, draining the backlog (by their addresses).
        members.extend(group_hosts(&c.bootstrap, &format!("{ns}.scale.settle")));
        let got = outputs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if first_output.is_none() {
            first_output = got.first().map(|(at, _)| at.duration_since(produced));
        }
        if got.len() >= n {
            break produced.elapsed();
        }
        anyhow::ensure!(
            produced.elapsed() < Duration::from_secs(300),
            "the backlog never drained: {} of {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(most, 4, "scaled to the partition count (4), never above (maxReplicas 8)");
    assert!(members.len() >= 2, "more than one pod consumed the backlog: the group's members were at {members:?}");
    measured(&format!(
        "autoscale: backlog of {n} at zero → Deployment scaled {:.2}s, first pod ready {:.2}s, first output {:.2}s, drained {:.1}s by {} pods",
        scaled_at.unwrap_or_default().as_secs_f64(),
        first_ready.unwrap_or_default().as_secs_f64(),
        first_output.unwrap_or_default().as_secs_f64(),
        drained.as_secs_f64(),
        members.len()
    ));

    // Idle: down to zero pods after scaleToZeroAfter, not before.
    let idle = Instant::now();
    until("zero replicas and no pods", Duration::from_secs(120), || {
        let pods = c.kubectl(&["-n", &ns, "get", "pods", "-l", "sluice.dev/function=settle", "-o", "name"]).ok()?;
        (replicas(&c, &ns, deployment) == Some(0) && pods.trim().is_empty()).then_some(())
    })?;
    let to_zero = idle.elapsed();
    // The idle clock starts at the autoscaler's last reading with lag, at most one pollInterval
    // (1 s) before the last output.
    assert!(
        to_zero >= Duration::from_secs(13),
        "at zero {to_zero:?} after the last output, before scaleToZeroAfter (15s)"
    );
    measured(&format!("autoscale: last output → zero pods {:.1}s (scaleToZeroAfter 15s)", to_zero.as_secs_f64()));

    // New records at zero start a pod, which processes them.
    let before = outputs.lock().unwrap_or_else(|p| p.into_inner()).len();
    for i in n..n + 5 {
        send(&p, &input, &format!("k{i}"), &json!({"id": i, "QUANTITY": 1, "PRICE": 1, "REGIONID": "R"})).await?;
    }
    p.flush(Duration::from_secs(10))?;
    let sent = Instant::now();
    let woke = until("the first output after zero", Duration::from_secs(180), || {
        let got = outputs.lock().unwrap_or_else(|p| p.into_inner());
        got.get(before).map(|(at, _)| at.duration_since(sent))
    })?;
    measured(&format!("autoscale: 5 records at zero → first output {:.2}s", woke.as_secs_f64()));
    until("all 5", Duration::from_secs(60), || {
        (outputs.lock().unwrap_or_else(|p| p.into_inner()).len() >= before + 5).then_some(())
    })?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = collector.join();
    // Exactly once: one settlement per input, even with four pods sharing the group.
    let settled = read_committed(&c.bootstrap, &output, n + 5, Duration::from_secs(60));
    assert_eq!(settled.len(), n + 5, "one output per input");
    delete_namespace(&c, &ns);
    Ok(())
}

/// The hosts of the members of consumer group `group` (none when it has no members or cannot be
/// read).
fn group_hosts(bootstrap: &str, group: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(consumer) = ClientConfig::new().set("bootstrap.servers", bootstrap).create::<BaseConsumer>() else {
        return Vec::new();
    };
    let Ok(list) = consumer.fetch_group_list(Some(group), Duration::from_secs(5)) else { return Vec::new() };
    list.groups().iter().flat_map(|g| g.members().iter().map(|m| m.client_host().to_owned())).collect()
}

/// Totals of `TOTALS` per symbol, by key lookups (each routed to the replica that owns it).
fn totals(port: u16, symbols: &[String]) -> Option<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for s in symbols {
        let rows = pull(port, &format!("SELECT symbol, n FROM TOTALS WHERE symbol = '{s}';"))?;
        if let Some(n) = rows.first().and_then(|r| r[1].as_i64()) {
            out.insert(s.clone(), n);
        }
    }
    Some(out)
}

fn processor_pipeline(
    c: &Cluster,
    ns: &str,
    input: &str,
    output: &str,
    replicas: i32,
    function: Option<&str>,
) -> String {
    let mut text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: Pipeline
metadata: {{name: totals, namespace: {ns}}}
spec:
  kafka: {{bootstrapServers: \"{}\"}}
  processor:
    replicas: {replicas}
    storage: {{size: 256Mi}}
    sql: |
      CREATE STREAM S (k VARCHAR KEY, id BIGINT, symbol VARCHAR) WITH (kafka_topic = '{input}', value_format = 'json');
      CREATE TABLE TOTALS WITH (kafka_topic = '{output}') AS SELECT symbol, COUNT(*) AS n FROM S GROUP BY symbol;
",
        c.bootstrap
    );
    if let Some(out) = function {
        text.push_str(&format!(
            "  functions:
  - name: settle
    source: {{topic: {input}, startingPosition: earliest}}
    batch: {{maxRecords: 50, maxWait: 200ms}}
    runtime: {{lambda: {{image: \"{}\", timeout: 30s}}}}
    output: {{topic: {out}}}
    delivery: exactlyOnce
    scaling: {{minReplicas: 1, maxReplicas: 1}}
",
            c.settle_image
        ));
    }
    text
}

struct Feed {
    producer: FutureProducer,
    topic: String,
    symbols: Vec<String>,
    truth: BTreeMap<String, i64>,
    sent: i64,
}

impl Feed {
    async fn send(&mut self, n: i64) -> anyhow::Result<()> {
        for _ in 0..n {
            let symbol = self.symbols[(self.sent % self.symbols.len() as i64) as usize].clone();
            *self.truth.entry(symbol.clone()).or_default() += 1;
            send(
                &self.producer,
                &self.topic,
                &format!("k{}", self.sent % 13),
                &json!({"id": self.sent, "symbol": symbol}),
            )
            .await?;
            self.sent += 1;
        }
        self.producer.flush(Duration::from_secs(10))?;
        Ok(())
    }
}

fn wait_for_totals(
    c: &Cluster,
    ns: &str,
    feed: &Feed,
    forward: &mut sluice_tests::cluster::PortForward,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = None;
    loop {
        if !forward.alive() {
            // Right after a processor pod went away the Service may have no endpoint yet.
            match c.port_forward(ns, "svc/totals-processor", 8088) {
                Ok(f) => *forward = f,
                Err(e) => {
                    anyhow::ensure!(Instant::now() < deadline, "no port-forward to the processor: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let got = totals(forward.port, &feed.symbols);
        if got.as_ref() == Some(&feed.truth) {
            return Ok(());
        }
        last = got.or(last);
        anyhow::ensure!(Instant::now() < deadline, "totals never reached the truth: {last:?} != {:?}", feed.truth);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Under exactly-once every count of every symbol was committed once: 1, 2, …, n.
fn assert_counted_once(bootstrap: &str, output: &str, truth: &BTreeMap<String, i64>) {
    let total: i64 = truth.values().sum();
    let records = read_committed(bootstrap, output, total as usize, Duration::from_secs(60));
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in &records {
        let key = String::from_utf8_lossy(m.key.as_deref().unwrap_or_default()).into_owned();
        let v: Value = m.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or(Value::Null);
        seen.entry(key).or_default().push(v["N"].as_i64().unwrap_or(-1));
    }
    for (symbol, n) in truth {
        let mut got = seen.get(symbol).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, (1..=*n).collect::<Vec<_>>(), "{symbol}: the committed counts are not 1..={n}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_processor_rescales_from_one_to_two_and_back_with_nothing_lost_or_doubled() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    c.install_operator()?;
    let ns = c.namespace("rescale")?;
    let run = unique("rescale");
    let (input, output) = (format!("{run}-in"), format!("{run}-totals"));
    create_topics(&c.bootstrap, &[(&input, 4)]).await?;
    let mut feed = Feed {
        producer: producer(&c.bootstrap)?,
        topic: input.clone(),
        symbols: (0..7).map(|i| format!("S{i}")).collect(),
        truth: BTreeMap::new(),
        sent: 0,
    };
    feed.send(300).await?;
    c.kubectl_stdin(&["apply", "-f", "-"], &processor_pipeline(&c, &ns, &input, &output, 1, None))?;
    until("one processor ready", Duration::from_secs(180), || {
        (ready_replicas(&c, &ns, "statefulset/totals-processor") == 1).then_some(())
    })?;
    let mut forward = c.port_forward(&ns, "svc/totals-processor", 8088)?;
    wait_for_totals(&c, &ns, &feed, &mut forward)?;

    for (from, to) in [(1, 2), (2, 1)] {
        let patched = Instant::now();
        c.kubectl(&[
            "-n",
            &ns,
            "patch",
            "pipeline",
            "totals",
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\": {{\"processor\": {{\"replicas\": {to}}}}}}}"),
        ])?;
        // Stop-the-world: all pods go, then the new count starts and restores.
        until("the old pods gone", Duration::from_secs(120), || {
            (ready_replicas(&c, &ns, "statefulset/totals-processor") == 0).then_some(())
        })?;
        let down = patched.elapsed();
        until(&format!("{to} processors ready"), Duration::from_secs(240), || {
            let spec: i32 = c.jsonpath(&ns, "statefulset/totals-processor", "{.spec.replicas}").ok()?.parse().ok()?;
            (spec == to && ready_replicas(&c, &ns, "statefulset/totals-processor") == to).then_some(())
        })?;
        let up = patched.elapsed();
        wait_for_totals(&c, &ns, &feed, &mut forward)?;
        measured(&format!(
            "rescale {from}→{to}: downtime (no processor ready) {:.1}s, from {:.1}s to {:.1}s after the patch; totals right {:.1}s after it",
            (up - down).as_secs_f64(),
            down.as_secs_f64(),
            up.as_secs_f64(),
            patched.elapsed().as_secs_f64()
        ));
        feed.send(200).await?;
        wait_for_totals(&c, &ns, &feed, &mut forward)?;
    }
    assert_counted_once(&c.bootstrap, &output, &feed.truth);
    drop(forward);
    delete_namespace(&c, &ns);
    Ok(())
}

fn pod_uids(c: &Cluster, ns: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(c.jsonpath(ns, "pods", "{.items[*].metadata.uid}")?.split_whitespace().map(str::to_owned).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_and_the_operator_die_mid_stream_and_nothing_is_lost_or_doubled() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    let operator_ns = c.install_operator()?;
    let ns = c.namespace("faults")?;
    let run = unique("faults");
    let (input, output, settled) = (format!("{run}-in"), format!("{run}-totals"), format!("{run}-settled"));
    create_topics(&c.bootstrap, &[(&input, 4)]).await?;
    let mut feed = Feed {
        producer: producer(&c.bootstrap)?,
        topic: input.clone(),
        symbols: (0..5).map(|i| format!("S{i}")).collect(),
        truth: BTreeMap::new(),
        sent: 0,
    };
    c.kubectl_stdin(&["apply", "-f", "-"], &processor_pipeline(&c, &ns, &input, &output, 1, Some(&settled)))?;
    until("the processor and the runner ready", Duration::from_secs(180), || {
        (ready_replicas(&c, &ns, "statefulset/totals-processor") == 1
            && ready_replicas(&c, &ns, "deployment/totals-fn-settle") == 1)
            .then_some(())
    })?;
    let mut forward = c.port_forward(&ns, "svc/totals-processor", 8088)?;

    // The processor pod deleted while records arrive: it comes back, restores, goes on.
    let batch = tokio::spawn({
        let (p, t) = (feed.producer.clone(), feed.topic.clone());
        async move {
            for i in 0..400 {
                send(&p, &t, &format!("k{}", i % 13), &json!({"id": i, "symbol": format!("S{}", i % 5)})).await?;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            p.flush(Duration::from_secs(10))?;
            anyhow::Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let deleted = Instant::now();
    c.kubectl(&["-n", &ns, "delete", "pod", "totals-processor-0", "--wait=false"])?;
    batch.await??;
    for i in 0..400i64 {
        *feed.truth.entry(format!("S{}", i % 5)).or_default() += 1;
    }
    feed.sent = 400;
    wait_for_totals(&c, &ns, &feed, &mut forward)?;
    measured(&format!("faults: processor pod deleted → totals right again {:.1}s", deleted.elapsed().as_secs_f64()));

    // A runner pod deleted while it works: its replacement takes over, nothing lost.
    let runner = c.jsonpath(&ns, "pods -l sluice.dev/function=settle", "{.items[0].metadata.name}")?;
    let batch = tokio::spawn({
        let (p, t) = (feed.producer.clone(), feed.topic.clone());
        async move {
            for i in 400..800 {
                send(&p, &t, &format!("k{}", i % 13), &json!({"id": i, "symbol": format!("S{}", i % 5)})).await?;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            p.flush(Duration::from_secs(10))?;
            anyhow::Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kubectl(&["-n", &ns, "delete", "pod", &runner, "--wait=false"])?;
    batch.await??;
    for i in 400..800i64 {
        *feed.truth.entry(format!("S{}", i % 5)).or_default() += 1;
    }
    feed.sent = 800;
    let outputs = read_committed(&c.bootstrap, &settled, 800, Duration::from_secs(240));
    assert_eq!(outputs.len(), 800, "one settlement per input, exactly once, across a deleted runner");
    wait_for_totals(&c, &ns, &feed, &mut forward)?;

    // The operator restarted: no duplicate children, no pod replaced, status kept.
    let before_pods = pod_uids(&c, &ns)?;
    let before_status = c.jsonpath(&ns, "pipeline/totals", "{.status.conditions}")?;
    let operator =
        c.jsonpath(operator_ns, "pods -l app.kubernetes.io/component=operator", "{.items[0].metadata.name}")?;
    c.kubectl(&["-n", operator_ns, "delete", "pod", &operator])?;
    until("a new operator ready", Duration::from_secs(120), || {
        let names = c
            .jsonpath(operator_ns, "pods -l app.kubernetes.io/component=operator", "{.items[*].metadata.name}")
            .ok()?;
        (!names.contains(&operator) && ready_replicas(&c, operator_ns, "deployment/sluice-operator") == 1).then_some(())
    })?;
    // Give it reconciles (it requeues within a minute), then compare.
    feed.send(100).await?;
    wait_for_totals(&c, &ns, &feed, &mut forward)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(c.kubectl(&["-n", &ns, "get", "statefulsets", "-o", "name"])?.lines().count(), 1);
    assert_eq!(c.kubectl(&["-n", &ns, "get", "deployments", "-o", "name"])?.lines().count(), 1);
    assert_eq!(c.kubectl(&["-n", &ns, "get", "replicasets", "-o", "name"])?.lines().count(), 1, "no new template");
    assert_eq!(pod_uids(&c, &ns)?, before_pods, "no pod replaced by the operator's restart");
    assert_eq!(c.jsonpath(&ns, "pipeline/totals", "{.status.conditions}")?, before_status, "status kept");
    assert_counted_once(&c.bootstrap, &output, &feed.truth);
    drop(forward);
    delete_namespace(&c, &ns);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_credentials_reach_the_pods_through_the_secret_only() -> anyhow::Result<()> {
    let Some(c) = Cluster::from_env() else { return Ok(()) };
    let _one = exclusive().await;
    c.install_operator()?;
    let ns = c.namespace("sasl")?;
    let run = unique("sasl");
    let password = format!("pw-{run}");
    c.kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "kafka-user",
        "--from-literal=username=alice",
        &format!("--from-literal=password={password}"),
    ])?;
    let pipeline = function_pipeline(&c, &ns, "sasl", &format!("{run}-in"), &format!("{run}-out"), "{minReplicas: 1, maxReplicas: 1}")
        .replace(
            &format!("kafka: {{bootstrapServers: \"{}\"}}", c.bootstrap),
            &format!("kafka: {{bootstrapServers: \"{}\", securityProtocol: SASL_PLAINTEXT, sasl: {{mechanism: SCRAM-SHA-512, secretRef: {{name: kafka-user}}}}}}", c.bootstrap),
        );
    c.kubectl_stdin(&["apply", "-f", "-"], &pipeline)?;
    // The runner starts (and waits: this test broker has no SASL listener).
    let pod = until("a running runner", Duration::from_secs(120), || {
        let v: Value = serde_json::from_str(
            &c.kubectl(&["-n", &ns, "get", "pods", "-l", "sluice.dev/function=settle", "-o", "json"]).ok()?,
        )
        .ok()?;
        v["items"]
            .as_array()?
            .iter()
            .find(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == "runner" && s["state"]["running"].is_object()))
            })
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
    })?;
    // It waits alive: its probes pass while it cannot reach the broker (no crash loop). The
    // liveness probe runs every 10 s: after 12 s it has run at least once.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let unhealthy = c.kubectl(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason=Unhealthy"),
        "-o",
        "custom-columns=MESSAGE:.message",
        "--no-headers",
    ])?;
    // (Its readiness probe fails, as it should: it has not joined its group.)
    let liveness: Vec<&str> = unhealthy.lines().filter(|l| l.contains("Liveness")).collect();
    assert!(liveness.is_empty(), "failed liveness probes: {liveness:?}");
    let restarts = restarted(&c, &ns, &["-l", "sluice.dev/function=settle"])?;
    assert!(restarts.is_empty(), "containers restarted: {restarts:#?}");
    let env = c.kubectl(&["-n", &ns, "exec", &pod, "-c", "runner", "--", "printenv", "SLUICE_KAFKA_SASL_PASSWORD"])?;
    assert_eq!(env.trim(), password, "the runner has the credentials");
    let function_env = c.kubectl(&["-n", &ns, "exec", &pod, "-c", "function", "--", "printenv"])?;
    assert!(!function_env.contains(&password), "the function container gets no Kafka credentials");
    let spec: Value = serde_json::from_str(&c.kubectl(&["-n", &ns, "get", "pod", &pod, "-o", "json"])?)?;
    let runner = spec["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "runner")
        .cloned()
        .unwrap_or_default();
    let var = runner["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "SLUICE_KAFKA_SASL_PASSWORD")
        .cloned()
        .unwrap_or_default();
    assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "kafka-user", "{var}");
    for cm in c.kubectl(&["-n", &ns, "get", "configmaps", "-o", "json"])?.lines() {
        assert!(!cm.contains(&password), "a ConfigMap holds the password");
    }
    delete_namespace(&c, &ns);
    Ok(())
}
