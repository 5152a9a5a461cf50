//! The call span: one OpenTelemetry server span per RPC and per stream step, continuing the
//! caller's trace (see [`crate::telemetry`]).

use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::RequestExt;
use tracing::field::Empty;
use tracing::Instrument;

use super::state::{AppState, RequestId};
use crate::telemetry;
use crate::wire::{http, Metadata};

/// The `tracing` name of the call span (its OpenTelemetry name is `vgi_rpc/{method}`, the
/// reference's).
pub(crate) const CALL_SPAN: &str = "vgi_rpc.call";

/// Response extension: the call span's ids (32 and 16 lowercase hex digits), for the access
/// log written outside the span.
#[derive(Debug, Clone)]
#[allow(dead_code)] // read by the access log
pub(crate) struct CallTrace {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
}

/// Route layer of the RPC routes, outside authentication: opens the call span with the
/// parent named by the `traceparent` header and records the outcome. The span is entered but
/// not started until the request batch is read, so a `traceparent` in its metadata can still
/// take over ([`continue_from_metadata`]). Without an OpenTelemetry layer (or a log level
/// showing debug spans) the span is disabled and this is a pass-through.
pub(crate) async fn trace_call(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Ok(params) = req.extract_parts::<RawPathParams>().await else {
        return next.run(req).await;
    };
    let mut protocol = None;
    let mut method = None;
    for (k, v) in &params {
        match k {
            "protocol" => protocol = Some(v.to_string()),
            "method" => method = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(protocol), Some(method)) = (protocol, method) else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let step = if route.ends_with("/init") {
        Some("init")
    } else if route.ends_with("/exchange") {
        Some("exchange")
    } else {
        None
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let span = tracing::debug_span!(
        target: "spillway::rpc",
        CALL_SPAN,
        otel.name = %format!("vgi_rpc/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "vgi_rpc",
        rpc.service = %protocol,
        rpc.method = %method,
        rpc.vgi_rpc.method_type = if step.is_some() { "stream" } else { "unary" },
        rpc.vgi_rpc.stream_step = step,
        rpc.vgi_rpc.request_id = %request_id,
        rpc.vgi_rpc.server_id = %st.config.server_id,
        http.response.status_code = Empty,
        rpc.vgi_rpc.error = Empty,
    );
    if span.is_disabled() {
        return next.run(req).await;
    }
    if let Some(cx) = telemetry::extract_headers(req.headers()) {
        telemetry::continue_trace(&span, cx);
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Some((trace_id, span_id)) = telemetry::span_ids(&span) {
        resp.extensions_mut()
            .insert(CallTrace { trace_id, span_id });
    }
    let status = resp.status().as_u16();
    // A handler failure is answered 200 + X-VGI-RPC-Error (the server's fault: ERROR, as the
    // reference's server-fault codes); a 4xx is the caller's and leaves the status unset.
    let flagged = resp.headers().contains_key(http::RPC_ERROR);
    span.record("http.response.status_code", telemetry::int(status));
    span.record("rpc.vgi_rpc.error", flagged || status >= 400);
    if flagged || status >= 500 {
        span.record("otel.status_code", "ERROR");
    } else if status < 400 {
        span.record("otel.status_code", "OK");
    }
    resp
}

/// Continues the trace named by `traceparent`/`tracestate` in request-batch metadata (they
/// win over the headers, as in the reference) in the current call span.
pub(crate) fn continue_from_metadata(metadata: &Metadata) {
    let span = tracing::Span::current();
    if span.metadata().is_some_and(|m| m.name() == CALL_SPAN) {
        if let Some(cx) = telemetry::extract_metadata(metadata) {
            telemetry::continue_trace(&span, cx);
        }
    }
}
