//! `simulate` on several engine threads: customers split between runtimes by id, one runtime
//! per thread, and every output merged back into the order one runtime gives.
//!
//! Owns the split and the merge; must not change a byte of the output. Customers are
//! independent except through time: the watermark is one for the whole file, and when it
//! moves, every customer due is woken, earliest first (ties: by customer id). So the calling
//! thread computes the watermark after every line (the rule of [`watermark_let_through`]) and
//! hands every chunk of lines to every shard; a shard applies its own customers' events and,
//! on the other lines, moves its watermark as the line did and wakes its own customers due.
//! Each shard tags its outputs by line, then the event's own outputs before the customers
//! woken, these by due time and customer id; the merge takes the smallest tag of all shards.
//!
//! After the last line the shards fire what is due by `--until` the same way, each in slices,
//! merged as they come.
//!
//! Identity merges (`identity.alias`) hand records from one customer to another, possibly in
//! another shard: at the first one, the shards are drained and their runtimes joined into
//! one, which goes on alone from that line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use compact_str::CompactString;

use super::{FIRE_SLICE, Line, Progress, Reached, SimulateError, SimulateOptions, SimulateReport};
use crate::engine::{Applied, Engine};
use crate::model::{Millis, Output};
use crate::runtime::ALIAS_EVENT_TYPE;
use crate::runtime::{PartitionRuntime, RuntimeStats, watermark_let_through};
use crate::state::StateError;

/// Chunks of lines handed to the shards and not merged back yet: enough to keep every shard
/// busy while the calling thread merges, few enough to bound the outputs held (each chunk is
/// 1,024 lines).
const IN_FLIGHT: usize = 4;

/// What the calling thread hands every shard.
enum Job {
    /// A chunk of lines.
    Lines(Arc<Work>),
    /// After the last line: fire everything due by this time (`--until`).
    Until(Millis),
}

/// A chunk of lines with, per line, the shard whose customer it is and the watermark after it.
struct Work {
    lines: Vec<Line>,
    routes: Vec<Route>,
}

#[derive(Clone, Copy)]
struct Route {
    /// The shard of the line's customer (none for a refused line).
    shard: Option<usize>,
    /// The run's watermark once the line is handled.
    watermark: Millis,
}

/// Where a group of outputs goes in the merged order: by line, then the line's event (phase
/// 0) before the customers its time woke (phase 1), these by due time and customer id (the
/// order of [`PartitionRuntime::fire_due`]).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tag {
    line: usize,
    phase: u8,
    due: Millis,
    customer: CompactString,
}

/// What a shard made of a chunk: its outputs in order, cut into tagged groups.
#[derive(Default)]
struct Done {
    outputs: Vec<Output>,
    /// `(tag, number of outputs)`, in tag order, covering `outputs` from the start.
    groups: Vec<(Tag, usize)>,
    /// Events the engine refused: line number and why.
    refused: Vec<(u64, String)>,
    pending_timers: usize,
    watermark: Millis,
    /// Customers woken (while firing what is due by `--until`); 0 in the last part.
    woken: usize,
}

/// One shard as the calling thread sees it.
struct Shard {
    work: SyncSender<Job>,
    done: Receiver<Result<Done, StateError>>,
    thread: std::thread::JoinHandle<Option<PartitionRuntime>>,
}

/// The shard of a customer: FNV-1a of the id (the same on every machine, though only the
/// speed depends on it).
fn shard_of(customer: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in customer.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// How a run on shards ended.
pub(super) enum Ran {
    /// Every line and `--until` handled: the shards' counters added up, and the watermark.
    Done {
        stats: RuntimeStats,
        watermark: Millis,
    },
    /// At an identity merge: the shards' runtimes joined into one, to go on with from these
    /// lines (and the chunks not read yet). Also what one runtime hands to `--until`.
    Continue(Box<PartitionRuntime>, Vec<Line>),
}

/// Runs `chunks` on `opts.threads` shards, handing every output to `on_output` in order and
/// counting lines and refusals in `report`, up to the end of the input and `--until`, or up
/// to the first identity merge (see [`Ran`]).
pub(super) fn run(
    engine: &Arc<Engine>,
    opts: &SimulateOptions,
    chunks: &mut impl Iterator<Item = std::io::Result<Vec<Line>>>,
    report: &mut SimulateReport,
    progress: &mut Progress,
    on_output: &mut impl FnMut(Output) -> Result<(), SimulateError>,
) -> Result<Ran, SimulateError> {
    let count = opts.threads;
    let mut shards = Vec::with_capacity(count);
    for me in 0..count {
        let (work, work_rx) = sync_channel(IN_FLIGHT);
        let (done_tx, done) = sync_channel(IN_FLIGHT);
        let (engine, lateness) = (engine.clone(), opts.allowed_lateness);
        let thread = std::thread::Builder::new()
            .name(format!("waymark-simulate-{me}"))
            .spawn(move || shard(engine, lateness, me, work_rx, done_tx))?;
        shards.push(Shard { work, done, thread });
    }
    let mut merge = Merge {
        report,
        progress,
        on_output,
        outputs: 0,
    };
    let mut watermark = Millis::MIN;
    let mut in_flight = VecDeque::new();
    let mut rest = Vec::new();
    for chunk in chunks.by_ref() {
        let mut lines = chunk?;
        let alias = lines
            .iter()
            .position(|l| matches!(l, Line::Event(_, ev) if ev.event_type == ALIAS_EVENT_TYPE));
        if let Some(at) = alias {
            rest = lines.split_off(at);
        }
        if !lines.is_empty() {
            let routes = lines
                .iter()
                .map(|line| match line {
                    Line::Event(_, ev) => {
                        if let Some(w) = watermark_let_through(ev, opts.allowed_lateness) {
                            watermark = watermark.max(w);
                        }
                        Route {
                            shard: Some(shard_of(&ev.customer_id, count)),
                            watermark,
                        }
                    }
                    Line::Refused(..) => Route {
                        shard: None,
                        watermark,
                    },
                })
                .collect();
            let work = Arc::new(Work { lines, routes });
            for s in &shards {
                s.work
                    .send(Job::Lines(work.clone()))
                    .map_err(|_| why_stopped(&s.done))?;
            }
            in_flight.push_back(work);
            if in_flight.len() == IN_FLIGHT {
                merge.oldest(&mut in_flight, &shards)?;
            }
        }
        if alias.is_some() {
            break;
        }
    }
    while !in_flight.is_empty() {
        merge.oldest(&mut in_flight, &shards)?;
    }
    let whole = rest.is_empty();
    if whole && let Some(until) = opts.until {
        for s in &shards {
            s.work
                .send(Job::Until(until))
                .map_err(|_| why_stopped(&s.done))?;
        }
        merge.firing(&shards)?;
    }
    let mut runtimes = Vec::with_capacity(shards.len());
    for Shard { work, done, thread } in shards {
        drop(work);
        let runtime = thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .ok_or_else(|| why_stopped(&done))?;
        runtimes.push(runtime);
    }
    if whole {
        let mut stats = RuntimeStats::default();
        let mut watermark = Millis::MIN;
        for runtime in runtimes {
            stats.add(&runtime.stats());
            watermark = watermark.max(runtime.watermark());
            // As in one runtime: the states are left to the process exit.
            std::mem::forget(runtime);
        }
        return Ok(Ran::Done { stats, watermark });
    }
    let mut runtimes = runtimes.into_iter();
    let mut joined = runtimes.next().ok_or_else(stopped)?;
    for runtime in runtimes {
        joined.absorb(runtime);
    }
    Ok(Ran::Continue(Box::new(joined), rest))
}

/// Why a shard stopped taking work: the error it sent and the calling thread did not take
/// yet (behind the parts it sent before), else [`stopped`].
fn why_stopped(done: &Receiver<Result<Done, StateError>>) -> SimulateError {
    done.try_iter()
        .find_map(Result::err)
        .map_or_else(stopped, SimulateError::from)
}

/// A shard stopped without saying why (its error was reported already, or it panicked).
fn stopped() -> SimulateError {
    SimulateError::Io(std::io::Error::other(
        "an engine thread of simulate stopped",
    ))
}

/// The calling thread's side: merges what the shards made of each chunk, in chunk order.
struct Merge<'a, F> {
    report: &'a mut SimulateReport,
    progress: &'a mut Progress,
    on_output: &'a mut F,
    /// Outputs handed over so far.
    outputs: u64,
}

impl<F: FnMut(Output) -> Result<(), SimulateError>> Merge<'_, F> {
    /// Waits for every shard's part of the oldest chunk in flight and hands its outputs over
    /// in the order one runtime gives; counts its lines and refusals.
    fn oldest(
        &mut self,
        in_flight: &mut VecDeque<Arc<Work>>,
        shards: &[Shard],
    ) -> Result<(), SimulateError> {
        let Some(work) = in_flight.pop_front() else {
            return Ok(());
        };
        let mut parts = Vec::with_capacity(shards.len());
        for s in shards {
            parts.push(s.done.recv().map_err(|_| stopped())??);
        }
        // Refused lines in line order, as one runtime counts them.
        let mut refused: Vec<(u64, String)> = work
            .lines
            .iter()
            .filter_map(|line| match line {
                Line::Refused(n, why) => Some((*n, why.clone())),
                Line::Event(..) => None,
            })
            .collect();
        for part in &mut parts {
            refused.append(&mut part.refused);
        }
        refused.sort_by_key(|(n, _)| *n);
        self.report.lines += work.lines.len() as u64;
        for (n, why) in refused {
            self.report.reject(n, why);
        }
        let pending_timers = parts.iter().map(|p| p.pending_timers).sum();
        let watermark = parts.iter().map(|p| p.watermark).max();
        let mut cursors: Vec<Cursor> = parts.into_iter().map(Cursor::new).collect();
        while let Some(i) = smallest(&mut cursors) {
            self.hand_over(&mut cursors[i])?;
        }
        let reached = Reached {
            outputs: self.outputs,
            pending_timers,
            watermark: watermark.unwrap_or(Millis::MIN),
        };
        self.progress.reading(self.report, reached);
        Ok(())
    }

    /// While the shards fire what is due by `--until`, each in slices: merges the slices as
    /// they come, taking a shard's next slice when its current one is merged, until every
    /// shard sent its last (empty) one.
    fn firing(&mut self, shards: &[Shard]) -> Result<(), SimulateError> {
        let next = |i: usize| -> Result<Done, SimulateError> {
            Ok(shards[i].done.recv().map_err(|_| stopped())??)
        };
        let mut cursors = Vec::with_capacity(shards.len());
        let mut woken = vec![0; shards.len()];
        for (i, woken) in woken.iter_mut().enumerate() {
            let part = next(i)?;
            *woken += part.woken;
            cursors.push(Cursor::new(part));
        }
        loop {
            // A shard whose slice is merged (and that has more) shows its next one first.
            for (i, cursor) in cursors.iter_mut().enumerate() {
                while cursor.more && cursor.groups.peek().is_none() {
                    let part = next(i)?;
                    woken[i] += part.woken;
                    *cursor = Cursor::new(part);
                }
            }
            let Some(i) = smallest(&mut cursors) else {
                break;
            };
            self.hand_over(&mut cursors[i])?;
            if cursors[i].groups.peek().is_none() {
                let pending = cursors.iter().map(|c| c.pending_timers).sum();
                self.progress.firing(woken.iter().sum(), pending);
            }
        }
        Ok(())
    }

    /// Hands over the outputs of the cursor's next group.
    fn hand_over(&mut self, cursor: &mut Cursor) -> Result<(), SimulateError> {
        let Some((_, len)) = cursor.groups.next() else {
            return Ok(());
        };
        for o in cursor.outputs.by_ref().take(len) {
            (self.on_output)(o)?;
        }
        self.outputs += len as u64;
        Ok(())
    }
}

/// A shard's part being merged: its groups not handed over yet, and their outputs.
struct Cursor {
    groups: std::iter::Peekable<std::vec::IntoIter<(Tag, usize)>>,
    outputs: std::vec::IntoIter<Output>,
    pending_timers: usize,
    /// Whether the shard sends more parts after this one (only while firing).
    more: bool,
}

impl Cursor {
    fn new(part: Done) -> Self {
        Cursor {
            more: part.woken > 0,
            groups: part.groups.into_iter().peekable(),
            outputs: part.outputs.into_iter(),
            pending_timers: part.pending_timers,
        }
    }
}

/// The cursor whose next group comes first in the merged order, if any has one.
fn smallest(cursors: &mut [Cursor]) -> Option<usize> {
    cursors
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| c.groups.peek().map(|(tag, _)| (i, tag)))
        .min_by(|a, b| a.1.cmp(b.1))
        .map(|(i, _)| i)
}

/// A shard's thread: its own customers' events and every line's time, chunk by chunk, until
/// the chunks end; then its runtime, for the calling thread to join (`None` if it failed,
/// having sent the error).
fn shard(
    engine: Arc<Engine>,
    allowed_lateness: Millis,
    me: usize,
    work: Receiver<Job>,
    done: SyncSender<Result<Done, StateError>>,
) -> Option<PartitionRuntime> {
    let mut runtime = match PartitionRuntime::offline(engine, allowed_lateness) {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = done.send(Err(e));
            return None;
        }
    };
    runtime.keep_fire_log();
    for job in work {
        let sent = match job {
            Job::Lines(chunk) => {
                let part = handle(&mut runtime, me, &chunk);
                let failed = part.is_err();
                match done.send(part) {
                    Ok(()) if !failed => Ok(()),
                    _ => Err(()),
                }
            }
            Job::Until(until) => fire_until(&mut runtime, until, &done),
        };
        if sent.is_err() {
            // The calling thread stopped, or this shard failed and said so.
            return None;
        }
    }
    Some(runtime)
}

/// Fires what is due by `until` in slices of [`FIRE_SLICE`] customers, sending each (and an
/// empty last one) as it is done. `Err` if the calling thread stopped taking them or the state
/// failed (sent).
fn fire_until(
    runtime: &mut PartitionRuntime,
    until: Millis,
    done: &SyncSender<Result<Done, StateError>>,
) -> Result<(), ()> {
    let moved = runtime.raise_watermark(until);
    loop {
        let mut part = Done::default();
        let woken = if moved {
            match runtime.fire_due(FIRE_SLICE, &mut part.outputs) {
                Ok(n) => n,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return Err(());
                }
            }
        } else {
            0
        };
        tag_woken(runtime, usize::MAX, 0, &mut part);
        part.woken = woken;
        part.pending_timers = runtime.pending_timers();
        part.watermark = runtime.watermark();
        done.send(Ok(part)).map_err(|_| ())?;
        if woken == 0 {
            return Ok(());
        }
    }
}

/// One chunk in one shard: its customers' events applied, and on every other line that
/// moved the watermark, its customers due woken.
fn handle(runtime: &mut PartitionRuntime, me: usize, work: &Work) -> Result<Done, StateError> {
    let mut part = Done::default();
    for (line, (input, route)) in work.lines.iter().zip(&work.routes).enumerate() {
        let Line::Event(n, ev) = input else { continue };
        let start = part.outputs.len();
        if route.shard == Some(me) {
            if let Applied::Refused(why) = runtime.on_event(ev, &mut part.outputs)? {
                part.refused.push((*n, why));
            }
            // Only identity merges make records for other customers, and they do not
            // reach the shards.
            debug_assert!(runtime.take_forwards().is_empty());
        } else if route.watermark > runtime.watermark() {
            runtime.advance_to(route.watermark, &mut part.outputs)?;
        } else {
            continue;
        }
        debug_assert_eq!(runtime.watermark(), route.watermark);
        tag_woken(runtime, line, start, &mut part);
    }
    part.pending_timers = runtime.pending_timers();
    part.watermark = runtime.watermark();
    Ok(part)
}

/// Tags the outputs `part` gained from `start` on at `line`: the event's own (up to the first
/// customer woken) and each woken customer's (from the runtime's fire log).
fn tag_woken(runtime: &mut PartitionRuntime, line: usize, start: usize, part: &mut Done) {
    let mut woken = runtime.take_fire_log().into_iter().peekable();
    let first_woken = woken.peek().map_or(part.outputs.len(), |(_, _, at)| *at);
    if first_woken > start {
        let tag = Tag {
            line,
            phase: 0,
            due: Millis::MIN,
            customer: CompactString::default(),
        };
        part.groups.push((tag, first_woken - start));
    }
    while let Some((due, customer, from)) = woken.next() {
        let to = woken.peek().map_or(part.outputs.len(), |(_, _, at)| *at);
        if to > from {
            let tag = Tag {
                line,
                phase: 1,
                due,
                customer,
            };
            part.groups.push((tag, to - from));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_stopped_is_reported_with_the_error_it_sent() {
        let (tx, rx) = sync_channel(IN_FLIGHT);
        // Parts the calling thread has not merged yet, then the failure, then the shard is gone.
        tx.send(Ok(Done::default())).unwrap();
        tx.send(Err(StateError::Encode {
            key: "c-1".to_owned(),
            message: "out of memory".to_owned(),
        }))
        .unwrap();
        drop(tx);
        let why = why_stopped(&rx).to_string();
        assert!(
            why.contains("c-1") && why.contains("out of memory"),
            "{why}"
        );
        // Taken: a second look has nothing left to say but that the shard stopped.
        let why = why_stopped(&rx).to_string();
        assert!(why.contains("engine thread of simulate stopped"), "{why}");
    }
}
