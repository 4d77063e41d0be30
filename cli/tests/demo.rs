//! `sluice run` with no Kafka given: it starts a real Apache Kafka broker of its own (jars from
//! the cache the test suite shares, Java from the machine), creates the Pipeline's topics, says
//! where to produce, and runs the seed example on it with exactly-once kept: `sluice datagen`
//! into it, the settle function through the real `awslambdaric` in the Python environment `sluice
//! run` makes, `sluice query` out of it — every trade counted once.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use sluice_tests::{free_port, repo_root, unique};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn the_demo_needs_no_kafka() {
    let Some(ric) = sluice_tests::awslambdaric() else { return };
    let dir = std::env::temp_dir().join(unique("demo"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["pipeline.yaml", "settle.py"] {
        std::fs::copy(repo_root().join("examples/stocktrade").join(file), dir.join(file)).unwrap();
    }
    let port = free_port();
    let mut child = sluice_tests::Service(
        sluice()
            .args(["run", "pipeline.yaml", "--listen", &format!("127.0.0.1:{port}"), "--state-dir", "state"])
            .current_dir(&dir)
            .env("PYTHONPATH", &ric)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The embedded Kafka's address, from what `sluice run` tells the user; the rest of the
    // output keeps being drained (and shown).
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(at) = line.split("--bootstrap-servers ").nth(1) {
                let _ = tx.send(at.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    });
    let bootstrap = rx.recv_timeout(Duration::from_secs(60)).expect("sluice run names its embedded Kafka");

    for (quickstart, count) in [("users", "9"), ("stocktrade", "200")] {
        let out = sluice()
            .args(["datagen", "--quickstart", quickstart, "--topic", quickstart, "--count", count])
            .args(["--bootstrap-servers", &bootstrap])
            .output()
            .unwrap();
        assert!(out.status.success(), "datagen {quickstart}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Every trade settled and counted under one of the four dispositions.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut total = 0;
    while std::time::Instant::now() < deadline {
        total = 0;
        for (table, column) in [
            ("COMPLETED_PER_MINUTE", "NUM_COMPLETED"),
            ("PENDING_PER_MINUTE", "NUM_PENDING"),
            ("FLAGGED_PER_MINUTE", "NUM_FLAGGED"),
            ("REJECTED_PER_MINUTE", "NUM_REJECTED"),
        ] {
            let out = sluice()
                .args([
                    "query",
                    "--server",
                    &format!("http://127.0.0.1:{port}"),
                    &format!("SELECT {column} FROM {table};"),
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            total += text
                .lines()
                .filter(|l| l.starts_with('|'))
                .skip(1)
                .filter_map(|l| l.trim_matches('|').trim().parse::<i64>().ok())
                .sum::<i64>();
        }
        if total == 200 {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(total, 200, "every trade counted once");
    let status = child.terminate();
    assert!(status.success(), "sluice run: {status}");
    std::fs::remove_dir_all(&dir).ok();
}
