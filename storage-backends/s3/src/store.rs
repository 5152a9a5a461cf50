//! The [`S3Store`]: construction from an [`S3Config`], presigning and credentials.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::identity::IdentityCache;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::Client;
use aws_types::service_config::ServiceConfigKey;
use spillway_storage::{
    redact_url, validate_key_prefix, ObjectKey, PresignMethod, PresignedUrl, StorageError,
};
use url::Url;

use crate::cleanup::Cleanup;
use crate::config::{
    check_bucket, check_endpoint, config_error, object_settings, upload_part_size,
};
use crate::creds::{self, CredentialsWatch};
use crate::errors::object_error;
use crate::upload::{UploadConfig, Uploader};
use crate::urls::BucketBase;
use crate::{S3Config, MAX_PRESIGN_TTL};

/// An S3 bucket (and key prefix) as a Spillway [`Storage`]. Cheap to share behind an `Arc`.
pub struct S3Store {
    pub(crate) client: Client,
    /// Signs URLs for the public endpoint (the same client when there is none).
    pub(crate) presign_client: Client,
    pub(crate) bucket: String,
    pub(crate) key_prefix: String,
    pub(crate) region: String,
    /// Where URLs of this bucket point: the internal endpoint, then the public one.
    pub(crate) bases: Vec<BucketBase>,
    pub(crate) uploader: Uploader,
    pub(crate) credentials: CredentialsWatch,
    pub(crate) refresh_margin: Duration,
    /// The credentials expiry already warned about (unix seconds), so the warning is logged
    /// once per credentials, not once per URL.
    pub(crate) warned_expiry: AtomicU64,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("region", &self.region)
            .field(
                "bases",
                &self
                    .bases
                    .iter()
                    .map(BucketBase::display)
                    .collect::<Vec<_>>(),
            )
            .field("upload", &self.uploader.config)
            .finish_non_exhaustive()
    }
}

/// Where the bucket lives on `endpoint` (`None`: AWS's own), by the SDK's endpoint rules.
async fn bucket_base(
    bucket: &str,
    region: &str,
    endpoint: Option<&str>,
    path_style: bool,
    sdk: &aws_config::SdkConfig,
) -> Result<BucketBase, StorageError> {
    let params = Params::builder()
        .bucket(bucket)
        .region(region)
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
        .force_path_style(path_style)
        .accelerate(false)
        .set_endpoint(endpoint.map(str::to_string))
        .build()
        .map_err(|e| config_error(format!("s3 endpoint parameters: {e}")))?;
    let endpoint = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| {
            config_error(format!(
                "cannot resolve the s3 endpoint of bucket {bucket}: {e}"
            ))
        })?;
    BucketBase::from_endpoint(endpoint.url())
}

impl S3Store {
    /// Connects to the store `config` describes. Loads the AWS configuration (region,
    /// credentials, endpoint, where `config` leaves them unset) from the standard chain and
    /// resolves credentials once, within the connect timeout, to report their expiry; a failure
    /// there is logged, not fatal (see [`Storage::check_ready`](spillway_storage::Storage::check_ready)).
    /// Configuration errors name the [`S3Config`] field at fault.
    pub async fn new(config: S3Config) -> Result<Self, StorageError> {
        Self::build(config, None).await
    }

    /// Like [`S3Store::new`], with credentials from `credentials` instead of the standard
    /// chain (the region and endpoint still come from `config` and the environment).
    pub async fn with_credentials(
        config: S3Config,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, StorageError> {
        Self::build(config, Some(SharedCredentialsProvider::new(credentials))).await
    }

    async fn build(
        config: S3Config,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, StorageError> {
        let bucket = config.bucket.clone();
        check_bucket(&bucket)?;
        validate_key_prefix(&config.key_prefix)
            .map_err(|e| config_error(format!("invalid `key_prefix`: {e}")))?;
        if let Some(u) = &config.endpoint {
            check_endpoint("`endpoint`", u)?;
        }
        if let Some(u) = &config.public_endpoint {
            check_endpoint("`public_endpoint`", u)?;
        }
        let part_size = upload_part_size(&config, config.max_object_bytes)?;
        let object = object_settings(&config)?;
        let refresh_margin = config.credentials_refresh_margin;

        // Every request is bounded: a store that stops answering fails the call after at most
        // `operation_timeout` (the SDK's standard retry mode, 3 attempts with exponential
        // backoff unless AWS_MAX_ATTEMPTS / AWS_RETRY_MODE say otherwise, runs inside it).
        let attempt = config.request_timeout.max(Duration::from_secs(1));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout.max(Duration::from_secs(1)))
            .operation_attempt_timeout(attempt)
            .operation_timeout(config.operation_timeout.max(attempt))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .identity_cache(IdentityCache::lazy().buffer_time(refresh_margin).build());
        if let Some(r) = config.region.as_deref().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(r.to_string()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        let sdk = loader.load().await;

        // The endpoint as the SDK itself would pick it (service-specific variable first), made
        // explicit so that URLs can be matched against it.
        let endpoint: Option<String> = match &config.endpoint {
            Some(u) => Some(u.as_str().trim_end_matches('/').to_string()),
            None => sdk
                .service_config()
                .and_then(|c| {
                    c.load_config(
                        ServiceConfigKey::builder()
                            .service_id("S3")
                            .env("AWS_ENDPOINT_URL")
                            .profile("endpoint_url")
                            .build()
                            .ok()?,
                    )
                })
                .or_else(|| sdk.endpoint_url().map(str::to_string)),
        };
        if let Some(e) = &endpoint {
            let parsed = Url::parse(e)
                .map_err(|err| config_error(format!("s3 endpoint {}: {err}", redact_url(e))))?;
            check_endpoint("the s3 endpoint (AWS_ENDPOINT_URL[_S3])", &parsed)?;
        }
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None if endpoint.is_some() => "us-east-1".to_string(),
            None => {
                return Err(config_error(
                    "no aws region found: set `region` or AWS_REGION",
                ))
            }
        };
        let chain = sdk
            .credentials_provider()
            .ok_or_else(|| config_error("no aws credentials provider could be configured"))?;
        let credentials = CredentialsWatch::new(chain);
        // One provider shared by both clients: one cache entry, one refresh schedule.
        let provider = SharedCredentialsProvider::new(credentials.clone());
        let checksums = !matches!(
            sdk.request_checksum_calculation(),
            Some(RequestChecksumCalculation::WhenRequired)
        );

        let build = |endpoint: Option<&str>| {
            let mut b = aws_sdk_s3::config::Builder::from(&sdk)
                .region(Region::new(region.clone()))
                .force_path_style(config.path_style);
            b.set_credentials_provider(Some(provider.clone()));
            b.set_endpoint_url(endpoint.map(str::to_string));
            Client::from_conf(b.build())
        };
        let client = build(endpoint.as_deref());
        let public = config
            .public_endpoint
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_string());
        let presign_client = match &public {
            Some(p) => build(Some(p)),
            None => client.clone(),
        };
        let mut bases = vec![
            bucket_base(
                &bucket,
                &region,
                endpoint.as_deref(),
                config.path_style,
                &sdk,
            )
            .await?,
        ];
        if let Some(p) = &public {
            let b = bucket_base(&bucket, &region, Some(p), config.path_style, &sdk).await?;
            if !bases.contains(&b) {
                bases.push(b);
            }
        }

        let upload = UploadConfig {
            threshold: config.multipart_threshold,
            part_size,
            concurrency: config.upload_concurrency,
            max_object_bytes: config.max_object_bytes,
            checksums,
        };
        if part_size != config.part_size {
            tracing::info!(
                part_size,
                "s3 part size raised so that the largest object fits in 10000 parts"
            );
        }
        let store = S3Store {
            uploader: Uploader {
                client: client.clone(),
                bucket: bucket.clone(),
                config: upload,
                object,
                cleanup: Cleanup::new(client.clone(), bucket.clone()),
            },
            client,
            presign_client,
            bucket,
            key_prefix: config.key_prefix.clone(),
            region,
            bases,
            credentials,
            refresh_margin,
            warned_expiry: AtomicU64::new(0),
        };
        store
            .prime_credentials(config.connect_timeout.max(Duration::from_secs(1)))
            .await;
        tracing::info!(
            bucket = %store.bucket,
            region = %store.region,
            urls = ?store.bases.iter().map(BucketBase::display).collect::<Vec<_>>(),
            threshold = store.uploader.config.threshold,
            part_size = store.uploader.config.part_size,
            concurrency = store.uploader.config.concurrency,
            "s3 store ready"
        );
        Ok(store)
    }

    /// Resolves credentials through the SDK's cache (a presign is local apart from that), so
    /// their expiry is known from the start.
    async fn prime_credentials(&self, limit: Duration) {
        let probe = ObjectKey::random(&self.key_prefix);
        let presign = self.presign_with(&self.client, &probe, PresignMethod::Get, 60, now_secs());
        match tokio::time::timeout(limit, presign).await {
            Ok(Ok(_)) => match self.credentials.expiry() {
                Some(expiry) => {
                    let left = expiry
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    tracing::info!(
                        expires_in_secs = left.as_secs(),
                        refresh_margin_secs = self.refresh_margin.as_secs(),
                        "s3 store signs with temporary credentials: a presigned url stops \
                         working when the credentials that signed it expire"
                    );
                    if self.refresh_margin >= left {
                        tracing::warn!(
                            "the credentials refresh margin ({}s) is not shorter than \
                             the credentials' lifetime ({}s): they will be fetched again for \
                             every request",
                            self.refresh_margin.as_secs(),
                            left.as_secs()
                        );
                    }
                }
                None => tracing::debug!("s3 store signs with long-term credentials"),
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "s3 credentials could not be resolved yet"),
            Err(_) => tracing::warn!(
                timeout_secs = limit.as_secs(),
                "s3 credentials could not be resolved in time; retrying on first use"
            ),
        }
    }

    /// The SDK client the store uses (for operations Spillway does not wrap, and for tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The multipart part size in use (the configured one, or larger when the largest object
    /// would not fit in 10000 parts).
    pub fn part_size(&self) -> u64 {
        self.uploader.config.part_size
    }

    /// Failed or cancelled multipart uploads whose abort is being retried in the background
    /// (the store did not answer when they were aborted).
    pub fn pending_multipart_cleanups(&self) -> usize {
        self.uploader.cleanup.pending()
    }

    /// When the credentials the store signs with expire (`None`: long-term credentials, or
    /// not resolved yet).
    pub fn credentials_expiry(&self) -> Option<SystemTime> {
        self.credentials.expiry()
    }

    /// A warning when URLs presigned now with `ttl` would stop working before `ttl` has
    /// passed because the temporary credentials signing them expire first. Servers call it at
    /// startup with their presign and upload-URL TTLs; [`Storage::presign`] logs it too.
    pub fn presign_ttl_warning(&self, ttl: Duration) -> Option<String> {
        creds::ttl_warning(
            ttl,
            self.credentials.expiry(),
            self.refresh_margin,
            SystemTime::now(),
        )
    }

    /// Like [`Storage::presign`], but with an absolute expiry instead of a TTL. The expiry is
    /// rounded down to a whole second; the URL works strictly before it (S3 checks). An expiry
    /// in the past yields a URL that is already refused, which tests use.
    pub async fn presign_until(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        expires_at: SystemTime,
    ) -> Result<PresignedUrl, StorageError> {
        let expires = expires_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| config_error("presign expiry is before the unix epoch"))?
            .as_secs();
        let now = now_secs();
        // SigV4 carries a signing time and a lifetime of at least one second: a URL that must
        // already be expired is dated one second before its expiry.
        let (start, ttl) = if expires > now {
            (now, expires - now)
        } else {
            (expires.saturating_sub(1), 1)
        };
        self.presign_with(&self.presign_client, key, method, ttl, start)
            .await
    }

    pub(crate) async fn presign_with(
        &self,
        client: &Client,
        key: &ObjectKey,
        method: PresignMethod,
        ttl_secs: u64,
        start_secs: u64,
    ) -> Result<PresignedUrl, StorageError> {
        let ttl = Duration::from_secs(ttl_secs);
        if ttl > MAX_PRESIGN_TTL {
            return Err(config_error(format!(
                "presigned s3 urls live at most 7 days (604800 s), {ttl_secs} s asked"
            )));
        }
        let config = PresigningConfig::builder()
            .start_time(UNIX_EPOCH + Duration::from_secs(start_secs))
            .expires_in(ttl)
            .build()
            .map_err(|e| config_error(format!("presigning: {e}")))?;
        let request = match method {
            PresignMethod::Get => client
                .get_object()
                .bucket(&self.bucket)
                .key(key.as_str())
                .presigned(config)
                .await
                .map_err(|e| object_error("presign GetObject", &self.bucket, key.as_str(), e))?,
            PresignMethod::Put => client
                .put_object()
                .bucket(&self.bucket)
                .key(key.as_str())
                .presigned(config)
                .await
                .map_err(|e| object_error("presign PutObject", &self.bucket, key.as_str(), e))?,
        };
        let url = Url::parse(request.uri()).map_err(|e| {
            StorageError::Backend(format!(
                "the sdk presigned an unparseable url ({}): {e}",
                redact_url(request.uri())
            ))
        })?;
        Ok(PresignedUrl {
            url,
            method,
            expires_at: UNIX_EPOCH + Duration::from_secs(start_secs + ttl_secs),
        })
    }

    pub(crate) fn warn_if_credentials_expire_first(&self, ttl: Duration) {
        let Some(expiry) = self.credentials.expiry() else {
            return;
        };
        let Some(warning) = self.presign_ttl_warning(ttl) else {
            return;
        };
        let stamp = expiry
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.warned_expiry.swap(stamp, Ordering::Relaxed) != stamp {
            tracing::warn!("{warning}");
        }
        metrics::counter!("spillway_s3_presign_outlives_credentials_total").increment(1);
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
