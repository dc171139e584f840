//! What [`Engine::advance`] derived last time for a customer, kept beside its state in memory.
//!
//! A journey's instances are a left fold over the customer's sorted events: whether an event
//! enters an instance, completes a step or ends one depends only on that event, the events
//! before it and the instances before it. When the events only grew at their end since the
//! last derivation — events arriving in time order, and every wake-up, which adds none — the
//! fold goes on from the first new event instead of starting over from the customer's first
//! event. Anything else (an event inserted before the end, compaction, another journey set,
//! a customer just read from the store) derives from scratch.
//!
//! The memo is never stored, compared or part of an output: the derivation it gives is the
//! one [`derive_versions`] gives for the same events, which test builds check on every
//! `advance`. A journey with more than one loaded version is derived from scratch whenever
//! the events grew (an instance may move to a later version, which the fold does not follow).
//! Only customers with [`KEEP_FROM_EVENTS`] or more events keep a derivation.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use smallvec::SmallVec;

use super::{CustomerState, Engine, Entry, Instance, StoredEvent, derive_versions, entry};
use crate::journey::Journey;

/// Numbers every [`Engine`] built from a journey set, so that a memo derived with one is not
/// resumed with another (a reload).
static JOURNEY_SETS: AtomicU64 = AtomicU64::new(1);

/// A fresh number for an engine's journey set.
pub(super) fn next_journey_set() -> u64 {
    JOURNEY_SETS.fetch_add(1, Ordering::Relaxed)
}

/// A customer's last derivation, if any (see the module doc). Equal to every other, so that
/// states compare by what they hold; printed without its contents.
#[derive(Clone, Default)]
pub struct DerivationMemo(Option<Box<Derivation>>);

impl DerivationMemo {
    /// How many events the kept derivation was derived from; `None` when none is kept.
    #[cfg(test)]
    pub(crate) fn kept_events(&self) -> Option<usize> {
        self.0.as_ref().map(|d| d.events)
    }

    /// Takes the derivation out, leaving none.
    pub(super) fn take(&mut self) -> Option<Box<Derivation>> {
        self.0.take()
    }

    /// Keeps the derivation `advance` used for the next one, if it is worth keeping (see
    /// [`KEEP_FROM_EVENTS`]).
    pub(super) fn keep(&mut self, units: Units<'_>) {
        if let Units::Kept(derivation) = units {
            self.0 = Some(derivation);
        }
    }
}

impl PartialEq for DerivationMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DerivationMemo {}

impl fmt::Debug for DerivationMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "DerivationMemo(kept)"
        } else {
            "DerivationMemo(none)"
        })
    }
}

/// A derivation is kept for a customer with at least this many stored events. Deriving a
/// shorter history again costs less than reading a kept derivation from memory the CPU has
/// not touched lately (a cache miss), and keeping one for every customer would take about
/// 0.4 KiB each (BENCHMARKS.md, twenty-seventh session).
#[cfg(not(test))]
pub(super) const KEEP_FROM_EVENTS: usize = 8;

/// In tests, two: every test customer with more than one event goes through a kept
/// derivation, which each `advance` checks against one from scratch.
#[cfg(test)]
pub(super) const KEEP_FROM_EVENTS: usize = 2;

/// Every journey version with the instances it runs, as one `advance` uses them.
pub(super) enum Units<'e> {
    /// Carried on from the customer's kept derivation, or started to be kept.
    Kept(Box<Derivation>),
    /// Derived from scratch (see [`Engine::units`]), for a short history.
    Fresh(Vec<(&'e Journey, Vec<Instance>, bool)>),
}

impl<'e> Units<'e> {
    /// Every loaded journey version with the instances it runs.
    pub(super) fn views<'a>(
        &'a self,
        engine: &'a Engine,
    ) -> SmallVec<[(&'a Journey, &'a [Instance]); 2]> {
        match self {
            Units::Kept(derivation) => engine
                .journeys
                .by_name()
                .zip(&derivation.journeys)
                .flat_map(|(versions, j)| {
                    versions
                        .iter()
                        .zip(&j.per_version)
                        .map(|(journey, instances)| (&**journey, &instances[..]))
                })
                .collect(),
            Units::Fresh(units) => units
                .iter()
                .map(|(journey, instances, _)| (*journey, &instances[..]))
                .collect(),
        }
    }
}

/// Every journey's instances, derived from a customer's first `events` events.
#[derive(Debug, Clone)]
pub(super) struct Derivation {
    /// The engine's journey set (see [`next_journey_set`]).
    journey_set: u64,
    /// How many of the customer's events it was derived from.
    events: usize,
    /// The id of the last of them: an event inserted before it moves it, and ids are unique.
    last_event: Option<CompactString>,
    /// Per journey (in [`crate::journey::JourneySet::by_name`]'s order).
    journeys: SmallVec<[JourneyDerivation; 1]>,
}

/// One journey's instances.
#[derive(Debug, Clone)]
struct JourneyDerivation {
    /// Instances retention had compacted away (see [`super::JourneyMemory::retired`]).
    retired: u32,
    /// Per loaded version, the instances it runs.
    per_version: SmallVec<[SmallVec<[Instance; 1]>; 1]>,
}

impl Engine {
    /// Every journey's instances for `state`. For a history of [`KEEP_FROM_EVENTS`] or more:
    /// `kept` carried on over the events added at its end since, when it still describes the
    /// beginning of these events, else from scratch, to be kept. For a shorter one: from
    /// scratch, not kept.
    pub(super) fn derivation(
        &self,
        state: &CustomerState,
        kept: Option<Box<Derivation>>,
    ) -> Units<'_> {
        let events = &state.events;
        if events.len() < KEEP_FROM_EVENTS {
            return Units::Fresh(self.units(state));
        }
        let retired = |name: &str| state.journeys.get(name).map_or(0, |m| m.retired);
        let resumable = kept.filter(|d| {
            d.journey_set == self.journey_set
                && d.events <= events.len()
                && d.last_event.as_deref()
                    == d.events.checked_sub(1).map(|i| events[i].event_id.as_str())
                && self
                    .journeys
                    .by_name()
                    .zip(&d.journeys)
                    .all(|(versions, j)| j.retired == retired(&versions[0].name))
        });
        let mut derivation = resumable.unwrap_or_else(|| {
            Box::new(Derivation {
                journey_set: self.journey_set,
                events: 0,
                last_event: None,
                journeys: self
                    .journeys
                    .by_name()
                    .map(|versions| JourneyDerivation {
                        retired: retired(&versions[0].name),
                        per_version: smallvec::smallvec![SmallVec::new(); versions.len()],
                    })
                    .collect(),
            })
        });
        if derivation.events < events.len() {
            for (versions, j) in self.journeys.by_name().zip(&mut derivation.journeys) {
                if versions.len() == 1 {
                    fold(versions, events, derivation.events, j);
                } else {
                    j.per_version = derive_versions(versions, events, j.retired)
                        .0
                        .into_iter()
                        .map(SmallVec::from_vec)
                        .collect();
                }
            }
            derivation.events = events.len();
            derivation.last_event = events.last().map(|e| e.event_id.clone());
        }
        #[cfg(test)]
        for (versions, j) in self.journeys.by_name().zip(&derivation.journeys) {
            assert_eq!(
                j.per_version.iter().map(|v| v.to_vec()).collect::<Vec<_>>(),
                derive_versions(versions, events, j.retired).0,
                "a resumed derivation differs from a fresh one"
            );
        }
        Units::Kept(derivation)
    }
}

/// Goes on deriving the instances of a journey with one loaded version (`versions`) over
/// `events[start..]`, the same way [`derive_versions`] derives them from the first event: the
/// active instance takes each event until one ends it; then an event may enter the next one.
fn fold(
    versions: &[Arc<Journey>],
    events: &[StoredEvent],
    start: usize,
    j: &mut JourneyDerivation,
) {
    let journey = &versions[0];
    let instances = &mut j.per_version[0];
    for i in start..events.len() {
        if let Some(active) = instances.last_mut().filter(|inst| inst.end.is_none()) {
            active.step(journey, events, i);
            continue;
        }
        let previous = instances.last().map(Instance::end_at);
        let Some(Entry {
            id_version, from, ..
        }) = entry(versions, events, i, previous, j.retired)
        else {
            continue;
        };
        let number = j.retired + instances.len() as u32 + 1;
        let mut inst = Instance::entered(journey, events, i, number, id_version);
        inst.span.0 = from;
        inst.step(journey, events, i);
        instances.push(inst);
    }
}
