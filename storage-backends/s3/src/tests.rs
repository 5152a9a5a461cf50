//! Offline unit tests: configuration, presigning and URL checks need no server (presigning is
//! local computation; nothing listens on the endpoints used here and nothing is sent).

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use spillway_storage::{redact_url, PresignMethod, Storage, StorageError};
use url::Url;

use crate::creds::CredentialsWatch;
use crate::ops::content_range_total;
use crate::{S3Config, S3Store, DEFAULT_PART_SIZE, MAX_PARTS};

const INTERNAL: &str = "http://127.0.0.1:9";
const PUBLIC: &str = "http://127.0.0.2:9000";

fn config(public: bool) -> S3Config {
    let mut c = S3Config::new("bucket");
    c.key_prefix = "results/".to_string();
    c.max_object_bytes = 1 << 30;
    c.endpoint = Some(Url::parse(INTERNAL).unwrap());
    c.public_endpoint = public.then(|| Url::parse(PUBLIC).unwrap());
    c.region = Some("eu-west-1".into());
    c.path_style = true;
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn creds(akid: &str) -> Credentials {
    Credentials::new(akid, "not-a-real-secret", None, None, "unit-test")
}

async fn store(public: bool) -> S3Store {
    S3Store::with_credentials(config(public), creds("AKIDUNITTEST"))
        .await
        .expect("connect")
}

fn config_message(r: Result<S3Store, StorageError>) -> String {
    match r {
        Err(StorageError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn refused_reason(e: StorageError) -> String {
    match e {
        StorageError::UrlRefused { reason } => reason,
        other => panic!("expected UrlRefused, got {other:?}"),
    }
}

fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            if k == name {
                (k.into_owned(), value.to_string())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    let mut u = url.clone();
    u.set_query(None);
    u.query_pairs_mut().extend_pairs(pairs);
    u
}

#[tokio::test]
async fn configuration_is_validated_before_anything_is_sent() {
    let connect = |c: S3Config| async move { S3Store::with_credentials(c, creds("AKID")).await };
    let msg = config_message;
    for bad in ["Bucket", "b", "bucket/x", "-bucket", "bucket name", ""] {
        let mut c = config(false);
        c.bucket = bad.into();
        let m = msg(connect(c).await);
        assert!(
            m.contains("`bucket`") && m.contains("not a valid bucket"),
            "{m}"
        );
    }
    let mut c = config(false);
    c.key_prefix = "../x/".into();
    assert!(msg(connect(c).await).contains("`key_prefix`"));
    let mut c = config(false);
    c.part_size = 1024 * 1024;
    assert!(msg(connect(c).await).contains("`part_size`"));
    let mut c = config(false);
    c.upload_concurrency = 0;
    assert!(msg(connect(c).await).contains("`upload_concurrency`"));
    let mut c = config(false);
    c.multipart_threshold = 6 * 1024 * 1024 * 1024;
    assert!(msg(connect(c).await).contains("`multipart_threshold`"));
    let mut c = config(false);
    c.sse_kms_key_id = Some("alias/x".into());
    assert!(msg(connect(c).await).contains("`sse_kms_key_id` needs `sse`=aws:kms"));
    let mut c = config(false);
    c.storage_class = Some("standard ia".into());
    assert!(msg(connect(c).await).contains("`storage_class`"));
    let mut c = config(false);
    c.public_endpoint = Some(Url::parse("http://u:p@127.0.0.1:9/?x=1").unwrap());
    let m = msg(connect(c).await);
    assert!(m.contains("`public_endpoint`") && !m.contains("u:p"), "{m}");
    let mut c = config(false);
    c.endpoint = Some(Url::parse("ftp://127.0.0.1/").unwrap());
    assert!(msg(connect(c).await).contains("http(s)"));
    let mut c = config(false);
    c.max_object_bytes = u64::MAX;
    assert!(msg(connect(c).await).contains("`max_object_bytes`"));
}

#[test]
fn config_debug_redacts_endpoints() {
    let mut c = config(true);
    c.endpoint = Some(Url::parse("http://user:secret@127.0.0.1:9/?token=t").unwrap());
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("secret") && !shown.contains("token"),
        "{shown}"
    );
    assert!(shown.contains("127.0.0.1:9"), "{shown}");
}

#[tokio::test]
async fn the_part_size_grows_when_the_largest_object_needs_it() {
    let mut c = config(false);
    c.max_object_bytes = 200 * 1024 * 1024 * 1024; // 200 GiB: 20 MiB parts at least
    let max = c.max_object_bytes;
    let store = S3Store::with_credentials(c, creds("AKID")).await.unwrap();
    assert_eq!(store.part_size(), 21 * 1024 * 1024);
    assert!(store.part_size() * MAX_PARTS >= max);
    assert_eq!(self::store(false).await.part_size(), DEFAULT_PART_SIZE);
}

#[tokio::test]
async fn presigned_urls_point_at_the_public_endpoint_and_map_back_to_their_key() {
    let store = store(true).await;
    let key = store.new_key();
    assert!(key.as_str().starts_with("results/"));
    let before = SystemTime::now();
    let url = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(600))
        .await
        .unwrap();
    let s = url.url.as_str();
    assert!(
        s.starts_with(&format!("{PUBLIC}/bucket/{key}?")),
        "{}",
        redact_url(s)
    );
    assert!(s.contains("X-Amz-Signature="));
    assert!(s.contains("X-Amz-Expires=600"));
    assert!(s.contains("X-Amz-SignedHeaders=host"));
    assert!(s.contains("x-id=GetObject"));
    assert!(url.expires_at > before + Duration::from_secs(598));
    assert!(url.expires_at <= SystemTime::now() + Duration::from_secs(600));
    assert!(!format!("{url:?}").contains("X-Amz-Signature"));
    assert_eq!(store.key_from_url(&url.url).unwrap(), key);

    // Every part of the signed URL counts.
    let sig = url
        .url
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Signature")
        .unwrap()
        .1
        .into_owned();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    let tampered = with_param(&url.url, "X-Amz-Signature", &flipped);
    assert!(refused_reason(store.key_from_url(&tampered).unwrap_err()).contains("does not match"));
    let date = url
        .url
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Date")
        .unwrap()
        .1
        .into_owned();
    let later = format!("{}{}", &date[..9], "235959Z");
    let redated = with_param(&url.url, "X-Amz-Date", &later);
    if later != date {
        let r = refused_reason(store.key_from_url(&redated).unwrap_err());
        assert!(r.contains("does not match") || r.contains("future"), "{r}");
    }
    let longer = with_param(&url.url, "X-Amz-Expires", "604800");
    assert!(refused_reason(store.key_from_url(&longer).unwrap_err()).contains("does not match"));
    let mut other_key = url.url.clone();
    other_key.set_path(&format!("/bucket/{}", store.new_key()));
    assert!(refused_reason(store.key_from_url(&other_key).unwrap_err()).contains("does not match"));
}

#[tokio::test]
async fn upload_urls_expired_urls_and_foreign_urls_are_refused() {
    let store = store(true).await;
    let key = store.new_key();
    let put = store
        .presign(&key, PresignMethod::Put, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(put.url.as_str().contains("x-id=PutObject"));
    assert!(refused_reason(store.key_from_url(&put.url).unwrap_err()).contains("PutObject"));

    let past = store
        .presign_until(
            &key,
            PresignMethod::Get,
            SystemTime::now() - Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(past.expires_at <= SystemTime::now());
    assert!(refused_reason(store.key_from_url(&past.url).unwrap_err()).contains("expired"));

    let get = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(60))
        .await
        .unwrap();
    let mut foreign = get.url.clone();
    foreign.set_port(Some(9001)).unwrap();
    assert!(matches!(
        store.key_from_url(&foreign),
        Err(StorageError::ForeignUrl { .. })
    ));
    let mut other_bucket = get.url.clone();
    other_bucket.set_path(&format!("/bucket2/{key}"));
    assert!(matches!(
        store.key_from_url(&other_bucket),
        Err(StorageError::ForeignUrl { .. })
    ));
    let mut other_prefix = get.url.clone();
    other_prefix.set_path("/bucket/elsewhere/0123");
    assert!(matches!(
        store.key_from_url(&other_prefix),
        Err(StorageError::ForeignUrl { .. })
    ));
    let mut escaped = get.url.clone();
    escaped.set_path("/bucket/results/a%2Fb");
    assert!(matches!(
        store.key_from_url(&escaped),
        Err(StorageError::InvalidKey { .. })
    ));
    // Encoded dot segments are resolved by the URL parser, out of the prefix.
    let mut climbing = get.url.clone();
    climbing.set_path("/bucket/results/%2e%2e/x");
    assert!(matches!(
        store.key_from_url(&climbing),
        Err(StorageError::ForeignUrl { .. })
    ));
    let mut unsigned = get.url.clone();
    unsigned.set_query(None);
    assert!(refused_reason(store.key_from_url(&unsigned).unwrap_err()).contains("no complete"));
    let doubled = Url::parse(&format!("{}&X-Amz-Date=20200101T000000Z", get.url)).unwrap();
    assert!(refused_reason(store.key_from_url(&doubled).unwrap_err()).contains("repeats"));
    // Errors never carry the signature.
    let e = store.key_from_url(&foreign).unwrap_err().to_string();
    assert!(!e.contains("X-Amz"), "{e}");

    let too_long = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(8 * 24 * 3600))
        .await
        .unwrap_err();
    assert!(too_long.to_string().contains("7 days"), "{too_long}");
}

#[tokio::test]
async fn internal_endpoint_urls_are_accepted_too() {
    // Without a public endpoint, URLs are signed for the internal one.
    let internal_only = store(false).await;
    let key = internal_only.new_key();
    let url = internal_only
        .presign(&key, PresignMethod::Get, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(url.url.as_str().starts_with(&format!("{INTERNAL}/bucket/")));
    // A store with a public endpoint recognises URLs on either.
    let both = store(true).await;
    assert_eq!(both.key_from_url(&url.url).unwrap(), key);
}

#[tokio::test]
async fn urls_signed_with_rotated_credentials_are_checked_for_shape_and_expiry_only() {
    let current = store(true).await;
    let previous = S3Store::with_credentials(config(true), creds("AKIDOLDKEY"))
        .await
        .unwrap();
    let key = previous.new_key();
    let url = previous
        .presign(&key, PresignMethod::Get, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(current.key_from_url(&url.url).unwrap(), key);
    let expired = previous
        .presign_until(&key, PresignMethod::Get, SystemTime::now())
        .await
        .unwrap();
    assert!(refused_reason(current.key_from_url(&expired.url).unwrap_err()).contains("expired"));
}

#[tokio::test]
async fn temporary_credentials_shorter_than_the_ttl_are_reported() {
    let expiry = SystemTime::now() + Duration::from_secs(1800);
    let temporary = Credentials::new(
        "ASIATEMP",
        "secret",
        Some("token".into()),
        Some(expiry),
        "t",
    );
    let store = S3Store::with_credentials(config(false), temporary)
        .await
        .unwrap();
    assert_eq!(store.credentials_expiry(), Some(expiry));
    let w = store
        .presign_ttl_warning(Duration::from_secs(3600))
        .expect("a 1 h url outlives 30 min credentials");
    assert!(w.contains("SPILLWAY_PRESIGN_TTL"), "{w}");
    assert_eq!(store.presign_ttl_warning(Duration::from_secs(600)), None);
    // URLs signed with a session token carry it, and still verify.
    let key = store.new_key();
    let url = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url.url.as_str().contains("X-Amz-Security-Token=token"));
    assert_eq!(store.key_from_url(&url.url).unwrap(), key);
    // Long-term credentials never warn.
    assert_eq!(
        self::store(false)
            .await
            .presign_ttl_warning(Duration::from_secs(7 * 24 * 3600)),
        None
    );
    let watch = CredentialsWatch::new(SharedCredentialsProvider::new(creds("X")));
    watch.set_for_test(creds("Y"));
    assert_eq!(watch.current().unwrap().access_key_id(), "Y");
}

#[test]
fn content_ranges_parse() {
    assert_eq!(content_range_total("bytes 0-9/10"), Some(10));
    assert_eq!(
        content_range_total(" bytes 5-5/123456789012 "),
        Some(123_456_789_012)
    );
    assert_eq!(content_range_total("bytes */10"), Some(10));
    assert_eq!(content_range_total("bytes 0-9/*"), None);
    assert_eq!(content_range_total("items 0-9/10"), None);
}

#[tokio::test]
async fn aws_endpoint_url_variables_are_honoured_without_an_explicit_endpoint() {
    // The only test that reads these variables: every other one sets `s3_endpoint`.
    let mut a = config(false);
    a.endpoint = None;
    let presigned_base = |store: S3Store| async move {
        let key = store.new_key();
        let url = store
            .presign(&key, PresignMethod::Get, Duration::from_secs(60))
            .await
            .unwrap();
        let base = url
            .url
            .as_str()
            .split("/results/")
            .next()
            .unwrap()
            .to_string();
        assert_eq!(store.key_from_url(&url.url).unwrap(), key);
        base
    };
    std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.3:9001");
    let general = S3Store::with_credentials(a.clone(), creds("AKID")).await;
    std::env::set_var("AWS_ENDPOINT_URL_S3", "http://127.0.0.4:9002");
    let specific = S3Store::with_credentials(a.clone(), creds("AKID")).await;
    std::env::remove_var("AWS_ENDPOINT_URL_S3");
    std::env::remove_var("AWS_ENDPOINT_URL");
    assert_eq!(
        presigned_base(general.unwrap()).await,
        "http://127.0.0.3:9001/bucket"
    );
    assert_eq!(
        presigned_base(specific.unwrap()).await,
        "http://127.0.0.4:9002/bucket",
        "AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL"
    );
}

/// A "store" that accepts connections and never answers (as a frozen process does): the
/// accepted sockets are kept open until the listener task is dropped.
async fn silent_endpoint() -> (Url, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (Url::parse(&format!("http://{addr}")).unwrap(), task)
}

#[tokio::test]
async fn a_store_that_never_answers_fails_calls_within_the_operation_timeout() {
    let (endpoint, silent) = silent_endpoint().await;
    let mut c = config(false);
    c.endpoint = Some(endpoint);
    c.request_timeout = Duration::from_secs(1);
    c.operation_timeout = Duration::from_secs(2);
    let s = S3Store::with_credentials(c, creds("AKIDUNITTEST"))
        .await
        .unwrap();
    let key = s.new_key();
    let started = std::time::Instant::now();
    let err = s
        .put(&key, b"hello".to_vec().into(), Default::default())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("timeout"), "{err}");
    // Bounded by the operation timeout (plus scheduling slack), not by the retries.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The readiness probe has its own, shorter bound and no retries.
    let started = std::time::Instant::now();
    let err = s.check_ready().await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    silent.abort();
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // Bound and dropped at once: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(false);
    c.endpoint = Some(Url::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    let s = S3Store::with_credentials(c, creds("AKIDUNITTEST"))
        .await
        .unwrap();
    let err = s.head(&s.new_key()).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("storage unavailable: s3 HeadObject"),
        "{err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    let err = s.check_ready().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}
