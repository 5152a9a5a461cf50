//! Offline unit tests: presigning against Google's conformance vectors, URL checks and
//! configuration; no API call is made.

use std::time::{Duration, SystemTime};

use spillway_storage::{ObjectKey, PresignMethod, Storage, StorageError};
use url::Url;

use crate::signing::tests::{expected_for, vector, TEST_KEY_FILE};
use crate::{GcsConfig, GcsStore, DEFAULT_ENDPOINT, MAX_SIGNED_URL_TTL};

/// A store that signs with the published test key and sends nothing anywhere (these tests
/// make no API call).
fn test_config(endpoint: &str) -> GcsConfig {
    let mut c = GcsConfig::new("test-bucket");
    c.key_prefix = String::new();
    c.endpoint = Some(Url::parse(endpoint).unwrap());
    c.anonymous = true;
    c.credentials_file = Some(TEST_KEY_FILE.into());
    c
}

async fn store(c: GcsConfig) -> GcsStore {
    GcsStore::new(c).await.unwrap()
}

fn config_reason(err: StorageError) -> String {
    match err {
        StorageError::Config(m) => m,
        other => panic!("expected Config, got {other:?}"),
    }
}

#[tokio::test]
async fn presigned_urls_match_the_conformance_vectors() {
    // GET, and PUT with an unsigned content type, as published.
    for (name, endpoint) in [
        ("Simple GET", DEFAULT_ENDPOINT),
        ("Vary expiration and timestamp", DEFAULT_ENDPOINT),
        (
            "Simple GET with non-default hostname",
            "http://localhost:8080",
        ),
        ("Simple PUT", DEFAULT_ENDPOINT),
    ] {
        let v = vector(name);
        let mut c = test_config(endpoint);
        c.signed_put_content_type = None;
        let s = store(c).await;
        let key = ObjectKey::parse(v["object"].as_str().unwrap()).unwrap();
        let method = match v["method"].as_str().unwrap() {
            "GET" => PresignMethod::Get,
            _ => PresignMethod::Put,
        };
        let ttl = Duration::from_secs(v["expiration"].as_u64().unwrap());
        let before = SystemTime::now();
        let url = s.presign(&key, method, ttl).await.unwrap();
        let (expected, _) = expected_for(&v, &url.url).await;
        assert_eq!(url.url.as_str(), expected, "{name}");
        assert_eq!(url.method, method);
        // X-Goog-Date is whole seconds, taken during the call.
        assert!(
            url.expires_at + Duration::from_secs(1) > before + ttl,
            "{name}"
        );
        assert!(url.expires_at <= SystemTime::now() + ttl, "{name}");
    }
}

#[tokio::test]
async fn upload_urls_sign_the_content_type_clients_send() {
    let s = store(test_config(DEFAULT_ENDPOINT)).await;
    let key = ObjectKey::parse("test-object").unwrap();
    let url = s
        .presign(&key, PresignMethod::Put, Duration::from_secs(10))
        .await
        .unwrap();
    // The "Simple headers" vector's canonical form, with the content-type header Spillway
    // signs instead of BAR and foo.
    let mut v = vector("Simple PUT");
    let canonical = v["expectedCanonicalRequest"].as_str().unwrap().replace(
        "X-Goog-SignedHeaders=host\nhost:storage.googleapis.com\n\nhost\n",
        "X-Goog-SignedHeaders=content-type%3Bhost\ncontent-type:application/vnd.apache.arrow.stream\nhost:storage.googleapis.com\n\ncontent-type;host\n",
    );
    assert_ne!(canonical, v["expectedCanonicalRequest"].as_str().unwrap());
    v["expectedCanonicalRequest"] = canonical.into();
    v["expectedUrl"] = v["expectedUrl"]
        .as_str()
        .unwrap()
        .replace(
            "X-Goog-SignedHeaders=host",
            "X-Goog-SignedHeaders=content-type%3Bhost",
        )
        .into();
    let (expected, _) = expected_for(&v, &url.url).await;
    assert_eq!(url.url.as_str(), expected);
    // An upload URL is not a download URL.
    let err = s.key_from_url(&url.url).unwrap_err();
    assert!(matches!(err, StorageError::UrlRefused { .. }), "{err}");
}

#[tokio::test]
async fn urls_are_bound_to_their_method() {
    // The emulator accepts any method on any URL; Cloud Storage checks the method inside
    // the signed canonical request. A download URL's signature is valid for GET only (not
    // PUT, and not HEAD: Spillway's fetch engine probes signed URLs with a ranged GET).
    let mut c = test_config(DEFAULT_ENDPOINT);
    c.signed_put_content_type = None;
    let s = store(c).await;
    let key = ObjectKey::parse("test-object").unwrap();
    let url = s
        .presign(&key, PresignMethod::Get, Duration::from_secs(10))
        .await
        .unwrap();
    let v = vector("Simple GET");
    let (expected, canonical) = expected_for(&v, &url.url).await;
    assert_eq!(url.url.as_str(), expected);
    assert!(canonical.starts_with("GET\n"));
    let date = url
        .url
        .query_pairs()
        .find(|(k, _)| k == "X-Goog-Date")
        .unwrap()
        .1
        .into_owned();
    let signer = crate::signing::tests::test_signer();
    let signature_for = |method: &str| {
        let canonical = canonical.replacen("GET\n", &format!("{method}\n"), 1);
        let digest = <sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes());
        format!(
            "GOOG4-RSA-SHA256\n{date}\n{}/auto/storage/goog4_request\n{}",
            &date[..8],
            hex::encode(digest)
        )
    };
    let ours = expected
        .rsplit_once("X-Goog-Signature=")
        .unwrap()
        .1
        .to_string();
    assert_eq!(
        hex::encode(signer.sign(signature_for("GET")).await.unwrap()),
        ours
    );
    for other in ["HEAD", "PUT", "DELETE"] {
        let theirs = hex::encode(signer.sign(signature_for(other)).await.unwrap());
        assert_ne!(theirs, ours, "{other}");
    }
}

#[tokio::test]
async fn download_urls_map_back_to_their_key() {
    let mut c = test_config("http://127.0.0.1:9023");
    c.key_prefix = "spillway/".into();
    let s = store(c).await;
    let key = s.new_key();
    assert!(key.as_str().starts_with("spillway/"));
    let url = s
        .presign(&key, PresignMethod::Get, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url
        .url
        .as_str()
        .starts_with(&format!("http://127.0.0.1:9023/test-bucket/{key}?")));
    assert_eq!(s.key_from_url(&url.url).unwrap(), key);
    // Debug output never shows the signature.
    let sig = url
        .url
        .query_pairs()
        .find(|(k, _)| k == "X-Goog-Signature")
        .unwrap()
        .1
        .into_owned();
    assert!(!format!("{url:?}").contains(&sig));

    // Expiry is judged by the date and lifetime in the URL.
    let now = SystemTime::now();
    assert_eq!(s.key_from_url_at(&url.url, now).unwrap(), key);
    let later = now + Duration::from_secs(601);
    let err = s.key_from_url_at(&url.url, later).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let earlier = now - Duration::from_secs(3600);
    assert!(s.key_from_url_at(&url.url, earlier).is_err());
}

#[tokio::test]
async fn tampered_and_foreign_urls_are_refused() {
    let mut c = test_config("http://127.0.0.1:9023");
    c.key_prefix = "spillway/".into();
    let s = store(c).await;
    let key = ObjectKey::parse("spillway/0123456789abcdef").unwrap();
    let good = s
        .presign(&key, PresignMethod::Get, Duration::from_secs(600))
        .await
        .unwrap()
        .url
        .to_string();
    let (base, query) = good.split_once('?').unwrap();
    let foreign = [
        good.replacen("127.0.0.1:9023", "127.0.0.1:9024", 1),
        good.replacen("http://", "https://", 1),
        good.replacen("127.0.0.1", "169.254.169.254", 1),
        good.replacen("/test-bucket/", "/other-bucket/", 1),
        good.replacen("/test-bucket/spillway/", "/test-bucket/elsewhere/", 1),
        good.replacen("http://", "http://user:pw@", 1),
    ];
    for u in foreign {
        let err = s.key_from_url(&Url::parse(&u).unwrap()).unwrap_err();
        assert!(matches!(err, StorageError::ForeignUrl { .. }), "{u}: {err}");
        assert!(!err.to_string().contains("X-Goog-Signature"), "{err}");
    }
    let invalid_key = [
        format!("{base}/../x?{query}").replacen("/spillway/0123456789abcdef/..", "", 1),
        good.replacen("/spillway/", "/spillway%2F", 1),
        good.replacen("0123456789abcdef", "01%2e%2e", 1),
        good.replacen("0123456789abcdef", "a//b", 1),
    ];
    for u in invalid_key {
        let url = Url::parse(&u).unwrap();
        assert!(s.key_from_url(&url).is_err(), "{u} must be refused");
    }
    let refused = [
        base.to_string(),
        format!(
            "{base}?{}",
            query.replace("X-Goog-Signature=", "X-Goog-Sig=")
        ),
        format!(
            "{base}?{}",
            query.replace("X-Goog-Expires=600", "X-Goog-Expires=999999")
        ),
        format!(
            "{base}?{}",
            query.replace("GOOG4-RSA-SHA256", "GOOG4-HMAC-SHA256")
        ),
    ];
    for u in refused {
        let err = s.key_from_url(&Url::parse(&u).unwrap()).unwrap_err();
        assert!(matches!(err, StorageError::UrlRefused { .. }), "{u}: {err}");
    }
}

#[tokio::test]
async fn configuration_is_validated() {
    for bucket in [
        "",
        "ab",
        "UPPER",
        "a/b",
        "-ab",
        "ab-",
        "a..b",
        "a b",
        &"x".repeat(64),
    ] {
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.bucket = bucket.into();
        let msg = config_reason(GcsStore::new(c).await.unwrap_err());
        assert!(msg.contains("bucket name"), "{bucket:?}: {msg}");
    }
    for endpoint in ["ftp://h", "http://h/path", "http://h/?q=1", "http://u:p@h"] {
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.endpoint = Some(Url::parse(endpoint).unwrap());
        assert!(GcsStore::new(c).await.is_err(), "{endpoint}");
        let mut c = test_config(DEFAULT_ENDPOINT);
        c.public_endpoint = Some(Url::parse(endpoint).unwrap());
        assert!(GcsStore::new(c).await.is_err(), "{endpoint}");
    }
    let mut c = test_config(DEFAULT_ENDPOINT);
    c.key_prefix = "../".into();
    assert!(config_reason(GcsStore::new(c).await.unwrap_err()).contains("key prefix"));

    // Without a signer the store is usable for init, but cannot presign or be ready.
    let mut c = test_config(DEFAULT_ENDPOINT);
    c.credentials_file = None;
    let s = store(c).await;
    let key = ObjectKey::parse("k").unwrap();
    let err = s
        .presign(&key, PresignMethod::Get, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(config_reason(err).contains("SPILLWAY_GCS_CREDENTIALS_FILE"));
    assert!(s.check_ready().await.is_err());

    // TTLs above 7 days are shortened to the maximum, and the URL says so.
    let s = store(test_config(DEFAULT_ENDPOINT)).await;
    let url = s
        .presign(&key, PresignMethod::Get, MAX_SIGNED_URL_TTL * 2)
        .await
        .unwrap();
    assert!(url.url.as_str().contains("X-Goog-Expires=604800&"));
    assert!(url.expires_at <= SystemTime::now() + MAX_SIGNED_URL_TTL);
    assert!(!format!("{s:?}").contains("PRIVATE KEY"));
}

#[cfg(feature = "cli")]
#[test]
fn settings_map_to_the_configuration() {
    use crate::GcsArgs;
    let settings = spillway_storage::StoreSettings {
        bucket: Some("b-1".into()),
        key_prefix: "p/".into(),
        max_object_bytes: 10,
    };
    let mut args = GcsArgs {
        emulator_host: Some("127.0.0.1:9023".into()),
        ..GcsArgs::default()
    };
    let c = GcsConfig::from_args(&args, &settings).unwrap();
    assert_eq!(c.bucket, "b-1");
    assert_eq!(c.key_prefix, "p/");
    assert_eq!(c.max_object_bytes, 10);
    assert_eq!(
        c.endpoint.as_ref().unwrap().as_str(),
        "http://127.0.0.1:9023/"
    );
    assert!(c.anonymous, "an emulator host means anonymous calls");

    // An explicit endpoint wins over the emulator variable, and is not anonymous.
    args.endpoint = Some(Url::parse("https://storage.example.com").unwrap());
    let c = GcsConfig::from_args(&args, &settings).unwrap();
    assert_eq!(c.endpoint.unwrap().host_str(), Some("storage.example.com"));
    assert!(!c.anonymous);

    let no_bucket = spillway_storage::StoreSettings {
        bucket: None,
        ..settings
    };
    let msg = config_reason(GcsConfig::from_args(&args, &no_bucket).unwrap_err());
    assert!(msg.contains("SPILLWAY_BUCKET"), "{msg}");
}

/// An "API endpoint" that accepts connections and never answers (a frozen store); the sockets
/// stay open until the task is dropped.
async fn silent_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_store_that_never_answers_fails_calls_within_the_timeouts() {
    let (endpoint, silent) = silent_endpoint().await;
    let mut c = test_config(&endpoint);
    c.request_timeout = Duration::from_secs(1);
    c.operation_timeout = Duration::from_secs(2);
    let s = store(c).await;
    let key = ObjectKey::parse("stuck-object").unwrap();
    let bound = Duration::from_secs(10);

    let started = std::time::Instant::now();
    let err = s
        .put(&key, vec![7u8; 1024].into(), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("storage unavailable: gcs upload object"),
        "{err}"
    );
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = std::time::Instant::now();
    let err = s.get(&key, None).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = std::time::Instant::now();
    let err = s.head(&key).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = std::time::Instant::now();
    let err = s.check_ready().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    silent.abort();
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = test_config(&format!("http://127.0.0.1:{port}"));
    c.request_timeout = Duration::from_secs(8);
    let s = store(c).await;
    let key = ObjectKey::parse("nowhere").unwrap();
    let err = s.head(&key).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    // The library's three attempts end well before the 8 s without progress.
    let started = std::time::Instant::now();
    let err = s
        .put(&key, b"x".to_vec().into(), Default::default())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
}
