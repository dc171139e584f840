//! Outcomes in the processor, end to end: `waymark sink email` delivers one invite to a real
//! SMTP server and has the other rejected for good; it reports both on
//! `intervention-outcomes`; `waymark run` reads them back, records each on its customer
//! (`state inspect` explains the invite as delivered or bounced), and the example journey
//! `deploy/examples/email-bounce-fallback.yaml` turns the bounce into an SMS. `simulate`, given
//! the same events plus the outcomes as `intervention.<status>` events, says exactly the same.

use std::time::{Duration, Instant};

use waymark::codec::{decode_command, decode_outcome};
use waymark::model::CustomerEvent;
use waymark::telemetry::OUTCOMES_TOTAL;
use waymark_e2e::*;

fn login(customer: &str, at: i64, email: &str, phone: &str) -> CustomerEvent {
    customer_event(
        &format!("{customer}-login"),
        customer,
        "login.created",
        at,
        &[("email", email), ("phone", phone)],
    )
}

#[test]
fn a_bounced_invite_becomes_an_sms_and_every_outcome_is_recorded_on_its_customer() {
    let smtp_port = free_port();
    let extra = format!(
        "allowed-lateness-secs: 1\nsinks:\n  retry-min-ms: 100\n  retry-max-ms: 500\n  email:\n    smtp-port: {smtp_port}\n    templates: {}\n",
        root().join("deploy/templates/email").display()
    );
    let scenario = Scenario::new("outcomes", 2, &extra).unwrap();
    let journeys = scenario.dir.path().join("journeys");
    std::fs::create_dir(&journeys).unwrap();
    for file in [
        "deploy/journeys/b2b-onboarding.yaml",
        "deploy/examples/email-bounce-fallback.yaml",
    ] {
        let path = root().join(file);
        std::fs::copy(&path, journeys.join(path.file_name().unwrap())).unwrap();
    }
    scenario.use_journeys(&journeys).unwrap();

    let t = now_millis() - 2 * 3_600_000;
    let events = [
        login("ana", t, "ana@example.com", "+16125550100"),
        login("rex", t, "reject-rex@example.com", "+16125550101"),
    ];
    let file = scenario.dir.path().join("events.jsonl");
    write_events(&file, &events).unwrap();
    scenario.produce_file(&file).unwrap();

    let smtp = SmtpServer::start(smtp_port, &scenario.dir.path().join("mail")).unwrap();
    let processor = scenario.start().unwrap();
    let sink = scenario.start_sink("email").unwrap();

    // rex's invite bounces; the processor reads the bounce and texts rex instead.
    let deadline = Instant::now() + Duration::from_secs(90);
    let sms = loop {
        let sms = scenario.read_raw(&scenario.topics.commands_sms).unwrap();
        if !sms.is_empty() {
            break sms;
        }
        assert!(
            Instant::now() < deadline,
            "no SMS command; processor log:\n{}\nsink log:\n{}",
            processor.log_text(),
            sink.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    processor
        .await_metric(OUTCOMES_TOTAL, 2.0, Duration::from_secs(30))
        .unwrap();
    assert_eq!(smtp.messages().len(), 1, "ana's invite arrived");
    sink.stop();
    // Outputs settle (the processor commits every 100 ms), then it stops.
    std::thread::sleep(Duration::from_secs(2));
    processor.stop();

    assert_eq!(sms.len(), 1, "one SMS, for rex only");
    let text = decode_command(&sms[0].value).unwrap();
    assert_eq!(text.customer_id, "rex");
    assert_eq!(text.journey, "email-bounce-fallback");
    assert_eq!(text.action, "invite-sms");
    assert_eq!(
        text.attributes.get("phone").map(|p| p.as_str()),
        Some("+16125550101")
    );

    // Every outcome is on its customer, with the command it is about.
    let outcomes: Vec<_> = scenario
        .read_raw(&scenario.topics.intervention_outcomes)
        .unwrap()
        .iter()
        .map(|r| decode_outcome(&r.value).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for (customer, status) in [("ana", "delivered"), ("rex", "bounced")] {
        let outcome = outcomes.iter().find(|o| o.customer_id == customer).unwrap();
        assert_eq!(outcome.status, status);
        let report = scenario.inspect(customer, &journeys).unwrap();
        let invite = report["explanation"]["journeys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["journey"] == "b2b-onboarding")
            .map(|j| j["instances"][0]["actions"][0].clone())
            .unwrap();
        assert_eq!(invite["action"], "invite-email");
        assert_eq!(
            invite["command_id"],
            outcome.command_id.as_str(),
            "{report}"
        );
        let said = invite["outcomes"][0].as_str().unwrap_or_default();
        assert!(said.starts_with(&format!("{status} at ")), "{report}");
        if status == "bounced" {
            assert!(said.contains("550"), "the SMTP server's answer: {report}");
        }
    }

    // Restarted, the processor goes on from the outcome positions it committed.
    let again = scenario.start().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let read_again = again.metric(OUTCOMES_TOTAL);
    again.stop();
    assert_eq!(read_again, 0.0, "outcomes were read again after a restart");

    // The executable specification agrees: the same events plus the outcomes as events.
    let mut all = events.to_vec();
    all.extend(outcomes.iter().map(|o| o.to_event()));
    write_events(&file, &all).unwrap();
    let simulated = simulate_journeys(&journeys, None, &file, now_millis(), 1_000).unwrap();
    let kafka = scenario.outputs().unwrap();
    assert_same_outputs(&kafka, &simulated);
}
