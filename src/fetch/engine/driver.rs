//! The driver: one event loop that starts requests, writes what they deliver, retries,
//! hedges, and feeds the sink.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderValue;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use url::Url;

use super::super::http::{backoff, retryable, Head, Transport};
use super::super::sink::{self, Encoding, SinkMode, SinkOutput};
use super::super::{FetchConfig, FetchStats, ProgressFn};
use super::assembly::{Chunk, Landing, Pieces, Plan};
use super::hedge::{self, HedgeBudget, Progress, Thresholds, MAX_HEDGES_PER_CHUNK};
use super::probe::Probe;
use super::request::{run_request, Event, Identity, Rejected, Req};
use super::{stalled, Downloaded, Job, Output};
use crate::error::{Error, FetchFailure, Result};
use tracing::Instrument;

/// How often the timer looks for stalls and stragglers.
const TICK: Duration = Duration::from_millis(10);
/// Events buffered between request tasks and the driver.
const EVENT_QUEUE: usize = 64;

/// The active sink: its input and its thread.
struct SinkHandle {
    tx: Option<std::sync::mpsc::Sender<BytesMut>>,
    handle: JoinHandle<Result<SinkOutput>>,
}

/// One download in progress: the only owner of the buffer and of the request bookkeeping.
pub(super) struct Driver<'a> {
    cfg: &'a FetchConfig,
    /// The range size used for this object (see [`Plan::new`]).
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
    identity: Identity,
    if_match: Option<HeaderValue>,
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
    hedge_budget: HedgeBudget,
    ttfb_samples: Vec<f64>,
    rate_samples: Vec<f64>,
    done_bytes: u64,
    first_byte_at: Option<Instant>,
    stats: FetchStats,
    /// Something changed that may let a request start.
    dirty: bool,
}

impl<'a> Driver<'a> {
    pub(super) fn new(job: &Job<'a>, probe: Probe, started: Instant) -> Result<Driver<'a>> {
        let cfg = job.config;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let Plan {
            chunk_size,
            ranged: ranged_plan,
            chunks,
        } = Plan::new(
            probe.size,
            probe.ranges,
            cfg.chunk_size,
            cfg.concurrency,
            cfg.parallel_threshold,
        );
        let if_match = probe
            .etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .and_then(|e| HeaderValue::from_str(e).ok());
        let hedge_budget = HedgeBudget::new(cfg.hedge_budget, chunks.len(), cfg.concurrency);
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
            identity: Identity {
                etag: probe.etag,
                encoding: probe.encoding,
                encoding_known: probe.encoding_known,
            },
            if_match,
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
            hedge_budget,
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
        if driver.identity.encoding_known && driver.size.is_some() {
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
                encoding: Encoding::parse(self.identity.encoding.as_deref())?,
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

    /// Runs the event loop until every chunk is complete, then waits for the sink.
    pub(super) async fn run(mut self) -> Result<Downloaded> {
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
            content_encoding: self.identity.encoding,
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
        let ask = self.chunks[ci].ask(self.size, self.ranges);
        let headers = ask.headers(self.if_match.as_ref());
        let leftover = if ci == 0 && !hedge {
            self.leftover.take()
        } else {
            None
        };
        let span = tracing::debug_span!(
            "spillway.fetch.range",
            otel.name = "vgi_rpc.external/range",
            otel.kind = "client",
            chunk = crate::telemetry::int(ci),
            hedge,
            range.start = crate::telemetry::int(ask.start),
            range.end = ask.last.map(crate::telemetry::int),
            http.response.status_code = tracing::field::Empty,
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let abort = self.tasks.spawn(
            run_request(
                self.transport.clone(),
                self.url.clone(),
                headers,
                id,
                self.tx.clone(),
                leftover,
            )
            .instrument(span.clone()),
        );
        self.reqs.insert(
            id,
            Req {
                chunk: ci,
                hedge,
                sent: now,
                ask,
                first_byte: None,
                last_progress: now,
                pos: ask.start,
                expected_end: None,
                bytes: 0,
                abort,
                span,
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
                chunk = crate::telemetry::int(ci),
                from = ask.start,
                "straggler: hedge request launched"
            );
        }
    }

    /// Checks a response head against what was asked and what the probe saw; returns the
    /// offset of its first body byte and the offset past its last.
    fn check_head(&mut self, id: u64, head: &Head) -> Result<(u64, Option<u64>)> {
        let ask = match self.reqs.get(&id) {
            Some(r) => r.ask,
            None => return Err(Error::Internal("unknown request".into())),
        };
        let raw = head.content_range_raw.as_deref().unwrap_or("none");
        match head.status {
            206 => {
                let (first, end) = ask
                    .check_partial(head, self.size)
                    .map_err(|Rejected { kind, detail }| self.fail(kind, detail))?;
                self.check_identity(head)?;
                Ok((first, Some(end)))
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
                if ask.ranged() {
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
        let adopt_etag = self.pieces.is_none();
        self.identity
            .check(head, adopt_etag)
            .map_err(|detail| self.fail(FetchFailure::ObjectChanged, detail))
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
        match self.chunks[ci].landing(p, pos) {
            Landing::Beyond => {
                // Cannot happen with honest offsets: a response starts at or before the
                // filled mark. Never write out of order.
                let e = self.fail(
                    FetchFailure::BadResponse,
                    format!(
                        "response bytes start at {p}, beyond {}",
                        self.chunks[ci].filled
                    ),
                );
                return self.on_failure(id, e);
            }
            Landing::Known => {}
            Landing::New { lo, hi } => {
                self.write(ci, &data[(lo - p) as usize..(hi - p) as usize], lo)?
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

    /// Writes new bytes of chunk `ci` at offset `lo`.
    fn write(&mut self, ci: usize, data: &[u8], lo: u64) -> Result<()> {
        let hi = lo + data.len() as u64;
        {
            let Some(pieces) = self.pieces.as_mut() else {
                return Err(Error::Internal("data before the buffer exists".into()));
            };
            pieces.write(lo, data)?;
            self.chunks[ci].filled = hi;
            self.done_bytes += hi - lo;
            if let Some(progress) = self.progress {
                progress(self.done_bytes, self.size);
            }
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
                    p.set_size(size);
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
        r.span.record("bytes", crate::telemetry::int(r.bytes));
        r.span.record("outcome", "failed");
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
            chunk = crate::telemetry::int(ci),
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
            r.span.record("bytes", crate::telemetry::int(r.bytes));
            r.span.record(
                "outcome",
                if Some(id) == winner {
                    "won"
                } else {
                    "cancelled"
                },
            );
            if Some(id) == winner {
                if r.hedge {
                    self.stats.hedges_won += 1;
                    metrics::counter!("spillway_fetch_hedges_won_total").increment(1);
                }
                if let Some(fb) = r.first_byte {
                    let secs = now.duration_since(fb).as_secs_f64();
                    if let Some(rate) = hedge::rate_sample(r.bytes, secs, self.chunk_size) {
                        self.rate_samples.push(rate);
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
        let (chunks, ranged_plan) = (&self.chunks, self.ranged_plan);
        let complete = |i: usize, end: u64, size_known: bool| {
            let ci = if ranged_plan { i } else { 0 };
            all || chunks.get(ci).is_some_and(|c| c.covers(end, size_known))
        };
        while let Some(piece) = pieces.take_next(complete) {
            // A send error means the sink already failed; its result reports why.
            let _ = tx.send(piece);
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

    /// The throughput a fresh request can expect (see [`hedge::reference_rate`]).
    fn reference_rate(&self, now: Instant) -> Option<f64> {
        let receiving = self.reqs.values().filter_map(|r| {
            let secs = now.duration_since(r.first_byte?).as_secs_f64();
            Some((secs, r.bytes))
        });
        hedge::reference_rate(
            &self.rate_samples,
            receiving,
            self.cfg.hedge_min_delay.as_secs_f64(),
        )
    }

    fn maybe_hedge(&mut self, now: Instant) {
        let in_flight = self.reqs.values().filter(|r| r.hedge).count();
        let room = self
            .hedge_budget
            .room(self.stats.hedges_launched, in_flight);
        if room == 0 {
            return;
        }
        let t = Thresholds::new(self.cfg, &self.ttfb_samples, self.reference_rate(now));
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
            let progress = Progress {
                waited: now.duration_since(newest.sent),
                receiving: newest.first_byte.map(|fb| now.duration_since(fb)),
                bytes: newest.bytes,
                remaining: c.end.map(|end| end.saturating_sub(c.filled)),
            };
            if let Some(reason) = hedge::straggler(progress, &t) {
                tracing::debug!(
                    chunk = crate::telemetry::int(ci),
                    reason = reason.as_str(),
                    waited_ms = now.duration_since(newest.sent).as_millis() as u64,
                    received = newest.bytes,
                    ttfb_deadline_ms = (t.ttfb_deadline * 1000.0) as u64,
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
