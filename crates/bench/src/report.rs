//! What a load run reports: throughput, latency percentiles, errors by code, and the watched
//! processes' CPU time per message and peak RSS. Text for people, JSON for scripts.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

/// The outcome of one load run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `send`, `batch` or `http`.
    pub scenario: String,
    /// `closed` (fixed calls in flight) or `open` (calls started on a schedule).
    pub mode: String,
    /// Where the load went.
    pub target: String,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// Connections the calls were spread over (gRPC scenarios; 0 for `http`, whose client
    /// pools its own).
    pub connections: usize,
    /// Calls started per second (open loop only).
    pub rate_per_sec: Option<f64>,
    /// Messages per call.
    pub messages_per_call: usize,
    /// Measured wall time, seconds.
    pub elapsed_secs: f64,
    /// Calls completed in the measured interval.
    pub calls: u64,
    /// Messages accepted (OK) in the measured interval.
    pub messages: u64,
    /// `messages / elapsed_secs`.
    pub messages_per_sec: f64,
    /// Failed messages by gRPC code name (or `TRANSPORT` / `HTTP_<status>`).
    pub errors: BTreeMap<String, u64>,
    /// Call latency.
    pub latency_us: Latency,
    /// The processes named with `--pid`.
    pub processes: Vec<ProcessUsage>,
}

/// Call latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

impl Latency {
    /// Percentiles of `samples` (microseconds; sorted in place).
    pub fn of(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |quantile: f64| {
            let rank = (quantile * samples.len() as f64).ceil() as usize;
            u64::from(samples[rank.clamp(1, samples.len()) - 1])
        };
        let sum: u64 = samples.iter().map(|&sample| u64::from(sample)).sum();
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: u64::from(samples[samples.len() - 1]),
            mean: sum / samples.len() as u64,
        }
    }
}

/// CPU time and memory of one watched process over the measured interval.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    pub label: String,
    pub pid: u32,
    /// User CPU seconds.
    pub cpu_user_secs: f64,
    /// System CPU seconds.
    pub cpu_system_secs: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cpu_utilisation: f64,
    /// (user + system) CPU microseconds per accepted message.
    pub cpu_us_per_message: f64,
    /// VmHWM, KiB: peak resident set (since start, or since `--reset-peak`).
    pub peak_rss_kib: Option<u64>,
    /// VmRSS at the end, KiB.
    pub rss_kib: Option<u64>,
}

impl Report {
    /// The report as one line of JSON (NaN, where nothing could be measured, becomes null).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.rate_per_sec {
            Some(rate) => format!(
                "open loop at {rate:.0} calls/s, at most {} in flight",
                self.concurrency
            ),
            None => format!("closed loop, {} in flight", self.concurrency),
        };
        writeln!(
            f,
            "{} -> {}: {mode}, {} connection(s), {} message(s) per call",
            self.scenario, self.target, self.connections, self.messages_per_call
        )?;
        writeln!(
            f,
            "  {:.1} s: {} calls, {} messages ok, {:.0} messages/s",
            self.elapsed_secs, self.calls, self.messages, self.messages_per_sec
        )?;
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
            ms(self.latency_us.p50),
            ms(self.latency_us.p90),
            ms(self.latency_us.p99),
            ms(self.latency_us.max),
            ms(self.latency_us.mean)
        )?;
        if self.errors.is_empty() {
            writeln!(f, "  errors: none")?;
        } else {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(code, count)| format!("{code} {count}"))
                .collect();
            writeln!(f, "  errors: {}", errors.join(", "))?;
        }
        for process in &self.processes {
            let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |kib| kib as f64 / 1024.0);
            writeln!(
                f,
                "  {} (pid {}): cpu {:.2} s user + {:.2} s sys ({:.2} cores) = {:.1} us/message; peak rss {:.1} MiB, rss {:.1} MiB",
                process.label,
                process.pid,
                process.cpu_user_secs,
                process.cpu_system_secs,
                process.cpu_utilisation,
                process.cpu_us_per_message,
                mib(process.peak_rss_kib),
                mib(process.rss_kib)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(
            (latency.p50, latency.p90, latency.p99, latency.max),
            (50, 90, 99, 100)
        );
        assert_eq!(latency.mean, 50);
        assert_eq!(Latency::of(&mut []).p99, 0);
    }
}
