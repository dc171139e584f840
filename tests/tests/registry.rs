//! Upstream Avro records of a shape of their own, written in the Confluent wire format with
//! their schemas in a real Confluent-compatible registry (Apicurio, started by
//! `scripts/registry.sh`), mapped by `input-mapping` on the real broker:
//! - while the registry is unreachable nothing is dead-lettered: the pipeline restarts from
//!   its last commit and reads the records again later;
//! - once it is reachable the output equals `simulate` over the same records mapped by the
//!   same mapping, with two schema versions in one topic;
//! - a record whose schema id the registry does not know, and one that is not framed, go to
//!   the dead-letter topic with the reason;
//! - Waymark's own records (commands, journey events, the email sink's outcomes) are in the
//!   Confluent wire format, their schemas registered under `<topic>-value`, and the email
//!   sink reads the commands through the registry;
//! - `waymark simulate --from-topic` with the same config reads the topic as `run` does;
//! - `waymark loadgen --config` frames `CustomerEvent`s with the registry, `run` reads them,
//!   and the analytics view reads the framed journey events.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use waymark::codec::{InputMapping, LookupError, SchemaLookup};
use waymark::registry::{RegistryConfig, SchemaRegistry};
use waymark_e2e::*;

/// The registry's Confluent-compatible API (`make test` starts it; see scripts/registry.sh).
fn registry_url() -> String {
    std::env::var("WAYMARK_TEST_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:18081/apis/ccompat/v7".into())
}

/// Registers `schema` under `subject` through the registry's REST API; its id.
fn register(subject: &str, schema: &str) -> Result<u32> {
    let url = registry_url();
    let rest = url
        .strip_prefix("http://")
        .context("the test registry URL is http://")?;
    let (addr, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let body = serde_json::json!({ "schema": schema }).to_string();
    let (code, answer) =
        http_post_json(addr, &format!("{base}/subjects/{subject}/versions"), &body)
            .context("registering a schema (is the registry up? scripts/registry.sh start)")?;
    if code != 200 {
        bail!("registering under {subject}: {code} {answer}");
    }
    let id: serde_json::Value = serde_json::from_str(&answer)?;
    id["id"].as_u64().map(|i| i as u32).context("no id")
}

/// A registry whose schema lookups fail (503) while everything else is passed on to the real
/// one: Waymark registers its output schemas and starts, then cannot read an input record.
/// Returns the base URL to configure.
fn registry_with_failing_lookups() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let real = registry_url();
    let rest = real.strip_prefix("http://").unwrap().to_owned();
    let (upstream, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (upstream, base) = (upstream.to_owned(), base.to_owned());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { return };
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
                if !line.to_ascii_lowercase().starts_with("connection:") {
                    head.push_str(&line);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            if head.contains("/schemas/ids/") {
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\nConnection: close\r\n\r\nmaintenance",
                );
                continue;
            }
            let head = head.replacen(" /", &format!(" {base}/"), 1);
            let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = up.write_all(head.as_bytes());
            let _ = up.write_all(b"Connection: close\r\n\r\n");
            let _ = up.write_all(&body);
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer);
            let _ = client.write_all(&answer);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// An upstream CRM's account activity, version 1.
const ACTIVITY_V1: &str = r#"{"type":"record","name":"AccountActivity","namespace":"com.acme.crm","fields":[
  {"name":"activity_id","type":"string"},
  {"name":"kind","type":"string"},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
  {"name":"account","type":{"type":"record","name":"Account","fields":[
    {"name":"id","type":"string"},
    {"name":"email","type":["null","string"],"default":null},
    {"name":"owner","type":["null","string"],"default":null}]}}]}"#;

/// Version 2 adds a field; producers of both versions write to the same topic.
fn activity_v2() -> String {
    ACTIVITY_V1.replace(
        r#"{"name":"kind","type":"string"},"#,
        r#"{"name":"kind","type":"string"},{"name":"channel","type":"string","default":"web"},"#,
    )
}

const MAPPING: &str = "  customer-id: /account/id\n  event-type: /kind\n  occurred-at: /at\n  event-id: /activity_id\n  attributes:\n    email: /account/email\n    sales_rep: /account/owner\n";

fn config(registry: &str, smtp_port: u16) -> String {
    format!(
        "allowed-lateness-secs: 1\nschema-registry:\n  url: {registry}\n  retry-secs: 1\ninput-mapping:\n{MAPPING}sinks:\n  email:\n    smtp-port: {smtp_port}\n    templates: {}\n",
        root().join("deploy/templates/email").display()
    )
}

/// The id the registry holds for the latest version of `subject`.
fn latest_id(subject: &str) -> Result<u32> {
    let url = registry_url();
    let rest = url.strip_prefix("http://").context("http:// registry")?;
    let (addr, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let body = http_get(addr, &format!("{base}/subjects/{subject}/versions/latest"))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["id"].as_u64().map(|i| i as u32).context("no id")
}

/// The schema id of a Confluent-framed value.
fn framed_id(value: &[u8]) -> u32 {
    assert_eq!(value[0], 0, "magic byte");
    u32::from_be_bytes(value[1..5].try_into().unwrap())
}

/// One activity in the Confluent wire format of schema `id`.
fn activity(schema: &Schema, id: u32, v2: bool, n: usize, kind: &str, at: i64) -> Vec<u8> {
    let customer = format!("acct-{n}");
    let mut fields = vec![
        (
            "activity_id".to_owned(),
            Avro::String(format!("{customer}-{kind}")),
        ),
        ("kind".to_owned(), Avro::String(kind.to_owned())),
    ];
    if v2 {
        fields.push(("channel".to_owned(), Avro::String("app".into())));
    }
    fields.push(("at".to_owned(), Avro::TimestampMicros(at * 1_000)));
    let email = Avro::Union(1, Box::new(Avro::String(format!("{customer}@example.com"))));
    let owner = if n.is_multiple_of(2) {
        Avro::Union(1, Box::new(Avro::String("rep-7".into())))
    } else {
        Avro::Union(0, Box::new(Avro::Null))
    };
    fields.push((
        "account".to_owned(),
        Avro::Record(vec![
            ("id".to_owned(), Avro::String(customer)),
            ("email".to_owned(), email),
            ("owner".to_owned(), owner),
        ]),
    ));
    let datum = apache_avro::to_avro_datum(schema, Avro::Record(fields)).unwrap();
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&datum);
    bytes
}

#[test]
fn avro_records_with_a_registry_are_mapped_and_equal_simulate_and_an_outage_loses_nothing() {
    let subject = unique("crm-activity");
    let v1_id = register(&format!("{subject}-value"), ACTIVITY_V1).unwrap();
    let v2_text = activity_v2();
    let v2_id = register(&format!("{subject}-value"), &v2_text).unwrap();
    assert_ne!(v1_id, v2_id);
    let v1 = Schema::parse_str(ACTIVITY_V1).unwrap();
    let v2 = Schema::parse_str(&v2_text).unwrap();

    // The client against the real registry: both schemas by id, and an id it does not know.
    let client = SchemaRegistry::new(&RegistryConfig::at(&registry_url())).unwrap();
    assert_eq!(
        client.writer_schema(v2_id).unwrap().canonical_form(),
        v2.canonical_form()
    );
    let unknown_id = 987_654;
    assert_eq!(
        client.writer_schema(unknown_id).unwrap_err(),
        LookupError::Unknown
    );

    let now = now_millis();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0..40usize {
        let (schema, id, is_v2) = if n.is_multiple_of(2) {
            (&v1, v1_id, false)
        } else {
            (&v2, v2_id, true)
        };
        let login = now - 10 * 86_400_000 + n as i64 * 60_000;
        let key = format!("acct-{n}");
        records.push((
            key.clone(),
            activity(schema, id, is_v2, n, "login.created", login),
        ));
        if n.is_multiple_of(3) {
            records.push((
                key,
                activity(
                    schema,
                    id,
                    is_v2,
                    n,
                    "payment_account.created",
                    login + 1_800_000,
                ),
            ));
        }
    }
    let mapping: InputMapping = parse_mapping(MAPPING).expect("the test mapping parses");
    let mapped: Vec<_> = records
        .iter()
        .map(|(_, v)| mapping.decode_avro(v, &client).unwrap())
        .collect();
    assert_eq!(mapped[0].occurred_at, now - 10 * 86_400_000, "micros → ms");
    assert_eq!(mapped[0].attributes["sales_rep"], "rep-7");

    let smtp_port = free_port();
    let scenario = Scenario::new("registry", 2, &config(&registry_url(), smtp_port)).unwrap();
    let mut raw: Vec<(Option<&str>, Vec<u8>)> = records
        .iter()
        .map(|(k, v)| (Some(k.as_str()), v.clone()))
        .collect();
    let mut unknown = records[0].1.clone();
    unknown[1..5].copy_from_slice(&unknown_id.to_be_bytes());
    raw.push((Some("acct-0"), unknown));
    raw.push((Some("acct-0"), br#"{"kind":"login.created"}"#.to_vec()));
    scenario.produce_raw(&raw).unwrap();

    let file = scenario.dir.path().join("mapped.jsonl");
    write_events(&file, &mapped).unwrap();
    let simulated = simulate_journeys(&reference_journey(), None, &file, now, 1_000).unwrap();
    assert!(simulated.iter().any(|v| v["kind"] == "command"));

    // 1. The registry cannot be asked for schemas: the pipeline restarts and dead-letters
    //    nothing, and the record it could not read is read again later.
    let good = std::fs::read_to_string(&scenario.config).unwrap();
    let failing = registry_with_failing_lookups();
    std::fs::write(&scenario.config, good.replace(&registry_url(), &failing)).unwrap();
    let processor = scenario.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processor.log_text().contains("Restarting the") {
        assert!(
            Instant::now() < deadline,
            "no restart in 60 s:\n{}",
            processor.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = processor.stop();
    assert!(
        log.contains("Schema registered.") && log.contains("answered 503: maintenance"),
        "{log}"
    );
    let nothing = scenario
        .read(
            &[
                &scenario.topics.dead_letters,
                &scenario.topics.journey_events,
            ],
            Duration::from_secs(2),
        )
        .unwrap();
    assert!(nothing.is_empty(), "{nothing:?}");

    // 2. The registry is back: everything is read, as simulate says.
    std::fs::write(&scenario.config, &good).unwrap();
    let (kafka, dlq) = scenario.run_to_outputs(simulated.len()).unwrap();
    assert_same_outputs(&kafka, &simulated);
    assert!(
        kafka
            .iter()
            .any(|v| v["kind"] == "command" && v["params"]["assignee"] == "rep-7"),
        "a field inside a union fills the command"
    );
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let messages: Vec<&str> = dlq
        .iter()
        .map(|d| {
            d["headers"]["waymark.error.message"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("unknown schema id {unknown_id}"))),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("magic byte 0x7b")),
        "{messages:?}"
    );

    // Waymark's own records are in the Confluent wire format too, their schemas registered
    // under `<topic>-value` (so the reads above decoded them through the registry).
    for (topic, record) in [
        (&scenario.topics.commands_email, "InterventionCommand"),
        (&scenario.topics.journey_events, "JourneyEvent"),
    ] {
        let id = latest_id(&format!("{topic}-value")).unwrap();
        assert_eq!(
            client.writer_schema(id).unwrap().name().unwrap().name,
            record
        );
        let raw = scenario.read_raw(topic).unwrap();
        assert!(!raw.is_empty());
        assert!(raw.iter().all(|r| framed_id(&r.value) == id), "{topic}");
    }

    // The email sink reads the framed commands and writes framed outcomes.
    let emails = kafka
        .iter()
        .filter(|v| v["kind"] == "command" && v["channel"] == "email")
        .count();
    assert!(emails > 0);
    let smtp = SmtpServer::start(smtp_port, &scenario.dir.path().join("mail")).unwrap();
    let sink = scenario.start_sink("email").unwrap();
    smtp.await_messages(emails, Duration::from_secs(60))
        .unwrap();
    sink.stop();
    let outcomes = scenario
        .read_raw(&scenario.topics.intervention_outcomes)
        .unwrap();
    let outcome_id =
        latest_id(&format!("{}-value", scenario.topics.intervention_outcomes)).unwrap();
    assert_eq!(outcomes.len(), emails);
    for o in &outcomes {
        assert_eq!(framed_id(&o.value), outcome_id);
        let outcome: waymark::model::InterventionOutcome = waymark::codec::decode(
            &o.value,
            waymark::codec::Framing::Confluent { schema_id: 0 },
            &client,
        )
        .unwrap();
        assert_eq!(outcome.status, "delivered");
    }

    // 3. `simulate --from-topic` with the same config reads the topic as `run` does.
    let until = waymark::model::format_millis(now);
    let out = std::process::Command::new(waymark_bin())
        .args(["--config", scenario.config.to_str().unwrap()])
        .args([
            "simulate",
            "--journeys",
            reference_journey().to_str().unwrap(),
        ])
        .args(["--from-topic", &scenario.topics.customer_events])
        .args(["--brokers", &brokers(), "--until", &until])
        .args(["--allowed-lateness", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("history: {} events", records.len()))
            && stderr.contains("(2 records skipped as undecodable)"),
        "{stderr}"
    );
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_same_outputs(&replayed, &simulated);
}

/// The mapping as `input-mapping:` holds it.
fn parse_mapping(yaml: &str) -> Result<InputMapping> {
    let cfg_text = format!("input-format: json\ninput-mapping:\n{yaml}");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, cfg_text)?;
    let cfg = waymark::config::Config::load(Some(&path), &waymark::config::Overrides::default())?;
    cfg.input_mapping.context("no mapping")
}

#[test]
fn customer_events_framed_by_loadgen_are_read_by_run_and_the_view_reads_framed_journey_events() {
    let config = format!("schema-registry:\n  url: {}\n", registry_url());
    let scenario = Scenario::new("registry-events", 2, &config).unwrap();
    let events = scenario.loadgen("300", "7");
    let id = latest_id(&format!("{}-value", scenario.topics.customer_events)).unwrap();
    let raw = scenario.read_raw(&scenario.topics.customer_events).unwrap();
    assert!(raw.len() > 300);
    assert!(raw.iter().all(|r| framed_id(&r.value) == id));

    let simulated = simulate_file(&events, now_millis()).unwrap();
    let (kafka, dlq) = scenario.run_to_outputs(simulated.len()).unwrap();
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_same_outputs(&kafka, &simulated);

    let journey_events = simulated
        .iter()
        .filter(|v| v["kind"] == "journey_event")
        .count() as u64;
    let view = scenario.start_analytics("a").unwrap();
    await_view(view.http_addr(), journey_events, Duration::from_secs(60));
    view.stop();
}
