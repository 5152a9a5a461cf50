//! Unit tests of the retry policy: Retry-After parsing, verdicts, jitter bounds, deadlines,
//! the classification of real socket failures and the loop against scripted attempts.

use super::*;
use crate::wire::ErrorCode;
use http::HeaderValue;
use serde_json::json;

fn headers(retry_after: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
    let p = |v| parse_retry_after(v, now);
    assert_eq!(p("0"), Some(Duration::ZERO));
    assert_eq!(p(" 7 "), Some(Duration::from_secs(7)));
    assert_eq!(p("1.5"), Some(Duration::from_millis(1500)));
    assert_eq!(
        p("99999999999999999999999"),
        Some(Duration::from_secs(u64::MAX))
    );
    // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT: the example date of RFC 9110.
    assert_eq!(
        p("Wed, 21 Oct 2015 07:28:30 GMT"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        p("Wednesday, 21-Oct-15 07:29:00 GMT"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(p("Wed Oct 21 07:28:05 2015"), Some(Duration::from_secs(5)));
    // A date in the past: retry at once.
    assert_eq!(p("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    for bad in [
        "",
        "-1",
        "soon",
        "1e3",
        "1.2.3",
        ".",
        "Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        assert_eq!(p(bad), None, "{bad:?}");
    }
}

#[test]
fn refusals_before_execution_are_told_apart_from_unknown_outcomes() {
    let v = |peer, status, ra, err: Option<&RpcError>| verdict(peer, status, &headers(ra), err);
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(
        v(Peer::Rpc, 429, None, None),
        Verdict::Refused { after: None }
    );
    assert_eq!(
        v(Peer::Rpc, 429, Some("3"), None),
        Verdict::Refused { after: secs(3) }
    );
    assert_eq!(
        v(Peer::Rpc, 503, Some("2"), None),
        Verdict::Refused { after: secs(2) }
    );
    // Without a (valid) delay a 503 may come from a proxy after the method ran.
    assert_eq!(v(Peer::Rpc, 503, None, None), Verdict::Transient);
    assert_eq!(v(Peer::Rpc, 503, Some("soon"), None), Verdict::Transient);
    // The server's error body says the same as its header.
    let info = RpcError::new("ServerOverloaded", "busy")
        .with_code(ErrorCode::Unavailable)
        .with_details(vec![
            json!({"@type": "other.Detail", "retry_delay_seconds": 99}),
            json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": 4}),
        ]);
    assert_eq!(
        v(Peer::Rpc, 503, None, Some(&info)),
        Verdict::Refused { after: secs(4) }
    );
    assert_eq!(
        v(Peer::Rpc, 503, Some("1"), Some(&info)),
        Verdict::Refused { after: secs(1) },
        "the header wins"
    );
    let other = RpcError::new("E", "m").with_details(vec![json!({"@type": "x"})]);
    assert_eq!(v(Peer::Rpc, 503, None, Some(&other)), Verdict::Transient);
    for s in [502, 504] {
        assert_eq!(v(Peer::Rpc, s, Some("1"), None), Verdict::Transient);
    }
    for s in [200, 400, 401, 403, 404, 408, 413, 415, 500] {
        assert_eq!(v(Peer::Rpc, s, Some("1"), None), Verdict::Final, "{s}");
    }
    // Object stores ask for 408 and 500 to be retried.
    for s in [408, 500, 502, 503, 504] {
        assert_eq!(v(Peer::Storage, s, None, None), Verdict::Transient, "{s}");
    }
    assert_eq!(v(Peer::Storage, 403, None, None), Verdict::Final);
}

#[test]
fn backoff_is_full_jitter_within_the_doubling_step() {
    let p =
        RetryPolicy::default().with_backoff(Duration::from_millis(100), Duration::from_millis(500));
    assert_eq!(p.delay(0, None, 0.0), Duration::ZERO);
    assert_eq!(p.delay(0, None, 0.5), Duration::from_millis(50));
    assert_eq!(p.delay(2, None, 0.5), Duration::from_millis(200));
    // Capped at max_backoff, however many retries.
    assert_eq!(p.delay(3, None, 1.0), Duration::from_millis(500));
    assert_eq!(p.delay(u32::MAX, None, 1.0), Duration::from_millis(500));
    // Retry-After is the floor; the jitter goes on top.
    let ra = Some(Duration::from_secs(2));
    assert_eq!(p.delay(0, ra, 0.0), Duration::from_secs(2));
    assert_eq!(p.delay(1, ra, 1.0), Duration::from_millis(2200));
    // The random draw spreads over the whole step.
    let draws: Vec<Duration> = (0..200)
        .map(|_| p.delay(1, None, rand::random::<f64>()))
        .collect();
    assert!(draws.iter().all(|d| *d <= Duration::from_millis(200)));
    assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
    assert!(draws.iter().any(|d| *d > Duration::from_millis(100)));
}

#[test]
fn deadlines_cut_attempts_and_stop_sleeps() {
    let none = Deadline::after(None);
    assert_eq!(
        none.attempt_timeout(Duration::from_secs(300)),
        Duration::from_secs(300)
    );
    assert_eq!(none.passed_by(Duration::MAX / 2), None);
    let d = Deadline::after(Some(Duration::from_secs(10)));
    let t = d.attempt_timeout(Duration::from_secs(300));
    assert!(
        t <= Duration::from_secs(10) && t > Duration::from_secs(5),
        "{t:?}"
    );
    assert_eq!(
        d.attempt_timeout(Duration::from_secs(2)),
        Duration::from_secs(2)
    );
    assert_eq!(d.passed_by(Duration::from_secs(1)), None);
    assert_eq!(
        d.passed_by(Duration::from_secs(11)),
        Some(RetryStop::Deadline {
            deadline: Duration::from_secs(10)
        })
    );
    let gone = Deadline::after(Some(Duration::ZERO));
    assert_eq!(
        gone.attempt_timeout(Duration::from_secs(1)),
        Duration::from_millis(1)
    );
    assert!(gone.passed_by(Duration::ZERO).is_some());
}

#[test]
fn policies_are_bounded() {
    RetryPolicy::default().validate().unwrap();
    RetryPolicy::none().validate().unwrap();
    let e = RetryPolicy::default()
        .with_max_retries(MAX_RETRIES + 1)
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("max_retries"), "{e}");
    let e = RetryPolicy::default()
        .with_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("base_backoff"), "{e}");
}

/// Real sockets: a refused connection sent nothing; a request read by a peer that then
/// went silent or hung up may have been acted on.
#[tokio::test]
async fn refused_connections_are_told_from_lost_requests() {
    use tokio::io::AsyncReadExt;
    let client = reqwest::Client::new();
    let post = |addr: std::net::SocketAddr| {
        client
            .post(format!("http://{addr}/P/m"))
            .timeout(Duration::from_millis(500))
            .body("request")
            .send()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let e = post(addr).await.unwrap_err();
    assert!(matches!(
        Attempt::<u16>::send_failed(e),
        Attempt::NotSent(_)
    ));

    for hang_up in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            if !hang_up {
                // Holds the connection open without answering until the test ends.
                std::future::pending::<()>().await;
            }
        });
        let e = post(addr).await.unwrap_err();
        assert!(
            matches!(Attempt::<u16>::send_failed(e), Attempt::MaybeSent(_)),
            "hang_up {hang_up}"
        );
        peer.abort();
    }
}

/// The loop against scripted attempts: which outcomes are retried for which request.
#[tokio::test]
async fn the_loop_retries_by_outcome_and_replay_safety() {
    let fast =
        RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(2));
    let no_deadline = Deadline::after(None);
    let req = |replay| Request {
        what: "call",
        url: "http://h/P/m",
        replay,
    };
    // Plays `script` one entry per attempt; returns the result and the attempts made.
    async fn play(
        policy: &RetryPolicy,
        deadline: &Deadline,
        request: Request<'_>,
        script: Vec<fn() -> Attempt<u16>>,
    ) -> (Result<u16>, usize) {
        let mut n = 0;
        let out = run(
            policy,
            deadline,
            request,
            || {
                let step = script[n.min(script.len() - 1)];
                n += 1;
                async move { step() }
            },
            |status| Error::HttpStatus {
                status,
                url: "http://h/P/m".into(),
            },
        )
        .await;
        (out, n)
    }
    let refused: fn() -> Attempt<u16> = || Attempt::Answered(503, Verdict::Refused { after: None });
    let transient: fn() -> Attempt<u16> = || Attempt::Answered(502, Verdict::Transient);
    let ok: fn() -> Attempt<u16> = || Attempt::Answered(200, Verdict::Final);
    let not_sent: fn() -> Attempt<u16> =
        || Attempt::NotSent(Error::Http("connection failed".into()));
    let lost: fn() -> Attempt<u16> = || Attempt::MaybeSent(Error::Http("timed out".into()));

    let (out, n) = play(
        &fast,
        &no_deadline,
        req(Replay::Dispatch),
        vec![refused, refused, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (200, 3));
    // An ambiguous answer to a dispatch is returned as it came, after one attempt.
    let (out, n) = play(
        &fast,
        &no_deadline,
        req(Replay::Dispatch),
        vec![transient, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (502, 1));
    let (out, n) = play(&fast, &no_deadline, req(Replay::Dispatch), vec![lost, ok]).await;
    assert!(matches!(out, Err(Error::Http(_))) && n == 1);
    // ... but retried for a replay-safe request, or an idempotent dispatch.
    let (out, n) = play(
        &fast,
        &no_deadline,
        req(Replay::Safe),
        vec![transient, lost, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (200, 3));
    let idem = fast.clone().idempotent(true);
    let (out, n) = play(
        &idem,
        &no_deadline,
        req(Replay::Dispatch),
        vec![transient, lost, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (200, 3));
    // Nothing sent: retried for every request.
    let (out, n) = play(
        &fast,
        &no_deadline,
        req(Replay::Dispatch),
        vec![not_sent, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (200, 2));
    // Exhausted: the last error, with the count.
    let (out, n) = play(&fast, &no_deadline, req(Replay::Dispatch), vec![refused]).await;
    assert_eq!(n, 4);
    match out {
        Err(Error::RetriesExhausted {
            attempts,
            stop,
            last,
        }) => {
            assert_eq!(attempts, 4);
            assert_eq!(stop, RetryStop::MaxRetries { max_retries: 3 });
            assert!(
                matches!(*last, Error::HttpStatus { status: 503, .. }),
                "{last:?}"
            );
        }
        other => panic!("not exhausted: {other:?}"),
    }
    // Disabled: one attempt, the answer as it came.
    let (out, n) = play(
        &RetryPolicy::none(),
        &no_deadline,
        req(Replay::Safe),
        vec![refused, ok],
    )
    .await;
    assert_eq!((out.unwrap(), n), (503, 1));
    let (out, n) = play(
        &RetryPolicy::none(),
        &no_deadline,
        req(Replay::Safe),
        vec![not_sent, ok],
    )
    .await;
    assert!(matches!(out, Err(Error::Http(_))) && n == 1);
    // Final failures are never retried.
    let failed: fn() -> Attempt<u16> = || Attempt::Failed(Error::Config("x".into()));
    let (out, n) = play(&idem, &no_deadline, req(Replay::Safe), vec![failed, ok]).await;
    assert!(matches!(out, Err(Error::Config(_))) && n == 1);
    // A deadline that the next sleep would pass stops at once.
    let slow = RetryPolicy::default().with_backoff(Duration::from_secs(5), Duration::from_secs(5));
    let late: fn() -> Attempt<u16> = || {
        Attempt::Answered(
            429,
            Verdict::Refused {
                after: Some(Duration::from_secs(5)),
            },
        )
    };
    let short = Deadline::after(Some(Duration::from_secs(2)));
    let (out, n) = play(&slow, &short, req(Replay::Dispatch), vec![late, ok]).await;
    assert_eq!(n, 1);
    assert!(
        matches!(
            out,
            Err(Error::RetriesExhausted {
                attempts: 1,
                stop: RetryStop::Deadline { .. },
                ..
            })
        ),
        "{out:?}"
    );
}
