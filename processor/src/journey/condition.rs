//! Threshold, score and segment conditions of rules, and next-best-action choices: their YAML
//! and their compiled form. The engine evaluates them (`engine::conditions`).
//!
//! A condition compares one *metric* of the customer with thresholds:
//!
//! | metric | value |
//! |---|---|
//! | `count: {event, where, within}` | how many events of the type (matching `where`) in the window |
//! | `sum: {event, attribute, where, within}` | the sum of a numeric attribute over those events |
//! | `score: <event type>` | the latest `score` attribute of events of that type (a model's output) |
//! | `profile: <attribute>` | a profile attribute of the customer |
//! | `event: <type>` + `where` | (`when` only) an event of the type matching `where` happened |
//!
//! As a rule's `when`, a condition starts the rule's clock at the first event of the instance
//! after which it holds. As one of a rule's `if` conditions (or its `segment`), it must hold on
//! the events before an action's due time, or the action is skipped.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    AttrCondDef, Cond, DurationMs, JourneyError, Matcher, Scalar, Validator, WhereDef,
    compile_matcher, short_duration,
};
use crate::model::Millis;

/// The attribute of a score event that holds the score (a number).
pub const SCORE_ATTRIBUTE: &str = "score";

/// The attribute of a next-best-action score event that names the action it scores.
pub const SCORED_ACTION_ATTRIBUTE: &str = "action";

/// A condition, as written: one metric and the comparisons it must pass.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConditionDef {
    /// The number of events of a type in a window.
    #[serde(default)]
    pub count: Option<WindowDef>,
    /// The sum of a numeric attribute of events of a type in a window.
    #[serde(default)]
    pub sum: Option<WindowDef>,
    /// The latest score published as events of this type (attribute `score`).
    #[serde(default)]
    pub score: Option<Spanned<String>>,
    /// A profile attribute of the customer.
    #[serde(default)]
    pub profile: Option<Spanned<String>>,
    /// (`when` only) An event of this type, matching `where`.
    #[serde(default)]
    pub event: Option<Spanned<String>>,
    /// The predicate of `event`.
    #[serde(default, rename = "where")]
    pub where_: Option<WhereDef>,
    /// Equal to (numerically when both sides are numbers).
    #[serde(default)]
    pub eq: Option<Scalar>,
    /// Not equal to.
    #[serde(default)]
    pub ne: Option<Scalar>,
    /// One of these values.
    #[serde(default)]
    pub one_of: Option<Vec<Scalar>>,
    /// None of these values.
    #[serde(default)]
    pub not_one_of: Option<Vec<Scalar>>,
    /// Greater than.
    #[serde(default)]
    pub gt: Option<f64>,
    /// Greater than or equal to.
    #[serde(default)]
    pub gte: Option<f64>,
    /// Less than.
    #[serde(default)]
    pub lt: Option<f64>,
    /// Less than or equal to.
    #[serde(default)]
    pub lte: Option<f64>,
    /// Known (`true`) or unknown (`false`): a score never published, a profile attribute never
    /// set.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// The events a `count` or `sum` looks at, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WindowDef {
    /// Event type.
    pub event: Spanned<String>,
    /// (`sum` only) The numeric attribute summed; events without a number there add nothing.
    #[serde(default)]
    pub attribute: Option<String>,
    /// Only events matching this predicate.
    #[serde(default, rename = "where")]
    pub where_: Option<WhereDef>,
    /// Only events this long before the time of evaluation; the whole history kept when absent.
    #[serde(default)]
    pub within: Option<DurationMs>,
}

/// A next-best-action choice, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChooseDef {
    /// The event type a model publishes its per-action scores as: attribute `action` names
    /// one of the rule's actions, attribute `score` is its score.
    pub by_score: Spanned<String>,
}

/// What a compiled condition measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// The number of events matching `of`, `within` before the time of evaluation.
    Count {
        /// Which events.
        of: Matcher,
        /// Window length; the whole history kept when `None`.
        within: Option<Millis>,
    },
    /// The sum of `attribute` over the events matching `of`, `within` before the evaluation.
    Sum {
        /// Which events.
        of: Matcher,
        /// The numeric attribute.
        attribute: String,
        /// Window length; the whole history kept when `None`.
        within: Option<Millis>,
    },
    /// The latest score of events of this type.
    Score {
        /// Event type.
        event: String,
    },
    /// A profile attribute.
    Profile {
        /// Attribute name.
        attribute: String,
    },
    /// An event matching `of` (a trigger only: it holds at that event).
    Event {
        /// Which events.
        of: Matcher,
    },
}

impl Metric {
    /// The event type whose arrival can change the metric (none for a profile attribute).
    pub fn event_type(&self) -> Option<&str> {
        match self {
            Metric::Count { of, .. } | Metric::Sum { of, .. } | Metric::Event { of } => {
                Some(&of.event_type)
            }
            Metric::Score { event } => Some(event),
            Metric::Profile { .. } => None,
        }
    }

    /// The attributes of [`Metric::event_type`]'s events the metric reads.
    pub fn attributes(&self) -> Vec<&str> {
        match self {
            Metric::Count { of, .. } | Metric::Event { of } => {
                of.conds.iter().map(|(a, _)| a.as_str()).collect()
            }
            Metric::Sum { of, attribute, .. } => of
                .conds
                .iter()
                .map(|(a, _)| a.as_str())
                .chain([attribute.as_str()])
                .collect(),
            Metric::Score { .. } => vec![SCORE_ATTRIBUTE],
            Metric::Profile { .. } => Vec::new(),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = |w: &Option<Millis>| match w {
            Some(w) => format!(" within {}", short_duration(*w)),
            None => String::new(),
        };
        match self {
            Metric::Count { of, within } => {
                write!(f, "count of {}{}", of.event_type, window(within))
            }
            Metric::Sum {
                of,
                attribute,
                within,
            } => write!(f, "sum of {}.{attribute}{}", of.event_type, window(within)),
            Metric::Score { event } => write!(f, "score {event}"),
            Metric::Profile { attribute } => write!(f, "profile {attribute}"),
            Metric::Event { of } => write!(f, "event {}", of.event_type),
        }
    }
}

/// A compiled condition: a metric and comparisons that must all pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// What is measured.
    pub metric: Metric,
    /// Comparisons, all of which must pass (none for [`Metric::Event`]).
    pub tests: Vec<Cond>,
}

impl Condition {
    /// The comparisons in words: `< 2`, `>= 0.7`, `one of gold, platinum`.
    pub fn describe_tests(&self) -> String {
        self.tests
            .iter()
            .map(|c| match c {
                Cond::Eq(x) => format!("= {x}"),
                Cond::Ne(x) => format!("!= {x}"),
                Cond::OneOf(xs) => format!("one of {}", xs.join(", ")),
                Cond::NotOneOf(xs) => format!("none of {}", xs.join(", ")),
                Cond::Gt(x) => format!("> {x}"),
                Cond::Gte(x) => format!(">= {x}"),
                Cond::Lt(x) => format!("< {x}"),
                Cond::Lte(x) => format!("<= {x}"),
                Cond::Exists(true) => "known".to_owned(),
                Cond::Exists(false) => "unknown".to_owned(),
                Cond::AmongEarlier | Cond::NotAmongEarlier => "(history)".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tests.is_empty() {
            write!(f, "{}", self.metric)
        } else {
            write!(f, "{} {}", self.metric, self.describe_tests())
        }
    }
}

/// Where a condition is used: it decides which metrics make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A rule's `when`: evaluated at each event, starts the clock.
    Trigger,
    /// One of a rule's `if` conditions: evaluated before the due time.
    Guard,
}

/// The comparisons written on a condition or an attribute.
#[allow(clippy::too_many_arguments)]
pub(super) fn comparisons(
    eq: &Option<Scalar>,
    ne: &Option<Scalar>,
    one_of: &Option<Vec<Scalar>>,
    not_one_of: &Option<Vec<Scalar>>,
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
    exists: Option<bool>,
) -> Vec<Cond> {
    let strings = |xs: &Vec<Scalar>| xs.iter().map(|s| s.0.clone()).collect();
    let mut tests = Vec::new();
    tests.extend(eq.as_ref().map(|x| Cond::Eq(x.0.clone())));
    tests.extend(ne.as_ref().map(|x| Cond::Ne(x.0.clone())));
    tests.extend(one_of.as_ref().map(|x| Cond::OneOf(strings(x))));
    tests.extend(not_one_of.as_ref().map(|x| Cond::NotOneOf(strings(x))));
    tests.extend(gt.map(Cond::Gt));
    tests.extend(gte.map(Cond::Gte));
    tests.extend(lt.map(Cond::Lt));
    tests.extend(lte.map(Cond::Lte));
    tests.extend(exists.map(Cond::Exists));
    tests
}

/// Compiles one condition of a rule; `at` locates errors when the condition has no span.
pub(super) fn compile_condition(
    v: &Validator<'_>,
    at: &Spanned<String>,
    field: &str,
    def: &ConditionDef,
    role: Role,
) -> Result<Condition, JourneyError> {
    let given = [
        def.count.is_some(),
        def.sum.is_some(),
        def.score.is_some(),
        def.profile.is_some(),
        def.event.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(v.err(
            at,
            field,
            "a condition measures exactly one of `count`, `sum`, `score`, `profile` or `event`",
        ));
    }
    let tests = comparisons(
        &def.eq,
        &def.ne,
        &def.one_of,
        &def.not_one_of,
        def.gt,
        def.gte,
        def.lt,
        def.lte,
        def.exists,
    );
    let window = |w: &WindowDef, f: &str| -> Result<(Matcher, Option<Millis>), JourneyError> {
        let of = compile_matcher(v, &w.event, f, &w.event.value, w.where_.as_ref())?;
        if w.within.is_some_and(|d| d.0 <= 0) {
            return Err(v.err(
                &w.event,
                format!("{f}.within"),
                "a window must be longer than zero",
            ));
        }
        Ok((of, w.within.map(|d| d.0)))
    };
    let metric = if let Some(w) = &def.count {
        if w.attribute.is_some() {
            return Err(v.err(
                &w.event,
                format!("{field}.count.attribute"),
                "`count` counts events; to add up an attribute use `sum`",
            ));
        }
        let (of, within) = window(w, &format!("{field}.count"))?;
        Metric::Count { of, within }
    } else if let Some(w) = &def.sum {
        let Some(attribute) = w.attribute.clone() else {
            return Err(v.err(
                &w.event,
                format!("{field}.sum.attribute"),
                "`sum` needs the numeric `attribute` to add up, e.g. `attribute: value`",
            ));
        };
        let (of, within) = window(w, &format!("{field}.sum"))?;
        Metric::Sum {
            of,
            attribute,
            within,
        }
    } else if let Some(s) = &def.score {
        Metric::Score {
            event: s.value.clone(),
        }
    } else if let Some(p) = &def.profile {
        if role == Role::Trigger {
            return Err(v.err(
                p,
                format!("{field}.profile"),
                "a profile attribute cannot start a rule; use it in the rule's `if` or `segment`",
            ));
        }
        Metric::Profile {
            attribute: p.value.clone(),
        }
    } else {
        let e = def.event.as_ref().expect("exactly one metric is given");
        if role == Role::Guard {
            return Err(v.err(
                e,
                format!("{field}.event"),
                "`event` can only start a rule (`when`); in `if`, count the events instead: `count: {event: …}` with `gte: 1`",
            ));
        }
        if !tests.is_empty() {
            return Err(v.err(
                e,
                format!("{field}.event"),
                "an `event` condition takes no comparison; put conditions on its attributes in `where`",
            ));
        }
        return Ok(Condition {
            metric: Metric::Event {
                of: compile_matcher(v, e, field, &e.value, def.where_.as_ref())?,
            },
            tests,
        });
    };
    if def.where_.is_some() {
        return Err(v.err(
            at,
            format!("{field}.where"),
            "`where` belongs inside `count`/`sum` (or with `event`)",
        ));
    }
    if tests.is_empty() {
        return Err(v.err(
            at,
            field,
            format!("`{metric}` needs a comparison: one of eq, ne, one-of, not-one-of, gt, gte, lt, lte, exists"),
        ));
    }
    Ok(Condition { metric, tests })
}

/// Compiles a rule's `segment` (profile attribute → comparisons) into guard conditions.
pub(super) fn compile_segment(
    v: &Validator<'_>,
    at: &Spanned<String>,
    field: &str,
    segment: &BTreeMap<String, AttrCondDef>,
) -> Result<Vec<Condition>, JourneyError> {
    let mut out = Vec::new();
    for (attr, c) in segment {
        if c.among_earlier.is_some() || c.not_among_earlier.is_some() {
            return Err(v.err(
                at,
                format!("{field}.{attr}"),
                "a segment compares the customer's profile; among-earlier and not-among-earlier apply to events only",
            ));
        }
        let tests = c.comparisons();
        if tests.is_empty() {
            return Err(v.err(
                at,
                format!("{field}.{attr}"),
                "no comparison given; use one of eq, ne, one-of, not-one-of, gt, gte, lt, lte, exists",
            ));
        }
        out.push(Condition {
            metric: Metric::Profile {
                attribute: attr.clone(),
            },
            tests,
        });
    }
    Ok(out)
}
