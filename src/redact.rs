//! Keeps signed query strings and credentials out of text that leaves the process.

/// Removes the query string of every URL found in `text` (anything from `?` up to the next
/// whitespace or quote, inside a token that contains `://`). Used on error texts that came from
/// libraries which may echo a URL we passed them.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, token) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match (token.find("://"), token.find('?')) {
            (Some(scheme), Some(q)) if q > scheme => {
                out.push_str(&token[..q]);
                let rest = &token[q..];
                if let Some(end) = rest.find(['"', '\'', ')', '>', ',']) {
                    out.push_str(&rest[end..]);
                }
            }
            _ => out.push_str(token),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_text;

    #[test]
    fn strips_queries_of_embedded_urls() {
        let t = "error sending request for url (http://h:1/k?X-Amz-Signature=abc&X-Amz-Credential=AK) x";
        let r = redact_text(t);
        assert_eq!(r, "error sending request for url (http://h:1/k) x");
        assert!(!r.contains("abc"));
        assert_eq!(redact_text("no url? here"), "no url? here");
    }
}
