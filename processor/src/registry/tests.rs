//! The client against an HTTP server that answers as the registry's documented REST API does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Mutex;

use super::*;

/// One request the server saw: method, path, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A registry on loopback that answers each request with the next of `answers` (status,
/// body), the last one for every request after it; returns its URL and what it saw.
fn registry(answers: Vec<(u16, String)>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or_default().to_owned();
            let path = parts.next().unwrap_or_default().to_owned();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (name, value) = h.split_once(':').unwrap();
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
            let length = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            log.lock().unwrap().push(Seen {
                method,
                path,
                headers,
                body,
            });
            let (status, body) = answers[n.min(answers.len() - 1)].clone();
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    (url, seen)
}

const ORDER_SCHEMA: &str = r#"{"type":"record","name":"Order","namespace":"com.acme","fields":[{"name":"id","type":"string"}]}"#;

/// The registry's answer to `GET /schemas/ids/{id}` for `schema`.
fn found(schema: &str) -> (u16, String) {
    (200, serde_json::json!({ "schema": schema }).to_string())
}

fn client(url: &str, retry_secs: u64) -> SchemaRegistry {
    SchemaRegistry::new(&RegistryConfig {
        url: url.to_owned(),
        timeout_secs: 5,
        retry_secs,
    })
    .unwrap()
}

#[test]
fn a_schema_is_fetched_by_id_once_with_the_registry_media_type() {
    let (url, seen) = registry(vec![found(ORDER_SCHEMA)]);
    let registry = client(&format!("{url}/apis/ccompat/v7/"), 0);
    let schema = registry.writer_schema(7).unwrap();
    assert_eq!(schema.name().unwrap().fullname(None), "com.acme.Order");
    // Ids are immutable: the second lookup is served from the cache.
    assert_eq!(*registry.writer_schema(7).unwrap(), *schema);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/apis/ccompat/v7/schemas/ids/7");
    assert_eq!(seen[0].header("accept"), Some(MEDIA_TYPE));
    assert_eq!(seen[0].header("authorization"), None);
}

#[test]
fn credentials_in_the_url_become_basic_authentication_and_are_never_shown() {
    let (url, seen) = registry(vec![found(ORDER_SCHEMA)]);
    let with_user = url.replace("http://", "http://waymark:s3cret@");
    let registry = client(&with_user, 0);
    registry.writer_schema(1).unwrap();
    assert_eq!(
        seen.lock().unwrap()[0].header("authorization"),
        Some("Basic d2F5bWFyazpzM2NyZXQ="),
        "base64 of waymark:s3cret"
    );
    assert!(!registry.url().contains("s3cret"));
    assert!(!format!("{registry:?}").contains("s3cret"));
    assert_eq!(
        redact("https://waymark:s3cret@registry:8081/x"),
        "https://waymark:***@registry:8081/x"
    );
    assert_eq!(redact("http://registry:8081"), "http://registry:8081");
}

#[test]
fn an_id_the_registry_does_not_know_is_unknown_not_unavailable() {
    let body = r#"{"error_code":40403,"message":"Schema 9 not found"}"#;
    let (url, seen) = registry(vec![(404, body.to_owned())]);
    let err = client(&url, 30).writer_schema(9).unwrap_err();
    assert_eq!(err, LookupError::Unknown);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a 404 is an answer: no retry"
    );
}

#[test]
fn an_unavailable_registry_is_retried_with_backoff_until_it_answers() {
    let (url, seen) = registry(vec![
        (503, "down".to_owned()),
        (500, "still down".to_owned()),
        found(ORDER_SCHEMA),
    ]);
    let schema = client(&url, 30).writer_schema(3).unwrap();
    assert_eq!(schema.name().unwrap().name, "Order");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn a_registry_that_stays_unavailable_is_reported_as_such_after_the_retry_time() {
    let (url, seen) = registry(vec![(503, "maintenance".to_owned())]);
    let err = client(&url, 0).writer_schema(3).unwrap_err();
    match err {
        LookupError::Unavailable(reason) => {
            assert!(
                reason.contains("503") && reason.contains("maintenance"),
                "{reason}"
            )
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Nobody listening at all. On 127.0.0.2: the fake registries of tests running beside this
    // one listen on 127.0.0.1, and one of them may be given this port as soon as it is freed.
    let closed = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = client(&format!("http://{addr}"), 0)
        .writer_schema(1)
        .unwrap_err();
    assert!(
        matches!(&err, LookupError::Unavailable(r) if r.contains("cannot reach")),
        "{err:?}"
    );
}

#[test]
fn a_schema_waymark_cannot_use_is_unusable_and_says_why() {
    let protobuf = serde_json::json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"});
    let referencing = serde_json::json!({
        "schema": ORDER_SCHEMA,
        "references": [{"name": "com.acme.Item", "subject": "item", "version": 1}]
    });
    for (answer, says) in [
        (protobuf.to_string(), "PROTOBUF schema, not Avro"),
        (referencing.to_string(), "schema references"),
        (
            serde_json::json!({"schema": "{\"type\":\"nope\"}"}).to_string(),
            "does not parse",
        ),
    ] {
        let (url, _) = registry(vec![(200, answer)]);
        match client(&url, 0).writer_schema(1).unwrap_err() {
            LookupError::Unusable(reason) => assert!(reason.contains(says), "{reason}"),
            other => panic!("expected unusable ({says}), got {other:?}"),
        }
    }
    // An explicit AVRO type is fine.
    let avro = serde_json::json!({"schema": ORDER_SCHEMA, "schemaType": "AVRO"});
    let (url, _) = registry(vec![(200, avro.to_string())]);
    client(&url, 0).writer_schema(1).unwrap();
}

#[test]
fn a_url_that_is_not_a_registry_url_is_refused_naming_the_setting() {
    for (url, says) in [
        ("registry:8081", "not an http:// or https:// URL"),
        ("ftp://registry", "scheme `ftp`"),
        ("http://", "names no host"),
        ("http://u:pw@", "names no host"),
    ] {
        let err = RegistryConfig::at(url).validate().unwrap_err();
        assert!(
            err.starts_with("schema-registry.url") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("pw@"), "{err}");
    }
    let mut cfg = RegistryConfig::at("https://registry:8081");
    cfg.timeout_secs = 0;
    assert!(cfg.validate().unwrap_err().contains("timeout-secs"));
    assert_eq!(
        Endpoint::parse("https://registry:8081/").unwrap().base,
        "https://registry:8081"
    );
}

#[test]
fn a_schema_is_registered_under_its_subject_and_kept_for_reading() {
    let (url, seen) = registry(vec![(200, r#"{"id":12}"#.to_owned())]);
    let registry = client(&url, 0);
    assert_eq!(registry.register("orders-value", ORDER_SCHEMA).unwrap(), 12);
    // What was registered is read back without asking.
    let schema = registry.writer_schema(12).unwrap();
    assert_eq!(schema.name().unwrap().name, "Order");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/subjects/orders-value/versions");
    assert_eq!(seen[0].header("content-type"), Some(MEDIA_TYPE));
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["schema"], ORDER_SCHEMA);
}

#[test]
fn a_schema_the_registry_refuses_is_unusable_with_the_registry_s_reason() {
    let refusal = r#"{"error_code":409,"message":"Schema being registered is incompatible"}"#;
    let (url, seen) = registry(vec![(409, refusal.to_owned())]);
    match client(&url, 30).register("orders-value", ORDER_SCHEMA) {
        Err(LookupError::Unusable(reason)) => assert!(
            reason.contains("orders-value") && reason.contains("incompatible"),
            "{reason}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "a refusal is not retried");
    let (url, _) = registry(vec![(503, "down".to_owned())]);
    assert!(matches!(
        client(&url, 0).register("orders-value", ORDER_SCHEMA),
        Err(LookupError::Unavailable(_))
    ));
}

fn command() -> crate::model::InterventionCommand {
    crate::model::InterventionCommand {
        command_id: "c-1".into(),
        journey: "j".into(),
        journey_version: 1,
        customer_id: "c".into(),
        instance: 1,
        rule: "r".into(),
        action: "a".into(),
        channel: crate::model::Channel::Email,
        due_at: 1,
        template: None,
        variant: None,
        params: Default::default(),
        attributes: Default::default(),
    }
}

#[test]
fn the_wire_frames_waymark_s_records_with_the_id_registered_for_their_topic() {
    use crate::model::InterventionCommand;
    // Without a registry: bare datums.
    let raw = Wire::default();
    let bytes = raw.encode("commands.email", &command()).unwrap();
    assert_eq!(bytes, codec::encode_command(&command()).unwrap());
    assert_eq!(
        raw.decode::<InterventionCommand>(&bytes).unwrap(),
        command()
    );

    let (url, seen) = registry(vec![(200, r#"{"id":5}"#.to_owned())]);
    let mut wire = Wire::new(Some(Arc::new(client(&url, 0))));
    wire.register::<InterventionCommand>("commands.email")
        .unwrap();
    // Once per topic.
    wire.register::<InterventionCommand>("commands.email")
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        seen.lock().unwrap()[0].path,
        "/subjects/commands.email-value/versions"
    );
    let framed = wire.encode("commands.email", &command()).unwrap();
    assert_eq!(framed[..5], [0, 0, 0, 0, 5]);
    assert_eq!(framed[5..], bytes[..]);
    assert_eq!(
        wire.decode::<InterventionCommand>(&framed).unwrap(),
        command()
    );
    // A topic nothing was registered for is a bug, reported as such.
    let err = wire.encode("commands.sms", &command()).unwrap_err();
    assert!(
        err.to_string()
            .contains("no schema registered for topic commands.sms"),
        "{err}"
    );
}
