//! The wire format of Waymark's records: Avro, plus the JSON form of customer events.
//!
//! Owns the schemas in `schemas/*.avsc` (compiled in and parsed once), the conversion between
//! the [`crate::model`] records and Avro values, the two framings of a Kafka value
//! ([`Framing::Raw`]: a bare Avro datum; [`Framing::Confluent`]: magic byte, schema id, datum),
//! writer-to-reader schema resolution for records written with older schema versions, and
//! [`CodecError`], which says what is wrong with a value's bytes and carries a bounded
//! [`CodecError::kind`] for dead-letter headers and metric labels.
//!
//! Must not know journeys, topics or Kafka clients: callers hand in bytes and a framing and get
//! records back (or the reverse). A schema registry client plugs in through [`SchemaLookup`].
//! Checking what a decoded record *says* (an empty customer id, a time in the future) is the
//! pipeline's job, not this module's.
//!
//! Schemas evolve under the rules in `schemas/README.md`; the tests of this module check every
//! version kept in `schemas/history/` against the current schema, so a change that would stop
//! Waymark from reading old records fails the build.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use apache_avro::Schema;
use apache_avro::error::Details;
use apache_avro::schema::SchemaKind;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

use crate::model::{
    Channel, CustomerEvent, InterventionCommand, InterventionOutcome, JourneyEvent,
    JourneyEventType, Millis,
};

mod mapping;
#[cfg(test)]
mod tests;

pub use mapping::InputMapping;

/// Text of `schemas/customer_event.avsc`, e.g. to register with a schema registry.
pub const CUSTOMER_EVENT_SCHEMA: &str = include_str!("../../schemas/customer_event.avsc");
/// Text of `schemas/intervention_command.avsc`, e.g. to register with a schema registry.
pub const INTERVENTION_COMMAND_SCHEMA: &str =
    include_str!("../../schemas/intervention_command.avsc");
/// Text of `schemas/journey_event.avsc`, e.g. to register with a schema registry.
pub const JOURNEY_EVENT_SCHEMA: &str = include_str!("../../schemas/journey_event.avsc");
/// Text of `schemas/intervention_outcome.avsc`, e.g. to register with a schema registry.
pub const INTERVENTION_OUTCOME_SCHEMA: &str =
    include_str!("../../schemas/intervention_outcome.avsc");

static CUSTOMER_EVENT: LazyLock<Schema> =
    LazyLock::new(|| parse_embedded(CUSTOMER_EVENT_SCHEMA, "customer_event.avsc"));
static INTERVENTION_COMMAND: LazyLock<Schema> =
    LazyLock::new(|| parse_embedded(INTERVENTION_COMMAND_SCHEMA, "intervention_command.avsc"));
static JOURNEY_EVENT: LazyLock<Schema> =
    LazyLock::new(|| parse_embedded(JOURNEY_EVENT_SCHEMA, "journey_event.avsc"));
static INTERVENTION_OUTCOME: LazyLock<Schema> =
    LazyLock::new(|| parse_embedded(INTERVENTION_OUTCOME_SCHEMA, "intervention_outcome.avsc"));

/// Parses a schema compiled into the binary. The texts are fixed at build time and every one is
/// parsed by this module's tests, so a failure is a defect of the build, never of the input:
/// it panics instead of surfacing as a per-record error.
fn parse_embedded(text: &str, file: &str) -> Schema {
    match Schema::parse_str(text) {
        Ok(schema) => schema,
        Err(e) => panic!("schemas/{file} compiled into Waymark is not a valid Avro schema: {e}"),
    }
}

/// The first byte of a value in the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Magic byte plus the 4-byte schema id.
const CONFLUENT_HEADER_LEN: usize = 5;

/// How an Avro value is framed in a Kafka record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// A bare Avro datum (binary encoding, no header) written with the current schema. The
    /// default when no schema registry is configured. The reader assumes the writer used the
    /// same schema version, so a raw-framed topic changes schema only when its writers and
    /// readers are upgraded together; use [`Framing::Confluent`] to evolve schemas freely.
    #[default]
    Raw,
    /// The Confluent wire format: magic byte `0x00`, the writer schema's registry id (4 bytes,
    /// big-endian), then the Avro datum. [`encode`] writes `schema_id`, the id under which the
    /// current schema is registered; [`decode`] ignores it and looks up the id each value
    /// carries through a [`SchemaLookup`].
    Confluent {
        /// Registry id of the current schema of the record type being encoded.
        schema_id: u32,
    },
}

/// Which form upstream systems produce `customer-events` values in (config `input-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// Avro `CustomerEvent` (`schemas/customer_event.avsc`): a raw datum, or the Confluent wire
    /// format (magic byte, schema id, datum) when a schema registry is configured.
    #[default]
    Avro,
    /// One JSON object per value, in the form `simulate` reads from its JSON-lines input
    /// (RFC 3339 times).
    Json,
}

/// A record of the data contract with an Avro schema in `schemas/`.
///
/// A trait because producers and consumers are generic over the record type they carry; it is
/// implemented for the four [`crate::model`] records and nothing else.
pub trait AvroRecord: Sized {
    /// The record's name in its schema (`CustomerEvent`), used in error messages.
    const NAME: &'static str;
    /// Current schema version: `schemas/history/<name>/v{VERSION}.avsc` is the current schema.
    const VERSION: u32;
    /// The schema's text (`schemas/<name>.avsc`), to register with a schema registry.
    const SCHEMA_TEXT: &'static str;

    /// The current schema, parsed once: the writer schema of [`encode`] and the reader schema of
    /// [`decode`].
    fn schema() -> &'static Schema;

    /// This record as an Avro value of [`AvroRecord::schema`].
    fn to_avro(&self) -> Value;

    /// Writes the record's Avro binary datum (current schema) straight into `out`, without
    /// building a [`Value`], when the record has such a writer; `false` when it has none (then
    /// [`encode`] goes through [`AvroRecord::to_avro`] and the schema-validating encoder).
    /// The hot output records (commands, journey events) have one; a test checks it against
    /// the validating encoder.
    fn write_datum(&self, _out: &mut Vec<u8>) -> bool {
        false
    }

    /// Reads a datum written with the current schema straight into the record, without
    /// building a [`Value`], when the record has such a reader and the datum reads cleanly to
    /// its end; `None` otherwise (then [`decode`] goes through apache-avro, which also says
    /// what is wrong with a malformed datum). The hot input record (customer events) has
    /// one; a test checks it against the other path.
    fn read_datum(_datum: &[u8]) -> Option<Self> {
        None
    }

    /// The record from an Avro value that conforms to [`AvroRecord::schema`] (decoded with it, or
    /// resolved to it).
    fn from_avro(value: Value) -> Result<Self, CodecError>;
}

/// Where the writer schema of a Confluent-framed value comes from: a schema registry client, or
/// [`InMemorySchemas`].
///
/// Called for every decoded value, so implementations cache: ids are immutable in a registry,
/// and a cached schema never needs refreshing. A cache miss may block on the network.
pub trait SchemaLookup: Send + Sync {
    /// The schema registered under `id`.
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, LookupError>;
}

/// Why [`SchemaLookup::writer_schema`] returned no schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The registry answered: no schema has this id. The record cannot be read.
    #[error("no schema is registered under this id")]
    Unknown,
    /// The registry answered with a schema that is not Avro, or that does not parse.
    #[error("{0}")]
    Unusable(String),
    /// The registry could not be asked (network, HTTP 5xx, ...). The record may be fine.
    #[error("{0}")]
    Unavailable(String),
}

/// A fixed id → schema table: for tests, and for deployments that pin schema ids in config.
#[derive(Debug, Clone, Default)]
pub struct InMemorySchemas {
    /// The known schemas by registry id.
    by_id: HashMap<u32, Arc<Schema>>,
}

impl InMemorySchemas {
    /// An empty table: every id is unknown. Enough for [`Framing::Raw`], which never looks up.
    pub fn new() -> InMemorySchemas {
        InMemorySchemas::default()
    }

    /// Registers `schema` under `id`, returning the schema it replaces, if any.
    pub fn insert(&mut self, id: u32, schema: Schema) -> Option<Arc<Schema>> {
        self.by_id.insert(id, Arc::new(schema))
    }

    /// Registers the current schema of `T` under `id` (builder style).
    pub fn with_current<T: AvroRecord>(mut self, id: u32) -> InMemorySchemas {
        self.insert(id, T::schema().clone());
        self
    }
}

impl SchemaLookup for InMemorySchemas {
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, LookupError> {
        self.by_id.get(&id).cloned().ok_or(LookupError::Unknown)
    }
}

/// Why a value could not be encoded or decoded.
///
/// Messages say what is wrong with the bytes and what to do; they never quote Avro values, but
/// the JSON parser may quote a short piece of a malformed JSON value. [`CodecError::kind`] is
/// the bounded code for dead-letter headers and metric labels.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value has no bytes at all.
    #[error(
        "empty value (0 bytes) where a {record} was expected: a tombstone or an empty message; \
         producers must send a {record} in every value"
    )]
    Empty {
        /// Record type expected.
        record: &'static str,
    },
    /// Shorter than the Confluent header.
    #[error(
        "value of {len} bytes is too short for the Confluent wire format (magic byte + 4-byte \
         schema id + Avro datum); check the producer's serializer"
    )]
    TruncatedHeader {
        /// Length of the value.
        len: usize,
    },
    /// The datum ended before the record was complete.
    #[error(
        "{record}{version} datum ends early ({reason}): the value was cut off or written with \
         another schema{hint}; check the producer's serializer"
    )]
    Truncated {
        /// Record type expected.
        record: &'static str,
        /// Current schema version of that record (none for an upstream record).
        version: SchemaVersion,
        /// What the Avro decoder was reading when the bytes ran out.
        reason: String,
        /// A guess at what the bytes are instead, or empty.
        hint: &'static str,
    },
    /// The first byte is not the Confluent magic byte.
    #[error("{}", bad_magic_message(*byte))]
    BadMagic {
        /// The first byte of the value.
        byte: u8,
    },
    /// The bytes do not decode as an Avro datum of the writer schema.
    #[error(
        "record is not Avro {record}{version}: {reason}{hint}; check the producer's serializer"
    )]
    NotAvro {
        /// Record type expected.
        record: &'static str,
        /// Current schema version of that record (none for an upstream record).
        version: SchemaVersion,
        /// What the Avro decoder found wrong.
        reason: String,
        /// A guess at what the bytes are instead, or empty.
        hint: &'static str,
    },
    /// A complete datum was followed by more bytes.
    #[error(
        "{extra} bytes left over after a complete {record}{version}: the producer wrote with \
         another (newer?) schema{hint}; frame values with a schema registry (Confluent wire \
         format) so the writer schema is known, or check the producer's serializer"
    )]
    TrailingBytes {
        /// Record type expected.
        record: &'static str,
        /// Current schema version of that record (none for an upstream record).
        version: SchemaVersion,
        /// Number of bytes after the datum.
        extra: usize,
        /// A guess at what the bytes are instead, or empty.
        hint: &'static str,
    },
    /// The schema registry has no schema with the value's id.
    #[error(
        "unknown schema id {id}: the schema registry has no schema with that id; check that the \
         producer and Waymark use the same schema registry"
    )]
    UnknownSchema {
        /// The id the value carries.
        id: u32,
    },
    /// The registry's schema under the value's id is not an Avro schema Waymark can read.
    #[error(
        "schema id {id} cannot be used: {reason}; upstream values read through input-mapping \
         must be Avro written with a schema-registry serializer"
    )]
    UnusableSchema {
        /// The id the value carries.
        id: u32,
        /// Why the schema cannot be used.
        reason: String,
    },
    /// The schema registry could not be asked; the value itself may be fine.
    #[error(
        "schema registry unavailable while looking up schema id {id}: {reason}; the record may \
         be fine — retry once the registry is reachable instead of dead-lettering it"
    )]
    RegistryUnavailable {
        /// The id the value carries.
        id: u32,
        /// What the registry client reported.
        reason: String,
    },
    /// The writer schema cannot be resolved to Waymark's current schema.
    #[error(
        "{record} written with schema id {id} ({writer}) cannot be read as Waymark's {record} \
         v{version}: {reason}; register only schema versions compatible with Waymark's (see \
         schemas/README.md)"
    )]
    IncompatibleSchema {
        /// Record type expected.
        record: &'static str,
        /// Current schema version of that record.
        version: u32,
        /// The writer schema's registry id.
        id: u32,
        /// The writer schema's full name.
        writer: String,
        /// Why the schemas do not resolve (schema-level, no values).
        reason: String,
    },
    /// A field Waymark needs is absent and has no default.
    #[error(
        "{format} {record} has no field `{field}`, which is required and has no default; the \
         producer must set it (an Avro writer schema must be compatible with Waymark's, see \
         schemas/README.md)"
    )]
    MissingField {
        /// `Avro` or `JSON`.
        format: &'static str,
        /// Record type expected.
        record: &'static str,
        /// The missing field.
        field: String,
    },
    /// A field holds a value the record cannot take (out of range, unknown symbol, wrong type).
    #[error("Avro {record} field `{field}`: {reason}; check the producer")]
    BadValue {
        /// Record type expected.
        record: &'static str,
        /// The field.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A JSON object that is not a valid record (wrong type, bad time, unknown field).
    #[error("value is JSON but not a valid {record}: {reason}; check the producer")]
    BadJson {
        /// Record type expected.
        record: &'static str,
        /// What the JSON parser found wrong (it may quote a short piece of the value).
        reason: String,
    },
    /// The bytes are not a JSON object.
    #[error("value is not a JSON {record}: {reason}{hint}")]
    NotJson {
        /// Record type expected.
        record: &'static str,
        /// What the JSON parser found wrong.
        reason: String,
        /// A guess at what the bytes are instead, or empty.
        hint: &'static str,
    },
    /// Encoding failed: the record does not fit its own schema, a defect in Waymark.
    #[error(
        "could not encode {record} as Avro: {reason}; this is a bug in Waymark's codec or schemas"
    )]
    Encode {
        /// Record type being encoded.
        record: &'static str,
        /// What the Avro encoder reported.
        reason: String,
    },
}

impl CodecError {
    /// Every value [`CodecError::kind`] can return, for pre-registering metric label values.
    pub const KINDS: [&'static str; 13] = [
        "empty",
        "truncated",
        "bad_magic",
        "not_avro",
        "trailing_bytes",
        "unknown_schema",
        "unusable_schema",
        "registry_unavailable",
        "incompatible_schema",
        "missing_field",
        "bad_value",
        "not_json",
        "encode_failed",
    ];

    /// A short, bounded code for this error (`not_avro`, `bad_magic`, `unknown_schema`, ...):
    /// the value of a dead-letter header or a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::Empty { .. } => "empty",
            CodecError::TruncatedHeader { .. } | CodecError::Truncated { .. } => "truncated",
            CodecError::BadMagic { .. } => "bad_magic",
            CodecError::NotAvro { .. } => "not_avro",
            CodecError::TrailingBytes { .. } => "trailing_bytes",
            CodecError::UnknownSchema { .. } => "unknown_schema",
            CodecError::UnusableSchema { .. } => "unusable_schema",
            CodecError::RegistryUnavailable { .. } => "registry_unavailable",
            CodecError::IncompatibleSchema { .. } => "incompatible_schema",
            CodecError::MissingField { .. } => "missing_field",
            CodecError::BadValue { .. } | CodecError::BadJson { .. } => "bad_value",
            CodecError::NotJson { .. } => "not_json",
            CodecError::Encode { .. } => "encode_failed",
        }
    }

    /// True when the value may be fine and decoding it again later can succeed (the schema
    /// registry was unreachable); every other error is a property of the bytes, so the record
    /// belongs in the dead-letter topic.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable { .. })
    }
}

fn bad_magic_message(byte: u8) -> String {
    if byte == b'{' {
        "magic byte 0x7b (`{`): the value looks like JSON, not the Confluent wire format; set \
         `input-format: json` or produce Avro with a schema-registry serializer"
            .to_owned()
    } else {
        format!(
            "magic byte 0x{byte:02x}: expected 0x00, the start of the Confluent wire format \
             (magic byte, 4-byte schema id, Avro datum); produce with a schema-registry \
             serializer, or configure no schema registry if producers write bare Avro"
        )
    }
}

const JSON_HINT: &str =
    " (the value starts with `{`: it looks like JSON; set `input-format: json` or produce Avro)";
const CONFLUENT_HINT: &str = " (the value starts with 0x00: it may be in the Confluent wire format; configure the schema registry so Waymark reads the schema id)";
const AVRO_HINT: &str =
    " (the value starts with 0x00: it looks like Confluent-framed Avro; set `input-format: avro`)";

/// A guess at what undecodable Avro bytes are, for error messages.
fn avro_hint(bytes: &[u8], framing: Framing) -> &'static str {
    match (bytes.first(), framing) {
        (Some(b'{'), _) => JSON_HINT,
        (Some(&CONFLUENT_MAGIC), Framing::Raw) if bytes.len() > CONFLUENT_HEADER_LEN => {
            CONFLUENT_HINT
        }
        _ => "",
    }
}

/// Encodes `record` with its current schema, framed as `framing`.
pub fn encode<T: AvroRecord>(record: &T, framing: Framing) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    if let Framing::Confluent { schema_id } = framing {
        out.push(CONFLUENT_MAGIC);
        out.extend_from_slice(&schema_id.to_be_bytes());
    }
    if record.write_datum(&mut out) {
        return Ok(out);
    }
    encode_validated(record, framing)
}

/// [`encode`] through an Avro [`Value`] and apache-avro's schema-validating encoder.
pub fn encode_validated<T: AvroRecord>(
    record: &T,
    framing: Framing,
) -> Result<Vec<u8>, CodecError> {
    let datum = apache_avro::to_avro_datum(T::schema(), record.to_avro()).map_err(|e| {
        CodecError::Encode {
            record: T::NAME,
            reason: encode_reason(&e),
        }
    })?;
    match framing {
        Framing::Raw => Ok(datum),
        Framing::Confluent { schema_id } => {
            let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + datum.len());
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema_id.to_be_bytes());
            out.extend_from_slice(&datum);
            Ok(out)
        }
    }
}

/// The encoder's complaint without the value it quotes (which holds customer data).
fn encode_reason(e: &apache_avro::Error) -> String {
    match e.details() {
        Details::ValidationWithReason { reason, .. } => reason.clone(),
        _ => e.to_string(),
    }
}

/// Decodes a `T` framed as `framing`.
///
/// With [`Framing::Raw`] the value must be written with the current schema. With
/// [`Framing::Confluent`] the writer schema is looked up in `schemas` by the id the value
/// carries and resolved to the current schema, so values written with any compatible (older or
/// newer) schema version decode; fields the writer did not have take their defaults.
pub fn decode<T: AvroRecord>(
    bytes: &[u8],
    framing: Framing,
    schemas: &dyn SchemaLookup,
) -> Result<T, CodecError> {
    if framing == Framing::Raw
        && let Some(record) = T::read_datum(bytes)
    {
        return Ok(record);
    }
    decode_validated(bytes, framing, schemas)
}

/// [`decode`] through an Avro [`Value`]: the datum checked against its writer schema, read by
/// apache-avro, resolved to the current schema.
pub fn decode_validated<T: AvroRecord>(
    bytes: &[u8],
    framing: Framing,
    schemas: &dyn SchemaLookup,
) -> Result<T, CodecError> {
    if bytes.is_empty() {
        return Err(CodecError::Empty { record: T::NAME });
    }
    let expected = (T::NAME, SchemaVersion(Some(T::VERSION)));
    let value = match framing {
        Framing::Raw => read_datum(bytes, T::schema(), bytes, framing, expected)?,
        Framing::Confluent { .. } => {
            let (id, datum, writer) = writer_schema_of(bytes, schemas)?;
            let value = read_datum(datum, &writer, bytes, framing, expected)?;
            resolve::<T>(value, &writer, id)?
        }
    };
    T::from_avro(value)
}

/// A Confluent-framed value's schema id, datum and writer schema (looked up in `schemas`).
fn writer_schema_of<'a>(
    bytes: &'a [u8],
    schemas: &dyn SchemaLookup,
) -> Result<(u32, &'a [u8], Arc<Schema>), CodecError> {
    let (id, datum) = split_confluent(bytes)?;
    let writer = schemas.writer_schema(id).map_err(|e| match e {
        LookupError::Unknown => CodecError::UnknownSchema { id },
        LookupError::Unusable(reason) => CodecError::UnusableSchema { id, reason },
        LookupError::Unavailable(reason) => CodecError::RegistryUnavailable { id, reason },
    })?;
    Ok((id, datum, writer))
}

/// Reads a Confluent-framed value with its own writer schema, not resolved to any of
/// Waymark's: for upstream records of other shapes (an input mapping picks the fields).
/// `record` names what was expected in errors.
pub(crate) fn decode_with_writer_schema(
    bytes: &[u8],
    schemas: &dyn SchemaLookup,
    record: &'static str,
) -> Result<Value, CodecError> {
    let framing = Framing::Confluent { schema_id: 0 };
    let (_, datum, writer) = writer_schema_of(bytes, schemas)?;
    read_datum(
        datum,
        &writer,
        bytes,
        framing,
        (record, SchemaVersion(None)),
    )
}

/// The version of the schema a record was expected in, for messages: ` v3` for Waymark's
/// own records, nothing for upstream records read with their writer schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaVersion(pub Option<u32>);

impl std::fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => write!(f, " v{v}"),
            None => Ok(()),
        }
    }
}

/// Decodes a customer event in the configured input format; `framing` and `schemas` apply to
/// [`InputFormat::Avro`] only.
pub fn decode_customer_event_with(
    bytes: &[u8],
    format: InputFormat,
    framing: Framing,
    schemas: &dyn SchemaLookup,
) -> Result<CustomerEvent, CodecError> {
    match format {
        InputFormat::Avro => decode(bytes, framing, schemas),
        InputFormat::Json => decode_customer_event_json(bytes),
    }
}

/// How the values of the input topic are read: their format, the mapping of upstream shapes
/// (config `input-mapping`) and the schema registry of Confluent-framed Avro values.
#[derive(Clone, Default)]
pub struct InputDecoder {
    /// Encoding of the values.
    pub format: InputFormat,
    /// Where a customer event's fields are in an upstream value, when it is not one.
    pub mapping: Option<InputMapping>,
    /// Writer schemas of Avro values in the Confluent wire format; `None`: Avro values are
    /// bare `CustomerEvent` datums ([`Framing::Raw`]).
    pub registry: Option<Arc<dyn SchemaLookup>>,
}

impl std::fmt::Debug for InputDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputDecoder")
            .field("format", &self.format)
            .field("mapping", &self.mapping)
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

impl InputDecoder {
    /// Reads values in `format`, with no mapping and no registry.
    pub fn plain(format: InputFormat) -> InputDecoder {
        InputDecoder {
            format,
            ..InputDecoder::default()
        }
    }

    /// One value of the input topic as a customer event.
    pub fn decode(&self, bytes: &[u8]) -> Result<CustomerEvent, CodecError> {
        let registry = self.registry.as_deref().unwrap_or(&NoRegistry);
        match (&self.mapping, self.format) {
            (Some(m), InputFormat::Json) => m.decode(bytes),
            (Some(m), InputFormat::Avro) => m.decode_avro(bytes, registry),
            (None, format) => {
                let framing = match self.registry {
                    Some(_) => Framing::Confluent { schema_id: 0 },
                    None => Framing::Raw,
                };
                decode_customer_event_with(bytes, format, framing, registry)
            }
        }
    }
}

/// Decodes a customer event in `format`; Avro values are [`Framing::Raw`] (no schema registry).
pub fn decode_customer_event(
    bytes: &[u8],
    format: InputFormat,
) -> Result<CustomerEvent, CodecError> {
    decode_customer_event_with(bytes, format, Framing::Raw, &NoRegistry)
}

/// The lookup behind [`Framing::Raw`], which never looks up.
struct NoRegistry;

impl SchemaLookup for NoRegistry {
    fn writer_schema(&self, _id: u32) -> Result<Arc<Schema>, LookupError> {
        Err(LookupError::Unknown)
    }
}

/// Encodes a customer event as a raw Avro datum ([`Framing::Raw`]).
pub fn encode_customer_event(event: &CustomerEvent) -> Result<Vec<u8>, CodecError> {
    encode(event, Framing::Raw)
}

/// Encodes a command as a raw Avro datum ([`Framing::Raw`]).
pub fn encode_command(command: &InterventionCommand) -> Result<Vec<u8>, CodecError> {
    encode(command, Framing::Raw)
}

/// Decodes a command from a raw Avro datum ([`Framing::Raw`]).
pub fn decode_command(bytes: &[u8]) -> Result<InterventionCommand, CodecError> {
    decode(bytes, Framing::Raw, &NoRegistry)
}

/// Encodes a journey event as a raw Avro datum ([`Framing::Raw`]).
pub fn encode_journey_event(event: &JourneyEvent) -> Result<Vec<u8>, CodecError> {
    encode(event, Framing::Raw)
}

/// Decodes a journey event from a raw Avro datum ([`Framing::Raw`]).
pub fn decode_journey_event(bytes: &[u8]) -> Result<JourneyEvent, CodecError> {
    decode(bytes, Framing::Raw, &NoRegistry)
}

/// Encodes an outcome as a raw Avro datum ([`Framing::Raw`]).
pub fn encode_outcome(outcome: &InterventionOutcome) -> Result<Vec<u8>, CodecError> {
    encode(outcome, Framing::Raw)
}

/// Decodes an outcome from a raw Avro datum ([`Framing::Raw`]).
pub fn decode_outcome(bytes: &[u8]) -> Result<InterventionOutcome, CodecError> {
    decode(bytes, Framing::Raw, &NoRegistry)
}

/// Decodes a customer event from its JSON form: one object, RFC 3339 times, attribute values
/// any JSON scalar (see [`CustomerEvent`]); surrounding whitespace is allowed.
pub fn decode_customer_event_json(bytes: &[u8]) -> Result<CustomerEvent, CodecError> {
    const RECORD: &str = "CustomerEvent";
    if bytes.is_empty() {
        return Err(CodecError::Empty { record: RECORD });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let reason = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data => match missing_json_field(&reason) {
                Some(field) => CodecError::MissingField {
                    format: "JSON",
                    record: RECORD,
                    field: field.to_owned(),
                },
                None => CodecError::BadJson {
                    record: RECORD,
                    reason,
                },
            },
            _ => CodecError::NotJson {
                record: RECORD,
                reason,
                hint: if bytes.first() == Some(&CONFLUENT_MAGIC) {
                    AVRO_HINT
                } else {
                    ""
                },
            },
        }
    })
}

/// The field name in serde's "missing field `x` at line 1 column 9".
fn missing_json_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Splits a Confluent-framed value into schema id and datum.
fn split_confluent(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [CONFLUENT_MAGIC, a, b, c, d, datum @ ..] => {
            Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum))
        }
        [CONFLUENT_MAGIC, ..] => Err(CodecError::TruncatedHeader { len: bytes.len() }),
        [byte, ..] => Err(CodecError::BadMagic { byte: *byte }),
        [] => Err(CodecError::TruncatedHeader { len: 0 }),
    }
}

/// Decodes one datum with the writer schema; every byte must belong to it.
///
/// The datum is walked first ([`DatumCheck`]): apache-avro 0.21 trusts lengths and block counts
/// (a 10-byte value claiming a map of 400 million entries aborts the process on allocation) and
/// reads some truncated values as null instead of failing. After the walk every length is known
/// to fit the bytes, so decoding allocates at most in proportion to the value's size.
fn read_datum(
    datum: &[u8],
    writer: &Schema,
    whole_value: &[u8],
    framing: Framing,
    (record, version): (&'static str, SchemaVersion),
) -> Result<Value, CodecError> {
    let hint = avro_hint(whole_value, framing);
    let not_avro = |reason: String| CodecError::NotAvro {
        record,
        version,
        reason,
        hint,
    };
    let used = DatumCheck::new(writer, datum).run().map_err(|e| match e {
        DatumError::Truncated { reading } => CodecError::Truncated {
            record,
            version,
            reason: format!("the bytes end inside {reading}"),
            hint,
        },
        DatumError::Invalid(reason) => not_avro(reason),
    })?;
    if used < datum.len() {
        return Err(CodecError::TrailingBytes {
            record,
            version,
            extra: datum.len() - used,
            hint,
        });
    }
    apache_avro::from_avro_datum(writer, &mut &datum[..used], None)
        .map_err(|e| not_avro(e.to_string()))
}

/// Why [`DatumCheck`] rejected a datum.
#[derive(Debug)]
enum DatumError {
    /// The bytes end inside the datum.
    Truncated {
        /// What was being read (`a string`, `a map block`, ...).
        reading: &'static str,
    },
    /// The bytes cannot be a datum of the schema.
    Invalid(String),
}

/// Deepest nesting of records, unions, arrays and maps a datum may have; bounds recursion on
/// (recursive) writer schemas from a registry.
const MAX_DEPTH: usize = 64;

/// Walks a datum of a schema without allocating: every varint is at most 10 bytes, every
/// length and block count fits in the bytes left, every union branch and enum index exists,
/// and nothing is read past the end. Arrays of zero-byte items (nulls) with more items than
/// bytes left are rejected too; no schema of the contract has them.
struct DatumCheck<'s> {
    /// The writer schema.
    root: &'s Schema,
    /// Named types of `root`, collected on the first reference to one.
    names: Option<apache_avro::schema::NamesRef<'s>>,
    /// The datum.
    bytes: &'s [u8],
    /// Bytes consumed so far.
    pos: usize,
}

impl<'s> DatumCheck<'s> {
    fn new(root: &'s Schema, bytes: &'s [u8]) -> DatumCheck<'s> {
        DatumCheck {
            root,
            names: None,
            bytes,
            pos: 0,
        }
    }

    /// Walks one datum of the root schema; returns the number of bytes it takes.
    fn run(mut self) -> Result<usize, DatumError> {
        let root = self.root;
        self.walk(root, &root.namespace(), 0)?;
        Ok(self.pos)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn skip(&mut self, n: usize, reading: &'static str) -> Result<(), DatumError> {
        if n > self.remaining() {
            return Err(DatumError::Truncated { reading });
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint of at most 10 bytes.
    fn long(&mut self, reading: &'static str) -> Result<i64, DatumError> {
        let mut raw = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(DatumError::Truncated { reading });
            };
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(DatumError::Invalid(format!(
            "a varint longer than 10 bytes in {reading}"
        )))
    }

    fn int(&mut self, reading: &'static str) -> Result<i32, DatumError> {
        let n = self.long(reading)?;
        i32::try_from(n).map_err(|_| DatumError::Invalid(format!("{n} does not fit {reading}")))
    }

    /// A byte length: not negative (the bytes themselves are checked by [`Self::skip`]).
    fn len(&mut self, reading: &'static str) -> Result<usize, DatumError> {
        let n = self.long(reading)?;
        usize::try_from(n)
            .map_err(|_| DatumError::Invalid(format!("negative length {n} of {reading}")))
    }

    /// The index of a union branch or enum symbol, below `count`.
    fn index(&mut self, count: usize, reading: &'static str) -> Result<usize, DatumError> {
        let n = self.long(reading)?;
        usize::try_from(n)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| DatumError::Invalid(format!("index {n} of {reading} with {count}")))
    }

    /// The item count of the next array or map block; 0 ends the array or map.
    fn block(&mut self, reading: &'static str) -> Result<usize, DatumError> {
        let count = self.long(reading)?;
        if count < 0 {
            // A negative count is followed by the block's size in bytes.
            let size = self.long(reading)?;
            if size < 0 {
                return Err(DatumError::Invalid(format!("negative size of {reading}")));
            }
        }
        // Every item takes at least one byte (see the type's doc): more items than bytes left
        // means the value was cut off (or the count is garbage).
        match usize::try_from(count.unsigned_abs()) {
            Ok(count) if count <= self.remaining() => Ok(count),
            _ => Err(DatumError::Truncated { reading }),
        }
    }

    fn walk(
        &mut self,
        schema: &'s Schema,
        namespace: &apache_avro::schema::Namespace,
        depth: usize,
    ) -> Result<(), DatumError> {
        if depth > MAX_DEPTH {
            return Err(DatumError::Invalid(format!(
                "values nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => {
                let Some(&byte) = self.bytes.get(self.pos) else {
                    return Err(DatumError::Truncated {
                        reading: "a boolean",
                    });
                };
                self.pos += 1;
                match byte {
                    0 | 1 => Ok(()),
                    _ => Err(DatumError::Invalid(format!("boolean byte 0x{byte:02x}"))),
                }
            }
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int("an int").map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long("a long").map(drop),
            Schema::Float => self.skip(4, "a float"),
            Schema::Double => self.skip(8, "a double"),
            Schema::Duration => self.skip(12, "a duration"),
            Schema::Fixed(fixed) => self.skip(fixed.size, "a fixed"),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => {
                let n = self.len("bytes")?;
                self.skip(n, "bytes")
            }
            Schema::String => {
                let n = self.len("a string")?;
                self.skip(n, "a string")
            }
            Schema::Decimal(decimal) => self.walk(&decimal.inner, namespace, depth + 1),
            Schema::Enum(e) => self.index(e.symbols.len(), "an enum symbol").map(drop),
            Schema::Union(union) => {
                let variants = union.variants();
                let i = self.index(variants.len(), "a union branch")?;
                self.walk(&variants[i], namespace, depth + 1)
            }
            Schema::Array(array) => loop {
                let count = self.block("an array block")?;
                if count == 0 {
                    return Ok(());
                }
                for _ in 0..count {
                    self.walk(&array.items, namespace, depth + 1)?;
                }
            },
            Schema::Map(map) => loop {
                let count = self.block("a map block")?;
                if count == 0 {
                    return Ok(());
                }
                for _ in 0..count {
                    let n = self.len("a map key")?;
                    self.skip(n, "a map key")?;
                    self.walk(&map.types, namespace, depth + 1)?;
                }
            },
            Schema::Record(record) => {
                let namespace = record.name.fully_qualified_name(namespace).namespace;
                for field in &record.fields {
                    self.walk(&field.schema, &namespace, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(namespace);
                if self.names.is_none() {
                    let resolved = apache_avro::schema::ResolvedSchema::try_from(self.root)
                        .map_err(|e| DatumError::Invalid(e.to_string()))?;
                    self.names = Some(resolved.get_names().clone());
                }
                let target = self
                    .names
                    .as_ref()
                    .and_then(|names| names.get(&name).copied())
                    .ok_or_else(|| {
                        DatumError::Invalid(format!("the writer schema has no type {name:?}"))
                    })?;
                self.walk(target, &name.namespace, depth + 1)
            }
        }
    }
}

/// Resolves a value decoded with the writer schema to the current (reader) schema.
fn resolve<T: AvroRecord>(value: Value, writer: &Schema, id: u32) -> Result<Value, CodecError> {
    value.resolve(T::schema()).map_err(|e| match e.details() {
        Details::GetField(field) => CodecError::MissingField {
            format: "Avro",
            record: T::NAME,
            field: field.clone(),
        },
        // Resolution errors quote the value; describe the schema mismatch instead.
        _ => CodecError::IncompatibleSchema {
            record: T::NAME,
            version: T::VERSION,
            id,
            writer: writer.name().map_or_else(
                || format!("a {:?} schema", SchemaKind::from(writer)),
                |n| n.fullname(None),
            ),
            reason: match SchemaCompatibility::can_read(writer, T::schema()) {
                Err(incompatible) => error_chain(&incompatible),
                Ok(()) => "a value does not fit the reader schema (for example an enum symbol \
                           this version does not know)"
                    .to_owned(),
            },
        },
    })
}

/// An error with its causes, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Values.

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// Avro binary encoding, written straight from Rust values (the spec's "Binary Encoding"):
/// `long`/`int` as zig-zag varints, strings as length + UTF-8, enums as their index, unions as
/// the branch index + the value, maps as one block of entries and a terminating zero.
mod binary {
    use std::collections::BTreeMap;

    /// Reads Avro binary values from the front of a slice; every read is `None` on bytes that
    /// do not read cleanly (the caller then lets apache-avro say why).
    pub struct Reader<'a>(pub &'a [u8]);

    impl Reader<'_> {
        /// A zig-zag varint of at most ten bytes, as apache-avro reads it.
        pub fn long(&mut self) -> Option<i64> {
            let mut z = 0u64;
            for shift in (0..70).step_by(7) {
                let (&byte, rest) = self.0.split_first()?;
                self.0 = rest;
                z |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Some((z >> 1) as i64 ^ -((z & 1) as i64));
                }
            }
            None
        }

        pub fn string(&mut self) -> Option<String> {
            let len = usize::try_from(self.long()?).ok()?;
            let (bytes, rest) = self.0.split_at_checked(len)?;
            self.0 = rest;
            String::from_utf8(bytes.to_vec()).ok()
        }

        /// A map of strings in blocks (a negative count is followed by the block's size in
        /// bytes); a repeated key keeps its last value.
        pub fn string_map(&mut self) -> Option<BTreeMap<String, String>> {
            let mut map = BTreeMap::new();
            loop {
                let count = match self.long()? {
                    0 => return Some(map),
                    n if n < 0 => {
                        self.long()?;
                        n.checked_neg()?
                    }
                    n => n,
                };
                for _ in 0..count {
                    let key = self.string()?;
                    map.insert(key, self.string()?);
                }
            }
        }
    }

    pub fn long(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        long(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }

    /// `["null", "string"]`.
    pub fn optional<S: AsRef<str>>(out: &mut Vec<u8>, s: &Option<S>) {
        match s {
            None => long(out, 0),
            Some(s) => {
                long(out, 1);
                string(out, s.as_ref());
            }
        }
    }

    pub fn string_map<K: AsRef<str>, V: AsRef<str>>(out: &mut Vec<u8>, map: &BTreeMap<K, V>) {
        if !map.is_empty() {
            long(out, map.len() as i64);
            for (k, v) in map {
                string(out, k.as_ref());
                string(out, v.as_ref());
            }
        }
        long(out, 0);
    }
}

/// `["null", "string"]`: the null branch is index 0.
fn optional<S: AsRef<str>>(s: &Option<S>) -> Value {
    match s {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(string(s.as_ref()))),
    }
}

fn string_map<K: AsRef<str>, V: AsRef<str>>(map: &BTreeMap<K, V>) -> Value {
    Value::Map(
        map.iter()
            .map(|(k, v)| (k.as_ref().to_owned(), string(v.as_ref())))
            .collect(),
    )
}

fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_owned(), value)
}

/// Avro enum symbols cannot contain `-`: `contact-center` is `contact_center` on the wire.
/// Indexes follow the symbol order of the `Channel` enum in the schemas.
fn channel_value(channel: Channel) -> Value {
    let (index, symbol) = channel_symbol(channel);
    Value::Enum(index, symbol.to_owned())
}

fn channel_symbol(channel: Channel) -> (u32, &'static str) {
    match channel {
        Channel::Email => (0, "email"),
        Channel::Sms => (1, "sms"),
        Channel::ContactCenter => (2, "contact_center"),
    }
}

fn channel_from_symbol(symbol: &str) -> Option<Channel> {
    match symbol {
        "email" => Some(Channel::Email),
        "sms" => Some(Channel::Sms),
        "contact_center" => Some(Channel::ContactCenter),
        _ => None,
    }
}

/// Symbols are spelled as [`JourneyEventType::as_str`]; indexes follow the symbol order of the
/// `JourneyEventType` enum in `journey_event.avsc`.
fn journey_event_type_value(t: JourneyEventType) -> Value {
    Value::Enum(journey_event_type_index(t), t.as_str().to_owned())
}

fn journey_event_type_index(t: JourneyEventType) -> u32 {
    match t {
        JourneyEventType::Entered => 0,
        JourneyEventType::StepCompleted => 1,
        JourneyEventType::StepAbandoned => 2,
        JourneyEventType::GoalReached => 3,
        JourneyEventType::Exited => 4,
        JourneyEventType::CommandEmitted => 5,
        JourneyEventType::CommandSuppressed => 6,
        JourneyEventType::CommandDeferred => 7,
    }
}

/// The fields of a decoded record, taken out one by one.
struct Fields {
    /// Record type, for errors.
    record: &'static str,
    /// Field name and value, in reader-schema order.
    fields: Vec<(String, Value)>,
}

impl Fields {
    fn new(record: &'static str, value: Value) -> Result<Fields, CodecError> {
        match value {
            Value::Record(fields) => Ok(Fields { record, fields }),
            other => Err(CodecError::BadValue {
                record,
                field: "(record)".to_owned(),
                reason: format!("expected a record, found {:?}", SchemaKind::from(&other)),
            }),
        }
    }

    fn take(&mut self, name: &str) -> Result<Value, CodecError> {
        self.fields
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::mem::replace(v, Value::Null))
            .ok_or_else(|| CodecError::MissingField {
                format: "Avro",
                record: self.record,
                field: name.to_owned(),
            })
    }

    fn bad(&self, name: &str, reason: String) -> CodecError {
        CodecError::BadValue {
            record: self.record,
            field: name.to_owned(),
            reason,
        }
    }

    fn wrong_type(&self, name: &str, expected: &str, found: &Value) -> CodecError {
        self.bad(
            name,
            format!("expected {expected}, found {:?}", SchemaKind::from(found)),
        )
    }

    fn string<S: From<String>>(&mut self, name: &str) -> Result<S, CodecError> {
        match self.take(name)? {
            Value::String(s) => Ok(s.into()),
            other => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    fn optional_string<S: From<String>>(&mut self, name: &str) -> Result<Option<S>, CodecError> {
        let value = match self.take(name)? {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        match value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.into())),
            other => Err(self.wrong_type(name, "null or a string", &other)),
        }
    }

    fn millis(&mut self, name: &str) -> Result<Millis, CodecError> {
        match self.take(name)? {
            Value::TimestampMillis(ms) | Value::Long(ms) => Ok(ms),
            Value::Int(ms) => Ok(Millis::from(ms)),
            other => Err(self.wrong_type(name, "a timestamp-millis", &other)),
        }
    }

    fn u32(&mut self, name: &str) -> Result<u32, CodecError> {
        let n = match self.take(name)? {
            Value::Long(n) => n,
            Value::Int(n) => i64::from(n),
            other => return Err(self.wrong_type(name, "a long", &other)),
        };
        u32::try_from(n).map_err(|_| self.bad(name, format!("{n} is outside 0..=4294967295")))
    }

    fn string_map<K: From<String> + Ord, V: From<String>>(
        &mut self,
        name: &str,
    ) -> Result<BTreeMap<K, V>, CodecError> {
        match self.take(name)? {
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(v) => Ok((k.into(), v.into())),
                    other => Err(self.wrong_type(name, "a map of strings", &other)),
                })
                .collect(),
            other => Err(self.wrong_type(name, "a map of strings", &other)),
        }
    }

    fn symbol(&mut self, name: &str) -> Result<String, CodecError> {
        match self.take(name)? {
            Value::Enum(_, symbol) | Value::String(symbol) => Ok(symbol),
            other => Err(self.wrong_type(name, "an enum symbol", &other)),
        }
    }

    fn channel(&mut self, name: &str) -> Result<Channel, CodecError> {
        let symbol = self.symbol(name)?;
        channel_from_symbol(&symbol)
            .ok_or_else(|| self.bad(name, format!("`{symbol}` is not a known channel")))
    }

    fn journey_event_type(&mut self, name: &str) -> Result<JourneyEventType, CodecError> {
        let symbol = self.symbol(name)?;
        JourneyEventType::parse(&symbol).ok_or_else(|| {
            self.bad(
                name,
                format!("`{symbol}` is not a known journey event type"),
            )
        })
    }
}

impl AvroRecord for CustomerEvent {
    const NAME: &'static str = "CustomerEvent";
    const VERSION: u32 = 1;
    const SCHEMA_TEXT: &'static str = CUSTOMER_EVENT_SCHEMA;

    fn schema() -> &'static Schema {
        &CUSTOMER_EVENT
    }

    fn to_avro(&self) -> Value {
        Value::Record(vec![
            field("event_id", string(&self.event_id)),
            field("customer_id", string(&self.customer_id)),
            field("type", string(&self.event_type)),
            field("occurred_at", Value::TimestampMillis(self.occurred_at)),
            field("attributes", string_map(&self.attributes)),
        ])
    }

    fn read_datum(datum: &[u8]) -> Option<Self> {
        let mut r = binary::Reader(datum);
        let event = CustomerEvent {
            event_id: r.string()?,
            customer_id: r.string()?,
            event_type: r.string()?,
            occurred_at: r.long()?,
            attributes: r.string_map()?,
        };
        r.0.is_empty().then_some(event)
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::new(Self::NAME, value)?;
        Ok(CustomerEvent {
            event_id: f.string("event_id")?,
            customer_id: f.string("customer_id")?,
            event_type: f.string("type")?,
            occurred_at: f.millis("occurred_at")?,
            attributes: f.string_map("attributes")?,
        })
    }
}

impl AvroRecord for InterventionCommand {
    const NAME: &'static str = "InterventionCommand";
    const VERSION: u32 = 1;
    const SCHEMA_TEXT: &'static str = INTERVENTION_COMMAND_SCHEMA;

    fn schema() -> &'static Schema {
        &INTERVENTION_COMMAND
    }

    fn to_avro(&self) -> Value {
        Value::Record(vec![
            field("command_id", string(&self.command_id)),
            field("journey", string(&self.journey)),
            field(
                "journey_version",
                Value::Long(i64::from(self.journey_version)),
            ),
            field("customer_id", string(&self.customer_id)),
            field("instance", Value::Long(i64::from(self.instance))),
            field("rule", string(&self.rule)),
            field("action", string(&self.action)),
            field("channel", channel_value(self.channel)),
            field("due_at", Value::TimestampMillis(self.due_at)),
            field("template", optional(&self.template)),
            field("variant", optional(&self.variant)),
            field("params", string_map(&self.params)),
            field("attributes", string_map(&self.attributes)),
        ])
    }

    fn write_datum(&self, out: &mut Vec<u8>) -> bool {
        binary::string(out, &self.command_id);
        binary::string(out, &self.journey);
        binary::long(out, i64::from(self.journey_version));
        binary::string(out, &self.customer_id);
        binary::long(out, i64::from(self.instance));
        binary::string(out, &self.rule);
        binary::string(out, &self.action);
        binary::long(out, i64::from(channel_symbol(self.channel).0));
        binary::long(out, self.due_at);
        binary::optional(out, &self.template);
        binary::optional(out, &self.variant);
        binary::string_map(out, &self.params);
        binary::string_map(out, &self.attributes);
        true
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::new(Self::NAME, value)?;
        Ok(InterventionCommand {
            command_id: f.string("command_id")?,
            journey: f.string("journey")?,
            journey_version: f.u32("journey_version")?,
            customer_id: f.string("customer_id")?,
            instance: f.u32("instance")?,
            rule: f.string("rule")?,
            action: f.string("action")?,
            channel: f.channel("channel")?,
            due_at: f.millis("due_at")?,
            template: f.optional_string("template")?,
            variant: f.optional_string("variant")?,
            params: f.string_map("params")?,
            attributes: f.string_map("attributes")?,
        })
    }
}

impl AvroRecord for JourneyEvent {
    const NAME: &'static str = "JourneyEvent";
    const VERSION: u32 = 3;
    const SCHEMA_TEXT: &'static str = JOURNEY_EVENT_SCHEMA;

    fn schema() -> &'static Schema {
        &JOURNEY_EVENT
    }

    fn to_avro(&self) -> Value {
        Value::Record(vec![
            field("journey_event_id", string(&self.journey_event_id)),
            field("journey", string(&self.journey)),
            field(
                "journey_version",
                Value::Long(i64::from(self.journey_version)),
            ),
            field("customer_id", string(&self.customer_id)),
            field("instance", Value::Long(i64::from(self.instance))),
            field("type", journey_event_type_value(self.event_type)),
            field("step", optional(&self.step)),
            field("at", Value::TimestampMillis(self.at)),
            field("command_id", optional(&self.command_id)),
            field("action", optional(&self.action)),
            field("reason", optional(&self.reason)),
            field("variant", optional(&self.variant)),
        ])
    }

    fn write_datum(&self, out: &mut Vec<u8>) -> bool {
        binary::string(out, &self.journey_event_id);
        binary::string(out, &self.journey);
        binary::long(out, i64::from(self.journey_version));
        binary::string(out, &self.customer_id);
        binary::long(out, i64::from(self.instance));
        binary::long(out, i64::from(journey_event_type_index(self.event_type)));
        binary::optional(out, &self.step);
        binary::long(out, self.at);
        binary::optional(out, &self.command_id);
        binary::optional(out, &self.action);
        binary::optional(out, &self.reason);
        binary::optional(out, &self.variant);
        true
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::new(Self::NAME, value)?;
        Ok(JourneyEvent {
            journey_event_id: f.string("journey_event_id")?,
            journey: f.string("journey")?,
            journey_version: f.u32("journey_version")?,
            customer_id: f.string("customer_id")?,
            instance: f.u32("instance")?,
            event_type: f.journey_event_type("type")?,
            step: f.optional_string("step")?,
            at: f.millis("at")?,
            command_id: f.optional_string("command_id")?,
            action: f.optional_string("action")?,
            reason: f.optional_string("reason")?,
            variant: f.optional_string("variant")?,
        })
    }
}

impl AvroRecord for InterventionOutcome {
    const NAME: &'static str = "InterventionOutcome";
    const VERSION: u32 = 1;
    const SCHEMA_TEXT: &'static str = INTERVENTION_OUTCOME_SCHEMA;

    fn schema() -> &'static Schema {
        &INTERVENTION_OUTCOME
    }

    fn to_avro(&self) -> Value {
        Value::Record(vec![
            field("outcome_id", string(&self.outcome_id)),
            field("command_id", string(&self.command_id)),
            field("customer_id", string(&self.customer_id)),
            field("journey", string(&self.journey)),
            field("action", string(&self.action)),
            field("channel", channel_value(self.channel)),
            field("status", string(&self.status)),
            field("at", Value::TimestampMillis(self.at)),
            field("detail", optional(&self.detail)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, CodecError> {
        let mut f = Fields::new(Self::NAME, value)?;
        Ok(InterventionOutcome {
            outcome_id: f.string("outcome_id")?,
            command_id: f.string("command_id")?,
            customer_id: f.string("customer_id")?,
            journey: f.string("journey")?,
            action: f.string("action")?,
            channel: f.channel("channel")?,
            status: f.string("status")?,
            at: f.millis("at")?,
            detail: f.optional_string("detail")?,
        })
    }
}
