//! The seed's SQL (../shared/seeds/002): the stock-trade pipeline (STOCKTRADE, USERS, the
//! USER_TRADES left join, TRADE_SETTLEMENT, per-minute tumbling counts per disposition) and the
//! GEO_DISTANCE rides, run through the engine with expectations computed by hand.

use serde_json::{Value as Json, json};
use sluice_engine::{Engine, Record};

const STOCKTRADE_SQL: &str = "
CREATE STREAM STOCKTRADE (side varchar, quantity int,
symbol varchar, price int, account varchar, userid varchar)
with (kafka_topic = 'stocktrade', value_format = 'json');

CREATE TABLE USERS (userid varchar primary key,
                         registertime BIGINT, regionid varchar )
with ( kafka_topic = 'users', value_format = 'json');

CREATE STREAM USER_TRADES WITH (kafka_topic = 'user_trades')
AS SELECT s.userid as USERID, u.regionid,
quantity, symbol, price, account, side
FROM STOCKTRADE s LEFT JOIN USERS u on s.USERID = u.userid;

CREATE STREAM TRADE_SETTLEMENT (userid VARCHAR KEY, symbol VARCHAR, account VARCHAR, amount INT,
                                disposition VARCHAR, reason VARCHAR)
  WITH (kafka_topic = 'trade-settlements', value_format = 'json');

CREATE TABLE COMPLETED_PER_MINUTE AS
SELECT symbol, count(*) AS num_completed
FROM TRADE_SETTLEMENT WINDOW TUMBLING (size 60 second)
WHERE disposition like '%Completed%'
GROUP BY symbol
EMIT CHANGES;

CREATE TABLE PENDING_PER_MINUTE AS
SELECT symbol, count(*) AS num_pending
FROM TRADE_SETTLEMENT WINDOW TUMBLING (size 60 second)
WHERE disposition like '%Pending%'
GROUP BY symbol
EMIT CHANGES;
";

const GEO_SQL: &str = "
CREATE STREAM geoEvents (rideId VARCHAR KEY, latitude DOUBLE, longitude DOUBLE,
                         dstLatitude DOUBLE, dstLongitude DOUBLE)
  WITH (kafka_topic = 'geo-events', value_format = 'json');

CREATE STREAM locations AS
  SELECT rideId, latitude, longitude,
         GEO_DISTANCE(latitude, longitude,
                      dstLatitude, dstLongitude, 'km'
                      ) AS kmToDst
 FROM geoEvents;

CREATE TABLE RIDES_OVER_10K AS
    SELECT rideId,
           COUNT(*) AS LONG_RIDES
    FROM LOCATIONS
    WHERE kmToDst > 10
    GROUP BY rideId;
";

fn record(topic: &str, key: Option<&str>, value: Json, ts: i64) -> Record {
    Record {
        topic: topic.into(),
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(serde_json::to_vec(&value).unwrap()),
        timestamp: ts,
        partition: 0,
        offset: 0,
        headers: Vec::new(),
    }
}

/// (topic, key text, window start, value JSON, timestamp) of each output.
fn outputs(engine: &mut Engine, rec: Record) -> Vec<(String, String, Option<i64>, Json, i64)> {
    engine
        .process(rec)
        .into_iter()
        .map(|r| {
            let key = r.key.unwrap_or_default();
            // Windowed keys end with the 8-byte window start (Kafka Streams' layout).
            let windowed = r.topic.ends_with("_PER_MINUTE");
            let (k, start) = if windowed {
                let (k, s) = key.split_at(key.len() - 8);
                (k.to_vec(), Some(i64::from_be_bytes(s.try_into().unwrap())))
            } else {
                (key, None)
            };
            let value = r.value.map_or(Json::Null, |v| serde_json::from_slice(&v).unwrap());
            (r.topic, String::from_utf8(k).unwrap(), start, value, r.timestamp)
        })
        .collect()
}

#[test]
fn stock_trades_join_users_and_settlements_are_counted_per_minute() {
    let mut engine = Engine::default();
    engine.execute_script(STOCKTRADE_SQL).unwrap();

    // A user, then a trade by that user and one by an unknown user (LEFT JOIN keeps it).
    assert!(
        outputs(&mut engine, record("users", Some("U1"), json!({"registertime": 1, "regionid": "R1"}), 1000))
            .is_empty()
    );
    let trade = |user: &str, qty: i32| json!({"side": "BUY", "quantity": qty, "symbol": "ZVV", "price": 100, "account": "A1", "userid": user});
    assert_eq!(
        outputs(&mut engine, record("stocktrade", None, trade("U1", 10), 2000)),
        vec![(
            "user_trades".into(),
            "U1".into(),
            None,
            json!({"REGIONID": "R1", "QUANTITY": 10, "SYMBOL": "ZVV", "PRICE": 100, "ACCOUNT": "A1", "SIDE": "BUY"}),
            2000
        )]
    );
    assert_eq!(
        outputs(&mut engine, record("stocktrade", None, trade("U2", 5), 3000)),
        vec![(
            "user_trades".into(),
            "U2".into(),
            None,
            json!({"REGIONID": null, "QUANTITY": 5, "SYMBOL": "ZVV", "PRICE": 100, "ACCOUNT": "A1", "SIDE": "BUY"}),
            3000
        )]
    );

    // Settlements: two Completed in the minute [60s, 120s), one Pending, one Completed later.
    let settle = |d: &str| json!({"symbol": "ZVV", "account": "A1", "amount": 1000, "disposition": d, "reason": ""});
    let completed = |start, count, ts| {
        ("COMPLETED_PER_MINUTE".to_owned(), "ZVV".to_owned(), Some(start), json!({"NUM_COMPLETED": count}), ts)
    };
    assert_eq!(
        outputs(&mut engine, record("trade-settlements", Some("U1"), settle("Completed"), 60_000)),
        vec![completed(60_000, 1, 60_000)]
    );
    assert_eq!(
        outputs(&mut engine, record("trade-settlements", Some("U1"), settle("Pending"), 70_000)),
        vec![("PENDING_PER_MINUTE".into(), "ZVV".into(), Some(60_000), json!({"NUM_PENDING": 1}), 70_000)]
    );
    assert_eq!(
        outputs(&mut engine, record("trade-settlements", Some("U2"), settle("Completed"), 90_000)),
        vec![completed(60_000, 2, 90_000)]
    );
    assert_eq!(
        outputs(&mut engine, record("trade-settlements", Some("U1"), settle("Completed"), 125_000)),
        vec![completed(120_000, 1, 125_000)]
    );
    assert!(engine.errors.is_empty(), "{:?}", engine.errors);
}

#[test]
fn rides_over_ten_kilometres_are_counted() {
    let mut engine = Engine::default();
    engine.execute_script(GEO_SQL).unwrap();
    // One degree of latitude on a sphere of radius 6371 km: 2π·6371/360 = 111.19492664455873 km.
    let ride = |dst_lat: f64| json!({"latitude": 0.0, "longitude": 0.0, "dstLatitude": dst_lat, "dstLongitude": 0.0});
    let out = outputs(&mut engine, record("geo-events", Some("r1"), ride(1.0), 1000));
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].0.as_str(), out[0].1.as_str()), ("LOCATIONS", "r1"));
    let km = out[0].3["KMTODST"].as_f64().unwrap();
    assert!((km - 111.194_926_644_558_73).abs() < 1e-9, "{km}");
    assert_eq!((out[1].0.as_str(), out[1].1.as_str(), &out[1].3), ("RIDES_OVER_10K", "r1", &json!({"LONG_RIDES": 1})));

    let out = outputs(&mut engine, record("geo-events", Some("r1"), ride(1.0), 2000));
    assert_eq!(out[1].3, json!({"LONG_RIDES": 2}));

    // 0.05° is 5.56 km: the location is written, the ride is not counted.
    let out = outputs(&mut engine, record("geo-events", Some("r2"), ride(0.05), 3000));
    assert_eq!(out.len(), 1);
    let km = out[0].3["KMTODST"].as_f64().unwrap();
    assert!((km - 5.559_746_332_227_937).abs() < 1e-9, "{km}");
    assert!(engine.errors.is_empty(), "{:?}", engine.errors);
}
