//! Helpers for Waymark's end-to-end scenarios against a real Kafka broker.
//!
//! Owns: the broker address (`WAYMARK_TEST_BROKERS`, default `127.0.0.1:19092`, the broker
//! `make test` starts with `scripts/kafka.sh`), unique topic/group/transactional-id names per
//! test, starting and stopping `waymark run` as a real process, reading outputs back with
//! `read_committed`, and comparing them with `waymark simulate`. Every test creates its own
//! topics, so tests never see each other's records.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use waymark::config::{InputFormat, TopicsConfig};
use waymark::engine::Engine;
use waymark::journey::JourneySet;
use waymark::model::Millis;
use waymark::simulate::{SimulateOptions, simulate};

/// The broker under test.
pub fn brokers() -> String {
    std::env::var("WAYMARK_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// The project root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The reference journey file.
pub fn reference_journey() -> PathBuf {
    root().join("deploy/journeys/b2b-onboarding.yaml")
}

/// The golden trace folder (`../shared/golden` beside the project).
pub fn golden_dir() -> PathBuf {
    std::env::var("WAYMARK_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("../shared/golden"))
}

/// The `waymark` binary built beside this test binary (same profile).
pub fn waymark_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WAYMARK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/waymark
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("waymark"))
        .expect("target directory layout")
}

/// Runs `cmd` to its end and asserts that it exited 0 (failing with its stderr); its output.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Wall clock in milliseconds.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A free loopback port, a new one on every call, below the kernel's ephemeral range
/// (32768 and up). A port the kernel hands out (`bind` to port 0) may be taken by any outgoing
/// connection, a Kafka client's for instance, between this call and the server's own bind;
/// nothing takes a port below that range unless asked for it by number.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; each starts at its own place in the range.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// One test's world: its topics, group, transactional id, state directory and config file.
pub struct Scenario {
    /// The unique name behind every topic, the group and the ids.
    pub id: String,
    /// Topic names (all unique to this scenario).
    pub topics: TopicsConfig,
    /// Scratch directory (state, config, logs).
    pub dir: tempfile::TempDir,
    /// The config file for `waymark run`.
    pub config: PathBuf,
    /// The HTTP address of `waymark run`.
    pub http: String,
}

impl Scenario {
    /// Creates unique topics with `partitions` partitions and writes a config for them.
    /// `extra` is appended to the config file (e.g. `allowed-lateness-secs: 1`).
    pub fn new(name: &str, partitions: i32, extra: &str) -> Result<Scenario> {
        Self::with_kafka_properties(name, partitions, extra, &[])
    }

    /// [`Scenario::new`] with extra librdkafka properties (`kafka.properties`) for `waymark run`.
    pub fn with_kafka_properties(
        name: &str,
        partitions: i32,
        extra: &str,
        properties: &[(&str, &str)],
    ) -> Result<Scenario> {
        let id = unique(name);
        let topics = TopicsConfig {
            customer_events: format!("{id}.customer-events"),
            journey_events: format!("{id}.journey-events"),
            commands_email: format!("{id}.commands.email"),
            commands_sms: format!("{id}.commands.sms"),
            commands_contact_center: format!("{id}.commands.contact-center"),
            dead_letters: format!("{id}.customer-events.dlq"),
            late_events: format!("{id}.customer-events.late"),
            state_changelog: format!("{id}.state-changelog"),
            intervention_outcomes: format!("{id}.intervention-outcomes"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(waymark::kafka::create_topics(
            &brokers(),
            &topics,
            &waymark::kafka::TopicSpec::new(partitions, 1),
        ))
        .context("creating test topics (is the test broker up? `make test` starts it)")?;
        let dir = tempfile::tempdir()?;
        let http = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("waymark.yaml");
        // Sinks get consumer groups of this scenario's own: a sink another test killed stays a
        // member of a shared group until its session ends, holding up every rebalance.
        let extra = if extra.contains("group-prefix:") {
            extra.to_owned()
        } else if extra.contains("sinks:\n") {
            extra.replacen(
                "sinks:\n",
                &format!("sinks:\n  group-prefix: {id}-sink\n"),
                1,
            )
        } else {
            format!("{extra}\nsinks:\n  group-prefix: {id}-sink\n")
        };
        let extra = if extra.contains("analytics:") {
            extra
        } else {
            format!("{extra}\nanalytics:\n  group-id: {id}-analytics\n  commit-interval-ms: 100\n")
        };
        let yaml = format!(
            "kafka:\n  brokers: {brokers}\n  group-id: {id}\n  transactional-id: {id}\n  group-instance-id: {id}\n  properties: {{{props}}}\ntopics:\n  customer-events: {}\n  journey-events: {}\n  commands-email: {}\n  commands-sms: {}\n  commands-contact-center: {}\n  dead-letters: {}\n  late-events: {}\n  state-changelog: {}\n  intervention-outcomes: {}\njourneys: {}\nstate-dir: {}\nhttp-addr: {http}\ncommit-interval-ms: 100\n{extra}\n",
            topics.customer_events,
            topics.journey_events,
            topics.commands_email,
            topics.commands_sms,
            topics.commands_contact_center,
            topics.dead_letters,
            topics.late_events,
            topics.state_changelog,
            topics.intervention_outcomes,
            reference_journey().display(),
            dir.path().join("state").display(),
            brokers = brokers(),
            props = properties
                .iter()
                .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        std::fs::write(&config, yaml)?;
        Ok(Scenario {
            id,
            topics,
            dir,
            config,
            http,
        })
    }

    /// Produces a JSON-lines file of events to the input topic (Avro, keyed by customer).
    pub fn produce_file(&self, path: &Path) -> Result<u64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        Ok(rt.block_on(waymark::kafka::produce_file(
            &brokers(),
            &self.topics.customer_events,
            &path.display().to_string(),
            file,
            InputFormat::Avro,
            &waymark::registry::Wire::default(),
        ))?)
    }

    /// Generates a loadgen trace of `customers` customers twice — to `<dir>/events.jsonl`
    /// (for simulate) and straight to the input topic (loadgen is deterministic) — and returns
    /// the file.
    pub fn loadgen(&self, customers: &str, seed: &str) -> PathBuf {
        let events = self.dir.path().join("events.jsonl");
        let file = ["--output", events.to_str().unwrap_or_default()];
        let brokers = brokers();
        let kafka = [
            "--brokers",
            brokers.as_str(),
            "--topic",
            self.topics.customer_events.as_str(),
        ];
        for target in [&file[..], &kafka[..]] {
            // With the scenario's config: framed as its `waymark run` reads them.
            run_ok(
                Command::new(waymark_bin())
                    .args(["--config", self.config.to_str().unwrap_or_default()])
                    .args(["loadgen", "--customers", customers, "--seed", seed])
                    .args(target),
            );
        }
        events
    }

    /// Produces raw records (key, value) to the input topic, in order.
    pub fn produce_raw(&self, records: &[(Option<&str>, Vec<u8>)]) -> Result<()> {
        self.produce_to(&self.topics.customer_events, records)
    }

    /// Produces raw records (key, value) to `topic`, in order.
    pub fn produce_to(&self, topic: &str, records: &[(Option<&str>, Vec<u8>)]) -> Result<()> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let producer: FutureProducer =
            waymark::kafka::producer_config(&brokers(), &Default::default()).create()?;
        rt.block_on(async {
            for (key, value) in records {
                let mut r: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(topic).payload(value);
                if let Some(k) = key {
                    r = r.key(*k);
                }
                producer
                    .send(r, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
            Ok(())
        })
    }

    /// Runs this scenario with the journeys at `journeys` (a file or a directory) instead of
    /// the reference journey.
    pub fn use_journeys(&self, journeys: &Path) -> Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let line = format!("journeys: {}", reference_journey().display());
        anyhow::ensure!(
            text.contains(&line),
            "no journeys line in {}",
            self.config.display()
        );
        std::fs::write(
            &self.config,
            text.replace(&line, &format!("journeys: {}", journeys.display())),
        )?;
        Ok(())
    }

    /// `waymark state inspect <customer>` of this scenario's (stopped) processor, with the
    /// journeys at `journeys`: the report, or `None` when no partition holds the customer.
    pub fn inspect(&self, customer: &str, journeys: &Path) -> Option<Value> {
        self.inspect_with(customer, journeys, &[])
    }

    /// [`Scenario::inspect`] with more arguments (e.g. `--protections FILE`).
    pub fn inspect_with(&self, customer: &str, journeys: &Path, more: &[&str]) -> Option<Value> {
        let out = Command::new(waymark_bin())
            .args(["state", "inspect", customer, "--state-dir"])
            .arg(self.dir.path().join("state"))
            .arg("--journeys")
            .arg(journeys)
            .args(more)
            .output()
            .expect("waymark state inspect runs");
        if out.status.success() {
            return Some(serde_json::from_slice(&out.stdout).expect("inspect prints JSON"));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is in none of the"), "{stderr}");
        None
    }

    /// Starts `waymark run` on this scenario's config; its log goes to `<dir>/run-N.log`.
    pub fn start(&self) -> Result<Processor> {
        self.spawn(&[], self.http.clone())
    }

    /// Starts one more instance of `waymark run` in the same consumer group, named `name`:
    /// its own state directory, HTTP port, transactional id and static membership id (the
    /// same `name` again is the same instance restarted).
    pub fn start_instance(&self, name: &str) -> Result<Processor> {
        let http = format!("127.0.0.1:{}", free_port());
        let state = self.dir.path().join(format!("state-{name}"));
        let instance = format!("{}-{name}", self.id);
        let args = [
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--http-addr",
            http.as_str(),
            "--transactional-id",
            instance.as_str(),
            "--group-instance-id",
            instance.as_str(),
        ];
        self.spawn(&args, http.clone())
    }

    fn spawn(&self, run_args: &[&str], http: String) -> Result<Processor> {
        let args: Vec<&str> = std::iter::once("run")
            .chain(run_args.iter().copied())
            .collect();
        self.spawn_command(&args, http)
    }

    /// Starts an instance `name` of `waymark analytics serve` on this scenario's config, with
    /// its database in `<dir>/analytics-<name>` (the same name again resumes from it) and its
    /// HTTP server on a free port, and waits until it is ready.
    pub fn start_analytics(&self, name: &str) -> Result<Processor> {
        let http = format!("127.0.0.1:{}", free_port());
        let state = self.dir.path().join(format!("analytics-{name}"));
        let args = [
            "analytics",
            "serve",
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--http-addr",
            &http,
        ];
        self.spawn_command(&args, http.clone())
    }

    /// Starts `waymark sink <channel>` on this scenario's config, with its log of handled
    /// commands in `<dir>/sink-state` (the same each time: a restarted sink remembers) and
    /// `/readyz` on a free port, and waits until it is ready.
    pub fn start_sink(&self, channel: &str) -> Result<Processor> {
        let http = format!("127.0.0.1:{}", free_port());
        let state = self.dir.path().join("sink-state");
        let args = [
            "sink",
            channel,
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--http-addr",
            &http,
        ];
        self.spawn_command(&args, http.clone())
    }

    /// Starts `waymark --config <scenario config> <args…>` (a long-running subcommand that
    /// serves `/readyz` on `http`) and waits until it is ready.
    pub fn spawn_command(&self, args: &[&str], http: String) -> Result<Processor> {
        let p = self.launch(args, http)?;
        p.wait_ready(Duration::from_secs(60))?;
        Ok(p)
    }

    /// Starts `waymark --config <scenario config> <args…>` and returns at once.
    pub fn launch(&self, args: &[&str], http: String) -> Result<Processor> {
        let n = std::fs::read_dir(self.dir.path())?.count();
        let log_path = self.dir.path().join(format!("{}-{n}.log", args[0]));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(waymark_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", waymark_bin().display()))?;
        Ok(Processor {
            child,
            log: log_path,
            http,
        })
    }

    /// Every output topic's records, read_committed, decoded.
    pub fn read(&self, topics: &[&str], idle: Duration) -> Result<Vec<Value>> {
        let names: Vec<String> = topics.iter().map(|s| s.to_string()).collect();
        let mut buf = Vec::new();
        // Framed as this scenario's `waymark run` frames them (with its schema registry).
        let cfg = waymark::config::Config::load(
            Some(&self.config),
            &waymark::config::Overrides::default(),
        )?;
        let registry =
            waymark::registry::connect(cfg.schema_registry.as_ref()).map_err(anyhow::Error::msg)?;
        let opts = waymark::kafka::TailOptions {
            from_beginning: true,
            idle_exit: Some(idle),
            max_records: None,
            received_at: false,
            wire: waymark::registry::Wire::new(registry),
        };
        waymark::kafka::tail(&brokers(), &self.topics, &names, &opts, &mut buf)?;
        Ok(buf
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect())
    }

    /// The group's committed input offsets, per partition (`None`: nothing committed yet).
    pub fn committed_offsets(&self, partitions: i32) -> Result<Vec<Option<i64>>> {
        committed_offsets(&self.id, &self.topics.customer_events, partitions)
    }

    /// Waits until the group has committed an offset in each of the `partitions` partitions.
    pub fn await_committed_everywhere(&self, partitions: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let offsets = self.committed_offsets(partitions)?;
            if offsets.iter().all(Option::is_some) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("committed offsets after {timeout:?}: {offsets:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every record of `topic` (all partitions, read_committed): key, value and headers.
    pub fn read_raw(&self, topic: &str) -> Result<Vec<RawRecord>> {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let consumer: BaseConsumer = waymark::kafka::client_config(&brokers(), &Default::default())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let mut idle_since = Instant::now();
        while idle_since.elapsed() < Duration::from_secs(2) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_owned(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(RawRecord {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(e)) => bail!("reading {topic}: {e}"),
                None => {}
            }
        }
        Ok(out)
    }

    /// Commands and journey events, read back from Kafka.
    pub fn outputs(&self) -> Result<Vec<Value>> {
        self.read(
            &[
                &self.topics.commands_email,
                &self.topics.commands_sms,
                &self.topics.commands_contact_center,
                &self.topics.journey_events,
            ],
            Duration::from_secs(2),
        )
    }

    /// Starts `waymark run`, waits for `want` outputs (at most 120 s), reads the dead-letter
    /// topic and stops the processor: the outputs and the dead letters.
    pub fn run_to_outputs(&self, want: usize) -> Result<(Vec<Value>, Vec<Value>)> {
        let processor = self.start()?;
        let outputs = self.await_outputs(want, Duration::from_secs(120))?;
        let dead_letters = self.read(&[&self.topics.dead_letters], Duration::from_secs(2))?;
        processor.stop();
        Ok((outputs, dead_letters))
    }

    /// Reads outputs until at least `want` arrived (or `timeout`), then once more after a
    /// pause, so that extra (duplicate) records would be seen too.
    pub fn await_outputs(&self, want: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.outputs()?;
            if got.len() >= want {
                std::thread::sleep(Duration::from_secs(2));
                return self.outputs();
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} output records after {timeout:?}",
                    got.len()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A customer event with these attributes.
pub fn customer_event(
    id: &str,
    customer: &str,
    event_type: &str,
    at: Millis,
    attributes: &[(&str, &str)],
) -> waymark::model::CustomerEvent {
    waymark::model::CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Writes events as the JSON-lines file `simulate` and `produce` read.
pub fn write_events(path: &Path, events: &[waymark::model::CustomerEvent]) -> Result<()> {
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The offsets `group` committed in partitions `0..partitions` of `topic` (`None`: none yet).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = waymark::kafka::client_config(&brokers(), &Default::default())
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect())
}

/// A record as read by [`Scenario::read_raw`].
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Key, as text.
    pub key: Option<String>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers, as text.
    pub headers: BTreeMap<String, String>,
}

/// A running `waymark run` process.
pub struct Processor {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    http: String,
}

impl Processor {
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(body) = http_get(&self.http, "/readyz")
                && body.starts_with("ready")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "waymark run not ready after {timeout:?}; log:\n{}",
            self.log_text()
        )
    }

    /// Where it serves HTTP (`/metrics`, and a sink's callbacks).
    pub fn http_addr(&self) -> &str {
        &self.http
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        http_get(&self.http, "/metrics")
    }

    /// The sum of every sample of a metric (all label sets), 0 if absent or unreachable.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric` reaches at least `min` (or fails after `timeout`).
    pub fn await_metric(&self, name: &str, min: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name);
            if v >= min {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} is {v} after {timeout:?}, want at least {min}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the process dies wherever it is, mid-transaction or not.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the processor with SIGTERM, asserts that it drained and exited 0 within 30 s,
    /// and returns its log.
    pub fn stop(self) -> String {
        let path = self.log.clone();
        let status = self
            .terminate(Duration::from_secs(30))
            .expect("stopping waymark run");
        let log = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            status.success(),
            "waymark run exited with {status} after SIGTERM; log:\n{log}"
        );
        log
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "waymark run did not stop within {timeout:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback (no client dependency needed).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// A plain HTTP/1.0 POST of a JSON body on loopback: the status code and the body.
pub fn http_post_json(addr: &str, path: &str, json: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// `waymark simulate` of a JSON-lines file with the default allowed lateness (5 minutes).
pub fn simulate_file(events: &Path, until: Millis) -> Result<Vec<Value>> {
    simulate_file_with(events, until, 300_000)
}

/// `waymark simulate` of a JSON-lines file, as decoded JSON values.
pub fn simulate_file_with(
    events: &Path,
    until: Millis,
    allowed_lateness: Millis,
) -> Result<Vec<Value>> {
    simulate_journeys(&reference_journey(), None, events, until, allowed_lateness)
}

/// `waymark simulate` of a JSON-lines file with the journeys at `journeys` (a file or a
/// directory) and the protections file `protections`, as decoded JSON values.
pub fn simulate_journeys(
    journeys: &Path,
    protections: Option<&Path>,
    events: &Path,
    until: Millis,
    allowed_lateness: Millis,
) -> Result<Vec<Value>> {
    // The retention `waymark run` uses by default, so both compact the same customers.
    let retention = waymark::config::DEFAULT_RETENTION_SECS as Millis * 1000;
    let protections = match protections {
        Some(p) => waymark::protect::Protections::load(p)?,
        None => Default::default(),
    };
    let engine = Arc::new(
        Engine::new(JourneySet::load(journeys)?)
            .with_retention(Some(retention))
            .with_protections(protections),
    );
    let mut out = Vec::new();
    let opts = SimulateOptions {
        allowed_lateness,
        until: Some(until),
        max_future_skew: 86_400_000,
        progress_every: None,
        // Two engine threads, as the binary runs on these machines: live output is compared
        // with the sharded run (the engine's unit tests check it equals one thread's).
        threads: 2,
    };
    simulate(
        engine,
        std::io::BufReader::new(std::fs::File::open(events)?),
        &mut out,
        &opts,
    )?;
    Ok(out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect())
}

/// The stable id of an output record.
pub fn id_of(v: &Value) -> String {
    let field = if v["kind"] == "command" {
        "command_id"
    } else {
        "journey_event_id"
    };
    v[field].as_str().unwrap_or_default().to_owned()
}

/// Asserts the two sets of outputs are equal: same ids, each exactly once, and the same
/// content field by field.
pub fn assert_same_outputs(kafka: &[Value], simulated: &[Value]) {
    let index = |vs: &[Value]| -> BTreeMap<String, Vec<Value>> {
        let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for v in vs {
            m.entry(id_of(v)).or_default().push(v.clone());
        }
        m
    };
    let k = index(kafka);
    let s = index(simulated);
    let dups: Vec<_> = k
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        dups.is_empty(),
        "{} ids appear more than once in Kafka, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(3)]
    );
    let missing: Vec<_> = s.keys().filter(|id| !k.contains_key(*id)).collect();
    let extra: Vec<_> = k.keys().filter(|id| !s.contains_key(*id)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "Kafka vs simulate: {} missing (e.g. {:?}), {} extra (e.g. {:?})",
        missing.len(),
        missing
            .iter()
            .take(2)
            .map(|id| &s[*id][0])
            .collect::<Vec<_>>(),
        extra.len(),
        extra
            .iter()
            .take(2)
            .map(|id| &k[*id][0])
            .collect::<Vec<_>>()
    );
    for (id, sv) in &s {
        assert_eq!(&k[id][0], &sv[0], "record {id} differs");
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port` (at most 20 s); `what`
/// names it in the error.
fn await_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The loopback SMTP server of `scripts/smtp-server.py` (Debian's aiosmtpd): every accepted
/// message lands in `maildir` as a `.eml` file; recipients starting with `reject` get a `550`.
pub struct SmtpServer {
    child: Child,
    /// Where accepted messages are written.
    pub maildir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl SmtpServer {
    /// Starts the server on `port` and waits until it accepts connections.
    pub fn start(port: u16, maildir: &Path) -> Result<SmtpServer> {
        let child = Command::new("/usr/bin/python3")
            .arg(root().join("scripts/smtp-server.py"))
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(maildir)
            .stdout(Stdio::null())
            .spawn()
            .context(
                "starting scripts/smtp-server.py (is python3-aiosmtpd installed? `make setup`)",
            )?;
        await_listening(port, "the SMTP server")?;
        Ok(SmtpServer {
            child,
            maildir: maildir.to_owned(),
            port,
        })
    }

    /// Every message received so far, oldest first, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.maildir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits until at least `n` messages arrived.
    pub fn await_messages(&self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!("{} of {n} messages after {timeout:?}", got.len());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `scripts/provider-standin.py`: a local stand-in for the SMS and contact-center HTTP APIs
/// that records every request as a JSON line in `log` (nothing is sent).
pub struct ProviderStandIn {
    child: Child,
    /// The request log.
    pub log: PathBuf,
}

impl ProviderStandIn {
    /// Starts it on `port` with `extra` arguments (e.g. `--fail-first 2`) and waits until it
    /// listens.
    pub fn start(port: u16, log: &Path, extra: &[&str]) -> Result<ProviderStandIn> {
        let child = Command::new("python3")
            .arg(root().join("scripts/provider-standin.py"))
            .args(["--port", &port.to_string(), "--log"])
            .arg(log)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("starting scripts/provider-standin.py")?;
        await_listening(port, "the provider stand-in")?;
        Ok(ProviderStandIn {
            child,
            log: log.to_owned(),
        })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ProviderStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET a JSON document from a Waymark HTTP server (panics with the path on failure).
pub fn get_json(addr: &str, path: &str) -> Value {
    serde_json::from_str(&http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}")))
        .unwrap()
}

/// Waits until an analytics view at `addr` has read `want` journey events and every partition
/// it owns to its end; returns its `/api/instance`.
pub fn await_view(addr: &str, want: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let info = http_get(addr, "/api/instance")
            .ok()
            .and_then(|b| serde_json::from_str::<Value>(&b).ok());
        if let Some(info) = &info
            && info["journey_events_total"] == want
            && info["caught_up"] == true
        {
            return info.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the view did not read {want} journey events in {timeout:?}: {info:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `waymark analytics <args…> --url http://<addr>` against a running view.
pub fn analytics_cli(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(waymark_bin())
        .arg("analytics")
        .args(args)
        .arg("--url")
        .arg(format!("http://{addr}"))
        .output()
        .expect("running waymark analytics")
}
