//! The command line: the flags the conformance suite's runner (`tests/conformance/conftest.py`)
//! passes, with the meaning the Python reference worker (`serve_ref.py`) gives them.

use std::time::Duration;

use clap::Parser;
use spillway::externalize::{Compression, ExternalizeConfig};
use spillway::fetch::{FetchConfig, Fetcher};
use spillway::server::ServerConfig;
use spillway::url_policy::UrlPolicy;
use url::Url;

use crate::error::{Error, Result};

/// The Python reference's default `max_fetch_bytes` (256 MiB).
pub const DEFAULT_MAX_FETCH_BYTES: u64 = 256 * 1024 * 1024;
/// The Python reference's decoded-size default: 16 times the fetch cap.
pub const DECODED_PER_FETCHED: u64 = 16;
/// `VGI-Max-Upload-Bytes` advertised when upload URLs are vended (as the reference worker).
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Request cap when there is no storage and no `--max-request-bytes`. The reference sets none
/// at all; Spillway always has one, so this one is generous.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 256 * 1024 * 1024;
/// Largest object the worker writes to or reads from the fake storage.
pub const MAX_OBJECT_BYTES: u64 = 1024 * 1024 * 1024;

/// Object compression, as the reference's `--compression` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectCompression {
    /// Objects are stored as raw IPC bytes.
    None,
    /// One zstd frame, `Content-Encoding: zstd`.
    Zstd,
    /// One gzip member (accepted for flag compatibility; Spillway's externalizer writes zstd only).
    Gzip,
}

/// vgi-rpc `ConformanceService` on Spillway, for the reference conformance suite.
#[derive(Debug, Clone, Parser)]
#[command(name = "spillway-conformance", version)]
pub struct Flags {
    /// Port to listen on (on 127.0.0.1); 0 picks a free one. `PORT:<n>` is printed once listening.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Mount prefix of every route.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Base URL of vgi-rpc's fake storage service; enables externalization and upload URLs.
    #[arg(long, value_name = "URL")]
    pub fake_storage: Option<String>,
    /// Results whose buffers hold at least this many bytes are externalized.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub externalize_threshold: u64,
    /// Largest request body (413 above). Defaults to the threshold when storage is configured.
    #[arg(long, value_name = "N")]
    pub max_request_bytes: Option<u64>,
    /// Compression of externalized objects.
    #[arg(long, value_enum, default_value_t = ObjectCompression::None)]
    pub compression: ObjectCompression,
    /// Largest request object fetched (stored bytes).
    #[arg(long, value_name = "N")]
    pub max_fetch_bytes: Option<u64>,
    /// Largest request object fetched, after decompression.
    #[arg(long, value_name = "N")]
    pub max_decompressed_fetch_bytes: Option<u64>,
    /// Fetch request pointers only from host 127.0.0.1 (a redirect to `localhost` is refused).
    #[arg(long)]
    pub reject_localhost_redirects: bool,
    /// Hard cap on one externalized result (uncompressed IPC bytes).
    #[arg(long, value_name = "N")]
    pub max_externalized_response_bytes: Option<u64>,
    /// Largest inline response body.
    #[arg(long, value_name = "N")]
    pub max_response_bytes: Option<u64>,
    /// Response compression level of the reference worker, or `none` to disable response
    /// compression. Any other value leaves it on (Spillway's server negotiates zstd/gzip at its
    /// own fixed levels).
    #[arg(long, value_name = "LEVEL")]
    pub http_compression_level: Option<String>,
    /// Size of the reference's per-process call-state cache. Accepted for compatibility:
    /// Spillway keeps no such cache (every continuation re-opens the signed call token), so it
    /// always behaves as the reference does with 0.
    #[arg(long, value_name = "N")]
    pub call_state_cache_entries: Option<u64>,
    /// Refuse every RPC request with 401 (health and OPTIONS stay open): the suite's auth
    /// fixtures. The refusal reason is the one `X-Conformance-Auth-Reason` asks for.
    #[arg(long)]
    pub reject_all_auth: bool,
    /// Origins allowed to call from a browser (CORS), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

impl Flags {
    /// The object compression the externalizer and `published_string` use.
    pub fn object_compression(&self) -> Result<Compression> {
        match self.compression {
            ObjectCompression::None => Ok(Compression::None),
            ObjectCompression::Zstd => Ok(Compression::Zstd(Compression::DEFAULT_ZSTD_LEVEL)),
            ObjectCompression::Gzip => Err(Error::Config(
                "--compression gzip is not supported: Spillway stores objects as zstd or raw"
                    .into(),
            )),
        }
    }

    /// The URL policy for request pointers. The rig's storage is plain http on 127.0.0.1; with
    /// `--reject-localhost-redirects` only the fake storage's own origin is allowed.
    pub fn url_policy(&self) -> Result<UrlPolicy> {
        if !self.reject_localhost_redirects {
            return Ok(UrlPolicy::local_testing());
        }
        // The reference allows host 127.0.0.1 on any port. UrlPolicy has no host allow-list, so
        // this trusts exactly the storage's origin (127.0.0.1:<its port>) and refuses the rest.
        let storage = self.fake_storage.as_deref().ok_or_else(|| {
            Error::Config("--reject-localhost-redirects needs --fake-storage".into())
        })?;
        let url = Url::parse(storage)
            .map_err(|e| Error::Config(format!("--fake-storage {storage:?}: {e}")))?;
        // The default policy allows nothing but https to public addresses.
        Ok(UrlPolicy::default().trust_origin_of(&url))
    }

    /// The fetcher that resolves request pointers (the rig's storage is a separate service, so
    /// they are fetched over HTTP rather than read through the storage).
    pub fn fetcher(&self) -> Result<Fetcher> {
        let max_fetch_bytes = self.max_fetch_bytes.unwrap_or(DEFAULT_MAX_FETCH_BYTES);
        let config = FetchConfig {
            max_fetch_bytes,
            max_decompressed_bytes: self
                .max_decompressed_fetch_bytes
                .unwrap_or(max_fetch_bytes.saturating_mul(DECODED_PER_FETCHED)),
            policy: self.url_policy()?,
            ..FetchConfig::default()
        };
        Ok(Fetcher::new(config)?)
    }

    /// The server configuration these flags describe.
    pub fn server_config(&self) -> Result<ServerConfig> {
        let has_storage = self.fake_storage.is_some();
        let max_request_bytes = match (self.max_request_bytes, has_storage) {
            (Some(n), _) => n,
            (None, true) => self.externalize_threshold,
            (None, false) => DEFAULT_MAX_REQUEST_BYTES,
        };
        Ok(ServerConfig {
            prefix: self.prefix.clone(),
            max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            max_upload_bytes: MAX_UPLOAD_BYTES,
            upload_url_ttl: Duration::from_secs(3600),
            externalize: ExternalizeConfig {
                threshold_bytes: self.externalize_threshold,
                compression: self.object_compression()?,
                max_externalized_bytes: self.max_externalized_response_bytes,
                ..ExternalizeConfig::default()
            },
            // Without storage the worker resolves no request pointers at all, as the reference.
            request_pointer_fetcher: has_storage.then(|| self.fetcher()).transpose()?,
            response_compression: self.http_compression_level.as_deref() != Some("none"),
            cors_origins: {
                spillway::server::cors::validate_origins(&self.cors_origins)?;
                self.cors_origins.clone()
            },
            ..ServerConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut argv = vec!["spillway-conformance"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap()
    }

    #[test]
    fn accepts_every_flag_the_runner_passes() {
        let f = flags(&[
            "--fake-storage",
            "http://127.0.0.1:9",
            "--externalize-threshold",
            "1",
            "--max-request-bytes",
            "1048576",
            "--compression",
            "zstd",
            "--max-fetch-bytes",
            "4096",
            "--max-decompressed-fetch-bytes",
            "8192",
            "--reject-localhost-redirects",
            "--max-externalized-response-bytes",
            "65536",
            "--max-response-bytes",
            "8388608",
            "--http-compression-level",
            "none",
            "--call-state-cache-entries",
            "0",
        ]);
        let c = f.server_config().unwrap();
        assert!(
            !c.response_compression,
            "--http-compression-level none turns it off"
        );
        assert_eq!(c.max_request_bytes, 1048576);
        assert_eq!(c.max_response_bytes, Some(8388608));
        assert_eq!(c.externalize.threshold_bytes, 1);
        assert_eq!(c.externalize.max_externalized_bytes, Some(65536));
        assert_eq!(c.externalize.compression, Compression::Zstd(3));
        let fetch = c.request_pointer_fetcher.unwrap();
        assert_eq!(fetch.config().max_fetch_bytes, 4096);
        assert_eq!(fetch.config().max_decompressed_bytes, 8192);
    }

    #[test]
    fn defaults_follow_the_reference_worker() {
        let plain = flags(&[]).server_config().unwrap();
        assert!(plain.response_compression);
        assert_eq!(plain.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert!(plain.request_pointer_fetcher.is_none());
        assert_eq!(plain.externalize.compression, Compression::None);
        let with_storage = flags(&["--fake-storage", "http://127.0.0.1:9"]);
        let c = with_storage.server_config().unwrap();
        // The request cap defaults to the threshold when storage is configured.
        assert_eq!(c.max_request_bytes, 4096);
        let fetch = c.request_pointer_fetcher.unwrap();
        assert_eq!(fetch.config().max_fetch_bytes, DEFAULT_MAX_FETCH_BYTES);
        assert_eq!(
            fetch.config().max_decompressed_bytes,
            16 * DEFAULT_MAX_FETCH_BYTES
        );
        assert!(flags(&["--compression", "gzip"]).server_config().is_err());
        assert!(Flags::try_parse_from(["x", "--compression", "brotli"]).is_err());
    }

    #[test]
    fn url_policy_allows_plain_http_loopback_unless_restricted() {
        let u = |s: &str| Url::parse(s).unwrap();
        let open = flags(&["--fake-storage", "http://127.0.0.1:9"])
            .url_policy()
            .unwrap();
        open.check(&u("http://127.0.0.1:9/download/ab")).unwrap();
        open.check(&u("http://localhost:9/download/ab")).unwrap();
        assert!(open.check(&u("http://169.254.169.254/latest")).is_err());

        let strict = flags(&[
            "--fake-storage",
            "http://127.0.0.1:9",
            "--reject-localhost-redirects",
        ])
        .url_policy()
        .unwrap();
        strict.check(&u("http://127.0.0.1:9/download/ab")).unwrap();
        let e = strict
            .check(&u("http://localhost:9/download/ab"))
            .unwrap_err();
        assert!(e.to_string().contains("URL rejected"), "{e}");
        assert!(strict.check(&u("http://10.0.0.1:9/x")).is_err());
        assert!(flags(&["--reject-localhost-redirects"])
            .url_policy()
            .is_err());
    }
}
