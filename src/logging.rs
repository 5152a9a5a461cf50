//! Log output of the command line: `tracing` events to stderr, as text or JSON lines, each
//! carrying the server id when there is one.
//!
//! The subscriber is a `tracing_subscriber::registry()` with layers: the log output (with
//! its own level filter) and OpenTelemetry's ([`crate::telemetry`]); another layer is one
//! more `.with(...)` in [`init`].

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the process's subscriber: levels from `RUST_LOG` (else `default`), lines in
/// `format` on stderr, each with `server_id` when given (a `server_id` field in JSON, a
/// trailing `server_id=...` in text). A second call does nothing.
pub fn init(default: &str, format: LogFormat, server_id: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let server_id = server_id.map(str::to_string);
    let fmt_layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = match format {
        LogFormat::Json => fmt_layer
            .event_format(WithServerId {
                inner: tracing_subscriber::fmt::format().json(),
                server_id,
                json: true,
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
        LogFormat::Text => fmt_layer
            .event_format(WithServerId {
                inner: tracing_subscriber::fmt::format(),
                server_id,
                json: false,
            })
            .boxed(),
    };
    // The filter is the log output's own (a per-layer filter): the OpenTelemetry layer sees
    // Spillway's debug spans whatever the log level.
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(crate::telemetry::init())
        .try_init();
}

use tracing_subscriber::Layer as _;

/// An event format that adds the server id to every line the inner format writes.
struct WithServerId<F> {
    inner: F,
    server_id: Option<String>,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithServerId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = &self.server_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Formatted into a buffer, then amended: the inner formats take no extra fields.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_server_id(&line, id, self.json))
    }
}

/// `line` (one formatted event, ending in a newline) with `id` added: as the first field of a
/// JSON object, or as a trailing `server_id=` field of a text line.
fn with_server_id(line: &str, id: &str, json: bool) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if json {
        if let Some(rest) = body.strip_prefix('{') {
            let sep = if rest.starts_with('}') { "" } else { "," };
            let quoted = serde_json::Value::from(id).to_string();
            return format!("{{\"server_id\":{quoted}{sep}{rest}\n");
        }
        return line.to_string();
    }
    format!("{body} server_id={id}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_id_joins_json_and_text_lines() {
        let json = with_server_id("{\"level\":\"INFO\",\"fields\":{}}\n", "pod-1", true);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["server_id"], "pod-1");
        assert_eq!(v["level"], "INFO");
        assert!(json.ends_with("}\n"));
        assert_eq!(with_server_id("{}\n", "p", true), "{\"server_id\":\"p\"}\n");
        assert_eq!(
            with_server_id("2026 INFO spillway: hello a=1\n", "pod-1", false),
            "2026 INFO spillway: hello a=1 server_id=pod-1\n"
        );
    }
}
