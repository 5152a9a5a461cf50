//! The storage trait behind Spillway's externalized payloads.
//!
//! Every backend (the embedded local store, S3, GCS, ...) implements [`Storage`]. Spillway
//! stores each externalized payload as one immutable object under an unguessable key, hands out
//! presigned URLs for it, and never reads back through the URL it handed out: a server that
//! resolves a client's request pointer maps the URL back to a key with
//! [`Storage::key_from_url`] and reads through [`Storage::get`], so it never fetches a foreign URL.
//!
//! Objects can be written from a stream ([`PutPayload::Stream`]) so that a multi-GiB payload is
//! never held twice in memory: the producer hands chunks over a bounded channel as it
//! compresses, and the backend writes them out as they come.
//!
//! # Example
//! ```
//! use spillway_storage::{ObjectKey, PutPayload};
//! let key = ObjectKey::random("results/");
//! assert!(key.as_str().starts_with("results/"));
//! assert_eq!(key.as_str().len(), "results/".len() + 32);
//! let payload = PutPayload::from(bytes::Bytes::from_static(b"hello"));
//! assert_eq!(payload.size_hint(), Some(5));
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use url::Url;

mod body;
#[cfg(feature = "conformance")]
pub mod conformance;
mod redact;

pub use body::{collect_capped, CappedError};
pub use redact::{redact_text, redact_url};

/// Errors every storage backend reports. Messages are lowercase and never contain signed query
/// strings or credentials.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist (or has been deleted).
    #[error("object not found: {key}")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// A key is malformed or would escape the store (path traversal, bad characters, too long).
    #[error("invalid object key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: String,
    },
    /// A presigned URL was refused: bad or missing signature, wrong method, or expired.
    #[error("storage url refused: {reason}")]
    UrlRefused {
        /// Why, without the signature itself.
        reason: String,
    },
    /// The URL does not belong to this store.
    #[error("url is not one of this store's urls: {url}")]
    ForeignUrl {
        /// The redacted URL.
        url: String,
    },
    /// A requested byte range cannot be served.
    #[error("range not satisfiable for object of {size} bytes")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// The object, or a write, is larger than the configured limit.
    #[error("object too large: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes seen (at least).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The producer of a streamed upload failed; nothing was stored.
    #[error("upload aborted: {reason}")]
    UploadAborted {
        /// What the producer reported.
        reason: String,
    },
    /// The backend is misconfigured (missing bucket, bad endpoint, ...).
    #[error("storage configuration error: {0}")]
    Config(String),
    /// An I/O error from the local filesystem.
    #[error("storage i/o error during {op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Any other backend failure (network, service error), already redacted.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The store cannot be reached or does not answer in time: connection refused or reset,
    /// a connect, request or operation timeout, 5xx answers after the backend's retries. The
    /// store's state, not the request's: the same call may succeed later.
    #[error("storage unavailable: {reason}")]
    Unavailable {
        /// What failed, already redacted (no signed query string, no credential).
        reason: String,
    },
    /// The store kept refusing the request as one too many (S3's 503 `SlowDown`, HTTP 429)
    /// after the backend's retries. Like [`StorageError::Unavailable`], worth retrying later.
    #[error("storage throttled: {reason}")]
    Throttled {
        /// The store's answer (its error code, e.g. `SlowDown`), already redacted.
        reason: String,
    },
    /// The store has no room for the object: the local store's disk is full (`ENOSPC`), a disk
    /// quota is exhausted (`EDQUOT`) or a file size limit is reached (`EFBIG`). Nothing partial
    /// is kept.
    #[error("storage full: {reason}")]
    Full {
        /// What ran out, and during which operation.
        reason: String,
    },
}

impl StorageError {
    /// An error of the local filesystem during `op` (e.g. `"write temp file"`): no space, no
    /// quota or a file size limit become [`StorageError::Full`] naming the cause, anything else
    /// [`StorageError::Io`].
    ///
    /// ```
    /// use std::io::{Error, ErrorKind};
    /// use spillway_storage::StorageError;
    /// let full = StorageError::from_io("write temp file", Error::from(ErrorKind::StorageFull));
    /// assert!(matches!(full, StorageError::Full { .. }));
    /// assert!(full.to_string().contains("local store disk is full"), "{full}");
    /// let other = StorageError::from_io("write temp file", Error::from(ErrorKind::PermissionDenied));
    /// assert!(matches!(other, StorageError::Io { .. }));
    /// ```
    pub fn from_io(op: &'static str, source: std::io::Error) -> Self {
        let what = match source.kind() {
            std::io::ErrorKind::StorageFull => "local store disk is full",
            std::io::ErrorKind::QuotaExceeded => "local store disk quota is exhausted",
            std::io::ErrorKind::FileTooLarge => "local store file size limit reached",
            _ => return StorageError::Io { op, source },
        };
        StorageError::Full {
            reason: format!("{what} (during {op}: {source})"),
        }
    }

    /// Whether the failure is the store's state rather than the request's (unavailable or
    /// throttled): a later attempt may succeed, and readiness should report it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Unavailable { .. } | StorageError::Throttled { .. }
        )
    }
}

/// The result type of storage calls.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The key of one stored object: `{prefix}{32 lowercase hex digits}` (a random 128-bit id).
///
/// Keys are restricted to `[A-Za-z0-9._/-]`, at most 512 bytes, with no empty, `.` or `..`
/// segment and no leading `/`, so that no backend can be walked outside its namespace.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 512;

    /// A fresh unguessable key under `prefix` (the prefix is assumed valid; see [`Self::parse`]).
    pub fn random(prefix: &str) -> Self {
        let id: u128 = rand::random();
        ObjectKey(format!("{prefix}{id:032x}"))
    }

    /// Validates a key received from outside (a URL path, a configuration value).
    pub fn parse(raw: &str) -> Result<Self> {
        validate_key(raw, false)?;
        Ok(ObjectKey(raw.to_string()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a key prefix from configuration: the same alphabet as keys, may be empty, may end in `/`.
pub fn validate_key_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix, true)
}

fn validate_key(raw: &str, allow_trailing_slash: bool) -> Result<()> {
    let invalid = |reason: &str| {
        Err(StorageError::InvalidKey {
            reason: reason.to_string(),
        })
    };
    if raw.is_empty() {
        return invalid("empty key");
    }
    if raw.len() > ObjectKey::MAX_LEN {
        return invalid("key longer than 512 bytes");
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return invalid("key has characters outside [A-Za-z0-9._/-]");
    }
    let body = if allow_trailing_slash {
        raw.strip_suffix('/').unwrap_or(raw)
    } else {
        raw
    };
    if body
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return invalid("key has an empty, '.' or '..' segment");
    }
    Ok(())
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.0)
    }
}

/// The body of a [`Storage::put`].
pub enum PutPayload {
    /// The whole object in memory (reference-counted: not copied by the backend).
    Bytes(Bytes),
    /// The object as a stream of chunks. An `Err` item aborts the upload and nothing is stored.
    Stream {
        /// The chunks, in order.
        stream: BoxStream<'static, std::io::Result<Bytes>>,
        /// The total size when known in advance (lets backends pick single PUT vs multipart).
        size_hint: Option<u64>,
    },
}

impl PutPayload {
    /// The size when known before the upload.
    pub fn size_hint(&self) -> Option<u64> {
        match self {
            PutPayload::Bytes(b) => Some(b.len() as u64),
            PutPayload::Stream { size_hint, .. } => *size_hint,
        }
    }
}

impl From<Bytes> for PutPayload {
    fn from(b: Bytes) -> Self {
        PutPayload::Bytes(b)
    }
}

impl From<Vec<u8>> for PutPayload {
    fn from(b: Vec<u8>) -> Self {
        PutPayload::Bytes(Bytes::from(b))
    }
}

impl fmt::Debug for PutPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutPayload::Bytes(b) => write!(f, "PutPayload::Bytes({} bytes)", b.len()),
            PutPayload::Stream { size_hint, .. } => {
                write!(f, "PutPayload::Stream(size_hint: {size_hint:?})")
            }
        }
    }
}

/// HTTP headers stored with an object and echoed when it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// `Content-Type`, e.g. `application/vnd.apache.arrow.stream`.
    pub content_type: Option<String>,
    /// `Content-Encoding`, e.g. `zstd`; the only place object compression is signalled.
    pub content_encoding: Option<String>,
}

impl PutOptions {
    /// The longest `Content-Type` / `Content-Encoding` value a backend accepts.
    pub const MAX_HEADER_VALUE_LEN: usize = 256;

    /// Checks that both values can be stored and echoed back as HTTP header values unchanged:
    /// non-empty, at most [`Self::MAX_HEADER_VALUE_LEN`] bytes, visible ASCII and spaces only
    /// (no tab, no line break). Every backend calls it first in [`Storage::put`], so a value
    /// one store accepts is accepted by all.
    ///
    /// ```
    /// use spillway_storage::PutOptions;
    /// let ok = PutOptions {
    ///     content_type: Some("application/vnd.apache.arrow.stream".into()),
    ///     content_encoding: Some("zstd".into()),
    /// };
    /// assert!(ok.validate().is_ok());
    /// let injected = PutOptions {
    ///     content_type: Some("text/plain\r\nx-injected: 1".into()),
    ///     content_encoding: None,
    /// };
    /// assert!(injected.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("content-type", &self.content_type),
            ("content-encoding", &self.content_encoding),
        ] {
            if let Some(v) = value {
                if v.is_empty()
                    || v.len() > Self::MAX_HEADER_VALUE_LEN
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
}

/// What a backend knows about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: ObjectKey,
    /// Stored size in bytes (after any compression).
    pub size: u64,
    /// Stored `Content-Type`.
    pub content_type: Option<String>,
    /// Stored `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// An entity tag that changes whenever the object's bytes change.
    pub etag: Option<String>,
}

/// The HTTP method a presigned URL is bound to. A URL signed for one never works for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresignMethod {
    /// Download (GET, and HEAD where the store allows it).
    Get,
    /// Upload (PUT).
    Put,
}

impl PresignMethod {
    /// The HTTP method name.
    pub fn as_str(self) -> &'static str {
        match self {
            PresignMethod::Get => "GET",
            PresignMethod::Put => "PUT",
        }
    }
}

/// A presigned URL and when it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    /// The URL, signature included: treat as a secret, log only [`redact_url`] of it.
    pub url: Url,
    /// The method it is bound to.
    pub method: PresignMethod,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedUrl")
            .field("url", &redact_url(self.url.as_str()))
            .field("method", &self.method)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An inclusive-exclusive byte range `start..end` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// An object being read: its metadata, the range served, and the bytes as a stream.
pub struct GetResult {
    /// The object's metadata (size is the whole object's size).
    pub meta: ObjectMeta,
    /// The range the stream covers.
    pub range: ByteRange,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// One object store. Implementations are cheap to share (`Arc<dyn Storage>`).
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics: `local`, `s3`, `gcs`.
    fn kind(&self) -> &'static str;

    /// A fresh unguessable key under this store's configured key prefix.
    fn new_key(&self) -> ObjectKey;

    /// Stores an object: the options are checked with [`PutOptions::validate`] (one rule for
    /// every backend), then [`Storage::put_object`] writes it. A stream that fails leaves
    /// nothing behind (no partial object).
    async fn put(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        opts.validate()?;
        self.put_object(key, payload, opts).await
    }

    /// The backend's write, called by [`Storage::put`] with options already validated. Call
    /// `put`, not this. A stream that fails must leave nothing behind (no partial object).
    async fn put_object(
        &self,
        key: &ObjectKey,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<ObjectMeta>;

    /// A URL that lets anyone holding it `method` the object until `ttl` has passed.
    async fn presign(
        &self,
        key: &ObjectKey,
        method: PresignMethod,
        ttl: Duration,
    ) -> Result<PresignedUrl>;

    /// The object's metadata.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// Reads the object, or a range of it.
    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<GetResult>;

    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// If `url` is a download URL this store handed out (and, where the store can tell, one
    /// that is still valid), the key it names. Servers use this to read client-sent pointers
    /// through the store instead of fetching arbitrary URLs.
    fn key_from_url(&self, url: &Url) -> Result<ObjectKey>;

    /// A cheap call proving the store is reachable and usable with the configured
    /// credentials (readiness probes cache its result). It should answer within a couple of
    /// seconds, without the retries a call gets: a probe reports the store's state now, and
    /// an unreachable store as [`StorageError::Unavailable`] naming the cause.
    async fn check_ready(&self) -> Result<()> {
        Ok(())
    }

    /// Prepares the store for Spillway (`spillway storage init`): creates the bucket if asked,
    /// and installs a lifecycle rule expiring objects under the key prefix. Returns a
    /// human-readable account of what was done.
    async fn init(&self, opts: &InitOptions) -> Result<String> {
        let _ = opts;
        Ok(format!(
            "nothing to initialize for the {} store",
            self.kind()
        ))
    }
}

/// What `spillway storage init` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Create the bucket when it does not exist.
    pub create_bucket: bool,
    /// Expire objects under the key prefix after this many days (0: install no rule).
    pub expire_after_days: u32,
    /// Abort incomplete multipart uploads after this many days (S3).
    pub abort_incomplete_uploads_after_days: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            create_bucket: false,
            expire_after_days: 1,
            abort_incomplete_uploads_after_days: 1,
        }
    }
}

/// Settings every backend shares (the backend-specific ones live in each backend crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Bucket (S3, GCS); ignored by the local store.
    pub bucket: Option<String>,
    /// Prefix of every key (validated with [`validate_key_prefix`]).
    pub key_prefix: String,
    /// Largest object accepted through an upload URL or `put`.
    pub max_object_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_are_unique_and_valid() {
        let a = ObjectKey::random("p/");
        let b = ObjectKey::random("p/");
        assert_ne!(a, b);
        ObjectKey::parse(a.as_str()).expect("random keys parse");
    }

    #[test]
    fn keys_refuse_traversal_and_odd_characters() {
        for bad in [
            "", "../x", "a/../b", "/abs", "a//b", "a/./b", "a b", "a\\b", "a%2e", "a/", "é",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(ObjectKey::parse(&"a".repeat(513)).is_err());
        for good in ["a", "results/0123", "x.y-z_w/v"] {
            ObjectKey::parse(good).expect(good);
        }
    }

    #[test]
    fn put_options_must_be_header_values() {
        let ok = PutOptions {
            content_type: Some("application/vnd.apache.arrow.stream".into()),
            content_encoding: Some("zstd".into()),
        };
        ok.validate().unwrap();
        PutOptions::default().validate().unwrap();
        let longest = "x".repeat(PutOptions::MAX_HEADER_VALUE_LEN);
        for good in ["a b", longest.as_str(), "text/plain; charset=utf-8"] {
            let opts = PutOptions {
                content_type: Some(good.into()),
                content_encoding: Some(good.into()),
            };
            opts.validate().unwrap();
        }
        let too_long = "x".repeat(PutOptions::MAX_HEADER_VALUE_LEN + 1);
        for bad in [
            "",
            "a\r\nb: c",
            "tab\there",
            "nul\0",
            "del\x7f",
            "é",
            too_long.as_str(),
        ] {
            let as_encoding = PutOptions {
                content_type: None,
                content_encoding: Some(bad.into()),
            };
            let err = as_encoding.validate().unwrap_err();
            assert!(
                err.to_string().contains("content-encoding"),
                "{bad:?}: {err}"
            );
            let as_type = PutOptions {
                content_type: Some(bad.into()),
                content_encoding: None,
            };
            let err = as_type.validate().unwrap_err();
            assert!(err.to_string().contains("content-type"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn out_of_space_errors_name_the_cause() {
        use std::io::{Error, ErrorKind};
        for (kind, words) in [
            (ErrorKind::StorageFull, "disk is full"),
            (ErrorKind::QuotaExceeded, "quota is exhausted"),
            (ErrorKind::FileTooLarge, "file size limit"),
        ] {
            let e = StorageError::from_io("write temp file", Error::from(kind));
            let text = e.to_string();
            assert!(matches!(e, StorageError::Full { .. }), "{kind:?}: {e:?}");
            assert!(text.starts_with("storage full: local store"), "{text}");
            assert!(
                text.contains(words) && text.contains("write temp file"),
                "{text}"
            );
            assert!(!e.is_transient());
        }
        // What the kernel reports on Linux: ENOSPC, EDQUOT, EFBIG.
        #[cfg(target_os = "linux")]
        for errno in [28, 122, 27] {
            let e = StorageError::from_io("publish object", Error::from_raw_os_error(errno));
            assert!(
                matches!(e, StorageError::Full { .. }),
                "errno {errno}: {e:?}"
            );
        }
        let e = StorageError::from_io("write temp file", Error::from(ErrorKind::PermissionDenied));
        assert!(matches!(e, StorageError::Io { .. }), "{e:?}");
        assert!(StorageError::Unavailable { reason: "x".into() }.is_transient());
        assert!(StorageError::Throttled { reason: "x".into() }.is_transient());
        assert!(!StorageError::Backend("x".into()).is_transient());
    }

    #[test]
    fn prefixes_may_end_with_slash() {
        validate_key_prefix("").unwrap();
        validate_key_prefix("spillway/").unwrap();
        assert!(validate_key_prefix("../").is_err());
        assert!(validate_key_prefix("/x/").is_err());
    }
}
