//! Reading customers' state ahead of their records, on a second thread.
//!
//! The poll loop takes the records already fetched (up to `read-ahead-records`) at once. Of
//! those after the first, the customers not cached are read from their partition's store and
//! decoded here while the pipeline thread handles the records before them, so the pipeline
//! thread no longer waits on RocksDB reads and decoding for most of the customers it touches.
//!
//! Owns the thread and the order of its replies. It must not decide which customers to read
//! or whether a read is still current when it arrives: the pipeline asks only for customers
//! its caches lack, and a reply is cached (`PartitionRuntime::preload`) only if the customer
//! is still not cached and nothing was evicted since the request, so what it caches is what a
//! read at the record would have found.

use std::sync::mpsc;
use std::thread::JoinHandle;

use compact_str::CompactString;

use crate::engine::CustomerState;
use crate::state::{StoreReader, decode_value};

/// Customers to read: readers of the partitions involved, and `(reader, customer)` in the
/// order their records will be handled.
struct Request {
    readers: Vec<Box<dyn StoreReader>>,
    customers: Vec<(usize, CompactString)>,
}

/// What the thread sends back for a request: one `Read` per customer in order, then `Done`.
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
    /// Replies of the open request not yet taken (`None`: no request is open).
    pending: Option<usize>,
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
            pending: None,
        })
    }

    /// Starts reading `customers` (`(index into readers, id)`, in the order they will be taken
    /// with [`ReadAhead::next`]). Returns `false` if the thread is gone (it panicked): nothing
    /// will be read ahead, and the caller reads every customer itself.
    pub(super) fn request(
        &mut self,
        readers: Vec<Box<dyn StoreReader>>,
        customers: Vec<(usize, CompactString)>,
    ) -> bool {
        self.finish();
        let count = customers.len();
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send(Request { readers, customers }).is_ok());
        if sent {
            self.pending = Some(count);
        } else if self.requests.take().is_some() {
            tracing::warn!(
                "The read-ahead thread stopped; customers are read as their records come."
            );
        }
        sent
    }

    /// The next customer of the open request, read and decoded (waits for it): `None` if it
    /// could not be, or if no customer of the request is left.
    pub(super) fn next(&mut self) -> Option<Option<CustomerState>> {
        let pending = self.pending.as_mut().filter(|n| **n > 0)?;
        *pending -= 1;
        match self.replies.recv() {
            Ok(Reply::Read(state)) => state,
            Ok(Reply::Done) | Err(_) => {
                // Out of step (the thread died mid-request): nothing more comes for it.
                self.pending = None;
                None
            }
        }
    }

    /// Ends the open request, if any: drops the replies not taken and waits until the thread
    /// dropped its readers, so every partition database is closed when its store is (a revoked
    /// or rewound partition opens its directory again).
    pub(super) fn finish(&mut self) {
        if self.pending.take().is_none() {
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
            let state = match readers[*reader].get_customer(id) {
                Ok(Some(bytes)) => decode_value(id, &bytes).ok().map(Some),
                Ok(None) => Some(None),
                Err(_) => None,
            };
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

    fn state(due: crate::model::Millis) -> CustomerState {
        CustomerState {
            next_due: Some(due),
            ..CustomerState::default()
        }
    }

    #[test]
    fn customers_come_back_decoded_in_request_order_across_partitions() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = store_with(a.path(), &[("c-1", &state(1)), ("c-2", &state(2))]);
        let two = store_with(b.path(), &[("c-3", &state(3))]);
        let mut ahead = ReadAhead::start().unwrap();
        let readers = vec![one.reader().unwrap(), two.reader().unwrap()];
        let customers = [(1, "c-3"), (0, "c-1"), (0, "missing"), (0, "c-2")]
            .map(|(r, id)| (r, CompactString::from(id)))
            .to_vec();
        assert!(ahead.request(readers, customers));
        let due = |s: Option<Option<CustomerState>>| s.map(|s| s.map(|s| s.next_due));
        assert_eq!(due(ahead.next()), Some(Some(Some(3))));
        assert_eq!(due(ahead.next()), Some(Some(Some(1))));
        assert_eq!(due(ahead.next()), Some(None), "a customer never stored");
        assert_eq!(due(ahead.next()), Some(Some(Some(2))));
        assert!(ahead.next().is_none(), "nothing past the request");
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
        let customers = ["bad", "good"]
            .map(|id| (0, CompactString::from(id)))
            .to_vec();
        assert!(ahead.request(vec![store.reader().unwrap()], customers));
        assert!(
            ahead.next().is_none(),
            "an unknown format version is not guessed at"
        );
        assert_eq!(
            ahead.next().map(|s| s.map(|s| s.next_due)),
            Some(Some(Some(7)))
        );
    }

    #[test]
    fn finishing_a_request_closes_its_databases_so_they_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &[("c-1", &state(1))]);
        let mut ahead = ReadAhead::start().unwrap();
        let customers = ["c-1", "c-2", "c-3"]
            .map(|id| (0, CompactString::from(id)))
            .to_vec();
        assert!(ahead.request(vec![store.reader().unwrap()], customers));
        // Only one reply taken: the rest are dropped by `finish`.
        assert!(ahead.next().is_some());
        ahead.finish();
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
