//! The per-partition runtime shared by `waymark run` and `waymark simulate`.
//!
//! Owns one partition's moving parts around the pure engine: input validation, the watermark
//! (`max(occurred_at seen) − allowed lateness`, advanced further by the caller when caught
//! up), the customer state behind a write-back cache, and the due-time timer index (one entry
//! per customer: its next wake-up). It must not know about Kafka or the output format: the
//! caller feeds events and wall-clock watermark advances, and takes the outputs.

use std::collections::BTreeSet;
use std::sync::Arc;

use compact_str::CompactString;

use crate::engine::{Applied, CustomerState, Engine};
use crate::model::{CustomerEvent, Millis, OUTCOME_EVENT_PREFIX, Output};
use crate::state::{
    MemoryStore, PreparedBatch, StateCache, StateError, StateStore, StoreReader, StoreWriter,
};

/// Event type of a right-to-be-forgotten request (`waymark forget`): the customer's state is
/// erased, locally and (through the state changelog) everywhere the partition is restored.
pub const FORGET_EVENT_TYPE: &str = "waymark.forget";

pub use identity::{
    ALIAS_CANONICAL_ATTRIBUTE, ALIAS_EVENT_TYPE, Forward, Forwarded, MAX_FORWARD_HOPS,
};

mod identity;

/// Meta key under which the runtime keeps its watermark.
pub const META_WATERMARK: &str = "watermark";

/// Meta key under which the runtime keeps the newest customer event time it processed.
pub const META_NEWEST_EVENT: &str = "newest-event";

/// Why an input record was refused (it goes to the dead-letter topic with this code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The bytes are not a `CustomerEvent` (Avro or JSON per configuration).
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// `customer_id` is empty.
    #[error(
        "customer_id is missing, empty or starts with a NUL byte; every event must name its customer"
    )]
    MissingCustomerId,
    /// `event_id` is empty.
    #[error("event_id is missing or empty; every event needs a unique id for de-duplication")]
    MissingEventId,
    /// `type` is empty.
    #[error("type is missing or empty")]
    MissingType,
    /// `occurred_at` is further in the future than the configured skew allows.
    #[error(
        "occurred_at {occurred_at} is {ahead_ms} ms ahead of {reference}, more than max-future-skew ({max_ms} ms); fix the producer's clock or time zone"
    )]
    FutureTimestamp {
        /// The event time, RFC 3339.
        occurred_at: String,
        /// The reference time it was compared with, RFC 3339.
        reference: String,
        /// How far ahead.
        ahead_ms: i64,
        /// The configured limit.
        max_ms: i64,
    },
    /// The Kafka key differs from the event's customer id (it would be processed in the
    /// wrong partition).
    #[error(
        "record key `{key}` differs from customer_id `{customer_id}`; key records by customer id"
    )]
    KeyMismatch {
        /// The record key.
        key: String,
        /// The customer id in the value.
        customer_id: String,
    },
    /// An `identity.alias` event, or a record forwarded between identities, that cannot be
    /// applied.
    #[error("{0}")]
    Identity(String),
}

impl Rejection {
    /// A short, bounded code for headers and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "undecodable",
            Rejection::MissingCustomerId => "missing_customer_id",
            Rejection::MissingEventId => "missing_event_id",
            Rejection::MissingType => "missing_type",
            Rejection::FutureTimestamp { .. } => "future_timestamp",
            Rejection::KeyMismatch { .. } => "key_mismatch",
            Rejection::Identity(_) => "identity",
        }
    }
}

/// Checks what the engine relies on. `now` is the reference for future timestamps (wall clock
/// live; `--until` offline, or `None` to skip the check).
pub fn validate(
    ev: &CustomerEvent,
    key: Option<&[u8]>,
    now: Option<Millis>,
    max_future_skew: Millis,
) -> Result<(), Rejection> {
    if ev.customer_id.trim().is_empty() || ev.customer_id.starts_with('\0') {
        return Err(Rejection::MissingCustomerId);
    }
    if ev.event_id.trim().is_empty() {
        return Err(Rejection::MissingEventId);
    }
    if ev.event_type.trim().is_empty() {
        return Err(Rejection::MissingType);
    }
    if let Some(key) = key
        && key != ev.customer_id.as_bytes()
    {
        return Err(Rejection::KeyMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            customer_id: ev.customer_id.clone(),
        });
    }
    if ev.event_type == ALIAS_EVENT_TYPE {
        identity::check_alias(ev)?;
    }
    if let Some(now) = now
        && ev.occurred_at > now.saturating_add(max_future_skew)
    {
        return Err(Rejection::FutureTimestamp {
            occurred_at: crate::model::format_millis(ev.occurred_at),
            reference: crate::model::format_millis(now),
            ahead_ms: ev.occurred_at - now,
            max_ms: max_future_skew,
        });
    }
    Ok(())
}

/// Counters of one partition since it started (the caller turns them into metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Events accepted into some customer's state.
    pub accepted: u64,
    /// Accepted events that were late.
    pub late: u64,
    /// Repeated event ids.
    pub duplicates: u64,
    /// Events of a type no journey reacts to.
    pub ignored: u64,
    /// Forget requests handled.
    pub forgotten: u64,
    /// Timer wake-ups handled.
    pub timers_fired: u64,
    /// Commands emitted.
    pub commands: u64,
    /// Journey events emitted.
    pub journey_events: u64,
    /// Identity merges: aliases merged away, and alias histories folded in.
    pub merges: u64,
    /// Events of aliases handed on to their canonical customer.
    pub forwarded: u64,
}

impl RuntimeStats {
    /// Adds `other`'s counters to these (runtimes that split one run's customers).
    pub fn add(&mut self, other: &RuntimeStats) {
        let RuntimeStats {
            accepted,
            late,
            duplicates,
            ignored,
            forgotten,
            timers_fired,
            commands,
            journey_events,
            merges,
            forwarded,
        } = other;
        self.accepted += accepted;
        self.late += late;
        self.duplicates += duplicates;
        self.ignored += ignored;
        self.forgotten += forgotten;
        self.timers_fired += timers_fired;
        self.commands += commands;
        self.journey_events += journey_events;
        self.merges += merges;
        self.forwarded += forwarded;
    }
}

/// The watermark an event lets through, if it moves it: its time minus the allowed lateness.
/// Forget requests and the sinks' outcomes (wall-clock observations, see
/// [`PartitionRuntime::on_event`]) do not move it; an `identity.alias` event that is a
/// duplicate does not either, which only the customer's state tells.
pub fn watermark_let_through(ev: &CustomerEvent, allowed_lateness: Millis) -> Option<Millis> {
    let moves =
        ev.event_type != FORGET_EVENT_TYPE && !ev.event_type.starts_with(OUTCOME_EVENT_PREFIX);
    moves.then(|| ev.occurred_at.saturating_sub(allowed_lateness))
}

/// One partition: engine + cached state + timer index + watermark.
pub struct PartitionRuntime {
    engine: Arc<Engine>,
    store: Box<dyn StateStore>,
    cache: StateCache<CustomerState>,
    /// `(due, customer id)` for every customer with something due later.
    timers: BTreeSet<(Millis, CompactString)>,
    watermark: Millis,
    /// The newest customer event time processed (a live reload's `effective-from` must be
    /// later), and whether it changed since the last flush.
    newest_event: Millis,
    newest_event_changed: bool,
    allowed_lateness: Millis,
    stats: RuntimeStats,
    /// Records for other customers (identity merges), in the order they were made.
    forwards: Vec<Forward>,
    /// When kept (see [`PartitionRuntime::keep_fire_log`]): each customer `fire_due` woke,
    /// as `(due, customer, index in out of its first output)`.
    fire_log: Option<Vec<(Millis, CompactString, usize)>>,
    /// A customer due again at or before this time is not sealed at the end of its step (see
    /// [`PartitionRuntime::defer_seals_until`]).
    seal_horizon: Millis,
}

impl PartitionRuntime {
    /// Opens a partition over `store`, rebuilding the in-memory timer index from it.
    pub fn open(
        engine: Arc<Engine>,
        store: Box<dyn StateStore>,
        cache_capacity: usize,
        allowed_lateness: Millis,
    ) -> Result<Self, StateError> {
        Self::over(
            engine,
            store,
            StateCache::new(cache_capacity),
            allowed_lateness,
        )
    }

    /// A partition held in memory only, for the offline modes: every customer stays decoded,
    /// and nothing is recorded for a flush (there is no store to write to; see
    /// [`StateCache::unrecorded`]). `prepare` gives an empty batch.
    pub fn offline(engine: Arc<Engine>, allowed_lateness: Millis) -> Result<Self, StateError> {
        Self::over(
            engine,
            Box::new(MemoryStore::new()),
            StateCache::unrecorded(),
            allowed_lateness,
        )
    }

    /// A partition over `store` behind `cache`, with the timer index and times read from it.
    fn over(
        engine: Arc<Engine>,
        store: Box<dyn StateStore>,
        cache: StateCache<CustomerState>,
        allowed_lateness: Millis,
    ) -> Result<Self, StateError> {
        let mut timers = BTreeSet::new();
        for (due, id) in store.due_timers(Millis::MAX, usize::MAX)? {
            timers.insert((due, CompactString::from(id)));
        }
        let time_meta = |key| -> Result<Option<Millis>, StateError> {
            Ok(store
                .get_meta(key)?
                .and_then(|bytes| bytes.try_into().ok().map(Millis::from_be_bytes)))
        };
        let watermark = time_meta(META_WATERMARK)?.unwrap_or(Millis::MIN);
        // State written before it was kept: every event processed was at most the allowed
        // lateness past the watermark.
        let newest_event = time_meta(META_NEWEST_EVENT)?
            .unwrap_or_else(|| watermark.saturating_add(allowed_lateness));
        Ok(PartitionRuntime {
            engine,
            store,
            cache,
            timers,
            watermark,
            newest_event,
            newest_event_changed: false,
            allowed_lateness,
            stats: RuntimeStats::default(),
            forwards: Vec::new(),
            fire_log: None,
            seal_horizon: Millis::MIN,
        })
    }

    /// From now on, a customer whose next wake-up is due at or before `horizon` is not encoded
    /// for the flush at the end of its step ([`StateCache::seal`]): it is expected to be woken
    /// again before the next flush, and that step's change would drop the encoding. It is
    /// encoded at its next step, or by the flush if none comes first. The caller sets the
    /// horizon to where it expects the watermark by the next flush; `Millis::MIN` (the
    /// default) seals every step. The records written do not depend on it.
    pub fn defer_seals_until(&mut self, horizon: Millis) {
        self.seal_horizon = horizon;
    }

    /// Encodes a customer at the end of its step, unless it is due again by the seal horizon.
    fn seal(&mut self, customer: &str, next_due: Option<Millis>) {
        if next_due.is_none_or(|due| due > self.seal_horizon) {
            self.cache.seal(customer);
        }
    }

    /// The current watermark (`Millis::MIN` before the first event).
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    /// The newest customer event time processed (`Millis::MIN` before the first).
    pub fn newest_event(&self) -> Millis {
        self.newest_event
    }

    /// Counters since start.
    pub fn stats(&self) -> RuntimeStats {
        self.stats
    }

    /// Approximate `(keys, bytes)` of the partition's stored state, for metrics.
    pub fn store_size(&self) -> Result<(u64, u64), StateError> {
        let (customers, timers) = self.store.approximate_counts()?;
        Ok((customers + timers, self.store.approximate_bytes()?))
    }

    /// Number of customers with a pending wake-up.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Applies a validated event, then advances the watermark by it and fires what is due.
    /// Outcomes of commands (`intervention.*`) are observations of the sinks' wall clock, not
    /// customer event time: they are applied but never move the watermark (a fresh outcome
    /// read beside a backlog of older events must not fire the backlog's timers early).
    ///
    /// An alias's events go on to its canonical customer (see [`PartitionRuntime::take_forwards`]),
    /// and an `identity.alias` event makes its customer an alias.
    pub fn on_event(
        &mut self,
        ev: &CustomerEvent,
        out: &mut Vec<Output>,
    ) -> Result<Applied, StateError> {
        self.on_event_after(ev, 0, out)
    }

    /// [`PartitionRuntime::on_event`] for an event that was forwarded `hops` times already.
    fn on_event_after(
        &mut self,
        ev: &CustomerEvent,
        hops: u8,
        out: &mut Vec<Output>,
    ) -> Result<Applied, StateError> {
        if ev.event_type == FORGET_EVENT_TYPE {
            // The person behind an alias is its canonical customer: forget them too.
            self.forward_if_alias(ev, hops)?;
            self.forget(&ev.customer_id)?;
            self.stats.forgotten += 1;
            return Ok(Applied::Forgotten);
        }
        if ev.event_type == ALIAS_EVENT_TYPE {
            let applied = self.alias(ev, out)?;
            if applied != Applied::Duplicate {
                self.observe(ev, out)?;
            }
            return Ok(applied);
        }
        if !self.engine.is_relevant(&ev.event_type) {
            self.stats.ignored += 1;
            // Outcomes are always relevant, so an ignored event always moves the watermark.
            if let Some(watermark) = watermark_let_through(ev, self.allowed_lateness) {
                self.advance_to(watermark, out)?;
            }
            return Ok(Applied::Ignored);
        }
        let before = out.len();
        let state =
            self.cache
                .get_or_insert_with(&*self.store, &ev.customer_id, CustomerState::default)?;
        if let Some(link) = state.merged_into() {
            let to = link.customer_id.clone();
            self.forward_event(ev, to, hops);
            self.observe(ev, out)?;
            return Ok(Applied::Forwarded);
        }
        let old_due = state.next_due;
        let applied = self
            .engine
            .apply(state, &ev.customer_id, ev, self.watermark, out);
        let new_due = state.next_due;
        let disposable = state.is_disposable();
        match applied {
            // `get_or_insert_with` marked the customer dirty already.
            Applied::Accepted { late } => {
                self.stats.accepted += 1;
                self.stats.late += u64::from(late);
                self.move_timer(&ev.customer_id, old_due, new_due);
                if disposable {
                    self.cache.remove(&ev.customer_id);
                } else {
                    self.seal(&ev.customer_id, new_due);
                }
            }
            Applied::Duplicate => self.stats.duplicates += 1,
            Applied::Ignored => self.stats.ignored += 1,
            Applied::Forgotten | Applied::Forwarded | Applied::Merged | Applied::Refused(_) => {}
        }
        self.count(&out[before..]);
        self.observe(ev, out)?;
        Ok(applied)
    }

    /// Takes the event's time into account: the newest event time, and the watermark it lets
    /// through (outcomes excepted, see [`PartitionRuntime::on_event`]).
    fn observe(&mut self, ev: &CustomerEvent, out: &mut Vec<Output>) -> Result<(), StateError> {
        if let Some(watermark) = watermark_let_through(ev, self.allowed_lateness) {
            if ev.occurred_at > self.newest_event {
                self.newest_event = ev.occurred_at;
                self.newest_event_changed = true;
            }
            self.advance_to(watermark, out)?;
        }
        Ok(())
    }

    /// Takes the records made for other customers since the last call (an alias's history for
    /// its canonical customer, an alias's events): live they are produced to the input topic,
    /// keyed by [`Forward::to`]; offline `simulate` applies them with
    /// [`PartitionRuntime::on_forwarded`].
    pub fn take_forwards(&mut self) -> Vec<Forward> {
        std::mem::take(&mut self.forwards)
    }

    /// Moves the watermark forward to `watermark` (never back) and fires every customer whose
    /// wake-up is due. Returns how many customers were woken (none if the watermark did not
    /// move).
    pub fn advance_to(
        &mut self,
        watermark: Millis,
        out: &mut Vec<Output>,
    ) -> Result<usize, StateError> {
        if !self.raise_watermark(watermark) {
            return Ok(0);
        }
        self.fire_due(usize::MAX, out)
    }

    /// Moves the watermark forward to `watermark` (never back) without firing anything; see
    /// [`PartitionRuntime::fire_due`]. Returns whether it moved.
    pub fn raise_watermark(&mut self, watermark: Millis) -> bool {
        if watermark <= self.watermark {
            return false;
        }
        self.watermark = watermark;
        self.cache
            .put_meta(META_WATERMARK, watermark.to_be_bytes().to_vec());
        true
    }

    /// Whether some customer's wake-up is due at the current watermark (left by a
    /// [`PartitionRuntime::fire_due`] that reached its limit).
    pub fn has_due(&self) -> bool {
        self.timers
            .first()
            .is_some_and(|(due, _)| *due <= self.watermark)
    }

    /// Fires at most `limit` customers whose wake-up is due at the current watermark, earliest
    /// first (a customer woken again within the same call counts again). Firing in several
    /// calls gives the same outputs in the same order as firing in one; the caller bounds
    /// a transaction (or the outputs held in memory) this way when a wall-clock step makes
    /// millions due at once. Returns how many customers were woken.
    pub fn fire_due(&mut self, limit: usize, out: &mut Vec<Output>) -> Result<usize, StateError> {
        let watermark = self.watermark;
        let mut woken = 0;
        while woken < limit
            && let Some((due, _)) = self.timers.first()
        {
            if *due > watermark {
                break;
            }
            let Some((due, customer)) = self.timers.pop_first() else {
                break;
            };
            let before = out.len();
            if let Some(log) = &mut self.fire_log {
                log.push((due, customer.clone(), before));
            }
            // `get_mut` marks a customer with a record dirty; the other arms mark it after.
            let (new_due, disposable) = match self.cache.get_mut(&*self.store, &customer)? {
                Some(state) => match state.pending_merge().filter(|l| l.at <= watermark) {
                    Some(link) => {
                        let (link, at) = (link.clone(), link.at);
                        self.merge_away(&customer, link, at, out)?;
                        self.cache.mark_dirty(&customer);
                        (None, false)
                    }
                    None => {
                        self.engine.advance(state, &customer, watermark, out);
                        (state.next_due, state.is_disposable())
                    }
                },
                None => {
                    self.cache.mark_dirty(&customer);
                    (None, false)
                }
            };
            // The entry was popped already: only the index's store copy needs moving.
            self.cache.set_timer(&customer, Some(due), None);
            if disposable {
                // Retention left nothing worth keeping: delete the customer (a changelog
                // tombstone, so compaction removes it there too).
                self.cache.remove(&customer);
                woken += 1;
                continue;
            }
            if let Some(next) = new_due {
                self.timers.insert((next, customer.clone()));
                self.cache.set_timer(&customer, None, Some(next));
            }
            self.seal(&customer, new_due);
            woken += 1;
            self.count(&out[before..]);
        }
        self.stats.timers_fired += woken as u64;
        Ok(woken)
    }

    /// From now on, keeps a log of the customers [`PartitionRuntime::fire_due`] wakes, so a
    /// caller can tell whose outputs are whose (see [`PartitionRuntime::take_fire_log`]).
    pub fn keep_fire_log(&mut self) {
        self.fire_log.get_or_insert_with(Vec::new);
    }

    /// The customers woken since the last call, in the order they were woken: `(due, customer,
    /// index in the output buffer of its first output)`. Empty unless the log is kept.
    pub fn take_fire_log(&mut self) -> Vec<(Millis, CompactString, usize)> {
        self.fire_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Takes over `other`'s customers, pending wake-ups and counters, for an offline run that
    /// split its customers between runtimes and goes on with one (`simulate` on several
    /// threads). Both must be offline runtimes at the same watermark, with no customer in
    /// both and no forwards pending.
    pub fn absorb(&mut self, other: PartitionRuntime) {
        let PartitionRuntime {
            cache,
            mut timers,
            watermark,
            newest_event,
            stats,
            forwards,
            ..
        } = other;
        debug_assert!(forwards.is_empty() && watermark == self.watermark);
        self.cache.absorb(cache);
        self.timers.append(&mut timers);
        self.newest_event = self.newest_event.max(newest_event);
        self.stats.add(&stats);
    }

    /// Erases a customer's state and pending wake-up (written, and tombstoned in the
    /// changelog, with the next flush). Returns whether there was any state.
    pub fn forget(&mut self, customer: &str) -> Result<bool, StateError> {
        let Some(due) = self.cache.get(&*self.store, customer)?.map(|s| s.next_due) else {
            return Ok(false);
        };
        self.move_timer(customer, due, None);
        self.cache.remove(customer);
        Ok(true)
    }

    /// Runs `engine` from now on (a live journey reload).
    pub fn set_engine(&mut self, engine: Arc<Engine>) {
        self.engine = engine;
    }

    /// Makes every customer of the partition due at `at` at the latest: a reload whose new
    /// version migrates the instances in flight at `at` must look at each of them then, also
    /// those waiting for nothing under their old version. Returns how many were moved.
    pub fn wake_all_by(&mut self, at: Millis) -> Result<usize, StateError> {
        // The store's customers, and the cached ones not flushed yet (new since the last
        // commit; offline, every customer).
        let mut ids: BTreeSet<String> = self.cache.ids().map(str::to_owned).collect();
        self.store.for_each_customer(&mut |id, _| {
            ids.insert(id.to_owned());
            true
        })?;
        let mut moved = 0;
        for id in ids {
            let Some(state) = self.cache.get_mut(&*self.store, &id)? else {
                continue;
            };
            let old = state.next_due;
            if old.is_some_and(|due| due <= at) {
                continue;
            }
            state.next_due = Some(at);
            self.cache.mark_dirty(&id);
            self.move_timer(&id, old, Some(at));
            moved += 1;
        }
        Ok(moved)
    }

    /// Records a customer's wake-up moving from `old` to `new` in both index copies.
    fn move_timer(&mut self, customer: &str, old: Option<Millis>, new: Option<Millis>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, CompactString::from(customer)));
        }
        if let Some(new) = new {
            self.timers.insert((new, CompactString::from(customer)));
        }
        self.cache.set_timer(customer, old, new);
    }

    fn count(&mut self, outputs: &[Output]) {
        for o in outputs {
            match o {
                Output::Command(_) => self.stats.commands += 1,
                Output::JourneyEvent(_) => self.stats.journey_events += 1,
            }
        }
    }

    /// Stores input offsets (or anything else) with the next flush, atomically with the state.
    pub fn put_meta(&mut self, key: &str, value: Vec<u8>) {
        self.cache.put_meta(key, value);
    }

    /// Reads a meta value from the store (flushed values only).
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.store.get_meta(key)
    }

    /// Encodes every change since the last flush into a batch and takes it out of the cache's
    /// keeping (see [`StateCache::hand_off`]): events may be handled before it is written with
    /// [`PartitionRuntime::write_prepared`], and what they change goes to the next batch.
    pub fn prepare(&mut self) -> Result<PreparedBatch, StateError> {
        if std::mem::take(&mut self.newest_event_changed) {
            self.cache
                .put_meta(META_NEWEST_EVENT, self.newest_event.to_be_bytes().to_vec());
        }
        let prepared = self.cache.prepare()?;
        Ok(self.cache.hand_off(prepared))
    }

    /// Writes a batch from [`PartitionRuntime::prepare`] to the store.
    pub fn write_prepared(&mut self, prepared: PreparedBatch) -> Result<(), StateError> {
        self.cache.write_handed_off(&mut *self.store, prepared)?;
        Ok(())
    }

    /// A writer of this partition's store for another thread, if the store has one (see
    /// [`StateStore::writer`]): a batch from [`PartitionRuntime::prepare`] written with it is
    /// followed by [`PartitionRuntime::prepared_written`] here.
    pub fn store_writer(&self) -> Option<Box<dyn StoreWriter>> {
        self.store.writer()
    }

    /// Says that the batch from [`PartitionRuntime::prepare`] was written with a
    /// [`PartitionRuntime::store_writer`]: the cache may evict its customers again.
    pub fn prepared_written(&mut self) {
        self.cache.handed_off_written();
    }

    /// A reader of this partition's store for another thread, if the store has one (see
    /// [`StateStore::reader`]): to read customers ahead of their records, after
    /// [`PartitionRuntime::uncached`] and before [`PartitionRuntime::preload`].
    pub fn store_reader(&self) -> Option<Box<dyn StoreReader>> {
        self.store.reader()
    }

    /// `None` if `customer` is cached; else the ticket to [`PartitionRuntime::preload`] the
    /// record read for it from now on.
    pub fn uncached(&self, customer: &str) -> Option<u64> {
        (!self.cache.contains(customer)).then(|| self.cache.evictions())
    }

    /// The customers whose wake-up is due by `upto`, earliest first (those not fired yet): who
    /// a watermark moving to `upto` would wake, to read ahead.
    pub fn waking_by(&self, upto: Millis) -> impl Iterator<Item = &str> {
        self.timers
            .iter()
            .take_while(move |(due, _)| *due <= upto)
            .map(|(_, customer)| customer.as_str())
    }

    /// Caches `customer`'s record as a [`PartitionRuntime::store_reader`] read it (decoded;
    /// `None`: the store has none) after [`PartitionRuntime::uncached`] gave `ticket`, unless
    /// it may be stale by now (see [`StateCache::preload`]). Returns whether it was cached.
    pub fn preload(&mut self, customer: &str, state: Option<CustomerState>, ticket: u64) -> bool {
        self.cache.preload(customer, state, ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::{JourneySet, parse_journey};
    use crate::state::BatchOp;
    use crate::state::tests::has_timer;

    const D: Millis = 86_400_000;

    fn event(id: &str, event_type: &str, at: Millis) -> CustomerEvent {
        CustomerEvent {
            event_id: id.into(),
            customer_id: "c1".into(),
            event_type: event_type.into(),
            occurred_at: at,
            attributes: Default::default(),
        }
    }

    /// `n` customers (`c00`, `c01`, …) logging in `apart` ms after one another from time 0.
    fn logins(n: i64, apart: Millis) -> Vec<CustomerEvent> {
        (0..n)
            .map(|i| CustomerEvent {
                customer_id: format!("c{i:02}"),
                attributes: [("email".to_owned(), format!("c{i}@example.com"))].into(),
                ..event(&format!("e{i}"), "login.created", i * apart)
            })
            .collect()
    }

    #[test]
    fn firing_due_timers_in_slices_gives_the_outputs_of_one_advance() {
        let engine = crate::engine::tests::reference();
        // 50 customers log in a minute apart; each then has its first invite and its
        // abandonment windows pending.
        let logins = logins(50, 60_000);
        let loaded = || {
            let mut rt = PartitionRuntime::offline(engine.clone(), 0).unwrap();
            let mut out = Vec::new();
            for e in &logins {
                rt.on_event(e, &mut out).unwrap();
            }
            (rt, out.len())
        };
        let until = 30 * D;
        let (mut whole, _) = loaded();
        let mut expected = Vec::new();
        let woken = whole.advance_to(until, &mut expected).unwrap();
        assert_eq!(
            woken,
            logins.len(),
            "each wakes once, for everything due by then"
        );
        assert!(
            expected.len() > 3 * woken,
            "invites and abandonments: {}",
            expected.len()
        );
        assert!(!whole.has_due());

        let (mut sliced, _) = loaded();
        assert!(sliced.raise_watermark(until));
        assert!(
            !sliced.raise_watermark(until),
            "it never moves back or stays"
        );
        let (mut got, mut slices) = (Vec::new(), 0);
        loop {
            let n = sliced.fire_due(7, &mut got).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= 7);
            slices += 1;
            if n < 7 {
                assert!(
                    !sliced.has_due(),
                    "a slice stops early only when nothing is due"
                );
            }
        }
        assert_eq!(slices, woken.div_ceil(7));
        assert!(!sliced.has_due());
        assert_eq!(got, expected);
        assert_eq!(sliced.stats(), whole.stats());
    }

    #[test]
    fn deferring_seals_skips_customers_due_again_and_writes_the_same_records() {
        let engine = crate::engine::tests::reference();
        // 30 customers log in ten minutes apart; then the watermark moves a day on, which
        // wakes each of them (their first invite) with more due later.
        let logins = logins(30, 600_000);
        let batch = |horizon: Millis| {
            let mut rt =
                PartitionRuntime::open(engine.clone(), Box::new(MemoryStore::new()), 100, 0)
                    .unwrap();
            rt.defer_seals_until(horizon);
            let mut out = Vec::new();
            for e in &logins {
                rt.on_event(e, &mut out).unwrap();
            }
            rt.advance_to(D, &mut out).unwrap();
            let sealed = rt.cache.sealed_len();
            let mut dues: Vec<Millis> = rt.timers.iter().map(|(due, _)| *due).collect();
            dues.sort_unstable();
            (
                sealed,
                dues,
                rt.prepare().unwrap().batch.ops().to_vec(),
                out,
            )
        };
        let (every, dues, expected, outputs) = batch(Millis::MIN);
        assert_eq!(every, 30, "every customer sealed at the end of its step");
        assert_eq!(dues.len(), 30, "each due again");
        // Everyone is due again by the horizon: none sealed, all encoded by the flush.
        let (deferred, _, ops, deferred_outputs) = batch(dues[29]);
        assert_eq!(deferred, 0);
        assert_eq!(ops, expected);
        assert_eq!(deferred_outputs, outputs);
        // Only those due again by the horizon are left unsealed.
        let horizon = dues[14];
        let (some, _, ops, _) = batch(horizon);
        let later = dues.iter().filter(|&&due| due > horizon).count();
        assert!(later > 0 && later < 30);
        assert_eq!(some, later);
        assert_eq!(ops, expected);
    }

    #[test]
    fn the_customers_waking_by_a_time_are_those_a_watermark_moving_there_wakes_first() {
        let engine = crate::engine::tests::reference();
        let mut rt = PartitionRuntime::offline(engine, 0).unwrap();
        let mut out = Vec::new();
        for i in 0..20 {
            let login = CustomerEvent {
                customer_id: format!("c{:02}", 19 - i),
                attributes: [("email".to_owned(), format!("c{i}@example.com"))].into(),
                ..event(&format!("e{i}"), "login.created", i * 600_000)
            };
            rt.on_event(&login, &mut out).unwrap();
        }
        let until = 3 * D;
        let waking: Vec<String> = rt.waking_by(until).map(str::to_owned).collect();
        assert!(!waking.is_empty() && waking.len() <= 20);
        assert!(
            rt.waking_by(rt.watermark()).next().is_none(),
            "nothing due yet"
        );
        rt.keep_fire_log();
        rt.advance_to(until, &mut out).unwrap();
        let mut first = Vec::new();
        for (_, customer, _) in rt.take_fire_log() {
            if !first.contains(&customer.to_string()) {
                first.push(customer.to_string());
            }
        }
        // Later wake-ups of the same customers may follow; the first of each are these.
        assert_eq!(first[..waking.len()], waking[..]);
    }

    #[test]
    fn retention_deletes_a_customer_with_nothing_left_and_keeps_a_compacted_one() {
        let text = "journey: trial\nversion: 1\nsteps:\n  - id: start\n    event: trial.started\n  - id: paid\n    event: subscription.paid\ngoal: paid\n";
        let j = parse_journey(std::path::Path::new("trial.yaml"), text).unwrap();
        let engine = Arc::new(Engine::new(JourneySet::new(vec![j])).with_retention(Some(D)));
        let ops = |events: &[CustomerEvent]| {
            let mut rt =
                PartitionRuntime::open(engine.clone(), Box::new(MemoryStore::new()), 16, 0)
                    .unwrap();
            let mut out = Vec::new();
            for e in events {
                rt.on_event(e, &mut out).unwrap();
            }
            assert_eq!(rt.pending_timers(), 1, "woken when retention is up");
            rt.advance_to(events[events.len() - 1].occurred_at + D, &mut out)
                .unwrap();
            assert_eq!(rt.pending_timers(), 0);
            rt.prepare().unwrap().batch.ops().to_vec()
        };
        // Never entered: deleted (a changelog tombstone).
        let never = ops(&[event("p", "subscription.paid", 0)]);
        assert!(
            never
                .iter()
                .any(|op| matches!(op, BatchOp::DeleteCustomer { id } if id == "c1")),
            "{never:?}"
        );
        // Entered and finished: a compacted record remains (it counts the instance).
        let done = ops(&[
            event("s", "trial.started", 0),
            event("p", "subscription.paid", 1000),
        ]);
        assert!(
            done.iter()
                .any(|op| matches!(op, BatchOp::PutCustomer { id, .. } if id == "c1")),
            "{done:?}"
        );
    }

    /// The store's timer index after each commit is the runtime's own, and every timer change
    /// a batch carries changes the store: a customer woken several times between two commits
    /// writes no entry it adds and removes again.
    #[test]
    fn each_batch_leaves_the_stored_timer_index_equal_to_the_runtimes() {
        let engine = crate::engine::tests::reference();
        let args = crate::loadgen::LoadgenArgs {
            customers: 300,
            ..Default::default()
        };
        let events: Vec<CustomerEvent> = crate::loadgen::generate(&args).unwrap().collect();
        for (every, capacity) in [(1, 4), (7, 16), (50, 64), (400, 1000)] {
            let mut rt =
                PartitionRuntime::open(engine.clone(), Box::new(MemoryStore::new()), capacity, 0)
                    .unwrap();
            let (mut out, mut cancelled) = (Vec::new(), 0);
            for (i, e) in events.iter().enumerate() {
                rt.on_event(e, &mut out).unwrap();
                if i % every != 0 && i + 1 < events.len() {
                    continue;
                }
                let changes = rt.cache.timer_changes();
                let prepared = rt.prepare().unwrap();
                let mut timer_ops = 0;
                for op in prepared.batch.ops() {
                    match op {
                        BatchOp::PutTimer { due, id } => {
                            assert!(!has_timer(&*rt.store, *due, id), "{op:?}")
                        }
                        BatchOp::DeleteTimer { due, id } => {
                            assert!(has_timer(&*rt.store, *due, id), "{op:?}")
                        }
                        _ => continue,
                    }
                    timer_ops += 1;
                }
                cancelled += changes - timer_ops;
                rt.write_prepared(prepared).unwrap();
                let index: Vec<(Millis, String)> = rt
                    .timers
                    .iter()
                    .map(|(due, id)| (*due, id.to_string()))
                    .collect();
                assert_eq!(rt.store.due_timers(Millis::MAX, usize::MAX).unwrap(), index);
            }
            assert!(rt.pending_timers() > 0);
            if every > 1 {
                assert!(cancelled > 0, "every {every}: no change cancelled out");
            }
        }
    }
}
