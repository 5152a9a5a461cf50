//! The Rust client against real servers.
//!
//! - `reference_*` tests run against the Python reference worker (vgi-rpc 0.52.2,
//!   `vgi_rpc.conformance.client_worker --external`). They need the environment variable
//!   `SPILLWAY_VGI_PYTHON` naming a Python with vgi-rpc installed
//!   (`scripts/vgi-reference.sh python` prints one); without it they say they are skipped,
//!   unless `SPILLWAY_REQUIRE_SERVERS=1` or `SPILLWAY_REQUIRE_PYTHON=1`, where they fail.
//! - `mock_*` tests run against a small in-process axum server that produces what the
//!   reference worker never does (compressed responses, 413 without pre-flight, JSON errors).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{BinaryArray, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use spillway::client::{CallRequest, Client, ClientConfig, ClientStream};
use spillway::fetch::FetchConfig;
use spillway::url_policy::UrlPolicy;
use spillway::wire::{
    keys, read_stream, write_stream, LogMessage, MetaBatch, Metadata, ReadLimits, RpcError,
};
use spillway::Error;

use crate::common::{generated_bytes, no_params, vgi_python};

const PROTOCOL: &str = "ClientConformanceService";

// ---------------------------------------------------------------------------------------------
// The Python reference worker
// ---------------------------------------------------------------------------------------------

/// The reference worker process; killed when dropped.
struct Worker {
    child: Child,
    port: u16,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the worker, or returns `None` (after saying why) when `SPILLWAY_VGI_PYTHON` is unset.
fn start_worker() -> Option<Worker> {
    let python = vgi_python()?;
    let mut child = Command::new(&python)
        .args([
            "-m",
            "vgi_rpc.conformance.client_worker",
            "--http",
            "0",
            "--prefix",
            "/vgi",
            "--external",
            "--external-threshold",
            "4096",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<u16>();
    // Reads PORT:<n>, then keeps draining stdout so the worker never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.trim().strip_prefix("PORT:") {
                if let Ok(port) = port.parse() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let sink = stderr_text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let worker = |port| Worker { child, port };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(port) => Some(worker(port)),
        Err(_) => {
            drop(worker(0));
            panic!(
                "the reference worker printed no PORT:<n> within 60 s; stderr:\n{}",
                stderr_text.lock().unwrap()
            );
        }
    }
}

fn reference_client(worker: &Worker, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig {
        prefix: "/vgi".into(),
        fetch: FetchConfig {
            policy: UrlPolicy::local_testing(),
            ..Default::default()
        },
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    tweak(&mut config);
    Client::new(&format!("http://127.0.0.1:{}", worker.port), config).unwrap()
}

fn int_params(name: &str, v: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
}

fn bytes_params(name: &str, v: &[u8]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Binary, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(BinaryArray::from_vec(vec![v]))]).unwrap()
}

fn binary_result(batch: &RecordBatch) -> Vec<u8> {
    assert_eq!(batch.num_rows(), 1);
    let field = batch.schema().field(0).clone();
    assert_eq!(field.name(), "result");
    assert_eq!(field.data_type(), &DataType::Binary);
    assert!(!field.is_nullable());
    batch.column(0).as_binary::<i32>().value(0).to_vec()
}

fn expected_large_response(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Deterministic bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    generated_bytes(len, 1)
}

/// `result` failed with [`Error::TooLarge`] of the limit `name`, which is `value`.
fn assert_too_large<T: std::fmt::Debug>(result: Result<T, Error>, name: &str, value: u64) {
    match result {
        Err(Error::TooLarge {
            limit_name, limit, ..
        }) => assert_eq!((limit_name, limit), (name, value)),
        other => panic!("expected a {name} error, got {other:?}"),
    }
}

/// Opens the stream `method` of the conformance service.
async fn open(client: &Client, method: &str, params: RecordBatch) -> ClientStream {
    client
        .open_stream(CallRequest::new(PROTOCOL, method, params))
        .await
        .unwrap()
}

#[tokio::test]
async fn reference_capabilities_and_unknown_method() {
    let Some(worker) = start_worker() else { return };
    let client = reference_client(&worker, |_| {});
    let caps = client.capabilities().await.unwrap();
    assert!(caps.accept_max_response_bytes_support);
    assert!(caps.externalization_enabled);
    assert!(caps.upload_url_support);
    assert_eq!(caps.max_request_bytes, Some(4096));
    assert_eq!(caps.max_upload_bytes, Some(16 * 1024 * 1024));
    assert!(caps.supported_encodings.is_empty(), "{caps:?}");

    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    match client.call(PROTOCOL, "no_such_method", empty).await {
        Err(Error::Rpc(e)) => {
            assert_eq!(e.kind.as_deref(), Some("method_not_implemented"), "{e:?}");
        }
        other => panic!("expected an rpc error, got {other:?}"),
    }
    // A server-side exception (negative size) is an rpc error too, and the client stays usable.
    match client
        .call(PROTOCOL, "large_response", int_params("size", -1))
        .await
    {
        Err(Error::Rpc(e)) => {
            assert_eq!(e.error_type, "ValueError", "{e:?}");
            assert!(e.message.contains("size must be between"), "{e:?}");
        }
        other => panic!("expected an rpc error, got {other:?}"),
    }
    // A wrong parameter schema is refused with 400 + EXCEPTION.
    match client
        .call(PROTOCOL, "large_response", int_params("bogus", 1))
        .await
    {
        Err(Error::Rpc(_)) => {}
        other => panic!("expected an rpc error, got {other:?}"),
    }
    let out = client
        .call(PROTOCOL, "large_response", int_params("size", 3))
        .await
        .unwrap();
    assert_eq!(binary_result(&out.batch), vec![0, 1, 2]);
}

#[tokio::test]
async fn reference_large_response_pointer_and_inline() {
    let Some(worker) = start_worker() else { return };
    let downloaded = Arc::new(Mutex::new(0u64));
    let seen = downloaded.clone();
    let client = reference_client(&worker, |c| {
        c.progress = Some(Arc::new(move |got, _total| *seen.lock().unwrap() = got));
    });

    let size = 32768;
    let out = client
        .call(PROTOCOL, "large_response", int_params("size", size as i64))
        .await
        .unwrap();
    assert_eq!(binary_result(&out.batch), expected_large_response(size));
    let ext = out
        .externalized
        .as_ref()
        .expect("32 KiB result is externalized");
    assert!(ext.url.starts_with("http://127.0.0.1:"), "{}", ext.url);
    assert!(!ext.url.contains('?'), "{}", ext.url);
    assert!(ext.stats.decoded_bytes > size as u64);
    assert!(ext.stats.attempts >= 1);
    assert!(
        out.metadata.contains_key(keys::LOCATION_FETCH_MS),
        "{:?}",
        out.metadata
    );
    assert!(out.metadata[keys::LOCATION_SOURCE].starts_with("http://127.0.0.1:"));
    assert!(!out.metadata.contains_key(keys::LOCATION));
    assert!(!out.metadata.contains_key(keys::LOCATION_SHA256));
    assert_eq!(*downloaded.lock().unwrap(), ext.stats.encoded_bytes);

    let out = client
        .call(PROTOCOL, "large_response", int_params("size", 10))
        .await
        .unwrap();
    assert_eq!(binary_result(&out.batch), expected_large_response(10));
    assert!(out.externalized.is_none());
    assert!(out.metadata.is_empty(), "{:?}", out.metadata);

    // Under the strict default policy, the worker's storage (plain http on another port of
    // 127.0.0.1) is not fetched.
    let strict = reference_client(&worker, |c| c.fetch.policy = UrlPolicy::default());
    let err = strict
        .call(PROTOCOL, "large_response", int_params("size", size as i64))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("URL rejected"), "{err}");
}

#[tokio::test]
async fn reference_echo_bytes_goes_through_upload_urls() {
    let Some(worker) = start_worker() else { return };
    let value = noise(32 * 1024);
    for compression in [Some(1), None] {
        let client = reference_client(&worker, |c| c.request_compression = compression);
        let out = client
            .call(PROTOCOL, "echo_bytes", bytes_params("value", &value))
            .await
            .unwrap();
        assert_eq!(
            binary_result(&out.batch),
            value,
            "compression {compression:?}"
        );
        assert!(out.externalized.is_some());
    }
    // Small values go inline both ways.
    let client = reference_client(&worker, |_| {});
    let out = client
        .call(PROTOCOL, "echo_bytes", bytes_params("value", b"hi"))
        .await
        .unwrap();
    assert_eq!(binary_result(&out.batch), b"hi");
    assert!(out.externalized.is_none());

    // Without the upload flow the server's 413 surfaces as a size error.
    let no_upload = reference_client(&worker, |c| c.upload_large_requests = false);
    let result = no_upload
        .call(PROTOCOL, "echo_bytes", bytes_params("value", &value))
        .await;
    assert_too_large(result, "max_request_bytes", 4096);
}

#[tokio::test]
async fn reference_request_upload_urls() {
    let Some(worker) = start_worker() else { return };
    let client = reference_client(&worker, |_| {});
    let urls = client.request_upload_urls(2).await.unwrap();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0], urls[1]);
    for u in &urls {
        assert_ne!(u.upload_url, u.download_url);
        assert!(u
            .expires_at_micros
            .is_some_and(|t| t > 1_600_000_000_000_000));
    }
    assert_ne!(urls[0].upload_url, urls[1].upload_url);
    assert_ne!(urls[0].download_url, urls[1].download_url);

    // The pair is method-bound and round-trips.
    let http = reqwest::Client::new();
    let put = http
        .put(&urls[0].upload_url)
        .body("payload")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = http.get(&urls[0].download_url).send().await.unwrap();
    assert!(got.status().is_success());
    assert_eq!(&got.bytes().await.unwrap()[..], b"payload");
    let wrong = http.get(&urls[0].upload_url).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 403);

    assert!(client.request_upload_urls(0).await.is_err());
    assert!(client.request_upload_urls(101).await.is_err());
}

fn producer_batches(b: &spillway::client::StreamBatch) -> (i64, Vec<u8>) {
    let idx = b
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    let payload = b
        .batch
        .column(1)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    (idx, payload)
}

#[tokio::test]
async fn reference_producer_streams() {
    let Some(worker) = start_worker() else { return };
    let client = reference_client(&worker, |_| {});
    // 5 batches of 10 KiB (above the worker's 4096-byte threshold: externalized cycles).
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("count", DataType::Int64, false),
            Field::new("payload_bytes", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![5])),
            Arc::new(Int64Array::from(vec![10_240])),
        ],
    )
    .unwrap();
    let mut stream = open(&client, "producer_sequence", params).await;
    let mut got = Vec::new();
    while let Some(b) = stream.next().await.unwrap() {
        assert!(b.externalized.is_some(), "10 KiB cycles are externalized");
        let (idx, payload) = producer_batches(&b);
        assert_eq!(payload, vec![(idx % 251) as u8; 10_240]);
        got.push(idx);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    // Small cycles inline: a genuine zero-row data batch, then a value, then the end.
    let mut stream = open(&client, "producer_zero_row_then_value", no_params()).await;
    let first = stream.next().await.unwrap().expect("zero-row batch");
    assert_eq!(first.batch.num_rows(), 0);
    let second = stream.next().await.unwrap().expect("value");
    assert_eq!(producer_batches(&second), (7, b"after-zero".to_vec()));
    assert!(stream.next().await.unwrap().is_none());

    let mut stream = open(&client, "producer_emit_and_finish", no_params()).await;
    let only = stream.next().await.unwrap().expect("terminal value");
    assert_eq!(producer_batches(&only), (99, b"terminal".to_vec()));
    assert!(stream.next().await.unwrap().is_none());

    let mut stream = open(&client, "producer_empty", no_params()).await;
    assert!(stream.next().await.unwrap().is_none());
}

/// The worker's strict typed exchange: lists, dictionary, timestamp, decimal and struct columns
/// must reach it with their exact types and round-trip unchanged.
#[tokio::test]
async fn reference_typed_exchange_round_trips_exact_types() {
    use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder};
    use arrow_array::Array;
    use arrow_array::{
        ArrayRef, Decimal128Array, DictionaryArray, Float64Array, StructArray,
        TimestampMicrosecondArray,
    };
    let Some(worker) = start_worker() else { return };
    let client = reference_client(&worker, |_| {});
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("a");
    tags.values().append_null();
    tags.append(true);
    tags.append(false);
    let tags = tags.finish();
    let mut scores = ListBuilder::new(Int32Builder::new());
    scores.values().append_value(3);
    scores.append(true);
    scores.append(true);
    let scores = scores.finish();
    let category: DictionaryArray<arrow_array::types::Int16Type> =
        vec![Some("x"), None].into_iter().collect();
    let nested_fields = vec![
        Arc::new(Field::new("name", DataType::Utf8, true)),
        Arc::new(Field::new("scores", scores.data_type().clone(), true)),
    ];
    let nested = StructArray::try_new(
        nested_fields.into(),
        vec![
            Arc::new(arrow_array::StringArray::from(vec![Some("n"), None])) as ArrayRef,
            Arc::new(scores) as ArrayRef,
        ],
        None,
    )
    .unwrap();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![Some(1.5), None])),
        Arc::new(tags),
        Arc::new(category),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), None])
                .with_timezone("UTC"),
        ),
        Arc::new(
            Decimal128Array::from(vec![Some(123_4567), None])
                .with_precision_and_scale(18, 4)
                .unwrap(),
        ),
        Arc::new(nested),
    ];
    let fields: Vec<Field> = [
        "nullable_float",
        "tags",
        "category",
        "event_time",
        "amount",
        "nested",
    ]
    .iter()
    .zip(&columns)
    .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
    .collect();
    let input = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let mut stream = open(&client, "typed_exchange", no_params()).await;
    for _ in 0..2 {
        let out = stream
            .exchange(input.clone(), Default::default())
            .await
            .unwrap();
        assert_eq!(out.batch.schema().fields(), input.schema().fields());
        assert_eq!(out.batch.columns(), input.columns());
    }
}

// ---------------------------------------------------------------------------------------------
// An in-process mock server
// ---------------------------------------------------------------------------------------------

mod mock {
    use super::*;
    use axum::body::Body;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, options, post, put};
    use axum::Router;

    /// What the mock server advertises and saw.
    #[derive(Default)]
    pub(super) struct MockState {
        pub(super) caps: Vec<(&'static str, &'static str)>,
        /// Request headers of every RPC POST, in order: (method, headers).
        pub(super) posts: Mutex<Vec<(String, HeaderMap)>>,
        pub(super) objects: Mutex<HashMap<String, Bytes>>,
        pub(super) port: Mutex<u16>,
        /// Reject inline bodies larger than this with 413 (without advertising it).
        pub(super) hidden_request_cap: Option<usize>,
    }

    impl MockState {
        /// Records an RPC POST.
        fn record(&self, method: &str, headers: &HeaderMap) {
            let mut posts = self.posts.lock().unwrap();
            posts.push((method.to_string(), headers.clone()));
        }
    }

    pub(super) struct Mock {
        pub(super) state: Arc<MockState>,
        pub(super) base: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub(super) async fn start(state: MockState) -> Mock {
        let state = Arc::new(state);
        let app = Router::new()
            .route("/health", options(health))
            .route("/P/{method}", post(rpc))
            .route("/__upload_url__/init", post(upload_init))
            .route("/up/{key}", put(upload_put))
            .route("/down/{key}", get(download))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        *state.port.lock().unwrap() = port;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Mock {
            state,
            base: format!("http://127.0.0.1:{port}"),
            task,
        }
    }

    fn with_caps(state: &MockState, mut resp: Response) -> Response {
        for (k, v) in &state.caps {
            resp.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        resp
    }

    async fn health(State(state): State<Arc<MockState>>) -> Response {
        with_caps(&state, StatusCode::OK.into_response())
    }

    fn arrow(status: StatusCode, body: Vec<u8>) -> Response {
        (
            status,
            [("content-type", "application/vnd.apache.arrow.stream")],
            body,
        )
            .into_response()
    }

    fn decode_request(headers: &HeaderMap, body: Bytes) -> MetaBatch {
        let body = match headers.get("content-encoding").map(|v| v.to_str().unwrap()) {
            None => body,
            Some("zstd") => Bytes::from(zstd::stream::decode_all(&body[..]).unwrap()),
            Some(other) => panic!("unexpected request content-encoding {other}"),
        };
        let mut s = read_stream(body, ReadLimits::default()).unwrap();
        assert_eq!(s.batches.len(), 1);
        s.batches.remove(0)
    }

    fn result_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "result",
            DataType::Binary,
            false,
        )]))
    }

    fn result_stream(value: &[u8], logs: &[LogMessage]) -> Vec<u8> {
        let schema = result_schema();
        let mut batches: Vec<MetaBatch> = logs.iter().map(|l| l.to_batch(&schema)).collect();
        batches.push(MetaBatch::plain(
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(BinaryArray::from_vec(vec![value]))],
            )
            .unwrap(),
        ));
        write_stream(&schema, &batches).unwrap()
    }

    async fn rpc(
        State(state): State<Arc<MockState>>,
        Path(method): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        state.record(&method, &headers);
        let wire_len = body.len();
        let req = decode_request(&headers, body);
        assert_eq!(req.metadata[keys::METHOD], method);
        assert_eq!(req.metadata[keys::PROTOCOL], "P");
        // Resolve a request pointer from our own store.
        let req = match req.metadata.get(keys::LOCATION) {
            Some(url) => {
                let key = url.rsplit('/').next().unwrap().to_string();
                let object = state.objects.lock().unwrap()[&key].clone();
                let mut s = read_stream(object, ReadLimits::default()).unwrap();
                assert_eq!(s.batches[0].metadata[keys::METHOD], method);
                s.batches.remove(0)
            }
            None => {
                if state.hidden_request_cap.is_some_and(|cap| wire_len > cap) {
                    return with_caps(
                        &state,
                        (
                            StatusCode::PAYLOAD_TOO_LARGE,
                            [("content-type", "application/json")],
                            r#"{"title": "Request body exceeds max_request_bytes"}"#,
                        )
                            .into_response(),
                    );
                }
                req
            }
        };
        let value = || -> Vec<u8> {
            req.batch
                .column_by_name("value")
                .map(|c| c.as_binary::<i32>().value(0).to_vec())
                .unwrap_or_default()
        };
        let resp = match method.as_str() {
            "echo" => arrow(StatusCode::OK, result_stream(&value(), &[])),
            "logs" => {
                let logs = [
                    LogMessage {
                        level: "INFO".into(),
                        message: "first".into(),
                        extra: None,
                    },
                    LogMessage {
                        level: "WARN".into(),
                        message: "second".into(),
                        extra: Some("{\"k\": 1}".into()),
                    },
                ];
                arrow(StatusCode::OK, result_stream(b"ok", &logs))
            }
            "zstd" | "gzip" => {
                let raw = result_stream(&value(), &[]);
                let enc = if method == "zstd" {
                    zstd::bulk::compress(&raw, 3).unwrap()
                } else {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut e, &raw).unwrap();
                    e.finish().unwrap()
                };
                let mut r = arrow(StatusCode::OK, enc);
                r.headers_mut()
                    .insert("content-encoding", HeaderValue::from_str(&method).unwrap());
                r
            }
            "big" => arrow(StatusCode::OK, result_stream(&vec![1u8; 200_000], &[])),
            "flagged" => {
                let schema = result_schema();
                let exc = RpcError::new("RuntimeError", "it broke").to_batch(&schema, None);
                let mut r = arrow(StatusCode::OK, write_stream(&schema, &[exc]).unwrap());
                r.headers_mut()
                    .insert("x-vgi-rpc-error", HeaderValue::from_static("true"));
                r
            }
            "flagged_empty" => {
                let mut r = arrow(StatusCode::OK, result_stream(b"x", &[]));
                r.headers_mut()
                    .insert("x-vgi-rpc-error", HeaderValue::from_static("true"));
                r
            }
            "json_error" => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                [("content-type", "application/json")],
                r#"{"title": "Unsupported Media Type"}"#,
            )
                .into_response(),
            "no_result" => {
                let schema = result_schema();
                let log = LogMessage {
                    level: "INFO".into(),
                    message: "only a log".into(),
                    extra: None,
                };
                arrow(
                    StatusCode::OK,
                    write_stream(&schema, &[log.to_batch(&schema)]).unwrap(),
                )
            }
            _ => (StatusCode::NOT_FOUND, Body::from("<html>no</html>")).into_response(),
        };
        with_caps(&state, resp)
    }

    async fn upload_init(
        State(state): State<Arc<MockState>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        state.record("__upload_url__", &headers);
        let req = decode_request(&headers, body);
        assert_eq!(req.metadata[keys::METHOD], "__upload_url__");
        assert!(!req.metadata.contains_key(keys::PROTOCOL));
        let count = req
            .batch
            .column(0)
            .as_primitive::<arrow_array::types::Int64Type>();
        let port = *state.port.lock().unwrap();
        let n = count.value(0) as usize;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("k{}-{i}", state.objects.lock().unwrap().len()))
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("upload_url", DataType::Utf8, true),
            Field::new("download_url", DataType::Utf8, true),
        ]));
        let up: Vec<String> = keys
            .iter()
            .map(|k| format!("http://127.0.0.1:{port}/up/{k}?X-Amz-Signature=secret"))
            .collect();
        let down: Vec<String> = keys
            .iter()
            .map(|k| format!("http://127.0.0.1:{port}/down/{k}"))
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::StringArray::from(up)),
                Arc::new(arrow_array::StringArray::from(down)),
            ],
        )
        .unwrap();
        with_caps(
            &state,
            arrow(
                StatusCode::OK,
                write_stream(&schema, &[MetaBatch::plain(batch)]).unwrap(),
            ),
        )
    }

    async fn upload_put(
        State(state): State<Arc<MockState>>,
        Path(key): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        assert!(headers.get("content-encoding").is_none());
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/vnd.apache.arrow.stream"
        );
        state.objects.lock().unwrap().insert(key, body);
        StatusCode::NO_CONTENT
    }

    async fn download(State(state): State<Arc<MockState>>, Path(key): Path<String>) -> Response {
        match state.objects.lock().unwrap().get(&key) {
            Some(b) => (StatusCode::OK, b.clone()).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

fn mock_client(mock: &mock::Mock, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    tweak(&mut config);
    Client::new(&mock.base, config).unwrap()
}

fn standard_caps() -> Vec<(&'static str, &'static str)> {
    vec![
        ("VGI-Accept-Max-Response-Bytes-Support", "true"),
        ("VGI-Externalization-Enabled", "false"),
        ("VGI-Supported-Encodings", "zstd, gzip"),
    ]
}

#[tokio::test]
async fn mock_compressed_responses_logs_and_headers() {
    let mock = mock::start(mock::MockState {
        caps: standard_caps(),
        ..Default::default()
    })
    .await;
    let client = mock_client(&mock, |_| {});
    for method in ["echo", "zstd", "gzip"] {
        let out = client
            .call("P", method, bytes_params("value", b"hello"))
            .await
            .unwrap();
        assert_eq!(binary_result(&out.batch), b"hello", "{method}");
        assert!(out.logs.is_empty());
    }
    let out = client
        .call("P", "logs", bytes_params("value", b""))
        .await
        .unwrap();
    let logs: Vec<_> = out
        .logs
        .iter()
        .map(|l| (l.level.as_str(), l.message.as_str()))
        .collect();
    assert_eq!(logs, vec![("INFO", "first"), ("WARN", "second")]);
    assert_eq!(out.logs[1].extra.as_deref(), Some("{\"k\": 1}"));

    {
        let posts = mock.state.posts.lock().unwrap();
        assert_eq!(posts.len(), 4);
        for (_, h) in posts.iter() {
            assert_eq!(h.get("content-encoding").unwrap(), "zstd");
            assert_eq!(h.get("accept-encoding").unwrap(), "zstd, gzip");
            assert_eq!(h.get("vgi-accept-max-response-bytes").unwrap(), "268435456");
            assert_eq!(
                h.get("content-type").unwrap(),
                "application/vnd.apache.arrow.stream"
            );
        }
    }

    // Uncompressed requests carry no Content-Encoding at all (never `identity`).
    let plain = mock_client(&mock, |c| c.request_compression = None);
    plain
        .call("P", "echo", bytes_params("value", b"x"))
        .await
        .unwrap();
    let posts = mock.state.posts.lock().unwrap();
    assert!(posts.last().unwrap().1.get("content-encoding").is_none());
}

#[tokio::test]
async fn mock_budget_header_only_when_supported() {
    let mock = mock::start(mock::MockState {
        caps: vec![("VGI-Supported-Encodings", "")],
        ..Default::default()
    })
    .await;
    let client = mock_client(&mock, |_| {});
    client
        .call("P", "echo", bytes_params("value", b"x"))
        .await
        .unwrap();
    let posts = mock.state.posts.lock().unwrap();
    assert!(posts[0].1.get("vgi-accept-max-response-bytes").is_none());
}

#[tokio::test]
async fn mock_errors() {
    let mock = mock::start(mock::MockState {
        caps: standard_caps(),
        ..Default::default()
    })
    .await;
    let client = mock_client(&mock, |c| c.max_response_bytes = 100_000);
    let p = || bytes_params("value", b"x");

    match client.call("P", "flagged", p()).await {
        Err(Error::Rpc(e)) => assert_eq!(e.message, "it broke"),
        other => panic!("expected rpc error, got {other:?}"),
    }
    let err = client.call("P", "flagged_empty", p()).await.unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    match client.call("P", "json_error", p()).await {
        Err(Error::HttpStatus { status, url }) => {
            assert_eq!(status, 415);
            assert!(url.ends_with("/P/json_error"), "{url}");
        }
        other => panic!("expected http status error, got {other:?}"),
    }
    match client.call("P", "unknown", p()).await {
        Err(Error::HttpStatus { status, .. }) => assert_eq!(status, 404),
        other => panic!("expected http status error, got {other:?}"),
    }
    let err = client.call("P", "no_result", p()).await.unwrap_err();
    assert!(err.to_string().contains("no result batch"), "{err}");
    assert_too_large(
        client.call("P", "big", p()).await,
        "max_response_bytes",
        100_000,
    );
    // Bad names never reach the wire.
    assert!(client.call("P", "../health", p()).await.is_err());
    assert!(client.call("P/x", "echo", p()).await.is_err());
    // The client is still usable.
    let out = client.call("P", "echo", p()).await.unwrap();
    assert_eq!(binary_result(&out.batch), b"x");
}

#[tokio::test]
async fn mock_413_without_upload_support() {
    let mock = mock::start(mock::MockState {
        caps: vec![("VGI-Max-Request-Bytes", "1000")],
        hidden_request_cap: Some(1000),
        ..Default::default()
    })
    .await;
    let client = mock_client(&mock, |c| c.request_compression = None);
    match client
        .call("P", "echo", bytes_params("value", &noise(5000)))
        .await
    {
        Err(e @ Error::TooLarge { .. }) => {
            let text = e.to_string();
            assert!(text.contains("max_request_bytes"), "{text}");
            assert!(text.contains("does not support upload urls"), "{text}");
        }
        other => panic!("expected too large, got {other:?}"),
    }
}

#[tokio::test]
async fn mock_413_falls_back_to_upload_urls() {
    // The server supports uploads but does not advertise its cap, so only a 413 reveals it.
    let mut caps = standard_caps();
    caps.push(("VGI-Upload-URL-Support", "true"));
    let mock = mock::start(mock::MockState {
        caps,
        hidden_request_cap: Some(2000),
        ..Default::default()
    })
    .await;
    let value = noise(10_000);
    for compression in [Some(3), None] {
        let client = mock_client(&mock, |c| {
            c.request_compression = compression;
            c.fetch.policy = UrlPolicy::local_testing();
        });
        let out = client
            .call("P", "echo", bytes_params("value", &value))
            .await
            .unwrap();
        assert_eq!(binary_result(&out.batch), value);
    }
    // Per call: POST (413), upload init, pointer POST.
    let posts = mock.state.posts.lock().unwrap();
    let methods: Vec<&str> = posts.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        methods,
        vec![
            "echo",
            "__upload_url__",
            "echo",
            "echo",
            "__upload_url__",
            "echo"
        ]
    );
    // The uploaded objects are the original, uncompressed request streams.
    let objects = mock.state.objects.lock().unwrap();
    assert_eq!(objects.len(), 2);
    for object in objects.values() {
        let s = read_stream(object.clone(), ReadLimits::default()).unwrap();
        assert_eq!(s.batches[0].batch.num_rows(), 1);
        let md: &Metadata = &s.batches[0].metadata;
        assert_eq!(md[keys::METHOD], "echo");
        assert!(!md.contains_key(keys::LOCATION));
    }
}

#[tokio::test]
async fn mock_upload_urls_are_checked_against_the_policy() {
    let mut caps = standard_caps();
    caps.push(("VGI-Upload-URL-Support", "true"));
    caps.push(("VGI-Max-Request-Bytes", "2000"));
    let mock = mock::start(mock::MockState {
        caps,
        hidden_request_cap: Some(2000),
        ..Default::default()
    })
    .await;
    // The mock vends URLs on its own origin, which the client trusts; with a base URL of
    // `localhost` instead that origin differs, and the strict policy refuses plain http.
    let client = Client::new(
        &mock.base.replace("127.0.0.1", "localhost"),
        ClientConfig::default(),
    )
    .unwrap();
    let err = client
        .call_with(CallRequest::new(
            "P",
            "echo",
            bytes_params("value", &noise(5000)),
        ))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("URL rejected"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(mock.state.objects.lock().unwrap().is_empty());
}
