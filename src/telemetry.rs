//! OpenTelemetry: W3C trace context in and out of calls, and (feature `otlp`) span export
//! over OTLP.
//!
//! Spillway's spans are ordinary `tracing` spans (targets under `spillway`, level `debug`
//! except `spillway.fetch`); [`tracing_opentelemetry`] turns them into OpenTelemetry spans
//! when its layer is installed. [`init`] builds that layer from the standard `OTEL_*`
//! variables and returns `None` when no OTLP endpoint is configured: then no layer is
//! installed at all and the spans stay disabled callsites (an atomic load each).
//!
//! Propagation is reusable by any hop: a server continues the caller's trace from the
//! `traceparent`/`tracestate` HTTP headers or, as the reference does (`vgi_rpc.otel`), from the
//! same two keys in the request batch's custom metadata, which win when both are present
//! ([`extract_headers`], [`extract_metadata`], [`continue_trace`]). A client (or a gateway's
//! upstream call) injects both ([`inject_headers`], [`inject_metadata`]).
//!
//! Attribute values never carry secrets: URLs go through [`url_attribute`] (scheme, host,
//! port and path only), and no header value other than the trace context is recorded.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context header and request-metadata key (`vgi_rpc.metadata.TRACEPARENT_KEY`).
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace state header and request-metadata key (`vgi_rpc.metadata.TRACESTATE_KEY`).
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` accepted from a peer (W3C: 32 members of at most 256 bytes, 512 is
/// what propagators must at least keep); longer ones are dropped, not truncated.
pub const MAX_TRACESTATE_BYTES: usize = 8192;
/// Longest `traceparent` accepted (the version-00 form is 55 bytes; later versions may add).
const MAX_TRACEPARENT_BYTES: usize = 256;

fn bounded(key: &str, value: &str) -> bool {
    let cap = if key == TRACESTATE {
        MAX_TRACESTATE_BYTES
    } else {
        MAX_TRACEPARENT_BYTES
    };
    value.len() <= cap
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|v| bounded(key, v))
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct HeaderSink<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct MetadataCarrier<'a>(&'a BTreeMap<String, String>);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| bounded(key, v))
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Collects what a propagator injects, so a caller's own values can win.
struct Collected(Vec<(String, String)>);

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

fn valid(cx: Context) -> Option<Context> {
    cx.span().span_context().is_valid().then_some(cx)
}

/// The caller's trace context from the `traceparent`/`tracestate` headers, when valid.
pub fn extract_headers(headers: &http::HeaderMap) -> Option<Context> {
    if !headers.contains_key(TRACEPARENT) {
        return None;
    }
    valid(TraceContextPropagator::new().extract(&HeaderCarrier(headers)))
}

/// The caller's trace context from request-batch metadata (`traceparent`, `tracestate`), as
/// the reference client sends it, when valid.
pub fn extract_metadata(metadata: &BTreeMap<String, String>) -> Option<Context> {
    if !metadata.contains_key(TRACEPARENT) {
        return None;
    }
    valid(TraceContextPropagator::new().extract(&MetadataCarrier(metadata)))
}

/// Makes `cx` the remote parent of `span`. Effective only before the span has started (its
/// first child span, or [`OpenTelemetrySpanExt::context`]); a no-op without the OpenTelemetry
/// layer.
pub fn continue_trace(span: &tracing::Span, cx: Context) {
    let _ = span.set_parent(cx);
}

/// The OpenTelemetry context of the current `tracing` span, when it is a valid, exported one.
fn current_context() -> Option<Context> {
    valid(tracing::Span::current().context())
}

/// Sets `traceparent` (and `tracestate`) on `headers` from the current span, replacing any
/// there. Nothing happens without an active OpenTelemetry span.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    if let Some(cx) = current_context() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderSink(headers));
    }
}

/// Adds `traceparent` (and `tracestate`) from the current span to request metadata, as the
/// reference client does. A `traceparent` the caller put there already is kept (a gateway
/// forwarding its caller's context, a test naming its own).
pub fn inject_metadata(metadata: &mut BTreeMap<String, String>) {
    if metadata.contains_key(TRACEPARENT) {
        return;
    }
    if let Some(cx) = current_context() {
        let mut out = Collected(Vec::new());
        TraceContextPropagator::new().inject_context(&cx, &mut out);
        metadata.extend(out.0);
    }
}

/// The current span's trace id (32 lowercase hex digits) and span id (16), for log records
/// that should point at their trace; `None` without an active OpenTelemetry span.
pub fn current_ids() -> Option<(String, String)> {
    span_ids(&tracing::Span::current())
}

/// [`current_ids`] of `span`.
pub fn span_ids(span: &tracing::Span) -> Option<(String, String)> {
    let cx = valid(span.context())?;
    let span = cx.span();
    let sc = span.span_context();
    Some((
        format!("{:032x}", sc.trace_id()),
        format!("{:016x}", sc.span_id()),
    ))
}

/// A count or size as a span attribute. `tracing-opentelemetry` exports only `i64` fields as
/// OTLP integers (a `u64`, `usize` or `u16` would arrive as a string), so numbers go
/// through here; beyond `i64::MAX` (never, for sizes) it saturates.
pub fn int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// A URL as a span attribute: scheme, host, port and path only. Query strings (presigned
/// signatures), fragments and user info never leave the process in an attribute.
pub fn url_attribute(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[cfg(feature = "otlp")]
mod export;
#[cfg(feature = "otlp")]
pub use export::{enabled_by_env, init, shutdown};

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn url_attributes_keep_scheme_host_and_path_only() {
        assert_eq!(
            url_attribute("https://user:pw@s3.example:9000/b/k?X-Amz-Signature=abc#f"),
            "https://s3.example:9000/b/k"
        );
        assert_eq!(
            url_attribute("http://127.0.0.1/objects/x?token=secret"),
            "http://127.0.0.1/objects/x"
        );
        assert_eq!(url_attribute("not a url"), "<unparseable url>");
    }

    #[test]
    fn trace_context_comes_from_headers_and_metadata() {
        let mut headers = http::HeaderMap::new();
        assert!(extract_headers(&headers).is_none());
        headers.insert(TRACEPARENT, TP.parse().unwrap());
        let cx = extract_headers(&headers).unwrap();
        assert_eq!(
            format!("{:032x}", cx.span().span_context().trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut md = BTreeMap::new();
        md.insert(TRACEPARENT.to_string(), TP.to_string());
        md.insert(TRACESTATE.to_string(), "k=v".to_string());
        let cx = extract_metadata(&md).unwrap();
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(format!("{:016x}", sc.span_id()), "00f067aa0ba902b7");
        assert!(sc.is_remote());
        assert_eq!(sc.trace_state().header(), "k=v");
    }

    #[test]
    fn malformed_or_oversized_context_is_ignored() {
        let mut md = BTreeMap::new();
        md.insert(TRACEPARENT.to_string(), "00-zz-yy-01".to_string());
        assert!(extract_metadata(&md).is_none());
        md.insert(TRACEPARENT.to_string(), format!("{TP}{}", "0".repeat(300)));
        assert!(extract_metadata(&md).is_none());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(
            extract_headers(&headers).is_none(),
            "an all-zero trace id is invalid"
        );
    }

    #[test]
    fn without_a_layer_nothing_is_injected() {
        let mut headers = http::HeaderMap::new();
        inject_headers(&mut headers);
        assert!(headers.is_empty());
        let mut md = BTreeMap::new();
        inject_metadata(&mut md);
        assert!(md.is_empty());
        assert!(current_ids().is_none());
    }
}
