//! Engine tests: the reference journey's edge cases, the golden trace, and properties over
//! generated traces (arrival order within the allowed lateness and duplicates change nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::journey::{JourneySet, parse_journey};
use crate::model::{Channel, format_millis, parse_millis};
use crate::simulate::{SimulateOptions, simulate};

mod derivation;
mod identity;
mod rules;
mod versions;

const H: Millis = 3_600_000;
const D: Millis = 24 * H;
const LATENESS: Millis = 5 * 60_000;
const T0: Millis = 1_772_400_000_000; // 2026-03-01T21:20:00Z

/// The engine of the reference journey, `deploy/journeys/b2b-onboarding.yaml`.
pub(crate) fn reference() -> Arc<Engine> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
    Arc::new(Engine::new(JourneySet::load(&path).unwrap()))
}

fn ev(
    id: &str,
    customer: &str,
    event_type: &str,
    at: Millis,
    attrs: &[(&str, &str)],
) -> CustomerEvent {
    CustomerEvent {
        event_id: id.into(),
        customer_id: customer.into(),
        event_type: event_type.into(),
        occurred_at: at,
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn login(id: &str, c: &str, at: Millis) -> CustomerEvent {
    ev(
        id,
        c,
        "login.created",
        at,
        &[
            ("email", "a@example.com"),
            ("sales_rep", "rep-3"),
            ("tz", "Europe/Berlin"),
            ("phone", "+16125550100"),
        ],
    )
}

fn order(id: &str, c: &str, at: Millis, line: &str) -> CustomerEvent {
    ev(
        id,
        c,
        "order.placed",
        at,
        &[("order_id", id), ("product_line", line)],
    )
}

/// The events as `simulate`'s input, and its options for a run up to `until` on `threads`.
fn simulate_input(
    events: &[CustomerEvent],
    until: Millis,
) -> (String, impl Fn(usize) -> SimulateOptions) {
    let input = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let opts = move |threads| SimulateOptions {
        allowed_lateness: LATENESS,
        until: Some(until),
        max_future_skew: 365 * D,
        progress_every: None,
        threads,
    };
    (input, opts)
}

/// Runs events through `simulate` (one partition, file order) and returns its outputs.
fn run(engine: &Arc<Engine>, events: &[CustomerEvent], until: Millis) -> Vec<Output> {
    let (input, opts) = simulate_input(events, until);
    let simulate_on = |threads| {
        let mut out = Vec::new();
        simulate(engine.clone(), input.as_bytes(), &mut out, &opts(threads)).unwrap();
        out
    };
    let out = simulate_on(1);
    // Customers split between engine threads give the same bytes (`simulate::sharded`).
    assert!(
        simulate_on(3) == out,
        "simulate on three threads differs from one"
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(customer, action, which(command), due)` of every command, sorted.
fn sent_by(
    outputs: &[Output],
    which: fn(&InterventionCommand) -> u32,
) -> Vec<(String, String, u32, Millis)> {
    let mut v: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some((
                c.customer_id.to_string(),
                c.action.to_string(),
                which(c),
                c.due_at,
            )),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn commands(outputs: &[Output]) -> Vec<(String, Channel, Millis)> {
    let mut v: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some((c.action.to_string(), c.channel, c.due_at)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn journey_events(outputs: &[Output], t: JourneyEventType) -> Vec<(String, Millis)> {
    let mut v: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(e) if e.event_type == t => {
                Some((e.step.as_deref().unwrap_or_default().to_owned(), e.at))
            }
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Outputs as a set of canonical JSON strings: what "the same output" means.
fn as_set(outputs: &[Output]) -> BTreeSet<String> {
    outputs
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect()
}

#[test]
fn login_without_payment_account_gets_email_task_and_call() {
    let e = reference();
    let out = run(&e, &[login("e1", "c1", T0)], T0 + 10 * D);
    assert_eq!(
        commands(&out),
        vec![
            ("assist-task".into(), Channel::ContactCenter, T0 + 2 * D),
            ("invite-email".into(), Channel::Email, T0 + H),
            ("sales-rep-call".into(), Channel::ContactCenter, T0 + 4 * D),
        ]
    );
    let call = out
        .iter()
        .find_map(|o| match o {
            Output::Command(c) if c.action == "sales-rep-call" => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        call.params["assignee"], "rep-3",
        "the call goes to the customer's sales rep"
    );
    assert_eq!(call.attributes["email"], "a@example.com");
    assert_eq!(
        journey_events(&out, JourneyEventType::StepAbandoned),
        vec![("payment_account".into(), T0 + 7 * D)]
    );
    assert_eq!(journey_events(&out, JourneyEventType::Entered).len(), 1);
}

#[test]
fn payment_account_just_before_the_hour_cancels_everything() {
    let e = reference();
    let out = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("e2", "c1", "payment_account.created", T0 + H - 1, &[]),
        ],
        T0 + 10 * D,
    );
    assert_eq!(commands(&out), vec![]);
}

#[test]
fn payment_account_exactly_at_or_after_the_due_time_does_not_cancel_it() {
    let e = reference();
    for offset in [H, H + 1, H + 2_000] {
        let out = run(
            &e,
            &[
                login("e1", "c1", T0),
                ev("e2", "c1", "payment_account.created", T0 + offset, &[]),
            ],
            T0 + 10 * D,
        );
        assert_eq!(
            commands(&out),
            vec![("invite-email".into(), Channel::Email, T0 + H)],
            "payment at +{offset} ms"
        );
    }
}

#[test]
fn payment_account_between_two_days_and_four_days_stops_only_the_call() {
    let e = reference();
    let out = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("e2", "c1", "payment_account.created", T0 + 3 * D, &[]),
        ],
        T0 + 20 * D,
    );
    let actions: Vec<_> = commands(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(actions, ["assist-task", "invite-email"]);
}

#[test]
fn no_command_fires_before_the_watermark_reaches_its_due_time() {
    let e = reference();
    // The last event is 1h + 4m after login: the watermark (newest − 5 min) is short of +1h.
    let out = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("x", "c2", "login.created", T0 + H + 4 * 60_000, &[]),
        ],
        T0 + H - 1,
    );
    assert_eq!(commands(&out), vec![]);
    let out = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("x", "c2", "login.created", T0 + H + 5 * 60_000, &[]),
        ],
        T0,
    );
    assert_eq!(commands(&out).len(), 1, "watermark reached +1h exactly");
}

#[test]
fn backlog_with_the_completion_inside_never_nudges() {
    // A replayed backlog: the payment account arrives after a burst of other customers' events
    // whose times are past the due time but within the allowed lateness.
    let e = reference();
    let mut events = vec![login("e1", "c1", T0)];
    events.push(login("o1", "other", T0 + H + 2 * 60_000));
    events.push(ev(
        "e2",
        "c1",
        "payment_account.created",
        T0 + H - 60_000,
        &[],
    ));
    let out = run(&e, &events, T0 + 30 * D);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Command(c) if c.customer_id == "c1"))
    );
}

#[test]
fn late_completion_cancels_what_has_not_fired_and_retracts_nothing() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        // Pushes the watermark to +3d: email (+1h) and task (+2d) fire.
        login("o1", "other", T0 + 3 * D),
        // Payment account at +1d arrives 2 days late: the call (+4d) is cancelled.
        ev("e2", "c1", "payment_account.created", T0 + D, &[]),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    let mine: Vec<_> = commands(
        &out.iter()
            .filter(|o| o.customer_id() == "c1")
            .cloned()
            .collect::<Vec<_>>(),
    )
    .into_iter()
    .map(|c| c.0)
    .collect();
    assert_eq!(mine, ["assist-task", "invite-email"]);
    // The late completion is still reported, with its true time.
    let completed = journey_events(&out, JourneyEventType::StepCompleted);
    assert!(completed.contains(&("payment_account".into(), T0 + D)));
}

#[test]
fn late_events_are_counted_in_state() {
    let e = reference();
    let mut state = CustomerState::default();
    let mut out = Vec::new();
    let applied = e.apply(&mut state, "c1", &login("e1", "c1", T0), T0 + D, &mut out);
    assert_eq!(applied, Applied::Accepted { late: true });
    assert_eq!(state.late_events, 1);
}

#[test]
fn duplicates_change_nothing() {
    let e = reference();
    let base = vec![
        login("e1", "c1", T0),
        ev("e2", "c1", "payment_account.created", T0 + 3 * H, &[]),
    ];
    let mut dup = base.clone();
    dup.insert(1, login("e1", "c1", T0));
    dup.push(ev("e2", "c1", "payment_account.created", T0 + 3 * H, &[]));
    assert_eq!(
        as_set(&run(&e, &base, T0 + 30 * D)),
        as_set(&run(&e, &dup, T0 + 30 * D))
    );
    let mut state = CustomerState::default();
    let mut out = Vec::new();
    e.apply(&mut state, "c1", &base[0], Millis::MIN, &mut out);
    assert_eq!(
        e.apply(&mut state, "c1", &base[0], Millis::MIN, &mut out),
        Applied::Duplicate
    );
    assert_eq!(state.duplicates, 1);
}

#[test]
fn steps_completed_before_their_window_opens_are_never_abandoned() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        ev("f", "c1", "financials.provided", T0 + D, &[]),
        ev("r", "c1", "references.provided", T0 + 2 * D, &[]),
        // Payment account after 8 days: payment_account is abandoned (window ended at +7d),
        // financials and references were done before their windows opened.
        ev("p", "c1", "payment_account.created", T0 + 8 * D, &[]),
    ];
    let out = run(&e, &events, T0 + 40 * D);
    let abandoned: Vec<_> = journey_events(&out, JourneyEventType::StepAbandoned)
        .into_iter()
        .map(|a| a.0)
        .collect();
    // first_order's window opens at +8d (when every earlier step is done) and ends at +15d.
    assert_eq!(abandoned, ["first_order", "payment_account"]);
    let completed: Vec<_> = journey_events(&out, JourneyEventType::StepCompleted)
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(
        completed,
        ["financials", "login", "payment_account", "references"]
    );
}

#[test]
fn abandoned_step_completed_later_is_reported_as_recovered() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        ev("p", "c1", "payment_account.created", T0 + 9 * D, &[]),
    ];
    let out = run(&e, &events, T0 + 12 * D);
    assert_eq!(
        journey_events(&out, JourneyEventType::StepAbandoned),
        vec![("payment_account".into(), T0 + 7 * D)]
    );
    assert!(
        journey_events(&out, JourneyEventType::StepCompleted)
            .contains(&("payment_account".into(), T0 + 9 * D))
    );
}

#[test]
fn one_order_can_complete_second_order_and_the_goal() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        ev("p", "c1", "payment_account.created", T0 + 10 * 60_000, &[]),
        ev("f", "c1", "financials.provided", T0 + H, &[]),
        ev("r", "c1", "references.provided", T0 + 2 * H, &[]),
        order("o1", "c1", T0 + 3 * H, "paper"),
        order("o2", "c1", T0 + 4 * H, "office"),
    ];
    let out = run(&e, &events, T0 + 60 * D);
    let completed: BTreeMap<_, _> = journey_events(&out, JourneyEventType::StepCompleted)
        .into_iter()
        .collect();
    assert_eq!(completed["second_order"], T0 + 4 * H);
    assert_eq!(completed["additional_product_line"], T0 + 4 * H);
    assert_eq!(
        journey_events(&out, JourneyEventType::GoalReached),
        vec![("additional_product_line".into(), T0 + 4 * H)]
    );
    assert!(journey_events(&out, JourneyEventType::StepAbandoned).is_empty());
    assert!(commands(&out).is_empty());
}

#[test]
fn the_first_order_never_counts_as_an_additional_product_line() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        order("o1", "c1", T0 + H, "paper"),
        order("o2", "c1", T0 + 2 * H, "paper"),
    ];
    let out = run(&e, &events, T0 + 60 * D);
    assert!(journey_events(&out, JourneyEventType::GoalReached).is_empty());
    let completed: Vec<_> = journey_events(&out, JourneyEventType::StepCompleted)
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(completed, ["first_order", "login", "second_order"]);
}

#[test]
fn goal_before_a_due_time_cancels_it_and_ends_the_instance() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        order("o1", "c1", T0 + 10 * 60_000, "paper"),
        order("o2", "c1", T0 + 20 * 60_000, "office"),
        ev("p", "c1", "payment_account.created", T0 + 5 * D, &[]),
    ];
    let out = run(&e, &events, T0 + 60 * D);
    assert!(
        commands(&out).is_empty(),
        "goal at +20m cancels the +1h email and everything after"
    );
    assert!(journey_events(&out, JourneyEventType::StepAbandoned).is_empty());
    let completed: Vec<_> = journey_events(&out, JourneyEventType::StepCompleted)
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert!(
        !completed.contains(&"payment_account".to_owned()),
        "events after the goal belong to no instance"
    );
}

#[test]
fn customers_who_never_log_in_produce_nothing() {
    let e = reference();
    let events = vec![
        ev("p", "c9", "payment_account.created", T0, &[]),
        order("o", "c9", T0 + H, "paper"),
    ];
    assert!(run(&e, &events, T0 + 60 * D).is_empty());
}

#[test]
fn a_second_login_neither_reenters_nor_restarts_timers() {
    let e = reference();
    let events = vec![login("e1", "c1", T0), login("e2", "c1", T0 + D)];
    let out = run(&e, &events, T0 + 60 * D);
    assert_eq!(journey_events(&out, JourneyEventType::Entered).len(), 1);
    assert_eq!(commands(&out).len(), 3);
    assert!(commands(&out).iter().all(|c| c.2 < T0 + 5 * D));
}

#[test]
fn re_entry_after_end_starts_a_new_instance_with_new_ids() {
    let text = "journey: trial\nversion: 2\nre-entry: after-end\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n";
    let j = parse_journey(Path::new("trial.yaml"), text).unwrap();
    let e = Arc::new(Engine::new(JourneySet::new(vec![j])));
    let events = vec![
        ev("a", "c1", "trial.started", T0, &[]),
        ev("b", "c1", "subscription.paid", T0 + H, &[]),
        ev("c", "c1", "trial.started", T0 + 10 * D, &[]),
    ];
    let out = run(&e, &events, T0 + 30 * D);
    let entered: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(j) if j.event_type == JourneyEventType::Entered => {
                Some((j.instance, j.journey_event_id.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(entered.len(), 2);
    assert_eq!((entered[0].0, entered[1].0), (1, 2));
    assert_ne!(entered[0].1, entered[1].1);
    let cmds: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some((c.instance, c.due_at)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cmds,
        vec![(2, T0 + 11 * D)],
        "instance 1 paid in time; instance 2 did not"
    );
}

/// A trial journey with the given re-entry policy whose goal, `paid`, is an event of type
/// `paid_by`: a mail a day after the start unless paid by then.
fn trial_text(re_entry: &str, paid_by: &str) -> String {
    format!(
        "journey: trial\nversion: 2\nre-entry: {re_entry}\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: {paid_by}\ngoal: paid\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n"
    )
}

/// A [`trial_text`] journey paid by `subscription.paid`, and an engine for it with `retention`.
fn trial(re_entry: &str, retention: Option<Millis>) -> Arc<Engine> {
    let text = trial_text(re_entry, "subscription.paid");
    let j = parse_journey(Path::new("trial.yaml"), &text).unwrap();
    Arc::new(Engine::new(JourneySet::new(vec![j])).with_retention(retention))
}

fn apply_all(e: &Engine, state: &mut CustomerState, events: &[CustomerEvent]) -> Vec<Applied> {
    let mut out = Vec::new();
    events
        .iter()
        .map(|ev| e.apply(state, "c1", ev, ev.occurred_at - LATENESS, &mut out))
        .collect()
}

/// `c1` on a [`trial`] engine: started at `T0`, paid an hour later (the goal), advanced to
/// `T0 + 2h`.
fn paid_trial(e: &Engine) -> CustomerState {
    let mut state = CustomerState::default();
    apply_all(
        e,
        &mut state,
        &[
            ev("a", "c1", "trial.started", T0, &[]),
            ev("b", "c1", "subscription.paid", T0 + H, &[]),
        ],
    );
    e.advance(&mut state, "c1", T0 + 2 * H, &mut Vec::new());
    state
}

#[test]
fn retention_compacts_a_finished_instance_and_keeps_its_count() {
    let e = trial("after-end", Some(7 * D));
    let mut state = paid_trial(&e);
    let mut out = Vec::new();
    assert_eq!(
        state.next_due,
        Some(T0 + H + 7 * D),
        "woken when retention is up"
    );
    assert_eq!(state.events.len(), 2);
    e.advance(&mut state, "c1", T0 + H + 7 * D, &mut out);
    assert!(out.is_empty(), "compaction emits nothing: {out:?}");
    assert!(state.events.is_empty());
    assert_eq!(state.journeys.get("trial").unwrap().retired, 1);
    assert!(state.journeys.get("trial").unwrap().emitted.is_empty());
    assert_eq!(state.retired_until, Some(T0 + H));
    assert_eq!(state.next_due, None);
    assert!(
        !state.is_disposable(),
        "the count of retired instances stays"
    );
    // An event of the compacted past is late and changes nothing.
    let old = ev("z", "c1", "trial.started", T0 + 30 * 60_000, &[]);
    assert_eq!(
        e.apply(&mut state, "c1", &old, T0 + 8 * D, &mut out),
        Applied::Accepted { late: true }
    );
    assert!(state.events.is_empty() && out.is_empty());
}

#[test]
fn a_compaction_wake_up_stays_armed_while_later_events_push_compaction_back() {
    let e = trial("never", Some(7 * D));
    let mut state = paid_trial(&e);
    let mut out = Vec::new();
    assert_eq!(
        state.next_due,
        Some(T0 + H + 7 * D),
        "compaction, once ended"
    );
    // Events of the ended journey push compaction back; the wake-up armed for the first one
    // stays, so the customer does not move in the timer index on each.
    let later = [
        ev("c", "c1", "subscription.paid", T0 + 2 * D, &[]),
        ev("d", "c1", "subscription.paid", T0 + 3 * D, &[]),
    ];
    apply_all(&e, &mut state, &later);
    assert_eq!(
        state.next_due,
        Some(T0 + H + 7 * D),
        "still the first wake-up"
    );
    // It comes early: it compacts nothing and re-arms at the newest event + retention.
    e.advance(&mut state, "c1", T0 + H + 7 * D, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(state.events.len(), 4, "nothing compacted early");
    assert_eq!(state.next_due, Some(T0 + 10 * D));
    e.advance(&mut state, "c1", T0 + 10 * D, &mut out);
    assert!(out.is_empty() && state.events.is_empty());
    assert_eq!(state.retired_until, Some(T0 + 3 * D));
    assert_eq!(state.next_due, None);
}

#[test]
fn after_retention_a_returning_customer_gets_the_next_instance_number_and_new_ids() {
    let events = vec![
        ev("a", "c1", "trial.started", T0, &[]),
        ev("b", "c1", "subscription.paid", T0 + H, &[]),
        ev("c", "c1", "trial.started", T0 + 40 * D, &[]),
    ];
    let kept = run(&trial("after-end", None), &events, T0 + 60 * D);
    let compacted = run(&trial("after-end", Some(7 * D)), &events, T0 + 60 * D);
    assert_eq!(as_set(&kept), as_set(&compacted));
    let instances: BTreeSet<u32> = compacted
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some(c.instance),
            _ => None,
        })
        .collect();
    assert_eq!(instances, [2].into(), "the returning customer's nudge");
}

#[test]
fn after_retention_re_entry_never_still_holds() {
    let events = vec![
        ev("a", "c1", "trial.started", T0, &[]),
        ev("b", "c1", "subscription.paid", T0 + H, &[]),
        ev("c", "c1", "trial.started", T0 + 40 * D, &[]),
    ];
    let out = run(&trial("never", Some(7 * D)), &events, T0 + 60 * D);
    assert!(
        out.iter().all(|o| match o {
            Output::JourneyEvent(j) => j.instance == 1,
            Output::Command(_) => false,
        }),
        "no second instance, no nudge: {out:?}"
    );
    assert_eq!(
        as_set(&out),
        as_set(&run(&trial("never", None), &events, T0 + 60 * D))
    );
}

#[test]
fn retention_never_touches_an_active_instance_or_a_pending_action() {
    let e = reference().as_ref().clone().with_retention(Some(D));
    let mut state = CustomerState::default();
    apply_all(&e, &mut state, &[login("l", "c1", T0)]);
    let mut out = Vec::new();
    e.advance(&mut state, "c1", T0 + 100 * D, &mut out);
    assert_eq!(commands(&out).len(), 3, "every nudge fired");
    assert_eq!(state.events.len(), 1, "the instance never ended: kept");
    assert_eq!(state.next_due, None);
}

#[test]
fn a_customer_who_never_entered_is_disposable_after_retention() {
    let e = trial("never", Some(7 * D));
    let mut state = CustomerState::default();
    apply_all(
        &e,
        &mut state,
        &[ev("b", "c1", "subscription.paid", T0, &[])],
    );
    assert!(!state.is_disposable());
    let mut out = Vec::new();
    e.advance(&mut state, "c1", T0 + 7 * D, &mut out);
    assert!(state.is_disposable(), "{state:?}");
}

#[test]
fn exit_condition_ends_the_instance_and_cancels_pending_actions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "goal: additional_product_line\n",
        "goal: additional_product_line\nexit:\n  - id: account-closed\n    event: account.closed\n",
    );
    let e = Arc::new(Engine::new(JourneySet::new(vec![
        parse_journey(&path, &text).unwrap(),
    ])));
    let out = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("x", "c1", "account.closed", T0 + 3 * D, &[]),
        ],
        T0 + 30 * D,
    );
    let actions: Vec<_> = commands(&out).into_iter().map(|c| c.0).collect();
    assert_eq!(actions, ["assist-task", "invite-email"]);
    let exited: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(j) if j.event_type == JourneyEventType::Exited => j.reason.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(exited, ["account-closed"]);
    assert!(
        journey_events(&out, JourneyEventType::StepAbandoned).is_empty(),
        "abandonment at +7d is after the exit"
    );
}

#[test]
fn commands_carry_the_profile_as_of_their_due_time() {
    let e = reference();
    let second = ev(
        "e2",
        "c1",
        "login.created",
        T0 + D,
        &[("sales_rep", "rep-9"), ("email", "new@example.com")],
    );
    // Arrival order must not matter: the second login arrives before or after the email fires.
    for events in [
        vec![login("e1", "c1", T0), second.clone()],
        vec![
            login("e1", "c1", T0),
            login("x", "other", T0 + 2 * H),
            second.clone(),
        ],
    ] {
        let out = run(&e, &events, T0 + 10 * D);
        let cmds: BTreeMap<String, InterventionCommand> = out
            .iter()
            .filter_map(|o| match o {
                Output::Command(c) if c.customer_id == "c1" => {
                    Some((c.action.to_string(), c.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(cmds["invite-email"].attributes["email"], "a@example.com");
        assert_eq!(
            cmds["sales-rep-call"].attributes["email"],
            "new@example.com"
        );
        assert_eq!(cmds["sales-rep-call"].params["assignee"], "rep-9");
    }
}

#[test]
fn forget_erases_the_customer_and_everything_still_pending() {
    let e = reference();
    let events = vec![
        login("e1", "c1", T0),
        login("e2", "c2", T0),
        ev(
            "f",
            "c1",
            crate::runtime::FORGET_EVENT_TYPE,
            T0 + 60_000,
            &[],
        ),
        ev("p", "c1", "payment_account.created", T0 + 2 * 60_000, &[]),
    ];
    let out = run(&e, &events, T0 + 10 * D);
    assert!(
        out.iter().all(|o| o.customer_id() == "c2"),
        "nothing more about c1: {out:?}"
    );
    assert_eq!(commands(&out).len(), 3, "c2 is untouched");
}

#[test]
fn ids_are_stable_and_commands_carry_every_contract_field() {
    let e = reference();
    let a = run(&e, &[login("e1", "c1", T0)], T0 + 10 * D);
    let b = run(&e, &[login("e1", "c1", T0)], T0 + 10 * D);
    assert_eq!(a, b);
    let ids: BTreeSet<_> = a.iter().map(|o| o.id().to_owned()).collect();
    assert_eq!(ids.len(), a.len(), "every output has its own id");
    let line =
        serde_json::to_value(a.iter().find(|o| matches!(o, Output::Command(_))).unwrap()).unwrap();
    for field in [
        "command_id",
        "journey",
        "journey_version",
        "customer_id",
        "action",
        "channel",
        "due_at",
    ] {
        assert!(!line[field].is_null(), "missing {field} in {line}");
    }
    assert_eq!(line["kind"], "command");
}

#[test]
fn explain_says_why_each_action_was_or_was_not_sent() {
    let e = reference();
    let mut state = CustomerState::default();
    let mut out = Vec::new();
    e.apply(
        &mut state,
        "c1",
        &login("e1", "c1", T0),
        Millis::MIN,
        &mut out,
    );
    e.apply(
        &mut state,
        "c1",
        &ev("p", "c1", "payment_account.created", T0 + 3 * D, &[]),
        Millis::MIN,
        &mut out,
    );
    e.advance(&mut state, "c1", T0 + 2 * D + H, &mut out);
    let x = e.explain("c1", &state);
    let actions: Vec<_> = x.journeys[0].instances[0]
        .actions
        .iter()
        .map(|a| (a.action.as_str(), a.status, a.reason.clone()))
        .collect();
    assert_eq!(actions[0], ("invite-email", "sent", None));
    assert_eq!(actions[1], ("assist-task", "sent", None));
    assert_eq!(actions[2].1, "cancelled");
    assert!(
        actions[2]
            .2
            .as_deref()
            .unwrap()
            .starts_with("step `payment_account` completed at"),
        "{actions:?}"
    );
}

// Outcomes of commands, fed back by the channel sinks -----------------------------------------

/// The reference journey plus the example that reacts to a bounced invite email.
fn with_bounce_fallback() -> Arc<Engine> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let journeys = [
        "deploy/journeys/b2b-onboarding.yaml",
        "deploy/examples/email-bounce-fallback.yaml",
    ]
    .iter()
    .map(|f| {
        let path = root.join(f);
        parse_journey(&path, &std::fs::read_to_string(&path).unwrap()).unwrap()
    })
    .collect();
    Arc::new(Engine::new(JourneySet::new(journeys)))
}

/// What a sink reports about `command`, as the event the processor applies.
fn outcome(
    command: &InterventionCommand,
    status: &str,
    at: Millis,
    detail: Option<&str>,
) -> CustomerEvent {
    crate::model::InterventionOutcome {
        outcome_id: stable_id(&[&command.command_id, status]),
        command_id: command.command_id.clone(),
        customer_id: command.customer_id.to_string(),
        journey: command.journey.to_string(),
        action: command.action.to_string(),
        channel: command.channel,
        status: status.into(),
        at,
        detail: detail.map(str::to_owned),
    }
    .to_event()
}

fn the_command<'a>(outputs: &'a [Output], action: &str) -> &'a InterventionCommand {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Command(c) if c.action == action => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {action} command in {outputs:?}"))
}

#[test]
fn an_outcome_is_recorded_on_the_action_it_is_about_and_explained() {
    let e = reference();
    let mut state = CustomerState::default();
    let mut out = Vec::new();
    e.apply(
        &mut state,
        "c1",
        &login("e1", "c1", T0),
        Millis::MIN,
        &mut out,
    );
    e.advance(&mut state, "c1", T0 + H, &mut out);
    let invite = the_command(&out, "invite-email").clone();
    let delivered = outcome(&invite, "delivered", T0 + H + 2_000, None);
    let before = out.len();
    assert_eq!(
        e.apply(&mut state, "c1", &delivered, T0 + H, &mut out),
        Applied::Accepted { late: false }
    );
    assert_eq!(
        out.len(),
        before,
        "the reference journey does not react to outcomes"
    );
    assert_eq!(
        e.apply(&mut state, "c1", &delivered, T0 + H, &mut out),
        Applied::Duplicate,
        "a redelivered outcome changes nothing"
    );
    let x = e.explain("c1", &state);
    let actions = &x.journeys[0].instances[0].actions;
    assert_eq!(actions[0].action, "invite-email");
    assert_eq!(
        actions[0].command_id.as_deref(),
        Some(invite.command_id.as_str())
    );
    assert_eq!(
        actions[0].outcomes,
        [format!("delivered at {}", format_millis(T0 + H + 2_000))]
    );
    // Not sent yet: no id, no outcomes.
    assert_eq!(actions[1].status, "pending");
    assert_eq!(actions[1].command_id, None);
    assert!(actions[1].outcomes.is_empty());
}

#[test]
fn a_bounced_invite_email_becomes_an_sms_and_a_delivered_one_does_not() {
    let e = with_bounce_fallback();
    let first = run(
        &e,
        &[login("e1", "bounces", T0), login("e2", "reads", T0)],
        T0 + H + LATENESS,
    );
    let bounced = outcome(
        the_command(&first, "invite-email"),
        "bounced",
        T0 + H + 1_000,
        Some("550 mailbox unavailable"),
    );
    let invite_of_reads = first
        .iter()
        .find_map(|o| match o {
            Output::Command(c) if c.customer_id == "reads" => Some(c),
            _ => None,
        })
        .unwrap();
    let delivered = outcome(invite_of_reads, "delivered", T0 + H + 1_000, None);
    let events = [
        login("e1", "bounces", T0),
        login("e2", "reads", T0),
        bounced.clone(),
        delivered,
    ];
    let outputs = run(&e, &events, T0 + H + LATENESS + 2_000);
    let sms: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) if c.channel == Channel::Sms => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(sms.len(), 1, "{outputs:?}");
    assert_eq!(
        sms[0].customer_id,
        the_command(&first, "invite-email").customer_id
    );
    assert_eq!(sms[0].journey, "email-bounce-fallback");
    assert_eq!(sms[0].action, "invite-sms");
    assert_eq!(sms[0].due_at, bounced.occurred_at);
    assert_eq!(
        sms[0].attributes.get("phone").map(CompactString::as_str),
        Some("+16125550100")
    );
}

#[test]
fn an_outcome_never_moves_event_time() {
    // A fresh outcome (the sink's clock) read beside an older backlog must not fire the
    // backlog's timers: only customer events and the caller's clock drive the watermark.
    let e = reference();
    let first = run(&e, &[login("e1", "c1", T0)], T0 + H);
    let late_report = outcome(
        the_command(&first, "invite-email"),
        "delivered",
        T0 + 10 * D,
        None,
    );
    let outputs = run(&e, &[login("e1", "c1", T0), late_report], T0 + 30 * 60_000);
    assert!(commands(&outputs).is_empty(), "{outputs:?}");
}

// Customer protection across journeys ----------------------------------------------------------

/// A second journey that also emails: two promos after a site visit.
const PROMO: &str = "journey: promo\nversion: 1\nre-entry: never\nsteps:\n  - id: visit\n    event: site.visited\n  - id: buy\n    event: order.placed\ngoal: buy\nrules:\n  - id: nudge\n    after: visit\n    unless: [buy]\n    actions:\n      - { id: promo-1, delay: 2h, channel: email }\n      - { id: promo-2, delay: 26h, channel: email }\n";

fn protected(protections: &str) -> Arc<Engine> {
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
    let journeys = vec![
        parse_journey(&reference, &std::fs::read_to_string(&reference).unwrap()).unwrap(),
        parse_journey(Path::new("promo.yaml"), PROMO).unwrap(),
    ];
    let p = crate::protect::Protections::parse(Path::new("p.yaml"), protections).unwrap();
    Arc::new(Engine::new(JourneySet::new(journeys)).with_protections(p))
}

fn suppressed(outputs: &[Output]) -> Vec<(String, String)> {
    let mut v: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(e) if e.event_type == JourneyEventType::CommandSuppressed => {
                Some((
                    e.action.clone().unwrap().to_string(),
                    e.reason.clone().unwrap(),
                ))
            }
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_frequency_cap_holds_across_journeys_in_due_time_order() {
    let e = protected("frequency-caps:\n  - { channel: email, max: 1, per: 1d }\n");
    let events = [
        login("e1", "c1", T0),
        ev("v1", "c1", "site.visited", T0, &[]),
    ];
    let outputs = run(&e, &events, T0 + 3 * D);
    let emails: Vec<_> = commands(&outputs)
        .into_iter()
        .filter(|(_, ch, _)| *ch == Channel::Email)
        .map(|(a, _, due)| (a, due))
        .collect();
    // invite at +1h is sent; promo-1 at +2h is within the day; promo-2 at +26h is not.
    assert_eq!(
        emails,
        [
            ("invite-email".to_owned(), T0 + H),
            ("promo-2".to_owned(), T0 + 26 * H)
        ]
    );
    assert_eq!(
        suppressed(&outputs),
        [(
            "promo-1".to_owned(),
            "frequency cap: 1 email per 1d".to_owned()
        )]
    );
    // Other channels are not capped.
    assert!(
        commands(&outputs)
            .iter()
            .any(|(a, _, _)| a == "assist-task")
    );

    // Decided the same when the watermark moves in small steps (one advance per hour).
    let mut state = CustomerState::default();
    let mut stepped = Vec::new();
    for ev in &events {
        e.apply(&mut state, "c1", ev, Millis::MIN, &mut stepped);
    }
    for h in 0..=72 {
        e.advance(&mut state, "c1", T0 + h * H, &mut stepped);
    }
    assert_eq!(as_set(&stepped), as_set(&outputs));

    // explain says which and why.
    let x = e.explain("c1", &state);
    let promo = x.journeys.iter().find(|j| j.journey == "promo").unwrap();
    let first = &promo.instances[0].actions[0];
    assert_eq!(
        (first.action.as_str(), first.status),
        ("promo-1", "suppressed")
    );
    assert_eq!(
        first.reason.as_deref(),
        Some("frequency cap: 1 email per 1d")
    );
    assert!(first.command_id.is_some());
}

#[test]
fn the_suppression_list_blocks_a_channel_from_the_entry_until_the_removal() {
    let e = protected("suppression: { add: customer.suppressed, remove: customer.unsuppressed }\n");
    let events = [
        login("e1", "c1", T0),
        ev(
            "s1",
            "c1",
            "customer.suppressed",
            T0 + 30 * 60_000,
            &[("channel", "email")],
        ),
        ev("v1", "c1", "site.visited", T0, &[]),
        ev("u1", "c1", "customer.unsuppressed", T0 + 25 * H, &[]),
    ];
    let outputs = run(&e, &events, T0 + 5 * D);
    let sent: Vec<_> = commands(&outputs).into_iter().map(|(a, _, _)| a).collect();
    // Email is blocked from +30m to +25h; the contact-center tasks are not affected.
    assert_eq!(sent, ["assist-task", "promo-2", "sales-rep-call"]);
    let blocked = suppressed(&outputs);
    assert_eq!(
        blocked.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["invite-email", "promo-1"]
    );
    assert!(
        blocked[0]
            .1
            .starts_with("suppression list (since 2026-03-01T21:50:00"),
        "{blocked:?}"
    );
}

#[test]
fn quiet_hours_defer_a_command_to_their_end_and_a_completion_meanwhile_cancels_it() {
    // T0 is 22:20 in Berlin (the login's tz); the contact-center tasks fall at the same hour.
    let e = protected(
        "quiet-hours:\n  - { channel: contact-center, from: \"18:00\", to: \"09:00\" }\n",
    );
    let nine_am_berlin = |day: i64| parse_millis("2026-03-01T08:00:00Z").unwrap() + day * D;
    let outputs = run(&e, &[login("e1", "c1", T0)], T0 + 5 * D);
    let sent = commands(&outputs);
    assert_eq!(
        sent,
        [
            (
                "assist-task".to_owned(),
                Channel::ContactCenter,
                nine_am_berlin(3)
            ),
            ("invite-email".to_owned(), Channel::Email, T0 + H),
            (
                "sales-rep-call".to_owned(),
                Channel::ContactCenter,
                nine_am_berlin(5)
            ),
        ],
        "email has no quiet hours; the tasks wait for 09:00"
    );
    let deferred: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(e) if e.event_type == JourneyEventType::CommandDeferred => {
                Some((e.action.clone().unwrap(), e.at, e.reason.clone().unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(deferred.len(), 2, "{deferred:?}");
    assert_eq!(deferred[0].1, T0 + 2 * D, "at the planned due time");
    assert!(
        deferred[0].2.starts_with(
            "quiet hours for contact-center in Europe/Berlin; deferred to 2026-03-04T08:00:00"
        ),
        "{deferred:?}"
    );

    // The payment account arrives during the night: the deferred task is not sent.
    let night = ev(
        "p",
        "c1",
        "payment_account.created",
        T0 + 2 * D + 3 * H,
        &[],
    );
    let outputs = run(&e, &[login("e1", "c1", T0), night], T0 + 5 * D);
    let sent: Vec<_> = commands(&outputs).into_iter().map(|(a, _, _)| a).collect();
    assert_eq!(sent, ["invite-email"]);
    assert!(outputs.iter().any(|o| matches!(o,
        Output::JourneyEvent(e) if e.event_type == JourneyEventType::CommandDeferred)));
}

#[test]
fn without_protections_nothing_is_suppressed() {
    let e = protected("{}\n");
    let outputs = run(
        &e,
        &[
            login("e1", "c1", T0),
            ev("v1", "c1", "site.visited", T0, &[]),
        ],
        T0 + 3 * D,
    );
    assert!(suppressed(&outputs).is_empty());
    assert_eq!(
        commands(&outputs)
            .iter()
            .filter(|(_, ch, _)| *ch == Channel::Email)
            .count(),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// The golden trace.

#[test]
fn golden_trace_matches_expected_output() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden.join("expected.json"))
            .expect("../shared/golden/expected.json must sit beside the project (see README)"),
    )
    .unwrap();
    let events: Vec<CustomerEvent> = std::fs::read_to_string(golden.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let until = parse_millis(expected["until"].as_str().unwrap()).unwrap();
    let out = run(&reference(), &events, until);
    #[derive(Default, Debug, PartialEq)]
    struct Got {
        commands: Vec<(String, String)>,
        completed: BTreeSet<String>,
        abandoned: BTreeSet<String>,
        goal: bool,
        entered: usize,
    }
    let mut got: BTreeMap<String, Got> = BTreeMap::new();
    for o in &out {
        let g = got.entry(o.customer_id().to_owned()).or_default();
        match o {
            Output::Command(c) => g
                .commands
                .push((c.channel.as_str().to_owned(), format_millis(c.due_at))),
            Output::JourneyEvent(j) => match j.event_type {
                JourneyEventType::Entered => g.entered += 1,
                JourneyEventType::StepCompleted => {
                    g.completed.insert(j.step.clone().unwrap().to_string());
                }
                JourneyEventType::StepAbandoned => {
                    g.abandoned.insert(j.step.clone().unwrap().to_string());
                }
                JourneyEventType::GoalReached => g.goal = true,
                _ => {}
            },
        }
    }
    let truth = expected["customers"].as_object().unwrap();
    assert_eq!(got.len(), truth.len(), "customers with output");
    for (customer, t) in truth {
        let g = got
            .get_mut(customer)
            .unwrap_or_else(|| panic!("no output for {customer}"));
        g.commands.sort();
        let want_cmds: Vec<(String, String)> = t["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c[0].as_str().unwrap().to_owned(),
                    c[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let set = |k: &str| -> BTreeSet<String> {
            t[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(g.commands, want_cmds, "commands of {customer}");
        assert_eq!(
            g.completed,
            set("completed"),
            "completed steps of {customer}"
        );
        assert_eq!(
            g.abandoned,
            set("abandoned"),
            "abandoned steps of {customer}"
        );
        assert_eq!(g.goal, t["goal"].as_bool().unwrap(), "goal of {customer}");
        assert_eq!(g.entered, 1, "entered of {customer}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties over generated traces.

/// One generated customer: which steps happen, and their offsets from login.
fn customer_trace() -> impl Strategy<Value = Vec<(u8, Millis, u8)>> {
    // (kind, offset from the customer's start, product line); kind 0 = login, 1..=4 the
    // non-order steps, 5 = order.
    prop::collection::vec((0u8..6, 0..(12 * D), 0u8..3), 1..8)
}

/// A generated customer: start time and `(kind, offset, product line)` per event.
type GeneratedCustomer = (Millis, Vec<(u8, Millis, u8)>);

fn materialize(customers: &[GeneratedCustomer]) -> Vec<CustomerEvent> {
    let types = [
        "login.created",
        "payment_account.created",
        "financials.provided",
        "references.provided",
        "login.created",
        "order.placed",
    ];
    let lines = ["paper", "office", "safety"];
    let mut events = Vec::new();
    for (c, (start, steps)) in customers.iter().enumerate() {
        let customer = format!("c{c}");
        // Every customer with any event logs in first; near-boundary offsets are likely.
        events.push(login(&format!("{customer}-login"), &customer, *start));
        for (i, (kind, offset, line)) in steps.iter().enumerate() {
            let id = format!("{customer}-{i}");
            let at = start + offset;
            let e = if *kind == 5 {
                order(&id, &customer, at, lines[*line as usize])
            } else {
                ev(&id, &customer, types[*kind as usize], at, &[])
            };
            events.push(e);
        }
    }
    events.sort_by_key(|e| (e.occurred_at, e.event_id.clone()));
    events
}

/// Reorders events so each arrives at most `max_delay` after its event time order would put it:
/// a bounded disorder the allowed lateness absorbs.
fn jitter(events: &[CustomerEvent], delays: &[Millis]) -> Vec<CustomerEvent> {
    let mut keyed: Vec<(Millis, usize, CustomerEvent)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.occurred_at + delays[i % delays.len()], i, e.clone()))
        .collect();
    keyed.sort_by_key(|(arrival, i, _)| (*arrival, *i));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

proptest! {
    /// Ids are a wire contract: hashing part by part must give RFC 9562's UUID v5 of the parts
    /// joined by `/`, byte for byte, as the ids already published were computed.
    #[test]
    fn stable_ids_are_uuid_v5_of_the_joined_parts(
        parts in prop::collection::vec("[a-z0-9./é-]{0,80}", 0..8),
    ) {
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let expected = uuid::Uuid::new_v5(&ID_NAMESPACE, parts.join("/").as_bytes()).to_string();
        prop_assert_eq!(stable_id(&parts), expected);
    }

    /// The emitted-set keys are stored with every customer: the streamed prefix must give the
    /// same FNV-1a as hashing every part in one pass.
    #[test]
    fn output_keys_streamed_from_an_instance_prefix_equal_one_pass_fnv(
        journey in "[a-z-]{1,20}", version in any::<u32>(), number in any::<u32>(),
        tag in "[a-z_]{1,16}", a in "[a-z.-]{0,20}", b in "[a-z.-]{0,20}",
    ) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let (v, n) = (version.to_le_bytes(), number.to_le_bytes());
        for part in [journey.as_bytes(), &v, &n, tag.as_bytes(), a.as_bytes(), b.as_bytes()] {
            for byte in part.iter().chain(std::iter::once(&0xff)) {
                h ^= u64::from(*byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        prop_assert_eq!(output_key(journey.as_bytes(), version, number, tag.as_bytes(), &a, &b), h);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arrival_order_within_the_allowed_lateness_does_not_change_the_output(
        customers in prop::collection::vec((0..(2 * D), customer_trace()), 1..6),
        delays in prop::collection::vec(0..(LATENESS - 1), 1..16),
    ) {
        let engine = reference();
        let ordered = materialize(&customers);
        let shuffled = jitter(&ordered, &delays);
        let until = T0 + 60 * D;
        let shift = |v: Vec<CustomerEvent>| -> Vec<CustomerEvent> { v.into_iter().map(|mut e| { e.occurred_at += T0; e }).collect() };
        let a = run(&engine, &shift(ordered), until);
        let b = run(&engine, &shift(shuffled), until);
        prop_assert_eq!(as_set(&a), as_set(&b));
    }

    #[test]
    fn duplicates_anywhere_change_nothing(
        customers in prop::collection::vec((0..(2 * D), customer_trace()), 1..5),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..10),
    ) {
        let engine = reference();
        let events: Vec<CustomerEvent> = materialize(&customers).into_iter().map(|mut e| { e.occurred_at += T0; e }).collect();
        let mut with_dups = events.clone();
        for p in &picks {
            // A re-delivery of an earlier event, right after it or later on.
            let i = p.index(events.len());
            let original = with_dups.iter().position(|e| e.event_id == events[i].event_id).unwrap();
            let at = (original + 1 + p.index(4)).min(with_dups.len());
            with_dups.insert(at, events[i].clone());
        }
        let until = T0 + 60 * D;
        let a = run(&engine, &events, until);
        let b = run(&engine, &with_dups, until);
        prop_assert_eq!(as_set(&a), as_set(&b));
    }

    #[test]
    fn retention_changes_no_output_of_a_re_entry_never_journey(
        customers in prop::collection::vec((0..(2 * D), customer_trace()), 1..6),
        retention_hours in 1..(20 * 24i64),
    ) {
        let kept = reference();
        let compacting = Arc::new(kept.as_ref().clone().with_retention(Some(retention_hours * H)));
        let events: Vec<CustomerEvent> = materialize(&customers).into_iter().map(|mut e| { e.occurred_at += T0; e }).collect();
        let until = T0 + 60 * D;
        prop_assert_eq!(as_set(&run(&kept, &events, until)), as_set(&run(&compacting, &events, until)));
    }

    #[test]
    fn every_output_is_emitted_once_and_only_after_its_time(
        customers in prop::collection::vec((0..(2 * D), customer_trace()), 1..6),
    ) {
        let engine = reference();
        let events: Vec<CustomerEvent> = materialize(&customers).into_iter().map(|mut e| { e.occurred_at += T0; e }).collect();
        let out = run(&engine, &events, T0 + 60 * D);
        let ids: BTreeSet<_> = out.iter().map(|o| o.id().to_owned()).collect();
        prop_assert_eq!(ids.len(), out.len());
        // Each customer entered exactly once (re-entry: never) and abandons each step at most once.
        let mut entered: BTreeMap<String, usize> = BTreeMap::new();
        for o in &out {
            if let Output::JourneyEvent(j) = o && j.event_type == JourneyEventType::Entered {
                *entered.entry(j.customer_id.to_string()).or_default() += 1;
            }
        }
        prop_assert!(entered.values().all(|n| *n == 1));
        prop_assert_eq!(entered.len(), customers.len());
    }
}

// ---------------------------------------------------------------------------------------------
// A/B experiments.

fn ab() -> Arc<Engine> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/b2b-onboarding-ab.yaml");
    Arc::new(Engine::new(JourneySet::load(&path).unwrap()))
}

#[test]
fn an_experiment_sends_each_customer_their_variant_and_the_holdout_nothing() {
    let e = ab();
    let journey = e.journeys().get("b2b-onboarding-ab").unwrap().clone();
    let x = journey.rules[0].actions[0].experiment.clone().unwrap();
    let customers: Vec<String> = (0..300).map(|i| format!("ab-{i}")).collect();
    let events: Vec<CustomerEvent> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| login(&format!("l{i}"), c, T0 + i as Millis * 1000))
        .collect();
    let out = run(&e, &events, T0 + 30 * D);
    let mut arms_seen = BTreeSet::new();
    for (i, c) in customers.iter().enumerate() {
        let login_at = T0 + i as Millis * 1000;
        let mine: Vec<&Output> = out.iter().filter(|o| o.customer_id() == c).collect();
        let invite: Vec<&InterventionCommand> = mine
            .iter()
            .filter_map(|o| match o {
                Output::Command(cmd) if cmd.action == "invite-email" => Some(cmd),
                _ => None,
            })
            .collect();
        let invite_events: Vec<&JourneyEvent> = mine
            .iter()
            .filter_map(|o| match o {
                Output::JourneyEvent(j) if j.action.as_deref() == Some("invite-email") => Some(j),
                _ => None,
            })
            .collect();
        assert_eq!(invite_events.len(), 1, "{c}: {invite_events:?}");
        let arm = x.assign(c);
        arms_seen.insert(x.arm_name(arm).to_owned());
        assert_eq!(invite_events[0].variant.as_deref(), Some(x.arm_name(arm)));
        match arm {
            crate::journey::Arm::Holdout => {
                assert!(invite.is_empty(), "{c} is held out");
                assert_eq!(
                    invite_events[0].event_type,
                    JourneyEventType::CommandSuppressed
                );
                assert_eq!(
                    invite_events[0].reason.as_deref(),
                    Some("holdout of experiment payment-invite")
                );
            }
            crate::journey::Arm::Variant(v) => {
                let variant = &x.variants[v];
                assert_eq!(invite.len(), 1, "{c}");
                let cmd = invite[0];
                assert_eq!(cmd.variant.as_deref(), Some(variant.id.as_str()));
                assert_eq!(cmd.channel, variant.channel.unwrap_or(Channel::Email));
                assert_eq!(cmd.due_at, login_at + variant.delay.unwrap_or(H));
                let template = variant
                    .template
                    .as_deref()
                    .unwrap_or("payment-account-invite");
                assert_eq!(cmd.template.as_deref(), Some(template));
                assert_eq!(
                    invite_events[0].event_type,
                    JourneyEventType::CommandEmitted
                );
            }
        }
        // The actions outside the experiment are the reference journey's, for everyone.
        let others: Vec<(String, Channel, Millis)> =
            commands(&mine.iter().map(|o| (*o).clone()).collect::<Vec<_>>())
                .into_iter()
                .filter(|(a, _, _)| a != "invite-email")
                .collect();
        assert_eq!(
            others,
            [
                (
                    "assist-task".to_owned(),
                    Channel::ContactCenter,
                    login_at + 2 * D
                ),
                (
                    "sales-rep-call".to_owned(),
                    Channel::ContactCenter,
                    login_at + 4 * D
                ),
            ]
        );
    }
    assert_eq!(
        arms_seen.len(),
        4,
        "300 customers reach every arm: {arms_seen:?}"
    );
}

#[test]
fn explain_names_the_variant_and_the_holdout() {
    let e = ab();
    let journey = e.journeys().get("b2b-onboarding-ab").unwrap().clone();
    let x = journey.rules[0].actions[0].experiment.clone().unwrap();
    let find = |holdout: bool| {
        (0..)
            .map(|i| format!("x-{i}"))
            .find(|c| (x.assign(c) == crate::journey::Arm::Holdout) == holdout)
            .unwrap()
    };
    for (customer, status, variant) in [
        (find(true), "held_out", "holdout".to_owned()),
        (
            find(false),
            "sent",
            x.arm_name(x.assign(&find(false))).to_owned(),
        ),
    ] {
        let mut state = CustomerState::default();
        let mut out = Vec::new();
        let l = login("l1", &customer, T0);
        e.apply(&mut state, &customer, &l, T0, &mut out);
        e.advance(&mut state, &customer, T0 + D, &mut out);
        let report = e.explain(&customer, &state);
        let invite = &report.journeys[0].instances[0].actions[0];
        assert_eq!(invite.action, "invite-email");
        assert_eq!(invite.status, status, "{customer}: {invite:?}");
        assert_eq!(invite.variant.as_deref(), Some(variant.as_str()));
        if status == "held_out" {
            assert_eq!(
                invite.reason.as_deref(),
                Some("holdout of experiment payment-invite")
            );
            assert!(invite.command_id.is_none());
        }
    }
}

// The record format.

/// A customer's record as it was written when every list of the state was a `Vec` and every
/// map a `BTreeMap`: the lists a customer usually holds one or a few of are now kept inline
/// (see [`ProfileValues`], [`Emitted`], [`VecMap`]), and their records must not change.
#[derive(Serialize)]
struct PlainRecord {
    events: Vec<PlainEvent>,
    profile: BTreeMap<String, Vec<ProfileValue>>,
    journeys: BTreeMap<String, (Vec<u64>, u32)>,
    next_due: Option<Millis>,
    late_events: u32,
    duplicates: u32,
    retired_until: Option<Millis>,
    identity: Option<Box<Identity>>,
}

/// A [`StoredEvent`] as it was written: id, type, time, kept attributes.
type PlainEvent = (String, String, Millis, Vec<(String, String)>);

impl From<&CustomerState> for PlainRecord {
    fn from(s: &CustomerState) -> Self {
        let text = |pairs: &[(CompactString, CompactString)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PlainRecord {
            events: s
                .events
                .iter()
                .map(|e| {
                    let (id, kind) = (e.event_id.to_string(), e.event_type.to_string());
                    (id, kind, e.at, text(&e.attributes))
                })
                .collect(),
            profile: s
                .profile
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
            journeys: s
                .journeys
                .iter()
                .map(|(k, m)| (k.to_owned(), (m.emitted.to_vec(), m.retired)))
                .collect(),
            next_due: s.next_due,
            late_events: s.late_events,
            duplicates: s.duplicates,
            retired_until: s.retired_until,
            identity: s.identity.clone(),
        }
    }
}

#[test]
fn a_record_encodes_as_it_did_with_plain_vectors_and_maps_beyond_the_inline_sizes_too() {
    let e = reference();
    let mut out = Vec::new();
    let c = "c-format";
    let mut short = CustomerState::default();
    e.apply(&mut short, c, &login("l1", c, T0), T0, &mut out);
    // Everything past what is kept inline: a second value of an attribute, an event with two
    // kept attributes, more emitted keys than fit inline, a second journey's memory.
    let mut long = short.clone();
    let mut email = login("l2", c, T0 + H);
    email
        .attributes
        .insert("email".into(), "b@example.com".into());
    e.apply(&mut long, c, &email, T0 + H, &mut out);
    e.apply(
        &mut long,
        c,
        &order("o1", c, T0 + 2 * H, "tools"),
        T0,
        &mut out,
    );
    e.advance(&mut long, c, T0 + 30 * D, &mut out);
    long.events[0]
        .attributes
        .extend([("a".into(), "1".into()), ("b".into(), "2".into())]);
    long.journeys.or_default("other").emitted.extend(0..20);
    long.identity = Some(Box::default());
    assert_eq!(long.profile.get("email").map(|v| v.len()), Some(2));
    assert!(long.journeys.len() > 1);
    assert!(
        !long
            .journeys
            .get("b2b-onboarding")
            .unwrap()
            .emitted
            .is_empty()
    );
    assert!(long.journeys.get("other").unwrap().emitted.len() > EMITTED_INLINE);
    for state in [CustomerState::default(), short, long] {
        let bytes = postcard::to_allocvec(&state).unwrap();
        assert_eq!(
            bytes,
            postcard::to_allocvec(&PlainRecord::from(&state)).unwrap()
        );
        assert_eq!(
            postcard::from_bytes::<CustomerState>(&bytes).unwrap(),
            state
        );
    }
}

#[test]
fn a_commands_small_maps_are_the_maps_collect_builds() {
    let entries = |n: usize| {
        // Out of order, with a repeated key whose later value must win.
        (0..n)
            .rev()
            .map(|i| (format_compact!("k{}", i % 3), format_compact!("v{i}")))
            .collect::<Vec<_>>()
    };
    for n in [0, 1, 2, 3, 7] {
        let collected: BTreeMap<CompactString, CompactString> = entries(n).into_iter().collect();
        assert_eq!(small_map(entries(n).into_iter()), collected, "{n} entries");
    }
    assert_eq!(small_map(entries(7).into_iter())["k0"], "v0");
}
