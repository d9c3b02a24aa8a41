//! The `listening` line the binary logs once its listeners are bound: tests start it with port 0
//! everywhere and read the ports it got from that line, so no port is chosen by the test,
//! released, and bound again by the child (where something else may have taken it meanwhile).
//! Standalone (std only).
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::Path,
    process::Child,
    time::{Duration, Instant},
};

/// How long a child may take to bind its listeners.
const LISTENING_TIMEOUT: Duration = Duration::from_secs(30);

/// The addresses of a `listening` line, as bound.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// With a push listener.
    pub push: Option<SocketAddr>,
    /// With `--sandbox`.
    pub sandbox: Option<SocketAddr>,
}

impl Listening {
    /// The addresses of a text log line
    /// `... wechat_notify::cli: listening grpc=A metrics=B [push=C] [sandbox=D]`.
    pub fn parse(line: &str) -> Option<Listening> {
        let (_, fields) = line.split_once(": listening ")?;
        let field = |name: &str| {
            fields
                .split_whitespace()
                .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
                .map(|addr| addr.parse().expect("an address"))
        };
        Some(Listening {
            grpc: field("grpc")?,
            metrics: field("metrics")?,
            push: field("push"),
            sandbox: field("sandbox"),
        })
    }

    /// Waits for `child` to log the line into `logs` (its stderr, as text, at `info` for the
    /// `wechat_notify::cli` target at least). An error, with the log, if the child exits first
    /// or does not listen within 30 s (the caller stops it).
    pub fn wait(logs: &Path, child: &mut Child) -> Result<Listening, String> {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(logs).unwrap_or_default();
            if let Some(listening) = text.lines().find_map(Listening::parse) {
                return Ok(listening);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the binary exited ({status}) before listening:\n{text}"
                ));
            }
            if started.elapsed() > LISTENING_TIMEOUT {
                return Err(format!(
                    "no listening line within {LISTENING_TIMEOUT:?}:\n{text}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
