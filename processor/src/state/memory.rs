//! [`MemoryStore`]: a [`StateStore`] in ordered maps, for tests and the offline modes.
//!
//! It owns nothing beyond its own lifetime: no files, no durability. It must behave exactly
//! like the RocksDB store as seen through the trait (same ordering, same batch semantics); the
//! conformance suite in `tests.rs` runs against both.

use std::collections::{BTreeMap, BTreeSet};

use super::{BatchOp, Millis, StateBatch, StateError, StateStore};

/// A [`StateStore`] held in memory.
///
/// Atomicity: `write` cannot fail, and no reader can run while it applies a batch (it takes
/// `&mut self`), so every batch is applied whole. Durability: none; the state is gone when the
/// store is dropped. `Clone` gives an independent copy; `==` compares whole contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    /// Customer id → record.
    customers: BTreeMap<String, Vec<u8>>,
    /// Timer index entries, in `(due, customer id)` order.
    timers: BTreeSet<(Millis, String)>,
    /// Meta key → value.
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStore {
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.customers.get(customer_id).cloned())
    }

    fn due_timers(&self, upto: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StateError> {
        Ok(self
            .timers
            .iter()
            .take_while(|(due, _)| *due <= upto)
            .take(limit)
            .cloned()
            .collect())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.meta.get(key).cloned())
    }

    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        for op in batch.ops {
            match op {
                BatchOp::PutCustomer { id, bytes } => {
                    self.customers.insert(id, bytes);
                }
                BatchOp::DeleteCustomer { id } => {
                    self.customers.remove(&id);
                }
                BatchOp::PutTimer { due, id } => {
                    self.timers.insert((due, id));
                }
                BatchOp::DeleteTimer { due, id } => {
                    self.timers.remove(&(due, id));
                }
                BatchOp::PutMeta { key, bytes } => {
                    self.meta.insert(key, bytes);
                }
            }
        }
        Ok(())
    }

    fn for_each_customer(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StateError> {
        for (id, bytes) in &self.customers {
            if !f(id, bytes) {
                break;
            }
        }
        Ok(())
    }

    fn approximate_counts(&self) -> Result<(u64, u64), StateError> {
        Ok((self.customers.len() as u64, self.timers.len() as u64))
    }

    fn approximate_bytes(&self) -> Result<u64, StateError> {
        let customers: usize = self.customers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let timers: usize = self.timers.iter().map(|(_, id)| id.len() + 8).sum();
        let meta: usize = self.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok((customers + timers + meta) as u64)
    }
}
