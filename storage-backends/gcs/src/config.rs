//! The library-level configuration of a [`GcsStore`](crate::GcsStore) and its checks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use spillway_storage::{redact_url, StorageError};
use url::Url;

use crate::{DEFAULT_OPERATION_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SIGNED_PUT_CONTENT_TYPE};

/// How a [`GcsStore`] is set up (the library-level form of the command line's `GcsArgs`).
#[derive(Clone, PartialEq, Eq)]
pub struct GcsConfig {
    /// The bucket.
    pub bucket: String,
    /// Prefix of every key [`Storage::new_key`](spillway_storage::Storage::new_key) makes; checked with
    /// [`spillway_storage::validate_key_prefix`].
    pub key_prefix: String,
    /// Largest object [`Storage::put`](spillway_storage::Storage::put) accepts.
    pub max_object_bytes: u64,
    /// API endpoint (`http(s)://host[:port]`, no path) [default: [`DEFAULT_ENDPOINT`](crate::DEFAULT_ENDPOINT)].
    pub endpoint: Option<Url>,
    /// Scheme and host of signed URLs [default: the endpoint].
    pub public_endpoint: Option<Url>,
    /// Project of a bucket created by [`Storage::init`](spillway_storage::Storage::init).
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
    /// [default: [`DEFAULT_SIGNED_PUT_CONTENT_TYPE`](crate::DEFAULT_SIGNED_PUT_CONTENT_TYPE)].
    pub signed_put_content_type: Option<String>,
    /// Time a request may go without progress before it fails with
    /// [`StorageError::Unavailable`] (at least one second): one metadata call, each piece of a
    /// read's body, the next piece an upload takes (and its end once all is sent)
    /// [default: [`DEFAULT_REQUEST_TIMEOUT`](crate::DEFAULT_REQUEST_TIMEOUT)].
    pub request_timeout: Duration,
    /// Time for one request with the client library's retries of transient failures
    /// (connection refused, 429, 5xx), and for a read's first answer (at least
    /// `request_timeout`) [default: [`DEFAULT_OPERATION_TIMEOUT`](crate::DEFAULT_OPERATION_TIMEOUT)].
    pub operation_timeout: Duration,
}

impl GcsConfig {
    /// Defaults for `bucket`: key prefix `spillway/`, objects up to 4 GiB, Application Default
    /// Credentials, the public Cloud Storage endpoint, the default timeouts.
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
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

/// Endpoints are shown redacted: a misconfigured one may carry credentials.
impl fmt::Debug for GcsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<Url>| u.as_ref().map(|u| redact_url(u.as_str()));
        f.debug_struct("GcsConfig")
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("endpoint", &url(&self.endpoint))
            .field("public_endpoint", &url(&self.public_endpoint))
            .field("project", &self.project)
            .field("credentials_file", &self.credentials_file)
            .field("anonymous", &self.anonymous)
            .field("signing_account", &self.signing_account)
            .field("iam_endpoint", &url(&self.iam_endpoint))
            .field("signed_put_content_type", &self.signed_put_content_type)
            .field("request_timeout", &self.request_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

pub(crate) fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

/// Cloud Storage bucket naming rules (the subset that matters for building URLs safely).
pub(crate) fn check_bucket_name(bucket: &str) -> Result<(), StorageError> {
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
pub(crate) fn check_endpoint(what: &str, url: &Url) -> Result<(), StorageError> {
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

/// `http(s)://host[:port]` without the trailing slash [`Url`] adds.
pub(crate) fn origin_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}
