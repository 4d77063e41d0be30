//! The runner in HTTP mode against the real broker: every record delivered with per-key order
//! and offsets committed; a poison record bisected, retried and dead-lettered; timeouts and
//! malformed responses retried; SIGKILLs under exactly-once with no duplicate; two runners in
//! one group handing partitions over.

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::*;
use serde_json::{Value, json};

fn http_function(name: &str, topic: &str, output: &str, port: u16, extra: Value) -> Value {
    let mut f = json!({
        "name": name,
        "source": {"topic": topic, "startingPosition": "earliest"},
        "batch": {"maxRecords": 10, "maxWait": "50ms"},
        "runtime": {"http": {"url": format!("http://127.0.0.1:{port}/"), "timeout": "5s", "maxConcurrency": 4}},
        "output": {"topic": output},
    });
    if let (Some(f), Some(extra)) = (f.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            f.insert(k.clone(), v.clone());
        }
    }
    f
}

/// A runner of an HTTP function that retries twice (quickly), bisects and dead-letters.
async fn start_dead_lettering(
    bootstrap: &str,
    run: &str,
    name: &str,
    (input, output, dlq): (&str, &str, &str),
    port: u16,
) -> anyhow::Result<Runner> {
    let function = http_function(
        name,
        input,
        output,
        port,
        json!({"onFailure": {"maxRetries": 2, "backoff": {"initial": "10ms", "max": "50ms"}, "bisectBatch": true, "deadLetterTopic": dlq}}),
    );
    let (config, listen) = runner_config(bootstrap, run, function);
    Ok(tokio::task::spawn_blocking(move || Runner::start(&config, listen)).await?)
}

async fn wait_lag_zero(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<()> {
    sluice_tests::wait_for("the group's committed offsets to reach the end", Duration::from_secs(60), || {
        let (b, g, t) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
        async move { Ok((tokio::task::spawn_blocking(move || group_lag(&b, &g, &t)).await?? == 0).then_some(())) }
    })
    .await
}

async fn read(bootstrap: &str, topic: &str, want: usize) -> anyhow::Result<Vec<Consumed>> {
    let (b, t) = (bootstrap.to_owned(), topic.to_owned());
    Ok(tokio::task::spawn_blocking(move || read_committed(&b, &t, want, Duration::from_secs(90))).await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_is_delivered_in_key_order_and_committed() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("http");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 4), (&output, 4)]).await?;
    let invocations = Arc::new(AtomicUsize::new(0));
    let seen = invocations.clone();
    let port = serve_function(Arc::new(move |event: &Value| {
        seen.fetch_add(1, Ordering::SeqCst);
        assert_eq!(event["eventSource"], "SelfManagedKafka");
        (200, echo(event).to_string())
    }))
    .await?;
    let n = 400;
    produce(&bootstrap, &input, &(0..n).map(|i| Input::numbered(i, 20)).collect::<Vec<_>>()).await?;
    let (config, listen) = runner_config(&bootstrap, &run, http_function("echo", &input, &output, port, json!({})));
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, listen)).await?;

    let outputs = read(&bootstrap, &output, n).await?;
    check_delivery(&outputs, n, true);
    wait_lag_zero(&bootstrap, &format!("default.{run}.echo"), &input).await?;
    assert!(invocations.load(Ordering::SeqCst) >= n / 10, "batches of at most 10 records");
    assert_eq!(runner.metric("sluice_function_runner_records_in_total"), n as f64);
    assert_eq!(runner.metric("sluice_function_runner_records_out_total"), n as f64);
    let status = tokio::task::spawn_blocking(move || runner.service.terminate()).await?;
    assert!(status.success(), "SIGTERM: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_is_bisected_retried_and_dead_lettered() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("poison");
    let (input, output, dlq) = (format!("{run}-in"), format!("{run}-out"), format!("{run}-dlq"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 1), (&dlq, 1)]).await?;
    let invocations = Arc::new(Mutex::new(Vec::<Vec<i64>>::new()));
    let log = invocations.clone();
    let port = serve_function(Arc::new(move |event: &Value| {
        let records = event_records(event);
        log.lock().unwrap().push(records.iter().map(|r| r.offset).collect());
        if records.iter().any(|r| r.value == b"poison") {
            return (500, "cannot handle this".into());
        }
        (200, echo(event).to_string())
    }))
    .await?;
    let mut inputs: Vec<Input> = (0..20).map(|i| Input::numbered(i, 3)).collect();
    inputs[7].value = b"poison".to_vec();
    inputs[7].headers = vec![("trace".into(), vec![1, 2, 200])];
    produce(&bootstrap, &input, &inputs).await?;
    let runner = start_dead_lettering(&bootstrap, &run, "p", (&input, &output, &dlq), port).await?;

    let dead = read(&bootstrap, &dlq, 1).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.value.as_deref(), Some(&b"poison"[..]));
    assert_eq!(d.key.as_deref(), Some(&b"k1"[..]));
    let header =
        |name: &str| d.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert!(header("sluice.error").is_some_and(|e| e.contains("HTTP 500")), "{:?}", d.headers);
    assert_eq!(header("sluice.attempts").as_deref(), Some("3"));
    assert_eq!(header("sluice.source.topic").as_deref(), Some(input.as_str()));
    assert_eq!(header("sluice.source.partition").as_deref(), Some("0"));
    assert_eq!(header("sluice.source.offset").as_deref(), Some("7"));
    assert_eq!(d.headers[0], ("trace".to_string(), vec![1, 2, 200]), "the original headers are kept");

    let outputs = read(&bootstrap, &output, 19).await?;
    let seqs: BTreeSet<i64> = echoed(&outputs).iter().map(|o| o.1).collect();
    assert_eq!(seqs, (0..20).filter(|s| *s != 7).collect::<BTreeSet<i64>>());
    wait_lag_zero(&bootstrap, &format!("default.{run}.p"), &input).await?;
    // Bisection: the poison record ends up invoked alone, three times (first try and two retries).
    let alone = invocations.lock().unwrap().iter().filter(|b| b.as_slice() == [7]).count();
    assert_eq!(alone, 3, "{:?}", invocations.lock().unwrap());
    assert_eq!(runner.metric("sluice_function_runner_dead_lettered_records_total"), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_malformed_responses_and_errors_are_retried() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("flaky");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 2)]).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let port = serve_function(Arc::new(move |event: &Value| {
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => std::thread::sleep(Duration::from_secs(3)), // past the 1 s timeout
            1 => return (200, "{\"records\": [{\"value\": 1}], \"batchItemFailures\": 7}".into()),
            2 => return (200, "{not json".into()),
            3 => return (503, "busy".into()),
            _ => {}
        }
        (200, echo(event).to_string())
    }))
    .await?;
    let n = 50;
    produce(&bootstrap, &input, &(0..n).map(|i| Input::numbered(i, 5)).collect::<Vec<_>>()).await?;
    let mut function = http_function(
        "f",
        &input,
        &output,
        port,
        json!({"onFailure": {"maxRetries": 10, "backoff": {"initial": "10ms", "max": "100ms"}}}),
    );
    function["runtime"]["http"]["timeout"] = json!("1s");
    function["runtime"]["http"]["maxConcurrency"] = json!(1);
    let (config, listen) = runner_config(&bootstrap, &run, function);
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, listen)).await?;
    let outputs = read(&bootstrap, &output, n).await?;
    // Nothing of a failed invocation was produced: each input exactly once.
    check_delivery(&outputs, n, true);
    wait_lag_zero(&bootstrap, &format!("default.{run}.f"), &input).await?;
    let text = http(runner.port, "GET", "/metrics", None).map(|(_, t)| t).unwrap_or_default();
    for outcome in ["timeout", "bad_response", "http_error", "ok"] {
        assert!(text.contains(&format!("outcome=\"{outcome}\"")), "no {outcome} invocation counted:\n{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_exactly_once_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("eos");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 2)]).await?;
    let port = serve_function(Arc::new(|event: &Value| {
        std::thread::sleep(Duration::from_millis(20));
        (200, echo(event).to_string())
    }))
    .await?;
    let n = 600;
    let function = http_function("f", &input, &output, port, json!({"delivery": "exactlyOnce"}));
    let (config, listen) = runner_config(&bootstrap, &run, function);
    let inputs: Vec<Input> = (0..n).map(|i| Input::numbered(i, 12)).collect();
    // Records arrive while the runner is killed and restarted.
    let producing = {
        let (b, t) = (bootstrap.clone(), input.clone());
        tokio::spawn(async move {
            for chunk in inputs.chunks(50) {
                produce(&b, &t, chunk).await?;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            anyhow::Ok(())
        })
    };
    for _ in 0..3 {
        let c = config.clone();
        let runner = tokio::task::spawn_blocking(move || Runner::start(&c, listen)).await?;
        sluice_tests::wait_for("some outputs before the kill", Duration::from_secs(60), || {
            let out = runner.metric("sluice_function_runner_records_out_total");
            async move { Ok((out >= 40.0).then_some(())) }
        })
        .await?;
        tokio::task::spawn_blocking(move || runner.service.kill()).await?;
    }
    producing.await??;
    let c = config.clone();
    let runner = tokio::task::spawn_blocking(move || Runner::start(&c, listen)).await?;
    let outputs = read(&bootstrap, &output, n).await?;
    check_delivery(&outputs, n, true);
    wait_lag_zero(&bootstrap, &format!("default.{run}.f"), &input).await?;
    assert!(runner.metric("sluice_function_runner_transactions_total") >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runners_share_the_group_and_a_stopping_one_hands_over() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("pair");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 4), (&output, 4)]).await?;
    let port = serve_function(Arc::new(|event: &Value| {
        std::thread::sleep(Duration::from_millis(60));
        (200, echo(event).to_string())
    }))
    .await?;
    let function = http_function("f", &input, &output, port, json!({}));
    let (a_config, a_port) = runner_config(&bootstrap, &run, function.clone());
    let (b_config, b_port) = runner_config(&bootstrap, &run, function);
    let a = tokio::task::spawn_blocking(move || Runner::start(&a_config, a_port)).await?;
    // Records keep arriving (20 every 100 ms) until both hand-overs are done, so that each one
    // happens mid-stream, with invocations in flight.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (b, t, done) = (bootstrap.clone(), input.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                produce(&b, &t, &(n..n + 20).map(|i| Input::numbered(i, 16)).collect::<Vec<_>>()).await?;
                n += 20;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(n)
        })
    };
    // The second runner joins while the first is mid-stream: the first hands two partitions
    // over with invocations in flight, which must finish and be committed before the release.
    sluice_tests::wait_for("the first runner to process records", Duration::from_secs(60), || {
        let x = a.metric("sluice_function_runner_records_in_total");
        async move { Ok((x > 0.0).then_some(())) }
    })
    .await?;
    let b = tokio::task::spawn_blocking(move || Runner::start(&b_config, b_port)).await?;
    sluice_tests::wait_for("both runners to process records", Duration::from_secs(60), || {
        let (x, y) =
            (a.metric("sluice_function_runner_records_in_total"), b.metric("sluice_function_runner_records_in_total"));
        async move { Ok((x > 0.0 && y > 0.0).then_some(())) }
    })
    .await?;
    // Stop one mid-stream: it finishes, commits and leaves; the other takes its partitions.
    let status = tokio::task::spawn_blocking(move || a.service.terminate()).await?;
    assert!(status.success(), "{status}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::SeqCst);
    let n = producing.await??;
    // Well inside the 45 s session timeout: the stopped runner left the group at once rather
    // than making the other wait for its session to expire.
    let (b_, t_) = (bootstrap.clone(), output.clone());
    let outputs = tokio::task::spawn_blocking(move || read_committed(&b_, &t_, n, Duration::from_secs(25))).await?;
    // The first runner finished, produced and committed what it had started before it let its
    // partitions go (both times), so nothing is repeated: each input exactly once.
    check_delivery(&outputs, n, true);
    wait_lag_zero(&bootstrap, &format!("default.{run}.f"), &input).await?;
    assert!(b.metric("sluice_function_runner_records_in_total") > 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_kafka_cannot_take_fail_their_batch_and_nothing_is_doubled() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("refused");
    let (input, output, dlq) = (format!("{run}-in"), format!("{run}-out"), format!("{run}-dlq"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 2), (&dlq, 1)]).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let port = serve_function(Arc::new(move |event: &Value| {
        let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
        let mut response = echo(event);
        let seqs: Vec<i64> = event_records(event)
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok()?["seq"].as_i64())
            .collect();
        let records = response["records"].as_array_mut().expect("records");
        if seqs.contains(&5) {
            // A partition the output topic does not have.
            records.push(json!({"partition": 99, "value": "lost?"}));
        }
        if seqs.contains(&11) {
            // More than the producer (and the topic) accepts.
            records.push(json!({"value": "x".repeat(1_500_000)}));
        }
        if first {
            // Outputs plus a failure naming a record that is not in the batch: malformed, so
            // none of these outputs may be produced.
            response["batchItemFailures"] =
                json!([{"itemIdentifier": {"partition": format!("{}-0", "nope"), "offset": 9999}}]);
        }
        (200, response.to_string())
    }))
    .await?;
    let n = 30;
    produce(&bootstrap, &input, &(0..n).map(|i| Input::numbered(i, 3)).collect::<Vec<_>>()).await?;
    let runner = start_dead_lettering(&bootstrap, &run, "r", (&input, &output, &dlq), port).await?;

    let dead = read(&bootstrap, &dlq, 2).await?;
    let mut errors: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            let header = |name: &str| {
                d.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            (header("sluice.source.offset").unwrap_or_default(), header("sluice.error").unwrap_or_default())
        })
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, "11");
    assert!(errors[0].1.contains("more than topic") && errors[0].1.contains("accepts"), "{errors:?}");
    assert_eq!(errors[1].0, "5");
    assert!(errors[1].1.contains("has no partition 99"), "{errors:?}");

    // Every other input came out exactly once: nothing of a refused or malformed response was
    // produced, and the partition did not stall behind the refused records.
    let outputs = read(&bootstrap, &output, n - 2).await?;
    let mut seqs: Vec<i64> = echoed(&outputs).iter().map(|o| o.1).collect();
    seqs.sort();
    assert_eq!(seqs, (0..n as i64).filter(|s| *s != 5 && *s != 11).collect::<Vec<i64>>());
    wait_lag_zero(&bootstrap, &format!("default.{run}.r"), &input).await?;
    assert!(calls.load(Ordering::SeqCst) > 3);
    drop(runner);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_starts_at_the_end_and_commits_it_at_once() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("latest");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 3)]).await?;
    // Records from before the function existed: `latest` skips them.
    produce(&bootstrap, &input, &(100..130).map(|i| Input::numbered(i, 5)).collect::<Vec<_>>()).await?;
    let port = serve_function(Arc::new(|event: &Value| (200, echo(event).to_string()))).await?;
    let mut function = http_function("l", &input, &output, port, json!({}));
    function["source"]["startingPosition"] = json!("latest");
    let (config, listen) = runner_config(&bootstrap, &run, function);
    let c = config.clone();
    let runner = tokio::task::spawn_blocking(move || Runner::start(&c, listen)).await?;
    // Ready means assigned: by then every partition has a commit at its end, before any record
    // arrived, so neither a restarted runner nor the autoscaler loses sight of what comes next.
    let group = format!("default.{run}.l");
    let (b, g, t) = (bootstrap.clone(), group.clone(), input.clone());
    let committed = tokio::task::spawn_blocking(move || committed_everywhere(&b, &g, &t)).await??;
    assert!(committed, "every partition has a committed starting position");
    // Stopped before a single record arrived (so it never committed anything itself), then
    // records arrive, then a new runner starts: it takes them from the committed starting
    // position instead of skipping them as a fresh `latest` would.
    let status = tokio::task::spawn_blocking(move || runner.service.terminate()).await?;
    assert!(status.success(), "{status}");
    let n = 40;
    produce(&bootstrap, &input, &(0..n).map(|i| Input::numbered(i, 5)).collect::<Vec<_>>()).await?;
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, listen)).await?;
    let outputs = read(&bootstrap, &output, n).await?;
    check_delivery(&outputs, n, true);
    wait_lag_zero(&bootstrap, &group, &input).await?;
    drop(runner);
    Ok(())
}

#[test]
fn a_kafka_property_that_runs_a_command_is_refused_at_start() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("runner-kinit"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "pipeline": "p",
        "kafka": {"bootstrapServers": "127.0.0.1:1",
                  "properties": {"plugin.library.paths": "/tmp/evil.so"}},
        "function": {"name": "f", "source": {"topic": "t"}, "runtime": {"http": {"url": "http://127.0.0.1:1/"}}},
    });
    let path = dir.join("runner.yaml");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-function-runner"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"plugin.library.paths\" may not be set in a Pipeline"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A source written in transactions (as the processor writes its sinks): every transaction ends
/// in a marker no consumer receives. A caught-up runner commits past it, so the group's lag —
/// what the autoscaler reads — falls to zero and the function can scale to zero. (Before, each
/// partition stayed one behind for good.)
#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_source_is_committed_up_to_its_end() -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = unique("txsrc");
    let (input, output) = (format!("{run}-in"), format!("{run}-out"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 3)]).await?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("{run}-producer"))
        .create()?;
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30))).await??;
    for batch in 0..3 {
        producer.begin_transaction()?;
        for i in 0..30 {
            let key = format!("k{}", batch * 30 + i);
            producer
                .send(FutureRecord::to(&input).key(&key).payload("{}"), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)?;
        }
        let p = producer.clone();
        tokio::task::spawn_blocking(move || p.commit_transaction(Duration::from_secs(30))).await??;
    }
    let port = serve_function(Arc::new(|event: &Value| (200, echo(event).to_string()))).await?;
    let (config, listen) = runner_config(&bootstrap, &run, http_function("echo", &input, &output, port, json!({})));
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, listen)).await?;
    let outputs = read(&bootstrap, &output, 90).await?;
    assert_eq!(outputs.len(), 90);
    wait_lag_zero(&bootstrap, &format!("default.{run}.echo"), &input).await?;
    let status = tokio::task::spawn_blocking(move || runner.service.terminate()).await?;
    assert!(status.success(), "SIGTERM: {status}");
    Ok(())
}
