//! The emitted-set keys of an instance's outputs, and a table of them per journey.
//!
//! A key is FNV-1a over the journey's name, the version in its ids, the instance number and
//! what the output is (a tag, and a step, exit, rule or action id). Keys are stored with every
//! customer, so the function never changes. Deriving a customer's candidates needs every key
//! of every instance again at each step; the keys of a journey's first instances are hashed
//! once, when the engine is built, and looked up after that.

use std::borrow::Cow;
use std::sync::Arc;

use crate::journey::{Journey, JourneySet};

/// Instance numbers whose keys [`KeyTables`] holds, from 1. Almost every instance is its
/// customer's first (or the first after retention compacted one away); a larger number's keys
/// are hashed when needed.
const NUMBERS_KEPT: u32 = 8;

/// FNV-1a, 64 bit: a fixed, platform-independent hash for the emitted-set keys. Each part is
/// followed by a `0xff` byte. Streaming, so a prefix shared by many keys (an instance's
/// journey, id version and number) is hashed once and copied.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const START: Fnv = Fnv(0xcbf2_9ce4_8422_2325);

    /// The hash after one more part.
    #[inline]
    fn part(self, bytes: &[u8]) -> Fnv {
        let mut h = self.0;
        for b in bytes.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Fnv(h)
    }
}

/// The emitted-set key of an instance's output: what it is (`tag`, and a step, exit, rule or
/// action id), of which instance. The customer id is not part of it (the memory is the
/// customer's own), so a merge can carry keys to the canonical customer's numbering.
pub(crate) fn output_key(
    journey: &[u8],
    id_version: u32,
    number: u32,
    tag: &[u8],
    a: &str,
    b: &str,
) -> u64 {
    key_of(instance_prefix(journey, id_version, number), tag, a, b)
}

/// The part of [`output_key`] every output of one instance shares.
fn instance_prefix(journey: &[u8], id_version: u32, number: u32) -> Fnv {
    Fnv::START
        .part(journey)
        .part(&id_version.to_le_bytes())
        .part(&number.to_le_bytes())
}

/// [`output_key`] from its instance's [`instance_prefix`].
#[inline]
fn key_of(prefix: Fnv, tag: &[u8], a: &str, b: &str) -> u64 {
    prefix.part(tag).part(a.as_bytes()).part(b.as_bytes()).0
}

/// Every key one instance's outputs can have, indexed like the journey's steps, exits, rules
/// and actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InstanceKeys {
    pub entered: u64,
    pub goal_reached: u64,
    /// Per step.
    pub step_completed: Vec<u64>,
    /// Per step.
    pub step_abandoned: Vec<u64>,
    /// Per exit.
    pub exited: Vec<u64>,
    /// Per rule: the key shared by a next-best-action rule's alternatives (`None` for a rule
    /// that does not choose).
    pub choice: Vec<Option<u64>>,
    /// Per rule, per action.
    pub command: Vec<Vec<u64>>,
}

impl InstanceKeys {
    /// The keys of instance `number` of `journey`, with `id_version` in its ids (the version
    /// it entered, which a migrated instance keeps).
    pub fn new(journey: &Journey, id_version: u32, number: u32) -> Self {
        let prefix = instance_prefix(journey.name.as_bytes(), id_version, number);
        let key = |tag: &[u8], a: &str, b: &str| key_of(prefix, tag, a, b);
        InstanceKeys {
            entered: key(b"entered", "", ""),
            goal_reached: key(b"goal_reached", "", ""),
            step_completed: (journey.steps.iter())
                .map(|s| key(b"step_completed", &s.id, ""))
                .collect(),
            step_abandoned: (journey.steps.iter())
                .map(|s| key(b"step_abandoned", &s.id, ""))
                .collect(),
            exited: (journey.exits.iter())
                .map(|x| key(b"exited", &x.id, ""))
                .collect(),
            choice: (journey.rules.iter())
                .map(|r| r.choose.is_some().then(|| key(b"choice", &r.id, "")))
                .collect(),
            command: (journey.rules.iter())
                .map(|r| {
                    (r.actions.iter())
                        .map(|a| key(b"command", &r.id, &a.id))
                        .collect()
                })
                .collect(),
        }
    }
}

/// The keys of one journey version's first [`NUMBERS_KEPT`] instances, for each version its
/// instances can carry in their ids: its own, and the ones it migrates from.
#[derive(Debug, Clone)]
struct KeyTable {
    /// The journey version, to tell which table is whose.
    journey: Arc<Journey>,
    /// `(id version, keys of instances 1, 2, …)`.
    by_version: Vec<(u32, Vec<InstanceKeys>)>,
}

/// A [`KeyTable`] for every journey version an engine runs.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyTables(Vec<KeyTable>);

impl KeyTables {
    /// The tables of every version in `journeys`.
    pub fn new(journeys: &JourneySet) -> Self {
        let tables = journeys.iter().map(|journey| {
            let versions =
                std::iter::once(journey.version).chain(journey.migrate_from.iter().copied());
            let by_version = versions
                .map(|v| {
                    let numbers = 1..=NUMBERS_KEPT;
                    (
                        v,
                        numbers.map(|n| InstanceKeys::new(journey, v, n)).collect(),
                    )
                })
                .collect();
            KeyTable {
                journey: Arc::clone(journey),
                by_version,
            }
        });
        KeyTables(tables.collect())
    }

    /// The keys of instance `number` of `journey` with `id_version` in its ids: from the
    /// table when it has them, else hashed now (the same keys).
    pub fn instance(
        &self,
        journey: &Journey,
        id_version: u32,
        number: u32,
    ) -> Cow<'_, InstanceKeys> {
        let kept = self
            .0
            .iter()
            .find(|t| std::ptr::eq(Arc::as_ptr(&t.journey), journey))
            .and_then(|t| t.by_version.iter().find(|(v, _)| *v == id_version))
            .and_then(|(_, numbers)| numbers.get(usize::try_from(number).ok()?.checked_sub(1)?));
        match kept {
            Some(keys) => Cow::Borrowed(keys),
            None => Cow::Owned(InstanceKeys::new(journey, id_version, number)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format_millis;

    /// Version 1 of a journey with an exit, a next-best-action rule and a plain rule; version 2
    /// renames a step and migrates version 1's instances.
    fn journeys() -> JourneySet {
        let v1 = "journey: trial\nversion: 1\nre-entry: after-end\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\nexit:\n  - id: cancelled\n    event: trial.cancelled\nrules:\n  - id: nudge\n    after: start\n    unless: [paid]\n    actions:\n      - id: mail\n        delay: 1d\n        channel: email\n      - id: call\n        delay: 7d\n        channel: contact-center\n  - id: save\n    after: start\n    choose:\n      by-score: nba.score\n    actions:\n      - id: offer\n        delay: 1h\n        channel: email\n      - id: text\n        delay: 1h\n        channel: sms\n";
        let v2 = v1
            .replace(
                "version: 1\n",
                &format!(
                    "version: 2\neffective-from: {}\nmigrate-from: [1]\n",
                    format_millis(1_772_400_000_000)
                ),
            )
            .replace("id: paid", "id: subscribed")
            .replace("unless: [paid]", "unless: [subscribed]")
            .replace("goal: paid", "goal: subscribed");
        crate::journey::parsed(&[v1, &v2])
    }

    /// Every key of the instance, each hashed on its own with [`output_key`].
    fn one_by_one(journey: &Journey, id_version: u32, number: u32) -> InstanceKeys {
        let key = |tag: &[u8], a: &str, b: &str| {
            output_key(journey.name.as_bytes(), id_version, number, tag, a, b)
        };
        let steps = |tag: &[u8]| journey.steps.iter().map(|s| key(tag, &s.id, "")).collect();
        InstanceKeys {
            entered: key(b"entered", "", ""),
            goal_reached: key(b"goal_reached", "", ""),
            step_completed: steps(b"step_completed"),
            step_abandoned: steps(b"step_abandoned"),
            exited: journey
                .exits
                .iter()
                .map(|x| key(b"exited", &x.id, ""))
                .collect(),
            choice: (journey.rules.iter())
                .map(|r| r.choose.as_ref().map(|_| key(b"choice", &r.id, "")))
                .collect(),
            command: (journey.rules.iter())
                .map(|r| {
                    (r.actions.iter())
                        .map(|a| key(b"command", &r.id, &a.id))
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn a_table_gives_the_keys_hashed_one_by_one_for_every_version_and_number() {
        let set = journeys();
        let tables = KeyTables::new(&set);
        let (mut kept, mut hashed) = (0, 0);
        for journey in set.iter() {
            assert_eq!(journey.exits.len(), 1);
            assert_eq!(journey.rules.len(), 2);
            // Its own version, the one it migrates from, and one no instance carries.
            for id_version in [1, 2, 3] {
                for number in [0, 1, 2, NUMBERS_KEPT, NUMBERS_KEPT + 1, u32::MAX] {
                    let keys = tables.instance(journey, id_version, number);
                    assert_eq!(*keys, one_by_one(journey, id_version, number));
                    match keys {
                        Cow::Borrowed(_) => kept += 1,
                        Cow::Owned(_) => hashed += 1,
                    }
                }
            }
        }
        // Version 1: its own id version; version 2: its own and version 1's; numbers 1, 2 and
        // NUMBERS_KEPT of each.
        assert_eq!((kept, hashed), (9, 27));
    }

    #[test]
    fn a_journey_without_a_table_gets_its_keys_hashed() {
        let set = journeys();
        let tables = KeyTables::new(&set);
        let first = set.iter().next().unwrap();
        // The same definition, another value: the tables do not know it.
        let copy = Journey::clone(first);
        let keys = tables.instance(&copy, copy.version, 1);
        assert!(matches!(keys, Cow::Owned(_)));
        assert_eq!(*keys, *tables.instance(first, first.version, 1));
        assert_ne!(
            tables.instance(first, first.version, 1).entered,
            tables.instance(first, first.version, 2).entered,
            "an instance number is part of every key"
        );
    }
}
