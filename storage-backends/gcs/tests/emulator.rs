//! The GCS store against a real GCS emulator (gcp-storage-emulator, started by
//! `./scripts/test.sh` through scripts/test.d/30-gcs-emulator.env.sh, or by hand with
//! `scripts/gcs-emulator.sh start spillway-test` plus
//! `SPILLWAY_TEST_GCS_ENDPOINT=http://127.0.0.1:9023 SPILLWAY_TEST_GCS_BUCKET=spillway-test`).
//!
//! The emulator does not check signatures, so signed URLs are only exercised for their shape
//! here; the signing itself is unit-tested against Google's conformance vectors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use spillway_storage::conformance::{self, assert_not_found, chunked, read_all, Capabilities};
use spillway_storage::{
    ByteRange, InitOptions, ObjectKey, PresignMethod, PutOptions, PutPayload, Storage, StorageError,
};
use spillway_storage_gcs::{GcsConfig, GcsStore};
use spillway_test_support::require_envs;
use url::Url;

const TEST_KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/test_service_account.not-a-test.json"
);

struct Emulator {
    endpoint: Url,
    bucket: String,
}

/// The emulator from the environment; `None` (after a loud message) when it is not configured
/// and servers are not required.
fn emulator() -> Option<Emulator> {
    let [endpoint, bucket] = require_envs(
        ["SPILLWAY_TEST_GCS_ENDPOINT", "SPILLWAY_TEST_GCS_BUCKET"],
        "the GCS emulator, scripts/test.d/30-gcs-emulator.env.sh",
    )?;
    Some(Emulator {
        endpoint: Url::parse(&endpoint).expect("SPILLWAY_TEST_GCS_ENDPOINT is a url"),
        bucket,
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    // A fresh key from the store's own generator is random enough for test isolation.
    let k = ObjectKey::random("");
    u64::from_str_radix(&k.as_str()[..16], 16).unwrap()
}

fn config(em: &Emulator) -> GcsConfig {
    let mut c = GcsConfig::new(em.bucket.clone());
    c.key_prefix = format!("{}/", unique("t-"));
    c.endpoint = Some(em.endpoint.clone());
    c.anonymous = true;
    c.credentials_file = Some(TEST_KEY_FILE.into());
    c.project = Some("test-project".into());
    c
}

async fn store(c: GcsConfig) -> GcsStore {
    GcsStore::new(c).await.expect("store builds")
}

/// Deterministic incompressible-looking bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

/// The shared storage contract. The emulator does not check signatures (see
/// `scripts/gcs-emulator.sh`), and the store's own URL check is for shape and expiry only, so
/// the tampering checks are declared off, not skipped.
const EMULATOR: Capabilities = Capabilities {
    http_checks_signatures: false,
    key_from_url_checks_signatures: false,
};

#[tokio::test]
async fn the_gcs_store_meets_the_storage_contract() {
    let Some(em) = emulator() else { return };
    let s = store(config(&em)).await;
    assert_eq!(s.kind(), "gcs");
    let put = s
        .presign(&s.new_key(), PresignMethod::Put, Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(put.url.origin(), em.endpoint.origin());
    let dynamic: Arc<dyn Storage> = Arc::new(s);
    conformance::run_all(dynamic, EMULATOR).await;
}

#[tokio::test]
async fn large_streams_upload_in_pieces_of_unknown_total_size() {
    let Some(em) = emulator() else { return };
    let s = store(config(&em)).await;
    let key = s.new_key();
    // Above the client library's 16 MiB single-request threshold, and not a multiple of the
    // 256 KiB upload quantum, in chunks like the externalizer's.
    let data = pattern(21 * 1024 * 1024 + 12345, 1);
    let want = Sha256::digest(&data);
    let meta = s
        .put(
            &key,
            chunked(&data, 8 * 1024 * 1024),
            PutOptions {
                content_type: Some("application/octet-stream".into()),
                content_encoding: Some("zstd".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.content_encoding.as_deref(), Some("zstd"));
    let (range, bytes) = read_all(&s, &key, None).await.unwrap();
    assert_eq!(range.end, data.len() as u64);
    assert_eq!(Sha256::digest(&bytes), want);
    let start = 17 * 1024 * 1024 + 3;
    let (_, tail) = read_all(
        &s,
        &key,
        Some(ByteRange {
            start,
            end: start + 1000,
        }),
    )
    .await
    .unwrap();
    assert_eq!(tail, &data[start as usize..start as usize + 1000]);
    s.delete(&key).await.unwrap();
}

#[tokio::test]
async fn a_failing_producer_stores_nothing() {
    let Some(em) = emulator() else { return };
    let s = store(config(&em)).await;
    let key = s.new_key();
    // One 8 MiB upload piece goes out before the producer fails.
    let chunks: Vec<std::io::Result<Bytes>> = vec![
        Ok(Bytes::from(pattern(8 * 1024 * 1024, 2))),
        Ok(Bytes::from(pattern(4 * 1024 * 1024, 3))),
        Err(std::io::Error::other("encoder exploded")),
    ];
    let payload = PutPayload::Stream {
        stream: futures::stream::iter(chunks).boxed(),
        size_hint: None,
    };
    match s.put(&key, payload, PutOptions::default()).await {
        Err(StorageError::UploadAborted { reason }) => {
            assert!(reason.contains("encoder exploded"), "{reason}")
        }
        other => panic!("expected UploadAborted, got {other:?}"),
    }
    assert_not_found("head", s.head(&key).await);
}

#[tokio::test]
async fn objects_over_the_limit_are_refused_and_not_stored() {
    let Some(em) = emulator() else { return };
    let mut c = config(&em);
    c.max_object_bytes = 1024 * 1024;
    let s = store(c).await;

    let key = s.new_key();
    let err = s
        .put(
            &key,
            Bytes::from(vec![0u8; 1024 * 1024 + 1]).into(),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit: 1048576, .. }),
        "{err}"
    );
    assert_not_found("head", s.head(&key).await);

    let err = s
        .put(
            &key,
            chunked(&pattern(3 * 1024 * 1024, 4), 256 * 1024),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit: 1048576, .. }),
        "{err}"
    );
    assert_not_found("head", s.head(&key).await);

    // Exactly the limit is fine.
    s.put(
        &key,
        Bytes::from(vec![7u8; 1024 * 1024]).into(),
        PutOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.head(&key).await.unwrap().size, 1024 * 1024);
    s.delete(&key).await.unwrap();

    let bad = PutOptions {
        content_type: Some("text/plain\r\nx-injected: 1".into()),
        content_encoding: None,
    };
    assert!(s
        .put(&key, Bytes::from_static(b"x").into(), bad)
        .await
        .is_err());
    assert_not_found("head", s.head(&key).await);
}

#[tokio::test]
async fn readiness_checks_the_bucket() {
    let Some(em) = emulator() else { return };
    let s = store(config(&em)).await;
    s.check_ready().await.unwrap();

    let mut c = config(&em);
    c.bucket = unique("missing-");
    let missing = store(c).await;
    let err = missing.check_ready().await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    // Nothing listens on this port: the failure is reported, not hung on.
    let mut c = config(&em);
    c.endpoint = Some(Url::parse("http://127.0.0.1:9").unwrap());
    let down = store(c).await;
    let err = down.check_ready().await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
}

async fn bucket_rules(em: &Emulator, bucket: &str) -> Vec<serde_json::Value> {
    let url = format!("{}storage/v1/b/{bucket}", em.endpoint);
    let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v.pointer("/lifecycle/rule")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default()
}

fn rule(prefix: &str, days: u32) -> serde_json::Value {
    serde_json::json!({"action": {"type": "Delete"}, "condition": {"age": days, "matchesPrefix": [prefix]}})
}

#[tokio::test]
async fn init_creates_the_bucket_and_installs_the_lifecycle_rule() {
    let Some(em) = emulator() else { return };
    let bucket = unique("init-");
    let mut c = config(&em);
    c.bucket = bucket.clone();
    c.key_prefix = "spillway/".into();
    let s = store(c.clone()).await;
    let opts = InitOptions {
        create_bucket: false,
        expire_after_days: 2,
        abort_incomplete_uploads_after_days: 1,
    };

    // A missing bucket is only created when asked, and needs a project.
    let err = s.init(&opts).await.unwrap_err();
    assert!(err.to_string().contains("--create-bucket"), "{err}");
    let mut no_project = c.clone();
    no_project.project = None;
    let err = store(no_project)
        .await
        .init(&InitOptions {
            create_bucket: true,
            ..opts.clone()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SPILLWAY_GCS_PROJECT"), "{err}");

    let report = s
        .init(&InitOptions {
            create_bucket: true,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert!(report.contains("created bucket"), "{report}");
    assert!(report.contains("lifecycle rule installed"), "{report}");
    assert_eq!(bucket_rules(&em, &bucket).await, vec![rule("spillway/", 2)]);
    s.check_ready().await.unwrap();

    // Idempotent.
    let report = s.init(&opts).await.unwrap();
    assert!(report.contains("already installed"), "{report}");
    assert_eq!(bucket_rules(&em, &bucket).await, vec![rule("spillway/", 2)]);

    // Other rules survive; a new age replaces Spillway's rule.
    let other = rule("logs/", 30);
    let patch = serde_json::json!({"lifecycle": {"rule": [other.clone(), rule("spillway/", 2)]}});
    let resp = reqwest::Client::new()
        .patch(format!("{}storage/v1/b/{bucket}", em.endpoint))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let report = s
        .init(&InitOptions {
            expire_after_days: 1,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert!(report.contains("lifecycle rule installed"), "{report}");
    assert_eq!(
        bucket_rules(&em, &bucket).await,
        vec![other.clone(), rule("spillway/", 1)]
    );

    // No rule asked for: nothing changes.
    let report = s
        .init(&InitOptions {
            expire_after_days: 0,
            ..opts.clone()
        })
        .await
        .unwrap();
    assert!(report.contains("no lifecycle rule"), "{report}");
    assert_eq!(bucket_rules(&em, &bucket).await.len(), 2);

    // An empty key prefix would expire the whole bucket: refused with instructions.
    let mut whole = c.clone();
    whole.key_prefix = String::new();
    let report = store(whole).await.init(&opts).await.unwrap();
    assert!(report.contains("NOT installed"), "{report}");
    assert!(report.contains("gcloud storage buckets update"), "{report}");
    assert_eq!(bucket_rules(&em, &bucket).await.len(), 2);
}
