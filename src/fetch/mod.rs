//! Resolving pointers over HTTP: the fetch engine.
//!
//! [`Fetcher::fetch`] gets an object's stored bytes and [`Fetcher::resolve`] turns a pointer
//! into the batch it stands for. Both run the same engine:
//!
//! 1. **Probe** without downloading the body: `HEAD` for plain URLs, `GET Range: bytes=0-0`
//!    for presigned ones (a URL signed for GET answers 403 to HEAD). It yields the size, range
//!    support, `Content-Encoding` and ETag. A store that refuses the probe (403/405/501) or
//!    omits the size is read with one streaming GET.
//! 2. **Parallel ranged download** for objects of at least
//!    [`FetchConfig::parallel_threshold`]: [`FetchConfig::chunk_size`] ranges, issued in order
//!    (the head of the object arrives first), at most [`FetchConfig::concurrency`] at a time,
//!    over pooled HTTP/1.1 connections, written straight into one buffer allocated up front.
//! 3. **Hedging on a timer**: a request still waiting for its first byte after
//!    `max(hedge_min_delay, hedge_ttfb_factor x median time-to-first-byte)`, or receiving so
//!    slowly that a fresh request would finish `hedge_slow_factor` times sooner, gets a
//!    duplicate for its remaining bytes. The first response to reach a byte writes it; when a
//!    chunk is complete the other requests for it are cancelled at once. Hedges are budgeted
//!    ([`FetchConfig::hedge_budget`]) so a slow store is not hammered.
//! 4. **Retries per chunk** with exponential backoff and jitter (connection failures, resets,
//!    5xx, 503 SlowDown, short bodies, bad ranges, no byte for
//!    [`FetchConfig::stall_timeout`]); a retry resumes where the broken response stopped.
//!    403, 404, a changed object, caps and checksum mismatches fail at once, typed.
//! 5. **Integrity**: every 206 must carry exactly the requested `Content-Range` and length; a
//!    200 to a range request is consumed up to the chunk and dropped (never buffered whole);
//!    every response must carry the probe's ETag (and `If-Match` asks the store to refuse
//!    otherwise) and encoding; the whole fetch has a deadline ([`FetchConfig::deadline`]).
//! 6. **Decode while downloading**: complete pieces go, in order, to a blocking thread that
//!    hashes (sha256 over the decoded bytes) and decompresses (zstd frames declaring more
//!    than the cap are refused before anything is allocated for them).
//!
//! Each fetch runs in a `spillway.fetch` tracing span and feeds the counters
//! `spillway_fetch_bytes_total`, `spillway_fetch_retries_total`,
//! `spillway_fetch_hedges_launched_total`, `spillway_fetch_hedges_won_total` and
//! `spillway_fetch_failures_total{kind}`. URLs in errors, logs and metrics are redacted.

#[cfg(feature = "cli")]
mod args;
mod engine;
mod http;
mod roots;
mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use bytes::Bytes;
use tracing::Instrument;
use url::Url;

#[cfg(feature = "cli")]
pub use self::args::FetchArgs;
pub(crate) use self::roots::read_capped;
pub use self::roots::{CaBundle, MAX_CA_BUNDLE_BYTES};
pub use crate::error::FetchFailure;
use crate::error::{Error, Result};
use crate::object::{resolve_object, ResolvedBatch};
use crate::url_policy::{PolicyResolver, UrlPolicy};
use crate::wire::{keys, MetaBatch};
use engine::{Downloaded, Job, Output};
use http::Transport;

/// Called with (bytes received, total bytes if known) while an object downloads.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Default [`FetchConfig::chunk_size`]: 16 MiB (see BENCHMARKS.md for the measurements).
pub const DEFAULT_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
/// Default [`FetchConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default [`FetchConfig::parallel_threshold`]: 8 MiB.
pub const DEFAULT_PARALLEL_THRESHOLD: u64 = 8 * 1024 * 1024;
/// Default [`FetchConfig::hedge_budget`].
pub const DEFAULT_HEDGE_BUDGET: f64 = 0.2;
/// Default [`FetchConfig::hedge_min_delay`] in milliseconds.
pub const DEFAULT_HEDGE_MIN_DELAY_MS: u64 = 100;

/// Limits, policy and tuning of a [`Fetcher`]. The defaults come from the benchmark in
/// BENCHMARKS.md (an S3-like store: ~50 MiB/s per connection, ~30 ms to first byte, a few
/// percent of stragglers).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Largest object accepted as stored (encoded) bytes.
    pub max_fetch_bytes: u64,
    /// Largest object accepted after decompression.
    pub max_decompressed_bytes: u64,
    /// Most redirects followed per request (each hop is checked against the policy).
    pub max_redirects: u32,
    /// Whole-fetch attempts per pointer when a completely downloaded object does not parse
    /// (network faults are retried per request, see `max_chunk_retries`). Default 3.
    pub attempts: u32,
    /// Pause between those attempts. Default 500 ms.
    pub retry_delay: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Longest pause inside one read before the connection is dropped (a backstop; the
    /// engine's own `stall_timeout` usually fires first).
    pub read_timeout: Duration,
    /// Which URLs may be fetched.
    pub policy: UrlPolicy,
    /// Objects at least this large are fetched in parallel ranges. Default 8 MiB.
    pub parallel_threshold: u64,
    /// Size of each range request. An object smaller than `concurrency` such ranges is
    /// split into `concurrency` equal ranges instead (not below 1 MiB), so that it still
    /// uses every connection. Default 16 MiB.
    pub chunk_size: u64,
    /// Range requests in flight at once (hedges come on top). Default 8.
    pub concurrency: usize,
    /// Duplicate straggling requests. Default on.
    pub hedge: bool,
    /// Hedges allowed per fetch, as a fraction of its chunks (at least 4 per fetch).
    /// Default 0.2: the detectors are relative to the observed latency and throughput, so a
    /// uniformly slow store triggers few hedges anyway; the budget caps the worst case.
    pub hedge_budget: f64,
    /// A request is never hedged before this much time without a first byte (or this much
    /// time of receiving, for slowness). Default 100 ms.
    pub hedge_min_delay: Duration,
    /// A request without a first byte after this many times the median time-to-first-byte
    /// is hedged. Default 3.
    pub hedge_ttfb_factor: f64,
    /// A receiving request is hedged when it would finish this many times later than a
    /// fresh request at the median throughput. Default 2.
    pub hedge_slow_factor: f64,
    /// Retries of one chunk (or of the probe) before the fetch fails. Default 4.
    pub max_chunk_retries: u32,
    /// First retry delay; doubles per retry, with jitter. Default 100 ms.
    pub retry_base_delay: Duration,
    /// Longest retry delay. Default 2 s.
    pub retry_max_delay: Duration,
    /// A request that delivers no byte for this long is abandoned and retried. Default 5 s.
    pub stall_timeout: Duration,
    /// Time allowed for the whole fetch (all retries and attempts). Default 600 s.
    pub deadline: Duration,
    /// Certificate authorities trusted for https object URLs next to the platform's roots
    /// (e.g. the private CA of a TLS Spillway server, whose local-store URLs are https).
    /// Default none.
    pub ca: CaBundle,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_fetch_bytes: 16 * 1024 * 1024 * 1024,
            max_decompressed_bytes: 16 * 1024 * 1024 * 1024,
            max_redirects: 5,
            attempts: 3,
            retry_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            policy: UrlPolicy::default(),
            parallel_threshold: DEFAULT_PARALLEL_THRESHOLD,
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            hedge: true,
            hedge_budget: DEFAULT_HEDGE_BUDGET,
            hedge_min_delay: Duration::from_millis(DEFAULT_HEDGE_MIN_DELAY_MS),
            hedge_ttfb_factor: 3.0,
            hedge_slow_factor: 2.0,
            max_chunk_retries: 4,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(600),
            ca: CaBundle::default(),
        }
    }
}

/// The stored bytes of an object and how they are encoded.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The bytes as stored.
    pub encoded: Bytes,
    /// The `Content-Encoding` the store reported (normalized: lowercase, no parameters;
    /// `None` for identity).
    pub content_encoding: Option<String>,
}

/// What fetching (and resolving) one object cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchStats {
    /// Stored bytes of the object (last attempt).
    pub encoded_bytes: u64,
    /// Bytes after decoding.
    pub decoded_bytes: u64,
    /// Whole-fetch attempts made.
    pub attempts: u32,
    /// Total time, all attempts included.
    pub elapsed: Duration,
    /// Chunks the object was split into (1: a single GET).
    pub chunks: u32,
    /// HTTP requests sent, the probe included.
    pub requests: u32,
    /// Requests repeated after a failure or stall.
    pub retries: u32,
    /// Duplicate requests launched for stragglers.
    pub hedges_launched: u32,
    /// Chunks completed by a hedge rather than by the request it duplicated.
    pub hedges_won: u32,
    /// Whether the parallel ranged path was used.
    pub ranged: bool,
    /// Body bytes received, duplicates from hedges and retries included.
    pub bytes_received: u64,
    /// Range requests the store answered with the whole object (200).
    pub ranges_ignored: u32,
    /// From the start of the fetch to the first byte of object data.
    pub time_to_first_byte: Duration,
}

/// Downloads objects named by pointers, within a [`FetchConfig`]. Cloning is cheap and
/// shares the connection pool.
#[derive(Debug, Clone)]
pub struct Fetcher {
    transport: Arc<Transport>,
    config: Arc<FetchConfig>,
}

impl Fetcher {
    /// A fetcher with its own connection pool (HTTP/1.1, one range per connection; the DNS
    /// resolver drops addresses the policy forbids).
    pub fn new(config: FetchConfig) -> Result<Self> {
        if config.chunk_size == 0 || config.concurrency == 0 {
            return Err(Error::Config(
                "fetch chunk size and concurrency must be at least 1".into(),
            ));
        }
        if !(config.hedge_budget.is_finite()
            && config.hedge_ttfb_factor.is_finite()
            && config.hedge_slow_factor.is_finite())
        {
            return Err(Error::Config("fetch hedge factors must be finite".into()));
        }
        // Never through a proxy (`no_proxy`): the policy judges the addresses a pointer's host
        // resolves to, and a proxy would resolve (and connect to) them out of its sight.
        let http = config
            .ca
            .apply(reqwest::Client::builder())
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(
                config.policy.clone(),
            ))))
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(config.concurrency.saturating_mul(2).max(4))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Fetcher {
            transport: Arc::new(Transport {
                http,
                policy: config.policy.clone(),
                max_redirects: config.max_redirects,
            }),
            config: Arc::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Gets an object's stored bytes (see the module documentation for how).
    pub async fn fetch(&self, url: &str, progress: Option<&ProgressFn>) -> Result<FetchedObject> {
        self.fetch_with_stats(url, progress).await.map(|(o, _)| o)
    }

    /// Like [`Fetcher::fetch`], with what the fetch cost.
    pub async fn fetch_with_stats(
        &self,
        url: &str,
        progress: Option<&ProgressFn>,
    ) -> Result<(FetchedObject, FetchStats)> {
        let deadline = Instant::now() + self.config.deadline;
        let d = self.download(url, Output::Raw, progress, deadline).await?;
        Ok((
            FetchedObject {
                encoded: d.data,
                content_encoding: d.content_encoding,
            },
            d.stats,
        ))
    }

    async fn download(
        &self,
        url: &str,
        output: Output,
        progress: Option<&ProgressFn>,
        deadline: Instant,
    ) -> Result<Downloaded> {
        let redacted = spillway_storage::redact_url(url);
        let parsed = Url::parse(url).map_err(|e| Error::UrlRejected {
            url: redacted.clone(),
            reason: format!("not a valid url: {e}"),
        });
        let span = tracing::info_span!(
            "spillway.fetch",
            url = %redacted,
            otel.name = "vgi_rpc.external/fetch",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            url.full = %crate::telemetry::url_attribute(url),
            bytes = tracing::field::Empty,
            chunks = tracing::field::Empty,
            requests = tracing::field::Empty,
            retries = tracing::field::Empty,
            hedges_launched = tracing::field::Empty,
            hedges_won = tracing::field::Empty,
            ranged = tracing::field::Empty,
        );
        let result = async {
            let job = Job {
                transport: self.transport.clone(),
                config: &self.config,
                url: parsed?,
                output,
                progress,
                deadline,
            };
            engine::download(job).await
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match &result {
            Ok(d) => {
                let s = &d.stats;
                span.record("otel.status_code", "OK");
                span.record("bytes", crate::telemetry::int(s.encoded_bytes));
                span.record("chunks", crate::telemetry::int(s.chunks));
                span.record("requests", crate::telemetry::int(s.requests));
                span.record("retries", crate::telemetry::int(s.retries));
                span.record("hedges_launched", crate::telemetry::int(s.hedges_launched));
                span.record("hedges_won", crate::telemetry::int(s.hedges_won));
                span.record("ranged", s.ranged);
                tracing::debug!(
                    bytes = d.stats.encoded_bytes,
                    elapsed_ms = d.stats.elapsed.as_millis() as u64,
                    chunks = d.stats.chunks,
                    requests = d.stats.requests,
                    retries = d.stats.retries,
                    hedges_launched = d.stats.hedges_launched,
                    hedges_won = d.stats.hedges_won,
                    "fetched"
                )
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                metrics::counter!("spillway_fetch_failures_total", "kind" => http::failure_label(e))
                    .increment(1);
                tracing::debug!(error = %e, "fetch failed");
            }
        }
        result
    }

    /// Resolves a pointer batch: fetch, decode, verify and apply the reader rules.
    /// `pointer` must be a pointer (see [`crate::wire::is_pointer`]).
    pub async fn resolve(
        &self,
        pointer: &MetaBatch,
        progress: Option<&ProgressFn>,
    ) -> Result<(ResolvedBatch, FetchStats)> {
        let url = pointer
            .metadata
            .get(keys::LOCATION)
            .ok_or_else(|| Error::Protocol("pointer without vgi_rpc.location".into()))?
            .clone();
        let sha = pointer.metadata.get(keys::LOCATION_SHA256).cloned();
        let schema = pointer.batch.schema();
        let started = Instant::now();
        let deadline = started + self.config.deadline;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .resolve_once(&url, sha.as_deref(), &schema, progress, deadline)
                .await
            {
                Ok((resolved, mut stats)) => {
                    stats.attempts = attempt;
                    stats.elapsed = started.elapsed();
                    return Ok((resolved, stats));
                }
                Err(e) if is_transient(&e) && attempt < self.config.attempts => {
                    tracing::warn!(
                        url = %spillway_storage::redact_url(&url),
                        attempt,
                        error = %e,
                        "pointer object did not parse; fetching it again"
                    );
                    let pause = self
                        .config
                        .retry_delay
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Err(e) if is_transient(&e) => {
                    return Err(Error::Http(format!(
                        "Failed to resolve ExternalLocation after {attempt} attempts: {}: {e}",
                        spillway_storage::redact_url(&url)
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn resolve_once(
        &self,
        url: &str,
        sha: Option<&str>,
        schema: &SchemaRef,
        progress: Option<&ProgressFn>,
        deadline: Instant,
    ) -> Result<(ResolvedBatch, FetchStats)> {
        let started = Instant::now();
        let output = Output::Decoded {
            hash: sha.is_some(),
        };
        let d = self.download(url, output, progress, deadline).await?;
        if let (Some(expected), Some(actual)) = (sha, d.sha256.as_deref()) {
            if !actual.eq_ignore_ascii_case(expected) {
                let e = Error::Checksum {
                    url: spillway_storage::redact_url(url),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                };
                metrics::counter!("spillway_fetch_failures_total", "kind" => "checksum")
                    .increment(1);
                return Err(e);
            }
        }
        let url = url.to_string();
        let schema = schema.clone();
        let stats = d.stats;
        let data = d.data;
        tokio::task::spawn_blocking(move || {
            // The digest was verified while downloading; only the reader rules remain.
            let resolved = resolve_object(data, &schema, None, &url, started.elapsed())?;
            Ok((resolved, stats))
        })
        .await
        .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
    }
}

/// Failures worth fetching the whole object again: a stream that downloaded completely but
/// does not parse. Network faults were already retried request by request.
fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Ipc(_))
}
