//! The fetch engine's fault matrix: the embedded local store served over real HTTP on
//! 127.0.0.1, behind the store shaper (`tools/shaper`), which injects one fault at a time.
//! For every fault the fetch returns exactly the original bytes or fails with the typed error
//! for that fault, before its deadline; never wrong bytes, never a hang (every fetch runs
//! under a hard timeout that fails the test).
//!
//! Objects are small (1 MB in 64 KiB chunks) and delays short, so the suite is quick.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use spillway::error::FetchFailure;
use spillway::fetch::{FetchConfig, FetchStats, Fetcher, ProgressFn};
use spillway::url_policy::UrlPolicy;
use spillway::wire::{pointer_batch, write_stream, MetaBatch};
use spillway::Error;
use spillway_shaper::{Fault, FaultRule, Match, Shaper, ShaperConfig};
use spillway_storage::{ObjectKey, PresignMethod, PutOptions, PutPayload, Storage};
use spillway_storage_local::LocalStore;

use crate::common::{generated_bytes, StoreServer};

const CHUNK: u64 = 64 * 1024;
const SIZE: usize = 1_000_003;
/// A fetch that has not finished after this long is a hang: the test fails.
const HANG: Duration = Duration::from_secs(30);

struct Env {
    store: Arc<LocalStore>,
    shaper: Shaper,
    origin: String,
    _server: StoreServer,
}

async fn env_with(shape: impl FnOnce(&mut ShaperConfig)) -> Env {
    let server = StoreServer::start("t/", 7).await;
    let mut config = ShaperConfig::transparent(server.origin.parse().unwrap());
    config.seed = Some(1);
    shape(&mut config);
    let shaper = Shaper::start(config).await.unwrap();
    Env {
        store: server.store.clone(),
        shaper,
        origin: server.origin.clone(),
        _server: server,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    /// Stores `bytes`; returns the key and a presigned GET URL that goes through the shaper.
    async fn put(&self, bytes: Vec<u8>, encoding: Option<&str>) -> (ObjectKey, String) {
        let key = self.store.new_key();
        self.put_at(&key, bytes, encoding).await;
        let url = self
            .store
            .presign(&key, PresignMethod::Get, Duration::from_secs(600))
            .await
            .unwrap();
        (key, self.shaper.rewrite(url.url.as_str()))
    }

    async fn put_at(&self, key: &ObjectKey, bytes: Vec<u8>, encoding: Option<&str>) {
        self.store
            .put(
                key,
                PutPayload::Bytes(bytes.into()),
                PutOptions {
                    content_type: None,
                    content_encoding: encoding.map(str::to_string),
                },
            )
            .await
            .unwrap();
    }

    fn range_gets(&self) -> usize {
        self.shaper
            .log()
            .iter()
            .filter(|r| r.info.range_index.is_some())
            .count()
    }
}

/// The stall timeout of the tests: long enough that a loaded CI machine does not trip it.
const STALL: Duration = Duration::from_secs(1);

/// For tests that count requests exactly: no hedge may be launched because the machine was
/// slow for a moment.
fn no_hedge(c: &mut FetchConfig) {
    c.hedge = false;
}

/// Small chunks, short timers: the engine's logic at test speed.
fn config() -> FetchConfig {
    FetchConfig {
        policy: UrlPolicy::local_testing(),
        chunk_size: CHUNK,
        parallel_threshold: 2 * CHUNK,
        concurrency: 4,
        hedge_min_delay: Duration::from_millis(60),
        stall_timeout: STALL,
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(40),
        max_chunk_retries: 3,
        deadline: Duration::from_secs(20),
        ..Default::default()
    }
}

fn fetcher(tweak: impl FnOnce(&mut FetchConfig)) -> Fetcher {
    let mut c = config();
    tweak(&mut c);
    Fetcher::new(c).unwrap()
}

async fn no_hang<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f)
        .await
        .expect("the fetch hung (no result within 30 s)")
}

async fn fetch(f: &Fetcher, url: &str) -> Result<(Vec<u8>, FetchStats), Error> {
    no_hang(f.fetch_with_stats(url, None))
        .await
        .map(|(o, s)| (o.encoded.to_vec(), s))
}

/// The fetch must return exactly `want`.
async fn assert_exact(f: &Fetcher, url: &str, want: &[u8]) -> FetchStats {
    let (got, stats) = fetch(f, url)
        .await
        .unwrap_or_else(|e| panic!("fetch failed: {e}"));
    assert_eq!(got.len(), want.len(), "length");
    assert!(got == want, "wrong bytes returned");
    stats
}

/// The fetch must fail; the error must not leak the signature.
async fn assert_fails(f: &Fetcher, url: &str) -> Error {
    let err = match fetch(f, url).await {
        Ok(_) => panic!("the fetch succeeded despite the fault"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(!text.contains("Signature"), "signature leaked: {text}");
    let sig = url.split("Signature=").nth(1).unwrap_or("zzz");
    assert!(!text.contains(sig), "signature value leaked: {text}");
    err
}

fn kind(e: &Error) -> Option<FetchFailure> {
    match e {
        Error::Fetch { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn chunk_start(k: u64) -> u64 {
    k * CHUNK
}

#[tokio::test]
async fn clean_fetch_is_ranged_and_exact() {
    let e = env().await;
    let want = generated_bytes(SIZE, 1);
    let (_, url) = e.put(want.clone(), None).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, Option<u64>)>::new()));
    let s2 = seen.clone();
    let progress: ProgressFn = Arc::new(move |done, total| s2.lock().unwrap().push((done, total)));
    let f = fetcher(no_hedge);
    let (o, stats) = no_hang(f.fetch_with_stats(&url, Some(&progress)))
        .await
        .unwrap();
    assert!(o.encoded == want);
    assert!(stats.ranged);
    assert_eq!(stats.chunks as u64, (SIZE as u64).div_ceil(CHUNK));
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.encoded_bytes, SIZE as u64);
    // Probe (a one-byte range GET: the URL is presigned) + one request per chunk.
    assert_eq!(stats.requests, stats.chunks + 1);
    let log = e.shaper.log();
    assert_eq!(log[0].info.range, Some((0, Some(0))), "probe first");
    // Issued in order: the range starts of the first requests ascend.
    let starts: Vec<u64> = log[1..5].iter().map(|r| r.info.range.unwrap().0).collect();
    assert_eq!(starts, vec![0, CHUNK, 2 * CHUNK, 3 * CHUNK]);
    let seen = seen.lock().unwrap();
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress is monotonic"
    );
    assert_eq!(seen.last().copied(), Some((SIZE as u64, Some(SIZE as u64))));
}

#[tokio::test]
async fn small_objects_take_one_get_and_empty_objects_work() {
    let e = env().await;
    let want = generated_bytes(100_000, 2);
    let (_, url) = e.put(want.clone(), None).await;
    let stats = assert_exact(&fetcher(|_| {}), &url, &want).await;
    assert!(!stats.ranged);
    assert_eq!(stats.chunks, 1);
    let (_, empty) = e.put(Vec::new(), None).await;
    let (got, stats) = fetch(&fetcher(|_| {}), &empty).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(stats.encoded_bytes, 0);
}

#[tokio::test]
async fn server_errors_are_retried_per_chunk() {
    let e = env().await;
    let want = generated_bytes(SIZE, 3);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper
        .add_fault(FaultRule::once(Match::NthRangeGet(2), Fault::Status(500)));
    e.shaper
        .add_fault(FaultRule::once(Match::NthRangeGet(5), Fault::SlowDown));
    e.shaper
        .add_fault(FaultRule::once(Match::Probe, Fault::Status(502)));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(
        stats.retries, 3,
        "probe, chunk 2 and chunk 5 retried once each"
    );
}

#[tokio::test]
async fn persistent_slowdown_fails_with_its_status() {
    let e = env().await;
    let (_, url) = e.put(generated_bytes(SIZE, 4), None).await;
    e.shaper.add_fault(FaultRule::always(
        Match::RangeStart(chunk_start(3)),
        Fault::SlowDown,
    ));
    let err = assert_fails(&fetcher(no_hedge), &url).await;
    assert!(
        matches!(err, Error::HttpStatus { status: 503, .. }),
        "{err}"
    );
    // 1 + max_chunk_retries requests for that chunk, no more.
    let tries = e
        .shaper
        .log()
        .iter()
        .filter(|r| r.info.range.map(|r| r.0) == Some(chunk_start(3)))
        .count();
    assert_eq!(tries, 4);
}

#[tokio::test]
async fn forbidden_and_missing_fail_at_once() {
    let e = env().await;
    let (_, url) = e.put(generated_bytes(SIZE, 5), None).await;
    e.shaper
        .add_fault(FaultRule::always(Match::NthRangeGet(1), Fault::Status(403)));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert!(
        matches!(err, Error::HttpStatus { status: 403, .. }),
        "{err}"
    );
    // A missing object: the probe's 404 ends it, without retries.
    let missing = e
        .store
        .presign(
            &e.store.new_key(),
            PresignMethod::Get,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let missing = e.shaper.rewrite(missing.url.as_str());
    let before = e.shaper.request_count();
    let err = assert_fails(&fetcher(|_| {}), &missing).await;
    assert!(
        matches!(err, Error::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert_eq!(e.shaper.request_count() - before, 1, "not retried");
}

#[tokio::test]
async fn connection_reset_mid_body_resumes() {
    let e = env().await;
    let want = generated_bytes(SIZE, 6);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(1),
        Fault::ResetAfter(10_000),
    ));
    e.shaper
        .add_fault(FaultRule::once(Match::NthRangeGet(3), Fault::Drop));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(stats.retries, 2);
    // The retry of the reset chunk asked only for the bytes still missing (what arrived
    // before the reset depends on the kernel, hence the window).
    let log = e.shaper.log();
    let broken = log
        .iter()
        .find(|r| r.info.range_index == Some(1))
        .unwrap()
        .info
        .range
        .unwrap();
    assert!(
        log.iter().any(|r| r.info.same_start_before == 0
            && r.info
                .range
                .is_some_and(|(a, b)| a > broken.0 && a <= broken.0 + 10_000 && b == broken.1)),
        "resumed where the reset cut the body: {log:?}"
    );
}

#[tokio::test]
async fn persistent_resets_fail_as_connection_errors() {
    let e = env().await;
    let (_, url) = e.put(generated_bytes(SIZE, 7), None).await;
    e.shaper
        .add_fault(FaultRule::always(Match::RangeGet, Fault::ResetAfter(1000)));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert_eq!(kind(&err), Some(FetchFailure::Connection), "{err}");
}

#[tokio::test]
async fn truncated_bodies_are_detected() {
    let e = env().await;
    let want = generated_bytes(SIZE, 8);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(0),
        Fault::TruncateAfter(5000),
    ));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(stats.retries, 1);
    e.shaper.add_fault(FaultRule::always(
        Match::RangeGet,
        Fault::TruncateAfter(5000),
    ));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert_eq!(kind(&err), Some(FetchFailure::ShortBody), "{err}");
}

#[tokio::test]
async fn single_get_resumes_after_truncation() {
    let e = env().await;
    let want = generated_bytes(100_000, 9);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::PlainGet,
        Fault::TruncateAfter(30_000),
    ));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert!(!stats.ranged);
    assert_eq!(stats.retries, 1);
    assert!(e
        .shaper
        .log()
        .iter()
        .any(|r| r.info.range == Some((30_000, Some(99_999)))));
}

#[tokio::test]
async fn ranges_answered_with_200_are_handled() {
    let e = env().await;
    let want = generated_bytes(SIZE, 10);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper
        .add_fault(FaultRule::always(Match::RangeGet, Fault::IgnoreRange));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(stats.ranges_ignored, stats.chunks);
}

#[tokio::test]
async fn wrong_content_range_is_refused() {
    let e = env().await;
    let want = generated_bytes(SIZE, 11);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper
        .add_fault(FaultRule::once(Match::NthRangeGet(2), Fault::ShiftRange(1)));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(stats.retries, 1);
    e.shaper.add_fault(FaultRule::always(
        Match::RangeStart(chunk_start(4)),
        Fault::ShiftRange(7),
    ));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert_eq!(kind(&err), Some(FetchFailure::BadResponse), "{err}");
    assert!(err.to_string().contains("content-range"), "{err}");
}

fn ipc_object(payload: Vec<u8>) -> Vec<u8> {
    let batch = spillway::demo::binary_result_batch(payload).unwrap();
    write_stream(&batch.schema(), &[MetaBatch::plain(batch)]).unwrap()
}

fn pointer(url: &str, sha: Option<&str>) -> MetaBatch {
    pointer_batch(&spillway::demo::binary_result(), url, sha)
}

fn value(batch: &RecordBatch) -> Vec<u8> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec()
}

#[tokio::test]
async fn resolve_verifies_decodes_and_stamps() {
    let e = env().await;
    let payload = generated_bytes(SIZE, 12);
    let raw = ipc_object(payload.clone());
    let sha = spillway::object::sha256_hex(&raw);
    let compressed = zstd::bulk::compress(&raw, 3).unwrap();
    for (body, encoding) in [(raw.clone(), None), (compressed, Some("zstd"))] {
        let (_, url) = e.put(body, encoding).await;
        let (resolved, stats) = no_hang(fetcher(|_| {}).resolve(&pointer(&url, Some(&sha)), None))
            .await
            .unwrap();
        assert_eq!(value(&resolved.batch.batch), payload);
        assert_eq!(stats.decoded_bytes, raw.len() as u64);
        let md = &resolved.batch.metadata;
        assert_eq!(md["vgi_rpc.location.source"], url);
        assert!(md.contains_key("vgi_rpc.location.fetch_ms"));
        assert!(!md.contains_key("vgi_rpc.location.sha256"));
    }
}

#[tokio::test]
async fn corrupted_byte_fails_the_checksum() {
    let e = env().await;
    let raw = ipc_object(generated_bytes(SIZE, 13));
    let sha = spillway::object::sha256_hex(&raw);
    let (_, url) = e.put(raw, None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(3),
        Fault::CorruptByte(1234),
    ));
    let err = no_hang(fetcher(no_hedge).resolve(&pointer(&url, Some(&sha)), None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum"));
    assert!(!err.to_string().contains("Signature"));
}

#[tokio::test]
async fn zstd_bomb_is_refused_before_download_completes() {
    let e = env().await;
    let bomb = zstd::bulk::compress(&vec![0u8; 64 * 1024 * 1024], 3).unwrap();
    let (_, url) = e.put(bomb, Some("zstd")).await;
    let f = fetcher(|c| c.max_decompressed_bytes = 1024 * 1024);
    let err = no_hang(f.resolve(&pointer(&url, None), None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_decompressed_bytes"), "{err}");
    // An object above max_fetch_bytes is refused at the probe: no data request is sent.
    let (_, big) = e.put(generated_bytes(SIZE, 14), None).await;
    let before = e.range_gets();
    let err = assert_fails(&fetcher(|c| c.max_fetch_bytes = 1000), &big).await;
    assert!(err.to_string().contains("max_fetch_bytes"), "{err}");
    assert_eq!(e.range_gets(), before);
}

#[tokio::test]
async fn unknown_encodings_fail_before_any_data_request() {
    let e = env().await;
    let body = generated_bytes(SIZE, 26);
    let (_, url) = e.put(body.clone(), Some("br")).await;
    let err = no_hang(fetcher(|_| {}).resolve(&pointer(&url, None), None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unsupported content-encoding"),
        "{err}"
    );
    assert_eq!(e.range_gets(), 0, "the probe was enough to refuse it");
    // The raw bytes are still available to whoever can decode them.
    let (o, _) = no_hang(fetcher(|_| {}).fetch_with_stats(&url, None))
        .await
        .unwrap();
    assert!(o.encoded == body);
    assert_eq!(o.content_encoding.as_deref(), Some("br"));
}

fn replace_hook(store: Arc<LocalStore>, key: ObjectKey, bytes: Vec<u8>) -> Fault {
    Fault::Hook(Arc::new(move || {
        let store = store.clone();
        let key = key.clone();
        let bytes = bytes.clone();
        Box::pin(async move {
            store
                .put(&key, PutPayload::Bytes(bytes.into()), PutOptions::default())
                .await
                .unwrap();
        })
    }))
}

#[tokio::test]
async fn object_replaced_mid_fetch_is_detected() {
    for new_size in [SIZE, SIZE / 2] {
        let e = env().await;
        let (key, url) = e.put(generated_bytes(SIZE, 15), None).await;
        e.shaper.add_fault(FaultRule::once(
            Match::NthRangeGet(5),
            replace_hook(e.store.clone(), key, generated_bytes(new_size, 16)),
        ));
        let err = assert_fails(&fetcher(|_| {}), &url).await;
        assert_eq!(kind(&err), Some(FetchFailure::ObjectChanged), "{err}");
    }
}

/// Counts connections to a port nothing should ever contact.
async fn canary() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("http://{addr}/latest/meta-data"), hits)
}

#[tokio::test]
async fn redirects_are_checked_hop_by_hop() {
    let e = env().await;
    let want = generated_bytes(SIZE, 17);
    let (_, url) = e.put(want.clone(), None).await;
    // Only the shaper's origin is allowed: loopback in general is not.
    let shaper_only = |c: &mut FetchConfig| {
        c.policy = UrlPolicy {
            allow_http: true,
            ..Default::default()
        }
        .trust_origin_of(&url.parse().unwrap())
    };
    let (forbidden, hits) = canary().await;
    e.shaper
        .add_fault(FaultRule::once(Match::Probe, Fault::Redirect(forbidden)));
    let err = assert_fails(&fetcher(shaper_only), &url).await;
    assert!(matches!(err, Error::UrlRejected { .. }), "{err}");
    assert!(err.to_string().contains("URL rejected"));
    // A redirect on a data request is checked too.
    let (forbidden, hits2) = canary().await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(2),
        Fault::Redirect(forbidden),
    ));
    let err = assert_fails(&fetcher(shaper_only), &url).await;
    assert!(matches!(err, Error::UrlRejected { .. }), "{err}");
    // The metadata address is refused whatever the local-testing policy allows.
    e.shaper.add_fault(FaultRule::once(
        Match::Probe,
        Fault::Redirect("http://169.254.169.254/latest/meta-data".into()),
    ));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert!(matches!(err, Error::UrlRejected { .. }), "{err}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the rejected hop was requested"
    );
    assert_eq!(
        hits2.load(Ordering::SeqCst),
        0,
        "the rejected hop was requested"
    );
    // A loop ends at the redirect limit.
    e.shaper.add_fault(FaultRule::always(
        Match::Probe,
        Fault::Redirect(url.clone()),
    ));
    let err = assert_fails(&fetcher(|_| {}), &url).await;
    assert!(matches!(err, Error::RedirectLimit { .. }), "{err}");
    assert!(err.to_string().contains("redirect limit"));
    e.shaper.clear_faults();
    // An allowed redirect (to the store itself) is followed.
    let direct = url.replace(
        &e.shaper
            .base_url()
            .as_str()
            .trim_end_matches('/')
            .to_string(),
        &e.origin,
    );
    e.shaper
        .add_fault(FaultRule::once(Match::Probe, Fault::Redirect(direct)));
    assert_exact(&fetcher(|_| {}), &url, &want).await;
}

#[tokio::test]
async fn refused_probe_falls_back_to_one_get() {
    let e = env().await;
    let want = generated_bytes(SIZE, 18);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper
        .add_fault(FaultRule::always(Match::Probe, Fault::Status(403)));
    let stats = assert_exact(&fetcher(|_| {}), &url, &want).await;
    assert!(!stats.ranged);
}

#[tokio::test]
async fn a_stalled_chunk_is_hedged_and_the_hedge_wins() {
    let e = env().await;
    let want = generated_bytes(SIZE, 19);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(1),
        Fault::Stall(Duration::from_secs(10)),
    ));
    let stats = assert_exact(&fetcher(|_| {}), &url, &want).await;
    assert!(stats.hedges_launched >= 1);
    assert!(stats.hedges_won >= 1);
    assert_eq!(
        stats.retries, 0,
        "the hedge, not the stall timeout, rescued it"
    );
}

#[tokio::test]
async fn a_slow_chunk_is_hedged() {
    let e = env_with(|c| c.bandwidth = Some(4 * 1024 * 1024)).await;
    let want = generated_bytes(SIZE, 20);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper
        .add_fault(FaultRule::once(Match::NthRangeGet(2), Fault::Slow(50.0)));
    let stats = assert_exact(&fetcher(|_| {}), &url, &want).await;
    assert!(stats.hedges_launched >= 1);
    assert!(stats.hedges_won >= 1);
}

#[tokio::test]
async fn hedging_off_waits_for_the_straggler() {
    let e = env().await;
    let want = generated_bytes(SIZE, 21);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(1),
        Fault::Stall(Duration::from_millis(200)),
    ));
    let stats = assert_exact(&fetcher(|c| c.hedge = false), &url, &want).await;
    assert_eq!(stats.hedges_launched, 0);
}

#[tokio::test]
async fn hedge_failing_after_the_original_succeeded_is_ignored() {
    let e = env().await;
    let want = generated_bytes(SIZE, 22);
    let (_, url) = e.put(want.clone(), None).await;
    let start = chunk_start(2);
    // The original is late (hedged at ~120 ms) but completes at ~300 ms; its hedge fails
    // at ~900 ms, after the chunk is done.
    e.shaper.add_fault(FaultRule::once(
        Match::RangeStartNth { start, nth: 0 },
        Fault::Stall(Duration::from_millis(300)),
    ));
    for nth in [1, 2] {
        // Hedges are stragglers themselves here, so a second one follows the first.
        e.shaper.add_fault(FaultRule::once(
            Match::RangeStartNth { start, nth },
            Fault::Delayed {
                delay: Duration::from_millis(800),
                then: Box::new(Fault::Status(500)),
            },
        ));
    }
    let slower_hedges = |c: &mut FetchConfig| c.hedge_min_delay = Duration::from_millis(120);
    let stats = assert_exact(&fetcher(slower_hedges), &url, &want).await;
    assert!(stats.hedges_launched >= 1);
    assert_eq!(stats.hedges_won, 0);
    assert_eq!(stats.retries, 0);
}

#[tokio::test]
async fn original_failing_while_its_hedge_runs_is_not_fatal() {
    let e = env().await;
    let want = generated_bytes(SIZE, 23);
    let (_, url) = e.put(want.clone(), None).await;
    let start = chunk_start(1);
    // The original fails at ~250 ms, while its hedges (launched at ~120 and ~240 ms) are
    // still running (they answer at ~470 and ~590 ms): no retry, a hedge completes the chunk.
    e.shaper.add_fault(FaultRule::once(
        Match::RangeStartNth { start, nth: 0 },
        Fault::Delayed {
            delay: Duration::from_millis(250),
            then: Box::new(Fault::Status(500)),
        },
    ));
    for nth in [1, 2] {
        e.shaper.add_fault(FaultRule::once(
            Match::RangeStartNth { start, nth },
            Fault::Stall(Duration::from_millis(350)),
        ));
    }
    let stats = assert_exact(
        &fetcher(|c| {
            c.stall_timeout = Duration::from_secs(2);
            c.hedge_min_delay = Duration::from_millis(120);
        }),
        &url,
        &want,
    )
    .await;
    assert_eq!(stats.hedges_won, 1);
    assert_eq!(stats.retries, 0);
}

#[tokio::test]
async fn everything_stalled_still_fires_hedges_and_timeouts() {
    let e = env().await;
    let (_, url) = e.put(generated_bytes(SIZE, 24), None).await;
    e.shaper.add_fault(FaultRule::always(
        Match::RangeGet,
        Fault::Stall(Duration::from_secs(60)),
    ));
    let err = assert_fails(&fetcher(|c| c.max_chunk_retries = 1), &url).await;
    // The stall timeout fired (not the overall deadline of 20 s).
    assert_eq!(kind(&err), Some(FetchFailure::Stalled), "{err}");
    // Nothing ever completed, yet duplicates were sent before the stall timeout:
    // hedges come from the timer, not from completions.
    let log = e.shaper.log();
    let first = log
        .iter()
        .find(|r| r.info.range_index.is_some())
        .unwrap()
        .at;
    let early_repeats = log
        .iter()
        .filter(|r| {
            r.info.same_start_before > 0 && r.at < first + STALL - Duration::from_millis(50)
        })
        .count();
    assert!(early_repeats >= 1, "no hedge before the stall timeout");
    // Bounded: at most 2 hedges in flight (half the concurrency, at least 2).
    assert!(early_repeats <= 2, "{early_repeats} hedges");
    // A deadline shorter than the retries ends it as a timeout.
    let err = assert_fails(
        &fetcher(|c| {
            c.deadline = Duration::from_millis(700);
            c.max_chunk_retries = 100;
        }),
        &url,
    )
    .await;
    assert_eq!(kind(&err), Some(FetchFailure::Timeout), "{err}");
}

#[tokio::test]
async fn stalled_probe_times_out_and_retries() {
    let e = env().await;
    let want = generated_bytes(SIZE, 25);
    let (_, url) = e.put(want.clone(), None).await;
    e.shaper.add_fault(FaultRule::once(
        Match::Probe,
        Fault::Stall(Duration::from_secs(30)),
    ));
    let stats = assert_exact(&fetcher(no_hedge), &url, &want).await;
    assert_eq!(stats.retries, 1);
    // A body that stops mid-way is abandoned after the stall timeout and resumed.
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(20),
        Fault::StallAfter {
            bytes: 1000,
            pause: Duration::from_secs(30),
        },
    ));
    let stats = assert_exact(&fetcher(|c| c.hedge = false), &url, &want).await;
    assert_eq!(stats.retries, 1);
}

#[tokio::test]
async fn urls_are_checked_before_any_request() {
    for (url, why) in [
        (
            "https://169.254.169.254/latest/meta-data?X-Amz-Signature=s3cr3t",
            "link-local",
        ),
        ("http://10.0.0.1/k", "private"),
        ("ftp://example.com/k", "scheme"),
        ("not a url", "invalid"),
    ] {
        let err = fetch(&fetcher(|_| {}), url).await.unwrap_err();
        assert!(matches!(err, Error::UrlRejected { .. }), "{why}: {err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }
}
