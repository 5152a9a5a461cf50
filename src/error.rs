//! The crate's one error type.

use spillway_storage::StorageError;

use crate::client::RetryStop;
use crate::url_policy::PolicyRefusal;
use crate::wire::RpcError;

/// Everything that can go wrong in Spillway's library code. Messages are lowercase and never
/// contain signed query strings: every URL in an error has been through
/// [`spillway_storage::redact_url`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that should be an Arrow IPC stream are not one (or break a size limit inside it).
    #[error("malformed arrow ipc stream: {0}")]
    Ipc(String),
    /// An Arrow operation failed (schema mismatch, cast, invalid array).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The peer broke the vgi-rpc protocol (wrong batch layout, missing metadata, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The remote side answered with an RPC error (an EXCEPTION batch). Boxed: it is large,
    /// and every `Result` of the crate carries this enum.
    #[error(transparent)]
    Rpc(Box<RpcError>),
    /// A limit was exceeded; `limit_name` is the configuration knob (e.g. `max_fetch_bytes`).
    #[error("{what} exceeds {limit_name} ({limit} bytes)")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The name of the limit, as the protocol spells it.
        limit_name: &'static str,
        /// The limit's value.
        limit: u64,
    },
    /// An externalized payload is larger than `max_externalized_response_bytes`.
    #[error("Externalised payload exceeds max_externalized_response_bytes ({actual} > {cap}) for method '{method}'")]
    ExternalizedTooLarge {
        /// Bytes (at least) of the payload.
        actual: u64,
        /// The cap.
        cap: u64,
        /// The method whose result it was.
        method: String,
    },
    /// A URL was refused by the URL policy (scheme, address, or not this server's storage).
    #[error("URL rejected: {url}: {reason}")]
    UrlRejected {
        /// The redacted URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redirects went on longer than allowed, or looped.
    #[error("redirect limit of {limit} hops exceeded fetching {url}")]
    RedirectLimit {
        /// The redacted URL.
        url: String,
        /// The hop limit.
        limit: u32,
    },
    /// A fetched object does not hash to the pointer's sha256.
    #[error("SHA-256 checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        /// The redacted URL.
        url: String,
        /// The digest the pointer announced.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The server's admission control refused to wait longer (or at all) for memory or a
    /// call slot.
    #[error(transparent)]
    Admission(#[from] crate::server::memory::AdmissionError),
    /// An HTTP exchange failed: connection, timeout, reset.
    #[error("http error: {0}")]
    Http(String),
    /// A server answered with an unexpected status (403 for an expired or tampered URL,
    /// 404 for a missing object, ...).
    #[error("http status {status} from {url}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The redacted URL.
        url: String,
    },
    /// A request the client retried (or was allowed to retry) failed for good: `last` is the
    /// last attempt's error, as it would have been returned without retrying (an
    /// [`Error::Rpc`] with code `UNAVAILABLE`, an [`Error::HttpStatus`], an [`Error::Http`]).
    /// See [`RetryPolicy`](crate::client::RetryPolicy).
    #[error("{last} (gave up after {attempts} {}: {stop})", if *attempts == 1 { "attempt" } else { "attempts" })]
    RetriesExhausted {
        /// Requests sent, the first one included.
        attempts: u32,
        /// Why no further attempt was made.
        stop: RetryStop,
        /// The last attempt's error.
        last: Box<Error>,
    },
    /// The server refused the caller's credentials (HTTP 401, the vgi-rpc standard 401: the
    /// `{"error":"unauthorized","reason":..,"detail":..}` envelope and `VGI-Auth-Reason`).
    /// The credential itself never appears here.
    #[error("unauthorized ({reason}): {detail} (HTTP 401 from {url})")]
    Unauthorized {
        /// The server's reason code.
        reason: AuthRejection,
        /// The server's human-readable detail (bounded; never the credential).
        detail: String,
        /// The redacted URL.
        url: String,
    },
    /// The client could not produce its credential (a token file missing, empty or
    /// unreadable, a custom token provider failing). Never holds the credential.
    #[error("credential unavailable: {0}")]
    Credential(String),
    /// The object store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration is invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// A local I/O operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A background task died (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
    /// A download failed in a way the fetch engine classifies (after the retries its kind
    /// allows): see [`FetchFailure`] for the kinds.
    #[error("fetch failed ({kind}) for {url}: {detail}")]
    Fetch {
        /// What went wrong.
        kind: FetchFailure,
        /// The redacted URL.
        url: String,
        /// Details (never a signed query string).
        detail: String,
    },
}

/// The kinds of [`Error::Fetch`]. Final HTTP statuses are [`Error::HttpStatus`], refused URLs
/// [`Error::UrlRejected`], caps [`Error::TooLarge`] and digest mismatches [`Error::Checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchFailure {
    /// The overall deadline of the fetch passed.
    Timeout,
    /// A request delivered no byte for the stall timeout, on every retry.
    Stalled,
    /// Connecting failed or the connection broke (reset, closed mid-body), on every retry.
    Connection,
    /// A response ended before the length it announced, on every retry.
    ShortBody,
    /// A response broke the range contract (wrong `Content-Range`, wrong length, extra
    /// bytes, an unexpected status), on every retry.
    BadResponse,
    /// The object changed while it was being fetched (its ETag, size or encoding differs
    /// between responses, or the store answered 412/416 to a conditional range).
    ObjectChanged,
}

impl FetchFailure {
    /// A short lowercase label, used in messages and as the `kind` label of
    /// `spillway_fetch_failures_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FetchFailure::Timeout => "timeout",
            FetchFailure::Stalled => "stalled",
            FetchFailure::Connection => "connection",
            FetchFailure::ShortBody => "short_body",
            FetchFailure::BadResponse => "bad_response",
            FetchFailure::ObjectChanged => "object_changed",
        }
    }
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason code of a 401 ([`Error::Unauthorized`]): the closed set of the vgi-rpc
/// standard 401 (`docs/unauthorized-spec.md` of the reference). Coarse on purpose: it names the
/// stage that refused the request, never why a token was wrong. A client refreshes its token
/// on [`AuthRejection::ExpiredCredential`] and gives up on
/// [`AuthRejection::InsufficientScope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthRejection {
    /// No credential was presented.
    MissingCredential,
    /// A credential was presented and refused.
    InvalidCredential,
    /// A well-formed credential outside its validity window.
    ExpiredCredential,
    /// The caller was identified but is not permitted.
    InsufficientScope,
    /// The request did not come through the proxy the server requires.
    ProxyRequired,
    /// Refused, unclassified (also any code outside the set, as the reference client maps it).
    Unauthorized,
}

impl AuthRejection {
    /// The wire code, e.g. `expired_credential`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthRejection::MissingCredential => "missing_credential",
            AuthRejection::InvalidCredential => "invalid_credential",
            AuthRejection::ExpiredCredential => "expired_credential",
            AuthRejection::InsufficientScope => "insufficient_scope",
            AuthRejection::ProxyRequired => "proxy_required",
            AuthRejection::Unauthorized => "unauthorized",
        }
    }

    /// The reason a wire code names; unknown codes are [`AuthRejection::Unauthorized`].
    pub fn from_code(code: &str) -> Self {
        match code.trim() {
            "missing_credential" => AuthRejection::MissingCredential,
            "invalid_credential" => AuthRejection::InvalidCredential,
            "expired_credential" => AuthRejection::ExpiredCredential,
            "insufficient_scope" => AuthRejection::InsufficientScope,
            "proxy_required" => AuthRejection::ProxyRequired,
            _ => AuthRejection::Unauthorized,
        }
    }
}

impl std::fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        Error::Rpc(Box::new(e))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error itself, or for [`Error::RetriesExhausted`] the last attempt's error: what
    /// to match on when the attempt count does not matter.
    pub fn last_attempt(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } => last.last_attempt(),
            other => other,
        }
    }

    /// Wraps a `reqwest` error without leaking the signed URL it may carry.
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "error reading body"
        } else if e.is_request() {
            "request failed"
        } else {
            "error"
        };
        let url = e
            .url()
            .map(|u| spillway_storage::redact_url(u.as_str()))
            .unwrap_or_default();
        // The source chain can echo the URL: keep only the innermost cause's text, redacted.
        let mut cause = String::new();
        let mut refused = None;
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = s.to_string();
            if let Some(r) = s.downcast_ref::<PolicyRefusal>() {
                refused = Some(r.to_string());
            }
            src = s.source();
        }
        if let Some(reason) = refused {
            return Error::UrlRejected {
                url,
                reason: spillway_storage::redact_text(&reason),
            };
        }
        let cause = spillway_storage::redact_text(&cause);
        if cause.is_empty() {
            Error::Http(format!("{kind} for {url}"))
        } else {
            Error::Http(format!("{kind} for {url}: {cause}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::url_policy::{PolicyResolver, UrlPolicy};

    /// A resolver failing with plain text that merely looks like a refusal.
    struct TextResolver;

    impl reqwest::dns::Resolve for TextResolver {
        fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            Box::pin(async { Err("URL rejected: only words".into()) })
        }
    }

    async fn fetch_error(client: reqwest::Client) -> Error {
        let e = client
            .get("http://localhost:9/k?X-Amz-Signature=secret")
            .send()
            .await
            .expect_err("the resolver refuses");
        Error::from_reqwest(e)
    }

    #[tokio::test]
    async fn policy_refusals_are_found_by_type() {
        let resolver = PolicyResolver::new(Arc::new(UrlPolicy::default()));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .build()
            .unwrap();
        match fetch_error(client).await {
            Error::UrlRejected { url, reason } => {
                assert!(!url.contains("secret"), "{url}");
                assert_eq!(
                    reason,
                    "URL rejected: host localhost resolves to a loopback address"
                );
            }
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn refusal_text_without_the_type_is_an_http_error() {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(TextResolver))
            .build()
            .unwrap();
        let e = fetch_error(client).await;
        assert!(matches!(e, Error::Http(_)), "{e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
