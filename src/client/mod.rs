//! The Rust client for vgi-rpc 0.52 over HTTP, with transparent pointer resolution and the
//! upload-URL flow for large requests.
//!
//! A [`Client`] talks to one server root. Before its first call it discovers the server's
//! capabilities (`OPTIONS {prefix}/health`, see [`Capabilities`]). A call sends one request
//! batch (zstd-compressed by default) and returns the result batch:
//!
//! - log batches in the response are collected into [`CallOutput::logs`] and emitted through
//!   `tracing`;
//! - an EXCEPTION batch becomes [`Error::Rpc`];
//! - a *pointer* (an externalized result) is downloaded through a [`Fetcher`] under the
//!   configured [`FetchConfig`] (URL policy, size caps, sha256 check), and the batch it names
//!   is returned as if it had come inline, with [`CallOutput::externalized`] set;
//! - a request larger than the server's `VGI-Max-Request-Bytes` (or one the server answers
//!   with 413) is uploaded to a server-vended upload URL and sent as a pointer instead.
//!
//! ```no_run
//! # async fn demo() -> spillway::Result<()> {
//! use std::sync::Arc;
//! use arrow_array::{Int64Array, RecordBatch};
//! use arrow_schema::{DataType, Field, Schema};
//! use spillway::client::{Client, ClientConfig};
//!
//! let client = Client::new(
//!     "http://127.0.0.1:8080",
//!     ClientConfig { prefix: "/vgi".into(), ..Default::default() },
//! )?;
//! let schema = Arc::new(Schema::new(vec![Field::new("size", DataType::Int64, false)]));
//! let params = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![32768]))])?;
//! let out = client.call("ClientConformanceService", "large_response", params).await?;
//! println!(
//!     "{} rows, externalized: {}",
//!     out.batch.num_rows(),
//!     out.externalized.is_some()
//! );
//! # Ok(())
//! # }
//! ```

mod stream;

pub use stream::{ClientStream, StreamBatch};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{Array, Int64Array, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;
use tokio::sync::OnceCell;
use url::Url;

use crate::error::{Error, Result};
use crate::fetch::{FetchConfig, FetchStats, Fetcher, ProgressFn};
use crate::object::decode_content;
use crate::url_policy::{PolicyResolver, UrlPolicy};
use crate::wire::{
    classify, keys, read_stream, write_stream, BatchKind, ErrorCode, LogMessage, MetaBatch,
    Metadata, ReadLimits, RpcError, ARROW_STREAM_CONTENT_TYPE, REQUEST_VERSION,
};

/// Request header: the largest decoded response body the client accepts.
pub const ACCEPT_MAX_RESPONSE_BYTES_HEADER: &str = "VGI-Accept-Max-Response-Bytes";
/// Capability header: the server honours [`ACCEPT_MAX_RESPONSE_BYTES_HEADER`].
pub const ACCEPT_MAX_RESPONSE_BYTES_SUPPORT_HEADER: &str = "VGI-Accept-Max-Response-Bytes-Support";
/// Capability header: server-to-client externalization is configured.
pub const EXTERNALIZATION_ENABLED_HEADER: &str = "VGI-Externalization-Enabled";
/// Capability header: `POST {prefix}/__upload_url__/init` is available.
pub const UPLOAD_URL_SUPPORT_HEADER: &str = "VGI-Upload-URL-Support";
/// Capability header: the request-body cap, enforced with 413.
pub const MAX_REQUEST_BYTES_HEADER: &str = "VGI-Max-Request-Bytes";
/// Capability header: advisory size limit of uploads.
pub const MAX_UPLOAD_BYTES_HEADER: &str = "VGI-Max-Upload-Bytes";
/// Capability header: the server's cap on decoded response bodies.
pub const MAX_RESPONSE_BYTES_HEADER: &str = "VGI-Max-Response-Bytes";
/// Capability header: the server's hard cap on externalized bytes per response.
pub const MAX_EXTERNALIZED_RESPONSE_BYTES_HEADER: &str = "VGI-Max-Externalized-Response-Bytes";
/// Capability header: response codecs the server produces.
pub const SUPPORTED_ENCODINGS_HEADER: &str = "VGI-Supported-Encodings";
/// Response header set to `true` on a 200 that carries an EXCEPTION.
pub const RPC_ERROR_HEADER: &str = "X-VGI-RPC-Error";

/// The method name of the upload-URL control route.
const UPLOAD_URL_METHOD: &str = "__upload_url__";
/// Bounds of the `VGI-Accept-Max-Response-Bytes` grammar (spec §6.5).
const ACCEPT_MAX_RESPONSE_BYTES_MIN: u64 = 65_536;
const ACCEPT_MAX_RESPONSE_BYTES_MAX: u64 = (1 << 53) - 1;
/// Bodies above this size are compressed on a blocking thread.
const INLINE_COMPRESS_LIMIT: usize = 256 * 1024;

/// Settings of a [`Client`].
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
    /// [`Error::TooLarge`] naming `max_response_bytes`. Pointer objects are capped by
    /// [`FetchConfig`] instead. Default 256 MiB.
    pub max_response_bytes: u64,
    /// Time allowed for each RPC POST (and capability probe, upload PUT), body included.
    /// Default 300 s.
    pub timeout: Duration,
    /// Called while a pointer's object downloads.
    pub progress: Option<ProgressFn>,
    /// Send requests above the server's `max_request_bytes` (pre-flight) or refused with 413
    /// through the upload-URL flow. Default `true`.
    pub upload_large_requests: bool,
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
            progress: None,
            upload_large_requests: true,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("prefix", &self.prefix)
            .field("fetch", &self.fetch)
            .field("request_compression", &self.request_compression)
            .field("accept_max_response_bytes", &self.accept_max_response_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.as_ref().map(|_| "<fn>"))
            .field("upload_large_requests", &self.upload_large_requests)
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

/// One unary call: where it goes and what it carries.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The protocol's wire name, e.g. `ConformanceService`.
    pub protocol: String,
    /// The method name.
    pub method: String,
    /// The parameters: one row on the method's params schema, or a batch without columns for
    /// a method without parameters.
    pub params: RecordBatch,
    /// Sent as `vgi_rpc.protocol_version` when the protocol declares a version.
    pub protocol_version: Option<String>,
    /// Extra request metadata (e.g. `traceparent`). The dispatch keys (`vgi_rpc.method`,
    /// `vgi_rpc.request_version`, `vgi_rpc.protocol`, `vgi_rpc.protocol_version`) always
    /// take the values above.
    pub metadata: Metadata,
}

impl CallRequest {
    /// A call without protocol version or extra metadata.
    pub fn new(
        protocol: impl Into<String>,
        method: impl Into<String>,
        params: RecordBatch,
    ) -> Self {
        CallRequest {
            protocol: protocol.into(),
            method: method.into(),
            params,
            protocol_version: None,
            metadata: Metadata::new(),
        }
    }

    /// Sets `vgi_rpc.protocol_version`.
    pub fn with_protocol_version(mut self, version: impl Into<String>) -> Self {
        self.protocol_version = Some(version.into());
        self
    }

    /// Adds one extra metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Where an externalized result came from.
#[derive(Debug, Clone)]
pub struct ExternalizedInfo {
    /// The pointer's URL, redacted (no query string).
    pub url: String,
    /// What resolving it cost.
    pub stats: FetchStats,
}

/// The result of a unary call.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The result batch (for a pointer, the batch the object held).
    pub batch: RecordBatch,
    /// The result batch's metadata; for a resolved pointer, the object's batch metadata plus
    /// `vgi_rpc.location.fetch_ms` and `vgi_rpc.location.source` (the latter is the original,
    /// unredacted URL, as the protocol specifies: do not log it).
    pub metadata: Metadata,
    /// Log messages the server sent, in order (those inside a pointer's object last).
    pub logs: Vec<LogMessage>,
    /// Set when the result came through a pointer.
    pub externalized: Option<ExternalizedInfo>,
}

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

/// A vgi-rpc HTTP client. Cheap to clone; clones share connections and cached capabilities.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Server root without a trailing slash, e.g. `http://127.0.0.1:8080`.
    root: String,
    /// Normalized prefix: `""` or `/x` without a trailing slash.
    prefix: String,
    config: ClientConfig,
    /// The policy upload URLs are checked against (the fetch policy plus the server origin).
    policy: UrlPolicy,
    /// For RPC calls to the server the user named.
    rpc_http: reqwest::Client,
    /// For PUTs to server-vended upload URLs: policy-checked DNS, no redirects.
    upload_http: reqwest::Client,
    fetcher: Fetcher,
    capabilities: OnceCell<Capabilities>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("root", &self.inner.root)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// A response read off the wire, body already decoded.
struct RawResponse {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    /// A client for the server rooted at `base_url`, e.g. `"http://127.0.0.1:8080"`. The
    /// client's URL policy trusts the origin of `base_url` (see
    /// [`UrlPolicy::trust_origin_of`]) so pointers served by the server itself resolve; other
    /// URLs follow `config.fetch.policy`.
    pub fn new(base_url: &str, config: ClientConfig) -> Result<Self> {
        let base = Url::parse(base_url).map_err(|e| {
            Error::Config(format!(
                "invalid base url {}: {e}",
                spillway_storage::redact_url(base_url)
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "base url must be http or https: {}",
                spillway_storage::redact_url(base_url)
            )));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config(
                "base url must not have a query string or fragment".into(),
            ));
        }
        let prefix = normalize_prefix(&config.prefix)?;
        if !(ACCEPT_MAX_RESPONSE_BYTES_MIN..=ACCEPT_MAX_RESPONSE_BYTES_MAX)
            .contains(&config.accept_max_response_bytes)
        {
            return Err(Error::Config(format!(
                "accept_max_response_bytes must be between {ACCEPT_MAX_RESPONSE_BYTES_MIN} and \
                 {ACCEPT_MAX_RESPONSE_BYTES_MAX}, got {}",
                config.accept_max_response_bytes
            )));
        }
        let root = base.as_str().trim_end_matches('/').to_string();
        let policy = config.fetch.policy.clone().trust_origin_of(&base);
        let mut fetch = config.fetch.clone();
        fetch.policy = policy.clone();
        let fetcher = Fetcher::new(fetch)?;
        let rpc_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .connect_timeout(config.fetch.connect_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        let upload_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(policy.clone()))))
            .connect_timeout(config.fetch.connect_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                root,
                prefix,
                config,
                policy,
                rpc_http,
                upload_http,
                fetcher,
                capabilities: OnceCell::new(),
            }),
        })
    }

    /// The server's capabilities, from `OPTIONS {prefix}/health`; fetched once, then cached
    /// (a failed probe is retried on the next call).
    pub async fn capabilities(&self) -> Result<Capabilities> {
        self.inner
            .capabilities
            .get_or_try_init(|| self.probe_capabilities())
            .await
            .cloned()
    }

    async fn probe_capabilities(&self) -> Result<Capabilities> {
        let url = format!("{}{}/health", self.inner.root, self.inner.prefix);
        let resp = self
            .inner
            .rpc_http
            .request(reqwest::Method::OPTIONS, &url)
            .timeout(self.inner.config.timeout)
            .send()
            .await
            .map_err(Error::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                status: status.as_u16(),
                url: spillway_storage::redact_url(&url),
            });
        }
        let caps = Capabilities::from_headers(resp.headers());
        tracing::debug!(url = %spillway_storage::redact_url(&url), ?caps, "server capabilities");
        Ok(caps)
    }

    /// Calls `protocol.method` with `params` (one row, or no columns for a method without
    /// parameters) and returns its result. See [`Client::call_with`].
    pub async fn call(
        &self,
        protocol: &str,
        method: &str,
        params: RecordBatch,
    ) -> Result<CallOutput> {
        self.call_with(CallRequest::new(protocol, method, params))
            .await
    }

    /// Makes a unary call: `POST {prefix}/{protocol}/{method}`.
    ///
    /// Errors: [`Error::Rpc`] when the server answers with an EXCEPTION (also for 4xx answers
    /// that carry one); [`Error::HttpStatus`] for other non-2xx answers; [`Error::TooLarge`]
    /// naming `max_request_bytes` when the server refuses the body and the upload flow is not
    /// available, or naming `max_response_bytes` when the response is too large;
    /// [`Error::Protocol`] for a response without exactly one result batch; fetch errors when
    /// a pointer cannot be resolved.
    pub async fn call_with(&self, request: CallRequest) -> Result<CallOutput> {
        validate_protocol_name(&request.protocol)?;
        validate_method_name(&request.method)?;
        let caps = self.capabilities().await?;
        let (schema, metadata, body) = build_request_body(&request)?;
        let body = Bytes::from(body);
        let url = format!(
            "{}{}/{}/{}",
            self.inner.root, self.inner.prefix, request.protocol, request.method
        );
        let upload_allowed = self.inner.config.upload_large_requests && caps.upload_url_support;
        let too_big = caps
            .max_request_bytes
            .is_some_and(|cap| body.len() as u64 > cap);
        let resp = if upload_allowed && too_big {
            tracing::debug!(
                method = %request.method,
                bytes = body.len(),
                "request above max_request_bytes; using an upload url"
            );
            self.post_via_upload(&url, &caps, &schema, &metadata, body.clone())
                .await?
        } else {
            let resp = self.post_rpc(&url, &caps, body.clone()).await?;
            if resp.status == 413 && upload_allowed {
                tracing::debug!(
                    method = %request.method,
                    bytes = body.len(),
                    "request refused with 413; using an upload url"
                );
                self.post_via_upload(&url, &caps, &schema, &metadata, body.clone())
                    .await?
            } else {
                resp
            }
        };
        if resp.status == 413 {
            return Err(self.request_too_large(&caps, body.len()));
        }
        self.finish_call(&url, &request.method, resp).await
    }

    /// Asks the server for `count` (1 to 100) upload/download URL pairs:
    /// `POST {prefix}/__upload_url__/init`. The URLs are returned as vended; the upload flow
    /// of [`Client::call_with`] checks them against the URL policy before use.
    pub async fn request_upload_urls(&self, count: i64) -> Result<Vec<UploadUrl>> {
        if !(1..=100).contains(&count) {
            return Err(Error::Config(format!(
                "upload url count must be between 1 and 100, got {count}"
            )));
        }
        let caps = self.capabilities().await?;
        let url = format!(
            "{}{}/{UPLOAD_URL_METHOD}/init",
            self.inner.root, self.inner.prefix
        );
        let body = Bytes::from(build_upload_init_body(count)?);
        let resp = self.post_rpc(&url, &caps, body).await?;
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
        let out = self.finish_call(&url, UPLOAD_URL_METHOD, resp).await?;
        parse_upload_urls(&out.batch)
    }

    /// The error for a request the server refused with 413 that cannot be uploaded instead.
    fn request_too_large(&self, caps: &Capabilities, len: usize) -> Error {
        let what = if len > 0 {
            format!("request body of {len} bytes")
        } else {
            "request body".to_string()
        };
        let why = if !caps.upload_url_support {
            "the server does not support upload urls"
        } else if !self.inner.config.upload_large_requests {
            "the upload flow is disabled (upload_large_requests)"
        } else {
            "even the upload pointer was refused"
        };
        match caps.max_request_bytes {
            Some(limit) => Error::TooLarge {
                what: format!("{what} (server answered 413; {why})"),
                limit_name: "max_request_bytes",
                limit,
            },
            None => Error::Protocol(format!(
                "server answered 413: {what} exceeds its max_request_bytes; {why}"
            )),
        }
    }

    /// The upload flow (spec §6.3): vend a URL pair, check both, PUT the original bytes,
    /// re-POST a pointer naming the download URL.
    async fn post_via_upload(
        &self,
        url: &str,
        caps: &Capabilities,
        schema: &SchemaRef,
        metadata: &Metadata,
        raw: Bytes,
    ) -> Result<RawResponse> {
        let pair = self
            .request_upload_urls(1)
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
        self.put_upload(&pair.upload_url, raw).await?;
        let pointer = Bytes::from(build_pointer_body(schema, metadata, &pair.download_url)?);
        self.post_rpc(url, caps, pointer).await
    }

    async fn put_upload(&self, upload_url: &str, raw: Bytes) -> Result<()> {
        let len = raw.len();
        let resp = self
            .inner
            .upload_http
            .put(upload_url)
            .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
            .timeout(self.inner.config.timeout)
            .body(raw)
            .send()
            .await
            .map_err(Error::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Http(format!(
                "PUT to upload URL failed: HTTP {} ({})",
                status.as_u16(),
                spillway_storage::redact_url(upload_url)
            )));
        }
        tracing::debug!(
            url = %spillway_storage::redact_url(upload_url),
            bytes = len,
            "uploaded request body"
        );
        Ok(())
    }

    /// POSTs an Arrow body (compressed per the config), reads and decodes the answer. A 415
    /// with a non-Arrow body after a compressed POST (the server refuses the codec) is retried
    /// once uncompressed.
    async fn post_rpc(&self, url: &str, caps: &Capabilities, raw: Bytes) -> Result<RawResponse> {
        if let Some(level) = self.inner.config.request_compression {
            let compressed = compress_zstd(raw.clone(), level).await?;
            let resp = self.post_once(url, caps, compressed, true).await?;
            if resp.status == 415 && parse_error_body(&resp.body).is_none() {
                tracing::debug!(
                    url = %spillway_storage::redact_url(url),
                    "server refused the zstd request body; retrying uncompressed"
                );
            } else {
                return Ok(resp);
            }
        }
        self.post_once(url, caps, raw, false).await
    }

    async fn post_once(
        &self,
        url: &str,
        caps: &Capabilities,
        body: Bytes,
        zstd: bool,
    ) -> Result<RawResponse> {
        let config = &self.inner.config;
        let mut req = self
            .inner
            .rpc_http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, ARROW_STREAM_CONTENT_TYPE)
            .header(reqwest::header::ACCEPT_ENCODING, "zstd, gzip")
            .timeout(config.timeout);
        if zstd {
            req = req.header(reqwest::header::CONTENT_ENCODING, "zstd");
        }
        if caps.accept_max_response_bytes_support {
            req = req.header(
                ACCEPT_MAX_RESPONSE_BYTES_HEADER,
                config.accept_max_response_bytes.to_string(),
            );
        }
        let resp = req.body(body).send().await.map_err(Error::from_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let encoding = content_encoding(&headers);
        let cap = config.max_response_bytes;
        // A compressed body may be a little larger than its decoded size; allow for framing.
        let wire_cap = if encoding.is_some() {
            cap.saturating_add(cap / 64).saturating_add(4096)
        } else {
            cap
        };
        let wire = read_capped_body(resp, wire_cap, cap).await?;
        let body = decode_response_body(wire, encoding, cap).await?;
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Turns an RPC response into the call's output (or error), resolving a pointer.
    async fn finish_call(&self, url: &str, method: &str, resp: RawResponse) -> Result<CallOutput> {
        if !(200..300).contains(&resp.status) {
            if resp.status != 401 {
                if let Some(e) = parse_error_body(&resp.body) {
                    return Err(e.into());
                }
            }
            return Err(Error::HttpStatus {
                status: resp.status,
                url: spillway_storage::redact_url(url),
            });
        }
        let flagged = resp
            .headers
            .get(RPC_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let parsed = match parse_unary_response(resp.body) {
            Err(Error::Ipc(e)) if flagged => {
                return Err(Error::Protocol(format!(
                    "server flagged an error ({RPC_ERROR_HEADER}) but its body is not arrow: {e}"
                )))
            }
            other => other?,
        };
        if flagged {
            return Err(Error::Protocol(format!(
                "server flagged an error ({RPC_ERROR_HEADER}) but sent no exception batch"
            )));
        }
        let ParsedResponse { mut logs, result } = parsed;
        for log in &logs {
            emit_log(method, log);
        }
        if classify(&result.batch, &result.metadata) != BatchKind::Pointer {
            return Ok(CallOutput {
                batch: result.batch,
                metadata: result.metadata,
                logs,
                externalized: None,
            });
        }
        let location = result
            .metadata
            .get(keys::LOCATION)
            .map(|u| spillway_storage::redact_url(u))
            .unwrap_or_default();
        let (resolved, stats) = self
            .inner
            .fetcher
            .resolve(&result, self.inner.config.progress.as_ref())
            .await?;
        tracing::debug!(
            method,
            url = %location,
            encoded_bytes = stats.encoded_bytes,
            decoded_bytes = stats.decoded_bytes,
            attempts = stats.attempts,
            "resolved externalized result"
        );
        for log in &resolved.logs {
            emit_log(method, log);
        }
        logs.extend(resolved.logs);
        Ok(CallOutput {
            batch: resolved.batch.batch,
            metadata: resolved.batch.metadata,
            logs,
            externalized: Some(ExternalizedInfo {
                url: location,
                stats,
            }),
        })
    }
}

/// `""` or `/a/b` (leading slash added, trailing slashes removed).
fn normalize_prefix(prefix: &str) -> Result<String> {
    let p = prefix.trim().trim_end_matches('/');
    if p.contains(['?', '#', ' ']) {
        return Err(Error::Config(format!("invalid prefix {prefix:?}")));
    }
    if p.is_empty() {
        Ok(String::new())
    } else if p.starts_with('/') {
        Ok(p.to_string())
    } else {
        Ok(format!("/{p}"))
    }
}

/// A protocol wire name: `^[A-Za-z_][A-Za-z0-9_.]*$`, at most 255 bytes (spec §2).
fn validate_protocol_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 255
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::Protocol(format!("invalid protocol name {name:?}")))
    }
}

/// A method name: one URL path segment of unreserved characters (`A-Z a-z 0-9 _ . - ~`),
/// not `.` or `..`, at most 255 bytes. vgi-rpc method names are identifiers, well inside this.
fn validate_method_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(Error::Protocol(format!("invalid method name {name:?}")))
    }
}

/// Builds the request body (spec §1.2): one stream on the params schema with one batch (1 row,
/// or 0 rows and 0 columns) carrying the dispatch metadata. Returns the schema, the batch
/// metadata and the uncompressed bytes.
fn build_request_body(request: &CallRequest) -> Result<(SchemaRef, Metadata, Vec<u8>)> {
    let params = &request.params;
    let batch = if params.num_columns() == 0 {
        let schema = Arc::new(Schema::empty());
        RecordBatch::try_new_with_options(
            schema,
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )?
    } else if params.num_rows() == 1 {
        // Schema and field metadata are not part of the protocol; send the bare fields.
        let fields: Vec<Field> = params
            .schema()
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_metadata(arrow_schema::Metadata::default())
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), params.columns().to_vec())?
    } else {
        return Err(Error::Protocol(format!(
            "params for {} must have exactly 1 row, got {}",
            request.method,
            params.num_rows()
        )));
    };
    let mut metadata = request.metadata.clone();
    metadata.insert(keys::METHOD.into(), request.method.clone());
    metadata.insert(keys::REQUEST_VERSION.into(), REQUEST_VERSION.into());
    metadata.insert(keys::PROTOCOL.into(), request.protocol.clone());
    match &request.protocol_version {
        Some(v) => {
            metadata.insert(keys::PROTOCOL_VERSION.into(), v.clone());
        }
        None => {
            metadata.remove(keys::PROTOCOL_VERSION);
        }
    }
    let schema = batch.schema();
    let body = write_stream(
        &schema,
        &[MetaBatch {
            batch,
            metadata: metadata.clone(),
        }],
    )?;
    Ok((schema, metadata, body))
}

/// The request pointer body (spec §6.3 step 7): zero rows on `schema`, the original metadata
/// plus `vgi_rpc.location`, no sha256.
fn build_pointer_body(
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
fn build_upload_init_body(count: i64) -> Result<Vec<u8>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::Int64,
        true,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(vec![count]))],
    )?;
    let mut metadata = Metadata::new();
    metadata.insert(keys::METHOD.into(), UPLOAD_URL_METHOD.into());
    metadata.insert(keys::REQUEST_VERSION.into(), REQUEST_VERSION.into());
    write_stream(&schema, &[MetaBatch { batch, metadata }])
}

/// A unary response split into its logs and its one result batch (data or pointer).
#[derive(Debug)]
struct ParsedResponse {
    logs: Vec<LogMessage>,
    result: MetaBatch,
}

/// Applies the reader rules (spec §1.3, §3.2) to a unary response body: logs are collected,
/// an EXCEPTION anywhere fails the call, and exactly one data or pointer batch must remain.
fn parse_unary_response(body: Bytes) -> Result<ParsedResponse> {
    let stream = read_stream(body, ReadLimits::default())?;
    let mut logs = Vec::new();
    let mut results = Vec::new();
    for b in stream.batches {
        match classify(&b.batch, &b.metadata) {
            BatchKind::Log => logs.push(LogMessage::from_metadata(&b.metadata)),
            BatchKind::Error => return Err(RpcError::from_metadata(&b.metadata).into()),
            BatchKind::Sentinel => {
                return Err(Error::Protocol(
                    "unexpected stream token sentinel in a unary response".into(),
                ))
            }
            BatchKind::Pointer | BatchKind::Data => results.push(b),
        }
    }
    match results.len() {
        1 => Ok(ParsedResponse {
            logs,
            result: results.remove(0),
        }),
        0 => Err(Error::Protocol("response holds no result batch".into())),
        n => Err(Error::Protocol(format!(
            "response holds {n} result batches, expected exactly one"
        ))),
    }
}

/// The EXCEPTION carried by an error response body, if the body is Arrow and holds one.
fn parse_error_body(body: &Bytes) -> Option<RpcError> {
    let stream = read_stream(body.clone(), ReadLimits::default()).ok()?;
    stream
        .batches
        .iter()
        .find(|b| classify(&b.batch, &b.metadata) == BatchKind::Error)
        .map(|b| RpcError::from_metadata(&b.metadata))
}

/// Reads the `__upload_url__/init` result: columns found by name, string columns of any
/// string type, `expires_at` optional and of any timestamp unit.
fn parse_upload_urls(batch: &RecordBatch) -> Result<Vec<UploadUrl>> {
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

/// The response's content coding: `Content-Encoding`, else `X-VGI-Content-Encoding`.
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    [
        reqwest::header::CONTENT_ENCODING.as_str(),
        "x-vgi-content-encoding",
    ]
    .iter()
    .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
    .map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
    .find(|v| !v.is_empty() && v != "identity")
}

fn response_too_large(what: String, limit: u64) -> Error {
    Error::TooLarge {
        what,
        limit_name: "max_response_bytes",
        limit,
    }
}

/// Reads a response body, refusing more than `wire_cap` bytes (Content-Length up front, then
/// while streaming). `limit` is the configured cap reported in the error.
async fn read_capped_body(resp: reqwest::Response, wire_cap: u64, limit: u64) -> Result<Bytes> {
    if let Some(len) = resp.content_length() {
        if len > wire_cap {
            return Err(response_too_large(
                format!("response body of {len} bytes"),
                limit,
            ));
        }
    }
    let capacity = resp.content_length().unwrap_or(0).min(wire_cap) as usize;
    let mut buf = BytesMut::with_capacity(capacity);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::from_reqwest)?;
        if (buf.len() + chunk.len()) as u64 > wire_cap {
            return Err(response_too_large(
                format!(
                    "response body of more than {} bytes",
                    buf.len() + chunk.len()
                ),
                limit,
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Decodes a response body per its content coding within `cap`.
async fn decode_response_body(wire: Bytes, encoding: Option<String>, cap: u64) -> Result<Bytes> {
    let decoded = match encoding {
        None => {
            if wire.len() as u64 > cap {
                return Err(response_too_large(
                    format!("response body of {} bytes", wire.len()),
                    cap,
                ));
            }
            return Ok(wire);
        }
        Some(enc) => tokio::task::spawn_blocking(move || decode_content(wire, Some(&enc), cap))
            .await
            .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?,
    };
    decoded.map_err(|e| match e {
        Error::TooLarge { what, .. } => response_too_large(what, cap),
        other => other,
    })
}

/// zstd-compresses a request body (on a blocking thread when it is large).
async fn compress_zstd(raw: Bytes, level: i32) -> Result<Bytes> {
    let small = raw.len() <= INLINE_COMPRESS_LIMIT;
    let compress = move || {
        zstd::bulk::compress(&raw, level)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(format!("zstd compression failed: {e}")))
    };
    if small {
        return compress();
    }
    tokio::task::spawn_blocking(compress)
        .await
        .map_err(|e| Error::Internal(format!("compression task failed: {e}")))?
}

/// Delivers a server log message to `tracing`.
fn emit_log(method: &str, log: &LogMessage) {
    let extra = log.extra.as_deref().unwrap_or("");
    match log.level.as_str() {
        "EXCEPTION" | "ERROR" => {
            tracing::error!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "WARN" | "WARNING" => {
            tracing::warn!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "DEBUG" => {
            tracing::debug!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "TRACE" => {
            tracing::trace!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        _ => tracing::info!(target: "spillway::client::remote", method, extra, "{}", log.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, StringArray, TimestampMicrosecondArray};
    use http::HeaderValue;

    fn int_params(name: &str, v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    fn result_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "result",
            DataType::Binary,
            false,
        )]))
    }

    fn result_batch(v: &[u8]) -> MetaBatch {
        MetaBatch::plain(
            RecordBatch::try_new(
                result_schema(),
                vec![Arc::new(BinaryArray::from_vec(vec![v]))],
            )
            .unwrap(),
        )
    }

    fn log(level: &str, msg: &str) -> LogMessage {
        LogMessage {
            level: level.into(),
            message: msg.into(),
            extra: None,
        }
    }

    fn body(batches: &[MetaBatch]) -> Bytes {
        Bytes::from(write_stream(&result_schema(), batches).unwrap())
    }

    #[test]
    fn request_body_carries_dispatch_metadata() {
        let req = CallRequest::new("ConformanceService", "echo_int", int_params("value", 7))
            .with_protocol_version("2.0.0")
            .with_metadata("traceparent", "00-abc-def-01")
            .with_metadata(keys::METHOD, "spoofed");
        let (schema, md, bytes) = build_request_body(&req).unwrap();
        assert_eq!(schema.field(0).name(), "value");
        assert!(!schema.field(0).is_nullable());
        let s = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
        assert_eq!(s.batches.len(), 1);
        let b = &s.batches[0];
        assert_eq!(b.batch.num_rows(), 1);
        assert_eq!(b.metadata, md);
        assert_eq!(b.metadata[keys::METHOD], "echo_int");
        assert_eq!(b.metadata[keys::REQUEST_VERSION], "1");
        assert_eq!(b.metadata[keys::PROTOCOL], "ConformanceService");
        assert_eq!(b.metadata[keys::PROTOCOL_VERSION], "2.0.0");
        assert_eq!(b.metadata["traceparent"], "00-abc-def-01");

        // Schema and field metadata are dropped.
        let tagged = int_params("v", 1);
        let field = tagged.schema().field(0).clone().with_metadata([("f", "1")]);
        let schema = Schema::new(vec![field]).with_metadata([("s", "1")]);
        let tagged = tagged.with_schema(Arc::new(schema)).unwrap();
        let (schema, _, _) = build_request_body(&CallRequest::new("P", "m", tagged)).unwrap();
        assert!(schema.metadata().is_empty());
        assert!(schema.field(0).metadata().is_empty());

        // Without a protocol version the key is absent, even if smuggled in as extra metadata.
        let req = CallRequest::new("P", "m", int_params("v", 1))
            .with_metadata(keys::PROTOCOL_VERSION, "9.9.9");
        let (_, md, _) = build_request_body(&req).unwrap();
        assert!(!md.contains_key(keys::PROTOCOL_VERSION));
    }

    #[test]
    fn zero_column_params_become_an_empty_batch() {
        // A batch with no columns but a row count of 1 (or 0) is sent as 0 rows on `[]`.
        let one_row = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )
        .unwrap();
        for params in [one_row, RecordBatch::new_empty(Arc::new(Schema::empty()))] {
            let (schema, _, bytes) =
                build_request_body(&CallRequest::new("P", "void_noop", params)).unwrap();
            assert!(schema.fields().is_empty());
            let s = read_stream(Bytes::from(bytes), ReadLimits::default()).unwrap();
            assert_eq!(s.batches.len(), 1);
            assert_eq!(s.batches[0].batch.num_rows(), 0);
            assert_eq!(s.batches[0].batch.num_columns(), 0);
            assert_eq!(s.batches[0].metadata[keys::METHOD], "void_noop");
        }
    }

    #[test]
    fn params_must_have_one_row() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let two =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        let err = build_request_body(&CallRequest::new("P", "m", two)).unwrap_err();
        assert!(err.to_string().contains("exactly 1 row"), "{err}");
        let zero = RecordBatch::new_empty(schema);
        assert!(build_request_body(&CallRequest::new("P", "m", zero)).is_err());
    }

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

    #[test]
    fn response_with_logs_and_data() {
        let parsed = parse_unary_response(body(&[
            log("INFO", "one").to_batch(&result_schema()),
            result_batch(b"abc"),
            log("WARN", "two").to_batch(&result_schema()),
        ]))
        .unwrap();
        assert_eq!(parsed.logs, vec![log("INFO", "one"), log("WARN", "two")]);
        assert_eq!(parsed.result.batch, result_batch(b"abc").batch);
        assert_eq!(
            classify(&parsed.result.batch, &parsed.result.metadata),
            BatchKind::Data
        );
    }

    #[test]
    fn response_exception_is_an_rpc_error() {
        let exc = RpcError::new("ValueError", "boom")
            .with_code(ErrorCode::InvalidArgument)
            .to_batch(&result_schema(), Some("rid"));
        for batches in [
            vec![
                log("INFO", "before").to_batch(&result_schema()),
                exc.clone(),
            ],
            vec![result_batch(b"x"), exc.clone()],
        ] {
            match parse_unary_response(body(&batches)) {
                Err(Error::Rpc(e)) => {
                    assert_eq!(e.error_type, "ValueError");
                    assert_eq!(e.message, "boom");
                    assert_eq!(e.code, ErrorCode::InvalidArgument);
                }
                other => panic!("expected an rpc error, got {other:?}"),
            }
        }
        // The same EXCEPTION on the empty schema, as a 4xx body.
        let empty = Arc::new(Schema::empty());
        let exc = RpcError::new("MethodNotImplementedError", "nope")
            .with_kind("method_not_implemented")
            .to_batch(&empty, None);
        let b = Bytes::from(write_stream(&empty, &[exc]).unwrap());
        let e = parse_error_body(&b).unwrap();
        assert_eq!(e.kind.as_deref(), Some("method_not_implemented"));
        assert!(parse_error_body(&Bytes::from_static(b"{\"title\": \"too large\"}")).is_none());
        assert!(parse_error_body(&body(&[result_batch(b"x")])).is_none());
    }

    #[test]
    fn response_pointer_is_detected() {
        let p = crate::wire::pointer_batch(&result_schema(), "http://h/download/k", Some("ab"));
        let parsed = parse_unary_response(body(&[
            log("INFO", "before").to_batch(&result_schema()),
            p.clone(),
        ]))
        .unwrap();
        assert_eq!(parsed.logs.len(), 1);
        assert_eq!(
            classify(&parsed.result.batch, &parsed.result.metadata),
            BatchKind::Pointer
        );
        assert_eq!(parsed.result.metadata, p.metadata);
    }

    #[test]
    fn response_needs_exactly_one_result() {
        let err = parse_unary_response(body(&[log("INFO", "only").to_batch(&result_schema())]))
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ref m) if m.contains("no result batch")),
            "{err}"
        );
        let err =
            parse_unary_response(body(&[result_batch(b"a"), result_batch(b"b")])).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ref m) if m.contains("2 result batches")),
            "{err}"
        );
        assert!(matches!(
            parse_unary_response(Bytes::from_static(b"<html>")),
            Err(Error::Ipc(_))
        ));
        // A genuine zero-row data batch (no special keys) is a result.
        let empty = MetaBatch::plain(RecordBatch::new_empty(result_schema()));
        let parsed = parse_unary_response(body(&[empty])).unwrap();
        assert_eq!(parsed.result.batch.num_rows(), 0);
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

    #[test]
    fn names_prefixes_and_config_are_validated() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(normalize_prefix("vgi").unwrap(), "/vgi");
        assert_eq!(normalize_prefix("/vgi/").unwrap(), "/vgi");
        assert!(normalize_prefix("/vgi?x=1").is_err());
        validate_protocol_name("conformance.Secondary.v1").unwrap();
        validate_protocol_name("_P").unwrap();
        for bad in ["", "1P", "a/b", "a%2e", "a b"] {
            assert!(validate_protocol_name(bad).is_err(), "{bad}");
        }
        for good in ["large_response", "9m", "a.b", "my-method"] {
            validate_method_name(good).unwrap();
        }
        for bad in ["", ".", "..", "../x", "m?x", "a/b", "a%2f", "a b"] {
            assert!(validate_method_name(bad).is_err(), "{bad}");
        }
        assert!(Client::new("ftp://h/", ClientConfig::default()).is_err());
        assert!(Client::new("http://h/?x=1", ClientConfig::default()).is_err());
        assert!(Client::new("not a url", ClientConfig::default()).is_err());
        let small = ClientConfig {
            accept_max_response_bytes: 1000,
            ..Default::default()
        };
        assert!(Client::new("http://h", small).is_err());
        let c = Client::new(
            "http://127.0.0.1:8080/",
            ClientConfig {
                prefix: "vgi/".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.inner.root, "http://127.0.0.1:8080");
        assert_eq!(c.inner.prefix, "/vgi");
        // The server's own origin is trusted even under the strict default policy.
        c.inner
            .policy
            .check(&Url::parse("http://127.0.0.1:8080/storage/k").unwrap())
            .unwrap();
        assert!(c
            .inner
            .policy
            .check(&Url::parse("http://127.0.0.1:9999/storage/k").unwrap())
            .is_err());
    }

    #[tokio::test]
    async fn response_decoding_is_capped() {
        let raw = Bytes::from(vec![7u8; 100_000]);
        let z = Bytes::from(zstd::bulk::compress(&raw, 1).unwrap());
        let ok = decode_response_body(z.clone(), Some("zstd".into()), 100_000)
            .await
            .unwrap();
        assert_eq!(ok, raw);
        match decode_response_body(z, Some("zstd".into()), 50_000).await {
            Err(Error::TooLarge {
                limit_name, limit, ..
            }) => {
                assert_eq!(limit_name, "max_response_bytes");
                assert_eq!(limit, 50_000);
            }
            other => panic!("expected too large, got {other:?}"),
        }
        let err = decode_response_body(raw, None, 10).await.unwrap_err();
        assert!(err.to_string().contains("max_response_bytes"), "{err}");
        let mut h = HeaderMap::new();
        assert_eq!(content_encoding(&h), None);
        h.insert("content-encoding", HeaderValue::from_static("identity"));
        assert_eq!(content_encoding(&h), None);
        h.insert("content-encoding", HeaderValue::from_static("GZIP; q=1"));
        assert_eq!(content_encoding(&h).as_deref(), Some("gzip"));
        let body = compress_zstd(Bytes::from(vec![1u8; 400_000]), 1)
            .await
            .unwrap();
        assert_eq!(
            zstd::bulk::decompress(&body, 400_000).unwrap(),
            vec![1u8; 400_000]
        );
    }
}
