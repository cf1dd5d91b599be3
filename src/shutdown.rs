//! Shutdown as a protocol: the first SIGINT (Ctrl-C) or SIGTERM asks the process to
//! stop taking work and drain what it holds within its grace period; a second one asks
//! it to stop at once. Every task of a process watches the first token.

use tokio_util::sync::CancellationToken;

/// The two stop requests a process can get.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Cancelled by the first signal: stop taking work and drain.
    pub drain: CancellationToken,
    /// Cancelled by a second signal: stop now.
    pub now: CancellationToken,
}

/// Listens for SIGINT and SIGTERM: the first cancels [`Signals::drain`], the next
/// cancels [`Signals::now`].
pub fn signals() -> Signals {
    let signals = Signals::default();
    let s = signals.clone();
    // Listening starts before this returns, and one listener sees both signals, so a
    // second one sent right after the first is not lost.
    let mut incoming = Incoming::new();
    tokio::spawn(async move {
        incoming.next().await;
        tracing::info!("signal received, draining (again to stop at once)");
        s.drain.cancel();
        incoming.next().await;
        tracing::warn!("second signal received, stopping at once");
        s.now.cancel();
    });
    signals
}

/// A token cancelled on the first SIGINT or SIGTERM; a second one ends the process at
/// once (exit code 130), for a drain that takes too long.
pub fn on_signal() -> CancellationToken {
    let signals = signals();
    tokio::spawn(async move {
        signals.now.cancelled().await;
        std::process::exit(130);
    });
    signals.drain
}

/// SIGINT and SIGTERM as one source.
struct Incoming {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Incoming {
    #[cfg(unix)]
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => Some((i, t)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for signals; Ctrl-C only");
                None
            }
        };
        Self { streams }
    }

    #[cfg(not(unix))]
    fn new() -> Self {
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.streams {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
