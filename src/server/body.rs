//! Reading request bodies within `max_request_bytes`, before and after decoding.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::admission::refusal;
use super::body_rate::BodyTooSlow;
use super::memory::CallMemory;
use super::response::{json_error, request_too_large, ApiError};
use crate::error::Error;
use crate::object::decode_content;
use crate::wire::http::{collect_capped, normalize_content_encoding, CappedError};
use crate::wire::{RpcError, ARROW_STREAM_CONTENT_TYPE};

/// Rejects anything but the exact Arrow stream content type (415, Arrow error body).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if ct == Some(ARROW_STREAM_CONTENT_TYPE) {
        return Ok(());
    }
    Err(ApiError::client(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RpcError::invalid_argument(format!(
            "Content-Type must be {ARROW_STREAM_CONTENT_TYPE}, got {}",
            ct.map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "none".into())
        )),
    )
    .into_response())
}

/// Reads the body: 413 when Content-Length or the bytes streamed exceed `cap` (never reading
/// more than cap + 1 bytes), then decodes a `zstd`/`gzip` Content-Encoding, 413 again when the
/// decoded body exceeds `cap`, 415 for other encodings, 400 for undecodable data. The coding
/// is read as the wire spec reads it ([`normalize_content_encoding`]: parameters dropped,
/// case and spaces ignored).
///
/// The bytes are reserved in the call's `memory` before they are read (the declared length,
/// else the cap, trimmed to what came), and the decoded body's too; a reservation that is
/// refused answers 503.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    cap: u64,
    memory: &CallMemory,
) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > cap {
            return Err(request_too_large(cap));
        }
    }
    let reserved = declared.unwrap_or(cap);
    memory.reserve(reserved).await.map_err(|e| refusal(&e))?;
    let encoding = normalize_content_encoding(
        headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?")),
    );
    match encoding.as_deref() {
        None | Some("zstd") | Some("gzip") => {}
        Some(other) => {
            return Err(json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Content-Encoding",
                &format!("Content-Encoding {other:?} is not supported; use zstd, gzip or none"),
            ))
        }
    }
    // No declared length here: it was checked above, and pre-sizing on a client's word would
    // let an empty request reserve the whole cap.
    let raw = collect_capped(body.into_data_stream(), None, cap)
        .await
        .map_err(|e| match e {
            CappedError::TooLarge { .. } => request_too_large(cap),
            CappedError::Stream(e) if BodyTooSlow::find(&e).is_some() => {
                let mut resp = json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "Request body too slow",
                    &e.to_string(),
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                resp
            }
            CappedError::Stream(e) => {
                ApiError::bad_request(format!("error reading the request body: {e}"))
                    .into_response()
            }
        })?;
    memory.release(reserved.saturating_sub(raw.len() as u64));
    match encoding.as_deref() {
        Some("zstd") | Some("gzip") => {
            // A top-up: the raw body is read and held already.
            memory.top_up(cap).await.map_err(|e| refusal(&e))?;
            let enc = encoding.clone();
            let decoded =
                tokio::task::spawn_blocking(move || decode_content(raw, enc.as_deref(), cap))
                    .await
                    .map_err(|e| {
                        ApiError::server(RpcError::internal(format!("decoder task failed: {e}")))
                            .into_response()
                    })?;
            let decoded_len = decoded.as_ref().map(|b| b.len() as u64).unwrap_or(0);
            memory.release(cap.saturating_sub(decoded_len));
            match decoded {
                Ok(b) => Ok(b),
                Err(Error::TooLarge { .. }) => Err(request_too_large(cap)),
                Err(e) => Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid request body encoding",
                    &e.to_string(),
                )),
            }
        }
        _ => Ok(raw),
    }
}
