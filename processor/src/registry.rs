//! A client of a Confluent-compatible schema registry: the writer schemas of Avro values in
//! the Confluent wire format (magic byte, 4-byte schema id, datum), looked up by id.
//!
//! Speaks the documented REST API (`GET /schemas/ids/{id}`, `POST
//! /subjects/{subject}/versions`, media type `application/vnd.schemaregistry.v1+json`), which
//! Confluent Schema Registry, Karapace, Redpanda and Apicurio (`/apis/ccompat/v7`) serve. Ids
//! are immutable in a registry, so every schema is fetched once and kept for the life of the
//! process.
//!
//! A registry that cannot be asked (connection refused, timeout, 5xx, 429) is retried with
//! backoff for `schema-registry.retry-secs`; after that the lookup says
//! [`LookupError::Unavailable`] and the reader (`waymark run`'s pipeline, a sink, the analytics
//! view) restarts from its last commit instead of dead-lettering records that may be fine. A
//! registry that answers "no such id" (404) or with a schema Waymark cannot use sends the
//! record to the dead-letter topic.
//!
//! [`Wire`] frames Waymark's own records with the ids of their schemas, registered under
//! `<topic>-value`; [`input_decoder`] reads the input topic. Must not know journeys or Kafka
//! clients: callers hand in topic names and bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use base64::Engine as _;
use serde::Deserialize;

use crate::codec::{
    self, AvroRecord, CodecError, Framing, InputDecoder, InputFormat, InputMapping, LookupError,
    SchemaLookup,
};

/// The media type of the registry's API, version 1.
const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Where the registry is and how long to wait for it (config `schema-registry`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Base URL of the API, e.g. `http://schema-registry:8081` or, for Apicurio,
    /// `http://apicurio:8080/apis/ccompat/v7`. Credentials for HTTP basic authentication go
    /// in the URL (`https://user:password@host`); they are never logged.
    pub url: String,
    /// Seconds to wait for one answer. Default 10.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Seconds to keep retrying an unreachable registry before the pipeline restarts from
    /// its last commit. Default 30.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u64,
}

const fn default_timeout_secs() -> u64 {
    10
}
const fn default_retry_secs() -> u64 {
    30
}

impl RegistryConfig {
    /// A registry at `url` with the default timeouts.
    pub fn at(url: &str) -> RegistryConfig {
        RegistryConfig {
            url: url.to_owned(),
            timeout_secs: default_timeout_secs(),
            retry_secs: default_retry_secs(),
        }
    }

    /// What is wrong with the settings, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        Endpoint::parse(&self.url).map(|_| ())?;
        if self.timeout_secs == 0 {
            return Err("schema-registry.timeout-secs: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// The registry's base URL without credentials, and the `Authorization` header they make.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    base: String,
    authorization: Option<String>,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "schema-registry.url: `{}` is not an http:// or https:// URL",
                redact(url)
            ));
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "schema-registry.url: scheme `{scheme}` is not supported; use http:// or https://"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err("schema-registry.url: the URL names no host".to_owned());
        }
        let authorization = userinfo.map(|u| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            )
        });
        Ok(Endpoint {
            base: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            authorization,
        })
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The body of `GET /schemas/ids/{id}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaById {
    schema: String,
    /// `AVRO` when absent (registries older than schema types leave it out).
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

/// A schema registry client with a cache of every schema it fetched.
pub struct SchemaRegistry {
    endpoint: Endpoint,
    agent: ureq::Agent,
    retry_for: Duration,
    cache: RwLock<HashMap<u32, Arc<Schema>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.endpoint.base)
            .finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// A client of the registry `config` names; no request is made until a lookup.
    pub fn new(config: &RegistryConfig) -> Result<SchemaRegistry, String> {
        config.validate()?;
        let agent = crate::sink::http::agent(Duration::from_secs(config.timeout_secs))
            .map_err(|e| format!("schema-registry: cannot set up TLS: {e}"))?;
        Ok(SchemaRegistry {
            endpoint: Endpoint::parse(&config.url)?,
            agent,
            retry_for: Duration::from_secs(config.retry_secs),
            cache: RwLock::default(),
        })
    }

    /// The base URL requests go to (without credentials).
    pub fn url(&self) -> &str {
        &self.endpoint.base
    }

    /// A request to the registry's API, with its media type and the credentials.
    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url).set("Accept", MEDIA_TYPE);
        match &self.endpoint.authorization {
            Some(auth) => request.set("Authorization", auth),
            None => request,
        }
    }

    /// One request for schema `id`.
    fn fetch(&self, id: u32) -> Result<Schema, LookupError> {
        let url = format!("{}/schemas/ids/{id}", self.endpoint.base);
        let body = match self.request("GET", &url).call() {
            Ok(response) => response
                .into_string()
                .map_err(|e| LookupError::Unavailable(format!("reading {url}: {e}")))?,
            Err(ureq::Error::Status(404, _)) => return Err(LookupError::Unknown),
            Err(e) => return Err(unavailable(&url, e)),
        };
        let answer: SchemaById = serde_json::from_str(&body).map_err(|e| {
            LookupError::Unavailable(format!(
                "{url} did not answer with a schema ({e}); is schema-registry.url the registry's API?"
            ))
        })?;
        match answer.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(LookupError::Unusable(format!(
                    "it is a {other} schema, not Avro"
                )));
            }
        }
        if !answer.references.is_empty() {
            return Err(LookupError::Unusable(
                "it refers to other schemas (schema references), which Waymark does not resolve; \
                 register the schema with its named types inlined"
                    .to_owned(),
            ));
        }
        Schema::parse_str(&answer.schema).map_err(|e| {
            LookupError::Unusable(format!("the registry's schema does not parse: {e}"))
        })
    }

    /// Registers `schema` (Avro text) under `subject` (`POST /subjects/{subject}/versions`)
    /// and returns its id; registering a schema the subject already has returns the same id.
    /// The parsed schema goes into the cache, so records written with it decode without a
    /// lookup. An unreachable registry is retried for `retry-secs`
    /// ([`LookupError::Unavailable`]); a refusal (409: incompatible with the subject's
    /// compatibility rule, 422: invalid) is [`LookupError::Unusable`] with the registry's
    /// message.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, LookupError> {
        let parsed = Schema::parse_str(schema)
            .map_err(|e| LookupError::Unusable(format!("the schema does not parse: {e}")))?;
        let url = format!("{}/subjects/{subject}/versions", self.endpoint.base);
        let body = serde_json::json!({ "schema": schema }).to_string();
        let id = self.retrying(&url, || {
            let request = self.request("POST", &url).set("Content-Type", MEDIA_TYPE);
            let answer = match request.send_string(&body) {
                Ok(response) => response
                    .into_string()
                    .map_err(|e| LookupError::Unavailable(format!("reading {url}: {e}")))?,
                Err(ureq::Error::Status(code @ (409 | 422), response)) => {
                    return Err(LookupError::Unusable(format!(
                        "the registry refused it under subject `{subject}` ({code}): {}",
                        response.into_string().unwrap_or_default()
                    )));
                }
                Err(e) => return Err(unavailable(&url, e)),
            };
            #[derive(Deserialize)]
            struct Registered {
                id: u32,
            }
            serde_json::from_str::<Registered>(&answer)
                .map(|r| r.id)
                .map_err(|e| {
                    LookupError::Unavailable(format!(
                        "{url} did not answer with an id ({e}): {answer}"
                    ))
                })
        })?;
        tracing::info!(subject, id, registry = %self.endpoint.base, "Schema registered.");
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(parsed));
        Ok(id)
    }

    /// `call` until it succeeds or fails for a reason other than an unavailable registry,
    /// retrying that with backoff for `retry-secs`.
    fn retrying<T>(
        &self,
        url: &str,
        mut call: impl FnMut() -> Result<T, LookupError>,
    ) -> Result<T, LookupError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match call() {
                Err(LookupError::Unavailable(reason)) if started.elapsed() < self.retry_for => {
                    tracing::warn!(
                        %url,
                        %reason,
                        retry_in_ms = pause.as_millis() as u64,
                        "Schema registry unavailable; retrying."
                    );
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
}

/// A failed request as [`LookupError::Unavailable`]: 429, 5xx and transport failures are
/// the registry's trouble; other statuses (401/403: credentials; other 4xx: a URL that is
/// not the registry's API) are settings to fix, which retrying until the pipeline gives up
/// makes visible without dead-lettering records that are fine.
fn unavailable(url: &str, e: ureq::Error) -> LookupError {
    match e {
        ureq::Error::Status(code, response) => {
            let message = format!(
                "{url} answered {code}: {}",
                response.into_string().unwrap_or_default()
            );
            LookupError::Unavailable(if code == 429 || code >= 500 {
                message
            } else {
                format!("{message}; check schema-registry.url and its credentials")
            })
        }
        ureq::Error::Transport(t) => LookupError::Unavailable(format!("cannot reach {url}: {t}")),
    }
}

impl SchemaLookup for SchemaRegistry {
    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, LookupError> {
        if let Some(schema) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(schema.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.endpoint.base);
        let schema = Arc::new(self.retrying(&url, || self.fetch(id))?);
        tracing::info!(id, registry = %self.endpoint.base, "Fetched a writer schema.");
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, schema.clone());
        Ok(schema)
    }
}

/// A client of the registry `config` names, when one is configured.
pub fn connect(config: Option<&RegistryConfig>) -> Result<Option<Arc<SchemaRegistry>>, String> {
    config
        .map(|cfg| SchemaRegistry::new(cfg).map(Arc::new))
        .transpose()
}

/// The decoder of `customer-events` values for these settings: `format`, the optional
/// upstream `mapping`, and the schema registry when one is configured.
pub fn input_decoder(
    format: InputFormat,
    mapping: Option<&InputMapping>,
    registry: Option<&Arc<SchemaRegistry>>,
) -> InputDecoder {
    if let Some(r) = registry {
        tracing::info!(registry = %r.url(), "Avro input is read through the schema registry.");
    }
    InputDecoder {
        format,
        mapping: mapping.cloned(),
        registry: registry.map(|r| r.clone() as Arc<dyn SchemaLookup>),
    }
}

/// How Waymark's own records (commands, journey events, outcomes) are framed on its topics:
/// bare Avro datums, or, with a schema registry, the Confluent wire format with the current
/// schema registered under the topic's subject (`<topic>-value`, the default subject name
/// strategy of Confluent's serializers), so any registry-aware consumer reads them.
#[derive(Clone, Default)]
pub struct Wire {
    registry: Option<Arc<SchemaRegistry>>,
    /// Registry id of the current schema, per topic written.
    ids: HashMap<String, u32>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("registry", &self.registry.as_ref().map(|r| r.url()))
            .field("ids", &self.ids)
            .finish()
    }
}

impl Wire {
    /// Bare Avro datums when `registry` is `None`, else the Confluent wire format.
    pub fn new(registry: Option<Arc<SchemaRegistry>>) -> Wire {
        Wire {
            registry,
            ids: HashMap::new(),
        }
    }

    /// Registers the current schema of `T` under `<topic>-value`, once per topic, before
    /// [`Wire::encode`] writes to `topic`; nothing without a registry.
    pub fn register<T: AvroRecord>(&mut self, topic: &str) -> Result<(), LookupError> {
        if let Some(registry) = &self.registry
            && !self.ids.contains_key(topic)
        {
            let id = registry.register(&format!("{topic}-value"), T::SCHEMA_TEXT)?;
            self.ids.insert(topic.to_owned(), id);
        }
        Ok(())
    }

    /// `record` as the value of a record of `topic`.
    pub fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>, CodecError> {
        let framing = match (&self.registry, self.ids.get(topic)) {
            (None, _) => Framing::Raw,
            (Some(_), Some(&schema_id)) => Framing::Confluent { schema_id },
            (Some(_), None) => {
                return Err(CodecError::Encode {
                    record: T::NAME,
                    reason: format!(
                        "no schema registered for topic {topic} (a bug: Wire::register first)"
                    ),
                });
            }
        };
        codec::encode(record, framing)
    }

    /// A value of one of Waymark's topics.
    pub fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match &self.registry {
            Some(registry) => codec::decode(
                bytes,
                Framing::Confluent { schema_id: 0 },
                registry.as_ref(),
            ),
            None => codec::decode(bytes, Framing::Raw, &codec::InMemorySchemas::new()),
        }
    }
}

#[cfg(test)]
mod tests;
