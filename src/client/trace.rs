//! The client's call span (`vgi_rpc/{method}`, kind client) and its outcome; the trace
//! context it carries goes out in every RPC request's headers and request metadata (see
//! [`crate::telemetry`]).

use tracing::field::Empty;

use crate::error::{Error, Result};

/// The span of one client call or stream step (`step`: `init`, `exchange`), under whatever
/// span is current. Its children are the request attempts' pointer fetches.
pub(super) fn call_span(
    root: &str,
    protocol: &str,
    method: &str,
    step: Option<&str>,
) -> tracing::Span {
    let url = url::Url::parse(root).ok();
    tracing::debug_span!(
        target: "spillway::client",
        "vgi_rpc.client_call",
        otel.name = %format!("vgi_rpc/{method}"),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "vgi_rpc",
        rpc.service = protocol,
        rpc.method = method,
        rpc.vgi_rpc.stream_step = step,
        server.address = url.as_ref().and_then(|u| u.host_str().map(str::to_string)),
        server.port = url
            .as_ref()
            .and_then(url::Url::port_or_known_default)
            .map(crate::telemetry::int),
        error.type = Empty,
        rpc.vgi_rpc.error_code = Empty,
    )
}

/// Records how the call ended on its span.
pub(super) fn record_outcome<T>(span: &tracing::Span, result: &Result<T>) {
    match result {
        Ok(_) => {
            span.record("otel.status_code", "OK");
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            match e {
                Error::Rpc(rpc) => {
                    span.record("error.type", rpc.error_type.as_str());
                    span.record("rpc.vgi_rpc.error_code", tracing::field::debug(rpc.code));
                }
                other => {
                    span.record("error.type", error_kind(other));
                }
            }
        }
    }
}

/// A bounded label for a client-side failure (never its text, which may name a URL).
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::HttpStatus { .. } => "http_status",
        Error::Fetch { .. } => "fetch",
        Error::TooLarge { .. } => "too_large",
        Error::Protocol(_) => "protocol",
        Error::Unauthorized { .. } => "unauthorized",
        Error::RetriesExhausted { .. } => "retries_exhausted",
        Error::UrlRejected { .. } => "url_rejected",
        Error::Checksum { .. } => "checksum",
        _ => "client",
    }
}
