//! Offline unit tests: configuration, presigning and URL checks need no server (presigning is
//! local computation; nothing listens on the endpoints used here and nothing is sent).

use super::*;
use aws_credential_types::Credentials;

const INTERNAL: &str = "http://127.0.0.1:9";
const PUBLIC: &str = "http://127.0.0.2:9000";

fn settings(bucket: &str) -> StoreSettings {
    StoreSettings {
        bucket: Some(bucket.to_string()),
        key_prefix: "results/".to_string(),
        max_object_bytes: 1 << 30,
    }
}

fn args(public: bool) -> S3Args {
    S3Args {
        s3_endpoint: Some(Url::parse(INTERNAL).unwrap()),
        s3_public_endpoint: public.then(|| Url::parse(PUBLIC).unwrap()),
        s3_region: Some("eu-west-1".into()),
        s3_path_style: true,
        s3_connect_timeout: 2,
        ..S3Args::default()
    }
}

fn creds(akid: &str) -> Credentials {
    Credentials::new(akid, "not-a-real-secret", None, None, "unit-test")
}

async fn store(public: bool) -> S3Store {
    S3Store::connect_with_credentials(&args(public), &settings("bucket"), creds("AKIDUNITTEST"))
        .await
        .expect("connect")
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
    let connect = |a: S3Args, s: StoreSettings| async move {
        S3Store::connect_with_credentials(&a, &s, creds("AKID")).await
    };
    let msg = |r: Result<S3Store, StorageError>| match r {
        Err(StorageError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let mut s = settings("bucket");
    s.bucket = None;
    assert!(msg(connect(args(false), s).await).contains("SPILLWAY_BUCKET is required"));
    for bad in ["Bucket", "b", "bucket/x", "-bucket", "bucket name"] {
        assert!(msg(connect(args(false), settings(bad)).await).contains("not a valid bucket"));
    }
    let mut s = settings("bucket");
    s.key_prefix = "../x/".into();
    assert!(msg(connect(args(false), s).await).contains("SPILLWAY_KEY_PREFIX"));
    let mut a = args(false);
    a.s3_part_size = 1024 * 1024;
    assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_PART_SIZE"));
    let mut a = args(false);
    a.s3_upload_concurrency = 0;
    assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_UPLOAD_CONCURRENCY"));
    let mut a = args(false);
    a.s3_multipart_threshold = 6 * 1024 * 1024 * 1024;
    assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_MULTIPART_THRESHOLD"));
    let mut a = args(false);
    a.s3_sse_kms_key_id = Some("alias/x".into());
    assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_SSE=aws:kms"));
    let mut a = args(false);
    a.s3_storage_class = Some("standard ia".into());
    assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_STORAGE_CLASS"));
    let mut a = args(false);
    a.s3_public_endpoint = Some(Url::parse("http://u:p@127.0.0.1:9/?x=1").unwrap());
    let m = msg(connect(a, settings("bucket")).await);
    assert!(
        m.contains("SPILLWAY_S3_PUBLIC_ENDPOINT") && !m.contains("u:p"),
        "{m}"
    );
    let mut a = args(false);
    a.s3_endpoint = Some(Url::parse("ftp://127.0.0.1/").unwrap());
    assert!(msg(connect(a, settings("bucket")).await).contains("http(s)"));
}

#[tokio::test]
async fn the_part_size_grows_when_the_largest_object_needs_it() {
    let mut s = settings("bucket");
    s.max_object_bytes = 200 * 1024 * 1024 * 1024; // 200 GiB: 20 MiB parts at least
    let store = S3Store::connect_with_credentials(&args(false), &s, creds("AKID"))
        .await
        .unwrap();
    assert_eq!(store.part_size(), 21 * 1024 * 1024);
    assert!(store.part_size() * MAX_PARTS >= s.max_object_bytes);
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
    let previous =
        S3Store::connect_with_credentials(&args(true), &settings("bucket"), creds("AKIDOLDKEY"))
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
    let store = S3Store::connect_with_credentials(&args(false), &settings("bucket"), temporary)
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

#[test]
fn s3_args_parse_from_flags_and_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s3: S3Args,
    }
    let cli = Cli::try_parse_from([
        "x",
        "--s3-endpoint",
        "http://minio:9000",
        "--s3-path-style",
        "--s3-sse",
        "aws:kms",
        "--s3-sse-kms-key-id",
        "alias/spillway",
        "--s3-part-size",
        "16777216",
    ])
    .unwrap();
    assert!(cli.s3.s3_path_style);
    assert_eq!(cli.s3.s3_sse, SseMode::AwsKms);
    assert_eq!(cli.s3.s3_part_size, 16 * 1024 * 1024);
    assert_eq!(cli.s3.s3_upload_concurrency, DEFAULT_UPLOAD_CONCURRENCY);
    let cli = Cli::try_parse_from(["x", "--s3-sse", "sse-s3"]).unwrap();
    assert_eq!(cli.s3.s3_sse, SseMode::Aes256);
    assert!(Cli::try_parse_from(["x", "--s3-sse", "rot13"]).is_err());
}

#[tokio::test]
async fn aws_endpoint_url_variables_are_honoured_without_an_explicit_endpoint() {
    // The only test that reads these variables: every other one sets `s3_endpoint`.
    let mut a = args(false);
    a.s3_endpoint = None;
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
    let general = S3Store::connect_with_credentials(&a, &settings("bucket"), creds("AKID")).await;
    std::env::set_var("AWS_ENDPOINT_URL_S3", "http://127.0.0.4:9002");
    let specific = S3Store::connect_with_credentials(&a, &settings("bucket"), creds("AKID")).await;
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
