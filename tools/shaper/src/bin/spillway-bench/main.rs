//! `spillway-bench`: the fetch benchmark. Every contender downloads the same object from the
//! same shaped store in one run, interleaved (the order rotates every round), each download
//! in a fresh child process so that its peak RSS and CPU time are its own.
//!
//! ```sh
//! cargo build --release -p spillway-shaper
//! ./target/release/spillway-bench run --size 512MiB --runs 30               # S3-like shaping
//! ./target/release/spillway-bench run --size 1GiB --runs 10 --shaping none  # loopback
//! ```
//!
//! The store is Spillway's embedded local store (served over HTTP on 127.0.0.1 by this
//! process), behind the store shaper. Contenders:
//! - `spillway`: Spillway's fetcher (`Fetcher::fetch`), hedging on;
//! - `spillway-nohedge`: the same with hedging off;
//! - `single-get`: one streaming GET with reqwest into one buffer;
//! - `curl`: one GET with curl to /dev/null (CPU reference);
//! - `object-store`: the `object_store` crate's HTTP store, concurrent `get_range` of the
//!   same chunk size and concurrency (unordered), each copied into place in one buffer (its
//!   `get_ranges` coalesces adjacent ranges into one request, i.e. a single GET);
//! - `reference`: a faithful Rust re-implementation of the reference (vgi-rpc Python)
//!   algorithm, at the same concurrency (see `reference.rs`).
//!
//! `spillway-bench load` is the load generator for a running server (see `load.rs`).

mod load;
mod reference;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use sha2::{Digest, Sha256};
use spillway_shaper::{Shaper, ShaperConfig};
use spillway_storage::{PresignMethod, PutOptions, PutPayload, Storage};
use spillway_storage_local::{LocalStore, LocalStoreConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ALL: &[&str] = &[
    "spillway",
    "spillway-nohedge",
    "single-get",
    "curl",
    "object-store",
    "reference",
];

#[derive(Parser)]
#[command(
    name = "spillway-bench",
    about = "Spillway's fetch benchmark and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and print the report.
    Run(RunArgs),
    /// Load a running server with concurrent clients and report per call kind; exit status 1
    /// on any wrong answer or unexpected error.
    Load(load::LoadArgs),
    /// Serve the shaped store (run by `run` in a child process).
    #[command(hide = true)]
    Serve(StoreArgs),
    /// One download (run by `run` in a child process).
    #[command(hide = true)]
    Fetch(FetchArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Object size: bytes, or with KiB/MiB/GiB.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    size: u64,
    /// Measured runs per contender (after one unmeasured, verified warm-up run each).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// `s3`: 50 MiB/s per connection, 30 ± 10 ms to first byte, 3 % of requests stall 2 s,
    /// 1 % deliver at a tenth of the rate. `none`: a transparent proxy.
    #[arg(long, default_value = "s3")]
    shaping: String,
    /// Per-connection bandwidth in MiB/s for `s3` shaping.
    #[arg(long, default_value_t = 50)]
    bandwidth_mib: u64,
    /// Override the share of requests that stall 2 s (`s3` shaping; diagnostics).
    #[arg(long)]
    stall_probability: Option<f64>,
    /// Override the share of requests delivered at a tenth of the rate (diagnostics).
    #[arg(long)]
    slow_probability: Option<f64>,
    /// Comma-separated contenders (default: all).
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Concurrency of every ranged contender.
    #[arg(long, default_value_t = spillway::fetch::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Chunk size of Spillway's fetcher and of the object_store contender (the reference
    /// keeps its 8 MiB).
    #[arg(long, default_value_t = spillway::fetch::DEFAULT_CHUNK_SIZE, value_parser = parse_size)]
    chunk_bytes: u64,
    /// Extra `spillway-bench fetch` flags for the Spillway contenders, e.g.
    /// "--hedge-min-delay-ms=100".
    #[arg(long, allow_hyphen_values = true)]
    spillway_flags: Option<String>,
    /// Seed of the shaper's straggler draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write every run as CSV here.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct StoreArgs {
    #[arg(long, value_parser = parse_size)]
    size: u64,
    #[arg(long)]
    shaping: String,
    #[arg(long)]
    bandwidth_mib: u64,
    #[arg(long)]
    stall_probability: Option<f64>,
    #[arg(long)]
    slow_probability: Option<f64>,
    #[arg(long)]
    seed: u64,
}

#[derive(Args, Clone)]
struct FetchArgs {
    #[arg(long)]
    contender: String,
    #[arg(long)]
    url: String,
    #[arg(long)]
    size: u64,
    #[arg(long)]
    sha256: Option<String>,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    chunk_bytes: u64,
    /// object_store: base URL and path of the object (the shaper adds the signature).
    #[arg(long)]
    os_base: Option<String>,
    #[arg(long)]
    os_path: Option<String>,
    #[arg(long)]
    hedge_min_delay_ms: Option<u64>,
    #[arg(long)]
    hedge_ttfb_factor: Option<f64>,
    #[arg(long)]
    hedge_slow_factor: Option<f64>,
    #[arg(long)]
    hedge_budget: Option<f64>,
    #[arg(long, value_parser = parse_size)]
    parallel_threshold: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Load(args) => match runtime()?.block_on(load::run(args)) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("spillway-bench load: {e}");
                std::process::exit(1)
            }
        },
        Cmd::Serve(args) => runtime()?.block_on(serve_store(args)),
        Cmd::Fetch(args) => {
            // `SPILLWAY_BENCH_LOG=spillway=debug` shows the engine's decisions per run.
            if let Ok(filter) = std::env::var("SPILLWAY_BENCH_LOG") {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .with_writer(std::io::stderr)
                    .try_init();
            }
            runtime()?.block_on(fetch_once(args))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child side: one download.

async fn fetch_once(a: FetchArgs) -> Result<(), BoxError> {
    // Clients are built before the clock starts, for every contender alike.
    let (secs, bytes, extra): (f64, bytes::Bytes, String) = match a.contender.as_str() {
        "spillway" | "spillway-nohedge" => {
            let mut config = spillway::fetch::FetchConfig {
                policy: spillway::url_policy::UrlPolicy::local_testing(),
                concurrency: a.concurrency,
                chunk_size: a.chunk_bytes,
                hedge: a.contender == "spillway",
                max_fetch_bytes: a.size.max(1),
                max_decompressed_bytes: a.size.max(1),
                ..Default::default()
            };
            if let Some(v) = a.hedge_min_delay_ms {
                config.hedge_min_delay = Duration::from_millis(v);
            }
            if let Some(v) = a.hedge_ttfb_factor {
                config.hedge_ttfb_factor = v;
            }
            if let Some(v) = a.hedge_slow_factor {
                config.hedge_slow_factor = v;
            }
            if let Some(v) = a.hedge_budget {
                config.hedge_budget = v;
            }
            if let Some(v) = a.parallel_threshold {
                config.parallel_threshold = v;
            }
            let fetcher = spillway::fetch::Fetcher::new(config)?;
            let t = Instant::now();
            let (object, stats) = fetcher.fetch_with_stats(&a.url, None).await?;
            let secs = t.elapsed().as_secs_f64();
            let extra = format!(
                "requests={} retries={} hedges={} hedges_won={}",
                stats.requests, stats.retries, stats.hedges_launched, stats.hedges_won
            );
            (secs, object.encoded, extra)
        }
        "single-get" => {
            let client = reqwest::Client::builder().http1_only().build()?;
            let t = Instant::now();
            let mut resp = client.get(&a.url).send().await?.error_for_status()?;
            let mut buf = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
            while let Some(b) = resp.chunk().await? {
                buf.extend_from_slice(&b);
            }
            (t.elapsed().as_secs_f64(), buf.into(), String::new())
        }
        "object-store" => {
            use futures::StreamExt;
            use object_store::ObjectStoreExt;
            let base = a.os_base.clone().ok_or("--os-base needed")?;
            let path = object_store::path::Path::from(a.os_path.clone().ok_or("--os-path needed")?);
            let store = object_store::http::HttpBuilder::new()
                .with_url(base)
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_allow_http(true)
                        .with_timeout_disabled(),
                )
                .build()?;
            let store = Arc::new(store);
            let chunk = a.chunk_bytes;
            let ranges: Vec<std::ops::Range<u64>> = (0..a.size.div_ceil(chunk))
                .map(|i| i * chunk..((i + 1) * chunk).min(a.size))
                .collect();
            let t = Instant::now();
            // Unordered, so a straggler does not hold back the other requests; each range is
            // copied to its place as it arrives.
            let mut buf = vec![0u8; a.size as usize];
            let mut parts = futures::stream::iter(ranges)
                .map(|r| {
                    let store = store.clone();
                    let path = path.clone();
                    async move { store.get_range(&path, r.clone()).await.map(|b| (r, b)) }
                })
                .buffer_unordered(a.concurrency);
            while let Some(part) = parts.next().await {
                let (r, bytes) = part?;
                if bytes.len() as u64 != r.end - r.start {
                    return Err("object_store returned a short range".into());
                }
                buf[r.start as usize..r.end as usize].copy_from_slice(&bytes);
            }
            (t.elapsed().as_secs_f64(), buf.into(), String::new())
        }
        "reference" => {
            let client = reqwest::Client::builder().http1_only().build()?;
            let cfg = reference::RefConfig::new(a.concurrency);
            let t = Instant::now();
            let (bytes, hedges) = reference::fetch(&client, &a.url, &cfg).await?;
            (
                t.elapsed().as_secs_f64(),
                bytes.into(),
                format!("hedges={hedges}"),
            )
        }
        other => return Err(format!("unknown contender {other}").into()),
    };
    report(&a, secs, &bytes, &extra)
}

fn report(a: &FetchArgs, secs: f64, bytes: &[u8], extra: &str) -> Result<(), BoxError> {
    if bytes.len() as u64 != a.size {
        return Err(format!(
            "{}: got {} bytes, want {}",
            a.contender,
            bytes.len(),
            a.size
        )
        .into());
    }
    if let Some(want) = &a.sha256 {
        let got = hex::encode(Sha256::digest(bytes));
        if &got != want {
            return Err(format!("{}: wrong bytes (sha256 {got})", a.contender).into());
        }
    }
    println!("RESULT secs={secs:.6} bytes={} {extra}", bytes.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parent side.

#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    cpu: f64,
    max_rss: u64,
    extra: String,
}

fn xorshift_fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Runs `program args`, waits with `wait4` for its own rusage; returns stdout, CPU seconds
/// and peak RSS in bytes.
fn run_measured(program: &str, args: &[String]) -> Result<(String, f64, u64), BoxError> {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zero is a valid value for every field.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (std's `Child` is never waited on; it
    // is dropped without waiting); the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(format!("wait4 failed: {}", std::io::Error::last_os_error()).into());
    }
    drop(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("{program} failed (status {status}): {out}").into());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    Ok((out, cpu, usage.ru_maxrss as u64 * 1024))
}

fn parse_result(out: &str) -> Result<(f64, String), BoxError> {
    let line = out
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .ok_or_else(|| format!("no result in {out:?}"))?;
    let mut secs = None;
    let mut extra = Vec::new();
    for kv in line.split_whitespace().skip(1) {
        match kv.split_once('=') {
            Some(("secs", v)) => secs = v.parse().ok(),
            Some(("bytes", _)) => {}
            _ => extra.push(kv.to_string()),
        }
    }
    Ok((secs.ok_or("no secs")?, extra.join(" ")))
}

struct Setup {
    exe: String,
    url: String,
    os_base: String,
    os_path: String,
    sha: String,
}

fn contender_args(s: &Setup, a: &RunArgs, name: &str, verify: bool) -> (String, Vec<String>) {
    if name == "curl" {
        return (
            "curl".into(),
            vec![
                "-s".into(),
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "RESULT secs=%{time_total} bytes=%{size_download} status=%{http_code}\\n".into(),
                s.url.clone(),
            ],
        );
    }
    let mut v = vec![
        "fetch".to_string(),
        format!("--contender={name}"),
        format!("--url={}", s.url),
        format!("--size={}", a.size),
        format!("--concurrency={}", a.concurrency),
        format!("--chunk-bytes={}", a.chunk_bytes),
        format!("--os-base={}", s.os_base),
        format!("--os-path={}", s.os_path),
    ];
    if verify {
        v.push(format!("--sha256={}", s.sha));
    }
    if name.starts_with("spillway") {
        if let Some(flags) = &a.spillway_flags {
            v.extend(flags.split_whitespace().map(str::to_string));
        }
    }
    (s.exe.clone(), v)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The store side (`spillway-bench serve`): Spillway's embedded local store over HTTP on
/// 127.0.0.1 behind the shaper, in its own process so that its memory never shows up in the
/// contenders' peak RSS (a child's `ru_maxrss` includes the high-water mark of the process
/// that spawned it). Prints one `READY` line, serves until stdin closes, then prints the
/// shaper's request count.
async fn serve_store(a: StoreArgs) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let store = Arc::new(LocalStore::new(LocalStoreConfig {
        root: dir.path().join("objects"),
        key_prefix: "bench/".into(),
        public_base: format!("{origin}/__storage__/").parse()?,
        secret: rand::random::<[u8; 32]>().to_vec(),
        previous_secrets: Vec::new(),
        max_object_bytes: a.size.max(1),
    })?);
    let router = axum::Router::new().nest("/__storage__", store.clone().router());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut data = vec![0u8; a.size as usize];
    xorshift_fill(&mut data, a.seed ^ 0x5eed);
    let sha = hex::encode(Sha256::digest(&data));
    let key = store.new_key();
    store
        .put(
            &key,
            PutPayload::Bytes(data.into()),
            PutOptions {
                content_type: Some("application/octet-stream".into()),
                content_encoding: None,
            },
        )
        .await?;
    let presigned = store
        .presign(&key, PresignMethod::Get, Duration::from_secs(24 * 3600))
        .await?;
    let mut shaping = shaping_for(&a.shaping, a.bandwidth_mib, origin.parse()?)?;
    if let Some(p) = a.stall_probability {
        shaping.stall_probability = p;
    }
    if let Some(p) = a.slow_probability {
        shaping.slow_probability = p;
    }
    shaping.seed = Some(a.seed);
    shaping.append_query = presigned.url.query().map(str::to_string);
    let shaper = Shaper::start(shaping).await?;
    println!(
        "READY url={} os_base={}__storage__ os_path={} sha256={sha}",
        shaper.rewrite(presigned.url.as_str()),
        shaper.base_url(),
        key.as_str()
    );
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    println!("REQUESTS {}", shaper.request_count());
    Ok(())
}

fn shaping_for(
    name: &str,
    bandwidth_mib: u64,
    upstream: url::Url,
) -> Result<ShaperConfig, BoxError> {
    match name {
        "s3" => {
            let mut c = ShaperConfig::s3_like(upstream);
            c.bandwidth = Some(bandwidth_mib * 1024 * 1024);
            Ok(c)
        }
        "none" => Ok(ShaperConfig::transparent(upstream)),
        other => Err(format!("unknown shaping {other} (s3 or none)").into()),
    }
}

fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, BoxError> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .ok_or_else(|| format!("no {key} in {line:?}").into())
}

/// The orchestrator: plain threads, no runtime, small, so the children it spawns inherit
/// almost nothing in their peak RSS.
fn run(a: RunArgs) -> Result<(), BoxError> {
    let contenders: Vec<String> = if a.contenders.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        a.contenders.clone()
    };
    for c in &contenders {
        if !ALL.contains(&c.as_str()) {
            return Err(format!("unknown contender {c} (known: {})", ALL.join(", ")).into());
        }
    }
    let shaping = shaping_for(&a.shaping, a.bandwidth_mib, "http://127.0.0.1/".parse()?)?;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    eprintln!(
        "starting the store and generating a {} byte object...",
        a.size
    );
    let mut server_args = vec![
        "serve".to_string(),
        format!("--size={}", a.size),
        format!("--shaping={}", a.shaping),
        format!("--bandwidth-mib={}", a.bandwidth_mib),
        format!("--seed={}", a.seed),
    ];
    if let Some(p) = a.stall_probability {
        server_args.push(format!("--stall-probability={p}"));
    }
    if let Some(p) = a.slow_probability {
        server_args.push(format!("--slow-probability={p}"));
    }
    let mut server = Command::new(&exe)
        .args(server_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut server_out = std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?);
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut server_out, &mut ready)?;
    if !ready.starts_with("READY ") {
        let _ = server.kill();
        return Err(format!("the store did not start: {ready:?}").into());
    }
    let setup = Setup {
        exe: exe.clone(),
        url: field(&ready, "url")?.to_string(),
        os_base: field(&ready, "os_base")?.to_string(),
        os_path: field(&ready, "os_path")?.to_string(),
        sha: field(&ready, "sha256")?.to_string(),
    };
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    eprintln!(
        "machine: {machine}, {} cpus; object {} MiB; shaping {}; concurrency {}; chunk {} MiB; {} runs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.size >> 20,
        a.shaping,
        a.concurrency,
        a.chunk_bytes >> 20,
        a.runs
    );
    let mut results: Vec<(String, Vec<Sample>)> =
        contenders.iter().map(|c| (c.clone(), Vec::new())).collect();
    let mut csv = String::from("round,contender,secs,cpu_secs,max_rss_bytes,extra\n");
    // Round 0: one verified warm-up per contender (not measured).
    for round in 0..=a.runs {
        let n = contenders.len();
        for k in 0..n {
            let ci = (k + round) % n;
            let name = contenders[ci].clone();
            let (program, args) = contender_args(&setup, &a, &name, round == 0);
            let (out, cpu, rss) = run_measured(&program, &args)?;
            let (secs, extra) = parse_result(&out)?;
            if name == "curl" && !extra.contains("status=200") {
                return Err(format!("curl: {out}").into());
            }
            if round == 0 {
                eprintln!("warm-up {name}: {secs:.3} s, verified");
                continue;
            }
            eprintln!(
                "round {round} {name}: {secs:.3} s cpu {cpu:.2} s rss {} MiB {extra}",
                rss >> 20
            );
            csv.push_str(&format!(
                "{round},{name},{secs:.6},{cpu:.4},{rss},{extra}\n"
            ));
            results[ci].1.push(Sample {
                secs,
                cpu,
                max_rss: rss,
                extra,
            });
        }
    }
    drop(server.stdin.take());
    let mut rest = String::new();
    let _ = server_out.read_to_string(&mut rest);
    let _ = server.wait();
    let requests = rest
        .lines()
        .find_map(|l| l.strip_prefix("REQUESTS "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if let Some(path) = &a.csv {
        std::fs::write(path, &csv)?;
    }
    print_report(&a, &shaping, &results, requests);
    Ok(())
}

fn print_report(
    a: &RunArgs,
    shaping: &ShaperConfig,
    results: &[(String, Vec<Sample>)],
    requests: u64,
) {
    let mib = a.size as f64 / (1u64 << 20) as f64;
    let gib = a.size as f64 / (1u64 << 30) as f64;
    println!(
        "\n| contender | median s | p95 s | max s | MiB/s (median) | peak RSS MiB (max) | CPU s/GiB (median) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut medians = std::collections::HashMap::new();
    let mut p95s = std::collections::HashMap::new();
    let mut rss = std::collections::HashMap::new();
    for (name, samples) in results {
        if samples.is_empty() {
            continue;
        }
        let t = sorted(samples.iter().map(|s| s.secs));
        let cpu = sorted(samples.iter().map(|s| s.cpu));
        let peak = samples.iter().map(|s| s.max_rss).max().unwrap_or(0);
        let median = quantile(&t, 0.5);
        let p95 = quantile(&t, 0.95);
        medians.insert(name.clone(), median);
        p95s.insert(name.clone(), p95);
        rss.insert(name.clone(), peak);
        let label = if name == "reference" {
            "reference (Rust re-implementation of the vgi-rpc algorithm)".to_string()
        } else {
            name.clone()
        };
        println!(
            "| {label} | {median:.3} | {p95:.3} | {:.3} | {:.0} | {} | {:.3} |",
            t[t.len() - 1],
            mib / median,
            peak >> 20,
            quantile(&cpu, 0.5) / gib
        );
    }
    let hedges: Vec<String> = results
        .iter()
        .filter(|(n, _)| n == "spillway")
        .flat_map(|(_, s)| s.iter().map(|s| s.extra.clone()))
        .collect();
    if !hedges.is_empty() {
        let sum = |key: &str| -> u64 {
            hedges
                .iter()
                .flat_map(|e| e.split_whitespace())
                .filter_map(|kv| kv.strip_prefix(key))
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        };
        println!(
            "\nspillway over {} runs: {} hedges launched, {} won, {} retries, {} requests",
            hedges.len(),
            sum("hedges="),
            sum("hedges_won="),
            sum("retries="),
            sum("requests=")
        );
    }
    println!("shaper: {requests} requests in total");
    if let (Some(bw), Some(&m)) = (shaping.bandwidth, medians.get("spillway")) {
        let ideal = a.size as f64 / (a.concurrency as f64 * bw as f64) + shaping.ttfb.as_secs_f64();
        println!("\nTargets (spillway vs the others):");
        println!(
            "- median {m:.3} s vs ideal {ideal:.3} s: {:.2}x (target <= 1.25x)",
            m / ideal
        );
        if let Some(&p) = p95s.get("spillway") {
            println!("- p95 {p:.3} s = {:.2}x median (target <= 1.5x)", p / m);
            if let Some(&off) = p95s.get("spillway-nohedge") {
                println!(
                    "- p95 with hedging off {off:.3} s = {:.2}x ours (target >= 2x)",
                    off / p
                );
            }
        }
        for (other, target) in [
            ("single-get", 5.0),
            ("reference", 1.5),
            ("object-store", 0.0),
        ] {
            if let Some(&o) = medians.get(other) {
                println!(
                    "- {other} median {o:.3} s = {:.2}x ours{}",
                    o / m,
                    if target > 0.0 {
                        format!(" (target >= {target}x)")
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    if let Some(&r) = rss.get("spillway") {
        println!(
            "- spillway peak RSS {} MiB vs object + 64 MiB = {} MiB",
            r >> 20,
            (a.size >> 20) + 64
        );
    }
}
