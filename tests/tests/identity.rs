//! Identity aliases on the real broker: `identity.alias` events keyed by the alias move its
//! history to the canonical customer's partition through the input topic (in the alias
//! record's transaction), later events of the alias follow it, and what is committed equals
//! `simulate` over the same events. `state inspect` shows both ends of the merge, and
//! `simulate --from-topic` skips Waymark's own forward records.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use waymark::runtime::{ALIAS_CANONICAL_ATTRIBUTE, ALIAS_EVENT_TYPE};
use waymark_e2e::*;

const M: i64 = 60_000;

fn alias(id: &str, alias: &str, canonical: &str, at: i64) -> waymark::model::CustomerEvent {
    customer_event(
        id,
        alias,
        ALIAS_EVENT_TYPE,
        at,
        &[(ALIAS_CANONICAL_ATTRIBUTE, canonical)],
    )
}

#[test]
fn aliases_merge_across_partitions_and_equal_simulate() {
    let scenario = Scenario::new("identity", 4, "allowed-lateness-secs: 1").unwrap();
    // Commands are due an hour after a login, later than the test runs: what is committed
    // (journey events) does not depend on when the wall clock fires timers.
    let t = now_millis() - 20 * M;
    let mut events = Vec::new();
    for i in 0..6 {
        let (a, c) = (format!("acct-{i}"), format!("cust-{i}"));
        events.push(customer_event(
            &format!("{a}-login"),
            &a,
            "login.created",
            t,
            &[("email", "x@example.com")],
        ));
        if i % 2 == 0 {
            // The canonical customer has the payment account; the alias had the login.
            events.push(customer_event(
                &format!("{c}-pay"),
                &c,
                "payment_account.created",
                t + 2 * M,
                &[],
            ));
            events.push(alias(&format!("{a}-alias"), &a, &c, t + 4 * M));
        } else {
            // The payment account is published under the alias after the merge.
            events.push(alias(&format!("{a}-alias"), &a, &c, t + M));
            events.push(customer_event(
                &format!("{a}-pay"),
                &a,
                "payment_account.created",
                t + 5 * M,
                &[],
            ));
        }
    }
    // A second canonical id for an alias is refused.
    events.push(alias("conflict", "acct-0", "cust-9", t + 6 * M));
    events.sort_by_key(|e| e.occurred_at);
    let file = scenario.dir.path().join("events.jsonl");
    write_events(&file, &events).unwrap();
    scenario.produce_file(&file).unwrap();

    // Per pair: the alias entered (completing the login step) and exited as merged; the
    // canonical customer entered (login) and completed the payment account step.
    let want = 6 * 6;
    let processor = scenario.start().unwrap();
    let outputs = scenario
        .await_outputs(want, Duration::from_secs(120))
        .unwrap();
    processor
        .await_metric(
            "waymark_pipeline_events_total{result=\"merged\",type=\"identity.alias\"}",
            12.0,
            Duration::from_secs(30),
        )
        .unwrap();
    let dead_lettered = processor.await_metric(
        "waymark_pipeline_dead_letters_total{reason=\"identity\"}",
        1.0,
        Duration::from_secs(30),
    );
    let log = processor.stop();
    dead_lettered.unwrap();
    let dead_letters = scenario.read_raw(&scenario.topics.dead_letters).unwrap();

    let simulated = simulate_file_with(&file, now_millis(), 1000).unwrap();
    assert_eq!(simulated.len(), want, "{simulated:#?}");
    assert_same_outputs(&outputs, &simulated);
    assert!(
        !outputs.iter().any(|o| o["kind"] == "command"),
        "no payment-account nudge for anyone: {outputs:#?}"
    );
    let merged_exits = outputs
        .iter()
        .filter(|o| o["type"] == "exited" && o["reason"] == "merged")
        .count();
    assert_eq!(merged_exits, 6);

    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}\n{log}");
    let header = |name: &str| {
        dead_letters[0]
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("waymark.error.code"), "identity");
    assert!(
        header("waymark.error.message").contains("`acct-0` is an alias of `cust-0`"),
        "{}",
        header("waymark.error.message")
    );

    // The histories crossed partitions through the input topic, as forward records.
    let forwards: Vec<_> = scenario
        .read_raw(&scenario.topics.customer_events)
        .unwrap()
        .into_iter()
        .filter(|r| r.headers.iter().any(|(k, _)| k == "waymark.forward"))
        .collect();
    let merges = forwards
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.value).contains("\"merge\""))
        .count();
    assert_eq!(merges, 6, "one history per alias");
    let mut crossed = 0;
    for i in 0..6 {
        let a = scenario
            .inspect(&format!("acct-{i}"), &reference_journey())
            .unwrap();
        let c = scenario
            .inspect(&format!("cust-{i}"), &reference_journey())
            .unwrap();
        assert_eq!(a["merged_into"]["customer_id"], format!("cust-{i}"), "{a}");
        assert_eq!(a["events"].as_array().unwrap().len(), 0, "{a}");
        assert_eq!(
            c["merged_from"][0]["customer_id"],
            format!("acct-{i}"),
            "{c}"
        );
        let steps = &c["explanation"]["journeys"][0]["instances"][0]["steps"];
        assert!(
            steps[1]["step"] == "payment_account" && steps[1]["completed_at"].is_string(),
            "{c}"
        );
        crossed += usize::from(a["partition_dir"] != c["partition_dir"]);
    }
    assert!(
        crossed > 0,
        "some alias and its canonical customer are on different partitions"
    );

    // Replaying the topic skips the forward records: simulate makes them again.
    let out = Command::new(waymark_bin())
        .args(["simulate", "--journeys"])
        .arg(reference_journey())
        .args([
            "--from-topic",
            &scenario.topics.customer_events,
            "--brokers",
            &brokers(),
        ])
        .args(["--allowed-lateness", "1s", "--until"])
        .arg(waymark::model::format_millis(now_millis()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} identity-merge records skipped",
            forwards.len()
        )),
        "{stderr}"
    );
    let ids = |vs: &[serde_json::Value]| vs.iter().map(id_of).collect::<BTreeSet<_>>();
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&replayed), ids(&simulated));
}
