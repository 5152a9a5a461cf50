//! The S3 store against a real S3 implementation: LocalStack in host mode, started by
//! `scripts/test.sh` (scripts/test.d/20-localstack.env.sh), with presigned-URL signature and
//! expiry checks on. `SPILLWAY_TEST_S3_ENDPOINT` names it; credentials come from the standard
//! chain (the script exports `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`). Without the variable
//! the tests say they are skipped, unless `SPILLWAY_REQUIRE_SERVERS=1`, where they fail
//! (`spillway_test_support::require_env`). The storage contract shared by every backend is
//! `spillway_storage::conformance`; the tests below are S3's own (multipart, SSE, lifecycle,
//! public endpoints).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use spillway_storage::conformance::{self, assert_not_found, chunked, Capabilities};
use spillway_storage::{
    ByteRange, InitOptions, ObjectKey, PresignMethod, PutOptions, PutPayload, Storage, StorageError,
};
use spillway_storage_s3::aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use spillway_storage_s3::{S3Config, S3Store};
use spillway_test_support::{generated_bytes, require_env};
use url::Url;

const MIB: usize = 1024 * 1024;

fn endpoint() -> Option<String> {
    require_env("SPILLWAY_TEST_S3_ENDPOINT", "LocalStack")
}

fn config(endpoint: &str, bucket: &str) -> S3Config {
    let mut c = S3Config::new(bucket);
    c.key_prefix = "spillway/".into();
    c.max_object_bytes = 1 << 30;
    c.endpoint = Some(Url::parse(endpoint).unwrap());
    c.region = Some("us-east-1".into());
    c.path_style = true;
    c.connect_timeout = Duration::from_secs(5);
    c.request_timeout = Duration::from_secs(60);
    c
}

fn unique_bucket() -> String {
    format!("spillway-test-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Incompressible, reproducible bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    generated_bytes(len, seed)
}

/// A store on a fresh bucket, after `tweak` adjusted its settings.
async fn store(endpoint: &str, tweak: impl FnOnce(&mut S3Config)) -> S3Store {
    let mut c = config(endpoint, &unique_bucket());
    tweak(&mut c);
    let store = S3Store::new(c).await.expect("connect");
    store
        .client()
        .create_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .expect("create bucket");
    store
}

async fn read_all(store: &S3Store, key: &ObjectKey, range: Option<ByteRange>) -> Vec<u8> {
    let got = store.get(key, range).await.expect("get");
    let parts: Vec<Bytes> = got.stream.try_collect().await.expect("read body");
    parts.concat()
}

async fn incomplete_uploads(store: &S3Store, key: &ObjectKey) -> usize {
    let out = store
        .client()
        .list_multipart_uploads()
        .bucket(store.bucket())
        .prefix(key.as_str())
        .send()
        .await
        .expect("list multipart uploads");
    out.uploads().len()
}

fn arrow_opts(encoding: Option<&str>) -> PutOptions {
    PutOptions {
        content_type: Some("application/vnd.apache.arrow.stream".into()),
        content_encoding: encoding.map(str::to_string),
    }
}

/// The shared storage contract: objects, ranges, headers, presigned GET and PUT over HTTP,
/// tampered, foreign and expired URLs. LocalStack checks signatures and expiry, as S3 does.
#[tokio::test]
async fn the_s3_store_meets_the_storage_contract() {
    let Some(ep) = endpoint() else { return };
    let store = Arc::new(store(&ep, |_| {}).await);
    let key = store.new_key();
    assert!(key.as_str().starts_with("spillway/") && key.as_str().len() == 9 + 32);
    let dynamic: Arc<dyn Storage> = store;
    conformance::run_all(dynamic, Capabilities::FULL).await;
}

#[tokio::test]
async fn large_streams_use_parallel_multipart_uploads() {
    let Some(ep) = endpoint() else { return };
    let store = store(&ep, |c| {
        c.multipart_threshold = 6 * MIB as u64;
        c.part_size = 5 * MIB as u64;
        c.upload_concurrency = 3;
    })
    .await;
    // 23 MiB + 1 byte in 3 MiB chunks: parts are cut across chunk boundaries, the last part
    // is short.
    let bytes = data(23 * MIB + 1, 7);
    let key = store.new_key();
    let meta = store
        .put(&key, chunked(&bytes, 3 * MIB), arrow_opts(Some("zstd")))
        .await
        .unwrap();
    assert_eq!(meta.size, bytes.len() as u64);
    let etag = meta.etag.clone().unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-5"),
        "a 5-part upload: {etag}"
    );
    let head = store.head(&key).await.unwrap();
    assert_eq!(head.size, bytes.len() as u64);
    assert_eq!(head.content_encoding.as_deref(), Some("zstd"));
    assert_eq!(
        head.content_type.as_deref(),
        Some("application/vnd.apache.arrow.stream")
    );
    assert!(read_all(&store, &key, None).await == bytes, "bytes differ");
    let mid = read_all(
        &store,
        &key,
        Some(ByteRange {
            start: 5 * MIB as u64 - 3,
            end: 5 * MIB as u64 + 3,
        }),
    )
    .await;
    assert_eq!(mid, bytes[5 * MIB - 3..5 * MIB + 3]);
    assert_eq!(incomplete_uploads(&store, &key).await, 0);

    // In-memory payloads above the threshold take the same path.
    let key2 = store.new_key();
    let meta = store
        .put(
            &key2,
            Bytes::from(bytes.clone()).into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert!(meta
        .etag
        .unwrap_or_default()
        .trim_matches('"')
        .ends_with("-5"));
    assert!(read_all(&store, &key2, None).await == bytes, "bytes differ");

    // At the threshold exactly, one PUT.
    let key3 = store.new_key();
    let small = data(6 * MIB, 9);
    let meta = store
        .put(&key3, chunked(&small, MIB), PutOptions::default())
        .await
        .unwrap();
    assert!(
        !meta.etag.unwrap_or_default().contains('-'),
        "single PUT etag"
    );
    for k in [key, key2, key3] {
        store.delete(&k).await.unwrap();
    }
}

#[tokio::test]
async fn failed_multipart_uploads_are_aborted() {
    let Some(ep) = endpoint() else { return };
    let store = store(&ep, |c| {
        c.multipart_threshold = 5 * MIB as u64;
        c.part_size = 5 * MIB as u64;
        c.upload_concurrency = 2;
        c.max_object_bytes = 20 * MIB as u64;
    })
    .await;

    // The producer fails after three parts' worth.
    let key = store.new_key();
    let mut items: Vec<std::io::Result<Bytes>> =
        (0..15).map(|i| Ok(Bytes::from(data(MIB, i)))).collect();
    items.push(Err(std::io::Error::other("the encoder failed")));
    let payload = PutPayload::Stream {
        stream: futures::stream::iter(items).boxed(),
        size_hint: None,
    };
    match store.put(&key, payload, PutOptions::default()).await {
        Err(StorageError::UploadAborted { reason }) => assert!(reason.contains("encoder failed")),
        other => panic!("expected UploadAborted, got {other:?}"),
    }
    assert_eq!(
        incomplete_uploads(&store, &key).await,
        0,
        "the upload was aborted"
    );
    assert_not_found("head", store.head(&key).await);

    // Past the size limit.
    let key = store.new_key();
    match store
        .put(
            &key,
            chunked(&data(30 * MIB, 3), 2 * MIB),
            PutOptions::default(),
        )
        .await
    {
        Err(StorageError::TooLarge { limit, .. }) => assert_eq!(limit, 20 * MIB as u64),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(incomplete_uploads(&store, &key).await, 0);
    assert_not_found("head", store.head(&key).await);
    // A size hint past the limit is refused before anything is sent.
    let key = store.new_key();
    let hinted = PutPayload::Stream {
        stream: futures::stream::empty().boxed(),
        size_hint: Some(21 * MIB as u64),
    };
    assert!(matches!(
        store.put(&key, hinted, PutOptions::default()).await,
        Err(StorageError::TooLarge { .. })
    ));
}

/// Yields `chunks` chunks, then never ends; counts how many were taken.
struct Stalling {
    left: usize,
    taken: Arc<AtomicUsize>,
}

impl Stream for Stalling {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Pending;
        }
        self.left -= 1;
        self.taken.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Bytes::from(data(MIB, self.left as u64)))))
    }
}

#[tokio::test]
async fn a_cancelled_multipart_upload_is_aborted() {
    let Some(ep) = endpoint() else { return };
    let store = Arc::new(
        store(&ep, |c| {
            c.multipart_threshold = 5 * MIB as u64;
            c.part_size = 5 * MIB as u64;
        })
        .await,
    );
    let key = store.new_key();
    let taken = Arc::new(AtomicUsize::new(0));
    let payload = PutPayload::Stream {
        stream: Stalling {
            left: 12,
            taken: taken.clone(),
        }
        .boxed(),
        size_hint: None,
    };
    let task = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.put(&key, payload, PutOptions::default()).await })
    };
    // Wait (bounded) until the upload exists and the producer has stalled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(taken.load(Ordering::SeqCst) == 12 && incomplete_uploads(&store, &key).await == 1) {
        assert!(
            Instant::now() < deadline,
            "the multipart upload never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let deadline = Instant::now() + Duration::from_secs(30);
    while incomplete_uploads(&store, &key).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_not_found("head", store.head(&key).await);
}

#[tokio::test]
async fn urls_for_a_public_endpoint_are_signed_for_it() {
    let Some(ep) = endpoint() else { return };
    // "localhost" is another name for the same LocalStack: the URL must be signed for the
    // host clients use, not for the one the server uses.
    let port = Url::parse(&ep).unwrap().port().unwrap();
    let public = format!("http://localhost:{port}");
    let store = store(&ep, |c| {
        c.public_endpoint = Some(Url::parse(&public).unwrap())
    })
    .await;
    let key = store.new_key();
    store
        .put(
            &key,
            Bytes::from_static(b"public").into(),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let url = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(url
        .url
        .as_str()
        .starts_with(&format!("{public}/{}/", store.bucket())));
    let resp = reqwest::get(url.url.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"public");
    assert_eq!(store.key_from_url(&url.url).unwrap(), key);
    // The same path on the internal endpoint is not what was signed.
    let internal = Url::parse(&url.url.as_str().replace(&public, &ep)).unwrap();
    assert_eq!(reqwest::get(internal).await.unwrap().status(), 403);
}

#[tokio::test]
async fn encryption_and_storage_class_are_applied() {
    let Some(ep) = endpoint() else { return };
    let store = store(&ep, |c| {
        c.sse = spillway_storage_s3::SseMode::Aes256;
        c.storage_class = Some("STANDARD_IA".into());
        c.multipart_threshold = 5 * MIB as u64;
        c.part_size = 5 * MIB as u64;
    })
    .await;
    for size in [100, 11 * MIB] {
        let key = store.new_key();
        store
            .put(
                &key,
                Bytes::from(data(size, 1)).into(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let head = store
            .client()
            .head_object()
            .bucket(store.bucket())
            .key(key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::Aes256),
            "{size}"
        );
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::StandardIa),
            "{size}"
        );
        store.delete(&key).await.unwrap();
    }
}

#[tokio::test]
async fn init_creates_the_bucket_and_installs_the_lifecycle_rule() {
    let Some(ep) = endpoint() else { return };
    let bucket = unique_bucket();
    let mut c = config(&ep, &bucket);
    c.key_prefix = "results/".into();
    let store = S3Store::new(c).await.unwrap();
    match store.check_ready().await {
        Err(StorageError::Config(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("expected a missing-bucket error, got {other:?}"),
    }
    let opts = InitOptions {
        create_bucket: false,
        expire_after_days: 2,
        abort_incomplete_uploads_after_days: 1,
    };
    assert!(matches!(
        store.init(&opts).await,
        Err(StorageError::Config(_))
    ));
    let report = store
        .init(&InitOptions {
            create_bucket: true,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert!(
        report.contains(&format!("created bucket {bucket}")),
        "{report}"
    );
    assert!(
        report.contains("installed lifecycle rule spillway-expire-results/"),
        "{report}"
    );
    store.check_ready().await.unwrap();

    let rules = |store: &S3Store| {
        let client = store.client().clone();
        let bucket = store.bucket().to_string();
        async move {
            client
                .get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await
                .unwrap()
                .rules
                .unwrap_or_default()
        }
    };
    let installed = rules(&store).await;
    assert_eq!(installed.len(), 1);
    let rule = &installed[0];
    assert_eq!(rule.id(), Some("spillway-expire-results/"));
    assert_eq!(rule.filter().and_then(|f| f.prefix()), Some("results/"));
    assert_eq!(rule.expiration().and_then(|e| e.days()), Some(2));
    assert_eq!(
        rule.abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        Some(1)
    );

    // Running it again replaces Spillway's rule and keeps everyone else's.
    let mut all = installed.clone();
    all.push(
        spillway_storage_s3::lifecycle_rule(
            "other/",
            &InitOptions {
                expire_after_days: 30,
                ..opts.clone()
            },
        )
        .unwrap(),
    );
    store
        .client()
        .put_bucket_lifecycle_configuration()
        .bucket(store.bucket())
        .lifecycle_configuration(
            spillway_storage_s3::aws_sdk_s3::types::BucketLifecycleConfiguration::builder()
                .set_rules(Some(all))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let report = store
        .init(&InitOptions {
            create_bucket: true,
            expire_after_days: 5,
            abort_incomplete_uploads_after_days: 1,
        })
        .await
        .unwrap();
    assert!(
        report.contains(&format!("bucket {bucket} exists")),
        "{report}"
    );
    assert!(report.contains("replaced lifecycle rule"), "{report}");
    assert!(report.contains("1 other rule(s) kept"), "{report}");
    let after = rules(&store).await;
    assert_eq!(after.len(), 2);
    let ours = after
        .iter()
        .find(|r| r.id() == Some("spillway-expire-results/"))
        .unwrap();
    assert_eq!(ours.expiration().and_then(|e| e.days()), Some(5));
    assert!(after
        .iter()
        .any(|r| r.id() == Some("spillway-expire-other/")));
}

#[tokio::test]
async fn an_unreachable_store_fails_with_a_redacted_unavailable_error() {
    if endpoint().is_none() {
        return;
    }
    // Port 9 (discard): nothing listens there.
    let store = S3Store::new(config("http://127.0.0.1:9", "spillway-nowhere"))
        .await
        .unwrap();
    let key = store.new_key();
    match store.check_ready().await {
        Err(StorageError::Unavailable { reason }) => {
            assert!(reason.contains("HeadBucket"), "{reason}")
        }
        other => panic!("expected storage unavailable, got {other:?}"),
    }
    match store
        .put(&key, Bytes::from_static(b"x").into(), PutOptions::default())
        .await
    {
        Err(e @ StorageError::Unavailable { .. }) => {
            let m = e.to_string();
            assert!(m.starts_with("storage unavailable: s3 PutObject"), "{m}");
            assert!(!m.contains("X-Amz"), "{m}")
        }
        other => panic!("expected storage unavailable, got {other:?}"),
    }
}
