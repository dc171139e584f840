//! Scale-out on the real broker: several `waymark run` instances in one consumer group share
//! the partitions, hand them over with their state (through the changelog) as instances join,
//! leave, die and come back — and what they committed together must still equal
//! `waymark simulate` on the same events: no command lost, none duplicated, no timer fired
//! twice or early across a hand-over.

use std::time::Duration;

use waymark::telemetry::{EVENTS_TOTAL, PARTITIONS_ASSIGNED, RESTORE_RECORDS_TOTAL};
use waymark_e2e::*;

/// Static members do not leave the group when they stop; the group notices after the session
/// timeout. 6 s (the broker's minimum) keeps scale-down fast here; production uses the default.
/// Small fetches make an instance work on all its partitions at once rather than one after
/// the other, so every partition has state to hand over early in the run.
const FAST_GROUP: [(&str, &str); 3] = [
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "500"),
    ("max.partition.fetch.bytes", "32768"),
];

fn customers() -> String {
    std::env::var("WAYMARK_SCALE_CUSTOMERS").unwrap_or_else(|_| "40000".into())
}

#[test]
fn two_instances_one_killed_and_restarted_mid_run() {
    let scenario = Scenario::with_kafka_properties("two-instances", 4, "", &FAST_GROUP).unwrap();
    let events = scenario.loadgen(&customers(), "21");
    let simulated = simulate_file(&events, now_millis()).unwrap();

    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;
    let a = scenario.start_instance("a").unwrap();
    let b = scenario.start_instance("b").unwrap();
    // The group has given `b` its share (about half), and `b` is well into it.
    b.await_metric(PARTITIONS_ASSIGNED, 1.0, Duration::from_secs(60))
        .unwrap();
    b.await_metric(EVENTS_TOTAL, produced / 10.0, Duration::from_secs(120))
        .unwrap();
    // Progress as the instances report it, just before the kill (reading the outputs back
    // after it takes long enough for the group to move on).
    let done = a.metric(EVENTS_TOTAL) + b.metric(EVENTS_TOTAL);
    b.kill();
    assert!(
        done < produced,
        "the kill landed after the run had finished ({done} of {produced} events)"
    );
    // The same instance comes back (same static membership id, same state directory).
    let b = scenario.start_instance("b").unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(240))
        .unwrap();
    let log_b = b.stop();
    let log_a = a.stop();
    assert_same_outputs(&kafka, &simulated);
    for log in [&log_a, &log_b] {
        assert!(!log.contains("ERROR"), "{log}");
    }
}

/// Transactions of at most this many events in the scale test, so that the newcomers join,
/// and leave again, while there is work left: with this, 84,195 of 150,988 events were done
/// when they left; unbounded, `a` sometimes worked off the whole trace first. The timers due
/// at the end fire at this many customers per commit, a few seconds for the trace's.
const SCALE_BATCH: &str = "max-batch-events: 300";

#[test]
fn scale_one_to_three_to_one_mid_run() {
    let scenario = Scenario::with_kafka_properties("scale", 6, SCALE_BATCH, &FAST_GROUP).unwrap();
    let events = scenario.loadgen(&customers(), "23");
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;

    let a = scenario.start_instance("a").unwrap();
    // `a` alone builds (and commits) state in every partition first.
    scenario
        .await_committed_everywhere(6, Duration::from_secs(120))
        .unwrap();
    // 1 → 3: the newcomers take partitions, restoring what `a` had built from the changelog.
    let b = scenario.start_instance("b").unwrap();
    let c = scenario.start_instance("c").unwrap();
    for joined in [&b, &c] {
        joined
            .await_metric(PARTITIONS_ASSIGNED, 1.0, Duration::from_secs(60))
            .unwrap();
        joined
            .await_metric(EVENTS_TOTAL, 1.0, Duration::from_secs(60))
            .unwrap();
    }
    let restored_by_newcomers = b.metric(RESTORE_RECORDS_TOTAL) + c.metric(RESTORE_RECORDS_TOTAL);
    let done = a.metric(EVENTS_TOTAL) + b.metric(EVENTS_TOTAL) + c.metric(EVENTS_TOTAL);
    // 3 → 1 while there is still work: `a` gets the partitions back and must notice that its
    // local copy of them is stale.
    let log_b = b.stop();
    let log_c = c.stop();
    assert!(
        done < produced,
        "scale-down landed after the run had finished ({done} of {produced} events)"
    );
    a.await_metric(PARTITIONS_ASSIGNED, 6.0, Duration::from_secs(60))
        .unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(240))
        .unwrap();
    let restored_by_a = a.metric(RESTORE_RECORDS_TOTAL);
    let log_a = a.stop();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        restored_by_newcomers > 0.0,
        "the newcomers took over partitions without restoring their state; logs:\n{log_b}\n{log_c}"
    );
    assert!(
        restored_by_a > 0.0,
        "`a` took its partitions back without restoring the newer state; log:\n{log_a}"
    );
    for log in [&log_a, &log_b, &log_c] {
        assert!(!log.contains("ERROR"), "{log}");
    }
}
