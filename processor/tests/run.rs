//! `sluice-processor run` against the real test broker: the seed's stock-trade SQL over generated
//! data, outputs read with `read_committed` and compared with a ground truth computed here; pull
//! queries over HTTP; a malformed record lands in the processing log while the query goes on; a
//! SIGTERM stops the replica cleanly.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{Processor, free_port, http, read_committed};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
};
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_pipeline_runs_exactly_once_against_kafka() -> anyhow::Result<()> {
    let Some(bootstrap) = sluice_tests::kafka_bootstrap() else { return Ok(()) };
    let run = sluice_tests::unique("proc");
    let (trades, users, settlements, joined) = (
        format!("{run}-stocktrade"),
        format!("{run}-users"),
        format!("{run}-settlements"),
        format!("{run}-user-trades"),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    let topics: Vec<NewTopic<'_>> = [&trades, &users, &settlements]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("{t}: {e}"))?;
    }
    // Keys partitioned as Java clients (and Kafka Streams) do: murmur2; joins rely on it.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("partitioner", "murmur2_random").create()?;
    let send = |topic: String, key: Option<String>, value: String, ts: i64| {
        let producer = producer.clone();
        async move {
            let mut record = FutureRecord::to(&topic).payload(&value).timestamp(ts);
            if let Some(k) = &key {
                record = record.key(k.as_str());
            }
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    };

    // Generated data: users U0..U9 in regions R0..R2 (U9 never registers), then 60 trades.
    let region = |u: usize| format!("R{}", u % 3);
    for u in 0..9 {
        send(
            users.clone(),
            Some(format!("U{u}")),
            json!({"registertime": u, "regionid": region(u)}).to_string(),
            1_000,
        )
        .await;
    }
    let mut expected_joined: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for i in 0..60usize {
        let user = format!("U{}", i % 10);
        let trade = json!({"side": if i % 2 == 0 { "BUY" } else { "SELL" }, "quantity": i, "symbol": format!("S{}", i % 4),
                           "price": 100 + i, "account": format!("A{}", i % 5), "userid": user});
        send(trades.clone(), None, trade.to_string(), 10_000 + i as i64).await;
        let regionid = if i % 10 == 9 { Value::Null } else { json!(region(i % 10)) };
        expected_joined.entry(user).or_default().push(json!({
            "REGIONID": regionid, "QUANTITY": i, "SYMBOL": format!("S{}", i % 4), "PRICE": 100 + i,
            "ACCOUNT": format!("A{}", i % 5), "SIDE": if i % 2 == 0 { "BUY" } else { "SELL" }}));
    }

    let sql = format!(
        "CREATE STREAM STOCKTRADE (side varchar, quantity int, symbol varchar, price int, account varchar, userid varchar)
           WITH (kafka_topic = '{trades}', value_format = 'json');
         CREATE TABLE USERS (userid varchar primary key, registertime BIGINT, regionid varchar)
           WITH (kafka_topic = '{users}', value_format = 'json');
         CREATE STREAM USER_TRADES WITH (kafka_topic = '{joined}') AS
           SELECT s.userid as USERID, u.regionid, quantity, symbol, price, account, side
           FROM STOCKTRADE s LEFT JOIN USERS u on s.USERID = u.userid;
         CREATE STREAM TRADE_SETTLEMENT (userid VARCHAR KEY, symbol VARCHAR, account VARCHAR, amount INT,
                                         disposition VARCHAR, reason VARCHAR)
           WITH (kafka_topic = '{settlements}', value_format = 'json');
         CREATE TABLE COMPLETED_PER_MINUTE WITH (kafka_topic = '{run}-completed') AS
           SELECT symbol, count(*) AS num_completed
           FROM TRADE_SETTLEMENT WINDOW TUMBLING (size 60 second)
           WHERE disposition like '%Completed%'
           GROUP BY symbol EMIT CHANGES;"
    );
    let port = free_port();
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let config = json!({
        "applicationId": format!("test.{run}"),
        "kafka": {"bootstrapServers": bootstrap},
        "sql": sql,
        "replicas": 1,
        "ordinal": 0,
        "stateDir": dir.join("state").to_string_lossy(),
        "exactlyOnce": true,
        "commitInterval": "200ms",
        "listen": format!("127.0.0.1:{port}"),
    });
    let config_path = dir.join("processor.yaml");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
    // Started in a blocking section: waiting for readiness polls with a blocking client.
    let processor = tokio::task::spawn_blocking(move || Processor::start(&config_path, port)).await?;

    // The join: every trade exactly once, enriched with the user's region (or NULL).
    let got = tokio::task::spawn_blocking({
        let (b, t) = (bootstrap.clone(), joined.clone());
        move || read_committed(&b, &t, 60, Duration::from_secs(60))
    })
    .await?;
    let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (key, value, _) in &got {
        by_user.entry(key.clone().unwrap_or_default()).or_default().push(value.clone());
    }
    for list in by_user.values_mut().chain(expected_joined.values_mut()) {
        list.sort_by_key(|v| v["QUANTITY"].as_i64());
    }
    assert_eq!(got.len(), 60, "every trade exactly once");
    assert_eq!(by_user, expected_joined);

    // A push query streams the rows new records produce, and ends after LIMIT rows.
    let push = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body =
            json!({"ksql": "SELECT userid, quantity FROM STOCKTRADE WHERE symbol = 'PUSH' EMIT CHANGES LIMIT 2;"})
                .to_string();
        let request = format!(
            "POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    // Produce once the push query runs (it lists among the queries).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http(port, "POST", "/ksql", Some(&json!({"ksql": "SHOW QUERIES;"})))
        .is_some_and(|(_, body)| body.contains("transient_"))
    {
        assert!(Instant::now() < deadline, "the push query never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One partition (the record key picks it), so the order is the offsets'.
    for q in [7, 8, 9] {
        let trade = json!({"quantity": q, "userid": "U2", "symbol": "PUSH"}).to_string();
        send(trades.clone(), Some("push".into()), trade, 15_000 + q).await;
    }
    let text = tokio::task::spawn_blocking(move || push.join().unwrap()).await?;
    assert!(text.contains("`USERID` STRING, `QUANTITY` INTEGER"), "{text}");
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with("{\"row\""))
        .map(|l| serde_json::from_str::<Value>(l.trim_end_matches(',')).unwrap()["row"]["columns"].clone())
        .collect();
    assert_eq!(rows, vec![json!(["U2", 7]), json!(["U2", 8])], "{text}");

    // A malformed trade is logged and skipped; the next one is processed.
    send(trades.clone(), None, "this is not json".into(), 20_000).await;
    send(trades.clone(), None, json!({"quantity": 1000, "userid": "U1", "symbol": "S9"}).to_string(), 20_001).await;
    let log = tokio::task::spawn_blocking({
        let (b, t) = (bootstrap.clone(), format!("test.{run}-processing-log"));
        move || read_committed(&b, &t, 1, Duration::from_secs(30))
    })
    .await?;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].1["message"].as_str().unwrap_or("").contains("JSON"), "{log:?}");
    assert_eq!(log[0].1["topic"], json!(trades));

    // Settlements → per-minute counts, read back with a pull query.
    let mut truth: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for i in 0..40i64 {
        let disposition = if i % 4 == 3 { "Rejected" } else { "Completed" };
        let symbol = format!("S{}", i % 2);
        let ts = 60_000 + i * 3_000; // spans the minutes starting at 60s, 120s, 180s
        send(
            settlements.clone(),
            Some(format!("U{}", i % 3)),
            json!({"symbol": symbol, "account": "A", "amount": 1, "disposition": disposition, "reason": ""})
                .to_string(),
            ts,
        )
        .await;
        if disposition == "Completed" {
            *truth.entry((symbol, ts - ts % 60_000)).or_default() += 1;
        }
    }
    let want_rows: Vec<Value> = truth.iter().map(|((s, start), n)| json!([s, start, start + 60_000, n])).collect();
    let rows = sluice_tests::wait_for("the per-minute counts", Duration::from_secs(60), || async {
        let (status, body) =
            http(port, "POST", "/query", Some(&json!({"ksql": "SELECT * FROM COMPLETED_PER_MINUTE;"})))
                .unwrap_or((0, String::new()));
        if status != 200 {
            return Ok(None);
        }
        let parsed: Value = serde_json::from_str(&body)?;
        let mut rows: Vec<Value> = parsed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("row").map(|x| x["columns"].clone()))
            .collect();
        rows.sort_by_key(|r| (r[0].as_str().unwrap_or("").to_owned(), r[1].as_i64()));
        Ok((rows == want_rows).then_some(rows))
    })
    .await?;
    assert_eq!(rows, want_rows);

    // The same pull query through /query-stream: a header with the columns, then one JSON array
    // per row (delimited), or one JSON array with Accept: application/json.
    let (status, body) = http(
        port,
        "POST",
        "/query-stream",
        Some(&json!({"sql": "SELECT * FROM COMPLETED_PER_MINUTE;", "properties": {}})),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let mut lines = body.lines();
    let head: Value = serde_json::from_str(lines.next().unwrap_or("")).unwrap();
    assert_eq!(head["columnNames"], json!(["SYMBOL", "WINDOWSTART", "WINDOWEND", "NUM_COMPLETED"]), "{head}");
    assert_eq!(head["columnTypes"], json!(["STRING", "BIGINT", "BIGINT", "BIGINT"]), "{head}");
    let mut streamed: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    streamed.sort_by_key(|r| (r[0].as_str().unwrap_or("").to_owned(), r[1].as_i64()));
    assert_eq!(streamed, want_rows);
    let whole = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = json!({"sql": "SELECT * FROM COMPLETED_PER_MINUTE;"}).to_string();
        let request = format!(
            "POST /query-stream HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
    };
    let whole: Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(whole[0]["columnNames"], head["columnNames"]);
    assert_eq!(whole.as_array().map(Vec::len), Some(want_rows.len() + 1));

    // SHOW QUERIES and DESCRIBE answer; statements that change the pipeline are refused.
    let (status, body) = http(port, "POST", "/ksql", Some(&json!({"ksql": "SHOW QUERIES;"}))).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("CSAS_USER_TRADES"), "{body}");
    let (status, _) = http(port, "POST", "/ksql", Some(&json!({"ksql": "DROP STREAM USER_TRADES;"}))).unwrap();
    assert_eq!(status, 400);
    // EXPLAIN <query id>: the query's statement, sources, sinks and topics.
    let (status, body) = http(port, "POST", "/ksql", Some(&json!({"ksql": "EXPLAIN CSAS_USER_TRADES_1;"}))).unwrap();
    assert_eq!(status, 200, "{body}");
    let explained: Value = serde_json::from_str(&body).unwrap();
    let d = &explained[0]["queryDescription"];
    assert_eq!(d["id"], json!("CSAS_USER_TRADES_1"), "{body}");
    assert_eq!(d["sources"], json!(["STOCKTRADE", "USERS"]), "{body}");
    assert_eq!(d["sinks"], json!(["USER_TRADES"]), "{body}");
    assert!(d["statementText"].as_str().unwrap_or("").contains("LEFT JOIN"), "{body}");
    let (status, _) = http(port, "POST", "/ksql", Some(&json!({"ksql": "EXPLAIN NO_SUCH_QUERY;"}))).unwrap();
    assert_eq!(status, 400);
    let (status, body) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("sluice_processor_processing_errors_total"), "{body}");

    // SIGTERM: the replica commits and exits 0.
    let status = processor.terminate();
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
