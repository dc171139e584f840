//! [`StateCache`]: a write-back cache of decoded customer records in front of any [`StateStore`].
//!
//! It owns the encoding of records (a format-version byte, then postcard) and everything that
//! changed since the last flush: dirty records, timer index moves and meta values. It turns
//! them into one [`StateBatch`] per flush. It must not decide *when* to flush (the caller flushes
//! at every commit point) and must not interpret the records it caches.

use std::collections::BTreeMap;

use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashTable, hash_table};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Millis, StateBatch, StateError, StateStore};

/// Format version written as the first byte of every customer record.
///
/// Bump it when the state type changes incompatibly, and teach [`decode_value`] to read the
/// previous version (or to say clearly that it cannot).
///
/// Version 3 added a last field, an `Option` (`CustomerState::identity`); a version 2 record
/// is read as a version 3 record whose last field is `None`.
pub const STATE_FORMAT_VERSION: u8 = 3;

/// The previous format version, still read (see [`STATE_FORMAT_VERSION`]).
const PREVIOUS_FORMAT_VERSION: u8 = 2;

/// Most threads a flush encodes dirty records on (fewer if the machine has fewer cores).
const ENCODE_THREADS: usize = 4;

/// Fewest dirty records per encoding thread: below this, starting a thread costs more than
/// it saves.
pub(crate) const ENCODE_CHUNK: usize = 2_000;

/// A dirty customer's id and its encoded record (`None`: delete it).
type Encoded<'a> = (&'a str, Option<Vec<u8>>);

/// Default [`StateCache`] capacity, in entries (customers).
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// Encodes a customer record: [`STATE_FORMAT_VERSION`], then `value` in postcard.
///
/// `id` only names the record in the error.
pub fn encode_value<V: Serialize + ?Sized>(id: &str, value: &V) -> Result<Vec<u8>, StateError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(STATE_FORMAT_VERSION);
    postcard::to_extend(value, bytes).map_err(|e| StateError::Encode {
        key: id.to_owned(),
        message: e.to_string(),
    })
}

/// Decodes a customer record written by [`encode_value`].
///
/// Fails with [`StateError::UnknownFormat`] (naming `id`) if the version byte is not
/// [`STATE_FORMAT_VERSION`], and with [`StateError::Decode`] if the bytes are empty, do not
/// decode, or have bytes left over.
pub fn decode_value<V: DeserializeOwned>(id: &str, bytes: &[u8]) -> Result<V, StateError> {
    let decode_error = |message: String| StateError::Decode {
        key: id.to_owned(),
        message,
    };
    let Some((&version, body)) = bytes.split_first() else {
        return Err(decode_error(
            "the record is empty (no format version byte)".to_owned(),
        ));
    };
    let upgraded;
    let body = match version {
        STATE_FORMAT_VERSION => body,
        PREVIOUS_FORMAT_VERSION => {
            // Postcard writes `None` as one zero byte.
            upgraded = [body, &[0]].concat();
            &upgraded[..]
        }
        _ => {
            return Err(StateError::UnknownFormat {
                key: id.to_owned(),
                found: version,
                supported: STATE_FORMAT_VERSION,
            });
        }
    };
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| decode_error(e.to_string()))?;
    if !rest.is_empty() {
        return Err(decode_error(format!(
            "{} bytes left over after the record",
            rest.len()
        )));
    }
    Ok(value)
}

/// Decodes a customer's record as the store returned it (`None`: the customer has none).
pub fn decode_stored<V: DeserializeOwned>(
    id: &str,
    stored: Option<Vec<u8>>,
) -> Result<Option<V>, StateError> {
    stored.map(|bytes| decode_value(id, &bytes)).transpose()
}

/// One cached customer.
#[derive(Debug)]
struct Entry<V> {
    /// The decoded record; `None` if the customer has no record (never had one, or removed).
    value: Option<V>,
    /// Whether `value` differs from the store (or may: it was handed out mutably): 0 if not,
    /// else one more than its place in [`StateCache::dirty`].
    dirty: u32,
    /// Access clock value of the last access; unique per entry, larger is more recent.
    used: u64,
}

/// A dirty entry: its id, and its record encoded by [`StateCache::seal`] if it has not changed
/// since.
#[derive(Debug)]
struct Dirty {
    id: String,
    sealed: Option<Vec<u8>>,
}

/// A flush encoded by [`StateCache::prepare`] and not yet written.
#[derive(Debug)]
pub struct PreparedBatch {
    /// Every change, as one atomic batch.
    pub batch: StateBatch,
    /// What the batch holds.
    pub stats: FlushStats,
}

/// What one [`StateCache::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Customer records written.
    pub customers_put: usize,
    /// Customer records deleted.
    pub customers_deleted: usize,
    /// Timer index entries added.
    pub timers_put: usize,
    /// Timer index entries removed.
    pub timers_deleted: usize,
    /// Meta values written.
    pub meta_put: usize,
    /// Clean entries evicted from the cache after the write.
    pub evicted: usize,
}

impl FlushStats {
    /// Operations in the batch that was written (0: nothing was written).
    pub fn ops(&self) -> usize {
        self.customers_put
            + self.customers_deleted
            + self.timers_put
            + self.timers_deleted
            + self.meta_put
    }
}

/// A write-back cache of decoded customer records (`V`), plus the timer moves and meta values
/// pending for the next flush.
///
/// # What it promises
///
/// - **Reads see the latest writes.** [`get`](Self::get), [`get_mut`](Self::get_mut),
///   [`get_meta`](Self::get_meta) and [`due_timers`](Self::due_timers) answer from the cache
///   and the pending changes first and fall back to the store, so the caller sees its own
///   writes before they are flushed.
/// - **Nothing reaches the store before [`flush`](Self::flush).** Every change is held in
///   memory until then; dropping the cache discards unflushed changes.
/// - **One flush is one atomic batch.** Every dirty record, every pending timer move and every
///   pending meta value go into one [`StateBatch`], so the store moves from one commit point to
///   the next in one step.
/// - **A failed flush loses nothing.** If the write fails, every dirty record, timer move and
///   meta value stays pending, and the next `flush` writes them again.
/// - The caller must flush at every commit point (with the input offsets put in meta via
///   [`put_meta`](Self::put_meta)), so the store and the committed offsets agree.
///
/// # Capacity and eviction
///
/// `capacity` counts cached customers (including customers known to have no record). Dirty
/// entries are never evicted, so between flushes the cache grows past `capacity` by the
/// customers touched since the last flush. After a successful flush, if more than `capacity`
/// entries are cached, the least recently used are evicted down to three quarters of
/// `capacity`; each eviction pass is linear in the cache size and removes at least a quarter
/// of it, so eviction costs O(1) amortised per access, and an access allocates nothing when the
/// customer is already cached and dirty.
#[derive(Debug)]
pub struct StateCache<V> {
    /// Cached customers by id.
    entries: Entries<V>,
    /// The dirty entries, each once.
    dirty: Vec<Dirty>,
    /// Pending timer index changes, in the order they were made: `true` adds the entry,
    /// `false` removes it. The last change of a `(due, id)` wins, as it would in a batch (see
    /// [`settle`]). A log rather than a map: a commit moves tens of thousands of timers, and
    /// appending each and sorting once costs less than half of a sorted insert each (2.2% of
    /// the live pipeline thread against 5.2%).
    timers: Vec<TimerChange>,
    /// Pending meta values.
    meta: BTreeMap<String, Vec<u8>>,
    /// Entries kept after a flush (see the type doc).
    capacity: usize,
    /// Access clock: incremented on every access.
    clock: u64,
    /// Reused buffer of access times for eviction.
    scratch: Vec<u64>,
    /// Whether changes are recorded for a flush; see [`StateCache::unrecorded`].
    record: bool,
    /// Eviction passes that removed customers (see [`StateCache::preload`]).
    evictions: u64,
}

impl<V> Default for StateCache<V> {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

/// Cached customers by id: a hash table of `(id, entry)`. Ids up to 24 bytes are stored inline
/// in the slot, so a lookup compares the id without following a pointer (with millions of
/// customers that pointer was a cache miss on every access), and a hit hashes once.
#[derive(Debug)]
struct Entries<V> {
    table: HashTable<(CompactString, Entry<V>)>,
    hasher: DefaultHashBuilder,
}

impl<V> Entries<V> {
    fn new() -> Self {
        Entries {
            table: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn get(&self, id: &str) -> Option<&Entry<V>> {
        let hash = self.hasher.hash_one(id);
        self.table.find(hash, |(k, _)| k == id).map(|(_, e)| e)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry<V>> {
        let hash = self.hasher.hash_one(id);
        self.table.find_mut(hash, |(k, _)| k == id).map(|(_, e)| e)
    }

    /// `id`'s entry, inserted with `make` if it is not cached (one lookup either way).
    fn get_or_try_insert_with<E>(
        &mut self,
        id: &str,
        make: impl FnOnce() -> Result<Entry<V>, E>,
    ) -> Result<&mut Entry<V>, E> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(id);
        let slot =
            match self
                .table
                .entry(hash, |(k, _)| k == id, |(k, _)| hasher.hash_one(k.as_str()))
            {
                hash_table::Entry::Occupied(cached) => cached.into_mut(),
                hash_table::Entry::Vacant(missing) => {
                    missing.insert((id.into(), make()?)).into_mut()
                }
            };
        Ok(&mut slot.1)
    }

    /// `id`'s entry, inserted with `make` if it is not cached (one lookup either way).
    fn get_or_insert_with(&mut self, id: &str, make: impl FnOnce() -> Entry<V>) -> &mut Entry<V> {
        match self.get_or_try_insert_with(id, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(entry) => entry,
            Err(never) => match never {},
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Entry<V>)> {
        self.table.iter().map(|(k, e)| (k.as_str(), e))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Entry<V>) -> bool) {
        self.table.retain(|(_, e)| keep(e));
    }
}

/// A pending change of the timer index: the entry `(due, id)`, and whether it is added
/// (`true`) or removed.
type TimerChange = ((Millis, CompactString), bool);

/// Sorts pending timer changes by entry and keeps, per entry, the one change a batch needs to
/// leave what they leave in the order they were made.
///
/// The index's owner adds an entry only when it is absent and removes one only when it is
/// present (see [`StateCache::set_timer`]), so an entry's changes alternate, and its first
/// change says whether the store holds it: an entry whose first and last changes are the same
/// takes that change; one whose changes cancel out (added and removed again, as a customer
/// woken twice between two commits leaves the due time of its first wake-up; or removed and
/// added again) takes none. A cancelled removal would otherwise reach RocksDB as a tombstone
/// of a key it never held, kept through compactions down to the last level.
fn settle(changes: &mut Vec<TimerChange>) {
    // Stable: one entry's changes keep the order they were made in.
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = 0;
    let mut i = 0;
    while i < changes.len() {
        let first = changes[i].1;
        let mut last = i;
        while last + 1 < changes.len() && changes[last + 1].0 == changes[i].0 {
            last += 1;
        }
        if changes[last].1 == first {
            changes.swap(kept, i);
            kept += 1;
        }
        i = last + 1;
    }
    changes.truncate(kept);
}

/// Writes a prepared batch to `store` (nothing when it is empty); returns what it holds.
fn write_batch(
    store: &mut dyn StateStore,
    prepared: PreparedBatch,
) -> Result<FlushStats, StateError> {
    let PreparedBatch { batch, stats } = prepared;
    if !batch.is_empty() {
        store.write(batch)?;
    }
    Ok(stats)
}

/// Finds or loads `id`'s entry and records the access (one lookup when it is cached).
fn slot<'a, V: DeserializeOwned>(
    entries: &'a mut Entries<V>,
    clock: &mut u64,
    store: &dyn StateStore,
    id: &str,
) -> Result<&'a mut Entry<V>, StateError> {
    *clock += 1;
    let entry = entries.get_or_try_insert_with(id, || {
        Ok::<_, StateError>(Entry {
            value: decode_stored(id, store.get_customer(id)?)?,
            dirty: 0,
            used: *clock,
        })
    })?;
    entry.used = *clock;
    Ok(entry)
}

/// Marks `entry` (of `id`) dirty, remembering the id once, and drops its sealed record (it
/// may change now); does nothing in a cache that records no changes (`record` false, see
/// [`StateCache::unrecorded`]).
fn mark<V>(entry: &mut Entry<V>, dirty: &mut Vec<Dirty>, id: &str, record: bool) {
    if !record {
        return;
    }
    match entry.dirty.checked_sub(1) {
        Some(at) => dirty[at as usize].sealed = None,
        None => {
            dirty.push(Dirty {
                id: id.to_owned(),
                sealed: None,
            });
            entry.dirty = u32::try_from(dirty.len()).expect("fewer than 2^32 dirty customers");
        }
    }
}

impl<V> StateCache<V> {
    /// An empty cache that keeps at most `capacity` customers after a flush (see the type doc).
    /// Allocates nothing up front, so `usize::MAX` means "never evict".
    pub fn new(capacity: usize) -> Self {
        StateCache {
            entries: Entries::new(),
            dirty: Vec::new(),
            timers: Vec::new(),
            meta: BTreeMap::new(),
            capacity,
            clock: 0,
            scratch: Vec::new(),
            record: true,
            evictions: 0,
        }
    }

    /// A cache that is never flushed and never evicts: it keeps every customer decoded and
    /// records no change (no dirty list, no timer moves, no meta values), so a flush writes
    /// nothing. For the offline modes, where the store behind it is never read back and
    /// recording every change of millions of customers would only cost memory.
    pub fn unrecorded() -> Self {
        StateCache {
            record: false,
            ..Self::new(usize::MAX)
        }
    }

    /// Takes over `other`'s customers; one cached in both keeps `other`'s entry. For offline
    /// runs that split customers between caches: both must record nothing (see
    /// [`StateCache::unrecorded`]), so there are no pending changes to carry over.
    pub fn absorb(&mut self, other: StateCache<V>) {
        debug_assert!(!self.record && !other.record);
        for (id, entry) in other.entries.table {
            *self.entries.get_or_insert_with(&id, || Entry {
                value: None,
                dirty: 0,
                used: 0,
            }) = entry;
        }
    }

    /// The capacity in entries (customers).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Cached customers, dirty or clean, including customers known to have no record.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no customer is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids of the cached customers that have a record (flushed or not).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(id, _)| id)
    }

    /// Customers whose record will be written (or deleted) by the next flush.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Whether the next flush would write nothing.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.timers.is_empty() && self.meta.is_empty()
    }

    /// Whether `id` is cached (with a record or known to have none).
    pub fn contains(&self, id: &str) -> bool {
        self.entries.get(id).is_some()
    }

    /// How many eviction passes removed customers so far (see [`StateCache::preload`]).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Caches `value` as `id`'s stored record (`None`: it has none), read from the store
    /// elsewhere after [`evictions`](Self::evictions) returned `evictions`; returns whether it
    /// was cached now. Nothing happens if `id` is cached already, or if customers were evicted
    /// since: an evicted customer may have been written after the read. Otherwise the read is
    /// current — a customer not cached has no write pending (changes go through the cache,
    /// and only written customers are evicted) — and the entry is clean. Counts as an access.
    pub fn preload(&mut self, id: &str, value: Option<V>, evictions: u64) -> bool {
        if evictions != self.evictions {
            return false;
        }
        self.clock += 1;
        let clock = self.clock;
        let mut installed = false;
        self.entries.get_or_insert_with(id, || {
            installed = true;
            Entry {
                value,
                dirty: 0,
                used: clock,
            }
        });
        installed
    }

    /// Sets `id`'s record to `value` without reading the store; marks it dirty.
    pub fn insert(&mut self, id: &str, value: V) {
        self.put(id, Some(value));
    }

    /// Deletes `id`'s record (the next flush deletes it from the store); marks it dirty.
    pub fn remove(&mut self, id: &str) {
        self.put(id, None);
    }

    /// Sets a cached value and marks it dirty.
    fn put(&mut self, id: &str, value: Option<V>) {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_or_insert_with(id, || Entry {
            value: None,
            dirty: 0,
            used: clock,
        });
        entry.value = value;
        entry.used = clock;
        mark(entry, &mut self.dirty, id, self.record);
    }

    /// Marks a cached customer dirty, so the next flush writes it (after changing it through
    /// a reference obtained earlier). Returns `false`, doing nothing, if `id` is not cached.
    pub fn mark_dirty(&mut self, id: &str) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                mark(entry, &mut self.dirty, id, self.record);
                true
            }
            None => false,
        }
    }

    /// Records that `id`'s timer moves from `old` to `new`: the next flush removes the index
    /// entry `(old, id)` and adds `(new, id)`, in that order (so `old == new` keeps the entry).
    /// `None` means no entry on that side.
    ///
    /// The caller keeps the index as a set, as the store will hold it after the pending
    /// changes: `(old, id)` is in it, and `(new, id)` is not unless `old == new`. Changes that
    /// cancel out before a flush are then left out of its batch (see `settle`).
    pub fn set_timer(&mut self, id: &str, old: Option<Millis>, new: Option<Millis>) {
        if !self.record {
            return;
        }
        if let Some(due) = old {
            self.timers.push(((due, id.into()), false));
        }
        if let Some(due) = new {
            self.timers.push(((due, id.into()), true));
        }
    }

    /// Sets the meta value under `key` with the next flush (e.g. the next input offset).
    pub fn put_meta(&mut self, key: &str, bytes: Vec<u8>) {
        if !self.record {
            return;
        }
        self.meta.insert(key.to_owned(), bytes);
    }

    /// The meta value under `key`: the pending one if any, else the store's.
    pub fn get_meta(
        &self,
        store: &dyn StateStore,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        match self.meta.get(key) {
            Some(bytes) => Ok(Some(bytes.clone())),
            None => store.get_meta(key),
        }
    }

    /// Timer entries with `due <= upto`, ascending by `(due, id)`, at most `limit`, as the store
    /// will hold them after the next flush (the store's entries with pending moves applied).
    /// It sorts a copy of the pending moves each time: for checks and tools, not for a hot
    /// path (the runtime keeps its own index in memory).
    pub fn due_timers(
        &self,
        store: &dyn StateStore,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, StateError> {
        let mut settled = self.timers.clone();
        settle(&mut settled);
        let pending = settled.iter().take_while(|((due, _), _)| *due <= upto);
        // At most this many of the store's first entries are removed by pending moves, so
        // reading that many more than `limit` still yields `limit` survivors if there are any.
        let removed = pending.clone().filter(|(_, add)| !*add).count();
        let stored = store.due_timers(upto, limit.saturating_add(removed))?;
        let mut merged = Vec::with_capacity(limit.min(stored.len() + settled.len()));
        let removed_now = |due: Millis, id: &str| {
            settled
                .binary_search_by(|((d, i), _)| (*d, i.as_str()).cmp(&(due, id)))
                .is_ok_and(|at| !settled[at].1)
        };
        let mut stored = stored
            .into_iter()
            .filter(|(due, id)| !removed_now(*due, id))
            .peekable();
        let mut added = pending
            .filter(|(_, add)| *add)
            .map(|((due, id), _)| (*due, id.to_string()))
            .peekable();
        while merged.len() < limit {
            let next = match (stored.peek(), added.peek()) {
                (None, None) => break,
                (Some(_), None) => stored.next(),
                (None, Some(_)) => added.next(),
                (Some(s), Some(a)) => match s.cmp(a) {
                    std::cmp::Ordering::Less => stored.next(),
                    std::cmp::Ordering::Greater => added.next(),
                    std::cmp::Ordering::Equal => {
                        added.next();
                        stored.next()
                    }
                },
            };
            merged.extend(next);
        }
        Ok(merged)
    }

    /// Evicts least recently used clean entries if more than `capacity` are cached; returns
    /// how many were evicted.
    fn evict(&mut self) -> usize {
        if self.entries.len() <= self.capacity {
            return 0;
        }
        let target = self.capacity - self.capacity / 4;
        let excess = self.entries.len() - target;
        self.scratch.clear();
        self.scratch.extend(
            self.entries
                .iter()
                .filter(|(_, e)| e.dirty == 0)
                .map(|(_, e)| e.used),
        );
        let before = self.entries.len();
        if excess >= self.scratch.len() {
            self.entries.retain(|e| e.dirty != 0);
        } else {
            // Access times are unique, so exactly `excess` clean entries are at or below it.
            let (_, &mut cutoff, _) = self.scratch.select_nth_unstable(excess - 1);
            self.entries.retain(|e| e.dirty != 0 || e.used > cutoff);
        }
        let evicted = before - self.entries.len();
        if evicted > 0 {
            self.evictions += 1;
        }
        evicted
    }
}

impl<V: Serialize + DeserializeOwned + Sync> StateCache<V> {
    /// `id`'s record (from the cache, else read from `store` and cached), without marking it
    /// dirty. `None` if the customer has no record.
    pub fn get(&mut self, store: &dyn StateStore, id: &str) -> Result<Option<&V>, StateError> {
        let entry = slot(&mut self.entries, &mut self.clock, store, id)?;
        Ok(entry.value.as_ref())
    }

    /// `id`'s record for changing it (from the cache, else read from `store` and cached); marks
    /// it dirty when there is one. `None` if the customer has no record.
    pub fn get_mut(
        &mut self,
        store: &dyn StateStore,
        id: &str,
    ) -> Result<Option<&mut V>, StateError> {
        let entry = slot(&mut self.entries, &mut self.clock, store, id)?;
        if entry.value.is_some() {
            mark(entry, &mut self.dirty, id, self.record);
        }
        Ok(entry.value.as_mut())
    }

    /// `id`'s record for changing it, created with `make` if the customer has none; marks it
    /// dirty.
    pub fn get_or_insert_with(
        &mut self,
        store: &dyn StateStore,
        id: &str,
        make: impl FnOnce() -> V,
    ) -> Result<&mut V, StateError> {
        let entry = slot(&mut self.entries, &mut self.clock, store, id)?;
        mark(entry, &mut self.dirty, id, self.record);
        Ok(entry.value.get_or_insert_with(make))
    }

    /// Encodes `id`'s record now for the next flush, if it is dirty: call it once a step is
    /// done changing the customer, while its record is in the CPU's caches (at the flush, a
    /// batch later, it no longer is). Changing the customer again drops the encoding (every
    /// way to change it marks it dirty); a record that does not encode is left to the flush,
    /// which reports the error.
    pub fn seal(&mut self, id: &str) {
        if !self.record {
            return;
        }
        let Some(entry) = self.entries.get(id) else {
            return;
        };
        let (Some(at), Some(value)) = (entry.dirty.checked_sub(1), &entry.value) else {
            return;
        };
        if let Ok(bytes) = encode_value(id, value) {
            self.dirty[at as usize].sealed = Some(bytes);
        }
    }

    /// How many timer index changes are pending (each move made since the last flush).
    #[cfg(test)]
    pub(crate) fn timer_changes(&self) -> usize {
        self.timers.len()
    }

    /// How many dirty customers are sealed (encoded for the next flush already).
    #[cfg(test)]
    pub(crate) fn sealed_len(&self) -> usize {
        self.dirty.iter().filter(|d| d.sealed.is_some()).count()
    }

    /// Writes every dirty record, pending timer move and pending meta value to `store` in one
    /// atomic [`StateBatch`], then marks everything clean and evicts beyond `capacity`.
    ///
    /// Writes nothing if nothing is pending. On error nothing is marked clean or evicted: the
    /// next call writes the same changes again (plus any made since).
    pub fn flush(&mut self, store: &mut dyn StateStore) -> Result<FlushStats, StateError> {
        let prepared = self.prepare()?;
        self.write_prepared(store, prepared)
    }

    /// Encodes every change since the last flush into one batch, without writing it or
    /// forgetting it: the caller may ship the batch elsewhere first (the state changelog) and
    /// then hand it to [`StateCache::write_prepared`]. The cache must not change in between.
    ///
    /// The records sealed since the last flush move into the batch (a record is about 2 KiB,
    /// and a commit holds thousands): a dirty customer left without one is encoded from its
    /// value again by the next call, should this batch not be written.
    pub fn prepare(&mut self) -> Result<PreparedBatch, StateError> {
        let mut stats = FlushStats::default();
        settle(&mut self.timers);
        let mut batch =
            StateBatch::with_capacity(self.dirty.len() + self.timers.len() + self.meta.len());
        for (id, bytes) in Self::encode_dirty(&self.entries, &mut self.dirty)? {
            match bytes {
                Some(bytes) => {
                    batch.put_customer(id, bytes);
                    stats.customers_put += 1;
                }
                None => {
                    batch.delete_customer(id);
                    stats.customers_deleted += 1;
                }
            }
        }
        for ((due, id), add) in &self.timers {
            if *add {
                batch.put_timer(*due, id);
                stats.timers_put += 1;
            } else {
                batch.delete_timer(*due, id);
                stats.timers_deleted += 1;
            }
        }
        for (key, bytes) in &self.meta {
            batch.put_meta(key, bytes.clone());
            stats.meta_put += 1;
        }
        Ok(PreparedBatch { batch, stats })
    }

    /// Every dirty customer's record (`None`: delete it), in dirty order: its sealed record,
    /// taken, or else encoded now. Encoding is most of a flush's CPU time, so a large batch is
    /// encoded on several threads (at most [`ENCODE_THREADS`] and the machine's cores, each
    /// taking at least [`ENCODE_CHUNK`] customers).
    fn encode_dirty<'a>(
        entries: &Entries<V>,
        dirty: &'a mut [Dirty],
    ) -> Result<Vec<Encoded<'a>>, StateError> {
        let wanted = (dirty.len() / ENCODE_CHUNK).min(ENCODE_THREADS);
        if wanted < 2 {
            return Self::encode(entries, dirty);
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let chunk = dirty.len().div_ceil(wanted.min(cores));
        std::thread::scope(|scope| {
            let mut chunks = dirty.chunks_mut(chunk);
            let first = chunks.next().unwrap_or_default();
            let others: Vec<_> = chunks
                .map(|ids| scope.spawn(move || Self::encode(entries, ids)))
                .collect();
            let mut all = Self::encode(entries, first)?;
            for handle in others {
                let part = handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                all.extend(part);
            }
            Ok(all)
        })
    }

    /// The records of the dirty customers `dirty`: each sealed one's record, taken, the others
    /// encoded from `entries`; `None`: delete it.
    fn encode<'a>(
        entries: &Entries<V>,
        dirty: &'a mut [Dirty],
    ) -> Result<Vec<Encoded<'a>>, StateError> {
        let mut out = Vec::with_capacity(dirty.len());
        for Dirty { id, sealed } in dirty {
            let id: &'a str = id;
            if let Some(bytes) = sealed.take() {
                // Sealed: it has a record, unchanged since (a change drops the seal).
                out.push((id, Some(bytes)));
                continue;
            }
            // Dirty entries are never evicted, so every dirty id is cached.
            let Some(entry) = entries.get(id) else {
                continue;
            };
            let bytes = match &entry.value {
                Some(value) => Some(encode_value(id, value)?),
                None => None,
            };
            out.push((id, bytes));
        }
        Ok(out)
    }

    /// Writes a batch from [`StateCache::prepare`] atomically, then marks everything clean and
    /// evicts beyond capacity. On error nothing is forgotten: a retry writes it again.
    pub fn write_prepared(
        &mut self,
        store: &mut dyn StateStore,
        prepared: PreparedBatch,
    ) -> Result<FlushStats, StateError> {
        let mut stats = write_batch(store, prepared)?;
        self.forget_pending();
        stats.evicted = self.evict();
        Ok(stats)
    }

    /// Takes a batch from [`StateCache::prepare`] out of the cache's keeping, so the cache may
    /// change before the batch is written (with [`StateCache::write_handed_off`]): marks
    /// everything clean but evicts nothing, so every customer of the batch stays cached and
    /// nothing of it is read back from the store before the batch is there. Changes made from
    /// now on go to the next batch.
    pub fn hand_off(&mut self, prepared: PreparedBatch) -> PreparedBatch {
        self.forget_pending();
        prepared
    }

    /// Writes a batch taken by [`StateCache::hand_off`], then evicts beyond capacity (dirty
    /// entries, changed since, stay). On error the batch is lost to this cache: the caller
    /// must treat the store as behind (it is repaired from the changelog).
    pub fn write_handed_off(
        &mut self,
        store: &mut dyn StateStore,
        prepared: PreparedBatch,
    ) -> Result<FlushStats, StateError> {
        let mut stats = write_batch(store, prepared)?;
        stats.evicted = self.handed_off_written();
        Ok(stats)
    }

    /// Says that the batch taken by [`StateCache::hand_off`] is in the store (written
    /// elsewhere, with a [`StoreWriter`](super::StoreWriter)): evicts beyond capacity, as
    /// [`StateCache::write_handed_off`] does after its write. Returns how many were evicted.
    pub fn handed_off_written(&mut self) -> usize {
        self.evict()
    }

    /// Marks every dirty entry clean and drops the pending timer moves and meta values.
    fn forget_pending(&mut self) {
        for Dirty { id, .. } in self.dirty.drain(..) {
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.dirty = 0;
            }
        }
        self.timers.clear();
        self.meta.clear();
    }
}
