//! Upstream events that are not `CustomerEvent`s, mapped by configuration (`input-mapping:`)
//! instead of code: JSON pointers (RFC 6901, `/user/id`) say where the customer id, the type,
//! the time, the event id and each attribute are.
//!
//! ```yaml
//! input-format: json
//! input-mapping:
//!   customer-id: /account/id
//!   event-type: /kind            # or `fixed-type: order.placed` for a topic of one kind
//!   occurred-at: /ts             # RFC 3339 text, or milliseconds since the epoch
//!   event-id: /id                # optional: else a UUID v5 of the whole value
//!   attributes:
//!     email: /account/email
//!     product_line: /order/line
//! ```
//!
//! A record the mapping cannot read (a missing customer id, a time that is not a time) is
//! refused with an error naming the pointer and the setting, and goes to the dead-letter topic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CodecError;
use crate::model::CustomerEvent;

const RECORD: &str = "mapped event";

/// Where the fields of a [`CustomerEvent`] are in an upstream JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InputMapping {
    /// Pointer to the customer id (text or number), e.g. `/account/id`.
    pub customer_id: String,
    /// Pointer to the event type, e.g. `/kind`.
    #[serde(default)]
    pub event_type: Option<String>,
    /// One event type for every record (instead of `event-type`).
    #[serde(default)]
    pub fixed_type: Option<String>,
    /// Pointer to the event time: RFC 3339 text, or milliseconds since the epoch.
    pub occurred_at: String,
    /// Pointer to a unique event id; when absent, the id is a UUID v5 of the whole value, so
    /// a value sent twice is a duplicate.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Attribute name → pointer; text, numbers and booleans are kept as text, missing ones
    /// are left out.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl InputMapping {
    /// What is wrong with the mapping, naming the setting (`input-mapping.customer-id`).
    pub fn validate(&self) -> Result<(), String> {
        let pointers = [
            ("customer-id", Some(&self.customer_id)),
            ("event-type", self.event_type.as_ref()),
            ("occurred-at", Some(&self.occurred_at)),
            ("event-id", self.event_id.as_ref()),
        ];
        let attributes = self.attributes.iter().map(|(k, v)| (k.as_str(), Some(v)));
        for (name, pointer) in pointers.into_iter().chain(attributes) {
            if let Some(p) = pointer
                && !p.starts_with('/')
            {
                return Err(format!(
                    "input-mapping.{name}: `{p}` is not a JSON pointer; write it as /field/inner (RFC 6901)"
                ));
            }
        }
        match (&self.event_type, &self.fixed_type) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(
                "input-mapping: give exactly one of event-type (a pointer) and fixed-type (one type for every record)"
                    .to_owned(),
            ),
        }
    }

    /// Maps one JSON value to a customer event.
    pub fn decode(&self, bytes: &[u8]) -> Result<CustomerEvent, CodecError> {
        if bytes.is_empty() {
            return Err(CodecError::Empty { record: RECORD });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| CodecError::NotJson {
            record: RECORD,
            reason: e.to_string(),
            hint: "",
        })?;
        let text = |setting: &str, pointer: &str| -> Result<String, CodecError> {
            match value.pointer(pointer) {
                None | Some(Value::Null) => Err(CodecError::MissingField {
                    format: "JSON",
                    record: RECORD,
                    field: format!("{pointer} (input-mapping.{setting})"),
                }),
                Some(v) => scalar(v).ok_or_else(|| CodecError::BadJson {
                    record: RECORD,
                    reason: format!(
                        "{pointer} (input-mapping.{setting}) is an object or an array, not a value"
                    ),
                }),
            }
        };
        let customer_id = text("customer-id", &self.customer_id)?;
        let event_type = match (&self.event_type, &self.fixed_type) {
            (Some(p), _) => text("event-type", p)?,
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("validated: one of event-type and fixed-type"),
        };
        let occurred_at = match value.pointer(&self.occurred_at) {
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| CodecError::BadJson {
                record: RECORD,
                reason: format!(
                    "{} (input-mapping.occurred-at) is {n}, not whole milliseconds since the epoch",
                    self.occurred_at
                ),
            })?,
            _ => {
                let t = text("occurred-at", &self.occurred_at)?;
                crate::model::parse_millis(&t).map_err(|e| CodecError::BadJson {
                    record: RECORD,
                    reason: format!(
                        "{} (input-mapping.occurred-at) is `{t}`, not an RFC 3339 time or milliseconds: {e}",
                        self.occurred_at
                    ),
                })?
            }
        };
        let event_id = match &self.event_id {
            Some(p) => text("event-id", p)?,
            None => uuid::Uuid::new_v5(&MAPPED_ID_NAMESPACE, bytes).to_string(),
        };
        let attributes = self
            .attributes
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), scalar(value.pointer(p)?)?)))
            .collect();
        Ok(CustomerEvent {
            event_id,
            customer_id,
            event_type,
            occurred_at,
            attributes,
        })
    }
}

/// Namespace of the ids Waymark gives mapped events that carry none.
const MAPPED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5761_796d_6172_6b00_8000_0000_0000_0002);

/// A JSON value as attribute text: strings as they are, numbers and booleans printed; `None`
/// for null, objects and arrays.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> InputMapping {
        serde_saphyr::from_str(
            "customer-id: /account/id\nevent-type: /kind\noccurred-at: /ts\nevent-id: /id\nattributes:\n  email: /account/email\n  amount: /order/amount\n  vip: /account/vip\n",
        )
        .unwrap()
    }

    #[test]
    fn a_foreign_event_maps_to_a_customer_event() {
        let m = mapping();
        m.validate().unwrap();
        let ev = m
            .decode(br#"{"id":"o-1","kind":"order.placed","ts":"2026-03-01T10:00:00Z","account":{"id":42,"email":"a@example.com","vip":true},"order":{"amount":19.5}}"#)
            .unwrap();
        assert_eq!(ev.event_id, "o-1");
        assert_eq!(ev.customer_id, "42");
        assert_eq!(ev.event_type, "order.placed");
        assert_eq!(
            ev.occurred_at,
            crate::model::parse_millis("2026-03-01T10:00:00Z").unwrap()
        );
        assert_eq!(ev.attributes["email"], "a@example.com");
        assert_eq!(ev.attributes["amount"], "19.5");
        assert_eq!(ev.attributes["vip"], "true");
        // Epoch milliseconds work too, and a missing attribute is left out.
        let ev = m
            .decode(br#"{"id":"o-2","kind":"x","ts":1772359200000,"account":{"id":"c"}}"#)
            .unwrap();
        assert_eq!(ev.occurred_at, 1_772_359_200_000);
        assert!(ev.attributes.is_empty());
    }

    #[test]
    fn without_an_event_id_the_id_is_a_hash_of_the_value_so_a_resend_is_a_duplicate() {
        let mut m = mapping();
        m.event_id = None;
        m.event_type = None;
        m.fixed_type = Some("login.created".into());
        m.validate().unwrap();
        let a = m
            .decode(br#"{"ts":"2026-03-01T10:00:00Z","account":{"id":"c"}}"#)
            .unwrap();
        let b = m
            .decode(br#"{"ts":"2026-03-01T10:00:00Z","account":{"id":"c"}}"#)
            .unwrap();
        let c = m
            .decode(br#"{"ts":"2026-03-01T10:00:01Z","account":{"id":"c"}}"#)
            .unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, c.event_id);
        assert_eq!(a.event_type, "login.created");
    }

    #[test]
    fn what_the_mapping_cannot_read_is_refused_with_the_pointer_and_the_setting() {
        let m = mapping();
        let missing = m
            .decode(br#"{"id":"1","kind":"k","ts":"2026-03-01T10:00:00Z"}"#)
            .unwrap_err();
        assert_eq!(missing.kind(), "missing_field");
        assert!(
            missing
                .to_string()
                .contains("/account/id (input-mapping.customer-id)"),
            "{missing}"
        );
        let bad_time = m
            .decode(br#"{"id":"1","kind":"k","ts":"yesterday","account":{"id":"c"}}"#)
            .unwrap_err();
        assert_eq!(bad_time.kind(), "bad_value");
        assert!(
            bad_time.to_string().contains("input-mapping.occurred-at"),
            "{bad_time}"
        );
        let object = m
            .decode(
                br#"{"id":"1","kind":{"a":1},"ts":"2026-03-01T10:00:00Z","account":{"id":"c"}}"#,
            )
            .unwrap_err();
        assert!(
            object
                .to_string()
                .contains("/kind (input-mapping.event-type)"),
            "{object}"
        );
        assert_eq!(m.decode(b"not json").unwrap_err().kind(), "not_json");
        assert_eq!(m.decode(b"").unwrap_err().kind(), "empty");
    }

    #[test]
    fn a_bad_mapping_says_which_setting_to_fix() {
        let mut m = mapping();
        m.customer_id = "account.id".into();
        assert!(
            m.validate()
                .unwrap_err()
                .contains("input-mapping.customer-id")
        );
        let mut m = mapping();
        m.fixed_type = Some("x".into());
        assert!(
            m.validate()
                .unwrap_err()
                .contains("exactly one of event-type")
        );
    }
}
