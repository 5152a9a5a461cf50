//! The fetch engine's fault matrix with LocalStack's S3 (presigned-URL signature checks on)
//! behind the store shaper: S3 presigned URLs are made for the shaper's address, which forwards
//! requests with their `Host` unchanged, so every signature is checked by the store. For every
//! fault the fetch returns exactly the original bytes or fails with that fault's typed error,
//! before its deadline. LocalStack comes from `scripts/test.sh` (`SPILLWAY_TEST_S3_ENDPOINT`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use spillway::error::FetchFailure;
use spillway::fetch::{FetchConfig, Fetcher};
use spillway::url_policy::UrlPolicy;
use spillway::wire::{pointer_batch, write_stream, MetaBatch};
use spillway::Error;
use spillway_shaper::{Fault, FaultRule, Match, Shaper, ShaperConfig};
use spillway_storage::{
    InitOptions, ObjectKey, PresignMethod, PutOptions, PutPayload, Storage, StoreSettings,
};
use spillway_storage_s3::S3Store;

use crate::common::{
    generated_bytes, localstack_flags, presigned, s3_endpoint, s3_store, unique_name,
};

const CHUNK: u64 = 256 * 1024;
const SIZE: usize = 2_000_003;
const HANG: Duration = Duration::from_secs(60);

struct Env {
    store: Arc<S3Store>,
    shaper: Shaper,
}

/// A bucket of its own, and a store whose presigned URLs point at the shaper.
async fn env(ep: &str) -> Env {
    let mut config = ShaperConfig::transparent(ep.parse().unwrap());
    config.preserve_host = true;
    config.seed = Some(3);
    let shaper = Shaper::start(config).await.unwrap();
    let mut flags = localstack_flags(ep);
    flags.extend(["--s3-public-endpoint".into(), shaper.base_url().to_string()]);
    let store = s3_store(
        &flags,
        StoreSettings {
            bucket: Some(unique_name("faults")),
            key_prefix: "f/".into(),
            max_object_bytes: 1 << 30,
        },
    )
    .await;
    store
        .init(&InitOptions {
            create_bucket: true,
            expire_after_days: 1,
            abort_incomplete_uploads_after_days: 1,
        })
        .await
        .unwrap();
    Env {
        store: Arc::new(store),
        shaper,
    }
}

impl Env {
    async fn put(&self, key: &ObjectKey, bytes: Vec<u8>) {
        self.store
            .put(key, PutPayload::Bytes(bytes.into()), PutOptions::default())
            .await
            .unwrap();
    }

    /// Stores `bytes`; returns the key and a presigned GET URL (for the shaper's address).
    async fn object(&self, bytes: Vec<u8>) -> (ObjectKey, String) {
        let key = self.store.new_key();
        self.put(&key, bytes).await;
        let url = presigned(&*self.store, &key, PresignMethod::Get, 600).await;
        assert!(url
            .url
            .as_str()
            .starts_with(self.shaper.base_url().as_str()));
        (key, url.url.to_string())
    }
}

fn fetcher(hedge: bool) -> Fetcher {
    Fetcher::new(FetchConfig {
        policy: UrlPolicy::local_testing(),
        chunk_size: CHUNK,
        parallel_threshold: 2 * CHUNK,
        concurrency: 4,
        hedge,
        hedge_min_delay: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(2),
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        max_chunk_retries: 3,
        deadline: Duration::from_secs(40),
        ..Default::default()
    })
    .unwrap()
}

async fn no_hang<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f).await.expect("the fetch hung")
}

async fn fetch(f: &Fetcher, url: &str) -> Result<Vec<u8>, Error> {
    no_hang(f.fetch_with_stats(url, None))
        .await
        .map(|(o, _)| o.encoded.to_vec())
}

fn no_secret(e: &Error) {
    let text = e.to_string();
    assert!(!text.contains("X-Amz-Signature"), "{text}");
    assert!(!text.contains("X-Amz-Credential"), "{text}");
}

#[tokio::test]
async fn transient_faults_are_absorbed_and_bytes_are_exact() {
    let Some(ep) = s3_endpoint() else { return };
    let e = env(&ep).await;
    let cases: Vec<(&str, Fault)> = vec![
        ("none", Fault::Status(200)),
        ("500", Fault::Status(500)),
        ("503 SlowDown", Fault::SlowDown),
        ("reset mid-body", Fault::ResetAfter(10_000)),
        ("truncated body", Fault::TruncateAfter(10_000)),
        ("200 instead of 206", Fault::IgnoreRange),
        ("wrong Content-Range", Fault::ShiftRange(7)),
        (
            "stall before first byte",
            Fault::Stall(Duration::from_secs(5)),
        ),
    ];
    for (i, (name, fault)) in cases.into_iter().enumerate() {
        let want = generated_bytes(SIZE, i as u64);
        let (_, url) = e.object(want.clone()).await;
        e.shaper.clear_faults();
        if name != "none" {
            e.shaper
                .add_fault(FaultRule::once(Match::NthRangeGet(2), fault));
        }
        let got = fetch(&fetcher(true), &url)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(got == want, "{name}: wrong bytes");
    }
}

#[tokio::test]
async fn every_request_stalling_still_completes() {
    let Some(ep) = s3_endpoint() else { return };
    let e = env(&ep).await;
    let want = generated_bytes(SIZE, 40);
    let (_, url) = e.object(want.clone()).await;
    // Every range request stalls on its first attempt: only timers (hedges, stall timeouts) can
    // get the fetch going again.
    for n in 0..(SIZE as u64).div_ceil(CHUNK) {
        e.shaper.add_fault(FaultRule::once(
            Match::RangeStartNth {
                start: n * CHUNK,
                nth: 0,
            },
            Fault::Stall(Duration::from_secs(30)),
        ));
    }
    let got = fetch(&fetcher(true), &url).await.unwrap();
    assert!(got == want);
}

#[tokio::test]
async fn corrupted_byte_fails_the_checksum() {
    let Some(ep) = s3_endpoint() else { return };
    let e = env(&ep).await;
    let batch = spillway::demo::binary_result_batch(generated_bytes(SIZE, 41)).unwrap();
    let raw = write_stream(&batch.schema(), &[MetaBatch::plain(batch.clone())]).unwrap();
    let sha = spillway::object::sha256_hex(&raw);
    let (_, url) = e.object(raw).await;
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(3),
        Fault::CorruptByte(999),
    ));
    let pointer = pointer_batch(&spillway::demo::binary_result(), &url, Some(&sha));
    let err = no_hang(fetcher(false).resolve(&pointer, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    no_secret(&err);
    // Without the fault, the same pointer resolves to the same batch.
    let (resolved, _) = no_hang(fetcher(false).resolve(&pointer, None))
        .await
        .unwrap();
    assert_eq!(resolved.batch.batch, batch);
}

#[tokio::test]
async fn refusals_fail_fast_with_typed_errors() {
    let Some(ep) = s3_endpoint() else { return };
    let e = env(&ep).await;
    let (key, url) = e.object(generated_bytes(SIZE, 42)).await;
    // A tampered signature: S3 itself answers 403.
    let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=00");
    let err = fetch(&fetcher(true), &tampered).await.unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 403, .. }),
        "{err}"
    );
    no_secret(&err);
    // An expired URL.
    let expired = e
        .store
        .presign_until(
            &key,
            PresignMethod::Get,
            std::time::SystemTime::now() - Duration::from_secs(5),
        )
        .await
        .unwrap();
    let err = fetch(&fetcher(true), expired.url.as_str())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 403, .. }),
        "{err}"
    );
    // A missing object.
    e.store.delete(&key).await.unwrap();
    let err = fetch(&fetcher(true), &url).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::HttpStatus {
                status: 404 | 403,
                ..
            }
        ),
        "{err}"
    );
    // A persistent 5xx exhausts the retries.
    let (_, url) = e.object(generated_bytes(SIZE, 43)).await;
    e.shaper
        .add_fault(FaultRule::always(Match::RangeGet, Fault::Status(503)));
    let err = fetch(&fetcher(false), &url).await.unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 503, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn object_replaced_mid_fetch_is_detected() {
    let Some(ep) = s3_endpoint() else { return };
    let e = env(&ep).await;
    let (key, url) = e.object(generated_bytes(SIZE, 44)).await;
    let store = e.store.clone();
    let replacement = generated_bytes(SIZE, 45);
    e.shaper.add_fault(FaultRule::once(
        Match::NthRangeGet(4),
        Fault::Hook(Arc::new(move || {
            let store = store.clone();
            let key = key.clone();
            let bytes = replacement.clone();
            Box::pin(async move {
                store
                    .put(&key, PutPayload::Bytes(bytes.into()), PutOptions::default())
                    .await
                    .unwrap();
            })
        })),
    ));
    let err = fetch(&fetcher(false), &url).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Fetch {
                kind: FetchFailure::ObjectChanged,
                ..
            }
        ),
        "{err}"
    );
}
