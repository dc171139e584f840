//! Tests of the state layer: one conformance suite run against every [`StateStore`], the
//! RocksDB store's own guarantees (restart, lock, destroy), and the write-back cache.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;

/// Every customer record of `store`, in id order.
fn customers(store: &dyn StateStore) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    store
        .for_each_customer(&mut |id, bytes| {
            all.push((id.to_owned(), bytes.to_vec()));
            true
        })
        .unwrap();
    all
}

/// Every timer entry of `store`.
fn timers(store: &dyn StateStore) -> Vec<(Millis, String)> {
    store.due_timers(Millis::MAX, usize::MAX).unwrap()
}

/// Whether `store` holds the timer entry `(due, id)`.
pub(crate) fn has_timer(store: &dyn StateStore, due: Millis, id: &str) -> bool {
    store
        .due_timers(due, usize::MAX)
        .unwrap()
        .contains(&(due, id.to_owned()))
}

/// `(due, id)` pairs from literals.
fn entries(list: &[(Millis, &str)]) -> Vec<(Millis, String)> {
    list.iter().map(|(d, id)| (*d, (*id).to_owned())).collect()
}

/// A fresh, empty memory store (no directory).
fn open_memory() -> (Box<dyn StateStore>, Option<TempDir>) {
    (Box::new(MemoryStore::new()), None)
}

/// A fresh RocksDB store in a temporary directory (kept alive by the returned guard).
fn open_rocks() -> (Box<dyn StateStore>, Option<TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path().join("p0"), &small_options()).unwrap();
    (Box::new(store), Some(dir))
}

/// Options small enough for many test databases at once.
fn small_options() -> RocksOptions {
    RocksOptions {
        block_cache_mib: 1,
        write_buffer_mib: 1,
        sync_writes: false,
    }
}

/// The conformance cases: each takes an empty store and checks one promise of [`StateStore`].
mod conformance {
    use super::*;

    pub fn empty_store_holds_nothing(store: &mut dyn StateStore) {
        assert_eq!(store.get_customer("c1").unwrap(), None);
        assert_eq!(store.get_meta("input-offset").unwrap(), None);
        assert!(timers(store).is_empty());
        assert!(customers(store).is_empty());
        store.write(StateBatch::new()).unwrap();
        assert!(customers(store).is_empty());
    }

    pub fn batch_commits_records_timers_and_meta_together(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        batch
            .put_customer("c1", b"state-1".to_vec())
            .put_timer(1_000, "c1")
            .put_meta("input-offset", 42_i64.to_be_bytes().to_vec());
        assert_eq!(batch.len(), 3);
        assert_eq!(
            store.get_customer("c1").unwrap(),
            None,
            "nothing before write"
        );
        assert!(timers(store).is_empty(), "nothing before write");
        assert_eq!(
            store.get_meta("input-offset").unwrap(),
            None,
            "nothing before write"
        );

        store.write(batch).unwrap();

        assert_eq!(store.get_customer("c1").unwrap(), Some(b"state-1".to_vec()));
        assert_eq!(timers(store), entries(&[(1_000, "c1")]));
        assert_eq!(
            store.get_meta("input-offset").unwrap(),
            Some(42_i64.to_be_bytes().to_vec())
        );
    }

    pub fn later_op_in_batch_wins(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        batch
            .put_customer("deleted", b"x".to_vec())
            .delete_customer("deleted")
            .delete_customer("recreated")
            .put_customer("recreated", b"y".to_vec())
            .put_customer("replaced", b"old".to_vec())
            .put_customer("replaced", b"new".to_vec())
            .put_timer(5, "a")
            .delete_timer(5, "a")
            .delete_timer(6, "b")
            .put_timer(6, "b")
            .put_meta("k", b"1".to_vec())
            .put_meta("k", b"2".to_vec());
        store.write(batch).unwrap();

        assert_eq!(store.get_customer("deleted").unwrap(), None);
        assert_eq!(
            store.get_customer("recreated").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(
            store.get_customer("replaced").unwrap(),
            Some(b"new".to_vec())
        );
        assert_eq!(timers(store), entries(&[(6, "b")]));
        assert_eq!(store.get_meta("k").unwrap(), Some(b"2".to_vec()));
    }

    pub fn delete_removes_records_and_timers(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        batch
            .put_customer("a", b"1".to_vec())
            .put_customer("b", b"2".to_vec())
            .put_timer(10, "a")
            .put_timer(20, "b");
        store.write(batch).unwrap();
        let mut batch = StateBatch::new();
        batch
            .delete_customer("a")
            .delete_timer(10, "a")
            .delete_customer("never-existed")
            .delete_timer(99, "never-existed");
        store.write(batch).unwrap();

        assert_eq!(store.get_customer("a").unwrap(), None);
        assert_eq!(customers(store), vec![("b".to_owned(), b"2".to_vec())]);
        assert_eq!(timers(store), entries(&[(20, "b")]));
    }

    pub fn due_timers_ascend_by_due_then_id(store: &mut dyn StateStore) {
        let all = [
            (Millis::MIN, "min"),
            (-86_400_000, "b"),
            (-86_400_000, "a"),
            (-1, "z"),
            (0, "zero"),
            (1, "one"),
            (1_700_000_000_000, "c"),
            (1_700_000_000_000, "a"),
            (1_700_000_000_000, "ab"),
            (Millis::MAX, "max"),
        ];
        let mut batch = StateBatch::new();
        for (due, id) in all {
            batch.put_timer(due, id);
        }
        store.write(batch).unwrap();

        let expected = entries(&[
            (Millis::MIN, "min"),
            (-86_400_000, "a"),
            (-86_400_000, "b"),
            (-1, "z"),
            (0, "zero"),
            (1, "one"),
            (1_700_000_000_000, "a"),
            (1_700_000_000_000, "ab"),
            (1_700_000_000_000, "c"),
            (Millis::MAX, "max"),
        ]);
        assert_eq!(timers(store), expected);
        assert_eq!(store.due_timers(-1, usize::MAX).unwrap(), expected[..4]);
        assert_eq!(
            store.due_timers(0, usize::MAX).unwrap(),
            expected[..5],
            "upto is inclusive"
        );
        assert_eq!(store.due_timers(-2, usize::MAX).unwrap(), expected[..3]);
        assert_eq!(
            store.due_timers(Millis::MIN, usize::MAX).unwrap(),
            expected[..1]
        );
        assert_eq!(
            store.due_timers(1_700_000_000_000, usize::MAX).unwrap(),
            expected[..9]
        );
        assert_eq!(
            store.due_timers(Millis::MAX - 1, usize::MAX).unwrap(),
            expected[..9]
        );
    }

    pub fn due_timers_return_at_most_limit(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        for (due, id) in [(3, "c"), (1, "a"), (2, "b"), (2, "a")] {
            batch.put_timer(due, id);
        }
        store.write(batch).unwrap();

        assert!(store.due_timers(10, 0).unwrap().is_empty());
        assert_eq!(store.due_timers(10, 1).unwrap(), entries(&[(1, "a")]));
        assert_eq!(
            store.due_timers(10, 3).unwrap(),
            entries(&[(1, "a"), (2, "a"), (2, "b")])
        );
        assert_eq!(store.due_timers(2, 10).unwrap().len(), 3);
    }

    pub fn one_customer_may_have_timers_at_several_times(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        batch
            .put_timer(30, "a")
            .put_timer(10, "a")
            .put_timer(20, "b");
        store.write(batch).unwrap();
        assert_eq!(timers(store), entries(&[(10, "a"), (20, "b"), (30, "a")]));
        let mut batch = StateBatch::new();
        batch.delete_timer(10, "a");
        store.write(batch).unwrap();
        assert_eq!(timers(store), entries(&[(20, "b"), (30, "a")]));
    }

    pub fn meta_round_trips_any_bytes(store: &mut dyn StateStore) {
        let binary: Vec<u8> = (0..=255).collect();
        let mut batch = StateBatch::new();
        batch
            .put_meta("watermark", (-5_i64).to_be_bytes().to_vec())
            .put_meta("empty", Vec::new())
            .put_meta("binary", binary.clone());
        store.write(batch).unwrap();
        assert_eq!(
            store.get_meta("watermark").unwrap(),
            Some((-5_i64).to_be_bytes().to_vec())
        );
        assert_eq!(store.get_meta("empty").unwrap(), Some(Vec::new()));
        assert_eq!(store.get_meta("binary").unwrap(), Some(binary));
        assert_eq!(store.get_meta("missing").unwrap(), None);
        assert_eq!(
            store.get_customer("watermark").unwrap(),
            None,
            "keyspaces are apart"
        );
    }

    pub fn customer_ids_may_be_any_utf8(store: &mut dyn StateStore) {
        let ids = ["", "ü-ñ/日本", "with\0nul", "a b", "ZZ"];
        let mut batch = StateBatch::new();
        for (i, id) in ids.iter().enumerate() {
            batch.put_customer(id, vec![i as u8]).put_timer(7, id);
        }
        store.write(batch).unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                store.get_customer(id).unwrap(),
                Some(vec![i as u8]),
                "{id:?}"
            );
        }
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        let expected: Vec<(Millis, String)> =
            sorted.iter().map(|id| (7, (*id).to_owned())).collect();
        assert_eq!(timers(store), expected);
        let visited: Vec<String> = customers(store).into_iter().map(|(id, _)| id).collect();
        assert_eq!(visited, sorted);
    }

    pub fn for_each_customer_visits_in_id_order_and_stops_when_asked(store: &mut dyn StateStore) {
        let mut batch = StateBatch::new();
        for id in ["c", "a", "b", "d"] {
            batch.put_customer(id, id.as_bytes().to_vec());
        }
        store.write(batch).unwrap();
        assert_eq!(
            customers(store),
            ["a", "b", "c", "d"].map(|id| (id.to_owned(), id.as_bytes().to_vec()))
        );
        let mut seen = Vec::new();
        store
            .for_each_customer(&mut |id, _| {
                seen.push(id.to_owned());
                seen.len() < 2
            })
            .unwrap();
        assert_eq!(seen, ["a", "b"]);
    }

    pub fn approximate_counts_follow_writes(store: &mut dyn StateStore) {
        assert_eq!(store.approximate_counts().unwrap(), (0, 0));
        let mut batch = StateBatch::new();
        batch
            .put_customer("a", vec![1])
            .put_customer("b", vec![2])
            .put_customer("c", vec![3])
            .put_timer(1, "a")
            .put_timer(2, "b");
        store.write(batch).unwrap();
        assert_eq!(store.approximate_counts().unwrap(), (3, 2));
    }

    pub fn approximate_bytes_grow_with_writes(store: &mut dyn StateStore) {
        let before = store.approximate_bytes().unwrap();
        let mut batch = StateBatch::new();
        for i in 0..100 {
            batch.put_customer(&format!("customer-{i}"), vec![7; 100]);
        }
        store.write(batch).unwrap();
        let after = store.approximate_bytes().unwrap();
        assert!(
            after >= before + 100 * 100,
            "10 KB written, size went from {before} to {after}"
        );
    }
}

/// Runs every conformance case against the store `$open` returns, as tests in module `$suite`.
macro_rules! conformance_suite {
    ($suite:ident, $open:path) => {
        mod $suite {
            conformance_suite!(@cases $open,
                empty_store_holds_nothing,
                batch_commits_records_timers_and_meta_together,
                later_op_in_batch_wins,
                delete_removes_records_and_timers,
                due_timers_ascend_by_due_then_id,
                due_timers_return_at_most_limit,
                one_customer_may_have_timers_at_several_times,
                meta_round_trips_any_bytes,
                customer_ids_may_be_any_utf8,
                for_each_customer_visits_in_id_order_and_stops_when_asked,
                approximate_counts_follow_writes,
                approximate_bytes_grow_with_writes,
            );
        }
    };
    (@cases $open:path, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (mut store, _dir) = $open();
                super::conformance::$case(&mut *store);
            }
        )*
    };
}

conformance_suite!(memory_store, super::open_memory);
conformance_suite!(rocks_store, super::open_rocks);

mod rocks {
    use super::*;

    /// The values of `option` per column family in the OPTIONS file RocksDB wrote in `path`
    /// (`section` is its kind, e.g. `CFOptions`).
    fn written_option(
        path: &std::path::Path,
        section: &str,
        option: &str,
    ) -> Vec<(String, String)> {
        let file = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .max()
            .expect("an OPTIONS file");
        let (mut cf, mut values) = (None, Vec::new());
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let line = line.trim();
            if let Some(header) = line.strip_prefix('[') {
                cf = header
                    .strip_prefix(section)
                    .and_then(|rest| rest.trim().strip_prefix('"'))
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned);
            } else if let (Some(cf), Some(value)) = (&cf, line.strip_prefix(option))
                && let Some(value) = value.strip_prefix('=')
            {
                values.push((cf.clone(), value.to_owned()));
            }
        }
        values
    }

    /// Only customer records are read by key: the other column families have no Bloom
    /// filters to fill at every write, flush and compaction.
    #[test]
    fn only_the_customers_column_family_has_bloom_filters() {
        let dir = tempfile::tempdir().unwrap();
        let _store = RocksStore::open(dir.path(), &small_options()).unwrap();
        let memtable = written_option(dir.path(), "CFOptions", "memtable_prefix_bloom_size_ratio");
        let tables = written_option(dir.path(), "TableOptions/BlockBasedTable", "filter_policy");
        for (cf, ratio) in &memtable {
            let filtered = cf == "customers";
            assert_eq!(
                ratio.parse::<f64>().unwrap() > 0.0,
                filtered,
                "{cf}: {ratio}"
            );
        }
        for (cf, policy) in &tables {
            let filtered = cf == "customers";
            assert_eq!(policy.contains("bloom"), filtered, "{cf}: {policy}");
        }
        let named = |values: &[(String, String)]| {
            let mut cfs: Vec<String> = values.iter().map(|(cf, _)| cf.clone()).collect();
            cfs.sort();
            cfs
        };
        assert_eq!(named(&memtable), ["customers", "default", "meta", "timers"]);
        assert_eq!(named(&tables), named(&memtable));
    }

    #[test]
    fn reopen_keeps_every_written_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p3");
        {
            let mut store = RocksStore::open(&path, &small_options()).unwrap();
            let mut batch = StateBatch::new();
            batch
                .put_customer("c1", b"v1".to_vec())
                .put_timer(-7, "c1")
                .put_meta("input-offset", 9_i64.to_be_bytes().to_vec());
            store.write(batch).unwrap();
            let mut batch = StateBatch::new();
            batch.put_customer("c2", b"v2".to_vec());
            store.write(batch).unwrap();
        }
        let store = RocksStore::open(&path, &small_options()).unwrap();
        assert_eq!(
            customers(&store),
            [("c1", b"v1"), ("c2", b"v2")].map(|(id, v)| (id.to_owned(), v.to_vec()))
        );
        assert_eq!(timers(&store), entries(&[(-7, "c1")]));
        assert_eq!(
            store.get_meta("input-offset").unwrap(),
            Some(9_i64.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn a_writer_on_another_thread_writes_what_the_store_then_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let store = RocksStore::open(&path, &small_options()).unwrap();
        let writer = store.writer().expect("a RocksDB store hands out a writer");
        let mut batch = StateBatch::new();
        batch
            .put_customer("c1", b"v1".to_vec())
            .put_timer(5, "c1")
            .put_meta("input-offset", vec![7]);
        std::thread::spawn(move || writer.write(batch))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(store.get_customer("c1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(timers(&store), entries(&[(5, "c1")]));
        assert_eq!(store.get_meta("input-offset").unwrap(), Some(vec![7]));
        // A writer keeps the database open: dropped with the store, the directory opens again.
        drop(store);
        let reopened = RocksStore::open(&path, &small_options()).unwrap();
        assert_eq!(reopened.get_customer("c1").unwrap(), Some(b"v1".to_vec()));
    }

    #[test]
    fn the_memory_store_has_no_writer_for_other_threads() {
        assert!(MemoryStore::new().writer().is_none());
    }

    #[test]
    fn second_open_of_a_directory_is_a_lock_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let _first = RocksStore::open(&path, &small_options()).unwrap();
        let err = RocksStore::open(&path, &small_options()).unwrap_err();
        assert!(
            matches!(&err, StateError::Locked { path: p } if *p == path),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("--state-dir"), "{message}");
    }

    #[test]
    fn destroy_removes_the_partition_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p1");
        {
            let mut store = RocksStore::open(&path, &small_options()).unwrap();
            let mut batch = StateBatch::new();
            batch.put_customer("c1", b"v".to_vec());
            store.write(batch).unwrap();
            let err = RocksStore::destroy(&path).unwrap_err();
            assert!(
                matches!(err, StateError::Locked { .. }),
                "open store: {err:?}"
            );
        }
        RocksStore::destroy(&path).unwrap();
        assert!(!path.exists());
        RocksStore::destroy(&path).unwrap();
        let store = RocksStore::open(&path, &small_options()).unwrap();
        assert!(customers(&store).is_empty());
    }

    #[test]
    fn open_creates_missing_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("customer-events-7");
        RocksStore::open(&path, &small_options()).unwrap();
        assert!(path.join("CURRENT").exists());
    }

    #[test]
    fn partitions_of_one_env_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let env = RocksEnv::new(&small_options()).unwrap();
        let mut p0 = env.open(dir.path().join("p0")).unwrap();
        let mut p1 = env.open(dir.path().join("p1")).unwrap();
        let mut batch = StateBatch::new();
        batch.put_customer("c", b"zero".to_vec());
        p0.write(batch).unwrap();
        let mut batch = StateBatch::new();
        batch.put_customer("c", b"one".to_vec());
        p1.write(batch).unwrap();
        assert_eq!(p0.get_customer("c").unwrap(), Some(b"zero".to_vec()));
        assert_eq!(p1.get_customer("c").unwrap(), Some(b"one".to_vec()));
    }

    #[test]
    fn invalid_options_are_refused_before_opening() {
        let dir = tempfile::tempdir().unwrap();
        let options = RocksOptions {
            write_buffer_mib: 0,
            ..small_options()
        };
        let err = RocksStore::open(dir.path().join("p0"), &options).unwrap_err();
        assert!(matches!(
            err,
            StateError::InvalidOption {
                field: "write-buffer-mib",
                ..
            }
        ));
        assert!(!dir.path().join("p0").exists());
    }

    #[test]
    fn state_survives_many_batches_past_the_memtable_size() {
        // 1 MiB memtables: this writes several, so reads come from SST files too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0");
        let value = vec![7_u8; 1024];
        {
            let mut store = RocksStore::open(&path, &small_options()).unwrap();
            for chunk in 0..8 {
                let mut batch = StateBatch::new();
                for i in 0..500 {
                    let id = format!("c{:05}", chunk * 500 + i);
                    batch
                        .put_customer(&id, value.clone())
                        .put_timer(i64::from(i), &id);
                }
                store.write(batch).unwrap();
            }
        }
        let store = RocksStore::open(&path, &small_options()).unwrap();
        assert_eq!(customers(&store).len(), 4000);
        assert_eq!(store.get_customer("c03999").unwrap(), Some(value));
        let first = store.due_timers(0, usize::MAX).unwrap();
        assert_eq!(first.len(), 8);
        assert!(first.windows(2).all(|w| w[0] < w[1]));
    }

    /// A random store operation.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>),
        Delete(u8),
        PutTimer(i64, u8),
        DeleteTimer(i64, u8),
        Meta(u8, Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0_u8..6;
        let due = prop_oneof![Just(Millis::MIN), Just(Millis::MAX), -3_i64..3];
        prop_oneof![
            (id.clone(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(i, v)| Op::Put(i, v)),
            id.clone().prop_map(Op::Delete),
            (due.clone(), id.clone()).prop_map(|(d, i)| Op::PutTimer(d, i)),
            (due, id.clone()).prop_map(|(d, i)| Op::DeleteTimer(d, i)),
            (id, prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(i, v)| Op::Meta(i, v)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_batches_leave_rocks_and_memory_stores_equal(
            batches in prop::collection::vec(prop::collection::vec(op(), 0..8), 0..8),
            upto in -4_i64..4,
            limit in 0_usize..6,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut rocks = RocksStore::open(dir.path().join("p0"), &small_options()).unwrap();
            let mut memory = MemoryStore::new();
            for ops in batches {
                let mut batch = StateBatch::new();
                for op in ops {
                    match op {
                        Op::Put(i, v) => batch.put_customer(&format!("c{i}"), v),
                        Op::Delete(i) => batch.delete_customer(&format!("c{i}")),
                        Op::PutTimer(d, i) => batch.put_timer(d, &format!("c{i}")),
                        Op::DeleteTimer(d, i) => batch.delete_timer(d, &format!("c{i}")),
                        Op::Meta(i, v) => batch.put_meta(&format!("m{i}"), v),
                    };
                }
                rocks.write(batch.clone()).unwrap();
                memory.write(batch).unwrap();
            }
            prop_assert_eq!(customers(&rocks), customers(&memory));
            prop_assert_eq!(timers(&rocks), timers(&memory));
            prop_assert_eq!(
                rocks.due_timers(upto, limit).unwrap(),
                memory.due_timers(upto, limit).unwrap()
            );
            for i in 0..6 {
                let key = format!("m{i}");
                prop_assert_eq!(rocks.get_meta(&key).unwrap(), memory.get_meta(&key).unwrap());
            }
        }
    }
}

/// A memory store that records every batch written and can be told to fail writes.
#[derive(Default)]
struct SpyStore {
    /// The contents.
    inner: MemoryStore,
    /// Every batch written successfully.
    writes: Vec<StateBatch>,
    /// How many of the next writes fail.
    failing_writes: usize,
}

impl StateStore for SpyStore {
    fn get_customer(&self, customer_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get_customer(customer_id)
    }
    fn due_timers(&self, upto: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StateError> {
        self.inner.due_timers(upto, limit)
    }
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get_meta(key)
    }
    fn write(&mut self, batch: StateBatch) -> Result<(), StateError> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(StateError::Write {
                path: "/spy".into(),
                ops: batch.len(),
                message: "injected failure".to_owned(),
            });
        }
        self.writes.push(batch.clone());
        self.inner.write(batch)
    }
    fn for_each_customer(&self, f: &mut dyn FnMut(&str, &[u8]) -> bool) -> Result<(), StateError> {
        self.inner.for_each_customer(f)
    }
    fn approximate_counts(&self) -> Result<(u64, u64), StateError> {
        self.inner.approximate_counts()
    }
    fn approximate_bytes(&self) -> Result<u64, StateError> {
        self.inner.approximate_bytes()
    }
}

/// A decoded record as the cache tests use it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Rec {
    /// Some counter.
    n: u32,
    /// Some text.
    label: String,
}

fn rec(n: u32) -> Rec {
    Rec {
        n,
        label: format!("r{n}"),
    }
}

mod cache {
    use super::*;

    #[test]
    fn writes_stay_in_cache_until_flush() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        cache.insert("a", rec(1));
        cache.get_or_insert_with(&store, "b", || rec(2)).unwrap().n += 10;
        cache.set_timer("a", None, Some(100));
        cache.put_meta("input-offset", vec![1]);

        assert!(store.writes.is_empty());
        assert!(customers(&store).is_empty(), "store untouched before flush");
        assert!(timers(&store).is_empty());
        assert_eq!(store.get_meta("input-offset").unwrap(), None);
        assert_eq!(
            cache.get(&store, "b").unwrap(),
            Some(&Rec {
                n: 12,
                label: "r2".into()
            })
        );
        assert_eq!(cache.dirty_len(), 2);

        cache.flush(&mut store).unwrap();
        assert_eq!(
            store.get_customer("a").unwrap(),
            Some(encode_value("a", &rec(1)).unwrap())
        );
        assert_eq!(timers(&store), entries(&[(100, "a")]));
        assert_eq!(store.get_meta("input-offset").unwrap(), Some(vec![1]));
    }

    #[test]
    fn a_sealed_record_is_flushed_as_sealed_and_a_change_after_the_seal_is_not_lost() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        cache.get_or_insert_with(&store, "a", || rec(1)).unwrap();
        cache.seal("a");
        cache.get_or_insert_with(&store, "b", || rec(2)).unwrap();
        cache.seal("b");
        // Changed again after its seal, through each way a change is made.
        cache.get_mut(&store, "b").unwrap().unwrap().n = 20;
        cache.get_or_insert_with(&store, "c", || rec(3)).unwrap();
        cache.seal("c");
        cache.get_or_insert_with(&store, "c", || rec(0)).unwrap().n = 30;
        cache.insert("d", rec(4));
        cache.seal("d");
        cache.insert("d", rec(40));
        cache.insert("e", rec(5));
        cache.seal("e");
        cache.remove("e");
        // Sealing a clean or unknown customer does nothing.
        cache.seal("nobody");

        cache.flush(&mut store).unwrap();
        // `label` tells which record the number was set on.
        let put =
            |id: &str, n: u32, of: u32| Some(encode_value(id, &Rec { n, ..rec(of) }).unwrap());
        assert_eq!(store.get_customer("a").unwrap(), put("a", 1, 1));
        assert_eq!(store.get_customer("b").unwrap(), put("b", 20, 2));
        assert_eq!(store.get_customer("c").unwrap(), put("c", 30, 3));
        assert_eq!(store.get_customer("d").unwrap(), put("d", 40, 40));
        assert_eq!(
            store.get_customer("e").unwrap(),
            None,
            "removed after its seal"
        );

        // Clean now: a seal encodes nothing, and a later change is encoded at the flush.
        cache.seal("a");
        assert!(cache.is_clean());
        cache.get_mut(&store, "a").unwrap().unwrap().n = 100;
        cache.flush(&mut store).unwrap();
        assert_eq!(store.get_customer("a").unwrap(), put("a", 100, 1));
    }

    #[test]
    fn a_batch_prepared_again_after_its_sealed_records_moved_out_is_the_same() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        for n in 0..3 {
            let id = format!("c{n}");
            cache.get_or_insert_with(&store, &id, || rec(n)).unwrap();
            cache.seal(&id);
        }
        let first = cache.prepare().unwrap();
        assert_eq!(
            cache.sealed_len(),
            0,
            "the sealed records moved into the batch"
        );
        // Not written (say the transaction failed): the next batch encodes them again.
        let second = cache.prepare().unwrap();
        assert_eq!(first.batch.ops(), second.batch.ops());
        assert_eq!(second.stats.customers_put, 3);
        cache.write_prepared(&mut store, second).unwrap();
        assert_eq!(
            store.get_customer("c1").unwrap(),
            Some(encode_value("c1", &rec(1)).unwrap())
        );
    }

    #[test]
    fn flush_writes_everything_in_one_batch() {
        let mut store = SpyStore::default();
        let mut batch = StateBatch::new();
        batch
            .put_customer("gone", encode_value("gone", &rec(0)).unwrap())
            .put_timer(5, "gone");
        store.write(batch).unwrap();
        store.writes.clear();

        let mut cache = StateCache::<Rec>::new(10);
        cache.insert("a", rec(1));
        cache.insert("b", rec(2));
        cache.remove("gone");
        cache.set_timer("gone", Some(5), None);
        cache.set_timer("a", None, Some(7));
        cache.put_meta("input-offset", vec![9]);
        cache.put_meta("watermark", vec![3]);

        let stats = cache.flush(&mut store).unwrap();
        assert_eq!(store.writes.len(), 1, "one atomic batch");
        assert_eq!(store.writes[0].len(), 7);
        assert_eq!(
            stats,
            FlushStats {
                customers_put: 2,
                customers_deleted: 1,
                timers_put: 1,
                timers_deleted: 1,
                meta_put: 2,
                evicted: 0,
            }
        );
        assert_eq!(stats.ops(), 7);
        assert_eq!(cache.dirty_len(), 0);
        assert!(cache.is_clean());
        assert_eq!(store.get_customer("gone").unwrap(), None);
        assert_eq!(timers(&store), entries(&[(7, "a")]));

        let stats = cache.flush(&mut store).unwrap();
        assert_eq!(stats.ops(), 0);
        assert_eq!(store.writes.len(), 1, "a clean cache writes nothing");
    }

    /// Large batches are encoded on several threads: the batch must still hold every dirty
    /// customer once, in the order they became dirty, with the bytes one thread would write.
    #[test]
    fn a_large_batch_encoded_on_several_threads_equals_encoding_in_order() {
        let mut cache = StateCache::<Rec>::new(usize::MAX);
        let n = 4 * ENCODE_CHUNK as u32 + 17;
        // Descending ids, so dirty order differs from id order.
        let ids: Vec<String> = (0..n).rev().map(|i| format!("c-{i:06}")).collect();
        for (i, id) in ids.iter().enumerate() {
            if i % 7 == 3 {
                cache.remove(id);
            } else {
                cache.insert(id, rec(i as u32));
            }
        }
        let prepared = cache.prepare().unwrap();
        let expected: Vec<BatchOp> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                if i % 7 == 3 {
                    BatchOp::DeleteCustomer { id: id.clone() }
                } else {
                    BatchOp::PutCustomer {
                        id: id.clone(),
                        bytes: encode_value(id, &rec(i as u32)).unwrap(),
                    }
                }
            })
            .collect();
        assert_eq!(prepared.batch.ops(), expected.as_slice());
        assert_eq!(
            prepared.stats.customers_put + prepared.stats.customers_deleted,
            n as usize
        );
    }

    #[test]
    fn failed_flush_keeps_every_change_for_the_retry() {
        let mut store = SpyStore {
            failing_writes: 1,
            ..SpyStore::default()
        };
        let mut cache = StateCache::<Rec>::new(0);
        cache.insert("a", rec(1));
        cache.set_timer("a", None, Some(3));
        cache.put_meta("input-offset", vec![4]);

        let err = cache.flush(&mut store).unwrap_err();
        assert!(matches!(err, StateError::Write { ops: 3, .. }), "{err:?}");
        assert_eq!(cache.dirty_len(), 1);
        assert_eq!(cache.len(), 1, "nothing evicted after a failed flush");
        assert!(customers(&store).is_empty());

        cache.get_mut(&store, "a").unwrap().unwrap().label = "changed".into();
        cache.flush(&mut store).unwrap();
        assert_eq!(store.writes.len(), 1);
        let changed = Rec {
            n: 1,
            label: "changed".into(),
        };
        assert_eq!(
            store.get_customer("a").unwrap(),
            Some(encode_value("a", &changed).unwrap())
        );
        assert_eq!(timers(&store), entries(&[(3, "a")]));
        assert_eq!(store.get_meta("input-offset").unwrap(), Some(vec![4]));
    }

    #[test]
    fn a_handed_off_batch_stays_readable_until_written_and_later_changes_go_to_the_next() {
        let empty = MemoryStore::new();
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(1);
        for n in 0..4 {
            cache.insert(&format!("c{n}"), rec(n));
        }
        cache.set_timer("c0", None, Some(10));
        cache.put_meta("input-offset", vec![4]);
        let prepared = cache.prepare().unwrap();
        let first = cache.hand_off(prepared);
        assert_eq!(first.stats.customers_put, 4);
        assert_eq!(cache.dirty_len(), 0, "the batch left the cache's keeping");

        // The next batch's changes, while the first one is being committed.
        cache.get_mut(&store, "c1").unwrap().unwrap().n = 100;
        assert!(cache.mark_dirty("c1"));
        cache.insert("c9", rec(9));
        for n in 0..4 {
            // Nothing of the first batch is in the store yet, and nothing was evicted: only
            // the cache can answer.
            let want = if n == 1 { 100 } else { n };
            assert_eq!(
                cache.get(&empty, &format!("c{n}")).unwrap().map(|r| r.n),
                Some(want)
            );
        }

        let stats = cache.write_handed_off(&mut store, first).unwrap();
        assert_eq!(store.writes.len(), 1);
        assert_eq!(
            store.writes[0].len(),
            6,
            "4 customers, a timer and a meta value"
        );
        assert_eq!(
            store.get_customer("c1").unwrap(),
            Some(encode_value("c1", &rec(1)).unwrap()),
            "the first batch holds c1 as it was when prepared"
        );
        assert_eq!(timers(&store), entries(&[(10, "c0")]));
        // Evicted down to capacity, except what changed since (c1, c9 are dirty).
        assert_eq!(stats.evicted, 3);
        assert_eq!(cache.len(), 2);

        let second = cache.prepare().unwrap();
        assert_eq!(second.stats.customers_put, 2);
        assert_eq!(second.stats.timers_put + second.stats.meta_put, 0);
        cache.write_prepared(&mut store, second).unwrap();
        assert_eq!(cache.get(&store, "c1").unwrap().map(|r| r.n), Some(100));
        assert_eq!(cache.get(&store, "c9").unwrap(), Some(&rec(9)));
        assert_eq!(customers(&store).len(), 5);
    }

    #[test]
    fn a_batch_written_elsewhere_lets_the_cache_evict_what_did_not_change_since() {
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(1);
        for n in 0..4 {
            cache.insert(&format!("c{n}"), rec(n));
        }
        let prepared = cache.prepare().unwrap();
        let first = cache.hand_off(prepared);
        cache.get_mut(&store, "c2").unwrap().unwrap().n = 200;
        assert_eq!(
            cache.len(),
            4,
            "nothing is evicted before the batch is written"
        );
        // Written by another thread's writer; here, straight to the store.
        store.write(first.batch).unwrap();
        assert_eq!(cache.handed_off_written(), 3);
        assert_eq!(cache.len(), 1, "only c2, changed since, stays");
        assert_eq!(cache.get(&store, "c2").unwrap().map(|r| r.n), Some(200));
        assert_eq!(cache.get(&store, "c0").unwrap(), Some(&rec(0)), "read back");
    }

    #[test]
    fn a_preloaded_customer_is_cached_clean_and_read_without_the_store() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        let ticket = cache.evictions();
        assert!(!cache.contains("a"));
        assert!(cache.preload("a", Some(rec(1)), ticket));
        assert!(cache.preload("none", None, ticket));
        assert!(cache.contains("a") && cache.contains("none"));
        // The store is empty: only the preloaded entries can answer.
        assert_eq!(cache.get(&store, "a").unwrap(), Some(&rec(1)));
        assert_eq!(cache.get(&store, "none").unwrap(), None);
        assert!(
            cache.is_clean(),
            "a preloaded record is what the store holds"
        );
        cache.flush(&mut store).unwrap();
        assert!(store.writes.is_empty(), "nothing to write back");
    }

    #[test]
    fn a_preload_never_replaces_a_cached_customer() {
        let store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(10);
        let ticket = cache.evictions();
        cache.insert("a", rec(5));
        assert!(!cache.preload("a", Some(rec(1)), ticket), "dirty");
        assert_eq!(cache.get(&store, "a").unwrap(), Some(&rec(5)));
        assert!(cache.get(&store, "gone").unwrap().is_none());
        assert!(
            !cache.preload("gone", Some(rec(2)), ticket),
            "known to have no record"
        );
        assert_eq!(cache.get(&store, "gone").unwrap(), None);
    }

    #[test]
    fn a_preload_read_before_an_eviction_is_refused() {
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(1);
        cache.insert("c0", rec(0));
        cache.flush(&mut store).unwrap();
        // Read elsewhere now: c1 has no record yet.
        let ticket = cache.evictions();
        cache.insert("c1", rec(1));
        cache.insert("c2", rec(2));
        let stats = cache.flush(&mut store).unwrap();
        assert!(stats.evicted > 0 && !cache.contains("c1"));
        assert_ne!(cache.evictions(), ticket);
        assert!(
            !cache.preload("c1", None, ticket),
            "c1 was written and evicted after the read"
        );
        assert_eq!(cache.get(&store, "c1").unwrap(), Some(&rec(1)));
        cache.flush(&mut store).unwrap();
        let (ticket, cached) = (cache.evictions(), cache.len());
        assert!(cached <= cache.capacity());
        cache.flush(&mut store).unwrap();
        assert_eq!(
            (cache.evictions(), cache.len()),
            (ticket, cached),
            "a flush that evicts nothing"
        );
    }

    #[test]
    fn eviction_never_drops_dirty_entries() {
        let empty = MemoryStore::new();
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(2);
        for n in 0..10 {
            cache.insert(&format!("c{n}"), rec(n));
        }
        assert_eq!(
            cache.len(),
            10,
            "dirty entries stay past capacity until flushed"
        );
        for n in 0..10 {
            // Read against an empty store: only the cache can answer.
            assert_eq!(cache.get(&empty, &format!("c{n}")).unwrap(), Some(&rec(n)));
        }

        let stats = cache.flush(&mut store).unwrap();
        assert_eq!(stats.customers_put, 10);
        assert_eq!(stats.evicted, 8);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            customers(&store).len(),
            10,
            "every dirty record reached the store"
        );
        for n in 0..10 {
            assert_eq!(cache.get(&store, &format!("c{n}")).unwrap(), Some(&rec(n)));
        }
    }

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(4);
        for n in 0..8 {
            cache.insert(&format!("c{n}"), rec(n));
        }
        cache.flush(&mut store).unwrap();
        assert_eq!(
            cache.len(),
            3,
            "evicted down to three quarters of the capacity"
        );
        let empty = MemoryStore::new();
        let cached: Vec<u32> = (0..8)
            .filter(|n| cache.get(&empty, &format!("c{n}")).unwrap().is_some())
            .collect();
        assert_eq!(cached, [5, 6, 7]);
    }

    #[test]
    fn timer_move_replaces_the_old_entry() {
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(10);
        cache.set_timer("a", None, Some(100));
        cache.set_timer("b", None, Some(50));
        cache.flush(&mut store).unwrap();
        cache.set_timer("a", Some(100), Some(20));
        assert_eq!(
            cache.due_timers(&store, Millis::MAX, 10).unwrap(),
            entries(&[(20, "a"), (50, "b")]),
            "reads see the pending move"
        );
        cache.flush(&mut store).unwrap();
        assert_eq!(timers(&store), entries(&[(20, "a"), (50, "b")]));

        cache.set_timer("a", Some(20), Some(20));
        cache.set_timer("b", Some(50), None);
        cache.flush(&mut store).unwrap();
        assert_eq!(
            timers(&store),
            entries(&[(20, "a")]),
            "old == new keeps the entry"
        );
    }

    #[test]
    fn timer_changes_reach_the_batch_sorted_once_per_entry_unless_they_cancel_out() {
        let mut cache = StateCache::<Rec>::new(10);
        cache.set_timer("b", None, Some(5));
        cache.set_timer("a", None, Some(9));
        cache.set_timer("b", Some(5), Some(7));
        cache.set_timer("b", Some(7), Some(5));
        cache.set_timer("c", Some(1), None);
        // Stored before: removed, then added again.
        cache.set_timer("d", Some(2), Some(3));
        cache.set_timer("d", Some(3), Some(2));
        let prepared = cache.prepare().unwrap();
        let timer = |due, id: &str, add| match add {
            true => BatchOp::PutTimer { due, id: id.into() },
            false => BatchOp::DeleteTimer { due, id: id.into() },
        };
        // `(7, "b")` and `(3, "d")` were added and removed again, `(2, "d")` removed and added
        // again: the store is left as it was for each.
        let expected = [
            timer(1, "c", false),
            timer(5, "b", true),
            timer(9, "a", true),
        ];
        assert_eq!(prepared.batch.ops(), expected);
        assert_eq!(
            (prepared.stats.timers_put, prepared.stats.timers_deleted),
            (2, 1)
        );
        // Not written: the next batch has the same changes, and the ones made since.
        cache.set_timer("a", Some(9), None);
        cache.set_timer("d", Some(2), None);
        assert_eq!(
            cache.prepare().unwrap().batch.ops(),
            [
                timer(1, "c", false),
                timer(2, "d", false),
                timer(5, "b", true)
            ]
        );
    }

    #[test]
    fn reads_see_pending_meta_and_timers_before_flush() {
        let mut store = MemoryStore::new();
        let mut batch = StateBatch::new();
        batch
            .put_timer(1, "x")
            .put_timer(2, "y")
            .put_timer(3, "z")
            .put_meta("k", vec![1]);
        store.write(batch).unwrap();
        let mut cache = StateCache::<Rec>::new(10);
        cache.set_timer("x", Some(1), None);
        cache.set_timer("y", Some(2), Some(9));
        cache.set_timer("w", None, Some(2));
        cache.put_meta("k", vec![2]);

        assert_eq!(cache.get_meta(&store, "k").unwrap(), Some(vec![2]));
        assert_eq!(cache.get_meta(&store, "other").unwrap(), None);
        assert_eq!(
            cache.due_timers(&store, 3, usize::MAX).unwrap(),
            entries(&[(2, "w"), (3, "z")])
        );
        assert_eq!(
            cache.due_timers(&store, 9, 1).unwrap(),
            entries(&[(2, "w")])
        );
        assert_eq!(cache.due_timers(&store, 0, 5).unwrap(), entries(&[]));
    }

    #[test]
    fn absent_customer_reads_as_none_and_writes_nothing() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        assert_eq!(cache.get_mut(&store, "nobody").unwrap(), None);
        assert_eq!(cache.get(&store, "nobody").unwrap(), None);
        assert_eq!(cache.dirty_len(), 0);
        cache.flush(&mut store).unwrap();
        assert!(store.writes.is_empty());
    }

    #[test]
    fn remove_deletes_the_stored_record() {
        let mut store = MemoryStore::new();
        let mut cache = StateCache::<Rec>::new(10);
        cache.insert("a", rec(1));
        cache.flush(&mut store).unwrap();
        let mut cache = StateCache::<Rec>::new(10);
        cache.remove("a");
        assert_eq!(
            cache.get(&store, "a").unwrap(),
            None,
            "reads see the removal"
        );
        cache.flush(&mut store).unwrap();
        assert_eq!(store.get_customer("a").unwrap(), None);
    }

    #[test]
    fn mark_dirty_rewrites_a_cached_record() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::new(10);
        cache.insert("a", rec(1));
        cache.flush(&mut store).unwrap();
        assert!(cache.get(&store, "a").unwrap().is_some());
        assert_eq!(cache.dirty_len(), 0, "get does not mark dirty");
        assert!(cache.mark_dirty("a"));
        assert!(!cache.mark_dirty("not-cached"));
        assert_eq!(cache.flush(&mut store).unwrap().customers_put, 1);
    }

    #[test]
    fn an_unrecorded_cache_keeps_every_customer_and_writes_nothing() {
        let mut store = SpyStore::default();
        let mut cache = StateCache::<Rec>::unrecorded();
        for n in 0..50 {
            cache
                .get_or_insert_with(&store, &format!("c{n}"), || rec(n))
                .unwrap()
                .n += 1;
            cache.set_timer(&format!("c{n}"), None, Some(i64::from(n)));
        }
        cache.insert("x", rec(7));
        cache.remove("c0");
        cache.put_meta("input-offset", vec![1]);
        assert!(cache.is_clean(), "nothing recorded for a flush");
        assert_eq!(cache.dirty_len(), 0);
        let stats = cache.flush(&mut store).unwrap();
        assert_eq!((stats.ops(), stats.evicted), (0, 0));
        assert!(store.writes.is_empty());
        // Every change is still readable, and nothing was evicted.
        let c49 = Rec {
            n: 50,
            label: "r49".into(),
        };
        assert_eq!(cache.get(&store, "c49").unwrap(), Some(&c49));
        assert_eq!(cache.get(&store, "x").unwrap(), Some(&rec(7)));
        assert_eq!(cache.get(&store, "c0").unwrap(), None);
        assert_eq!(cache.len(), 51);
        let mut ids: Vec<&str> = cache.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids.len(), 50, "c0 was removed: {ids:?}");
        assert!(!ids.contains(&"c0") && ids.contains(&"x"));
    }

    #[test]
    fn unknown_format_version_is_an_error_naming_the_key() {
        let mut bytes = encode_value("c-7", &rec(1)).unwrap();
        bytes[0] = STATE_FORMAT_VERSION + 1;
        let err = decode_value::<Rec>("c-7", &bytes).unwrap_err();
        assert!(
            matches!(&err, StateError::UnknownFormat { key, found, supported }
                if key == "c-7" && *found == STATE_FORMAT_VERSION + 1 && *supported == STATE_FORMAT_VERSION),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"c-7\""), "{err}");

        let mut store = MemoryStore::new();
        let mut batch = StateBatch::new();
        batch.put_customer("c-7", bytes);
        store.write(batch).unwrap();
        let mut cache = StateCache::<Rec>::new(10);
        assert!(matches!(
            cache.get(&store, "c-7"),
            Err(StateError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn a_version_2_record_reads_with_the_field_version_3_added_as_none() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct V2 {
            a: u32,
            b: Vec<String>,
        }
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct V3 {
            a: u32,
            b: Vec<String>,
            c: Option<String>,
        }
        let mut bytes = encode_value(
            "c-1",
            &V2 {
                a: 7,
                b: vec!["x".into()],
            },
        )
        .unwrap();
        bytes[0] = 2;
        let read: V3 = decode_value("c-1", &bytes).unwrap();
        assert_eq!(
            read,
            V3 {
                a: 7,
                b: vec!["x".into()],
                c: None
            }
        );
        // A version 3 record keeps its value.
        let v3 = V3 {
            a: 1,
            b: vec![],
            c: Some("y".into()),
        };
        assert_eq!(
            decode_value::<V3>("c-1", &encode_value("c-1", &v3).unwrap()).unwrap(),
            v3
        );
    }

    #[test]
    fn malformed_records_are_decode_errors() {
        assert!(matches!(
            decode_value::<Rec>("a", &[]),
            Err(StateError::Decode { .. })
        ));
        let mut bytes = encode_value("a", &rec(1)).unwrap();
        bytes.push(0);
        let err = decode_value::<Rec>("a", &bytes).unwrap_err();
        assert!(err.to_string().contains("left over"), "{err}");
        assert!(matches!(
            decode_value::<Rec>("a", &[STATE_FORMAT_VERSION, 0xff]),
            Err(StateError::Decode { .. })
        ));
        assert_eq!(
            decode_value::<Rec>("a", &encode_value("a", &rec(5)).unwrap()).unwrap(),
            rec(5)
        );
    }

    /// A random operation through the cache.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Add(u8, u32),
        GetOrInsert(u8, u32),
        Get(u8),
        SetTimer(u8, Option<i64>, Option<i64>),
        PutMeta(u8, u8),
        DueTimers(i64, usize),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0_u8..5;
        let due = prop::option::of(-3_i64..3);
        prop_oneof![
            (id.clone(), any::<u32>()).prop_map(|(i, v)| Op::Insert(i, v)),
            id.clone().prop_map(Op::Remove),
            (id.clone(), any::<u32>()).prop_map(|(i, v)| Op::Add(i, v)),
            (id.clone(), any::<u32>()).prop_map(|(i, v)| Op::GetOrInsert(i, v)),
            id.clone().prop_map(Op::Get),
            (id, due.clone(), due).prop_map(|(i, o, n)| Op::SetTimer(i, o, n)),
            (0_u8..3, any::<u8>()).prop_map(|(k, v)| Op::PutMeta(k, v)),
            (-4_i64..4, 0_usize..4).prop_map(|(u, l)| Op::DueTimers(u, l)),
            Just(Op::Flush),
        ]
    }

    /// The value of `id` read straight from `store`.
    fn direct_get(store: &MemoryStore, id: &str) -> Option<u32> {
        store
            .get_customer(id)
            .unwrap()
            .map(|b| decode_value::<u32>(id, &b).unwrap())
    }

    /// Writes `v` as the value of `id` straight to `store`, in a batch of its own.
    fn direct_put(store: &mut MemoryStore, id: &str, v: u32) {
        let mut batch = StateBatch::new();
        batch.put_customer(id, encode_value(id, &v).unwrap());
        store.write(batch).unwrap();
    }

    proptest! {
        #[test]
        fn cache_with_random_flushes_matches_direct_writes(
            ops in prop::collection::vec(op(), 0..64),
            capacity in 0_usize..5,
        ) {
            let mut cached = MemoryStore::new();
            let mut direct = MemoryStore::new();
            let mut cache = StateCache::<u32>::new(capacity);
            let mut meta_keys = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(i, v) => {
                        let id = format!("c{i}");
                        cache.insert(&id, v);
                        direct_put(&mut direct, &id, v);
                    }
                    Op::Remove(i) => {
                        let id = format!("c{i}");
                        cache.remove(&id);
                        let mut batch = StateBatch::new();
                        batch.delete_customer(&id);
                        direct.write(batch).unwrap();
                    }
                    Op::Add(i, d) => {
                        let id = format!("c{i}");
                        if let Some(v) = cache.get_mut(&cached, &id).unwrap() {
                            *v = v.wrapping_add(d);
                        }
                        if let Some(v) = direct_get(&direct, &id) {
                            direct_put(&mut direct, &id, v.wrapping_add(d));
                        }
                    }
                    Op::GetOrInsert(i, v) => {
                        let id = format!("c{i}");
                        let got = cache.get_or_insert_with(&cached, &id, || v).unwrap();
                        *got = got.wrapping_add(1);
                        let old = direct_get(&direct, &id).unwrap_or(v);
                        direct_put(&mut direct, &id, old.wrapping_add(1));
                    }
                    Op::Get(i) => {
                        let id = format!("c{i}");
                        prop_assert_eq!(cache.get(&cached, &id).unwrap().copied(), direct_get(&direct, &id));
                    }
                    Op::SetTimer(i, old, new) => {
                        // As the runtime moves a timer: the old entry is in the index, the
                        // new one is not (unless it is the old one).
                        let id = format!("c{i}");
                        let old = old.filter(|&due| has_timer(&direct, due, &id));
                        let new = new.filter(|&due| Some(due) == old || !has_timer(&direct, due, &id));
                        cache.set_timer(&id, old, new);
                        let mut batch = StateBatch::new();
                        if let Some(due) = old {
                            batch.delete_timer(due, &id);
                        }
                        if let Some(due) = new {
                            batch.put_timer(due, &id);
                        }
                        direct.write(batch).unwrap();
                    }
                    Op::PutMeta(k, v) => {
                        let key = format!("m{k}");
                        cache.put_meta(&key, vec![v]);
                        meta_keys.insert(key.clone());
                        let mut batch = StateBatch::new();
                        batch.put_meta(&key, vec![v]);
                        direct.write(batch).unwrap();
                    }
                    Op::DueTimers(upto, limit) => {
                        prop_assert_eq!(
                            cache.due_timers(&cached, upto, limit).unwrap(),
                            direct.due_timers(upto, limit).unwrap()
                        );
                        for key in &meta_keys {
                            prop_assert_eq!(
                                cache.get_meta(&cached, key).unwrap(),
                                direct.get_meta(key).unwrap()
                            );
                        }
                    }
                    Op::Flush => {
                        // Every timer change in the batch changes the store.
                        for op in cache.prepare().unwrap().batch.ops() {
                            match op {
                                BatchOp::PutTimer { due, id } => {
                                    prop_assert!(!has_timer(&cached, *due, id), "{op:?}")
                                }
                                BatchOp::DeleteTimer { due, id } => {
                                    prop_assert!(has_timer(&cached, *due, id), "{op:?}")
                                }
                                _ => {}
                            }
                        }
                        cache.flush(&mut cached).unwrap();
                        prop_assert!(cache.len() <= capacity);
                    }
                }
            }
            cache.flush(&mut cached).unwrap();
            prop_assert_eq!(cached, direct);
        }
    }
}
