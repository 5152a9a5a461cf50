//! A faithful Rust re-implementation of the reference fetch algorithm (the vgi-rpc 0.52
//! Python client, `vgi_rpc/external_fetch.py`), used as a contender. Labelled as such in
//! every report: it is not the Python code, but it keeps the algorithm's decisions, including
//! its known weaknesses:
//!
//! - probe with `Range: bytes=0-0` (presigned URLs) or HEAD; ranged path only for objects of
//!   at least 64 MiB with range support, else one GET;
//! - 8 MiB chunks, all created at once as tasks behind a semaphore of `max_parallel`; a
//!   chunk's elapsed time starts at task creation (so it includes queueing);
//! - hedging evaluated only when some task completes, after at least 2 completions: a pending
//!   chunk whose elapsed time exceeds 2x the median completion time gets one duplicate (which
//!   also queues on the semaphore), at most 4 hedged chunks per fetch;
//! - the first failure aborts the fetch (no per-chunk retry); losing hedges are not cancelled
//!   when their chunk completes (only when the fetch ends);
//! - every chunk is read into its own buffer, then all are joined (two copies in memory).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use reqwest::header;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The reference's knobs (its defaults, except `max_parallel`, set equal to the other
/// contenders' concurrency, and the fetch cap, raised to fit the benchmark object).
pub(crate) struct RefConfig {
    pub(crate) parallel_threshold: u64,
    pub(crate) chunk_size: u64,
    pub(crate) max_parallel: usize,
    pub(crate) multiplier: f64,
    pub(crate) max_hedges: usize,
}

impl RefConfig {
    pub(crate) fn new(max_parallel: usize) -> RefConfig {
        RefConfig {
            parallel_threshold: 64 * 1024 * 1024,
            chunk_size: 8 * 1024 * 1024,
            max_parallel,
            multiplier: 2.0,
            max_hedges: 4,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fetches `url` the way the reference does; returns the bytes and the hedges launched.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    url: &str,
    cfg: &RefConfig,
) -> Result<(Vec<u8>, usize), BoxError> {
    // Probe: the benchmark's URLs are presigned, so a one-byte range GET.
    let resp = client
        .get(url)
        .header(header::RANGE, "bytes=0-0")
        .send()
        .await?;
    let status = resp.status().as_u16();
    let mut size = None;
    let mut ranges = false;
    if status == 206 {
        size = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|t| t.trim().parse::<u64>().ok());
        ranges = true;
        let _ = resp.bytes().await?;
    } else if !(200..300).contains(&status) && ![403, 405, 501].contains(&status) {
        return Err(format!("probe status {status}").into());
    }
    match size {
        Some(size) if ranges && size >= cfg.parallel_threshold => {
            fetch_chunks_with_hedging(client, url, size, cfg).await
        }
        _ => {
            let resp = client.get(url).send().await?.error_for_status()?;
            let mut parts: Vec<Bytes> = Vec::new();
            let mut resp = resp;
            while let Some(b) = resp.chunk().await? {
                parts.push(b);
            }
            Ok((parts.concat(), 0))
        }
    }
}

async fn fetch_one_chunk(
    client: reqwest::Client,
    url: String,
    start: u64,
    end: u64,
    semaphore: Arc<Semaphore>,
) -> Result<Vec<u8>, BoxError> {
    let _permit = semaphore.acquire_owned().await?;
    let mut resp = client
        .get(&url)
        .header(header::RANGE, format!("bytes={start}-{end}"))
        .send()
        .await?
        .error_for_status()?;
    if resp.status().as_u16() != 206 {
        return Err(format!(
            "expected 206 for bytes={start}-{end}, got {}",
            resp.status()
        )
        .into());
    }
    let expected = (end - start + 1) as usize;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(b) = resp.chunk().await? {
        total += b.len();
        if total > expected {
            return Err("range chunk size mismatch".into());
        }
        parts.push(b);
    }
    if total != expected {
        return Err("range chunk size mismatch".into());
    }
    Ok(parts.concat())
}

async fn fetch_chunks_with_hedging(
    client: &reqwest::Client,
    url: &str,
    size: u64,
    cfg: &RefConfig,
) -> Result<(Vec<u8>, usize), BoxError> {
    let count = size.div_ceil(cfg.chunk_size);
    let ranges: Vec<(u64, u64)> = (0..count)
        .map(|i| {
            let start = i * cfg.chunk_size;
            (start, (start + cfg.chunk_size - 1).min(size - 1))
        })
        .collect();
    let semaphore = Arc::new(Semaphore::new(cfg.max_parallel));
    let completion_times = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut results: HashMap<usize, Vec<u8>> = HashMap::new();
    // Task id -> (chunk, creation time); creation order kept for the hedge scan.
    let mut tasks: JoinSet<(usize, Result<Vec<u8>, BoxError>)> = JoinSet::new();
    let mut meta: HashMap<tokio::task::Id, (usize, Instant)> = HashMap::new();
    let mut order: Vec<tokio::task::Id> = Vec::new();
    let mut hedged: HashSet<usize> = HashSet::new();
    let spawn =
        |tasks: &mut JoinSet<_>, meta: &mut HashMap<_, _>, order: &mut Vec<_>, idx: usize| {
            let (start, end) = ranges[idx];
            let t0 = Instant::now();
            let times = completion_times.clone();
            let fut = fetch_one_chunk(
                client.clone(),
                url.to_string(),
                start,
                end,
                semaphore.clone(),
            );
            let handle = tasks.spawn(async move {
                let r = fut.await;
                if r.is_ok() {
                    times
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t0.elapsed().as_secs_f64());
                }
                (idx, r)
            });
            meta.insert(handle.id(), (idx, t0));
            order.push(handle.id());
        };
    for idx in 0..ranges.len() {
        spawn(&mut tasks, &mut meta, &mut order, idx);
    }
    while !tasks.is_empty() {
        // asyncio.wait(FIRST_COMPLETED): one completion plus whatever else is done.
        let mut done = Vec::new();
        if let Some(r) = tasks.join_next_with_id().await {
            done.push(r);
        }
        while let Some(r) = tasks.try_join_next_with_id() {
            done.push(r);
        }
        let mut first_err: Option<BoxError> = None;
        for r in done {
            let (id, (idx, result)) = match r {
                Ok(v) => v,
                Err(e) => return Err(e.into()),
            };
            meta.remove(&id);
            match result {
                Ok(data) => {
                    results.entry(idx).or_insert(data);
                }
                Err(e) => {
                    if results.contains_key(&idx) {
                        continue;
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            tasks.abort_all();
            return Err(e);
        }
        if results.len() == ranges.len() {
            break;
        }
        let times: Vec<f64> = completion_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if hedged.len() < cfg.max_hedges && times.len() >= 2 {
            let mut sorted = times;
            sorted.sort_by(f64::total_cmp);
            let threshold = sorted[sorted.len() / 2] * cfg.multiplier;
            let now = Instant::now();
            let pending: Vec<(usize, Instant)> = order
                .iter()
                .filter_map(|id| meta.get(id).copied())
                .collect();
            for (idx, t0) in pending {
                if hedged.len() >= cfg.max_hedges {
                    break;
                }
                if hedged.contains(&idx) || results.contains_key(&idx) {
                    continue;
                }
                if now.duration_since(t0).as_secs_f64() > threshold {
                    spawn(&mut tasks, &mut meta, &mut order, idx);
                    hedged.insert(idx);
                }
            }
        }
    }
    tasks.abort_all();
    // b"".join(...): one exact allocation, then a copy of every chunk.
    let mut out = Vec::with_capacity(size as usize);
    for idx in 0..ranges.len() {
        match results.remove(&idx) {
            Some(part) => out.extend_from_slice(&part),
            None => return Err(format!("chunk {idx} missing").into()),
        }
    }
    Ok((out, hedged.len()))
}
