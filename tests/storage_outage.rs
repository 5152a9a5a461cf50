//! Storage outages against real servers: a `spillway serve` process on LocalStack's S3.
//!
//! - The store stopped mid-load and restarted: an instance of LocalStack of the test's own
//!   (`scripts/localstack.sh` on a free port) is frozen with SIGSTOP while multipart uploads
//!   are in flight (a store that accepts connections and never answers, the case timeouts are
//!   for), thawed, then stopped for real (connections refused) and started again. Calls fail
//!   within the configured timeouts with "storage unavailable", `/readyz` follows the store
//!   within a few seconds, small calls keep working, and no incomplete multipart upload is
//!   left once the store is back.
//! - 503 SlowDown injected by the store shaper in front of the shared LocalStack: the SDK's
//!   retries (3 attempts, the standard mode's default) absorb a short burst; a store that
//!   keeps throttling fails the call with "storage throttled ... SlowDown", and an aborted
//!   multipart upload leaves nothing behind.
//!
//! Needs `SPILLWAY_TEST_S3_ENDPOINT` (LocalStack installed and running, as `scripts/test.sh`
//! sets up); without it the tests say they are skipped, or fail under
//! `SPILLWAY_REQUIRE_SERVERS=1`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use spillway::client::{Client, ClientConfig};
use spillway::demo;
use spillway::url_policy::UrlPolicy;
use spillway::wire::ErrorCode;
use spillway_shaper::{Fault, FaultRule, Match, Shaper, ShaperConfig};
use spillway_storage::StoreSettings;
use spillway_storage_s3::S3Store;

use crate::common::*;

const MIB: i64 = 1024 * 1024;
/// The server's S3 timeouts in these tests: connect, one attempt, one request with retries.
const CONNECT_TIMEOUT: &str = "2";
const REQUEST_TIMEOUT: &str = "3";
const OPERATION_TIMEOUT: &str = "6";
/// How long after the store went away (or after it started) a call may take to fail: the
/// operation timeout of the parts in flight plus the SDK's backoff and the client's own
/// bounded fetch, with slack for a loaded machine.
const CALL_BOUND: Duration = Duration::from_secs(25);
/// How long `/readyz` may take to follow the store: its 2 s cache and 3 s check, with slack.
const READY_BOUND: Duration = Duration::from_secs(12);

/// A LocalStack of this test's own, on a free port, stopped (by its own pid file) when
/// dropped.
struct OwnLocalStack {
    port: u16,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/localstack.sh")
}

impl OwnLocalStack {
    fn start() -> OwnLocalStack {
        let ls = OwnLocalStack { port: free_port() };
        ls.run_script("start");
        ls
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn run_script(&self, action: &str) {
        let out = Command::new("bash")
            .arg(script())
            .arg(action)
            .env("LOCALSTACK_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "localstack.sh {action} failed: {}",
            output_text(&out)
        );
    }

    /// The pid `scripts/localstack.sh` recorded for this port (`None` once stopped).
    fn pid(&self) -> Option<String> {
        let dir = std::env::var("SPILLWAY_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/spillway-tools")
            });
        let file = dir.join(format!("localstack-{}.pid", self.port));
        let pid = std::fs::read_to_string(file).ok()?;
        Some(pid.trim().to_string()).filter(|p| !p.is_empty())
    }

    /// SIGSTOP (`"STOP"`) or SIGCONT (`"CONT"`) to this instance's process only.
    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the instance's pid file");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid)
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig}");
    }
}

impl Drop for OwnLocalStack {
    fn drop(&mut self) {
        // A frozen process cannot act on SIGTERM.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-CONT").arg(pid).status();
        }
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("LOCALSTACK_PORT", self.port.to_string())
            .output();
    }
}

/// `spillway storage init --create-bucket` for `bucket` on `endpoint`, through the binary.
fn create_bucket(endpoint: &str, bucket: &str) {
    let out = Command::new(BIN)
        .args(["storage", "init", "--create-bucket", "--storage", "s3"])
        .args(["--bucket", bucket])
        .args(localstack_flags(endpoint))
        .output()
        .unwrap();
    assert!(out.status.success(), "storage init: {}", output_text(&out));
}

/// The test's own handle on the bucket (to list incomplete multipart uploads).
async fn test_store(endpoint: &str, bucket: &str) -> S3Store {
    s3_store(
        &localstack_flags(endpoint),
        StoreSettings {
            bucket: Some(bucket.to_string()),
            key_prefix: "spillway/".into(),
            max_object_bytes: 1 << 32,
        },
    )
    .await
}

/// `(key, upload id)` of every incomplete multipart upload in the bucket.
async fn incomplete_uploads(store: &S3Store) -> Vec<(String, String)> {
    let out = store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .send()
        .await
        .unwrap();
    out.uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap_or_default().to_string(),
                u.upload_id().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn aws_env() -> Vec<(&'static str, String)> {
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    vec![
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "test")),
        (
            "AWS_SECRET_ACCESS_KEY",
            var("AWS_SECRET_ACCESS_KEY", "test"),
        ),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// `spillway serve` on S3 at `endpoint`: short timeouts, 5 MiB multipart parts, no
/// compression (the blobs are random).
fn serve_s3(endpoint: &str, bucket: &str) -> ServedBinary {
    let mut env: Vec<(&str, String)> = vec![
        ("SPILLWAY_STORAGE", "s3".into()),
        ("SPILLWAY_BUCKET", bucket.into()),
        ("SPILLWAY_S3_ENDPOINT", endpoint.into()),
        ("SPILLWAY_S3_PATH_STYLE", "true".into()),
        ("SPILLWAY_S3_REGION", "us-east-1".into()),
        ("SPILLWAY_S3_MULTIPART_THRESHOLD", (5 * MIB).to_string()),
        ("SPILLWAY_S3_PART_SIZE", (5 * MIB).to_string()),
        ("SPILLWAY_S3_UPLOAD_CONCURRENCY", "2".into()),
        ("SPILLWAY_S3_CONNECT_TIMEOUT", CONNECT_TIMEOUT.into()),
        ("SPILLWAY_S3_REQUEST_TIMEOUT", REQUEST_TIMEOUT.into()),
        ("SPILLWAY_S3_OPERATION_TIMEOUT", OPERATION_TIMEOUT.into()),
        ("SPILLWAY_COMPRESSION", "none".into()),
    ];
    env.extend(aws_env());
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServedBinary::start(&refs)
}

/// A client whose own download of a result is bounded too (a store frozen while the client
/// reads from it is the client's timeout, not the server's).
fn client_of(url: &str) -> Client {
    let mut config = ClientConfig::default();
    config.fetch.policy = UrlPolicy::local_testing();
    config.fetch.stall_timeout = Duration::from_secs(2);
    config.fetch.max_chunk_retries = 1;
    config.fetch.deadline = Duration::from_secs(10);
    config.timeout = Duration::from_secs(60);
    Client::new(url, config).unwrap()
}

/// The status and body of `/readyz`.
async fn readyz(url: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Polls `/readyz` until it answers `status`; returns its body and how long that took.
async fn await_readiness(url: &str, status: u16) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let (got, body) = readyz(url).await;
        if got == status {
            return (body, started.elapsed());
        }
        assert!(
            started.elapsed() < READY_BOUND,
            "/readyz still {got} ({body}) after {:?}, expected {status}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of a counter in the server's `/metrics`.
async fn counter(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What one call of the load did.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    ended: Instant,
    /// `None`: the result arrived; else the error (its code when the server sent it).
    error: Option<(Option<ErrorCode>, String)>,
}

fn outcome_of(
    started: Instant,
    r: Result<spillway::client::CallOutput, spillway::Error>,
) -> Outcome {
    let error = r.err().map(|e| match &e {
        spillway::Error::Rpc(rpc) => (Some(rpc.code), rpc.message.clone()),
        other => (None, other.to_string()),
    });
    Outcome {
        started,
        ended: Instant::now(),
        error,
    }
}

/// A server-side storage error as the client sees it: UNAVAILABLE, the cause named, nothing
/// secret in it.
fn assert_clear_unavailable(code: Option<ErrorCode>, message: &str, words: &str) {
    assert_eq!(code, Some(ErrorCode::Unavailable), "{message}");
    assert!(message.contains(words), "expected {words:?} in: {message}");
    for secret in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "AWS4-HMAC",
        "Signature=",
    ] {
        assert!(!message.contains(secret), "{secret} leaked: {message}");
    }
}

/// Calls `blob(size)` until `stop`, recording every outcome.
async fn load(client: Client, size: i64, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Outcome>>>) {
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let r = client.call(demo::PROTOCOL, "blob", size_params(size)).await;
        log.lock().unwrap().push(outcome_of(started, r));
    }
}

async fn call_blob(client: &Client, size: i64) -> Outcome {
    let started = Instant::now();
    let r = client.call(demo::PROTOCOL, "blob", size_params(size)).await;
    outcome_of(started, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stopped_mid_load_and_restarted() {
    if s3_endpoint().is_none() {
        return;
    }
    let ls = OwnLocalStack::start();
    let ep = ls.endpoint();
    let bucket = unique_name("outage");
    create_bucket(&ep, &bucket);
    let store = test_store(&ep, &bucket).await;
    let served = serve_s3(&ep, &bucket);
    let url = served.url.clone();
    let client = client_of(&url);
    assert_eq!(readyz(&url).await.0, 200);
    blob(&client, 12 * MIB).await;

    // Load: two callers, each result a multipart upload of five parts.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(load(client.clone(), 24 * MIB, stop.clone(), log.clone())))
        .collect();
    // Freeze the store the moment a multipart upload is in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    let in_flight = loop {
        let uploads = incomplete_uploads(&store).await;
        if !uploads.is_empty() {
            ls.signal("STOP");
            break uploads;
        }
        assert!(
            Instant::now() < deadline,
            "no multipart upload ever started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let frozen_at = Instant::now();

    // Readiness turns false within a few seconds, naming the cause.
    let (body, took) = await_readiness(&url, 503).await;
    assert!(body.contains("storage unavailable"), "{body}");
    eprintln!("readyz false {took:?} after the freeze: {body}");
    // The server keeps serving what needs no store.
    echo(&client, b"still here").await;
    // A call that needs the store fails within the timeouts, saying why.
    let fresh = call_blob(&client, 12 * MIB).await;
    let (code, message) = fresh.error.clone().expect("a call to a frozen store fails");
    assert_clear_unavailable(code, &message, "storage unavailable: s3 ");
    assert!(fresh.ended - fresh.started < CALL_BOUND, "{fresh:?}");
    eprintln!(
        "frozen store, after {:?}: {message}",
        fresh.ended - fresh.started
    );
    // Every call in flight at the freeze has ended too, within the bound.
    let deadline = frozen_at + CALL_BOUND;
    loop {
        let settled = {
            let log = log.lock().unwrap();
            log.iter().filter(|o| o.ended > frozen_at).count() >= workers.len()
        };
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "calls hang on the frozen store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The store returns: readiness follows, calls succeed again.
    ls.signal("CONT");
    let thawed_at = Instant::now();
    let (_, took) = await_readiness(&url, 200).await;
    eprintln!("readyz true {took:?} after the thaw");
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    blob(&client, 12 * MIB).await;
    {
        let log = log.lock().unwrap();
        let mut unavailable = 0;
        for o in log.iter() {
            if o.ended < frozen_at || o.started > thawed_at {
                continue;
            }
            // Every call that overlapped the freeze ended within the bound of its start or
            // of the freeze, whichever came later.
            let since = o.started.max(frozen_at);
            assert!(o.ended - since < CALL_BOUND, "{o:?}");
            // Failed in the server: storage unavailable. (A call that was past the upload,
            // downloading its result, fails in the client's own fetch.)
            if let Some((Some(code), message)) = &o.error {
                assert_clear_unavailable(Some(*code), message, "storage unavailable: s3 ");
                unavailable += 1;
            }
        }
        assert!(unavailable > 0, "no call saw the outage: {log:?}");
    }
    // Nothing incomplete is left: uploads cut off by the freeze were aborted once the store
    // answered again (retried in the background), including any the store had queued.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let left = incomplete_uploads(&store).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "incomplete multipart uploads left after the outage: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Those in flight at the freeze that did not complete were aborted by the server.
    let mut cut_off = 0;
    for (key, _) in &in_flight {
        let head = store
            .client()
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await;
        if head.is_err() {
            cut_off += 1;
        }
    }
    let aborts = counter(&url, "spillway_s3_multipart_aborts_total").await;
    assert!(
        aborts >= cut_off as f64,
        "{aborts} aborts, {cut_off} cut off"
    );
    eprintln!(
        "{} upload(s) in flight at the freeze, {cut_off} cut off, {aborts} abort(s)",
        in_flight.len()
    );

    // Stopped for real: connections are refused, calls fail at once.
    ls.run_script("stop");
    let refused = call_blob(&client, 12 * MIB).await;
    let (code, message) = refused
        .error
        .clone()
        .expect("a call to a stopped store fails");
    assert_clear_unavailable(code, &message, "storage unavailable: s3 ");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(refused.ended - refused.started < CALL_BOUND, "{refused:?}");
    eprintln!(
        "stopped store, after {:?}: {message}",
        refused.ended - refused.started
    );
    let (body, _) = await_readiness(&url, 503).await;
    assert!(body.contains("storage unavailable"), "{body}");
    // Started again (a fresh LocalStack keeps no state: the bucket is made again, as a real
    // store would still have it).
    ls.run_script("start");
    create_bucket(&ep, &bucket);
    await_readiness(&url, 200).await;
    blob(&client, 12 * MIB).await;
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_is_retried_then_reported_and_leaves_no_upload() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = unique_name("slowdown");
    create_bucket(&ep, &bucket);
    let store = test_store(&ep, &bucket).await;
    // The server reaches the store through the shaper; SigV4 signs the host, which the shaper
    // forwards unchanged.
    let mut shaping = ShaperConfig::transparent(url::Url::parse(&ep).unwrap());
    shaping.preserve_host = true;
    let shaper = Shaper::start(shaping).await.unwrap();
    let via = shaper.base_url().as_str().trim_end_matches('/').to_string();
    let served = serve_s3(&via, &bucket);
    let client = client_of(&served.url);
    let object_put = |r: &spillway_shaper::RequestInfo| {
        r.method == Method::PUT && !r.has_query("partNumber") && r.path.contains("/spillway/")
    };
    let part_put =
        |r: &spillway_shaper::RequestInfo| r.method == Method::PUT && r.has_query("partNumber");
    let puts_of =
        |shaper: &Shaper, from: usize, pick: fn(&spillway_shaper::RequestInfo) -> bool| {
            shaper.log()[from..]
                .iter()
                .filter(|r| pick(&r.info))
                .map(|r| (r.info.path.clone(), r.fault.clone()))
                .collect::<Vec<_>>()
        };

    // Two SlowDowns: the SDK retries, the third attempt stores the object.
    shaper.add_fault(FaultRule {
        matcher: Match::Custom(Arc::new(object_put)),
        fault: Fault::SlowDown,
        times: Some(2),
    });
    let from = shaper.log().len();
    let out = blob(&client, 2 * MIB).await;
    assert!(out.externalized.is_some());
    let puts = puts_of(&shaper, from, object_put);
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert!(
        puts.iter().all(|(p, _)| *p == puts[0].0),
        "one object: {puts:?}"
    );
    assert_eq!(
        puts.iter()
            .filter(|(_, f)| f.as_deref() == Some("SlowDown"))
            .count(),
        2,
        "{puts:?}"
    );

    // A store that keeps throttling: the call fails after the retries, saying so.
    shaper.clear_faults();
    shaper.add_fault(FaultRule::always(
        Match::Custom(Arc::new(object_put)),
        Fault::SlowDown,
    ));
    let from = shaper.log().len();
    let throttled = call_blob(&client, 2 * MIB).await;
    let (code, message) = throttled.error.clone().expect("the call fails");
    assert_clear_unavailable(code, &message, "storage throttled: s3 PutObject");
    assert!(message.contains("SlowDown"), "{message}");
    eprintln!(
        "throttling store, after {:?}: {message}",
        throttled.ended - throttled.started
    );
    assert!(
        throttled.ended - throttled.started < CALL_BOUND,
        "{throttled:?}"
    );
    assert_eq!(
        puts_of(&shaper, from, object_put).len(),
        3,
        "AWS_MAX_ATTEMPTS (3)"
    );

    // Parts throttled: the multipart upload fails and is aborted, nothing is left.
    shaper.clear_faults();
    shaper.add_fault(FaultRule::always(
        Match::Custom(Arc::new(part_put)),
        Fault::SlowDown,
    ));
    let throttled = call_blob(&client, 12 * MIB).await;
    let (code, message) = throttled.error.clone().expect("the call fails");
    assert_clear_unavailable(code, &message, "storage throttled: s3 UploadPart");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = incomplete_uploads(&store).await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Throttling over: calls succeed again.
    shaper.clear_faults();
    blob(&client, 12 * MIB).await;
    drop(served);
}
