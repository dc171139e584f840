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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use compact_str::{CompactString, format_compact};
// foldhash: several times cheaper than SipHash on the engine's per-event lookups; nothing
// iterates these maps, so their order cannot reach an output.
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::journey::{
    Cond, Journey, JourneySet, Matcher, Metric, ReEntry, Rule, SCORE_ATTRIBUTE,
    SCORED_ACTION_ATTRIBUTE, Trigger, fill_placeholders,
};
use crate::model::{
    Channel, CustomerEvent, InterventionCommand, JourneyEvent, JourneyEventType, Millis,
    OUTCOME_ATTRIBUTES, OUTCOME_EVENT_PREFIX, Output,
};
use crate::protect::{Blocked, Protections};
pub use derivation::DerivationMemo;
use keys::KeyTables;
pub(crate) use keys::output_key;
pub use vec_map::VecMap;

/// An event kept in a customer's state (only the attributes some predicate reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The upstream event id (de-duplication key).
    pub event_id: CompactString,
    /// Event type.
    pub event_type: CompactString,
    /// Event time.
    pub at: Millis,
    /// Attributes that predicates read (e.g. `product_line`): none or one for most events, so
    /// one is kept inside the event rather than in an allocation of its own.
    pub attributes: SmallVec<[(CompactString, CompactString); 1]>,
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
    pub value: CompactString,
    /// Event time of the event that set it (the latest event wins).
    pub at: Millis,
    /// Id of that event (breaks ties between events of the same time).
    pub event_id: CompactString,
}

/// An attribute's values, oldest first. Almost always one: it is kept inside the profile's
/// entry, not in an allocation of its own (each would be one more cache miss when a cold
/// customer is read).
pub type ProfileValues = SmallVec<[ProfileValue; 1]>;

/// A journey memory's emitted set: a customer of the reference journey emits fewer than ten
/// outputs, so the set is kept inside the memory unless it outgrows [`EMITTED_INLINE`].
pub type Emitted = SmallVec<[u64; EMITTED_INLINE]>;

/// Emitted-set keys kept without an allocation of their own.
pub const EMITTED_INLINE: usize = 8;

/// What the engine remembers of one journey for one customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyMemory {
    /// Hashes of the stable ids of every output already emitted, sorted.
    pub emitted: Emitted,
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
    pub profile: VecMap<ProfileValues>,
    /// Per journey name: what was emitted. The first journey's memory is kept inside the
    /// state, so a wake-up reads it with the customer instead of from two more places in
    /// memory (the map's entries and the emitted set).
    pub journeys: VecMap<JourneyMemory, 1>,
    /// Event time at which the caller's timer index wakes the customer next: the next output
    /// due, or retention's compaction; never later than either. A wake-up armed for
    /// compaction stays when later events push compaction back, and then re-arms, so it may
    /// come early and do nothing.
    pub next_due: Option<Millis>,
    /// Events that arrived after the watermark had passed their time.
    pub late_events: u32,
    /// Repeated deliveries of an event id already seen.
    pub duplicates: u32,
    /// Set by retention: the time of the newest event compacted away. Events at or before it
    /// belong to retired instances; arriving now, they are late and change nothing.
    pub retired_until: Option<Millis>,
    /// Identity merges this customer took part in (`identity.alias`); `None` for almost every
    /// customer. Last, so that a record written before it existed reads as `None` (see
    /// `state::decode_value`).
    pub identity: Option<Box<Identity>>,
    /// What the last `advance` derived, so that the next goes on from there: in memory only,
    /// equal in every state (see the `derivation` module). Not part of the stored record, so
    /// `identity` stays its last field.
    #[serde(skip)]
    pub derivation: DerivationMemo,
}

/// One end of an identity merge: the other customer, and the alias event that merged them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLink {
    /// The other customer id.
    pub customer_id: String,
    /// Event time of the alias event.
    pub at: Millis,
    /// Id of the alias event.
    pub event_id: String,
}

/// A customer's identity merges: an alias's history moves to its canonical customer once, and
/// everything published for the alias later follows it there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Set once this id is an alias: where its history went.
    pub merged_into: Option<IdentityLink>,
    /// The aliases whose history was merged into this customer, in the order they arrived.
    pub merged_from: Vec<IdentityLink>,
    /// An alias event waiting for the watermark to reach its time: the merge happens then, so
    /// what the alias is sent up to that time does not depend on when the event arrived.
    pub pending: Option<IdentityLink>,
}

/// The exit reason of an alias's instances when its history moves to the canonical customer
/// (their journey goes on there).
pub const MERGED_EXIT_REASON: &str = "merged";

/// Values kept per profile attribute; the oldest is dropped beyond this.
pub const PROFILE_HISTORY: usize = 8;

/// What a customer's state keeps in event-time order: by `(event time, event id)`.
trait TimeOrdered {
    fn order(&self) -> (Millis, &str);
}

impl TimeOrdered for StoredEvent {
    fn order(&self) -> (Millis, &str) {
        (self.at, &self.event_id)
    }
}

impl TimeOrdered for ProfileValue {
    fn order(&self) -> (Millis, &str) {
        (self.at, &self.event_id)
    }
}

/// Inserts `item` at its place in `(event time, event id)` order.
///
/// A customer's event list is short and a million customers may be held decoded, so a full
/// list grows by half its length (at least one) rather than doubling from four, as `Vec`
/// would.
fn insert_in_order<T: TimeOrdered>(list: &mut Vec<T>, item: T) {
    if list.len() == list.capacity() {
        list.reserve_exact((list.len() / 2).max(1));
    }
    let pos = list.partition_point(|x| x.order() < item.order());
    list.insert(pos, item);
}

/// Adds a value to an attribute's history, dropping the oldest beyond [`PROFILE_HISTORY`].
fn keep_profile_value(values: &mut ProfileValues, value: ProfileValue) {
    let pos = values.partition_point(|x| x.order() < value.order());
    values.insert(pos, value);
    if values.len() > PROFILE_HISTORY {
        values.remove(0);
    }
}

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
        self.events.is_empty()
            && self.journeys.values().all(|m| m.retired == 0)
            && self.identity.is_none()
    }

    /// The canonical customer this id is an alias of, once merged.
    pub fn merged_into(&self) -> Option<&IdentityLink> {
        self.identity.as_ref()?.merged_into.as_ref()
    }

    /// The aliases merged into this customer.
    pub fn merged_from(&self) -> &[IdentityLink] {
        self.identity.as_ref().map_or(&[], |i| &i.merged_from)
    }

    /// The alias event waiting for the watermark (see [`Identity::pending`]).
    pub fn pending_merge(&self) -> Option<&IdentityLink> {
        self.identity.as_ref()?.pending.as_ref()
    }

    /// The latest value of every profile attribute.
    pub fn latest_profile(&self) -> BTreeMap<String, String> {
        self.profile
            .iter()
            .filter_map(|(k, vs)| vs.last().map(|v| (k.to_owned(), v.value.to_string())))
            .collect()
    }
}

/// What happened to an applied event.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The customer is an alias: the event goes on to the canonical customer.
    Forwarded,
    /// An identity merge: an `identity.alias` event made the customer an alias, or an alias's
    /// history was folded into the customer.
    Merged,
    /// An identity record that cannot be applied (a second canonical id for an alias, a
    /// cycle): why, for the dead-letter topic.
    Refused(String),
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
    /// Index (into `CustomerState::events`) of the event it entered on.
    pub entry: usize,
    /// Event time of entry.
    pub entered_at: Millis,
    /// Per step: event time and index (into `CustomerState::events`) of the earliest event
    /// completing it.
    pub completed: SmallVec<[Option<(Millis, usize)>; 8]>,
    /// When and how it ended.
    pub end: Option<(Millis, EndKind)>,
    /// The journey version in its ids: the version it entered with (a migrated instance
    /// keeps it, so what it emitted before the migration is not emitted again).
    pub id_version: u32,
    /// Event times `[from, until)` of the outputs this version derives for the instance: a
    /// migrated instance's earlier version stops at the migration, and the version it moved
    /// to sends no command due before it. `(MIN, MAX)` for an instance never migrated.
    pub span: (Millis, Millis),
}

impl Instance {
    /// An instance of `journey` entered at `events[entry]`, before any event is applied to it
    /// (the entry event too: see [`Instance::step`]).
    fn entered(
        journey: &Journey,
        events: &[StoredEvent],
        entry: usize,
        number: u32,
        id_version: u32,
    ) -> Self {
        Instance {
            number,
            entry,
            entered_at: events[entry].at,
            completed: smallvec::smallvec![None; journey.steps.len()],
            end: None,
            id_version,
            span: (Millis::MIN, Millis::MAX),
        }
    }

    /// Applies `events[i]` to this active instance: the steps it completes first, then the
    /// goal or an exit it ends the instance with. Whether it ended.
    fn step(&mut self, journey: &Journey, events: &[StoredEvent], i: usize) -> bool {
        let at = events[i].at;
        for (s, step) in journey.steps.iter().enumerate() {
            if self.completed[s].is_none() && matches(&step.matcher, events, i) {
                self.completed[s] = Some((at, i));
            }
        }
        if self.completed[journey.goal].is_some() {
            self.end = Some((at, EndKind::Goal));
        } else if let Some(x) = journey
            .exits
            .iter()
            .position(|x| matches(&x.matcher, events, i))
        {
            self.end = Some((at, EndKind::Exit(x)));
        }
        self.end.is_some()
    }

    fn done_at(&self, step: usize) -> Option<Millis> {
        self.completed[step].map(|(at, _)| at)
    }

    fn end_at(&self) -> Option<Millis> {
        self.end.map(|(at, _)| at)
    }

    /// Whether this version derives an output of `kind` due at `due` for the instance (see
    /// [`Instance::span`]): journey events from before a migration still are (they describe
    /// what the customer did, and the earlier version emitted the ones it shares), commands
    /// are not.
    fn covers(&self, due: Millis, kind: Kind) -> bool {
        due < self.span.1
            && (due >= self.span.0 || !matches!(kind, Kind::Command { .. } | Kind::Deferred { .. }))
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
    /// The key of the next-best-action decision the command is an alternative of: at most
    /// one command of a group goes out.
    group: Option<u64>,
}

/// Why a command due now does not go out.
#[derive(Debug, Clone)]
enum Verdict {
    /// A protection blocks it (a `command_suppressed` journey event says which).
    Blocked(Blocked),
    /// Next-best-action took another action of its rule (nothing is emitted for it).
    NotChosen,
}

/// One journey's derivation for a customer: the journey, its instances, all its candidates,
/// and the ones due now that were not handled yet.
type Derived<'a> = (
    &'a crate::journey::Journey,
    &'a [Instance],
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

/// Marks, in [`JourneyMemory::emitted`], an alternative next-best-action did not take (its own
/// key is there too: it was handled).
const NOT_CHOSEN: u64 = 0x4e4f_5443_484f_5345;

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
    /// Event types some rule reads a score from (shown by `explain`).
    score_types: BTreeSet<String>,
    /// The emitted-set keys of the journeys' first instances, hashed once.
    keys: KeyTables,
    /// Which journey set this is, for the derivations kept in customers' states.
    journey_set: u64,
}

/// The stable id of one of an instance's outputs: [`stable_id`] of its journey, the version
/// in its ids, the customer, the instance number and what it is (`what`: a journey event's
/// type and step or detail, or a command's rule and action).
fn instance_output_id(
    journey: &Journey,
    inst: &Instance,
    customer_id: &str,
    what: [&str; 2],
) -> String {
    let mut version = itoa::Buffer::new();
    let mut number = itoa::Buffer::new();
    stable_id(&[
        &journey.name,
        version.format(inst.id_version),
        customer_id,
        number.format(inst.number),
        what[0],
        what[1],
    ])
}

/// Namespace of every Waymark id (UUID v5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5761_796d_6172_6b00_8000_0000_0000_0001);

/// The stable id of an output: UUID v5 of its identifying parts joined by `/` (RFC 9562: SHA-1
/// of the namespace and the name). Hashed part by part with the CPU's SHA instructions where
/// it has them: one id per output makes this a hot path.
pub fn stable_id(parts: &[&str]) -> String {
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(ID_NAMESPACE.as_bytes());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sha.update(b"/");
        }
        sha.update(part.as_bytes());
    }
    let digest = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let id = uuid::Builder::from_sha1_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

impl Engine {
    /// Builds an engine for these journeys.
    pub fn new(journeys: JourneySet) -> Self {
        let mut relevant = HashSet::new();
        let mut predicate_attrs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut profile_attrs = BTreeSet::new();
        let mut score_types = BTreeSet::new();
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
            relevant.extend(j.profile_events.iter().cloned());
            for rule in &j.rules {
                for c in rule.conditions() {
                    match (&c.metric, c.metric.event_type()) {
                        (Metric::Profile { attribute }, _) => {
                            profile_attrs.insert(attribute.clone());
                        }
                        (m, Some(t)) => {
                            if let Metric::Score { event } = m {
                                score_types.insert(event.clone());
                            }
                            relevant.insert(t.to_owned());
                            predicate_attrs
                                .entry(t.to_owned())
                                .or_default()
                                .extend(m.attributes().into_iter().map(str::to_owned));
                        }
                        (_, None) => {}
                    }
                }
                if let Some(t) = &rule.choose {
                    score_types.insert(t.clone());
                    relevant.insert(t.clone());
                    predicate_attrs.entry(t.clone()).or_default().extend([
                        SCORE_ATTRIBUTE.to_owned(),
                        SCORED_ACTION_ATTRIBUTE.to_owned(),
                    ]);
                }
            }
        }
        Engine {
            keys: KeyTables::new(&journeys),
            journeys,
            protections: Protections::default(),
            retention: None,
            relevant,
            predicate_attrs,
            profile_attrs,
            score_types,
            journey_set: derivation::next_journey_set(),
        }
    }

    /// Compacts a customer's finished instances away once the watermark is `retention` past
    /// the end of the last one (and nothing is pending): the events are dropped, the number
    /// of instances is kept (see [`JourneyMemory::retired`]). `None` keeps everything. It is
    /// never shorter than the longest `within` window of a rule's condition, so a window
    /// looking back from a later entry still finds its events (a year of invoices).
    pub fn with_retention(mut self, retention: Option<Millis>) -> Self {
        let longest = self
            .journeys
            .iter()
            .flat_map(|j| &j.rules)
            .flat_map(|r| r.conditions())
            .filter_map(|c| match &c.metric {
                Metric::Count { within, .. } | Metric::Sum { within, .. } => *within,
                _ => None,
            })
            .max()
            .unwrap_or(0);
        self.retention = retention.map(|r| r.max(longest));
        self
    }

    /// An engine for `journeys` with this one's protections and retention (a live reload).
    pub fn reloaded(&self, journeys: JourneySet) -> Engine {
        Engine::new(journeys)
            .with_retention(self.retention)
            .with_protections(self.protections.clone())
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
                keep_profile_value(
                    state.profile.or_default(attr),
                    ProfileValue {
                        value: value.as_str().into(),
                        at: ev.occurred_at,
                        event_id: ev.event_id.as_str().into(),
                    },
                );
            }
        }
        let kept = self.predicate_attrs.get(&ev.event_type);
        let outcome = ev.event_type.starts_with(OUTCOME_EVENT_PREFIX);
        let stored = StoredEvent {
            event_id: ev.event_id.as_str().into(),
            event_type: ev.event_type.as_str().into(),
            at: ev.occurred_at,
            attributes: ev
                .attributes
                .iter()
                .filter(|(k, _)| {
                    kept.is_some_and(|s| s.contains(*k))
                        || (outcome && OUTCOME_ATTRIBUTES.contains(&k.as_str()))
                })
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        };
        insert_in_order(&mut state.events, stored);
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
        let kept = state.derivation.take();
        let units = self.derivation(state, kept);
        let (mut next_due, quiet_since, active) =
            self.emit_due(state, customer_id, watermark, &units.views(self), out);
        if let Some(link) = state.pending_merge() {
            next_due = Some(next_due.map_or(link.at, |n| n.min(link.at)));
        }
        if let Some(retention) = self.retention
            && next_due.is_none()
            && !active
            && !state.events.is_empty()
        {
            let retire_at = quiet_since.saturating_add(retention);
            if retire_at <= watermark {
                self.retire(state, quiet_since);
                // Its events are gone: the next advance derives from scratch.
                state.next_due = next_due;
                return;
            } else {
                // A wake-up armed earlier and still ahead stays: it compacts nothing and
                // re-arms here. An active customer whose journeys ended then does not move in
                // the caller's timer index on every event that pushes compaction back.
                let armed = state
                    .next_due
                    .filter(|&armed| armed > watermark && armed < retire_at);
                next_due = Some(armed.unwrap_or(retire_at));
            }
        }
        state.next_due = next_due;
        state.derivation.keep(units);
    }

    /// Emits into `out` what `units` (every journey version with the instances it runs,
    /// derived from `state`'s events) make due by `watermark` and was not handled yet, and
    /// marks it handled. Returns the earliest output due later, the newest event or instance
    /// end, and whether some instance is still active.
    fn emit_due(
        &self,
        state: &mut CustomerState,
        customer_id: &str,
        watermark: Millis,
        units: &[(&Journey, &[Instance])],
        out: &mut Vec<Output>,
    ) -> (Option<Millis>, Millis, bool) {
        let mut next_due: Option<Millis> = None;
        // The newest event or instance end, and whether some instance is still active.
        let mut quiet_since = state.events.last().map_or(Millis::MIN, |e| e.at);
        let mut active = false;
        // Per journey: its instances, all its candidates, and the ones due now (not handled).
        let mut derived = Vec::with_capacity(self.journeys.len());
        // A migrated instance's versions share its ids (its entry, and its steps that both
        // define, are derived by both): the earlier version's output goes out. Only migrated
        // instances (a span narrower than all time) can collide.
        let mut claimed: HashSet<(&str, u64)> = HashSet::new();
        for &(journey, instances) in units {
            if instances.is_empty() {
                continue;
            }
            for inst in instances {
                match inst.end_at() {
                    Some(end) => quiet_since = quiet_since.max(end),
                    None => active = true,
                }
            }
            let memory = state.journeys.get(&journey.name);
            let all = self.protected_candidates(journey, instances, state, customer_id);
            let mut ready = Vec::new();
            for c in &all {
                if memory.is_some_and(|m| m.emitted.binary_search(&c.key).is_ok()) {
                    continue;
                }
                if c.due <= watermark {
                    let migrated = instances[c.instance].span != (Millis::MIN, Millis::MAX);
                    if !migrated || claimed.insert((journey.name.as_str(), c.key)) {
                        ready.push(*c);
                    }
                } else {
                    next_due = Some(next_due.map_or(c.due, |n| n.min(c.due)));
                }
            }
            // Stable sort: equal times keep derivation order.
            ready.sort_by_key(|c| c.due);
            derived.push((journey, instances, all, ready));
        }
        let verdicts = self.decide(state, customer_id, &derived);
        for (j, (journey, instances, _, ready)) in derived.iter().enumerate() {
            if ready.is_empty() {
                continue;
            }
            for c in ready {
                let blocked = match verdicts.get(&(j, c.key)) {
                    Some(Verdict::NotChosen) => continue,
                    Some(Verdict::Blocked(b)) => Some(b),
                    None => None,
                };
                materialize(
                    journey,
                    customer_id,
                    state,
                    &instances[c.instance],
                    *c,
                    blocked,
                    out,
                );
            }
            let emitted = &mut state.journeys.or_default(&journey.name).emitted;
            for c in ready {
                let mark = verdicts.get(&(j, c.key)).map(|v| match v {
                    Verdict::Blocked(_) => c.key ^ SUPPRESSED,
                    Verdict::NotChosen => c.key ^ NOT_CHOSEN,
                });
                for key in [Some(c.key), mark, c.group].into_iter().flatten() {
                    if let Err(pos) = emitted.binary_search(&key) {
                        emitted.insert(pos, key);
                    }
                }
            }
        }
        (next_due, quiet_since, active)
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
        let all = candidates(journey, instances, state, customer_id, &self.keys);
        if self.protections.quiet_hours.is_empty() {
            return all;
        }
        let mut out = Vec::with_capacity(all.len());
        for c in all {
            // Quiet hours make a next-best-action alternative ineligible (see `decide`)
            // rather than deferring it.
            let (Kind::Command { rule, action }, None) = (c.kind, c.group) else {
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

    /// Which of the commands due now do not go out, keyed by (index in `derived`, candidate
    /// key): the ones a protection blocks, and the next-best-action alternatives not taken.
    /// Commands are decided in due-time order across all journeys (ties: journey order, then
    /// derivation order, which is a next-best-action rule's ranking); the ones handled before
    /// keep their decision. A next-best-action rule takes its first alternative that no
    /// protection blocks, and for it quiet hours block (the next alternative may be on a
    /// channel that is not quiet) instead of deferring.
    fn decide(
        &self,
        state: &CustomerState,
        customer_id: &str,
        derived: &[Derived<'_>],
    ) -> HashMap<(usize, u64), Verdict> {
        let mut verdicts = HashMap::new();
        let choosing = derived
            .iter()
            .any(|(_, _, _, ready)| ready.iter().any(|c| c.group.is_some()));
        if self.protections.is_empty() && !choosing {
            return verdicts;
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
        let mut decided: HashSet<(usize, u64)> = HashSet::new();
        let mut due_now = Vec::new();
        for (j, (journey, _, all, ready)) in derived.iter().enumerate() {
            let memory = state.journeys.get(&journey.name);
            for c in all {
                if let Some(ch) = channel_of(journey, c)
                    && was_sent(memory, c.key)
                {
                    sent.entry(ch).or_default().push(c.due);
                }
                if let Some(g) = c.group
                    && was_handled(memory, g)
                {
                    decided.insert((j, g));
                }
            }
            for (i, c) in ready.iter().enumerate() {
                if let Some(ch) = channel_of(journey, c) {
                    due_now.push((c.due, j, i, ch, c.key, c.group));
                }
            }
        }
        due_now.sort();
        for (due, j, _, channel, key, group) in due_now {
            if let Some(g) = group
                && decided.contains(&(j, g))
            {
                verdicts.insert((j, key), Verdict::NotChosen);
                continue;
            }
            let list = self.suppression_events(state);
            let sent_here = sent.entry(channel).or_default();
            let blocked = self
                .protections
                .check(channel, due, list, sent_here)
                .or_else(|| group.and_then(|_| self.quiet_hours_block(state, channel, due)));
            match blocked {
                Some(b) => {
                    verdicts.insert((j, key), Verdict::Blocked(b));
                }
                None => {
                    sent_here.push(due);
                    if let Some(g) = group {
                        decided.insert((j, g));
                    }
                }
            }
        }
        verdicts
    }

    /// Quiet hours as a block (for next-best-action alternatives): `Some` when `due` falls in
    /// quiet hours of `channel` in the customer's time zone.
    fn quiet_hours_block(
        &self,
        state: &CustomerState,
        channel: Channel,
        due: Millis,
    ) -> Option<Blocked> {
        let tz = state.profile_at(TZ_ATTRIBUTE, due);
        self.protections
            .defer(channel, due, tz)
            .map(|until| Blocked::QuietHours {
                channel,
                tz: tz.unwrap_or("UTC").to_owned(),
                until,
            })
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
    /// given the commands of its channel sent before it (quiet hours too, for a
    /// next-best-action alternative).
    fn blocked_reason(
        &self,
        state: &CustomerState,
        customer_id: &str,
        channel: Channel,
        due: Millis,
        choosing: bool,
    ) -> String {
        let mut sent = Vec::new();
        for (journey, instances, _) in self.units(state) {
            let memory = state.journeys.get(&journey.name);
            for c in self.protected_candidates(journey, &instances, state, customer_id) {
                if let Kind::Command { rule, action } = c.kind
                    && journey.rules[rule].actions[action].sends_on(customer_id) == Some(channel)
                    && c.due <= due
                    && was_sent(memory, c.key)
                {
                    sent.push(c.due);
                }
            }
        }
        self.protections
            .check(channel, due, self.suppression_events(state), &sent)
            .or_else(|| {
                choosing
                    .then(|| self.quiet_hours_block(state, channel, due))
                    .flatten()
            })
            .map_or_else(
                || "blocked by a protection no longer configured".to_owned(),
                |b| b.describe(),
            )
    }

    /// Compacts every (finished) instance away: counts them, forgets their events and what
    /// they emitted. Only called with nothing active and nothing pending.
    fn retire(&self, state: &mut CustomerState, until: Millis) {
        for versions in self.journeys.by_name() {
            let name = &versions[0].name;
            let retired = state.journeys.get(name).map_or(0, |m| m.retired);
            let (_, n) = derive_versions(versions, &state.events, retired);
            if n > 0 || state.journeys.contains_key(name) {
                let memory = state.journeys.or_default(name);
                memory.retired = retired + n;
                memory.emitted.clear();
            }
        }
        state.events.clear();
        state.retired_until = Some(until);
    }

    /// Every loaded journey version with the customer's instances it runs (see
    /// [`derive_versions`]), and whether it is the journey's latest version.
    pub fn units(&self, state: &CustomerState) -> Vec<(&Journey, Vec<Instance>, bool)> {
        let mut units = Vec::with_capacity(self.journeys.len());
        for versions in self.journeys.by_name() {
            let retired = state
                .journeys
                .get(&versions[0].name)
                .map_or(0, |m| m.retired);
            let (per_version, _) = derive_versions(versions, &state.events, retired);
            let last = versions.len() - 1;
            for (v, instances) in per_version.into_iter().enumerate() {
                units.push((&*versions[v], instances, v == last));
            }
        }
        units
    }
}

/// Whether `key` is in the journey memory's emitted set: its output was handled (emitted,
/// suppressed or not chosen).
fn was_handled(memory: Option<&JourneyMemory>, key: u64) -> bool {
    memory.is_some_and(|m| m.emitted.binary_search(&key).is_ok())
}

/// Whether the command with `key` went out: handled, and neither suppressed nor not chosen.
fn was_sent(memory: Option<&JourneyMemory>, key: u64) -> bool {
    was_handled(memory, key)
        && !was_handled(memory, key ^ SUPPRESSED)
        && !was_handled(memory, key ^ NOT_CHOSEN)
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
    let jev = |event_type: JourneyEventType, step: Option<&str>, extra: &str| {
        let step_or_extra = step.unwrap_or(extra);
        JourneyEvent {
            journey_event_id: instance_output_id(
                journey,
                inst,
                customer_id,
                [event_type.as_str(), step_or_extra],
            ),
            journey: journey.name.as_str().into(),
            journey_version: journey.version,
            customer_id: customer_id.into(),
            instance: inst.number,
            event_type,
            step: step.map(CompactString::from),
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
                &format_compact!("{}.{}", r.id, a.id),
            );
            e.command_id = Some(instance_output_id(
                journey,
                inst,
                customer_id,
                [&r.id, &a.id],
            ));
            e.action = Some(a.id.as_str().into());
            e.variant = effective.experiment.map(|(_, arm)| arm.into());
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
            let command_id = instance_output_id(journey, inst, customer_id, [&r.id, &a.id]);
            let emitted_key = format_compact!("{}.{}", r.id, a.id);
            let effective = a.effective(customer_id);
            let variant = effective
                .experiment
                .map(|(_, arm)| CompactString::from(arm));
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
                e.action = Some(a.id.as_str().into());
                e.reason = Some(reason);
                e.variant = variant;
                out.push(Output::JourneyEvent(e));
                return;
            }
            let lookup = |k: &str| state.profile_at(k, c.due);
            let command = InterventionCommand {
                command_id: command_id.clone(),
                journey: journey.name.as_str().into(),
                journey_version: journey.version,
                customer_id: customer_id.into(),
                instance: inst.number,
                rule: r.id.as_str().into(),
                action: a.id.as_str().into(),
                channel: effective.channel,
                due_at: c.due,
                template: effective.template.map(CompactString::from),
                variant: variant.clone(),
                params: small_map(
                    a.params
                        .iter()
                        .map(|(k, v)| (k.as_str().into(), fill_placeholders(v, lookup))),
                ),
                attributes: small_map(journey.profile.iter().filter_map(|k| {
                    state
                        .profile_at(k, c.due)
                        .map(|v| (k.as_str().into(), v.into()))
                })),
            };
            let mut e = jev(JourneyEventType::CommandEmitted, None, &emitted_key);
            e.command_id = Some(command_id);
            e.action = Some(a.id.as_str().into());
            e.variant = variant;
            out.push(Output::Command(command));
            out.push(Output::JourneyEvent(e));
        }
    }
}

/// A command's few params or attributes as a map, inserted one by one: `collect` would gather
/// them in a `Vec`, sort it and build the tree from it, which for a handful of entries costs
/// more than the inserts (same map either way; a later duplicate key wins in both).
fn small_map(
    entries: impl Iterator<Item = (CompactString, CompactString)>,
) -> BTreeMap<CompactString, CompactString> {
    let mut map = BTreeMap::new();
    for (k, v) in entries {
        map.insert(k, v);
    }
    map
}

/// Why each of a customer's outputs was or was not produced: the answer to "why did (or
/// didn't) this customer get that email?". Built by [`Engine::explain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// One entry per journey the customer entered.
    pub journeys: Vec<JourneyExplanation>,
    /// The latest score of every kind some rule reads (per action for next-best-action).
    pub scores: Vec<ScoreStatus>,
}

/// The latest score a model published for the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScoreStatus {
    /// The score's event type (`churn.score`).
    pub score: String,
    /// The action it scores (next-best-action scores only).
    pub action: Option<String>,
    /// The value.
    pub value: String,
    /// Its event time (RFC 3339).
    pub at: String,
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
    /// the action's experiment), `not_chosen` (next-best-action took another action of the
    /// rule), `skipped` (an `if` or `segment` condition did not hold), `pending` (due later
    /// than the watermark) or `cancelled`.
    pub status: &'static str,
    /// Why it was cancelled, suppressed or held out.
    pub reason: Option<String>,
    /// The arm of the action's A/B experiment the customer is in (a variant id, or
    /// `holdout`), if the action is under one.
    pub variant: Option<String>,
    /// The model's score of the action, when its rule is next-best-action and the action was
    /// scored before its due time.
    pub score: Option<String>,
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
        for (journey, instances, latest) in self.units(state) {
            let retired = state.journeys.get(&journey.name).map_or(0, |m| m.retired);
            if instances.is_empty() && (retired == 0 || !latest) {
                continue;
            }
            let memory = state.journeys.get(&journey.name);
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
                            .map(|(_, e)| state.events[e].event_id.to_string()),
                        abandoned_at: mine()
                            .find(|c| c.kind == Kind::StepAbandoned(s) && was_sent(memory, c.key))
                            .map(|c| format_millis(c.due)),
                    })
                    .collect();
                let mut actions = Vec::new();
                for (r, rule) in journey.rules.iter().enumerate() {
                    let Some(mut plans) = plan_rule(rule, inst, state, customer_id) else {
                        continue;
                    };
                    plans.sort_by_key(|p| p.action);
                    let command_key = |a: usize| {
                        mine()
                            .find(|c| c.kind == Kind::Command { rule: r, action: a })
                            .map(|c| c.key)
                    };
                    // The alternative next-best-action took, if it took one.
                    let chosen = rule.choose.as_ref().and_then(|_| {
                        (0..rule.actions.len())
                            .find(|&a| command_key(a).is_some_and(|k| was_sent(memory, k)))
                            .map(|a| rule.actions[a].id.as_str())
                    });
                    for plan in plans {
                        let a = plan.action;
                        let action = &rule.actions[a];
                        let effective = action.effective(customer_id);
                        let planned = plan.due;
                        let deferred_to = mine().find_map(|c| match c.kind {
                            Kind::Deferred {
                                rule,
                                action,
                                until,
                            } if rule == r && action == a => Some(until),
                            _ => None,
                        });
                        let due = deferred_to.unwrap_or(planned);
                        let (status, reason) = match (command_key(a), &plan.fate) {
                            (Some(k), _) if was_handled(memory, k) && effective.held_out => (
                                "held_out",
                                effective
                                    .experiment
                                    .map(|(x, _)| format!("holdout of experiment {x}")),
                            ),
                            (Some(k), _) if was_sent(memory, k) => ("sent", None),
                            (Some(k), _) if was_handled(memory, k ^ NOT_CHOSEN) => (
                                "not_chosen",
                                Some(match chosen {
                                    Some(c) => format!("next-best-action chose `{c}`"),
                                    None => "next-best-action chose another action".to_owned(),
                                }),
                            ),
                            (Some(k), _) if was_handled(memory, k) => (
                                "suppressed",
                                Some(self.blocked_reason(
                                    state,
                                    customer_id,
                                    effective.channel,
                                    due,
                                    rule.choose.is_some(),
                                )),
                            ),
                            (Some(_), _) => ("pending", None),
                            (None, Fate::Skipped(why)) => {
                                ("skipped", Some(format!("condition not met: {why}")))
                            }
                            (None, Fate::Cancelled(by)) => {
                                ("cancelled", Some(by.describe(journey)))
                            }
                            (None, Fate::Due) if due >= inst.span.1 => (
                                "migrated",
                                Some(format!(
                                    "due after the instance moved to a later version at {}",
                                    format_millis(inst.span.1)
                                )),
                            ),
                            (None, Fate::Due) if due < inst.span.0 => (
                                "migrated",
                                Some(format!(
                                    "due before the instance moved to this version at {}",
                                    format_millis(inst.span.0)
                                )),
                            ),
                            // Quiet hours moved it: the deferred command was cancelled.
                            (None, Fate::Due) => (
                                "cancelled",
                                cancelled_by(inst, &rule.unless, due).map(|b| b.describe(journey)),
                            ),
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
                            instance_output_id(journey, inst, customer_id, [&rule.id, &action.id])
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
                            score: plan.score.map(|s| s.to_string()),
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
        Explanation {
            journeys,
            scores: self.latest_scores(state),
        }
    }
}

impl Engine {
    /// The latest value of every score some rule reads, per (type, scored action).
    fn latest_scores(&self, state: &CustomerState) -> Vec<ScoreStatus> {
        let mut latest: BTreeMap<(&str, Option<&str>), &StoredEvent> = BTreeMap::new();
        for e in &state.events {
            if self.score_types.contains(e.event_type.as_str()) && e.attr(SCORE_ATTRIBUTE).is_some()
            {
                let key = (e.event_type.as_str(), e.attr(SCORED_ACTION_ATTRIBUTE));
                latest.insert(key, e);
            }
        }
        latest
            .into_iter()
            .map(|((score, action), e)| ScoreStatus {
                score: score.to_owned(),
                action: action.map(str::to_owned),
                value: e.attr(SCORE_ATTRIBUTE).unwrap_or_default().to_owned(),
                at: crate::model::format_millis(e.at),
            })
            .collect()
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
        match cond {
            Cond::AmongEarlier => value.is_some_and(|v| earlier().any(|e| e.attr(attr) == Some(v))),
            Cond::NotAmongEarlier => {
                let mut any = false;
                let seen = earlier().any(|e| {
                    any = true;
                    e.attr(attr) == value
                });
                value.is_some() && any && !seen
            }
            other => conditions::passes(
                other,
                value.map_or(conditions::Value::Unknown, conditions::Value::Text),
            ),
        }
    })
}

/// Derives the instances of `journey` from a customer's sorted events; `retired` instances
/// came before them (see [`JourneyMemory::retired`]).
/// A customer's instances of one journey, derived from its events: per loaded version (in
/// `versions`' order) the instances that version runs, and how many instances there are.
///
/// Instances follow each other: one enters on an event matching the entry step of the
/// version effective at that event's time (and the re-entry policy), and runs on that version
/// until it ends. If a later version's `migrate-from` lists the version it runs on and it has
/// not ended before that version's `effective-from`, it is derived again from its entry with
/// the later version, which takes over from `effective-from` on (it appears in both versions'
/// lists, with complementary spans). Entries before the earliest loaded version's
/// `effective-from` are instances of an unloaded earlier version: they only exist when that
/// version migrates them.
fn derive_versions(
    versions: &[Arc<Journey>],
    events: &[StoredEvent],
    retired: u32,
) -> (Vec<Vec<Instance>>, u32) {
    let mut per_version: Vec<Vec<Instance>> = vec![Vec::new(); versions.len()];
    let mut count = 0u32;
    // End of the previous instance: `None` before the first, `Some(None)` while it is active.
    let mut previous: Option<Option<Millis>> = None;
    // Events up to the previous instance's end belong to it.
    let mut free_from = 0;
    for i in 0..events.len() {
        if i < free_from {
            continue;
        }
        let Some(Entry {
            version: v,
            id_version,
            from,
        }) = entry(versions, events, i, previous, retired)
        else {
            continue;
        };
        count += 1;
        let number = retired + count;
        let (mut inst, mut ended) = derive_instance(&versions[v], events, i, number, id_version);
        inst.span.0 = from;
        let mut on = v;
        for (w, later) in versions.iter().enumerate().skip(v + 1) {
            let Some(from) = later.effective_from else {
                continue;
            };
            if !later.migrate_from.contains(&versions[on].version) {
                continue;
            }
            if inst.end_at().is_some_and(|end| end < from) {
                break;
            }
            let (mut moved, moved_end) = derive_instance(later, events, i, number, id_version);
            ended = moved_end;
            inst.span.1 = from;
            moved.span.0 = from;
            per_version[on].push(std::mem::replace(&mut inst, moved));
            on = w;
        }
        previous = Some(inst.end_at());
        free_from = ended.map_or(events.len(), |e| e + 1);
        per_version[on].push(inst);
    }
    (per_version, count)
}

/// One instance of `journey` entered at `events[entry]`: the earliest completion of each
/// step from then on, until the goal or an exit ends it; and the index of the event that
/// ended it.
fn derive_instance(
    journey: &Journey,
    events: &[StoredEvent],
    entry: usize,
    number: u32,
    id_version: u32,
) -> (Instance, Option<usize>) {
    let mut inst = Instance::entered(journey, events, entry, number, id_version);
    for i in entry..events.len() {
        if inst.step(journey, events, i) {
            return (inst, Some(i));
        }
    }
    (inst, None)
}

/// Where an instance of a journey enters: the version it runs on (an index into its loaded
/// versions), the version in its ids, and the start of its span.
struct Entry {
    version: usize,
    id_version: u32,
    from: Millis,
}

/// Whether `events[i]` enters a new instance of the journey loaded as `versions`, given how
/// the previous instance ended (`None` before the first, `Some(None)` while it is active) and
/// how many instances retention compacted away: the event matches the entry step of the
/// version effective at its time, and the re-entry policy allows it.
fn entry(
    versions: &[Arc<Journey>],
    events: &[StoredEvent],
    i: usize,
    previous: Option<Option<Millis>>,
    retired: u32,
) -> Option<Entry> {
    let at = events[i].at;
    let (version, id_version, from) = match JourneySet::version_at(versions, at) {
        Some(v) => (v, versions[v].version, Millis::MIN),
        None => {
            let first = &versions[0];
            match (first.migrate_from.iter().max(), first.effective_from) {
                (Some(&earlier), Some(from)) => (0, earlier, from),
                _ => return None,
            }
        }
    };
    let journey = &versions[version];
    let may_enter = match previous {
        None => retired == 0 || journey.re_entry == ReEntry::AfterEnd,
        Some(end) => journey.re_entry == ReEntry::AfterEnd && end.is_some_and(|end| at >= end),
    };
    (may_enter && matches(&journey.steps[0].matcher, events, i)).then_some(Entry {
        version,
        id_version,
        from,
    })
}

/// Every output an instance calls for, with its due time and emitted-set key, in a fixed order.
fn candidates(
    journey: &Journey,
    instances: &[Instance],
    state: &CustomerState,
    customer_id: &str,
    tables: &KeyTables,
) -> Vec<Candidate> {
    // At most: entered, each step completed and abandoned, the end, and each rule's actions.
    let per_instance =
        2 + 2 * journey.steps.len() + journey.rules.iter().map(|r| r.actions.len()).sum::<usize>();
    let mut out = Vec::with_capacity(per_instance * instances.len());
    for (idx, inst) in instances.iter().enumerate() {
        let keys = tables.instance(journey, inst.id_version, inst.number);
        let mut push_in = |due, kind, key, group| {
            if inst.covers(due, kind) {
                out.push(Candidate {
                    due,
                    instance: idx,
                    kind,
                    key,
                    group,
                });
            }
        };
        let mut push = |due, kind, key| push_in(due, kind, key, None);
        push(inst.entered_at, Kind::Entered, keys.entered);
        let end = inst.end_at();
        for (s, step) in journey.steps.iter().enumerate() {
            if let Some(at) = inst.done_at(s) {
                push(at, Kind::StepCompleted(s), keys.step_completed[s]);
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
                push(deadline, Kind::StepAbandoned(s), keys.step_abandoned[s]);
            }
        }
        match inst.end {
            Some((at, EndKind::Goal)) => push(at, Kind::GoalReached, keys.goal_reached),
            Some((at, EndKind::Exit(x))) => push(at, Kind::Exited(x), keys.exited[x]),
            None => {}
        }
        for (r, rule) in journey.rules.iter().enumerate() {
            let Some(plans) = plan_rule(rule, inst, state, customer_id) else {
                continue;
            };
            let group = keys.choice[r];
            for p in plans.iter().filter(|p| matches!(p.fate, Fate::Due)) {
                push_in(
                    p.due,
                    Kind::Command {
                        rule: r,
                        action: p.action,
                    },
                    keys.command[r][p.action],
                    group,
                );
            }
        }
    }
    out
}

/// One action of a rule in one instance: when it is due and what becomes of it.
#[derive(Debug, Clone)]
struct ActionPlan {
    /// Index of the action in its rule.
    action: usize,
    /// Due time.
    due: Millis,
    /// Due, cancelled or skipped.
    fate: Fate,
    /// Its next-best-action score, when the rule chooses and the model scored it.
    score: Option<f64>,
}

/// What becomes of an action at its due time.
#[derive(Debug, Clone)]
enum Fate {
    /// It is due (protections and next-best-action may still withhold it).
    Due,
    /// An `unless` step, the goal or an exit came first.
    Cancelled(CancelledBy),
    /// A guard (`if`, `segment`) does not hold: what failed.
    Skipped(String),
}

/// A rule's actions in one instance; `None` until what starts its clock happened. A
/// next-best-action rule's actions come in the order they are tried (best score first).
fn plan_rule(
    rule: &Rule,
    inst: &Instance,
    state: &CustomerState,
    customer_id: &str,
) -> Option<Vec<ActionPlan>> {
    let start = match &rule.after {
        Trigger::Step(s) => inst.done_at(*s)?,
        Trigger::When(c) => conditions::first_holding(c, state, inst.entered_at, inst.end_at())?,
    };
    let mut plans: Vec<ActionPlan> = rule
        .actions
        .iter()
        .enumerate()
        .map(|(a, action)| {
            let due = start + action.effective(customer_id).delay;
            let fate = match cancelled_by(inst, &rule.unless, due) {
                Some(by) => Fate::Cancelled(by),
                None => rule
                    .guards
                    .iter()
                    .find_map(|g| conditions::check_guard(g, state, due).err())
                    .map_or(Fate::Due, Fate::Skipped),
            };
            ActionPlan {
                action: a,
                due,
                fate,
                score: None,
            }
        })
        .collect();
    if let Some(scored_as) = &rule.choose {
        let ids: Vec<&str> = rule.actions.iter().map(|a| a.id.as_str()).collect();
        let scores = conditions::action_scores(scored_as, state, plans[0].due, &ids);
        for (p, score) in plans.iter_mut().zip(&scores) {
            p.score = *score;
        }
        let order = conditions::rank(&scores);
        plans = order.into_iter().map(|i| plans[i].clone()).collect();
    }
    Some(plans)
}

mod conditions;
mod derivation;
mod identity;
mod keys;
#[cfg(test)]
pub(crate) mod tests;
mod vec_map;
