//! Telemetry: JSON or text logs, Prometheus metrics, and the `/livez` `/readyz` `/metrics` server.
//!
//! Owns every metric name (the constants below, `waymark_<subsystem>_<what>_<unit|total>`),
//! their help texts and bounded label values (enums and topic/partition numbers, never a
//! customer id), and the HTTP endpoints. Other modules record through [`Metrics`]'s methods,
//! which are called once per batch, not per event, where that matters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::shutdown::CancellationToken;

/// Events read from the input, by result (`accepted`, `duplicate`, `ignored`, `late`,
/// `rejected`, `forgotten`).
pub const EVENTS_TOTAL: &str = "waymark_pipeline_events_total";
/// Records dead-lettered, by reason code.
pub const DEAD_LETTERS_TOTAL: &str = "waymark_pipeline_dead_letters_total";
/// Commands emitted, by journey, action and channel.
pub const COMMANDS_TOTAL: &str = "waymark_engine_commands_total";
/// Journey events emitted, by journey and type.
pub const JOURNEY_EVENTS_TOTAL: &str = "waymark_engine_journey_events_total";
/// Kafka transactions, by result (`committed`, `aborted`).
pub const TRANSACTIONS_TOTAL: &str = "waymark_pipeline_transactions_total";
/// Duration of a transaction commit (outputs + offsets + state flush), seconds.
pub const COMMIT_SECONDS: &str = "waymark_pipeline_commit_duration_seconds";
/// Time of each part of a commit, by `phase` ([`CommitPhase`]): whether commits wait on the
/// broker or on local work.
pub const COMMIT_PHASE_SECONDS: &str = "waymark_pipeline_commit_phase_duration_seconds";
/// Batches kept open past `commit-interval-ms` because the input was behind.
pub const BATCHES_EXTENDED_TOTAL: &str = "waymark_pipeline_batches_extended_total";
/// Batches committed, by what ended them ([`BatchEnd`]).
pub const BATCH_ENDS_TOTAL: &str = "waymark_pipeline_batch_ends_total";
/// Time the processing loop waited for the commit in flight before it could start the next.
pub const COMMIT_WAIT_SECONDS: &str = "waymark_pipeline_commit_wait_seconds";
/// Seconds the pipeline thread (the one handling records) spent, by `state`: `running` on a
/// CPU, or `runnable`: ready to run but waiting for a CPU, taken by other processes or threads
/// or withheld by a container's CPU limit. The rest of the wall time it waited for records or
/// for a commit. From Linux's scheduler statistics; stays 0 on other systems.
pub const PIPELINE_THREAD_SECONDS: &str = "waymark_pipeline_thread_seconds_total";
/// Customers with a pending timer, per partition.
pub const TIMERS_PENDING: &str = "waymark_runtime_timers_pending";
/// How far the partition's watermark is behind the wall clock, seconds.
pub const WATERMARK_LAG_SECONDS: &str = "waymark_runtime_watermark_lag_seconds";
/// Partitions currently assigned to this instance.
pub const PARTITIONS_ASSIGNED: &str = "waymark_pipeline_partitions_assigned";
/// Changelog records read while restoring partitions (progress: compare with the changelog's
/// end offsets).
pub const RESTORE_RECORDS_TOTAL: &str = "waymark_state_restore_records_total";
/// Customers read ahead of their records or wake-ups (`waymark run`), by `result`: `cached`
/// (in the cache before they were needed) or `superseded` (cached by then, or the read may
/// have been stale: discarded).
pub const READ_AHEAD_TOTAL: &str = "waymark_state_read_ahead_total";
/// Commands a channel sink handled, by `channel` and `result` (`delivered`, `duplicate`, or
/// the failure code).
pub const SINK_DELIVERIES_TOTAL: &str = "waymark_sink_deliveries_total";
/// Delivery attempts a sink retried, by `channel`.
pub const SINK_RETRIES_TOTAL: &str = "waymark_sink_retries_total";
/// Partitions currently being restored from the changelog.
pub const RESTORING_PARTITIONS: &str = "waymark_state_restoring_partitions";
/// Times the pipeline or a sink was started again with new Kafka clients after one of them
/// reported a fatal error.
pub const CLIENT_RESTARTS_TOTAL: &str = "waymark_kafka_client_restarts_total";
/// Journey reloads asked of `waymark run`, by result (`applied`, `unchanged`, `refused`).
pub const JOURNEY_RELOADS_TOTAL: &str = "waymark_journey_reloads_total";
/// Outcomes read from `intervention-outcomes`, by result (as [`EVENTS_TOTAL`]).
pub const OUTCOMES_TOTAL: &str = "waymark_pipeline_outcomes_total";
/// Build information (value 1), by version.
pub const BUILD_INFO: &str = "waymark_build_info";
/// Records of `customer-events` not yet read, per assigned partition (from the client's
/// statistics, every `kafka.statistics-interval`).
pub const CONSUMER_LAG: &str = "waymark_pipeline_consumer_lag_records";
/// Time from reading a record to the commit of the transaction holding its outputs, seconds.
pub const PROCESSING_LATENCY_SECONDS: &str = "waymark_pipeline_processing_latency_seconds";
/// For commands an input event caused at once (immediate actions): from the event's Kafka
/// timestamp to the commit of the command, seconds.
pub const EVENT_TO_COMMAND_SECONDS: &str = "waymark_engine_event_to_command_seconds";
/// For commands a timer caused: how long after it could first fire (due time + allowed
/// lateness, on the wall clock) the command was committed, seconds.
pub const TIMER_LATENESS_SECONDS: &str = "waymark_engine_timer_lateness_seconds";
/// Commands a customer protection withheld, by journey, action and reason (`suppression_list`,
/// `frequency_cap`).
pub const COMMANDS_SUPPRESSED_TOTAL: &str = "waymark_engine_commands_suppressed_total";
/// Approximate keys (customers and timers) in a partition's local state.
pub const STATE_KEYS: &str = "waymark_state_keys";
/// Approximate bytes of a partition's local state (SST files and memtables).
pub const STATE_BYTES: &str = "waymark_state_bytes";
/// Consumer group rebalances seen by this instance, by kind (`assigned`, `revoked`).
pub const REBALANCES_TOTAL: &str = "waymark_pipeline_rebalances_total";
/// Time a sink's provider took to deliver one command (every attempt), by channel, seconds.
pub const SINK_DELIVERY_SECONDS: &str = "waymark_sink_delivery_duration_seconds";
/// Journey events the analytics view read, by result (`applied`, `duplicate`, `rejected`).
pub const ANALYTICS_EVENTS_TOTAL: &str = "waymark_analytics_journey_events_total";
/// Records of `journey-events` the analytics view has not read yet, per partition.
pub const ANALYTICS_CONSUMER_LAG: &str = "waymark_analytics_consumer_lag_records";

/// Every metric name Waymark exports; the deployment's dashboards and alerts are checked
/// against this list.
pub const METRIC_NAMES: &[&str] = &[
    EVENTS_TOTAL,
    DEAD_LETTERS_TOTAL,
    COMMANDS_TOTAL,
    JOURNEY_EVENTS_TOTAL,
    TRANSACTIONS_TOTAL,
    COMMIT_SECONDS,
    COMMIT_PHASE_SECONDS,
    BATCHES_EXTENDED_TOTAL,
    BATCH_ENDS_TOTAL,
    COMMIT_WAIT_SECONDS,
    PIPELINE_THREAD_SECONDS,
    TIMERS_PENDING,
    WATERMARK_LAG_SECONDS,
    PARTITIONS_ASSIGNED,
    RESTORE_RECORDS_TOTAL,
    READ_AHEAD_TOTAL,
    SINK_DELIVERIES_TOTAL,
    SINK_RETRIES_TOTAL,
    RESTORING_PARTITIONS,
    CLIENT_RESTARTS_TOTAL,
    JOURNEY_RELOADS_TOTAL,
    OUTCOMES_TOTAL,
    BUILD_INFO,
    CONSUMER_LAG,
    PROCESSING_LATENCY_SECONDS,
    EVENT_TO_COMMAND_SECONDS,
    TIMER_LATENESS_SECONDS,
    COMMANDS_SUPPRESSED_TOTAL,
    STATE_KEYS,
    STATE_BYTES,
    REBALANCES_TOTAL,
    SINK_DELIVERY_SECONDS,
    ANALYTICS_EVENTS_TOTAL,
    ANALYTICS_CONSUMER_LAG,
];

/// The result label of [`EVENTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// Applied to state.
    Accepted,
    /// Already seen.
    Duplicate,
    /// Type no journey reacts to.
    Ignored,
    /// Applied, but after the watermark (also copied to the late topic).
    Late,
    /// Refused and dead-lettered.
    Rejected,
    /// A forget request: the customer's state was erased.
    Forgotten,
    /// An alias's event, handed on to its canonical customer.
    Forwarded,
    /// An identity merge (an alias event, or an alias's history folded in).
    Merged,
}

impl EventResult {
    fn label(self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Ignored => "ignored",
            EventResult::Late => "late",
            EventResult::Rejected => "rejected",
            EventResult::Forgotten => "forgotten",
            EventResult::Forwarded => "forwarded",
            EventResult::Merged => "merged",
        }
    }
}

/// The parts of a commit, the `phase` label of [`COMMIT_PHASE_SECONDS`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPhase {
    /// Encoding the customers the batch changed and producing them to the state changelog.
    Prepare,
    /// Adding the input offsets to the transaction (broker round trips).
    Offsets,
    /// Waiting until every output and changelog record of the batch is acknowledged.
    Flush,
    /// Committing the transaction (at least once: committing the consumer offsets).
    End,
    /// Writing the batch's state to the local store, once committed.
    StateWrite,
}

impl CommitPhase {
    fn label(self) -> &'static str {
        match self {
            CommitPhase::Prepare => "prepare",
            CommitPhase::Offsets => "offsets",
            CommitPhase::Flush => "flush",
            CommitPhase::End => "end",
            CommitPhase::StateWrite => "state_write",
        }
    }
}

/// What ended a batch: the `reason` label of [`BATCH_ENDS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// `commit-interval-ms` passed and the input was not behind.
    Interval,
    /// A batch kept open for a backlog found nothing more to read: the consumer's queue of
    /// fetched records was empty. (A partition's end does not say it: it waits in that queue
    /// behind the records fetched before it, with those fetched since behind it.)
    CaughtUp,
    /// A batch kept open for a backlog reached `backlog-commit-interval-ms`.
    BacklogInterval,
    /// The batch reached `max-batch-events`.
    MaxBatch,
    /// Shutting down.
    Shutdown,
}

impl BatchEnd {
    fn label(self) -> &'static str {
        match self {
            BatchEnd::Interval => "interval",
            BatchEnd::CaughtUp => "caught_up",
            BatchEnd::BacklogInterval => "backlog_interval",
            BatchEnd::MaxBatch => "max_batch",
            BatchEnd::Shutdown => "shutdown",
        }
    }
}

/// Labels of [`EVENTS_TOTAL`]'s `type` for events whose type is not a journey's: the upstream
/// may send any number of types, and a label must stay bounded.
pub const OTHER_EVENT_TYPE: &str = "other";

/// The reason label of [`COMMANDS_SUPPRESSED_TOTAL`] for a `command_suppressed` reason text.
pub fn suppression_reason_label(reason: &str) -> &'static str {
    if reason.starts_with("suppression list") {
        "suppression_list"
    } else if reason.starts_with("frequency cap") {
        "frequency_cap"
    } else if reason.starts_with("quiet hours") {
        "quiet_hours"
    } else {
        "other"
    }
}

/// The processor's metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    names: Arc<Vec<String>>,
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    commands: IntCounterVec,
    journey_events: IntCounterVec,
    transactions: IntCounterVec,
    commit_seconds: Histogram,
    commit_phase_seconds: HistogramVec,
    batches_extended: IntCounter,
    batch_ends: IntCounterVec,
    commit_wait: Histogram,
    /// `PIPELINE_THREAD_SECONDS` by state: running, runnable.
    pipeline_thread: [Counter; 2],
    timers_pending: IntGaugeVec,
    watermark_lag: IntGaugeVec,
    partitions: IntGauge,
    restore_records: IntCounter,
    /// `READ_AHEAD_TOTAL` by result: cached, superseded.
    read_ahead: [IntCounter; 2],
    restoring: IntGauge,
    sink_deliveries: IntCounterVec,
    sink_retries: IntCounterVec,
    sink_seconds: HistogramVec,
    client_restarts: IntCounter,
    journey_reloads: IntCounterVec,
    outcomes: IntCounterVec,
    consumer_lag: IntGaugeVec,
    processing_latency: Histogram,
    event_to_command: Histogram,
    timer_lateness: Histogram,
    suppressed: IntCounterVec,
    state_keys: IntGaugeVec,
    state_bytes: IntGaugeVec,
    rebalances: IntCounterVec,
    analytics_events: IntCounterVec,
    analytics_lag: IntGaugeVec,
}

/// Registers collectors in one registry; definitions are static, so a failure is a bug.
struct Registrar {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Registrar {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.names
            .borrow_mut()
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("static counter"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("static counter"))
    }

    fn seconds(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        self.add(CounterVec::new(Opts::new(name, help), labels).expect("static counter"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("static gauge"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("static gauge"))
    }

    /// A histogram with `count` buckets growing ×2 from `start` seconds.
    fn histogram(&self, name: &str, help: &str, start: f64, count: usize) -> Histogram {
        let buckets = prometheus::exponential_buckets(start, 2.0, count).expect("static buckets");
        self.add(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("static histogram"),
        )
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        start: f64,
        count: usize,
    ) -> HistogramVec {
        let buckets = prometheus::exponential_buckets(start, 2.0, count).expect("static buckets");
        self.add(
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("static histogram"),
        )
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registrar {
            registry: Registry::new(),
            names: Default::default(),
        };
        let build = r.gauges(BUILD_INFO, "Build information.", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let partition = &["partition"];
        Metrics {
            events: r.counters(
                EVENTS_TOTAL,
                "Events read from the input topic, by event type (a journey's, or `other`) and result.",
                &["type", "result"],
            ),
            dead_letters: r.counters(
                DEAD_LETTERS_TOTAL,
                "Input records sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            commands: r.counters(
                COMMANDS_TOTAL,
                "Intervention commands emitted.",
                &["journey", "action", "channel"],
            ),
            journey_events: r.counters(
                JOURNEY_EVENTS_TOTAL,
                "Journey events emitted.",
                &["journey", "type"],
            ),
            transactions: r.counters(
                TRANSACTIONS_TOTAL,
                "Kafka transactions, by result.",
                &["result"],
            ),
            commit_seconds: r.histogram(
                COMMIT_SECONDS,
                "Time to commit one transaction of outputs, offsets and state.",
                0.001,
                14,
            ),
            commit_phase_seconds: r.histograms(
                COMMIT_PHASE_SECONDS,
                "Time of each part of a commit: prepare (encode and produce the changed state), \
                 offsets, flush, end (commit the transaction) and state_write (local store).",
                &["phase"],
                0.0005,
                14,
            ),
            batches_extended: r.counter(
                BATCHES_EXTENDED_TOTAL,
                "Batches kept open past commit-interval-ms because the input was behind \
                 (up to backlog-commit-interval-ms).",
            ),
            batch_ends: r.counters(
                BATCH_ENDS_TOTAL,
                "Batches committed, by what ended them: interval, caught_up, backlog_interval, \
                 max_batch, shutdown.",
                &["reason"],
            ),
            commit_wait: r.histogram(
                COMMIT_WAIT_SECONDS,
                "Time the processing loop waited for the commit in flight before starting the next.",
                0.0005,
                14,
            ),
            pipeline_thread: {
                let seconds = r.seconds(
                    PIPELINE_THREAD_SECONDS,
                    "Seconds the pipeline thread spent running on a CPU, or runnable but waiting \
                     for one (CPU taken by others, or a CPU limit); the rest it waited for records \
                     or a commit. Linux only (0 elsewhere).",
                    &["state"],
                );
                ["running", "runnable"].map(|state| seconds.with_label_values(&[state]))
            },
            timers_pending: r.gauges(TIMERS_PENDING, "Customers with a pending timer.", partition),
            watermark_lag: r.gauges(
                WATERMARK_LAG_SECONDS,
                "Wall clock minus the partition's watermark, seconds.",
                partition,
            ),
            partitions: r.gauge(PARTITIONS_ASSIGNED, "Partitions assigned to this instance."),
            restore_records: r.counter(
                RESTORE_RECORDS_TOTAL,
                "Changelog records read while restoring partitions.",
            ),
            read_ahead: {
                let read_ahead = r.counters(
                    READ_AHEAD_TOTAL,
                    "Customers read ahead of their records or wake-ups, by result: cached \
                     (before they were needed) or superseded (cached by then, or possibly \
                     stale: discarded).",
                    &["result"],
                );
                ["cached", "superseded"].map(|result| read_ahead.with_label_values(&[result]))
            },
            restoring: r.gauge(
                RESTORING_PARTITIONS,
                "Partitions being restored from the changelog.",
            ),
            sink_deliveries: r.counters(
                SINK_DELIVERIES_TOTAL,
                "Commands a channel sink handled, by result.",
                &["channel", "result"],
            ),
            sink_retries: r.counters(
                SINK_RETRIES_TOTAL,
                "Delivery attempts a channel sink retried.",
                &["channel"],
            ),
            sink_seconds: r.histograms(
                SINK_DELIVERY_SECONDS,
                "Time the provider took for one delivery attempt.",
                &["channel"],
                0.005,
                14,
            ),
            client_restarts: r.counter(
                CLIENT_RESTARTS_TOTAL,
                "Restarts with new Kafka clients after a fatal client error.",
            ),
            journey_reloads: r.counters(
                JOURNEY_RELOADS_TOTAL,
                "Journey reloads asked of the processor, by result (applied, unchanged, refused).",
                &["result"],
            ),
            outcomes: r.counters(
                OUTCOMES_TOTAL,
                "Outcomes of commands read from intervention-outcomes, by result.",
                &["result"],
            ),
            consumer_lag: r.gauges(
                CONSUMER_LAG,
                "Records of the input topic not yet read, per assigned partition.",
                partition,
            ),
            processing_latency: r.histogram(
                PROCESSING_LATENCY_SECONDS,
                "Time from reading a record to the commit of its outputs.",
                0.001,
                15,
            ),
            event_to_command: r.histogram(
                EVENT_TO_COMMAND_SECONDS,
                "Time from an event's Kafka timestamp to the commit of the command it caused at once.",
                0.001,
                16,
            ),
            timer_lateness: r.histogram(
                TIMER_LATENESS_SECONDS,
                "How long after its due time plus allowed lateness a timer's command was committed.",
                0.05,
                20,
            ),
            suppressed: r.counters(
                COMMANDS_SUPPRESSED_TOTAL,
                "Commands withheld by a customer protection, by reason.",
                &["journey", "action", "reason"],
            ),
            state_keys: r.gauges(
                STATE_KEYS,
                "Approximate keys (customers and timers) in the partition's local state.",
                partition,
            ),
            state_bytes: r.gauges(
                STATE_BYTES,
                "Approximate bytes of the partition's local state.",
                partition,
            ),
            rebalances: r.counters(
                REBALANCES_TOTAL,
                "Consumer group rebalances, by kind.",
                &["kind"],
            ),
            analytics_events: r.counters(
                ANALYTICS_EVENTS_TOTAL,
                "Journey events read by the analytics view, by result.",
                &["result"],
            ),
            analytics_lag: r.gauges(
                ANALYTICS_CONSUMER_LAG,
                "Records of journey-events the analytics view has not read yet, per partition.",
                partition,
            ),
            names: Arc::new(r.names.take()),
            registry: r.registry,
        }
    }

    /// Counts an outcome read from `intervention-outcomes`.
    pub fn outcome(&self, result: EventResult) {
        self.outcomes.with_label_values(&[result.label()]).inc();
    }

    /// Counts a restart with new Kafka clients.
    pub fn client_restart(&self) {
        self.client_restarts.inc();
    }

    /// Counts a journey reload by result (`applied`, `unchanged`, `refused`).
    pub fn journey_reload(&self, result: &str) {
        self.journey_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a command a sink handled.
    pub fn sink_delivery(&self, channel: &str, result: &str) {
        self.sink_deliveries
            .with_label_values(&[channel, result])
            .inc();
    }

    /// Records how long one delivery attempt took.
    pub fn sink_attempt(&self, channel: &str, seconds: f64) {
        self.sink_seconds
            .with_label_values(&[channel])
            .observe(seconds);
    }

    /// Counts a retried delivery attempt.
    pub fn sink_retry(&self, channel: &str) {
        self.sink_retries.with_label_values(&[channel]).inc();
    }

    /// Marks a restore as started (`true`) or finished (`false`).
    pub fn restoring(&self, started: bool) {
        if started {
            self.restoring.inc();
        } else {
            self.restoring.dec();
        }
    }

    /// Counts changelog records read by a restore (call per batch, not per record).
    pub fn restored(&self, records: u64) {
        self.restore_records.inc_by(records);
    }

    /// Counts input events of one type (a journey's, or [`OTHER_EVENT_TYPE`]).
    pub fn events(&self, event_type: &str, result: EventResult, n: u64) {
        self.events
            .with_label_values(&[event_type, result.label()])
            .inc_by(n);
    }

    /// Counts a dead-lettered record.
    pub fn dead_letter(&self, reason: &'static str) {
        self.dead_letters.with_label_values(&[reason]).inc();
    }

    /// Counts an emitted command.
    pub fn command(&self, journey: &str, action: &str, channel: &str) {
        self.commands
            .with_label_values(&[journey, action, channel])
            .inc();
    }

    /// Counts an emitted journey event.
    pub fn journey_event(&self, journey: &str, event_type: &str) {
        self.journey_events
            .with_label_values(&[journey, event_type])
            .inc();
    }

    /// Counts a command a protection withheld (`reason` as carried by the journey event).
    pub fn suppressed(&self, journey: &str, action: &str, reason: &str) {
        self.suppressed
            .with_label_values(&[journey, action, suppression_reason_label(reason)])
            .inc();
    }

    /// Records a transaction's outcome and duration.
    pub fn transaction(&self, committed: bool, seconds: f64) {
        self.transactions
            .with_label_values(&[if committed { "committed" } else { "aborted" }])
            .inc();
        if committed {
            self.commit_seconds.observe(seconds);
        }
    }

    /// Observes how long one part of a commit took.
    pub fn commit_phase(&self, phase: CommitPhase, seconds: f64) {
        self.commit_phase_seconds
            .with_label_values(&[phase.label()])
            .observe(seconds);
    }

    /// Counts a customer read ahead: `cached` if it went into the cache, else superseded.
    pub fn read_ahead(&self, cached: bool) {
        self.read_ahead[usize::from(!cached)].inc();
    }

    /// Counts a batch kept open past `commit-interval-ms` because the input was behind.
    pub fn batch_extended(&self) {
        self.batches_extended.inc();
    }

    /// Counts a batch committed, by what ended it.
    pub fn batch_ended(&self, reason: BatchEnd) {
        self.batch_ends.with_label_values(&[reason.label()]).inc();
    }

    /// Counts the pipeline thread's time since the last call, from [`ThreadTimes::since`].
    pub fn pipeline_thread(&self, times: ThreadTimes) {
        self.pipeline_thread[0].inc_by(times.running.as_secs_f64());
        self.pipeline_thread[1].inc_by(times.runnable.as_secs_f64());
    }

    /// Observes how long the loop waited for the commit in flight.
    pub fn commit_waited(&self, seconds: f64) {
        self.commit_wait.observe(seconds);
    }

    /// Observes, at a commit, the latencies of what it made visible, and clears `batch`.
    pub fn committed(&self, batch: &mut BatchLatencies, now_ms: i64) {
        let now = Instant::now();
        for at in &batch.read_at {
            self.processing_latency
                .observe(now.duration_since(*at).as_secs_f64());
        }
        let since = |ms: i64| (now_ms - ms).max(0) as f64 / 1000.0;
        for ms in &batch.event_stamps {
            self.event_to_command.observe(since(*ms));
        }
        for ms in &batch.timer_ready {
            self.timer_lateness.observe(since(*ms));
        }
        batch.clear();
    }

    /// Sets a partition's gauges.
    pub fn partition(&self, partition: i32, timers: usize, watermark_lag_secs: i64) {
        let p = partition.to_string();
        self.timers_pending
            .with_label_values(&[&p])
            .set(timers as i64);
        self.watermark_lag
            .with_label_values(&[&p])
            .set(watermark_lag_secs);
    }

    /// Sets a partition's local state size.
    pub fn state_size(&self, partition: i32, keys: u64, bytes: u64) {
        let p = partition.to_string();
        self.state_keys.with_label_values(&[&p]).set(keys as i64);
        self.state_bytes.with_label_values(&[&p]).set(bytes as i64);
    }

    /// Sets the input consumer's lag of a partition.
    pub fn consumer_lag(&self, partition: i32, records: i64) {
        self.consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(records.max(0));
    }

    /// Forgets the per-partition series of a partition this instance no longer owns.
    pub fn partition_revoked(&self, partition: i32) {
        let p = partition.to_string();
        for g in [
            &self.timers_pending,
            &self.watermark_lag,
            &self.consumer_lag,
            &self.state_keys,
            &self.state_bytes,
        ] {
            let _ = g.remove_label_values(&[&p]);
        }
    }

    /// Counts a rebalance callback (`assigned` or `revoked`).
    pub fn rebalance(&self, kind: &'static str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Counts journey events read by the analytics view (`applied`, `duplicate`, `rejected`).
    pub fn analytics_events(&self, result: &'static str, n: u64) {
        self.analytics_events.with_label_values(&[result]).inc_by(n);
    }

    /// Sets the analytics view's consumer lag of a partition.
    pub fn analytics_lag(&self, partition: i32, records: i64) {
        self.analytics_lag
            .with_label_values(&[&partition.to_string()])
            .set(records.max(0));
    }

    /// Sets the number of assigned partitions.
    pub fn assigned(&self, n: usize) {
        self.partitions.set(n as i64);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The names of every registered metric family (also those without samples yet).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A thread's time on a CPU and runnable but waiting for one, from Linux's per-thread
/// scheduler statistics: whether a busy thread is bound by its own work or by the CPU it gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    /// Time on a CPU.
    pub running: Duration,
    /// Time ready to run, waiting for a CPU.
    pub runnable: Duration,
}

impl ThreadTimes {
    /// The calling thread's totals since it started; `None` where the kernel does not keep
    /// them (not Linux, or built without scheduler statistics).
    pub fn of_this_thread() -> Option<ThreadTimes> {
        Self::parse(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
    }

    /// Parses a `schedstat` line: nanoseconds running, nanoseconds waiting on a run queue,
    /// time slices.
    fn parse(text: &str) -> Option<ThreadTimes> {
        let mut nanos = text.split_ascii_whitespace().map(str::parse::<u64>);
        let running = nanos.next()?.ok()?;
        let runnable = nanos.next()?.ok()?;
        Some(ThreadTimes {
            running: Duration::from_nanos(running),
            runnable: Duration::from_nanos(runnable),
        })
    }

    /// The time added since `earlier`, a reading of the same thread.
    pub fn since(self, earlier: ThreadTimes) -> ThreadTimes {
        ThreadTimes {
            running: self.running.saturating_sub(earlier.running),
            runnable: self.runnable.saturating_sub(earlier.runnable),
        }
    }
}

/// What a batch made visible, for the latency histograms; observed when its transaction
/// commits ([`Metrics::committed`]), dropped when it aborts.
#[derive(Debug, Default)]
pub struct BatchLatencies {
    /// When each input record of the batch was read.
    read_at: Vec<Instant>,
    /// Kafka timestamps (ms) of the events behind each command they caused at once.
    event_stamps: Vec<i64>,
    /// For each command a timer caused: the wall-clock ms it could first fire at.
    timer_ready: Vec<i64>,
}

impl BatchLatencies {
    /// An input record was read now.
    pub fn read(&mut self) {
        self.read_at.push(Instant::now());
    }

    /// A command caused at once by an event with this Kafka timestamp (ms).
    pub fn command_from_event(&mut self, kafka_timestamp_ms: i64) {
        self.event_stamps.push(kafka_timestamp_ms);
    }

    /// A command caused by a timer that could first fire at this wall-clock time (ms).
    pub fn command_from_timer(&mut self, ready_ms: i64) {
        self.timer_ready.push(ready_ms);
    }

    /// Forgets the batch (it was aborted).
    pub fn clear(&mut self) {
        self.read_at.clear();
        self.event_stamps.clear();
        self.timer_ready.clear();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Liveness and readiness flags the HTTP server reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the process has started its main loop; cleared when it stops.
    pub live: AtomicBool,
    /// Set while the processor is connected, assigned and not restoring.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    health: Arc<Health>,
}

async fn livez(State(s): State<HttpState>) -> impl IntoResponse {
    if s.health.live.load(Ordering::Relaxed) {
        (StatusCode::OK, "live\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn render_metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
}

/// Serves `/livez`, `/readyz` and `/metrics` — and `routes` (a component's own endpoints,
/// e.g. a sink's callbacks) — on `addr` until `shutdown` is cancelled. Returns the bound
/// address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
    routes: Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for /metrics: {e}; set --http-addr to a free address"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { metrics, health })
        .merge(routes);
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed.");
        }
    });
    Ok((bound, handle))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable text.
    #[default]
    Text,
}

/// Installs the global tracing subscriber, writing to stderr. `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: piped into a file or a log collector, escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        // Every line carries the fields of the spans it was logged in (group, partition,
        // channel, journey, action), so a log shipper can filter on them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_metric_is_a_named_constant_and_back() {
        let mut registered = Metrics::new().names().to_vec();
        registered.sort();
        let mut declared: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
        declared.sort();
        assert_eq!(registered, declared);
    }

    #[test]
    fn a_schedstat_line_gives_running_and_runnable_time() {
        let t = ThreadTimes::parse("1500000000 250000000 42\n").unwrap();
        assert_eq!(t.running, Duration::from_millis(1500));
        assert_eq!(t.runnable, Duration::from_millis(250));
        assert_eq!(ThreadTimes::parse("1500000000\n"), None);
        assert_eq!(ThreadTimes::parse("x 1 2\n"), None);
        let later = ThreadTimes::parse("2000000000 250000000 50").unwrap();
        assert_eq!(
            later.since(t),
            ThreadTimes {
                running: Duration::from_millis(500),
                runnable: Duration::ZERO,
            }
        );
        assert_eq!(t.since(later).running, Duration::ZERO, "never negative");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_that_never_blocks_is_running_or_runnable_all_the_time() {
        let start = ThreadTimes::of_this_thread().expect("Linux keeps schedstat per thread");
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spun = began.elapsed();
        let t = ThreadTimes::of_this_thread().unwrap().since(start);
        assert!(t.running > Duration::ZERO, "{t:?}");
        // Both clocks tick at the scheduler's, not the wall's, granularity: allow a margin.
        assert!(t.running + t.runnable >= spun / 2, "{t:?} of {spun:?}");
    }

    #[test]
    fn the_pipeline_threads_time_is_counted_by_state() {
        let metrics = Metrics::new();
        let times = ThreadTimes {
            running: Duration::from_millis(1500),
            runnable: Duration::from_millis(250),
        };
        metrics.pipeline_thread(times);
        metrics.pipeline_thread(times);
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "{PIPELINE_THREAD_SECONDS}{{state=\"running\"}} 3\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{PIPELINE_THREAD_SECONDS}{{state=\"runnable\"}} 0.5\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn event_and_timer_latencies_are_observed_at_the_commit_and_then_forgotten() {
        let metrics = Metrics::new();
        let mut batch = BatchLatencies::default();
        batch.read();
        batch.command_from_event(10_000);
        batch.command_from_timer(7_000);
        batch.command_from_timer(12_000);
        metrics.committed(&mut batch, 12_000);
        let text = metrics.render();
        let sample = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(sample(&format!("{EVENT_TO_COMMAND_SECONDS}_sum")), "2");
        assert_eq!(sample(&format!("{TIMER_LATENESS_SECONDS}_count")), "2");
        assert_eq!(sample(&format!("{TIMER_LATENESS_SECONDS}_sum")), "5");
        assert_eq!(sample(&format!("{PROCESSING_LATENCY_SECONDS}_count")), "1");
        metrics.committed(&mut batch, 20_000);
        let text = metrics.render();
        assert!(text.contains(&format!("{TIMER_LATENESS_SECONDS}_count 2")));
    }

    #[test]
    fn suppression_reasons_map_to_bounded_labels() {
        assert_eq!(
            suppression_reason_label("suppression list (since 2026-01-01T00:00:00Z)"),
            "suppression_list"
        );
        assert_eq!(
            suppression_reason_label("frequency cap: 2 email per 1d"),
            "frequency_cap"
        );
        assert_eq!(
            suppression_reason_label("quiet hours for sms in UTC until 2026-01-01T07:00:00.000Z"),
            "quiet_hours"
        );
        assert_eq!(suppression_reason_label("anything else"), "other");
    }

    /// The alerts and dashboards under `deploy/` may only query metrics the code exports.
    #[test]
    fn deployment_queries_name_only_exported_metrics() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut files = Vec::new();
        let mut dirs = vec![deploy];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    files.push(path);
                }
            }
        }
        let mut checked = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for (at, _) in text.match_indices("waymark_") {
                if at > 0 {
                    let before = text.as_bytes()[at - 1];
                    if before.is_ascii_alphanumeric() || before == b'_' || before == b'-' {
                        continue;
                    }
                }
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| METRIC_NAMES.contains(base))
                    .unwrap_or(&name);
                assert!(
                    METRIC_NAMES.contains(&base),
                    "{} queries `{name}`, which Waymark does not export (telemetry::METRIC_NAMES)",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(
            checked > 20,
            "expected the deployment's alerts and dashboard to query Waymark's metrics; found {checked} references in {} files",
            files.len()
        );
    }
}
