//! The local store over real HTTP on 127.0.0.1: presigned GET/HEAD/PUT, ranges, signature and
//! expiry checks, path traversal, size caps and cleanup of aborted uploads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use spillway_storage::conformance::with_query_param;
use spillway_storage::{
    ObjectKey, PresignMethod, PresignedUrl, PutOptions, PutPayload, Storage, StorageError,
};
use spillway_storage_local::{LocalStore, LocalStoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use url::Url;

const MOUNT: &str = "/base/__storage__";
const SECRET_TEXT: &[u8] = b"outside the store root";
/// Failsafe bound for waiting on a server-side event; never used to let time pass.
const WAIT: Duration = Duration::from_secs(10);

/// Sends a message when dropped: marks that a request's handler finished or was cancelled.
struct SignalOnDrop(UnboundedSender<()>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

struct Harness {
    addr: SocketAddr,
    store: Arc<LocalStore>,
    client: reqwest::Client,
    dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    /// One message per request-body chunk the handler pulled.
    pulled: UnboundedReceiver<()>,
    /// One message per request whose handler finished (or was dropped).
    done: UnboundedReceiver<()>,
}

async fn harness(max_object_bytes: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, SECRET_TEXT).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(
        LocalStore::new(LocalStoreConfig {
            root: root.clone(),
            key_prefix: "results/".to_string(),
            public_base: Url::parse(&format!("http://{addr}{MOUNT}/")).unwrap(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            previous_secrets: Vec::new(),
            max_object_bytes,
        })
        .unwrap(),
    );

    let (pulled_tx, pulled) = unbounded_channel();
    let (done_tx, done) = unbounded_channel();
    // Observes the handler from outside: when it pulls body chunks and when it is finished,
    // so tests can synchronise on server-side events instead of sleeping.
    let observe = move |req: Request, next: Next| {
        let pulled_tx = pulled_tx.clone();
        let done_tx = done_tx.clone();
        async move {
            let _signal = SignalOnDrop(done_tx);
            let (parts, body) = req.into_parts();
            let body = Body::from_stream(body.into_data_stream().inspect(move |_| {
                let _ = pulled_tx.send(());
            }));
            let response = next.run(Request::from_parts(parts, body));
            response.await
        }
    };
    let app = Router::new().nest(
        MOUNT,
        store
            .clone()
            .router()
            .layer(axum::middleware::from_fn(observe)),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    Harness {
        addr,
        store,
        client,
        dir,
        root,
        outside,
        pulled,
        done,
    }
}

impl Harness {
    async fn put_bytes(&self, data: &[u8], opts: PutOptions) -> ObjectKey {
        let key = self.store.new_key();
        self.store
            .put(&key, Bytes::copy_from_slice(data).into(), opts)
            .await
            .unwrap();
        key
    }

    async fn url(&self, key: &ObjectKey, method: PresignMethod) -> Url {
        self.store
            .presign(key, method, Duration::from_secs(300))
            .await
            .unwrap()
            .url
    }

    /// Every file under the store root (objects and temporary files).
    fn files_in_root(&self) -> Vec<PathBuf> {
        files_under(&self.root)
    }

    /// Nothing outside the root was written or changed.
    fn assert_outside_untouched(&self) {
        assert_eq!(std::fs::read(&self.outside).unwrap(), SECRET_TEXT);
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["outside.txt", "root"]);
    }

    /// Sends one raw HTTP/1.1 request (so the path reaches the server exactly as written)
    /// and returns the status and the whole response.
    async fn raw(&self, method: &str, target: &str, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        (status, text)
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn header(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn signature_of(url: &Url) -> String {
    url.query_pairs()
        .find(|(k, _)| k == "X-Spillway-Signature")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

fn tampered(url: &Url) -> Url {
    let sig = signature_of(url);
    let last = if sig.ends_with('0') { "1" } else { "0" };
    with_query_param(
        url,
        "X-Spillway-Signature",
        &format!("{}{last}", &sig[..63]),
    )
}

/// Deterministic bytes that are unlikely to appear in error texts.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn refused_reason(err: StorageError) -> String {
    match err {
        StorageError::UrlRefused { reason } => reason,
        other => panic!("expected UrlRefused, got {other:?}"),
    }
}

#[tokio::test]
async fn presigned_get_round_trip_echoes_headers() {
    let h = harness(1 << 20).await;
    // Larger than one read chunk, so the body is streamed in several pieces.
    let data = payload(300 * 1024);
    let opts = PutOptions {
        content_type: Some("application/vnd.apache.arrow.stream".into()),
        content_encoding: Some("zstd".into()),
    };
    let key = h.put_bytes(&data, opts).await;
    let meta = h.store.head(&key).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);

    let resp = h
        .client
        .get(h.url(&key, PresignMethod::Get).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let hs = resp.headers().clone();
    assert_eq!(
        header(&hs, header::CONTENT_TYPE),
        Some("application/vnd.apache.arrow.stream")
    );
    assert_eq!(header(&hs, header::CONTENT_ENCODING), Some("zstd"));
    assert_eq!(header(&hs, header::CONTENT_LENGTH), Some("307200"));
    assert_eq!(header(&hs, header::ACCEPT_RANGES), Some("bytes"));
    assert_eq!(header(&hs, header::ETAG), meta.etag.as_deref());
    assert!(meta.etag.as_deref().unwrap().starts_with('"'));
    assert_eq!(resp.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn defaults_when_no_headers_were_stored() {
    let h = harness(1 << 20).await;
    let key = h.put_bytes(b"plain", PutOptions::default()).await;
    let resp = h
        .client
        .get(h.url(&key, PresignMethod::Get).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(resp.headers(), header::CONTENT_TYPE),
        Some("application/octet-stream")
    );
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(resp.bytes().await.unwrap(), &b"plain"[..]);
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let h = harness(1 << 20).await;
    let opts = PutOptions {
        content_type: Some("text/csv".into()),
        content_encoding: Some("gzip".into()),
    };
    let key = h.put_bytes(&payload(1234), opts).await;
    let url = h.url(&key, PresignMethod::Get).await;
    let resp = h
        .client
        .head(url.clone())
        // Range does not apply to HEAD.
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let hs = resp.headers().clone();
    assert_eq!(header(&hs, header::CONTENT_LENGTH), Some("1234"));
    assert_eq!(header(&hs, header::CONTENT_TYPE), Some("text/csv"));
    assert_eq!(header(&hs, header::CONTENT_ENCODING), Some("gzip"));
    assert_eq!(header(&hs, header::ACCEPT_RANGES), Some("bytes"));
    assert!(hs.get(header::ETAG).is_some());
    assert!(hs.get(header::CONTENT_RANGE).is_none());
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn single_ranges_are_served_exactly() {
    let h = harness(1 << 20).await;
    let data = payload(200 * 1024);
    let key = h.put_bytes(&data, PutOptions::default()).await;
    let url = h.url(&key, PresignMethod::Get).await;
    let size = data.len();
    for (range, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        // Crosses read-chunk boundaries.
        ("bytes=65530-140000", 65530, 140001),
        ("bytes=204700-", 204700, size),
        ("bytes=-100", size - 100, size),
        ("bytes=-999999", 0, size),
        ("bytes=204000-999999", 204000, size),
    ] {
        let resp = h
            .client
            .get(url.clone())
            .header(header::RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let hs = resp.headers().clone();
        let want_cr = format!("bytes {}-{}/{}", start, end - 1, size);
        assert_eq!(header(&hs, header::CONTENT_RANGE), Some(want_cr.as_str()));
        let want_len = (end - start).to_string();
        assert_eq!(header(&hs, header::CONTENT_LENGTH), Some(want_len.as_str()));
        assert_eq!(resp.bytes().await.unwrap(), &data[start..end], "{range}");
    }
}

#[tokio::test]
async fn unsatisfiable_and_ignored_ranges() {
    let h = harness(1 << 20).await;
    let data = payload(100);
    let key = h.put_bytes(&data, PutOptions::default()).await;
    let url = h.url(&key, PresignMethod::Get).await;
    for range in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
        let resp = h
            .client
            .get(url.clone())
            .header(header::RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            header(resp.headers(), header::CONTENT_RANGE),
            Some("bytes */100")
        );
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // Malformed and multi-range headers are ignored: the whole object, 200.
    for range in [
        "bytes=0-1,5-6",
        "bytes=5-2",
        "bytes=x-",
        "lines=1-2",
        "bytes=1",
    ] {
        let resp = h
            .client
            .get(url.clone())
            .header(header::RANGE, range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert!(resp.headers().get(header::CONTENT_RANGE).is_none());
        assert_eq!(resp.bytes().await.unwrap(), data);
    }
}

#[tokio::test]
async fn presigned_put_then_get_and_replace() {
    let h = harness(1 << 20).await;
    let key = h.store.new_key();
    let put_url = h.url(&key, PresignMethod::Put).await;
    let get_url = h.url(&key, PresignMethod::Get).await;

    let first = payload(5000);
    let resp = h
        .client
        .put(put_url.clone())
        .header(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")
        .header(header::CONTENT_ENCODING, "zstd")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let etag1 = header(resp.headers(), header::ETAG).unwrap().to_string();

    let resp = h.client.get(get_url.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), header::ETAG), Some(etag1.as_str()));
    assert_eq!(
        header(resp.headers(), header::CONTENT_TYPE),
        Some("application/vnd.apache.arrow.stream")
    );
    assert_eq!(
        header(resp.headers(), header::CONTENT_ENCODING),
        Some("zstd")
    );
    assert_eq!(resp.bytes().await.unwrap(), first);

    // Replacing the bytes changes the ETag and the stored headers together.
    let resp = h
        .client
        .put(put_url)
        .header(header::CONTENT_TYPE, "text/plain")
        .body("second version")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let etag2 = header(resp.headers(), header::ETAG).unwrap().to_string();
    assert_ne!(etag1, etag2);
    let resp = h.client.get(get_url).send().await.unwrap();
    assert_eq!(header(resp.headers(), header::ETAG), Some(etag2.as_str()));
    assert_eq!(
        header(resp.headers(), header::CONTENT_TYPE),
        Some("text/plain")
    );
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(resp.bytes().await.unwrap(), &b"second version"[..]);

    let meta = h.store.head(&key).await.unwrap();
    assert_eq!(meta.etag.as_deref(), Some(etag2.as_str()));
    assert_eq!(meta.size, 14);
}

#[tokio::test]
async fn chunked_put_is_streamed_to_the_store() {
    let h = harness(1 << 20).await;
    let key = h.store.new_key();
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..8)
        .map(|i| Ok(Bytes::from(vec![i as u8; 10_000])))
        .collect();
    let resp = h
        .client
        .put(h.url(&key, PresignMethod::Put).await)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let meta = h.store.head(&key).await.unwrap();
    assert_eq!(meta.size, 80_000);
    let got = h
        .client
        .get(h.url(&key, PresignMethod::Get).await)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let want: Vec<u8> = (0..8u8).flat_map(|i| vec![i; 10_000]).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn urls_are_bound_to_their_method() {
    let h = harness(1 << 20).await;
    let data = payload(64);
    let key = h.put_bytes(&data, PutOptions::default()).await;
    let put_url = h.url(&key, PresignMethod::Put).await;
    let get_url = h.url(&key, PresignMethod::Get).await;

    for resp in [
        h.client.get(put_url.clone()).send().await.unwrap(),
        h.client.head(put_url.clone()).send().await.unwrap(),
    ] {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(header::ETAG).is_none());
        let body = resp.bytes().await.unwrap();
        assert!(body.is_empty() || body == "url is signed for PUT\n");
    }
    let resp = h
        .client
        .put(get_url.clone())
        .body("overwrite attempt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.text().await.unwrap(), "url is signed for GET\n");
    // The object is unchanged.
    let resp = h.client.get(get_url.clone()).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap(), data);

    let resp = h.client.delete(get_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        header(resp.headers(), header::ALLOW),
        Some("GET, HEAD, PUT")
    );
    assert!(h.store.head(&key).await.is_ok());
}

#[tokio::test]
async fn bad_signatures_get_403_and_no_bytes() {
    let h = harness(1 << 20).await;
    let data = payload(64);
    let key = h.put_bytes(&data, PutOptions::default()).await;
    let other = h.put_bytes(b"other object", PutOptions::default()).await;
    let url = h.url(&key, PresignMethod::Get).await;

    let mut no_query = url.clone();
    no_query.set_query(None);
    let mut moved = url.clone();
    moved.set_path(&format!("{MOUNT}/{}", other.as_str()));
    let later = with_query_param(&url, "X-Spillway-Expires", "99999999999");
    let as_put = with_query_param(&url, "X-Spillway-Method", "PUT");
    let cases = [
        (tampered(&url), "signature mismatch"),
        (
            with_query_param(&url, "X-Spillway-Signature", ""),
            "signature mismatch",
        ),
        (no_query, "missing signature parameters"),
        (moved, "signature mismatch"),
        (later, "signature mismatch"),
        (as_put, "signature mismatch"),
    ];
    for (bad, reason) in cases {
        let resp = h.client.get(bad.clone()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{bad}");
        assert_eq!(
            header(resp.headers(), header::CONTENT_TYPE),
            Some("text/plain; charset=utf-8")
        );
        assert!(resp.headers().get(header::ETAG).is_none());
        let body = resp.bytes().await.unwrap();
        assert_eq!(body, format!("{reason}\n").as_bytes(), "{bad}");
    }
    // A PUT with a forged signature writes nothing.
    let resp = h
        .client
        .put(tampered(&h.url(&key, PresignMethod::Put).await))
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.store.head(&key).await.unwrap().size, 64);

    // A valid signature for a key that does not exist is a 404.
    let missing = h.store.new_key();
    let resp = h
        .client
        .get(h.url(&missing, PresignMethod::Get).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expired_urls_get_403() {
    let h = harness(1 << 20).await;
    let key = h.put_bytes(b"expiring", PutOptions::default()).await;
    // A zero TTL is already expired (expiry is rounded down to the current second).
    let zero = h
        .store
        .presign(&key, PresignMethod::Get, Duration::ZERO)
        .await
        .unwrap();
    let past = h
        .store
        .presign_until(
            &key,
            PresignMethod::Get,
            SystemTime::now() - Duration::from_secs(60),
        )
        .unwrap();
    let past_put = h
        .store
        .presign_until(
            &key,
            PresignMethod::Put,
            SystemTime::now() - Duration::from_secs(60),
        )
        .unwrap();
    for url in [&zero, &past] {
        let resp = h.client.get(url.url.clone()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.text().await.unwrap(), "url expired\n");
    }
    let resp = h
        .client
        .put(past_put.url.clone())
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.text().await.unwrap(), "url expired\n");
    assert_eq!(h.store.head(&key).await.unwrap().size, 8);

    // A one-second TTL expires at most one second from now.
    let one: PresignedUrl = h
        .store
        .presign(&key, PresignMethod::Get, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(one.expires_at <= SystemTime::now() + Duration::from_secs(1));
}

#[tokio::test]
async fn path_traversal_cannot_escape_the_root() {
    let h = harness(1 << 20).await;
    let key = h.put_bytes(b"inside", PutOptions::default()).await;
    let valid_query = h
        .url(&key, PresignMethod::Get)
        .await
        .query()
        .unwrap()
        .to_string();
    let put_query = h
        .url(&key, PresignMethod::Put)
        .await
        .query()
        .unwrap()
        .to_string();
    let paths = [
        "../outside.txt",
        "../../outside.txt",
        "../root/../outside.txt",
        "%2e%2e/outside.txt",
        "%2E%2E/%2e%2e/outside.txt",
        "..%2Foutside.txt",
        "..%2F..%2F..%2Foutside.txt",
        "results%2F..%2F..%2Foutside.txt",
        "results/..%2f..%2foutside.txt",
        "%2Ftmp%2Foutside.txt",
        "/outside.txt",
        "results/%00",
        "results\\..\\..\\outside.txt",
        "%c0%ae%c0%ae/outside.txt",
    ];
    for path in paths {
        for (method, query) in [("GET", &valid_query), ("PUT", &put_query)] {
            let target = format!("{MOUNT}/{path}?{query}");
            let (status, text) = h.raw(method, &target, b"pwned").await;
            assert!(
                status == 400 || status == 403 || status == 404,
                "{method} {path}: {status}"
            );
            assert!(!text.contains("outside the store root"), "{method} {path}");
        }
    }
    // The same paths through an ordinary client (which normalises dot segments first).
    for path in paths {
        let url = format!("http://{}{MOUNT}/{path}?{valid_query}", h.addr);
        let resp = h
            .client
            .put(url.as_str())
            .body("pwned")
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::OK, "{path}");
        let resp = h.client.get(url.as_str()).send().await.unwrap();
        assert_ne!(resp.status(), StatusCode::OK, "{path}");
        assert!(!resp
            .text()
            .await
            .unwrap()
            .contains("outside the store root"));
    }
    h.assert_outside_untouched();
    // Only the one legitimate object exists.
    assert_eq!(h.files_in_root().len(), 1);
    let resp = h
        .client
        .get(h.url(&key, PresignMethod::Get).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), &b"inside"[..]);
}

#[tokio::test]
async fn put_above_the_cap_is_refused_unread() {
    let mut h = harness(1024).await;
    let key = h.store.new_key();
    let url = h.url(&key, PresignMethod::Put).await;
    let resp = h
        .client
        .put(url.clone())
        .body(payload(1025))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.text().await.unwrap(), "object too large\n");
    // The handler refused on Content-Length without pulling any of the body.
    assert!(h.pulled.try_recv().is_err());
    assert!(matches!(
        h.store.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(h.files_in_root().is_empty());

    // Exactly at the cap is fine.
    let resp = h.client.put(url).body(payload(1024)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.store.head(&key).await.unwrap().size, 1024);
}

#[tokio::test]
async fn chunked_put_above_the_cap_is_aborted() {
    let h = harness(1024).await;
    let key = h.store.new_key();
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..3).map(|_| Ok(Bytes::from(vec![7u8; 400]))).collect();
    let resp = h
        .client
        .put(h.url(&key, PresignMethod::Put).await)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(matches!(
        h.store.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(h.files_in_root().is_empty());
}

#[tokio::test]
async fn client_disconnect_mid_put_leaves_nothing() {
    let mut h = harness(1 << 20).await;
    let key = h.store.new_key();
    let url = h.url(&key, PresignMethod::Put).await;
    let target = format!("{}?{}", url.path(), url.query().unwrap());
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\n\r\n",
        h.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&payload(1000)).await.unwrap();
    // Once the handler has pulled a chunk, its temporary file exists.
    tokio::time::timeout(WAIT, h.pulled.recv())
        .await
        .expect("handler pulls the first chunk")
        .unwrap();
    let tmp_files = h.files_in_root();
    assert_eq!(tmp_files.len(), 1, "{tmp_files:?}");
    assert!(tmp_files[0].starts_with(h.root.join("tmp")));

    drop(stream);
    tokio::time::timeout(WAIT, h.done.recv())
        .await
        .expect("handler finishes after the disconnect")
        .unwrap();
    assert!(h.files_in_root().is_empty());
    assert!(matches!(
        h.store.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn failed_streamed_put_leaves_no_object_and_no_temp_file() {
    let h = harness(1 << 20).await;
    let failing = || {
        let items: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from(payload(70_000))),
            Ok(Bytes::from(payload(300_000))),
            Err(std::io::Error::other("producer failed")),
        ];
        PutPayload::Stream {
            stream: futures::stream::iter(items).boxed(),
            size_hint: None,
        }
    };
    let key = h.store.new_key();
    let err = h
        .store
        .put(&key, failing(), PutOptions::default())
        .await
        .unwrap_err();
    match err {
        StorageError::UploadAborted { reason } => assert_eq!(reason, "producer failed"),
        other => panic!("expected UploadAborted, got {other:?}"),
    }
    assert!(matches!(
        h.store.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(h.files_in_root().is_empty());

    // A failed replacement keeps the previous version intact.
    let kept = h.put_bytes(b"version one", PutOptions::default()).await;
    let before = h.store.head(&kept).await.unwrap();
    assert!(h
        .store
        .put(&kept, failing(), PutOptions::default())
        .await
        .is_err());
    assert_eq!(h.store.head(&kept).await.unwrap(), before);
    assert_eq!(h.files_in_root().len(), 1);
    let resp = h
        .client
        .get(h.url(&kept, PresignMethod::Get).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap(), &b"version one"[..]);
}

#[tokio::test]
async fn streamed_put_above_the_cap_is_too_large() {
    let h = harness(1000).await;
    let key = h.store.new_key();
    let items: Vec<std::io::Result<Bytes>> =
        (0..5).map(|_| Ok(Bytes::from(vec![1u8; 300]))).collect();
    let err = h
        .store
        .put(
            &key,
            PutPayload::Stream {
                stream: futures::stream::iter(items).boxed(),
                size_hint: None,
            },
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                size: 1200,
                limit: 1000
            }
        ),
        "{err:?}"
    );
    let err = h
        .store
        .put(
            &key,
            Bytes::from(vec![0u8; 1001]).into(),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { size: 1001, .. }));
    assert!(h.files_in_root().is_empty());
}

#[tokio::test]
async fn key_from_url_accepts_only_its_own_valid_get_urls() {
    let h = harness(1 << 20).await;
    let key = h.put_bytes(b"pointer target", PutOptions::default()).await;
    let url = h.url(&key, PresignMethod::Get).await;
    let sig = signature_of(&url);
    assert_eq!(h.store.key_from_url(&url).unwrap(), key);

    let foreign = |u: &Url| {
        let err = h.store.key_from_url(u).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&sig), "signature leaked: {shown}");
        match err {
            StorageError::ForeignUrl { url } => assert!(!url.contains('?'), "{url}"),
            other => panic!("expected ForeignUrl for {u}, got {other:?}"),
        }
    };
    let mut other_host = url.clone();
    other_host.set_host(Some("localhost")).unwrap();
    foreign(&other_host);
    let mut other_port = url.clone();
    other_port
        .set_port(Some(h.addr.port().wrapping_add(1).max(1)))
        .unwrap();
    foreign(&other_port);
    let mut other_scheme = url.clone();
    other_scheme.set_scheme("https").unwrap();
    foreign(&other_scheme);
    for path in [
        format!("/other/__storage__/{key}"),
        format!("/base/__storage__x/{key}"),
        format!("/base/{key}"),
        format!("{MOUNT}/%2e%2e/%2e%2e/{key}"),
        format!("{MOUNT}/../{key}"),
    ] {
        let mut u = url.clone();
        u.set_path(&path);
        foreign(&u);
    }

    // Encoded separators are not decoded into a new key.
    let mut encoded = url.clone();
    encoded.set_path(&format!("{MOUNT}/{}", key.as_str().replace('/', "%2F")));
    assert!(matches!(
        h.store.key_from_url(&encoded),
        Err(StorageError::InvalidKey { .. })
    ));

    let refused = |u: &Url| {
        let err = h.store.key_from_url(u).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&sig), "signature leaked: {shown}");
        refused_reason(err)
    };
    assert_eq!(refused(&tampered(&url)), "signature mismatch");
    let mut no_query = url.clone();
    no_query.set_query(None);
    assert_eq!(refused(&no_query), "missing signature parameters");
    let expired = h
        .store
        .presign_until(
            &key,
            PresignMethod::Get,
            SystemTime::now() - Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(refused(&expired.url), "url expired");
    let put_url = h.url(&key, PresignMethod::Put).await;
    assert_eq!(refused(&put_url), "url is signed for PUT");
}

#[tokio::test]
async fn sweep_deletes_old_objects_only() {
    let h = harness(1 << 20).await;
    let a = h.put_bytes(b"a", PutOptions::default()).await;
    let b = h.put_bytes(b"b", PutOptions::default()).await;
    let a_url = h.url(&a, PresignMethod::Get).await;

    assert_eq!(
        h.store
            .sweep_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(h.store.head(&a).await.is_ok());
    assert!(h.store.head(&b).await.is_ok());

    assert_eq!(h.store.sweep_older_than(Duration::ZERO).await.unwrap(), 2);
    for k in [&a, &b] {
        assert!(matches!(
            h.store.head(k).await,
            Err(StorageError::NotFound { .. })
        ));
    }
    assert!(h.files_in_root().is_empty());
    let resp = h.client.get(a_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(h.store.sweep_older_than(Duration::ZERO).await.unwrap(), 0);
}
