//! Overload against a real `spillway serve` process: the memory budget and call slots refuse
//! with 503 + `Retry-After` after the admission timeout, a burst far above the budget keeps
//! the server up and its memory bounded, header-stalled, idle and dribbling connections are
//! closed, and SIGTERM drains. Raw sockets hold requests half-sent, so the server's state is
//! known (polled from `/metrics`) instead of guessed with sleeps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use spillway::wire::{read_stream, ErrorCode, ARROW_STREAM_CONTENT_TYPE};

use crate::common::{
    binary_value, blob_body, data_params, echo_body, error_of, post_raw, ServedBinary,
};

/// Bound of every wait (a failure, never a synchronization).
const DEADLINE: Duration = Duration::from_secs(60);

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Opens a connection and sends a POST's headers (with `content_length`) and `body`.
fn half_sent(url: &str, path: &str, content_length: usize, body: &[u8]) -> TcpStream {
    half_sent_as(url, path, content_length, body, None)
}

/// As [`half_sent`], with a bearer token.
fn half_sent_as(
    url: &str,
    path: &str,
    content_length: usize,
    body: &[u8],
    token: Option<&str>,
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port_of(url))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {ARROW_STREAM_CONTENT_TYPE}\r\nContent-Length: {content_length}\r\n\r\n"
    )
    .unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    s
}

/// Reads until the peer closes or `timeout` passes; what came.
fn read_all(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // A complete small response is enough.
                let text = String::from_utf8_lossy(&out);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if len.is_some_and(|len| out.len() >= head_end + 4 + len) {
                        return out;
                    }
                }
            }
        }
    }
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The value of a gauge or counter in `/metrics` (0 when absent).
async fn metric(url: &str, name: &str) -> f64 {
    metric_as(url, name, None).await
}

/// As [`metric`], with a bearer token (the main port's `/metrics` needs one under auth).
async fn metric_as(url: &str, name: &str, token: Option<&str>) -> f64 {
    let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `/metrics` until `name` satisfies `ok`.
async fn wait_metric(url: &str, name: &str, ok: impl Fn(f64) -> bool) {
    wait_metric_as(url, name, None, ok).await
}

/// As [`wait_metric`], with a bearer token.
async fn wait_metric_as(url: &str, name: &str, token: Option<&str>, ok: impl Fn(f64) -> bool) {
    let started = Instant::now();
    loop {
        let v = metric_as(url, name, token).await;
        if ok(v) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_overloaded(resp: reqwest::Response, words: &str) {
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let e = error_of(resp).await;
    assert_eq!(e.error_type, "ServerOverloadedError");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains(words), "{}", e.message);
    assert!(e.details().unwrap().contains("vgi_rpc.RetryInfo"));
}

#[tokio::test]
async fn a_call_waits_for_a_slot_then_gets_503_and_the_next_one_is_served() {
    let s = ServedBinary::start(&[
        ("SPILLWAY_MAX_CONCURRENT_CALLS", "1"),
        ("SPILLWAY_ADMISSION_TIMEOUT", "0.5"),
        ("SPILLWAY_MIN_BODY_RATE", "0"),
    ]);
    let echo = format!("{}/spillway.Demo.v1/echo", s.url);
    let body = echo_body(b"held");
    let (head, last) = body.split_at(body.len() - 1);
    let mut held = half_sent(&s.url, "/spillway.Demo.v1/echo", body.len(), head);
    wait_metric(&s.url, "spillway_calls_in_flight", |v| v == 1.0).await;
    let started = Instant::now();
    assert_overloaded(
        post_raw(&echo, echo_body(b"second")).await,
        "calls are running",
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    held.write_all(last).unwrap();
    let done = read_all(&mut held, DEADLINE);
    assert!(status_line(&done).contains("200"), "{}", status_line(&done));
    let resp = post_raw(&echo, echo_body(b"third")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        metric(&s.url, "spillway_admission_rejections_total").await,
        1.0
    );

    // The Rust client retries the real refusal after its Retry-After, and gets through once
    // the slot is free.
    let mut held = half_sent(&s.url, "/spillway.Demo.v1/echo", body.len(), head);
    wait_metric(&s.url, "spillway_calls_in_flight", |v| v == 1.0).await;
    let client =
        spillway::client::Client::new(&s.url, spillway::client::ClientConfig::default()).unwrap();
    let call = tokio::spawn(async move {
        client
            .call("spillway.Demo.v1", "echo", data_params(b"retried"))
            .await
            .map(|out| binary_value(&out.batch))
    });
    wait_metric(&s.url, "spillway_admission_rejections_total", |v| v == 2.0).await;
    held.write_all(last).unwrap();
    assert!(status_line(&read_all(&mut held, DEADLINE)).contains("200"));
    assert_eq!(call.await.unwrap().unwrap(), b"retried");
}

#[tokio::test]
async fn the_memory_budget_makes_calls_wait_refuses_after_the_timeout_and_never_fits_too_much() {
    let s = ServedBinary::start(&[
        ("SPILLWAY_MEMORY_LIMIT", "64MiB"),
        ("SPILLWAY_MAX_REQUEST_BYTES", "50331648"),
        ("SPILLWAY_ADMISSION_TIMEOUT", "0.5"),
        ("SPILLWAY_MIN_BODY_RATE", "0"),
    ]);
    let blob = format!("{}/spillway.Demo.v1/blob", s.url);
    // A 40 MiB body on its way holds 40 MiB of the 64.
    let held = half_sent(&s.url, "/spillway.Demo.v1/echo", 40 << 20, b"\xff\xff");
    wait_metric(&s.url, "spillway_memory_in_use_bytes", |v| {
        v >= (40 << 20) as f64
    })
    .await;
    assert_eq!(
        metric(&s.url, "spillway_memory_budget_bytes").await,
        (64 << 20) as f64
    );
    // An 8 MiB blob needs more than what is left: it waits, then gets 503.
    assert_overloaded(
        post_raw(&blob, blob_body(8 << 20)).await,
        "no memory came free",
    )
    .await;
    drop(held);
    wait_metric(&s.url, "spillway_memory_in_use_bytes", |v| v == 0.0).await;
    let resp = post_raw(&blob, blob_body(8 << 20)).await;
    assert_eq!(resp.status(), 200);
    let stream = read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert!(stream
        .batches
        .iter()
        .any(|b| b.metadata.contains_key("vgi_rpc.location")));
    // More than the whole budget can never be granted: refused at once, not retried.
    let resp = post_raw(&blob, blob_body(60 << 20)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("retry-after").is_none());
    let e = error_of(resp).await;
    assert_eq!(e.code, ErrorCode::ResourceExhausted);
    assert!(e.message.contains("budget"), "{}", e.message);
    wait_metric(&s.url, "spillway_memory_in_use_bytes", |v| v == 0.0).await;
}

#[tokio::test]
async fn with_authentication_one_principal_waits_for_its_share_while_another_is_served() {
    const ALICE: &str = "alice-token-0123456789abcdef";
    const BOB: &str = "bob-token-0123456789abcdef00";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ALICE} alice\n{BOB} bob\n")).unwrap();
    let s = ServedBinary::start(&[
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("SPILLWAY_MEMORY_LIMIT", "64MiB"),
        ("SPILLWAY_PRINCIPAL_SHARE", "0.5"),
        ("SPILLWAY_MAX_REQUEST_BYTES", "50331648"),
        ("SPILLWAY_ADMISSION_TIMEOUT", "0.5"),
        ("SPILLWAY_MIN_BODY_RATE", "0"),
    ]);
    let blob = format!("{}/spillway.Demo.v1/blob", s.url);
    let call = |token: &'static str| {
        let blob = blob.clone();
        async move {
            reqwest::Client::new()
                .post(&blob)
                .bearer_auth(token)
                .header("content-type", ARROW_STREAM_CONTENT_TYPE)
                .body(blob_body(4 << 20))
                .send()
                .await
                .unwrap()
        }
    };
    // Alice holds 24 MiB of her 32 MiB share with a body on its way.
    let held = half_sent_as(
        &s.url,
        "/spillway.Demo.v1/echo",
        24 << 20,
        b"\xff",
        Some(ALICE),
    );
    wait_metric_as(&s.url, "spillway_memory_in_use_bytes", Some(ALICE), |v| {
        v >= (24 << 20) as f64
    })
    .await;
    // A 4 MiB blob needs 12 MiB: over Alice's share, within the budget.
    assert_overloaded(call(ALICE).await, "no memory came free").await;
    assert_eq!(
        call(BOB).await.status(),
        200,
        "bob waited for alice's share"
    );
    drop(held);
    wait_metric_as(&s.url, "spillway_memory_in_use_bytes", Some(ALICE), |v| {
        v == 0.0
    })
    .await;
    assert_eq!(call(ALICE).await.status(), 200);
}

/// VmHWM / VmRSS of a process, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_burst_far_above_the_budget_ends_in_results_or_503_within_the_budget() {
    const BUDGET: u64 = 96 << 20;
    const CALLS: usize = 24;
    const SIZE: i64 = 8 << 20;
    let budget = BUDGET.to_string();
    let s = ServedBinary::start(&[
        ("SPILLWAY_MEMORY_LIMIT", budget.as_str()),
        ("SPILLWAY_ADMISSION_TIMEOUT", "5"),
    ]);
    let blob = format!("{}/spillway.Demo.v1/blob", s.url);
    // Warm up once, so the baseline includes the runtime's and the store's own buffers.
    assert_eq!(post_raw(&blob, blob_body(SIZE)).await.status(), 200);
    let baseline = proc_status(s.pid(), "VmRSS:");
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let blob = blob.clone();
            tokio::spawn(async move { post_raw(&blob, blob_body(SIZE)).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        let resp = c.await.unwrap();
        match resp.status().as_u16() {
            200 => {
                assert!(resp.headers().get("x-vgi-rpc-error").is_none());
                ok += 1;
            }
            503 => {
                assert_overloaded(resp, "no memory came free").await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + refused, CALLS);
    assert!(ok >= 2, "only {ok} of {CALLS} calls were served");
    let peak = proc_status(s.pid(), "VmHWM:");
    // The documented slack: 15 % over the budget, above what the idle server held.
    let bound = baseline + BUDGET + BUDGET * 15 / 100;
    eprintln!(
        "burst: {ok} served, {refused} refused; peak RSS {} MiB, baseline {} MiB, bound {} MiB",
        peak >> 20,
        baseline >> 20,
        bound >> 20
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the bound {} MiB (baseline {} MiB)",
        peak >> 20,
        bound >> 20,
        baseline >> 20
    );
    // Still serving, with nothing held.
    assert_eq!(post_raw(&blob, blob_body(1024)).await.status(), 200);
    wait_metric(&s.url, "spillway_memory_in_use_bytes", |v| v == 0.0).await;
}

#[tokio::test]
async fn stalled_headers_idle_keep_alives_and_dribbled_bodies_are_cut_off() {
    let s = ServedBinary::start(&[
        ("SPILLWAY_HEADER_TIMEOUT", "1"),
        ("SPILLWAY_MIN_BODY_RATE", "1000"),
        ("SPILLWAY_BODY_RATE_GRACE", "1"),
    ]);
    let port = port_of(&s.url);
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"POST /spillway.Demo.v1/echo HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    // Keep-alive, then idle.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_all(&mut idle, DEADLINE);
    assert!(status_line(&first).contains("200"));
    // Bodies dribbled at a few bytes a second.
    let dribblers: Vec<_> = (0..8)
        .map(|_| {
            let url = s.url.clone();
            std::thread::spawn(move || {
                let mut c = half_sent(&url, "/spillway.Demo.v1/echo", 100_000, b"x");
                c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
                let paced = c.try_clone().unwrap();
                let pacer = std::thread::spawn(move || {
                    let mut paced = paced;
                    for _ in 0..60 {
                        std::thread::sleep(Duration::from_millis(250));
                        if paced.write_all(b"x").is_err() {
                            return;
                        }
                    }
                });
                let response = read_all(&mut c, DEADLINE);
                let _ = pacer.join();
                (
                    status_line(&response),
                    String::from_utf8_lossy(&response).into_owned(),
                )
            })
        })
        .collect();
    // Meanwhile a normal call is served.
    let resp = post_raw(
        &format!("{}/spillway.Demo.v1/echo", s.url),
        echo_body(b"normal"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    for c in &mut stalled {
        let got = read_all(c, DEADLINE);
        assert!(
            got.is_empty() || status_line(&got).contains("408"),
            "{:?}",
            status_line(&got)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "header stalls lasted {:?}",
        started.elapsed()
    );
    assert!(
        read_all(&mut idle, DEADLINE).is_empty(),
        "the idle connection got data"
    );
    for d in dribblers {
        let (status, text) = d.join().unwrap();
        assert!(status.contains("408"), "{status}\n{text}");
        assert!(text.contains("slower than 1000 bytes/s"), "{text}");
    }
    // grace (1 s) + one 5 s window, with slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(metric(&s.url, "spillway_slow_bodies_total").await >= 8.0);
}

#[tokio::test]
async fn sigterm_turns_readiness_off_refuses_new_calls_and_lets_the_call_in_flight_finish() {
    let mut s = ServedBinary::start(&[("SPILLWAY_MIN_BODY_RATE", "0")]);
    let echo = format!("{}/spillway.Demo.v1/echo", s.url);
    let body = echo_body(b"in flight");
    let (head, last) = body.split_at(body.len() - 1);
    let mut in_flight = half_sent(&s.url, "/spillway.Demo.v1/echo", body.len(), head);
    wait_metric(&s.url, "spillway_calls_in_flight", |v| v == 1.0).await;
    assert_eq!(
        reqwest::get(format!("{}/readyz", s.url))
            .await
            .unwrap()
            .status(),
        200
    );
    s.terminate();
    let started = Instant::now();
    loop {
        let status = reqwest::get(format!("{}/readyz", s.url))
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = post_raw(&echo, echo_body(b"new")).await;
    assert_eq!(refused.headers()["connection"], "close");
    assert_overloaded(refused, "shutting down").await;
    assert!(
        s.wait_exit(Duration::from_millis(200)).is_none(),
        "exited with a call in flight"
    );
    in_flight.write_all(last).unwrap();
    let done = read_all(&mut in_flight, DEADLINE);
    assert!(status_line(&done).contains("200"), "{}", status_line(&done));
    let status = s
        .wait_exit(DEADLINE)
        .expect("still running after its last call");
    assert!(status.success(), "{status:?}");
}
