//! The command line form of the configuration (feature `cli`): `SPILLWAY_S3_*` settings and
//! flags `--s3-*`, turned into an [`S3Config`].

use aws_credential_types::provider::ProvideCredentials;
use spillway_storage::{StorageError, StoreSettings};
use url::Url;

use crate::config::config_error;
use crate::{
    S3Config, S3Store, SseMode, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_OPERATION_TIMEOUT, DEFAULT_PART_SIZE, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_UPLOAD_CONCURRENCY,
};

/// `SPILLWAY_S3_*` settings (flags `--s3-*`). The bucket and key prefix are the shared
/// `SPILLWAY_BUCKET` and `SPILLWAY_KEY_PREFIX`; the URL lifetimes are the server's
/// `SPILLWAY_PRESIGN_TTL` and `SPILLWAY_UPLOAD_URL_TTL`.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Endpoint the server uses to reach the store, e.g. `http://minio:9000`
    /// [default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's endpoint for the region].
    #[arg(long = "s3-endpoint", env = "SPILLWAY_S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,
    /// Endpoint presigned URLs are made for, when clients reach the store at another address
    /// than the server [default: the endpoint the server uses].
    #[arg(long = "s3-public-endpoint", env = "SPILLWAY_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<Url>,
    /// Region [default: AWS_REGION, the profile's region, instance metadata; us-east-1 when an
    /// endpoint is set and no region is found].
    #[arg(long = "s3-region", env = "SPILLWAY_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (`{endpoint}/{bucket}/{key}`), as MinIO and LocalStack need.
    #[arg(long = "s3-path-style", env = "SPILLWAY_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Server-side encryption: `none` (the bucket's default), `aes256` (SSE-S3) or `aws:kms`.
    #[arg(
        long = "s3-sse",
        env = "SPILLWAY_S3_SSE",
        value_enum,
        default_value = "none"
    )]
    pub s3_sse: SseMode,
    /// KMS key id or ARN for `aws:kms` [default: the account's aws/s3 key].
    #[arg(long = "s3-sse-kms-key-id", env = "SPILLWAY_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,
    /// Storage class of stored objects, e.g. `STANDARD`, `INTELLIGENT_TIERING`
    /// [default: the bucket's].
    #[arg(long = "s3-storage-class", env = "SPILLWAY_S3_STORAGE_CLASS")]
    pub s3_storage_class: Option<String>,
    /// Objects larger than this many bytes are written with a multipart upload.
    #[arg(long = "s3-multipart-threshold", env = "SPILLWAY_S3_MULTIPART_THRESHOLD", default_value_t = DEFAULT_MULTIPART_THRESHOLD)]
    pub s3_multipart_threshold: u64,
    /// Bytes per multipart part (5 MiB to 5 GiB; raised when the largest object would need
    /// more than 10000 parts).
    #[arg(long = "s3-part-size", env = "SPILLWAY_S3_PART_SIZE", default_value_t = DEFAULT_PART_SIZE)]
    pub s3_part_size: u64,
    /// Parts of one object uploaded at once (1 to 64).
    #[arg(long = "s3-upload-concurrency", env = "SPILLWAY_S3_UPLOAD_CONCURRENCY", default_value_t = DEFAULT_UPLOAD_CONCURRENCY)]
    pub s3_upload_concurrency: usize,
    /// Seconds allowed to open a connection to the store.
    #[arg(
        long = "s3-connect-timeout",
        env = "SPILLWAY_S3_CONNECT_TIMEOUT",
        default_value_t = DEFAULT_CONNECT_TIMEOUT.as_secs()
    )]
    pub s3_connect_timeout: u64,
    /// Seconds allowed for one attempt of one request (a part upload, a HEAD, ...), its body
    /// sent and its response headers received.
    #[arg(
        long = "s3-request-timeout",
        env = "SPILLWAY_S3_REQUEST_TIMEOUT",
        default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs()
    )]
    pub s3_request_timeout: u64,
    /// Seconds allowed for one request with all its retries: the longest a call waits for a
    /// store that stopped answering before it fails with "storage unavailable".
    #[arg(
        long = "s3-operation-timeout",
        env = "SPILLWAY_S3_OPERATION_TIMEOUT",
        default_value_t = DEFAULT_OPERATION_TIMEOUT.as_secs()
    )]
    pub s3_operation_timeout: u64,
    /// Temporary credentials are replaced this many seconds before they expire, so every
    /// presigned URL stays valid at least this long (or its TTL, if shorter).
    #[arg(
        long = "s3-credentials-refresh-margin",
        env = "SPILLWAY_S3_CREDENTIALS_REFRESH_MARGIN",
        default_value_t = 600
    )]
    pub s3_credentials_refresh_margin: u64,
}

impl Default for S3Args {
    fn default() -> Self {
        S3Args {
            s3_endpoint: None,
            s3_public_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_sse: SseMode::None,
            s3_sse_kms_key_id: None,
            s3_storage_class: None,
            s3_multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            s3_part_size: DEFAULT_PART_SIZE,
            s3_upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            s3_connect_timeout: DEFAULT_CONNECT_TIMEOUT.as_secs(),
            s3_request_timeout: DEFAULT_REQUEST_TIMEOUT.as_secs(),
            s3_operation_timeout: DEFAULT_OPERATION_TIMEOUT.as_secs(),
            s3_credentials_refresh_margin: 600,
        }
    }
}

/// Each [`S3Config`] field (as library errors name it, in backticks) and the setting it comes
/// from on the command line.
const SETTING_NAMES: &[(&str, &str)] = &[
    ("`bucket`", "SPILLWAY_BUCKET"),
    ("`key_prefix`", "SPILLWAY_KEY_PREFIX"),
    ("`max_object_bytes`", "SPILLWAY_MAX_UPLOAD_BYTES"),
    ("`endpoint`", "SPILLWAY_S3_ENDPOINT"),
    ("`public_endpoint`", "SPILLWAY_S3_PUBLIC_ENDPOINT"),
    ("`region`", "SPILLWAY_S3_REGION"),
    ("`sse`", "SPILLWAY_S3_SSE"),
    ("`sse_kms_key_id`", "SPILLWAY_S3_SSE_KMS_KEY_ID"),
    ("`storage_class`", "SPILLWAY_S3_STORAGE_CLASS"),
    ("`multipart_threshold`", "SPILLWAY_S3_MULTIPART_THRESHOLD"),
    ("`part_size`", "SPILLWAY_S3_PART_SIZE"),
    ("`upload_concurrency`", "SPILLWAY_S3_UPLOAD_CONCURRENCY"),
];

/// A configuration error worded for the command line: field names become setting names.
fn with_setting_names(err: StorageError) -> StorageError {
    match err {
        StorageError::Config(mut message) => {
            for (field, setting) in SETTING_NAMES {
                message = message.replace(field, setting);
            }
            StorageError::Config(message)
        }
        other => other,
    }
}

impl S3Config {
    /// The configuration `spillway serve` derives from its settings (`settings.bucket` is
    /// required).
    pub fn from_args(args: &S3Args, settings: &StoreSettings) -> Result<Self, StorageError> {
        let bucket = settings
            .bucket
            .clone()
            .ok_or_else(|| config_error("SPILLWAY_BUCKET is required for the s3 store"))?;
        let mut config = S3Config::new(bucket);
        config.key_prefix = settings.key_prefix.clone();
        config.max_object_bytes = settings.max_object_bytes;
        config.endpoint = args.s3_endpoint.clone();
        config.public_endpoint = args.s3_public_endpoint.clone();
        config.region = args.s3_region.clone();
        config.path_style = args.s3_path_style;
        config.sse = args.s3_sse;
        config.sse_kms_key_id = args.s3_sse_kms_key_id.clone();
        config.storage_class = args.s3_storage_class.clone();
        config.multipart_threshold = args.s3_multipart_threshold;
        config.part_size = args.s3_part_size;
        config.upload_concurrency = args.s3_upload_concurrency;
        config.connect_timeout = std::time::Duration::from_secs(args.s3_connect_timeout);
        config.request_timeout = std::time::Duration::from_secs(args.s3_request_timeout);
        config.operation_timeout = std::time::Duration::from_secs(args.s3_operation_timeout);
        config.credentials_refresh_margin =
            std::time::Duration::from_secs(args.s3_credentials_refresh_margin);
        Ok(config)
    }
}

impl S3Store {
    /// Connects to the store described by `args` and `settings` (see [`S3Config::from_args`]
    /// and [`S3Store::new`]); configuration errors name the settings.
    pub async fn connect(args: &S3Args, settings: &StoreSettings) -> Result<Self, StorageError> {
        let config = S3Config::from_args(args, settings)?;
        S3Store::new(config).await.map_err(with_setting_names)
    }

    /// Like [`S3Store::connect`], with credentials from `credentials` instead of the standard
    /// chain (the region and endpoint still come from `args` and the environment).
    pub async fn connect_with_credentials(
        args: &S3Args,
        settings: &StoreSettings,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, StorageError> {
        let config = S3Config::from_args(args, settings)?;
        S3Store::with_credentials(config, credentials)
            .await
            .map_err(with_setting_names)
    }
}

#[cfg(test)]
mod tests {
    //! The command line layer: flags, defaults, and errors worded with setting names.

    use aws_credential_types::Credentials;
    use spillway_storage::{StorageError, StoreSettings};
    use url::Url;

    use super::*;
    use crate::{S3Store, SseMode, DEFAULT_UPLOAD_CONCURRENCY};

    const INTERNAL: &str = "http://127.0.0.1:9";
    const PUBLIC: &str = "http://127.0.0.2:9000";

    fn settings(bucket: &str) -> StoreSettings {
        StoreSettings {
            bucket: Some(bucket.to_string()),
            key_prefix: "results/".to_string(),
            max_object_bytes: 1 << 30,
        }
    }

    fn args(public: bool) -> S3Args {
        S3Args {
            s3_endpoint: Some(Url::parse(INTERNAL).unwrap()),
            s3_public_endpoint: public.then(|| Url::parse(PUBLIC).unwrap()),
            s3_region: Some("eu-west-1".into()),
            s3_path_style: true,
            s3_connect_timeout: 2,
            ..S3Args::default()
        }
    }

    fn creds(akid: &str) -> Credentials {
        Credentials::new(akid, "not-a-real-secret", None, None, "unit-test")
    }

    #[tokio::test]
    async fn configuration_errors_name_the_settings() {
        let connect = |a: S3Args, s: StoreSettings| async move {
            S3Store::connect_with_credentials(&a, &s, creds("AKID")).await
        };
        let msg = |r: Result<S3Store, StorageError>| match r {
            Err(StorageError::Config(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        let mut s = settings("bucket");
        s.bucket = None;
        assert!(msg(connect(args(false), s).await).contains("SPILLWAY_BUCKET is required"));
        for bad in ["Bucket", "b", "bucket/x", "-bucket", "bucket name"] {
            assert!(msg(connect(args(false), settings(bad)).await).contains("not a valid bucket"));
        }
        let mut s = settings("bucket");
        s.key_prefix = "../x/".into();
        assert!(msg(connect(args(false), s).await).contains("SPILLWAY_KEY_PREFIX"));
        let mut a = args(false);
        a.s3_part_size = 1024 * 1024;
        assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_PART_SIZE"));
        let mut a = args(false);
        a.s3_upload_concurrency = 0;
        assert!(
            msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_UPLOAD_CONCURRENCY")
        );
        let mut a = args(false);
        a.s3_multipart_threshold = 6 * 1024 * 1024 * 1024;
        assert!(
            msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_MULTIPART_THRESHOLD")
        );
        let mut a = args(false);
        a.s3_sse_kms_key_id = Some("alias/x".into());
        assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_SSE=aws:kms"));
        let mut a = args(false);
        a.s3_storage_class = Some("standard ia".into());
        assert!(msg(connect(a, settings("bucket")).await).contains("SPILLWAY_S3_STORAGE_CLASS"));
        let mut a = args(false);
        a.s3_public_endpoint = Some(Url::parse("http://u:p@127.0.0.1:9/?x=1").unwrap());
        let m = msg(connect(a, settings("bucket")).await);
        assert!(
            m.contains("SPILLWAY_S3_PUBLIC_ENDPOINT") && !m.contains("u:p"),
            "{m}"
        );
        let mut a = args(false);
        a.s3_endpoint = Some(Url::parse("ftp://127.0.0.1/").unwrap());
        assert!(msg(connect(a, settings("bucket")).await).contains("http(s)"));
    }

    #[test]
    fn s3_args_parse_from_flags_and_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s3: S3Args,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--s3-endpoint",
            "http://minio:9000",
            "--s3-path-style",
            "--s3-sse",
            "aws:kms",
            "--s3-sse-kms-key-id",
            "alias/spillway",
            "--s3-part-size",
            "16777216",
        ])
        .unwrap();
        assert!(cli.s3.s3_path_style);
        assert_eq!(cli.s3.s3_sse, SseMode::AwsKms);
        assert_eq!(cli.s3.s3_part_size, 16 * 1024 * 1024);
        assert_eq!(cli.s3.s3_upload_concurrency, DEFAULT_UPLOAD_CONCURRENCY);
        let cli = Cli::try_parse_from(["x", "--s3-sse", "sse-s3"]).unwrap();
        assert_eq!(cli.s3.s3_sse, SseMode::Aes256);
        assert!(Cli::try_parse_from(["x", "--s3-sse", "rot13"]).is_err());
    }
}
