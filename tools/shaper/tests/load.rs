//! `spillway-bench load` against real servers: the CI smoke (a short verified run of every
//! demo call kind against a `spillway serve` process with the embedded store, and of
//! `echo_string` against the Python reference's conformance worker) and its failure paths: an
//! unexpected error, a wrong answer, an unreachable server fail the run; overload rejections
//! are counted apart and fail it only when asked.
//!
//! The `spillway` binary comes from the same target directory as `spillway-bench` (`cargo
//! test --workspace`, as `./scripts/test.sh` runs, builds both); `SPILLWAY_BIN` names another.
//! Alone: `cargo build --bin spillway && cargo test -p spillway-shaper --test load`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use serde_json::Value;
use spillway::server::{Protocol, Server, ServerConfig};
use spillway::wire::RpcError;

const BENCH: &str = env!("CARGO_BIN_EXE_spillway-bench");

/// How long `spillway serve` gets to print its startup line, and a bench run to end.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The smoke's sizes: small, but above the limits below, so that the echo goes through the
/// upload-URL flow and blobs and stream batches are externalized.
const LIMIT: u64 = 65_536;
const ECHO_BYTES: u64 = 4 * LIMIT;
const BLOB_BYTES: u64 = 4 * LIMIT;
const STREAM_COUNT: u64 = 3;
const STREAM_BYTES: u64 = 2 * LIMIT;

/// The `spillway` binary, or `None` (skipped, or failed under `SPILLWAY_REQUIRE_SERVERS=1`)
/// when it is not built.
fn spillway_bin() -> Option<PathBuf> {
    let path = std::env::var_os("SPILLWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BENCH).with_file_name("spillway"));
    if path.is_file() {
        return Some(path);
    }
    spillway_test_support::skip_or_fail(&format!(
        "the spillway binary is not built at {} (cargo build --bin spillway, or set SPILLWAY_BIN)",
        path.display()
    ));
    None
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A `spillway serve` process with a private object directory, killed when dropped.
struct Served {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(bin: &PathBuf) -> Served {
        Served::start_with(bin, &[])
    }

    /// As [`Served::start`], with `env` on top.
    fn start_with(bin: &PathBuf, env: &[(&str, &str)]) -> Served {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SPILLWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SPILLWAY_LOCAL_DIR", dir.path())
            .env("SPILLWAY_MAX_REQUEST_BYTES", LIMIT.to_string())
            .env("SPILLWAY_THRESHOLD_BYTES", LIMIT.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Drained to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("spillway serving") => break,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("spillway serve did not start");
                }
            }
        }
        Served {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One `spillway-bench load` run.
struct Run {
    status: std::process::ExitStatus,
    /// The `--json-file` report (`Null` when none was written).
    report: Value,
    /// The table (or, with `--json`, the JSON report).
    stdout: String,
    stderr: String,
}

/// Runs `spillway-bench load ARGS... --json-file <temp file>`.
async fn run_load(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let child = tokio::process::Command::new(BENCH)
        .arg("load")
        .args(args)
        .arg("--json-file")
        .arg(&json)
        // Nothing inherited but PATH: no proxy variables, no SPILLWAY_*.
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("spillway-bench load did not end")
        .unwrap();
    let report = std::fs::read(&json)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or(Value::Null);
    Run {
        status: out.status,
        report,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The exit status, the JSON report and stderr of one run.
async fn load(args: &[&str]) -> (std::process::ExitStatus, Value, String) {
    let run = run_load(args).await;
    (run.status, run.report, run.stderr)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The sum of every sample of `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_mix_of_every_demo_call_passes_against_spillway_serve() {
    let Some(bin) = spillway_bin() else { return };
    let server = Served::start(&bin);
    let pid = server.pid().to_string();
    let (echo, blob, count, size) = (
        ECHO_BYTES.to_string(),
        BLOB_BYTES.to_string(),
        STREAM_COUNT.to_string(),
        STREAM_BYTES.to_string(),
    );
    let run = run_load(&[
        "--url",
        &server.url,
        "--clients",
        "8",
        "--duration",
        "3s",
        "--mix",
        "small=40,echo=20,blob=20,stream=20",
        "--echo-bytes",
        &echo,
        "--blob-bytes",
        &blob,
        "--stream-count",
        &count,
        "--stream-bytes",
        &size,
        "--verify",
        "--server-pid",
        &pid,
    ])
    .await;
    let Run {
        status,
        report,
        stdout: table,
        stderr,
    } = run;
    assert!(status.success(), "{status}: {report:#}\n{stderr}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["verify"], true);
    // The table has a row per kind and one for all, and the verdict.
    for kind in ["small", "echo", "blob", "stream", "all"] {
        assert!(table.contains(&format!("\n| {kind} | ")), "{table}");
    }
    assert!(table.ends_with("result: PASS\n"), "{table}");
    for kind in ["small", "echo", "blob", "stream"] {
        let k = &report["kinds"][kind];
        assert!(n(&k["ok"]) > 0, "no {kind} call succeeded: {report:#}");
        for zero in ["errors", "wrong", "rejected"] {
            assert_eq!(n(&k[zero]), 0, "{kind} {zero}: {report:#}");
        }
        assert_eq!(n(&k["calls"]), n(&k["ok"]), "{kind}: {report:#}");
        let p50 = k["latency_ms"]["p50"].as_f64().unwrap();
        let max = k["latency_ms"]["max"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{kind}: {report:#}");
    }
    // Bytes moved are the payloads, exactly.
    let kinds = &report["kinds"];
    let ok = |kind: &str| n(&kinds[kind]["ok"]);
    assert_eq!(n(&kinds["echo"]["bytes_up"]), ok("echo") * ECHO_BYTES);
    assert_eq!(n(&kinds["echo"]["bytes_down"]), ok("echo") * ECHO_BYTES);
    assert_eq!(n(&kinds["small"]["bytes_up"]), ok("small") * 64);
    assert_eq!(n(&kinds["blob"]["bytes_down"]), ok("blob") * BLOB_BYTES);
    assert_eq!(
        n(&kinds["stream"]["bytes_down"]),
        ok("stream") * STREAM_COUNT * STREAM_BYTES
    );
    let total: u64 = ["small", "echo", "blob", "stream"]
        .iter()
        .map(|k| ok(k))
        .sum();
    assert_eq!(n(&report["total"]["ok"]), total);
    // The server's memory was sampled; the peak is the larger of the samples and VmHWM.
    let rss = &report["server"];
    assert_eq!(n(&rss["pid"]), u64::from(server.pid()));
    assert!(n(&rss["samples"]) > 0, "{rss}");
    assert!(n(&rss["sampled_peak_rss_bytes"]) > 0, "{rss}");
    let peak = n(&rss["peak_rss_bytes"]);
    assert_eq!(
        peak,
        n(&rss["sampled_peak_rss_bytes"]).max(n(&rss["vm_hwm_bytes"])),
        "{rss}"
    );
    assert_eq!(rss["exited"], false);
    // The calls took the paths their kinds are for: upload URLs for the echo, objects in
    // the store for blobs, stream batches and echo results.
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let grants = metric(&page, "spillway_upload_url_grants_total");
    assert!(
        grants >= ok("echo") as f64,
        "{grants} upload grants\n{page}"
    );
    let objects = metric(&page, "spillway_externalized_objects_total");
    let want = ok("blob") + ok("echo") + ok("stream") * STREAM_COUNT;
    assert!(
        objects >= want as f64,
        "{objects} objects, want {want}\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_error_fails_the_run() {
    let Some(bin) = spillway_bin() else { return };
    let server = Served::start(&bin);
    let run = run_load(&[
        "--url",
        &server.url,
        "--clients",
        "2",
        "--duration",
        "1s",
        "--mix",
        "small=1",
        "--protocol",
        "no.such.Protocol.v1",
        "--json",
    ])
    .await;
    let Run {
        status,
        report,
        stdout,
        stderr,
    } = run;
    assert_eq!(status.code(), Some(1), "{report:#}\n{stderr}");
    // --json prints the same report as --json-file writes.
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), report);
    assert_eq!(report["passed"], false);
    let small = &report["kinds"]["small"];
    assert_eq!(n(&small["ok"]), 0, "{report:#}");
    assert!(n(&small["errors"]) > 0, "{report:#}");
    assert_eq!(n(&small["errors"]), n(&small["calls"]), "{report:#}");
    let labels = small["error_kinds"].as_object().unwrap();
    assert!(labels.keys().any(|l| l.starts_with("rpc ")), "{labels:?}");
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .contains("unexpected errors"),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_is_sent_and_never_shown() {
    let Some(bin) = spillway_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "load-token-8f3a2c load-tester\n").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "load-token-8f3a2c\n").unwrap();
    let tokens_path = tokens.to_str().unwrap();
    let server = Served::start_with(
        &bin,
        &[
            ("SPILLWAY_AUTH", "bearer"),
            ("SPILLWAY_AUTH_TOKENS_FILE", tokens_path),
        ],
    );
    let run = |token_args: Vec<String>| {
        let mut args = vec![
            "--url".to_string(),
            server.url.clone(),
            "--clients".into(),
            "2".into(),
            "--duration".into(),
            "1s".into(),
            "--mix".into(),
            "small=1".into(),
        ];
        args.extend(token_args);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            load(&args).await
        }
    };
    let (status, report, stderr) = run(vec![
        "--token-file".into(),
        token_file.to_str().unwrap().into(),
    ])
    .await;
    assert!(status.success(), "{status}: {report:#}\n{stderr}");
    assert!(n(&report["kinds"]["small"]["ok"]) > 0, "{report:#}");

    // A wrong token: every call refused (the capability probe is not authenticated), the
    // refusal counted by its reason, the token nowhere in the output.
    let wrong = "wrong-token-5d1e9b";
    let (status, report, stderr) = run(vec!["--token".into(), wrong.into()]).await;
    assert_eq!(status.code(), Some(1), "{report:#}\n{stderr}");
    let small = &report["kinds"]["small"];
    assert_eq!(n(&small["errors"]), n(&small["calls"]), "{report:#}");
    assert!(
        small["error_kinds"]["unauthorized invalid_credential"]["count"].as_u64() > Some(0),
        "{report:#}"
    );
    let shown = format!("{report}{stderr}");
    assert!(!shown.contains(wrong), "{shown}");
}

/// `spillway.Demo.v1.echo` answering with its input's last byte flipped: a server that gives
/// wrong answers of the right length.
fn corrupting_echo() -> Protocol {
    Protocol::new(spillway::demo::PROTOCOL).unwrap().unary(
        "echo",
        spillway::demo::echo_params(),
        spillway::demo::binary_result(),
        |_ctx, params: RecordBatch| async move {
            let mut data = params
                .column(0)
                .as_binary_opt::<i32>()
                .map(|a| a.value(0).to_vec())
                .ok_or_else(|| RpcError::invalid_argument("data must be binary"))?;
            if let Some(last) = data.last_mut() {
                *last ^= 0x01;
            }
            spillway::demo::binary_result_batch(data)
        },
    )
}

/// Serves `router` on 127.0.0.1 in this process; returns its URL.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_byte_fails_the_verified_run() {
    let router = Server::new(ServerConfig::default())
        .with_protocol(corrupting_echo())
        .router();
    let url = serve(router).await;
    let Run {
        status,
        report,
        stdout,
        stderr,
    } = run_load(&[
        "--url",
        &url,
        "--clients",
        "2",
        "--duration",
        "1s",
        "--mix",
        "small=1",
        "--verify",
    ])
    .await;
    assert_eq!(status.code(), Some(1), "{report:#}\n{stderr}");
    let small = &report["kinds"]["small"];
    assert_eq!(n(&small["ok"]), 0, "{report:#}");
    assert_eq!(n(&small["errors"]), 0, "{report:#}");
    assert!(n(&small["wrong"]) > 0, "{report:#}");
    let example = small["wrong_examples"][0].as_str().unwrap();
    assert_eq!(example, "echo: wrong byte at offset 63 of 64", "{report:#}");
    assert!(
        stdout.contains("wrong small: echo: wrong byte at offset 63 of 64"),
        "{stdout}"
    );
    assert!(stdout.contains("result: FAIL: "), "{stdout}");
    assert!(stdout.contains(" wrong answers"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_rejections_are_counted_apart_and_fail_only_when_asked() {
    use axum::http::{header, Method, StatusCode};
    use axum::response::IntoResponse;
    // The capability probe answered; every call refused as an overloaded server refuses it.
    let router = axum::Router::new().fallback(|method: Method| async move {
        if method == Method::OPTIONS {
            return StatusCode::OK.into_response();
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "overloaded",
        )
            .into_response()
    });
    let url = serve(router).await;
    let args = [
        "--url",
        &url,
        "--clients",
        "2",
        "--duration",
        "1s",
        "--mix",
        "small=1",
        "--rejection-pause",
        "20ms",
    ];
    let (status, report, stderr) = load(&args).await;
    assert!(status.success(), "{status}: {report:#}\n{stderr}");
    let small = &report["kinds"]["small"];
    assert!(n(&small["rejected"]) > 0, "{report:#}");
    assert_eq!(n(&small["rejected"]), n(&small["calls"]), "{report:#}");
    assert_eq!(n(&small["errors"]), 0, "{report:#}");
    assert!(
        small["rejection_kinds"]["http 503"]["count"].as_u64() > Some(0),
        "{report:#}"
    );

    let mut strict = args.to_vec();
    strict.push("--fail-on-rejections");
    let (status, report, _) = load(&strict).await;
    assert_eq!(status.code(), Some(1), "{report:#}");
    assert_eq!(report["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_before_the_run() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (status, report, stderr) = load(&["--url", &url, "--duration", "30s"]).await;
    assert_eq!(status.code(), Some(1), "{report:#}\n{stderr}");
    // Refused before the clock started: no report of 30 s of calls against nothing.
    assert!(report.is_null(), "{report:#}");
    assert!(
        stderr.contains("no answer to the capability probe"),
        "{stderr}"
    );
}

/// The Python reference's conformance worker (`tests/conformance/serve_ref.py`), killed when
/// dropped.
struct Reference {
    child: Child,
    url: String,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Reference {
    fn start(python: &std::path::Path) -> Reference {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/serve_ref.py");
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads PORT:<n>, then drains stdout so the worker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.trim().strip_prefix("PORT:") {
                    let _ = tx.send(port.to_string());
                }
            }
        });
        let Ok(port) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} printed no PORT:<n>", script.display());
        };
        Reference {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_string_passes_against_the_python_reference() {
    let Some(python) = spillway_test_support::require_python() else {
        return;
    };
    let reference = Reference::start(&python);
    let pid = reference.child.id().to_string();
    let (status, report, stderr) = load(&[
        "--url",
        &reference.url,
        "--clients",
        "4",
        "--duration",
        "2s",
        "--mix",
        "echo_string=1",
        "--verify",
        "--server-pid",
        &pid,
    ])
    .await;
    assert!(status.success(), "{status}: {report:#}\n{stderr}");
    let k = &report["kinds"]["echo_string"];
    assert!(n(&k["ok"]) > 0, "{report:#}");
    assert_eq!(n(&k["ok"]), n(&k["calls"]), "{report:#}");
    assert_eq!(n(&k["bytes_up"]), n(&k["ok"]) * 16, "{report:#}");
    assert!(n(&report["server"]["peak_rss_bytes"]) > 0, "{report:#}");
}

#[test]
fn metric_sums_every_series() {
    let page = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3\nab 7\na 1\n";
    assert_eq!(metric(page, "a"), 6.0);
}
