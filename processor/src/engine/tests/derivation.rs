//! A derivation kept between `advance`s (the `derivation` module): it goes on over events
//! added at the end of a customer's history, and is derived again from scratch whenever going
//! on would not give what a fresh derivation gives. Every `advance` of a test build also checks
//! a kept derivation against [`derive_versions`].

use super::*;
use crate::engine::derivation::KEEP_FROM_EVENTS;

/// A reference-journey customer who orders in one product line for a while, then from a
/// second one (the goal), and keeps ordering: a long history, in time order.
fn long_history() -> Vec<CustomerEvent> {
    let mut events = vec![
        login("l", "c1", T0),
        ev("p", "c1", "payment_account.created", T0 + 2 * H, &[]),
        ev("f", "c1", "financials.provided", T0 + D, &[]),
        ev("r", "c1", "references.provided", T0 + 2 * D, &[]),
    ];
    for n in 0..8 {
        let line = if n == 5 { "office" } else { "paper" };
        events.push(order(&format!("o{n}"), "c1", T0 + 3 * D + n * 5 * H, line));
    }
    events
}

/// The derivation `state` keeps: all its events once it has enough of them, else none.
fn expected_kept(state: &CustomerState) -> Option<usize> {
    (state.events.len() >= KEEP_FROM_EVENTS).then_some(state.events.len())
}

#[test]
fn a_kept_derivation_goes_on_over_new_events_and_gives_what_one_from_scratch_gives() {
    let e = reference();
    let mut kept = CustomerState::default();
    let mut fresh = CustomerState::default();
    let (mut all_kept, mut all_fresh) = (Vec::new(), Vec::new());
    for event in long_history() {
        let watermark = event.occurred_at - LATENESS;
        e.apply(&mut kept, "c1", &event, watermark, &mut all_kept);
        fresh.derivation = DerivationMemo::default();
        e.apply(&mut fresh, "c1", &event, watermark, &mut all_fresh);
        assert_eq!(all_kept, all_fresh, "after {}", event.event_id);
        assert_eq!(kept, fresh);
        assert_eq!(kept.derivation.kept_events(), expected_kept(&kept));
    }
    e.advance(&mut kept, "c1", T0 + 30 * D, &mut all_kept);
    fresh.derivation = DerivationMemo::default();
    e.advance(&mut fresh, "c1", T0 + 30 * D, &mut all_fresh);
    assert_eq!(all_kept, all_fresh);
    // The history went through the whole journey: the invite went out (the payment account
    // came after the hour), the goal was reached at the order from a second product line.
    assert_eq!(commands(&all_kept).len(), 1);
    assert_eq!(
        journey_events(&all_kept, JourneyEventType::GoalReached),
        vec![("additional_product_line".into(), T0 + 3 * D + 25 * H)]
    );
}

#[test]
fn an_event_inserted_before_the_end_derives_again_from_scratch() {
    let e = reference();
    let in_order = [
        login("l", "c1", T0),
        ev("p", "c1", "payment_account.created", T0 + 30 * 60_000, &[]),
        ev("f", "c1", "financials.provided", T0 + 3 * D, &[]),
        ev("r", "c1", "references.provided", T0 + 4 * D, &[]),
        order("o1", "c1", T0 + 5 * D, "paper"),
    ];
    // The payment account arrives last: its place is second, before what was derived.
    let mut arrival = in_order.to_vec();
    let payment = arrival.remove(1);
    arrival.push(payment);
    let watermark = T0 - LATENESS;
    let mut outputs = Vec::new();
    for events in [&in_order[..], &arrival[..]] {
        let mut state = CustomerState::default();
        let mut out = Vec::new();
        for event in events {
            e.apply(&mut state, "c1", event, watermark, &mut out);
        }
        assert!(out.is_empty(), "nothing is due at the watermark");
        e.advance(&mut state, "c1", T0 + 30 * D, &mut out);
        assert_eq!(state.derivation.kept_events(), expected_kept(&state));
        outputs.push(out);
    }
    assert_eq!(outputs[0], outputs[1]);
    // The late payment account cancelled the invite, the task and the call.
    assert!(commands(&outputs[1]).is_empty());
}

#[test]
fn a_derivation_kept_with_other_journeys_is_not_carried_on() {
    let before = trial("after-end", None);
    let mut state = paid_trial(&before);
    assert_eq!(state.derivation.kept_events(), expected_kept(&state));
    // The same journey reloaded with another goal: `subscription.paid` no longer ends the
    // instance, so the mail a day after the start is due after all.
    let text = trial_text("after-end", "subscription.renewed");
    let after = before.reloaded(crate::journey::parsed(&[&text]));
    let mut fresh = state.clone();
    fresh.derivation = DerivationMemo::default();
    let (mut out, mut out_fresh) = (Vec::new(), Vec::new());
    after.advance(&mut state, "c1", T0 + 2 * D, &mut out);
    after.advance(&mut fresh, "c1", T0 + 2 * D, &mut out_fresh);
    assert_eq!(out, out_fresh);
    assert_eq!(
        commands(&out),
        vec![("mail".into(), Channel::Email, T0 + D)]
    );
}

#[test]
fn compaction_drops_the_kept_derivation_with_the_events() {
    let e = trial("after-end", Some(7 * D));
    let mut state = paid_trial(&e);
    assert_eq!(state.derivation.kept_events(), Some(2));
    e.advance(&mut state, "c1", T0 + H + 7 * D, &mut Vec::new());
    assert!(state.events.is_empty(), "retention compacted the instance");
    assert_eq!(state.derivation.kept_events(), None);
}
