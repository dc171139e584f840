//! Threshold, segment, score and next-best-action rules, on the two shipped journeys that use
//! them (`deploy/journeys/first-90-days.yaml`, `deploy/journeys/renewal-save.yaml`): each rule
//! type at its boundaries, `explain` for every fate, and order independence on generated
//! traces.

use super::*;

fn shipped(name: &str) -> Arc<Engine> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/journeys")
        .join(format!("{name}.yaml"));
    Arc::new(Engine::new(JourneySet::load(&path).unwrap()))
}

fn adoption() -> Arc<Engine> {
    shipped("first-90-days")
}

fn renewal() -> Arc<Engine> {
    shipped("renewal-save")
}

fn renewal_protected(protections: &str) -> Arc<Engine> {
    let p = crate::protect::Protections::parse(Path::new("p.yaml"), protections).unwrap();
    Arc::new(renewal().as_ref().clone().with_protections(p))
}

fn signup(c: &str, at: Millis, plan: &str) -> CustomerEvent {
    ev(
        &format!("{c}-signup"),
        c,
        "account.created",
        at,
        &[("email", "a@example.com"), ("csm", "csm-7"), ("plan", plan)],
    )
}

fn simple(id: &str, c: &str, t: &str, at: Millis) -> CustomerEvent {
    ev(id, c, t, at, &[])
}

/// The explained status and reason of one action of a customer's first instance.
fn fate(e: &Engine, events: &[CustomerEvent], until: Millis, action: &str) -> (String, String) {
    let customer = events[0].customer_id.clone();
    let mut state = CustomerState::default();
    let mut sink = Vec::new();
    for x in events {
        e.apply(&mut state, &customer, x, Millis::MIN, &mut sink);
    }
    e.advance(&mut state, &customer, until, &mut sink);
    let x = e.explain(&customer, &state);
    let a = x.journeys[0].instances[0]
        .actions
        .iter()
        .find(|a| a.action == action)
        .unwrap_or_else(|| panic!("no action {action} in {x:?}"));
    (a.status.to_owned(), a.reason.clone().unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Threshold guards: counts and sums in a window before the due time.

#[test]
fn a_count_guard_acts_only_below_the_threshold_counting_the_window_before_the_due_time() {
    let e = adoption();
    let project = T0 + H;
    let due = project + 14 * D;
    let customer = |c: &str, logins: &[Millis]| {
        let mut v = vec![
            signup(c, T0, "free"),
            simple(&format!("{c}-p"), c, "project.created", project),
        ];
        for (i, at) in logins.iter().enumerate() {
            v.push(simple(&format!("{c}-l{i}"), c, "login.succeeded", *at));
        }
        v
    };
    let cases: [(&str, Vec<Millis>, bool); 5] = [
        ("one-login", vec![project + D], true),
        ("two-logins", vec![project + D, project + 2 * D], false),
        // A login at the due time itself is not before it.
        ("second-at-due", vec![project + D, due], true),
        // The window is [due - 14d, due): its first millisecond counts, the one before not.
        ("edge-in", vec![due - 14 * D, project + D], false),
        ("edge-out", vec![due - 14 * D - 1, project + D], true),
    ];
    for (c, logins, acts) in cases {
        let events = customer(c, &logins);
        let sent: Vec<_> = commands(&run(&e, &events, due + D))
            .into_iter()
            .filter(|(a, _, _)| a == "success-check-in")
            .collect();
        let want = if acts {
            vec![("success-check-in".to_owned(), Channel::ContactCenter, due)]
        } else {
            vec![]
        };
        assert_eq!(sent, want, "{c}");
        let (status, reason) = fate(&e, &events, due + D, "success-check-in");
        if acts {
            assert_eq!(status, "sent", "{c}");
        } else {
            assert_eq!(status, "skipped", "{c}");
            assert_eq!(
                reason,
                "condition not met: count of login.succeeded within 14d was 2, needs < 2"
            );
        }
    }
}

#[test]
fn a_sum_guard_adds_up_a_numeric_attribute_within_its_window() {
    let e = renewal();
    let due_at = T0 + 7 * D;
    let customer = |c: &str, invoices: &[(Millis, &str)]| {
        let mut v = vec![ev(
            &format!("{c}-due"),
            c,
            "subscription.renewal_due",
            T0,
            &[("email", "a@example.com"), ("account_exec", "ae-2")],
        )];
        for (i, (at, amount)) in invoices.iter().enumerate() {
            v.push(ev(
                &format!("{c}-i{i}"),
                c,
                "invoice.paid",
                *at,
                &[("amount", amount)],
            ));
        }
        v
    };
    let calls = |events: &[CustomerEvent]| -> Vec<Millis> {
        run(&e, events, due_at + D)
            .iter()
            .filter_map(|o| match o {
                Output::Command(c) if c.action == "account-exec-call" => {
                    assert_eq!(c.params["assignee"], "ae-2");
                    Some(c.due_at)
                }
                _ => None,
            })
            .collect()
    };
    let year = 365 * D;
    assert_eq!(
        calls(&customer(
            "big",
            &[(T0 - 200 * D, "30000"), (T0 - D, "20000")]
        )),
        [due_at]
    );
    // 50,000 in all, but the older invoice left the 365-day window before the due time.
    assert!(
        calls(&customer(
            "old",
            &[(due_at - year - 1, "30000"), (T0 - D, "20000")]
        ))
        .is_empty()
    );
    // What is not a number adds nothing.
    assert!(calls(&customer("text", &[(T0 - D, "lots"), (T0 - D, "49999.5")])).is_empty());
    // Opening the quote before the due time cancels the call.
    let mut viewed = customer("viewed", &[(T0 - D, "60000")]);
    viewed.push(simple(
        "viewed-q",
        "viewed",
        "renewal_quote.viewed",
        due_at - 1,
    ));
    assert!(calls(&viewed).is_empty());
    assert_eq!(
        fate(&e, &viewed, due_at + D, "account-exec-call").0,
        "cancelled"
    );
}

#[test]
fn retention_keeps_the_events_a_window_looks_back_on() {
    // 30 days of retention would drop invoices of a customer who has no instance yet; the
    // 365-day window of `high-value` keeps them.
    let e = Arc::new(renewal().as_ref().clone().with_retention(Some(30 * D)));
    let events = [
        ev(
            "i1",
            "c",
            "invoice.paid",
            T0 - 300 * D,
            &[("amount", "30000")],
        ),
        ev(
            "i2",
            "c",
            "invoice.paid",
            T0 - 200 * D,
            &[("amount", "30000")],
        ),
        ev(
            "due",
            "c",
            "subscription.renewal_due",
            T0,
            &[("account_exec", "ae-1")],
        ),
    ];
    let calls: Vec<_> = commands(&run(&e, &events, T0 + 10 * D))
        .into_iter()
        .filter(|(a, _, _)| a == "account-exec-call")
        .collect();
    assert_eq!(calls.len(), 1);
}

#[test]
fn a_segment_targets_customers_by_their_profile_as_of_the_due_time() {
    let e = adoption();
    let invited = T0 + 2 * H;
    let due = invited + 3 * D;
    let customer = |c: &str, plan: &str, change: Option<(Millis, &str)>| {
        let mut v = vec![
            signup(c, T0, plan),
            simple(&format!("{c}-p"), c, "project.created", T0 + H),
            simple(&format!("{c}-i"), c, "teammate.invited", invited),
        ];
        if let Some((at, p)) = change {
            v.push(ev(
                &format!("{c}-plan"),
                c,
                "plan.changed",
                at,
                &[("plan", p)],
            ));
        }
        v
    };
    let guides = |events: &[CustomerEvent]| {
        commands(&run(&e, events, due + D))
            .into_iter()
            .filter(|(a, _, _)| a == "integration-guide-email")
            .count()
    };
    assert_eq!(guides(&customer("team", "team", None)), 1);
    assert_eq!(guides(&customer("free", "free", None)), 0);
    assert_eq!(
        fate(
            &e,
            &customer("free", "free", None),
            due + D,
            "integration-guide-email"
        ),
        (
            "skipped".to_owned(),
            "condition not met: profile plan was free, needs one of team, business".to_owned()
        )
    );
    // An upgrade before the due time counts, one after it does not.
    assert_eq!(
        guides(&customer("up", "free", Some((due - H, "business")))),
        1
    );
    assert_eq!(
        guides(&customer("late", "free", Some((due + H, "team")))),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Threshold triggers (`when`).

#[test]
fn a_windowed_count_starts_a_rule_once_when_it_first_reaches_its_threshold() {
    let e = adoption();
    let tickets = |c: &str, days: &[Millis]| {
        let mut v = vec![signup(c, T0, "free")];
        for (i, d) in days.iter().enumerate() {
            v.push(simple(
                &format!("{c}-t{i}"),
                c,
                "support.ticket_opened",
                T0 + d,
            ));
        }
        v
    };
    let calls = |events: &[CustomerEvent]| -> Vec<Millis> {
        commands(&run(&e, events, T0 + 40 * D))
            .into_iter()
            .filter(|(a, _, _)| a == "support-call")
            .map(|(_, _, at)| at)
            .collect()
    };
    // The third ticket within a week starts it, at once; a fourth does not start it again.
    assert_eq!(
        calls(&tickets("a", &[D, 3 * D, 5 * D, 6 * D])),
        [T0 + 5 * D]
    );
    // Three tickets, but never three within seven days.
    assert!(calls(&tickets("b", &[D, 5 * D, 9 * D])).is_empty());
    // Seven days back from the third ticket reaches the first exactly: it counts.
    assert_eq!(calls(&tickets("c", &[D, 4 * D, 8 * D])), [T0 + 8 * D]);
}

#[test]
fn a_matching_event_starts_a_rule() {
    let e = adoption();
    let invoice = |c: &str, amount: &str| {
        vec![
            signup(c, T0, "team"),
            ev(
                &format!("{c}-inv"),
                c,
                "invoice.paid",
                T0 + 3 * D,
                &[("amount", amount)],
            ),
        ]
    };
    let calls = |events: &[CustomerEvent]| {
        run(&e, events, T0 + 10 * D)
            .into_iter()
            .filter_map(|o| match o {
                Output::Command(c) if c.action == "welcome-call" => Some((c.due_at, c.params)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let big = calls(&invoice("big", "12000"));
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].0, T0 + 3 * D);
    assert_eq!(big[0].1["assignee"], "csm-7");
    assert!(calls(&invoice("small", "9999")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Score rules and next-best-action.

fn renewal_due(c: &str, at: Millis, tier: &str) -> CustomerEvent {
    ev(
        &format!("{c}-due"),
        c,
        "subscription.renewal_due",
        at,
        &[
            ("email", "a@example.com"),
            ("phone", "+16125550100"),
            ("tier", tier),
            ("tz", "Europe/Berlin"),
        ],
    )
}

fn churn(c: &str, n: u32, at: Millis, score: &str) -> CustomerEvent {
    ev(
        &format!("{c}-churn{n}"),
        c,
        "churn.score",
        at,
        &[("score", score)],
    )
}

fn nba(c: &str, action: &str, at: Millis, score: &str) -> CustomerEvent {
    ev(
        &format!("{c}-nba-{action}-{at}"),
        c,
        "next_best_action.score",
        at,
        &[("action", action), ("score", score)],
    )
}

fn saves(outputs: &[Output]) -> Vec<(String, Channel, Millis)> {
    let save = [
        "retention-offer-email",
        "success-manager-call",
        "renewal-sms",
    ];
    commands(outputs)
        .into_iter()
        .filter(|(a, _, _)| save.contains(&a.as_str()))
        .collect()
}

#[test]
fn a_churn_score_reaching_the_threshold_starts_the_save_and_the_best_scored_action_goes_out() {
    let e = renewal();
    let c = "c1";
    let events = [
        renewal_due(c, T0, "gold"),
        nba(c, "retention-offer-email", T0 + H, "0.2"),
        nba(c, "success-manager-call", T0 + H, "0.9"),
        nba(c, "renewal-sms", T0 + H, "0.5"),
        churn(c, 1, T0 + 2 * D, "0.55"),
        churn(c, 2, T0 + 5 * D, "0.81"),
        churn(c, 3, T0 + 6 * D, "0.95"),
    ];
    let out = run(&e, &events, T0 + 20 * D);
    assert_eq!(
        saves(&out),
        [(
            "success-manager-call".to_owned(),
            Channel::ContactCenter,
            T0 + 5 * D + H
        )]
    );
    let (status, reason) = fate(&e, &events, T0 + 20 * D, "renewal-sms");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        (
            "not_chosen",
            "next-best-action chose `success-manager-call`"
        )
    );
    // `state inspect` shows the scores kept on the customer, the latest of each.
    let mut state = CustomerState::default();
    let mut sink = Vec::new();
    for x in &events {
        e.apply(&mut state, c, x, Millis::MIN, &mut sink);
    }
    let x = e.explain(c, &state);
    let churn_now: Vec<_> = x
        .scores
        .iter()
        .filter(|s| s.score == "churn.score")
        .map(|s| s.value.as_str())
        .collect();
    assert_eq!(churn_now, ["0.95"]);
    assert_eq!(x.scores.len(), 4, "{:?}", x.scores);
}

#[test]
fn a_score_published_before_the_entry_counts_at_the_entry() {
    let e = renewal();
    let events = [
        churn("c1", 1, T0 - D, "0.9"),
        renewal_due("c1", T0, "platinum"),
    ];
    // No action is scored: the first in definition order goes out.
    assert_eq!(
        saves(&run(&e, &events, T0 + 3 * D)),
        [("retention-offer-email".to_owned(), Channel::Email, T0 + H)]
    );
}

#[test]
fn the_save_is_skipped_outside_its_segment_and_scores_after_the_due_time_change_nothing() {
    let e = renewal();
    let silver = [renewal_due("s", T0, "silver"), churn("s", 1, T0 + D, "0.9")];
    assert!(saves(&run(&e, &silver, T0 + 3 * D)).is_empty());
    assert_eq!(fate(&e, &silver, T0 + 3 * D, "renewal-sms").0, "skipped");
    // Scored only after the due time: the model's late opinion does not count.
    let late = [
        renewal_due("l", T0, "gold"),
        churn("l", 1, T0 + D, "0.9"),
        nba("l", "renewal-sms", T0 + D + H, "0.99"),
    ];
    assert_eq!(
        saves(&run(&e, &late, T0 + 3 * D)),
        [(
            "retention-offer-email".to_owned(),
            Channel::Email,
            T0 + D + H
        )]
    );
}

#[test]
fn next_best_action_takes_the_next_alternative_when_a_protection_blocks_the_best() {
    // 22:20 in Berlin: the contact center is quiet, so the call is out and the SMS is next.
    let e = renewal_protected(
        "quiet-hours:\n  - { channel: contact-center, from: \"18:00\", to: \"09:00\" }\n",
    );
    let c = "q";
    let trigger = T0 - H; // the save is due at T0, 22:20 in Berlin
    let events = [
        renewal_due(c, trigger - D, "gold"),
        nba(c, "success-manager-call", trigger - H, "0.9"),
        nba(c, "renewal-sms", trigger - H, "0.6"),
        nba(c, "retention-offer-email", trigger - H, "0.1"),
        churn(c, 1, trigger, "0.8"),
    ];
    let out = run(&e, &events, T0 + 3 * D);
    assert_eq!(saves(&out), [("renewal-sms".to_owned(), Channel::Sms, T0)]);
    let blocked = suppressed(&out);
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0].0, "success-manager-call");
    assert!(
        blocked[0]
            .1
            .starts_with("quiet hours for contact-center in Europe/Berlin until"),
        "{}",
        blocked[0].1
    );
    let (status, reason) = fate(&e, &events, T0 + 3 * D, "success-manager-call");
    assert_eq!(status, "suppressed");
    assert!(
        reason.starts_with("quiet hours for contact-center"),
        "{reason}"
    );
    assert_eq!(
        fate(&e, &events, T0 + 3 * D, "retention-offer-email"),
        (
            "not_chosen".to_owned(),
            "next-best-action chose `renewal-sms`".to_owned()
        )
    );

    // A suppression list on SMS as well: the email is what is left.
    let e = renewal_protected(
        "quiet-hours:\n  - { channel: contact-center, from: \"18:00\", to: \"09:00\" }\nsuppression:\n  add: customer.suppressed\n  remove: customer.unsuppressed\n",
    );
    let mut events = events.to_vec();
    events.push(ev(
        "q-stop",
        c,
        "customer.suppressed",
        trigger - D,
        &[("channel", "sms")],
    ));
    let out = run(&e, &events, T0 + 3 * D);
    assert_eq!(
        saves(&out),
        [("retention-offer-email".to_owned(), Channel::Email, T0)]
    );
    assert_eq!(suppressed(&out).len(), 2);
}

#[test]
fn a_late_score_after_the_decision_never_sends_a_second_alternative() {
    let e = renewal();
    let c = "c1";
    let mut state = CustomerState::default();
    let mut out = Vec::new();
    for x in [
        renewal_due(c, T0, "gold"),
        nba(c, "renewal-sms", T0, "0.5"),
        churn(c, 1, T0 + D, "0.9"),
    ] {
        e.apply(&mut state, c, &x, T0, &mut out);
    }
    e.advance(&mut state, c, T0 + 2 * D, &mut out);
    assert_eq!(
        saves(&out),
        [("renewal-sms".to_owned(), Channel::Sms, T0 + D + H)]
    );
    // The model's higher score for the email arrives late, timed before the decision.
    let late = nba(c, "retention-offer-email", T0 + D, "0.99");
    let mut more = Vec::new();
    assert_eq!(
        e.apply(&mut state, c, &late, T0 + 2 * D, &mut more),
        Applied::Accepted { late: true }
    );
    e.advance(&mut state, c, T0 + 3 * D, &mut more);
    assert!(saves(&more).is_empty(), "{more:?}");
    let x = e.explain(c, &state);
    let status = |action: &str| {
        let a = x.journeys[0].instances[0]
            .actions
            .iter()
            .find(|a| a.action == action)
            .unwrap();
        (a.status, a.reason.clone().unwrap_or_default())
    };
    assert_eq!(status("renewal-sms").0, "sent");
    assert_eq!(
        status("retention-offer-email"),
        (
            "not_chosen",
            "next-best-action chose `renewal-sms`".to_owned()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Order independence on generated traces of both journeys.

/// Event kinds a generated customer draws from: (type, attribute name, attribute values).
const KINDS: [(&str, &str, &[&str]); 12] = [
    ("project.created", "", &[]),
    ("teammate.invited", "", &[]),
    ("integration.connected", "", &[]),
    ("login.succeeded", "", &[]),
    ("support.ticket_opened", "", &[]),
    ("usage.weekly_summary", "active_days", &["1", "3", "5"]),
    ("invoice.paid", "amount", &["900", "12000", "40000"]),
    ("renewal_quote.viewed", "", &[]),
    ("subscription.renewed", "", &[]),
    ("churn.score", "score", &["0.3", "0.7", "0.9"]),
    ("next_best_action.score", "score", &["0.1", "0.5", "0.8"]),
    ("plan.changed", "plan", &["free", "team", "business"]),
];

const SAVE_ACTIONS: [&str; 3] = [
    "retention-offer-email",
    "success-manager-call",
    "renewal-sms",
];

fn rules_trace() -> impl Strategy<Value = Vec<(usize, Millis, usize)>> {
    prop::collection::vec((0..KINDS.len(), 0..(30 * D), 0usize..3), 1..14)
}

/// A generated customer: start offset and `(kind, offset, value pick)` per event.
type RulesCustomer = (Millis, Vec<(usize, Millis, usize)>);

fn materialize_rules(customers: &[RulesCustomer]) -> Vec<CustomerEvent> {
    let mut events = Vec::new();
    for (c, (start, steps)) in customers.iter().enumerate() {
        let customer = format!("r{c}");
        let at = T0 + start;
        events.push(signup(&customer, at, ["free", "team", "business"][c % 3]));
        events.push(renewal_due(
            &customer,
            at,
            ["gold", "silver", "platinum"][c % 3],
        ));
        for (i, (kind, offset, pick)) in steps.iter().enumerate() {
            let (t, attr, values) = KINDS[*kind];
            let id = format!("{customer}-{i}");
            let mut attrs = Vec::new();
            if !attr.is_empty() {
                attrs.push((attr, values[*pick]));
            }
            if t == "next_best_action.score" {
                attrs.push(("action", SAVE_ACTIONS[*pick]));
            }
            events.push(ev(&id, &customer, t, at + offset, &attrs));
        }
    }
    events.sort_by_key(|e| (e.occurred_at, e.event_id.clone()));
    events
}

fn both() -> Arc<Engine> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys");
    let load = |n: &str| {
        let path = dir.join(n);
        parse_journey(&path, &std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let journeys = vec![load("first-90-days.yaml"), load("renewal-save.yaml")];
    let p = crate::protect::Protections::parse(
        Path::new("p.yaml"),
        "frequency-caps:\n  - { channel: contact-center, max: 1, per: 7d }\n",
    )
    .unwrap();
    Arc::new(Engine::new(JourneySet::new(journeys)).with_protections(p))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arrival_order_does_not_change_what_threshold_score_and_choice_rules_do(
        customers in prop::collection::vec((0..(2 * D), rules_trace()), 1..5),
        delays in prop::collection::vec(0..(LATENESS - 1), 1..16),
    ) {
        let engine = both();
        let ordered = materialize_rules(&customers);
        let shuffled = jitter(&ordered, &delays);
        let until = T0 + 90 * D;
        let a = run(&engine, &ordered, until);
        let b = run(&engine, &shuffled, until);
        prop_assert_eq!(as_set(&a), as_set(&b));
        // Next-best-action sends at most one save per customer and instance.
        let mut per: BTreeMap<(String, u32), usize> = BTreeMap::new();
        for o in &a {
            if let Output::Command(c) = o && SAVE_ACTIONS.contains(&c.action.as_str()) {
                *per.entry((c.customer_id.to_string(), c.instance)).or_default() += 1;
            }
        }
        prop_assert!(per.values().all(|n| *n == 1), "{:?}", per);
    }
}
