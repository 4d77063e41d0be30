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
