//! The records of Waymark's data contract, as plain Rust values.
//!
//! Owns: [`CustomerEvent`] (what upstream systems publish), [`InterventionCommand`] (what the
//! processor asks a channel sink to do), [`JourneyEvent`] (what happened to a customer in a
//! journey) and [`InterventionOutcome`] (what a sink reports back), plus their JSON-lines form
//! used by `simulate`, `produce` and `tail`. The Avro form lives in `codec`; this module must not
//! know about Avro, Kafka or journeys.
//!
//! Times are [`Millis`]: milliseconds since the Unix epoch, UTC. In JSON they are RFC 3339
//! strings with millisecond precision (`2026-03-02T10:50:20.903Z`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC: the one time type of the engine.
pub type Millis = i64;

/// The wall clock in milliseconds since the epoch (0 if the clock is before 1970). For the
/// I/O edges (pipeline, sinks, tools); the engine never reads a clock.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Formats `ms` as RFC 3339 with millisecond precision and a `Z` suffix.
pub fn format_millis(ms: Millis) -> String {
    match rfc3339_fixed(ms, &mut [0; RFC3339_FIXED_LEN]) {
        Some(text) => text.to_owned(),
        None => format_wide(ms),
    }
}

/// [`format_millis`] for a time outside the years 0000–9999, through chrono (or as a count
/// of milliseconds, beyond chrono's range).
fn format_wide(ms: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const RFC3339_FIXED_LEN: usize = 24;

/// `ms` as [`format_millis`] gives it, written into `buf` without an allocation, chrono or
/// the formatting machinery, for the years 0000–9999 (where the format has a fixed width);
/// `None` for other times. Every output carries a time or two, so this is on `simulate`'s hot
/// path. The date is the proleptic Gregorian calendar's, from the day number (Howard
/// Hinnant's `civil_from_days`); the tests compare it with chrono's.
fn rfc3339_fixed(ms: Millis, buf: &mut [u8; RFC3339_FIXED_LEN]) -> Option<&str> {
    const DAY: i64 = 86_400_000;
    let (days, in_day) = (ms.div_euclid(DAY), ms.rem_euclid(DAY));
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let fields = [
        (year, 4, b'-'),
        (month, 2, b'-'),
        (day, 2, b'T'),
        (in_day / 3_600_000, 2, b':'),
        (in_day / 60_000 % 60, 2, b':'),
        (in_day / 1_000 % 60, 2, b'.'),
        (in_day % 1_000, 3, b'Z'),
    ];
    let mut at = 0;
    for (value, width, then) in fields {
        let mut rest = value;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        buf[at + width] = then;
        at += width + 1;
    }
    std::str::from_utf8(buf).ok()
}

/// Serializes `ms` as [`format_millis`] gives it.
fn serialize_millis<S: serde::Serializer>(ms: Millis, s: S) -> Result<S::Ok, S::Error> {
    match rfc3339_fixed(ms, &mut [0; RFC3339_FIXED_LEN]) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&format_wide(ms)),
    }
}

/// Parses an RFC 3339 timestamp (any offset) into [`Millis`].
pub fn parse_millis(s: &str) -> Result<Millis, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis())
}

/// Serde adapter: [`Millis`] as an RFC 3339 string.
pub mod rfc3339 {
    use super::{Millis, parse_millis, serialize_millis};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serializes as RFC 3339 with milliseconds.
    pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        serialize_millis(*ms, s)
    }

    /// Deserializes from an RFC 3339 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        parse_millis(&s).map_err(|e| {
            D::Error::custom(format!(
                "`{s}` is not an RFC 3339 timestamp ({e}); write e.g. 2026-03-02T10:50:20.903Z"
            ))
        })
    }

    /// The same for `Option<Millis>`.
    pub mod option {
        use super::{Millis, parse_millis, serialize_millis};
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        /// Serializes `Some` as RFC 3339, `None` as null.
        pub fn serialize<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => serialize_millis(*ms, s),
                None => s.serialize_none(),
            }
        }

        /// Deserializes an optional RFC 3339 string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| parse_millis(&s).map_err(|e| D::Error::custom(format!("`{s}`: {e}"))))
                .transpose()
        }
    }
}

/// Attribute values accept any JSON scalar and are kept as strings (numbers in their JSON
/// spelling, booleans as `true`/`false`, null as empty), so the Avro contract stays a
/// `map<string>`. Read straight into the map: each value is turned into its string as it is
/// parsed, without a map of JSON values in between (`simulate` reads every event this way).
fn attributes_from_json<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    d.deserialize_map(AttributesVisitor)
}

/// Reads an `attributes` object into [`CustomerEvent::attributes`].
struct AttributesVisitor;

impl<'de> serde::de::Visitor<'de> for AttributesVisitor {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of attributes")
    }

    fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
    where
        A: serde::de::MapAccess<'de>,
    {
        use serde::de::Error;
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            match map.next_value::<AttributeValue>()?.0 {
                Ok(value) => {
                    out.insert(key, value);
                }
                Err(other) => {
                    return Err(A::Error::custom(format!(
                        "attribute `{key}` is {other}: attribute values must be strings, numbers or booleans"
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// One attribute's value as its string, or the array or object it is instead (an error).
struct AttributeValue(Result<String, serde_json::Value>);

impl<'de> Deserialize<'de> for AttributeValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AttributeValueVisitor)
    }
}

struct AttributeValueVisitor;

impl<'de> serde::de::Visitor<'de> for AttributeValueVisitor {
    type Value = AttributeValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E>(self, v: &str) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(v)))
    }

    fn visit_bool<E>(self, v: bool) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(v.to_string())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(v.to_string())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(v.to_string())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<AttributeValue, E> {
        // JSON's spelling of the number, as `serde_json::Number` writes it.
        Ok(AttributeValue(Ok(serde_json::Value::from(v).to_string())))
    }

    fn visit_unit<E>(self) -> Result<AttributeValue, E> {
        Ok(AttributeValue(Ok(String::new())))
    }

    fn visit_seq<A>(self, seq: A) -> Result<AttributeValue, A::Error>
    where
        A: serde::de::SeqAccess<'de>,
    {
        not_a_scalar(serde::de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A>(self, map: A) -> Result<AttributeValue, A::Error>
    where
        A: serde::de::MapAccess<'de>,
    {
        not_a_scalar(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// An array or object given as an attribute value, read whole so the error can show it.
fn not_a_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AttributeValue, D::Error> {
    serde_json::Value::deserialize(d).map(|value| AttributeValue(Err(value)))
}

/// One thing a customer did, as published by an upstream system to `customer-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerEvent {
    /// Unique per event; a repeated id is a duplicate and changes nothing.
    pub event_id: String,
    /// The customer the event is about; also the Kafka key.
    pub customer_id: String,
    /// Event type, e.g. `login.created`, `order.placed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened (event time), decided upstream.
    #[serde(with = "rfc3339")]
    pub occurred_at: Millis,
    /// Free-form attributes (`email`, `sales_rep`, `product_line`, ...).
    #[serde(default, deserialize_with = "attributes_from_json")]
    pub attributes: BTreeMap<String, String>,
}

/// The channel a command is delivered through; each has its own topic and sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    /// `commands.email`, delivered over SMTP.
    Email,
    /// `commands.sms`, delivered through an SMS provider API.
    Sms,
    /// `commands.contact-center`: agent tasks and outbound calls.
    ContactCenter,
}

impl Channel {
    /// Every channel, in a fixed order.
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::ContactCenter];

    /// The wire spelling: `email`, `sms`, `contact-center`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::ContactCenter => "contact-center",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to a channel sink: deliver this intervention to this customer.
///
/// Its short strings (names, the customer id, params and attributes) are [`CompactString`]s,
/// as in the state: up to 24 bytes are kept inline, so most outputs are built without an
/// allocation per field. They serialize exactly as strings. The ids (UUIDs) stay `String`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionCommand {
    /// Stable id derived from (journey, version, customer, instance, rule, action): a replay
    /// or retry yields the same id, so sinks de-duplicate on it.
    pub command_id: String,
    /// Journey name.
    pub journey: CompactString,
    /// Journey version the customer's instance runs on.
    pub journey_version: u32,
    /// The customer; also the Kafka key.
    pub customer_id: CompactString,
    /// Instance number of the customer in this journey (1 for the first entry).
    pub instance: u32,
    /// The rule that produced the command.
    pub rule: CompactString,
    /// The action of that rule.
    pub action: CompactString,
    /// Delivery channel.
    pub channel: Channel,
    /// Event time the action was due at.
    #[serde(with = "rfc3339")]
    pub due_at: Millis,
    /// Template the sink renders (email/SMS), if any.
    #[serde(default)]
    pub template: Option<CompactString>,
    /// A/B variant the customer is assigned to, if the action is under an experiment.
    #[serde(default)]
    pub variant: Option<CompactString>,
    /// Action parameters from the journey definition, with `{{attribute}}` placeholders
    /// filled from the customer's profile (e.g. `assignee: rep-17`).
    #[serde(default)]
    pub params: BTreeMap<CompactString, CompactString>,
    /// Customer profile attributes the sink needs (`email`, `phone`, `tz`, `sales_rep`, ...).
    #[serde(default)]
    pub attributes: BTreeMap<CompactString, CompactString>,
}

/// What kind of journey event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JourneyEventType {
    /// The customer entered the journey (a new instance).
    Entered,
    /// A step was completed (at the event time of the earliest event completing it).
    StepCompleted,
    /// The customer's current step was not completed within its window.
    StepAbandoned,
    /// The goal step was completed; the instance ends.
    GoalReached,
    /// An exit condition ended the instance.
    Exited,
    /// A command was emitted (see `command_id`).
    CommandEmitted,
    /// A command was due but not sent (see `reason`).
    CommandSuppressed,
    /// A command was due in quiet hours; it goes out at their end (see `reason`).
    CommandDeferred,
}

impl JourneyEventType {
    /// Every type, in a fixed order.
    pub const ALL: [JourneyEventType; 8] = [
        JourneyEventType::Entered,
        JourneyEventType::StepCompleted,
        JourneyEventType::StepAbandoned,
        JourneyEventType::GoalReached,
        JourneyEventType::Exited,
        JourneyEventType::CommandEmitted,
        JourneyEventType::CommandSuppressed,
        JourneyEventType::CommandDeferred,
    ];

    /// The wire spelling (`step_completed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JourneyEventType::Entered => "entered",
            JourneyEventType::StepCompleted => "step_completed",
            JourneyEventType::StepAbandoned => "step_abandoned",
            JourneyEventType::GoalReached => "goal_reached",
            JourneyEventType::Exited => "exited",
            JourneyEventType::CommandEmitted => "command_emitted",
            JourneyEventType::CommandSuppressed => "command_suppressed",
            JourneyEventType::CommandDeferred => "command_deferred",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<JourneyEventType> {
        JourneyEventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Something that happened to a customer in a journey: the input of analytics and audit.
/// Its short strings are [`CompactString`]s (see [`InterventionCommand`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyEvent {
    /// Stable id derived from (journey, version, customer, instance, type, step or command).
    pub journey_event_id: String,
    /// Journey name.
    pub journey: CompactString,
    /// Journey version of the instance.
    pub journey_version: u32,
    /// The customer; also the Kafka key.
    pub customer_id: CompactString,
    /// Instance number (1 for the first entry).
    pub instance: u32,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: JourneyEventType,
    /// The step concerned, if any.
    #[serde(default)]
    pub step: Option<CompactString>,
    /// Event time it happened at.
    #[serde(with = "rfc3339")]
    pub at: Millis,
    /// The command concerned (`command_emitted`, `command_suppressed`).
    #[serde(default)]
    pub command_id: Option<String>,
    /// The action concerned (`command_emitted`, `command_suppressed`).
    #[serde(default)]
    pub action: Option<CompactString>,
    /// Why (`command_suppressed`, `command_deferred`, `exited`).
    #[serde(default)]
    pub reason: Option<String>,
    /// For a command under an A/B experiment: the customer's arm (a variant id, or
    /// `holdout`).
    #[serde(default)]
    pub variant: Option<CompactString>,
}

/// What a sink reports about a command it handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionOutcome {
    /// Stable id of this outcome (command id + status).
    pub outcome_id: String,
    /// The command this outcome is about.
    pub command_id: String,
    /// The customer; also the Kafka key.
    pub customer_id: String,
    /// Journey of the command.
    pub journey: String,
    /// Action of the command.
    pub action: String,
    /// Channel that handled it.
    pub channel: Channel,
    /// `delivered`, `failed`, `bounced`, `task_completed`, ...
    pub status: String,
    /// When the sink observed it.
    #[serde(with = "rfc3339")]
    pub at: Millis,
    /// Provider message or error text.
    #[serde(default)]
    pub detail: Option<String>,
}

/// Event types of outcomes as the engine sees them: `intervention.<status>`, e.g.
/// `intervention.bounced`. A journey step can match them like any event.
pub const OUTCOME_EVENT_PREFIX: &str = "intervention.";

/// Attributes of an outcome's event: which command it is about, and what the sink said.
pub const OUTCOME_ATTRIBUTES: [&str; 5] = ["command_id", "journey", "action", "channel", "detail"];

impl InterventionOutcome {
    /// The outcome as a customer event (`intervention.<status>`, id = outcome id, time = when
    /// the sink observed it), so it is recorded, de-duplicated and matched like any event —
    /// by `waymark run` and `waymark simulate` alike.
    pub fn to_event(&self) -> CustomerEvent {
        let mut attributes = BTreeMap::from([
            ("command_id".to_owned(), self.command_id.clone()),
            ("journey".to_owned(), self.journey.clone()),
            ("action".to_owned(), self.action.clone()),
            ("channel".to_owned(), self.channel.as_str().to_owned()),
        ]);
        if let Some(d) = &self.detail {
            attributes.insert("detail".to_owned(), d.clone());
        }
        CustomerEvent {
            event_id: self.outcome_id.clone(),
            customer_id: self.customer_id.clone(),
            event_type: format!("{OUTCOME_EVENT_PREFIX}{}", self.status),
            occurred_at: self.at,
            attributes,
        }
    }
}

/// One line of `simulate`/`tail` output: `{"kind": "command", ...}` or
/// `{"kind": "journey_event", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// An intervention command.
    Command(InterventionCommand),
    /// A journey event.
    JourneyEvent(JourneyEvent),
}

impl Output {
    /// The customer the output is about (its Kafka key).
    pub fn customer_id(&self) -> &str {
        match self {
            Output::Command(c) => &c.customer_id,
            Output::JourneyEvent(e) => &e.customer_id,
        }
    }

    /// The stable id of the output.
    pub fn id(&self) -> &str {
        match self {
            Output::Command(c) => &c.command_id,
            Output::JourneyEvent(e) => &e.journey_event_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn times_format_as_chrono_formats_them(ms in any::<i64>(), near in -4_000_000_000_000i64..300_000_000_000_000) {
            for ms in [ms, near] {
                let chrono = DateTime::<Utc>::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
                    .unwrap_or_else(|| format!("{ms}ms"));
                prop_assert_eq!(format_millis(ms), chrono);
            }
        }
    }

    #[test]
    fn times_at_the_edges_of_the_fixed_width_format() {
        let at = |y, mo, d, h, mi, s, milli| {
            chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|day| day.and_hms_milli_opt(h, mi, s, milli))
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        for (ms, text) in [
            (at(0, 1, 1, 0, 0, 0, 0), "0000-01-01T00:00:00.000Z"),
            (
                at(1969, 12, 31, 23, 59, 59, 999),
                "1969-12-31T23:59:59.999Z",
            ),
            (0, "1970-01-01T00:00:00.000Z"),
            (1_772_448_620_903, "2026-03-02T10:50:20.903Z"),
            (
                at(9999, 12, 31, 23, 59, 59, 999),
                "9999-12-31T23:59:59.999Z",
            ),
        ] {
            assert_eq!(format_millis(ms), text);
            assert_eq!(rfc3339_fixed(ms, &mut [0; RFC3339_FIXED_LEN]), Some(text));
        }
        // Every day of 1600–2400 (leap years of every kind), at a different time of day.
        let day_ms = 86_400_000;
        for day in at(1600, 1, 1, 0, 0, 0, 0) / day_ms..at(2400, 12, 31, 0, 0, 0, 0) / day_ms {
            let ms = day * day_ms + (day * 7_919_993).rem_euclid(day_ms);
            let chrono = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
            assert_eq!(
                format_millis(ms),
                chrono.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        // Outside 0000–9999 the width changes: chrono formats those.
        for ms in [
            at(10_000, 1, 1, 0, 0, 0, 0),
            at(-1, 12, 31, 23, 59, 59, 999),
        ] {
            assert_eq!(rfc3339_fixed(ms, &mut [0; RFC3339_FIXED_LEN]), None);
            let chrono = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
            assert_eq!(
                format_millis(ms),
                chrono.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
    }

    #[test]
    fn customer_event_json_round_trips_with_millisecond_times() {
        let line = r#"{"attributes": {"email": "a@example.com", "n": 3, "vip": true}, "customer_id": "c1", "event_id": "e1", "occurred_at": "2026-03-02T10:50:20.903Z", "type": "login.created"}"#;
        let ev: CustomerEvent = serde_json::from_str(line).unwrap();
        assert_eq!(ev.occurred_at, 1_772_448_620_903);
        assert_eq!(ev.attributes["n"], "3");
        assert_eq!(ev.attributes["vip"], "true");
        let back: CustomerEvent =
            serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn attribute_values_are_read_as_their_json_spelling_and_arrays_or_objects_are_refused() {
        let event = |attributes: &str| {
            serde_json::from_str::<CustomerEvent>(&format!(
                r#"{{"event_id":"e","customer_id":"c","type":"t","occurred_at":"2026-03-02T10:50:20Z","attributes":{attributes}}}"#
            ))
        };
        let ev = event(
            r#"{"s": "x\"y", "u": 18446744073709551615, "i": -7, "f": 2.5, "e": 1e21, "z": 0.1, "t": false, "n": null, "s": "later"}"#,
        )
        .unwrap();
        // What a map of `serde_json::Value`s spells, the way these were read before.
        let values: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"u": 18446744073709551615, "i": -7, "f": 2.5, "e": 1e21, "z": 0.1}"#,
        )
        .unwrap();
        for (k, v) in &values {
            assert_eq!(ev.attributes[k], v.to_string(), "{k}");
        }
        assert_eq!(
            ev.attributes["s"], "later",
            "a repeated key keeps its last value"
        );
        assert_eq!(ev.attributes["t"], "false");
        assert_eq!(ev.attributes["n"], "");
        assert_eq!(ev.attributes.len(), 8);
        assert!(event("{}").unwrap().attributes.is_empty());
        for (attributes, shown) in [
            (
                r#"{"ok": 1, "tags": ["a", 2]}"#,
                r#"attribute `tags` is ["a",2]"#,
            ),
            (
                r#"{"address": {"city": "Oslo"}}"#,
                r#"attribute `address` is {"city":"Oslo"}"#,
            ),
        ] {
            let err = event(attributes).unwrap_err().to_string();
            assert!(err.contains(shown), "{err}");
            assert!(
                err.contains("must be strings, numbers or booleans"),
                "{err}"
            );
        }
        let err = event("[1]").unwrap_err().to_string();
        assert!(err.contains("expected a map of attributes"), "{err}");
    }

    #[test]
    fn offsets_other_than_utc_are_normalised() {
        assert_eq!(
            parse_millis("2026-03-02T11:50:20.903+01:00").unwrap(),
            parse_millis("2026-03-02T10:50:20.903Z").unwrap()
        );
        assert_eq!(format_millis(1_772_448_620_903), "2026-03-02T10:50:20.903Z");
    }

    #[test]
    fn unknown_fields_and_bad_times_are_rejected_with_the_reason() {
        let err = serde_json::from_str::<CustomerEvent>(
            r#"{"event_id":"e","customer_id":"c","type":"t","occurred_at":"yesterday"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not an RFC 3339 timestamp"),
            "{err}"
        );
        let err = serde_json::from_str::<CustomerEvent>(
            r#"{"event_id":"e","customer_id":"c","type":"t","occurred_at":"2026-03-02T10:50:20Z","colour":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn output_lines_carry_their_kind() {
        let ev = JourneyEvent {
            journey_event_id: "j".into(),
            journey: "b2b".into(),
            journey_version: 1,
            customer_id: "c".into(),
            instance: 1,
            event_type: JourneyEventType::StepAbandoned,
            step: Some("financials".into()),
            at: 0,
            command_id: None,
            action: None,
            reason: None,
            variant: None,
        };
        let line = serde_json::to_string(&Output::JourneyEvent(ev.clone())).unwrap();
        assert!(line.starts_with(r#"{"kind":"journey_event""#), "{line}");
        assert!(line.contains(r#""type":"step_abandoned""#), "{line}");
        let back: Output = serde_json::from_str(&line).unwrap();
        assert_eq!(back, Output::JourneyEvent(ev));
    }
}
