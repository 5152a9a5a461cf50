//! One proxied request: faults chosen and applied, the store asked, the body paced.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyDataStream, BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use rand::Rng;

use crate::conn::reset_error;
use crate::faults::{Fault, RequestInfo, RequestRecord};
use crate::server::{lock, State, MAX_LOG};

type Body = BoxBody<Bytes, io::Error>;

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

/// The parameter names of a query string (`a=1&b&c=` → `a`, `b`, `c`).
fn query_names(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(name, _)| name).to_string())
        .collect()
}

/// Reads and drops a request body (bounded by what the client sends; a test tool).
async fn drain(body: Incoming) {
    let _ = body.collect().await;
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

/// Serves one request: draws the shaping, applies the first matching fault, forwards.
pub(crate) async fn handle(
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
        query_names: query_names(req.uri().query()),
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
    let (parts, body) = req.into_parts();
    let mut forward_range = parts.headers.get(header::RANGE).cloned();
    match &fault {
        Some(Fault::Status(s)) => {
            drain(body).await;
            let status = StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(full(status, "injected by the shaper\n"));
        }
        Some(Fault::SlowDown) => {
            drain(body).await;
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
        // The shaper answers `100-continue` itself (hyper does, when the body is read).
        if name == header::EXPECT {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Some(r) = forward_range {
        headers.insert(header::RANGE, r);
    }
    let mut request = state
        .client
        .request(parts.method.clone(), url)
        .headers(headers);
    // Request bodies (uploads) are streamed through as they come.
    if !body.is_end_stream() {
        request = request.body(reqwest::Body::wrap_stream(BodyDataStream::new(body)));
    }
    let upstream = match request.send().await {
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

    #[test]
    fn query_parameter_names_only() {
        assert_eq!(
            query_names(Some("partNumber=3&uploadId=abc&X-Amz-Signature=s")),
            ["partNumber", "uploadId", "X-Amz-Signature"]
        );
        assert_eq!(query_names(Some("uploads")), ["uploads"]);
        assert!(query_names(None).is_empty());
    }
}
