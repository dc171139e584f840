//! Upstream events in a JSON shape of their own, mapped by `input-mapping` on the real
//! broker: the processor's output equals `simulate` over the same events mapped by the same
//! mapping, a value sent twice is a duplicate (its id is a hash of the value), and a value the
//! mapping cannot read goes to the dead-letter topic with the pointer and the setting to fix.

use waymark::codec::InputMapping;
use waymark_e2e::*;

const MAPPING: &str = "input-format: json\nallowed-lateness-secs: 1\ninput-mapping:\n  customer-id: /account/id\n  event-type: /kind\n  occurred-at: /ts\n  attributes:\n    email: /account/email\n    sales_rep: /account/owner\n";

#[test]
fn foreign_json_events_are_mapped_by_configuration_and_equal_simulate() {
    let scenario = Scenario::new("mapping", 2, MAPPING).unwrap();
    let mapping = InputMapping {
        customer_id: "/account/id".into(),
        event_type: Some("/kind".into()),
        fixed_type: None,
        occurred_at: "/ts".into(),
        event_id: None,
        attributes: [
            ("email".to_owned(), "/account/email".to_owned()),
            ("sales_rep".to_owned(), "/account/owner".to_owned()),
        ]
        .into(),
    };
    let now = now_millis();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..60i64 {
        let customer = format!("acct-{i}");
        let login = now - 10 * 86_400_000 + i * 60_000;
        let value = |kind: &str, at: i64| {
            serde_json::json!({
                "kind": kind,
                // Times as epoch milliseconds for some, RFC 3339 for others.
                "ts": if i % 2 == 0 { serde_json::json!(at) } else { serde_json::json!(waymark::model::format_millis(at)) },
                "account": {"id": customer, "email": format!("{customer}@example.com"), "owner": "rep-9"},
            })
            .to_string()
            .into_bytes()
        };
        records.push((customer.clone(), value("login.created", login)));
        if i % 3 == 0 {
            records.push((
                customer.clone(),
                value("payment_account.created", login + 1_800_000),
            ));
        }
        if i % 5 == 0 {
            // The same value again: a duplicate, not a second event.
            records.push((customer.clone(), value("login.created", login)));
        }
    }
    let bad = br#"{"kind":"login.created","ts":"2026-03-01T10:00:00Z","account":{"email":"x@example.com"}}"#;
    let mut raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (Some(k.as_str()), v.clone()))
        .collect();
    raw.push((Some("nobody"), bad.to_vec()));
    scenario.produce_raw(&raw).unwrap();

    let mapped: Vec<_> = records
        .iter()
        .map(|(_, v)| mapping.decode(v).unwrap())
        .collect();
    let file = scenario.dir.path().join("mapped.jsonl");
    write_events(&file, &mapped).unwrap();
    let simulated = simulate_journeys(&reference_journey(), None, &file, now, 1_000).unwrap();
    assert!(simulated.iter().any(|v| v["kind"] == "command"));

    let (kafka, dlq) = scenario.run_to_outputs(simulated.len()).unwrap();
    assert_same_outputs(&kafka, &simulated);
    let sales_rep_calls = kafka
        .iter()
        .filter(|v| v["kind"] == "command" && v["params"]["assignee"] == "rep-9")
        .count();
    assert!(
        sales_rep_calls > 0,
        "the mapped attribute fills the command"
    );

    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let message = dlq[0]["headers"]["waymark.error.message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("/account/id (input-mapping.customer-id)"),
        "{message}"
    );
}
