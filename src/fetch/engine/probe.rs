//! The probe: learns size, range support, encoding and ETag before any data is requested.

use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderValue};
use reqwest::Method;
use tracing::Instrument;
use url::Url;

use super::super::http::{
    backoff, base_headers, is_presigned, retryable, retryable_status, send_following, ContentRange,
    Head,
};
use super::{stalled, Job};
use crate::error::{Error, Result};

/// What the probe learned.
pub(super) struct Probe {
    /// The URL after redirects; data requests go there directly.
    pub(super) url: Url,
    pub(super) size: Option<u64>,
    pub(super) ranges: bool,
    pub(super) etag: Option<String>,
    /// Normalized `Content-Encoding`, when `encoding_known`.
    pub(super) encoding: Option<String>,
    pub(super) encoding_known: bool,
    /// A 200 answer to the range probe: the whole object, used as the first data response.
    pub(super) leftover: Option<reqwest::Response>,
    pub(super) ttfb: Option<Duration>,
    pub(super) requests: u32,
    pub(super) retries: u32,
}

impl Probe {
    fn fallback(url: Url, requests: u32, retries: u32) -> Probe {
        Probe {
            url,
            size: None,
            ranges: false,
            etag: None,
            encoding: None,
            encoding_known: false,
            leftover: None,
            ttfb: None,
            requests,
            retries,
        }
    }
}

/// What a probe answer means, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A 206 to `bytes=0-0` naming the object's size: ranges work.
    Ranged { size: u64 },
    /// A 206 whose range cannot be used: fetch with a plain GET (encoding decided later).
    RangeUnusable,
    /// A 416 naming a total of 0: the object is empty.
    Empty,
    /// A 200 to the range probe: the store ignored the range, this is the whole object.
    Whole { size: Option<u64> },
    /// A 2xx to HEAD.
    Head { size: Option<u64>, ranges: bool },
    /// The probe was refused in a way a plain GET still gets past.
    Fallback,
    /// A status worth another probe.
    Retry,
    /// A status that fails the fetch.
    Fail,
}

fn interpret(head: &Head, presigned: bool) -> Answer {
    match head.status {
        206 if presigned => match head.content_range {
            Some(ContentRange::Bytes {
                first: 0,
                last: 0,
                total: Some(total),
            }) => Answer::Ranged { size: total },
            _ => Answer::RangeUnusable,
        },
        416 if presigned => match head.content_range {
            Some(ContentRange::Unsatisfied { total: 0 }) => Answer::Empty,
            _ => Answer::Fallback,
        },
        200 if presigned => Answer::Whole {
            size: head.content_length,
        },
        s if (200..300).contains(&s) && !presigned => Answer::Head {
            size: head.content_length,
            ranges: head.accept_ranges,
        },
        // Method- or header-bound signatures, stores without HEAD: a plain GET still works.
        403 | 405 | 501 => Answer::Fallback,
        s if retryable_status(s) => Answer::Retry,
        _ => Answer::Fail,
    }
}

/// Learns size, range support, encoding and ETag without downloading the body: HEAD for plain
/// URLs, `Range: bytes=0-0` for presigned ones (signed for GET only). Retries like a chunk.
pub(super) async fn probe(job: &Job<'_>, started: Instant) -> Result<Probe> {
    let span = tracing::debug_span!(
        "spillway.fetch.probe",
        otel.name = "vgi_rpc.external/probe",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        size = tracing::field::Empty,
        ranges = tracing::field::Empty,
        requests = tracing::field::Empty,
    );
    let result = probe_in_span(job, started).instrument(span.clone()).await;
    match &result {
        Ok(p) => {
            span.record("size", p.size.map(crate::telemetry::int));
            span.record("ranges", crate::telemetry::int(p.ranges));
            span.record("requests", crate::telemetry::int(p.requests));
            span.record("otel.status_code", "OK");
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    result
}

async fn probe_in_span(job: &Job<'_>, started: Instant) -> Result<Probe> {
    let cfg = job.config;
    let redacted = spillway_storage::redact_url(job.url.as_str());
    let presigned = is_presigned(&job.url);
    let mut headers = base_headers();
    let method = if presigned {
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        Method::GET
    } else {
        Method::HEAD
    };
    tracing::Span::current().record("http.request.method", method.as_str());
    let mut requests = 0u32;
    let mut failures = 0u32;
    loop {
        requests += 1;
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            cfg.stall_timeout,
            send_following(&job.transport, method.clone(), &job.url, &headers),
        )
        .await
        .unwrap_or_else(|_| Err(stalled(&redacted, "probe", cfg.stall_timeout)));
        let error = match attempt {
            Ok((mut resp, final_url)) => {
                let ttfb = Some(sent.elapsed());
                let head = Head::of(&resp);
                tracing::Span::current().record(
                    "http.response.status_code",
                    crate::telemetry::int(head.status),
                );
                tracing::debug!(
                    status = head.status,
                    presigned,
                    size = ?head.content_length,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "fetch probe answered"
                );
                let mut probe = Probe {
                    url: final_url.clone(),
                    size: None,
                    ranges: false,
                    etag: head.etag.clone(),
                    encoding: head.content_encoding.clone(),
                    encoding_known: true,
                    leftover: None,
                    ttfb,
                    requests,
                    retries: failures,
                };
                let status_error = || Error::HttpStatus {
                    status: head.status,
                    url: redacted.clone(),
                };
                match interpret(&head, presigned) {
                    answer @ (Answer::Ranged { .. } | Answer::RangeUnusable) => {
                        if let Answer::Ranged { size } = answer {
                            probe.size = Some(size);
                            probe.ranges = true;
                        } else {
                            probe.encoding_known = false;
                        }
                        // Read the one byte so the connection goes back to the pool; a
                        // longer body is abandoned with its connection.
                        let _ = tokio::time::timeout(cfg.stall_timeout, async {
                            let mut seen = 0usize;
                            while let Ok(Some(b)) = resp.chunk().await {
                                seen += b.len();
                                if seen > 1 {
                                    break;
                                }
                            }
                        })
                        .await;
                        return Ok(probe);
                    }
                    Answer::Empty => {
                        probe.size = Some(0);
                        probe.ranges = true;
                        return Ok(probe);
                    }
                    Answer::Whole { size } => {
                        probe.size = size;
                        probe.leftover = Some(resp);
                        return Ok(probe);
                    }
                    Answer::Head { size, ranges } => {
                        probe.size = size;
                        probe.ranges = ranges;
                        return Ok(probe);
                    }
                    Answer::Fallback => return Ok(Probe::fallback(final_url, requests, failures)),
                    Answer::Retry => status_error(),
                    Answer::Fail => return Err(status_error()),
                }
            }
            Err(e) => e,
        };
        if !retryable(&error) {
            return Err(error);
        }
        failures += 1;
        if failures > cfg.max_chunk_retries {
            return Err(error);
        }
        let delay = backoff(failures, cfg.retry_base_delay, cfg.retry_max_delay);
        tracing::debug!(error = %error, delay_ms = delay.as_millis() as u64, "fetch probe failed; retrying");
        metrics::counter!("spillway_fetch_retries_total").increment(1);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16) -> Head {
        Head {
            status,
            ..Head::default()
        }
    }

    fn ranged(status: u16, range: ContentRange) -> Head {
        Head {
            content_range: Some(range),
            ..head(status)
        }
    }

    #[test]
    fn a_one_byte_range_answer_names_the_size() {
        let r = ranged(
            206,
            ContentRange::Bytes {
                first: 0,
                last: 0,
                total: Some(1),
            },
        );
        assert_eq!(interpret(&r, true), Answer::Ranged { size: 1 });
    }

    #[test]
    fn unusable_range_answers_fall_back_to_a_plain_get() {
        let unknown_total = ranged(
            206,
            ContentRange::Bytes {
                first: 0,
                last: 0,
                total: None,
            },
        );
        let wrong_bytes = ranged(
            206,
            ContentRange::Bytes {
                first: 0,
                last: 9,
                total: Some(10),
            },
        );
        assert_eq!(interpret(&unknown_total, true), Answer::RangeUnusable);
        assert_eq!(interpret(&wrong_bytes, true), Answer::RangeUnusable);
        assert_eq!(interpret(&head(206), true), Answer::RangeUnusable);
    }

    #[test]
    fn an_empty_object_answers_416_with_total_zero() {
        let empty = ranged(416, ContentRange::Unsatisfied { total: 0 });
        let other = ranged(416, ContentRange::Unsatisfied { total: 5 });
        assert_eq!(interpret(&empty, true), Answer::Empty);
        assert_eq!(interpret(&other, true), Answer::Fallback);
        assert_eq!(interpret(&head(416), true), Answer::Fallback);
        // A HEAD cannot get a 416 for a range it did not send.
        assert_eq!(interpret(&empty, false), Answer::Fail);
    }

    #[test]
    fn a_200_to_the_range_probe_is_the_whole_object() {
        let whole = Head {
            content_length: Some(7),
            ..head(200)
        };
        assert_eq!(interpret(&whole, true), Answer::Whole { size: Some(7) });
        assert_eq!(interpret(&head(200), true), Answer::Whole { size: None });
    }

    #[test]
    fn head_answers_give_size_and_range_support() {
        let h = Head {
            content_length: Some(0),
            accept_ranges: true,
            ..head(200)
        };
        assert_eq!(
            interpret(&h, false),
            Answer::Head {
                size: Some(0),
                ranges: true
            }
        );
        assert_eq!(
            interpret(&head(206), false),
            Answer::Head {
                size: None,
                ranges: false
            }
        );
    }

    #[test]
    fn refusals_retries_and_failures() {
        for presigned in [true, false] {
            for s in [403, 405, 501] {
                assert_eq!(interpret(&head(s), presigned), Answer::Fallback, "{s}");
            }
            for s in [408, 429, 500, 503] {
                assert_eq!(interpret(&head(s), presigned), Answer::Retry, "{s}");
            }
            for s in [400, 401, 404, 412] {
                assert_eq!(interpret(&head(s), presigned), Answer::Fail, "{s}");
            }
        }
        // A presigned probe only accepts 200, 206 and 416 as answers.
        assert_eq!(interpret(&head(204), true), Answer::Fail);
    }
}
