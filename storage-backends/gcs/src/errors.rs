//! Turning client-library and HTTP failures into [`StorageError`]s without leaking secrets.
//!
//! Error texts from the client library and reqwest may name URLs, and some of those are
//! capabilities (a resumable upload session URL lets anyone holding it write the object), so
//! every URL in a message is cut down to `scheme://host[:port]/path` and messages are bounded.

use spillway_storage::{ObjectKey, StorageError};

/// Longest error text kept (the service's explanation is in the first few hundred bytes).
const MAX_MESSAGE_LEN: usize = 600;

/// `e` and its sources, `: `-separated.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: some error types list themselves as their own source.
    for _ in 0..8 {
        let Some(s) = source else { break };
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// [`spillway_storage::redact_text`] (every URL cut down to `scheme://host[:port]/path`), bounded
/// to [`MAX_MESSAGE_LEN`] bytes.
pub(crate) fn redact_text(text: &str) -> String {
    let mut out = spillway_storage::redact_text(text);
    if out.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// `e` and its sources ([`error_chain`]), redacted and bounded ([`redact_text`]).
pub(crate) fn redacted_chain(e: &(dyn std::error::Error + 'static)) -> String {
    redact_text(&error_chain(e))
}

/// Maps a client-library error: 404 on an object is [`StorageError::NotFound`], 429 is
/// [`StorageError::Throttled`], 5xx, timeouts and connection failures (after the library's
/// retries) are [`StorageError::Unavailable`], the rest is a redacted
/// [`StorageError::Backend`].
pub(crate) fn from_gcs(
    op: &str,
    key: Option<&ObjectKey>,
    e: google_cloud_storage::Error,
) -> StorageError {
    // When the retries ran out, the last attempt's error says what happened.
    let last = if e.is_exhausted() {
        std::error::Error::source(&e).and_then(|s| s.downcast_ref::<google_cloud_storage::Error>())
    } else {
        None
    };
    let status = e
        .http_status_code()
        .or_else(|| last.and_then(|l| l.http_status_code()));
    if let (Some(404), Some(key)) = (status, key) {
        return StorageError::NotFound {
            key: key.to_string(),
        };
    }
    let shown = status.map(|s| format!(" (http {s})")).unwrap_or_default();
    let reason = format!("gcs {op} failed{shown}: {}", redacted_chain(&e));
    match status {
        Some(429) => StorageError::Throttled { reason },
        Some(500..=599) => StorageError::Unavailable { reason },
        // Only transient failures are retried until the retries run out.
        None if e.is_exhausted()
            || e.is_timeout()
            || e.is_connect()
            || e.is_io()
            || e.is_transport() =>
        {
            StorageError::Unavailable { reason }
        }
        _ => StorageError::Backend(reason),
    }
}

/// `None` for the empty strings the client library uses for absent fields.
pub(crate) fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// A stored `Content-Encoding`; `identity` (what the service reports for none) is none.
pub(crate) fn stored_encoding(s: String) -> Option<String> {
    non_empty(s).filter(|e| !e.eq_ignore_ascii_case("identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_lose_their_query() {
        let text = "error sending request for url (http://127.0.0.1:9/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=SECRET): connection refused; see https://h/x?X-Goog-Signature=abc, done";
        let r = redact_text(text);
        assert!(!r.contains("SECRET"), "{r}");
        assert!(!r.contains("abc"), "{r}");
        assert!(
            r.contains("http://127.0.0.1:9/upload/storage/v1/b/b/o)"),
            "{r}"
        );
        assert!(r.contains("https://h/x, done"), "{r}");
        assert!(r.starts_with("error sending request for url ("), "{r}");
    }

    #[test]
    fn messages_are_bounded() {
        let long = "é".repeat(2000);
        let r = redact_text(&long);
        assert!(r.len() <= MAX_MESSAGE_LEN + 3);
        assert!(r.ends_with("..."));
        assert_eq!(redact_text("plain"), "plain");
        assert_eq!(redact_text("HTTPS://H/p?q=1"), "https://h/p");
    }

    #[test]
    fn absent_fields_are_none() {
        assert_eq!(non_empty(String::new()), None);
        assert_eq!(stored_encoding("identity".into()), None);
        assert_eq!(stored_encoding("zstd".into()), Some("zstd".into()));
    }
}
