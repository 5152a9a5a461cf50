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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use url::Url;

use super::http::{
    backoff, base_headers, classify_reqwest, is_presigned, retryable, retryable_status,
    send_following, ContentRange, Head, Transport,
};
use super::sink::{self, Encoding, SinkMode, SinkOutput};
use super::{FetchConfig, FetchStats, ProgressFn};
use crate::error::{Error, FetchFailure, Result};

/// How often the timer looks for stalls and stragglers.
const TICK: Duration = Duration::from_millis(10);
/// Most hedges one chunk gets (the original plus this many duplicates).
const MAX_HEDGES_PER_CHUNK: u32 = 2;
/// Hedges always allowed per fetch, whatever the budget fraction gives.
const MIN_HEDGE_BUDGET: u32 = 4;
/// Responses shorter than this (or than half a chunk) give no throughput sample: too noisy.
const MIN_RATE_SAMPLE_BYTES: u64 = 256 * 1024;
/// Smallest range an object is split into to use every connection.
const MIN_SPLIT_CHUNK: u64 = 1024 * 1024;
/// Events buffered between request tasks and the driver.
const EVENT_QUEUE: usize = 64;

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
    pub transport: Arc<Transport>,
    pub config: &'a FetchConfig,
    pub url: Url,
    pub output: Output,
    pub progress: Option<&'a ProgressFn>,
    pub deadline: Instant,
}

/// A finished download.
#[derive(Debug)]
pub(crate) struct Downloaded {
    pub data: Bytes,
    pub content_encoding: Option<String>,
    pub sha256: Option<String>,
    pub stats: FetchStats,
}

/// Runs a download to completion, within the job's deadline.
pub(crate) async fn download(job: Job<'_>) -> Result<Downloaded> {
    let started = Instant::now();
    let redacted = spillway_storage::redact_url(job.url.as_str());
    let deadline = job.deadline;
    let work = async {
        let probe = probe(&job, started).await?;
        Driver::new(&job, probe, started)?.run().await
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

/// What the probe learned.
struct Probe {
    /// The URL after redirects; data requests go there directly.
    url: Url,
    size: Option<u64>,
    ranges: bool,
    etag: Option<String>,
    /// Normalized `Content-Encoding`, when `encoding_known`.
    encoding: Option<String>,
    encoding_known: bool,
    /// A 200 answer to the range probe: the whole object, used as the first data response.
    leftover: Option<reqwest::Response>,
    ttfb: Option<Duration>,
    requests: u32,
    retries: u32,
}

impl Probe {
    fn fallback(url: Url, requests: u32, retries: u32) -> Probe {
        Probe {
            url,
            size: None,
            ranges: false,
            etag: None,
            encoding: None,
            encoding_known: false,
            leftover: None,
            ttfb: None,
            requests,
            retries,
        }
    }
}

fn stalled(url: &str, what: &str, after: Duration) -> Error {
    Error::Fetch {
        kind: FetchFailure::Stalled,
        url: url.to_string(),
        detail: format!("{what}: no byte for {} ms", after.as_millis()),
    }
}

/// Learns size, range support, encoding and ETag without downloading the body: HEAD for plain
/// URLs, `Range: bytes=0-0` for presigned ones (signed for GET only). Retries like a chunk.
async fn probe(job: &Job<'_>, started: Instant) -> Result<Probe> {
    let cfg = job.config;
    let redacted = spillway_storage::redact_url(job.url.as_str());
    let presigned = is_presigned(&job.url);
    let mut headers = base_headers();
    let method = if presigned {
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        Method::GET
    } else {
        Method::HEAD
    };
    let mut requests = 0u32;
    let mut failures = 0u32;
    loop {
        requests += 1;
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            cfg.stall_timeout,
            send_following(&job.transport, method.clone(), &job.url, &headers),
        )
        .await
        .unwrap_or_else(|_| Err(stalled(&redacted, "probe", cfg.stall_timeout)));
        let error = match attempt {
            Ok((mut resp, final_url)) => {
                let ttfb = Some(sent.elapsed());
                let head = Head::of(&resp);
                tracing::debug!(
                    status = head.status,
                    presigned,
                    size = ?head.content_length,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "fetch probe answered"
                );
                let mut probe = Probe {
                    url: final_url.clone(),
                    size: None,
                    ranges: false,
                    etag: head.etag.clone(),
                    encoding: head.content_encoding.clone(),
                    encoding_known: true,
                    leftover: None,
                    ttfb,
                    requests,
                    retries: failures,
                };
                match head.status {
                    206 if presigned => {
                        match head.content_range {
                            Some(ContentRange::Bytes {
                                first: 0,
                                last: 0,
                                total: Some(total),
                            }) => {
                                probe.size = Some(total);
                                probe.ranges = true;
                            }
                            // A range answer we cannot use: fetch with a plain GET.
                            _ => probe.encoding_known = false,
                        }
                        // Read the one byte so the connection goes back to the pool; a
                        // longer body is abandoned with its connection.
                        let _ = tokio::time::timeout(cfg.stall_timeout, async {
                            let mut seen = 0usize;
                            while let Ok(Some(b)) = resp.chunk().await {
                                seen += b.len();
                                if seen > 1 {
                                    break;
                                }
                            }
                        })
                        .await;
                        return Ok(probe);
                    }
                    416 if presigned => {
                        if let Some(ContentRange::Unsatisfied { total: 0 }) = head.content_range {
                            probe.size = Some(0);
                            probe.ranges = true;
                            return Ok(probe);
                        }
                        return Ok(Probe::fallback(final_url, requests, failures));
                    }
                    200 if presigned => {
                        // The store ignored the range: this response is the whole object.
                        probe.size = head.content_length;
                        probe.leftover = Some(resp);
                        return Ok(probe);
                    }
                    s if (200..300).contains(&s) && !presigned => {
                        probe.size = head.content_length;
                        probe.ranges = head.accept_ranges;
                        return Ok(probe);
                    }
                    // Method- or header-bound signatures, stores without HEAD: a plain GET
                    // still works.
                    403 | 405 | 501 => return Ok(Probe::fallback(final_url, requests, failures)),
                    s if retryable_status(s) => Error::HttpStatus {
                        status: s,
                        url: redacted.clone(),
                    },
                    s => {
                        return Err(Error::HttpStatus {
                            status: s,
                            url: redacted.clone(),
                        })
                    }
                }
            }
            Err(e) => e,
        };
        if !retryable(&error) {
            return Err(error);
        }
        failures += 1;
        if failures > cfg.max_chunk_retries {
            return Err(error);
        }
        let delay = backoff(failures, cfg.retry_base_delay, cfg.retry_max_delay);
        tracing::debug!(error = %error, delay_ms = delay.as_millis() as u64, "fetch probe failed; retrying");
        metrics::counter!("spillway_fetch_retries_total").increment(1);
        tokio::time::sleep(delay).await;
    }
}

/// What a request task reports.
enum Event {
    Head(u64, Head),
    Data(u64, Bytes),
    End(u64),
    Failed(u64, Error),
}

/// One HTTP request: sends (or takes over an already received response), then forwards the
/// head and body pieces. Aborting the task drops the response and with it the connection.
async fn run_request(
    transport: Arc<Transport>,
    url: Url,
    headers: HeaderMap,
    id: u64,
    tx: mpsc::Sender<Event>,
    leftover: Option<reqwest::Response>,
) {
    let mut resp = match leftover {
        Some(r) => r,
        None => match send_following(&transport, Method::GET, &url, &headers).await {
            Ok((r, _)) => r,
            Err(e) => {
                let _ = tx.send(Event::Failed(id, e)).await;
                return;
            }
        },
    };
    let head = Head::of(&resp);
    let success = (200..300).contains(&head.status);
    if tx.send(Event::Head(id, head)).await.is_err() || !success {
        return;
    }
    loop {
        let event = match resp.chunk().await {
            Ok(Some(b)) => Event::Data(id, b),
            Ok(None) => Event::End(id),
            Err(e) => Event::Failed(id, classify_reqwest(e, &url)),
        };
        let last = !matches!(event, Event::Data(..));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// One in-flight request, as the driver sees it.
struct Req {
    chunk: usize,
    hedge: bool,
    sent: Instant,
    /// First byte asked for.
    start: u64,
    /// Last byte asked for (inclusive); `None`: to the end.
    range_last: Option<u64>,
    /// A `Range` header was sent.
    ranged: bool,
    first_byte: Option<Instant>,
    last_progress: Instant,
    /// Object offset of the next byte this response delivers.
    pos: u64,
    /// Offset just past the last byte the response announced.
    expected_end: Option<u64>,
    /// Body bytes received.
    bytes: u64,
    abort: AbortHandle,
}

/// A byte range fetched by one request at a time (plus hedges and retries).
struct Chunk {
    /// Exclusive; `None` while the object's size is unknown.
    end: Option<u64>,
    /// `[start, filled)` is in the buffer.
    filled: u64,
    live: Vec<u64>,
    failures: u32,
    hedges: u32,
    not_before: Option<Instant>,
    done: bool,
}

enum PieceBuf {
    Unallocated,
    Ready(BytesMut),
    Sent,
}

/// The object's buffer, in pieces of `piece` bytes.
struct Pieces {
    size: Option<u64>,
    piece: u64,
    bufs: Vec<PieceBuf>,
    next_flush: usize,
}

impl Pieces {
    /// One allocation split into views (joined for free at the end) when `single`, else one
    /// allocation per piece, made when the piece is first written (and freed once the
    /// decoder has consumed it).
    fn new(size: Option<u64>, piece: u64, single: bool) -> Pieces {
        let mut bufs = Vec::new();
        if let Some(size) = size {
            let count = size.div_ceil(piece) as usize;
            if single {
                let mut whole = BytesMut::zeroed(size as usize);
                for _ in 0..count {
                    let n = (piece as usize).min(whole.len());
                    bufs.push(PieceBuf::Ready(whole.split_to(n)));
                }
            } else {
                bufs.resize_with(count, || PieceBuf::Unallocated);
            }
        }
        Pieces {
            size,
            piece,
            bufs,
            next_flush: 0,
        }
    }

    fn piece_len(&self, i: usize) -> u64 {
        let start = i as u64 * self.piece;
        match self.size {
            Some(s) => self.piece.min(s - start),
            None => self.piece,
        }
    }

    /// Writes `data` at object offset `pos`. Writes are contiguous per chunk, so a piece of
    /// an object of unknown size only ever grows at its end.
    fn write(&mut self, mut pos: u64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let i = (pos / self.piece) as usize;
            let off = (pos % self.piece) as usize;
            let room = self.piece_len(i) as usize - off;
            let n = room.min(data.len());
            if i >= self.bufs.len() {
                if self.size.is_some() || i != self.bufs.len() {
                    return Err(Error::Internal(format!("write past the buffer at {pos}")));
                }
                self.bufs.push(PieceBuf::Unallocated);
            }
            if matches!(self.bufs[i], PieceBuf::Unallocated) {
                let len = self.piece_len(i) as usize;
                self.bufs[i] = PieceBuf::Ready(if self.size.is_some() {
                    BytesMut::zeroed(len)
                } else {
                    BytesMut::with_capacity(len)
                });
            }
            let PieceBuf::Ready(buf) = &mut self.bufs[i] else {
                return Err(Error::Internal(format!(
                    "write to a flushed piece at {pos}"
                )));
            };
            if self.size.is_some() {
                buf[off..off + n].copy_from_slice(&data[..n]);
            } else if buf.len() == off {
                buf.extend_from_slice(&data[..n]);
            } else {
                return Err(Error::Internal(format!("non-contiguous write at {pos}")));
            }
            pos += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

/// The active sink: its input and its thread.
struct SinkHandle {
    tx: Option<std::sync::mpsc::Sender<BytesMut>>,
    handle: JoinHandle<Result<SinkOutput>>,
}

struct Driver<'a> {
    cfg: &'a FetchConfig,
    /// The range size used for this object (see `Driver::new`).
    chunk_size: u64,
    transport: Arc<Transport>,
    output: Output,
    progress: Option<&'a ProgressFn>,
    started: Instant,
    /// The URL data requests go to (after the probe's redirects).
    url: Url,
    redacted: String,
    size: Option<u64>,
    ranges: bool,
    ranged_plan: bool,
    etag: Option<String>,
    if_match: Option<HeaderValue>,
    encoding: Option<String>,
    encoding_known: bool,
    leftover: Option<reqwest::Response>,
    chunks: Vec<Chunk>,
    first_open: usize,
    pieces: Option<Pieces>,
    sink: Option<SinkHandle>,
    reqs: HashMap<u64, Req>,
    next_id: u64,
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    hedging: bool,
    hedge_cap: u32,
    max_hedges_in_flight: usize,
    ttfb_samples: Vec<f64>,
    rate_samples: Vec<f64>,
    done_bytes: u64,
    first_byte_at: Option<Instant>,
    stats: FetchStats,
    /// Something changed that may let a request start.
    dirty: bool,
}

fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

impl<'a> Driver<'a> {
    fn new(job: &Job<'a>, probe: Probe, started: Instant) -> Result<Driver<'a>> {
        let cfg = job.config;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // Objects too small for `concurrency` full chunks are split into `concurrency` equal
        // ranges instead (not below 1 MiB), so a 64 MiB object still uses every connection.
        let chunk_size = match probe.size {
            Some(size) => cfg
                .chunk_size
                .min(
                    size.div_ceil(cfg.concurrency.max(1) as u64)
                        .max(MIN_SPLIT_CHUNK),
                )
                .max(1),
            None => cfg.chunk_size.max(1),
        };
        let ranged_plan = probe.ranges
            && probe
                .size
                .is_some_and(|s| s >= cfg.parallel_threshold && s > chunk_size)
            && cfg.concurrency > 1;
        let chunks: Vec<Chunk> = match (ranged_plan, probe.size) {
            (true, Some(size)) => (0..size.div_ceil(chunk_size))
                .map(|i| Chunk::new(i * chunk_size, Some(((i + 1) * chunk_size).min(size))))
                .collect(),
            (_, size) => vec![Chunk::new(0, size)],
        };
        let if_match = probe
            .etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .and_then(|e| HeaderValue::from_str(e).ok());
        let hedge_cap =
            MIN_HEDGE_BUDGET.max((cfg.hedge_budget.max(0.0) * chunks.len() as f64).ceil() as u32);
        let mut stats = FetchStats {
            chunks: chunks.len() as u32,
            requests: probe.requests,
            retries: probe.retries,
            ranged: ranged_plan,
            ..Default::default()
        };
        stats.attempts = 1;
        let mut driver = Driver {
            cfg,
            chunk_size,
            transport: job.transport.clone(),
            output: job.output,
            progress: job.progress,
            started,
            redacted: spillway_storage::redact_url(probe.url.as_str()),
            url: probe.url,
            size: probe.size,
            ranges: probe.ranges,
            ranged_plan,
            etag: probe.etag,
            if_match,
            encoding: probe.encoding,
            encoding_known: probe.encoding_known,
            leftover: probe.leftover,
            chunks,
            first_open: 0,
            pieces: None,
            sink: None,
            reqs: HashMap::new(),
            next_id: 0,
            tasks: JoinSet::new(),
            tx,
            rx,
            hedging: cfg.hedge,
            hedge_cap,
            max_hedges_in_flight: (cfg.concurrency / 2).max(2),
            ttfb_samples: probe.ttfb.map(|d| d.as_secs_f64()).into_iter().collect(),
            rate_samples: Vec::new(),
            done_bytes: 0,
            first_byte_at: None,
            stats,
            dirty: true,
        };
        if let Some(size) = driver.size {
            if size > cfg.max_fetch_bytes {
                return Err(driver.fetch_too_large(format!("object of {size} bytes")));
            }
        }
        if driver.encoding_known && driver.size.is_some() {
            driver.set_layout()?;
        }
        Ok(driver)
    }

    fn fetch_too_large(&self, what: String) -> Error {
        Error::TooLarge {
            what,
            limit_name: "max_fetch_bytes",
            limit: self.cfg.max_fetch_bytes,
        }
    }

    fn fail(&self, kind: FetchFailure, detail: String) -> Error {
        Error::Fetch {
            kind,
            url: self.redacted.clone(),
            detail,
        }
    }

    /// Size (possibly still unknown) and encoding are settled: allocate the buffer and start
    /// the sink.
    fn set_layout(&mut self) -> Result<()> {
        let mode = match self.output {
            // Raw bytes are returned whatever their encoding.
            Output::Raw => SinkMode::Raw,
            Output::Decoded { hash } => SinkMode::Decode {
                // An encoding we cannot decode fails here, before any data is requested.
                encoding: Encoding::parse(self.encoding.as_deref())?,
                max_decoded: self.cfg.max_decompressed_bytes,
                hash,
            },
        };
        if let (
            Some(size),
            SinkMode::Decode {
                encoding: Encoding::Identity,
                max_decoded,
                ..
            },
        ) = (self.size, mode)
        {
            if size > max_decoded {
                return Err(Error::TooLarge {
                    what: format!("object of {size} bytes"),
                    limit_name: "max_decompressed_bytes",
                    limit: max_decoded,
                });
            }
        }
        let single = matches!(
            mode,
            SinkMode::Raw
                | SinkMode::Decode {
                    encoding: Encoding::Identity,
                    ..
                }
        );
        self.pieces = Some(Pieces::new(self.size, self.chunk_size, single));
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = tokio::task::spawn_blocking(move || sink::run(mode, rx));
        self.sink = Some(SinkHandle {
            tx: Some(tx),
            handle,
        });
        Ok(())
    }

    fn all_done(&self) -> bool {
        self.first_open >= self.chunks.len()
    }

    async fn run(mut self) -> Result<Downloaded> {
        if self.size == Some(0) {
            for c in &mut self.chunks {
                c.done = true;
            }
            self.first_open = self.chunks.len();
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_check = Instant::now();
        while !self.all_done() {
            if self.dirty {
                self.dirty = false;
                self.launch_ready(Instant::now());
            }
            let sink_running = self.sink.is_some();
            tokio::select! {
                biased;
                res = async {
                    match self.sink.as_mut() {
                        Some(s) => (&mut s.handle).await,
                        None => std::future::pending().await,
                    }
                }, if sink_running => {
                    // The sink only finishes early when it failed (cap, invalid data).
                    self.sink = None;
                    return Err(match res {
                        Ok(Err(e)) => e,
                        Ok(Ok(_)) => Error::Internal("the decoder finished before the download".into()),
                        Err(e) => Error::Internal(format!("decode task failed: {e}")),
                    });
                }
                event = self.rx.recv() => {
                    if let Some(event) = event {
                        self.on_event(event)?;
                    }
                    let now = Instant::now();
                    if now.duration_since(last_check) >= TICK {
                        last_check = now;
                        self.on_tick(now)?;
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    last_check = now;
                    self.on_tick(now)?;
                }
            }
        }
        self.finish().await
    }

    async fn finish(mut self) -> Result<Downloaded> {
        if self.pieces.is_none() {
            // An empty object, or one whose layout was never needed.
            self.set_layout()?;
        }
        self.flush(true);
        let Some(mut sink) = self.sink.take() else {
            return Err(Error::Internal("no sink".into()));
        };
        drop(sink.tx.take());
        let out = sink
            .handle
            .await
            .map_err(|e| Error::Internal(format!("decode task failed: {e}")))??;
        let encoded = self.size.unwrap_or(self.done_bytes);
        let mut stats = self.stats;
        stats.encoded_bytes = encoded;
        stats.decoded_bytes = out.data.len() as u64;
        stats.elapsed = self.started.elapsed();
        stats.time_to_first_byte = self
            .first_byte_at
            .map(|t| t.duration_since(self.started))
            .unwrap_or_default();
        Ok(Downloaded {
            data: out.data,
            content_encoding: self.encoding,
            sha256: out.sha256,
            stats,
        })
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Head(id, head) => self.on_head(id, head),
            Event::Data(id, data) => self.on_data(id, data),
            Event::End(id) => self.on_end(id),
            Event::Failed(id, e) => self.on_failure(id, e),
        }
    }

    fn launch_ready(&mut self, now: Instant) {
        let mut active = self.chunks[self.first_open..]
            .iter()
            .filter(|c| !c.done && !c.live.is_empty())
            .count();
        let mut ci = self.first_open;
        while ci < self.chunks.len() && active < self.cfg.concurrency.max(1) {
            let c = &self.chunks[ci];
            let waiting = c.not_before.is_some_and(|t| t > now);
            if !c.done && c.live.is_empty() && !waiting {
                self.start_request(ci, false);
                active += 1;
            }
            ci += 1;
        }
    }

    fn start_request(&mut self, ci: usize, hedge: bool) {
        let now = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        let c = &self.chunks[ci];
        let start = c.filled;
        let range_last = c.end.map(|e| e - 1);
        let whole = start == 0 && (c.end.is_none() || c.end == self.size);
        let ranged = self.ranges && !whole && range_last.is_some();
        let mut headers = base_headers();
        if ranged {
            let value = format!("bytes={}-{}", start, range_last.unwrap_or_default());
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::RANGE, v);
            }
        }
        if let Some(etag) = &self.if_match {
            // The store refuses (412) instead of serving bytes of a newer version.
            headers.insert(header::IF_MATCH, etag.clone());
        }
        let leftover = if ci == 0 && !hedge {
            self.leftover.take()
        } else {
            None
        };
        let abort = self.tasks.spawn(run_request(
            self.transport.clone(),
            self.url.clone(),
            headers,
            id,
            self.tx.clone(),
            leftover,
        ));
        self.reqs.insert(
            id,
            Req {
                chunk: ci,
                hedge,
                sent: now,
                start,
                range_last: if ranged { range_last } else { None },
                ranged,
                first_byte: None,
                last_progress: now,
                pos: start,
                expected_end: None,
                bytes: 0,
                abort,
            },
        );
        let c = &mut self.chunks[ci];
        c.live.push(id);
        c.not_before = None;
        self.stats.requests += 1;
        if hedge {
            c.hedges += 1;
            self.stats.hedges_launched += 1;
            metrics::counter!("spillway_fetch_hedges_launched_total").increment(1);
            tracing::debug!(
                chunk = ci,
                from = start,
                "straggler: hedge request launched"
            );
        }
    }

    /// Checks a response head against what was asked and what the probe saw; returns the
    /// offset of its first body byte and the offset past its last.
    fn check_head(&mut self, id: u64, head: &Head) -> Result<(u64, Option<u64>)> {
        let (start, range_last, ranged) = match self.reqs.get(&id) {
            Some(r) => (r.start, r.range_last, r.ranged),
            None => return Err(Error::Internal("unknown request".into())),
        };
        let raw = head.content_range_raw.as_deref().unwrap_or("none");
        match head.status {
            206 => {
                if !ranged {
                    return Err(self.fail(
                        FetchFailure::BadResponse,
                        "206 to a request without a range".into(),
                    ));
                }
                let Some(ContentRange::Bytes { first, last, total }) = head.content_range else {
                    return Err(self.fail(
                        FetchFailure::BadResponse,
                        format!("206 with content-range {raw}"),
                    ));
                };
                if first != start || Some(last) != range_last {
                    return Err(self.fail(
                        FetchFailure::BadResponse,
                        format!(
                            "content-range {raw} does not match the requested bytes={start}-{}",
                            range_last.unwrap_or_default()
                        ),
                    ));
                }
                if let (Some(total), Some(size)) = (total, self.size) {
                    if total != size {
                        return Err(self.fail(
                            FetchFailure::ObjectChanged,
                            format!("object size changed from {size} to {total} bytes"),
                        ));
                    }
                }
                if let Some(len) = head.content_length {
                    if len != last - first + 1 {
                        return Err(self.fail(
                            FetchFailure::BadResponse,
                            format!("content-length {len} does not match content-range {raw}"),
                        ));
                    }
                }
                self.check_identity(head)?;
                Ok((first, Some(last + 1)))
            }
            200 => {
                self.check_identity(head)?;
                match self.size {
                    Some(size) => {
                        if let Some(len) = head.content_length {
                            if len != size {
                                return Err(self.fail(
                                    FetchFailure::ObjectChanged,
                                    format!("object size changed from {size} to {len} bytes"),
                                ));
                            }
                        }
                    }
                    None => {
                        if let Some(len) = head.content_length {
                            if len > self.cfg.max_fetch_bytes {
                                return Err(self.fetch_too_large(format!("object of {len} bytes")));
                            }
                            self.size = Some(len);
                            for c in &mut self.chunks {
                                if c.end.is_none() {
                                    c.end = Some(len);
                                }
                            }
                        }
                    }
                }
                if self.pieces.is_none() {
                    self.set_layout()?;
                }
                if ranged {
                    // Handled by skipping to the chunk and dropping the rest: never buffered.
                    self.stats.ranges_ignored += 1;
                }
                Ok((0, head.content_length.or(self.size)))
            }
            412 => Err(self.fail(
                FetchFailure::ObjectChanged,
                "412 precondition failed: the object's etag changed".into(),
            )),
            416 => Err(self.fail(
                FetchFailure::ObjectChanged,
                format!("416 range not satisfiable (content-range {raw}): the object shrank"),
            )),
            status => Err(Error::HttpStatus {
                status,
                url: self.redacted.clone(),
            }),
        }
    }

    /// ETag and encoding must be those of the object the fetch started on.
    fn check_identity(&mut self, head: &Head) -> Result<()> {
        match (&self.etag, &head.etag) {
            (Some(want), Some(got)) if want != got => {
                return Err(self.fail(
                    FetchFailure::ObjectChanged,
                    format!("etag changed from {want} to {got}"),
                ))
            }
            (None, Some(got)) if self.pieces.is_none() => self.etag = Some(got.clone()),
            _ => {}
        }
        if self.encoding_known {
            if self.encoding != head.content_encoding {
                return Err(self.fail(
                    FetchFailure::ObjectChanged,
                    format!(
                        "content-encoding changed from {:?} to {:?}",
                        self.encoding, head.content_encoding
                    ),
                ));
            }
        } else {
            // The probe was refused: the delivering response is authoritative.
            self.encoding = head.content_encoding.clone();
            self.encoding_known = true;
        }
        Ok(())
    }

    fn on_head(&mut self, id: u64, head: Head) -> Result<()> {
        let now = Instant::now();
        let Some(r) = self.reqs.get_mut(&id) else {
            return Ok(());
        };
        r.first_byte = Some(now);
        r.last_progress = now;
        self.ttfb_samples
            .push(now.duration_since(r.sent).as_secs_f64());
        self.first_byte_at.get_or_insert(now);
        match self.check_head(id, &head) {
            Ok((pos, end)) => {
                if let Some(r) = self.reqs.get_mut(&id) {
                    r.pos = pos;
                    r.expected_end = end;
                }
                Ok(())
            }
            Err(e) => self.on_failure(id, e),
        }
    }

    fn on_data(&mut self, id: u64, data: Bytes) -> Result<()> {
        let Some(r) = self.reqs.get_mut(&id) else {
            return Ok(());
        };
        let len = data.len() as u64;
        let p = r.pos;
        r.pos += len;
        r.bytes += len;
        r.last_progress = Instant::now();
        let (pos, expected_end, ci) = (r.pos, r.expected_end, r.chunk);
        metrics::counter!("spillway_fetch_bytes_total").increment(len);
        self.stats.bytes_received += len;
        if expected_end.is_some_and(|end| pos > end) {
            let e = self.fail(
                FetchFailure::BadResponse,
                "response carries more bytes than it announced".into(),
            );
            return self.on_failure(id, e);
        }
        if pos > self.cfg.max_fetch_bytes {
            return Err(self.fetch_too_large(format!("object of more than {} bytes", pos - 1)));
        }
        let c = &self.chunks[ci];
        if p > c.filled {
            // Cannot happen with honest offsets: a response starts at or before the filled
            // mark. Never write out of order.
            let e = self.fail(
                FetchFailure::BadResponse,
                format!("response bytes start at {p}, beyond {}", c.filled),
            );
            return self.on_failure(id, e);
        }
        let chunk_end = c.end.unwrap_or(u64::MAX);
        let lo = p.max(c.filled);
        let hi = pos.min(chunk_end);
        if hi > lo {
            let Some(pieces) = self.pieces.as_mut() else {
                return Err(Error::Internal("data before the buffer exists".into()));
            };
            pieces.write(lo, &data[(lo - p) as usize..(hi - p) as usize])?;
            self.chunks[ci].filled = hi;
            self.done_bytes += hi - lo;
            if let Some(progress) = self.progress {
                progress(self.done_bytes, self.size);
            }
        }
        let c = &self.chunks[ci];
        if c.end == Some(c.filled) {
            self.complete_chunk(ci, Some(id));
        } else {
            self.flush(false);
        }
        Ok(())
    }

    fn on_end(&mut self, id: u64) -> Result<()> {
        let Some(r) = self.reqs.get(&id) else {
            return Ok(());
        };
        let (pos, expected_end, ci) = (r.pos, r.expected_end, r.chunk);
        match expected_end {
            Some(end) if pos < end => {
                let e = self.fail(
                    FetchFailure::ShortBody,
                    format!("response ended at byte {pos}, {end} announced"),
                );
                self.on_failure(id, e)
            }
            Some(_) => {
                // Fully delivered; the chunk completed on its last piece.
                self.forget(id);
                Ok(())
            }
            None => {
                // A body of unannounced length ended: that is the object's end.
                let c = &self.chunks[ci];
                if pos < c.filled {
                    return Err(self.fail(
                        FetchFailure::ObjectChanged,
                        format!("the object is shorter ({pos} bytes) than an earlier response"),
                    ));
                }
                let size = c.filled;
                self.size = Some(size);
                if let Some(p) = self.pieces.as_mut() {
                    p.size = Some(size);
                }
                self.chunks[ci].end = Some(size);
                self.complete_chunk(ci, Some(id));
                Ok(())
            }
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(r) = self.reqs.remove(&id) {
            self.chunks[r.chunk].live.retain(|x| *x != id);
        }
    }

    fn on_failure(&mut self, id: u64, error: Error) -> Result<()> {
        let Some(r) = self.reqs.remove(&id) else {
            return Ok(());
        };
        r.abort.abort();
        self.dirty = true;
        let ci = r.chunk;
        let c = &mut self.chunks[ci];
        c.live.retain(|x| *x != id);
        if c.done {
            return Ok(());
        }
        if !retryable(&error) {
            return Err(error);
        }
        if !c.live.is_empty() {
            tracing::debug!(chunk = ci, hedge = r.hedge, error = %error, "request failed; another one for the chunk is still running");
            return Ok(());
        }
        c.failures += 1;
        if c.failures > self.cfg.max_chunk_retries {
            tracing::debug!(chunk = ci, error = %error, "chunk out of retries");
            return Err(error);
        }
        let delay = backoff(
            c.failures,
            self.cfg.retry_base_delay,
            self.cfg.retry_max_delay,
        );
        c.not_before = Some(Instant::now() + delay);
        self.stats.retries += 1;
        metrics::counter!("spillway_fetch_retries_total").increment(1);
        tracing::debug!(
            chunk = ci,
            failures = c.failures,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "chunk request failed; retrying"
        );
        Ok(())
    }

    fn complete_chunk(&mut self, ci: usize, winner: Option<u64>) {
        let now = Instant::now();
        let c = &mut self.chunks[ci];
        c.done = true;
        let live = std::mem::take(&mut c.live);
        for id in live {
            let Some(r) = self.reqs.remove(&id) else {
                continue;
            };
            if Some(id) == winner {
                if r.hedge {
                    self.stats.hedges_won += 1;
                    metrics::counter!("spillway_fetch_hedges_won_total").increment(1);
                }
                if let Some(fb) = r.first_byte {
                    let secs = now.duration_since(fb).as_secs_f64();
                    let min_sample = MIN_RATE_SAMPLE_BYTES.min(self.chunk_size / 2);
                    if r.bytes >= min_sample && secs > 0.0 {
                        self.rate_samples.push(r.bytes as f64 / secs);
                    }
                }
                if r.expected_end != Some(r.pos) {
                    // A whole-object answer to a range: the rest is not needed.
                    r.abort.abort();
                }
                // Otherwise the task reads the end of the body, which returns the
                // connection to the pool.
            } else {
                // The loser: cancelled at once (its connection is closed).
                r.abort.abort();
            }
        }
        while self.first_open < self.chunks.len() && self.chunks[self.first_open].done {
            self.first_open += 1;
        }
        self.dirty = true;
        self.flush(false);
    }

    /// Hands complete pieces to the sink, in order.
    fn flush(&mut self, all: bool) {
        let (Some(pieces), Some(sink)) = (self.pieces.as_mut(), self.sink.as_mut()) else {
            return;
        };
        let Some(tx) = sink.tx.as_ref() else {
            return;
        };
        while pieces.next_flush < pieces.bufs.len() {
            let i = pieces.next_flush;
            let start = i as u64 * pieces.piece;
            let end = start + pieces.piece_len(i);
            let ci = if self.ranged_plan { i } else { 0 };
            let complete = all
                || self
                    .chunks
                    .get(ci)
                    .is_some_and(|c| c.done || (pieces.size.is_some() && c.filled >= end));
            if !complete {
                break;
            }
            let buf = std::mem::replace(&mut pieces.bufs[i], PieceBuf::Sent);
            let piece = match buf {
                PieceBuf::Ready(b) => b,
                PieceBuf::Unallocated => BytesMut::zeroed(pieces.piece_len(i) as usize),
                PieceBuf::Sent => BytesMut::new(),
            };
            // A send error means the sink already failed; its result reports why.
            let _ = tx.send(piece);
            pieces.next_flush += 1;
        }
    }

    fn on_tick(&mut self, now: Instant) -> Result<()> {
        while self.tasks.try_join_next().is_some() {}
        let stall = self.cfg.stall_timeout;
        let stuck: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| now.duration_since(r.last_progress) >= stall)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let e = stalled(&self.redacted, "request", stall);
            self.on_failure(id, e)?;
        }
        if self
            .chunks
            .iter()
            .skip(self.first_open)
            .any(|c| !c.done && c.live.is_empty())
        {
            // A retry may be due.
            self.dirty = true;
        }
        if self.hedging {
            self.maybe_hedge(now);
        }
        Ok(())
    }

    /// The throughput a fresh request can expect: the median of completed responses, or,
    /// before any completes, the median of the responses receiving now (at least three, so
    /// one straggler among them stands out).
    fn reference_rate(&self, now: Instant) -> Option<f64> {
        if let Some(m) = median(&self.rate_samples) {
            return Some(m);
        }
        let window = self.cfg.hedge_min_delay.as_secs_f64();
        let current: Vec<f64> = self
            .reqs
            .values()
            .filter_map(|r| {
                let secs = now.duration_since(r.first_byte?).as_secs_f64();
                (secs >= window && secs > 0.0).then(|| r.bytes as f64 / secs)
            })
            .collect();
        if current.len() >= 3 {
            median(&current)
        } else {
            None
        }
    }

    fn maybe_hedge(&mut self, now: Instant) {
        let cfg = self.cfg;
        if self.stats.hedges_launched >= self.hedge_cap {
            return;
        }
        let in_flight = self.reqs.values().filter(|r| r.hedge).count();
        if in_flight >= self.max_hedges_in_flight {
            return;
        }
        let ttfb = median(&self.ttfb_samples).unwrap_or(0.0);
        let ttfb_deadline = cfg
            .hedge_min_delay
            .as_secs_f64()
            .max(ttfb * cfg.hedge_ttfb_factor);
        let reference = self.reference_rate(now);
        let mut room = (self.hedge_cap - self.stats.hedges_launched) as usize;
        room = room.min(self.max_hedges_in_flight - in_flight);
        let mut late = Vec::new();
        for (ci, c) in self.chunks.iter().enumerate().skip(self.first_open) {
            if late.len() >= room {
                break;
            }
            if c.done || c.live.is_empty() || c.hedges >= MAX_HEDGES_PER_CHUNK {
                continue;
            }
            let Some(newest) = c
                .live
                .iter()
                .filter_map(|id| self.reqs.get(id))
                .max_by_key(|r| r.sent)
            else {
                continue;
            };
            let reason = match newest.first_byte {
                // Stuck before the first byte.
                None => (now.duration_since(newest.sent).as_secs_f64() >= ttfb_deadline)
                    .then_some("no first byte"),
                // Receiving, but so slowly that a fresh request would finish well first.
                Some(fb) => {
                    let secs = now.duration_since(fb).as_secs_f64();
                    match (reference, c.end) {
                        (Some(rate), Some(end)) if secs >= cfg.hedge_min_delay.as_secs_f64() => {
                            let remaining = end.saturating_sub(c.filled) as f64;
                            let own = (newest.bytes as f64 / secs).max(1.0);
                            let own_eta = remaining / own;
                            let hedge_eta = ttfb + remaining / rate.max(1.0);
                            (own_eta > cfg.hedge_slow_factor * hedge_eta).then_some("slow")
                        }
                        _ => None,
                    }
                }
            };
            if let Some(reason) = reason {
                tracing::debug!(
                    chunk = ci,
                    reason,
                    waited_ms = now.duration_since(newest.sent).as_millis() as u64,
                    received = newest.bytes,
                    ttfb_deadline_ms = (ttfb_deadline * 1000.0) as u64,
                    "straggler"
                );
                late.push(ci);
            }
        }
        for ci in late {
            self.start_request(ci, true);
        }
    }
}

impl Chunk {
    fn new(start: u64, end: Option<u64>) -> Chunk {
        Chunk {
            end,
            filled: start,
            live: Vec::new(),
            failures: 0,
            hedges: 0,
            not_before: None,
            done: false,
        }
    }
}
