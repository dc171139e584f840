//! What an SRE scrapes and ships: after the golden trace went through `waymark run`, every
//! metric family has the value the trace implies (counted from `waymark simulate`), and the
//! JSON logs carry their spans' fields and no customer contact data.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use waymark::telemetry::*;
use waymark_e2e::*;

/// `name{labels} value` lines of a metric, as (labels, value).
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, v) = r.split_once("} ")?;
                (labels.to_owned(), v)
            } else {
                (String::new(), rest.strip_prefix(' ')?)
            };
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name)
        .into_iter()
        .find(|(l, _)| l == labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
        .1
}

fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

#[test]
fn every_metric_family_reports_what_the_golden_trace_did_and_logs_are_json_with_spans() {
    let golden = golden_dir().join("events.jsonl");
    let scenario = Scenario::new("metrics", 3, "").unwrap();
    let records = scenario.produce_file(&golden).unwrap();
    let started = Instant::now();
    let processor = scenario
        .spawn_command(&["run", "--log-format", "json"], scenario.http.clone())
        .unwrap();
    let simulated = simulate_file(&golden, now_millis()).unwrap();
    scenario
        .await_outputs(simulated.len(), Duration::from_secs(120))
        .unwrap();
    let commands: Vec<&Value> = simulated
        .iter()
        .filter(|v| v["kind"] == "command")
        .collect();
    let mut by_action: BTreeMap<String, f64> = BTreeMap::new();
    for c in &commands {
        let key = format!(
            "action=\"{}\",channel=\"{}\",journey=\"{}\"",
            c["action"].as_str().unwrap(),
            c["channel"].as_str().unwrap(),
            c["journey"].as_str().unwrap()
        );
        *by_action.entry(key).or_default() += 1.0;
    }
    let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
    for e in simulated.iter().filter(|v| v["kind"] == "journey_event") {
        let key = format!(
            "journey=\"{}\",type=\"{}\"",
            e["journey"].as_str().unwrap(),
            e["type"].as_str().unwrap()
        );
        *by_type.entry(key).or_default() += 1.0;
    }

    // Gauges sampled on their own clocks (statistics every 5 s, state sizes every 10 s):
    // wait until every partition reports them, the lag drained to 0.
    let deadline = Instant::now() + Duration::from_secs(40);
    let text = loop {
        let text = processor.metrics().unwrap();
        let lag = samples(&text, CONSUMER_LAG);
        let keys = samples(&text, STATE_KEYS);
        let stored: f64 = keys.iter().map(|(_, v)| v).sum();
        if (lag.len() == 3 && lag.iter().all(|(_, v)| *v == 0.0) && keys.len() == 3 && stored > 0.0)
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    // Commands and journey events, per label set, exactly as simulate emitted them.
    let got: BTreeMap<String, f64> = samples(&text, COMMANDS_TOTAL).into_iter().collect();
    assert_eq!(got, by_action, "{COMMANDS_TOTAL}");
    let got: BTreeMap<String, f64> = samples(&text, JOURNEY_EVENTS_TOTAL).into_iter().collect();
    assert_eq!(got, by_type, "{JOURNEY_EVENTS_TOTAL}");

    // Every record read is counted once, by type and result; the golden trace is all valid.
    assert_eq!(total(&text, EVENTS_TOTAL), records as f64);
    for (labels, _) in samples(&text, EVENTS_TOTAL) {
        assert!(!labels.contains("rejected"), "{labels}");
    }
    assert!(
        value(
            &text,
            EVENTS_TOTAL,
            "result=\"accepted\",type=\"login.created\""
        ) > 0.0
    );

    // Latencies: each record's processing once; each command either caused at once by an
    // event or fired by a timer.
    assert_eq!(
        value(&text, &format!("{PROCESSING_LATENCY_SECONDS}_count"), ""),
        records as f64
    );
    let immediate = value(&text, &format!("{EVENT_TO_COMMAND_SECONDS}_count"), "");
    let timed = value(&text, &format!("{TIMER_LATENESS_SECONDS}_count"), "");
    assert_eq!(immediate + timed, commands.len() as f64);
    assert!(timed > 0.0, "the golden trace's nudges fire on timers");

    // Transactions and their commit times.
    let committed = value(&text, TRANSACTIONS_TOTAL, "result=\"committed\"");
    assert!(committed >= 1.0);
    assert_eq!(
        value(&text, &format!("{COMMIT_SECONDS}_count"), ""),
        committed
    );

    // The pipeline thread's time, counted at each batch end: it handled the trace.
    let running = value(&text, PIPELINE_THREAD_SECONDS, "state=\"running\"");
    let runnable = value(&text, PIPELINE_THREAD_SECONDS, "state=\"runnable\"");
    assert!(running > 0.0, "the pipeline thread ran: {running} s");
    assert!(
        running + runnable <= started.elapsed().as_secs_f64(),
        "no more than the process's wall time: {running} s running, {runnable} s runnable"
    );

    // Partition gauges, one series per assigned partition.
    assert_eq!(value(&text, PARTITIONS_ASSIGNED, ""), 3.0);
    assert!(value(&text, REBALANCES_TOTAL, "kind=\"assigned\"") >= 1.0);
    for name in [
        TIMERS_PENDING,
        WATERMARK_LAG_SECONDS,
        CONSUMER_LAG,
        STATE_KEYS,
        STATE_BYTES,
    ] {
        let series: Vec<String> = samples(&text, name).into_iter().map(|(l, _)| l).collect();
        assert_eq!(
            series,
            ["partition=\"0\"", "partition=\"1\"", "partition=\"2\""],
            "{name}"
        );
    }
    assert!(total(&text, STATE_KEYS) > 0.0 && total(&text, STATE_BYTES) > 0.0);
    assert_eq!(total(&text, CONSUMER_LAG), 0.0, "caught up");
    assert_eq!(value(&text, RESTORING_PARTITIONS, ""), 0.0);
    assert_eq!(total(&text, DEAD_LETTERS_TOTAL), 0.0);
    assert_eq!(
        value(
            &text,
            BUILD_INFO,
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    // JSON logs: one object per line, with the fields of the spans around them, and no
    // customer contact data at info level.
    let log = processor.stop();
    let mut assigned = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        assert!(
            !line.contains("@example.com") && !line.contains("+1612"),
            "customer contact data in the log: {line}"
        );
        if v["message"] == "Partition assigned." {
            assigned += 1;
            assert!(v["partition"].is_i64(), "{line}");
            let run = &v["spans"][0];
            assert_eq!(run["name"], "run", "{line}");
            assert_eq!(run["group"], scenario.id, "{line}");
        }
    }
    assert_eq!(assigned, 3, "{log}");
}
