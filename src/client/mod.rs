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
//!   configured [`FetchConfig`](crate::fetch::FetchConfig) (URL policy, size caps, sha256
//!   check), and the batch it names is returned as if it had come inline, with
//!   [`CallOutput::externalized`] set;
//! - a request larger than the server's `VGI-Max-Request-Bytes` (or one the server answers
//!   with 413) is uploaded to a server-vended upload URL and sent as a pointer instead;
//! - a request the server refused before running it (429, or 503 with `Retry-After`: an
//!   overloaded or draining server) is sent again after the server's delay plus jittered
//!   backoff, under a bounded [`RetryPolicy`]; requests whose outcome is unknown (502, 504, a
//!   connection lost) are sent again only when that is safe (see [`retry`]).
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

mod auth;
mod config;
mod http;
pub mod reflection;
mod request;
mod response;
pub mod retry;
mod stream;
#[cfg(test)]
mod tests;
mod trace;
mod transport;
mod upload;

pub use auth::{BearerToken, FileToken, TokenProvider, MAX_TOKEN_FILE_BYTES};
pub use config::{
    Capabilities, ClientConfig, ACCEPT_MAX_RESPONSE_BYTES_HEADER,
    ACCEPT_MAX_RESPONSE_BYTES_SUPPORT_HEADER, EXTERNALIZATION_ENABLED_HEADER,
    MAX_EXTERNALIZED_RESPONSE_BYTES_HEADER, MAX_REQUEST_BYTES_HEADER, MAX_RESPONSE_BYTES_HEADER,
    MAX_UPLOAD_BYTES_HEADER, RPC_ERROR_HEADER, SUPPORTED_ENCODINGS_HEADER,
    UPLOAD_URL_SUPPORT_HEADER,
};
pub use reflection::{
    MethodDescription, MethodKind, ProtocolDescription, ProtocolList, ProtocolSummary,
};
pub use request::CallRequest;
pub use response::{CallOutput, ExternalizedInfo};
pub use retry::{parse_retry_after, RetryPolicy, RetryStop, MAX_RETRIES};
pub use stream::{ClientStream, StreamBatch};
pub use transport::{ClientIdentity, ClientProxy};
pub use upload::UploadUrl;

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use tokio::sync::OnceCell;
use tracing::Instrument;
use url::Url;

use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::url_policy::UrlPolicy;
use crate::wire::http::{MAX_SIZE_HEADER_VALUE, MIN_ACCEPT_MAX_RESPONSE_BYTES};
use retry::Deadline;

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
        let prefix = request::client_prefix(&config.prefix)?;
        config.retry.validate()?;
        if !(MIN_ACCEPT_MAX_RESPONSE_BYTES..=MAX_SIZE_HEADER_VALUE)
            .contains(&config.accept_max_response_bytes)
        {
            return Err(Error::Config(format!(
                "accept_max_response_bytes must be between {MIN_ACCEPT_MAX_RESPONSE_BYTES} and \
                 {MAX_SIZE_HEADER_VALUE}, got {}",
                config.accept_max_response_bytes
            )));
        }
        let root = base.as_str().trim_end_matches('/').to_string();
        let policy = config.fetch.policy.clone().trust_origin_of(&base);
        let mut fetch = config.fetch.clone();
        fetch.policy = policy.clone();
        fetch.ca = fetch.ca.merged(&config.ca);
        let fetcher = Fetcher::new(fetch)?;
        let rpc_http = http::rpc_client(&config)?;
        let upload_http = http::upload_client(&config, &policy)?;
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
        self.capabilities_within(&self.deadline()).await
    }

    /// [`Client::capabilities`], probing within an operation's deadline.
    async fn capabilities_within(&self, deadline: &Deadline) -> Result<Capabilities> {
        self.inner
            .capabilities
            .get_or_try_init(|| self.probe_capabilities(deadline))
            .await
            .cloned()
    }

    /// The deadline of an operation starting now ([`RetryPolicy::deadline`]).
    fn deadline(&self) -> Deadline {
        Deadline::after(self.inner.config.retry.deadline)
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
    ///
    /// The call runs in a `vgi_rpc/{method}` client span; its trace context goes to the
    /// server in the `traceparent` header and request metadata.
    pub async fn call_with(&self, request: CallRequest) -> Result<CallOutput> {
        let span = trace::call_span(&self.inner.root, &request.protocol, &request.method, None);
        let result = self.call_in_span(request).instrument(span.clone()).await;
        trace::record_outcome(&span, &result);
        result
    }

    async fn call_in_span(&self, request: CallRequest) -> Result<CallOutput> {
        let call = self.prepare(&request)?;
        let reply = self
            .post_call(
                &call.url,
                &request.method,
                &call.schema,
                &call.metadata,
                call.body,
                &self.deadline(),
            )
            .await?;
        self.finish_unary(&request.method, reply).await
    }
}
