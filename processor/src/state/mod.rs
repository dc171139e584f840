//! Per-partition durable state: customer records, a due-time timer index and metadata.
//!
//! This module owns everything a partition keeps between two events: one record per customer
//! (opaque bytes at this layer; [`StateCache`] encodes and decodes them), an index of timers
//! ordered by due time, and small metadata values such as the next input offset and the
//! watermark. It must not know about journeys, events or Kafka: it stores what it is given and
//! promises only what the [`StateStore`] trait documents.
//!
//! # Layout
//!
//! - [`StateStore`], [`StateBatch`], [`StateError`] (this file): the seam. Everything above the
//!   state layer talks to this trait, never to a storage engine.
//! - [`MemoryStore`] (`memory.rs`): `BTreeMap`s, for tests and the offline `simulate` mode.
//! - [`RocksStore`] (`rocks.rs`): one RocksDB database per partition directory.
//! - [`StateCache`] (`cache.rs`): the write-back cache of decoded records in front of any store.
//!
//! # Rules
//!
//! - **Only `rocks.rs` imports `rocksdb`.** The trait, its types, the cache and the memory
//!   store never name the engine crate, so it can be swapped or faked without touching
//!   callers. Check: `grep -rlE 'rocks[d]b::|use rocks[d]b' processor/src` prints only
//!   `processor/src/state/rocks.rs`.
//! - Every change goes through one [`StateBatch`] per commit, so customer records, timers and
//!   the input offsets in meta always describe the same moment.
//! - No operation panics on stored data: malformed bytes are a [`StateError`] that names the
//!   key and says what to do.

mod cache;
mod memory;
mod rocks;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

#[cfg(test)]
use cache::ENCODE_CHUNK;
pub use cache::{
    DEFAULT_CACHE_CAPACITY, FlushStats, PreparedBatch, STATE_FORMAT_VERSION, StateCache,
    decode_stored, decode_value, encode_value,
};
pub use memory::MemoryStore;
pub use rocks::{RocksEnv, RocksOptions, RocksStore};

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// May be negative (before 1970); the timer index orders negative times before positive ones.
pub type Millis = i64;

/// One operation of a [`StateBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Create or replace a customer's record.
    PutCustomer {
        /// Customer id.
        id: String,
        /// The record, opaque to the store.
        bytes: Vec<u8>,
    },
    /// Delete a customer's record (no effect if there is none).
    DeleteCustomer {
        /// Customer id.
        id: String,
    },
    /// Add the timer index entry `(due, id)` (no effect if it exists).
    PutTimer {
        /// When the timer is due.
        due: Millis,
        /// Customer id.
        id: String,
    },
    /// Remove the timer index entry `(due, id)` (no effect if there is none).
    DeleteTimer {
        /// When the timer was due.
        due: Millis,
        /// Customer id.
        id: String,
    },
    /// Create or replace a metadata value.
    PutMeta {
        /// Metadata key, e.g. `input-offset`.
        key: String,
        /// The value, opaque to the store.
        bytes: Vec<u8>,
    },
}

/// One atomic unit of change to a partition's state.
///
/// A batch is a list of operations in the order they were added; [`StateStore::write`] applies
/// all of them or none. Building a batch touches no store. A batch is consumed by `write`, so
/// it cannot be applied twice by accident.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateBatch {
    /// The operations, in the order they were added.
    ops: Vec<BatchOp>,
}

impl StateBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `ops` operations.
    pub fn with_capacity(ops: usize) -> Self {
        StateBatch {
            ops: Vec::with_capacity(ops),
        }
    }

    /// Creates or replaces the record of `id`.
    pub fn put_customer(&mut self, id: &str, bytes: Vec<u8>) -> &mut Self {
        self.ops.push(BatchOp::PutCustomer {
            id: id.to_owned(),
            bytes,
        });
        self
    }

    /// Deletes the record of `id`.
    pub fn delete_customer(&mut self, id: &str) -> &mut Self {
        self.ops.push(BatchOp::DeleteCustomer { id: id.to_owned() });
        self
    }

    /// Adds the timer index entry `(due, id)`.
    pub fn put_timer(&mut self, due: Millis, id: &str) -> &mut Self {
        self.ops.push(BatchOp::PutTimer {
            due,
            id: id.to_owned(),
        });
        self
    }

    /// Removes the timer index entry `(due, id)`.
    pub fn delete_timer(&mut self, due: Millis, id: &str) -> &mut Self {
        self.ops.push(BatchOp::DeleteTimer {
            due,
            id: id.to_owned(),
        });
        self
    }

    /// Creates or replaces the metadata value under `key`.
    pub fn put_meta(&mut self, key: &str, bytes: Vec<u8>) -> &mut Self {
        self.ops.push(BatchOp::PutMeta {
            key: key.to_owned(),
            bytes,
        });
        self
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The operations, in the order they were added (e.g. to produce a changelog from them).
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }
}

/// A partition's durable state: customer records, the timer index and metadata.
///
/// The store is a dumb keyspace: it neither interprets nor validates the bytes it holds.
/// One store belongs to one partition and one task; reads take `&self`, writes `&mut self`.
///
/// # Atomicity
///
/// [`write`](Self::write) applies a whole [`StateBatch`] or nothing of it. Customer records,
/// timer entries and metadata in one batch commit together: a reader (or a process that opens
/// the store after a crash) sees either the state before the batch or the state after it,
/// never a mix. This is what keeps the input offsets stored in meta in step with the state
/// they produced: store both in one batch and, after any crash, the offsets say exactly which
/// input the stored state already contains. When `write` returns an error, nothing of the batch
/// was applied; the caller may retry with the same operations.
///
/// # Ordering
///
/// Operations apply in the order they were added to the batch. When several operations of one
/// batch touch the same key (a customer id, a `(due, id)` timer entry, a meta key), the later
/// one wins: `put_customer("a", x)` then `delete_customer("a")` leaves no record;
/// `delete_timer(t, "a")` then `put_timer(t, "a")` leaves the entry. Timer entries are keyed by
/// `(due, id)`, so entries with different due times for one customer are independent keys.
///
/// # Durability
///
/// Each implementation documents when a batch survives a crash. [`RocksStore`]: the write-ahead
/// log is always on, so a batch for which `write` returned `Ok` survives a crash of the process;
/// with `sync-writes: true` it also survives an OS crash or power loss, with `false` (the
/// default) the last batches before an OS crash may be lost, and the partition's changelog
/// restores them. [`MemoryStore`] keeps nothing beyond its own lifetime.
pub trait StateStore: Send {
    /// The record of `customer_id`, if there is one.
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Timer entries with `due <= upto`, ascending by `(due, customer id)` (ids compare as
    /// bytes), at most `limit` of them.
    fn due_timers(&self, upto: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StateError>;

    /// The metadata value under `key`, if there is one.
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Applies every operation of the batch atomically (all or nothing), in order (the later
    /// operation on a key wins) and durably as the implementation documents. See the trait doc.
    fn write(&mut self, batch: StateBatch) -> Result<(), StateError>;

    /// A writer of this store for another thread, if the store has one: a commit can then
    /// write its batch while the store's owner goes on (RocksDB: yes; the in-memory store:
    /// no, its batches go through [`write`](Self::write)). The owner must not write, nor read
    /// what the batch changes, until that write returned.
    fn writer(&self) -> Option<Box<dyn StoreWriter>> {
        None
    }

    /// A reader of this store's customer records for another thread, if the store has one
    /// (RocksDB: yes; the in-memory store: no). It sees what was written before each read; the
    /// owner must only trust what it reads of customers no write in flight changes.
    fn reader(&self) -> Option<Box<dyn StoreReader>> {
        None
    }

    /// Calls `f(customer id, record)` for every customer record in ascending id order, until
    /// `f` returns `false` (for `state inspect`, changelog snapshots and restore checks).
    fn for_each_customer(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StateError>;

    /// Approximate `(customer records, timer entries)`, for metrics. Cheap; may be off by a
    /// margin after many deletes (RocksDB estimates from its files).
    fn approximate_counts(&self) -> Result<(u64, u64), StateError>;

    /// Approximate bytes the state takes (on disk and in write buffers), for metrics. Cheap.
    fn approximate_bytes(&self) -> Result<u64, StateError>;
}

/// Writes batches to one store from a thread other than its owner's (see
/// [`StateStore::writer`]).
pub trait StoreWriter: Send {
    /// Applies the batch as [`StateStore::write`] does: atomically, in order, as durably as the
    /// store documents.
    fn write(&self, batch: StateBatch) -> Result<(), StateError>;
}

/// Reads customer records of one store from a thread other than its owner's (see
/// [`StateStore::reader`]); keeps the store open until it is dropped.
pub trait StoreReader: Send {
    /// The record of `customer_id`, if there is one, as [`StateStore::get_customer`] reads it.
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError>;
}

/// What went wrong in the state layer: what failed, with which path or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database's lock is held: another process, or another store in this process, has
    /// the same directory open.
    #[error(
        "state directory {path} is locked by another process: is a second `waymark run` using \
         the same --state-dir? Stop it, or give each instance its own --state-dir"
    )]
    Locked {
        /// The partition's state directory.
        path: PathBuf,
    },
    /// The options are out of range; nothing was opened.
    #[error("invalid state option `{field}`: {message}")]
    InvalidOption {
        /// The option's name as written in the configuration file (kebab-case).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The database could not be opened or created.
    #[error(
        "cannot open the state database in {path}: {message}; check that the directory is \
         writable and the disk is not full, or delete the directory so the partition is \
         restored from its changelog"
    )]
    Open {
        /// The partition's state directory.
        path: PathBuf,
        /// The storage engine's message.
        message: String,
    },
    /// A read failed in the storage engine.
    #[error(
        "cannot read {what} from the state database in {path}: {message}; check the disk, or \
         delete the directory so the partition is restored from its changelog"
    )]
    Read {
        /// The partition's state directory.
        path: PathBuf,
        /// What was read, e.g. `customer "c-1"` or `timers due by 1700000000000`.
        what: String,
        /// The storage engine's message.
        message: String,
    },
    /// A batch could not be written; nothing of it was applied.
    #[error(
        "cannot write a batch of {ops} operations to the state database in {path}: {message}; \
         nothing of the batch was applied, so the commit can be retried; check free disk space"
    )]
    Write {
        /// The partition's state directory.
        path: PathBuf,
        /// Number of operations in the batch.
        ops: usize,
        /// The storage engine's message.
        message: String,
    },
    /// A stored key does not have the layout this version writes.
    #[error(
        "the state database in {path} holds a malformed {keyspace} key {key}: {detail}; it was \
         written by another version of waymark or is damaged: delete the directory so the \
         partition is restored from its changelog"
    )]
    Corrupt {
        /// The partition's state directory.
        path: PathBuf,
        /// The keyspace (`customers`, `timers`, `meta`).
        keyspace: &'static str,
        /// The key, escaped for printing.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A partition's state could not be deleted.
    #[error(
        "cannot delete the state database in {path}: {message}; stop any process using it, \
         then remove the directory by hand"
    )]
    Destroy {
        /// The partition's state directory.
        path: PathBuf,
        /// The storage engine's message.
        message: String,
    },
    /// A customer record carries a format version this build cannot read.
    #[error(
        "customer record {key:?} has state format version {found}, but this build reads only \
         version {supported}: run the waymark version that wrote it, or delete the partition's \
         state directory so it is rebuilt from the changelog"
    )]
    UnknownFormat {
        /// Customer id.
        key: String,
        /// The version byte found.
        found: u8,
        /// The version this build reads and writes.
        supported: u8,
    },
    /// A customer record's bytes do not decode as the current state type.
    #[error(
        "customer record {key:?} cannot be decoded: {message}; the record is damaged or was \
         written by an incompatible build: delete the partition's state directory so it is \
         rebuilt from the changelog"
    )]
    Decode {
        /// Customer id.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// A customer record could not be encoded (a bug in the state type's `Serialize`).
    #[error(
        "customer record {key:?} cannot be encoded: {message}; this is a bug, please report it"
    )]
    Encode {
        /// Customer id.
        key: String,
        /// The encoder's message.
        message: String,
    },
}
