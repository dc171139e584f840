//! Working off a backlog: a processor that starts behind keeps each batch open past
//! `commit-interval-ms`, up to `backlog-commit-interval-ms` or until it has caught up, so the
//! backlog commits in a few large transactions instead of one every `commit-interval-ms`; the
//! committed output is the same. And the opposite bound: when the wall clock makes many
//! customers due at once (after an outage), each transaction fires at most
//! `max-batch-events` of them. And a backlog read through a cache far smaller than its
//! customers, with their state read ahead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use waymark::telemetry::{
    BATCH_ENDS_TOTAL, BATCHES_EXTENDED_TOTAL, EVENTS_TOTAL, READ_AHEAD_TOTAL,
    TIMER_LATENESS_SECONDS, TRANSACTIONS_TOTAL,
};
use waymark_e2e::*;

#[test]
fn a_backlog_commits_in_a_few_large_transactions_with_the_same_output() {
    // Every 100 ms (the scenarios' commit-interval-ms), or up to a minute while behind: the
    // minute must never be reached, since the batch closes once the consumer has caught up.
    let scenario = Scenario::new(
        "backlog",
        2,
        "backlog-commit-interval-ms: 60000\nmax-batch-events: 1000000",
    )
    .unwrap();
    let events = scenario.loadgen("20000", "31");
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;
    let simulated = simulate_file(&events, now_millis()).unwrap();

    let processor = scenario.start().unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(40))
        .unwrap();
    let extended = processor.metric(BATCHES_EXTENDED_TOTAL);
    let committed = processor.metric(TRANSACTIONS_TOTAL);
    let ended =
        |reason: &str| processor.metric(&format!("{BATCH_ENDS_TOTAL}{{reason=\"{reason}\"}}"));
    let (caught_up, waited_out) = (ended("caught_up"), ended("backlog_interval"));
    let log = processor.stop();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        extended >= 1.0,
        "no batch was kept open for the backlog of {produced} events; log:\n{log}"
    );
    // One transaction every 100 ms would be dozens for this backlog; kept open, a batch ends
    // when the consumer finds nothing more to read, so there are a few.
    assert!(
        committed <= 8.0,
        "{committed} transactions for a backlog of {produced} events ({extended} batches kept open)"
    );
    // What ended the batches kept open: catching up, never the minute.
    assert!(
        caught_up >= 1.0 && waited_out == 0.0,
        "batches kept open ended caught up {caught_up} times and at backlog-commit-interval-ms \
         {waited_out} times; log:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

/// Read-ahead against a cache far smaller than the customers, emptied down to 30 customers
/// every 200 records: most records and wake-ups need a customer evicted since, read back on
/// the read-ahead thread while the records before it are handled. The committed output is
/// still `simulate`'s.
#[test]
fn a_backlog_through_a_tiny_cache_reads_customers_ahead_with_the_same_output() {
    let scenario = Scenario::new(
        "read-ahead",
        2,
        "cache-capacity: 40\nread-ahead-records: 64\nmax-batch-events: 200",
    )
    .unwrap();
    let events = scenario.loadgen("6000", "37");
    let produced = std::fs::read_to_string(&events).unwrap().lines().count() as f64;
    let simulated = simulate_file(&events, now_millis()).unwrap();

    let processor = scenario.start().unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(120))
        .unwrap();
    let read =
        |result: &str| processor.metric(&format!("{READ_AHEAD_TOTAL}{{result=\"{result}\"}}"));
    let (cached, superseded) = (read("cached"), read("superseded"));
    let log = processor.stop();
    assert_same_outputs(&kafka, &simulated);
    // More customers than records: the wake-ups' customers are read ahead too (26,300 of
    // them for 22,618 records when written; the records' own are at most one per record).
    assert!(
        cached > produced,
        "{cached} customers cached ahead ({superseded} superseded) for {produced} events; log:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn a_batch_kept_open_ends_once_every_fetched_record_is_handled_not_at_a_partition_end() {
    // Partition 1 holds a backlog while partition 0 gets a new event every few milliseconds:
    // the consumer keeps reaching partition 0's end, and each end waits in the consumer's
    // queue between the chunks of partition 1 fetched before and after it. A batch kept open
    // for the backlog must end when the queue is empty, not at the first of those ends (that
    // made it commit every ~100 ms while thousands of fetched records waited: a processor
    // behind live traffic caught up no faster than the traffic came in).
    const BACKLOG: usize = 200_000;
    // Record batches of 1,000 events and fetches of one batch per partition: the backlog
    // arrives in many chunks, with partition 0's ends between them; and all of it is fetched
    // ahead (`queued.min.messages`).
    let scenario = Scenario::with_kafka_properties(
        "backlog-ends",
        2,
        "input-format: json\nbacklog-commit-interval-ms: 60000\nmax-batch-events: 1000000",
        &[
            ("max.partition.fetch.bytes", "65536"),
            ("queued.min.messages", "1000000"),
        ],
    )
    .unwrap();
    let topic = scenario.topics.customer_events.clone();
    let small_batches = [("batch.num.messages".to_owned(), "1000".to_owned())].into();
    let producer: BaseProducer = waymark::kafka::producer_config(&brokers(), &small_batches)
        .create()
        .unwrap();
    let send = |partition: i32, event: &waymark::model::CustomerEvent| {
        let value = serde_json::to_vec(event).unwrap();
        let mut record = BaseRecord::to(&topic)
            .partition(partition)
            .key(&event.customer_id)
            .payload(&value);
        // The producer's queue is bounded (`queue.buffering.max.messages`): when it is full,
        // serve deliveries and try again.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("producing to {topic} [{partition}]: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    };
    let now = now_millis();
    for i in 0..BACKLOG {
        let customer = format!("b{i:05}");
        let email = format!("{customer}@example.com");
        let login = customer_event(
            &format!("login-{i}"),
            &customer,
            "login.created",
            now,
            &[("email", &email), ("sales_rep", "rep-1")],
        );
        send(1, &login);
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let stop = AtomicBool::new(false);
    let (caught_up, max_batch, waited_out, extended, log) = std::thread::scope(|s| {
        s.spawn(|| {
            // An event type no journey uses: read, ignored, never an output.
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let view = customer_event(
                    &format!("view-{i}"),
                    &format!("t{i}"),
                    "page.viewed",
                    now_millis(),
                    &[],
                );
                send(0, &view);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        });
        let processor = scenario.start().unwrap();
        let logins = format!("{EVENTS_TOTAL}{{result=\"accepted\",type=\"login.created\"}}");
        let handled = processor.await_metric(&logins, BACKLOG as f64, Duration::from_secs(60));
        // The batch holding the end of the backlog ends within a poll of it.
        std::thread::sleep(Duration::from_millis(500));
        let ended =
            |reason: &str| processor.metric(&format!("{BATCH_ENDS_TOTAL}{{reason=\"{reason}\"}}"));
        let counts = (
            ended("caught_up"),
            ended("max_batch"),
            ended("backlog_interval"),
            processor.metric(BATCHES_EXTENDED_TOTAL),
        );
        stop.store(true, Ordering::Relaxed);
        let log = processor.stop();
        handled.unwrap();
        (counts.0, counts.1, counts.2, counts.3, log)
    });
    assert!(
        extended >= 1.0,
        "no batch was kept open for a backlog of {BACKLOG} events; log:\n{log}"
    );
    // One batch kept open works off the backlog; a second may be when the queue ran empty
    // while a fetch was on its way. Ended at partition 0's ends, there were 8.
    assert!(
        caught_up <= 2.0 && max_batch == 0.0 && waited_out == 0.0,
        "the backlog's batches ended caught up {caught_up} times ({extended} kept open), at \
         max-batch-events {max_batch} and at backlog-commit-interval-ms {waited_out} times; \
         log:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn an_open_upstream_transaction_does_not_hold_a_batch_open() {
    // The high watermark counts the records of a transaction upstream has not committed yet;
    // read_committed cannot read them (nor anything after them). They make the input look
    // behind, so the batch is kept open, but it must end as soon as everything readable is
    // handled, not after backlog-commit-interval-ms. (And the partition counts as caught
    // up at the transaction's first record: the wall clock fires the login's invite.)
    let scenario =
        Scenario::new("backlog-open-txn", 1, "backlog-commit-interval-ms: 60000").unwrap();
    let topic = scenario.topics.customer_events.clone();
    let login = customer_event(
        "login-1",
        "c1",
        "login.created",
        now_millis() - 2 * 3_600_000,
        &[("email", "c1@example.com"), ("sales_rep", "rep-1")],
    );
    let events = scenario.dir.path().join("login.jsonl");
    write_events(&events, std::slice::from_ref(&login)).unwrap();
    scenario.produce_file(&events).unwrap();

    let mut transactional = std::collections::BTreeMap::new();
    transactional.insert(
        "transactional.id".to_owned(),
        format!("{}-upstream", scenario.id),
    );
    let upstream: BaseProducer = waymark::kafka::producer_config(&brokers(), &transactional)
        .create()
        .unwrap();
    upstream.init_transactions(Duration::from_secs(30)).unwrap();
    upstream.begin_transaction().unwrap();
    for i in 0..5_000 {
        let value = format!("not committed yet {i}");
        let record = BaseRecord::to(&topic).key("c2").payload(&value);
        upstream.send(record).map_err(|(e, _)| e).unwrap();
        upstream.poll(Duration::ZERO);
    }
    upstream.flush(Duration::from_secs(30)).unwrap();

    let processor = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the login's outputs, with a batch held open? {e}"));
    let extended = processor.metric(BATCHES_EXTENDED_TOTAL);
    let waited_out = processor.metric(&format!(
        "{BATCH_ENDS_TOTAL}{{reason=\"backlog_interval\"}}"
    ));
    let log = processor.stop();
    upstream.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        extended >= 1.0,
        "the open transaction's records did not make the input look behind; nothing tested"
    );
    assert!(
        waited_out == 0.0,
        "{waited_out} batches ended at backlog-commit-interval-ms; log:\n{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn timers_due_together_fire_in_transactions_of_max_batch_events() {
    const CUSTOMERS: usize = 100;
    const PER_TRANSACTION: usize = 10;
    let scenario = Scenario::new(
        "timers-due",
        2,
        &format!("allowed-lateness-secs: 0\nmax-batch-events: {PER_TRANSACTION}"),
    )
    .unwrap();
    // Every customer logged in at the same moment, so that the +1h invite email is due for
    // all of them at once, 20 s from now.
    let due = now_millis() + 20_000;
    let logins: Vec<_> = (0..CUSTOMERS)
        .map(|i| {
            let customer = format!("c{i:03}");
            let email = format!("{customer}@example.com");
            customer_event(
                &format!("e{i}"),
                &customer,
                "login.created",
                due - 3_600_000,
                &[("email", &email), ("sales_rep", "rep-1")],
            )
        })
        .collect();
    let events = scenario.dir.path().join("logins.jsonl");
    write_events(&events, &logins).unwrap();
    scenario.produce_file(&events).unwrap();

    // The processor takes in the logins and stops before the invites are due: an outage.
    let first = scenario.start().unwrap();
    let entered = scenario
        .await_outputs(CUSTOMERS, Duration::from_secs(15))
        .unwrap();
    first.stop();
    assert!(
        now_millis() < due,
        "the first run took until the invites were due; nothing left to test"
    );
    let commands =
        |outputs: &[serde_json::Value]| outputs.iter().filter(|v| v["kind"] == "command").count();
    assert_eq!(commands(&entered), 0, "no invite before it is due");
    std::thread::sleep(Duration::from_millis(
        (due - now_millis()).max(0) as u64 + 500,
    ));

    // Back after they came due: all are due at once, and go out ten customers a transaction.
    let second = scenario.start().unwrap();
    let simulated = simulate_file(&events, now_millis()).unwrap();
    assert_eq!(commands(&simulated), CUSTOMERS, "one invite each");
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(30))
        .unwrap();
    let fired = second.metric(&format!("{TIMER_LATENESS_SECONDS}_count"));
    let transactions = second.metric(TRANSACTIONS_TOTAL);
    let log = second.stop();
    assert_same_outputs(&kafka, &simulated);
    assert_eq!(
        fired, CUSTOMERS as f64,
        "every invite went out on its timer"
    );
    assert!(
        transactions >= (CUSTOMERS / PER_TRANSACTION) as f64,
        "{CUSTOMERS} customers due at once went out in {transactions} transactions; at most \
         {PER_TRANSACTION} may fire in one"
    );
    assert!(!log.contains("ERROR"), "{log}");
}
