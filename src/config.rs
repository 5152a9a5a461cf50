//! Settings for `spillway serve`: environment variables (the deployment contract), with
//! command-line flags overriding them. Every setting is listed in the README.
//!
//! The flag structs ([`ServeArgs`], [`StorageArgs`]) need the `cli` feature; the kinds and
//! the retention sweep are library API.

use std::sync::Arc;
use std::time::Duration;

use spillway_storage_local::LocalStore;

#[cfg(feature = "cli")]
use {
    crate::error::{Error, Result},
    crate::externalize::{Compression, ExternalizeConfig},
    crate::server::{Server, ServerConfig},
    clap::Args,
    spillway_storage::{redact_url, Storage, StoreSettings},
    spillway_storage_gcs::{GcsArgs, GcsStore},
    spillway_storage_local::LocalStoreConfig,
    spillway_storage_s3::{S3Args, S3Store},
    std::fmt,
    std::net::SocketAddr,
    std::path::PathBuf,
    url::Url,
};

#[cfg(feature = "cli")]
mod limits;
#[cfg(feature = "cli")]
mod security;
#[cfg(feature = "cli")]
pub use limits::{LimitsArgs, MemoryLimit};
#[cfg(feature = "cli")]
pub use security::{AuthMode, SecurityArgs};

/// Where the local store's objects are served, under the server's prefix.
pub const LOCAL_STORE_PATH: &str = "/__storage__";

/// Which object store externalized payloads go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum StorageKind {
    /// The embedded store: a directory, served by this server over signed URLs.
    Local,
    /// Amazon S3 and S3-compatible stores.
    S3,
    /// Google Cloud Storage.
    Gcs,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which store, and the settings of each kind (shared by `serve` and `storage init`). It holds
/// no secret: cloud credentials come from the provider's own chain or a key file's path.
#[cfg(feature = "cli")]
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Object store for externalized payloads.
    #[arg(long, env = "SPILLWAY_STORAGE", value_enum, default_value = "local")]
    pub storage: StorageKind,
    /// Bucket (s3, gcs).
    #[arg(long, env = "SPILLWAY_BUCKET")]
    pub bucket: Option<String>,
    /// Prefix of every object key, e.g. `spillway/`.
    #[arg(long, env = "SPILLWAY_KEY_PREFIX", default_value = "spillway/")]
    pub key_prefix: String,
    /// Largest object accepted through an upload URL.
    #[arg(long, env = "SPILLWAY_MAX_UPLOAD_BYTES", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Directory of the local store [default: <temp dir>/spillway-objects].
    #[arg(long, env = "SPILLWAY_LOCAL_DIR")]
    pub local_dir: Option<PathBuf>,
    /// Local-store objects older than this many seconds are deleted (0: keep forever).
    #[arg(long, env = "SPILLWAY_LOCAL_RETENTION", default_value_t = 86400)]
    pub local_retention: u64,
    /// S3 settings.
    #[command(flatten)]
    pub s3: S3Args,
    /// GCS settings.
    #[command(flatten)]
    pub gcs: GcsArgs,
}

#[cfg(feature = "cli")]
impl StorageArgs {
    /// The settings every backend shares.
    pub fn settings(&self) -> StoreSettings {
        StoreSettings {
            bucket: self.bucket.clone(),
            key_prefix: self.key_prefix.clone(),
            max_object_bytes: self.max_upload_bytes,
        }
    }

    /// Connects to a cloud store (S3, GCS). The local store is built by
    /// [`ServeArgs::build_server`], which knows the URLs it is served under.
    pub async fn connect_cloud(&self) -> Result<Arc<dyn Storage>> {
        let settings = self.settings();
        Ok(match self.storage {
            StorageKind::S3 => Arc::new(S3Store::connect(&self.s3, &settings).await?),
            StorageKind::Gcs => Arc::new(GcsStore::connect(&self.gcs, &settings).await?),
            StorageKind::Local => {
                return Err(Error::Config(
                    "the local store is built by the server it is served from".into(),
                ))
            }
        })
    }
}

/// `spillway serve` settings. Its `Debug` hides the signing secret.
#[cfg(feature = "cli")]
#[derive(Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SPILLWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A separate address for `/livez`, `/readyz` and `/metrics` (they are always on the main
    /// address too).
    #[arg(long, env = "SPILLWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Seconds in-flight calls get to finish after SIGTERM before the process exits.
    #[arg(long, env = "SPILLWAY_SHUTDOWN_GRACE", default_value_t = 25)]
    pub shutdown_grace: u64,
    /// Longest pause, in seconds, between two steps of a stream before its tokens expire.
    #[arg(long, env = "SPILLWAY_STREAM_TOKEN_TTL", default_value_t = 3600)]
    pub stream_token_ttl: u64,
    /// Mount prefix of every route, e.g. `/vgi` (empty: root).
    #[arg(long, env = "SPILLWAY_PREFIX", default_value = "")]
    pub prefix: String,
    /// Where externalized payloads go.
    #[command(flatten)]
    pub store: StorageArgs,
    /// Base URL clients use to reach this server (and the local store's objects)
    /// [default: http://<listen>, https://<listen> with SPILLWAY_TLS_CERT].
    #[arg(long, env = "SPILLWAY_PUBLIC_URL")]
    pub public_url: Option<Url>,
    /// Results whose buffers hold at least this many bytes are externalized.
    #[arg(long, env = "SPILLWAY_THRESHOLD_BYTES", default_value_t = 1024 * 1024)]
    pub threshold_bytes: u64,
    /// Object compression: `zstd`, `zstd:LEVEL` (1-22) or `none`.
    #[arg(long, env = "SPILLWAY_COMPRESSION", default_value = "zstd")]
    pub compression: Compression,
    /// Lifetime in seconds of the presigned download URL in each pointer.
    #[arg(long, env = "SPILLWAY_PRESIGN_TTL", default_value_t = 3600)]
    pub presign_ttl: u64,
    /// Largest request body, raw or decoded (413 above; larger requests use upload URLs).
    #[arg(long, env = "SPILLWAY_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: u64,
    /// Largest inline response body (unset: only the client's budget applies).
    #[arg(long, env = "SPILLWAY_MAX_RESPONSE_BYTES")]
    pub max_response_bytes: Option<u64>,
    /// Largest externalized payload (uncompressed IPC bytes) of one result.
    #[arg(
        long,
        env = "SPILLWAY_MAX_EXTERNALIZED_RESPONSE_BYTES",
        default_value_t = 8 * 1024 * 1024 * 1024
    )]
    pub max_externalized_response_bytes: u64,
    /// Lifetime in seconds of vended upload/download URL pairs.
    #[arg(long, env = "SPILLWAY_UPLOAD_URL_TTL", default_value_t = 3600)]
    pub upload_url_ttl: u64,
    /// Secret (at least 32 bytes) sealing stream state tokens and signing local-store URLs;
    /// share it between replicas [default: random per process].
    #[arg(long, env = "SPILLWAY_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Longest a method may run, in seconds.
    #[arg(long, env = "SPILLWAY_METHOD_TIMEOUT", default_value_t = 600)]
    pub method_timeout: u64,
    /// Largest `blob` the demo protocol generates.
    #[arg(long, env = "SPILLWAY_DEMO_MAX_BLOB_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub demo_max_blob_bytes: u64,
    /// Log format.
    #[arg(long, env = "SPILLWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// This process's id, in every log line, the access log, error metadata and `/health`
    /// (1-253 characters of `A-Z a-z 0-9 . _ : -`, e.g. the pod name) [default: random].
    #[arg(
        long,
        env = "SPILLWAY_SERVER_ID",
        default_value_t = crate::server::random_server_id(),
        hide_default_value = true
    )]
    pub server_id: String,
    /// Write one `vgi_rpc.access` JSON record per call and per stream step to stderr
    /// (`on`/`off`).
    #[arg(
        long,
        env = "SPILLWAY_ACCESS_LOG",
        default_value = "on",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub access_log: bool,
    /// Serve `vgi_rpc.Reflection.v1` (`vgi-rpc describe`, capability listing); behind the
    /// same authentication and authorization as every protocol.
    #[arg(long, env = "SPILLWAY_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
    /// Authentication, authorization, TLS, CORS.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Memory budget, admission, connection bounds.
    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// Shown in place of a secret.
#[cfg(feature = "cli")]
const REDACTED: &str = "<redacted>";

// By hand, so the signing secret never reaches a log line or a panic message; destructured,
// so a new field cannot be added without deciding how it is shown.
#[cfg(feature = "cli")]
impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ServeArgs {
            listen,
            admin_listen,
            shutdown_grace,
            stream_token_ttl,
            prefix,
            store,
            public_url,
            threshold_bytes,
            compression,
            presign_ttl,
            max_request_bytes,
            max_response_bytes,
            max_externalized_response_bytes,
            upload_url_ttl,
            signing_secret,
            method_timeout,
            demo_max_blob_bytes,
            log_format,
            server_id,
            access_log,
            reflection,
            security,
            limits,
        } = self;
        f.debug_struct("ServeArgs")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("shutdown_grace", shutdown_grace)
            .field("stream_token_ttl", stream_token_ttl)
            .field("prefix", prefix)
            .field("store", store)
            // Without user info and query: either may carry a credential.
            .field(
                "public_url",
                &public_url.as_ref().map(|u| redact_url(u.as_str())),
            )
            .field("threshold_bytes", threshold_bytes)
            .field("compression", compression)
            .field("presign_ttl", presign_ttl)
            .field("max_request_bytes", max_request_bytes)
            .field("max_response_bytes", max_response_bytes)
            .field(
                "max_externalized_response_bytes",
                max_externalized_response_bytes,
            )
            .field("upload_url_ttl", upload_url_ttl)
            .field("signing_secret", &signing_secret.as_ref().map(|_| REDACTED))
            .field("method_timeout", method_timeout)
            .field("demo_max_blob_bytes", demo_max_blob_bytes)
            .field("log_format", log_format)
            .field("server_id", server_id)
            .field("access_log", access_log)
            .field("reflection", reflection)
            .field("security", security)
            .field("limits", limits)
            .finish()
    }
}

#[cfg(feature = "cli")]
impl ServeArgs {
    /// The public base URL (configured, or derived from the listen address).
    pub fn public_url(&self) -> Result<Url> {
        let url = match &self.public_url {
            Some(u) => u.clone(),
            None => {
                let host = if self.listen.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    match self.listen.ip() {
                        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                        ip => ip.to_string(),
                    }
                };
                // The listener speaks TLS only when it has a certificate.
                let scheme = if self.security.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                Url::parse(&format!("{scheme}://{host}:{}/", self.listen.port()))
                    .map_err(|e| Error::Config(format!("public url: {e}")))?
            }
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::Config(format!(
                "SPILLWAY_PUBLIC_URL must be an http(s) url with a host, got {url}"
            )));
        }
        Ok(url)
    }

    fn signing_secret(&self) -> Result<Vec<u8>> {
        match &self.signing_secret {
            Some(s) if s.len() >= 32 => Ok(s.as_bytes().to_vec()),
            Some(_) => Err(Error::Config(
                "SPILLWAY_SIGNING_SECRET must be at least 32 bytes".into(),
            )),
            None => {
                let mut secret = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                Ok(secret)
            }
        }
    }

    /// The server settings these arguments describe.
    pub fn server_config(&self) -> Result<ServerConfig> {
        let signing_secret = self.signing_secret()?;
        let previous_signing_secrets: Vec<Vec<u8>> =
            self.security.previous_secret()?.into_iter().collect();
        if self.threshold_bytes == 0 {
            return Err(Error::Config(
                "SPILLWAY_THRESHOLD_BYTES must be at least 1".into(),
            ));
        }
        if self.max_request_bytes < 4096 {
            return Err(Error::Config(
                "SPILLWAY_MAX_REQUEST_BYTES must be at least 4096 (pointer and token requests need room)".into(),
            ));
        }
        if !crate::server::is_valid_server_id(&self.server_id) {
            return Err(Error::Config(format!(
                "SPILLWAY_SERVER_ID must be 1 to {} characters of A-Z a-z 0-9 . _ : -, got {:?}",
                crate::server::MAX_SERVER_ID_LEN,
                self.server_id
            )));
        }
        Ok(ServerConfig {
            server_id: self.server_id.clone(),
            access_log: self.access_log,
            prefix: crate::wire::http::normalize_prefix(&self.prefix)
                .map_err(|e| Error::Config(format!("SPILLWAY_PREFIX: {e}")))?,
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            max_upload_bytes: self.store.max_upload_bytes,
            upload_url_ttl: Duration::from_secs(self.upload_url_ttl.max(1)),
            method_timeout: Duration::from_secs(self.method_timeout.max(1)),
            signing_secret,
            previous_signing_secrets,
            stream_token_ttl: Duration::from_secs(self.stream_token_ttl.max(1)),
            externalize: ExternalizeConfig {
                threshold_bytes: self.threshold_bytes,
                compression: self.compression,
                presign_ttl: Duration::from_secs(self.presign_ttl.max(1)),
                max_externalized_bytes: Some(self.max_externalized_response_bytes),
                ..ExternalizeConfig::default()
            },
            cors_origins: self.security.cors()?,
            admission: {
                let (budget, source) = self.limits.memory_budget()?;
                tracing::info!(memory_budget_bytes = budget, source = %source, "memory budget");
                self.limits.admission(budget)
            },
            ..ServerConfig::default()
        })
    }

    /// Builds the server (demo protocol, storage, routes). Returns the local store too, when
    /// that is the storage, so the caller can run its retention sweep.
    pub async fn build_server(&self) -> Result<(Server, Option<Arc<LocalStore>>)> {
        let config = self.server_config()?;
        let secret = config.signing_secret.clone();
        let previous_secrets = config.previous_signing_secrets.clone();
        let prefix = config.prefix.clone();
        let demo = crate::demo::protocol_with_limit(self.demo_max_blob_bytes)?;
        let mut server = Server::new(config)
            .with_protocol(demo)
            .with_reflection(self.reflection);
        let public_url = self.public_url()?;
        if let Some(authenticator) = self.security.authenticator(&public_url, &prefix).await? {
            server = server.with_authenticator(authenticator);
        }
        if let Some(metadata) = self
            .security
            .oauth_resource_metadata(&public_url, &prefix)?
        {
            server = server.with_oauth_resource_metadata(metadata);
        }
        if let Some(policy) = self.security.authorization()? {
            server = server.with_authorization(policy);
        }
        match self.store.storage {
            StorageKind::Local => {
                let root = self
                    .store
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("spillway-objects"));
                let mut public_base = self.public_url()?;
                let base_path = format!(
                    "{}{prefix}{LOCAL_STORE_PATH}/",
                    public_base.path().trim_end_matches('/')
                );
                public_base.set_path(&base_path);
                public_base.set_query(None);
                let store = Arc::new(LocalStore::new(LocalStoreConfig {
                    root,
                    key_prefix: self.store.key_prefix.clone(),
                    public_base,
                    secret,
                    previous_secrets,
                    max_object_bytes: self.store.max_upload_bytes,
                })?);
                let routes = store.clone().router();
                let storage: Arc<dyn Storage> = store.clone();
                Ok((
                    server
                        .with_storage(storage)
                        .with_storage_routes(LOCAL_STORE_PATH, routes),
                    Some(store),
                ))
            }
            StorageKind::S3 => {
                let s3 = S3Store::connect(&self.store.s3, &self.store.settings()).await?;
                for (setting, ttl) in [
                    ("SPILLWAY_PRESIGN_TTL", self.presign_ttl),
                    ("SPILLWAY_UPLOAD_URL_TTL", self.upload_url_ttl),
                ] {
                    let ttl = Duration::from_secs(ttl.max(1));
                    // S3 refuses presigned URLs that live longer than 7 days.
                    if ttl > spillway_storage_s3::MAX_PRESIGN_TTL {
                        return Err(Error::Config(format!(
                            "{setting} must be at most 604800 seconds (7 days) with SPILLWAY_STORAGE=s3"
                        )));
                    }
                    if let Some(warning) = s3.presign_ttl_warning(ttl) {
                        tracing::warn!(setting, "{warning}");
                    }
                }
                Ok((server.with_storage(Arc::new(s3)), None))
            }
            StorageKind::Gcs => {
                let storage = self.store.connect_cloud().await?;
                Ok((server.with_storage(storage), None))
            }
        }
    }
}

/// Runs the local store's retention sweep every few minutes.
pub fn spawn_retention_sweep(store: Arc<LocalStore>, retention: Duration) {
    if retention.is_zero() {
        return;
    }
    let period = (retention / 4).clamp(Duration::from_secs(10), Duration::from_secs(600));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            match store.sweep_older_than(retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "local store retention sweep"),
                Err(e) => tracing::warn!(error = %e, "local store retention sweep failed"),
            }
        }
    });
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    const SECRET: &str = "Sup3rSecretSigningKey-0123456789abcdef";

    fn serve_cli(extra: &[&str]) -> Cli {
        let args = [
            "spillway",
            "serve",
            "--bucket",
            "visible-bucket",
            "--prefix",
            "/vgi",
        ];
        match Cli::try_parse_from(args.iter().chain(extra)) {
            Ok(cli) => cli,
            Err(e) => panic!("serve arguments: {e}"),
        }
    }

    #[test]
    fn a_prefix_that_is_not_a_path_is_a_config_error() {
        let mut cli = serve_cli(&[]);
        let Command::Serve(args) = &mut cli.command else {
            panic!("not a serve command");
        };
        args.prefix = "/vgi?x=1".into();
        let err = args
            .server_config()
            .expect_err("a query in the prefix is refused");
        assert!(err.to_string().contains("SPILLWAY_PREFIX"), "{err}");
        args.prefix = "vgi/".into();
        assert_eq!(args.server_config().unwrap().prefix, "/vgi");
    }

    /// Every rendering a log line or a panic message could use.
    fn renderings(cli: &Cli) -> Vec<String> {
        let Command::Serve(args) = &cli.command else {
            panic!("not a serve command: {cli:?}");
        };
        vec![
            format!("{args:?}"),
            format!("{args:#?}"),
            format!("{cli:?}"),
            format!("{cli:#?}"),
        ]
    }

    #[test]
    fn serve_args_debug_hides_the_signing_secret() {
        let cli = serve_cli(&["--signing-secret", SECRET, "--threshold-bytes", "4242"]);
        for text in renderings(&cli) {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("Sup3rSecret"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            // The rest stays useful.
            assert!(text.contains("visible-bucket"), "{text}");
            assert!(text.contains("/vgi"), "{text}");
            assert!(text.contains("4242"), "{text}");
            assert!(text.contains("listen"), "{text}");
        }
    }

    #[test]
    fn serve_args_debug_hides_credentials_in_the_public_url() {
        let cli = serve_cli(&[
            "--public-url",
            "https://alice:Pa55word@spillway.example.com/base?token=t0ken",
        ]);
        for text in renderings(&cli) {
            assert!(!text.contains("Pa55word"), "{text}");
            assert!(!text.contains("alice"), "{text}");
            assert!(!text.contains("t0ken"), "{text}");
            assert!(text.contains("https://spillway.example.com/base"), "{text}");
        }
    }

    #[test]
    fn the_previous_secret_reaches_the_server_config_and_never_its_debug() {
        const PREVIOUS: &str = "Old5ecretSigningKey-0123456789abcdef-xyz";
        let cli = serve_cli(&[
            "--signing-secret",
            SECRET,
            "--signing-secret-previous",
            PREVIOUS,
        ]);
        let Command::Serve(args) = &cli.command else {
            panic!("not a serve command");
        };
        let config = args.server_config().unwrap();
        assert_eq!(config.signing_secret, SECRET.as_bytes());
        assert_eq!(
            config.previous_signing_secrets,
            vec![PREVIOUS.as_bytes().to_vec()]
        );
        let mut texts = renderings(&cli);
        texts.push(format!("{config:?}"));
        texts.push(format!("{config:#?}"));
        for text in texts {
            assert!(!text.contains("Old5ecret"), "{text}");
            assert!(!text.contains("Sup3rSecret"), "{text}");
        }
        // Checked like the current secret.
        let short = serve_cli(&["--signing-secret-previous", "short"]);
        let Command::Serve(args) = &short.command else {
            panic!("not a serve command");
        };
        let err = args.server_config().expect_err("a short previous secret");
        assert!(
            err.to_string().contains("SPILLWAY_SIGNING_SECRET_PREVIOUS"),
            "{err}"
        );
        assert!(!err.to_string().contains("short"), "{err}");
        // Without one, nothing but the current secret is accepted.
        let Command::Serve(args) = &serve_cli(&[]).command else {
            panic!("not a serve command");
        };
        assert!(args
            .server_config()
            .unwrap()
            .previous_signing_secrets
            .is_empty());
    }

    #[test]
    fn serve_args_debug_says_when_no_secret_is_set() {
        let Command::Serve(mut args) = serve_cli(&[]).command else {
            panic!("not a serve command");
        };
        args.signing_secret = None;
        let text = format!("{args:?}");
        assert!(text.contains("signing_secret: None"), "{text}");
        assert!(!text.contains("<redacted>"), "{text}");
    }
}
