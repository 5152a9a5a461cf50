//! A store shaper for Spillway's tests and benchmarks (not a product feature).
//!
//! [`Shaper`] is an HTTP/1.1 proxy on 127.0.0.1 in front of any HTTP object store (the
//! embedded local store, LocalStack, a GCS emulator). It makes a loopback store behave like a
//! real one, and breaks it on purpose:
//!
//! - **Shaping** ([`ShaperConfig`]): per-connection bandwidth (each response body is paced),
//!   time to first byte with jitter, and stragglers: a fraction of requests stall before the
//!   first byte, a fraction deliver at a fraction of the rate.
//! - **Faults** ([`FaultRule`], [`Fault`]): chosen by a [`Match`] on the request (the probe,
//!   the n-th range GET, the n-th request for a given range start, ...), each firing a given
//!   number of times: 5xx and 503 SlowDown, connection dropped before the answer or reset in
//!   the middle of the body, truncated body, 200 instead of 206, wrong `Content-Range`,
//!   corrupted byte, stalls, slow delivery, redirects, and a hook that runs before the
//!   request is forwarded (to replace the object in the store mid-fetch).
//!
//! Presigned URLs keep working: the path and query are forwarded unchanged. For stores whose
//! signature does not cover the host (Spillway's local store), point the URL at the shaper
//! with [`Shaper::rewrite`]. For stores whose signature covers the host (S3 SigV4), presign
//! for the shaper's address and set [`ShaperConfig::preserve_host`], so the store sees the
//! host the URL was signed for.
//!
//! Every request is recorded ([`Shaper::log`]) with what was done to it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::SinkExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

/// How the shaper makes the store behave when no fault applies.
#[derive(Debug, Clone)]
pub struct ShaperConfig {
    /// The store: `scheme://host:port` (a path is ignored; request paths are forwarded).
    pub upstream: Url,
    /// Bytes per second of each response body; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Time to first byte added to every request.
    pub ttfb: Duration,
    /// The time to first byte varies uniformly within `ttfb ± ttfb_jitter`.
    pub ttfb_jitter: Duration,
    /// Probability that a request stalls for `stall` before its first byte.
    pub stall_probability: f64,
    /// How long a straggler stalls.
    pub stall: Duration,
    /// Probability that a response is delivered at `1 / slow_factor` of the bandwidth.
    pub slow_probability: f64,
    /// Slowdown of slow responses.
    pub slow_factor: f64,
    /// Forward the client's `Host` header instead of the upstream's (for stores whose
    /// signature covers the host: presign for the shaper's address).
    pub preserve_host: bool,
    /// Query string added to requests that have none (lets clients that cannot carry a
    /// presigned query, such as `object_store`'s HTTP store, read a signed store).
    pub append_query: Option<String>,
    /// Seed of the straggler draws (`None`: random).
    pub seed: Option<u64>,
}

impl ShaperConfig {
    /// No shaping at all: a plain proxy (faults still apply).
    pub fn transparent(upstream: Url) -> ShaperConfig {
        ShaperConfig {
            upstream,
            bandwidth: None,
            ttfb: Duration::ZERO,
            ttfb_jitter: Duration::ZERO,
            stall_probability: 0.0,
            stall: Duration::ZERO,
            slow_probability: 0.0,
            slow_factor: 1.0,
            preserve_host: false,
            append_query: None,
            seed: None,
        }
    }

    /// The default S3-like shaping of the fetch benchmark: 50 MiB/s per connection, 30 ms
    /// (± 10 ms) to first byte, 3 % of requests stall 2 s before the first byte, 1 % deliver
    /// at a tenth of the rate.
    pub fn s3_like(upstream: Url) -> ShaperConfig {
        ShaperConfig {
            bandwidth: Some(50 * 1024 * 1024),
            ttfb: Duration::from_millis(30),
            ttfb_jitter: Duration::from_millis(10),
            stall_probability: 0.03,
            stall: Duration::from_secs(2),
            slow_probability: 0.01,
            slow_factor: 10.0,
            ..ShaperConfig::transparent(upstream)
        }
    }
}

/// What a [`Match`] sees of a request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// 0-based index among all requests.
    pub index: u64,
    /// The method.
    pub method: Method,
    /// The parsed `Range: bytes=a-b` (`b` absent for `a-`), if any.
    pub range: Option<(u64, Option<u64>)>,
    /// For range GETs other than the `bytes=0-0` probe: 0-based index among them.
    pub range_index: Option<u64>,
    /// How many earlier requests asked for a range starting at the same byte.
    pub same_start_before: u64,
    /// The path (never the query, which may hold a signature).
    pub path: String,
}

impl RequestInfo {
    /// A HEAD, or a `Range: bytes=0-0` GET.
    pub fn is_probe(&self) -> bool {
        self.method == Method::HEAD || self.range == Some((0, Some(0)))
    }
}

type Predicate = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

/// Which requests a fault applies to.
#[derive(Clone)]
pub enum Match {
    /// Every request.
    Any,
    /// Probes: HEAD, or a `Range: bytes=0-0` GET.
    Probe,
    /// GETs with a range, the probe excluded.
    RangeGet,
    /// GETs without a `Range` header.
    PlainGet,
    /// The n-th range GET (0-based, probes excluded).
    NthRangeGet(u64),
    /// Range GETs starting at this byte.
    RangeStart(u64),
    /// The n-th (0-based) range GET starting at this byte: `nth: 1` is the first hedge or
    /// retry of a chunk.
    RangeStartNth {
        /// The first byte of the range.
        start: u64,
        /// Which request for it.
        nth: u64,
    },
    /// Any predicate.
    Custom(Predicate),
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Match::Any => write!(f, "Any"),
            Match::Probe => write!(f, "Probe"),
            Match::RangeGet => write!(f, "RangeGet"),
            Match::PlainGet => write!(f, "PlainGet"),
            Match::NthRangeGet(n) => write!(f, "NthRangeGet({n})"),
            Match::RangeStart(s) => write!(f, "RangeStart({s})"),
            Match::RangeStartNth { start, nth } => write!(f, "RangeStartNth({start}, {nth})"),
            Match::Custom(_) => write!(f, "Custom"),
        }
    }
}

impl Match {
    fn matches(&self, r: &RequestInfo) -> bool {
        let is_get = r.method == Method::GET;
        match self {
            Match::Any => true,
            Match::Probe => r.is_probe(),
            Match::RangeGet => is_get && r.range.is_some() && !r.is_probe(),
            Match::PlainGet => is_get && r.range.is_none(),
            Match::NthRangeGet(n) => r.range_index == Some(*n),
            Match::RangeStart(s) => {
                is_get && !r.is_probe() && r.range.is_some_and(|(a, _)| a == *s)
            }
            Match::RangeStartNth { start, nth } => {
                is_get
                    && !r.is_probe()
                    && r.range.is_some_and(|(a, _)| a == *start)
                    && r.same_start_before == *nth
            }
            Match::Custom(p) => p(r),
        }
    }
}

/// A hook run before a request is forwarded.
pub type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What to do to a matched request.
#[derive(Clone)]
pub enum Fault {
    /// Answer with this status and a short body, without asking the store.
    Status(u16),
    /// Answer 503 with S3's `SlowDown` error document.
    SlowDown,
    /// Close the connection without answering.
    Drop,
    /// Forward, then reset the connection (TCP RST) after this many body bytes.
    ResetAfter(u64),
    /// Forward without `Content-Length` (chunked) and end the body cleanly after this many
    /// bytes: a well-formed but short response.
    TruncateAfter(u64),
    /// Forward without the `Range` header: 200 with the whole object.
    IgnoreRange,
    /// Forward the range moved by this many bytes: the store's (honest) `Content-Range`
    /// then names other bytes than those asked for.
    ShiftRange(u64),
    /// Flip the bits of the body byte at this offset.
    CorruptByte(u64),
    /// Wait this long before answering (before the first byte).
    Stall(Duration),
    /// Forward, then pause this long after this many body bytes.
    StallAfter {
        /// Body bytes delivered before the pause.
        bytes: u64,
        /// Length of the pause.
        pause: Duration,
    },
    /// Deliver the body at the bandwidth divided by this factor (or at 1 MiB/s divided by it
    /// when the shaper has no bandwidth limit).
    Slow(f64),
    /// Answer 302 to this location.
    Redirect(String),
    /// Run this, then forward normally (e.g. replace the object in the store).
    Hook(Hook),
    /// Wait, then apply another fault (e.g. a hedge that fails only after its original
    /// succeeded).
    Delayed {
        /// The wait before the answer.
        delay: Duration,
        /// What happens after it.
        then: Box<Fault>,
    },
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Hook(_) => write!(f, "Hook"),
            Fault::Status(s) => write!(f, "Status({s})"),
            Fault::SlowDown => write!(f, "SlowDown"),
            Fault::Drop => write!(f, "Drop"),
            Fault::ResetAfter(n) => write!(f, "ResetAfter({n})"),
            Fault::TruncateAfter(n) => write!(f, "TruncateAfter({n})"),
            Fault::IgnoreRange => write!(f, "IgnoreRange"),
            Fault::ShiftRange(n) => write!(f, "ShiftRange({n})"),
            Fault::CorruptByte(n) => write!(f, "CorruptByte({n})"),
            Fault::Stall(d) => write!(f, "Stall({d:?})"),
            Fault::StallAfter { bytes, pause } => write!(f, "StallAfter({bytes}, {pause:?})"),
            Fault::Slow(x) => write!(f, "Slow({x})"),
            Fault::Redirect(_) => write!(f, "Redirect"),
            Fault::Delayed { delay, then } => write!(f, "Delayed({delay:?}, {then:?})"),
        }
    }
}

/// A fault, the requests it applies to, and how many times it fires.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Which requests.
    pub matcher: Match,
    /// What happens to them.
    pub fault: Fault,
    /// How many times it fires (`None`: every time).
    pub times: Option<u64>,
}

impl FaultRule {
    /// A rule that fires once.
    pub fn once(matcher: Match, fault: Fault) -> FaultRule {
        FaultRule {
            matcher,
            fault,
            times: Some(1),
        }
    }

    /// A rule that always fires.
    pub fn always(matcher: Match, fault: Fault) -> FaultRule {
        FaultRule {
            matcher,
            fault,
            times: None,
        }
    }
}

/// One request as the shaper saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// What the request was.
    pub info: RequestInfo,
    /// The fault applied, if any (its `Debug` text).
    pub fault: Option<String>,
    /// `"stall"` or `"slow"` when the random shaping made it a straggler.
    pub straggler: Option<&'static str>,
    /// When it arrived, relative to the shaper's start.
    pub at: Duration,
}

/// Most requests kept in the log.
const MAX_LOG: usize = 100_000;

struct State {
    config: ShaperConfig,
    client: reqwest::Client,
    rules: Mutex<Vec<FaultRule>>,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<RequestRecord>>,
    requests: AtomicU64,
    range_gets: AtomicU64,
    starts: Mutex<std::collections::HashMap<u64, u64>>,
    connections: AtomicU64,
    started: Instant,
}

/// A running shaper; stops when dropped.
pub struct Shaper {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shaper {
    /// Listens on 127.0.0.1 (a free port) and proxies to `config.upstream`.
    pub async fn start(config: ShaperConfig) -> io::Result<Shaper> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(io::Error::other)?;
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let state = Arc::new(State {
            config,
            client,
            rules: Mutex::new(Vec::new()),
            rng: Mutex::new(rng),
            log: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            range_gets: AtomicU64::new(0),
            starts: Mutex::new(Default::default()),
            connections: AtomicU64::new(0),
            started: Instant::now(),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                accept_state.connections.fetch_add(1, Ordering::Relaxed);
                let state = accept_state.clone();
                tokio::spawn(serve_connection(state, stream));
            }
        });
        Ok(Shaper { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> Url {
        let mut u = Url::parse("http://127.0.0.1/").expect("static url");
        let _ = u.set_port(Some(self.addr.port()));
        u
    }

    /// `url` with its scheme, host and port replaced by the shaper's (path and query kept).
    pub fn rewrite(&self, url: &str) -> String {
        match Url::parse(url) {
            Ok(mut u) => {
                let _ = u.set_scheme("http");
                let _ = u.set_host(Some("127.0.0.1"));
                let _ = u.set_port(Some(self.addr.port()));
                u.to_string()
            }
            Err(_) => url.to_string(),
        }
    }

    /// Adds a fault rule (rules are tried in the order added; the first match applies).
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.state.rules).push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.state.rules).clear();
    }

    /// Every request seen so far, in arrival order.
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }

    /// Requests seen so far.
    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection that can be reset: once `reset` is set, every I/O fails and closing sends a
/// TCP RST (linger 0) instead of a FIN.
struct ResettableIo {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "shaper: reset")
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reset.load(Ordering::Relaxed) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reset.load(Ordering::Relaxed) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Body = BoxBody<Bytes, io::Error>;

async fn serve_connection(state: Arc<State>, stream: TcpStream) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = hyper_util::rt::TokioIo::new(ResettableIo {
        inner: stream,
        reset: reset.clone(),
    });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let reset = reset.clone();
        async move { handle(state, reset, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

fn parse_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = b.trim();
    let b = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some((a, b))
}

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// Hop-by-hop headers are not forwarded (RFC 9110 section 7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// How a response body is delivered.
#[derive(Debug, Clone, Copy, Default)]
struct Delivery {
    /// Bytes per second (`None`: as fast as it comes).
    rate: Option<f64>,
    reset_after: Option<u64>,
    truncate_after: Option<u64>,
    corrupt_at: Option<u64>,
    stall_after: Option<(u64, Duration)>,
}

async fn handle(
    state: Arc<State>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let cfg = &state.config;
    let index = state.requests.fetch_add(1, Ordering::Relaxed);
    let range = parse_range(req.headers());
    let mut info = RequestInfo {
        index,
        method: req.method().clone(),
        range,
        range_index: None,
        same_start_before: 0,
        path: req.uri().path().to_string(),
    };
    if info.method == Method::GET && range.is_some() && !info.is_probe() {
        info.range_index = Some(state.range_gets.fetch_add(1, Ordering::Relaxed));
        if let Some((start, _)) = range {
            let mut starts = lock(&state.starts);
            let seen = starts.entry(start).or_insert(0);
            info.same_start_before = *seen;
            *seen += 1;
        }
    }
    let fault = {
        let mut rules = lock(&state.rules);
        let mut chosen = None;
        for rule in rules.iter_mut() {
            if rule.times == Some(0) || !rule.matcher.matches(&info) {
                continue;
            }
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
            chosen = Some(rule.fault.clone());
            break;
        }
        chosen
    };
    let (ttfb, straggler) = {
        let mut rng = lock(&state.rng);
        let jitter = cfg.ttfb_jitter.as_secs_f64();
        let ttfb = if jitter > 0.0 {
            (cfg.ttfb.as_secs_f64() + rng.random_range(-jitter..=jitter)).max(0.0)
        } else {
            cfg.ttfb.as_secs_f64()
        };
        let draw: f64 = rng.random();
        let straggler = if draw < cfg.stall_probability {
            Some("stall")
        } else if draw < cfg.stall_probability + cfg.slow_probability {
            Some("slow")
        } else {
            None
        };
        (Duration::from_secs_f64(ttfb), straggler)
    };
    {
        let mut log = lock(&state.log);
        if log.len() < MAX_LOG {
            log.push(RequestRecord {
                info: info.clone(),
                fault: fault.as_ref().map(|f| format!("{f:?}")),
                straggler,
                at: state.started.elapsed(),
            });
        }
    }
    let mut wait = ttfb;
    let mut fault = fault;
    while let Some(Fault::Delayed { delay, then }) = fault {
        wait += delay;
        fault = Some(*then);
    }
    if straggler == Some("stall") {
        wait += cfg.stall;
    }
    if let Some(Fault::Stall(d)) = &fault {
        wait += *d;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut delivery = Delivery {
        rate: cfg.bandwidth.map(|b| b as f64),
        ..Default::default()
    };
    if straggler == Some("slow") {
        delivery.rate = Some(delivery.rate.unwrap_or(1024.0 * 1024.0) / cfg.slow_factor.max(1.0));
    }
    let (parts, _body) = req.into_parts();
    let mut forward_range = parts.headers.get(header::RANGE).cloned();
    match &fault {
        Some(Fault::Status(s)) => {
            let status = StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(full(status, "injected by the shaper\n"));
        }
        Some(Fault::SlowDown) => {
            let mut r = full(StatusCode::SERVICE_UNAVAILABLE, SLOW_DOWN);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            return Ok(r);
        }
        Some(Fault::Drop) => {
            reset.store(true, Ordering::Relaxed);
            return Err(reset_error());
        }
        Some(Fault::Redirect(location)) => {
            let mut r = full(StatusCode::FOUND, "");
            if let Ok(v) = HeaderValue::from_str(location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
        Some(Fault::Hook(hook)) => hook().await,
        Some(Fault::ResetAfter(n)) => delivery.reset_after = Some(*n),
        Some(Fault::TruncateAfter(n)) => delivery.truncate_after = Some(*n),
        Some(Fault::CorruptByte(n)) => delivery.corrupt_at = Some(*n),
        Some(Fault::StallAfter { bytes, pause }) => delivery.stall_after = Some((*bytes, *pause)),
        Some(Fault::Slow(f)) => {
            delivery.rate = Some(delivery.rate.unwrap_or(1024.0 * 1024.0) / f.max(1.0))
        }
        Some(Fault::IgnoreRange) => forward_range = None,
        Some(Fault::ShiftRange(n)) => {
            if let Some((a, b)) = range {
                let shifted = match b {
                    Some(b) => format!("bytes={}-{}", a + n, b + n),
                    None => format!("bytes={}-", a + n),
                };
                forward_range = HeaderValue::from_str(&shifted).ok();
            }
        }
        Some(Fault::Stall(_)) | Some(Fault::Delayed { .. }) | None => {}
    }
    // The upstream URL: the store's origin, the request's path and query.
    let mut url = cfg.upstream.clone();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    url.set_path(path);
    url.set_query(query.or(cfg.append_query.as_deref()));
    let mut headers = HeaderMap::new();
    for (name, value) in parts.headers.iter() {
        if hop_by_hop(name) || name == header::RANGE {
            continue;
        }
        if name == header::HOST && !cfg.preserve_host {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(r) = forward_range {
        headers.insert(header::RANGE, r);
    }
    let upstream = match state
        .client
        .request(parts.method.clone(), url)
        .headers(headers)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return Ok(full(StatusCode::BAD_GATEWAY, "shaper: upstream failed\n")),
    };
    let mut builder = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers().iter() {
        if hop_by_hop(name) {
            continue;
        }
        if name == header::CONTENT_LENGTH && delivery.truncate_after.is_some() {
            continue;
        }
        builder = builder.header(name, value);
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    tokio::spawn(pump(upstream, tx, delivery, reset));
    let body = BodyExt::boxed(StreamBody::new(rx));
    builder.body(body).map_err(io::Error::other)
}

/// Copies the upstream body to the client, paced and with the body faults applied.
async fn pump(
    mut upstream: reqwest::Response,
    mut tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
    d: Delivery,
    reset: Arc<AtomicBool>,
) {
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut paused_for = Duration::ZERO;
    let piece = d
        .rate
        .map(|r| ((r * 0.002) as usize).clamp(4096, 64 * 1024))
        .unwrap_or(usize::MAX);
    loop {
        let data = match upstream.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                return;
            }
        };
        let mut rest = data;
        while !rest.is_empty() {
            let mut take = rest.len().min(piece);
            // Stop exactly at the byte where a fault fires.
            for limit in [d.reset_after, d.truncate_after, d.stall_after.map(|s| s.0)]
                .into_iter()
                .flatten()
            {
                if limit > sent && limit < sent + take as u64 {
                    take = (limit - sent) as usize;
                }
            }
            if let Some((at, pause)) = d.stall_after {
                if sent == at && paused_for.is_zero() {
                    tokio::time::sleep(pause).await;
                    paused_for = pause;
                }
            }
            if d.reset_after == Some(sent) {
                reset.store(true, Ordering::Relaxed);
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "shaper: reset mid-body",
                    )))
                    .await;
                return;
            }
            if d.truncate_after == Some(sent) {
                return;
            }
            let mut out = rest.split_to(take);
            if let Some(at) = d.corrupt_at {
                if at >= sent && at < sent + take as u64 {
                    let mut v = out.to_vec();
                    v[(at - sent) as usize] ^= 0xff;
                    out = Bytes::from(v);
                }
            }
            if let Some(rate) = d.rate {
                let due = started + paused_for + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            sent += out.len() as u64;
            if tx.send(Ok(Frame::data(out))).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, range: Option<(u64, Option<u64>)>) -> RequestInfo {
        RequestInfo {
            index: 0,
            method,
            range,
            range_index: None,
            same_start_before: 0,
            path: "/k".into(),
        }
    }

    #[test]
    fn matchers() {
        let probe = info(Method::GET, Some((0, Some(0))));
        let head = info(Method::HEAD, None);
        let mut ranged = info(Method::GET, Some((8, Some(15))));
        ranged.range_index = Some(2);
        ranged.same_start_before = 1;
        let plain = info(Method::GET, None);
        assert!(Match::Probe.matches(&probe) && Match::Probe.matches(&head));
        assert!(!Match::RangeGet.matches(&probe));
        assert!(Match::RangeGet.matches(&ranged));
        assert!(Match::PlainGet.matches(&plain) && !Match::PlainGet.matches(&ranged));
        assert!(Match::NthRangeGet(2).matches(&ranged));
        assert!(Match::RangeStart(8).matches(&ranged));
        assert!(Match::RangeStartNth { start: 8, nth: 1 }.matches(&ranged));
        assert!(!Match::RangeStartNth { start: 8, nth: 0 }.matches(&ranged));
    }

    #[test]
    fn range_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-9"));
        assert_eq!(parse_range(&h), Some((5, Some(9))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-"));
        assert_eq!(parse_range(&h), Some((5, None)));
        h.insert(header::RANGE, HeaderValue::from_static("items=5-"));
        assert_eq!(parse_range(&h), None);
    }
}
