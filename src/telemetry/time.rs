//! The timestamp of every log line: RFC 3339 in UTC with microseconds
//! (`2026-11-29T16:26:33.739880Z`), as tracing-subscriber's own `SystemTime` writes it, but
//! formatted by humantime into one fixed buffer rather than piece by piece through `core::fmt`:
//! ~1,700 fewer instructions on a line the service writes for every call (callgrind,
//! docs/benchmarks.md).

use std::fmt;

use tracing_subscriber::fmt::{format::Writer, time::FormatTime};

/// See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, writer: &mut Writer<'_>) -> fmt::Result {
        let now = std::time::SystemTime::now();
        // humantime refuses (panics on) a clock before 1970; tracing-subscriber's writes it.
        if now < std::time::UNIX_EPOCH {
            return tracing_subscriber::fmt::time::SystemTime.format_time(writer);
        }
        write!(writer, "{}", humantime::format_rfc3339_micros(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(timer: &impl FormatTime) -> String {
        let mut text = String::new();
        timer.format_time(&mut Writer::new(&mut text)).unwrap();
        text
    }

    #[test]
    fn same_shape_as_tracing_subscribers_timestamps() {
        let ours = render(&Rfc3339Micros);
        let theirs = render(&tracing_subscriber::fmt::time::SystemTime);
        assert_eq!(ours.len(), "2026-11-29T16:26:33.739880Z".len(), "{ours}");
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert!(ours.ends_with('Z'));
        // Taken a moment apart: the same date, hour and minute but for a minute boundary.
        assert!(
            ours[..16] == theirs[..16] || ours[17..19] == *"59" || theirs[17..19] == *"00",
            "{ours} vs {theirs}"
        );
    }
}
