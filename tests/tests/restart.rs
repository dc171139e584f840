//! A clean restart keeps the state: a customer who entered before the restart is still in the
//! journey after it, and nothing is emitted twice.

use std::time::Duration;

use waymark::config::InputFormat;
use waymark::model::CustomerEvent;
use waymark_e2e::*;

fn event(id: &str, event_type: &str, at: i64) -> Vec<u8> {
    let ev = CustomerEvent {
        event_id: id.into(),
        customer_id: "c1".into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: [
            ("email".to_owned(), "c1@example.com".to_owned()),
            ("sales_rep".to_owned(), "rep-1".to_owned()),
        ]
        .into(),
    };
    waymark::kafka::encode_event(&ev, InputFormat::Avro).unwrap()
}

fn count(outputs: &[serde_json::Value], field: &str, value: &str) -> usize {
    outputs.iter().filter(|v| v[field] == value).count()
}

#[test]
fn state_survives_a_clean_restart() {
    let scenario = Scenario::new("restart", 2, "allowed-lateness-secs: 1").unwrap();
    let now = now_millis();
    // Logged in 70 minutes ago: the +1h email is due, the +2d task is not.
    scenario
        .produce_raw(&[(Some("c1"), event("e1", "login.created", now - 70 * 60_000))])
        .unwrap();
    let first = scenario.start().unwrap();
    let before = scenario.await_outputs(4, Duration::from_secs(60)).unwrap();
    assert_eq!(count(&before, "type", "entered"), 1);
    assert_eq!(
        count(&before, "action", "invite-email"),
        2,
        "the command and its command_emitted event"
    );
    first.stop();

    // After the restart, the payment account completes the instance that entered before it.
    scenario
        .produce_raw(&[(
            Some("c1"),
            event("e2", "payment_account.created", now_millis() - 1_000),
        )])
        .unwrap();
    let second = scenario.start().unwrap();
    let after = scenario
        .await_outputs(before.len() + 1, Duration::from_secs(60))
        .unwrap();
    let second_log = second.stop();
    let completed: Vec<_> = after
        .iter()
        .filter(|v| v["type"] == "step_completed")
        .map(|v| v["step"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["login", "payment_account"]);
    assert_eq!(
        count(&after, "type", "entered"),
        1,
        "no second entry after the restart"
    );
    assert_eq!(
        count(&after, "kind", "command"),
        1,
        "the email, once; the task and call are cancelled"
    );
    assert!(
        !second_log.contains("disagree") && !second_log.contains("No local state"),
        "a clean restart needs no warning:\n{second_log}"
    );

    // The operator's "why": state inspect on the stopped processor's state.
    let inspect = run_ok(
        std::process::Command::new(waymark_bin())
            .args(["state", "inspect", "c1", "--state-dir"])
            .arg(scenario.dir.path().join("state"))
            .arg("--journeys")
            .arg(reference_journey()),
    );
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let instance = &report["explanation"]["journeys"][0]["instances"][0];
    let actions: Vec<(&str, &str)> = instance["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("invite-email", "sent"),
            ("assist-task", "cancelled"),
            ("sales-rep-call", "cancelled")
        ]
    );
    let reason = instance["actions"][1]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("step `payment_account` completed at"),
        "{reason}"
    );
    assert_eq!(report["profile"]["sales_rep"], "rep-1");

    // A lost state directory is rebuilt from the state changelog before processing goes on:
    // the customer is still in the journey, so their next step counts and nothing repeats.
    std::fs::remove_dir_all(scenario.dir.path().join("state")).unwrap();
    scenario
        .produce_raw(&[(
            Some("c1"),
            event("e3", "financials.provided", now_millis() - 1_000),
        )])
        .unwrap();
    let third = scenario.start().unwrap();
    let last = scenario
        .await_outputs(after.len() + 1, Duration::from_secs(60))
        .unwrap();
    let metrics = third.metrics().unwrap();
    assert!(
        metrics.contains("waymark_state_restoring_partitions 0"),
        "{metrics}"
    );
    let restored: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("waymark_state_restore_records_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        restored >= 2,
        "the changelog held the customer and the watermark: {restored}"
    );
    let log = third.stop();
    assert!(
        log.contains("Partition restored from the state changelog"),
        "{log}"
    );
    let completed: Vec<_> = last
        .iter()
        .filter(|v| v["type"] == "step_completed")
        .map(|v| v["step"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["login", "payment_account", "financials"]);
    assert_eq!(
        count(&last, "type", "entered"),
        1,
        "restored, not re-entered"
    );
    assert_eq!(count(&last, "kind", "command"), 1);
}
