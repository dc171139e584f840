//! `waymark analytics serve`: reads `journey-events` in a consumer group of its own, folds
//! them into the view ([`super::Aggregates`], [`super::store`]) and serves the JSON API, the
//! live stream and the dashboard.
//!
//! Owns the view's consumer loop (a dedicated thread, like `waymark run`'s) and the HTTP
//! routes. Exactly-once by construction: the offset of each partition is stored in the view's
//! RocksDB in the same batch as what it produced, and an assigned partition resumes from it
//! (from the beginning when the directory is new), whatever the group's committed offsets
//! say; those are committed too, but only so lag shows in Kafka's tools. Instances scale like
//! the processor: each owns some partitions and serves their share of the funnel
//! (`/api/instance` says which).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::{Deserialize, Serialize};

use super::store::{IndexEntry, StoreError, ViewBatch, ViewStore};
use super::{
    Aggregates, Applied, Definitions, ExperimentReport, Funnel, Outcome, Progress, Standing,
};
use crate::config::Config;
use crate::kafka::client_config;
use crate::model::{JourneyEventType, format_millis};
use crate::shutdown::CancellationToken;
use crate::telemetry::{Health, Metrics};

/// Why the view stopped.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// A Kafka call failed.
    #[error("analytics: cannot {action}: {source}; check kafka.brokers and that the broker is up")]
    Kafka {
        /// What was being done.
        action: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// The consumer reported a fatal error; new clients may help.
    #[error("analytics: the consumer failed fatally ({reason}); starting again with a new one")]
    ClientFatal {
        /// librdkafka's reason.
        reason: String,
    },
    /// The view's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The schema registry could not be asked for a journey event's schema; the view starts
    /// again from its last write and reads the record again.
    #[error("analytics: {0}")]
    Registry(String),
}

impl crate::shutdown::Restartable for ViewError {
    fn restartable(&self) -> bool {
        matches!(self, ViewError::ClientFatal { .. } | ViewError::Registry(_))
    }
}

/// What the HTTP side reads: the committed aggregates of the partitions this instance owns,
/// the database, and running totals for the live rates.
pub struct Live {
    order: Definitions,
    store: ViewStore,
    owned: RwLock<BTreeMap<i32, Aggregates>>,
    journey_events: AtomicU64,
    commands: AtomicU64,
    caught_up: AtomicBool,
}

impl Live {
    /// The view over `store`, with the step order of the journeys it reports.
    pub fn new(order: Definitions, store: ViewStore) -> Self {
        Live {
            order,
            store,
            owned: RwLock::new(BTreeMap::new()),
            journey_events: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
        }
    }

    fn owned(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<i32, Aggregates>> {
        self.owned.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The aggregates of every owned partition, merged.
    pub fn merged(&self) -> Aggregates {
        let mut all = Aggregates::default();
        for a in self.owned().values() {
            all.merge(a);
        }
        all
    }

    /// The funnel of `journey` at `version` (the newest version seen when `None`).
    pub fn funnel(&self, journey: &str, version: Option<u32>) -> Option<Funnel> {
        let all = self.merged();
        let version = version.or_else(|| all.versions(journey).last().copied())?;
        all.funnel(&self.order, journey, version)
    }
}

/// The consumer side's state, shared with the rebalance callbacks (which run inside `poll`
/// on the loop's thread while the loop holds no lock).
struct Core {
    /// Reads journey events: bare Avro, or with the schema registry.
    wire: crate::registry::Wire,
    live: Arc<Live>,
    metrics: Metrics,
    topic: String,
    aggregates: BTreeMap<i32, Aggregates>,
    /// Progress changed since the last write, by (customer, journey).
    dirty: HashMap<(String, String), (i32, Progress)>,
    batch: ViewBatch,
    /// Next offset to read, per partition read from since the last write.
    next: BTreeMap<i32, i64>,
    /// Journey events and commands read since the last write.
    counted: (u64, u64),
    failed: Option<ViewError>,
}

impl Core {
    fn apply(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Result<(), ViewError> {
        let decoded = self.wire.decode::<crate::model::JourneyEvent>(payload);
        if let Err(e) = &decoded
            && e.is_retryable()
        {
            return Err(ViewError::Registry(e.to_string()));
        }
        self.next.insert(partition, offset + 1);
        let ev = match decoded {
            Ok(ev) => ev,
            Err(error) => {
                // Written by Waymark itself, so a newer writer's schema: the record stays in
                // the topic for a newer view to read.
                tracing::warn!(partition, offset, %error, "Journey event not readable; skipped (deploy the newest waymark to read it).");
                self.metrics.analytics_events("rejected", 1);
                return Ok(());
            }
        };
        let key = (ev.customer_id.to_string(), ev.journey.to_string());
        let mut entry = match self.dirty.remove(&key) {
            Some(e) => e,
            None => self
                .live
                .store
                .progress(&ev.customer_id, &ev.journey)?
                .map(|(_, p)| (partition, p))
                .unwrap_or((partition, Progress::default())),
        };
        entry.0 = partition;
        let aggregates = self.aggregates.entry(partition).or_default();
        match aggregates.apply(&self.live.order, &mut entry.1, &ev) {
            Applied::Duplicate => self.metrics.analytics_events("duplicate", 1),
            Applied::Applied { before, after } => {
                self.batch
                    .moved(&ev.journey, &ev.customer_id, partition, &before, &after);
                self.metrics.analytics_events("applied", 1);
                self.counted.0 += 1;
                if ev.event_type == JourneyEventType::CommandEmitted {
                    self.counted.1 += 1;
                }
            }
        }
        self.dirty.insert(key, entry);
        Ok(())
    }

    /// Writes what was read since the last write, publishes it to the API, and commits the
    /// group's offsets (for monitoring only).
    fn write<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), ViewError> {
        if self.next.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        for ((customer, journey), (partition, progress)) in self.dirty.drain() {
            batch.progress(&customer, &journey, partition, progress);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in &self.next {
            let aggregates = self.aggregates.entry(*partition).or_default();
            batch.partition(*partition, aggregates, *next);
            let _ = offsets
                .add_partition(&self.topic, *partition)
                .set_offset(Offset::Offset(*next));
        }
        self.live.store.write(batch)?;
        {
            let mut owned = self.live.owned.write().unwrap_or_else(|p| p.into_inner());
            for partition in self.next.keys() {
                owned.insert(*partition, self.aggregates[partition].clone());
            }
        }
        self.live
            .journey_events
            .fetch_add(self.counted.0, Ordering::Relaxed);
        self.live
            .commands
            .fetch_add(self.counted.1, Ordering::Relaxed);
        self.counted = (0, 0);
        self.next.clear();
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, "Committing the view's offsets to the group failed (monitoring only).");
        }
        Ok(())
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

struct ViewContext {
    core: Arc<Mutex<Core>>,
    metrics: Metrics,
    topic: String,
}

impl ClientContext for ViewContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error(&error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        crate::kafka::each_consumer_lag(statistics, &self.topic, |partition, lag| {
            self.metrics.analytics_lag(partition, lag)
        });
    }
}

impl ConsumerContext for ViewContext {
    /// Assigned partitions start from the offset stored beside the view's state (the
    /// beginning when there is none), not from the group's committed offset.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut core = lock(&self.core);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalance("assigned");
                let mut loaded = Vec::new();
                for el in tpl.elements_for_topic(&self.topic) {
                    let partition = el.partition();
                    match (
                        core.live.store.offset(partition),
                        core.live.store.aggregates(partition),
                    ) {
                        (Ok(offset), Ok(aggregates)) => {
                            tracing::info!(
                                partition,
                                stored_offset = offset,
                                "Analytics partition assigned."
                            );
                            loaded.push((partition, offset, aggregates));
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            core.failed.get_or_insert(e.into());
                        }
                    }
                }
                for (partition, offset, aggregates) in loaded {
                    let at = offset.map_or(Offset::Beginning, Offset::Offset);
                    let _ = tpl.set_partition_offset(&self.topic, partition, at);
                    core.aggregates.insert(partition, aggregates.clone());
                    core.live
                        .owned
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(partition, aggregates);
                }
                consumer.incremental_assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalance("revoked");
                if let Err(e) = core.write(consumer) {
                    core.failed.get_or_insert(e);
                }
                for el in tpl.elements_for_topic(&self.topic) {
                    core.aggregates.remove(&el.partition());
                    core.live
                        .owned
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&el.partition());
                    tracing::info!(partition = el.partition(), "Analytics partition revoked.");
                }
                consumer.incremental_unassign(tpl)
            }
            other => {
                tracing::warn!(error = ?other, "Rebalance error.");
                Ok(())
            }
        };
        if let Err(source) = result {
            core.failed.get_or_insert(ViewError::Kafka {
                action: "apply the group's assignment",
                source,
            });
        }
    }
}

/// Reads `journey-events` into the view until `shutdown` (then writes what was read and
/// returns) or a fatal error.
pub fn run(
    cfg: &Config,
    live: Arc<Live>,
    metrics: &Metrics,
    health: &Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ViewError> {
    let _analytics = tracing::info_span!("analytics", group = %cfg.analytics.group_id).entered();
    let topic = cfg.topics.journey_events.clone();
    let registry = crate::registry::connect(cfg.schema_registry.as_ref())
        .map_err(|e| ViewError::Registry(format!("schema-registry: {e}")))?;
    let core = Arc::new(Mutex::new(Core {
        wire: crate::registry::Wire::new(registry),
        live: live.clone(),
        metrics: metrics.clone(),
        topic: topic.clone(),
        aggregates: BTreeMap::new(),
        dirty: HashMap::new(),
        batch: ViewBatch::default(),
        next: BTreeMap::new(),
        counted: (0, 0),
        failed: None,
    }));
    let mut cc = client_config(&cfg.kafka.brokers, &cfg.kafka.properties);
    cc.set("group.id", &cfg.analytics.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "5000");
    let consumer: BaseConsumer<ViewContext> = cc
        .create_with_context(ViewContext {
            core: core.clone(),
            metrics: metrics.clone(),
            topic: topic.clone(),
        })
        .map_err(|source| ViewError::Kafka {
            action: "create the consumer",
            source,
        })?;
    consumer
        .subscribe(&[&topic])
        .map_err(|source| ViewError::Kafka {
            action: "subscribe to journey-events",
            source,
        })?;
    health.live.store(true, Ordering::Relaxed);
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(%topic, group = %cfg.analytics.group_id, "Analytics view reading.");
    let interval = Duration::from_millis(cfg.analytics.commit_interval_ms);
    let mut last_write = Instant::now();
    let queue = crate::kafka::ConsumerQueue::of(&consumer).map_err(|source| ViewError::Kafka {
        action: "open the consumer's queue",
        source,
    })?;
    let mut ends: BTreeMap<i32, crate::kafka::PartitionEnd> = BTreeMap::new();
    loop {
        let polled = consumer.poll(Duration::from_millis(50));
        let drained = queue.is_empty();
        let mut core = lock(&core);
        if let Some(e) = core.failed.take() {
            return Err(e);
        }
        match polled {
            Some(Ok(msg)) => {
                ends.entry(msg.partition()).or_default().record();
                core.apply(
                    msg.partition(),
                    msg.offset(),
                    msg.payload().unwrap_or_default(),
                )?;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ends.entry(partition).or_default().end();
            }
            Some(Err(e)) => {
                if let Some(reason) = crate::kafka::fatal_error(consumer.client()) {
                    return Err(ViewError::ClientFatal { reason });
                }
                tracing::warn!(error = %e, "Analytics consumer error.");
            }
            None => {}
        }
        if drained {
            ends.values_mut()
                .for_each(crate::kafka::PartitionEnd::drained);
        }
        if last_write.elapsed() >= interval {
            core.write(&consumer)?;
            last_write = Instant::now();
            let owned: Vec<i32> = core.aggregates.keys().copied().collect();
            // A partition revoked and assigned again starts over.
            ends.retain(|p, _| core.aggregates.contains_key(p));
            let caught_up = !owned.is_empty()
                && owned
                    .iter()
                    .all(|p| ends.get(p).is_some_and(|e| e.caught_up()));
            core.live.caught_up.store(caught_up, Ordering::Relaxed);
            if shutdown.is_cancelled() {
                break;
            }
        }
    }
    health.ready.store(false, Ordering::Relaxed);
    consumer.unsubscribe();
    tracing::info!("Analytics view stopped after writing what it read.");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An API error: status and a message saying what to do.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type Shared = State<Arc<Live>>;

/// One journey in `/api/journeys`.
#[derive(Serialize)]
struct JourneySummary {
    journey: String,
    versions: Vec<u32>,
    steps: Vec<String>,
    entered: u64,
    completed: u64,
}

/// `/api/instance`: which share of the view this instance serves.
#[derive(Serialize)]
struct InstanceInfo {
    partitions: Vec<i32>,
    caught_up: bool,
    journey_events_total: u64,
    commands_total: u64,
}

async fn journeys(State(live): Shared) -> Json<Vec<JourneySummary>> {
    let all = live.merged();
    let mut names: Vec<String> = live.order.journeys().map(str::to_owned).collect();
    for (j, _) in all.journeys.keys() {
        if !names.contains(j) {
            names.push(j.clone());
        }
    }
    Json(
        names
            .into_iter()
            .map(|journey| {
                let versions = all.versions(&journey);
                let (entered, completed) = all
                    .journeys
                    .iter()
                    .filter(|((j, _), _)| *j == journey)
                    .fold((0, 0), |(e, c), (_, a)| (e + a.entered, c + a.goal_reached));
                JourneySummary {
                    steps: live.order.steps(&journey).to_vec(),
                    versions,
                    entered,
                    completed,
                    journey,
                }
            })
            .collect(),
    )
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

async fn funnel(
    State(live): Shared,
    Path(journey): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Funnel>, ApiError> {
    live.funnel(&journey, q.version).map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no journey events of `{journey}`{} on the partitions this instance owns yet; GET /api/journeys lists what there is",
                q.version.map(|v| format!(" version {v}")).unwrap_or_default()
            ),
        )
    })
}

#[derive(Deserialize)]
struct StandingQuery {
    standing: Option<String>,
    version: Option<u32>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of `/api/journeys/{journey}/steps/{step}/customers`.
#[derive(Serialize)]
struct CustomerPage {
    journey: String,
    version: u32,
    step: String,
    standing: Standing,
    customers: Vec<PageEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    next_after: Option<String>,
}

#[derive(Serialize)]
struct PageEntry {
    customer_id: String,
    instance: u32,
    since: String,
}

/// Largest page size.
const MAX_PAGE: usize = 1000;

async fn customers_at(
    State(live): Shared,
    Path((journey, step)): Path<(String, String)>,
    Query(q): Query<StandingQuery>,
) -> Result<Json<CustomerPage>, ApiError> {
    let standing = match q.standing.as_deref() {
        None => Standing::At,
        Some(s) => Standing::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("standing `{s}` is not one of: at, abandoned"),
            )
        })?,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let version = match q.version {
        Some(v) => v,
        None => *live.merged().versions(&journey).last().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no journey events of `{journey}` yet"),
            )
        })?,
    };
    let owned: Vec<i32> = live.owned().keys().copied().collect();
    let entries: Vec<IndexEntry> = live.store.standing(
        &journey,
        version,
        &step,
        standing,
        q.after.as_deref(),
        limit + 1,
        &|p| owned.contains(&p),
    )?;
    let more = entries.len() > limit;
    let customers: Vec<PageEntry> = entries
        .into_iter()
        .take(limit)
        .map(|e| PageEntry {
            customer_id: e.customer_id,
            instance: e.instance,
            since: format_millis(e.since),
        })
        .collect();
    Ok(Json(CustomerPage {
        next_after: more
            .then(|| customers.last().map(|c| c.customer_id.clone()))
            .flatten(),
        journey,
        version,
        step,
        standing,
        customers,
    }))
}

/// `/api/customers/{id}/timeline`.
#[derive(Serialize)]
struct Timeline {
    customer_id: String,
    journeys: Vec<JourneyTimeline>,
}

#[derive(Serialize)]
struct JourneyTimeline {
    journey: String,
    partition: i32,
    /// Where each instance stands now.
    instances: Vec<serde_json::Value>,
    /// Every journey event, in event time order: entries, steps, commands sent, withheld
    /// (with the reason) or deferred, abandonments, the goal, exits.
    events: Vec<serde_json::Value>,
}

async fn timeline(
    State(live): Shared,
    Path(customer): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    let found = live.store.customer(&customer)?;
    if found.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "customer `{customer}` has no journey events in this view; `waymark state inspect --customer {customer}` explains the processor's side"
            ),
        ));
    }
    let journeys = found
        .into_iter()
        .map(|(journey, partition, progress)| {
            let steps = live.order.steps(&journey);
            let instances = progress
                .instances
                .iter()
                .map(|i| {
                    let position = i.position(steps);
                    serde_json::json!({
                        "instance": i.instance,
                        "version": i.version,
                        "entered_at": format_millis(i.entered_at),
                        "completed": i.completed.iter().map(|(s, at)| (s.clone(), format_millis(*at))).collect::<BTreeMap<_, _>>(),
                        "abandoned": i.abandoned.iter().map(|(s, at)| (s.clone(), format_millis(*at))).collect::<BTreeMap<_, _>>(),
                        "ended": match &i.ended {
                            None => serde_json::Value::Null,
                            Some(super::Ended::Goal(at)) => serde_json::json!({"goal": format_millis(*at)}),
                            Some(super::Ended::Exit(at, reason)) => serde_json::json!({"exit": format_millis(*at), "reason": reason}),
                        },
                        "current_step": position.as_ref().map(|p| p.step.clone()),
                        "standing": position.as_ref().map(|p| p.standing.as_str()),
                    })
                })
                .collect();
            let mut events = progress.timeline.clone();
            events.sort_by(|a, b| (a.at, &a.journey_event_id).cmp(&(b.at, &b.journey_event_id)));
            JourneyTimeline {
                journey,
                partition,
                instances,
                events: events
                    .iter()
                    .map(|e| serde_json::to_value(e).unwrap_or_default())
                    .collect(),
            }
        })
        .collect();
    Ok(Json(Timeline {
        customer_id: customer,
        journeys,
    }))
}

#[derive(Deserialize)]
struct OutcomeQuery {
    outcome: Option<String>,
}

fn parse_outcome(q: &OutcomeQuery) -> Result<Option<Outcome>, ApiError> {
    match q.outcome.as_deref() {
        None => Ok(None),
        Some("awaited") => Ok(Some(Outcome::Awaited)),
        Some("goal") => Ok(Some(Outcome::Goal)),
        Some(other) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("outcome `{other}` is not one of: awaited, goal"),
        )),
    }
}

async fn experiments(
    State(live): Shared,
    Query(q): Query<OutcomeQuery>,
) -> Result<Json<Vec<ExperimentReport>>, ApiError> {
    let outcome = parse_outcome(&q)?;
    let all = live.merged();
    Ok(Json(
        live.order
            .experiments()
            .keys()
            .filter_map(|id| all.experiment(&live.order, id, outcome))
            .collect(),
    ))
}

async fn experiment(
    State(live): Shared,
    Path(id): Path<String>,
    Query(q): Query<OutcomeQuery>,
) -> Result<Json<ExperimentReport>, ApiError> {
    let outcome = parse_outcome(&q)?;
    live.merged()
        .experiment(&live.order, &id, outcome)
        .map(Json)
        .ok_or_else(|| {
            let known: Vec<&str> = live.order.experiments().keys().map(String::as_str).collect();
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "no experiment `{id}` in the journeys this view was started with (known: {}); experiments are defined on actions, see deploy/examples/b2b-onboarding-ab.yaml",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            )
        })
}

async fn instance(State(live): Shared) -> Json<InstanceInfo> {
    Json(InstanceInfo {
        partitions: live.owned().keys().copied().collect(),
        caught_up: live.caught_up.load(Ordering::Relaxed),
        journey_events_total: live.journey_events.load(Ordering::Relaxed),
        commands_total: live.commands.load(Ordering::Relaxed),
    })
}

/// One message of `/api/live`.
#[derive(Serialize)]
struct Tick {
    at: String,
    journey_events_per_sec: f64,
    commands_per_sec: f64,
    journey_events_total: u64,
    commands_total: u64,
    funnels: Vec<Funnel>,
}

fn tick(live: &Live, previous: &mut (Instant, u64, u64)) -> Tick {
    let now = Instant::now();
    let (events, commands) = (
        live.journey_events.load(Ordering::Relaxed),
        live.commands.load(Ordering::Relaxed),
    );
    let secs = now.duration_since(previous.0).as_secs_f64().max(0.001);
    let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / secs;
    let t = Tick {
        at: format_millis(crate::model::now_millis()),
        journey_events_per_sec: rate(events, previous.1),
        commands_per_sec: rate(commands, previous.2),
        journey_events_total: events,
        commands_total: commands,
        funnels: {
            let all = live.merged();
            all.journeys
                .keys()
                .filter_map(|(j, v)| all.funnel(&live.order, j, *v))
                .collect()
        },
    };
    *previous = (now, events, commands);
    t
}

/// Server-sent events: a [`Tick`] every second.
async fn live_stream(
    State(live): Shared,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let start = (
        Instant::now(),
        live.journey_events.load(Ordering::Relaxed),
        live.commands.load(Ordering::Relaxed),
    );
    let stream =
        futures_util::stream::unfold((live, start, true), |(live, mut prev, first)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let t = tick(&live, &mut prev);
            let event = Event::default()
                .event("tick")
                .json_data(&t)
                .unwrap_or_else(|_| Event::default().comment("unserializable"));
            Some((Ok(event), (live, prev, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");
/// The API's description, served at `/api/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../schemas/analytics-openapi.yaml");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// The API, the live stream and the dashboard over `live`.
pub fn routes(live: Arc<Live>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route(
            "/api/openapi.yaml",
            get(|| async { asset("application/yaml", OPENAPI) }),
        )
        .route("/api/instance", get(instance))
        .route("/api/journeys", get(journeys))
        .route("/api/journeys/{journey}/funnel", get(funnel))
        .route(
            "/api/journeys/{journey}/steps/{step}/customers",
            get(customers_at),
        )
        .route("/api/customers/{customer}/timeline", get(timeline))
        .route("/api/experiments", get(experiments))
        .route("/api/experiments/{id}", get(experiment))
        .route("/api/live", get(live_stream))
        .with_state(live)
}
