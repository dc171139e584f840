//! The reference onboarding journey end to end on the real broker: what `waymark run` commits
//! to Kafka equals `waymark simulate` on the same events, record for record.

use std::time::Duration;

use waymark_e2e::*;

#[test]
fn golden_trace_through_kafka_passes_the_checker_and_equals_simulate() {
    let golden = golden_dir();
    let events = golden.join("events.jsonl");
    let scenario = Scenario::new("golden", 3, "").unwrap();
    // A backlog, as after an outage: every event is in Kafka before the processor starts.
    assert_eq!(scenario.produce_file(&events).unwrap(), 1449);
    let processor = scenario.start().unwrap();
    // The trace lies in the past: once caught up, the wall clock fires every timer.
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(120))
        .unwrap();
    // SIGTERM drains and exits 0.
    processor.stop();
    assert_same_outputs(&kafka, &simulated);

    let out = scenario.dir.path().join("kafka-output.jsonl");
    let text: String = kafka.iter().map(|v| v.to_string() + "\n").collect();
    std::fs::write(&out, text).unwrap();
    let check = std::process::Command::new("python3")
        .arg(golden.join("check.py"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && report.contains("PASS"),
        "check.py on Kafka output:\n{report}"
    );
}

#[test]
fn loadgen_trace_of_a_thousand_customers_through_kafka_equals_simulate() {
    let scenario = Scenario::new("loadgen", 4, "").unwrap();
    let events = scenario.loadgen("1200", "7");
    let lines = std::fs::read_to_string(&events).unwrap().lines().count();
    assert!(lines > 4000, "loadgen wrote only {lines} events");
    let processor = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    assert!(
        simulated.iter().any(|v| v["kind"] == "command"),
        "the trace should call for commands"
    );
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(180))
        .unwrap();
    let metrics = processor.metrics().unwrap();
    assert!(
        metrics.contains("waymark_pipeline_transactions_total{result=\"committed\"}"),
        "{metrics}"
    );
    // Every part of a commit is timed, once per committed transaction (a commit under way
    // while the metrics are read may have timed some parts already).
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    let committed = sample("waymark_pipeline_commit_duration_seconds_count");
    assert!(committed > 0.0, "{metrics}");
    for phase in ["prepare", "offsets", "flush", "end", "state_write"] {
        let count = sample(&format!(
            "waymark_pipeline_commit_phase_duration_seconds_count{{phase=\"{phase}\"}}"
        ));
        assert!(
            (committed..=committed + 1.0).contains(&count),
            "phase {phase}: {count} for {committed} commits:\n{metrics}"
        );
    }
    processor.stop();
    assert_same_outputs(&kafka, &simulated);
}
