//! The [`GcsStore`]: construction from a [`GcsConfig`], URL checks, and [`Storage`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use google_cloud_auth::signer::Signer;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage as GcsClient;
use google_cloud_storage::model_ext::ReadRange;
use google_cloud_storage::retry_policy::RetryableErrors;
use spillway_storage::{
    redact_url, validate_key_prefix, ByteRange, GetResult, InitOptions, ObjectKey, ObjectMeta,
    PresignMethod, PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use url::Url;

use crate::config::{check_bucket_name, check_endpoint, config_error, origin_string};
use crate::{api, auth, errors, lifecycle, signing, upload};
use crate::{GcsConfig, DEFAULT_ENDPOINT, READY_PROBE_TIMEOUT, UPLOAD_BUFFER_BYTES};

/// Attempts of one request by the client library (the first and two retries).
const RETRY_ATTEMPTS: u32 = 3;

/// The Google Cloud Storage store. Implements [`Storage`] with [`Storage::kind`] `"gcs"`.
pub struct GcsStore {
    bucket: String,
    key_prefix: String,
    max_object_bytes: u64,
    project: Option<String>,
    public_endpoint: Url,
    signed_put_content_type: Option<String>,
    client: GcsClient,
    api: api::JsonApi,
    /// `Err` holds why no signer could be built: the store still works for `init`, and
    /// presigning and readiness report the reason.
    signer: Result<Signer, String>,
    /// Whether a TTL above the 7-day maximum was already reported.
    warned_long_ttl: AtomicBool,
    /// [`GcsConfig::request_timeout`].
    request_timeout: Duration,
    /// [`GcsConfig::operation_timeout`].
    operation_timeout: Duration,
}

impl fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("public_endpoint", &self.public_endpoint.as_str())
            .field("signer", &self.signer.as_ref().map(|_| "configured"))
            .finish_non_exhaustive()
    }
}

impl GcsStore {
    /// Builds the store. No request is sent: credentials are loaded, the client is set up and
    /// the configuration is checked. A configuration that cannot sign URLs is accepted (so
    /// `spillway storage init` can run with an administrator's user credentials), but
    /// [`Storage::presign`] and [`Storage::check_ready`] then fail with the reason.
    pub async fn new(config: GcsConfig) -> Result<Self, StorageError> {
        check_bucket_name(&config.bucket)?;
        validate_key_prefix(&config.key_prefix)
            .map_err(|e| config_error(format!("invalid key prefix: {e}")))?;
        let endpoint = match &config.endpoint {
            Some(e) => e.clone(),
            None => Url::parse(DEFAULT_ENDPOINT).map_err(|e| config_error(e.to_string()))?,
        };
        check_endpoint("gcs endpoint", &endpoint)?;
        let public_endpoint = config
            .public_endpoint
            .clone()
            .unwrap_or_else(|| endpoint.clone());
        check_endpoint("gcs public endpoint", &public_endpoint)?;
        if let Some(iam) = &config.iam_endpoint {
            check_endpoint("iam endpoint", iam)?;
        }
        if let Some(ct) = &config.signed_put_content_type {
            PutOptions {
                content_type: Some(ct.clone()),
                content_encoding: None,
            }
            .validate()?;
        }
        let auth = auth::load(&config)?;
        if let Err(reason) = &auth.signer {
            tracing::warn!(%reason, "gcs store cannot sign urls");
        }
        let request_timeout = config.request_timeout.max(Duration::from_secs(1));
        let operation_timeout = config.operation_timeout.max(request_timeout);
        let client = GcsClient::builder()
            .with_endpoint(origin_string(&endpoint))
            .with_credentials(auth.credentials.clone())
            .with_resumable_upload_buffer_size(UPLOAD_BUFFER_BYTES)
            // The library retries transient failures for 300 s by default: a store that is down
            // would hold a call that long. Three attempts, as S3's SDK makes: a refused
            // connection is reported (as such) within seconds.
            .with_retry_policy(
                RetryableErrors
                    .with_time_limit(operation_timeout)
                    .with_attempt_limit(RETRY_ATTEMPTS),
            )
            .build()
            .await
            .map_err(|e| config_error(format!("gcs client: {}", errors::redacted_chain(&e))))?;
        let api = api::JsonApi::new(
            origin_string(&endpoint),
            config.bucket.clone(),
            auth.credentials,
            request_timeout,
        )?;
        Ok(GcsStore {
            bucket: config.bucket,
            key_prefix: config.key_prefix,
            max_object_bytes: config.max_object_bytes,
            project: config.project,
            public_endpoint,
            signed_put_content_type: config.signed_put_content_type,
            client,
            api,
            signer: auth.signer,
            warned_long_ttl: AtomicBool::new(false),
            request_timeout,
            operation_timeout,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket in the resource-name form the client library wants.
    fn bucket_resource(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    fn signer(&self) -> Result<&Signer, StorageError> {
        self.signer
            .as_ref()
            .map_err(|reason| config_error(reason.clone()))
    }

    /// Like [`Storage::key_from_url`], judging expiry at `now`.
    pub fn key_from_url_at(&self, url: &Url, now: SystemTime) -> Result<ObjectKey, StorageError> {
        let foreign = || StorageError::ForeignUrl {
            url: redact_url(url.as_str()),
        };
        let base = &self.public_endpoint;
        if url.scheme() != base.scheme()
            || url.host_str() != base.host_str()
            || url.port_or_known_default() != base.port_or_known_default()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(foreign());
        }
        // Path style: /{bucket}/{key}. Url has already resolved dot segments, and no
        // percent-decoding is done: keys never need escaping, so any '%' is refused by the key
        // alphabet rather than decoded into something new.
        let rest = url
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.bucket.as_str()))
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(foreign)?;
        let key = ObjectKey::parse(rest)?;
        if !key.as_str().starts_with(self.key_prefix.as_str()) {
            return Err(foreign());
        }
        let signed = signing::SignedQuery::parse(url)?;
        signed.check_time(now)?;
        if signed.signed_headers != "host" {
            // Download URLs sign only the host; upload URLs also sign the content type.
            return Err(StorageError::UrlRefused {
                reason: "url is not a download url (it signs more than the host)".into(),
            });
        }
        Ok(key)
    }

    async fn read(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<GetResult, StorageError> {
        // A ranged read checks the range against the object's size first, so that an
        // unsatisfiable range is reported as such (and never depends on how the service words
        // a 416).
        let (known, range) = match range {
            None => (None, None),
            Some(r) => {
                let meta = self.api.object_meta(key).await?;
                let size = meta.size;
                if r.start >= r.end || r.start >= size {
                    return Err(StorageError::RangeNotSatisfiable { size });
                }
                let r = ByteRange {
                    start: r.start,
                    end: r.end.min(size),
                };
                (Some(meta), Some(r))
            }
        };
        let mut request = self
            .client
            .read_object(self.bucket_resource(), key.as_str());
        if let Some(r) = range {
            request = request.set_read_range(ReadRange::segment(r.start, r.end - r.start));
        }
        // The library sets no timeout on its requests: its first answer (retries included) is
        // bounded here, and every piece of the body below.
        let response = tokio::time::timeout(self.operation_timeout, request.send())
            .await
            .map_err(|_| StorageError::Unavailable {
                reason: format!(
                    "gcs read object {key}: no answer within {} s",
                    self.operation_timeout.as_secs()
                ),
            })?
            .map_err(|e| errors::from_gcs("read object", Some(key), e))?;
        let meta = match known {
            Some(meta) => meta,
            None => {
                let h = response.object();
                ObjectMeta {
                    key: key.clone(),
                    size: u64::try_from(h.size).unwrap_or(0),
                    content_type: errors::non_empty(h.content_type),
                    content_encoding: errors::stored_encoding(h.content_encoding),
                    etag: errors::non_empty(h.etag),
                }
            }
        };
        let range = range.unwrap_or(ByteRange {
            start: 0,
            end: meta.size,
        });
        let piece_timeout = self.request_timeout;
        let stream =
            futures::stream::unfold(Some((response, key.clone())), move |state| async move {
                let (mut response, key) = state?;
                match tokio::time::timeout(piece_timeout, response.next()).await {
                    Ok(None) => None,
                    Ok(Some(item)) => {
                        let item = item.map_err(|e| errors::from_gcs("read object", Some(&key), e));
                        Some((item, Some((response, key))))
                    }
                    Err(_) => {
                        let reason = format!(
                            "gcs read object {key}: no data for {} s",
                            piece_timeout.as_secs()
                        );
                        Some((Err(StorageError::Unavailable { reason }), None))
                    }
                }
            })
            .boxed();
        Ok(GetResult {
            meta,
            range,
            stream,
        })
    }
}

#[async_trait]
impl Storage for GcsStore {
    fn kind(&self) -> &'static str {
        "gcs"
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
        let limit = self.max_object_bytes;
        if let Some(size) = payload.size_hint().filter(|&s| s > limit) {
            return Err(StorageError::TooLarge { size, limit });
        }
        let (stream, size_hint) = match payload {
            PutPayload::Bytes(bytes) => {
                let len = bytes.len() as u64;
                (futures::stream::iter([Ok(bytes)]).boxed(), Some(len))
            }
            PutPayload::Stream { stream, size_hint } => (stream, size_hint),
        };
        let (source, failure) = upload::CappedSource::new(stream, size_hint, limit);
        let progress = source.progress();
        let mut request = self
            .client
            .write_object(self.bucket_resource(), key.as_str(), source)
            // Rewriting a fresh random key with the same bytes is harmless, so failed attempts
            // may be retried.
            .with_idempotency(true);
        if let Some(ct) = &opts.content_type {
            request = request.set_content_type(ct.clone());
        }
        if let Some(ce) = &opts.content_encoding {
            request = request.set_content_encoding(ce.clone());
        }
        let written =
            upload::unless_stalled(request.send_buffered(), &progress, self.request_timeout)
                .await
                .map_err(|stalled| StorageError::Unavailable {
                    reason: format!(
                        "gcs upload object {key}: no progress for {} s (the store does not answer)",
                        stalled.as_secs()
                    ),
                })?;
        // The producer's own failure (or the size limit) explains a failed upload better than
        // what the client library made of it.
        if let Some(err) = upload::take_failure(&failure) {
            return Err(err);
        }
        let object = written.map_err(|e| errors::from_gcs("upload object", Some(key), e))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size: u64::try_from(object.size).unwrap_or(0),
            content_type: errors::non_empty(object.content_type),
            content_encoding: errors::stored_encoding(object.content_encoding),
            etag: errors::non_empty(object.etag),
        })
    }

    async fn presign(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        ttl: Duration,
    ) -> Result<PresignedUrl, StorageError> {
        let signer = self.signer()?;
        let mut headers = Vec::new();
        if let (PresignMethod::Put, Some(ct)) = (method, &self.signed_put_content_type) {
            headers.push(("content-type".to_string(), ct.clone()));
        }
        let http_method = match method {
            PresignMethod::Get => http::Method::GET,
            PresignMethod::Put => http::Method::PUT,
        };
        let (secs, clamped) = signing::ttl_seconds(ttl);
        if clamped && !self.warned_long_ttl.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                requested_secs = ttl.as_secs(),
                "gcs signed urls last at most 7 days: shortening the url lifetime to 604800s"
            );
        }
        let (url, expires_at) = signing::sign_url(
            signer,
            &origin_string(&self.public_endpoint),
            &self.bucket,
            key.as_str(),
            http_method,
            secs,
            &headers,
        )
        .await?;
        Ok(PresignedUrl {
            url,
            method,
            expires_at,
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.api.object_meta(key).await
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
    ) -> Result<GetResult, StorageError> {
        self.read(key, range).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.api.delete_object(key).await
    }

    fn key_from_url(&self, url: &Url) -> Result<ObjectKey, StorageError> {
        self.key_from_url_at(url, SystemTime::now())
    }

    /// Checks that URLs can be signed and that the credentials hold the object permissions
    /// Spillway needs on the bucket (one `testIamPermissions` call, which needs no permission
    /// of its own and fails for a missing bucket).
    async fn check_ready(&self) -> Result<(), StorageError> {
        self.signer()?;
        let needed = api::OBJECT_PERMISSIONS;
        let granted = self
            .api
            .test_permissions(needed, Some(READY_PROBE_TIMEOUT))
            .await?;
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|p| !granted.iter().any(|g| g == p))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StorageError::Backend(format!(
                "the gcs credentials lack {} on bucket {}",
                missing.join(", "),
                self.bucket
            )))
        }
    }

    /// Creates the bucket if asked (and missing), then installs the lifecycle rule
    /// `{"action": {"type": "Delete"}, "condition": {"age": N, "matchesPrefix": [prefix]}}`,
    /// keeping every other rule of the bucket. Without permission to read or update the
    /// bucket's metadata, the rule is reported as not installed (with the command an
    /// administrator can run) rather than failing.
    async fn init(&self, opts: &InitOptions) -> Result<String, StorageError> {
        lifecycle::init(
            &self.api,
            &self.bucket,
            &self.key_prefix,
            self.project.as_deref(),
            opts,
        )
        .await
    }
}
