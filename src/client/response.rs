//! Reading what the server answered, for unary calls and stream steps alike: the capped body
//! read and its content decoding, the one status check, the `X-VGI-RPC-Error` flag, the reader
//! rules of a unary response, and pointer resolution.

use bytes::Bytes;
use http::HeaderMap;

use super::auth::BearerToken;
use super::config::RPC_ERROR_HEADER;
use super::Client;
use crate::error::{AuthRejection, Error, Result};
use crate::fetch::FetchStats;
use crate::object::decode_content;
use crate::wire::http::AUTH_REASON;
use crate::wire::http::{collect_capped, normalize_content_encoding, CappedError};
use crate::wire::{
    classify, keys, read_stream, BatchKind, LogMessage, MetaBatch, Metadata, ReadLimits, RpcError,
};

/// Where an externalized result came from.
#[derive(Debug, Clone)]
pub struct ExternalizedInfo {
    /// The pointer's URL, redacted (no query string).
    pub url: String,
    /// What resolving it cost.
    pub stats: FetchStats,
}

/// The result of a unary call.
#[derive(Debug, Clone)]
pub struct CallOutput {
    /// The result batch (for a pointer, the batch the object held).
    pub batch: arrow_array::RecordBatch,
    /// The result batch's metadata; for a resolved pointer, the object's batch metadata plus
    /// `vgi_rpc.location.fetch_ms` and `vgi_rpc.location.source` (the latter is the original,
    /// unredacted URL, as the protocol specifies: do not log it).
    pub metadata: Metadata,
    /// Log messages the server sent, in order (those inside a pointer's object last).
    pub logs: Vec<LogMessage>,
    /// Set when the result came through a pointer.
    pub externalized: Option<ExternalizedInfo>,
}

/// A response read off the wire, body already decoded.
pub(super) struct RawResponse {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The token the request carried, kept to scrub it from a 401's text.
    pub(super) token: Option<BearerToken>,
}

/// A 2xx answer to an RPC POST, body decoded.
pub(super) struct Reply {
    body: Bytes,
    /// `X-VGI-RPC-Error: true`: the body must hold an EXCEPTION.
    flagged: bool,
}

impl RawResponse {
    /// The status rule of every RPC POST: a 401 is [`Error::Unauthorized`] with the reason
    /// the server gave (its body is the JSON envelope, not Arrow, as the reference client
    /// expects); another non-2xx answer fails with the EXCEPTION its body carries (a 403
    /// `PermissionError` from the authorization policy included), else with
    /// [`Error::HttpStatus`] naming `url` (redacted).
    pub(super) fn into_reply(self, url: &str) -> Result<Reply> {
        if self.status == 401 {
            return Err(unauthorized_error(
                &self.headers,
                &self.body,
                url,
                self.token.as_ref(),
            ));
        }
        if !(200..300).contains(&self.status) {
            if let Some(e) = parse_error_body(&self.body) {
                return Err(e.into());
            }
            return Err(Error::HttpStatus {
                status: self.status,
                url: spillway_storage::redact_url(url),
            });
        }
        let flagged = self
            .headers
            .get(RPC_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Reply {
            body: self.body,
            flagged,
        })
    }
}

impl Reply {
    /// Parses the body with `parse`. Under `X-VGI-RPC-Error`, a body that is not Arrow is
    /// reported as such rather than as a bare IPC error.
    pub(super) fn parse<T>(&self, parse: impl FnOnce(Bytes) -> Result<T>) -> Result<T> {
        match parse(self.body.clone()) {
            Err(Error::Ipc(e)) if self.flagged => Err(Error::Protocol(format!(
                "server flagged an error ({RPC_ERROR_HEADER}) but its body is not arrow: {e}"
            ))),
            other => other,
        }
    }

    /// Called once the body was read without meeting an EXCEPTION: fails when the server
    /// flagged an error all the same.
    pub(super) fn check_flag(&self) -> Result<()> {
        if self.flagged {
            return Err(Error::Protocol(format!(
                "server flagged an error ({RPC_ERROR_HEADER}) but sent no exception batch"
            )));
        }
        Ok(())
    }
}

/// A unary response split into its logs and its one result batch (data or pointer).
#[derive(Debug)]
pub(super) struct ParsedResponse {
    pub(super) logs: Vec<LogMessage>,
    pub(super) result: MetaBatch,
}

/// Applies the reader rules (spec §1.3, §3.2) to a unary response body: logs are collected,
/// an EXCEPTION anywhere fails the call, and exactly one data or pointer batch must remain.
pub(super) fn parse_unary_response(body: Bytes) -> Result<ParsedResponse> {
    let stream = read_stream(body, ReadLimits::default())?;
    let mut logs = Vec::new();
    let mut results = Vec::new();
    for b in stream.batches {
        match classify(&b.batch, &b.metadata) {
            BatchKind::Log => logs.push(LogMessage::from_metadata(&b.metadata)),
            BatchKind::Error => return Err(RpcError::from_metadata(&b.metadata).into()),
            BatchKind::Sentinel => {
                return Err(Error::Protocol(
                    "unexpected stream token sentinel in a unary response".into(),
                ))
            }
            BatchKind::Pointer | BatchKind::Data => results.push(b),
        }
    }
    match results.len() {
        1 => Ok(ParsedResponse {
            logs,
            result: results.remove(0),
        }),
        0 => Err(Error::Protocol("response holds no result batch".into())),
        n => Err(Error::Protocol(format!(
            "response holds {n} result batches, expected exactly one"
        ))),
    }
}

/// The most of a 401 body read by the capability probe (the envelope is ~100 bytes).
pub(super) const MAX_UNAUTHORIZED_BODY: u64 = 64 * 1024;
/// The most characters of a 401's detail kept in the error.
const MAX_UNAUTHORIZED_DETAIL: usize = 256;

/// The error of a 401: the reason from the JSON envelope's `reason`, else from
/// `VGI-Auth-Reason`, else `unauthorized` (a 401 from a gateway that is not vgi-rpc); the
/// detail from the envelope's `detail`, else the message of an Arrow EXCEPTION body, else a
/// bounded excerpt of a plain-text body (an HTML page is not quoted), with the token the
/// request carried scrubbed from it.
pub(super) fn unauthorized_error(
    headers: &HeaderMap,
    body: &[u8],
    url: &str,
    token: Option<&BearerToken>,
) -> Error {
    let envelope = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object);
    let field = |name: &str| {
        envelope
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let reason = field("reason")
        .or_else(|| {
            headers
                .get(AUTH_REASON)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .map(|r| AuthRejection::from_code(&r))
        .unwrap_or(AuthRejection::Unauthorized);
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    // A server that writes its 401 as an Arrow EXCEPTION: its message is the detail.
    let exception = || parse_error_body(&Bytes::copy_from_slice(body)).map(|e| e.message);
    let mut detail = match field("detail") {
        Some(d) if !d.trim().is_empty() => d,
        _ if envelope.is_some() => reason.as_str().to_string(),
        _ if exception().is_some() => exception().unwrap_or_default(),
        _ if text.is_empty() => "no detail".to_string(),
        _ if text
            .get(..9)
            .is_some_and(|t| t.eq_ignore_ascii_case("<!doctype"))
            || text
                .get(..5)
                .is_some_and(|t| t.eq_ignore_ascii_case("<html")) =>
        {
            "server returned an HTML 401 page instead of the JSON error envelope".to_string()
        }
        _ => text.to_string(),
    };
    if let Some(t) = token {
        // A gateway that echoes the request must not put the credential into an error.
        detail = detail.replace(t.expose(), "<redacted>");
    }
    let mut detail: String = detail
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_UNAUTHORIZED_DETAIL)
        .collect();
    if let Some(t) = token {
        // The cut may have split the token; drop any tail that is a prefix of it.
        let tail_len = (1..=t.expose().len().min(detail.len())).rev().find(|&n| {
            detail.is_char_boundary(detail.len() - n)
                && t.expose().starts_with(&detail[detail.len() - n..])
        });
        if let Some(n) = tail_len.filter(|&n| n >= 4) {
            detail.truncate(detail.len() - n);
        }
    }
    Error::Unauthorized {
        reason,
        detail: spillway_storage::redact_text(&detail),
        url: spillway_storage::redact_url(url),
    }
}

/// The EXCEPTION carried by an error response body, if the body is Arrow and holds one.
pub(super) fn parse_error_body(body: &Bytes) -> Option<RpcError> {
    let stream = read_stream(body.clone(), ReadLimits::default()).ok()?;
    stream
        .batches
        .iter()
        .find(|b| classify(&b.batch, &b.metadata) == BatchKind::Error)
        .map(|b| RpcError::from_metadata(&b.metadata))
}

/// The response's content coding: `Content-Encoding`, else `X-VGI-Content-Encoding`.
pub(super) fn content_encoding(headers: &HeaderMap) -> Option<String> {
    [
        reqwest::header::CONTENT_ENCODING.as_str(),
        crate::wire::http::VGI_CONTENT_ENCODING,
    ]
    .iter()
    .find_map(|name| normalize_content_encoding(headers.get(*name).and_then(|v| v.to_str().ok())))
}

fn response_too_large(what: String, limit: u64) -> Error {
    Error::TooLarge {
        what,
        limit_name: "max_response_bytes",
        limit,
    }
}

/// Reads a response body, refusing more than `wire_cap` bytes (Content-Length up front, then
/// while streaming). `limit` is the configured cap reported in the error.
pub(super) async fn read_capped_body(
    resp: reqwest::Response,
    wire_cap: u64,
    limit: u64,
) -> Result<Bytes> {
    let declared = resp.content_length();
    collect_capped(resp.bytes_stream(), declared, wire_cap)
        .await
        .map_err(|e| match e {
            CappedError::TooLarge {
                seen,
                declared: true,
                ..
            } => response_too_large(format!("response body of {seen} bytes"), limit),
            CappedError::TooLarge { seen, .. } => {
                response_too_large(format!("response body of more than {seen} bytes"), limit)
            }
            CappedError::Stream(e) => Error::from_reqwest(e),
        })
}

/// Decodes a response body per its content coding within `cap`.
pub(super) async fn decode_response_body(
    wire: Bytes,
    encoding: Option<String>,
    cap: u64,
) -> Result<Bytes> {
    let decoded = match encoding {
        None => {
            if wire.len() as u64 > cap {
                return Err(response_too_large(
                    format!("response body of {} bytes", wire.len()),
                    cap,
                ));
            }
            return Ok(wire);
        }
        Some(enc) => tokio::task::spawn_blocking(move || decode_content(wire, Some(&enc), cap))
            .await
            .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?,
    };
    decoded.map_err(|e| match e {
        Error::TooLarge { what, .. } => response_too_large(what, cap),
        other => other,
    })
}

/// A pointer batch, resolved.
pub(super) struct Resolved {
    /// The batch the object held (its metadata carries the location stamps).
    pub(super) batch: MetaBatch,
    /// The log batches found in the object, in order (already emitted).
    pub(super) logs: Vec<LogMessage>,
    /// Where it came from and what it cost.
    pub(super) externalized: ExternalizedInfo,
}

impl Client {
    /// Resolves a pointer of a response (unary result or stream output) through the fetcher,
    /// under the configured limits and progress callback; the object's logs are emitted.
    pub(super) async fn resolve_pointer(
        &self,
        method: &str,
        pointer: &MetaBatch,
    ) -> Result<Resolved> {
        let location = pointer
            .metadata
            .get(keys::LOCATION)
            .map(|u| spillway_storage::redact_url(u))
            .unwrap_or_default();
        let (resolved, stats) = self
            .inner
            .fetcher
            .resolve(pointer, self.inner.config.progress.as_ref())
            .await?;
        tracing::debug!(
            method,
            url = %location,
            encoded_bytes = stats.encoded_bytes,
            decoded_bytes = stats.decoded_bytes,
            attempts = stats.attempts,
            "resolved externalized result"
        );
        for log in &resolved.logs {
            emit_log(method, log);
        }
        Ok(Resolved {
            batch: resolved.batch,
            logs: resolved.logs,
            externalized: ExternalizedInfo {
                url: location,
                stats,
            },
        })
    }

    /// Turns a unary reply into the call's output (or error), resolving a pointer.
    pub(super) async fn finish_unary(&self, method: &str, reply: Reply) -> Result<CallOutput> {
        let ParsedResponse { mut logs, result } = reply.parse(parse_unary_response)?;
        reply.check_flag()?;
        for log in &logs {
            emit_log(method, log);
        }
        if classify(&result.batch, &result.metadata) != BatchKind::Pointer {
            return Ok(CallOutput {
                batch: result.batch,
                metadata: result.metadata,
                logs,
                externalized: None,
            });
        }
        let resolved = self.resolve_pointer(method, &result).await?;
        logs.extend(resolved.logs);
        Ok(CallOutput {
            batch: resolved.batch.batch,
            metadata: resolved.batch.metadata,
            logs,
            externalized: Some(resolved.externalized),
        })
    }
}

/// Delivers a server log message to `tracing`.
pub(super) fn emit_log(method: &str, log: &LogMessage) {
    let extra = log.extra.as_deref().unwrap_or("");
    match log.level.as_str() {
        "EXCEPTION" | "ERROR" => {
            tracing::error!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "WARN" | "WARNING" => {
            tracing::warn!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "DEBUG" => {
            tracing::debug!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        "TRACE" => {
            tracing::trace!(target: "spillway::client::remote", method, extra, "{}", log.message)
        }
        _ => tracing::info!(target: "spillway::client::remote", method, extra, "{}", log.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::request::compress_zstd;
    use crate::client::tests::{body, log, result_batch, result_schema};
    use crate::wire::{write_stream, ErrorCode};
    use arrow_array::RecordBatch;
    use arrow_schema::Schema;
    use http::HeaderValue;
    use std::sync::Arc;

    #[test]
    fn response_with_logs_and_data() {
        let parsed = parse_unary_response(body(&[
            log("INFO", "one").to_batch(&result_schema()),
            result_batch(b"abc"),
            log("WARN", "two").to_batch(&result_schema()),
        ]))
        .unwrap();
        assert_eq!(parsed.logs, vec![log("INFO", "one"), log("WARN", "two")]);
        assert_eq!(parsed.result.batch, result_batch(b"abc").batch);
        assert_eq!(
            classify(&parsed.result.batch, &parsed.result.metadata),
            BatchKind::Data
        );
    }

    #[test]
    fn response_exception_is_an_rpc_error() {
        let exc = RpcError::new("ValueError", "boom")
            .with_code(ErrorCode::InvalidArgument)
            .to_batch(&result_schema(), Some("rid"));
        for batches in [
            vec![
                log("INFO", "before").to_batch(&result_schema()),
                exc.clone(),
            ],
            vec![result_batch(b"x"), exc.clone()],
        ] {
            match parse_unary_response(body(&batches)) {
                Err(Error::Rpc(e)) => {
                    assert_eq!(e.error_type, "ValueError");
                    assert_eq!(e.message, "boom");
                    assert_eq!(e.code, ErrorCode::InvalidArgument);
                }
                other => panic!("expected an rpc error, got {other:?}"),
            }
        }
        // The same EXCEPTION on the empty schema, as a 4xx body.
        let empty = Arc::new(Schema::empty());
        let exc = RpcError::new("MethodNotImplementedError", "nope")
            .with_kind("method_not_implemented")
            .to_batch(&empty, None);
        let b = Bytes::from(write_stream(&empty, &[exc]).unwrap());
        let e = parse_error_body(&b).unwrap();
        assert_eq!(e.kind.as_deref(), Some("method_not_implemented"));
        assert!(parse_error_body(&Bytes::from_static(b"{\"title\": \"too large\"}")).is_none());
        assert!(parse_error_body(&body(&[result_batch(b"x")])).is_none());
    }

    #[test]
    fn a_401_is_typed_with_its_reason() {
        let token = BearerToken::new("sekret-token-value-123").unwrap();
        let raw = |headers: HeaderMap, body: &str| RawResponse {
            status: 401,
            headers,
            body: Bytes::from(body.to_string()),
            token: Some(token.clone()),
        };
        let url = "http://h/P/m?sig=x";
        let envelope = r#"{"error":"unauthorized","reason":"expired_credential","detail":"authentication rejected"}"#;
        match raw(HeaderMap::new(), envelope).into_reply(url) {
            Err(Error::Unauthorized {
                reason,
                detail,
                url,
            }) => {
                assert_eq!(reason, AuthRejection::ExpiredCredential);
                assert_eq!(detail, "authentication rejected");
                assert_eq!(url, "http://h/P/m");
            }
            other => panic!("not unauthorized: {:?}", other.err()),
        }
        // No envelope: the header's reason; unknown codes are `unauthorized`.
        let mut h = HeaderMap::new();
        h.insert(AUTH_REASON, HeaderValue::from_static("missing_credential"));
        let e = raw(h, "").into_reply(url).err().unwrap();
        assert!(
            matches!(
                e,
                Error::Unauthorized {
                    reason: AuthRejection::MissingCredential,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = raw(HeaderMap::new(), r#"{"reason":"made_up"}"#)
            .into_reply(url)
            .err()
            .unwrap();
        assert!(matches!(
            e,
            Error::Unauthorized {
                reason: AuthRejection::Unauthorized,
                ..
            }
        ));
        // A gateway's page: not quoted; an echo of the token: scrubbed, even when cut.
        let e = raw(HeaderMap::new(), "<!DOCTYPE html><p>login</p>")
            .into_reply(url)
            .err()
            .unwrap();
        assert!(e.to_string().contains("HTML 401 page"), "{e}");
        for body in [
            "denied: Bearer sekret-token-value-123".to_string(),
            format!("{}sekret-token-value-123", "x".repeat(240)),
        ] {
            let e = raw(HeaderMap::new(), &body).into_reply(url).err().unwrap();
            let text = format!("{e} {e:?}");
            assert!(!text.contains("sekret-tok"), "{text}");
        }
        assert_eq!(
            AuthRejection::from_code("insufficient_scope").as_str(),
            "insufficient_scope"
        );
    }

    #[test]
    fn response_pointer_is_detected() {
        let p = crate::wire::pointer_batch(&result_schema(), "http://h/download/k", Some("ab"));
        let parsed = parse_unary_response(body(&[
            log("INFO", "before").to_batch(&result_schema()),
            p.clone(),
        ]))
        .unwrap();
        assert_eq!(parsed.logs.len(), 1);
        assert_eq!(
            classify(&parsed.result.batch, &parsed.result.metadata),
            BatchKind::Pointer
        );
        assert_eq!(parsed.result.metadata, p.metadata);
    }

    #[test]
    fn response_needs_exactly_one_result() {
        let err = parse_unary_response(body(&[log("INFO", "only").to_batch(&result_schema())]))
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ref m) if m.contains("no result batch")),
            "{err}"
        );
        let err =
            parse_unary_response(body(&[result_batch(b"a"), result_batch(b"b")])).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ref m) if m.contains("2 result batches")),
            "{err}"
        );
        assert!(matches!(
            parse_unary_response(Bytes::from_static(b"<html>")),
            Err(Error::Ipc(_))
        ));
        // A genuine zero-row data batch (no special keys) is a result.
        let empty = MetaBatch::plain(RecordBatch::new_empty(result_schema()));
        let parsed = parse_unary_response(body(&[empty])).unwrap();
        assert_eq!(parsed.result.batch.num_rows(), 0);
    }

    #[tokio::test]
    async fn response_decoding_is_capped() {
        let raw = Bytes::from(vec![7u8; 100_000]);
        let z = Bytes::from(zstd::bulk::compress(&raw, 1).unwrap());
        let ok = decode_response_body(z.clone(), Some("zstd".into()), 100_000)
            .await
            .unwrap();
        assert_eq!(ok, raw);
        match decode_response_body(z, Some("zstd".into()), 50_000).await {
            Err(Error::TooLarge {
                limit_name, limit, ..
            }) => {
                assert_eq!(limit_name, "max_response_bytes");
                assert_eq!(limit, 50_000);
            }
            other => panic!("expected too large, got {other:?}"),
        }
        let err = decode_response_body(raw, None, 10).await.unwrap_err();
        assert!(err.to_string().contains("max_response_bytes"), "{err}");
        let mut h = HeaderMap::new();
        assert_eq!(content_encoding(&h), None);
        h.insert("content-encoding", HeaderValue::from_static("identity"));
        assert_eq!(content_encoding(&h), None);
        h.insert("content-encoding", HeaderValue::from_static("GZIP; q=1"));
        assert_eq!(content_encoding(&h).as_deref(), Some("gzip"));
        let body = compress_zstd(Bytes::from(vec![1u8; 400_000]), 1)
            .await
            .unwrap();
        assert_eq!(
            zstd::bulk::decompress(&body, 400_000).unwrap(),
            vec![1u8; 400_000]
        );
    }
}
