//! Graceful shutdown: one [`CancellationToken`] for the whole process, triggered by SIGINT or
//! SIGTERM.
//!
//! Owns signal handling and the exit codes of each way to stop. Long-running loops check the
//! token only at a commit boundary (after outputs, state and offsets were committed together),
//! never mid-transaction. A second signal forces an immediate exit.

use std::time::{Duration, Instant};

pub use tokio_util::sync::CancellationToken;

/// Exit code when a second signal forced the exit before the drain finished.
pub const EXIT_FORCED: i32 = 130;
/// Exit code when the drain did not finish within the shutdown timeout.
pub const EXIT_DRAIN_TIMEOUT: i32 = 124;

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process with [`EXIT_FORCED`] on the
/// second. Spawn it once, early, on the runtime.
pub async fn cancel_on_signal(token: CancellationToken) {
    let first = wait_for_signal().await;
    tracing::info!(
        signal = first,
        "Shutting down: draining and committing; send the signal again to force."
    );
    token.cancel();
    let second = wait_for_signal().await;
    tracing::warn!(signal = second, "Second signal: exiting without draining.");
    std::process::exit(EXIT_FORCED);
}

/// An error after which the work may be started again with new Kafka clients: one of them
/// reported a fatal error (e.g. a static group member fenced after its session timed out
/// during a broker outage) and can do nothing more, but nothing else is wrong.
pub trait Restartable {
    /// Whether starting the work again with new clients can help.
    fn restartable(&self) -> bool;
}

/// How often work whose Kafka clients died is started again: up to [`Restarts::LIMIT`] times
/// in a row, after 1, 2, 4, 8, 16 s; a run longer than [`Restarts::RESET_AFTER`] resets the
/// count. Past the limit the error is returned (and the process exits, so an orchestrator with
/// its own back-off takes over, and a persistent cause such as two instances sharing one
/// `group-instance-id` shows as a crash loop with its message rather than an endless
/// ping-pong).
#[derive(Debug, Default)]
pub struct Restarts {
    consecutive: u32,
}

impl Restarts {
    /// Restarts in a row before giving up.
    pub const LIMIT: u32 = 5;
    /// A run at least this long was healthy: the count starts over.
    pub const RESET_AFTER: Duration = Duration::from_secs(300);

    /// The delay before the next restart of work that failed after running for `ran`, or
    /// `None` when the limit is reached.
    pub fn next_delay(&mut self, ran: Duration) -> Option<Duration> {
        if ran >= Self::RESET_AFTER {
            self.consecutive = 0;
        }
        if self.consecutive >= Self::LIMIT {
            return None;
        }
        let delay = Duration::from_secs(1 << self.consecutive);
        self.consecutive += 1;
        Some(delay)
    }
}

/// Runs `attempt` and runs it again (with the [`Restarts`] back-off) while it fails with a
/// [`Restartable`] error; `on_restart` is called before each restart (count it, mark not
/// ready). A shutdown during the back-off returns `T::default()`: nothing was in flight.
pub fn restarting<T, E>(
    what: &str,
    shutdown: &CancellationToken,
    mut on_restart: impl FnMut(),
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E>
where
    T: Default,
    E: Restartable + std::fmt::Display,
{
    let mut restarts = Restarts::default();
    loop {
        let started = Instant::now();
        let err = match attempt() {
            Err(e) if e.restartable() && !shutdown.is_cancelled() => e,
            other => return other,
        };
        let Some(delay) = restarts.next_delay(started.elapsed()) else {
            tracing::error!(error = %err, limit = Restarts::LIMIT, "Giving up: {what} failed too often in a row.");
            return Err(err);
        };
        tracing::error!(
            error = %err,
            delay_secs = delay.as_secs(),
            "Restarting the {what} with new Kafka clients (committed state and offsets are kept)."
        );
        on_restart();
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shutdown.is_cancelled() {
                return Ok(T::default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never resolve.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fails(bool);
    impl std::fmt::Display for Fails {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fails (restartable: {})", self.0)
        }
    }
    impl Restartable for Fails {
        fn restartable(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn restart_delays_double_up_to_the_limit_and_a_long_run_resets_them() {
        let mut r = Restarts::default();
        let short = Duration::from_secs(1);
        let delays: Vec<_> = std::iter::from_fn(|| r.next_delay(short)).collect();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16]);
        assert_eq!(r.next_delay(short), None, "the limit holds");
        assert_eq!(
            r.next_delay(Restarts::RESET_AFTER),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn restartable_errors_run_the_work_again_and_others_end_it() {
        let token = CancellationToken::new();
        let mut calls = 0;
        let mut restarts = 0;
        let result: Result<u32, Fails> = restarting(
            "test",
            &token,
            || restarts += 1,
            || {
                calls += 1;
                if calls == 1 {
                    Err(Fails(true))
                } else {
                    Ok(calls)
                }
            },
        );
        assert_eq!(result.unwrap(), 2);
        assert_eq!(restarts, 1);

        let mut calls = 0;
        let result: Result<u32, Fails> = restarting(
            "test",
            &token,
            || {},
            || {
                calls += 1;
                Err(Fails(false))
            },
        );
        assert!(result.is_err());
        assert_eq!(calls, 1, "a non-restartable error is returned at once");
    }

    #[test]
    fn a_shutdown_during_the_back_off_ends_without_another_attempt() {
        let token = CancellationToken::new();
        let mut calls = 0;
        let result: Result<u32, Fails> = restarting(
            "test",
            &token,
            || token.cancel(),
            || {
                calls += 1;
                Err(Fails(true))
            },
        );
        assert_eq!(result.unwrap(), 0);
        assert_eq!(calls, 1);
    }
}
