//! Chaos on the real broker: `waymark run` is killed with SIGKILL at random points while it
//! works through a backlog, and restarted each time. What it committed to Kafka must still
//! equal `waymark simulate` on the same events: no command lost, none duplicated, no
//! premature nudge.

use std::time::{Duration, Instant};

use waymark::telemetry::{EVENTS_TOTAL, TRANSACTIONS_TOTAL};
use waymark_e2e::*;

/// Kills `processor` with SIGKILL once it has committed once and handled `events` input
/// records, or after 5 s (a run with fewer than that left finishes first, and is then killed
/// idle). A kill before the first commit would only repeat the run from where it started.
fn kill_after(processor: Processor, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (processor.metric(TRANSACTIONS_TOTAL) < 1.0
        || processor.metric(EVENTS_TOTAL) < events as f64)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    processor.kill();
}

/// Asserts that some kill landed mid-run: after it, part of the `total` output records but
/// not all were committed. Otherwise the test proves nothing.
fn assert_a_kill_interrupted(committed_after_kill: &[usize], total: usize) {
    assert!(
        committed_after_kill.iter().any(|n| *n > 0 && *n < total),
        "no kill interrupted the run: {committed_after_kill:?} of {total}"
    );
}

/// A small deterministic generator for the kill points (seed printed for reproduction).
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

#[test]
fn kill_9_at_random_points_loses_nothing_and_duplicates_nothing() {
    let scenario = Scenario::new("chaos", 4, "").unwrap();
    // `make chaos` runs a larger trace (WAYMARK_CHAOS_CUSTOMERS); `make test` a small one.
    let customers = std::env::var("WAYMARK_CHAOS_CUSTOMERS").unwrap_or_else(|_| "12000".into());
    let events = scenario.loadgen(&customers, "11");
    let simulated = simulate_file(&events, now_millis()).unwrap();

    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as u64;

    let mut seed = now_millis() as u64;
    eprintln!("chaos seed {seed}");
    let mut kills = 0;
    let mut committed_after_kill = Vec::new();
    while kills < 5 {
        let processor = scenario.start().unwrap();
        // A random point of the run, in events handled rather than in time: however fast the
        // processor is, the first kill lands mid-run. Within a transaction, during a commit
        // or between two, wherever that point falls.
        kill_after(processor, 500 + next(&mut seed) % (produced / 4));
        kills += 1;
        committed_after_kill.push(scenario.outputs().unwrap().len());
    }
    eprintln!(
        "committed records after each kill: {committed_after_kill:?} of {}",
        simulated.len()
    );
    assert_a_kill_interrupted(&committed_after_kill, simulated.len());
    let started = Instant::now();
    let processor = scenario.start().unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(240))
        .unwrap();
    let log = processor.stop();
    eprintln!(
        "after {kills} kills: {} records in {:?}",
        kafka.len(),
        started.elapsed()
    );
    assert_same_outputs(&kafka, &simulated);
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn at_least_once_after_kill_9_loses_nothing_and_repeats_only_identical_records() {
    let scenario =
        Scenario::new("at-least-once", 4, "processing-guarantee: at-least-once").unwrap();
    let events = scenario.loadgen("8000", "17");
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    let mut committed_after_kill = Vec::new();
    // Killed twice once it has handled half the trace: past its first commit, so what it
    // sent since is sent again by the next run.
    for _ in 0..2 {
        kill_after(scenario.start().unwrap(), produced / 2);
        committed_after_kill.push(scenario.outputs().unwrap().len());
    }
    assert_a_kill_interrupted(&committed_after_kill, simulated.len());
    let processor = scenario.start().unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(240))
        .unwrap();
    let log = processor.stop();
    assert!(
        log.contains("at-least-once"),
        "the mode is announced: {log}"
    );
    // Repeats are allowed, but only as exact copies (same id, same content).
    let mut first: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let mut repeats = 0;
    for v in &kafka {
        match first.get(&id_of(v)) {
            Some(seen) => {
                assert_eq!(seen, v, "a repeated record differs");
                repeats += 1;
            }
            None => {
                first.insert(id_of(v), v.clone());
            }
        }
    }
    eprintln!("at-least-once: {repeats} repeated records after 2 kills");
    assert!(repeats > 0, "no kill made the next run repeat anything");
    let unique: Vec<_> = first.into_values().collect();
    assert_same_outputs(&unique, &simulated);
}

/// Runs `scripts/kafka.sh <cmd>` for the test broker.
fn kafka_sh(cmd: &str) {
    let brokers = brokers();
    let port: u16 = brokers
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("WAYMARK_TEST_BROKERS is host:port");
    let status = std::process::Command::new("bash")
        .arg(root().join("scripts/kafka.sh"))
        .arg(cmd)
        .env("KAFKA_PORT", port.to_string())
        .env("KAFKA_CONTROLLER_PORT", (port + 1).to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/kafka.sh {cmd} failed");
}

#[test]
fn broker_restart_mid_run_loses_nothing_and_duplicates_nothing() {
    let scenario = Scenario::new("broker-restart", 4, "").unwrap();
    let events = scenario.loadgen("8000", "13");
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let processor = scenario.start().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    kafka_sh("stop");
    std::thread::sleep(Duration::from_secs(2));
    kafka_sh("start");
    let kafka = match scenario.await_outputs(simulated.len(), Duration::from_secs(240)) {
        Ok(k) => k,
        Err(e) => panic!("{e}; processor log:\n{}", processor.log_text()),
    };
    processor.stop();
    assert_same_outputs(&kafka, &simulated);
}

/// A static member can be fenced for good (librdkafka reports FENCED_INSTANCE_ID as fatal):
/// after a broker outage longer than its session, or when an instance with the same
/// `group-instance-id` joins. `waymark run` then starts its pipeline again with new clients,
/// and the zombie's transactions cannot commit (KIP-447 fences its offsets), so the output is
/// still exactly what `simulate` says.
#[test]
fn a_fenced_static_member_restarts_with_new_clients_and_nothing_is_lost_or_duplicated() {
    use waymark::telemetry::{CLIENT_RESTARTS_TOTAL, EVENTS_TOTAL};
    let fast = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("max.partition.fetch.bytes", "32768"),
    ];
    let scenario = Scenario::with_kafka_properties("fenced", 4, "", &fast).unwrap();
    let events = scenario.loadgen("20000", "31");
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let a = scenario.start_instance("a").unwrap();
    a.await_metric(EVENTS_TOTAL, produced / 10.0, Duration::from_secs(120))
        .unwrap();
    // Another process joins with `a`'s static membership id (its own transactional id and
    // state): the broker hands it `a`'s membership, and `a`'s consumer is fenced.
    let http = format!("127.0.0.1:{}", free_port());
    let state = scenario.dir.path().join("state-impostor");
    let impostor_txn = format!("{}-impostor", scenario.id);
    let a_instance = format!("{}-a", scenario.id);
    let impostor = scenario
        .launch(
            &[
                "run",
                "--state-dir",
                state.to_str().unwrap(),
                "--http-addr",
                &http,
                "--transactional-id",
                &impostor_txn,
                "--group-instance-id",
                &a_instance,
            ],
            http.clone(),
        )
        .unwrap();
    let restarted = a.await_metric(CLIENT_RESTARTS_TOTAL, 1.0, Duration::from_secs(60));
    let done = a.metric(EVENTS_TOTAL);
    impostor.kill();
    if let Err(e) = restarted {
        panic!("{e}; log of a:\n{}", a.log_text());
    }
    assert!(
        done < produced,
        "the fencing landed after the run had finished ({done} of {produced} events)"
    );
    let kafka = match scenario.await_outputs(simulated.len(), Duration::from_secs(180)) {
        Ok(k) => k,
        Err(e) => panic!("{e}; log of a:\n{}", a.log_text()),
    };
    let log = a.stop();
    assert!(
        log.contains("Restarting the pipeline with new Kafka clients"),
        "{log}"
    );
    assert!(log.contains("FencedInstanceId"), "{log}");
    assert_same_outputs(&kafka, &simulated);
}

#[test]
fn backlog_after_an_outage_never_nudges_a_customer_whose_completion_is_in_it() {
    use waymark::config::InputFormat;
    use waymark::model::CustomerEvent;
    let scenario = Scenario::new("backlog", 1, "allowed-lateness-secs: 1").unwrap();
    // The processor runs, catches up on an empty topic, and goes down.
    let processor = scenario.start().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    processor.stop();

    // While it is down, more than the first timer's delay (1h) of events happens.
    let t0 = now_millis() + 10_000;
    let ev = |id: &str, customer: &str, event_type: &str, at: i64| CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: [("email".to_owned(), format!("{customer}@example.com"))].into(),
    };
    let backlog = [
        ev("a1", "paid", "login.created", t0),
        ev("b1", "unpaid", "login.created", t0),
        ev("a2", "paid", "payment_account.created", t0 + 40 * 60_000),
        ev("c1", "later", "login.created", t0 + 2 * 3_600_000),
    ];
    let records: Vec<(Option<&str>, Vec<u8>)> = backlog
        .iter()
        .map(|e| {
            let bytes = waymark::kafka::encode_event(e, InputFormat::Avro).unwrap();
            (Some(e.customer_id.as_str()), bytes)
        })
        .collect();
    scenario.produce_raw(&records).unwrap();
    let file = scenario.dir.path().join("backlog.jsonl");
    write_events(&file, &backlog).unwrap();

    // Back up: the backlog is replayed in event time; the wall clock cannot fire anything early.
    let processor = scenario.start().unwrap();
    let simulated = simulate_file_with(&file, now_millis(), 1_000).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(60))
        .unwrap();
    processor.stop();
    let commands: Vec<(&str, &str)> = kafka
        .iter()
        .filter(|v| v["kind"] == "command")
        .map(|v| {
            (
                v["customer_id"].as_str().unwrap(),
                v["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(commands, [("unpaid", "invite-email")]);
    assert_same_outputs(&kafka, &simulated);
}
