//! The whole seed example on this machine, with real parts: `sluice datagen` fills the real
//! broker with users and trades, `sluice run` starts the processor and the `settle` function
//! (the real `awslambdaric` running `examples/stocktrade/settle.py`), the join feeds the
//! function, the function's settlements feed the per-minute counts, and `sluice query` reads
//! them — every trade counted once under its disposition, checked against the trades themselves.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
};
use serde_json::Value;
use sluice_tests::{free_port, read_committed, repo_root, unique};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// The example Pipeline with its topics and name made unique for this run.
fn example(run: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/stocktrade/pipeline.yaml")).expect("the example");
    let mut text = text.replace("name: trades\n", &format!("name: {name}\n"));
    for topic in ["stocktrade", "users", "user_trades", "trade-settlements"] {
        text = text.replace(&format!("'{topic}'"), &format!("'{run}-{topic}'"));
    }
    text.replace("deadLetterTopic: user_trades.dlq", &format!("deadLetterTopic: {run}-user_trades.dlq"))
        .replace("{topic: user_trades,", &format!("{{topic: {run}-user_trades,"))
        .replace("topic: trade-settlements}", &format!("topic: {run}-trade-settlements}}"))
}

/// What `settle.py` decides for a trade (its rules, restated): the disposition.
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

fn query(port: u16, sql: &str) -> String {
    let out =
        sluice().args(["query", "--server", &format!("http://127.0.0.1:{port}"), sql]).output().expect("sluice query");
    assert!(out.status.success(), "sluice query {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of `sluice query`'s table, as maps from column name to cell.
fn rows(table: &str) -> Vec<BTreeMap<String, String>> {
    let cells =
        |line: &str| -> Vec<String> { line.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect() };
    let lines: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
    let Some((header, body)) = lines.split_first() else { return Vec::new() };
    let names = cells(header);
    body.iter().map(|l| names.iter().cloned().zip(cells(l)).collect()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_runs_end_to_end_on_this_machine() -> anyhow::Result<()> {
    let (Some(bootstrap), Some(ric)) = (sluice_tests::kafka_bootstrap(), sluice_tests::awslambdaric()) else {
        return Ok(());
    };
    let run = unique("seed");
    let name = format!("trades-{}", &run[run.len().saturating_sub(12)..]).replace('_', "-");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create()?;
    let topics: Vec<(String, i32)> = vec![
        (format!("{run}-stocktrade"), 4),
        (format!("{run}-users"), 4),
        (format!("{run}-trade-settlements"), 4),
        (format!("{run}-user_trades.dlq"), 1),
    ];
    let new: Vec<NewTopic<'_>> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }

    // The data, with the CLI as a user would make it. Users first: the join is a stream-table
    // join, and a trade finds its user only if the user was there before it.
    let datagen = |quickstart: &str, topic: &str, count: u32| {
        let out = sluice()
            .args(["datagen", "--quickstart", quickstart, "--topic", topic, "--count", &count.to_string()])
            .args(["--bootstrap-servers", &bootstrap])
            .output()
            .expect("sluice datagen");
        assert!(out.status.success(), "datagen {quickstart}: {}", String::from_utf8_lossy(&out.stderr));
    };
    datagen("users", &format!("{run}-users"), 9);
    let trades = 300;
    datagen("stocktrade", &format!("{run}-stocktrade"), trades);

    // The Pipeline beside its handler, as a user keeps them.
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pipeline.yaml"), example(&run, &name))?;
    std::fs::copy(repo_root().join("examples/stocktrade/settle.py"), dir.join("settle.py"))?;
    let port = free_port();
    // Killed (and its children with it) if the test fails half-way.
    let mut sluice_run = sluice_tests::Service(
        sluice()
            .args(["run", "pipeline.yaml", "--bootstrap-servers", &bootstrap, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--state-dir", &dir.join("state").to_string_lossy()])
            .current_dir(&dir)
            .env("PYTHONPATH", &ric)
            .stdin(Stdio::null())
            .spawn()?,
    );

    // Every trade is settled once (the function is exactly-once).
    let (b, t) = (bootstrap.clone(), format!("{run}-trade-settlements"));
    let settlements =
        tokio::task::spawn_blocking(move || read_committed(&b, &t, trades as usize, Duration::from_secs(180))).await?;
    assert!(sluice_run.0.try_wait()?.is_none(), "sluice run is still running");
    assert_eq!(settlements.len(), trades as usize, "one settlement per trade");

    // The truth, from the inputs: each trade's disposition by the handler's rules.
    let (b, t) = (bootstrap.clone(), format!("{run}-stocktrade"));
    let inputs =
        tokio::task::spawn_blocking(move || read_committed(&b, &t, trades as usize, Duration::from_secs(60))).await?;
    let mut want: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for m in &inputs {
        let trade: Value = serde_json::from_slice(m.value.as_deref().unwrap_or_default())?;
        let user = trade["userid"].as_str().unwrap_or_default();
        // datagen's users are User_1..User_9, all produced before the trades.
        let known = (1..=9).any(|i| user == format!("User_{i}"));
        *want
            .entry((trade["symbol"].as_str().unwrap_or_default().to_owned(), disposition(&trade, known)))
            .or_default() += 1;
    }

    // The counts, read with `sluice query` as a user would: every (symbol, disposition) summed
    // over its windows equals the truth, once the processor has caught up.
    let tables = [
        ("COMPLETED_PER_MINUTE", "NUM_COMPLETED", "Completed"),
        ("PENDING_PER_MINUTE", "NUM_PENDING", "Pending"),
        ("FLAGGED_PER_MINUTE", "NUM_FLAGGED", "Flagged"),
        ("REJECTED_PER_MINUTE", "NUM_REJECTED", "Rejected"),
    ];
    let mut got = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        got.clear();
        for (table, column, disposition) in tables {
            let q = tokio::task::spawn_blocking(move || query(port, &format!("SELECT * FROM {table};"))).await?;
            for row in rows(&q) {
                let n: i64 = row.get(column).and_then(|c| c.parse().ok()).unwrap_or(0);
                *got.entry((row.get("SYMBOL").cloned().unwrap_or_default(), disposition)).or_insert(0) += n;
            }
        }
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(got, want, "per-minute counts per symbol and disposition, summed over windows");

    // The same counts as JSON and CSV, for scripts.
    let server = format!("http://127.0.0.1:{port}");
    let completed = |output: &str| {
        let out = sluice()
            .args(["query", "--server", &server, "--output", output, "SELECT * FROM COMPLETED_PER_MINUTE;"])
            .output()
            .expect("sluice query");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let want_completed: BTreeMap<String, i64> =
        want.iter().filter(|((_, d), _)| *d == "Completed").map(|((s, _), n)| (s.clone(), *n)).collect();
    let mut from_json: BTreeMap<String, i64> = BTreeMap::new();
    for row in serde_json::from_str::<Vec<Value>>(&completed("json"))? {
        *from_json.entry(row["SYMBOL"].as_str().unwrap_or_default().to_owned()).or_default() +=
            row["NUM_COMPLETED"].as_i64().unwrap_or(0);
    }
    assert_eq!(from_json, want_completed, "--output json");
    let csv = completed("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("SYMBOL,WINDOWSTART,WINDOWEND,NUM_COMPLETED"), "{csv}");
    let from_csv: i64 = lines.filter_map(|l| l.rsplit(',').next()?.parse::<i64>().ok()).sum();
    assert_eq!(from_csv, want_completed.values().sum::<i64>(), "--output csv");

    // The interactive session, through a pseudo-terminal as a user types into it.
    let history = dir.join("xdg-state");
    let (server_, history_) = (server.clone(), history.clone());
    tokio::task::spawn_blocking(move || interactive_session(&server_, &history_)).await??;
    let saved = std::fs::read_to_string(history.join("sluice/query_history"))?;
    assert!(saved.contains("SHOW TABLES;"), "the history is kept: {saved}");

    // Ctrl-C (here SIGTERM): everything stops cleanly.
    let status = tokio::task::spawn_blocking(move || sluice_run.terminate()).await?;
    assert!(status.success(), "sluice run: {status}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// `sluice query` with no statement, driven through a pseudo-terminal: a listing, a description,
/// a statement typed over three lines, a push query ended by Ctrl-C (the session goes on), exit.
fn interactive_session(server: &str, state: &std::path::Path) -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(["query", "--server", server]).env("XDG_STATE_HOME", state).env("TERM", "dumb");
    let mut p = rexpect::session::spawn_command(command, Some(30_000))?;
    p.exp_string("sluice> ")?;
    p.send_line("SHOW TABLES;")?;
    p.exp_string("COMPLETED_PER_MINUTE")?;
    p.exp_string("sluice> ")?;
    p.send_line("DESCRIBE COMPLETED_PER_MINUTE;")?;
    p.exp_string("| Field")?;
    p.exp_string("NUM_COMPLETED")?;
    p.exp_string("sluice> ")?;
    p.send_line("SELECT symbol, num_completed")?;
    p.exp_string("...> ")?;
    p.send_line("  FROM COMPLETED_PER_MINUTE")?;
    p.exp_string("...> ")?;
    p.send_line("  WHERE symbol = 'ZVV';")?;
    p.exp_string("| SYMBOL")?;
    p.exp_regex(r"\d+ rows?")?;
    p.exp_string("sluice> ")?;
    p.send_line("SELECT * FROM TRADE_SETTLEMENT EMIT CHANGES;")?;
    p.exp_string("DISPOSITION")?;
    p.send_control('c')?;
    p.exp_string("sluice> ")?;
    p.send_line("exit")?;
    p.exp_eof()?;
    Ok(())
}
