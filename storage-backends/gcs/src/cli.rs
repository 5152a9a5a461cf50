//! The command line form of the configuration (feature `cli`): `SPILLWAY_GCS_*` settings and
//! flags `--gcs-*`, turned into a [`GcsConfig`].

use std::path::PathBuf;

use spillway_storage::{StorageError, StoreSettings};
use url::Url;

use crate::config::config_error;
use crate::{GcsConfig, GcsStore, DEFAULT_OPERATION_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};

/// `SPILLWAY_GCS_*` settings of `spillway serve` and `spillway storage init` (with
/// `SPILLWAY_STORAGE=gcs`; the bucket and key prefix are the shared `SPILLWAY_BUCKET` and
/// `SPILLWAY_KEY_PREFIX`).
#[derive(Debug, Clone, clap::Args)]
pub struct GcsArgs {
    /// Project that owns a bucket created by `spillway storage init --create-bucket` (gcs).
    #[arg(long = "gcs-project", env = "SPILLWAY_GCS_PROJECT")]
    pub project: Option<String>,
    /// Cloud Storage API endpoint, e.g. a private endpoint or an emulator (gcs)
    /// [default: storage.googleapis.com over https, or STORAGE_EMULATOR_HOST].
    #[arg(long = "gcs-endpoint", env = "SPILLWAY_GCS_ENDPOINT")]
    pub endpoint: Option<Url>,
    /// Scheme and host of the signed URLs handed to clients, when they reach Cloud Storage
    /// differently from this server (gcs) [default: the endpoint].
    #[arg(long = "gcs-public-endpoint", env = "SPILLWAY_GCS_PUBLIC_ENDPOINT")]
    pub public_endpoint: Option<Url>,
    /// Service account that signs URLs through the IAM signBlob API; the identity Spillway
    /// runs as needs roles/iam.serviceAccountTokenCreator on it (gcs) [default: the
    /// credentials' own service account].
    #[arg(long = "gcs-signing-account", env = "SPILLWAY_GCS_SIGNING_ACCOUNT")]
    pub signing_account: Option<String>,
    /// Credentials JSON file, e.g. a service-account key (gcs) [default: Application Default
    /// Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud, or the metadata server].
    #[arg(long = "gcs-credentials-file", env = "SPILLWAY_GCS_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Send API calls without credentials (emulators); URLs are still signed with the
    /// credentials file's key (gcs).
    #[arg(long = "gcs-anonymous", env = "SPILLWAY_GCS_ANONYMOUS")]
    pub anonymous: bool,
    /// Emulator address (`host:port` or a URL), as Google's client libraries read it: used as
    /// the endpoint, with anonymous API calls, unless SPILLWAY_GCS_ENDPOINT is set (gcs).
    #[arg(long = "gcs-emulator-host", env = "STORAGE_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
    /// Seconds a request may go without progress (a metadata call, the answer to a read, the
    /// next piece of an upload) before it fails with "storage unavailable" (gcs).
    #[arg(
        long = "gcs-request-timeout",
        env = "SPILLWAY_GCS_REQUEST_TIMEOUT",
        default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs()
    )]
    pub request_timeout: u64,
    /// Seconds the client library keeps retrying one request that fails with a transient
    /// error: connection refused, 429, 5xx (gcs).
    #[arg(
        long = "gcs-operation-timeout",
        env = "SPILLWAY_GCS_OPERATION_TIMEOUT",
        default_value_t = DEFAULT_OPERATION_TIMEOUT.as_secs()
    )]
    pub operation_timeout: u64,
}

impl Default for GcsArgs {
    fn default() -> Self {
        GcsArgs {
            project: None,
            endpoint: None,
            public_endpoint: None,
            signing_account: None,
            credentials_file: None,
            anonymous: false,
            emulator_host: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT.as_secs(),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT.as_secs(),
        }
    }
}

impl GcsConfig {
    /// The configuration `spillway serve` derives from its settings.
    pub fn from_args(args: &GcsArgs, settings: &StoreSettings) -> Result<Self, StorageError> {
        let bucket = settings
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| config_error("SPILLWAY_BUCKET is required for the gcs store"))?;
        let mut config = GcsConfig::new(bucket);
        config.key_prefix = settings.key_prefix.clone();
        config.max_object_bytes = settings.max_object_bytes;
        config.project = args.project.clone().filter(|p| !p.is_empty());
        config.public_endpoint = args.public_endpoint.clone();
        config.credentials_file = args.credentials_file.clone();
        config.signing_account = args.signing_account.clone().filter(|a| !a.is_empty());
        config.anonymous = args.anonymous;
        config.request_timeout = std::time::Duration::from_secs(args.request_timeout);
        config.operation_timeout = std::time::Duration::from_secs(args.operation_timeout);
        match (&args.endpoint, args.emulator_host.as_deref()) {
            (Some(endpoint), _) => config.endpoint = Some(endpoint.clone()),
            (None, Some(host)) if !host.is_empty() => {
                config.endpoint = Some(emulator_endpoint(host)?);
                config.anonymous = true;
            }
            _ => {}
        }
        Ok(config)
    }
}

/// `STORAGE_EMULATOR_HOST` is `host:port` for most Google libraries and a URL for some.
fn emulator_endpoint(host: &str) -> Result<Url, StorageError> {
    let raw = if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    Url::parse(&raw).map_err(|e| config_error(format!("STORAGE_EMULATOR_HOST {host:?}: {e}")))
}

impl GcsStore {
    /// Connects to the store described by `args` and `settings` (see [`GcsConfig::from_args`]).
    pub async fn connect(args: &GcsArgs, settings: &StoreSettings) -> Result<Self, StorageError> {
        Self::new(GcsConfig::from_args(args, settings)?).await
    }
}
