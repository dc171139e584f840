//! A new version of a journey loaded into a running `waymark run` with instances in flight, on
//! the real broker: an unsafe change is refused with the reason (409), the file watch loads the
//! safe one without a restart, instances in flight keep the version they entered with, new
//! entries get the new one, and everything committed equals `waymark simulate` with both
//! versions loaded from the start.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use waymark::model::{Millis, format_millis};
use waymark_e2e::*;

const H: Millis = 3_600_000;
const D: Millis = 24 * H;

/// Version 1: an email a day after the trial starts, a call after 30 days.
const V1: &str = "journey: trial\nversion: 1\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nprofile: [email, phone]\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: call\n        delay: 30d\n        channel: contact-center\n";

/// Version 2, for customers entering from `from`: an SMS after six days instead of the call.
fn v2(from: Millis) -> String {
    V1.replace(
        "version: 1\n",
        &format!("version: 2\neffective-from: {}\n", format_millis(from)),
    )
    .replace(
        "      - id: call\n        delay: 30d\n        channel: contact-center\n",
        "      - id: text\n        delay: 6d\n        channel: sms\n",
    )
}

fn start(c: &str, at: Millis) -> waymark::model::CustomerEvent {
    customer_event(
        &format!("{c}-start"),
        c,
        "trial.started",
        at,
        &[("email", "a@example.com"), ("phone", "+16125550100")],
    )
}

fn await_version(addr: &str, version: u64, timeout: Duration) -> Value {
    let until = Instant::now() + timeout;
    loop {
        let body = http_get(addr, "/admin/journeys").unwrap_or_default();
        let listed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if listed["journeys"]
            .as_array()
            .is_some_and(|js| js.iter().any(|j| j["version"] == version))
        {
            return listed;
        }
        assert!(
            Instant::now() < until,
            "version {version} not loaded after {timeout:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_new_version_loads_live_and_instances_in_flight_keep_theirs() {
    let scenario = Scenario::new(
        "versions",
        3,
        "allowed-lateness-secs: 1\njourneys-watch-secs: 1\n",
    )
    .unwrap();
    let journeys = scenario.dir.path().join("journeys");
    std::fs::create_dir_all(&journeys).unwrap();
    std::fs::write(journeys.join("trial-v1.yaml"), V1).unwrap();
    scenario.use_journeys(&journeys).unwrap();

    // Before the new version: 60 trials start 80..60 days ago; a third pay.
    let t0 = now_millis() - 80 * D;
    let mut before = Vec::new();
    for i in 0..60 {
        let c = format!("early-{i:02}");
        let at = t0 + i * 8 * H;
        before.push(start(&c, at));
        if i % 3 == 0 {
            before.push(customer_event(
                &format!("{c}-paid"),
                &c,
                "subscription.paid",
                at + 2 * D,
                &[],
            ));
        }
    }
    let newest_before = before.iter().map(|e| e.occurred_at).max().unwrap();
    let early = scenario.dir.path().join("early.jsonl");
    write_events(&early, &before).unwrap();
    scenario.produce_file(&early).unwrap();
    let processor = scenario.start().unwrap();
    // Every early customer who did not pay gets the email and the call as version 1 now (the
    // wall clock moves the watermark past them).
    let emails = before
        .iter()
        .filter(|e| e.event_type == "trial.started")
        .count()
        - before
            .iter()
            .filter(|e| e.event_type == "subscription.paid")
            .count();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let out = scenario.outputs().unwrap();
        let mails = out
            .iter()
            .filter(|v| v["kind"] == "command" && v["action"] == "mail")
            .count();
        if mails >= emails {
            break;
        }
        assert!(Instant::now() < until, "{mails} of {emails} emails");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A version effective before events already processed is refused, with the reason.
    let addr = processor.http_addr().to_owned();
    let stale = v2(newest_before - D);
    std::fs::write(journeys.join("trial-v2.yaml"), &stale).unwrap();
    let (status, body) = http_post_json(&addr, "/admin/journeys/reload", "{}").unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("is not after the events already processed"),
        "{body}"
    );

    // A safe version: the file watch loads it without a restart; asking again changes nothing.
    let from = newest_before + H;
    std::fs::write(journeys.join("trial-v2.yaml"), v2(from)).unwrap();
    let listed = await_version(&addr, 2, Duration::from_secs(30));
    assert!(
        listed.to_string().contains(&format_millis(from)),
        "{listed}"
    );
    let (status, body) = http_post_json(&addr, "/admin/journeys/reload", "{}").unwrap();
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["result"], "unchanged", "{report}");
    assert!(processor.metric("waymark_journey_reloads_total{result=\"refused\"}") >= 1.0);
    assert!(processor.metric("waymark_journey_reloads_total{result=\"applied\"}") >= 1.0);

    // After it: new trials (their events are late: the wall clock moved the watermark on).
    let mut after = Vec::new();
    for i in 0..40 {
        let c = format!("late-{i:02}");
        after.push(start(&c, from + i * 6 * H));
    }
    let late = scenario.dir.path().join("late.jsonl");
    write_events(&late, &after).unwrap();
    scenario.produce_file(&late).unwrap();

    let all = scenario.dir.path().join("all.jsonl");
    let mut everything = before.clone();
    everything.extend(after.iter().cloned());
    write_events(&all, &everything).unwrap();
    let simulated = simulate_journeys(&journeys, None, &all, now_millis(), 1_000).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(120))
        .unwrap();
    processor.stop();
    assert_same_outputs(&kafka, &simulated);

    // Instances in flight when version 2 arrived kept version 1 (calls, and no SMS, which
    // version 2 would have due for them at once); new entries got version 2 (SMS, no call).
    let commands: Vec<&Value> = kafka.iter().filter(|v| v["kind"] == "command").collect();
    let of = |prefix: &str, action: &str| -> BTreeSet<(String, u64)> {
        commands
            .iter()
            .filter(|v| {
                v["customer_id"].as_str().unwrap().starts_with(prefix) && v["action"] == action
            })
            .map(|v| {
                (
                    v["customer_id"].as_str().unwrap().to_owned(),
                    v["journey_version"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let early_calls = of("early-", "call");
    assert!(
        !early_calls.is_empty() && early_calls.iter().all(|(_, v)| *v == 1),
        "{early_calls:?}"
    );
    assert!(of("early-", "text").is_empty());
    let late_texts = of("late-", "text");
    assert_eq!(late_texts.len(), 40, "{late_texts:?}");
    assert!(late_texts.iter().all(|(_, v)| *v == 2));
    assert!(of("late-", "call").is_empty());
}

/// Version 1 of a short trial for the migration test: an email a day after the start, and a
/// call `call_after` after it.
fn short_v1(call_after: Millis) -> String {
    V1.replace("delay: 30d", &format!("delay: {}s", call_after / 1000))
}

/// Version 2, moving version 1's instances in flight at `from`: the same email, and a text
/// `text_after` after the start instead of the call.
fn migrating_v2(from: Millis, text_after: Millis) -> String {
    V1.replace(
        "version: 1\n",
        &format!(
            "version: 2\neffective-from: {}\nmigrate-from: [1]\n",
            format_millis(from)
        ),
    )
    .replace(
        "      - id: call\n        delay: 30d\n        channel: contact-center\n",
        &format!(
            "      - id: text\n        delay: {}s\n        channel: sms\n",
            text_after / 1000
        ),
    )
}

#[test]
fn a_migrating_version_moves_instances_in_flight_live() {
    let scenario = Scenario::new(
        "migrate",
        2,
        "allowed-lateness-secs: 1\njourneys-watch-secs: 1\n",
    )
    .unwrap();
    let journeys = scenario.dir.path().join("journeys");
    std::fs::create_dir_all(&journeys).unwrap();
    // Whole seconds, so the delays written in seconds land exactly.
    let t = now_millis() / 1000 * 1000;
    let started = t - 2 * D;
    // Version 1's call is due 40 s from now: the migration, a few seconds from now, must
    // take it over before then.
    let call_due = t + 40_000;
    std::fs::write(journeys.join("trial-v1.yaml"), short_v1(call_due - started)).unwrap();
    scenario.use_journeys(&journeys).unwrap();

    // 20 trials started two days ago; a quarter paid (their instances ended).
    let mut events = Vec::new();
    for i in 0..20 {
        let c = format!("trial-{i:02}");
        events.push(start(&c, started));
        if i % 4 == 0 {
            events.push(customer_event(
                &format!("{c}-paid"),
                &c,
                "subscription.paid",
                started + 2 * H,
                &[],
            ));
        }
    }
    let file = scenario.dir.path().join("events.jsonl");
    write_events(&file, &events).unwrap();
    scenario.produce_file(&file).unwrap();
    let processor = scenario.start().unwrap();
    let in_flight = 15;
    let until = Instant::now() + Duration::from_secs(60);
    while scenario
        .outputs()
        .unwrap()
        .iter()
        .filter(|v| v["action"] == "mail")
        .count()
        < in_flight
    {
        assert!(Instant::now() < until, "version 1's emails did not go out");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Version 2 migrates the instances in flight a few seconds from now; its text is due
    // shortly after.
    let from = (now_millis() / 1000 + 8) * 1000;
    assert!(
        from + 5_000 < call_due,
        "too slow to test: version 1's call would be due before the migration"
    );
    let text_due = from + 6_000;
    std::fs::write(
        journeys.join("trial-v2.yaml"),
        migrating_v2(from, text_due - started),
    )
    .unwrap();
    let addr = processor.http_addr().to_owned();
    await_version(&addr, 2, Duration::from_secs(10));
    assert!(
        now_millis() < from,
        "version 2 was loaded after its effective-from"
    );

    // Wait until version 1's call would have been due, then compare with simulate with both
    // versions loaded from the start.
    while now_millis() < call_due + 3_000 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let simulated = simulate_journeys(&journeys, None, &file, now_millis(), 1_000).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(60))
        .unwrap();
    processor.stop();
    assert_same_outputs(&kafka, &simulated);

    // Every instance in flight got version 2's text, under the ids of the version it entered
    // with; nobody got version 1's call or a second email.
    let commands: Vec<&Value> = kafka.iter().filter(|v| v["kind"] == "command").collect();
    let count = |action: &str| commands.iter().filter(|v| v["action"] == action).count();
    assert_eq!(count("mail"), in_flight);
    assert_eq!(count("call"), 0);
    assert_eq!(count("text"), in_flight);
    for text in commands.iter().filter(|v| v["action"] == "text") {
        assert_eq!(text["journey_version"], 2, "{text}");
        assert_eq!(text["due_at"], format_millis(text_due), "{text}");
    }
}
