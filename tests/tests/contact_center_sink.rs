//! The seed's contact-center interventions end to end: logins without a payment account make
//! `waymark run` emit the two-day assist task and the four-day sales-rep call; `waymark sink
//! contact-center` creates them as tasks over the webhook API of a stand-in
//! (`scripts/provider-standin.py`), the call assigned to the customer's sales rep. A call for a
//! customer without a sales rep is dead-lettered with a reason that says what to fix.

use std::time::{Duration, Instant};

use waymark::codec::decode_outcome;
use waymark::config::InputFormat;
use waymark::model::{Channel, CustomerEvent};
use waymark::telemetry::SINK_DELIVERIES_TOTAL;
use waymark_e2e::*;

fn login(customer: &str, at: i64, rep: Option<&str>) -> (String, Vec<u8>) {
    let mut attributes: std::collections::BTreeMap<String, String> =
        [("email".to_owned(), format!("{customer}@example.com"))].into();
    if let Some(rep) = rep {
        attributes.insert("sales_rep".into(), rep.into());
    }
    let ev = CustomerEvent {
        event_id: format!("{customer}-login"),
        customer_id: customer.into(),
        event_type: "login.created".into(),
        occurred_at: at,
        attributes: attributes.into_iter().collect(),
    };
    (
        customer.to_owned(),
        waymark::kafka::encode_event(&ev, InputFormat::Avro).unwrap(),
    )
}

#[test]
fn assist_tasks_and_sales_rep_calls_become_contact_center_tasks() {
    let port = free_port();
    let extra = format!(
        "allowed-lateness-secs: 1\nsinks:\n  contact-center:\n    url: http://127.0.0.1:{port}/tasks\n    token: cc-secret\n"
    );
    let scenario = Scenario::new("contact-center", 1, &extra).unwrap();
    let log = scenario.dir.path().join("tasks.jsonl");
    let standin = ProviderStandIn::start(port, &log, &[]).unwrap();
    let five_days_ago = now_millis() - 5 * 86_400_000;
    let records = [
        login("ana", five_days_ago, Some("rep-7")),
        login("norep", five_days_ago, None),
    ];
    let raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (Some(k.as_str()), v.clone()))
        .collect();
    scenario.produce_raw(&raw).unwrap();
    let processor = scenario.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while scenario
        .read_raw(&scenario.topics.commands_contact_center)
        .unwrap()
        .len()
        < 4
    {
        assert!(Instant::now() < deadline, "no contact-center commands");
        std::thread::sleep(Duration::from_millis(500));
    }
    processor.stop();

    let sink = scenario.start_sink("contact-center").unwrap();
    sink.await_metric(SINK_DELIVERIES_TOTAL, 4.0, Duration::from_secs(60))
        .unwrap();

    // The contact center reports back: ana's call was made.
    let tasks = standin.requests();
    let call = tasks
        .iter()
        .find(|t| t["json"]["type"] == "outbound-call")
        .unwrap();
    let update = serde_json::json!({
        "task_id": call["json"]["task_id"],
        "customer_id": "ana",
        "journey": call["json"]["journey"],
        "action": call["json"]["action"],
        "status": "completed",
        "note": "called; payment account set up together",
    });
    let path = "/callbacks/contact-center/tasks";
    let (code, body) = http_post_json(sink.http_addr(), path, &update.to_string()).unwrap();
    assert_eq!(code, 202, "{body}");
    let (code, body) = http_post_json(sink.http_addr(), path, r#"{"task_id": "x"}"#).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("missing field"), "says what is wrong: {body}");
    let (code, body) = http_post_json(
        sink.http_addr(),
        path,
        &update.to_string().replace("completed", "Done!"),
    )
    .unwrap();
    assert_eq!((code, body.contains("lowercase")), (400, true), "{body}");
    sink.stop();

    let created: Vec<(String, String, String)> = {
        let mut v: Vec<_> = tasks
            .iter()
            .filter(|t| t["status"] == 201)
            .map(|t| {
                let j = &t["json"];
                (
                    j["customer_id"].as_str().unwrap().to_owned(),
                    j["type"].as_str().unwrap().to_owned(),
                    j["assignee"]
                        .as_str()
                        .or(j["queue"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        created,
        [
            ("ana".into(), "assist".into(), "onboarding".into()),
            ("ana".into(), "outbound-call".into(), "rep-7".into()),
            ("norep".into(), "assist".into(), "onboarding".into()),
        ]
    );
    for t in &tasks {
        assert_eq!(t["headers"]["Authorization"], "Bearer cc-secret");
        assert_eq!(t["headers"]["Idempotency-Key"], t["json"]["task_id"]);
    }
    assert_eq!(
        call["json"]["due_at"].as_str().unwrap(),
        waymark::model::format_millis(five_days_ago + 4 * 86_400_000),
        "due four days after the login"
    );

    let dlq = scenario
        .read_raw(&scenario.topics.sink_dead_letters(Channel::ContactCenter))
        .unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].key.as_deref(), Some("norep"));
    assert_eq!(dlq[0].headers["waymark.error.code"], "no_assignee");
    assert!(dlq[0].headers["waymark.error.message"].contains("sales_rep"));
    let statuses: Vec<String> = {
        let mut v: Vec<_> = scenario
            .read_raw(&scenario.topics.intervention_outcomes)
            .unwrap()
            .iter()
            .map(|r| decode_outcome(&r.value).unwrap().status)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        statuses,
        [
            "bounced",
            "delivered",
            "delivered",
            "delivered",
            "task_completed"
        ]
    );
}
