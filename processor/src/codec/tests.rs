//! Tests of the codec: round trips, framings, malformed input, and the schema-evolution rules
//! of `schemas/README.md` checked against every version in `schemas/history/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Samples.

fn customer_event() -> CustomerEvent {
    CustomerEvent {
        event_id: "e1".into(),
        customer_id: "c1".into(),
        event_type: "login.created".into(),
        occurred_at: 1_772_448_620_903,
        attributes: BTreeMap::from([("email".into(), "a@example.com".into())]),
    }
}

fn command() -> InterventionCommand {
    InterventionCommand {
        command_id: "cmd-1".into(),
        journey: "b2b-onboarding".into(),
        journey_version: 3,
        customer_id: "c1".into(),
        instance: 1,
        rule: "no-payment-account".into(),
        action: "call".into(),
        channel: Channel::ContactCenter,
        due_at: 1_772_794_220_903,
        template: None,
        variant: Some("B".into()),
        params: BTreeMap::from([("assignee".into(), "rep-17".into())]),
        attributes: BTreeMap::from([("phone".into(), "+4912345".into())]),
    }
}

fn journey_event() -> JourneyEvent {
    JourneyEvent {
        journey_event_id: "je-1".into(),
        journey: "b2b-onboarding".into(),
        journey_version: 3,
        customer_id: "c1".into(),
        instance: 1,
        event_type: JourneyEventType::CommandSuppressed,
        step: Some("payment".into()),
        at: 1_772_448_620_903,
        command_id: Some("cmd-1".into()),
        action: Some("email".into()),
        reason: Some("holdout of experiment invite-format".into()),
        variant: Some("holdout".into()),
    }
}

fn outcome() -> InterventionOutcome {
    InterventionOutcome {
        outcome_id: "cmd-1/delivered".into(),
        command_id: "cmd-1".into(),
        customer_id: "c1".into(),
        journey: "b2b-onboarding".into(),
        action: "email".into(),
        channel: Channel::Email,
        status: "delivered".into(),
        at: 1_772_448_620_903,
        detail: None,
    }
}

fn no_registry() -> InMemorySchemas {
    InMemorySchemas::new()
}

fn raw<T: AvroRecord>(record: &T) -> Vec<u8> {
    encode(record, Framing::Raw).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn round_trips<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T) {
    let bytes = encode(record, Framing::Raw).unwrap();
    assert_eq!(
        &decode::<T>(&bytes, Framing::Raw, &no_registry()).unwrap(),
        record
    );

    let framing = Framing::Confluent { schema_id: 42 };
    let schemas = InMemorySchemas::new().with_current::<T>(42);
    let bytes = encode(record, framing).unwrap();
    assert_eq!(&decode::<T>(&bytes, framing, &schemas).unwrap(), record);
}

fn any_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(any::<String>(), any::<String>(), 0..4)
}

fn any_channel() -> impl Strategy<Value = Channel> {
    prop::sample::select(Channel::ALL.to_vec())
}

prop_compose! {
    fn any_customer_event()(
        event_id in any::<String>(),
        customer_id in any::<String>(),
        event_type in any::<String>(),
        occurred_at in any::<i64>(),
        attributes in any_map(),
    ) -> CustomerEvent {
        CustomerEvent { event_id, customer_id, event_type, occurred_at, attributes }
    }
}

prop_compose! {
    fn any_command()(
        ids in any::<(String, String, String, String, String)>(),
        journey_version in any::<u32>(),
        instance in any::<u32>(),
        channel in any_channel(),
        due_at in any::<i64>(),
        template in any::<Option<String>>(),
        variant in any::<Option<String>>(),
        params in any_map(),
        attributes in any_map(),
    ) -> InterventionCommand {
        let (command_id, journey, customer_id, rule, action) = ids;
        let compact = |m: BTreeMap<String, String>| {
            m.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        InterventionCommand {
            command_id, journey: journey.into(), journey_version, customer_id: customer_id.into(),
            instance, rule: rule.into(), action: action.into(), channel, due_at,
            template: template.map(Into::into), variant: variant.map(Into::into),
            params: compact(params), attributes: compact(attributes),
        }
    }
}

prop_compose! {
    fn any_journey_event()(
        ids in any::<(String, String, String)>(),
        journey_version in any::<u32>(),
        instance in any::<u32>(),
        event_type in prop::sample::select(JourneyEventType::ALL.to_vec()),
        at in any::<i64>(),
        optionals in any::<(Option<String>, Option<String>, Option<String>, Option<String>, Option<String>)>(),
    ) -> JourneyEvent {
        let (journey_event_id, journey, customer_id) = ids;
        let (step, command_id, action, reason, variant) = optionals;
        JourneyEvent {
            journey_event_id, journey: journey.into(), journey_version,
            customer_id: customer_id.into(), instance, event_type, step: step.map(Into::into),
            at, command_id, action: action.map(Into::into), reason,
            variant: variant.map(Into::into),
        }
    }
}

prop_compose! {
    fn any_outcome()(
        ids in any::<(String, String, String, String, String, String)>(),
        channel in any_channel(),
        at in any::<i64>(),
        detail in any::<Option<String>>(),
    ) -> InterventionOutcome {
        let (outcome_id, command_id, customer_id, journey, action, status) = ids;
        InterventionOutcome {
            outcome_id, command_id, customer_id, journey, action, channel, status, at, detail,
        }
    }
}

proptest! {
    #[test]
    fn customer_events_round_trip(ev in any_customer_event()) {
        round_trips(&ev);
    }

    #[test]
    fn commands_round_trip(cmd in any_command()) {
        round_trips(&cmd);
    }

    #[test]
    fn journey_events_round_trip(ev in any_journey_event()) {
        round_trips(&ev);
    }

    #[test]
    fn outcomes_round_trip(outcome in any_outcome()) {
        round_trips(&outcome);
    }

    /// The direct writers of commands and journey events produce the bytes apache-avro's
    /// schema-validating encoder does (byte for byte where map order cannot differ: apache-avro
    /// writes a map in hash order), and they decode back to the record.
    #[test]
    fn direct_datum_writers_equal_the_validating_encoder(
        mut cmd in any_command(),
        ev in any_journey_event(),
    ) {
        for framing in [Framing::Raw, Framing::Confluent { schema_id: 7 }] {
            prop_assert_eq!(encode(&ev, framing).unwrap(), encode_validated(&ev, framing).unwrap());
            let schemas = InMemorySchemas::new().with_current::<InterventionCommand>(7);
            let fast = encode(&cmd, framing).unwrap();
            prop_assert_eq!(&decode::<InterventionCommand>(&fast, framing, &schemas).unwrap(), &cmd);
        }
        cmd.params = cmd.params.into_iter().take(1).collect();
        cmd.attributes = cmd.attributes.into_iter().take(1).collect();
        prop_assert_eq!(encode(&cmd, Framing::Raw).unwrap(), encode_validated(&cmd, Framing::Raw).unwrap());
    }

    /// The direct reader of customer events reads what the validating path reads, and
    /// rejects (leaving the error to that path) what it rejects: on valid datums, and on
    /// truncated, extended, corrupted and arbitrary bytes.
    #[test]
    fn the_direct_customer_event_reader_equals_the_validating_decoder(
        ev in any_customer_event(),
        cut in any::<prop::sample::Index>(),
        flip in (any::<prop::sample::Index>(), 1..=255u8),
        noise in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let bytes = encode(&ev, Framing::Raw).unwrap();
        prop_assert_eq!(CustomerEvent::read_datum(&bytes), Some(ev.clone()));
        let mut flipped = bytes.clone();
        flipped[flip.0.index(bytes.len())] ^= flip.1;
        let variants = [
            bytes[..cut.index(bytes.len())].to_vec(),
            [&bytes[..], &[0]].concat(),
            flipped,
            noise,
        ];
        for datum in variants {
            let validated =
                decode_validated::<CustomerEvent>(&datum, Framing::Raw, &no_registry()).ok();
            match CustomerEvent::read_datum(&datum) {
                Some(direct) => prop_assert_eq!(Some(&direct), validated.as_ref()),
                None => prop_assert!(validated.is_none(), "the validating path read {validated:?}"),
            }
            let decoded = decode::<CustomerEvent>(&datum, Framing::Raw, &no_registry()).ok();
            prop_assert_eq!(decoded, validated);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let schemas = InMemorySchemas::new().with_current::<CustomerEvent>(1);
        for framing in [Framing::Raw, Framing::Confluent { schema_id: 1 }] {
            if let Err(e) = decode::<CustomerEvent>(&bytes, framing, &schemas) {
                prop_assert!(CodecError::KINDS.contains(&e.kind()));
            }
            if let Err(e) = decode::<JourneyEvent>(&bytes, framing, &schemas) {
                prop_assert!(CodecError::KINDS.contains(&e.kind()));
            }
        }
        if let Err(e) = decode_customer_event_json(&bytes) {
            prop_assert!(CodecError::KINDS.contains(&e.kind()));
        }
    }
}

/// Map blocks with a negative count (followed by their size in bytes) and a repeated key
/// read the same both ways: the last value wins.
#[test]
fn the_direct_customer_event_reader_reads_sized_blocks_and_repeated_keys_as_apache_avro() {
    let mut datum = Vec::new();
    for s in ["e1", "c1", "login.created"] {
        binary::string(&mut datum, s);
    }
    binary::long(&mut datum, 1_772_448_620_903);
    let mut block = Vec::new();
    for s in ["plan", "basic", "plan", "pro"] {
        binary::string(&mut block, s);
    }
    binary::long(&mut datum, -2);
    binary::long(&mut datum, block.len() as i64);
    datum.extend_from_slice(&block);
    binary::long(&mut datum, 1);
    binary::string(&mut datum, "email");
    binary::string(&mut datum, "a@example.com");
    binary::long(&mut datum, 0);

    let validated =
        decode_validated::<CustomerEvent>(&datum, Framing::Raw, &no_registry()).unwrap();
    let direct = CustomerEvent::read_datum(&datum).expect("the direct reader reads it");
    assert_eq!(direct, validated);
    assert_eq!(
        direct.attributes,
        BTreeMap::from([
            ("email".to_owned(), "a@example.com".to_owned()),
            ("plan".to_owned(), "pro".to_owned()),
        ])
    );
}

#[test]
fn every_channel_and_journey_event_type_round_trips() {
    for channel in Channel::ALL {
        round_trips(&InterventionCommand {
            channel,
            ..command()
        });
        round_trips(&InterventionOutcome {
            channel,
            ..outcome()
        });
    }
    for event_type in JourneyEventType::ALL {
        round_trips(&JourneyEvent {
            event_type,
            ..journey_event()
        });
    }
}

#[test]
fn contact_center_is_spelled_with_an_underscore_on_the_wire() {
    let Value::Record(fields) = command().to_avro() else {
        panic!("not a record")
    };
    let channel = fields
        .iter()
        .find(|(n, _)| n == "channel")
        .map(|(_, v)| v.clone());
    assert_eq!(channel, Some(Value::Enum(2, "contact_center".into())));
    let bytes = raw(&command());
    let back: InterventionCommand = decode(&bytes, Framing::Raw, &no_registry()).unwrap();
    assert_eq!(back.channel, Channel::ContactCenter);
}

#[test]
fn confluent_framing_is_magic_byte_then_big_endian_schema_id_then_datum() {
    let bytes = encode(
        &outcome(),
        Framing::Confluent {
            schema_id: 0x0102_0304,
        },
    )
    .unwrap();
    assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
    assert_eq!(&bytes[5..], raw(&outcome()).as_slice());
}

// ---------------------------------------------------------------------------------------------
// Malformed input.

#[test]
fn bad_magic_byte_is_reported_with_a_json_hint_when_it_looks_like_json() {
    let schemas = InMemorySchemas::new().with_current::<CustomerEvent>(1);
    let framing = Framing::Confluent { schema_id: 1 };
    let err = decode::<CustomerEvent>(br#"{"event_id":"e"}"#, framing, &schemas).unwrap_err();
    assert_eq!(err.kind(), "bad_magic");
    let msg = err.to_string();
    assert!(
        msg.contains("0x7b") && msg.contains("input-format: json"),
        "{msg}"
    );

    let mut bytes = encode(&customer_event(), framing).unwrap();
    bytes[0] = 7;
    let err = decode::<CustomerEvent>(&bytes, framing, &schemas).unwrap_err();
    assert_eq!(err.kind(), "bad_magic");
    assert!(err.to_string().contains("magic byte 0x07"), "{err}");
}

#[test]
fn json_bytes_read_as_raw_avro_are_not_avro_with_a_hint() {
    let err =
        decode::<CustomerEvent>(br#"{"event_id":"e"}"#, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "not_avro");
    let msg = err.to_string();
    assert!(
        msg.starts_with("record is not Avro CustomerEvent v1: "),
        "{msg}"
    );
    assert!(msg.contains("input-format: json"), "{msg}");
    assert!(msg.ends_with("check the producer's serializer"), "{msg}");
}

#[test]
fn confluent_bytes_read_as_raw_avro_hint_at_the_registry() {
    let bytes = encode(&customer_event(), Framing::Confluent { schema_id: 9 }).unwrap();
    let err = decode::<CustomerEvent>(&bytes, Framing::Raw, &no_registry()).unwrap_err();
    assert!(err.to_string().contains("Confluent wire format"), "{err}");
}

#[test]
fn every_truncation_is_detected() {
    let check = |bytes: &[u8], decode_it: &dyn Fn(&[u8]) -> Option<CodecError>| {
        for len in 1..bytes.len() {
            let err = decode_it(&bytes[..len]).expect("a prefix decoded");
            assert_eq!(err.kind(), "truncated", "prefix of {len} bytes: {err}");
        }
    };
    check(&raw(&customer_event()), &|b| {
        decode::<CustomerEvent>(b, Framing::Raw, &no_registry()).err()
    });
    check(&raw(&command()), &|b| {
        decode::<InterventionCommand>(b, Framing::Raw, &no_registry()).err()
    });
    check(&raw(&journey_event()), &|b| {
        decode::<JourneyEvent>(b, Framing::Raw, &no_registry()).err()
    });
    check(&raw(&outcome()), &|b| {
        decode::<InterventionOutcome>(b, Framing::Raw, &no_registry()).err()
    });

    let framing = Framing::Confluent { schema_id: 5 };
    let schemas = InMemorySchemas::new().with_current::<CustomerEvent>(5);
    let bytes = encode(&customer_event(), framing).unwrap();
    for len in 1..bytes.len() {
        let err = decode::<CustomerEvent>(&bytes[..len], framing, &schemas).unwrap_err();
        assert_eq!(err.kind(), "truncated", "prefix of {len} bytes: {err}");
    }
    let err = decode::<CustomerEvent>(&bytes[..3], framing, &schemas).unwrap_err();
    assert!(
        err.to_string()
            .contains("too short for the Confluent wire format"),
        "{err}"
    );
}

#[test]
fn a_value_cut_before_its_last_optional_field_is_truncated_not_null() {
    // apache-avro alone reads a missing union index as the null branch.
    let bytes = raw(&journey_event());
    let cut = &bytes[..bytes.len() - "holdout".len() - 2];
    let err = decode::<JourneyEvent>(cut, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "truncated", "{err}");
    assert!(
        err.to_string()
            .contains("the bytes end inside a union branch"),
        "{err}"
    );
}

#[test]
fn a_huge_block_count_is_rejected_before_anything_is_allocated() {
    // Four empty/zero fields, then a map block claiming 400 million entries: apache-avro
    // alone reserves room for all of them and aborts the process.
    let mut bytes = vec![0, 0, 0, 0];
    let mut count = 800_000_000u64; // zig-zag of 400 million
    while count >= 0x80 {
        bytes.push((count as u8 & 0x7f) | 0x80);
        count >>= 7;
    }
    bytes.push(count as u8);
    bytes.extend_from_slice(&[2, b'k']);
    let err = decode::<CustomerEvent>(&bytes, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "truncated", "{err}");

    let mut bytes = vec![0, 0, 0, 0];
    bytes.extend_from_slice(&[0xff; 11]);
    let err = decode::<CustomerEvent>(&bytes, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "not_avro", "{err}");
    assert!(
        err.to_string().contains("varint longer than 10 bytes"),
        "{err}"
    );
}

/// A writer schema (as a registry might hold) using every Avro type the walker knows.
const EVERY_TYPE: &str = r#"{
  "type": "record", "name": "Outer", "namespace": "x.y",
  "fields": [
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "by", "type": "bytes"},
    {"name": "s", "type": "string"},
    {"name": "fx", "type": {"type": "fixed", "name": "F4", "size": 4}},
    {"name": "fx2", "type": "F4"},
    {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
    {"name": "a", "type": {"type": "array", "items": "string"}},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "n", "type": ["null", "Inner"], "default": null}
    ]}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "u", "type": ["null", "string", "long"]}
  ]
}"#;

#[test]
fn the_datum_check_walks_every_avro_type() {
    let schema = Schema::parse_str(EVERY_TYPE).unwrap();
    let value = Value::Record(vec![
        ("b".into(), Value::Boolean(true)),
        ("i".into(), Value::Int(-300)),
        ("l".into(), Value::Long(i64::MIN)),
        ("f".into(), Value::Float(1.5)),
        ("d".into(), Value::Double(2.5)),
        ("by".into(), Value::Bytes(vec![1, 2, 3])),
        ("s".into(), Value::String("hé".into())),
        ("fx".into(), Value::Fixed(4, vec![1, 2, 3, 4])),
        ("fx2".into(), Value::Fixed(4, vec![5, 6, 7, 8])),
        ("e".into(), Value::Enum(1, "B".into())),
        (
            "a".into(),
            Value::Array(vec![Value::String("x".into()), Value::String("".into())]),
        ),
        (
            "m".into(),
            Value::Map([("k".to_owned(), Value::Long(9))].into_iter().collect()),
        ),
        (
            "inner".into(),
            Value::Record(vec![(
                "n".into(),
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![(
                        "n".into(),
                        Value::Union(0, Box::new(Value::Null)),
                    )])),
                ),
            )]),
        ),
        ("date".into(), Value::Date(19_000)),
        ("ts".into(), Value::TimestampMicros(1_772_448_620_903_000)),
        ("u".into(), Value::Union(2, Box::new(Value::Long(5)))),
    ]);
    let bytes = apache_avro::to_avro_datum(&schema, value).unwrap();
    assert_eq!(DatumCheck::new(&schema, &bytes).run().unwrap(), bytes.len());
    for len in 0..bytes.len() {
        match DatumCheck::new(&schema, &bytes[..len]).run() {
            Err(DatumError::Truncated { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
    let mut bad_bool = bytes.clone();
    bad_bool[0] = 2;
    assert!(matches!(
        DatumCheck::new(&schema, &bad_bool).run(),
        Err(DatumError::Invalid(_))
    ));
}

#[test]
fn deeply_nested_values_are_refused() {
    let schema = Schema::parse_str(
        r#"{"type": "record", "name": "L", "fields": [{"name": "n", "type": ["null", "L"]}]}"#,
    )
    .unwrap();
    let mut bytes = vec![2u8; 10_000];
    bytes.push(0);
    match DatumCheck::new(&schema, &bytes).run() {
        Err(DatumError::Invalid(why)) => assert!(why.contains("nested deeper"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_values_are_their_own_kind() {
    let err = decode::<CustomerEvent>(&[], Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "empty");
    let err = decode_customer_event_json(b"").unwrap_err();
    assert_eq!(err.kind(), "empty");
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = raw(&customer_event());
    bytes.extend_from_slice(&[2, 0]);
    let err = decode::<CustomerEvent>(&bytes, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "trailing_bytes");
    assert!(
        err.to_string()
            .starts_with("2 bytes left over after a complete CustomerEvent v1")
    );
}

#[test]
fn unknown_schema_id_is_reported() {
    let bytes = encode(&customer_event(), Framing::Confluent { schema_id: 17 }).unwrap();
    let schemas = InMemorySchemas::new().with_current::<CustomerEvent>(1);
    let err =
        decode::<CustomerEvent>(&bytes, Framing::Confluent { schema_id: 1 }, &schemas).unwrap_err();
    assert_eq!(err.kind(), "unknown_schema");
    assert!(err.to_string().starts_with("unknown schema id 17"), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn an_unreachable_registry_is_retryable_not_bad_input() {
    struct Down;
    impl SchemaLookup for Down {
        fn writer_schema(&self, _id: u32) -> Result<Arc<Schema>, LookupError> {
            Err(LookupError::Unavailable("connection refused".into()))
        }
    }
    let bytes = encode(&customer_event(), Framing::Confluent { schema_id: 3 }).unwrap();
    let err =
        decode::<CustomerEvent>(&bytes, Framing::Confluent { schema_id: 3 }, &Down).unwrap_err();
    assert_eq!(err.kind(), "registry_unavailable");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[test]
fn out_of_range_numbers_are_bad_values() {
    let Value::Record(mut fields) = command().to_avro() else {
        panic!("not a record")
    };
    for (name, value) in &mut fields {
        if name == "journey_version" {
            *value = Value::Long(-1);
        }
    }
    let bytes =
        apache_avro::to_avro_datum(InterventionCommand::schema(), Value::Record(fields)).unwrap();
    let err = decode::<InterventionCommand>(&bytes, Framing::Raw, &no_registry()).unwrap_err();
    assert_eq!(err.kind(), "bad_value");
    assert!(
        err.to_string().contains("`journey_version`: -1 is outside"),
        "{err}"
    );
}

#[test]
fn a_writer_with_a_record_of_another_type_is_incompatible() {
    let framing = Framing::Confluent { schema_id: 8 };
    let schemas = InMemorySchemas::new().with_current::<InterventionOutcome>(8);
    let bytes = encode(&outcome(), framing).unwrap();
    let err = decode::<CustomerEvent>(&bytes, framing, &schemas).unwrap_err();
    assert_eq!(err.kind(), "missing_field");
    assert!(err.to_string().contains("no field `event_id`"), "{err}");
}

#[test]
fn an_enum_symbol_unknown_to_the_reader_is_incompatible_and_not_quoted() {
    let mut json = schema_json(INTERVENTION_OUTCOME_SCHEMA);
    let channel = &mut json["fields"][5]["type"]["symbols"];
    channel.as_array_mut().unwrap().push("push".into());
    let writer = Schema::parse(&json).unwrap();
    let Value::Record(mut fields) = outcome().to_avro() else {
        panic!("not a record")
    };
    for (name, value) in &mut fields {
        if name == "channel" {
            *value = Value::Enum(3, "push".into());
        }
    }
    let mut bytes = vec![0, 0, 0, 0, 4];
    bytes.extend(apache_avro::to_avro_datum(&writer, Value::Record(fields)).unwrap());
    let mut schemas = InMemorySchemas::new();
    schemas.insert(4, writer);
    let err = decode::<InterventionOutcome>(&bytes, Framing::Confluent { schema_id: 1 }, &schemas)
        .unwrap_err();
    assert_eq!(err.kind(), "incompatible_schema");
    let msg = err.to_string();
    assert!(
        msg.contains("schema id 4 (io.waymark.v1.InterventionOutcome)"),
        "{msg}"
    );
    assert!(msg.contains("symbols"), "{msg}");
    assert!(!msg.contains("cmd-1"), "values must not be quoted: {msg}");
}

// ---------------------------------------------------------------------------------------------
// JSON input.

const JSON_EVENT: &[u8] = br#"{"event_id": "e1", "customer_id": "c1", "type": "login.created",
    "occurred_at": "2026-03-02T10:50:20.903Z", "attributes": {"email": "a@example.com", "n": 3}}
"#;

#[test]
fn json_customer_events_decode() {
    let ev = decode_customer_event(JSON_EVENT, InputFormat::Json).unwrap();
    assert_eq!(ev.occurred_at, 1_772_448_620_903);
    assert_eq!(ev.attributes["n"], "3");
    assert_eq!(ev.event_type, "login.created");

    let avro = raw(&ev);
    let back = decode_customer_event(&avro, InputFormat::Avro).unwrap();
    assert_eq!(back, ev);
}

#[test]
fn json_errors_have_kinds() {
    let err = decode_customer_event_json(b"{\"event_id\": ").unwrap_err();
    assert_eq!(err.kind(), "not_json");

    let err = decode_customer_event_json(
        br#"{"event_id":"e","type":"t","occurred_at":"2026-03-02T10:50:20Z"}"#,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "missing_field");
    assert!(
        err.to_string()
            .starts_with("JSON CustomerEvent has no field `customer_id`"),
        "{err}"
    );

    let err = decode_customer_event_json(
        br#"{"event_id":"e","customer_id":"c","type":"t","occurred_at":"yesterday"}"#,
    )
    .unwrap_err();
    assert_eq!(err.kind(), "bad_value");
    assert!(err.to_string().contains("RFC 3339"), "{err}");

    let avro = encode(&customer_event(), Framing::Confluent { schema_id: 1 }).unwrap();
    let err = decode_customer_event_json(&avro).unwrap_err();
    assert_eq!(err.kind(), "not_json");
    assert!(err.to_string().contains("input-format: avro"), "{err}");
}

#[test]
fn input_format_is_configured_in_kebab_case() {
    let f: InputFormat = serde_json::from_str("\"json\"").unwrap();
    assert_eq!(f, InputFormat::Json);
    assert_eq!(InputFormat::default(), InputFormat::Avro);
    assert_eq!(Framing::default(), Framing::Raw);
}

#[test]
fn error_kinds_are_short_and_listed() {
    let errors = [
        CodecError::Empty { record: "X" },
        CodecError::TruncatedHeader { len: 2 },
        CodecError::BadMagic { byte: 1 },
        CodecError::UnknownSchema { id: 1 },
        CodecError::UnusableSchema {
            id: 1,
            reason: "r".into(),
        },
        CodecError::Encode {
            record: "X",
            reason: "r".into(),
        },
    ];
    for e in &errors {
        assert!(CodecError::KINDS.contains(&e.kind()), "{}", e.kind());
    }
    for kind in CodecError::KINDS {
        assert!(kind.len() <= 24 && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas: documented, conventional, and the same `Channel` everywhere.

/// (history directory, current schema text, current parsed schema, current version)
fn schemas() -> [(&'static str, &'static str, &'static Schema, u32); 4] {
    [
        (
            "customer_event",
            CUSTOMER_EVENT_SCHEMA,
            CustomerEvent::schema(),
            CustomerEvent::VERSION,
        ),
        (
            "intervention_command",
            INTERVENTION_COMMAND_SCHEMA,
            InterventionCommand::schema(),
            InterventionCommand::VERSION,
        ),
        (
            "journey_event",
            JOURNEY_EVENT_SCHEMA,
            JourneyEvent::schema(),
            JourneyEvent::VERSION,
        ),
        (
            "intervention_outcome",
            INTERVENTION_OUTCOME_SCHEMA,
            InterventionOutcome::schema(),
            InterventionOutcome::VERSION,
        ),
    ]
}

fn schema_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn schemas_document_every_field_and_follow_the_conventions() {
    for (name, text, _, _) in schemas() {
        let json = schema_json(text);
        assert_eq!(json["namespace"], "io.waymark.v1", "{name}");
        assert!(
            json["doc"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: record doc"
        );
        for field in json["fields"].as_array().unwrap() {
            let fname = &field["name"];
            assert!(
                field["doc"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}.{fname}: doc"
            );
            let ty = &field["type"];
            if let Some(branches) = ty.as_array() {
                assert_eq!(branches[0], "null", "{name}.{fname}: null first in unions");
                assert_eq!(field["default"], serde_json::Value::Null, "{name}.{fname}");
                assert!(
                    field.get("default").is_some(),
                    "{name}.{fname}: default null"
                );
            }
            if ty["type"] == "map" {
                assert_eq!(field["default"], serde_json::json!({}), "{name}.{fname}");
            }
            if fname
                .as_str()
                .is_some_and(|n| n.ends_with("_at") || n == "at")
            {
                assert_eq!(ty["logicalType"], "timestamp-millis", "{name}.{fname}");
            }
            if ty["type"] == "enum" {
                assert!(ty["doc"].is_string(), "{name}.{fname}: enum doc");
            }
        }
    }
}

#[test]
fn the_channel_enum_is_the_same_in_every_schema() {
    let channel = |text: &str| {
        let json = schema_json(text);
        json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "channel")
            .map(|f| f["type"].clone())
            .unwrap()
    };
    assert_eq!(
        channel(INTERVENTION_COMMAND_SCHEMA),
        channel(INTERVENTION_OUTCOME_SCHEMA)
    );
}

// ---------------------------------------------------------------------------------------------
// Evolution: every historical version can be read by the current schema.

fn history_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/history")
        .join(name)
}

/// The historical versions of a schema, `v1.avsc` ..= `vN.avsc`, in order.
fn history(name: &str) -> Vec<(u32, String)> {
    let dir = history_dir(name);
    let mut versions: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let n = file
                .strip_prefix('v')
                .and_then(|f| f.strip_suffix(".avsc"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: name history files vN.avsc", path.display()));
            (n, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    versions.sort_by_key(|(n, _)| *n);
    versions
}

/// A value of `schema` with every field set: strings are the field's name, numbers 7, enums
/// their last symbol, maps one entry; unions take their first non-null branch when `filled`,
/// else null.
fn sample(schema: &Schema, filled: bool, name: &str) -> Value {
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(7),
        Schema::Long => Value::Long(7),
        Schema::Float => Value::Float(7.0),
        Schema::Double => Value::Double(7.0),
        Schema::Bytes => Value::Bytes(name.as_bytes().to_vec()),
        Schema::String => Value::String(name.to_owned()),
        Schema::TimestampMillis => Value::TimestampMillis(1_772_448_620_903),
        Schema::Enum(e) => {
            let last = e.symbols.len() - 1;
            Value::Enum(u32::try_from(last).unwrap(), e.symbols[last].clone())
        }
        Schema::Union(u) => {
            let variants = u.variants();
            let index = variants
                .iter()
                .position(|v| (*v == Schema::Null) != filled)
                .unwrap_or(0);
            let inner = sample(&variants[index], filled, name);
            Value::Union(u32::try_from(index).unwrap(), Box::new(inner))
        }
        Schema::Map(m) => Value::Map(
            [("k".to_owned(), sample(&m.types, filled, name))]
                .into_iter()
                .collect(),
        ),
        Schema::Array(a) => Value::Array(vec![sample(&a.items, filled, name)]),
        Schema::Record(RecordSchema { fields, .. }) => Value::Record(
            fields
                .iter()
                .map(|f| (f.name.clone(), sample(&f.schema, filled, &f.name)))
                .collect(),
        ),
        other => panic!("the test's sample generator does not know {other:?}; extend it"),
    }
}

/// Compares values across schema versions: unions unwrapped, ints/longs/timestamps as i64,
/// enums as their symbol.
fn normalise(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => normalise(*inner),
        Value::Int(n) => Value::Long(i64::from(n)),
        Value::TimestampMillis(n) => Value::Long(n),
        Value::Enum(_, symbol) => Value::String(symbol),
        Value::Map(map) => Value::Map(map.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        other => other,
    }
}

fn record_fields(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Record(fields) => fields,
        other => panic!("not a record: {other:?}"),
    }
}

/// The rules of `schemas/README.md` for one old writer version and the current reader `T`:
/// Avro's compatibility check passes, no field disappears (Rust's resolver ignores aliases, so a
/// rename would silently lose data), and samples written with the old schema decode through the
/// real Confluent path with every shared field intact.
fn readable_by_current<T: AvroRecord>(old: &Schema, reader: &Schema) -> Result<(), String> {
    SchemaCompatibility::can_read(old, reader).map_err(|e| error_chain(&e))?;
    let Schema::Record(old_record) = old else {
        return Err("not a record schema".into());
    };
    let Schema::Record(new_record) = reader else {
        return Err("not a record schema".into());
    };
    for f in &old_record.fields {
        if !new_record.lookup.contains_key(&f.name) {
            return Err(format!("field `{}` was removed or renamed", f.name));
        }
    }
    for filled in [true, false] {
        let written = sample(old, filled, "");
        let datum = apache_avro::to_avro_datum(old, written.clone()).map_err(|e| e.to_string())?;
        let mut bytes = vec![CONFLUENT_MAGIC];
        bytes.extend_from_slice(&99u32.to_be_bytes());
        bytes.extend_from_slice(&datum);
        let mut schemas = InMemorySchemas::new();
        schemas.insert(99, old.clone());
        let value = apache_avro::from_avro_datum(old, &mut datum.as_slice(), None)
            .and_then(|v| v.resolve(reader))
            .map_err(|e| e.to_string())?;
        // For the real current schema also go through `decode` and the model type.
        let reread = if std::ptr::eq(reader, T::schema()) {
            let record: T = decode(&bytes, Framing::Confluent { schema_id: 1 }, &schemas)
                .map_err(|e| e.to_string())?;
            record.to_avro()
        } else {
            value
        };
        let reread = record_fields(reread);
        for (name, old_value) in record_fields(written) {
            let new_value = reread
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone());
            if new_value.map(normalise) != Some(normalise(old_value)) {
                return Err(format!("field `{name}` does not survive the round trip"));
            }
        }
    }
    Ok(())
}

fn check_history<T: AvroRecord>(name: &str, text: &str, current_version: u32) {
    let versions = history(name);
    let numbers: Vec<u32> = versions.iter().map(|(n, _)| *n).collect();
    let expected: Vec<u32> = (1..=current_version).collect();
    assert_eq!(
        numbers,
        expected,
        "schemas/history/{name}/ must hold v1.avsc ..= v{current_version}.avsc \
         ({}::VERSION = {current_version})",
        T::NAME
    );
    let (_, latest) = versions.last().unwrap();
    assert_eq!(
        schema_json(latest),
        schema_json(text),
        "schemas/{name}.avsc differs from schemas/history/{name}/v{current_version}.avsc: a \
         released schema is frozen; copy the changed schema to v{}.avsc and bump VERSION",
        current_version + 1
    );
    for (n, old_text) in &versions {
        let old = Schema::parse_str(old_text).unwrap();
        if let Err(why) = readable_by_current::<T>(&old, T::schema()) {
            panic!("schemas/{name}.avsc cannot read data written with history v{n}: {why}");
        }
    }
}

#[test]
fn the_current_schemas_read_every_historical_version() {
    for (name, text, schema, version) in schemas() {
        assert!(!history(name).is_empty(), "{name}");
        assert!(SchemaCompatibility::can_read(schema, schema).is_ok());
        match name {
            "customer_event" => check_history::<CustomerEvent>(name, text, version),
            "intervention_command" => check_history::<InterventionCommand>(name, text, version),
            "journey_event" => check_history::<JourneyEvent>(name, text, version),
            "intervention_outcome" => check_history::<InterventionOutcome>(name, text, version),
            other => panic!("no record type for {other}"),
        }
    }
}

/// `f` changed in the JSON of the current `T` schema.
fn variant_of<T: AvroRecord>(f: impl FnOnce(&mut serde_json::Value)) -> Schema {
    let mut json = schema_json(T::SCHEMA_TEXT);
    f(&mut json);
    Schema::parse(&json).unwrap()
}

fn field_index(json: &serde_json::Value, name: &str) -> usize {
    json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .position(|f| f["name"] == name)
        .unwrap()
}

#[test]
fn the_evolution_check_rejects_incompatible_changes() {
    let current = CustomerEvent::schema();
    let incompatible = [
        (
            "a new field without a default",
            variant_of::<CustomerEvent>(|j| {
                j["fields"].as_array_mut().unwrap().push(serde_json::json!(
                    {"name": "tenant", "type": "string", "doc": "d"}
                ));
            }),
        ),
        (
            "a changed type",
            variant_of::<CustomerEvent>(|j| {
                let i = field_index(j, "customer_id");
                j["fields"][i]["type"] = "long".into();
            }),
        ),
        (
            "a renamed field, even with an alias",
            variant_of::<CustomerEvent>(|j| {
                let i = field_index(j, "event_id");
                j["fields"][i]["name"] = "id".into();
                j["fields"][i]["aliases"] = serde_json::json!(["event_id"]);
            }),
        ),
        (
            "a removed field",
            variant_of::<CustomerEvent>(|j| {
                let i = field_index(j, "attributes");
                j["fields"].as_array_mut().unwrap().remove(i);
            }),
        ),
    ];
    for (what, reader) in &incompatible {
        // The current schema plays the old writer, the variant the would-be new reader.
        let verdict = readable_by_current::<CustomerEvent>(current, reader);
        assert!(verdict.is_err(), "{what} was not detected");
    }

    let removed_symbol = variant_of::<JourneyEvent>(|j| {
        let i = field_index(j, "type");
        j["fields"][i]["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .pop();
    });
    assert!(readable_by_current::<JourneyEvent>(JourneyEvent::schema(), &removed_symbol).is_err());
}

#[test]
fn the_evolution_check_accepts_compatible_changes() {
    let compatible = [
        variant_of::<InterventionCommand>(|j| {
            j["fields"].as_array_mut().unwrap().push(serde_json::json!(
                {"name": "priority", "type": ["null", "string"], "default": null, "doc": "d"}
            ));
        }),
        variant_of::<InterventionCommand>(|j| {
            let i = field_index(j, "channel");
            j["fields"][i]["type"]["symbols"]
                .as_array_mut()
                .unwrap()
                .push("push".into());
        }),
        variant_of::<InterventionCommand>(|j| {
            let i = field_index(j, "rule");
            j["fields"][i]["type"] = serde_json::json!(["null", "string"]);
            j["fields"][i]["default"] = serde_json::Value::Null;
        }),
    ];
    for reader in &compatible {
        let verdict =
            readable_by_current::<InterventionCommand>(InterventionCommand::schema(), reader);
        assert_eq!(verdict, Ok(()));
    }
}

#[test]
fn records_from_an_older_writer_take_defaults_and_from_a_newer_writer_drop_extras() {
    // An older producer: no `variant`, no `params`.
    let older = variant_of::<InterventionCommand>(|j| {
        let fields = j["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "variant" && f["name"] != "params");
    });
    let mut value = record_fields(command().to_avro());
    value.retain(|(n, _)| n != "variant" && n != "params");
    let mut bytes = vec![0, 0, 0, 0, 11];
    bytes.extend(apache_avro::to_avro_datum(&older, Value::Record(value)).unwrap());
    let mut schemas = InMemorySchemas::new();
    schemas.insert(11, older);
    let cmd: InterventionCommand =
        decode(&bytes, Framing::Confluent { schema_id: 1 }, &schemas).unwrap();
    assert_eq!(cmd.variant, None);
    assert!(cmd.params.is_empty());
    assert_eq!(cmd.attributes, command().attributes);

    // A newer producer with an extra optional field.
    let newer = variant_of::<InterventionCommand>(|j| {
        j["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "priority", "type": ["null", "string"], "default": null, "doc": "d"}
        ));
    });
    let mut value = record_fields(command().to_avro());
    value.push((
        "priority".into(),
        Value::Union(1, Box::new(Value::String("high".into()))),
    ));
    let mut bytes = vec![0, 0, 0, 0, 12];
    bytes.extend(apache_avro::to_avro_datum(&newer, Value::Record(value)).unwrap());
    schemas.insert(12, newer);
    let cmd: InterventionCommand =
        decode(&bytes, Framing::Confluent { schema_id: 1 }, &schemas).unwrap();
    assert_eq!(cmd, command());
}
