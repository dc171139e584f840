//! Working off a backlog: a processor that starts behind keeps each batch open past
//! `commit-interval-ms`, up to `backlog-commit-interval-ms` or until it has caught up, so the
//! backlog commits in a few large transactions instead of one every `commit-interval-ms`; the
//! committed output is the same.

use std::time::Duration;

use waymark::telemetry::{BATCHES_EXTENDED_TOTAL, TRANSACTIONS_TOTAL};
use waymark_e2e::*;

#[test]
fn a_backlog_commits_in_a_few_large_transactions_with_the_same_output() {
    // Every 100 ms (the scenarios' commit-interval-ms), or up to a minute while behind: the
    // minute must never be reached, since the batch closes once the consumer has caught up.
    let scenario = Scenario::new(
        "backlog",
        2,
        "backlog-commit-interval-ms: 60000\nmax-batch-events: 1000000",
    )
    .unwrap();
    let events = scenario.loadgen("20000", "31");
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;
    let simulated = simulate_file(&events, now_millis()).unwrap();

    let processor = scenario.start().unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(40))
        .unwrap();
    let extended = processor.metric(BATCHES_EXTENDED_TOTAL);
    let committed = processor.metric(TRANSACTIONS_TOTAL);
    let log = processor.stop();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        extended >= 1.0,
        "no batch was kept open for the backlog of {produced} events; log:\n{log}"
    );
    // One transaction every 100 ms would be dozens for this backlog; kept open, a batch ends
    // when a partition reaches its end, so there are a few.
    assert!(
        committed <= 8.0,
        "{committed} transactions for a backlog of {produced} events ({extended} batches kept open)"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
