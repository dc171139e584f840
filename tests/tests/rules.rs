//! The threshold, segment, score and next-best-action rules of the shipped journeys
//! (`deploy/journeys/first-90-days.yaml`, `deploy/journeys/renewal-save.yaml`, beside the
//! reference journey) on the real broker, with the example protections: a generated backlog of
//! both journeys' events goes through `waymark run`, and what it commits equals `waymark
//! simulate` record by record. Every rule type has outputs in it, next-best-action sends at
//! most one save per customer, and `state inspect` shows a customer's scores and why each
//! alternative was or was not taken.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use waymark::model::{CustomerEvent, Millis};
use waymark_e2e::*;

const H: Millis = 3_600_000;
const D: Millis = 24 * H;
const SAVES: [&str; 3] = [
    "retention-offer-email",
    "success-manager-call",
    "renewal-sms",
];

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Accounts in their first 90 days and subscriptions up for renewal, from `start` on.
fn trace(customers: usize, start: Millis) -> Vec<CustomerEvent> {
    let mut rng = Rng(0x005e_ed0f_1a7e);
    let mut events = Vec::new();
    for n in 0..customers {
        let c = format!("acct-{n:04}");
        let t0 = start + rng.below(10 * D as u64) as Millis;
        let mut k = 0;
        let mut push = |t: &str, at: Millis, attrs: &[(&str, &str)]| {
            k += 1;
            events.push(customer_event(&format!("{c}-{k}"), &c, t, at, attrs));
        };
        let tz = rng.pick(&["Europe/Berlin", "America/New_York", "Asia/Tokyo"]);
        if n % 2 == 0 {
            let plan = rng.pick(&["free", "team", "business"]);
            push(
                "account.created",
                t0,
                &[
                    ("email", "a@example.com"),
                    ("csm", "csm-1"),
                    ("plan", plan),
                    ("tz", tz),
                ],
            );
            if rng.chance(70) {
                push(
                    "project.created",
                    t0 + rng.below(2 * D as u64) as Millis,
                    &[],
                );
            }
            for _ in 0..rng.below(4) {
                push(
                    "login.succeeded",
                    t0 + rng.below(30 * D as u64) as Millis,
                    &[],
                );
            }
            if rng.chance(50) {
                push(
                    "teammate.invited",
                    t0 + rng.below(10 * D as u64) as Millis,
                    &[],
                );
            }
            if rng.chance(30) {
                push(
                    "integration.connected",
                    t0 + rng.below(20 * D as u64) as Millis,
                    &[],
                );
            }
            if rng.chance(25) {
                push(
                    "plan.changed",
                    t0 + rng.below(10 * D as u64) as Millis,
                    &[("plan", "business")],
                );
            }
            let burst = t0 + rng.below(20 * D as u64) as Millis;
            for _ in 0..rng.below(5) {
                push(
                    "support.ticket_opened",
                    burst + rng.below(9 * D as u64) as Millis,
                    &[],
                );
            }
            if rng.chance(40) {
                let amount = rng.pick(&["800", "9999", "10000", "25000"]);
                push(
                    "invoice.paid",
                    t0 + rng.below(30 * D as u64) as Millis,
                    &[("amount", amount)],
                );
            }
            for week in 1..5 {
                let days = rng.pick(&["0", "1", "2", "3", "5"]);
                push(
                    "usage.weekly_summary",
                    t0 + week * 7 * D,
                    &[("active_days", days)],
                );
            }
        } else {
            let tier = rng.pick(&["silver", "gold", "platinum"]);
            for _ in 0..rng.below(3) {
                let amount = rng.pick(&["5000", "20000", "30000"]);
                push(
                    "invoice.paid",
                    t0 - rng.below(400 * D as u64) as Millis,
                    &[("amount", amount)],
                );
            }
            push(
                "subscription.renewal_due",
                t0,
                &[
                    ("email", "r@example.com"),
                    ("phone", "+16125550199"),
                    ("account_exec", "ae-4"),
                    ("tier", tier),
                    ("tz", tz),
                ],
            );
            for _ in 0..rng.below(4) {
                push(
                    "login.succeeded",
                    t0 + rng.below(20 * D as u64) as Millis,
                    &[],
                );
            }
            for action in SAVES {
                if rng.chance(70) {
                    let score = rng.pick(&["0.1", "0.4", "0.6", "0.9"]);
                    push(
                        "next_best_action.score",
                        t0 + rng.below(5 * D as u64) as Millis,
                        &[("action", action), ("score", score)],
                    );
                }
            }
            for _ in 0..rng.below(3) {
                let score = rng.pick(&["0.2", "0.5", "0.75", "0.95"]);
                push(
                    "churn.score",
                    t0 + rng.below(15 * D as u64) as Millis,
                    &[("score", score)],
                );
            }
            if rng.chance(40) {
                push(
                    "renewal_quote.viewed",
                    t0 + rng.below(14 * D as u64) as Millis,
                    &[],
                );
            }
            match rng.below(3) {
                0 => push(
                    "subscription.renewed",
                    t0 + rng.below(40 * D as u64) as Millis,
                    &[],
                ),
                1 => push(
                    "subscription.cancelled",
                    t0 + rng.below(40 * D as u64) as Millis,
                    &[],
                ),
                _ => {}
            }
        }
    }
    events.sort_by_key(|e| (e.occurred_at, e.event_id.clone()));
    events
}

#[test]
fn threshold_score_and_next_best_action_rules_on_kafka_equal_simulate() {
    let journeys = root().join("deploy/journeys");
    let protections = root().join("deploy/examples/protections.yaml");
    let extra = format!(
        "allowed-lateness-secs: 1\nprotections: {}\n",
        protections.display()
    );
    let scenario = Scenario::new("rules", 3, &extra).unwrap();
    scenario.use_journeys(&journeys).unwrap();
    // Event times end well in the past: once caught up, every due action fires.
    let events = trace(600, now_millis() - 120 * D);
    let file = scenario.dir.path().join("events.jsonl");
    write_events(&file, &events).unwrap();
    scenario.produce_file(&file).unwrap();
    let processor = scenario.start().unwrap();
    let simulated =
        simulate_journeys(&journeys, Some(&protections), &file, now_millis(), 1_000).unwrap();
    let kafka = scenario
        .await_outputs(simulated.len(), Duration::from_secs(180))
        .unwrap();
    processor.stop();
    assert_same_outputs(&kafka, &simulated);

    // Every rule type produced commands.
    let mut per_rule: BTreeMap<&str, usize> = BTreeMap::new();
    for v in kafka.iter().filter(|v| v["kind"] == "command") {
        *per_rule.entry(v["rule"].as_str().unwrap()).or_default() += 1;
    }
    for rule in [
        "getting-started",
        "low-activity",
        "integration-guide",
        "support-struggle",
        "big-first-invoice",
        "low-usage",
        "high-value",
        "churn-save",
    ] {
        assert!(
            per_rule.get(rule).is_some_and(|n| *n > 0),
            "no command of {rule}: {per_rule:?}"
        );
    }
    // Next-best-action sent one save per customer and instance, and more than one kind.
    let mut saves: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for v in kafka
        .iter()
        .filter(|v| v["kind"] == "command" && v["rule"] == "churn-save")
    {
        saves
            .entry((
                v["customer_id"].as_str().unwrap().to_owned(),
                v["instance"].as_u64().unwrap(),
            ))
            .or_default()
            .push(v["action"].as_str().unwrap().to_owned());
    }
    assert!(saves.values().all(|a| a.len() == 1), "{saves:?}");
    let kinds: std::collections::BTreeSet<&String> = saves.values().flatten().collect();
    assert!(kinds.len() >= 2, "{kinds:?}");

    // `state inspect` of a saved customer: their scores, the action taken and why the others
    // were not.
    let ((customer, _), _) = saves.iter().next().unwrap();
    let report = scenario
        .inspect_with(
            customer,
            &journeys,
            &["--protections", protections.to_str().unwrap()],
        )
        .expect("the saved customer is in the state");
    let scores = report["explanation"]["scores"].as_array().unwrap();
    assert!(
        scores.iter().any(|s| s["score"] == "churn.score"),
        "{report}"
    );
    let actions: Vec<&Value> = report["explanation"]["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["journey"] == "renewal-save")
        .flat_map(|j| j["instances"].as_array().unwrap())
        .flat_map(|i| i["actions"].as_array().unwrap())
        .filter(|a| a["rule"] == "churn-save")
        .collect();
    assert_eq!(actions.len(), 3, "{report}");
    assert_eq!(
        actions.iter().filter(|a| a["status"] == "sent").count(),
        1,
        "{report}"
    );
    assert!(
        actions
            .iter()
            .all(|a| ["sent", "not_chosen", "suppressed"].contains(&a["status"].as_str().unwrap())),
        "{report}"
    );
}
