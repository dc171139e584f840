//! `waymark simulate`: the engine offline, over a JSON-lines file — the executable specification.
//!
//! Owns reading events in file order, the offline watermark (the same rule as live: `max(
//! occurred_at seen) − allowed lateness`, over the whole file as one partition), advancing time
//! to `--until` at the end, and writing one JSON object per output line. Deterministic: the same
//! journeys and events give the same bytes. Must not read the wall clock for anything that
//! changes the output.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{Applied, Engine};
use crate::model::{CustomerEvent, Millis, Output};
use crate::runtime::{PartitionRuntime, RuntimeStats, validate};
use crate::state::StateError;

/// Customers woken per slice when advancing to `--until` (see [`simulate_into`]).
const FIRE_SLICE: usize = 10_000;

/// Options of an offline run.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Events later than this behind the newest seen are late.
    pub allowed_lateness: Millis,
    /// After the last event, advance the watermark to this time (fires everything due by it).
    pub until: Option<Millis>,
    /// Events more than this ahead of `until` are rejected as future-dated (only with `until`).
    pub max_future_skew: Millis,
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

/// Runs the engine over `events` (JSON lines), writing outputs to `out` as JSON lines.
pub fn simulate(
    engine: Arc<Engine>,
    events: impl BufRead,
    out: &mut impl Write,
    opts: &SimulateOptions,
) -> Result<SimulateReport, SimulateError> {
    let report = simulate_into(engine, events, opts, |o| {
        serde_json::to_writer(&mut *out, o)?;
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(report)
}

/// Runs the engine over `events` (JSON lines) and hands every output to `on_output`, in the
/// order `simulate` writes them.
pub fn simulate_into(
    engine: Arc<Engine>,
    events: impl BufRead,
    opts: &SimulateOptions,
    mut on_output: impl FnMut(&Output) -> Result<(), SimulateError>,
) -> Result<SimulateReport, SimulateError> {
    let started = Instant::now();
    let mut runtime = PartitionRuntime::offline(engine, opts.allowed_lateness)?;
    let mut report = SimulateReport::default();
    let mut buf: Vec<Output> = Vec::with_capacity(64);
    let reject = |report: &mut SimulateReport, line: u64, why: String| {
        report.rejected_total += 1;
        if report.rejected.len() < 100 {
            report.rejected.push((line, why));
        }
    };
    for (n, line) in events.lines().enumerate() {
        let n = n as u64 + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let ev: CustomerEvent = match serde_json::from_str(&line) {
            Ok(ev) => ev,
            Err(e) => {
                reject(
                    &mut report,
                    n,
                    format!("not a CustomerEvent JSON object: {e}"),
                );
                continue;
            }
        };
        if let Err(why) = validate(&ev, None, opts.until, opts.max_future_skew) {
            reject(&mut report, n, why.to_string());
            continue;
        }
        let applied = runtime.on_event(&ev, &mut buf)?;
        debug_assert!(
            !matches!(applied, Applied::Accepted { .. }) || buf.iter().all(|o| !o.id().is_empty())
        );
        if let Applied::Refused(why) = applied {
            reject(&mut report, n, why);
        }
        for why in apply_forwards(&mut runtime, &mut buf)? {
            reject(&mut report, n, why);
        }
        hand_over(&mut on_output, &mut buf)?;
    }
    if let Some(until) = opts.until {
        // Fired in slices, each handed over before the next: at the end of a long trace
        // millions of customers can be due at once, and their outputs need not all be held.
        if runtime.raise_watermark(until) {
            while runtime.fire_due(FIRE_SLICE, &mut buf)? > 0 {
                hand_over(&mut on_output, &mut buf)?;
            }
        }
        let last = report.lines;
        for why in apply_forwards(&mut runtime, &mut buf)? {
            reject(&mut report, last, why);
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
    on_output: &mut impl FnMut(&Output) -> Result<(), SimulateError>,
    buf: &mut Vec<Output>,
) -> Result<(), SimulateError> {
    for o in buf.drain(..) {
        on_output(&o)?;
    }
    Ok(())
}
