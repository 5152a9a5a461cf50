//! [`Storage`] for [`S3Store`]: objects through the SDK client.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use futures::StreamExt;
use spillway_storage::{
    redact_url, ByteRange, GetResult, InitOptions, ObjectKey, ObjectMeta, PresignMethod,
    PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use url::Url;

use crate::errors::{classify, no_such_bucket, object_error, Failure};
use crate::store::now_secs;
use crate::urls::{self, UrlCheck, Verified};
use crate::{lifecycle, S3Store, READY_PROBE_TIMEOUT};

fn opt_string(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `bytes START-END/TOTAL` → TOTAL.
pub(crate) fn content_range_total(header: &str) -> Option<u64> {
    header
        .trim()
        .strip_prefix("bytes ")?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}

#[async_trait]
impl Storage for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn new_key(&self) -> ObjectKey {
        ObjectKey::random(&self.key_prefix)
    }

    async fn put_object(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        self.uploader.put(key, payload, opts).await
    }

    async fn presign(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        ttl: Duration,
    ) -> Result<PresignedUrl, StorageError> {
        // SigV4 counts whole seconds; a sub-second TTL still gets one.
        let secs = ttl.as_secs().max(1);
        let url = self
            .presign_with(&self.presign_client, key, method, secs, now_secs())
            .await?;
        self.warn_if_credentials_expire_first(Duration::from_secs(secs));
        Ok(url)
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| object_error("HeadObject", &self.bucket, key.as_str(), e))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size: out.content_length.unwrap_or(0).max(0) as u64,
            content_type: opt_string(out.content_type),
            content_encoding: opt_string(out.content_encoding),
            etag: out.e_tag,
        })
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<GetResult, StorageError> {
        if let Some(r) = range {
            if r.start >= r.end {
                let size = self.head(key).await?.size;
                return Err(StorageError::RangeNotSatisfiable { size });
            }
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end - 1)))
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let what = format!("s3://{}/{}", self.bucket, key);
                return Err(match classify("GetObject", &what, &e) {
                    Failure::InvalidRange => {
                        let size = self.head(key).await?.size;
                        StorageError::RangeNotSatisfiable { size }
                    }
                    Failure::NoSuchKey => StorageError::NotFound {
                        key: key.to_string(),
                    },
                    other => other.into_storage_error(&self.bucket),
                });
            }
        };
        let length = out.content_length.unwrap_or(0).max(0) as u64;
        let (size, served) = match (range, out.content_range.as_deref()) {
            (Some(r), Some(cr)) => {
                let total = content_range_total(cr).ok_or_else(|| {
                    StorageError::Backend(format!("s3 GetObject {key}: bad content-range {cr:?}"))
                })?;
                (
                    total,
                    ByteRange {
                        start: r.start,
                        end: r.start + length,
                    },
                )
            }
            // A range request answered with the whole object (some S3-compatible stores do
            // when the range covers it).
            _ => (
                length,
                ByteRange {
                    start: 0,
                    end: length,
                },
            ),
        };
        let meta = ObjectMeta {
            key: key.clone(),
            size,
            content_type: opt_string(out.content_type),
            content_encoding: opt_string(out.content_encoding),
            etag: out.e_tag,
        };
        let bucket = self.bucket.clone();
        let key_text = key.to_string();
        let body = out.body;
        let stream = futures::stream::unfold(Some(body), move |body| {
            let bucket = bucket.clone();
            let key_text = key_text.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    // A body that breaks off or stalls (the SDK's stalled-stream protection)
                    // is the store going away mid-read.
                    Err(e) => Some((
                        Err(StorageError::Unavailable {
                            reason: format!(
                                "s3 GetObject s3://{bucket}/{key_text}: reading the body: {}",
                                spillway_storage::redact_text(&e.to_string())
                            ),
                        }),
                        None,
                    )),
                }
            }
        })
        .boxed();
        Ok(GetResult {
            meta,
            range: served,
            stream,
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| object_error("DeleteObject", &self.bucket, key.as_str(), e))?;
        Ok(())
    }

    fn key_from_url(&self, url: &Url) -> Result<ObjectKey, StorageError> {
        let (key, verified) = urls::check_download_url(
            url,
            &UrlCheck {
                bases: &self.bases,
                key_prefix: &self.key_prefix,
                region: &self.region,
                credentials: self.credentials.current(),
                now: SystemTime::now(),
            },
        )?;
        if verified == Verified::StructureOnly {
            tracing::debug!(
                url = %redact_url(url.as_str()),
                "request pointer url signed with other credentials than the current ones: \
                 checked for shape and expiry only"
            );
        }
        Ok(key)
    }

    /// One HeadBucket, without retries and within [`READY_PROBE_TIMEOUT`]: a probe must
    /// answer quickly with the store's state (and its cause), not wait out the retries a
    /// call gets.
    async fn check_ready(&self) -> Result<(), StorageError> {
        let probe = aws_sdk_s3::config::Builder::new()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(READY_PROBE_TIMEOUT)
                    .operation_timeout(READY_PROBE_TIMEOUT)
                    .build(),
            );
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(probe)
            .send()
            .await
            .map_err(
                |e| match classify("HeadBucket", &format!("s3://{}", self.bucket), &e) {
                    Failure::NoSuchBucket | Failure::NoSuchKey => no_such_bucket(&self.bucket),
                    other => other.into_storage_error(&self.bucket),
                },
            )?;
        Ok(())
    }

    async fn init(&self, opts: &InitOptions) -> Result<String, StorageError> {
        lifecycle::init(
            &self.client,
            &self.bucket,
            &self.region,
            &self.key_prefix,
            opts,
        )
        .await
    }
}
