//! Identity aliases: an `identity.alias` event moves the alias's history to the canonical
//! customer, whose instances are derived from both; what either was sent is not sent again,
//! and the alias's later events follow it.

use super::*;
use crate::runtime::{ALIAS_CANONICAL_ATTRIBUTE, ALIAS_EVENT_TYPE};

fn alias(id: &str, alias: &str, canonical: &str, at: Millis) -> CustomerEvent {
    ev(
        id,
        alias,
        ALIAS_EVENT_TYPE,
        at,
        &[(ALIAS_CANONICAL_ATTRIBUTE, canonical)],
    )
}

fn payment(id: &str, c: &str, at: Millis) -> CustomerEvent {
    ev(id, c, "payment_account.created", at, &[])
}

/// `(customer, action, instance, due)` of every command.
fn sent(outputs: &[Output]) -> Vec<(String, String, u32, Millis)> {
    sent_by(outputs, |c| c.instance)
}

/// Whether `customer` completed the payment account step.
fn has_payment_account(outputs: &[Output], customer: &str) -> bool {
    moves(outputs).contains(&(
        customer.to_owned(),
        "step_completed".to_owned(),
        "payment_account".to_owned(),
    ))
}

/// Asserts that some records were refused, each for a reason containing `why`.
fn assert_refused(rejected: &[(u64, String)], why: &str) {
    assert!(
        !rejected.is_empty() && rejected.iter().all(|r| r.1.contains(why)),
        "{rejected:?}"
    );
}

/// `(customer, type, step or reason)` of every journey event.
fn moves(outputs: &[Output]) -> Vec<(String, String, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(e) => Some((
                e.customer_id.to_string(),
                e.event_type.as_str().to_owned(),
                e.step
                    .as_deref()
                    .or(e.reason.as_deref())
                    .unwrap_or_default()
                    .to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Runs `simulate` and also returns its rejected lines.
fn run_with_rejections(
    engine: &Arc<Engine>,
    events: &[CustomerEvent],
    until: Millis,
) -> (Vec<Output>, Vec<(u64, String)>) {
    let (input, opts) = simulate_input(events, until);
    let simulate_on = |threads| {
        let mut outputs = Vec::new();
        let report =
            crate::simulate::simulate_into(engine.clone(), input.as_bytes(), &opts(threads), |o| {
                outputs.push(o);
                Ok(())
            })
            .unwrap();
        (outputs, report.rejected)
    };
    let one = simulate_on(1);
    // With identity merges, the shards hand over to one runtime at the first alias event;
    // the outputs and the refusals are the same (`simulate::sharded`).
    assert!(
        simulate_on(2) == one,
        "simulate on two threads differs from one"
    );
    one
}

#[test]
fn the_canonical_customers_step_cancels_what_the_alias_was_waiting_for() {
    let e = reference();
    let before_alias = [
        login("l", "acct-9", T0),
        payment("p", "cust-1", T0 + 10 * 60_000),
    ];
    // Apart, the login's customer is nudged three times.
    assert_eq!(sent(&run(&e, &before_alias, T0 + 10 * D)).len(), 3);

    let mut events = before_alias.to_vec();
    events.push(alias("a", "acct-9", "cust-1", T0 + 20 * 60_000));
    let out = run(&e, &events, T0 + 10 * D);
    assert_eq!(sent(&out), vec![], "{:#?}", moves(&out));
    let m = moves(&out);
    let has = |who: &str, t: &str, what: &str| {
        m.contains(&(who.to_owned(), t.to_owned(), what.to_owned()))
    };
    assert!(has("acct-9", "entered", "login"), "{m:#?}");
    assert!(has("acct-9", "exited", MERGED_EXIT_REASON), "{m:#?}");
    assert!(has("cust-1", "entered", "login"), "{m:#?}");
    assert!(has("cust-1", "step_completed", "payment_account"), "{m:#?}");
    // The alias's instance ends once; nothing else of it is emitted after the merge.
    let exit_at = m
        .iter()
        .position(|x| x.0 == "acct-9" && x.1 == "exited")
        .unwrap();
    assert!(m[exit_at + 1..].iter().all(|x| x.0 != "acct-9"), "{m:#?}");
}

#[test]
fn what_the_alias_was_sent_is_not_sent_again() {
    let e = reference();
    let events = [
        login("l", "acct-9", T0),
        // Someone else's event moves the watermark: the email and the task go out.
        login("other", "someone", T0 + 3 * D),
        alias("a", "acct-9", "cust-1", T0 + 3 * D + 60_000),
    ];
    let out = run(&e, &events, T0 + 10 * D);
    let mine: Vec<_> = sent(&out)
        .into_iter()
        .filter(|c| c.0 != "someone")
        .collect();
    assert_eq!(
        mine,
        vec![
            ("acct-9".into(), "assist-task".into(), 1, T0 + 2 * D),
            ("acct-9".into(), "invite-email".into(), 1, T0 + H),
            ("cust-1".into(), "sales-rep-call".into(), 1, T0 + 4 * D),
        ]
    );
}

#[test]
fn instances_are_matched_by_their_entry_event_when_the_merge_renumbers_them() {
    let trial = "journey: trial\nversion: 1\nre-entry: after-end\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: call\n        delay: 7d\n        channel: contact-center\n";
    let e = Arc::new(Engine::new(crate::journey::parsed(&[trial])));
    let start = |id: &str, c: &str, at| ev(id, c, "trial.started", at, &[]);
    let paid = |id: &str, c: &str, at| ev(id, c, "subscription.paid", at, &[]);
    let events = [
        // The alias's instance comes first and ends.
        start("a1", "alias", T0),
        paid("a2", "alias", T0 + 2 * D),
        // The canonical customer's own instance was mailed before the merge.
        start("c1", "canon", T0 + 10 * D),
        alias("x", "alias", "canon", T0 + 12 * D),
        // Someone else's event moves the watermark past the alias event's time: the merge
        // happens then, before the canonical customer's call is due.
        start("t", "someone", T0 + 12 * D + H),
    ];
    let sent_to =
        |out: &[Output]| -> Vec<_> { sent(out).into_iter().filter(|c| c.0 != "someone").collect() };
    let out = run(&e, &events, T0 + 30 * D);
    assert_eq!(
        sent_to(&out),
        vec![
            ("alias".into(), "mail".into(), 1, T0 + D),
            // Instance 1 before the merge, 2 after it: the same instance, mailed once.
            ("canon".into(), "call".into(), 2, T0 + 17 * D),
            ("canon".into(), "mail".into(), 1, T0 + 11 * D),
        ]
    );
    // The other way round: the canonical customer's instance comes first.
    let events = [
        start("c1", "canon", T0),
        paid("c2", "canon", T0 + 2 * D),
        start("a1", "alias", T0 + 10 * D),
        // Someone else's event moves the watermark past the alias's mail.
        start("t", "someone", T0 + 12 * D),
        alias("x", "alias", "canon", T0 + 12 * D),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    assert_eq!(
        sent_to(&out),
        vec![
            ("alias".into(), "mail".into(), 1, T0 + 11 * D),
            ("canon".into(), "call".into(), 2, T0 + 17 * D),
            ("canon".into(), "mail".into(), 1, T0 + D),
        ]
    );
}

#[test]
fn later_events_of_an_alias_reach_the_canonical_customer() {
    let e = reference();
    let events = [
        login("l", "acct-9", T0),
        alias("a", "acct-9", "cust-1", T0 + 60_000),
        // Published under the alias after the merge.
        payment("p", "acct-9", T0 + 30 * 60_000),
    ];
    let out = run(&e, &events, T0 + 10 * D);
    assert_eq!(sent(&out), vec![]);
    assert!(has_payment_account(&out, "cust-1"), "{:#?}", moves(&out));
    // Duplicates of a forwarded event change nothing.
    let mut twice = events.to_vec();
    twice.push(payment("p", "acct-9", T0 + 30 * 60_000));
    assert_eq!(as_set(&run(&e, &twice, T0 + 10 * D)), as_set(&out));
}

#[test]
fn a_chain_of_aliases_ends_at_the_last_canonical_customer() {
    let e = reference();
    let events = [
        login("l", "email:a@example.com", T0),
        alias("x1", "email:a@example.com", "acct-9", T0 + 60_000),
        alias("x2", "acct-9", "cust-1", T0 + 2 * 60_000),
        payment("p", "email:a@example.com", T0 + 30 * 60_000),
    ];
    let (out, rejected) = run_with_rejections(&e, &events, T0 + 10 * D);
    assert_eq!(rejected, vec![]);
    assert_eq!(sent(&out), vec![]);
    assert!(has_payment_account(&out, "cust-1"), "{:#?}", moves(&out));
    assert!(!has_payment_account(&out, "acct-9"));
}

#[test]
fn a_second_canonical_id_and_cycles_are_refused_and_a_repeat_changes_nothing() {
    let e = reference();
    let base = vec![
        login("l", "acct-9", T0),
        alias("a", "acct-9", "cust-1", T0 + 60_000),
    ];
    let (once, _) = run_with_rejections(&e, &base, T0 + 10 * D);

    let mut repeat = base.clone();
    repeat.push(alias("a-again", "acct-9", "cust-1", T0 + 2 * 60_000));
    let (out, rejected) = run_with_rejections(&e, &repeat, T0 + 10 * D);
    assert_eq!(rejected, vec![]);
    assert_eq!(as_set(&out), as_set(&once));

    let mut other = base.clone();
    other.push(alias("b", "acct-9", "cust-2", T0 + 2 * 60_000));
    let (out, rejected) = run_with_rejections(&e, &other, T0 + 10 * D);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, 3);
    assert!(
        rejected[0].1.contains("`acct-9` is an alias of `cust-1`"),
        "{rejected:?}"
    );
    assert_eq!(as_set(&out), as_set(&once));

    let mut back = base.clone();
    back.push(alias("c", "cust-1", "acct-9", T0 + 2 * 60_000));
    let (_, rejected) = run_with_rejections(&e, &back, T0 + 10 * D);
    assert_refused(&rejected, "form a cycle");
    // Once the first merge happened, the reverse alias is refused as it arrives.
    let mut late_back = base.clone();
    late_back.push(login("tick", "someone", T0 + H));
    late_back.push(alias("c", "cust-1", "acct-9", T0 + H));
    let (_, rejected) = run_with_rejections(&e, &late_back, T0 + 10 * D);
    assert!(
        rejected.len() == 1 && rejected[0].0 == 4 && rejected[0].1.contains("would be a cycle"),
        "{rejected:?}"
    );

    // A longer cycle is caught by the hop limit, and the run ends.
    let mut ring = base.clone();
    ring.push(alias("d", "cust-1", "cust-2", T0 + 2 * 60_000));
    ring.push(alias("e", "cust-2", "acct-9", T0 + 3 * 60_000));
    let (_, rejected) = run_with_rejections(&e, &ring, T0 + 10 * D);
    assert_refused(&rejected, "form a cycle");
}

#[test]
fn an_alias_event_must_name_another_customer() {
    let no_target = ev("a", "acct-9", ALIAS_EVENT_TYPE, T0, &[]);
    let err = crate::runtime::validate(&no_target, None, None, 0).unwrap_err();
    assert!(err.to_string().contains("no `canonical_id`"), "{err}");
    let itself = alias("a", "acct-9", "acct-9", T0);
    let err = crate::runtime::validate(&itself, None, None, 0).unwrap_err();
    assert!(err.to_string().contains("alias of itself"), "{err}");
    assert_eq!(err.code(), "identity");
    assert!(crate::runtime::validate(&alias("a", "acct-9", "c", T0), None, None, 0).is_ok());
}

#[test]
fn a_merged_state_keeps_its_links_through_the_state_encoding() {
    let e = reference();
    let mut alias_state = CustomerState::default();
    let mut out = Vec::new();
    e.apply(
        &mut alias_state,
        "acct-9",
        &login("l", "acct-9", T0),
        T0 + D,
        &mut out,
    );
    let link = |c: &str| IdentityLink {
        customer_id: c.into(),
        at: T0 + 2 * D,
        event_id: "a".into(),
    };
    let moved = e.merge_away(&mut alias_state, "acct-9", link("cust-1"), &mut out);
    assert_eq!(alias_state.merged_into(), Some(&link("cust-1")));
    assert!(alias_state.events.is_empty() && !alias_state.is_disposable());
    let mut canonical = CustomerState::default();
    e.merge_in(
        &mut canonical,
        "cust-1",
        &moved,
        link("acct-9"),
        T0 + 2 * D,
        &mut out,
    );
    assert_eq!(canonical.merged_from(), &[link("acct-9")]);
    assert_eq!(canonical.events.len(), 1);
    for state in [alias_state, canonical] {
        let bytes = crate::state::encode_value("x", &state).unwrap();
        assert_eq!(
            crate::state::decode_value::<CustomerState>("x", &bytes).unwrap(),
            state
        );
    }
}
