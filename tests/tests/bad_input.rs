//! Bad input on the real broker: each kind of bad record is dead-lettered (or counted and
//! copied) with headers saying what was wrong and where it came from, and the partition keeps
//! going.

use std::time::Duration;

use serde_json::Value;
use waymark::config::InputFormat;
use waymark::model::{CustomerEvent, format_millis};
use waymark_e2e::*;

fn event(id: &str, customer: &str, event_type: &str, at: i64) -> CustomerEvent {
    CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: [("email".to_owned(), format!("{customer}@example.com"))].into(),
    }
}

fn avro(ev: &CustomerEvent) -> Vec<u8> {
    waymark::kafka::encode_event(ev, InputFormat::Avro).unwrap()
}

fn header<'a>(v: &'a Value, key: &str) -> &'a str {
    v["headers"][key].as_str().unwrap_or_default()
}

#[test]
fn bad_records_are_dead_lettered_with_headers_and_processing_goes_on() {
    // One partition, so "late" is well defined; 1 s of allowed lateness keeps the test short.
    let scenario = Scenario::new("bad-input", 1, "allowed-lateness-secs: 1").unwrap();
    let now = now_millis();
    let on_time = event("ok-1", "c-ok", "login.created", now - 3 * 3_600_000);
    let mut no_customer = event("bad-2", "", "login.created", now);
    no_customer.customer_id = String::new();
    let future = event("bad-3", "c-future", "login.created", now + 30 * 86_400_000);
    let unknown = event("odd-4", "c-ok", "newsletter.opened", now - 3_600_000);
    let late = event("late-5", "c-late", "login.created", now - 5 * 86_400_000);
    let mismatch = event("bad-6", "c-real", "login.created", now - 3_600_000);
    let after = event("ok-7", "c-after", "login.created", now - 30 * 60_000);
    scenario
        .produce_raw(&[
            (Some("c-ok"), avro(&on_time)),
            (Some("c-x"), b"{this is not avro".to_vec()),
            (Some(""), avro(&no_customer)),
            (Some("c-future"), avro(&future)),
            (Some("c-ok"), avro(&unknown)),
            (Some("c-late"), avro(&late)),
            (Some("c-other"), avro(&mismatch)),
            (Some("c-after"), avro(&after)),
        ])
        .unwrap();
    let processor = scenario.start().unwrap();

    let dlq = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = scenario
                .read(&[&scenario.topics.dead_letters], Duration::from_secs(1))
                .unwrap();
            if got.len() >= 4 || std::time::Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let codes: Vec<&str> = dlq
        .iter()
        .map(|v| header(v, "waymark.error.code"))
        .collect();
    assert_eq!(
        codes,
        [
            "undecodable",
            "missing_customer_id",
            "future_timestamp",
            "key_mismatch"
        ],
        "{dlq:#?}"
    );
    for (v, offset) in dlq.iter().zip(["1", "2", "3", "6"]) {
        assert_eq!(
            header(v, "waymark.source.topic"),
            scenario.topics.customer_events
        );
        assert_eq!(header(v, "waymark.source.partition"), "0");
        assert_eq!(header(v, "waymark.source.offset"), offset);
        assert!(!header(v, "waymark.error.message").is_empty());
    }
    assert!(
        header(&dlq[2], "waymark.error.message").contains("max-future-skew"),
        "{:?}",
        dlq[2]
    );

    // The late login is copied to the late topic with the watermark it missed, and still
    // counts: the customer entered the journey.
    let late_copies = scenario
        .read(&[&scenario.topics.late_events], Duration::from_secs(1))
        .unwrap();
    assert_eq!(late_copies.len(), 1, "{late_copies:#?}");
    assert_eq!(late_copies[0]["customer_id"], "c-late");
    assert!(
        header(&late_copies[0], "waymark.watermark") > format_millis(late.occurred_at).as_str()
    );

    // Processing went on after every bad record: the last customer entered, and so did the
    // late one; the unknown type changed nothing.
    let outputs = scenario.await_outputs(1, Duration::from_secs(60)).unwrap();
    let entered: Vec<&str> = outputs
        .iter()
        .filter(|v| v["type"] == "entered")
        .map(|v| v["customer_id"].as_str().unwrap())
        .collect();
    for c in ["c-ok", "c-late", "c-after"] {
        assert!(entered.contains(&c), "{c} should have entered: {entered:?}");
    }
    assert!(!entered.contains(&"c-future") && !entered.contains(&"c-real"));
    let metrics = processor.metrics().unwrap();
    for line in [
        // Types no journey uses and records that never became events are labelled `other`:
        // the label stays bounded whatever upstream sends.
        "waymark_pipeline_events_total{result=\"ignored\",type=\"other\"} 1",
        "waymark_pipeline_events_total{result=\"late\",type=\"login.created\"} 1",
        "waymark_pipeline_events_total{result=\"rejected\",type=\"other\"} 4",
        "waymark_pipeline_events_total{result=\"accepted\",type=\"login.created\"} 2",
        "waymark_pipeline_dead_letters_total{reason=\"undecodable\"} 1",
    ] {
        assert!(
            metrics.contains(line),
            "missing `{line}` in metrics:\n{metrics}"
        );
    }
    processor.stop();
}
