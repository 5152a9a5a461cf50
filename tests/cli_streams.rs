//! `spillway describe` and `spillway call` on unary, producer and exchange methods, as real
//! processes: against `spillway serve` (the demo protocol: `blob_stream` is a producer whose
//! batches externalize when large) and against a server hosting an exchange with a header.
//! Each output format, `--output` files read back, the header shown, and the failure paths:
//! unknown method, bad parameters, a server without reflection.

use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Float64Array, RecordBatch};
use arrow_schema::DataType;
use spillway::server::{Protocol, Server, ServerConfig};
use spillway::wire::{read_streams, IpcStream};

use crate::common::{ServedBinary, TestServer, BIN};
use crate::streams::schema;

/// `spillway ARGS... --url URL`, nothing inherited but `PATH`.
fn spillway(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--url")
        .arg(url)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

/// [`spillway`] off the async runtime (for servers the test's runtime serves).
async fn spillway_async(url: &str, args: &[&str]) -> Output {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spillway(&url, &args)
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", explain(&out));
    out
}

/// A failure reported as one `error: ` line (the last, after any per-batch progress lines)
/// naming every `needle`.
fn fails_with(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "{}", explain(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{}", explain(out));
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("error: "), "{}", explain(out));
    assert!(!err.contains("panicked"), "{}", explain(out));
    for n in needles {
        assert!(last.contains(n), "{n:?} missing: {}", explain(out));
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn read_arrow(bytes: Vec<u8>) -> Vec<IpcStream> {
    read_streams(bytes.into(), Default::default()).unwrap()
}

fn index_and_sizes(stream: &IpcStream) -> Vec<(i64, usize)> {
    stream
        .batches
        .iter()
        .map(|b| {
            let b = &b.batch;
            (
                b.column(0).as_primitive::<Int64Type>().value(0),
                b.column(1).as_binary::<i32>().value(0).len(),
            )
        })
        .collect()
}

#[test]
fn describe_shows_protocols_and_methods_in_table_and_json() {
    let s = ServedBinary::start(&[]);
    let out = ok(spillway(&s.url, &["describe"]));
    let text = stdout(&out);
    for needle in [
        "protocols:",
        "  spillway.Demo.v1  hash ",
        "  vgi_rpc.Reflection.v1  hash ",
        "spillway.Demo.v1:",
        "  blob (unary)\n    params: size: int64\n    returns: result: binary",
        "  blob_stream (producer)\n    params: count: int64, size: int64",
        "  echo (unary)\n    params: data: binary",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    // Reflection's own methods only when asked for.
    assert!(!text.contains("list_protocols"), "{text}");
    let out = ok(spillway(&s.url, &["describe", "vgi_rpc.Reflection.v1"]));
    assert!(
        stdout(&out).contains("  describe (unary)\n    params: protocol: utf8"),
        "{}",
        stdout(&out)
    );

    let out = ok(spillway(&s.url, &["describe", "--format", "json"]));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(!doc["server_id"].as_str().unwrap().is_empty());
    assert_eq!(doc["request_version"], "1");
    let protocols: Vec<&str> = doc["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["spillway.Demo.v1", "vgi_rpc.Reflection.v1"]);
    let demo = &doc["protocols"][0];
    assert_eq!(demo["protocol_hash"].as_str().unwrap().len(), 64);
    let methods: Vec<(&str, &str)> = demo["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        methods,
        [
            ("blob", "unary"),
            ("blob_stream", "producer"),
            ("echo", "unary")
        ]
    );
    let blob_stream = &demo["methods"][1];
    assert_eq!(blob_stream["method_type"], "stream");
    assert_eq!(
        blob_stream["params"],
        serde_json::json!([
            {"name": "count", "type": "int64", "nullable": false},
            {"name": "size", "type": "int64", "nullable": false},
        ])
    );
    assert_eq!(blob_stream["result"], serde_json::Value::Null);
    assert_eq!(
        demo["methods"][0]["result"],
        serde_json::json!([{"name": "result", "type": "binary", "nullable": false}])
    );

    // One protocol only, and one not hosted.
    let out = ok(spillway(
        &s.url,
        &["describe", "-f", "json", "spillway.Demo.v1"],
    ));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["protocols"].as_array().unwrap().len(), 1);
    fails_with(
        &spillway(&s.url, &["describe", "nope.v1"]),
        &[
            "\"nope.v1\" is not hosted",
            "spillway.Demo.v1, vgi_rpc.Reflection.v1",
        ],
    );
}

#[test]
fn unary_results_in_each_format() {
    let s = ServedBinary::start(&[]);
    let out = ok(spillway(
        &s.url,
        &["call", "spillway.Demo.v1.echo", "data=hello"],
    ));
    assert!(
        stdout(&out).contains("| result: Binary"),
        "{}",
        explain(&out)
    );
    assert!(stdout(&out).contains("68656c6c6f"), "{}", explain(&out));

    // A bare method name is the primary protocol's.
    let out = ok(spillway(
        &s.url,
        &["call", "echo", "data=hello", "-f", "json"],
    ));
    assert_eq!(
        json_lines(&out),
        [serde_json::json!({"result": "68656c6c6f"})]
    );

    // Arrow on stdout (not a terminal here), and into --output.
    let out = ok(spillway(
        &s.url,
        &["call", "echo", "data=hi", "--format", "arrow"],
    ));
    let streams = read_arrow(out.stdout.clone());
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0].batches[0]
            .batch
            .column(0)
            .as_binary::<i32>()
            .value(0),
        b"hi"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("echo.json");
    let out = ok(spillway(
        &s.url,
        &[
            "call",
            "echo",
            "data=hi",
            "-f",
            "json",
            "-o",
            file.to_str().unwrap(),
        ],
    ));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"result\":\"6869\"}\n"
    );
}

#[test]
fn producer_batches_are_printed_and_appended_as_they_arrive() {
    let s = ServedBinary::start(&[]);
    let target = "spillway.Demo.v1.blob_stream";

    let out = ok(spillway(&s.url, &["call", target, "count=3", "size=4"]));
    assert_eq!(
        stdout(&out)
            .matches("| index: Int64 | data: Binary")
            .count(),
        3,
        "{}",
        explain(&out)
    );
    for n in 0..3 {
        assert!(
            stderr(&out).contains(&format!("batch {n}: 1 row, inline")),
            "{}",
            explain(&out)
        );
    }
    assert!(stderr(&out).contains("3 batches"), "{}", explain(&out));

    let out = ok(spillway(
        &s.url,
        &["call", target, "count=3", "size=2", "--format", "json"],
    ));
    let rows = json_lines(&out);
    let seen: Vec<(i64, usize)> = rows
        .iter()
        .map(|r| {
            (
                r["index"].as_i64().unwrap(),
                r["data"].as_str().unwrap().len() / 2,
            )
        })
        .collect();
    assert_eq!(seen, [(0, 2), (1, 2), (2, 2)]);

    // Externalized batches (2 MB each) are resolved, and every one lands in --output.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blobs.arrows");
    let out = ok(spillway(
        &s.url,
        &[
            "call",
            target,
            "count=3",
            "size=2000000",
            "--output",
            file.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        stderr(&out).matches("externalized result").count(),
        3,
        "{}",
        explain(&out)
    );
    assert!(stderr(&out).contains("wrote "), "{}", explain(&out));
    let streams = read_arrow(std::fs::read(&file).unwrap());
    assert_eq!(streams.len(), 1);
    assert_eq!(
        index_and_sizes(&streams[0]),
        [(0, 2_000_000), (1, 2_000_000), (2, 2_000_000)]
    );
    for (k, b) in streams[0].batches.iter().enumerate() {
        assert_eq!(
            b.batch.column(1).as_binary::<i32>().value(0),
            spillway::demo::generate_blob(2_000_000, k as u64).as_slice()
        );
    }

    // A producer without batches still writes a valid (empty) stream.
    let out = ok(spillway(
        &s.url,
        &["call", target, "count=0", "size=1", "-f", "arrow"],
    ));
    let streams = read_arrow(out.stdout.clone());
    assert_eq!(streams.len(), 1);
    assert!(streams[0].batches.is_empty());
    assert_eq!(streams[0].schema.fields().len(), 2);
}

#[test]
fn call_errors_name_what_is_wrong() {
    let s = ServedBinary::start(&[]);
    fails_with(
        &spillway(&s.url, &["call", "spillway.Demo.v1.nope"]),
        &["unknown method \"nope\"", "blob, blob_stream, echo"],
    );
    fails_with(
        &spillway(&s.url, &["call", "spillway.Demo.v1.blob", "sise=1"]),
        &["unknown parameter \"sise\" of blob", "it takes size: int64"],
    );
    fails_with(
        &spillway(&s.url, &["call", "spillway.Demo.v1.blob", "size=big"]),
        &["parameter size: \"big\" is not a valid int64"],
    );
    fails_with(
        &spillway(&s.url, &["call", "spillway.Demo.v1.blob", "size:utf8=1"]),
        &["blob takes int64, not utf8"],
    );
    fails_with(
        &spillway(&s.url, &["call", "other.v1.blob"]),
        &["\"other.v1\" is not hosted"],
    );
    fails_with(
        &spillway(
            &s.url,
            &["call", "spillway.Demo.v1.blob", "size=1", "--send", "x=1"],
        ),
        &["blob is a unary method: --input and --send are for exchanges"],
    );
    // A server-side error in a stream.
    fails_with(
        &spillway(&s.url, &["call", "blob_stream", "count=-1", "size=1"]),
        &["count and size must be >= 0"],
    );
}

#[test]
fn without_reflection_describe_says_why_and_call_needs_the_kind() {
    let s = ServedBinary::start(&[("SPILLWAY_REFLECTION", "false")]);
    fails_with(
        &spillway(&s.url, &["describe"]),
        &[
            "vgi_rpc.Reflection.v1",
            "SPILLWAY_REFLECTION may be off",
            "--kind",
        ],
    );
    // Unary calls work as before (the default), with inferred types.
    let out = ok(spillway(
        &s.url,
        &["call", "spillway.Demo.v1.blob", "size=3"],
    ));
    assert!(stderr(&out).contains("inline result"), "{}", explain(&out));
    // A stream sent as unary fails with the way out in the message.
    fails_with(
        &spillway(
            &s.url,
            &["call", "spillway.Demo.v1.blob_stream", "count=1", "size=1"],
        ),
        &[
            "SPILLWAY_REFLECTION may be off",
            "--kind unary|producer|exchange",
        ],
    );
    let out = ok(spillway(
        &s.url,
        &[
            "call",
            "spillway.Demo.v1.blob_stream",
            "count=2",
            "size=1",
            "--kind",
            "producer",
            "-f",
            "json",
        ],
    ));
    assert_eq!(json_lines(&out).len(), 2, "{}", explain(&out));
    fails_with(
        &spillway(&s.url, &["call", "blob", "size=1"]),
        &["a bare method name needs reflection"],
    );
}

async fn exchange_server() -> TestServer {
    let protocol = Protocol::new("test.Scale.v1")
        .unwrap()
        .stream("scale", crate::streams::scaler());
    TestServer::start_server(
        Server::new(ServerConfig::default())
            .with_protocol(protocol)
            .with_reflection(true),
    )
    .await
}

fn values_of(stream: &IpcStream) -> Vec<f64> {
    stream
        .batches
        .iter()
        .flat_map(|b| {
            b.batch
                .column(0)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_input_from_rows_json_lines_and_arrow_with_the_header_shown() {
    let s = exchange_server().await;
    let url = s.origin();

    let out = ok(spillway_async(&url, &["describe"]).await);
    assert!(
        stdout(&out).contains(
            "  scale (exchange)\n    params: factor: float64\n    header: description: utf8"
        ),
        "{}",
        explain(&out)
    );

    // --send rows, JSON lines out: the header first, then one line per output row.
    let out = ok(spillway_async(
        &url,
        &[
            "call",
            "test.Scale.v1.scale",
            "factor=2",
            "--send",
            "value=1.5",
            "--send",
            "value=4.0",
            "-f",
            "json",
        ],
    )
    .await);
    assert_eq!(
        json_lines(&out),
        [
            serde_json::json!({"__header__": {"description": "x2"}}),
            serde_json::json!({"value": 3.0}),
            serde_json::json!({"value": 8.0}),
        ]
    );
    assert!(
        stderr(&out).contains("header: 1 row, inline"),
        "{}",
        explain(&out)
    );

    // JSON lines in (from a file), a table out: the header table, then one per step.
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("in.jsonl");
    std::fs::write(&lines, "{\"value\": 1.5}\n\n{\"value\": 2.5}\n").unwrap();
    let out = ok(spillway_async(
        &url,
        &[
            "call",
            "scale",
            "factor=10",
            "--input",
            lines.to_str().unwrap(),
        ],
    )
    .await);
    let text = stdout(&out);
    assert!(text.starts_with("header:\n"), "{text}");
    assert!(text.contains("| x10 "), "{text}");
    assert!(
        text.contains("| 15.0 ") && text.contains("| 25.0 "),
        "{text}"
    );

    // Arrow IPC in, Arrow out to a file: the header stream, then the data stream.
    let input = dir.path().join("in.arrows");
    let batches: Vec<_> = [vec![1.0, 2.0], vec![3.0]]
        .into_iter()
        .map(|v| {
            spillway::wire::MetaBatch::plain(
                RecordBatch::try_new(
                    schema(&[("value", DataType::Float64)]),
                    vec![Arc::new(Float64Array::from(v))],
                )
                .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        &input,
        spillway::wire::write_stream(&schema(&[("value", DataType::Float64)]), &batches).unwrap(),
    )
    .unwrap();
    let output = dir.path().join("out.arrows");
    let out = ok(spillway_async(
        &url,
        &[
            "call",
            "scale",
            "factor=3",
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ],
    )
    .await);
    assert!(stderr(&out).contains("2 batches"), "{}", explain(&out));
    let streams = read_arrow(std::fs::read(&output).unwrap());
    assert_eq!(streams.len(), 2);
    assert_eq!(
        streams[0].batches[0]
            .batch
            .column(0)
            .as_string::<i32>()
            .value(0),
        "x3"
    );
    assert_eq!(values_of(&streams[1]), [3.0, 6.0, 9.0]);
    assert_eq!(streams[1].batches.len(), 2);

    // Failures: no input, a failing step, unreadable input.
    fails_with(
        &spillway_async(&url, &["call", "scale", "factor=1"]).await,
        &["scale is an exchange", "--input FILE", "--send ROW"],
    );
    fails_with(
        &spillway_async(&url, &["call", "scale", "factor=1", "--send", "value=-1.0"]).await,
        &["ValueError: negative input"],
    );
    std::fs::write(&lines, "{\"value\": 1.5}\nnot json\n").unwrap();
    fails_with(
        &spillway_async(
            &url,
            &["call", "scale", "factor=1", "-i", lines.to_str().unwrap()],
        )
        .await,
        &["input line 2: not json"],
    );
}
