//! Methods about payload size and external storage: `published_string` (a pre-published
//! reference, published once and answered as a pointer on every call) and `oversized_unary`
//! (a result sized by the caller, to trip the response caps).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{BinaryArray, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use spillway::externalize::Compression;
use spillway::wire::{write_stream, MetaBatch, RpcError, ARROW_STREAM_CONTENT_TYPE};
use spillway_storage::{PresignMethod, PutOptions, Storage};
use tokio::sync::Mutex;

use super::call::{runtime_error, value_error};
use super::{Registrar, Worker};
use crate::error::Result;

/// Largest result `oversized_unary` builds (the suite asks for at most a few MiB).
pub(crate) const MAX_OVERSIZED_BYTES: i64 = 256 * 1024 * 1024;

/// How long a published reference's download URL is promised to work: the cache lives as long
/// as the process, which is one test session.
const PUBLISHED_URL_TTL: Duration = Duration::from_secs(24 * 3600);

/// A published object: its download URL and the sha256 of its raw IPC bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRef {
    /// The presigned download URL.
    pub url: String,
    /// Lowercase hex sha256 of the uncompressed IPC stream.
    pub sha256: String,
}

/// `published_string`'s cache: `(value, include_sha256)` → the object published for it.
#[derive(Debug, Default)]
pub struct Published {
    // An async lock held across the upload, so concurrent first calls publish once.
    cache: Mutex<HashMap<(String, bool), PublishedRef>>,
}

impl Published {
    /// The reference for `key`, publishing `batch` on a miss.
    pub async fn get_or_publish(
        &self,
        key: (String, bool),
        batch: RecordBatch,
        storage: &Arc<dyn Storage>,
        compression: Compression,
    ) -> Result<PublishedRef, RpcError> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.get(&key) {
            return Ok(hit.clone());
        }
        let published = publish(batch, storage, compression).await?;
        cache.insert(key, published.clone());
        Ok(published)
    }
}

/// Writes `batch` (one row) as one IPC stream, compressed as the worker compresses objects,
/// and returns its download URL and digest: what vgi-rpc's `publish_external` does.
pub(crate) async fn publish(
    batch: RecordBatch,
    storage: &Arc<dyn Storage>,
    compression: Compression,
) -> Result<PublishedRef, RpcError> {
    let schema: SchemaRef = batch.schema();
    let encoded = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, String), RpcError> {
        let raw = write_stream(&schema, &[MetaBatch::plain(batch)])
            .map_err(|e| RpcError::internal(format!("encoding the published batch: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&raw));
        let stored = match compression {
            Compression::None => raw,
            Compression::Zstd(level) => zstd::bulk::compress(&raw, level)
                .map_err(|e| RpcError::internal(format!("compressing: {e}")))?,
        };
        Ok((stored, sha256))
    })
    .await
    .map_err(|e| RpcError::internal(format!("publish task failed: {e}")))??;
    let (stored, sha256) = encoded;
    let key = storage.new_key();
    let opts = PutOptions {
        content_type: Some(ARROW_STREAM_CONTENT_TYPE.into()),
        content_encoding: compression.content_encoding().map(str::to_string),
    };
    let storage_error = |e: spillway_storage::StorageError| {
        runtime_error(format!("publishing the result failed: {e}"))
    };
    storage
        .put(&key, Bytes::from(stored).into(), opts)
        .await
        .map_err(storage_error)?;
    let url = storage
        .presign(&key, PresignMethod::Get, PUBLISHED_URL_TTL)
        .await
        .map_err(storage_error)?;
    Ok(PublishedRef {
        url: url.url.to_string(),
        sha256,
    })
}

pub(super) fn register(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let w = worker.clone();
    r.unary("published_string", move |call| {
        let w = w.clone();
        async move {
            let Some(storage) = w.storage.as_ref() else {
                return Err(runtime_error("published_string requires external storage"));
            };
            let value = call.string("value")?;
            let include_sha256 = call.boolean("include_sha256")?;
            let batch = call.reply(Arc::new(StringArray::from(vec![value.clone()])))?;
            let published = w
                .published
                .get_or_publish(
                    (value, include_sha256),
                    batch.clone(),
                    storage,
                    w.compression,
                )
                .await?;
            let sha256 = include_sha256.then_some(published.sha256);
            call.ctx.respond_with_pointer(published.url, sha256);
            Ok(batch)
        }
    })?
    .sync("oversized_unary", |call| {
        let target = call.int("target_bytes")?;
        if target < 0 {
            return Err(value_error("target_bytes must be non-negative"));
        }
        if target > MAX_OVERSIZED_BYTES {
            return Err(value_error(format!(
                "target_bytes must be at most {MAX_OVERSIZED_BYTES}"
            )));
        }
        let zeros = vec![0u8; target as usize];
        call.reply(Arc::new(BinaryArray::from_vec(vec![zeros.as_slice()])))
    })
}
