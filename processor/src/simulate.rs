//! `waymark simulate`: the engine offline, over a JSON-lines file — the executable specification.
//!
//! Owns reading events in file order, the offline watermark (the same rule as live: `max(
//! occurred_at seen) − allowed lateness`, over the whole file as one partition), advancing time
//! to `--until` at the end, and writing one JSON object per output line. Deterministic: the same
//! journeys and events give the same bytes. Must not read the wall clock for anything that
//! changes the output.
//!
//! Parsing the input and writing the output each run on a thread of their own, beside the
//! engine's: chunks of lines and of outputs go through bounded channels, in order, so the
//! threads change nothing but the time a run takes. So do engine threads
//! ([`SimulateOptions::threads`], the `sharded` module): customers split between runtimes,
//! their outputs merged back into the order one runtime gives, byte for byte.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::engine::{Applied, Engine};
use crate::model::{CustomerEvent, Millis, Output};
use crate::runtime::{PartitionRuntime, RuntimeStats, validate};
use crate::state::StateError;

mod sharded;

/// Customers woken per slice when advancing to `--until` (see [`simulate_into`]).
const FIRE_SLICE: usize = 10_000;

/// Input lines parsed per chunk handed from the reading thread to the engine.
const READ_CHUNK: usize = 1_024;

/// Outputs per chunk handed from the engine to the writing thread.
const WRITE_CHUNK: usize = 4_096;

/// Chunks waiting in each channel between two threads (at most 8 × 4,096 outputs, a few
/// MiB): enough to keep both sides busy, little enough to bound memory when one side is slow.
const CHANNEL_CHUNKS: usize = 8;

/// Options of an offline run.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Events later than this behind the newest seen are late.
    pub allowed_lateness: Millis,
    /// After the last event, advance the watermark to this time (fires everything due by it).
    pub until: Option<Millis>,
    /// Events more than this ahead of `until` are rejected as future-dated (only with `until`).
    pub max_future_skew: Millis,
    /// Log progress (lines read, event time reached, rate) at most this often; `None`: never.
    /// Wall-clock time decides only when a line is logged, never what is output.
    pub progress_every: Option<Duration>,
    /// Engine threads: customers are split between this many runtimes, and their outputs
    /// merged back into the order one runtime gives (1: one runtime on the calling thread).
    pub threads: usize,
}

/// What an offline run did.
#[derive(Debug, Clone, Default)]
pub struct SimulateReport {
    /// Lines read (non-empty).
    pub lines: u64,
    /// Lines refused, with their 1-based line numbers and reasons (first 100 kept).
    pub rejected: Vec<(u64, String)>,
    /// Total refused lines.
    pub rejected_total: u64,
    /// Engine counters.
    pub stats: RuntimeStats,
    /// Final watermark.
    pub watermark: Millis,
    /// Wall-clock seconds spent.
    pub seconds: f64,
}

/// Errors of an offline run (not bad input: that is reported per line and skipped).
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Reading the events or writing the output failed.
    #[error("simulate: I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The in-memory state failed (a bug; report it).
    #[error("simulate: state error: {0}")]
    State(#[from] StateError),
    /// Writing JSON failed.
    #[error("simulate: cannot write output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Runs the engine over `events` (JSON lines), writing outputs to `out` as JSON lines (on a
/// thread of their own).
pub fn simulate(
    engine: Arc<Engine>,
    events: impl BufRead + Send,
    out: &mut (impl Write + Send),
    opts: &SimulateOptions,
) -> Result<SimulateReport, SimulateError> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Vec<Output>>(CHANNEL_CHUNKS);
        // Written chunks come back empty to be filled again: a new chunk (about 1 MiB) would
        // be new memory, paged in output by output.
        let (spent, reuse) = sync_channel::<Vec<Output>>(CHANNEL_CHUNKS + 1);
        let writer = scope.spawn(move || write_outputs(rx, out, spent));
        let next_chunk = || {
            reuse
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(WRITE_CHUNK))
        };
        let mut chunk = next_chunk();
        let hand_on = |chunk: Vec<Output>| {
            tx.send(chunk).map_err(|_| {
                // The writer stopped on an error; it is reported below.
                SimulateError::Io(std::io::Error::other("the output writer stopped"))
            })
        };
        let run = simulate_into(engine, events, opts, |o| {
            chunk.push(o);
            if chunk.len() == WRITE_CHUNK {
                hand_on(std::mem::replace(&mut chunk, next_chunk()))?;
            }
            Ok(())
        })
        .and_then(|report| hand_on(chunk).map(|()| report));
        // The writer ends when the channel closes.
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // The writer's error is the cause when both failed.
        written.and(run)
    })
}

/// The writing thread: every output of every chunk as one JSON line, in order. Hands each
/// chunk back emptied on `spent` (dropped if nobody takes it).
fn write_outputs(
    chunks: Receiver<Vec<Output>>,
    out: &mut impl Write,
    spent: SyncSender<Vec<Output>>,
) -> Result<(), SimulateError> {
    let mut text: Vec<u8> = Vec::with_capacity(1 << 20);
    for mut chunk in chunks {
        text.clear();
        for o in &chunk {
            serde_json::to_writer(&mut text, o)?;
            text.push(b'\n');
        }
        out.write_all(&text)?;
        chunk.clear();
        let _ = spent.try_send(chunk);
    }
    out.flush()?;
    Ok(())
}

/// An input line as the reading thread hands it on (1-based line numbers).
enum Line {
    /// A valid event, and its line.
    Event(u64, CustomerEvent),
    /// A line refused before the engine: why.
    Refused(u64, String),
}

/// The reading thread: non-empty lines parsed and validated, in chunks, in file order. Stops
/// at the first I/O error (handed on) or when the engine stops taking chunks.
fn read_events(
    mut events: impl BufRead,
    opts: &SimulateOptions,
    chunks: SyncSender<std::io::Result<Vec<Line>>>,
) {
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    let mut text = String::new();
    let mut n = 0u64;
    loop {
        text.clear();
        match events.read_line(&mut text) {
            Ok(0) => break,
            Ok(_) => n += 1,
            Err(e) => {
                let _ = chunks.send(Err(e));
                return;
            }
        }
        if text.trim().is_empty() {
            continue;
        }
        chunk.push(match serde_json::from_str::<CustomerEvent>(&text) {
            Ok(ev) => match validate(&ev, None, opts.until, opts.max_future_skew) {
                Ok(()) => Line::Event(n, ev),
                Err(why) => Line::Refused(n, why.to_string()),
            },
            Err(e) => Line::Refused(n, format!("not a CustomerEvent JSON object: {e}")),
        });
        if chunk.len() == READ_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(READ_CHUNK));
            if chunks.send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.send(Ok(chunk));
    }
}

/// Runs the engine over `events` (JSON lines, parsed on a thread of their own) and hands
/// every output to `on_output`, in the order `simulate` writes them. With
/// [`SimulateOptions::threads`] above 1 the customers are split between that many runtimes
/// (see the `sharded` module); the outputs and the report are the same.
pub fn simulate_into(
    engine: Arc<Engine>,
    events: impl BufRead + Send,
    opts: &SimulateOptions,
    mut on_output: impl FnMut(Output) -> Result<(), SimulateError>,
) -> Result<SimulateReport, SimulateError> {
    let started = Instant::now();
    let mut report = SimulateReport::default();
    let mut buf: Vec<Output> = Vec::with_capacity(64);
    let mut progress = Progress::new(opts.progress_every, started);
    let ran = std::thread::scope(|scope| -> Result<sharded::Ran, SimulateError> {
        let (tx, chunks) = sync_channel(CHANNEL_CHUNKS);
        scope.spawn(move || read_events(events, opts, tx));
        let mut chunks = chunks.into_iter();
        let (mut runtime, rest) = if opts.threads > 1 {
            match sharded::run(
                &engine,
                opts,
                &mut chunks,
                &mut report,
                &mut progress,
                &mut on_output,
            )? {
                sharded::Ran::Continue(runtime, rest) => (*runtime, rest),
                whole => return Ok(whole),
            }
        } else {
            let runtime = PartitionRuntime::offline(engine.clone(), opts.allowed_lateness)?;
            (runtime, Vec::new())
        };
        for line in rest {
            one_line(&mut runtime, line, &mut report, &mut buf, &mut on_output)?;
        }
        for chunk in chunks {
            for line in chunk? {
                one_line(&mut runtime, line, &mut report, &mut buf, &mut on_output)?;
            }
            progress.reading(&report, Reached::of(&runtime));
        }
        Ok(sharded::Ran::Continue(Box::new(runtime), Vec::new()))
    })?;
    let mut runtime = match ran {
        sharded::Ran::Done { stats, watermark } => {
            report.stats = stats;
            report.watermark = watermark;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        sharded::Ran::Continue(runtime, _) => *runtime,
    };
    if let Some(until) = opts.until {
        // Fired in slices, each handed over before the next: at the end of a long trace
        // millions of customers can be due at once, and their outputs need not all be held.
        if runtime.raise_watermark(until) {
            let mut woken = 0;
            loop {
                let n = runtime.fire_due(FIRE_SLICE, &mut buf)?;
                if n == 0 {
                    break;
                }
                woken += n;
                hand_over(&mut on_output, &mut buf)?;
                progress.firing(woken, runtime.pending_timers());
            }
        }
        let last = report.lines;
        for why in apply_forwards(&mut runtime, &mut buf)? {
            report.reject(last, why);
        }
        hand_over(&mut on_output, &mut buf)?;
    }
    report.stats = runtime.stats();
    report.watermark = runtime.watermark();
    report.seconds = started.elapsed().as_secs_f64();
    // Freeing millions of customer states one by one costs a sixth of a large run; the memory
    // store holds nothing durable, so leave it to the process exit.
    std::mem::forget(runtime);
    Ok(report)
}

/// One input line, as one runtime handles it: the event applied (and what its time lets
/// fire), then the records it made for other customers; every output handed over.
fn one_line(
    runtime: &mut PartitionRuntime,
    line: Line,
    report: &mut SimulateReport,
    buf: &mut Vec<Output>,
    on_output: &mut impl FnMut(Output) -> Result<(), SimulateError>,
) -> Result<(), SimulateError> {
    report.lines += 1;
    let (n, ev) = match line {
        Line::Event(n, ev) => (n, ev),
        Line::Refused(n, why) => {
            report.reject(n, why);
            return Ok(());
        }
    };
    let applied = runtime.on_event(&ev, buf)?;
    debug_assert!(
        !matches!(applied, Applied::Accepted { .. }) || buf.iter().all(|o| !o.id().is_empty())
    );
    if let Applied::Refused(why) = applied {
        report.reject(n, why);
    }
    for why in apply_forwards(runtime, buf)? {
        report.reject(n, why);
    }
    hand_over(on_output, buf)
}

impl SimulateReport {
    /// Counts a refused line (and keeps the first 100 reasons).
    fn reject(&mut self, line: u64, why: String) {
        self.rejected_total += 1;
        if self.rejected.len() < 100 {
            self.rejected.push((line, why));
        }
    }
}

/// How far a run got, for a progress line.
struct Reached {
    outputs: u64,
    pending_timers: usize,
    watermark: Millis,
}

impl Reached {
    fn of(runtime: &PartitionRuntime) -> Self {
        let stats = runtime.stats();
        Reached {
            outputs: stats.commands + stats.journey_events,
            pending_timers: runtime.pending_timers(),
            watermark: runtime.watermark(),
        }
    }
}

/// Progress lines of a long run, at most one per interval (see
/// [`SimulateOptions::progress_every`]).
struct Progress {
    every: Option<Duration>,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(every: Option<Duration>, started: Instant) -> Self {
        Progress {
            every,
            started,
            last: started,
        }
    }

    /// Whether a line is due now (and if so, the interval starts again).
    fn due(&mut self) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(self.last) < every {
            return false;
        }
        self.last = now;
        true
    }

    /// While reading events: lines so far, the event time reached, and the rate.
    fn reading(&mut self, report: &SimulateReport, reached: Reached) {
        if !self.due() {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            lines = report.lines,
            refused = report.rejected_total,
            outputs = reached.outputs,
            pending_timers = reached.pending_timers,
            watermark = %format_watermark(reached.watermark),
            events_per_sec = (report.lines as f64 / secs.max(1e-9)) as u64,
            "Reading events."
        );
    }

    /// While firing what is due by `--until`: customers woken so far and still pending.
    fn firing(&mut self, woken: usize, pending_timers: usize) {
        if !self.due() {
            return;
        }
        tracing::info!(woken, pending_timers, "Firing what is due by --until.");
    }
}

/// The watermark for a log line (`none` before the first event).
fn format_watermark(watermark: Millis) -> String {
    if watermark == Millis::MIN {
        "none".to_owned()
    } else {
        crate::model::format_millis(watermark)
    }
}

/// Identity merges: what one customer hands to another is applied at once (live, it goes
/// through the input topic to that customer's partition). Returns why records were refused.
fn apply_forwards(
    runtime: &mut PartitionRuntime,
    buf: &mut Vec<Output>,
) -> Result<Vec<String>, SimulateError> {
    let mut refused = Vec::new();
    let mut forwards = VecDeque::from(runtime.take_forwards());
    while let Some(f) = forwards.pop_front() {
        if let Applied::Refused(why) = runtime.on_forwarded(&f, buf)? {
            refused.push(why);
        }
        forwards.extend(runtime.take_forwards());
    }
    Ok(refused)
}

fn hand_over(
    on_output: &mut impl FnMut(Output) -> Result<(), SimulateError>,
    buf: &mut Vec<Output>,
) -> Result<(), SimulateError> {
    for o in buf.drain(..) {
        on_output(o)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ALIAS_CANONICAL_ATTRIBUTE, ALIAS_EVENT_TYPE, FORGET_EVENT_TYPE};

    const T0: &str = "2026-03-01T21:20:00Z";

    fn opts() -> SimulateOptions {
        SimulateOptions {
            allowed_lateness: 5 * 60_000,
            until: Some(crate::model::parse_millis("2026-03-20T00:00:00Z").unwrap()),
            max_future_skew: 0,
            progress_every: None,
            threads: 1,
        }
    }

    fn login(event_id: &str, customer: &str) -> String {
        format!(
            r#"{{"event_id":"{event_id}","customer_id":"{customer}","type":"login.created","occurred_at":"{T0}","attributes":{{}}}}"#
        )
    }

    /// A loadgen trace of a dozen chunks with lines of every kind mixed in: refused lines, a
    /// type no journey reads, a sink's outcome, forget requests and, if `alias`, an identity
    /// merge half-way through (where the engine threads hand over to one runtime).
    fn mixed_trace(alias: bool) -> String {
        let args = crate::loadgen::LoadgenArgs {
            customers: 3_000,
            ..Default::default()
        };
        let mut trace = Vec::new();
        crate::loadgen::write_jsonl(crate::loadgen::generate(&args).unwrap(), &mut trace).unwrap();
        let mut lines: Vec<String> = String::from_utf8(trace)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(lines.len() > 10 * READ_CHUNK, "{} lines", lines.len());
        let event = |i: usize, kind: &str, attributes: &str| {
            let near: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
            format!(
                r#"{{"event_id":"mixed-{i}","customer_id":"{}","type":"{kind}","occurred_at":"{}","attributes":{attributes}}}"#,
                near["customer_id"].as_str().unwrap(),
                near["occurred_at"].as_str().unwrap(),
            )
        };
        let mut extra = vec![
            (1_500, event(1_500, "page.viewed", "{}")),
            (
                2_500,
                event(2_500, "intervention.delivered", r#"{"command_id":"x"}"#),
            ),
            (3_500, event(3_500, FORGET_EVENT_TYPE, "{}")),
            (7_000, event(7_000, FORGET_EVENT_TYPE, "{}")),
        ];
        if alias {
            let canonical: serde_json::Value = serde_json::from_str(&lines[6_001]).unwrap();
            let attributes = format!(
                r#"{{"{ALIAS_CANONICAL_ATTRIBUTE}":"{}"}}"#,
                canonical["customer_id"].as_str().unwrap()
            );
            extra.push((6_000, event(6_000, ALIAS_EVENT_TYPE, &attributes)));
        }
        extra.extend((1..10).map(|k| (k * 997, "{not json".to_owned())));
        extra.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, line) in extra {
            lines.insert(at, line);
        }
        lines.join("\n")
    }

    #[test]
    fn engine_threads_give_the_same_bytes_and_report_as_one() {
        for alias in [false, true] {
            let trace = mixed_trace(alias);
            for until in [opts().until, None] {
                let run = |threads| {
                    let opts = SimulateOptions {
                        until,
                        threads,
                        ..opts()
                    };
                    let mut out = Vec::new();
                    let engine = crate::engine::tests::reference();
                    let report = simulate(engine, trace.as_bytes(), &mut out, &opts).unwrap();
                    (out, report)
                };
                let (one, first) = run(1);
                // The trace has what it claims.
                assert_eq!(first.stats.forgotten, 2);
                assert_eq!(first.stats.ignored, 1);
                assert_eq!(first.stats.merges > 0, alias);
                let not_json = first
                    .rejected
                    .iter()
                    .filter(|(_, why)| why.starts_with("not a CustomerEvent JSON object"));
                assert_eq!(not_json.count(), 9);
                assert!(one.len() > 1_000_000, "{} bytes", one.len());
                for threads in [2, 4] {
                    let (many, report) = run(threads);
                    let what = format!("{threads} threads, alias {alias}, until {until:?}");
                    assert!(many == one, "output differs: {what}");
                    assert_eq!(report.lines, first.lines, "{what}");
                    assert_eq!(report.rejected, first.rejected, "{what}");
                    assert_eq!(report.rejected_total, first.rejected_total, "{what}");
                    assert_eq!(report.stats, first.stats, "{what}");
                    assert_eq!(report.watermark, first.watermark, "{what}");
                }
            }
        }
    }

    #[test]
    fn refused_lines_keep_their_line_numbers_and_the_rest_is_processed() {
        // Line 1 valid, 2 empty, 3 not JSON, 4 no customer, 5 blank, 6 valid.
        let input = [
            login("e1", "c1"),
            String::new(),
            "{not json".to_owned(),
            login("e2", ""),
            "   ".to_owned(),
            login("e3", "c2"),
        ]
        .join("\n");
        let mut out = Vec::new();
        let report = simulate(
            crate::engine::tests::reference(),
            input.as_bytes(),
            &mut out,
            &opts(),
        )
        .unwrap();
        assert_eq!(report.lines, 4);
        assert_eq!(report.rejected_total, 2);
        let lines: Vec<u64> = report.rejected.iter().map(|r| r.0).collect();
        assert_eq!(lines, [3, 4]);
        assert!(
            report.rejected[0]
                .1
                .starts_with("not a CustomerEvent JSON object")
        );
        assert!(report.rejected[1].1.contains("customer_id is missing"));
        let text = String::from_utf8(out).unwrap();
        let customers: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Output>(l)
                    .unwrap()
                    .customer_id()
                    .to_owned()
            })
            .collect();
        assert_eq!(customers, ["c1".to_owned(), "c2".to_owned()].into());
    }

    #[test]
    fn written_output_equals_the_outputs_handed_over_in_order() {
        // More outputs than one chunk, so several chunks cross to the writing thread.
        let input: String = (0..2_000)
            .map(|i| login(&format!("e{i}"), &format!("c{i}")) + "\n")
            .collect();
        let mut handed = Vec::new();
        simulate_into(
            crate::engine::tests::reference(),
            input.as_bytes(),
            &opts(),
            |o| {
                handed.push(serde_json::to_string(&o).unwrap() + "\n");
                Ok(())
            },
        )
        .unwrap();
        assert!(handed.len() > 2 * WRITE_CHUNK, "{}", handed.len());
        let mut out = Vec::new();
        simulate(
            crate::engine::tests::reference(),
            input.as_bytes(),
            &mut out,
            &opts(),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), handed.concat());
    }

    /// A sink that fails after `left` bytes.
    struct Failing {
        left: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.left {
                return Err(std::io::Error::other("disk full"));
            }
            self.left -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_stops_the_run_with_the_writers_error() {
        let input: String = (0..2_000)
            .map(|i| login(&format!("e{i}"), &format!("c{i}")) + "\n")
            .collect();
        for threads in [1, 2] {
            let err = simulate(
                crate::engine::tests::reference(),
                input.as_bytes(),
                &mut Failing { left: 10_000 },
                &SimulateOptions { threads, ..opts() },
            )
            .unwrap_err();
            assert!(err.to_string().contains("disk full"), "{threads}: {err}");
        }
    }

    /// A reader that fails after its first line.
    struct Broken {
        first: Option<String>,
    }

    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            unreachable!("read through BufRead")
        }
    }

    impl BufRead for Broken {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            match &self.first {
                Some(line) => Ok(line.as_bytes()),
                None => Err(std::io::Error::other("connection reset")),
            }
        }
        fn consume(&mut self, _: usize) {
            self.first = None;
        }
    }

    #[test]
    fn a_failing_input_stops_the_run_with_its_error() {
        for threads in [1, 2] {
            let err = simulate(
                crate::engine::tests::reference(),
                Broken {
                    first: Some(login("e1", "c1") + "\n"),
                },
                &mut Vec::new(),
                &SimulateOptions { threads, ..opts() },
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("connection reset"),
                "{threads}: {err}"
            );
        }
    }
}
