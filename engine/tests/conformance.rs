//! ksqlDB's query-validation tests as a regression gate: the seed tiers must stay above the
//! thresholds the SQL-engine issue sets (S ≥ 90%, S+ ≥ 80%), and the whole suite must not fall
//! below what it passed when this gate was last raised.

use std::path::{Path, PathBuf};

use sluice_engine::qtt;

/// Passing runs of the whole suite when the gate was last raised (docs/conformance.md).
const SUITE_FLOOR: usize = 695;

fn qtt_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/qtt");
    if root.join("seed-tier-cases.tsv").exists() {
        return Some(root);
    }
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "../shared/qtt is missing under CI=true");
    eprintln!("SKIPPED: ../shared/qtt not found");
    None
}

#[test]
fn seed_tiers_and_the_whole_suite_pass() {
    let Some(root) = qtt_root() else { return };
    let mut results = std::collections::BTreeMap::new();
    for dir in ["query-validation-tests", "rest-query-validation-tests"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(dir)).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            for r in qtt::run_file(&f, None).unwrap() {
                results.insert(r.name, r.failure);
            }
        }
    }
    let tsv = std::fs::read_to_string(root.join("seed-tier-cases.tsv")).unwrap();
    let mut tiers: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut failures = Vec::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, tier, format, name) = (cols[1], cols[3], cols[5], cols[6]);
        let stem = file.trim_end_matches(".json");
        let full = if format.is_empty() { format!("{stem} - {name}") } else { format!("{stem} - {name} - {format}") };
        let entry = tiers.entry(tier.to_owned()).or_default();
        entry.1 += 1;
        match results.get(&full) {
            Some(None) => entry.0 += 1,
            Some(Some(why)) => failures.push(format!("{tier} {full}: {why}")),
            None => failures.push(format!("{tier} {full}: not run")),
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    let rate = |t: &str| {
        let (p, n) = tiers[t];
        p as f64 / n as f64
    };
    eprintln!("tier S {:?}, tier S+ {:?}", tiers["S"], tiers["S+"]);
    assert!(rate("S") >= 0.90, "tier S below 90%: {:?}", tiers["S"]);
    assert!(rate("S+") >= 0.80, "tier S+ below 80%: {:?}", tiers["S+"]);
    let passed = results.values().filter(|f| f.is_none()).count();
    eprintln!("whole suite: {passed} of {}", results.len());
    assert!(passed >= SUITE_FLOOR, "the whole suite fell to {passed} passing runs (floor {SUITE_FLOOR})");
}

/// The runtime reads re-keyed streams through repartition topics. With one repartition
/// partition the results must be the ones of the fused plan: every case that passes one way
/// passes the other, and the only accepted differences are listed with their reason.
#[test]
fn repartition_topics_give_the_same_results() {
    let Some(root) = qtt_root() else { return };
    let mut differ = Vec::new();
    let mut compared = 0;
    for dir in ["query-validation-tests"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(dir)).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let fused = qtt::run_file(&f, None).unwrap();
            let routed = qtt::run_file_with(&f, None, qtt::Options { repartition: Some(1) }).unwrap();
            for (a, b) in fused.iter().zip(&routed) {
                compared += 1;
                if a.failure.is_none() != b.failure.is_none() {
                    differ.push(format!("{}: fused {:?}, repartitioned {:?}", a.name, a.failure, b.failure));
                }
            }
        }
    }
    for d in &differ {
        eprintln!("DIFFER {d}");
    }
    eprintln!("compared {compared} runs, {} differ", differ.len());
    assert!(differ.is_empty(), "{} runs differ with repartition topics", differ.len());
}
