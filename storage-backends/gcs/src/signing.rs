//! V4 signed URLs: made by the client library's `SignedUrlBuilder`, read back by
//! [`SignedQuery`] when a client hands one of ours to the server.
//!
//! Reading back cannot verify the RSA signature (under Workload Identity the private key never
//! leaves Google), so the server checks what it can — the signature parameters are present and
//! well-formed, the URL is not expired or dated in the future, and it is a download URL — and
//! then reads the object with its own credentials. The object's key is a random 128-bit id,
//! so a URL naming it is as hard to forge as the key is to guess.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use google_cloud_auth::signer::Signer;
use google_cloud_storage::builder::storage::SignedUrlBuilder;
use google_cloud_storage::signed_url::UrlStyle;
use spillway_storage::StorageError;
use url::Url;

use crate::errors;

/// Longest lifetime of a V4 signed URL Cloud Storage accepts (7 days).
pub const MAX_SIGNED_URL_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The only algorithm this store signs with.
pub(crate) const ALGORITHM: &str = "GOOG4-RSA-SHA256";

/// How far in the future a URL's `X-Goog-Date` may be (clock skew between replicas).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Longest hex signature accepted (a 4096-bit RSA key).
const MAX_SIGNATURE_HEX: usize = 1024;

/// Whole seconds of a presign TTL: at least 1, at most [`MAX_SIGNED_URL_TTL`] (a longer TTL is
/// shortened; the second value says so).
pub(crate) fn ttl_seconds(ttl: Duration) -> (u64, bool) {
    let clamped = ttl > MAX_SIGNED_URL_TTL;
    (ttl.min(MAX_SIGNED_URL_TTL).as_secs().max(1), clamped)
}

/// Signs a path-style URL `{endpoint}/{bucket}/{object}` for `method`, valid `expires_secs`
/// from now, binding `headers` (lowercase names) besides the host. Returns the URL and when it
/// expires (read back from the URL, so it is exactly what the service will enforce).
pub(crate) async fn sign_url(
    signer: &Signer,
    endpoint: &str,
    bucket: &str,
    object: &str,
    method: http::Method,
    expires_secs: u64,
    headers: &[(String, String)],
) -> Result<(Url, SystemTime), StorageError> {
    let mut builder = SignedUrlBuilder::for_object(format!("projects/_/buckets/{bucket}"), object)
        .with_method(method)
        .with_expiration(Duration::from_secs(expires_secs))
        .with_endpoint(endpoint)
        .with_url_style(UrlStyle::PathStyle);
    for (name, value) in headers {
        builder = builder.with_header(name.clone(), value.clone());
    }
    let raw = builder.sign_with(signer).await.map_err(|e| {
        StorageError::Backend(format!(
            "signing a gcs url failed: {}",
            errors::redacted_chain(&e)
        ))
    })?;
    let url = Url::parse(&raw)
        .map_err(|e| StorageError::Backend(format!("the signed url does not parse: {e}")))?;
    let signed = SignedQuery::parse(&url)
        .map_err(|e| StorageError::Backend(format!("the signed url is malformed: {e}")))?;
    Ok((url, signed.expires_at()))
}

/// The V4 signature parameters of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedQuery {
    /// `X-Goog-Date`.
    pub date: SystemTime,
    /// `X-Goog-Expires`, seconds.
    pub expires: u64,
    /// `X-Goog-SignedHeaders`, e.g. `host` or `content-type;host`.
    pub signed_headers: String,
    /// `X-Goog-Credential`: `{account}/{yyyymmdd}/auto/storage/goog4_request`.
    pub credential: String,
}

fn refused(reason: impl Into<String>) -> StorageError {
    StorageError::UrlRefused {
        reason: reason.into(),
    }
}

impl SignedQuery {
    /// Reads and checks the signature parameters (not the signature itself: see the module
    /// docs). Each must appear exactly once.
    pub(crate) fn parse(url: &Url) -> Result<SignedQuery, StorageError> {
        const NAMES: [&str; 6] = [
            "X-Goog-Algorithm",
            "X-Goog-Credential",
            "X-Goog-Date",
            "X-Goog-Expires",
            "X-Goog-SignedHeaders",
            "X-Goog-Signature",
        ];
        let mut values: [Option<String>; 6] = Default::default();
        for (name, value) in url.query_pairs() {
            if let Some(i) = NAMES.iter().position(|n| *n == name) {
                if values[i].is_some() {
                    return Err(refused(format!("{} appears more than once", NAMES[i])));
                }
                values[i] = Some(value.into_owned());
            }
        }
        let [algorithm, credential, date, expires, signed_headers, signature] = values;
        let need = |v: Option<String>, name: &str| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| refused(format!("url has no {name} (not a signed url)")))
        };
        let algorithm = need(algorithm, "X-Goog-Algorithm")?;
        let credential = need(credential, "X-Goog-Credential")?;
        let date_text = need(date, "X-Goog-Date")?;
        let expires = need(expires, "X-Goog-Expires")?;
        let signed_headers = need(signed_headers, "X-Goog-SignedHeaders")?;
        let signature = need(signature, "X-Goog-Signature")?;

        if algorithm != ALGORITHM {
            return Err(refused(format!(
                "unsupported signing algorithm {algorithm:?}"
            )));
        }
        if signature.len() > MAX_SIGNATURE_HEX
            || signature.len() % 2 != 0
            || !signature.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(refused("malformed signature"));
        }
        let date = parse_goog_date(&date_text)?;
        let expires: u64 = expires
            .parse()
            .ok()
            .filter(|&s| s >= 1 && s <= MAX_SIGNED_URL_TTL.as_secs())
            .ok_or_else(|| refused("X-Goog-Expires is not 1 to 604800 seconds"))?;
        // `{account}/{yyyymmdd}/auto/storage/goog4_request`, dated the day of X-Goog-Date.
        let scope_ok = credential
            .split_once('/')
            .map(|(account, scope)| {
                !account.is_empty()
                    && scope == format!("{}/auto/storage/goog4_request", &date_text[..8])
            })
            .unwrap_or(false);
        if !scope_ok {
            return Err(refused("malformed X-Goog-Credential"));
        }
        if !signed_headers.split(';').all(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }) || !signed_headers.split(';').any(|h| h == "host")
        {
            return Err(refused("malformed X-Goog-SignedHeaders"));
        }
        Ok(SignedQuery {
            date,
            expires,
            signed_headers,
            credential,
        })
    }

    /// When the URL stops working.
    pub(crate) fn expires_at(&self) -> SystemTime {
        self.date + Duration::from_secs(self.expires)
    }

    /// Refuses a URL that has expired at `now`, or that is dated implausibly far ahead of it.
    pub(crate) fn check_time(&self, now: SystemTime) -> Result<(), StorageError> {
        if self.date > now + MAX_CLOCK_SKEW {
            return Err(refused("url is dated in the future"));
        }
        if now >= self.expires_at() {
            return Err(refused("url has expired"));
        }
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSSZ`, UTC.
fn parse_goog_date(text: &str) -> Result<SystemTime, StorageError> {
    let bad = || refused("malformed X-Goog-Date");
    let b = text.as_bytes();
    let shape_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape_ok {
        return Err(bad());
    }
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", text).map_err(|_| bad())?;
    let ts = civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|_| bad())?
        .timestamp();
    let secs = u64::try_from(ts.as_second()).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    pub(crate) const TEST_KEY_FILE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/test_service_account.not-a-test.json"
    );

    pub(crate) fn test_signer() -> Signer {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(TEST_KEY_FILE).unwrap()).unwrap();
        google_cloud_auth::credentials::service_account::Builder::new(json)
            .build_signer()
            .unwrap()
    }

    pub(crate) fn vectors() -> Vec<serde_json::Value> {
        let text = include_str!("../tests/data/v4_signatures.json");
        let suite: serde_json::Value = serde_json::from_str(text).unwrap();
        suite["signingV4Tests"].as_array().unwrap().clone()
    }

    pub(crate) fn vector(description: &str) -> serde_json::Value {
        vectors()
            .into_iter()
            .find(|v| v["description"] == description)
            .unwrap_or_else(|| panic!("no vector {description:?}"))
    }

    fn param(url: &Url, name: &str) -> String {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("{name} missing from {url}"))
    }

    /// What `vector` expects when signed at the time `actual` carries in its X-Goog-Date: the
    /// published canonical request and URL with the vector's date swapped for that one, signed
    /// with the test key (RSA PKCS#1 v1.5 is deterministic, so the signature must match
    /// exactly). Returns the expected URL and canonical request.
    pub(crate) async fn expected_for(vector: &serde_json::Value, actual: &Url) -> (String, String) {
        let stamp = vector["timestamp"].as_str().unwrap(); // 2019-02-01T09:00:00Z
        let vector_date = stamp.replace(['-', ':'], "");
        let vector_day = &vector_date[..8];
        let date = param(actual, "X-Goog-Date");
        let day = &date[..8];
        let swap = |s: &str| s.replace(&vector_date, &date).replace(vector_day, day);
        let canonical = swap(vector["expectedCanonicalRequest"].as_str().unwrap());
        let string_to_sign = format!(
            "{ALGORITHM}\n{date}\n{day}/auto/storage/goog4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signature = hex::encode(test_signer().sign(string_to_sign.as_str()).await.unwrap());
        let published = swap(vector["expectedUrl"].as_str().unwrap());
        let (unsigned, _) = published.split_once("&X-Goog-Signature=").unwrap();
        (
            format!("{unsigned}&X-Goog-Signature={signature}"),
            canonical,
        )
    }

    fn endpoint_of(vector: &serde_json::Value) -> String {
        let scheme = vector["scheme"].as_str().unwrap_or("https");
        if let Some(host) = vector["hostname"].as_str() {
            format!("{scheme}://{host}")
        } else if let Some(endpoint) = vector["clientEndpoint"].as_str() {
            endpoint.to_string()
        } else {
            crate::DEFAULT_ENDPOINT.to_string()
        }
    }

    #[tokio::test]
    async fn the_test_key_reproduces_the_published_signatures() {
        let signer = test_signer();
        assert_eq!(
            signer.client_email().await.unwrap(),
            "test-iam-credentials@dummy-project-id.iam.gserviceaccount.com"
        );
        let all = vectors();
        assert_eq!(all.len(), 10);
        for v in all {
            let published = Url::parse(v["expectedUrl"].as_str().unwrap()).unwrap();
            let sts = v["expectedStringToSign"].as_str().unwrap();
            let ours = hex::encode(signer.sign(sts).await.unwrap());
            assert_eq!(
                ours,
                param(&published, "X-Goog-Signature"),
                "{}",
                v["description"]
            );
            // And the published string to sign is the hash of the published canonical request.
            let canonical = v["expectedCanonicalRequest"].as_str().unwrap();
            assert!(
                sts.ends_with(&hex::encode(Sha256::digest(canonical.as_bytes()))),
                "{}",
                v["description"]
            );
        }
    }

    #[tokio::test]
    async fn signed_urls_match_the_conformance_vectors() {
        let signer = test_signer();
        for v in vectors() {
            let description = v["description"].as_str().unwrap();
            let mut headers: Vec<(String, String)> = v["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            headers.sort();
            let method =
                http::Method::from_bytes(v["method"].as_str().unwrap().as_bytes()).unwrap();
            let (url, expires_at) = sign_url(
                &signer,
                &endpoint_of(&v),
                v["bucket"].as_str().unwrap(),
                v["object"].as_str().unwrap(),
                method,
                v["expiration"].as_u64().unwrap(),
                &headers,
            )
            .await
            .unwrap_or_else(|e| panic!("{description}: {e}"));
            let (expected, _) = expected_for(&v, &url).await;
            // As URLs: `Url` drops a default port (`:443`), which the service ignores too (the
            // signed host header never carries the port).
            assert_eq!(url, Url::parse(&expected).unwrap(), "{description}");
            let date = parse_goog_date(&param(&url, "X-Goog-Date")).unwrap();
            assert_eq!(
                expires_at,
                date + Duration::from_secs(v["expiration"].as_u64().unwrap()),
                "{description}"
            );
        }
    }

    fn signed(query: &str) -> Result<SignedQuery, StorageError> {
        SignedQuery::parse(&Url::parse(&format!("https://h/b/k?{query}")).unwrap())
    }

    const GOOD: &str = "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20300102%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20300102T030405Z&X-Goog-Expires=600&X-Goog-SignedHeaders=host&X-Goog-Signature=0a1b";

    #[test]
    fn signature_parameters_are_read_and_checked() {
        let q = signed(GOOD).unwrap();
        // 2030-01-02T03:04:05Z
        let date = UNIX_EPOCH + Duration::from_secs(1_893_553_445);
        assert_eq!(q.date, date);
        assert_eq!(q.expires_at(), date + Duration::from_secs(600));
        assert_eq!(q.signed_headers, "host");

        let broken = [
            (
                "X-Goog-Algorithm=GOOG4-RSA-SHA256",
                "X-Goog-Algorithm=GOOG4-HMAC-SHA256",
            ),
            ("X-Goog-Signature=0a1b", "X-Goog-Signature="),
            ("X-Goog-Signature=0a1b", "X-Goog-Signature=0a1"),
            ("X-Goog-Signature=0a1b", "X-Goog-Signature=zz"),
            ("&X-Goog-Signature=0a1b", ""),
            (
                "X-Goog-Date=20300102T030405Z",
                "X-Goog-Date=2030-01-02T03:04:05Z",
            ),
            (
                "X-Goog-Date=20300102T030405Z",
                "X-Goog-Date=20301302T030405Z",
            ),
            (
                "X-Goog-Date=20300102T030405Z",
                "X-Goog-Date=20300103T030405Z",
            ),
            ("X-Goog-Expires=600", "X-Goog-Expires=0"),
            ("X-Goog-Expires=600", "X-Goog-Expires=604801"),
            ("X-Goog-Expires=600", "X-Goog-Expires=-5"),
            (
                "X-Goog-SignedHeaders=host",
                "X-Goog-SignedHeaders=content-type",
            ),
            ("X-Goog-SignedHeaders=host", "X-Goog-SignedHeaders=Host"),
            ("%2Fauto%2Fstorage", "%2Fauto%2Fs3"),
            (
                "X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F",
                "X-Goog-Credential=%2F",
            ),
        ];
        for (from, to) in broken {
            let q = GOOD.replace(from, to);
            assert_ne!(q, GOOD, "{from}");
            assert!(
                matches!(signed(&q), Err(StorageError::UrlRefused { .. })),
                "{to:?} must be refused"
            );
        }
        let twice = format!("{GOOD}&X-Goog-Expires=600");
        assert!(signed(&twice).is_err());
        assert!(signed(&"x".repeat(10)).is_err());
        let long_sig = GOOD.replace("0a1b", &"ab".repeat(513));
        assert!(signed(&long_sig).is_err());
    }

    #[test]
    fn expiry_and_future_dates_are_refused() {
        let q = signed(GOOD).unwrap();
        let date = q.date;
        q.check_time(date).unwrap();
        q.check_time(date + Duration::from_secs(599)).unwrap();
        // Clock skew: a replica slightly behind the signer still accepts the URL.
        q.check_time(date - Duration::from_secs(60)).unwrap();
        for now in [
            date + Duration::from_secs(600),
            date + Duration::from_secs(86_400),
        ] {
            let err = q.check_time(now).unwrap_err();
            assert!(err.to_string().contains("expired"), "{err}");
        }
        let err = q.check_time(date - Duration::from_secs(3600)).unwrap_err();
        assert!(err.to_string().contains("future"), "{err}");
    }

    #[test]
    fn ttls_are_whole_seconds_within_seven_days() {
        assert_eq!(ttl_seconds(Duration::from_millis(10)), (1, false));
        assert_eq!(ttl_seconds(Duration::from_millis(3_900)), (3, false));
        assert_eq!(ttl_seconds(MAX_SIGNED_URL_TTL), (604_800, false));
        assert_eq!(
            ttl_seconds(MAX_SIGNED_URL_TTL + Duration::from_secs(1)),
            (604_800, true)
        );
        assert_eq!(ttl_seconds(Duration::MAX), (604_800, true));
    }
}
