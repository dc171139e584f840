//! Erasure and retention on the real broker: `waymark forget` erases a customer's state in the
//! processor and tombstones the state changelog, and retention compacts finished instances
//! away (or deletes customers who never entered), so a partition restored from the changelog
//! brings back neither.

use std::process::Command;
use std::time::Duration;

use waymark::config::InputFormat;
use waymark::model::CustomerEvent;
use waymark_e2e::*;

fn login(customer: &str, at: i64) -> (Option<String>, Vec<u8>) {
    let ev = CustomerEvent {
        event_id: format!("{customer}-login"),
        customer_id: customer.into(),
        event_type: "login.created".into(),
        occurred_at: at,
        attributes: [("email".to_owned(), format!("{customer}@example.com"))].into(),
    };
    (
        Some(customer.to_owned()),
        waymark::kafka::encode_event(&ev, InputFormat::Avro).unwrap(),
    )
}

#[test]
fn forget_erases_local_state_and_the_changelog() {
    let scenario = Scenario::new("forget", 1, "allowed-lateness-secs: 1").unwrap();
    let now = now_millis();
    let records = [
        login("gone", now - 70 * 60_000),
        login("kept", now - 70 * 60_000),
    ];
    let raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (k.as_deref(), v.clone()))
        .collect();
    scenario.produce_raw(&raw).unwrap();
    let processor = scenario.start().unwrap();
    scenario.await_outputs(8, Duration::from_secs(60)).unwrap();

    run_ok(
        Command::new(waymark_bin())
            .args(["forget", "gone", "--brokers", &brokers(), "--topic"])
            .arg(&scenario.topics.customer_events),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let handled = format!(
        "waymark_pipeline_events_total{{result=\"forgotten\",type=\"{}\"}} 1",
        waymark::runtime::FORGET_EVENT_TYPE
    );
    while !processor.metrics().unwrap().contains(&handled) {
        assert!(
            std::time::Instant::now() < deadline,
            "the forget request was not handled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    processor.stop();
    assert!(
        scenario.inspect("gone", &reference_journey()).is_none(),
        "erased from the local state"
    );
    assert!(scenario.inspect("kept", &reference_journey()).is_some());

    // Rebuilt from the changelog alone, the partition still does not know the customer.
    std::fs::remove_dir_all(scenario.dir.path().join("state")).unwrap();
    let processor = scenario.start().unwrap();
    let log = processor.stop();
    assert!(
        log.contains("Partition restored from the state changelog"),
        "{log}"
    );
    assert!(
        scenario.inspect("gone", &reference_journey()).is_none(),
        "the changelog holds a tombstone"
    );
    assert!(
        scenario.inspect("kept", &reference_journey()).is_some(),
        "the others are restored"
    );
}

fn event(
    id: &str,
    customer: &str,
    event_type: &str,
    at: i64,
    line: &str,
) -> (Option<String>, Vec<u8>) {
    let ev = CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: [("product_line".to_owned(), line.to_owned())].into(),
    };
    (
        Some(customer.to_owned()),
        waymark::kafka::encode_event(&ev, InputFormat::Avro).unwrap(),
    )
}

#[test]
fn retention_compacts_finished_instances_locally_and_in_the_changelog() {
    let scenario = Scenario::new(
        "retention",
        1,
        "allowed-lateness-secs: 1\nretention-secs: 3600",
    )
    .unwrap();
    let t = now_millis() - 3 * 3_600_000;
    let records = [
        // Reaches the goal (an order from a second product line) two minutes in.
        event("d1", "done", "login.created", t, ""),
        event("d2", "done", "order.placed", t + 60_000, "paper"),
        event("d3", "done", "order.placed", t + 120_000, "office"),
        // Never enters the journey.
        event("s1", "stray", "payment_account.created", t, ""),
        // Still active (no payment account, no goal): kept whatever its age.
        login("active", t),
    ];
    let raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (k.as_deref(), v.clone()))
        .collect();
    scenario.produce_raw(&raw).unwrap();
    let check = |when: &str| {
        let done = scenario
            .inspect("done", &reference_journey())
            .expect("a compacted customer is kept");
        let journey = &done["explanation"]["journeys"][0];
        assert_eq!(journey["retired_instances"], 1, "{when}: {done}");
        assert_eq!(
            journey["instances"].as_array().unwrap().len(),
            0,
            "{when}: {done}"
        );
        assert_eq!(
            done["events"].as_array().unwrap().len(),
            0,
            "{when}: {done}"
        );
        assert!(
            scenario.inspect("stray", &reference_journey()).is_none(),
            "{when}: deleted"
        );
        let active = scenario
            .inspect("active", &reference_journey())
            .expect("an active customer is kept");
        assert_eq!(active["events"].as_array().unwrap().len(), 1, "{when}");
    };
    let processor = scenario.start().unwrap();
    // done: entered, 4 steps completed, goal reached; active: entered, login completed, the
    // one-hour email and its command_emitted (the two-day task is not due yet).
    scenario.await_outputs(10, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    processor.stop();
    check("local state");

    // Rebuilt from the changelog alone: the same.
    std::fs::remove_dir_all(scenario.dir.path().join("state")).unwrap();
    let processor = scenario.start().unwrap();
    processor.stop();
    check("restored from the changelog");
}
