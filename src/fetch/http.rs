//! One HTTP exchange of the fetch engine: redirects followed by hand under the URL policy,
//! response heads parsed into what the engine checks, errors classified.

use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::Method;
use url::Url;

use crate::error::{Error, FetchFailure, Result};
use crate::url_policy::UrlPolicy;
use crate::wire::http::normalize_content_encoding;

/// What a request needs besides its URL.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub http: reqwest::Client,
    pub policy: UrlPolicy,
    pub max_redirects: u32,
}

/// The parts of a response head the engine looks at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub content_range: Option<ContentRange>,
    /// The raw `Content-Range`, for messages.
    pub content_range_raw: Option<String>,
    pub etag: Option<String>,
    /// Lowercase, cut at the first `;`; `None` when absent (or `identity`).
    pub content_encoding: Option<String>,
    pub accept_ranges: bool,
}

/// A parsed `Content-Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentRange {
    /// `bytes first-last/total` (`total` is `None` for `*`).
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total` (a 416 answer).
    Unsatisfied { total: u64 },
}

/// Parses `bytes a-b/n`, `bytes a-b/*` and `bytes */n`; anything else is `None`.
pub(crate) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let digits = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let total = match total.trim() {
        "*" => None,
        t => Some(digits(t)?),
    };
    if range.trim() == "*" {
        return Some(ContentRange::Unsatisfied { total: total? });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (digits(first)?, digits(last)?);
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange::Bytes { first, last, total })
}

impl Head {
    pub(crate) fn of(resp: &reqwest::Response) -> Head {
        let h = resp.headers();
        let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        let content_range_raw = text(header::CONTENT_RANGE).map(str::to_string);
        Head {
            status: resp.status().as_u16(),
            // The header, not reqwest's body size hint: a HEAD answer has an empty body.
            content_length: text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
            content_range: content_range_raw.as_deref().and_then(parse_content_range),
            content_range_raw,
            etag: text(header::ETAG).map(|v| v.trim().to_string()),
            content_encoding: normalize_content_encoding(text(header::CONTENT_ENCODING)),
            accept_ranges: text(header::ACCEPT_RANGES)
                .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes"))),
        }
    }
}

/// True for URLs carrying a query-string signature. A URL presigned for GET answers 403 to
/// HEAD, so these are probed with a one-byte range GET instead.
pub(crate) fn is_presigned(url: &Url) -> bool {
    let keys: Vec<String> = url
        .query_pairs()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    let has = |k: &str| keys.iter().any(|x| x == k);
    has("x-amz-signature")
        || has("x-goog-signature")
        || has("x-spillway-signature")
        || (has("signature") && (has("awsaccesskeyid") || has("googleaccessid")))
}

/// Headers every engine request carries. `Accept-Encoding` names what the decoder handles,
/// so GCS serves gzip objects as stored instead of transcoding them (and ignoring ranges).
pub(crate) fn base_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("zstd, gzip"),
    );
    h
}

/// Sends one request, following redirects by hand: the policy is checked before every hop
/// (the rejected hop is never requested), at most `max_redirects` hops. Returns the final
/// response and the URL that produced it.
pub(crate) async fn send_following(
    t: &Transport,
    method: Method,
    url: &Url,
    headers: &HeaderMap,
) -> Result<(reqwest::Response, Url)> {
    let mut current = url.clone();
    let mut hops = 0u32;
    loop {
        t.policy.check(&current)?;
        let resp = t
            .http
            .request(method.clone(), current.clone())
            .headers(headers.clone())
            .send()
            .await
            .map_err(|e| classify_reqwest(e, &current))?;
        if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok((resp, current));
        }
        hops += 1;
        if hops > t.max_redirects {
            return Err(Error::RedirectLimit {
                url: spillway_storage::redact_url(url.as_str()),
                limit: t.max_redirects,
            });
        }
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Fetch {
                kind: FetchFailure::BadResponse,
                url: spillway_storage::redact_url(current.as_str()),
                detail: "redirect without a location".into(),
            })?;
        current = current.join(location).map_err(|e| Error::UrlRejected {
            url: spillway_storage::redact_url(current.as_str()),
            reason: format!("bad redirect location: {e}"),
        })?;
    }
}

/// A reqwest failure as an engine error: policy refusals from the DNS resolver stay
/// [`Error::UrlRejected`]; everything else is a (retryable) connection failure. No signed URL
/// survives (see [`Error::from_reqwest`]).
pub(crate) fn classify_reqwest(e: reqwest::Error, url: &Url) -> Error {
    match Error::from_reqwest(e) {
        Error::Http(detail) => Error::Fetch {
            kind: FetchFailure::Connection,
            url: spillway_storage::redact_url(url.as_str()),
            detail,
        },
        other => other,
    }
}

/// Statuses worth another request.
pub(crate) fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Errors worth another request for the same bytes.
pub(crate) fn retryable(e: &Error) -> bool {
    match e {
        Error::Fetch { kind, .. } => matches!(
            kind,
            FetchFailure::Stalled
                | FetchFailure::Connection
                | FetchFailure::ShortBody
                | FetchFailure::BadResponse
        ),
        Error::HttpStatus { status, .. } => retryable_status(*status),
        Error::Http(_) => true,
        _ => false,
    }
}

/// Exponential backoff with "equal jitter": half the step is fixed so retries do spread out
/// but never fire at once, the other half is random so clients do not retry in lockstep.
pub(crate) fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let step = base.saturating_mul(1u32 << exp).min(max);
    let half = step / 2;
    let jitter = half.mul_f64(rand::random::<f64>());
    half + jitter
}

/// The label of `spillway_fetch_failures_total{kind}` for an error.
pub(crate) fn failure_label(e: &Error) -> &'static str {
    match e {
        Error::Fetch { kind, .. } => kind.as_str(),
        Error::HttpStatus { .. } => "status",
        Error::UrlRejected { .. } => "url_rejected",
        Error::RedirectLimit { .. } => "redirect_limit",
        Error::TooLarge { .. } => "too_large",
        Error::Checksum { .. } => "checksum",
        Error::Http(_) => "connection",
        Error::Protocol(_) | Error::Ipc(_) => "invalid_object",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        use ContentRange::*;
        assert_eq!(
            parse_content_range("bytes 0-0/10"),
            Some(Bytes {
                first: 0,
                last: 0,
                total: Some(10)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(Bytes {
                first: 5,
                last: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */0"),
            Some(Unsatisfied { total: 0 })
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes=0-1/2",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 0-1",
            "bytes */*",
            "bytes0-1/2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn presigned_detection_and_encodings() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(is_presigned(&u(
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=a&X-Amz-Signature=b"
        )));
        assert!(is_presigned(&u("https://h/k?X-Goog-Signature=b")));
        assert!(is_presigned(&u(
            "http://127.0.0.1:1/__storage__/k?X-Spillway-Method=GET&X-Spillway-Expires=1&X-Spillway-Signature=ab"
        )));
        assert!(is_presigned(&u(
            "https://h/k?AWSAccessKeyId=a&Signature=b&Expires=1"
        )));
        assert!(!is_presigned(&u("https://h/k?Signature=b")));
        assert!(!is_presigned(&u("https://h/k")));
        assert_eq!(
            normalize_content_encoding(Some("ZSTD; q=1")),
            Some("zstd".into())
        );
        assert_eq!(normalize_content_encoding(Some(" identity ")), None);
        assert_eq!(normalize_content_encoding(None), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = backoff(1, base, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= base, "{d1:?}");
            let d3 = backoff(3, base, max);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d9 = backoff(30, base, max);
            assert!(d9 >= Duration::from_millis(500) && d9 <= max);
        }
    }
}
