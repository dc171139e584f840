//! `waymark run`: consume `customer-events`, run the engine per partition, and commit the
//! outputs, the input offsets and the state together.
//!
//! # Guarantee
//!
//! Commands, journey events, dead letters and late-event copies produced for a batch of input
//! records are written in **one Kafka transaction** together with the input offsets of that
//! batch (exactly-once v2: `send_offsets_to_transaction` with the consumer's group metadata).
//! Readers using `read_committed` see each output exactly once, or — after an aborted
//! transaction — not at all until the batch is re-processed. The local state (RocksDB) is
//! written after the transaction commits, with the committed offsets in the same atomic
//! RocksDB batch, so on a clean restart state and offsets agree. The one window this does not
//! close: a crash between the Kafka commit and the RocksDB write leaves the local state one
//! batch behind the committed offsets (the state changelog closes it; see the README's
//! "Guarantees").
//!
//! What would break it: two instances with the same `transactional-id` (the older one is
//! fenced and stops), or records of one customer spread over several partitions (key by
//! customer id).
//!
//! With `processing-guarantee: at-least-once` there are no transactions: a batch's outputs
//! are flushed (acknowledged by the broker) before its offsets are committed, so nothing is
//! lost, and a crash repeats at most the last batch's outputs, with the same ids.
//!
//! The broker's part of a transaction's commit (adding the offsets, flushing, ending it) runs
//! on a commit thread while the poll loop handles the next batch; that batch's records are
//! held in memory and produced in the next transaction once the one in flight ended, so a
//! transaction never mixes two batches. Once the transaction ended, the commit thread also
//! writes the batch's state to the local stores (their customers stay cached until then);
//! the next transaction opens meanwhile, and the next commit waits for those writes.
//!
//! Owns the poll loop (a dedicated thread), the partition lifecycle on rebalance, dead-lettering
//! and late-event copies, and the wall-clock watermark of caught-up partitions. Must not hold
//! journey semantics (that is `engine`) or storage details (that is `state`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::codec;
use crate::config::{Config, ProcessingGuarantee};
use crate::engine::{Applied, Engine};
use crate::kafka::{TransactionalContext, client_config, consumer_config, producer_config};
use crate::model::{Millis, Output, now_millis};
use crate::registry::Wire;
use crate::reload::{self, LiveJourneys};
use crate::runtime::{
    ALIAS_EVENT_TYPE, Forward, Forwarded, META_WATERMARK, PartitionRuntime, Rejection, validate,
};
use crate::shutdown::CancellationToken;
use crate::state::{
    BatchOp, PreparedBatch, RocksEnv, RocksStore, StateBatch, StateError, StoreWriter,
};
use crate::telemetry::{BatchLatencies, CommitPhase, EventResult, Health, Metrics};

mod batching;
mod read_ahead;
mod restore;

use batching::{Batching, Decision, Open};
use read_ahead::{ReadAhead, Target};
use restore::Restore;

/// Meta key of the next input offset to read, stored with each state flush.
pub const META_OFFSET: &str = "input-offset";

/// Meta key of the partition's state version: a counter bumped by every transaction that
/// commits the partition's offset. The same version is committed, as offset metadata, with
/// the input offset in the transaction, so an instance that gets a partition (back) knows
/// whether its local state is exactly what the group committed — even when another instance
/// fired timers in between without consuming a record.
pub const META_STATE_VERSION: &str = "state-version";

/// Prefix of the offset metadata that carries the state version.
const VERSION_METADATA_PREFIX: &str = "waymark-state-version=";

/// The state version in a committed offset's metadata (`None` if the offset was committed by
/// something else, e.g. an operator's offset reset).
fn version_from_metadata(metadata: &str) -> Option<u64> {
    metadata.strip_prefix(VERSION_METADATA_PREFIX)?.parse().ok()
}

/// Changelog keys starting with this prefix carry partition metadata (the watermark), not a
/// customer; customer ids never start with a NUL byte.
pub const CHANGELOG_META_PREFIX: &str = "\u{0}meta/";

/// Headers on dead-lettered and late records.
pub mod headers {
    /// Short, bounded reason code (`undecodable`, `missing_customer_id`, ...).
    pub const ERROR_CODE: &str = "waymark.error.code";
    /// Human-readable reason and what to do.
    pub const ERROR_MESSAGE: &str = "waymark.error.message";
    /// Topic the record was read from.
    pub const SOURCE_TOPIC: &str = "waymark.source.topic";
    /// Partition it was read from.
    pub const SOURCE_PARTITION: &str = "waymark.source.partition";
    /// Offset it was read from.
    pub const SOURCE_OFFSET: &str = "waymark.source.offset";
    /// For late events: the partition's watermark when it arrived (RFC 3339).
    pub const WATERMARK: &str = "waymark.watermark";
    /// On a record Waymark wrote to the input topic for an identity merge (a
    /// [`crate::runtime::Forward`] in JSON); any value.
    pub const FORWARD: &str = "waymark.forward";
}

/// Whether the record is a [`crate::runtime::Forward`] (see [`headers::FORWARD`]).
pub fn is_forward(msg: &impl Message) -> bool {
    msg.headers()
        .is_some_and(|h| rdkafka::message::Headers::iter(h).any(|h| h.key == headers::FORWARD))
}

/// The `waymark.source.*` headers naming where a record was read (on dead letters and late
/// copies, here and in the sinks).
pub(crate) fn source_headers(msg: &BorrowedMessage<'_>) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: headers::SOURCE_TOPIC,
            value: Some(msg.topic()),
        })
        .insert(Header {
            key: headers::SOURCE_PARTITION,
            value: Some(&msg.partition().to_string()),
        })
        .insert(Header {
            key: headers::SOURCE_OFFSET,
            value: Some(&msg.offset().to_string()),
        })
}

/// How long a transaction call is retried while librdkafka says it is retriable. Longer than a
/// transaction may stay open (`transaction.timeout.ms`, 60 s): past it the broker has aborted
/// the transaction anyway, and a client whose request to the transaction coordinator is stuck
/// in its queue (seen after a broker restart) never recovers, so the pipeline is started again
/// with new clients instead of waiting forever.
const TRANSACTION_RETRY_BUDGET: Duration = Duration::from_secs(90);

/// Pause between two attempts of a retriable transaction call.
const TRANSACTION_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What became of a transaction call.
#[derive(Debug)]
enum TxnCall<E> {
    /// It failed in a way retrying cannot help.
    Failed(E),
    /// It stayed retriable for longer than the budget: the clients are stuck.
    Stuck {
        /// The last error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
}

/// Runs a transaction call again while `retriable` says so (e.g. it timed out while the broker
/// is down: "retry call to resume"), for up to `budget`; processing waits meanwhile, which is
/// what a short broker outage should do.
fn retry_call<E: std::fmt::Display>(
    what: &str,
    budget: Duration,
    pause: Duration,
    retriable: impl Fn(&E) -> bool,
    mut call: impl FnMut() -> Result<(), E>,
) -> Result<(), TxnCall<E>> {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match call() {
            Ok(()) => return Ok(()),
            Err(error) if retriable(&error) => {
                if started.elapsed() >= budget {
                    return Err(TxnCall::Stuck { error, attempts });
                }
                tracing::warn!(%error, attempts, "Cannot {what} yet (is the broker down?); retrying.");
                std::thread::sleep(pause);
            }
            Err(error) => return Err(TxnCall::Failed(error)),
        }
    }
}

/// [`retry_call`] for a librdkafka transaction call. A call still retriable after
/// [`TRANSACTION_RETRY_BUDGET`] is a restartable [`PipelineError::ClientFatal`]: `waymark run`
/// starts the pipeline again with new clients, whose `init_transactions` aborts what this one
/// left open, and whose reconciliation puts the local state back in line with the offsets the
/// group committed.
fn retry_transaction_call(
    action: &'static str,
    call: impl FnMut() -> KafkaResult<()>,
) -> Result<(), TxnFailure> {
    retry_call(
        action,
        TRANSACTION_RETRY_BUDGET,
        TRANSACTION_RETRY_PAUSE,
        |e| matches!(e, KafkaError::Transaction(t) if t.is_retriable()),
        call,
    )
    .map_err(|call| TxnFailure { action, call })
}

/// A transaction call (or, at least once, the offset commit) that failed, and what it was.
#[derive(Debug)]
struct TxnFailure {
    /// What was attempted, e.g. `commit the transaction`.
    action: &'static str,
    /// How it failed.
    call: TxnCall<KafkaError>,
}

impl TxnFailure {
    /// The error a transaction call that was given up on stops the pipeline with: a stuck
    /// client is restartable, another failure is not.
    fn into_error(self) -> PipelineError {
        let action = self.action;
        match self.call {
            TxnCall::Failed(source) => PipelineError::Kafka { action, source },
            TxnCall::Stuck { error, attempts } => PipelineError::ClientFatal {
                client: "producer",
                reason: format!(
                    "could not {action} for {} s ({attempts} attempts, last: {error}); starting over with a new producer",
                    TRANSACTION_RETRY_BUDGET.as_secs()
                ),
            },
        }
    }
}

/// Makes every customer of the partition due when a loaded version next migrates the instances
/// in flight (if that is still ahead of the partition's watermark); returns how many customers.
/// One look by the engine with every version loaded is enough: its next wake-up then counts the
/// later migrations too.
fn wake_for_migrations(engine: &Engine, part: &mut Partition) -> Result<usize, StateError> {
    let Some(at) = reload::next_migration(engine, part.runtime.watermark()) else {
        return Ok(0);
    };
    let woken = part.runtime.wake_all_by(at)?;
    if woken > 0 {
        tracing::info!(
            customers = woken,
            "Customers due again when their instances migrate to a new journey version."
        );
    }
    Ok(woken)
}

/// Why `waymark run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A Kafka client call failed in a way that cannot be retried.
    #[error("kafka: {action}: {source}")]
    Kafka {
        /// What was attempted.
        action: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// Another instance with the same transactional id took over.
    #[error(
        "this instance was fenced: another instance uses transactional id `{0}`; give every instance its own (kafka.transactional-id, e.g. the pod name)"
    )]
    Fenced(String),
    /// A Kafka client reported a fatal error and can do nothing more; `waymark run` starts the
    /// pipeline again with new clients (see [`crate::shutdown::restarting`]).
    #[error(
        "the Kafka {client} hit a fatal error: {reason}; if another instance uses the same group-instance-id, give each its own (e.g. the pod name)"
    )]
    ClientFatal {
        /// Which client.
        client: &'static str,
        /// librdkafka's code and reason.
        reason: String,
    },
    /// The topics or settings do not fit together.
    #[error("{0}")]
    Setup(String),
    /// The schema registry stayed unreachable for `schema-registry.retry-secs`; the pipeline
    /// restarts from its last commit and reads the record again.
    #[error("{0}")]
    Registry(String),
    /// Local state failed.
    #[error("state of partition {partition} at {path}: {source}")]
    State {
        /// Partition.
        partition: i32,
        /// Its state directory.
        path: PathBuf,
        /// The error.
        source: StateError,
    },
    /// An output could not be encoded (a bug: the model and schemas disagree).
    #[error("cannot encode output for {topic}: {message}")]
    Encode {
        /// Topic.
        topic: String,
        /// The codec's message.
        message: String,
    },
}

impl PipelineError {
    /// For `map_err`: an error of partition `partition`'s state, kept at `path`.
    fn state(partition: i32, path: &Path) -> impl Fn(StateError) -> PipelineError + Copy + '_ {
        move |source| PipelineError::State {
            partition,
            path: path.to_owned(),
            source,
        }
    }
}

/// A registry that cannot be asked restarts the pipeline; one that refuses Waymark's schemas
/// (incompatible with what the subject holds) is a setup to fix.
fn registry_error(e: crate::codec::LookupError) -> PipelineError {
    match e {
        crate::codec::LookupError::Unavailable(reason) => {
            PipelineError::Registry(format!("schema registry unavailable: {reason}"))
        }
        refused => PipelineError::Setup(format!(
            "schema registry: cannot register Waymark's output schemas: {refused}"
        )),
    }
}

impl crate::shutdown::Restartable for PipelineError {
    fn restartable(&self) -> bool {
        matches!(
            self,
            PipelineError::ClientFatal { .. } | PipelineError::Registry(_)
        )
    }
}

/// What a run did, reported when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunSummary {
    /// Input records read.
    pub records: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// Commands produced.
    pub commands: u64,
    /// Journey events produced.
    pub journey_events: u64,
    /// Transactions committed.
    pub transactions: u64,
}

struct Partition {
    runtime: PartitionRuntime,
    path: PathBuf,
    /// Next offset to read, once a record of this partition was processed in the open
    /// transaction.
    pending_offset: Option<i64>,
    /// Next offset committed with the last transaction (what a rewind seeks back to).
    committed_offset: Option<i64>,
    /// State version committed with it (see [`META_STATE_VERSION`]).
    version: u64,
    /// Whether the consumer has read everything of the partition it fetched.
    end: crate::kafka::PartitionEnd,
    /// Next offset of the `intervention-outcomes` partition of the same number to read, once
    /// an outcome of it was processed in the open transaction.
    outcome_pending: Option<i64>,
    /// Next outcome offset committed with the last transaction (`None`: the beginning).
    outcome_committed: Option<i64>,
    /// How far the watermark moved per record in the last take of several records (event
    /// time, ms), to read ahead the wake-ups of the next (see [`Core::read_ahead`]).
    advance_per_record: Millis,
    /// The watermark at the last commit: how far it moves per batch sets the seal horizon
    /// (see [`PartitionRuntime::defer_seals_until`]).
    watermark_at_commit: Millis,
}

/// The second input: what the channel sinks report, on `intervention-outcomes`. Keyed by
/// customer id with as many partitions as `customer-events`, so a customer's outcomes sit in
/// the partition number of its events; this instance reads exactly the outcome partitions
/// whose event partitions it processes (a second consumer, assigned by hand as the group
/// assigns event partitions), and commits their positions to the group in the same
/// transaction as everything else.
struct OutcomeInput {
    topic: String,
    consumer: BaseConsumer<crate::kafka::ToolContext>,
    /// Partitions assigned to `consumer` (librdkafka refuses to assign one twice or to
    /// unassign one it does not have).
    attached: std::collections::BTreeSet<i32>,
}

impl OutcomeInput {
    /// The outcome consumer, after checking the topic is partitioned like the events.
    fn new(cfg: &Config) -> Result<OutcomeInput, PipelineError> {
        let consumer: BaseConsumer<crate::kafka::ToolContext> =
            client_config(&cfg.kafka.brokers, &cfg.kafka.properties)
                // Assigned by hand, never subscribed and never committing: the group id only
                // enables incremental assignment; positions are committed to the main group.
                .set("group.id", format!("{}.outcome-reader", cfg.kafka.group_id))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("isolation.level", "read_committed")
                .create_with_context(crate::kafka::ToolContext)
                .map_err(|source| PipelineError::Kafka {
                    action: "create the outcome consumer",
                    source,
                })?;
        let topic = cfg.topics.intervention_outcomes.clone();
        let events = &cfg.topics.customer_events;
        let count = |name: &str| -> Result<Option<usize>, PipelineError> {
            let md = consumer
                .fetch_metadata(Some(name), Duration::from_secs(30))
                .map_err(|source| PipelineError::Kafka {
                    action: "read topic metadata",
                    source,
                })?;
            Ok(md
                .topics()
                .first()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len()))
        };
        let input = |topic, consumer| OutcomeInput {
            topic,
            consumer,
            attached: Default::default(),
        };
        let (Some(want), outcomes) = (count(events)?, count(&topic)?) else {
            // No input topic yet: nothing to compare with; subscribing waits for it.
            return Ok(input(topic, consumer));
        };
        match outcomes {
            Some(n) if n == want => Ok(input(topic, consumer)),
            Some(n) => Err(PipelineError::Setup(format!(
                "topic `{topic}` (topics.intervention-outcomes) has {n} partitions but `{events}` has {want}; outcomes must be partitioned like the events they follow (same count, keyed by customer id): recreate it with {want} partitions, or set read-outcomes: false"
            ))),
            None => Err(PipelineError::Setup(format!(
                "topic `{topic}` (topics.intervention-outcomes) does not exist; create it with {want} partitions like `{events}` (scripts/kafka.sh topics does), or set read-outcomes: false"
            ))),
        }
    }
}

/// The processor's state shared between the poll loop and the rebalance callbacks (which run
/// inside `poll`, on the same thread, while the loop holds no lock).
struct Core {
    cfg: Config,
    /// Reads `customer-events` values: format, input mapping, schema registry.
    input: codec::InputDecoder,
    /// Frames the outputs and reads the outcomes: bare Avro, or with the schema registry.
    wire: Wire,
    /// Block cache and memtable budget shared by every partition's database.
    rocks: RocksEnv,
    engine: Arc<Engine>,
    metrics: Metrics,
    health: Arc<Health>,
    producer: Arc<ThreadedProducer<TransactionalContext>>,
    /// `exactly-once`: batches are Kafka transactions.
    transactional: bool,
    partitions: BTreeMap<i32, Partition>,
    /// Outcomes of commands, when `read-outcomes` is on.
    outcomes: Option<OutcomeInput>,
    /// Assigned partitions being rebuilt from the changelog (paused on the consumer).
    restoring: BTreeMap<i32, Restore>,
    /// A batch is open: something was produced since the last commit (inside a transaction
    /// when `transactional`).
    in_transaction: bool,
    /// The producer's transaction has begun (`transactional` only; not while a commit is in
    /// flight).
    txn_open: bool,
    /// The commit whose broker part is under way, if one is.
    in_flight: Option<InFlight>,
    /// The last commit whose transaction ended, until its state is written.
    writing: Option<Writing>,
    /// Records produced while a commit is in flight: at most one batch's (the next commit
    /// waits for the one in flight).
    held: Vec<HeldRecord>,
    outputs: Vec<Output>,
    summary: RunSummary,
    /// First fatal error seen inside a callback; the loop stops on it.
    failed: Option<PipelineError>,
    /// What the open batch will make visible, for the latency histograms.
    latencies: BatchLatencies,
    /// When the partitions' state sizes were last sampled for the metrics.
    sized_at: Option<Instant>,
    /// When input partitions were last repositioned, to tell records polled before it.
    positions: Positions,
}

/// Repositionings of input partitions (revoked, rewound, or sought back after a restore): a
/// record polled before its partition's last one was fetched from the old position and must
/// not be handled; it comes again from the new one (or goes to the partition's new owner).
#[derive(Default)]
struct Positions {
    /// Repositionings so far; the poll loop reads it after each poll, without `Core`'s lock.
    count: Arc<AtomicU64>,
    /// The count right after each partition's last repositioning.
    moved_at: BTreeMap<i32, u64>,
}

impl Positions {
    /// Notes that `partition` was repositioned.
    fn moved(&mut self, partition: i32) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.moved_at.insert(partition, count);
    }

    /// Whether a record of `partition` polled when the count was `polled_at` (read after the
    /// poll returned it) is still current: its partition was not repositioned since.
    fn is_current(&self, partition: i32, polled_at: u64) -> bool {
        self.moved_at
            .get(&partition)
            .is_none_or(|&at| at <= polled_at)
    }
}

/// Attempts (of 10 s each) to read the group's committed offsets of newly assigned
/// partitions: longer than a transaction may stay open (`transaction.timeout.ms`, 60 s).
const COMMITTED_OFFSETS_ATTEMPTS: u32 = 12;

/// How often the state size gauges are sampled (RocksDB property reads).
const STATE_SIZE_INTERVAL: Duration = Duration::from_secs(10);

struct RunContext {
    core: Arc<Mutex<Core>>,
    /// The statistics callback sets the lag gauges without taking `core`'s lock.
    metrics: Metrics,
    input_topic: String,
}

impl ClientContext for RunContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        crate::kafka::each_consumer_lag(statistics, &self.input_topic, |partition, lag| {
            self.metrics.consumer_lag(partition, lag)
        });
    }
}

/// Times the parts of a commit one after the other, into [`Metrics::commit_phase`].
struct PhaseTimer {
    metrics: Metrics,
    since: Instant,
}

impl PhaseTimer {
    fn new(metrics: &Metrics) -> Self {
        PhaseTimer {
            metrics: metrics.clone(),
            since: Instant::now(),
        }
    }

    /// Records `phase` as the time since the previous one ended.
    fn done(&mut self, phase: CommitPhase) {
        let now = Instant::now();
        self.metrics
            .commit_phase(phase, now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}

/// The broker's part of an exactly-once commit, on the commit thread: adds the offsets to the
/// transaction, waits for every record of it to be acknowledged, and ends it. Returns when it
/// ended.
fn end_transaction(
    producer: &ThreadedProducer<TransactionalContext>,
    offsets: &TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    mut phase: PhaseTimer,
) -> Result<Instant, TxnFailure> {
    let timeout = Duration::from_secs(30);
    if let Some(group) = group {
        retry_transaction_call("send offsets to the transaction", || {
            producer.send_offsets_to_transaction(offsets, group, timeout)
        })?;
    }
    phase.done(CommitPhase::Offsets);
    // Delivered first (rust-rdkafka's commit_transaction flushes in 100 ms rounds); what
    // failed to deliver fails the commit below.
    let _ = crate::kafka::flush_threaded(producer, timeout);
    phase.done(CommitPhase::Flush);
    retry_transaction_call("commit the transaction", || {
        producer.commit_transaction(timeout)
    })?;
    phase.done(CommitPhase::End);
    Ok(Instant::now())
}

/// A partition's state batch for the commit thread to write once the transaction ended: its
/// store's writer, and the batch.
type StateWriteJob = (i32, Box<dyn StoreWriter>, StateBatch);

/// The commit thread's part after the broker's: writes each partition's state batch (in
/// order; each a batch of its own store). Returns each partition's result and how long the
/// writes took.
fn write_states(jobs: Vec<StateWriteJob>) -> StatesWritten {
    let started = Instant::now();
    let results = jobs
        .into_iter()
        .map(|(partition, writer, batch)| (partition, writer.write(batch)))
        .collect();
    StatesWritten {
        results,
        took: started.elapsed(),
    }
}

/// What [`write_states`] did.
#[derive(Default)]
struct StatesWritten {
    /// Each partition's write.
    results: Vec<(i32, Result<(), StateError>)>,
    /// How long the writes took.
    took: Duration,
}

/// What a commit leaves to do once the broker's part succeeded (see [`Core::conclude`]).
struct Committed {
    /// The state batches the commit thread does not write (at least once, or a store with
    /// no writer for it), taken out of their caches (written to the stores once committed).
    prepared: Vec<(i32, PreparedBatch)>,
    /// Each partition's next input offset and next outcome offset, as committed.
    positions: Vec<(i32, Option<i64>, Option<i64>)>,
    /// What the batch makes visible, for the latency histograms.
    latencies: BatchLatencies,
    started: Instant,
}

/// An exactly-once commit whose broker part runs on the commit thread.
struct InFlight {
    /// The broker's part: when the transaction ended, or why it failed. The commit thread
    /// sends it before it writes the state, so the next transaction need not wait for that.
    ended: std::sync::mpsc::Receiver<Result<Instant, TxnFailure>>,
    /// What came through `ended`, once it did.
    result: Option<Result<Instant, TxnFailure>>,
    /// The commit thread; once the transaction ended, it writes the batch's state.
    handle: std::thread::JoinHandle<StatesWritten>,
    done: Committed,
}

/// A commit whose transaction ended: its state is being written to the local stores (on the
/// commit thread, if `handle` is set). Its customers stay cached until [`Core::finish_writes`].
struct Writing {
    handle: Option<std::thread::JoinHandle<StatesWritten>>,
    /// How long the commit took up to the end of its transaction.
    committed: Duration,
    /// How long the writes on the poll thread took (stores without a writer).
    written_here: Duration,
}

/// Customers of expected wake-ups read ahead per record of a take, at most.
const WAKE_UPS_READ_AHEAD: usize = 4;

/// A partition's watermark when a take of its records started (see [`Core::read_ahead`]).
struct TakeStart {
    partition: i32,
    watermark: Millis,
    /// The take's records of the partition.
    records: usize,
}

/// What one poll of the input consumer gave, and the repositioning count right after it
/// (see [`Positions`]).
type Polled<'c> = (Option<KafkaResult<BorrowedMessage<'c>>>, u64);

/// A record produced while a commit was in flight, sent in the next transaction.
struct HeldRecord {
    topic: String,
    partition: Option<i32>,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // A poisoned lock means a panic in the loop; the process is going down anyway.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = lock(&self.core);
            core.metrics.rebalance("revoked");
            // Commit what was processed so far while we still own the partitions.
            if let Err(e) = core
                .commit(consumer)
                .and_then(|()| core.finish_commit(consumer))
            {
                tracing::error!(error = %e, "Commit before revocation failed.");
                core.failed.get_or_insert(e);
            }
            let revoked: Vec<i32> = tpl.elements().iter().map(|el| el.partition()).collect();
            core.detach_outcomes(&revoked);
            for el in tpl.elements() {
                core.positions.moved(el.partition());
                core.metrics.partition_revoked(el.partition());
                if let Some(p) = core.partitions.remove(&el.partition()) {
                    tracing::info!(partition = el.partition(), path = %p.path.display(), "Partition revoked.");
                }
                if let Some(r) = core.restoring.remove(&el.partition()) {
                    core.metrics.restoring(false);
                    tracing::info!(
                        partition = r.partition,
                        "Partition revoked while restoring; the restore stops."
                    );
                }
            }
            core.update_readiness();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut core = lock(&self.core);
                core.metrics.rebalance("assigned");
                for el in tpl.elements() {
                    if let Err(e) = core.open_partition(el.partition()) {
                        tracing::error!(error = %e, partition = el.partition(), "Cannot open partition state.");
                        core.failed.get_or_insert(e);
                    }
                }
                if let Err(e) = core.reconcile_offsets(consumer, tpl) {
                    tracing::error!(error = %e, "Cannot restore partition state.");
                    core.failed.get_or_insert(e);
                }
                let active: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .map(|el| el.partition())
                    .filter(|p| core.partitions.contains_key(p))
                    .collect();
                if let Err(e) = core.attach_outcomes(consumer, &active) {
                    tracing::error!(error = %e, "Cannot start reading outcomes.");
                    core.failed.get_or_insert(e);
                }
                core.update_readiness();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }
}

impl Core {
    fn open_partition(&mut self, partition: i32) -> Result<(), PipelineError> {
        if self.partitions.contains_key(&partition) {
            return Ok(());
        }
        let path = self
            .cfg
            .state_dir
            .join(format!("{}-{partition}", self.cfg.topics.customer_events));
        let state_err = PipelineError::state(partition, &path);
        let store = self.rocks.open(&path).map_err(state_err)?;
        let runtime = PartitionRuntime::open(
            self.engine.clone(),
            Box::new(store),
            self.cfg.cache_capacity,
            self.cfg.allowed_lateness_ms(),
        )
        .map_err(state_err)?;
        let committed_offset = runtime
            .get_meta(META_OFFSET)
            .map_err(state_err)?
            .and_then(|b| b.try_into().ok().map(i64::from_be_bytes));
        let version = runtime
            .get_meta(META_STATE_VERSION)
            .map_err(state_err)?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        tracing::info!(
            partition,
            path = %path.display(),
            pending_timers = runtime.pending_timers(),
            stored_offset = committed_offset,
            state_version = version,
            "Partition assigned."
        );
        let mut part = Partition {
            runtime,
            path: path.clone(),
            pending_offset: None,
            committed_offset,
            version,
            end: Default::default(),
            outcome_pending: None,
            outcome_committed: None,
            advance_per_record: 0,
            watermark_at_commit: Millis::MIN,
        };
        wake_for_migrations(&self.engine, &mut part).map_err(state_err)?;
        self.partitions.insert(partition, part);
        Ok(())
    }

    /// Loads the journeys again and runs them from now on if [`reload::check`] finds that
    /// safe; answers `reply`. Called between transactions.
    fn reload(&mut self, live: &LiveJourneys, reply: Option<reload::Reply>) {
        let result = self.try_reload(live);
        match &result {
            Ok(report) => {
                self.metrics.journey_reload(report.result);
                if report.result == "applied" {
                    tracing::info!(
                        added = ?report.added,
                        removed = ?report.removed,
                        customers_to_migrate = report.customers_to_migrate,
                        "Journeys reloaded."
                    );
                }
            }
            Err(error) => {
                self.metrics.journey_reload("refused");
                tracing::error!(%error, "Journey reload refused; the journeys loaded before keep running.");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    fn try_reload(&mut self, live: &LiveJourneys) -> Result<reload::Report, String> {
        let set = crate::journey::JourneySet::load(live.path()).map_err(|e| e.to_string())?;
        let newest = |of: fn(&PartitionRuntime) -> Millis| {
            self.partitions
                .values()
                .map(|p| of(&p.runtime))
                .filter(|t| *t > Millis::MIN)
                .max()
        };
        let processed = reload::Processed {
            newest_event: newest(PartitionRuntime::newest_event),
            watermark: newest(PartitionRuntime::watermark),
        };
        let changes = reload::check(self.engine.journeys(), &set, processed)?;
        if changes.is_empty() {
            return Ok(reload::Report::new(&set, &changes, 0));
        }
        let engine = Arc::new(self.engine.reloaded(set));
        let mut woken = 0;
        for (partition, part) in self.partitions.iter_mut() {
            part.runtime.set_engine(engine.clone());
            woken += wake_for_migrations(&engine, part)
                .map_err(|e| format!("partition {partition}: {e}"))?;
        }
        self.engine = engine.clone();
        live.set_engine(engine.clone());
        Ok(reload::Report::new(engine.journeys(), &changes, woken))
    }

    /// Ready when connected, assigned and no partition is restoring.
    fn update_readiness(&self) {
        let assigned = self.partitions.len() + self.restoring.len();
        self.metrics.assigned(assigned);
        self.health
            .ready
            .store(self.restoring.is_empty(), Ordering::Relaxed);
    }

    /// Compares each assigned partition's local state with what the group committed (input
    /// offset and state version). When the local state is missing or differs — a new
    /// machine, a lost disk, a crash between the commit and the state write, or the
    /// partition was processed elsewhere since — the partition is paused and rebuilt from the
    /// state changelog, which holds exactly the state the committed offsets produced. Local
    /// state ahead of a group offset that carries no version (an operator reset the offsets)
    /// is kept, with a warning.
    fn reconcile_offsets<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) -> Result<(), PipelineError> {
        // Without the group's offsets the local state cannot be checked, and going on with it
        // could process from another member's offsets on stale state. They are unreadable
        // while a transaction of another member that committed offsets for these partitions
        // is still open (the broker answers UNSTABLE_OFFSET_COMMIT until it commits, aborts or
        // times out after transaction.timeout.ms): keep asking for a while.
        let mut attempt = 0;
        let committed = loop {
            attempt += 1;
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(c) => break c,
                Err(error) if attempt < COMMITTED_OFFSETS_ATTEMPTS => tracing::warn!(
                    %error,
                    attempt,
                    "The group's committed offsets are not readable yet (an open transaction of another member?); asking again."
                ),
                Err(source) => {
                    return Err(PipelineError::Kafka {
                        action: "read the group's committed offsets to check the local state",
                        source,
                    });
                }
            }
        };
        let mut paused = TopicPartitionList::new();
        for el in committed.elements() {
            let partition = el.partition();
            let Some(part) = self.partitions.get(&partition) else {
                continue;
            };
            let Offset::Offset(group) = el.offset() else {
                tracing::info!(
                    partition,
                    local_offset = part.committed_offset,
                    "The group has no committed offset for this partition; starting from the local state (or the beginning)."
                );
                continue;
            };
            let group_version = version_from_metadata(el.metadata());
            let up_to_date = match group_version {
                Some(v) => part.committed_offset == Some(group) && part.version == v,
                None => part.committed_offset.is_some_and(|local| local >= group),
            };
            if up_to_date {
                tracing::info!(
                    partition,
                    committed_offset = group,
                    state_version = part.version,
                    "Local state matches the committed state."
                );
                if group_version.is_none() && part.committed_offset != Some(group) {
                    tracing::warn!(
                        partition,
                        local_offset = part.committed_offset,
                        committed_offset = group,
                        path = %part.path.display(),
                        "Local state is ahead of the group's committed offset (were the offsets reset?); keeping it: re-read events are duplicates and change nothing."
                    );
                }
                continue;
            }
            tracing::info!(
                partition,
                local_offset = part.committed_offset,
                local_version = part.version,
                committed_offset = group,
                committed_version = group_version,
                "Local state is missing or differs from the committed state; pausing the partition and restoring it from the state changelog."
            );
            let Some(old) = self.partitions.remove(&partition) else {
                continue;
            };
            let path = old.path.clone();
            drop(old);
            let restore = Restore::start(
                &self.cfg,
                &self.rocks,
                partition,
                path,
                group,
                group_version.unwrap_or(0),
            )?;
            self.restoring.insert(partition, restore);
            self.metrics.restoring(true);
            paused.add_partition(&self.cfg.topics.customer_events, partition);
        }
        if paused.count() > 0 {
            consumer
                .pause(&paused)
                .map_err(|source| PipelineError::Kafka {
                    action: "pause partitions to restore",
                    source,
                })?;
        }
        Ok(())
    }

    /// Advances every restore by one step; a finished partition is opened, rewound to its
    /// committed offset and resumed.
    fn step_restores<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        let partitions: Vec<i32> = self.restoring.keys().copied().collect();
        let wait = Duration::from_millis(if self.partitions.is_empty() { 50 } else { 5 });
        for partition in partitions {
            let Some(restore) = self.restoring.get_mut(&partition) else {
                continue;
            };
            let _restore = tracing::info_span!("restore", partition).entered();
            if !restore.step(&self.metrics, wait)? {
                continue;
            }
            let Some(restore) = self.restoring.remove(&partition) else {
                continue;
            };
            self.metrics.restoring(false);
            let (records, elapsed) = restore.progress();
            let committed = restore.committed;
            // The restored store now reads like any other: open it the one way partitions open.
            drop(restore);
            self.open_partition(partition)?;
            let topic = self.cfg.topics.customer_events.clone();
            // Records fetched before the pause were skipped: read again from the committed offset.
            self.positions.moved(partition);
            consumer
                .seek(
                    &topic,
                    partition,
                    Offset::Offset(committed),
                    Duration::from_secs(10),
                )
                .map_err(|source| PipelineError::Kafka {
                    action: "seek a restored partition to its committed offset",
                    source,
                })?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            consumer
                .resume(&tpl)
                .map_err(|source| PipelineError::Kafka {
                    action: "resume a restored partition",
                    source,
                })?;
            self.attach_outcomes(consumer, &[partition])?;
            let secs = elapsed.as_secs_f64();
            tracing::info!(
                partition,
                records,
                pending_timers = self
                    .partitions
                    .get(&partition)
                    .map_or(0, |p| p.runtime.pending_timers()),
                seconds = secs,
                records_per_sec = (records as f64 / secs.max(1e-6)) as u64,
                "Partition restored from the state changelog; resumed."
            );
            self.update_readiness();
        }
        Ok(())
    }

    /// Starts reading the outcome partitions of these (active) event partitions from the
    /// positions the group committed (the beginning when none).
    fn attach_outcomes<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<(), PipelineError> {
        let Some(input) = self.outcomes.as_mut() else {
            return Ok(());
        };
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !input.attached.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let kafka = |action| move |source| PipelineError::Kafka { action, source };
        let mut query = TopicPartitionList::new();
        for p in &new {
            query.add_partition(&input.topic, *p);
        }
        let committed = consumer
            .committed_offsets(query, Duration::from_secs(30))
            .map_err(kafka("read the group's committed outcome offsets"))?;
        let mut assign = TopicPartitionList::new();
        for el in committed.elements() {
            let from = match el.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            if let Some(part) = self.partitions.get_mut(&el.partition()) {
                part.outcome_committed = from;
                part.outcome_pending = None;
            }
            assign
                .add_partition_offset(
                    &input.topic,
                    el.partition(),
                    from.map_or(Offset::Beginning, Offset::Offset),
                )
                .map_err(kafka("assign outcome partitions"))?;
        }
        input
            .consumer
            .incremental_assign(&assign)
            .map_err(kafka("assign outcome partitions"))?;
        input.attached.extend(&new);
        tracing::debug!(partitions = ?new, "Reading outcomes.");
        Ok(())
    }

    /// Stops reading the outcome partitions of these event partitions.
    fn detach_outcomes(&mut self, partitions: &[i32]) {
        let Some(input) = self.outcomes.as_mut() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            if input.attached.remove(p) {
                tpl.add_partition(&input.topic, *p);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = input.consumer.incremental_unassign(&tpl) {
            tracing::warn!(error = %e, "Cannot unassign outcome partitions.");
        }
    }

    /// Processes the outcomes already fetched (at most `max`); returns how many.
    fn poll_outcomes(&mut self, max: usize) -> Result<usize, PipelineError> {
        let Some(input) = self.outcomes.take() else {
            return Ok(0);
        };
        let mut n = 0;
        let result = loop {
            if n >= max {
                break Ok(n);
            }
            match input.consumer.poll(Duration::ZERO) {
                Some(Ok(msg)) => {
                    if let Err(e) = self.handle_outcome(&input.topic, &msg) {
                        break Err(e);
                    }
                    n += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    if let Some(reason) = crate::kafka::fatal_error(input.consumer.client()) {
                        break Err(PipelineError::ClientFatal {
                            client: "outcome consumer",
                            reason,
                        });
                    }
                    tracing::warn!(error = %e, "Outcome consumer error.");
                }
                None => break Ok(n),
            }
        };
        self.outcomes = Some(input);
        result
    }

    /// Records one outcome on its customer (as an `intervention.<status>` event).
    fn handle_outcome(
        &mut self,
        topic: &str,
        msg: &BorrowedMessage<'_>,
    ) -> Result<(), PipelineError> {
        let partition = msg.partition();
        if !self.partitions.contains_key(&partition) {
            // Fetched just before its event partition was revoked; its next owner reads it.
            return Ok(());
        }
        let decoded = self
            .wire
            .decode::<crate::model::InterventionOutcome>(msg.payload().unwrap_or_default())
            .map(|o| o.to_event());
        if let Err(e) = &decoded
            && e.is_retryable()
        {
            // As for an input record: not dead-lettered, not counted as read.
            return Err(PipelineError::Registry(e.to_string()));
        }
        self.begin()?;
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.outcome_pending = Some(msg.offset() + 1);
        }
        let Some(ev) = self.admit(msg, decoded)? else {
            self.metrics.outcome(EventResult::Rejected);
            return Ok(());
        };
        let Some((applied, _)) = self.apply(partition, &ev, msg.timestamp().to_millis())? else {
            return Ok(());
        };
        self.metrics.outcome(match applied {
            Applied::Accepted { late: false } => EventResult::Accepted,
            Applied::Accepted { late: true } => EventResult::Late,
            Applied::Duplicate => EventResult::Duplicate,
            Applied::Forwarded => EventResult::Forwarded,
            Applied::Ignored | Applied::Forgotten | Applied::Merged | Applied::Refused(_) => {
                EventResult::Ignored
            }
        });
        tracing::debug!(%topic, partition, offset = msg.offset(), customer = %ev.customer_id, r#type = %ev.event_type, "Outcome recorded.");
        self.send_forwards(partition)?;
        self.send_outputs()
    }

    /// Produces a state batch's customer records (and the watermark) to the changelog
    /// partition of the same number.
    fn send_changelog(&mut self, partition: i32, batch: &StateBatch) -> Result<(), PipelineError> {
        let topic = self.cfg.topics.state_changelog.clone();
        for op in batch.ops() {
            match op {
                BatchOp::PutCustomer { id, bytes } => {
                    self.send_to(&topic, Some(partition), id.as_bytes(), Some(bytes), None)?
                }
                BatchOp::DeleteCustomer { id } => {
                    self.send_to(&topic, Some(partition), id.as_bytes(), None, None)?
                }
                BatchOp::PutMeta { key, bytes } if key == META_WATERMARK => {
                    let key = format!("{CHANGELOG_META_PREFIX}{key}");
                    self.send_to(&topic, Some(partition), key.as_bytes(), Some(bytes), None)?
                }
                // Timers are derived from each customer's next wake-up on restore; the input
                // offset is the group's committed offset.
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens a batch, and its transaction unless a commit is in flight (then
    /// [`Core::finish_commit`] opens it).
    fn begin(&mut self) -> Result<(), PipelineError> {
        if self.transactional && !self.txn_open && self.in_flight.is_none() {
            self.producer
                .begin_transaction()
                .map_err(|source| PipelineError::Kafka {
                    action: "begin transaction",
                    source,
                })?;
            self.txn_open = true;
        }
        self.in_transaction = true;
        Ok(())
    }

    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PipelineError> {
        self.send_to(topic, None, key, Some(payload), headers)
    }

    /// Produces one record in the open transaction (opening one if needed); `payload: None`
    /// is a tombstone; `partition: None` lets the key choose.
    fn send_to(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PipelineError> {
        self.begin()?;
        if self.in_flight.is_some() {
            self.held.push(HeldRecord {
                topic: topic.to_owned(),
                partition,
                key: key.to_vec(),
                payload: payload.map(<[u8]>::to_vec),
                headers,
            });
            return Ok(());
        }
        self.produce_now(topic, partition, key, payload, headers)
    }

    /// Produces a record held back while a commit was in flight.
    fn produce(&mut self, record: HeldRecord) -> Result<(), PipelineError> {
        let HeldRecord {
            topic,
            partition,
            key,
            payload,
            headers,
        } = record;
        self.produce_now(&topic, partition, &key, payload.as_deref(), headers)
    }

    /// Produces one record in the open transaction, waiting while the producer's queue is
    /// full.
    fn produce_now(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), PipelineError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(PipelineError::Kafka {
                        action: "produce output",
                        source,
                    });
                }
            }
        }
    }

    /// Produces every buffered output.
    fn send_outputs(&mut self) -> Result<(), PipelineError> {
        let outputs = std::mem::take(&mut self.outputs);
        for o in &outputs {
            let (topic, bytes) = match o {
                Output::Command(c) => {
                    self.metrics
                        .command(&c.journey, &c.action, c.channel.as_str());
                    self.summary.commands += 1;
                    let topic = self.cfg.topics.commands(c.channel);
                    (topic.to_owned(), self.wire.encode(topic, c))
                }
                Output::JourneyEvent(e) => {
                    self.metrics
                        .journey_event(&e.journey, e.event_type.as_str());
                    // A holdout is an experiment's arm, not a protection: it has its own count.
                    if e.event_type == crate::model::JourneyEventType::CommandSuppressed
                        && e.variant.as_deref() != Some(crate::journey::HOLDOUT)
                    {
                        self.metrics.suppressed(
                            &e.journey,
                            e.action.as_deref().unwrap_or_default(),
                            e.reason.as_deref().unwrap_or_default(),
                        );
                    }
                    self.summary.journey_events += 1;
                    let topic = &self.cfg.topics.journey_events;
                    (topic.clone(), self.wire.encode(topic, e))
                }
            };
            let bytes = bytes.map_err(|e| PipelineError::Encode {
                topic: topic.clone(),
                message: e.to_string(),
            })?;
            self.send(&topic, o.customer_id().as_bytes(), &bytes, None)?;
        }
        let mut outputs = outputs;
        outputs.clear();
        self.outputs = outputs;
        Ok(())
    }

    fn dead_letter(
        &mut self,
        msg: &BorrowedMessage<'_>,
        why: &Rejection,
    ) -> Result<(), PipelineError> {
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason = why.code(),
            "Record dead-lettered."
        );
        self.metrics.dead_letter(why.code());
        self.summary.dead_letters += 1;
        let h = source_headers(msg)
            .insert(Header {
                key: headers::ERROR_CODE,
                value: Some(why.code()),
            })
            .insert(Header {
                key: headers::ERROR_MESSAGE,
                value: Some(&why.to_string()),
            });
        let topic = self.cfg.topics.dead_letters.clone();
        self.send(
            &topic,
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
            Some(h),
        )
    }

    /// Applies an admitted event to its partition's state (outputs go to `self.outputs`):
    /// what happened and the watermark before it, or `None` when the partition is not open.
    /// `kafka_timestamp` is the record's (ms), for the event → command latency.
    fn apply(
        &mut self,
        partition: i32,
        ev: &crate::model::CustomerEvent,
        kafka_timestamp: Option<i64>,
    ) -> Result<Option<(Applied, crate::model::Millis)>, PipelineError> {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return Ok(None);
        };
        let watermark = part.runtime.watermark();
        let first_output = self.outputs.len();
        let applied = part
            .runtime
            .on_event(ev, &mut self.outputs)
            .map_err(PipelineError::state(partition, &part.path))?;
        let lateness = self.cfg.allowed_lateness_ms();
        for o in &self.outputs[first_output..] {
            if let Output::Command(c) = o {
                // The event's own customer, due no later than the event: the event caused it
                // at once. Anything else fired on a timer the event's time let through.
                match kafka_timestamp {
                    Some(ts) if c.customer_id == ev.customer_id && c.due_at <= ev.occurred_at => {
                        self.latencies.command_from_event(ts)
                    }
                    _ => self.latencies.command_from_timer(c.due_at + lateness),
                }
            }
        }
        Ok(Some((applied, watermark)))
    }

    /// The event of a record once decoded and validated; a record that is not is
    /// dead-lettered with the reason, and `None` returned.
    fn admit(
        &mut self,
        msg: &BorrowedMessage<'_>,
        decoded: Result<crate::model::CustomerEvent, codec::CodecError>,
    ) -> Result<Option<crate::model::CustomerEvent>, PipelineError> {
        let why = match decoded {
            Err(e) => Rejection::Undecodable(format!("{}: {e}", e.kind())),
            Ok(ev) => match validate(
                &ev,
                msg.key(),
                Some(now_millis()),
                self.cfg.max_future_skew_ms(),
            ) {
                Ok(()) => return Ok(Some(ev)),
                Err(why) => why,
            },
        };
        self.dead_letter(msg, &why)?;
        Ok(None)
    }

    /// Opens what a record of the input topic needs (its partition, the transaction) and
    /// counts it as read.
    fn start_record(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let partition = msg.partition();
        self.open_partition(partition)?;
        self.begin()?;
        self.summary.records += 1;
        self.latencies.read();
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.end.record();
            p.pending_offset = Some(msg.offset() + 1);
        }
        Ok(())
    }

    /// A record Waymark wrote for an identity merge: applied to its customer.
    fn handle_forward(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let partition = msg.partition();
        self.start_record(msg)?;
        let forward = match Forward::from_json(msg.payload().unwrap_or_default()) {
            Ok(f) if msg.key() == Some(f.to.as_bytes()) => f,
            Ok(f) => {
                let why = Rejection::KeyMismatch {
                    key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
                    customer_id: f.to,
                };
                return self.dead_letter(msg, &why);
            }
            Err(e) => return self.dead_letter(msg, &Rejection::Undecodable(e)),
        };
        let Some(part) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let watermark = part.runtime.watermark();
        let applied = part
            .runtime
            .on_forwarded(&forward, &mut self.outputs)
            .map_err(PipelineError::state(partition, &part.path))?;
        let event_type = match &forward.record {
            Forwarded::Event(ev) => ev.event_type.as_str(),
            Forwarded::Merge { .. } => ALIAS_EVENT_TYPE,
        };
        self.settle(msg, partition, event_type, applied, watermark)
    }

    /// Counts what an applied record did, dead-letters a refused one, copies a late one to
    /// the late topic, and sends what it produced.
    fn settle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        partition: i32,
        event_type: &str,
        applied: Applied,
        watermark: Millis,
    ) -> Result<(), PipelineError> {
        let event_type = match applied {
            Applied::Ignored => crate::telemetry::OTHER_EVENT_TYPE,
            _ => event_type,
        };
        match applied {
            Applied::Accepted { late: false } => {
                self.metrics.events(event_type, EventResult::Accepted, 1)
            }
            Applied::Accepted { late: true } => {
                self.metrics.events(event_type, EventResult::Late, 1);
                let h = source_headers(msg).insert(Header {
                    key: headers::WATERMARK,
                    value: Some(&crate::model::format_millis(watermark)),
                });
                let topic = self.cfg.topics.late_events.clone();
                self.send(
                    &topic,
                    msg.key().unwrap_or_default(),
                    msg.payload().unwrap_or_default(),
                    Some(h),
                )?;
            }
            Applied::Duplicate => self.metrics.events(event_type, EventResult::Duplicate, 1),
            Applied::Ignored => self.metrics.events(event_type, EventResult::Ignored, 1),
            Applied::Forgotten => {
                tracing::info!(partition, "Customer state erased on request.");
                self.metrics.events(event_type, EventResult::Forgotten, 1);
            }
            Applied::Forwarded => self.metrics.events(event_type, EventResult::Forwarded, 1),
            Applied::Merged => {
                tracing::debug!(partition, "Identity merge applied.");
                self.metrics.events(event_type, EventResult::Merged, 1);
            }
            Applied::Refused(reason) => {
                self.metrics.events(event_type, EventResult::Rejected, 1);
                self.dead_letter(msg, &Rejection::Identity(reason))?;
            }
        }
        self.send_forwards(partition)?;
        self.send_outputs()
    }

    /// Produces the partition's records for other customers (identity merges) to the input
    /// topic, keyed by their customer, in the open transaction.
    fn send_forwards(&mut self, partition: i32) -> Result<(), PipelineError> {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return Ok(());
        };
        let forwards = part.runtime.take_forwards();
        if forwards.is_empty() {
            return Ok(());
        }
        let topic = self.cfg.topics.customer_events.clone();
        for f in forwards {
            let h = OwnedHeaders::new().insert(Header {
                key: headers::FORWARD,
                value: Some(&f.hops.to_string()),
            });
            self.send(&topic, f.to.as_bytes(), &f.to_json(), Some(h))?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let partition = msg.partition();
        if self.restoring.contains_key(&partition) {
            // Fetched just before the pause; read again after the restore (which seeks back).
            return Ok(());
        }
        if is_forward(msg) {
            return self.handle_forward(msg);
        }
        let payload = msg.payload().unwrap_or_default();
        let decoded = self.input.decode(payload);
        if let Err(e) = &decoded
            && e.is_retryable()
        {
            // The record may be fine: do not dead-letter it, and do not count it as read (the
            // revocation that follows commits what was read before it). The pipeline restarts
            // from there and reads this record again.
            return Err(PipelineError::Registry(e.to_string()));
        }
        self.start_record(msg)?;
        let Some(ev) = self.admit(msg, decoded)? else {
            self.metrics
                .events(crate::telemetry::OTHER_EVENT_TYPE, EventResult::Rejected, 1);
            return Ok(());
        };
        let Some((applied, watermark)) = self.apply(partition, &ev, msg.timestamp().to_millis())?
        else {
            return Ok(());
        };
        self.settle(msg, partition, &ev.event_type, applied, watermark)
    }

    /// Asks `ahead` to read what the records of `polled` will need that their partitions'
    /// caches lack, each customer once: the customers of the records after the first (the
    /// first is handled at once), and those of the wake-ups the take is expected to let
    /// through (from how far the last take moved the partition's watermark per record).
    /// Returns where each partition's watermark started, for [`Core::learn_advance`].
    fn read_ahead(&self, ahead: &mut ReadAhead, polled: &[Polled<'_>]) -> Vec<TakeStart> {
        // The current records of each open partition, by index in the take.
        let mut taken: Vec<(i32, Vec<usize>)> = Vec::new();
        for (at, (record, polled_at)) in polled.iter().enumerate() {
            let Some(Ok(msg)) = record else { continue };
            let partition = msg.partition();
            if !self.partitions.contains_key(&partition)
                || !self.positions.is_current(partition, *polled_at)
            {
                continue;
            }
            match taken.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, records)) => records.push(at),
                None => taken.push((partition, vec![at])),
            }
        }
        let mut readers = Vec::new();
        let mut targets = Vec::new();
        let mut starts = Vec::with_capacity(taken.len());
        let mut asked = hashbrown::HashSet::new();
        for (partition, records) in &taken {
            let Some(part) = self.partitions.get(partition) else {
                continue;
            };
            let watermark = part.runtime.watermark();
            starts.push(TakeStart {
                partition: *partition,
                watermark,
                records: records.len(),
            });
            let Some(reader) = part.runtime.store_reader() else {
                continue;
            };
            let index = readers.len();
            let before = targets.len();
            // Each customer once: asks for it with its `uncached` ticket, placed at `record`.
            let mut ask = |customer: &str, ticket: u64, record: usize| {
                if asked.insert((*partition, CompactString::from(customer))) {
                    targets.push((
                        index,
                        Target {
                            partition: *partition,
                            customer: customer.into(),
                            ticket,
                            before: record,
                        },
                    ));
                }
            };
            for &at in records.iter().filter(|&&at| at > 0) {
                let key = polled[at].0.as_ref().and_then(|r| r.as_ref().ok());
                if let Some(customer) = key
                    .and_then(|msg| msg.key())
                    .and_then(|k| std::str::from_utf8(k).ok())
                    && let Some(ticket) = part.runtime.uncached(customer)
                {
                    ask(customer, ticket, at);
                }
            }
            if part.advance_per_record > 0 && watermark > Millis::MIN {
                let expected = part
                    .advance_per_record
                    .saturating_mul(2 * records.len() as Millis);
                let waking: Vec<(&str, u64)> = part
                    .runtime
                    .waking_by(watermark.saturating_add(expected))
                    .filter_map(|customer| Some((customer, part.runtime.uncached(customer)?)))
                    .take(WAKE_UPS_READ_AHEAD * records.len())
                    .collect();
                // Spread over the partition's records in the take, earliest first: a wake-up
                // is expected about as far into the take as its due time into the advance.
                for (j, &(customer, ticket)) in waking.iter().enumerate() {
                    ask(
                        customer,
                        ticket,
                        records[j * records.len() / waking.len()].max(1),
                    );
                }
            }
            if targets.len() > before {
                readers.push(reader);
            }
        }
        // Stable: a record's own customer stays ahead of the wake-ups placed at it.
        targets.sort_by_key(|(_, t): &(usize, Target)| t.before);
        if !targets.is_empty() {
            ahead.request(readers, targets);
        }
        starts
    }

    /// Caches a customer read ahead (see [`PartitionRuntime::preload`]) if its partition was
    /// not repositioned since the request (when the repositioning count was `requested_at`).
    fn install(
        &mut self,
        target: Target,
        state: Option<crate::engine::CustomerState>,
        requested_at: u64,
    ) {
        let cached = self.positions.is_current(target.partition, requested_at)
            && self
                .partitions
                .get_mut(&target.partition)
                .is_some_and(|part| part.runtime.preload(&target.customer, state, target.ticket));
        self.metrics.read_ahead(cached);
    }

    /// Learns, once a take is handled, how far each of its partitions' watermark moved per
    /// record (what the next take's wake-ups are read ahead by).
    fn learn_advance(&mut self, starts: &[TakeStart]) {
        for start in starts {
            let Some(part) = self.partitions.get_mut(&start.partition) else {
                continue;
            };
            if start.watermark > Millis::MIN {
                let moved = part
                    .runtime
                    .watermark()
                    .saturating_sub(start.watermark)
                    .max(0);
                let records = start.records.max(1) as Millis;
                part.advance_per_record = moved.saturating_add(records - 1) / records;
            }
        }
    }

    /// Advances the watermark of caught-up partitions to the wall clock − allowed lateness.
    fn advance_idle_partitions(&mut self) -> Result<(), PipelineError> {
        let wall = now_millis() - self.cfg.allowed_lateness_ms();
        let first_output = self.outputs.len();
        // At most `max-batch-events` customers per transaction: after an outage, or when a
        // campaign's invites come due together, millions can be due at once. The rest fire at
        // the next commits, between which events keep being handled.
        let mut fired = 0;
        let mut left = false;
        for (partition, part) in self.partitions.iter_mut() {
            if part.end.caught_up() {
                part.runtime.raise_watermark(wall);
                fired += part
                    .runtime
                    .fire_due(self.cfg.max_batch_events - fired, &mut self.outputs)
                    .map_err(PipelineError::state(*partition, &part.path))?;
                left |= part.runtime.has_due();
            }
            let lag = (now_millis() - part.runtime.watermark().max(0)) / 1000;
            self.metrics
                .partition(*partition, part.runtime.pending_timers(), lag);
        }
        let sample_sizes = self
            .sized_at
            .is_none_or(|at| at.elapsed() >= STATE_SIZE_INTERVAL);
        if sample_sizes {
            self.sized_at = Some(Instant::now());
            for (partition, part) in &self.partitions {
                match part.runtime.store_size() {
                    Ok((keys, bytes)) => self.metrics.state_size(*partition, keys, bytes),
                    Err(error) => {
                        tracing::warn!(partition, %error, "Cannot read the state size.")
                    }
                }
            }
        }
        let lateness = self.cfg.allowed_lateness_ms();
        for o in &self.outputs[first_output..] {
            if let Output::Command(c) = o {
                self.latencies.command_from_timer(c.due_at + lateness);
            }
        }
        // Identity merges whose alias event's time the wall clock reached.
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            self.send_forwards(partition)?;
        }
        if !self.outputs.is_empty() {
            // `more_due`: over max-batch-events were due; the rest fire at the next commits.
            tracing::debug!(
                customers = fired,
                more_due = left,
                "Timers fired on wall-clock time."
            );
            self.send_outputs()?;
        }
        Ok(())
    }

    /// Commits the open batch: its outputs, the input offsets and its state (to the
    /// changelog in the same transaction, and to the local store once committed).
    ///
    /// With exactly-once, the broker's part of the commit (adding the offsets, flushing,
    /// ending the transaction) runs on a thread of its own while the loop handles the next
    /// records: what they produce is held back until the transaction ended, then sent in the
    /// next transaction (see [`Core::finish_transaction`]). At most one commit is in flight;
    /// starting the next one, a revocation, a reload and shutdown wait for it, and for its
    /// state writes, first.
    fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        self.finish_commit(consumer)?;
        self.advance_idle_partitions()?;
        if !self.in_transaction {
            return Ok(());
        }
        let started = Instant::now();
        // Every partition with a position commits it with a new state version, also when
        // only timers changed its state: whoever owns the partition next can tell.
        let mut offsets = TopicPartitionList::new();
        let mut positions = Vec::with_capacity(self.partitions.len());
        for (partition, part) in self.partitions.iter_mut() {
            let next = part.pending_offset.or(part.committed_offset);
            if let Some(next) = next {
                let version = part.version + 1;
                let mut el = offsets.add_partition(&self.cfg.topics.customer_events, *partition);
                let _ = el.set_offset(Offset::Offset(next));
                el.set_metadata(format!("{VERSION_METADATA_PREFIX}{version}"));
                part.runtime
                    .put_meta(META_OFFSET, next.to_be_bytes().to_vec());
                part.runtime
                    .put_meta(META_STATE_VERSION, version.to_be_bytes().to_vec());
            }
            let outcome = part.outcome_pending.or(part.outcome_committed);
            positions.push((*partition, next, outcome));
        }
        if let Some(input) = &self.outcomes {
            for (partition, _, outcome) in &positions {
                if let Some(outcome) = outcome {
                    let mut el = offsets.add_partition(&input.topic, *partition);
                    let _ = el.set_offset(Offset::Offset(*outcome));
                }
            }
        }
        // The state changes of this batch go to the changelog in the same transaction, so the
        // changelog always holds exactly the state the committed offsets produced.
        let mut phase = PhaseTimer::new(&self.metrics);
        let mut prepared = Vec::with_capacity(self.partitions.len());
        for (partition, part) in self.partitions.iter_mut() {
            let batch = part
                .runtime
                .prepare()
                .map_err(PipelineError::state(*partition, &part.path))?;
            // A customer due again before the next commit, as far as the last batch moved
            // the watermark, is encoded once, not at every step (most are woken again).
            let watermark = part.runtime.watermark();
            let horizon = match part.watermark_at_commit {
                Millis::MIN => Millis::MIN,
                last => watermark.saturating_add(watermark.saturating_sub(last)),
            };
            part.runtime.defer_seals_until(horizon);
            part.watermark_at_commit = watermark;
            // From here on the cache may change: the next records' changes go to the next
            // batch, and this one is written to the store once committed.
            prepared.push((*partition, batch));
        }
        for (partition, batch) in &prepared {
            self.send_changelog(*partition, &batch.batch)?;
        }
        phase.done(CommitPhase::Prepare);
        let group = if offsets.count() > 0 {
            Some(consumer.group_metadata().ok_or(PipelineError::Kafka {
                action: "read consumer group metadata for the transaction",
                source: KafkaError::Canceled,
            })?)
        } else {
            None
        };
        self.in_transaction = false;
        // Exactly once, stores that can be written from the commit thread are, once the
        // transaction ended; their cached customers stay until then (see
        // `StateCache::hand_off`). The others are written by `conclude`.
        let mut jobs = Vec::new();
        let mut kept = Vec::new();
        for (partition, batch) in prepared {
            let writer = self
                .partitions
                .get(&partition)
                .filter(|_| self.transactional)
                .and_then(|p| p.runtime.store_writer());
            match writer {
                Some(writer) => jobs.push((partition, writer, batch.batch)),
                None => kept.push((partition, batch)),
            }
        }
        let done = Committed {
            prepared: kept,
            positions,
            latencies: std::mem::take(&mut self.latencies),
            started,
        };
        if self.transactional {
            self.txn_open = false;
            let producer = self.producer.clone();
            let (tell, ended) = std::sync::mpsc::sync_channel(1);
            let handle = std::thread::Builder::new()
                .name("waymark-commit".into())
                .spawn(move || {
                    let result = end_transaction(&producer, &offsets, group.as_ref(), phase);
                    let ok = result.is_ok();
                    // The poll loop opens the next transaction while the state is written.
                    let _ = tell.send(result);
                    if ok {
                        write_states(jobs)
                    } else {
                        StatesWritten::default()
                    }
                })
                .map_err(|e| {
                    PipelineError::Setup(format!(
                        "cannot start a thread to commit the transaction: {e}; \
                         raise the process's thread or memory limits"
                    ))
                })?;
            self.in_flight = Some(InFlight {
                ended,
                result: None,
                handle,
                done,
            });
            return Ok(());
        }
        // At least once: every output is acknowledged before the offsets move on.
        let timeout = Duration::from_secs(30);
        let result = crate::kafka::flush_threaded(&self.producer, timeout)
            .and_then(|()| {
                phase.done(CommitPhase::Flush);
                if offsets.count() > 0 {
                    consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                } else {
                    Ok(())
                }
            })
            .map(|()| {
                phase.done(CommitPhase::End);
                Instant::now()
            })
            .map_err(|e| TxnFailure {
                action: "commit the consumed offsets",
                call: TxnCall::Failed(e),
            });
        self.conclude(consumer, done, result, None)?;
        self.finish_writes()
    }

    /// Waits for the commit in flight, if any, and for its state to be written: see
    /// [`Core::finish_transaction`] and [`Core::finish_writes`].
    fn finish_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        self.finish_transaction(consumer)?;
        self.finish_writes()
    }

    /// Waits for the broker's part of the commit in flight, if any, and concludes it (see
    /// [`Core::conclude`]); then opens the next transaction and sends what the records
    /// handled meanwhile held back. The commit thread may still be writing the state.
    fn finish_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(());
        };
        let received = match flight.result.take() {
            Some(result) => Ok(result),
            None => flight.ended.try_recv().or_else(|_| {
                let since = Instant::now();
                let result = flight.ended.recv();
                self.metrics.commit_waited(since.elapsed().as_secs_f64());
                result
            }),
        };
        let result = match received {
            Ok(result) => result,
            // The commit thread ended without a word: it panicked.
            Err(_) => std::panic::resume_unwind(
                flight
                    .handle
                    .join()
                    .err()
                    .unwrap_or_else(|| Box::new("the commit thread stopped early")),
            ),
        };
        if result.is_err() {
            // Nothing was written: the thread is done (and the stores may be reopened).
            let _ = flight.handle.join();
            return self.conclude(consumer, flight.done, result, None);
        }
        self.conclude(consumer, flight.done, result, Some(flight.handle))?;
        if self.in_transaction {
            self.begin()?;
            for record in std::mem::take(&mut self.held) {
                self.produce(record)?;
            }
        }
        Ok(())
    }

    /// Whether the broker's part of the commit in flight, if any, is done (so
    /// [`Core::finish_transaction`] does not wait).
    fn transaction_ended(&mut self) -> bool {
        let Some(flight) = &mut self.in_flight else {
            return false;
        };
        if flight.result.is_none() {
            flight.result = flight.ended.try_recv().ok();
        }
        flight.result.is_some() || flight.handle.is_finished()
    }

    /// Whether the state of the last commit is written (so [`Core::finish_writes`] does
    /// not wait).
    fn states_written(&self) -> bool {
        self.writing.as_ref().is_some_and(|w| {
            w.handle
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished)
        })
    }

    /// Waits for the state writes of the last commit whose transaction ended, if any: then
    /// its customers may be evicted from the caches. A failed write stops the pipeline (the
    /// store is behind the committed offsets; the changelog repairs it on restart).
    fn finish_writes(&mut self) -> Result<(), PipelineError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        let written = match writing.handle {
            Some(handle) => {
                let waiting = (!handle.is_finished()).then(Instant::now);
                let written = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                if let Some(since) = waiting {
                    self.metrics.commit_waited(since.elapsed().as_secs_f64());
                }
                written
            }
            None => StatesWritten::default(),
        };
        for (partition, result) in written.results {
            let Some(part) = self.partitions.get_mut(&partition) else {
                continue;
            };
            result.map_err(PipelineError::state(partition, &part.path))?;
            part.runtime.prepared_written();
        }
        let write = written.took + writing.written_here;
        self.metrics
            .commit_phase(CommitPhase::StateWrite, write.as_secs_f64());
        self.metrics
            .transaction(true, (writing.committed + write).as_secs_f64());
        Ok(())
    }

    /// After the broker's part of a commit: on success, moves the partitions' committed
    /// positions and writes the batch's state to the stores the commit thread does not write
    /// (`writes`: the commit thread writing the others; see [`Core::finish_writes`]); on
    /// failure, aborts and rewinds to the last committed positions (the records handled since
    /// are read again).
    fn conclude<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        done: Committed,
        result: Result<Instant, TxnFailure>,
        writes: Option<std::thread::JoinHandle<StatesWritten>>,
    ) -> Result<(), PipelineError> {
        let Committed {
            prepared,
            positions,
            mut latencies,
            started,
        } = done;
        let ended = match result {
            Ok(ended) => ended,
            Err(failure) => {
                self.metrics
                    .transaction(false, started.elapsed().as_secs_f64());
                return match failure {
                    TxnFailure {
                        call: TxnCall::Failed(e),
                        ..
                    } => self.abort_and_rewind(consumer, e),
                    // No abort: it would wait on the same stuck client. The next producer's
                    // `init_transactions` aborts the open transaction.
                    stuck => Err(stuck.into_error()),
                };
            }
        };
        self.summary.transactions += 1;
        for (partition, next, outcome) in positions {
            let Some(part) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if let Some(next) = next {
                part.committed_offset = Some(next);
                part.version += 1;
                if part.pending_offset == Some(next) {
                    part.pending_offset = None;
                }
            }
            part.outcome_committed = outcome;
            if part.outcome_pending == outcome {
                part.outcome_pending = None;
            }
        }
        self.metrics.committed(&mut latencies, now_millis());
        debug_assert!(
            self.writing.is_none(),
            "a commit's writes were not waited for"
        );
        let writing = Instant::now();
        for (partition, batch) in prepared {
            let Some(part) = self.partitions.get_mut(&partition) else {
                continue;
            };
            part.runtime
                .write_prepared(batch)
                .map_err(PipelineError::state(partition, &part.path))?;
        }
        self.writing = Some(Writing {
            handle: writes,
            committed: ended.duration_since(started),
            written_here: writing.elapsed(),
        });
        Ok(())
    }

    /// The consumer's queue is empty: the partitions whose end it delivered are caught up.
    fn drained(&mut self) {
        for part in self.partitions.values_mut() {
            part.end.drained();
        }
    }

    /// Events waiting in the assigned input partitions: from the next offset to read to the
    /// high watermark the consumer last saw (cached by librdkafka; no request to the broker).
    /// Partitions not read yet in this assignment are not counted.
    fn backlog<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> i64 {
        let topic = &self.cfg.topics.customer_events;
        self.partitions
            .iter()
            .filter_map(|(partition, part)| {
                let next = part.pending_offset.or(part.committed_offset)?;
                let high =
                    crate::kafka::cached_high_watermark(consumer.client(), topic, *partition)?;
                Some((high - next).max(0))
            })
            .sum()
    }

    /// After a failed commit: abort, drop the uncommitted in-memory state and seek back to the
    /// last committed offsets, so the batch is processed again from scratch.
    fn abort_and_rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        e: KafkaError,
    ) -> Result<(), PipelineError> {
        if let KafkaError::Transaction(t) = &e
            && t.is_fatal()
        {
            return Err(PipelineError::Fenced(
                self.cfg.kafka.transactional_id.clone(),
            ));
        }
        tracing::warn!(error = %e, "Commit failed; aborting and re-processing the batch.");
        if self.transactional
            && let Err(abort) = retry_transaction_call("abort the transaction", || {
                self.producer.abort_transaction(Duration::from_secs(30))
            })
        {
            return Err(abort.into_error());
        }
        self.txn_open = false;
        // The records handled after the failed batch are read again too.
        self.in_transaction = false;
        self.held.clear();
        self.outputs.clear();
        self.latencies.clear();
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            let (committed, outcomes_from) = self
                .partitions
                .remove(&partition)
                .map_or((None, None), |p| (p.committed_offset, p.outcome_committed));
            self.open_partition(partition)?;
            if let Some(input) = &self.outcomes {
                if let Some(p) = self.partitions.get_mut(&partition) {
                    p.outcome_committed = outcomes_from;
                }
                let from = outcomes_from.map_or(Offset::Beginning, Offset::Offset);
                if let Err(e) =
                    input
                        .consumer
                        .seek(&input.topic, partition, from, Duration::from_secs(10))
                {
                    tracing::warn!(partition, error = %e, "Seek of outcomes after abort failed.");
                }
            }
            let offset = committed.map_or(Offset::Beginning, Offset::Offset);
            self.positions.moved(partition);
            if let Err(e) = consumer.seek(
                &self.cfg.topics.customer_events,
                partition,
                offset,
                Duration::from_secs(10),
            ) {
                tracing::warn!(partition, error = %e, "Seek after abort failed.");
            }
        }
        Ok(())
    }
}

/// Runs the processor until `shutdown` is cancelled (then drains, commits and returns) or a
/// fatal error. Blocks the calling thread: call it from a dedicated thread.
pub fn run(
    cfg: Config,
    journeys: Arc<LiveJourneys>,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<RunSummary, PipelineError> {
    let _run = tracing::info_span!(
        "run",
        group = %cfg.kafka.group_id,
        instance = %cfg.kafka.transactional_id
    )
    .entered();
    let transactional = cfg.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let mut producer_cfg = producer_config(&cfg.kafka.brokers, &cfg.kafka.properties);
    if transactional {
        producer_cfg
            .set("transactional.id", &cfg.kafka.transactional_id)
            .set("transaction.timeout.ms", "60000");
    }
    let producer: ThreadedProducer<TransactionalContext> = producer_cfg
        .create_with_context(TransactionalContext)
        .map_err(|source| PipelineError::Kafka {
            action: "create producer",
            source,
        })?;
    if transactional {
        producer
            .init_transactions(Duration::from_secs(60))
            .map_err(|source| PipelineError::Kafka {
                action: "init transactions (is the broker up, and transaction.state.log settings valid for its size?)",
                source,
            })?;
    } else {
        tracing::warn!(
            "processing-guarantee is at-least-once: after a crash the outputs of the last batch are produced again (same ids)."
        );
    }
    let rocks = RocksEnv::new(&cfg.rocksdb).map_err(PipelineError::state(-1, &cfg.state_dir))?;
    let outcomes = if cfg.read_outcomes {
        Some(OutcomeInput::new(&cfg)?)
    } else {
        None
    };
    let registry =
        crate::registry::connect(cfg.schema_registry.as_ref()).map_err(PipelineError::Setup)?;
    let input = crate::registry::input_decoder(
        cfg.input_format,
        cfg.input_mapping.as_ref(),
        registry.as_ref(),
    );
    let mut wire = Wire::new(registry);
    for channel in crate::model::Channel::ALL {
        wire.register::<crate::model::InterventionCommand>(cfg.topics.commands(channel))
            .map_err(registry_error)?;
    }
    wire.register::<crate::model::JourneyEvent>(&cfg.topics.journey_events)
        .map_err(registry_error)?;
    let input_topic = cfg.topics.customer_events.clone();
    let max_batch = cfg.max_batch_events;
    let mut batching = Batching::new(
        Duration::from_millis(cfg.commit_interval_ms),
        Duration::from_millis(cfg.backlog_commit_interval_ms),
        max_batch,
    );
    let core = Arc::new(Mutex::new(Core {
        input,
        wire,
        rocks,
        engine: journeys.engine(),
        metrics,
        health: health.clone(),
        producer: Arc::new(producer),
        transactional,
        partitions: BTreeMap::new(),
        outcomes,
        restoring: BTreeMap::new(),
        in_transaction: false,
        txn_open: false,
        in_flight: None,
        writing: None,
        held: Vec::new(),
        outputs: Vec::with_capacity(256),
        summary: RunSummary::default(),
        failed: None,
        latencies: BatchLatencies::default(),
        sized_at: None,
        positions: Positions::default(),
        cfg,
    }));
    let consumer: BaseConsumer<RunContext> = {
        let c = lock(&core);
        let mut cc = consumer_config(&c.cfg.kafka.brokers, &c.cfg.kafka.properties);
        cc.set("group.id", &c.cfg.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("statistics.interval.ms", "5000");
        if let Some(instance) = &c.cfg.kafka.group_instance_id {
            cc.set("group.instance.id", instance);
        }
        let context = RunContext {
            core: core.clone(),
            metrics: c.metrics.clone(),
            input_topic: c.cfg.topics.customer_events.clone(),
        };
        drop(c);
        cc.create_with_context(context)
            .map_err(|source| PipelineError::Kafka {
                action: "create consumer",
                source,
            })?
    };
    consumer
        .subscribe(&[&input_topic])
        .map_err(|source| PipelineError::Kafka {
            action: "subscribe",
            source,
        })?;
    health.live.store(true, Ordering::Relaxed);
    tracing::info!(topic = %input_topic, "Processing.");
    let queue =
        crate::kafka::ConsumerQueue::of(&consumer).map_err(|source| PipelineError::Kafka {
            action: "open the consumer's queue",
            source,
        })?;
    let (read_ahead_records, repositioned) = {
        let c = lock(&core);
        (c.cfg.read_ahead_records, c.positions.count.clone())
    };
    let mut ahead = match read_ahead_records {
        0 | 1 => None,
        _ => ReadAhead::start()
            .inspect_err(|e| {
                tracing::warn!(error = %e, "Cannot start the read-ahead thread; customers are read as their records come.");
            })
            .ok(),
    };
    let mut polled: Vec<Polled<'_>> = Vec::with_capacity(read_ahead_records.max(1));
    let mut last_commit = Instant::now();
    let mut batch = 0usize;
    // This thread's CPU time so far, counted at each batch end: is it bound by its own work or
    // by the CPU it gets?
    let mut thread_times = crate::telemetry::ThreadTimes::of_this_thread();
    loop {
        let restoring = !lock(&core).restoring.is_empty();
        // The records already fetched, up to `read-ahead-records` and what the batch still
        // takes, so the customers of all but the first can be read ahead. A rebalance inside
        // one of these polls may reposition partitions of records taken before it: those are
        // then stale, and skipped.
        let take = read_ahead_records
            .min(max_batch.saturating_sub(batch))
            .max(1);
        let mut next = consumer.poll(Duration::from_millis(if restoring { 0 } else { 20 }));
        loop {
            let more = matches!(next, Some(Ok(_))) && polled.len() + 1 < take;
            polled.push((next, repositioned.load(Ordering::Relaxed)));
            if !more {
                break;
            }
            next = consumer.poll(Duration::ZERO);
            if next.is_none() {
                break;
            }
        }
        // Every record fetched so far is handled once these are. A partition's end says
        // less: it waits in the queue behind the records fetched before it, and records
        // fetched after it (up to `queued.min.messages`) wait behind it.
        let drained = queue.is_empty();
        let mut core = lock(&core);
        if let Some(e) = core.failed.take() {
            return Err(e);
        }
        if !core.restoring.is_empty() {
            core.step_restores(&consumer)?;
        }
        let starts = match &mut ahead {
            Some(ahead) if polled.len() > 1 => core.read_ahead(ahead, &polled),
            _ => Vec::new(),
        };
        let requested_at = repositioned.load(Ordering::Relaxed);
        let mut stale = 0;
        for (at, (record, polled_at)) in polled.drain(..).enumerate() {
            match record {
                Some(Ok(msg)) => {
                    if let Some(ahead) = &mut ahead {
                        ahead.take_through(at, |target, state| {
                            core.install(target, state, requested_at)
                        });
                    }
                    if !core.positions.is_current(msg.partition(), polled_at) {
                        // Fetched before its partition was repositioned: it comes again from
                        // the new position, or belongs to another instance now.
                        stale += 1;
                        continue;
                    }
                    core.handle(&msg)?;
                    batch += 1;
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(p) = core.partitions.get_mut(&partition) {
                        p.end.end();
                    }
                }
                Some(Err(e)) => {
                    if let Some(reason) = crate::kafka::fatal_error(consumer.client()) {
                        return Err(PipelineError::ClientFatal {
                            client: "consumer",
                            reason,
                        });
                    }
                    tracing::warn!(error = %e, "Consumer error.");
                }
                None => {}
            }
        }
        if let Some(ahead) = &mut ahead {
            ahead.finish();
        }
        core.learn_advance(&starts);
        if stale > 0 {
            tracing::info!(
                records = stale,
                "Records fetched before their partition was repositioned were not handled; they are read again from its new position (or by its new owner)."
            );
        }
        if drained {
            core.drained();
        }
        batch += core.poll_outcomes(max_batch.saturating_sub(batch).max(1))?;
        if core.transaction_ended() {
            // The transaction in flight ended: open the next one and send what waited.
            core.finish_transaction(&consumer)?;
        }
        if core.states_written() {
            // The last commit's state is in the stores: its customers may be evicted.
            core.finish_writes()?;
        }
        // A commit is due every `commit-interval-ms`; while the input is behind, the batch
        // stays open until `backlog-commit-interval-ms`, `max_batch`, or until the consumer
        // has caught up.
        let open = Open {
            elapsed: last_commit.elapsed(),
            events: batch,
            drained,
            shutting_down: shutdown.is_cancelled(),
        };
        let end = match batching.decide(open, || core.backlog(&consumer)) {
            Decision::Continue => None,
            Decision::Extend => {
                core.metrics.batch_extended();
                None
            }
            Decision::End(reason) => Some(reason),
        };
        if let Some(reason) = end {
            core.metrics.batch_ended(reason);
            batching.committed();
            core.commit(&consumer)?;
            if let Some(last) = thread_times
                && let Some(now) = crate::telemetry::ThreadTimes::of_this_thread()
            {
                core.metrics.pipeline_thread(now.since(last));
                thread_times = Some(now);
            }
            let mut reload = journeys.next();
            if reload.is_some() || shutdown.is_cancelled() {
                // A reload looks at every customer, and shutdown must not leave a commit
                // behind: both once the commit is done.
                core.finish_commit(&consumer)?;
            }
            while let Some(reply) = reload {
                core.reload(&journeys, reply);
                reload = journeys.next();
            }
            batch = 0;
            last_commit = Instant::now();
            if shutdown.is_cancelled() {
                break;
            }
        }
    }
    health.ready.store(false, Ordering::Relaxed);
    let summary = lock(&core).summary;
    consumer.unsubscribe();
    tracing::info!(
        records = summary.records,
        commands = summary.commands,
        journey_events = summary.journey_events,
        dead_letters = summary.dead_letters,
        transactions = summary.transactions,
        "Stopped after committing."
    );
    Ok(summary)
}

/// What `waymark state inspect` prints for a customer.
#[derive(Debug, serde::Serialize)]
pub struct InspectReport {
    /// The customer.
    pub customer_id: String,
    /// State directory of the partition holding the customer.
    pub partition_dir: String,
    /// Profile attributes.
    pub profile: BTreeMap<String, String>,
    /// Events kept in state (event time order).
    pub events: Vec<serde_json::Value>,
    /// Events that arrived late.
    pub late_events: u32,
    /// Duplicate deliveries seen.
    pub duplicates: u32,
    /// Next wake-up (RFC 3339).
    pub next_due: Option<String>,
    /// Set when the customer is an alias (`identity.alias`): the canonical customer its
    /// history moved to, when, and by which event. Its events go there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<serde_json::Value>,
    /// The aliases whose history was merged into this customer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<serde_json::Value>,
    /// Journeys, instances, steps, and every action's fate with the reason.
    pub explanation: crate::engine::Explanation,
}

/// An identity link as `state inspect` shows it.
fn identity_link_json(link: &crate::engine::IdentityLink) -> serde_json::Value {
    serde_json::json!({
        "customer_id": link.customer_id,
        "at": crate::model::format_millis(link.at),
        "event_id": link.event_id,
    })
}

/// Errors of `waymark state inspect`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The state directory has no partition directories.
    #[error(
        "no partition state under {0}; point --state-dir at the directory `waymark run` used, and stop that processor first (RocksDB allows one user)"
    )]
    NoState(PathBuf),
    /// No partition holds the customer.
    #[error("customer `{customer}` is in none of the {partitions} partitions under {dir}")]
    NotFound {
        /// The customer.
        customer: String,
        /// Partitions searched.
        partitions: usize,
        /// The state directory.
        dir: PathBuf,
    },
    /// A partition's state could not be read.
    #[error("{path}: {source}")]
    State {
        /// The partition directory.
        path: PathBuf,
        /// The error.
        source: StateError,
    },
}

/// Finds a customer in a (stopped) processor's state directory and explains its state.
pub fn inspect(
    state_dir: &std::path::Path,
    engine: &Engine,
    customer_id: &str,
) -> Result<InspectReport, InspectError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .map_err(|_| InspectError::NoState(state_dir.to_owned()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(InspectError::NoState(state_dir.to_owned()));
    }
    for dir in &dirs {
        let err = |source| InspectError::State {
            path: dir.clone(),
            source,
        };
        let store = RocksStore::open(dir, &Default::default()).map_err(err)?;
        let Some(bytes) =
            crate::state::StateStore::get_customer(&store, customer_id).map_err(err)?
        else {
            continue;
        };
        let state: crate::engine::CustomerState =
            crate::state::decode_value(customer_id, &bytes).map_err(err)?;
        return Ok(InspectReport {
            customer_id: customer_id.to_owned(),
            partition_dir: dir.display().to_string(),
            profile: state.latest_profile(),
            events: state
                .events
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "event_id": e.event_id,
                        "type": e.event_type,
                        "occurred_at": crate::model::format_millis(e.at),
                        "attributes": e.attributes.iter().cloned().collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect(),
            late_events: state.late_events,
            duplicates: state.duplicates,
            next_due: state.next_due.map(crate::model::format_millis),
            merged_into: state.merged_into().map(identity_link_json),
            merged_from: state.merged_from().iter().map(identity_link_json).collect(),
            explanation: engine.explain(customer_id, &state),
        });
    }
    Err(InspectError::NotFound {
        customer: customer_id.to_owned(),
        partitions: dirs.len(),
        dir: state_dir.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that fails with `errors` in turn, then succeeds; counts its calls.
    fn scripted(
        errors: Vec<&'static str>,
    ) -> (impl FnMut() -> Result<(), &'static str>, Arc<Mutex<u32>>) {
        let calls = Arc::new(Mutex::new(0u32));
        let seen = Arc::clone(&calls);
        let mut errors = errors.into_iter();
        let call = move || {
            *seen.lock().unwrap() += 1;
            errors.next().map_or(Ok(()), Err)
        };
        (call, calls)
    }

    fn retriable(e: &&str) -> bool {
        e.starts_with("timed out")
    }

    #[test]
    fn a_record_polled_before_its_partition_was_repositioned_is_stale() {
        let mut positions = Positions::default();
        let polled = |p: &Positions| p.count.load(Ordering::Relaxed);
        let before = polled(&positions);
        assert!(positions.is_current(0, before) && positions.is_current(1, before));
        // A rebalance inside a later poll revokes partition 1.
        positions.moved(1);
        let after = polled(&positions);
        assert!(positions.is_current(0, before), "partition 0 did not move");
        assert!(
            !positions.is_current(1, before),
            "fetched from the old position"
        );
        assert!(positions.is_current(1, after), "polled after the move");
        // A move inside the poll that returned the record came before the record.
        positions.moved(0);
        assert!(positions.is_current(0, polled(&positions)));
        assert!(!positions.is_current(0, after));
    }

    #[test]
    fn a_retriable_transaction_call_is_retried_until_it_succeeds() {
        let (call, calls) = scripted(vec!["timed out", "timed out", "timed out"]);
        let result = retry_call(
            "commit",
            Duration::from_secs(60),
            Duration::ZERO,
            retriable,
            call,
        );
        assert!(result.is_ok());
        assert_eq!(*calls.lock().unwrap(), 4);
    }

    #[test]
    fn a_transaction_call_that_stays_retriable_past_the_budget_is_stuck() {
        let (call, calls) = scripted(vec!["timed out"; 1000]);
        let result = retry_call(
            "commit",
            Duration::from_millis(30),
            Duration::from_millis(5),
            retriable,
            call,
        );
        let Err(TxnCall::Stuck { error, attempts }) = result else {
            panic!("expected the call to be given up on, got {result:?}");
        };
        assert_eq!(error, "timed out");
        assert_eq!(attempts, *calls.lock().unwrap());
        assert!((2..1000).contains(&attempts), "{attempts} attempts");
    }

    #[test]
    fn a_transaction_call_failing_otherwise_is_not_retried() {
        let (call, calls) = scripted(vec!["fenced", "timed out"]);
        let result = retry_call(
            "commit",
            Duration::from_secs(60),
            Duration::ZERO,
            retriable,
            call,
        );
        assert!(
            matches!(result, Err(TxnCall::Failed("fenced"))),
            "{result:?}"
        );
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[test]
    fn a_stuck_transaction_call_restarts_the_pipeline_and_another_failure_stops_it() {
        use crate::shutdown::Restartable;
        let stuck = TxnFailure {
            action: "commit the transaction",
            call: TxnCall::Stuck {
                error: KafkaError::Canceled,
                attempts: 4,
            },
        }
        .into_error();
        assert!(stuck.restartable());
        let message = stuck.to_string();
        assert!(
            message.contains("could not commit the transaction for 90 s (4 attempts"),
            "{message}"
        );
        let failed = TxnFailure {
            action: "commit the transaction",
            call: TxnCall::Failed(KafkaError::Canceled),
        }
        .into_error();
        assert!(!failed.restartable());
    }
}
