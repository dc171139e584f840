//! Graceful shutdown: one [`CancellationToken`] for the whole process, triggered by SIGINT or
//! SIGTERM.
//!
//! Owns signal handling and the exit codes of each way to stop. Long-running loops check the
//! token only at a commit boundary (after outputs, state and offsets were committed together),
//! never mid-transaction. A second signal forces an immediate exit.

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
