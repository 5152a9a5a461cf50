//! Resolving request pointers that clients send after uploading a large request.
//!
//! The server never fetches a URL a client names. It accepts only download URLs of its own
//! storage, maps them back to a key ([`Storage::key_from_url`]) and reads through the storage
//! itself, so a pointer cannot make the server reach into its network.

use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use spillway_storage::{collect_capped, CappedError, Storage, StorageError};
use tracing::Instrument;
use url::Url;

use super::memory::CallMemory;
use super::state::AppState;
use crate::error::{Error, Result};
use crate::object::{decode_content, decode_content_metered, resolve_object, ResolvedBatch};
use crate::wire::{keys, Metadata};

/// Resolves the pointer `outer` (metadata `md`) into the request batch it stands for, which
/// must be on `params`.
///
/// The object's bytes and its decoded form are reserved in the call's `memory` as they are
/// read and decoded (503 when the budget has no room for them).
pub(crate) async fn resolve_request_pointer(
    st: &AppState,
    md: &Metadata,
    params: &SchemaRef,
    request_id: &str,
    memory: &CallMemory,
) -> Result<ResolvedBatch> {
    let span = tracing::debug_span!(
        "spillway.request_pointer",
        otel.name = "spillway.request_pointer/read",
        otel.status_code = tracing::field::Empty,
        url.full = tracing::field::Empty,
        rpc.vgi_rpc.request_id = request_id,
        source = if st.config.request_pointer_fetcher.is_some() {
            "fetch"
        } else {
            "storage"
        },
        bytes = tracing::field::Empty,
    );
    let result = resolve(st, md, params, request_id, memory)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(_) => span.record("otel.status_code", "OK"),
        Err(_) => span.record("otel.status_code", "ERROR"),
    };
    result
}

async fn resolve(
    st: &AppState,
    md: &Metadata,
    params: &SchemaRef,
    request_id: &str,
    memory: &CallMemory,
) -> Result<ResolvedBatch> {
    let raw_url = md
        .get(keys::LOCATION)
        .ok_or_else(|| Error::Protocol("pointer without vgi_rpc.location".into()))?;
    tracing::Span::current().record("url.full", crate::telemetry::url_attribute(raw_url));
    if let Some(fetcher) = &st.config.request_pointer_fetcher {
        let pointer = crate::wire::MetaBatch {
            batch: RecordBatch::new_empty(params.clone()),
            metadata: md.clone(),
        };
        tracing::debug!(request_id, url = %spillway_storage::redact_url(raw_url), "fetching request pointer");
        return fetcher
            .resolve(&pointer, None)
            .await
            .map(|(resolved, _)| resolved);
    }
    let redacted = spillway_storage::redact_url(raw_url);
    let rejected = |reason: String| Error::UrlRejected {
        url: redacted.clone(),
        reason,
    };
    let url = Url::parse(raw_url).map_err(|e| rejected(format!("not a valid url: {e}")))?;
    let storage = st
        .storage
        .as_ref()
        .ok_or_else(|| rejected("this server has no storage to resolve pointers from".into()))?;
    let key = storage.key_from_url(&url).map_err(|e| match e {
        StorageError::ForeignUrl { .. } => rejected(
            "not a url of this server's storage (the server only reads its own storage)".into(),
        ),
        StorageError::UrlRefused { reason } => rejected(reason),
        StorageError::InvalidKey { reason } => rejected(format!("invalid object key: {reason}")),
        other => Error::Storage(other),
    })?;
    let started = Instant::now();
    let cap = st.config.max_upload_bytes;
    let got = storage.get(&key, None).await?;
    tracing::Span::current().record("bytes", crate::telemetry::int(got.meta.size));
    // The stored size is known before the first byte is read; one over the cap is refused
    // below without reserving it.
    if got.meta.size <= cap {
        memory.reserve(got.meta.size).await?;
    }
    let too_large = |size: String| Error::TooLarge {
        what: format!("request object of {size} bytes"),
        limit_name: "max_fetch_bytes",
        limit: cap,
    };
    let buf = collect_capped(got.stream, Some(got.meta.size), cap)
        .await
        .map_err(|e| match e {
            CappedError::TooLarge {
                seen,
                declared: true,
                ..
            } => too_large(seen.to_string()),
            CappedError::TooLarge { .. } => too_large(format!("more than {cap}")),
            CappedError::Stream(e) => Error::Storage(e),
        })?;
    let encoding = got.meta.content_encoding.clone();
    let sha = md.get(keys::LOCATION_SHA256).cloned();
    let params = params.clone();
    let source = raw_url.clone();
    tracing::debug!(request_id, url = %redacted, bytes = buf.len(), "resolving request pointer");
    let memory = memory.clone();
    tokio::task::spawn_blocking(move || {
        let decoded = if encoding.is_some() {
            decode_content_metered(buf, encoding.as_deref(), cap, &mut |n| {
                memory.reserve_blocking(n).map_err(Error::from)
            })?
        } else {
            decode_content(buf, None, cap)?
        };
        resolve_object(decoded, &params, sha.as_deref(), &source, started.elapsed())
    })
    .await
    .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
}

#[allow(dead_code)]
fn _assert_object_safe(_: &dyn Storage) {}
