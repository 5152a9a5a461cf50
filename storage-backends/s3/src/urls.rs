//! Recognising this store's presigned download URLs (for [`Storage::key_from_url`]).
//!
//! The server never fetches a URL a client names: it maps the URL back to a key and reads the
//! object with its own credentials. S3 checks a presigned URL's signature and expiry only when
//! the URL itself is used, so this module checks what it can locally:
//!
//! - the URL is on one of this store's endpoints (internal or public), in this bucket, under
//!   the key prefix;
//! - it carries a complete SigV4 query signature for a GET (`x-id=GetObject` when present),
//!   dated no later than a little clock skew ahead, and not expired (`X-Amz-Date` +
//!   `X-Amz-Expires`);
//! - when it was signed with the credentials the store signs with now (the usual case: the
//!   server vended the URL minutes ago), the signature itself is recomputed and compared. URLs
//!   signed with credentials that have since been rotated cannot be verified here and are
//!   accepted on the checks above.
//!
//! [`Storage::key_from_url`]: spillway_storage::Storage::key_from_url

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningParams,
    SigningSettings, UriPathNormalizationMode,
};
use aws_smithy_runtime_api::client::identity::Identity;
use spillway_storage::{redact_url, ObjectKey, StorageError};
use url::Url;

/// The longest validity SigV4 allows for a presigned URL.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How far in the future a URL's `X-Amz-Date` may be (clock skew between replicas).
const MAX_FUTURE_SKEW: Duration = Duration::from_secs(15 * 60);

/// Where a bucket's objects are addressed on one endpoint: `{origin}{path}{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketBase {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Ends with `/`.
    path: String,
}

impl BucketBase {
    /// From the URL the S3 endpoint rules resolve for the bucket, e.g.
    /// `http://127.0.0.1:4566/bucket` (path style) or `https://bucket.s3.eu-west-1.amazonaws.com`.
    pub(crate) fn from_endpoint(endpoint: &str) -> Result<Self, StorageError> {
        let url = Url::parse(endpoint).map_err(|e| {
            StorageError::Config(format!(
                "s3 endpoint {} is not a url: {e}",
                redact_url(endpoint)
            ))
        })?;
        let host = url
            .host_str()
            .ok_or_else(|| StorageError::Config("s3 endpoint has no host".into()))?
            .to_ascii_lowercase();
        let mut path = url.path().to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(BucketBase {
            scheme: url.scheme().to_string(),
            host,
            port: url.port_or_known_default(),
            path,
        })
    }

    /// The unchecked key part of `url`'s path, when `url` is under this base.
    fn key_part<'u>(&self, url: &'u Url) -> Option<&'u str> {
        if url.scheme() != self.scheme
            || url.host_str().map(str::to_ascii_lowercase).as_deref() != Some(self.host.as_str())
            || url.port_or_known_default() != self.port
        {
            return None;
        }
        url.path().strip_prefix(self.path.as_str())
    }

    /// `scheme://host[:port]/path` for logs.
    pub(crate) fn display(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}{}", self.scheme, self.host, self.path),
            None => format!("{}://{}{}", self.scheme, self.host, self.path),
        }
    }
}

/// The SigV4 query parameters of a presigned URL.
#[derive(Debug)]
struct SignedQuery {
    access_key_id: String,
    scope_region: String,
    scope_service: String,
    signed_at: SystemTime,
    expires_in: Duration,
    signed_headers: String,
    signature: String,
    x_id: Option<String>,
}

fn refused(reason: impl Into<String>) -> StorageError {
    StorageError::UrlRefused {
        reason: reason.into(),
    }
}

const AUTH_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

fn parse_signed_query(url: &Url) -> Result<SignedQuery, StorageError> {
    let mut found: [Option<String>; 7] = Default::default();
    let mut x_id = None;
    for (name, value) in url.query_pairs() {
        if let Some(i) = AUTH_PARAMS.iter().position(|p| *p == name) {
            if found[i].replace(value.into_owned()).is_some() {
                return Err(refused(format!("url repeats {name}")));
            }
        } else if name == "x-id" && x_id.replace(value.into_owned()).is_some() {
            return Err(refused("url repeats x-id"));
        }
    }
    let [algorithm, credential, date, expires, signed_headers, signature, _token] = found;
    let (
        Some(algorithm),
        Some(credential),
        Some(amz_date),
        Some(expires),
        Some(signed_headers),
        Some(signature),
    ) = (
        algorithm,
        credential,
        date,
        expires,
        signed_headers,
        signature,
    )
    else {
        return Err(refused("url carries no complete aws sigv4 query signature"));
    };
    if algorithm != "AWS4-HMAC-SHA256" {
        return Err(refused("url is not signed with AWS4-HMAC-SHA256"));
    }
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(refused("url signature is malformed"));
    }
    let mut scope = credential.split('/');
    let (
        Some(access_key_id),
        Some(scope_date),
        Some(scope_region),
        Some(scope_service),
        Some("aws4_request"),
        None,
    ) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    )
    else {
        return Err(refused("url credential scope is malformed"));
    };
    let signed_at =
        parse_amz_date(&amz_date).ok_or_else(|| refused("url X-Amz-Date is malformed"))?;
    if !amz_date.starts_with(scope_date) {
        return Err(refused(
            "url X-Amz-Date does not match its credential scope",
        ));
    }
    let expires_in = expires
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_PRESIGN_TTL.as_secs()).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| refused("url X-Amz-Expires is malformed or longer than 7 days"))?;
    Ok(SignedQuery {
        access_key_id: access_key_id.to_string(),
        scope_region: scope_region.to_string(),
        scope_service: scope_service.to_string(),
        signed_at,
        expires_in,
        signed_headers,
        signature,
        x_id,
    })
}

/// `YYYYMMDD'T'HHMMSS'Z'` as a point in time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What [`check_download_url`] needs to know about the store.
pub(crate) struct UrlCheck<'a> {
    pub bases: &'a [BucketBase],
    pub key_prefix: &'a str,
    pub region: &'a str,
    pub credentials: Option<Credentials>,
    pub now: SystemTime,
}

/// How far a URL could be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The signature was recomputed and matches.
    Signature,
    /// Signed with other credentials than the current ones: checked structurally only.
    StructureOnly,
}

/// The key named by a download URL of this store, after the checks in the module docs.
pub(crate) fn check_download_url(
    url: &Url,
    check: &UrlCheck<'_>,
) -> Result<(ObjectKey, Verified), StorageError> {
    let foreign = || StorageError::ForeignUrl {
        url: redact_url(url.as_str()),
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(foreign());
    }
    let raw_key = check
        .bases
        .iter()
        .find_map(|b| b.key_part(url))
        .ok_or_else(foreign)?;
    // No percent-decoding: keys never need escaping, so a '%' is refused by the key alphabet
    // instead of being decoded into something new.
    let key = ObjectKey::parse(raw_key)?;
    if !key.as_str().starts_with(check.key_prefix) {
        return Err(foreign());
    }
    let q = parse_signed_query(url)?;
    if let Some(op) = &q.x_id {
        if op != "GetObject" {
            return Err(refused(format!(
                "url is not a download url (signed for {op})"
            )));
        }
    }
    if q.scope_service != "s3" {
        return Err(refused("url is not signed for s3"));
    }
    if q.signed_at > check.now + MAX_FUTURE_SKEW {
        return Err(refused("url is dated in the future"));
    }
    if check.now >= q.signed_at + q.expires_in {
        return Err(refused("url has expired"));
    }
    let creds = match &check.credentials {
        Some(c) if c.access_key_id() == q.access_key_id => c,
        _ => return Ok((key, Verified::StructureOnly)),
    };
    if q.scope_region != check.region {
        return Err(refused("url is signed for another region"));
    }
    if q.signed_headers != "host" {
        return Err(refused("url signs headers a download does not send"));
    }
    let expected = expected_signature(url, &q, creds, check.region)?;
    if !constant_time_eq(expected.as_bytes(), q.signature.as_bytes()) {
        return Err(refused("url signature does not match"));
    }
    Ok((key, Verified::Signature))
}

/// Signs `url` (without its auth parameters) again, as the SDK presigned it.
fn expected_signature(
    url: &Url,
    q: &SignedQuery,
    creds: &Credentials,
    region: &str,
) -> Result<String, StorageError> {
    let mut unsigned = url.clone();
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !AUTH_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    unsigned.set_query(None);
    if !rest.is_empty() {
        unsigned.query_pairs_mut().extend_pairs(rest);
    }
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(q.expires_in);
    let identity: Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(q.signed_at)
        .settings(settings)
        .build()
        .map_err(|e| refused(format!("cannot check the url signature: {e}")))?;
    let request = SignableRequest::new(
        "GET",
        unsigned.as_str(),
        std::iter::empty(),
        SignableBody::UnsignedPayload,
    )
    .map_err(|_| refused("url cannot be canonicalized for signature checking"))?;
    let out = sign(request, &SigningParams::V4(params))
        .map_err(|_| refused("url cannot be canonicalized for signature checking"))?;
    Ok(out.signature().to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(UNIX_EPOCH),);
        assert_eq!(
            parse_amz_date("20240229T123456Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_210_096))
        );
        for bad in [
            "",
            "20240229T123456",
            "2024022XT123456Z",
            "20241329T000000Z",
            "2024-02-29T12:34:56Z",
            "20240229T246000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn bases_match_scheme_host_port_and_path() {
        let base = BucketBase::from_endpoint("http://127.0.0.1:4566/bucket").unwrap();
        assert_eq!(base.display(), "http://127.0.0.1:4566/bucket/");
        let key = |u: &str| base.key_part(&Url::parse(u).unwrap()).map(str::to_string);
        assert_eq!(
            key("http://127.0.0.1:4566/bucket/p/abc").as_deref(),
            Some("p/abc")
        );
        assert_eq!(key("https://127.0.0.1:4566/bucket/p/abc"), None);
        assert_eq!(key("http://127.0.0.1:4567/bucket/p/abc"), None);
        assert_eq!(key("http://localhost:4566/bucket/p/abc"), None);
        assert_eq!(key("http://127.0.0.1:4566/bucket2/p/abc"), None);
        // Dot segments are resolved by the URL parser before matching.
        assert_eq!(
            key("http://127.0.0.1:4566/other/../bucket/x").as_deref(),
            Some("x")
        );
        assert_eq!(key("http://127.0.0.1:4566/bucket/../other/x"), None);
        let vhost = BucketBase::from_endpoint("https://B.s3.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            vhost.key_part(&Url::parse("https://b.s3.eu-west-1.amazonaws.com:443/k").unwrap()),
            Some("k")
        );
    }
}
