//! Customer protection: rules that hold across every journey, checked by the engine before a
//! command is emitted — quiet hours per channel in the customer's time zone, a suppression
//! list fed by events, and exact frequency caps per customer and channel.
//!
//! Owns the protections file (`protections:` in the config, `simulate --protections`): its
//! parsing and validation, and the pure decisions "is this customer suppressed for this
//! channel at this time" and "would this command exceed a cap". Must stay pure and
//! deterministic like the engine that calls it: decisions depend only on the customer's events
//! and on the commands decided before in event-time order.
//!
//! ```yaml
//! quiet-hours:
//!   - { channel: sms, from: "21:00", to: "08:00" }   # local time of the customer's `tz`
//! suppression:
//!   add: customer.suppressed       # event types putting a customer on the list ...
//!   remove: customer.unsuppressed  # ... and taking them off; attribute `channel` limits one
//! frequency-caps:
//!   - { channel: email, max: 1, per: 1d }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::journey::{DurationMs, short_duration};
use crate::model::{Channel, Millis};

/// A protections file that could not be loaded: where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// The file could not be read.
    #[error("cannot read the protections file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or says something inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ProtectionsDef {
    #[serde(default)]
    quiet_hours: Vec<QuietDef>,
    #[serde(default)]
    suppression: Option<SuppressionDef>,
    #[serde(default)]
    frequency_caps: Vec<CapDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct QuietDef {
    channel: String,
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SuppressionDef {
    add: String,
    remove: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CapDef {
    channel: String,
    max: u32,
    per: DurationMs,
}

/// The suppression list, as events: the latest `add`/`remove` event at or before a command's
/// due time decides (one whose `channel` attribute names another channel does not count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Event type putting a customer on the list.
    pub add: String,
    /// Event type taking them off.
    pub remove: String,
}

/// At most `max` commands on `channel` per customer within any `per` of due times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    /// The channel capped.
    pub channel: Channel,
    /// Commands allowed in a window.
    pub max: u32,
    /// The window, in milliseconds.
    pub per: Millis,
}

/// No command on `channel` goes out between `from` and `to` (minutes after local midnight in
/// the customer's time zone; the window wraps midnight when `from` > `to`): it is deferred to
/// the window's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// The channel.
    pub channel: Channel,
    /// Start, minutes after local midnight.
    pub from: u32,
    /// End (exclusive), minutes after local midnight.
    pub to: u32,
}

impl QuietHours {
    fn contains(&self, minute: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

/// Every protection in force. The default protects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protections {
    /// Quiet hours per channel.
    pub quiet_hours: Vec<QuietHours>,
    /// The suppression list, if any.
    pub suppression: Option<Suppression>,
    /// Frequency caps.
    pub frequency_caps: Vec<FrequencyCap>,
}

/// Why a command is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The customer is on the suppression list (since the event at this time).
    Suppressed {
        /// When the customer was put on the list.
        since: Millis,
    },
    /// The cap is reached within the window before the due time.
    Capped(FrequencyCap),
    /// The due time falls in quiet hours of the channel (this blocks only next-best-action
    /// alternatives; other commands are deferred).
    QuietHours {
        /// The channel.
        channel: Channel,
        /// The customer's time zone the hours were read in.
        tz: String,
        /// When the quiet hours end.
        until: Millis,
    },
}

impl Blocked {
    /// The reason, as carried by `command_suppressed` journey events and `explain`.
    pub fn describe(&self) -> String {
        match self {
            Blocked::Suppressed { since } => format!(
                "suppression list (since {})",
                crate::model::format_millis(*since)
            ),
            Blocked::Capped(cap) => format!(
                "frequency cap: {} {} per {}",
                cap.max,
                cap.channel.as_str(),
                short_duration(cap.per)
            ),
            Blocked::QuietHours { channel, tz, until } => format!(
                "quiet hours for {} in {tz} until {}",
                channel.as_str(),
                crate::model::format_millis(*until)
            ),
        }
    }
}

/// Minutes after midnight of `HH:MM`.
fn parse_hh_mm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl Protections {
    /// Loads and validates a protections file.
    pub fn load(path: &Path) -> Result<Protections, ProtectError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProtectError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a protections file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Protections, ProtectError> {
        let invalid = |message: String| ProtectError::Invalid {
            path: path.to_owned(),
            message,
        };
        let def: ProtectionsDef =
            serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let suppression = match def.suppression {
            Some(s) if s.add == s.remove || s.add.is_empty() || s.remove.is_empty() => {
                return Err(invalid(format!(
                    "suppression: `add` and `remove` must be two different event types (got `{}` and `{}`)",
                    s.add, s.remove
                )));
            }
            Some(s) => Some(Suppression {
                add: s.add,
                remove: s.remove,
            }),
            None => None,
        };
        let mut quiet_hours = Vec::new();
        for (i, q) in def.quiet_hours.into_iter().enumerate() {
            let channel = Channel::parse(&q.channel).ok_or_else(|| {
                invalid(format!(
                    "quiet-hours[{i}].channel: unknown channel `{}`; use email, sms or contact-center",
                    q.channel
                ))
            })?;
            let minute = |field: &str, v: &str| {
                parse_hh_mm(v).ok_or_else(|| {
                    invalid(format!(
                        "quiet-hours[{i}].{field}: `{v}` is not a time of day; write it as HH:MM, e.g. \"21:00\""
                    ))
                })
            };
            let (from, to) = (minute("from", &q.from)?, minute("to", &q.to)?);
            if from == to {
                return Err(invalid(format!(
                    "quiet-hours[{i}]: `from` and `to` are both {}; give a window (it may wrap midnight: 21:00 to 08:00)",
                    q.from
                )));
            }
            quiet_hours.push(QuietHours { channel, from, to });
        }
        let mut frequency_caps = Vec::new();
        for (i, c) in def.frequency_caps.into_iter().enumerate() {
            let channel = Channel::parse(&c.channel).ok_or_else(|| {
                invalid(format!(
                    "frequency-caps[{i}].channel: unknown channel `{}`; use email, sms or contact-center",
                    c.channel
                ))
            })?;
            if c.max == 0 || c.per.0 <= 0 {
                return Err(invalid(format!(
                    "frequency-caps[{i}]: `max` must be at least 1 and `per` longer than 0 (to stop a channel, leave it out of the journeys)"
                )));
            }
            frequency_caps.push(FrequencyCap {
                channel,
                max: c.max,
                per: c.per.0,
            });
        }
        Ok(Protections {
            quiet_hours,
            suppression,
            frequency_caps,
        })
    }

    /// Whether nothing is protected.
    pub fn is_empty(&self) -> bool {
        self.quiet_hours.is_empty() && self.suppression.is_none() && self.frequency_caps.is_empty()
    }

    /// When a command on `channel` due at `due` may go out, if `due` falls in quiet hours:
    /// the end of the window (of the last one, when windows chain), in the time zone `tz`
    /// (an IANA name such as `Europe/Berlin`; UTC when absent or unknown).
    pub fn defer(&self, channel: Channel, due: Millis, tz: Option<&str>) -> Option<Millis> {
        use chrono::{Duration, TimeZone, Timelike};
        let zone: chrono_tz::Tz = tz.and_then(|t| t.parse().ok()).unwrap_or(chrono_tz::UTC);
        let mut at = due;
        // Each step moves to the end of one window; more steps than windows means none is left.
        for _ in 0..=self.quiet_hours.len() {
            let local = chrono::Utc
                .timestamp_millis_opt(at)
                .single()?
                .with_timezone(&zone);
            let minute = local.hour() * 60 + local.minute();
            let Some(q) = self
                .quiet_hours
                .iter()
                .find(|q| q.channel == channel && q.contains(minute))
            else {
                return (at != due).then_some(at);
            };
            let mut day = local.date_naive();
            if q.from > q.to && minute >= q.from {
                day = day.succ_opt()?;
            }
            let end = day.and_hms_opt(q.to / 60, q.to % 60, 0)?;
            // A DST gap at the window's end: the first instant after it.
            at = zone
                .from_local_datetime(&end)
                .earliest()
                .or_else(|| {
                    zone.from_local_datetime(&(end + Duration::hours(1)))
                        .earliest()
                })?
                .timestamp_millis();
        }
        (at != due).then_some(at)
    }

    /// The event types the suppression list reads (they must be kept in state).
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.suppression
            .iter()
            .flat_map(|s| [s.add.as_str(), s.remove.as_str()])
    }

    /// Whether a command on `channel` due at `due` may be sent. `events` are the customer's
    /// `(type, time, channel attribute)` in event-time order; `sent` the due times of the
    /// commands on `channel` sent before it (any order).
    pub fn check<'a>(
        &self,
        channel: Channel,
        due: Millis,
        events: impl Iterator<Item = (&'a str, Millis, Option<&'a str>)>,
        sent: &[Millis],
    ) -> Option<Blocked> {
        if let Some(s) = &self.suppression {
            let mut since = None;
            for (event_type, at, only) in events {
                if at > due {
                    break;
                }
                if only.is_some_and(|c| c != channel.as_str()) {
                    continue;
                }
                if event_type == s.add {
                    since = Some(at);
                } else if event_type == s.remove {
                    since = None;
                }
            }
            if let Some(since) = since {
                return Some(Blocked::Suppressed { since });
            }
        }
        for cap in self.frequency_caps.iter().filter(|c| c.channel == channel) {
            let within = sent
                .iter()
                .filter(|&&t| t <= due && t > due - cap.per)
                .count();
            if within >= cap.max as usize {
                return Some(Blocked::Capped(*cap));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;

    fn parse(text: &str) -> Result<Protections, ProtectError> {
        Protections::parse(Path::new("p.yaml"), text)
    }

    #[test]
    fn the_example_file_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/protections.yaml");
        let p = Protections::load(&path).unwrap();
        assert!(p.suppression.is_some());
        assert!(!p.frequency_caps.is_empty());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = parse("frequency-caps:\n  - { channel: fax, max: 1, per: 1d }\n").unwrap_err();
        assert!(err.to_string().contains("unknown channel `fax`"), "{err}");
        let err = parse("frequency-caps:\n  - { channel: sms, max: 0, per: 1d }\n").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = parse("suppression: { add: x, remove: x }\n").unwrap_err();
        assert!(
            err.to_string().contains("two different event types"),
            "{err}"
        );
        assert!(parse("quiet: 1\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn quiet_hours_defer_to_their_end_in_the_customer_s_time_zone() {
        let p =
            parse("quiet-hours:\n  - { channel: sms, from: \"21:00\", to: \"08:00\" }\n").unwrap();
        let at = |s: &str| crate::model::parse_millis(s).unwrap();
        let berlin = Some("Europe/Berlin");
        // 22:20 in Berlin (CET, UTC+1): deferred to 08:00 the next morning, 07:00Z.
        assert_eq!(
            p.defer(Channel::Sms, at("2026-03-01T21:20:00Z"), berlin),
            Some(at("2026-03-02T07:00:00Z"))
        );
        // 06:30 in Berlin: to 08:00 the same morning.
        assert_eq!(
            p.defer(Channel::Sms, at("2026-03-02T05:30:00Z"), berlin),
            Some(at("2026-03-02T07:00:00Z"))
        );
        // 12:00 in Berlin, another channel, or the window's end itself: not deferred.
        assert_eq!(
            p.defer(Channel::Sms, at("2026-03-02T11:00:00Z"), berlin),
            None
        );
        assert_eq!(
            p.defer(Channel::Email, at("2026-03-01T21:20:00Z"), berlin),
            None
        );
        assert_eq!(
            p.defer(Channel::Sms, at("2026-03-02T07:00:00Z"), berlin),
            None
        );
        // Summer time (CEST, UTC+2), and UTC for a customer without (or with a bad) tz.
        assert_eq!(
            p.defer(Channel::Sms, at("2026-07-01T20:00:00Z"), berlin),
            Some(at("2026-07-02T06:00:00Z"))
        );
        assert_eq!(
            p.defer(
                Channel::Sms,
                at("2026-03-01T22:00:00Z"),
                Some("Mars/Olympus")
            ),
            Some(at("2026-03-02T08:00:00Z"))
        );
    }

    #[test]
    fn bad_quiet_hours_say_what_to_write() {
        let err = parse("quiet-hours:\n  - { channel: sms, from: \"9pm\", to: \"08:00\" }\n")
            .unwrap_err();
        assert!(err.to_string().contains("HH:MM"), "{err}");
        let err = parse("quiet-hours:\n  - { channel: sms, from: \"08:00\", to: \"08:00\" }\n")
            .unwrap_err();
        assert!(err.to_string().contains("give a window"), "{err}");
    }

    #[test]
    fn the_latest_list_event_at_or_before_the_due_time_decides() {
        let p = parse("suppression: { add: on, remove: off }\n").unwrap();
        let events = [("on", 10, None), ("off", 20, None), ("on", 30, Some("sms"))];
        let check = |channel, due| p.check(channel, due, events.iter().copied(), &[]);
        assert_eq!(check(Channel::Email, 9), None);
        assert_eq!(
            check(Channel::Email, 10),
            Some(Blocked::Suppressed { since: 10 })
        );
        assert_eq!(check(Channel::Email, 25), None, "taken off the list");
        assert_eq!(
            check(Channel::Email, 35),
            None,
            "the sms-only entry leaves email alone"
        );
        assert_eq!(
            check(Channel::Sms, 35),
            Some(Blocked::Suppressed { since: 30 })
        );
    }

    #[test]
    fn a_cap_counts_the_sent_commands_within_the_window_before_the_due_time() {
        let p = parse("frequency-caps:\n  - { channel: email, max: 2, per: 1d }\n").unwrap();
        let none = std::iter::empty();
        let sent = [0, 12 * H];
        assert!(matches!(
            p.check(Channel::Email, 20 * H, none.clone(), &sent),
            Some(Blocked::Capped(_))
        ));
        assert_eq!(
            p.check(Channel::Email, 24 * H, none.clone(), &sent),
            None,
            "the first left the window"
        );
        assert_eq!(
            p.check(Channel::Sms, 20 * H, none, &sent),
            None,
            "other channels are free"
        );
    }
}
