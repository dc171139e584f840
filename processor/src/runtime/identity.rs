//! Identity aliases in the runtime: moving an alias's history and later events to its
//! canonical customer.
//!
//! An `identity.alias` event is keyed by the alias (so it is ordered with the alias's own
//! events) and names the canonical customer in its `canonical_id` attribute. The alias's
//! partition makes it an alias ([`crate::engine::Engine::merge_away`]) and hands its history to
//! the canonical customer in a [`Forward`]; from then on every event of the alias is handed
//! on the same way. Live, forwards are produced to the input topic keyed by the canonical id,
//! in the transaction of the record that caused them, so they reach the canonical customer's
//! partition exactly once; `simulate` applies them at once. Chains (an alias of an alias) are
//! followed, and a record handed on more than [`MAX_FORWARD_HOPS`] times is refused (a cycle).

use serde::{Deserialize, Serialize};

use super::{PartitionRuntime, Rejection};
use crate::engine::{Applied, CustomerState, IdentityLink};
use crate::model::{CustomerEvent, Output, format_millis};
use crate::state::StateError;

/// Event type of an identity alias: the event's customer is an alias of `canonical_id`.
pub const ALIAS_EVENT_TYPE: &str = "identity.alias";

/// The attribute of an alias event naming the canonical customer id.
pub const ALIAS_CANONICAL_ATTRIBUTE: &str = "canonical_id";

/// How many times a record may be handed from an alias to its canonical customer: a chain
/// of aliases longer than this is taken for a cycle.
pub const MAX_FORWARD_HOPS: u8 = 8;

/// A record for another customer, made by an identity merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The customer it is for (the Kafka key).
    pub to: String,
    /// How many times it was handed on before (0 from the alias itself).
    pub hops: u8,
    /// What it carries.
    pub record: Forwarded,
}

/// What a [`Forward`] carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// An event of an alias, its `customer_id` rewritten to the canonical customer.
    Event(CustomerEvent),
    /// An alias's history, to fold into the canonical customer.
    Merge {
        /// The alias, and the alias event.
        from: IdentityLink,
        /// The alias's state as it was when it became an alias.
        state: Box<CustomerState>,
    },
}

impl Forward {
    /// The JSON form it travels in (Waymark reads it back; it is not part of the contract
    /// with upstream producers).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a forward always serializes")
    }

    /// Reads the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Forward, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a Waymark forward record: {e}"))
    }
}

/// Checks what an alias event must carry.
pub(super) fn check_alias(ev: &CustomerEvent) -> Result<(), Rejection> {
    match ev
        .attributes
        .get(ALIAS_CANONICAL_ATTRIBUTE)
        .map(|c| c.trim())
    {
        None | Some("") => Err(Rejection::Identity(format!(
            "{ALIAS_EVENT_TYPE} event of `{}` has no `{ALIAS_CANONICAL_ATTRIBUTE}` attribute; set it to the customer id `{}` is an alias of",
            ev.customer_id, ev.customer_id
        ))),
        Some(c) if c == ev.customer_id => Err(Rejection::Identity(format!(
            "{ALIAS_EVENT_TYPE} event makes `{c}` an alias of itself; key the event by the alias and name the canonical id in `{ALIAS_CANONICAL_ATTRIBUTE}`"
        ))),
        Some(c) if c.starts_with('\0') => Err(Rejection::Identity(format!(
            "{ALIAS_EVENT_TYPE} event names an invalid `{ALIAS_CANONICAL_ATTRIBUTE}`"
        ))),
        Some(_) => Ok(()),
    }
}

impl PartitionRuntime {
    /// Applies a record another customer's partition made (see [`Forward`]).
    pub fn on_forwarded(
        &mut self,
        forward: &Forward,
        out: &mut Vec<Output>,
    ) -> Result<Applied, StateError> {
        if forward.hops > MAX_FORWARD_HOPS {
            return Ok(Applied::Refused(format!(
                "a record for `{}` was handed from alias to canonical customer {} times: the aliases form a cycle or a chain longer than {MAX_FORWARD_HOPS}; fix the identity.alias events (the record is kept here)",
                forward.to, forward.hops
            )));
        }
        match &forward.record {
            Forwarded::Event(ev) => self.on_event_after(ev, forward.hops, out),
            Forwarded::Merge { from, state } => {
                self.merge_in(&forward.to, from, state, forward.hops, out)
            }
        }
    }

    /// If `ev`'s customer is an alias, hands the event on to its canonical customer and says
    /// so.
    pub(super) fn forward_if_alias(
        &mut self,
        ev: &CustomerEvent,
        hops: u8,
    ) -> Result<bool, StateError> {
        let Some(state) = self.cache.get(&*self.store, &ev.customer_id)? else {
            return Ok(false);
        };
        let Some(link) = state.merged_into() else {
            return Ok(false);
        };
        let to = link.customer_id.clone();
        self.forward_event(ev, to, hops);
        Ok(true)
    }

    /// Hands an alias's event on to its canonical customer `to`.
    pub(super) fn forward_event(&mut self, ev: &CustomerEvent, to: String, hops: u8) {
        self.forwards.push(Forward {
            record: Forwarded::Event(CustomerEvent {
                customer_id: to.clone(),
                ..ev.clone()
            }),
            to,
            hops: hops.saturating_add(1),
        });
        self.stats.forwarded += 1;
    }

    /// An `identity.alias` event (checked by `validate`): the customer becomes an alias of the
    /// canonical customer when the watermark reaches the event's time (at once if it is
    /// past it already), and its history moves there then.
    pub(super) fn alias(
        &mut self,
        ev: &CustomerEvent,
        out: &mut Vec<Output>,
    ) -> Result<Applied, StateError> {
        let alias = ev.customer_id.as_str();
        let canonical = ev.attributes[ALIAS_CANONICAL_ATTRIBUTE].trim().to_owned();
        let state = self
            .cache
            .get_or_insert_with(&*self.store, alias, CustomerState::default)?;
        if let Some(link) = state.merged_into().or(state.pending_merge()) {
            if link.customer_id == canonical {
                return Ok(Applied::Duplicate);
            }
            return Ok(Applied::Refused(format!(
                "`{alias}` is an alias of `{}` since {} (event {}); an identity is merged once: publish `{canonical}` as an alias of `{}` instead",
                link.customer_id,
                format_millis(link.at),
                link.event_id,
                link.customer_id
            )));
        }
        if let Some(link) = state
            .merged_from()
            .iter()
            .find(|l| l.customer_id == canonical)
        {
            return Ok(Applied::Refused(format!(
                "`{canonical}` was merged into `{alias}` at {} (event {}); making `{alias}` an alias of `{canonical}` would be a cycle",
                format_millis(link.at),
                link.event_id
            )));
        }
        let link = IdentityLink {
            customer_id: canonical,
            at: ev.occurred_at,
            event_id: ev.event_id.clone(),
        };
        let old_due = state.next_due;
        if link.at <= self.watermark {
            // Late: what was due by the watermark went out under the alias already.
            let before = out.len();
            self.merge_away(alias, link, self.watermark, out)?;
            self.count(&out[before..]);
            self.move_timer(alias, old_due, None);
            return Ok(Applied::Merged);
        }
        state.identity.get_or_insert_with(Box::default).pending = Some(link.clone());
        let new_due = Some(old_due.map_or(link.at, |d| d.min(link.at)));
        state.next_due = new_due;
        self.cache.mark_dirty(alias);
        self.move_timer(alias, old_due, new_due);
        Ok(Applied::Merged)
    }

    /// Makes `alias` an alias of `link.customer_id` now: emits what it has due by `until`,
    /// ends its instances, and hands its history on. The caller keeps its timer index and
    /// counts the outputs.
    pub(super) fn merge_away(
        &mut self,
        alias: &str,
        link: IdentityLink,
        until: crate::model::Millis,
        out: &mut Vec<Output>,
    ) -> Result<(), StateError> {
        let Some(state) = self.cache.get_mut(&*self.store, alias)? else {
            return Ok(());
        };
        self.engine.advance(state, alias, until, out);
        let from = IdentityLink {
            customer_id: alias.to_owned(),
            ..link.clone()
        };
        let to = link.customer_id.clone();
        let moved = self.engine.merge_away(state, alias, link, out);
        state.next_due = None;
        self.cache.mark_dirty(alias);
        self.forwards.push(Forward {
            to,
            hops: 0,
            record: Forwarded::Merge {
                from,
                state: Box::new(moved),
            },
        });
        self.stats.merges += 1;
        Ok(())
    }

    /// Folds an alias's history into `customer` — or, if `customer` is an alias itself,
    /// hands it on.
    fn merge_in(
        &mut self,
        customer: &str,
        from: &IdentityLink,
        alias: &CustomerState,
        hops: u8,
        out: &mut Vec<Output>,
    ) -> Result<Applied, StateError> {
        let watermark = self.watermark;
        let state =
            self.cache
                .get_or_insert_with(&*self.store, customer, CustomerState::default)?;
        if let Some(link) = state.merged_into() {
            let to = link.customer_id.clone();
            if to == from.customer_id {
                return Ok(Applied::Refused(format!(
                    "the aliases form a cycle: the history of `{to}` came back to it through `{customer}` (alias events {} and {}); it is kept in this record; fix the identity.alias events",
                    from.event_id, link.event_id
                )));
            }
            self.forwards.push(Forward {
                to,
                hops: hops.saturating_add(1),
                record: Forwarded::Merge {
                    from: from.clone(),
                    state: Box::new(alias.clone()),
                },
            });
            self.stats.forwarded += 1;
            return Ok(Applied::Forwarded);
        }
        if state.merged_from().iter().any(|l| l == from) {
            return Ok(Applied::Duplicate);
        }
        let old_due = state.next_due;
        let before = out.len();
        self.engine
            .merge_in(state, customer, alias, from.clone(), watermark, out);
        let new_due = state.next_due;
        self.cache.mark_dirty(customer);
        self.move_timer(customer, old_due, new_due);
        self.count(&out[before..]);
        self.stats.merges += 1;
        Ok(Applied::Merged)
    }
}
