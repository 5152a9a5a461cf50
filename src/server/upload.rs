//! `POST {prefix}/__upload_url__/init`: vends upload/download URL pairs for large requests.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use spillway_storage::PresignMethod;

use super::admission::Admitted;
use super::body::{check_content_type, read_body};
use super::response::{arrow_response, rpc_error_from, ApiError};
use super::state::{AppState, RequestId};
use crate::wire::http;
use crate::wire::{keys, read_stream, MetaBatch, ReadLimits, RpcError, REQUEST_VERSION};

/// The reserved method name of this route (the shared [`http::UPLOAD_METHOD`]).
pub const UPLOAD_METHOD: &str = http::UPLOAD_METHOD;

/// Most pairs one request may ask for (the shared [`http::MAX_UPLOAD_URLS`]).
pub const MAX_UPLOAD_URLS: i64 = http::MAX_UPLOAD_URLS;

/// `upload_url: utf8, download_url: utf8, expires_at: timestamp[us, UTC]`, all nullable.
pub fn upload_url_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("upload_url", DataType::Utf8, true),
        Field::new("download_url", DataType::Utf8, true),
        Field::new(
            "expires_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

pub(crate) async fn upload_url_init(
    State(st): State<Arc<AppState>>,
    Extension(rid): Extension<RequestId>,
    Extension(Admitted { memory, .. }): Extension<Admitted>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(resp) = check_content_type(&headers) {
        return resp;
    }
    // The cap applies here too, and is checked before anything is allocated in storage.
    let raw = match read_body(&headers, body, st.config.max_request_bytes, &memory).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    match vend(&st, raw).await {
        Ok(resp) => resp,
        Err(e) => e.with_request_id(&rid.0).into_response(),
    }
}

async fn vend(st: &AppState, raw: bytes::Bytes) -> Result<Response, ApiError> {
    let request = read_stream(raw, ReadLimits::default())
        .map_err(|e| ApiError::bad_request(format!("Malformed request: {e}")))?;
    let first = request
        .batches
        .first()
        .ok_or_else(|| ApiError::bad_request("Expected one batch in the request stream, got 0"))?;
    match first.metadata.get(keys::METHOD).map(String::as_str) {
        Some(UPLOAD_METHOD) => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "Method mismatch: expected '{UPLOAD_METHOD}', got '{}'",
                other.unwrap_or("")
            )))
        }
    }
    if first
        .metadata
        .get(keys::REQUEST_VERSION)
        .map(String::as_str)
        != Some(REQUEST_VERSION)
    {
        return Err(ApiError::bad_request(format!(
            "Unsupported request version; this server speaks {REQUEST_VERSION}"
        )));
    }
    // A missing or non-integer count means 1, as in the reference.
    let count = first
        .batch
        .column_by_name("count")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .filter(|c| !c.is_empty() && c.is_valid(0))
        .map(|c| c.value(0))
        .unwrap_or(1)
        .clamp(1, MAX_UPLOAD_URLS);
    let schema = upload_url_schema();
    let storage = st
        .storage
        .as_ref()
        .ok_or_else(|| ApiError::server(RpcError::internal("no storage configured")))?;
    let ttl = st.config.upload_url_ttl;
    let mut uploads = Vec::new();
    let mut downloads = Vec::new();
    let mut expiries = Vec::new();
    for _ in 0..count {
        let key = storage.new_key();
        let fail = |e: spillway_storage::StorageError| {
            ApiError::server(rpc_error_from(&crate::Error::Storage(e))).on_schema(&schema)
        };
        let put = storage
            .presign(&key, PresignMethod::Put, ttl)
            .await
            .map_err(fail)?;
        let get = storage
            .presign(&key, PresignMethod::Get, ttl)
            .await
            .map_err(fail)?;
        let expires = put.expires_at.min(get.expires_at);
        let micros = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        uploads.push(put.url.to_string());
        downloads.push(get.url.to_string());
        expiries.push(micros);
    }
    metrics::counter!("spillway_upload_url_grants_total").increment(count as u64);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(uploads)),
            Arc::new(StringArray::from(downloads)),
            Arc::new(TimestampMicrosecondArray::from(expiries).with_timezone("UTC")),
        ],
    )
    .map_err(|e| ApiError::server(RpcError::internal(e.to_string())).on_schema(&schema))?;
    Ok(arrow_response(&schema, &[MetaBatch::plain(batch)]))
}
