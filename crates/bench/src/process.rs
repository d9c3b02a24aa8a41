//! CPU time and memory of other processes, from `/proc` (Linux; elsewhere nothing is reported).
//!
//! CPU time is `utime + stime` from `/proc/PID/stat` (clock ticks of 1/100 s: `USER_HZ` is 100
//! on every Linux architecture this runs on), so it counts only the watched process however
//! busy the machine is: the measure that survives other work on the same cores.

use std::{fs, time::Duration};

use crate::report::ProcessUsage;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// One process's CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    user_ticks: u64,
    system_ticks: u64,
}

/// A watched process: its CPU time at the start of the measured interval.
#[derive(Debug)]
pub struct ProcessWatch {
    label: String,
    pid: u32,
    start: Option<CpuSample>,
}

impl ProcessWatch {
    /// Starts watching `pid`; with `reset_peak`, first resets its peak RSS (VmHWM) where the
    /// kernel allows it, so the reported peak belongs to the measured interval.
    pub fn start(label: &str, pid: u32, reset_peak: bool) -> Self {
        if reset_peak {
            // "5" resets VmHWM to the current RSS (Linux 4.0+); best effort.
            let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        Self {
            label: label.to_owned(),
            pid,
            start: cpu_sample(pid),
        }
    }

    /// What the process used since [`ProcessWatch::start`], per `messages`.
    pub fn finish(&self, messages: u64, elapsed: Duration) -> ProcessUsage {
        let end = cpu_sample(self.pid);
        let (user, system) = match (self.start, end) {
            (Some(start), Some(end)) => (
                end.user_ticks.saturating_sub(start.user_ticks) as f64 / TICKS_PER_SECOND,
                end.system_ticks.saturating_sub(start.system_ticks) as f64 / TICKS_PER_SECOND,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let cpu = user + system;
        ProcessUsage {
            label: self.label.clone(),
            pid: self.pid,
            cpu_user_secs: user,
            cpu_system_secs: system,
            cpu_utilisation: cpu / elapsed.as_secs_f64().max(f64::EPSILON),
            cpu_us_per_message: if messages == 0 {
                f64::NAN
            } else {
                cpu * 1e6 / messages as f64
            },
            peak_rss_kib: status_kib(&status, "VmHWM:"),
            rss_kib: status_kib(&status, "VmRSS:"),
        }
    }
}

fn cpu_sample(pid: u32) -> Option<CpuSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// `utime` and `stime` (fields 14 and 15). The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its closing parenthesis.
fn parse_stat(stat: &str) -> Option<CpuSample> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    Some(CpuSample {
        user_ticks: fields.next()?.parse().ok()?,
        system_ticks: fields.next()?.parse().ok()?,
    })
}

/// A `Name:   1234 kB` line of `/proc/PID/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (wechat (notify)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 3 0";
        let sample = parse_stat(stat).unwrap();
        assert_eq!((sample.user_ticks, sample.system_ticks), (250, 75));
        let status = "Name:\twechat-notify\nVmHWM:\t   30400 kB\nVmRSS:\t   29000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(30_400));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_watched() {
        let watch = ProcessWatch::start("self", std::process::id(), false);
        let usage = watch.finish(10, Duration::from_secs(1));
        if cfg!(target_os = "linux") {
            assert!(usage.cpu_user_secs >= 0.0);
            assert!(usage.peak_rss_kib.is_some_and(|kib| kib > 0));
        }
    }
}
