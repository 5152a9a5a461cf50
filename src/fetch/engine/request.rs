//! One range request: the task that runs it, the bytes it asks for, and the checks its
//! answer must pass.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use url::Url;

use super::super::http::{base_headers, classify_reqwest, send_following, ContentRange, Head};
use crate::error::{Error, FetchFailure};

/// What a request task reports.
pub(super) enum Event {
    Head(u64, Head),
    Data(u64, Bytes),
    End(u64),
    Failed(u64, Error),
}

/// One HTTP request: sends (or takes over an already received response), then forwards the
/// head and body pieces. Aborting the task drops the response and with it the connection.
pub(super) async fn run_request(
    transport: Arc<super::super::http::Transport>,
    url: Url,
    headers: HeaderMap,
    id: u64,
    tx: mpsc::Sender<Event>,
    leftover: Option<reqwest::Response>,
) {
    let mut resp = match leftover {
        Some(r) => r,
        None => match send_following(&transport, Method::GET, &url, &headers).await {
            Ok((r, _)) => r,
            Err(e) => {
                let _ = tx.send(Event::Failed(id, e)).await;
                return;
            }
        },
    };
    let head = Head::of(&resp);
    tracing::Span::current().record(
        "http.response.status_code",
        crate::telemetry::int(head.status),
    );
    let success = (200..300).contains(&head.status);
    if tx.send(Event::Head(id, head)).await.is_err() || !success {
        return;
    }
    loop {
        let event = match resp.chunk().await {
            Ok(Some(b)) => Event::Data(id, b),
            Ok(None) => Event::End(id),
            Err(e) => Event::Failed(id, classify_reqwest(e, &url)),
        };
        let last = !matches!(event, Event::Data(..));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// The bytes one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ask {
    /// First byte asked for.
    pub(super) start: u64,
    /// Last byte asked for (inclusive) when a `Range` header is sent; `None`: no range.
    pub(super) last: Option<u64>,
}

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejected {
    pub(super) kind: FetchFailure,
    pub(super) detail: String,
}

fn rejected(kind: FetchFailure, detail: String) -> Rejected {
    Rejected { kind, detail }
}

impl Ask {
    /// `bytes=start-last`.
    #[cfg(test)]
    pub(super) fn range(start: u64, last: u64) -> Ask {
        Ask {
            start,
            last: Some(last),
        }
    }

    /// No `Range` header, the response is expected from `start` on.
    #[cfg(test)]
    pub(super) fn whole(start: u64) -> Ask {
        Ask { start, last: None }
    }

    /// A `Range` header is sent.
    pub(super) fn ranged(&self) -> bool {
        self.last.is_some()
    }

    /// The request's headers: the engine's own, the range, and `If-Match` so the store
    /// refuses (412) instead of serving bytes of a newer version.
    pub(super) fn headers(&self, if_match: Option<&HeaderValue>) -> HeaderMap {
        let mut headers = base_headers();
        if let Some(last) = self.last {
            let value = format!("bytes={}-{}", self.start, last);
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::RANGE, v);
            }
        }
        if let Some(etag) = if_match {
            headers.insert(header::IF_MATCH, etag.clone());
        }
        headers
    }

    /// Checks a 206 against what was asked and the object's known `size`; returns the offset
    /// of its first body byte and the offset past its last.
    pub(super) fn check_partial(
        &self,
        head: &Head,
        size: Option<u64>,
    ) -> Result<(u64, u64), Rejected> {
        let raw = head.content_range_raw.as_deref().unwrap_or("none");
        let Some(range_last) = self.last else {
            return Err(rejected(
                FetchFailure::BadResponse,
                "206 to a request without a range".into(),
            ));
        };
        let Some(ContentRange::Bytes { first, last, total }) = head.content_range else {
            return Err(rejected(
                FetchFailure::BadResponse,
                format!("206 with content-range {raw}"),
            ));
        };
        if first != self.start || last != range_last {
            return Err(rejected(
                FetchFailure::BadResponse,
                format!(
                    "content-range {raw} does not match the requested bytes={}-{range_last}",
                    self.start
                ),
            ));
        }
        if let (Some(total), Some(size)) = (total, size) {
            if total != size {
                return Err(rejected(
                    FetchFailure::ObjectChanged,
                    format!("object size changed from {size} to {total} bytes"),
                ));
            }
        }
        if let Some(len) = head.content_length {
            if len != last - first + 1 {
                return Err(rejected(
                    FetchFailure::BadResponse,
                    format!("content-length {len} does not match content-range {raw}"),
                ));
            }
        }
        Ok((first, last + 1))
    }
}

/// What every answer must agree on: the object the fetch started on.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    pub(super) etag: Option<String>,
    /// Normalized `Content-Encoding`, when `encoding_known`.
    pub(super) encoding: Option<String>,
    pub(super) encoding_known: bool,
}

impl Identity {
    /// ETag and encoding must be those of the object the fetch started on. Without an ETag
    /// so far, the answer's is adopted when `adopt_etag` (no data written yet). Errors are
    /// [`FetchFailure::ObjectChanged`] details.
    pub(super) fn check(&mut self, head: &Head, adopt_etag: bool) -> Result<(), String> {
        match (&self.etag, &head.etag) {
            (Some(want), Some(got)) if want != got => {
                return Err(format!("etag changed from {want} to {got}"))
            }
            (None, Some(got)) if adopt_etag => self.etag = Some(got.clone()),
            _ => {}
        }
        if self.encoding_known {
            if self.encoding != head.content_encoding {
                return Err(format!(
                    "content-encoding changed from {:?} to {:?}",
                    self.encoding, head.content_encoding
                ));
            }
        } else {
            // The probe was refused: the delivering response is authoritative.
            self.encoding = head.content_encoding.clone();
            self.encoding_known = true;
        }
        Ok(())
    }
}

/// One in-flight request, as the driver sees it.
pub(super) struct Req {
    pub(super) chunk: usize,
    pub(super) hedge: bool,
    pub(super) sent: Instant,
    pub(super) ask: Ask,
    pub(super) first_byte: Option<Instant>,
    pub(super) last_progress: Instant,
    /// Object offset of the next byte this response delivers.
    pub(super) pos: u64,
    /// Offset just past the last byte the response announced.
    pub(super) expected_end: Option<u64>,
    /// Body bytes received.
    pub(super) bytes: u64,
    pub(super) abort: AbortHandle,
    /// The request's `spillway.fetch.range` span (ends with the request task and this).
    pub(super) span: tracing::Span,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(first: u64, last: u64, total: Option<u64>, len: Option<u64>) -> Head {
        let raw = match total {
            Some(t) => format!("bytes {first}-{last}/{t}"),
            None => format!("bytes {first}-{last}/*"),
        };
        Head {
            status: 206,
            content_length: len,
            content_range: Some(ContentRange::Bytes { first, last, total }),
            content_range_raw: Some(raw),
            ..Head::default()
        }
    }

    fn kind(r: Result<(u64, u64), Rejected>) -> FetchFailure {
        r.unwrap_err().kind
    }

    #[test]
    fn headers_carry_the_range_and_if_match() {
        let etag = HeaderValue::from_static("\"abc\"");
        let h = Ask::range(4, 9).headers(Some(&etag));
        assert_eq!(h[header::RANGE], "bytes=4-9");
        assert_eq!(h[header::IF_MATCH], "\"abc\"");
        assert_eq!(h[header::ACCEPT_ENCODING], "zstd, gzip");
        let plain = Ask::whole(0).headers(None);
        assert!(plain.get(header::RANGE).is_none() && plain.get(header::IF_MATCH).is_none());
        assert!(Ask::range(0, 0).ranged() && !Ask::whole(3).ranged());
    }

    #[test]
    fn an_exact_partial_answer_is_accepted() {
        let ask = Ask::range(4, 9);
        assert_eq!(
            ask.check_partial(&partial(4, 9, Some(10), Some(6)), Some(10)),
            Ok((4, 10))
        );
        // Unknown total, missing length, unknown size: nothing to contradict.
        assert_eq!(
            ask.check_partial(&partial(4, 9, None, None), Some(10)),
            Ok((4, 10))
        );
        assert_eq!(
            ask.check_partial(&partial(4, 9, Some(99), None), None),
            Ok((4, 10))
        );
        // The one-byte range of a one-byte chunk.
        let one = Ask::range(7, 7);
        assert_eq!(
            one.check_partial(&partial(7, 7, Some(8), Some(1)), Some(8)),
            Ok((7, 8))
        );
    }

    #[test]
    fn partial_answers_that_do_not_match_are_rejected() {
        let ask = Ask::range(4, 9);
        let bad = FetchFailure::BadResponse;
        assert_eq!(
            kind(Ask::whole(0).check_partial(&partial(0, 9, None, None), None)),
            bad
        );
        let no_range = Head {
            status: 206,
            ..Head::default()
        };
        let e = ask.check_partial(&no_range, Some(10)).unwrap_err();
        assert_eq!(e.detail, "206 with content-range none");
        let e = ask
            .check_partial(&partial(5, 9, Some(10), None), Some(10))
            .unwrap_err();
        assert_eq!(
            (e.kind, e.detail.as_str()),
            (
                bad,
                "content-range bytes 5-9/10 does not match the requested bytes=4-9"
            )
        );
        assert_eq!(
            kind(ask.check_partial(&partial(4, 8, Some(10), None), Some(10))),
            bad
        );
        assert_eq!(
            kind(ask.check_partial(&partial(4, 9, Some(10), Some(5)), Some(10))),
            bad
        );
        assert_eq!(
            kind(ask.check_partial(&partial(4, 9, Some(11), Some(6)), Some(10))),
            FetchFailure::ObjectChanged
        );
    }

    fn with(etag: Option<&str>, encoding: Option<&str>) -> Head {
        Head {
            status: 200,
            etag: etag.map(str::to_string),
            content_encoding: encoding.map(str::to_string),
            ..Head::default()
        }
    }

    #[test]
    fn identity_holds_the_first_etag_and_encoding() {
        let mut id = Identity {
            etag: Some("\"a\"".into()),
            encoding: Some("zstd".into()),
            encoding_known: true,
        };
        assert_eq!(id.check(&with(Some("\"a\""), Some("zstd")), false), Ok(()));
        // An answer without an ETag does not contradict.
        assert_eq!(id.check(&with(None, Some("zstd")), false), Ok(()));
        assert_eq!(
            id.check(&with(Some("\"b\""), Some("zstd")), true),
            Err("etag changed from \"a\" to \"b\"".into())
        );
        assert_eq!(
            id.check(&with(Some("\"a\""), None), false),
            Err("content-encoding changed from Some(\"zstd\") to None".into())
        );
    }

    #[test]
    fn identity_is_adopted_from_the_first_delivering_answer() {
        let mut id = Identity {
            etag: None,
            encoding: None,
            encoding_known: false,
        };
        assert_eq!(id.check(&with(Some("\"a\""), Some("gzip")), false), Ok(()));
        // Data was already written: a late ETag is not adopted, the encoding is.
        assert_eq!(id.etag, None);
        assert_eq!(
            (id.encoding.as_deref(), id.encoding_known),
            (Some("gzip"), true)
        );
        assert_eq!(id.check(&with(Some("\"a\""), Some("gzip")), true), Ok(()));
        assert_eq!(id.etag.as_deref(), Some("\"a\""));
        assert!(id.check(&with(Some("\"b\""), Some("gzip")), true).is_err());
    }
}
