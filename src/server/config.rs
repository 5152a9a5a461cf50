//! The server's settings.

use std::fmt;
use std::time::Duration;

use super::admission::AdmissionConfig;
use crate::externalize::ExternalizeConfig;
use crate::wire::http;

/// Server settings (see the README's configuration table for the environment variables).
#[derive(Clone)]
pub struct ServerConfig {
    /// Mount prefix: `""` (root) or e.g. `/vgi`.
    pub prefix: String,
    /// Largest request body accepted, raw and decoded (413 above it); advertised.
    pub max_request_bytes: u64,
    /// Largest inline response body; `None` = only the client's own budget applies.
    pub max_response_bytes: Option<u64>,
    /// Largest object accepted through an upload URL (advertised, and enforced by the local
    /// store); also the cap on request objects the server resolves.
    pub max_upload_bytes: u64,
    /// Lifetime of vended upload/download URL pairs.
    pub upload_url_ttl: Duration,
    /// Longest a method may run.
    pub method_timeout: Duration,
    /// An id for this process, in `/health`, error metadata (`vgi_rpc.server_id`) and the
    /// access log.
    pub server_id: String,
    /// Write a `vgi_rpc.access` record per call and per stream step to stderr (see the
    /// README's operations section). Off by default in the library; `spillway serve` turns
    /// it on (`SPILLWAY_ACCESS_LOG`).
    pub access_log: bool,
    /// Externalization policy (used when a storage is configured).
    pub externalize: ExternalizeConfig,
    /// How request pointers are resolved. `None` (the default): only URLs of this server's
    /// own storage, read through the storage. `Some(fetcher)`: any URL the fetcher's URL
    /// policy allows, fetched over HTTP (for test rigs such as the vgi-rpc conformance
    /// suite, whose storage is a separate service).
    pub request_pointer_fetcher: Option<crate::fetch::Fetcher>,
    /// Secret sealing stream state tokens (at least 32 bytes); replicas behind one load
    /// balancer must share it. Defaults to a random per-process secret.
    pub signing_secret: Vec<u8>,
    /// Secrets used before `signing_secret`: tokens sealed with one of them are still
    /// accepted, new ones are sealed with `signing_secret` only, so a rotation drops no
    /// stream. Keep an old secret here as long as a token sealed with it may live (a stream's
    /// lifetime: a day, or `stream_token_ttl` if longer), then remove it.
    pub previous_signing_secrets: Vec<Vec<u8>>,
    /// Longest pause allowed between two turns of a stream.
    pub stream_token_ttl: Duration,
    /// Compress RPC responses (zstd or gzip, as negotiated). When off, the server advertises an
    /// empty `VGI-Supported-Encodings` and never compresses; compressed requests are still
    /// decoded.
    pub response_compression: bool,
    /// Origins allowed to call from a browser (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The memory budget, call slots and admission queue.
    pub admission: AdmissionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prefix: String::new(),
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: None,
            max_upload_bytes: 4 * 1024 * 1024 * 1024,
            upload_url_ttl: Duration::from_secs(3600),
            method_timeout: Duration::from_secs(600),
            server_id: random_server_id(),
            access_log: false,
            externalize: ExternalizeConfig::default(),
            request_pointer_fetcher: None,
            signing_secret: {
                let mut secret = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                secret
            },
            previous_signing_secrets: Vec::new(),
            stream_token_ttl: Duration::from_secs(3600),
            response_compression: true,
            cors_origins: Vec::new(),
            admission: AdmissionConfig::default(),
        }
    }
}

// By hand: the derived Debug would print the signing secret, and configs get logged.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("prefix", &self.prefix)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("upload_url_ttl", &self.upload_url_ttl)
            .field("method_timeout", &self.method_timeout)
            .field("server_id", &self.server_id)
            .field("access_log", &self.access_log)
            .field("externalize", &self.externalize)
            .field("request_pointer_fetcher", &self.request_pointer_fetcher)
            .field("signing_secret", &"<redacted>")
            .field(
                "previous_signing_secrets",
                &vec!["<redacted>"; self.previous_signing_secrets.len()],
            )
            .field("stream_token_ttl", &self.stream_token_ttl)
            .field("response_compression", &self.response_compression)
            .field("cors_origins", &self.cors_origins)
            .field("admission", &self.admission)
            .finish()
    }
}

/// A random server id: 12 hex digits.
pub fn random_server_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The longest server id accepted (a Kubernetes pod name is at most 253 characters).
pub const MAX_SERVER_ID_LEN: usize = 253;

/// Whether `id` can be a server id: 1 to [`MAX_SERVER_ID_LEN`] characters of
/// `A-Z a-z 0-9 . _ : -` (a pod name, a host name), so it needs no escaping in a header, a
/// log line or metadata.
pub fn is_valid_server_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SERVER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Normalizes a mount prefix leniently: `""`, or `/a/b` without a trailing slash, never
/// failing. The router applies the strict [`http::normalize_prefix`] (which also refuses `?`,
/// `#` and whitespace) when it is built: see [`Server::try_into_routers`](super::Server::try_into_routers).
pub fn normalize_prefix(prefix: &str) -> String {
    http::normalize_prefix(prefix).unwrap_or_else(|_| {
        // Refused prefixes are kept as they are (an unroutable mount), as before.
        format!("/{}", prefix.trim().trim_matches('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_signing_secret() {
        let secret = b"TOP-SECRET-signing-key-0123456789abcdef";
        let config = ServerConfig {
            signing_secret: secret.to_vec(),
            previous_signing_secrets: vec![b"OLD-SECRET-signing-key-0123456789abcdef".to_vec()],
            ..ServerConfig::default()
        };
        let text = String::from_utf8_lossy(secret).into_owned();
        // Also as the derived Debug would print the bytes.
        let bytes = format!("{:?}", secret.to_vec());
        for shown in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!shown.contains(&text), "{shown}");
            assert!(!shown.contains("OLD-SECRET"), "{shown}");
            assert!(!shown.contains("79, 76, 68"), "{shown}");
            assert!(!shown.contains(&bytes), "{shown}");
            assert!(!shown.contains("84, 79, 80"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(shown.contains("max_request_bytes"), "{shown}");
        }
    }

    #[test]
    fn lenient_prefix_matches_the_strict_one_where_that_accepts() {
        for (raw, want) in [("", ""), ("/", ""), ("vgi/", "/vgi"), (" /a/b// ", "/a/b")] {
            assert_eq!(normalize_prefix(raw), want);
            assert_eq!(http::normalize_prefix(raw).unwrap(), want);
        }
        assert_eq!(normalize_prefix("/a?b/"), "/a?b");
    }
}
