//! The SMS sink end to end against a provider stand-in (`scripts/provider-standin.py`, an
//! HTTP server that records requests; nothing is sent): requests carry the rendered body, the
//! sender, basic auth and the command id as idempotency key; the provider's 503s are retried;
//! a number that is not E.164 never reaches the provider; a number the provider refuses is
//! dead-lettered; every command gets an outcome; a redelivered command is not sent again.

use std::time::Duration;

use waymark::codec::{decode_outcome, encode_command};
use waymark::model::{Channel, InterventionCommand};
use waymark::telemetry::{SINK_DELIVERIES_TOTAL, SINK_RETRIES_TOTAL};
use waymark_e2e::*;

fn command(customer: &str, phone: &str) -> InterventionCommand {
    InterventionCommand {
        command_id: waymark::engine::stable_id(&["sms-test", customer]),
        journey: "b2b-onboarding".into(),
        journey_version: 1,
        customer_id: customer.into(),
        instance: 1,
        rule: "payment-account-nudge".into(),
        action: "reminder-sms".into(),
        channel: Channel::Sms,
        due_at: now_millis(),
        template: Some("payment-account-reminder".into()),
        variant: None,
        params: [(
            "link".into(),
            "https://billing.example.com/payment-account/new".into(),
        )]
        .into(),
        attributes: [
            ("phone".into(), phone.into()),
            ("sales_rep".into(), "Rita Reyes".into()),
        ]
        .into(),
    }
}

#[test]
fn sms_reach_the_provider_once_with_retries_and_bad_numbers_are_dead_lettered() {
    let port = free_port();
    let extra = format!(
        "sinks:\n  retry-min-ms: 100\n  retry-max-ms: 300\n  max-attempts: 10\n  sms:\n    base-url: http://127.0.0.1:{port}\n    account-sid: AC123\n    auth-token: secret\n    from: \"+15005550006\"\n    templates: {}\n",
        root().join("deploy/templates/sms").display()
    );
    let scenario = Scenario::new("sms", 1, &extra).unwrap();
    let log = scenario.dir.path().join("sms.jsonl");
    let standin = ProviderStandIn::start(port, &log, &["--fail-first", "2"]).unwrap();
    let commands = [
        command("ana", "+16125550100"),
        command("bad", "612-555-0100"),
        command("refused", "+15551234567"),
    ];
    let records: Vec<(Option<&str>, Vec<u8>)> = commands
        .iter()
        .map(|c| (Some(c.customer_id.as_str()), encode_command(c).unwrap()))
        .collect();
    scenario
        .produce_to(&scenario.topics.commands_sms, &records)
        .unwrap();

    let sink = scenario.start_sink("sms").unwrap();
    sink.await_metric(SINK_DELIVERIES_TOTAL, 3.0, Duration::from_secs(60))
        .unwrap();
    assert!(
        sink.metric(SINK_RETRIES_TOTAL) >= 2.0,
        "the two 503s were retried"
    );

    let sent: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r["status"] == 201)
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let r = &sent[0];
    assert_eq!(r["path"], "/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(r["form"]["To"], "+16125550100");
    assert_eq!(r["form"]["From"], "+15005550006");
    let body = r["form"]["Body"].as_str().unwrap();
    assert!(
        body.contains("https://billing.example.com/payment-account/new")
            && body.contains("Rita Reyes"),
        "{body}"
    );
    assert_eq!(r["headers"]["Idempotency-Key"], commands[0].command_id);
    assert_eq!(r["headers"]["Authorization"], "Basic QUMxMjM6c2VjcmV0");
    assert!(
        standin
            .requests()
            .iter()
            .all(|r| r["form"]["To"] != "612-555-0100"),
        "a number that is not E.164 never reaches the provider"
    );

    let dlq = scenario
        .read_raw(&scenario.topics.sink_dead_letters(Channel::Sms))
        .unwrap();
    let codes: std::collections::BTreeMap<_, _> = dlq
        .iter()
        .map(|r| {
            (
                r.key.clone().unwrap_or_default(),
                r.headers["waymark.error.code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("bad".to_owned(), "bad_number".to_owned()),
            ("refused".to_owned(), "rejected".to_owned()),
        ]
        .into()
    );
    let bad = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some("bad"))
        .unwrap();
    assert!(
        bad.headers["waymark.error.message"].contains("E.164"),
        "{:?}",
        bad.headers
    );
    let outcomes: std::collections::BTreeSet<_> = scenario
        .read_raw(&scenario.topics.intervention_outcomes)
        .unwrap()
        .iter()
        .map(|r| {
            let o = decode_outcome(&r.value).unwrap();
            (o.customer_id, o.status)
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("ana".to_owned(), "delivered".to_owned()),
            ("bad".to_owned(), "bounced".to_owned()),
            ("refused".to_owned(), "bounced".to_owned()),
        ]
        .into()
    );

    // Redelivered: skipped by the sink, no new request.
    let before = standin.requests().len();
    scenario
        .produce_to(&scenario.topics.commands_sms, &records[..1])
        .unwrap();
    sink.await_metric(SINK_DELIVERIES_TOTAL, 4.0, Duration::from_secs(30))
        .unwrap();
    sink.stop();
    assert_eq!(
        standin.requests().len(),
        before,
        "no request for a redelivered command"
    );
}
