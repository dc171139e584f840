//! [`RocksStore`]: the durable [`StateStore`], one RocksDB database per partition directory.
//!
//! This is the only file of the crate that imports `rocksdb`. It owns the on-disk layout:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `customers` | customer id (UTF-8) | the record |
//! | `timers` | 8-byte big-endian `(due as u64) ^ (1 << 63)`, then the customer id | empty |
//! | `meta` | meta key (UTF-8) | the value |
//!
//! Flipping the sign bit makes the unsigned big-endian byte order of the timer key prefix equal
//! the signed order of due times (negative first), so RocksDB's byte-wise order is
//! `(due, customer id)` order. A batch becomes one RocksDB `WriteBatch` across the three column
//! families with the write-ahead log on, which is atomic across column families.
//!
//! It must not interpret records or meta values, and must not know which partition or topic a
//! directory belongs to: callers pick the directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    ErrorKind, Options, ReadOptions, WriteBatch, WriteBufferManager, WriteOptions, properties,
};
use serde::{Deserialize, Serialize};

use super::{BatchOp, Millis, StateBatch, StateError, StateStore, StoreReader, StoreWriter};

/// Column family of customer records.
const CF_CUSTOMERS: &str = "customers";
/// Column family of the timer index.
const CF_TIMERS: &str = "timers";
/// Column family of metadata.
const CF_META: &str = "meta";

/// Length of a timer key's due-time prefix.
const DUE_LEN: usize = 8;
/// XOR-ed into a due time's bits so that byte order equals signed order.
const SIGN_FLIP: u64 = 1 << 63;

/// Largest accepted `block-cache-mib` / `write-buffer-mib` (1 TiB); guards the byte arithmetic.
const MAX_MIB: u32 = 1 << 20;

/// RocksDB tuning, the `rocksdb:` section of `waymark run`'s configuration.
///
/// The memory budgets are per [`RocksEnv`]: every partition opened through one environment
/// shares them. Blocks are always compressed with LZ4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RocksOptions {
    /// Size of the block cache (uncompressed data blocks read from disk), in MiB, shared by
    /// every partition of one [`RocksEnv`]. `0` disables caching. Example: `256`. Default 64.
    #[serde(default = "default_block_cache_mib")]
    pub block_cache_mib: u32,
    /// Memtable budget (writes buffered in memory before they are flushed to a file), in MiB,
    /// shared by every partition of one [`RocksEnv`]; when all memtables together reach it,
    /// RocksDB flushes the fullest. Also the largest size of one column family's memtable.
    /// At least 1. Example: `128`. Default 32.
    #[serde(default = "default_write_buffer_mib")]
    pub write_buffer_mib: u32,
    /// Whether each batch write waits for the write-ahead log to reach the disk (`fsync`).
    /// `false`: a batch survives a crash of the process but may be lost in an OS crash or power
    /// loss (the changelog restores it); `true`: it survives both, at the cost of one `fsync`
    /// per commit. Default false.
    #[serde(default = "default_sync_writes")]
    pub sync_writes: bool,
}

/// Default of [`RocksOptions::block_cache_mib`]: 64 MiB.
const fn default_block_cache_mib() -> u32 {
    64
}

/// Default of [`RocksOptions::write_buffer_mib`]: 32 MiB.
const fn default_write_buffer_mib() -> u32 {
    32
}

/// Default of [`RocksOptions::sync_writes`]: off.
const fn default_sync_writes() -> bool {
    false
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_mib: default_block_cache_mib(),
            write_buffer_mib: default_write_buffer_mib(),
            sync_writes: default_sync_writes(),
        }
    }
}

impl RocksOptions {
    /// Checks every field's range; the error names the field as written in the configuration.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.block_cache_mib > MAX_MIB {
            return Err(StateError::InvalidOption {
                field: "block-cache-mib",
                message: format!("{} is more than {MAX_MIB} MiB", self.block_cache_mib),
            });
        }
        if self.write_buffer_mib == 0 || self.write_buffer_mib > MAX_MIB {
            return Err(StateError::InvalidOption {
                field: "write-buffer-mib",
                message: format!(
                    "{} is outside 1..={MAX_MIB} MiB (RocksDB needs a memtable to write)",
                    self.write_buffer_mib
                ),
            });
        }
        Ok(())
    }
}

/// Bytes in `mib` MiB (`mib` is at most [`MAX_MIB`] after validation, so this cannot overflow
/// on 64-bit targets; it saturates elsewhere).
fn mib_to_bytes(mib: u32) -> usize {
    usize::try_from(u64::from(mib) << 20).unwrap_or(usize::MAX)
}

/// What the partitions of one process share: the options, one block cache and one memtable
/// budget. Cheap to clone (reference-counted).
///
/// Open every partition through one environment ([`RocksEnv::open`]) so the memory budgets of
/// [`RocksOptions`] hold for the whole process rather than per partition.
#[derive(Clone)]
pub struct RocksEnv {
    /// The validated options.
    options: RocksOptions,
    /// Block cache shared by all databases of this environment.
    block_cache: Cache,
    /// Memtable budget shared by all databases of this environment.
    write_buffers: WriteBufferManager,
}

impl fmt::Debug for RocksEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksEnv")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RocksEnv {
    /// Validates `options` and creates the shared block cache and memtable budget.
    pub fn new(options: &RocksOptions) -> Result<Self, StateError> {
        options.validate()?;
        Ok(RocksEnv {
            options: options.clone(),
            block_cache: Cache::new_lru_cache(mib_to_bytes(options.block_cache_mib)),
            write_buffers: WriteBufferManager::new_write_buffer_manager(
                mib_to_bytes(options.write_buffer_mib),
                false,
            ),
        })
    }

    /// The options this environment was created with.
    pub fn options(&self) -> &RocksOptions {
        &self.options
    }

    /// Opens the partition database in directory `path`, creating the directory (and its
    /// parents) and the database if missing.
    ///
    /// Fails with [`StateError::Locked`] if another process or another open store holds it.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<RocksStore, StateError> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|e| StateError::Open {
            path: path.to_owned(),
            message: format!("cannot create the directory: {e}"),
        })?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_write_buffer_manager(&self.write_buffers);
        db_opts.set_keep_log_file_num(4);

        let cfs = [CF_CUSTOMERS, CF_TIMERS, CF_META].map(|name| {
            // Only customer records are read by key while processing; the timer index is
            // scanned when a partition opens, meta read then. Their filters would only cost:
            // hashing every key into the memtable's filter took 10% of the commit thread, the
            // timer keys about half of that (BENCHMARKS.md, 2026-12-07).
            ColumnFamilyDescriptor::new(name, self.cf_options(name == CF_CUSTOMERS))
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            if is_lock_error(&e) {
                StateError::Locked {
                    path: path.to_owned(),
                }
            } else {
                StateError::Open {
                    path: path.to_owned(),
                    message: e.into_string(),
                }
            }
        })?;
        tracing::debug!(path = %path.display(), "State database opened.");
        Ok(RocksStore {
            db: Arc::new(db),
            path: path.to_owned(),
            write_options: self.write_options(),
            env: self.clone(),
        })
    }

    /// Options of a column family; `point_reads`: it is read by key while processing, so it
    /// gets Bloom filters.
    fn cf_options(&self, point_reads: bool) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.block_cache);
        // Most reads of a new customer find nothing: a Bloom filter answers those without
        // reading a data block. Filters and indexes stay in memory beside the block cache (about
        // 1.3 bytes of filter per key, and one index entry per 4 KiB data block), never evicted:
        // kept in a 64 MiB cache they were, once a few million customers were stored, and every
        // read decompressed an index block again; new-customer logins fell from about 30,000
        // to 2,300 a second (BENCHMARKS.md, 2026-12-05).
        if point_reads {
            table.set_bloom_filter(10.0, false);
        }
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        if point_reads {
            // The memtable gets a whole-key filter too: a miss there skips the skip-list search.
            cf_opts.set_memtable_prefix_bloom_ratio(0.02);
            cf_opts.set_memtable_whole_key_filtering(true);
        }
        cf_opts.set_compression_type(DBCompressionType::Lz4);
        // Customers are spread over the whole key range, so every compaction of level 0 into
        // the (single, until it grows past 256 MiB) next level rewrites all of it: compacting
        // after 8 flushed files instead of 4 halves that. At 34,050 events/s over a million
        // customers, compaction took 9.6 s of CPU instead of 15.9-17.7 s (BENCHMARKS.md,
        // 2026-12-05); reads of customers not cached check up to 8 files' Bloom filters.
        cf_opts.set_level_zero_file_num_compaction_trigger(8);
        cf_opts.set_write_buffer_size(mib_to_bytes(self.options.write_buffer_mib));
        cf_opts
    }

    /// Options of every batch write: synced per [`RocksOptions::sync_writes`], WAL on.
    fn write_options(&self) -> WriteOptions {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(self.options.sync_writes);
        write_options
    }
}

/// Whether a RocksDB error means the database's `LOCK` file is held: by another process
/// (`IO error: While lock file: <dir>/LOCK: Resource temporarily unavailable`) or by another
/// open handle in this process (`IO error: lock hold by current process, ...`). Other errors
/// about the `LOCK` file, such as a permission problem, are not lock errors.
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let message = e.as_ref();
    e.kind() == ErrorKind::IOError
        && (message.contains("While lock file") || message.contains("lock hold by current process"))
}

/// A [`RocksStore`]'s writer for another thread (see [`StateStore::writer`]); it keeps the
/// database open until it is dropped.
struct RocksWriter {
    db: Arc<DB>,
    path: PathBuf,
    write_options: WriteOptions,
}

impl StoreWriter for RocksWriter {
    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        write_to(&self.db, &self.path, &self.write_options, batch)
    }
}

/// A [`RocksStore`]'s reader for another thread (see [`StateStore::reader`]); it keeps the
/// database open until it is dropped.
struct RocksReader {
    db: Arc<DB>,
    path: PathBuf,
}

impl StoreReader for RocksReader {
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        read_customer(&self.db, &self.path, customer_id)
    }
}

/// The record of `customer_id` in the database in `path`.
fn read_customer(db: &DB, path: &Path, customer_id: &str) -> Result<Option<Vec<u8>>, StateError> {
    db.get_cf(cf_of(db, path, CF_CUSTOMERS)?, customer_id)
        .map_err(|e| read_error(path, format!("customer {customer_id:?}"), e))
}

/// A read error about `what` in the database in `path`.
fn read_error(path: &Path, what: String, e: rocksdb::Error) -> StateError {
    StateError::Read {
        path: path.to_owned(),
        what,
        message: e.into_string(),
    }
}

/// The handle of column family `name` of the database in `path`, which `open` created.
fn cf_of<'a>(db: &'a DB, path: &Path, name: &'static str) -> Result<&'a ColumnFamily, StateError> {
    db.cf_handle(name).ok_or_else(|| StateError::Open {
        path: path.to_owned(),
        message: format!("column family `{name}` is missing"),
    })
}

/// Writes `batch` to the database in `path` as one `WriteBatch` across the column families.
fn write_to(
    db: &DB,
    path: &Path,
    write_options: &WriteOptions,
    batch: StateBatch,
) -> Result<(), StateError> {
    if batch.is_empty() {
        return Ok(());
    }
    let ops = batch.len();
    let (customers, timers, meta) = (
        cf_of(db, path, CF_CUSTOMERS)?,
        cf_of(db, path, CF_TIMERS)?,
        cf_of(db, path, CF_META)?,
    );
    let mut wb = WriteBatch::default();
    for op in &batch.ops {
        match op {
            BatchOp::PutCustomer { id, bytes } => wb.put_cf(customers, id, bytes),
            BatchOp::DeleteCustomer { id } => wb.delete_cf(customers, id),
            BatchOp::PutTimer { due, id } => wb.put_cf(timers, timer_key(*due, id), b""),
            BatchOp::DeleteTimer { due, id } => wb.delete_cf(timers, timer_key(*due, id)),
            BatchOp::PutMeta { key, bytes } => wb.put_cf(meta, key, bytes),
        }
    }
    db.write_opt(wb, write_options)
        .map_err(|e| StateError::Write {
            path: path.to_owned(),
            ops,
            message: e.into_string(),
        })
}

/// A partition's state in a RocksDB database (see the module doc for the layout).
///
/// Atomicity: one batch is one RocksDB `WriteBatch` across all column families. Durability:
/// the write-ahead log is always on; a batch for which [`write`](StateStore::write) returned
/// `Ok` survives a process crash, and with [`RocksOptions::sync_writes`] an OS crash too.
/// Closing is dropping. One directory can be open once at a time (RocksDB's `LOCK` file).
pub struct RocksStore {
    /// The database (shared with the writers handed out by [`StateStore::writer`]).
    db: Arc<DB>,
    /// The directory, for error messages.
    path: PathBuf,
    /// Write options (sync per [`RocksOptions::sync_writes`]; WAL always on).
    write_options: WriteOptions,
    /// Keeps the shared cache and memtable budget alive as long as the database.
    env: RocksEnv,
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Opens (creating if missing, parents included) the partition database in `path` with its
    /// own block cache and memtable budget. To share them across partitions use [`RocksEnv::open`].
    pub fn open(path: impl AsRef<Path>, options: &RocksOptions) -> Result<Self, StateError> {
        RocksEnv::new(options)?.open(path)
    }

    /// Deletes the partition database in `path` (when a partition is handed over or its state
    /// must be rebuilt from the changelog). A missing directory is not an error; a directory
    /// still open (here or in another process) is [`StateError::Locked`].
    pub fn destroy(path: impl AsRef<Path>) -> Result<(), StateError> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok(());
        }
        DB::destroy(&Options::default(), path).map_err(|e| {
            if is_lock_error(&e) {
                StateError::Locked {
                    path: path.to_owned(),
                }
            } else {
                StateError::Destroy {
                    path: path.to_owned(),
                    message: e.into_string(),
                }
            }
        })?;
        // RocksDB removes its own files; remove the directory too if nothing else is in it.
        match std::fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
            Err(e) => {
                return Err(StateError::Destroy {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        }
        tracing::debug!(path = %path.display(), "State database destroyed.");
        Ok(())
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle of column family `name`, which `open` created.
    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StateError> {
        cf_of(&self.db, &self.path, name)
    }

    /// A read error about `what`.
    fn read_error(&self, what: impl FnOnce() -> String, e: rocksdb::Error) -> StateError {
        read_error(&self.path, what(), e)
    }

    /// A malformed-key error.
    fn corrupt(&self, keyspace: &'static str, key: &[u8], detail: String) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            keyspace,
            key: key.escape_ascii().to_string(),
            detail,
        }
    }
}

/// The 8-byte prefix of a timer key: `due` with its sign bit flipped, big-endian.
fn encode_due(due: Millis) -> [u8; DUE_LEN] {
    ((due as u64) ^ SIGN_FLIP).to_be_bytes()
}

/// The timer key of `(due, id)`.
fn timer_key(due: Millis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(DUE_LEN + id.len());
    key.extend_from_slice(&encode_due(due));
    key.extend_from_slice(id.as_bytes());
    key
}

/// Splits a timer key into `(due, customer id)`; `Err` says what is malformed.
fn decode_timer_key(key: &[u8]) -> Result<(Millis, &str), String> {
    let Some((prefix, id)) = key.split_first_chunk::<DUE_LEN>() else {
        return Err(format!(
            "{} bytes, shorter than the {DUE_LEN}-byte due time",
            key.len()
        ));
    };
    let due = (u64::from_be_bytes(*prefix) ^ SIGN_FLIP) as Millis;
    let id = std::str::from_utf8(id).map_err(|e| format!("customer id is not UTF-8: {e}"))?;
    Ok((due, id))
}

impl StateStore for RocksStore {
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        read_customer(&self.db, &self.path, customer_id)
    }

    fn due_timers(&self, upto: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StateError> {
        let mut due = Vec::new();
        if limit == 0 {
            return Ok(due);
        }
        let mut read = ReadOptions::default();
        // Every key of a due time <= upto sorts before the prefix of upto + 1. With no
        // upper bound (upto == Millis::MAX) every key qualifies.
        if let Some(next) = upto.checked_add(1) {
            read.set_iterate_upper_bound(encode_due(next).to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_TIMERS)?, read);
        it.seek_to_first();
        while due.len() < limit {
            let Some(key) = it.key() else { break };
            let (at, id) = decode_timer_key(key).map_err(|d| self.corrupt(CF_TIMERS, key, d))?;
            due.push((at, id.to_owned()));
            it.next();
        }
        it.status()
            .map_err(|e| self.read_error(|| format!("timers due by {upto}"), e))?;
        Ok(due)
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.cf(CF_META)?, key)
            .map_err(|e| self.read_error(|| format!("meta {key:?}"), e))
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        write_to(&self.db, &self.path, &self.write_options, batch)
    }

    fn writer(&self) -> Option<Box<dyn StoreWriter>> {
        Some(Box::new(RocksWriter {
            db: Arc::clone(&self.db),
            path: self.path.clone(),
            write_options: self.env.write_options(),
        }))
    }

    fn reader(&self) -> Option<Box<dyn StoreReader>> {
        Some(Box::new(RocksReader {
            db: Arc::clone(&self.db),
            path: self.path.clone(),
        }))
    }

    fn for_each_customer(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StateError> {
        let mut read = ReadOptions::default();
        // A full scan must not push the working set out of the shared block cache.
        read.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_CUSTOMERS)?, read);
        it.seek_to_first();
        while let Some((key, value)) = it.item() {
            let id = std::str::from_utf8(key).map_err(|e| {
                self.corrupt(CF_CUSTOMERS, key, format!("customer id is not UTF-8: {e}"))
            })?;
            if !f(id, value) {
                return Ok(());
            }
            it.next();
        }
        it.status()
            .map_err(|e| self.read_error(|| "all customers".to_owned(), e))
    }

    fn approximate_counts(&self) -> Result<(u64, u64), StateError> {
        let count = |name: &'static str| -> Result<u64, StateError> {
            self.db
                .property_int_value_cf(self.cf(name)?, properties::ESTIMATE_NUM_KEYS)
                .map(Option::unwrap_or_default)
                .map_err(|e| self.read_error(|| format!("the key count of `{name}`"), e))
        };
        Ok((count(CF_CUSTOMERS)?, count(CF_TIMERS)?))
    }

    fn approximate_bytes(&self) -> Result<u64, StateError> {
        let mut total = 0;
        for name in [CF_CUSTOMERS, CF_TIMERS, CF_META] {
            for property in [
                properties::TOTAL_SST_FILES_SIZE,
                properties::CUR_SIZE_ALL_MEM_TABLES,
            ] {
                total += self
                    .db
                    .property_int_value_cf(self.cf(name)?, property)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| self.read_error(|| format!("the size of `{name}`"), e))?;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn timer_key_order_matches_due_then_id_order(
            a in (any::<i64>(), "[a-c]{0,3}"),
            b in (any::<i64>(), "[a-c]{0,3}"),
        ) {
            let (ka, kb) = (timer_key(a.0, &a.1), timer_key(b.0, &b.1));
            prop_assert_eq!(ka.cmp(&kb), (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
            prop_assert_eq!(decode_timer_key(&ka), Ok((a.0, a.1.as_str())));
        }
    }

    #[test]
    fn timer_key_shorter_than_due_prefix_is_malformed() {
        assert!(decode_timer_key(&[1, 2, 3]).is_err());
    }

    #[test]
    fn zero_write_buffer_is_rejected_naming_the_field() {
        let options = RocksOptions {
            write_buffer_mib: 0,
            ..RocksOptions::default()
        };
        let err = options.validate().unwrap_err();
        assert!(err.to_string().contains("write-buffer-mib"), "{err}");
    }

    #[test]
    fn options_parse_kebab_case_and_reject_unknown_keys() {
        let options: RocksOptions =
            serde_json::from_str(r#"{"block-cache-mib": 8, "sync-writes": true}"#).unwrap();
        assert_eq!(
            options,
            RocksOptions {
                block_cache_mib: 8,
                write_buffer_mib: default_write_buffer_mib(),
                sync_writes: true,
            }
        );
        assert!(serde_json::from_str::<RocksOptions>(r#"{"block_cache_mib": 8}"#).is_err());
    }
}
