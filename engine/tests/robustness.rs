//! Nothing a user can type or send makes the engine panic: arbitrary SQL gets an error or runs,
//! and arbitrary record bytes are logged and skipped.

use proptest::prelude::*;
use sluice_engine::{Engine, Record};

const SOURCES: &str = "
CREATE STREAM S (K STRING KEY, A INT, B BIGINT, C DOUBLE, D DECIMAL(10, 2), E STRING, F BOOLEAN)
  WITH (kafka_topic='s', value_format='JSON');
CREATE TABLE T (K STRING PRIMARY KEY, A INT, E STRING) WITH (kafka_topic='t', value_format='JSON');
CREATE STREAM DS (K INT KEY, A INT, E STRING) WITH (kafka_topic='ds', value_format='DELIMITED');
";

fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("A".to_owned()),
        Just("B".to_owned()),
        Just("C".to_owned()),
        Just("D".to_owned()),
        Just("E".to_owned()),
        Just("F".to_owned()),
        Just("NULL".to_owned()),
        Just("ROWTIME".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<i32>().prop_map(|i| format!("{i}.5")),
        "[a-z ]{0,5}".prop_map(|s| format!("'{s}'")),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let ops = prop::sample::select(vec!["+", "-", "*", "/", "%", "=", "<", "AND", "OR", "||"]);
        let funcs = prop::sample::select(vec![
            "ABS",
            "ROUND",
            "FLOOR",
            "LEN",
            "UCASE",
            "SUBSTRING",
            "CONCAT",
            "GREATEST",
            "LEAST",
            "COALESCE",
            "INSTR",
            "LPAD",
            "SQRT",
            "TRUNC",
            "TIMESTAMPTOSTRING",
            "REGEXP_REPLACE",
            "GEO_DISTANCE",
        ]);
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(l, o, r)| format!("({l} {o} {r})")),
            (funcs, prop::collection::vec(inner.clone(), 0..4)).prop_map(|(f, a)| format!("{f}({})", a.join(", "))),
            (
                inner.clone(),
                prop::sample::select(vec!["INT", "BIGINT", "DOUBLE", "STRING", "DECIMAL(4, 2)", "BOOLEAN"])
            )
                .prop_map(|(e, t)| format!("CAST({e} AS {t})")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, a, b)| format!("CASE WHEN ({c}) IS NULL THEN {a} ELSE {b} END")),
        ]
    })
}

fn record(topic: &str, key: Option<Vec<u8>>, value: Option<Vec<u8>>, ts: i64) -> Record {
    Record { topic: topic.into(), key, value, timestamp: ts, partition: 0, offset: 0, headers: Vec::new() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn expressions_in_queries_never_panic(select in expression(), filter in expression(), ts in any::<i64>()) {
        let mut engine = Engine::default();
        engine.execute_script(SOURCES).unwrap();
        let sql = format!("CREATE STREAM O AS SELECT K, {select} AS X FROM S WHERE ({filter}) IS NOT NULL;");
        let planned = engine.execute_script(&sql);
        if std::env::var("ROBUSTNESS_DEBUG").is_ok() { eprintln!("{:?}", planned.as_ref().err()); }
        if planned.is_ok() {
            let value = br#"{"A": 2147483647, "B": -9223372036854775808, "C": 1e308, "D": 12345678.91, "E": "x", "F": true}"#;
            engine.process(record("s", Some(b"k".to_vec()), Some(value.to_vec()), ts));
        }
        let sql = format!("CREATE TABLE G AS SELECT E, COUNT(*), SUM(A), MAX({select}) FROM S WINDOW HOPPING (SIZE 10 SECONDS, ADVANCE BY 3 SECONDS) GROUP BY E HAVING ({filter}) IS NULL;");
        if engine.execute_script(&sql).is_ok() {
            engine.process(record("s", None, Some(br#"{"A": 1, "E": "y"}"#.to_vec()), ts));
        }
    }

    #[test]
    fn arbitrary_text_is_rejected_or_run(sql in ".{0,200}") {
        let mut engine = Engine::default();
        engine.execute_script(SOURCES).unwrap();
        let _ = engine.execute_script(&sql);
    }

    #[test]
    fn arbitrary_record_bytes_are_skipped(key in prop::option::of(any::<Vec<u8>>()), value in prop::option::of(any::<Vec<u8>>()), ts in any::<i64>()) {
        let mut engine = Engine::default();
        engine.execute_script(SOURCES).unwrap();
        engine.execute_script("CREATE STREAM O1 AS SELECT * FROM S; CREATE TABLE O2 AS SELECT * FROM T;
            CREATE TABLE O3 AS SELECT E, COUNT(*) FROM DS WINDOW SESSION (5 SECONDS) GROUP BY E;
            CREATE STREAM O4 AS SELECT S.K, S.A, T.E FROM S LEFT JOIN T ON S.K = T.K;").unwrap();
        for topic in ["s", "t", "ds"] {
            engine.process(record(topic, key.clone(), value.clone(), ts));
        }
    }
}

/// The deepest expression of each shape the parser accepts is analysed, planned and evaluated
/// on a thread with the stack the binaries give SQL threads, in this (debug) build; one level
/// more is refused with a position.
#[test]
fn the_deepest_accepted_expressions_run_and_deeper_ones_are_refused() {
    use sluice_sql::{MAX_DEPTH, SQL_STACK_SIZE};
    type Shape = (&'static str, fn(usize) -> String);
    let shapes: [Shape; 5] = [
        ("parentheses", |n| format!("{}A{}", "(".repeat(n), ")".repeat(n))),
        ("a chain", |n| format!("A{}", " + 1".repeat(n))),
        ("NOT", |n| format!("{}(A > 1)", "NOT ".repeat(n))),
        ("calls", |n| format!("{}A{}", "ABS(".repeat(n), ")".repeat(n))),
        ("CASE", |n| format!("{}A{}", "CASE WHEN A > 0 THEN ".repeat(n), " ELSE 0 END".repeat(n))),
    ];
    for (name, shape) in shapes {
        let out = std::thread::Builder::new()
            .stack_size(SQL_STACK_SIZE)
            .spawn(move || {
                // The largest n the parser accepts for this shape (inside `SELECT K, … AS X`).
                let script = |n: usize| {
                    format!(
                        "CREATE STREAM S (K STRING KEY, A INT) WITH (kafka_topic='s', value_format='JSON');
                         CREATE STREAM O AS SELECT K, {} AS X FROM S;",
                        shape(n)
                    )
                };
                let n = (1..MAX_DEPTH).rev().find(|n| sluice_sql::parse_statements(&script(*n)).is_ok()).unwrap_or(0);
                if n + 8 <= MAX_DEPTH {
                    return Err(format!("only {n} levels accepted"));
                }
                let mut engine = Engine::default();
                engine.execute_script(&script(n)).map_err(|e| e.to_string())?;
                let out = engine.process(record("s", Some(b"k".to_vec()), Some(br#"{"A": 3}"#.to_vec()), 1));
                let refused = Engine::default().execute_script(&script(n + 1)).map(|_| ()).unwrap_err().to_string();
                Ok::<_, String>((out.len(), refused))
            })
            .unwrap()
            .join()
            .unwrap_or_else(|_| panic!("{name}: the engine thread died"));
        let (records, refused) = out.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(records, 1, "{name}");
        assert!(refused.contains("nested too deeply"), "{name}: {refused}");
    }
}
