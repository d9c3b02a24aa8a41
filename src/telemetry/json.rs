//! JSON log lines with the fields of every enclosing span flattened into the line, so each line
//! of a call carries `request_id`, `method`, `app` and `template_id` at the top level, where log
//! pipelines can index them (tracing-subscriber's own JSON nests them in a `spans` array).

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormattedFields,
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// One JSON object per line: `timestamp`, `level`, `target`, the span fields (outermost first,
/// inner ones win), `spans` (names, outermost first), then the event's fields with `message`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        let mut timestamp = String::new();
        // tracing-subscriber's own timestamp, as on text lines: RFC 3339, UTC, microseconds.
        if SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            line.insert("timestamp".into(), Value::String(timestamp));
        }
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope.from_root() {
                names.push(Value::from(span.name()));
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields.as_str()) {
                    line.extend(fields);
                }
            }
            line.insert("spans".into(), Value::Array(names));
        }
        event.record(&mut Visitor(&mut line));
        let rendered = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{rendered}")
    }
}

/// Writes an event's fields into the line.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn span_fields_are_flattened_into_every_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(FlatJson)
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("rpc", request_id = "rid-1", app = "");
            let _outer = outer.enter();
            let inner = tracing::info_span!("send_subscribe", app = tracing::field::Empty);
            let _inner = inner.enter();
            inner.record("app", "demo");
            tracing::info!(code = "OK", attempts = 2u32, "message sent");
        });
        let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(line["request_id"], "rid-1");
        assert_eq!(line["app"], "demo", "the inner span's field wins");
        assert_eq!(line["code"], "OK");
        assert_eq!(line["attempts"], 2);
        assert_eq!(line["message"], "message sent");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["spans"], serde_json::json!(["rpc", "send_subscribe"]));
    }
}
