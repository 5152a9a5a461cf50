//! Response body compression, negotiated as the reference does (spec §7.1): the first codec
//! of `X-VGI-Accept-Encoding` that the server produces wins over `Accept-Encoding`; `identity`
//! first means none. A codec offered only in the custom header is announced in
//! `X-VGI-Content-Encoding` (a proxy may strip or act on the standard one).

use std::io::Write;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

use crate::wire::{http, ARROW_STREAM_CONTENT_TYPE};

/// The codecs responses may be compressed with, in the server's preference order.
pub(crate) const RESPONSE_CODECS: [&str; 2] = ["zstd", "gzip"];

/// zstd level for responses (fast: responses are small, the threshold keeps them so).
const ZSTD_LEVEL: i32 = 1;
/// gzip level for responses.
const GZIP_LEVEL: u32 = 6;
/// Bodies below this are not worth compressing.
const MIN_COMPRESS_BYTES: usize = 512;

/// Where the chosen codec is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announce {
    Standard,
    Custom,
}

fn codecs(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// The codec to use for a response to a request with these headers, if any.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<(&'static str, Announce)> {
    let custom = codecs(headers, http::VGI_ACCEPT_ENCODING);
    let standard = codecs(headers, "accept-encoding");
    let pick = |list: &[String]| -> Option<Option<&'static str>> {
        for c in list {
            if c == "identity" {
                return Some(None);
            }
            if let Some(codec) = RESPONSE_CODECS.iter().find(|k| **k == c) {
                return Some(Some(*codec));
            }
        }
        None
    };
    if let Some(choice) = pick(&custom) {
        let codec = choice?;
        let announce = if standard.iter().any(|c| c == codec) {
            Announce::Standard
        } else {
            Announce::Custom
        };
        return Some((codec, announce));
    }
    pick(&standard).flatten().map(|c| (c, Announce::Standard))
}

fn compress(codec: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    match codec {
        "zstd" => zstd::bulk::compress(body, ZSTD_LEVEL),
        _ => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 2),
                flate2::Compression::new(GZIP_LEVEL),
            );
            enc.write_all(body)?;
            enc.finish()
        }
    }
}

/// Compresses an Arrow response body per the negotiated codec; anything else passes through.
pub(crate) async fn compress_response(
    choice: Option<(&'static str, Announce)>,
    resp: Response,
) -> Response {
    let Some((codec, announce)) = choice else {
        return resp;
    };
    let is_arrow = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == ARROW_STREAM_CONTENT_TYPE.as_bytes());
    if !is_arrow || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Our own Arrow bodies are already bounded by the response budget.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    if bytes.len() < MIN_COMPRESS_BYTES {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let original = bytes.clone();
    let compressed = if bytes.len() > 1 << 20 {
        tokio::task::spawn_blocking(move || compress(codec, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    } else {
        compress(codec, &bytes)
    };
    match compressed {
        Ok(c) => {
            let name = match announce {
                Announce::Standard => header::CONTENT_ENCODING,
                Announce::Custom => header::HeaderName::from_static(http::VGI_CONTENT_ENCODING),
            };
            parts.headers.insert(name, HeaderValue::from_static(codec));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(c))
        }
        Err(e) => {
            tracing::warn!(error = %e, codec, "response compression failed; sending it plain");
            Response::from_parts(parts, Body::from(original))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn negotiation_follows_the_reference() {
        assert_eq!(negotiate(&h(&[])), None);
        assert_eq!(
            negotiate(&h(&[("accept-encoding", "zstd, gzip")])),
            Some(("zstd", Announce::Standard))
        );
        assert_eq!(
            negotiate(&h(&[("accept-encoding", "gzip;q=1.0, zstd")])),
            Some(("gzip", Announce::Standard))
        );
        assert_eq!(
            negotiate(&h(&[("accept-encoding", "identity, zstd")])),
            None
        );
        assert_eq!(negotiate(&h(&[("accept-encoding", "br")])), None);
        assert_eq!(
            negotiate(&h(&[
                ("x-vgi-accept-encoding", "gzip"),
                ("accept-encoding", "zstd")
            ])),
            Some(("gzip", Announce::Custom))
        );
        assert_eq!(
            negotiate(&h(&[
                ("x-vgi-accept-encoding", "zstd"),
                ("accept-encoding", "gzip, zstd")
            ])),
            Some(("zstd", Announce::Standard))
        );
        assert_eq!(
            negotiate(&h(&[
                ("x-vgi-accept-encoding", "identity"),
                ("accept-encoding", "zstd")
            ])),
            None
        );
        assert_eq!(
            negotiate(&h(&[
                ("x-vgi-accept-encoding", "br"),
                ("accept-encoding", "gzip")
            ])),
            Some(("gzip", Announce::Standard))
        );
    }
}
