//! The process's shutdown signals, for every command that runs until told to stop (`serve`,
//! `sandbox`, `bench`). Below all of them, so that none imports another for it.

use std::{future::Future, pin::Pin};

/// The signal that asked for the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: an orchestrator's stop. The server keeps serving for its shutdown delay, with
    /// health NOT_SERVING, so that load balancers see it leave before its port closes.
    Terminate,
    /// SIGINT (Ctrl-C): someone at a terminal. The server stops accepting at once.
    Interrupt,
}

/// A shutdown that began: the signal, and the next signal (of either kind), which ends the
/// shutdown delay early.
pub struct Shutdown {
    /// The signal that began the shutdown.
    pub signal: Signal,
    /// Resolves on the next SIGTERM or SIGINT.
    pub next_signal: Pin<Box<dyn Future<Output = Signal> + Send>>,
}

/// A shutdown asked for by `signal`, with no further signal to come (for tests and embedding).
impl From<Signal> for Shutdown {
    fn from(signal: Signal) -> Self {
        Self {
            signal,
            next_signal: Box::pin(std::future::pending()),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C). The handlers are installed by this call,
/// not on first poll, so a signal that arrives while the server is still starting (during a
/// token warm-up) is not lost to the default action; it begins the shutdown as soon as the
/// server is up. Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = Shutdown> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .inspect_err(|error| tracing::error!(%error, signal = name, "cannot listen for it"))
                .ok()
        };
        let mut signals = UnixSignals {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        };
        async move {
            let signal = signals.next().await;
            Shutdown {
                signal,
                next_signal: Box::pin(async move { signals.next().await }),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received");
        Signal::Interrupt.into()
    }
}

#[cfg(unix)]
struct UnixSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl UnixSignals {
    /// The next SIGTERM or SIGINT, logged.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = received(self.terminate.as_mut()) => {
                tracing::info!("SIGTERM received");
                Signal::Terminate
            }
            _ = received(self.interrupt.as_mut()) => {
                tracing::info!("SIGINT received");
                Signal::Interrupt
            }
        }
    }
}

/// The next delivery of `signal`; never, when it could not be listened for.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
