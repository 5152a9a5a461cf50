//! `spillway serve --storage s3` end to end, against LocalStack (host mode, presigned-URL
//! signature and expiry checks on) started by `scripts/test.sh`: `SPILLWAY_TEST_S3_ENDPOINT`
//! names it and the AWS credentials come from the environment, through the standard chain.
//! Without the variable the tests say they are skipped, unless `SPILLWAY_REQUIRE_SERVERS=1`,
//! where they fail.

use std::process::Command;
use std::time::{Duration, SystemTime};

use spillway::demo;
use spillway_storage::{ObjectKey, PresignMethod, PutOptions, Storage, StoreSettings};
use spillway_storage_s3::S3Store;

use crate::common::*;

const MIB: u64 = 1024 * 1024;

/// The flags of `spillway serve --storage s3` for LocalStack.
fn s3_flags(ep: &str, bucket: &str) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--storage".into(),
        "s3".into(),
        "--bucket".into(),
        bucket.into(),
    ];
    flags.extend(localstack_flags(ep));
    flags
}

/// A new bucket of this test's own, made by `spillway storage init` (objects expire after a
/// day).
fn initialized_bucket(ep: &str, tag: &str) -> String {
    let bucket = unique_name(tag);
    storage_init(ep, &bucket, "1");
    bucket
}

/// A store handle of the tests' own, configured as `spillway serve` is.
async fn test_store(ep: &str, bucket: &str) -> S3Store {
    s3_store(
        &localstack_flags(ep),
        StoreSettings {
            bucket: Some(bucket.to_string()),
            key_prefix: "spillway/".into(),
            max_object_bytes: 1 << 32,
        },
    )
    .await
}

/// The bucket's lifecycle rules.
async fn lifecycle_rules(
    store: &S3Store,
    bucket: &str,
) -> Vec<spillway_storage_s3::aws_sdk_s3::types::LifecycleRule> {
    let request = store.client().get_bucket_lifecycle_configuration();
    let output = request.bucket(bucket).send().await.unwrap();
    output.rules.unwrap_or_default()
}

/// `spillway storage init --create-bucket` through the real binary.
fn storage_init(ep: &str, bucket: &str, days: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.args([
        "storage",
        "init",
        "--create-bucket",
        "--expire-after-days",
        days,
    ])
    .args(s3_flags(ep, bucket));
    let out = cmd.output().expect("run spillway storage init");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "storage init failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn start(ep: &str, bucket: &str, extra: &[&str]) -> TestServer {
    TestServer::start_with(s3_flags(ep, bucket), extra).await
}

/// The key of an object from the (redacted) URL a client reports.
fn key_of(url: &str, bucket: &str) -> ObjectKey {
    let path = url::Url::parse(url).unwrap().path().to_string();
    let key = path
        .strip_prefix(&format!("/{bucket}/"))
        .unwrap_or_else(|| panic!("{url} is not in bucket {bucket}"));
    ObjectKey::parse(key).unwrap()
}

#[tokio::test]
async fn storage_init_installs_a_lifecycle_rule_that_reads_back() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = unique_name("init");
    let report = storage_init(&ep, &bucket, "3");
    for want in [
        format!("created bucket {bucket}"),
        "lifecycle rule spillway-expire-spillway/".to_string(),
    ] {
        assert!(report.contains(&want), "{report}");
    }
    let store = test_store(&ep, &bucket).await;
    let rules = lifecycle_rules(&store, &bucket).await;
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(rule.filter().and_then(|f| f.prefix()), Some("spillway/"));
    assert_eq!(rule.expiration().and_then(|e| e.days()), Some(3));
    let abort = rule.abort_incomplete_multipart_upload();
    assert_eq!(abort.and_then(|a| a.days_after_initiation()), Some(1));
    // Idempotent: a second run keeps one rule, with the new expiry.
    let report = storage_init(&ep, &bucket, "4");
    assert!(
        report.contains(&format!("bucket {bucket} exists")),
        "{report}"
    );
    let rules = lifecycle_rules(&store, &bucket).await;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].expiration().and_then(|e| e.days()), Some(4));
}

#[tokio::test]
async fn results_round_trip_inline_single_put_and_multipart_with_and_without_zstd() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = initialized_bucket(&ep, "rt");
    let store = test_store(&ep, &bucket).await;
    for compression in ["zstd", "none"] {
        let s = start(
            &ep,
            &bucket,
            &["--compression", compression, "--s3-part-size", "8388608"],
        )
        .await;
        let client = s.client();

        // Small: inline, nothing stored.
        let out = client
            .call(demo::PROTOCOL, "echo", data_params(b"hello"))
            .await
            .unwrap();
        assert!(out.externalized.is_none());
        assert_eq!(binary_value(&out.batch), b"hello");

        // 5 MB: externalized with one PUT (below the 16 MiB multipart threshold).
        // 64 MiB: a multipart upload of 8 MiB parts.
        for size in [5_000_000u64, 64 * MIB] {
            let out = client
                .call(demo::PROTOCOL, "blob", size_params(size as i64))
                .await
                .unwrap();
            let info = out.externalized.as_ref().expect("externalized");
            assert!(
                info.url.starts_with(&format!("{ep}/{bucket}/spillway/")),
                "{}",
                info.url
            );
            // The blob is random; the client has checked its sha256 against the pointer's.
            assert_eq!(binary_value(&out.batch).len() as u64, size);
            let key = key_of(&info.url, &bucket);
            let head = store.head(&key).await.unwrap();
            assert_eq!(
                head.content_type.as_deref(),
                Some("application/vnd.apache.arrow.stream")
            );
            let expected_encoding = (compression == "zstd").then_some("zstd");
            assert_eq!(head.content_encoding.as_deref(), expected_encoding);
            let etag = head.etag.unwrap_or_default();
            let multipart = etag.trim_matches('"').contains('-');
            assert_eq!(multipart, size > 16 * MIB, "{size}: etag {etag}");
            assert_eq!(info.stats.encoded_bytes, head.size);
        }
    }
}

#[tokio::test]
async fn large_requests_travel_through_s3_upload_urls() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = initialized_bucket(&ep, "up");
    let s = start(&ep, &bucket, &[]).await;
    // Above the default 4 MiB SPILLWAY_MAX_REQUEST_BYTES: the client gets 413, asks for an
    // upload URL, PUTs to S3, and sends a pointer the server resolves through its store.
    let input = demo::generate_blob(6_000_000, 42);
    let out = echo(&s.client(), &input).await;
    assert!(out.externalized.is_some(), "a 6 MB result is externalized");
    // 20 MiB both ways: uploaded with one PUT by the client, stored back as a multipart upload.
    let input = demo::generate_blob(20 * MIB as usize, 43);
    let out = echo(&s.client(), &input).await;
    let info = out.externalized.expect("externalized");
    let head = test_store(&ep, &bucket)
        .await
        .head(&key_of(&info.url, &bucket))
        .await
        .unwrap();
    assert!(head.etag.unwrap_or_default().contains('-'), "multipart");
    // The vended URLs are S3 presigned URLs of this bucket.
    let pair = s.client().request_upload_urls(1).await.unwrap().remove(0);
    for u in [&pair.upload_url, &pair.download_url] {
        assert!(
            u.starts_with(&format!("{ep}/{bucket}/spillway/")),
            "{}",
            spillway_storage::redact_url(u)
        );
        assert!(u.contains("X-Amz-Signature="));
    }
    assert!(pair.upload_url.contains("x-id=PutObject"));
    assert!(pair.download_url.contains("x-id=GetObject"));
}

/// Sends a request pointer naming `location` for `echo`: whether it failed, and the answer.
async fn send_pointer(s: &TestServer, location: &str) -> (bool, String) {
    let resp = post_pointer(s, location, None).await;
    assert_eq!(resp.status(), 200);
    let failed = resp.headers().get("x-vgi-rpc-error").is_some();
    let text = String::from_utf8_lossy(&resp.bytes().await.unwrap()).to_string();
    (failed, text)
}

#[tokio::test]
async fn expired_and_tampered_urls_fail_with_typed_errors() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = initialized_bucket(&ep, "exp");
    let store = test_store(&ep, &bucket).await;
    let s = start(&ep, &bucket, &[]).await;

    // A request object, as a client would have uploaded it.
    let req = echo_body(b"via s3");
    let key = store.new_key();
    store
        .put(&key, req.into(), PutOptions::default())
        .await
        .unwrap();
    let good = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(300))
        .await
        .unwrap();
    let (failed, text) = send_pointer(&s, good.url.as_str()).await;
    assert!(!failed, "{text}");

    let past = SystemTime::now() - Duration::from_secs(1);
    let expired = store
        .presign_until(&key, PresignMethod::Get, past)
        .await
        .unwrap();
    let sig = query_param(&good.url, "X-Amz-Signature");
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { '1' } else { '0' },
        &sig[1..]
    );
    let tampered = good.url.as_str().replace(&sig, &flipped);

    // The server refuses them as request pointers ...
    let (failed, text) = send_pointer(&s, expired.url.as_str()).await;
    assert!(
        failed && text.contains("URL rejected") && text.contains("expired"),
        "{text}"
    );
    let (failed, text) = send_pointer(&s, &tampered).await;
    assert!(
        failed && text.contains("URL rejected") && text.contains("signature"),
        "{text}"
    );
    assert!(!text.contains(&flipped), "the signature leaked: {text}");
    let put = store
        .presign(&key, PresignMethod::Put, Duration::from_secs(300))
        .await
        .unwrap();
    let (failed, text) = send_pointer(&s, put.url.as_str()).await;
    assert!(failed && text.contains("URL rejected"), "{text}");

    // ... and S3 refuses them to clients, which report the typed error.
    let fetcher = local_fetcher();
    assert!(fetcher.fetch(good.url.as_str(), None).await.is_ok());
    for (what, url) in [("expired", expired.url.to_string()), ("tampered", tampered)] {
        let err = fetcher.fetch(&url, None).await.unwrap_err();
        assert!(
            matches!(err, spillway::Error::HttpStatus { status: 403, .. }),
            "{what}: {err}"
        );
        assert!(!err.to_string().contains("X-Amz-Signature"), "{err}");
    }
}

#[tokio::test]
async fn pointers_name_the_public_endpoint_when_one_is_set() {
    let Some(ep) = s3_endpoint() else { return };
    let bucket = initialized_bucket(&ep, "pub");
    // "localhost" reaches the same LocalStack under another name, as an ingress would.
    let port = url::Url::parse(&ep).unwrap().port().unwrap();
    let public = format!("http://localhost:{port}");
    let s = start(&ep, &bucket, &["--s3-public-endpoint", &public]).await;
    let out = s
        .client()
        .call(demo::PROTOCOL, "blob", size_params(2_000_000))
        .await
        .unwrap();
    let info = out.externalized.expect("externalized");
    assert!(
        info.url.starts_with(&format!("{public}/{bucket}/")),
        "{}",
        info.url
    );
    assert_eq!(binary_value(&out.batch).len(), 2_000_000);
    // The upload flow goes through the public endpoint too, and the server still resolves it.
    let input = demo::generate_blob(5_000_000, 1);
    echo(&s.client(), &input).await;
}
