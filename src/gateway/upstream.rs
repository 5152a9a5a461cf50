//! The upstream set of a gateway: which upstream gets the next call.
//!
//! INTERFACE STUB (session 6 split): the types and signatures below are the contract between
//! the gateway's forwarding code and the upstream set; the bodies are a placeholder
//! (round robin, no health checks, no breaker) to be replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

/// How the upstream set is run. Every field has a `SPILLWAY_UPSTREAM_*` setting.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URLs of the upstream servers (scheme, host, port; a path is kept as given).
    pub urls: Vec<Url>,
    /// The upstreams' RPC prefix (`SPILLWAY_UPSTREAM_PREFIX`), e.g. `/vgi`; `""` for none.
    pub prefix: String,
    /// Time allowed to open a connection (`SPILLWAY_UPSTREAM_CONNECT_TIMEOUT`, default 2 s).
    pub connect_timeout: Duration,
    /// Time allowed from sending a request to the response's headers
    /// (`SPILLWAY_UPSTREAM_RESPONSE_TIMEOUT`, default 300 s).
    pub response_timeout: Duration,
    /// Longest silence allowed while a response body is read
    /// (`SPILLWAY_UPSTREAM_IDLE_TIMEOUT`, default 30 s).
    pub idle_timeout: Duration,
    /// Time between active health checks, `OPTIONS {prefix}/health`
    /// (`SPILLWAY_UPSTREAM_HEALTH_INTERVAL`, default 5 s).
    pub health_interval: Duration,
    /// Consecutive failures that open an upstream's breaker
    /// (`SPILLWAY_UPSTREAM_BREAKER_FAILURES`, default 5).
    pub breaker_failures: u32,
    /// First open period of a breaker, doubled on each failed half-open probe
    /// (`SPILLWAY_UPSTREAM_BREAKER_BACKOFF`, default 1 s)...
    pub breaker_backoff: Duration,
    /// ...up to this (`SPILLWAY_UPSTREAM_BREAKER_BACKOFF_MAX`, default 60 s).
    pub breaker_backoff_max: Duration,
}

impl UpstreamConfig {
    /// The defaults above for `urls`.
    pub fn new(urls: Vec<Url>) -> Self {
        UpstreamConfig {
            urls,
            prefix: String::new(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(5),
            breaker_failures: 5,
            breaker_backoff: Duration::from_secs(1),
            breaker_backoff_max: Duration::from_secs(60),
        }
    }
}

/// Why a forwarded request failed, as the forwarding code saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection could be made: nothing of the request reached the upstream, so it may be
    /// retried on another one.
    Connect,
    /// No response headers within the response timeout, or the body went silent.
    Timeout,
    /// The connection broke after the request was (partly) sent.
    Io,
    /// The upstream answered 502, 503 or 504 (its own overload or its own upstream).
    Unavailable,
}

/// The upstream set (cheap to clone).
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    config: UpstreamConfig,
    next: AtomicUsize,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("count", &self.inner.config.urls.len())
            .finish()
    }
}

impl Upstreams {
    /// The set for `config`; fails with [`crate::Error::Config`] on no URL or a URL that is
    /// not `http`/`https`.
    pub fn new(config: UpstreamConfig) -> crate::Result<Self> {
        if config.urls.is_empty() {
            return Err(crate::Error::Config("no upstream configured".into()));
        }
        Ok(Upstreams {
            inner: Arc::new(Inner {
                config,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    /// Starts the active health checks (one task; it ends when the last clone of `self` is
    /// dropped).
    pub fn spawn_health_checks(&self) {}

    /// The routable upstream with the fewest requests in flight, skipping the indices in
    /// `exclude` (those already tried for this request); `None` when there is none.
    pub fn pick(&self, exclude: &[usize]) -> Option<Lease> {
        let n = self.inner.config.urls.len();
        for _ in 0..n {
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
            if !exclude.contains(&i) {
                return Some(Lease {
                    index: i,
                    base: self.inner.config.urls[i].clone(),
                });
            }
        }
        None
    }

    /// Whether at least one upstream is healthy (for `/readyz`).
    pub fn any_healthy(&self) -> bool {
        true
    }

    /// The response headers of the latest successful `OPTIONS {prefix}/health` of a healthy
    /// upstream (its capability headers, to merge with the gateway's own); `None` before the
    /// first one.
    pub fn capabilities(&self) -> Option<http::HeaderMap> {
        None
    }
}

/// One request's hold on an upstream: counts as in flight until dropped. Report the outcome
/// with [`Lease::succeeded`] or [`Lease::failed`]; a lease dropped unreported (the client went
/// away) counts for neither.
#[derive(Debug)]
pub struct Lease {
    index: usize,
    base: Url,
}

impl Lease {
    /// The upstream's index in [`UpstreamConfig::urls`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The upstream's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The upstream's label in metrics and logs (its base URL without credentials).
    pub fn name(&self) -> String {
        self.base.to_string()
    }

    /// The upstream answered (any status but 502/503/504) and its body was read to the end.
    pub fn succeeded(self, _latency: Duration) {}

    /// The request failed on this upstream.
    pub fn failed(self, _kind: FailureKind) {}
}
