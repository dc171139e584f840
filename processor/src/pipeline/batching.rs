//! When the poll loop ends its open batch and commits.
//!
//! A commit is due every `commit-interval-ms`. While the input is behind (more events are
//! waiting in the assigned partitions than the open batch holds), the batch is kept open
//! instead, up to `backlog-commit-interval-ms`, `max-batch-events`, or until the consumer has
//! caught up: each commit costs about as much as a hundred milliseconds of processing, so
//! fewer, larger transactions work the lag off faster.
//!
//! (Measured and not kept: keeping a batch open only when the lag takes longer than
//! `backlog-commit-interval-ms` to work off at the pipeline's pace. Live at 27,000 events/s
//! on two shared cores, lags of a few hundred milliseconds then took longer to work off at
//! the usual interval, and the p99 was worse; BENCHMARKS.md, twenty-third session.)
//!
//! Pure: the loop passes the clock, its counts and the backlog in, so the rule is tested
//! without a broker.

use std::time::Duration;

use crate::telemetry::BatchEnd;

/// The open batch's clock.
#[derive(Debug)]
pub(super) struct Batching {
    interval: Duration,
    backlog_interval: Duration,
    max_batch: usize,
    /// The open batch was kept open past `interval` because the input is behind.
    extended: bool,
}

/// What to do with the open batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Keep reading into it.
    Continue,
    /// Keep it open past `commit-interval-ms`: the input is behind (counted once per batch).
    Extend,
    /// Commit it.
    End(BatchEnd),
}

/// Where the open batch stands, at one turn of the poll loop.
#[derive(Debug, Clone, Copy)]
pub(super) struct Open {
    /// Since the last commit.
    pub elapsed: Duration,
    /// Events it holds.
    pub events: usize,
    /// The consumer's queue of fetched records is empty.
    pub drained: bool,
    /// Shutdown was requested.
    pub shutting_down: bool,
}

impl Batching {
    pub(super) fn new(interval: Duration, backlog_interval: Duration, max_batch: usize) -> Self {
        Self {
            interval,
            backlog_interval,
            max_batch,
            extended: false,
        }
    }

    /// Whether the open batch ends now. `backlog` counts the events waiting in the input; it
    /// is asked at most once, and only when a batch reaches `interval` not kept open.
    pub(super) fn decide(&mut self, open: Open, backlog: impl FnOnce() -> i64) -> Decision {
        if open.events >= self.max_batch {
            return Decision::End(BatchEnd::MaxBatch);
        }
        if open.elapsed >= self.backlog_interval {
            return Decision::End(if self.extended {
                BatchEnd::BacklogInterval
            } else {
                BatchEnd::Interval
            });
        }
        if open.elapsed < self.interval {
            return Decision::Continue;
        }
        if open.shutting_down {
            return Decision::End(BatchEnd::Shutdown);
        }
        if self.extended {
            return if open.drained {
                // Nothing more to read right now: the batch kept open for a backlog is done.
                Decision::End(BatchEnd::CaughtUp)
            } else {
                Decision::Continue
            };
        }
        // Here `interval <= elapsed < backlog_interval`: a `backlog-commit-interval-ms` equal to
        // `commit-interval-ms` ended the batch above, so it never keeps one open.
        if backlog() > open.events as i64 {
            self.extended = true;
            Decision::Extend
        } else {
            Decision::End(BatchEnd::Interval)
        }
    }

    /// The open batch was committed: a new one starts.
    pub(super) fn committed(&mut self) {
        self.extended = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);
    const BACKLOG_INTERVAL: Duration = Duration::from_millis(1000);

    fn batching() -> Batching {
        Batching::new(INTERVAL, BACKLOG_INTERVAL, 10_000)
    }

    fn open(ms: u64, events: usize) -> Open {
        Open {
            elapsed: Duration::from_millis(ms),
            events,
            drained: false,
            shutting_down: false,
        }
    }

    fn never() -> i64 {
        panic!("the backlog is not needed here")
    }

    #[test]
    fn a_batch_ends_at_the_interval_when_the_input_is_not_behind() {
        let mut b = batching();
        assert_eq!(b.decide(open(50, 1_000), never), Decision::Continue);
        assert_eq!(
            b.decide(open(100, 2_000), || 0),
            Decision::End(BatchEnd::Interval)
        );
    }

    #[test]
    fn a_batch_ends_at_the_interval_when_fewer_events_wait_than_it_holds() {
        let mut b = batching();
        assert_eq!(
            b.decide(open(100, 2_000), || 2_000),
            Decision::End(BatchEnd::Interval)
        );
    }

    #[test]
    fn a_backlog_keeps_the_batch_open_until_caught_up() {
        let mut b = batching();
        assert_eq!(b.decide(open(100, 2_000), || 2_001), Decision::Extend);
        // Kept open: the backlog is not asked again, the interval no longer ends it.
        assert_eq!(b.decide(open(400, 8_000), never), Decision::Continue);
        let caught_up = Open {
            drained: true,
            ..open(500, 9_000)
        };
        assert_eq!(
            b.decide(caught_up, never),
            Decision::End(BatchEnd::CaughtUp)
        );
        b.committed();
        // The next batch starts not kept open.
        assert_eq!(
            b.decide(open(100, 2_000), || 0),
            Decision::End(BatchEnd::Interval)
        );
    }

    #[test]
    fn a_batch_not_kept_open_ignores_a_drained_queue_before_the_interval() {
        let mut b = batching();
        let drained = Open {
            drained: true,
            ..open(50, 1_000)
        };
        assert_eq!(b.decide(drained, never), Decision::Continue);
    }

    #[test]
    fn a_batch_kept_open_ends_at_the_backlog_interval_or_max_batch() {
        let mut b = batching();
        assert_eq!(b.decide(open(100, 500), || 1_000_000), Decision::Extend);
        assert_eq!(
            b.decide(open(1_000, 9_000), never),
            Decision::End(BatchEnd::BacklogInterval)
        );
        b.committed();
        assert_eq!(b.decide(open(100, 900), || 1_000_000), Decision::Extend);
        assert_eq!(
            b.decide(open(300, 10_000), never),
            Decision::End(BatchEnd::MaxBatch)
        );
    }

    #[test]
    fn shutdown_ends_the_batch_at_the_interval_even_when_behind() {
        let mut b = batching();
        let stopping = Open {
            shutting_down: true,
            ..open(100, 2_000)
        };
        assert_eq!(b.decide(stopping, never), Decision::End(BatchEnd::Shutdown));
        b.decide(open(100, 2_000), || 50_000);
        assert_eq!(
            b.decide(
                Open {
                    elapsed: INTERVAL * 3,
                    ..stopping
                },
                never
            ),
            Decision::End(BatchEnd::Shutdown)
        );
    }

    #[test]
    fn without_a_longer_backlog_interval_no_batch_is_kept_open() {
        let mut b = Batching::new(INTERVAL, INTERVAL, 10_000);
        assert_eq!(
            b.decide(open(100, 10), || 1_000_000),
            Decision::End(BatchEnd::Interval)
        );
    }
}
