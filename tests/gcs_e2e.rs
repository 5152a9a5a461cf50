//! `spillway serve --storage gcs` end to end, against the GCS emulator (gcp-storage-emulator)
//! started by `scripts/test.sh` (scripts/test.d/30-gcs-emulator.env.sh):
//! `SPILLWAY_TEST_GCS_ENDPOINT` and `SPILLWAY_TEST_GCS_BUCKET` name it. Without them the tests
//! say they are skipped, unless `SPILLWAY_REQUIRE_SERVERS=1`, where they fail.
//!
//! The emulator does not check URL signatures (the signing is unit-tested in the gcs crate
//! against Google's conformance vectors), so URLs are signed with Google's published test key
//! and API calls are anonymous.

use std::process::Command;

use clap::Parser;

use spillway::client::ClientConfig;
use spillway::demo;
use spillway::wire::keys;
use spillway_storage::{ObjectKey, PresignMethod, Storage, StoreSettings};
use spillway_storage_gcs::{GcsArgs, GcsStore};

use crate::common::*;

const KIB: usize = 1024;

const TEST_KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/storage-backends/gcs/tests/data/test_service_account.not-a-test.json"
);

/// A key prefix of this test's own, so tests sharing the emulator's bucket stay apart.
fn unique_prefix(tag: &str) -> String {
    let id: u64 = rand::random();
    format!("{tag}-{id:016x}/")
}

/// The flags `spillway serve` and `spillway storage init` get for the emulator.
fn gcs_flags(em: &Emulator, bucket: &str, prefix: &str) -> Vec<String> {
    [
        "--storage",
        "gcs",
        "--bucket",
        bucket,
        "--key-prefix",
        prefix,
        "--gcs-endpoint",
        &em.endpoint,
        "--gcs-anonymous",
        "--gcs-credentials-file",
        TEST_KEY_FILE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start(em: &Emulator, prefix: &str, extra: &[&str]) -> TestServer {
    TestServer::start_with(gcs_flags(em, &em.bucket, prefix), extra).await
}

/// A store handle of the tests' own, configured as `spillway serve` is.
async fn test_store(em: &Emulator, prefix: &str) -> GcsStore {
    let flags: GcsArgs = parse_flags(&[
        "--gcs-endpoint",
        &em.endpoint,
        "--gcs-anonymous",
        "--gcs-credentials-file",
        TEST_KEY_FILE,
    ]);
    GcsStore::connect(
        &flags,
        &StoreSettings {
            bucket: Some(em.bucket.clone()),
            key_prefix: prefix.to_string(),
            max_object_bytes: 1 << 32,
        },
    )
    .await
    .unwrap()
}

/// Names of the objects under `prefix` in the emulator's bucket (JSON API list).
async fn list(em: &Emulator, bucket: &str, prefix: &str) -> Vec<String> {
    let url = format!(
        "{}/storage/v1/b/{bucket}/o?prefix={}",
        em.endpoint,
        prefix.replace('/', "%2F")
    );
    let v: serde_json::Value =
        serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap()).unwrap();
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The key behind a resolved result's unredacted source URL.
fn key_of(store: &GcsStore, out: &spillway::client::CallOutput) -> ObjectKey {
    let source = &out.metadata[keys::LOCATION_SOURCE];
    store
        .key_from_url(&url::Url::parse(source).unwrap())
        .unwrap()
}

#[tokio::test]
async fn zstd_results_round_trip_through_the_bucket() {
    let Some(em) = gcs_emulator() else { return };
    let prefix = unique_prefix("zstd");
    let s = start(&em, &prefix, &["--threshold-bytes", "4096"]).await;
    let store = test_store(&em, &prefix).await;

    // Small: inline, nothing stored.
    let out = s
        .client()
        .call(demo::PROTOCOL, "echo", data_params(b"hello"))
        .await
        .unwrap();
    assert!(out.externalized.is_none());
    assert!(list(&em, &em.bucket, &prefix).await.is_empty());

    let data = vec![b'a'; 512 * KIB];
    let out = echo(&s.client(), &data).await;
    let ext = out.externalized.as_ref().expect("externalized");
    // The client reports the URL redacted: the emulator's bucket path, no signature.
    assert!(
        ext.url
            .starts_with(&format!("{}/{}/{prefix}", em.endpoint, em.bucket)),
        "{}",
        ext.url
    );
    assert!(!ext.url.contains('?'));
    let source = &out.metadata[keys::LOCATION_SOURCE];
    assert!(source.contains("X-Goog-Signature="), "a V4 signed url");
    assert!(source.contains("X-Goog-Algorithm=GOOG4-RSA-SHA256"));

    let key = key_of(&store, &out);
    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.content_encoding.as_deref(), Some("zstd"));
    assert_eq!(
        meta.content_type.as_deref(),
        Some("application/vnd.apache.arrow.stream")
    );
    assert!(meta.size < data.len() as u64 / 10, "{} bytes", meta.size);
    assert_eq!(list(&em, &em.bucket, &prefix).await, vec![key.to_string()]);
}

#[tokio::test]
async fn uncompressed_results_are_stored_without_encoding() {
    let Some(em) = gcs_emulator() else { return };
    let prefix = unique_prefix("plain");
    let s = start(
        &em,
        &prefix,
        &["--threshold-bytes", "4096", "--compression", "none"],
    )
    .await;
    let store = test_store(&em, &prefix).await;
    let data: Vec<u8> = (0..200 * KIB).map(|i| (i % 251) as u8).collect();
    let out = echo(&s.client(), &data).await;
    let meta = store.head(&key_of(&store, &out)).await.unwrap();
    assert_eq!(meta.content_encoding, None);
    assert!(meta.size > data.len() as u64);
}

#[tokio::test]
async fn large_results_stream_through_resumable_uploads() {
    let Some(em) = gcs_emulator() else { return };
    let prefix = unique_prefix("large");
    let s = start(&em, &prefix, &[]).await;
    let store = test_store(&em, &prefix).await;
    // Incompressible and above the client library's 16 MiB single-request threshold: the
    // externalizer's 8 MiB chunks go out as a resumable upload in several pieces.
    let size = 24_000_000;
    let out = blob(&s.client(), size).await;
    let ext = out.externalized.as_ref().expect("externalized");
    assert!(
        ext.stats.encoded_bytes > 16 * 1024 * 1024,
        "{:?}",
        ext.stats
    );
    let meta = store.head(&key_of(&store, &out)).await.unwrap();
    assert_eq!(meta.size, ext.stats.encoded_bytes);
}

#[tokio::test]
async fn large_requests_go_through_upload_urls() {
    let Some(em) = gcs_emulator() else { return };
    let prefix = unique_prefix("upload");
    let s = start(&em, &prefix, &["--max-request-bytes", "65536"]).await;
    let data: Vec<u8> = (0..300 * KIB).map(|i| (i % 253) as u8).collect();
    // Uncompressed, so the client's size pre-flight sends it through an upload URL.
    let client = s.client_with(ClientConfig {
        request_compression: None,
        ..ClientConfig::default()
    });
    let out = echo(&client, &data).await;
    // The request went into the bucket through the signed PUT URL (the 300 KiB result came
    // back inline).
    assert!(out.externalized.is_none());
    let objects = list(&em, &em.bucket, &prefix).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let store = test_store(&em, &prefix).await;
    let meta = store
        .head(&ObjectKey::parse(&objects[0]).unwrap())
        .await
        .unwrap();
    assert_eq!(
        meta.content_type.as_deref(),
        Some("application/vnd.apache.arrow.stream")
    );
    assert_eq!(meta.content_encoding, None);
}

/// The answer to a request pointer naming `location`, which the server refuses.
async fn refused(s: &TestServer, location: &str) -> String {
    refused_text(post_pointer(s, location, None).await, "X-Goog-Signature=").await
}

#[tokio::test]
async fn request_pointers_resolve_only_from_the_servers_own_bucket_and_prefix() {
    let Some(em) = gcs_emulator() else { return };
    let prefix = unique_prefix("ptr");
    let s = start(&em, &prefix, &[]).await;
    let store = test_store(&em, &prefix).await;

    let data = b"through the bucket".to_vec();
    let key = put_new(&store, echo_body(&data)).await;
    let get = presigned(&store, &key, PresignMethod::Get, 60).await;
    let resp = post_pointer(&s, get.url.as_str(), None).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-vgi-rpc-error").is_none());
    let stream =
        spillway::wire::read_stream(resp.bytes().await.unwrap(), Default::default()).unwrap();
    assert_eq!(binary_value(&stream.batches[0].batch), data);

    let good = get.url.to_string();
    let other_prefix = test_store(&em, &unique_prefix("other")).await;
    let elsewhere = presigned(
        &other_prefix,
        &other_prefix.new_key(),
        PresignMethod::Get,
        60,
    )
    .await;
    let put = presigned(&store, &key, PresignMethod::Put, 60).await;
    // Signed on 2020-01-01 for an hour: long expired (the emulator would serve it anyway).
    let date = query_param(&get.url, "X-Goog-Date");
    let expired = good
        .replace(&date, "20200101T000000Z")
        .replace(&format!("%2F{}%2F", &date[..8]), "%2F20200101%2F");
    let cases = [
        (
            good.replacen(&format!("/{}/", em.bucket), "/another-bucket/", 1),
            "URL rejected",
        ),
        (elsewhere.url.to_string(), "URL rejected"),
        (good.replacen("127.0.0.1", "localhost", 1), "URL rejected"),
        (good.split('?').next().unwrap().to_string(), "URL rejected"),
        (put.url.to_string(), "not a download url"),
        (expired, "expired"),
        (
            "http://169.254.169.254/computeMetadata/v1/".to_string(),
            "URL rejected",
        ),
    ];
    for (url, expect) in cases {
        let text = refused(&s, &url).await;
        assert!(
            text.contains(expect),
            "{}: {text}",
            spillway_storage::redact_url(&url)
        );
    }
    // A missing object is an error, not an empty request.
    let gone = presigned(&store, &store.new_key(), PresignMethod::Get, 60).await;
    let text = refused(&s, gone.url.as_str()).await;
    assert!(text.contains("not found"), "{text}");
    // And the server still serves.
    assert_serves(&s, 1).await;
}

#[tokio::test]
async fn serve_refuses_an_incomplete_gcs_configuration() {
    let cli = spillway::cli::Cli::try_parse_from([
        "spillway",
        "serve",
        "--storage",
        "gcs",
        "--gcs-endpoint",
        "http://127.0.0.1:9",
        "--gcs-anonymous",
    ])
    .unwrap();
    let spillway::cli::Command::Serve(args) = cli.command else {
        unreachable!()
    };
    let err = args.build_server().await.err().expect("no bucket");
    assert!(err.to_string().contains("SPILLWAY_BUCKET"), "{err}");
}

/// `spillway storage init` through the real binary, with a clean environment.
fn storage_init(em: &Emulator, bucket: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .env_clear()
        .args(["storage", "init"])
        .args(gcs_flags(em, bucket, "spillway/"))
        .args(extra)
        .output()
        .expect("run spillway storage init");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn storage_init_creates_the_bucket_and_installs_the_lifecycle_rule() {
    let Some(em) = gcs_emulator() else { return };
    let bucket = unique_name("init");

    let (ok, text) = storage_init(&em, &bucket, &["--expire-after-days", "3"]);
    assert!(!ok, "a missing bucket is not created unless asked: {text}");
    assert!(text.contains("--create-bucket"), "{text}");

    let (ok, text) = storage_init(
        &em,
        &bucket,
        &[
            "--create-bucket",
            "--gcs-project",
            "test-project",
            "--expire-after-days",
            "3",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains(&format!("created bucket {bucket}")), "{text}");
    assert!(text.contains("lifecycle rule installed"), "{text}");

    let v: serde_json::Value = serde_json::from_slice(
        &reqwest::get(format!("{}/storage/v1/b/{bucket}", em.endpoint))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["lifecycle"]["rule"],
        serde_json::json!([{"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": ["spillway/"]}}])
    );

    let (ok, text) = storage_init(&em, &bucket, &["--expire-after-days", "3"]);
    assert!(ok, "{text}");
    assert!(text.contains("already installed"), "{text}");
}
