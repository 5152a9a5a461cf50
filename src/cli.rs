//! The `spillway` command line: `serve` and `call`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use clap::{Args, Parser, Subcommand};

use crate::client::{
    BearerToken, CallRequest, Client, ClientConfig, ClientIdentity, FileToken, RetryPolicy,
    MAX_RETRIES,
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
    /// Call a unary method and print its result.
    Call(Box<CallArgs>),
    /// Manage the object store.
    #[command(subcommand)]
    Storage(StorageCommand),
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
    /// `PROTOCOL.METHOD`, e.g. `spillway.Demo.v1.blob` (the method is after the last dot).
    pub target: String,
    /// Parameters as `name=value` (type inferred: int64, float64, bool, else utf8) or
    /// `name:TYPE=value` with TYPE one of int64, float64, bool, utf8, binary; `@PATH` as a
    /// utf8 or binary value reads the file.
    pub params: Vec<String>,
    /// Server base URL.
    #[arg(long, env = "SPILLWAY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Mount prefix of the server's routes.
    #[arg(long, env = "SPILLWAY_PREFIX", default_value = "")]
    pub prefix: String,
    /// `vgi_rpc.protocol_version` to send, for protocols that declare a version.
    #[arg(long, env = "SPILLWAY_PROTOCOL_VERSION")]
    pub protocol_version: Option<String>,
    /// Write the result as an Arrow IPC stream to this file instead of printing a table.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
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
    /// Tuning of the pointer fetch engine (`--fetch-*`, `SPILLWAY_FETCH_*`).
    #[command(flatten)]
    pub fetch: crate::fetch::FetchArgs,
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

impl CallArgs {
    /// The credential and TLS settings of the call, applied to `config`.
    pub fn apply_security(&self, config: &mut ClientConfig) -> Result<()> {
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

/// Runs the command line; every failure is returned as one [`Error`].
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Call(args) => call(*args).await,
        Command::Storage(StorageCommand::Init(args)) => storage_init(*args).await,
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

/// Splits `PROTOCOL.METHOD` at the last dot.
pub fn split_target(target: &str) -> Result<(&str, &str)> {
    match target.rsplit_once('.') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok((p, m)),
        _ => Err(Error::Config(format!(
            "target must be PROTOCOL.METHOD (e.g. spillway.Demo.v1.blob), got {target:?}"
        ))),
    }
}

/// Builds the one-row parameter batch from `name[:TYPE]=value` arguments.
pub fn parse_params(args: &[String]) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for arg in args {
        let (lhs, value) = arg.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "parameter must be name=value or name:TYPE=value, got {arg:?}"
            ))
        })?;
        let (name, ty) = match lhs.split_once(':') {
            Some((n, t)) => (n, Some(t.to_ascii_lowercase())),
            None => (lhs, None),
        };
        if name.is_empty() {
            return Err(Error::Config(format!("parameter without a name: {arg:?}")));
        }
        let ty = ty.unwrap_or_else(|| infer_type(value).to_string());
        let bad = |what: &str| Error::Config(format!("parameter {name}: {value:?} is not {what}"));
        let (dt, col): (DataType, ArrayRef) = match ty.as_str() {
            "int64" | "int" | "i64" => (
                DataType::Int64,
                Arc::new(Int64Array::from(vec![value.parse::<i64>().map_err(|_| bad("an int64"))?])),
            ),
            "float64" | "float" | "f64" | "double" => (
                DataType::Float64,
                Arc::new(Float64Array::from(vec![value
                    .parse::<f64>()
                    .map_err(|_| bad("a float64"))?])),
            ),
            "bool" | "boolean" => (
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![value
                    .parse::<bool>()
                    .map_err(|_| bad("true or false"))?])),
            ),
            "utf8" | "string" | "str" => {
                let text = match value.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path).map_err(|e| {
                        Error::Config(format!("parameter {name}: cannot read {path}: {e}"))
                    })?,
                    None => value.to_string(),
                };
                (DataType::Utf8, Arc::new(StringArray::from(vec![text])))
            }
            "binary" | "bytes" => {
                let data = match value.strip_prefix('@') {
                    Some(path) => std::fs::read(path).map_err(|e| {
                        Error::Config(format!("parameter {name}: cannot read {path}: {e}"))
                    })?,
                    None => value.as_bytes().to_vec(),
                };
                (
                    DataType::Binary,
                    Arc::new(BinaryArray::from_vec(vec![&data[..]])),
                )
            }
            other => {
                return Err(Error::Config(format!(
                    "parameter {name}: unknown type {other:?} (use int64, float64, bool, utf8 or binary)"
                )))
            }
        };
        fields.push(Field::new(name, dt, false));
        columns.push(col);
    }
    let schema = Arc::new(Schema::new(fields));
    let rows = if columns.is_empty() { 0 } else { 1 };
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

fn infer_type(value: &str) -> &'static str {
    if value.parse::<i64>().is_ok() {
        "int64"
    } else if value.parse::<f64>().is_ok() {
        "float64"
    } else if value == "true" || value == "false" {
        "bool"
    } else {
        "utf8"
    }
}

async fn call(args: CallArgs) -> Result<()> {
    init_tracing("warn", LogFormat::Text);
    let (protocol, method) = split_target(&args.target)?;
    let params = parse_params(&args.params)?;
    let mut config = ClientConfig {
        prefix: args.prefix.clone(),
        request_compression: if args.no_compression { None } else { Some(1) },
        timeout: Duration::from_secs(args.timeout.max(1)),
        retry: RetryPolicy::default()
            .with_max_retries(args.call_retries)
            .with_deadline(Duration::from_secs(args.timeout.max(1)))
            .idempotent(args.retry_idempotent),
        ..ClientConfig::default()
    };
    config.fetch.policy = UrlPolicy {
        allow_http: args.allow_http,
        allow_loopback: args.allow_loopback,
        allow_private_networks: args.allow_private_networks,
        trusted_origins: Vec::new(),
    };
    config.fetch.max_fetch_bytes = args.max_fetch_bytes;
    config.fetch.max_decompressed_bytes = args.max_fetch_bytes.saturating_mul(4);
    args.fetch.apply(&mut config.fetch);
    args.apply_security(&mut config)?;
    // Created on the first progress report of a large object; drawn only on a terminal.
    let bar = Arc::new(std::sync::OnceLock::<indicatif::ProgressBar>::new());
    let progress_bar = bar.clone();
    config.progress = Some(Arc::new(move |done, total| {
        let Some(total) = total.filter(|t| *t >= PROGRESS_BAR_MIN_BYTES) else {
            return;
        };
        progress_bar
            .get_or_init(|| fetch_progress_bar(total))
            .set_position(done);
    }));
    let started = Instant::now();
    let client = Client::new(&args.url, config)?;
    let out = client
        .call_with(CallRequest {
            protocol: protocol.to_string(),
            method: method.to_string(),
            params,
            protocol_version: args.protocol_version.clone(),
            metadata: Default::default(),
        })
        .await;
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    let out = out?;
    for log in &out.logs {
        eprintln!("[{}] {}", log.level, log.message);
    }
    if let Some(ext) = &out.externalized {
        eprintln!("{}", fetch_summary(&ext.stats, &ext.url));
    } else {
        eprintln!("inline result");
    }
    match &args.output {
        Some(path) => {
            let schema = out.batch.schema();
            let bytes = crate::wire::write_stream(
                &schema,
                &[crate::wire::MetaBatch::plain(out.batch.clone())],
            )?;
            std::fs::write(path, &bytes)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            eprintln!(
                "wrote {} to {}",
                human_bytes(bytes.len() as u64),
                path.display()
            );
        }
        None => println!("{}", format_table(&out.batch)?),
    }
    eprintln!("done in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

/// Objects at least this large get a progress bar while they download.
const PROGRESS_BAR_MIN_BYTES: u64 = 16 * 1024 * 1024;

fn fetch_progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "fetching {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The one-line summary of a resolved pointer: size, time, throughput, chunks, retries and
/// hedges.
pub fn fetch_summary(stats: &crate::fetch::FetchStats, url: &str) -> String {
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    format!(
        "externalized result: {} stored ({} decoded) fetched in {:.1} ms ({}/s; {} {}, {} {}, hedges {} launched / {} won) from {}",
        human_bytes(stats.encoded_bytes),
        human_bytes(stats.decoded_bytes),
        secs * 1000.0,
        human_bytes((stats.encoded_bytes as f64 / secs) as u64),
        stats.chunks,
        if stats.chunks == 1 { "chunk" } else { "chunks" },
        stats.retries,
        if stats.retries == 1 { "retry" } else { "retries" },
        stats.hedges_launched,
        stats.hedges_won,
        url
    )
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Most characters shown per cell; longer values are summarized.
const MAX_CELL_CHARS: usize = 64;
/// Most rows printed.
const MAX_ROWS: usize = 50;

/// A table of the batch, with long cells summarized (a 1 GiB binary prints as its size and
/// first bytes, not as 2 GiB of hex).
pub fn format_table(batch: &RecordBatch) -> Result<String> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_FULL_CONDENSED);
    let schema = batch.schema();
    table.set_header(
        schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type())),
    );
    let options = arrow_cast::display::FormatOptions::default().with_null("null");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows().min(MAX_ROWS) {
        let mut cells = Vec::new();
        for (col, fmt) in batch.columns().iter().zip(&formatters) {
            cells.push(cell_text(col.as_ref(), fmt, row));
        }
        table.add_row(cells);
    }
    let mut out = table.to_string();
    if batch.num_rows() > MAX_ROWS {
        out.push_str(&format!(
            "\n... {} more rows (use --output FILE for all of them)",
            batch.num_rows() - MAX_ROWS
        ));
    }
    Ok(out)
}

fn cell_text(col: &dyn Array, fmt: &arrow_cast::display::ArrayFormatter<'_>, row: usize) -> String {
    if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
        if b.is_valid(row) && b.value(row).len() * 2 > MAX_CELL_CHARS {
            let v = b.value(row);
            let head: String = v.iter().take(8).map(|x| format!("{x:02x}")).collect();
            return format!("<{} bytes: {head}...>", v.len());
        }
    }
    let text = fmt.value(row).to_string();
    if text.chars().count() > MAX_CELL_CHARS {
        let head: String = text.chars().take(MAX_CELL_CHARS).collect();
        format!("{head}... ({} chars)", text.chars().count())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_and_infer() {
        let b = parse_params(&[
            "size=10".into(),
            "ratio=0.5".into(),
            "flag=true".into(),
            "name=abc".into(),
            "data:binary=xyz".into(),
        ])
        .unwrap();
        let types: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                DataType::Int64,
                DataType::Float64,
                DataType::Boolean,
                DataType::Utf8,
                DataType::Binary
            ]
        );
        assert!(b.schema().fields().iter().all(|f| !f.is_nullable()));
        assert_eq!(b.num_rows(), 1);
        assert_eq!(parse_params(&[]).unwrap().num_rows(), 0);
        for bad in [
            "novalue",
            "=1",
            "x:int64=abc",
            "x:weird=1",
            "x:binary=@/nonexistent/file",
        ] {
            assert!(parse_params(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_split_at_last_dot() {
        assert_eq!(
            split_target("spillway.Demo.v1.blob").unwrap(),
            ("spillway.Demo.v1", "blob")
        );
        assert!(split_target("blob").is_err());
        assert!(split_target("x.").is_err());
    }

    #[test]
    fn fetch_summary_line() {
        let stats = crate::fetch::FetchStats {
            encoded_bytes: 64 * 1024 * 1024,
            decoded_bytes: 64 * 1024 * 1024,
            elapsed: Duration::from_millis(500),
            chunks: 8,
            retries: 1,
            hedges_launched: 2,
            hedges_won: 1,
            ..Default::default()
        };
        assert_eq!(
            fetch_summary(&stats, "http://h/k"),
            "externalized result: 64.0 MiB stored (64.0 MiB decoded) fetched in 500.0 ms \
             (128.0 MiB/s; 8 chunks, 1 retry, hedges 2 launched / 1 won) from http://h/k"
        );
    }

    #[test]
    fn big_binary_cells_are_summarized() {
        let b = crate::demo::binary_result_batch(vec![0xab; 1000]).unwrap();
        let t = format_table(&b).unwrap();
        assert!(t.contains("<1000 bytes: abababababababab...>"), "{t}");
        assert!(t.len() < 400);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
