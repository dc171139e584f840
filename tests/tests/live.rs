//! A live stream and an immediate action. `waymark loadgen --live` stamps each event with the
//! time it is sent; with an action of `delay: 0s` and `allowed-lateness-secs: 0`, the
//! processor sends the command while it handles the event that caused it, not later on a
//! timer; `waymark tail --received-at` shows when each command became readable, and prints
//! each record as it arrives. This is what `make bench`'s latency phase relies on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use waymark::model::parse_millis;
use waymark::telemetry::{EVENT_TO_COMMAND_SECONDS, TIMER_LATENESS_SECONDS};
use waymark_e2e::*;

/// `field` of a record as epoch milliseconds.
fn millis(v: &Value, field: &str) -> i64 {
    let text = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"));
    parse_millis(text).unwrap_or_else(|e| panic!("{field} of {v}: {e}"))
}

#[test]
fn an_immediate_action_goes_out_with_its_event_on_a_live_stream() {
    let scenario = Scenario::new("live", 2, "allowed-lateness-secs: 0").unwrap();
    let reference = std::fs::read_to_string(reference_journey()).unwrap();
    let immediate = reference.replace(
        "id: invite-email\n        delay: 1h",
        "id: invite-email\n        delay: 0s",
    );
    assert_ne!(immediate, reference, "the invite email's delay moved");
    let journeys = scenario.dir.path().join("immediate.yaml");
    std::fs::write(&journeys, immediate).unwrap();
    scenario.use_journeys(&journeys).unwrap();
    let processor = scenario.start().unwrap();

    let before = now_millis();
    run_ok(
        Command::new(waymark_bin())
            .args(["--config", scenario.config.to_str().unwrap()])
            .args([
                "loadgen",
                "--customers",
                "300",
                "--seed",
                "8",
                "--rate",
                "600",
            ])
            .args(["--live", "--brokers", &brokers()])
            .args(["--topic", &scenario.topics.customer_events]),
    );
    let after = now_millis();

    // What was sent, with its live stamps, in event-time order: `simulate` over it is what
    // the processor must have produced.
    let mut sent = scenario
        .read(&[&scenario.topics.customer_events], Duration::from_secs(3))
        .unwrap();
    assert!(sent.len() > 300, "only {} events were sent", sent.len());
    for ev in &sent {
        let at = millis(ev, "occurred_at");
        assert!(
            (before..=after).contains(&at),
            "{ev} is not stamped with the time it was sent ({before}..={after})"
        );
    }
    sent.sort_by_key(|ev| millis(ev, "occurred_at"));
    let trace = scenario.dir.path().join("sent.jsonl");
    let lines: Vec<String> = sent
        .into_iter()
        .map(|mut ev| {
            ev.as_object_mut().unwrap().remove("kind");
            ev.to_string()
        })
        .collect();
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let simulated = simulate_journeys(&journeys, None, &trace, now_millis(), 0).unwrap();
    let invites = simulated
        .iter()
        .filter(|v| v["kind"] == "command" && v["action"] == "invite-email")
        .count();
    assert!(invites > 200, "{invites} invites in {simulated:?}");

    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(30))
        .unwrap();
    assert_same_outputs(&kafka, &simulated);
    // Every invite went out in the handling of its login, none on a timer.
    let at_once = processor.metric(&format!("{EVENT_TO_COMMAND_SECONDS}_count"));
    let timed = processor.metric(&format!("{TIMER_LATENESS_SECONDS}_count"));
    assert_eq!((at_once, timed), (invites as f64, 0.0));
    let log = processor.stop();
    assert!(!log.contains("ERROR"), "{log}");

    // `tail --received-at` prints each record when it has caught up, long before it exits
    // (it never does on its own here): a command's received_at is after it was due.
    let mut tail = Command::new(waymark_bin())
        .args(["--config", scenario.config.to_str().unwrap()])
        .args([
            "tail",
            "--brokers",
            &brokers(),
            "--from-beginning",
            "--received-at",
        ])
        .arg(&scenario.topics.commands_email)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for _ in 0..invites {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tail printed nothing while it ran: its output is not flushed");
        let command: Value = serde_json::from_str(&line).unwrap();
        let (due, received) = (millis(&command, "due_at"), millis(&command, "received_at"));
        assert!(
            due <= received && received <= now_millis(),
            "received_at is not when it was read: {command}"
        );
        // Produced while its login was handled, after the login was stamped and before the
        // transaction holding it committed and it could be read.
        let produced = millis(&command, "produced_at");
        assert!(
            due <= produced && produced <= received,
            "produced_at is not when the processor produced it: {command}"
        );
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}
