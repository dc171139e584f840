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
//! Upstream Avro is mapped the same way (`input-format: avro` with a `schema-registry`): each
//! value is read with its own writer schema and the pointers walk the record as they would
//! its JSON form ([`InputMapping::decode_avro`]).
//!
//! A record the mapping cannot read (a missing customer id, a time that is not a time) is
//! refused with an error naming the pointer and the setting, and goes to the dead-letter topic.

use std::collections::BTreeMap;

use apache_avro::types::Value as AvroValue;
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
        self.map(&value, bytes, "JSON")
    }

    /// Maps one Avro value in the Confluent wire format (magic byte, schema id, datum) to a
    /// customer event: the writer schema comes from `schemas` (the schema registry), the
    /// datum is read with it, and the pointers walk the record as they would its JSON form
    /// (`/order/customer/id`; a union is its branch's value; an enum its symbol; timestamps
    /// in milliseconds, micro- and nanosecond ones converted).
    pub fn decode_avro(
        &self,
        bytes: &[u8],
        schemas: &dyn super::SchemaLookup,
    ) -> Result<CustomerEvent, CodecError> {
        if bytes.is_empty() {
            return Err(CodecError::Empty { record: RECORD });
        }
        let value = super::decode_with_writer_schema(bytes, schemas, RECORD)?;
        self.map(&avro_to_json(value), bytes, "Avro")
    }

    /// The customer event the pointers find in `value`; `whole` (the record's bytes) seeds
    /// the event id when no `event-id` pointer is set.
    fn map(
        &self,
        value: &Value,
        whole: &[u8],
        format: &'static str,
    ) -> Result<CustomerEvent, CodecError> {
        let text = |setting: &str, pointer: &str| -> Result<String, CodecError> {
            match value.pointer(pointer) {
                None | Some(Value::Null) => Err(CodecError::MissingField {
                    format,
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
            None => uuid::Uuid::new_v5(&MAPPED_ID_NAMESPACE, whole).to_string(),
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

/// An Avro value as the JSON value the pointers walk: records and maps are objects, unions
/// their branch, enums their symbol, every timestamp milliseconds since the epoch (so
/// `occurred-at` reads a `timestamp-micros` field right), bytes and fixed arrays of numbers.
/// A float that JSON cannot hold (NaN, infinity) is null.
fn avro_to_json(value: AvroValue) -> Value {
    match value {
        AvroValue::Union(_, inner) => avro_to_json(*inner),
        AvroValue::Record(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect(),
        ),
        AvroValue::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, avro_to_json(v)))
                .collect(),
        ),
        AvroValue::Array(items) => Value::Array(items.into_iter().map(avro_to_json).collect()),
        AvroValue::TimestampMicros(t) | AvroValue::LocalTimestampMicros(t) => {
            Value::from(t.div_euclid(1_000))
        }
        AvroValue::TimestampNanos(t) | AvroValue::LocalTimestampNanos(t) => {
            Value::from(t.div_euclid(1_000_000))
        }
        leaf => Value::try_from(leaf).unwrap_or(Value::Null),
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

    /// An upstream Avro record with a union, an enum, a nested record and a microsecond time.
    const SHIPMENT: &str = r#"{"type":"record","name":"Shipment","namespace":"com.acme","fields":[
        {"name":"id","type":"string"},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["SHIPPED","RETURNED"]}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"account","type":{"type":"record","name":"Account","fields":[
            {"name":"id","type":["null","long"]},
            {"name":"email","type":["null","string"],"default":null},
            {"name":"vip","type":"boolean"}]}},
        {"name":"order","type":{"type":"map","values":"double"}}]}"#;

    fn shipment(account_id: Option<i64>) -> Vec<u8> {
        use apache_avro::types::Value as A;
        let schema = apache_avro::Schema::parse_str(SHIPMENT).unwrap();
        let id = match account_id {
            Some(n) => A::Union(1, Box::new(A::Long(n))),
            None => A::Union(0, Box::new(A::Null)),
        };
        let record = A::Record(vec![
            ("id".into(), A::String("s-1".into())),
            ("kind".into(), A::Enum(1, "RETURNED".into())),
            ("ts".into(), A::TimestampMicros(1_772_359_200_000_123)),
            (
                "account".into(),
                A::Record(vec![
                    ("id".into(), id),
                    (
                        "email".into(),
                        A::Union(1, Box::new(A::String("a@example.com".into()))),
                    ),
                    ("vip".into(), A::Boolean(true)),
                ]),
            ),
            (
                "order".into(),
                A::Map([("amount".to_owned(), A::Double(19.5))].into()),
            ),
        ]);
        let mut bytes = vec![0, 0, 0, 0, 42];
        bytes.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
        bytes
    }

    fn shipments() -> super::super::InMemorySchemas {
        let mut schemas = super::super::InMemorySchemas::new();
        schemas.insert(42, apache_avro::Schema::parse_str(SHIPMENT).unwrap());
        schemas
    }

    #[test]
    fn a_foreign_avro_record_maps_with_its_writer_schema_like_its_json_form() {
        let ev = mapping()
            .decode_avro(&shipment(Some(7)), &shipments())
            .unwrap();
        assert_eq!(ev.event_id, "s-1");
        assert_eq!(ev.customer_id, "7", "a union's branch, a long as text");
        assert_eq!(ev.event_type, "RETURNED", "an enum's symbol");
        assert_eq!(
            ev.occurred_at, 1_772_359_200_000,
            "microseconds → milliseconds"
        );
        assert_eq!(ev.attributes["email"], "a@example.com");
        assert_eq!(ev.attributes["vip"], "true");
        assert_eq!(ev.attributes["amount"], "19.5", "a map value");
    }

    #[test]
    fn an_avro_record_the_mapping_cannot_read_is_refused_like_json() {
        let m = mapping();
        let missing = m.decode_avro(&shipment(None), &shipments()).unwrap_err();
        assert_eq!(missing.kind(), "missing_field");
        assert!(
            missing.to_string().starts_with(
                "Avro mapped event has no field `/account/id (input-mapping.customer-id)`"
            ),
            "{missing}"
        );
        let mut unknown = shipment(Some(7));
        unknown[4] = 43;
        assert_eq!(
            m.decode_avro(&unknown, &shipments()).unwrap_err().kind(),
            "unknown_schema"
        );
        let json = br#"{"id":"s-1"}"#;
        assert_eq!(
            m.decode_avro(json, &shipments()).unwrap_err().kind(),
            "bad_magic"
        );
        let mut cut = shipment(Some(7));
        cut.truncate(cut.len() - 3);
        let err = m.decode_avro(&cut, &shipments()).unwrap_err();
        assert_eq!(err.kind(), "truncated");
        assert!(
            err.to_string().starts_with("mapped event datum ends early"),
            "no schema version for an upstream record: {err}"
        );
        assert_eq!(
            m.decode_avro(b"", &shipments()).unwrap_err().kind(),
            "empty"
        );
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
