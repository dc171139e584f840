//! `waymark topics create` against the real broker: the topic configs an operator gives
//! (`--topic-config` for every topic, `--changelog-config` for the state changelog) are what
//! the broker holds; a changelog that would delete state, and configs the broker refuses, stop
//! with a message saying what to change, before or without creating anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use waymark_e2e::*;

/// A config file naming topics of this test's own under `id` (the topics are not created).
fn topics_file(dir: &tempfile::TempDir, id: &str) -> PathBuf {
    let path = dir.path().join("waymark.yaml");
    let keys = [
        "customer-events",
        "journey-events",
        "commands-email",
        "commands-sms",
        "commands-contact-center",
        "dead-letters",
        "late-events",
        "state-changelog",
        "intervention-outcomes",
    ];
    let yaml: String = keys.iter().map(|k| format!("  {k}: {id}.{k}\n")).collect();
    std::fs::write(&path, format!("topics:\n{yaml}")).unwrap();
    path
}

/// `waymark --config <file> topics create --brokers <test broker> <args>`: success, stderr.
fn create(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(waymark_bin())
        .arg("--config")
        .arg(config)
        .args(["topics", "create", "--brokers", &brokers()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The configs the broker holds for `topic`.
fn configs(topic: &str) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> =
        waymark::kafka::client_config(&brokers(), &Default::default())
            .create()
            .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    let resource = results
        .into_iter()
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("describing {topic}: {e}"));
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// The topics of the broker whose names start with `prefix`, with their partition counts.
fn topics_named(prefix: &str) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = waymark::kafka::client_config(&brokers(), &Default::default())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .unwrap();
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect()
}

#[test]
fn topic_configs_reach_the_broker_and_the_changelog_stays_compacted() {
    let id = unique("topics");
    let dir = tempfile::tempdir().unwrap();
    let config = topics_file(&dir, &id);
    let (ok, stderr) = create(
        &config,
        &[
            "--partitions",
            "2",
            "--topic-config",
            "retention.ms=3600000",
            "--topic-config",
            "cleanup.policy=delete",
            "--changelog-config",
            "segment.bytes=134217728",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("created 12 topics"), "{stderr}");
    let created = topics_named(&id);
    assert_eq!(created.len(), 12, "{created:?}");
    assert!(created.values().all(|&p| p == 2), "{created:?}");

    let changelog = configs(&format!("{id}.state-changelog"));
    assert_eq!(changelog["segment.bytes"], "134217728");
    assert_eq!(changelog["retention.ms"], "3600000");
    assert_eq!(
        changelog["cleanup.policy"], "compact",
        "--topic-config cleanup.policy does not reach the changelog"
    );
    let input = configs(&format!("{id}.customer-events"));
    assert_eq!(input["retention.ms"], "3600000");
    assert_eq!(input["cleanup.policy"], "delete");
    assert_ne!(
        input["segment.bytes"], "134217728",
        "--changelog-config is the changelog's alone"
    );

    // A second run leaves the existing topics, and their configs, alone.
    let (ok, stderr) = create(&config, &["--changelog-config", "segment.bytes=67108864"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("created 0 topics"), "{stderr}");
    assert_eq!(
        configs(&format!("{id}.state-changelog"))["segment.bytes"],
        "134217728"
    );
}

#[test]
fn a_changelog_that_would_delete_state_is_refused_before_anything_is_created() {
    let id = unique("topics-delete");
    let dir = tempfile::tempdir().unwrap();
    let config = topics_file(&dir, &id);
    let (ok, stderr) = create(&config, &["--changelog-config", "cleanup.policy=delete"]);
    assert!(!ok);
    assert!(
        stderr.contains("the state changelog must be `cleanup.policy=compact` (got `delete`)"),
        "{stderr}"
    );
    assert_eq!(topics_named(&id), BTreeMap::new());
}

#[test]
fn configs_the_broker_refuses_and_malformed_ones_say_what_to_fix() {
    let id = unique("topics-bad");
    let dir = tempfile::tempdir().unwrap();
    let config = topics_file(&dir, &id);
    let (ok, stderr) = create(&config, &["--changelog-config", "segment.bytes=lots"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "the broker refused the configs of topic {id}.state-changelog"
        )) && stderr.contains("segment.bytes")
            && stderr.contains("--changelog-config"),
        "{stderr}"
    );
    assert_eq!(
        topics_named(&id),
        BTreeMap::new(),
        "validated first: nothing created"
    );

    let (ok, stderr) = create(&config, &["--topic-config", "retention.ms"]);
    assert!(!ok);
    assert!(
        stderr.contains("`retention.ms` is not KEY=VALUE"),
        "{stderr}"
    );
}
