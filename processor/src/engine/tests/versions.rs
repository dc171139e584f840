//! Versions of one journey loaded together: instances keep the version they entered with,
//! entries from a version's `effective-from` get it, `migrate-from` moves instances in flight,
//! and loading a new version never emits again what was emitted.

use super::*;

/// Version 1 of a trial journey: an email a day after the start, a call after a week.
const V1: &str = "journey: trial\nversion: 1\nre-entry: after-end\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: call\n        delay: 7d\n        channel: contact-center\n";

/// Version 2: the same email, an SMS after six days instead of the call, and a new step.
fn v2(effective_from: Millis, migrate: bool) -> String {
    let migrate = if migrate { "migrate-from: [1]\n" } else { "" };
    format!(
        "journey: trial\nversion: 2\neffective-from: {}\n{migrate}re-entry: after-end\nsteps:\n  - id: start\n    event: trial.started\n  - id: invited\n    event: teammate.invited\n  - id: paid\n    event: subscription.paid\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: text\n        delay: 6d\n        channel: sms\n",
        format_millis(effective_from)
    )
}

fn engine(texts: &[&str]) -> Arc<Engine> {
    Arc::new(Engine::new(crate::journey::parsed(texts)))
}

/// `(customer, action, journey version, due)` of every command.
fn sent(outputs: &[Output]) -> Vec<(String, String, u32, Millis)> {
    sent_by(outputs, |c| c.journey_version)
}

fn start(c: &str, at: Millis) -> CustomerEvent {
    ev(&format!("{c}-start-{at}"), c, "trial.started", at, &[])
}

fn paid(c: &str, at: Millis) -> CustomerEvent {
    ev(&format!("{c}-paid-{at}"), c, "subscription.paid", at, &[])
}

#[test]
fn an_instance_keeps_the_version_it_entered_with_and_new_entries_get_the_new_one() {
    let eff = T0 + 5 * D;
    let e = engine(&[V1, &v2(eff, false)]);
    let events = vec![
        start("early", T0),
        start("late", T0 + 6 * D),
        // Enters before `effective-from`, its call is due after it: still version 1's.
        start("straddling", T0 + 4 * D),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    let c = |who: &str, action: &str, version: u32, due: Millis| {
        (who.to_owned(), action.to_owned(), version, due)
    };
    assert_eq!(
        sent(&out),
        vec![
            c("early", "call", 1, T0 + 7 * D),
            c("early", "mail", 1, T0 + D),
            c("late", "mail", 2, T0 + 7 * D),
            c("late", "text", 2, T0 + 12 * D),
            c("straddling", "call", 1, T0 + 11 * D),
            c("straddling", "mail", 1, T0 + 5 * D),
        ]
    );
    // Journey events carry the version too.
    let versions: BTreeSet<(String, u32)> = out
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(j) if j.event_type == JourneyEventType::Entered => {
                Some((j.customer_id.to_string(), j.journey_version))
            }
            _ => None,
        })
        .collect();
    assert!(versions.contains(&("late".to_owned(), 2)), "{versions:?}");
    assert!(
        versions.contains(&("straddling".to_owned(), 1)),
        "{versions:?}"
    );
}

#[test]
fn a_re_entry_after_effective_from_gets_the_new_version() {
    let eff = T0 + 5 * D;
    let e = engine(&[V1, &v2(eff, false)]);
    let events = vec![
        start("c", T0),
        paid("c", T0 + 2 * H),
        start("c", T0 + 8 * D),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    let entered: Vec<(u32, u32)> = out
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(j) if j.event_type == JourneyEventType::Entered => {
                Some((j.instance, j.journey_version))
            }
            _ => None,
        })
        .collect();
    assert_eq!(entered, vec![(1, 1), (2, 2)]);
    assert_eq!(
        sent(&out),
        vec![
            ("c".into(), "mail".into(), 2, T0 + 9 * D),
            ("c".into(), "text".into(), 2, T0 + 14 * D),
        ]
    );
}

#[test]
fn entries_before_the_earliest_effective_from_do_not_enter() {
    let e = engine(&[&v2(T0 + 5 * D, false).replace("version: 2", "version: 1")]);
    let out = run(&e, &[start("a", T0), start("b", T0 + 6 * D)], T0 + 30 * D);
    let customers: BTreeSet<String> = sent(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(customers, BTreeSet::from(["b".to_owned()]));
}

/// Applies `events` with a watermark trailing each by the allowed lateness, then advances to
/// `until`; returns what was emitted.
fn feed(
    e: &Engine,
    states: &mut BTreeMap<String, CustomerState>,
    events: &[CustomerEvent],
    until: Millis,
) -> Vec<Output> {
    let mut out = Vec::new();
    for x in events {
        let state = states.entry(x.customer_id.clone()).or_default();
        e.apply(state, &x.customer_id, x, x.occurred_at - LATENESS, &mut out);
    }
    for (customer, state) in states.iter_mut() {
        e.advance(state, customer, until, &mut out);
    }
    out
}

#[test]
fn loading_a_new_version_while_instances_are_in_flight_emits_nothing_twice() {
    let eff = T0 + 5 * D;
    let before = vec![start("a", T0), start("b", T0 + D), paid("b", T0 + 3 * D)];
    let after = vec![
        start("c", T0 + 6 * D),
        start("b", T0 + 7 * D),
        paid("a", T0 + 9 * D),
    ];
    for migrate in [false, true] {
        let old = engine(&[V1]);
        let new = engine(&[V1, &v2(eff, migrate)]);
        // Live: version 1 alone until every event before `effective-from` is processed and the
        // watermark is just before it, then both versions.
        let mut states = BTreeMap::new();
        let mut live = feed(&old, &mut states, &before, eff - H);
        live.extend(feed(&new, &mut states, &after, T0 + 30 * D));
        let ids: Vec<String> = live.iter().map(|o| o.id().to_owned()).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "migrate {migrate}: an output went out twice"
        );
        // The same as both versions loaded from the start (what `simulate` computes).
        let mut all = before.clone();
        all.extend(after.clone());
        let offline = feed(&new, &mut BTreeMap::new(), &all, T0 + 30 * D);
        assert_eq!(as_set(&live), as_set(&offline), "migrate {migrate}");
    }
}

#[test]
fn migrate_from_moves_instances_in_flight_and_keeps_what_was_sent() {
    let eff = T0 + 5 * D;
    let e = engine(&[V1, &v2(eff, true)]);
    let events = vec![
        start("flight", T0),
        // Ended before `effective-from`: stays on version 1.
        start("done", T0),
        paid("done", T0 + 2 * D),
        ev(
            "flight-invite",
            "flight",
            "teammate.invited",
            T0 + 3 * D,
            &[],
        ),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    assert_eq!(
        sent(&out),
        vec![
            ("done".into(), "mail".into(), 1, T0 + D),
            // Version 1's email went out before the migration and is not sent again; the call
            // was due after it, so version 2's SMS replaces it.
            ("flight".into(), "mail".into(), 1, T0 + D),
            ("flight".into(), "text".into(), 2, T0 + 6 * D),
        ]
    );
    // The migrated instance keeps its ids: version 2's SMS is numbered as instance 1 of
    // version 1, and the step new in version 2 is reported once, at its real time.
    let text = the_command(&out, "text");
    assert_eq!(
        text.command_id,
        stable_id(&["trial", "1", "flight", "1", "nudge", "text"])
    );
    let invited = journey_events(&out, JourneyEventType::StepCompleted);
    assert!(
        invited.contains(&("invited".to_owned(), T0 + 3 * D)),
        "{invited:?}"
    );
    let entered = out
        .iter()
        .filter(|o| {
            matches!(o, Output::JourneyEvent(j) if j.event_type == JourneyEventType::Entered && j.customer_id == "flight")
        })
        .count();
    assert_eq!(entered, 1);

    // `explain` shows both versions' part of the instance.
    let mut state = CustomerState::default();
    let mut sink = Vec::new();
    for x in events.iter().filter(|x| x.customer_id == "flight") {
        e.apply(&mut state, "flight", x, Millis::MIN, &mut sink);
    }
    e.advance(&mut state, "flight", T0 + 30 * D, &mut sink);
    let x = e.explain("flight", &state);
    let status = |version: u32, action: &str| {
        let j = x.journeys.iter().find(|j| j.version == version).unwrap();
        let a = j.instances[0]
            .actions
            .iter()
            .find(|a| a.action == action)
            .unwrap();
        (a.status, a.reason.clone().unwrap_or_default())
    };
    assert_eq!(status(1, "mail").0, "sent");
    let (call, why) = status(1, "call");
    assert_eq!(call, "migrated");
    assert!(why.contains("moved to a later version"), "{why}");
    assert_eq!(status(2, "text").0, "sent");
    assert_eq!(status(2, "mail").0, "migrated");
}

#[test]
fn a_migrating_version_alone_takes_over_the_instances_of_the_removed_one() {
    let eff = T0 + 5 * D;
    let e = engine(&[&v2(eff, true)]);
    let out = run(&e, &[start("flight", T0)], T0 + 30 * D);
    assert_eq!(
        sent(&out),
        vec![("flight".into(), "text".into(), 2, T0 + 6 * D)],
        "nothing due before effective-from is sent again"
    );
    let c = the_command(&out, "text");
    assert_eq!(
        c.command_id,
        stable_id(&["trial", "1", "flight", "1", "nudge", "text"])
    );
}

#[test]
fn versions_of_a_journey_must_take_over_from_each_other_in_order() {
    let parse = |i: usize, t: &str| parse_journey(Path::new(&format!("t{i}.yaml")), t).unwrap();
    let err = |texts: &[&str]| {
        let js = texts.iter().enumerate().map(|(i, t)| parse(i, t)).collect();
        JourneySet::from_journeys(js).unwrap_err().to_string()
    };
    let no_eff = V1.replace("version: 1", "version: 2");
    let msg = err(&[V1, &no_eff]);
    assert!(
        msg.contains(
            "version 2: version 1 (t0.yaml) is loaded too, so this version needs `effective-from:`"
        ),
        "{msg}"
    );
    let msg = err(&[V1, V1]);
    assert!(
        msg.contains("journey `trial` version 1 is defined twice: in t0.yaml and in t1.yaml"),
        "{msg}"
    );
    let first = v2(T0 + 5 * D, false).replace("version: 2", "version: 1");
    let msg = err(&[&first, &v2(T0 + 4 * D, false)]);
    assert!(msg.contains("must be later than version 1's"), "{msg}");

    let bad = |text: &str| {
        parse_journey(Path::new("t.yaml"), text)
            .unwrap_err()
            .to_string()
    };
    let msg = bad(&v2(T0, true).replace("migrate-from: [1]", "migrate-from: [2]"));
    assert!(
        msg.contains("cannot migrate instances of version 2"),
        "{msg}"
    );
    let msg = bad(&V1.replace("version: 1\n", "version: 2\nmigrate-from: [1]\n"));
    assert!(
        msg.contains("`migrate-from` needs `effective-from`"),
        "{msg}"
    );
    let msg = bad(&V1.replace("version: 1\n", "version: 1\neffective-from: soon\n"));
    assert!(
        msg.contains("t.yaml:3:17: effective-from: `soon` is not an RFC 3339 time"),
        "{msg}"
    );
}
