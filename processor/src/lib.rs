//! Waymark: a Kafka-native customer-journey orchestration engine.
//!
//! Upstream systems publish what customers do to Kafka (`customer-events`). Waymark follows
//! every customer through the journeys defined in YAML, notices what they did and what they did
//! *not* do in time, and emits intervention commands (`commands.email`, `commands.sms`,
//! `commands.contact-center`) and journey events (`journey-events`) for sinks and analytics.
//!
//! # Layout
//!
//! - [`model`]: the records of the data contract (events, commands, journey events, outcomes).
//! - [`codec`]: their Avro wire form (and the JSON form upstream teams may produce), and the
//!   input mapping of upstream records that are not `CustomerEvent`s.
//! - [`registry`]: the schema registry client behind Confluent-framed Avro values.
//! - [`journey`]: journey definitions: YAML, validation, compiled form.
//! - [`engine`]: the journey semantics. **Pure: no I/O, no clock**; shared by live and offline.
//! - [`state`]: per-partition state behind the `StateStore` seam (RocksDB, memory) and the
//!   write-back cache in front of it.
//! - [`protect`]: customer protection across journeys (suppression list, frequency caps),
//!   checked by the engine before a command is emitted.
//! - [`runtime`]: one partition around the engine: validation, watermark, timers, state.
//! - [`simulate`]: the offline mode, the executable specification.
//! - [`config`]: `waymark run`'s configuration file, environment and flags.
//! - [`kafka`]: client configuration, topic administration, `produce` and `tail`.
//! - [`pipeline`]: `waymark run`: consume, process per partition, commit outputs + offsets in
//!   one Kafka transaction.
//! - [`analytics`]: `waymark analytics serve`: the live funnel, drill-down, API and dashboard,
//!   materialized from `journey-events`.
//! - [`telemetry`]: logs, Prometheus metrics and the `/livez` `/readyz` `/metrics` server.
//! - [`shutdown`]: the one cancellation token and signal handling.
//! - [`loadgen`]: realistic, reproducible seed-journey traffic.
//!
//! # Errors
//!
//! Every module has its own `thiserror` enum whose messages say what failed, with which input,
//! and what to do; only the binary's `main` uses `anyhow`. Bad *input* is not an error of the
//! process: a malformed record is dead-lettered with headers and processing goes on.

#![deny(missing_docs)]

pub mod analytics;
pub mod backtest;
pub mod codec;
pub mod config;
pub mod engine;
pub mod journey;
pub mod kafka;
pub mod loadgen;
pub mod model;
pub mod pipeline;
pub mod protect;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod shutdown;
pub mod simulate;
pub mod sink;
pub mod state;
pub mod telemetry;
