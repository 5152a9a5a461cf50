//! The HTTP side of the local store: GET, HEAD and PUT of objects through signed URLs.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use spillway_storage::{ObjectKey, PresignMethod, PutOptions, PutPayload, StorageError};
use tokio_util::io::ReaderStream;

use crate::disk::MAX_HEADER_VALUE_LEN;
use crate::sign::{self, now_unix};
use crate::LocalStore;

/// Read size for streaming object bodies.
const READ_CHUNK: usize = 64 * 1024;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

pub(crate) fn router(store: Arc<LocalStore>) -> Router {
    Router::new()
        .route("/{*key}", any(handle))
        .with_state(store)
}

/// Why a request was not served, before it becomes a response.
enum Reject {
    Storage(StorageError),
    BadHeader(&'static str),
    MethodNotAllowed,
}

impl From<StorageError> for Reject {
    fn from(e: StorageError) -> Self {
        Reject::Storage(e)
    }
}

async fn handle(
    State(store): State<Arc<LocalStore>>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The path extractor percent-decodes, so "%2e%2e" and "%2F" arrive decoded here and meet
    // the same key validation as literal ones.
    let key = match path {
        Ok(Path(raw)) => ObjectKey::parse(&raw),
        Err(_) => Err(StorageError::InvalidKey {
            reason: "path is not valid utf-8".to_string(),
        }),
    };
    let logged_key = key
        .as_ref()
        .map(|k| k.as_str().to_string())
        .unwrap_or_else(|_| "<invalid>".to_string());
    let result = match method {
        Method::GET | Method::HEAD | Method::PUT => match key {
            Ok(key) => serve(&store, &method, &key, query.as_deref(), &headers, body).await,
            Err(e) => Err(Reject::Storage(e)),
        },
        _ => Err(Reject::MethodNotAllowed),
    };
    let response = result.unwrap_or_else(|reject| reject_response(reject, &logged_key));
    // The query holds the signature, so it is never logged; the key alone identifies the object.
    tracing::debug!(
        method = %method,
        key = %logged_key,
        status = response.status().as_u16(),
        "local store request"
    );
    response
}

async fn serve(
    store: &LocalStore,
    method: &Method,
    key: &ObjectKey,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    let signed = sign::parse_query(query)?;
    let signed_for = store.signer.verify(key, &signed, now_unix())?;
    let wanted = if method == Method::PUT {
        PresignMethod::Put
    } else {
        PresignMethod::Get
    };
    if signed_for != wanted {
        return Err(StorageError::UrlRefused {
            reason: format!("url is signed for {}", signed_for.as_str()),
        }
        .into());
    }
    if method == Method::PUT {
        serve_put(store, key, headers, body).await
    } else {
        serve_get(store, key, method == Method::HEAD, headers).await
    }
}

/// The outcome of a `Range` header against an object of known size.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// No usable range: serve the whole object.
    Full,
    /// Serve `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// A well-formed range that lies outside the object.
    Unsatisfiable,
}

/// Digits only (no sign, no spaces); saturates so that an absurd last-byte position still
/// means "to the end".
fn parse_position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Interprets a single-range `bytes=` header. Anything malformed, multi-range or in another
/// unit is ignored (RFC 9110 section 14.2 lets a server serve the full representation).
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(suffix) = parse_position(last) else {
            return RangeRequest::Full;
        };
        if suffix == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: size.saturating_sub(suffix),
            end: size,
        };
    }
    let Some(start) = parse_position(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        size
    } else {
        let Some(last) = parse_position(last) else {
            return RangeRequest::Full;
        };
        if last < start {
            return RangeRequest::Full;
        }
        last.saturating_add(1).min(size)
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

async fn serve_get(
    store: &LocalStore,
    key: &ObjectKey,
    head_only: bool,
    headers: &HeaderMap,
) -> Result<Response, Reject> {
    let object = store.disk.open(key).await?;
    let size = object.meta.size;
    // Range handling is defined for GET only; HEAD describes the whole object.
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) if !head_only => parse_range(v, size),
        _ => RangeRequest::Full,
    };
    let (status, start, end) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            return Err(StorageError::RangeNotSatisfiable { size }.into());
        }
    };
    let len = end - start;
    let meta = &object.meta;
    let mut builder = Response::builder()
        .status(status)
        .header(
            header::CONTENT_TYPE,
            meta.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE),
        )
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(encoding) = &meta.content_encoding {
        builder = builder.header(header::CONTENT_ENCODING, encoding.as_str());
    }
    if let Some(etag) = &meta.etag {
        builder = builder.header(header::ETAG, etag.as_str());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", start, end - 1, size),
        );
    }
    let body = if head_only {
        Body::empty()
    } else {
        let reader = object.into_reader(start, len).await?;
        Body::from_stream(ReaderStream::with_capacity(reader, READ_CHUNK))
    };
    builder
        .body(body)
        .map_err(|e| StorageError::Backend(format!("cannot build response: {e}")).into())
}

/// A request header as a string, refusing values we could not echo back unchanged.
fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, Reject> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(Reject::BadHeader("header value too long"));
    }
    value
        .to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| Reject::BadHeader("header value is not visible ascii"))
}

async fn serve_put(
    store: &LocalStore,
    key: &ObjectKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Reject> {
    let limit = store.max_object_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    // Checked before anything else so that an oversized upload is refused unread.
    if let Some(size) = declared {
        if size > limit {
            return Err(StorageError::TooLarge { size, limit }.into());
        }
    }
    let opts = PutOptions {
        content_type: header_string(headers, header::CONTENT_TYPE)?,
        content_encoding: header_string(headers, header::CONTENT_ENCODING)?,
    };
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(io::Error::other))
        .boxed();
    let payload = PutPayload::Stream {
        stream,
        size_hint: declared,
    };
    let meta = store.disk.write(key, payload, opts, limit).await?;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, 0);
    if let Some(etag) = &meta.etag {
        builder = builder.header(header::ETAG, etag.as_str());
    }
    builder
        .body(Body::empty())
        .map_err(|e| StorageError::Backend(format!("cannot build response: {e}")).into())
}

fn plain(status: StatusCode, message: &str) -> Response {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn reject_response(reject: Reject, key: &str) -> Response {
    match reject {
        Reject::MethodNotAllowed => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            r
        }
        Reject::BadHeader(why) => plain(StatusCode::BAD_REQUEST, why),
        Reject::Storage(err) => match err {
            StorageError::UrlRefused { reason } => plain(StatusCode::FORBIDDEN, &reason),
            StorageError::InvalidKey { .. } => plain(StatusCode::BAD_REQUEST, "invalid object key"),
            StorageError::NotFound { .. } => plain(StatusCode::NOT_FOUND, "not found"),
            StorageError::TooLarge { .. } => {
                plain(StatusCode::PAYLOAD_TOO_LARGE, "object too large")
            }
            StorageError::UploadAborted { .. } => plain(StatusCode::BAD_REQUEST, "upload aborted"),
            StorageError::Full { reason } => {
                tracing::error!(key, %reason, "local store upload refused: no space");
                plain(StatusCode::INSUFFICIENT_STORAGE, "local store disk is full")
            }
            StorageError::RangeNotSatisfiable { size } => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            other => {
                tracing::warn!(key, error = %other, "local store request failed");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal storage error")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        let p = |start, end| Partial { start, end };
        for (header, size, want) in [
            ("bytes=0-0", 10, p(0, 1)),
            ("bytes=2-5", 10, p(2, 6)),
            ("bytes=2-", 10, p(2, 10)),
            ("bytes=-3", 10, p(7, 10)),
            ("bytes=-30", 10, p(0, 10)),
            ("bytes=5-100", 10, p(5, 10)),
            ("bytes=0-99999999999999999999999", 10, p(0, 10)),
            ("BYTES = 1-2", 10, p(1, 3)),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=-1", 0, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=5-2", 10, Full),
            ("bytes=0-1,3-4", 10, Full),
            ("bytes=a-b", 10, Full),
            ("bytes=+1-2", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes=1", 10, Full),
            ("items=0-1", 10, Full),
            ("", 10, Full),
        ] {
            assert_eq!(
                parse_range(header, size),
                want,
                "{header:?} on {size} bytes"
            );
        }
    }
}
