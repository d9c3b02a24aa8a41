//! Field formatting for text log lines: the same text as tracing-subscriber's `DefaultFields`,
//! written directly where that is simple.
//!
//! `DefaultFields` writes every `name=value` through `core::fmt` with `nu_ansi_term` wrappers
//! around the name and the `=`, even with colours off: about 1,000 instructions per field, and
//! the service's line per call has ten (docs/benchmarks.md). Here the name and `=` are written
//! as they are, then integers, booleans and strings of plain printable ASCII as they are, and
//! `Display` and `Debug` values through their own formatting; the `message`, errors, strings
//! that need escaping, raw `r#` names and every field of a line with colours on go through
//! tracing-subscriber's own `DefaultVisitor`, so the text is the same byte for byte (the tests
//! below compare the two).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{MakeVisitor, VisitFmt, VisitOutput},
    fmt::format::{DefaultVisitor, Writer},
};

/// A `FormatFields` for text lines; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        PlainVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one span's or event's fields, space-separated, as `DefaultVisitor` would.
pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Whether `field` may take the direct path: `DefaultVisitor` writes it as `name=` and the
    /// value's `Debug`, with nothing around them.
    fn plain(&self, field: &Field) -> bool {
        let name = field.name();
        self.result.is_ok()
            && !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// ` name=` (the space only between fields), then `value`.
    fn write_plain(&mut self, field: &Field, value: &str, quoted: bool) {
        let separator = if std::mem::take(&mut self.is_empty) {
            ""
        } else {
            " "
        };
        self.result = write_field(&mut self.writer, separator, field.name(), value, quoted);
    }

    /// Hands the field to tracing-subscriber's own visitor, continuing this line.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        // `DefaultVisitor` skips these without writing anything (log metadata already shown).
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }
}

fn write_field(
    writer: &mut Writer<'_>,
    separator: &str,
    name: &str,
    value: &str,
    quoted: bool,
) -> fmt::Result {
    writer.write_str(separator)?;
    writer.write_str(name)?;
    writer.write_char('=')?;
    if quoted {
        writer.write_char('"')?;
        writer.write_str(value)?;
        writer.write_char('"')
    } else {
        writer.write_str(value)
    }
}

/// A string `Debug` writes as itself between quotes: printable ASCII without `"` or `\`.
fn needs_no_escape(value: &str) -> bool {
    value
        .bytes()
        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\')
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.plain(field) {
            self.write_plain(field, itoa::Buffer::new().format(value), false);
        } else {
            self.delegate(field, |inner| inner.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.plain(field) {
            self.write_plain(field, itoa::Buffer::new().format(value), false);
        } else {
            self.delegate(field, |inner| inner.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.plain(field) {
            self.write_plain(field, if value { "true" } else { "false" }, false);
        } else {
            self.delegate(field, |inner| inner.record_bool(field, value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.plain(field) && needs_no_escape(value) {
            self.write_plain(field, value, true);
        } else {
            self.delegate(field, |inner| inner.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |inner| inner.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.plain(field) {
            // `name=` here, the value's own `Debug` (a `Display` for `%` fields) as it is.
            self.write_plain(field, "", false);
            if self.result.is_ok() {
                self.result = write!(self.writer, "{value:?}");
            }
        } else {
            self.delegate(field, |inner| inner.record_debug(field, value));
        }
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"failed\"")
        }
    }

    impl std::error::Error for Failure {}

    /// Every kind of field the service logs, and the awkward ones.
    fn log_everything() {
        let span = tracing::info_span!(
            "rpc",
            method = "SendSubscribe",
            request_id = %"6b0c5239-6e13",
            app = tracing::field::Empty,
            count = 3_u64,
        );
        span.record("app", tracing::field::display("shop"));
        let _entered = span.enter();
        tracing::info!(
            code = "OK",
            msgid = Some(u64::MAX),
            none = None::<u64>,
            attempts = 1_u32,
            signed = -42_i64,
            deduplicated = false,
            ratio = 0.5,
            latency_ms = 3_u64,
            "message sent"
        );
        tracing::warn!(
            quoted = "say \"hi\"",
            newline = "a\nb",
            backslash = r"a\b",
            chinese = "王小二",
            tab = "a\tb",
            empty = "",
            debug = ?vec![1, 2],
            display = %"plain text",
            display_escapes = %"two\nlines \"quoted\"",
            failure = %Failure,
            r#type = "raw",
            error = &Failure as &(dyn std::error::Error + 'static),
            "odd {} message",
            "formatted"
        );
        tracing::info!(code = "OK");
        tracing::info!("only a message");
    }

    fn render(plain: bool, ansi: bool) -> String {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(ansi)
            .with_writer(lines.clone());
        if plain {
            let subscriber = tracing_subscriber::registry().with(layer.fmt_fields(PlainFields));
            tracing::subscriber::with_default(subscriber, log_everything);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, log_everything);
        }
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_are_the_same_as_tracing_subscribers_own() {
        let ours = render(true, false);
        assert_eq!(ours, render(false, false));
        assert!(
            ours.contains(r#"code="OK" msgid=18446744073709551615 attempts=1"#),
            "{ours}"
        );
        assert!(ours.contains("app=shop"), "{ours}");
    }

    #[test]
    fn coloured_lines_are_the_same_too() {
        assert_eq!(render(true, true), render(false, true));
    }
}
