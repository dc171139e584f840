//! Handling the records read in one go on several engine threads.
//!
//! A customer lives in one partition, and a partition's runtime touches nothing else, so the
//! records of different partitions can be applied at the same time. The poll loop reads what
//! has arrived (up to [`GATHER_MAX`] records), gives each partition's records to one engine
//! thread — decoding, validating and the engine step — and settles what came back on its own
//! thread, in the order the records were read: counting them, dead letters, late copies,
//! forwards and outputs go into the open transaction from that one thread, as before. Each
//! partition's state and outputs are what handling its records one by one gives; only how
//! different partitions' outputs interleave may differ, and those are different customers.
//! A commit encodes each partition's changed customers on the same threads ([`on_threads`]).

use rdkafka::message::{BorrowedMessage, Message};

use super::{Partition, PipelineError, is_forward};
use crate::codec::InputDecoder;
use crate::engine::Applied;
use crate::model::{CustomerEvent, Millis, Output, now_millis};
use crate::runtime::{ALIAS_EVENT_TYPE, Forward, Forwarded, Rejection, validate};

/// Records read in one go at most: enough that handing them to the engine threads costs
/// little beside their work, few enough that the next poll comes soon.
pub(super) const GATHER_MAX: usize = 2048;

/// Fewer records than this are handled on the calling thread alone: another thread would cost
/// more to start than it saves.
const PARALLEL_MIN: usize = 64;

/// What an engine thread made of one input record.
pub(super) enum Worked {
    /// The schema registry could not be asked about the record's schema: the record and the
    /// partition's records after it are left to be read again (see `PipelineError::Registry`).
    Retry(String),
    /// Refused before it reached the engine; it is dead-lettered. `event`: a customer event
    /// (not a forward record), counted with the events rejected.
    Rejected { why: Rejection, event: bool },
    /// Applied to the partition's state.
    Applied(Effect),
}

/// What applying one record did.
pub(super) struct Effect {
    pub record: Source,
    pub applied: Applied,
    /// The partition's watermark before the record.
    pub watermark: Millis,
    /// How many outputs it made (the next ones of [`Worked`]'s partition, in order).
    pub outputs: usize,
    /// Records it made for other customers (identity merges).
    pub forwards: Vec<Forward>,
}

/// The record an [`Effect`] came from.
pub(super) enum Source {
    Event(CustomerEvent),
    Forward(Forward),
}

impl Source {
    /// The event type it is counted under.
    pub fn event_type(&self) -> &str {
        match self {
            Source::Event(ev) => &ev.event_type,
            Source::Forward(f) => match &f.record {
                Forwarded::Event(ev) => &ev.event_type,
                Forwarded::Merge { .. } => ALIAS_EVENT_TYPE,
            },
        }
    }
}

/// One partition's share of the records read: what each did, and their outputs in order.
pub(super) struct Done {
    pub results: std::vec::IntoIter<Worked>,
    pub outputs: std::vec::IntoIter<Output>,
}

/// What every engine thread reads.
pub(super) struct Shared<'a> {
    pub input: &'a InputDecoder,
    pub max_future_skew: Millis,
}

/// Applies `records` (all of `part`, in the order read) to the partition. Stops after a
/// record whose schema could not be looked up ([`Worked::Retry`]).
pub(super) fn work(
    partition: i32,
    part: &mut Partition,
    records: &[&BorrowedMessage<'_>],
    shared: &Shared<'_>,
) -> Result<Done, PipelineError> {
    let mut results = Vec::with_capacity(records.len());
    let mut outputs = Vec::new();
    for msg in records {
        let worked = if is_forward(*msg) {
            forward(part, msg, &mut outputs)
        } else {
            event(part, msg, shared, &mut outputs)
        }
        .map_err(PipelineError::state(partition, &part.path))?;
        let retry = matches!(worked, Worked::Retry(_));
        results.push(worked);
        if retry {
            break;
        }
    }
    Ok(Done {
        results: results.into_iter(),
        outputs: outputs.into_iter(),
    })
}

/// A customer event: decoded, validated and applied.
fn event(
    part: &mut Partition,
    msg: &BorrowedMessage<'_>,
    shared: &Shared<'_>,
    out: &mut Vec<Output>,
) -> Result<Worked, crate::state::StateError> {
    let ev = match shared.input.decode(msg.payload().unwrap_or_default()) {
        // The record may be fine: the pipeline restarts and reads it again.
        Err(e) if e.is_retryable() => return Ok(Worked::Retry(e.to_string())),
        Err(e) => {
            let why = Rejection::Undecodable(format!("{}: {e}", e.kind()));
            return Ok(Worked::Rejected { why, event: true });
        }
        Ok(ev) => ev,
    };
    if let Err(why) = validate(&ev, msg.key(), Some(now_millis()), shared.max_future_skew) {
        return Ok(Worked::Rejected { why, event: true });
    }
    let watermark = part.runtime.watermark();
    let before = out.len();
    let applied = part.runtime.on_event(&ev, out)?;
    Ok(Worked::Applied(Effect {
        record: Source::Event(ev),
        applied,
        watermark,
        outputs: out.len() - before,
        forwards: part.runtime.take_forwards(),
    }))
}

/// A record Waymark wrote for an identity merge: applied to its customer.
fn forward(
    part: &mut Partition,
    msg: &BorrowedMessage<'_>,
    out: &mut Vec<Output>,
) -> Result<Worked, crate::state::StateError> {
    let f = match Forward::from_json(msg.payload().unwrap_or_default()) {
        Ok(f) if msg.key() == Some(f.to.as_bytes()) => f,
        Ok(f) => {
            let why = Rejection::KeyMismatch {
                key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
                customer_id: f.to,
            };
            return Ok(Worked::Rejected { why, event: false });
        }
        Err(e) => {
            let why = Rejection::Undecodable(e);
            return Ok(Worked::Rejected { why, event: false });
        }
    };
    let watermark = part.runtime.watermark();
    let before = out.len();
    let applied = part.runtime.on_forwarded(&f, out)?;
    Ok(Worked::Applied(Effect {
        record: Source::Forward(f),
        applied,
        watermark,
        outputs: out.len() - before,
        forwards: part.runtime.take_forwards(),
    }))
}

/// Runs `f` on every job, spread over at most `threads` threads (the calling thread is one of
/// them), and returns the results in the jobs' order. A job's `weight` (its records, say)
/// balances the threads: the heaviest jobs are placed first, each on the least loaded thread.
pub(super) fn on_threads<J: Send, R: Send>(
    jobs: Vec<(usize, J)>,
    threads: usize,
    f: impl Fn(J) -> R + Sync,
) -> Result<Vec<R>, PipelineError> {
    let total: usize = jobs.iter().map(|(w, _)| w).sum();
    let threads = if total < PARALLEL_MIN {
        1
    } else {
        threads.clamp(1, jobs.len().max(1))
    };
    let count = jobs.len();
    if threads == 1 {
        return Ok(jobs.into_iter().map(|(_, job)| f(job)).collect());
    }
    let mut order: Vec<(usize, usize, J)> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, (w, job))| (w, i, job))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut groups: Vec<(usize, Vec<(usize, J)>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for (w, i, job) in order {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one thread");
        lightest.0 += w;
        lightest.1.push((i, job));
    }
    let run = |group: Vec<(usize, J)>| -> Vec<(usize, R)> {
        group.into_iter().map(|(i, job)| (i, f(job))).collect()
    };
    let mut groups = groups.into_iter().map(|(_, g)| g).filter(|g| !g.is_empty());
    let mine = groups.next().unwrap_or_default();
    let done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads - 1);
        for group in groups {
            let handle = std::thread::Builder::new()
                .name("waymark-engine".into())
                .spawn_scoped(scope, || run(group))
                .map_err(|e| {
                    PipelineError::Setup(format!(
                        "cannot start an engine thread: {e}; raise the process's thread or \
                         memory limits, or set engine-threads: 1"
                    ))
                })?;
            handles.push(handle);
        }
        let mut done = run(mine);
        for handle in handles {
            done.extend(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        Ok::<_, PipelineError>(done)
    })?;
    let mut slots: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for (i, r) in done {
        slots[i] = Some(r);
    }
    Ok(slots
        .into_iter()
        .map(|r| r.expect("every job ran once"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_once_each_and_results_keep_the_jobs_order_on_any_number_of_threads() {
        for threads in 1..=4 {
            let jobs: Vec<(usize, usize)> = (0..7).map(|i| (100 * (i % 3), i)).collect();
            let seen = std::sync::Mutex::new(Vec::new());
            let results = on_threads(jobs, threads, |i| {
                seen.lock().unwrap().push((i, std::thread::current().id()));
                i * 10
            })
            .unwrap();
            assert_eq!(results, (0..7).map(|i| i * 10).collect::<Vec<_>>());
            let seen = seen.into_inner().unwrap();
            let mut ran: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
            ran.sort();
            assert_eq!(ran, (0..7).collect::<Vec<_>>(), "{threads} threads");
            let used: std::collections::HashSet<_> = seen.iter().map(|(_, t)| *t).collect();
            assert_eq!(used.len(), threads.min(7), "{threads} threads used");
        }
    }

    #[test]
    fn few_records_are_handled_on_the_calling_thread() {
        let me = std::thread::current().id();
        let jobs = vec![(PARALLEL_MIN / 2 - 1, ()), (PARALLEL_MIN / 2 - 1, ())];
        let threads = on_threads(jobs, 2, |()| std::thread::current().id()).unwrap();
        assert_eq!(threads, vec![me, me]);
    }

    #[test]
    fn the_heaviest_jobs_go_to_different_threads() {
        let jobs = vec![(1000, 0), (10, 1), (1000, 2), (10, 3)];
        let threads = on_threads(jobs, 2, |_| std::thread::current().id()).unwrap();
        assert_ne!(threads[0], threads[2]);
        assert_ne!(threads[1], threads[3]);
    }
}
