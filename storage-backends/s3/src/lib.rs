//! Spillway's storage backend for Amazon S3 and S3-compatible stores (MinIO, LocalStack, ...),
//! on the official AWS SDK (`aws-sdk-s3`).
//!
//! - **Uploads**: one `PutObject` up to [`S3Args::s3_multipart_threshold`], above it a
//!   multipart upload whose parts ([`S3Args::s3_part_size`]) are cut from the stream as it
//!   arrives and uploaded [`S3Args::s3_upload_concurrency`] at a time, with bounded memory. A
//!   failed or cancelled multipart upload is aborted. `Content-Type` and `Content-Encoding` are
//!   stored with the object; server-side encryption (SSE-S3, SSE-KMS) and the storage class
//!   are optional.
//! - **Presigned URLs** (SigV4, at most 7 days) are signed for the *public* endpoint when one
//!   is configured ([`S3Args::s3_public_endpoint`]): in Kubernetes the server reaches the store
//!   at an internal address, clients at another. The public endpoint must forward requests to
//!   the same store with the `Host` header unchanged (the signature covers it).
//! - **Credentials and region** come from the standard AWS chain: environment, shared
//!   config/credentials files (profiles, `credential_process`), web identity (EKS IRSA), ECS
//!   and EC2 instance metadata. `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` are honoured when
//!   [`S3Args::s3_endpoint`] is not set.
//! - **Keys** are `{prefix}{random 128-bit hex id}`.
//! - **Request pointers**: [`Storage::key_from_url`] accepts only GET URLs of this bucket and
//!   prefix on the internal or public endpoint, carrying a SigV4 signature that has not expired
//!   and (when signed with the current credentials) that verifies; see the `urls` module.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use clap::Parser;
//! use spillway_storage::{PresignMethod, Storage, StoreSettings};
//! use spillway_storage_s3::{S3Args, S3Store};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     s3: S3Args,
//! }
//! let cli = Cli::parse_from(["x", "--s3-endpoint", "http://127.0.0.1:4566", "--s3-path-style"]);
//! let store = S3Store::connect(
//!     &cli.s3,
//!     &StoreSettings {
//!         bucket: Some("spillway".into()),
//!         key_prefix: "spillway/".into(),
//!         max_object_bytes: 1 << 30,
//!     },
//! )
//! .await?;
//! let key = store.new_key();
//! store.put(&key, b"hello".to_vec().into(), Default::default()).await?;
//! let url = store.presign(&key, PresignMethod::Get, std::time::Duration::from_secs(60)).await?;
//! assert_eq!(store.key_from_url(&url.url)?, key);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod creds;
mod errors;
mod lifecycle;
mod upload;
mod urls;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::identity::IdentityCache;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use aws_types::service_config::ServiceConfigKey;
use futures::StreamExt;
use spillway_storage::{
    redact_url, validate_key_prefix, ByteRange, GetResult, InitOptions, ObjectKey, ObjectMeta,
    PresignMethod, PresignedUrl, PutOptions, PutPayload, Storage, StorageError, StoreSettings,
};
use url::Url;

pub use aws_sdk_s3;
pub use lifecycle::{lifecycle_rule, lifecycle_rule_id};
pub use upload::{MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
pub use urls::MAX_PRESIGN_TTL;

use crate::creds::CredentialsWatch;
use crate::errors::{classify, no_such_bucket, object_error, Failure};
use crate::upload::{UploadConfig, Uploader};
use crate::urls::{BucketBase, UrlCheck, Verified};

/// Default [`S3Args::s3_multipart_threshold`]: 16 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Default [`S3Args::s3_part_size`]: 8 MiB (the externalizer's chunk size, so parts are
/// uploaded without copying).
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Default [`S3Args::s3_upload_concurrency`].
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Most parts uploaded at once.
pub const MAX_UPLOAD_CONCURRENCY: usize = 64;

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SseMode {
    /// The bucket's default (S3 encrypts new objects with SSE-S3 unless told otherwise).
    #[default]
    None,
    /// SSE-S3: keys managed by S3 (`AES256`).
    #[value(name = "aes256", alias = "sse-s3", alias = "AES256")]
    Aes256,
    /// SSE-KMS: a KMS key, the account's default `aws/s3` key unless
    /// [`S3Args::s3_sse_kms_key_id`] names one.
    #[value(name = "aws:kms", alias = "kms", alias = "sse-kms")]
    AwsKms,
}

/// `SPILLWAY_S3_*` settings (flags `--s3-*`). The bucket and key prefix are the shared
/// `SPILLWAY_BUCKET` and `SPILLWAY_KEY_PREFIX`; the URL lifetimes are the server's
/// `SPILLWAY_PRESIGN_TTL` and `SPILLWAY_UPLOAD_URL_TTL`.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Endpoint the server uses to reach the store, e.g. `http://minio:9000`
    /// [default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's endpoint for the region].
    #[arg(long = "s3-endpoint", env = "SPILLWAY_S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,
    /// Endpoint presigned URLs are made for, when clients reach the store at another address
    /// than the server [default: the endpoint the server uses].
    #[arg(long = "s3-public-endpoint", env = "SPILLWAY_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<Url>,
    /// Region [default: AWS_REGION, the profile's region, instance metadata; us-east-1 when an
    /// endpoint is set and no region is found].
    #[arg(long = "s3-region", env = "SPILLWAY_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (`{endpoint}/{bucket}/{key}`), as MinIO and LocalStack need.
    #[arg(long = "s3-path-style", env = "SPILLWAY_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Server-side encryption: `none` (the bucket's default), `aes256` (SSE-S3) or `aws:kms`.
    #[arg(
        long = "s3-sse",
        env = "SPILLWAY_S3_SSE",
        value_enum,
        default_value = "none"
    )]
    pub s3_sse: SseMode,
    /// KMS key id or ARN for `aws:kms` [default: the account's aws/s3 key].
    #[arg(long = "s3-sse-kms-key-id", env = "SPILLWAY_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,
    /// Storage class of stored objects, e.g. `STANDARD`, `INTELLIGENT_TIERING`
    /// [default: the bucket's].
    #[arg(long = "s3-storage-class", env = "SPILLWAY_S3_STORAGE_CLASS")]
    pub s3_storage_class: Option<String>,
    /// Objects larger than this many bytes are written with a multipart upload.
    #[arg(long = "s3-multipart-threshold", env = "SPILLWAY_S3_MULTIPART_THRESHOLD", default_value_t = DEFAULT_MULTIPART_THRESHOLD)]
    pub s3_multipart_threshold: u64,
    /// Bytes per multipart part (5 MiB to 5 GiB; raised when the largest object would need
    /// more than 10000 parts).
    #[arg(long = "s3-part-size", env = "SPILLWAY_S3_PART_SIZE", default_value_t = DEFAULT_PART_SIZE)]
    pub s3_part_size: u64,
    /// Parts of one object uploaded at once (1 to 64).
    #[arg(long = "s3-upload-concurrency", env = "SPILLWAY_S3_UPLOAD_CONCURRENCY", default_value_t = DEFAULT_UPLOAD_CONCURRENCY)]
    pub s3_upload_concurrency: usize,
    /// Seconds allowed to open a connection to the store.
    #[arg(
        long = "s3-connect-timeout",
        env = "SPILLWAY_S3_CONNECT_TIMEOUT",
        default_value_t = 10
    )]
    pub s3_connect_timeout: u64,
    /// Seconds allowed for one attempt of one request (a part upload, a HEAD, ...) until its
    /// response headers.
    #[arg(
        long = "s3-request-timeout",
        env = "SPILLWAY_S3_REQUEST_TIMEOUT",
        default_value_t = 300
    )]
    pub s3_request_timeout: u64,
    /// Temporary credentials are replaced this many seconds before they expire, so every
    /// presigned URL stays valid at least this long (or its TTL, if shorter).
    #[arg(
        long = "s3-credentials-refresh-margin",
        env = "SPILLWAY_S3_CREDENTIALS_REFRESH_MARGIN",
        default_value_t = 600
    )]
    pub s3_credentials_refresh_margin: u64,
}

impl Default for S3Args {
    fn default() -> Self {
        S3Args {
            s3_endpoint: None,
            s3_public_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_sse: SseMode::None,
            s3_sse_kms_key_id: None,
            s3_storage_class: None,
            s3_multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            s3_part_size: DEFAULT_PART_SIZE,
            s3_upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            s3_connect_timeout: 10,
            s3_request_timeout: 300,
            s3_credentials_refresh_margin: 600,
        }
    }
}

/// Per-object settings sent with every upload.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectSettings {
    pub sse: Option<ServerSideEncryption>,
    pub kms_key_id: Option<String>,
    pub storage_class: Option<StorageClass>,
}

/// An S3 bucket (and key prefix) as a Spillway [`Storage`]. Cheap to share behind an `Arc`.
pub struct S3Store {
    client: Client,
    /// Signs URLs for the public endpoint (the same client when there is none).
    presign_client: Client,
    bucket: String,
    key_prefix: String,
    region: String,
    /// Where URLs of this bucket point: the internal endpoint, then the public one.
    bases: Vec<BucketBase>,
    uploader: Uploader,
    credentials: CredentialsWatch,
    refresh_margin: Duration,
    /// The credentials expiry already warned about (unix seconds), so the warning is logged
    /// once per credentials, not once per URL.
    warned_expiry: AtomicU64,
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

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

fn check_endpoint(name: &str, url: &Url) -> Result<(), StorageError> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(config_error(format!(
            "{name} must be an http(s) url with a host, got {}",
            redact_url(url.as_str())
        )));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(config_error(format!(
            "{name} must not carry credentials, a query or a fragment"
        )));
    }
    Ok(())
}

/// S3's (and MinIO's) bucket naming rules, loosely: what can appear in a host name or a path
/// segment without escaping.
fn check_bucket(bucket: &str) -> Result<(), StorageError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "SPILLWAY_BUCKET {bucket:?} is not a valid bucket name (3-63 of a-z 0-9 . -)"
        )))
    }
}

/// Checks the upload settings; returns the part size actually used.
fn upload_part_size(args: &S3Args, max_object_bytes: u64) -> Result<u64, StorageError> {
    if !(upload::MIN_PART_SIZE..=upload::MAX_PART_SIZE).contains(&args.s3_part_size) {
        return Err(config_error(format!(
            "SPILLWAY_S3_PART_SIZE must be between {} and {} bytes, got {}",
            upload::MIN_PART_SIZE,
            upload::MAX_PART_SIZE,
            args.s3_part_size
        )));
    }
    if args.s3_multipart_threshold > upload::MAX_PART_SIZE {
        return Err(config_error(format!(
            "SPILLWAY_S3_MULTIPART_THRESHOLD must be at most {} bytes (the largest single PUT)",
            upload::MAX_PART_SIZE
        )));
    }
    if !(1..=MAX_UPLOAD_CONCURRENCY).contains(&args.s3_upload_concurrency) {
        return Err(config_error(format!(
            "SPILLWAY_S3_UPLOAD_CONCURRENCY must be between 1 and {MAX_UPLOAD_CONCURRENCY}"
        )));
    }
    // The largest object must fit in 10000 parts.
    let needed = max_object_bytes.div_ceil(upload::MAX_PARTS);
    let part = args.s3_part_size.max(needed.next_multiple_of(1024 * 1024));
    if part > upload::MAX_PART_SIZE {
        return Err(config_error(format!(
            "SPILLWAY_MAX_UPLOAD_BYTES of {max_object_bytes} cannot be uploaded in 10000 parts"
        )));
    }
    Ok(part)
}

fn object_settings(args: &S3Args) -> Result<ObjectSettings, StorageError> {
    let sse = match args.s3_sse {
        SseMode::None => None,
        SseMode::Aes256 => Some(ServerSideEncryption::Aes256),
        SseMode::AwsKms => Some(ServerSideEncryption::AwsKms),
    };
    if args.s3_sse_kms_key_id.is_some() && args.s3_sse != SseMode::AwsKms {
        return Err(config_error(
            "SPILLWAY_S3_SSE_KMS_KEY_ID needs SPILLWAY_S3_SSE=aws:kms",
        ));
    }
    let storage_class = match args.s3_storage_class.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) if c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
            Some(StorageClass::from(c))
        }
        Some(c) => {
            return Err(config_error(format!(
                "SPILLWAY_S3_STORAGE_CLASS {c:?} is not a storage class name (e.g. STANDARD)"
            )))
        }
    };
    Ok(ObjectSettings {
        sse,
        kms_key_id: args.s3_sse_kms_key_id.clone(),
        storage_class,
    })
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
    /// Connects to the store described by `args` and `settings` (`settings.bucket` is
    /// required). Loads the AWS configuration (region, credentials, endpoint) from the
    /// standard chain and resolves credentials once, within the connect timeout, to report
    /// their expiry; a failure there is logged, not fatal (see [`Storage::check_ready`]).
    pub async fn connect(args: &S3Args, settings: &StoreSettings) -> Result<Self, StorageError> {
        Self::connect_inner(args, settings, None).await
    }

    /// Like [`S3Store::connect`], with credentials from `credentials` instead of the standard
    /// chain (the region and endpoint still come from `args` and the environment).
    pub async fn connect_with_credentials(
        args: &S3Args,
        settings: &StoreSettings,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, StorageError> {
        Self::connect_inner(
            args,
            settings,
            Some(SharedCredentialsProvider::new(credentials)),
        )
        .await
    }

    async fn connect_inner(
        args: &S3Args,
        settings: &StoreSettings,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, StorageError> {
        let bucket = settings
            .bucket
            .clone()
            .ok_or_else(|| config_error("SPILLWAY_BUCKET is required for the s3 store"))?;
        check_bucket(&bucket)?;
        validate_key_prefix(&settings.key_prefix)
            .map_err(|e| config_error(format!("invalid SPILLWAY_KEY_PREFIX: {e}")))?;
        if let Some(u) = &args.s3_endpoint {
            check_endpoint("SPILLWAY_S3_ENDPOINT", u)?;
        }
        if let Some(u) = &args.s3_public_endpoint {
            check_endpoint("SPILLWAY_S3_PUBLIC_ENDPOINT", u)?;
        }
        let part_size = upload_part_size(args, settings.max_object_bytes)?;
        let object = object_settings(args)?;
        let refresh_margin = Duration::from_secs(args.s3_credentials_refresh_margin);

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(args.s3_connect_timeout.max(1)))
            .operation_attempt_timeout(Duration::from_secs(args.s3_request_timeout.max(1)))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .identity_cache(IdentityCache::lazy().buffer_time(refresh_margin).build());
        if let Some(r) = args.s3_region.as_deref().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(r.to_string()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        let sdk = loader.load().await;

        // The endpoint as the SDK itself would pick it (service-specific variable first), made
        // explicit so that URLs can be matched against it.
        let endpoint: Option<String> = match &args.s3_endpoint {
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
                    "no aws region found: set SPILLWAY_S3_REGION or AWS_REGION",
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
                .force_path_style(args.s3_path_style);
            b.set_credentials_provider(Some(provider.clone()));
            b.set_endpoint_url(endpoint.map(str::to_string));
            Client::from_conf(b.build())
        };
        let client = build(endpoint.as_deref());
        let public = args
            .s3_public_endpoint
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
                args.s3_path_style,
                &sdk,
            )
            .await?,
        ];
        if let Some(p) = &public {
            let b = bucket_base(&bucket, &region, Some(p), args.s3_path_style, &sdk).await?;
            if !bases.contains(&b) {
                bases.push(b);
            }
        }

        let config = UploadConfig {
            threshold: args.s3_multipart_threshold,
            part_size,
            concurrency: args.s3_upload_concurrency,
            max_object_bytes: settings.max_object_bytes,
            checksums,
        };
        if part_size != args.s3_part_size {
            tracing::info!(
                part_size,
                "s3 part size raised so that SPILLWAY_MAX_UPLOAD_BYTES fits in 10000 parts"
            );
        }
        let store = S3Store {
            uploader: Uploader {
                client: client.clone(),
                bucket: bucket.clone(),
                config,
                object,
            },
            client,
            presign_client,
            bucket,
            key_prefix: settings.key_prefix.clone(),
            region,
            bases,
            credentials,
            refresh_margin,
            warned_expiry: AtomicU64::new(0),
        };
        store
            .prime_credentials(Duration::from_secs(args.s3_connect_timeout.max(1)))
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
                            "SPILLWAY_S3_CREDENTIALS_REFRESH_MARGIN ({}s) is not shorter than \
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

    async fn presign_with(
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
                "presigned s3 urls live at most 7 days (604800 s), {ttl_secs} s asked \
                 (SPILLWAY_PRESIGN_TTL, SPILLWAY_UPLOAD_URL_TTL)"
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

    fn warn_if_credentials_expire_first(&self, ttl: Duration) {
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn opt_string(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// `bytes START-END/TOTAL` → TOTAL.
fn content_range_total(header: &str) -> Option<u64> {
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

    async fn put(
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
                    Failure::NoSuchBucket => no_such_bucket(&self.bucket),
                    Failure::Other(m) => StorageError::Backend(m),
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
                    Err(e) => Some((
                        Err(StorageError::Backend(format!(
                            "s3 GetObject s3://{bucket}/{key_text}: reading the body: {e}"
                        ))),
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

    async fn check_ready(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(
                |e| match classify("HeadBucket", &format!("s3://{}", self.bucket), &e) {
                    Failure::NoSuchBucket | Failure::NoSuchKey => no_such_bucket(&self.bucket),
                    Failure::Other(m) => StorageError::Backend(m),
                    Failure::InvalidRange => StorageError::Backend("s3 HeadBucket failed".into()),
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

#[cfg(test)]
mod tests;
