//! The `spillway` command line: `serve`, `call`, `describe` and `storage`.

mod call;
mod describe;
mod format;
mod input;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use self::call::{parse_params, parse_params_for, split_target};
pub use self::format::{fetch_summary, format_table, human_bytes};
use crate::client::{
    BearerToken, ClientConfig, ClientIdentity, FileToken, RetryPolicy, MAX_RETRIES,
};
use crate::config::{LogFormat, ServeArgs, StorageArgs, StorageKind};
use crate::error::{Error, Result};
use crate::fetch::CaBundle;
use crate::url_policy::UrlPolicy;
use spillway_storage::InitOptions;

/// Arrow RPC (vgi-rpc over HTTP) that carries results of any size through object storage.
#[derive(Debug, Parser)]
#[command(name = "spillway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the RPC server (with the built-in `spillway.Demo.v1` protocol).
    Serve(Box<ServeArgs>),
    /// Call a method (unary, producer or exchange stream) and print or save its result.
    Call(Box<CallArgs>),
    /// Show the protocols a server hosts and their methods, from its reflection.
    Describe(Box<DescribeArgs>),
    /// Manage the object store.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Live view of replicas from their metrics: calls/s, errors, latency, memory budget.
    Top(Box<crate::top::TopArgs>),
}

/// `spillway storage ...`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Prepare the store: optionally create the bucket, and install a lifecycle rule that
    /// expires objects under the key prefix (and aborts incomplete multipart uploads).
    Init(Box<StorageInitArgs>),
}

/// `spillway storage init` settings.
#[derive(Debug, Clone, Args)]
pub struct StorageInitArgs {
    /// The store.
    #[command(flatten)]
    pub store: StorageArgs,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    pub create_bucket: bool,
    /// Expire objects under the key prefix after this many days (0: no expiry rule).
    #[arg(long, env = "SPILLWAY_EXPIRE_AFTER_DAYS", default_value_t = 1)]
    pub expire_after_days: u32,
    /// Abort incomplete multipart uploads after this many days.
    #[arg(long, default_value_t = 1)]
    pub abort_incomplete_uploads_after_days: u32,
}

/// `spillway call` settings.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// `PROTOCOL.METHOD`, e.g. `spillway.Demo.v1.blob` (the method is after the last dot), or
    /// a bare `METHOD` of the server's primary protocol (needs reflection).
    pub target: String,
    /// Parameters as `name=value`, converted to the type the method declares (from
    /// reflection; without it inferred: int64, float64, bool, else utf8), or
    /// `name:TYPE=value` with TYPE one of int64, float64, bool, utf8, binary; `@PATH` as a
    /// utf8 or binary value reads the file; list, struct and map values are JSON.
    pub params: Vec<String>,
    /// `vgi_rpc.protocol_version` to send, for protocols that declare a version (default:
    /// the version reflection reports).
    #[arg(long, env = "SPILLWAY_PROTOCOL_VERSION")]
    pub protocol_version: Option<String>,
    /// Output format: `table` (default), `json` (one JSON object per row, a stream header as
    /// `{"__header__": {...}}`) or `arrow` (an Arrow IPC stream; the default with
    /// `--output`).
    #[arg(long, short, value_enum)]
    pub format: Option<OutputFormat>,
    /// Write the result to this file instead of stdout; stream batches are appended as they
    /// arrive.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The method's type, when the server has no reflection (or to skip the lookup).
    #[arg(long, value_enum)]
    pub kind: Option<CallKind>,
    /// Exchange input: an Arrow IPC stream or file, or JSON lines (one row per line, one
    /// exchange step per batch or line); `-` reads stdin.
    #[arg(long, short, conflicts_with = "send")]
    pub input: Option<PathBuf>,
    /// One exchange input row as comma-separated `name[:TYPE]=value` pairs; repeat for one
    /// step per row.
    #[arg(long)]
    pub send: Vec<String>,
    /// Connection, security, retry and fetch settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `spillway describe` settings.
#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Describe only this protocol (default: every hosted protocol).
    pub protocol: Option<String>,
    /// Output format: `table` (default) or `json` (stable keys, for programs).
    #[arg(long, short, value_enum, default_value_t = DescribeFormat::Table)]
    pub format: DescribeFormat,
    /// Connection, security, retry and fetch settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `spillway call --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text tables, one per batch.
    Table,
    /// JSON lines, one object per row.
    Json,
    /// An Arrow IPC stream.
    Arrow,
}

/// `spillway describe --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DescribeFormat {
    /// Text for people.
    Table,
    /// One JSON document.
    Json,
}

/// `spillway call --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CallKind {
    /// One request, one result.
    Unary,
    /// A server-driven stream of batches.
    Producer,
    /// A lock-step stream: one output batch per input batch.
    Exchange,
}

/// The client settings shared by `spillway call` and `spillway describe`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(long, env = "SPILLWAY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Mount prefix of the server's routes.
    #[arg(long, env = "SPILLWAY_PREFIX", default_value = "")]
    pub prefix: String,
    /// Allow pointer URLs over plain http (URLs on the server's own origin always are).
    #[arg(long, env = "SPILLWAY_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Allow pointer URLs on loopback addresses.
    #[arg(long, env = "SPILLWAY_ALLOW_LOOPBACK")]
    pub allow_loopback: bool,
    /// Allow pointer URLs on private networks (10/8, 172.16/12, 192.168/16, fc00::/7).
    #[arg(long, env = "SPILLWAY_ALLOW_PRIVATE_NETWORKS")]
    pub allow_private_networks: bool,
    /// Largest externalized object downloaded (stored bytes).
    #[arg(long, env = "SPILLWAY_MAX_FETCH_BYTES", default_value_t = 16 * 1024 * 1024 * 1024)]
    pub max_fetch_bytes: u64,
    /// Send request bodies uncompressed.
    #[arg(long)]
    pub no_compression: bool,
    /// Seconds allowed for the call: its requests, retries and their waits (the pointer
    /// download has its own deadline, `--fetch-*`).
    #[arg(long, env = "SPILLWAY_CALL_TIMEOUT", default_value_t = 600)]
    pub timeout: u64,
    /// Retries of a request the server refused before running it (429, or 503 with
    /// Retry-After: overloaded or draining), after its Retry-After plus jittered backoff; 0
    /// disables retrying.
    #[arg(
        long = "retries",
        env = "SPILLWAY_CALL_RETRIES",
        default_value_t = 3,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RETRIES))
    )]
    pub call_retries: u32,
    /// Also retry the call after 502, 504, a 503 without Retry-After or a lost connection,
    /// when the method may already have run: only for idempotent methods.
    #[arg(long, env = "SPILLWAY_CALL_RETRY_IDEMPOTENT")]
    pub retry_idempotent: bool,
    /// Credentials and TLS (`--token`, `--ca-cert`, `--client-cert`, ...).
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Tuning of the pointer fetch engine (`--fetch-*`, `SPILLWAY_FETCH_*`).
    #[command(flatten)]
    pub fetch: crate::fetch::FetchArgs,
}

/// The credential and TLS flags of every command that talks to a server (`call`, `describe`,
/// `top`): one definition, so their names, variables and checks cannot drift apart.
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialArgs {
    /// Bearer token sent as `Authorization: Bearer ...` on the RPC requests (never to storage
    /// URLs). Prefer `SPILLWAY_TOKEN_FILE`: a flag shows in the process list.
    #[arg(
        long,
        env = "SPILLWAY_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<SecretArg>,
    /// File holding the bearer token, re-read when it changes (e.g. a projected Kubernetes
    /// service-account token).
    #[arg(long, env = "SPILLWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundles trusted for https next to the platform's roots (a private CA), for the
    /// RPC requests and pointer downloads; comma-separated or repeated.
    #[arg(long, env = "SPILLWAY_CA_CERT", value_delimiter = ',')]
    pub ca_cert: Vec<PathBuf>,
    /// PEM client certificate chain presented to servers that ask for one (mTLS).
    #[arg(long, env = "SPILLWAY_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "SPILLWAY_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl CredentialArgs {
    /// The token, CA bundle and client identity these flags name, set on `config`.
    pub fn apply(&self, config: &mut ClientConfig) -> Result<()> {
        if let Some(token) = &self.token {
            let token = BearerToken::new(token.expose())
                .map_err(|e| Error::Config(format!("--token / SPILLWAY_TOKEN: {e}")))?;
            config.token = Some(Arc::new(token));
        }
        if let Some(path) = &self.token_file {
            config.token = Some(Arc::new(FileToken::new(path)));
        }
        if !self.ca_cert.is_empty() {
            config.ca = CaBundle::from_files(&self.ca_cert)?;
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config.identity = Some(ClientIdentity::from_files(cert, key)?);
        }
        Ok(())
    }
}

/// A secret command-line value (`--token`): its `Debug` prints `<redacted>`, and parsing it
/// never fails, so clap's errors can never quote it (it is checked later, without echoing).
#[derive(Clone)]
pub struct SecretArg(String);

impl SecretArg {
    /// The value itself. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(SecretArg(s.to_string()))
    }
}

impl ClientArgs {
    /// The client configuration these flags describe (a progress callback is the caller's).
    pub fn client_config(&self) -> Result<ClientConfig> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        let mut config = ClientConfig {
            prefix: self.prefix.clone(),
            request_compression: if self.no_compression { None } else { Some(1) },
            timeout,
            retry: RetryPolicy::default()
                .with_max_retries(self.call_retries)
                .with_deadline(timeout)
                .idempotent(self.retry_idempotent),
            ..ClientConfig::default()
        };
        config.fetch.policy = UrlPolicy {
            allow_http: self.allow_http,
            allow_loopback: self.allow_loopback,
            allow_private_networks: self.allow_private_networks,
            trusted_origins: Vec::new(),
        };
        config.fetch.max_fetch_bytes = self.max_fetch_bytes;
        config.fetch.max_decompressed_bytes = self.max_fetch_bytes.saturating_mul(4);
        self.fetch.apply(&mut config.fetch);
        self.apply_security(&mut config)?;
        Ok(config)
    }

    /// The credential and TLS settings of the call, applied to `config`.
    pub fn apply_security(&self, config: &mut ClientConfig) -> Result<()> {
        self.credentials.apply(config)
    }
}

/// Runs the command line; every failure is returned as one [`Error`].
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Call(args) => call::run(*args).await,
        Command::Describe(args) => describe::run(*args).await,
        Command::Storage(StorageCommand::Init(args)) => storage_init(*args).await,
        Command::Top(args) => crate::top::run(*args).await,
    }
}

async fn storage_init(args: StorageInitArgs) -> Result<()> {
    init_tracing("warn", LogFormat::Text);
    if args.store.storage == StorageKind::Local {
        println!("the local store needs no initialization (retention: SPILLWAY_LOCAL_RETENTION)");
        return Ok(());
    }
    let storage = args.store.connect_cloud().await?;
    let report = storage
        .init(&InitOptions {
            create_bucket: args.create_bucket,
            expire_after_days: args.expire_after_days,
            abort_incomplete_uploads_after_days: args.abort_incomplete_uploads_after_days,
        })
        .await?;
    println!("{report}");
    Ok(())
}

/// Installs the tracing subscriber (`RUST_LOG` overrides the default level).
pub fn init_tracing(default: &str, format: LogFormat) {
    crate::logging::init(default, format, None);
}

async fn serve(args: ServeArgs) -> Result<()> {
    crate::logging::init("info", args.log_format, Some(&args.server_id));
    crate::serve::run(args).await
}
