//! OpenTelemetry against a real OTLP receiver: oteltest's `otelsink` (scripts/test.d/
//! 45-otel-sink.env.sh installs it; `SPILLWAY_OTEL_SINK_PYTHON`), run by
//! tests/python/otel_sink.py, which writes every span it receives as a JSON line. The real
//! `spillway serve` and `spillway call` binaries export to it over OTLP/HTTP; the tests read
//! the span tree back (polling with a deadline) and check its links, names, attributes and
//! that no secret reached an attribute.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spillway::client::{CallRequest, Client, ClientConfig};

use crate::common::{blob_body, size_params, ServedBinary, BIN};

/// How long spans get to arrive (exported on exit, or by the batch processor's timer).
const SPAN_DEADLINE: Duration = Duration::from_secs(60);
/// A caller's trace context, as a vgi-rpc client or a gateway would send it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TOKEN: &str = "otel-test-s3cr3t-bearer";

/// One running `otelsink`, killed (by its pid) when dropped.
struct Sink {
    child: Child,
    port: u16,
    spans: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    fn start() -> Option<Sink> {
        let python = spillway_test_support::require_env(
            "SPILLWAY_OTEL_SINK_PYTHON",
            "the otelsink OTLP receiver (scripts/test.d/45-otel-sink.env.sh)",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let spans = dir.path().join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otel_sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&spans)
            .stdout(Stdio::piped())
            // Its request log; what it received is in the spans file.
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The script prints `port=N` once listening (or exits).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("port=").map(str::parse::<u16>);
        let Some(Ok(port)) = port else {
            let _ = child.kill();
            panic!("otelsink did not start: {line:?}");
        };
        Some(Sink {
            child,
            port,
            spans,
            _dir: dir,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls until `done` holds for the spans received, or panics after the deadline.
    fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + SPAN_DEADLINE;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {SPAN_DEADLINE:?}; received: {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn s<'a>(span: &'a Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or("")
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"][key].clone()
}

/// The one span named `name` of `service`.
fn one<'a>(spans: &'a [Value], service: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|x| s(x, "service") == service && s(x, "name") == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {found:#?}");
    found[0]
}

fn has(spans: &[Value], service: &str, name: &str) -> bool {
    spans
        .iter()
        .any(|x| s(x, "service") == service && s(x, "name") == name)
}

fn assert_child(child: &Value, parent: &Value) {
    assert_eq!(s(child, "trace_id"), s(parent, "trace_id"), "{child:#}");
    assert_eq!(
        s(child, "parent_span_id"),
        s(parent, "span_id"),
        "{} is not a child of {}",
        s(child, "name"),
        s(parent, "name")
    );
}

/// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn otel_env(sink: &Sink, service: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), sink.endpoint()),
        ("OTEL_SERVICE_NAME".into(), service.into()),
        // Exports come at exit anyway; a short timer only makes a slow machine less slow.
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ]
}

fn serve(env: &[(String, String)], dir: &tempfile::TempDir) -> ServedBinary {
    serve_logged(env, dir).0
}

/// As [`serve`], keeping the server's stderr (its `vgi_rpc.access` records).
fn serve_logged(
    env: &[(String, String)],
    dir: &tempfile::TempDir,
) -> (ServedBinary, crate::common::LogLines) {
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} alice\n")).unwrap();
    let tokens = tokens.to_str().unwrap().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("SPILLWAY_THRESHOLD_BYTES", "1024"),
        ("SPILLWAY_AUTH", "bearer"),
        ("SPILLWAY_AUTH_TOKENS_FILE", &tokens),
    ];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    ServedBinary::start_logged(&all)
}

fn stop(mut served: ServedBinary) {
    served.terminate();
    let status = served.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "spillway serve did not exit after SIGTERM"
    );
}

#[test]
fn a_call_that_externalizes_is_one_connected_trace() {
    let Some(sink) = Sink::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (served, log) = serve_logged(&otel_env(&sink, "otel-test-server"), &dir);
    let out = dir.path().join("out.arrow");
    let call = Command::new(BIN)
        .args(["call", "--url", &served.url, "-o"])
        .arg(&out)
        .args(["spillway.Demo.v1.blob", "size=300000"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPILLWAY_TOKEN", TOKEN)
        .envs(otel_env(&sink, "otel-test-cli"))
        .output()
        .unwrap();
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert!(String::from_utf8_lossy(&call.stderr).contains("externalized"));
    // The server exports what is left when it exits after SIGTERM.
    stop(served);
    let wanted = [
        ("otel-test-cli", "vgi_rpc/blob"),
        ("otel-test-cli", "vgi_rpc.external/fetch"),
        ("otel-test-cli", "vgi_rpc.external/probe"),
        ("otel-test-cli", "vgi_rpc.external/range"),
        ("otel-test-server", "vgi_rpc/blob"),
        ("otel-test-server", "spillway.externalize"),
        ("otel-test-server", "vgi_rpc.external/encode"),
        ("otel-test-server", "vgi_rpc.external/upload"),
    ];
    let spans = sink.wait_for("connected trace", |spans| {
        wanted.iter().all(|(svc, name)| has(spans, svc, name))
    });

    // `spillway call` first asks reflection for the method's type; those calls (which
    // externalize too at this threshold) are traces of their own. Look at the blob call's.
    let client = one(&spans, "otel-test-cli", "vgi_rpc/blob").clone();
    let spans: Vec<Value> = spans
        .iter()
        .filter(|x| s(x, "trace_id") == s(&client, "trace_id"))
        .cloned()
        .collect();
    let client = &client;
    let server = one(&spans, "otel-test-server", "vgi_rpc/blob");
    let externalize = one(&spans, "otel-test-server", "spillway.externalize");
    let encode = one(&spans, "otel-test-server", "vgi_rpc.external/encode");
    let upload = one(&spans, "otel-test-server", "vgi_rpc.external/upload");
    let fetch = one(&spans, "otel-test-cli", "vgi_rpc.external/fetch");
    let probe = one(&spans, "otel-test-cli", "vgi_rpc.external/probe");

    // client → server → externalize → encode, upload; client → fetch → probe, ranges.
    assert_eq!(
        s(client, "parent_span_id"),
        "",
        "the client span is the root"
    );
    assert_eq!(client["kind"], CLIENT);
    assert_eq!(server["kind"], SERVER);
    assert_child(server, client);
    assert_child(externalize, server);
    assert_child(encode, externalize);
    assert_child(upload, externalize);
    assert_child(fetch, client);
    assert_child(probe, fetch);
    let ranges: Vec<&Value> = spans
        .iter()
        .filter(|x| s(x, "name") == "vgi_rpc.external/range")
        .collect();
    assert!(!ranges.is_empty());
    for r in &ranges {
        assert_child(r, fetch);
    }
    // Sizes and status codes arrive as OTLP integers, not strings.
    assert!(
        attr(externalize, "raw_bytes").as_i64().unwrap_or(0) > 300_000,
        "{externalize:#}"
    );
    assert_eq!(attr(server, "http.response.status_code"), 200, "{server:#}");
    assert!(attr(fetch, "bytes").as_i64().is_some(), "{fetch:#}");
    assert!(attr(client, "server.port").as_i64().is_some(), "{client:#}");
    let trace = s(client, "trace_id");
    assert_eq!(trace.len(), 32);
    // The call's access record names its trace and server span: the join key between the
    // log and the trace.
    let records: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["logger"] == "vgi_rpc.access" && r["method"] == "blob")
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["trace_id"], trace, "{records:#?}");
    assert_eq!(records[0]["span_id"], s(server, "span_id"), "{records:#?}");
    // With the trace fields in, the records still pass the reference's own validator.
    if let Some(python) = crate::common::vgi_python() {
        let file = dir.path().join("server.log");
        std::fs::write(&file, log.lock().unwrap().join("\n")).unwrap();
        let validated = Command::new(&python)
            .args(["-m", "vgi_rpc.access_log_conformance"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            validated.status.success(),
            "{}{}",
            String::from_utf8_lossy(&validated.stdout),
            String::from_utf8_lossy(&validated.stderr)
        );
    }
    for x in &spans {
        assert_eq!(s(x, "trace_id"), trace, "one trace: {x:#}");
    }

    for span in [client, server] {
        assert_eq!(attr(span, "rpc.system"), "vgi_rpc");
        assert_eq!(attr(span, "rpc.service"), "spillway.Demo.v1");
        assert_eq!(attr(span, "rpc.method"), "blob");
    }
    assert!(attr(server, "rpc.vgi_rpc.request_id")
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(attr(server, "rpc.vgi_rpc.error"), false);
    // OTLP status code 1: OK.
    assert_eq!(server["status"], 1);
    assert_eq!(client["status"], 1);
    let url = attr(upload, "url");
    let url = url.as_str().unwrap();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/__storage__/") && !url.contains('?'),
        "{url}"
    );

    // No secret in any attribute: the bearer token, the presigned URL's signature, any query.
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains(TOKEN), "the bearer token reached a span");
    assert!(
        !text.contains("X-Spillway-Signature"),
        "a signature reached a span"
    );
    for x in &spans {
        for (k, v) in x["attributes"].as_object().unwrap() {
            if let Some(v) = v.as_str() {
                assert!(
                    !(v.starts_with("http") && v.contains('?')),
                    "{k} = {v}: a URL attribute with a query string"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_callers_trace_context_is_continued_from_the_header_and_the_metadata() {
    let Some(sink) = Sink::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&otel_env(&sink, "otel-test-continue"), &dir);
    let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");

    // The header (a plain HTTP caller, a gateway): a raw POST with `traceparent`.
    let resp = reqwest::Client::new()
        .post(format!("{}/spillway.Demo.v1/blob", served.url))
        .header("content-type", "application/vnd.apache.arrow.stream")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("traceparent", &tp)
        .header("tracestate", "vendor=1")
        .body(blob_body(10))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());

    // The request metadata (the reference client's way), from this process, which has no
    // OpenTelemetry layer: the library client sends what it is given.
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let other_parent = "b7ad6b7169203331";
    let client = Client::new(
        &served.url,
        ClientConfig {
            token: Some(std::sync::Arc::new(
                spillway::client::BearerToken::new(TOKEN).unwrap(),
            )),
            ..Default::default()
        },
    )
    .unwrap();
    let request = CallRequest::new("spillway.Demo.v1", "blob", size_params(10))
        .with_metadata("traceparent", format!("00-{other_trace}-{other_parent}-01"));
    client.call_with(request).await.unwrap();
    stop(served);

    let spans = sink.wait_for("two server spans", |spans| {
        spans
            .iter()
            .filter(|x| s(x, "name") == "vgi_rpc/blob")
            .count()
            >= 2
    });
    let by_header = spans
        .iter()
        .find(|x| s(x, "trace_id") == TRACE_ID)
        .unwrap_or_else(|| panic!("no span continues the header's trace: {spans:#?}"));
    assert_eq!(s(by_header, "name"), "vgi_rpc/blob");
    assert_eq!(s(by_header, "parent_span_id"), PARENT_ID);
    assert_eq!(by_header["kind"], SERVER);
    let by_metadata = spans
        .iter()
        .find(|x| s(x, "trace_id") == other_trace)
        .unwrap_or_else(|| panic!("no span continues the metadata's trace: {spans:#?}"));
    assert_eq!(s(by_metadata, "name"), "vgi_rpc/blob");
    assert_eq!(s(by_metadata, "parent_span_id"), other_parent);
}

#[test]
fn with_export_switched_off_nothing_reaches_the_receiver() {
    let Some(sink) = Sink::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The endpoint names the receiver, but the SDK is disabled: no layer, no exporter.
    let mut off = otel_env(&sink, "otel-test-off");
    off.push(("OTEL_SDK_DISABLED".into(), "true".into()));
    let served = serve(&off, &dir);
    let call = Command::new(BIN)
        .args(["call", "--url", &served.url, "-o"])
        .arg(dir.path().join("off.arrow"))
        .args(["spillway.Demo.v1.blob", "size=300000"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPILLWAY_TOKEN", TOKEN)
        .envs(off.clone())
        .output()
        .unwrap();
    assert!(call.status.success());
    // Both exited (a disabled exporter would have flushed on exit); then a server with export
    // on shows the receiver works, and that nothing of the first one arrived before.
    stop(served);
    let served = serve(&otel_env(&sink, "otel-test-on"), &dir);
    let status = Command::new(BIN)
        .args([
            "call",
            "--url",
            &served.url,
            "spillway.Demo.v1.blob",
            "size=10",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPILLWAY_TOKEN", TOKEN)
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    stop(served);
    let spans = sink.wait_for("the enabled server's span", |spans| {
        has(spans, "otel-test-on", "vgi_rpc/blob")
    });
    assert!(
        spans.iter().all(|x| s(x, "service") != "otel-test-off"),
        "spans were exported with OTEL_SDK_DISABLED=true: {spans:#?}"
    );
}

#[test]
fn a_request_that_travels_through_an_upload_url_is_read_inside_the_calls_trace() {
    let Some(sink) = Sink::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&sink, "otel-test-server");
    // Above this the client uploads the request and sends a pointer to it.
    env.push(("SPILLWAY_MAX_REQUEST_BYTES".into(), "65536".into()));
    let served = serve(&env, &dir);
    let input = dir.path().join("in.bin");
    std::fs::write(&input, crate::common::generated_bytes(300_000, 13)).unwrap();
    let call = Command::new(BIN)
        .args(["call", "--url", &served.url, "spillway.Demo.v1.echo"])
        .arg(format!("data:binary=@{}", input.display()))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPILLWAY_TOKEN", TOKEN)
        .envs(otel_env(&sink, "otel-test-cli"))
        .output()
        .unwrap();
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    stop(served);
    let spans = sink.wait_for("the request pointer's read", |spans| {
        has(spans, "otel-test-cli", "vgi_rpc/echo")
            && has(spans, "otel-test-server", "spillway.request_pointer/read")
    });
    let client = one(&spans, "otel-test-cli", "vgi_rpc/echo").clone();
    let spans: Vec<Value> = spans
        .iter()
        .filter(|x| s(x, "trace_id") == s(&client, "trace_id"))
        .cloned()
        .collect();
    let server = one(&spans, "otel-test-server", "vgi_rpc/echo");
    let read = one(&spans, "otel-test-server", "spillway.request_pointer/read");
    assert_child(server, &client);
    assert_child(read, server);
    let url = attr(read, "url.full");
    let url = url.as_str().unwrap_or("");
    assert!(url.starts_with("http://127.0.0.1:"), "{read:#}");
    assert!(
        !url.contains('?'),
        "a signed query string in a span: {read:#}"
    );
}
