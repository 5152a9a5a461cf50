//! Resolving pointers over HTTP.
//!
//! [`Fetcher::fetch`] is the one function that gets an object's bytes; today it is a single
//! streaming GET with manual redirects, per-hop URL policy checks and size caps. The parallel
//! ranged engine replaces it without touching callers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use url::Url;

use crate::error::{Error, Result};
use crate::object::{decode_content, resolve_object, ResolvedBatch};
use crate::url_policy::{PolicyResolver, UrlPolicy};
use crate::wire::{keys, MetaBatch};

/// Called with (bytes received, total bytes if known) while an object downloads.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// Limits and policy of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Largest object accepted as stored (encoded) bytes.
    pub max_fetch_bytes: u64,
    /// Largest object accepted after decompression.
    pub max_decompressed_bytes: u64,
    /// Most redirects followed.
    pub max_redirects: u32,
    /// Attempts per pointer for transient failures (network, 5xx, damaged stream).
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Time allowed to connect and get response headers.
    pub connect_timeout: Duration,
    /// Longest pause in a body before the transfer is abandoned.
    pub read_timeout: Duration,
    /// Which URLs may be fetched.
    pub policy: UrlPolicy,
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
        }
    }
}

/// The stored bytes of an object and how they are encoded.
#[derive(Debug, Clone)]
pub struct FetchedObject {
    /// The bytes as stored.
    pub encoded: Bytes,
    /// The `Content-Encoding` the store reported.
    pub content_encoding: Option<String>,
}

/// What resolving one pointer cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchStats {
    /// Stored bytes downloaded (last attempt).
    pub encoded_bytes: u64,
    /// Bytes after decoding.
    pub decoded_bytes: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Total time, all attempts included.
    pub elapsed: Duration,
}

/// Downloads objects named by pointers, within a [`FetchConfig`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    config: Arc<FetchConfig>,
}

impl Fetcher {
    /// A fetcher with its own connection pool.
    pub fn new(config: FetchConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver::new(Arc::new(
                config.policy.clone(),
            ))))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        Ok(Fetcher {
            http,
            config: Arc::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Gets an object's stored bytes: one streaming GET, redirects followed by hand with the
    /// policy checked before every hop, `max_fetch_bytes` enforced on Content-Length and while
    /// streaming.
    pub async fn fetch(&self, url: &str, progress: Option<&ProgressFn>) -> Result<FetchedObject> {
        let mut current = Url::parse(url).map_err(|e| Error::UrlRejected {
            url: spillway_storage::redact_url(url),
            reason: format!("not a valid url: {e}"),
        })?;
        let mut hops = 0u32;
        let response = loop {
            self.config.policy.check(&current)?;
            let resp = self
                .http
                .get(current.clone())
                .header(reqwest::header::ACCEPT_ENCODING, "identity")
                .send()
                .await
                .map_err(Error::from_reqwest)?;
            let status = resp.status();
            if status.is_redirection() {
                hops += 1;
                if hops > self.config.max_redirects {
                    return Err(Error::RedirectLimit {
                        url: spillway_storage::redact_url(url),
                        limit: self.config.max_redirects,
                    });
                }
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Error::Http(format!(
                            "redirect without a location from {}",
                            spillway_storage::redact_url(current.as_str())
                        ))
                    })?;
                current = current.join(location).map_err(|e| Error::UrlRejected {
                    url: spillway_storage::redact_url(current.as_str()),
                    reason: format!("bad redirect location: {e}"),
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(Error::HttpStatus {
                    status: status.as_u16(),
                    url: spillway_storage::redact_url(current.as_str()),
                });
            }
            break resp;
        };
        let too_large = |what: String| Error::TooLarge {
            what,
            limit_name: "max_fetch_bytes",
            limit: self.config.max_fetch_bytes,
        };
        let total = response.content_length();
        if let Some(len) = total {
            if len > self.config.max_fetch_bytes {
                return Err(too_large(format!("object of {len} bytes")));
            }
        }
        let content_encoding = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let capacity = total.unwrap_or(0).min(self.config.max_fetch_bytes) as usize;
        let mut buf = BytesMut::with_capacity(capacity);
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::from_reqwest)?;
            if (buf.len() + chunk.len()) as u64 > self.config.max_fetch_bytes {
                return Err(too_large(format!(
                    "object of more than {} bytes",
                    buf.len() + chunk.len()
                )));
            }
            buf.extend_from_slice(&chunk);
            if let Some(p) = progress {
                p(buf.len() as u64, total);
            }
        }
        if let Some(len) = total {
            if buf.len() as u64 != len {
                return Err(Error::Http(format!(
                    "short body: got {} of {len} bytes from {}",
                    buf.len(),
                    spillway_storage::redact_url(current.as_str())
                )));
            }
        }
        Ok(FetchedObject {
            encoded: buf.freeze(),
            content_encoding,
        })
    }

    /// Resolves a pointer batch: fetch, decode, verify and apply the reader rules, retrying
    /// transient failures. `pointer` must be a pointer (see [`crate::wire::is_pointer`]).
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
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .resolve_once(&url, sha.as_deref(), &schema, progress)
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
                        "pointer fetch failed; retrying"
                    );
                    tokio::time::sleep(self.config.retry_delay).await;
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
    ) -> Result<(ResolvedBatch, FetchStats)> {
        let started = Instant::now();
        let fetched = self.fetch(url, progress).await?;
        let encoded_bytes = fetched.encoded.len() as u64;
        let max_decoded = self.config.max_decompressed_bytes;
        let url = url.to_string();
        let sha = sha.map(str::to_string);
        let schema = schema.clone();
        tokio::task::spawn_blocking(move || {
            let decoded = decode_content(
                fetched.encoded,
                fetched.content_encoding.as_deref(),
                max_decoded,
            )?;
            let decoded_bytes = decoded.len() as u64;
            let resolved =
                resolve_object(decoded, &schema, sha.as_deref(), &url, started.elapsed())?;
            Ok((
                resolved,
                FetchStats {
                    encoded_bytes,
                    decoded_bytes,
                    attempts: 1,
                    elapsed: started.elapsed(),
                },
            ))
        })
        .await
        .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?
    }
}

/// Failures worth another attempt: the network, a 5xx, a damaged stream.
fn is_transient(e: &Error) -> bool {
    match e {
        Error::Http(_) | Error::Ipc(_) => true,
        Error::HttpStatus { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}
