//! The client's retry policy against a real server: a Spillway server (the demo protocol, a
//! running-sum exchange stream, the local store with its upload URLs) behind a layer that
//! refuses chosen requests the way an overloaded Spillway server does (503, `Retry-After`, the
//! vgi-rpc `UNAVAILABLE` error with `vgi_rpc.RetryInfo`), or as a proxy does (429, 502 or 503
//! pages, or a 502 after the method ran), and records every request it sees. The client and
//! `spillway call` are checked for which requests they send again, how often and how long
//! they wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode};
use serde_json::json;
use spillway::client::{
    CallRequest, Client, ClientConfig, ClientStream, RetryPolicy, RetryStop, RPC_ERROR_HEADER,
};
use spillway::server::{Protocol, Server, ServerConfig, StreamMethod, StreamStart, TurnOutput};
use spillway::url_policy::UrlPolicy;
use spillway::wire::{keys, read_stream, write_stream, ErrorCode, Metadata, ReadLimits, RpcError};
use spillway::{demo, Error};
use spillway_storage::Storage;

use crate::common::*;

/// How the layer answers a request instead of (or after) the server.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// What an overloaded or draining Spillway server answers before running the method: 503,
    /// `Retry-After` (when given), the `UNAVAILABLE` EXCEPTION with `vgi_rpc.RetryInfo`.
    Overloaded(Option<&'static str>),
    /// 503 whose only delay is the `vgi_rpc.RetryInfo` detail of its body.
    RetryInfoOnly(u64),
    /// 429 with a plain-text body and no `Retry-After`.
    TooMany,
    /// This status with a plain-text body, before the server sees the request (a proxy's page).
    Before(u16),
    /// The server runs the request, then this status replaces its answer (a proxy that gave
    /// up on the response).
    After(u16),
}

/// One request as the layer saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    at: Instant,
    body: Bytes,
    /// The server did not run it.
    refused: bool,
}

/// The faults still to inject (method, path fragment, how many times, which) and the log.
#[derive(Default)]
struct Faults {
    plan: Mutex<Vec<(Method, &'static str, u32, Fault)>>,
    seen: Mutex<Vec<Seen>>,
}

impl Faults {
    /// Answers the next `times` requests of `method` whose path contains `path` with `fault`.
    fn inject(&self, method: Method, path: &'static str, times: u32, fault: Fault) {
        self.plan.lock().unwrap().push((method, path, times, fault));
    }

    fn take(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let i = plan
            .iter()
            .position(|(m, p, n, _)| m == method && path.contains(p) && *n > 0)?;
        plan[i].2 -= 1;
        Some(plan[i].3)
    }

    /// The requests seen since the last call whose path contains `path` (all are forgotten).
    fn seen(&self, path: &str) -> Vec<Seen> {
        let all = std::mem::take(&mut *self.seen.lock().unwrap());
        all.into_iter().filter(|s| s.path.contains(path)).collect()
    }

    fn reset(&self) {
        self.plan.lock().unwrap().clear();
        self.seen.lock().unwrap().clear();
    }
}

/// The body and headers of an overloaded Spillway server's refusal.
fn overloaded(retry_after: Option<&str>, delay: u64) -> Response {
    let schema = Arc::new(Schema::empty());
    let error = RpcError::new("ServerOverloaded", "server overloaded; retry later")
        .with_code(ErrorCode::Unavailable)
        .with_details(vec![
            json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": delay}),
        ]);
    let body = write_stream(&schema, &[error.to_batch(&schema, None)]).unwrap();
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            ("content-type", spillway::wire::ARROW_STREAM_CONTENT_TYPE),
            (RPC_ERROR_HEADER, "true"),
        ],
        body,
    )
        .into_response();
    if let Some(v) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
    }
    resp
}

fn plain(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, format!("{status} from the proxy\n")).into_response()
}

async fn fault_layer(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let fault = faults.take(&parts.method, parts.uri.path());
    faults.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        at: Instant::now(),
        body: body.clone(),
        refused: matches!(fault, Some(f) if !matches!(f, Fault::After(_))),
    });
    let run = |parts, body| next.run(Request::from_parts(parts, Body::from(body)));
    match fault {
        None => run(parts, body).await,
        Some(Fault::Overloaded(retry_after)) => overloaded(retry_after, 0),
        Some(Fault::RetryInfoOnly(delay)) => overloaded(None, delay),
        Some(Fault::TooMany) => plain(429),
        Some(Fault::Before(status)) => plain(status),
        Some(Fault::After(status)) => {
            let _ = run(parts, body).await;
            plain(status)
        }
    }
}

fn int_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
}

fn ints(name: &str, v: i64) -> RecordBatch {
    RecordBatch::try_new(int_schema(name), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
}

/// `sum(start)`: an exchange whose state (in its token) is the running total; each input
/// `value` is added and the new total returned. A step replayed from the same token gives the
/// same total: the state never counts an input twice.
fn running_sum() -> StreamMethod {
    StreamMethod::exchange(
        int_schema("start"),
        int_schema("value"),
        int_schema("total"),
        |_ctx, p| async move {
            let start = p.column(0).as_primitive::<Int64Type>().value(0);
            Ok(StreamStart {
                state: start.to_le_bytes().to_vec(),
                ..Default::default()
            })
        },
        |_ctx, turn| async move {
            let total = i64::from_le_bytes(turn.state[..8].try_into().unwrap());
            let input = turn.input.unwrap();
            let total = total + input.column(0).as_primitive::<Int64Type>().value(0);
            Ok(TurnOutput {
                state: total.to_le_bytes().to_vec(),
                output: Some((ints("total", total), Metadata::new())),
                finished: false,
            })
        },
    )
}

/// A server with the demo protocol, `test.Retry.v1.sum`, the local store and upload URLs
/// (requests above 4096 bytes go through them), behind the fault layer.
struct Faulty {
    base: String,
    faults: Arc<Faults>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Faulty {
    async fn start() -> Faulty {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path(), &base, "r/", 5);
        let storage: Arc<dyn Storage> = store.clone();
        let config = ServerConfig {
            max_request_bytes: 4096,
            ..ServerConfig::default()
        };
        let server = Server::new(config)
            .with_protocol(demo::protocol().unwrap())
            .with_protocol(
                Protocol::new("test.Retry.v1")
                    .unwrap()
                    .stream("sum", running_sum()),
            )
            .with_storage(storage)
            .with_storage_routes("/__storage__", store.router());
        let faults = Arc::new(Faults::default());
        let router = server.router().layer(axum::middleware::from_fn_with_state(
            faults.clone(),
            fault_layer,
        ));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Faulty {
            base,
            faults,
            _dir: dir,
            task,
        }
    }

    fn client(&self, retry: RetryPolicy) -> Client {
        let mut config = ClientConfig::default().with_retry(retry);
        config.fetch.policy = UrlPolicy::local_testing();
        Client::new(&self.base, config).unwrap()
    }
}

/// The default policy with millisecond backoff, so tests do not wait on jitter.
fn fast() -> RetryPolicy {
    RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(5))
}

const ECHO: &str = "/spillway.Demo.v1/echo";

async fn echo_result(client: &Client, data: &[u8]) -> spillway::Result<Vec<u8>> {
    client
        .call("spillway.Demo.v1", "echo", data_params(data))
        .await
        .map(|out| binary_value(&out.batch))
}

fn assert_unavailable(e: &Error) {
    match e {
        Error::Rpc(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        other => panic!("not the server's UNAVAILABLE error: {other:?}"),
    }
}

#[tokio::test]
async fn refusals_before_execution_are_retried_until_the_call_succeeds() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    // The capability probe is replay-safe: even a proxy's 502 is retried.
    s.faults
        .inject(Method::OPTIONS, "/health", 2, Fault::Before(502));
    s.faults
        .inject(Method::POST, ECHO, 2, Fault::Overloaded(Some("0")));
    assert_eq!(echo_result(&client, b"hello").await.unwrap(), b"hello");
    let seen = s.faults.seen("");
    let probes: Vec<_> = seen.iter().filter(|r| r.path == "/health").collect();
    assert_eq!(probes.len(), 3, "{seen:?}");
    let calls: Vec<&Seen> = seen.iter().filter(|r| r.path == ECHO).collect();
    assert_eq!(calls.len(), 3, "{seen:?}");
    assert!(calls[0].refused && calls[1].refused && !calls[2].refused);
    // The same request every time.
    assert!(calls.iter().all(|c| c.body == calls[0].body));

    // 429 (without Retry-After) and a 503 whose only delay is in its body are refusals too.
    s.faults.inject(Method::POST, ECHO, 1, Fault::TooMany);
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::RetryInfoOnly(0));
    assert_eq!(echo_result(&client, b"again").await.unwrap(), b"again");
    assert_eq!(s.faults.seen(ECHO).len(), 3);
}

#[tokio::test]
async fn the_servers_retry_after_is_waited_for() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    client.capabilities().await.unwrap();
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::Overloaded(Some("1")));
    assert_eq!(echo_result(&client, b"x").await.unwrap(), b"x");
    let calls = s.faults.seen(ECHO);
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn unknown_outcomes_are_not_replayed_unless_the_caller_says_idempotent() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    client.capabilities().await.unwrap();
    // The method ran, then a proxy answered 502: one request, the error as it came.
    s.faults.inject(Method::POST, ECHO, 1, Fault::After(502));
    let e = echo_result(&client, b"once").await.unwrap_err();
    assert!(matches!(e, Error::HttpStatus { status: 502, .. }), "{e:?}");
    let calls = s.faults.seen(ECHO);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(!calls[0].refused, "the method ran");
    // A 503 without Retry-After may come from a proxy after the method ran: the same.
    s.faults.inject(Method::POST, ECHO, 1, Fault::Before(503));
    let e = echo_result(&client, b"once").await.unwrap_err();
    assert!(matches!(e, Error::HttpStatus { status: 503, .. }), "{e:?}");
    assert_eq!(s.faults.seen(ECHO).len(), 1);

    // Declared idempotent: replayed.
    let idempotent = s.client(fast().idempotent(true));
    s.faults.inject(Method::POST, ECHO, 1, Fault::After(502));
    s.faults.inject(Method::POST, ECHO, 1, Fault::Before(503));
    s.faults.inject(Method::POST, ECHO, 1, Fault::Before(504));
    assert_eq!(echo_result(&idempotent, b"twice").await.unwrap(), b"twice");
    let calls = s.faults.seen(ECHO);
    assert_eq!(calls.len(), 4, "{calls:?}");
    // Other failures are final even then.
    s.faults.inject(Method::POST, ECHO, 1, Fault::Before(500));
    let e = echo_result(&idempotent, b"x").await.unwrap_err();
    assert!(matches!(e, Error::HttpStatus { status: 500, .. }), "{e:?}");
    assert_eq!(s.faults.seen(ECHO).len(), 1);
}

#[tokio::test]
async fn giving_up_returns_the_last_error_with_the_attempt_count() {
    let s = Faulty::start().await;
    let client = s.client(fast().with_max_retries(2));
    client.capabilities().await.unwrap();
    s.faults
        .inject(Method::POST, ECHO, 100, Fault::Overloaded(Some("0")));
    let e = echo_result(&client, b"x").await.unwrap_err();
    match &e {
        Error::RetriesExhausted {
            attempts,
            stop,
            last,
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(*stop, RetryStop::MaxRetries { max_retries: 2 });
            assert_unavailable(last);
        }
        other => panic!("not exhausted: {other:?}"),
    }
    assert_unavailable(e.last_attempt());
    let text = e.to_string();
    assert!(
        text.contains("server overloaded") && text.contains("gave up after 3 attempts"),
        "{text}"
    );
    assert_eq!(s.faults.seen(ECHO).len(), 3);

    // Retrying disabled: one request, the error as it came.
    let none = s.client(RetryPolicy::none());
    let e = echo_result(&none, b"x").await.unwrap_err();
    assert_unavailable(&e);
    assert_eq!(s.faults.seen(ECHO).len(), 1);
}

#[tokio::test]
async fn a_long_retry_after_or_the_deadline_ends_retrying_at_once() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    client.capabilities().await.unwrap();
    // Above max_retry_after (30 s): the error, after one request.
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::Overloaded(Some("120")));
    let started = Instant::now();
    let e = echo_result(&client, b"x").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::RetriesExhausted {
                attempts: 1,
                stop: RetryStop::RetryAfterTooLong { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("retry after 120 s"), "{e}");
    assert_eq!(s.faults.seen(ECHO).len(), 1);
    // As an HTTP-date, too.
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(600));
    let later: &'static str = Box::leak(later.into_boxed_str());
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::Overloaded(Some(later)));
    let e = echo_result(&client, b"x").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::RetriesExhausted {
                stop: RetryStop::RetryAfterTooLong { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.faults.seen(ECHO).len(), 1);

    // Within the cap but past the call's deadline: no sleep past it.
    let bounded = s.client(fast().with_deadline(Duration::from_secs(1)));
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::Overloaded(Some("5")));
    let e = echo_result(&bounded, b"x").await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::RetriesExhausted {
                attempts: 1,
                stop: RetryStop::Deadline { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.faults.seen(ECHO).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5), "it slept");
}

async fn open_sum(client: &Client, start: i64) -> ClientStream {
    client
        .open_stream(CallRequest::new(
            "test.Retry.v1",
            "sum",
            ints("start", start),
        ))
        .await
        .unwrap()
}

async fn add(stream: &mut ClientStream, v: i64) -> spillway::Result<i64> {
    let out = stream.exchange(ints("value", v), Metadata::new()).await?;
    Ok(out.batch.column(0).as_primitive::<Int64Type>().value(0))
}

/// The stream state token a step request carries.
fn step_token(body: &Bytes) -> String {
    let raw = zstd::stream::decode_all(&body[..]).unwrap();
    let s = read_stream(Bytes::from(raw), ReadLimits::default()).unwrap();
    s.batches[0].metadata[keys::STREAM_STATE].clone()
}

#[tokio::test]
async fn stream_steps_are_resent_only_when_refused_before_running() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    // `/init` refused: retried.
    s.faults
        .inject(Method::POST, "/sum/init", 1, Fault::Overloaded(Some("0")));
    let mut stream = open_sum(&client, 10).await;
    assert_eq!(s.faults.seen("/sum/init").len(), 2);
    assert_eq!(add(&mut stream, 1).await.unwrap(), 11);

    // A step refused before running: the same token and input again, counted once.
    s.faults.inject(
        Method::POST,
        "/sum/exchange",
        2,
        Fault::Overloaded(Some("0")),
    );
    assert_eq!(add(&mut stream, 2).await.unwrap(), 13);
    let steps = s.faults.seen("/sum/exchange");
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert!(steps[1].refused && steps[2].refused && !steps[3].refused);
    assert_eq!(steps[1].body, steps[3].body);
    assert_ne!(step_token(&steps[0].body), step_token(&steps[3].body));

    // The step ran but a proxy answered 502: not replayed; the stream keeps its cursor.
    s.faults
        .inject(Method::POST, "/sum/exchange", 1, Fault::After(502));
    let e = add(&mut stream, 4).await.unwrap_err();
    assert!(matches!(e, Error::HttpStatus { status: 502, .. }), "{e:?}");
    let steps = s.faults.seen("/sum/exchange");
    assert_eq!(steps.len(), 1);
    // Sent again by the caller: from the same state, so the lost step is not counted twice.
    assert_eq!(add(&mut stream, 4).await.unwrap(), 17);
    assert_eq!(
        step_token(&s.faults.seen("/sum/exchange")[0].body),
        step_token(&steps[0].body)
    );

    // Declared idempotent, the client replays that step itself, with the same outcome.
    let idempotent = s.client(fast().idempotent(true));
    let mut stream = open_sum(&idempotent, 100).await;
    s.faults
        .inject(Method::POST, "/sum/exchange", 1, Fault::After(502));
    assert_eq!(add(&mut stream, 5).await.unwrap(), 105);
    assert_eq!(s.faults.seen("/sum/exchange").len(), 2);
    assert_eq!(add(&mut stream, 5).await.unwrap(), 110);
}

#[tokio::test]
async fn the_upload_flow_retries_each_of_its_requests() {
    let s = Faulty::start().await;
    let client = s.client(fast());
    let data = generated_bytes(20_000, 7);
    // The URL vending and the PUT of a whole object are replay-safe: a 504 and a store's 503
    // without Retry-After are retried; the pointer POST is retried when refused (429).
    s.faults
        .inject(Method::POST, "/__upload_url__/init", 1, Fault::Before(504));
    s.faults
        .inject(Method::PUT, "/__storage__/", 1, Fault::Before(503));
    s.faults.inject(Method::POST, ECHO, 1, Fault::TooMany);
    assert_eq!(echo_result(&client, &data).await.unwrap(), data);
    let seen = s.faults.seen("");
    let count = |m: &Method, p: &str| {
        seen.iter()
            .filter(|r| r.method == *m && r.path.contains(p))
            .count()
    };
    assert_eq!(count(&Method::POST, "/__upload_url__/init"), 2, "{seen:?}");
    assert_eq!(count(&Method::PUT, "/__storage__/"), 2, "{seen:?}");
    assert_eq!(count(&Method::POST, ECHO), 2, "{seen:?}");
    let puts: Vec<&Seen> = seen.iter().filter(|r| r.method == Method::PUT).collect();
    assert_eq!(puts[0].body, puts[1].body);

    // A PUT refused for good: the error names the status, never the signed URL.
    s.faults
        .inject(Method::PUT, "/__storage__/", 100, Fault::Before(503));
    let e = echo_result(&client, &data).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("HTTP 503") && text.contains("gave up after 4 attempts"),
        "{text}"
    );
    assert!(!text.contains("X-Spillway-Signature"), "{text}");
    s.faults.reset();
}

/// Runs `spillway call` against `s` off the runtime (the server is served by it).
async fn cli(s: &Faulty, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let url = s.base.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        call_clean(&url, &args, &env)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spillway_call_retries_per_its_flags() {
    let s = Faulty::start().await;
    const BLOB: &str = "/spillway.Demo.v1/blob";
    let blob = ["spillway.Demo.v1.blob", "size=10"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = blob.to_vec();
        v.extend_from_slice(extra);
        v
    };

    s.faults
        .inject(Method::POST, BLOB, 2, Fault::Overloaded(Some("0")));
    let out = cli(&s, &with(&["--retries", "1"]), &[]).await;
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("gave up after 2 attempts"),
        "{}",
        output_text(&out)
    );
    assert_eq!(s.faults.seen(BLOB).len(), 2);

    s.faults
        .inject(Method::POST, BLOB, 2, Fault::Overloaded(Some("0")));
    let out = cli(&s, &blob, &[]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(s.faults.seen(BLOB).len(), 3);

    s.faults
        .inject(Method::POST, BLOB, 1, Fault::Overloaded(Some("0")));
    let out = cli(&s, &blob, &[("SPILLWAY_CALL_RETRIES", "0")]).await;
    assert!(!out.status.success());
    assert!(
        !output_text(&out).contains("gave up"),
        "{}",
        output_text(&out)
    );
    assert_eq!(s.faults.seen(BLOB).len(), 1);
    s.faults.reset();

    s.faults.inject(Method::POST, BLOB, 1, Fault::After(502));
    let out = cli(&s, &blob, &[]).await;
    assert!(!out.status.success());
    assert!(output_text(&out).contains("502"), "{}", output_text(&out));
    assert_eq!(s.faults.seen(BLOB).len(), 1);
    s.faults.inject(Method::POST, BLOB, 1, Fault::After(502));
    let out = cli(&s, &with(&["--retry-idempotent"]), &[]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(s.faults.seen(BLOB).len(), 2);

    // --timeout is the call's deadline: a Retry-After past it ends the call at once.
    s.faults
        .inject(Method::POST, BLOB, 1, Fault::Overloaded(Some("20")));
    let out = cli(&s, &with(&["--timeout", "2"]), &[]).await;
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("deadline"),
        "{}",
        output_text(&out)
    );
    s.faults.reset();

    let out = cli(&s, &with(&["--retries", "101"]), &[]).await;
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("--retries"),
        "{}",
        output_text(&out)
    );
}

/// The debug line of each retry names the request (redacted) and never the token or a
/// signed query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_logged_without_secrets() {
    let s = Faulty::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, generated_bytes(20_000, 3)).unwrap();
    let param = format!("data:binary=@{}", file.display());
    let token = "retry-secret-token-0123456789";
    s.faults
        .inject(Method::PUT, "/__storage__/", 1, Fault::Before(503));
    s.faults
        .inject(Method::POST, ECHO, 1, Fault::Overloaded(Some("0")));
    let out = cli(
        &s,
        &["spillway.Demo.v1.echo", &param],
        &[("RUST_LOG", "spillway=debug"), ("SPILLWAY_TOKEN", token)],
    )
    .await;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let retries: Vec<&str> = text.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(retries.len(), 2, "{text}");
    assert!(retries
        .iter()
        .any(|l| l.contains("status=503") && l.contains("/__storage__/")));
    assert!(!text.contains(token), "the token was logged: {text}");
    assert!(
        !text.contains("X-Spillway-Signature"),
        "a signed URL was logged: {text}"
    );
}
