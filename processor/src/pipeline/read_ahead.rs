//! Reading customers' state ahead of their records and wake-ups, on a second thread.
//!
//! The poll loop takes the records already fetched (up to `read-ahead-records`) at once. The
//! customers it will need that its caches lack are read from their partition's store and
//! decoded here while the pipeline thread handles the records before them: the customers of
//! the records after the first, and those of the wake-ups the take is expected to let through.
//! So the pipeline thread no longer waits on RocksDB reads and decoding for most of them.
//!
//! Owns the thread and the order of its replies. It must not decide which customers to read
//! or whether a read is still current when it arrives: the pipeline asks only for customers
//! its caches lack, and a reply is cached (`PartitionRuntime::preload`) only if the customer
//! is still not cached, nothing was evicted and the partition was not repositioned since the
//! request, so what it caches is what a read when it is needed would have found.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;

use compact_str::CompactString;

use crate::engine::CustomerState;
use crate::state::{StoreReader, decode_stored};

/// A customer to read ahead, and where its state goes.
pub(super) struct Target {
    /// Its partition.
    pub partition: i32,
    /// Its id.
    pub customer: CompactString,
    /// What `PartitionRuntime::uncached` said when it was asked for.
    pub ticket: u64,
    /// The record of the take (its index) before which it is cached: its own record's, or
    /// the one around which its wake-up is expected.
    pub before: usize,
}

/// Customers to read: readers of the partitions involved, and `(reader, customer)` in the
/// order their states are taken.
struct Request {
    readers: Vec<Box<dyn StoreReader>>,
    customers: Vec<(usize, CompactString)>,
}

/// What the thread sends back for a request: one `Read` per customer in order, then `Done`.
/// All but one reply per request are a `Read`, so boxing its state would only add an
/// allocation per customer read.
#[allow(clippy::large_enum_variant)]
enum Reply {
    /// `Some(state)` (`None`: nothing stored), or `None` if the record could not be read or
    /// decoded: the pipeline then reads it itself, which reports the error with its context.
    Read(Option<Option<CustomerState>>),
    /// The request is answered and its readers are dropped.
    Done,
}

/// The read-ahead thread and the request it is answering, if any.
pub(super) struct ReadAhead {
    requests: Option<mpsc::Sender<Request>>,
    replies: mpsc::Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    /// The targets of the open request whose states were not taken yet.
    targets: VecDeque<Target>,
    /// A request is open (its `Done` not taken yet).
    open: bool,
}

impl ReadAhead {
    /// Starts the thread.
    pub(super) fn start() -> std::io::Result<ReadAhead> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (answer, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("waymark-read-ahead".into())
            .spawn(move || serve(&incoming, &answer))?;
        Ok(ReadAhead {
            requests: Some(requests),
            replies,
            thread: Some(thread),
            targets: VecDeque::new(),
            open: false,
        })
    }

    /// Starts reading `targets` (each with its index into `readers`), ordered by
    /// [`Target::before`]; ends the open request first. Returns `false` if the thread is gone
    /// (it panicked): nothing is read ahead from then on, and every customer is read when its
    /// record or wake-up comes.
    pub(super) fn request(
        &mut self,
        readers: Vec<Box<dyn StoreReader>>,
        targets: Vec<(usize, Target)>,
    ) -> bool {
        self.finish();
        debug_assert!(targets.is_sorted_by_key(|(_, t)| t.before));
        let customers = targets
            .iter()
            .map(|(reader, t)| (*reader, t.customer.clone()))
            .collect();
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(Request { readers, customers }).is_ok());
        if sent {
            self.targets = targets.into_iter().map(|(_, t)| t).collect();
            self.open = true;
        } else if self.requests.take().is_some() {
            tracing::warn!(
                "The read-ahead thread stopped; customers are read as their records come."
            );
        }
        sent
    }

    /// Takes the states of every target to be cached before record `record` of the take
    /// (waiting for them) and gives each one read to `install`; a target that could not be
    /// read is left to be read when it is needed.
    pub(super) fn take_through(
        &mut self,
        record: usize,
        mut install: impl FnMut(Target, Option<CustomerState>),
    ) {
        while self.targets.front().is_some_and(|t| t.before <= record) {
            let Some(target) = self.targets.pop_front() else {
                break;
            };
            match self.replies.recv() {
                Ok(Reply::Read(Some(state))) => install(target, state),
                Ok(Reply::Read(None)) => {}
                Ok(Reply::Done) | Err(_) => {
                    // Out of step (the thread died mid-request): nothing more comes for it.
                    self.targets.clear();
                    self.open = false;
                }
            }
        }
    }

    /// Ends the open request, if any: drops the states not taken and waits until the thread
    /// dropped its readers, so every partition database is closed when its store is (a revoked
    /// or rewound partition opens its directory again).
    pub(super) fn finish(&mut self) {
        self.targets.clear();
        if !std::mem::take(&mut self.open) {
            return;
        }
        while let Ok(reply) = self.replies.recv() {
            if matches!(reply, Reply::Done) {
                break;
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing the request channel ends the thread once it answered what it has.
        self.requests.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("The read-ahead thread had panicked.");
        }
    }
}

/// The thread: answers requests until the pipeline drops its side.
fn serve(requests: &mpsc::Receiver<Request>, replies: &mpsc::Sender<Reply>) {
    while let Ok(Request { readers, customers }) = requests.recv() {
        for (reader, id) in &customers {
            let state = readers[*reader]
                .get_customer(id)
                .and_then(|stored| decode_stored(id, stored))
                .ok();
            if replies.send(Reply::Read(state)).is_err() {
                return;
            }
        }
        drop(readers);
        if replies.send(Reply::Done).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Millis;
    use crate::state::{
        MemoryStore, RocksOptions, RocksStore, StateBatch, StateStore, encode_value,
    };

    fn store_with(dir: &std::path::Path, customers: &[(&str, &CustomerState)]) -> RocksStore {
        let mut store = RocksStore::open(dir, &RocksOptions::default()).expect("open");
        let mut batch = StateBatch::new();
        for (id, state) in customers {
            batch.put_customer(id, encode_value(id, state).expect("encode"));
        }
        store.write(batch).expect("write");
        store
    }

    fn state(due: Millis) -> CustomerState {
        CustomerState {
            next_due: Some(due),
            ..CustomerState::default()
        }
    }

    fn target(reader: usize, customer: &str, before: usize) -> (usize, Target) {
        let target = Target {
            partition: reader as i32,
            customer: customer.into(),
            ticket: 0,
            before,
        };
        (reader, target)
    }

    /// Takes through `record`: the `(customer, next due)` of every target read.
    fn take(ahead: &mut ReadAhead, record: usize) -> Vec<(String, Option<Millis>)> {
        let mut read = Vec::new();
        ahead.take_through(record, |t, state| {
            read.push((t.customer.to_string(), state.and_then(|s| s.next_due)))
        });
        read
    }

    #[test]
    fn customers_come_back_decoded_by_the_record_they_are_needed_before() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = store_with(a.path(), &[("c-1", &state(1)), ("c-2", &state(2))]);
        let two = store_with(b.path(), &[("c-3", &state(3))]);
        let mut ahead = ReadAhead::start().unwrap();
        let readers = vec![one.reader().unwrap(), two.reader().unwrap()];
        let targets = vec![
            target(1, "c-3", 1),
            target(0, "c-1", 1),
            target(0, "missing", 2),
            target(0, "c-2", 4),
        ];
        assert!(ahead.request(readers, targets));
        assert!(
            take(&mut ahead, 0).is_empty(),
            "nothing is due before record 0"
        );
        assert_eq!(
            take(&mut ahead, 1),
            [("c-3".to_owned(), Some(3)), ("c-1".to_owned(), Some(1))]
        );
        assert_eq!(
            take(&mut ahead, 3),
            [("missing".to_owned(), None)],
            "a customer never stored is known to have no record"
        );
        assert_eq!(take(&mut ahead, 9), [("c-2".to_owned(), Some(2))]);
        assert!(take(&mut ahead, 10).is_empty(), "nothing past the request");
        ahead.finish();
    }

    #[test]
    fn a_record_that_does_not_decode_is_left_to_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(dir.path(), &[("good", &state(7))]);
        let mut batch = StateBatch::new();
        batch.put_customer("bad", vec![0xff, 1, 2]);
        store.write(batch).unwrap();
        let mut ahead = ReadAhead::start().unwrap();
        let targets = vec![target(0, "bad", 1), target(0, "good", 1)];
        assert!(ahead.request(vec![store.reader().unwrap()], targets));
        assert_eq!(
            take(&mut ahead, 1),
            [("good".to_owned(), Some(7))],
            "an unknown format version is not guessed at"
        );
    }

    #[test]
    fn finishing_a_request_closes_its_databases_so_they_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &[("c-1", &state(1))]);
        let mut ahead = ReadAhead::start().unwrap();
        let targets = vec![
            target(0, "c-1", 1),
            target(0, "c-2", 2),
            target(0, "c-3", 3),
        ];
        assert!(ahead.request(vec![store.reader().unwrap()], targets));
        // Only the first state taken: the rest are dropped by `finish`.
        assert_eq!(take(&mut ahead, 1).len(), 1);
        ahead.finish();
        assert!(take(&mut ahead, 3).is_empty(), "the request is over");
        drop(store);
        let reopened = RocksStore::open(dir.path(), &RocksOptions::default());
        assert!(
            reopened.is_ok(),
            "the reader still held the database: {:?}",
            reopened.err()
        );
        // A store without a reader (in memory) is never read ahead.
        assert!(MemoryStore::new().reader().is_none());
    }
}
