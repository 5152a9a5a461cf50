//! `spillway-bench load`: a closed-loop load generator for a vgi-rpc server. `--clients`
//! independent tasks each make one call after another until `--duration` has passed, picking
//! every call's kind from the weighted `--mix`; the calls in flight at the deadline are
//! waited for (each within `--call-timeout`) and counted.
//!
//! ```sh
//! ./target/release/spillway-bench load --url http://127.0.0.1:8080 --duration 5m --verify \
//!     --server-pid "$(pgrep -n -x spillway)" --json-file load.json
//! ./target/release/spillway-bench load --url http://127.0.0.1:PORT --mix echo_string=100   # conformance worker
//! ```
//!
//! Call kinds (`--mix NAME=WEIGHT,...`, default `small=70,echo=15,blob=10,stream=5`):
//! - `small`: `spillway.Demo.v1.echo` of `--small-bytes` (64 B), inline both ways;
//! - `echo`: `echo` of `--echo-bytes` (8 MiB): above the server's default 4 MiB request limit,
//!   so the client sends it through the upload-URL flow, and the result is externalized;
//! - `blob`: `blob(size = --blob-bytes)` (32 MiB), an externalized result;
//! - `stream`: the producer stream `blob_stream(count = --stream-count, size = --stream-bytes)`
//!   (4 x 4 MiB), every batch externalized on its own;
//! - `echo_string`: `ConformanceService.echo_string` of `--string-bytes` (16) characters
//!   (protocol version 2.0.0), the conformance worker's small call: the Python reference
//!   (`tests/conformance/serve_ref.py`) or `spillway-conformance`.
//!
//! `--protocol` replaces every kind's protocol name, `--protocol-version` the
//! `vgi_rpc.protocol_version` sent. Every answer's length is checked; `--verify` checks every
//! byte: echoes against what was sent (each call's payload carries its own random stamp, so an
//! answer meant for another call is wrong), stream batches against
//! `spillway::demo::generate_blob(size, index)`. `blob` results can only be checked for their
//! length: the server draws a random seed per call and does not report it.
//!
//! Outcomes: ok; *rejected* (HTTP 503 or 429, or an `UNAVAILABLE` error: the server shedding
//! load, expected under overload, counted apart; the client then pauses `--rejection-pause`);
//! an unexpected error (counted by label: HTTP status, RPC code and type, error kind); wrong
//! (an answer that is not what was asked). The exit status is 1 on any wrong answer or
//! unexpected error (and on rejections with `--fail-on-rejections`). The client library's
//! retries are not used: one call is one attempt (the fetch engine's per-range retries of
//! pointer downloads still apply).

mod calls;
mod report;
mod rss;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, SeedableRng};
use spillway::client::{BearerToken, Client, ClientConfig, FileToken, RetryPolicy};
use spillway::url_policy::UrlPolicy;
use tokio::task::JoinSet;

use self::calls::{Kind, Plan};
use self::report::{KindStats, Outcome, Report};
use crate::BoxError;

/// The default `--mix`.
const DEFAULT_MIX: &str = "small=70,echo=15,blob=10,stream=5";

/// Most clients one run starts (each is a task with its own connection).
const MAX_CLIENTS: usize = 10_000;

/// Largest payload of any kind: a binary value holds at most 2 GiB - 1 bytes.
const MAX_PAYLOAD_BYTES: u64 = i32::MAX as u64;

/// Most batches a `stream` call asks for.
const MAX_STREAM_COUNT: u64 = 1_000_000;

/// Most bytes of expected stream batches kept in memory for `--verify` (computed once).
const MAX_EXPECTED_STREAM_BYTES: u64 = 1 << 30;

/// `spillway-bench load` flags.
#[derive(Args, Clone)]
pub(crate) struct LoadArgs {
    /// Server base URL with its mount prefix, e.g. `http://127.0.0.1:8080/vgi`.
    #[arg(long)]
    url: String,
    /// Concurrent clients, each a task making one call after another.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// How long new calls are started, e.g. `3s`, `30s`, `5m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Weighted call kinds: small, echo, blob, stream, echo_string.
    #[arg(long, default_value = DEFAULT_MIX, value_parser = parse_mix)]
    mix: Mix,
    /// Protocol of every call kind (default: `spillway.Demo.v1`; `ConformanceService` with
    /// protocol version 2.0.0 for `echo_string`).
    #[arg(long)]
    protocol: Option<String>,
    /// `vgi_rpc.protocol_version` sent with every call, for protocols that declare one.
    #[arg(long)]
    protocol_version: Option<String>,
    /// Payload of `small` (bytes, or with KiB/MiB/GiB).
    #[arg(long, default_value = "64", value_parser = crate::parse_size)]
    small_bytes: u64,
    /// Payload of `echo`: above the server's request limit, so it goes through an upload URL.
    #[arg(long, default_value = "8MiB", value_parser = crate::parse_size)]
    echo_bytes: u64,
    /// Size of each `blob`.
    #[arg(long, default_value = "32MiB", value_parser = crate::parse_size)]
    blob_bytes: u64,
    /// Batches of each `stream`.
    #[arg(long, default_value_t = 4)]
    stream_count: u64,
    /// Bytes of each `stream` batch.
    #[arg(long, default_value = "4MiB", value_parser = crate::parse_size)]
    stream_bytes: u64,
    /// Characters of each `echo_string` value.
    #[arg(long, default_value = "16", value_parser = crate::parse_size)]
    string_bytes: u64,
    /// Bearer token sent on every RPC request (visible in the process list: prefer
    /// `--token-file`).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token (re-read when it changes).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Check every byte of every answer (without it, lengths only).
    #[arg(long)]
    verify: bool,
    /// Sample this process's RSS (the server's) every 100 ms and report its peak.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (the table still goes to stdout).
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// Count rejected calls (503, 429) as failures: for runs that must not shed load.
    #[arg(long)]
    fail_on_rejections: bool,
    /// How long a client waits after a rejected call before its next one.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    rejection_pause: Duration,
    /// Time allowed for one call, all its requests and downloads included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
    /// One client (connection pool, capability probe) per task instead of one shared by all
    /// (which opens one connection per call in flight all the same).
    #[arg(long)]
    client_per_task: bool,
    /// Fetch pointer URLs over plain http (the server's own origin always is).
    #[arg(long)]
    allow_http: bool,
    /// Fetch pointer URLs on loopback addresses (LocalStack on 127.0.0.1).
    #[arg(long)]
    allow_loopback: bool,
    /// Fetch pointer URLs on private networks.
    #[arg(long)]
    allow_private_networks: bool,
    /// Send request bodies uncompressed (default: zstd level 1, as the client does).
    #[arg(long)]
    no_compression: bool,
    /// Seed of the clients' kind draws and payloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The weighted call kinds of `--mix`.
#[derive(Debug, Clone)]
pub(crate) struct Mix(Vec<(Kind, u32)>);

impl Mix {
    fn total(&self) -> u64 {
        self.0.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    fn pick(&self, rng: &mut impl Rng) -> Kind {
        let mut draw = rng.random_range(0..self.total());
        for (kind, weight) in &self.0 {
            if draw < u64::from(*weight) {
                return *kind;
            }
            draw -= u64::from(*weight);
        }
        // Unreachable: the draw is below the sum of the weights.
        self.0[self.0.len() - 1].0
    }
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix: Vec<(Kind, u32)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: want NAME=WEIGHT"))?;
        let kind = Kind::from_name(name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown call kind {name:?} (known: {})", known.join(", "))
        })?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|e| format!("{part:?}: bad weight: {e}"))?;
        if mix.iter().any(|(k, _)| *k == kind) {
            return Err(format!("{} appears twice", kind.name()));
        }
        if weight > 0 {
            mix.push((kind, weight));
        }
    }
    if mix.is_empty() {
        return Err("the mix needs at least one kind with a weight above 0".into());
    }
    Ok(Mix(mix))
}

/// `http://host:port/prefix` into the server root and the mount prefix.
fn split_url(url: &str) -> Result<(String, String), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("--url: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("--url must be an http or https URL".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err("--url must not have credentials, a query string or a fragment".into());
    }
    let prefix = parsed.path().trim_end_matches('/').to_string();
    Ok((parsed.origin().ascii_serialization(), prefix))
}

fn check_size(v: u64, flag: &str) -> Result<usize, String> {
    if v > MAX_PAYLOAD_BYTES {
        return Err(format!("{flag} {v} exceeds {MAX_PAYLOAD_BYTES} bytes"));
    }
    usize::try_from(v).map_err(|_| format!("{flag} {v} does not fit in memory"))
}

fn client_config(a: &LoadArgs, prefix: String) -> Result<ClientConfig, BoxError> {
    let mut config = ClientConfig {
        prefix,
        request_compression: if a.no_compression { None } else { Some(1) },
        timeout: a.call_timeout,
        // Every refusal is to be seen and counted, not hidden by a retry.
        retry: RetryPolicy::none(),
        ..ClientConfig::default()
    };
    // As `spillway call`: nothing but the server's own origin unless allowed.
    config.fetch.policy = UrlPolicy {
        allow_http: a.allow_http,
        allow_loopback: a.allow_loopback,
        allow_private_networks: a.allow_private_networks,
        trusted_origins: Vec::new(),
    };
    if let Some(t) = &a.token {
        config = config.with_token(BearerToken::new(t)?);
    } else if let Some(path) = &a.token_file {
        config = config.with_token_provider(Arc::new(FileToken::new(path)));
    }
    Ok(config)
}

async fn plan(a: &LoadArgs) -> Result<Plan, BoxError> {
    let small_bytes = check_size(a.small_bytes, "--small-bytes")?;
    let echo_bytes = check_size(a.echo_bytes, "--echo-bytes")?;
    let string_bytes = check_size(a.string_bytes, "--string-bytes")?;
    check_size(a.blob_bytes, "--blob-bytes")?;
    let stream_bytes = check_size(a.stream_bytes, "--stream-bytes")?;
    if a.stream_count > MAX_STREAM_COUNT {
        return Err(format!("--stream-count exceeds {MAX_STREAM_COUNT}").into());
    }
    let uses = |k: Kind| a.mix.0.iter().any(|(m, _)| *m == k);
    let (echo, stream) = (uses(Kind::Echo), uses(Kind::Stream) && a.verify);
    if stream && a.stream_count.saturating_mul(a.stream_bytes) > MAX_EXPECTED_STREAM_BYTES {
        return Err(format!(
            "--verify keeps every expected stream batch in memory: --stream-count x \
             --stream-bytes must be at most {MAX_EXPECTED_STREAM_BYTES} bytes"
        )
        .into());
    }
    let (count, seed) = (a.stream_count, a.seed);
    // Generating tens of MiB is CPU work: off the async workers, before the clock starts.
    let (echo_template, stream_expected) = tokio::task::spawn_blocking(move || {
        let template = if echo {
            spillway::demo::generate_blob(echo_bytes, seed)
        } else {
            Vec::new()
        };
        let expected = if stream {
            (0..count)
                .map(|i| spillway::demo::generate_blob(stream_bytes, i))
                .collect()
        } else {
            Vec::new()
        };
        (template, expected)
    })
    .await?;
    Ok(Plan {
        protocol: a.protocol.clone(),
        protocol_version: a.protocol_version.clone(),
        verify: a.verify,
        small_bytes,
        string_bytes,
        blob_bytes: a.blob_bytes,
        stream_count: a.stream_count,
        stream_bytes: a.stream_bytes,
        echo_template,
        stream_expected,
    })
}

/// What one client does until the deadline, in its own loop.
struct Worker {
    client: Client,
    plan: Arc<Plan>,
    mix: Mix,
    deadline: Instant,
    call_timeout: Duration,
    rejection_pause: Duration,
    rng: rand::rngs::StdRng,
}

impl Worker {
    async fn run(mut self) -> BTreeMap<Kind, KindStats> {
        let mut stats: BTreeMap<Kind, KindStats> = BTreeMap::new();
        while Instant::now() < self.deadline {
            let kind = self.mix.pick(&mut self.rng);
            let started = Instant::now();
            let call = calls::run_call(&self.client, &self.plan, kind, &mut self.rng);
            let outcome = match tokio::time::timeout(self.call_timeout, call).await {
                Ok(result) => Outcome::of(result),
                Err(_) => Outcome::timed_out(self.call_timeout),
            };
            let rejected = matches!(outcome, Outcome::Rejected(_));
            stats
                .entry(kind)
                .or_default()
                .record(outcome, started.elapsed());
            if rejected {
                let left = self.deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(self.rejection_pause.min(left)).await;
            }
        }
        stats
    }
}

/// Runs the load and prints the report; `Ok(false)` when the run failed (wrong answers,
/// unexpected errors).
pub(crate) async fn run(a: LoadArgs) -> Result<bool, BoxError> {
    if a.clients == 0 || a.clients > MAX_CLIENTS {
        return Err(format!("--clients must be between 1 and {MAX_CLIENTS}").into());
    }
    if a.call_timeout.is_zero() {
        return Err("--call-timeout must be above 0".into());
    }
    let (root, prefix) = split_url(&a.url)?;
    let config = client_config(&a, prefix)?;
    let plan = Arc::new(plan(&a).await?);
    // Every client learns the server's capabilities before the clock starts: an unreachable
    // server is a setup error, not a run full of errors.
    let shared = Client::new(&root, config.clone())?;
    let mut clients = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        let client = if a.client_per_task {
            Client::new(&root, config.clone())?
        } else {
            shared.clone()
        };
        client
            .capabilities()
            .await
            .map_err(|e| format!("no answer to the capability probe of {}: {e}", a.url))?;
        clients.push(client);
    }
    let sampler = a.server_pid.map(rss::Sampler::start).transpose()?;
    let started = Instant::now();
    let deadline = started + a.duration;
    let mut tasks = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.spawn(
            Worker {
                client,
                plan: plan.clone(),
                mix: a.mix.clone(),
                deadline,
                call_timeout: a.call_timeout,
                rejection_pause: a.rejection_pause,
                rng: rand::rngs::StdRng::seed_from_u64(
                    a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64,
                ),
            }
            .run(),
        );
    }
    // Every kind of the mix gets a row, called or not.
    let mut kinds: BTreeMap<Kind, KindStats> = a
        .mix
        .0
        .iter()
        .map(|(k, _)| (*k, KindStats::default()))
        .collect();
    while let Some(done) = tasks.join_next().await {
        for (kind, s) in done? {
            kinds.entry(kind).or_default().merge(&s);
        }
    }
    let elapsed = started.elapsed();
    let server = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let report = Report {
        clients: a.clients,
        duration: a.duration,
        elapsed,
        mix: a.mix.0.clone(),
        verify: a.verify,
        rejections_fail: a.fail_on_rejections,
        kinds,
        server,
        generator_peak_rss: rss::own_peak_rss(),
    };
    let json = serde_json::to_string_pretty(&report.json())?;
    if let Some(path) = &a.json_file {
        std::fs::write(path, format!("{json}\n"))
            .map_err(|e| format!("--json-file {}: {e}", path.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(report.failures().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let m = parse_mix(DEFAULT_MIX).unwrap();
        assert_eq!(
            m.0,
            vec![
                (Kind::Small, 70),
                (Kind::Echo, 15),
                (Kind::Blob, 10),
                (Kind::Stream, 5)
            ]
        );
        assert_eq!(
            parse_mix(" echo_string=1 , blob=0").unwrap().0,
            vec![(Kind::EchoString, 1)]
        );
        for bad in [
            "",
            "blob=0",
            "small",
            "small=x",
            "nope=1",
            "small=1,small=2",
        ] {
            assert!(parse_mix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn picks_follow_the_weights() {
        let m = parse_mix("small=3,blob=1").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 40_000;
        let small = (0..n).filter(|_| m.pick(&mut rng) == Kind::Small).count();
        // 3/4 of the draws, within a wide margin (a fixed seed: no flakiness).
        assert!((29_000..31_000).contains(&small), "{small}");
    }

    #[test]
    fn urls_split_into_root_and_prefix() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/vgi/").unwrap(),
            ("http://127.0.0.1:8080".to_string(), "/vgi".to_string())
        );
        assert_eq!(
            split_url("https://example.com").unwrap(),
            ("https://example.com".to_string(), String::new())
        );
        for bad in ["ftp://x/", "http://u:p@x/", "http://x/?q=1", "nonsense"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
