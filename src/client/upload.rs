//! The upload-URL flow (spec §6.3): vend a URL pair from `POST {prefix}/__upload_url__/init`,
//! PUT the request there, and POST a pointer naming the download URL instead.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use bytes::Bytes;
use url::Url;

use super::config::Capabilities;
use super::response::RawResponse;
use super::retry::{Deadline, Replay};
use super::Client;
use crate::error::{Error, Result};
use crate::wire::http::{MAX_UPLOAD_URLS, UPLOAD_METHOD};
use crate::wire::{keys, write_stream, ErrorCode, MetaBatch, Metadata, RpcError, REQUEST_VERSION};

/// One pre-signed URL pair from `POST {prefix}/__upload_url__/init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadUrl {
    /// Pre-signed PUT URL (secret: never log it).
    pub upload_url: String,
    /// Pre-signed GET URL for the same object, to name in a pointer.
    pub download_url: String,
    /// Expiry, microseconds since the Unix epoch (UTC), when the server gave one.
    pub expires_at_micros: Option<i64>,
}

impl Client {
    /// Asks the server for `count` (1 to 100) upload/download URL pairs:
    /// `POST {prefix}/__upload_url__/init`. The URLs are returned as vended; the upload flow
    /// of [`Client::call_with`] checks them against the URL policy before use.
    pub async fn request_upload_urls(&self, count: i64) -> Result<Vec<UploadUrl>> {
        self.upload_urls_within(count, &self.deadline()).await
    }

    /// [`Client::request_upload_urls`] within an operation's deadline. Replay-safe (it only
    /// vends a fresh pair): retried after overload and transient failures alike.
    async fn upload_urls_within(&self, count: i64, deadline: &Deadline) -> Result<Vec<UploadUrl>> {
        if !(1..=MAX_UPLOAD_URLS).contains(&count) {
            return Err(Error::Config(format!(
                "upload url count must be between 1 and {MAX_UPLOAD_URLS}, got {count}"
            )));
        }
        let caps = self.capabilities_within(deadline).await?;
        let url = format!(
            "{}{}/{UPLOAD_METHOD}/init",
            self.inner.root, self.inner.prefix
        );
        let body = Bytes::from(build_upload_init_body(count)?);
        // Not through the upload decision of `post_call`: this is the call that vends uploads.
        let resp = self
            .post_rpc(&url, &caps, body, Replay::Safe, deadline)
            .await?;
        if resp.status == 404 {
            return Err(
                RpcError::new("NotSupported", "server does not support upload urls")
                    .with_code(ErrorCode::Unimplemented)
                    .into(),
            );
        }
        if resp.status == 413 {
            return Err(self.request_too_large(&caps, 0));
        }
        let out = self
            .finish_unary(UPLOAD_METHOD, resp.into_reply(&url)?)
            .await?;
        parse_upload_urls(&out.batch)
    }

    /// The upload flow (spec §6.3): vend a URL pair, check both, PUT the original bytes,
    /// re-POST a pointer naming the download URL.
    pub(super) async fn post_via_upload(
        &self,
        url: &str,
        caps: &Capabilities,
        schema: &SchemaRef,
        metadata: &Metadata,
        raw: Bytes,
        deadline: &Deadline,
    ) -> Result<RawResponse> {
        let pair = self
            .upload_urls_within(1, deadline)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Protocol("upload url init returned no url pair".into()))?;
        for u in [&pair.upload_url, &pair.download_url] {
            let parsed = Url::parse(u).map_err(|e| Error::UrlRejected {
                url: spillway_storage::redact_url(u),
                reason: format!("not a valid url: {e}"),
            })?;
            self.inner.policy.check(&parsed)?;
        }
        self.put_upload(&pair.upload_url, raw, deadline).await?;
        let pointer = Bytes::from(build_pointer_body(schema, metadata, &pair.download_url)?);
        self.post_rpc(url, caps, pointer, Replay::Dispatch, deadline)
            .await
    }
}

/// The request pointer body (spec §6.3 step 7): zero rows on `schema`, the original metadata
/// plus `vgi_rpc.location`, no sha256.
pub(super) fn build_pointer_body(
    schema: &SchemaRef,
    metadata: &Metadata,
    download_url: &str,
) -> Result<Vec<u8>> {
    let mut md = metadata.clone();
    md.remove(keys::LOCATION_SHA256);
    md.insert(keys::LOCATION.into(), download_url.to_string());
    write_stream(
        schema,
        &[MetaBatch {
            batch: RecordBatch::new_empty(schema.clone()),
            metadata: md,
        }],
    )
}

/// The `__upload_url__/init` request (spec §6.1): `count: int64` (nullable, as Python
/// declares it), one row, method and request version only.
pub(super) fn build_upload_init_body(count: i64) -> Result<Vec<u8>> {
    let count: ArrayRef = Arc::new(Int64Array::from(vec![count]));
    let batch = RecordBatch::try_from_iter_with_nullable([("count", count, true)])?;
    let mut metadata = Metadata::new();
    metadata.insert(keys::METHOD.into(), UPLOAD_METHOD.into());
    metadata.insert(keys::REQUEST_VERSION.into(), REQUEST_VERSION.into());
    write_stream(&batch.schema(), &[MetaBatch { batch, metadata }])
}

/// Reads the `__upload_url__/init` result: columns found by name, string columns of any
/// string type, `expires_at` optional and of any timestamp unit.
pub(super) fn parse_upload_urls(batch: &RecordBatch) -> Result<Vec<UploadUrl>> {
    let strings = |name: &str| -> Result<Vec<Option<String>>> {
        let col = batch
            .column_by_name(name)
            .ok_or_else(|| Error::Protocol(format!("upload url response has no {name} column")))?;
        let col = arrow_cast::cast(col, &DataType::Utf8).map_err(|e| {
            Error::Protocol(format!(
                "upload url response column {name} is not text: {e}"
            ))
        })?;
        let col = col.as_string::<i32>();
        Ok((0..col.len())
            .map(|i| (!col.is_null(i)).then(|| col.value(i).to_string()))
            .collect())
    };
    let uploads = strings("upload_url")?;
    let downloads = strings("download_url")?;
    let expires: Vec<Option<i64>> = match batch.column_by_name("expires_at") {
        None => vec![None; batch.num_rows()],
        Some(col) => {
            let factor_div: (i64, i64) = match col.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => (1_000_000, 1),
                DataType::Timestamp(TimeUnit::Millisecond, _) => (1_000, 1),
                DataType::Timestamp(TimeUnit::Microsecond, _) => (1, 1),
                DataType::Timestamp(TimeUnit::Nanosecond, _) => (1, 1_000),
                DataType::Null => (1, 1),
                other => {
                    return Err(Error::Protocol(format!(
                        "upload url response column expires_at has type {other}, not a timestamp"
                    )))
                }
            };
            let raw = arrow_cast::cast(col, &DataType::Int64)?;
            let raw = raw.as_primitive::<arrow_array::types::Int64Type>();
            (0..raw.len())
                .map(|i| {
                    (!raw.is_null(i))
                        .then(|| raw.value(i).saturating_mul(factor_div.0) / factor_div.1)
                })
                .collect()
        }
    };
    let mut out = Vec::with_capacity(uploads.len());
    for (i, (up, down)) in uploads.into_iter().zip(downloads).enumerate() {
        match (up, down) {
            (Some(upload_url), Some(download_url)) => out.push(UploadUrl {
                upload_url,
                download_url,
                expires_at_micros: expires.get(i).copied().flatten(),
            }),
            _ => {
                return Err(Error::Protocol(format!(
                    "upload url response row {i} has a null url"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Protocol(
            "upload url response holds no url pairs".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::request::{build_request_body, CallRequest};
    use crate::client::tests::{int_params, result_batch};
    use crate::wire::{classify, read_stream, BatchKind, ReadLimits};
    use arrow_array::{StringArray, TimestampMicrosecondArray};
    use arrow_schema::{Field, Schema};

    #[test]
    fn pointer_and_upload_init_bodies() {
        let req = CallRequest::new("P", "echo_bytes", int_params("value", 1));
        let (schema, md, _) = build_request_body(&req).unwrap();
        let url = "http://127.0.0.1:9/download/abc?sig=1";
        let s = read_stream(
            Bytes::from(build_pointer_body(&schema, &md, url).unwrap()),
            ReadLimits::default(),
        )
        .unwrap();
        assert_eq!(s.schema, schema);
        let b = &s.batches[0];
        assert_eq!(b.batch.num_rows(), 0);
        assert_eq!(classify(&b.batch, &b.metadata), BatchKind::Pointer);
        assert_eq!(b.metadata[keys::LOCATION], url);
        assert!(!b.metadata.contains_key(keys::LOCATION_SHA256));
        for (k, v) in &md {
            assert_eq!(&b.metadata[k], v);
        }

        let s = read_stream(
            Bytes::from(build_upload_init_body(2).unwrap()),
            ReadLimits::default(),
        )
        .unwrap();
        assert_eq!(s.schema.field(0).name(), "count");
        assert_eq!(s.schema.field(0).data_type(), &DataType::Int64);
        let b = &s.batches[0];
        assert_eq!(b.batch.num_rows(), 1);
        assert_eq!(
            b.batch
                .column(0)
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            2
        );
        assert_eq!(b.metadata.len(), 2);
        assert_eq!(b.metadata[keys::METHOD], "__upload_url__");
        assert_eq!(b.metadata[keys::REQUEST_VERSION], "1");
    }

    #[test]
    fn upload_url_rows_are_read_by_name() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("upload_url", DataType::Utf8, true),
            Field::new("download_url", DataType::LargeUtf8, true),
            Field::new(
                "expires_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    "http://s/upload/1",
                    "http://s/upload/2",
                ])),
                Arc::new(arrow_array::LargeStringArray::from(vec![
                    "http://s/download/1",
                    "http://s/download/2",
                ])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), None])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let urls = parse_upload_urls(&batch).unwrap();
        assert_eq!(
            urls,
            vec![
                UploadUrl {
                    upload_url: "http://s/upload/1".into(),
                    download_url: "http://s/download/1".into(),
                    expires_at_micros: Some(1_700_000_000_000_000),
                },
                UploadUrl {
                    upload_url: "http://s/upload/2".into(),
                    download_url: "http://s/download/2".into(),
                    expires_at_micros: None,
                },
            ]
        );
        let nulls = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("upload_url", DataType::Utf8, true),
                Field::new("download_url", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![None::<&str>])),
                Arc::new(StringArray::from(vec![Some("http://s/d")])),
            ],
        )
        .unwrap();
        assert!(parse_upload_urls(&nulls).is_err());
        assert!(parse_upload_urls(&result_batch(b"x").batch).is_err());
    }
}
