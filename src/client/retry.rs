//! Retrying overload and transient failures: the [`RetryPolicy`] of a
//! [`ClientConfig`](super::ClientConfig), the rule of which requests may be sent again, and the
//! one retry loop every request of the client goes through.
//!
//! # What is safe to send again
//!
//! An RPC request that reached a method may have done its work even when the answer never
//! arrived: a proxy answers 502 or 504 when the server ran the method and then failed or was
//! slow, and a connection lost after the request went out says nothing about whether the
//! server acted on it. The vgi-rpc reference client therefore never replays an RPC dispatch;
//! it retries only discovery and control requests. This client keeps that rule and adds the
//! one case in which a replay is known to be safe, because the server says it did not run the
//! method:
//!
//! - **Refused before execution**: `429 Too Many Requests` (any body), and `503 Service
//!   Unavailable` carrying a valid `Retry-After` (delta-seconds or an HTTP-date) or a
//!   `vgi_rpc.RetryInfo` detail in its EXCEPTION body. A Spillway server answers overload,
//!   admission timeouts and draining this way *before* the method runs (503, `Retry-After: N`,
//!   error code `UNAVAILABLE` with `[{"@type":"vgi_rpc.RetryInfo","retry_delay_seconds":N}]`),
//!   and so does its authentication gate when the token authority is unreachable. These are
//!   retried for every request: unary calls, stream `/init`, stream `/exchange` steps (the
//!   same state tokens and input are sent again, which is exactly the request that was
//!   refused), `__upload_url__/init`, the capability probe and the PUT of an upload.
//!   The server's `Retry-After` is the least the client waits; a value above
//!   [`RetryPolicy::max_retry_after`] ends the retrying with the error instead.
//! - **Transient, outcome unknown**: 502, 504, a 503 without `Retry-After`, a timeout, or a
//!   connection that broke after the request may have been sent. Retried only for requests
//!   that are replay-safe by construction (the capability probe `OPTIONS {prefix}/health`,
//!   `__upload_url__/init`, which only vends a fresh URL pair, and the PUT of a whole object to
//!   an upload URL, which writes the same bytes to the same key; for that PUT, 408 and 500
//!   count as transient too, as object stores ask), and for RPC dispatches only when the caller
//!   declares its methods idempotent with [`RetryPolicy::idempotent`] (`spillway call
//!   --retry-idempotent`). A stream step carries its state in its tokens, so a replayed step
//!   runs that step again from the same state: idempotent means the method tolerates that.
//! - **Nothing was sent**: connection refused, a DNS failure, a connect timeout. Retried for
//!   every request.
//! - Anything else (4xx other than 429, 500 and other statuses of the RPC server, a TLS
//!   failure, a response too large, a refused URL, a credential that cannot be had) is final.
//!
//! Every request body of the client is an in-memory [`Bytes`](bytes::Bytes) (the Arrow
//! request, its compressed form, the upload PUT), never a one-shot stream, so each attempt
//! sends the identical body. Each attempt asks the token provider anew.
//!
//! # Timing
//!
//! Backoff is exponential with full jitter: before retry `n` (0-based) the client waits a
//! uniformly random time in `[0, min(max_backoff, base_backoff * 2^n)]`; after a
//! `Retry-After: R` it waits `R` plus that jitter, so clients told the same `R` do not return
//! in the same instant. A [`RetryPolicy::deadline`] bounds one operation (a unary call, a
//! stream's `/init`, one stream step, with every request they make): no sleep ends past it,
//! and each attempt's timeout is cut to what remains.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use crate::error::{Error, Result};
use crate::wire::RpcError;

/// The most retries a [`RetryPolicy`] may allow.
pub const MAX_RETRIES: u32 = 100;

/// The `@type` of the structured error detail that carries a retry delay.
const RETRY_INFO_TYPE: &str = "vgi_rpc.RetryInfo";

/// How a [`Client`](super::Client) retries overload and transient failures (see the
/// [module docs](self) for which requests are sent again when).
///
/// The default allows 3 retries (4 attempts in all, as the vgi-rpc reference's
/// `HttpRetryConfig`), backoff from 500 ms up to 10 s with full jitter, honours a server's
/// `Retry-After` up to 30 s, has no deadline of its own and does not replay RPC dispatches
/// after an ambiguous failure.
///
/// ```
/// use std::time::Duration;
/// use spillway::client::{ClientConfig, RetryPolicy};
///
/// let config = ClientConfig::default().with_retry(
///     RetryPolicy::default()
///         .with_max_retries(5)
///         .with_deadline(Duration::from_secs(60))
///         .idempotent(true),
/// );
/// assert_eq!(config.retry.max_retries, 5);
/// let off = ClientConfig::default().with_retry(RetryPolicy::none());
/// assert_eq!(off.retry.max_retries, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying (errors are returned as they
    /// come). At most [`MAX_RETRIES`]. Default 3.
    pub max_retries: u32,
    /// The backoff step of the first retry; it doubles per retry. Default 500 ms.
    pub base_backoff: Duration,
    /// The largest backoff step. Default 10 s.
    pub max_backoff: Duration,
    /// The longest `Retry-After` (or `retry_delay_seconds`) the client waits for; a server
    /// asking for more ends the retrying with its error. Default 30 s.
    pub max_retry_after: Duration,
    /// The time budget of one operation: a unary call, a stream's `/init` or one stream step,
    /// with all their requests (capability probe, upload URL, PUT, POST) and retries. No
    /// backoff sleep ends past it and each attempt's timeout is cut to what remains (never
    /// above [`ClientConfig::timeout`](super::ClientConfig::timeout)). `None` (the default):
    /// only the attempt count and the per-request timeout bound an operation.
    pub deadline: Option<Duration>,
    /// Whether the methods called are idempotent: RPC dispatches are then also replayed after
    /// 502, 504, a 503 without `Retry-After`, a timeout or a broken connection, when the
    /// method may already have run. Default `false`.
    pub idempotent: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
            deadline: None,
            idempotent: false,
        }
    }
}

impl RetryPolicy {
    /// No retrying at all: every failure is returned as it comes.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// This policy with `max_retries` retries.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// This policy with an operation deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// This policy with backoff steps from `base` up to `max`.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// This policy declaring (or not) the called methods idempotent.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Checks the bounds (used by [`Client::new`](super::Client::new)).
    pub(super) fn validate(&self) -> Result<()> {
        if self.max_retries > MAX_RETRIES {
            return Err(Error::Config(format!(
                "retry max_retries must be at most {MAX_RETRIES}, got {}",
                self.max_retries
            )));
        }
        if self.base_backoff > self.max_backoff {
            return Err(Error::Config(format!(
                "retry base_backoff ({:?}) exceeds max_backoff ({:?})",
                self.base_backoff, self.max_backoff
            )));
        }
        Ok(())
    }

    /// The backoff step before retry `retry` (0-based): `base * 2^retry`, at most `max`.
    fn step(&self, retry: u32) -> Duration {
        self.base_backoff
            .saturating_mul(1u32 << retry.min(30))
            .min(self.max_backoff)
    }

    /// The wait before retry `retry` (0-based): the server's `retry_after` (if any) plus a
    /// full-jitter share of the step, `unit` in `[0, 1)` choosing where in it.
    pub(super) fn delay(&self, retry: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let jitter = self.step(retry).mul_f64(unit.clamp(0.0, 1.0));
        retry_after.unwrap_or_default().saturating_add(jitter)
    }
}

/// Why a retried request was given up (the `stop` of [`Error::RetriesExhausted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStop {
    /// Every retry the policy allows was made.
    MaxRetries {
        /// [`RetryPolicy::max_retries`].
        max_retries: u32,
    },
    /// The next attempt would have started after the operation's deadline.
    Deadline {
        /// [`RetryPolicy::deadline`].
        deadline: Duration,
    },
    /// The server asked to be retried later than the policy waits.
    RetryAfterTooLong {
        /// What the server asked for.
        requested: Duration,
        /// [`RetryPolicy::max_retry_after`].
        max_retry_after: Duration,
    },
}

impl std::fmt::Display for RetryStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryStop::MaxRetries { max_retries } => {
                write!(f, "max_retries ({max_retries}) reached")
            }
            RetryStop::Deadline { deadline } => write!(
                f,
                "the next attempt would pass the deadline ({:.1} s)",
                deadline.as_secs_f64()
            ),
            RetryStop::RetryAfterTooLong {
                requested,
                max_retry_after,
            } => write!(
                f,
                "the server asked to retry after {} s, more than max_retry_after ({} s)",
                requested.as_secs(),
                max_retry_after.as_secs()
            ),
        }
    }
}

/// The deadline of one client operation (see [`RetryPolicy::deadline`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: Option<(Instant, Duration)>,
}

impl Deadline {
    /// A deadline `budget` from now, or none.
    pub(super) fn after(budget: Option<Duration>) -> Self {
        Deadline {
            at: budget.map(|b| (Instant::now() + b, b)),
        }
    }

    /// The timeout of the next attempt: `timeout`, cut to what remains (at least 1 ms, so an
    /// attempt at the deadline fails as a timeout rather than with an invalid setting).
    pub(super) fn attempt_timeout(&self, timeout: Duration) -> Duration {
        match self.at {
            None => timeout,
            Some((at, _)) => timeout.min(
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ),
        }
    }

    /// The stop reason when an attempt after sleeping `delay` would start at or past it.
    fn passed_by(&self, delay: Duration) -> Option<RetryStop> {
        let (at, budget) = self.at?;
        (Instant::now() + delay >= at).then_some(RetryStop::Deadline { deadline: budget })
    }
}

/// Whether a request may be sent again after an ambiguous failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Replay-safe by construction: the capability probe, `__upload_url__/init`, the PUT of an
    /// upload.
    Safe,
    /// An RPC dispatch (unary call, stream `/init` or `/exchange`): replayed after an
    /// ambiguous failure only when the policy declares the methods idempotent.
    Dispatch,
}

/// Who answered: the statuses that mean "transient" differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    /// The RPC server (or a proxy in front of it).
    Rpc,
    /// An object store behind an upload URL.
    Storage,
}

/// What an answer's status says about sending the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Success, or a failure another attempt would not change.
    Final,
    /// Refused before execution (429, or 503 with a retry delay); `after` is the delay the
    /// server asked for.
    Refused {
        /// From `Retry-After` or `vgi_rpc.RetryInfo`.
        after: Option<Duration>,
    },
    /// The outcome is unknown (502, 504, 503 without a retry delay; 408 and 500 from storage).
    Transient,
}

/// The verdict on an answer: `headers` for `Retry-After`, `error` the EXCEPTION its body
/// carried, if any (for `vgi_rpc.RetryInfo`).
pub(super) fn verdict(
    peer: Peer,
    status: u16,
    headers: &HeaderMap,
    error: Option<&RpcError>,
) -> Verdict {
    let after = || {
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .or_else(|| error.and_then(retry_info_delay))
    };
    match status {
        429 => Verdict::Refused { after: after() },
        503 => match after() {
            Some(after) => Verdict::Refused { after: Some(after) },
            None => Verdict::Transient,
        },
        502 | 504 => Verdict::Transient,
        408 | 500 if peer == Peer::Storage => Verdict::Transient,
        _ => Verdict::Final,
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds (a decimal fraction is
/// accepted too, as the reference client does), or an HTTP-date, counted from `now` (a date
/// in the past is no delay). A number too large for a `Duration` saturates.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v.parse().ok()?;
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX));
    }
    let date = httpdate::parse_http_date(v).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

/// The `retry_delay_seconds` of a `vgi_rpc.RetryInfo` detail, if the error carries one.
fn retry_info_delay(error: &RpcError) -> Option<Duration> {
    let details: serde_json::Value = serde_json::from_str(error.details()?).ok()?;
    details.as_array()?.iter().find_map(|d| {
        if d.get("@type")?.as_str()? != RETRY_INFO_TYPE {
            return None;
        }
        let secs = d.get("retry_delay_seconds")?.as_f64()?;
        (secs >= 0.0).then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
    })
}

/// An answer the retry loop can name the status of, for its debug line.
pub(super) trait Answer {
    /// The HTTP status.
    fn status(&self) -> u16;
}

impl Answer for u16 {
    fn status(&self) -> u16 {
        *self
    }
}

impl Answer for reqwest::Response {
    fn status(&self) -> u16 {
        reqwest::Response::status(self).as_u16()
    }
}

/// What one attempt came to.
pub(super) enum Attempt<T> {
    /// An answer arrived (of any status), with its verdict.
    Answered(T, Verdict),
    /// Failed before anything was sent (connection refused, DNS, TLS handshake).
    NotSent(Error),
    /// Failed after the request may have been sent (timeout, reset, body cut off).
    MaybeSent(Error),
    /// Failed in a way another attempt would not change.
    Failed(Error),
}

impl<T> Attempt<T> {
    /// Classifies a failed `send()`: nothing left the client when connecting failed; the URL
    /// policy refusing the address and a TLS failure (an untrusted certificate, a refused
    /// client certificate) are final, another attempt would meet the same.
    pub(super) fn send_failed(e: reqwest::Error) -> Self {
        let connect = e.is_connect();
        let tls = is_tls_failure(&e);
        match Error::from_reqwest(e) {
            e @ Error::UrlRejected { .. } => Attempt::Failed(e),
            e if tls => Attempt::Failed(e),
            e if connect => Attempt::NotSent(e),
            e => Attempt::MaybeSent(e),
        }
    }

    /// Classifies a failed body read: a transport error leaves the outcome unknown; a limit
    /// is final.
    pub(super) fn read_failed(e: Error) -> Self {
        match e {
            Error::Http(_) => Attempt::MaybeSent(e),
            e => Attempt::Failed(e),
        }
    }
}

/// Whether a rustls error is in the source chain (directly, or inside an `io::Error`, whose
/// `source()` skips the error it wraps).
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if inner.is::<rustls::Error>() {
                return true;
            }
        }
        src = s.source();
    }
    false
}

/// What the retry loop says about one request, for its debug line and metric.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request<'a> {
    /// A short name: `call` (an RPC dispatch), `control` (`__upload_url__/init`), `probe`,
    /// `upload` (the PUT to an upload URL).
    pub(super) what: &'static str,
    /// The redacted URL.
    pub(super) url: &'a str,
    /// Whether it may be replayed after an ambiguous failure.
    pub(super) replay: Replay,
}

/// Runs `attempt` until it succeeds, fails for good or the policy gives up: the one retry
/// loop. `to_error` turns an answer that was given up on into its error (as the request's
/// caller would have). Without retries allowed (`max_retries == 0`), or for a failure the
/// request may not be retried after, the answer or error is returned as it came; a request
/// given up on is [`Error::RetriesExhausted`] with the last attempt's error.
pub(super) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    deadline: &Deadline,
    request: Request<'_>,
    mut attempt: F,
    to_error: impl Fn(T) -> Error,
) -> Result<T>
where
    T: Answer,
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let replayable = request.replay == Replay::Safe || policy.idempotent;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        // The last attempt's answer or error, the server's delay, the cause label.
        let (last, after, cause): (Result<T>, Option<Duration>, &'static str) = match attempt()
            .await
        {
            Attempt::Answered(value, Verdict::Final) => return Ok(value),
            Attempt::Failed(e) => return Err(e),
            Attempt::Answered(value, Verdict::Refused { after }) => (Ok(value), after, "refused"),
            Attempt::Answered(value, Verdict::Transient) if replayable => {
                (Ok(value), None, "transient")
            }
            Attempt::Answered(value, Verdict::Transient) => return Ok(value),
            Attempt::NotSent(e) => (Err(e), None, "connect"),
            Attempt::MaybeSent(e) if replayable => (Err(e), None, "connection_lost"),
            Attempt::MaybeSent(e) => return Err(e),
        };
        if policy.max_retries == 0 {
            return last;
        }
        let retry = attempts - 1;
        let delay = policy.delay(retry, after, rand::random::<f64>());
        let stop = if retry >= policy.max_retries {
            Some(RetryStop::MaxRetries {
                max_retries: policy.max_retries,
            })
        } else if let Some(requested) = after.filter(|a| *a > policy.max_retry_after) {
            Some(RetryStop::RetryAfterTooLong {
                requested,
                max_retry_after: policy.max_retry_after,
            })
        } else {
            deadline.passed_by(delay)
        };
        if let Some(stop) = stop {
            let last = match last {
                Ok(value) => to_error(value),
                Err(e) => e,
            };
            return Err(Error::RetriesExhausted {
                attempts,
                stop,
                last: Box::new(last),
            });
        }
        let (status, error) = match &last {
            Ok(answer) => (Some(answer.status()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        tracing::debug!(
            what = request.what,
            url = request.url,
            cause,
            status,
            attempt = attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error,
            "retrying"
        );
        metrics::counter!("spillway_client_retries_total", "cause" => cause).increment(1);
        drop(last);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
