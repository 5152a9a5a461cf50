//! `FakeStorage` against the real fake-storage service of vgi-rpc 0.52.2
//! (`python -m vgi_rpc.conformance.fake_storage --port 0`), over HTTP on 127.0.0.1.
//!
//! Needs `SPILLWAY_VGI_PYTHON` (a Python with vgi-rpc; `scripts/test.sh` sets it). Without it
//! the tests print a loud skip message and pass, unless `SPILLWAY_REQUIRE_PYTHON=1` or
//! `SPILLWAY_REQUIRE_SERVERS=1`, in which case they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use spillway_conformance::storage::FakeStorage;
use spillway_storage::{ByteRange, ObjectKey, PresignMethod, PutOptions, Storage, StorageError};

/// The fake storage service, stopped when dropped.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the service, or returns `None` (after saying why) when no Python is configured.
fn start() -> Option<Service> {
    let python = spillway_test_support::require_python()?;
    let mut child = Command::new(python)
        .args(["-m", "vgi_rpc.conformance.fake_storage", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the fake storage service");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the PORT line");
    let port: u16 = line
        .trim()
        .strip_prefix("PORT:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected PORT:<n>, got {line:?}"));
    Some(Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    })
}

async fn read_all(storage: &FakeStorage, key: &ObjectKey, range: Option<ByteRange>) -> Vec<u8> {
    let got = storage.get(key, range).await.unwrap();
    let mut out = Vec::new();
    let mut stream = got.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn stats(base: &str) -> serde_json::Value {
    let body = reqwest::get(format!("{base}/_stats"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn objects_round_trip_with_their_encoding_and_ranges() {
    let Some(service) = start() else { return };
    let storage = FakeStorage::connect(&service.base, 1024).await.unwrap();
    storage.check_ready().await.unwrap();
    let key = storage.new_key();
    assert_eq!(key.as_str().len(), 32, "keys are the service's 32-hex ids");
    let opts = PutOptions {
        content_type: Some("application/vnd.apache.arrow.stream".into()),
        content_encoding: Some("zstd".into()),
    };
    let meta = storage
        .put(&key, Bytes::from_static(b"0123456789").into(), opts)
        .await
        .unwrap();
    assert_eq!(meta.size, 10);
    let head = storage.head(&key).await.unwrap();
    assert_eq!(head.size, 10);
    assert_eq!(head.content_encoding.as_deref(), Some("zstd"));
    assert_eq!(read_all(&storage, &key, None).await, b"0123456789");
    let got = storage
        .get(&key, Some(ByteRange { start: 2, end: 5 }))
        .await
        .unwrap();
    assert_eq!((got.meta.size, got.range.start, got.range.end), (10, 2, 5));
    assert_eq!(
        read_all(&storage, &key, Some(ByteRange { start: 2, end: 5 })).await,
        b"234"
    );
    match storage
        .get(&key, Some(ByteRange { start: 20, end: 30 }))
        .await
    {
        Err(StorageError::RangeNotSatisfiable { size }) => assert_eq!(size, 10),
        other => panic!("expected 416, got {other:?}"),
    }
    // A streamed payload is gathered (the service needs a Content-Length).
    let key2 = storage.new_key();
    let chunks = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"ab")),
        Ok(Bytes::from_static(b"cd")),
    ])
    .boxed();
    storage
        .put(
            &key2,
            spillway_storage::PutPayload::Stream {
                stream: chunks,
                size_hint: None,
            },
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(read_all(&storage, &key2, None).await, b"abcd");
    assert_eq!(stats(&service.base).await["object_count"], 2);
    // The worker's own reads do not count as client downloads.
    assert_eq!(stats(&service.base).await.get("download_requests"), None);
}

#[tokio::test]
async fn presigned_urls_are_method_bound_and_map_back_to_keys() {
    let Some(service) = start() else { return };
    let storage = FakeStorage::connect(&service.base, 1024).await.unwrap();
    let key = storage.new_key();
    let ttl = Duration::from_secs(60);
    let put = storage
        .presign(&key, PresignMethod::Put, ttl)
        .await
        .unwrap();
    let get = storage
        .presign(&key, PresignMethod::Get, ttl)
        .await
        .unwrap();
    assert_ne!(put.url, get.url);
    let http = reqwest::Client::new();
    // The upload URL refuses GET; the download URL refuses PUT.
    let status = http.get(put.url.clone()).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 403);
    let status = http
        .put(get.url.clone())
        .body("x")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 403);
    let status = http
        .put(put.url.clone())
        .body("hello")
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let body = http.get(get.url.clone()).send().await.unwrap();
    assert_eq!(body.bytes().await.unwrap().as_ref(), b"hello");
    assert_eq!(storage.key_from_url(&get.url).unwrap(), key);
    for foreign in [
        put.url.to_string(),
        "http://127.0.0.1:1/download/abc".to_string(),
        format!("{}?x=1", get.url),
        format!("{}/download/a/b", service.base),
    ] {
        let url = url::Url::parse(&foreign).unwrap();
        assert!(storage.key_from_url(&url).is_err(), "{foreign}");
    }
}

#[tokio::test]
async fn failures_are_typed_errors() {
    let Some(service) = start() else { return };
    let storage = FakeStorage::connect(&service.base, 4).await.unwrap();
    let missing = storage.new_key();
    assert!(matches!(
        storage.head(&missing).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        storage.get(&missing, None).await,
        Err(StorageError::NotFound { .. })
    ));
    let big = storage
        .put(
            &missing,
            Bytes::from_static(b"too large").into(),
            PutOptions::default(),
        )
        .await;
    assert!(matches!(
        big,
        Err(StorageError::TooLarge { size: 9, limit: 4 })
    ));
    assert_eq!(stats(&service.base).await["object_count"], 0);
    // Nothing listens on port 1: connecting fails with a backend error, not a panic.
    let e = FakeStorage::connect("http://127.0.0.1:1", 4)
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::Backend(_)), "{e}");
    assert!(FakeStorage::connect("not a url", 4).await.is_err());
}
