//! The analytics fold: against the golden trace's expected outcome, duplicates, merging
//! partitions, durations and holdouts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::engine::Engine;
use crate::model::{Output, parse_millis};
use crate::simulate::{SimulateOptions, simulate};

const HOUR: Millis = 3_600_000;

fn reference_set() -> JourneySet {
    JourneySet::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml"),
    )
    .unwrap()
}

/// `simulate`'s journey events for the golden trace, and the expected outcome per customer.
fn golden() -> (Vec<JourneyEvent>, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json"))
            .expect("../shared/golden must sit beside the project (see README)"),
    )
    .unwrap();
    let events = std::fs::read(dir.join("events.jsonl")).unwrap();
    let mut out = Vec::new();
    simulate(
        Arc::new(Engine::new(reference_set())),
        events.as_slice(),
        &mut out,
        &SimulateOptions {
            allowed_lateness: 0,
            until: Some(parse_millis(expected["until"].as_str().unwrap()).unwrap()),
            max_future_skew: Millis::MAX / 4,
            progress_every: None,
            threads: 1,
        },
    )
    .unwrap();
    let journey_events = journey_events_of(&out);
    (journey_events, expected)
}

/// The journey events among `simulate`'s JSON lines.
fn journey_events_of(out: &[u8]) -> Vec<JourneyEvent> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_slice::<Output>(l).unwrap() {
            Output::JourneyEvent(e) => Some(e),
            Output::Command(_) => None,
        })
        .collect()
}

fn fold(events: &[JourneyEvent], order: &Definitions) -> (Aggregates, BTreeMap<String, Progress>) {
    let mut agg = Aggregates::default();
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    for e in events {
        let p = progress.entry(e.customer_id.to_string()).or_default();
        agg.apply(order, p, e);
    }
    (agg, progress)
}

#[test]
fn the_golden_funnel_counts_what_the_expected_outcome_says() {
    let (events, expected) = golden();
    let order = Definitions::of(&reference_set());
    let (agg, _) = fold(&events, &order);
    let funnel = agg.funnel(&order, "b2b-onboarding", 1).unwrap();

    // Counted independently from expected.json: per step, customers that completed it, that
    // abandoned it (ever), that did both; the goal; and where every other customer stands.
    let steps = order.steps("b2b-onboarding");
    let customers = expected["customers"].as_object().unwrap();
    let set = |c: &serde_json::Value, k: &str| -> BTreeSet<String> {
        c[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(funnel.entered, customers.len() as u64);
    let goals = customers.values().filter(|c| c["goal"] == true).count() as u64;
    assert_eq!(funnel.completed, goals);
    assert!(
        goals > 0 && goals < funnel.entered,
        "a trace with both outcomes"
    );
    assert_eq!(funnel.active, funnel.entered - goals);
    for (i, step) in steps.iter().enumerate() {
        let row = &funnel.steps[i];
        assert_eq!(&row.step, step);
        let completed = customers
            .values()
            .filter(|c| set(c, "completed").contains(step))
            .count() as u64;
        let abandoned = customers
            .values()
            .filter(|c| set(c, "abandoned").contains(step))
            .count() as u64;
        let recovered = customers
            .values()
            .filter(|c| set(c, "abandoned").contains(step) && set(c, "completed").contains(step))
            .count() as u64;
        // Current step: the first one not completed, for customers not at the goal.
        let current: Vec<&serde_json::Value> = customers
            .values()
            .filter(|c| c["goal"] == false)
            .filter(|c| steps.iter().find(|s| !set(c, "completed").contains(*s)) == Some(step))
            .collect();
        let stalled = current
            .iter()
            .filter(|c| set(c, "abandoned").contains(step))
            .count() as u64;
        assert_eq!(row.completed, completed, "completed {step}");
        assert_eq!(row.abandoned, abandoned, "abandoned {step}");
        assert_eq!(row.recovered, recovered, "recovered {step}");
        assert_eq!(row.stalled, stalled, "stalled at {step}");
        assert_eq!(row.at, current.len() as u64 - stalled, "at {step}");
    }
    assert_eq!(
        funnel.steps.iter().map(|s| s.at + s.stalled).sum::<u64>(),
        funnel.active
    );
    // Commands per action, as the expected output lists them by channel.
    let by_channel = |channel: &str| -> u64 {
        customers
            .values()
            .flat_map(|c| c["commands"].as_array().unwrap())
            .filter(|c| c[0] == channel)
            .count() as u64
    };
    let sent = |action: &str| {
        funnel
            .actions
            .iter()
            .find(|a| a.action == action)
            .unwrap()
            .sent
    };
    assert_eq!(sent("invite-email"), by_channel("email"));
    assert_eq!(
        sent("assist-task") + sent("sales-rep-call"),
        by_channel("contact-center")
    );
}

#[test]
fn a_repeated_journey_event_changes_nothing() {
    let (events, _) = golden();
    let order = Definitions::of(&reference_set());
    let (once, progress_once) = fold(&events, &order);
    let twice: Vec<JourneyEvent> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    let (agg, progress) = fold(&twice, &order);
    assert_eq!(agg, once);
    assert_eq!(progress, progress_once);
}

#[test]
fn partitions_merge_into_the_whole() {
    let (events, _) = golden();
    let order = Definitions::of(&reference_set());
    let (whole, _) = fold(&events, &order);
    let mut parts = [
        Aggregates::default(),
        Aggregates::default(),
        Aggregates::default(),
    ];
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    for e in &events {
        let p = e.customer_id.bytes().map(usize::from).sum::<usize>() % 3;
        parts[p].apply(
            &order,
            progress.entry(e.customer_id.to_string()).or_default(),
            e,
        );
    }
    let mut merged = Aggregates::default();
    for p in &parts {
        assert_ne!(p, &whole, "each partition holds a share");
        merged.merge(p);
    }
    assert_eq!(merged, whole);
}

fn je(customer: &str, n: u32, t: JourneyEventType, step: &str, at: Millis) -> JourneyEvent {
    JourneyEvent {
        journey_event_id: format!("{customer}-{n}"),
        journey: "j".into(),
        journey_version: 1,
        customer_id: customer.into(),
        instance: 1,
        event_type: t,
        step: (!step.is_empty()).then(|| step.into()),
        at,
        command_id: None,
        action: None,
        reason: None,
        variant: None,
    }
}

fn three_steps() -> Definitions {
    Definitions {
        steps: [(
            "j".to_owned(),
            vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
        )]
        .into(),
        ..Definitions::default()
    }
}

#[test]
fn time_to_complete_runs_from_the_window_opening_and_skips_steps_done_early() {
    use JourneyEventType::*;
    let order = three_steps();
    let mut agg = Aggregates::default();
    let mut p = Progress::default();
    for e in [
        je("x", 1, Entered, "", 0),
        je("x", 2, StepCompleted, "a", 0),
        // c before b: c's window is not open yet, so c gets no duration.
        je("x", 3, StepCompleted, "c", HOUR),
        je("x", 4, StepCompleted, "b", 5 * HOUR),
    ] {
        agg.apply(&order, &mut p, &e);
    }
    let f = agg.funnel(&order, "j", 1).unwrap();
    let b = &f.steps[1];
    assert_eq!(b.timed, 1);
    // 5 h = 18000 s, in the bucket below 2^15 s.
    assert_eq!(b.time_to_complete_p50_secs, Some(1 << 15));
    assert_eq!(f.steps[2].timed, 0);
    assert_eq!(f.steps[0].timed, 0, "the entry step takes no time");
    assert_eq!(
        f.active, 1,
        "every step done, but no goal event: still active"
    );
    assert!(f.steps.iter().all(|s| s.at + s.stalled == 0));
}

#[test]
fn an_abandoned_step_stalls_the_customer_until_recovered() {
    use JourneyEventType::*;
    let order = three_steps();
    let mut agg = Aggregates::default();
    let mut p = Progress::default();
    let mut step = |e: JourneyEvent| agg.apply(&order, &mut p, &e);
    step(je("x", 1, Entered, "", 0));
    step(je("x", 2, StepCompleted, "a", 0));
    let stalled = step(je("x", 3, StepAbandoned, "b", 7 * 24 * HOUR));
    let Applied::Applied { before, after } = stalled else {
        panic!("applied")
    };
    assert_eq!(before.unwrap().standing, Standing::At);
    let after = after.unwrap();
    assert_eq!(
        (after.step.as_str(), after.standing),
        ("b", Standing::Abandoned)
    );
    assert_eq!(after.since, 7 * 24 * HOUR);
    let f = agg.funnel(&order, "j", 1).unwrap();
    assert_eq!((f.steps[1].at, f.steps[1].stalled, f.abandoned), (0, 1, 1));
    agg.apply(
        &order,
        &mut p,
        &je("x", 4, StepCompleted, "b", 8 * 24 * HOUR),
    );
    let f = agg.funnel(&order, "j", 1).unwrap();
    assert_eq!((f.steps[1].stalled, f.steps[1].recovered), (0, 1));
    assert_eq!((f.steps[2].at, f.abandoned), (1, 0));
}

#[test]
fn recipients_and_holdouts_convert_separately() {
    use JourneyEventType::*;
    let order = three_steps();
    let mut agg = Aggregates::default();
    let mut progress: BTreeMap<&str, Progress> = BTreeMap::new();
    let mut apply = |customer: &'static str, mut e: JourneyEvent| {
        e.customer_id = customer.into();
        agg.apply(&order, progress.entry(customer).or_default(), &e);
    };
    let command = |c: &str, n: u32, t: JourneyEventType, reason: Option<&str>| {
        let mut e = je(c, n, t, "", HOUR);
        e.action = Some("nudge".into());
        e.reason = reason.map(str::to_owned);
        // As the engine writes them: the holdout's arm is on the event.
        if reason.is_some_and(|r| r.starts_with("holdout")) {
            e.variant = Some(HOLDOUT.into());
        }
        e
    };
    for (c, t, reason, goal) in [
        ("s1", CommandEmitted, None, true),
        ("s2", CommandEmitted, None, false),
        (
            "h1",
            CommandSuppressed,
            Some("holdout of experiment e"),
            true,
        ),
        (
            "h2",
            CommandSuppressed,
            Some("holdout of experiment e"),
            true,
        ),
        (
            "q1",
            CommandSuppressed,
            Some("frequency cap: 1 email per 1d"),
            false,
        ),
    ] {
        apply(c, je(c, 1, Entered, "", 0));
        apply(c, command(c, 2, t, reason));
        if goal {
            apply(c, je(c, 3, GoalReached, "c", 2 * HOUR));
        }
    }
    let f = agg.funnel(&order, "j", 1).unwrap();
    let a = &f.actions[0];
    assert_eq!(
        (
            a.sent,
            a.sent_converted,
            a.held_out,
            a.held_out_converted,
            a.suppressed
        ),
        (2, 1, 2, 2, 1)
    );
    assert_eq!(a.sent_conversion, 0.5);
    assert_eq!(a.held_out_conversion, Some(1.0));
    assert_eq!((f.entered, f.completed, f.active), (5, 3, 2));
}

#[test]
fn quantiles_are_bucket_upper_bounds() {
    let mut d = vec![0; DURATION_BUCKETS];
    assert_eq!(quantile_secs(&d, 0.5), None);
    d[3] = 9; // < 8 s
    d[10] = 1; // < 1024 s
    assert_eq!(quantile_secs(&d, 0.5), Some(8));
    assert_eq!(quantile_secs(&d, 0.9), Some(8));
    assert_eq!(quantile_secs(&d, 0.99), Some(1024));
    assert_eq!(duration_bucket(0), 0);
    assert_eq!(duration_bucket(999), 0);
    assert_eq!(duration_bucket(1000), 1);
    assert_eq!(duration_bucket(7_999), 3);
    assert_eq!(duration_bucket(Millis::MAX), DURATION_BUCKETS - 1);
}

/// The A/B example journey over 4,000 customers: a fifth create their payment account half an
/// hour after the login (before the 1 h nudges, after the 15 min one), a fifth two hours after,
/// the rest never. Each arm's exposures and conversions are counted independently from the
/// assignment and the schedule, and the report must say the same.
#[test]
fn an_experiment_report_counts_each_arm_as_the_schedule_implies() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/b2b-onboarding-ab.yaml");
    let set = JourneySet::load(&path).unwrap();
    let x = set.get("b2b-onboarding-ab").unwrap().rules[0].actions[0]
        .experiment
        .clone()
        .unwrap();
    let t0: Millis = 1_772_400_000_000;
    let mut lines = String::new();
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut want_within_90m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in 0..4000u32 {
        let c = format!("ab-{i}");
        let login = t0 + Millis::from(i) * 1000;
        let event = |id: String, t: &str, at: Millis| {
            serde_json::json!({"event_id": id, "customer_id": c, "type": t,
                "occurred_at": crate::model::format_millis(at), "attributes": {"email": "x@example.com"}})
                .to_string()
                + "\n"
        };
        lines.push_str(&event(format!("l{i}"), "login.created", login));
        let paid = match i % 5 {
            0 => Some(login + HOUR / 2),
            1 => Some(login + 2 * HOUR),
            _ => None,
        };
        if let Some(at) = paid {
            lines.push_str(&event(format!("p{i}"), "payment_account.created", at));
        }
        let arm = x.assign(&c);
        let delay = match arm {
            crate::journey::Arm::Variant(v) => x.variants[v].delay.unwrap_or(HOUR),
            crate::journey::Arm::Holdout => HOUR,
        };
        let exposed = paid.is_none_or(|p| p >= login + delay);
        if exposed {
            let row = want.entry(x.arm_name(arm).to_owned()).or_default();
            row.0 += 1;
            row.1 += u64::from(paid.is_some());
            let row = want_within_90m
                .entry(x.arm_name(arm).to_owned())
                .or_default();
            row.0 += 1;
            row.1 += u64::from(paid.is_some_and(|p| p - (login + delay) <= 90 * 60_000));
        }
    }
    // Events arrive in time order, as upstream would send them.
    let mut sorted: Vec<&str> = lines.lines().collect();
    sorted.sort_by_key(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["occurred_at"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    let input: String = sorted.iter().map(|l| format!("{l}\n")).collect();
    let mut out = Vec::new();
    simulate(
        Arc::new(Engine::new(set.clone())),
        input.as_bytes(),
        &mut out,
        &SimulateOptions {
            allowed_lateness: 0,
            until: Some(t0 + 30 * 24 * HOUR),
            max_future_skew: Millis::MAX / 4,
            progress_every: None,
            threads: 1,
        },
    )
    .unwrap();
    let events = journey_events_of(&out);
    let defs = Definitions::of(&set);
    let (agg, _) = fold(&events, &defs);
    let report = agg.experiment(&defs, "payment-invite", None).unwrap();
    assert_eq!(report.outcome, Outcome::Awaited);
    assert_eq!(report.awaited_step.as_deref(), Some("payment_account"));
    assert_eq!(report.baseline, "holdout");
    let got: BTreeMap<String, (u64, u64)> = report
        .arms
        .iter()
        .map(|a| (a.arm.clone(), (a.exposed, a.converted)))
        .collect();
    assert_eq!(got, want);
    // Converting 1 in 5 exposed customers in every arm but the 15-minute one (which also
    // reaches the half-hour payers, 2 in 5): it alone differs from the holdout.
    let soon = report.arms.iter().find(|a| a.arm == "email-15m").unwrap();
    assert!(soon.p_value.unwrap() < 0.001, "{soon:?}");
    assert!(
        soon.verdict.starts_with("better than holdout"),
        "{}",
        soon.verdict
    );
    let email = report.arms.iter().find(|a| a.arm == "email-1h").unwrap();
    assert!(email.p_value.unwrap() > 0.05, "{email:?}");
    assert!(email.ci_low < email.conversion && email.conversion < email.ci_high);
    // Judged on the goal instead, nobody converted: every rate is 0.
    let goal = agg
        .experiment(&defs, "payment-invite", Some(Outcome::Goal))
        .unwrap();
    assert!(goal.arms.iter().all(|a| a.converted == 0));
    assert!(agg.experiment(&defs, "no-such-experiment", None).is_none());
    let table = render_experiment(&report);
    assert!(
        table.contains("email-15m") && table.contains("better than holdout"),
        "{table}"
    );
    assert!(table.contains("within 7d after exposure"), "{table}");

    // With a 90-minute conversion window, a payment account 2 h after the login still counts
    // for the arms exposed at 1 h, but no longer for the one exposed at 15 min.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("conversion-window: 7d", "conversion-window: 90m");
    let short = JourneySet::new(vec![crate::journey::parse_journey(&path, &text).unwrap()]);
    let defs = Definitions::of(&short);
    let (agg, _) = fold(&events, &defs);
    let report = agg.experiment(&defs, "payment-invite", None).unwrap();
    assert_eq!(report.conversion_window.as_deref(), Some("90m"));
    let got: BTreeMap<String, (u64, u64)> = report
        .arms
        .iter()
        .map(|a| (a.arm.clone(), (a.exposed, a.converted)))
        .collect();
    assert_eq!(got, want_within_90m);
}
