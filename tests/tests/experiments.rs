//! An A/B-tested journey on the real broker: every command carries the customer's variant
//! (through Avro, on the real topics), the holdout gets a `command_suppressed` instead, the
//! committed output equals `waymark simulate`, and the analytics view's experiment report
//! equals the same report folded from simulate's journey events.

use std::time::Duration;

use serde_json::Value;
use waymark::analytics::{Aggregates, Definitions, Progress};
use waymark::journey::JourneySet;
use waymark::model::JourneyEvent;
use waymark_e2e::*;

const EXPERIMENT: &str = "payment-invite";

#[test]
fn variants_and_the_holdout_go_through_kafka_and_the_report_equals_simulate() {
    let journeys = root().join("deploy/examples/b2b-onboarding-ab.yaml");
    let scenario = Scenario::new("experiment", 3, "").unwrap();
    scenario.use_journeys(&journeys).unwrap();
    let events = scenario.loadgen("1500", "21");
    let processor = scenario.start().unwrap();
    let simulated = simulate_journeys(&journeys, None, &events, now_millis(), 300_000).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(180))
        .unwrap();
    processor.stop();
    assert_same_outputs(&kafka, &simulated);

    // Every arm is in the output: variants on commands (and their journey events), the
    // holdout as a suppression with its reason.
    let variants: std::collections::BTreeSet<&str> = kafka
        .iter()
        .filter(|v| v["kind"] == "command" && v["action"] == "invite-email")
        .map(|v| {
            v["variant"]
                .as_str()
                .expect("every invite carries a variant")
        })
        .collect();
    assert_eq!(
        variants.into_iter().collect::<Vec<_>>(),
        ["email-15m", "email-1h", "sms-1h"]
    );
    assert!(kafka.iter().any(|v| v["kind"] == "command"
        && v["variant"] == "sms-1h"
        && v["channel"] == "sms"
        && v["template"] == "payment-account-reminder"));
    let held: Vec<&Value> = kafka
        .iter()
        .filter(|v| v["type"] == "command_suppressed" && v["variant"] == "holdout")
        .collect();
    assert!(!held.is_empty());
    assert!(
        held.iter()
            .all(|v| v["reason"] == format!("holdout of experiment {EXPERIMENT}"))
    );

    // The report the view serves equals the one folded from simulate's journey events.
    let view = scenario.start_analytics("a").unwrap();
    let addr = view.http_addr().to_owned();
    let journey_events: Vec<JourneyEvent> = simulated
        .iter()
        .filter(|v| v["kind"] == "journey_event")
        .map(|v| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("kind");
            serde_json::from_value(v).unwrap()
        })
        .collect();
    await_view(&addr, journey_events.len() as u64, Duration::from_secs(120));
    let defs = Definitions::of(&JourneySet::load(&journeys).unwrap());
    let mut folded = Aggregates::default();
    let mut progress: std::collections::BTreeMap<(String, String), Progress> = Default::default();
    for e in &journey_events {
        let p = progress
            .entry((e.customer_id.to_string(), e.journey.to_string()))
            .or_default();
        folded.apply(&defs, p, e);
    }
    let want = serde_json::to_value(folded.experiment(&defs, EXPERIMENT, None).unwrap()).unwrap();
    let got = get_json(&addr, &format!("/api/experiments/{EXPERIMENT}"));
    assert_eq!(got, want);
    let exposed: u64 = got["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap())
        .sum();
    assert!(exposed > 500, "{got}");
    assert_eq!(got["arms"][0]["arm"], "holdout");
    assert_eq!(got["awaited_step"], "payment_account");

    let cli = analytics_cli(&addr, &["experiment", EXPERIMENT]);
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        table.starts_with(&format!(
            "experiment {EXPERIMENT} on b2b-onboarding-ab / invite-email"
        )) && table.contains("email-15m"),
        "{table}"
    );
    let missing = analytics_cli(&addr, &["experiment", "nope"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains(EXPERIMENT),
        "{err}"
    );
    view.stop();
}
