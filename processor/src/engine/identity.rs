//! Identity merges: an alias's history moves to its canonical customer.
//!
//! The engine's half of `identity.alias` (the runtime moves the records between customers and
//! partitions). [`Engine::merge_away`] ends the alias's open instances and hands over its
//! state; [`Engine::merge_in`] folds that state into the canonical customer's, whose instances
//! are then derived from both histories — as if the alias's events had arrived there late.
//! What either identity already sent is not sent again: the emitted-set keys are carried over
//! to the merged numbering, matching instances by the event they entered on.

use std::collections::HashMap;

use super::{
    CustomerState, DEFERRED, EndKind, Engine, IdentityLink, Instance, MERGED_EXIT_REASON,
    NOT_CHOSEN, SUPPRESSED, insert_in_order, instance_output_id, keep_profile_value, output_key,
    was_handled,
};
use crate::journey::Journey;
use crate::model::{JourneyEvent, JourneyEventType, Millis, Output};

/// Which of a memory's keys a merge carries over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// Everything: the canonical customer's own memory, renumbered.
    All,
    /// What was sent or decided about commands: the alias's memory. Its journey events are
    /// derived again under the canonical customer (the alias's instances exited as merged).
    Commands,
}

impl Engine {
    /// Makes `customer_id` an alias of `into`: emits an `exited` journey event (reason
    /// [`MERGED_EXIT_REASON`]) for each of its instances that entered and has not ended yet,
    /// and returns its history, leaving only the link behind. The caller hands the returned
    /// state to [`Engine::merge_in`] on the canonical customer.
    pub fn merge_away(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        into: IdentityLink,
        out: &mut Vec<Output>,
    ) -> CustomerState {
        for (journey, instances, _) in self.units(state) {
            let memory = state.journeys.get(&journey.name);
            let name = journey.name.as_bytes();
            // A migrated instance is listed by every version it ran on; the current one ends it.
            for inst in instances.iter().filter(|i| i.span.1 == Millis::MAX) {
                let key = |tag: &[u8], a: &str| {
                    output_key(name, inst.id_version, inst.number, tag, a, "")
                };
                let end_key = match inst.end {
                    Some((_, EndKind::Goal)) => Some(key(b"goal_reached", "")),
                    Some((_, EndKind::Exit(x))) => Some(key(b"exited", &journey.exits[x].id)),
                    None => None,
                };
                let shown = was_handled(memory, key(b"entered", ""));
                if !shown || end_key.is_some_and(|k| was_handled(memory, k)) {
                    continue;
                }
                out.push(Output::JourneyEvent(merged_exit(
                    journey,
                    customer_id,
                    inst,
                    into.at,
                )));
            }
        }
        let mut moved = std::mem::take(state);
        let mut identity = moved.identity.take().map(|b| *b).unwrap_or_default();
        identity.merged_into = Some(into);
        identity.pending = None;
        state.identity = Some(Box::new(identity));
        moved
    }

    /// Folds an alias's history (from [`Engine::merge_away`]) into `state`, records the link,
    /// and emits what is due by `watermark` and was not emitted yet by either identity.
    pub fn merge_in(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        alias: &CustomerState,
        from: IdentityLink,
        watermark: Millis,
        out: &mut Vec<Output>,
    ) {
        let own = std::mem::take(state);
        let mut merged = CustomerState {
            events: own.events.clone(),
            profile: own.profile.clone(),
            journeys: Default::default(),
            next_due: None,
            late_events: own.late_events.saturating_add(alias.late_events),
            duplicates: own.duplicates.saturating_add(alias.duplicates),
            retired_until: own.retired_until.max(alias.retired_until),
            identity: own.identity.clone(),
            derivation: Default::default(),
        };
        for e in &alias.events {
            if !merged.events.iter().any(|m| m.event_id == e.event_id) {
                insert_in_order(&mut merged.events, e.clone());
            }
        }
        for (attr, values) in &alias.profile {
            let mine = merged.profile.or_default(attr);
            for v in values {
                if !mine.iter().any(|m| m.event_id == v.event_id) {
                    keep_profile_value(mine, v.clone());
                }
            }
        }
        for (name, memory) in own.journeys.iter().chain(&alias.journeys) {
            merged.journeys.or_default(name).retired += memory.retired;
        }
        self.carry(&own, &mut merged, Carry::All);
        self.carry(alias, &mut merged, Carry::Commands);
        merged
            .identity
            .get_or_insert_with(Box::default)
            .merged_from
            .push(from);
        *state = merged;
        self.advance(state, customer_id, watermark, out);
    }

    /// Adds to `to`'s memory the keys of `from`'s memory that `carry` selects, renumbered:
    /// an instance of `from` is the instance of `to` that entered on the same event.
    fn carry(&self, from: &CustomerState, to: &mut CustomerState, carry: Carry) {
        let mut numbers: HashMap<(&str, u32, &str), u32> = HashMap::new();
        for (journey, instances, _) in self.units(to) {
            for inst in &instances {
                let entry = to.events[inst.entry].event_id.as_str();
                numbers.insert((journey.name.as_str(), inst.id_version, entry), inst.number);
            }
        }
        let mut keys: Vec<(String, u64)> = Vec::new();
        for (journey, instances, _) in self.units(from) {
            let Some(memory) = from.journeys.get(&journey.name) else {
                continue;
            };
            let name = journey.name.as_str();
            for inst in &instances {
                let entry = from.events[inst.entry].event_id.as_str();
                let Some(&number) = numbers.get(&(name, inst.id_version, entry)) else {
                    continue;
                };
                for (tag, a, b) in shapes(journey, carry) {
                    let old = output_key(name.as_bytes(), inst.id_version, inst.number, tag, a, b);
                    let new = output_key(name.as_bytes(), inst.id_version, number, tag, a, b);
                    for mask in [0, DEFERRED, SUPPRESSED, NOT_CHOSEN] {
                        if was_handled(Some(memory), old ^ mask) {
                            keys.push((name.to_owned(), new ^ mask));
                        }
                    }
                }
            }
        }
        for (name, key) in keys {
            let emitted = &mut to.journeys.or_default(&name).emitted;
            if let Err(pos) = emitted.binary_search(&key) {
                emitted.insert(pos, key);
            }
        }
    }
}

/// Every output key shape of a journey's instance that `carry` selects: `(tag, a, b)` as
/// `candidates` builds them.
fn shapes(journey: &Journey, carry: Carry) -> Vec<(&'static [u8], &str, &str)> {
    let mut out: Vec<(&'static [u8], &str, &str)> = Vec::new();
    for rule in &journey.rules {
        out.push((b"choice", &rule.id, ""));
        for action in &rule.actions {
            out.push((b"command", &rule.id, &action.id));
        }
    }
    if carry == Carry::Commands {
        return out;
    }
    out.push((b"entered", "", ""));
    out.push((b"goal_reached", "", ""));
    for step in &journey.steps {
        out.push((b"step_completed", &step.id, ""));
        out.push((b"step_abandoned", &step.id, ""));
    }
    for exit in &journey.exits {
        out.push((b"exited", &exit.id, ""));
    }
    out
}

/// The `exited` journey event of an alias's instance that moved to the canonical customer.
fn merged_exit(journey: &Journey, customer_id: &str, inst: &Instance, at: Millis) -> JourneyEvent {
    JourneyEvent {
        journey_event_id: instance_output_id(
            journey,
            inst,
            customer_id,
            [JourneyEventType::Exited.as_str(), MERGED_EXIT_REASON],
        ),
        journey: journey.name.as_str().into(),
        journey_version: journey.version,
        customer_id: customer_id.into(),
        instance: inst.number,
        event_type: JourneyEventType::Exited,
        step: None,
        at: at.max(inst.entered_at),
        command_id: None,
        action: None,
        reason: Some(MERGED_EXIT_REASON.to_owned()),
        variant: None,
    }
}
