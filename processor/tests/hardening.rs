//! Inputs that used to take the processor down or run a command in it: a deeply nested query on
//! `/query` (a stack overflow that aborted the process) and a Kafka property that makes
//! librdkafka run a shell command.

mod common;

use std::time::Duration;

use common::{Processor, free_port, http};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_sql_on_the_query_api_is_a_400_and_the_processor_stays_up() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = sluice_tests::unique("deep");
    let port = free_port();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let config = json!({
        "applicationId": format!("test.{run}"),
        "kafka": {"bootstrapServers": bootstrap},
        "sql": format!("CREATE TABLE T (K VARCHAR PRIMARY KEY, C INT) WITH (kafka_topic = '{run}-t', value_format = 'json', partitions = 1);
                        CREATE TABLE U AS SELECT * FROM T;"),
        "ordinal": 0,
        "stateDir": dir.join("state").to_string_lossy(),
        "listen": format!("127.0.0.1:{port}"),
    });
    let path = dir.join("processor.yaml");
    std::fs::write(&path, serde_json::to_string(&config)?)?;
    // The source topic: the processor creates only what it writes.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(&format!("{run}-t"), 1, rdkafka::admin::TopicReplication::Fixed(1))],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await?;
    let p = Processor::start(&path, port);
    for endpoint in ["/query", "/ksql", "/query-stream"] {
        for n in [5_000usize, 500_000] {
            let sql = format!("SELECT * FROM U WHERE C = {}1{};", "(".repeat(n), ")".repeat(n));
            let body = json!({"ksql": sql, "sql": sql});
            let (status, text) = http(port, "POST", endpoint, Some(&body)).expect("the processor answers");
            assert_eq!(status, 400, "{endpoint} {n}: {text}");
            let error: serde_json::Value = serde_json::from_str(&text)?;
            assert!(error["message"].as_str().unwrap_or("").contains("nested too deeply"), "{text}");
        }
    }
    let (status, _) = http(port, "GET", "/healthz", None).expect("still up");
    assert_eq!(status, 200);
    assert!(p.terminate().success());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn a_kafka_property_that_runs_a_command_is_refused_before_any_client_exists() {
    let dir = std::env::temp_dir().join(sluice_tests::unique("kinit"));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("pwned");
    let config = json!({
        "applicationId": "test.kinit",
        "kafka": {"bootstrapServers": "127.0.0.1:1", "securityProtocol": "SASL_PLAINTEXT",
                  "sasl": {"mechanism": "PLAIN"},
                  "properties": {"sasl.mechanisms": "GSSAPI",
                                 "sasl.kerberos.kinit.cmd": format!("touch {}", marker.display())}},
        "sql": "CREATE STREAM S (A INT) WITH (kafka_topic = 's', value_format = 'json');",
        "ordinal": 0,
        "stateDir": dir.join("state").to_string_lossy(),
        "listen": format!("127.0.0.1:{}", free_port()),
    });
    let path = dir.join("processor.yaml");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-processor"))
        .args(["run", "--config"])
        .arg(&path)
        .env("SLUICE_KAFKA_SASL_USERNAME", "u")
        .env("SLUICE_KAFKA_SASL_PASSWORD", "p")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"sasl.kerberos.kinit.cmd\" may not be set in a Pipeline"), "{stderr}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "the command ran");
    std::fs::remove_dir_all(&dir).ok();
}
