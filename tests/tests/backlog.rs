//! Working off a backlog: a processor that starts behind keeps each batch open past
//! `commit-interval-ms`, up to `backlog-commit-interval-ms` or until it has caught up, so the
//! backlog commits in a few large transactions instead of one every `commit-interval-ms`; the
//! committed output is the same. And the opposite bound: when the wall clock makes many
//! customers due at once (after an outage), each transaction fires at most
//! `max-batch-events` of them.

use std::time::Duration;

use waymark::telemetry::{
    BATCH_ENDS_TOTAL, BATCHES_EXTENDED_TOTAL, TIMER_LATENESS_SECONDS, TRANSACTIONS_TOTAL,
};
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
    let ended =
        |reason: &str| processor.metric(&format!("{BATCH_ENDS_TOTAL}{{reason=\"{reason}\"}}"));
    let (caught_up, waited_out) = (ended("caught_up"), ended("backlog_interval"));
    let log = processor.stop();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        extended >= 1.0,
        "no batch was kept open for the backlog of {produced} events; log:\n{log}"
    );
    // One transaction every 100 ms would be dozens for this backlog; kept open, a batch ends
    // when the consumer finds nothing more to read, so there are a few.
    assert!(
        committed <= 8.0,
        "{committed} transactions for a backlog of {produced} events ({extended} batches kept open)"
    );
    // What ended the batches kept open: catching up, never the minute.
    assert!(
        caught_up >= 1.0 && waited_out == 0.0,
        "batches kept open ended caught up {caught_up} times and at backlog-commit-interval-ms \
         {waited_out} times; log:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn timers_due_together_fire_in_transactions_of_max_batch_events() {
    const CUSTOMERS: usize = 100;
    const PER_TRANSACTION: usize = 10;
    let scenario = Scenario::new(
        "timers-due",
        2,
        &format!("allowed-lateness-secs: 0\nmax-batch-events: {PER_TRANSACTION}"),
    )
    .unwrap();
    // Every customer logged in at the same moment, so that the +1h invite email is due for
    // all of them at once, 20 s from now.
    let due = now_millis() + 20_000;
    let logins: Vec<_> = (0..CUSTOMERS)
        .map(|i| {
            let customer = format!("c{i:03}");
            let email = format!("{customer}@example.com");
            customer_event(
                &format!("e{i}"),
                &customer,
                "login.created",
                due - 3_600_000,
                &[("email", &email), ("sales_rep", "rep-1")],
            )
        })
        .collect();
    let events = scenario.dir.path().join("logins.jsonl");
    write_events(&events, &logins).unwrap();
    scenario.produce_file(&events).unwrap();

    // The processor takes in the logins and stops before the invites are due: an outage.
    let first = scenario.start().unwrap();
    let entered = scenario
        .await_outputs(CUSTOMERS, Duration::from_secs(15))
        .unwrap();
    first.stop();
    assert!(
        now_millis() < due,
        "the first run took until the invites were due; nothing left to test"
    );
    let commands =
        |outputs: &[serde_json::Value]| outputs.iter().filter(|v| v["kind"] == "command").count();
    assert_eq!(commands(&entered), 0, "no invite before it is due");
    std::thread::sleep(Duration::from_millis(
        (due - now_millis()).max(0) as u64 + 500,
    ));

    // Back after they came due: all are due at once, and go out ten customers a transaction.
    let second = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    assert_eq!(commands(&simulated), CUSTOMERS, "one invite each");
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(30))
        .unwrap();
    let fired = second.metric(&format!("{TIMER_LATENESS_SECONDS}_count"));
    let transactions = second.metric(TRANSACTIONS_TOTAL);
    let log = second.stop();
    assert_same_outputs(&kafka, &simulated);
    assert_eq!(
        fired, CUSTOMERS as f64,
        "every invite went out on its timer"
    );
    assert!(
        transactions >= (CUSTOMERS / PER_TRANSACTION) as f64,
        "{CUSTOMERS} customers due at once went out in {transactions} transactions; at most \
         {PER_TRANSACTION} may fire in one"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
