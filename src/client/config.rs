//! What a [`Client`](super::Client) is configured with and what it learns from the server:
//! [`ClientConfig`], the capability headers and [`Capabilities`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::auth::{BearerToken, TokenProvider};
use super::retry::RetryPolicy;
use super::transport::{ClientIdentity, ClientProxy};
use crate::fetch::{CaBundle, FetchConfig, ProgressFn};
use crate::wire::http as wire_http;

// The client's public names for the shared header vocabulary (lowercase, as the server sends
// them; header lookups are case-insensitive).

/// Request header: the largest decoded response body the client accepts.
pub const ACCEPT_MAX_RESPONSE_BYTES_HEADER: &str = wire_http::ACCEPT_MAX_RESPONSE_BYTES;
/// Capability header: the server honours [`ACCEPT_MAX_RESPONSE_BYTES_HEADER`].
pub const ACCEPT_MAX_RESPONSE_BYTES_SUPPORT_HEADER: &str =
    wire_http::ACCEPT_MAX_RESPONSE_BYTES_SUPPORT;
/// Capability header: server-to-client externalization is configured.
pub const EXTERNALIZATION_ENABLED_HEADER: &str = wire_http::EXTERNALIZATION_ENABLED;
/// Capability header: `POST {prefix}/__upload_url__/init` is available.
pub const UPLOAD_URL_SUPPORT_HEADER: &str = wire_http::UPLOAD_URL_SUPPORT;
/// Capability header: the request-body cap, enforced with 413.
pub const MAX_REQUEST_BYTES_HEADER: &str = wire_http::MAX_REQUEST_BYTES;
/// Capability header: advisory size limit of uploads.
pub const MAX_UPLOAD_BYTES_HEADER: &str = wire_http::MAX_UPLOAD_BYTES;
/// Capability header: the server's cap on decoded response bodies.
pub const MAX_RESPONSE_BYTES_HEADER: &str = wire_http::MAX_RESPONSE_BYTES;
/// Capability header: the server's hard cap on externalized bytes per response.
pub const MAX_EXTERNALIZED_RESPONSE_BYTES_HEADER: &str = wire_http::MAX_EXTERNALIZED_RESPONSE_BYTES;
/// Capability header: response codecs the server produces.
pub const SUPPORTED_ENCODINGS_HEADER: &str = wire_http::SUPPORTED_ENCODINGS;
/// Response header set to `true` on a 200 that carries an EXCEPTION.
pub const RPC_ERROR_HEADER: &str = wire_http::RPC_ERROR;

/// Settings of a [`Client`](super::Client).
#[derive(Clone)]
pub struct ClientConfig {
    /// Mount prefix of the server's routes: `""` (the default) or e.g. `"/vgi"`.
    pub prefix: String,
    /// Limits and URL policy for resolving pointers (and for checking upload URLs). The
    /// origin of the client's `base_url` is added to the policy's trusted origins.
    pub fetch: FetchConfig,
    /// zstd level for request bodies, sent with `Content-Encoding: zstd`; `None` sends them
    /// uncompressed (without any `Content-Encoding`). Default `Some(1)`.
    pub request_compression: Option<i32>,
    /// Sent as `VGI-Accept-Max-Response-Bytes` when the server advertises support; must be in
    /// `[65536, 2^53 - 1]`. Default 268435456.
    pub accept_max_response_bytes: u64,
    /// Largest (decoded) HTTP response body the client reads; larger ones fail with
    /// [`Error::TooLarge`](crate::Error::TooLarge) naming `max_response_bytes`. Pointer objects are capped by
    /// [`FetchConfig`] instead. Default 256 MiB.
    pub max_response_bytes: u64,
    /// Time allowed for each RPC POST (and capability probe, upload PUT), body included: per
    /// attempt; [`RetryPolicy::deadline`] bounds a whole operation. Default 300 s.
    pub timeout: Duration,
    /// How overload (429, 503 with `Retry-After`) and transient failures are retried, and
    /// which requests may be sent again: see [`RetryPolicy`]. Default
    /// [`RetryPolicy::default`] (3 retries); [`RetryPolicy::none`] disables retrying.
    pub retry: RetryPolicy,
    /// Called while a pointer's object downloads.
    pub progress: Option<ProgressFn>,
    /// Send requests above the server's `max_request_bytes` (pre-flight) or refused with 413
    /// through the upload-URL flow. Default `true`.
    pub upload_large_requests: bool,
    /// The bearer token sent as `Authorization: Bearer ...` on every RPC request (capability
    /// probe, unary calls, stream `/init` and `/exchange`, `__upload_url__/init`), asked for
    /// anew per request: a [`BearerToken`], a [`FileToken`](super::FileToken) or a provider
    /// of your own. Never sent to storage URLs (pointer downloads, uploads to vended URLs).
    /// Default none.
    pub token: Option<Arc<dyn TokenProvider>>,
    /// Certificate authorities trusted next to the platform's roots, for RPC requests, uploads
    /// and pointer downloads (merged into `fetch.ca`): the private CA of an https server.
    /// Default none.
    pub ca: CaBundle,
    /// The TLS client certificate presented on RPC requests (mTLS). Pointer downloads and
    /// uploads do not present it. Default none.
    pub identity: Option<ClientIdentity>,
    /// The forward proxy of RPC requests. Default: from `HTTP(S)_PROXY`/`NO_PROXY`.
    pub proxy: ClientProxy,
}

impl ClientConfig {
    /// This config with a fixed bearer token.
    pub fn with_token(mut self, token: BearerToken) -> Self {
        self.token = Some(Arc::new(token));
        self
    }

    /// This config with a retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// This config with a token provider.
    pub fn with_token_provider(mut self, provider: Arc<dyn TokenProvider>) -> Self {
        self.token = Some(provider);
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            prefix: String::new(),
            fetch: FetchConfig::default(),
            request_compression: Some(1),
            accept_max_response_bytes: 268_435_456,
            max_response_bytes: 256 * 1024 * 1024,
            timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            progress: None,
            upload_large_requests: true,
            token: None,
            ca: CaBundle::default(),
            identity: None,
            proxy: ClientProxy::Environment,
        }
    }
}

// By hand: destructured, so a new field cannot be added without deciding how it is shown.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ClientConfig {
            prefix,
            fetch,
            request_compression,
            accept_max_response_bytes,
            max_response_bytes,
            timeout,
            retry,
            progress,
            upload_large_requests,
            token,
            ca,
            identity,
            proxy,
        } = self;
        f.debug_struct("ClientConfig")
            .field("prefix", prefix)
            .field("fetch", fetch)
            .field("request_compression", request_compression)
            .field("accept_max_response_bytes", accept_max_response_bytes)
            .field("max_response_bytes", max_response_bytes)
            .field("timeout", timeout)
            .field("retry", retry)
            .field("progress", &progress.as_ref().map(|_| "<fn>"))
            .field("upload_large_requests", upload_large_requests)
            .field("token", &token.as_ref().map(|_| "<redacted>"))
            .field("ca", ca)
            .field("identity", identity)
            .field("proxy", proxy)
            .finish()
    }
}

/// What a server advertises in its capability headers (spec §6.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `VGI-Accept-Max-Response-Bytes-Support: true`: the client may send its response budget.
    pub accept_max_response_bytes_support: bool,
    /// `VGI-Externalization-Enabled: true`: large results may come back as pointers.
    pub externalization_enabled: bool,
    /// `VGI-Upload-URL-Support: true`: the upload-URL flow is available.
    pub upload_url_support: bool,
    /// `VGI-Max-Request-Bytes`: request bodies above this get 413.
    pub max_request_bytes: Option<u64>,
    /// `VGI-Max-Upload-Bytes`: advisory limit for uploads.
    pub max_upload_bytes: Option<u64>,
    /// `VGI-Max-Response-Bytes`: the server's cap on decoded response bodies.
    pub max_response_bytes: Option<u64>,
    /// `VGI-Max-Externalized-Response-Bytes`: the server's cap on externalized bytes.
    pub max_externalized_response_bytes: Option<u64>,
    /// `VGI-Supported-Encodings`: response codecs the server produces, lowercase. An absent
    /// header means a legacy server, taken as `["zstd"]`; an empty one means none.
    pub supported_encodings: Vec<String>,
}

impl Capabilities {
    /// Reads the capability headers of any server response, as the Python client does:
    /// flags are `true` only for the exact value `"true"`, integers are parsed leniently
    /// (surrounding whitespace allowed, anything unparsable ignored).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let flag = |name: &str| text(name) == Some("true");
        let int = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let supported_encodings = match text(SUPPORTED_ENCODINGS_HEADER) {
            None if headers.contains_key(SUPPORTED_ENCODINGS_HEADER) => Vec::new(),
            None => vec!["zstd".to_string()],
            Some(list) => list
                .split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
        };
        Capabilities {
            accept_max_response_bytes_support: flag(ACCEPT_MAX_RESPONSE_BYTES_SUPPORT_HEADER),
            externalization_enabled: flag(EXTERNALIZATION_ENABLED_HEADER),
            upload_url_support: flag(UPLOAD_URL_SUPPORT_HEADER),
            max_request_bytes: int(MAX_REQUEST_BYTES_HEADER),
            max_upload_bytes: int(MAX_UPLOAD_BYTES_HEADER),
            max_response_bytes: int(MAX_RESPONSE_BYTES_HEADER),
            max_externalized_response_bytes: int(MAX_EXTERNALIZED_RESPONSE_BYTES_HEADER),
            supported_encodings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn debug_never_shows_the_token() {
        let secret = "debug-secret-token-42";
        let c = ClientConfig {
            proxy: ClientProxy::Url("http://u:proxy-pass@127.0.0.1:1".into()),
            ..ClientConfig::default()
        }
        .with_token(BearerToken::new(secret).unwrap());
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("proxy-pass"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let p = ClientConfig::default()
            .with_token_provider(Arc::new(super::super::FileToken::new("/run/secrets/token")));
        assert!(format!("{p:?}").contains("token: Some(\"<redacted>\")"));
    }

    #[test]
    fn capability_headers_are_parsed_leniently() {
        let mut h = HeaderMap::new();
        h.insert(
            "vgi-accept-max-response-bytes-support",
            HeaderValue::from_static("true"),
        );
        h.insert(
            "VGI-Externalization-Enabled",
            HeaderValue::from_static("True"),
        );
        h.insert("VGI-Upload-URL-Support", HeaderValue::from_static("true"));
        h.insert("VGI-Max-Request-Bytes", HeaderValue::from_static(" 4096 "));
        h.insert("VGI-Max-Upload-Bytes", HeaderValue::from_static("16777216"));
        h.insert("VGI-Max-Response-Bytes", HeaderValue::from_static("lots"));
        h.insert(
            "VGI-Max-Externalized-Response-Bytes",
            HeaderValue::from_static("-5"),
        );
        h.insert(
            "VGI-Supported-Encodings",
            HeaderValue::from_static("zstd, GZIP"),
        );
        let c = Capabilities::from_headers(&h);
        assert_eq!(
            c,
            Capabilities {
                accept_max_response_bytes_support: true,
                externalization_enabled: false,
                upload_url_support: true,
                max_request_bytes: Some(4096),
                max_upload_bytes: Some(16_777_216),
                max_response_bytes: None,
                max_externalized_response_bytes: None,
                supported_encodings: vec!["zstd".into(), "gzip".into()],
            }
        );

        // Absent encodings header: a legacy server, assumed zstd. Present but empty: none.
        let c = Capabilities::from_headers(&HeaderMap::new());
        assert_eq!(c.supported_encodings, vec!["zstd".to_string()]);
        assert!(!c.accept_max_response_bytes_support && !c.upload_url_support);
        let mut h = HeaderMap::new();
        h.insert("VGI-Supported-Encodings", HeaderValue::from_static(""));
        assert!(Capabilities::from_headers(&h)
            .supported_encodings
            .is_empty());
    }
}
