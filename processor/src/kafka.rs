//! Kafka plumbing shared by the commands: client configuration, topic creation, and the
//! `produce` and `tail` tools.
//!
//! Owns how Waymark's clients are configured (Java-compatible murmur2 partitioning so records
//! keyed by customer id land where upstream Java producers put them; `read_committed`
//! everywhere) and the encoding of records on and off the wire via `codec`. Must not hold
//! journey logic.
//!
//! Delivery guarantee of `produce`: idempotent producer, every record acknowledged by the
//! broker before the command reports success, in file order per customer (one partition per
//! key, `max.in.flight` ≤ 5 with idempotence keeps order).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::codec;
use crate::config::{InputFormat, TopicsConfig};
use crate::model::{CustomerEvent, InterventionCommand, JourneyEvent, Output};

/// The high watermark of `topic`/`partition` as `client` last saw it in a fetch response:
/// cached by librdkafka, so no request goes to the broker. `None` before the first fetch of
/// the partition.
pub fn cached_high_watermark<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: `native_ptr` is the live librdkafka handle owned by `client`, which is borrowed
    // for the whole call; `topic` is a NUL-terminated string that outlives it; `low` and
    // `high` are valid for writes. The function only reads the handle's cached offsets.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Waits until every message handed to `producer` is delivered or has failed, at most
/// `timeout`; the same as [`Producer::flush`](rdkafka::producer::Producer::flush), but it
/// returns as soon as the last delivery report is served. rust-rdkafka's `flush` polls the
/// delivery reports itself, in rounds of 100 ms that never end early, so a flush with one
/// message outstanding took at least 100 ms: a transaction commit, at every
/// `commit-interval-ms`. A `ThreadedProducer` serves its delivery reports on its own thread;
/// this only waits for librdkafka's count of outstanding messages to reach zero.
pub fn flush_threaded<C>(
    producer: &rdkafka::producer::ThreadedProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext + 'static,
{
    use rdkafka::producer::Producer;
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `native_ptr` is the live librdkafka handle owned by `producer`, which is borrowed
    // for the whole call. rd_kafka_flush is thread-safe; with the event API that rust-rdkafka
    // uses it does not serve the delivery-report queue, it waits for the count to drain.
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
    if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::Flush(err.into()))
    }
}

/// The queue a subscribed consumer's `poll` reads: the records fetched from every assigned
/// partition and their end-of-partition events, in one queue. A `PartitionEOF` only says that
/// the fetcher had reached that partition's end when it fetched; records fetched afterwards,
/// from any partition, may still wait behind it (librdkafka prefetches up to
/// `queued.min.messages`, 100,000 records by default). Only an empty queue says that every
/// record fetched so far was handled.
pub struct ConsumerQueue<'a> {
    queue: std::ptr::NonNull<rdkafka::bindings::rd_kafka_queue_t>,
    _consumer: std::marker::PhantomData<&'a ()>,
}

impl<'a> ConsumerQueue<'a> {
    /// The queue of `consumer`; an error when it has no consumer group (no `group.id`).
    pub fn of<C: rdkafka::consumer::ConsumerContext>(
        consumer: &'a BaseConsumer<C>,
    ) -> Result<Self, KafkaError> {
        // SAFETY: `native_ptr` is the live librdkafka handle owned by `consumer`, which the
        // returned value borrows for `'a`, so the queue reference is destroyed (in `drop`)
        // before the handle.
        let queue = unsafe {
            rdkafka::bindings::rd_kafka_queue_get_consumer(consumer.client().native_ptr())
        };
        let queue = std::ptr::NonNull::new(queue)
            .ok_or_else(|| KafkaError::Subscription("the consumer has no consumer group".into()))?;
        Ok(ConsumerQueue {
            queue,
            _consumer: std::marker::PhantomData,
        })
    }

    /// Nothing waits in the queue: every record fetched so far was polled.
    pub fn is_empty(&self) -> bool {
        // SAFETY: `queue` is a live queue reference (see `of`); reading its length locks it.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.queue.as_ptr()) == 0 }
    }
}

impl Drop for ConsumerQueue<'_> {
    fn drop(&mut self) {
        // SAFETY: `queue` came from `rd_kafka_queue_get_consumer` and is destroyed only here.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Whether a consumer has handled everything of one partition that was there when it last
/// fetched it: it delivered the partition's end (`PartitionEOF`), no record of the partition
/// came since, and the [`ConsumerQueue`] was empty since (the end alone may have records of
/// other partitions, and newer ones of this one, queued behind it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionEnd {
    at_end: bool,
    caught_up: bool,
}

impl PartitionEnd {
    /// A record of the partition was polled.
    pub fn record(&mut self) {
        *self = PartitionEnd::default();
    }

    /// The partition's end was polled.
    pub fn end(&mut self) {
        self.at_end = true;
    }

    /// The consumer's queue was seen empty.
    pub fn drained(&mut self) {
        self.caught_up |= self.at_end;
    }

    /// The end was read, and the queue was empty since, with no record of the partition.
    pub fn caught_up(self) -> bool {
        self.caught_up
    }
}

/// The fatal error of a librdkafka client, as `Code: reason`, if it has one: such a client can
/// do nothing more and must be replaced.
pub fn fatal_error<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
) -> Option<String> {
    client
        .fatal_error()
        .map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// A Kafka tool that failed: what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaToolError {
    /// The client could not be created or a broker call failed.
    #[error(
        "kafka: {action} failed against {brokers}: {source}; is the broker running (scripts/kafka.sh status)?"
    )]
    Client {
        /// What was attempted.
        action: String,
        /// Bootstrap servers.
        brokers: String,
        /// The client error.
        source: Box<KafkaError>,
    },
    /// A line of the input file is not a valid event.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// Reading input or writing output failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A topic does not exist.
    #[error(
        "topic `{0}` does not exist; create it first (scripts/kafka.sh topics, or `waymark topics create`)"
    )]
    UnknownTopic(String),
    /// Topic configs refused: by Waymark (they would lose state) or by the broker.
    #[error("topics: {0}")]
    BadTopicConfig(String),
}

/// How Waymark's clients report librdkafka's global errors: the end of a partition is a
/// signal, not an error (consumers ask for it with `enable.partition.eof`), and the rest are
/// retried by librdkafka itself, so they are warnings until the operation that needs them fails.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
            tracing::trace!(%reason, "Partition end reached.")
        }
        _ => tracing::warn!(%error, %reason, "Kafka client error; librdkafka retries."),
    }
}

/// Producer context of `waymark run`: librdkafka's log, except that a failed transaction
/// (`TXNERR`) is a warning — the pipeline aborts it and processes the batch again (a
/// rebalance in the middle of a transaction does this), and reports a fatal one itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransactionalContext;

impl rdkafka::ClientContext for TransactionalContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error if fac != "TXNERR" => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl rdkafka::producer::ProducerContext for TransactionalContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Client context of the tools: [`log_client_error`] for global errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToolContext;

impl rdkafka::ClientContext for ToolContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ToolContext {}

/// Calls `f(partition, lag)` for every partition of `topic` this consumer fetches, from the
/// client's statistics JSON (`statistics.interval.ms`): records up to the partition's end (the
/// last stable offset under read_committed) not yet handed to the application, whether still
/// at the broker or fetched and queued in the client: from `app_offset`, the offset after the
/// last record the application polled, or, before the first one, from the committed offset,
/// else the fetch position.
///
/// Not `fetchq_cnt`: a subscribed consumer forwards every partition's fetch queue to one
/// queue, and librdkafka reports that queue's whole length for each partition, so adding it
/// counted the records queued once per assigned partition. Nor librdkafka's own
/// `consumer_lag`, which counts from the committed offset, which an exactly-once pipeline
/// never moves (its offsets commit through the producer's transactions): it would only grow.
pub fn each_consumer_lag(statistics: &[u8], topic: &str, mut f: impl FnMut(i32, i64)) {
    let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
        return;
    };
    let Some(partitions) = stats["topics"][topic]["partitions"].as_object() else {
        return;
    };
    for p in partitions.values() {
        let Some(partition) = p["partition"].as_i64() else {
            continue;
        };
        let offset = |field: &str| p[field].as_i64().filter(|o| *o >= 0);
        let Some(next) = offset("app_offset")
            .or_else(|| offset("committed_offset"))
            .or_else(|| offset("next_offset"))
        else {
            continue;
        };
        let end = match (p["ls_offset"].as_i64(), p["hi_offset"].as_i64()) {
            (Some(ls), _) if ls >= 0 => ls,
            (_, Some(hi)) => hi,
            _ => continue,
        };
        if partition < 0 || end < 0 || p["fetch_state"] != "active" {
            continue;
        }
        f(partition as i32, (end - next).max(0));
    }
}

/// Base settings of every client: brokers plus user-supplied librdkafka properties.
pub fn client_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    cfg.set("client.dns.lookup", "use_all_dns_ips");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    cfg
}

/// Producer properties Waymark depends on, which `kafka.properties` may not change:
/// idempotence (and the acks it needs) for exactly-once, and the Java client's partitioner,
/// so a customer's records land where upstream producers put that customer's events.
pub const PRODUCER_FIXED: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
];

/// Producer tuning Waymark starts from; `kafka.properties` overrides any of it.
pub const PRODUCER_DEFAULTS: [(&str, &str); 4] = [
    ("linger.ms", "5"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "500000"),
    ("message.timeout.ms", "60000"),
];

/// Tuning `run`'s input consumer starts from; `kafka.properties` overrides any of it.
///
/// With librdkafka's defaults a caught-up consumer fetches again as soon as any record has
/// arrived: at a steady rate that is a fetch per few records, hundreds a second, and each
/// costs the broker and the client about as much as a full one. Waiting for 64 KiB or 20 ms,
/// whichever comes first, took about a fifth off the CPU of both at 15,000 events/s
/// (BENCHMARKS.md, 2026-12-07) and adds at most 20 ms before a record reaches the processor,
/// little beside the 100 ms commit interval. A backlog fills every fetch at once.
pub const CONSUMER_DEFAULTS: [(&str, &str); 2] =
    [("fetch.min.bytes", "65536"), ("fetch.wait.max.ms", "20")];

/// Settings of `run`'s input consumer before what the pipeline fixes: [`CONSUMER_DEFAULTS`]
/// overridden by `extra`.
pub fn consumer_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    config_over(brokers, CONSUMER_DEFAULTS, extra)
}

/// Producer settings shared by `produce`, `loadgen` and the processor: [`PRODUCER_DEFAULTS`]
/// and [`PRODUCER_FIXED`], overridden by `extra` (the configuration refuses the fixed ones).
pub fn producer_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    config_over(
        brokers,
        PRODUCER_DEFAULTS.into_iter().chain(PRODUCER_FIXED),
        extra,
    )
}

/// [`client_config`] with `base` set first, so that `extra` overrides it.
fn config_over<'a>(
    brokers: &str,
    base: impl IntoIterator<Item = (&'a str, &'a str)>,
    extra: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut cfg = client_config(brokers, &BTreeMap::new());
    for (key, value) in base {
        cfg.set(key, value);
    }
    for (key, value) in extra {
        cfg.set(key, value);
    }
    cfg
}

fn client_err<'a>(action: &str, brokers: &'a str) -> impl Fn(KafkaError) -> KafkaToolError + 'a {
    let action = action.to_owned();
    move |source| KafkaToolError::Client {
        action: action.clone(),
        brokers: brokers.to_owned(),
        source: Box::new(source),
    }
}

/// How [`create_topics`] makes the topics it creates.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Partitions per topic.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic configs for every topic created (`min.insync.replicas`, `retention.ms`, …); the
    /// changelog's `cleanup.policy` stays `compact` whatever this says.
    pub config: BTreeMap<String, String>,
    /// Topic configs for the state changelog only, over `config` (`segment.bytes`, …). The
    /// changelog is always `cleanup.policy=compact`: [`TopicSpec::check`] refuses anything else.
    pub changelog_config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// `partitions` partitions replicated `replication` times, with the broker's default
    /// configs (the changelog compacted).
    pub fn new(partitions: i32, replication: i32) -> TopicSpec {
        TopicSpec {
            partitions,
            replication,
            config: BTreeMap::new(),
            changelog_config: BTreeMap::new(),
        }
    }

    /// Refuses configs that would lose state: the changelog keeps the latest record of every
    /// customer for ever, so its cleanup policy is `compact` and nothing else.
    pub fn check(&self) -> Result<(), String> {
        match self.changelog_config.get(CLEANUP_POLICY) {
            Some(p) if p != "compact" => Err(format!(
                "the state changelog must be `{CLEANUP_POLICY}=compact` (got `{p}`): with \
                 deletion, a restore would lose every customer whose last change is older than \
                 the retention; drop `--changelog-config {CLEANUP_POLICY}=…`"
            )),
            _ => Ok(()),
        }
    }

    /// The configs of every topic but the state changelog: `config`.
    fn common(&self) -> BTreeMap<&str, &str> {
        self.config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The configs of the state changelog: `config`, then `changelog_config`, then compaction.
    fn changelog(&self) -> BTreeMap<&str, &str> {
        let mut all = self.common();
        all.extend(
            self.changelog_config
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        all.insert(CLEANUP_POLICY, "compact");
        all
    }

    /// Topic `name` as this spec makes it, with `config`.
    fn new_topic<'a>(&self, name: &'a str, config: &BTreeMap<&'a str, &'a str>) -> NewTopic<'a> {
        let topic = NewTopic::new(
            name,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        config.iter().fold(topic, |topic, (k, v)| topic.set(k, v))
    }
}

const CLEANUP_POLICY: &str = "cleanup.policy";

/// Parses a topic config given as `KEY=VALUE` on the command line.
pub fn parse_topic_config(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value))
            if !key.is_empty() && !value.is_empty() && !key.contains(char::is_whitespace) =>
        {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "`{arg}` is not KEY=VALUE; give a Kafka topic config such as `segment.bytes=134217728`"
        )),
    }
}

/// Creates Waymark's topics (input, outputs, dead letters, late events, state changelog) when
/// missing, as `spec` says. Existing topics are left as they are. Returns the names created.
pub async fn create_topics(
    brokers: &str,
    topics: &TopicsConfig,
    spec: &TopicSpec,
) -> Result<Vec<String>, KafkaToolError> {
    spec.check().map_err(KafkaToolError::BadTopicConfig)?;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &BTreeMap::new())
        .create()
        .map_err(client_err("creating an admin client", brokers))?;
    let common = spec.common();
    let changelog = spec.changelog();
    let mut names = vec![topics.customer_events.as_str()];
    names.extend(topics.outputs());
    // What the sinks write: outcomes, and each channel's dead letters.
    let sink_dlqs: Vec<String> = crate::model::Channel::ALL
        .iter()
        .map(|c| topics.sink_dead_letters(*c))
        .collect();
    names.push(&topics.intervention_outcomes);
    names.extend(sink_dlqs.iter().map(String::as_str));
    let mut new: Vec<NewTopic<'_>> = names.iter().map(|n| spec.new_topic(n, &common)).collect();
    // The state changelog keeps the latest record per customer: compacted, never deleted by age.
    new.push(spec.new_topic(&topics.state_changelog, &changelog));
    // Validated first, all of them, so that configs the broker refuses create nothing.
    let mut created = Vec::new();
    for validate_only in [true, false] {
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .validate_only(validate_only);
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(client_err("creating topics", brokers))?;
        for r in results {
            match r {
                Ok(name) if !validate_only => created.push(name),
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code @ RDKafkaErrorCode::InvalidConfig)) => {
                    return Err(KafkaToolError::BadTopicConfig(format!(
                        "the broker refused the configs of topic {name} ({code}): {:?}; check \
                         the names and values given with --topic-config and --changelog-config \
                         against Kafka's topic configs; no topic was created",
                        if name == topics.state_changelog {
                            &changelog
                        } else {
                            &common
                        }
                    )));
                }
                Err((name, code)) => {
                    return Err(KafkaToolError::Client {
                        action: format!("creating topic {name}"),
                        brokers: brokers.to_owned(),
                        source: Box::new(KafkaError::AdminOp(code)),
                    });
                }
            }
        }
    }
    Ok(created)
}

/// Encodes an event for `customer-events` in the configured input format (Avro: a bare datum).
pub fn encode_event(ev: &CustomerEvent, format: InputFormat) -> Result<Vec<u8>, codec::CodecError> {
    encode_event_for(ev, format, &crate::registry::Wire::default(), "")
}

/// Encodes an event for `topic` in `format`; Avro framed as `wire` frames it (the Confluent
/// wire format when it has a schema registry, the schema registered for `topic`).
fn encode_event_for(
    ev: &CustomerEvent,
    format: InputFormat,
    wire: &crate::registry::Wire,
    topic: &str,
) -> Result<Vec<u8>, codec::CodecError> {
    match format {
        InputFormat::Avro => wire.encode(topic, ev),
        InputFormat::Json => Ok(serde_json::to_vec(ev).unwrap_or_default()),
    }
}

/// Publishes JSON-lines events to `topic`, keyed by customer id, in file order.
/// Returns the number of records acknowledged; stops at the first malformed line.
pub async fn produce_file(
    brokers: &str,
    topic: &str,
    path: &str,
    input: impl BufRead,
    format: InputFormat,
    wire: &crate::registry::Wire,
) -> Result<u64, KafkaToolError> {
    let mut bad: Option<KafkaToolError> = None;
    let events = input
        .lines()
        .enumerate()
        .map_while(|(n, line)| {
            let parsed = line.map_err(KafkaToolError::Io).and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                serde_json::from_str::<CustomerEvent>(&line)
                    .map(Some)
                    .map_err(|e| KafkaToolError::BadLine {
                        path: path.to_owned(),
                        line: n as u64 + 1,
                        message: format!("not a CustomerEvent JSON object: {e}"),
                    })
            });
            match parsed {
                Ok(ev) => Some(ev),
                Err(e) => {
                    bad = Some(e);
                    None
                }
            }
        })
        .flatten();
    let sent = produce_events(brokers, topic, events, format, wire, Pace::default()).await?;
    match bad {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

/// A paced [`produce_events`] sends the events due within this much time together, then
/// sleeps: waking for every event (a sleep of a few microseconds, rounded up to the timer's
/// millisecond) cost the sender and librdkafka's network thread thousands of wake-ups a
/// second at 15,000 events/s. A rate stays the same over any second; each event is still
/// stamped when it is sent.
const PACE_TICK: Duration = Duration::from_millis(5);

/// How [`produce_events`] paces and stamps what it sends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pace {
    /// At most this many events per second; 0 = as fast as the broker takes them.
    pub rate: f64,
    /// Stamp each event's `occurred_at` with the wall-clock time it is sent, as a live
    /// upstream system would, instead of the time it carries.
    pub live: bool,
}

/// Publishes events to `topic`, keyed by customer id, in iteration order, paced and stamped
/// by `pace`, encoded in `format` (Avro framed by `wire`). Returns the number acknowledged.
pub async fn produce_events(
    brokers: &str,
    topic: &str,
    events: impl Iterator<Item = CustomerEvent>,
    format: InputFormat,
    wire: &crate::registry::Wire,
    pace: Pace,
) -> Result<u64, KafkaToolError> {
    let producer: FutureProducer = producer_config(brokers, &BTreeMap::new())
        .create()
        .map_err(client_err("creating a producer", brokers))?;
    let mut pending = Vec::new();
    let mut sent = 0u64;
    let mut offered = 0u64;
    let started = Instant::now();
    let mut last_log = Instant::now();
    for mut ev in events {
        if pace.live {
            ev.occurred_at = crate::model::now_millis();
        }
        let value =
            encode_event_for(&ev, format, wire, topic).map_err(|e| KafkaToolError::BadLine {
                path: topic.to_owned(),
                line: offered + 1,
                message: e.to_string(),
            })?;
        // No record timestamp: event time lives in the value; the broker's CreateTime keeps
        // retention working for traces whose event times lie in the past.
        let record = FutureRecord::to(topic).key(&ev.customer_id).payload(&value);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| KafkaToolError::Client {
                    action: format!("producing to {topic}"),
                    brokers: brokers.to_owned(),
                    source: Box::new(e),
                })?,
        );
        offered += 1;
        if pace.rate > 0.0 {
            // The next event is due this far ahead: send it now if that is within a tick.
            let ahead = Duration::from_secs_f64(offered as f64 / pace.rate)
                .saturating_sub(started.elapsed());
            if ahead > PACE_TICK {
                tokio::time::sleep(ahead).await;
            }
        }
        if pending.len() >= 10_000 {
            sent += await_deliveries(&mut pending, brokers, topic).await?;
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                records = offered,
                elapsed_secs = started.elapsed().as_secs(),
                topic,
                "Producing."
            );
            last_log = Instant::now();
        }
    }
    sent += await_deliveries(&mut pending, brokers, topic).await?;
    Ok(sent)
}

/// Waits for every pending delivery; fails on the first error.
pub async fn await_deliveries(
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
    brokers: &str,
    topic: &str,
) -> Result<u64, KafkaToolError> {
    let n = pending.len() as u64;
    for fut in pending.drain(..) {
        match fut.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(KafkaToolError::Client {
                    action: format!("delivering to {topic}"),
                    brokers: brokers.to_owned(),
                    source: Box::new(e),
                });
            }
            Err(_) => {
                return Err(KafkaToolError::Client {
                    action: format!("delivering to {topic} (producer closed)"),
                    brokers: brokers.to_owned(),
                    source: Box::new(KafkaError::Canceled),
                });
            }
        }
    }
    Ok(n)
}

/// Options of `waymark tail`.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Start from the earliest offset instead of the end.
    pub from_beginning: bool,
    /// Stop once nothing new arrived for this long.
    pub idle_exit: Option<Duration>,
    /// Stop after this many records.
    pub max_records: Option<u64>,
    /// Add `received_at`, when this reader got each record (wall clock, RFC 3339), and
    /// `produced_at`, the record's Kafka timestamp (when its producer created it).
    pub received_at: bool,
    /// How Waymark's records are framed (bare Avro, or with the schema registry).
    pub wire: crate::registry::Wire,
}

/// Decodes one record of a Waymark topic into its JSON-lines form.
pub fn decode_output_record(
    topics: &TopicsConfig,
    wire: &crate::registry::Wire,
    topic: &str,
    payload: &[u8],
) -> serde_json::Value {
    let is_command = crate::model::Channel::ALL
        .iter()
        .any(|c| topics.commands(*c) == topic);
    let decoded = if is_command {
        wire.decode(payload)
            .map(|c: InterventionCommand| serde_json::to_value(Output::Command(c)))
    } else if topic == topics.journey_events {
        wire.decode(payload)
            .map(|e: JourneyEvent| serde_json::to_value(Output::JourneyEvent(e)))
    } else {
        wire.decode::<CustomerEvent>(payload)
            .or_else(|_| codec::decode_customer_event(payload, InputFormat::Avro))
            .or_else(|_| codec::decode_customer_event(payload, InputFormat::Json))
            .map(|e| {
                serde_json::to_value(e).map(|mut v| {
                    v["kind"] = "customer_event".into();
                    v
                })
            })
    };
    match decoded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            serde_json::json!({"kind": "undecodable", "topic": topic, "error": e.to_string()})
        }
        Err(e) => serde_json::json!({
            "kind": "undecodable",
            "topic": topic,
            "error": e.to_string(),
            "payload": String::from_utf8_lossy(payload),
        }),
    }
}

/// A consumer for the command-line tools that read topics (`tail`, `--from-topic`): a group of
/// its own that never commits, end-of-partition signals, and only committed records.
fn tool_consumer(brokers: &str, tool: &str) -> Result<BaseConsumer<ToolContext>, KafkaToolError> {
    client_config(brokers, &BTreeMap::new())
        .set("group.id", format!("waymark-{tool}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(ToolContext)
        .map_err(client_err("creating a consumer", brokers))
}

/// How many partitions `topic` has; an error when it does not exist.
fn partition_count(
    consumer: &BaseConsumer<ToolContext>,
    brokers: &str,
    topic: &str,
) -> Result<i32, KafkaToolError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(client_err(&format!("reading metadata of {topic}"), brokers))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if partitions == 0 {
        return Err(KafkaToolError::UnknownTopic(topic.to_owned()));
    }
    Ok(partitions)
}

/// Prints the decoded records of `topic_names` as JSON lines (read_committed). `out` is
/// flushed whenever the reader has caught up, so a pipe sees each record as it arrives.
pub fn tail(
    brokers: &str,
    topics: &TopicsConfig,
    topic_names: &[String],
    opts: &TailOptions,
    out: &mut impl Write,
) -> Result<u64, KafkaToolError> {
    let consumer = tool_consumer(brokers, "tail")?;
    let mut tpl = TopicPartitionList::new();
    for name in topic_names {
        let partitions = partition_count(&consumer, brokers, name)?;
        for p in 0..partitions {
            let offset = if opts.from_beginning {
                Offset::Beginning
            } else {
                Offset::End
            };
            tpl.add_partition_offset(name, p, offset)
                .map_err(client_err("assigning partitions", brokers))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(client_err("assigning partitions", brokers))?;
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let mut v = decode_output_record(
                    topics,
                    &opts.wire,
                    msg.topic(),
                    msg.payload().unwrap_or_default(),
                );
                if let Some(headers) = msg.headers()
                    && headers.count() > 0
                    && v.get("kind").and_then(|k| k.as_str()) != Some("command")
                    && v.get("kind").and_then(|k| k.as_str()) != Some("journey_event")
                {
                    let h: BTreeMap<String, String> = headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect();
                    v["headers"] = serde_json::to_value(h).unwrap_or_default();
                }
                if opts.received_at {
                    v["received_at"] =
                        crate::model::format_millis(crate::model::now_millis()).into();
                    if let Some(ms) = msg.timestamp().to_millis() {
                        v["produced_at"] = crate::model::format_millis(ms).into();
                    }
                }
                serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::other)?;
                out.write_all(b"\n")?;
                printed += 1;
                last_record = Instant::now();
                if opts.max_records.is_some_and(|m| printed >= m) {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => out.flush()?,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Consumer error while tailing.");
            }
        }
        if let Some(idle) = opts.idle_exit
            && last_record.elapsed() >= idle
        {
            break;
        }
    }
    out.flush()?;
    Ok(printed)
}

/// What [`read_history`] read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistoryStats {
    /// Events written.
    pub events: u64,
    /// Records that are not customer events (skipped), with up to 10 examples
    /// (`partition/offset: why`).
    pub undecodable: u64,
    /// See `undecodable`.
    pub examples: Vec<String>,
    /// Records Waymark wrote for identity merges (skipped: the engine makes them again from
    /// the `identity.alias` events).
    pub forwards: u64,
    /// Partitions read.
    pub partitions: usize,
}

/// Reads the customer events of `topic` whose record timestamps lie in `[since, to)` (each
/// bound optional), up to the end of every partition as it is when the call starts
/// (read_committed), and writes them as JSON lines — the input of `simulate` and `backtest`.
/// Each partition keeps its offset order (its arrival order, which decides what was late);
/// the partitions are merged by the event time of their next event, as a processor's
/// per-partition watermarks advance together. Records that do not decode as `format` are
/// skipped and counted.
pub fn read_history(
    brokers: &str,
    topic: &str,
    input: &codec::InputDecoder,
    since: Option<i64>,
    to: Option<i64>,
    out: &mut impl Write,
) -> Result<HistoryStats, KafkaToolError> {
    let consumer = tool_consumer(brokers, "history")?;
    let timeout = Duration::from_secs(10);
    let partitions = partition_count(&consumer, brokers, topic)?;
    // The offset of the first record at or after `at` in each partition; `high` when none.
    let offsets_at = |at: i64, high: &[i64]| -> Result<Vec<i64>, KafkaToolError> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(at))
                .map_err(client_err("looking up offsets by time", brokers))?;
        }
        let found = consumer
            .offsets_for_times(tpl, timeout)
            .map_err(client_err("looking up offsets by time", brokers))?;
        Ok((0..partitions)
            .map(
                |p| match found.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => high[p as usize],
                },
            )
            .collect())
    };
    let mut low = Vec::new();
    let mut high = Vec::new();
    for p in 0..partitions {
        let (l, h) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(client_err(
                &format!("reading the offsets of {topic}"),
                brokers,
            ))?;
        low.push(l);
        high.push(h);
    }
    let start = match since {
        Some(t) => offsets_at(t, &high)?,
        None => low.clone(),
    };
    let end = match to {
        Some(t) => offsets_at(t, &high)?,
        None => high.clone(),
    };
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::BTreeSet::new();
    for p in 0..partitions {
        if start[p as usize] < end[p as usize] {
            tpl.add_partition_offset(topic, p, Offset::Offset(start[p as usize]))
                .map_err(client_err("assigning partitions", brokers))?;
            open.insert(p);
        }
    }
    let mut stats = HistoryStats {
        partitions: partitions as usize,
        ..HistoryStats::default()
    };
    let mut per_partition: Vec<Vec<CustomerEvent>> = vec![Vec::new(); partitions as usize];
    if !open.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(client_err("assigning partitions", brokers))?;
    }
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                last_progress = Instant::now();
                let (p, offset) = (msg.partition(), msg.offset());
                if offset >= end[p as usize] {
                    open.remove(&p);
                    continue;
                }
                let decoded = if crate::pipeline::is_forward(&msg) {
                    stats.forwards += 1;
                    None
                } else {
                    Some(input.decode(msg.payload().unwrap_or_default()))
                };
                match decoded {
                    None => {}
                    Some(Ok(ev)) => per_partition[p as usize].push(ev),
                    Some(Err(e)) => {
                        stats.undecodable += 1;
                        if stats.examples.len() < 10 {
                            stats.examples.push(format!("{p}/{offset}: {e}"));
                        }
                    }
                }
                if offset + 1 >= end[p as usize] {
                    open.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Consumer error while reading history."),
            None => {
                // Transaction markers or aborted records at the end leave nothing to read.
                if last_progress.elapsed() > Duration::from_secs(30) {
                    tracing::warn!(
                        partitions = ?open,
                        "No record for 30 s before the end offsets; stopping there."
                    );
                    break;
                }
            }
        }
    }
    // K-way merge: the partition whose next event is earliest (ties: lower partition) goes
    // next, so every partition's own order is kept.
    let mut next = vec![0usize; per_partition.len()];
    let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>> = per_partition
        .iter()
        .enumerate()
        .filter_map(|(p, evs)| evs.first().map(|e| std::cmp::Reverse((e.occurred_at, p))))
        .collect();
    while let Some(std::cmp::Reverse((_, p))) = heads.pop() {
        let ev = &per_partition[p][next[p]];
        serde_json::to_writer(&mut *out, ev).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
        stats.events += 1;
        next[p] += 1;
        if let Some(e) = per_partition[p].get(next[p]) {
            heads.push(std::cmp::Reverse((e.occurred_at, p)));
        }
    }
    out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_config_is_key_equals_value() {
        assert_eq!(
            parse_topic_config("segment.bytes=134217728"),
            Ok(("segment.bytes".to_owned(), "134217728".to_owned()))
        );
        assert_eq!(
            parse_topic_config("message.timestamp.type=LogAppendTime"),
            Ok((
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned()
            ))
        );
        // Only the first `=` splits: a value may hold one.
        assert_eq!(
            parse_topic_config("k=a=b"),
            Ok(("k".to_owned(), "a=b".to_owned()))
        );
        for bad in [
            "segment.bytes",
            "=1",
            "segment.bytes=",
            "segment bytes=1",
            "",
        ] {
            let err = parse_topic_config(bad).expect_err(bad);
            assert!(
                err.contains("is not KEY=VALUE") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_changelog_stays_compacted_over_every_config() {
        let mut spec = TopicSpec::new(4, 3);
        spec.config = BTreeMap::from([
            ("cleanup.policy".to_owned(), "delete".to_owned()),
            ("min.insync.replicas".to_owned(), "2".to_owned()),
            ("segment.bytes".to_owned(), "1073741824".to_owned()),
        ]);
        spec.changelog_config =
            BTreeMap::from([("segment.bytes".to_owned(), "134217728".to_owned())]);
        assert_eq!(
            spec.check(),
            Ok(()),
            "deletion on the other topics is theirs"
        );
        assert_eq!(
            spec.changelog(),
            BTreeMap::from([
                ("cleanup.policy", "compact"),
                ("min.insync.replicas", "2"),
                ("segment.bytes", "134217728"),
            ]),
            "the changelog's own configs over the common ones, compaction over both"
        );
        spec.changelog_config
            .insert("cleanup.policy".to_owned(), "compact,delete".to_owned());
        let err = spec.check().expect_err("deleting state by age");
        assert!(
            err.contains("must be `cleanup.policy=compact`") && err.contains("compact,delete"),
            "{err}"
        );
        spec.changelog_config
            .insert("cleanup.policy".to_owned(), "compact".to_owned());
        assert_eq!(spec.check(), Ok(()));
    }

    #[test]
    fn a_partition_is_caught_up_once_its_end_was_read_and_the_queue_drained_since() {
        let mut end = PartitionEnd::default();
        end.drained();
        assert!(
            !end.caught_up(),
            "an empty queue before the end was read says nothing"
        );
        end.end();
        assert!(
            !end.caught_up(),
            "the end alone: records fetched after it may wait in the queue"
        );
        end.drained();
        assert!(end.caught_up(), "the end, then an empty queue");
        end.drained();
        assert!(end.caught_up(), "stays caught up while nothing arrives");
        end.record();
        assert!(!end.caught_up(), "a record of the partition arrived");
        end.drained();
        assert!(!end.caught_up(), "its end was not read again");
        end.end();
        end.record();
        end.drained();
        assert!(
            !end.caught_up(),
            "a record after the end: the end is no longer the partition's"
        );
    }

    #[test]
    fn consumer_lag_counts_from_the_application_position_to_the_last_stable_offset() {
        // Shaped like librdkafka's statistics: partition -1 is the internal "unassigned" one,
        // partition 2 is known but not fetched by this consumer. Every fetch queue is
        // forwarded to the consumer's queue, so each partition reports its whole length (50):
        // it must not count. Partition 3 has handed nothing to the application yet (from its
        // committed offset); partition 4 has no committed offset either (its fetch position).
        let stats = serde_json::json!({"topics": {"events": {"partitions": {
            "-1": {"partition": -1, "fetch_state": "none", "next_offset": -1001, "app_offset": -1001, "committed_offset": -1001, "ls_offset": -1001, "hi_offset": -1001, "fetchq_cnt": 0},
            "0": {"partition": 0, "fetch_state": "active", "next_offset": 95, "app_offset": 83, "committed_offset": 60, "ls_offset": 100, "hi_offset": 105, "fetchq_cnt": 50, "consumer_lag": -1},
            "1": {"partition": 1, "fetch_state": "active", "next_offset": 42, "app_offset": 42, "committed_offset": 40, "ls_offset": 42, "hi_offset": 42, "fetchq_cnt": 50},
            "2": {"partition": 2, "fetch_state": "none", "next_offset": -1001, "app_offset": -1001, "committed_offset": -1001, "ls_offset": 10, "hi_offset": 10, "fetchq_cnt": 50},
            "3": {"partition": 3, "fetch_state": "active", "next_offset": 30, "app_offset": -1001, "committed_offset": 20, "ls_offset": 30, "hi_offset": 30, "fetchq_cnt": 50},
            "4": {"partition": 4, "fetch_state": "active", "next_offset": 7, "app_offset": -1001, "committed_offset": -1001, "ls_offset": 9, "hi_offset": 9, "fetchq_cnt": 50}
        }}}});
        let mut lags = Vec::new();
        each_consumer_lag(stats.to_string().as_bytes(), "events", |p, lag| {
            lags.push((p, lag))
        });
        lags.sort();
        assert_eq!(lags, [(0, 17), (1, 0), (3, 10), (4, 2)]);
        let mut none = 0;
        each_consumer_lag(b"not json", "events", |_, _| none += 1);
        each_consumer_lag(stats.to_string().as_bytes(), "other", |_, _| none += 1);
        assert_eq!(none, 0);
    }
}
