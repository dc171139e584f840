//! Telemetry: JSON or text logs, Prometheus metrics, and the `/livez` `/readyz` `/metrics` server.
//!
//! Owns every metric name (the constants below, `waymark_<subsystem>_<what>_<unit|total>`),
//! their help texts and bounded label values (enums and topic/partition numbers, never a
//! customer id), and the HTTP endpoints. Other modules record through [`Metrics`]'s methods,
//! which are called once per batch, not per event, where that matters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
/// Customers with a pending timer, per partition.
pub const TIMERS_PENDING: &str = "waymark_runtime_timers_pending";
/// How far the partition's watermark is behind the wall clock, seconds.
pub const WATERMARK_LAG_SECONDS: &str = "waymark_runtime_watermark_lag_seconds";
/// Partitions currently assigned to this instance.
pub const PARTITIONS_ASSIGNED: &str = "waymark_pipeline_partitions_assigned";
/// Changelog records read while restoring partitions (progress: compare with the changelog's
/// end offsets).
pub const RESTORE_RECORDS_TOTAL: &str = "waymark_state_restore_records_total";
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
/// Outcomes read from `intervention-outcomes`, by result (as [`EVENTS_TOTAL`]).
pub const OUTCOMES_TOTAL: &str = "waymark_pipeline_outcomes_total";
/// Build information (value 1), by version.
pub const BUILD_INFO: &str = "waymark_build_info";

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
        }
    }
}

/// The processor's metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    commands: IntCounterVec,
    journey_events: IntCounterVec,
    transactions: IntCounterVec,
    commit_seconds: Histogram,
    timers_pending: IntGaugeVec,
    watermark_lag: IntGaugeVec,
    partitions: IntGauge,
    restore_records: prometheus::IntCounter,
    restoring: IntGauge,
    sink_deliveries: IntCounterVec,
    sink_retries: IntCounterVec,
    client_restarts: prometheus::IntCounter,
    outcomes: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definitions are static and valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let events = counter(
            EVENTS_TOTAL,
            "Events read from the input topic, by result.",
            &["result"],
        );
        let dead_letters = counter(
            DEAD_LETTERS_TOTAL,
            "Input records sent to the dead-letter topic, by reason.",
            &["reason"],
        );
        let commands = counter(
            COMMANDS_TOTAL,
            "Intervention commands emitted.",
            &["journey", "action", "channel"],
        );
        let journey_events = counter(
            JOURNEY_EVENTS_TOTAL,
            "Journey events emitted.",
            &["journey", "type"],
        );
        let transactions = counter(
            TRANSACTIONS_TOTAL,
            "Kafka transactions, by result.",
            &["result"],
        );
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                COMMIT_SECONDS,
                "Time to commit one transaction of outputs, offsets and state.",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("static buckets")),
        )
        .expect("static histogram");
        registry
            .register(Box::new(commit_seconds.clone()))
            .expect("unique");
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["partition"]).expect("static gauge");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let timers_pending = gauge(TIMERS_PENDING, "Customers with a pending timer.");
        let watermark_lag = gauge(
            WATERMARK_LAG_SECONDS,
            "Wall clock minus the partition's watermark, seconds.",
        );
        let partitions =
            IntGauge::new(PARTITIONS_ASSIGNED, "Partitions assigned to this instance.")
                .expect("static gauge");
        registry
            .register(Box::new(partitions.clone()))
            .expect("unique");
        let restore_records = prometheus::IntCounter::new(
            RESTORE_RECORDS_TOTAL,
            "Changelog records read while restoring partitions.",
        )
        .expect("static counter");
        registry
            .register(Box::new(restore_records.clone()))
            .expect("unique");
        let restoring = IntGauge::new(
            RESTORING_PARTITIONS,
            "Partitions being restored from the changelog.",
        )
        .expect("static gauge");
        registry
            .register(Box::new(restoring.clone()))
            .expect("unique");
        let sink_deliveries = counter(
            SINK_DELIVERIES_TOTAL,
            "Commands a channel sink handled, by result.",
            &["channel", "result"],
        );
        let sink_retries = counter(
            SINK_RETRIES_TOTAL,
            "Delivery attempts a channel sink retried.",
            &["channel"],
        );
        let outcomes = counter(
            OUTCOMES_TOTAL,
            "Outcomes of commands read from intervention-outcomes, by result.",
            &["result"],
        );
        let client_restarts = prometheus::IntCounter::new(
            CLIENT_RESTARTS_TOTAL,
            "Restarts with new Kafka clients after a fatal client error.",
        )
        .expect("static counter");
        registry
            .register(Box::new(client_restarts.clone()))
            .expect("unique");
        let build = IntGaugeVec::new(Opts::new(BUILD_INFO, "Build information."), &["version"])
            .expect("static gauge");
        registry.register(Box::new(build.clone())).expect("unique");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            registry,
            events,
            dead_letters,
            commands,
            journey_events,
            transactions,
            commit_seconds,
            timers_pending,
            watermark_lag,
            partitions,
            restore_records,
            restoring,
            sink_deliveries,
            sink_retries,
            client_restarts,
            outcomes,
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

    /// Counts a command a sink handled.
    pub fn sink_delivery(&self, channel: &str, result: &str) {
        self.sink_deliveries
            .with_label_values(&[channel, result])
            .inc();
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

    /// Counts input events.
    pub fn events(&self, result: EventResult, n: u64) {
        self.events.with_label_values(&[result.label()]).inc_by(n);
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

    /// Records a transaction's outcome and duration.
    pub fn transaction(&self, committed: bool, seconds: f64) {
        self.transactions
            .with_label_values(&[if committed { "committed" } else { "aborted" }])
            .inc();
        if committed {
            self.commit_seconds.observe(seconds);
        }
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
