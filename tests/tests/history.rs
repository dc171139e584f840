//! `waymark simulate --from-topic` and `waymark backtest --from-topic` read their history from
//! a range of a real topic: the whole topic gives what `simulate` gives on the file the topic
//! was produced from, a range ending before the first record gives nothing, and undecodable
//! records are skipped and counted, not fatal.

use std::collections::BTreeSet;
use std::process::Command;

use waymark_e2e::*;

fn waymark(args: &[&str]) -> (String, String) {
    let out = Command::new(waymark_bin()).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "waymark {args:?}: {stderr}");
    (stdout, stderr)
}

fn ids(jsonl: &str) -> BTreeSet<String> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| id_of(&v))
        .collect()
}

#[test]
fn simulate_and_backtest_read_a_topic_range_as_they_read_a_file() {
    let scenario = Scenario::new("history", 3, "").unwrap();
    let file = scenario.loadgen("400", "5");
    // One record that is not a customer event: skipped and counted.
    scenario
        .produce_raw(&[(Some("junk"), b"not avro".to_vec())])
        .unwrap();
    let journeys = reference_journey();
    let until = "2026-06-01T00:00:00Z";
    let topic = scenario.topics.customer_events.clone();
    let brokers = brokers();
    let (from_file, _) = waymark(&[
        "simulate",
        "--journeys",
        journeys.to_str().unwrap(),
        "--events",
        file.to_str().unwrap(),
        "--until",
        until,
    ]);
    let from_topic_with = |more: &[&str]| {
        let mut args = vec![
            "simulate",
            "--journeys",
            journeys.to_str().unwrap(),
            "--from-topic",
            &topic,
            "--brokers",
            &brokers,
        ];
        args.extend_from_slice(more);
        waymark(&args)
    };
    let (from_topic, stderr) = from_topic_with(&["--until", until]);
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(
        stderr.contains(&format!("history: {lines} events from 3 partitions"))
            && stderr.contains("(1 records skipped as undecodable)"),
        "{stderr}"
    );
    let want = ids(&from_file);
    assert!(want.len() > 1000);
    let got = ids(&from_topic);
    assert!(
        got == want,
        "{} outputs only from the file, {} only from the topic",
        want.difference(&got).count(),
        got.difference(&want).count()
    );

    // A range that ends before anything was produced holds nothing.
    let (empty, stderr) = from_topic_with(&["--to", "2020-01-01T00:00:00Z"]);
    assert!(empty.trim().is_empty(), "{empty}");
    assert!(stderr.contains("history: 0 events"), "{stderr}");

    // The backtest of the journey against itself over the topic changes nothing.
    let (report, _) = waymark(&[
        "backtest",
        "--journey",
        journeys.to_str().unwrap(),
        "--against",
        journeys.to_str().unwrap(),
        "--from-topic",
        &topic,
        "--brokers",
        &brokers,
        "--until",
        until,
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["customers_changed"], 0);
    assert!(
        report["commands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["a"] == d["b"])
    );
    assert!(report["events"].as_u64().unwrap() as usize >= lines);
}
