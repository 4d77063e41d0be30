//! The runner in Lambda mode with real runtimes started as local processes: AWS's Python
//! runtime interface client (`awslambdaric`) running a Python handler, and the Rust
//! `lambda_runtime` (examples/rust_handler.rs). For each: every record delivered in key order
//! with a non-ASCII header intact, a failing record dead-lettered with the function's error, the
//! offsets committed — and for Python, a runtime crash survived.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use serde_json::{Value, json};

fn rust_handler() -> PathBuf {
    // Examples are built by `cargo test` next to the test binaries' directory.
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent().and_then(|deps| deps.parent()).expect("target/debug").join("examples").join("rust_handler")
}

fn lambda_function(name: &str, input: &str, output: &str, dlq: &str, lambda: Value) -> Value {
    json!({
        "name": name,
        "source": {"topic": input, "startingPosition": "earliest"},
        "batch": {"maxRecords": 25, "maxWait": "50ms"},
        "runtime": {"lambda": lambda},
        "output": {"topic": output},
        "ordering": "key",
        "onFailure": {"maxRetries": 1, "backoff": {"initial": "10ms", "max": "100ms"}, "deadLetterTopic": dlq},
    })
}

/// `n` numbered records over `keys` keys; record 5 carries a non-ASCII header, record 11 is
/// poison; `extra` patches more values in.
fn inputs(n: usize, keys: usize, extra: &[(usize, Value)]) -> Vec<Input> {
    let mut v: Vec<Input> = (0..n).map(|i| Input::numbered(i, keys)).collect();
    v[5].headers = vec![("note".into(), "né à Zürich".as_bytes().to_vec())];
    v[11].value = json!({"seq": 11, "poison": true}).to_string().into_bytes();
    for (i, value) in extra {
        v[*i].value = value.to_string().into_bytes();
    }
    v
}

async fn check(
    bootstrap: &str,
    run: &str,
    function: &str,
    output: &str,
    dlq: &str,
    n: usize,
    runtime: &str,
) -> anyhow::Result<()> {
    let (b, o, d) = (bootstrap.to_owned(), output.to_owned(), dlq.to_owned());
    let (outputs, dead) = tokio::task::spawn_blocking(move || {
        (read_committed(&b, &o, n - 1, Duration::from_secs(120)), read_committed(&b, &d, 1, Duration::from_secs(30)))
    })
    .await?;
    // Each delivered input exactly once (nothing failed after producing), in key order.
    let mut delivered = echoed(&outputs);
    delivered.sort_by_key(|o| o.1);
    let seqs: Vec<i64> = delivered.iter().map(|o| o.1).collect();
    assert_eq!(seqs, (0..n as i64).filter(|s| *s != 11).collect::<Vec<_>>(), "every input but the poison one, once");
    let mut by_key: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (key, seq, _, _) in echoed(&outputs) {
        by_key.entry(key).or_default().push(seq);
    }
    for (key, seqs) in &by_key {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {seqs:?}");
    }
    for m in &outputs {
        assert!(m.headers.contains(&("runtime".to_string(), runtime.as_bytes().to_vec())), "{:?}", m.headers);
        let v: Value = serde_json::from_slice(m.value.as_deref().unwrap_or_default())?;
        assert!(v["requestId"].as_str().is_some_and(|id| id.len() == 36), "a request id per invocation: {v}");
        if v["in"]["seq"] == 5 {
            assert_eq!(v["headers"]["note"], "né à Zürich", "non-ASCII header bytes survive the round trip");
        }
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error =
        dead[0].headers.iter().find(|(k, _)| k == "sluice.error").map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    assert!(error.as_deref().is_some_and(|e| e.contains("poison record at offset")), "{error:?}");
    sluice_tests::wait_for("the group's committed offsets to reach the end", Duration::from_secs(60), || {
        let (b, g, t) = (bootstrap.to_owned(), format!("default.{run}.{function}"), format!("{run}-in"));
        async move { Ok((tokio::task::spawn_blocking(move || group_lag(&b, &g, &t)).await?? == 0).then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn awslambdaric_runs_a_python_handler_unchanged() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let Some(ric) = sluice_tests::awslambdaric() else { return Ok(()) };
    let run = unique("pyric");
    let (input, output, dlq) = (format!("{run}-in"), format!("{run}-out"), format!("{run}-dlq"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 3), (&dlq, 1)]).await?;
    let marker = std::env::temp_dir().join(format!("{run}-crashed"));
    let n = 120;
    // Record 40 kills the runtime the first time it sees it: the runner restarts the process
    // and retries the batch.
    let records = inputs(n, 10, &[(40, json!({"seq": 40, "crash": marker.to_string_lossy()}))]);
    produce(&bootstrap, &input, &records).await?;
    let handlers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lambda");
    let lambda = json!({
        "command": ["python3", "-m", "awslambdaric"],
        "args": ["settle.handler"],
        "env": [{"name": "PYTHONPATH", "value": format!("{handlers}:{ric}")}],
        "timeout": "10s",
        "concurrency": 1,
    });
    let (config, port) = runner_config(&bootstrap, &run, lambda_function("settle", &input, &output, &dlq, lambda));
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, port)).await?;
    check(&bootstrap, &run, "settle", &output, &dlq, n, "awslambdaric").await?;
    assert!(marker.exists(), "the crash hook ran");
    let text = http(runner.port, "GET", "/metrics", None).map(|(_, t)| t).unwrap_or_default();
    assert!(text.contains("outcome=\"runtime_gone\""), "the crash failed its invocation at once:\n{text}");
    let status = tokio::task::spawn_blocking(move || runner.service.terminate()).await?;
    assert!(status.success(), "{status}");
    std::fs::remove_file(&marker).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_lambda_runtime_runs_unchanged() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let handler = rust_handler();
    assert!(handler.exists(), "{} is built by cargo test", handler.display());
    let run = unique("rsric");
    let (input, output, dlq) = (format!("{run}-in"), format!("{run}-out"), format!("{run}-dlq"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 3), (&dlq, 1)]).await?;
    let n = 120;
    produce(&bootstrap, &input, &inputs(n, 10, &[])).await?;
    let lambda = json!({"command": [handler.to_string_lossy()], "timeout": "10s", "concurrency": 2});
    let (config, port) = runner_config(&bootstrap, &run, lambda_function("rs", &input, &output, &dlq, lambda));
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, port)).await?;
    check(&bootstrap, &run, "rs", &output, &dlq, n, "lambda_runtime").await?;
    let status = tokio::task::spawn_blocking(move || runner.service.terminate()).await?;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_stuck_past_its_timeout_is_replaced() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let Some(ric) = sluice_tests::awslambdaric() else { return Ok(()) };
    let run = unique("pyhang");
    let (input, output, dlq) = (format!("{run}-in"), format!("{run}-out"), format!("{run}-dlq"));
    create_topics(&bootstrap, &[(&input, 2), (&output, 2), (&dlq, 1)]).await?;
    let marker = std::env::temp_dir().join(format!("{run}-hung"));
    let n = 40;
    produce(&bootstrap, &input, &inputs(n, 4, &[(20, json!({"seq": 20, "hang": marker.to_string_lossy()}))])).await?;
    let handlers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lambda");
    let lambda = json!({
        "command": ["python3", "-m", "awslambdaric"],
        "args": ["settle.handler"],
        "env": [{"name": "PYTHONPATH", "value": format!("{handlers}:{ric}")}],
        "timeout": "2s",
        "concurrency": 2,
    });
    let (config, port) = runner_config(&bootstrap, &run, lambda_function("hang", &input, &output, &dlq, lambda));
    let runner = tokio::task::spawn_blocking(move || Runner::start(&config, port)).await?;
    check(&bootstrap, &run, "hang", &output, &dlq, n, "awslambdaric").await?;
    assert!(marker.exists(), "the hang hook ran");
    let text = http(runner.port, "GET", "/metrics", None).map(|(_, t)| t).unwrap_or_default();
    assert!(text.contains("outcome=\"timeout\""), "the stuck invocation timed out:\n{text}");
    std::fs::remove_file(&marker).ok();
    Ok(())
}
