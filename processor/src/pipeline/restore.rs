//! Rebuilding one partition's local state from its state-changelog partition.
//!
//! Owns the changelog reader of a partition being restored and the translation of changelog
//! records back into store writes (customers, their wake-ups, the watermark). It runs in
//! steps between polls of the main consumer — the partition is paused meanwhile and every
//! other partition keeps processing — so a large restore never blocks the poll loop or the
//! group's heartbeats. It must not decide *whether* a partition needs restoring (that is the
//! pipeline's comparison of local and committed state versions).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{CHANGELOG_META_PREFIX, META_OFFSET, META_STATE_VERSION, PipelineError};
use crate::config::Config;
use crate::kafka::{ToolContext, client_config};
use crate::model::Millis;
use crate::state::{RocksEnv, RocksStore, StateBatch, StateError, StateStore};
use crate::telemetry::Metrics;

/// Records written to the store per RocksDB batch while restoring.
const WRITE_BATCH: usize = 10_000;
/// Most changelog records read in one step, so the main loop gets its turn.
const STEP_RECORDS: u64 = 20_000;
/// A changelog partition that yields neither a record nor its end for this long is an error.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Store writes decoded from changelog records, not written yet.
#[derive(Default)]
struct Changes {
    batch: StateBatch,
    /// The last wake-up written per customer, so a later version of the customer replaces it.
    timers: HashMap<String, Millis>,
    /// Changelog records read.
    records: u64,
}

impl Changes {
    /// Turns one changelog record into store writes. A customer's record carries its whole
    /// state; its wake-up is derived from it. A tombstone erases the customer.
    fn apply(&mut self, key: &[u8], payload: Option<&[u8]>) -> Result<(), StateError> {
        self.records += 1;
        let key = String::from_utf8_lossy(key).into_owned();
        if let Some(meta) = key.strip_prefix(CHANGELOG_META_PREFIX) {
            self.batch
                .put_meta(meta, payload.unwrap_or_default().to_vec());
            return Ok(());
        }
        if let Some(old) = self.timers.remove(&key) {
            self.batch.delete_timer(old, &key);
        }
        match payload {
            Some(bytes) => {
                let state: crate::engine::CustomerState = crate::state::decode_value(&key, bytes)?;
                if let Some(due) = state.next_due {
                    self.batch.put_timer(due, &key);
                    self.timers.insert(key.clone(), due);
                }
                self.batch.put_customer(&key, bytes.to_vec());
            }
            None => {
                self.batch.delete_customer(&key);
            }
        }
        Ok(())
    }
}

/// A restore in progress.
pub(super) struct Restore {
    pub(super) partition: i32,
    /// The group's committed input offset the restored state corresponds to.
    pub(super) committed: i64,
    /// The state version committed with it.
    pub(super) version: u64,
    pub(super) path: PathBuf,
    reader: BaseConsumer<ToolContext>,
    store: RocksStore,
    changes: Changes,
    /// Records already counted in the metric.
    counted: u64,
    started: Instant,
    last_log: Instant,
    last_progress: Instant,
}

impl Restore {
    /// Wipes the partition's local state at `path` and starts reading its changelog partition
    /// from the beginning (`read_committed`: aborted batches are never restored).
    pub(super) fn start(
        cfg: &Config,
        rocks: &RocksEnv,
        partition: i32,
        path: PathBuf,
        committed: i64,
        version: u64,
    ) -> Result<Restore, PipelineError> {
        let state_err = PipelineError::state(partition, &path);
        let kafka_err = |action, source| PipelineError::Kafka { action, source };
        RocksStore::destroy(&path).map_err(state_err)?;
        let store = rocks.open(&path).map_err(state_err)?;
        let reader: BaseConsumer<ToolContext> =
            client_config(&cfg.kafka.brokers, &cfg.kafka.properties)
                .set("group.id", format!("{}-restore", cfg.kafka.group_id))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("isolation.level", "read_committed")
                .create_with_context(ToolContext)
                .map_err(|e| kafka_err("create the changelog reader", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&cfg.topics.state_changelog, partition, Offset::Beginning)
            .map_err(|e| kafka_err("assign the changelog partition", e))?;
        reader
            .assign(&tpl)
            .map_err(|e| kafka_err("assign the changelog partition", e))?;
        let now = Instant::now();
        Ok(Restore {
            partition,
            committed,
            version,
            path,
            reader,
            store,
            changes: Changes::default(),
            counted: 0,
            started: now,
            last_log: now,
            last_progress: now,
        })
    }

    /// Reads the next changelog records (at most [`STEP_RECORDS`], waiting at most `wait` for
    /// the first). Returns `true` once the end of the changelog partition was reached and
    /// everything is written: the store then holds the committed state, offset and version.
    pub(super) fn step(
        &mut self,
        metrics: &Metrics,
        wait: Duration,
    ) -> Result<bool, PipelineError> {
        let mut read = 0;
        let mut timeout = wait;
        let done = loop {
            if read >= STEP_RECORDS {
                break false;
            }
            match self.reader.poll(timeout) {
                Some(Ok(msg)) => {
                    timeout = Duration::ZERO;
                    read += 1;
                    self.changes
                        .apply(msg.key().unwrap_or_default(), msg.payload())
                        .map_err(PipelineError::state(self.partition, &self.path))?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break true,
                Some(Err(source)) => {
                    return Err(PipelineError::Kafka {
                        action: "read the state changelog",
                        source,
                    });
                }
                None => break false,
            }
        };
        let now = Instant::now();
        if read > 0 {
            self.last_progress = now;
        } else if !done && now - self.last_progress > STALL_TIMEOUT {
            return Err(PipelineError::Kafka {
                action: "read the state changelog (neither a record nor the end of the partition for 60 s)",
                source: KafkaError::Canceled,
            });
        }
        if self.changes.batch.len() >= WRITE_BATCH || done {
            self.flush(metrics)?;
        }
        if done {
            let mut last = StateBatch::new();
            last.put_meta(META_OFFSET, self.committed.to_be_bytes().to_vec());
            last.put_meta(META_STATE_VERSION, self.version.to_be_bytes().to_vec());
            self.write(last)?;
        } else if now - self.last_log >= Duration::from_secs(5) {
            tracing::info!(
                partition = self.partition,
                records = self.changes.records,
                elapsed_secs = self.started.elapsed().as_secs(),
                "Restoring."
            );
            self.last_log = now;
        }
        Ok(done)
    }

    /// Records read so far, and the time since the start.
    pub(super) fn progress(&self) -> (u64, Duration) {
        (self.changes.records, self.started.elapsed())
    }

    fn flush(&mut self, metrics: &Metrics) -> Result<(), PipelineError> {
        metrics.restored(self.changes.records - self.counted);
        self.counted = self.changes.records;
        let batch = std::mem::take(&mut self.changes.batch);
        self.write(batch)
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), PipelineError> {
        self.store
            .write(batch)
            .map_err(PipelineError::state(self.partition, &self.path))
    }
}
