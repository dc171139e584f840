//! The `waymark` binary: parses arguments and dispatches to the library. No logic lives here.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use waymark::codec::InputDecoder;
use waymark::config::{Config, InputFormat, Overrides, TopicsConfig};

/// mimalloc instead of glibc's malloc: Waymark allocates per event and per output record, and
/// glibc spent about a quarter of `waymark run`'s time in malloc, free and consolidation
/// (`perf`, 2026-11-23; see BENCHMARKS.md). Built without transparent huge pages (the `no_thp`
/// feature in the workspace manifest): refaulting purged huge pages cost half of `simulate`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use waymark::engine::Engine;
use waymark::journey::JourneySet;
use waymark::loadgen::LoadgenArgs;
use waymark::model::parse_millis;
use waymark::shutdown::{self, CancellationToken};
use waymark::simulate::{SimulateOptions, simulate};
use waymark::telemetry::{self, Health, LogFormat, Metrics};

/// Waymark follows every customer through your journeys on Kafka, notices what they did and
/// what they did not do in time, and emits intervention commands for channel sinks.
///
/// Start with `waymark journeys check deploy/journeys`, try a journey offline with
/// `waymark simulate`, then run it live with `waymark run --brokers HOST:PORT`.
#[derive(Parser, Debug)]
#[command(
    name = "waymark",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Configuration file (YAML) for `run`; see deploy/waymark.example.yaml. Flags and
    /// WAYMARK_* variables override it.
    #[arg(long, global = true, env = "WAYMARK_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WAYMARK_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (`info`, `waymark=debug`); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info", env = "WAYMARK_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume customer events from Kafka, run the journeys, and produce commands and journey
    /// events (exactly-once: outputs and input offsets commit in one transaction).
    Run(RunArgs),
    /// Run journeys offline over a JSON-lines file (or a time range of a Kafka topic) and print
    /// every command and journey event as JSON lines: the executable specification of the
    /// engine.
    Simulate(SimulateArgs),
    /// What a change to a journey would have done: run the deployed journeys (--journey) and
    /// a candidate (--against) over the same history and compare commands, funnel, projected
    /// cost per channel, and the customers whose commands change
    Backtest(BacktestArgs),
    /// Work with journey definitions.
    #[command(subcommand)]
    Journeys(JourneysCommand),
    /// Publish events from a JSON-lines file to `customer-events`, keyed by customer id, in
    /// file order.
    Produce(ProduceArgs),
    /// Print the decoded records of Waymark topics as JSON lines (read_committed), in the
    /// same shape as `simulate`'s output.
    Tail(TailArgs),
    /// Generate realistic onboarding traffic for the reference journey, to a file or Kafka.
    Loadgen(LoadgenCmd),
    /// Erase a customer's state everywhere (right to be forgotten). Publishes a
    /// `waymark.forget` request to customer-events; the processor that owns the customer's
    /// partition deletes the local state and tombstones the state changelog in its next
    /// transaction. Records already in output topics are not touched.
    Forget(ForgetArgs),
    /// Manage Waymark's Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Look into the local state of a stopped processor.
    #[command(subcommand)]
    State(StateCommand),
    /// The live journey funnel: `serve` materializes it from journey-events and serves the
    /// API and dashboard; `funnel` prints one journey's funnel from a running view.
    #[command(subcommand)]
    Analytics(AnalyticsCommand),
    /// Deliver the commands of one channel (email over SMTP, SMS over a provider API, or
    /// contact-center tasks over a webhook), at most once per command id, with retries, a
    /// dead-letter topic and outcomes on `intervention-outcomes`.
    #[command(subcommand)]
    Sink(SinkCommand),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS")]
    brokers: Option<String>,
    /// Journey definitions: a file or a directory of *.yaml.
    #[arg(long, env = "WAYMARK_JOURNEYS")]
    journeys: Option<PathBuf>,
    /// Directory of the local state (one RocksDB per partition).
    #[arg(long, env = "WAYMARK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address for /livez, /readyz and /metrics.
    #[arg(long, env = "WAYMARK_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
    /// Consumer group shared by all instances.
    #[arg(long, env = "WAYMARK_GROUP_ID")]
    group_id: Option<String>,
    /// Transactional id of this instance (unique per instance, stable across restarts).
    #[arg(long, env = "WAYMARK_TRANSACTIONAL_ID")]
    transactional_id: Option<String>,
    /// Static group membership name of this instance (e.g. the pod name): a restart takes its
    /// partitions back without a rebalance.
    #[arg(long, env = "WAYMARK_GROUP_INSTANCE_ID")]
    group_instance_id: Option<String>,
    /// Encoding of customer-events values.
    #[arg(long, value_enum, env = "WAYMARK_INPUT_FORMAT")]
    input_format: Option<InputFormat>,
    /// exactly-once (transactions, the default) or at-least-once (faster; outputs of the last
    /// batch repeat after a crash, with the same ids).
    #[arg(long, value_enum, env = "WAYMARK_PROCESSING_GUARANTEE")]
    processing_guarantee: Option<waymark::config::ProcessingGuarantee>,
}

#[derive(Subcommand, Debug)]
enum AnalyticsCommand {
    /// Read journey-events (consumer group `analytics.group-id`) into the view and serve it:
    /// the dashboard at /, the JSON API under /api/ (described at /api/openapi.yaml), live
    /// updates at /api/live, and /livez /readyz /metrics. Its RocksDB (`analytics.state-dir`)
    /// is a cache of the topic: delete it and the view is rebuilt from journey-events.
    Serve(AnalyticsServeArgs),
    /// Print the funnel of a journey from a running `waymark analytics serve`: per step the
    /// customers that completed it, are at it, stalled there, abandoned and recovered, and
    /// how long it took; then what each intervention action did.
    Funnel(FunnelArgs),
    /// Print an A/B experiment's results from a running `waymark analytics serve`: per arm the
    /// customers exposed and converted (the awaited step, or the journey's goal), the rate
    /// with its 95% interval, the lift over the baseline (the holdout, or the first variant),
    /// the p-value of a two-proportion z-test, and whether there is enough data to tell.
    Experiment(ExperimentArgs),
}

/// Where a running `waymark analytics serve` is, and how to print its answer.
#[derive(Args, Debug)]
struct ViewArgs {
    /// Base URL of `waymark analytics serve`.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9466",
        env = "WAYMARK_ANALYTICS_URL"
    )]
    url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ExperimentArgs {
    /// The experiment id (as in the journey definition).
    experiment: String,
    /// What counts as converted: `awaited` (the step the action waits for; the default when
    /// it has one) or `goal` (the journey's goal).
    #[arg(long)]
    outcome: Option<String>,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Args, Debug)]
struct AnalyticsServeArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS")]
    brokers: Option<String>,
    /// Journey definitions (for the step order of each funnel).
    #[arg(long, env = "WAYMARK_JOURNEYS")]
    journeys: Option<PathBuf>,
    /// The view's database directory (default `analytics.state-dir`).
    #[arg(long, env = "WAYMARK_ANALYTICS_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address of the API, dashboard and /metrics (default `analytics.http-addr`).
    #[arg(long, env = "WAYMARK_ANALYTICS_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct FunnelArgs {
    /// The journey.
    journey: String,
    /// Journey version (default: the newest the view has seen).
    #[arg(long)]
    version: Option<u32>,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Subcommand, Debug)]
enum SinkCommand {
    /// Send `commands.email` as email over SMTP, rendered from `sinks.email.templates`.
    Email(SinkArgs),
    /// Send `commands.sms` through an HTTP SMS provider (Twilio-shaped Messages API),
    /// rendered from `sinks.sms.templates`.
    Sms(SinkArgs),
    /// Create contact-center tasks (assist tasks, the sales rep's outbound calls) from
    /// `commands.contact-center` over an HTTP/webhook JSON API (`sinks.contact-center.url`).
    ContactCenter(SinkArgs),
}

#[derive(Args, Debug)]
struct SinkArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS")]
    brokers: Option<String>,
    /// Where the sink remembers handled command ids (default `sinks.state-dir`).
    #[arg(long, env = "WAYMARK_SINK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address for /livez, /readyz and /metrics (default `sinks.http-addr`).
    #[arg(long, env = "WAYMARK_SINK_HTTP_ADDR")]
    http_addr: Option<std::net::SocketAddr>,
    /// SMTP server host (default `sinks.email.smtp-host`).
    #[arg(long, env = "WAYMARK_SMTP_HOST")]
    smtp_host: Option<String>,
    /// SMTP server port (default `sinks.email.smtp-port`).
    #[arg(long, env = "WAYMARK_SMTP_PORT")]
    smtp_port: Option<u16>,
    /// Base URL of the SMS provider (default `sinks.sms.base-url`).
    #[arg(long, env = "WAYMARK_SMS_BASE_URL")]
    sms_base_url: Option<String>,
    /// Task endpoint of the contact center (default `sinks.contact-center.url`).
    #[arg(long, env = "WAYMARK_CONTACT_CENTER_URL")]
    contact_center_url: Option<String>,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// Journey definitions: a file or a directory of *.yaml.
    #[arg(long)]
    journeys: PathBuf,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(flatten)]
    offline: OfflineArgs,
}

/// Where an offline run's events come from: a JSON-lines file, or a range of a Kafka topic.
#[derive(Args, Debug)]
struct HistoryArgs {
    /// Events, one JSON object per line, in arrival order (`-` for stdin).
    #[arg(long, required_unless_present = "from_topic")]
    events: Option<PathBuf>,
    /// Read the events from this topic instead (e.g. customer-events), from --since to --to
    /// by record timestamp, up to the end of every partition: each partition in its offset
    /// order, the partitions merged by event time.
    #[arg(long, conflicts_with = "events")]
    from_topic: Option<String>,
    /// Kafka bootstrap servers (with --from-topic).
    #[arg(long, env = "WAYMARK_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// With --from-topic: the first record time (RFC 3339); default: the start of the topic.
    #[arg(long, requires = "from_topic")]
    since: Option<String>,
    /// With --from-topic: read records before this time (RFC 3339); default: the end.
    #[arg(long, requires = "from_topic")]
    to: Option<String>,
    /// With --from-topic: the encoding of the topic's values. Default: `input-format` of
    /// --config, whose `input-mapping` and `schema-registry` apply too (the topic is read as
    /// `waymark run` reads it); else avro.
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
}

impl HistoryArgs {
    /// What the events are called in messages.
    fn name(&self) -> String {
        match (&self.events, &self.from_topic) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(topic)) => format!("topic {topic}"),
            (None, None) => "events".to_owned(),
        }
    }

    /// The events as JSON lines, streamed from the file or read from the topic range (whose
    /// values are read as `config` says, when given).
    fn open(&self, config: Option<&Path>) -> Result<Box<dyn BufRead + Send>> {
        match &self.events {
            Some(path) => open_input(path),
            None => Ok(Box::new(std::io::Cursor::new(self.read_topic(config)?))),
        }
    }

    /// The events as JSON lines, all in memory (a backtest reads them twice).
    fn read_all(&self, config: Option<&Path>) -> Result<Vec<u8>> {
        let Some(path) = &self.events else {
            return self.read_topic(config);
        };
        let mut bytes = Vec::new();
        open_input(path)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(bytes)
    }

    /// The `--from-topic` range as JSON lines.
    fn read_topic(&self, config: Option<&Path>) -> Result<Vec<u8>> {
        let topic = self
            .from_topic
            .as_deref()
            .context("give --events or --from-topic")?;
        let since = time_flag("since", self.since.as_deref())?;
        let to = time_flag("to", self.to.as_deref())?;
        let input = match config {
            Some(path) => {
                let cfg = Config::load(Some(path), &Overrides::default())?;
                let registry = waymark::registry::connect(cfg.schema_registry.as_ref())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                waymark::registry::input_decoder(
                    self.format.unwrap_or(cfg.input_format),
                    cfg.input_mapping.as_ref(),
                    registry.as_ref(),
                )
            }
            None => InputDecoder::plain(self.format.unwrap_or_default()),
        };
        let mut buf = Vec::new();
        let stats =
            waymark::kafka::read_history(&self.brokers, topic, &input, since, to, &mut buf)?;
        for e in &stats.examples {
            eprintln!("{topic} {e}: skipped");
        }
        eprintln!(
            "history: {} events from {} partitions of {topic} ({} records skipped as undecodable)",
            stats.events, stats.partitions, stats.undecodable
        );
        if stats.forwards > 0 {
            eprintln!(
                "history: {} identity-merge records skipped (Waymark wrote them; the identity.alias events make them again)",
                stats.forwards
            );
        }
        Ok(buf)
    }
}

/// The value of a time flag (`--until`, `--since`, `--to`), RFC 3339.
fn time_flag(flag: &str, value: Option<&str>) -> Result<Option<waymark::model::Millis>> {
    value
        .map(|t| {
            parse_millis(t).with_context(|| format!("--{flag} `{t}` is not an RFC 3339 timestamp"))
        })
        .transpose()
}

/// `waymark backtest`: two versions of the journeys over the same history.
#[derive(Args, Debug)]
struct BacktestArgs {
    /// The journeys as deployed (A): a file or a directory of *.yaml.
    #[arg(long)]
    journey: PathBuf,
    /// The candidate (B) to compare with A.
    #[arg(long)]
    against: PathBuf,
    #[command(flatten)]
    history: HistoryArgs,
    /// Price of one command on a channel, `channel=price` (repeatable); defaults: email=0.001,
    /// sms=0.05, contact-center=4.
    #[arg(long = "cost", value_name = "CHANNEL=PRICE")]
    costs: Vec<String>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    offline: OfflineArgs,
}

/// How an offline run (simulate, backtest) advances time and which protections it applies.
#[derive(Args, Debug)]
struct OfflineArgs {
    /// After the last event, advance time to this RFC 3339 instant, firing what is due.
    #[arg(long)]
    until: Option<String>,
    /// How late an event may arrive behind the newest one and still be on time.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    allowed_lateness: Duration,
    /// Events further than this ahead of --until are refused (only checked with --until).
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    max_future_skew: Duration,
    /// Finished journey instances are compacted away this long after the last one ended (as
    /// `retention-secs` in `waymark run`'s config; `0s` keeps them forever).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Customer protection (suppression list, frequency caps) as in `waymark run`'s
    /// `protections:`, e.g. deploy/examples/protections.yaml. Default: none.
    #[arg(long)]
    protections: Option<PathBuf>,
    /// Log progress on stderr (lines read, event time reached, events/s) this often; with
    /// `0s`, only the summary at the end.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    progress_every: Duration,
    /// Engine threads: customers are split between them and the outputs merged back in the
    /// order one thread gives (the same bytes). Default: the CPUs available, at most 4.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
}

impl OfflineArgs {
    fn engine(&self, journeys: &Path) -> Result<Arc<Engine>> {
        load_engine(
            journeys,
            Some(self.retention.as_millis() as i64),
            self.protections.as_deref(),
        )
    }

    fn options(&self) -> Result<SimulateOptions> {
        let until = time_flag("until", self.until.as_deref())?;
        Ok(SimulateOptions {
            allowed_lateness: self.allowed_lateness.as_millis() as i64,
            until,
            max_future_skew: self.max_future_skew.as_millis() as i64,
            progress_every: Some(self.progress_every).filter(|every| !every.is_zero()),
            threads: match self.threads {
                Some(n) => usize::from(n),
                None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            },
        })
    }
}

#[derive(Subcommand, Debug)]
enum JourneysCommand {
    /// Validate journey definitions; errors name the file, line and field.
    Check {
        /// A journey file or a directory of *.yaml.
        path: PathBuf,
        /// Also validate a protections file (e.g. deploy/examples/protections.yaml).
        #[arg(long)]
        protections: Option<PathBuf>,
    },
    /// Explain what a change of journey definitions does to the customers in flight: which
    /// instances keep their version, which migrate, and every step, rule and action that
    /// changes. Run it before deploying a change (a running `waymark run` reloads the
    /// journeys directory and refuses a change that is unsafe for customers in flight).
    ///
    /// Example: waymark journeys diff deploy/journeys staging/journeys
    #[command(verbatim_doc_comment)]
    Diff {
        /// The journeys running now: a file or a directory of *.yaml.
        old: PathBuf,
        /// The journeys to deploy: a file or a directory of *.yaml.
        new: PathBuf,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Target topic.
    #[arg(long, default_value = "customer-events")]
    topic: String,
    /// Encoding of the values. Avro values are bare datums, or in the Confluent wire format
    /// when --config has a `schema-registry` (the schema registered under `<topic>-value`).
    #[arg(long, value_enum, default_value_t = InputFormat::Avro)]
    format: InputFormat,
    /// Events, one JSON object per line (`-` for stdin).
    file: PathBuf,
}

#[derive(Args, Debug)]
struct ForgetArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The input topic the processor consumes.
    #[arg(long, default_value = "customer-events")]
    topic: String,
    /// The customer to forget.
    customer_id: String,
}

#[derive(Args, Debug)]
struct TailArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "WAYMARK_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Read from the earliest offset instead of only new records.
    #[arg(long)]
    from_beginning: bool,
    /// Exit once nothing new arrived for this long (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_exit: Option<Duration>,
    /// Exit after this many records.
    #[arg(long)]
    max_records: Option<u64>,
    /// Add `received_at` to each line: when this reader got the record (wall clock); and
    /// `produced_at`: the record's Kafka timestamp, when Waymark produced it. A command's
    /// `received_at` minus its `due_at` is how late it became readable; `produced_at` splits
    /// that into the time to handle its event and the time for its transaction to commit.
    #[arg(long)]
    received_at: bool,
    /// Topics to read (default: every command topic and journey-events).
    topics: Vec<String>,
}

#[derive(Args, Debug)]
struct LoadgenCmd {
    #[command(flatten)]
    gen_args: LoadgenArgs,
    /// Write the events as JSON lines to this file (`-` for stdout).
    #[arg(long, conflicts_with = "brokers")]
    output: Option<PathBuf>,
    /// Produce the events to Kafka at these bootstrap servers.
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to produce to.
    #[arg(long, default_value = "customer-events")]
    topic: String,
    /// Stamp each event's occurred_at with the wall-clock time it is sent instead of its
    /// generated time: a live stream, paced by --rate. With an action of delay 0s and
    /// allowed-lateness-secs 0, `waymark tail --received-at` then shows how long after its
    /// event each command became readable.
    #[arg(long, requires = "brokers")]
    live: bool,
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// Create Waymark's topics when missing (existing ones are left alone).
    Create {
        /// Kafka bootstrap servers.
        #[arg(long, env = "WAYMARK_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Partitions per topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// A Kafka topic config for every topic created, as KEY=VALUE (repeat for more), e.g.
        /// `min.insync.replicas=2`. The state changelog stays `cleanup.policy=compact`.
        #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = waymark::kafka::parse_topic_config)]
        topic_config: Vec<(String, String)>,
        /// A Kafka topic config for the state changelog only, over --topic-config, as
        /// KEY=VALUE (repeat for more). A restore reads the changelog's uncompacted tail (its
        /// active segment is never compacted): `segment.bytes` bounds it, see the README's
        /// "Running it".
        #[arg(long = "changelog-config", value_name = "KEY=VALUE", value_parser = waymark::kafka::parse_topic_config)]
        changelog_config: Vec<(String, String)>,
    },
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Show a customer's instances, completed steps, pending wake-up, and which commands were
    /// sent or cancelled and why. Reads the state directory of a stopped processor.
    Inspect {
        /// The customer id.
        customer_id: String,
        /// Directory of the local state.
        #[arg(long, env = "WAYMARK_STATE_DIR", default_value = ".waymark/state")]
        state_dir: PathBuf,
        /// Journey definitions.
        #[arg(long, env = "WAYMARK_JOURNEYS", default_value = "deploy/journeys")]
        journeys: PathBuf,
        /// The protections file `waymark run` used, so suppressed actions show their reason.
        #[arg(long)]
        protections: Option<PathBuf>,
    },
}

/// Bounds glibc's malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise. Rust code allocates
/// with mimalloc, but RocksDB and librdkafka use glibc's malloc, which gives threads arenas of
/// their own; the state writes of each commit, on the commit thread, left arenas that never
/// shrank back: peak RSS at 1M customers 1,168 MiB with the default, 814-845 MiB with two arenas,
/// at the same throughput (BENCHMARKS.md, 2026-12-05).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        /// Arenas glibc's malloc may create (its default is 8 per core).
        const GLIBC_MALLOC_ARENAS: i32 = 2;
        // SAFETY: mallopt only sets a tunable of glibc's malloc; called first thing in main,
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, GLIBC_MALLOC_ARENAS);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format, &cli.log_level);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_input(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// The engine for the journeys at `path`, compacting finished instances after `retention`
/// (milliseconds; `None` or 0 keeps them).
fn load_engine(
    path: &Path,
    retention: Option<i64>,
    protections: Option<&Path>,
) -> Result<Arc<Engine>> {
    let set = JourneySet::load(path)?;
    let retention = retention.filter(|r| *r > 0);
    let protections = match protections {
        Some(p) => waymark::protect::Protections::load(p)?,
        None => Default::default(),
    };
    Ok(Arc::new(
        Engine::new(set)
            .with_retention(retention)
            .with_protections(protections),
    ))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How events written to the input topic `topic` are framed: with the schema registry of
/// `--config` (the `CustomerEvent` schema registered under `<topic>-value`), else bare Avro.
fn input_wire(config: Option<&Path>, topic: &str) -> Result<waymark::registry::Wire> {
    let mut wire = waymark::registry::Wire::new(registry_of(config)?);
    wire.register::<waymark::model::CustomerEvent>(topic)
        .map_err(|e| anyhow::anyhow!("schema registry: {e}"))?;
    Ok(wire)
}

/// A client of the schema registry `--config` names, if it names one.
fn registry_of(config: Option<&Path>) -> Result<Option<Arc<waymark::registry::SchemaRegistry>>> {
    let Some(path) = config else {
        return Ok(None);
    };
    let cfg = Config::load(Some(path), &Overrides::default())?;
    waymark::registry::connect(cfg.schema_registry.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Topic names from `--config` when given, else the defaults.
fn topics_of(config: Option<&Path>) -> Result<TopicsConfig> {
    Ok(match config {
        Some(path) => Config::load(Some(path), &Overrides::default())?.topics,
        None => TopicsConfig::default(),
    })
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = cli.config.clone();
    match cli.command {
        Command::Run(args) => run(cli.config.as_deref(), args),
        Command::Sink(command) => sink(cli.config.as_deref(), command),
        Command::Analytics(AnalyticsCommand::Serve(args)) => {
            analytics_serve(cli.config.as_deref(), args)
        }
        Command::Analytics(AnalyticsCommand::Funnel(args)) => analytics_funnel(args),
        Command::Analytics(AnalyticsCommand::Experiment(args)) => analytics_experiment(args),
        Command::Backtest(args) => {
            let mut costs = waymark::backtest::Costs::default();
            for spec in &args.costs {
                costs.set(spec).map_err(|e| anyhow::anyhow!("--cost {e}"))?;
            }
            let opts = args.offline.options()?;
            let history = args.history.read_all(config.as_deref())?;
            let mut sides = Vec::new();
            for journeys in [&args.journey, &args.against] {
                let engine = args.offline.engine(journeys)?;
                let (side, report) = waymark::backtest::run_side(engine, &history[..], &opts)?;
                for (line, why) in report.rejected.iter().take(3) {
                    eprintln!("{}:{line}: refused: {why}", args.history.name());
                }
                eprintln!(
                    "backtest: {} over {} events in {:.2}s",
                    journeys.display(),
                    report.lines,
                    report.seconds
                );
                sides.push(side);
            }
            let report = waymark::backtest::compare(&sides[0], &sides[1], &costs);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!(
                    "{}",
                    waymark::backtest::render(
                        &report,
                        &args.journey.display().to_string(),
                        &args.against.display().to_string()
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            let engine = args.offline.engine(&args.journeys)?;
            let opts = args.offline.options()?;
            // Written on a thread of its own: a 1 MiB buffer takes the lock once per write.
            let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout());
            let report = simulate(
                engine,
                args.history.open(config.as_deref())?,
                &mut out,
                &opts,
            )?;
            for (line, why) in &report.rejected {
                eprintln!("{}:{line}: refused: {why}", args.history.name());
            }
            let s = report.stats;
            eprintln!(
                "simulate: {} events ({} accepted, {} duplicates, {} late, {} ignored, {} refused) -> {} commands, {} journey events, {} timer wake-ups in {:.2}s ({:.0} events/s)",
                report.lines,
                s.accepted,
                s.duplicates,
                s.late,
                s.ignored,
                report.rejected_total,
                s.commands,
                s.journey_events,
                s.timers_fired,
                report.seconds,
                report.lines as f64 / report.seconds.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Journeys(JourneysCommand::Check { path, protections }) => {
            let set = JourneySet::load(&path)?;
            if let Some(p) = protections {
                let loaded = waymark::protect::Protections::load(&p)?;
                println!(
                    "ok: protections ({}): suppression list {}, {} frequency caps",
                    p.display(),
                    if loaded.suppression.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                    loaded.frequency_caps.len()
                );
            }
            for j in set.iter() {
                let effective = j
                    .effective_from
                    .map(|at| format!(", effective from {}", waymark::model::format_millis(at)))
                    .unwrap_or_default();
                let migrates = if j.migrate_from.is_empty() {
                    String::new()
                } else {
                    format!(", migrates instances of versions {:?}", j.migrate_from)
                };
                println!(
                    "ok: {} v{} ({}): {} steps, goal `{}`, {} rules, {} actions{effective}{migrates}",
                    j.name,
                    j.version,
                    j.source.display(),
                    j.steps.len(),
                    j.steps[j.goal].id,
                    j.rules.len(),
                    j.rules.iter().map(|r| r.actions.len()).sum::<usize>()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Journeys(JourneysCommand::Diff { old, new }) => {
            let (old, new) = (JourneySet::load(&old)?, JourneySet::load(&new)?);
            let explained = waymark::journey::diff::explain(&old, &new);
            if explained.is_empty() {
                println!("no journey changes");
            }
            for paragraph in explained {
                println!("{paragraph}\n");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce(args) => {
            let rt = runtime()?;
            let input = open_input(&args.file)?;
            let wire = input_wire(config.as_deref(), &args.topic)?;
            let n = rt.block_on(waymark::kafka::produce_file(
                &args.brokers,
                &args.topic,
                &args.file.display().to_string(),
                input,
                args.format,
                &wire,
            ))?;
            eprintln!("produced {n} events to {}", args.topic);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            let topics_cfg = topics_of(config.as_deref())?;
            let topics = if args.topics.is_empty() {
                vec![
                    topics_cfg.commands_email.clone(),
                    topics_cfg.commands_sms.clone(),
                    topics_cfg.commands_contact_center.clone(),
                    topics_cfg.journey_events.clone(),
                ]
            } else {
                args.topics
            };
            let opts = waymark::kafka::TailOptions {
                from_beginning: args.from_beginning,
                idle_exit: args.idle_exit,
                max_records: args.max_records,
                received_at: args.received_at,
                wire: waymark::registry::Wire::new(registry_of(config.as_deref())?),
            };
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            let n = waymark::kafka::tail(&args.brokers, &topics_cfg, &topics, &opts, &mut out)?;
            out.flush()?;
            eprintln!("tail: {n} records");
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadgen(cmd) => loadgen(config.as_deref(), cmd),
        Command::Forget(args) => {
            if args.customer_id.trim().is_empty() {
                bail!("give the id of the customer to forget");
            }
            let now = waymark::model::now_millis();
            let request = waymark::model::CustomerEvent {
                event_id: format!("forget-{}-{now}", args.customer_id),
                customer_id: args.customer_id.clone(),
                event_type: waymark::runtime::FORGET_EVENT_TYPE.to_owned(),
                occurred_at: now,
                attributes: Default::default(),
            };
            let rt = runtime()?;
            let wire = input_wire(config.as_deref(), &args.topic)?;
            rt.block_on(waymark::kafka::produce_events(
                &args.brokers,
                &args.topic,
                std::iter::once(request),
                InputFormat::Avro,
                &wire,
                waymark::kafka::Pace::default(),
            ))?;
            eprintln!(
                "forget request for {} published to {}; the processor erases the state in its next transaction",
                args.customer_id, args.topic
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(TopicsCommand::Create {
            brokers,
            partitions,
            replication,
            topic_config,
            changelog_config,
        }) => {
            let rt = runtime()?;
            let topics_cfg = topics_of(config.as_deref())?;
            let spec = waymark::kafka::TopicSpec {
                config: topic_config.into_iter().collect(),
                changelog_config: changelog_config.into_iter().collect(),
                ..waymark::kafka::TopicSpec::new(partitions, replication)
            };
            let created =
                rt.block_on(waymark::kafka::create_topics(&brokers, &topics_cfg, &spec))?;
            eprintln!("created {} topics: {}", created.len(), created.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Inspect {
            customer_id,
            state_dir,
            journeys,
            protections,
        }) => {
            let engine = load_engine(&journeys, None, protections.as_deref())?;
            let report = waymark::pipeline::inspect(&state_dir, &engine, &customer_id)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn loadgen(config: Option<&Path>, cmd: LoadgenCmd) -> Result<ExitCode> {
    let events = waymark::loadgen::generate(&cmd.gen_args)?;
    match (&cmd.output, &cmd.brokers) {
        (Some(path), None) => {
            let n = if path == Path::new("-") {
                let stdout = std::io::stdout();
                let mut w = BufWriter::new(stdout.lock());
                waymark::loadgen::write_jsonl(events, &mut w)?
            } else {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                waymark::loadgen::write_jsonl(events, &mut w)?
            };
            eprintln!("loadgen: wrote {n} events");
            Ok(ExitCode::SUCCESS)
        }
        (None, Some(brokers)) => {
            let rt = runtime()?;
            let wire = input_wire(config, &cmd.topic)?;
            let n = rt.block_on(waymark::kafka::produce_events(
                brokers,
                &cmd.topic,
                events,
                InputFormat::Avro,
                &wire,
                waymark::kafka::Pace {
                    rate: cmd.gen_args.rate,
                    live: cmd.live,
                },
            ))?;
            eprintln!("loadgen: produced {n} events to {}", cmd.topic);
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("give either --output FILE or --brokers HOST:PORT"),
    }
}

fn run(config: Option<&Path>, args: RunArgs) -> Result<ExitCode> {
    let overrides = Overrides {
        brokers: args.brokers,
        journeys: args.journeys,
        state_dir: args.state_dir,
        http_addr: args.http_addr,
        group_id: args.group_id,
        transactional_id: args.transactional_id,
        group_instance_id: args.group_instance_id,
        input_format: args.input_format,
        processing_guarantee: args.processing_guarantee,
    };
    let cfg = Config::load(config, &overrides)?;
    let engine = load_engine(
        &cfg.journeys,
        cfg.retention_ms(),
        cfg.protections.as_deref(),
    )?;
    if let Some(p) = &cfg.protections {
        let e = engine.protections();
        tracing::info!(
            source = %p.display(),
            suppression_list = e.suppression.is_some(),
            frequency_caps = e.frequency_caps.len(),
            "Customer protection loaded."
        );
    }
    for j in engine.journeys().iter() {
        tracing::info!(journey = %j.name, version = j.version, source = %j.source.display(), "Journey loaded.");
    }
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    let addr = cfg.http_addr;
    let drain_timeout = Duration::from_secs(cfg.shutdown_timeout_secs);
    let live = waymark::reload::LiveJourneys::new(&cfg.journeys, engine);
    let watch = (cfg.journeys_watch_secs > 0).then(|| Duration::from_secs(cfg.journeys_watch_secs));
    supervise(
        "pipeline",
        addr,
        drain_timeout,
        journey_admin_routes(live.clone(), watch),
        move |metrics, health, token| {
            waymark::pipeline::run(
                cfg.clone(),
                live.clone(),
                metrics.clone(),
                health.clone(),
                token.clone(),
            )
            .map(|_| ())
        },
    )
}

/// `POST /admin/journeys/reload` (load the journeys again; answers what changed, or 409 with
/// why the reload is not safe) and `GET /admin/journeys` (the versions running); starts the
/// file watch when `watch` is set.
fn journey_admin_routes(
    live: Arc<waymark::reload::LiveJourneys>,
    watch: Option<Duration>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let watching = live.clone();
    let reload = move || {
        let live = live.clone();
        async move {
            let answer = live.request();
            match tokio::time::timeout(Duration::from_secs(60), answer).await {
                Ok(Ok(Ok(report))) => (StatusCode::OK, axum::Json(serde_json::json!(report))),
                Ok(Ok(Err(error))) => (
                    StatusCode::CONFLICT,
                    axum::Json(serde_json::json!({ "error": error })),
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "error": "the pipeline did not take the reload within 60 s (is it running, or restoring?); try again"
                    })),
                ),
            }
        }
    };
    let current = watching.clone();
    let list = move || {
        let engine = current.engine();
        async move {
            let journeys: Vec<waymark::reload::Loaded> = engine
                .journeys()
                .iter()
                .map(|j| waymark::reload::Loaded::of(j))
                .collect();
            axum::Json(serde_json::json!({ "journeys": journeys }))
        }
    };
    if let Some(every) = watch {
        waymark::reload::watch(watching, every);
    }
    axum::Router::new()
        .route("/admin/journeys/reload", post(reload))
        .route("/admin/journeys", get(list))
}

/// `waymark sink <channel>`.
fn sink(config: Option<&Path>, command: SinkCommand) -> Result<ExitCode> {
    let (channel, args) = match command {
        SinkCommand::Email(args) => (waymark::model::Channel::Email, args),
        SinkCommand::Sms(args) => (waymark::model::Channel::Sms, args),
        SinkCommand::ContactCenter(args) => (waymark::model::Channel::ContactCenter, args),
    };
    let overrides = Overrides {
        brokers: args.brokers,
        ..Overrides::default()
    };
    let mut cfg = Config::load(config, &overrides)?;
    if let Some(dir) = args.state_dir {
        cfg.sinks.state_dir = dir;
    }
    if let Some(addr) = args.http_addr {
        cfg.sinks.http_addr = addr;
    }
    if let Some(host) = args.smtp_host {
        cfg.sinks.email.smtp_host = host;
    }
    if let Some(port) = args.smtp_port {
        cfg.sinks.email.smtp_port = port;
    }
    if let Some(url) = args.sms_base_url {
        cfg.sinks.sms.base_url = url;
    }
    if let Some(url) = args.contact_center_url {
        cfg.sinks.contact_center.url = url;
    }
    if channel == waymark::model::Channel::ContactCenter {
        let provider =
            waymark::sink::contact_center::ContactCenterProvider::new(&cfg.sinks.contact_center)?;
        let routes = waymark::sink::contact_center::callback_routes(
            &cfg,
            waymark::sink::outcome_wire(&cfg)?,
        )?;
        tracing::info!(
            url = %cfg.sinks.contact_center.url,
            callback = "POST /callbacks/contact-center/tasks",
            "Contact-center sink starting."
        );
        return run_sink(cfg, provider, routes);
    }
    if channel == waymark::model::Channel::Email {
        let provider = waymark::sink::email::EmailProvider::new(&cfg.sinks.email)?;
        tracing::info!(
            smtp = %format!("{}:{}", cfg.sinks.email.smtp_host, cfg.sinks.email.smtp_port),
            templates = %cfg.sinks.email.templates.display(),
            "Email sink starting."
        );
        run_sink(cfg, provider, axum::Router::new())
    } else {
        let provider = waymark::sink::sms::SmsProvider::new(&cfg.sinks.sms)?;
        tracing::info!(
            provider = %cfg.sinks.sms.base_url,
            templates = %cfg.sinks.sms.templates.display(),
            "SMS sink starting."
        );
        run_sink(cfg, provider, axum::Router::new())
    }
}

/// `waymark analytics serve`.
fn analytics_serve(config: Option<&Path>, args: AnalyticsServeArgs) -> Result<ExitCode> {
    use waymark::analytics::{Definitions, service, store::ViewStore};
    let overrides = Overrides {
        brokers: args.brokers,
        journeys: args.journeys,
        ..Overrides::default()
    };
    let mut cfg = Config::load(config, &overrides)?;
    if let Some(dir) = args.state_dir {
        cfg.analytics.state_dir = dir;
    }
    if let Some(addr) = args.http_addr {
        cfg.analytics.http_addr = addr;
    }
    let order = Definitions::of(&JourneySet::load(&cfg.journeys)?);
    let store = ViewStore::open(&cfg.analytics.state_dir)?;
    let live = Arc::new(service::Live::new(order, store));
    tracing::info!(
        state_dir = %cfg.analytics.state_dir.display(),
        dashboard = %format!("http://{}/", cfg.analytics.http_addr),
        "Analytics view starting."
    );
    let addr = cfg.analytics.http_addr;
    let drain_timeout = Duration::from_secs(cfg.shutdown_timeout_secs);
    let routes = service::routes(live.clone());
    supervise(
        "analytics",
        addr,
        drain_timeout,
        routes,
        move |metrics, health, token| {
            service::run(&cfg, live.clone(), metrics, health, token.clone())
        },
    )
}

/// `waymark analytics funnel`: one journey's funnel from a running view, as a table.
fn analytics_funnel(args: FunnelArgs) -> Result<ExitCode> {
    let mut url = format!(
        "{}/api/journeys/{}/funnel",
        args.view.url.trim_end_matches('/'),
        args.journey
    );
    if let Some(v) = args.version {
        url.push_str(&format!("?version={v}"));
    }
    print_view(
        &args.view,
        &url,
        "funnel",
        waymark::analytics::render_funnel,
    )
}

/// `waymark analytics experiment`: one experiment's results from a running view.
fn analytics_experiment(args: ExperimentArgs) -> Result<ExitCode> {
    let mut url = format!(
        "{}/api/experiments/{}",
        args.view.url.trim_end_matches('/'),
        args.experiment
    );
    if let Some(o) = &args.outcome {
        url.push_str(&format!("?outcome={o}"));
    }
    print_view(
        &args.view,
        &url,
        "report",
        waymark::analytics::render_experiment,
    )
}

/// Prints what the analytics API answers at `url` (a `what`): its JSON with `--json`, else
/// `render`ed.
fn print_view<T: serde::de::DeserializeOwned>(
    view: &ViewArgs,
    url: &str,
    what: &str,
    render: fn(&T) -> String,
) -> Result<ExitCode> {
    let body = analytics_get(url)?;
    if view.json {
        println!("{body}");
    } else {
        let answer: T =
            serde_json::from_str(&body).with_context(|| format!("{url} returned no {what}"))?;
        print!("{}", render(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// GET from the analytics API; an error carries the API's message.
fn analytics_get(url: &str) -> Result<String> {
    match ureq::get(url).timeout(Duration::from_secs(10)).call() {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(_, r)) => {
            let text = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{url}: {message}");
        }
        Err(e) => bail!(
            "cannot reach the analytics view at {url}: {e}; is `waymark analytics serve` running there (--url)?"
        ),
    }
}

/// Runs a sink with `provider` under [`supervise`].
fn run_sink<P: waymark::sink::Provider + Send + 'static>(
    cfg: Config,
    provider: P,
    routes: axum::Router,
) -> Result<ExitCode> {
    let rocks = waymark::state::RocksEnv::new(&cfg.rocksdb)?;
    let addr = cfg.sinks.http_addr;
    let drain_timeout = Duration::from_secs(cfg.shutdown_timeout_secs);
    supervise(
        "sink",
        addr,
        drain_timeout,
        routes,
        move |metrics, health, token| {
            waymark::sink::run(&cfg, &provider, &rocks, metrics, health, token.clone()).map(|_| ())
        },
    )
}

/// Serves `/livez`, `/readyz`, `/metrics` and `routes` on `addr` and runs `work` on a dedicated thread
/// until it ends (an error) or SIGTERM/SIGINT asks it to drain, for at most `drain_timeout`.
/// Work that fails with a fatal Kafka client error is started again with new clients
/// ([`shutdown::restarting`]). The exit code says which: 0 drained, 124 drain timeout, 1 error.
fn supervise<E>(
    name: &str,
    addr: std::net::SocketAddr,
    drain_timeout: Duration,
    routes: axum::Router,
    mut work: impl FnMut(&Metrics, &Arc<Health>, &CancellationToken) -> Result<(), E> + Send + 'static,
) -> Result<ExitCode>
where
    E: std::error::Error + shutdown::Restartable + Send + Sync + 'static,
{
    let rt = runtime()?;
    let token = CancellationToken::new();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    rt.spawn(shutdown::cancel_on_signal(token.clone()));
    let (addr, http) = rt.block_on(telemetry::serve(
        addr,
        metrics.clone(),
        health.clone(),
        token.clone(),
        routes,
    ))?;
    tracing::info!(%addr, "Serving /livez /readyz /metrics.");
    let work_token = token.clone();
    let what = name.to_owned();
    let worker = std::thread::Builder::new()
        .name(format!("waymark-{name}"))
        .spawn(move || {
            let restarted = || {
                metrics.client_restart();
                health
                    .ready
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            };
            shutdown::restarting(&what, &work_token, restarted, || {
                work(&metrics, &health, &work_token)
            })
        })
        .with_context(|| format!("cannot start the {name} thread"))?;
    // Wait for the work to end by itself (error) or for a signal, then for the drain.
    let result = rt.block_on(async {
        let waiter = tokio::task::spawn_blocking(move || worker.join());
        tokio::pin!(waiter);
        tokio::select! {
            joined = &mut waiter => Some(joined),
            _ = token.cancelled() => {
                tokio::time::timeout(drain_timeout, &mut waiter).await.ok()
            }
        }
    });
    token.cancel();
    let _ = rt.block_on(http);
    match result {
        None => {
            tracing::error!(
                timeout_secs = drain_timeout.as_secs(),
                "Drain did not finish in time; exiting without a final commit."
            );
            Ok(ExitCode::from(shutdown::EXIT_DRAIN_TIMEOUT as u8))
        }
        Some(Ok(Ok(Ok(())))) => Ok(ExitCode::SUCCESS),
        Some(Ok(Ok(Err(e)))) => Err(e.into()),
        Some(Ok(Err(_))) | Some(Err(_)) => bail!("the {name} thread panicked"),
    }
}
