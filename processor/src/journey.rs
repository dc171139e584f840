//! Journey definitions: the YAML a journey owner writes, and its compiled form the engine runs.
//!
//! Owns parsing (`serde-saphyr`, `deny_unknown_fields`, kebab-case keys), validation with errors
//! that name the file, line and field, and compilation into [`Journey`]. Must not evaluate
//! events: that is `engine`'s job.
//!
//! A journey is an ordered list of steps (the first is the entry step, one is the goal), each an
//! event type plus an optional predicate; rules say "after step A, unless step B, do X at offset
//! d"; every step after the entry can have an abandonment window. See `deploy/journeys/` and the
//! README for the full language.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::model::{Channel, Millis};

mod condition;
pub mod diff;

pub use condition::{
    ChooseDef, Condition, ConditionDef, Metric, SCORE_ATTRIBUTE, SCORED_ACTION_ATTRIBUTE, WindowDef,
};
use condition::{Role, compile_condition, compile_segment};

/// A journey file that could not be loaded: where, which field, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    /// The file or directory could not be read.
    #[error("cannot read journey definitions at {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// The parser's message.
        message: String,
    },
    /// The YAML is well-formed but says something inconsistent.
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: u64,
        /// 1-based column of the offending value.
        column: u64,
        /// Path of the field, e.g. `rules[0].after`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The versions of one journey do not fit together.
    #[error("{path}: journey `{name}` version {version}: {message}")]
    Versions {
        /// The file of the offending version.
        path: PathBuf,
        /// The journey name.
        name: String,
        /// The offending version.
        version: u32,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A directory held no `*.yaml`/`*.yml` file.
    #[error(
        "no journey definitions (*.yaml, *.yml) in {0}; point --journeys at a file or a directory holding them"
    )]
    Empty(PathBuf),
    /// Two files define the same version of a journey.
    #[error(
        "journey `{name}` version {version} is defined twice: in {first} and in {second}; give the newer definition the next version (and an `effective-from`), or remove one file"
    )]
    Duplicate {
        /// The journey name.
        name: String,
        /// The version.
        version: u32,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
}

/// A duration written as `90s`, `15m`, `1h`, `2d`, `1w` (humantime syntax), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationMs(pub Millis);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let s = String::deserialize(d)?;
        let dur = humantime::parse_duration(s.trim()).map_err(|e| {
            D::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. 30m, 1h, 2d"
            ))
        })?;
        Millis::try_from(dur.as_millis())
            .map(DurationMs)
            .map_err(|_| D::Error::custom(format!("duration `{s}` is too long")))
    }
}

/// `1d`, `36h`, `90m`, `45s`: the largest unit that divides the duration.
pub fn short_duration(ms: Millis) -> String {
    const UNITS: [(Millis, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    UNITS.iter().find(|(u, _)| ms % u == 0).map_or_else(
        || format!("{ms}ms"),
        |(u, name)| format!("{}{name}", ms / u),
    )
}

/// A YAML scalar read as a string (`eq: 100` and `eq: "100"` mean the same).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// What happens when a customer who already had an instance meets the entry step again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReEntry {
    /// One instance per customer, ever: later entry events are ignored.
    #[default]
    Never,
    /// An entry event after the instance ended (goal or exit) starts a new instance.
    AfterEnd,
}

/// `journey.yaml`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JourneyDef {
    /// Journey name: stable, used in ids, topics' records and metrics labels.
    pub journey: Spanned<String>,
    /// Version of this definition (instances in flight keep the version they entered with).
    pub version: u32,
    /// Event time from which customers entering get this version (RFC 3339). Needed when an
    /// earlier version of the journey is loaded too; on the earliest version it is the time
    /// the journey starts taking entries.
    #[serde(default)]
    pub effective_from: Option<Spanned<String>>,
    /// Earlier versions whose instances still in flight at `effective-from` move to this
    /// version (their outputs before `effective-from` stay as they were; from then on this
    /// version's steps and rules apply). Without it they finish on their own version.
    #[serde(default)]
    pub migrate_from: Vec<u32>,
    /// What the journey is for.
    #[serde(default)]
    pub description: String,
    /// Re-entry policy (default `never`).
    #[serde(default)]
    pub re_entry: ReEntry,
    /// Default abandonment window of every step after the entry step (e.g. `7d`).
    #[serde(default)]
    pub abandon_after: Option<DurationMs>,
    /// Customer attributes kept on the customer (latest by event time) and copied onto every
    /// command, e.g. `[email, phone, sales_rep, tz]`.
    #[serde(default)]
    pub profile: Vec<Spanned<String>>,
    /// Event types that only update the profile (e.g. `plan.changed`): profile attributes are
    /// read from these and from the events of the journey's steps, exits and conditions.
    #[serde(default)]
    pub profile_events: Vec<String>,
    /// Ordered steps; the first is the entry step.
    pub steps: Vec<StepDef>,
    /// Id of the goal step: completing it ends the instance.
    pub goal: Spanned<String>,
    /// Events that end the instance without reaching the goal.
    #[serde(default)]
    pub exit: Vec<ExitDef>,
    /// Inaction rules.
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// One step, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepDef {
    /// Step id, unique in the journey (`payment_account`).
    pub id: Spanned<String>,
    /// Event type that completes the step (`payment_account.created`).
    pub event: String,
    /// Optional predicate on that event.
    #[serde(default, rename = "where")]
    pub where_: Option<WhereDef>,
    /// Abandonment window of this step; overrides the journey's `abandon-after`.
    #[serde(default)]
    pub abandon_after: Option<DurationMs>,
    /// What the step means, for people.
    #[serde(default)]
    pub description: String,
}

/// An exit condition, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExitDef {
    /// Exit id, reported as the `reason` of the `exited` journey event.
    pub id: String,
    /// Event type that ends the instance.
    pub event: String,
    /// Optional predicate on that event.
    #[serde(default, rename = "where")]
    pub where_: Option<WhereDef>,
}

/// A predicate on an event, as written. Every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WhereDef {
    /// The event must be the customer's n-th event of its type (1-based, in event time).
    #[serde(default)]
    pub nth: Option<Spanned<u32>>,
    /// Conditions on the event's attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrCondDef>,
}

/// Conditions on one attribute, as written. Every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AttrCondDef {
    /// Equal to.
    #[serde(default)]
    pub eq: Option<Scalar>,
    /// Not equal to (a missing attribute is not equal).
    #[serde(default)]
    pub ne: Option<Scalar>,
    /// One of these values.
    #[serde(default)]
    pub one_of: Option<Vec<Scalar>>,
    /// None of these values.
    #[serde(default)]
    pub not_one_of: Option<Vec<Scalar>>,
    /// Numerically greater than.
    #[serde(default)]
    pub gt: Option<f64>,
    /// Numerically greater than or equal to.
    #[serde(default)]
    pub gte: Option<f64>,
    /// Numerically less than.
    #[serde(default)]
    pub lt: Option<f64>,
    /// Numerically less than or equal to.
    #[serde(default)]
    pub lte: Option<f64>,
    /// Present (`true`) or absent (`false`).
    #[serde(default)]
    pub exists: Option<bool>,
    /// `true`: the value appeared on one of the customer's earlier events of the same type.
    #[serde(default)]
    pub among_earlier: Option<bool>,
    /// `true`: the customer has earlier events of the same type and none of them had this
    /// value (so never the first such event): "an order from an additional product line".
    #[serde(default)]
    pub not_among_earlier: Option<bool>,
}

impl AttrCondDef {
    /// The value comparisons written (`eq` … `exists`), in that order; the history conditions
    /// (`among-earlier`, `not-among-earlier`) are not among them.
    fn comparisons(&self) -> Vec<Cond> {
        condition::comparisons(
            &self.eq,
            &self.ne,
            &self.one_of,
            &self.not_one_of,
            self.gt,
            self.gte,
            self.lt,
            self.lte,
            self.exists,
        )
    }
}

/// A rule, as written: "after step A (or when a condition first holds), unless step B, if
/// these conditions hold, do X at offset d".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleDef {
    /// Rule id, unique in the journey (part of command ids).
    pub id: Spanned<String>,
    /// The step whose completion starts the clock (or give `when`).
    #[serde(default)]
    pub after: Option<Spanned<String>>,
    /// A threshold or score condition whose first holding in the instance starts the clock
    /// (instead of `after`).
    #[serde(default)]
    pub when: Option<ConditionDef>,
    /// Steps whose completion before an action's due time cancels it (the goal and exits
    /// always do).
    #[serde(default)]
    pub unless: Vec<Spanned<String>>,
    /// Conditions that must all hold on the events before an action's due time, or the action
    /// is skipped.
    #[serde(default, rename = "if")]
    pub if_: Vec<ConditionDef>,
    /// Which customers the rule targets: profile attribute → comparisons, as of the due time.
    #[serde(default)]
    pub segment: BTreeMap<String, AttrCondDef>,
    /// Next-best-action: the actions are alternatives, and the highest-scoring eligible one is
    /// taken.
    #[serde(default)]
    pub choose: Option<ChooseDef>,
    /// What to do, and when.
    pub actions: Vec<ActionDef>,
}

/// One action of a rule, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ActionDef {
    /// Action id, unique in the rule (part of command ids).
    pub id: Spanned<String>,
    /// Offset from the `after` step's completion (`1h`, `2d`); `0s` means at once.
    pub delay: DurationMs,
    /// Delivery channel: `email`, `sms` or `contact-center`.
    pub channel: Channel,
    /// Template the sink renders.
    #[serde(default)]
    pub template: Option<String>,
    /// Parameters for the sink; `{{attr}}` is replaced by the customer's profile attribute.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
    /// An A/B test of this action: variants and a holdout, assigned per customer.
    #[serde(default)]
    pub experiment: Option<ExperimentDef>,
}

/// An A/B experiment on one action, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExperimentDef {
    /// Experiment id, unique in the journey (`waymark analytics experiment <id>`); part of the
    /// assignment hash, so renaming it reassigns every customer.
    pub id: Spanned<String>,
    /// Weight of the holdout: customers who get nothing (a `command_suppressed` with reason
    /// `holdout of experiment <id>`). Default 0.
    #[serde(default)]
    pub holdout: u32,
    /// The variants; each customer gets one, with probability weight / total weight.
    pub variants: Vec<VariantDef>,
    /// How long after the exposure a conversion still counts for the experiment's report
    /// (e.g. `7d`); any time later when absent.
    #[serde(default)]
    pub conversion_window: Option<DurationMs>,
}

/// One variant of an experiment, as written: what differs from the action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VariantDef {
    /// Variant id (on the command as `variant`, and on its journey events).
    pub id: Spanned<String>,
    /// Relative weight (0 pauses the variant).
    pub weight: u32,
    /// Template instead of the action's.
    #[serde(default)]
    pub template: Option<String>,
    /// Channel instead of the action's.
    #[serde(default)]
    pub channel: Option<Channel>,
    /// Delay instead of the action's.
    #[serde(default)]
    pub delay: Option<DurationMs>,
}

/// A compiled condition on one attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Equal to.
    Eq(String),
    /// Not equal to.
    Ne(String),
    /// One of.
    OneOf(Vec<String>),
    /// None of.
    NotOneOf(Vec<String>),
    /// Numerically greater than.
    Gt(f64),
    /// Numerically greater than or equal.
    Gte(f64),
    /// Numerically less than.
    Lt(f64),
    /// Numerically less than or equal.
    Lte(f64),
    /// Present or absent.
    Exists(bool),
    /// Value seen on an earlier event of the same type.
    AmongEarlier,
    /// Earlier events of the same type exist and none had this value.
    NotAmongEarlier,
}

/// A compiled event matcher: type plus predicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// Event type.
    pub event_type: String,
    /// Required position among the customer's events of this type (1-based).
    pub nth: Option<u32>,
    /// Attribute conditions, all of which must hold.
    pub conds: Vec<(String, Cond)>,
}

impl Matcher {
    /// Whether the matcher needs the customer's earlier events of its type.
    pub fn uses_history(&self) -> bool {
        self.nth.is_some()
            || self
                .conds
                .iter()
                .any(|(_, c)| matches!(c, Cond::AmongEarlier | Cond::NotAmongEarlier))
    }
}

/// A compiled step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Step id.
    pub id: String,
    /// What completes it.
    pub matcher: Matcher,
    /// Abandonment window, if any (never for the entry step).
    pub abandon_after: Option<Millis>,
}

/// A compiled exit condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit id.
    pub id: String,
    /// What triggers it.
    pub matcher: Matcher,
}

/// A compiled action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Action id.
    pub id: String,
    /// Offset from the `after` step's completion, in ms.
    pub delay: Millis,
    /// Channel.
    pub channel: Channel,
    /// Template.
    pub template: Option<String>,
    /// Sink parameters (may hold `{{attr}}` placeholders).
    pub params: BTreeMap<String, String>,
    /// An A/B experiment on the action, if any.
    pub experiment: Option<Experiment>,
}

/// An A/B experiment on an action: each customer is assigned, sticky and deterministically
/// (a hash of experiment id and customer id), to one variant or to the holdout.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Experiment id.
    pub id: String,
    /// Weight of the holdout.
    pub holdout: u32,
    /// Variants, in definition order.
    pub variants: Vec<Variant>,
    /// How long after the exposure a conversion counts; `None`: any time later.
    pub conversion_window: Option<Millis>,
}

/// One variant: what differs from the action.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Variant id.
    pub id: String,
    /// Relative weight.
    pub weight: u32,
    /// Template override.
    pub template: Option<String>,
    /// Channel override.
    pub channel: Option<Channel>,
    /// Delay override, in ms.
    pub delay: Option<Millis>,
}

/// What an experiment assigns a customer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Variant `i` of [`Experiment::variants`].
    Variant(usize),
    /// The holdout: the action is not taken.
    Holdout,
}

/// The name of the holdout arm, as journey events and analytics carry it.
pub const HOLDOUT: &str = "holdout";

impl Experiment {
    /// The arm `customer_id` is in: the same for the same (experiment id, customer id, weights)
    /// on every machine and every run.
    pub fn assign(&self, customer_id: &str) -> Arm {
        let total = u64::from(self.holdout)
            + self
                .variants
                .iter()
                .map(|v| u64::from(v.weight))
                .sum::<u64>();
        let mut point = assignment_hash(&self.id, customer_id) % total.max(1);
        if point < u64::from(self.holdout) {
            return Arm::Holdout;
        }
        point -= u64::from(self.holdout);
        for (i, v) in self.variants.iter().enumerate() {
            if point < u64::from(v.weight) {
                return Arm::Variant(i);
            }
            point -= u64::from(v.weight);
        }
        Arm::Holdout
    }

    /// The arm's name: a variant id, or [`HOLDOUT`].
    pub fn arm_name(&self, arm: Arm) -> &str {
        match arm {
            Arm::Variant(i) => &self.variants[i].id,
            Arm::Holdout => HOLDOUT,
        }
    }
}

/// FNV-1a over `experiment \0 customer`, finished with splitmix64's mixer so that every bit
/// of the result depends on every input byte (plain FNV's low bits are weak for `% n`).
fn assignment_hash(experiment: &str, customer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in experiment.bytes().chain([0]).chain(customer.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What an action does for one customer once its experiment (if any) assigned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective<'a> {
    /// Channel of the command.
    pub channel: Channel,
    /// Template of the command.
    pub template: Option<&'a str>,
    /// Offset from the rule's `after` step.
    pub delay: Millis,
    /// The experiment and the arm's name, when the action is under one.
    pub experiment: Option<(&'a str, &'a str)>,
    /// The customer is in the holdout: nothing is sent.
    pub held_out: bool,
}

impl Action {
    /// The channel the action sends on for `customer_id`; `None` when they are held out (then
    /// nothing is sent, capped or counted).
    pub fn sends_on(&self, customer_id: &str) -> Option<Channel> {
        let e = self.effective(customer_id);
        (!e.held_out).then_some(e.channel)
    }

    /// The action as it applies to `customer_id`.
    pub fn effective(&self, customer_id: &str) -> Effective<'_> {
        let plain = Effective {
            channel: self.channel,
            template: self.template.as_deref(),
            delay: self.delay,
            experiment: None,
            held_out: false,
        };
        let Some(x) = &self.experiment else {
            return plain;
        };
        let arm = x.assign(customer_id);
        let experiment = Some((x.id.as_str(), x.arm_name(arm)));
        match arm {
            Arm::Holdout => Effective {
                experiment,
                held_out: true,
                ..plain
            },
            Arm::Variant(i) => {
                let v = &x.variants[i];
                Effective {
                    channel: v.channel.unwrap_or(self.channel),
                    template: v.template.as_deref().or(plain.template),
                    delay: v.delay.unwrap_or(self.delay),
                    experiment,
                    held_out: false,
                }
            }
        }
    }
}

/// What starts a rule's clock.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// The completion of this step (index).
    Step(usize),
    /// The first event of the instance after which this condition holds.
    When(Condition),
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// What starts the clock.
    pub after: Trigger,
    /// Indices of the `unless` steps.
    pub unless: Vec<usize>,
    /// `if` conditions, then the `segment`'s: all must hold before an action's due time.
    pub guards: Vec<Condition>,
    /// Next-best-action: the event type of the per-action scores; the actions are
    /// alternatives (one due time) and the highest-scoring eligible one is taken.
    pub choose: Option<String>,
    /// Actions in definition order.
    pub actions: Vec<Action>,
}

impl Rule {
    /// Every condition of the rule: the `when` trigger, then the guards.
    pub fn conditions(&self) -> impl Iterator<Item = &Condition> {
        let when = match &self.after {
            Trigger::When(c) => Some(c),
            Trigger::Step(_) => None,
        };
        when.into_iter().chain(&self.guards)
    }
}

/// A validated journey, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Journey {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Event time from which entries get this version (`None`: always, for the earliest).
    pub effective_from: Option<Millis>,
    /// Earlier versions whose instances in flight at `effective_from` move to this one.
    pub migrate_from: Vec<u32>,
    /// Description.
    pub description: String,
    /// Re-entry policy.
    pub re_entry: ReEntry,
    /// Profile attributes copied onto commands.
    pub profile: Vec<String>,
    /// Event types that only update the profile.
    pub profile_events: Vec<String>,
    /// Steps; `steps[0]` is the entry step.
    pub steps: Vec<Step>,
    /// Index of the goal step.
    pub goal: usize,
    /// Exit conditions.
    pub exits: Vec<Exit>,
    /// Inaction rules.
    pub rules: Vec<Rule>,
    /// The file it came from.
    pub source: PathBuf,
    /// A hash of the file's text: a live reload refuses a loaded version changed in place.
    pub digest: u64,
}

impl Journey {
    /// Index of the step with this id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Every event type the journey reacts to: its steps', exits', profile events',
    /// conditions' and next-best-action scores'.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .map(|s| s.matcher.event_type.as_str())
            .chain(self.exits.iter().map(|e| e.matcher.event_type.as_str()))
            .chain(self.profile_events.iter().map(String::as_str))
            .chain(self.rules.iter().flat_map(|r| {
                r.conditions()
                    .filter_map(|c| c.metric.event_type())
                    .chain(r.choose.as_deref())
            }))
    }
}

/// Every journey the processor runs, every loaded version of each, in a stable order (by
/// name, then version).
///
/// Versions of one journey share its instances: an instance runs on the version whose
/// `effective-from` was last reached when it entered (see [`JourneySet::version_at`]), and a
/// later version's `migrate-from` moves instances still in flight at its `effective-from`.
#[derive(Debug, Clone, Default)]
pub struct JourneySet {
    journeys: Vec<Arc<Journey>>,
}

impl JourneySet {
    /// Builds a set from compiled journeys without checking how versions fit together (tests
    /// and callers that built them; [`JourneySet::from_journeys`] checks).
    pub fn new(mut journeys: Vec<Journey>) -> Self {
        journeys.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        JourneySet {
            journeys: journeys.into_iter().map(Arc::new).collect(),
        }
    }

    /// Builds a set, checking that each (name, version) is defined once and that the versions
    /// of a journey take over from each other at increasing `effective-from` times.
    pub fn from_journeys(journeys: Vec<Journey>) -> Result<Self, JourneyError> {
        let set = JourneySet::new(journeys);
        for versions in set.by_name() {
            for pair in versions.windows(2) {
                let (earlier, later) = (&pair[0], &pair[1]);
                let versions_error = |message: String| JourneyError::Versions {
                    path: later.source.clone(),
                    name: later.name.clone(),
                    version: later.version,
                    message,
                };
                if earlier.version == later.version {
                    return Err(JourneyError::Duplicate {
                        name: later.name.clone(),
                        version: later.version,
                        first: earlier.source.clone(),
                        second: later.source.clone(),
                    });
                }
                let Some(from) = later.effective_from else {
                    return Err(versions_error(format!(
                        "version {} ({}) is loaded too, so this version needs `effective-from:` (customers entering from that event time on get version {}; instances in flight stay on their version unless `migrate-from` lists it)",
                        earlier.version,
                        earlier.source.display(),
                        later.version
                    )));
                };
                if earlier.effective_from.is_some_and(|e| e >= from) {
                    return Err(versions_error(format!(
                        "`effective-from` {} must be later than version {}'s ({})",
                        crate::model::format_millis(from),
                        earlier.version,
                        crate::model::format_millis(earlier.effective_from.unwrap_or(from))
                    )));
                }
            }
        }
        Ok(set)
    }

    /// The versions of each journey, by name, each slice sorted by version.
    pub fn by_name(&self) -> impl Iterator<Item = &[Arc<Journey>]> {
        self.journeys.chunk_by(|a, b| a.name == b.name)
    }

    /// Index in `versions` (one journey's, as from [`JourneySet::by_name`]) of the version a
    /// customer entering at `at` gets: the last whose `effective-from` is at or before `at`.
    /// `None` before the earliest version's `effective-from`.
    pub fn version_at(versions: &[Arc<Journey>], at: Millis) -> Option<usize> {
        versions
            .iter()
            .rposition(|j| j.effective_from.is_none_or(|from| from <= at))
    }

    /// Loads a file, or every `*.yaml`/`*.yml` file of a directory (sorted by file name).
    pub fn load(path: &Path) -> Result<Self, JourneyError> {
        let io = |source| JourneyError::Io {
            path: path.to_owned(),
            source,
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(JourneyError::Empty(path.to_owned()));
            }
            files
        } else {
            vec![path.to_owned()]
        };
        let mut journeys: Vec<Journey> = Vec::with_capacity(files.len());
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| JourneyError::Io {
                path: file.clone(),
                source,
            })?;
            journeys.push(parse_journey(&file, &text)?);
        }
        JourneySet::from_journeys(journeys)
    }

    /// Every version of every journey, sorted by name, then version.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Journey>> {
        self.journeys.iter()
    }

    /// The latest version of each journey, sorted by name.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Journey>> {
        self.by_name().filter_map(<[_]>::last)
    }

    /// Number of journeys.
    pub fn len(&self) -> usize {
        self.journeys.len()
    }

    /// True when there is no journey.
    pub fn is_empty(&self) -> bool {
        self.journeys.is_empty()
    }

    /// The latest version of the journey with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<Journey>> {
        self.journeys.iter().rfind(|j| j.name == name)
    }

    /// Every event type any journey reacts to.
    pub fn event_types(&self) -> BTreeSet<String> {
        self.journeys
            .iter()
            .flat_map(|j| j.event_types().map(str::to_owned))
            .collect()
    }
}

/// Journeys parsed from texts named `j0.yaml`, `j1.yaml`, … (tests).
#[cfg(test)]
pub(crate) fn parsed(texts: &[&str]) -> JourneySet {
    JourneySet::from_journeys(
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| parse_journey(Path::new(&format!("j{i}.yaml")), t).unwrap())
            .collect(),
    )
    .unwrap()
}

/// Parses and validates one journey file's text.
pub fn parse_journey(path: &Path, text: &str) -> Result<Journey, JourneyError> {
    let def: JourneyDef = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column, message) = yaml_error_parts(&e);
        JourneyError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    })?;
    let mut journey = compile(path, def)?;
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(text, &mut hasher);
    journey.digest = std::hash::Hasher::finish(&hasher);
    Ok(journey)
}

/// A YAML parse error as (1-based line, column, message); 0 where the position is unknown.
/// serde-saphyr renders a snippet after the message: only the message's first line is kept.
pub(crate) fn yaml_error_parts(e: &serde_saphyr::Error) -> (u64, u64, String) {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let text = e.to_string();
    let message = text.lines().next().unwrap_or_default().trim().to_owned();
    (line, column, message)
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        at: &Spanned<T>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> JourneyError {
        JourneyError::Invalid {
            path: self.path.to_owned(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            field: field.into(),
            message: msg.into(),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn compile(path: &Path, def: JourneyDef) -> Result<Journey, JourneyError> {
    let v = Validator { path };
    if !is_identifier(&def.journey.value) {
        return Err(v.err(
            &def.journey,
            "journey",
            "journey name must be non-empty and use only letters, digits, `_`, `-`, `.`",
        ));
    }
    if def.steps.is_empty() {
        return Err(v.err(
            &def.journey,
            "steps",
            "a journey needs at least one step (the entry step)",
        ));
    }
    let profile: Vec<String> = def.profile.iter().map(|p| p.value.clone()).collect();
    let mut steps = Vec::with_capacity(def.steps.len());
    for (i, s) in def.steps.iter().enumerate() {
        let field = format!("steps[{i}]");
        if !is_identifier(&s.id.value) {
            return Err(v.err(
                &s.id,
                format!("{field}.id"),
                "step id must be non-empty and use only letters, digits, `_`, `-`, `.`",
            ));
        }
        if steps.iter().any(|p: &Step| p.id == s.id.value) {
            return Err(v.err(
                &s.id,
                format!("{field}.id"),
                format!(
                    "step id `{}` is used twice; step ids must be unique",
                    s.id.value
                ),
            ));
        }
        let matcher = compile_matcher(&v, &s.id, &field, &s.event, s.where_.as_ref())?;
        let abandon_after = if i == 0 {
            if s.abandon_after.is_some() {
                return Err(v.err(&s.id, format!("{field}.abandon-after"), "the entry step cannot be abandoned: remove `abandon-after` from the first step"));
            }
            None
        } else {
            s.abandon_after.or(def.abandon_after).map(|d| d.0)
        };
        if let Some(w) = abandon_after
            && w <= 0
        {
            return Err(v.err(
                &s.id,
                format!("{field}.abandon-after"),
                "abandonment window must be longer than zero",
            ));
        }
        steps.push(Step {
            id: s.id.value.clone(),
            matcher,
            abandon_after,
        });
    }
    let step_ids = || {
        steps
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |sp: &Spanned<String>, field: String| {
        steps.iter().position(|s| s.id == sp.value).ok_or_else(|| {
            v.err(
                sp,
                field,
                format!("unknown step `{}`; steps are: {}", sp.value, step_ids()),
            )
        })
    };
    let goal = find(&def.goal, "goal".into())?;
    if goal == 0 && steps.len() > 1 {
        return Err(v.err(
            &def.goal,
            "goal",
            "the goal cannot be the entry step when the journey has more steps",
        ));
    }
    let mut exits = Vec::new();
    for (i, e) in def.exit.iter().enumerate() {
        let at = Spanned::new(e.id.clone(), def.journey.referenced, def.journey.defined);
        exits.push(Exit {
            id: e.id.clone(),
            matcher: compile_matcher(&v, &at, &format!("exit[{i}]"), &e.event, e.where_.as_ref())?,
        });
    }
    let mut rules = Vec::new();
    let mut experiment_ids: Vec<String> = Vec::new();
    for (r, rd) in def.rules.iter().enumerate() {
        let field = format!("rules[{r}]");
        if !is_identifier(&rd.id.value) {
            return Err(v.err(
                &rd.id,
                format!("{field}.id"),
                "rule id must be non-empty and use only letters, digits, `_`, `-`, `.`",
            ));
        }
        if rules.iter().any(|p: &Rule| p.id == rd.id.value) {
            return Err(v.err(
                &rd.id,
                format!("{field}.id"),
                format!("rule id `{}` is used twice", rd.id.value),
            ));
        }
        let after = match (&rd.after, &rd.when) {
            (Some(step), None) => Trigger::Step(find(step, format!("{field}.after"))?),
            (None, Some(when)) => Trigger::When(compile_condition(
                &v,
                &rd.id,
                &format!("{field}.when"),
                when,
                Role::Trigger,
            )?),
            _ => {
                return Err(v.err(
                    &rd.id,
                    field,
                    "a rule starts `after:` a step or `when:` a condition first holds; give exactly one of them",
                ));
            }
        };
        let mut guards = Vec::new();
        for (g, gd) in rd.if_.iter().enumerate() {
            guards.push(compile_condition(
                &v,
                &rd.id,
                &format!("{field}.if[{g}]"),
                gd,
                Role::Guard,
            )?);
        }
        guards.extend(compile_segment(
            &v,
            &rd.id,
            &format!("{field}.segment"),
            &rd.segment,
        )?);
        let mut unless = Vec::new();
        for (u, us) in rd.unless.iter().enumerate() {
            let idx = find(us, format!("{field}.unless[{u}]"))?;
            if after == Trigger::Step(idx) {
                return Err(v.err(
                    us,
                    format!("{field}.unless[{u}]"),
                    "a rule cannot be cancelled by its own `after` step",
                ));
            }
            unless.push(idx);
        }
        if rd.actions.is_empty() {
            return Err(v.err(
                &rd.id,
                format!("{field}.actions"),
                "a rule needs at least one action",
            ));
        }
        let mut actions: Vec<Action> = Vec::new();
        for (a, ad) in rd.actions.iter().enumerate() {
            let af = format!("{field}.actions[{a}]");
            if !is_identifier(&ad.id.value) {
                return Err(v.err(
                    &ad.id,
                    format!("{af}.id"),
                    "action id must be non-empty and use only letters, digits, `_`, `-`, `.`",
                ));
            }
            if actions.iter().any(|p| p.id == ad.id.value) {
                return Err(v.err(
                    &ad.id,
                    format!("{af}.id"),
                    format!("action id `{}` is used twice in this rule", ad.id.value),
                ));
            }
            if ad.delay.0 < 0 {
                return Err(v.err(&ad.id, format!("{af}.delay"), "delay cannot be negative"));
            }
            let mut params = BTreeMap::new();
            for (k, val) in &ad.params {
                for name in placeholders(&val.value) {
                    if !profile.iter().any(|p| p == name) {
                        return Err(v.err(val, format!("{af}.params.{k}"), format!("placeholder `{{{{{name}}}}}` names no profile attribute; add `{name}` to the journey's `profile` list")));
                    }
                }
                params.insert(k.clone(), val.value.clone());
            }
            let experiment = match &ad.experiment {
                None => None,
                Some(x) => Some(compile_experiment(&v, &af, x, &experiment_ids)?),
            };
            if let Some(x) = &experiment {
                experiment_ids.push(x.id.clone());
            }
            actions.push(Action {
                id: ad.id.value.clone(),
                delay: ad.delay.0,
                channel: ad.channel,
                template: ad.template.clone(),
                params,
                experiment,
            });
        }
        let choose = match &rd.choose {
            None => None,
            Some(c) => Some(compile_choice(&v, &field, c, &actions)?),
        };
        rules.push(Rule {
            id: rd.id.value.clone(),
            after,
            unless,
            guards,
            choose,
            actions,
        });
    }
    let effective_from = match &def.effective_from {
        None => None,
        Some(at) => Some(crate::model::parse_millis(at.value.trim()).map_err(|e| {
            v.err(
                at,
                "effective-from",
                format!(
                    "`{}` is not an RFC 3339 time ({e}); write e.g. 2026-12-01T00:00:00Z",
                    at.value
                ),
            )
        })?),
    };
    if let Some(from) = def.migrate_from.iter().find(|m| **m >= def.version) {
        return Err(v.err(
            &def.journey,
            "migrate-from",
            format!(
                "version {} cannot migrate instances of version {from}: list earlier versions only",
                def.version
            ),
        ));
    }
    if !def.migrate_from.is_empty() && effective_from.is_none() {
        return Err(v.err(
            &def.journey,
            "migrate-from",
            "`migrate-from` needs `effective-from`: the event time at which the instances in flight move to this version",
        ));
    }
    Ok(Journey {
        name: def.journey.value,
        version: def.version,
        effective_from,
        migrate_from: def.migrate_from,
        description: def.description,
        re_entry: def.re_entry,
        profile,
        profile_events: def.profile_events,
        steps,
        goal,
        exits,
        rules,
        source: path.to_owned(),
        digest: 0,
    })
}

/// Checks a next-best-action rule: its actions are alternatives decided at one time.
fn compile_choice(
    v: &Validator<'_>,
    rule_field: &str,
    c: &ChooseDef,
    actions: &[Action],
) -> Result<String, JourneyError> {
    let f = format!("{rule_field}.choose.by-score");
    if c.by_score.value.trim().is_empty() {
        return Err(v.err(
            &c.by_score,
            f,
            "name the event type of the model's per-action scores",
        ));
    }
    if actions.len() < 2 {
        return Err(v.err(
            &c.by_score,
            f,
            "next-best-action chooses among two or more actions; add the alternatives to `actions`",
        ));
    }
    if actions.iter().any(|a| a.delay != actions[0].delay) {
        return Err(v.err(
            &c.by_score,
            f,
            "the actions of a next-best-action rule are alternatives decided at one time: give them all the same `delay`",
        ));
    }
    if actions.iter().any(|a| a.experiment.is_some()) {
        return Err(v.err(
            &c.by_score,
            f,
            "a next-best-action rule cannot hold an experiment: the model's score, not a hash, picks the action",
        ));
    }
    Ok(c.by_score.value.clone())
}

fn compile_experiment(
    v: &Validator<'_>,
    action_field: &str,
    x: &ExperimentDef,
    taken: &[String],
) -> Result<Experiment, JourneyError> {
    let f = format!("{action_field}.experiment");
    if !is_identifier(&x.id.value) {
        return Err(v.err(
            &x.id,
            format!("{f}.id"),
            "experiment id must be non-empty and use only letters, digits, `_`, `-`, `.`",
        ));
    }
    if taken.contains(&x.id.value) {
        return Err(v.err(
            &x.id,
            format!("{f}.id"),
            format!(
                "experiment id `{}` is used by another action; each action's experiment needs an id of its own",
                x.id.value
            ),
        ));
    }
    if x.variants.is_empty() {
        return Err(v.err(
            &x.id,
            format!("{f}.variants"),
            "an experiment needs at least one variant (the action as written: `- {id: control, weight: 50}`)",
        ));
    }
    let mut variants: Vec<Variant> = Vec::new();
    for (i, vd) in x.variants.iter().enumerate() {
        let vf = format!("{f}.variants[{i}]");
        if !is_identifier(&vd.id.value) || vd.id.value == HOLDOUT {
            return Err(v.err(
                &vd.id,
                format!("{vf}.id"),
                "variant id must use only letters, digits, `_`, `-`, `.` and not be `holdout` (the holdout is the experiment's `holdout` weight)",
            ));
        }
        if variants.iter().any(|p| p.id == vd.id.value) {
            return Err(v.err(
                &vd.id,
                format!("{vf}.id"),
                format!("variant id `{}` is used twice", vd.id.value),
            ));
        }
        if vd.delay.as_ref().is_some_and(|d| d.0 < 0) {
            return Err(v.err(&vd.id, format!("{vf}.delay"), "delay cannot be negative"));
        }
        variants.push(Variant {
            id: vd.id.value.clone(),
            weight: vd.weight,
            template: vd.template.clone(),
            channel: vd.channel,
            delay: vd.delay.as_ref().map(|d| d.0),
        });
    }
    if variants.iter().all(|v| v.weight == 0) {
        return Err(v.err(
            &x.id,
            format!("{f}.variants"),
            "every variant has weight 0: give at least one variant a positive weight",
        ));
    }
    if x.conversion_window.is_some_and(|w| w.0 <= 0) {
        return Err(v.err(
            &x.id,
            format!("{f}.conversion-window"),
            "a conversion window must be longer than zero (or leave it out: any time later)",
        ));
    }
    Ok(Experiment {
        id: x.id.value.clone(),
        holdout: x.holdout,
        variants,
        conversion_window: x.conversion_window.map(|w| w.0),
    })
}

fn compile_matcher(
    v: &Validator<'_>,
    at: &Spanned<String>,
    field: &str,
    event: &str,
    where_: Option<&WhereDef>,
) -> Result<Matcher, JourneyError> {
    if event.trim().is_empty() {
        return Err(v.err(at, format!("{field}.event"), "event type must not be empty"));
    }
    let mut m = Matcher {
        event_type: event.to_owned(),
        nth: None,
        conds: Vec::new(),
    };
    let Some(w) = where_ else { return Ok(m) };
    if let Some(n) = &w.nth {
        if n.value == 0 {
            return Err(v.err(
                n,
                format!("{field}.where.nth"),
                "nth counts from 1 (the first event of the type)",
            ));
        }
        m.nth = Some(n.value);
    }
    for (attr, c) in &w.attributes {
        let before = m.conds.len();
        let mut push = |cond| m.conds.push((attr.clone(), cond));
        c.comparisons().into_iter().for_each(&mut push);
        match c.among_earlier {
            Some(true) => push(Cond::AmongEarlier),
            Some(false) => push(Cond::NotAmongEarlier),
            None => {}
        }
        match c.not_among_earlier {
            Some(true) => push(Cond::NotAmongEarlier),
            Some(false) => push(Cond::AmongEarlier),
            None => {}
        }
        if m.conds.len() == before {
            return Err(v.err(at, format!("{field}.where.attributes.{attr}"), "no condition given; use one of eq, ne, one-of, not-one-of, gt, gte, lt, lte, exists, among-earlier, not-among-earlier"));
        }
    }
    Ok(m)
}

/// The `name`s of every `{{name}}` in `s`.
pub fn placeholders(s: &str) -> impl Iterator<Item = &str> {
    s.split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(n, _)| n.trim()))
}

/// Replaces every `{{name}}` in `s` with `lookup(name)` (empty when absent).
pub fn fill_placeholders<'a>(s: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> CompactString {
    if !s.contains("{{") {
        return s.into();
    }
    let mut out = CompactString::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                out.push_str(lookup(after[..end].trim()).unwrap_or(""));
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "journey: j\nversion: 1\nsteps:\n  - id: a\n    event: a.done\n  - id: b\n    event: b.done\ngoal: b\n";

    fn parse(text: &str) -> Result<Journey, JourneyError> {
        parse_journey(Path::new("j.yaml"), text)
    }

    #[test]
    fn reference_journey_compiles_to_the_seed_definition() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
        let set = JourneySet::load(&path).unwrap();
        let j = set.get("b2b-onboarding").unwrap();
        let ids: Vec<_> = j.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "login",
                "payment_account",
                "financials",
                "references",
                "first_order",
                "second_order",
                "additional_product_line"
            ]
        );
        assert_eq!(j.goal, 6);
        assert!(
            j.steps[1..]
                .iter()
                .all(|s| s.abandon_after == Some(7 * 86_400_000))
        );
        assert_eq!(j.steps[0].abandon_after, None);
        assert_eq!(j.rules.len(), 1);
        let rule = &j.rules[0];
        assert_eq!(
            (&rule.after, rule.unless.as_slice()),
            (&Trigger::Step(0), &[1][..])
        );
        let plan: Vec<_> = rule.actions.iter().map(|a| (a.delay, a.channel)).collect();
        assert_eq!(
            plan,
            [
                (3_600_000, Channel::Email),
                (2 * 86_400_000, Channel::ContactCenter),
                (4 * 86_400_000, Channel::ContactCenter)
            ]
        );
        assert_eq!(rule.actions[2].params["assignee"], "{{sales_rep}}");
        assert_eq!(j.steps[5].matcher.nth, Some(2));
        assert_eq!(
            j.steps[6].matcher.conds,
            vec![("product_line".to_owned(), Cond::NotAmongEarlier)]
        );
    }

    /// `MINIMAL` with one rule whose body (after `- id: r`) is `body`.
    fn with_rule(body: &str) -> Result<Journey, JourneyError> {
        parse(&format!("{MINIMAL}rules:\n  - id: r\n{body}"))
    }

    const ACTION: &str = "    actions:\n      - { id: x, delay: 1h, channel: email }\n";

    #[test]
    fn threshold_score_segment_and_choice_rules_compile() {
        let j = with_rule(&format!(
            "    when: {{ sum: {{ event: invoice.paid, attribute: amount, within: 30d }}, gte: 100 }}\n    if:\n      - {{ count: {{ event: login.ok, within: 14d, where: {{ attributes: {{ app: {{ eq: web }} }} }} }}, lt: 2 }}\n      - {{ score: churn.score, gte: 0.5 }}\n    segment:\n      tier: {{ one-of: [gold, platinum] }}\n{ACTION}"
        ))
        .unwrap();
        let r = &j.rules[0];
        let Trigger::When(when) = &r.after else {
            panic!("{:?}", r.after)
        };
        assert_eq!(
            when.to_string(),
            "sum of invoice.paid.amount within 30d >= 100"
        );
        let guards: Vec<String> = r.guards.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            guards,
            [
                "count of login.ok within 14d < 2",
                "score churn.score >= 0.5",
                "profile tier one of gold, platinum"
            ]
        );
        let types: BTreeSet<&str> = j.event_types().collect();
        for t in ["invoice.paid", "login.ok", "churn.score"] {
            assert!(types.contains(t), "{t} in {types:?}");
        }
        let nba = with_rule(
            "    after: a\n    choose: { by-score: nba.score }\n    actions:\n      - { id: x, delay: 1h, channel: email }\n      - { id: y, delay: 1h, channel: sms }\n",
        )
        .unwrap();
        assert_eq!(nba.rules[0].choose.as_deref(), Some("nba.score"));
        assert!(nba.event_types().any(|t| t == "nba.score"));
    }

    #[test]
    fn bad_rule_conditions_say_what_to_write_instead() {
        let cases = [
            (format!("    after: a\n    when: {{ score: s, gt: 1 }}\n{ACTION}"), "give exactly one of them"),
            (ACTION.to_owned(), "give exactly one of them"),
            (format!("    when: {{ profile: tier, eq: gold }}\n{ACTION}"), "cannot start a rule"),
            (format!("    after: a\n    if:\n      - {{ event: x.y }}\n{ACTION}"), "count the events instead"),
            (format!("    when: {{ score: s }}\n{ACTION}"), "needs a comparison"),
            (format!("    when: {{ sum: {{ event: i }}, gt: 1 }}\n{ACTION}"), "numeric `attribute`"),
            (format!("    when: {{ count: {{ event: i, within: 0s }}, gt: 1 }}\n{ACTION}"), "longer than zero"),
            (format!("    when: {{ score: s, count: {{ event: i }}, gt: 1 }}\n{ACTION}"), "exactly one of `count`"),
            (format!("    after: a\n    segment: {{ tier: {{ among-earlier: true }} }}\n{ACTION}"), "events only"),
            (
                "    after: a\n    choose: { by-score: s }\n    actions:\n      - { id: x, delay: 1h, channel: email }\n      - { id: y, delay: 2h, channel: sms }\n".to_owned(),
                "the same `delay`",
            ),
            (format!("    after: a\n    choose: {{ by-score: s }}\n{ACTION}"), "two or more actions"),
        ];
        for (body, want) in cases {
            let msg = with_rule(&body).unwrap_err().to_string();
            assert!(msg.contains(want), "{body}\n=> {msg}");
            assert!(msg.starts_with("j.yaml:"), "{msg}");
        }
    }

    #[test]
    fn unknown_keys_are_reported_with_line_and_name() {
        let err = parse(&MINIMAL.replace("version: 1\n", "version: 1\ncolour: red\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("j.yaml:3:"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn unknown_step_reference_names_file_line_and_field() {
        let text = format!(
            "{MINIMAL}rules:\n  - id: r\n    after: a\n    unless: [c]\n    actions:\n      - id: x\n        delay: 1h\n        channel: email\n"
        );
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.starts_with("j.yaml:12:"), "{msg}");
        assert!(msg.contains("rules[0].unless[0]"), "{msg}");
        assert!(msg.contains("unknown step `c`; steps are: a, b"), "{msg}");
    }

    #[test]
    fn bad_duration_and_channel_are_explained() {
        let base = format!(
            "{MINIMAL}rules:\n  - id: r\n    after: a\n    actions:\n      - id: x\n        delay: DELAY\n        channel: CHANNEL\n"
        );
        let msg = parse(&base.replace("DELAY", "soon").replace("CHANNEL", "email"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a duration"), "{msg}");
        assert!(msg.starts_with("j.yaml:14:"), "{msg}");
        let msg = parse(&base.replace("DELAY", "1h").replace("CHANNEL", "fax"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("fax"), "{msg}");
    }

    #[test]
    fn placeholders_must_name_profile_attributes() {
        let text = format!(
            "{MINIMAL}rules:\n  - id: r\n    after: a\n    actions:\n      - id: x\n        delay: 1h\n        channel: sms\n        params: {{ to: \"{{{{phone}}}}\" }}\n"
        );
        let msg = parse(&text).unwrap_err().to_string();
        assert!(
            msg.contains("add `phone` to the journey's `profile` list"),
            "{msg}"
        );
        let ok = text.replace("version: 1\n", "version: 1\nprofile: [phone]\n");
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn entry_step_cannot_be_abandoned_and_nth_counts_from_one() {
        let msg =
            parse(&MINIMAL.replace("event: a.done\n", "event: a.done\n    abandon-after: 1d\n"))
                .unwrap_err()
                .to_string();
        assert!(msg.contains("steps[0].abandon-after"), "{msg}");
        let msg =
            parse(&MINIMAL.replace("event: b.done\n", "event: b.done\n    where: { nth: 0 }\n"))
                .unwrap_err()
                .to_string();
        assert!(msg.contains("steps[1].where.nth"), "{msg}");
    }

    #[test]
    fn placeholders_are_filled_from_the_profile() {
        let filled = fill_placeholders("call {{ sales_rep }} for {{name}}!", |k| {
            (k == "sales_rep").then_some("rep-7")
        });
        assert_eq!(filled, "call rep-7 for !");
        assert_eq!(
            placeholders("{{a}} and {{b}}").collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_directory_with_two_journeys_of_one_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), MINIMAL).unwrap();
        std::fs::write(dir.path().join("b.yml"), MINIMAL).unwrap();
        let msg = JourneySet::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("defined twice"), "{msg}");
    }

    fn ab_journey() -> Journey {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/b2b-onboarding-ab.yaml");
        JourneySet::load(&path)
            .unwrap()
            .get("b2b-onboarding-ab")
            .unwrap()
            .as_ref()
            .clone()
    }

    fn experiment_of(j: &Journey) -> Experiment {
        j.rules[0].actions[0].experiment.clone().unwrap()
    }

    #[test]
    fn the_ab_example_compiles_its_experiment() {
        let j = ab_journey();
        let x = experiment_of(&j);
        assert_eq!((x.id.as_str(), x.holdout), ("payment-invite", 10));
        let v: Vec<_> = x
            .variants
            .iter()
            .map(|v| (v.id.as_str(), v.weight))
            .collect();
        assert_eq!(v, [("email-1h", 30), ("email-15m", 30), ("sms-1h", 30)]);
        assert_eq!(x.variants[1].delay, Some(15 * 60_000));
        assert_eq!(x.variants[2].channel, Some(Channel::Sms));
        assert!(j.rules[0].actions[1].experiment.is_none());
    }

    /// 100k customer ids land in the arms in proportion to the weights: a chi-square test
    /// with 3 degrees of freedom stays below 16.27 (p = 0.001).
    #[test]
    fn assignment_is_balanced_by_weight_sticky_and_independent_across_experiments() {
        let x = experiment_of(&ab_journey());
        let n = 100_000u32;
        let mut counts = [0u64; 4];
        let arm_index = |a: Arm| match a {
            Arm::Holdout => 0,
            Arm::Variant(i) => i + 1,
        };
        let mut other = x.clone();
        other.id = "another-experiment".into();
        let mut same_arm = 0u64;
        for i in 0..n {
            let id = format!("c{i:07}");
            let arm = x.assign(&id);
            assert_eq!(arm, x.assign(&id), "sticky");
            counts[arm_index(arm)] += 1;
            same_arm += u64::from(arm_index(arm) == arm_index(other.assign(&id)));
        }
        let expected = [0.1, 0.3, 0.3, 0.3].map(|p| p * f64::from(n));
        let chi2: f64 = counts
            .iter()
            .zip(expected)
            .map(|(o, e)| (*o as f64 - e).powi(2) / e)
            .sum();
        assert!(chi2 < 16.27, "chi-square {chi2:.2} for {counts:?}");
        // Independent experiments agree as often as chance says: 0.1² + 3 · 0.3² = 0.28.
        let agree = same_arm as f64 / f64::from(n);
        assert!((agree - 0.28).abs() < 0.01, "{agree}");
    }

    #[test]
    fn a_held_out_customer_sends_nothing_and_a_variant_overrides_the_action() {
        let j = ab_journey();
        let action = &j.rules[0].actions[0];
        let x = experiment_of(&j);
        let find = |arm: Arm| {
            (0..)
                .map(|i| format!("c{i}"))
                .find(|c| x.assign(c) == arm)
                .unwrap()
        };
        let held = action.effective(&find(Arm::Holdout));
        assert!(held.held_out);
        assert_eq!(held.experiment, Some(("payment-invite", HOLDOUT)));
        assert_eq!(action.sends_on(&find(Arm::Holdout)), None);
        let sms = action.effective(&find(Arm::Variant(2)));
        assert_eq!(
            (sms.channel, sms.template, sms.delay, sms.held_out),
            (
                Channel::Sms,
                Some("payment-account-reminder"),
                3_600_000,
                false
            )
        );
        let soon = action.effective(&find(Arm::Variant(1)));
        assert_eq!((soon.channel, soon.delay), (Channel::Email, 15 * 60_000));
        assert_eq!(soon.template, Some("payment-account-invite"));
    }

    #[test]
    fn experiments_are_validated_with_the_field_named() {
        let base = format!(
            "{MINIMAL}rules:\n  - id: r\n    after: a\n    actions:\n      - id: x\n        delay: 1h\n        channel: email\n        experiment:\n"
        );
        for (body, wants) in [
            (
                "          id: e\n          variants: []\n",
                "rules[0].actions[0].experiment.variants",
            ),
            (
                "          id: e\n          variants:\n            - {id: holdout, weight: 1}\n",
                "must use only letters",
            ),
            (
                "          id: e\n          variants:\n            - {id: a, weight: 1}\n            - {id: a, weight: 2}\n",
                "used twice",
            ),
            (
                "          id: e\n          holdout: 5\n          variants:\n            - {id: a, weight: 0}\n",
                "every variant has weight 0",
            ),
            (
                "          id: e\n          variants:\n            - {id: a, weight: 1, colour: red}\n",
                "colour",
            ),
        ] {
            let e = parse(&format!("{base}{body}")).unwrap_err().to_string();
            assert!(e.contains(wants), "{body}: {e}");
            assert!(e.starts_with("j.yaml:"), "{e}");
        }
    }
}
