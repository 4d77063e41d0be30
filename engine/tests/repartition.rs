//! Repartition topics as the runtime uses them: a re-keyed stream's records go, unchanged, to
//! the partition of their new key, and are processed when they come back from there.

use serde_json::json;
use sluice_engine::{Engine, Record, format::kafka_partition, store::encode_row, value::Value};

const SQL: &str = "
CREATE STREAM STOCKTRADE (side varchar, quantity int, symbol varchar, userid varchar)
  WITH (kafka_topic = 'stocktrade', value_format = 'json');
CREATE TABLE USERS (userid varchar primary key, regionid varchar)
  WITH (kafka_topic = 'users', value_format = 'json');
CREATE STREAM USER_TRADES AS SELECT s.userid AS USERID, u.regionid, quantity, symbol
  FROM STOCKTRADE s LEFT JOIN USERS u ON s.USERID = u.userid;
CREATE TABLE PER_SYMBOL AS SELECT symbol, COUNT(*) AS n FROM STOCKTRADE GROUP BY symbol;
CREATE TABLE PER_REGION AS SELECT regionid, COUNT(*) AS n FROM USERS GROUP BY regionid;
";

fn record(topic: &str, key: Option<&str>, value: serde_json::Value, partition: i32) -> Record {
    Record {
        topic: topic.into(),
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(serde_json::to_vec(&value).unwrap()),
        timestamp: 1000,
        partition,
        offset: 0,
        headers: vec![("h".into(), Some(b"v".to_vec()))],
    }
}

#[test]
fn re_keyed_streams_go_through_their_repartition_topics() {
    let mut engine = Engine::default();
    engine.chain = false;
    engine.execute_script(SQL).unwrap();
    let topics = engine.use_repartition_topics("app-");
    let names: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
    // The join's stream side and the stream GROUP BY; the table re-grouping keeps one partition.
    assert_eq!(
        names,
        ["app-CSAS_USER_TRADES_1-Join-left-repartition", "app-CTAS_PER_SYMBOL_2-Aggregate-GroupBy-repartition"]
    );
    let single: Vec<&str> = engine.queries.iter().filter(|q| q.needs_repartition()).map(|q| q.id.as_str()).collect();
    assert_eq!(single, ["CTAS_PER_REGION_3"]);
    for (t, _) in &topics {
        engine.repartition_partitions.insert(t.clone(), 8);
    }
    let (read, written) = engine.topics();
    assert!(names.iter().all(|n| read.iter().any(|r| r == n) && written.iter().any(|w| w == n)));

    // A user in partition 5 of `users` (where Kafka's partitioner puts key "U7" of 8).
    let p = kafka_partition(b"U7", 8);
    assert!(
        engine
            .process(record("users", Some("U7"), json!({"regionid": "R1"}), p))
            .iter()
            .all(|r| r.topic == "PER_REGION")
    );

    // A trade by U7 read from partition 0: nothing but two repartition records, unchanged, in
    // the partitions of the join key (as `users` partitions it) and of the grouping.
    let trade = record("stocktrade", None, json!({"side": "BUY", "quantity": 3, "symbol": "ZVV", "userid": "U7"}), 0);
    let out = engine.process(trade.clone());
    assert_eq!(out.len(), 2, "{out:?}");
    let join = &out[0];
    assert_eq!((join.topic.as_str(), join.partition), (names[0], p));
    assert_eq!(
        (&join.key, &join.value, join.timestamp, &join.headers),
        (&trade.key, &trade.value, 1000, &trade.headers)
    );
    let group = &out[1];
    let by_symbol = kafka_partition(&encode_row(&[Value::String("ZVV".into())]), 8);
    assert_eq!((group.topic.as_str(), group.partition), (names[1], by_symbol));

    // Back from the repartition topic: joined with the user kept in the same partition, counted.
    let joined = engine.process(join.clone());
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].topic, "USER_TRADES");
    let value: serde_json::Value = serde_json::from_slice(joined[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(value["REGIONID"], json!("R1"), "{value}");
    let counted = engine.process(group.clone());
    assert_eq!(counted.len(), 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(counted[0].value.as_ref().unwrap()).unwrap(),
        json!({"N": 1})
    );

    // A trade with no user id, or a tombstone: no repartition record for the join.
    let nobody = engine.process(record("stocktrade", None, json!({"symbol": "ZVV", "userid": null}), 0));
    assert_eq!(nobody.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(), [names[1]]);
    let tombstone = Record { value: None, ..trade };
    assert!(engine.process(tombstone).is_empty());
}

/// Stream time is part of the state: after a restart (a new engine over the same store) a
/// window that had closed stays closed.
#[test]
fn stream_time_survives_a_restart() {
    const COUNTS: &str = "
        CREATE STREAM CLICKS (page VARCHAR) WITH (kafka_topic = 'clicks', value_format = 'json');
        CREATE TABLE PER_MINUTE AS SELECT page, COUNT(*) AS n FROM CLICKS
          WINDOW TUMBLING (SIZE 60 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY page;";
    let click = |ts: i64| Record {
        topic: "clicks".into(),
        key: None,
        value: Some(br#"{"page": "home"}"#.to_vec()),
        timestamp: ts,
        partition: 2,
        offset: 0,
        headers: Vec::new(),
    };
    let mut engine = Engine::default();
    engine.execute_script(COUNTS).unwrap();
    assert_eq!(engine.process(click(10_000)).len(), 1);
    assert_eq!(engine.process(click(130_000)).len(), 1, "stream time is now 130 s: [0, 60 s) closed");
    assert!(engine.process(click(20_000)).is_empty(), "late");
    engine.save_stream_times();

    let mut restarted = Engine::new(engine.store.clone());
    restarted.execute_script(COUNTS).unwrap();
    assert!(restarted.process(click(30_000)).is_empty(), "still late after the restart");
    assert_eq!(restarted.process(click(125_000)).len(), 1, "the open window takes records");
    // Without the saved time the closed window would have opened again.
    let mut forgetful = Engine::default();
    forgetful.execute_script(COUNTS).unwrap();
    assert_eq!(forgetful.process(click(30_000)).len(), 1);
}

/// Windows past retention (size + grace, or RETENTION when longer) leave the state when stream
/// time is saved; open ones stay.
#[test]
fn windows_past_retention_are_deleted() {
    use sluice_engine::store::StateStore;
    let sql = "
        CREATE STREAM CLICKS (page VARCHAR) WITH (kafka_topic = 'clicks', value_format = 'json');
        CREATE TABLE PER_MINUTE AS SELECT page, COUNT(*) AS n FROM CLICKS
          WINDOW TUMBLING (SIZE 60 SECONDS, RETENTION 2 MINUTES, GRACE PERIOD 0 SECONDS) GROUP BY page;";
    let click = |page: &str, ts: i64| Record {
        topic: "clicks".into(),
        key: None,
        value: Some(format!(r#"{{"page": "{page}"}}"#).into_bytes()),
        timestamp: ts,
        partition: 0,
        offset: 0,
        headers: Vec::new(),
    };
    let mut engine = Engine::default();
    engine.execute_script(sql).unwrap();
    for (page, ts) in [("a", 0), ("b", 30_000), ("a", 70_000), ("a", 130_000)] {
        engine.process(click(page, ts));
    }
    let windows = |e: &Engine| e.store.range("CTAS_PER_MINUTE_1-agg", &[]).len();
    assert_eq!(windows(&engine), 4, "a@0, b@0, a@60s, a@120s");
    engine.save_stream_times();
    // Stream time 130 s, retention 120 s (longer than size + grace): windows starting at or
    // before 10 s are gone.
    assert_eq!(windows(&engine), 2, "a@60s and a@120s remain");
    engine.process(click("c", 185_000));
    engine.save_stream_times();
    // Stream time 185 s: a@60s goes too.
    assert_eq!(windows(&engine), 2, "a@120s and c@180s remain");
    assert_eq!(engine.queries[0].expired, 3);
    assert_eq!(engine.store.range("CTAS_PER_MINUTE_1-expiry", &[]).len(), 2);
}
