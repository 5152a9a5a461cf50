//! Keeps signed query strings and credentials out of text that leaves the process.
//!
//! One algorithm for the whole workspace: every URL that reaches an error, a log line or a
//! metric goes through [`redact_url`], and free text that may embed URLs (messages echoed by
//! client libraries) through [`redact_text`].

use url::Url;

/// `scheme://host[:port]/path`: a URL with its query string (signatures, credentials), user
/// info and fragment removed. Use it for every URL that reaches an error, a log line or a metric.
///
/// ```
/// assert_eq!(
///     spillway_storage::redact_url("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc"),
///     "https://b.s3.amazonaws.com/k"
/// );
/// assert_eq!(spillway_storage::redact_url("not a url?sig=1"), "<unparseable url>");
/// ```
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            // Both fail only for URLs that cannot have credentials (cannot-be-a-base), which
            // then have none to remove.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Replaces every `http://` or `https://` URL found in `text` with its [`redact_url`] form. A
/// URL ends at whitespace or at one of `" ' ) > < ,`. Use it on error texts from libraries that
/// may echo a URL they were given.
///
/// ```
/// let text = "GET https://s/k?X-Amz-Signature=abc failed (see \"http://u:p@h/x?t=1\")";
/// assert_eq!(
///     spillway_storage::redact_text(text),
///     "GET https://s/k failed (see \"http://h/x\")"
/// );
/// ```
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_url(rest) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | '<' | ','))
            .unwrap_or(tail.len());
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The byte offset of the first `http://` or `https://` (any case) in `text`.
fn find_url(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| {
        let rest = &bytes[i..];
        starts_with_ignore_case(rest, b"http://") || starts_with_ignore_case(rest, b"https://")
    })
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_query_and_fragment() {
        let r = redact_url("https://user:pw@h:8443/a/b?X-Amz-Credential=AK&X-Amz-Signature=s#f");
        assert_eq!(r, "https://h:8443/a/b");
    }

    #[test]
    fn embedded_urls_lose_their_query() {
        let t =
            "error sending request for url (http://127.0.0.1:9/k?X-Amz-Signature=abc&x=1): boom";
        let r = redact_text(t);
        assert!(!r.contains("Signature"), "{r}");
        assert!(r.contains("http://127.0.0.1:9/k)"), "{r}");
        assert_eq!(redact_text("no url ?q=1 here"), "no url ?q=1 here");
        assert_eq!(
            redact_text("HTTPS://H/x?sig=1 and https://h/y?sig=2"),
            "https://h/x and https://h/y"
        );
    }

    #[test]
    fn text_without_urls_is_unchanged_including_multibyte() {
        let t = "écrit: ok";
        assert_eq!(redact_text(t), t);
    }
}
