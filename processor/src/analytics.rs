//! Journey analytics: a live funnel materialized from `journey-events`.
//!
//! Owns the pure fold of journey events into per-customer progress ([`Progress`]) and
//! per-partition aggregates ([`Aggregates`]): customers entered, at and stalled at each step,
//! completed, abandoned and recovered, time to complete each step, and what every intervention
//! action did (sent, suppressed, deferred, conversion of its recipients vs its holdout). Like
//! the engine it does no I/O and reads no clock, so the same fold runs over `simulate`'s output
//! in tests and over the topic in [`service`].
//!
//! [`store`] keeps progress, a drill-down index and the aggregates in RocksDB beside the input
//! offsets they reflect; [`service`] is `waymark analytics serve` (consumer, HTTP API,
//! dashboard). Nothing here decides what a customer gets: it only observes.

pub mod service;
pub mod stats;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::journey::{HOLDOUT, JourneySet};
use crate::model::{JourneyEvent, JourneyEventType, Millis};

/// Buckets of the step-duration histograms: bucket `i` holds durations below `2^i` seconds
/// (the last one everything longer, about 97 days and up). Fixed, so partitions merge.
pub const DURATION_BUCKETS: usize = 24;

/// What the view takes from the journey definitions the processor runs: each journey's step
/// order, each action's awaited step (the first `unless` step of its rule), and the
/// experiments. Journeys without a definition are counted, but have no "current step".
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    steps: BTreeMap<String, Vec<String>>,
    /// `(journey, action)` → the step the action waits for.
    awaited: BTreeMap<(String, String), String>,
    /// Experiment id → `(journey, action, arms)`, the holdout first when there is one.
    experiments: BTreeMap<String, (String, String, Vec<String>)>,
    /// `(journey, action)` → the conversion window of the action's experiment.
    windows: BTreeMap<(String, String), Millis>,
}

impl Definitions {
    /// What the view needs of each journey of `set`.
    pub fn of(set: &JourneySet) -> Self {
        let mut d = Definitions::default();
        for j in set.iter() {
            d.steps.insert(
                j.name.clone(),
                j.steps.iter().map(|s| s.id.clone()).collect(),
            );
            for rule in &j.rules {
                for a in &rule.actions {
                    if let Some(u) = rule.unless.first() {
                        d.awaited
                            .insert((j.name.clone(), a.id.clone()), j.steps[*u].id.clone());
                    }
                    if let Some(x) = &a.experiment {
                        let holdout = (x.holdout > 0).then(|| HOLDOUT.to_owned());
                        let arms = holdout
                            .into_iter()
                            .chain(x.variants.iter().map(|v| v.id.clone()))
                            .collect();
                        d.experiments
                            .insert(x.id.clone(), (j.name.clone(), a.id.clone(), arms));
                        if let Some(w) = x.conversion_window {
                            d.windows.insert((j.name.clone(), a.id.clone()), w);
                        }
                    }
                }
            }
        }
        d
    }

    /// Whether a conversion at `at` counts for the experiment on `action`, exposed at
    /// `exposed_at`: not before the exposure, and within its conversion window if it has one.
    pub fn converts(&self, journey: &str, action: &str, exposed_at: Millis, at: Millis) -> bool {
        let window = self.windows.get(&(journey.to_owned(), action.to_owned()));
        at >= exposed_at && window.is_none_or(|w| at - exposed_at <= *w)
    }

    /// The conversion window of the experiment on `action`, if it has one.
    pub fn conversion_window(&self, journey: &str, action: &str) -> Option<Millis> {
        self.windows
            .get(&(journey.to_owned(), action.to_owned()))
            .copied()
    }

    /// The step `action` of `journey` waits for, if its rule has one.
    pub fn awaited(&self, journey: &str, action: &str) -> Option<&str> {
        self.awaited
            .get(&(journey.to_owned(), action.to_owned()))
            .map(String::as_str)
    }

    /// The experiments: id → (journey, action, arm names).
    pub fn experiments(&self) -> &BTreeMap<String, (String, String, Vec<String>)> {
        &self.experiments
    }

    /// The steps of `journey`, in definition order (empty when unknown).
    pub fn steps(&self, journey: &str) -> &[String] {
        self.steps.get(journey).map_or(&[], Vec::as_slice)
    }

    /// The journeys known, by name.
    pub fn journeys(&self) -> impl Iterator<Item = &str> {
        self.steps.keys().map(String::as_str)
    }
}

/// Where an instance stands for the drill-down: at a step, or stalled there after its window
/// passed (abandoned and not recovered yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// The step is the customer's current step and its window is open.
    At,
    /// The step's window passed without it being completed.
    Abandoned,
}

impl Standing {
    /// `at` or `abandoned`, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::At => "at",
            Standing::Abandoned => "abandoned",
        }
    }

    /// Parses [`Standing::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "at" => Some(Standing::At),
            "abandoned" => Some(Standing::Abandoned),
            _ => None,
        }
    }
}

/// An instance's place in the funnel: journey version, step and standing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Journey version of the instance.
    pub version: u32,
    /// The current step.
    pub step: String,
    /// At it, or stalled there.
    pub standing: Standing,
    /// Instance number.
    pub instance: u32,
    /// Since when (event time): the window's opening, or the abandonment.
    pub since: Millis,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// The goal step was completed at this time.
    Goal(Millis),
    /// An exit condition ended it at this time, for this reason.
    Exit(Millis, String),
}

/// One journey instance of a customer, as the view saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProgress {
    /// Instance number (1 for the first entry).
    pub instance: u32,
    /// Journey version.
    pub version: u32,
    /// When it entered.
    pub entered_at: Millis,
    /// Completed steps and when.
    pub completed: BTreeMap<String, Millis>,
    /// Abandoned steps and when.
    pub abandoned: BTreeMap<String, Millis>,
    /// How it ended, if it did.
    pub ended: Option<Ended>,
    /// Actions whose command was sent.
    pub sent: BTreeSet<String>,
    /// Actions withheld from this instance as its holdout (a `command_suppressed` whose
    /// `variant` is `holdout`).
    pub held_out: BTreeSet<String>,
    /// The experiment arm the instance was exposed to, and when, per action.
    pub arms: BTreeMap<String, (String, Millis)>,
    /// Actions whose awaited step was completed after the exposure.
    pub awaited_done: BTreeSet<String>,
}

/// What the view knows of one customer in one journey.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Instances, oldest first.
    pub instances: Vec<InstanceProgress>,
    /// Every journey event, in the order read (the customer's timeline in this journey).
    pub timeline: Vec<JourneyEvent>,
}

/// Counters of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepAgg {
    /// Instances that completed the step.
    pub completed: u64,
    /// Instances whose window on the step passed (each counted once).
    pub abandoned: u64,
    /// Abandoned instances that completed the step later.
    pub recovered: u64,
    /// Instances whose current step this is, window open.
    pub at: u64,
    /// Instances stalled here: abandoned and not completed since.
    pub stalled: u64,
    /// Time from the step's window opening to its completion: `durations[i]` counts
    /// durations below `2^i` s (see [`DURATION_BUCKETS`]).
    pub durations: Vec<u64>,
}

/// Counters of one intervention action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAgg {
    /// Commands sent.
    pub sent: u64,
    /// Commands withheld by a protection (suppression list, cap) — not holdouts.
    pub suppressed: u64,
    /// Commands deferred by quiet hours.
    pub deferred: u64,
    /// Instances held out of the action by an experiment.
    pub held_out: u64,
    /// Instances that got the command and then reached the goal.
    pub sent_converted: u64,
    /// Held-out instances that reached the goal.
    pub held_out_converted: u64,
    /// Per experiment arm (a variant id, or `holdout`).
    pub arms: BTreeMap<String, ArmAgg>,
}

/// Counters of one experiment arm of an action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmAgg {
    /// Instances exposed: the arm's command was sent, or (holdout) withheld.
    pub exposed: u64,
    /// Exposed instances that then reached the journey's goal.
    pub goal: u64,
    /// Exposed instances that then completed the step the action waits for.
    pub awaited: u64,
}

/// Counters of one journey version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyAgg {
    /// Instances that entered.
    pub entered: u64,
    /// Instances that reached the goal.
    pub goal_reached: u64,
    /// Instances an exit condition ended.
    pub exited: u64,
    /// Per step.
    pub steps: BTreeMap<String, StepAgg>,
    /// Per action.
    pub actions: BTreeMap<String, ActionAgg>,
    /// Journey events by type.
    pub events: BTreeMap<String, u64>,
}

/// Aggregates of one partition (or, merged, of many), by `(journey, version)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregates {
    /// Per journey version.
    pub journeys: BTreeMap<(String, u32), JourneyAgg>,
}

/// What applying a journey event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Folded in; the instance moved from `before` to `after` in the drill-down index.
    Applied {
        /// Position before the event.
        before: Option<Position>,
        /// Position after it.
        after: Option<Position>,
    },
    /// Its id was seen already: nothing changed.
    Duplicate,
}

fn duration_bucket(ms: Millis) -> usize {
    let secs = (ms.max(0) / 1000) as u64;
    // Bucket i holds durations < 2^i s.
    ((u64::BITS - secs.leading_zeros()) as usize).min(DURATION_BUCKETS - 1)
}

/// The upper bound, in seconds, of histogram bucket `i` (`None` for the last, open one).
pub fn bucket_upper_secs(i: usize) -> Option<u64> {
    (i + 1 < DURATION_BUCKETS).then(|| 1u64 << i)
}

/// The `q`-quantile (0..=1) of a duration histogram, as its bucket's upper bound in seconds
/// (an over-estimate by less than 2×); `None` when empty.
pub fn quantile_secs(durations: &[u64], q: f64) -> Option<u64> {
    let total: u64 = durations.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in durations.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_upper_secs(i).unwrap_or(1u64 << (DURATION_BUCKETS - 1)));
        }
    }
    None
}

impl InstanceProgress {
    fn position(&self, steps: &[String]) -> Option<Position> {
        if self.ended.is_some() {
            return None;
        }
        let (index, step) = steps
            .iter()
            .enumerate()
            .find(|(_, s)| !self.completed.contains_key(*s))?;
        let opened = steps[..index]
            .iter()
            .filter_map(|s| self.completed.get(s))
            .max()
            .copied()
            .unwrap_or(self.entered_at);
        let (standing, since) = match self.abandoned.get(step) {
            Some(at) => (Standing::Abandoned, *at),
            None => (Standing::At, opened),
        };
        Some(Position {
            version: self.version,
            step: step.clone(),
            standing,
            instance: self.instance,
            since,
        })
    }

    /// When `step`'s window opened, if every step before it was complete by `at`.
    fn window_opened(&self, steps: &[String], step: &str, at: Millis) -> Option<Millis> {
        let index = steps.iter().position(|s| s == step)?;
        let mut opened = self.entered_at;
        for s in &steps[..index] {
            let done = *self.completed.get(s)?;
            if done > at {
                return None;
            }
            opened = opened.max(done);
        }
        Some(opened)
    }
}

/// Records that `inst` was exposed to `arm` of `action`'s experiment at `at` (once per
/// action). A completion of the awaited step read before the exposure but not earlier than it
/// in event time (the two can leave the processor in either order) converts it at once.
fn expose(
    agg: &mut JourneyAgg,
    inst: &mut InstanceProgress,
    awaited: Option<&str>,
    action: &str,
    arm: &str,
    at: Millis,
) {
    if inst.arms.contains_key(action) {
        return;
    }
    inst.arms.insert(action.to_owned(), (arm.to_owned(), at));
    let a = agg
        .actions
        .entry(action.to_owned())
        .or_default()
        .arms
        .entry(arm.to_owned())
        .or_default();
    a.exposed += 1;
    if awaited
        .and_then(|step| inst.completed.get(step))
        .is_some_and(|done| *done >= at)
        && inst.awaited_done.insert(action.to_owned())
    {
        a.awaited += 1;
    }
}

impl Aggregates {
    /// Adds `other` into `self` (partitions into a whole).
    pub fn merge(&mut self, other: &Aggregates) {
        for (key, theirs) in &other.journeys {
            let ours = self.journeys.entry(key.clone()).or_default();
            ours.entered += theirs.entered;
            ours.goal_reached += theirs.goal_reached;
            ours.exited += theirs.exited;
            for (step, t) in &theirs.steps {
                let o = ours.steps.entry(step.clone()).or_default();
                o.completed += t.completed;
                o.abandoned += t.abandoned;
                o.recovered += t.recovered;
                o.at += t.at;
                o.stalled += t.stalled;
                if o.durations.len() < t.durations.len() {
                    o.durations.resize(t.durations.len(), 0);
                }
                for (i, n) in t.durations.iter().enumerate() {
                    o.durations[i] += n;
                }
            }
            for (action, t) in &theirs.actions {
                let o = ours.actions.entry(action.clone()).or_default();
                o.sent += t.sent;
                o.suppressed += t.suppressed;
                o.deferred += t.deferred;
                o.held_out += t.held_out;
                o.sent_converted += t.sent_converted;
                o.held_out_converted += t.held_out_converted;
                for (arm, t) in &t.arms {
                    let o = o.arms.entry(arm.clone()).or_default();
                    o.exposed += t.exposed;
                    o.goal += t.goal;
                    o.awaited += t.awaited;
                }
            }
            for (t, n) in &theirs.events {
                *ours.events.entry(t.clone()).or_default() += n;
            }
        }
    }

    fn journey(&mut self, journey: &str, version: u32) -> &mut JourneyAgg {
        self.journeys
            .entry((journey.to_owned(), version))
            .or_default()
    }

    fn move_position(&mut self, journey: &str, position: &Option<Position>, delta: i64) {
        let Some(p) = position else {
            return;
        };
        let step = self
            .journey(journey, p.version)
            .steps
            .entry(p.step.clone())
            .or_default();
        let counter = match p.standing {
            Standing::At => &mut step.at,
            Standing::Abandoned => &mut step.stalled,
        };
        *counter = counter.saturating_add_signed(delta);
    }

    /// Folds one journey event of `progress`'s customer into the aggregates and the progress.
    pub fn apply(
        &mut self,
        order: &Definitions,
        progress: &mut Progress,
        ev: &JourneyEvent,
    ) -> Applied {
        if progress
            .timeline
            .iter()
            .any(|seen| seen.journey_event_id == ev.journey_event_id)
        {
            return Applied::Duplicate;
        }
        progress.timeline.push(ev.clone());
        let steps = order.steps(&ev.journey);
        let journey = &ev.journey;
        *self
            .journey(journey, ev.journey_version)
            .events
            .entry(ev.event_type.as_str().to_owned())
            .or_default() += 1;
        if ev.event_type == JourneyEventType::Entered {
            self.journey(journey, ev.journey_version).entered += 1;
            progress.instances.push(InstanceProgress {
                instance: ev.instance,
                version: ev.journey_version,
                entered_at: ev.at,
                completed: BTreeMap::new(),
                abandoned: BTreeMap::new(),
                ended: None,
                sent: BTreeSet::new(),
                held_out: BTreeSet::new(),
                arms: BTreeMap::new(),
                awaited_done: BTreeSet::new(),
            });
            let after = progress.instances.last().and_then(|i| i.position(steps));
            self.move_position(journey, &after, 1);
            return Applied::Applied {
                before: None,
                after,
            };
        }
        let Some(inst) = progress
            .instances
            .iter_mut()
            .rev()
            .find(|i| i.instance == ev.instance)
        else {
            // An event of an instance whose entry this view never saw (history cut by the
            // topic's retention): counted by type, nothing else can be placed.
            return Applied::Applied {
                before: None,
                after: None,
            };
        };
        let before = inst.position(steps);
        let agg = self
            .journeys
            .entry((journey.to_string(), inst.version))
            .or_default();
        let step = ev.step.as_deref().unwrap_or_default().to_owned();
        let action = ev.action.as_deref().unwrap_or_default().to_owned();
        match ev.event_type {
            JourneyEventType::Entered => unreachable!("handled above"),
            JourneyEventType::StepCompleted => {
                if !inst.completed.contains_key(&step) {
                    let duration = inst
                        .window_opened(steps, &step, ev.at)
                        .filter(|opened| *opened <= ev.at && steps.first() != Some(&step))
                        .map(|opened| ev.at - opened);
                    inst.completed.insert(step.clone(), ev.at);
                    for (action, (arm, exposed_at)) in &inst.arms {
                        if order.awaited(journey, action) == Some(step.as_str())
                            && order.converts(journey, action, *exposed_at, ev.at)
                            && inst.awaited_done.insert(action.clone())
                        {
                            let a = agg.actions.entry(action.clone()).or_default();
                            a.arms.entry(arm.clone()).or_default().awaited += 1;
                        }
                    }
                    let s = agg.steps.entry(step.clone()).or_default();
                    s.completed += 1;
                    if inst.abandoned.contains_key(&step) {
                        s.recovered += 1;
                    }
                    if let Some(d) = duration {
                        s.durations.resize(DURATION_BUCKETS, 0);
                        s.durations[duration_bucket(d)] += 1;
                    }
                }
            }
            JourneyEventType::StepAbandoned => {
                if !inst.abandoned.contains_key(&step) {
                    inst.abandoned.insert(step.clone(), ev.at);
                    agg.steps.entry(step).or_default().abandoned += 1;
                }
            }
            JourneyEventType::GoalReached => {
                if inst.ended.is_none() {
                    inst.ended = Some(Ended::Goal(ev.at));
                    agg.goal_reached += 1;
                    for a in &inst.sent {
                        agg.actions.entry(a.clone()).or_default().sent_converted += 1;
                    }
                    for a in &inst.held_out {
                        agg.actions.entry(a.clone()).or_default().held_out_converted += 1;
                    }
                    for (action, (arm, exposed_at)) in &inst.arms {
                        if order.converts(journey, action, *exposed_at, ev.at) {
                            let a = agg.actions.entry(action.clone()).or_default();
                            a.arms.entry(arm.clone()).or_default().goal += 1;
                        }
                    }
                }
            }
            JourneyEventType::Exited => {
                if inst.ended.is_none() {
                    inst.ended = Some(Ended::Exit(ev.at, ev.reason.clone().unwrap_or_default()));
                    agg.exited += 1;
                }
            }
            JourneyEventType::CommandEmitted => {
                inst.sent.insert(action.clone());
                agg.actions.entry(action.clone()).or_default().sent += 1;
                if let Some(arm) = &ev.variant {
                    let awaited = order.awaited(journey, &action);
                    expose(agg, inst, awaited, &action, arm, ev.at);
                }
            }
            JourneyEventType::CommandSuppressed => {
                let held_out = ev.variant.as_deref() == Some(HOLDOUT);
                let a = agg.actions.entry(action.clone()).or_default();
                if held_out {
                    a.held_out += 1;
                    let awaited = order.awaited(journey, &action);
                    expose(agg, inst, awaited, &action, HOLDOUT, ev.at);
                    inst.held_out.insert(action);
                } else {
                    a.suppressed += 1;
                }
            }
            JourneyEventType::CommandDeferred => {
                agg.actions.entry(action).or_default().deferred += 1;
            }
        }
        let after = inst.position(steps);
        if before != after {
            self.move_position(journey, &before, -1);
            self.move_position(journey, &after, 1);
        }
        Applied::Applied { before, after }
    }
}

/// The funnel of one journey version, as the API and `waymark analytics funnel` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    /// Journey name.
    pub journey: String,
    /// Journey version.
    pub version: u32,
    /// Instances that entered.
    pub entered: u64,
    /// Instances still in the journey (neither at the goal nor exited).
    pub active: u64,
    /// Instances that reached the goal.
    pub completed: u64,
    /// Instances an exit condition ended.
    pub exited: u64,
    /// Instances stalled at some step (abandoned it and did not recover yet).
    pub abandoned: u64,
    /// `completed / entered` (0 when nobody entered).
    pub conversion: f64,
    /// Steps in definition order.
    pub steps: Vec<FunnelStep>,
    /// Intervention actions by name.
    pub actions: Vec<FunnelAction>,
}

/// One step of a [`Funnel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelStep {
    /// Step id.
    pub step: String,
    /// Instances that completed it.
    pub completed: u64,
    /// Instances currently at it (window open).
    pub at: u64,
    /// Instances currently stalled at it (abandoned, not recovered).
    pub stalled: u64,
    /// Instances that ever abandoned it.
    pub abandoned: u64,
    /// Abandoned instances that completed it later.
    pub recovered: u64,
    /// `completed / completed of the previous step` (the first step: `/ entered`).
    pub conversion_from_previous: f64,
    /// Time from the window's opening to completion, seconds: p50, p90, p99 (bucket upper
    /// bounds, within 2× of the true value), over `timed` completions.
    pub time_to_complete_p50_secs: Option<u64>,
    /// See `time_to_complete_p50_secs`.
    pub time_to_complete_p90_secs: Option<u64>,
    /// See `time_to_complete_p50_secs`.
    pub time_to_complete_p99_secs: Option<u64>,
    /// Completions with a duration (steps completed before their window opened have none).
    pub timed: u64,
}

/// One intervention action of a [`Funnel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelAction {
    /// Action id.
    pub action: String,
    /// Commands sent.
    pub sent: u64,
    /// Withheld by a protection.
    pub suppressed: u64,
    /// Deferred by quiet hours.
    pub deferred: u64,
    /// Recipients that reached the goal.
    pub sent_converted: u64,
    /// `sent_converted / sent`.
    pub sent_conversion: f64,
    /// Held out by an experiment.
    pub held_out: u64,
    /// Held-out instances that reached the goal.
    pub held_out_converted: u64,
    /// `held_out_converted / held_out` (`None` without a holdout).
    pub held_out_conversion: Option<f64>,
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

impl Aggregates {
    /// The versions of `journey` the aggregates have, ascending.
    pub fn versions(&self, journey: &str) -> Vec<u32> {
        self.journeys
            .keys()
            .filter(|(j, _)| j == journey)
            .map(|(_, v)| *v)
            .collect()
    }

    /// The funnel of `journey` at `version`, steps in the order of `order` (then any step the
    /// events named that the definition does not have).
    pub fn funnel(&self, order: &Definitions, journey: &str, version: u32) -> Option<Funnel> {
        let agg = self.journeys.get(&(journey.to_owned(), version))?;
        let mut names: Vec<String> = order.steps(journey).to_vec();
        for s in agg.steps.keys() {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
        let empty = StepAgg::default();
        let mut previous = agg.entered;
        let steps = names
            .into_iter()
            .map(|step| {
                let s = agg.steps.get(&step).unwrap_or(&empty);
                let conversion_from_previous = ratio(s.completed, previous);
                previous = s.completed;
                FunnelStep {
                    completed: s.completed,
                    at: s.at,
                    stalled: s.stalled,
                    abandoned: s.abandoned,
                    recovered: s.recovered,
                    conversion_from_previous,
                    time_to_complete_p50_secs: quantile_secs(&s.durations, 0.5),
                    time_to_complete_p90_secs: quantile_secs(&s.durations, 0.9),
                    time_to_complete_p99_secs: quantile_secs(&s.durations, 0.99),
                    timed: s.durations.iter().sum(),
                    step,
                }
            })
            .collect::<Vec<_>>();
        let actions = agg
            .actions
            .iter()
            .map(|(action, a)| FunnelAction {
                action: action.clone(),
                sent: a.sent,
                suppressed: a.suppressed,
                deferred: a.deferred,
                sent_converted: a.sent_converted,
                sent_conversion: ratio(a.sent_converted, a.sent),
                held_out: a.held_out,
                held_out_converted: a.held_out_converted,
                held_out_conversion: (a.held_out > 0)
                    .then(|| ratio(a.held_out_converted, a.held_out)),
            })
            .collect();
        Some(Funnel {
            journey: journey.to_owned(),
            version,
            entered: agg.entered,
            active: agg.entered.saturating_sub(agg.goal_reached + agg.exited),
            completed: agg.goal_reached,
            exited: agg.exited,
            abandoned: steps.iter().map(|s| s.stalled).sum(),
            conversion: ratio(agg.goal_reached, agg.entered),
            steps,
            actions,
        })
    }
}

/// Arms need at least this many exposed customers before a report calls a difference
/// significant.
pub const MIN_SAMPLE_PER_ARM: u64 = 100;

/// The business outcome an experiment is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The step the action waits for (its rule's first `unless` step) completed after the
    /// exposure.
    Awaited,
    /// The journey's goal reached after the exposure.
    Goal,
}

/// `waymark analytics experiment <id>`: every arm's conversion against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    /// Experiment id.
    pub experiment: String,
    /// Journey and action under test.
    pub journey: String,
    /// The action.
    pub action: String,
    /// What counts as converted.
    pub outcome: Outcome,
    /// The step that is, for [`Outcome::Awaited`].
    pub awaited_step: Option<String>,
    /// How long after the exposure a conversion counts (`7d`); any time later when absent.
    #[serde(default)]
    pub conversion_window: Option<String>,
    /// The arm the others are compared with: the holdout, or else the first variant.
    pub baseline: String,
    /// Arms, the baseline first.
    pub arms: Vec<ArmReport>,
}

/// One arm of an [`ExperimentReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    /// Variant id, or `holdout`.
    pub arm: String,
    /// Customers exposed.
    pub exposed: u64,
    /// Of them, converted.
    pub converted: u64,
    /// `converted / exposed`.
    pub conversion: f64,
    /// Wilson 95% interval of the conversion.
    pub ci_low: f64,
    /// See `ci_low`.
    pub ci_high: f64,
    /// Conversion minus the baseline's (absent for the baseline).
    pub lift: Option<f64>,
    /// Two-sided p-value of the two-proportion z-test against the baseline.
    pub p_value: Option<f64>,
    /// Customers per arm a difference of the size observed needs (5% significance, 80%
    /// power).
    pub required_per_arm: Option<u64>,
    /// What the numbers allow one to say.
    pub verdict: String,
}

impl Aggregates {
    /// The report of experiment `id` over every version of its journey, judged on `outcome`
    /// (`None`: the awaited step when the action has one, else the goal).
    pub fn experiment(
        &self,
        defs: &Definitions,
        id: &str,
        outcome: Option<Outcome>,
    ) -> Option<ExperimentReport> {
        let (journey, action, arm_names) = defs.experiments.get(id)?;
        let awaited_step = defs.awaited(journey, action).map(str::to_owned);
        let outcome = outcome.unwrap_or(if awaited_step.is_some() {
            Outcome::Awaited
        } else {
            Outcome::Goal
        });
        let mut arms: BTreeMap<&str, ArmAgg> = arm_names
            .iter()
            .map(|a| (a.as_str(), ArmAgg::default()))
            .collect();
        for ((j, _), agg) in &self.journeys {
            if j != journey {
                continue;
            }
            for (arm, t) in agg
                .actions
                .get(action)
                .map(|a| &a.arms)
                .into_iter()
                .flatten()
            {
                let o = arms.entry(arm.as_str()).or_default();
                o.exposed += t.exposed;
                o.goal += t.goal;
                o.awaited += t.awaited;
            }
        }
        let converted = |a: &ArmAgg| match outcome {
            Outcome::Awaited => a.awaited,
            Outcome::Goal => a.goal,
        };
        let baseline = arm_names.first()?.clone();
        let base = arms.get(baseline.as_str()).cloned().unwrap_or_default();
        let base_rate = ratio(converted(&base), base.exposed);
        let mut order: Vec<&str> = arm_names.iter().map(String::as_str).collect();
        for arm in arms.keys() {
            if !order.contains(arm) {
                order.push(arm);
            }
        }
        let reports = order
            .into_iter()
            .map(|arm| {
                let a = arms.get(arm).cloned().unwrap_or_default();
                let c = converted(&a);
                let rate = ratio(c, a.exposed);
                let (ci_low, ci_high) = stats::wilson_95(c, a.exposed);
                let is_base = arm == baseline;
                let p_value = (!is_base)
                    .then(|| {
                        stats::two_proportion_p((c, a.exposed), (converted(&base), base.exposed))
                    })
                    .flatten();
                let required = (!is_base)
                    .then(|| stats::required_per_arm(base_rate, rate))
                    .flatten();
                let enough = a.exposed >= MIN_SAMPLE_PER_ARM
                    && base.exposed >= MIN_SAMPLE_PER_ARM
                    && required.is_some_and(|n| a.exposed >= n && base.exposed >= n);
                let verdict = if is_base {
                    "baseline".to_owned()
                } else {
                    match p_value {
                        Some(p) if p < 0.05 && enough => format!(
                            "{} than {baseline} (p = {p:.4})",
                            if rate > base_rate { "better" } else { "worse" }
                        ),
                        Some(p) if enough => {
                            format!("no significant difference from {baseline} (p = {p:.2})")
                        }
                        _ => format!(
                            "not enough data yet: {} of {} customers per arm",
                            a.exposed.min(base.exposed),
                            required
                                .unwrap_or(MIN_SAMPLE_PER_ARM)
                                .max(MIN_SAMPLE_PER_ARM)
                        ),
                    }
                };
                ArmReport {
                    arm: arm.to_owned(),
                    exposed: a.exposed,
                    converted: c,
                    conversion: rate,
                    ci_low,
                    ci_high,
                    lift: (!is_base).then_some(rate - base_rate),
                    p_value,
                    required_per_arm: required,
                    verdict,
                }
            })
            .collect();
        Some(ExperimentReport {
            experiment: id.to_owned(),
            journey: journey.clone(),
            action: action.clone(),
            outcome,
            awaited_step: (outcome == Outcome::Awaited)
                .then_some(awaited_step)
                .flatten(),
            conversion_window: defs
                .conversion_window(journey, action)
                .map(crate::journey::short_duration),
            baseline,
            arms: reports,
        })
    }
}

/// An experiment report as a terminal table (what `waymark analytics experiment` prints).
pub fn render_experiment(r: &ExperimentReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let after = match &r.conversion_window {
        Some(w) => format!("within {w} after exposure"),
        None => "after exposure".to_owned(),
    };
    let judged = match (&r.outcome, &r.awaited_step) {
        (Outcome::Awaited, Some(step)) => format!("`{step}` completed {after}"),
        _ => format!("the journey's goal reached {after}"),
    };
    let _ = writeln!(
        out,
        "experiment {} on {} / {}: converted = {judged}; baseline {}",
        r.experiment, r.journey, r.action, r.baseline
    );
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>9} {:>7} {:>17} {:>7} {:>8}  verdict",
        "arm", "exposed", "converted", "rate", "95% CI", "lift", "p"
    );
    for a in &r.arms {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>6.1}% {:>7.1}% – {:>5.1}% {:>7} {:>8}  {}",
            a.arm,
            a.exposed,
            a.converted,
            a.conversion * 100.0,
            a.ci_low * 100.0,
            a.ci_high * 100.0,
            a.lift
                .map(|l| format!("{:+.1}", l * 100.0))
                .unwrap_or_else(|| "-".into()),
            a.p_value
                .map(|p| format!("{p:.4}"))
                .unwrap_or_else(|| "-".into()),
            a.verdict
        );
    }
    out
}

/// A funnel as a terminal table (what `waymark analytics funnel` prints).
pub fn render_funnel(f: &Funnel) -> String {
    use std::fmt::Write;
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let secs = |s: Option<u64>| match s {
        None => "-".to_owned(),
        Some(s) if s < 120 => format!("<={s}s"),
        Some(s) if s < 7_200 => format!("<={}m", s / 60),
        Some(s) if s < 172_800 => format!("<={}h", s / 3_600),
        Some(s) => format!("<={}d", s / 86_400),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} v{}: {} entered, {} active, {} completed ({}), {} exited, {} stalled",
        f.journey,
        f.version,
        f.entered,
        f.active,
        f.completed,
        pct(f.conversion),
        f.exited,
        f.abandoned
    );
    let _ = writeln!(
        out,
        "\n{:<28} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "step", "completed", "conv", "at", "stalled", "abandoned", "recovered", "p50", "p90"
    );
    for s in &f.steps {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8}",
            s.step,
            s.completed,
            pct(s.conversion_from_previous),
            s.at,
            s.stalled,
            s.abandoned,
            s.recovered,
            secs(s.time_to_complete_p50_secs),
            secs(s.time_to_complete_p90_secs)
        );
    }
    if !f.actions.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<28} {:>9} {:>10} {:>8} {:>16} {:>9} {:>16}",
            "action", "sent", "suppressed", "deferred", "sent→goal", "held out", "held out→goal"
        );
        for a in &f.actions {
            let _ = writeln!(
                out,
                "{:<28} {:>9} {:>10} {:>8} {:>16} {:>9} {:>16}",
                a.action,
                a.sent,
                a.suppressed,
                a.deferred,
                format!("{} ({})", a.sent_converted, pct(a.sent_conversion)),
                a.held_out,
                a.held_out_conversion
                    .map(|c| format!("{} ({})", a.held_out_converted, pct(c)))
                    .unwrap_or_else(|| "-".to_owned())
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
