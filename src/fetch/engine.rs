//! The download engine: probe, then requests driven by one event loop.
//!
//! Every HTTP request runs in its own task and reports its response head, body pieces, end or
//! failure to the driver over one channel. The driver owns the object's buffer and is the only
//! writer, so concurrent responses for the same bytes (a hedge and its original, a retry that
//! resumes where a broken response stopped) need no locking: each position is written once,
//! by the first response that reaches it. A timer (not request completions) checks for
//! stragglers and stalls, so hedges and retries fire even when every request is stuck.
//!
//! Scheduling units are *chunks* (one range request each, issued in order, at most
//! `concurrency` at a time); buffer units are *pieces* of `chunk_size` bytes, handed in order
//! to the sink (hashing, decompression) as soon as each is complete.
//!
//! The concerns live apart so the decisions can be tested without HTTP:
//! - [`probe`]: the first request (HEAD or `Range: bytes=0-0`) and what its answer means;
//! - [`request`]: one request task, the range it asks for, and the checks of its answer;
//! - [`assembly`]: the chunk plan, resume offsets, and the pieces of the one buffer;
//! - [`hedge`]: the straggler decision and the hedge budget;
//! - [`driver`]: the event loop tying them together.

mod assembly;
mod driver;
mod hedge;
mod probe;
mod request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::http::Transport;
use super::{FetchConfig, FetchStats, ProgressFn};
use crate::error::{Error, FetchFailure, Result};

/// What the caller wants back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Output {
    /// The stored bytes.
    Raw,
    /// The decoded bytes (and their sha256 when `hash`).
    Decoded { hash: bool },
}

/// One download.
pub(crate) struct Job<'a> {
    pub(crate) transport: Arc<Transport>,
    pub(crate) config: &'a FetchConfig,
    pub(crate) url: Url,
    pub(crate) output: Output,
    pub(crate) progress: Option<&'a ProgressFn>,
    pub(crate) deadline: Instant,
}

/// A finished download.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub(crate) data: Bytes,
    pub(crate) content_encoding: Option<String>,
    pub(crate) sha256: Option<String>,
    pub(crate) stats: FetchStats,
}

/// Runs a download to completion, within the job's deadline.
pub(crate) async fn download(job: Job<'_>) -> Result<Downloaded> {
    let started = Instant::now();
    let redacted = spillway_storage::redact_url(job.url.as_str());
    let deadline = job.deadline;
    let work = async {
        let probe = probe::probe(&job, started).await?;
        driver::Driver::new(&job, probe, started)?.run().await
    };
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Fetch {
            kind: FetchFailure::Timeout,
            url: redacted,
            detail: format!(
                "no complete object within the {:.1} s deadline",
                deadline.saturating_duration_since(started).as_secs_f64()
            ),
        }),
    }
}

/// A request (or the probe) that delivered no byte for `after`.
fn stalled(url: &str, what: &str, after: Duration) -> Error {
    Error::Fetch {
        kind: FetchFailure::Stalled,
        url: url.to_string(),
        detail: format!("{what}: no byte for {} ms", after.as_millis()),
    }
}
