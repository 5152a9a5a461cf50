//! Spillway storage backend for Google Cloud Storage.
//!
//! Objects live in one bucket under `{key prefix}{random 128-bit hex id}`. The pieces:
//!
//! - **Data** goes through the official [`google_cloud_storage`] client (JSON API over HTTP):
//!   uploads of unknown size are resumable and buffered in 8 MiB pieces, so memory stays
//!   bounded whatever the object's size; reads are ranged, resumable and checksummed.
//! - **Signed URLs** are V4 (`GOOG4-RSA-SHA256`), built by the crate's
//!   [`SignedUrlBuilder`](google_cloud_storage::builder::storage::SignedUrlBuilder) and signed
//!   by a [`google_cloud_auth`] signer: locally with a service-account key, or through the IAM
//!   `signBlob` API under GKE Workload Identity (or for the account named in
//!   [`GcsConfig::signing_account`]).
//! - **Metadata calls** (object metadata, delete, bucket permissions, lifecycle) use the JSON
//!   API directly: the crate's `StorageControl` client speaks only gRPC, which emulators and
//!   some private endpoints do not serve.
//!
//! Upload URLs sign the `Content-Type` Spillway's clients send
//! ([`DEFAULT_SIGNED_PUT_CONTENT_TYPE`]), so a PUT with another type is refused by GCS.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), spillway_storage::StorageError> {
//! use std::time::Duration;
//! use spillway_storage::{PresignMethod, Storage};
//! use spillway_storage_gcs::{GcsConfig, GcsStore};
//!
//! let mut config = GcsConfig::new("my-bucket");
//! config.key_prefix = "spillway/".into();
//! let store = GcsStore::new(config).await?;
//! let key = store.new_key();
//! store.put(&key, b"hello".to_vec().into(), Default::default()).await?;
//! let url = store.presign(&key, PresignMethod::Get, Duration::from_secs(600)).await?;
//! assert_eq!(store.key_from_url(&url.url)?, key);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod api;
mod auth;
mod errors;
mod lifecycle;
mod signing;
mod upload;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use google_cloud_auth::signer::Signer;
use google_cloud_storage::client::Storage as GcsClient;
use google_cloud_storage::model_ext::ReadRange;
use spillway_storage::{
    redact_url, validate_key_prefix, ByteRange, GetResult, InitOptions, ObjectKey, ObjectMeta,
    PresignMethod, PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use url::Url;

pub use signing::MAX_SIGNED_URL_TTL;

/// The Cloud Storage endpoint used when none is configured.
pub const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// The `Content-Type` upload URLs are signed for: the one Spillway's clients (and the Python
/// reference client) send when they PUT a request.
pub const DEFAULT_SIGNED_PUT_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// Size of the pieces a streamed upload is sent in (and so the memory one upload holds).
pub const UPLOAD_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Longest `Content-Type` / `Content-Encoding` value accepted by [`Storage::put`].
const MAX_HEADER_VALUE_LEN: usize = 256;

/// `SPILLWAY_GCS_*` settings of `spillway serve` and `spillway storage init` (with
/// `SPILLWAY_STORAGE=gcs`; the bucket and key prefix are the shared `SPILLWAY_BUCKET` and
/// `SPILLWAY_KEY_PREFIX`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GcsArgs {
    /// Project that owns a bucket created by `spillway storage init --create-bucket` (gcs).
    #[arg(long = "gcs-project", env = "SPILLWAY_GCS_PROJECT")]
    pub project: Option<String>,
    /// Cloud Storage API endpoint, e.g. a private endpoint or an emulator (gcs)
    /// [default: storage.googleapis.com over https, or STORAGE_EMULATOR_HOST].
    #[arg(long = "gcs-endpoint", env = "SPILLWAY_GCS_ENDPOINT")]
    pub endpoint: Option<Url>,
    /// Scheme and host of the signed URLs handed to clients, when they reach Cloud Storage
    /// differently from this server (gcs) [default: the endpoint].
    #[arg(long = "gcs-public-endpoint", env = "SPILLWAY_GCS_PUBLIC_ENDPOINT")]
    pub public_endpoint: Option<Url>,
    /// Service account that signs URLs through the IAM signBlob API; the identity Spillway
    /// runs as needs roles/iam.serviceAccountTokenCreator on it (gcs) [default: the
    /// credentials' own service account].
    #[arg(long = "gcs-signing-account", env = "SPILLWAY_GCS_SIGNING_ACCOUNT")]
    pub signing_account: Option<String>,
    /// Credentials JSON file, e.g. a service-account key (gcs) [default: Application Default
    /// Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud, or the metadata server].
    #[arg(long = "gcs-credentials-file", env = "SPILLWAY_GCS_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Send API calls without credentials (emulators); URLs are still signed with the
    /// credentials file's key (gcs).
    #[arg(long = "gcs-anonymous", env = "SPILLWAY_GCS_ANONYMOUS")]
    pub anonymous: bool,
    /// Emulator address (`host:port` or a URL), as Google's client libraries read it: used as
    /// the endpoint, with anonymous API calls, unless SPILLWAY_GCS_ENDPOINT is set (gcs).
    #[arg(long = "gcs-emulator-host", env = "STORAGE_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
}

/// How a [`GcsStore`] is set up (the library-level form of [`GcsArgs`]).
#[derive(Clone, PartialEq, Eq)]
pub struct GcsConfig {
    /// The bucket.
    pub bucket: String,
    /// Prefix of every key [`Storage::new_key`] makes; checked with
    /// [`spillway_storage::validate_key_prefix`].
    pub key_prefix: String,
    /// Largest object [`Storage::put`] accepts.
    pub max_object_bytes: u64,
    /// API endpoint (`http(s)://host[:port]`, no path) [default: [`DEFAULT_ENDPOINT`]].
    pub endpoint: Option<Url>,
    /// Scheme and host of signed URLs [default: the endpoint].
    pub public_endpoint: Option<Url>,
    /// Project of a bucket created by [`Storage::init`].
    pub project: Option<String>,
    /// Credentials JSON file [default: Application Default Credentials].
    pub credentials_file: Option<PathBuf>,
    /// Send API calls without credentials (emulators). URLs are then signed with the key in
    /// `credentials_file`.
    pub anonymous: bool,
    /// Sign URLs as this service account through the IAM signBlob API.
    pub signing_account: Option<String>,
    /// IAM Credentials API endpoint for `signing_account`
    /// [default: `https://iamcredentials.googleapis.com`].
    pub iam_endpoint: Option<Url>,
    /// `Content-Type` upload URLs are signed for (`None`: any content type is accepted)
    /// [default: [`DEFAULT_SIGNED_PUT_CONTENT_TYPE`]].
    pub signed_put_content_type: Option<String>,
}

impl GcsConfig {
    /// Defaults for `bucket`: key prefix `spillway/`, objects up to 4 GiB, Application Default
    /// Credentials, the public Cloud Storage endpoint.
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsConfig {
            bucket: bucket.into(),
            key_prefix: "spillway/".into(),
            max_object_bytes: 4 * 1024 * 1024 * 1024,
            endpoint: None,
            public_endpoint: None,
            project: None,
            credentials_file: None,
            anonymous: false,
            signing_account: None,
            iam_endpoint: None,
            signed_put_content_type: Some(DEFAULT_SIGNED_PUT_CONTENT_TYPE.into()),
        }
    }

    /// The configuration `spillway serve` derives from its settings.
    pub fn from_args(
        args: &GcsArgs,
        settings: &spillway_storage::StoreSettings,
    ) -> Result<Self, StorageError> {
        let bucket = settings
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| config_error("SPILLWAY_BUCKET is required for the gcs store"))?;
        let mut config = GcsConfig::new(bucket);
        config.key_prefix = settings.key_prefix.clone();
        config.max_object_bytes = settings.max_object_bytes;
        config.project = args.project.clone().filter(|p| !p.is_empty());
        config.public_endpoint = args.public_endpoint.clone();
        config.credentials_file = args.credentials_file.clone();
        config.signing_account = args.signing_account.clone().filter(|a| !a.is_empty());
        config.anonymous = args.anonymous;
        match (&args.endpoint, args.emulator_host.as_deref()) {
            (Some(endpoint), _) => config.endpoint = Some(endpoint.clone()),
            (None, Some(host)) if !host.is_empty() => {
                config.endpoint = Some(emulator_endpoint(host)?);
                config.anonymous = true;
            }
            _ => {}
        }
        Ok(config)
    }
}

impl fmt::Debug for GcsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcsConfig")
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field(
                "public_endpoint",
                &self.public_endpoint.as_ref().map(Url::as_str),
            )
            .field("project", &self.project)
            .field("credentials_file", &self.credentials_file)
            .field("anonymous", &self.anonymous)
            .field("signing_account", &self.signing_account)
            .field("iam_endpoint", &self.iam_endpoint.as_ref().map(Url::as_str))
            .field("signed_put_content_type", &self.signed_put_content_type)
            .finish()
    }
}

/// `STORAGE_EMULATOR_HOST` is `host:port` for most Google libraries and a URL for some.
fn emulator_endpoint(host: &str) -> Result<Url, StorageError> {
    let raw = if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    Url::parse(&raw).map_err(|e| config_error(format!("STORAGE_EMULATOR_HOST {host:?}: {e}")))
}

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

/// Cloud Storage bucket naming rules (the subset that matters for building URLs safely).
fn check_bucket_name(bucket: &str) -> Result<(), StorageError> {
    let ok = (3..=222).contains(&bucket.len())
        && bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && bucket
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bucket
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bucket
            .split('.')
            .all(|part| !part.is_empty() && part.len() <= 63);
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "invalid bucket name {bucket:?}: use 3-63 characters of a-z, 0-9, '-', '_' (and '.' \
             between parts), starting and ending with a letter or digit"
        )))
    }
}

/// An endpoint must be a bare `http(s)://host[:port]`: signed URLs and API paths are built
/// under its root.
fn check_endpoint(what: &str, url: &Url) -> Result<(), StorageError> {
    let fail = |reason: &str| {
        Err(config_error(format!(
            "{what} {}: {reason}",
            redact_url(url.as_str())
        )))
    };
    if !matches!(url.scheme(), "http" | "https") {
        return fail("must be an http or https url");
    }
    if url.host_str().is_none() {
        return fail("has no host");
    }
    if url.path() != "/" && !url.path().is_empty() {
        return fail("must not have a path");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return fail("must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return fail("must not carry credentials");
    }
    Ok(())
}

fn check_put_options(opts: &PutOptions) -> Result<(), StorageError> {
    for (name, value) in [
        ("content-type", &opts.content_type),
        ("content-encoding", &opts.content_encoding),
    ] {
        if let Some(v) = value {
            if v.is_empty()
                || v.len() > MAX_HEADER_VALUE_LEN
                || v.bytes().any(|b| !(b == b' ' || b.is_ascii_graphic()))
            {
                return Err(StorageError::Backend(format!(
                    "{name} is not a valid http header value"
                )));
            }
        }
    }
    Ok(())
}

/// `http(s)://host[:port]` without the trailing slash [`Url`] adds.
fn origin_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

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
    /// Connects to the store described by `args` and `settings` (see [`GcsConfig::from_args`]).
    pub async fn connect(
        args: &GcsArgs,
        settings: &spillway_storage::StoreSettings,
    ) -> Result<Self, StorageError> {
        Self::new(GcsConfig::from_args(args, settings)?).await
    }

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
            check_put_options(&PutOptions {
                content_type: Some(ct.clone()),
                content_encoding: None,
            })?;
        }
        let auth = auth::load(&config)?;
        if let Err(reason) = &auth.signer {
            tracing::warn!(%reason, "gcs store cannot sign urls");
        }
        let client = GcsClient::builder()
            .with_endpoint(origin_string(&endpoint))
            .with_credentials(auth.credentials.clone())
            .with_resumable_upload_buffer_size(UPLOAD_BUFFER_BYTES)
            .build()
            .await
            .map_err(|e| {
                config_error(format!(
                    "gcs client: {}",
                    errors::redact_text(&errors::error_chain(&e))
                ))
            })?;
        let api = api::JsonApi::new(
            origin_string(&endpoint),
            config.bucket.clone(),
            auth.credentials,
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
        let response = request
            .send()
            .await
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
        let stream =
            futures::stream::unfold((response, key.clone()), |(mut response, key)| async move {
                let item = response.next().await?;
                let item = item.map_err(|e| errors::from_gcs("read object", Some(&key), e));
                Some((item, (response, key)))
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

    async fn put(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        check_put_options(&opts)?;
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
        let written = request.send_buffered().await;
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
        let granted = self.api.test_permissions(needed).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::tests::{expected_for, vector, TEST_KEY_FILE};

    /// A store that signs with the published test key and sends nothing anywhere (these tests
    /// make no API call).
    fn test_config(endpoint: &str) -> GcsConfig {
        let mut c = GcsConfig::new("test-bucket");
        c.key_prefix = String::new();
        c.endpoint = Some(Url::parse(endpoint).unwrap());
        c.anonymous = true;
        c.credentials_file = Some(TEST_KEY_FILE.into());
        c
    }

    async fn store(c: GcsConfig) -> GcsStore {
        GcsStore::new(c).await.unwrap()
    }

    fn config_reason(err: StorageError) -> String {
        match err {
            StorageError::Config(m) => m,
            other => panic!("expected Config, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn presigned_urls_match_the_conformance_vectors() {
        // GET, and PUT with an unsigned content type, as published.
        for (name, endpoint) in [
            ("Simple GET", DEFAULT_ENDPOINT),
            ("Vary expiration and timestamp", DEFAULT_ENDPOINT),
            (
                "Simple GET with non-default hostname",
                "http://localhost:8080",
            ),
            ("Simple PUT", DEFAULT_ENDPOINT),
        ] {
            let v = vector(name);
            let mut c = test_config(endpoint);
            c.signed_put_content_type = None;
            let s = store(c).await;
            let key = ObjectKey::parse(v["object"].as_str().unwrap()).unwrap();
            let method = match v["method"].as_str().unwrap() {
                "GET" => PresignMethod::Get,
                _ => PresignMethod::Put,
            };
            let ttl = Duration::from_secs(v["expiration"].as_u64().unwrap());
            let before = SystemTime::now();
            let url = s.presign(&key, method, ttl).await.unwrap();
            let (expected, _) = expected_for(&v, &url.url).await;
            assert_eq!(url.url.as_str(), expected, "{name}");
            assert_eq!(url.method, method);
            // X-Goog-Date is whole seconds, taken during the call.
            assert!(
                url.expires_at + Duration::from_secs(1) > before + ttl,
                "{name}"
            );
            assert!(url.expires_at <= SystemTime::now() + ttl, "{name}");
        }
    }

    #[tokio::test]
    async fn upload_urls_sign_the_content_type_clients_send() {
        let s = store(test_config(DEFAULT_ENDPOINT)).await;
        let key = ObjectKey::parse("test-object").unwrap();
        let url = s
            .presign(&key, PresignMethod::Put, Duration::from_secs(10))
            .await
            .unwrap();
        // The "Simple headers" vector's canonical form, with the content-type header Spillway
        // signs instead of BAR and foo.
        let mut v = vector("Simple PUT");
        let canonical = v["expectedCanonicalRequest"].as_str().unwrap().replace(
            "X-Goog-SignedHeaders=host\nhost:storage.googleapis.com\n\nhost\n",
            "X-Goog-SignedHeaders=content-type%3Bhost\ncontent-type:application/vnd.apache.arrow.stream\nhost:storage.googleapis.com\n\ncontent-type;host\n",
        );
        assert_ne!(canonical, v["expectedCanonicalRequest"].as_str().unwrap());
        v["expectedCanonicalRequest"] = canonical.into();
        v["expectedUrl"] = v["expectedUrl"]
            .as_str()
            .unwrap()
            .replace(
                "X-Goog-SignedHeaders=host",
                "X-Goog-SignedHeaders=content-type%3Bhost",
            )
            .into();
        let (expected, _) = expected_for(&v, &url.url).await;
        assert_eq!(url.url.as_str(), expected);
        // An upload URL is not a download URL.
        let err = s.key_from_url(&url.url).unwrap_err();
        assert!(matches!(err, StorageError::UrlRefused { .. }), "{err}");
    }

    #[tokio::test]
    async fn urls_are_bound_to_their_method() {
        // The emulator accepts any method on any URL; Cloud Storage checks the method inside
        // the signed canonical request. A download URL's signature is valid for GET only (not
        // PUT, and not HEAD: Spillway's fetch engine probes signed URLs with a ranged GET).
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.signed_put_content_type = None;
        let s = store(c).await;
        let key = ObjectKey::parse("test-object").unwrap();
        let url = s
            .presign(&key, PresignMethod::Get, Duration::from_secs(10))
            .await
            .unwrap();
        let v = vector("Simple GET");
        let (expected, canonical) = expected_for(&v, &url.url).await;
        assert_eq!(url.url.as_str(), expected);
        assert!(canonical.starts_with("GET\n"));
        let date = url
            .url
            .query_pairs()
            .find(|(k, _)| k == "X-Goog-Date")
            .unwrap()
            .1
            .into_owned();
        let signer = crate::signing::tests::test_signer();
        let signature_for = |method: &str| {
            let canonical = canonical.replacen("GET\n", &format!("{method}\n"), 1);
            let digest = <sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes());
            format!(
                "GOOG4-RSA-SHA256\n{date}\n{}/auto/storage/goog4_request\n{}",
                &date[..8],
                hex::encode(digest)
            )
        };
        let ours = expected
            .rsplit_once("X-Goog-Signature=")
            .unwrap()
            .1
            .to_string();
        assert_eq!(
            hex::encode(signer.sign(signature_for("GET")).await.unwrap()),
            ours
        );
        for other in ["HEAD", "PUT", "DELETE"] {
            let theirs = hex::encode(signer.sign(signature_for(other)).await.unwrap());
            assert_ne!(theirs, ours, "{other}");
        }
    }

    #[tokio::test]
    async fn download_urls_map_back_to_their_key() {
        let mut c = test_config("http://127.0.0.1:9023");
        c.key_prefix = "spillway/".into();
        let s = store(c).await;
        let key = s.new_key();
        assert!(key.as_str().starts_with("spillway/"));
        let url = s
            .presign(&key, PresignMethod::Get, Duration::from_secs(600))
            .await
            .unwrap();
        assert!(url
            .url
            .as_str()
            .starts_with(&format!("http://127.0.0.1:9023/test-bucket/{key}?")));
        assert_eq!(s.key_from_url(&url.url).unwrap(), key);
        // Debug output never shows the signature.
        let sig = url
            .url
            .query_pairs()
            .find(|(k, _)| k == "X-Goog-Signature")
            .unwrap()
            .1
            .into_owned();
        assert!(!format!("{url:?}").contains(&sig));

        // Expiry is judged by the date and lifetime in the URL.
        let now = SystemTime::now();
        assert_eq!(s.key_from_url_at(&url.url, now).unwrap(), key);
        let later = now + Duration::from_secs(601);
        let err = s.key_from_url_at(&url.url, later).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let earlier = now - Duration::from_secs(3600);
        assert!(s.key_from_url_at(&url.url, earlier).is_err());
    }

    #[tokio::test]
    async fn tampered_and_foreign_urls_are_refused() {
        let mut c = test_config("http://127.0.0.1:9023");
        c.key_prefix = "spillway/".into();
        let s = store(c).await;
        let key = ObjectKey::parse("spillway/0123456789abcdef").unwrap();
        let good = s
            .presign(&key, PresignMethod::Get, Duration::from_secs(600))
            .await
            .unwrap()
            .url
            .to_string();
        let (base, query) = good.split_once('?').unwrap();
        let foreign = [
            good.replacen("127.0.0.1:9023", "127.0.0.1:9024", 1),
            good.replacen("http://", "https://", 1),
            good.replacen("127.0.0.1", "169.254.169.254", 1),
            good.replacen("/test-bucket/", "/other-bucket/", 1),
            good.replacen("/test-bucket/spillway/", "/test-bucket/elsewhere/", 1),
            good.replacen("http://", "http://user:pw@", 1),
        ];
        for u in foreign {
            let err = s.key_from_url(&Url::parse(&u).unwrap()).unwrap_err();
            assert!(matches!(err, StorageError::ForeignUrl { .. }), "{u}: {err}");
            assert!(!err.to_string().contains("X-Goog-Signature"), "{err}");
        }
        let invalid_key = [
            format!("{base}/../x?{query}").replacen("/spillway/0123456789abcdef/..", "", 1),
            good.replacen("/spillway/", "/spillway%2F", 1),
            good.replacen("0123456789abcdef", "01%2e%2e", 1),
            good.replacen("0123456789abcdef", "a//b", 1),
        ];
        for u in invalid_key {
            let url = Url::parse(&u).unwrap();
            assert!(s.key_from_url(&url).is_err(), "{u} must be refused");
        }
        let refused = [
            base.to_string(),
            format!(
                "{base}?{}",
                query.replace("X-Goog-Signature=", "X-Goog-Sig=")
            ),
            format!(
                "{base}?{}",
                query.replace("X-Goog-Expires=600", "X-Goog-Expires=999999")
            ),
            format!(
                "{base}?{}",
                query.replace("GOOG4-RSA-SHA256", "GOOG4-HMAC-SHA256")
            ),
        ];
        for u in refused {
            let err = s.key_from_url(&Url::parse(&u).unwrap()).unwrap_err();
            assert!(matches!(err, StorageError::UrlRefused { .. }), "{u}: {err}");
        }
    }

    #[tokio::test]
    async fn configuration_is_validated() {
        for bucket in [
            "",
            "ab",
            "UPPER",
            "a/b",
            "-ab",
            "ab-",
            "a..b",
            "a b",
            &"x".repeat(64),
        ] {
            let mut c = test_config(DEFAULT_ENDPOINT);
            c.bucket = bucket.into();
            let msg = config_reason(GcsStore::new(c).await.unwrap_err());
            assert!(msg.contains("bucket name"), "{bucket:?}: {msg}");
        }
        for endpoint in ["ftp://h", "http://h/path", "http://h/?q=1", "http://u:p@h"] {
            let mut c = test_config(DEFAULT_ENDPOINT);
            c.endpoint = Some(Url::parse(endpoint).unwrap());
            assert!(GcsStore::new(c).await.is_err(), "{endpoint}");
            let mut c = test_config(DEFAULT_ENDPOINT);
            c.public_endpoint = Some(Url::parse(endpoint).unwrap());
            assert!(GcsStore::new(c).await.is_err(), "{endpoint}");
        }
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.key_prefix = "../".into();
        assert!(config_reason(GcsStore::new(c).await.unwrap_err()).contains("key prefix"));

        // Without a signer the store is usable for init, but cannot presign or be ready.
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.credentials_file = None;
        let s = store(c).await;
        let key = ObjectKey::parse("k").unwrap();
        let err = s
            .presign(&key, PresignMethod::Get, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(config_reason(err).contains("SPILLWAY_GCS_CREDENTIALS_FILE"));
        assert!(s.check_ready().await.is_err());

        // TTLs above 7 days are shortened to the maximum, and the URL says so.
        let s = store(test_config(DEFAULT_ENDPOINT)).await;
        let url = s
            .presign(&key, PresignMethod::Get, MAX_SIGNED_URL_TTL * 2)
            .await
            .unwrap();
        assert!(url.url.as_str().contains("X-Goog-Expires=604800&"));
        assert!(url.expires_at <= SystemTime::now() + MAX_SIGNED_URL_TTL);
        assert!(!format!("{s:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn settings_map_to_the_configuration() {
        let settings = spillway_storage::StoreSettings {
            bucket: Some("b-1".into()),
            key_prefix: "p/".into(),
            max_object_bytes: 10,
        };
        let mut args = GcsArgs {
            emulator_host: Some("127.0.0.1:9023".into()),
            ..GcsArgs::default()
        };
        let c = GcsConfig::from_args(&args, &settings).unwrap();
        assert_eq!(c.bucket, "b-1");
        assert_eq!(c.key_prefix, "p/");
        assert_eq!(c.max_object_bytes, 10);
        assert_eq!(
            c.endpoint.as_ref().unwrap().as_str(),
            "http://127.0.0.1:9023/"
        );
        assert!(c.anonymous, "an emulator host means anonymous calls");

        // An explicit endpoint wins over the emulator variable, and is not anonymous.
        args.endpoint = Some(Url::parse("https://storage.example.com").unwrap());
        let c = GcsConfig::from_args(&args, &settings).unwrap();
        assert_eq!(c.endpoint.unwrap().host_str(), Some("storage.example.com"));
        assert!(!c.anonymous);

        let no_bucket = spillway_storage::StoreSettings {
            bucket: None,
            ..settings
        };
        let msg = config_reason(GcsConfig::from_args(&args, &no_bucket).unwrap_err());
        assert!(msg.contains("SPILLWAY_BUCKET"), "{msg}");
    }

    #[test]
    fn put_options_must_be_header_values() {
        let ok = PutOptions {
            content_type: Some("application/vnd.apache.arrow.stream".into()),
            content_encoding: Some("zstd".into()),
        };
        check_put_options(&ok).unwrap();
        for bad in ["", "a\r\nb: c", "tab\there", &"x".repeat(300)] {
            let opts = PutOptions {
                content_type: None,
                content_encoding: Some(bad.into()),
            };
            assert!(check_put_options(&opts).is_err(), "{bad:?}");
        }
    }
}
