//! The storage contract as executable checks (feature `conformance`), in the manner of
//! `object_store`'s integration module: every backend's test suite runs [`run_all`] (or the
//! single checks) against a real store, so the local store, S3 and GCS are held to one
//! behaviour.
//!
//! The checks use objects under the store's own key prefix ([`Storage::new_key`]) and delete
//! what they write. Presigned URLs are exercised over real HTTP (reqwest), so the store must
//! be reachable from the test. What a backend legitimately cannot offer is declared in
//! [`Capabilities`], never skipped silently: a check that a capability turns off says so on
//! stderr.

// Test code: a failed expectation is reported by panicking, as in any test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use url::Url;

use crate::{ByteRange, ObjectKey, PresignMethod, PutOptions, PutPayload, Storage, StorageError};

/// The `Content-Type` Spillway's clients send with uploads (and the one upload URLs may sign).
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What a backend under test can and cannot do; every `false` is a documented limitation of
/// that backend (or of its test double), reported when a check is left out because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The server behind presigned URLs checks them: a changed signature, a URL used with
    /// another method, or an expired URL is refused over HTTP. (The GCS emulator accepts any
    /// URL: see `scripts/gcs-emulator.sh`.)
    pub http_checks_signatures: bool,
    /// [`Storage::key_from_url`] verifies the signature itself, so a URL whose signature or key
    /// was changed is refused. (GCS checks only shape and expiry: signatures are RSA over a
    /// private key the server may not hold.)
    pub key_from_url_checks_signatures: bool,
}

impl Capabilities {
    /// Everything checked (the local store, S3).
    pub const FULL: Capabilities = Capabilities {
        http_checks_signatures: true,
        key_from_url_checks_signatures: true,
    };
}

fn not_checked(check: &str, why: &str) {
    eprintln!("conformance: {check}: not checked, the backend {why}");
}

fn arrow_opts(encoding: Option<&str>) -> PutOptions {
    PutOptions {
        content_type: Some(ARROW_STREAM.into()),
        content_encoding: encoding.map(str::to_string),
    }
}

/// Reads a whole object (or range) through [`Storage::get`].
pub async fn read_all(
    store: &dyn Storage,
    key: &ObjectKey,
    range: Option<ByteRange>,
) -> Result<(ByteRange, Vec<u8>), StorageError> {
    let got = store.get(key, range).await?;
    let served = got.range;
    let parts: Vec<Bytes> = got.stream.try_collect().await?;
    Ok((served, parts.concat()))
}

/// `bytes` as a stream of `chunk`-sized pieces, of unknown total size.
pub fn chunked(bytes: &[u8], chunk: usize) -> PutPayload {
    let chunks: Vec<std::io::Result<Bytes>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    PutPayload::Stream {
        stream: futures::stream::iter(chunks).boxed(),
        size_hint: None,
    }
}

/// Asserts that `r` is [`StorageError::NotFound`]; `what` names the call in the failure.
pub fn assert_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, StorageError>) {
    assert!(
        matches!(r, Err(StorageError::NotFound { .. })),
        "{what}: expected NotFound, got {r:?}"
    );
}

/// Every check, in order: [`keys_and_readiness`], [`round_trip_ranges_and_delete`],
/// [`objects_without_headers`], [`streamed_puts`], [`put_options_are_validated`],
/// [`presigned_get_and_put`], [`tampered_urls_are_refused`], [`foreign_urls_are_refused`],
/// [`urls_expire`].
pub async fn run_all(store: Arc<dyn Storage>, caps: Capabilities) {
    let s = store.as_ref();
    keys_and_readiness(s).await;
    round_trip_ranges_and_delete(s).await;
    objects_without_headers(s).await;
    streamed_puts(s).await;
    put_options_are_validated(s).await;
    presigned_get_and_put(s, caps).await;
    tampered_urls_are_refused(s, caps).await;
    foreign_urls_are_refused(s).await;
    urls_expire(s, caps).await;
}

/// Fresh keys are unique, valid and end in 32 hex digits; the store reports ready.
pub async fn keys_and_readiness(store: &dyn Storage) {
    store.check_ready().await.expect("the store is ready");
    let (a, b) = (store.new_key(), store.new_key());
    assert_ne!(a, b);
    ObjectKey::parse(a.as_str()).expect("new keys parse");
    let id = &a.as_str()[a.as_str().len() - 32..];
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
}

/// Put with headers, head, whole and ranged reads (a range past the end is cut, an empty,
/// reversed or out-of-object range is refused), delete (twice), then NotFound everywhere.
pub async fn round_trip_ranges_and_delete(store: &dyn Storage) {
    let key = store.new_key();
    let meta = store
        .put(
            &key,
            Bytes::from_static(b"0123456789").into(),
            arrow_opts(Some("zstd")),
        )
        .await
        .expect("put");
    assert_eq!(meta.key, key);
    assert_eq!(meta.size, 10);
    assert!(meta.etag.is_some(), "put reports an etag");
    let head = store.head(&key).await.expect("head");
    assert_eq!(head.size, 10);
    assert_eq!(head.content_type.as_deref(), Some(ARROW_STREAM));
    assert_eq!(head.content_encoding.as_deref(), Some("zstd"));
    assert!(head.etag.is_some());

    let got = store.get(&key, None).await.expect("get");
    assert_eq!(got.meta.size, 10);
    assert_eq!(got.meta.content_encoding.as_deref(), Some("zstd"));
    drop(got);
    let (range, bytes) = read_all(store, &key, None).await.unwrap();
    assert_eq!(range, ByteRange { start: 0, end: 10 });
    assert_eq!(bytes, b"0123456789");

    let got = store
        .get(&key, Some(ByteRange { start: 3, end: 7 }))
        .await
        .unwrap();
    assert_eq!(got.meta.size, 10, "a ranged read reports the whole size");
    assert_eq!(got.range, ByteRange { start: 3, end: 7 });
    assert_eq!(got.meta.content_encoding.as_deref(), Some("zstd"));
    let body: Vec<Bytes> = got.stream.try_collect().await.unwrap();
    assert_eq!(body.concat(), b"3456");
    let (range, tail) = read_all(store, &key, Some(ByteRange { start: 8, end: 100 }))
        .await
        .unwrap();
    assert_eq!(range, ByteRange { start: 8, end: 10 }, "cut to the object");
    assert_eq!(tail, b"89");
    for bad in [
        ByteRange { start: 10, end: 20 },
        ByteRange { start: 4, end: 4 },
        ByteRange { start: 5, end: 2 },
    ] {
        let r = read_all(store, &key, Some(bad)).await;
        assert!(
            matches!(r, Err(StorageError::RangeNotSatisfiable { size: 10 })),
            "{bad:?}: expected RangeNotSatisfiable, got {r:?}"
        );
    }

    store.delete(&key).await.expect("delete");
    store
        .delete(&key)
        .await
        .expect("deleting a missing object is fine");
    assert_not_found("head", store.head(&key).await);
    assert_not_found("get", store.get(&key, None).await);
    assert_not_found(
        "ranged get",
        store.get(&key, Some(ByteRange { start: 0, end: 1 })).await,
    );
}

/// An object stored without headers reports none.
pub async fn objects_without_headers(store: &dyn Storage) {
    let key = store.new_key();
    store
        .put(&key, Bytes::from_static(b"x").into(), PutOptions::default())
        .await
        .unwrap();
    let head = store.head(&key).await.unwrap();
    assert_eq!(head.content_encoding, None);
    let got = store.get(&key, None).await.unwrap();
    assert_eq!(got.meta.content_encoding, None);
    drop(got);
    store.delete(&key).await.unwrap();
}

/// A chunked stream of unknown size is stored whole; a producer that fails stores nothing
/// ([`StorageError::UploadAborted`] with its reason).
pub async fn streamed_puts(store: &dyn Storage) {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let key = store.new_key();
    let meta = store
        .put(&key, chunked(&data, 64 * 1024 + 1), arrow_opts(None))
        .await
        .unwrap();
    assert_eq!(meta.size, data.len() as u64);
    let (_, stored) = read_all(store, &key, None).await.unwrap();
    assert!(stored == data, "streamed bytes differ");
    store.delete(&key).await.unwrap();

    let key = store.new_key();
    let items: Vec<std::io::Result<Bytes>> = vec![
        Ok(Bytes::from_static(b"a first chunk")),
        Err(std::io::Error::other("the encoder failed")),
    ];
    let payload = PutPayload::Stream {
        stream: futures::stream::iter(items).boxed(),
        size_hint: None,
    };
    match store.put(&key, payload, PutOptions::default()).await {
        Err(StorageError::UploadAborted { reason }) => {
            assert!(reason.contains("encoder failed"), "{reason}")
        }
        other => panic!("expected UploadAborted, got {other:?}"),
    }
    assert_not_found("head after a failed upload", store.head(&key).await);
}

/// Options that are not storable header values ([`PutOptions::validate`]) are refused, and the
/// refused put leaves an existing object untouched.
pub async fn put_options_are_validated(store: &dyn Storage) {
    let key = store.new_key();
    store
        .put(&key, Bytes::from_static(b"kept").into(), arrow_opts(None))
        .await
        .unwrap();
    for bad in ["text/plain\r\nx-injected: 1", "", "tab\there"] {
        for opts in [
            PutOptions {
                content_type: Some(bad.into()),
                content_encoding: None,
            },
            PutOptions {
                content_type: None,
                content_encoding: Some(bad.into()),
            },
        ] {
            let r = store
                .put(&key, Bytes::from_static(b"x").into(), opts.clone())
                .await;
            assert!(r.is_err(), "{opts:?} must be refused");
        }
    }
    assert_eq!(store.head(&key).await.unwrap().size, 4);
    store.delete(&key).await.unwrap();
    let fresh = store.new_key();
    let r = store
        .put(
            &fresh,
            Bytes::from_static(b"x").into(),
            PutOptions {
                content_type: Some("a\nb".into()),
                content_encoding: None,
            },
        )
        .await;
    assert!(r.is_err());
    assert_not_found("head after refused options", store.head(&fresh).await);
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client")
}

/// Upload through a PUT URL, download through a GET URL (bytes and `Content-Encoding` as
/// stored, ranges answered 206), and [`Storage::key_from_url`] maps the GET URL, and only it,
/// back to its key. A GET URL used to PUT is refused where the store checks signatures.
pub async fn presigned_get_and_put(store: &dyn Storage, caps: Capabilities) {
    let http = http();
    let key = store.new_key();
    let ttl = Duration::from_secs(300);
    let put = store.presign(&key, PresignMethod::Put, ttl).await.unwrap();
    let get = store.presign(&key, PresignMethod::Get, ttl).await.unwrap();
    assert_eq!(put.method, PresignMethod::Put);
    assert_eq!(get.method, PresignMethod::Get);
    assert_ne!(put.url, get.url);
    assert!(get.expires_at > SystemTime::now());
    assert!(get.expires_at <= SystemTime::now() + ttl + Duration::from_secs(1));
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let resp = http
        .put(put.url.clone())
        .header("content-type", ARROW_STREAM)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "PUT: {}", resp.status());
    assert!(
        matches!(
            store.key_from_url(&put.url),
            Err(StorageError::UrlRefused { .. })
        ),
        "an upload url is not a download url"
    );
    assert_eq!(store.key_from_url(&get.url).unwrap(), key);
    let (_, stored) = read_all(store, &key, None).await.unwrap();
    assert!(stored == body, "uploaded bytes differ");
    assert_eq!(
        store.head(&key).await.unwrap().content_type.as_deref(),
        Some(ARROW_STREAM)
    );
    let resp = http.get(get.url.clone()).send().await.unwrap();
    assert!(resp.status().is_success(), "GET: {}", resp.status());
    assert!(
        resp.bytes().await.unwrap() == body,
        "downloaded bytes differ"
    );
    let resp = http
        .get(get.url.clone())
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[1..4]);
    store.delete(&key).await.unwrap();

    // Content-Encoding is stored, echoed, and the bytes are not decoded on the way.
    let key = store.new_key();
    store
        .put(
            &key,
            Bytes::from_static(b"payload").into(),
            arrow_opts(Some("zstd")),
        )
        .await
        .unwrap();
    let get = store.presign(&key, PresignMethod::Get, ttl).await.unwrap();
    let resp = http.get(get.url.clone()).send().await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"payload");
    if caps.http_checks_signatures {
        let status = http
            .put(get.url.clone())
            .header("content-type", ARROW_STREAM)
            .body("x")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403, "a GET url used to PUT");
        let (_, still) = read_all(store, &key, None).await.unwrap();
        assert_eq!(still, b"payload");
    } else {
        not_checked("method binding over http", "does not check signatures");
    }
    store.delete(&key).await.unwrap();
}

/// `url` with the value of its query parameter `name` changed to `value`.
pub fn with_query_param(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let mut u = url.clone();
    u.set_query(None);
    u.query_pairs_mut().extend_pairs(pairs);
    u
}

/// The name of the query parameter holding the signature (`X-...-Signature`).
fn signature_param(url: &Url) -> String {
    url.query_pairs()
        .map(|(k, _)| k.into_owned())
        .find(|k| k.to_ascii_lowercase().ends_with("-signature"))
        .expect("a presigned url carries a signature parameter")
}

/// A GET URL with a changed signature, or signed for another key, is refused over HTTP (403,
/// without the object's bytes) and by [`Storage::key_from_url`] (as far as [`Capabilities`] say the backend checks).
pub async fn tampered_urls_are_refused(store: &dyn Storage, caps: Capabilities) {
    let http = http();
    let key = store.new_key();
    store
        .put(&key, Bytes::from_static(b"secret").into(), arrow_opts(None))
        .await
        .unwrap();
    let other = store.new_key();
    store
        .put(
            &other,
            Bytes::from_static(b"other").into(),
            arrow_opts(None),
        )
        .await
        .unwrap();
    let get = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(300))
        .await
        .unwrap();
    let param = signature_param(&get.url);
    let sig = get
        .url
        .query_pairs()
        .find(|(k, _)| *k == *param)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { '1' } else { '0' },
        &sig[1..]
    );
    let bad_signature = with_query_param(&get.url, &param, &flipped);
    let mut other_key = get.url.clone();
    other_key.set_path(&get.url.path().replace(key.as_str(), other.as_str()));
    for (what, url) in [("signature", &bad_signature), ("key", &other_key)] {
        if caps.http_checks_signatures {
            let resp = http.get(url.clone()).send().await.unwrap();
            let status = resp.status();
            assert_eq!(status, 403, "changed {what}");
            let body = resp.bytes().await.unwrap();
            assert!(
                !body.windows(5).any(|w| w == b"other") && !body.windows(6).any(|w| w == b"secret"),
                "changed {what}: object bytes in the refusal"
            );
        } else {
            not_checked(
                &format!("changed {what} over http"),
                "does not check signatures",
            );
        }
        if caps.key_from_url_checks_signatures {
            let r = store.key_from_url(url);
            assert!(
                matches!(r, Err(StorageError::UrlRefused { .. })),
                "changed {what}: key_from_url gave {r:?}"
            );
            let text = format!("{:?}", r);
            assert!(!text.contains(&flipped) && !text.contains(&sig), "{text}");
        } else {
            not_checked(
                &format!("changed {what} in key_from_url"),
                "checks url shape and expiry only",
            );
        }
    }
    // Without any signature, never accepted.
    let mut unsigned = get.url.clone();
    unsigned.set_query(None);
    assert!(store.key_from_url(&unsigned).is_err());
    for k in [key, other] {
        store.delete(&k).await.unwrap();
    }
}

/// URLs of another host, another path or with escapes are not this store's.
pub async fn foreign_urls_are_refused(store: &dyn Storage) {
    let key = store.new_key();
    let get = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(300))
        .await
        .unwrap();
    let text = get.url.as_str();
    let host = get.url.host_str().unwrap_or_default().to_string();
    let candidates = [
        text.replacen(&host, "169.254.169.254", 1),
        text.replacen(key.as_str(), "../../etc/passwd", 1),
        text.replacen(key.as_str(), &key.as_str().replace('/', "%2F"), 1),
        text.replacen(key.as_str(), &format!("{}%2e%2e", key.as_str()), 1),
        text.replacen("://", "://user:pw@", 1),
    ];
    for c in candidates {
        let url = Url::parse(&c).unwrap();
        let r = store.key_from_url(&url);
        assert!(r.is_err(), "{c} must be refused, got {r:?}");
        let shown = r.unwrap_err().to_string();
        assert!(!shown.contains("pw@"), "{shown}");
    }
    assert!(store
        .key_from_url(&Url::parse("https://example.com/x").unwrap())
        .is_err());
}

/// A URL with a one-second lifetime is refused by [`Storage::key_from_url`] once it has
/// expired, and answered 403 over HTTP where the store checks.
pub async fn urls_expire(store: &dyn Storage, caps: Capabilities) {
    let http = http();
    let key = store.new_key();
    store
        .put(
            &key,
            Bytes::from_static(b"short-lived").into(),
            arrow_opts(None),
        )
        .await
        .unwrap();
    let url = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(url.expires_at <= SystemTime::now() + Duration::from_secs(2));
    // Bounded wait for the expiry (plus a second: expiries are whole seconds).
    let wait = url
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_millis(1100);
    tokio::time::sleep(wait).await;
    match store.key_from_url(&url.url) {
        Err(StorageError::UrlRefused { reason }) => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("expected an expired url to be refused, got {other:?}"),
    }
    if caps.http_checks_signatures {
        // Stores judge expiry by their own clock: poll (bounded) until the refusal.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let status = http.get(url.url.clone()).send().await.unwrap().status();
            if status == 403 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                std::time::Instant::now() < deadline,
                "the url still worked 15 s after its 1 s ttl"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        not_checked("expiry over http", "does not check signatures");
    }
    store.delete(&key).await.unwrap();
}
