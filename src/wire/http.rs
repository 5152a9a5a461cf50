//! The HTTP side of the vgi-rpc 0.52 protocol, shared by the client and the server: header
//! names, route segments, size bounds, the protocol-name grammar, and the normalizations both
//! sides must agree on (mount prefixes, content codings). The Arrow side (metadata keys,
//! special batches) is in [`keys`](super::keys) and the rest of [`wire`](super).
//!
//! Header names are lowercase, as HTTP/2 requires and `http::HeaderName::from_static` accepts;
//! lookups are case-insensitive either way.

pub use spillway_storage::{collect_capped, CappedError};

/// Capability header: the server honours `VGI-Accept-Max-Response-Bytes`.
pub const ACCEPT_MAX_RESPONSE_BYTES_SUPPORT: &str = "vgi-accept-max-response-bytes-support";
/// Request header: the largest response body this client accepts.
pub const ACCEPT_MAX_RESPONSE_BYTES: &str = "vgi-accept-max-response-bytes";
/// Capability header: large results are sent as pointers.
pub const EXTERNALIZATION_ENABLED: &str = "vgi-externalization-enabled";
/// Capability header: `POST {prefix}/__upload_url__/init` is available.
pub const UPLOAD_URL_SUPPORT: &str = "vgi-upload-url-support";
/// Capability header: request bodies above this get 413.
pub const MAX_REQUEST_BYTES: &str = "vgi-max-request-bytes";
/// Capability header: the largest object accepted through an upload URL.
pub const MAX_UPLOAD_BYTES: &str = "vgi-max-upload-bytes";
/// Capability header: the largest inline response body the server sends.
pub const MAX_RESPONSE_BYTES: &str = "vgi-max-response-bytes";
/// Capability header: the largest externalized response the server writes.
pub const MAX_EXTERNALIZED_RESPONSE_BYTES: &str = "vgi-max-externalized-response-bytes";
/// Capability header: request content codings the server decodes.
pub const SUPPORTED_ENCODINGS: &str = "vgi-supported-encodings";
/// Response header: set (to the error code) when the call failed; the body holds the error.
pub const RPC_ERROR: &str = "x-vgi-rpc-error";
/// Request header: response codings the client accepts, read before `Accept-Encoding`.
pub const VGI_ACCEPT_ENCODING: &str = "x-vgi-accept-encoding";
/// Response header: the coding of a response negotiated through [`VGI_ACCEPT_ENCODING`].
pub const VGI_CONTENT_ENCODING: &str = "x-vgi-content-encoding";
/// Request and response header: the request id, echoed (or generated) by the server.
pub const REQUEST_ID: &str = "x-request-id";
/// Response header of a 401: the reason code (`missing_credential`, `invalid_credential`,
/// `expired_credential`, `insufficient_scope`, `unauthorized`), the same as the body's.
pub const AUTH_REASON: &str = "vgi-auth-reason";
/// The well-known path of the OAuth protected-resource metadata (RFC 9728), followed by the
/// mount prefix: how vgi-rpc clients that log in through OAuth discover the issuer.
pub const OAUTH_PROTECTED_RESOURCE: &str = "/.well-known/oauth-protected-resource";

/// The reserved method (and path segment) that vends upload URLs: `{prefix}/__upload_url__/init`.
pub const UPLOAD_METHOD: &str = "__upload_url__";
/// The most URL pairs one `__upload_url__/init` call vends (larger counts are clamped).
pub const MAX_UPLOAD_URLS: i64 = 100;
/// The smallest `VGI-Accept-Max-Response-Bytes` a server accepts.
pub const MIN_ACCEPT_MAX_RESPONSE_BYTES: u64 = 65_536;
/// The largest size header value: 2^53 - 1, exact in every JSON and JavaScript number.
pub const MAX_SIZE_HEADER_VALUE: u64 = (1 << 53) - 1;
/// The protocol names reserved for the framework (reflection): no service may use this prefix.
pub const RESERVED_PROTOCOL_PREFIX: &str = "vgi_rpc.";
/// The longest protocol or method name.
pub const MAX_NAME_BYTES: usize = 255;

/// A protocol wire name: `^[A-Za-z_][A-Za-z0-9_.]*$`, at most 255 bytes (spec §2).
///
/// ```
/// use spillway::wire::http::is_valid_protocol_name;
/// assert!(is_valid_protocol_name("spillway.Demo.v1"));
/// assert!(!is_valid_protocol_name("1bad"));
/// assert!(!is_valid_protocol_name("a/b"));
/// ```
pub fn is_valid_protocol_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_BYTES
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// A method name as it may appear in a URL: one path segment of unreserved characters
/// (`A-Z a-z 0-9 _ . - ~`), not `.` or `..`, at most 255 bytes. vgi-rpc method names are
/// identifiers, well inside this.
pub fn is_valid_method_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~'))
}

/// Why a mount prefix was refused by [`normalize_prefix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prefix {0:?}: it must be a URL path without query, fragment or spaces")]
pub struct InvalidPrefix(pub String);

/// Normalizes a mount prefix to `""` or `/a/b`: surrounding whitespace and slashes removed,
/// one leading slash added. A prefix holding `?`, `#` or whitespace is refused: it could not
/// be a path.
///
/// ```
/// use spillway::wire::http::normalize_prefix;
/// assert_eq!(normalize_prefix("").unwrap(), "");
/// assert_eq!(normalize_prefix("/").unwrap(), "");
/// assert_eq!(normalize_prefix("vgi/").unwrap(), "/vgi");
/// assert_eq!(normalize_prefix(" /a/b// ").unwrap(), "/a/b");
/// assert!(normalize_prefix("/a?b").is_err());
/// ```
pub fn normalize_prefix(prefix: &str) -> Result<String, InvalidPrefix> {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.contains(|c: char| c == '?' || c == '#' || c.is_whitespace()) {
        return Err(InvalidPrefix(prefix.to_string()));
    }
    if trimmed.is_empty() {
        Ok(String::new())
    } else {
        Ok(format!("/{trimmed}"))
    }
}

/// A `Content-Encoding` value as the wire spec reads it: up to the first `;`, trimmed,
/// lowercase; empty and `identity` mean none.
///
/// ```
/// use spillway::wire::http::normalize_content_encoding;
/// assert_eq!(normalize_content_encoding(Some(" ZSTD ; q=1")).as_deref(), Some("zstd"));
/// assert_eq!(normalize_content_encoding(Some("identity")), None);
/// assert_eq!(normalize_content_encoding(Some("")), None);
/// assert_eq!(normalize_content_encoding(None), None);
/// ```
pub fn normalize_content_encoding(raw: Option<&str>) -> Option<String> {
    let e = raw?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if e.is_empty() || e == "identity" {
        None
    } else {
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_valid_static_header_names() {
        for name in [
            ACCEPT_MAX_RESPONSE_BYTES_SUPPORT,
            ACCEPT_MAX_RESPONSE_BYTES,
            EXTERNALIZATION_ENABLED,
            UPLOAD_URL_SUPPORT,
            MAX_REQUEST_BYTES,
            MAX_UPLOAD_BYTES,
            MAX_RESPONSE_BYTES,
            MAX_EXTERNALIZED_RESPONSE_BYTES,
            SUPPORTED_ENCODINGS,
            RPC_ERROR,
            VGI_ACCEPT_ENCODING,
            VGI_CONTENT_ENCODING,
            REQUEST_ID,
        ] {
            assert_eq!(http::HeaderName::from_static(name).as_str(), name);
        }
    }

    #[test]
    fn protocol_names_follow_the_grammar() {
        assert!(is_valid_protocol_name("_x.y_z9"));
        assert!(is_valid_protocol_name(&"a".repeat(255)));
        assert!(!is_valid_protocol_name(&"a".repeat(256)));
        for bad in ["", "9a", ".a", "a-b", "a b", "é"] {
            assert!(!is_valid_protocol_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn method_segments_are_single_unreserved_segments() {
        assert!(is_valid_method_segment("echo_v2.x-y~"));
        for bad in ["", ".", "..", "a/b", "a%2f", "a b"] {
            assert!(!is_valid_method_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_refuse_query_fragment_and_spaces() {
        for bad in ["/a#b", "/a b", "?x"] {
            assert_eq!(normalize_prefix(bad), Err(InvalidPrefix(bad.to_string())));
        }
        assert_eq!(normalize_prefix("///").unwrap(), "");
    }
}
