//! Configuration of `waymark run`: a YAML file, overridden by `WAYMARK_*` environment variables,
//! overridden by command-line flags.
//!
//! Owns every setting's name, meaning, unit and default (the `const fn`s below), and validation
//! at start-up with errors that name the file, line and field. Must not open connections or
//! files other than the config file itself. `deploy/waymark.example.yaml` shows every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::state::RocksOptions;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Malformed YAML, an unknown key or a wrongly typed value.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What the parser said.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{source_name}: {field}: {message}")]
    Invalid {
        /// Where the value came from (file, flag or environment variable).
        source_name: String,
        /// The key, e.g. `kafka.brokers`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

const fn default_commit_interval_ms() -> u64 {
    100
}
const fn default_backlog_commit_interval_ms() -> u64 {
    1000
}
const fn default_allowed_lateness_secs() -> u64 {
    300
}
/// 30 days.
pub const DEFAULT_RETENTION_SECS: u64 = 30 * 86_400;
const fn default_retention_secs() -> u64 {
    DEFAULT_RETENTION_SECS
}
const fn default_max_future_skew_secs() -> u64 {
    86_400
}
const fn default_cache_capacity() -> usize {
    50_000
}
const fn default_max_batch_events() -> usize {
    10_000
}
const fn default_read_ahead_records() -> usize {
    256
}
const fn default_journeys_watch_secs() -> u64 {
    10
}
const fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_group_id() -> String {
    "waymark".into()
}
fn default_transactional_id() -> String {
    "waymark-processor".into()
}
fn default_true() -> bool {
    true
}

fn default_journeys() -> PathBuf {
    "deploy/journeys".into()
}
fn default_state_dir() -> PathBuf {
    ".waymark/state".into()
}
fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

pub use crate::codec::InputFormat;

/// What `waymark run` guarantees about its outputs (config `processing-guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessingGuarantee {
    /// Outputs, changelog and input offsets commit in one Kafka transaction: `read_committed`
    /// readers see every command exactly once, even across crashes.
    #[default]
    ExactlyOnce,
    /// No transactions: outputs are flushed, then offsets committed. After a crash the last
    /// batch is processed again and its outputs repeat (with the same ids, so sinks drop
    /// them). Faster; for deployments whose sinks all de-duplicate.
    AtLeastOnce,
}

/// Kafka connection and client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    /// Flag `--brokers`, environment `WAYMARK_BROKERS`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group of the processors; instances with the same group share partitions.
    /// Default `waymark`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Transactional id of this instance's producer. Must be unique per running instance and
    /// stable across its restarts (e.g. the pod name). Default `waymark-processor`.
    #[serde(default = "default_transactional_id")]
    pub transactional_id: String,
    /// Static group membership (`group.instance.id`): a stable name per instance (e.g. the
    /// pod name). A restarted instance with the same name takes its partitions back at once,
    /// without a rebalance and without waiting for the session timeout. Default: none
    /// (dynamic membership). Flag `--group-instance-id`, env `WAYMARK_GROUP_INSTANCE_ID`.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Extra librdkafka properties for every client (e.g. `security.protocol: SSL`); they
    /// override Waymark's producer defaults (`kafka::PRODUCER_DEFAULTS`, e.g. `linger.ms`)
    /// and its input consumer's (`kafka::CONSUMER_DEFAULTS`, e.g. `fetch.wait.max.ms`), but
    /// not what exactly-once needs (`kafka::PRODUCER_FIXED`, refused).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            group_id: default_group_id(),
            transactional_id: default_transactional_id(),
            group_instance_id: None,
            properties: BTreeMap::new(),
        }
    }
}

/// Topic names of the data contract.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TopicsConfig {
    /// Input: what customers did. Default `customer-events`.
    pub customer_events: String,
    /// Output: journey events for analytics and audit. Default `journey-events`.
    pub journey_events: String,
    /// Output: commands for the email sink. Default `commands.email`.
    pub commands_email: String,
    /// Output: commands for the SMS sink. Default `commands.sms`.
    pub commands_sms: String,
    /// Output: commands for the contact-center sink. Default `commands.contact-center`.
    pub commands_contact_center: String,
    /// Dead letters: input records that could not be used, with error headers.
    /// Default `customer-events.dlq`.
    pub dead_letters: String,
    /// Copies of events that arrived later than the allowed lateness. Default
    /// `customer-events.late`.
    pub late_events: String,
    /// Compacted changelog of every partition's state, written in the same transaction as the
    /// outputs; a partition without up-to-date local state is restored from it. Needs as many
    /// partitions as `customer-events` and `cleanup.policy=compact`. Default
    /// `waymark.state-changelog`.
    pub state_changelog: String,
    /// What the channel sinks report back (delivered, failed, ...). Default
    /// `intervention-outcomes`.
    pub intervention_outcomes: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            customer_events: "customer-events".into(),
            journey_events: "journey-events".into(),
            commands_email: "commands.email".into(),
            commands_sms: "commands.sms".into(),
            commands_contact_center: "commands.contact-center".into(),
            dead_letters: "customer-events.dlq".into(),
            late_events: "customer-events.late".into(),
            state_changelog: "waymark.state-changelog".into(),
            intervention_outcomes: "intervention-outcomes".into(),
        }
    }
}

impl TopicsConfig {
    /// The command topic of a channel.
    pub fn commands(&self, channel: crate::model::Channel) -> &str {
        match channel {
            crate::model::Channel::Email => &self.commands_email,
            crate::model::Channel::Sms => &self.commands_sms,
            crate::model::Channel::ContactCenter => &self.commands_contact_center,
        }
    }

    /// The dead-letter topic of a channel sink: its command topic + `.dlq`.
    pub fn sink_dead_letters(&self, channel: crate::model::Channel) -> String {
        format!("{}.dlq", self.commands(channel))
    }

    /// Every output topic of the processor.
    pub fn outputs(&self) -> [&str; 6] {
        [
            &self.journey_events,
            &self.commands_email,
            &self.commands_sms,
            &self.commands_contact_center,
            &self.dead_letters,
            &self.late_events,
        ]
    }
}

/// Everything `waymark run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Kafka connection.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Encoding of `customer-events` values. Default `avro`.
    #[serde(default)]
    pub input_format: InputFormat,
    /// Upstream events that are not `CustomerEvent`s: JSON pointers to their customer id,
    /// type, time, id and attributes (see `codec::InputMapping`). With `input-format: json`
    /// the values are JSON; with `input-format: avro` they are Avro in the Confluent wire
    /// format, read with their writer schema from `schema-registry`.
    #[serde(default)]
    pub input_mapping: Option<crate::codec::InputMapping>,
    /// A Confluent-compatible schema registry (`url`, `timeout-secs`, `retry-secs`). When set,
    /// Avro values on every topic are in the Confluent wire format: input values are read with
    /// the writer schema their id names, and Waymark registers the schemas of what it writes
    /// (commands, journey events, outcomes) under `<topic>-value`. Default: none (bare Avro
    /// datums).
    #[serde(default)]
    pub schema_registry: Option<crate::registry::RegistryConfig>,
    /// `exactly-once` (default) or `at-least-once`. Flag `--processing-guarantee`,
    /// environment `WAYMARK_PROCESSING_GUARANTEE`.
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Read what the channel sinks report (`topics.intervention-outcomes`, which must have as
    /// many partitions as `customer-events`, keyed by customer id) and record it on the
    /// customers as `intervention.<status>` events. Default `true`.
    #[serde(default = "default_true")]
    pub read_outcomes: bool,
    /// Journey definitions: a file or a directory of `*.yaml`. Default `deploy/journeys`.
    /// Flag `--journeys`, environment `WAYMARK_JOURNEYS`.
    #[serde(default = "default_journeys")]
    pub journeys: PathBuf,
    /// How often `waymark run` looks for changed journey files and reloads them (a new
    /// version loads without a restart; see `POST /admin/journeys/reload`), in seconds; 0
    /// turns the watch off. Default 10.
    #[serde(default = "default_journeys_watch_secs")]
    pub journeys_watch_secs: u64,
    /// Customer protection checked before every command, across journeys (suppression list,
    /// frequency caps): a file like `deploy/examples/protections.yaml`. Default: none.
    /// `waymark simulate --protections` must be given the same file.
    #[serde(default)]
    pub protections: Option<PathBuf>,
    /// Local state (RocksDB, one database per partition). Default `.waymark/state`.
    /// Flag `--state-dir`, environment `WAYMARK_STATE_DIR`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Address of `/livez`, `/readyz` and `/metrics`. Default `127.0.0.1:9464`.
    /// Flag `--http-addr`, environment `WAYMARK_HTTP_ADDR`.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// How far behind the newest event time an event may arrive and still count as on time,
    /// in seconds. Timers fire only once the watermark (newest event time minus this) passes
    /// them. Default 300 (5 minutes).
    #[serde(default = "default_allowed_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// Events whose time is more than this many seconds ahead of the wall clock are refused
    /// (dead-lettered) rather than allowed to push the watermark ahead. Default 86400 (1 day).
    #[serde(default = "default_max_future_skew_secs")]
    pub max_future_skew_secs: u64,
    /// How long a customer's journey instances are kept after the last one ended, in seconds
    /// of event time. Then they are compacted away — locally and, through a smaller record or
    /// a tombstone, in the compacted changelog — keeping only how many there were, so new
    /// instances get new ids and `re-entry: never` still holds. History-reading predicates
    /// (`nth`, `among-earlier`) no longer see compacted events. `0` keeps everything.
    /// Default 2592000 (30 days). `waymark simulate --retention` must match it.
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// How often outputs, state and input offsets are committed together, in milliseconds,
    /// counted from the end of the previous commit (so a live event waits up to about this
    /// plus two commits; `waymark_pipeline_commit_duration_seconds` says how long they take).
    /// Default 100.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How often to commit instead while the processor is behind: when a commit is due and
    /// more events are waiting in the assigned partitions than the open batch holds, the batch
    /// stays open up to this long (in milliseconds) or `max-batch-events`. Each commit costs
    /// about as much as a hundred milliseconds of processing, so larger transactions work a
    /// backlog off faster, and its events were waiting anyway. Once the processor keeps up,
    /// `commit-interval-ms` applies again. Set it equal to `commit-interval-ms` to always
    /// commit that often. Default 1000.
    #[serde(default = "default_backlog_commit_interval_ms")]
    pub backlog_commit_interval_ms: u64,
    /// Upper bound of events processed between two commits, and of customers whose timers
    /// fire on the wall clock in one commit (when more are due at once, the commits that
    /// follow fire the rest). Larger batches work a backlog off in fewer transactions and keep
    /// more changed customers decoded in memory until their state is written. Default 10000.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Records taken from the consumer at once, at most, when more are already fetched: the
    /// customers they will need that are not cached (those of all but the first record, and
    /// those whose wake-up the take is expected to reach) are read from RocksDB and decoded
    /// on a second thread while the records before them are handled (`waymark run` only). A
    /// customer read ahead is used only if nothing could have changed it since
    /// (`waymark_state_read_ahead_total` counts both). `0` or `1`: one record at a time, no
    /// second thread. Default 256.
    #[serde(default = "default_read_ahead_records")]
    pub read_ahead_records: usize,
    /// Customers kept decoded in memory per partition (write-back cache), in entries; the
    /// others are read from RocksDB when their next event or timer comes. A decoded customer
    /// of the reference journey takes about 2 KiB, so 4 partitions at the default hold about
    /// 400 MiB. Default 50000.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    /// How long SIGTERM may take to drain and commit before the process gives up, in
    /// seconds. Default 30.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// RocksDB tuning.
    #[serde(default)]
    pub rocksdb: RocksOptions,
    /// The channel sinks (`waymark sink <channel>`).
    #[serde(default)]
    pub sinks: SinksConfig,
    /// The analytics view (`waymark analytics serve`).
    #[serde(default)]
    pub analytics: AnalyticsConfig,
}

/// Settings of the analytics view (`waymark analytics serve`): the live funnel, drill-down,
/// API and dashboard, materialized from `journey-events`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AnalyticsConfig {
    /// Consumer group of the view's instances (they share `journey-events`' partitions).
    /// Default `waymark-analytics`.
    pub group_id: String,
    /// The view's RocksDB (progress, drill-down index, aggregates and offsets). A cache of
    /// `journey-events`: deleted, it is rebuilt from the topic. Default `.waymark/analytics`.
    pub state_dir: PathBuf,
    /// Address of the API, the dashboard, `/livez`, `/readyz` and `/metrics`.
    /// Default `127.0.0.1:9466`.
    pub http_addr: SocketAddr,
    /// How often what was read is written to the view's database (and becomes visible in
    /// the API), in milliseconds. Default 500.
    pub commit_interval_ms: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            group_id: "waymark-analytics".into(),
            state_dir: ".waymark/analytics".into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9466)),
            commit_interval_ms: 500,
        }
    }
}

/// Settings of the channel sinks (`waymark sink email|...`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SinksConfig {
    /// Consumer groups are `<group-prefix>-<channel>`. Default `waymark-sink`.
    pub group_prefix: String,
    /// Where each sink keeps the ids of commands it handled (`<state-dir>/<channel>`), so a
    /// command redelivered after a crash is not sent again. Default `.waymark/sinks`.
    pub state_dir: PathBuf,
    /// Address of the sink's `/livez`, `/readyz` and `/metrics`. Default `127.0.0.1:9465`.
    pub http_addr: SocketAddr,
    /// Deliveries per second at most, per sink. Default 50.
    pub rate_per_sec: f64,
    /// Attempts per command before it goes to the sink's dead-letter topic. Default 5.
    pub max_attempts: usize,
    /// First retry delay in milliseconds; doubled per attempt, with jitter. Default 200.
    pub retry_min_ms: u64,
    /// Longest retry delay in milliseconds. Default 10000.
    pub retry_max_ms: u64,
    /// How often the offsets of handled commands are committed, in milliseconds. A crash
    /// redelivers what was handled since; the log of handled ids skips it. Default 500.
    pub commit_interval_ms: u64,
    /// The email sink.
    pub email: EmailConfig,
    /// The SMS sink.
    pub sms: SmsConfig,
    /// The contact-center sink.
    pub contact_center: ContactCenterConfig,
}

/// The contact-center sink: tasks created over an HTTP/webhook JSON API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContactCenterConfig {
    /// Where tasks are POSTed (JSON). Default `http://127.0.0.1:8026/tasks`.
    pub url: String,
    /// Bearer token, if the API wants one; better given as `WAYMARK_CONTACT_CENTER_TOKEN`.
    pub token: Option<String>,
    /// Timeout per request, in seconds. Default 15.
    pub timeout_secs: u64,
}

impl Default for ContactCenterConfig {
    fn default() -> Self {
        ContactCenterConfig {
            url: "http://127.0.0.1:8026/tasks".into(),
            token: None,
            timeout_secs: 15,
        }
    }
}

/// The SMS sink: an HTTP provider API shaped like Twilio's Messages API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SmsConfig {
    /// Base URL of the provider. Messages are POSTed to
    /// `<base-url>/2010-04-01/Accounts/<account-sid>/Messages.json`. Default
    /// `https://api.twilio.com`.
    pub base_url: String,
    /// Account id (HTTP basic auth user).
    pub account_sid: String,
    /// Auth token (HTTP basic auth password); better given as `WAYMARK_SMS_AUTH_TOKEN`.
    pub auth_token: Option<String>,
    /// Sender number, E.164 (e.g. `+15005550006`).
    pub from: String,
    /// Directory of templates: `<template>/body.txt`; an A/B variant `v` uses `<template>.v/`.
    /// Default `deploy/templates/sms`.
    pub templates: PathBuf,
    /// Timeout per request, in seconds. Default 15.
    pub timeout_secs: u64,
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: None,
            from: String::new(),
            templates: "deploy/templates/sms".into(),
            timeout_secs: 15,
        }
    }
}

impl Default for SinksConfig {
    fn default() -> Self {
        SinksConfig {
            group_prefix: "waymark-sink".into(),
            state_dir: ".waymark/sinks".into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9465)),
            rate_per_sec: 50.0,
            max_attempts: 5,
            retry_min_ms: 200,
            retry_max_ms: 10_000,
            commit_interval_ms: 500,
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            contact_center: ContactCenterConfig::default(),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on loopback or inside the cluster).
    #[default]
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The email sink: SMTP server, sender and templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EmailConfig {
    /// SMTP server host. Default `127.0.0.1`.
    pub smtp_host: String,
    /// SMTP server port. Default 25.
    pub smtp_port: u16,
    /// `none` (default), `starttls` or `tls`.
    pub tls: SmtpTls,
    /// SMTP user, if the server wants authentication.
    pub username: Option<String>,
    /// Its password; better given as `WAYMARK_SMTP_PASSWORD`.
    pub password: Option<String>,
    /// Sender. Default `Waymark <noreply@example.com>`.
    pub from: String,
    /// Directory of templates: `<template>/subject.txt`, `body.txt` and optionally
    /// `body.html`; an A/B variant `v` uses `<template>.v/` when present. Default
    /// `deploy/templates/email`.
    pub templates: PathBuf,
    /// SMTP timeout per attempt, in seconds. Default 30.
    pub timeout_secs: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        EmailConfig {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 25,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "Waymark <noreply@example.com>".into(),
            templates: "deploy/templates/email".into(),
            timeout_secs: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            topics: TopicsConfig::default(),
            input_format: InputFormat::default(),
            input_mapping: None,
            schema_registry: None,
            processing_guarantee: ProcessingGuarantee::default(),
            read_outcomes: true,
            journeys: default_journeys(),
            protections: None,
            state_dir: default_state_dir(),
            http_addr: default_http_addr(),
            allowed_lateness_secs: default_allowed_lateness_secs(),
            max_future_skew_secs: default_max_future_skew_secs(),
            retention_secs: default_retention_secs(),
            commit_interval_ms: default_commit_interval_ms(),
            backlog_commit_interval_ms: default_backlog_commit_interval_ms(),
            max_batch_events: default_max_batch_events(),
            read_ahead_records: default_read_ahead_records(),
            cache_capacity: default_cache_capacity(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            journeys_watch_secs: default_journeys_watch_secs(),
            sinks: SinksConfig::default(),
            analytics: AnalyticsConfig::default(),
            rocksdb: RocksOptions::default(),
        }
    }
}

/// Values given on the command line or in `WAYMARK_*` variables (flags win over variables;
/// clap resolves that), applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--brokers` / `WAYMARK_BROKERS`.
    pub brokers: Option<String>,
    /// `--journeys` / `WAYMARK_JOURNEYS`.
    pub journeys: Option<PathBuf>,
    /// `--state-dir` / `WAYMARK_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--http-addr` / `WAYMARK_HTTP_ADDR`.
    pub http_addr: Option<SocketAddr>,
    /// `--group-id` / `WAYMARK_GROUP_ID`.
    pub group_id: Option<String>,
    /// `--transactional-id` / `WAYMARK_TRANSACTIONAL_ID`.
    pub transactional_id: Option<String>,
    /// `--group-instance-id` / `WAYMARK_GROUP_INSTANCE_ID`.
    pub group_instance_id: Option<String>,
    /// `--input-format` / `WAYMARK_INPUT_FORMAT`.
    pub input_format: Option<InputFormat>,
    /// `--processing-guarantee` / `WAYMARK_PROCESSING_GUARANTEE`.
    pub processing_guarantee: Option<ProcessingGuarantee>,
}

impl Config {
    /// Parses a config file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column, message) = crate::journey::yaml_error_parts(&e);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }

    /// Loads the file (or defaults when `None`), applies overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (mut cfg, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_owned(),
                    source,
                })?;
                (Config::parse(p, &text)?, p.display().to_string())
            }
            None => (Config::default(), "defaults".to_owned()),
        };
        if let Some(v) = &overrides.brokers {
            cfg.kafka.brokers = v.clone();
        }
        if let Some(v) = &overrides.journeys {
            cfg.journeys = v.clone();
        }
        if let Some(v) = &overrides.state_dir {
            cfg.state_dir = v.clone();
        }
        if let Some(v) = overrides.http_addr {
            cfg.http_addr = v;
        }
        if let Some(v) = &overrides.group_id {
            cfg.kafka.group_id = v.clone();
        }
        if let Some(v) = &overrides.transactional_id {
            cfg.kafka.transactional_id = v.clone();
        }
        if let Some(v) = &overrides.group_instance_id {
            cfg.kafka.group_instance_id = Some(v.clone());
        }
        if let Some(v) = overrides.processing_guarantee {
            cfg.processing_guarantee = v;
        }
        if let Some(v) = overrides.input_format {
            cfg.input_format = v;
        }
        cfg.validate(&source)?;
        Ok(cfg)
    }

    fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            source_name: source.to_owned(),
            field: field.to_owned(),
            message: message.to_owned(),
        };
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid(
                "kafka.brokers",
                "no bootstrap servers; set e.g. `127.0.0.1:9092` (or --brokers / WAYMARK_BROKERS)",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group-id", "must not be empty"));
        }
        if self.kafka.transactional_id.trim().is_empty() {
            return Err(invalid(
                "kafka.transactional-id",
                "must not be empty; use a name unique per instance, e.g. the pod name",
            ));
        }
        if self.commit_interval_ms == 0 {
            return Err(invalid("commit-interval-ms", "must be at least 1"));
        }
        if self.backlog_commit_interval_ms < self.commit_interval_ms {
            return Err(invalid(
                "backlog-commit-interval-ms",
                &format!(
                    "is {} ms, less than commit-interval-ms ({} ms); set it to at least that",
                    self.backlog_commit_interval_ms, self.commit_interval_ms
                ),
            ));
        }
        if let Some(r) = &self.schema_registry {
            r.validate().map_err(|e| invalid("schema-registry", &e))?;
        }
        if let Some(m) = &self.input_mapping {
            if self.input_format == InputFormat::Avro && self.schema_registry.is_none() {
                return Err(invalid(
                    "input-mapping",
                    "maps JSON values (`input-format: json`), or Avro values written with a \
                     schema registry's serializer (set `schema-registry.url` too)",
                ));
            }
            m.validate().map_err(|e| invalid("input-mapping", &e))?;
        }
        if self.max_batch_events == 0 {
            return Err(invalid("max-batch-events", "must be at least 1"));
        }
        if self.cache_capacity == 0 {
            return Err(invalid("cache-capacity", "must be at least 1"));
        }
        if self.analytics.commit_interval_ms == 0 {
            return Err(invalid(
                "analytics.commit-interval-ms",
                "must be at least 1",
            ));
        }
        if self.analytics.group_id.trim().is_empty() {
            return Err(invalid("analytics.group-id", "must not be empty"));
        }
        if self.analytics.group_id == self.kafka.group_id {
            return Err(invalid(
                "analytics.group-id",
                "must differ from kafka.group-id: the view reads journey-events in a consumer group of its own",
            ));
        }
        let topics = &self.topics;
        let all = [
            ("topics.customer-events", &topics.customer_events),
            ("topics.journey-events", &topics.journey_events),
            ("topics.commands-email", &topics.commands_email),
            ("topics.commands-sms", &topics.commands_sms),
            (
                "topics.commands-contact-center",
                &topics.commands_contact_center,
            ),
            ("topics.dead-letters", &topics.dead_letters),
            ("topics.late-events", &topics.late_events),
            ("topics.state-changelog", &topics.state_changelog),
            (
                "topics.intervention-outcomes",
                &topics.intervention_outcomes,
            ),
        ];
        for (field, name) in all {
            if name.trim().is_empty() {
                return Err(invalid(field, "topic name must not be empty"));
            }
        }
        for (i, (fa, a)) in all.iter().enumerate() {
            if let Some((fb, _)) = all[i + 1..].iter().find(|(_, b)| b == a) {
                return Err(invalid(
                    fa,
                    &format!(
                        "topic `{a}` is also configured as {fb}; every topic must be distinct"
                    ),
                ));
            }
        }
        for key in self.kafka.properties.keys() {
            if matches!(
                key.as_str(),
                "bootstrap.servers"
                    | "group.id"
                    | "group.instance.id"
                    | "transactional.id"
                    | "enable.auto.commit"
                    | "isolation.level"
            ) {
                return Err(invalid(
                    &format!("kafka.properties.{key}"),
                    "is set by Waymark itself; use the dedicated key (kafka.brokers, kafka.group-id, kafka.transactional-id) or remove it",
                ));
            }
            if let Some((_, value)) = crate::kafka::PRODUCER_FIXED
                .iter()
                .find(|(fixed, _)| fixed == key)
            {
                return Err(invalid(
                    &format!("kafka.properties.{key}"),
                    &format!(
                        "is {value} for every Waymark producer (exactly-once and the partitioning of customers depend on it); remove it"
                    ),
                ));
            }
        }
        self.rocksdb
            .validate()
            .map_err(|e| invalid("rocksdb", &e.to_string()))?;
        Ok(())
    }

    /// Retention in milliseconds (`None`: keep forever).
    pub fn retention_ms(&self) -> Option<i64> {
        (self.retention_secs > 0).then(|| (self.retention_secs as i64).saturating_mul(1000))
    }

    /// Allowed lateness in milliseconds.
    pub fn allowed_lateness_ms(&self) -> i64 {
        (self.allowed_lateness_secs as i64).saturating_mul(1000)
    }

    /// Maximum future skew in milliseconds.
    pub fn max_future_skew_ms(&self) -> i64 {
        (self.max_future_skew_secs as i64).saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Config::load` of a file holding `text`, with no overrides.
    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn example_config_in_deploy_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/waymark.example.yaml");
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.topics.customer_events, "customer-events");
        assert_eq!(cfg.allowed_lateness_ms(), 300_000);
        assert_eq!(cfg.analytics.group_id, "waymark-analytics");
    }

    /// The file every Kubernetes pod mounts must load with this binary: an unknown key would
    /// stop the processor and every sink at start-up.
    #[test]
    fn kubernetes_config_in_deploy_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/config/waymark.yaml");
        let cfg = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(cfg.state_dir, Path::new("/var/lib/waymark/state"));
        assert_eq!(cfg.analytics.http_addr.port(), 9466);
    }

    #[test]
    fn the_backlog_commit_interval_is_at_least_the_commit_interval() {
        let cfg = load_text("commit-interval-ms: 200\n").unwrap();
        assert_eq!(cfg.backlog_commit_interval_ms, 1000, "the default");
        let e = load_text("commit-interval-ms: 200\nbacklog-commit-interval-ms: 150\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backlog-commit-interval-ms")
                && e.contains("150 ms")
                && e.contains("200 ms"),
            "{e}"
        );
        // Equal turns the longer interval off.
        assert!(load_text("commit-interval-ms: 200\nbacklog-commit-interval-ms: 200\n").is_ok());
    }

    #[test]
    fn kafka_properties_tune_the_input_consumer_over_its_defaults() {
        let defaults = crate::kafka::consumer_config("127.0.0.1:9092", &BTreeMap::new());
        for (key, value) in crate::kafka::CONSUMER_DEFAULTS {
            assert_eq!(defaults.get(key), Some(value), "{key}");
        }
        let cfg = load_text("kafka:\n  properties: { fetch.wait.max.ms: \"5\" }\n").unwrap();
        let consumer = crate::kafka::consumer_config("127.0.0.1:9092", &cfg.kafka.properties);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("5"));
        assert_eq!(consumer.get("fetch.min.bytes"), Some("65536"), "a default");
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn kafka_properties_tune_producers_but_cannot_change_what_exactly_once_needs() {
        let cfg =
            load_text("kafka:\n  properties: { linger.ms: \"50\", compression.type: zstd }\n")
                .unwrap();
        let producer = crate::kafka::producer_config("127.0.0.1:9092", &cfg.kafka.properties);
        assert_eq!(producer.get("linger.ms"), Some("50"));
        assert_eq!(producer.get("compression.type"), Some("zstd"));
        assert_eq!(
            producer.get("message.timeout.ms"),
            Some("60000"),
            "a default"
        );
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        for key in ["enable.idempotence", "acks", "partitioner"] {
            let e = load_text(&format!("kafka:\n  properties: {{ {key}: x }}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("kafka.properties.{key}")) && e.contains("remove it"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_analytics_group_must_differ_from_the_processors() {
        let e = load_text("kafka:\n  group-id: same\nanalytics:\n  group-id: same\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("analytics.group-id") && e.contains("kafka.group-id"),
            "{e}"
        );
    }

    #[test]
    fn an_input_mapping_needs_json_input_and_valid_pointers() {
        let mapping = "input-mapping:\n  customer-id: /a\n  fixed-type: t\n  occurred-at: /ts\n";
        let e = load_text(mapping).unwrap_err().to_string();
        assert!(
            e.contains("input-format: json") && e.contains("schema-registry.url"),
            "{e}"
        );
        // Avro values through a schema registry.
        let registry = "schema-registry:\n  url: http://registry:8081\n";
        let cfg = load_text(&format!("{registry}{mapping}")).unwrap();
        assert_eq!(cfg.schema_registry.unwrap().retry_secs, 30);
        // JSON input with framed outputs.
        let cfg = load_text(&format!("input-format: json\n{registry}")).unwrap();
        assert!(cfg.schema_registry.is_some());
        let e = load_text("schema-registry:\n  url: registry:8081\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema-registry.url"), "{e}");
        let cfg = load_text(&format!("input-format: json\n{mapping}")).unwrap();
        assert_eq!(cfg.input_mapping.unwrap().fixed_type.as_deref(), Some("t"));
        let e = load_text(&format!(
            "input-format: json\n{}",
            mapping.replace("/ts", "ts")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("input-mapping.occurred-at") && e.contains("JSON pointer"),
            "{e}"
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(
            &path,
            "kafka:\n  brokers: file:9092\nstate-dir: /from/file\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            &Overrides {
                brokers: Some("flag:9092".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "flag:9092");
        assert_eq!(cfg.state_dir, PathBuf::from("/from/file"));
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let msg = Config::parse(
            Path::new("w.yaml"),
            "kafka:\n  brokers: a:1\n  bootstrap: b\n",
        )
        .unwrap_err()
        .to_string();
        assert!(msg.starts_with("w.yaml:3:"), "{msg}");
        assert!(msg.contains("bootstrap"), "{msg}");
    }

    #[test]
    fn conflicting_topics_name_both_keys() {
        let msg = load_text("topics:\n  customer-events: x\n  journey-events: x\n  commands-email: e\n  commands-sms: s\n  commands-contact-center: c\n  dead-letters: d\n  late-events: l\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("topics.customer-events") && msg.contains("topics.journey-events"),
            "{msg}"
        );
    }
}
