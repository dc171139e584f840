//! `waymark sink <channel>`: turns the commands of one channel topic into deliveries.
//!
//! Owns the one runner every channel shares: consume the channel's command topic in the
//! sink's own consumer group, skip commands already handled (a durable log of command ids),
//! limit the delivery rate, retry transient failures with exponential backoff and jitter, send
//! permanent failures and exhausted retries to `<topic>.dlq` with headers that name the error,
//! the attempts and the source offset, and publish an [`InterventionOutcome`] for every
//! command to `intervention-outcomes`. It must not know how a channel delivers: that is a
//! [`Provider`] (`email` here).
//!
//! # Once, as far as a provider allows
//!
//! A command's id is written to the local log *after* the provider accepted it and *before*
//! the input offset is committed, so a crash anywhere but in the instant between the
//! provider's acceptance and that write never delivers twice; the provider also gets the
//! command id as an idempotency key (for email, the `Message-ID`) so the receiving side can
//! drop the rare repeat.

pub mod contact_center;
pub mod email;
pub mod sms;

/// What the HTTP-based providers (SMS, contact center) share: the client, and how an answer
/// becomes a delivery result.
pub mod http {
    use std::sync::Arc;
    use std::time::Duration;

    use super::DeliveryError;

    /// A blocking HTTP client with `timeout` per request and the system's TLS.
    pub fn agent(timeout: Duration) -> Result<ureq::Agent, native_tls::Error> {
        Ok(ureq::AgentBuilder::new()
            .timeout(timeout)
            .tls_connector(Arc::new(native_tls::TlsConnector::new()?))
            .build())
    }

    /// 2xx (and `409 Conflict` when `conflict_means_done`: the resource exists already)
    /// delivered; 429, 5xx and transport failures transient; other 4xx permanent. `who`
    /// names the far side in messages.
    pub fn outcome(
        response: Result<ureq::Response, ureq::Error>,
        who: &str,
        conflict_means_done: bool,
    ) -> Result<String, DeliveryError> {
        match response {
            Ok(r) => Ok(format!(
                "accepted: {} {}",
                r.status(),
                r.into_string().unwrap_or_default()
            )),
            Err(ureq::Error::Status(409, r)) if conflict_means_done => Ok(format!(
                "already there: 409 {}",
                r.into_string().unwrap_or_default()
            )),
            Err(ureq::Error::Status(code, r)) => {
                let message = format!(
                    "{who} answered {code}: {}",
                    r.into_string().unwrap_or_default()
                );
                if code == 429 || code >= 500 {
                    Err(DeliveryError::transient("provider_unavailable", message))
                } else {
                    Err(DeliveryError::permanent("rejected", message))
                }
            }
            Err(ureq::Error::Transport(t)) => Err(DeliveryError::transient(
                "unreachable",
                format!("cannot reach {who}: {t}"),
            )),
        }
    }
}

/// Message templates shared by the channels: one folder per template, an A/B variant `v` in
/// `<template>.v/` when it exists, files rendered by minijinja with the command.
pub mod templates {
    use std::path::{Path, PathBuf};

    use super::DeliveryError;
    use crate::model::InterventionCommand;

    /// The folder of a command's template (its `template`, else its action): `<name>.<variant>`
    /// when it exists, else `<name>`. `wants` names the files, for the error.
    pub fn dir_for(
        root: &Path,
        command: &InterventionCommand,
        wants: &str,
    ) -> Result<PathBuf, DeliveryError> {
        let name = command.template.as_deref().unwrap_or(&command.action);
        if let Some(variant) = &command.variant {
            let dir = root.join(format!("{name}.{variant}"));
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let dir = root.join(name);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DeliveryError::permanent(
                "no_template",
                format!(
                    "no template `{name}`: create {}/ with {wants}",
                    dir.display()
                ),
            ))
        }
    }

    /// Renders `dir/file` with the command (`params`, `attributes`, `customer_id`, `journey`,
    /// `action`, `variant`, `due_at`); `None` when the file does not exist. Printing an
    /// undefined value is an error; testing one (`{% if attributes.x %}`) is not.
    pub fn render(
        dir: &Path,
        file: &str,
        command: &InterventionCommand,
    ) -> Result<Option<String>, DeliveryError> {
        let path = dir.join(file);
        let Ok(source) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
        let ctx = minijinja::context! {
            customer_id => &command.customer_id,
            journey => &command.journey,
            action => &command.action,
            variant => &command.variant,
            due_at => crate::model::format_millis(command.due_at),
            params => &command.params,
            attributes => &command.attributes,
        };
        env.render_str(&source, &ctx).map(Some).map_err(|e| {
            DeliveryError::permanent("template_error", format!("{}: {e}", path.display()))
        })
    }
}

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backon::{BlockingRetryable, ExponentialBuilder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::config::Config;
use crate::kafka::{ToolContext, client_config, producer_config};
use crate::model::{Channel, InterventionCommand, InterventionOutcome, now_millis};
use crate::registry::Wire;
use crate::shutdown::CancellationToken;
use crate::state::{RocksEnv, RocksStore, StateBatch, StateError, StateStore};
use crate::telemetry::Metrics;

/// Headers on a sink's dead letters (beside the pipeline's `waymark.source.*` ones).
pub mod headers {
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "waymark.attempts";
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// A retry cannot help (a rejected address, a command the provider cannot express).
    pub permanent: bool,
    /// Short, bounded reason code for headers and metrics (`rejected`, `unreachable`, ...).
    pub code: &'static str,
    /// What happened and, where possible, what to do.
    pub message: String,
}

impl DeliveryError {
    /// A failure a retry may fix.
    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: false,
            code,
            message: message.into(),
        }
    }

    /// A failure no retry fixes.
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        DeliveryError {
            permanent: true,
            code,
            message: message.into(),
        }
    }
}

/// One channel's way of delivering a command: the seam between the runner and an email
/// server, an SMS API or a contact-center system.
pub trait Provider {
    /// The channel it serves.
    fn channel(&self) -> Channel;
    /// Delivers one command; `Ok` carries the provider's answer (for the outcome's detail).
    fn deliver(&self, command: &InterventionCommand) -> Result<String, DeliveryError>;
}

/// Why a sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A Kafka client call failed.
    #[error("kafka: {action}: {source}")]
    Kafka {
        /// What was attempted.
        action: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// A Kafka client reported a fatal error; `waymark sink` starts again with new clients.
    #[error("the Kafka {client} hit a fatal error: {reason}")]
    ClientFatal {
        /// Which client.
        client: &'static str,
        /// librdkafka's code and reason.
        reason: String,
    },
    /// An outcome could not be encoded (a bug: the model and schemas disagree).
    #[error("cannot encode an outcome: {0}")]
    Encode(String),
    /// The schema registry could not be asked (the sink starts again, from its last commit),
    /// or refused the outcome schema.
    #[error("schema registry: {message}")]
    Registry {
        /// What the registry client reported.
        message: String,
        /// The registry was unreachable (not a refusal): starting again may succeed.
        unavailable: bool,
    },
    /// The log of handled commands failed.
    #[error("sink state at {path}: {source}")]
    State {
        /// Its directory.
        path: PathBuf,
        /// The error.
        source: StateError,
    },
}

impl From<crate::codec::LookupError> for SinkError {
    fn from(e: crate::codec::LookupError) -> SinkError {
        SinkError::Registry {
            unavailable: matches!(e, crate::codec::LookupError::Unavailable(_)),
            message: e.to_string(),
        }
    }
}

/// How a sink frames what it reads and writes: commands in, outcomes out (bare Avro, or the
/// Confluent wire format with the schema registry, the outcome schema registered).
pub fn outcome_wire(cfg: &Config) -> Result<Wire, SinkError> {
    let registry = crate::registry::connect(cfg.schema_registry.as_ref()).map_err(|message| {
        SinkError::Registry {
            message,
            unavailable: false,
        }
    })?;
    let mut wire = Wire::new(registry);
    wire.register::<InterventionOutcome>(&cfg.topics.intervention_outcomes)?;
    Ok(wire)
}

impl crate::shutdown::Restartable for SinkError {
    fn restartable(&self) -> bool {
        matches!(
            self,
            SinkError::ClientFatal { .. }
                | SinkError::Registry {
                    unavailable: true,
                    ..
                }
        )
    }
}

/// What a sink did, reported when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Commands delivered.
    pub delivered: u64,
    /// Commands dead-lettered.
    pub failed: u64,
    /// Commands skipped because they were handled before.
    pub duplicates: u64,
}

/// The durable log of command ids a sink has handled (RocksDB, keyed by command id).
struct HandledLog {
    store: RocksStore,
    path: PathBuf,
}

impl HandledLog {
    fn status(&self, command_id: &str) -> Result<Option<String>, SinkError> {
        self.store
            .get_customer(command_id)
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .map_err(|source| SinkError::State {
                path: self.path.clone(),
                source,
            })
    }

    fn record(&mut self, command_id: &str, status: &str) -> Result<(), SinkError> {
        let mut batch = StateBatch::new();
        batch.put_customer(command_id, status.as_bytes().to_vec());
        self.store.write(batch).map_err(|source| SinkError::State {
            path: self.path.clone(),
            source,
        })
    }
}

struct Runner<'a, P> {
    cfg: &'a Config,
    wire: Wire,
    provider: &'a P,
    metrics: &'a Metrics,
    log: HandledLog,
    producer: ThreadedProducer<DefaultProducerContext>,
    next_slot: Instant,
    summary: SinkSummary,
}

impl<P: Provider> Runner<'_, P> {
    fn kafka(action: &'static str) -> impl Fn(KafkaError) -> SinkError {
        move |source| SinkError::Kafka { action, source }
    }

    /// Waits for the next delivery slot of the rate limit.
    fn pace(&mut self) {
        let now = Instant::now();
        if self.next_slot > now {
            std::thread::sleep(self.next_slot - now);
        }
        let gap = Duration::from_secs_f64(1.0 / self.cfg.sinks.rate_per_sec.max(0.001));
        self.next_slot = self.next_slot.max(now) + gap;
    }

    fn produce(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), SinkError> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| SinkError::Kafka {
                action: "produce",
                source: e,
            })
    }

    fn outcome(
        &self,
        command: &InterventionCommand,
        status: &str,
        detail: String,
    ) -> Result<(), SinkError> {
        let outcome = InterventionOutcome {
            outcome_id: crate::engine::stable_id(&[&command.command_id, status]),
            command_id: command.command_id.clone(),
            customer_id: command.customer_id.to_string(),
            journey: command.journey.to_string(),
            action: command.action.to_string(),
            channel: command.channel,
            status: status.to_owned(),
            at: now_millis(),
            detail: Some(detail),
        };
        let topic = &self.cfg.topics.intervention_outcomes;
        let bytes = self
            .wire
            .encode(topic, &outcome)
            .map_err(|e| SinkError::Encode(e.to_string()))?;
        self.produce(topic, command.customer_id.as_bytes(), &bytes, None)
    }

    fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        code: &str,
        message: &str,
        attempts: usize,
    ) -> Result<(), SinkError> {
        let h = crate::pipeline::source_headers(msg)
            .insert(Header {
                key: crate::pipeline::headers::ERROR_CODE,
                value: Some(code),
            })
            .insert(Header {
                key: crate::pipeline::headers::ERROR_MESSAGE,
                value: Some(message),
            })
            .insert(Header {
                key: headers::ATTEMPTS,
                value: Some(&attempts.to_string()),
            });
        let topic = self.cfg.topics.sink_dead_letters(self.provider.channel());
        self.produce(
            &topic,
            msg.key().unwrap_or_default(),
            msg.payload().unwrap_or_default(),
            Some(h),
        )
    }

    /// Handles one command record; the caller commits its offset afterwards.
    fn handle(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), SinkError> {
        let channel = self.provider.channel().as_str();
        let command = match self
            .wire
            .decode::<InterventionCommand>(msg.payload().unwrap_or_default())
        {
            Ok(c) => c,
            Err(e) if e.is_retryable() => {
                // The command may be fine: stop before its offset is stored; the sink starts
                // again from its last commit.
                return Err(SinkError::Registry {
                    message: e.to_string(),
                    unavailable: true,
                });
            }
            Err(e) => {
                tracing::warn!(offset = msg.offset(), error = %e, "Undecodable command dead-lettered.");
                self.metrics.sink_delivery(channel, "undecodable");
                self.summary.failed += 1;
                return self.dead_letter(msg, "undecodable", &format!("{}: {e}", e.kind()), 0);
            }
        };
        let _command = tracing::info_span!(
            "command",
            journey = %command.journey,
            action = %command.action
        )
        .entered();
        if let Some(status) = self.log.status(&command.command_id)? {
            tracing::info!(command_id = %command.command_id, %status, "Command handled before; skipped.");
            self.metrics.sink_delivery(channel, "duplicate");
            self.summary.duplicates += 1;
            return Ok(());
        }
        self.pace();
        let s = &self.cfg.sinks;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(s.retry_min_ms))
            .with_max_delay(Duration::from_millis(s.retry_max_ms))
            .with_max_times(s.max_attempts.saturating_sub(1))
            .with_jitter();
        let attempts = std::cell::Cell::new(0usize);
        let provider = self.provider;
        let result = (|| {
            attempts.set(attempts.get() + 1);
            let started = std::time::Instant::now();
            let delivered = provider.deliver(&command);
            self.metrics
                .sink_attempt(channel, started.elapsed().as_secs_f64());
            delivered
        })
        .retry(backoff)
        .sleep(std::thread::sleep)
        .when(|e: &DeliveryError| !e.permanent)
        .notify(|e: &DeliveryError, after: Duration| {
            self.metrics.sink_retry(channel);
            tracing::warn!(command_id = %command.command_id, error = %e, retry_in_ms = after.as_millis() as u64, "Delivery failed; retrying.");
        })
        .call();
        match result {
            Ok(detail) => {
                self.log.record(&command.command_id, "delivered")?;
                tracing::info!(command_id = %command.command_id, customer_id = %command.customer_id, "Delivered.");
                self.metrics.sink_delivery(channel, "delivered");
                self.summary.delivered += 1;
                self.outcome(&command, "delivered", detail)
            }
            Err(e) => {
                let code = if e.permanent {
                    e.code
                } else {
                    "retries_exhausted"
                };
                self.log.record(&command.command_id, "failed")?;
                tracing::warn!(command_id = %command.command_id, error = %e, attempts = attempts.get(), code, "Delivery failed; dead-lettered.");
                self.metrics.sink_delivery(channel, code);
                self.summary.failed += 1;
                self.dead_letter(msg, code, &e.message, attempts.get())?;
                let status = if e.permanent { "bounced" } else { "failed" };
                self.outcome(&command, status, e.message)
            }
        }
    }
}

/// Runs a sink until `shutdown` is cancelled (then finishes the current command, commits and
/// returns) or a fatal error. Blocks the calling thread.
pub fn run<P: Provider>(
    cfg: &Config,
    provider: &P,
    rocks: &RocksEnv,
    metrics: &Metrics,
    health: &crate::telemetry::Health,
    shutdown: CancellationToken,
) -> Result<SinkSummary, SinkError> {
    let channel = provider.channel();
    let _sink = tracing::info_span!("sink", channel = channel.as_str()).entered();
    let topic = cfg.topics.commands(channel).to_owned();
    let path = cfg.sinks.state_dir.join(channel.as_str());
    let store = rocks.open(&path).map_err(|source| SinkError::State {
        path: path.clone(),
        source,
    })?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config(&cfg.kafka.brokers, &cfg.kafka.properties)
            .create()
            .map_err(Runner::<P>::kafka("create producer"))?;
    let consumer: BaseConsumer<ToolContext> =
        client_config(&cfg.kafka.brokers, &cfg.kafka.properties)
            .set(
                "group.id",
                format!("{}-{}", cfg.sinks.group_prefix, channel.as_str()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create_with_context(ToolContext)
            .map_err(Runner::<P>::kafka("create consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(Runner::<P>::kafka("subscribe"))?;
    let mut runner = Runner {
        wire: outcome_wire(cfg)?,
        cfg,
        provider,
        metrics,
        log: HandledLog { store, path },
        producer,
        next_slot: Instant::now(),
        summary: SinkSummary::default(),
    };
    health
        .live
        .store(true, std::sync::atomic::Ordering::Relaxed);
    health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%topic, channel = channel.as_str(), "Sink consuming.");
    let mut uncommitted = 0usize;
    let mut last_commit = Instant::now();
    let commit_interval = Duration::from_millis(cfg.sinks.commit_interval_ms);
    loop {
        let stopping = shutdown.is_cancelled();
        if uncommitted > 0 && (stopping || last_commit.elapsed() >= commit_interval) {
            // What the commands produced (outcomes, dead letters) is acknowledged before
            // their offsets move on: nothing is lost. A crash before this commit redelivers
            // them, and the handled-command log skips them.
            crate::kafka::flush_threaded(&runner.producer, Duration::from_secs(30))
                .map_err(Runner::<P>::kafka("flush outcomes"))?;
            consumer
                .commit_consumer_state(CommitMode::Sync)
                .map_err(Runner::<P>::kafka("commit offsets"))?;
            uncommitted = 0;
            last_commit = Instant::now();
        }
        if stopping {
            break;
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match polled {
            Ok(m) => m,
            Err(e) => {
                if let Some(reason) = crate::kafka::fatal_error(consumer.client()) {
                    return Err(SinkError::ClientFatal {
                        client: "consumer",
                        reason,
                    });
                }
                tracing::warn!(error = %e, "Consumer error.");
                continue;
            }
        };
        runner.handle(&msg)?;
        consumer
            .store_offset_from_message(&msg)
            .map_err(Runner::<P>::kafka("store offset"))?;
        uncommitted += 1;
    }
    health
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let summary = runner.summary;
    tracing::info!(
        delivered = summary.delivered,
        failed = summary.failed,
        duplicates = summary.duplicates,
        "Sink stopped after committing."
    );
    Ok(summary)
}
