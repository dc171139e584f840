//! Customer protection on the real broker: `waymark run` with `protections:` in its config
//! blocks the invite email of a customer on the suppression list (a `command_suppressed`
//! journey event with the reason instead of the command), sends everyone else's, and agrees
//! with `simulate --protections` record by record; `state inspect` says why.

use std::time::Duration;

use waymark::model::CustomerEvent;
use waymark_e2e::*;

fn event(
    id: &str,
    customer: &str,
    event_type: &str,
    at: i64,
    attrs: &[(&str, &str)],
) -> CustomerEvent {
    CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn a_customer_on_the_suppression_list_gets_no_email_and_the_journey_event_says_why() {
    let protections = root().join("deploy/examples/protections.yaml");
    let extra = format!(
        "allowed-lateness-secs: 1\nprotections: {}\n",
        protections.display()
    );
    let scenario = Scenario::new("protect", 2, &extra).unwrap();
    let t = now_millis() - 2 * 3_600_000;
    let email = |c: &str| format!("{c}@example.com");
    let events = [
        event(
            "q1",
            "quiet",
            "login.created",
            t,
            &[("email", &email("quiet"))],
        ),
        event(
            "q2",
            "quiet",
            "customer.suppressed",
            t + 10 * 60_000,
            &[("channel", "email")],
        ),
        event(
            "l1",
            "loud",
            "login.created",
            t,
            &[("email", &email("loud"))],
        ),
    ];
    let file = scenario.dir.path().join("events.jsonl");
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(&file, text).unwrap();
    scenario.produce_file(&file).unwrap();

    let simulated = simulate_journeys(
        &reference_journey(),
        Some(&protections),
        &file,
        now_millis(),
        1_000,
    )
    .unwrap();
    let processor = scenario.start().unwrap();
    let kafka = match scenario.await_outputs(simulated.len(), Duration::from_secs(60)) {
        Ok(k) => k,
        Err(e) => panic!("{e}; log:\n{}", processor.log_text()),
    };
    let log = processor.stop();
    assert!(log.contains("Customer protection loaded."), "{log}");
    assert_same_outputs(&kafka, &simulated);

    let commands: Vec<_> = kafka
        .iter()
        .filter(|v| v["kind"] == "command")
        .map(|v| v["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["loud"]);
    let blocked: Vec<_> = kafka
        .iter()
        .filter(|v| v["type"] == "command_suppressed")
        .collect();
    assert_eq!(blocked.len(), 1, "{kafka:?}");
    assert_eq!(blocked[0]["customer_id"], "quiet");
    assert_eq!(blocked[0]["action"], "invite-email");
    assert!(
        blocked[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("suppression list (since "),
        "{:?}",
        blocked[0]
    );

    let report = scenario
        .inspect_with(
            "quiet",
            &reference_journey(),
            &["--protections", protections.to_str().unwrap()],
        )
        .unwrap();
    let invite = &report["explanation"]["journeys"][0]["instances"][0]["actions"][0];
    assert_eq!(invite["status"], "suppressed", "{report}");
    assert!(
        invite["reason"]
            .as_str()
            .unwrap()
            .starts_with("suppression list"),
        "{report}"
    );
}
