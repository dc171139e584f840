//! Evaluating rule conditions (thresholds over windows, scores, profile segments) and
//! next-best-action scores on a customer's sorted events. Pure, like the rest of the engine:
//! every value is derived from the events and the profile, never from arrival order.

use std::fmt;

use crate::journey::{Cond, Condition, Metric, SCORE_ATTRIBUTE, SCORED_ACTION_ATTRIBUTE};
use crate::model::Millis;

use super::{CustomerState, StoredEvent, matches};

/// A measured metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value<'a> {
    /// A count, a sum or a score.
    Num(f64),
    /// A profile attribute or an event attribute.
    Text(&'a str),
    /// A score never published, an attribute never set.
    Unknown,
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Num(n) => write!(f, "{n}"),
            Value::Text(s) => write!(f, "{s}"),
            Value::Unknown => f.write_str("unknown"),
        }
    }
}

impl Value<'_> {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Text(s) => s.trim().parse().ok(),
            Value::Unknown => None,
        }
    }
}

/// Whether `value` passes one comparison. A missing value is "not equal" and "none of", and
/// fails every other comparison but `exists: false`. `among-earlier` conditions need the event
/// history and are decided by the caller.
pub(super) fn passes(cond: &Cond, value: Value<'_>) -> bool {
    let same = |x: &str| match (value, x.trim().parse::<f64>()) {
        (Value::Num(n), Ok(x)) => n == x,
        (Value::Num(n), Err(_)) => n.to_string() == x,
        (Value::Text(s), _) => s == x,
        (Value::Unknown, _) => false,
    };
    let num = value.number();
    match cond {
        Cond::Eq(x) => same(x),
        Cond::Ne(x) => !same(x),
        Cond::OneOf(xs) => xs.iter().any(|x| same(x)),
        Cond::NotOneOf(xs) => !xs.iter().any(|x| same(x)),
        Cond::Gt(x) => num.is_some_and(|v| v > *x),
        Cond::Gte(x) => num.is_some_and(|v| v >= *x),
        Cond::Lt(x) => num.is_some_and(|v| v < *x),
        Cond::Lte(x) => num.is_some_and(|v| v <= *x),
        Cond::Exists(want) => (value != Value::Unknown) == *want,
        Cond::AmongEarlier | Cond::NotAmongEarlier => false,
    }
}

/// The metric as of time `t`, over `events[..upto]` (the events the evaluation may see).
fn measure<'a>(metric: &Metric, state: &'a CustomerState, upto: usize, t: Millis) -> Value<'a> {
    let events = &state.events[..upto];
    let in_window = |e: &StoredEvent, within: Option<Millis>| {
        within.is_none_or(|w| e.at >= t.saturating_sub(w))
    };
    match metric {
        Metric::Count { of, within } => Value::Num(
            (0..upto)
                .filter(|&j| in_window(&events[j], *within) && matches(of, events, j))
                .count() as f64,
        ),
        Metric::Sum {
            of,
            attribute,
            within,
        } => Value::Num(
            (0..upto)
                .filter(|&j| in_window(&events[j], *within) && matches(of, events, j))
                .filter_map(|j| events[j].attr(attribute)?.trim().parse::<f64>().ok())
                // Not `sum()`: a float sum of nothing is -0.
                .fold(0.0, |a, b| a + b),
        ),
        Metric::Score { event } => events
            .iter()
            .rev()
            .filter(|e| e.event_type == event)
            .find_map(|e| e.attr(SCORE_ATTRIBUTE)?.trim().parse().ok())
            .map_or(Value::Unknown, Value::Num),
        Metric::Profile { attribute } => state
            .profile_at(attribute, t)
            .map_or(Value::Unknown, Value::Text),
        Metric::Event { .. } => Value::Unknown,
    }
}

/// Checks a rule's guard on the events before `due` (as cancellation sees them): `Err` says
/// what failed, e.g. "count of login.succeeded within 14d was 3, needs < 2".
pub(super) fn check_guard(c: &Condition, state: &CustomerState, due: Millis) -> Result<(), String> {
    let upto = state.events.partition_point(|e| e.at < due);
    let value = measure(&c.metric, state, upto, due);
    if c.tests.iter().all(|t| passes(t, value)) {
        Ok(())
    } else {
        Err(format!(
            "{} was {value}, needs {}",
            c.metric,
            c.describe_tests()
        ))
    }
}

/// The event time at which a `when` condition first holds in an instance: at the entry (with
/// what was known before it, e.g. a score published earlier) or at the first later event up to
/// `until` (the end, if any) that can change the metric and after which the condition holds
/// (the event itself counts).
pub(super) fn first_holding(
    c: &Condition,
    state: &CustomerState,
    from: Millis,
    until: Option<Millis>,
) -> Option<Millis> {
    let events = &state.events;
    let start = events.partition_point(|e| e.at < from);
    for i in start..events.len() {
        let at = events[i].at;
        if until.is_some_and(|end| at > end) {
            break;
        }
        let holds = match &c.metric {
            Metric::Event { of } => matches(of, events, i),
            m => {
                (i == start || m.event_type() == Some(events[i].event_type.as_str()))
                    && c.tests
                        .iter()
                        .all(|t| passes(t, measure(m, state, i + 1, at)))
            }
        };
        if holds {
            return Some(at);
        }
    }
    None
}

/// The latest score of each of `actions` published before `due` as `event_type` events
/// (attribute `action` names the action, `score` holds the score).
pub(super) fn action_scores(
    event_type: &str,
    state: &CustomerState,
    due: Millis,
    actions: &[&str],
) -> Vec<Option<f64>> {
    let upto = state.events.partition_point(|e| e.at < due);
    let scored = &state.events[..upto];
    actions
        .iter()
        .map(|action| {
            scored
                .iter()
                .rev()
                .filter(|e| {
                    e.event_type == event_type && e.attr(SCORED_ACTION_ATTRIBUTE) == Some(action)
                })
                .find_map(|e| e.attr(SCORE_ATTRIBUTE)?.trim().parse().ok())
        })
        .collect()
}

/// The order in which next-best-action tries the actions: highest score first; actions the
/// model has not scored after every scored one; ties in definition order.
pub(super) fn rank(scores: &[Option<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| match (scores[a], scores[b]) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    order
}
