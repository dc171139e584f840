//! The journey engine: pure, deterministic, no I/O, no clock.
//!
//! Owns the semantics of `DESIGN.md` "Semantics": `(customer state, event or watermark) →
//! (new state, commands, journey events, next wake-up time)`. It is shared by live processing
//! (`pipeline`) and the offline `simulate` mode, which is the executable specification. It must
//! never read a clock, touch Kafka or storage, or depend on the order customers are processed in.
//!
//! How it stays order-independent: a customer's state keeps the events that matter to some
//! journey, sorted by `(occurred_at, event_id)` and de-duplicated by `event_id`. Every journey
//! instance, step completion, abandonment and due command is *derived* from that sorted list,
//! so any arrival order of the same events gives the same derivation. An output is emitted once
//! the watermark reaches its event time (so it is final: no event within the allowed lateness
//! can still change it) and remembered by a hash of its stable id, so it is never emitted twice.
//! An event that arrives after the watermark passed its time (late) still updates the state:
//! whatever it cancels and has not been emitted is cancelled; what was emitted is not retracted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::journey::{Cond, Journey, JourneySet, Matcher, ReEntry, fill_placeholders};
use crate::model::{
    Channel, CustomerEvent, InterventionCommand, JourneyEvent, JourneyEventType, Millis,
    OUTCOME_ATTRIBUTES, OUTCOME_EVENT_PREFIX, Output,
};
use crate::protect::{Blocked, Protections};

/// An event kept in a customer's state (only the attributes some predicate reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The upstream event id (de-duplication key).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Event time.
    pub at: Millis,
    /// Attributes that predicates read (e.g. `product_line`).
    pub attributes: Vec<(String, String)>,
}

impl StoredEvent {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One value of a profile attribute, with the event time and id that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileValue {
    /// The value.
    pub value: String,
    /// Event time of the event that set it (the latest event wins).
    pub at: Millis,
    /// Id of that event (breaks ties between events of the same time).
    pub event_id: String,
}

/// What the engine remembers of one journey for one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyMemory {
    /// Hashes of the stable ids of every output already emitted, sorted.
    pub emitted: Vec<u64>,
    /// Instances compacted away by retention. Later instances are numbered after them (so
    /// their ids stay unique), and a `re-entry: never` journey is not entered again.
    pub retired: u32,
}

/// Everything the engine knows about one customer. Serialized into the state store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    /// Events relevant to some journey, sorted by `(at, event_id)`, unique by `event_id`.
    pub events: Vec<StoredEvent>,
    /// Profile attributes: per attribute, its values sorted by `(at, event_id)` (at most
    /// [`PROFILE_HISTORY`]). A command carries the values as of its due time, so its content
    /// does not depend on when it happened to be emitted.
    pub profile: BTreeMap<String, Vec<ProfileValue>>,
    /// Per journey name: what was emitted.
    pub journeys: BTreeMap<String, JourneyMemory>,
    /// Event time of the next output due; the caller's timer index wakes the customer then.
    pub next_due: Option<Millis>,
    /// Events that arrived after the watermark had passed their time.
    pub late_events: u32,
    /// Repeated deliveries of an event id already seen.
    pub duplicates: u32,
    /// Set by retention: the time of the newest event compacted away. Events at or before it
    /// belong to retired instances; arriving now, they are late and change nothing.
    pub retired_until: Option<Millis>,
}

/// Values kept per profile attribute; the oldest is dropped beyond this.
pub const PROFILE_HISTORY: usize = 8;

impl CustomerState {
    /// The value of a profile attribute as of event time `at`: the latest set at or before
    /// `at`, else the earliest known.
    pub fn profile_at(&self, attr: &str, at: Millis) -> Option<&str> {
        let values = self.profile.get(attr)?;
        let upto = values.partition_point(|v| v.at <= at);
        values.get(upto.saturating_sub(1)).map(|v| v.value.as_str())
    }

    /// Whether nothing worth keeping is left (no events, and no instance was ever retired):
    /// the caller may delete the customer.
    pub fn is_disposable(&self) -> bool {
        self.events.is_empty() && self.journeys.values().all(|m| m.retired == 0)
    }

    /// The latest value of every profile attribute.
    pub fn latest_profile(&self) -> BTreeMap<String, String> {
        self.profile
            .iter()
            .filter_map(|(k, vs)| vs.last().map(|v| (k.clone(), v.value.clone())))
            .collect()
    }
}

/// What happened to an applied event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was new and is part of the customer's state.
    Accepted {
        /// It arrived after the watermark had passed its `occurred_at`.
        late: bool,
    },
    /// An event with the same id was already applied: nothing changed.
    Duplicate,
    /// No journey reacts to this event type: ignored (and counted by the caller).
    Ignored,
    /// A `waymark.forget` request: the caller (the runtime, not the engine) erased the
    /// customer's state.
    Forgotten,
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The goal step was completed.
    Goal,
    /// Exit condition `exits[i]` matched.
    Exit(usize),
}

/// One derived journey instance of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// 1-based instance number.
    pub number: u32,
    /// Event time of entry.
    pub entered_at: Millis,
    /// Per step: event time and index (into `CustomerState::events`) of the earliest event
    /// completing it.
    pub completed: Vec<Option<(Millis, usize)>>,
    /// When and how it ended.
    pub end: Option<(Millis, EndKind)>,
}

impl Instance {
    fn done_at(&self, step: usize) -> Option<Millis> {
        self.completed[step].map(|(at, _)| at)
    }

    fn end_at(&self) -> Option<Millis> {
        self.end.map(|(at, _)| at)
    }

    /// Start of step `s`'s abandonment window: when every step before it was complete.
    pub fn window_open(&self, s: usize) -> Option<Millis> {
        let mut open = self.entered_at;
        for p in 0..s {
            open = open.max(self.done_at(p)?);
        }
        Some(open)
    }
}

/// What a derived output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entered,
    StepCompleted(usize),
    StepAbandoned(usize),
    GoalReached,
    Exited(usize),
    Command {
        rule: usize,
        action: usize,
    },
    /// The command was due in quiet hours; it goes out at `until`.
    Deferred {
        rule: usize,
        action: usize,
        until: Millis,
    },
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    due: Millis,
    instance: usize,
    kind: Kind,
    key: u64,
}

/// One journey's derivation for a customer: the journey, its instances, all its candidates,
/// and the ones due now that were not handled yet.
type Derived<'a> = (
    &'a crate::journey::Journey,
    Vec<Instance>,
    Vec<Candidate>,
    Vec<Candidate>,
);

/// The profile attribute holding a customer's time zone (IANA name), read by quiet hours.
pub const TZ_ATTRIBUTE: &str = "tz";

/// Key of a command's `command_deferred` event, from the command's key.
const DEFERRED: u64 = 0x4445_4645_5252_4544;

/// Marks, in [`JourneyMemory::emitted`], a command that was due but blocked by a protection
/// (its own key is there too: it was handled).
const SUPPRESSED: u64 = 0x5355_5050_5245_5353;

/// The journey engine for a fixed set of journeys.
#[derive(Debug, Clone)]
pub struct Engine {
    journeys: JourneySet,
    /// Customer protection checked before every command.
    protections: Protections,
    /// How long after a customer's last instance ended (event time) its instances are
    /// compacted away; `None` keeps them forever.
    retention: Option<Millis>,
    /// Event types some journey reacts to.
    relevant: HashSet<String>,
    /// Attributes that predicates read, per event type.
    predicate_attrs: BTreeMap<String, BTreeSet<String>>,
    /// Attributes kept in the profile.
    profile_attrs: BTreeSet<String>,
}

/// FNV-1a, 64 bit: a fixed, platform-independent hash for the emitted-set keys.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Namespace of every Waymark id (UUID v5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5761_796d_6172_6b00_8000_0000_0000_0001);

/// The stable id of an output: UUID v5 of its identifying parts.
pub fn stable_id(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, parts.join("/").as_bytes()).to_string()
}

impl Engine {
    /// Builds an engine for these journeys.
    pub fn new(journeys: JourneySet) -> Self {
        let mut relevant = HashSet::new();
        let mut predicate_attrs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut profile_attrs = BTreeSet::new();
        for j in journeys.iter() {
            profile_attrs.extend(j.profile.iter().cloned());
            let matchers = j
                .steps
                .iter()
                .map(|s| &s.matcher)
                .chain(j.exits.iter().map(|e| &e.matcher));
            for m in matchers {
                relevant.insert(m.event_type.clone());
                predicate_attrs
                    .entry(m.event_type.clone())
                    .or_default()
                    .extend(m.conds.iter().map(|(a, _)| a.clone()));
            }
        }
        Engine {
            journeys,
            protections: Protections::default(),
            retention: None,
            relevant,
            predicate_attrs,
            profile_attrs,
        }
    }

    /// Compacts a customer's finished instances away once the watermark is `retention` past
    /// the end of the last one (and nothing is pending): the events are dropped, the number
    /// of instances is kept (see [`JourneyMemory::retired`]). `None` keeps everything.
    pub fn with_retention(mut self, retention: Option<Millis>) -> Self {
        self.retention = retention;
        self
    }

    /// Checks `protections` before every command: the suppression list's event types are
    /// kept in state (with their `channel` attribute).
    pub fn with_protections(mut self, protections: Protections) -> Self {
        if !protections.quiet_hours.is_empty() {
            self.profile_attrs.insert(TZ_ATTRIBUTE.to_owned());
        }
        for t in protections.event_types() {
            self.relevant.insert(t.to_owned());
            self.predicate_attrs
                .entry(t.to_owned())
                .or_default()
                .insert("channel".to_owned());
        }
        self.protections = protections;
        self
    }

    /// The protections this engine checks.
    pub fn protections(&self) -> &Protections {
        &self.protections
    }

    /// The journeys this engine runs.
    pub fn journeys(&self) -> &JourneySet {
        &self.journeys
    }

    /// Whether some journey reacts to events of this type. Outcomes of commands
    /// (`intervention.*`) always are: they are recorded on the customer for `explain`.
    pub fn is_relevant(&self, event_type: &str) -> bool {
        self.relevant.contains(event_type) || event_type.starts_with(OUTCOME_EVENT_PREFIX)
    }

    /// Applies one event to a customer's state, then emits into `out` every output due at or
    /// before `watermark`. `watermark` is the caller's watermark *before* this event.
    pub fn apply(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        ev: &CustomerEvent,
        watermark: Millis,
        out: &mut Vec<Output>,
    ) -> Applied {
        if !self.is_relevant(&ev.event_type) {
            return Applied::Ignored;
        }
        if state.events.iter().any(|e| e.event_id == ev.event_id) {
            state.duplicates = state.duplicates.saturating_add(1);
            return Applied::Duplicate;
        }
        if state.retired_until.is_some_and(|h| ev.occurred_at <= h) {
            // Belongs to instances retention compacted away: late, counted, not applied.
            state.late_events = state.late_events.saturating_add(1);
            return Applied::Accepted { late: true };
        }
        let late = ev.occurred_at < watermark;
        if late {
            state.late_events = state.late_events.saturating_add(1);
        }
        for attr in &self.profile_attrs {
            if let Some(value) = ev.attributes.get(attr) {
                let values = state.profile.entry(attr.clone()).or_default();
                let key = (ev.occurred_at, ev.event_id.as_str());
                let pos = values.partition_point(|v| (v.at, v.event_id.as_str()) < key);
                values.insert(
                    pos,
                    ProfileValue {
                        value: value.clone(),
                        at: ev.occurred_at,
                        event_id: ev.event_id.clone(),
                    },
                );
                if values.len() > PROFILE_HISTORY {
                    values.remove(0);
                }
            }
        }
        let kept = self.predicate_attrs.get(&ev.event_type);
        let outcome = ev.event_type.starts_with(OUTCOME_EVENT_PREFIX);
        let stored = StoredEvent {
            event_id: ev.event_id.clone(),
            event_type: ev.event_type.clone(),
            at: ev.occurred_at,
            attributes: ev
                .attributes
                .iter()
                .filter(|(k, _)| {
                    kept.is_some_and(|s| s.contains(*k))
                        || (outcome && OUTCOME_ATTRIBUTES.contains(&k.as_str()))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let pos = state.events.partition_point(|e| {
            (e.at, e.event_id.as_str()) < (stored.at, stored.event_id.as_str())
        });
        state.events.insert(pos, stored);
        self.advance(state, customer_id, watermark, out);
        Applied::Accepted { late }
    }

    /// Emits into `out` every output of this customer due at or before `watermark` and not
    /// emitted yet (in event-time order), and updates `state.next_due`.
    pub fn advance(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        watermark: Millis,
        out: &mut Vec<Output>,
    ) {
        let mut next_due: Option<Millis> = None;
        // The newest event or instance end, and whether some instance is still active.
        let mut quiet_since = state.events.last().map_or(Millis::MIN, |e| e.at);
        let mut active = false;
        // Per journey: its instances, all its candidates, and the ones due now (not handled).
        let mut derived = Vec::new();
        for journey in self.journeys.iter() {
            let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
            let instances = derive_instances(journey, &state.events, retired);
            if instances.is_empty() {
                continue;
            }
            for inst in &instances {
                match inst.end_at() {
                    Some(end) => quiet_since = quiet_since.max(end),
                    None => active = true,
                }
            }
            let memory = state.journeys.get(&journey.name);
            let all = self.protected_candidates(journey, &instances, state, customer_id);
            let mut ready = Vec::new();
            for c in &all {
                if memory.is_some_and(|m| m.emitted.binary_search(&c.key).is_ok()) {
                    continue;
                }
                if c.due <= watermark {
                    ready.push(*c);
                } else {
                    next_due = Some(next_due.map_or(c.due, |n| n.min(c.due)));
                }
            }
            // Stable sort: equal times keep derivation order.
            ready.sort_by_key(|c| c.due);
            derived.push((&**journey, instances, all, ready));
        }
        let blocked = self.decide(state, customer_id, &derived);
        for (j, (journey, instances, _, ready)) in derived.iter().enumerate() {
            if ready.is_empty() {
                continue;
            }
            for c in ready {
                let why = blocked.get(&(j, c.key));
                materialize(
                    journey,
                    customer_id,
                    state,
                    &instances[c.instance],
                    *c,
                    why,
                    out,
                );
            }
            let emitted = &mut state
                .journeys
                .entry(journey.name.clone())
                .or_default()
                .emitted;
            for c in ready {
                let suppressed = blocked
                    .contains_key(&(j, c.key))
                    .then_some(c.key ^ SUPPRESSED);
                for key in std::iter::once(c.key).chain(suppressed) {
                    if let Err(pos) = emitted.binary_search(&key) {
                        emitted.insert(pos, key);
                    }
                }
            }
        }
        if let Some(retention) = self.retention
            && next_due.is_none()
            && !active
            && !state.events.is_empty()
        {
            let retire_at = quiet_since.saturating_add(retention);
            if retire_at <= watermark {
                self.retire(state, quiet_since);
            } else {
                next_due = Some(retire_at);
            }
        }
        state.next_due = next_due;
    }

    /// The journey's candidates for these instances, with quiet hours applied: a command due
    /// in quiet hours becomes a `command_deferred` at its due time and the command itself at
    /// the end of the quiet hours — unless the rule's `unless` steps, the goal or an exit
    /// cancel it by then.
    fn protected_candidates(
        &self,
        journey: &Journey,
        instances: &[Instance],
        state: &CustomerState,
        customer_id: &str,
    ) -> Vec<Candidate> {
        let all = candidates(journey, instances, customer_id);
        if self.protections.quiet_hours.is_empty() {
            return all;
        }
        let mut out = Vec::with_capacity(all.len());
        for c in all {
            let Kind::Command { rule, action } = c.kind else {
                out.push(c);
                continue;
            };
            let r = &journey.rules[rule];
            let effective = r.actions[action].effective(customer_id);
            let tz = state.profile_at(TZ_ATTRIBUTE, c.due);
            // A held-out customer gets nothing, so there is nothing to defer.
            let deferral = (!effective.held_out)
                .then(|| self.protections.defer(effective.channel, c.due, tz))
                .flatten();
            let Some(until) = deferral else {
                out.push(c);
                continue;
            };
            out.push(Candidate {
                kind: Kind::Deferred {
                    rule,
                    action,
                    until,
                },
                key: c.key ^ DEFERRED,
                ..c
            });
            if cancelled_by(&instances[c.instance], &r.unless, until).is_none() {
                out.push(Candidate { due: until, ..c });
            }
        }
        out
    }

    /// Which of the commands due now a protection blocks, keyed by (index in `derived`,
    /// candidate key). Commands are decided in due-time order across all journeys (ties: journey
    /// order, then derivation order); the ones handled before keep their decision.
    fn decide(
        &self,
        state: &CustomerState,
        customer_id: &str,
        derived: &[Derived<'_>],
    ) -> HashMap<(usize, u64), Blocked> {
        let mut blocked = HashMap::new();
        if self.protections.is_empty() {
            return blocked;
        }
        // The channel a command goes out on; none for a held-out customer (nothing is sent,
        // so nothing is capped or counted).
        let channel_of = |journey: &Journey, c: &Candidate| match c.kind {
            Kind::Command { rule, action } => {
                journey.rules[rule].actions[action].sends_on(customer_id)
            }
            _ => None,
        };
        let mut sent: BTreeMap<Channel, Vec<Millis>> = BTreeMap::new();
        let mut due_now = Vec::new();
        for (j, (journey, _, all, ready)) in derived.iter().enumerate() {
            let emitted = state.journeys.get(&journey.name).map(|m| &m.emitted);
            let has = |key: u64| emitted.is_some_and(|e| e.binary_search(&key).is_ok());
            for c in all {
                if let Some(ch) = channel_of(journey, c)
                    && has(c.key)
                    && !has(c.key ^ SUPPRESSED)
                {
                    sent.entry(ch).or_default().push(c.due);
                }
            }
            for (i, c) in ready.iter().enumerate() {
                if let Some(ch) = channel_of(journey, c) {
                    due_now.push((c.due, j, i, ch, c.key));
                }
            }
        }
        due_now.sort();
        for (due, j, _, channel, key) in due_now {
            let list = self.suppression_events(state);
            let sent_here = sent.entry(channel).or_default();
            match self.protections.check(channel, due, list, sent_here) {
                Some(b) => {
                    blocked.insert((j, key), b);
                }
                None => sent_here.push(due),
            }
        }
        blocked
    }

    /// The customer's suppression-list events: `(type, time, channel attribute)`.
    fn suppression_events<'a>(
        &'a self,
        state: &'a CustomerState,
    ) -> impl Iterator<Item = (&'a str, Millis, Option<&'a str>)> + 'a {
        let s = self.protections.suppression.as_ref();
        state
            .events
            .iter()
            .filter(move |e| s.is_some_and(|s| e.event_type == s.add || e.event_type == s.remove))
            .map(|e| (e.event_type.as_str(), e.at, e.attr("channel")))
    }

    /// Why a command handled before was blocked (for `explain`): the protection that blocks it
    /// given the commands of its channel sent before it.
    fn blocked_reason(
        &self,
        state: &CustomerState,
        customer_id: &str,
        channel: Channel,
        due: Millis,
    ) -> String {
        let mut sent = Vec::new();
        for journey in self.journeys.iter() {
            let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
            let instances = derive_instances(journey, &state.events, retired);
            let emitted = state.journeys.get(&journey.name).map(|m| &m.emitted);
            let has = |key: u64| emitted.is_some_and(|e| e.binary_search(&key).is_ok());
            for c in self.protected_candidates(journey, &instances, state, customer_id) {
                if let Kind::Command { rule, action } = c.kind
                    && journey.rules[rule].actions[action].sends_on(customer_id) == Some(channel)
                    && c.due <= due
                    && has(c.key)
                    && !has(c.key ^ SUPPRESSED)
                {
                    sent.push(c.due);
                }
            }
        }
        self.protections
            .check(channel, due, self.suppression_events(state), &sent)
            .map_or_else(
                || "blocked by a protection no longer configured".to_owned(),
                |b| b.describe(),
            )
    }

    /// Compacts every (finished) instance away: counts them, forgets their events and what
    /// they emitted. Only called with nothing active and nothing pending.
    fn retire(&self, state: &mut CustomerState, until: Millis) {
        for journey in self.journeys.iter() {
            let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
            let n = derive_instances(journey, &state.events, retired).len() as u32;
            if n > 0 || state.journeys.contains_key(&journey.name) {
                let memory = state.journeys.entry(journey.name.clone()).or_default();
                memory.retired = retired + n;
                memory.emitted.clear();
            }
        }
        state.events.clear();
        state.retired_until = Some(until);
    }

    /// The customer's instances of `journey`, derived from the state (for `state inspect`).
    pub fn instances(&self, journey: &Journey, state: &CustomerState) -> Vec<Instance> {
        let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
        derive_instances(journey, &state.events, retired)
    }
}

/// Turns a candidate into its output records.
fn materialize(
    journey: &Journey,
    customer_id: &str,
    state: &CustomerState,
    inst: &Instance,
    c: Candidate,
    blocked: Option<&Blocked>,
    out: &mut Vec<Output>,
) {
    let version = journey.version.to_string();
    let number = inst.number.to_string();
    let jev = |event_type: JourneyEventType, step: Option<&str>, extra: &str| {
        let step_or_extra = step.unwrap_or(extra);
        JourneyEvent {
            journey_event_id: stable_id(&[
                &journey.name,
                &version,
                customer_id,
                &number,
                event_type.as_str(),
                step_or_extra,
            ]),
            journey: journey.name.clone(),
            journey_version: journey.version,
            customer_id: customer_id.to_owned(),
            instance: inst.number,
            event_type,
            step: step.map(str::to_owned),
            at: c.due,
            command_id: None,
            action: None,
            reason: None,
            variant: None,
        }
    };
    let step_id = |s: usize| journey.steps[s].id.as_str();
    match c.kind {
        Kind::Entered => out.push(Output::JourneyEvent(jev(
            JourneyEventType::Entered,
            Some(step_id(0)),
            "",
        ))),
        Kind::StepCompleted(s) => out.push(Output::JourneyEvent(jev(
            JourneyEventType::StepCompleted,
            Some(step_id(s)),
            "",
        ))),
        Kind::StepAbandoned(s) => out.push(Output::JourneyEvent(jev(
            JourneyEventType::StepAbandoned,
            Some(step_id(s)),
            "",
        ))),
        Kind::GoalReached => out.push(Output::JourneyEvent(jev(
            JourneyEventType::GoalReached,
            Some(step_id(journey.goal)),
            "",
        ))),
        Kind::Exited(x) => {
            let mut e = jev(JourneyEventType::Exited, None, &journey.exits[x].id);
            e.reason = Some(journey.exits[x].id.clone());
            out.push(Output::JourneyEvent(e));
        }
        Kind::Deferred {
            rule,
            action,
            until,
        } => {
            let r = &journey.rules[rule];
            let a = &r.actions[action];
            let effective = a.effective(customer_id);
            let mut e = jev(
                JourneyEventType::CommandDeferred,
                None,
                &format!("{}.{}", r.id, a.id),
            );
            e.command_id = Some(stable_id(&[
                &journey.name,
                &version,
                customer_id,
                &number,
                &r.id,
                &a.id,
            ]));
            e.action = Some(a.id.clone());
            e.variant = effective.experiment.map(|(_, arm)| arm.to_owned());
            e.reason = Some(format!(
                "quiet hours for {} in {}; deferred to {}",
                effective.channel,
                state.profile_at(TZ_ATTRIBUTE, c.due).unwrap_or("UTC"),
                crate::model::format_millis(until)
            ));
            out.push(Output::JourneyEvent(e));
        }
        Kind::Command { rule, action } => {
            let r = &journey.rules[rule];
            let a = &r.actions[action];
            let command_id =
                stable_id(&[&journey.name, &version, customer_id, &number, &r.id, &a.id]);
            let emitted_key = format!("{}.{}", r.id, a.id);
            let effective = a.effective(customer_id);
            let variant = effective.experiment.map(|(_, arm)| arm.to_owned());
            let withheld = match (blocked, effective.experiment) {
                (Some(why), _) => Some(why.describe()),
                (None, Some((x, _))) if effective.held_out => {
                    Some(format!("holdout of experiment {x}"))
                }
                _ => None,
            };
            if let Some(reason) = withheld {
                let mut e = jev(JourneyEventType::CommandSuppressed, None, &emitted_key);
                e.command_id = Some(command_id);
                e.action = Some(a.id.clone());
                e.reason = Some(reason);
                e.variant = variant;
                out.push(Output::JourneyEvent(e));
                return;
            }
            let lookup = |k: &str| state.profile_at(k, c.due);
            let command = InterventionCommand {
                command_id: command_id.clone(),
                journey: journey.name.clone(),
                journey_version: journey.version,
                customer_id: customer_id.to_owned(),
                instance: inst.number,
                rule: r.id.clone(),
                action: a.id.clone(),
                channel: effective.channel,
                due_at: c.due,
                template: effective.template.map(str::to_owned),
                variant: variant.clone(),
                params: a
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), fill_placeholders(v, lookup)))
                    .collect(),
                attributes: journey
                    .profile
                    .iter()
                    .filter_map(|k| {
                        state
                            .profile_at(k, c.due)
                            .map(|v| (k.clone(), v.to_owned()))
                    })
                    .collect(),
            };
            let mut e = jev(JourneyEventType::CommandEmitted, None, &emitted_key);
            e.command_id = Some(command_id);
            e.action = Some(a.id.clone());
            e.variant = variant;
            out.push(Output::Command(command));
            out.push(Output::JourneyEvent(e));
        }
    }
}

/// Why each of a customer's outputs was or was not produced: the answer to "why did (or
/// didn't) this customer get that email?". Built by [`Engine::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// One entry per journey the customer entered.
    pub journeys: Vec<JourneyExplanation>,
}

/// A customer's instances of one journey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JourneyExplanation {
    /// Journey name.
    pub journey: String,
    /// Journey version.
    pub version: u32,
    /// Finished instances compacted away by retention (numbered before `instances`).
    pub retired_instances: u32,
    /// Instances, oldest first.
    pub instances: Vec<InstanceExplanation>,
}

/// One instance: steps, end, and every action's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceExplanation {
    /// Instance number.
    pub instance: u32,
    /// Entry time (RFC 3339).
    pub entered_at: String,
    /// `goal reached at …` / `exited (id) at …`, if ended.
    pub ended: Option<String>,
    /// Every step with its completion and abandonment.
    pub steps: Vec<StepStatus>,
    /// Every inaction action with its status.
    pub actions: Vec<ActionStatus>,
}

/// A step of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    /// Step id.
    pub step: String,
    /// When it was completed (RFC 3339), with the event id that completed it.
    pub completed_at: Option<String>,
    /// The event that completed it.
    pub completed_by: Option<String>,
    /// When its window ended without completion (RFC 3339), if it did.
    pub abandoned_at: Option<String>,
}

/// An inaction action of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionStatus {
    /// Rule id.
    pub rule: String,
    /// Action id.
    pub action: String,
    /// Channel.
    pub channel: String,
    /// Due time (RFC 3339).
    pub due_at: String,
    /// `sent`, `suppressed` (by a protection), `held_out` (the customer is in the holdout of
    /// the action's experiment), `pending` (due later than the watermark) or `cancelled`.
    pub status: &'static str,
    /// Why it was cancelled, suppressed or held out.
    pub reason: Option<String>,
    /// The arm of the action's A/B experiment the customer is in (a variant id, or
    /// `holdout`), if the action is under one.
    pub variant: Option<String>,
    /// The command's id (what sinks and outcomes refer to), once sent.
    pub command_id: Option<String>,
    /// What the channel sink reported about it, in event-time order: `delivered at …`,
    /// `bounced at …: <detail>`.
    pub outcomes: Vec<String>,
}

impl Engine {
    /// Explains a customer's state: instances, steps, and every action sent, pending or
    /// cancelled with the reason, and what the sinks reported about the ones sent.
    pub fn explain(&self, customer_id: &str, state: &CustomerState) -> Explanation {
        use crate::model::format_millis;
        let mut journeys = Vec::new();
        for journey in self.journeys.iter() {
            let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
            let instances = derive_instances(journey, &state.events, retired);
            if instances.is_empty() && retired == 0 {
                continue;
            }
            let emitted = state.journeys.get(&journey.name);
            let handled = |key: u64| emitted.is_some_and(|m| m.emitted.binary_search(&key).is_ok());
            let sent = |key: u64| handled(key) && !handled(key ^ SUPPRESSED);
            let cands = self.protected_candidates(journey, &instances, state, customer_id);
            let mut out = Vec::new();
            for (idx, inst) in instances.iter().enumerate() {
                let mine = || cands.iter().filter(move |c| c.instance == idx);
                let steps = journey
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(s, step)| StepStatus {
                        step: step.id.clone(),
                        completed_at: inst.done_at(s).map(format_millis),
                        completed_by: inst.completed[s]
                            .map(|(_, e)| state.events[e].event_id.clone()),
                        abandoned_at: mine()
                            .find(|c| c.kind == Kind::StepAbandoned(s) && sent(c.key))
                            .map(|c| format_millis(c.due)),
                    })
                    .collect();
                let mut actions = Vec::new();
                for (r, rule) in journey.rules.iter().enumerate() {
                    let Some(start) = inst.done_at(rule.after) else {
                        continue;
                    };
                    for (a, action) in rule.actions.iter().enumerate() {
                        let effective = action.effective(customer_id);
                        let planned = start + effective.delay;
                        let cand = mine().find(|c| c.kind == Kind::Command { rule: r, action: a });
                        let deferred_to = mine().find_map(|c| match c.kind {
                            Kind::Deferred {
                                rule,
                                action,
                                until,
                            } if rule == r && action == a => Some(until),
                            _ => None,
                        });
                        let due = deferred_to.unwrap_or(planned);
                        let (status, reason) = match (cand, cancelled_by(inst, &rule.unless, due)) {
                            (Some(c), _) if handled(c.key) && effective.held_out => (
                                "held_out",
                                effective
                                    .experiment
                                    .map(|(x, _)| format!("holdout of experiment {x}")),
                            ),
                            (Some(c), _) if sent(c.key) => ("sent", None),
                            (Some(c), _) if handled(c.key) => (
                                "suppressed",
                                Some(self.blocked_reason(
                                    state,
                                    customer_id,
                                    effective.channel,
                                    due,
                                )),
                            ),
                            (Some(_), _) => ("pending", None),
                            (None, by) => ("cancelled", by.map(|b| b.describe(journey))),
                        };
                        let reason = match deferred_to {
                            Some(until) => {
                                let deferred = format!(
                                    "due at {} in quiet hours; deferred to {}",
                                    format_millis(planned),
                                    format_millis(until)
                                );
                                Some(
                                    reason.map_or(deferred.clone(), |r| format!("{deferred}; {r}")),
                                )
                            }
                            None => reason,
                        };
                        let command_id = matches!(status, "sent" | "suppressed").then(|| {
                            let version = journey.version.to_string();
                            let number = inst.number.to_string();
                            stable_id(&[
                                &journey.name,
                                &version,
                                customer_id,
                                &number,
                                &rule.id,
                                &action.id,
                            ])
                        });
                        let outcomes = command_id
                            .as_deref()
                            .map(|id| outcomes_of(&state.events, id))
                            .unwrap_or_default();
                        actions.push(ActionStatus {
                            rule: rule.id.clone(),
                            action: action.id.clone(),
                            channel: effective.channel.as_str().to_owned(),
                            variant: effective.experiment.map(|(_, arm)| arm.to_owned()),
                            due_at: format_millis(due),
                            status,
                            reason,
                            command_id,
                            outcomes,
                        });
                    }
                }
                out.push(InstanceExplanation {
                    instance: inst.number,
                    entered_at: format_millis(inst.entered_at),
                    ended: inst.end.map(|(at, kind)| match kind {
                        EndKind::Goal => format!("goal reached at {}", format_millis(at)),
                        EndKind::Exit(x) => {
                            format!("exited ({}) at {}", journey.exits[x].id, format_millis(at))
                        }
                    }),
                    steps,
                    actions,
                });
            }
            journeys.push(JourneyExplanation {
                journey: journey.name.clone(),
                version: journey.version,
                retired_instances: retired,
                instances: out,
            });
        }
        Explanation { journeys }
    }
}

/// The outcomes recorded for one command, described (`bounced at …: detail`).
fn outcomes_of(events: &[StoredEvent], command_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.attr("command_id") == Some(command_id))
        .filter_map(|e| {
            let status = e.event_type.strip_prefix(OUTCOME_EVENT_PREFIX)?;
            let at = crate::model::format_millis(e.at);
            Some(match e.attr("detail") {
                Some(d) => format!("{status} at {at}: {d}"),
                None => format!("{status} at {at}"),
            })
        })
        .collect()
}

/// What cancels an inaction action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelledBy {
    /// An `unless` step completed (step index, at).
    Step(usize, Millis),
    /// The goal was reached at.
    Goal(Millis),
    /// An exit (index) matched at.
    Exit(usize, Millis),
}

impl CancelledBy {
    fn describe(self, journey: &Journey) -> String {
        use crate::model::format_millis;
        match self {
            CancelledBy::Step(s, at) => format!(
                "step `{}` completed at {}",
                journey.steps[s].id,
                format_millis(at)
            ),
            CancelledBy::Goal(at) => format!("goal reached at {}", format_millis(at)),
            CancelledBy::Exit(x, at) => {
                format!("exited ({}) at {}", journey.exits[x].id, format_millis(at))
            }
        }
    }
}

/// Whether an action due at `due` is cancelled: an `unless` step, the goal or an exit
/// completed strictly before `due`.
fn cancelled_by(inst: &Instance, unless: &[usize], due: Millis) -> Option<CancelledBy> {
    for &u in unless {
        if let Some(at) = inst.done_at(u)
            && at < due
        {
            return Some(CancelledBy::Step(u, at));
        }
    }
    match inst.end {
        Some((at, EndKind::Goal)) if at < due => Some(CancelledBy::Goal(at)),
        Some((at, EndKind::Exit(x))) if at < due => Some(CancelledBy::Exit(x, at)),
        _ => None,
    }
}

/// Whether event `i` of `events` satisfies `m`.
fn matches(m: &Matcher, events: &[StoredEvent], i: usize) -> bool {
    let ev = &events[i];
    if ev.event_type != m.event_type {
        return false;
    }
    let earlier = || events[..i].iter().filter(|e| e.event_type == ev.event_type);
    if let Some(n) = m.nth
        && earlier().count() + 1 != n as usize
    {
        return false;
    }
    m.conds.iter().all(|(attr, cond)| {
        let value = ev.attr(attr);
        let num = || value.and_then(|v| v.trim().parse::<f64>().ok());
        match cond {
            Cond::Eq(x) => value == Some(x.as_str()),
            Cond::Ne(x) => value != Some(x.as_str()),
            Cond::OneOf(xs) => value.is_some_and(|v| xs.iter().any(|x| x == v)),
            Cond::NotOneOf(xs) => value.is_none_or(|v| xs.iter().all(|x| x != v)),
            Cond::Gt(x) => num().is_some_and(|v| v > *x),
            Cond::Gte(x) => num().is_some_and(|v| v >= *x),
            Cond::Lt(x) => num().is_some_and(|v| v < *x),
            Cond::Lte(x) => num().is_some_and(|v| v <= *x),
            Cond::Exists(want) => value.is_some() == *want,
            Cond::AmongEarlier => value.is_some_and(|v| earlier().any(|e| e.attr(attr) == Some(v))),
            Cond::NotAmongEarlier => {
                let mut any = false;
                let seen = earlier().any(|e| {
                    any = true;
                    e.attr(attr) == value
                });
                value.is_some() && any && !seen
            }
        }
    })
}

/// Derives the instances of `journey` from a customer's sorted events; `retired` instances
/// came before them (see [`JourneyMemory::retired`]).
fn derive_instances(journey: &Journey, events: &[StoredEvent], retired: u32) -> Vec<Instance> {
    let mut instances: Vec<Instance> = Vec::new();
    let steps = journey.steps.len();
    for i in 0..events.len() {
        let active = instances.last().is_some_and(|inst| inst.end.is_none());
        if !active {
            let may_enter = match instances.last() {
                None => retired == 0 || journey.re_entry == ReEntry::AfterEnd,
                Some(prev) => {
                    journey.re_entry == ReEntry::AfterEnd
                        && prev.end_at().is_some_and(|end| events[i].at >= end)
                }
            };
            if !may_enter || !matches(&journey.steps[0].matcher, events, i) {
                continue;
            }
            instances.push(Instance {
                number: retired + instances.len() as u32 + 1,
                entered_at: events[i].at,
                completed: vec![None; steps],
                end: None,
            });
        }
        let Some(inst) = instances.last_mut() else {
            continue;
        };
        let at = events[i].at;
        for (s, step) in journey.steps.iter().enumerate() {
            if inst.completed[s].is_none() && matches(&step.matcher, events, i) {
                inst.completed[s] = Some((at, i));
            }
        }
        if inst.completed[journey.goal].is_some() {
            inst.end = Some((at, EndKind::Goal));
        } else if let Some(x) = journey
            .exits
            .iter()
            .position(|x| matches(&x.matcher, events, i))
        {
            inst.end = Some((at, EndKind::Exit(x)));
        }
    }
    instances
}

/// Every output an instance calls for, with its due time and emitted-set key, in a fixed order.
fn candidates(journey: &Journey, instances: &[Instance], customer_id: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let name = journey.name.as_bytes();
    let version = journey.version.to_le_bytes();
    for (idx, inst) in instances.iter().enumerate() {
        let number = inst.number.to_le_bytes();
        let key = |tag: &[u8], a: &str, b: &str| {
            fnv(&[name, &version, &number, tag, a.as_bytes(), b.as_bytes()])
        };
        let mut push = |due, kind, key| {
            out.push(Candidate {
                due,
                instance: idx,
                kind,
                key,
            })
        };
        push(inst.entered_at, Kind::Entered, key(b"entered", "", ""));
        let end = inst.end_at();
        for (s, step) in journey.steps.iter().enumerate() {
            if let Some(at) = inst.done_at(s) {
                push(
                    at,
                    Kind::StepCompleted(s),
                    key(b"step_completed", &step.id, ""),
                );
            }
            let Some(window) = step.abandon_after else {
                continue;
            };
            let Some(open) = inst.window_open(s) else {
                continue;
            };
            let deadline = open + window;
            let completed_in_time = inst.done_at(s).is_some_and(|at| at < deadline);
            let ended_before = end.is_some_and(|e| e <= deadline);
            if !completed_in_time && !ended_before {
                push(
                    deadline,
                    Kind::StepAbandoned(s),
                    key(b"step_abandoned", &step.id, ""),
                );
            }
        }
        match inst.end {
            Some((at, EndKind::Goal)) => push(at, Kind::GoalReached, key(b"goal_reached", "", "")),
            Some((at, EndKind::Exit(x))) => push(
                at,
                Kind::Exited(x),
                key(b"exited", &journey.exits[x].id, ""),
            ),
            None => {}
        }
        for (r, rule) in journey.rules.iter().enumerate() {
            let Some(start) = inst.done_at(rule.after) else {
                continue;
            };
            for (a, action) in rule.actions.iter().enumerate() {
                let due = start + action.effective(customer_id).delay;
                if cancelled_by(inst, &rule.unless, due).is_none() {
                    push(
                        due,
                        Kind::Command { rule: r, action: a },
                        key(b"command", &rule.id, &action.id),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
