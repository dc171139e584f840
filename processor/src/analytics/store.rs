//! The analytics view's RocksDB: per-customer progress, the drill-down index, and per
//! partition the aggregates with the `journey-events` offset they reflect.
//!
//! Owns the key layout and atomicity: one [`ViewBatch`] is one `WriteBatch`, so after a crash
//! the aggregates, the index and the offset always agree and reading resumes exactly after the
//! last record folded in. The directory is a cache of the topic: delete it and the view is
//! rebuilt from `journey-events` (as far as the topic's retention reaches). It must not decide
//! anything about customers; it stores what [`super::Aggregates::apply`] computed.
//!
//! Column families: `progress` (`<customer>\0<journey>` → partition + [`Progress`]), `index`
//! (`<journey>\0<version:u32 BE><step>\0<standing>\0<customer>\0<instance:u32 BE>` → partition
//! + since), `meta` (`offset/<partition>`, `aggregates/<partition>`).

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{Aggregates, Position, Progress, Standing};
use crate::model::Millis;

const CF_PROGRESS: &str = "progress";
const CF_INDEX: &str = "index";
const CF_META: &str = "meta";
/// Layout of the stored values (postcard encodings of [`Progress`] and [`Aggregates`]); a
/// database written with another layout is refused rather than misread.
const FORMAT: u32 = 2;
const FORMAT_KEY: &str = "format";

/// What went wrong with the view's database: what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (locked by another process, unwritable, damaged).
    #[error(
        "cannot open the analytics database in {path}: {message}; is another `waymark analytics serve` using this --state-dir? Otherwise check that it is writable, or delete it: the view is rebuilt from journey-events"
    )]
    Open {
        /// The directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A read or write failed, or a stored value does not decode.
    #[error(
        "analytics database in {path}: cannot {action}: {message}; check the disk, or delete the directory: the view is rebuilt from journey-events"
    )]
    Io {
        /// The directory.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The cause.
        message: String,
    },
}

/// One customer in the drill-down: who stands where since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The customer.
    pub customer_id: String,
    /// Instance number.
    pub instance: u32,
    /// Partition of `journey-events` the customer is on.
    pub partition: i32,
    /// Since when (event time, RFC 3339 in the API).
    pub since: Millis,
}

/// Everything one commit writes.
#[derive(Debug, Default)]
pub struct ViewBatch {
    progress: Vec<(String, String, i32, Progress)>,
    /// In order: a later move of the same instance must win over an earlier one.
    index: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    meta: Vec<(String, Vec<u8>)>,
}

impl ViewBatch {
    /// Stores a customer's progress in a journey.
    pub fn progress(&mut self, customer: &str, journey: &str, partition: i32, p: Progress) {
        self.progress
            .push((customer.to_owned(), journey.to_owned(), partition, p));
    }

    /// Moves an instance in the drill-down index.
    pub fn moved(
        &mut self,
        journey: &str,
        customer: &str,
        partition: i32,
        before: &Option<Position>,
        after: &Option<Position>,
    ) {
        if let Some(b) = before {
            self.index.push((index_key(journey, b, customer), None));
        }
        if let Some(a) = after {
            let mut value = partition.to_be_bytes().to_vec();
            value.extend_from_slice(&a.since.to_be_bytes());
            self.index
                .push((index_key(journey, a, customer), Some(value)));
        }
    }

    /// Stores a partition's aggregates and the offset of the next record to read.
    pub fn partition(&mut self, partition: i32, aggregates: &Aggregates, next_offset: i64) {
        self.meta.push((
            format!("offset/{partition}"),
            next_offset.to_be_bytes().to_vec(),
        ));
        self.meta.push((
            format!("aggregates/{partition}"),
            postcard::to_allocvec(aggregates).expect("aggregates serialize"),
        ));
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.progress.is_empty() && self.meta.is_empty()
    }
}

fn index_prefix(journey: &str, version: u32, step: &str, standing: Standing) -> Vec<u8> {
    let mut k = Vec::with_capacity(journey.len() + step.len() + 8);
    k.extend_from_slice(journey.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(step.as_bytes());
    k.push(0);
    k.push(match standing {
        Standing::At => b'a',
        Standing::Abandoned => b'x',
    });
    k.push(0);
    k
}

fn index_key(journey: &str, p: &Position, customer: &str) -> Vec<u8> {
    let mut k = index_prefix(journey, p.version, &p.step, p.standing);
    k.extend_from_slice(customer.as_bytes());
    k.push(0);
    k.extend_from_slice(&p.instance.to_be_bytes());
    k
}

fn progress_key(customer: &str, journey: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(customer.len() + journey.len() + 1);
    k.extend_from_slice(customer.as_bytes());
    k.push(0);
    k.extend_from_slice(journey.as_bytes());
    k
}

#[derive(Serialize, Deserialize)]
struct StoredProgress {
    partition: i32,
    progress: Progress,
}

/// The view's database.
pub struct ViewStore {
    db: DB,
    path: PathBuf,
}

impl ViewStore {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_owned(),
            message,
        };
        std::fs::create_dir_all(path).map_err(|e| open_err(e.to_string()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        let cfs = [CF_PROGRESS, CF_INDEX, CF_META]
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db =
            DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_err(e.into_string()))?;
        let store = ViewStore {
            db,
            path: path.to_owned(),
        };
        let meta = store.cf(CF_META)?;
        let stored = store.meta(FORMAT_KEY)?;
        let empty = store
            .db
            .iterator_cf(meta, IteratorMode::Start)
            .next()
            .is_none();
        match stored {
            Some(v) if v == FORMAT.to_be_bytes() => {}
            None if empty => store
                .db
                .put_cf(meta, FORMAT_KEY, FORMAT.to_be_bytes())
                .map_err(|e| open_err(e.into_string()))?,
            other => {
                let found = other
                    .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
                    .unwrap_or(1);
                return Err(open_err(format!(
                    "it holds the view in format {found}, this waymark writes format {FORMAT}; delete the directory to rebuild the view from journey-events"
                )));
            }
        }
        Ok(store)
    }

    fn io(&self, action: impl Into<String>, message: impl ToString) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            action: action.into(),
            message: message.to_string(),
        }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.io(format!("find column family `{name}`"), "missing"))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(CF_META)?, key)
            .map_err(|e| self.io(format!("read `{key}`"), e))
    }

    /// The offset of the next `journey-events` record of `partition` to read, if the view has
    /// read any of it.
    pub fn offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta(&format!("offset/{partition}"))?
            .and_then(|b| b.try_into().ok().map(i64::from_be_bytes)))
    }

    /// The aggregates of `partition` (empty when it was never read).
    pub fn aggregates(&self, partition: i32) -> Result<Aggregates, StoreError> {
        match self.meta(&format!("aggregates/{partition}"))? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| self.io(format!("decode the aggregates of partition {partition}"), e)),
            None => Ok(Aggregates::default()),
        }
    }

    /// A customer's progress in a journey, with its partition.
    pub fn progress(
        &self,
        customer: &str,
        journey: &str,
    ) -> Result<Option<(i32, Progress)>, StoreError> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(CF_PROGRESS)?, progress_key(customer, journey))
            .map_err(|e| self.io(format!("read customer {customer:?}"), e))?
        else {
            return Ok(None);
        };
        let stored: StoredProgress = postcard::from_bytes(&bytes)
            .map_err(|e| self.io(format!("decode customer {customer:?}"), e))?;
        Ok(Some((stored.partition, stored.progress)))
    }

    /// A customer's progress in every journey: `(journey, partition, progress)`.
    pub fn customer(&self, customer: &str) -> Result<Vec<(String, i32, Progress)>, StoreError> {
        let mut prefix = customer.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_PROGRESS)?,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in it {
            let (key, value) =
                item.map_err(|e| self.io(format!("read customer {customer:?}"), e))?;
            let Some(journey) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let stored: StoredProgress = postcard::from_bytes(&value)
                .map_err(|e| self.io(format!("decode customer {customer:?}"), e))?;
            out.push((
                String::from_utf8_lossy(journey).into_owned(),
                stored.partition,
                stored.progress,
            ));
        }
        Ok(out)
    }

    /// Up to `limit` customers standing at `step` of `journey`@`version`, in customer id order,
    /// after the customer `after` (the previous page's last), on partitions `owned` accepts.
    #[allow(clippy::too_many_arguments)]
    pub fn standing(
        &self,
        journey: &str,
        version: u32,
        step: &str,
        standing: Standing,
        after: Option<&str>,
        limit: usize,
        owned: &dyn Fn(i32) -> bool,
    ) -> Result<Vec<IndexEntry>, StoreError> {
        let prefix = index_prefix(journey, version, step, standing);
        let mut start = prefix.clone();
        if let Some(after) = after {
            start.extend_from_slice(after.as_bytes());
            // Past every instance of `after`: its id, then a byte above the separator.
            start.push(1);
        }
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_INDEX)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in it {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|e| self.io("read the drill-down index", e))?;
            let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if rest.len() < 5 || value.len() != 12 {
                return Err(self.io("read the drill-down index", "malformed entry"));
            }
            let (customer, instance) = rest.split_at(rest.len() - 5);
            let partition = i32::from_be_bytes(value[..4].try_into().expect("4 bytes"));
            if !owned(partition) {
                continue;
            }
            out.push(IndexEntry {
                customer_id: String::from_utf8_lossy(customer).into_owned(),
                instance: u32::from_be_bytes(instance[1..].try_into().expect("4 bytes")),
                partition,
                since: Millis::from_be_bytes(value[4..].try_into().expect("8 bytes")),
            });
        }
        Ok(out)
    }

    /// Writes a batch atomically.
    pub fn write(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        let (progress, index, meta) =
            (self.cf(CF_PROGRESS)?, self.cf(CF_INDEX)?, self.cf(CF_META)?);
        for (customer, journey, partition, p) in batch.progress {
            let bytes = postcard::to_allocvec(&StoredProgress {
                partition,
                progress: p,
            })
            .map_err(|e| self.io(format!("encode customer {customer:?}"), e))?;
            wb.put_cf(progress, progress_key(&customer, &journey), bytes);
        }
        for (key, value) in batch.index {
            match value {
                Some(v) => wb.put_cf(index, key, v),
                None => wb.delete_cf(index, key),
            }
        }
        for (key, value) in batch.meta {
            wb.put_cf(meta, key, value);
        }
        self.db.write(wb).map_err(|e| self.io("write a batch", e))
    }
}
