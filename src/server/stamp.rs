//! The middleware every response passes: request id, capability headers, response
//! compression, `Connection: close` after an unread body, the access log and the request
//! metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::access_log::{self, AccessRecord, CallNotes};
use super::compress;
use super::response::ExternalizedBytes;
use super::rpc_call;
use super::state::{AppState, RequestId};
use crate::wire::http;

/// Stamps the capability headers and `X-Request-ID` on every response, errors included, and
/// writes the access log line.
pub(crate) async fn stamp_headers(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let RequestId(request_id) = req
        .headers()
        .get(http::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| RequestId(format!("{:016x}", rand::random::<u64>())));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route template, not the path: keys and protocol names must not explode label sets.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let rpc = rpc_call::classify(&st, &route, &path);
    let remote_addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    // Decremented on drop, so a call abandoned by its client is not counted forever.
    struct InFlight(metrics::Gauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    // Only RPC answers (POST) are compressed; object downloads keep their stored encoding,
    // ranges and lengths.
    let codec = (st.config.response_compression && req.method() == axum::http::Method::POST)
        .then(|| compress::negotiate(req.headers()))
        .flatten();
    let in_flight = InFlight(metrics::gauge!("spillway_http_requests_in_flight"));
    in_flight.0.increment(1.0);
    // A response sent before the request body was read to the end makes hyper drop the
    // connection after it, without telling the client; say `Connection: close` so the client
    // does not reuse it for its next request.
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let body_done = Arc::new(AtomicBool::new(!has_body));
    // The request body as received (before decompression), for the access log.
    let request_bytes = Arc::new(AtomicU64::new(0));
    if has_body {
        let flag = body_done.clone();
        let counted = request_bytes.clone();
        let (parts, body) = req.into_parts();
        let tracked = futures::StreamExt::chain(
            futures::StreamExt::inspect(body.into_data_stream(), move |chunk| {
                if let Ok(c) = chunk {
                    counted.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
            }),
            futures::stream::once(async move {
                flag.store(true, Ordering::SeqCst);
                Ok::<_, axum::Error>(bytes::Bytes::new())
            }),
        );
        req = Request::from_parts(parts, axum::body::Body::from_stream(tracked));
    }
    let notes = Arc::new(Mutex::new(CallNotes {
        server_id: Some(st.server_id.clone()),
        ..CallNotes::default()
    }));
    let resp = access_log::run(notes.clone(), next.run(req)).await;
    let mut resp = compress::compress_response(codec, resp).await;
    drop(in_flight);
    if !body_done.load(Ordering::SeqCst) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let h = resp.headers_mut();
    let cfg = &st.config;
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(http::ACCEPT_MAX_RESPONSE_BYTES_SUPPORT, "true".into());
    set(
        http::EXTERNALIZATION_ENABLED,
        st.externalizer.is_some().to_string(),
    );
    // Present but empty when compression is off: "speaks no compression", unlike a legacy
    // server's absent header.
    set(
        http::SUPPORTED_ENCODINGS,
        if cfg.response_compression {
            compress::RESPONSE_CODECS.join(", ")
        } else {
            String::new()
        },
    );
    set(http::MAX_REQUEST_BYTES, cfg.max_request_bytes.to_string());
    if st.storage.is_some() {
        set(http::UPLOAD_URL_SUPPORT, "true".into());
        set(http::MAX_UPLOAD_BYTES, cfg.max_upload_bytes.to_string());
    }
    if let Some(m) = cfg.max_response_bytes {
        set(http::MAX_RESPONSE_BYTES, m.to_string());
    }
    if let (Some(_), Some(m)) = (&st.externalizer, cfg.externalize.max_externalized_bytes) {
        set(http::MAX_EXTERNALIZED_RESPONSE_BYTES, m.to_string());
    }
    set(http::REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    let externalized = resp
        .extensions()
        .get::<ExternalizedBytes>()
        .map(|e| e.0)
        .unwrap_or(0);
    let elapsed = started.elapsed();
    let labels = [
        ("route", route),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    metrics::counter!("spillway_http_requests_total", &labels).increment(1);
    metrics::histogram!("spillway_http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    let rpc_error = resp.headers().contains_key(http::RPC_ERROR);
    if let Some(rpc) = &rpc {
        // A refusal (4xx, 503) and an EXCEPTION answered as 200 + X-VGI-RPC-Error both fail.
        let ok = resp.status().is_success() && !rpc_error;
        rpc_call::record(rpc, ok, elapsed);
        if let (Some(protocol), Some(rpc_method), true) =
            (&rpc.protocol, &rpc.method, cfg.access_log)
        {
            let mut notes = notes.lock().map(|n| n.clone()).unwrap_or_default();
            // A stream turn refused before its tokens were read or issued still names a
            // stream, as the schema requires: a fresh one, which no other turn shares.
            if rpc.method_type == rpc_call::MethodType::Stream && notes.stream_id.is_none() {
                notes.stream_id = Some(format!("{:032x}", rand::random::<u128>()));
            }
            access_log::submit(AccessRecord {
                at: std::time::SystemTime::now(),
                server_id: &cfg.server_id,
                server_version: env!("CARGO_PKG_VERSION"),
                protocol: protocol.name(),
                protocol_hash: st
                    .protocol_hashes
                    .get(protocol.name())
                    .map(String::as_str)
                    .unwrap_or_default(),
                method: rpc_method,
                method_type: rpc.method_type,
                remote_addr,
                duration: elapsed,
                http_status: status,
                rpc_error,
                request_id: &request_id,
                request_bytes: Some(request_bytes.load(Ordering::Relaxed)),
                response_bytes: http_body::Body::size_hint(resp.body()).exact(),
                externalized_bytes: externalized,
                notes: &notes,
                // Put on the response by the call span's layer (`trace::trace_call`), which
                // runs inside this one: here the span is already closed.
                trace: resp
                    .extensions()
                    .get::<super::trace::CallTrace>()
                    .map(|t| (t.trace_id.clone(), t.span_id.clone())),
                dropped: 0,
            });
        }
    }
    // The HTTP-level line: the access record above is the one per call at INFO.
    tracing::debug!(
        target: "spillway::access",
        %method,
        path = %path,
        status,
        externalized_bytes = externalized,
        rpc_error,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        "request"
    );
    resp
}
