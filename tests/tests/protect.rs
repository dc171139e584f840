//! Customer protection on the real broker: `waymark run` with `protections:` in its config
//! blocks the invite email of a customer on the suppression list (a `command_suppressed`
//! journey event with the reason instead of the command), defers a contact-center task due in
//! the customer's night (`command_deferred`), sends everyone else's, and agrees with
//! `simulate --protections` record by record; `state inspect` says why.

use std::time::Duration;

use waymark_e2e::*;

/// A fixed-offset IANA zone in which `at` is about 23:00 local time (in the example file's
/// contact-center quiet hours, 18:00 to 09:00).
fn zone_at_night(at: i64) -> String {
    let utc_hour = (at / 3_600_000).rem_euclid(24);
    let mut offset = (23 - utc_hour).rem_euclid(24);
    if offset > 14 {
        offset -= 24;
    }
    match offset {
        0 => "UTC".to_owned(),
        // IANA's Etc zones count the other way: Etc/GMT-5 is UTC+5.
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

#[test]
fn the_suppression_list_blocks_and_quiet_hours_defer_as_simulate_says() {
    let protections = root().join("deploy/examples/protections.yaml");
    let extra = format!(
        "allowed-lateness-secs: 1\nprotections: {}\n",
        protections.display()
    );
    let scenario = Scenario::new("protect", 2, &extra).unwrap();
    let t = now_millis() - 2 * 3_600_000;
    // Logged in two days and half an hour ago: the assist task is due now, at night for them.
    let night_login = now_millis() - 2 * 86_400_000 - 30 * 60_000;
    let night_zone = zone_at_night(night_login + 2 * 86_400_000);
    let email = |c: &str| format!("{c}@example.com");
    let events = [
        customer_event(
            "q1",
            "quiet",
            "login.created",
            t,
            &[("email", &email("quiet"))],
        ),
        customer_event(
            "q2",
            "quiet",
            "customer.suppressed",
            t + 10 * 60_000,
            &[("channel", "email")],
        ),
        customer_event(
            "l1",
            "loud",
            "login.created",
            t,
            &[("email", &email("loud"))],
        ),
        customer_event(
            "n1",
            "night",
            "login.created",
            night_login,
            &[("email", &email("night")), ("tz", &night_zone)],
        ),
    ];
    let file = scenario.dir.path().join("events.jsonl");
    write_events(&file, &events).unwrap();
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
    // Counted by a bounded reason, not by the reason's text (which names a date).
    let suppressed = "waymark_engine_commands_suppressed_total{action=\"invite-email\",journey=\"b2b-onboarding\",reason=\"suppression_list\"} 1";
    let metrics = processor.metrics().unwrap();
    assert!(
        metrics.contains(suppressed),
        "{suppressed} missing:\n{metrics}"
    );
    let log = processor.stop();
    assert!(log.contains("Customer protection loaded."), "{log}");
    assert_same_outputs(&kafka, &simulated);

    let mut commands: Vec<_> = kafka
        .iter()
        .filter(|v| v["kind"] == "command")
        .map(|v| {
            (
                v["customer_id"].as_str().unwrap(),
                v["action"].as_str().unwrap(),
            )
        })
        .collect();
    commands.sort();
    assert_eq!(
        commands,
        [("loud", "invite-email"), ("night", "invite-email")],
        "night's assist task waits for the morning"
    );
    let deferred: Vec<_> = kafka
        .iter()
        .filter(|v| v["type"] == "command_deferred")
        .collect();
    assert_eq!(deferred.len(), 1, "{kafka:?}");
    assert_eq!(deferred[0]["customer_id"], "night");
    assert_eq!(deferred[0]["action"], "assist-task");
    let why = deferred[0]["reason"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "quiet hours for contact-center in {night_zone}; deferred to "
        )),
        "{why}"
    );
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
