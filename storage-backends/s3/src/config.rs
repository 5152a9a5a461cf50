//! The library-level configuration of an [`S3Store`](crate::S3Store) and its checks.
//!
//! Errors name the [`S3Config`] field at fault in backticks (`` `part_size` ``); the command
//! line layer (feature `cli`) rewrites those names to its environment variables.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use spillway_storage::{redact_url, StorageError};
use url::Url;

use crate::upload;
use crate::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MULTIPART_THRESHOLD, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PART_SIZE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_UPLOAD_CONCURRENCY, MAX_UPLOAD_CONCURRENCY,
};

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SseMode {
    /// The bucket's default (S3 encrypts new objects with SSE-S3 unless told otherwise).
    #[default]
    None,
    /// SSE-S3: keys managed by S3 (`AES256`).
    #[cfg_attr(
        feature = "cli",
        value(name = "aes256", alias = "sse-s3", alias = "AES256")
    )]
    Aes256,
    /// SSE-KMS: a KMS key, the account's default `aws/s3` key unless
    /// [`S3Config::sse_kms_key_id`] names one.
    #[cfg_attr(
        feature = "cli",
        value(name = "aws:kms", alias = "kms", alias = "sse-kms")
    )]
    AwsKms,
}

/// How an [`S3Store`](crate::S3Store) is set up (the library-level form of the command line's
/// `S3Args`). Credentials and, unless set here, the region and endpoint come from the standard
/// AWS chain.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket (3-63 of `a-z 0-9 . -`).
    pub bucket: String,
    /// Prefix of every key [`Storage::new_key`](spillway_storage::Storage::new_key) makes;
    /// checked with [`spillway_storage::validate_key_prefix`].
    pub key_prefix: String,
    /// Largest object [`Storage::put`](spillway_storage::Storage::put) accepts.
    pub max_object_bytes: u64,
    /// Endpoint the store is reached at, e.g. `http://minio:9000` [default:
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, else AWS's endpoint for the region].
    pub endpoint: Option<Url>,
    /// Endpoint presigned URLs are made for, when clients reach the store at another address
    /// [default: the endpoint].
    pub public_endpoint: Option<Url>,
    /// Region [default: the AWS chain's; `us-east-1` when an endpoint is set and none is found].
    pub region: Option<String>,
    /// Path-style addressing (`{endpoint}/{bucket}/{key}`), as MinIO and LocalStack need.
    pub path_style: bool,
    /// Server-side encryption of stored objects [default: the bucket's].
    pub sse: SseMode,
    /// KMS key id or ARN for [`SseMode::AwsKms`] [default: the account's `aws/s3` key].
    pub sse_kms_key_id: Option<String>,
    /// Storage class of stored objects, e.g. `STANDARD` [default: the bucket's].
    pub storage_class: Option<String>,
    /// Objects larger than this many bytes are written with a multipart upload
    /// [default: [`DEFAULT_MULTIPART_THRESHOLD`]].
    pub multipart_threshold: u64,
    /// Bytes per multipart part, 5 MiB to 5 GiB; raised when the largest object would need
    /// more than 10000 parts [default: [`DEFAULT_PART_SIZE`]].
    pub part_size: u64,
    /// Parts of one object uploaded at once, 1 to [`MAX_UPLOAD_CONCURRENCY`]
    /// [default: [`DEFAULT_UPLOAD_CONCURRENCY`]].
    pub upload_concurrency: usize,
    /// Time allowed to open a connection (at least one second)
    /// [default: [`DEFAULT_CONNECT_TIMEOUT`]].
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of one request (a part upload, a HEAD, ...), its body
    /// sent and its response headers received (at least one second)
    /// [default: [`DEFAULT_REQUEST_TIMEOUT`]].
    pub request_timeout: Duration,
    /// Time allowed for one request with all its retries (at least `request_timeout`): the
    /// longest a call waits for a store that stopped answering before it fails with
    /// [`StorageError::Unavailable`] [default: [`DEFAULT_OPERATION_TIMEOUT`]].
    pub operation_timeout: Duration,
    /// Temporary credentials are replaced this long before they expire [default: 600 s].
    pub credentials_refresh_margin: Duration,
}

impl S3Config {
    /// Defaults for `bucket`: key prefix `spillway/`, objects up to 4 GiB, the AWS chain's
    /// region, endpoint and credentials, the default upload settings and timeouts.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            key_prefix: "spillway/".into(),
            max_object_bytes: 4 * 1024 * 1024 * 1024,
            endpoint: None,
            public_endpoint: None,
            region: None,
            path_style: false,
            sse: SseMode::None,
            sse_kms_key_id: None,
            storage_class: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            credentials_refresh_margin: Duration::from_secs(600),
        }
    }
}

/// Endpoints are shown redacted: a misconfigured one may carry credentials.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<Url>| u.as_ref().map(|u| redact_url(u.as_str()));
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("endpoint", &url(&self.endpoint))
            .field("public_endpoint", &url(&self.public_endpoint))
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field("storage_class", &self.storage_class)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field(
                "credentials_refresh_margin",
                &self.credentials_refresh_margin,
            )
            .finish()
    }
}

/// Per-object settings sent with every upload.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectSettings {
    pub(crate) sse: Option<ServerSideEncryption>,
    pub(crate) kms_key_id: Option<String>,
    pub(crate) storage_class: Option<StorageClass>,
}

pub(crate) fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

pub(crate) fn check_endpoint(name: &str, url: &Url) -> Result<(), StorageError> {
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
pub(crate) fn check_bucket(bucket: &str) -> Result<(), StorageError> {
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
            "`bucket` {bucket:?} is not a valid bucket name (3-63 of a-z 0-9 . -)"
        )))
    }
}

/// Checks the upload settings; returns the part size actually used.
pub(crate) fn upload_part_size(
    config: &S3Config,
    max_object_bytes: u64,
) -> Result<u64, StorageError> {
    if !(upload::MIN_PART_SIZE..=upload::MAX_PART_SIZE).contains(&config.part_size) {
        return Err(config_error(format!(
            "`part_size` must be between {} and {} bytes, got {}",
            upload::MIN_PART_SIZE,
            upload::MAX_PART_SIZE,
            config.part_size
        )));
    }
    if config.multipart_threshold > upload::MAX_PART_SIZE {
        return Err(config_error(format!(
            "`multipart_threshold` must be at most {} bytes (the largest single PUT)",
            upload::MAX_PART_SIZE
        )));
    }
    if !(1..=MAX_UPLOAD_CONCURRENCY).contains(&config.upload_concurrency) {
        return Err(config_error(format!(
            "`upload_concurrency` must be between 1 and {MAX_UPLOAD_CONCURRENCY}"
        )));
    }
    // The largest object must fit in 10000 parts.
    let needed = max_object_bytes.div_ceil(upload::MAX_PARTS);
    let part = config.part_size.max(needed.next_multiple_of(1024 * 1024));
    if part > upload::MAX_PART_SIZE {
        return Err(config_error(format!(
            "`max_object_bytes` of {max_object_bytes} cannot be uploaded in 10000 parts"
        )));
    }
    Ok(part)
}

pub(crate) fn object_settings(config: &S3Config) -> Result<ObjectSettings, StorageError> {
    let sse = match config.sse {
        SseMode::None => None,
        SseMode::Aes256 => Some(ServerSideEncryption::Aes256),
        SseMode::AwsKms => Some(ServerSideEncryption::AwsKms),
    };
    if config.sse_kms_key_id.is_some() && config.sse != SseMode::AwsKms {
        return Err(config_error("`sse_kms_key_id` needs `sse`=aws:kms"));
    }
    let storage_class = match config.storage_class.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(c) if c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
            Some(StorageClass::from(c))
        }
        Some(c) => {
            return Err(config_error(format!(
                "`storage_class` {c:?} is not a storage class name (e.g. STANDARD)"
            )))
        }
    };
    Ok(ObjectSettings {
        sse,
        kms_key_id: config.sse_kms_key_id.clone(),
        storage_class,
    })
}
