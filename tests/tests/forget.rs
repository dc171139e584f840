//! Right to be forgotten on the real broker: `waymark forget` erases a customer's state in the
//! processor and tombstones the state changelog, so a partition restored from the changelog
//! does not bring the customer back.

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

/// `waymark state inspect` of a stopped processor: Some(report) or None when not found.
fn inspect(scenario: &Scenario, customer: &str) -> Option<serde_json::Value> {
    let out = Command::new(waymark_bin())
        .args(["state", "inspect", customer, "--state-dir"])
        .arg(scenario.dir.path().join("state"))
        .arg("--journeys")
        .arg(reference_journey())
        .output()
        .unwrap();
    if out.status.success() {
        return Some(serde_json::from_slice(&out.stdout).unwrap());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in none of the"), "{stderr}");
    None
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

    let out = Command::new(waymark_bin())
        .args(["forget", "gone", "--brokers", &brokers(), "--topic"])
        .arg(&scenario.topics.customer_events)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !processor
        .metrics()
        .unwrap()
        .contains("result=\"forgotten\"} 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the forget request was not handled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    processor.stop();
    assert!(
        inspect(&scenario, "gone").is_none(),
        "erased from the local state"
    );
    assert!(inspect(&scenario, "kept").is_some());

    // Rebuilt from the changelog alone, the partition still does not know the customer.
    std::fs::remove_dir_all(scenario.dir.path().join("state")).unwrap();
    let processor = scenario.start().unwrap();
    let log = processor.stop();
    assert!(
        log.contains("Partition restored from the state changelog"),
        "{log}"
    );
    assert!(
        inspect(&scenario, "gone").is_none(),
        "the changelog holds a tombstone"
    );
    assert!(
        inspect(&scenario, "kept").is_some(),
        "the others are restored"
    );
}
