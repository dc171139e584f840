//! The email sink end to end: `waymark run` turns logins into invite commands, `waymark sink
//! email` delivers them to a real SMTP server on loopback (aiosmtpd) — through an SMTP outage,
//! with retries — dead-letters a permanently rejected address with headers that say why, and
//! reports every outcome. A command delivered again (a redelivery after a crash, or a whole
//! new consumer group) is never sent twice.

use std::time::Duration;

use waymark::codec::decode_outcome;
use waymark::config::InputFormat;
use waymark::model::CustomerEvent;
use waymark::telemetry::{SINK_DELIVERIES_TOTAL, SINK_DELIVERY_SECONDS, SINK_RETRIES_TOTAL};
use waymark_e2e::*;

fn event(id: &str, customer: &str, event_type: &str, at: i64, email: &str) -> (String, Vec<u8>) {
    let ev = CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: [
            ("email".to_owned(), email.to_owned()),
            ("sales_rep".to_owned(), "Rita Reyes".to_owned()),
        ]
        .into(),
    };
    (
        customer.to_owned(),
        waymark::kafka::encode_event(&ev, InputFormat::Avro).unwrap(),
    )
}

#[test]
fn invites_reach_the_inbox_once_rejections_are_dead_lettered_and_outcomes_reported() {
    let smtp_port = free_port();
    let templates = root().join("deploy/templates/email");
    let extra = format!(
        "allowed-lateness-secs: 1\nsinks:\n  retry-min-ms: 100\n  retry-max-ms: 500\n  max-attempts: 60\n  email:\n    smtp-port: {smtp_port}\n    from: \"Onboarding <onboarding@example.com>\"\n    templates: {}\n",
        templates.display()
    );
    let scenario = Scenario::new("email", 1, &extra).unwrap();
    let t = now_millis() - 2 * 3_600_000;
    let records = [
        event("a1", "ana", "login.created", t, "ana@example.com"),
        event("r1", "rex", "login.created", t, "reject-rex@example.com"),
        // Paid within the hour: no invite.
        event("p1", "paid", "login.created", t, "paid@example.com"),
        event(
            "p2",
            "paid",
            "payment_account.created",
            t + 60_000,
            "paid@example.com",
        ),
    ];
    let raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (Some(k.as_str()), v.clone()))
        .collect();
    scenario.produce_raw(&raw).unwrap();
    let processor = scenario.start().unwrap();
    let commands = scenario.read_raw(&scenario.topics.commands_email).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut commands = commands;
    while commands.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no invite commands");
        std::thread::sleep(Duration::from_millis(500));
        commands = scenario.read_raw(&scenario.topics.commands_email).unwrap();
    }
    processor.stop();
    assert_eq!(commands.len(), 2, "ana and rex, not the customer who paid");

    // The sink starts while the SMTP server is still down: it retries.
    let sink = scenario.start_sink("email").unwrap();
    sink.await_metric(SINK_RETRIES_TOTAL, 1.0, Duration::from_secs(30))
        .unwrap();
    let smtp = SmtpServer::start(smtp_port, &scenario.dir.path().join("mail")).unwrap();
    let mail = smtp.await_messages(1, Duration::from_secs(60)).unwrap();
    sink.await_metric(SINK_DELIVERIES_TOTAL, 2.0, Duration::from_secs(60))
        .unwrap();
    // Every attempt is timed, the failed ones while the server was down included.
    let attempts = sink.metric(&format!("{SINK_DELIVERY_SECONDS}_count"));
    let retries = sink.metric(SINK_RETRIES_TOTAL);
    assert!(
        attempts >= 2.0 + retries,
        "{attempts} timed attempts, {retries} retries"
    );

    let ana_command = waymark::codec::decode_command(
        &commands
            .iter()
            .find(|r| r.key.as_deref() == Some("ana"))
            .unwrap()
            .value,
    )
    .unwrap();
    let message = &mail[0];
    assert!(message.contains("To: ana@example.com"), "{message}");
    assert!(
        message.contains("From: Onboarding <onboarding@example.com>"),
        "{message}"
    );
    assert!(
        message.contains("https://billing.example.com/payment-account/new"),
        "the seed's payment-account link: {message}"
    );
    assert!(message.contains("Rita Reyes"), "the sales rep: {message}");
    assert!(
        message.contains(&format!("<{}@waymark>", ana_command.command_id)),
        "Message-ID is the command id: {message}"
    );
    assert!(message.contains("text/html"), "an HTML part: {message}");

    // rex's address is rejected for good: dead-lettered with the reason, not retried forever.
    let dlq = scenario
        .read_raw(
            &scenario
                .topics
                .sink_dead_letters(waymark::model::Channel::Email),
        )
        .unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].key.as_deref(), Some("rex"));
    assert_eq!(dlq[0].headers["waymark.error.code"], "rejected");
    assert!(dlq[0].headers["waymark.error.message"].contains("550"));
    assert!(dlq[0].headers["waymark.attempts"].parse::<u32>().unwrap() >= 1);
    assert_eq!(
        dlq[0].headers["waymark.source.topic"],
        scenario.topics.commands_email
    );
    assert!(
        dlq[0].headers["waymark.source.offset"]
            .parse::<i64>()
            .is_ok()
    );

    let outcomes: Vec<_> = scenario
        .read_raw(&scenario.topics.intervention_outcomes)
        .unwrap()
        .iter()
        .map(|r| decode_outcome(&r.value).unwrap())
        .map(|o| (o.customer_id, o.status))
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        [
            ("ana".to_owned(), "delivered".to_owned()),
            ("rex".to_owned(), "bounced".to_owned()),
        ]
        .into(),
    );

    // A redelivered command (same id) is skipped, however it comes back.
    let again: Vec<(Option<&str>, Vec<u8>)> = commands
        .iter()
        .map(|r| (r.key.as_deref(), r.value.clone()))
        .collect();
    scenario
        .produce_to(&scenario.topics.commands_email, &again)
        .unwrap();
    let metric = |s: &Processor| {
        s.metrics()
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("result=\"duplicate\"} 2"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !metric(&sink) {
        assert!(std::time::Instant::now() < deadline, "{}", sink.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Killed and restarted: nothing is sent again.
    sink.kill();
    let sink = scenario.start_sink("email").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let log = sink.stop();
    assert_eq!(smtp.messages().len(), 1, "sent once: {log}");
}

/// The crash the sink's log of handled ids is for: killed after the SMTP server accepted every
/// message and before any offset was committed (the commit interval is ten minutes here), the
/// sink gets all its commands again after the restart — and sends none of them twice.
#[test]
fn a_sink_killed_after_the_smtp_server_accepted_and_before_the_offset_commit_sends_nothing_twice() {
    let smtp_port = free_port();
    let group_prefix = unique("sink");
    let extra = format!(
        "allowed-lateness-secs: 1\nsinks:\n  group-prefix: {group_prefix}\n  commit-interval-ms: 600000\n  email:\n    smtp-port: {smtp_port}\n    templates: {}\n",
        root().join("deploy/templates/email").display()
    );
    // The killed sink's membership must expire before the group hands its partition to the
    // restarted one: a short session.
    let fast = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ];
    let scenario = Scenario::with_kafka_properties("email-crash", 1, &extra, &fast).unwrap();
    let t = now_millis() - 2 * 3_600_000;
    let records: Vec<_> = ["ana", "bo", "cy"]
        .iter()
        .map(|c| {
            event(
                &format!("{c}-login"),
                c,
                "login.created",
                t,
                &format!("{c}@example.com"),
            )
        })
        .collect();
    let raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (Some(k.as_str()), v.clone()))
        .collect();
    scenario.produce_raw(&raw).unwrap();
    let processor = scenario.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scenario
        .read_raw(&scenario.topics.commands_email)
        .unwrap()
        .len()
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "no invite commands");
        std::thread::sleep(Duration::from_millis(500));
    }
    processor.stop();

    let smtp = SmtpServer::start(smtp_port, &scenario.dir.path().join("mail")).unwrap();
    let sink = scenario.start_sink("email").unwrap();
    smtp.await_messages(3, Duration::from_secs(60)).unwrap();
    sink.await_metric(SINK_DELIVERIES_TOTAL, 3.0, Duration::from_secs(10))
        .unwrap();
    let group = format!("{group_prefix}-email");
    let committed = committed_offsets(&group, &scenario.topics.commands_email, 1).unwrap();
    assert_eq!(committed, [None], "nothing committed before the kill");
    sink.kill();

    // Back up: all three commands come again, and all three are skipped.
    let sink = scenario.start_sink("email").unwrap();
    let skipped = sink.await_metric(SINK_DELIVERIES_TOTAL, 3.0, Duration::from_secs(30));
    let log = sink.stop();
    skipped.unwrap();
    assert!(
        log.matches("Command handled before; skipped.").count() == 3,
        "{log}"
    );
    assert_eq!(smtp.messages().len(), 3, "no email sent twice: {log}");
    let outcomes = scenario
        .read_raw(&scenario.topics.intervention_outcomes)
        .unwrap();
    assert_eq!(outcomes.len(), 3, "one outcome per command");
}
